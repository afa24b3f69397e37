"""Issue 13, silent misreads and faults in data: 16-bit / float images, MedMNIST-layout npz
variants, CSV pitfalls, empty and thin class folders, the content fingerprint of the feature
cache, damaged cache files, decompression bombs, instruct build / eval input."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CRC, run_cli
from medadapt.data.dataset import array_to_rgb, files_fingerprint, open_rgb, pixel_limit
from medadapt.data.sources import from_csv, from_folder, from_npz, load_dataset
from medadapt.errors import UserError

TILES = sorted(CRC.glob("*/*.png"))


def one_line(e) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------------
# image decoding
def test_16bit_png_keeps_its_dynamic_range(tmp_path):
    a = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    p = tmp_path / "x16.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I")  # really a 16-bit file
    rgb = np.asarray(open_rgb(str(p)))
    assert rgb.shape == (64, 64, 3)
    np.testing.assert_allclose(rgb[..., 0], np.round(a / 257.0), atol=1)
    assert rgb.min() == 0 and rgb.max() == 255 and 100 < rgb.mean() < 155  # not all white


def test_12bit_data_in_16bit_png_is_scaled_by_4095(tmp_path):
    a = np.linspace(0, 4095, 32 * 32).reshape(32, 32).astype(np.uint16)
    p = tmp_path / "x12.png"
    Image.fromarray(a).save(p)
    rgb = np.asarray(open_rgb(str(p)))
    np.testing.assert_allclose(rgb[..., 1], np.round(a.astype(float) * 255 / 4095.0), atol=1)


def test_16bit_and_float_tiff(tmp_path):
    a16 = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "x16.tif")
    rgb = np.asarray(open_rgb(str(tmp_path / "x16.tif")))
    np.testing.assert_allclose(rgb[..., 0], np.round(a16 / 257.0), atol=1)
    f01 = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(f01, mode="F").save(tmp_path / "f01.tif")
    rgb = np.asarray(open_rgb(str(tmp_path / "f01.tif")))
    np.testing.assert_allclose(rgb[..., 2], np.round(f01 * 255), atol=1)  # not black
    fr = np.linspace(-3.0, 1000.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(fr, mode="F").save(tmp_path / "fr.tif")
    rgb = np.asarray(open_rgb(str(tmp_path / "fr.tif")))
    assert rgb.min() == 0 and rgb.max() == 255  # stretched from min to max


def test_image_beyond_the_bomb_limit_is_one_line_naming_the_file(tmp_path):
    p = tmp_path / "huge.png"
    Image.new("RGB", (300, 300)).save(p)
    with pixel_limit(20_000):  # 90,000 px > 2 x limit: Pillow's error
        with pytest.raises(UserError) as e:
            open_rgb(str(p))
        assert str(p) in one_line(e) and "max_image_pixels" in str(e.value)
    with pixel_limit(60_000):  # between limit and 2 x limit: Pillow only warns; refused too
        with pytest.raises(UserError, match="too large"):
            open_rgb(str(p))
    with pixel_limit(100_000):
        assert open_rgb(str(p)).size == (300, 300)


def test_fit_counts_a_bomb_under_skip_bad_and_the_limit_can_be_raised(tmp_path, capsys,
                                                                       shared_data, monkeypatch):
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "cache"))  # features not cached yet
    data = tmp_path / "data"
    shutil.copytree(CRC, data)
    Image.new("RGB", (1200, 1200), (200, 100, 150)).save(data / "TUM" / "zz_huge.png")
    base = ["fit", "--backbone", "tiny-hf-clip", "--dataset", f"folder:{data}", "--method",
            "linear-probe", "--shots", "0", "--quiet", "--set", "data.max_image_pixels=500000"]
    assert run_cli(*base, "--out", tmp_path / "a") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zz_huge.png" in err[0] and "too large" in err[0]
    assert not (tmp_path / "a").exists()
    assert run_cli(*base, "--out", tmp_path / "b", "--skip-bad") == 0
    r = json.loads((tmp_path / "b" / "results.json").read_text())
    cfg_ok = ["--set", "data.max_image_pixels=2000000"]
    assert run_cli(*base[:-2], *cfg_ok, "--out", tmp_path / "c") == 0
    r2 = json.loads((tmp_path / "c" / "results.json").read_text())
    assert r["bad_images_skipped"] == 1 and r2["bad_images_skipped"] == 0  # all shots: met once


# ------------------------------------------------------------------------------------------------
# npz
def _npz(path, images, labels):
    np.savez(path, train_images=images, train_labels=labels, val_images=images[:2],
             val_labels=labels[:2], test_images=images, test_labels=labels)


def test_npz_float_images_in_unit_range_are_not_black(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.random((6, 8, 8, 3)).astype(np.float32)
    _npz(tmp_path / "f.npz", imgs, np.array([[0], [1], [0], [1], [0], [1]]))
    ds = from_npz(str(tmp_path / "f.npz"))
    got = np.asarray(ds.load_image(0))
    np.testing.assert_allclose(got, np.round(imgs[0] * 255), atol=1)


def test_npz_channel_first_arrays(tmp_path):
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, (4, 10, 12, 3), dtype=np.uint8)
    chw = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))
    _npz(tmp_path / "c.npz", chw, np.array([0, 1, 0, 1]))
    ds = from_npz(str(tmp_path / "c.npz"))
    np.testing.assert_array_equal(np.asarray(ds.load_image(1)), hwc[1])


def test_npz_negative_labels_are_refused_with_a_count(tmp_path):
    imgs = np.zeros((4, 8, 8), np.uint8)
    _npz(tmp_path / "n.npz", imgs, np.array([0, -1, 1, -1]))
    with pytest.raises(UserError) as e:
        from_npz(str(tmp_path / "n.npz"))
    assert "negative" in one_line(e) and "2 record(s)" in str(e.value)
    # the MedMNIST-named path too
    _npz(tmp_path / "pneumoniamnist.npz", imgs, np.array([0, -1, 1, 1]))
    with pytest.raises(UserError, match="negative"):
        from_npz(str(tmp_path / "pneumoniamnist.npz"))


def test_npz_bad_array_layout_is_one_line(tmp_path):
    _npz(tmp_path / "b.npz", np.zeros((4, 2, 8, 8, 3), np.uint8), np.array([0, 1, 0, 1]))
    with pytest.raises(UserError, match="expected N x H x W"):
        from_npz(str(tmp_path / "b.npz"))


def test_array_to_rgb_variants():
    assert np.asarray(array_to_rgb(np.full((4, 4), 0.5))).max() == 128
    assert np.asarray(array_to_rgb(np.full((4, 4, 1), 200, np.uint8))).max() == 200
    assert np.asarray(array_to_rgb(np.full((4, 4), 65535, np.uint16))).max() == 255
    assert np.asarray(array_to_rgb(np.full((4, 4), 200.0))).max() == 200  # 8-bit as floats


# ------------------------------------------------------------------------------------------------
# CSV
def _csv(tmp_path, lines, encoding="utf-8", bom=False):
    img = tmp_path / "imgs"
    img.mkdir(exist_ok=True)
    for t in TILES[:8]:
        shutil.copy(t, img / t.name)
    f = tmp_path / "d.csv"
    data = "\n".join(lines).encode(encoding)
    f.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return f


def _rows(n=8, split=True):
    return [f"imgs/{t.name},{t.parent.name}" + (f",{('train', 'val', 'test')[i % 3]}" if split else "")
            for i, t in enumerate(TILES[:n])]


def test_csv_partial_split_column_is_an_error(tmp_path):
    rows = _rows()
    rows[3] = rows[3].rsplit(",", 1)[0] + ","
    with pytest.raises(UserError) as e:
        from_csv(str(_csv(tmp_path, ["path,label,split"] + rows)))
    assert ":5:" in one_line(e) and "every row" in str(e.value)


def test_csv_conflicting_labels_and_duplicate_rows(tmp_path):
    rows = _rows()
    with pytest.raises(UserError) as e:
        from_csv(str(_csv(tmp_path, ["path,label,split"] + rows + [rows[0]])))
    assert "listed twice" in one_line(e) and "line 2" in str(e.value)
    other = rows[0].replace(",ADI,", ",TUM,")
    with pytest.raises(UserError) as e:
        from_csv(str(_csv(tmp_path, ["path,label,split"] + rows + [other])))
    assert "conflicting labels 'ADI' and 'TUM'" in one_line(e)


def test_csv_colliding_class_names_and_empty_label(tmp_path):
    rows = _rows(split=False)
    rows[0] = rows[0].rsplit(",", 1)[0] + ",tumor_cells"
    rows[1] = rows[1].rsplit(",", 1)[0] + ",tumor cells"
    with pytest.raises(UserError) as e:
        from_csv(str(_csv(tmp_path, ["path,label"] + rows)))
    assert "'tumor cells' and 'tumor_cells'" in one_line(e)
    rows = _rows(split=False)
    rows[2] = rows[2].rsplit(",", 1)[0] + ","
    with pytest.raises(UserError) as e:
        from_csv(str(_csv(tmp_path, ["path,label"] + rows)))
    assert ":4: empty label" in one_line(e)


def test_csv_with_excel_bom_and_latin1(tmp_path):
    ds = from_csv(str(_csv(tmp_path, ["path,label,split"] + _rows(), bom=True)))
    assert len(ds) == 8
    rows = _rows(split=False)
    rows[0] = rows[0].rsplit(",", 1)[0] + ",Tumeur bénigne"
    with pytest.raises(UserError) as e:
        from_csv(str(_csv(tmp_path, ["path,label"] + rows, encoding="latin-1")))
    assert "not UTF-8" in one_line(e)


def test_csv_absolute_paths_may_point_anywhere(tmp_path):
    f = tmp_path / "abs.csv"
    f.write_text("path,label\n" + "\n".join(f"{t},{t.parent.name}" for t in TILES[:8]))
    ds = from_csv(str(f))
    assert ds.load_image(0).size == (224, 224)


# ------------------------------------------------------------------------------------------------
# folders
def test_empty_class_folder_and_single_image_class_warn(tmp_path, capsys):
    data = tmp_path / "d"
    for c in ("A", "B"):
        (data / c).mkdir(parents=True)
        for t in TILES[:4]:
            shutil.copy(t, data / c / t.name)
    (data / "EMPTY").mkdir()
    (data / "ONE").mkdir()
    shutil.copy(TILES[0], data / "ONE" / "x.png")
    shutil.copy(TILES[1], data / "loose.png")
    ds = from_folder(str(data))
    err = capsys.readouterr().err
    assert "1 image(s) directly in the data set folder (e.g. loose.png)" in err
    assert ds.classnames == ["A", "B", "ONE"]
    assert "'EMPTY' holds no images" in err
    assert "class 'ONE' has 1 image(s) and no test image" in err


def test_hidden_folders_are_skipped_by_fit_and_predict_alike(tmp_path):
    data = tmp_path / "d"
    for c in ("A", "B"):
        (data / c / ".ipynb_checkpoints").mkdir(parents=True)
        for t in TILES[:3]:
            shutil.copy(t, data / c / t.name)
        shutil.copy(TILES[5], data / c / ".ipynb_checkpoints" / "copy.png")
        shutil.copy(TILES[6], data / c / ".hidden.png")
    ds = from_folder(str(data))
    assert len(ds) == 6 and not any("." in Path(r.id).parts[1][:1] for r in ds.records)
    from medadapt.engine.predict import predict_inputs
    assert len(predict_inputs([str(data)])) == 6


# ------------------------------------------------------------------------------------------------
# fingerprint and feature cache
def test_fingerprint_catches_changed_bytes_with_same_size_and_mtime(tmp_path):
    data = tmp_path / "d"
    (data / "A").mkdir(parents=True)
    p = data / "A" / "x.png"
    shutil.copy(TILES[0], p)
    fp1 = files_fingerprint(str(data), ["A/x.png"])
    st = os.stat(p)
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(p).st_size == st.st_size and os.stat(p).st_mtime_ns == st.st_mtime_ns
    assert files_fingerprint(str(data), ["A/x.png"]) != fp1
    # unchanged bytes: the same fingerprint (also through the memo)
    assert files_fingerprint(str(data), ["A/x.png"]) == files_fingerprint(str(data), ["A/x.png"])


def test_fingerprint_of_large_files_samples_and_uses_ctime(tmp_path, monkeypatch):
    from medadapt.data import dataset
    monkeypatch.setattr(dataset, "FINGERPRINT_FULL_BYTES", 1000)
    p = tmp_path / "big.bin"
    p.write_bytes(os.urandom(200_000))
    fp1 = files_fingerprint(str(tmp_path), ["big.bin"])
    st = os.stat(p)
    b = bytearray(p.read_bytes())
    b[100_000] ^= 0xFF
    p.write_bytes(bytes(b))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files_fingerprint(str(tmp_path), ["big.bin"]) != fp1


def test_changed_image_gets_fresh_features(tmp_path, shared_data):
    """Uncompressed BMPs: new pixels, the same size and mtime -> new features, not stale ones."""
    from medadapt.backbones import load_backbone
    from medadapt.engine.features import FeatureCache
    data = tmp_path / "d"
    for i, t in enumerate(TILES[:8]):
        (data / t.parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(t).convert("RGB").save(data / t.parent.name / f"{i}.bmp")
    bb = load_backbone("tiny-hf-clip", device="cpu")
    cache = FeatureCache(root=tmp_path / "cache")
    ds = from_folder(str(data))
    f1, _ = cache.encode(bb, ds, [0], progress=False)
    p = data / ds.records[0].id
    st = os.stat(p)
    Image.open(TILES[-1]).convert("RGB").save(p)  # another tile, same format and size
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(p).st_size == st.st_size and os.stat(p).st_mtime_ns == st.st_mtime_ns
    ds2 = from_folder(str(data))
    f2, _ = cache.encode(bb, ds2, [0], progress=False)
    import torch
    with torch.no_grad():
        direct = bb.encode_image(bb.preprocess(ds2.load_image(0))[None], normalize=False)
    assert np.abs(f1.numpy() - f2.numpy()).max() > 1e-3
    np.testing.assert_allclose(f2.numpy(), direct.numpy(), atol=1e-4)


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "wrong_rows"])
def test_damaged_feature_cache_is_reported_and_rebuilt(tmp_path, capsys, damage, shared_data):
    from safetensors.torch import save_file
    import torch
    from medadapt.backbones import load_backbone
    from medadapt.engine.features import FeatureCache
    bb = load_backbone("tiny-hf-clip", device="cpu")
    cache = FeatureCache(root=tmp_path / "cache")
    ds = load_dataset(f"folder:{CRC}")
    good, _ = cache.encode(bb, ds, [0, 1, 2], progress=False)
    path = next((tmp_path / "cache").glob("*.safetensors"))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "random":
        path.write_bytes(os.urandom(4096))
    else:
        save_file({"features": torch.zeros(2, good.shape[1])}, str(path),
                  metadata={"ids": json.dumps([ds.records[0].id])})
    capsys.readouterr()
    again, _ = cache.encode(bb, ds, [0, 1, 2], progress=False)
    assert "feature cache file" in capsys.readouterr().err
    np.testing.assert_allclose(again.numpy(), good.numpy(), atol=1e-5)
    # rebuilt: the next call reads it without a warning
    cache.encode(bb, ds, [0, 1, 2], progress=False)
    assert "damaged" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# instruct build / eval
def test_instruct_null_answer_is_bad_split_and_source_keys_checked(tmp_path, capsys):
    from medadapt.instruct.cli import main
    shutil.copy(TILES[0], tmp_path / "img0.png")
    items = [{"id": "a", "image": "img0.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "Fat."}]},
        {"id": "b", "image": "img0.png", "conversations": [
            {"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": None}]},
        {"id": "c", "image": "img0.png", "conversations": [
            {"from": "human", "value": "<image>\nQ2?"}, {"from": "gpt"}]}]
    f = tmp_path / "l.json"
    f.write_text(json.dumps(items))
    rc = main(["build", "--out", str(tmp_path / "o"), "--source", f"kind=llava-med,path={f}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing or null answer" in err[0]
    rc = main(["build", "--out", str(tmp_path / "o"), "--source", f"kind=llava-med,path={f}",
               "--skip-bad", "--split", "1,0,0"])
    assert rc == 0
    recs = [json.loads(l) for l in (tmp_path / "o" / "data.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and "None" not in json.dumps(recs)
    st = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert st["skipped"] == {"empty_answer": 2}
    rc = main(["build", "--out", str(tmp_path / "o2"), "--source", f"kind=llava-med,path={f}",
               "--split", "0.9,0.9,0.9"])
    assert rc == 2 and "add up to 1" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
    rc = main(["build", "--out", str(tmp_path / "o3"), "--source",
               f"kind=llava-med,path={f},imagez=x"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown key 'imagez'" in err and "did you mean 'images'" in err


def test_instruct_eval_results_with_bad_json(tmp_path, capsys):
    from medadapt.instruct.cli import main
    bad = tmp_path / "metrics.json"
    bad.write_text("{not json")
    rc = main(["eval", "--results", str(bad), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not valid JSON" in err[0]
    bad.write_text("[1, 2]")
    rc = main(["eval", "--results", str(bad), "--out", str(tmp_path / "e")])
    assert rc == 2 and "not a metrics.json" in capsys.readouterr().err


def test_dark_16bit_image_stays_dark_and_int64_8bit_arrays_pass():
    dark = np.full((4, 4), 200, np.uint16)  # 200 of 4095: dark, not 200 of 255
    assert np.asarray(array_to_rgb(dark)).max() == round(200 * 255 / 4095)
    assert np.asarray(array_to_rgb(np.full((4, 4), 200, np.int64))).max() == 200
