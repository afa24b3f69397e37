"""t-SNE figures of frozen and adapted image features (the papers' Fig. 4) with silhouette scores."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from medadapt.errors import UserError
from medadapt.engine.grid import slug
from medadapt.report.figures import _choose, _class_names, _figure, _save
from medadapt.report.runs import PROTOCOL_TITLE, Run, budget_text
from medadapt.report.tables import _ordered


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
    from medadapt.engine.evaluate import load_run
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
