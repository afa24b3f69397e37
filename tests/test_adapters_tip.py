"""Tip-Adapter / Tip-Adapter-F: the paper's formula, alpha/beta from the validation split only,
what Tip-Adapter-F learns, CLI overfit, save -> load."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from medadapt.cli import main
from medadapt.data.texts import load_class_texts
from medadapt.engine.train import Engine
from medadapt.methods.base import Batch, text_features_for
from medadapt.methods.tip_adapter import TipAdapter, TipAdapterF, search_alpha_beta, tip_logits
from test_scale_fixtures import backbone, data_csv, env, feature_split  # noqa: F401


def test_tip_logits_formula_by_hand():
    f = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    values = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    got = tip_logits(f, text, keys, values, alpha=2.0, beta=3.0, logit_scale=10.0)
    a1, a2 = math.exp(-3 * (1 - 0.6)), math.exp(-3 * (1 - 1.0))  # exp(-beta (1 - f k))
    want = [10 * 1 + 2 * a2, 10 * 0 + 2 * a1]
    assert got[0].tolist() == pytest.approx(want)


def test_training_free_logits_equal_formula(env, data_csv):
    bb = backbone("tiny-hf-clip")
    tr, va = feature_split(bb, data_csv, "train"), feature_split(bb, data_csv, "val")
    texts = load_class_texts(tr.ds.classnames)
    m = TipAdapter(bb, texts, {"search": False, "init_alpha": 1.17})  # Tip-Adapter's ImageNet alpha
    info = m.fit(tr, va, Engine({}, progress=False))
    assert info["alpha"] == pytest.approx(1.17) and info["beta"] == pytest.approx(1.0)
    x = F.normalize(va.features, dim=-1)
    K = F.normalize(tr.features, dim=-1)
    L = F.one_hot(tr.labels, 4).float()
    W = text_features_for(bb, texts)
    want = bb.logit_scale * x @ W.T + 1.17 * torch.exp(-1.0 * (1 - x @ K.T)) @ L
    assert torch.allclose(m(Batch(labels=va.labels, features=va.features)), want, atol=1e-5)
    assert m.n_trainable_params() == 0


def test_alpha_beta_searched_on_validation_only(env, data_csv):
    bb = backbone("tiny-hf-clip")
    tr, va, te = (feature_split(bb, data_csv, s) for s in ("train", "val", "test"))
    texts = load_class_texts(tr.ds.classnames)
    m = TipAdapter(bb, texts, {"search_scale": [50, 10], "search_step": [20, 10]})
    info = m.fit(tr, va, Engine({}, progress=False))
    K = F.normalize(tr.features, dim=-1)
    a, b, acc = search_alpha_beta(F.normalize(va.features, dim=-1), va.labels,
                                  text_features_for(bb, texts), K, F.one_hot(tr.labels, 4).float(),
                                  float(bb.logit_scale), [50, 10], [20, 10])
    assert (info["alpha"], info["beta"]) == pytest.approx((a, b))
    assert info["alpha_beta_selection"]["n_val"] == len(va)
    # the grid of the released code: beta_i = 0.1 + i (s - 0.1) / n
    assert any(b == pytest.approx(0.1 + i * (50 - 0.1) / 20) for i in range(20))
    # corrupting test labels changes nothing: test is never looked at
    te.labels = (te.labels + 1) % 4
    m2 = TipAdapter(bb, texts, {"search_scale": [50, 10], "search_step": [20, 10]})
    assert m2.fit(tr, va, Engine({}, progress=False))["alpha"] == info["alpha"]
    m3 = TipAdapter(bb, texts)
    assert m3.fit(tr, None, Engine({}, progress=False))["alpha_beta_selection"].startswith("no val")


def test_tip_f_learns_only_keys(env, data_csv, tmp_path):
    bb = backbone("tiny-open-clip")
    tr, va = feature_split(bb, data_csv, "train"), feature_split(bb, data_csv, "val")
    texts = load_class_texts(tr.ds.classnames)
    m = TipAdapterF(bb, texts)
    eng = Engine({**TipAdapterF.train_defaults, "epochs": 20, "lr": 0.01, "checkpoint": False},
                 progress=False)
    info = m.fit(tr, va, eng)
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["adapter_keys"]
    assert m.n_trainable_params() == len(tr) * bb.embed_dim
    assert not torch.allclose(m.adapter_keys, F.normalize(tr.features, dim=-1))  # keys moved
    assert torch.equal(m.cache_values, F.one_hot(tr.labels, 4).float())  # values fixed
    assert info["history"][-1]["loss"] < info["history"][0]["loss"]
    save_file(m.learned_state_dict(), str(tmp_path / "p.safetensors"))
    sd = load_file(str(tmp_path / "p.safetensors"))
    assert set(sd) == {"adapter_keys", "cache_values", "alpha_beta"}
    m2 = TipAdapterF(bb, texts)
    m2.load_learned_state_dict(sd)
    assert torch.equal(eng.logits(m, va), eng.logits(m2, va))


@pytest.mark.parametrize("method, extra", [
    ("tip-adapter", ["--set", "data.augment_views=0"]),  # overfitting the un-augmented train images
    ("tip-adapter-f", ["--set", "train.epochs=50", "--set", "train.lr=0.01",
                       "--set", "data.augment_views=0"]),
])
def test_cli_overfits_and_reloads(env, data_csv, tmp_path, method, extra):
    from medadapt.engine.evaluate import evaluate_run
    out = tmp_path / method
    assert main(["fit", "--backbone", "tiny-hf-clip", "--dataset", f"csv:{data_csv}", "--method",
                 method, "--shots", "4", "--out", str(out), "--quiet", *extra]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"]["accuracy"] == 1.0
    again = evaluate_run(out, progress=False)["metrics"]
    assert again["auc"] == res["metrics"]["auc"]
    assert again["confusion_matrix"] == res["metrics"]["confusion_matrix"]
