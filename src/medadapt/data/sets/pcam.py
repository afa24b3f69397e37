"""PatchCamelyon: camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from medadapt.data.catalog import DATASETS, DatasetInfo
from medadapt.data.dataset import DataSet, Record, files_fingerprint
from medadapt.data.sets._common import _check_options, _find_dir, _root
from medadapt.data.dataset import array_to_rgb
from medadapt.errors import UserError

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


def _register() -> None:
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
        template_set="histopathology", descriptions="pcam.json",
        layout="camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5"))

_register()
