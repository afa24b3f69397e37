"""The one in-memory data set type every source produces.

A :class:`DataSet` is a list of records (id, label, split, concepts, domain) plus a function that
turns a record into an RGB PIL image. Sources (folder, csv, npz, registered benchmarks, the
synthetic world) only differ in how they build it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
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


BOMB_HINT = ("raise the limit with --set data.max_image_pixels=N (predict: --max-image-pixels N) "
             "if the file is trusted")


@contextlib.contextmanager
def pixel_limit(n: int | None):
    """Temporarily set Pillow's decompression-bomb limit (``None``: keep Pillow's)."""
    if n is None:
        yield
        return
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = int(n)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def open_rgb(path: str, item: str | None = None) -> Image.Image:
    """Open an image file as RGB; a missing, corrupt or oversized file is a ``UserError`` naming it.

    16-bit and 32-bit integer images keep their dynamic range (scaled to 8 bits by 65535, or by
    4095 when the image fits in 12 bits, as from most X-ray / microscopy detectors); float images
    in [0, 1] are scaled by 255, other float images stretched from their min to their max. An
    image above Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) is refused."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return to_rgb(im)
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"image too large: {path} has more pixels than the limit of "
                        f"{Image.MAX_IMAGE_PIXELS} (decompression-bomb guard); {BOMB_HINT}; "
                        "or use --skip-bad to skip and count it") from None
    except IsADirectoryError:
        raise UserError(f"not an image file but a folder: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, KeyError,
            IndexError, EOFError, MemoryError) as e:
        raise UserError(f"corrupt or unreadable image: {path} ({type(e).__name__}); "
                        "use --skip-bad to skip and count such files") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """A PIL image of any mode -> RGB, keeping the dynamic range of 16-bit and float images
    (Pillow's own ``convert('RGB')`` clips them: 16-bit turns white, float [0, 1] black)."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return array_to_rgb(np.asarray(im))
    return im.convert("RGB")


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            return np.round(a * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0 and np.all(a == np.round(a)):
            return a.astype(np.uint8)  # 8-bit values stored as floats
        if hi == lo:
            return np.zeros(a.shape, np.uint8)
        return np.round((a - lo) / (hi - lo) * 255.0).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        # 8-bit values in a wider integer array (e.g. int64 from np.array) pass unchanged; a
        # 16-bit array is always read as 12- or 16-bit data, so dark 16-bit images stay dark
        if lo >= 0 and hi <= 255 and a.dtype.itemsize != 2:
            return a.astype(np.uint8)
        if lo >= 0 and hi <= 4095:
            return np.round(a.astype(np.float64) * (255.0 / 4095.0)).astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return np.round(a.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
        a = a.astype(np.float64)
        return np.round((a - lo) / (hi - lo) * 255.0).astype(np.uint8)
    raise UserError(f"unsupported image array type {a.dtype}")


def array_to_rgb(a: np.ndarray) -> Image.Image:
    """Array HxW, HxWx1, HxWx3 (or channel-first 1xHxW / 3xHxW), uint8, 16-bit or float
    -> RGB PIL image. Values beyond 8 bits keep their range (see :func:`open_rgb`)."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # channel-first
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise UserError(f"image array of shape {a.shape} is not HxW, HxWx1/3 or 1/3xHxW")
    img = Image.fromarray(np.ascontiguousarray(_to_uint8(a)))
    return img.convert("RGB")


# files up to this size are hashed whole; larger ones by sampled blocks (+ size, mtime, ctime)
FINGERPRINT_FULL_BYTES = 1 << 20
_SAMPLE_BLOCK = 64 << 10
_SAMPLE_BLOCKS = 16


def file_digest(path: str, size: int) -> str:
    """Content digest: the whole file up to ``FINGERPRINT_FULL_BYTES``, else ``_SAMPLE_BLOCKS``
    evenly spaced 64 KiB blocks (first and last included)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        if size <= FINGERPRINT_FULL_BYTES:
            h.update(fh.read())
        else:
            step = (size - _SAMPLE_BLOCK) / (_SAMPLE_BLOCKS - 1)
            for k in range(_SAMPLE_BLOCKS):
                fh.seek(int(k * step))
                h.update(fh.read(_SAMPLE_BLOCK))
    return h.hexdigest()


def _memo_path(root: str) -> str | None:
    from medadapt.paths import cache_home
    key = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:24]
    return str(cache_home() / "fingerprints" / f"{key}.json")


def files_fingerprint(root: str, rel_paths: Sequence[str]) -> str:
    """Content fingerprint of files: changes when any file's bytes change.

    Each file contributes its name and a content digest (:func:`file_digest`): files up to 1 MiB
    are hashed whole; larger ones by 16 sampled 64 KiB blocks plus size, mtime and ctime (the
    ctime changes on every write and cannot be set back by a user, so an in-place edit between
    sampled blocks is caught too). Digests are memoised per file under
    ``$MEDADAPT_CACHE/fingerprints/`` keyed by (size, mtime, ctime, inode), so a re-run costs one
    ``stat`` per file, and a file rewritten with the same size and mtime is re-hashed.
    """
    memo_file = _memo_path(root)
    try:
        with open(memo_file) as fh:
            memo = json.load(fh)
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError, TypeError):
        memo = {}
    changed = False
    h = hashlib.sha256()
    for p in rel_paths:
        full = os.path.join(root, p)
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            h.update(f"{p}|missing\n".encode())
            continue
        except OSError:
            h.update(f"{p}|unreadable\n".encode())
            continue
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        m = memo.get(p)
        if isinstance(m, list) and len(m) == 5 and m[:4] == stamp:
            digest = m[4]
        else:
            try:
                digest = file_digest(full, st.st_size)
            except OSError:
                digest = "unreadable"
            if st.st_size > FINGERPRINT_FULL_BYTES:
                digest += f"|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
            memo[p] = stamp + [digest]
            changed = True
        h.update(f"{p}|{digest}\n".encode())
    if changed:
        try:
            os.makedirs(os.path.dirname(memo_file), exist_ok=True)
            tmp = f"{memo_file}.tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                json.dump(memo, fh)
            os.replace(tmp, memo_file)
        except OSError:
            pass  # the memo is only a speed-up
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
