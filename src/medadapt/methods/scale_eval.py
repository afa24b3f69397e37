"""Class-level and class-concept-level evaluation as in the SCALE paper (Sec. 2.3.2), and the
t-SNE view of Fig. 4.

Both levels are multi-label-ready tables ``Y [N, K]`` (bool) with one column per class (class
level) or per class-concept combination (class-concept level). With per-criterion groups (the
7-point checklist) the class level has one column per (criterion, class) and the predictions are
made within each criterion, whose expressions are exclusive (Sec. 2.3.2); the averages over
columns are then "the mean over seven binary classes for each criterion".

Metrics (:func:`level_metrics`):

* ``mean_class_accuracy``: the mean over columns k of the binary (one-vs-rest) accuracy of
  column k. The paper reports "the mean accuracy over all classes" next to macro recall and notes
  that it is inflated by class imbalance, which the one-vs-rest accuracy is (the mean recall would
  not be; it is ``macro_recall``).
* ``macro_recall`` and ``macro_f1`` over the columns with at least one positive.
* ``accuracy``: top-1 accuracy per (item, criterion): the argmax is one of the item's positives.
* Predictions: argmax within each criterion; on multi-label data (PadChest-GR, synth-malignancy:
  several positive combinations per item) a column is predicted positive when its score (a VLM:
  the cosine to the prompt) exceeds a per-column threshold fitted on the validation split to
  maximise F1 (:func:`fit_thresholds`); without a validation split, when its "No finding."
  probability exceeds 0.5. The paper does not say how it thresholds multi-label predictions.
* ``auc``: mean one-vs-rest ROC AUC over the columns with both outcomes. For a vision-language
  model the score of column k follows Hamamci et al. (the paper's ref. 28): the softmax over the
  two prompts [class-concept prompt k, "No finding."] and its entry for prompt k, i.e.
  ``sigmoid(s (cos(x, t_k) - cos(x, t_none)))``; :func:`no_finding_probability`. For models
  without text (linear probe) the softmax probabilities within the criterion are used.
* ``auc_raw``: the same AUC on the raw scores (a VLM: the cosine to prompt k, i.e. ranking the
  images by similarity to the prompt; a probe: its logit or probability). After fine-tuning,
  "No finding." is not trained by SCALE's loss, so the paper's AUC also measures how the adapted
  text branch happens to move that prompt; ``auc_raw`` does not depend on it.

The ground truth of an item comes from its concept labels through
:meth:`~medadapt.hierarchy.Hierarchy.item_combinations`; the class of a combination is the class
column (so in Derm7pt a "regular streaks" item counts for nevus on the streaks criterion).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from medadapt.hierarchy import Hierarchy


# ------------------------------------------------------------------------------------------------
def no_finding_probability(sim: np.ndarray, sim_none: np.ndarray, scale: float) -> np.ndarray:
    """``softmax([s sim_k, s sim_none])[0]`` per item and column (Sec. 2.3.2, Hamamci et al.)."""
    sim = np.asarray(sim, dtype=np.float64)
    d = scale * (sim - np.asarray(sim_none, dtype=np.float64)[:, None])
    return 1.0 / (1.0 + np.exp(-d))


def predict_in_groups(scores: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """One-hot argmax within each group of columns."""
    pred = np.zeros(scores.shape, dtype=bool)
    for g in groups:
        g = np.asarray(g)
        pred[np.arange(len(scores)), g[np.asarray(scores)[:, g].argmax(1)]] = True
    return pred


def softmax_in_groups(scores: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    out = np.zeros(scores.shape, dtype=np.float64)
    for g in groups:
        s = np.asarray(scores, dtype=np.float64)[:, g]
        e = np.exp(s - s.max(1, keepdims=True))
        out[:, g] = e / e.sum(1, keepdims=True)
    return out


def fit_thresholds(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-column decision thresholds on the scores maximising F1 on a validation split
    (multi-label levels). Candidates are the midpoints between consecutive distinct scores of a
    column; among equally good ones the median is kept; a column without positives in the
    validation split gets +inf (never predicted)."""
    y = np.asarray(y, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    out = np.full(y.shape[1], np.inf)
    for k in range(y.shape[1]):
        yk, sk = y[:, k], scores[:, k]
        if not yk.any():
            continue
        u = np.unique(sk)
        cands = np.concatenate([[u[0] - 1e-9], (u[:-1] + u[1:]) / 2])
        f1s = []
        for t in cands:
            pred = sk > t
            tp, fp, fn = int((pred & yk).sum()), int((pred & ~yk).sum()), int((~pred & yk).sum())
            f1s.append(2 * tp / (2 * tp + fp + fn))
        f1s = np.asarray(f1s)
        best = cands[f1s >= f1s.max() - 1e-12]
        out[k] = float(best[len(best) // 2])
    return out


def level_metrics(y: np.ndarray, scores: np.ndarray, groups: list[list[int]] | None = None,
                  auc_scores: np.ndarray | None = None, names: list[str] | None = None,
                  multilabel: bool | None = None, thresholds: np.ndarray | None = None) -> dict:
    """Metrics of one level. ``y [N, K]`` bool ground truth, ``scores [N, K]``, ``auc_scores``
    per-column probabilities (default: softmax within groups).

    Predictions: single-label groups take the argmax within the group; multi-label data (an item
    with several positives in a group; ``multilabel=None`` detects it) predict column k positive
    when ``scores[:, k] > thresholds[k]`` (from :func:`fit_thresholds` on the validation split),
    or without thresholds when its probability ``auc_scores[:, k] > 0.5`` (a VLM: the
    combination prompt beats "No finding."). An item without a positive in a group is not
    scored on that group."""
    y = np.asarray(y, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n, k = y.shape
    groups = groups or [list(range(k))]
    if auc_scores is None:
        auc_scores = softmax_in_groups(scores, groups)
    if multilabel is None:
        multilabel = any(bool((y[:, g].sum(1) > 1).any()) for g in groups)
    argmax = predict_in_groups(scores, groups)
    if not multilabel:
        pred = argmax
    elif thresholds is None:
        pred = np.asarray(auc_scores) > 0.5
    else:
        pred = scores > np.asarray(thresholds, dtype=np.float64)[None, :]
    valid = np.zeros((n, k), dtype=bool)  # item i is scored on column j
    top1 = []
    for g in groups:
        has = y[:, g].any(1)
        valid[np.ix_(has, g)] = True
        if has.any():
            top1.append((y[:, g] & argmax[:, g]).any(1)[has])
    accs, recs, f1s, aucs, raws, per = [], [], [], [], [], {}
    for j in range(k):
        m = valid[:, j]
        if not m.any():
            continue
        yt, yp = y[m, j], pred[m, j]
        acc = float((yt == yp).mean())
        accs.append(acc)
        tp, fp, fn = int((yt & yp).sum()), int((~yt & yp).sum()), int((yt & ~yp).sum())
        entry = {"accuracy": acc, "support": int(yt.sum())}
        if yt.any():
            r = tp / (tp + fn)
            f = 2 * tp / (2 * tp + fp + fn)
            recs.append(r)
            f1s.append(f)
            entry.update(recall=r, f1=f)
        if yt.any() and not yt.all():
            a = float(roc_auc_score(yt, np.asarray(auc_scores)[m, j]))
            aucs.append(a)
            entry["auc"] = a
            raws.append(float(roc_auc_score(yt, scores[m, j])))
        per[names[j] if names else str(j)] = entry
    return {
        "mean_class_accuracy": float(np.mean(accs)) if accs else None,
        "macro_recall": float(np.mean(recs)) if recs else None,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "auc": float(np.mean(aucs)) if aucs else None,
        "auc_raw": float(np.mean(raws)) if raws else None,
        "accuracy": float(np.mean(np.concatenate(top1))) if top1 else None,
        "multilabel": bool(multilabel),
        "n": int(n),
        "per_column": per,
    }


# ------------------------------------------------------------------------------------------------
class Levels:
    """Column layout and ground truth of both levels for a hierarchy."""

    def __init__(self, h: Hierarchy, classnames: list[str]):
        from medadapt.methods.scale import ComboIndex
        self.h = h
        self.classnames = list(classnames)
        self.index = ComboIndex(h)
        self.combo_names = h.combination_names()
        self.combo_groups = [g.tolist() for g in self.index.groups]
        self.class_columns = self.index.class_columns  # (group, hierarchy class index)
        gn = h.group_names
        self.class_names = [(f"{gn[g]}: " if gn[g] else "") + h.classes[k]
                            for g, k in self.class_columns]
        col = {c: j for j, c in enumerate(self.class_columns)}
        self.class_col = col
        self.class_groups = [[col[(g, int(k))] for k in ks]
                             for g, ks in enumerate(self.index.g_classes)]

    def targets(self, labels, concepts) -> tuple[np.ndarray, np.ndarray]:
        """(Y_combination [N, H], Y_class [N, K_class]) for items with class labels and concept
        tuples. Items without concepts get only their class (single-group hierarchies)."""
        n = len(labels)
        yh = np.zeros((n, len(self.combo_names)), dtype=bool)
        yc = np.zeros((n, len(self.class_columns)), dtype=bool)
        gof, cof = self.index.group_of.tolist(), self.index.class_of.tolist()
        for i, (lab, cs) in enumerate(zip(labels, concepts)):
            name = self.classnames[int(lab)]
            if cs:
                for hh in self.h.item_combinations(name, cs, f"item {i}: "):
                    yh[i, hh] = True
                    yc[i, self.class_col[(gof[hh], cof[hh])]] = True
            elif len(self.combo_groups) == 1:
                k = self.h.classes.index(self.h.find_class(name))
                yc[i, self.class_col[(0, k)]] = True
        return yh, yc

    def evaluate(self, labels, concepts, combo_scores=None, class_scores=None,
                 combo_auc=None, class_auc=None, thresholds: dict | None = None) -> dict:
        yh, yc = self.targets(labels, concepts)
        thresholds = thresholds or {}
        out = {}
        if class_scores is not None:
            out["class"] = level_metrics(yc, class_scores, self.class_groups, class_auc,
                                         self.class_names, thresholds=thresholds.get("class"))
        if combo_scores is not None:
            out["class_concept"] = level_metrics(yh, combo_scores, self.combo_groups, combo_auc,
                                                 self.combo_names,
                                                 thresholds=thresholds.get("class_concept"))
        return out

    def thresholds(self, labels, concepts, combo_scores=None, class_scores=None) -> dict:
        """Per-level decision thresholds fitted on a validation split (:func:`fit_thresholds`)."""
        yh, yc = self.targets(labels, concepts)
        out = {}
        if class_scores is not None:
            out["class"] = fit_thresholds(yc, class_scores)
        if combo_scores is not None:
            out["class_concept"] = fit_thresholds(yh, combo_scores)
        return out


@torch.no_grad()
def scale_scores(method, features: torch.Tensor, adapted: bool = True) -> dict:
    """Cosines of images to the combination prompts and to "No finding." (adapted branches, or
    the frozen model with ``adapted=False`` = zero-shot on the same prompts)."""
    from medadapt.methods.base import Batch
    feats = features.to(method.prompt_features.device).float()
    if adapted:
        img = method.adapted_image(Batch(labels=torch.zeros(len(feats), dtype=torch.long),
                                         features=feats))
        prompts = method.adapted_prompts()
        nf = method.adapt_text(method.no_finding_feature[None])[0]
    else:
        img = F.normalize(feats, dim=-1)
        prompts = F.normalize(method.prompt_features, dim=-1)
        nf = F.normalize(method.no_finding_feature, dim=-1)
    z = (img @ prompts.T).cpu()
    zn = (img @ nf).cpu()
    zc = method.index.class_scores(z)
    return {"combo": z.numpy(), "class": zc.numpy(), "none": zn.numpy(),
            "scale": method.scale()}


def scale_probabilities(method, features: torch.Tensor, adapted: bool = True) -> dict:
    """Scores and "No finding." probabilities of both levels for a SCALE model."""
    s = scale_scores(method, features, adapted)
    sc = s["scale"]
    return {"combo": s["combo"], "class": s["class"],
            "combo_prob": no_finding_probability(s["combo"], s["none"], sc),
            "class_prob": no_finding_probability(s["class"], s["none"], sc)}


def evaluate_scale(method, features: torch.Tensor, labels, concepts, adapted: bool = True,
                   val: tuple | None = None) -> dict:
    """Both levels for a SCALE model (``adapted=False``: zero-shot on the combination prompts).

    ``val = (features, labels, concepts)`` of the validation split fits the multi-label decision
    thresholds (never the test split)."""
    lv = Levels(method.hierarchy, method.texts.classnames)
    p = scale_probabilities(method, features, adapted)
    thr = None
    if val is not None and len(val[1]):
        pv = scale_probabilities(method, val[0], adapted)
        thr = lv.thresholds(val[1], val[2], pv["combo"], pv["class"])
    return lv.evaluate(labels, concepts, combo_scores=p["combo"], class_scores=p["class"],
                       combo_auc=p["combo_prob"], class_auc=p["class_prob"], thresholds=thr)


def evaluate_scale_split(method, split, adapted: bool = True, val=None) -> dict:
    v = None if val is None else (val.features, val.labels.tolist(),
                                  val.concepts or [()] * len(val))
    return evaluate_scale(method, split.features, split.labels.tolist(),
                          split.concepts or [()] * len(split), adapted, v)


# ------------------------------------------------------------------------------------------------
def tsne_plot(panels: list[tuple[str, np.ndarray, list[str]]], path: str | Path,
              title: str = "", seed: int = 0, perplexity: float = 30.0, threads: int = 1) -> Path:
    """One t-SNE scatter per panel (title, embeddings [N, D], label per point), coloured by label
    (Fig. 4: zero-shot vs fine-tuned, coloured by concept).

    ``threads``: OpenMP threads for scikit-learn's t-SNE. One by default: these plots have a few
    hundred points, and on a busy machine OpenMP spinning made a 12-point t-SNE take 24 s
    instead of 0.2 s."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    labels_all = sorted({l for _, _, ls in panels for l in ls})
    cmap = plt.get_cmap("tab20" if len(labels_all) > 10 else "tab10")
    colour = {l: cmap(i % cmap.N) for i, l in enumerate(labels_all)}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    for ax, (name, emb, labs) in zip(axes[0], panels):
        emb = np.asarray(emb, dtype=np.float64)
        n = len(emb)
        perp = max(1.0, min(perplexity, (n - 1) / 3.0))
        if n > 2:
            with threadpool_limits(limits=threads):
                xy = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed,
                          metric="cosine", n_jobs=threads).fit_transform(emb)
        else:
            xy = np.zeros((n, 2))
        for l in labels_all:
            m = np.array([x == l for x in labs])
            if m.any():
                ax.scatter(xy[m, 0], xy[m, 1], s=14, color=colour[l], label=l, alpha=0.85)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, labs = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labs, loc="lower center", ncol=min(4, max(1, len(labs))), fontsize=7,
               frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08 + 0.03 * (len(labs) // 4), 1, 1))
    path = Path(path)
    from medadapt.safeio import save_figure  # concept names drawn literally
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=130)
    plt.close(fig)
    return path


TEXT_VARIANTS = ("a photo of a {domain} with {concept}, which indicates a {class}",
                 "an image of a {domain} showing {concept}, typical of {class}",
                 "{concept} in a {domain}, consistent with {class}",
                 "a {domain} with {concept}.", "{class} with {concept}",
                 "findings: {concept}. impression: {class}.",
                 "a close-up view of {concept}, which suggests {class}",
                 "this {domain} shows {concept}")


@torch.no_grad()
def scale_tsne(method, path: str | Path, features: torch.Tensor | None = None,
               concepts: list | None = None, labels=None, kind: str = "text",
               templates: tuple[str, ...] = TEXT_VARIANTS, seed: int = 0) -> Path:
    """Fig. 4: t-SNE of text (or image) embeddings coloured by concept, zero-shot vs SCALE.

    ``kind="text"``: each combination phrased with several ``templates`` (the paper embeds
    report sentences; prompts are what medadapt has), frozen vs adapted text branch.
    ``kind="image"``: the items' frozen vs adapted image embeddings, coloured by their first
    concept."""
    h = method.hierarchy
    if kind == "text":
        sents, labs = [], []
        for k, c in h.combinations:
            for t in templates:
                sents.append(h.prompt(k, c, t))
                labs.append(c)
        frozen = method.backbone.encode_texts(sents).to(method.prompt_features.device)
        tuned = method.adapt_text(frozen)
        panels = [("zero-shot (frozen text encoder)", frozen.cpu().numpy(), labs),
                  ("SCALE (adapted text branch)", tuned.cpu().numpy(), labs)]
    elif kind == "image":
        if features is None or concepts is None:
            raise ValueError("kind='image' needs features and concepts")
        from medadapt.methods.base import Batch
        feats = features.float().to(method.prompt_features.device)
        labs = [h.find_concept(cs[0]) if cs else "(none)" for cs in concepts]
        tuned = method.adapted_image(Batch(labels=torch.zeros(len(feats), dtype=torch.long),
                                           features=feats))
        panels = [("zero-shot (frozen image encoder)", F.normalize(feats, dim=-1).cpu().numpy(), labs),
                  ("SCALE (adapted image branch)", tuned.cpu().numpy(), labs)]
    else:
        raise ValueError("kind must be 'text' or 'image'")
    return tsne_plot(panels, path, title=f"{h.name}: {kind} embeddings by concept", seed=seed)
