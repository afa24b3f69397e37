"""Generic sources (folder:, csv:, npz:) on the real files in ../shared/data, and the bad inputs a
user can give them: each is a one-line UserError."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medadapt.data.sources import from_csv, from_folder, from_npz, load_dataset
from medadapt.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = SHARED / "crc-val-he-7k-sample"
PNEUMONIA = SHARED / "medmnist" / "pneumoniamnist.npz"


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def test_folder_source_on_the_shared_sample():
    ds = load_dataset(f"folder:{SAMPLE}")
    assert ds.classnames == ["ADI", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
    assert len(ds) == 32 and ds.has_splits()
    assert ds.records[0].id == "ADI/ADI-TCGA-EENSRDNW.png"
    for c in range(8):
        assert sorted(ds.records[i].split for i in ds.indices(classes=[c])) == \
            ["test", "train", "train", "val"]
    img = ds.load_image(31)
    assert img.mode == "RGB" and img.size == (224, 224)
    assert ds.fingerprint == load_dataset(f"folder:{SAMPLE}").fingerprint


def test_folder_source_with_split_folders(tmp_path):
    for split in ("train", "val", "test"):
        for cls in ("LYM", "TUM"):
            for t in sorted((SAMPLE / cls).glob("*.png"))[:2]:
                (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
                shutil.copy(t, tmp_path / split / cls / t.name)
    ds = from_folder(str(tmp_path))
    assert ds.classnames == ["LYM", "TUM"] and len(ds) == 12
    assert [len(ds.indices(s)) for s in ("train", "val", "test")] == [4, 4, 4]
    assert ds.records[0].id.startswith("test/LYM/")


def test_csv_source_with_splits_and_concepts(tmp_path):
    rows = ["path,label,split,concepts"]
    for i, t in enumerate(sorted(SAMPLE.glob("*/*.png"))[:12]):
        split = ("train", "val", "test")[i % 3]
        concepts = "dense nuclei;irregular glands" if t.parent.name in ("TUM", "DEB") else ""
        rel = Path("imgs") / t.name
        (tmp_path / "imgs").mkdir(exist_ok=True)
        shutil.copy(t, tmp_path / rel)
        rows.append(f"{rel.as_posix()},{t.parent.name},{split},{concepts}")
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    ds = load_dataset(f"csv:{csv_path}")
    assert ds.classnames == ["ADI", "DEB", "LYM"] and len(ds) == 12
    assert [r.split for r in ds.records[:3]] == ["train", "val", "test"]
    deb = [r for r in ds.records if ds.classnames[r.label] == "DEB"]
    assert deb and all(r.concepts == ("dense nuclei", "irregular glands") for r in deb)
    assert ds.load_image(4).size == (224, 224)


def test_csv_without_split_column_gets_a_stratified_split(tmp_path):
    rows = ["path,label"] + [f"{t.relative_to(SAMPLE).as_posix()},{t.parent.name}"
                             for t in sorted(SAMPLE.glob("*/*.png"))]
    (tmp_path / "x.csv").write_text("\n".join(rows) + "\n")
    shutil.copytree(SAMPLE, tmp_path, dirs_exist_ok=True)
    ds = from_csv(str(tmp_path / "x.csv"))
    assert ds.has_splits() and {r.split for r in ds.records} == {"train", "val", "test"}


def test_npz_source_on_the_real_pneumoniamnist():
    ds = load_dataset(f"npz:{PNEUMONIA}")
    assert ds.classnames == ["normal", "pneumonia"]
    assert [len(ds.indices(s)) for s in ("train", "val", "test")] == [3882, 524, 624]
    assert ds.records[3882].id == "val/0" and ds.meta["template_set"] == "radiology"
    img = ds.load_image(0)
    assert img.mode == "RGB" and img.size == (28, 28)
    z = np.load(PNEUMONIA)
    assert np.array_equal(np.asarray(img)[..., 0], z["train_images"][0])
    assert int(ds.labels[-1]) == int(z["test_labels"][-1, 0])


def test_npz_with_explicit_classnames(tmp_path):
    ds = from_npz(str(PNEUMONIA), classnames=["no pneumonia", "pneumonia"])
    assert ds.classnames == ["no pneumonia", "pneumonia"]


# ------------------------------------------------------------------ bad inputs

@pytest.mark.parametrize("kind", ["folder", "csv", "npz"])
def test_missing_path_is_one_line(kind, tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset(f"{kind}:{tmp_path / 'does-not-exist'}")
    assert "not found" in one_line(e)
    with pytest.raises(UserError) as e:
        load_dataset(f"{kind}:")
    assert "missing path" in one_line(e)


def test_corrupt_image_in_a_folder_is_one_line(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "d")
    (tmp_path / "d" / "TUM" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = from_folder(str(tmp_path / "d"))
    i = ds.id_index()["TUM/broken.png"]
    with pytest.raises(UserError) as e:
        ds.load_image(i)
    msg = one_line(e)
    assert "broken.png" in msg and "--skip-bad" in msg


def test_folder_without_class_folders(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(UserError) as e:
        from_folder(str(tmp_path))
    assert "no class sub-folders" in one_line(e)


def test_csv_bad_header_and_bad_split(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("file,target\nx.png,A\n")
    with pytest.raises(UserError) as e:
        from_csv(str(p))
    assert "path,label" in one_line(e)
    p.write_text("path,label,split\nx.png,A,training\n")
    with pytest.raises(UserError) as e:
        from_csv(str(p))
    assert "a.csv:2" in one_line(e)


def test_npz_that_is_not_medmnist(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(UserError) as e:
        from_npz(str(tmp_path / "x.npz"))
    assert "MedMNIST" in one_line(e)
    (tmp_path / "y.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError) as e:
        from_npz(str(tmp_path / "y.npz"))
    assert "not an .npz file" in one_line(e)


def test_image_that_is_really_an_image(tmp_path):
    """The loader's RGB guarantee for a grey PNG (MedMNIST-like files exported to folders)."""
    (tmp_path / "d" / "normal").mkdir(parents=True)
    (tmp_path / "d" / "pneumonia").mkdir(parents=True)
    z = np.load(PNEUMONIA)
    for i in range(3):
        Image.fromarray(z["train_images"][i]).save(tmp_path / "d" / "normal" / f"{i}.png")
        Image.fromarray(z["test_images"][i]).save(tmp_path / "d" / "pneumonia" / f"{i}.png")
    ds = from_folder(str(tmp_path / "d"))
    assert ds.load_image(0).mode == "RGB"
