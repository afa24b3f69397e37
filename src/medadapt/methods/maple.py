"""MaPLe: Multi-modal Prompt Learning (Khattak, Rasheed, Maaz, Khan, Khan, CVPR 2023).

Deep language prompts ``P_j`` (b learnable tokens) for the first J text layers; the vision prompts
of the same layers are *coupled* to them, ``P~_j = F_j(P_j)`` with a linear coupling function
``F_j`` (text width -> vision width) per layer (Eq. 5-7; layer 0's ``P_0`` is the input context).
Beyond depth J both towers run unprompted. Both encoders are in the graph (``needs_images``); the
backbone stays frozen, only ``P_j`` and ``F_j`` are learned.

Through the backbone interface: the input context is laid over the token embeddings
(``encode_text(ids, embeddings)``), ``P_j`` (j ≥ 1) replace the hidden states at the context
positions before text block j, and the vision prompts are appended after the patch tokens before the
vision tower's pre-LayerNorm (hook point ``INPUT``, as the reference concatenates before ``ln_pre``)
and replaced before blocks 1..J-1 (``add_layer_hook``), for every family.

Defaults (paper, Sec. 4.1): b = 2 context tokens initialised from the first two tokens of
"a photo of a" (the rest of the phrase stays as fixed words, as in the released code), depth
J = 9 of 12 layers, scaled to the backbone (``round(9 · layers / 12)``; ``ref_layers``), SGD
lr 0.0035, batch 4, 5 epochs, one constant warm-up epoch at 1e-5. ``depth`` is applied to the
shallower of the two towers when they differ.
"""
from __future__ import annotations

import torch

from medadapt.methods._prompt import CoupledPrompts, PromptLearner, clip_logits, scaled_depth
from medadapt.methods.base import Batch, Method, register_method
from medadapt.methods.coop import DASSL_SGD_SOURCES


class MultiModalPrompts(torch.nn.Module):
    """Input context + deep coupled prompts, shared by MaPLe and CoPrompt."""

    def __init__(self, backbone, classnames, n_ctx, ctx_init, depth, ref_layers=12,
                 position="end"):
        super().__init__()
        self.prompt = PromptLearner(backbone, classnames, n_ctx=n_ctx, ctx_init=ctx_init,
                                    position=position, n_learned=n_ctx if ctx_init else None)
        n_layers = min(len(backbone.text_blocks()), len(backbone.vision_blocks()))
        self.depth = scaled_depth(int(depth), n_layers, int(ref_layers))
        self.coupled = CoupledPrompts(self.depth, self.prompt.n_learned, backbone.text_width,
                                      backbone.vision_width)

    def text_features(self, backbone, normalize=True):
        ids, emb = self.prompt()
        with backbone.layer_hooks(self.coupled.text_hooks(self.prompt.learned_positions)):
            return backbone.encode_text(ids, embeddings=emb, normalize=normalize)

    def image_features(self, backbone, images, normalize=True):
        with backbone.layer_hooks(self.coupled.vision_hooks(self.prompt.ctx)):
            return backbone.encode_image(images, normalize=normalize)


@register_method("maple")
class MaPLe(Method):
    paper = "Khattak et al., MaPLe: Multi-modal Prompt Learning, CVPR 2023"
    needs_images = True
    defaults = {"n_ctx": 2, "ctx_init": "a photo of a", "depth": 9, "ref_layers": 12,
                "position": "end"}
    train_defaults = {"optimizer": "sgd", "lr": 0.0035, "momentum": 0.9, "weight_decay": 5e-4,
                      "epochs": 5, "batch_size": 4, "warmup_epochs": 1, "warmup": "constant",
                      "warmup_lr": 1e-5, "sched_unit": "epoch", "grad_clip": 0.0,
                      "backbone_mode": "train", "drop_last": True}
    # domain generalisation / cross-dataset runs (paper Sec. 4.3-4.4) use the cross-dataset config
    by_protocol = {"cross-domain": {"train.epochs": 2, "train.lr": 0.0026, "method.depth": 3}}
    sources = {
        "method.n_ctx": "muzairkhattak/multimodal-prompt-learning configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml N_CTX 2",
        "method.ctx_init": "vit_b16_c2_ep5_batch4_2ctx.yaml CTX_INIT 'a photo of a'",
        "method.depth": ("vit_b16_c2_ep5_batch4_2ctx.yaml PROMPT_DEPTH 9 (paper Sec. 4.1, J = 9); "
                         "cross-domain: ..._cross_datasets.yaml PROMPT_DEPTH 3"),
        "method.ref_layers": "medadapt: depth scaled from ViT-B's 12 blocks to the backbone's",
        "method.position": "MaPLe prompts put the class token at the end",
        **DASSL_SGD_SOURCES,
        "train.lr": "vit_b16_c2_ep5_batch4_2ctx.yaml OPTIM.LR 0.0035 (cross-dataset: 0.0026)",
        "train.epochs": ("vit_b16_c2_ep5_batch4_2ctx.yaml OPTIM.MAX_EPOCH 5 (few-shot and base-to-novel); "
                         "cross-domain: vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml (2 epochs)"),
        "train.batch_size": "vit_b16_c2_ep5_batch4_2ctx.yaml DATALOADER.TRAIN_X.BATCH_SIZE 4",
        "train.backbone_mode": ("multimodal-prompt-learning trainers/maple.py: register_model("
                                "'MultiModalPromptLearner', self.model, ...): the whole CLIP is set to train()"),
        "data.augment_views": "unused: pixels through the backbone's train transform every step",
    }

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        c = self.cfg
        self.mm = MultiModalPrompts(backbone, texts.classnames, c["n_ctx"], c["ctx_init"],
                                    c["depth"], c["ref_layers"], c["position"])

    def set_classes(self, texts) -> None:
        super().set_classes(texts)
        self.mm.prompt.set_classnames(texts.classnames)

    def forward(self, batch: Batch) -> torch.Tensor:
        if batch.images is None:
            raise ValueError("maple prompts the image encoder: batches need pixels")
        txt = self.mm.text_features(self.backbone).float()
        img = self.mm.image_features(self.backbone, batch.images).float()
        return clip_logits(self.backbone, img, txt)
