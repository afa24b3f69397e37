"""Helpers shared by the data-set parsers."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from medadapt.data.catalog import IMAGE_EXTS
from medadapt.data.dataset import Record, open_rgb
from medadapt.errors import UserError

SEARCH_DEPTH = 3  # how far below ``root`` a parser looks for the data set's own folder


# --------------------------------------------------------------------------------------------
# small helpers shared by the parsers
# --------------------------------------------------------------------------------------------

def _root(root, name: str, file_ok: bool = False) -> Path:
    if root is None:
        raise UserError(f"{name}: needs the folder the data set was unpacked into "
                        f"(pass {name}:PATH or set MEDADAPT_DATA)")
    p = Path(root).expanduser()
    if not p.exists():
        raise UserError(f"{name}: path not found: {p}")
    if p.is_file() and not file_ok:
        raise UserError(f"{name}: {p} is a file; unpack the archive and pass its folder")
    return p


def _check_options(name: str, unknown: dict, valid: Iterable[str]) -> None:
    if unknown:
        raise UserError(f"{name}: unknown option(s) {sorted(unknown)}; valid: "
                        f"{', '.join(sorted(valid)) or 'none'}")


def _subdirs(d: Path) -> list[str]:
    try:
        with os.scandir(d) as it:
            return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    except (NotADirectoryError, PermissionError, FileNotFoundError):
        return []


def _find_dir(root: Path, ok: Callable[[Path], bool], max_depth: int = SEARCH_DEPTH) -> Path | None:
    """Breadth-first search for the first folder (``root`` included) that satisfies ``ok``;
    siblings are visited in sorted order, so the answer does not depend on the file system."""
    level = [root] if root.is_dir() else []
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for d in level:
            if ok(d):
                return d
            nxt += [d / s for s in _subdirs(d)]
        level = nxt
    return None


def _has_subdirs(names: Iterable[str]) -> Callable[[Path], bool]:
    want = set(names)
    return lambda d: want <= set(_subdirs(d))


def _locate_class_dir(root: Path, folders: Sequence[str], name: str, layout: str,
                      prefer: Sequence[str] = ()) -> Path:
    """The folder holding all of ``folders`` as sub-folders; a folder named in ``prefer`` wins."""
    has_all = _has_subdirs(folders)
    for pname in prefer:
        d = _find_dir(root, lambda p: p.name == pname and has_all(p))
        if d is not None:
            return d
    d = _find_dir(root, has_all)
    if d is not None:
        return d
    # a helpful message for a partial download: the folder with most of the class folders
    best, best_n = None, 0
    level = [root]
    for _ in range(SEARCH_DEPTH + 1):
        nxt = []
        for p in level:
            n = len(set(folders) & set(_subdirs(p)))
            if n > best_n:
                best, best_n = p, n
            nxt += [p / s for s in _subdirs(p)]
        level = nxt
    if best is not None:
        missing = [f for f in folders if f not in _subdirs(best)]
        raise UserError(f"{name}: {best} lacks class folders {missing} (expected layout: {layout})")
    raise UserError(f"{name}: no class folders {list(folders)} found under {root} "
                    f"(expected layout: {layout})")


def _list_images(d: Path) -> list[str]:
    with os.scandir(d) as it:
        return sorted(e.name for e in it if e.is_file() and not e.name.startswith(".")
                      and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS)


def _carve_val(labels: np.ndarray, frac: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of a per-class validation part (``frac`` of each class, at least one item when
    ``frac > 0`` and the class has two or more, never all of it); fixed data seed."""
    out = np.zeros(len(labels), dtype=bool)
    if frac <= 0:
        return out
    if frac >= 1:
        raise UserError(f"val_frac must be in [0, 1), got {frac}")
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        k = int(round(n * frac))
        if n >= 2:
            k = min(max(1, k), n - 1)
        out[idx[:k]] = True
    return out


def _hash(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


class _FileLoader:
    """Record id -> RGB image, ids relative to one folder (picklable, unlike a lambda)."""

    def __init__(self, base: str):
        self.base = base

    def __call__(self, r: Record) -> Image.Image:
        return open_rgb(os.path.join(self.base, r.id))


class _PrefixLoader:
    """Record id ``<prefix>/<rest>`` -> file ``roots[prefix]/<rest>`` (data sets in two folders)."""

    def __init__(self, roots: dict[str, str]):
        self.roots = roots

    def __call__(self, r: Record) -> Image.Image:
        prefix, _, rest = r.id.partition("/")
        return open_rgb(os.path.join(self.roots[prefix], rest))


def _class_folder_records(d: Path, folders: Sequence[str],
                          prefix: str = "") -> tuple[list[str], list[int]]:
    ids, labels = [], []
    for c, f in enumerate(folders):
        names = _list_images(d / f)
        ids += [f"{prefix}{f}/{n}" for n in names]
        labels += [c] * len(names)
    return ids, labels


def _require_images(name: str, d: Path, folders: Sequence[str], labels: Sequence[int]) -> None:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(folders))
    empty = [folders[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise UserError(f"{name}: class folders without images under {d}: {empty}")

