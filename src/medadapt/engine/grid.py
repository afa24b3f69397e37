"""The pieces of an experiment grid that both ``medadapt bench`` (:mod:`medadapt.report.bench`) and
the published recipes (:mod:`medadapt.recipes`) build on: folder-safe labels, ``set:`` overrides,
one run of a grid (:class:`RunSpec`) and the config keys that make a finished run stale."""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

from medadapt.config import apply_sets, deep_update, normalise
from medadapt.engine.rundir import flat_diff
from medadapt.errors import UserError

# config keys that may differ between a finished run and the grid without making it stale
_IGNORED_DIFF = ("device", "seeds", "classnames", "data.workers", "data.batch_size",
                 "train.workers")

def slug(s: str) -> str:
    """A folder-safe label (never a path: no separators, no leading dot, at most 100 characters)."""
    out = re.sub(r"[^A-Za-z0-9._+-]+", "-", str(s)).strip("-.")[:100].rstrip("-.")
    return out or "x"


def dataset_label(spec: str) -> str:
    kind, _, rest = spec.partition(":")
    if kind in ("folder", "csv", "npz"):
        p = Path(rest.rstrip("/\\"))
        return slug(p.stem if kind != "folder" else p.name)
    return slug(kind)


def backbone_label(spec: str) -> str:
    s = spec.rstrip("/\\")
    if "/" in s or "\\" in s or ":" in s:
        s = re.split(r"[/\\:]", s)[-1]
    return slug(s)


def budget_label(shots: int | None, fraction: float | None) -> str:
    return f"frac{fraction:g}" if fraction is not None else f"{shots}shot"


def apply_overrides(cfg: dict, sets) -> dict:
    """Apply a grid ``set:``: a mapping with dotted keys (values may be nested mappings, merged)
    or a list of ``key=value`` strings (parsed like ``--set``)."""
    if not sets:
        return cfg
    if isinstance(sets, list):
        return apply_sets(cfg, [str(s) for s in sets])
    if not isinstance(sets, dict):
        raise UserError(f"'set' must be a mapping or a list of key=value, got {sets!r}")
    cfg = copy.deepcopy(cfg)
    for key, value in sets.items():
        parts = str(key).split(".")
        node = cfg
        for p in parts[:-1]:
            if p == "method" and isinstance(node.get(p), str):
                node[p] = {"name": node[p]}
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"set {key}: {p!r} is not a section")
        last = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last] = deep_update(node[last], value)
        else:
            node[last] = copy.deepcopy(value)
    return normalise(cfg)


@dataclass
class RunSpec:
    id: str  # folder relative to the bench output folder
    cfg: dict  # unresolved config for Runner
    backbone: str  # labels
    dataset: str
    method: str
    method_name: str
    protocol: str
    shots: int | None
    fraction: float | None
    seeds: list[int]
    resolved: dict | None = None

    def entry(self) -> dict:
        return {"id": self.id, "backbone": self.backbone, "dataset": self.dataset,
                "method": self.method, "method_name": self.method_name,
                "protocol": self.protocol, "shots": self.shots, "fraction": self.fraction,
                "seeds": self.seeds, "backbone_spec": self.cfg["backbone"],
                "dataset_spec": self.cfg["dataset"]}


def config_diff(stored: dict, wanted: dict) -> list[str]:
    """Dotted keys whose values differ (ignoring device, seeds, loader settings)."""
    return flat_diff(stored, wanted, _IGNORED_DIFF)
