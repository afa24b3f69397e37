"""KIMIA Path960: one folder of 960 images named <letter A-T><number>.tif."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from medadapt.data.catalog import DATASETS, DatasetInfo
from medadapt.data.dataset import DataSet, Record, files_fingerprint, stratified_split
from medadapt.data.sets._common import SEARCH_DEPTH, _FileLoader, _check_options, _root
from medadapt.errors import UserError

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


def _register() -> None:
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
        template_set="histopathology", descriptions="kimia-path960.json",
        layout="one folder of 960 images A1.tif ... T48.tif (letter = class)"))

_register()
