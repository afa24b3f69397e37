"""SCALE: Supervised Contrastive Adapter Learning for fine-grained Evaluation (Engelson, Ehrhardt,
Handels, "Finetuning Medical Vision-Language Models for Interpretable and Fine-grained Disease
Classification").

Frozen encoders; CLIP-Adapters with learnable alpha on both branches (Sec. 2.1, Eq. 1); one text
prompt per class-concept combination of a :class:`~medadapt.hierarchy.Hierarchy` ("a photo of a
{domain} with {concept}, which indicates a {class}", Sec. 2.3.1); the loss of Eq. 3::

    L = CE(g, z) + l1 CE(l, z~concepts) + l2 CE(c, z~classes)
        + l3 SupCon(G, Q) + l4 SupCon(G, Q^T)

* ``Q``: cosine similarities between the batch's adapted image embeddings and the adapted text
  embeddings of the batch's image-text pairs (one text per positive combination of an image).
* ``Z``: the similarity of every image to every combination prompt. Sec. 2.2 builds ``Z`` by
  picking, per combination h, the first column of ``Q`` whose text has combination h. With one
  prompt per combination that column *is* the combination prompt, so ``Z`` is computed against
  all prompts: identical where h is in the batch, and defined where it is not.
* ``z~concepts`` / ``z~classes`` (Sec. 2.2): ``z_l = max_{c in C_l} z_(c,l)``,
  ``z_c = max_{l in L_c} z_(c,l)``.
* SupCon (Eq. 2, Khosla et al. 2020): anchor i, positives ``P(i) = {p != i : g^p = g^i}``, all
  ``s != i`` in the denominator, temperature tau.
* Multi-label (Zhang & Wu, AAAI 2024, as the paper says): an image with several positive
  combinations is one anchor per combination; its positives are the other images holding that
  combination. The CE terms count one sample per (image, combination) pair.

Decisions where the paper is silent or ambiguous (all config options, ``--set method.X=...``):

* ``supcon_on: rows`` (default) reads Eq. 2 literally: the representation of image i is the row
  ``q^i = Q_i,:`` (for ``Q^T``: the text's column), L2-normalised as Khosla et al. normalise their
  embeddings. ``cross`` reads it as a cross-modal loss with logits ``Q_ij / tau`` (image anchors
  against the texts of other images; ``Q^T``: text anchors against other images).
* ``tau: 0.07`` (Khosla et al.'s reference implementation).
* ``ce_scale: null``: the CE terms use the backbone's logit scale (CLIP's temperature, 100 for
  CLIP) on the cosines; a number overrides it.
* ``lambdas: [1, 1, 1, 1]``: the paper tuned them by grid search without reporting values.
* ``reduction: mean``: Eq. 3 sums over samples; the mean differs only by the batch size, which
  the learning rate absorbs, and keeps the loss comparable across batch sizes (``sum`` available).
* ``alpha: 0.2`` initial blending (Gao et al.'s value), learnable; ``reduction_factor: 4``.
* With per-criterion groups in the hierarchy (Derm7pt), the expressions of one criterion are
  exclusive (Sec. 2.3.2): each softmax (combinations, concepts, classes) runs within the criterion
  of the target combination; the class score of a criterion is the max over its concepts.
* An item's combination is (its class, concept) when the concept belongs to its class, else
  (the concept's only class, concept): a Derm7pt expression indicates its class (Table 1).
* Items without concept labels: an error (``missing_concepts: error``), or ``class-only``: they
  add only the class term (lambda2) over all combinations.
* Training: 150 epochs, lr 0.001 (Sec. 2.3); optimizer not stated: AdamW; no augmentation.
"""
from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from medadapt.errors import UserError
from medadapt.hierarchy import Hierarchy, from_dict, load_hierarchy
from medadapt.methods.base import Batch, Method, register_method
from medadapt.methods.clip_adapter import ResidualAdapter


# ------------------------------------------------------------------------------------------------
# Loss terms (pure functions on tensors; the tests compare them with direct transcriptions)
# ------------------------------------------------------------------------------------------------
def supcon_loss(logits: torch.Tensor, anchor_labels: torch.Tensor, cand_labels: torch.Tensor,
                keep: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """SupCon (Eq. 2) on precomputed logits, multi-label as in Zhang & Wu.

    ``logits [Na, Nc]`` (similarity / tau), ``anchor_labels [Na, H]`` and ``cand_labels [Nc, H]``
    multi-hot, ``keep [Na, Nc]`` the candidate set ``S(a)``. Every positive label h of anchor a is
    one anchor with ``P(a, h) = {p in S(a) : h in labels(p)}`` and loss
    ``-1/|P| sum_p log(exp(l_ap) / sum_{s in S(a)} exp(l_as))``. Anchors without positives are
    skipped; the result is the mean (or sum) over the remaining anchors.
    """
    a_idx, h_idx = anchor_labels.bool().nonzero(as_tuple=True)
    if len(a_idx) == 0:
        return logits.sum() * 0.0
    masked = logits.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(masked, dim=1, keepdim=True)
    log_prob = (logits - lse)[a_idx]  # [A, Nc]
    pos = cand_labels.bool()[:, h_idx].T & keep[a_idx]  # [A, Nc]
    npos = pos.sum(1)
    valid = npos > 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    per = -(log_prob.masked_fill(~pos, 0.0)).sum(1)[valid] / npos[valid]
    return per.mean() if reduction == "mean" else per.sum()


def supcon_khosla(features: torch.Tensor, labels: torch.Tensor, tau: float = 0.07,
                  normalize: bool = True, reduction: str = "mean") -> torch.Tensor:
    """Khosla et al.'s L^sup_out for one view per sample: features ``[N, D]``, labels ``[N]``."""
    z = F.normalize(features, dim=-1) if normalize else features
    n = len(z)
    g = F.one_hot(labels, int(labels.max()) + 1)
    keep = ~torch.eye(n, dtype=torch.bool, device=z.device)
    return supcon_loss(z @ z.T / tau, g, g, keep, reduction)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def scale_supcon(Q: torch.Tensor, g_img: torch.Tensor, g_txt: torch.Tensor, src: torch.Tensor,
                 tau: float, mode: str = "rows", transpose: bool = False,
                 reduction: str = "mean") -> torch.Tensor:
    """SupCon(G, Q) or, with ``transpose``, SupCon(G, Q^T) (Eq. 2 / Eq. 3).

    ``Q [N, T]``: image-text cosines, ``g_img [N, H]``: image labels, ``g_txt [T, H]``: text labels
    (one-hot), ``src [T]``: the image each text belongs to.
    """
    n, t = Q.shape
    if mode == "rows":
        if not transpose:
            z = _rows(Q)
            keep = ~torch.eye(n, dtype=torch.bool, device=Q.device)
            return supcon_loss(z @ z.T / tau, g_img, g_img, keep, reduction)
        z = _rows(Q.T)
        keep = ~torch.eye(t, dtype=torch.bool, device=Q.device)
        return supcon_loss(z @ z.T / tau, g_txt, g_txt, keep, reduction)
    if mode == "cross":
        own = src[None, :] == torch.arange(n, device=Q.device)[:, None]  # [N, T]
        if not transpose:
            return supcon_loss(Q / tau, g_img, g_txt, ~own, reduction)
        return supcon_loss(Q.T / tau, g_txt, g_img, ~own.T, reduction)
    raise UserError(f"scale: method.supcon_on must be rows or cross, got {mode!r}")


def masked_max(z: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """``out[..., j] = max_{k : member[j, k]} z[..., k]`` (Sec. 2.2 aggregation)."""
    return z[..., None, :].masked_fill(~member, float("-inf")).amax(-1)


class ComboIndex:
    """Index tables of a hierarchy for the loss and the metrics (per criterion group)."""

    def __init__(self, h: Hierarchy):
        self.h = h
        combos = h.combinations
        self.H = len(combos)
        self.class_of = torch.tensor([h.classes.index(k) for k, _ in combos])
        self.concept_of = torch.tensor([h.concepts.index(c) for _, c in combos])
        self.groups = [torch.tensor(g) for g in h.groups()]
        self.group_of = torch.zeros(self.H, dtype=torch.long)
        for gi, g in enumerate(self.groups):
            self.group_of[g] = gi
        # per group: the concepts and classes present, with membership masks over the group's combos
        self.g_concepts, self.g_concept_member, self.g_classes, self.g_class_member = [], [], [], []
        for g in self.groups:
            cons = sorted(set(self.concept_of[g].tolist()), key=self.concept_of[g].tolist().index)
            cls = sorted(set(self.class_of[g].tolist()))
            self.g_concepts.append(torch.tensor(cons))
            self.g_concept_member.append(self.concept_of[g][None, :] == torch.tensor(cons)[:, None])
            self.g_classes.append(torch.tensor(cls))
            self.g_class_member.append(self.class_of[g][None, :] == torch.tensor(cls)[:, None])
        # target positions of each combination within its group (combination, concept, class)
        self.pos_in_group = torch.zeros(self.H, dtype=torch.long)
        self.concept_pos = torch.zeros(self.H, dtype=torch.long)
        self.class_pos = torch.zeros(self.H, dtype=torch.long)
        for gi, g in enumerate(self.groups):
            cons, cls = self.g_concepts[gi].tolist(), self.g_classes[gi].tolist()
            for j, hh in enumerate(g.tolist()):
                self.pos_in_group[hh] = j
                self.concept_pos[hh] = cons.index(int(self.concept_of[hh]))
                self.class_pos[hh] = cls.index(int(self.class_of[hh]))
        # class columns (group, class) for class-level scores, and all-group class membership
        self.class_columns = [(gi, int(k)) for gi, ks in enumerate(self.g_classes) for k in ks]
        self.all_class_member = self.class_of[None, :] == torch.arange(len(h.classes))[:, None]
        self.concept_member = self.concept_of[None, :] == torch.arange(len(h.concepts))[:, None]

    def class_scores(self, z: torch.Tensor) -> torch.Tensor:
        """[N, H] combination scores -> [N, len(class_columns)] (max within each criterion)."""
        cols = []
        for gi, g in enumerate(self.groups):
            cols.append(masked_max(z[:, g.to(z.device)], self.g_class_member[gi].to(z.device)))
        return torch.cat(cols, dim=1)

    def class_scores_all(self, z: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [N, C]: z_c = max over all combinations of class c (Sec. 2.2)."""
        return masked_max(z, self.all_class_member.to(z.device))

    def concept_scores(self, z: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [N, L]: z_l = max over the combinations of concept l (Sec. 2.2)."""
        return masked_max(z, self.concept_member.to(z.device))


def scale_ce_terms(z: torch.Tensor, pair_img: torch.Tensor, pair_combo: torch.Tensor,
                   index: ComboIndex, scale: float, reduction: str = "mean"):
    """The three CE terms of Eq. 3 over (image, combination) pairs.

    ``z [N, H]``: cosines of images to combination prompts; pair k is image ``pair_img[k]`` with
    target combination ``pair_combo[k]``. Each softmax runs within the target's criterion group.
    Returns (CE over combinations, CE over concepts, CE over classes).
    """
    dev = z.device
    parts = [[], [], []]
    gof = index.group_of.to(dev)[pair_combo]
    for gi, g in enumerate(index.groups):
        sel = (gof == gi).nonzero(as_tuple=True)[0]
        if len(sel) == 0:
            continue
        g = g.to(dev)
        zg = scale * z[pair_img[sel]][:, g]  # [P, |g|]
        tgt = pair_combo[sel]
        parts[0].append(F.cross_entropy(zg, index.pos_in_group.to(dev)[tgt], reduction="none"))
        zc = masked_max(zg, index.g_concept_member[gi].to(dev))  # z_l = max over C_l
        parts[1].append(F.cross_entropy(zc, index.concept_pos.to(dev)[tgt], reduction="none"))
        zk = masked_max(zg, index.g_class_member[gi].to(dev))  # z_c = max over L_c
        parts[2].append(F.cross_entropy(zk, index.class_pos.to(dev)[tgt], reduction="none"))
    out = []
    for p in parts:
        v = torch.cat(p) if p else z.sum()[None] * 0.0
        out.append(v.mean() if reduction == "mean" else v.sum())
    return tuple(out)


# ------------------------------------------------------------------------------------------------
@register_method("scale")
class SCALE(Method):
    paper = ("Engelson, Ehrhardt & Handels, Finetuning Medical Vision-Language Models for "
             "Interpretable and Fine-grained Disease Classification (SCALE)")
    supports_novel = False
    defaults = {"hierarchy": None,  # file or shipped name; default: the data set's
                "template": None,  # default: the hierarchy's
                "domain": None,  # default: the hierarchy's
                "lambdas": [1.0, 1.0, 1.0, 1.0],
                "tau": 0.07, "supcon_on": "rows",  # rows | cross
                "ce_scale": None, "reduction": "mean",
                "alpha": 0.2, "learn_alpha": True, "reduction_factor": 4, "final_relu": False,
                "adapt": "both",  # both | image | text
                "missing_concepts": "error",  # error | class-only
                "top_k": 3}
    train_defaults = {"optimizer": "adamw", "lr": 0.001, "weight_decay": 1e-4, "epochs": 150,
                      "batch_size": 32, "warmup_epochs": 0, "sched_unit": "step",
                      "drop_last": False}
    data_defaults = {"augment_views": 0}  # the paper trains on the frozen features as they are
    learned_buffers = ("hierarchy_json",)
    sources = {
        "method.lambdas": "SCALE paper Eq. 3 (l1..l4 = 1)",
        "method.tau": "SupCon temperature 0.07 (Khosla et al. 2020 default; not stated in the SCALE paper)",
        "method.alpha": "SCALE paper Sec. 2.1: CLIP-Adapter residual ratio, initial 0.2, learnable",
        "method.learn_alpha": "SCALE paper Sec. 2.1 (learnable alpha)",
        "method.reduction_factor": "CLIP-Adapter bottleneck 1/4 (Gao et al.)",
        "train.optimizer": "not stated in the paper: AdamW (medadapt's choice)",
        "train.lr": "SCALE paper Sec. 2.3: learning rate 0.001",
        "train.weight_decay": "not stated in the paper: 1e-4 (medadapt's choice)",
        "train.epochs": "SCALE paper Sec. 2.3: 150 epochs",
        "train.batch_size": "SCALE paper Sec. 2.3: 'adapted according to the data set size'; 32 here",
        "train.sched_unit": "not stated in the paper: per-step cosine (medadapt's previous behaviour)",
        "train.grad_clip": "no clipping mentioned in the paper",
        "train.drop_last": "not stated in the paper: every image used each epoch (medadapt's previous behaviour)",
        "data.augment_views": "SCALE paper Sec. 2.3: 'No augmentations were used for finetuning in the first use case'",
    }

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        c = self.cfg
        if c["supcon_on"] not in ("rows", "cross"):
            raise UserError(f"scale: method.supcon_on must be rows or cross, got {c['supcon_on']!r}")
        if c["reduction"] not in ("mean", "sum"):
            raise UserError(f"scale: method.reduction must be mean or sum, got {c['reduction']!r}")
        if c["missing_concepts"] not in ("error", "class-only"):
            raise UserError("scale: method.missing_concepts must be error or class-only")
        if c["adapt"] not in ("both", "image", "text"):
            raise UserError("scale: method.adapt must be both, image or text")
        lam = c["lambdas"]
        if not (isinstance(lam, (list, tuple)) and len(lam) == 4):
            raise UserError(f"scale: method.lambdas must be a list of 4 numbers, got {lam!r}")
        self.lambdas = [float(x) for x in lam]
        d = backbone.embed_dim
        kw = dict(reduction=int(c["reduction_factor"]), alpha=float(c["alpha"]),
                  learn_alpha=bool(c["learn_alpha"]), final_relu=bool(c["final_relu"]))
        self.image_adapter = ResidualAdapter(d, **kw) if c["adapt"] in ("both", "image") else None
        self.text_adapter = ResidualAdapter(d, **kw) if c["adapt"] in ("both", "text") else None
        self.hierarchy: Hierarchy | None = None
        self.hierarchy_json: torch.Tensor | None = None
        self.register_buffer("prompt_features", torch.zeros(0, d), persistent=False)
        self.register_buffer("no_finding_feature", torch.zeros(d), persistent=False)
        self._combo_cache: dict = {}
        self._hierarchy_error: UserError | None = None
        if c["hierarchy"]:
            try:
                self.set_hierarchy(load_hierarchy(c["hierarchy"]))
            except UserError as e:  # a saved run carries its hierarchy: fail only if still needed
                self._hierarchy_error = e

    # --- hierarchy ------------------------------------------------------------------------------
    def set_hierarchy(self, h: Hierarchy) -> None:
        if self.cfg["template"]:
            from medadapt.hierarchy import check_template
            check_template(self.cfg["template"], "scale: method.template: ")
            h.template = self.cfg["template"]
        if self.cfg["domain"]:
            h.domain = str(self.cfg["domain"])
        h.check_classes(self.texts.classnames, "scale: ")
        self.hierarchy = h
        self._hierarchy_error = None
        self.index = ComboIndex(h)
        self.hierarchy_json = torch.tensor(list(h.to_json().encode("utf-8")), dtype=torch.uint8)
        dev = self.prompt_features.device
        self.prompt_features = self.backbone.encode_texts(h.prompts()).to(dev)
        self.no_finding_feature = self.backbone.encode_texts([h.no_finding])[0].to(dev)
        self.ds_class = torch.tensor([h.classes.index(h.find_class(k)) for k in self.texts.classnames])
        self._combo_cache = {}

    def _need_hierarchy(self) -> Hierarchy:
        if self.hierarchy is None and self._hierarchy_error is not None:
            raise self._hierarchy_error
        if self.hierarchy is None:
            raise UserError("scale needs a class-concept hierarchy: the data set names none; pass "
                            "--set method.hierarchy=FILE.yaml (see docs/scale.md)")
        return self.hierarchy

    def load_learned_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        sd = dict(sd)
        hj = sd.pop("hierarchy_json", None)
        if hj is not None:
            data = json.loads(bytes(hj.to(torch.uint8).tolist()).decode("utf-8"))
            self.cfg["template"], self.cfg["domain"] = None, None
            self.set_hierarchy(from_dict(data, "scale (saved hierarchy): "))
        super().load_learned_state_dict(sd)

    def n_trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def combos_of(self, label: int, concepts, where: str = "") -> list[int]:
        key = (int(label), tuple(concepts or ()))
        if key not in self._combo_cache:
            h = self._need_hierarchy()
            self._combo_cache[key] = h.item_combinations(self.texts.classnames[int(label)],
                                                         key[1], where)
        return self._combo_cache[key]

    def _check_split(self, split, what: str) -> int:
        """Validate every item's concepts against the hierarchy; returns items without concepts."""
        if split is None or not len(split):
            return 0
        concepts = split.concepts or [()] * len(split)
        missing = 0
        for j, (lab, cs) in enumerate(zip(split.labels.tolist(), concepts)):
            rid = split.ds.records[split.indices[j]].id
            if not cs:
                missing += 1
                if self.cfg["missing_concepts"] == "error":
                    raise UserError(f"scale: {what} item {rid!r} has no concept labels (SCALE needs "
                                    "a concepts column; or --set method.missing_concepts=class-only)")
                continue
            self.combos_of(lab, cs, f"{what} item {rid!r}: ")
        return missing

    def fit(self, train, val, engine) -> dict:
        if self.hierarchy is None:
            spec = train.ds.meta.get("hierarchy")
            if not spec or self._hierarchy_error is not None:
                self._need_hierarchy()
            self.set_hierarchy(load_hierarchy(spec))
        info = {"hierarchy": self.hierarchy.name, "n_combinations": len(self.hierarchy.combinations),
                "train_items_without_concepts": self._check_split(train, "train")}
        self._check_split(val, "val")
        info.update(engine.train(self, train, val))
        if self.image_adapter is not None and isinstance(self.image_adapter.alpha, nn.Parameter):
            info["alpha_image"] = float(self.image_adapter.alpha.detach())
        if self.text_adapter is not None and isinstance(self.text_adapter.alpha, nn.Parameter):
            info["alpha_text"] = float(self.text_adapter.alpha.detach())
        return info

    # --- embeddings -----------------------------------------------------------------------------
    def scale(self) -> float:
        s = self.cfg["ce_scale"]
        return float(self.backbone.logit_scale) if s is None else float(s)

    def adapted_image(self, batch: Batch) -> torch.Tensor:
        f = batch.features.float() if batch.features is not None else \
            self.backbone.encode_image(batch.images, normalize=False).float()
        if self.image_adapter is not None:
            f = self.image_adapter(f)
        return F.normalize(f, dim=-1)

    def adapt_text(self, t: torch.Tensor) -> torch.Tensor:
        if self.text_adapter is not None:
            t = self.text_adapter(t)
        return F.normalize(t, dim=-1)

    def adapted_prompts(self) -> torch.Tensor:
        self._need_hierarchy()
        return self.adapt_text(self.prompt_features)

    def combination_scores(self, batch: Batch) -> torch.Tensor:
        """Z: cosines [B, H] of the adapted images to the adapted combination prompts."""
        img = self.adapted_image(batch)
        return img @ self.adapted_prompts().to(img.device).T

    # --- the method interface -------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        z = self.combination_scores(batch)
        zc = self.index.class_scores_all(z)  # [B, C_hierarchy]
        return self.scale() * zc[:, self.ds_class.to(z.device)]

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        self._need_hierarchy()
        img = self.adapted_image(batch)
        prompts = self.adapted_prompts().to(img.device)
        z = img @ prompts.T  # [N, H]
        labels = batch.labels.tolist()
        concepts = batch.concepts or [()] * len(labels)
        pair_img, pair_combo, class_only = [], [], []
        for i, (lab, cs) in enumerate(zip(labels, concepts)):
            if not cs:
                if self.cfg["missing_concepts"] == "error":
                    raise UserError("scale: a training item has no concept labels")
                class_only.append(i)
                continue
            for h in self.combos_of(lab, cs):
                pair_img.append(i)
                pair_combo.append(h)
        dev = img.device
        pair_img_t = torch.tensor(pair_img, dtype=torch.long, device=dev)
        pair_combo_t = torch.tensor(pair_combo, dtype=torch.long, device=dev)
        s, red = self.scale(), self.cfg["reduction"]
        l1, l2, l3, l4 = self.lambdas
        ce_g, ce_l, ce_c = scale_ce_terms(z, pair_img_t, pair_combo_t, self.index, s, red)
        if class_only:
            idx = torch.tensor(class_only, device=dev)
            zc = s * self.index.class_scores_all(z[idx])
            tgt = self.ds_class.to(dev)[batch.labels[idx]]
            co = F.cross_entropy(zc, tgt, reduction=red)
            ce_c = ce_c + co if pair_img else co
        parts = {"ce_combination": ce_g, "ce_concept": ce_l, "ce_class": ce_c}
        total = ce_g + l1 * ce_l + l2 * ce_c
        if pair_img and (l3 or l4):
            H = self.index.H
            g_txt = F.one_hot(pair_combo_t, H).bool()
            g_img = torch.zeros(len(labels), H, dtype=torch.bool, device=dev)
            g_img[pair_img_t, pair_combo_t] = True
            Q = img @ prompts[pair_combo_t].T  # [N, T]: images x the batch's texts
            keep_rows = g_img.any(1)
            Qk = Q[keep_rows]
            remap = torch.cumsum(keep_rows.long(), 0) - 1
            src = remap[pair_img_t]
            tau, mode = float(self.cfg["tau"]), self.cfg["supcon_on"]
            sc_q = scale_supcon(Qk, g_img[keep_rows], g_txt, src, tau, mode, False, red)
            sc_qt = scale_supcon(Qk, g_img[keep_rows], g_txt, src, tau, mode, True, red)
            parts["supcon_q"], parts["supcon_qt"] = sc_q, sc_qt
            total = total + l3 * sc_q + l4 * sc_qt
        return total, {k: float(v.detach()) for k, v in parts.items()}

    @torch.no_grad()
    def extra_predictions(self, batch: Batch) -> dict[str, Any]:
        """Per image: the top class-concept combinations with their probabilities (softmax over all
        combinations), e.g. ``diffuse irregular pigmentation -> melanoma (0.62)``; with criteria,
        also the most likely expression of each criterion (softmax within the criterion)."""
        h = self._need_hierarchy()
        z = self.scale() * self.combination_scores(batch)
        prob = torch.softmax(z, dim=1).cpu()
        names = h.combination_names()
        k = max(1, min(int(self.cfg["top_k"]), len(names)))
        rows = []
        for i in range(len(prob)):
            top = torch.topk(prob[i], k)
            items = [(names[j], float(p)) for p, j in zip(top.values.tolist(), top.indices.tolist())]
            row = {"why": items[0][0], "why_score": f"{items[0][1]:.4f}",
                   "top_concepts": "; ".join(f"{n} ({p:.2f})" for n, p in items)}
            if h.criteria:
                for gi, g in enumerate(self.index.groups):
                    pg = torch.softmax(z[i, g.to(z.device)], 0).cpu()
                    j = int(pg.argmax())
                    row[f"criterion: {h.group_names[gi]}"] = \
                        f"{names[int(g[j])]} ({float(pg[j]):.2f})"
            rows.append(row)
        return {"rows": rows}
