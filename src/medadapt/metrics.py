"""Classification metrics (scikit-learn underneath) and base/novel harmonic mean."""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             recall_score, roc_auc_score)

# the metrics every results.json / summary.json carries (DESIGN.md)
CORE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc")


def harmonic_mean(a: float, b: float) -> float:
    """HM of base and novel accuracy, as in CoCoOp."""
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def auc_score(y: np.ndarray, prob: np.ndarray, n_classes: int) -> float | None:
    """Binary AUC on the positive class, else macro one-vs-rest over classes present in ``y``.
    ``None`` when undefined (a single class in ``y``)."""
    present = np.unique(y)
    if len(present) < 2:
        return None
    if n_classes == 2:
        return float(roc_auc_score(y, prob[:, 1]))
    aucs = [roc_auc_score((y == c).astype(int), prob[:, c]) for c in present]
    return float(np.mean(aucs))


def _balanced_accuracy(y, pred) -> float:
    with warnings.catch_warnings():  # predictions of a class absent from y (an external test set)
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y, pred))


def classification_metrics(y: np.ndarray, logits: np.ndarray, classnames: list[str]) -> dict:
    """accuracy, balanced accuracy, macro-F1, per-class recall, AUC, confusion matrix."""
    y = np.asarray(y)
    logits = np.asarray(logits, dtype=np.float64)
    n = len(classnames)
    pred = logits.argmax(1)
    labels = list(range(n))
    prob = softmax(logits)
    rec = recall_score(y, pred, labels=labels, average=None, zero_division=0)
    present = set(np.unique(y).tolist())
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": _balanced_accuracy(y, pred),
        "macro_f1": float(f1_score(y, pred, labels=sorted(present), average="macro", zero_division=0)),
        "auc": auc_score(y, prob, n),
        "per_class_recall": {c: float(r) for i, (c, r) in enumerate(zip(classnames, rec))
                             if i in present},
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "n": int(len(y)),
    }
