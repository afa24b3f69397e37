"""Runs on the Hugging Face Hub, offline: `medadapt push --dry-run` writes the folder, which placed
in a hub-cache layout (models--org--name/snapshots/<sha> + refs/main) loads by hf://org/name with
HF_HUB_OFFLINE=1 and predicts exactly as the local run; a missing backbone or repository is one
line; a real push hands huggingface_hub that same folder."""
import csv
import json
import socket

import numpy as np
import pytest
import yaml

import medadapt
from conftest import colour_tiles, run_cli
from medadapt.errors import UserError

SHA = "1234567890abcdef1234567890abcdef12345678"


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    data = colour_tiles(root / "private" / "tiles")
    run = medadapt.fit(backbone="tiny-hf-clip", dataset=f"folder:{data}", method="coop", shots=2,
                       seeds=[1, 2], out=root / "run", settings={"train.epochs": 1,
                                                                 "data.augment_views": 0,
                                                                 "method.n_ctx": 2},
                       quiet=True, progress=False)
    return {"root": root, "run": run, "data": data}


def hub_layout(cache, repo, folder, sha=SHA):
    """huggingface_hub's cache layout: files in blobs/<hash>, snapshots/<sha>/ holds relative
    symlinks to them, refs/main names the snapshot."""
    import hashlib
    import os
    base = cache / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / sha
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(sha)
    return snap


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    def refuse(*a, **k):
        raise OSError("network is off in this test")
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_dry_run_folder_and_model_card(local_run, tmp_path, capsys):
    out = tmp_path / "card"
    assert run_cli("push", local_run["run"].path, "--repo", "my-lab/coop-tiny",
                   "--dry-run", out) == 0
    assert "nothing was uploaded" in capsys.readouterr().out
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["README.md", "classes.json", "config.yaml", "seed1/params.safetensors",
                     "seed1/results.json", "seed2/params.safetensors", "seed2/results.json",
                     "summary.json"]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["dataset"] == "folder:tiles"  # no local path on the Hub
    assert "/" not in json.dumps({k: v for k, v in cfg.items() if k != "backbone"})
    assert str(local_run["data"]) not in (out / "seed1" / "results.json").read_text()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: medadapt\nlicense: other\n")
    assert "`tiny-hf-clip`" in card and "test only" in card  # backbone and its licence
    assert "Zhou et al., Learning to Prompt for Vision-Language Models, IJCV 2022" in card
    assert 'medadapt.load_run("hf://my-lab/coop-tiny")' in card
    assert "medadapt predict --run hf://my-lab/coop-tiny" in card
    acc = json.loads((local_run["run"].path / "summary.json").read_text())["metrics"]["accuracy"]
    assert f"| accuracy | {acc['mean']:.4f} ± {acc['std']:.4f} |" in card
    assert "| seeds | 1, 2 |" in card and "| shots per class | 2 |" in card
    # a second dry run into the same (now non-empty) folder is refused and changes nothing
    before = (out / "README.md").read_bytes()
    assert run_cli("push", local_run["run"].path, "--repo", "my-lab/coop-tiny",
                   "--dry-run", out) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert (out / "README.md").read_bytes() == before
    assert run_cli("push", local_run["run"].path, "--repo", "not a repo", "--dry-run",
                   tmp_path / "x") == 2
    assert "ORG/NAME" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_load_by_hf_id_offline_predicts_like_the_local_run(local_run, tmp_path, offline_hub,
                                                             monkeypatch, capsys):
    folder = medadapt.push(local_run["run"].path, "my-lab/coop-tiny", dry_run=tmp_path / "card")
    hub_layout(offline_hub, "my-lab/coop-tiny", folder)
    tiles_dir = local_run["data"] / "tumor"
    local = local_run["run"].predict(tiles_dir)
    for ref in ("hf://my-lab/coop-tiny", f"hf://my-lab/coop-tiny@{SHA}"):
        run = medadapt.load_run(ref)
        assert run.source == ref and str(run.path).startswith(str(offline_hub))
        assert run.classes == local_run["run"].classes and run.seeds == [1, 2]
        assert np.allclose(run.predict(tiles_dir).probs, local.probs, atol=1e-6)
    # the CLI: predict writes ./predictions.csv (never into the cache), eval takes --dataset
    monkeypatch.chdir(tmp_path)
    assert run_cli("predict", "--run", "hf://my-lab/coop-tiny", tiles_dir, "--quiet") == 0
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    got = np.array([[float(r[f"p({c})"]) for c in local.classes] for r in rows])
    assert np.allclose(got, local.probs, atol=2e-6)
    capsys.readouterr()
    assert run_cli("eval", "--run", "hf://my-lab/coop-tiny", "--dataset",
                   f"folder:{local_run['data']}", "--quiet") == 0
    ev = local_run["run"].evaluate()
    assert f"mean accuracy {ev['summary']['accuracy']['mean']:.4f}" in capsys.readouterr().out
    # eval without --dataset: the redacted spec names no folder here
    assert run_cli("eval", "--run", "hf://my-lab/coop-tiny") == 2
    assert "folder path not found: tiles" in capsys.readouterr().err


def test_missing_repo_and_missing_backbone_are_one_line(local_run, tmp_path, offline_hub,
                                                        capsys):
    assert run_cli("predict", "--run", "hf://my-lab/absent", str(local_run["data"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not in the Hugging Face cache" in err[0]
    assert "hf download my-lab/absent" in err[0]
    folder = medadapt.push(local_run["run"].path, "my-lab/plip-run", dry_run=tmp_path / "card")
    snap = hub_layout(offline_hub, "my-lab/plip-run", folder)
    cfg = yaml.safe_load((snap / "config.yaml").read_text())
    cfg["backbone"] = "plip"  # registered, not in this (empty) cache
    (snap / "config.yaml").unlink()  # a symlink into blobs/
    (snap / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert run_cli("predict", "--run", "hf://my-lab/plip-run", str(local_run["data"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the backbone 'plip'" in err[0]
    assert "hf download vinid/plip" in err[0]
    cfg["backbone"] = "/somewhere/else/my-model"
    (snap / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="backbone folder '/somewhere/else/my-model'"):
        medadapt.load_run("hf://my-lab/plip-run")
    with pytest.raises(UserError, match="hf://ORG/NAME"):
        medadapt.load_run("hf://just-a-name")


def test_push_uploads_the_dry_run_folder(local_run, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = {}

    def create_repo(repo_id, private=False, exist_ok=False, token=None, repo_type=None):
        calls["create"] = (repo_id, private, exist_ok, repo_type)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(repo_id, folder_path, token=None, repo_type=None, commit_message=None):
        from pathlib import Path
        calls["files"] = {str(p.relative_to(folder_path)): p.read_bytes()
                          for p in Path(folder_path).rglob("*") if p.is_file()}
        calls["upload"] = (repo_id, repo_type)

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    url = local_run["run"].push("my-lab/coop-tiny", private=True)
    assert url == "https://huggingface.co/my-lab/coop-tiny"
    assert calls["create"] == ("my-lab/coop-tiny", True, True, "model")
    assert calls["upload"] == ("my-lab/coop-tiny", "model")
    dry = medadapt.push(local_run["run"].path, "my-lab/coop-tiny", dry_run=tmp_path / "d")
    assert calls["files"] == {str(p.relative_to(dry)): p.read_bytes()
                              for p in dry.rglob("*") if p.is_file()}

    def failing(*a, **k):
        raise OSError("401 Unauthorized")
    monkeypatch.setattr(huggingface_hub, "create_repo", failing)
    with pytest.raises(UserError, match="cannot push to my-lab/coop-tiny .*hf auth login"):
        local_run["run"].push("my-lab/coop-tiny")
