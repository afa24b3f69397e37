"""The train augmentation policy (``data.crop_scale``, ``data.flip``) and fresh augmented passes
(``data.fresh_views``): the policy reaches the train transform and the feature-cache key; a fresh
pass is a function of (image, policy, run seed, pass) only, two passes differ, a second method
reads the first one's passes from the cache, the engine trains epoch ``e`` on pass ``e``."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torchvision import transforms as T

from medadapt.backbones.transforms import set_train_policy, train_transform, with_policy
from medadapt.engine.features import FeatureCache
from medadapt.engine.train import Engine, Split
from medadapt.errors import UserError
from test_scale_fixtures import backbone, data_csv, env  # noqa: F401


def test_policy_reaches_the_transform():
    t = train_transform(32, [0.5] * 3, [0.5] * 3)
    assert with_policy(t, [0.08, 1.0], True) is t  # the default policy changes nothing
    main_py = with_policy(t, [0.5, 1.0], True)  # BiomedCoOp main.py: 0.5-1 + flip
    crop = [s for s in main_py.transforms if isinstance(s, T.RandomResizedCrop)][0]
    assert crop.scale == (0.5, 1.0) and crop.size == (32, 32)
    assert crop.interpolation == T.InterpolationMode.BICUBIC
    assert any(isinstance(s, T.RandomHorizontalFlip) for s in main_py.transforms)
    dassl = with_policy(t, [0.08, 1.0], False)  # Dassl prompt learners: no flip
    assert not any(isinstance(s, T.RandomHorizontalFlip) for s in dassl.transforms)
    assert [type(s) for s in dassl.transforms][-2:] == [T.ToTensor, T.Normalize]
    with pytest.raises(UserError, match="crop_scale"):
        with_policy(t, [0.9, 0.5], True)


def test_policy_changes_the_cache_key(env, data_csv):
    from medadapt.data.sources import load_dataset
    bb = copy.copy(backbone("tiny-hf-clip"))
    ds = load_dataset(f"csv:{data_csv}")
    cache = FeatureCache(enabled=False)
    before = cache.key(bb, ds, 0, fresh=(1, 0))
    set_train_policy(bb, [0.5, 1.0], False)
    assert cache.key(bb, ds, 0, fresh=(1, 0)) != before
    assert cache.key(bb, ds, 0) == cache.key(backbone("tiny-hf-clip"), ds, 0)  # eval unaffected


def _fresh(bb, ds, idx, cache, seed):
    return lambda k: cache.encode(bb, ds, idx, progress=False, fresh=(seed, k))[0]


def test_fresh_passes_differ_are_deterministic_and_leave_the_rng(env, data_csv):
    from medadapt.data.sources import load_dataset
    bb = backbone("tiny-hf-clip")
    ds = load_dataset(f"csv:{data_csv}")
    idx = ds.indices("train")
    off = FeatureCache(enabled=False)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    p0, p1 = _fresh(bb, ds, idx, off, 1)(0), _fresh(bb, ds, idx, off, 1)(1)
    assert torch.equal(torch.get_rng_state(), state)  # encoding mid-training changes no RNG
    assert not torch.allclose(p0, p1)  # two epochs, two different crops
    assert torch.equal(p0, _fresh(bb, ds, idx, off, 1)(0))  # same seed and pass: same features
    assert not torch.allclose(p0, _fresh(bb, ds, idx, off, 2)(0))  # another run seed: another pass
    # per image: the pass of an image does not depend on which other images are encoded with it
    assert torch.allclose(p0[3], _fresh(bb, ds, idx[3:5], off, 1)(0)[0], atol=1e-5)


def test_a_second_method_reads_the_passes_from_the_cache(env, data_csv, tmp_path):
    from medadapt.data.sources import load_dataset
    bb = copy.copy(backbone("tiny-hf-clip"))
    ds = load_dataset(f"csv:{data_csv}")
    idx = ds.indices("train")
    cache = FeatureCache(root=tmp_path / "features")
    first = _fresh(bb, ds, idx, cache, 1)(0)
    calls = []
    enc = bb.encode_image
    bb.encode_image = lambda x, **kw: (calls.append(len(x)), enc(x, **kw))[1]
    again = _fresh(bb, ds, idx, cache, 1)(0)
    assert calls == [] and torch.equal(first, again)
    _fresh(bb, ds, idx, cache, 1)(1)  # a pass not seen yet is encoded
    assert sum(calls) == len(idx)


def test_engine_trains_epoch_e_on_pass_e():
    n, d = 6, 4
    passes = {k: torch.full((n, d), float(k)) for k in range(10)}
    seen = []
    split = Split(None, list(range(n)), torch.zeros(n, dtype=torch.long), torch.zeros(n, d))
    split.fresh = lambda k: (seen.append(k), passes[k])[1]

    class _M:
        needs_images = False
    eng = Engine({"batch_size": 3, "drop_last": False}, seed=1)
    for e in range(3):
        feats = [b.features for b in eng.batches(_M(), split, shuffle=True, epoch=e, draw=e + 4)]
        assert torch.equal(torch.cat(feats), torch.full((n, d), float(e + 4)))
    assert seen == [4, 5, 6]
    # evaluation passes use the eval features
    assert torch.equal(torch.cat([b.features for b in eng.batches(_M(), split, False, train=False)]),
                       torch.zeros(n, d))
    assert split.n_views == 0 and torch.equal(split.augmented(2), passes[2])


def test_fit_with_fresh_views_and_policy_uses_the_cache(env, data_csv, tmp_path):
    """End to end: a cached-feature method with fresh_views and BiomedCoOp main.py's policy; the
    run's passes sit in the cache under the policy's key, and a second method reuses them."""
    from medadapt.cli import main
    from medadapt.data.sources import load_dataset
    common = ["--backbone", "tiny-hf-clip", "--dataset", f"csv:{data_csv}", "--shots", "2",
              "--quiet", "--set", "data.fresh_views=true", "--set", "data.crop_scale=[0.5,1.0]",
              "--set", "method.impl=biomedcoop", "--set", "data.augment_views=1"]
    assert main(["fit", "--method", "lp++", "--out", str(tmp_path / "a"), *common,
                 "--set", "method.epochs=5"]) == 0
    bb = copy.copy(backbone("tiny-hf-clip"))
    set_train_policy(bb, [0.5, 1.0], True)
    ds = load_dataset(f"csv:{data_csv}")
    key = FeatureCache().key(bb, ds, 0, fresh=(1, 0))
    path = env / "features" / f"{key}.safetensors"
    assert path.exists()
    stamp = path.stat().st_mtime_ns
    assert main(["fit", "--method", "linear-probe", "--out", str(tmp_path / "b"), *common]) == 0
    assert path.stat().st_mtime_ns == stamp  # read, not re-encoded
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert res["metrics"]["accuracy"] >= 0


def test_passes_encoded_together_equal_one_by_one_and_decode_once(env, data_csv, tmp_path):
    from medadapt.data.sources import load_dataset
    bb = backbone("tiny-hf-clip")
    ds = load_dataset(f"csv:{data_csv}")
    idx = ds.indices("train")[:6]
    cache = FeatureCache(root=tmp_path / "features")
    one = _fresh(bb, ds, idx, cache, 1)(2)  # pass 2 cached, passes 0, 1, 3 not yet
    loads = []
    load = ds.loader
    ds.loader = lambda r: (loads.append(r.id), load(r))[1]
    many = cache.encode_passes(bb, ds, idx, 1, [0, 1, 2, 3], progress=False)
    assert sorted(loads) == sorted(ds.records[i].id for i in idx)  # each image decoded once
    assert torch.equal(many[2], one)
    off = FeatureCache(enabled=False)
    for k in (0, 1, 3):
        assert torch.allclose(many[k], _fresh(bb, ds, idx, off, 1)(k), atol=1e-5)
    loads.clear()
    assert torch.equal(cache.encode_passes(bb, ds, idx, 1, [3], progress=False)[3], many[3])
    assert loads == []  # written once, read back
