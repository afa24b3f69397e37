"""Registered public benchmarks: canonical class names, official splits, where to get the data,
and a parser for each data set's *real* on-disk layout (the layout its archive unpacks to).

Every ``build(root, **options)`` below finds its files under ``root`` (the folder the archive was
unpacked into, or any parent up to three levels above the data), so ``kather2016:/data`` and
``kather2016:/data/Kather_texture_2016_image_tiles_5000`` give the same records. Record ids are
relative to the data set's own folder, never to ``root``, so ``fewshot.json`` files move between
machines. Split rules (documented per data set in ``docs/datasets.md``):

* official splits where the data set ships them (NCT-100K / CRC-VAL-HE-7K, MedMNIST, PCam,
  PanNuke folds, Derm7pt index files, BCCD ``ImageSets/Main``);
* a validation part carved from *train* (never from test) with a fixed data seed where the
  official split has no validation set (NCT-CRC-HE: 10%, as MedMNIST's PathMNIST does);
* :func:`~medadapt.data.dataset.stratified_split` (val 20%, test 30%, data seed 0) where the data
  set ships no split (Kather 2016, CRC-VAL-HE-7K alone, KIMIA Path960, LC25000).

:func:`download` fetches the archives listed in ``DatasetInfo.files`` and verifies them against
their sha256 (or md5, where only that is published); a file without a known checksum is
downloaded unverified, with a warning.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from medadapt.data.dataset import (DataSet, Record, array_to_rgb, files_fingerprint, open_rgb,
                                   stratified_split)
from medadapt.data.sources import (DATASETS, IMAGE_EXTS, MEDMNIST_CLASSES, DatasetInfo, npz_records,
                                   cache_home, data_home)
from medadapt.errors import UserError

log = logging.getLogger(__name__)

SEARCH_DEPTH = 3  # how far below ``root`` a parser looks for the data set's own folder
NPZ_IN_MEMORY_BYTES = 1 << 30  # larger MedMNIST files are unpacked once to .npy and memory-mapped


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


# --------------------------------------------------------------------------------------------
# Kather 2016 (CHMNIST): Kather_texture_2016_image_tiles_5000/<01_TUMOR..08_EMPTY>/*.tif
# --------------------------------------------------------------------------------------------

KATHER16_FOLDERS = ["01_TUMOR", "02_STROMA", "03_COMPLEX", "04_LYMPHO", "05_DEBRIS",
                    "06_MUCOSA", "07_ADIPOSE", "08_EMPTY"]
KATHER16_CLASSES = ["tumor epithelium", "simple stroma", "complex stroma", "immune cells",
                    "debris", "normal mucosal glands", "adipose tissue", "background"]
KATHER16_LAYOUT = "Kather_texture_2016_image_tiles_5000/{01_TUMOR,...,08_EMPTY}/*.tif"


def _kather2016_builder(dsname: str):
    def build(root, split_seed: int = 0, val_frac: float = 0.2, test_frac: float = 0.3,
              **unknown) -> DataSet:
        _check_options(dsname, unknown, ["split_seed", "val_frac", "test_frac"])
        r = _root(root, dsname)
        d = _locate_class_dir(r, KATHER16_FOLDERS, dsname, KATHER16_LAYOUT,
                              prefer=["Kather_texture_2016_image_tiles_5000"])
        ids, labels = _class_folder_records(d, KATHER16_FOLDERS)
        _require_images(dsname, d, KATHER16_FOLDERS, labels)
        splits = stratified_split(np.array(labels), val_frac=val_frac, test_frac=test_frac,
                                  seed=split_seed)
        records = [Record(id=i, label=y, split=s) for i, y, s in zip(ids, labels, splits)]
        base = str(d)
        return DataSet(name=dsname, classnames=list(KATHER16_CLASSES), records=records,
                       loader=_FileLoader(base),
                       fingerprint=files_fingerprint(base, ids), root=base,
                       meta={"folders": list(KATHER16_FOLDERS),
                             "split": f"stratified val {val_frac} test {test_frac} "
                                      f"seed {split_seed}"})
    return build


# --------------------------------------------------------------------------------------------
# NCT-CRC-HE-100K (train) + CRC-VAL-HE-7K (test), and CRC-VAL-HE-7K alone
# --------------------------------------------------------------------------------------------

NCT_FOLDERS = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
NCT_CLASSES = ["adipose tissue", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
               "normal colon mucosa", "cancer-associated stroma",
               "colorectal adenocarcinoma epithelium"]
NCT_TRAIN_FOLDERS = ["NCT-CRC-HE-100K", "NCT-CRC-HE-100K-NONORM"]
NCT_TEST_FOLDER = "CRC-VAL-HE-7K"
NCT_LAYOUT = ("ROOT/NCT-CRC-HE-100K/{ADI,BACK,DEB,LYM,MUC,MUS,NORM,STR,TUM}/*.tif and "
              "ROOT/CRC-VAL-HE-7K/{ADI,...,TUM}/*.tif")
CRC7K_LAYOUT = "CRC-VAL-HE-7K/{ADI,BACK,DEB,LYM,MUC,MUS,NORM,STR,TUM}/*.tif"


def _locate_named(root: Path, names: Sequence[str], folders: Sequence[str]) -> Path | None:
    has_all = _has_subdirs(folders)
    for n in names:
        d = _find_dir(root, lambda p: p.name == n and has_all(p))
        if d is not None:
            return d
    return None


def build_nct_crc_he(root, val_frac: float = 0.1, split_seed: int = 0,
                     train_folder: str | None = None, **unknown) -> DataSet:
    """NCT-CRC-HE-100K as train (minus a ``val_frac`` validation part, as PathMNIST does),
    CRC-VAL-HE-7K as test. ``train_folder="NCT-CRC-HE-100K-NONORM"`` picks the unnormalised
    variant when both are unpacked."""
    name = "nct-crc-he"
    _check_options(name, unknown, ["val_frac", "split_seed", "train_folder"])
    r = _root(root, name)
    train_names = [train_folder] if train_folder else NCT_TRAIN_FOLDERS
    tr = _locate_named(r, train_names, NCT_FOLDERS)
    te = _locate_named(r, [NCT_TEST_FOLDER], NCT_FOLDERS)
    missing = [n for n, d in ((" or ".join(train_names), tr), (NCT_TEST_FOLDER, te)) if d is None]
    if missing:
        raise UserError(f"{name}: {missing} with class folders not found under {r} "
                        f"(expected layout: {NCT_LAYOUT})")
    tr_ids, tr_labels = _class_folder_records(tr, NCT_FOLDERS, prefix=f"{tr.name}/")
    te_ids, te_labels = _class_folder_records(te, NCT_FOLDERS, prefix=f"{te.name}/")
    _require_images(name, tr, NCT_FOLDERS, tr_labels)
    _require_images(name, te, NCT_FOLDERS, te_labels)
    is_val = _carve_val(np.array(tr_labels), val_frac, split_seed)
    records = [Record(id=i, label=y, split="val" if v else "train")
               for i, y, v in zip(tr_ids, tr_labels, is_val)]
    records += [Record(id=i, label=y, split="test") for i, y in zip(te_ids, te_labels)]
    roots = {tr.name: str(tr), te.name: str(te)}
    fp = _hash(files_fingerprint(str(tr), [i.partition("/")[2] for i in tr_ids]),
               files_fingerprint(str(te), [i.partition("/")[2] for i in te_ids]),
               tr.name, te.name)
    return DataSet(name=name, classnames=list(NCT_CLASSES), records=records,
                   loader=_PrefixLoader(roots), fingerprint=fp, root=str(r),
                   meta={"folders": list(NCT_FOLDERS), "roots": roots,
                         "split": f"train {tr.name} (val {val_frac} carved, seed {split_seed}); "
                                  f"test {te.name}"})


def build_crc_val_he_7k(root, split_seed: int = 0, val_frac: float = 0.2, test_frac: float = 0.3,
                        **unknown) -> DataSet:
    name = "crc-val-he-7k"
    _check_options(name, unknown, ["split_seed", "val_frac", "test_frac"])
    r = _root(root, name)
    d = _locate_class_dir(r, NCT_FOLDERS, name, CRC7K_LAYOUT, prefer=[NCT_TEST_FOLDER])
    ids, labels = _class_folder_records(d, NCT_FOLDERS)
    _require_images(name, d, NCT_FOLDERS, labels)
    splits = stratified_split(np.array(labels), val_frac=val_frac, test_frac=test_frac,
                              seed=split_seed)
    records = [Record(id=i, label=y, split=s) for i, y, s in zip(ids, labels, splits)]
    base = str(d)
    return DataSet(name=name, classnames=list(NCT_CLASSES), records=records,
                   loader=_FileLoader(base), fingerprint=files_fingerprint(base, ids), root=base,
                   meta={"folders": list(NCT_FOLDERS),
                         "split": f"stratified val {val_frac} test {test_frac} seed {split_seed}"})


# --------------------------------------------------------------------------------------------
# MedMNIST: <root>/<flavour>.npz or <root>/<flavour>_{64,128,224}.npz
# --------------------------------------------------------------------------------------------

MEDMNIST_SIZES = (28, 64, 128, 224)
_MEDMNIST_OTHER = {"pneumoniamnist": "radiology", "breastmnist": "generic", "octmnist": "generic",
                   "retinamnist": "generic", "organamnist": "generic"}
MEDMNIST_TEMPLATES = {"bloodmnist": "cytology", "dermamnist": "dermatology",
                      "pathmnist": "histopathology"}


def _npz_arrays(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """All arrays of an npz file and a content fingerprint. Files up to ``NPZ_IN_MEMORY_BYTES``
    are read into memory and hashed; larger ones (``pathmnist_224.npz`` is >10 GB) are unpacked
    once into ``$MEDADAPT_CACHE/npz/`` and memory-mapped, fingerprinted by name, size, mtime."""
    try:
        st = path.stat()
        if st.st_size <= NPZ_IN_MEMORY_BYTES:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            h = hashlib.sha256()
            for k in sorted(arrays):
                h.update(k.encode())
                h.update(np.ascontiguousarray(arrays[k]).tobytes())
            return arrays, h.hexdigest()
        key = _hash(path.resolve(), st.st_size, st.st_mtime_ns)[:20]
        out = cache_home() / "npz" / f"{path.stem}-{key}"
        if not (out / ".complete").exists():
            out.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(path) as zf:
                for m in zf.namelist():
                    if not m.endswith(".npy") or "/" in m or m.startswith("."):
                        continue
                    tmp = out / (m + ".part")
                    with zf.open(m) as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, 16 << 20)
                    os.replace(tmp, out / m)
            (out / ".complete").write_text(str(path))
        arrays = {p.stem: np.load(p, mmap_mode="r", allow_pickle=False)
                  for p in sorted(out.glob("*.npy"))}
        return arrays, _hash("npz", path.name, st.st_size, st.st_mtime_ns)
    except UserError:
        raise
    except Exception as e:  # BadZipFile, ValueError, OSError (disk full while unpacking) ...
        raise UserError(f"cannot read npz file {path}: {type(e).__name__}: {e}") from None


class _ArrayLoader:
    """Record id ``<key>/<index>`` -> RGB image from ``arrays[f"{key}{suffix}"]``."""

    def __init__(self, arrays: dict, suffix: str = ""):
        self.arrays = arrays
        self.suffix = suffix

    def __call__(self, r: Record) -> Image.Image:
        key, _, i = r.id.rpartition("/")
        return array_to_rgb(self.arrays[key + self.suffix][int(i)])


def medmnist_from_npz(path: Path, flavour: str) -> DataSet:
    arrays, fp = _npz_arrays(path)
    names = MEDMNIST_CLASSES[flavour]
    records = npz_records(path, arrays)
    bad = next((r for r in records if not 0 <= r.label < len(names)), None)
    if bad is not None:
        raise UserError(f"{path}: {bad.split}_labels outside 0..{len(names) - 1}; is this really "
                        f"{flavour}?")
    return DataSet(name=flavour, classnames=list(names), records=records,
                   loader=_ArrayLoader(arrays, "_images"), fingerprint=fp,
                   root=str(path.parent),
                   meta={"file": path.name,
                         "template_set": MEDMNIST_TEMPLATES.get(flavour, _MEDMNIST_OTHER.get(flavour, "generic"))})


def _medmnist_builder(flavour: str):
    def build(root, size: int | None = None, **unknown) -> DataSet:
        _check_options(flavour, unknown, ["size"])
        r = _root(root, flavour, file_ok=True)
        if r.is_file():
            path = r
        else:
            def fname(sz):
                return f"{flavour}.npz" if sz == 28 else f"{flavour}_{sz}.npz"
            if size is not None and int(size) not in MEDMNIST_SIZES:
                raise UserError(f"{flavour}: size must be one of {MEDMNIST_SIZES}, got {size}")
            order = [int(size)] if size is not None else [28, 224, 128, 64]
            found = [r / fname(s) for s in order if (r / fname(s)).is_file()]
            if not found:
                want = " or ".join(fname(s) for s in order)
                raise UserError(f"{flavour}: {want} not found in {r} (download from "
                                "https://zenodo.org/records/10519652)")
            path = found[0]
        return medmnist_from_npz(path, flavour)
    return build


def _medmnist_files(flavour: str, md5: dict[int, str]) -> list[dict]:
    out = []
    for sz in (28, 224):
        fn = f"{flavour}.npz" if sz == 28 else f"{flavour}_{sz}.npz"
        out.append({"url": f"https://zenodo.org/records/10519652/files/{fn}?download=1",
                    "sha256": None, "md5": md5[sz], "filename": fn, "extract": False,
                    "optional": sz != 28})
    return out


# --------------------------------------------------------------------------------------------
# KIMIA Path960: one folder of images named <letter><number>.tif, letters A..T
# --------------------------------------------------------------------------------------------

KIMIA_CLASSES = [chr(ord("A") + i) for i in range(20)]
_KIMIA_RE = re.compile(r"^([A-Ta-t])(\d+)\.(tif|tiff|png|jpg|jpeg|bmp)$", re.IGNORECASE)


def build_kimia_path960(root, split_seed: int = 0, val_frac: float = 0.2, test_frac: float = 0.3,
                        **unknown) -> DataSet:
    name = "kimia-path960"
    _check_options(name, unknown, ["split_seed", "val_frac", "test_frac"])
    r = _root(root, name)
    found: dict[tuple[str, int], Path] = {}
    for dirpath, dirnames, filenames in os.walk(r):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if len(Path(dirpath).relative_to(r).parts) > SEARCH_DEPTH:
            dirnames[:] = []
            continue
        for fn in sorted(filenames):
            m = _KIMIA_RE.match(fn)
            if not m:
                continue
            key = (m.group(1).upper(), int(m.group(2)))
            p = Path(dirpath) / fn
            if key in found:
                raise UserError(f"{name}: image {key[0]}{key[1]} appears twice ({found[key]} and "
                                f"{p}); keep one copy")
            found[key] = p
    if not found:
        raise UserError(f"{name}: no images named like A1.tif ... T48.tif under {r} "
                        "(expected layout: one folder of 960 images <letter A-T><number>.tif)")
    letters = {k[0] for k in found}
    absent = [c for c in KIMIA_CLASSES if c not in letters]
    if absent:
        raise UserError(f"{name}: no images for classes {absent} under {r}")
    keys = sorted(found)
    base = Path(os.path.commonpath([str(found[k].parent) for k in keys]))
    ids = [found[k].relative_to(base).as_posix() for k in keys]
    labels = [KIMIA_CLASSES.index(k[0]) for k in keys]
    splits = stratified_split(np.array(labels), val_frac=val_frac, test_frac=test_frac,
                              seed=split_seed)
    records = [Record(id=i, label=y, split=s) for i, y, s in zip(ids, labels, splits)]
    return DataSet(name=name, classnames=list(KIMIA_CLASSES), records=records,
                   loader=_FileLoader(str(base)), fingerprint=files_fingerprint(str(base), ids),
                   root=str(base),
                   meta={"split": f"stratified val {val_frac} test {test_frac} seed {split_seed}"})


# --------------------------------------------------------------------------------------------
# LC25000: lung_colon_image_set/{colon_image_sets,lung_image_sets}/<class>/*.jpeg
# --------------------------------------------------------------------------------------------

LC25000_FOLDERS = ["colon_image_sets/colon_aca", "colon_image_sets/colon_n",
                   "lung_image_sets/lung_aca", "lung_image_sets/lung_n",
                   "lung_image_sets/lung_scc"]
LC25000_CLASSES = ["colon adenocarcinoma", "benign colon tissue", "lung adenocarcinoma",
                   "benign lung tissue", "lung squamous cell carcinoma"]
LC25000_LAYOUT = ("lung_colon_image_set/colon_image_sets/{colon_aca,colon_n}/*.jpeg and "
                  "lung_colon_image_set/lung_image_sets/{lung_aca,lung_n,lung_scc}/*.jpeg")


def build_lc25000(root, split_seed: int = 0, val_frac: float = 0.2, test_frac: float = 0.3,
                  **unknown) -> DataSet:
    name = "lc25000"
    _check_options(name, unknown, ["split_seed", "val_frac", "test_frac"])
    r = _root(root, name)

    def ok(d: Path) -> bool:
        return all((d / f).is_dir() for f in LC25000_FOLDERS)

    d = _find_dir(r, ok)
    if d is None:
        raise UserError(f"{name}: class folders not found under {r} (expected layout: "
                        f"{LC25000_LAYOUT})")
    ids, labels = _class_folder_records(d, LC25000_FOLDERS)
    _require_images(name, d, LC25000_FOLDERS, labels)
    splits = stratified_split(np.array(labels), val_frac=val_frac, test_frac=test_frac,
                              seed=split_seed)
    records = [Record(id=i, label=y, split=s) for i, y, s in zip(ids, labels, splits)]
    base = str(d)
    return DataSet(name=name, classnames=list(LC25000_CLASSES), records=records,
                   loader=_FileLoader(base), fingerprint=files_fingerprint(base, ids), root=base,
                   meta={"folders": list(LC25000_FOLDERS),
                         "split": f"stratified val {val_frac} test {test_frac} seed {split_seed}"})


# --------------------------------------------------------------------------------------------
# PatchCamelyon: camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5
# --------------------------------------------------------------------------------------------

PCAM_CLASSES = ["normal lymph node tissue", "metastatic tumor tissue"]
PCAM_SPLITS = {"train": "train", "val": "valid", "test": "test"}


def _pcam_file(split: str, xy: str) -> str:
    return f"camelyonpatch_level_2_split_{PCAM_SPLITS[split]}_{xy}.h5"


def _import_h5py():
    try:
        import h5py  # noqa: F401
    except ImportError:
        raise UserError("pcam needs the h5py package to read its .h5 files: "
                        "pip install h5py") from None
    return h5py


class _H5Loader:
    """Record id ``<split>/<index>`` -> RGB image from the split's ``x`` array. Files are opened
    lazily once per process (h5py handles must not cross a fork)."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self._pid = None
        self._h: dict = {}

    def __getstate__(self):
        return {"files": self.files, "_pid": None, "_h": {}}

    def __call__(self, r: Record) -> Image.Image:
        h5py = _import_h5py()
        if self._pid != os.getpid():
            self._pid, self._h = os.getpid(), {}
        split, _, i = r.id.partition("/")
        if split not in self._h:
            try:
                self._h[split] = h5py.File(self.files[split], "r")
            except OSError as e:
                raise UserError(f"cannot read {self.files[split]}: {e}") from None
        return array_to_rgb(self._h[split]["x"][int(i)])


def build_pcam(root, **unknown) -> DataSet:
    name = "pcam"
    _check_options(name, unknown, [])
    r = _root(root, name)
    first = _pcam_file("test", "x")
    d = _find_dir(r, lambda p: (p / first).is_file() or (p / (first + ".gz")).is_file())
    if d is None:
        raise UserError(f"{name}: {first} not found under {r} (expected the six files "
                        "camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5)")
    h5py = _import_h5py()
    files, records = {}, []
    needed = [_pcam_file(s, xy) for s in PCAM_SPLITS for xy in "xy"]
    gz = [f for f in needed if not (d / f).is_file() and (d / (f + ".gz")).is_file()]
    if gz:
        raise UserError(f"{name}: {d} has compressed files {gz[:2]}...; decompress them first "
                        f"(gunzip {d}/*.h5.gz)")
    missing = [f for f in needed if not (d / f).is_file()]
    if missing:
        raise UserError(f"{name}: missing {missing} in {d}")
    for split in PCAM_SPLITS:
        fx, fy = d / _pcam_file(split, "x"), d / _pcam_file(split, "y")
        try:
            with h5py.File(fy, "r") as f:
                y = np.asarray(f["y"][:]).reshape(-1).astype(np.int64)
            with h5py.File(fx, "r") as f:
                n = f["x"].shape[0]
        except (OSError, KeyError) as e:
            raise UserError(f"{name}: cannot read {fx.name}/{fy.name}: {e}") from None
        if n != len(y):
            raise UserError(f"{name}: {fx.name} has {n} images but {fy.name} {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() > 1):
            raise UserError(f"{name}: {fy.name} labels must be 0/1")
        files[split] = str(fx)
        records += [Record(id=f"{split}/{i}", label=int(v), split=split) for i, v in enumerate(y)]
    return DataSet(name=name, classnames=list(PCAM_CLASSES), records=records,
                   loader=_H5Loader(files), fingerprint=files_fingerprint(str(d), needed),
                   root=str(d), meta={"split": "official train / valid / test"})


# --------------------------------------------------------------------------------------------
# PanNuke: Fold N/images/foldN/{images,types}.npy and Fold N/masks/foldN/masks.npy
# --------------------------------------------------------------------------------------------

PANNUKE_TISSUES = ["Adrenal_gland", "Bile-duct", "Bladder", "Breast", "Cervix", "Colon",
                   "Esophagus", "HeadNeck", "Kidney", "Liver", "Lung", "Ovarian", "Pancreatic",
                   "Prostate", "Skin", "Stomach", "Testis", "Thyroid", "Uterus"]
PANNUKE_TISSUE_CLASSES = ["adrenal gland", "bile duct", "bladder", "breast", "cervix", "colon",
                          "esophagus", "head and neck", "kidney", "liver", "lung", "ovary",
                          "pancreas", "prostate", "skin", "stomach", "testis", "thyroid",
                          "uterus"]
PANNUKE_CLASSES = ["benign tissue", "malignant tissue"]
PANNUKE_LAYOUT = ("ROOT/Fold N/images/foldN/{images,types}.npy and "
                  "ROOT/Fold N/masks/foldN/masks.npy for N = 1, 2, 3")
_FOLD_RE = re.compile(r"fold[\s_-]*(\d+)", re.IGNORECASE)


def _pannuke_folds(r: Path) -> dict[int, dict[str, Path]]:
    folds: dict[int, dict[str, Path]] = {}
    masks: dict[int, Path] = {}
    for dirpath, dirnames, filenames in os.walk(r):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(r)
        if len(rel.parts) > SEARCH_DEPTH + 1:
            dirnames[:] = []
            continue
        found = (_FOLD_RE.search(part) for part in (r.name, *rel.parts))
        nums = [int(m.group(1)) for m in found if m]
        if not nums:
            continue
        n = nums[-1]
        if "masks.npy" in filenames:
            masks.setdefault(n, Path(dirpath) / "masks.npy")
        if "images.npy" in filenames:
            if "types.npy" not in filenames:
                raise UserError(f"pannuke: {dirpath} has images.npy but no types.npy")
            if n in folds:
                raise UserError(f"pannuke: fold {n} found twice ({folds[n]['images'].parent} and "
                                f"{dirpath})")
            folds[n] = {"images": Path(dirpath) / "images.npy",
                        "types": Path(dirpath) / "types.npy"}
    for n, m in masks.items():
        if n in folds:
            folds[n]["masks"] = m
    return folds


def _neoplastic_counts(masks_path: Path) -> np.ndarray:
    """Number of neoplastic nuclei (distinct instance ids in mask channel 0) per patch, cached
    in ``$MEDADAPT_CACHE/pannuke`` because it reads the whole (multi-GB) masks.npy once."""
    st = masks_path.stat()
    key = _hash(masks_path.resolve(), st.st_size, st.st_mtime_ns, "v1")[:20]
    cache = cache_home() / "pannuke" / f"neoplastic-{key}.npy"
    if cache.exists():
        return np.load(cache)
    try:
        m = np.load(masks_path, mmap_mode="r", allow_pickle=False)
    except Exception as e:
        raise UserError(f"pannuke: cannot read {masks_path}: {type(e).__name__}: {e}") from None
    if m.ndim != 4 or m.shape[-1] < 1:
        raise UserError(f"pannuke: {masks_path} must have shape (N, H, W, 6), got {m.shape}")
    counts = np.zeros(len(m), dtype=np.int32)
    for i in range(len(m)):
        ids = np.unique(np.asarray(m[i, :, :, 0]))
        counts[i] = int((ids > 0).sum())
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".part.npy")
    np.save(tmp, counts)
    os.replace(tmp, cache)
    return counts


class _NpyLoader:
    """Record id ``fold<N>/<index>`` -> RGB image from that fold's images.npy (memory-mapped
    lazily, once per process)."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self._arrays: dict = {}

    def __getstate__(self):
        return {"files": self.files, "_arrays": {}}

    def __call__(self, r: Record) -> Image.Image:
        key, _, i = r.id.partition("/")
        if key not in self._arrays:
            try:
                self._arrays[key] = np.load(self.files[key], mmap_mode="r", allow_pickle=False)
            except Exception as e:
                raise UserError(f"cannot read {self.files[key]}: {type(e).__name__}: {e}") from None
        return array_to_rgb(np.asarray(self._arrays[key][int(i)]))


def _pannuke_builder(task: str):
    dsname = "pannuke" if task == "malignancy" else "pannuke-tissue"

    def build(root, train_fold: int = 1, val_fold: int | None = 2, test_fold: int = 3,
              min_neoplastic: int = 1, **unknown) -> DataSet:
        valid = ["train_fold", "val_fold", "test_fold"]
        if task == "malignancy":
            valid.append("min_neoplastic")
        _check_options(dsname, unknown, valid)
        r = _root(root, dsname)
        folds = _pannuke_folds(r)
        plan = [(f, s) for f, s in ((train_fold, "train"), (val_fold, "val"), (test_fold, "test"))
                if f is not None]
        if len({f for f, _ in plan}) != len(plan):
            raise UserError(f"{dsname}: train/val/test folds must differ, got {plan}")
        absent = [f for f, _ in plan if int(f) not in folds]
        if absent:
            raise UserError(f"{dsname}: fold(s) {absent} not found under {r} (found "
                            f"{sorted(folds) or 'none'}; expected layout: {PANNUKE_LAYOUT})")
        records, files, used = [], {}, []
        for f, split in plan:
            paths = folds[int(f)]
            try:
                types = np.load(paths["types"], allow_pickle=False)
                n_img = np.load(paths["images"], mmap_mode="r", allow_pickle=False).shape[0]
            except Exception as e:
                raise UserError(f"{dsname}: cannot read fold {f} ({paths['images'].parent}): "
                                f"{type(e).__name__}: {e}") from None
            types = [str(t) for t in types.reshape(-1)]
            if len(types) != n_img:
                raise UserError(f"{dsname}: fold {f} has {n_img} images but {len(types)} types")
            unknown_t = sorted(set(types) - set(PANNUKE_TISSUES))
            if unknown_t:
                raise UserError(f"{dsname}: fold {f} has unknown tissue types {unknown_t}; "
                                f"known: {PANNUKE_TISSUES}")
            if task == "malignancy":
                if "masks" not in paths:
                    raise UserError(f"{dsname}: fold {f} has no masks.npy (benign / malignant "
                                    f"labels come from its neoplastic channel; expected layout: "
                                    f"{PANNUKE_LAYOUT}); use pannuke-tissue for tissue types")
                counts = _neoplastic_counts(paths["masks"])
                if len(counts) != n_img:
                    raise UserError(f"{dsname}: fold {f} masks.npy and images.npy differ in length")
                labels = [int(c >= int(min_neoplastic)) for c in counts]
                used.append(paths["masks"])
            else:
                labels = [PANNUKE_TISSUES.index(t) for t in types]
            key = f"fold{int(f)}"
            files[key] = str(paths["images"])
            used += [paths["images"], paths["types"]]
            records += [Record(id=f"{key}/{i}", label=y, split=split, domain=t)
                        for i, (y, t) in enumerate(zip(labels, types))]
        classnames = PANNUKE_CLASSES if task == "malignancy" else PANNUKE_TISSUE_CLASSES
        rel = [os.path.relpath(p, r) for p in used]
        fp = _hash(files_fingerprint(str(r), rel), task,
                   min_neoplastic if task == "malignancy" else "")
        meta = {"split": f"train fold {train_fold}, val fold {val_fold}, test fold {test_fold}",
                "domain_names": dict(zip(PANNUKE_TISSUES, PANNUKE_TISSUE_CLASSES))}
        if task == "malignancy":
            meta["label_rule"] = (f"malignant tissue = at least {min_neoplastic} neoplastic "
                                  "nucleus (mask channel 0) in the patch")
        return DataSet(name=dsname, classnames=list(classnames), records=records,
                       loader=_NpyLoader(files), fingerprint=fp, root=str(r), meta=meta)
    return build


# --------------------------------------------------------------------------------------------
# Derm7pt: release_v0/meta/{meta,train_indexes,valid_indexes,test_indexes}.csv, release_v0/images
# --------------------------------------------------------------------------------------------

DERM7PT_NEVUS_MELANOMA = ["nevus", "melanoma"]
DERM7PT_FIVE = ["basal cell carcinoma", "nevus", "melanoma", "miscellaneous",
                "seborrheic keratosis"]
_DERM7PT_MISC = {"dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"}
# criterion column of meta.csv -> {value: concept name}. Every case gets one expression per
# criterion ("absent" included), named as in the shipped hierarchy hierarchies/derm7pt.yaml.
DERM7PT_CRITERIA: dict[str, dict[str, str]] = {
    "pigment_network": {"absent": "absent pigment network",
                        "typical": "typical pigment network",
                        "atypical": "atypical pigment network"},
    "streaks": {"absent": "absent streaks", "regular": "regular streaks",
                "irregular": "irregular streaks"},
    "pigmentation": {"absent": "absent pigmentation",
                     "diffuse regular": "diffuse regular pigmentation",
                     "localized regular": "localized regular pigmentation",
                     "diffuse irregular": "diffuse irregular pigmentation",
                     "localized irregular": "localized irregular pigmentation"},
    "regression_structures": {"absent": "absent regression structures",
                              "blue areas": "blue areas of regression",
                              "white areas": "white areas of regression",
                              "combinations": "blue and white areas of regression"},
    "dots_and_globules": {"absent": "absent dots and globules",
                          "regular": "regular dots and globules",
                          "irregular": "irregular dots and globules"},
    "blue_whitish_veil": {"absent": "absent blue-whitish veil", "present": "blue-whitish veil"},
    "vascular_structures": {"absent": "absent vascular structures",
                            "arborizing": "arborizing vessels", "comma": "comma vessels",
                            "hairpin": "hairpin vessels",
                            "within regression": "vessels within regression",
                            "wreath": "wreath vessels", "dotted": "dotted vessels",
                            "linear irregular": "linear irregular vessels"},
}
DERM7PT_LAYOUT = ("release_v0/meta/{meta.csv,train_indexes.csv,valid_indexes.csv,"
                  "test_indexes.csv} and release_v0/images/<folder>/<image>.jpg")


def _derm7pt_class(diag: str, classes: list[str]) -> int | None:
    d = diag.strip().lower()
    if d.startswith("melanoma"):
        group = "melanoma"
    elif d.endswith("nevus"):
        group = "nevus"
    elif d == "basal cell carcinoma":
        group = "basal cell carcinoma"
    elif d == "seborrheic keratosis":
        group = "seborrheic keratosis"
    elif d in _DERM7PT_MISC:
        group = "miscellaneous"
    else:
        return -1
    return classes.index(group) if group in classes else None


def build_derm7pt(root, classes: str = "nevus-melanoma", image: str = "derm",
                  **unknown) -> DataSet:
    """Derm7pt with its official train / valid / test index files. ``classes``: ``nevus-melanoma``
    (the SCALE protocol; other diagnoses are left out) or ``five`` (derm7pt's grouping: BCC,
    nevus, melanoma, miscellaneous, seborrheic keratosis). ``image``: ``derm`` (dermoscopic) or
    ``clinic``. ``Record.concepts`` holds the lesion's expression of each of the seven criteria
    (``"absent ..."`` included), named as in the shipped ``derm7pt`` hierarchy."""
    name = "derm7pt"
    _check_options(name, unknown, ["classes", "image"])
    if classes not in ("nevus-melanoma", "five"):
        raise UserError(f"{name}: classes must be 'nevus-melanoma' or 'five', got {classes!r}")
    if image not in ("derm", "clinic"):
        raise UserError(f"{name}: image must be 'derm' or 'clinic', got {image!r}")
    r = _root(root, name)
    d = _find_dir(r, lambda p: (p / "meta" / "meta.csv").is_file())
    if d is None:
        raise UserError(f"{name}: meta/meta.csv not found under {r} (expected layout: "
                        f"{DERM7PT_LAYOUT})")
    meta_csv = d / "meta" / "meta.csv"
    with open(meta_csv, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        rows = list(reader)
    need = {"diagnosis", image, *DERM7PT_CRITERIA}
    if not need <= cols:
        raise UserError(f"{meta_csv}: missing columns {sorted(need - cols)}")
    split_of: dict[int, str] = {}
    for split, fn in (("train", "train_indexes.csv"), ("val", "valid_indexes.csv"),
                      ("test", "test_indexes.csv")):
        p = d / "meta" / fn
        if not p.is_file():
            raise UserError(f"{name}: official split file {p} not found")
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "indexes" not in (reader.fieldnames or []):
                raise UserError(f"{p}: needs a column 'indexes'")
            for lineno, row in enumerate(reader, start=2):
                try:
                    i = int(row["indexes"])
                except (TypeError, ValueError):
                    raise UserError(f"{p}:{lineno}: not an integer index: {row['indexes']!r}") from None
                if not 0 <= i < len(rows):
                    raise UserError(f"{p}:{lineno}: index {i} outside meta.csv (0..{len(rows) - 1})")
                if i in split_of:
                    raise UserError(f"{p}:{lineno}: case {i} is also in the {split_of[i]} split")
                split_of[i] = split
    names = DERM7PT_NEVUS_MELANOMA if classes == "nevus-melanoma" else DERM7PT_FIVE
    records, skipped = [], 0
    for i, row in enumerate(rows):
        if i not in split_of:
            skipped += 1
            continue
        c = _derm7pt_class(row["diagnosis"], names)
        if c == -1:
            if classes == "five":
                raise UserError(f"{meta_csv}:{i + 2}: unknown diagnosis {row['diagnosis']!r}")
            c = None
        if c is None:
            skipped += 1
            continue
        concepts = []
        for crit, values in DERM7PT_CRITERIA.items():
            v = (row.get(crit) or "").strip().lower()
            if v not in values:
                raise UserError(f"{meta_csv}:{i + 2}: unknown {crit} value {row.get(crit)!r}; "
                                f"expected one of {sorted(values)}")
            concepts.append(values[v])
        records.append(Record(id=f"images/{row[image].strip()}", label=c, split=split_of[i],
                              concepts=tuple(concepts)))
    if not records:
        raise UserError(f"{name}: no cases of classes {names} in {meta_csv}")
    base = str(d)
    fp = _hash(files_fingerprint(base, ["meta/meta.csv", "meta/train_indexes.csv",
                                        "meta/valid_indexes.csv", "meta/test_indexes.csv"]
                                 + [r_.id for r_ in records]), classes, image)
    groups = {crit: list(v.values()) for crit, v in DERM7PT_CRITERIA.items()}
    return DataSet(name=name, classnames=list(names), records=records, loader=_FileLoader(base),
                   fingerprint=fp, root=base,
                   meta={"concept_groups": groups, "image": image, "classes": classes,
                         "cases_left_out": skipped, "split": "official index files"})


# --------------------------------------------------------------------------------------------
# BCCD single cells: BCCD/{Annotations,JPEGImages,ImageSets/Main} (Pascal VOC), boxes cropped
# --------------------------------------------------------------------------------------------

BCCD_LABELS = {"RBC": 0, "WBC": 1, "Platelets": 2}
BCCD_CLASSES = ["red blood cell", "white blood cell", "platelet"]
BCCD_LAYOUT = "BCCD/{Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/{train,val,test}.txt}"


class _CropLoader:
    """Record id ``<image stem>/<object index>`` -> the box cropped from its JPEG, done lazily
    with a small cache of decoded source images (the records of one image are contiguous)."""

    def __init__(self, base: str, boxes: dict[str, tuple[str, tuple[int, int, int, int]]],
                 cache_size: int = 8):
        self.base, self.boxes, self.cache_size = base, boxes, cache_size
        self._cache: OrderedDict = OrderedDict()

    def __getstate__(self):
        return {"base": self.base, "boxes": self.boxes, "cache_size": self.cache_size,
                "_cache": OrderedDict()}

    def __call__(self, r: Record) -> Image.Image:
        rel, box = self.boxes[r.id]
        img = self._cache.get(rel)
        if img is None:
            img = open_rgb(os.path.join(self.base, rel))
            self._cache[rel] = img
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(rel)
        x1, y1, x2, y2 = box
        x1, y1 = max(0, x1), max(0, y1)
        x2, y2 = min(img.width, x2), min(img.height, y2)
        if x2 - x1 < 1 or y2 - y1 < 1:
            raise UserError(f"bccd-cells: box of {r.id} lies outside its image {rel}")
        return img.crop((x1, y1, x2, y2))


def build_bccd_cells(root, margin: int = 0, min_size: int = 2, **unknown) -> DataSet:
    """One record per annotated box (RBC / WBC / Platelets) of the official ImageSets/Main
    splits. ``margin`` pixels of context are added around each box; boxes narrower or lower than
    ``min_size`` pixels (BCCD has two zero-size boxes) are left out and counted in
    ``meta['skipped_boxes']``."""
    name = "bccd-cells"
    _check_options(name, unknown, ["margin", "min_size"])
    r = _root(root, name)
    d = _find_dir(r, lambda p: (p / "Annotations").is_dir() and (p / "JPEGImages").is_dir())
    if d is None:
        raise UserError(f"{name}: Annotations/ and JPEGImages/ not found under {r} "
                        f"(expected layout: {BCCD_LAYOUT})")
    split_of: dict[str, str] = {}
    for split in ("train", "val", "test"):
        p = d / "ImageSets" / "Main" / f"{split}.txt"
        if not p.is_file():
            raise UserError(f"{name}: official split file {p} not found")
        for line in p.read_text(encoding="utf-8").splitlines():
            stem = line.strip()
            if stem:
                if stem in split_of and split_of[stem] != split:
                    raise UserError(f"{p}: {stem} is also in the {split_of[stem]} split")
                split_of[stem] = split
    margin, min_size = int(margin), int(min_size)
    records, boxes, files, skipped = [], {}, [], 0
    for stem in sorted(split_of):
        xml = d / "Annotations" / f"{stem}.xml"
        try:
            ann = ET.parse(xml).getroot()
        except FileNotFoundError:
            raise UserError(f"{name}: annotation {xml} listed in ImageSets/Main not found") from None
        except ET.ParseError as e:
            raise UserError(f"{name}: corrupt annotation {xml}: {e}") from None
        fn = (ann.findtext("filename") or f"{stem}.jpg").strip()
        rel = f"JPEGImages/{fn}"
        files += [f"Annotations/{stem}.xml", rel]
        w = int(float(ann.findtext("size/width") or 1e9))
        h = int(float(ann.findtext("size/height") or 1e9))
        for k, obj in enumerate(ann.findall("object")):
            cls = (obj.findtext("name") or "").strip()
            if cls not in BCCD_LABELS:
                raise UserError(f"{name}: {xml}: unknown cell type {cls!r}; expected "
                                f"{sorted(BCCD_LABELS)}")
            b = obj.find("bndbox")
            try:
                x1, y1, x2, y2 = (int(round(float(b.findtext(t))))
                                  for t in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                raise UserError(f"{name}: {xml}: object {k} has no valid bndbox") from None
            x1, y1 = max(0, x1 - margin), max(0, y1 - margin)
            x2, y2 = min(w, x2 + margin), min(h, y2 + margin)
            if x2 - x1 < min_size or y2 - y1 < min_size:
                skipped += 1
                continue
            rid = f"{stem}/{k:03d}"
            boxes[rid] = (rel, (x1, y1, x2, y2))
            records.append(Record(id=rid, label=BCCD_LABELS[cls], split=split_of[stem]))
    base = str(d)
    fp = _hash(files_fingerprint(base, ["ImageSets/Main/train.txt", "ImageSets/Main/val.txt",
                                        "ImageSets/Main/test.txt"] + files), margin, min_size)
    return DataSet(name=name, classnames=list(BCCD_CLASSES), records=records,
                   loader=_CropLoader(base, boxes), fingerprint=fp, root=base,
                   meta={"skipped_boxes": skipped, "source_images": len(split_of),
                         "margin": margin, "split": "official ImageSets/Main"})


# --------------------------------------------------------------------------------------------
# download with checksum verification
# --------------------------------------------------------------------------------------------

def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, spec: dict) -> tuple[bool, str]:
    """(ok, what was checked). A file without a known checksum is 'ok, unverified'."""
    for algo in ("sha256", "md5"):
        want = spec.get(algo)
        if want:
            got = file_digest(path, algo)
            if got.lower() != want.lower():
                return False, f"{algo} mismatch: expected {want}, got {got}"
            return True, f"{algo} verified"
    return True, "unverified (no checksum known)"


def _fetch(url: str, out: Path) -> None:
    from tqdm.auto import tqdm
    tmp = out.with_name(out.name + ".part")
    req = urllib.request.Request(url, headers={"User-Agent": "medadapt"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp, open(tmp, "wb") as fh:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=out.name, disable=None) as bar:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    fh.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def _safe_extract(archive: Path, dest: Path) -> None:
    dest_r = dest.resolve()
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for m in zf.namelist():
                target = (dest / m).resolve()
                if target != dest_r and dest_r not in target.parents:
                    raise UserError(f"refusing to extract {archive.name}: member {m!r} would land "
                                    f"outside {dest}")
            zf.extractall(dest)
    elif name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                for m in tf.getmembers():
                    target = (dest / m.name).resolve()
                    if target != dest_r and dest_r not in target.parents:
                        raise UserError(f"refusing to extract {archive.name}: member {m.name!r} "
                                        f"would land outside {dest}")
                tf.extractall(dest)
    elif name.endswith(".gz"):
        with gzip.open(archive, "rb") as src, open(dest / archive.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
    else:
        raise UserError(f"do not know how to extract {archive.name}")


def download_files(files: Sequence[dict], dest: str | Path, manual: str = "",
                   name: str = "data set") -> Path:
    """Download each ``{"url", "filename", "sha256"|"md5", "extract"}`` into ``dest``, verify its
    checksum, and unpack archives (zip, tar, gz). Files already present and verified are not
    fetched again; an archive unpacked before (marker file) is not unpacked again."""
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    how = f"; to get it by hand into {dest}: {manual}" if manual else ""
    for spec in files:
        out = dest / spec["filename"]
        marker = dest / f".{spec['filename']}.extracted"
        extract = spec.get("extract")
        if extract is None:
            extract = out.name.lower().endswith((".zip", ".tar", ".tar.gz", ".tgz", ".gz"))
        if extract and marker.exists():
            continue
        if out.exists():
            ok, what = _verify(out, spec)
            if not ok:
                log.warning("%s: existing %s fails its checksum (%s); downloading again",
                            name, out, what)
                out.unlink()
        if not out.exists():
            try:
                _fetch(spec["url"], out)
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", None) or e
                raise UserError(f"{name}: download of {spec['url']} failed ({reason}){how}") from None
            ok, what = _verify(out, spec)
            if not ok:
                bad = out.with_name(out.name + ".bad")
                os.replace(out, bad)
                raise UserError(f"{name}: {out.name} {what} (kept as {bad.name}); the download is "
                                f"corrupt or changed upstream{how}")
            if what.startswith("unverified"):
                log.warning("%s: %s downloaded %s", name, out.name, what)
        if extract:
            try:
                _safe_extract(out, dest)
            except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
                raise UserError(f"{name}: cannot unpack {out}: {type(e).__name__}: {e}{how}") from None
            marker.write_text(spec["url"])
    return dest


def download(name: str, dest: str | Path | None = None, include_optional: bool = False,
             only: Sequence[str] | None = None) -> Path:
    """Download a registered data set into ``dest`` (default ``$MEDADAPT_DATA/<name>``, where
    ``load_dataset(name)`` looks) with checksum verification. ``only`` picks files by name (e.g.
    ``["bloodmnist_224.npz"]``); otherwise every non-optional file. Data sets without a direct
    download raise ``UserError`` with the manual instructions."""
    info = DATASETS.get(name)
    target = Path(dest).expanduser() if dest is not None else data_home() / info.name
    if not info.files:
        raise UserError(f"{name} has no direct download; to get it by hand into {target}: "
                        f"{info.manual or info.homepage}")
    files = list(info.files)
    if only is not None:
        valid = [f["filename"] for f in files]
        bad = [o for o in only if o not in valid]
        if bad:
            raise UserError(f"{name}: no downloadable file(s) {bad}; valid: {', '.join(valid)}")
        files = [f for f in files if f["filename"] in only]
    elif not include_optional:
        files = [f for f in files if not f.get("optional")]
    return download_files(files, target, manual=info.manual, name=name)


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------

_KATHER16_CITE = ("Kather JN, Weis CA, Bianconi F, Melchers SM, Schad LR, Gaiser T, Marx A, "
                  "Zollner FG. Multi-class texture analysis in colorectal cancer histology. "
                  "Sci Rep 6, 27988 (2016). doi:10.1038/srep27988")
_NCT_CITE = ("Kather JN, Krisam J, Charoentong P, et al. Predicting survival from colorectal "
             "cancer histology slides using deep learning: a retrospective multicenter study. "
             "PLoS Med 16(1): e1002730 (2019). Data: Kather JN, Halama N, Marx A. Zenodo (2018). "
             "doi:10.5281/zenodo.1214456")
_MEDMNIST_CITE = ("Yang J, Shi R, Wei D, Liu Z, Zhao L, Ke B, Pfister H, Ni B. MedMNIST v2 - a "
                  "large-scale lightweight benchmark for 2D and 3D biomedical image "
                  "classification. Sci Data 10, 41 (2023)")
_KATHER16_ZIP = {"url": "https://zenodo.org/records/53169/files/"
                        "Kather_texture_2016_image_tiles_5000.zip?download=1",
                 # sha256 (258,098,431 bytes) as recorded by tensorflow-datasets' checksums file
                 "sha256": "936d0b95ae0f04f1f7b18a2b7e8c55776c3e887d102f645bcee752d1a6626a32",
                 "filename": "Kather_texture_2016_image_tiles_5000.zip"}
_CRC7K_ZIP = {"url": "https://zenodo.org/records/1214456/files/CRC-VAL-HE-7K.zip?download=1",
              "sha256": None, "md5": "2fd1651b4f94ebd818ebf90ad2b6ce06",  # Zenodo's md5
              "filename": "CRC-VAL-HE-7K.zip"}
_NCT100K_ZIP = {"url": "https://zenodo.org/records/1214456/files/NCT-CRC-HE-100K.zip?download=1",
                "sha256": None, "md5": "6fd702d11df6292bc054397ae038a464",  # Zenodo's md5
                "filename": "NCT-CRC-HE-100K.zip"}


# sha256 of PCam's .h5.gz files as recorded by tensorflow-datasets (identical in torchvision's
# prototype PCAM resources); unpacked to .h5 after verification
PCAM_SHA256 = {
    "camelyonpatch_level_2_split_train_x.h5.gz":
        "d619e741468a7ab35c7e4a75e6821b7e7e6c9411705d45708f2a0efc8960656c",
    "camelyonpatch_level_2_split_train_y.h5.gz":
        "b74126d2c01b20d3661f9b46765d29cf4e4fba6faba29c8e0d09d406331ab75a",
    "camelyonpatch_level_2_split_valid_x.h5.gz":
        "f82ee1670d027b4ec388048d9eabc2186b77c009655dae76d624c0ecb053ccb2",
    "camelyonpatch_level_2_split_valid_y.h5.gz":
        "ce1ae30f08feb468447971cfd0472e7becd0ad96d877c64120c72571439ae48c",
    "camelyonpatch_level_2_split_test_x.h5.gz":
        "79174c2201ad521602a5888be8f36ee10875f37403dd3f2086caf2182ef87245",
    "camelyonpatch_level_2_split_test_y.h5.gz":
        "0a522005fccc8bbd04c5a117bfaf81d8da2676f03a29d7499f71d0a0bd6068ef",
}
# sha256 of the PanNuke fold archives as used by the torch-em PanNuke loader
PANNUKE_SHA256 = {
    "fold_1.zip": "6e19ad380300e8ce9480f9ab6a14cc91fa4b6a511609b40e3d70bdf9c881ed0b",
    "fold_2.zip": "5bc540cc509f64b5f5a274d6e5a245527dbd3e6d3155d43555115c5d54709b07",
    "fold_3.zip": "c14d372981c42f611ebc80afad01702b89cad8c1b3089daa31931cf5a4b1a39d",
}


def _register() -> None:
    for kname in ("kather2016", "chmnist"):  # CHMNIST is the same 5,000 tiles
        DATASETS.register(kname, DatasetInfo(
            name=kname, classnames=list(KATHER16_CLASSES), build=_kather2016_builder(kname),
            modality="histopathology", organ="colorectum", license="CC BY 4.0",
            homepage="https://zenodo.org/records/53169", citation=_KATHER16_CITE,
            files=[dict(_KATHER16_ZIP)],
            manual=("download Kather_texture_2016_image_tiles_5000.zip from "
                    "https://zenodo.org/records/53169 and unzip it there"),
            template_set="histopathology", descriptions="kather2016.json"))

    DATASETS.register("nct-crc-he", DatasetInfo(
        name="nct-crc-he", classnames=list(NCT_CLASSES), build=build_nct_crc_he,
        modality="histopathology", organ="colorectum", license="CC BY 4.0",
        homepage="https://zenodo.org/records/1214456", citation=_NCT_CITE,
        files=[dict(_NCT100K_ZIP), dict(_CRC7K_ZIP)],
        manual=("download NCT-CRC-HE-100K.zip (11.7 GB) and CRC-VAL-HE-7K.zip from "
                "https://zenodo.org/records/1214456 and unzip both there"),
        template_set="histopathology", descriptions="nct-crc-he.json"))
    DATASETS.register("crc-val-he-7k", DatasetInfo(
        name="crc-val-he-7k", classnames=list(NCT_CLASSES), build=build_crc_val_he_7k,
        modality="histopathology", organ="colorectum", license="CC BY 4.0",
        homepage="https://zenodo.org/records/1214456", citation=_NCT_CITE,
        files=[dict(_CRC7K_ZIP)],
        manual=("download CRC-VAL-HE-7K.zip from https://zenodo.org/records/1214456 and "
                "unzip it there"),
        template_set="histopathology", descriptions="nct-crc-he.json"))

    # MedMNIST v3 (zenodo record 10519652); md5 values from the medmnist package's INFO table
    medmnist = {
        "bloodmnist": dict(md5={28: "7053d0359d879ad8a5505303e11de1dc",
                                224: "b718ff6835fcbdb22ba9eacccd7b2601"},
                           modality="blood smear", organ="blood",
                           license="CC BY 4.0",
                           citation=_MEDMNIST_CITE + "; Acevedo A, Merino A, Alferez S, Molina A, "
                           "Boldu L, Rodellar J. A dataset of microscopic peripheral blood cell "
                           "images for development of automatic recognition systems. Data Brief "
                           "30, 105474 (2020)"),
        "pathmnist": dict(md5={28: "a8b06965200029087d5bd730944a56c1",
                               224: "2c51a510bcdc9cf8ddb2af93af1eadec"},
                          modality="histopathology", organ="colorectum",
                          license="CC BY 4.0", citation=_MEDMNIST_CITE + "; " + _NCT_CITE),
        "dermamnist": dict(md5={28: "0744692d530f8e62ec473284d019b0c7",
                                224: "8974907d8e169bef5f5b96bc506ae45d"},
                           modality="dermoscopy", organ="skin", license="CC BY-NC 4.0",
                           citation=_MEDMNIST_CITE + "; Tschandl P, Rosendahl C, Kittler H. The "
                           "HAM10000 dataset. Sci Data 5, 180161 (2018)"),
    }
    for flavour, kw in medmnist.items():
        DATASETS.register(flavour, DatasetInfo(
            name=flavour, classnames=list(MEDMNIST_CLASSES[flavour]),
            build=_medmnist_builder(flavour), modality=kw["modality"], organ=kw["organ"],
            license=kw["license"], homepage="https://medmnist.com", citation=kw["citation"],
            files=_medmnist_files(flavour, kw["md5"]),
            manual=(f"download {flavour}.npz (28 px) or {flavour}_224.npz from "
                    "https://zenodo.org/records/10519652 into that folder"),
            template_set=MEDMNIST_TEMPLATES[flavour], descriptions=f"{flavour}.json"))

    DATASETS.register("kimia-path960", DatasetInfo(
        name="kimia-path960", classnames=list(KIMIA_CLASSES), build=build_kimia_path960,
        modality="histopathology", organ="various (20 whole-slide images)",
        license="research use (KIMIA Lab terms)",
        homepage="https://www.kaggle.com/ambarish/kimia-path-960",  # mirror of KIMIA Lab's release
        citation=("Kumar MD, Babaie M, Zhu S, Kalra S, Tizhoosh HR. A comparative study of CNN, "
                  "BoVW and LBP for classification of histopathological images. IEEE SSCI 2017"),
        manual=("download KIMIA Path960 (960 images A1.tif ... T48.tif, released by the KIMIA "
                "Lab, University of Waterloo; mirrored at "
                "https://www.kaggle.com/ambarish/kimia-path-960) and unzip it there"),
        template_set="histopathology", descriptions="kimia-path960.json"))

    DATASETS.register("lc25000", DatasetInfo(
        name="lc25000", classnames=list(LC25000_CLASSES), build=build_lc25000,
        modality="histopathology", organ="lung and colon",
        license="free for research use (authors' statement; no formal licence)",
        homepage="https://github.com/tampapath/lung_colon_image_set",
        citation=("Borkowski AA, Bui MM, Thomas LB, Wilson CP, DeLand LA, Mastorides SM. Lung "
                  "and colon cancer histopathological image dataset (LC25000). arXiv:1912.12142 "
                  "(2019)"),
        manual=("download LC25000 (lung_colon_image_set, 1.8 GB) via the link in "
                "https://github.com/tampapath/lung_colon_image_set or from Kaggle "
                "(andrewmvd/lung-and-colon-cancer-histopathological-images) and unzip it there"),
        template_set="histopathology", descriptions="lc25000.json"))

    DATASETS.register("pcam", DatasetInfo(
        name="pcam", classnames=list(PCAM_CLASSES), build=build_pcam,
        modality="histopathology", organ="lymph node (breast cancer metastases)",
        license="CC0 1.0", homepage="https://github.com/basveeling/pcam",
        citation=("Veeling BS, Linmans J, Winkens J, Cohen T, Welling M. Rotation equivariant "
                  "CNNs for digital pathology. MICCAI 2018; Ehteshami Bejnordi B et al. JAMA "
                  "318(22):2199-2210 (2017)"),
        files=[{"url": f"https://zenodo.org/records/2546921/files/{fn}?download=1",
                "sha256": h, "filename": fn} for fn, h in PCAM_SHA256.items()],
        manual=("download the six camelyonpatch_level_2_split_*.h5.gz files from "
                "https://zenodo.org/records/2546921, gunzip them there (needs pip install h5py)"),
        template_set="histopathology", descriptions="pcam.json"))

    pannuke_files = [{"url": f"https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke/{fn}",
                      "sha256": h, "filename": fn} for fn, h in PANNUKE_SHA256.items()]
    def pannuke_common() -> dict:
        return dict(
            modality="histopathology", organ="19 tissues (cross-organ)",
            license="CC BY-NC-SA 4.0",
            homepage="https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke",
            citation=("Gamper J, Koohbanani NA, Benet K, Khuram A, Rajpoot N. PanNuke: an open "
                      "pan-cancer histology dataset for nuclei instance segmentation and "
                      "classification. ECDP 2019; Gamper J et al. PanNuke dataset extension, "
                      "insights and baselines. arXiv:2003.10778 (2020)"),
            files=[dict(f) for f in pannuke_files],
            manual=("download fold_1.zip, fold_2.zip and fold_3.zip from "
                    "https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke and unzip them there"),
            template_set="histopathology")
    DATASETS.register("pannuke", DatasetInfo(
        name="pannuke", classnames=list(PANNUKE_CLASSES), build=_pannuke_builder("malignancy"),
        descriptions="pannuke.json", **pannuke_common()))
    DATASETS.register("pannuke-tissue", DatasetInfo(
        name="pannuke-tissue", classnames=list(PANNUKE_TISSUE_CLASSES),
        build=_pannuke_builder("tissue"), descriptions="pannuke-tissue.json", **pannuke_common()))

    DATASETS.register("derm7pt", DatasetInfo(
        name="derm7pt", classnames=list(DERM7PT_NEVUS_MELANOMA), build=build_derm7pt,
        modality="dermoscopy", organ="skin",
        license="research use after registration (terms at derm.cs.sfu.ca)",
        homepage="https://derm.cs.sfu.ca",
        citation=("Kawahara J, Daneshvar S, Argenziano G, Hamarneh G. Seven-point checklist and "
                  "skin lesion classification using multitask multimodal neural nets. IEEE JBHI "
                  "23(2):538-546 (2019)"),
        manual=("register at https://derm.cs.sfu.ca, download release_v0.zip and unzip it "
                "there (release_v0/meta/meta.csv, release_v0/images/)"),
        template_set="dermatology", descriptions="derm7pt.json", hierarchy="derm7pt.yaml"))

    DATASETS.register("bccd-cells", DatasetInfo(
        name="bccd-cells", classnames=list(BCCD_CLASSES), build=build_bccd_cells,
        modality="blood smear", organ="blood", license="MIT",
        homepage="https://github.com/Shenggan/BCCD_Dataset",
        citation="Shenggan. BCCD (Blood Cell Count and Detection) Dataset. GitHub (2017)",
        manual=("git clone https://github.com/Shenggan/BCCD_Dataset there (the BCCD/ folder with "
                "Annotations, JPEGImages, ImageSets/Main)"),
        template_set="cytology", descriptions="bccd-cells.json"))


_register()
