"""Few-shot protocol: seeded K-shot sampling, a few-shot validation set, base-to-novel splits.

Two samplers (``data.sampler``):

* ``medadapt`` (default): depends only on (seed, class, record ids): ids are sorted before a NumPy
  PCG64 permutation, so a seed picks the same images on every machine, whatever the record order.
* ``dassl``: the same images in the same order as Dassl's ``DatasetBase.generate_fewshot_dataset``
  after ``set_random_seed(seed)`` (Dassl.pytorch ``dassl/data/datasets/base_dataset.py`` lines
  155-211, ``dassl/utils/tools.py`` ``set_random_seed``; vendored by HealthX-Lab/BiomedCoOp
  @7ceb5a8): one Python ``random`` stream seeded with ``seed``; the split's train items in record
  order (for a BiomedCoOp / CoOp split file: the file's order) grouped by label in order of first
  appearance (``split_dataset_by_label``: a ``defaultdict`` filled in item order); per group
  ``random.sample(items, K)`` (all items when fewer than K); then the validation set from the SAME
  stream, ``min(K, val_shots)`` per class (BiomedCoOp ``datasets/*.py`` lines 41-42:
  ``generate_fewshot_dataset(val, num_shots=min(num_shots, 4))`` right after the train draw).
  Base-to-novel with ``b2n_draw: all`` draws over all classes and then keeps the base ones (Dassl
  draws before ``subsample_classes``, lines 41-49; the base half is the first ``ceil(n / 2)``
  labels). :func:`dassl_task_order` gives the order BiomedCoOp's ``main.py`` trains a task in when
  every task reuses seed 1's images (``sample_seed``).

The chosen ids are written to ``fewshot.json`` (with their order) and can be reloaded. The test
split is never touched here.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medadapt.data.dataset import DataSet
from medadapt.errors import UserError


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *[int(s) for s in salt]])


def _take(ds: DataSet, idx: list[int], k: int, rng: np.random.Generator,
          ok: Callable[[int], bool] | None) -> list[int]:
    idx = sorted(idx, key=lambda i: ds.records[i].id)
    out = []
    for j in rng.permutation(len(idx)):
        i = idx[j]
        if ok is None or ok(i):
            out.append(i)
            if len(out) == k:
                break
    return out


def sample_fewshot(ds: DataSet, shots: int, seed: int, classes: Sequence[int] | None = None,
                   allow_fewer: bool = False, ok: Callable[[int], bool] | None = None,
                   domain: str | None = None, val_shots: int | None = None) -> dict:
    """Return ``{"train": {classname: [ids]}, "val": {classname: [ids]}}``.

    ``train`` takes K per class from the train split; ``val`` takes min(K, available) per class
    from the val split, or, when the data set has no val items for a class, from the train items
    left after the shots; ``val_shots`` caps it (``min(K, val_shots)``). ``ok(i)`` lets the caller
    skip unreadable images (``--skip-bad``). ``shots <= 0`` means all training images.
    """
    if classes is None:
        classes = list(range(ds.num_classes))
    train, val = {}, {}
    for c in classes:
        name = ds.classnames[c]
        pool = ds.indices("train", [c], domain=domain)
        k = len(pool) if shots <= 0 else shots
        chosen = _take(ds, pool, k, _rng(seed, c, 0), ok)
        if len(chosen) < k:
            if not allow_fewer:
                raise UserError(f"class {name!r} has only {len(chosen)} usable training images "
                                f"for {shots} shots; lower --shots or pass --allow-fewer")
            if not chosen:
                raise UserError(f"class {name!r} has no usable training images")
        vpool = ds.indices("val", [c], domain=domain)
        if not vpool:
            used = set(chosen)
            vpool = [i for i in pool if i not in used]
        kv = min(max(k, 1), len(vpool))
        if val_shots is not None:
            kv = min(kv, int(val_shots))
        vchosen = _take(ds, vpool, kv, _rng(seed, c, 1), ok)
        train[name] = [ds.records[i].id for i in chosen]
        val[name] = [ds.records[i].id for i in vchosen]
    return {"seed": seed, "shots": shots, "train": train, "val": val}


def _draw_per_group(items: list, group_of: Callable, k: int, rng: random.Random) -> list:
    """Dassl ``generate_fewshot_dataset(items, num_shots=k)`` (``repeat=False``): the items grouped
    as ``split_dataset_by_label`` does (groups in order of first appearance, items in order), then
    ``rng.sample(group, k)`` per group (the whole group when it has fewer than ``k``)."""
    if k < 1:
        return list(items)
    groups: dict = {}
    for i in items:
        groups.setdefault(group_of(i), []).append(i)
    out: list = []
    for group in groups.values():
        out += rng.sample(group, k) if len(group) >= k else group
    return out


def _dassl_draw(ds: DataSet, idx: list[int], k: int, rng: random.Random) -> list[int]:
    """Dassl's draw on record indices, grouped by their label."""
    return _draw_per_group(idx, lambda i: ds.records[i].label, k, rng)


def dassl_fewshot(ds: DataSet, shots: int, seed: int, classes: Sequence[int] | None = None,
                  allow_fewer: bool = False, domain: str | None = None,
                  val_shots: int | None = None, draw_all: bool = False) -> dict:
    """The ``dassl`` sampler (module docstring): Dassl's few-shot train and validation sets for
    ``seed``. ``classes``: the classes kept (base-to-novel: the base ones); ``draw_all``: draw over
    every class first and keep ``classes`` afterwards (BiomedCoOp's base-to-novel), otherwise only
    ``classes``' items enter the draw. ``val_shots``: validation images per class
    ``min(K, val_shots)`` (null: K). Without val items, the validation set is drawn, from the same
    stream, from the train items the shots left (medadapt's rule; Dassl would have none).
    Unreadable images are not skipped in the draw (Dassl does not know them); the runner drops
    them afterwards, so the draw stays Dassl's."""
    n = ds.num_classes
    keep = list(range(n)) if classes is None else list(classes)
    drawn = list(range(n)) if draw_all else keep
    rng = random.Random(int(seed))  # = random.seed(seed) then the module functions
    pool = ds.indices("train", drawn, domain=domain)
    train = _dassl_draw(ds, pool, shots, rng)
    vk = shots if val_shots is None or shots < 1 else min(shots, int(val_shots))
    vpool = ds.indices("val", drawn, domain=domain)
    if not vpool:
        used = set(train)
        vpool = [i for i in pool if i not in used]
    val = _dassl_draw(ds, vpool, max(vk, 1) if shots >= 1 else 0, rng)
    keep_set = set(keep)
    train = [i for i in train if ds.records[i].label in keep_set]
    val = [i for i in val if ds.records[i].label in keep_set]
    if shots >= 1:
        counts = {c: 0 for c in keep}
        for i in train:
            counts[ds.records[i].label] += 1
        for c, m in counts.items():
            if m == 0:
                raise UserError(f"class {ds.classnames[c]!r} has no training images")
            if m < shots and not allow_fewer:
                raise UserError(f"class {ds.classnames[c]!r} has only {m} training images for "
                                f"{shots} shots; lower --shots or pass --allow-fewer")
    return _as_fewshot(ds, seed, shots, train, val, keep, "dassl")


def _as_fewshot(ds: DataSet, seed: int, shots: int, train: list[int], val: list[int],
                classes: Sequence[int], sampler: str) -> dict:
    tr: dict[str, list[str]] = {ds.classnames[c]: [] for c in classes}
    va: dict[str, list[str]] = {ds.classnames[c]: [] for c in classes}
    for i in train:
        tr[ds.classnames[ds.records[i].label]].append(ds.records[i].id)
    for i in val:
        va[ds.classnames[ds.records[i].label]].append(ds.records[i].id)
    return {"seed": seed, "shots": shots, "sampler": sampler, "train": tr, "val": va,
            "train_order": [ds.records[i].id for i in train],
            "val_order": [ds.records[i].id for i in val]}


def dassl_task_order(fs: dict, task_seed: int, shots: int) -> dict:
    """The order in which BiomedCoOp's ``main.py`` (lines 224-228 @7ceb5a8) trains task ``i`` on the
    images of one draw: ``random.seed(i)`` then ``generate_fewshot_dataset`` again on the drawn
    train list (K of K per class: a permutation) and on the drawn validation list with ``num_shots
    = K`` (a permutation when the class has at least K, else unchanged). Same images, new order."""
    rng = random.Random(int(task_seed))
    label = {i: name for part in ("train", "val") for name, lst in fs.get(part, {}).items()
             for i in lst}

    def redraw(ids: list[str]) -> list[str]:
        return _draw_per_group(ids, label.__getitem__, shots, rng)

    out = dict(fs)
    out["train_order"] = redraw(list(fs["train_order"]))
    out["val_order"] = redraw(list(fs["val_order"]))
    return out


def fewshot_indices(ds: DataSet, fs: dict, part: str) -> list[int]:
    """Record indices of ``fs[part]`` (``train`` / ``val``), in the sampler's order when the file
    keeps one (``train_order`` / ``val_order``), else class by class."""
    order = fs.get(f"{part}_order")
    return ids_to_indices(ds, {part: order} if order is not None else fs.get(part, {}))


def fraction_subset(ds: DataSet, fraction: float, seed: int) -> dict:
    """Stratified random fraction of the train split (the SCALE paper's protocol: 5%..100%)."""
    if not 0 < fraction <= 1:
        raise UserError(f"data fraction must be in (0, 1], got {fraction}")
    train, val = {}, {}
    for c in range(ds.num_classes):
        pool = ds.indices("train", [c])
        k = max(1, int(math.ceil(fraction * len(pool)))) if pool else 0
        chosen = _take(ds, pool, k, _rng(seed, c, 2), None)
        vpool = ds.indices("val", [c])
        train[ds.classnames[c]] = [ds.records[i].id for i in chosen]
        val[ds.classnames[c]] = [ds.records[i].id for i in sorted(vpool, key=lambda i: ds.records[i].id)]
    return {"seed": seed, "fraction": fraction, "train": train, "val": val}


def ids_to_indices(ds: DataSet, ids_by_class: dict[str, list[str]]) -> list[int]:
    index = ds.id_index()
    out = []
    for name, ids in ids_by_class.items():
        for i in ids:
            if i not in index:
                raise UserError(f"fewshot.json names an item not in the data set: {i!r}")
            out.append(index[i])
    return out


def save_fewshot(path: str | Path, fs: dict) -> None:
    from medadapt.safeio import write_text  # a planted link is refused, never followed
    write_text(path, json.dumps(fs, indent=1, sort_keys=True))


def load_fewshot(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise UserError(f"fewshot file not found: {p}")
    try:
        fs = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise UserError(f"{p}: invalid JSON (nested too deeply)") from None
    if not isinstance(fs, dict) or "train" not in fs:
        raise UserError(f"{p}: not a fewshot.json (no 'train' key)")
    return fs


def base_novel_split(classnames: list[str], base: list[str] | None = None,
                     novel: list[str] | None = None) -> tuple[list[int], list[int]]:
    """Base / novel class indices: the first half (rounded up) is base by default, as in CoCoOp."""
    n = len(classnames)
    lower = {c.lower(): i for i, c in enumerate(classnames)}

    def resolve(names):
        bad = [c for c in names if c.lower() not in lower]
        if bad:
            raise UserError(f"base/novel class names not in the data set: {bad}; "
                            f"valid: {classnames}")
        return [lower[c.lower()] for c in names]

    if base is None and novel is None:
        m = math.ceil(n / 2)
        return list(range(m)), list(range(m, n))
    b = resolve(base) if base is not None else None
    v = resolve(novel) if novel is not None else None
    if b is None:
        b = [i for i in range(n) if i not in set(v)]
    if v is None:
        v = [i for i in range(n) if i not in set(b)]
    if set(b) & set(v):
        raise UserError("base and novel classes overlap")
    if not b or not v:
        raise UserError("base-to-novel needs at least one base and one novel class")
    return b, v
