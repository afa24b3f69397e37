"""Synthetic stand-ins of BiomedCoOp's 11 data sets: a few generated images at the paths the real
split files name (``../shared/data/biomedcoop-splits``), in BiomedCoOp's folder layout
``DATA/<folder>/{<folder>/<class folder>/<image>, split_<folder>.json}``.

Each image is a flat colour per class plus noise, so that a few-shot method has something to learn.
OCTMNIST's split file is not available here: its stand-in names files in DermaMNIST's pattern
(``<class folder>/<split><index>_<label>.png``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from medadapt.data.sets.biomedcoop import BIOMEDCOOP_SETS

SPLITS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "biomedcoop-splits"


def real_split(folder: str) -> dict | None:
    p = SPLITS_DIR / f"split_{folder}.json"
    return json.loads(p.read_text()) if p.exists() else None


def reduced_split(folder: str, classnames, per_class: dict[str, int]) -> dict:
    """The first ``per_class[split]`` entries of each class of each split of the real file."""
    real = real_split(folder)
    out: dict[str, list] = {}
    for split, k in per_class.items():
        if real is not None:
            rows, seen = [], {}
            for rel, y, c in real[split]:
                if seen.get(y, 0) < k:
                    rows.append([rel, y, c])
                    seen[y] = seen.get(y, 0) + 1
        else:
            rows = [[f"{c.replace(' ', '_')}/{split}{i}_{y}.png", y, c]
                    for y, c in enumerate(classnames) for i in range(k)]
        out[split] = rows
    return out


def write_images(images: Path, split: dict, size: int = 24, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n_cls = 1 + max(y for rows in split.values() for _, y, _ in rows)
    palette = (np.array([[(37 * i) % 256, (91 * i + 60) % 256, (151 * i + 120) % 256]
                         for i in range(n_cls)])).astype(np.float32)
    for rows in split.values():
        for rel, y, _ in rows:
            p = images / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            arr = np.clip(palette[y] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(p)


def make_standin(data: Path, name: str, per_class: dict[str, int] | None = None,
                 with_split: bool = True) -> Path:
    """Build data set ``name`` (a registry name) under ``data``; returns its folder."""
    s = BIOMEDCOOP_SETS[name]
    per_class = per_class or {"train": 2, "val": 1, "test": 2}
    split = reduced_split(s.folder, s.classnames, per_class)
    root = Path(data) / s.folder
    write_images(root / s.folder, split)
    if with_split:
        (root / f"split_{s.folder}.json").write_text(json.dumps(split))
    return root


def make_all(data: Path, per_class: dict[str, int] | None = None) -> Path:
    for name in BIOMEDCOOP_SETS:
        make_standin(data, name, per_class)
    return Path(data)
