"""`medadapt synth pretrain` / `generate` through their argparse entry points."""
import argparse
import hashlib
import json

import pytest

from medadapt.errors import UserError
from medadapt.synth import cli


def parse(argv):
    ap = argparse.ArgumentParser(prog="medadapt")
    cli.add_parser(ap.add_subparsers(dest="command"))
    return ap.parse_args(argv)


TINY = """pretrain:
  steps: 3
  batch_size: 8
  warmup_steps: 1
  workers: 0
  vision_width: 32
  vision_layers: 1
  vision_heads: 2
  vision_mlp: 64
  text_width: 32
  text_layers: 1
  text_heads: 2
  text_mlp: 64
  embed_dim: 16
  log_every: 1
  corpus:
    name_prob: 0.5
"""


def _digest(folder):
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_pretrain_is_deterministic_and_loads(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    runs = []
    for name in ("a", "b"):
        args = parse(["synth", "pretrain", "--config", str(cfg), "--out", str(tmp_path / name)])
        assert args.func(args) == 0
        runs.append(tmp_path / name)
    assert _digest(runs[0]) == _digest(runs[1])
    args = parse(["synth", "pretrain", "--config", str(cfg), "--out", str(tmp_path / "c"),
                  "--seed", "1"])
    args.func(args)
    assert _digest(tmp_path / "c") != _digest(runs[0])
    log = json.loads((runs[0] / "training.json").read_text())
    assert log["config"]["steps"] == 3 and log["curve"]
    from medadapt.backbones import load_backbone
    bb = load_backbone(str(runs[0]))
    f = bb.encode_texts(["dense small round dark nuclei."])
    assert f.shape == (1, 16)


def test_pretrain_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  stepz: 3\n")
    args = parse(["synth", "pretrain", "--config", str(bad), "--out", str(tmp_path / "x")])
    with pytest.raises(UserError, match="stepz"):
        args.func(args)


def test_help_explains_options():
    ap = argparse.ArgumentParser(prog="medadapt")
    cli.add_parser(ap.add_subparsers(dest="command"))
    sub = ap._subparsers._group_actions[0].choices["synth"]
    text = sub._subparsers._group_actions[0].choices["pretrain"].format_help()
    for opt in ("--config", "--out", "--seed", "--steps", "--threads", "--sanity"):
        assert opt in text
    assert "configs/synth/pretrain.yaml" in text


def test_generate_from_class_and_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "cache"))
    args = parse(["synth", "generate", "--class", "tumour epithelium", "--domain", "breast",
                  "-n", "3", "--out", str(tmp_path / "t")])
    assert args.func(args) == 0
    assert len(list((tmp_path / "t" / "tumour_epithelium").glob("*.png"))) == 3
    assert (tmp_path / "t" / "grid.png").exists()
    args = parse(["synth", "generate", "--dataset", "synth-organs", "--split", "val", "-n", "2",
                  "--out", str(tmp_path / "d")])
    args.func(args)
    info = json.loads((tmp_path / "d" / "tiles.json").read_text())
    assert len(info) == 4 and {i["class"] for i in info} == {"benign", "malignant"}
    bad = parse(["synth", "generate", "--class", "unicorn", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="valid"):
        bad.func(bad)
