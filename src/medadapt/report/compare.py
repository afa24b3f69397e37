"""``medadapt report RUNS --compare TABLE``: the published numbers of a paper's table next to ours.

A published table is data (``medadapt/report/published/<name>.yaml``, or any YAML of the same
shape)::

    name: biomedcoop-fewshot
    paper: BiomedCoOp (Koleilat et al., CVPR 2025)
    table: README "Few-shot Evaluation" (= paper Table 1, average row)
    citation: ...
    protocol: few-shot              # runs of this protocol only
    backbone: biomedclip            # backbone label of the runs (optional)
    metric: accuracy                # default metric of the columns (see COLUMN KEYS)
    shots: 16                       # budget of metric columns (base/novel/...; optional)
    datasets: [BTMRI, BUSI, ...]    # data set labels of the bench config; "mean" averages them
    columns: ["1", "2", "4", "8", "16"]
    rows:                           # paper row -> our method label, values per data set
      - {row: CoOp, method: coop, values: {mean: [50.16, 54.18, 59.75, 65.84, 69.62]}}

Column keys: a shot count (``"16"``: ``metric`` at that K), ``avg`` (``metric`` averaged over the
table's ``avg_shots``), or a result key at ``shots``: ``base``, ``novel``, ``hm``, ``accuracy``,
``macro_f1``, ``novel_macro_f1``, ``base_macro_f1``, ``mean_domain_accuracy``, ``domain:NAME``.
Values are percentages; ``null`` where the paper has none; a row may carry ``derived: "how"``
when a value is computed from the paper's text (e.g. 66.14 - 6.20) rather than printed.

Ours per cell: the mean over seeds of the runs matching (method label, data set label, protocol,
budget), in %, with the seed standard deviation; the ``mean`` data set averages the data sets of
the table that have runs, seed by seed, and says how many of them it covers. Data sets without
runs are listed with the reason (the bench's recorded error, e.g. the folder it expected), never
as zeros; a partial suite gives a partial table.

Recipes (:mod:`medadapt.recipes`): the comparison is held to the recipe the runs name
(``config.yaml`` ``recipe:``), else to a shipped recipe that reproduces the table. Every run is
recomputed through that recipe and diffed against its ``config.yaml``; a run that differs (or was
not made from the recipe) is marked † in the table and listed with the keys that differ, so an
off-recipe number is never put silently beside a published one. Where runs train every seed on one
seed's images (``data.sample_seed``) the report says that their ± measures augmentation and
initialisation only.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from medadapt.config import read_yaml_mapping
from medadapt.errors import UserError
from medadapt.safeio import check_name, make_dir, replacing, save_figure, short, write_text

PUBLISHED_DIR = "published"
TABLE_KEYS = {"name", "paper", "table", "citation", "source", "protocol", "backbone", "metric",
              "shots", "avg_shots", "datasets", "columns", "rows", "notes"}
ROW_KEYS = {"row", "method", "values", "derived"}
RESULT_KEYS = {"base", "novel", "hm"}


def published_dir() -> Path:
    return Path(str(resources.files("medadapt.report").joinpath(PUBLISHED_DIR)))


def available_tables() -> list[str]:
    return sorted(p.stem for p in published_dir().glob("*.yaml"))


def load_table(name_or_path: str | Path) -> dict:
    """A shipped table by name (``biomedcoop-fewshot``) or a YAML file of the same shape."""
    p = Path(name_or_path)
    if not p.suffix:
        p = published_dir() / f"{name_or_path}.yaml"
        if not p.exists():
            raise UserError(f"unknown published table {str(name_or_path)!r}; shipped: "
                            f"{', '.join(available_tables())} (or pass a YAML file)")
    if not p.exists():
        raise UserError(f"published table not found: {p}")
    t = read_yaml_mapping(p, "published table", allow_empty=False)  # alias / size / depth budget
    bad = set(t) - TABLE_KEYS
    if bad:
        raise UserError(f"{p}: unknown keys {sorted(bad)}; valid: {sorted(TABLE_KEYS)}")
    for k in ("name", "paper", "citation", "protocol", "columns", "rows"):
        if not t.get(k):
            raise UserError(f"{p}: needs '{k}'")
    check_name(t["name"], f"{p}: the table's name")  # it becomes compare_<name>.* under --out
    if not isinstance(t["columns"], list) or not isinstance(t["rows"], list):
        raise UserError(f"{p}: 'columns' and 'rows' must be lists")
    cols = [str(c) for c in t["columns"]]
    t["columns"] = cols
    for r in t["rows"]:
        if not isinstance(r, dict) or set(r) - ROW_KEYS or not {"row", "method", "values"} <= set(r):
            raise UserError(f"{p}: each row is {{row, method, values[, derived]}}, got {short(r)}")
        if not isinstance(r["values"], dict):
            raise UserError(f"{p}: row {short(r['row'])}: 'values' must map data sets to lists")
        for ds, vals in r["values"].items():
            if not isinstance(vals, list) or len(vals) != len(cols):
                raise UserError(f"{p}: row {short(r['row'])}, data set {short(ds)}: {len(cols)} "
                                f"values expected (columns {short(cols)}), got {short(vals)}")
    t["_path"] = str(p)
    return t


@dataclass
class Cell:
    paper: float | None
    ours: float | None  # mean over seeds, %
    std: float | None  # over seeds, %
    n_seeds: int = 0
    note: str = ""
    off: list = field(default_factory=list)  # why the runs behind this cell are off the recipe

    @property
    def diff(self) -> float | None:
        if self.paper is None or self.ours is None:
            return None
        return self.ours - self.paper


def _get(result: dict, key: str):
    m = result.get("metrics") or {}
    if key in RESULT_KEYS:
        v = result.get(key)
    elif key.startswith("domain:"):
        v = (result.get("domain_accuracy") or {}).get(key[7:])
    elif key.startswith("novel_") or key.startswith("base_"):
        part, _, metric = key.partition("_")
        v = (result.get(f"{part}_metrics") or {}).get(metric)
    else:
        v = m.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) * 100.0


def _budget_of(col: str, table: dict) -> tuple[str, list[int]]:
    """(result key, shot counts) of a column."""
    if col.isdigit():
        return table.get("metric", "accuracy"), [int(col)]
    if col == "avg":
        return table.get("metric", "accuracy"), [int(k) for k in table.get("avg_shots") or []]
    if table.get("shots") is None:
        raise UserError(f"{table['_path']}: column {col!r} needs the table's 'shots'")
    return col, [int(table["shots"])]


def _seed_map(run, key: str) -> dict[int, float]:
    out = {}
    for r in run.results:
        v = _get(r, key)
        if v is not None:
            out[int(r.get("seed") or 0)] = v
    return out


def _failures(root: Path) -> dict[tuple[str, str], str]:
    """(method label, data set label) -> error of the bench's failed runs."""
    p = root / "bench_index.json"
    out: dict[tuple[str, str], str] = {}
    if p.exists():
        try:
            for e in json.loads(p.read_text()).get("runs", []):
                if e.get("status") in ("failed", "changed") and e.get("error"):
                    out.setdefault((e.get("method"), e.get("dataset")), e["error"])
                    out.setdefault(("*", e.get("dataset")), e["error"])
        except (json.JSONDecodeError, AttributeError):
            pass
    return out


def compare(runs_dir: str | Path, table: dict | str | Path) -> dict:
    """Every (row, data set, column) cell of ``table`` with ours beside it."""
    from medadapt.report.runs import load_runs
    t = table if isinstance(table, dict) else load_table(table)
    root = Path(runs_dir)
    runs, notes = load_runs(root)
    runs = [r for r in runs if r.protocol == t["protocol"]]
    bb = t.get("backbone")
    if bb and any(r.backbone == bb for r in runs):
        runs = [r for r in runs if r.backbone == bb]
    elif bb and runs:
        notes.append(f"the paper used {bb}; these runs use "
                     f"{', '.join(sorted({r.backbone for r in runs}))}")
    fails = _failures(root)
    by = {}
    for r in runs:
        if r.fraction is None:
            by[(r.label, r.dataset, int(r.shots or 0))] = r
    rec = recipe_check(runs, t)
    table_ds = list(t.get("datasets") or [])
    present = sorted({r.dataset for r in runs})
    missing = {d: fails.get(("*", d), "no runs") for d in table_ds
               if d != "mean" and d not in present}
    cells: dict[tuple[str, str, str], Cell] = {}
    ds_rows: dict[str, list[str]] = {}
    for row in t["rows"]:
        label = row["method"]
        wanted = list(row["values"])
        extra = [d for d in table_ds if d not in wanted and d != "mean"]
        for ds in wanted + extra:
            paper_vals = row["values"].get(ds) or [None] * len(t["columns"])
            ds_rows.setdefault(row["row"], []).append(ds)
            for col, pv in zip(t["columns"], paper_vals):
                key, ks = _budget_of(col, t)
                cell = _ours(by, label, ds, key, ks, table_ds, fails,
                             None if pv is None else float(pv))
                if rec["recipe"] and cell.ours is not None:
                    members = [d for d in table_ds if d != "mean"] if ds == "mean" else [ds]
                    off = sorted({why for d in members for k in ks
                                  for why in rec["off"].get((label, d, k), [])})
                    cell.off = off
                cells[(row["row"], ds, col)] = cell
    return {"table": t, "cells": cells, "rows": ds_rows, "missing": missing, "notes": notes,
            "runs_dir": str(root), "n_runs": len(runs),
            "backbones": sorted({r.backbone for r in runs}), "recipe": rec}


def recipe_check(runs, table: dict) -> dict:
    """Which recipe the comparison is held to and, per run, where it is off that recipe.

    The recipe is the one the runs name (``config.yaml`` ``recipe:``), else a shipped recipe that
    reproduces the table. Every run is recomputed through the recipe and diffed against its
    ``config.yaml``; runs not made from the recipe are off it. Returns ``{"recipe": name | None,
    "title", "candidates", "off": {(label, data set, K): [reasons]}, "off_runs": {rel: reasons},
    "on": n, "sample_seed": {label: seed}, "notes": [...]}``."""
    from medadapt.errors import UserError
    from medadapt.recipes import for_table, load_recipe
    candidates = for_table(table["name"]) if table.get("name") else []
    named = sorted({r.cfg.get("recipe") for r in runs if r.cfg.get("recipe")})
    notes = []
    name = None
    if named:
        fit = [n for n in named if n in candidates]
        name = (fit or named)[0]
        if len(named) > 1:
            notes.append(f"runs of several recipes ({', '.join(named)}); held to {name}")
    elif candidates:
        name = candidates[0]
    out = {"recipe": name, "title": None, "candidates": candidates, "off": {}, "off_runs": {},
           "on": 0, "sample_seed": {}, "notes": notes}
    for r in runs:
        ss = (r.cfg.get("data") or {}).get("sample_seed")
        if ss is not None:
            out["sample_seed"][r.label] = ss
    if name is None:
        return out
    try:
        recipe = load_recipe(name)
    except UserError as e:
        notes.append(f"recipe {name} cannot be loaded ({e}); every run is marked off-recipe")
        recipe = None
    out["title"] = recipe.title if recipe else None
    if recipe is not None and name not in candidates and candidates:
        notes.append(f"the runs follow recipe {name}, which does not reproduce this table "
                     f"(its recipe: {', '.join(candidates)})")
    for r in runs:
        if r.fraction is not None:
            continue
        why = recipe.off_recipe(r.cfg, r.dataset, r.method) if recipe else ["recipe not loaded"]
        if why:
            out["off"][(r.label, r.dataset, int(r.shots or 0))] = why
            out["off_runs"][r.rel] = why
        else:
            out["on"] += 1
    return out


def _ours(by, label, ds, key, shots, table_ds, fails, paper) -> Cell:
    def seeds_for(d: str) -> dict[int, float] | None:
        per_k = []
        for k in shots:
            run = by.get((label, d, k))
            if run is None:
                return None
            per_k.append(_seed_map(run, key))
        common = set.intersection(*(set(m) for m in per_k)) if per_k else set()
        if not common:
            return None
        return {s: float(np.mean([m[s] for m in per_k])) for s in common}

    if ds == "mean":
        members = [d for d in table_ds if d != "mean"]
        got = {d: seeds_for(d) for d in members}
        have = {d: v for d, v in got.items() if v}
        if not have:
            return Cell(paper, None, None, 0, "no runs of the table's data sets")
        common = set.intersection(*(set(v) for v in have.values()))
        if not common:
            return Cell(paper, None, None, 0, "no seed shared by all data sets")
        per_seed = [float(np.mean([have[d][s] for d in have])) for s in sorted(common)]
        note = "" if len(have) == len(members) else f"mean over {len(have)} of {len(members)} data sets"
        return Cell(paper, float(np.mean(per_seed)), float(np.std(per_seed)), len(per_seed), note)
    vals = seeds_for(ds)
    if not vals:
        why = fails.get((label, ds)) or fails.get(("*", ds))
        return Cell(paper, None, None, 0, f"missing: {why}" if why else "no run")
    v = list(vals.values())
    return Cell(paper, float(np.mean(v)), float(np.std(v)), len(v))


def _fmt(x: float | None, d: int = 2, sign: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.{d}f}" if sign else f"{x:.{d}f}"


def to_markdown(res: dict) -> str:
    t = res["table"]
    head = [f"## {t['paper']}: {t.get('table', t['name'])}", "",
            f"Published: {t['citation']}" + (f" — {t['source']}" if t.get("source") else ""), "",
            f"Ours: `{res['runs_dir']}` ({res['n_runs']} run folders, protocol {t['protocol']}, "
            f"backbone {', '.join(res['backbones']) or '–'}"
            + (f"; the paper's: {t['backbone']}" if t.get("backbone") else "") + "). Cells: "
            "paper / ours ± std over seeds / difference (ours − paper), in %.", ""]
    head += _recipe_lines(res)
    cols = t["columns"]
    lines = ["| row | data set | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    notes = []
    for row in t["rows"]:
        derived = row.get("derived")
        for ds in res["rows"].get(row["row"], []):
            parts = []
            for col in cols:
                c = res["cells"][(row["row"], ds, col)]
                ours = "–" if c.ours is None else f"{c.ours:.2f} ± {c.std:.2f}" + (
                    " †" if c.off else "")
                parts.append(f"{_fmt(c.paper)} / {ours} / {_fmt(c.diff, sign=True)}")
                if c.note and c.note not in notes:
                    notes.append(c.note)
            name = row["row"] + (" (derived)" if derived else "")
            lines.append(f"| {name} | {ds} | " + " | ".join(parts) + " |")
    out = head + lines + [""]
    derived = [f"- {r['row']}: {r['derived']}" for r in t["rows"] if r.get("derived")]
    if derived:
        out += ["Derived values (computed from the paper's text, not printed in it):"] + derived + [""]
    if res["missing"]:
        out += ["Data sets without runs (not counted as zeros):"]
        out += [f"- {d}: {why}" for d, why in res["missing"].items()] + [""]
    notes = [n for n in res["notes"] if "the paper used" in n] + notes
    if notes:
        out += ["Notes: " + "; ".join(notes), ""]
    if t.get("notes"):
        out += [str(t["notes"]).strip(), ""]
    return "\n".join(out)


def _recipe_lines(res: dict) -> list[str]:
    """What the comparison is held to: the recipe, the runs off it (marked † in the table), and
    what a ± measures where all seeds train on one seed's images."""
    rec = res.get("recipe") or {}
    out = []
    if not rec.get("recipe"):
        out += ["Recipe: none ships for this table, so the runs' settings are not checked against "
                "the authors' (a difference may come from another experiment, not the method).", ""]
    else:
        n_off = len(rec["off_runs"])
        out += [f"Recipe: `{rec['recipe']}`" + (f" ({rec['title']})" if rec.get("title") else "")
                + f" — {rec['on']} run folder(s) follow it, {n_off} are off it"
                + (" (marked †: their number is not the published experiment)" if n_off else "")
                + f". `medadapt recipes {rec['recipe']}` shows what it runs.", ""]
        if n_off:
            out.append("Off the recipe (run folder: where its config.yaml differs from the recipe):")
            items = sorted(rec["off_runs"].items())
            for rel, why in items[:20]:
                out.append(f"- {rel}: {', '.join(why[:8])}{' ...' if len(why) > 8 else ''}")
            if len(items) > 20:
                out.append(f"- ... and {len(items) - 20} more (compare_{res['table']['name']}.csv)")
            out.append("")
        for n in rec.get("notes") or []:
            out += [f"Note: {n}", ""]
    if rec.get("sample_seed"):
        labels = ", ".join(sorted(rec["sample_seed"]))
        seeds = ", ".join(str(s) for s in sorted(set(rec["sample_seed"].values())))
        out += [f"± of {labels}: every seed trains on the same few-shot images (those of seed "
                f"{seeds}, data.sample_seed, as the authors ran them), so their ± measures "
                "augmentation and initialisation only, not the choice of images.", ""]
    return out


def write_csv(res: dict, path: Path) -> None:
    t = res["table"]
    with replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["paper", "table", "row", "method", "dataset", "column", "paper_value",
                    "ours_mean", "ours_std", "n_seeds", "difference", "note", "citation",
                    "recipe", "off_recipe"])
        for row in t["rows"]:
            for ds in res["rows"].get(row["row"], []):
                for col in t["columns"]:
                    c = res["cells"][(row["row"], ds, col)]
                    w.writerow([t["paper"], t.get("table", t["name"]), row["row"], row["method"],
                                ds, col, c.paper, c.ours, c.std, c.n_seeds, c.diff, c.note,
                                t["citation"], (res.get("recipe") or {}).get("recipe") or "",
                                "; ".join(c.off)])


def plot(res: dict, path: Path) -> Path | None:
    """Ours (y, ± seed std) against published (x), one point per filled cell; the diagonal is
    'as published'."""
    from matplotlib.figure import Figure
    pts = [(k, c) for k, c in res["cells"].items() if c.paper is not None and c.ours is not None]
    if not pts:
        return None
    fig = Figure(figsize=(5.2, 5.0))
    ax = fig.add_subplot(111)
    rows = list(dict.fromkeys(k[0] for k, _ in pts))
    from matplotlib import colormaps
    cmap = colormaps["tab10"]
    for i, r in enumerate(rows):
        xs = [c.paper for k, c in pts if k[0] == r]
        ys = [c.ours for k, c in pts if k[0] == r]
        es = [c.std or 0 for k, c in pts if k[0] == r]
        ax.errorbar(xs, ys, yerr=es, fmt="o", color=cmap(i % 10), label=r, capsize=2, ms=4)
    lo = min(min(c.paper, c.ours) for _, c in pts) - 5
    hi = max(max(c.paper, c.ours) for _, c in pts) + 5
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("published (%)")
    ax.set_ylabel("ours (%, mean ± std over seeds)")
    ax.set_title(res["table"]["name"], fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)  # names drawn literally, no write through a link


def write_comparison(runs_dir: str | Path, tables: list[str], out: str | Path | None = None) -> dict:
    """Write ``compare_<table>.{md,csv,json,png}`` (and ``compare.md`` with all tables)."""
    root = Path(runs_dir)
    if not root.exists():
        raise UserError(f"runs folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"{root} is a file; give the folder holding the run folders")
    planted = not out  # the default RUNS/report may come with a received runs folder
    out = Path(out) if out else root / "report"
    from medadapt.report.runs import check_report_out
    check_report_out(out)
    parts, written = [], []
    results = [compare(root, name) for name in tables]  # every table checked before writing
    make_dir(out) if planted else out.mkdir(parents=True, exist_ok=True)  # a planted link: refused
    for res in results:
        key = res["table"]["name"]
        md = to_markdown(res)
        parts.append(md)
        write_text(out / f"compare_{key}.md", md + "\n", encoding="utf-8")
        write_csv(res, out / f"compare_{key}.csv")
        js = [{"row": k[0], "dataset": k[1], "column": k[2], "paper": c.paper, "ours": c.ours,
               "std": c.std, "n_seeds": c.n_seeds, "difference": c.diff, "note": c.note,
               "off_recipe": c.off}
              for k, c in res["cells"].items()]
        rec = res.get("recipe") or {}
        write_text(out / f"compare_{key}.json", json.dumps(
            {"table": {k: v for k, v in res["table"].items() if not k.startswith("_")},
             "missing": res["missing"], "cells": js,
             "recipe": {"name": rec.get("recipe"), "runs_on": rec.get("on", 0),
                        "runs_off": rec.get("off_runs", {}),
                        "sample_seed": rec.get("sample_seed", {})}}, indent=1),
            encoding="utf-8")
        png = plot(res, out / f"compare_{key}.png")
        written.append({"table": key, "markdown": str(out / f"compare_{key}.md"),
                        "plot": str(png) if png else None, "result": res})
    write_text(out / "compare.md", "\n\n".join(parts) + "\n", encoding="utf-8")
    return {"out": str(out), "tables": written}
