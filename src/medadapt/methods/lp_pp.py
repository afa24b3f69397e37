"""LP++ (Huang, Shakeri, Dolz, Boudiaf, Bakhti, Ben Ayed, "LP++: A Surprisingly Strong Linear Probe
for Few-Shot CLIP", CVPR 2024), as released in FereshteShakeri/FewShot-CLIP-Strong-Baseline
(``methods/linear_probe_p2.py``, ``methods/utils.py``, ``configs/base.yaml``) and ported unchanged
to BiomedCLIP by BiomedCoOp (``trainers/linear_probe_p2_biomedclip.py``, the LP++ row of its
tables).

Logits of an L2-normalised image feature ``f`` over classes ``c``::

    l_c(f) = w_c . f + b_c + alpha_c * (f . t_c)

``t_c``: the frozen class text embeddings (templates averaged, ``clip_classifier``); the linear
probe ``(W, b)`` and the class-wise blending weights ``alpha`` are learned jointly, full batch,
from the few-shot features:

* ``W`` starts at the per-class *sum* of the training features (``compute_centroids``, no
  division); ``b`` keeps ``nn.Linear``'s default initialisation;
* ``alpha`` starts, for every class, at ``250 / K * mean_c(K * a_c)`` where ``a_c`` is the mean
  text logit ``f . t_c`` of class ``c``'s training images for their own class
  (``calculate_init_alpha`` / ``compute_centroids_alpha``, which multiplies the one-hot labels
  with the text logits; the ``K`` cancel);
* step sizes from the Lipschitz constants of the loss: ``lr_W = 4N / lambda_max(F^T F)``
  (``calculate_lr_w``) for SGD with momentum 0.9 on ``(W, b)``, and
  ``lr_alpha = N / (4 max_c sum_i (f_i . t_c)^2)`` (``calculate_lr_alpha``);
* ``epochs`` (300) full-batch steps on ``(W, b)``; every ``alpha_every`` (10) epochs
  ``alpha -= lr_alpha * alpha.grad``. As released, ``alpha.grad`` is never zeroed (``alpha`` is not
  in the optimizer), so each update uses the gradient summed over all epochs so far
  (``alpha_grad: accumulate``; ``alpha_grad: epoch`` uses the current epoch's gradient only);
* after every epoch the few-shot validation accuracy is computed and the state of the best epoch
  (ties: the later one, ``>=``) is the one kept, as the released code reports the test accuracy of
  that epoch. Without a validation set the last epoch is kept.

Image features come from medadapt's feature cache (the un-augmented eval transform); the released
code extracts them once through a random-crop / flip transform.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from medadapt.errors import UserError
from medadapt.methods.base import Batch, Method, register_method, text_features_for

_REPO = "FereshteShakeri/FewShot-CLIP-Strong-Baseline"


def lr_w(features: torch.Tensor) -> float:
    """``4 N / lambda_max(F^T F)`` (``calculate_lr_w``)."""
    f = features.double()
    return float(4 * f.shape[0] / torch.linalg.eigvalsh(f.T @ f).max())


def lr_alpha(features: torch.Tensor, text: torch.Tensor) -> float:
    """``N / (4 max_c sum_i (f_i . t_c)^2)`` (``calculate_lr_alpha``); ``text`` is [C, D]."""
    ft = features.double() @ text.double().T
    return float(features.shape[0] / (4 * (ft ** 2).sum(0).max()))


def init_alpha(features: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, shots: int,
               n_classes: int, scale: float = 250.0) -> float:
    """``mean_c(scale / K * K * a_c)``, ``a_c`` = the mean over class ``c``'s images of their text
    logit for their *own* class, ``f . t_c`` (``calculate_init_alpha`` with
    ``compute_centroids_alpha``: ``one_hot * (F T^T) / counts`` summed over images keeps only the
    own-class entry of each row, i.e. the diagonal of the class-by-class mean logits)."""
    logits = features.double() @ text.double().T  # [N, C]
    onehot = F.one_hot(labels, n_classes).double()  # [N, C]
    own = (onehot * logits).sum(0) / onehot.sum(0).clamp_min(1)  # [C]
    return float((scale / shots * (own * shots)).mean())


def class_sums(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-class sum of the features (``compute_centroids``: one-hot bmm, no division)."""
    return F.one_hot(labels, n_classes).to(features.dtype).T @ features


@register_method("lp++")
class LPPlusPlus(Method):
    paper = ("Huang et al., LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP, "
             "CVPR 2024")
    trainable = False  # its own full-batch loop (fit), not the engine's mini-batch loop
    supports_novel = False  # W, b and alpha are class-specific
    defaults = {"epochs": 300, "alpha_every": 10, "alpha_scale": 250.0, "momentum": 0.9,
                "alpha_grad": "accumulate", "text_mode": "ensemble", "select_on_val": True,
                "impl": "paper"}
    sources: ClassVar[dict[str, str]] = {
        "method.impl": ("paper: this method as its own paper's release runs it; biomedcoop: as "
                        "BiomedCoOp's main.py port runs it (recipes only, see medadapt recipes): "
                        "HealthX-Lab/BiomedCoOp@7ceb5a8 trainers/LP2/linear_probe_p2_biomedclip.py "
                        "lines 68-78: trained on the features of ONE augmented pass (data."
                        "fresh_views pass 0, or cached view 1), L2-normalised; line 92: W starts at "
                        "the class sums of features.half() (fp16-rounded); everything else as the "
                        "paper implementation"),
        "method.epochs": f"{_REPO} configs/base.yaml train_epoch: 300 (linear-probe: 300); "
                         "BiomedCoOp configs/trainers/LP/few_shot.yaml train_epoch: 300",
        "method.alpha_every": f"{_REPO} methods/linear_probe_p2.py: if (epoch + 1) % 10 == 0",
        "method.alpha_scale": f"{_REPO} methods/linear_probe_p2.py calculate_init_alpha: "
                              "alpha_init = 250 / shots * alpha_tilde",
        "method.momentum": f"{_REPO} methods/linear_probe_p2.py: torch.optim.SGD(..., lr_temp, "
                           "momentum=0.9)",
        "method.alpha_grad": f"{_REPO} methods/linear_probe_p2.py: alpha_vec.grad is never "
                             "zeroed (optimizer.zero_grad() covers the classifier only)",
        "method.text_mode": f"{_REPO} utils.py clip_classifier: mean of the normalised "
                            "embeddings of the data set's templates",
        "method.select_on_val": f"{_REPO} methods/linear_probe_p2.py: test accuracy of the "
                                "epoch with the best validation accuracy (acc_val >= best_acc)",
    }
    learned_buffers = ("weight", "bias", "alpha")

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        if self.cfg["alpha_grad"] not in ("accumulate", "epoch"):
            raise UserError(f"lp++: alpha_grad must be 'accumulate' or 'epoch', got "
                            f"{self.cfg['alpha_grad']!r}")
        c, d = len(texts.classnames), backbone.embed_dim
        self.register_buffer("text_features", text_features_for(backbone, texts,
                                                                self.cfg["text_mode"]).float(),
                             persistent=False)
        self.weight = torch.zeros(c, d)
        self.bias = torch.zeros(c)
        self.alpha = torch.zeros(c)

    def fit(self, train, val, engine) -> dict:
        if train.features is None or len(train) == 0:
            raise UserError("lp++: no training images")
        dev = self.text_features.device
        biomed = self.cfg.get("impl") == "biomedcoop"
        xt = train.augmented(0) if biomed else train.features  # the port: one augmented pass
        x = F.normalize(xt.float(), dim=-1).to(dev)
        y = train.labels.to(dev)
        c = len(self.texts.classnames)
        counts = torch.bincount(y, minlength=c)
        if (counts == 0).any():
            missing = [self.texts.classnames[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
            raise UserError(f"lp++: no training images for classes {missing}")
        shots = int(counts.max())
        t = self.text_features.float()
        text_logits = x @ t.T
        lin = nn.Linear(x.shape[1], c, bias=True).to(dev)  # default init of the bias, as released
        with torch.no_grad():
            if biomed:  # compute_centroids(features.half() ...): sums of fp16 features, in fp16
                lin.weight.copy_(class_sums(x.half().float(), y, c).half().float())
            else:
                lin.weight.copy_(class_sums(x, y, c))
        lr, lr_a = lr_w(x), lr_alpha(x, t)
        a0 = init_alpha(x, y, t, shots, c, float(self.cfg["alpha_scale"]))
        alpha = torch.full((c,), a0, device=dev, requires_grad=True)
        opt = torch.optim.SGD(lin.parameters(), lr=lr, momentum=float(self.cfg["momentum"]))
        has_val = bool(self.cfg["select_on_val"]) and val is not None and len(val) > 0
        if has_val:
            xv = F.normalize(val.features.float(), dim=-1).to(dev)
            yv = val.labels.to(dev)
            text_v = xv @ t.T
        best = (-1.0, -1)
        state = None
        every = int(self.cfg["alpha_every"])
        for epoch in range(int(self.cfg["epochs"])):
            logits = lin(x) + alpha[None] * text_logits
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            if self.cfg["alpha_grad"] == "epoch" and alpha.grad is not None:
                alpha.grad.zero_()
            loss.backward()
            opt.step()
            if every > 0 and (epoch + 1) % every == 0:
                with torch.no_grad():
                    alpha -= lr_a * alpha.grad
            if has_val:
                with torch.no_grad():
                    acc = float(((lin(xv) + alpha[None] * text_v).argmax(1) == yv).float().mean())
                if acc >= best[0]:
                    best = (acc, epoch)
                    state = (lin.weight.detach().clone(), lin.bias.detach().clone(),
                             alpha.detach().clone())
        if state is None:  # no validation set (or zero epochs): the last state
            state = (lin.weight.detach().clone(), lin.bias.detach().clone(), alpha.detach().clone())
        self.weight, self.bias, self.alpha = (s.cpu() for s in state)
        return {"lr_w": lr, "lr_alpha": lr_a, "alpha_init": a0, "shots": shots,
                "best_val_accuracy": best[0] if has_val else None,
                "best_epoch": best[1] if has_val else None,
                "alpha_mean": float(self.alpha.mean())}

    def n_trainable_params(self) -> int:
        return self.weight.numel() + self.bias.numel() + self.alpha.numel()

    def set_classes(self, texts) -> None:
        if list(texts.classnames) != list(self.texts.classnames):
            raise UserError("lp++ cannot predict classes it was not trained on")

    def forward(self, batch: Batch) -> torch.Tensor:
        f = self.image_features(batch)
        dev = f.device
        return (f @ self.weight.to(dev).T + self.bias.to(dev)
                + self.alpha.to(dev)[None] * (f @ self.text_features.to(dev).T))
