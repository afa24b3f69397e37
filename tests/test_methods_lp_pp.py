"""LP++: its step sizes and initialisation on hand-computed inputs, the released training loop
(class-wise alpha updated every 10 epochs from a never-zeroed gradient, best-validation epoch kept)
reproduced step for step, and the blended logits."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from medadapt.data.texts import ClassTexts
from medadapt.errors import UserError
from medadapt.methods.base import Batch
from medadapt.methods.lp_pp import LPPlusPlus, class_sums, init_alpha, lr_alpha, lr_w

X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
Y = torch.tensor([0, 1, 1])
T = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_step_sizes_and_init_by_hand():
    # F^T F = [[1.36, .48], [.48, 1.64]]: eigenvalues 1 and 2 -> lr_w = 4 * 3 / 2
    assert lr_w(X) == pytest.approx(6.0)
    # column sums of (f . t_c)^2: 1.36 and 1.64 -> N / (4 * 1.64)
    assert lr_alpha(X, T) == pytest.approx(3 / (4 * 1.64))
    # class means of the text logits: [1, 0] and [0.3, 0.9]; compute_centroids_alpha keeps each
    # class's logit for its own class (the diagonal): 1 and 0.9, mean 0.95; 250 * 0.95
    # (averaging every cell, [1, 0, 0.3, 0.9] -> 137.5, was the old, wrong rule)
    assert init_alpha(X, Y, T, shots=2, n_classes=2) == pytest.approx(237.5)
    assert torch.allclose(class_sums(X, Y, 2), torch.tensor([[1.0, 0.0], [0.6, 1.8]]))


class _Backbone:
    """Text side only: each class text maps to a fixed unit vector."""

    def __init__(self, table: dict[str, torch.Tensor]):
        self.table, self.embed_dim, self.device = table, next(iter(table.values())).numel(), "cpu"
        self.logit_scale = torch.tensor(100.0)

    def freeze(self):
        return self

    def encode_texts(self, sents):
        return torch.stack([self.table[s] for s in sents])


@dataclass
class _Split:
    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self):
        return len(self.labels)


def _problem(seed=0, c=3, d=8, k=4, nv=6):
    g = torch.Generator().manual_seed(seed)
    names = [f"class{i}" for i in range(c)]
    t = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    bb = _Backbone({f"a photo of {n}.": t[i] for i, n in enumerate(names)})
    texts = ClassTexts(names, ["a photo of {}."])

    def draw(n):
        y = torch.arange(c).repeat_interleave(n)
        x = t[y] * 0.3 + torch.randn(len(y), d, generator=g)
        return x, y
    return bb, texts, t, draw(k), draw(nv)


def _released_loop(x, y, t, xv, yv, shots, epochs, seed):
    """Transcription of methods/linear_probe_p2.py (FewShot-CLIP-Strong-Baseline)."""
    torch.manual_seed(seed)
    x, xv = F.normalize(x, dim=-1), F.normalize(xv, dim=-1)
    c = t.shape[0]
    clf = nn.Linear(x.shape[1], c, bias=True)
    clf.weight.data = F.one_hot(y, c).float().T @ x
    lr = 4 * x.shape[0] / torch.linalg.eigvalsh((x.T @ x).double()).max().item()
    # compute_centroids_alpha: (one_hot * z / one_hot.sum(-2)).sum over images -> [C]
    oh = F.one_hot(y, c).double()
    tilde = (oh * (x.double() @ t.double().T) / oh.sum(0, keepdim=True)).sum(0)
    alpha_vec = (250 / shots * tilde * shots).mean().float() * torch.ones(1, c)
    alpha_vec.requires_grad_(True)
    lr_a = x.shape[0] / (4 * torch.sum((x @ t.T) ** 2, dim=0).max().item())
    opt = torch.optim.SGD(clf.parameters(), lr, momentum=0.9)
    best, state = 0.0, None
    for epoch in range(epochs):
        logits = clf(x) + torch.ones(x.shape[0], 1) @ alpha_vec * (x @ t.T)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (epoch + 1) % 10 == 0:
            alpha_vec.data -= lr_a * alpha_vec.grad.data
        with torch.no_grad():
            lv = clf(xv) + torch.ones(xv.shape[0], 1) @ alpha_vec * (xv @ t.T)
            acc = (lv.argmax(1) == yv).float().mean().item()
        if acc >= best:
            best = acc
            state = (clf.weight.detach().clone(), clf.bias.detach().clone(),
                     alpha_vec.detach()[0].clone())
    return state


@pytest.mark.parametrize("epochs", [9, 10, 35])
def test_fit_reproduces_the_released_loop(epochs):
    bb, texts, t, (x, y), (xv, yv) = _problem()
    m = LPPlusPlus(bb, texts, {"epochs": epochs})
    torch.manual_seed(7)
    info = m.fit(_Split(x, y), _Split(xv, yv), engine=None)
    w, b, a = _released_loop(x, y, t, xv, yv, shots=4, epochs=epochs, seed=7)
    assert torch.allclose(m.weight, w, atol=1e-4) and torch.allclose(m.bias, b, atol=1e-4)
    assert torch.allclose(m.alpha, a, rtol=1e-4)
    if epochs < 10:  # alpha moves only at epoch 10, 20, ...
        assert torch.allclose(m.alpha, torch.full((3,), info["alpha_init"]), rtol=1e-6)


def test_alpha_is_class_wise_and_moves_at_epoch_10():
    bb, texts, t, (x, y), _ = _problem()
    alphas = []
    for epochs in (9, 10):
        m = LPPlusPlus(bb, texts, {"epochs": epochs, "select_on_val": False})
        info = m.fit(_Split(x, y), None, engine=None)
        alphas.append(m.alpha)
    assert torch.allclose(alphas[0], torch.full((3,), info["alpha_init"]))
    assert len(set(alphas[1].tolist())) == 3  # one blending weight per class


def test_alpha_gradient_accumulates_as_released():
    bb, texts, t, (x, y), (xv, yv) = _problem(seed=1)
    out = {}
    for mode in ("accumulate", "epoch"):
        m = LPPlusPlus(bb, texts, {"epochs": 10, "alpha_grad": mode, "select_on_val": False})
        torch.manual_seed(0)
        m.fit(_Split(x, y), None, engine=None)
        out[mode] = m.alpha.clone()
    assert not torch.allclose(out["accumulate"], out["epoch"])


def test_logits_blend_probe_and_text():
    bb, texts, t, (x, y), (xv, yv) = _problem(seed=2)
    m = LPPlusPlus(bb, texts, {"epochs": 20})
    m.fit(_Split(x, y), _Split(xv, yv), engine=None)
    f = F.normalize(xv, dim=-1)
    want = f @ m.weight.T + m.bias + m.alpha[None] * (f @ t.T)
    assert torch.allclose(m(Batch(labels=yv, features=xv)), want, atol=1e-5)
    assert set(m.learned_state_dict()) == {"weight", "bias", "alpha"}
    assert m.n_trainable_params() == 3 * 8 + 3 + 3


def test_missing_class_and_bad_option():
    bb, texts, t, (x, y), _ = _problem()
    with pytest.raises(UserError, match=r"no training images for classes \['class2'\]"):
        LPPlusPlus(bb, texts).fit(_Split(x[y < 2], y[y < 2]), None, engine=None)
    with pytest.raises(UserError, match="alpha_grad"):
        LPPlusPlus(bb, texts, {"alpha_grad": "sometimes"})
    assert set(LPPlusPlus.sources) == {f"method.{k}" for k in LPPlusPlus.defaults}
