"""CoCoOp: Conditional Context Optimization (Zhou, Yang, Loy, Liu, "Conditional Prompt Learning
for Vision-Language Models", CVPR 2022).

A light meta-net ``h_θ`` (Linear-ReLU-Linear, bottleneck D/16) turns each image feature ``x`` into
a token ``π = h_θ(x)``; every context vector is shifted by it, ``v_m(x) = v_m + π`` (Eq. 2), so the
prompt ``t_i(x) = {v_1(x), ..., v_M(x), c_i}`` is conditioned on the image and the class
probability is ``p(y|x) = exp(sim(x, g(t_y(x)))/τ) / Σ_i exp(sim(x, g(t_i(x)))/τ)`` (Eq. 3).

The image encoder is untouched: training uses cached image features. Each image needs its own C
text encodings (B·C prompts per step), which is why the paper trains with batch size 1.

Defaults (paper, Sec. 4 / released config): 4 context tokens initialised from "a photo of a",
SGD lr 0.002, batch 1, 10 epochs, 1 constant warm-up epoch at 1e-5. ``eval_chunk`` bounds the
number of images encoded together at evaluation (B·C prompts per chunk).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from medadapt.methods._prompt import PromptLearner
from medadapt.methods.base import Batch, Method, register_method
from medadapt.methods.coop import AUGMENT_SOURCE, DASSL_SGD_SOURCES


@register_method("cocoop")
class CoCoOp(Method):
    paper = "Zhou et al., Conditional Prompt Learning for Vision-Language Models, CVPR 2022"
    defaults = {"n_ctx": 4, "ctx_init": "a photo of a", "position": "end", "meta_ratio": 16,
                "eval_chunk": 32}
    train_defaults = {"optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4,
                      "epochs": 10, "batch_size": 1, "warmup_epochs": 1, "warmup": "constant",
                      "warmup_lr": 1e-5, "sched_unit": "epoch", "grad_clip": 0.0,
                      "backbone_mode": "eval", "drop_last": True}
    sources = {
        "method.n_ctx": "KaiyangZhou/CoOp configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml N_CTX 4",
        "method.ctx_init": "vit_b16_c4_ep10_batch1_ctxv1.yaml CTX_INIT 'a photo of a'",
        "method.position": "CoCoOp prompts put the class token at the end (trainers/cocoop.py)",
        "method.meta_ratio": "CoCoOp paper Sec. 4: Linear-ReLU-Linear meta-net, hidden = vis_dim // 16",
        "method.eval_chunk": "medadapt: evaluation memory bound only (no effect on results)",
        **DASSL_SGD_SOURCES,
        "train.lr": "vit_b16_c4_ep10_batch1_ctxv1.yaml OPTIM.LR 0.002",
        "train.epochs": "vit_b16_c4_ep10_batch1_ctxv1.yaml OPTIM.MAX_EPOCH 10 (few-shot and base-to-novel alike)",
        "train.batch_size": "vit_b16_c4_ep10_batch1_ctxv1.yaml DATALOADER.TRAIN_X.BATCH_SIZE 1",
        "train.backbone_mode": ("KaiyangZhou/CoOp trainers/cocoop.py registers only "
                                "self.model.prompt_learner: CLIP stays in eval mode"),
        "data.augment_views": AUGMENT_SOURCE,
    }

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        c = self.cfg
        self.prompt = PromptLearner(backbone, texts.classnames, n_ctx=c["n_ctx"],
                                    ctx_init=c["ctx_init"], position=c["position"])
        d = backbone.embed_dim
        hidden = max(1, d // int(c["meta_ratio"]))
        self.meta_net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(inplace=True),
                                      nn.Linear(hidden, backbone.text_width))

    def set_classes(self, texts) -> None:
        super().set_classes(texts)
        self.prompt.set_classnames(texts.classnames)

    def _logits(self, img: torch.Tensor) -> torch.Tensor:
        bb, pl = self.backbone, self.prompt
        bias = self.meta_net(img)  # [B, W]
        ctx = pl.ctx.unsqueeze(0) + bias.unsqueeze(1)  # [B, n, W]
        C = len(pl.classnames)
        emb = torch.cat([pl.embeddings(ctx[b]) for b in range(len(img))])  # [B*C, L, W]
        ids = pl.ids.repeat(len(img), 1)
        txt = bb.encode_text(ids, embeddings=emb).float().view(len(img), C, -1)  # [B, C, D]
        return bb.logit_scale * torch.einsum("bd,bcd->bc", img, txt)

    def forward(self, batch: Batch) -> torch.Tensor:
        img = self.image_features(batch)
        if self.training:
            return self._logits(img)
        n = max(1, int(self.cfg["eval_chunk"]))
        return torch.cat([self._logits(img[i:i + n]) for i in range(0, len(img), n)])
