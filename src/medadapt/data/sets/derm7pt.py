"""Derm7pt with its official index files and seven-point-checklist concepts."""
from __future__ import annotations

import csv


from medadapt.data.catalog import DATASETS, DatasetInfo
from medadapt.data.dataset import DataSet, Record, files_fingerprint
from medadapt.data.sets._common import _FileLoader, _check_options, _find_dir, _hash, _root
from medadapt.errors import UserError
from medadapt.safeio import inside_root  # one rule for every reader: inside the root

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
        img = inside_root(d / "images", (row[image] or "").strip(), f"{meta_csv}:{i + 2}: {image}")
        records.append(Record(id=f"images/{img}", label=c, split=split_of[i],
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


def _register() -> None:
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
        template_set="dermatology", descriptions="derm7pt.json", hierarchy="derm7pt.yaml", layout=DERM7PT_LAYOUT))

_register()
