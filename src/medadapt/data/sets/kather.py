"""Kather 2016 texture tiles (also registered as CHMNIST), NCT-CRC-HE-100K + CRC-VAL-HE-7K."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from medadapt.data.catalog import DATASETS, DatasetInfo
from medadapt.data.dataset import DataSet, Record, files_fingerprint, stratified_split
from medadapt.data.sets._common import (_FileLoader, _PrefixLoader, _carve_val, _check_options,
                                        _class_folder_records, _find_dir, _has_subdirs, _hash,
                                        _locate_class_dir, _require_images, _root)
from medadapt.errors import UserError

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


_KATHER16_CITE = ("Kather JN, Weis CA, Bianconi F, Melchers SM, Schad LR, Gaiser T, Marx A, "
                  "Zollner FG. Multi-class texture analysis in colorectal cancer histology. "
                  "Sci Rep 6, 27988 (2016). doi:10.1038/srep27988")
_NCT_CITE = ("Kather JN, Krisam J, Charoentong P, et al. Predicting survival from colorectal "
             "cancer histology slides using deep learning: a retrospective multicenter study. "
             "PLoS Med 16(1): e1002730 (2019). Data: Kather JN, Halama N, Marx A. Zenodo (2018). "
             "doi:10.5281/zenodo.1214456")
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


def _register() -> None:
    for kname in ("kather2016", "chmnist"):  # CHMNIST is the same 5,000 tiles
        DATASETS.register(kname, DatasetInfo(
            name=kname, classnames=list(KATHER16_CLASSES), build=_kather2016_builder(kname),
            modality="histopathology", organ="colorectum", license="CC BY 4.0",
            homepage="https://zenodo.org/records/53169", citation=_KATHER16_CITE,
            files=[dict(_KATHER16_ZIP)],
            manual=("download Kather_texture_2016_image_tiles_5000.zip from "
                    "https://zenodo.org/records/53169 and unzip it there"),
            template_set="histopathology", descriptions="kather2016.json", layout=KATHER16_LAYOUT))

    DATASETS.register("nct-crc-he", DatasetInfo(
        name="nct-crc-he", classnames=list(NCT_CLASSES), build=build_nct_crc_he,
        modality="histopathology", organ="colorectum", license="CC BY 4.0",
        homepage="https://zenodo.org/records/1214456", citation=_NCT_CITE,
        files=[dict(_NCT100K_ZIP), dict(_CRC7K_ZIP)],
        manual=("download NCT-CRC-HE-100K.zip (11.7 GB) and CRC-VAL-HE-7K.zip from "
                "https://zenodo.org/records/1214456 and unzip both there"),
        template_set="histopathology", descriptions="nct-crc-he.json", layout=NCT_LAYOUT))
    DATASETS.register("crc-val-he-7k", DatasetInfo(
        name="crc-val-he-7k", classnames=list(NCT_CLASSES), build=build_crc_val_he_7k,
        modality="histopathology", organ="colorectum", license="CC BY 4.0",
        homepage="https://zenodo.org/records/1214456", citation=_NCT_CITE,
        files=[dict(_CRC7K_ZIP)],
        manual=("download CRC-VAL-HE-7K.zip from https://zenodo.org/records/1214456 and "
                "unzip it there"),
        template_set="histopathology", descriptions="nct-crc-he.json"))

_register()
