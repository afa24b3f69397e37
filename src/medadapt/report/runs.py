"""Reading run folders for the report: one :class:`Run` per finished run folder under a
directory (seeds, labels from ``bench.json``), and the report's own output folder rules."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from medadapt.errors import UserError
from medadapt.engine.grid import backbone_label, dataset_label
from medadapt.report.bench import INDEX
from medadapt.safeio import load_yaml, short


METRIC_SHORT = {"accuracy": "Acc", "balanced_accuracy": "BAcc", "macro_f1": "F1", "auc": "AUC"}
HEADLINE = {"few-shot": ("accuracy", "accuracy (%)"), "base-to-novel": ("hm", "HM of base / novel (%)"),
            "cross-domain": ("mean_domain_accuracy", "mean unseen-domain accuracy (%)")}
PROTOCOL_TITLE = {"few-shot": "Few-shot", "base-to-novel": "Base-to-novel",
                  "cross-domain": "Cross-domain"}


# ------------------------------------------------------------------------------------------------
# loading
@dataclass
class Run:
    folder: Path
    rel: str
    cfg: dict
    label: str  # method label (row)
    method: str  # registered method name
    backbone: str
    dataset: str
    protocol: str
    shots: int | None
    fraction: float | None
    results: list[dict]
    seed_dirs: list[Path]
    expected_seeds: list[int]
    labelled: bool = False  # label from bench.json

    @property
    def budget(self) -> float:
        return float(self.fraction) if self.fraction is not None else float(self.shots or 0)

    @property
    def budget_kind(self) -> str:
        return "fraction" if self.fraction is not None else "shots"


def budget_text(kind: str, b: float) -> str:
    if kind == "fraction":
        return f"{b * 100:g}% of the training data"
    return "all training images" if b <= 0 else f"{int(b)}-shot"


def _seed_of(d: Path) -> int:
    m = re.fullmatch(r"seed(\d+)", d.name)
    return int(m.group(1)) if m else 0


REPORT_MARKERS = ("report.json", "compare.md")


def check_report_out(out: Path) -> None:
    """The report folder: new, empty, or an earlier report's (its files are replaced); any other
    folder is refused, so a report never overwrites a user's files."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in REPORT_MARKERS):
        raise UserError(f"--out {out} holds files that are not a medadapt report; choose an empty "
                        "or new folder")


def _valid_result(r) -> bool:
    """A results.json a report can tabulate (a hostile or damaged one is skipped with a note)."""
    num = (int, float)
    return isinstance(r, dict) and isinstance(r.get("metrics"), (dict, type(None))) and \
        all(isinstance(r.get(k), (*num, type(None))) and not isinstance(r.get(k), bool)
            for k in ("shots", "fraction", "seed", "base", "novel", "hm")) and \
        all(isinstance(r.get(k), (str, type(None))) for k in ("method", "backbone", "dataset",
                                                               "protocol")) and \
        all(isinstance(v, (*num, list, dict, str, type(None)))
            for v in (r.get("metrics") or {}).values())


def load_runs(root: str | Path, exclude: Path | None = None) -> tuple[list[Run], list[str]]:
    """Every run folder (``config.yaml`` + at least one ``results.json``) under ``root``."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"runs folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"{root} is a file; give the folder holding the run folders")
    notes: list[str] = []
    order: dict[str, int] = {}
    idx_path = root / INDEX
    if idx_path.exists():
        try:
            for i, e in enumerate(json.loads(idx_path.read_text()).get("runs", [])):
                order.setdefault(e["folder"], i)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            pass
    runs: list[Run] = []
    ex = exclude.resolve() if exclude else None
    for cfg_path in sorted(root.rglob("config.yaml")):
        folder = cfg_path.parent
        if ".bench" in folder.parts or (ex and (folder.resolve() == ex or ex in folder.resolve().parents)):
            continue
        if (folder / "results.json").exists():
            sdirs = [folder]
        else:
            sdirs = sorted((d for d in folder.glob("seed*") if (d / "results.json").exists()),
                           key=_seed_of)
        try:
            cfg = load_yaml(cfg_path.read_text()) or {}  # alias / size / depth budget
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            cfg = None
        if not isinstance(cfg, dict):
            notes.append(f"{folder}: unreadable config.yaml, skipped")
            continue
        if not sdirs:
            notes.append(f"{folder.relative_to(root)}: no finished seed yet, skipped")
            continue
        results = []
        for d in sdirs:
            try:
                res = json.loads((d / "results.json").read_text())
            except (ValueError, RecursionError, OSError):
                res = None
            if _valid_result(res):
                results.append(res)
            else:
                notes.append(f"{d}: unreadable results.json, skipped")
        if not results:
            continue
        r0 = results[0]
        bench = {}
        if (folder / "bench.json").exists():
            try:
                bench = json.loads((folder / "bench.json").read_text())
            except (ValueError, RecursionError, OSError):
                bench = {}
            bench = {k: v for k, v in bench.items() if isinstance(v, str)} \
                if isinstance(bench, dict) else {}
        protocol = r0.get("protocol") or cfg.get("protocol", "few-shot")
        if protocol not in PROTOCOL_TITLE:
            notes.append(f"{folder}: unknown protocol {short(protocol, 60)} in results.json, skipped")
            continue
        method = r0.get("method") or (cfg.get("method") if isinstance(cfg.get("method"), str) else
                                      (cfg.get("method") or {}).get("name", "?"))
        rel = str(folder.relative_to(root)) if folder != root else folder.name
        expected = list(cfg.get("seeds") or [r.get("seed") for r in results])
        if len(results) < len(expected):
            notes.append(f"{rel}: {len(results)} of {len(expected)} seeds finished; the table "
                         "uses the finished ones")
        runs.append(Run(
            folder=folder, rel=rel, cfg=cfg, label=bench.get("method") or method, method=method,
            backbone=bench.get("backbone") or backbone_label(str(r0.get("backbone") or cfg.get("backbone"))),
            dataset=bench.get("dataset") or dataset_label(str(r0.get("dataset") or cfg.get("dataset"))),
            protocol=protocol,
            shots=r0.get("shots"), fraction=r0.get("fraction"), results=results,
            seed_dirs=sdirs, expected_seeds=expected, labelled=bool(bench)))
    _disambiguate(runs, notes)
    runs.sort(key=lambda r: (order.get(r.rel.replace("\\", "/"), 10**9), r.rel))
    return runs, notes


def _disambiguate(runs: list[Run], notes: list[str]) -> None:
    """Runs without bench labels: the same method with different settings gets the differing
    method settings in its label (``zero-shot (mode=ensemble)``); exact duplicates get the
    folder name."""
    by_name: dict[str, list[Run]] = {}
    for r in runs:
        if not r.labelled:
            by_name.setdefault(r.method, []).append(r)
    for name, rs in by_name.items():
        cfgs = [r.cfg.get("method") or {} for r in rs]
        keys = sorted({k for c in cfgs for k in c if k != "name"})
        varying = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str)
                                           for c in cfgs}) > 1]
        if varying:
            for r, c in zip(rs, cfgs):
                r.label = f"{name} (" + ", ".join(f"{k}={c.get(k)}" for k in varying) + ")"
    seen: dict[tuple, Run] = {}
    for r in runs:
        key = (r.label, r.backbone, r.dataset, r.protocol, r.budget_kind, r.budget)
        if key in seen:
            notes.append(f"{r.rel} and {seen[key].rel} are the same condition; labelled apart by "
                         "folder")
            r.label = f"{r.label} [{r.folder.name}]"
        else:
            seen[key] = r
