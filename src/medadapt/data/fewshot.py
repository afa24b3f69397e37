"""Few-shot protocol: seeded K-shot sampling, a few-shot validation set, base-to-novel splits.

Sampling depends only on (seed, class, record ids): ids are sorted before a NumPy PCG64
permutation, so a seed picks the same images on every machine. The chosen ids are written to
``fewshot.json`` and can be reloaded. The test split is never touched here.
"""
from __future__ import annotations

import json
import math
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
                   domain: str | None = None) -> dict:
    """Return ``{"train": {classname: [ids]}, "val": {classname: [ids]}}``.

    ``train`` takes K per class from the train split; ``val`` takes min(K, available) per class
    from the val split, or, when the data set has no val items for a class, from the train items
    left after the shots. ``ok(i)`` lets the caller skip unreadable images (``--skip-bad``).
    ``shots <= 0`` means all training images.
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
        vchosen = _take(ds, vpool, kv, _rng(seed, c, 1), ok)
        train[name] = [ds.records[i].id for i in chosen]
        val[name] = [ds.records[i].id for i in vchosen]
    return {"seed": seed, "shots": shots, "train": train, "val": val}


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
