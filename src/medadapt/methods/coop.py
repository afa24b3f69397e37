"""CoOp: Context Optimization (Zhou, Yang, Loy, Liu, "Learning to Prompt for Vision-Language
Models", IJCV 2022). Learnable context vectors replace the hand-written prompt (Eq. 2: unified
context ``[V]_1..[V]_M [CLASS]``; Eq. 3: class-specific context), trained with cross-entropy over
the CLIP logits (Eq. 1/4). The image encoder is untouched, so training uses cached image features
and each step costs one text encoding of the C class prompts.

Defaults follow the released few-shot configs (KaiyangZhou/CoOp ``configs/trainers/CoOp/vit_b16*.yaml``
and ``scripts/coop/main.sh``): 16 context tokens, random init N(0, 0.02), class token at the end,
SGD lr 0.002, batch 32, Dassl's per-epoch cosine with 1 constant warm-up epoch at 1e-5, and the
shot-dependent length of the paper (Sec. 4.1): 50 epochs at 1 shot, 100 at 2-4, 200 at 8-16.
The trainer registers only the prompt learner, so CLIP stays in eval mode.
"""
from __future__ import annotations

import torch

from medadapt.methods._prompt import PromptLearner, clip_logits, encode_prompted_text
from medadapt.methods.base import Batch, Method, register_method

# CoOp's few-shot lengths (paper Sec. 4.1; README "How to run": rn50_ep50 at 1 shot, rn50_ep100 at
# 2-4 shots, rn50 (200 epochs) at 8-16); ProGrad and CLIP-Adapter's CoOp runs reuse them.
COOP_EPOCHS_BY_SHOTS = {1: {"train.epochs": 50}, 2: {"train.epochs": 100}, 8: {"train.epochs": 200}}

DASSL_SGD_SOURCES = {
    "train.optimizer": "Dassl OPTIM.NAME 'sgd' in the released config",
    "train.momentum": "Dassl default OPTIM.MOMENTUM 0.9 (dassl/config/defaults.py)",
    "train.weight_decay": "Dassl default OPTIM.WEIGHT_DECAY 5e-4 (dassl/config/defaults.py)",
    "train.warmup_epochs": "released config OPTIM.WARMUP_EPOCH 1",
    "train.warmup": "released config OPTIM.WARMUP_TYPE constant",
    "train.warmup_lr": "released config OPTIM.WARMUP_CONS_LR 1e-5",
    "train.sched_unit": ("Dassl: the trainer calls sched.step() once per epoch (after the last batch); "
                         "CosineAnnealingLR(T_max=MAX_EPOCH) in ConstantWarmupScheduler "
                         "(Dassl.pytorch dassl/optim/lr_scheduler.py)"),
    "train.grad_clip": "no clipping in Dassl's model_backward_and_update (reference trainers never clip)",
    "train.drop_last": ("Dassl dassl/data/data_manager.py build_data_loader: "
                        "drop_last=is_train and len(data_source) >= batch_size"),
}
AUGMENT_SOURCE = ("reference INPUT.TRANSFORMS random_resized_crop (scale 0.08-1) + random_flip, a fresh "
                  "draw each epoch; here V=10 pre-encoded views, one per epoch "
                  "(deviation: 10 distinct views instead of one per epoch; benchmarks/cached_views.py)")


@register_method("coop")
class CoOp(Method):
    paper = "Zhou et al., Learning to Prompt for Vision-Language Models, IJCV 2022"
    defaults = {"n_ctx": 16, "ctx_init": None, "csc": False, "position": "end"}
    train_defaults = {"optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4,
                      "epochs": 200, "batch_size": 32, "warmup_epochs": 1, "warmup": "constant",
                      "warmup_lr": 1e-5, "sched_unit": "epoch", "grad_clip": 0.0,
                      "backbone_mode": "eval", "drop_last": True}
    by_shots = COOP_EPOCHS_BY_SHOTS
    sources = {
        "method.n_ctx": "CoOp paper Sec. 4.1 (M=16); KaiyangZhou/CoOp scripts/coop/main.sh NCTX=16",
        "method.ctx_init": "CoOp paper Sec. 3.2: random init N(0, 0.02) (configs/trainers/CoOp/vit_b16.yaml)",
        "method.csc": "CoOp paper Sec. 3.2: unified context by default (scripts/coop/main.sh CSC=False)",
        "method.position": "CoOp scripts/coop/main.sh CTP=end",
        **DASSL_SGD_SOURCES,
        "train.lr": "KaiyangZhou/CoOp configs/trainers/CoOp/vit_b16.yaml OPTIM.LR 0.002",
        "train.batch_size": "KaiyangZhou/CoOp configs/trainers/CoOp/vit_b16.yaml DATALOADER.TRAIN_X.BATCH_SIZE 32",
        "train.epochs": ("CoOp paper Sec. 4.1 / README: 200 epochs at 8-16 shots (vit_b16.yaml), "
                         "100 at 2-4 (vit_b16_ep100.yaml), 50 at 1 shot (vit_b16_ep50.yaml)"),
        "train.backbone_mode": ("KaiyangZhou/CoOp trainers/coop.py: register_model('prompt_learner', "
                                "self.model.prompt_learner): only the prompt learner is set to train()"),
        "data.augment_views": AUGMENT_SOURCE,
    }

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
