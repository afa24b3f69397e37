"""Experiment trackers: `medadapt fit --log tensorboard` event files read back (per-step loss and
learning rate, per-epoch loss and validation accuracy, final metrics, with the right steps and
values); `medadapt bench --log` opens one tracker run per grid run named by its id (a stand-in
wandb module records them); unknown or missing trackers are one-line errors."""
import importlib.machinery
import json
import sys
import types

import numpy as np
import pytest
import yaml

from conftest import colour_tiles, run_cli
from medadapt.engine.train import dassl_lr


def scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return colour_tiles(tmp_path_factory.mktemp("trk") / "tiles")


FIT = ("--backbone", "tiny-hf-clip", "--method", "coop", "--shots", "2", "--quiet",
       "--set", "train.epochs=3", "--set", "train.eval_every=1", "--set", "train.batch_size=2",
       "--set", "data.augment_views=0", "--set", "method.n_ctx=2")


def test_tensorboard_event_files_hold_the_curves(data, tmp_path):
    out = tmp_path / "run"
    assert run_cli("fit", "--dataset", f"folder:{data}", *FIT, "--out", out,
                   "--log", "tensorboard") == 0
    res = json.loads((out / "results.json").read_text())
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    ev = scalars(out / "tensorboard" / "seed1")
    # 6 training images (2 shots x 3 classes), batch 2 -> 3 steps per epoch, 3 epochs
    assert [s for s, _ in ev["train/loss"]] == list(range(1, 10))
    assert [s for s, _ in ev["train/lr"]] == list(range(1, 10))
    want_lr = [dassl_lr(e, 3, cfg["train"]) for e in range(3) for _ in range(3)]
    assert np.allclose([v for _, v in ev["train/lr"]], want_lr, rtol=1e-6)
    hist = res["train_info"]["history"]
    assert [s for s, _ in ev["train/epoch_loss"]] == [1, 2, 3]
    assert np.allclose([v for _, v in ev["train/epoch_loss"]], [h["loss"] for h in hist],
                       rtol=1e-5)
    losses = [v for _, v in ev["train/loss"]]
    assert np.allclose([np.mean(losses[3 * e:3 * e + 3]) for e in range(3)],
                       [h["loss"] for h in hist], rtol=1e-5)
    # validation every epoch; the final validation pass is the last epoch's (logged once)
    assert [s for s, _ in ev["val/accuracy"]] == [1, 2, 3]
    assert np.allclose([v for _, v in ev["val/accuracy"]], [h["val_accuracy"] for h in hist])
    assert ev["val/accuracy"][-1][1] == pytest.approx(res["val_accuracy"])
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc"):
        assert ev[f"final/{k}"] == [(0, pytest.approx(res["metrics"][k], abs=1e-6))]
    # the tensorboard folder is medadapt's: --overwrite replaces the run
    assert run_cli("fit", "--dataset", f"folder:{data}", *FIT, "--out", out, "--overwrite") == 0
    assert not (out / "tensorboard").exists()


class FakeWandb:
    """A stand-in ``wandb`` module recording what a run logs."""

    def __init__(self):
        self.runs = []
        mod = types.ModuleType("wandb")
        mod.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        mod.init = self.init
        self.module = mod

    def init(self, name=None, group=None, config=None, reinit=None):
        run = types.SimpleNamespace(name=name, group=group, config=config, logged=[], summary={},
                                    finished=False)
        run.log = lambda d, r=run: r.logged.append(d)
        run.finish = lambda r=run: setattr(r, "finished", True)
        self.runs.append(run)
        return run


def test_bench_logs_one_tracker_run_per_grid_run(data, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake.module)
    grid = {"name": "trk", "backbones": ["tiny-hf-clip"], "datasets": [f"folder:{data}"],
            "methods": [{"name": "coop", "n_ctx": 2}], "shots": [1, 2], "seeds": [1],
            "set": {"train.epochs": 2, "data.augment_views": 0, "train.batch_size": 2}}
    gf = tmp_path / "grid.yaml"
    gf.write_text(yaml.safe_dump(grid))
    out = tmp_path / "bench"
    assert run_cli("bench", gf, "--out", out, "--quiet", "--log", "wandb,tensorboard") == 0
    idx = json.loads((out / "bench_index.json").read_text())
    ids = [r["id"] for r in idx["runs"]]
    assert [r.name for r in fake.runs] == ids and len(ids) == 2
    for r, rid in zip(fake.runs, ids):
        assert r.finished and r.config["seed"] == 1
        res = json.loads((out / rid / "results.json").read_text())
        assert r.summary["final/accuracy"] == pytest.approx(res["metrics"]["accuracy"])
        steps = [d["step"] for d in r.logged if "train/loss" in d]
        assert steps == list(range(1, len(steps) + 1)) and steps
        assert (out / rid / "tensorboard" / "seed1").is_dir()


def test_tracker_errors_are_one_line(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse: usage + one error line
        run_cli("fit", "--dataset", f"folder:{data}", *FIT, "--out", tmp_path / "a",
                "--log", "nope")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("medadapt: error: argument --log: unknown tracker 'nope' for --log; valid: "
                       "tensorboard, wandb, mlflow")
    from medadapt import api
    from medadapt.errors import UserError
    with pytest.raises(UserError, match="unknown tracker 'nope'"):
        api.fit(backbone="tiny-hf-clip", dataset=f"folder:{data}", method="coop",
                out=tmp_path / "a", log="nope")
    assert not (tmp_path / "a").exists()
    if sys.modules.get("mlflow") is None:
        import importlib.util
        if importlib.util.find_spec("mlflow") is None:
            assert run_cli("fit", "--dataset", f"folder:{data}", *FIT, "--out", tmp_path / "b",
                           "--log", "mlflow") == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert err == ["medadapt: error: --log mlflow needs the mlflow package: pip install "
                           "'medadapt[mlflow]'"]
            assert not (tmp_path / "b").exists()


def test_tensorboard_folder_planted_as_a_link_is_refused(tmp_path):
    """A run folder received from someone else may hold ``tensorboard`` as a link elsewhere: the
    event files are never written through it (issue 21)."""
    from medadapt.engine.trackers import TensorBoardTracker
    from medadapt.errors import UserError
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "tensorboard").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserError, match="link"):
        TensorBoardTracker(run / "tensorboard" / "seed1", "run")
    assert list(elsewhere.iterdir()) == []
