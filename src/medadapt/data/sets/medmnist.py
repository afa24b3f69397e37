"""MedMNIST (v2/v3): <root>/<flavour>.npz or <root>/<flavour>_{64,128,224}.npz, and the npz
record parser shared with ``npz:PATH`` files."""
from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from medadapt.data.catalog import DATASETS, DatasetInfo
from medadapt.paths import cache_home
from medadapt.data.dataset import DataSet, Record, array_to_rgb
from medadapt.data.sets._common import _check_options, _hash, _root
from medadapt.data.sets.kather import _NCT_CITE
from medadapt.errors import UserError

NPZ_IN_MEMORY_BYTES = 1 << 30  # larger MedMNIST files are unpacked once to .npy and memory-mapped

# MedMNIST label names (medmnist INFO, v2/v3), used when an npz file's stem names its flavour.
MEDMNIST_CLASSES: dict[str, list[str]] = {
    "pathmnist": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                  "normal colon mucosa", "cancer-associated stroma",
                  "colorectal adenocarcinoma epithelium"],
    "bloodmnist": ["basophil", "eosinophil", "erythroblast", "immature granulocytes",
                   "lymphocyte", "monocyte", "neutrophil", "platelet"],
    "dermamnist": ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                   "benign keratosis-like lesions", "dermatofibroma", "melanoma",
                   "melanocytic nevi", "vascular lesions"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal or benign"],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "retinamnist": ["grade 0", "grade 1", "grade 2", "grade 3", "grade 4"],
    "organamnist": ["bladder", "femur left", "femur right", "heart", "kidney left",
                    "kidney right", "liver", "lung left", "lung right", "pancreas", "spleen"],
}


def check_image_array(path: Path, split: str, imgs) -> None:
    """An npz image array must be N x H x W, N x H x W x 1/3 or channel-first N x 1/3 x H x W."""
    shape = tuple(getattr(imgs, "shape", ()))
    ok = len(shape) == 3 or (len(shape) == 4 and (shape[-1] in (1, 3, 4) or shape[1] in (1, 3, 4)))
    if not ok:
        raise UserError(f"{path}: {split}_images has shape {shape}; expected N x H x W, "
                        "N x H x W x 1/3 or N x 1/3 x H x W")
    if getattr(imgs, "dtype", np.dtype("u1")).kind not in "uifb":
        raise UserError(f"{path}: {split}_images has type {imgs.dtype}; expected numbers")


def npz_records(path: Path, arrays: dict) -> list[Record]:
    """Records of a MedMNIST-layout npz (``{split}_images`` / ``{split}_labels``), checked."""
    splits = [s for s in ("train", "val", "test") if f"{s}_images" in arrays]
    if not splits or any(f"{s}_labels" not in arrays for s in splits):
        raise UserError(f"{path}: not a MedMNIST-layout npz (needs train/val/test _images and "
                        f"_labels; found {sorted(arrays)})")
    records = []
    for s in splits:
        imgs, labels = arrays[f"{s}_images"], np.asarray(arrays[f"{s}_labels"])
        if labels.ndim == 2 and labels.shape[1] > 1:
            raise UserError(f"{path}: multi-label npz ({s}_labels shape {labels.shape}) is not "
                            "supported for single-label classification")
        if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
            raise UserError(f"{path}: {s}_labels holds non-integer values; labels must be class "
                            "indices 0..C-1")
        labels = labels.reshape(-1).astype(np.int64)
        if len(imgs) != len(labels):
            raise UserError(f"{path}: {s}_images and {s}_labels differ in length")
        neg = int((labels < 0).sum())
        if neg:
            raise UserError(f"{path}: {neg} record(s) of {s}_labels are negative (e.g. -1 for "
                            "unlabelled); labels must be class indices 0..C-1; drop those "
                            "records first")
        check_image_array(path, s, imgs)
        records += [Record(id=f"{s}/{i}", label=int(y), split=s) for i, y in enumerate(labels)]
    return records


MEDMNIST_SIZES = (28, 64, 128, 224)
_MEDMNIST_OTHER = {"pneumoniamnist": "radiology", "breastmnist": "generic", "octmnist": "generic",
                   "retinamnist": "generic", "organamnist": "generic"}
MEDMNIST_TEMPLATES = {"bloodmnist": "cytology", "dermamnist": "dermatology",
                      "pathmnist": "histopathology"}


def check_npz_file(path: Path) -> None:
    """An npz file is a zip of .npy arrays: anything else (a truncated download, an HTML error
    page, a single .npy) is refused by name instead of numpy's misleading 'pickled data' error."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except IsADirectoryError:
        raise UserError(f"npz: {path} is a folder, not an .npz file") from None
    except OSError as e:
        raise UserError(f"cannot read npz file {path}: {e.strerror or e}") from None
    if head.startswith(b"\x93NUMPY"):
        raise UserError(f"{path} is a single .npy array, not an .npz file of "
                        "{train,val,test}_images / _labels arrays")
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        what = "empty" if not head else "not a zip archive"
        raise UserError(f"{path} is not an .npz file ({what}; a truncated or failed download?)")


def _npz_arrays(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """All arrays of an npz file and a content fingerprint. Files up to ``NPZ_IN_MEMORY_BYTES``
    are read into memory and hashed; larger ones (``pathmnist_224.npz`` is >10 GB) are unpacked
    once into ``$MEDADAPT_CACHE/npz/`` and memory-mapped, fingerprinted by name, size, mtime."""
    check_npz_file(path)
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



_MEDMNIST_CITE = ("Yang J, Shi R, Wei D, Liu Z, Zhao L, Ke B, Pfister H, Ni B. MedMNIST v2 - a "
                  "large-scale lightweight benchmark for 2D and 3D biomedical image "
                  "classification. Sci Data 10, 41 (2023)")


def _register() -> None:
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
            template_set=MEDMNIST_TEMPLATES[flavour], descriptions=f"{flavour}.json",
            layout=f"{flavour}.npz (28 px) or {flavour}_{{64,128,224}}.npz"))

_register()
