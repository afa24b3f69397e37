"""CLIP-Adapter: Eq. 1 and the residual blend, what learns, CLI overfit, save -> load."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from medadapt.cli import main
from medadapt.data.texts import load_class_texts
from medadapt.errors import UserError
from medadapt.methods.base import Batch
from medadapt.methods.clip_adapter import Adapter, CLIPAdapter, ResidualAdapter
from test_scale_fixtures import backbone, data_csv, env, feature_split  # noqa: F401


def test_adapter_is_eq1_and_blend():
    torch.manual_seed(0)
    a = Adapter(8, reduction=4)
    assert a.w1.weight.shape == (2, 8) and a.w2.weight.shape == (8, 2)
    f = torch.randn(3, 8)
    W1, W2 = a.w1.weight.T, a.w2.weight.T  # f W1 with W1: [D, D/4]
    assert torch.allclose(a(f), torch.relu(f @ W1) @ W2)
    a_code = Adapter(8, final_relu=True)  # Gao et al.'s released code
    assert (a_code(f) >= 0).all()
    r = ResidualAdapter(8, alpha=0.3)
    assert torch.allclose(r(f), 0.3 * r.adapter(f) + 0.7 * f)
    assert not any(p is r.alpha for p in r.parameters())  # fixed alpha is not learned
    r2 = ResidualAdapter(8, alpha=0.3, learn_alpha=True)
    assert any(p is r2.alpha for p in r2.parameters())


def test_forward_and_gradients(env, data_csv):
    bb = backbone("tiny-hf-clip")
    tr = feature_split(bb, data_csv)
    texts = load_class_texts(tr.ds.classnames)
    m = CLIPAdapter(bb, texts, {"adapt": "both", "learn_alpha": True})
    b = Batch(labels=tr.labels, features=tr.features)
    img = m.image_adapter(tr.features)  # raw features into the adapter, as Gao's code
    txt = m.text_adapter(m.text_features)
    want = bb.logit_scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    assert torch.allclose(m(b), want, atol=1e-5)
    loss, _ = m.loss(b)
    loss.backward()
    learned = {n for n, p in m.named_parameters() if p.requires_grad}
    assert learned == {f"{s}_adapter.{w}" for s in ("image", "text")
                       for w in ("alpha", "adapter.w1.weight", "adapter.w2.weight")}
    assert all(p.grad is not None for n, p in m.named_parameters() if n in learned)
    assert all(p.grad is None for n, p in m.named_parameters() if n not in learned)
    with pytest.raises(UserError, match="method.adapt must be image, text or both"):
        CLIPAdapter(bb, texts, {"adapt": "visual"})


def test_cli_overfits_and_reloads(env, data_csv, tmp_path):
    from medadapt.engine.evaluate import evaluate_run, load_run
    out = tmp_path / "ca"
    assert main(["fit", "--backbone", "tiny-hf-clip", "--dataset", f"csv:{data_csv}", "--method",
                 "clip-adapter", "--shots", "4", "--out", str(out), "--quiet",
                 "--set", "train.epochs=100", "--set", "train.optimizer=adamw",
                 "--set", "train.lr=0.01", "--set", "method.alpha=0.5"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"]["accuracy"] == 1.0
    sd = load_file(str(out / "params.safetensors"))
    assert set(sd) == {"image_adapter.adapter.w1.weight", "image_adapter.adapter.w2.weight"}
    assert evaluate_run(out, progress=False)["metrics"]["auc"] == res["metrics"]["auc"]
    _, _, bb, m, _ = load_run(out)
    assert torch.equal(m.image_adapter.adapter.w1.weight, sd["image_adapter.adapter.w1.weight"])
