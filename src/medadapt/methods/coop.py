"""CoOp: Context Optimization (Zhou, Yang, Loy, Liu, "Learning to Prompt for Vision-Language
Models", IJCV 2022). Learnable context vectors replace the hand-written prompt (Eq. 2: unified
context ``[V]_1..[V]_M [CLASS]``; Eq. 3: class-specific context), trained with cross-entropy over
the CLIP logits (Eq. 1/4). The image encoder is untouched, so training uses cached image features
and each step costs one text encoding of the C class prompts.

Defaults follow the paper's few-shot setting: 16 context tokens, random init N(0, 0.02), class
token at the end, SGD lr 0.002, cosine schedule, 1 warm-up epoch at constant lr 1e-5, batch 32.
"""
from __future__ import annotations

import torch

from medadapt.methods._prompt import PromptLearner, clip_logits, encode_prompted_text
from medadapt.methods.base import Batch, Method, register_method


@register_method("coop")
class CoOp(Method):
    paper = "Zhou et al., Learning to Prompt for Vision-Language Models, IJCV 2022"
    defaults = {"n_ctx": 16, "ctx_init": None, "csc": False, "position": "end"}
    train_defaults = {"optimizer": "sgd", "lr": 0.002, "epochs": 50, "batch_size": 32,
                      "warmup_epochs": 1, "warmup": "constant", "warmup_lr": 1e-5}

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        c = self.cfg
        self.prompt = PromptLearner(backbone, texts.classnames, n_ctx=c["n_ctx"],
                                    ctx_init=c["ctx_init"], csc=c["csc"], position=c["position"])
        self.supports_novel = not c["csc"]

    def set_classes(self, texts) -> None:
        super().set_classes(texts)
        self.prompt.set_classnames(texts.classnames)

    def text_features(self) -> torch.Tensor:
        return encode_prompted_text(self.backbone, self.prompt)

    def forward(self, batch: Batch) -> torch.Tensor:
        return clip_logits(self.backbone, self.image_features(batch), self.text_features())
