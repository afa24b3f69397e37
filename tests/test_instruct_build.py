"""Data builder: real CRC-VAL-HE-7K tiles and PathVQA questions, cleaning, split, exports, bad input."""
import json
import os
import shutil
from pathlib import Path

import pytest

from medadapt.errors import UserError
from medadapt.instruct import config as C
from medadapt.instruct.build import build
from medadapt.instruct.records import IMAGE_PLACEHOLDER, read_records

DATA = Path(__file__).parents[2] / "shared" / "data"
CRC = DATA / "crc-val-he-7k-sample"
PVQA = DATA / "pathvqa-text" / "pvqa_test.json"
TILES = sorted(CRC.glob("*/*.png"))


@pytest.fixture
def pvqa_images(tmp_path):
    """PathVQA ships text only here: stand-in images named by img_id (real H&E tiles)."""
    folder = tmp_path / "pvqa_images"
    folder.mkdir()
    for i in range(1, 9):
        shutil.copy(TILES[i], folder / f"test_{i:04d}.png")
    return folder


def cfg(sources, **kw):
    sets = [f"{k}={json.dumps(v)}" for k, v in kw.items()]
    return C.load("build", cli={"sources": sources}, sets=sets)


def crc_source(**kw):
    return {"kind": "class-folder", "path": str(CRC), "labels": "crc", "name": "crc", **kw}


def test_build_crc_and_pathvqa(tmp_path, pvqa_images):
    out = tmp_path / "out"
    st = build(cfg([crc_source(), {"kind": "pathvqa", "path": str(PVQA), "images": str(pvqa_images),
                                   "limit": 8, "name": "pathvqa"}]), out)
    assert st["n_items"] == 40 and st["per_task"] == {"classification": 32, "vqa": 8}
    recs = read_records(out / "data.jsonl")
    for r in recs:
        assert r.messages[0]["content"].startswith(IMAGE_PLACEHOLDER)
        assert Path(r.images[0]).is_file()
        assert r.messages[-1]["role"] == "assistant" and r.answer
    crc = [r for r in recs if r.source == "crc"]
    assert {r.label for r in crc} == {"ADI", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"}
    adi = next(r for r in crc if r.label == "ADI")
    assert adi.answer == "Adipose tissue"
    assert len({r.messages[0]["content"] for r in crc}) > 1  # several phrasings
    # PathVQA's own split is kept; the CRC split is by image, fixed, every split non-empty
    assert all(r.split == "test" for r in recs if r.source == "pathvqa")
    splits = {s: {r.images[0] for r in crc if r.split == s} for s in ("train", "val", "test")}
    assert all(splits.values()) and not (splits["train"] & splits["test"])
    assert sum(len(v) for v in splits.values()) == 32
    # labels.json for evaluation
    labels = json.loads((out / "labels.json").read_text())
    assert labels["crc"]["classes"]["STR"]["name"] == "cancer-associated stroma"
    # exporters
    info = json.loads((out / "llamafactory" / "dataset_info.json").read_text())
    assert info["pathinsight_train"]["formatting"] == "sharegpt"
    assert info["pathinsight_train"]["columns"] == {"messages": "messages", "images": "images"}
    lf = json.loads((out / "llamafactory" / "pathinsight_train.json").read_text())
    assert lf[0]["messages"][0]["role"] == "user" and lf[0]["images"]
    sw = [json.loads(x) for x in (out / "swift" / "pathinsight_test.jsonl").read_text().splitlines()]
    assert set(sw[0]) == {"messages", "images"}
    assert (out / "stats.md").read_text().startswith("# Instruction data statistics")


def test_split_is_fixed_by_seed(tmp_path):
    build(cfg([crc_source()]), tmp_path / "a")
    build(cfg([crc_source()]), tmp_path / "b")
    build(cfg([crc_source()], seed=7), tmp_path / "c")
    a, b, c = ((tmp_path / x / "data.jsonl").read_text() for x in "abc")
    assert a == b and a != c


def test_existing_output_is_not_overwritten(tmp_path):
    build(cfg([crc_source(limit_per_class=1)]), tmp_path)
    with pytest.raises(UserError, match="--overwrite"):
        build(cfg([crc_source(limit_per_class=1)]), tmp_path)


def _chatml_lines(tile):
    good = {"messages": [{"role": "user", "content": "<image>\nWhat is this?"},
                         {"role": "assistant", "content": "Adipose tissue."}], "images": [str(tile)]}
    unknown = {"messages": [{"role": "user", "content": "<image>\nQ"},
                            {"role": "doctor", "content": "A"}], "images": [str(tile)]}
    empty = {"messages": [{"role": "user", "content": "<image>\nQ"},
                          {"role": "assistant", "content": "  "}], "images": [str(tile)]}
    missing = {"messages": [{"role": "user", "content": "<image>\nQ"},
                            {"role": "assistant", "content": "A"}], "images": ["/nope/missing.png"]}
    return [json.dumps(good), '{"messages": [', json.dumps(unknown), json.dumps(empty),
            json.dumps(missing), json.dumps(dict(good, id="second"))]


@pytest.mark.parametrize("line,needle", [(2, "malformed JSON"), (3, "unknown role 'doctor'"),
                                         (4, "empty answer"), (5, "image not found")])
def test_bad_input_names_file_and_line(tmp_path, line, needle):
    lines = _chatml_lines(TILES[0])
    keep = [lines[0], lines[line - 1]]  # the bad line becomes line 2
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(keep) + "\n")
    with pytest.raises(UserError) as e:
        build(cfg([{"kind": "chatml", "path": str(f), "name": "mine"}]), tmp_path / "out")
    msg = str(e.value)
    assert f"{f}:2" in msg and needle in msg and "\n" not in msg
    assert not (tmp_path / "out" / "data.jsonl").exists()


def test_skip_bad_counts(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(_chatml_lines(TILES[0])) + "\n")
    st = build(cfg([{"kind": "chatml", "path": str(f), "name": "mine"}], skip_bad=True,
                   split={"train": 1, "val": 0, "test": 0}), tmp_path / "out")
    assert st["skipped"] == {"malformed_json": 1, "unknown_role": 1, "empty_answer": 1, "missing_image": 1}
    assert st["n_items"] == 1  # the second good line duplicates the first
    assert st["cleaned"] == {"clean_duplicate": 1}


def test_caption_csv_cleaning_and_csv_line(tmp_path):
    f = tmp_path / "captions.csv"
    rows = ["image,caption", f"{TILES[0]},Sheets of mature adipocytes.",
            f"{TILES[1]},...", f"{TILES[2]}," + "very long " * 50,
            f"{TILES[0]},Sheets of mature adipocytes.", f"{TILES[3]},Dense lymphoid infiltrate."]
    f.write_text("\n".join(rows) + "\n")
    st = build(cfg([{"kind": "caption-csv", "path": str(f), "name": "cap"}], max_chars=300), tmp_path / "o")
    assert st["cleaned"] == {"clean_empty": 1, "clean_too_long": 1, "clean_duplicate": 1}
    assert st["per_task"] == {"caption": 2}
    f.write_text("image,caption\n" + f"{TILES[0]},ok\n{TILES[1]},\n")
    with pytest.raises(UserError, match=rf"{f}:3: empty answer"):
        build(cfg([{"kind": "caption-csv", "path": str(f), "name": "cap"}]), tmp_path / "o2")


def test_llava_med_multiturn_and_unknown_role(tmp_path):
    shutil.copy(TILES[0], tmp_path / "img0.png")
    items = [{"id": "a", "image": "img0.png", "conversations": [
        {"from": "human", "value": "What is shown?\n<image>"}, {"from": "gpt", "value": "Fat."},
        {"from": "human", "value": "Any tumor?"}, {"from": "gpt", "value": "No."}]},
        {"id": "b", "image": "img0.png", "conversations": [
            {"from": "human", "value": "<image>\nQ"}, {"from": "bot", "value": "A"}]}]
    f = tmp_path / "llava_med.json"
    f.write_text(json.dumps(items, indent=1))
    with pytest.raises(UserError) as e:
        build(cfg([{"kind": "llava-med", "path": str(f)}]), tmp_path / "o")
    line_b = next(i for i, l in enumerate(f.read_text().splitlines(), 1) if '"b"' in l) - 1
    assert f"{f}:{line_b}: unknown role 'bot'" in str(e.value)
    st = build(cfg([{"kind": "llava-med", "path": str(f)}], skip_bad=True), tmp_path / "o")
    rec = read_records(tmp_path / "o" / "data.jsonl")[0]
    assert rec.task == "conversation" and len(rec.messages) == 4
    assert rec.messages[0]["content"] == "<image>\nWhat is shown?"
    assert st["skipped"] == {"unknown_role": 1}


def test_clip_filters_with_a_medadapt_backbone(tmp_path):
    f = tmp_path / "captions.csv"
    f.write_text("image,caption\n" + "".join(f"{t},caption number {i}\n" for i, t in enumerate(TILES[:6])))
    st = build(cfg([{"kind": "caption-csv", "path": str(f), "name": "cap"}, crc_source(limit_per_class=1)],
                   clip_filter={"backbone": "tiny-hf-clip", "sources": ["cap"], "top_n": 2}), tmp_path / "o")
    assert st["per_source"] == {"cap": 2, "crc": 8}
    assert st["cleaned"] == {"clip_low_similarity": 4}
    st = build(cfg([crc_source(limit_per_class=1), {"kind": "caption-csv", "path": str(f), "name": "cap"}],
                   clip_filter={"backbone": "tiny-hf-clip", "he_only": True, "sources": ["crc"]}),
               tmp_path / "o2")
    assert st["per_source"]["cap"] == 6
    assert st["per_source"].get("crc", 0) + st["cleaned"]["clip_not_he"] == 8


class FakeBackbone:
    """Image feature [1, 0] for pink (H&E-like) images, [0, 1] otherwise; text: prompt 0 -> [1, 0]."""

    def preprocess(self, im):
        import torch
        r, g, b = im.resize((1, 1)).getpixel((0, 0))
        return torch.tensor([1.0, 0.0]) if r > g + 20 else torch.tensor([0.0, 1.0])

    def encode_image(self, x):
        return x

    def encode_texts(self, texts):
        import torch
        return torch.tensor([[1.0, 0.0]] + [[0.0, 1.0]] * (len(texts) - 1))


def test_keep_he_and_top_n_logic(tmp_path):
    from PIL import Image

    from medadapt.instruct.filters import keep_he, top_n_by_similarity
    from medadapt.instruct.records import Record

    gray = tmp_path / "gray.png"
    Image.new("RGB", (8, 8), (128, 128, 128)).save(gray)
    he = next(t for t in TILES if t.parent.name == "TUM")
    mk = lambda i, p, a: Record(id=str(i), images=[str(p)], task="caption", messages=[
        {"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": a}])
    recs = [mk(0, he, "a"), mk(1, gray, "b"), mk(2, he, "c")]
    kept, n = keep_he(recs, FakeBackbone())
    assert [r.id for r in kept] == ["0", "2"] and n == 1
    kept, n = top_n_by_similarity(recs, FakeBackbone(), 2)  # text "b" etc. -> prompt-0-like [1, 0]
    assert [r.id for r in kept] == ["0", "1"] and n == 1


def test_split_is_by_image_across_sources(tmp_path):
    """The same tiles as classification items and as captions: each tile's items share a split."""
    tiles = sorted(CRC.glob("*/*.png"))[:32]
    f = tmp_path / "captions.csv"
    f.write_text("image,caption\n" + "".join(f"{t},caption of tile {i}\n" for i, t in enumerate(tiles)))
    g = tmp_path / "vqa.csv"
    g.write_text("image,question,answer\n" + "".join(f"{t},Is it H&E?,yes\n" for t in tiles[:8]))
    st = build(cfg([crc_source(), {"kind": "caption-csv", "path": str(f), "name": "cap"},
                    {"kind": "vqa-csv", "path": str(g), "name": "vqa", "split": "test"}]), tmp_path / "o")
    recs = read_records(tmp_path / "o" / "data.jsonl")
    by_image = {}
    for r in recs:
        by_image.setdefault(r.images[0], set()).add(r.split)
    assert len(by_image) >= 32 and all(len(s) == 1 for s in by_image.values())
    real = {}
    for k, v in by_image.items():
        real.setdefault(os.path.realpath(k), set()).update(v)
    assert all(len(s) == 1 for s in real.values())  # one file by two paths is one image
    assert all(real[os.path.realpath(t)] == {"test"} for t in tiles[:8])  # forced split wins
    assert st["per_split"]["train"] > 0
