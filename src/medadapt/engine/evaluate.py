"""Reading a finished run folder back: :func:`load_run` (backbone + trained method) and
:func:`evaluate_run` (every seed on the run's test split or another data set)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from medadapt.config import load_yaml
from medadapt.data.catalog import dataset_options
from medadapt.data.dataset import DataSet
from medadapt.data.memory import MEMORY_PREFIX
from medadapt.data.fewshot import base_novel_split
from medadapt.data.sources import load_dataset
from medadapt.data.texts import ClassTexts
from medadapt.engine.features import FeatureCache
from medadapt.engine.resolve import class_texts_for, split_backbone_prefix
from medadapt.engine.rundir import pick_device, set_seed
from medadapt.engine.train import Engine, Split
from medadapt.errors import UserError
from medadapt.safeio import short
from medadapt.methods import get_method
from medadapt.metrics import CORE_METRICS, classification_metrics


def _seed_dirs(run: Path) -> list[Path]:
    if (run / "results.json").exists():
        return [run]
    dirs = sorted((d for d in run.glob("seed*") if (d / "results.json").exists()),
                  key=lambda d: (len(d.name), d.name))
    if not dirs:
        raise UserError(f"{run} is not a finished medadapt run (no results.json); finish it with "
                        "`medadapt fit ... --resume`")
    return dirs


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path.parent} is not a finished medadapt run (no {path.name}); "
                        "finish it with `medadapt fit ... --resume`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: {what} is not valid JSON ({e}); the run is damaged, re-run it") from None
    except RecursionError:
        raise UserError(f"{path}: {what} is nested too deeply; the run is damaged") from None


def backbone_of_run(run: Path, spec: str) -> str:
    """The backbone a run folder's config.yaml names: a registered alias or hub id as it is; a
    folder path relative to the run folder (``./model``), which must stay inside it. An absolute
    folder (the one ``fit --backbone /abs/dir`` recorded) is used as it is. Every folder goes
    through the same remote-code refusal as ``--backbone``."""
    import os

    from medadapt.backbones import BACKBONES
    if not isinstance(spec, str) or spec in BACKBONES:
        return spec
    prefix, spec = split_backbone_prefix(spec)
    if spec.startswith(("hf-hub:", "hf-dataset:")) or "@" in spec or not spec \
            or os.path.isabs(os.path.expanduser(spec)):
        return prefix + spec
    inside = run / spec
    if os.sep not in spec and "/" not in spec and not spec.startswith(".") and not inside.exists():
        return prefix + spec  # an unknown name: load_backbone says so
    hub_like = spec.count("/") == 1 and not spec.startswith(".") and not inside.exists()
    if hub_like and not prefix.endswith("local-dir:"):
        return prefix + spec  # org/repo: a hub id
    try:
        ok = inside.resolve().is_relative_to(run.resolve())
    except (OSError, RuntimeError):
        ok = False
    if not ok:
        raise UserError(f"{run}/config.yaml names the backbone folder {spec[:120]!r}, which is "
                        "outside the run folder; a run folder may only name a registered "
                        "backbone, a hub id, an absolute folder or a folder inside itself")
    return prefix + str(inside)


# methods whose learned tensors have one axis per training class (weights, cache values, CoOp's
# class-specific contexts): classes.json must agree with them
CLASS_SHAPED = frozenset({"linear-probe", "lp++", "tip-adapter", "tip-adapter-f"})


def _check_classes(run: Path, cfg: dict, classes: dict, train_names, cls, params: Path) -> None:
    """The class lists of classes.json must fit config.yaml and the learned parameters, checked
    before anything is built (a hostile list of 20,000 names would build a 20,000 x 20,000
    confusion matrix)."""
    names = classes.get("classnames")
    bad = f"{run}/classes.json is damaged"
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names) or \
            not isinstance(train_names, list) or not all(isinstance(c, str) for c in train_names):
        raise UserError(f"{bad} (classnames must be a list of names)")
    if len(set(names)) != len(names) or not set(train_names) <= set(names):
        raise UserError(f"{bad} (duplicate class names, or training classes not among its classes)")
    stored = cfg.get("classnames")
    if isinstance(stored, list) and len(stored) != len(names):
        raise UserError(f"{bad}: it lists {len(names)} classes, config.yaml {len(stored)}; "
                        "re-run it")
    shaped = cls.name in CLASS_SHAPED or (cls.name == "coop" and (cfg.get("method") or {}).get("csc"))
    if not shaped or not params.is_file():
        return  # no learned tensor has a class axis (or no params: refused later in one line)
    try:
        from safetensors import safe_open
        with safe_open(str(params), framework="pt") as f:
            dims = {d for k in f.keys() for d in f.get_slice(k).get_shape()}
    except Exception:
        return  # a damaged file is refused later, in one line
    if len(train_names) not in dims:
        raise UserError(f"{bad}: it lists {len(train_names)} training classes, but the learned "
                        f"parameters in {params.name} are for another number of classes; re-run it")


def load_run(run: str | Path, seed_dir: Path | None = None, device: str = "auto",
             within: list[str] | None = None):
    """Rebuild the backbone and the trained method of a run folder; a missing, half-written or
    damaged file is a one-line ``UserError``. ``within``: the run's own data set's classes, which
    must hold the trained classes (checked before anything is built)."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run folder not found: {run}")
    if not (run / "config.yaml").exists():
        raise UserError(f"{run} is not a medadapt run folder (no config.yaml)")
    cfg = load_yaml(run / "config.yaml")
    for key in ("backbone", "method", "dataset"):
        if not cfg.get(key):
            raise UserError(f"{run}/config.yaml is damaged (no {key})")
    if not isinstance(cfg["backbone"], str) or not isinstance(cfg["dataset"], str) or \
            not isinstance(cfg["method"], dict) or not isinstance(cfg["method"].get("name"), str) or \
            not isinstance(cfg.get("data") or {}, dict) or not isinstance(cfg.get("train") or {}, dict):
        raise UserError(f"{run}/config.yaml is damaged (backbone, dataset and method.name must be "
                        "names; data and train mappings)")
    from medadapt.config import DEFAULTS, deep_update
    cfg = deep_update(DEFAULTS, cfg)  # a key a hand-edited config.yaml lacks: its default
    classes = _read_json(run / "classes.json", "classes.json")
    if not isinstance(classes, dict):
        raise UserError(f"{run}/classes.json is damaged (not a mapping)")
    try:
        texts = ClassTexts(classes["classnames"], classes["templates"], classes["descriptions"])
    except (KeyError, TypeError):
        raise UserError(f"{run}/classes.json is damaged (missing classnames / templates)") from None
    sdir = seed_dir or _seed_dirs(run)[0]
    cls = get_method(cfg["method"]["name"])
    res = _read_json(sdir / "results.json", "results.json")
    if not isinstance(res, dict):
        raise UserError(f"{sdir / 'results.json'} is damaged (not a mapping); re-run it")
    train_names = classes.get("train_classnames") or texts.classnames
    if "train_classnames" not in classes and res.get("protocol") == "base-to-novel":
        base, _ = base_novel_split(texts.classnames, cfg["data"].get("base"), cfg["data"].get("novel"))
        train_names = [texts.classnames[i] for i in base]
    _check_classes(run, cfg, classes, train_names, cls, sdir / "params.safetensors")
    if within is not None:
        have = {c.lower() for c in within}
        if not all(isinstance(n, str) and n.lower() in have for n in train_names):
            # a damaged or hostile classes.json (it would size the confusion matrix)
            raise UserError(f"{run}/classes.json lists {len(train_names)} classes, not all in the "
                            f"run's data set {short(cfg['dataset'], 120)} (a damaged run folder, or "
                            "the data set changed since); pass --dataset to evaluate on another "
                            "data set")
    from medadapt.backbones import load_backbone
    backbone = load_backbone(backbone_of_run(run, cfg["backbone"]), device=pick_device(device))
    set_seed(int(res.get("seed", 1)))
    method = cls(backbone, texts.for_classes(train_names), cfg["method"]).to(backbone.device)
    params = sdir / "params.safetensors"
    if not params.exists():
        raise UserError(f"{sdir} has no params.safetensors; the run is incomplete, re-run it")
    try:
        state = load_file(str(params))
        method.load_learned_state_dict(state)
    except Exception as e:  # SafetensorError (truncated), RuntimeError (shape mismatch) ...
        raise UserError(f"{params} is damaged or does not match the run's method "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "re-run it") from None
    method.eval()
    return cfg, texts, backbone, method, sdir


def evaluate_run(run: str | Path, dataset: str | DataSet | None = None, progress: bool = True,
                 quiet: bool = False) -> dict:
    """Evaluate every seed of a run; ``metrics`` is the first seed's (backward compatible),
    ``seeds`` holds each seed's and ``summary`` the mean and std over seeds. ``dataset``: a spec,
    a built :class:`DataSet` (e.g. in-memory images), or None for the run's own."""
    run = Path(run)
    if not (run / "config.yaml").exists():
        load_run(run)  # raises the one-line error
    dirs = _seed_dirs(run)
    try:
        wanted = load_yaml(run / "config.yaml").get("seeds") or []
    except UserError:
        wanted = []
    if len(wanted) > len(dirs):
        print(f"medadapt: warning: {run}: only {len(dirs)} of {len(wanted)} seeds are finished; "
              "evaluating those (finish the others with `medadapt fit ... --resume`)",
              file=sys.stderr)
    per = []
    memo: dict = {}
    for d in dirs:
        per.append(_evaluate_seed(run, d, dataset, progress, memo))
    out = dict(per[0])
    out["seeds"] = [{"seed": p["seed"], "seed_dir": p["seed_dir"], "metrics": p["metrics"]}
                    for p in per]
    if len(per) > 1:
        out["summary"] = {}
        for k in CORE_METRICS:
            vals = [p["metrics"].get(k) for p in per if p["metrics"].get(k) is not None]
            if vals:
                out["summary"][k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)),
                                     "values": vals}
    return out


def _evaluate_seed(run: Path, sdir: Path, dataset: str | None, progress: bool, memo: dict) -> dict:
    within = None
    if not isinstance(dataset, DataSet) and not dataset:
        # the run's own data set: its classes bound the run's, checked before building
        try:
            cfg0 = load_yaml(run / "config.yaml")
        except UserError:
            cfg0 = {}
        if isinstance(cfg0.get("dataset"), str) and cfg0["dataset"].startswith(MEMORY_PREFIX):
            raise UserError(f"{run} was fitted on an in-memory data set ({cfg0['dataset']}); pass "
                            "the data set to evaluate on (Run.evaluate(dataset), or --dataset SPEC)")
        if isinstance(cfg0.get("dataset"), str):
            if cfg0["dataset"] not in memo:
                memo[cfg0["dataset"]] = load_dataset(cfg0["dataset"], **dataset_options(cfg0))
            within = memo[cfg0["dataset"]].classnames
    cfg, texts, backbone, method, sdir = load_run(run, sdir, within=within)
    seed = _read_json(sdir / "results.json", "results.json").get("seed")
    if isinstance(dataset, DataSet):
        spec, memo[dataset.name] = dataset.name, dataset
    else:
        spec = dataset or cfg["dataset"]
    if spec not in memo:
        memo[spec] = load_dataset(spec, **(dataset_options(cfg) if not dataset else {}))
    ds = memo[spec]
    names = method.texts.classnames
    lower = {c.lower(): i for i, c in enumerate(ds.classnames)}
    trained = {n.lower(): j for j, n in enumerate(names)}
    if all(n.lower() in lower for n in names):
        classes = [lower[n.lower()] for n in names]
        cmap = {c: j for j, c in enumerate(classes)}
        metric_names = [ds.classnames[c] for c in classes]
    elif all(c.lower() in trained for c in ds.classnames):
        # an external test set with some of the trained classes: the model still chooses among
        # all of its classes; the metrics cover the classes present
        classes = list(range(ds.num_classes))
        cmap = {c: trained[ds.classnames[c].lower()] for c in classes}
        metric_names = list(names)
        print(f"medadapt: note: {spec} has {ds.num_classes} of the run's {len(names)} classes; "
              "predictions still range over all of them", file=sys.stderr)
    else:  # another data set's classes: methods that can take new class names switch to them
        if not method.supports_novel:
            unknown = [c for c in ds.classnames if c.lower() not in trained]
            raise UserError(f"{method.name} cannot evaluate on classes it was not trained on "
                            f"({', '.join(unknown[:6])}{' ...' if len(unknown) > 6 else ''}; "
                            f"trained: {', '.join(names)})")
        method.set_classes(class_texts_for(cfg, ds, ds.classnames, method.needs_descriptions))
        classes = list(range(ds.num_classes))
        cmap = {c: j for j, c in enumerate(classes)}
        metric_names = list(ds.classnames)
    idx = ds.indices("test", classes)
    if not idx:
        raise UserError(f"{spec}: no test images to evaluate on")
    cache = FeatureCache(enabled=cfg["data"]["cache"], precision=cfg["data"].get("precision", "auto"))
    eng = Engine(cfg["train"], device=str(backbone.device), progress=progress)
    if method.needs_images:
        split = Split(ds, idx, torch.tensor([cmap[ds.records[i].label] for i in idx]))
    else:
        feats, bad = cache.encode(backbone, ds, idx, progress=progress, skip_bad=cfg["data"]["skip_bad"])
        idx = [i for i in idx if i not in set(bad)]
        split = Split(ds, idx, torch.tensor([cmap[ds.records[i].label] for i in idx]), feats)
    logits = eng.logits(method, split)
    m = classification_metrics(split.labels.numpy(), logits.numpy(), metric_names)
    return {"run": str(run), "seed_dir": str(sdir), "seed": seed,
            "dataset": spec, "metrics": m}
