"""Synthetic data sets register, generate deterministically into the cache and load."""
import numpy as np
import pytest

from medadapt.data.fewshot import base_novel_split, sample_fewshot
from medadapt.data.sources import DATASETS, load_dataset
from medadapt.errors import UserError

SMALL = {"n_train": 3, "n_val": 1, "n_test": 2}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path))
    return tmp_path


def test_all_register_and_load(cache):
    import yaml
    from medadapt.synth.classes import package_dir
    want = {"synth-crc": 9, "synth-crc-b2n": 15, "synth-organs": 2, "synth-malignancy": 2}
    for name, k in want.items():
        ds = load_dataset(name, **SMALL)
        info = DATASETS.get(name)
        assert info.needs_root is False
        assert ds.num_classes == k and ds.classnames == info.classnames
        assert ds.has_splits()
        per = 4 if name == "synth-organs" else 1
        for split, n in (("train", 3), ("val", 1), ("test", 2)):
            assert len(ds.indices(split)) == n * k * per
        img = ds.load_image(0)
        assert img.mode == "RGB" and img.size == (64, 64)
        assert ds.meta["descriptions"] == info.descriptions
        assert len({r.id for r in ds.records}) == len(ds)
    assert list((cache / "synth").glob("*.npz"))
    b2n = load_dataset("synth-crc-b2n", **SMALL)
    base, novel = base_novel_split(b2n.classnames, b2n.meta["base_classes"])
    assert len(base) == 9 and len(novel) == 6
    organs = load_dataset("synth-organs", **SMALL)
    assert organs.domains() == ["breast", "colon", "lung", "stomach"]
    mal = load_dataset("synth-malignancy", **SMALL)
    h = yaml.safe_load((package_dir() / "synth" / "hierarchies" / mal.meta["hierarchy"]).read_text())
    owner = {c["name"]: set(c["classes"]) for c in h["concepts"]}
    for r in mal.records:
        assert r.concepts and all(mal.classnames[r.label] in owner[c] for c in r.concepts)


def test_generation_is_deterministic_and_cached(cache, tmp_path_factory, monkeypatch):
    a = load_dataset("synth-crc", **SMALL)
    files = list((cache / "synth").glob("synth-crc-*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    b = load_dataset("synth-crc", **SMALL)  # from the cache
    assert files[0].stat().st_mtime_ns == mtime
    other = tmp_path_factory.mktemp("other")
    monkeypatch.setenv("MEDADAPT_CACHE", str(other))
    c = load_dataset("synth-crc", **SMALL)  # regenerated elsewhere
    assert a.fingerprint == b.fingerprint == c.fingerprint
    for i in (0, len(a) - 1):
        assert np.array_equal(np.asarray(a.load_image(i)), np.asarray(c.load_image(i)))
    d = load_dataset("synth-crc", seed=1, **SMALL)
    assert d.fingerprint != a.fingerprint
    # few-shot sampling works on it
    fs = sample_fewshot(a, 2, seed=0)
    assert all(len(v) == 2 for v in fs["train"].values())


def test_options_are_validated(cache):
    with pytest.raises(UserError):
        load_dataset("synth-crc", colour="red")
    with pytest.raises(UserError):
        load_dataset("synth-crc", size=4)
    ds = load_dataset("synth-crc", size=32, n_train=1, n_val=0, n_test=1)
    assert ds.load_image(0).size == (32, 32)
