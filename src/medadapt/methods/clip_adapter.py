"""CLIP-Adapter (Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters",
IJCV 2024; also Eq. 1 of the SCALE paper).

A bottleneck adapter on the frozen features ``A(f) = ReLU(f W1) W2`` (W1: D -> D/reduction,
W2: D/reduction -> D, no biases) and residual blending ``f' = alpha A(f) + (1 - alpha) f``
(Gao et al. Eq. 2-3; SCALE Eq. 1 and the line after it). The adapter sits on the image features
(Gao's default and best variant), the text features, or both; ``alpha`` is fixed (Gao: 0.2) or
learned (SCALE). Logits are ``logit_scale * cos(f'_img, f'_txt)``.

Decisions where the papers leave room:
* ``final_relu``: Gao's released code (gaopengcuhk/CLIP-Adapter ``clip_adapter.py``, class
  ``Adapter``: ``Linear, ReLU, Linear, ReLU``) ends the adapter with a second ReLU; SCALE's Eq. 1
  has none. Default ``True`` (the released code); ``False`` gives Eq. 1.
* Image features enter the adapter raw (un-normalised projections, as in Gao's code); the text
  branch adapts the L2-normalised class text features the backbone gives (``text_mode``:
  template / ensemble / descriptions). ``normalize_input: true`` normalises image features first.
* Training: Gao's README says "follow CoOp's command"; the trainer is Dassl's, so the engine
  defaults are CoOp's few-shot config (``configs/trainers/CoOp/rn50.yaml``: SGD lr 0.002, momentum
  0.9, weight decay 5e-4, batch 32, cosine, 1 constant warm-up epoch at 1e-5, 200 epochs).

Why it sits at zero-shot on ``synthpath-clip`` (the method's own behaviour, not a defect): the
residual ratio 0.2 keeps ``0.8 f`` in the blend, so the adapter has to grow before a prediction
moves, and the cross-entropy gradient that grows it scales with the backbone's logit scale. CoOp's
lr was set for CLIP (logit scale 100); ``synthpath-clip`` has 13.3. Measured on 16-shot synth-crc
(docs/adapters.md): the reference settings stay at zero-shot (65.8%); the same run with the logit
scale forced to 100 reaches 74.6%; with the backbone's own scale it needs lr ~0.1-0.2 (71.9-79.7%).
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from medadapt.errors import UserError
from medadapt.methods.base import Batch, Method, register_method, text_features_for


class Adapter(nn.Module):
    """``A(f) = ReLU(f W1) W2`` (SCALE Eq. 1; Gao et al. Eq. 2), optionally with a final ReLU."""

    def __init__(self, dim: int, reduction: int = 4, final_relu: bool = False):
        super().__init__()
        hidden = max(1, dim // int(reduction))
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.final_relu = bool(final_relu)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        x = self.w2(F.relu(self.w1(f)))
        return F.relu(x) if self.final_relu else x


class ResidualAdapter(nn.Module):
    """``f' = alpha A(f) + (1 - alpha) f`` with ``alpha`` fixed (a buffer) or learned (a
    parameter, SCALE Sec. 2.1: "where alpha is also a learnable parameter")."""

    def __init__(self, dim: int, reduction: int = 4, alpha: float = 0.2, learn_alpha: bool = False,
                 final_relu: bool = False):
        super().__init__()
        self.adapter = Adapter(dim, reduction, final_relu)
        a = torch.tensor(float(alpha))
        if learn_alpha:
            self.alpha = nn.Parameter(a)
        else:
            self.register_buffer("alpha", a, persistent=False)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        a = self.alpha.to(f.dtype)
        return a * self.adapter(f) + (1 - a) * f


_BIOMED_CA = "HealthX-Lab/BiomedCoOp@7ceb5a8 trainers/ClipAdapter/clip_adapter_biomedclip.py"


def biomedcoop_lr(step: int, cfg: dict) -> float:
    """BiomedCoOp's CLIP-Adapter schedule (``impl: biomedcoop``): ``ConstantWarmupScheduler``
    around ``CosineAnnealingLR(T_max=epochs)``, both stepped after every batch. Steps
    ``0 .. W-1`` (``W = train.warmup_epochs``, counted in steps) run at ``train.warmup_lr``;
    step ``s >= W`` at ``lr / 2 (1 + cos(pi (s - W) / epochs))`` (the cosine keeps going past its
    ``T_max``, up again, as torch's ``CosineAnnealingLR`` does)."""
    w = int(cfg.get("warmup_epochs") or 0)
    if step < w:
        return float(cfg["warmup_lr"])
    return 0.5 * float(cfg["lr"]) * (1 + math.cos(math.pi * (step - w) / max(1, int(cfg["epochs"]))))


@register_method("clip-adapter")
class CLIPAdapter(Method):
    paper = "Gao et al., CLIP-Adapter: Better Vision-Language Models with Feature Adapters, IJCV 2024"
    supports_novel = True  # with the image-only adapter the classifier is the text encoder
    defaults = {"adapt": "image",  # image | text | both
                "reduction": 4, "alpha": 0.2, "learn_alpha": False, "final_relu": True,
                "normalize_input": False, "text_mode": "template",
                "impl": "paper"}
    train_defaults = {"optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4,
                      "epochs": 200, "batch_size": 32, "warmup_epochs": 1, "warmup": "constant",
                      "warmup_lr": 1e-5, "grad_clip": 0.0}
    sources: ClassVar[dict[str, str]] = {
        "method.impl": ("paper: this method as its own paper's release runs it; biomedcoop: as "
                        "BiomedCoOp's main.py port runs it (recipes only, see medadapt recipes): "
                        f"{_BIOMED_CA} lines 245-253: the blend alpha A(f) + (1 - alpha) f is NOT "
                        "normalised again before the logits; lines 115-120, 151: plain SGD, "
                        "CosineAnnealingLR(T_max=train_epoch) inside a ConstantWarmupScheduler "
                        "(WARMUP_EPOCH 1, WARMUP_CONS_LR 1e-5), both stepped every BATCH: step 0 "
                        "at warmup_lr, step s >= W at lr/2 (1 + cos(pi (s - W) / epochs)), a "
                        "cosine of period 2 epochs-many steps. The rest are settings a recipe sets "
                        "(normalize_input true, alpha 0.5, lr 0.01, epochs 20, momentum 0, "
                        "weight_decay 0, drop_last false: configs/trainers/CLIP_Adapter/"
                        "few_shot.yaml, lines 86-87 / 136-137 / 249)"),
        "method.adapt": "gaopengcuhk/CLIP-Adapter clip_adapter.py (visual adapter only)",
        "method.reduction": "clip_adapter.py: Adapter(1024, 4)",
        "method.alpha": "clip_adapter.py: ratio = 0.2",
        "method.final_relu": "clip_adapter.py: Adapter = Linear, ReLU, Linear, ReLU",
        "method.normalize_input": "clip_adapter.py: adapter on raw image_features, normalised after",
        "method.text_mode": "clip_adapter.py: one hand-written template per data set",
        "train.optimizer": "README: 'follow CoOp's command' -> CoOp configs/trainers/CoOp/rn50.yaml",
        "train.lr": "CoOp rn50.yaml (0.002)",
        "train.epochs": "CoOp rn50.yaml (200)",
        "train.batch_size": "CoOp rn50.yaml (32)",
        "train.warmup_epochs": "CoOp rn50.yaml (1 constant epoch at 1e-5)",
        "train.grad_clip": "Dassl does not clip",
    }
    learned_buffers = ()

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        c = self.cfg
        if c["adapt"] not in ("image", "text", "both"):
            raise UserError(f"clip-adapter: method.adapt must be image, text or both, got "
                            f"{c['adapt']!r}")
        if not (isinstance(c["reduction"], int) and c["reduction"] >= 1):
            raise UserError(f"clip-adapter: method.reduction must be a positive integer, got "
                            f"{c['reduction']!r}")
        d = backbone.embed_dim
        kw = dict(reduction=c["reduction"], alpha=c["alpha"], learn_alpha=bool(c["learn_alpha"]),
                  final_relu=bool(c["final_relu"]))
        self.image_adapter = ResidualAdapter(d, **kw) if c["adapt"] in ("image", "both") else None
        self.text_adapter = ResidualAdapter(d, **kw) if c["adapt"] in ("text", "both") else None
        self.register_buffer("text_features", text_features_for(backbone, texts, c["text_mode"]),
                             persistent=False)

    def set_classes(self, texts) -> None:
        super().set_classes(texts)
        self.text_features = text_features_for(self.backbone, texts, self.cfg["text_mode"]).to(
            self.text_features.device)

    def adapted_image(self, batch: Batch) -> torch.Tensor:
        if batch.features is not None:
            f = batch.features.float()
        else:
            f = self.backbone.encode_image(batch.images, normalize=False).float()
        if self.cfg["normalize_input"]:
            f = F.normalize(f, dim=-1)
        if self.image_adapter is not None:
            f = self.image_adapter(f)
        if self.cfg.get("impl") == "biomedcoop":
            return f  # the blend enters the logits as it is (clip_adapter_biomedclip.py l. 249-253)
        return F.normalize(f, dim=-1)

    def lr_schedule(self, train_cfg: dict):
        """``impl: biomedcoop``: the per-batch warm-up + cosine of :func:`biomedcoop_lr`; the
        paper implementation keeps the engine's schedule (None)."""
        if self.cfg.get("impl") != "biomedcoop":
            return None
        return lambda epoch, step: biomedcoop_lr(step, train_cfg)

    def adapted_text(self) -> torch.Tensor:
        t = self.text_features
        if self.text_adapter is not None:
            t = self.text_adapter(t)
        return F.normalize(t, dim=-1)

    def forward(self, batch: Batch) -> torch.Tensor:
        img = self.adapted_image(batch)
        return self.backbone.logit_scale * img @ self.adapted_text().to(img.device).T
