"""``method.impl: biomedcoop`` on the feature methods: each structural difference of BiomedCoOp's
``main.py`` port against a transcription of the released behaviour (HealthX-Lab/BiomedCoOp
@7ceb5a8), so that removing the mechanism fails a test: CLIP-Adapter's un-normalised blend and
per-batch warm-up + cosine; Tip-Adapter's fixed logit scale and (0, 0) fallback; Tip-Adapter-F's
initial-alpha search whose trainings share one storage; LP's binary search over C on one augmented
pass; LP++ on one augmented pass with an fp16 initial probe."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from medadapt.data.texts import ClassTexts
from medadapt.engine.train import Engine, Split
from medadapt.errors import UserError
from medadapt.methods.base import Batch
from medadapt.methods.clip_adapter import CLIPAdapter
from medadapt.methods.linear_probe import LinearProbe
from medadapt.methods.lp_pp import LPPlusPlus, class_sums
from medadapt.methods.tip_adapter import BIOMEDCOOP_LOGIT_SCALE, TipAdapter, TipAdapterF

C, D = 3, 8


class _Backbone(nn.Module):
    """Text side only: each class text maps to a fixed unit vector."""

    def __init__(self, t: torch.Tensor):
        super().__init__()
        self.t, self.embed_dim, self.device = t, t.shape[1], torch.device("cpu")
        self.logit_scale = torch.tensor(20.0)

    def freeze(self):
        return self

    def encode_texts(self, sents):
        return torch.stack([self.t[int(s.split()[-1].rstrip("."))] for s in sents])


def _problem(seed=0, k=4, nv=3, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    t = F.normalize(torch.randn(C, D, generator=g), dim=-1)
    texts = ClassTexts([f"c {i}" for i in range(C)], ["a photo of a {}."])
    y = torch.arange(C).repeat_interleave(k)
    yv = torch.arange(C).repeat_interleave(nv)
    # the eval features are poor; the augmented passes are informative (and differ per pass)
    passes = {p: t[y] * 0.8 + noise * torch.randn(len(y), D, generator=g) for p in range(40)}
    train = Split(None, list(range(len(y))), y, torch.randn(len(y), D, generator=g))
    train.fresh = lambda p: passes[p]
    train.fresh_count = 1
    val = Split(None, list(range(len(yv))), yv, t[yv] * 0.8 + noise * torch.randn(len(yv), D,
                                                                                   generator=g))
    return _Backbone(t), texts, t, train, val, passes


# --- CLIP-Adapter ------------------------------------------------------------------------------
class _Warmup(LRScheduler):
    """The port's ConstantWarmupScheduler (clip_adapter_biomedclip.py lines 256-300)."""

    def __init__(self, opt, successor, warmup, cons_lr):
        self.successor, self.warmup, self.cons_lr = successor, warmup, cons_lr
        super().__init__(opt)

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


def test_clip_adapter_schedule_is_the_ports_per_batch_warmup_cosine(monkeypatch):
    bb, texts, t, train, val, _ = _problem()
    cfg = {"lr": 0.01, "epochs": 4, "warmup_epochs": 1, "warmup_lr": 1e-5, "batch_size": 5,
           "momentum": 0.0, "weight_decay": 0.0, "drop_last": False, "checkpoint": False}
    m = CLIPAdapter(bb, texts, {"impl": "biomedcoop", "normalize_input": True, "alpha": 0.5})
    seen = []
    zero = torch.optim.SGD.zero_grad  # the engine sets the lr, then zero_grad, then steps
    monkeypatch.setattr(torch.optim.SGD, "zero_grad",
                        lambda self, *a, **k: (seen.append(self.param_groups[0]["lr"]),
                                               zero(self, *a, **k))[1])
    Engine(cfg, progress=False, seed=1).train(m, train)
    n_steps = 4 * math.ceil(len(train) / 5)  # no drop_last: 3 batches x 4 epochs
    # the reference: SGD, CosineAnnealingLR(T_max=epochs) in the warm-up scheduler, both stepped
    # after every batch
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.01)
    sched = _Warmup(opt, CosineAnnealingLR(opt, 4), 1, 1e-5)
    want = []
    for _ in range(n_steps):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(want, rel=1e-6, abs=1e-12)
    assert len(seen) == n_steps and seen[0] == 1e-5 and max(seen) == pytest.approx(0.01)
    # the paper implementation keeps the engine's per-epoch schedule
    seen.clear()
    Engine(cfg, progress=False, seed=1).train(CLIPAdapter(bb, texts, {}), train)
    assert seen != pytest.approx(want, rel=1e-6, abs=1e-12)


def test_clip_adapter_blend_is_not_normalised_again():
    bb, texts, t, train, _, _ = _problem()
    torch.manual_seed(0)
    m = CLIPAdapter(bb, texts, {"impl": "biomedcoop", "normalize_input": True, "alpha": 0.5})
    f = train.features
    fn = F.normalize(f, dim=-1)
    a = m.image_adapter.adapter
    blend = 0.5 * F.relu(a.w2(F.relu(a.w1(fn)))) + 0.5 * fn  # Adapter ends with a ReLU
    want = bb.logit_scale * blend @ t.T
    got = m(Batch(labels=train.labels, features=f))
    assert torch.allclose(got, want, atol=1e-5)
    paper = CLIPAdapter(bb, texts, {"normalize_input": True, "alpha": 0.5})
    paper.load_state_dict(m.state_dict())
    assert not torch.allclose(paper(Batch(labels=train.labels, features=f)), want, atol=1e-3)


# --- Tip-Adapter ---------------------------------------------------------------------------------
def test_tip_adapter_fixed_logit_scale_and_cache_of_one_pass():
    bb, texts, t, train, val, passes = _problem()
    m = TipAdapter(bb, texts, {"impl": "biomedcoop", "search": False})
    m.fit(train, val, Engine({}, progress=False))
    keys = F.normalize(passes[0], dim=-1)  # augment_epoch 1: the mean of one pass
    assert torch.allclose(m.cache_keys, keys)
    x = F.normalize(val.features, dim=-1)
    L = F.one_hot(train.labels, C).float()
    want = BIOMEDCOOP_LOGIT_SCALE * x @ t.T + 1.0 * torch.exp(-(1 - x @ keys.T)) @ L
    assert torch.allclose(m(Batch(labels=val.labels, features=val.features)), want, atol=1e-4)
    assert BIOMEDCOOP_LOGIT_SCALE == 85.2323


def test_tip_adapter_search_keeps_zero_when_nothing_beats_zero():
    bb, texts, t, train, val, _ = _problem()
    n = len(val)
    # every image looks like class 1 (text and cache agree) but is labelled 0: never right
    wrong = Split(None, val.indices, torch.zeros(n, dtype=torch.long), t[[1] * n] * 5)
    m = TipAdapter(bb, texts, {"impl": "biomedcoop", "search_step": [4, 4]})
    info = m.fit(train, wrong, Engine({}, progress=False))
    assert (info["alpha"], info["beta"]) == (0.0, 0.0)
    p = TipAdapter(bb, texts, {"search_step": [4, 4]})
    assert p.fit(train, wrong, Engine({}, progress=False))["beta"] == pytest.approx(0.1)


def _tip_f_reference(train, val, t, engine, n_alphas=10):
    """tip_adapter_biomedclip.py forward (finetune True, grid_search True), transcribed: every
    adapter's weight is nn.Parameter(cache_keys.t()) - one storage."""
    c = engine.cfg
    cache_keys = F.normalize(train.augmented(0), dim=-1).t().contiguous()  # [D, N]
    values = F.one_hot(train.labels, C).half()
    xv, yv = F.normalize(val.features, dim=-1), val.labels
    beta, alpha = 1.0, 1.0
    adapter = nn.Linear(cache_keys.shape[0], cache_keys.shape[1], bias=False)
    adapter.weight = nn.Parameter(cache_keys.t())
    opt0 = torch.optim.AdamW(adapter.parameters(), lr=c["lr"], eps=1e-4)

    class _M:
        needs_images = False

    def logits(ad, f, a):
        aff = ad(f)
        return 85.2323 * f @ t.T + ((-1) * (beta - beta * aff.float())).exp() @ values.float() * a

    draw, best = 1, 0.0
    for init_alpha in range(n_alphas):
        ad = nn.Linear(cache_keys.shape[0], cache_keys.shape[1], bias=False)
        ad.weight = nn.Parameter(cache_keys.t())
        opt = torch.optim.AdamW(ad.parameters(), lr=c["lr"], eps=1e-4)
        sch = CosineAnnealingLR(opt, c["epochs"] * engine.steps_per_epoch(len(train)))
        for e in range(c["epochs"]):
            for b in engine.batches(_M(), train, shuffle=True, epoch=draw + e, draw=draw + e):
                f = F.normalize(b.features, dim=-1)
                loss = F.cross_entropy(logits(ad, f, init_alpha), b.labels)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sch.step()
        draw += c["epochs"]
        acc = 100 * float((logits(ad, xv, init_alpha).argmax(1) == yv).float().mean())
        if acc > best:
            best, alpha, adapter = acc, init_alpha, ad
    # the main loop: opt0 holds the first adapter's parameter, which has no gradient -> no step
    del opt0
    return adapter.weight.detach(), alpha


def test_tip_adapter_f_alpha_search_trainings_continue_one_another():
    bb, texts, t, train, val, _ = _problem(noise=2.0)
    cfg = {"epochs": 2, "batch_size": 4, "lr": 0.01, "eps": 1e-4, "weight_decay": 0.01,
           "drop_last": False}
    m = TipAdapterF(bb, texts, {"impl": "biomedcoop", "search_step": [5, 5]})
    eng = Engine({**TipAdapterF.train_defaults, **cfg}, progress=False, seed=3)
    info = m.fit(train, val, eng)
    keys, alpha = _tip_f_reference(train, val, t, eng)
    assert torch.allclose(m.adapter_keys.detach(), keys, atol=1e-5)
    assert info["init_alpha"] == alpha and info["main_loop_trained"] is False
    assert info["augmented_passes"] == 1 + 10 * 2  # the cache pass, then 10 x 2 epochs
    # trained ten times from the same start, the keys would differ
    start = F.normalize(train.augmented(0), dim=-1)
    assert not torch.allclose(keys, start, atol=1e-3)


# --- linear probe --------------------------------------------------------------------------------
def _lp_reference(x, y, xv, yv, grid, steps=8):
    """trainers/LP/linear_probe_biomedclip.py lines 95-145, transcribed."""
    def fit(c):
        return LogisticRegression(solver="lbfgs", max_iter=1000, penalty="l2", C=c).fit(x, y)

    def acc(clf):
        return sum(clf.predict(xv) == yv) / len(yv)
    peak = grid[int(np.argmax([acc(fit(c)) for c in grid]))]
    c_left, c_right = 1e-1 * peak, 1e1 * peak
    final = None
    for _ in range(steps):
        left, right = fit(c_left), fit(c_right)
        if acc(left) < acc(right):
            final = right
            c_left, c_right = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_right)
        else:
            final = left
            c_right, c_left = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return final


def test_linear_probe_binary_search_on_one_augmented_pass():
    bb, texts, t, train, val, passes = _problem(noise=1.5, k=6)
    grid = [1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6]
    m = LinearProbe(bb, texts, {"impl": "biomedcoop", "coarse_grid": grid})
    info = m.fit(train, val, None)
    x = F.normalize(passes[0], dim=-1).numpy()
    xv = F.normalize(val.features, dim=-1).numpy()
    ref = _lp_reference(x, train.labels.numpy(), xv, val.labels.numpy(), grid)
    assert info["C"] == pytest.approx(float(ref.C))
    assert len(info["C_selection"]["binary_search"]) == 8
    got = m(Batch(labels=val.labels, features=val.features)).argmax(1).numpy()
    assert (got == ref.predict(xv)).all()
    assert np.allclose(m.weight.numpy(), ref.coef_, atol=1e-5)
    # without an augmented pass it says what to set
    bare = Split(None, train.indices, train.labels, train.features)
    with pytest.raises(UserError, match="fresh_views"):
        LinearProbe(bb, texts, {"impl": "biomedcoop"}).fit(bare, val, None)


# --- LP++ ----------------------------------------------------------------------------------------
def test_lp_pp_trains_on_one_augmented_pass_from_an_fp16_probe():
    bb, texts, t, train, val, passes = _problem()
    m = LPPlusPlus(bb, texts, {"impl": "biomedcoop", "epochs": 0, "select_on_val": False})
    m.fit(train, val, None)
    x = F.normalize(passes[0], dim=-1)
    want = class_sums(x.half().float(), train.labels, C).half().float()
    assert torch.equal(m.weight, want)
    assert not torch.equal(m.weight, class_sums(x, train.labels, C))  # fp32 sums differ
    # trained: the same as the paper implementation on that pass, up to the fp16 start
    aug = Split(None, train.indices, train.labels, passes[0])
    runs = []
    for impl, split in (("biomedcoop", train), ("paper", aug)):
        torch.manual_seed(0)
        mm = LPPlusPlus(bb, texts, {"impl": impl, "epochs": 30})
        mm.fit(split, val, None)
        runs.append(mm.alpha)
    assert torch.allclose(runs[0], runs[1], rtol=1e-2)
