"""BiomedCoOp's 11-data-set benchmark (Koleilat et al., CVPR 2025), read through its own split files.

BiomedCoOp (HealthX-Lab/BiomedCoOp, ``assets/DATASETS.md``) re-packs eleven public data sets into
one layout each, renaming the class folders after its class names, and ships one split file per
data set. Unpacked under one data folder (``--data-root DIR`` / ``$MEDADAPT_DATA``)::

    DIR/BTMRI/                       one folder per data set, named as in BiomedCoOp
    |-- BTMRI/                       the images: <class folder>/<file> as the split file names them
    |   |-- glioma_tumor/ ...
    |-- split_BTMRI.json             {"train"|"val"|"test": [[relative path, label, class name], ...]}

Record ids are the split file's relative paths, labels and class names are the split file's
(``label`` index -> ``class name``, the names BiomedCoOp puts into its prompts). The split file is
found next to the image folder, or given with ``--set data.split_file=PATH``; without either,
medadapt's shipped copy (``medadapt/data/splits/biomedcoop``, sha256-checked; all but OCTMNIST) is
used. It can also be fetched (checksum-verified) from BiomedCoOp's repository at commit
``7ceb5a8`` (``medadapt datasets NAME --download``). Every file the split names must exist: a
missing folder or image is a one-line error naming the folder expected and how to get the data,
never an empty or zero result.

Per data set below: BiomedCoOp's folder name, the class names of its split file (label order),
the counts of DATASETS.md, the public release it was re-packed from, and the one-line prompt
template of the Biomed-DPT / BiomedCoOp zero-shot prompts (``CUSTOM_BIOMEDDPT_TEMPLATES``; used
by ``configs/bench/biomed*-*.yaml`` as ``texts.templates``).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from medadapt.data.catalog import DATASETS, DatasetInfo
from medadapt.data.dataset import DataSet, Record
from medadapt.data.sets._common import SEARCH_DEPTH, _check_options, _FileLoader, _find_dir, _root
from medadapt.errors import UserError
from medadapt.safeio import inside_root  # one rule for every reader: inside the root

BIOMEDCOOP_COMMIT = "7ceb5a8"  # HealthX-Lab/BiomedCoOp, folder data/ (the split files)
SPLIT_URL = ("https://raw.githubusercontent.com/HealthX-Lab/BiomedCoOp/"
             f"{BIOMEDCOOP_COMMIT}/data/split_{{folder}}.json")
BIOMEDCOOP_DATASETS_MD = "https://github.com/HealthX-Lab/BiomedCoOp/blob/main/assets/DATASETS.md"
BIOMEDCOOP_CITE = ("Koleilat T, Asgariandehkordi H, Rivaz H, Xiao Y. BiomedCoOp: Learning to "
                   "Prompt for Biomedical Vision-Language Models. CVPR 2025 (arXiv:2411.15232)")
MISSING_EXAMPLES = 3  # missing image paths quoted in the error


@dataclass(frozen=True)
class BiomedCoOpSet:
    """One data set of the benchmark, as BiomedCoOp packs it."""

    name: str  # medadapt registry name
    folder: str  # BiomedCoOp's folder name = its split-file stem (split_<folder>.json)
    classnames: tuple[str, ...]  # label order of the split file
    modality: str
    organ: str
    template: str  # Biomed-DPT's per-data-set zero-shot template
    template_set: str  # closest medadapt template set (texts.TEMPLATES)
    source: str  # the public release BiomedCoOp re-packed (DATASETS.md link)
    drive: str  # BiomedCoOp's packed zip (Google Drive, DATASETS.md)
    counts: tuple[int, int, int]  # train / val / test in DATASETS.md
    license: str = ""
    citation: str = ""
    split_sha256: str | None = None  # of split_<folder>.json at BIOMEDCOOP_COMMIT
    verified_classes: bool = True  # False: class names not checked against a split file here
    aliases: tuple[str, ...] = field(default=())


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view?usp=sharing"


# Class names: the split files in ../shared/data/biomedcoop-splits (tests check them), except
# OCTMNIST whose split file is not available here (MedMNIST's label order; the names as BiomedCoOp's
# prompt_templates.py keys its descriptions).
# Templates: Biomed-DPT's CUSTOM_BIOMEDDPT_TEMPLATES.
BIOMEDCOOP_SETS: dict[str, BiomedCoOpSet] = {s.name: s for s in [
    BiomedCoOpSet(
        "btmri", "BTMRI",
        ("glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"),
        "MRI", "brain", "a MR photo of a {} in the brain.", "radiology",
        "https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset",
        _drive("1_lJLZRUmczqZqoN-dNqkAzGzmi4ONoU5"), (2854, 1141, 1717), "CC0 1.0 (Kaggle)",
        "Nickparvar M. Brain Tumor MRI Dataset. Kaggle (2021). doi:10.34740/KAGGLE/DSV/2645886",
        "9818f18eb8e7d211f3719b6bd9d1fa31eba24df2f1c3048766b2e25a26505025"),
    BiomedCoOpSet(
        "busi", "BUSI", ("benign tumor", "malignant tumor", "normal scan"),
        "ultrasound", "breast", "a ultrasound photo of a {} in the breast.", "radiology",
        "https://www.kaggle.com/datasets/aryashah2k/breast-ultrasound-images-dataset",
        _drive("1hB5M7wcAUTV9EtiYrijACoQ36R6VmQaa"), (389, 155, 236), "CC0 1.0 (Kaggle)",
        "Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. Data "
        "Brief 28, 104863 (2020)",
        "3117f49854e639920f85d3ea11e34ecbe261c390410b19c29c424e631396ed4f"),
    BiomedCoOpSet(
        "biomedcoop-chmnist", "CHMNIST",
        ("adipose tissue", "complex stroma", "debris", "empty background", "immune cells",
         "normal mucosal glands", "simple stroma", "tumour epithelium"),
        "histopathology", "colorectum", "a histopathological photo of a {}.", "histopathology",
        "https://www.kaggle.com/datasets/kmader/colorectal-histology-mnist",
        _drive("1tyQiYQmqAGNaY4SCK_8U5vEbbaa1AD-g"), (2496, 1000, 1504), "CC BY 4.0",
        "Kather JN et al. Multi-class texture analysis in colorectal cancer histology. Sci Rep "
        "6, 27988 (2016)",
        "61a8616d5a759646a272ef2f84b321ae0136c2f318e194c0a0f690a0aabe2f1d"),
    BiomedCoOpSet(
        "covid-qu-ex", "COVID_19",
        ("covid lungs", "lung opacity lungs", "viral pneumonia lungs", "normal lungs"),
        "X-ray", "chest", "a chest X-ray photo of a {} affected by COVID-19 in the lung.",
        "radiology",
        "https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database",
        _drive("1zMLN5q5e_tmH-deSZQiY4Xq0M1EqCrML"), (10582, 4232, 6351),
        "Kaggle data set terms (COVID-19 Radiography Database)",
        "Chowdhury MEH et al. Can AI help in screening viral and COVID-19 pneumonia? IEEE Access "
        "8, 132665 (2020); Rahman T et al. Comput Biol Med 132, 104319 (2021)",
        "9c73d1ef14da6bae08de1108720f2df2883cf678fb6a52debf6bca6ae54e24d3"),
    BiomedCoOpSet(
        "ctkidney", "CTKidney", ("cyst kidney", "kidney stone", "kidney tumor", "normal kidney"),
        "CT", "kidney", "a CT photo of a {} in the kidney.", "radiology",
        "https://www.kaggle.com/datasets/nazmul0087/ct-kidney-dataset-normal-cyst-tumor-and-stone",
        _drive("1PBZ299k--mZL8JU7nhC1Wy8yEmlqmVDh"), (6221, 2487, 3738), "Kaggle data set terms",
        "Islam MN et al. Vision transformer and explainable transfer learning models for auto "
        "detection of kidney cyst, stone and tumor from CT-radiography. Sci Rep 12, 11440 (2022)",
        "a711bdb6d171cb5ad7231a5ddda29d640459989e72d15726d3f64db740b0b54f"),
    BiomedCoOpSet(
        "biomedcoop-dermamnist", "DermaMNIST",
        ("actinic keratosis", "basal cell carcinoma", "benign keratosis", "dermatofibroma",
         "melanoma", "melanocytic nevus", "vascular lesion"),
        "dermoscopy", "skin", "a dermatoscopy photo of a {} in the skin.", "dermatology",
        "https://medmnist.com", _drive("1Jxd1-DWljunRDZ8fY80dl5zUMefriQXt"), (7007, 1003, 2005),
        "CC BY-NC 4.0",
        "Yang J et al. MedMNIST v2. Sci Data 10, 41 (2023); Tschandl P et al. The HAM10000 "
        "dataset. Sci Data 5, 180161 (2018)",
        "23892796a89275ce641fc4a1f16000e1e1c7cea90a5f1452c19b209be2c7eda6"),
    BiomedCoOpSet(
        "kneexray", "KneeXray",
        ("healthy knee", "doubtful osteoarthritis", "minimal osteoarthritis",
         "moderate osteoarthritis", "severe osteoarthritis"),
        "X-ray", "knee", "a frontal X-ray photo of a {} in the knee joint.", "radiology",
        "https://www.kaggle.com/datasets/shashwatwork/knee-osteoarthritis-dataset-with-severity",
        _drive("1DBVraYJmxy2UcQ_nGLYvTB2reITOm453"), (5778, 826, 1656), "CC BY 4.0",
        "Chen P. Knee osteoarthritis severity grading dataset. Mendeley Data v1 (2018). "
        "doi:10.17632/56rmx5bjcr.1",
        "e0590a075c2ccaf22a1372a1fa78845231d4b17a67901bab328f17649719bf37"),
    BiomedCoOpSet(
        "kvasir", "Kvasir",
        ("dyed lifted polyps", "dyed resection margins", "esophagitis", "normal cecum",
         "normal pylorus", "normal z line", "polyps", "ulcerative colitis"),
        "endoscopy", "colon", "a endoscopic photo of a {} in the colon.", "generic",
        "https://www.kaggle.com/datasets/abdallahwagih/kvasir-dataset-for-classification-and-segmentation",
        "", (2000, 800, 1200), "research and educational use (Simula Kvasir terms)",
        "Pogorelov K et al. KVASIR: a multi-class image dataset for computer aided "
        "gastrointestinal disease detection. MMSys 2017",
        "e4716c2bf50cf7e3809bfae98eeda6fb1f028e28370f57a367aa80efa0dd1fc7"),
    BiomedCoOpSet(
        "biomedcoop-lc25000", "LungColon",
        ("colon adenocarcinoma", "colon benign tissue", "lung adenocarcinoma",
         "lung benign tissue", "lung squamous cell carcinoma"),
        "histopathology", "lung and colon", "a histopathological photo of a {}.",
        "histopathology",
        "https://www.kaggle.com/datasets/andrewmvd/lung-and-colon-cancer-histopathological-images",
        _drive("1YIu5fqMXgyemisiL1L1HCvES2nVpCtun"), (12500, 5000, 7500),
        "free for research use (authors' statement)",
        "Borkowski AA et al. Lung and colon cancer histopathological image dataset (LC25000). "
        "arXiv:1912.12142 (2019)",
        "02b10f1b789d7e27b9e7903c5e36501e9dabaa17a71fa5fb0fd41ecf1d4b63cb"),
    BiomedCoOpSet(
        "biomedcoop-octmnist", "OCTMNIST",
        # the 4th name as BiomedCoOp's prompts and descriptions key it (trainers/prompt_templates.py
        # BIOMEDCOOP_TEMPLATES "normal OCT scan", line 3804 @7ceb5a8; its trainers look descriptions
        # up by the split file's class name), not MedMNIST's "normal"
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal OCT scan"),
        "OCT", "retina", "a OCT photo of a {}.", "generic", "https://medmnist.com",
        _drive("1mYZNWxbPxnnVvcwHQYybA8gdMzQAoOem"), (97477, 10832, 1000), "CC BY 4.0",
        "Yang J et al. MedMNIST v2. Sci Data 10, 41 (2023); Kermany DS et al. Cell 172(5), "
        "1122-1131 (2018)",
        None, verified_classes=False),
    BiomedCoOpSet(
        "retina", "RETINA", ("diabetic retinopathy", "glaucoma", "cataract", "normal retina"),
        "fundus photography", "retina", "a photo of a {} presented in image.", "generic",
        "https://www.kaggle.com/datasets/gunavenkatdoddi/eye-diseases-classification",
        _drive("18U-Gc22h5QryomNNzY4r4Qfrq52yf5EO"), (2108, 841, 1268), "Kaggle data set terms",
        "Doddi GV. Eye diseases classification. Kaggle (2022)",
        "526b297caf66d7a69ed836565f6ac04f6a59db9e1b768d881e78836adc9a12ee"),
]}
BIOMEDCOOP_ORDER = ["btmri", "busi", "biomedcoop-chmnist", "covid-qu-ex", "ctkidney",
                    "biomedcoop-dermamnist", "kneexray", "kvasir", "biomedcoop-lc25000",
                    "biomedcoop-octmnist", "retina"]


def layout(s: BiomedCoOpSet) -> str:
    return f"{s.folder}/{{{s.folder}/<class folders>/<images>, split_{s.folder}.json}}"


def how_to_get(s: BiomedCoOpSet) -> str:
    zip_ = (f"download BiomedCoOp's {s.folder} zip ({s.drive})" if s.drive else
            f"get {s.folder} as BiomedCoOp packs it (see {BIOMEDCOOP_DATASETS_MD})")
    return (f"{zip_} and unzip it into DATA/{s.folder}/ (layout {layout(s)}; DATA = --data-root "
            f"or $MEDADAPT_DATA); the split file alone: medadapt datasets {s.name} --download; "
            f"the original release: {s.source}")


def shipped_split(s: BiomedCoOpSet) -> Path | None:
    """The copy of ``split_<folder>.json`` shipped in ``medadapt/data/splits/biomedcoop``."""
    p = Path(str(resources.files("medadapt.data").joinpath("splits").joinpath("biomedcoop")
                 .joinpath(f"split_{s.folder}.json.gz")))
    return p if p.is_file() else None


def _split_bytes(p: Path) -> bytes:
    raw = p.read_bytes()
    if p.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise UserError(f"{p}: not a gzip file ({e})") from None
    return raw


def read_split_file(path: str | Path, name: str = "split file") -> dict[str, list[tuple[str, int, str]]]:
    """BiomedCoOp / CoOp split JSON ``{"train"|"val"|"test": [[path, label, classname], ...]}``
    (``.json`` or ``.json.gz``), checked: every item a triple, one class name per label, labels
    ``0..C-1``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{name}: split file not found: {p}")
    try:
        data = json.loads(_split_bytes(p).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not a JSON split file ({e})") from None
    except RecursionError:
        raise UserError(f"{p}: not a JSON split file (nested too deeply)") from None
    if not isinstance(data, dict) or not {"train", "test"} <= set(data):
        raise UserError(f"{p}: a split file maps 'train', 'val', 'test' to lists of "
                        f"[path, label, class name]; found keys {sorted(data) if isinstance(data, dict) else type(data).__name__}")
    bad = sorted(set(data) - {"train", "val", "test"})
    if bad:
        raise UserError(f"{p}: unknown split(s) {bad}; valid: train, val, test")
    out: dict[str, list[tuple[str, int, str]]] = {}
    name_of: dict[int, str] = {}
    for split in ("train", "val", "test"):
        items = data.get(split, [])
        if not isinstance(items, list):
            raise UserError(f"{p}: '{split}' must be a list")
        rows = []
        for i, it in enumerate(items):
            if (not isinstance(it, (list, tuple)) or len(it) != 3 or not isinstance(it[0], str)
                    or isinstance(it[1], bool) or not isinstance(it[1], int)
                    or not isinstance(it[2], str)):
                raise UserError(f"{p}: {split}[{i}] must be [relative path, label, class name], "
                                f"got {it!r}")
            rel, y, cname = it
            inside_root(p.parent, rel, f"{p}: {split}[{i}]")  # the rule every reader shares
            if name_of.setdefault(y, cname) != cname:
                raise UserError(f"{p}: label {y} is named both {name_of[y]!r} and {cname!r}")
            rows.append((rel, y, cname))
        out[split] = rows
    labels = sorted(name_of)
    if labels != list(range(len(labels))):
        raise UserError(f"{p}: labels must be 0..{len(labels) - 1}, found {labels}")
    return out


def _locate_split(r: Path, s: BiomedCoOpSet) -> Path | None:
    fn = f"split_{s.folder}.json"
    d = _find_dir(r, lambda p: (p / fn).is_file(), max_depth=2)
    return d / fn if d is not None else None


def _locate_images(r: Path, split_dir: Path, s: BiomedCoOpSet, first: str) -> Path | None:
    """The folder that the split's relative paths start from: DATASETS.md puts it at
    ``<folder>/<folder>/`` next to the split file; any folder (up to three levels below the data
    root or the split file's folder) that holds the split's first image is accepted."""
    for cand in (split_dir / s.folder, split_dir, r / s.folder / s.folder, r / s.folder, r):
        if (cand / first).is_file():
            return cand
    for base in (split_dir, r):
        d = _find_dir(base, lambda p: (p / first).is_file(), max_depth=SEARCH_DEPTH)
        if d is not None:
            return d
    return None


def _builder(s: BiomedCoOpSet):
    def build(root, split_file: str | None = None, **unknown) -> DataSet:
        _check_options(s.name, unknown, ["split_file"])
        r = _root(root, s.name)
        if split_file:
            sp = Path(split_file).expanduser()
            if not sp.is_file():
                raise UserError(f"{s.name}: data.split_file not found: {sp}")
        else:
            sp = _locate_split(r, s) or shipped_split(s)
            if sp is None:
                raise UserError(f"{s.name}: split_{s.folder}.json not found under {r} (expected "
                                f"layout {layout(s)}); pass --set data.split_file=PATH or fetch "
                                f"it: medadapt datasets {s.name} --download")
        shipped = sp == shipped_split(s)
        if shipped and s.split_sha256 and \
                hashlib.sha256(_split_bytes(sp)).hexdigest() != s.split_sha256:
            raise UserError(f"{sp}: shipped split file fails its sha256; reinstall medadapt")
        split = read_split_file(sp, s.name)
        first = next((rel for part in ("train", "val", "test") for rel, _, _ in split[part]), None)
        if first is None:
            raise UserError(f"{sp}: the split file lists no images")
        own = r if r.name == s.folder else r / s.folder  # the data set's folder
        images = _locate_images(r, own if shipped else sp.parent, s, first)
        if images is None:
            where = own if shipped else sp.parent
            raise UserError(f"{s.name}: images not found: expected {where / s.folder / first} "
                            f"(layout {layout(s)} under {r}); {how_to_get(s)}")
        missing = [rel for part in split.values() for rel, _, _ in part
                   if not os.path.isfile(os.path.join(images, rel))]
        if missing:
            n = sum(len(v) for v in split.values())
            raise UserError(f"{s.name}: {len(missing)} of {n} images named in {sp.name} are "
                            f"missing under {images} (e.g. {missing[:MISSING_EXAMPLES]}); "
                            f"{how_to_get(s)}")
        names: dict[int, str] = {}
        records = []
        for part in ("train", "val", "test"):
            for rel, y, cname in split[part]:
                names.setdefault(y, cname)
                records.append(Record(id=rel, label=y, split=part))
        classnames = [names[i] for i in range(len(names))]
        h = hashlib.sha256(_split_bytes(sp))
        for rec in records:  # content of the split + each image's size and mtime
            st = os.stat(os.path.join(images, rec.id))
            h.update(f"{rec.id}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        base = str(images)
        return DataSet(name=s.name, classnames=classnames, records=records,
                       loader=_FileLoader(base), fingerprint=h.hexdigest(), root=base,
                       meta={"split": f"BiomedCoOp split file {sp.name}"
                                      + (" (shipped copy, commit 7ceb5a8)" if shipped else ""),
                             "split_file": str(sp),
                             "biomedcoop_folder": s.folder, "anchor_template": s.template})
    return build


def _register() -> None:
    for s in BIOMEDCOOP_SETS.values():
        files = [{"url": SPLIT_URL.format(folder=s.folder), "sha256": s.split_sha256,
                  "filename": f"split_{s.folder}.json", "extract": False}]
        DATASETS.register(s.name, DatasetInfo(
            name=s.name, classnames=list(s.classnames), build=_builder(s),
            modality=s.modality, organ=s.organ, license=s.license, homepage=BIOMEDCOOP_DATASETS_MD,
            citation=f"{s.citation}; as packed by {BIOMEDCOOP_CITE}", files=files,
            manual=how_to_get(s), template_set=s.template_set, folder=s.folder,
            layout=layout(s)))


_register()
