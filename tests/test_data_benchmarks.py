"""Registered benchmarks: each parser on files in the data set's real on-disk layout, built in a
temporary folder from the real images in ../shared/data (the CRC-VAL-HE-7K sample tiles, the
BCCD smears), plus the download helper on file:// URLs."""
from __future__ import annotations

import gzip
import hashlib
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medadapt.data import benchmarks as B
from medadapt.data.sets import medmnist as medmnist_sets
from medadapt.data.fewshot import sample_fewshot
from medadapt.data.sources import DATASETS, MEDMNIST_CLASSES, load_dataset
from medadapt.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = SHARED / "crc-val-he-7k-sample"
BCCD = SHARED / "bccd"

REGISTERED = ["kather2016", "chmnist", "nct-crc-he", "crc-val-he-7k", "bloodmnist", "pathmnist",
              "dermamnist", "kimia-path960", "lc25000", "pcam", "pannuke", "pannuke-tissue",
              "derm7pt", "bccd-cells"]


def tiles(cls: str) -> list[Path]:
    return sorted((SAMPLE / cls).glob("*.png"))


def all_tiles() -> list[Path]:
    return sorted(SAMPLE.glob("*/*.png"))


def save_as(src: Path, dst: Path, size: tuple[int, int] | None = None) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("RGB")
        if size is not None:
            im = im.resize(size)
        im.save(dst)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, repr(msg)
    return msg


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDADAPT_DATA", str(tmp_path / "data-home"))


def test_registry_lists_every_benchmark_with_source_and_how_to_get_it():
    names = DATASETS.names()
    for n in REGISTERED:
        assert n in names
        info = DATASETS.get(n)
        assert info.name == n and info.classnames and info.homepage and info.license
        assert info.citation and info.template_set and info.descriptions
        assert info.manual and "\n" not in info.manual
        for f in info.files:
            assert f["url"].startswith("https://") and f["filename"]
            assert "sha256" in f
    # checksums we could verify from public sources are present
    assert DATASETS.get("kather2016").files[0]["sha256"]
    assert all(f["sha256"] for f in DATASETS.get("pcam").files)
    assert all(f.get("md5") for n in ("bloodmnist", "pathmnist", "dermamnist")
               for f in DATASETS.get(n).files)
    assert all(f.get("md5") for f in DATASETS.get("nct-crc-he").files)
    # no direct archive: manual instructions only
    for n in ("kimia-path960", "lc25000", "derm7pt", "bccd-cells"):
        assert DATASETS.get(n).files == []


def test_unknown_dataset_name_lists_valid_names():
    with pytest.raises(UserError) as e:
        load_dataset("kather2017")
    msg = one_line(e)
    assert "kather2016" in msg and "bccd-cells" in msg and "did you mean" in msg


def test_missing_root_says_how_to_get_the_data(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset(f"kather2016:{tmp_path / 'nowhere'}")
    msg = one_line(e)
    assert "not found" in msg and "zenodo.org/records/53169" in msg
    with pytest.raises(UserError) as e:  # default root under $MEDADAPT_DATA
        load_dataset("lc25000")
    assert "data-home" in one_line(e)


def test_an_unpacked_archive_is_asked_for(tmp_path):
    z = tmp_path / "Kather_texture_2016_image_tiles_5000.zip"
    z.write_bytes(b"PK")
    with pytest.raises(UserError) as e:
        load_dataset(f"kather2016:{z}")
    assert "unpack" in one_line(e)


def test_unknown_builder_option_is_a_user_error(tmp_path):
    with pytest.raises(UserError) as e:
        B.build_lc25000(tmp_path, nonsense=1)
    assert "nonsense" in one_line(e)


# ------------------------------------------------------------------ Kather 2016 / CHMNIST

KATHER_FROM = {"01_TUMOR": "TUM", "02_STROMA": "STR", "03_COMPLEX": "MUS", "04_LYMPHO": "LYM",
               "05_DEBRIS": "DEB", "06_MUCOSA": "NORM", "07_ADIPOSE": "ADI", "08_EMPTY": "MUC"}


@pytest.fixture
def kather_root(tmp_path):
    # the zip unpacks to Kather_texture_2016_image_tiles_5000/<01_TUMOR..>/<name>.tif, 150x150
    d = tmp_path / "kather" / "Kather_texture_2016_image_tiles_5000"
    for folder, src in KATHER_FROM.items():
        for t in tiles(src):
            save_as(t, d / folder / f"{t.stem}.tif", (150, 150))
    return tmp_path / "kather"


def test_kather2016_real_layout(kather_root):
    ds = load_dataset(f"kather2016:{kather_root}")
    assert ds.classnames == B.KATHER16_CLASSES and len(ds) == 32
    assert ds.classnames[0] == "tumor epithelium" and ds.classnames[-1] == "background"
    assert ds.meta["descriptions"] == "kather2016.json"
    assert ds.meta["template_set"] == "histopathology"
    assert ds.records[0].id.startswith("01_TUMOR/") and ds.records[0].label == 0
    for c in range(8):  # 4 per class -> stratified 2 train / 1 val / 1 test
        assert sorted(ds.records[i].split for i in ds.indices(classes=[c])) == \
            ["test", "train", "train", "val"]
    img = ds.load_image(0)
    assert img.mode == "RGB" and img.size == (150, 150)
    # the same ids whether ROOT is the unpack folder or the tiles folder, and for the alias
    inner = load_dataset(f"kather2016:{kather_root / 'Kather_texture_2016_image_tiles_5000'}")
    alias = load_dataset(f"chmnist:{kather_root}")
    assert [r.id for r in inner.records] == [r.id for r in ds.records] == \
        [r.id for r in alias.records]
    assert [r.split for r in alias.records] == [r.split for r in ds.records]


def test_kather2016_missing_class_folder_is_named(kather_root):
    shutil.rmtree(kather_root / "Kather_texture_2016_image_tiles_5000" / "08_EMPTY")
    with pytest.raises(UserError) as e:
        load_dataset(f"kather2016:{kather_root}")
    assert "08_EMPTY" in one_line(e)


def test_kather2016_corrupt_image_is_a_user_error(kather_root):
    bad = kather_root / "Kather_texture_2016_image_tiles_5000" / "05_DEBRIS" / "zz_broken.tif"
    bad.write_bytes(b"this is not an image at all")
    ds = load_dataset(f"kather2016:{kather_root}")
    i = ds.id_index()["05_DEBRIS/zz_broken.tif"]
    with pytest.raises(UserError) as e:
        ds.load_image(i)
    msg = one_line(e)
    assert "zz_broken.tif" in msg and "corrupt" in msg


def test_kather2016_fewer_than_k_images_is_a_user_error(kather_root):
    ds = load_dataset(f"kather2016:{kather_root}")
    with pytest.raises(UserError) as e:
        sample_fewshot(ds, shots=16, seed=1)
    assert "tumor epithelium" in one_line(e) and "--allow-fewer" in str(e.value)


def test_fingerprint_changes_when_a_file_changes(kather_root):
    a = load_dataset(f"kather2016:{kather_root}").fingerprint
    f = sorted((kather_root / "Kather_texture_2016_image_tiles_5000" / "02_STROMA").iterdir())[0]
    save_as(all_tiles()[0], f, (150, 150))
    assert load_dataset(f"kather2016:{kather_root}").fingerprint != a


# ------------------------------------------------------------------ NCT-CRC-HE-100K + CRC-VAL-HE-7K

def _nct_folder(d: Path, prefix: str = "") -> None:
    # BACK is not in the shared sample: its folder gets ADI tiles (the parser only reads names)
    for cls in B.NCT_FOLDERS:
        for t in tiles("ADI" if cls == "BACK" else cls):
            save_as(t, d / cls / f"{prefix}{t.stem}.tif")


@pytest.fixture
def nct_root(tmp_path):
    root = tmp_path / "nct"
    _nct_folder(root / "NCT-CRC-HE-100K", prefix="X")
    _nct_folder(root / "CRC-VAL-HE-7K")
    return root


def test_nct_crc_he_official_split(nct_root):
    ds = load_dataset(f"nct-crc-he:{nct_root}")
    assert ds.classnames == B.NCT_CLASSES
    assert ds.classnames[0] == "adipose tissue" and ds.classnames[-1] == \
        "colorectal adenocarcinoma epithelium"
    tr, va, te = (ds.indices(s) for s in ("train", "val", "test"))
    assert len(tr) + len(va) == 36 and len(te) == 36 and len(va) == 9  # 1 val per class
    assert all(ds.records[i].id.startswith("NCT-CRC-HE-100K/") for i in tr + va)
    assert all(ds.records[i].id.startswith("CRC-VAL-HE-7K/") for i in te)
    assert ds.load_image(tr[0]).size == (224, 224) and ds.load_image(te[-1]).mode == "RGB"
    assert ds.meta["descriptions"] == "nct-crc-he.json"
    # a few-shot draw never touches the 7K test set
    fs = sample_fewshot(ds, shots=2, seed=3)
    ids = [i for v in list(fs["train"].values()) + list(fs["val"].values()) for i in v]
    assert ids and not any(i.startswith("CRC-VAL-HE-7K/") for i in ids)


def test_nct_crc_he_nonorm_variant_and_missing_test(tmp_path):
    root = tmp_path / "nct"
    _nct_folder(root / "NCT-CRC-HE-100K-NONORM" / "NCT-CRC-HE-100K-NONORM")
    with pytest.raises(UserError) as e:
        load_dataset(f"nct-crc-he:{root}")
    assert "CRC-VAL-HE-7K" in one_line(e)
    _nct_folder(root / "CRC-VAL-HE-7K")
    ds = load_dataset(f"nct-crc-he:{root}", val_frac=0.0)
    assert ds.records[0].id.startswith("NCT-CRC-HE-100K-NONORM/") and not ds.indices("val")


def test_crc_val_he_7k_alone(nct_root):
    ds = load_dataset(f"crc-val-he-7k:{nct_root}")
    assert len(ds) == 36 and ds.classnames == B.NCT_CLASSES
    assert ds.records[0].id == f"ADI/{tiles('ADI')[0].stem}.tif"
    assert {ds.records[i].split for i in ds.indices(classes=[8])} == {"train", "val", "test"}
    assert ds.load_image(5).size == (224, 224)


# ------------------------------------------------------------------ MedMNIST npz

def _npz(path: Path, n_classes: int, size: int, grey: bool = False, n=(16, 8, 8)) -> None:
    imgs = []
    for t in all_tiles():
        with Image.open(t) as im:
            im = im.convert("L" if grey else "RGB").resize((size, size))
            imgs.append(np.asarray(im))
    arrays, k = {}, 0
    for split, m in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = np.stack([imgs[(k + j) % len(imgs)] for j in range(m)])
        arrays[f"{split}_labels"] = (np.arange(k, k + m) % n_classes).astype(np.uint8)[:, None]
        k += m
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def test_medmnist_npz_layout(tmp_path):
    _npz(tmp_path / "blood" / "bloodmnist.npz", 8, 28)
    ds = load_dataset(f"bloodmnist:{tmp_path / 'blood'}")
    assert ds.classnames == MEDMNIST_CLASSES["bloodmnist"] and len(ds) == 32
    assert [len(ds.indices(s)) for s in ("train", "val", "test")] == [16, 8, 8]
    assert ds.records[0].id == "train/0" and ds.records[17].id == "val/1"
    assert ds.meta["template_set"] == "cytology" and ds.meta["descriptions"] == "bloodmnist.json"
    img = ds.load_image(3)
    assert img.mode == "RGB" and img.size == (28, 28)


def test_medmnist_size_variants_and_file_root(tmp_path):
    _npz(tmp_path / "derma" / "dermamnist_224.npz", 7, 224, n=(4, 2, 2))
    ds = load_dataset(f"dermamnist:{tmp_path / 'derma'}")  # only the 224 file: picked
    assert ds.load_image(0).size == (224, 224) and ds.meta["template_set"] == "dermatology"
    with pytest.raises(UserError) as e:
        load_dataset(f"dermamnist:{tmp_path / 'derma'}", size=28)
    assert "dermamnist.npz" in one_line(e)
    direct = load_dataset(f"dermamnist:{tmp_path / 'derma' / 'dermamnist_224.npz'}")
    assert [r.id for r in direct.records] == [r.id for r in ds.records]


def test_medmnist_large_file_is_memory_mapped(tmp_path, monkeypatch):
    _npz(tmp_path / "path" / "pathmnist.npz", 9, 28)
    small = load_dataset(f"pathmnist:{tmp_path / 'path'}")
    monkeypatch.setattr(medmnist_sets, "NPZ_IN_MEMORY_BYTES", 0)
    big = load_dataset(f"pathmnist:{tmp_path / 'path'}")
    assert isinstance(big.loader.arrays["train_images"], np.memmap)
    assert list((tmp_path / "cache" / "npz").iterdir())
    assert [r.id for r in big.records] == [r.id for r in small.records]
    assert np.array_equal(np.asarray(big.load_image(5)), np.asarray(small.load_image(5)))


def test_medmnist_wrong_labels_and_corrupt_file(tmp_path):
    _npz(tmp_path / "p" / "pathmnist.npz", 12, 28)  # labels up to 11 > 8
    with pytest.raises(UserError) as e:
        load_dataset(f"pathmnist:{tmp_path / 'p'}")
    assert "labels outside" in one_line(e)
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "pathmnist.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(UserError) as e:
        load_dataset(f"pathmnist:{tmp_path / 'q'}")
    assert "cannot read npz" in one_line(e)


# ------------------------------------------------------------------ KIMIA Path960

@pytest.fixture
def kimia_root(tmp_path):
    d = tmp_path / "kimia" / "KIMIA_Path_960"
    src = all_tiles()
    for c, letter in enumerate(B.KIMIA_CLASSES):
        for n in (1, 2, 3):
            save_as(src[(3 * c + n) % len(src)], d / f"{letter}{n}.tif", (308, 168))
    return tmp_path / "kimia"


def test_kimia_path960_letters_are_classes(kimia_root):
    ds = load_dataset(f"kimia-path960:{kimia_root}")
    assert ds.classnames == B.KIMIA_CLASSES and len(ds) == 60
    by_id = {r.id: r for r in ds.records}
    assert by_id["A1.tif"].label == 0 and by_id["T3.tif"].label == 19
    assert by_id["K2.tif"].label == B.KIMIA_CLASSES.index("K")
    assert ds.load_image(ds.id_index()["C2.tif"]).size == (308, 168)
    inner = load_dataset(f"kimia-path960:{kimia_root / 'KIMIA_Path_960'}")
    assert [r.id for r in inner.records] == [r.id for r in ds.records]


def test_kimia_path960_duplicates_and_missing_letters(kimia_root):
    d = kimia_root / "KIMIA_Path_960"
    shutil.copy(d / "A1.tif", d / "A1.png")
    with pytest.raises(UserError) as e:
        load_dataset(f"kimia-path960:{kimia_root}")
    assert "A1" in one_line(e) and "twice" in str(e.value)
    (d / "A1.png").unlink()
    for n in (1, 2, 3):
        (d / f"Q{n}.tif").unlink()
    with pytest.raises(UserError) as e:
        load_dataset(f"kimia-path960:{kimia_root}")
    assert "'Q'" in one_line(e)


# ------------------------------------------------------------------ LC25000

def test_lc25000_real_layout(tmp_path):
    base = tmp_path / "LC25000" / "lung_colon_image_set"
    src = all_tiles()
    stems = {"colon_aca": "colonca", "colon_n": "colonn", "lung_aca": "lungaca",
             "lung_n": "lungn", "lung_scc": "lungscc"}
    for c, folder in enumerate(B.LC25000_FOLDERS):
        for n in range(1, 5):
            save_as(src[(4 * c + n) % len(src)],
                    base / folder / f"{stems[folder.split('/')[1]]}{n}.jpeg", (256, 256))
    ds = load_dataset(f"lc25000:{tmp_path / 'LC25000'}")
    assert ds.classnames == ["colon adenocarcinoma", "benign colon tissue", "lung adenocarcinoma",
                             "benign lung tissue", "lung squamous cell carcinoma"]
    assert len(ds) == 20 and ds.records[0].id == "colon_image_sets/colon_aca/colonca1.jpeg"
    assert ds.records[-1].id.startswith("lung_image_sets/lung_scc/") and ds.records[-1].label == 4
    assert ds.load_image(7).size == (256, 256)
    assert set(r.split for r in ds.records) == {"train", "val", "test"}


# ------------------------------------------------------------------ PCam

def _pcam_files(d: Path, h5py, n=(6, 4, 4)) -> None:
    src = all_tiles()
    d.mkdir(parents=True, exist_ok=True)
    k = 0
    for split, m in zip(("train", "valid", "test"), n):
        x = np.stack([np.asarray(Image.open(src[(k + j) % len(src)]).convert("RGB")
                                 .resize((96, 96))) for j in range(m)])
        y = (np.arange(m) % 2).astype(np.uint8).reshape(m, 1, 1, 1)
        with h5py.File(d / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=x)
        with h5py.File(d / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=y)
        k += m


def test_pcam_h5_layout(tmp_path):
    h5py = pytest.importorskip("h5py", reason="h5py is optional; pcam needs it to read .h5")
    _pcam_files(tmp_path / "pcam" / "pcam", h5py)
    ds = load_dataset(f"pcam:{tmp_path / 'pcam'}")
    assert ds.classnames == B.PCAM_CLASSES and len(ds) == 14
    assert [len(ds.indices(s)) for s in ("train", "val", "test")] == [6, 4, 4]
    assert ds.records[1].label == 1 and ds.records[6].id == "val/0"
    img = ds.load_image(ds.id_index()["test/3"])
    assert img.size == (96, 96) and img.mode == "RGB"
    import pickle
    again = pickle.loads(pickle.dumps(ds.loader))  # DataLoader workers get a fresh handle
    assert again(ds.records[0]).size == (96, 96)


def test_pcam_compressed_files_say_gunzip(tmp_path):
    d = tmp_path / "pcam"
    d.mkdir()
    for s in ("train", "valid", "test"):
        for xy in "xy":
            with gzip.open(d / f"camelyonpatch_level_2_split_{s}_{xy}.h5.gz", "wb") as f:
                f.write(b"x")
    pytest.importorskip("h5py", reason="the gunzip hint comes after the h5py check")
    with pytest.raises(UserError) as e:
        load_dataset(f"pcam:{d}")
    assert "gunzip" in one_line(e)


def test_pcam_without_h5py_says_how_to_install(tmp_path, monkeypatch):
    d = tmp_path / "pcam"
    d.mkdir()
    (d / "camelyonpatch_level_2_split_test_x.h5").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py -> ImportError
    with pytest.raises(UserError) as e:
        load_dataset(f"pcam:{d}")
    assert "pip install h5py" in one_line(e)


# ------------------------------------------------------------------ PanNuke

PANNUKE_TYPES = {1: ["Colon", "Breast", "Colon", "Lung"], 2: ["Skin", "Colon", "Kidney", "Breast"],
                 3: ["Liver", "HeadNeck", "Colon", "Bile-duct"]}


@pytest.fixture
def pannuke_root(tmp_path):
    """fold_N.zip unpacks to 'Fold N/images/foldN/{images,types}.npy' and
    'Fold N/masks/foldN/masks.npy' (float64 images 0..255, 6-channel instance masks)."""
    root = tmp_path / "pannuke"
    src = all_tiles()
    for n, types in PANNUKE_TYPES.items():
        img_dir = root / f"Fold {n}" / "images" / f"fold{n}"
        msk_dir = root / f"Fold {n}" / "masks" / f"fold{n}"
        img_dir.mkdir(parents=True)
        msk_dir.mkdir(parents=True)
        imgs = np.stack([np.asarray(Image.open(src[4 * n + j]).convert("RGB").resize((256, 256)),
                                    dtype=np.float64) for j in range(4)])
        masks = np.zeros((4, 256, 256, 6), dtype=np.float64)
        masks[0, 10:20, 10:20, 0] = 3.0  # patch 0: two neoplastic nuclei
        masks[0, 40:50, 40:50, 0] = 7.0
        masks[1, 60:70, 60:70, 0] = 1.0  # patch 1: one
        masks[2, 60:70, 60:70, 1] = 2.0  # patch 2: an inflammatory nucleus only
        masks[..., 5] = 1.0
        np.save(img_dir / "images.npy", imgs)
        np.save(img_dir / "types.npy", np.array(types))
        np.save(msk_dir / "masks.npy", masks)
    return root


def test_pannuke_benign_malignant_with_tissue_domains(pannuke_root):
    ds = load_dataset(f"pannuke:{pannuke_root}")
    assert ds.classnames == ["benign tissue", "malignant tissue"] and len(ds) == 12
    assert [r.label for r in ds.records[:4]] == [1, 1, 0, 0]
    assert [r.split for r in ds.records[::4]] == ["train", "val", "test"]
    assert [r.domain for r in ds.records[:4]] == PANNUKE_TYPES[1]
    assert ds.records[5].id == "fold2/1" and ds.records[5].domain == "Colon"
    assert "Colon" in ds.domains() and ds.indices("train", domain="Colon") == [0, 2]
    img = ds.load_image(9)
    assert img.size == (256, 256) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(all_tiles()[13]).convert("RGB")
                                                       .resize((256, 256))))
    assert list((pannuke_root.parent / "cache" / "pannuke").glob("neoplastic-*.npy"))
    stricter = load_dataset(f"pannuke:{pannuke_root}", min_neoplastic=2)
    assert [r.label for r in stricter.records[:4]] == [1, 0, 0, 0]
    assert stricter.fingerprint != ds.fingerprint


def test_pannuke_tissue_types_and_fold_options(pannuke_root):
    ds = load_dataset(f"pannuke-tissue:{pannuke_root}", train_fold=3, val_fold=None, test_fold=1)
    assert len(ds.classnames) == 19 and ds.classnames[7] == "head and neck"
    assert [ds.classnames[r.label] for r in ds.records[:4]] == ["liver", "head and neck", "colon",
                                                                "bile duct"]
    assert {r.split for r in ds.records} == {"train", "test"} and len(ds) == 8


def test_pannuke_errors(pannuke_root):
    with pytest.raises(UserError) as e:
        load_dataset(f"pannuke:{pannuke_root}", train_fold=4)
    assert "fold(s) [4]" in one_line(e)
    shutil.rmtree(pannuke_root / "Fold 2" / "masks")
    with pytest.raises(UserError) as e:
        load_dataset(f"pannuke:{pannuke_root}")
    assert "masks.npy" in one_line(e) and "pannuke-tissue" in str(e.value)
    assert len(load_dataset(f"pannuke-tissue:{pannuke_root}")) == 12  # tissue needs no masks


# ------------------------------------------------------------------ Derm7pt

DERM_ROWS = [  # diagnosis, pigment_network, streaks, pigmentation, regression, dots, bwv, vessels
    ("clark nevus", "typical", "absent", "diffuse regular", "absent", "regular", "absent", "absent"),
    ("melanoma (in situ)", "atypical", "irregular", "localized irregular", "blue areas",
     "irregular", "present", "absent"),
    ("basal cell carcinoma", "absent", "absent", "absent", "white areas", "absent", "absent",
     "arborizing"),
    ("reed or spitz nevus", "absent", "regular", "absent", "absent", "regular", "absent",
     "dotted"),
    ("melanoma (more than 1.5 mm)", "atypical", "absent", "diffuse irregular", "combinations",
     "irregular", "present", "linear irregular"),
    ("seborrheic keratosis", "absent", "absent", "absent", "absent", "absent", "absent",
     "hairpin"),
    ("blue nevus", "absent", "absent", "diffuse regular", "absent", "absent", "present", "absent"),
    ("dermatofibroma", "typical", "absent", "absent", "white areas", "absent", "absent", "absent"),
    ("melanoma", "atypical", "irregular", "absent", "absent", "irregular", "absent", "dotted"),
    ("congenital nevus", "typical", "absent", "absent", "absent", "regular", "absent", "absent"),
]
DERM_SPLITS = {"train": [0, 1, 2, 3, 8, 9], "valid": [4, 5], "test": [6, 7]}


@pytest.fixture
def derm_root(tmp_path):
    rel = tmp_path / "derm7pt" / "release_v0"
    (rel / "meta").mkdir(parents=True)
    cols = ["case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks",
            "pigmentation", "regression_structures", "dots_and_globules", "blue_whitish_veil",
            "vascular_structures", "level_of_diagnostic_difficulty", "elevation", "location",
            "sex", "clinic", "derm", "management"]
    lines = [",".join(cols)]
    src = all_tiles()
    for i, row in enumerate(DERM_ROWS):
        folder = "NEL" if "nevus" in row[0] else "Fal"
        clinic, derm = f"{folder}/Nel{i:03d}.jpg", f"{folder}/Ndl{i:03d}.jpg"
        save_as(src[i], rel / "images" / clinic, (192, 128))
        save_as(src[i + 10], rel / "images" / derm, (192, 128))
        lines.append(",".join([str(i + 1), row[0], "0", *row[1:], "low", "flat", "back", "female",
                               clinic, derm, "excision"]))
    (rel / "meta" / "meta.csv").write_text("\n".join(lines) + "\n")
    for split, idx in DERM_SPLITS.items():
        (rel / "meta" / f"{split}_indexes.csv").write_text(
            "indexes\n" + "".join(f"{i}\n" for i in idx))
    return tmp_path / "derm7pt"


def test_derm7pt_nevus_melanoma_with_seven_point_concepts(derm_root):
    ds = load_dataset(f"derm7pt:{derm_root}")
    assert ds.classnames == ["nevus", "melanoma"]
    assert ds.meta["template_set"] == "dermatology" and ds.meta["descriptions"] == "derm7pt.json"
    by_id = {r.id: r for r in ds.records}
    assert len(ds) == 7  # BCC, SK, dermatofibroma left out
    mel = by_id["images/Fal/Ndl001.jpg"]
    assert mel.label == 1 and mel.split == "train"
    assert mel.concepts == ("atypical pigment network", "irregular streaks",
                            "localized irregular pigmentation", "blue areas of regression",
                            "irregular dots and globules", "blue-whitish veil",
                            "absent vascular structures")
    assert by_id["images/NEL/Ndl000.jpg"].concepts == (
        "typical pigment network", "absent streaks", "diffuse regular pigmentation",
        "absent regression structures", "regular dots and globules", "absent blue-whitish veil",
        "absent vascular structures")
    assert by_id["images/Fal/Ndl004.jpg"].split == "val"
    assert by_id["images/NEL/Ndl006.jpg"].split == "test"
    assert "dotted vessels" in by_id["images/NEL/Ndl003.jpg"].concepts
    assert ds.load_image(0).size == (192, 128)
    assert "blue-whitish veil" in ds.meta["concept_groups"]["blue_whitish_veil"]


def test_derm7pt_concepts_are_the_shipped_hierarchy_concepts(derm_root):
    hierarchy = pytest.importorskip("medadapt.hierarchy")
    h = hierarchy.load_hierarchy("derm7pt")
    ds = load_dataset(f"derm7pt:{derm_root}")
    names = {c for v in B.DERM7PT_CRITERIA.values() for c in v.values()}
    assert names == set(h.concepts)
    for r in ds.records:  # every record maps onto class-concept combinations without error
        assert h.item_combinations(ds.classnames[r.label], r.concepts)


def test_derm7pt_five_classes_and_clinical_images(derm_root):
    ds = load_dataset(f"derm7pt:{derm_root}", classes="five", image="clinic")
    assert ds.classnames == B.DERM7PT_FIVE and len(ds) == 10
    labels = {r.id: ds.classnames[r.label] for r in ds.records}
    assert labels["images/Fal/Nel002.jpg"] == "basal cell carcinoma"
    assert labels["images/Fal/Nel007.jpg"] == "miscellaneous"
    assert labels["images/Fal/Nel005.jpg"] == "seborrheic keratosis"


def test_derm7pt_bad_inputs(derm_root):
    meta = derm_root / "release_v0" / "meta"
    with pytest.raises(UserError) as e:
        load_dataset(f"derm7pt:{derm_root}", classes="seven")
    assert "nevus-melanoma" in one_line(e)
    meta_csv = (meta / "meta.csv").read_text()
    (meta / "meta.csv").write_text(meta_csv.replace("typical,absent,diffuse regular",
                                                    "typical,absent,speckled", 1))
    with pytest.raises(UserError) as e:
        load_dataset(f"derm7pt:{derm_root}")
    assert "unknown pigmentation value 'speckled'" in one_line(e)
    (meta / "meta.csv").write_text(meta_csv)
    (meta / "valid_indexes.csv").write_text("indexes\n4\n5\n0\n")
    with pytest.raises(UserError) as e:
        load_dataset(f"derm7pt:{derm_root}")
    assert "also in the train split" in one_line(e)
    (meta / "valid_indexes.csv").unlink()
    with pytest.raises(UserError) as e:
        load_dataset(f"derm7pt:{derm_root}")
    assert "valid_indexes.csv" in one_line(e)


# ------------------------------------------------------------------ BCCD single cells (real data)

def test_bccd_cells_on_the_real_voc_layout():
    ds = load_dataset(f"bccd-cells:{BCCD}")
    assert ds.classnames == ["red blood cell", "white blood cell", "platelet"]
    counts = np.bincount(ds.labels, minlength=3)
    assert counts.tolist() == [4153, 372, 361] and ds.meta["skipped_boxes"] == 2
    assert ds.meta["source_images"] == 364
    test_imgs = set((BCCD / "BCCD" / "ImageSets" / "Main" / "test.txt").read_text().split())
    assert {r.id.split("/")[0] for r in ds.records if r.split == "test"} == test_imgs
    assert {r.split for r in ds.records} == {"train", "val", "test"}
    # the first box of BloodImage_00000 is its WBC at (260,177)-(491,376)
    r0 = ds.records[ds.id_index()["BloodImage_00000/000"]]
    assert ds.classnames[r0.label] == "white blood cell"
    crop = ds.load_image(ds.id_index()["BloodImage_00000/000"])
    assert crop.size == (231, 199) and crop.mode == "RGB"
    with Image.open(BCCD / "BCCD" / "JPEGImages" / "BloodImage_00000.jpg") as full:
        ref = full.convert("RGB").crop((260, 177, 491, 376))
    assert np.array_equal(np.asarray(crop), np.asarray(ref))
    wider = load_dataset(f"bccd-cells:{BCCD / 'BCCD'}", margin=4)
    assert wider.load_image(wider.id_index()["BloodImage_00000/000"]).size == (239, 207)
    assert wider.fingerprint != ds.fingerprint
    fs = sample_fewshot(ds, shots=4, seed=1)
    assert [len(v) for v in fs["train"].values()] == [4, 4, 4]


# ------------------------------------------------------------------ download helper

def _sha(p: Path, algo: str = "sha256") -> str:
    return hashlib.new(algo, p.read_bytes()).hexdigest()


def test_download_verifies_checksums_and_unpacks(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    archive = src / "tiles.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(tiles("TUM")[0], "tiles/TUM/a.png")
    raw = src / "labels.h5.gz"
    with gzip.open(raw, "wb") as f:
        f.write(b"payload")
    files = [{"url": archive.as_uri(), "sha256": _sha(archive), "filename": "tiles.zip"},
             {"url": raw.as_uri(), "sha256": None, "md5": _sha(raw, "md5"),
              "filename": "labels.h5.gz"}]
    dest = B.download_files(files, tmp_path / "dest", manual="get it by hand", name="demo")
    assert (dest / "tiles" / "TUM" / "a.png").is_file()
    assert (dest / "labels.h5").read_bytes() == b"payload"
    archive.unlink()  # already there and unpacked: nothing is fetched again
    B.download_files(files, dest, manual="get it by hand", name="demo")


def test_download_failures_give_the_manual_instructions(tmp_path):
    src = tmp_path / "f.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("x.txt", "x")
    bad = [{"url": src.as_uri(), "sha256": "0" * 64, "filename": "f.zip"}]
    with pytest.raises(UserError) as e:
        B.download_files(bad, tmp_path / "d1", manual="download f.zip by hand", name="demo")
    msg = one_line(e)
    assert "sha256 mismatch" in msg and "download f.zip by hand" in msg
    assert not (tmp_path / "d1" / "f.zip").exists() and (tmp_path / "d1" / "f.zip.bad").exists()
    gone = [{"url": (tmp_path / "missing.zip").as_uri(), "sha256": None, "filename": "m.zip"}]
    with pytest.raises(UserError) as e:
        B.download_files(gone, tmp_path / "d2", manual="download m.zip by hand", name="demo")
    assert "failed" in one_line(e) and "by hand" in str(e.value)
    with pytest.raises(UserError) as e:
        B.download("lc25000", tmp_path / "d3")
    assert "no direct download" in one_line(e) and "tampapath" in str(e.value)
    with pytest.raises(UserError) as e:
        B.download("bloodmnist", tmp_path / "d4", only=["bloodmnist_512.npz"])
    assert "bloodmnist_224.npz" in one_line(e)


def test_download_refuses_archive_members_outside_dest(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(UserError) as e:
        B.download_files([{"url": evil.as_uri(), "sha256": _sha(evil), "filename": "evil.zip"}],
                         tmp_path / "d", name="demo")
    assert "outside" in one_line(e) and not (tmp_path / "outside.txt").exists()
