"""KgCoOp: Knowledge-guided Context Optimization (Yao, Zhang, Xu, "Visual-Language Prompt Tuning
with Knowledge-guided Context Optimization", CVPR 2023).

CoOp's learnable context plus a penalty keeping each learned class embedding ``w_i`` close to the
hand-crafted CLIP embedding ``w_i^clip`` of ``"a photo of a {class}."`` (Eq. 6-7):

    L = L_ce + λ · L_kg,   L_kg = 1/N_c Σ_i ‖w_i − w_i^clip‖²₂   (w normalised; λ = 8)

``distance="l2"`` is the paper's Eq. 6; ``distance="cosine"`` is the released code's
``1 − mean cos(w_i, w_i^clip)`` (exactly half of it for unit vectors). ``text_mode`` picks the
hand-crafted embedding: ``template`` (first template of the data set's set, the paper's single
prompt) or ``ensemble`` (mean over the set). The image encoder is untouched: cached features.

Defaults: 4 context tokens initialised from "a photo of a", λ = 8, SGD lr 0.002, batch 32,
CoOp's cosine schedule with one constant warm-up epoch. Epochs follow CoOp's few-shot setting (50);
the paper's base-to-novel runs are shorter (override ``train.epochs``).
"""
from __future__ import annotations

import torch

from medadapt.methods._prompt import frozen_text_features
from medadapt.methods.base import Batch, register_method
from medadapt.methods.coop import CoOp


@register_method("kgcoop")
class KgCoOp(CoOp):
    paper = ("Yao et al., Visual-Language Prompt Tuning with Knowledge-guided Context "
             "Optimization, CVPR 2023")
    defaults = {"n_ctx": 4, "ctx_init": "a photo of a", "csc": False, "position": "end",
                "lambda": 8.0, "distance": "l2", "text_mode": "template"}
    train_defaults = {"optimizer": "sgd", "lr": 0.002, "epochs": 50, "batch_size": 32,
                      "warmup_epochs": 1, "warmup": "constant", "warmup_lr": 1e-5}

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        if self.cfg["distance"] not in ("l2", "cosine"):
            raise ValueError(f"kgcoop distance must be l2 or cosine, got {self.cfg['distance']!r}")
        self._clip_features()

    def _clip_features(self):
        t = self.texts.templates if self.cfg["text_mode"] == "ensemble" else self.texts.templates[:1]
        self.clip_text = frozen_text_features(self.backbone, self.texts.classnames, t)

    def set_classes(self, texts) -> None:
        super().set_classes(texts)
        self._clip_features()

    def loss(self, batch: Batch):
        txt = self.text_features().float()
        logits = self.backbone.logit_scale * self.image_features(batch) @ txt.T
        ce = torch.nn.functional.cross_entropy(logits, batch.labels)
        w0 = self.clip_text.to(txt.device)
        if self.cfg["distance"] == "l2":
            kg = ((txt - w0) ** 2).sum(-1).mean()
        else:
            kg = 1.0 - (txt * w0).sum(-1).mean()
        loss = ce + float(self.cfg["lambda"]) * kg
        return loss, {"ce": float(ce.detach()), "kg": float(kg.detach())}
