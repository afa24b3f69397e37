"""Mixed precision on CPU (bf16 autocast), so dtype bugs show without a GPU: the engine's
``train.amp`` / ``train.amp_dtype``, a training step of every prompt method under bf16 autocast on
each backbone family, ``medadapt fit`` end to end with AMP bf16, feature extraction with
``data.precision=bf16``; and the open_clip sequence-first layout (a speed fix) computing exactly
what the batch-first one did."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medadapt.data.texts import TEMPLATES, ClassTexts
from medadapt.engine.train import Engine
from medadapt.errors import UserError
from medadapt.methods import Batch, get_method

PROMPT_METHODS = ["coop", "cocoop", "kgcoop", "prograd", "maple", "promptsrc", "coprompt",
                  "biomedcoop", "biomed-dpt", "pathoprompt", "pathoprompt-text"]
CLASSES = {"adipose": (230, 200, 210), "lymphocytes": (60, 40, 140), "tumor": (150, 60, 120)}
DESCRIPTIONS = {c: [f"{c} tissue", f"cells of {c}", f"a slide with {c}"] for c in CLASSES}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("amp_world")
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 1), ("test", 2)):
        for c, col in CLASSES.items():
            d = root / "data" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                a = np.clip(np.array(col)[None, None] + rng.normal(0, 20, (40, 40, 3)), 0, 255)
                Image.fromarray(a.astype("uint8")).save(d / f"{i}.png")
    (root / "desc.json").write_text(json.dumps({"meta": {"source": "test"}, "classes": DESCRIPTIONS}))
    return root


_BB: dict = {}


def backbone(name):
    if name not in _BB:
        from medadapt.backbones import load_backbone
        _BB[name] = load_backbone(name)
    return _BB[name]


def batch_for(bb, cls, world):
    px = torch.stack([bb.preprocess(Image.open(world / "data" / "train" / c / f"{i}.png").convert("RGB"))
                      for c in CLASSES for i in range(2)])
    y = torch.arange(len(CLASSES)).repeat_interleave(2)
    if cls.needs_images:
        return Batch(labels=y, images=px, index=torch.arange(len(y)))
    with torch.no_grad():
        return Batch(labels=y, features=bb.encode_image(px, normalize=False), index=torch.arange(len(y)))


def test_amp_dtype_table():
    e = lambda dev, **c: Engine({"checkpoint": False, **c}, device=dev)  # noqa: E731
    assert e("cpu").amp_dtype() is None  # auto: fp32 off CUDA (the former behaviour)
    assert e("cuda").amp_dtype() is torch.float16  # auto: fp16 on CUDA (device not touched)
    assert e("cpu", amp_dtype="bf16").amp_dtype() is torch.bfloat16
    assert e("cuda", amp_dtype="bf16").amp_dtype() is torch.bfloat16
    assert e("cpu", amp_dtype="fp16").amp_dtype() is torch.float16
    assert e("cuda", amp=False, amp_dtype="bf16").amp_dtype() is None
    with pytest.raises(UserError, match="train.amp_dtype must be one of auto, fp16, bf16"):
        e("cpu", amp_dtype="fp8").amp_dtype()


def test_amp_dtype_is_a_checked_setting():
    from medadapt.engine.runner import resolve
    cfg = resolve({"backbone": "x", "dataset": "y", "method": {"name": "coop"},
                   "train": {"amp_dtype": "bf16"}})
    assert cfg["train"]["amp_dtype"] == "bf16" and cfg["train"]["amp"] is True
    with pytest.raises(UserError, match="train.amp_dtype must be one of"):
        resolve({"backbone": "x", "dataset": "y", "method": {"name": "coop"},
                 "train": {"amp_dtype": "half"}})


# every prompt method on the two CLIP-text families; the BERT text tower (BiomedCLIP's kind) with
# the text-only, the deep multi-modal and the description-teacher kinds
STEP_CASES = [(m, f) for m in PROMPT_METHODS for f in ("tiny-open-clip-bpe", "tiny-hf-clip")] + \
    [(m, "tiny-open-clip") for m in ("coop", "maple", "biomed-dpt", "biomedcoop")]


@pytest.mark.parametrize("method,family", STEP_CASES)
def test_prompt_method_step_under_bf16_autocast(world, method, family):
    """One loss + backward under CPU bf16 autocast: finite, gradients reach the method's own
    parameters (in their own fp32 dtype), and the loss is close to the fp32 one."""
    bb = backbone(family)
    cls = get_method(method)
    texts = ClassTexts(list(CLASSES), TEMPLATES["histopathology"], dict(DESCRIPTIONS))
    batch = batch_for(bb, cls, world)
    losses = {}
    for amp in (False, True):
        torch.manual_seed(0)
        m = cls(bb, texts, {})
        m.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss, _ = m.loss(batch)
        loss.backward()
        own = [p for p in m.parameters() if p.requires_grad]
        assert torch.isfinite(loss), (method, family, amp)
        assert all(p.dtype == torch.float32 for p in own)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in own)
        losses[amp] = float(loss.detach())
        m.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            assert torch.isfinite(m(batch).float()).all()
    assert abs(losses[True] - losses[False]) <= 0.05 * max(1.0, abs(losses[False])), losses


@pytest.mark.parametrize("method,dtype", [("coop", "bf16"), ("clip-adapter", "bf16"),
                                          ("tip-adapter-f", "bf16"), ("clip-lora", "bf16"),
                                          ("maple", "bf16"), ("coop", "fp16")])
def test_fit_end_to_end_with_amp(world, method, dtype, tmp_path, monkeypatch):
    """``medadapt fit`` with ``train.amp_dtype=bf16`` and ``data.precision=bf16`` on CPU: the
    training steps run under bf16 autocast (seen from inside the loss) and the run finishes;
    fp16 (with gradient scaling) too."""
    from medadapt.cli import main
    from medadapt.engine import train as T
    seen = []
    orig = T.Engine.train

    def spy(eng, m, split, val=None, **kw):
        inner = m.loss

        def loss(batch):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return inner(batch)
        m.loss = loss
        try:
            return orig(eng, m, split, val, **kw)
        finally:
            del m.loss
    monkeypatch.setattr(T.Engine, "train", spy)
    out = tmp_path / "run"
    extra = {"clip-lora": ["--set", "method.n_iters_per_shot=1"],
             "tip-adapter-f": ["--set", "method.search_step=[3,3]"]}.get(method, [])
    rc = main(["fit", "--backbone", "tiny-open-clip-bpe", "--dataset", f"folder:{world / 'data'}",
               "--method", method, "--shots", "2", "--out", str(out), "--quiet",
               "--set", "train.epochs=1", "--set", f"train.amp_dtype={dtype}",
               "--set", f"data.precision={dtype}", "--set", "data.augment_views=1",
               "--set", "train.checkpoint=false", *extra])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert np.isfinite(res["metrics"]["accuracy"])
    want = torch.bfloat16 if dtype == "bf16" else torch.float16
    assert seen and all(on and dt is want for on, dt in seen)


def test_feature_extraction_bf16(world, tmp_path):
    """``data.precision=bf16``: fp32 features of the bf16 forward, close to the fp32 ones, cached
    apart; ``data.batch_size`` null takes the device's default."""
    from medadapt.data.sources import load_dataset
    from medadapt.engine.features import DEFAULT_BATCH, FeatureCache, default_batch_size
    bb = backbone("tiny-open-clip-bpe")
    ds = load_dataset(f"folder:{world / 'data'}")
    idx = list(range(len(ds)))
    f32, _ = FeatureCache(tmp_path, precision="fp32").encode(bb, ds, idx, progress=False)
    bf, _ = FeatureCache(tmp_path, precision="bf16").encode(bb, ds, idx, batch_size=4, progress=False)
    assert bf.dtype == torch.float32 and torch.isfinite(bf).all()
    assert not torch.equal(bf, f32)  # the bf16 forward really ran
    cos = torch.nn.functional.cosine_similarity(bf, f32, dim=-1)
    assert cos.min() > 0.99, cos
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    assert default_batch_size("cpu") == DEFAULT_BATCH["cpu"] == 8
    assert default_batch_size(torch.device("cuda", 0)) == DEFAULT_BATCH["cuda"]
    # a small model on a CPU keeps a large batch (its per-batch overhead dominates); on CUDA the
    # model's size does not matter
    from medadapt.engine.features import SMALL_MODEL, SMALL_MODEL_CPU_BATCH
    assert sum(p.numel() for p in bb.parameters()) < SMALL_MODEL
    assert default_batch_size("cpu", bb) == SMALL_MODEL_CPU_BATCH == 64
    assert default_batch_size("cuda", bb) == DEFAULT_BATCH["cuda"]


def test_open_clip_sequence_first_is_the_same_math():
    """The open_clip text stack now runs sequence-first (OpenAI CLIP's layout) to avoid batched
    bmm projections in prompt learning; features and context gradients equal the batch-first
    layout's to 1e-6."""
    bb = backbone("tiny-open-clip-bpe")
    tr = bb.model.transformer
    assert tr.batch_first is False and all(not b.attn.batch_first for b in tr.resblocks)
    texts = ClassTexts(list(CLASSES), ["a photo of {}."])
    torch.manual_seed(0)
    m = get_method("maple")(bb, texts, {})  # deep text prompts: the hooks see [B, L, D] either way
    out = {}
    try:
        for seq_first in (True, False):
            tr.batch_first = not seq_first
            for b in tr.resblocks:
                b.attn.batch_first = not seq_first
            m.zero_grad()
            f = m.mm.text_features(bb)
            f.float().square().sum().backward()
            deep = m.mm.coupled.text.prompts[0].grad
            assert deep is not None and deep.abs().sum() > 0  # the hook at layer 1 acted
            out[seq_first] = (f.detach().clone(), m.mm.prompt.ctx.grad.clone(), deep.clone())
    finally:
        tr.batch_first = False
        for b in tr.resblocks:
            b.attn.batch_first = False
    assert (out[True][0] - out[False][0]).abs().max() <= 1e-6
    assert (out[True][1] - out[False][1]).abs().max() <= 1e-6
    assert (out[True][2] - out[False][2]).abs().max() <= 1e-6
