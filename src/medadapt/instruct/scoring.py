"""Scoring of generated answers, with well-kept implementations only.

PathInsight (Wu et al., Section 3.1, Table 2) reports precision / recall / F1 for tissue
classification, BLEU-1 and ROUGE-1 for captioning. Here:

* Classification: free-text answers are mapped to class codes in three cumulative levels,
  reported separately -- ``exact`` (the normalised answer *is* a class name or code, also after
  dropping a lead-in such as "this is" / "the tissue shows"),
  ``synonym`` (it is, or contains as whole words, a name / code / synonym of exactly one class;
  a phrase inside a longer match -- "tumor" in "tumor stroma" -- does not count on its own, and
  answers naming two classes are unparseable), ``fuzzy`` (difflib ratio >= ``fuzzy_cutoff`` to a name or
  synonym). What no level maps is counted as ``unparseable`` and scored as wrong (it lowers the
  true class's recall). Metrics from scikit-learn (``precision_recall_fscore_support``).
* Captioning / conversation: BLEU-1 and BLEU-4 from sacrebleu (corpus level by default, or
  the mean of sentence BLEU), ROUGE-1 and ROUGE-L from Google's ``rouge-score`` (mean F1, with
  precision and recall). Predictions are scored whole: never cut to the reference length.
* VQA: yes/no accuracy on questions whose reference is yes or no; exact match and SQuAD-style
  token F1 on the open ones.
"""
from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from typing import Any

LEVELS = ("exact", "synonym", "fuzzy")
UNPARSEABLE = "<unparseable>"
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_LEAD = re.compile(r"^(this|it|image|tissue|patch|answer)\s+(is|shows|show|contains)\s+")


def normalize(text: str) -> str:
    """Lower-case, drop punctuation (keeping inner hyphens as spaces), articles, extra spaces."""
    t = text.lower().replace("-", " ")
    t = t.translate(str.maketrans("", "", string.punctuation))
    t = _ARTICLES.sub(" ", t)
    return " ".join(t.split())


def _names(info: dict[str, Any], code: str) -> list[str]:
    return [normalize(info["name"]), normalize(code)]


def _contains(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def map_label(pred: str, classes: dict[str, dict[str, Any]], fuzzy_cutoff: float = 0.8
              ) -> tuple[str | None, str]:
    """Map a free-text answer to a class code; returns ``(code or None, level or 'unparseable')``."""
    p = normalize(pred)
    p_short = _LEAD.sub("", p)
    for code, info in classes.items():
        if p in _names(info, code) or p_short in _names(info, code):
            return code, "exact"
    hits = []  # (phrase, code) for every name / code / synonym found as whole words
    for code, info in classes.items():
        for phrase in _names(info, code) + [normalize(s) for s in info.get("synonyms", [])]:
            if phrase and _contains(p, phrase):
                hits.append((phrase, code))
    # a phrase inside a longer hit ("tumor" in "tumor stroma") does not count on its own
    kept = {c for ph, c in hits if not any(len(o) > len(ph) and _contains(o, ph) for o, _ in hits)}
    if len(kept) == 1:
        return kept.pop(), "synonym"
    scored = []
    for code, info in classes.items():
        for phrase in _names(info, code) + [normalize(s) for s in info.get("synonyms", [])]:
            scored.append((difflib.SequenceMatcher(None, p_short, phrase).ratio(), code))
    if scored:
        ratio, code = max(scored)
        if ratio >= fuzzy_cutoff:
            return code, "fuzzy"
    return None, "unparseable"


def prf(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict[str, Any]:
    """Per-class and macro precision / recall / F1 (scikit-learn) plus accuracy.

    ``labels`` are the real classes; a prediction outside them (``<unparseable>``) counts against
    the true class's recall and is not a column of its own.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro",
                                                    zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)) if y_true else 0.0,
        "macro_precision": float(mp), "macro_recall": float(mr), "macro_f1": float(mf),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(s[i])} for i, c in enumerate(labels)},
    }


def classification_scores(preds: list[str], truths: list[str], classes: dict[str, dict[str, Any]],
                          fuzzy_cutoff: float = 0.8) -> dict[str, Any]:
    """Map answers to codes and score at each level (``exact`` < ``synonym`` < ``fuzzy``)."""
    mapped = [map_label(p, classes, fuzzy_cutoff) for p in preds]
    counts = Counter(level for _, level in mapped)
    labels = list(classes)
    out: dict[str, Any] = {"n": len(preds),
                           "counts": {lv: counts.get(lv, 0) for lv in (*LEVELS, "unparseable")}}
    for i, level in enumerate(LEVELS):
        allowed = LEVELS[: i + 1]
        y_pred = [c if (c is not None and lv in allowed) else UNPARSEABLE for c, lv in mapped]
        out[level] = prf(truths, y_pred, labels)
    out["mapped"] = [{"label": c, "level": lv} for c, lv in mapped]
    return out


def bleu(preds: list[str], refs: list[str], order: int, level: str = "corpus",
         lowercase: bool = True) -> float:
    """BLEU-``order`` in [0, 1] with sacrebleu (13a tokenizer); ``level`` corpus or sentence mean."""
    from sacrebleu.metrics import BLEU

    if not preds:
        return 0.0
    if level == "corpus":
        return BLEU(max_ngram_order=order, lowercase=lowercase).corpus_score(preds, [refs]).score / 100
    m = BLEU(max_ngram_order=order, lowercase=lowercase, effective_order=True)
    return sum(m.sentence_score(p, [r]).score for p, r in zip(preds, refs)) / 100 / len(preds)


def rouge(preds: list[str], refs: list[str], kinds: tuple[str, ...] = ("rouge1", "rougeL")
          ) -> dict[str, dict[str, float]]:
    """Mean ROUGE precision / recall / F1 per kind (Google ``rouge-score``, no stemming)."""
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(list(kinds), use_stemmer=False)
    tot = {k: {"precision": 0.0, "recall": 0.0, "f1": 0.0} for k in kinds}
    for p, r in zip(preds, refs):
        s = sc.score(r, p)  # score(target, prediction)
        for k in kinds:
            tot[k]["precision"] += s[k].precision
            tot[k]["recall"] += s[k].recall
            tot[k]["f1"] += s[k].fmeasure
    n = max(len(preds), 1)
    return {k: {m: v / n for m, v in d.items()} for k, d in tot.items()}


def text_scores(preds: list[str], refs: list[str], bleu_level: str = "corpus") -> dict[str, Any]:
    """BLEU-1, BLEU-4, ROUGE-1, ROUGE-L (F1 as headline; ROUGE precision / recall alongside)."""
    r = rouge(preds, refs)
    return {"n": len(preds), "bleu1": bleu(preds, refs, 1, bleu_level),
            "bleu4": bleu(preds, refs, 4, bleu_level),
            "rouge1": r["rouge1"]["f1"], "rougeL": r["rougeL"]["f1"],
            "rouge1_recall": r["rouge1"]["recall"], "rouge1_precision": r["rouge1"]["precision"],
            "rougeL_recall": r["rougeL"]["recall"]}


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style token F1 on normalised text."""
    p, r = normalize(pred).split(), normalize(ref).split()
    common = sum((Counter(p) & Counter(r)).values())
    if not p or not r:
        return float(p == r)
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def yes_no(text: str) -> str | None:
    words = normalize(text).split()
    return words[0] if words and words[0] in ("yes", "no") else None


def vqa_scores(preds: list[str], refs: list[str]) -> dict[str, Any]:
    """Yes/no accuracy (closed questions) and exact match / token F1 (open questions)."""
    closed = [(p, r) for p, r in zip(preds, refs) if normalize(r) in ("yes", "no")]
    opened = [(p, r) for p, r in zip(preds, refs) if normalize(r) not in ("yes", "no")]
    out: dict[str, Any] = {"n": len(preds), "n_yes_no": len(closed), "n_open": len(opened)}
    out["yes_no_accuracy"] = (sum(yes_no(p) == normalize(r) for p, r in closed) / len(closed)
                              if closed else None)
    out["open_exact_match"] = (sum(normalize(p) == normalize(r) for p, r in opened) / len(opened)
                               if opened else None)
    out["open_token_f1"] = (sum(token_f1(p, r) for p, r in opened) / len(opened) if opened else None)
    return out
