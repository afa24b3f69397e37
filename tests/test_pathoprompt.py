"""PathoPrompt: each loss term against a direct transcription of the paper's equation, gradients,
a long run with the (bounded) PDS subtracted, the ablation switches, and `medadapt fit`."""
import json
import math

import pytest
import torch

from conftest import CRC, run_cli
from medadapt.data.texts import ClassTexts
from medadapt.methods import Batch, get_method
from medadapt.methods.pathoprompt import (TEMPLATE_PRESETS, TokenEnhancer, loss_align, loss_desc,
                                          loss_pds, pairwise_distance_sum, prototypes, psi_mean)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # random adaptor / prompt inits: every test sees the same ones


@pytest.fixture(scope="module")
def hf():
    from medadapt.backbones import load_backbone
    return load_backbone("tiny-hf-clip", device="cpu")


NAMES = ["adipose tissue", "debris", "tumor epithelium"]


def texts(names=NAMES, n=5):
    return ClassTexts(list(names), ["a photo of {}."],
                      {c: [f"{c} shows pattern number {i} with several cells." for i in range(n)]
                       for c in names})


def method(bb, **cfg):  # the text reading: cached features, fast
    return get_method("pathoprompt-text")(bb, texts(), cfg)


def batch(bb, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(labels=torch.arange(n) % len(NAMES), features=torch.randn(n, bb.embed_dim, generator=g))


# ------------------------------------------------------------------------------------------------
# Eq. 2: KL(P(y|z_d) || P(y|theta(t_p)))
def test_loss_desc_is_kl_desc_to_prompt():
    ld = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.3, 3.0]])
    lp = torch.tensor([[0.0, 1.0, 0.0], [1.0, -2.0, 0.0]])
    want = 0.0
    for a, b in zip(ld, lp):
        pd = [math.exp(x) / sum(math.exp(y) for y in a) for x in a.tolist()]
        pp = [math.exp(x) / sum(math.exp(y) for y in b) for x in b.tolist()]
        want += sum(p * math.log(p / q) for p, q in zip(pd, pp))
    want /= 2
    assert float(loss_desc(ld, lp)) == pytest.approx(want, rel=1e-5)
    # the direction matters: the reverse KL is a different number here
    rev = float(loss_desc(lp, ld))
    assert abs(rev - want) > 1e-3
    assert float(loss_desc(ld, ld)) == pytest.approx(0.0, abs=1e-7)


# Eq. 3: 1 - cos(psi(theta(gamma t_d)), theta^a(theta(t_p)))
def test_loss_align_is_cosine_distance():
    z = torch.tensor([[1.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    g = torch.tensor([[0.0, 3.0, 0.0], [2.0, 4.0, 4.0]])
    want = ((1 - 0.0) + (1 - 1.0)) / 2
    assert float(loss_align(z, g)) == pytest.approx(want, abs=1e-6)
    z2, g2 = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    assert float(loss_align(z2, g2)) == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)


def test_psi_mean():
    f = torch.tensor([[[2.0, 0.0], [0.0, 5.0]]])  # one class, s=2
    assert torch.allclose(psi_mean(f), torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)]]))


# Eq. 5-6: prototypes and pairwise distances in both modalities
def test_prototypes_and_pds_against_loops():
    feats = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [-1.0, -1.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    p, cls = prototypes(feats, labels, 4, normalize_features=False, normalize_prototypes=False)
    assert cls.tolist() == [0, 1, 2]  # class 3 has no sample
    assert torch.allclose(p, torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]]))
    want = 0.0
    for k in range(3):
        for j in range(k + 1, 3):
            want += math.dist(p[k].tolist(), p[j].tolist())
    assert float(pairwise_distance_sum(p, bound="none")) == pytest.approx(want, rel=1e-5)
    # both modalities are summed (Eq. 6)
    q = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert float(loss_pds(p, q, bound="none")) == pytest.approx(want + 1.0, rel=1e-5)
    # mean reduction divides by the number of pairs
    assert float(pairwise_distance_sum(p, bound="none", reduce="mean")) == pytest.approx(want / 3, rel=1e-5)
    # unit bound: features normalised before averaging, prototypes back on the sphere
    pu, _ = prototypes(feats, labels, 4)
    assert torch.allclose(pu.norm(dim=-1), torch.ones(3))
    assert torch.allclose(pu[0], torch.tensor([1.0, 0.0]))
    # margin bound caps each distance
    assert float(pairwise_distance_sum(p, bound="margin", margin=1.5)) == pytest.approx(4.5)


def test_pds_bounded_and_finite_at_equal_prototypes():
    big = torch.randn(20, 8) * 1e6
    labels = torch.arange(20) % 5
    p, _ = prototypes(big, labels, 5)  # unit bound
    assert float(pairwise_distance_sum(p)) <= 2.0 * 10 + 1e-4
    same = torch.ones(3, 4, requires_grad=True)
    v = pairwise_distance_sum(same, bound="none")
    v.backward()
    assert torch.isfinite(same.grad).all()


# Eq. 3's token-level enhancement: slots SOS / word positions / EOS, padding untouched
def test_token_enhancer_slots_and_transform(hf):
    ids = hf.tokenize(["debris", "a longer description of debris"])
    eos = hf.eos_positions(ids)
    te = TokenEnhancer(hf.context_length, hf.text_width)
    slot = te.slots(ids, eos)
    L = hf.context_length
    for r in range(2):
        e = int(eos[r])
        assert slot[r, 0] == 0 and slot[r, e] == L - 1
        assert slot[r, 1:e].tolist() == list(range(1, e))
        assert (slot[r, e + 1:] == -1).all()
    with torch.no_grad():
        te.scale.copy_(torch.arange(L).float()[:, None].expand(-1, hf.text_width) + 2)
        te.shift.fill_(0.5)
    emb = torch.randn(2, L, hf.text_width)
    out = te(emb, slot)
    e = int(eos[0])
    assert torch.allclose(out[0, 0], emb[0, 0] * 2 + 0.5)  # gamma^SOS
    assert torch.allclose(out[0, 1], emb[0, 1] * 3 + 0.5)  # gamma^1
    assert torch.allclose(out[0, e], emb[0, e] * (L - 1 + 2) + 0.5)  # gamma^EOS
    assert torch.equal(out[0, e + 1:], emb[0, e + 1:])  # padding untouched
    shared = TokenEnhancer(L, hf.text_width, mode="shared")
    s2 = shared.slots(ids, eos)
    assert set(s2[0].tolist()) == {0, -1}


# ------------------------------------------------------------------------------------------------
def test_gradients_reach_gamma_adaptors_prompt_only(hf):
    m = method(hf)
    loss, parts = m.loss(batch(hf))
    assert {"ce", "desc", "align", "pds", "total"} <= set(parts)
    loss.backward()
    for name in ("prompt.ctx", "token_enhancer.scale", "token_enhancer.shift",
                 "text_adaptor.up.weight", "image_adaptor.up.weight"):
        p = dict(m.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the adaptors' second layer starts at zero (identity adaptor): their first layer gets its
    # gradient once the second has moved
    torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1).step()
    m.zero_grad()
    m.loss(batch(hf))[0].backward()
    assert m.text_adaptor.down.weight.grad.abs().sum() > 0
    assert m.image_adaptor.down.weight.grad.abs().sum() > 0
    # gamma^SOS and gamma^EOS are learned too
    assert m.token_enhancer.scale.grad[0].abs().sum() > 0
    assert m.token_enhancer.scale.grad[-1].abs().sum() > 0
    for n, p in m.backbone.named_parameters():
        assert not p.requires_grad and p.grad is None, n
    learned = set(m.learned_state_dict())
    assert learned and all(not k.startswith("backbone.") for k in learned)


def test_total_is_eq8(hf):
    m = method(hf)
    torch.manual_seed(0)
    loss, parts = m.loss(batch(hf))
    want = parts["desc"] + parts["align"] + parts["ce"] - parts["pds"]
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_long_run_stays_finite_with_pds(hf):
    """300 SGD steps, PDS subtracted at full weight, no gradient clipping, a large lr: the loss stays
    finite and L_PDS never exceeds its bound."""
    m = method(hf, n_desc=1)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    b = batch(hf, n=9)
    m._bank = (b.features, b.labels)
    bound = m.pds_upper_bound()
    torch.manual_seed(0)
    for step in range(300):
        loss, parts = m.loss(b)
        assert torch.isfinite(loss), (step, parts)
        assert parts["pds"] <= bound + 1e-4
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() > -bound - 1e-3


def test_unbounded_pds_grows(hf):
    """Why the bound exists: with the literal Eq. 6 (pds_bound: none) subtracting L_PDS keeps
    pushing the adapted features apart; after 100 steps it is far beyond the unit bound."""
    m = method(hf, use_gsd=False, pds_bound="none", prototype_normalize=False, adaptor="linear")
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    b = batch(hf, n=9)
    bound = method(hf, use_gsd=False).pds_upper_bound()
    for _ in range(100):
        loss, parts = m.loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts["pds"] > 10 * bound


def test_ablation_switches(hf):
    b = batch(hf)
    full = method(hf)
    torch.manual_seed(1)
    _, p_full = full.loss(b)
    # w/o PDS: the same model without the subtracted term
    nopds = method(hf, use_pds=False)
    nopds.load_state_dict(full.state_dict())
    torch.manual_seed(1)
    l_nopds, p = nopds.loss(b)
    assert "pds" not in p
    assert float(l_nopds.detach()) == pytest.approx(p_full["total"] + p_full["pds"], rel=1e-5)
    # w/o GSD: no descriptions are encoded, no enhancement parameters
    nogsd = method(hf, use_gsd=False)
    l, p = nogsd.loss(b)
    assert "desc" not in p and "align" not in p and nogsd.token_enhancer is None
    assert float(l.detach()) == pytest.approx(p["ce"] - p["pds"], rel=1e-5)
    # sentence-level enhancement: scale/shift on the pooled embedding, no per-token gamma
    sent = method(hf, enhancement="sentence")
    assert sent.token_enhancer is None and sent.sentence_enhancer is not None
    l, p = sent.loss(b)
    l.backward()
    assert sent.sentence_enhancer.scale.grad.abs().sum() > 0
    assert method(hf, enhancement="shared").token_enhancer.scale.shape[0] == 1
    assert method(hf).token_enhancer.scale.shape[0] == hf.context_length
    # Table 3 templates change the coarse prompt (and its learnable context)
    inits = {k: method(hf, template_preset=k).prompt for k in TEMPLATE_PRESETS}
    assert {k: p.init_words for k, p in inits.items()} == {
        "photo": "a photo of a", "tissue": "a tissue of", "microscopic": "a microscopic view of",
        "slide": "a tissue sample slide of"}
    assert len({tuple(p.ctx.flatten().tolist()) for p in inits.values()}) == 4
    assert method(hf, template_preset="slide").prompt.n_ctx > method(hf).prompt.n_ctx
    # a frozen context gives the hand-crafted prompt
    assert not method(hf, learn_ctx=False).prompt.ctx.requires_grad
    with pytest.raises(Exception):
        method(hf, pds_bound="whatever")


def test_eval_and_novel_classes(hf):
    m = method(hf)
    m.eval()
    with torch.no_grad():
        a = m(batch(hf))
        assert a.shape == (6, 3)
        m.set_classes(ClassTexts(["mucus", "lymphocytes"], ["a photo of {}."]))
        assert m(batch(hf)).shape == (6, 2)


@pytest.mark.parametrize("backbone", ["tiny-hf-clip", "tiny-open-clip"])
def test_fit_cli(tmp_path, shared_data, backbone):
    names = sorted(p.name for p in CRC.iterdir() if p.is_dir())
    desc = tmp_path / "desc.json"
    desc.write_text(json.dumps({"meta": {}, "classes": {
        n: [f"{n} tissue with feature {i}." for i in range(3)] for n in names}}))
    out = tmp_path / "run"
    assert run_cli("fit", "--backbone", backbone, "--dataset", f"folder:{CRC}", "--method",
                   "pathoprompt", "--shots", 1, "--out", out, "--quiet", "--set", "train.epochs=2",
                   "--set", f"texts.descriptions={desc}", "--set", "method.n_desc=2") == 0
    r = json.loads((out / "results.json").read_text())
    assert r["method"] == "pathoprompt" and r["n_trainable_params"] > 0
    hist = r["train_info"]["history"]
    assert all(math.isfinite(h["loss"]) for h in hist)


# ------------------------------------------------------------------------------------------------
# the default reading: the same additions on a multi-modal deep-prompt base (pathoprompt)
def test_multimodal_base_prompts_both_encoders(hf):
    from medadapt.errors import UserError
    m = get_method("pathoprompt")(hf, texts(), {})
    assert m.needs_images and m.cfg["base"] == "multimodal"
    g = torch.Generator().manual_seed(0)
    b = Batch(labels=torch.arange(3), images=torch.randn(3, 3, hf.image_size, hf.image_size,
                                                         generator=g))
    with torch.no_grad():  # phi(x) and theta(t_p) are the PROMPTED encoders
        assert not torch.allclose(m.image_features(b), hf.encode_image(b.images))
    loss, parts = m.loss(b)
    assert float(loss.detach()) == pytest.approx(parts["desc"] + parts["align"] + parts["ce"]
                                                 - parts["pds"], rel=1e-5, abs=1e-5)
    loss.backward()
    named = dict(m.named_parameters())
    for name in ("mm.prompt.ctx", "mm.coupled.couplings.0.weight", "token_enhancer.scale",
                 "text_adaptor.up.weight", "image_adaptor.up.weight"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    for n, p in m.backbone.named_parameters():
        assert not p.requires_grad and p.grad is None, n
    torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1).step()
    m.eval()
    m2 = get_method("pathoprompt")(hf, texts(), {})
    m2.load_learned_state_dict(m.learned_state_dict())
    m2.eval()
    with torch.no_grad():
        assert m(b).shape == (3, 3)
        torch.testing.assert_close(m2(b), m(b))
    with pytest.raises(UserError, match="--method pathoprompt\\)"):
        method(hf, base="multimodal")
    with pytest.raises(UserError, match="--method pathoprompt-text"):
        get_method("pathoprompt")(hf, texts(), {"base": "text"})
