"""Run configuration: defaults <- method defaults <- ``--config FILE.yaml`` <- flags <- ``--set``.

The resolved config is a plain nested dict, written to the run folder as ``config.yaml``.
``--set a.b=value`` parses ``value`` as YAML (numbers, lists, null, booleans).
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from medadapt.errors import UserError

DEFAULTS: dict = {
    "backbone": None,
    "dataset": None,
    "method": {"name": None},
    "shots": 16,
    "seeds": [1],
    "protocol": "few-shot",  # few-shot | base-to-novel | cross-domain
    "device": "auto",
    "data": {
        "skip_bad": False,  # skip and count unreadable images instead of failing
        "allow_fewer": False,  # allow classes with fewer than K training images
        "fraction": None,  # use a stratified fraction of the train split instead of K shots
        "base": None,  # explicit base classes for base-to-novel (default: first half)
        "novel": None,
        "train_domain": None,  # cross-domain: the domain to train on (default: the first)
        "batch_size": 64,  # feature extraction batch size
        "workers": 0,  # data loader workers for feature extraction
        "precision": "auto",  # feature extraction autocast: auto (fp16 on CUDA) | fp32 | fp16 | bf16
        # cached-feature methods train on V pre-encoded augmented views of each training image
        # (the backbone's train transform: random resized crop 0.08-1 + flip), one per epoch;
        # 0: train on the eval transform's features. See docs/methods.md ("Augmented views").
        "augment_views": 10,
        "cache": True,  # use the on-disk feature cache
    },
    "texts": {
        "template_set": None,  # default: the data set's (histopathology, cytology, ...)
        "templates": None,  # explicit list of templates with '{}'
        "descriptions": None,  # JSON file; default: the data set's shipped descriptions
    },
    "train": {},  # engine settings (see medadapt.engine.train.TRAIN_DEFAULTS)
}


def deep_update(base: dict, new: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (new or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def normalise(cfg: dict) -> dict:
    cfg = dict(cfg)
    if isinstance(cfg.get("method"), str):
        cfg["method"] = {"name": cfg["method"]}
    if isinstance(cfg.get("seeds"), int):
        cfg["seeds"] = [cfg["seeds"]]
    return cfg


def read_yaml_mapping(path: str | Path, what: str = "config file", allow_empty: bool = True) -> dict:
    """A YAML file that must hold a mapping; every problem is a one-line ``UserError``."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
    if data is None and allow_empty:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: a {what} must be a YAML mapping")
    return data


def load_yaml(path: str | Path) -> dict:
    return normalise(read_yaml_mapping(path, "config file"))


def apply_sets(cfg: dict, sets: list[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    for s in sets or []:
        if "=" not in s:
            raise UserError(f"--set expects key=value, got {s!r}")
        key, raw = s.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = cfg
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if isinstance(node.get(p), str) and p == "method":
                node[p] = {"name": node[p]}
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: {p!r} is not a section")
        node[parts[-1]] = value
    return normalise(cfg)


def dump_yaml(cfg: dict, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
