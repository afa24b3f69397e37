"""The report's figures: curves of the headline metric against K, per-class recall heat maps and
confusion matrices."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from medadapt.engine.grid import slug
from medadapt.report.runs import HEADLINE, PROTOCOL_TITLE, Run, budget_text
from medadapt.report.tables import Stat, _ordered, seed_values, stat


# ------------------------------------------------------------------------------------------------
# figures
def _figure(w: float, h: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _save(fig, path: Path) -> Path:
    from medadapt.safeio import save_figure  # user text drawn literally; no write through a link
    return save_figure(fig, path, format="png")


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
