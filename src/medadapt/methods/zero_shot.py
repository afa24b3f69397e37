"""Zero-shot CLIP (Radford et al. 2021, Sec. 3.1.4): cosine similarity between the image feature
and class text features, scaled by the model's temperature. Three text sources:
``template`` (one template), ``ensemble`` (mean over templates, Sec. 3.1.4 prompt ensembling),
``descriptions`` (mean over fine-grained class descriptions, as in CuPL / BiomedCoOp's teacher).
"""
from __future__ import annotations

import torch

from medadapt.methods.base import Batch, Method, register_method, text_features_for


@register_method("zero-shot")
class ZeroShot(Method):
    paper = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021"
    trainable = False
    uses_shots = False  # a class with fewer than K images is no reason to refuse
    defaults = {"mode": "template"}  # template | ensemble | descriptions
    data_defaults = {"augment_views": 0}  # nothing is trained
    learned_buffers = ("text_features",)
    sources = {
        "method.mode": ("CLIP paper Sec. 3.1.4: one prompt per class (template); 'ensemble' is its "
                        "prompt ensembling; CoOp scripts/coop/zeroshot.sh uses one template per data set"),
    }

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        if self.cfg["mode"] not in ("template", "ensemble", "descriptions"):
            from medadapt.errors import UserError
            raise UserError(f"zero-shot mode must be template, ensemble or descriptions, "
                            f"got {self.cfg['mode']!r}")
        self.text_features = text_features_for(backbone, texts, self.cfg["mode"])

    def fit(self, train, val, engine) -> dict:
        return {}

    def set_classes(self, texts) -> None:
        super().set_classes(texts)
        self.text_features = text_features_for(self.backbone, texts, self.cfg["mode"])

    def n_trainable_params(self) -> int:
        return 0

    def forward(self, batch: Batch) -> torch.Tensor:
        img = self.image_features(batch)
        return self.backbone.logit_scale * img @ self.text_features.to(img.device).T
