"""``medadapt report RUNS_DIR``: every run folder under a directory -> tables, curves and plots.

What it writes (``RUNS_DIR/report`` unless told otherwise):

* Main tables, one per backbone x protocol x shot count (or data fraction): rows are methods,
  columns data set x metric, each cell ``mean ± std`` over seeds in %, computed from every seed's
  ``results.json`` (population std, as in ``summary.json``). Per column the best value is bold and
  the second best underlined (the papers' red / blue), comparing the values as printed (2
  decimals), so ties share a mark. An ``Average`` column group (mean over data sets) appears when
  there are several data sets.
* Base-to-novel tables (Base, Novel, HM per data set; the average's HM is the HM of the average
  base and novel accuracy, as in CoCoOp) and cross-domain tables (accuracy per domain, the
  training domain flagged, and the mean over unseen domains; PathoPrompt Table 2).
* A cost table (learned parameters, training seconds) per backbone.
* Curves: the protocol's headline metric (few-shot: accuracy; base-to-novel: HM; cross-domain:
  mean unseen-domain accuracy) against K per method, one panel per data set plus their average.
* Per data set and protocol, at the largest K (or ``--shots``): a per-class recall heat map
  (methods x classes; base-to-novel adds the novel classes), confusion matrices (summed over
  seeds, row-normalised) and a t-SNE figure (the papers' Fig. 4): the frozen image features of the
  test images coloured by true class ("before", what zero-shot sees), then per method either its
  adapted image features coloured by true class, when the method exposes them (see
  :func:`adapted_features_fn`), or the frozen features coloured by its predicted class with
  errors crossed. Silhouette scores (cosine, true classes) quantify the clusters.
* ``report.md`` (+ PNGs), ``report.html`` (one self-contained page, PNGs embedded as base64),
  ``report.json`` and one CSV per table with the aggregated numbers.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medadapt.errors import UserError
from medadapt.report.bench import INDEX, FAILURES, backbone_label, dataset_label, slug

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
        except (json.JSONDecodeError, KeyError, TypeError):
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
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError:
            notes.append(f"{folder}: unreadable config.yaml, skipped")
            continue
        if not sdirs:
            notes.append(f"{folder.relative_to(root)}: no finished seed yet, skipped")
            continue
        results = []
        for d in sdirs:
            try:
                results.append(json.loads((d / "results.json").read_text()))
            except json.JSONDecodeError:
                notes.append(f"{d}: unreadable results.json, skipped")
        if not results:
            continue
        r0 = results[0]
        bench = {}
        if (folder / "bench.json").exists():
            try:
                bench = json.loads((folder / "bench.json").read_text())
            except json.JSONDecodeError:
                bench = {}
        method = r0.get("method") or (cfg.get("method") or {}).get("name", "?")
        rel = str(folder.relative_to(root)) if folder != root else folder.name
        expected = list(cfg.get("seeds") or [r.get("seed") for r in results])
        if len(results) < len(expected):
            notes.append(f"{rel}: {len(results)} of {len(expected)} seeds finished; the table "
                         "uses the finished ones")
        runs.append(Run(
            folder=folder, rel=rel, cfg=cfg, label=bench.get("method") or method, method=method,
            backbone=bench.get("backbone") or backbone_label(str(r0.get("backbone") or cfg.get("backbone"))),
            dataset=bench.get("dataset") or dataset_label(str(r0.get("dataset") or cfg.get("dataset"))),
            protocol=r0.get("protocol") or cfg.get("protocol", "few-shot"),
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


# ------------------------------------------------------------------------------------------------
# numbers
Stat = tuple  # (mean, std, n)


def stat(values) -> Stat | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    return float(np.mean(vals)), float(np.std(vals)), len(vals)


def seed_values(run: Run, key: str) -> list:
    out = []
    for r in run.results:
        m = r.get("metrics") or {}
        if key in ("base", "novel", "hm", "train_seconds", "n_trainable_params"):
            out.append(r.get(key))
        elif key.startswith("domain:"):
            out.append((r.get("domain_accuracy") or {}).get(key[7:]))
        else:
            out.append(m.get(key))
    return out


@dataclass
class Table:
    key: str
    title: str
    columns: list[tuple[str, str]]  # (group, sub)
    rows: list[str]
    cells: dict = field(default_factory=dict)  # (row, col index) -> Stat
    scale: float = 100.0
    digits: int = 2
    mark: bool = True
    note: str = ""
    col_digits: list | None = None  # per-column decimals (default: ``digits``)

    def rounded(self, st: Stat, j: int = 0) -> float:
        return round(st[0] * self.scale, self._digits(j))

    def _digits(self, j: int) -> int:
        return self.col_digits[j] if self.col_digits else self.digits

    def text(self, st: Stat | None, j: int = 0) -> str:
        if st is None:
            return "–"
        d = self._digits(j)
        m = f"{st[0] * self.scale:.{d}f}"
        if st[2] > 1 and st[1] is not None:
            return f"{m} ± {st[1] * self.scale:.{d}f}"
        return m

    def marks(self) -> dict:
        """(row, col) -> 'best' | 'second' per column, comparing printed values."""
        out = {}
        if not self.mark:
            return out
        for j in range(len(self.columns)):
            vals = {r: self.rounded(self.cells[(r, j)], j) for r in self.rows
                    if self.cells.get((r, j)) is not None}
            if len(vals) < 2:
                continue
            uniq = sorted(set(vals.values()), reverse=True)
            for r, v in vals.items():
                if v == uniq[0]:
                    out[(r, j)] = "best"
                elif len(uniq) > 1 and v == uniq[1]:
                    out[(r, j)] = "second"
        return out

    def header_names(self) -> list[str]:
        return [f"{g} {s}".strip() for g, s in self.columns]

    def markdown(self) -> str:
        marks = self.marks()
        lines = ["| Method | " + " | ".join(self.header_names()) + " |",
                 "|---|" + "---:|" * len(self.columns)]
        for r in self.rows:
            cells = []
            for j in range(len(self.columns)):
                t = self.text(self.cells.get((r, j)), j)
                mk = marks.get((r, j))
                cells.append(f"**{t}**" if mk == "best" else f"<u>{t}</u>" if mk == "second" else t)
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def html(self) -> str:
        marks = self.marks()
        groups: list[tuple[str, int]] = []
        for g, _ in self.columns:
            if groups and groups[-1][0] == g:
                groups[-1] = (g, groups[-1][1] + 1)
            else:
                groups.append((g, 1))
        two = any(s for _, s in self.columns)
        h = ["<table>", "<thead><tr><th rowspan='2'>Method</th>" if two else
             "<thead><tr><th>Method</th>"]
        h += [f"<th colspan='{n}'>{html.escape(g)}</th>" for g, n in groups]
        h.append("</tr>")
        if two:
            h.append("<tr>" + "".join(f"<th>{html.escape(s)}</th>" for _, s in self.columns) + "</tr>")
        h.append("</thead><tbody>")
        for r in self.rows:
            tds = []
            for j in range(len(self.columns)):
                t = html.escape(self.text(self.cells.get((r, j)), j))
                mk = marks.get((r, j))
                tds.append(f"<td class='{mk}'>{t}</td>" if mk else f"<td>{t}</td>")
            h.append(f"<tr><th class='row'>{html.escape(r)}</th>{''.join(tds)}</tr>")
        h.append("</tbody></table>")
        return "".join(h)

    def to_json(self) -> dict:
        return {"key": self.key, "title": self.title, "columns": self.header_names(),
                "scale": self.scale, "note": self.note,
                "rows": {r: {self.header_names()[j]: (None if self.cells.get((r, j)) is None else
                                                      dict(zip(("mean", "std", "n"),
                                                               self.cells[(r, j)])))
                             for j in range(len(self.columns))} for r in self.rows},
                "marks": {f"{r} | {self.header_names()[j]}": m for (r, j), m in self.marks().items()}}

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["method"] + [f"{c} {k}" for c in self.header_names() for k in ("mean", "std", "n")])
            for r in self.rows:
                row = [r]
                for j in range(len(self.columns)):
                    st = self.cells.get((r, j))
                    row += ["", "", ""] if st is None else [
                        f"{st[0] * self.scale:.6g}",
                        "" if st[1] is None else f"{st[1] * self.scale:.6g}", st[2]]
                w.writerow(row)


def _ordered(values) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _avg(stats: list[Stat | None]) -> Stat | None:
    if not stats or any(s is None for s in stats):
        return None
    return float(np.mean([s[0] for s in stats])), None, 1


def build_tables(runs: list[Run], metrics: list[str]) -> list[Table]:
    tables: list[Table] = []
    for bb in _ordered(r.backbone for r in runs):
        rb = [r for r in runs if r.backbone == bb]
        for proto in _ordered(r.protocol for r in rb):
            rp = [r for r in rb if r.protocol == proto]
            for kind, b in sorted({(r.budget_kind, r.budget) for r in rp}):
                rk = [r for r in rp if (r.budget_kind, r.budget) == (kind, b)]
                key = f"{slug(bb)}_{proto}_{'f' if kind == 'fraction' else 'k'}{b:g}"
                sub = f"{PROTOCOL_TITLE[proto]} — {bb} — {budget_text(kind, b)}"
                if proto == "few-shot":
                    tables.append(_fewshot_table(rk, metrics, key, sub))
                elif proto == "base-to-novel":
                    tables.append(_b2n_table(rk, key, sub))
                else:
                    for ds in _ordered(r.dataset for r in rk):
                        tables.append(_cross_table([r for r in rk if r.dataset == ds],
                                                   f"{key}_{slug(ds)}", f"{sub} — {ds}"))
        tables.append(_cost_table(rb, bb))
    return tables


def _fewshot_table(rk: list[Run], metrics: list[str], key: str, sub: str) -> Table:
    datasets = _ordered(r.dataset for r in rk)
    rows = _ordered(r.label for r in rk)
    cols = [(ds, METRIC_SHORT[m]) for ds in datasets for m in metrics]
    if len(datasets) > 1:
        cols += [("Average", METRIC_SHORT[m]) for m in metrics]
    t = Table(key, f"{sub} (mean ± std over seeds, %)", cols, rows)
    for r in rk:
        for i, m in enumerate(metrics):
            t.cells[(r.label, datasets.index(r.dataset) * len(metrics) + i)] = stat(seed_values(r, m))
    if len(datasets) > 1:
        base = len(datasets) * len(metrics)
        for row in rows:
            for i in range(len(metrics)):
                t.cells[(row, base + i)] = _avg([t.cells.get((row, d * len(metrics) + i))
                                                 for d in range(len(datasets))])
    return t


def _b2n_table(rk: list[Run], key: str, sub: str) -> Table:
    datasets = _ordered(r.dataset for r in rk)
    rows = _ordered(r.label for r in rk)
    parts = ("base", "novel", "hm")
    cols = [(ds, p.capitalize() if p != "hm" else "HM") for ds in datasets for p in parts]
    if len(datasets) > 1:
        cols += [("Average", "Base"), ("Average", "Novel"), ("Average", "HM")]
    t = Table(key, f"{sub}: accuracy on base and novel classes and their harmonic mean "
                   "(mean ± std over seeds, %)", cols, rows)
    for r in rk:
        for i, p in enumerate(parts):
            t.cells[(r.label, datasets.index(r.dataset) * 3 + i)] = stat(seed_values(r, p))
    if len(datasets) > 1:
        base = len(datasets) * 3
        for row in rows:
            b = _avg([t.cells.get((row, d * 3)) for d in range(len(datasets))])
            n = _avg([t.cells.get((row, d * 3 + 1)) for d in range(len(datasets))])
            t.cells[(row, base)], t.cells[(row, base + 1)] = b, n
            if b is not None and n is not None:
                hm = 0.0 if b[0] + n[0] == 0 else 2 * b[0] * n[0] / (b[0] + n[0])
                t.cells[(row, base + 2)] = (hm, None, 1)
    t.note = ("methods with class-specific parameters (e.g. linear probe) have no novel accuracy")
    return t


def _cross_table(rk: list[Run], key: str, sub: str) -> Table:
    rows = _ordered(r.label for r in rk)
    domains: list[str] = []
    train_domains = set()
    for r in rk:
        for res in r.results:
            domains += [d for d in (res.get("domain_accuracy") or {}) if d not in domains]
            if res.get("train_domain"):
                train_domains.add(res["train_domain"])
    domains = sorted(domains)
    cols = [(f"{d} (train)" if d in train_domains else d, "") for d in domains]
    cols += [("AVG unseen", ""), ("Pooled unseen", "F1")]
    t = Table(key, f"{sub}: accuracy per domain after training on "
                   f"{', '.join(sorted(train_domains)) or '?'} (mean ± std over seeds, %)", cols, rows)
    for r in rk:
        for j, d in enumerate(domains):
            t.cells[(r.label, j)] = stat(seed_values(r, f"domain:{d}"))
        t.cells[(r.label, len(domains))] = stat(seed_values(r, "mean_domain_accuracy"))
        t.cells[(r.label, len(domains) + 1)] = stat(seed_values(r, "macro_f1"))
    return t


def _cost_table(rb: list[Run], bb: str) -> Table:
    rows = _ordered(r.label for r in rb)
    t = Table(f"{slug(bb)}_cost", f"Cost — {bb}: learned parameters and training time per seed "
                                  "(mean over every run of the method)",
              [("learned parameters", ""), ("train seconds", "")], rows, scale=1.0, digits=1,
              mark=False, col_digits=[0, 1])
    for row in rows:
        rr = [r for r in rb if r.label == row]
        t.cells[(row, 0)] = stat([v for r in rr for v in seed_values(r, "n_trainable_params")])
        t.cells[(row, 1)] = stat([v for r in rr for v in seed_values(r, "train_seconds")])
        if t.cells[(row, 0)] is not None:
            t.cells[(row, 0)] = (t.cells[(row, 0)][0], None, 1)
    return t


# ------------------------------------------------------------------------------------------------
# figures
def _figure(w: float, h: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def curves(runs: list[Run], out: Path) -> tuple[list[dict], list[dict]]:
    """Headline metric vs K per method; one figure per backbone x protocol with several K."""
    figs, data = [], []
    for bb in _ordered(r.backbone for r in runs):
        for proto in _ordered(r.protocol for r in runs if r.backbone == bb):
            rp = [r for r in runs if r.backbone == bb and r.protocol == proto]
            kinds = _ordered(r.budget_kind for r in rp)
            for kind in kinds:
                rk = [r for r in rp if r.budget_kind == kind]
                if len({r.budget for r in rk}) < 2:
                    continue
                metric, ylabel = HEADLINE[proto]
                datasets = _ordered(r.dataset for r in rk)
                methods = _ordered(r.label for r in rk)
                panels = datasets + (["Average over data sets"] if len(datasets) > 1 else [])
                ncol = min(3, len(panels))
                nrow = math.ceil(len(panels) / ncol)
                fig = _figure(4.2 * ncol + 1.6, 3.3 * nrow)
                axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
                per: dict[tuple[str, str], dict[float, Stat]] = {}
                for r in rk:
                    s = stat(seed_values(r, metric))
                    if s is not None:
                        per.setdefault((r.dataset, r.label), {})[r.budget] = s
                colors = _method_colors(methods)
                for ax, panel in zip(axes, panels):
                    for m in methods:
                        if panel in datasets:
                            pts = per.get((panel, m), {})
                            xs = sorted(pts)
                            ys = [pts[x][0] * 100 for x in xs]
                            es = [pts[x][1] * 100 for x in xs]
                        else:
                            common = sorted(set.intersection(*[set(per.get((d, m), {}))
                                                               for d in datasets]))
                            xs = common
                            ys = [float(np.mean([per[(d, m)][x][0] for d in datasets])) * 100
                                  for x in xs]
                            es = [0.0] * len(xs)
                        if not xs:
                            continue
                        ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=3, lw=1.6,
                                    color=colors[m], label=m)
                        data.append({"backbone": bb, "protocol": proto, "metric": metric,
                                     "budget": kind, "dataset": panel, "method": m, "x": xs,
                                     "mean": ys, "std": es})
                    ax.set_title(panel, fontsize=10)
                    if kind == "shots":
                        ax.set_xscale("log", base=2)
                        ticks = sorted({r.budget for r in rk if r.budget > 0})
                        ax.set_xticks(ticks, [f"{int(x)}" for x in ticks])
                        ax.set_xlabel("shots per class (K)")
                    else:
                        ax.set_xscale("log")
                        ax.set_xlabel("fraction of training data")
                    ax.set_ylabel(ylabel)
                    ax.grid(alpha=0.3)
                for ax in axes[len(panels):]:
                    ax.set_visible(False)
                handles, labels = axes[0].get_legend_handles_labels()
                fig.legend(handles, labels, loc="outside lower center", fontsize=8,
                           ncol=min(len(labels), 5) or 1)
                fig.suptitle(f"{PROTOCOL_TITLE[proto]} curves — {bb} (mean ± std over seeds)",
                             fontsize=11)
                name = f"curves_{slug(bb)}_{proto}_{kind}.png"
                figs.append({"path": _save(fig, out / name), "title":
                             f"{PROTOCOL_TITLE[proto]}: {ylabel} vs "
                             f"{'K' if kind == 'shots' else 'data fraction'} — {bb}",
                             "kind": "curves"})
    return figs, data


def _method_colors(methods: list[str]) -> dict:
    from matplotlib import colormaps
    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _class_names(res: dict, key: str = "metrics") -> list[str]:
    m = res.get(key) or {}
    cm = m.get("confusion_matrix") or []
    names = list((m.get("per_class_recall") or {}).keys())
    return names if len(names) == len(cm) else [str(i) for i in range(len(cm))]


def _choose(rk: list[Run], shots: float | None) -> list[Run]:
    if shots is not None:
        sel = [r for r in rk if abs(r.budget - shots) < 1e-9]
        if sel:
            return sel
    top = max(r.budget for r in rk)
    return [r for r in rk if r.budget == top]


def per_class_figures(runs: list[Run], out: Path, shots: float | None) -> list[dict]:
    figs = []
    for (bb, ds, proto) in _ordered((r.backbone, r.dataset, r.protocol) for r in runs):
        rk = _choose([r for r in runs if (r.backbone, r.dataset, r.protocol) == (bb, ds, proto)],
                     shots)
        bt = budget_text(rk[0].budget_kind, rk[0].budget)
        tag = f"{slug(bb)}_{slug(ds)}_{proto}"
        # recall heat map
        classes: list[str] = []
        rows = _ordered(r.label for r in rk)
        vals: dict[tuple[str, str], list[float]] = {}
        for r in rk:
            for res in r.results:
                for key, suffix in (("metrics", ""), ("novel_metrics", " (novel)")):
                    for c, v in ((res.get(key) or {}).get("per_class_recall") or {}).items():
                        name = c + suffix
                        if name not in classes:
                            classes.append(name)
                        vals.setdefault((r.label, name), []).append(v)
        if classes:
            mat = np.full((len(rows), len(classes)), np.nan)
            for i, m in enumerate(rows):
                for j, c in enumerate(classes):
                    if (m, c) in vals:
                        mat[i, j] = 100 * float(np.mean(vals[(m, c)]))
            fig = _figure(min(2.0 + 0.7 * len(classes), 22), 1.4 + 0.45 * len(rows))
            ax = fig.subplots()
            im = ax.imshow(mat, cmap="viridis", vmin=0, vmax=100, aspect="auto")
            ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(rows)), rows, fontsize=8)
            if mat.size <= 400:
                for i in range(len(rows)):
                    for j in range(len(classes)):
                        if not np.isnan(mat[i, j]):
                            ax.text(j, i, f"{mat[i, j]:.0f}", ha="center", va="center", fontsize=7,
                                    color="white" if mat[i, j] < 60 else "black")
            fig.colorbar(im, ax=ax, label="recall (%)")
            ax.set_title(f"Per-class recall — {ds} — {PROTOCOL_TITLE[proto]} — {bb} — {bt} "
                         "(mean over seeds)", fontsize=10)
            figs.append({"path": _save(fig, out / f"recall_{tag}.png"), "kind": "recall",
                         "title": f"Per-class recall — {ds}, {PROTOCOL_TITLE[proto]}, {bb}, {bt}",
                         "data": {"methods": rows, "classes": classes,
                                  "recall": [[None if np.isnan(v) else round(float(v), 4)
                                              for v in row] for row in mat]}})
        # confusion matrices (summed over seeds, row-normalised)
        mats = []
        for r in rk:
            cms = [np.array(res["metrics"]["confusion_matrix"]) for res in r.results
                   if (res.get("metrics") or {}).get("confusion_matrix")]
            if cms and all(c.shape == cms[0].shape for c in cms):
                mats.append((r.label, sum(cms), _class_names(r.results[0])))
        if mats:
            n = len(mats)
            ncol = min(3, n)
            nrow = math.ceil(n / ncol)
            k = max(m[1].shape[0] for m in mats)
            side = min(2.2 + 0.42 * k, 7.5)
            fig = _figure(side * ncol, side * nrow + 0.4)
            axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
            for ax, (label, cm, names) in zip(axes, mats):
                norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
                ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
                ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
                ax.set_yticks(range(len(names)), names, fontsize=7)
                ax.set_xlabel("predicted", fontsize=8)
                ax.set_ylabel("true", fontsize=8)
                acc = np.trace(cm) / max(cm.sum(), 1) * 100
                ax.set_title(f"{label} (acc {acc:.1f}%)", fontsize=9)
                if len(names) <= 12:
                    for i in range(len(names)):
                        for j in range(len(names)):
                            if cm[i, j]:
                                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                                        fontsize=6, color="white" if norm[i, j] > 0.5 else "black")
            for ax in axes[n:]:
                ax.set_visible(False)
            fig.suptitle(f"Confusion matrices (counts summed over seeds, colour = row-normalised)"
                         f" — {ds} — {PROTOCOL_TITLE[proto]} — {bb} — {bt}", fontsize=10)
            figs.append({"path": _save(fig, out / f"confusion_{tag}.png"), "kind": "confusion",
                         "title": f"Confusion matrices — {ds}, {PROTOCOL_TITLE[proto]}, {bb}, {bt}"})
    return figs


# ------------------------------------------------------------------------------------------------
# t-SNE (the papers' Fig. 4)
def _stratified(labels: np.ndarray, n_max: int, seed: int = 0) -> np.ndarray:
    if len(labels) <= n_max:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = max(1, n_max // len(classes))
    keep = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        keep += list(rng.permutation(idx)[:per])
    return np.sort(np.array(keep))


def _tsne(x: np.ndarray) -> np.ndarray:
    from sklearn.manifold import TSNE
    n = len(x)
    perp = float(min(30.0, max(2.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=0,
                metric="cosine").fit_transform(x)


def _silhouette(x: np.ndarray, y: np.ndarray) -> float | None:
    from sklearn.metrics import silhouette_score
    if len(np.unique(y)) < 2 or len(np.unique(y)) >= len(y):
        return None
    return float(silhouette_score(x, y, metric="cosine"))


def adapted_features_fn(method):
    """``batch -> [B, D]`` adapted image features, if the method exposes them:
    ``adapted_image_features(batch)`` (the convention), ``adapted_image(batch)`` (CLIP-Adapter,
    SCALE) or ``prompted_image_features(images)`` for pixel methods (PromptSRC, Biomed-DPT)."""
    for name in ("adapted_image_features", "adapted_image"):
        fn = getattr(method, name, None)
        if callable(fn):
            return fn
    fn = getattr(method, "prompted_image_features", None)
    if callable(fn) and method.needs_images:
        return lambda batch: fn(batch.images)
    return None


def tsne_figures(runs: list[Run], out: Path, shots: float | None, n_max: int,
                 notes: list[str], progress: bool = False) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from medadapt.data.sources import load_dataset
    from medadapt.engine.features import FeatureCache
    from medadapt.engine.runner import load_run
    from medadapt.engine.train import Engine, Split
    from medadapt.report.bench import shared_backbones

    figs = []
    with shared_backbones():
        for (bb, ds_label, proto) in _ordered((r.backbone, r.dataset, r.protocol) for r in runs):
            rk = _choose([r for r in runs if (r.backbone, r.dataset, r.protocol)
                          == (bb, ds_label, proto)], shots)
            bt = budget_text(rk[0].budget_kind, rk[0].budget)
            try:
                ds = load_dataset(rk[0].cfg["dataset"])
            except UserError as e:
                notes.append(f"t-SNE for {ds_label} skipped: {e}")
                continue
            lower = {c.lower(): i for i, c in enumerate(ds.classnames)}
            base = None  # (idx, labels, frozen features, class names) shared by the methods
            panels = []
            for r in rk:
                if progress:
                    print(f"report: t-SNE {r.rel}", flush=True)
                try:
                    cfg, texts, backbone, method, sdir = load_run(r.folder, r.seed_dirs[0])
                except Exception as e:  # a run that cannot be reloaded does not stop the report
                    notes.append(f"t-SNE: cannot reload {r.rel} ({type(e).__name__}: {e})")
                    continue
                names = list(method.texts.classnames)
                trained = _class_names(r.results[0])
                if len(trained) != len(names):  # the run cannot be rebuilt as it was trained
                    notes.append(f"t-SNE: {r.rel} reloads with {len(names)} classes but was "
                                 f"evaluated on {len(trained)}, skipped")
                    continue
                if not all(n.lower() in lower for n in names):
                    notes.append(f"t-SNE: {r.rel} classes do not match {ds_label}, skipped")
                    continue
                classes = [lower[n.lower()] for n in names]
                if base is None or base[3] != names:
                    idx = ds.indices("test", classes)
                    if not idx:
                        notes.append(f"t-SNE: {ds_label} has no test images, skipped")
                        break
                    cmap = {c: j for j, c in enumerate(classes)}
                    lab = np.array([cmap[ds.records[i].label] for i in idx])
                    keep = _stratified(lab, n_max)
                    idx = [idx[i] for i in keep]
                    cache = FeatureCache(enabled=cfg["data"].get("cache", True),
                                         precision=cfg["data"].get("precision", "auto"))
                    feats, bad = cache.encode(backbone, ds, idx, progress=False,
                                              skip_bad=cfg["data"].get("skip_bad", False),
                                              batch_size=cfg["data"].get("batch_size"))
                    idx = [i for i in idx if i not in set(bad)]
                    lab = np.array([cmap[ds.records[i].label] for i in idx])
                    frozen = F.normalize(feats.float(), dim=-1).numpy()
                    if len(idx) < 5:
                        notes.append(f"t-SNE: {ds_label} has only {len(idx)} test images, skipped")
                        break
                    base = (idx, lab, frozen, names, feats)
                    coords0 = _tsne(frozen)
                    panels = [{"title": "before: frozen image features (zero-shot), true class",
                               "xy": coords0, "color": lab, "wrong": None,
                               "sil": _silhouette(frozen, lab)}]
                idx, lab, frozen, names, feats = base
                split = Split(ds, idx, torch.as_tensor(lab, dtype=torch.long),
                              None if method.needs_images else feats)
                eng = Engine(cfg["train"], device=str(backbone.device), progress=False)
                with torch.no_grad():
                    pred = eng.logits(method, split).argmax(1).numpy()
                    fn = adapted_features_fn(method)
                    adapted = None
                    if fn is not None:
                        method.eval()
                        adapted = torch.cat([fn(b).float().cpu() for b in
                                             eng.batches(method, split, shuffle=False, train=False)])
                        adapted = F.normalize(adapted, dim=-1).numpy()
                acc = float((pred == lab).mean() * 100)
                if adapted is not None:
                    panels.append({"title": f"after: {r.label} adapted features, true class "
                                            f"(acc {acc:.1f}%)", "xy": _tsne(adapted),
                                   "color": lab, "wrong": None, "sil": _silhouette(adapted, lab)})
                else:
                    panels.append({"title": f"{r.label}: frozen features, predicted class, "
                                            f"X = error (acc {acc:.1f}%)", "xy": panels[0]["xy"],
                                   "color": pred, "wrong": pred != lab, "sil": None})
            if len(panels) < 2:
                continue
            names = base[3]
            n = len(panels)
            ncol = min(3, n)
            nrow = math.ceil(n / ncol)
            fig = _figure(4.3 * ncol + 1.8, 4.0 * nrow)
            axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
            from matplotlib import colormaps
            cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
            for ax, p in zip(axes, panels):
                xy = p["xy"]
                cols = np.array([cmap(int(c) % cmap.N) for c in p["color"]])
                ok = np.ones(len(xy), bool) if p["wrong"] is None else ~p["wrong"]
                ax.scatter(xy[ok, 0], xy[ok, 1], c=cols[ok], s=10, alpha=0.85, linewidths=0)
                if (~ok).any():  # errors: an X in the predicted class's colour, black rim
                    ax.scatter(xy[~ok, 0], xy[~ok, 1], c=cols[~ok], marker="X", s=30,
                               edgecolors="black", linewidths=0.5)
                t = p["title"] + (f"\nsilhouette {p['sil']:.3f}" if p["sil"] is not None else "")
                ax.set_title(t, fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
            for ax in axes[n:]:
                ax.set_visible(False)
            from matplotlib.lines import Line2D
            handles = [Line2D([], [], marker="o", ls="", color=cmap(i % cmap.N), label=c)
                       for i, c in enumerate(names)]
            fig.legend(handles=handles, loc="outside right upper", fontsize=7)
            fig.suptitle(f"t-SNE of test image embeddings — {ds_label} — {PROTOCOL_TITLE[proto]} — "
                         f"{bb} — {bt} (seed {rk[0].results[0].get('seed')}, "
                         f"{len(base[0])} images)", fontsize=10)
            tag = f"{slug(bb)}_{slug(ds_label)}_{proto}"
            figs.append({"path": _save(fig, out / f"tsne_{tag}.png"), "kind": "tsne",
                         "title": f"t-SNE of image embeddings — {ds_label}, {PROTOCOL_TITLE[proto]}, "
                                  f"{bb}, {bt}",
                         "data": {"panels": [p["title"] for p in panels],
                                  "silhouette": [p["sil"] for p in panels]}})
    return figs


# ------------------------------------------------------------------------------------------------
# page
CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1400px;padding:0 1em;color:#222}table{border-collapse:collapse;margin:.6em 0 1.6em;
font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3;
text-align:center}th.row{text-align:left;background:#fafafa}td.best{color:#c00;font-weight:bold}
td.second{color:#0645ad;text-decoration:underline}img{max-width:100%;border:1px solid #eee;
margin:.4em 0 1.4em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.note{color:#666;font-size:12px}code{background:#f5f5f5;padding:0 3px}"""


def _img_b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def build_report(runs_dir: str | Path, out: str | Path | None = None,
                 metrics: list[str] | None = None, shots: float | None = None, tsne: bool = True,
                 tsne_max: int = 600, title: str | None = None, progress: bool = False) -> dict:
    """Write the report; returns paths and counts."""
    root = Path(runs_dir)
    out = Path(out) if out else root / "report"
    metrics = list(metrics or ["accuracy", "macro_f1"])
    bad = [m for m in metrics if m not in METRIC_SHORT]
    if bad:
        raise UserError(f"unknown metric(s) {bad}; valid: {', '.join(METRIC_SHORT)}")
    runs, notes = load_runs(root, exclude=out)
    if not runs:
        raise UserError(f"no finished run folders (config.yaml + results.json) under {root}")
    check_report_out(out)
    out.mkdir(parents=True, exist_ok=True)
    try:  # a fresh report: no figures left over from the earlier one (only the ones it listed)
        earlier = json.loads((out / "report.json").read_text()).get("figures") or []
    except (OSError, ValueError, AttributeError):
        earlier = []
    for f in earlier:
        name = f.get("path") if isinstance(f, dict) else None
        if isinstance(name, str) and name.endswith(".png") and "/" not in name and "\\" not in name:
            (out / name).unlink(missing_ok=True)
    info = {}
    if (root / INDEX).exists():
        try:
            info = json.loads((root / INDEX).read_text())
        except json.JSONDecodeError:
            info = {}
    title = title or info.get("title") or info.get("name") or root.resolve().name
    failures = []
    if (root / FAILURES).exists():
        try:
            failures = json.loads((root / FAILURES).read_text())
        except json.JSONDecodeError:
            pass

    tables = build_tables(runs, metrics)
    figs, curve_data = curves(runs, out)
    figs += per_class_figures(runs, out, shots)
    if tsne:
        try:
            figs += tsne_figures(runs, out, shots, tsne_max, notes, progress)
        except ImportError as e:
            notes.append(f"t-SNE skipped ({e})")
    for t in tables:
        t.write_csv(out / f"table_{t.key}.csv")

    # ---- Markdown
    n_seeds = sum(len(r.results) for r in runs)
    head = (f"{len(runs)} run folders, {n_seeds} finished seeds, backbones: "
            f"{', '.join(_ordered(r.backbone for r in runs))}; data sets: "
            f"{', '.join(_ordered(r.dataset for r in runs))}; generated "
            f"{time.strftime('%Y-%m-%d %H:%M')} from `{root}`.")
    legend = ("Cells: mean ± std over seeds (%). Per column, **bold** = best and <u>underlined</u>"
              " = second best (red / blue in report.html).")
    md = [f"# {title}", "", head, "", legend, ""]
    sections: list[tuple[str, list[tuple[str, Any]]]] = []  # (heading, [(kind, obj)])
    order = [("Few-shot", "few-shot"), ("Base-to-novel generalisation", "base-to-novel"),
             ("Cross-domain generalisation", "cross-domain")]
    for heading, proto in order:
        items: list[tuple[str, Any]] = [("table", t) for t in tables if f"_{proto}_" in t.key]
        items += [("figure", f) for f in figs if f["kind"] == "curves"
                  and f["path"].name.startswith("curves_") and f"_{proto}_" in f["path"].name]
        if items:
            sections.append((heading, items))
    costs = [("table", t) for t in tables if t.key.endswith("_cost")]
    if costs:
        sections.append(("Cost", costs))
    for heading, kind in (("Per-class recall", "recall"), ("Confusion matrices", "confusion"),
                          ("t-SNE of image embeddings", "tsne")):
        items = [("figure", f) for f in figs if f["kind"] == kind]
        if items:
            sections.append((heading, items))
    for heading, items in sections:
        md += [f"## {heading}", ""]
        for kind, obj in items:
            if kind == "table":
                md += [f"### {obj.title}", "", obj.markdown(), ""]
                if obj.note:
                    md += [f"_{obj.note}_", ""]
            else:
                md += [f"### {obj['title']}", "", f"![{obj['title']}]({obj['path'].name})", ""]
    md += ["## Runs", "", "| run folder | method | seeds | accuracy |", "|---|---|---:|---:|"]
    for r in runs:
        s = stat(seed_values(r, "accuracy"))
        md.append(f"| {r.rel} | {r.label} | {len(r.results)}/{len(r.expected_seeds)} | "
                  f"{'–' if s is None else f'{s[0] * 100:.2f} ± {s[1] * 100:.2f}'} |")
    if failures:
        md += ["", "## Failed runs", ""] + [f"- `{f['id']}` ({f.get('status')}): "
                                            f"{f.get('error_type') or ''} {f.get('error')}"
                                            for f in failures]
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n")

    # ---- HTML (self-contained)
    h = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
         f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
         f"<h1>{html.escape(title)}</h1><p>{html.escape(head)}</p>",
         "<p class='note'>Cells: mean ± std over seeds (%). Per column, "
         "<span style='color:#c00;font-weight:bold'>red bold</span> = best, "
         "<span style='color:#0645ad;text-decoration:underline'>blue underlined</span> = second "
         "best.</p>"]
    if sections:
        h.append("<ul>" + "".join(f"<li><a href='#s{i}'>{html.escape(s)}</a></li>"
                                  for i, (s, _) in enumerate(sections)) + "</ul>")
    for i, (heading, items) in enumerate(sections):
        h.append(f"<h2 id='s{i}'>{html.escape(heading)}</h2>")
        for kind, obj in items:
            if kind == "table":
                h.append(f"<h3>{html.escape(obj.title)}</h3>{obj.html()}")
                if obj.note:
                    h.append(f"<p class='note'>{html.escape(obj.note)}</p>")
            else:
                h.append(f"<h3>{html.escape(obj['title'])}</h3><img alt='{html.escape(obj['title'])}' "
                         f"src='data:image/png;base64,{_img_b64(obj['path'])}'>")
    h.append("<h2>Runs</h2><table><thead><tr><th>run folder</th><th>method</th><th>seeds</th>"
             "<th>accuracy (%)</th></tr></thead><tbody>")
    for r in runs:
        s = stat(seed_values(r, "accuracy"))
        h.append(f"<tr><th class='row'>{html.escape(r.rel)}</th><td>{html.escape(r.label)}</td>"
                 f"<td>{len(r.results)}/{len(r.expected_seeds)}</td><td>"
                 f"{'–' if s is None else f'{s[0] * 100:.2f} ± {s[1] * 100:.2f}'}</td></tr>")
    h.append("</tbody></table>")
    if failures:
        h.append("<h2>Failed runs</h2><ul>" + "".join(
            f"<li><code>{html.escape(f['id'])}</code> ({html.escape(str(f.get('status')))}): "
            f"{html.escape(str(f.get('error_type') or ''))} {html.escape(str(f.get('error')))}</li>"
            for f in failures) + "</ul>")
    if notes:
        h.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
                 + "</ul>")
    h.append("</body></html>")
    html_path = out / "report.html"
    html_path.write_text("".join(h))

    summary = {"title": title, "runs_dir": str(root), "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
               "metrics": metrics, "tables": [t.to_json() for t in tables], "curves": curve_data,
               "figures": [{"path": f["path"].name, "kind": f["kind"], "title": f["title"],
                            **({"data": f["data"]} if "data" in f else {})} for f in figs],
               "runs": [{"folder": r.rel, "label": r.label, "method": r.method,
                         "backbone": r.backbone, "dataset": r.dataset, "protocol": r.protocol,
                         "shots": r.shots, "fraction": r.fraction,
                         "seeds": [x.get("seed") for x in r.results]} for r in runs],
               "failures": failures, "notes": notes}
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=str))
    return {"out": str(out), "html": str(html_path), "markdown": str(md_path),
            "json": str(out / "report.json"), "n_runs": len(runs), "n_tables": len(tables),
            "n_figures": len(figs), "notes": notes}
