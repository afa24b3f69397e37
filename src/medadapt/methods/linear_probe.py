"""Linear probe (Radford et al. 2021, Sec. 3.2 and Appendix A.3): L2-regularised logistic
regression (scikit-learn L-BFGS) on frozen, L2-normalised image features. The inverse
regularisation strength C is chosen on the few-shot validation set, never on test: a coarse sweep
over 10^-6..10^6 followed by a finer sweep around the best value (CLIP used a parametric binary
search; a two-stage grid is the same idea, deterministic and simple).
``class_weight: balanced`` gives the loss-weighted variant SCALE compares against (Sec. 3).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from medadapt.errors import UserError
from medadapt.methods.base import Batch, Method, register_method


_BIOMED_LP = "HealthX-Lab/BiomedCoOp@7ceb5a8 trainers/LP/linear_probe_biomedclip.py"
BIOMEDCOOP_LP_STEPS = 8  # configs/trainers/LP/few_shot.yaml line 18 num_step: 8


@register_method("linear-probe")
class LinearProbe(Method):
    paper = "Radford et al., ICML 2021, Sec. 3.2 / App. A.3"
    trainable = False
    supports_novel = False
    defaults = {"C": None, "coarse_grid": [1e-6, 1e-4, 1e-2, 1e0, 1e2, 1e4, 1e6],
                "fine_steps": 7, "max_iter": 1000, "class_weight": None,
                "impl": "paper"}
    data_defaults = {"augment_views": 0}  # CLIP's linear probe: eval-transform features only
    learned_buffers = ("weight", "bias")
    sources = {
        "method.impl": ("paper: this method as its own paper's release runs it; biomedcoop: as "
                        "BiomedCoOp's main.py port runs it (recipes only, see medadapt recipes): "
                        f"{_BIOMED_LP} lines 61-69: trained on the features of ONE augmented pass "
                        "(data.fresh_views pass 0, or cached view 1), L2-normalised; lines 95-145: "
                        "C = the first best of method.coarse_grid IN ITS ORDER (np.argmax; the "
                        "port's list is 1e6, 1e4, ..., 1e-6), then a binary search of "
                        f"{BIOMEDCOOP_LP_STEPS} steps (configs/trainers/LP/few_shot.yaml num_step 8) "
                        "between C/10 and 10C on log10 midpoints, the classifier of the last step "
                        "kept"),
        "method.C": "CLIP paper App. A.3: C chosen on a validation split (null: search)",
        "method.coarse_grid": ("KaiyangZhou/CoOp lpclip/linear_probe.py: first sweep over C in "
                               "1e6, 1e4, ..., 1e-6 (decades 2 apart)"),
        "method.fine_steps": ("medadapt: a 7-point log grid over one decade each side of the best C "
                              "(lpclip refines by binary search; deviation)"),
        "method.max_iter": "CoOp lpclip/linear_probe.py LogisticRegression(max_iter=1000)",
        "method.class_weight": "SCALE paper Sec. 3 compares the loss-weighted variant (balanced); off by default",
        "data.augment_views": "CLIP App. A.3 / lpclip/feat_extractor.py: center-crop features, no augmentation",
    }

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        self.weight = torch.zeros(len(texts.classnames), backbone.embed_dim)
        self.bias = torch.zeros(len(texts.classnames))

    def _fit_lr(self, x, y, C):
        clf = LogisticRegression(C=C, max_iter=self.cfg["max_iter"],
                                 class_weight=self.cfg["class_weight"], random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(x, y)
        return clf

    def _score(self, clf, xv, yv) -> float:
        return float((clf.predict(xv) == yv).mean())

    def _binary_search(self, x, y, xv, yv, info: dict):
        """BiomedCoOp's C search (``impl: biomedcoop``, lines 95-145 of the port): returns the
        classifier of the last step."""
        def acc(clf):
            return float(np.sum(clf.predict(xv) == yv) / len(yv))
        grid = [float(c) for c in self.cfg["coarse_grid"]]
        accs = [acc(self._fit_lr(x, y, c)) for c in grid]
        peak = grid[int(np.argmax(accs))]  # the first best, in the grid's order
        c_left, c_right = 1e-1 * peak, 1e1 * peak
        steps, final, c_final = [], None, None
        for _ in range(BIOMEDCOOP_LP_STEPS):
            left, right = self._fit_lr(x, y, c_left), self._fit_lr(x, y, c_right)
            a_left, a_right = acc(left), acc(right)
            if a_left < a_right:
                final, c_final = right, c_right
                lo, hi = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_right)
            else:
                final, c_final = left, c_left
                lo, hi = np.log10(c_left), 0.5 * (np.log10(c_right) + np.log10(c_left))
            steps.append({"C_left": c_left, "C_right": c_right, "val_left": a_left,
                          "val_right": a_right})
            c_left, c_right = float(np.power(10, lo)), float(np.power(10, hi))
        info["C_selection"] = {"coarse": {f"{c:.3g}": a for c, a in zip(grid, accs)},
                               "binary_search": steps}
        return final, float(c_final)

    def fit(self, train, val, engine) -> dict:
        biomed = self.cfg.get("impl") == "biomedcoop"
        # impl biomedcoop: the features of one augmented pass (the port's train loader)
        xt = train.augmented(0) if biomed else train.features
        x = F.normalize(xt.float(), dim=-1).numpy()
        y = train.labels.numpy()
        if len(np.unique(y)) < 2:
            raise UserError("linear probe needs training images from at least two classes")
        info = {}
        C = self.cfg["C"]
        clf = None
        if C is None and biomed:
            if val is None or len(val.labels) == 0:
                raise UserError("linear-probe (impl: biomedcoop) searches C on the few-shot "
                                "validation set, and there is none")
            xv = F.normalize(val.features.float(), dim=-1).numpy()
            clf, C = self._binary_search(x, y, xv, val.labels.numpy(), info)
        elif C is None:
            if val is None or len(val.labels) == 0:
                C = 1.0
                info["C_selection"] = "no validation set: C=1"
            else:
                xv = F.normalize(val.features.float(), dim=-1).numpy()
                yv = val.labels.numpy()
                scores = {c: self._score(self._fit_lr(x, y, c), xv, yv) for c in self.cfg["coarse_grid"]}
                best = max(scores, key=lambda c: (scores[c], -abs(np.log10(c))))
                fine = np.logspace(np.log10(best) - 1, np.log10(best) + 1, self.cfg["fine_steps"])
                for c in fine:
                    scores[float(c)] = self._score(self._fit_lr(x, y, float(c)), xv, yv)
                C = max(scores, key=lambda c: (scores[c], -abs(np.log10(c))))
                info["C_selection"] = {f"{k:.3g}": v for k, v in sorted(scores.items())}
        if clf is None:
            clf = self._fit_lr(x, y, C)
        n = len(self.texts.classnames)
        w = np.zeros((n, x.shape[1]), dtype=np.float32)
        b = np.full(n, -1e4, dtype=np.float32)  # classes absent from training never win
        if len(clf.classes_) == 2:  # sklearn stores one row for binary problems
            c0, c1 = clf.classes_
            w[c1], b[c1] = clf.coef_[0], clf.intercept_[0]
            w[c0], b[c0] = 0.0, 0.0
        else:
            for row, c in enumerate(clf.classes_):
                w[c], b[c] = clf.coef_[row], clf.intercept_[row]
        self.weight = torch.from_numpy(w)
        self.bias = torch.from_numpy(b)
        info["C"] = float(C)
        return info

    def set_classes(self, texts) -> None:
        if list(texts.classnames) != list(self.texts.classnames):
            raise UserError("linear probe cannot predict classes it was not trained on")

    def forward(self, batch: Batch) -> torch.Tensor:
        img = self.image_features(batch)
        return img @ self.weight.to(img.device).T + self.bias.to(img.device)
