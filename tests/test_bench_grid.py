"""`medadapt bench` grid files: expansion, precedence, labels, folder ids, validation, config
changes, and the CLI's help and user errors. No model runs here (fast)."""
import json
from pathlib import Path

import pytest
import yaml

from conftest import CRC, run_cli
from medadapt.errors import UserError
from medadapt.report.bench import (RunSpec, budget_label, config_diff, dataset_label, expand_grid,
                                   load_grid, parse_shard, run_state, validate)


def grid(**kw):
    g = {"backbones": ["tiny-hf-clip"], "datasets": [f"folder:{CRC}"],
         "methods": ["zero-shot", {"name": "zero-shot", "mode": "ensemble", "label": "zs-ens"},
                     {"name": "linear-probe", "set": {"method.C": 1.0, "train.epochs": 3}}],
         "shots": [1, 2], "seeds": [1, 2]}
    g.update(kw)
    return g


def test_product_order_ids_and_labels():
    runs = expand_grid(grid(protocols=["few-shot", "base-to-novel"]))
    assert len(runs) == 3 * 2 * 2  # methods x shots x protocols
    ids = [r.id for r in runs]
    assert ids[0] == "tiny-hf-clip/crc-val-he-7k-sample/few-shot/zero-shot/1shot"
    assert "tiny-hf-clip/crc-val-he-7k-sample/base-to-novel/zs-ens/2shot" in ids
    assert len(set(ids)) == len(ids)
    lp = [r for r in runs if r.method == "linear-probe"][0]
    assert lp.cfg["method"] == {"name": "linear-probe", "C": 1.0}
    assert lp.cfg["train"]["epochs"] == 3 and lp.cfg["seeds"] == [1, 2]
    zs = [r for r in runs if r.method == "zs-ens"][0]
    assert zs.cfg["method"] == {"name": "zero-shot", "mode": "ensemble"}
    assert zs.method_name == "zero-shot"
    # default label of a method entry with settings: name plus the values
    r2 = expand_grid(grid(methods=[{"name": "zero-shot", "mode": "ensemble"}]))
    assert r2[0].method == "zero-shot-ensemble"


def test_precedence_grid_set_then_entries_then_axes_then_cli():
    g = grid(set={"train.epochs": 7, "data": {"batch_size": 8}, "shots": 99},
             datasets=[{"spec": f"folder:{CRC}", "label": "crc", "set": {"train.lr": 0.5}}],
             methods=[{"name": "linear-probe", "set": {"train.lr": 0.1}, "shots": [4]},
                      "zero-shot"])
    runs = expand_grid(g, sets=["train.epochs=2"])
    lp = runs[0]
    assert lp.id == "tiny-hf-clip/crc/few-shot/linear-probe/4shot"
    assert lp.cfg["shots"] == 4  # the axis wins over the grid's set
    assert lp.cfg["train"] == {"epochs": 2, "lr": 0.1}  # --set last, method over data set
    assert lp.cfg["data"]["batch_size"] == 8
    assert [r.shots for r in runs[1:]] == [1, 2]


def test_fractions_axis_and_relative_paths(tmp_path):
    (tmp_path / "data").mkdir()
    g = grid(shots=None, fractions=[0.05, 0.5], datasets=["folder:data"])
    runs = expand_grid(g, base_dir=tmp_path)
    assert runs[0].id.endswith("/frac0.05") and runs[0].cfg["data"]["fraction"] == 0.05
    assert runs[0].cfg["dataset"] == f"folder:{(tmp_path / 'data').resolve()}"
    assert budget_label(None, 0.25) == "frac0.25" and budget_label(16, None) == "16shot"
    assert dataset_label("kather2016:/data/k16") == "kather2016"
    assert dataset_label("csv:/x/my set.csv") == "my-set"


@pytest.mark.parametrize("bad, msg", [
    ({"methods": ["zero-shot", "zero-shot"]}, "duplicate labels"),
    ({"shots": [1], "fractions": [0.1]}, "not both"),
    ({"protocols": ["few-shots"]}, "unknown protocol"),
    ({"datasets": [{"spec": "x", "wrong": 1}]}, "unknown keys"),
    ({"methods": []}, "methods"),
])
def test_grid_errors(bad, msg):
    with pytest.raises(UserError, match=msg):
        expand_grid(grid(**bad))


def test_validate_names_before_running():
    with pytest.raises(UserError, match="unknown method 'coopp'"):
        validate(expand_grid(grid(methods=["coopp"])))
    with pytest.raises(UserError, match="unknown backbone"):
        validate(expand_grid(grid(backbones=["tiny-hf-clp"])))
    with pytest.raises(UserError, match="unknown dataset"):
        validate(expand_grid(grid(datasets=["kather2061"])))
    with pytest.raises(UserError, match=r"unknown setting 'method.mdoe'; did you mean 'method.mode'"):
        validate(expand_grid(grid(methods=[{"name": "zero-shot", "mdoe": "ensemble"}])))
    runs = expand_grid(grid())
    validate(runs)
    assert all(r.resolved["method"]["name"] for r in runs)


def test_config_diff_and_run_state(tmp_path):
    from medadapt.engine.resolve import resolve
    spec = expand_grid(grid())[0]
    folder = tmp_path / spec.id
    assert run_state(spec, folder)[0] == "absent"
    folder.mkdir(parents=True)
    stored = dict(resolve(spec.cfg), classnames=["a"], device="cuda:3")
    (folder / "config.yaml").write_text(yaml.safe_dump(stored))
    assert run_state(spec, folder) == ("partial", "0 of 2 seeds")
    for s in (1, 2):
        (folder / f"seed{s}").mkdir()
        (folder / f"seed{s}" / "results.json").write_text("{}")
    assert run_state(spec, folder)[0] == "partial"  # no summary.json yet
    (folder / "summary.json").write_text("{}")
    assert run_state(spec, folder)[0] == "done"
    changed = dict(stored, shots=5)
    changed["train"] = dict(stored["train"], lr=1.0)
    assert config_diff(changed, resolve(spec.cfg)) == ["shots", "train.lr"]
    (folder / "config.yaml").write_text(yaml.safe_dump(changed))
    state, detail = run_state(spec, folder)
    assert state == "changed" and "shots, train.lr" in detail and "--rerun-changed" in detail
    one = dict(stored, seeds=[1])
    assert "seeds" in config_diff(one, resolve(spec.cfg))[0]


def test_shard_parsing():
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    for bad in ("4/4", "a/2", "1/0"):
        with pytest.raises(UserError):
            parse_shard(bad)


def test_cli_help_explains_every_option(capsys):
    for cmd, opts in (("bench", ["--out", "--set", "--only", "--shard", "--dry-run", "--skip-failed",
                                 "--rerun-changed", "--no-reuse-backbone", "--verbose", "--quiet"]),
                      ("report", ["--out", "--metrics", "--shots", "--no-tsne", "--tsne-max",
                                  "--title", "--quiet"])):
        with pytest.raises(SystemExit) as e:
            run_cli(cmd, "--help")
        assert e.value.code == 0
        text = capsys.readouterr().out
        for o in opts:
            assert o in text, (cmd, o)
        assert text.count("(default:") >= len(opts)


def test_cli_user_errors_one_line_exit_2(tmp_path, capsys):
    assert run_cli("bench", tmp_path / "missing.yaml", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grid file not found" in err[0]
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(grid(methods=["coopp"])))
    assert run_cli("bench", p, "--out", tmp_path / "o") == 2
    assert "unknown method 'coopp'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    p.write_text(yaml.safe_dump(dict(grid(), colour="red")))
    assert run_cli("bench", p, "--out", tmp_path / "o") == 2
    assert "unknown grid keys ['colour']" in capsys.readouterr().err
    assert run_cli("report", tmp_path / "nothing") == 2
    assert "runs folder not found" in capsys.readouterr().err


def test_dry_run_lists_plan(tmp_path, capsys):
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(grid()))
    assert run_cli("bench", p, "--out", tmp_path / "o", "--dry-run", "--only", "zs-ens") == 0
    out = capsys.readouterr().out
    assert "tiny-hf-clip/crc-val-he-7k-sample/few-shot/zs-ens/1shot" in out
    assert "/zero-shot/" not in out and "2 runs: 0 done" in out
    assert not (tmp_path / "o").exists()


def test_shipped_grids_parse():
    """Every grid under configs/bench expands, and names only registered methods."""
    from medadapt.methods import METHODS, load_all
    load_all()
    root = Path(__file__).resolve().parents[1] / "configs" / "bench"
    files = sorted(root.glob("*.yaml"))
    assert len(files) >= 6
    for f in files:
        g = load_grid(f)
        if g.get("recipe"):  # a published suite: its runs come from the recipe
            from medadapt.report.bench import expand_recipe
            runs, _ = expand_recipe(g)
        else:
            runs = expand_grid(g, f.parent)
        assert runs, f
        for r in runs:
            assert r.method_name in METHODS, (f.name, r.method_name)


def test_shard_from_launcher_environment(tmp_path, capsys, monkeypatch):
    """Under accelerate launch / torchrun (RANK, WORLD_SIZE) each process takes every n-th run."""
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(grid()))
    ids = {}
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        assert run_cli("bench", p, "--out", tmp_path / "o", "--dry-run") == 0
        out = capsys.readouterr().out
        ids[rank] = [l.split()[0] for l in out.splitlines() if l.startswith("tiny-hf-clip/")]
        assert "(shard %d/2)" % rank in out
    runs = [r.id for r in expand_grid(grid())]
    assert ids[0] == runs[0::2] and ids[1] == runs[1::2]
