"""PathoPrompt (Huang, Liang, Cai, Zhuo, Fan, Su, "PathoPrompt: Cross-Granular Semantic Alignment
for Medical Pathology Vision-Language Models"; full text in ``shared/papers/pathoprompt.txt``).

Two registered readings (no code exists; docs/pathoprompt.md, "Two readings"): ``pathoprompt``
(default) puts the paper's additions on a multi-modal deep-prompt base as in MaPLe / CoPrompt
(:class:`PathoPromptMM`, pixels), ``pathoprompt-text`` on CoOp's text-only context over cached
image features (:class:`PathoPrompt`). Equations as implemented (numbers are the paper's):

* Eq. 1 / Eq. 7 -- ``L_CE``: cross-entropy over ``logit_scale * cos(g~, e~)``, where ``g~`` is the
  text feature of the coarse prompt ``t_p`` ("a photo of a {class}.", its words used as learnable
  CoOp context, :class:`~medadapt.methods._prompt.PromptLearner`) and ``e~`` the image feature.
  With ``adapted_logits: true`` (default, see "choices") both go through their adaptors first.
* Eq. 3 (inside ``theta(...)``) -- token-level enhancement :class:`TokenEnhancer`: every token
  embedding ``t_{d,i}`` of a fine-grained description becomes ``gamma_{s,i} * t_{d,i} + gamma_{b,i}``
  with one (scale, shift) per token slot: ``gamma^SOS``, ``gamma^1..gamma^{L-1}`` for the word
  positions and ``gamma^EOS`` for the end token wherever it falls; padding is left untouched. This
  happens on the token embeddings, before the text encoder.
* ``z_d = psi(theta(gamma^T t_d))`` (Sec. 2.2): the ``s`` descriptions sampled for a class this step
  are encoded and distilled by ``psi`` into one class embedding (:func:`psi_mean`).
* Eq. 2 -- ``L_desc = KL(P(y|z_d) || P(y|theta(t_p)))``: per image, the class distribution given the
  description embeddings against the one given the coarse prompts (:func:`loss_desc`); the
  description side is the first argument, ``sum P_d (log P_d - log P_p)``.
* Eq. 3 -- ``L_align = 1 - cos(psi(theta(gamma t_d)), theta^a(theta(t_p)))`` per class, averaged over
  classes (:func:`loss_align`); ``theta^a`` is the text adaptor :class:`Adaptor`.
* Eq. 4 -- ``L_GSD = L_desc + L_align``.
* Eq. 5 -- class prototypes: text ``p_{t,c}`` = mean of ``theta^a(theta(t_p))`` over class c's text
  samples, image ``p_{i,c}`` = mean of ``phi^a(phi(x))`` over class c's labelled images
  (:func:`prototypes`). The printed Eq. 5 swaps the encoders (text encoder on image patches ``v_p``,
  image encoder on prompts ``t_p``); we read it with each encoder on its own modality.
* Eq. 6 -- ``L_PDS = sum_{k<j} ||p_{t,k} - p_{t,j}|| + sum_{k<j} ||p_{i,k} - p_{i,j}||``
  (:func:`loss_pds`; the paper's upper limit ``N_c`` is the number of classes).
* Eq. 8 -- ``L = L_GSD + L_CE - L_PDS``.

Choices where the paper is silent (all config keys under ``method``; docs/pathoprompt.md):

* ``psi``: ``mean`` (default; the normalised mean of the ``s`` description features of a class,
  parameter-free), ``linear`` (an identity-initialised learnable linear map on each description
  feature, then the mean) or ``none`` (one description per class, ``s`` forced to 1).
* Bounding of ``L_PDS`` (subtracting an unbounded distance diverges): ``pds_bound: unit`` (default)
  normalises every feature before averaging, so every prototype lies in the unit ball and every
  pairwise distance is at most 2; ``margin`` keeps raw features and caps each distance at
  ``pds_margin``; ``none`` is the literal, unbounded Eq. 6 (can diverge; for study only).
  ``prototype_normalize: true`` (default) also puts the prototypes back on the unit sphere.
* ``pds_images: labelled`` (default) computes image prototypes from *all* labelled training images
  (the paper "maintains embeddings for labelled samples"; their cached features are kept by
  :meth:`fit`), ``batch`` from the current batch only.
* ``text_prototypes: prompt`` (default; one coarse prompt per class, ``N_c = 1``) or
  ``prompt+descriptions`` (the prompt and the ``s`` enhanced descriptions of the class).
* Adaptors ``theta^a`` / ``phi^a``: residual bottleneck MLPs (``x + W_2 relu(W_1 x)``, ``W_2``
  zero-initialised, so training starts from the pretrained space); ``adaptor: linear`` gives an
  identity-initialised linear layer. ``adapted_logits: true`` classifies with the adapted features
  (as CoPrompt, which PathoPrompt extends): only then does the image half of Eq. 6 shape the
  classifier, since the image encoder is frozen. ``false`` is Eq. 1/7 read literally.
* Eq. 2 is computed on the un-adapted features, as written, with ``logit_scale`` as ``1/tau``;
  ``desc_teacher_grad: true`` (default) lets gradients reach both distributions (the paper calls its
  distillation bidirectional, unlike CoPrompt's); ``false`` detaches ``P(y|z_d)``.
* ``gamma_dim: vector`` (default; one scale/shift vector of the embedding width per token slot) or
  ``scalar`` (one number per slot).

Ablations (Table 3-4): ``use_gsd: false`` (no descriptions, no ``L_desc``/``L_align``),
``use_pds: false``, ``enhancement: token`` (Eq. 3) ``| shared`` (one (scale, shift) for every
position) ``| sentence`` (CoPrompt-style: on the pooled sentence embedding, after the encoder)
``| none``; ``template`` or ``template_preset: photo | tissue | microscopic | slide``
(Table 3's four templates).

Defaults from the paper: SGD, lr 0.0035, fp16 (the engine's AMP on GPU), PLIP backbone in the
paper configs, template "a photo of a {class}". Epochs, batch size, ``s`` and the loss weights are
not given; we use CoOp's 50 epochs / batch 32, ``s = 4`` and weight 1 for every term (Eq. 8).
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from medadapt.errors import UserError
from medadapt.methods._prompt import PromptLearner, clip_logits, encode_prompted_text
from medadapt.methods.base import Batch, Method, register_method

# Table 3: "A photo of a {CLASS}", "A tissue of {CLASS}", "A microscopic view of {CLASS}",
# "A tissue sample slide of {CLASS}".
TEMPLATE_PRESETS = {
    "photo": "a photo of a {}.",
    "tissue": "a tissue of {}.",
    "microscopic": "a microscopic view of {}.",
    "slide": "a tissue sample slide of {}.",
}

_EPS = 1e-8
_PAPER = ("Huang et al., PathoPrompt: Cross-Granular Semantic Alignment for Medical Pathology "
          "Vision-Language Models")


# ------------------------------------------------------------------------------------------------
# the loss terms, as plain functions of tensors (unit-tested against transcriptions of the paper)
# ------------------------------------------------------------------------------------------------
def loss_desc(logits_desc: torch.Tensor, logits_prompt: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ``D_KL(P(y|z_d) || P(y|theta(t_p)))``, averaged over images.

    ``logits_*`` are ``[B, C]`` (``logit_scale * cos``); ``P = softmax``. The description
    distribution is the first argument: ``sum_y P_d(y) (log P_d(y) - log P_p(y))``."""
    log_pd = F.log_softmax(logits_desc.float(), dim=-1)
    log_pp = F.log_softmax(logits_prompt.float(), dim=-1)
    return (log_pd.exp() * (log_pd - log_pp)).sum(-1).mean()


def loss_align(z_d: torch.Tensor, g_adapted: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ``1 - cos(psi(theta(gamma t_d)), theta^a(theta(t_p)))`` per class, mean over classes."""
    return (1 - F.cosine_similarity(z_d.float(), g_adapted.float(), dim=-1, eps=_EPS)).mean()


def prototypes(features: torch.Tensor, labels: torch.Tensor, n_classes: int,
               normalize_features: bool = True, normalize_prototypes: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5: the mean feature of each class, ``p_c = 1/N_c sum_{i: y_i = c} f_i``.

    Returns ``(prototypes [K, D], classes [K])`` for the K classes that have samples.
    ``normalize_features``: L2-normalise each ``f_i`` first (prototypes then lie in the unit ball);
    ``normalize_prototypes``: put the means back on the unit sphere."""
    f = F.normalize(features.float(), dim=-1) if normalize_features else features.float()
    onehot = F.one_hot(labels.long(), n_classes).to(f.dtype)  # [N, C]
    counts = onehot.sum(0)
    present = counts > 0
    protos = (onehot.T @ f)[present] / counts[present, None]
    if normalize_prototypes:
        protos = F.normalize(protos, dim=-1)
    return protos, present.nonzero().flatten()


def pairwise_distance_sum(protos: torch.Tensor, bound: str = "unit", margin: float = 2.0,
                          reduce: str = "sum") -> torch.Tensor:
    """One modality of Eq. 6: ``sum_{k<j} ||p_k - p_j||_2`` over the ``K`` prototypes given.

    ``bound="margin"`` caps each distance at ``margin`` (``min(d, margin)``); ``reduce="mean"``
    divides by the number of pairs. The norm is ``sqrt(|.|^2 + 1e-12)`` so that two equal
    prototypes give a finite gradient."""
    K = protos.shape[0]
    if K < 2:
        return protos.sum() * 0.0
    diff = protos[:, None, :] - protos[None, :, :]
    d = torch.sqrt((diff * diff).sum(-1) + 1e-12)
    iu = torch.triu_indices(K, K, offset=1, device=protos.device)
    d = d[iu[0], iu[1]]
    if bound == "margin":
        d = d.clamp(max=margin)
    return d.sum() if reduce == "sum" else d.mean()


def loss_pds(text_protos: torch.Tensor | None, image_protos: torch.Tensor | None,
             bound: str = "unit", margin: float = 2.0, reduce: str = "sum") -> torch.Tensor:
    """Eq. 6: the text term plus the image term (either may be left out with ``None``)."""
    parts = [pairwise_distance_sum(p, bound, margin, reduce) for p in (text_protos, image_protos)
             if p is not None]
    return sum(parts) if parts else torch.zeros(())


def psi_mean(desc_features: torch.Tensor) -> torch.Tensor:
    """``psi`` (default): distil the ``s`` description features ``[C, s, D]`` of each class into
    one class embedding, the normalised mean of the normalised features -> ``[C, D]``."""
    return F.normalize(F.normalize(desc_features.float(), dim=-1).mean(1), dim=-1)


# ------------------------------------------------------------------------------------------------
# learnable pieces
# ------------------------------------------------------------------------------------------------
class TokenEnhancer(nn.Module):
    """Eq. 3's token-level enhancement ``gamma_{s,i} * t_{d,i} + gamma_{b,i}``.

    Slots: 0 = SOS, ``1..L-2`` = the word positions in order, ``L-1`` = EOS (wherever the end token
    of a description falls); tokens after EOS (padding) stay as they are. ``mode="shared"`` uses a
    single (scale, shift) for all positions (an ablation). ``dim="vector"``: each slot has a scale
    and shift vector of the embedding width; ``"scalar"``: one number each. Initialised to the
    identity (scale 1, shift 0)."""

    def __init__(self, context_length: int, width: int, mode: str = "token", dim: str = "vector"):
        super().__init__()
        if mode not in ("token", "shared"):
            raise ValueError(f"token enhancer mode must be token or shared, got {mode!r}")
        if dim not in ("vector", "scalar"):
            raise UserError(f"pathoprompt gamma_dim must be vector or scalar, got {dim!r}")
        self.L, self.mode = context_length, mode
        n = context_length if mode == "token" else 1
        w = width if dim == "vector" else 1
        self.scale = nn.Parameter(torch.ones(n, w))
        self.shift = nn.Parameter(torch.zeros(n, w))

    def slots(self, ids: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        """Slot index per token ``[N, L]`` (-1: padding, left untouched)."""
        N, L = ids.shape
        pos = torch.arange(L, device=ids.device).unsqueeze(0).expand(N, -1)
        eos = eos.to(ids.device).unsqueeze(1)
        slot = pos.clamp(max=self.L - 2).clone()
        slot = torch.where(pos == eos, torch.full_like(slot, self.L - 1), slot)
        slot = torch.where(pos > eos, torch.full_like(slot, -1), slot)
        if self.mode == "shared":
            slot = torch.where(slot >= 0, torch.zeros_like(slot), slot)
        return slot

    def forward(self, emb: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """``emb [N, L, W]`` token embeddings -> enhanced embeddings (same shape)."""
        keep = (slot >= 0).unsqueeze(-1)
        s = self.scale[slot.clamp(min=0)].to(emb.dtype)
        b = self.shift[slot.clamp(min=0)].to(emb.dtype)
        return torch.where(keep, s * emb + b, emb)


class SentenceEnhancer(nn.Module):
    """The sentence-level ablation: one (scale, shift) on the pooled description embedding
    ``theta(t_d)``, after the encoder (CoPrompt-style sentence-level adjustment)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


class Adaptor(nn.Module):
    """``theta^a`` / ``phi^a``: ``residual``: ``x + W_2 relu(W_1 x)`` (bottleneck ``dim/reduction``,
    ``W_2`` zero-initialised); ``linear``: identity-initialised ``W x + b``; ``none``: identity."""

    def __init__(self, dim: int, kind: str = "residual", reduction: int = 4):
        super().__init__()
        if kind not in ("residual", "linear", "none"):
            raise UserError(f"pathoprompt adaptor must be residual, linear or none, got {kind!r}")
        self.kind = kind
        if kind == "residual":
            h = max(1, dim // reduction)
            self.down, self.up = nn.Linear(dim, h), nn.Linear(h, dim)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        elif kind == "linear":
            self.lin = nn.Linear(dim, dim)
            with torch.no_grad():
                self.lin.weight.copy_(torch.eye(dim))
                self.lin.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.kind == "residual":
            return x + self.up(F.relu(self.down(x)))
        if self.kind == "linear":
            return self.lin(x)
        return x


def split_template(template: str) -> tuple[str, str]:
    """``"a photo of a {}."`` -> (``"a photo of a"``, ``"."``): context words and suffix."""
    if template.count("{}") != 1:
        raise UserError(f"pathoprompt template {template!r} needs exactly one '{{}}'")
    prefix, suffix = template.split("{}")
    if not prefix.strip():
        raise UserError(f"pathoprompt template {template!r} needs words before '{{}}' "
                        "(they become the learnable context)")
    return prefix.strip(), suffix


# ------------------------------------------------------------------------------------------------
@register_method("pathoprompt-text")
class PathoPrompt(Method):
    paper = _PAPER + " (text-only CoOp base)"
    needs_descriptions = True
    base: ClassVar[str] = "text"  # the reading this registered name implements
    defaults = {
        # which base the paper's additions sit on (docs/pathoprompt.md, "Two readings"):
        # multimodal = MaPLe/CoPrompt coupled deep prompts in both encoders (``pathoprompt``, the
        # default reading); text = CoOp context over cached image features (``pathoprompt-text``)
        "base": "text",
        "mm_n_ctx": 2,  # multimodal base: learned context tokens (MaPLe / CoPrompt: 2)
        "mm_depth": 9,  # multimodal base: prompt depth of 12 blocks, scaled (MaPLe / CoPrompt: 9)
        # coarse prompt t_p (Table 3)
        "template": "a photo of a {}.",
        "template_preset": None,  # photo | tissue | microscopic | slide (overrides template)
        "learn_ctx": True,  # the template's words are CoOp context (false: hand-crafted prompt)
        # fine-grained descriptions t_d
        "n_desc": 4,  # s: descriptions sampled per class and step
        "enhancement": "token",  # token (Eq. 3) | shared | sentence | none
        "gamma_dim": "vector",  # vector | scalar
        "psi": "mean",  # mean | linear | none
        # adaptors theta^a, phi^a
        "adaptor": "residual",  # residual | linear | none
        "adaptor_reduction": 4,
        "adapted_logits": True,
        # losses (Eq. 8: L = L_GSD + L_CE - L_PDS)
        "use_gsd": True,
        "use_pds": True,
        "desc_weight": 1.0,
        "align_weight": 1.0,
        "pds_weight": 1.0,
        "desc_teacher_grad": True,
        "pds_bound": "unit",  # unit | margin | none
        "pds_margin": 2.0,
        "prototype_normalize": True,
        "pds_reduce": "sum",  # sum (Eq. 6) | mean
        "pds_images": "labelled",  # labelled | batch
        "pds_modalities": "both",  # both | text | image
        "text_prototypes": "prompt",  # prompt | prompt+descriptions
    }
    train_defaults = {"optimizer": "sgd", "lr": 0.0035, "epochs": 50, "batch_size": 32,
                      "warmup_epochs": 1, "warmup": "constant", "warmup_lr": 1e-5, "amp": True}
    sources: ClassVar[dict[str, str]] = {
        "method.base": "ours: the paper gives no code; two readings (docs/pathoprompt.md)",
        "method.mm_n_ctx": "MaPLe / CoPrompt released configs (N_CTX 2), pathoprompt-mm only",
        "method.mm_depth": "MaPLe / CoPrompt released configs (PROMPT_DEPTH 9), pathoprompt-mm only",
        "method.template": "paper Sec. 3 'Training Details': 'a photo of a {class}'; Table 3",
        "method.enhancement": "paper Eq. 3 (token-level gamma_s, gamma_b)",
        "method.n_desc": "ours (paper: s descriptions, value not given)",
        "method.psi": "ours (paper: 'token-level semantic distillation mechanism', unspecified)",
        "method.adaptor": "ours (paper: adaptors theta^a / phi^a, form not given)",
        "method.adapted_logits": "ours (CoPrompt, which the paper extends, classifies adapted features)",
        "method.pds_bound": "ours (Eq. 8 subtracts an unbounded Eq. 6)",
        "method.desc_weight": "paper Eq. 8 (no weights: 1)",
        "method.align_weight": "paper Eq. 8 (no weights: 1)",
        "method.pds_weight": "paper Eq. 8 (no weights: 1)",
        "train.optimizer": "paper Sec. 3 'Training Details' (SGD)",
        "train.lr": "paper Sec. 3 'Training Details' (0.0035)",
        "train.amp": "paper Sec. 3 'Training Details' (fp16)",
        "train.epochs": "ours: CoOp's 50 (not given)",
        "train.batch_size": "ours: CoOp's 32 (not given)",
    }

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        c = self.cfg
        if c["base"] != self.base:
            other = {"text": "pathoprompt-text", "multimodal": "pathoprompt"}.get(c["base"])
            raise UserError(f"{self.name}: method.base {c['base']!r} is "
                            + (f"the method `{other}` (--method {other})" if other else
                               "unknown; valid: multimodal (pathoprompt), text (pathoprompt-text)"))
        choices = {"enhancement": ("token", "shared", "sentence", "none"),
                   "psi": ("mean", "linear", "none"), "pds_bound": ("unit", "margin", "none"),
                   "pds_reduce": ("sum", "mean"), "pds_images": ("labelled", "batch"),
                   "pds_modalities": ("both", "text", "image"),
                   "text_prototypes": ("prompt", "prompt+descriptions")}
        for k, valid in choices.items():
            if c[k] not in valid:
                raise UserError(f"pathoprompt {k} must be one of {', '.join(valid)}, got {c[k]!r}")
        if c.get("template_preset"):
            if c["template_preset"] not in TEMPLATE_PRESETS:
                raise UserError(f"pathoprompt template_preset must be one of "
                                f"{', '.join(TEMPLATE_PRESETS)}, got {c['template_preset']!r}")
            c["template"] = TEMPLATE_PRESETS[c["template_preset"]]
        ctx_words, suffix = split_template(c["template"])
        self._build_prompt(backbone, texts, ctx_words, suffix)
        D, W = backbone.embed_dim, backbone.text_width
        self.text_adaptor = Adaptor(D, c["adaptor"], c["adaptor_reduction"])
        self.image_adaptor = Adaptor(D, c["adaptor"], c["adaptor_reduction"])
        self.token_enhancer = self.sentence_enhancer = self.psi_linear = None
        if c["use_gsd"]:
            if c["enhancement"] in ("token", "shared"):
                self.token_enhancer = TokenEnhancer(backbone.context_length, W, c["enhancement"],
                                                    c["gamma_dim"])
            elif c["enhancement"] == "sentence":
                self.sentence_enhancer = SentenceEnhancer(D)
            if c["psi"] == "linear":
                self.psi_linear = nn.Linear(D, D)
                with torch.no_grad():
                    self.psi_linear.weight.copy_(torch.eye(D))
                    self.psi_linear.bias.zero_()
        self._bank: tuple[torch.Tensor, torch.Tensor] | None = None  # labelled image features
        self._eval_text: torch.Tensor | None = None
        self._set_descriptions(texts)

    def _build_prompt(self, backbone, texts, ctx_words: str, suffix: str) -> None:
        """Text base: CoOp's context from the template's words (image encoder untouched)."""
        self.prompt = PromptLearner(backbone, texts.classnames, ctx_init=ctx_words, suffix=suffix)
        self.prompt.ctx.requires_grad_(bool(self.cfg["learn_ctx"]))

    # --- classes and descriptions ---------------------------------------------------------------
    def _set_descriptions(self, texts) -> None:
        """Tokenise every description of the current classes once (sampled per step later)."""
        self._desc_ids = None
        if not self.cfg["use_gsd"]:
            return
        names = texts.classnames
        if not all(texts.descriptions.get(n) for n in names):
            return  # e.g. novel classes without descriptions: only needed for training
        bb = self.backbone
        sents, owner = [], []
        for c, n in enumerate(names):
            sents += texts.descriptions[n]
            owner += [c] * len(texts.descriptions[n])
        ids = bb.tokenize(sents)
        self._desc_ids = ids
        self._desc_eos = bb.eos_positions(ids).cpu()
        self._desc_owner = torch.tensor(owner)
        self._desc_ranges = []
        start = 0
        for n in names:
            k = len(texts.descriptions[n])
            self._desc_ranges.append((start, start + k))
            start += k

    def set_classes(self, texts) -> None:
        super().set_classes(texts)
        self.prompt.set_classnames(texts.classnames)
        self._set_descriptions(texts)
        self._eval_text = None

    def train(self, mode: bool = True):
        self._eval_text = None
        return super().train(mode)

    def fit(self, train, val, engine) -> dict:
        """Keep the labelled images' features for Eq. 5's image prototypes, then train."""
        if train.features is not None:
            self._bank = (train.features.to(self.backbone.device), train.labels.to(self.backbone.device))
        try:
            return engine.train(self, train, val)
        finally:
            self._bank = None

    # --- encoders -------------------------------------------------------------------------------
    def coarse_features(self) -> torch.Tensor:
        """``theta(t_p)``: normalised features [C, D] of the (learnable) coarse prompts."""
        return encode_prompted_text(self.backbone, self.prompt).float()

    def sample_descriptions(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Indices ``[C, s]`` of ``s`` descriptions per class, drawn afresh each step (Sec. 2.2);
        without replacement when a class has at least ``s``."""
        s = 1 if self.cfg["psi"] == "none" else int(self.cfg["n_desc"])
        rows = []
        for a, b in self._desc_ranges:
            n = b - a
            if n >= s:
                rows.append(a + torch.randperm(n, generator=generator)[:s])
            else:
                rows.append(a + torch.cat([torch.randperm(n, generator=generator),
                                           torch.randint(0, n, (s - n,), generator=generator)]))
        return torch.stack(rows)

    def description_features(self, idx: torch.Tensor) -> torch.Tensor:
        """``theta(gamma^T t_d)`` for the sampled descriptions ``idx [C, s]`` -> ``[C, s, D]``
        (normalised; the sentence-level ablation applies its scale/shift after the encoder)."""
        bb = self.backbone
        flat = idx.flatten()
        ids = self._desc_ids[flat].to(bb.device)
        with torch.no_grad():
            emb = bb.embed_tokens(ids).float()
        if self.token_enhancer is not None:
            slot = self.token_enhancer.slots(ids, self._desc_eos[flat].to(bb.device))
            emb = self.token_enhancer(emb, slot)
        feats = bb.encode_text(ids, embeddings=emb, normalize=True).float()
        if self.sentence_enhancer is not None:
            feats = F.normalize(self.sentence_enhancer(feats), dim=-1)
        if self.psi_linear is not None:
            feats = self.psi_linear(feats)
        return feats.view(idx.shape[0], idx.shape[1], -1)

    def _classifier(self, g: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_adaptor(g), dim=-1) if self.cfg["adapted_logits"] else g

    def _image(self, e: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_adaptor(e), dim=-1) if self.cfg["adapted_logits"] else e

    def forward(self, batch: Batch) -> torch.Tensor:
        e = self.image_features(batch)
        if self.training or self._eval_text is None:
            t = self._classifier(self.coarse_features())
            if self.training:
                return clip_logits(self.backbone, self._image(e), t)
            self._eval_text = t.detach()
        return clip_logits(self.backbone, self._image(e), self._eval_text.to(e.device))

    # --- Eq. 8 ----------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg
        bb = self.backbone
        e = self.image_features(batch)  # phi(x), normalised
        g = self.coarse_features()  # theta(t_p)
        g_a = self.text_adaptor(g)  # theta^a(theta(t_p))
        logits = clip_logits(bb, self._image(e), F.normalize(g_a, dim=-1) if c["adapted_logits"] else g)
        ce = F.cross_entropy(logits, batch.labels)
        total = ce
        parts = {"ce": float(ce.detach())}
        desc_feats = None
        if c["use_gsd"]:
            if self._desc_ids is None:
                raise UserError("pathoprompt needs descriptions for every training class "
                                "(--set texts.descriptions=FILE, or method.use_gsd=false)")
            desc_feats = self.description_features(self.sample_descriptions())  # [C, s, D]
            z_d = psi_mean(desc_feats)  # psi(theta(gamma t_d)), [C, D]
            lg_d = clip_logits(bb, e, z_d)  # P(y | z_d)
            if not c["desc_teacher_grad"]:
                lg_d = lg_d.detach()
            l_desc = loss_desc(lg_d, clip_logits(bb, e, g))  # Eq. 2
            l_align = loss_align(z_d, g_a)  # Eq. 3
            total = total + c["desc_weight"] * l_desc + c["align_weight"] * l_align  # Eq. 4
            parts.update(desc=float(l_desc.detach()), align=float(l_align.detach()))
        if c["use_pds"]:
            l_pds = self.pds(g_a, e, batch.labels, desc_feats)
            total = total - c["pds_weight"] * l_pds  # Eq. 8
            parts["pds"] = float(l_pds.detach())
        parts["total"] = float(total.detach())
        return total, parts

    def pds(self, g_a: torch.Tensor, e: torch.Tensor, labels: torch.Tensor,
            desc_feats: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 5-6 with the configured bound: text prototypes from ``theta^a(theta(t_p))`` (and
        optionally the enhanced descriptions), image prototypes from ``phi^a(phi(x))`` of the
        labelled images (or the batch)."""
        c = self.cfg
        C = g_a.shape[0]
        unit = c["pds_bound"] == "unit"
        pn = bool(c["prototype_normalize"])
        text_p = image_p = None
        if c["pds_modalities"] in ("both", "text"):
            feats, labs = g_a, torch.arange(C, device=g_a.device)
            if c["text_prototypes"] == "prompt+descriptions" and desc_feats is not None:
                s = desc_feats.shape[1]
                feats = torch.cat([feats, self.text_adaptor(desc_feats.reshape(C * s, -1))])
                labs = torch.cat([labs, torch.arange(C, device=g_a.device).repeat_interleave(s)])
            text_p, _ = prototypes(feats, labs, C, unit, pn)
        if c["pds_modalities"] in ("both", "image"):
            if c["pds_images"] == "labelled" and self._bank is not None:
                feats, labs = self._bank
                feats = F.normalize(feats.float(), dim=-1)
            else:
                feats, labs = e, labels
            image_p, _ = prototypes(self.image_adaptor(feats), labs, C, unit, pn)
        return loss_pds(text_p, image_p, c["pds_bound"], c["pds_margin"], c["pds_reduce"])

    def pds_upper_bound(self) -> float:
        """The largest value ``L_PDS`` can take under ``pds_bound: unit`` (or ``margin``):
        ``2 * pairs * bound`` (inf for ``none``)."""
        C = len(self.texts.classnames)
        per = {"unit": 2.0, "margin": float(self.cfg["pds_margin"]), "none": math.inf}[self.cfg["pds_bound"]]
        pairs = C * (C - 1) / 2 if self.cfg["pds_reduce"] == "sum" else 1.0
        n_mod = 2 if self.cfg["pds_modalities"] == "both" else 1
        return n_mod * pairs * per


@register_method("pathoprompt")
class PathoPromptMM(PathoPrompt):
    """PathoPrompt on a multi-modal deep-prompt base: the default reading (docs/pathoprompt.md).

    The paper's text points to a CoPrompt-style base: its lr 0.0035 and fp16 are MaPLe's and
    CoPrompt's released settings (CoOp's lr is 0.002), its adaptors ``theta^a`` / ``phi^a`` are
    CoPrompt's two output adapters, it presents itself as a refinement of CoPrompt's alignment,
    and it compares against MaPLe, PromptSRC and CoPrompt under one backbone. ``pathoprompt-text``
    is the other reading (CoOp's text-only context over cached features).

    The coarse prompt's context and the image encoder are prompted as in MaPLe / CoPrompt
    (:class:`~medadapt.methods.maple.MultiModalPrompts`: ``mm_n_ctx`` learned tokens from the
    template's words, coupled language-to-vision deep prompts to depth ``mm_depth`` of 12, scaled),
    so ``theta(t_p)`` and ``phi(x)`` in every equation are the PROMPTED encoders; everything else
    (token enhancement, Eq. 2-8, the adaptors) is the text reading's code. Batches carry pixels.
    Image prototypes (Eq. 5) come from the batch: re-encoding every labelled image through the
    prompted encoder at each step is too costly (``pds_images: labelled`` falls back to it)."""

    base: ClassVar[str] = "multimodal"
    paper = _PAPER + " (multi-modal deep-prompt base)"
    needs_images = True
    defaults = {**PathoPrompt.defaults, "base": "multimodal", "pds_images": "batch"}
    # the paper's SGD lr 0.0035 + fp16 are CoPrompt's released config
    # (vit_b16_c2_ep5_batch4_2ctx: batch 4, 8 epochs in its few-shot scripts); epochs and batch
    # are not in the paper, so they follow that config
    train_defaults = {"optimizer": "sgd", "lr": 0.0035, "epochs": 8, "batch_size": 4,
                      "warmup_epochs": 1, "warmup": "constant", "warmup_lr": 1e-5, "amp": True}
    sources: ClassVar[dict[str, str]] = {
        **PathoPrompt.sources,
        "method.pds_images": "ours: batch prototypes (the prompted encoder is not cached)",
        "train.epochs": "ours: CoPrompt's released schedule (8), not given in the paper",
        "train.batch_size": "ours: CoPrompt's released config (4), not given in the paper",
    }

    def _build_prompt(self, backbone, texts, ctx_words: str, suffix: str) -> None:
        from medadapt.methods.maple import MultiModalPrompts
        if suffix.strip() not in (".", ""):
            raise UserError(f"pathoprompt: template {self.cfg['template']!r} must end with "
                            "'{}.' (the multi-modal prompt puts the class name last)")
        self.mm = MultiModalPrompts(backbone, texts.classnames, int(self.cfg["mm_n_ctx"]),
                                    ctx_words, int(self.cfg["mm_depth"]))
        self.prompt = self.mm.prompt
        if not self.cfg["learn_ctx"]:
            self.prompt.ctx.requires_grad_(False)

    def coarse_features(self) -> torch.Tensor:
        return self.mm.text_features(self.backbone).float()

    def image_features(self, batch: Batch) -> torch.Tensor:
        if batch.images is None:
            raise ValueError("pathoprompt prompts the image encoder: batches need pixels")
        return self.mm.image_features(self.backbone, batch.images).float()
