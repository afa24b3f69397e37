"""The ``dassl`` few-shot sampler against a transcription of Dassl's ``generate_fewshot_dataset``
(written here from its behaviour: global ``random`` after ``random.seed``, ``random.sample`` per
label group, groups in order of first appearance), on BiomedCoOp split files when the shared data
holds them and always on a hand-made one whose labels first appear out of order; the validation
draw from the same stream (``min(K, 4)``), the base-to-novel ``all`` draw, BiomedCoOp's
``main.py`` task order under ``sample_seed``, ``val_shots`` for medadapt's sampler, and the run
folder recording ``sample_seed``."""
from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from medadapt.data.dataset import DataSet, Record
from medadapt.data.fewshot import (base_novel_split, dassl_fewshot, dassl_task_order,
                                   fewshot_indices, sample_fewshot)
from medadapt.errors import UserError
from test_scale_fixtures import env  # noqa: F401

SPLITS = Path("/work/shared/data/biomedcoop-splits")


# --- a transcription of the reference ------------------------------------------------------------
class _Datum:
    def __init__(self, impath, label):
        self.impath, self.label = impath, label


def _by_label(items):
    out = defaultdict(list)
    for it in items:
        out[it.label].append(it)
    return out


def _generate(items, num_shots):
    """Dassl DatasetBase.generate_fewshot_dataset(items, num_shots=..., repeat=False)."""
    if num_shots < 1:
        return items
    out = []
    for _, group in _by_label(items).items():
        out.extend(random.sample(group, num_shots) if len(group) >= num_shots else group)
    return out


def _reference(split: dict, shots: int, seed: int, subsample: str = "all"):
    """BiomedCoOp datasets/*.py __init__: set_random_seed(seed), train draw, val draw with
    min(shots, 4), then subsample_classes (first ceil(n/2) sorted labels = base)."""
    random.seed(seed)
    train = [_Datum(p, y) for p, y, _ in split["train"]]
    val = [_Datum(p, y) for p, y, _ in split["val"]]
    train = _generate(train, shots)
    val = _generate(val, min(shots, 4))
    if subsample == "base":
        labels = sorted({it.label for it in train})
        keep = set(labels[:math.ceil(len(labels) / 2)])
        train = [it for it in train if it.label in keep]
        val = [it for it in val if it.label in keep]
    return [it.impath for it in train], [it.impath for it in val]


# --- data sets ---------------------------------------------------------------------------------
def _dataset(split: dict, name="split") -> DataSet:
    names: dict[int, str] = {}
    records = []
    for part in ("train", "val", "test"):
        for rel, y, c in split.get(part, []):
            names.setdefault(y, c)
            records.append(Record(id=rel, label=y, split=part))
    return DataSet(name=name, classnames=[names[i] for i in range(len(names))], records=records,
                   loader=lambda r: Image.new("RGB", (4, 4)), fingerprint=name)


def _hand_split(seed=0) -> dict:
    """Four classes, unequal sizes, items interleaved with label 2 appearing first."""
    rng = random.Random(seed)
    out = {}
    for part, n in (("train", 30), ("val", 12), ("test", 4)):
        rows = [[f"{part}/c{y}/{i}.png", y, f"class {y}"] for y in (2, 0, 3, 1)
                for i in range(n + 3 * y)]
        head, tail = rows[:1], rows[1:]
        rng.shuffle(tail)
        out[part] = head + tail
    return out


def _splits():
    out = [("hand", _hand_split())]
    for folder in ("BUSI", "BTMRI", "KneeXray"):
        p = SPLITS / f"split_{folder}.json"
        if p.exists():
            out.append((folder, json.loads(p.read_text())))
    return out


@pytest.fixture(scope="module", params=_splits(), ids=lambda s: s[0])
def split(request):
    name, sp = request.param
    return sp, _dataset(sp, name)


# --- tests -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
def test_dassl_sampler_is_dassl_image_for_image(split, shots):
    sp, ds = split
    for seed in (1, 2, 3):
        want_train, want_val = _reference(sp, shots, seed)
        fs = dassl_fewshot(ds, shots, seed, val_shots=4)
        assert fs["train_order"] == want_train
        assert fs["val_order"] == want_val
        got = [ds.records[i].id for i in fewshot_indices(ds, fs, "train")]
        assert got == want_train  # the order survives into the run
        assert fs["sampler"] == "dassl"


def test_dassl_groups_in_first_appearance_order():
    sp = _hand_split()
    ds = _dataset(sp)
    fs = dassl_fewshot(ds, 2, 1)
    labels = [ds.records[ds.id_index()[i]].label for i in fs["train_order"]]
    first = list(dict.fromkeys(y for _, y, _ in sp["train"]))  # first appearance in the file
    assert first[0] == 2 and first != sorted(first)
    assert labels == [y for y in first for _ in range(2)]
    # without val_shots the validation set takes K per class (medadapt's rule, no cap)
    assert len(fs["val_order"]) == 8
    assert len(dassl_fewshot(ds, 8, 1, val_shots=4)["val_order"]) == 16


def test_base_to_novel_all_draw_keeps_the_base_half(split):
    sp, ds = split
    base, _ = base_novel_split(ds.classnames)
    for seed in (1, 2, 3):
        want_train, want_val = _reference(sp, 16, seed, subsample="base")
        fs = dassl_fewshot(ds, 16, seed, base, val_shots=4, draw_all=True)
        assert (fs["train_order"], fs["val_order"]) == (want_train, want_val)
    # the rule matters: drawing the base classes only consumes the stream differently
    only = dassl_fewshot(ds, 16, 1, base, val_shots=4, draw_all=False)
    if len(ds.classnames) > 3:
        assert only["val_order"] != dassl_fewshot(ds, 16, 1, base, val_shots=4,
                                                  draw_all=True)["val_order"]


@pytest.mark.parametrize("shots", [2, 8])
def test_sample_seed_task_order_is_main_py(split, shots):
    """main.py: the data set drawn once with seed 1; task i re-draws K of K with random.seed(i)."""
    sp, ds = split
    train1, val1 = _reference(sp, shots, 1)
    fs = dassl_fewshot(ds, shots, 1, val_shots=4)
    lab = {p: y for part in ("train", "val") for p, y, _ in sp[part]}
    for task in (1, 2, 3):
        random.seed(task)
        want_t = [d.impath for d in _generate([_Datum(p, lab[p]) for p in train1], shots)]
        want_v = [d.impath for d in _generate([_Datum(p, lab[p]) for p in val1], shots)]
        got = dassl_task_order(fs, task, shots)
        assert (got["train_order"], got["val_order"]) == (want_t, want_v)
        assert sorted(got["train_order"]) == sorted(train1)  # same images


def test_dassl_refuses_too_few_images_unless_allowed():
    sp = _hand_split()
    ds = _dataset(sp)
    with pytest.raises(UserError, match="'class 0' has only 30 training images for 31 shots"):
        dassl_fewshot(ds, 31, 1)
    fs = dassl_fewshot(ds, 31, 1, allow_fewer=True)
    assert len(fs["train"]["class 0"]) == 30 and len(fs["train"]["class 2"]) == 31  # Dassl keeps the whole group (repeat=False)


def test_medadapt_sampler_val_shots_caps_validation():
    ds = _dataset(_hand_split())
    full = sample_fewshot(ds, 8, 1)
    capped = sample_fewshot(ds, 8, 1, val_shots=4)
    assert all(len(v) == 8 for v in full["val"].values())
    assert all(len(v) == 4 for v in capped["val"].values())
    assert capped["train"] == full["train"]


def test_run_records_sample_seed_and_trains_every_seed_on_its_images(env, tmp_path):
    """End to end: dassl sampler + sample_seed 1 -> both seeds train on seed 1's images, in the
    task order of main.py; results.json / summary.json say so."""
    from medadapt.cli import main
    root = tmp_path / "data"
    rows = []
    for part, n in (("train", 5), ("val", 5), ("test", 2)):
        for y, c in enumerate(("red", "green")):
            for i in range(n):
                rel = f"{part}/{c}{i}.png"
                (root / part).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (200 * (y == 0), 200 * (y == 1), 20 * i)).save(root / rel)
                rows.append(f"{rel},{c},{part}")
    (root / "data.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    assert main(["fit", "--backbone", "tiny-hf-clip", "--dataset", f"csv:{root / 'data.csv'}",
                 "--method", "linear-probe", "--shots", "2", "--seeds", "1", "2", "--out", str(out),
                 "--quiet", "--set", "data.sampler=dassl", "--set", "data.sample_seed=1",
                 "--set", "data.val_shots=4"]) == 0
    fs = [json.loads((out / f"seed{s}" / "fewshot.json").read_text()) for s in (1, 2)]
    assert sorted(fs[0]["train_order"]) == sorted(fs[1]["train_order"])
    assert fs[0]["sample_seed"] == fs[1]["sample_seed"] == 1
    res = json.loads((out / "seed2" / "results.json").read_text())
    assert (res["sampler"], res["sample_seed"], res["seed"]) == ("dassl", 1, 2)
    assert json.loads((out / "summary.json").read_text())["sample_seed"] == 1
    # the draw is Dassl's on the CSV's record order
    from medadapt.data.sources import load_dataset
    ds = load_dataset(f"csv:{root / 'data.csv'}")
    base = dassl_fewshot(ds, 2, 1, val_shots=4)
    assert fs[1]["train_order"] == dassl_task_order(base, 2, 2)["train_order"]


def test_octmnist_class_is_keyed_as_biomedcoops_descriptions():
    from medadapt.data.sets.biomedcoop import BIOMEDCOOP_SETS
    # trainers/prompt_templates.py BIOMEDCOOP_TEMPLATES keys OCTMNIST's normal class so
    assert BIOMEDCOOP_SETS["biomedcoop-octmnist"].classnames[-1] == "normal OCT scan"
