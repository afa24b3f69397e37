"""Biomed-DPT: the distillation terms against direct transcriptions, the zero-vector visual prompt
really trains (non-zero gradient, it moves), ablation switches, and `medadapt fit`."""
import json
import math

import pytest
import torch

from conftest import CRC, run_cli
from medadapt.data.texts import ClassTexts
from medadapt.methods import Batch, get_method
from medadapt.methods.biomed_dpt import (CLINICAL_TEMPLATES, distill_kl, distill_l1,
                                         prune_descriptions, resolve_template)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # random adaptor / prompt inits: every test sees the same ones


@pytest.fixture(scope="module")
def hf():
    from medadapt.backbones import load_backbone
    return load_backbone("tiny-hf-clip", device="cpu")


NAMES = ["adipose tissue", "debris", "tumor epithelium"]


def texts(names=NAMES):
    return ClassTexts(list(names), ["a histopathology image of {}."],
                      {c: [f"{c} shows pattern number {i} with several cells." for i in range(4)]
                       for c in names})


def method(bb, **cfg):
    return get_method("biomed-dpt")(bb, texts(), cfg)


def batch(bb, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(labels=torch.arange(n) % len(NAMES),
                 images=torch.randn(n, 3, bb.image_size, bb.image_size, generator=g))


def test_l1_and_kl_against_transcription():
    t = torch.tensor([[0.5, -0.5], [1.0, 0.0]])
    m = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert float(distill_l1(t, m)) == pytest.approx((0.5 + 0.5 + 1 + 1) / 4)
    z = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    zt = torch.tensor([[0.0, 3.0, 0.0], [1.0, 2.0, 3.0]])
    want = 0.0
    for a, b in zip(z, zt):
        p = [math.exp(x) / sum(math.exp(y) for y in a) for x in a.tolist()]
        q = [math.exp(x) / sum(math.exp(y) for y in b) for x in b.tolist()]
        want += sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))  # KL(teacher || student)
    assert float(distill_kl(z, zt)) == pytest.approx(want / 6, rel=1e-5)  # / (B*C)
    assert float(distill_kl(z, zt, reduction="batchmean")) == pytest.approx(want / 2, rel=1e-5)
    assert float(distill_kl(z, zt, T=2.0)) != pytest.approx(want / 6, rel=1e-3)


def test_clinical_template_and_pruning(hf):
    assert resolve_template("auto", ["a histopathology image of {}."]) == CLINICAL_TEMPLATES["histopathology"]
    assert resolve_template("oct", []) == "a OCT photo of a {}."
    assert resolve_template("auto", ["a blood smear showing a {}."]) == CLINICAL_TEMPLATES["cytology"]
    m = method(hf)
    assert m.prompt.init_words == "a histopathological photo of a"
    # the learnable context starts as the template words' embeddings
    ids = hf.tokenize(["a histopathological photo of a"])[0]
    words = ids[~hf.special_token_mask(ids[None])[0]]
    assert torch.allclose(m.prompt.ctx, hf.embed_tokens(words).float())
    mri = method(hf, clinical_template="mri-brain")
    assert mri.prompt.suffix == " in the brain."
    f = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.9, 0.1], [0.95, 0.05],
                                                    [-1.0, 0.2]]), dim=-1)
    assert len(prune_descriptions(f, 1.5)) == 4 and len(prune_descriptions(f, None)) == 5


def test_default_visual_prompt_is_fixed_zero_in_all_layers(hf):
    """Reference (derivative code, CLIP_Inplanted): zero tensors in every layer, never learned."""
    m = method(hf)
    vp = list(m.vision.prompts)
    assert len(vp) == len(hf.vision_blocks())
    assert all(torch.count_nonzero(p) == 0 and not p.requires_grad for p in vp)
    assert not any(k.startswith("vision") for k in m.learned_state_dict())
    b = batch(hf)
    with torch.no_grad():  # fixed zero tokens still re-weight attention
        assert not torch.allclose(m.prompted_image_features(b.images), hf.encode_image(b.images))
    loss, _ = m.loss(b)
    loss.backward()
    assert all(p.grad is None for p in vp)
    assert m.prompt.ctx.grad.abs().sum() > 0


def test_trainable_visual_prompt_option_really_trains(hf):
    m = method(hf, vision_trainable=True)
    vp = list(m.vision.prompts)
    assert vp and all(torch.count_nonzero(p) == 0 for p in vp)  # zero-vector soft prompt
    assert all(p.requires_grad for p in vp)
    names = set(m.learned_state_dict())
    assert any(k.startswith("vision.prompts") for k in names) and "prompt.ctx" in names
    loss, parts = m.loss(batch(hf))
    assert {"ce", "l1", "kl", "total"} <= set(parts)
    assert float(loss.detach()) == pytest.approx(parts["ce"] + 12.5 * parts["l1"] + 0.25 * parts["kl"], rel=1e-5)
    loss.backward()
    assert vp[0].grad is not None and vp[0].grad.abs().sum() > 0  # the public fork's bug: frozen
    assert m.prompt.ctx.grad.abs().sum() > 0
    for n, p in m.backbone.named_parameters():
        assert not p.requires_grad and p.grad is None, n
    # a few optimiser steps move both prompts
    ctx0 = m.prompt.ctx.detach().clone()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        m.loss(batch(hf))[0].backward()
        opt.step()
    assert all(torch.count_nonzero(p) > 0 for p in vp)
    assert not torch.allclose(m.prompt.ctx, ctx0)


def test_visual_prompt_changes_image_features(hf):
    m = method(hf, vision_init="random", vision_trainable=True)
    b = batch(hf)
    with torch.no_grad():
        plain = hf.encode_image(b.images)
        prompted = m.prompted_image_features(b.images)
    assert not torch.allclose(plain, prompted)


def test_ablations(hf):
    b = batch(hf)
    nod = method(hf, distill=False)
    _, p = nod.loss(b)
    assert set(p) == {"ce", "total"}
    nov = method(hf, vision_prompt=False)
    assert nov.vision is None
    assert not any(k.startswith("vision") for k in nov.learned_state_dict())
    with torch.no_grad():
        assert torch.allclose(nov.prompted_image_features(b.images), hf.encode_image(b.images))
    rnd = method(hf, vision_init="random")
    assert all(torch.count_nonzero(p) > 0 for p in rnd.vision.prompts)
    full = method(hf)
    torch.manual_seed(0)
    lf, pf = full.loss(b)
    assert float(lf.detach()) != pytest.approx(pf["ce"])
    with pytest.raises(Exception):
        method(hf, vision_init="ones")


def test_eval_novel(hf):
    m = method(hf)
    m.eval()
    with torch.no_grad():
        assert m(batch(hf)).shape == (3, 3)
        m.set_classes(ClassTexts(["mucus", "lymphocytes"], ["a photo of {}."]))
        assert m(batch(hf)).shape == (3, 2)


@pytest.mark.parametrize("backbone", ["tiny-hf-clip", "tiny-open-clip"])
def test_fit_cli(tmp_path, shared_data, backbone):
    names = sorted(p.name for p in CRC.iterdir() if p.is_dir())
    desc = tmp_path / "desc.json"
    desc.write_text(json.dumps({"meta": {}, "classes": {
        n: [f"{n} tissue with feature {i}." for i in range(3)] for n in names}}))
    out = tmp_path / "run"
    assert run_cli("fit", "--backbone", backbone, "--dataset", f"folder:{CRC}", "--method",
                   "biomed-dpt", "--shots", 1, "--out", out, "--quiet", "--set", "train.epochs=1",
                   "--set", f"texts.descriptions={desc}") == 0
    r = json.loads((out / "results.json").read_text())
    assert r["method"] == "biomed-dpt" and r["n_trainable_params"] > 0
    assert all(math.isfinite(h["loss"]) for h in r["train_info"]["history"])
