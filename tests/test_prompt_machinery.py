"""Unit tests of the shared prompt machinery (``medadapt.methods._prompt``) on every backbone
family: context positions, phrase init, embeddings path == ids path, deep-prompt hooks acting only
at the hooked layers, coupling, Gaussian aggregation, description selection."""
from __future__ import annotations

import pytest
import torch

from medadapt.methods._prompt import (CoupledPrompts, GaussianPromptAggregator, PromptLearner,
                                      TextDeepPrompts, VisionDeepPrompts, encode_prompted_text,
                                      gaussian_weights, scaled_depth, vision_prompt_hooks)

FAMILIES = ["tiny-hf-clip", "tiny-open-clip", "tiny-open-clip-bpe"]
NAMES = ["adipose tissue", "lymphocytes", "tumor"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("medadapt_cache")


@pytest.fixture(scope="module", params=FAMILIES)
def bb(request, cache_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDADAPT_CACHE", str(cache_dir))
    from medadapt.backbones import load_backbone
    torch.manual_seed(0)
    b = load_backbone(request.param)
    yield b
    mp.undo()


def _word_ids(bb, text):
    ids = bb.tokenize([text])[0]
    return ids[~bb.special_token_mask(ids[None])[0]]


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_context_positions(bb, position):
    n = 4
    pl = PromptLearner(bb, NAMES, n_ctx=n, position=position)
    ph = int(_word_ids(bb, "X")[0])
    assert pl.positions.shape == (len(NAMES), n)
    first_word = 1  # every family starts with one start token ([CLS] / <start_of_text>)
    for c, name in enumerate(NAMES):
        row, pos = pl.ids[c], pl.positions[c].tolist()
        assert all(int(row[p]) == ph for p in pos)
        name_ids = _word_ids(bb, name).tolist()
        k = len(name_ids)
        if position == "end":
            assert pos == list(range(first_word, first_word + n))
            assert row[first_word + n:first_word + n + k].tolist() == name_ids
        elif position == "front":
            assert row[first_word:first_word + k].tolist() == name_ids
            assert pos == list(range(first_word + k, first_word + k + n))
        else:
            h = n // 2
            assert pos[:h] == list(range(first_word, first_word + h))
            assert row[first_word + h:first_word + h + k].tolist() == name_ids
            assert pos[h:] == list(range(first_word + h + k, first_word + k + n))
        # the embeddings carry the context exactly at those positions and nowhere else
        emb = pl.embeddings()
        base = bb.embed_tokens(pl.ids).float()
        other = torch.ones(emb.shape[1], dtype=torch.bool)
        other[pos] = False
        assert torch.equal(emb[c, pos], pl.ctx.detach())
        assert torch.equal(emb[c, other], base[c, other])


def test_phrase_init_equals_phrase_embeddings(bb):
    phrase = "a histopathology image of a"
    pl = PromptLearner(bb, NAMES, ctx_init=phrase)
    words = _word_ids(bb, phrase)
    assert pl.n_ctx == len(words)
    assert torch.equal(pl.ctx.detach(), bb.embed_tokens(words).float())
    csc = PromptLearner(bb, NAMES, ctx_init=phrase, csc=True)
    assert csc.ctx.shape == (len(NAMES), len(words), bb.text_width)
    assert torch.equal(csc.ctx.detach()[1], bb.embed_tokens(words).float())


@pytest.mark.parametrize("n_learned", [None, 2])
def test_embeddings_path_equals_ids_path(bb, n_learned):
    """With the context equal to the template's own tokens, the prompted text features equal the
    plain text features of the written prompt (also when only part of the phrase is learned)."""
    phrase = "a photo of a"
    pl = PromptLearner(bb, NAMES, ctx_init=phrase, n_learned=n_learned)
    if n_learned:
        assert pl.n_learned == 2 and pl.learned_positions.shape == (len(NAMES), 2)
    with torch.no_grad():
        got = encode_prompted_text(bb, pl)
        want = bb.encode_text(bb.tokenize([f"{phrase} {n}." for n in NAMES]))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _block_outputs(bb, tower, run):
    outs = {}
    handles = [blk.register_forward_hook(
        lambda m, a, o, i=i: outs.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach().clone()))
        for i, blk in enumerate(bb.blocks(tower))]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return outs


def test_text_deep_prompt_changes_only_hooked_layer(bb):
    """A text prompt at layer 1 leaves block 0 untouched and replaces exactly the context slots of
    block 1's input."""
    pl = PromptLearner(bb, NAMES, n_ctx=3)
    deep = TextDeepPrompts(depth=2, n_ctx=3, width=bb.text_width)
    ids, emb = pl()
    plain = _block_outputs(bb, "text", lambda: bb.encode_text(ids, embeddings=emb))
    seen = {}

    def capture(h):
        seen["h"] = h.detach().clone()
        return h
    with bb.layer_hooks(deep.hooks(pl.positions)):
        handle = bb.add_layer_hook("text", 1, capture)  # runs after the prompt hook
        try:
            hooked = _block_outputs(bb, "text", lambda: bb.encode_text(ids, embeddings=emb))
        finally:
            handle.remove()
    assert torch.equal(plain[0], hooked[0])
    assert not torch.allclose(plain[1], hooked[1])
    h = seen["h"]
    for c in range(len(NAMES)):
        pos = pl.positions[c]
        assert torch.equal(h[c, pos], deep.prompts[0].detach().to(h.dtype))
    # outside the context slots the input of block 1 is block 0's output
    p0 = plain[0] if plain[0].shape[0] == len(NAMES) else plain[0].transpose(0, 1)
    mask = torch.ones(h.shape[:2], dtype=torch.bool)
    mask.scatter_(1, pl.positions, False)
    torch.testing.assert_close(h[mask], p0[mask])


def test_vision_deep_prompts_append_then_replace(bb):
    torch.manual_seed(0)
    x = torch.randn(2, 3, bb.image_size, bb.image_size)
    n_layers = len(bb.vision_blocks())
    vp = VisionDeepPrompts(depth=n_layers, n_tokens=2, width=bb.vision_width)
    seen = {}

    def cap(i):
        def fn(h):
            seen[i] = h.detach().clone()
            return h
        return fn
    with torch.no_grad():
        plain = bb.encode_image(x)
        plain_in = {}
        hs = [bb.add_layer_hook("vision", i, lambda h, i=i: plain_in.__setitem__(i, h.clone()) or h)
              for i in range(n_layers)]
        bb.encode_image(x)
        for h in hs:
            h.remove()
        with bb.layer_hooks(vp.hooks()):
            hs = [bb.add_layer_hook("vision", i, cap(i)) for i in range(n_layers)]
            try:
                prompted = bb.encode_image(x)
            finally:
                for h in hs:
                    h.remove()
    L = plain_in[0].shape[1]
    assert seen[0].shape[1] == L + 2
    torch.testing.assert_close(seen[0][:, :L], plain_in[0])  # layer 0: patch tokens untouched
    # layer 0: appended before the pre-LayerNorm (MaPLe), so block 0 sees them normalised
    # (the norm is per token); deeper layers: replaced verbatim
    with torch.no_grad():
        first = bb.vision_input_module()(vp.prompts[0].detach())
    torch.testing.assert_close(seen[0][:, -2:], first.expand(2, -1, -1))
    for i in range(1, n_layers):
        assert torch.equal(seen[i][:, -2:], vp.prompts[i].detach().expand(2, -1, -1))
    assert not torch.allclose(plain, prompted)
    # the shared helper gives the same hooks
    with torch.no_grad(), bb.layer_hooks(vision_prompt_hooks(list(vp.prompts))):
        again = bb.encode_image(x)
    torch.testing.assert_close(again, prompted)


def test_zero_init_vision_prompts(bb):
    vp = VisionDeepPrompts(depth=1, n_tokens=3, width=bb.vision_width, init="zeros")
    assert all(float(p.detach().abs().sum()) == 0 for p in vp.prompts)


def test_coupling_sends_vision_gradients_to_text_prompts(bb):
    pl = PromptLearner(bb, NAMES, ctx_init="a photo of a", n_learned=2)
    cp = CoupledPrompts(2, 2, bb.text_width, bb.vision_width)
    x = torch.randn(2, 3, bb.image_size, bb.image_size)
    with bb.layer_hooks(cp.vision_hooks(pl.ctx)):
        bb.encode_image(x).sum().backward()
    assert pl.ctx.grad is not None and float(pl.ctx.grad.abs().sum()) > 0
    assert cp.text.prompts[0].grad is not None and float(cp.text.prompts[0].grad.abs().sum()) > 0
    assert all(f.weight.grad is not None for f in cp.couplings)
    assert not any(p.grad is not None for p in bb.parameters())


def test_scaled_depth():
    assert scaled_depth(9, 12) == 9
    assert scaled_depth(9, 24) == 18
    assert scaled_depth(9, 2) == 2
    assert scaled_depth(1, 2) == 1
    assert scaled_depth(12, 6) == 6


def test_gaussian_aggregation():
    w = gaussian_weights(20, 15, 1)
    assert abs(sum(w) - 1) < 1e-9 and max(range(20), key=lambda i: w[i]) == 14
    m = torch.nn.Linear(2, 1, bias=False)
    agg = GaussianPromptAggregator(3, 2, 1)
    vals = [1.0, 2.0, 3.0]
    for e, v in enumerate(vals, start=1):
        with torch.no_grad():
            m.weight.fill_(v)
        agg.add(e, m)
    agg.add(3, m)  # an epoch is counted once
    agg.apply(m)
    ws = gaussian_weights(3, 2, 1)
    expect = sum(wi * v for wi, v in zip(ws, vals))
    torch.testing.assert_close(m.weight.detach(), torch.full((1, 2), expect))


def test_description_selection_drops_outliers():
    from medadapt.methods.biomedcoop import select_descriptions
    s = torch.tensor([1.0, 1.1, 0.9, 1.05, 0.95, 9.0])
    mask = select_descriptions(s, 1.5)
    assert mask.tolist() == [True, True, True, True, True, False]
    assert select_descriptions(torch.ones(4), 1.5).all()  # MAD = 0: keep everything
