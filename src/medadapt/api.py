"""The Python API: what a notebook uses (the ``medadapt`` command line is a thin layer over it).

    import medadapt
    ds = medadapt.load_dataset(images=[...], labels=[...], classnames=[...])   # or a spec
    run = medadapt.fit(backbone="plip", dataset=ds, method="coop", shots=16, seeds=[1, 2, 3],
                       out="runs/coop", settings={"train.epochs": 10}, log="tensorboard")
    run.summary["metrics"]["accuracy"]["mean"]
    pred = run.predict([pil_image, "tile.png", "tiles/"])   # pred.probs, pred.predictions
    run.evaluate(other_ds)
    run.push("org/name")                                      # then medadapt.load_run("hf://org/name")

Every mistake a user can make is a :class:`medadapt.errors.UserError` with the same one-line
message the command line prints. See docs/api.md.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from medadapt.errors import UserError

__all__ = ["fit", "load_run", "load_backbone", "load_dataset", "push", "Run", "Prediction"]

_PATH_SPECS = {".csv": "csv", ".npz": "npz"}


# ------------------------------------------------------------------------------------------------
# data sets and backbones
def load_dataset(spec=None, *, images=None, labels=None, classnames: Sequence[str] | None = None,
                 splits=None, concepts=None, name: str | None = None, **options):
    """A :class:`~medadapt.data.dataset.DataSet` from

    - a spec string: a registered name (``kather2016``, ``synth-crc``), ``folder:PATH``,
      ``csv:PATH``, ``npz:PATH`` (as ``medadapt fit --dataset``), or a plain path (a folder,
      a ``.csv`` or a ``.npz`` file);
    - images in memory: ``load_dataset(images=[PIL or arrays], labels=[...], classnames=[...])``
      (train / val / test drawn per class unless ``splits`` gives one per image), or a dict of
      splits ``load_dataset({"train": (images, labels), "test": (images, labels)})``; see
      :func:`medadapt.data.memory.from_memory`.

    ``options``: builder options of a registered data set (``split_file=...``, ``split_seed=...``).
    """
    from medadapt.data.dataset import DataSet
    from medadapt.data.memory import from_memory
    if isinstance(spec, DataSet):
        return spec
    if isinstance(spec, dict) or (spec is None and images is not None):
        return from_memory(spec if isinstance(spec, dict) else images, labels, classnames,
                           splits=splits, concepts=concepts, name=name)
    if spec is None:
        raise UserError("load_dataset needs a spec (name, folder:PATH, csv:PATH, npz:PATH) or "
                        "images= and labels=")
    if images is not None or labels is not None:
        raise UserError("give either a data set spec or images= and labels=, not both")
    spec = _spec_of(spec)
    from medadapt.data.sources import load_dataset as _load
    ds = _load(spec, **options)
    if not options:  # the spec alone rebuilds it: a run records the spec, not only the name
        ds.meta["spec"] = spec
    return ds


def _spec_of(spec) -> str:
    """A plain path (a folder, a .csv, a .npz) -> its spec; any other string as it is."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise UserError(f"a data set spec must be a string or a path, got {type(spec).__name__}")
    kind = spec.partition(":")[0]
    if kind in ("folder", "csv", "npz") or ":" in spec and not os.path.exists(spec):
        return spec
    p = Path(spec).expanduser()
    if p.is_dir():
        return f"folder:{p}"
    if p.suffix.lower() in _PATH_SPECS and p.exists():
        return f"{_PATH_SPECS[p.suffix.lower()]}:{p}"
    return spec


def load_backbone(name: str, device: str = "auto"):
    """A backbone (``medadapt backbones`` lists the registered names; also open_clip:SRC, hf:SRC,
    conch:SRC or a model folder): ``encode_image``, ``encode_text``, ``tokenize``, ``preprocess``."""
    from medadapt.backbones import load_backbone as _load
    from medadapt.engine.rundir import pick_device
    return _load(name, device=pick_device(device))


# ------------------------------------------------------------------------------------------------
# fit
def fit(backbone: str | None = None, dataset=None, method: str | None = None,
        shots: int | None = None, seeds: int | Sequence[int] | None = None,
        out: str | os.PathLike | None = None, *, settings: dict | None = None,
        config: str | os.PathLike | dict | None = None, protocol: str | None = None,
        device: str | None = None, overwrite: bool = False, resume: bool = False,
        progress: bool = True, quiet: bool = False, log=None,
        log_name: str | None = None) -> "Run":
    """Train ``method`` on ``backbone`` with ``shots`` images per class for each seed, evaluate
    on the test split, write the run folder ``out`` and return it as a :class:`Run`.

    ``dataset``: a spec (as ``medadapt fit --dataset``), a path, a :class:`DataSet` from
    :func:`load_dataset` (e.g. images in memory), or a dict of splits. ``settings``: config values
    over the method's paper defaults, nested (``{"train": {"lr": 0.01}}``) or dotted
    (``{"train.lr": 0.01}``); unknown keys are refused. ``config``: a YAML file (or a dict) under
    the other arguments. ``protocol``: ``few-shot`` (default), ``base-to-novel``, ``cross-domain``.
    ``log``: ``"tensorboard"``, ``"wandb"``, ``"mlflow"`` or a list of them.
    """
    from medadapt.config import load_yaml, normalise
    from medadapt.data.dataset import DataSet
    from medadapt.engine.grid import apply_overrides
    from medadapt.engine.runner import Runner
    if out is None:
        raise UserError("fit needs out=FOLDER: the run folder to create")
    if overwrite and resume:
        raise UserError("--overwrite and --resume exclude each other")
    if isinstance(config, dict):
        cfg = normalise(config)
    elif config is not None:
        cfg = load_yaml(config)
    else:
        cfg = {}
    if settings is not None and not isinstance(settings, dict):
        raise UserError(f"settings must be a mapping, got {type(settings).__name__}")
    bad = [k for k in (settings or {}) if not isinstance(k, str)]
    if bad:
        raise UserError(f"settings keys must be strings, got {bad[0]!r}")
    cfg = apply_overrides(cfg, settings)  # nested or dotted keys, as a bench grid's set:
    if backbone is not None:
        cfg["backbone"] = backbone
    if method is not None:
        m = cfg.get("method") or {}
        cfg["method"] = dict(m, name=method) if isinstance(m, dict) else {"name": method}
    if shots is not None:
        cfg["shots"] = shots
    if seeds is not None:
        cfg["seeds"] = [seeds] if isinstance(seeds, int) else list(seeds)
    if protocol is not None:
        cfg["protocol"] = protocol
    if device is not None:
        cfg["device"] = device
    ds = None
    if dataset is not None:
        if isinstance(dataset, (DataSet, dict)):
            ds = load_dataset(dataset)
            cfg["dataset"] = ds.meta.get("spec") or ds.name
        else:
            cfg["dataset"] = _spec_of(dataset)
    runner = Runner(cfg, out, overwrite=overwrite, resume=resume, quiet=quiet, progress=progress,
                    dataset=ds, log=log, log_name=log_name)
    runner.run()
    run = Run(runner.out)  # absolute, taken before the run (``--out .`` may replace the cwd)
    run._dataset = ds
    return run


# ------------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """Class probabilities for N images: ``probs`` [N, C] (rows sum to 1), ``classes`` (C names),
    ``predictions`` (the arg-max class name per image), ``extras`` (per image, the method's extra
    output: SCALE's top concepts; ``{}`` for other methods), ``inputs`` (file paths, or
    ``<image i>`` for images given in memory)."""

    probs: np.ndarray
    classes: list[str]
    predictions: list[str]
    extras: list[dict] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.predictions)

    def __array__(self, dtype=None, copy=None):
        return self.probs if dtype is None else self.probs.astype(dtype)

    def __repr__(self) -> str:
        return (f"Prediction({len(self)} images, {len(self.classes)} classes: "
                f"{', '.join(self.predictions[:5])}{' ...' if len(self) > 5 else ''})")


def _is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


class Run:
    """A finished run folder (local, or a snapshot of ``hf://org/name`` in the Hugging Face cache).

    ``config`` (the resolved config), ``classes`` (class names the model predicts), ``results``
    (one ``results.json`` per seed), ``summary`` (``summary.json`` for several seeds, else the
    one seed's results), ``seeds``; :meth:`predict`, :meth:`evaluate`, :meth:`push`.
    """

    def __init__(self, path: str | os.PathLike, source: str | None = None, device: str = "auto"):
        from medadapt.engine.predict import predict_seed_dirs
        self.path = Path(path)
        self.source = source or str(self.path)
        self.device = device
        self._seed_dirs = predict_seed_dirs(self.path)  # one-line errors for a missing/unfinished run
        from medadapt.config import load_yaml
        self.config: dict = load_yaml(self.path / "config.yaml")
        from medadapt.engine.evaluate import _read_json
        cls = _read_json(self.path / "classes.json", "classes.json")
        self._classes = cls
        self.results: list[dict] = [_read_json(d / "results.json", "results.json")
                                    for d in self._seed_dirs]
        # seed dir -> (seed dir, backbone, method), loaded on first predict and kept (one backbone
        # per seed); ``keep_models = False`` loads them per call instead, ``unload()`` frees them
        self._loaded: dict = {}
        self.keep_models = True
        self._dataset = None

    # ---- what the run is ----------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """The class names the model predicts over (the trained ones)."""
        return list(self._classes.get("train_classnames") or self._classes["classnames"])

    @property
    def seeds(self) -> list[int]:
        return [r.get("seed") for r in self.results]

    @property
    def summary(self) -> dict:
        p = self.path / "summary.json"
        if len(self.results) > 1 and p.exists():
            from medadapt.engine.evaluate import _read_json
            return _read_json(p, "summary.json")
        if len(self.results) > 1:
            from medadapt.engine.runner import summarise
            return summarise(self.results)
        return self.results[0]

    @property
    def metrics(self) -> dict:
        """Test metrics: the mean over seeds (several seeds) or the one seed's."""
        s = self.summary
        return {k: (v["mean"] if isinstance(v, dict) else v)
                for k, v in (s.get("metrics") or {}).items() if v is not None}

    def __repr__(self) -> str:
        c = self.config
        return (f"Run({self.source!r}: {c['method']['name']} on {c['backbone']}, "
                f"{c['dataset']}, {len(self.results)} seed(s))")

    # ---- predict ------------------------------------------------------------------------------
    def _models(self, seed: int | None):
        """Yield (seed dir, backbone, method) for the seeds used."""
        from medadapt.engine.evaluate import load_run as _load
        from medadapt.engine.predict import predict_seed_dirs
        dirs = predict_seed_dirs(self.path, seed)
        for d in dirs:
            if d in self._loaded:
                yield self._loaded[d]
                continue
            _, _, backbone, method, _ = _load(self.path, d, device=self.device)
            entry = (d, backbone, method)
            if self.keep_models:
                self._loaded[d] = entry
            yield entry
            del entry, backbone, method

    def unload(self) -> None:
        """Free the models :meth:`predict` keeps (one backbone + method per seed)."""
        self._loaded.clear()

    def predict(self, inputs, batch_size: int = 32, seed: int | None = None,
                skip_bad: bool = False, progress: bool = False) -> Prediction:
        """Class probabilities for images: PIL images, numpy arrays (HxW, HxWx3), file paths or
        folders (their images, hidden files skipped), or a list mixing them; one image may be
        given alone. A run with several seeds averages their models' probabilities (``seed``
        picks one). ``skip_bad``: an unreadable file gets a row of NaN probabilities and the
        prediction ``""`` instead of raising."""
        import torch

        from medadapt.data.dataset import open_rgb, pixel_limit
        from medadapt.data.memory import _as_rgb
        from medadapt.engine.predict import predict_inputs, predict_pass
        items = self._items(inputs)
        if not items:
            raise UserError("predict: no images given")
        expanded: list = []  # (label, path or image)
        for i, x in enumerate(items):
            if _is_path(x):
                for f in predict_inputs([os.fspath(x)]):
                    expanded.append((str(f), f))
            else:
                expanded.append((f"<image {i}>", x))

        def open_item(j: int):
            label, x = expanded[j]
            return open_rgb(str(x)) if isinstance(x, Path) else _as_rgb(x, label)

        names = self.classes
        total = np.zeros((len(expanded), len(names)), dtype=np.float64)
        extras: list[dict] = [{} for _ in expanded]
        bad: dict[int, str] = {}
        n_models = 0
        limit = (self.config.get("data") or {}).get("max_image_pixels")
        with torch.no_grad(), pixel_limit(limit):
            for k, (d, backbone, method) in enumerate(self._models(seed)):
                n_models += 1
                for probs, ex, errs in predict_pass(method, backbone, len(expanded), open_item,
                                                    batch_size, skip_bad, progress, "predict",
                                                    skip=bad):
                    for j, pr in probs.items():
                        total[j] += pr
                    if k == 0:
                        for j, e in ex.items():
                            extras[j] = dict(e)
                    bad.update(errs)
        total /= max(1, n_models)
        preds = []
        for j in range(len(expanded)):
            if j in bad:
                total[j] = np.nan
                preds.append("")
                extras[j] = {"error": bad[j]}
            else:
                preds.append(names[int(np.argmax(total[j]))])
        return Prediction(probs=total, classes=list(names), predictions=preds, extras=extras,
                          inputs=[lab for lab, _ in expanded])

    @staticmethod
    def _items(inputs) -> list:
        from PIL import Image
        if _is_path(inputs) or isinstance(inputs, Image.Image):
            return [inputs]
        if isinstance(inputs, np.ndarray):
            # one image (HxW, HxWxC, CxHxW) or a stack of images (NxHxWxC, NxHxW with N > 4)
            if inputs.ndim == 4 or (inputs.ndim == 3 and inputs.shape[-1] not in (1, 3, 4)
                                    and inputs.shape[0] not in (1, 3, 4)):
                return list(inputs)
            return [inputs]
        if hasattr(inputs, "detach") and hasattr(inputs, "cpu"):
            return Run._items(inputs.detach().cpu().numpy())
        if isinstance(inputs, Iterable):
            return list(inputs)
        raise UserError(f"predict: expected images, paths or a list of them, got "
                        f"{type(inputs).__name__}")

    def predict_csv(self, inputs: list[str], out: str | os.PathLike | None = None,
                    batch_size: int = 32, skip_bad: bool = False, progress: bool = False,
                    max_image_pixels: int | None = None, seed: int | None = None) -> Path:
        """``medadapt predict``: one CSV row per image file (path, prediction, p(class)...,
        method extras), written to a temporary file and renamed into place; default
        ``RUN/predictions.csv`` (``./predictions.csv`` for a run from the hub)."""
        from medadapt.engine.predict import predict_paths
        if out is None and self.source.startswith("hf://"):
            out = "predictions.csv"  # never into the Hugging Face cache
        return predict_paths(self.path, [os.fspath(x) for x in inputs], out,
                             batch_size=batch_size, skip_bad=skip_bad, progress=progress,
                             max_image_pixels=max_image_pixels, seed=seed)

    # ---- evaluate, push -------------------------------------------------------------------------
    def evaluate(self, dataset=None, progress: bool = False) -> dict:
        """Metrics of every seed on the run's test split, or on ``dataset`` (a spec, a path, a
        :class:`DataSet` or a dict of splits): ``metrics`` (first seed), ``seeds`` (each seed's),
        ``summary`` (mean and std over seeds). A run fitted in memory in this session
        evaluates on that data set by default."""
        from medadapt.data.dataset import DataSet
        from medadapt.engine.evaluate import evaluate_run
        if dataset is None and self._dataset is not None:
            dataset = self._dataset
        if isinstance(dataset, dict):
            dataset = load_dataset(dataset)
        elif dataset is not None and not isinstance(dataset, DataSet):
            dataset = _spec_of(dataset)
        return evaluate_run(self.path, dataset, progress=progress)

    def push(self, repo: str, dry_run: str | os.PathLike | None = None, private: bool = False,
             token: str | None = None, commit_message: str | None = None):
        """Share the run on the Hugging Face Hub (see :func:`push`)."""
        return push(self.path, repo, dry_run=dry_run, private=private, token=token,
                    commit_message=commit_message)


def load_run(source: str | os.PathLike, device: str = "auto") -> Run:
    """A run folder written by :func:`fit` / ``medadapt fit``, or ``hf://org/name[@revision]``
    (read through the Hugging Face cache; with ``HF_HUB_OFFLINE=1`` the cache only). A run from
    the hub whose backbone is not on this machine is refused with one line saying how to get it."""
    from medadapt.share import resolve_run
    path, label = resolve_run(source)
    return Run(path, source=label, device=device)


def push(run: str | os.PathLike | Run, repo: str, dry_run: str | os.PathLike | None = None,
         private: bool = False, token: str | None = None, commit_message: str | None = None):
    """Upload a run to the Hugging Face Hub as ``repo`` (``org/name``): learned parameters
    (safetensors), resolved config, classes, results and a model card. ``dry_run=DIR`` writes
    the folder that would be uploaded and uploads nothing. Returns the repository URL (or the
    folder, with ``dry_run``)."""
    from medadapt.share import push_run
    path = run.path if isinstance(run, Run) else Path(run)
    return push_run(path, repo, dry_run=dry_run, private=private, token=token,
                    commit_message=commit_message)
