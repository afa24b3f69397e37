"""The one in-memory data set type every source produces.

A :class:`DataSet` is a list of records (id, label, split, concepts, domain) plus a function that
turns a record into an RGB PIL image. Sources (folder, csv, npz, registered benchmarks, the
synthetic world) only differ in how they build it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from medadapt.errors import UserError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One image. ``id`` is stable across machines (a relative file path, or ``split/index`` for
    arrays) and is what ``fewshot.json`` and the feature cache store."""

    id: str
    label: int
    split: str | None = None
    concepts: tuple[str, ...] = ()
    domain: str | None = None


@dataclass
class DataSet:
    """Records + class names + an image loader.

    ``loader(record) -> PIL.Image`` must return an RGB image or raise ``UserError`` naming the
    item. ``fingerprint`` identifies the content (used in feature-cache keys): for files it covers
    names, sizes and modification times; for arrays, the array bytes.
    """

    name: str
    classnames: list[str]
    records: list[Record]
    loader: Callable[[Record], Image.Image]
    fingerprint: str = ""
    root: str | None = None
    # optional metadata: per-dataset prompt templates key, description file, hierarchy, ...
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    def load_image(self, i: int) -> Image.Image:
        return self.loader(self.records[i])

    def has_splits(self) -> bool:
        return all(r.split is not None for r in self.records)

    def indices(self, split: str | None = None, classes: Sequence[int] | None = None,
                domain: str | None = None) -> list[int]:
        keep = set(classes) if classes is not None else None
        return [i for i, r in enumerate(self.records)
                if (split is None or r.split == split)
                and (keep is None or r.label in keep)
                and (domain is None or r.domain == domain)]

    def domains(self) -> list[str]:
        return sorted({r.domain for r in self.records if r.domain is not None})

    def id_index(self) -> dict[str, int]:
        return {r.id: i for i, r in enumerate(self.records)}

    def subset_fingerprint(self, idx: Sequence[int]) -> str:
        h = hashlib.sha256(self.fingerprint.encode())
        h.update(json.dumps([self.records[i].id for i in idx]).encode())
        return h.hexdigest()[:20]


def open_rgb(path: str, item: str | None = None) -> Image.Image:
    """Open an image file as RGB; a missing or corrupt file is a ``UserError`` naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"corrupt or unreadable image: {path} ({type(e).__name__}); "
                        "use --skip-bad to skip and count such files") from None


def array_to_rgb(a: np.ndarray) -> Image.Image:
    """uint8 array HxW, HxWx1 or HxWx3 -> RGB PIL image (MedMNIST is grey or RGB)."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    img = Image.fromarray(a)
    return img.convert("RGB")


def files_fingerprint(root: str, rel_paths: Sequence[str]) -> str:
    """Hash of names, sizes and mtimes: changes when any file changes."""
    h = hashlib.sha256()
    for p in rel_paths:
        full = os.path.join(root, p)
        try:
            st = os.stat(full)
            h.update(f"{p}|{st.st_size}|{int(st.st_mtime_ns)}\n".encode())
        except FileNotFoundError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()


def stratified_split(labels: np.ndarray, val_frac: float = 0.2, test_frac: float = 0.3,
                     seed: int = 0) -> list[str]:
    """Deterministic per-class split for sources that ship none.

    Uses a fixed data seed (not the run seed) so the test set is identical for every run. Each
    class gets at least one test and one validation item when it has three or more images.
    """
    rng = np.random.default_rng(seed)
    out = ["train"] * len(labels)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_test = int(round(n * test_frac))
        n_val = int(round(n * val_frac))
        if n >= 3:
            n_test, n_val = max(1, n_test), max(1, n_val)
        for i in idx[:n_test]:
            out[i] = "test"
        for i in idx[n_test:n_test + n_val]:
            out[i] = "val"
    return out
