"""Class / class-concept metrics (SCALE Sec. 2.3.2) and the Fig. 4 t-SNE plot."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medadapt.hierarchy import load_hierarchy
from medadapt.methods.scale_eval import Levels, level_metrics, no_finding_probability, tsne_plot
from test_scale_fixtures import backbone, data_csv, env, feature_split  # noqa: F401


def test_no_finding_probability_is_two_prompt_softmax():
    sim = np.array([[0.3, 0.1], [0.2, 0.5]])
    none = np.array([0.25, 0.4])
    s = 10.0
    p = no_finding_probability(sim, none, s)
    for i in range(2):
        for k in range(2):
            e_k, e_n = math.exp(s * sim[i, k]), math.exp(s * none[i])
            assert p[i, k] == pytest.approx(e_k / (e_k + e_n))


def test_level_metrics_single_label_by_hand():
    # 4 items, 3 classes; predictions (argmax): 0, 1, 1, 2; truth: 0, 1, 2, 2
    y = np.eye(3, dtype=bool)[[0, 1, 2, 2]]
    scores = np.array([[3, 1, 0], [0, 2, 1], [0, 2, 1], [0, 0, 1]], dtype=float)
    m = level_metrics(y, scores)
    assert m["accuracy"] == pytest.approx(3 / 4)
    # one-vs-rest accuracies: class 0: 4/4, class 1: 3/4 (item 3 false positive), class 2: 3/4
    assert m["mean_class_accuracy"] == pytest.approx((1 + 0.75 + 0.75) / 3)
    assert m["macro_recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    f1 = [1.0, 2 * 1 / (2 * 1 + 1 + 0), 2 * 1 / (2 * 1 + 0 + 1)]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    soft = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    aucs = [roc_auc_score(y[:, k], soft[:, k]) for k in range(3)]
    assert m["auc"] == pytest.approx(np.mean(aucs))
    assert m["multilabel"] is False


def test_level_metrics_groups_and_multilabel():
    # two criteria of 2 columns; item 2 has no label for the second criterion
    y = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [1, 0, 0, 0]], dtype=bool)
    scores = np.array([[2, 1, 0, 1], [0, 1, 1, 0], [0, 1, 5, 0]], dtype=float)
    m = level_metrics(y, scores, groups=[[0, 1], [2, 3]])
    assert m["accuracy"] == pytest.approx(4 / 5)  # (item, criterion) pairs with a label
    assert m["per_column"]["2"]["support"] == 1 and m["n"] == 3
    # multi-label: thresholded per-column probabilities
    y2 = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    prob = np.array([[0.9, 0.6, 0.1], [0.2, 0.4, 0.3], [0.1, 0.2, 0.7]])
    m2 = level_metrics(y2, prob, auc_scores=prob)
    assert m2["multilabel"] is True
    assert m2["macro_recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m2["accuracy"] == 1.0  # every argmax is one of the item's positives
    assert m2["mean_class_accuracy"] == pytest.approx((1 + 2 / 3 + 1) / 3)


def test_levels_targets_with_criteria():
    h = load_hierarchy("derm7pt")
    lv = Levels(h, ["nevus", "melanoma"])
    yh, yc = lv.targets([1], [("pigmentation:diffuse irregular", "regular streaks")])
    names = [lv.combo_names[j] for j in np.flatnonzero(yh[0])]
    assert names == ["regular streaks -> nevus", "diffuse irregular pigmentation -> melanoma"]
    cls = [lv.class_names[j] for j in np.flatnonzero(yc[0])]
    assert cls == ["streaks: nevus", "pigmentation: melanoma"]
    assert len(lv.class_names) == 14 and len(lv.class_groups) == 7


def test_evaluate_scale_and_tsne(env, data_csv, tmp_path):
    from medadapt.data.texts import load_class_texts
    from medadapt.engine.train import Engine
    from medadapt.methods.scale import SCALE
    from medadapt.methods.scale_eval import evaluate_scale_split, scale_tsne

    bb = backbone("tiny-hf-clip")
    tr = feature_split(bb, data_csv)
    m = SCALE(bb, load_class_texts(tr.ds.classnames),
              {"hierarchy": str(Path(data_csv).parent / "hierarchy.yaml"), "alpha": 0.5,
               "lambdas": [1, 1, 0.1, 0.1]})
    zs = evaluate_scale_split(m, tr, adapted=False)
    m.fit(tr, None, Engine({**SCALE.train_defaults, "epochs": 150, "lr": 0.01,
                            "checkpoint": False}, progress=False))
    ft = evaluate_scale_split(m, tr)
    assert set(ft) == {"class", "class_concept"}
    assert ft["class"]["accuracy"] == 1.0 and ft["class"]["macro_f1"] == 1.0
    assert ft["class"]["auc"] > zs["class"]["auc"]
    assert ft["class_concept"]["multilabel"] is True  # one tumour tile has two combinations
    assert ft["class_concept"]["auc"] > zs["class_concept"]["auc"]
    p = scale_tsne(m, tmp_path / "tsne_text.png")
    assert p.exists() and p.stat().st_size > 10_000
    p2 = scale_tsne(m, tmp_path / "tsne_img.png", features=tr.features, concepts=tr.concepts,
                    kind="image")
    assert p2.exists()


def test_tsne_plot_small(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 5))
    labs = ["a"] * 6 + ["b"] * 6
    p = tsne_plot([("one", emb, labs), ("two", emb * 2, labs)], tmp_path / "t.png", title="x")
    assert p.exists()


def test_fit_thresholds_on_validation():
    from medadapt.methods.scale_eval import fit_thresholds
    y = np.array([[1, 0], [1, 0], [0, 0], [0, 1]], dtype=bool)
    s = np.array([[0.9, 0.1], [0.7, 0.2], [0.3, 0.3], [0.2, 0.8]])
    t = fit_thresholds(y, s)
    assert 0.3 <= t[0] < 0.7 and 0.3 <= t[1] < 0.8  # perfect separation on validation
    assert np.isinf(fit_thresholds(np.zeros((2, 1), bool), np.ones((2, 1))))[0]
    m = level_metrics(y, s, thresholds=t)
    assert m["multilabel"] is False  # one positive per item: argmax, thresholds unused
    y2 = np.array([[1, 1], [1, 0], [0, 0], [0, 1]], dtype=bool)
    m2 = level_metrics(y2, s, thresholds=np.array([0.5, 0.05]))
    assert m2["multilabel"] is True and m2["per_column"]["1"]["recall"] == 1.0
    assert m2["auc_raw"] is not None
