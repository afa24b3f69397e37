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

Defaults (BeierZhu/Prompt-align ``ProGrad.public``): 16 context tokens initialised as in the
released ``PromptLearner`` with ``CTX_INIT: True``: zeros, with the last k tokens set to the token
embeddings of the initial phrase (k = its length; ``ctx_init``, default "a photo of a", the
released ImageNet/Caltech/SUN prompt), λ = 1 (``LOSS.LAMBDA``; the paper uses 0.8 for 8/16 shots
on Flowers, DTD, EuroSAT), T = 1, the zero-shot prompt is the data set's first template, SGD lr
0.002, batch 32, Dassl's per-epoch cosine with a constant warm-up epoch, and CoOp's shot-dependent
length (README: rn50_ep50 at 1 shot, rn50_ep100 at 2-4, rn50 = 200 epochs at 8-16).
``ctx_init: null`` gives CoOp's random init.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from medadapt.methods._prompt import frozen_text_features, kl_to_teacher
from medadapt.methods.base import Batch, register_method
from medadapt.methods.coop import AUGMENT_SOURCE, COOP_EPOCHS_BY_SHOTS, DASSL_SGD_SOURCES, CoOp


def prograd_init_context(backbone, n_ctx: int, phrase: str) -> torch.Tensor:
    """ProGrad's released init: ``[n_ctx, W]`` zeros with the last k rows set to the token
    embeddings of ``phrase`` (its k word tokens, no start/end tokens)."""
    ids = backbone.tokenize([phrase])[0]
    words = ids[~backbone.special_token_mask(ids[None])[0]]
    if len(words) > n_ctx:
        raise ValueError(f"prograd: {n_ctx} context tokens cannot hold the {len(words)} tokens of "
                         f"{phrase!r}")
    with torch.no_grad():
        emb = backbone.embed_tokens(words).float().cpu()
    ctx = torch.zeros(n_ctx, emb.shape[-1])
    ctx[n_ctx - len(words):] = emb
    return ctx


@register_method("prograd")
class ProGrad(CoOp):
    paper = "Zhu et al., Prompt-aligned Gradient for Prompt Tuning, ICCV 2023"
    defaults = {"n_ctx": 16, "ctx_init": "a photo of a", "csc": False, "position": "end",
                "lambda": 1.0, "T": 1.0, "text_mode": "template"}
    train_defaults = {"optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4,
                      "epochs": 200, "batch_size": 32, "warmup_epochs": 1, "warmup": "constant",
                      "warmup_lr": 1e-5, "sched_unit": "epoch", "grad_clip": 0.0,
                      "backbone_mode": "eval", "drop_last": True}
    by_shots = COOP_EPOCHS_BY_SHOTS
    by_protocol = {"base-to-novel": {"train.epochs": 100}}
    sources = {
        "method.n_ctx": "BeierZhu/Prompt-align ProGrad.public/README.md: prograd.sh ... end 16 (M=16)",
        "method.ctx_init": ("ProGrad.public/trainers/prograd.py PromptLearner with CTX_INIT True "
                            "(configs/trainers/ProGrad/rn50.yaml): zeros + the prompt's tokens in the "
                            "last slots; 'a photo of a' is the released prompt for ImageNet/Caltech/SUN"),
        "method.lambda": "ProGrad.public/scripts/prograd.sh LAMBDA=1.0 (README: 0.8 for 8/16 shots on Flowers/DTD/EuroSAT)",
        "method.T": "ProGrad.public/configs/trainers/ProGrad/rn50.yaml LOSS.T 1.0",
        "method.text_mode": "prograd.py CLIP zero-shot teacher: one CUSTOM_TEMPLATES prompt per data set",
        "method.csc": "README: CSC False", "method.position": "README: class token end",
        **DASSL_SGD_SOURCES,
        "train.lr": "configs/trainers/ProGrad/rn50.yaml OPTIM.LR 0.002",
        "train.batch_size": "configs/trainers/ProGrad/rn50.yaml DATALOADER.TRAIN_X.BATCH_SIZE 32",
        "train.epochs": ("ProGrad.public/README.md: rn50_ep50 (1 shot), rn50_ep100 (2-4 shots), rn50 = 200 "
                         "epochs (8-16 shots); base-to-novel: rn50_ep100"),
        "train.backbone_mode": "prograd.py registers only self.model.prompt_learner",
        "data.augment_views": AUGMENT_SOURCE,
        "deviations": "backbone: the released runs use RN50; medadapt uses the chosen backbone",
    }

    def __init__(self, backbone, texts, cfg=None):
        c = {**self.defaults, **(cfg or {})}
        init = c["ctx_init"]
        # the learner is built with random context, then takes ProGrad's zeros + phrase init
        super().__init__(backbone, texts, dict(c, ctx_init=None))
        self.cfg["ctx_init"] = init
        if init and not self.cfg["csc"]:
            with torch.no_grad():
                self.prompt.ctx.copy_(prograd_init_context(backbone, int(self.cfg["n_ctx"]), init))
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
