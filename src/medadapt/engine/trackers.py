"""Experiment trackers: training curves and final metrics for TensorBoard, Weights & Biases, MLflow.

The engine talks to a :class:`Tracker` only (``log_scalars`` / ``log_final`` / ``close``); what it
records, with the step it uses:

- ``train/loss`` and ``train/lr``: every optimiser step (step = global step, from 1);
- ``train/epoch_loss``: every epoch (step = epoch, from 1);
- ``val/accuracy``: every validation pass during training (``train.eval_every``; step = epoch) and
  the final one on the validation split (step = the last epoch);
- ``final/<metric>``: the test metrics of the seed (accuracy, balanced_accuracy, macro_f1, auc, and
  base / novel / hm under base-to-novel), once.

One tracker run per seed: named ``<run folder name>`` (one seed) or ``<run folder name>/seed<N>``;
``medadapt bench`` names it by the grid run's key. TensorBoard writes its event files under
``RUN/tensorboard/<seed>`` (``tensorboard --logdir RUN/tensorboard``); ``wandb`` and ``mlflow``
are optional extras (``pip install medadapt[wandb]`` / ``[mlflow]``), imported only when asked
for, configured by their own environment variables (``WANDB_PROJECT``, ``WANDB_MODE``,
``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``, ...).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol, runtime_checkable

from medadapt.errors import UserError

TRACKERS = ("tensorboard", "wandb", "mlflow")
TB_FOLDER = "tensorboard"  # RUN/tensorboard/<seed>: the event files of --log tensorboard


@runtime_checkable
class Tracker(Protocol):
    def log_scalars(self, values: dict[str, float], step: int) -> None: ...

    def log_final(self, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


# tracker -> (the package it needs, how to install it)
PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"),
            "wandb": ("wandb", "pip install 'medadapt[wandb]'"),
            "mlflow": ("mlflow", "pip install 'medadapt[mlflow]'")}


def _missing(name: str) -> UserError:
    mod, how = PACKAGES[name]
    return UserError(f"--log {name} needs the {mod} package: {how}")


def _finite(values: dict) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


class TensorBoardTracker:
    def __init__(self, logdir: Path, name: str, config: dict | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard") from None
        self.logdir = Path(logdir)
        # inside the run folder; a folder on the way planted as a link is refused (issue 21)
        from medadapt.safeio import make_dir
        make_dir(self.logdir, root=self.logdir.parent.parent)
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        self.name = name
        if config is not None:
            import yaml
            self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False)
                                 + "```", 0)
        self._last_step = 0

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in _finite(values).items():
            self.writer.add_scalar(k, v, step)
        self._last_step = max(self._last_step, step)

    def log_final(self, metrics: dict[str, float]) -> None:
        for k, v in _finite(metrics).items():
            self.writer.add_scalar(f"final/{k}", v, 0)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbTracker:
    def __init__(self, name: str, config: dict | None = None, group: str | None = None):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb") from None
        self.run = wandb.init(name=name, group=group, config=config or {}, reinit=True)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log({**_finite(values), "step": step})

    def log_final(self, metrics: dict[str, float]) -> None:
        for k, v in _finite(metrics).items():
            self.run.summary[f"final/{k}"] = v

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, name: str, config: dict | None = None):
        try:
            import mlflow
        except ImportError:
            raise _missing("mlflow") from None
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=name, nested=mlflow.active_run() is not None)
        if config:
            from medadapt.engine.rundir import flat_keys
            params = {k: str(v)[:500] for k, v in flat_keys(config).items()}
            mlflow.log_params(params)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        # mlflow metric names may not hold every character; '/' is allowed
        self.mlflow.log_metrics(_finite(values), step=step)

    def log_final(self, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics({f"final/{k}": v for k, v in _finite(metrics).items()})

    def close(self) -> None:
        self.mlflow.end_run()


class MultiTracker:
    """Several trackers at once (``--log tensorboard wandb``)."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def log_scalars(self, values, step):
        for t in self.trackers:
            t.log_scalars(values, step)

    def log_final(self, metrics):
        for t in self.trackers:
            t.log_final(metrics)

    def close(self):
        for t in self.trackers:
            t.close()


def check_names(names) -> list[str]:
    """``log`` as given by a user (None, a name, a comma-separated string or a list) -> names;
    an unknown name is a one-line ``UserError``."""
    if names is None or names == "" or names == []:
        return []
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for n in names:
        if not isinstance(n, str) or n not in TRACKERS:
            raise UserError(f"unknown tracker {n!r} for --log; valid: {', '.join(TRACKERS)}")
        if n not in out:
            out.append(n)
    return out


def check_available(names: list[str]) -> None:
    """Refuse before training starts when a tracker's package is missing."""
    import importlib.util
    for n in names:
        if importlib.util.find_spec(PACKAGES[n][0]) is None:
            raise _missing(n)


def make_tracker(names: list[str], run_dir: Path, name: str, seed_label: str,
                 config: dict | None = None):
    """One tracker (or None) for one seed of a run: ``run_dir`` the run folder, ``name`` the
    tracker run's name, ``seed_label`` e.g. ``seed1`` (the TensorBoard sub-folder)."""
    ts = []
    try:
        for n in names:
            if n == "tensorboard":
                ts.append(TensorBoardTracker(Path(run_dir) / TB_FOLDER / seed_label, name, config))
            elif n == "wandb":
                ts.append(WandbTracker(name, config, group=Path(run_dir).name))
            elif n == "mlflow":
                ts.append(MlflowTracker(name, config))
    except BaseException:
        for t in ts:
            t.close()
        raise
    if not ts:
        return None
    return ts[0] if len(ts) == 1 else MultiTracker(ts)


def add_log_option(parser, what: str = "") -> None:
    """The ``--log TRACKER`` option of ``medadapt fit`` and ``medadapt bench`` (repeatable, or
    comma-separated)."""
    import argparse

    def parse(s: str) -> list[str]:
        try:
            return check_names(s)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parser.add_argument("--log", type=parse, action="extend", default=None, metavar="TRACKER",
                        help="record per-step loss and learning rate, per-epoch validation "
                             "accuracy and the final metrics in an experiment tracker: "
                             "tensorboard (event files in RUN/tensorboard/), wandb or mlflow "
                             "(optional extras: pip install 'medadapt[wandb]' / '[mlflow]'); "
                             f"repeatable{what} (default: none)")
