"""Registered synthetic data sets, generated on first use into ``cache_home()/synth/``.

* ``synth-crc``: the 9 NCT-CRC-HE-like tissue classes (colon stain).
* ``synth-crc-b2n``: the 9 classes + 6 further tissue classes; ``base_classes`` = the 9.
* ``synth-organs``: benign vs malignant in 4 organs (``Record.domain`` = organ; each organ has its
  own stain / texture and its own mixture of benign and malignant tissue patterns).
* ``synth-malignancy``: benign vs malignant with per-image concepts (``Record.concepts``), the
  concepts of :data:`medadapt.synth.classes.CONCEPTS` (hierarchy file
  ``medadapt/synth/hierarchies/synth-malignancy.yaml``).

Every item is drawn from seeds derived from (data set, class, split, index) with
:func:`medadapt.synth.tiles.tile_seed`, so the same data set comes out byte-identical on every
machine. Build options: ``size`` (tile side, default 64), ``n_train`` / ``n_val`` / ``n_test``
(items per class, per organ for ``synth-organs``) and ``seed`` (data seed, default 0).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from medadapt.data.dataset import DataSet, Record, array_to_rgb
from medadapt.data.sources import DATASETS, DatasetInfo
from medadapt.paths import cache_home
from medadapt.errors import UserError
from medadapt.synth.classes import (ALL_CLASSES, CRC_CLASSES, MALIGNANCY_CLASSES, ORGAN_MIX,
                                    concepts_of, sample_binary)
from medadapt.synth.tiles import render_tile, tile_seed

GENERATOR_VERSION = 1  # bump when tiles, profiles or sampling change: invalidates caches

# items per class (per organ and class for synth-organs): train, val, test
SIZES = {
    "synth-crc": (100, 20, 100),
    "synth-crc-b2n": (60, 15, 60),
    "synth-organs": (60, 15, 60),
    "synth-malignancy": (300, 60, 200),
}
SPLITS = ("train", "val", "test")

# an item plan: (id, label, split, domain, concepts, attrs, tile seed)
Plan = list[tuple[str, int, str, str | None, tuple[str, ...], dict, int]]


def _counts(name: str, opts: dict) -> tuple[int, int, int]:
    n = list(SIZES[name])
    for i, k in enumerate(("n_train", "n_val", "n_test")):
        if opts.get(k) is not None:
            n[i] = int(opts[k])
            if n[i] < 0:
                raise UserError(f"{name}: {k} must be >= 0")
    return tuple(n)


def _plan_classes(name: str, classes, counts, seed: int) -> Plan:
    plan: Plan = []
    for label, c in enumerate(classes):
        for split, n in zip(SPLITS, counts):
            for i in range(n):
                s = tile_seed(name, seed, c.name, split, i)
                attrs = c.sample(np.random.default_rng(s))
                plan.append((f"{split}/{c.code}/{i:04d}", label, split, None, (), attrs, s + 1))
    return plan


def _plan_organs(name: str, counts, seed: int) -> Plan:
    plan: Plan = []
    for organ in ORGAN_MIX:
        for label, cname in enumerate(MALIGNANCY_CLASSES):
            for split, n in zip(SPLITS, counts):
                for i in range(n):
                    s = tile_seed(name, seed, organ, cname, split, i)
                    attrs = sample_binary(cname, np.random.default_rng(s), organ)
                    plan.append((f"{split}/{organ}/{cname}/{i:04d}", label, split, organ, (),
                                 attrs, s + 1))
    return plan


def _plan_malignancy(name: str, counts, seed: int) -> Plan:
    plan: Plan = []
    for label, cname in enumerate(MALIGNANCY_CLASSES):
        for split, n in zip(SPLITS, counts):
            for i in range(n):
                s = tile_seed(name, seed, cname, split, i)
                attrs = sample_binary(cname, np.random.default_rng(s))
                plan.append((f"{split}/{cname}/{i:04d}", label, split, None,
                             concepts_of(cname, attrs), attrs, s + 1))
    return plan


def _render(plan: Plan, size: int) -> np.ndarray:
    out = np.empty((len(plan), size, size, 3), np.uint8)
    for j, (_, _, _, domain, _, attrs, s) in enumerate(plan):
        out[j] = render_tile(attrs, s, size, domain or "colon")
    return out


def _code_hash() -> str:
    """Hash of the generator's source: a change to tiles, profiles or sampling gives new caches."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for f in ("tiles.py", "classes.py", "datasets.py"):
        h.update((here / f).read_bytes())
    return h.hexdigest()[:12]


def _cache_path(name: str, opts: dict) -> Path:
    key = json.dumps({"name": name, "v": GENERATOR_VERSION, "code": _code_hash(), **opts},
                     sort_keys=True)
    h = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_home() / "synth" / f"{name}-v{GENERATOR_VERSION}-{h}.npz"


def _load_or_generate(name: str, opts: dict, make_plan: Callable[[], Plan], size: int
                      ) -> tuple[np.ndarray, list[dict], str]:
    path = _cache_path(name, opts)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                return z["images"], meta["records"], meta["fingerprint"]
        except Exception:  # a truncated / foreign file: regenerate it
            pass
    plan = make_plan()
    images = _render(plan, size)
    records = [{"id": p[0], "label": p[1], "split": p[2], "domain": p[3], "concepts": list(p[4]),
                "attrs": p[5]} for p in plan]
    h = hashlib.sha256(images.tobytes())
    h.update(json.dumps(records, sort_keys=True).encode())
    fingerprint = h.hexdigest()
    meta = {"name": name, "options": opts, "generator_version": GENERATOR_VERSION,
            "records": records, "fingerprint": fingerprint}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, images=images, meta=np.array(json.dumps(meta)))
    os.replace(tmp, path)
    return images, records, fingerprint


def _options(name: str, opts: dict) -> tuple[dict, int]:
    unknown = set(opts) - {"size", "n_train", "n_val", "n_test", "seed"}
    if unknown:
        raise UserError(f"{name}: unknown options {sorted(unknown)}; valid: size, n_train, "
                        "n_val, n_test, seed")
    size = int(opts.get("size") or 64)
    if size < 16:
        raise UserError(f"{name}: size must be >= 16, got {size}")
    counts = _counts(name, opts)
    seed = int(opts.get("seed") or 0)
    return {"size": size, "counts": list(counts), "seed": seed}, size


def _build(name: str, classnames: list[str], make_plan: Callable[[tuple, int], Plan],
           opts: dict) -> DataSet:
    key, size = _options(name, opts)
    counts, seed = tuple(key["counts"]), key["seed"]
    images, recs, fingerprint = _load_or_generate(name, key, lambda: make_plan(counts, seed),
                                                  size)
    records = [Record(id=r["id"], label=int(r["label"]), split=r["split"],
                      concepts=tuple(r["concepts"]), domain=r["domain"]) for r in recs]
    row = {r.id: j for j, r in enumerate(records)}

    def loader(r: Record):
        return array_to_rgb(images[row[r.id]])

    return DataSet(name=name, classnames=list(classnames), records=records, loader=loader,
                   fingerprint=fingerprint, root=None,
                   meta={"attrs": [r["attrs"] for r in recs], "generator": "medadapt.synth",
                         "size": size})


def build_crc(root=None, **opts) -> DataSet:
    return _build("synth-crc", [c.name for c in CRC_CLASSES],
                  lambda counts, seed: _plan_classes("synth-crc", CRC_CLASSES, counts, seed), opts)


def build_crc_b2n(root=None, **opts) -> DataSet:
    return _build("synth-crc-b2n", [c.name for c in ALL_CLASSES],
                  lambda counts, seed: _plan_classes("synth-crc-b2n", ALL_CLASSES, counts, seed),
                  opts)


def build_organs(root=None, **opts) -> DataSet:
    return _build("synth-organs", list(MALIGNANCY_CLASSES),
                  lambda counts, seed: _plan_organs("synth-organs", counts, seed), opts)


def build_malignancy(root=None, **opts) -> DataSet:
    return _build("synth-malignancy", list(MALIGNANCY_CLASSES),
                  lambda counts, seed: _plan_malignancy("synth-malignancy", counts, seed), opts)


def images_array(ds: DataSet, indices=None) -> np.ndarray:
    """The uint8 tiles of a synthetic data set as one array (fast path for scripts)."""
    idx = range(len(ds)) if indices is None else indices
    return np.stack([np.asarray(ds.loader(ds.records[i])) for i in idx])


_COMMON = dict(modality="histopathology", license="Apache-2.0 (generated by medadapt)",
               homepage="", citation="", needs_root=False,
               manual="generated offline by medadapt.synth on first use")

if "synth-crc" not in DATASETS:
    DATASETS.register("synth-crc", DatasetInfo(
        name="synth-crc", classnames=[c.name for c in CRC_CLASSES], build=build_crc,
        organ="colon (synthetic)", descriptions="synth-crc.json", **_COMMON))
    DATASETS.register("synth-crc-b2n", DatasetInfo(
        name="synth-crc-b2n", classnames=[c.name for c in ALL_CLASSES], build=build_crc_b2n,
        organ="colon (synthetic)", descriptions="synth-crc-b2n.json",
        base_classes=[c.name for c in CRC_CLASSES], **_COMMON))
    DATASETS.register("synth-organs", DatasetInfo(
        name="synth-organs", classnames=list(MALIGNANCY_CLASSES), build=build_organs,
        organ=", ".join(ORGAN_MIX) + " (synthetic)", descriptions="synth-malignancy.json",
        **_COMMON))
    DATASETS.register("synth-malignancy", DatasetInfo(
        name="synth-malignancy", classnames=list(MALIGNANCY_CLASSES), build=build_malignancy,
        organ="colon (synthetic)", descriptions="synth-malignancy.json",
        hierarchy="synth-malignancy.yaml", **_COMMON))
