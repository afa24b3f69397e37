"""CoPrompt: Consistency-guided Prompt learning (Roy, Etemad, "Consistency-guided Prompt Learning
for Vision-Language Models", ICLR 2024).

MaPLe's multi-modal deep prompts (:class:`~medadapt.methods.maple.MultiModalPrompts`) plus
trainable adapters on both output features, trained with a consistency constraint to the frozen
encoders on perturbed inputs (Sec. 3.2-3.4):

* Adapters (Eq. 3): ``A(x) = ReLU(W2 ReLU(W1 x))`` (bottleneck D/4, no bias) mixed residually,
  ``f' = α A(f) + (1 − α) f`` with α = 0.1 on the image and 0.2 on the text features.
* Perturbed inputs: on the text side the frozen teacher embeds an LLM *description* of each class
  (one drawn at random per class and step) instead of the prompt; on the image side the frozen
  encoder sees a second augmented view of the image (view 1: the data set's train transform; view
  2: an independent random resized crop + flips applied to view 1's pixels, a tensor-level
  stand-in for the paper's second RandAugment draw).
* Consistency (Eq. 4-5): ``L_cons = (1 − cos(g_p, g_desc)) + (1 − cos(f_p, f_frozen(view 2)))``
  (``distill="cosine"``; ``"mse"`` is the released code's alternative) and
  ``L = L_ce + λ L_cons``. λ is per data set in the paper (0.1–8); the released default is 1.0.

Defaults (released config ``vit_b16_c2_ep5_batch4_2ctx``): 2 context tokens from "a photo of a",
depth 9 of 12 (scaled), SGD lr 0.0035, batch 4, 8 epochs, constant warm-up. Needs class
descriptions (``needs_descriptions``) and pixels (``needs_images``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medadapt.methods._prompt import augment_pixels, clip_logits, description_features
from medadapt.methods.base import Batch, Method, frozen_eval, register_method
from medadapt.methods.coop import DASSL_SGD_SOURCES
from medadapt.methods.maple import MultiModalPrompts


class Adapter(nn.Module):
    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        h = max(1, dim // reduction)
        self.fc = nn.Sequential(nn.Linear(dim, h, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(h, dim, bias=False), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.fc(x)


@register_method("coprompt")
class CoPrompt(Method):
    paper = "Roy & Etemad, Consistency-guided Prompt Learning for Vision-Language Models, ICLR 2024"
    needs_images = True
    needs_descriptions = True
    defaults = {"n_ctx": 2, "ctx_init": "a photo of a", "depth": 9, "ref_layers": 12,
                "lambda": 1.0, "distill": "cosine", "adapter_reduction": 4,
                "image_adapter_ratio": 0.1, "text_adapter_ratio": 0.2, "view2_min_scale": 0.6}
    train_defaults = {"optimizer": "sgd", "lr": 0.0035, "momentum": 0.9, "weight_decay": 5e-4,
                      "epochs": 8, "batch_size": 4, "warmup_epochs": 1, "warmup": "constant",
                      "warmup_lr": 1e-5, "sched_unit": "epoch", "grad_clip": 0.0,
                      "backbone_mode": "train", "drop_last": True}
    sources = {
        "method.n_ctx": "ShuvenduRoy/CoPrompt configs/trainers/vit_b16_c2_ep5_batch4_2ctx_randaug.yaml N_CTX 2",
        "method.ctx_init": "CoPrompt ..._randaug.yaml CTX_INIT 'a photo of a'",
        "method.depth": "CoPrompt ..._randaug.yaml PROMPT_DEPTH 9",
        "method.ref_layers": "medadapt: depth scaled from ViT-B's 12 blocks to the backbone's",
        "method.lambda": "CoPrompt ..._randaug.yaml TRAINER.W 1.0 (paper: 0.1-8 per data set)",
        "method.distill": "CoPrompt ..._randaug.yaml TRAINER.DISTILL cosine",
        "method.adapter_reduction": "CoPrompt trainers: Adapter(dim, 4) as in CLIP-Adapter",
        "method.image_adapter_ratio": "CoPrompt paper Sec. 3.3 (α = 0.1 image)",
        "method.text_adapter_ratio": "CoPrompt paper Sec. 3.3 (α = 0.2 text)",
        "method.view2_min_scale": ("medadapt: tensor-level second view standing in for the config's second "
                                   "RandAugment draw (DATALOADER.K_TRANSFORMS 2); deviation"),
        **DASSL_SGD_SOURCES,
        "train.lr": "CoPrompt ..._randaug.yaml OPTIM.LR 0.0035",
        "train.epochs": "CoPrompt ..._randaug.yaml OPTIM.MAX_EPOCH 8 (the file name says ep5)",
        "train.batch_size": "CoPrompt ..._randaug.yaml DATALOADER.TRAIN_X.BATCH_SIZE 4",
        "train.backbone_mode": "CoPrompt trainer (MaPLe-based) registers the whole model: CLIP in train()",
        "data.augment_views": ("unused: pixels through the backbone's train transform every step "
                               "(deviation: the config's INPUT.TRANSFORMS is randaugment)"),
    }

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        c = self.cfg
        if c["distill"] not in ("cosine", "mse"):
            raise ValueError(f"coprompt distill must be cosine or mse, got {c['distill']!r}")
        self.mm = MultiModalPrompts(backbone, texts.classnames, c["n_ctx"], c["ctx_init"],
                                    c["depth"], c["ref_layers"])
        d = backbone.embed_dim
        self.adapter_image = Adapter(d, int(c["adapter_reduction"]))
        self.adapter_text = Adapter(d, int(c["adapter_reduction"]))
        self._desc = None  # frozen description features per class, built on first use

    def set_classes(self, texts) -> None:
        super().set_classes(texts)
        self.mm.prompt.set_classnames(texts.classnames)
        self._desc = None

    def features(self, images):
        a_i, a_t = float(self.cfg["image_adapter_ratio"]), float(self.cfg["text_adapter_ratio"])
        txt = self.mm.text_features(self.backbone, normalize=False).float()
        img = self.mm.image_features(self.backbone, images, normalize=False).float()
        img = a_i * self.adapter_image(img) + (1 - a_i) * img
        txt = a_t * self.adapter_text(txt) + (1 - a_t) * txt
        return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)

    def forward(self, batch: Batch) -> torch.Tensor:
        if batch.images is None:
            raise ValueError("coprompt prompts the image encoder: batches need pixels")
        img, txt = self.features(batch.images)
        return clip_logits(self.backbone, img, txt)

    def loss(self, batch: Batch):
        bb = self.backbone
        img, txt = self.features(batch.images)
        logits = clip_logits(bb, img, txt)
        ce = F.cross_entropy(logits, batch.labels)
        if self._desc is None:
            with frozen_eval(bb):  # frozen targets: computed by the eval-mode model
                self._desc = description_features(bb, self.texts.classnames, self.texts.descriptions)
        with torch.no_grad():
            pick = [d[int(torch.randint(len(d), (1,)))] for d in self._desc]
            t_teacher = F.normalize(torch.stack(pick).to(txt.device), dim=-1)
            view2 = augment_pixels(batch.images, min_scale=float(self.cfg["view2_min_scale"]))
            i_teacher = bb.encode_image(view2).float()
        if self.cfg["distill"] == "cosine":
            l_t = 1 - (txt * t_teacher).sum(-1).mean()
            l_i = 1 - (img * i_teacher).sum(-1).mean()
        else:
            l_t, l_i = F.mse_loss(txt, t_teacher), F.mse_loss(img, i_teacher)
        cons = l_t + l_i
        loss = ce + float(self.cfg["lambda"]) * cons
        return loss, {"ce": float(ce.detach()), "cons_text": float(l_t.detach()),
                      "cons_image": float(l_i.detach())}
