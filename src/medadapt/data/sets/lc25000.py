"""LC25000: lung_colon_image_set/{colon_image_sets,lung_image_sets}/<class>/*.jpeg."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medadapt.data.catalog import DATASETS, DatasetInfo
from medadapt.data.dataset import DataSet, Record, files_fingerprint, stratified_split
from medadapt.data.sets._common import (_FileLoader, _check_options, _class_folder_records,
                                        _find_dir, _require_images, _root)
from medadapt.errors import UserError

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


def _register() -> None:
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
        template_set="histopathology", descriptions="lc25000.json", layout=LC25000_LAYOUT))

_register()
