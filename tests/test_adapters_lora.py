"""CLIP-LoRA: only LoRA weights train, LoRA weights alone reload onto the base model, merging
gives identical outputs (HF CLIP and open_clip tiny backbones), packed-attention conversions."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from medadapt.cli import main
from medadapt.data.texts import load_class_texts
from medadapt.errors import UserError
from medadapt.methods.base import Batch
from medadapt.methods.clip_lora import CLIPLoRA, FusedQKV, PlainMHA, merge_lora
from test_scale_fixtures import backbone, data_csv, env  # noqa: F401

CLASSES = ["adipose", "lymphocytes", "tumor"]


def _images(bb, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, bb.image_size, bb.image_size, generator=g)


def _randomise_lora(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("name", ["tiny-hf-clip", "tiny-open-clip", "tiny-open-clip-bpe"])
def test_lora_trains_only_lora_and_merges_identically(env, name):
    bb = backbone(name)
    texts = load_class_texts(CLASSES)
    x = _images(bb)
    y = torch.tensor([0, 1, 2, 0])
    base_logits = bb.logit_scale * bb.encode_image(x) @ bb.encode_texts(texts.prompts()).T
    m = CLIPLoRA(bb, texts, {})
    # q, k, v of every block of both towers (2 + 2 blocks), rank 2: A [2, 32], B [32, 2]
    assert len(m.targets) == 3 * 4
    lora = {n for n, p in m.named_parameters() if p.requires_grad}
    assert lora and all(".lora_A." in n or ".lora_B." in n for n in lora)
    assert m.n_trainable_params() == 12 * 2 * (2 * 32)
    b = Batch(labels=y, images=x)
    with torch.no_grad():  # B = 0 at init: exactly zero-shot CLIP
        assert torch.allclose(m(b), base_logits, atol=1e-5)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.01)
    m.train()
    assert all(d.training for d in m._lora_dropouts)  # LoRA dropout is live while training
    for _ in range(3):
        loss, _ = m.loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= lora  # frozen weights never move
    assert any(".lora_A." in n for n in changed) and any(".lora_B." in n for n in changed)
    _randomise_lora(m)
    with torch.no_grad():
        lo = m(b)
        merged = merge_lora(m)
        ml = merged.logit_scale * merged.encode_image(x) @ merged.encode_texts(texts.prompts()).T
    assert (lo - base_logits).abs().max() > 1e-2
    assert torch.allclose(ml, lo, atol=1e-4)
    kinds = {type(mod) for mod in merged.model.modules()}
    assert PlainMHA not in kinds and not any("Lora" in k.__name__ for k in kinds)
    assert sorted(merged.state_dict()) == sorted(bb.state_dict())  # the base model's layout
    # the shared backbone was never touched
    with torch.no_grad():
        assert torch.allclose(bb.logit_scale * bb.encode_image(x) @ bb.encode_texts(texts.prompts()).T,
                              base_logits)


def test_lora_weights_alone_reload_onto_base(env, tmp_path):
    bb = backbone("tiny-open-clip-bpe")
    texts = load_class_texts(CLASSES)
    m = CLIPLoRA(bb, texts, {"params": ["q", "v", "o"], "layers": [1], "encoders": "vision"})
    assert len(m.targets) == 3 and all("visual" in t for t in m.targets)
    _randomise_lora(m, 1)
    sd = m.learned_state_dict()
    assert all("lora_" in k for k in sd)
    save_file(sd, str(tmp_path / "lora.safetensors"))
    m2 = CLIPLoRA(bb, texts, {"params": ["q", "v", "o"], "layers": [1], "encoders": "vision"})
    m2.load_learned_state_dict(load_file(str(tmp_path / "lora.safetensors")))
    x = _images(bb, seed=3)
    with torch.no_grad():
        assert torch.equal(m(Batch(labels=torch.zeros(4, dtype=torch.long), images=x)),
                           m2(Batch(labels=torch.zeros(4, dtype=torch.long), images=x)))
    with pytest.raises(UserError, match="method.params must be a list of q, k, v, o"):
        CLIPLoRA(bb, texts, {"params": ["q", "z"]})


def test_plain_mha_equals_multihead_attention():
    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
        plain = PlainMHA(mha).eval()
        x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
        causal = torch.full((5, 5), float("-inf")).triu(1)
        pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
        for kw in ({}, {"attn_mask": causal}, {"key_padding_mask": pad},
                   {"attn_mask": causal.isinf(), "key_padding_mask": pad}):
            want = mha(x, x, x, need_weights=False, **kw)[0]
            got = plain(x, x, x, need_weights=False, **kw)[0]
            assert torch.allclose(got, want, atol=1e-5), kw
        back = plain.to_mha()
        assert torch.equal(back.in_proj_weight, mha.in_proj_weight)


def test_fused_qkv_split_matches_timm_attention():
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import Attention
    torch.manual_seed(0)
    att = Attention(16, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(2, 6, 16)
    want = att(x)
    att.qkv = FusedQKV(att.qkv)
    assert torch.allclose(att(x), want, atol=1e-6)
    lin = att.qkv.to_linear()
    assert lin.weight.shape == (48, 16)
    del timm


def test_cli_overfits_and_reloads(env, data_csv, tmp_path):
    from medadapt.engine.evaluate import evaluate_run
    out = tmp_path / "lora"
    assert main(["fit", "--backbone", "tiny-hf-clip", "--dataset", f"csv:{data_csv}", "--method",
                 "clip-lora", "--shots", "4", "--out", str(out), "--quiet",
                 "--set", "method.n_iters_per_shot=null", "--set", "train.epochs=30",
                 "--set", "train.lr=0.01", "--set", "method.dropout=0.0",
                 "--set", "train.batch_size=16", "--set", "train.checkpoint=false"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"]["accuracy"] == 1.0
    sd = load_file(str(out / "params.safetensors"))
    assert sd and all("lora_" in k for k in sd)
    again = evaluate_run(out, progress=False)["metrics"]
    assert again["auc"] == pytest.approx(res["metrics"]["auc"])
    assert again["confusion_matrix"] == res["metrics"]["confusion_matrix"]


def test_paper_schedule(env, data_csv):
    """500 x shots iterations (Zanella & Ben Ayed) become engine epochs."""
    from medadapt.engine.train import Engine, Split
    from medadapt.data.sources import load_dataset
    bb = backbone("tiny-hf-clip")
    ds = load_dataset(f"csv:{data_csv}")
    idx = ds.indices("train")
    tr = Split(ds, idx, torch.tensor([ds.records[i].label for i in idx]))
    m = CLIPLoRA(bb, load_class_texts(ds.classnames), {"n_iters_per_shot": 2})
    eng = Engine({**CLIPLoRA.train_defaults, "batch_size": 8, "checkpoint": False}, progress=False,
                 log=lambda s: None)
    info = m.fit(tr, None, eng)
    assert info["schedule"].startswith("2 x 4 shots = 8 iterations -> 4 epochs")
    assert len(info["history"]) == 4
