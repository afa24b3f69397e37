"""Scoring of generated answers, with well-kept implementations only (see docs/instruct.md,
"Metrics", for the table of every metric, its definition and who uses it).

PathInsight (Wu et al., Section 3.1, Table 2) reports precision / recall / F1 for tissue
classification, BLEU-1 and ROUGE-1 for captioning. Here:

* Classification: free-text answers are mapped to class codes in three cumulative levels,
  reported separately -- ``exact`` (the normalised answer *is* a class name or code, also after
  dropping a lead-in such as "this is" / "the tissue shows"),
  ``synonym`` (it contains as whole words a name / code / synonym of exactly one class; a phrase
  inside a longer match -- "tumor" in "tumor stroma" -- does not count on its own), ``fuzzy``
  (the same after correcting typos word by word: a word of 4+ letters that is no word of any
  class phrase is replaced by the single closest such word with difflib ratio >= ``fuzzy_cutoff``
  and one edit away, two from 8 letters on). An answer naming
  two classes is unparseable at every level, and a real vocabulary word is never "corrected"
  into another ("mucosa" is not a typo of "mucous"). Unparseable answers are not predictions:
  they lower recall, not precision.
  **Headline** (``micro_f1`` / ``micro_recall``): micro-averaged over items, precision = correct /
  parseable answers, recall = correct / items. This reproduces PathInsight's Table 2, whose rows
  satisfy F1 = 2R / (1 + R) (precision ~ 1: base models mostly answer off-format). Macro P / R / F1
  average over the classes present in the references or the predictions (a class absent from the
  split is not a 0).
* Captioning / conversation: ``bleu1_nltk_sentence_mean`` (headline; the anchors' BLEU-1: mean of
  nltk ``sentence_bleu`` with weights (1, 0, 0, 0) on lower-cased whitespace tokens, as
  LLaVA-Med's ``run_eval.py``), ``bleu1_sacrebleu_corpus`` / ``bleu4_sacrebleu_corpus`` (13a
  tokenizer, lower-cased), ROUGE-1 / ROUGE-L precision, recall and F1 from Google's
  ``rouge-score`` (mean over items, no stemming). Predictions are scored whole.
* VQA (LLaVA-Med's PathVQA metrics): closed questions (reference yes / no): accuracy, correct when
  the reference word is a word of the prediction and the other one is not; open questions:
  LLaVA-Med's recall (share of reference words found in the prediction), token F1, exact match
  after normalisation, and BLEU-1 as above.
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


def _vocab(classes: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Every class code -> its normalised phrases (name, code, synonyms)."""
    return {code: [ph for ph in _names(info, code) + [normalize(x) for x in info.get("synonyms", [])] if ph]
            for code, info in classes.items()}


def _classes_named(text: str, phrases: dict[str, list[str]]) -> set[str]:
    """Classes whose phrase occurs as whole words, ignoring a phrase inside a longer hit."""
    hits = [(ph, code) for code, phs in phrases.items() for ph in phs if _contains(text, ph)]
    return {c for ph, c in hits if not any(len(o) > len(ph) and _contains(o, ph) for o, _ in hits)}


def _edits(a: str, b: str) -> int:
    """Optimal-string-alignment distance (insert, delete, substitute, swap neighbours)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def _fix_typos(text: str, words: set[str], cutoff: float) -> str:
    """Replace each word that is no vocabulary word by the single closest one -- a typo only: at
    least 4 letters, difflib ratio >= ``cutoff`` and one edit away (two from 8 letters on), so
    "not" never becomes "no" and "mucosa" never becomes "mucous"."""
    out = []
    for w in text.split():
        if w not in words and len(w) >= 4:
            near = [v for v in words if difflib.SequenceMatcher(None, w, v).ratio() >= cutoff
                    and _edits(w, v) <= (1 if len(w) < 8 else 2)]
            if len(near) == 1:
                w = near[0]
            elif near:  # fewest edits, then highest ratio; a tie on both corrects nothing
                best = sorted((_edits(w, v), -difflib.SequenceMatcher(None, w, v).ratio(), v) for v in near)
                if best[0][:2] != best[1][:2]:
                    w = best[0][2]
        out.append(w)
    return " ".join(out)


def map_label(pred: str, classes: dict[str, dict[str, Any]], fuzzy_cutoff: float = 0.8
              ) -> tuple[str | None, str]:
    """Map a free-text answer to a class code; returns ``(code or None, level or 'unparseable')``."""
    p = normalize(pred)
    p_short = _LEAD.sub("", p)
    for code, info in classes.items():
        if p in _names(info, code) or p_short in _names(info, code):
            return code, "exact"
    phrases = _vocab(classes)
    named = _classes_named(p, phrases)
    if len(named) == 1:
        return named.pop(), "synonym"
    if len(named) > 1:  # names two classes: never resolved to one of them
        return None, "unparseable"
    words = {w for phs in phrases.values() for ph in phs for w in ph.split()}
    fixed = _fix_typos(p, words, fuzzy_cutoff)
    if fixed != p:
        named = _classes_named(fixed, phrases)
        if len(named) == 1:
            return named.pop(), "fuzzy"
    return None, "unparseable"


def prf(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy; micro and macro precision / recall / F1; per-class scores (scikit-learn).

    ``labels`` are the real classes; a prediction outside them (``<unparseable>``) is not a
    prediction of any class: it counts against the true class's recall only. Micro: precision =
    correct / parseable answers, recall = correct / items (the headline, see the module doc).
    Macro: mean over the classes present in ``y_true`` or ``y_pred``.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    present = [c for c in labels if c in set(y_true) | set(y_pred)]
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out: dict[str, Any] = {"accuracy": float(accuracy_score(y_true, y_pred)) if y_true else 0.0,
                           "n_parseable": sum(y in labels for y in y_pred),
                           "classes_present": present}
    for avg in ("micro", "macro"):
        if present:
            ap, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, average=avg,
                                                            zero_division=0)
        else:
            ap = ar = af = 0.0
        out.update({f"{avg}_precision": float(ap), f"{avg}_recall": float(ar), f"{avg}_f1": float(af)})
    out["per_class"] = {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                            "support": int(s[i])} for i, c in enumerate(labels)}
    return out


def classification_scores(preds: list[str], truths: list[str], classes: dict[str, dict[str, Any]],
                          fuzzy_cutoff: float = 0.8) -> dict[str, Any]:
    """Map answers to codes and score at each level (``exact`` < ``synonym`` < ``fuzzy``)."""
    unique = {p: map_label(p, classes, fuzzy_cutoff) for p in set(preds)}
    mapped = [unique[p] for p in preds]
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


def sentence_bleu1(pred: str, ref: str) -> float:
    """The anchors' BLEU-1 of one answer: nltk ``sentence_bleu([ref], pred, weights=(1, 0, 0, 0))``
    on lower-cased whitespace tokens (LLaVA-Med ``run_eval.py``; punctuation stays on the word)."""
    import warnings

    from nltk.translate.bleu_score import sentence_bleu

    hyp, r = pred.lower().split(), ref.lower().split()
    if not hyp or not r:
        return float(hyp == r and bool(hyp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sentence_bleu([r], hyp, weights=(1, 0, 0, 0)))


def bleu1_sentence_mean(preds: list[str], refs: list[str]) -> float:
    """Mean of :func:`sentence_bleu1` over the items (the anchors' reported BLEU-1)."""
    return sum(sentence_bleu1(p, r) for p, r in zip(preds, refs)) / len(preds) if preds else 0.0


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


def text_scores(preds: list[str], refs: list[str]) -> dict[str, Any]:
    """BLEU (anchors' sentence mean and sacrebleu corpus), ROUGE-1 / ROUGE-L (P, R, F1)."""
    r = rouge(preds, refs)
    return {"n": len(preds),
            "bleu1_nltk_sentence_mean": bleu1_sentence_mean(preds, refs),
            "bleu1_sacrebleu_corpus": bleu(preds, refs, 1, "corpus"),
            "bleu4_sacrebleu_corpus": bleu(preds, refs, 4, "corpus"),
            "rouge1_f1": r["rouge1"]["f1"], "rouge1_recall": r["rouge1"]["recall"],
            "rouge1_precision": r["rouge1"]["precision"],
            "rougeL_f1": r["rougeL"]["f1"], "rougeL_recall": r["rougeL"]["recall"],
            "rougeL_precision": r["rougeL"]["precision"]}


_LM_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
             ",", "?", "!"]
_LM_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_LM_COMMA = re.compile(r"(\d)(,)(\d)")
_LM_NUM = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
           "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


def llava_med_normalize(text: str) -> str:
    """LLaVA-Med's ``normalize_word`` (VQA-v2 style): punctuation, periods, number words,
    articles, lower case (its contraction table is left out)."""
    out = text
    for p in _LM_PUNCT:
        if (p + " " in text or " " + p in text) or _LM_COMMA.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _LM_PERIOD.sub("", out)
    words = [_LM_NUM.get(w, w) for w in out.lower().split()]
    return " ".join(w for w in words if w not in ("a", "an", "the")).replace(",", "")


def llava_med_prf(pred: str, ref: str) -> tuple[float, float, float]:
    """LLaVA-Med ``calculate_f1score``: word-count overlap of the normalised texts -> (F1, P, R)."""
    c, r = Counter(llava_med_normalize(pred).split()), Counter(llava_med_normalize(ref).split())
    if not c or not r:
        return 0.0, 0.0, 0.0
    tp = sum(c[w] for w in c if w in r)
    fp = sum(c[w] for w in c if w not in r)
    fn = sum(r[w] for w in r if w not in c)
    if tp == 0:
        return 0.0, 0.0, 0.0
    prec, rec = tp / (tp + fp), tp / (tp + fn)
    return 2 * prec * rec / (prec + rec), prec, rec


def closed_correct(pred: str, ref: str) -> bool:
    """Yes/no rule of the anchors: the reference word is a word of the prediction and the other
    answer is not ("The answer is yes." is right; "yes and no" is wrong)."""
    words = set(normalize(pred).split())
    want = normalize(ref)
    other = "no" if want == "yes" else "yes"
    return want in words and other not in words


def vqa_scores(preds: list[str], refs: list[str]) -> dict[str, Any]:
    """PathVQA / VQA metrics as LLaVA-Med reports them, split by closed (yes/no) and open."""
    closed = [(p, r) for p, r in zip(preds, refs) if normalize(r) in ("yes", "no")]
    opened = [(p, r) for p, r in zip(preds, refs) if normalize(r) not in ("yes", "no")]
    mean = lambda xs: (sum(xs) / len(xs)) if xs else None
    prf_open = [llava_med_prf(p, r) for p, r in opened]
    return {
        "n": len(preds), "n_closed": len(closed), "n_open": len(opened),
        "closed_accuracy": mean([float(closed_correct(p, r)) for p, r in closed]),
        "open_recall": mean([x[2] for x in prf_open]),
        "open_f1": mean([x[0] for x in prf_open]),
        "open_precision": mean([x[1] for x in prf_open]),
        "open_exact_match": mean([float(normalize(p) == normalize(r)) for p, r in opened]),
        "open_bleu1_nltk_sentence_mean": bleu1_sentence_mean(
            [llava_med_normalize(p) for p, _ in opened], [llava_med_normalize(r) for _, r in opened])
        if opened else None,
        "exact_match": mean([float(normalize(p) == normalize(r)) for p, r in zip(preds, refs)]),
    }
