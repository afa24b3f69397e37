"""BiomedCoOp's 11 data sets: its split files read as published, its folder layout, clear errors
for missing data, the split file fetched with a checksum. Parsers run on synthetic stand-ins:
generated images at the paths the real split files name."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from biomedcoop_standins import SPLITS_DIR, make_standin, real_split, reduced_split
from medadapt.data import download as dl
from medadapt.data.catalog import DATASETS, dataset_options
from medadapt.data.sets.biomedcoop import BIOMEDCOOP_ORDER, BIOMEDCOOP_SETS, read_split_file
from medadapt.data.sources import load_dataset
from medadapt.errors import UserError

needs_splits = pytest.mark.skipif(not SPLITS_DIR.exists(), reason="shared split files not found")


def test_eleven_registered_in_paper_order():
    assert len(BIOMEDCOOP_ORDER) == 11 and set(BIOMEDCOOP_ORDER) == set(BIOMEDCOOP_SETS)
    for name in BIOMEDCOOP_ORDER:
        info = DATASETS.get(name)
        assert info.folder == BIOMEDCOOP_SETS[name].folder
        assert info.files[0]["url"].endswith(f"/7ceb5a8/data/split_{info.folder}.json")


@needs_splits
@pytest.mark.parametrize("name", BIOMEDCOOP_ORDER)
def test_class_names_are_the_split_files(name):
    s = BIOMEDCOOP_SETS[name]
    real = real_split(s.folder)
    if real is None:
        assert not s.verified_classes
        pytest.skip(f"split_{s.folder}.json is not available here")
    names = {y: c for part in real.values() for _, y, c in part}
    assert [names[i] for i in range(len(names))] == list(s.classnames)
    assert s.verified_classes
    assert [len(real[k]) for k in ("train", "val", "test")] == list(s.counts) or name == \
        "biomedcoop-dermamnist"  # DATASETS.md says 7007 train, the file has 7006
    assert DATASETS.get(name).files[0]["sha256"] == dl.file_digest(SPLITS_DIR / f"split_{s.folder}.json")


@needs_splits
@pytest.mark.parametrize("name", BIOMEDCOOP_ORDER)
def test_parser_reads_standin_at_real_paths(tmp_path, name):
    s = BIOMEDCOOP_SETS[name]
    make_standin(tmp_path, name)
    split = json.loads((tmp_path / s.folder / f"split_{s.folder}.json").read_text())
    for spec in (f"{name}:{tmp_path}", f"{name}:{tmp_path / s.folder}"):  # data root or own folder
        ds = load_dataset(spec)
        assert ds.classnames == list(s.classnames)
        want = [(rel, y, part) for part in ("train", "val", "test") for rel, y, _ in split[part]]
        assert [(r.id, r.label, r.split) for r in ds.records] == want
        assert Path(ds.root) == tmp_path / s.folder / s.folder
    img = ds.load(ds.records[0]) if hasattr(ds, "load") else ds.loader(ds.records[0])
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    if real_split(s.folder) is not None:  # the ids are the published paths, verbatim
        published = {rel for part in real_split(s.folder).values() for rel, _, _ in part}
        assert {r.id for r in ds.records} <= published


@needs_splits
def test_default_root_is_data_home_folder(tmp_path, monkeypatch):
    make_standin(tmp_path, "busi")
    monkeypatch.setenv("MEDADAPT_DATA", str(tmp_path))
    ds = load_dataset("busi")
    assert ds.classnames == ["benign tumor", "malignant tumor", "normal scan"]
    assert "benign_tumor/benign (1).png" in {r.id for r in ds.records}


def test_missing_folder_names_expected_place_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADAPT_DATA", str(tmp_path))
    with pytest.raises(UserError) as e:
        load_dataset("kvasir")
    msg = str(e.value)
    assert str(tmp_path / "Kvasir") in msg and "split_Kvasir.json" in msg


@needs_splits
def test_missing_images_and_split_are_reported(tmp_path):
    root = make_standin(tmp_path, "btmri")
    shutil.rmtree(root / "BTMRI")
    with pytest.raises(UserError, match=r"images not found: expected .*BTMRI/BTMRI/glioma_tumor/"
                                        r".*drive\.google\.com"):
        load_dataset(f"btmri:{tmp_path}")
    root = make_standin(tmp_path / "b", "btmri")
    first = json.loads((root / "split_BTMRI.json").read_text())["test"][0][0]
    (root / "BTMRI" / first).unlink()
    with pytest.raises(UserError, match=r"1 of \d+ images named in split_BTMRI.json are missing"):
        load_dataset(f"btmri:{tmp_path / 'b'}")
    (root / "split_BTMRI.json").unlink()  # the shipped copy names every published image
    with pytest.raises(UserError, match=r"images named in split_BTMRI.json.gz are missing"):
        load_dataset(f"btmri:{tmp_path / 'b'}")
    make_standin(tmp_path / "o", "biomedcoop-octmnist", with_split=False)  # none shipped
    with pytest.raises(UserError, match=r"split_OCTMNIST.json not found .*data.split_file"):
        load_dataset(f"biomedcoop-octmnist:{tmp_path / 'o'}")


@needs_splits
def test_shipped_split_copy_is_the_published_file(tmp_path):
    s = BIOMEDCOOP_SETS["busi"]
    full = real_split("BUSI")
    from biomedcoop_standins import write_images
    write_images(tmp_path / "BUSI" / "BUSI", full)  # every published image, no split file
    ds = load_dataset(f"busi:{tmp_path}")
    assert "shipped copy" in ds.meta["split"] and len(ds.records) == 389 + 155 + 236
    want = [(rel, y, part) for part in ("train", "val", "test") for rel, y, _ in full[part]]
    assert [(r.id, r.label, r.split) for r in ds.records] == want
    assert ds.classnames == list(s.classnames)


@needs_splits
def test_split_file_option_reads_the_published_format(tmp_path):
    root = make_standin(tmp_path, "retina", with_split=False)
    s = BIOMEDCOOP_SETS["retina"]
    other = tmp_path / "elsewhere" / "my_split.json"
    other.parent.mkdir()
    split = reduced_split(s.folder, s.classnames, {"train": 1, "val": 1, "test": 1})
    other.write_text(json.dumps(split))
    cfg = {"data": {"split_file": str(other)}}
    ds = load_dataset(f"retina:{root}", **dataset_options(cfg))
    assert len(ds.records) == 12 and ds.meta["split_file"] == str(other)
    with pytest.raises(UserError, match="unknown option"):
        load_dataset(f"kather2016:{root}", split_file=str(other))


def test_split_file_checks(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"train": [["a/x.png", 0, "a"], ["b/y.png", 0, "b"]], "test": []}))
    with pytest.raises(UserError, match="label 0 is named both 'a' and 'b'"):
        read_split_file(p)
    p.write_text(json.dumps({"train": [["a/x.png", 1, "a"]], "test": []}))
    with pytest.raises(UserError, match=r"labels must be 0..0"):
        read_split_file(p)
    p.write_text(json.dumps({"train": [["../x.png", 0, "a"]], "test": []}))
    with pytest.raises(UserError, match="must be relative"):
        read_split_file(p)
    p.write_text(json.dumps({"train": [["x.png", 0]], "test": []}))
    with pytest.raises(UserError, match=r"train\[0\] must be \[relative path, label, class name\]"):
        read_split_file(p)


@needs_splits
def test_split_download_is_checksum_verified(tmp_path, monkeypatch):
    def fake_fetch(url, out):
        shutil.copy(SPLITS_DIR / url.rsplit("/", 1)[1], out)
    monkeypatch.setattr(dl, "_fetch", fake_fetch)
    monkeypatch.setenv("MEDADAPT_DATA", str(tmp_path))
    dest = dl.download("ctkidney")
    assert dest == tmp_path / "CTKidney" and (dest / "split_CTKidney.json").is_file()

    def corrupt_fetch(url, out):
        out.write_text('{"train": [], "test": []}')
    monkeypatch.setattr(dl, "_fetch", corrupt_fetch)
    with pytest.raises(UserError, match="sha256 mismatch"):
        dl.download("busi")
    assert not (tmp_path / "BUSI" / "split_BUSI.json").exists()


def test_cli_describes_and_lists(capsys):
    from medadapt.cli import main
    assert main(["datasets", "covid-qu-ex"]) == 0
    out = capsys.readouterr().out
    assert "layout: COVID_19/{COVID_19/<class folders>/<images>, split_COVID_19.json}" in out
    assert "sha256 9c73d1ef" in out and "covid lungs" in out
    assert main(["datasets"]) == 0
    assert "biomedcoop-octmnist" in capsys.readouterr().out
