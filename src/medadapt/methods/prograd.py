"""ProGrad: Prompt-aligned Gradient (Zhu, Niu, Han, Wu, Zhang, "Prompt-aligned Gradient for
Prompt Tuning", ICCV 2023).

CoOp's context is updated only along directions that do not conflict with the general knowledge
of the zero-shot model. With ``G_d = ∇L_ce`` (domain-specific) and ``G_g = ∇L_kl`` where
``L_kl = KL(p_zs || p_prompt)`` compares the zero-shot prediction (hand-crafted prompt) with the
prompted one at temperature T, the update is (Eq. 4-5)

    G_prograd = G_d                                    if G_d · G_g ≥ 0
              = G_d − λ · (G_d · G_g / ‖G_g‖²) · G_g   otherwise

per parameter tensor, as in the released code (λ = 1 is the paper's setting; λ < 1 is the
"generalised" ProGrad). It is realised inside :meth:`loss` with ``torch.autograd.grad``: the
returned loss has the value of ``L_ce`` and the gradient ``G_prograd``, so the engine's single
loop (optimizer, clipping, AMP) applies unchanged. The image encoder is untouched: cached features.

Defaults: 16 random context tokens, λ = 1, T = 1, the zero-shot prompt is the data set's first
template, CoOp's schedule (SGD lr 0.002, batch 32, 50 epochs, constant warm-up).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from medadapt.methods._prompt import frozen_text_features, kl_to_teacher
from medadapt.methods.base import Batch, register_method
from medadapt.methods.coop import CoOp


@register_method("prograd")
class ProGrad(CoOp):
    paper = "Zhu et al., Prompt-aligned Gradient for Prompt Tuning, ICCV 2023"
    defaults = {"n_ctx": 16, "ctx_init": None, "csc": False, "position": "end",
                "lambda": 1.0, "T": 1.0, "text_mode": "template"}
    train_defaults = {"optimizer": "sgd", "lr": 0.002, "epochs": 50, "batch_size": 32,
                      "warmup_epochs": 1, "warmup": "constant", "warmup_lr": 1e-5}

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        self._zs_features()

    def _zs_features(self):
        t = self.texts.templates if self.cfg["text_mode"] == "ensemble" else self.texts.templates[:1]
        self.zs_text = frozen_text_features(self.backbone, self.texts.classnames, t)

    def set_classes(self, texts) -> None:
        super().set_classes(texts)
        self._zs_features()

    def loss(self, batch: Batch):
        img = self.image_features(batch)
        logits = self.backbone.logit_scale * img @ self.text_features().float().T
        with torch.no_grad():
            zs = self.backbone.logit_scale * img @ self.zs_text.to(img.device).T
        ce = F.cross_entropy(logits, batch.labels)
        T = float(self.cfg["T"])
        kl = kl_to_teacher(logits, zs, T, reduction="batchmean")
        params = [p for p in self.parameters() if p.requires_grad]
        g_ce = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
        g_kl = torch.autograd.grad(kl, params, allow_unused=True)
        lam = float(self.cfg["lambda"])
        n_conflict = 0
        surrogate = ce.new_zeros(())
        for p, gd, gg in zip(params, g_ce, g_kl):
            if gd is None:
                continue
            g = gd
            if gg is not None:
                norm2 = (gg * gg).sum()
                dot = (gd * gg).sum()
                if norm2 > 0 and dot < 0:
                    g = gd - lam * dot / norm2 * gg
                    n_conflict += 1
            surrogate = surrogate + (p * g.detach()).sum()
        # value = L_ce, gradient = G_prograd
        loss = ce.detach() + surrogate - surrogate.detach()
        return loss, {"ce": float(ce.detach()), "kl": float(kl.detach()),
                      "projected": float(n_conflict)}
