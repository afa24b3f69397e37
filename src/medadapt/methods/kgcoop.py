"""KgCoOp: Knowledge-guided Context Optimization (Yao, Zhang, Xu, "Visual-Language Prompt Tuning
with Knowledge-guided Context Optimization", CVPR 2023).

CoOp's learnable context plus a penalty keeping each learned class embedding ``w_i`` close to the
hand-crafted CLIP embedding ``w_i^clip`` of ``"a photo of a {class}."`` (Eq. 6-7):

    L = L_ce + λ · L_kg,   L_kg = 1/N_c Σ_i ‖w_i − w_i^clip‖²₂   (w normalised; λ = 8)

``distance="cosine"`` (default) is the released code's ``L_kg = 1 − mean_i cos(w_i, w_i^clip)``
(htyao89/KgCoOp trainers/kgcoop.py, ``loss = CE + W · score`` with ``W = 8.0`` in
scripts/run.sh), exactly half of Eq. 6 for unit vectors; ``distance="l2"`` is the paper's Eq. 6
(with λ = 8 it regularises twice as strongly as the released runs). ``text_mode`` picks the
hand-crafted embedding: ``template`` (first template of the data set's set, the paper's single
prompt) or ``ensemble`` (mean over the set). The image encoder is untouched: cached features.

Defaults (released ``configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml``): 4 context tokens
initialised from "a photo of a", λ = 8 on the cosine distance, SGD lr 0.002, batch 128, 100
epochs, Dassl's per-epoch cosine with one constant warm-up epoch at 1e-5.
"""
from __future__ import annotations

import torch

from medadapt.methods._prompt import frozen_text_features
from medadapt.methods.base import Batch, register_method
from medadapt.methods.coop import AUGMENT_SOURCE, DASSL_SGD_SOURCES, CoOp


@register_method("kgcoop")
class KgCoOp(CoOp):
    paper = ("Yao et al., Visual-Language Prompt Tuning with Knowledge-guided Context "
             "Optimization, CVPR 2023")
    defaults = {"n_ctx": 4, "ctx_init": "a photo of a", "csc": False, "position": "end",
                "lambda": 8.0, "distance": "cosine", "text_mode": "template"}
    train_defaults = {"optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4,
                      "epochs": 100, "batch_size": 128, "warmup_epochs": 1, "warmup": "constant",
                      "warmup_lr": 1e-5, "sched_unit": "epoch", "grad_clip": 0.0,
                      "backbone_mode": "eval", "drop_last": True}
    by_shots = {}
    sources = {
        "method.n_ctx": "htyao89/KgCoOp scripts/base2new_train.sh NCTX=4",
        "method.ctx_init": "KgCoOp configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml COOP.CTX_INIT True ('a photo of a')",
        "method.lambda": "htyao89/KgCoOp scripts/run.sh WEIGHT 8.0; paper Sec. 4 (λ = 8)",
        "method.distance": ("htyao89/KgCoOp trainers/kgcoop.py: score = 1 - mean cos(w, w_clip); "
                            "deviation from the paper's Eq. 6 squared L2 (= 2x the cosine form)"),
        "method.text_mode": "KgCoOp paper Sec. 3.3: the single hand-crafted prompt 'a photo of a {class}.'",
        "method.csc": "KgCoOp scripts CSC=False", "method.position": "KgCoOp scripts CTP=end",
        **DASSL_SGD_SOURCES,
        "train.lr": "KgCoOp vit_b16_ep100_ctxv1.yaml OPTIM.LR 0.002",
        "train.epochs": "KgCoOp vit_b16_ep100_ctxv1.yaml OPTIM.MAX_EPOCH 100",
        "train.batch_size": "KgCoOp vit_b16_ep100_ctxv1.yaml DATALOADER.TRAIN_X.BATCH_SIZE 128",
        "train.backbone_mode": "KgCoOp trainers/kgcoop.py registers only self.model.prompt_learner",
        "data.augment_views": AUGMENT_SOURCE,
    }

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
