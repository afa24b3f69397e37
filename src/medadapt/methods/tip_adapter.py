"""Tip-Adapter and Tip-Adapter-F (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for
Few-shot Classification", ECCV 2022).

Cache model from the few-shot training set: keys ``F_train`` (L2-normalised image features,
[NK, D]) and values ``L_train`` (one-hot labels, [NK, C]). For a test feature ``f``:

* affinities ``A = exp(-beta (1 - f F_train^T))``            (Eq. 4)
* logits ``= logit_scale * f W_c^T + alpha * A L_train``        (Eq. 5-6)

with ``W_c`` the frozen class text features and ``logit_scale`` CLIP's (100 for CLIP; the
backbone's own value here, as every method in medadapt uses).

The cache keys are the mean of the raw features of ``data.augment_views`` = 10 augmented views
of each training image, normalised (released ``augment_epoch: 10``; the views come from the
backbone's train transform, random resized crop 0.08-1 + flip, where the reference crops 0.5-1).

``tip-adapter`` is training-free. ``tip-adapter-f`` turns the keys into learnable parameters
(initialised with the cache, values stay fixed) and fine-tunes them with cross-entropy at the
initial alpha / beta on a fresh augmented view per epoch (AdamW, lr 0.001, eps 1e-4, cosine
stepped per iteration over 20 epochs, batch 256, as in the released ``main.py`` / configs).

Both search alpha and beta afterwards on the few-shot **validation** split only (never test):
the released code's grid ``beta in 0.1 + i (s_beta - 0.1) / n_beta``, ``alpha in 0.1 + j
(s_alpha - 0.1) / n_alpha``. Defaults follow BiomedCoOp's medical Tip-Adapter config
(``configs/trainers/TiP_Adapter/few_shot.yaml``: ``search_scale [50, 50]``, ``search_step
[200, 200]``, ``init_beta 1``, ``init_alpha 1``), wider than Tip-Adapter's ImageNet grid
(``[7, 3]``, ``[200, 20]``, ``init_alpha 1.17``). Without a validation split the initial values
are kept. Ties keep the first grid point (smallest beta, then smallest alpha).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from medadapt.errors import UserError
from medadapt.methods.base import Batch, Method, register_method, text_features_for


def tip_logits(f: torch.Tensor, text: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               alpha: float | torch.Tensor, beta: float | torch.Tensor,
               logit_scale: float | torch.Tensor) -> torch.Tensor:
    """Eq. 6: ``logit_scale f W_c^T + alpha exp(-beta (1 - f F^T)) L``; ``f`` normalised."""
    clip_logits = logit_scale * f @ text.T
    affinity = torch.exp(-beta * (1 - f @ keys.T))
    return clip_logits + alpha * affinity @ values


def search_alpha_beta(f: torch.Tensor, labels: torch.Tensor, text: torch.Tensor,
                      keys: torch.Tensor, values: torch.Tensor, logit_scale: float,
                      search_scale=(7.0, 3.0), search_step=(200, 20)) -> tuple[float, float, float]:
    """Grid search on a validation set; returns (alpha, beta, accuracy)."""
    sb, sa = float(search_scale[0]), float(search_scale[1])
    nb, na = int(search_step[0]), int(search_step[1])
    betas = [i * (sb - 0.1) / nb + 0.1 for i in range(nb)]
    alphas = torch.tensor([i * (sa - 0.1) / na + 0.1 for i in range(na)], dtype=f.dtype,
                          device=f.device)
    clip_logits = logit_scale * f @ text.T  # [N, C]
    sims = f @ keys.T
    best = (-1.0, None, None)
    for b in betas:
        cache = torch.exp(-b * (1 - sims)) @ values  # [N, C]
        logits = clip_logits[None] + alphas[:, None, None] * cache[None]  # [A, N, C]
        acc = (logits.argmax(-1) == labels[None]).float().mean(-1)  # [A]
        j = int(acc.argmax())
        if float(acc[j]) > best[0]:
            best = (float(acc[j]), float(alphas[j]), b)
    return best[1], best[2], best[0]


# BiomedCoOp's medical Tip-Adapter config; read from a public fork of BiomedCoOp
# (tongdiedie/BiomedAP), the upstream file is not in the searchable copy.
_BIOMED_TIP = "HealthX-Lab/BiomedCoOp configs/trainers/TiP_Adapter/few_shot.yaml"
_BIOMED_TIP_PY = "HealthX-Lab/BiomedCoOp@7ceb5a8 trainers/TipAdapter/tip_adapter_biomedclip.py"
# impl: biomedcoop. The logit scale is a literal in every logits line of the BiomedCLIP port
# (lines 63, 81, 100, 111, 140, 164, 192, 221; trainers/utils.py line 100), BiomedCLIP's own
# exp(logit_scale) rounded, on any backbone.
BIOMEDCOOP_LOGIT_SCALE = 85.2323
# configs/trainers/TiP_Adapter/few_shot.yaml @7ceb5a8: grid_search True (line 19),
# init_alpha_scale 10 (line 28): the initial alpha is searched over range(10) = 0, 1, ..., 9
BIOMEDCOOP_INIT_ALPHAS = tuple(range(10))
_IMPL_SOURCE = (
    "paper: this method as its own paper's release runs it; biomedcoop: as BiomedCoOp's main.py "
    f"port runs it (recipes only, see medadapt recipes): {_BIOMED_TIP_PY}: logits at the fixed "
    f"scale {BIOMEDCOOP_LOGIT_SCALE} (lines 63, 100, 140; trainers/utils.py search_hp_tip_biomedclip "
    "line 100), the alpha/beta search keeps (0, 0) when no grid point beats 0% (utils.py lines "
    "89-107); the cache from data.augment_views augmented passes (few_shot.yaml augment_epoch 1, "
    "utils.py build_cache_model lines 15-39). Tip-Adapter-F (finetune: True) additionally: the "
    "initial alpha searched over range(init_alpha_scale = 10) (lines 104-118), each candidate "
    "training the keys for train.epochs epochs (fresh AdamW, cosine per step, lines 199-241) - and "
    "since every adapter's weight is nn.Parameter(cache_keys.t()) (lines 96-97, 200-201), a view "
    "of the same storage, the ten trainings continue one another (alpha 0, then 1, ... 9) and the "
    "kept keys are those after all ten; the main loop's optimizer holds the first adapter's "
    "parameter, not the kept one, so it changes nothing (it trains, with the best-validation "
    "epoch kept, lines 124-174, only when no candidate beat 0% validation accuracy); then the "
    "alpha/beta search on validation (line 187)")


@register_method("tip-adapter")
class TipAdapter(Method):
    paper = "Zhang et al., Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification, ECCV 2022"
    trainable = False
    supports_novel = False  # the cache values are one-hot over the training classes
    defaults = {"init_alpha": 1.0, "init_beta": 1.0, "search": True,
                "search_scale": [50.0, 50.0], "search_step": [200, 200], "text_mode": "template",
                "impl": "paper"}
    data_defaults = {"augment_views": 10}
    learned_buffers = ("cache_keys", "cache_values", "alpha_beta")
    sources = {
        "method.impl": _IMPL_SOURCE,
        "method.init_alpha": (f"{_BIOMED_TIP} init_alpha 1 (Tip-Adapter's ImageNet config: 1.17)"),
        "method.init_beta": f"{_BIOMED_TIP} init_beta 1 (Tip-Adapter configs/imagenet.yaml: 1)",
        "method.search": f"{_BIOMED_TIP} search_hp True (on the validation split only)",
        "method.search_scale": (f"{_BIOMED_TIP} search_scale [50, 50] (Tip-Adapter configs/imagenet.yaml: "
                                "[7, 3])"),
        "method.search_step": f"{_BIOMED_TIP} search_step [200, 200] (Tip-Adapter imagenet.yaml: [200, 20])",
        "method.text_mode": "Tip-Adapter main.py clip_classifier: one template per class here (reference: the data set's template ensemble)",
        "data.augment_views": ("Tip-Adapter configs/*.yaml augment_epoch 10 (cache = mean over 10 augmented "
                               "views); deviation from BiomedCoOp's few_shot.yaml augment_epoch 1"),
    }

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        d, c = backbone.embed_dim, len(texts.classnames)
        self.register_buffer("text_features", text_features_for(backbone, texts,
                                                                self.cfg["text_mode"]),
                             persistent=False)
        self.register_buffer("cache_keys", torch.zeros(0, d), persistent=False)
        self.register_buffer("cache_values", torch.zeros(0, c), persistent=False)
        self.register_buffer("alpha_beta", torch.tensor([float(self.cfg["init_alpha"]),
                                                         float(self.cfg["init_beta"])]),
                             persistent=False)

    @property
    def biomedcoop(self) -> bool:
        return self.cfg.get("impl") == "biomedcoop"

    def scale(self):
        """The logit scale: the backbone's, or BiomedCoOp's literal 85.2323 (``impl``)."""
        return BIOMEDCOOP_LOGIT_SCALE if self.biomedcoop else self.backbone.logit_scale

    # --- cache ----------------------------------------------------------------------------------
    def build_cache(self, train) -> None:
        if train.features is None or len(train) == 0:
            raise UserError(f"{self.name}: no training images for the cache")
        keys = F.normalize(train.features.float(), dim=-1)
        n = getattr(train, "n_views", 0) if hasattr(train, "augmented") else 0
        if n and hasattr(train, "prefetch_passes"):
            train.prefetch_passes(range(n))
        if n:
            # Tip-Adapter's build_cache_model: mean of the raw features of the augmented views
            # (augment_epoch of them, the un-augmented image is not among them), then normalise;
            # cached views or, with data.fresh_views, fresh passes 0..V-1
            keys = F.normalize(torch.stack([train.augmented(k).float() for k in range(n)]).mean(0),
                               dim=-1)
        elif train.views is not None and len(train.views):
            keys = F.normalize(train.views.float().mean(0), dim=-1)
        values = F.one_hot(train.labels, len(self.texts.classnames)).float()
        dev = self.text_features.device
        self.cache_keys, self.cache_values = keys.to(dev), values.to(dev)

    def keys(self) -> torch.Tensor:
        return self.cache_keys

    def _search(self, val, info: dict) -> None:
        if not self.cfg["search"]:
            info["alpha_beta_selection"] = "search disabled: initial values"
            return
        if val is None or len(val) == 0:
            info["alpha_beta_selection"] = "no validation set: initial values"
            return
        with torch.no_grad():
            fv = F.normalize(val.features.float(), dim=-1).to(self.text_features.device)
            a, b, acc = search_alpha_beta(fv, val.labels.to(fv.device), self.text_features,
                                          self.keys().detach(), self.cache_values,
                                          float(self.scale()),
                                          self.cfg["search_scale"], self.cfg["search_step"])
        if self.biomedcoop and acc <= 0:
            a, b = 0.0, 0.0  # search_hp_tip_biomedclip: best_beta, best_alpha = 0, 0 kept
        self.alpha_beta = torch.tensor([a, b], device=self.alpha_beta.device)
        info["alpha_beta_selection"] = {"val_accuracy": acc, "n_val": len(val)}

    def fit(self, train, val, engine) -> dict:
        self.build_cache(train)
        info: dict = {}
        self._search(val, info)
        info["alpha"], info["beta"] = float(self.alpha_beta[0]), float(self.alpha_beta[1])
        return info

    def n_trainable_params(self) -> int:
        return 0

    def forward(self, batch: Batch) -> torch.Tensor:
        f = self.image_features(batch)
        a, b = self.alpha_beta[0], self.alpha_beta[1]
        return tip_logits(f, self.text_features.to(f.device), self.keys().to(f.device),
                          self.cache_values.to(f.device), a, b, self.scale())


@register_method("tip-adapter-f")
class TipAdapterF(TipAdapter):
    paper = ("Zhang et al., Tip-Adapter: Training-free Adaption of CLIP for Few-shot "
             "Classification, ECCV 2022 (Tip-Adapter-F)")
    trainable = True
    learned_buffers = ("cache_values", "alpha_beta")
    train_defaults = {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.01, "eps": 1e-4,
                      "epochs": 20, "batch_size": 256, "warmup_epochs": 0, "grad_clip": 0.0,
                      "sched_unit": "step", "backbone_mode": "eval", "drop_last": False}
    sources = {
        **TipAdapter.sources,
        "train.optimizer": "Tip-Adapter main.py: torch.optim.AdamW(adapter.parameters(), lr=cfg['lr'], eps=1e-4)",
        "train.eps": "Tip-Adapter main.py AdamW eps=1e-4 (BiomedCoOp trainers/tip_adapter_biomedclip.py too)",
        "train.weight_decay": "torch AdamW default weight_decay 0.01 (not set in main.py)",
        "train.lr": "Tip-Adapter configs/*.yaml lr 0.001",
        "train.epochs": "Tip-Adapter configs/*.yaml train_epoch 20",
        "train.batch_size": "Tip-Adapter main.py train_loader_F batch_size=256",
        "train.warmup_epochs": "Tip-Adapter main.py: no warm-up",
        "train.sched_unit": ("Tip-Adapter main.py: CosineAnnealingLR(optimizer, train_epoch * len(train_loader_F)) "
                             "stepped every iteration"),
        "train.grad_clip": "Tip-Adapter main.py: no clipping",
        "train.backbone_mode": "Tip-Adapter: CLIP in eval mode (features only)",
        "train.drop_last": ("Tip-Adapter datasets/utils.py build_data_loader(drop_last=False) (that file is "
                            "not in the searchable copy; unverified here)"),
    }

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        del self.cache_keys
        self.adapter_keys = nn.Parameter(torch.zeros(0, backbone.embed_dim))

    def build_cache(self, train) -> None:
        super().build_cache(train)
        self.adapter_keys = nn.Parameter(self.cache_keys.clone())
        del self.cache_keys

    def keys(self) -> torch.Tensor:
        return self.adapter_keys

    def fit(self, train, val, engine) -> dict:
        self.build_cache(train)
        self.alpha_beta = torch.tensor([float(self.cfg["init_alpha"]), float(self.cfg["init_beta"])],
                                       device=self.alpha_beta.device)
        if self.biomedcoop:
            info = self._fit_biomedcoop(train, val, engine)
        else:
            # fresh passes 0..V-1 built the cache: training epochs draw the next ones
            info = dict(engine.train(self, train, None, first_draw=getattr(train, "n_views", 0)))
        self._search(val, info)
        info["alpha"], info["beta"] = float(self.alpha_beta[0]), float(self.alpha_beta[1])
        if val is not None and len(val):
            info["val_accuracy"] = engine.accuracy(self, val)
        return info

    # --- impl: biomedcoop ------------------------------------------------------------------------
    def _val_correct(self, xv, yv, alpha: float, beta: float) -> int:
        with torch.no_grad():
            lg = tip_logits(xv, self.text_features, self.adapter_keys, self.cache_values, alpha,
                            beta, BIOMEDCOOP_LOGIT_SCALE)
        return int((lg.argmax(1) == yv).sum())

    def _train_keys(self, train, engine, alpha: float, beta: float, first: int,
                    val=None) -> int | None:
        """One training of the keys as ``search_init_hp`` / the main loop run it: a fresh AdamW
        (lr, eps, weight decay of the settings), ``CosineAnnealingLR(T_max = epochs x batches)``
        stepped every batch, no warm-up, loss = CE of the Tip logits at (alpha, beta); epoch
        ``e`` trains on augmented pass ``first + e``. With ``val``: the keys of the epoch with the
        best validation accuracy (strictly better, from 0) are kept; returns that count."""
        c = engine.cfg
        opt = torch.optim.AdamW([self.adapter_keys], lr=c["lr"], eps=float(c["eps"]),
                                weight_decay=c["weight_decay"])
        total = int(c["epochs"]) * engine.steps_per_epoch(len(train))
        step, best, kept = 0, 0, None
        text, values = self.text_features, self.cache_values
        for e in range(int(c["epochs"])):
            for batch in engine.batches(self, train, shuffle=True, epoch=first + e, draw=first + e):
                for g in opt.param_groups:
                    g["lr"] = 0.5 * c["lr"] * (1 + math.cos(math.pi * step / max(1, total)))
                f = self.image_features(batch)
                lg = tip_logits(f, text, self.adapter_keys, values, alpha, beta,
                                BIOMEDCOOP_LOGIT_SCALE)
                loss = F.cross_entropy(lg, batch.labels)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
            if val is not None:
                n = self._val_correct(*val, alpha, beta)
                if n > best:
                    best, kept = n, self.adapter_keys.detach().clone()
        if val is not None and kept is not None:
            with torch.no_grad():
                self.adapter_keys.copy_(kept)
        return best if val is not None else None

    def _fit_biomedcoop(self, train, val, engine) -> dict:
        """Tip-Adapter-F as BiomedCoOp's port runs it (see ``sources['method.impl']``)."""
        if val is None or len(val) == 0:
            raise UserError("tip-adapter-f (impl: biomedcoop) searches its initial alpha on the "
                            "few-shot validation set, and there is none")
        dev = self.text_features.device
        xv = F.normalize(val.features.float(), dim=-1).to(dev)
        yv = val.labels.to(dev)
        beta = float(self.cfg["init_beta"])
        alpha = float(self.cfg["init_alpha"])
        draw = getattr(train, "n_views", 0)  # passes 0..V-1 built the cache
        epochs = int(engine.cfg["epochs"])
        if hasattr(train, "prefetch_passes"):  # the cache's passes and the ten trainings' ones
            train.prefetch_passes(range(draw, draw + len(BIOMEDCOOP_INIT_ALPHAS) * epochs))
        grid, best, chosen = [], 0, False
        self.train()
        for a in BIOMEDCOOP_INIT_ALPHAS:
            # the keys are shared storage: each candidate continues from the previous one
            self._train_keys(train, engine, float(a), beta, draw)
            draw += epochs
            n = self._val_correct(xv, yv, float(a), beta)
            grid.append(n / len(yv))
            if n > best:
                best, alpha, chosen = n, float(a), True
        if not chosen:  # only then does the main loop change the keys
            self._train_keys(train, engine, alpha, beta, draw, val=(xv, yv))
        self.eval()
        return {"epochs": epochs, "init_alpha_grid": grid, "init_alpha": alpha,
                "main_loop_trained": not chosen, "augmented_passes": draw}

    def load_learned_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        if "adapter_keys" in sd:
            self.adapter_keys = nn.Parameter(torch.zeros_like(sd["adapter_keys"]).to(
                self.text_features.device))
        super().load_learned_state_dict(sd)

    def n_trainable_params(self) -> int:
        return int(self.adapter_keys.numel())
