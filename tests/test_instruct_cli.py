"""build -> train -> eval end to end through the CLI, offline, on the tiny LLaVA and real data."""
import argparse
import json
import shutil
from pathlib import Path

import pytest

from medadapt.instruct.cli import add_parser, main
from medadapt.instruct.tiny import build_tiny_llava

DATA = Path(__file__).parents[2] / "shared" / "data"
CRC = DATA / "crc-val-he-7k-sample"
PVQA = DATA / "pathvqa-text" / "pvqa_test.json"


def test_add_parser_contract():
    parser = argparse.ArgumentParser(prog="medadapt")
    add_parser(parser.add_subparsers(dest="command"))
    for cmd in ("build", "train", "eval"):
        args = parser.parse_args(["instruct", cmd, "--out", "x", "--model", "m", "--data", "d"]
                                 if cmd != "build" else ["instruct", cmd, "--out", "x"])
        assert callable(args.func)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["instruct", "train", "--help"])
    assert e.value.code == 0


@pytest.mark.parametrize("cmd", ["build", "train", "eval"])
def test_help_explains_every_option_with_its_default(cmd, capsys):
    with pytest.raises(SystemExit):
        main([cmd, "--help"])
    text = capsys.readouterr().out
    options = [l.split()[0] for l in text.splitlines() if l.strip().startswith("--")]
    assert len(options) >= 5
    for block in text.split("\n  --")[1:]:
        assert "default" in block or "required" in block or "exit" in block, block


def test_build_train_eval_end_to_end(tmp_path, capsys):
    images = tmp_path / "pvqa_images"  # PathVQA ships text only here: real H&E tiles as stand-ins
    images.mkdir()
    tiles = sorted(CRC.glob("*/*.png"))
    for i in range(1, 8):
        shutil.copy(tiles[i * 4], images / f"test_{i:04d}.png")
    data, run, ev = tmp_path / "data", tmp_path / "run", tmp_path / "eval"
    rc = main(["build", "--out", str(data), "--split", "0.5,0,0.5",
               "--source", f"kind=class-folder,path={CRC},labels=crc,name=crc,limit_per_class=2",
               "--source", f"kind=pathvqa,path={PVQA},images={images},limit=6,name=pathvqa"])
    out, err = capsys.readouterr()
    assert rc == 0 and "wrote 22 items" in out, err
    # the tiny model's tokenizer is trained on the built text (no download)
    texts = [m["content"] for l in (data / "data.jsonl").read_text().splitlines()
             for m in json.loads(l)["messages"]]
    model = build_tiny_llava(tmp_path / "tiny", texts)
    rc = main(["train", "--model", str(model), "--data", str(data), "--out", str(run),
               "--lr", "3e-3", "--max-steps", "80", "--batch-size", "4", "--set", "lr_scheduler=constant",
               "--freeze-vision",
               "--set", "logging_steps=5", "--set", "save_strategy=no", "--set", "warmup_ratio=0"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["method"] == "full" and summary["n_train"] == 8
    assert summary["losses"][-1] < 0.5 * summary["losses"][0]
    assert "loss" in out and str(run / "final") in out
    rc = main(["eval", "--data", str(data), "--out", str(ev), "--model", f"base={model}",
               "--model", f"full={run / 'final'}", "--max-new-tokens", "12", "--split", "train"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "| base |" in out and "| full |" in out
    full = json.loads((ev / "full" / "metrics.json").read_text())
    crc = full["results"]["classification/crc"]
    assert crc["n"] == 8 and sum(crc["counts"].values()) == 8
    assert crc["fuzzy"]["macro_f1"] >= crc["exact"]["macro_f1"]
    base = json.loads((ev / "base" / "metrics.json").read_text())
    assert crc["fuzzy"]["accuracy"] >= 0.375  # memorised most of the 8 training tiles
    assert crc["fuzzy"]["accuracy"] > base["results"]["classification/crc"]["fuzzy"]["accuracy"]
    preds = [json.loads(l) for l in (ev / "full" / "predictions.jsonl").read_text().splitlines()]
    assert {"prediction", "reference", "mapped_label", "match"} <= set(preds[0])
    table = json.loads((ev / "comparison.json").read_text())
    assert [r["model"] for r in table["rows"]] == ["base", "full"]
    # PathVQA questions are all in the test split (its own split is kept)
    rc = main(["eval", "--data", str(data), "--out", str(tmp_path / "ev2"), "--model", f"full={run / 'final'}",
               "--max-new-tokens", "4", "--results", str(ev / "base" / "metrics.json")])
    assert rc == 0
    res = json.loads((tmp_path / "ev2" / "full" / "metrics.json").read_text())["results"]
    assert res["vqa/pathvqa"]["n"] == 6
    assert "| base |" in (tmp_path / "ev2" / "comparison.md").read_text()


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    tile = next(CRC.glob("ADI/*.png"))
    f = tmp_path / "in.jsonl"
    good = {"messages": [{"role": "user", "content": "<image>\nQ"}, {"role": "assistant", "content": "A"}],
            "images": [str(tile)]}
    f.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, images=[str(tmp_path / "gone.png")])) + "\n")
    rc = main(["build", "--out", str(tmp_path / "o"), "--source", f"kind=chatml,path={f}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert f"{f}:2: image not found" in err[0] and "--skip-bad" in err[0]
    rc = main(["build", "--out", str(tmp_path / "o"), "--source", f"kind=chatml,path={f}", "--skip-bad"])
    assert rc == 0 and "missing_image 1" in capsys.readouterr().out
    rc = main(["build", "--out", str(tmp_path / "o2"), "--source", "kind=nope,path=x"])
    assert rc == 2 and "unknown source kind 'nope'" in capsys.readouterr().err
    rc = main(["train", "--model", str(tmp_path / "missing"), "--data", str(f), "--out", str(tmp_path / "r")])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_cli_image_token_truncation_error(tmp_path, capsys):
    tile = next(CRC.glob("LYM/*.png"))
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>\nWhat tissue?"},
                                          {"role": "assistant", "content": "Lymphocytes"}],
                             "images": [str(tile)]}) + "\n")
    model = build_tiny_llava(tmp_path / "tiny", ["Lymphocytes"])
    rc = main(["train", "--model", str(model), "--data", str(f), "--out", str(tmp_path / "r"),
               "--max-length", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert f"{f}:1:" in err[-1] and "image tokens" in err[-1] and "max_length" in err[-1]


def test_cli_lora_train_then_merge(tmp_path, capsys):
    tile = next(CRC.glob("MUS/*.png"))
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>\nWhat tissue?"},
                                          {"role": "assistant", "content": "Smooth muscle"}],
                             "images": [str(tile)]}) + "\n")
    model = build_tiny_llava(tmp_path / "tiny", ["Smooth muscle"])
    rc = main(["train", "--model", str(model), "--data", str(f), "--out", str(tmp_path / "r"),
               "--method", "lora", "--lora-r", "4", "--lora-targets", "q_proj,v_proj", "--max-steps", "2",
               "--lr", "1e-3", "--set", "save_strategy=no"])
    assert rc == 0, capsys.readouterr().err
    cfg = json.loads((tmp_path / "r" / "final" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and all(t.endswith(("q_proj", "v_proj")) for t in cfg["target_modules"])
    rc = main(["merge", "--adapter", str(tmp_path / "r" / "final"), "--out", str(tmp_path / "m")])
    assert rc == 0 and (tmp_path / "m" / "config.json").is_file()
    assert not (tmp_path / "m" / "adapter_config.json").exists()
    rc = main(["merge", "--adapter", str(model), "--out", str(tmp_path / "m2")])
    assert rc == 2 and "not a peft adapter" in capsys.readouterr().err
