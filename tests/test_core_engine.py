"""Engine: learning-rate schedule, non-finite loss, checkpoint/resume, feature cache, metrics."""
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import CRC
from medadapt.backbones import load_backbone
from medadapt.data.sources import from_folder
from medadapt.data.texts import ClassTexts
from medadapt.engine.features import FeatureCache
from medadapt.engine.train import Engine, Split, lr_at
from medadapt.errors import TrainingError
from medadapt.methods.base import Method
from medadapt.metrics import classification_metrics, harmonic_mean


def test_lr_schedule_constant_warmup_then_cosine():
    cfg = {"lr": 0.1, "warmup": "constant", "warmup_lr": 1e-5}
    assert lr_at(0, 100, 10, cfg) == 1e-5 and lr_at(9, 100, 10, cfg) == 1e-5
    assert lr_at(10, 100, 10, cfg) == pytest.approx(0.1)
    assert lr_at(55, 100, 10, cfg) == pytest.approx(0.05)
    assert lr_at(99, 100, 10, cfg) == pytest.approx(0.05 * (1 + math.cos(math.pi * 89 / 90)))
    lin = dict(cfg, warmup="linear")
    assert lr_at(4, 100, 10, lin) == pytest.approx(0.05)


class Linear(Method):
    name = "test-linear"
    defaults = {"nan_after": None}

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        self.head = nn.Linear(backbone.embed_dim, len(texts.classnames))
        self.calls = 0

    def forward(self, batch):
        return self.head(batch.features)  # raw features: the tiny random encoder barely spreads them

    def loss(self, batch):
        self.calls += 1
        loss, parts = super().loss(batch)
        if self.cfg["nan_after"] is not None and self.calls > self.cfg["nan_after"]:
            loss = loss * float("nan")
        return loss, parts


@pytest.fixture(scope="module")
def setup(shared_data):
    bb = load_backbone("tiny-hf-clip")
    ds = from_folder(str(CRC))
    idx = ds.indices("train")
    feats, _ = FeatureCache(enabled=False).encode(bb, ds, idx, progress=False)
    split = Split(ds, idx, torch.tensor([ds.records[i].label for i in idx]), feats)
    texts = ClassTexts(ds.classnames, ["a photo of {}."])
    return bb, split, texts


def test_training_overfits_and_only_head_learns(setup):
    bb, split, texts = setup
    torch.manual_seed(0)
    m = Linear(bb, texts)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    info = Engine({"epochs": 200, "lr": 0.5, "optimizer": "adamw", "weight_decay": 0.0,
                   "batch_size": 8, "checkpoint": False, "warmup_epochs": 0},
                  progress=False).train(m, split)
    assert info["history"][-1]["loss"] < info["history"][0]["loss"] * 0.5
    assert Engine({}, progress=False).accuracy(m, split) == 1.0
    after = bb.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert set(m.learned_state_dict()) == {"head.weight", "head.bias"}


def test_non_finite_loss_stops_with_clear_message(setup):
    bb, split, texts = setup
    m = Linear(bb, texts, {"nan_after": 3})
    with pytest.raises(TrainingError, match="loss became nan at epoch .* lower the learning rate"):
        Engine({"epochs": 5, "batch_size": 8, "checkpoint": False}, progress=False).train(m, split)


def test_resume_continues_from_checkpoint(setup, tmp_path):
    bb, split, texts = setup
    cfg = {"epochs": 6, "lr": 0.1, "batch_size": 8}
    torch.manual_seed(0)
    m1 = Linear(bb, texts)
    d = tmp_path / "r"
    d.mkdir()
    e1 = Engine(dict(cfg), run_dir=d, progress=False)
    # simulate the interruption: run 3 epochs worth by lowering epochs but keeping the schedule
    e1.cfg["epochs"] = 3
    e1.train(m1, split)
    torch.manual_seed(123)  # a different init: resume must overwrite it from the checkpoint
    m2 = Linear(bb, texts)
    e2 = Engine(dict(cfg), run_dir=d, progress=False)
    e2.resume = True
    info = e2.train(m2, split)
    assert [h["epoch"] for h in info["history"]] == [1, 2, 3, 4, 5, 6]
    assert m2.calls == 3 * math.ceil(len(split) / 8)  # only the remaining epochs ran


def test_feature_cache_reuses_and_invalidates(tmp_path, shared_data):
    bb = load_backbone("tiny-hf-clip")
    data = tmp_path / "d"
    shutil.copytree(CRC, data)
    cache = FeatureCache(tmp_path / "cache")
    ds = from_folder(str(data))
    idx = list(range(len(ds)))
    f1, _ = cache.encode(bb, ds, idx[:10], progress=False)
    calls = []
    orig = bb._encode_image
    bb._encode_image = lambda x: (calls.append(len(x)), orig(x))[1]
    try:
        f2, _ = cache.encode(bb, ds, idx[:10], progress=False)  # all cached: no encoding
        assert calls == [] and torch.equal(f1, f2)
        f3, _ = cache.encode(bb, ds, idx, progress=False)  # only the new items are encoded
        assert sum(calls) == len(idx) - 10 and torch.equal(f3[:10], f1)
        # a changed file changes the data set fingerprint and so the cache key
        # (content-based since issue 13: other bytes, even with the old mtime)
        p = data / ds.records[0].id
        st = p.stat()
        p.write_bytes((data / ds.records[-1].id).read_bytes())
        import os
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        ds2 = from_folder(str(data))
        assert cache.key(bb, ds2, 0) != cache.key(bb, ds, 0)
        calls.clear()
        cache.encode(bb, ds2, idx[:3], progress=False)
        assert sum(calls) == 3
    finally:
        bb._encode_image = orig


def test_metrics_on_hand_computed_case():
    y = np.array([0, 0, 1, 1, 2, 2])
    logits = np.array([[2, 0, 0], [0, 2, 0], [0, 2, 0], [0, 2, 0], [0, 0, 2], [2, 0, 0]], float)
    m = classification_metrics(y, logits, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_recall"] == {"a": 0.5, "b": 1.0, "c": 0.5}
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    # F1: a: p=1/2 r=1/2 -> .5; b: p=2/3 r=1 -> .8; c: p=1 r=.5 -> 2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert harmonic_mean(0.8, 0.6) == pytest.approx(2 * 0.48 / 1.4)
    yb = np.array([0, 0, 1, 1])
    lb = np.array([[0, 1], [0, 0.2], [0, 0.5], [0, 2]], float)
    mb = classification_metrics(yb, lb, ["neg", "pos"])
    assert mb["auc"] == pytest.approx(0.75)  # positives 0.5, 2 vs negatives 1, 0.2: 3 of 4 pairs
