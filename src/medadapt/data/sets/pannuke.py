"""PanNuke folds: benign / malignant patches and tissue types (cross-organ)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from medadapt.data.catalog import DATASETS, DatasetInfo
from medadapt.data.dataset import DataSet, Record, files_fingerprint
from medadapt.data.sets._common import SEARCH_DEPTH, _check_options, _hash, _root
from medadapt.paths import cache_home
from medadapt.data.dataset import array_to_rgb
from medadapt.errors import UserError

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



# sha256 of the PanNuke fold archives as used by the torch-em PanNuke loader
PANNUKE_SHA256 = {
    "fold_1.zip": "6e19ad380300e8ce9480f9ab6a14cc91fa4b6a511609b40e3d70bdf9c881ed0b",
    "fold_2.zip": "5bc540cc509f64b5f5a274d6e5a245527dbd3e6d3155d43555115c5d54709b07",
    "fold_3.zip": "c14d372981c42f611ebc80afad01702b89cad8c1b3089daa31931cf5a4b1a39d",
}


def _register() -> None:
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
            template_set="histopathology", layout=PANNUKE_LAYOUT)
    DATASETS.register("pannuke", DatasetInfo(
        name="pannuke", classnames=list(PANNUKE_CLASSES), build=_pannuke_builder("malignancy"),
        descriptions="pannuke.json", **pannuke_common()))
    DATASETS.register("pannuke-tissue", DatasetInfo(
        name="pannuke-tissue", classnames=list(PANNUKE_TISSUE_CLASSES),
        build=_pannuke_builder("tissue"), descriptions="pannuke-tissue.json", **pannuke_common()))

_register()
