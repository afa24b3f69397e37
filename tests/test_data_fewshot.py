"""Few-shot protocol: seeded K-shot sampling identical on every machine, fewshot.json round trip,
a validation set that never comes from test, base-to-novel splits."""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from medadapt.data.dataset import DataSet, Record
from medadapt.data.fewshot import (base_novel_split, fraction_subset, ids_to_indices,
                                   load_fewshot, sample_fewshot, save_fewshot)
from medadapt.data.sources import load_dataset
from medadapt.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = SHARED / "crc-val-he-7k-sample"
BCCD = SHARED / "bccd"


@pytest.fixture(scope="module")
def bccd():
    return load_dataset(f"bccd-cells:{BCCD}")


@pytest.fixture(scope="module")
def crc():
    return load_dataset(f"folder:{SAMPLE}")


def _ids(fs: dict, part: str = "train") -> list[str]:
    return [i for c in sorted(fs[part]) for i in fs[part][c]]


def test_same_seed_same_ids_different_seed_different(bccd):
    a = sample_fewshot(bccd, shots=8, seed=1)
    b = sample_fewshot(bccd, shots=8, seed=1)
    c = sample_fewshot(bccd, shots=8, seed=2)
    assert a == b
    assert _ids(a) != _ids(c)
    assert all(len(v) == 8 for v in a["train"].values())
    assert a["seed"] == 1 and a["shots"] == 8


def test_sampling_does_not_depend_on_listing_order(bccd):
    shuffled = list(bccd.records)
    random.Random(0).shuffle(shuffled)
    other = DataSet(name=bccd.name, classnames=bccd.classnames, records=shuffled,
                    loader=bccd.loader, fingerprint=bccd.fingerprint)
    for seed in (1, 2, 3):
        assert sample_fewshot(other, 4, seed) == sample_fewshot(bccd, 4, seed)


def test_golden_ids_for_a_seed(bccd):
    """Pinned ids: a change in the sampling algorithm, in NumPy's generator or in the BCCD record
    ids would silently change every published few-shot split; this test makes it loud."""
    fs = sample_fewshot(bccd, shots=4, seed=1)
    assert fs["train"] == {
        "red blood cell": ["BloodImage_00317/004", "BloodImage_00038/002",
                           "BloodImage_00273/011", "BloodImage_00339/012"],
        "white blood cell": ["BloodImage_00361/014", "BloodImage_00124/009",
                             "BloodImage_00100/015", "BloodImage_00239/011"],
        "platelet": ["BloodImage_00403/017", "BloodImage_00150/001",
                     "BloodImage_00266/011", "BloodImage_00273/013"],
    }
    assert fs["val"]["platelet"] == ["BloodImage_00014/015", "BloodImage_00222/012",
                                     "BloodImage_00410/014", "BloodImage_00236/006"]


def test_stratified_split_is_pinned(crc):
    train = sorted(r.id for r in crc.records if r.split == "train" and r.id.startswith("TUM/"))
    assert train == ["TUM/TUM-TCGA-GALLTCWV.png", "TUM/TUM-TCGA-NHQGDFVF.png"]


def test_shots_come_from_train_and_val_never_from_test(bccd):
    fs = sample_fewshot(bccd, shots=16, seed=5)
    index = bccd.id_index()
    for name, ids in fs["train"].items():
        assert all(bccd.records[index[i]].split == "train" for i in ids)
        assert all(bccd.classnames[bccd.records[index[i]].label] == name for i in ids)
    for name, ids in fs["val"].items():
        assert len(ids) == 16
        assert all(bccd.records[index[i]].split == "val" for i in ids)


def test_without_a_val_split_val_comes_from_train_leftovers(crc):
    no_val = DataSet(name="x", classnames=crc.classnames,
                     records=[replace(r, split="train" if r.split == "val" else r.split)
                              for r in crc.records],
                     loader=crc.loader)
    fs = sample_fewshot(no_val, shots=2, seed=1)
    index = no_val.id_index()
    for name in no_val.classnames:
        tr, va = fs["train"][name], fs["val"][name]
        assert len(tr) == 2 and va and not set(tr) & set(va)
        assert all(no_val.records[index[i]].split == "train" for i in tr + va)


def test_fewer_than_k_images(crc):
    with pytest.raises(UserError) as e:
        sample_fewshot(crc, shots=3, seed=1)  # 2 training images per class
    msg = str(e.value)
    assert "\n" not in msg and "only 2" in msg and "--allow-fewer" in msg
    fs = sample_fewshot(crc, shots=3, seed=1, allow_fewer=True)
    assert all(len(v) == 2 for v in fs["train"].values())


def test_fewshot_json_round_trip(tmp_path, bccd):
    fs = sample_fewshot(bccd, shots=4, seed=7)
    save_fewshot(tmp_path / "fewshot.json", fs)
    back = load_fewshot(tmp_path / "fewshot.json")
    assert back == fs
    idx = ids_to_indices(bccd, back["train"])
    assert sorted(bccd.records[i].id for i in idx) == sorted(_ids(fs, "train"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError):
        load_fewshot(tmp_path / "bad.json")
    with pytest.raises(UserError):
        ids_to_indices(bccd, {"platelet": ["BloodImage_99999/000"]})


def test_fraction_subset_is_stratified_and_seeded(bccd):
    a = fraction_subset(bccd, 0.05, seed=1)
    assert a == fraction_subset(bccd, 0.05, seed=1) != fraction_subset(bccd, 0.05, seed=2)
    n_train = {c: len(bccd.indices("train", [i])) for i, c in enumerate(bccd.classnames)}
    for c, ids in a["train"].items():
        assert len(ids) == -(-n_train[c] * 5 // 100)
    with pytest.raises(UserError):
        fraction_subset(bccd, 0.0, seed=1)


def test_base_to_novel_default_and_explicit():
    names = ["adipose tissue", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
             "normal colon mucosa", "cancer-associated stroma",
             "colorectal adenocarcinoma epithelium"]
    assert base_novel_split(names) == ([0, 1, 2, 3, 4], [5, 6, 7, 8])
    assert base_novel_split(names[:8]) == ([0, 1, 2, 3], [4, 5, 6, 7])
    b, n = base_novel_split(names, base=["Debris", "mucus"])
    assert b == [2, 4] and n == [0, 1, 3, 5, 6, 7, 8]
    b, n = base_novel_split(names, base=["debris"], novel=["mucus", "background"])
    assert (b, n) == ([2], [4, 1])
    with pytest.raises(UserError) as e:
        base_novel_split(names, base=["tumour"])
    assert "tumour" in str(e.value)
    with pytest.raises(UserError):
        base_novel_split(names, base=["debris"], novel=["debris"])


def test_sampling_within_a_domain():
    recs = [Record(id=f"{d}/{i}", label=i % 2, split="train", domain=d)
            for d in ("Colon", "Lung") for i in range(8)]
    ds = DataSet(name="x", classnames=["benign tissue", "malignant tissue"], records=recs,
                 loader=lambda r: None)
    fs = sample_fewshot(ds, shots=2, seed=1, domain="Lung")
    assert all(i.startswith("Lung/") for i in _ids(fs) + _ids(fs, "val"))
