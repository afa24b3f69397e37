"""Issue 13, data loss and faults around run folders: overwrite, resume, lock, half-written runs,
eval on several seeds, predict (unique temp file, streaming, --skip-bad, hidden folders).

Every data-loss test asserts that the user's files still exist afterwards."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import CRC, run_cli


def fit(out, *extra, dataset=None, method="linear-probe", shots=1):
    return run_cli("fit", "--backbone", "tiny-hf-clip", "--dataset", dataset or f"folder:{CRC}",
                   "--method", method, "--shots", shots, "--out", out, "--quiet", *extra)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A finished two-seed run, copied per test where it is modified."""
    if not CRC.exists():
        pytest.skip("shared data missing")
    out = tmp_path_factory.mktemp("runs") / "lp"
    assert fit(out, "--seeds", "1", "2") == 0
    return out


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------------
# --overwrite
def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys, shared_data):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("my thesis")
    assert fit(out, "--overwrite") == 2
    assert "not a medadapt run folder" in one_line_error(capsys)
    assert (out / "thesis.tex").read_text() == "my thesis"
    # a folder holding a config.yaml that is not ours is not a run either
    (out / "config.yaml").write_text("latex: true\n")
    assert fit(out, "--overwrite") == 2
    assert (out / "thesis.tex").exists() and (out / "config.yaml").exists()


def test_out_equal_to_the_data_set_folder_is_refused(tmp_path, capsys, shared_data):
    data = tmp_path / "data"
    shutil.copytree(CRC, data)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    for extra in ((), ("--overwrite",), ("--resume",)):
        assert fit(data, *extra, dataset=f"folder:{data}") == 2, extra
        capsys.readouterr()
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    # the parent of the data set folder (it contains the data) is refused as well
    assert fit(tmp_path, dataset=f"folder:{data}") == 2
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_out_equal_to_an_empty_data_set_folder_via_run_folder_check(tmp_path, shared_data):
    from medadapt.data.sources import from_folder
    from medadapt.engine.rundir import check_not_data_folder
    from medadapt.errors import UserError
    data = tmp_path / "data"
    shutil.copytree(CRC, data)
    ds = from_folder(str(data))
    with pytest.raises(UserError, match="data set folder"):
        check_not_data_folder(data, ds)
    with pytest.raises(UserError, match="data set folder"):
        check_not_data_folder(tmp_path, ds)
    check_not_data_folder(tmp_path / "runs", ds)  # a sibling is fine


def test_failed_overwrite_keeps_the_old_run(tmp_path, done_run, monkeypatch):
    out = copy_run(done_run, tmp_path / "run")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    from medadapt.engine import runner

    def boom(*a, **k):
        raise RuntimeError("disk on fire")  # not a UserError: an unanticipated failure
    monkeypatch.setattr(runner.Runner, "_run_seed", boom)
    with pytest.raises(RuntimeError):
        fit(out, "--seeds", "1", "2", "--overwrite")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temp folder left


def test_successful_overwrite_replaces_the_run(tmp_path, done_run):
    out = copy_run(done_run, tmp_path / "run")
    assert fit(out, "--overwrite", method="zero-shot") == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"]["name"] == "zero-shot" and not (out / "seed1").exists()
    assert (out / "results.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_any_failure_of_a_fresh_run_leaves_nothing(tmp_path, monkeypatch, shared_data):
    from medadapt.engine import runner

    def boom(*a, **k):
        raise ValueError("bad array layout")
    monkeypatch.setattr(runner.Runner, "_run_seed", boom)
    with pytest.raises(ValueError):
        fit(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    # an existing empty folder is kept, and stays empty
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        fit(tmp_path / "empty")
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def test_plain_rerun_into_an_existing_folder_is_refused(tmp_path, capsys, done_run):
    out = copy_run(done_run, tmp_path / "run")
    assert fit(out, "--seeds", "1", "2") == 2
    assert "--resume" in one_line_error(capsys)


# ------------------------------------------------------------------------------------------------
# --resume
def test_resume_with_another_config_is_refused_naming_the_keys(tmp_path, capsys, done_run):
    out = copy_run(done_run, tmp_path / "run")
    before = (out / "config.yaml").read_text()
    assert fit(out, "--seeds", "1", "2", "--resume", method="zero-shot") == 2
    msg = one_line_error(capsys)
    assert "method.name" in msg and "--resume refused" in msg
    assert fit(out, "--seeds", "1", "2", "--resume", "--set", "train.lr=0.5") == 2
    assert "train.lr" in one_line_error(capsys)
    assert (out / "config.yaml").read_text() == before
    # the same config resumes (finished seeds are kept)
    assert fit(out, "--seeds", "1", "2", "--resume") == 0


def test_resume_of_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys, shared_data):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert fit(out, "--resume") == 2
    assert "not a medadapt run folder" in one_line_error(capsys)
    assert (out / "notes.txt").read_text() == "keep"


# ------------------------------------------------------------------------------------------------
# lock
def test_second_process_on_the_same_out_refuses(tmp_path, capsys, shared_data):
    from medadapt.engine.rundir import run_lock
    out = tmp_path / "run"
    with run_lock(out):
        assert fit(out) == 2
        assert "in use by another medadapt process" in one_line_error(capsys)
    assert not out.exists()
    assert fit(out) == 0  # free again


def test_stale_lock_after_sigkill_does_not_block(tmp_path, shared_data):
    out = tmp_path / "run"
    src = str(Path(__file__).resolve().parents[1] / "src")
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "from pathlib import Path\nfrom medadapt.engine.rundir import run_lock\n"
            "l = run_lock(Path(%r)).__enter__()\nprint('locked', flush=True)\ntime.sleep(60)\n"
            % (src, str(out)))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        from medadapt.engine.rundir import run_lock
        from medadapt.errors import UserError
        with pytest.raises(UserError, match="in use"):
            run_lock(out).__enter__()
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    assert (tmp_path / ".run.lock").exists()  # the killed holder left its file ...
    assert fit(out) == 0  # ... but not its lock


# ------------------------------------------------------------------------------------------------
# --out checks
def test_out_that_is_a_file_or_under_a_file_or_not_writable(tmp_path, capsys, shared_data):
    f = tmp_path / "file.txt"
    f.write_text("keep")
    assert fit(f) == 2
    assert "is a file" in one_line_error(capsys)
    assert fit(f / "run") == 2
    assert "is a file" in one_line_error(capsys)
    assert f.read_text() == "keep"
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert fit(ro / "run") == 2
            assert "not writable" in one_line_error(capsys)
        finally:
            ro.chmod(0o700)


# ------------------------------------------------------------------------------------------------
# eval / predict on finished, multi-seed and half-written runs
def test_eval_reports_every_seed_and_mean_std(done_run, capsys):
    assert run_cli("eval", "--run", done_run, "--quiet") == 0
    out = capsys.readouterr().out
    assert "seed 1:" in out and "seed 2:" in out
    assert "mean accuracy" in out and "± " in out and "over 2 seeds" in out
    from medadapt.engine.evaluate import evaluate_run
    r = evaluate_run(done_run, progress=False)
    accs = [s["metrics"]["accuracy"] for s in r["seeds"]]
    assert [s["seed"] for s in r["seeds"]] == [1, 2]
    import numpy as np
    assert r["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert r["summary"]["accuracy"]["std"] == pytest.approx(np.std(accs))


@pytest.mark.parametrize("damage", ["no_classes", "bad_classes_json", "no_params",
                                    "truncated_params", "bad_results_json", "no_results"])
def test_eval_and_predict_on_half_written_runs_are_one_line(tmp_path, capsys, done_run, damage):
    out = copy_run(done_run, tmp_path / "run")
    s1 = out / "seed1"
    if damage == "no_classes":
        (out / "classes.json").unlink()
    elif damage == "bad_classes_json":
        (out / "classes.json").write_text('{"classnames": [')
    elif damage == "no_params":
        for s in ("seed1", "seed2"):
            (out / s / "params.safetensors").unlink()
    elif damage == "truncated_params":
        for s in ("seed1", "seed2"):
            p = out / s / "params.safetensors"
            p.write_bytes(p.read_bytes()[:40])
    elif damage == "bad_results_json":
        (s1 / "results.json").write_text("{nope")
    elif damage == "no_results":
        for s in ("seed1", "seed2"):
            (out / s / "results.json").unlink()
    assert run_cli("eval", "--run", out, "--quiet") == 2
    one_line_error(capsys)
    tile = next(CRC.glob("ADI/*.png"))
    assert run_cli("predict", "--run", out, tile, "--out", tmp_path / "p.csv", "--quiet") == 2
    one_line_error(capsys)
    assert not (tmp_path / "p.csv").exists()


def test_predict_never_deletes_an_existing_file(tmp_path, capsys, done_run):
    tile = next(CRC.glob("ADI/*.png"))
    out = tmp_path / "preds.csv"
    tmp_named = tmp_path / "preds.tmp"
    tmp_named.write_text("the user's own file")
    old = "path,prediction,p(x)\nold.png,x,1.0\n"  # an earlier predictions CSV (a13: only
    out.write_text(old)                             # such a file is ever replaced)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    # failure: the existing CSV and the user's .tmp file are untouched, no temp file left
    assert run_cli("predict", "--run", done_run, tile, bad, "--out", out, "--quiet") == 2
    assert "--skip-bad" in one_line_error(capsys)
    assert out.read_text() == old
    assert tmp_named.read_text() == "the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "preds.csv", "preds.tmp"]
    # success replaces the CSV, still leaves preds.tmp alone
    assert run_cli("predict", "--run", done_run, tile, "--out", out, "--quiet") == 0
    assert out.read_text().startswith("path,prediction")
    assert tmp_named.read_text() == "the user's own file"
    # a folder as --out is refused
    assert run_cli("predict", "--run", done_run, tile, "--out", tmp_path, "--quiet") == 2


def test_predict_skip_bad_lists_bad_files_with_reason(tmp_path, capsys, done_run):
    import csv
    tiles = sorted(CRC.glob("*/*.png"))[:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for t in tiles:
        shutil.copy(t, folder / t.name)
    (folder / "zz_bad.png").write_bytes(b"\x89PNG broken")
    hidden = folder / ".ipynb_checkpoints"
    hidden.mkdir()
    shutil.copy(tiles[0], hidden / "copy.png")
    (folder / ".hidden.png").write_bytes(tiles[0].read_bytes())
    out = tmp_path / "p.csv"
    assert run_cli("predict", "--run", done_run, folder, "--out", out, "--skip-bad",
                   "--batch-size", "2", "--quiet") == 0
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["path"]).name for r in rows] == sorted(t.name for t in tiles) + ["zz_bad.png"]
    bad = rows[-1]
    assert bad["prediction"] == "" and "corrupt or unreadable image" in bad["error"]
    assert all(r["error"] == "" and r["prediction"] for r in rows[:-1])
    assert "1 unreadable image" in capsys.readouterr().err


def test_predict_matches_between_batch_sizes(tmp_path, done_run):
    import csv
    tiles = sorted(CRC.glob("*/*.png"))[:5]
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert run_cli("predict", "--run", done_run, *tiles, "--out", a, "--batch-size", "2", "--quiet") == 0
    assert run_cli("predict", "--run", done_run, *tiles, "--out", b, "--batch-size", "5", "--quiet") == 0
    ra, rb = list(csv.DictReader(a.open())), list(csv.DictReader(b.open()))
    assert [r["prediction"] for r in ra] == [r["prediction"] for r in rb]
    for x, y in zip(ra, rb):
        for k in x:
            if k.startswith("p("):
                assert float(x[k]) == pytest.approx(float(y[k]), abs=1e-4)


def test_predict_streams_in_batches(tmp_path, done_run, monkeypatch):
    """Images are decoded batch by batch: never more than one batch is held at once."""
    from medadapt.data import dataset
    tiles = sorted(CRC.glob("*/*.png"))[:7]
    live = {"n": 0, "max": 0}
    orig = dataset.open_rgb

    class Tracked:
        def __init__(self):
            live["n"] += 1
            live["max"] = max(live["max"], live["n"])

        def __del__(self):
            live["n"] -= 1

    def tracked_open(path, item=None):
        im = orig(path, item)
        im.info["_track"] = Tracked()  # freed with the image
        return im
    monkeypatch.setattr(dataset, "open_rgb", tracked_open)
    import gc
    gc.collect()
    assert run_cli("predict", "--run", done_run, *tiles, "--out", tmp_path / "p.csv",
                   "--batch-size", "2", "--quiet") == 0
    assert live["max"] <= 3  # one batch (+ one being created), not all 7


def test_failed_run_removes_the_parent_folders_it_created(tmp_path, capsys, shared_data):
    out = tmp_path / "a" / "b" / "run"
    assert run_cli("fit", "--backbone", "tiny-hf-clip", "--dataset", f"folder:{tmp_path}/nope",
                   "--method", "linear-probe", "--out", out, "--quiet") == 2
    assert not (tmp_path / "a").exists()


def test_predict_skip_bad_when_the_first_batch_is_all_bad(tmp_path, done_run):
    import csv
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"a{i}.png").write_bytes(b"junk")
    shutil.copy(next(CRC.glob("ADI/*.png")), folder / "z.png")
    out = tmp_path / "p.csv"
    assert run_cli("predict", "--run", done_run, folder, "--out", out, "--skip-bad",
                   "--batch-size", "2", "--quiet") == 0
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["path"]).name for r in rows] == ["a0.png", "a1.png", "a2.png", "z.png"]
    assert [bool(r["error"]) for r in rows] == [True, True, True, False]
    # all bad: still a CSV with a header and one row per file
    for f in folder.glob("z.png"):
        f.unlink()
    assert run_cli("predict", "--run", done_run, folder, "--out", out, "--skip-bad", "--quiet") == 0
    assert len(list(csv.DictReader(out.open()))) == 3


def test_interrupted_run_is_kept_for_resume(tmp_path, monkeypatch, capsys, shared_data):
    from medadapt.engine import runner
    orig = runner.Runner._run_seed

    def stop_at_seed2(self, prep, backbone, seed, sdir):
        if seed == 2:
            raise KeyboardInterrupt
        return orig(self, prep, backbone, seed, sdir)
    monkeypatch.setattr(runner.Runner, "_run_seed", stop_at_seed2)
    out = tmp_path / "run"
    assert fit(out, "--seeds", "1", "2") == 130
    assert (out / "seed1" / "results.json").exists()
    first = (out / "seed1" / "results.json").read_text()
    monkeypatch.setattr(runner.Runner, "_run_seed", orig)
    capsys.readouterr()
    assert fit(out, "--seeds", "1", "2") == 2  # a plain re-run is refused, pointing to --resume
    assert "unfinished medadapt run" in one_line_error(capsys)
    assert fit(out, "--seeds", "1", "2", "--resume") == 0
    assert (out / "seed1" / "results.json").read_text() == first  # finished seed kept
    assert (out / "summary.json").exists()


def test_resume_refuses_when_the_data_set_classes_changed(tmp_path, capsys, shared_data):
    data = tmp_path / "data"
    shutil.copytree(CRC, data)
    out = tmp_path / "run"
    assert fit(out, dataset=f"folder:{data}") == 0
    shutil.copytree(data / "TUM", data / "TUM2")
    capsys.readouterr()
    assert fit(out, "--resume", dataset=f"folder:{data}") == 2
    assert "classes of" in one_line_error(capsys)
