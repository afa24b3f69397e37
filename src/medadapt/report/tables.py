"""The report's numbers: mean ± std over seeds per (method, data set, K), the main, base-to-novel,
cross-domain and cost tables, with the best and second best value of each column marked."""
from __future__ import annotations

import csv
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medadapt.engine.grid import slug
from medadapt.report.runs import METRIC_SHORT, PROTOCOL_TITLE, Run, budget_text


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
        from medadapt.safeio import replacing  # a link in the way is refused, never followed
        with replacing(path) as tmp, open(tmp, "w", newline="") as fh:
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
