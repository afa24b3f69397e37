"""Hostile-user audit after issue 13 (a13): regressions found by driving the merged CLI through
bad inputs and faults. Each test fails if its fix is removed; data-loss tests assert that the
user's files still exist afterwards."""
import argparse
import csv
import shutil

import pytest

from conftest import CRC, run_cli


def fit(out, *extra, dataset=None, method="linear-probe", shots=1):
    return run_cli("fit", "--backbone", "tiny-hf-clip", "--dataset", dataset or f"folder:{CRC}",
                   "--method", method, "--shots", shots, "--out", out, "--quiet",
                   "--set", "train.epochs=1", *extra)


def last_error(capsys) -> str:
    err = [l for l in capsys.readouterr().err.strip().splitlines() if l.startswith("medadapt")]
    assert err, "no error line"
    return err[-1]


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    if not CRC.exists():
        pytest.skip("shared data missing")
    out = tmp_path_factory.mktemp("audit") / "lp2"
    assert fit(out, "--seeds", "1", "2") == 0
    return out


# ------------------------------------------------------------------------------------------------
# --overwrite replaces only what medadapt wrote
def test_overwrite_refuses_a_run_folder_holding_user_files(tmp_path, capsys, two_seeds):
    run = shutil.copytree(two_seeds, tmp_path / "run")
    (run / "analysis.ipynb").write_text("{}")
    (run / "seed2" / "notes.md").write_text("mine")
    assert fit(run, "--overwrite") == 2
    msg = last_error(capsys)
    assert "did not write" in msg and "analysis.ipynb" in msg and "seed2/notes.md" in msg
    assert (run / "analysis.ipynb").exists() and (run / "seed2" / "notes.md").exists()
    assert (run / "seed1" / "params.safetensors").exists()  # the old run is untouched
    (run / "analysis.ipynb").unlink()
    (run / "seed2" / "notes.md").unlink()
    assert fit(run, "--overwrite") == 0  # a clean run folder is replaced
    assert (run / "results.json").exists() and not (run / "seed1").exists()


def test_overwrite_refuses_a_project_folder_that_looks_like_a_run(tmp_path, capsys, shared_data):
    proj = tmp_path / "proj"  # the user's own medadapt config and notes
    proj.mkdir()
    (proj / "config.yaml").write_text("method: coop\nbackbone: plip\n")
    (proj / "results.json").write_text("{}")
    (proj / "notes.md").write_text("months of notes")
    assert fit(proj, "--overwrite") == 2
    assert "notes.md" in last_error(capsys)
    assert (proj / "notes.md").read_text() == "months of notes"


def test_foreign_entries_knows_every_file_fit_writes(tmp_path, two_seeds):
    from medadapt.engine.rundir import foreign_entries
    assert foreign_entries(two_seeds) == []
    run = shutil.copytree(two_seeds, tmp_path / "r")
    for name in ("checkpoint.safetensors", "checkpoint_state.pt", "results.json.tmp123",
                 "config.yaml.tmp", "bench.json"):
        (run / "seed1" / name).write_text("x")
    assert foreign_entries(run) == []
    (run / "predictions.csv").write_text("x")
    (run / "data").mkdir()
    assert foreign_entries(run) == ["data/", "predictions.csv"]


def test_instruct_train_overwrite_refuses_a_folder_with_user_files(tmp_path):
    from medadapt.errors import UserError
    from medadapt.instruct.config import TrainConfig
    from medadapt.instruct.train import train
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    (out / "final").mkdir()
    with pytest.raises(UserError, match="did not write"):
        train(TrainConfig(), "no-model", tmp_path / "none.jsonl", out, overwrite=True)
    assert (out / "thesis.tex").exists() and (out / "final").is_dir()


def test_instruct_train_overwrite_restores_the_old_run_when_the_new_one_fails(tmp_path):
    from medadapt.errors import UserError
    from medadapt.instruct.config import TrainConfig
    from medadapt.instruct.train import train
    out = tmp_path / "run"
    (out / "final").mkdir(parents=True)
    (out / "final" / "model.safetensors").write_text("weights")
    (out / "train_summary.json").write_text("{}")
    with pytest.raises(UserError):  # the data file does not exist: the new run fails
        train(TrainConfig(), "no-model", tmp_path / "none.jsonl", out, overwrite=True)
    assert (out / "final" / "model.safetensors").read_text() == "weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no hidden leftovers


# ------------------------------------------------------------------------------------------------
# predict on a multi-seed run uses every seed (or the one --seed picks)
def test_predict_multi_seed_averages_every_seed_and_says_so(tmp_path, capsys, two_seeds):
    import numpy as np
    tum = CRC / "TUM"
    for s in (1, 2):
        assert run_cli("predict", "--run", two_seeds, tum, "--out", tmp_path / f"s{s}.csv",
                       "--seed", s, "--quiet") == 0
    capsys.readouterr()
    assert run_cli("predict", "--run", two_seeds, tum, "--out", tmp_path / "all.csv", "--quiet") == 0
    assert "all 2 seeds" in capsys.readouterr().err

    def probs(name):
        rows = list(csv.DictReader(open(tmp_path / name)))
        return np.array([[float(v) for k, v in r.items() if k.startswith("p(")] for r in rows])
    p1, p2, pm = probs("s1.csv"), probs("s2.csv"), probs("all.csv")
    assert not np.allclose(p1, p2)  # the seeds' models differ ...
    np.testing.assert_allclose(pm, (p1 + p2) / 2, atol=2e-6)  # ... and the default is their mean
    assert run_cli("predict", "--run", two_seeds, tum, "--out", tmp_path / "x.csv", "--seed", 7) == 2
    assert "no finished seed 7" in last_error(capsys)
    assert not (tmp_path / "x.csv").exists()


# ------------------------------------------------------------------------------------------------
# --help: every option says what it does and its default
def _all_parsers(p, path=()):
    yield path, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from _all_parsers(sp, path + (name,))


def test_help_of_every_subcommand_explains_every_option_with_its_default():
    from medadapt.cli import build_parser
    missing = []
    n = 0
    for path, p in _all_parsers(build_parser()):
        fmt = p._get_formatter()
        p.format_help()  # prints without error
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._VersionAction,
                              argparse._SubParsersAction)) or not a.option_strings:
                continue
            n += 1
            text = fmt._expand_help(a) if a.help else ""
            if not a.help or ("default" not in text.lower() and not a.required
                              and "required" not in text.lower()):
                missing.append(f"{' '.join(path)} {a.option_strings[-1]}")
            assert "(default: None)" not in text and "(default: [])" not in text, (path, text)
    assert n > 100 and not missing, missing


# ------------------------------------------------------------------------------------------------
# eval --dataset with an external test set holding some of the trained classes
def test_eval_on_a_data_set_with_a_subset_of_the_classes(tmp_path, capsys, two_seeds):
    ext = tmp_path / "external"
    for c in ("TUM", "NORM"):
        shutil.copytree(CRC / c, ext / c)
    assert run_cli("eval", "--run", two_seeds, "--dataset", f"folder:{ext}", "--quiet") == 0
    cap = capsys.readouterr()
    assert "2 of the run's 8 classes" in cap.err and "seed 2:" in cap.out
    other = tmp_path / "other"
    for c in ("cats", "TUM"):
        shutil.copytree(CRC / "TUM", other / c)
    assert run_cli("eval", "--run", two_seeds, "--dataset", f"folder:{other}", "--quiet") == 2
    assert "not trained on (cats;" in last_error(capsys)


# ------------------------------------------------------------------------------------------------
# registered data sets: hidden files skipped, thin classes warned about as for folder: data sets
def test_registered_data_set_skips_hidden_files_and_warns_about_thin_classes(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from medadapt.data.sets.lc25000 import LC25000_FOLDERS
    from medadapt.data.sources import load_dataset
    root = tmp_path / "lung_colon_image_set"
    for k, f in enumerate(LC25000_FOLDERS):
        d = root / f
        d.mkdir(parents=True)
        for i in range(1 if f.endswith("lung_scc") else 6):
            Image.fromarray(np.full((8, 8, 3), 40 * k + i, np.uint8)).save(d / f"{i}.jpeg")
        (d / "._0.jpeg").write_bytes(b"macOS resource fork")  # not an image
    (root / "colon_image_sets" / "colon_n" / ".thumbs").mkdir()
    (root / "colon_image_sets" / "colon_n" / ".thumbs" / "t.jpeg").write_bytes(b"junk")
    ds = load_dataset(f"lc25000:{tmp_path}")
    assert len(ds.records) == 25 and not any("/." in r.id or r.id.startswith(".")
                                             for r in ds.records)
    err = capsys.readouterr().err
    assert "'lung squamous cell carcinoma' has 1 image(s) and no test image" in err
    assert err.count("warning") == 1


# ------------------------------------------------------------------------------------------------
# npz files that are not npz files: named, not numpy's "pickled data" message
@pytest.mark.parametrize("content, says", [(b"<html>502 Bad Gateway</html>", "not a zip archive"),
                                           (b"", "empty"), ("npy", "single .npy array")])
def test_npz_that_is_not_an_npz_is_refused_by_name(tmp_path, content, says):
    import numpy as np

    from medadapt.data.sources import load_dataset
    from medadapt.errors import UserError
    for name in ("mine.npz", "pathmnist.npz"):  # generic and MedMNIST-named readers
        f = tmp_path / name
        if content == "npy":
            np.save(tmp_path / "a.npy", np.zeros(3))
            (tmp_path / "a.npy").rename(f)
        else:
            f.write_bytes(content)
        with pytest.raises(UserError, match=says):
            load_dataset(f"npz:{f}")


# ------------------------------------------------------------------------------------------------
# settings a method never reads are still checked (linear-probe does not use the engine's
# optimiser or schedule); non-finite numbers; protocol-only data settings
@pytest.mark.parametrize("setting, says", [
    ("train.sched_unit=epochs", "train.sched_unit must be one of epoch, step, got 'epochs'; did "
                                "you mean 'epoch'?"),
    ("train.backbone_mode=frozen", "train.backbone_mode must be one of eval, train"),
    ("train.optimizer=adamm", "did you mean 'adamw'?"),
    ("train.warmup=cosine", "train.warmup must be one of constant, linear"),
    ("data.precision=fp64", "data.precision must be one of auto, fp32, fp16, bf16"),
    ("train.eps=0", "train.eps must be > 0"),
    ("train.eps=-1e-8", "train.eps must be > 0"),
    ("train.lr=.inf", "train.lr must be a finite number"),
    ("method.max_iter=.nan", "method.max_iter must be"),
    ("data.base=[ADI]", "data.base applies only to the base-to-novel protocol"),
    ("data.train_domain=colon", "data.train_domain applies only to the cross-domain protocol"),
])
def test_settings_no_method_reads_are_still_checked(setting, says):
    from medadapt.engine.resolve import resolve
    from medadapt.errors import UserError
    cfg = {"backbone": "tiny-hf-clip", "dataset": "folder:x", "method": "linear-probe"}
    from medadapt.config import apply_sets
    with pytest.raises(UserError) as e:
        resolve(apply_sets(cfg, [setting]))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_enum_settings_accept_their_values():
    from medadapt.config import apply_sets
    from medadapt.engine.resolve import resolve
    cfg = {"backbone": "tiny-hf-clip", "dataset": "folder:x", "method": "coop",
           "protocol": "base-to-novel"}
    resolve(apply_sets(cfg, ["train.sched_unit=step", "train.backbone_mode=train",
                             "train.optimizer=adamw", "train.warmup=linear", "train.eps=1e-4",
                             "data.precision=bf16", "data.base=[ADI]"]))


# ------------------------------------------------------------------------------------------------
# descriptions import: binary input, --out a folder or unwritable
def test_descriptions_import_bad_files_and_outputs(tmp_path, capsys):
    src = tmp_path / "ok.py"
    src.write_text("TEMPLATES = {'a': ['x.'], 'b': ['y.']}\n")
    binary = tmp_path / "bin.py"
    binary.write_bytes(bytes(range(256)))
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    cases = [((binary, "--out", tmp_path / "d.json"), "not valid Python"),
             ((src, "--out", folder, "--overwrite"), "is a folder"),
             ((src, "--out", "/proc/medadapt-x.json"), "cannot write")]
    for args, says in cases:
        assert run_cli("descriptions", "import", *args) == 2
        assert says in last_error(capsys)
    assert (folder / "keep.txt").read_text() == "mine"


def test_out_on_a_file_system_that_refuses_writes_is_one_line(capsys, shared_data):
    # /proc refuses new files even for root, for whom os.access() says "writable"
    assert fit("/proc/medadapt-audit-run") == 2
    assert "cannot write in /proc" in last_error(capsys)


# ------------------------------------------------------------------------------------------------
# instruct build: typed source keys, binary sources, --out inside the source data
def test_instruct_build_bad_sources_are_one_line(tmp_path, capsys, shared_data):
    data = tmp_path / "data"
    shutil.copytree(CRC, data)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    cases = [(f"kind=class-folder,path={data},limit=abc", "limit must be a positive integer"),
             (f"kind=class-folder,path={data},limit=0", "limit must be a positive integer"),
             (f"kind=class-folder,path={data},split=tset", "split must be one of"),
             (f"kind=class-csv,path={binary}", "not UTF-8 text"),
             (f"kind=class-csv,path={data}", "is a folder")]
    for spec, says in cases:
        assert run_cli("instruct", "build", "--source", spec, "--out", tmp_path / "b") == 2
        assert says in last_error(capsys), spec
    for out in (data, data / "ADI" / "built"):
        assert run_cli("instruct", "build", "--source", f"kind=class-folder,path={data}",
                       "--out", out, "--export", "none") == 2
        assert "inside the source folder" in last_error(capsys)
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------
# report --out: never a user's folder; only the earlier report's own figures are replaced
def test_report_never_writes_into_or_deletes_from_a_user_folder(tmp_path, capsys, two_seeds):
    runs = tmp_path / "runs"
    shutil.copytree(two_seeds, runs / "lp")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.png").write_bytes(b"png")
    assert run_cli("report", runs, "--no-tsne", "--quiet", "--out", photos) == 2
    assert "not a medadapt report" in last_error(capsys)
    assert run_cli("report", runs, "--no-tsne", "--quiet", "--out", photos / "holiday.png") == 2
    assert "is a file" in last_error(capsys)
    assert run_cli("report", runs / "lp" / "config.yaml", "--no-tsne", "--quiet") == 2
    assert "is a file" in last_error(capsys)
    assert (photos / "holiday.png").read_bytes() == b"png"
    rep = tmp_path / "rep"
    assert run_cli("report", runs, "--no-tsne", "--quiet", "--out", rep) == 0
    (rep / "my_plot.png").write_bytes(b"mine")  # the user's own figure in the report folder
    assert run_cli("report", runs, "--no-tsne", "--quiet", "--out", rep) == 0
    assert (rep / "my_plot.png").read_bytes() == b"mine"
    assert run_cli("report", tmp_path / "empty-runs", "--quiet") == 2
    assert not (tmp_path / "empty-runs").exists()


# ------------------------------------------------------------------------------------------------
# bench: a missing data root is one line before anything runs (not one failure per run)
def test_bench_with_missing_data_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDADAPT_DATA", str(tmp_path / "no-data-here"))
    grid = tmp_path / "g.yaml"
    out = tmp_path / "bench-out"
    grid.write_text(f"out: {out}\nbackbones: [tiny-hf-clip]\ndatasets: [kather2016, "
                    f"'folder:{tmp_path / 'gone'}']\nmethods: [linear-probe]\nshots: [1]\n"
                    "seeds: [1]\n")
    assert run_cli("bench", grid, "--quiet") == 2
    msg = last_error(capsys)
    assert "2 data set(s) not found, nothing was run" in msg and "kather2016" in msg
    assert not out.exists()
    assert run_cli("bench", grid, "--dry-run") == 0  # listing still works


# ------------------------------------------------------------------------------------------------
# predict --out replaces only an earlier predictions CSV
def test_predict_out_never_replaces_a_user_file_or_an_input(tmp_path, capsys, two_seeds):
    sheet = tmp_path / "results.csv"
    sheet.write_text("patient,score\n1,2\n")
    img = tmp_path / "tile.png"
    shutil.copy(next((CRC / "TUM").iterdir()), img)
    before = img.read_bytes()
    assert run_cli("predict", "--run", two_seeds, img, "--out", sheet, "--seed", 1) == 2
    assert "not a medadapt predictions CSV" in last_error(capsys)
    assert run_cli("predict", "--run", two_seeds, img, "--out", img, "--seed", 1) == 2
    assert "one of the input images" in last_error(capsys)
    assert sheet.read_text() == "patient,score\n1,2\n" and img.read_bytes() == before
    own = tmp_path / "preds.csv"
    for _ in range(2):  # an earlier predictions CSV is replaced
        assert run_cli("predict", "--run", two_seeds, img, "--out", own, "--seed", 1,
                       "--quiet") == 0
    assert own.read_text().startswith("path,prediction,")


# ------------------------------------------------------------------------------------------------
# demo --out is never a user's folder; texts.descriptions a folder; --out "."
def test_demo_refuses_a_user_folder(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my report")
    assert run_cli("demo", "--out", mine, "--tiny", "--methods", "zero-shot") == 2
    assert "not an earlier medadapt demo" in last_error(capsys)
    assert (mine / "report.md").read_text() == "my report"


def test_descriptions_setting_that_is_a_folder_is_one_line(tmp_path, capsys, shared_data):
    assert fit(tmp_path / "r", "--set", f"texts.descriptions={tmp_path}") == 2
    assert "is a folder" in last_error(capsys)


def test_out_dot_inside_a_run_folder(tmp_path, capsys, monkeypatch, shared_data):
    run = tmp_path / "run"
    assert fit(run) == 0
    monkeypatch.chdir(run)
    assert fit(".", "--overwrite") == 0  # replaced in place; lock and swap beside it
    assert (run / "results.json").exists() and not list(run.glob(".*lock"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ------------------------------------------------------------------------------------------------
# the feature cache key is the same in every process (a function's address in the transform's
# repr made every run miss the cache and add a new file)
def test_feature_cache_key_is_stable_across_processes(shared_data):
    import os
    import subprocess
    import sys
    from pathlib import Path
    code = ("from medadapt.backbones import load_backbone\n"
            "from medadapt.data.sources import load_dataset\n"
            "from medadapt.engine.features import FeatureCache\n"
            f"ds = load_dataset('folder:{CRC}')\n"
            "b = load_backbone('tiny-hf-clip', device='cpu')\n"
            "c = FeatureCache(precision='fp32')\n"
            "print(c.key(b, ds, 0), c.key(b, ds, 1))\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    keys = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                           check=True).stdout.split() for _ in range(2)]
    assert len(keys[0]) == 2 and keys[0] == keys[1]


def test_zero_shot_does_not_refuse_a_small_data_set_for_its_shots(tmp_path, shared_data):
    # zero-shot reads no training image: 16 default shots on 2 training images per class is fine
    assert fit(tmp_path / "zs", method="zero-shot", shots=16) == 0
    assert fit(tmp_path / "lp", method="linear-probe", shots=16) == 2  # a method that trains


def test_small_cli_argument_checks(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli("methods", "coop", "--shots", "-5")
    assert e.value.code == 2
    assert run_cli("datasets", "kather2016", "--dest", "/tmp") == 2
    assert "--dest only applies with --download" in last_error(capsys)
    assert run_cli("datasets", "folder:/x") == 2
    assert "spec for your own data" in last_error(capsys)
