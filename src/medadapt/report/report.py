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
import html
import json
import time
from pathlib import Path
from typing import Any

from medadapt.errors import UserError
from medadapt.report.bench import INDEX, FAILURES
from medadapt.report.figures import curves, per_class_figures
from medadapt.report.runs import METRIC_SHORT, check_report_out, load_runs
from medadapt.report.tables import _ordered, build_tables, seed_values, stat
from medadapt.report.tsne import tsne_figures
from medadapt.safeio import make_dir, write_text


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
    planted = not out  # the default RUNS/report may come with a received runs folder
    out = Path(out) if out else root / "report"
    metrics = list(metrics or ["accuracy", "macro_f1"])
    bad = [m for m in metrics if m not in METRIC_SHORT]
    if bad:
        raise UserError(f"unknown metric(s) {bad}; valid: {', '.join(METRIC_SHORT)}")
    runs, notes = load_runs(root, exclude=out)
    if not runs:
        raise UserError(f"no finished run folders (config.yaml + results.json) under {root}")
    check_report_out(out)
    make_dir(out) if planted else out.mkdir(parents=True, exist_ok=True)  # a planted link: refused
    try:  # a fresh report: no figures left over from the earlier one (only the ones it listed)
        earlier = json.loads((out / "report.json").read_text()).get("figures") or []
    except (OSError, ValueError, AttributeError, RecursionError):
        earlier = []
    earlier = earlier if isinstance(earlier, list) else []
    for f in earlier:
        name = f.get("path") if isinstance(f, dict) else None
        if isinstance(name, str) and name.endswith(".png") and "/" not in name and "\\" not in name:
            (out / name).unlink(missing_ok=True)
    info = {}
    if (root / INDEX).exists():
        try:
            info = json.loads((root / INDEX).read_text())
        except (ValueError, RecursionError, OSError):
            info = {}
        info = info if isinstance(info, dict) else {}
    title = str(title or info.get("title") or info.get("name") or root.resolve().name)[:200]
    failures = []
    if (root / FAILURES).exists():
        try:
            failures = json.loads((root / FAILURES).read_text())
        except (ValueError, RecursionError, OSError):
            pass
        failures = [f for f in failures if isinstance(f, dict) and "id" in f] \
            if isinstance(failures, list) else []

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
    write_text(md_path, "\n".join(md) + "\n")

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
            f"<li><code>{html.escape(str(f['id']))}</code> ({html.escape(str(f.get('status')))}): "
            f"{html.escape(str(f.get('error_type') or ''))} {html.escape(str(f.get('error')))}</li>"
            for f in failures) + "</ul>")
    if notes:
        h.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
                 + "</ul>")
    h.append("</body></html>")
    html_path = out / "report.html"
    write_text(html_path, "".join(h))

    summary = {"title": title, "runs_dir": str(root), "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
               "metrics": metrics, "tables": [t.to_json() for t in tables], "curves": curve_data,
               "figures": [{"path": f["path"].name, "kind": f["kind"], "title": f["title"],
                            **({"data": f["data"]} if "data" in f else {})} for f in figs],
               "runs": [{"folder": r.rel, "label": r.label, "method": r.method,
                         "backbone": r.backbone, "dataset": r.dataset, "protocol": r.protocol,
                         "shots": r.shots, "fraction": r.fraction,
                         "seeds": [x.get("seed") for x in r.results]} for r in runs],
               "failures": failures, "notes": notes}
    write_text(out / "report.json", json.dumps(summary, indent=1, default=str))
    return {"out": str(out), "html": str(html_path), "markdown": str(md_path),
            "json": str(out / "report.json"), "n_runs": len(runs), "n_tables": len(tables),
            "n_figures": len(figs), "notes": notes}
