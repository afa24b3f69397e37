"""Scoring of generated answers (see docs/instruct.md, "Metrics", for the table of every key, its
definition, the scorer that produced it and where medadapt's strict rules differ).

Two families of keys, never mixed under one name:

* **Anchor scorers** -- the numbers to put beside a published table. ``llava_med_*``: LLaVA-Med's
  released VQA scorer (microsoft/LLaVA-Med commit b9a98a7, ``llava/eval/run_eval.py`` and
  ``llava/eval/eval_metrics/``), transcribed with its quirks (substring yes/no rule, the
  ``normalize_word`` period count of 32, double normalisation, its "exact match" ratio).
  ``quilt_llava_closed_accuracy``: Quilt-LLaVA's ``quilt_eval.py`` yes/no rule, the one place its
  released evaluation differs from LLaVA-Med's. ``pathinsight_*``: PathInsight (Wu et al.,
  Section 3.1, Table 2) classification precision / recall / F1 -- micro over items, precision =
  correct / parseable answers, recall = correct / items (every Table 2 row has F1 = 2R / (1 + R),
  i.e. P ~ 1 for base models that mostly answer off-format; the paper releases no code).
* **medadapt's own rules** -- ``strict_*`` (whole-word yes/no, string-equality exact match after
  :func:`strict_normalize`, BLEU-1 on raw tokens), sacrebleu corpus BLEU, rouge-score ROUGE, and
  the classification levels / macro scores below.

Classification: free-text answers are mapped to class codes in three cumulative levels,
reported separately -- ``exact`` (the normalised answer *is* a class name or code, also after
dropping a lead-in such as "this is" / "the tissue shows"),
``synonym`` (it contains as whole words a name / code / synonym of exactly one class; a phrase
inside a longer match -- "tumor" in "tumor stroma" -- does not count on its own), ``fuzzy``
(the same after correcting typos word by word: a word of 4+ letters that is no word of any
class phrase is replaced by the single closest such word with difflib ratio >= ``fuzzy_cutoff``
and one edit away, two from 8 letters on). An answer naming
two classes is unparseable at every level, and a real vocabulary word is never "corrected"
into another ("mucosa" is not a typo of "mucous"). Unparseable answers are not predictions:
they lower recall, not precision. Micro P / R / F1 (= ``pathinsight_*``) and macro P / R / F1
(over the classes present in the references or the predictions; an absent class is not a 0)
come from scikit-learn.
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
        for m in ("precision", "recall", "f1"):  # PathInsight's Table 2 definition is the micro one
            out[level][f"pathinsight_{m}"] = out[level][f"micro_{m}"]
    out["mapped"] = [{"label": c, "level": lv} for c, lv in mapped]
    out["scorers"] = {f"<level>.{k}": SCORERS[k] for k in ("pathinsight_precision", "pathinsight_recall",
                                                            "pathinsight_f1")}
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


def text_scores(preds: list[str], refs: list[str]) -> dict[str, Any]:
    """Caption / conversation metrics: ``llava_med_bleu1`` (LLaVA-Med's BLEU-1, after its
    ``normalize_word``), ``strict_bleu1`` (raw tokens), sacrebleu corpus BLEU-1/4, ROUGE-1 / ROUGE-L
    precision, recall, F1 (rouge-score); ``scorers`` names the scorer of each key."""
    r = rouge(preds, refs)
    out = {"n": len(preds),
           "llava_med_bleu1": bleu1_sentence_mean(preds, refs, llava_med_bleu1),
           "strict_bleu1": bleu1_sentence_mean(preds, refs, strict_bleu1),
           "bleu1_sacrebleu_corpus": bleu(preds, refs, 1, "corpus"),
           "bleu4_sacrebleu_corpus": bleu(preds, refs, 4, "corpus"),
           "rouge1_f1": r["rouge1"]["f1"], "rouge1_recall": r["rouge1"]["recall"],
           "rouge1_precision": r["rouge1"]["precision"],
           "rougeL_f1": r["rougeL"]["f1"], "rougeL_recall": r["rougeL"]["recall"],
           "rougeL_precision": r["rougeL"]["precision"]}
    out["scorers"] = {k: SCORERS[k] for k in out if k in SCORERS}
    return out


# --- LLaVA-Med's released VQA scorer (anchor) ---------------------------------------------------
# A transcription of the behaviour of microsoft/LLaVA-Med commit b9a98a7 (the last commit with the
# v1.0 VQA scorer): llava/eval/run_eval.py ``evaluate()`` and llava/eval/eval_metrics/
# glossary.py (``normalize_word``), evaluate_metrics.py (``calculate_exactmatch``,
# ``calculate_f1score``) and utils.py (``split_sentence``). Quirks are kept on purpose: they are
# what the published PathVQA numbers were computed with.
LLAVA_MED_SOURCE = "microsoft/LLaVA-Med@b9a98a7 llava/eval/run_eval.py + llava/eval/eval_metrics/"
QUILT_LLAVA_SOURCE = "aldraus/quilt-llava@a7a9a4c llava/eval/quilt_eval.py + quilt_utils.py"

_LM_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
             ",", "?", "!"]  # glossary.py ``punct``, in its order
# glossary.py ``period_strip`` is "(?!<=\d)(\.)(?!\d)": its first group is a look-*ahead* for the
# two characters "<=" and a digit, which can never start where a "." is, so only "(?!\d)" acts.
_LM_PERIOD = re.compile(r"\.(?!\d)")
# ``period_strip.sub("", token, re.UNICODE)``: the third positional argument of Pattern.sub is the
# *count*, so at most re.UNICODE = 32 periods go per call (a 40-period tail keeps 8).
LLAVA_MED_PERIOD_COUNT = int(re.UNICODE)
_LM_COMMA = re.compile(r"(\d)(,)(\d)")
_LM_NUM = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
           "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
# glossary.py ``contractions`` (VQA-v2's table) as "from:to" pairs; its keys with capitals (Im, Ive,
# Id've, I'dve) never match the lower-cased words and two map a word to itself, so they are left out.
_LM_CONTRACTIONS = dict(pair.split(":") for pair in """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's
howd:how'd howll:how'll hows:how's isnt:isn't itd:it'd itd've:it'd've it'dve:it'd've itll:it'll
maam:ma'am mightnt:mightn't mightnt've:mightn't've mightn'tve:mightn't've mightve:might've
mustnt:mustn't mustve:must've neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't
ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've
shouldve:should've shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've
somebody'd:somebodyd somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll
somebodys:somebody's someoned:someone'd someoned've:someone'd've someone'dve:someone'd've
someonell:someone'll someones:someone's somethingd:something'd somethingd've:something'd've
something'dve:something'd've somethingll:something'll thats:that's thered:there'd
thered've:there'd've there'dve:there'd've therere:there're theres:there's theyd:they'd
theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas
wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've werent:weren't whatll:what'll whatre:what're
whats:what's whatve:what've whens:when's whered:where'd wheres:where's whereve:where've whod:who'd
whod've:who'd've who'dve:who'd've wholl:who'll whos:who's whove:who've whyll:why'll whyre:why're
whys:why's wont:won't wouldve:would've wouldnt:wouldn't wouldnt've:wouldn't've
wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll yall'd've:y'all'd've
y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've you'dve:you'd've
youll:you'll youre:you're youve:you've
""".split())


def llava_med_normalize(text: str) -> str:
    """LLaVA-Med's ``normalize_word`` (glossary.py @ b9a98a7), quirks included.

    1. each character of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` in turn is deleted if the
       *input* text has it next to a space (or the input has a digit,digit anywhere), otherwise
       replaced by a space -- so "Yes, it is" -> "Yes it is" but "Yes,cardiovascular" ->
       "Yes cardiovascular";
    2. at most 32 periods not followed by a digit are deleted (the ``re.UNICODE`` count quirk);
    3. lower case, whitespace split, number words none/zero..ten -> 0..10, articles a/an/the
       dropped, VQA contractions restored ("isnt" -> "isn't"), words joined by one space, and
       every remaining "," deleted.
    """
    out = text
    number_comma = _LM_COMMA.search(text) is not None
    for p in _LM_PUNCT:
        out = out.replace(p, "" if (p + " " in text or " " + p in text or number_comma) else " ")
    out = _LM_PERIOD.sub("", out, count=LLAVA_MED_PERIOD_COUNT)
    words = [_LM_NUM.get(w, w) for w in out.lower().split()]
    words = [_LM_CONTRACTIONS.get(w, w) for w in words if w not in ("a", "an", "the")]
    return " ".join(words).replace(",", "")


def llava_med_prepare(text: str) -> str:
    """What ``run_eval.evaluate`` makes of an answer before scoring: ``normalize_word(text.lower())``."""
    return llava_med_normalize(text.lower())


def _lm_words(text: str) -> Counter:
    """utils.py ``split_sentence(text, 1)`` of a text as ``calculate_f1score`` /
    ``calculate_exactmatch`` see it (normalised twice: :func:`llava_med_prepare` in ``evaluate``,
    then ``normalize_word`` again): word counts of the lower-cased, whitespace-split text."""
    return Counter(llava_med_normalize(llava_med_prepare(text)).lower().split())


def _nltk_bleu1(ref: list[str], hyp: list[str]) -> float:
    """nltk ``sentence_bleu([ref], hyp, weights=(1, 0, 0, 0))``, no smoothing, warnings off."""
    import warnings

    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sentence_bleu([ref], hyp, weights=(1, 0, 0, 0)))


def llava_med_prf(pred: str, ref: str) -> tuple[float, float, float]:
    """(F1, precision, recall) of one open answer as LLaVA-Med computes them.

    ``run_eval.evaluate`` normalises both texts (:func:`llava_med_prepare`) and
    ``calculate_f1score`` normalises them *again* (so a 40-period tail is gone here though not in
    BLEU). With word counts C (answer) and R (reference): tp = sum of C[w] over answer words also
    in the reference (the answer's count, not the minimum), fp = C[w] of the other answer words,
    fn = R[w] of reference words absent from the answer; precision = tp / (tp + fp), recall =
    tp / (tp + fn); (0, 0, 0) when either text is empty or tp = 0.
    """
    c, r = _lm_words(pred), _lm_words(ref)
    if not c or not r:
        return 0.0, 0.0, 0.0
    tp = sum(n for w, n in c.items() if w in r)
    fp = sum(n for w, n in c.items() if w not in r)
    fn = sum(n for w, n in r.items() if w not in c)
    if tp == 0:
        return 0.0, 0.0, 0.0
    prec, rec = tp / (tp + fp), tp / (tp + fn)
    return 2 * prec * rec / (prec + rec), prec, rec


def llava_med_exact_match(pred: str, ref: str) -> float:
    """LLaVA-Med's "exact match score" of one open answer (``calculate_exactmatch``, after the
    same double normalisation as :func:`llava_med_prf`): the number of *distinct* reference words
    found in the answer divided by the answer's word count (with repeats); 0 for an empty answer.
    Not string equality: "carcinoma" for "squamous cell carcinoma" scores 1."""
    c, r = _lm_words(pred), _lm_words(ref)
    total = sum(c.values())
    return sum(1 for w in r if w in c) / total if total else 0.0


def llava_med_bleu1(pred: str, ref: str) -> float:
    """LLaVA-Med's ``bleu_score_1`` of one answer: nltk ``sentence_bleu([ref], pred,
    weights=(1, 0, 0, 0))`` on the whitespace tokens of the *once*-normalised, lower-cased texts
    (:func:`llava_med_prepare`; no smoothing)."""
    return _nltk_bleu1(llava_med_prepare(ref).lower().split(), llava_med_prepare(pred).lower().split())


def llava_med_closed_correct(pred: str, ref: str) -> bool:
    """LLaVA-Med's yes/no rule (run_eval.py @ b9a98a7, CLOSED branch), on the once-normalised
    texts: right when "yes" or "no" occurs in the answer *as a substring* and the reference does
    too. So "no" inside "not" / "know" / "normal" / "nodule" and "yes" inside "eyes" count, and an
    answer naming both words is right whatever the reference."""
    p, g = llava_med_prepare(pred), llava_med_prepare(ref)
    return ("yes" in p or "no" in p) and g in p


def quilt_llava_closed_correct(pred: str, ref: str) -> bool:
    """Quilt-LLaVA's yes/no rule (``quilt_eval.py`` @ a7a9a4c): the once-normalised answer, commas
    dropped, split on single spaces, means "no" if one of its words is "no" or "not" (or "No",
    which lower-casing never leaves), else "yes" -- so an empty or off-topic answer is "yes"; right
    when that equals the normalised reference (Quilt asserts the reference is yes / no; any other
    reference is counted wrong here)."""
    words = llava_med_prepare(pred).replace(",", "").split(" ")
    said = "no" if ("No" in words or "not" in words or "no" in words) else "yes"
    return said == llava_med_prepare(ref)


# --- medadapt's stricter rules ----------------------------------------------------------------
_STRICT_SPACE = str.maketrans({c: " " for c in string.punctuation if c != "'"})


def strict_normalize(text: str) -> str:
    """medadapt's normaliser: lower case; apostrophes dropped ("don't" -> "dont"); a comma between
    digits dropped ("1,000" -> "1000") and a period between digits kept ("3.5"); every other
    punctuation mark becomes a space, so glued words split ("Yes,cardiovascular" -> "yes
    cardiovascular", "Liver........" -> "liver"); articles a/an/the dropped; single spaces."""
    t = text.lower().replace("'", "").replace("\u2019", "")
    t = re.sub(r"(?<=\d),(?=\d)", "", t)
    t = re.sub(r"(?<=\d)\.(?=\d)", "\0", t).translate(_STRICT_SPACE).replace("\0", ".")
    t = _ARTICLES.sub(" ", t)
    return " ".join(t.split())


normalize = strict_normalize  # the name the classification mapping and older callers use


def strict_closed_correct(pred: str, ref: str) -> bool:
    """medadapt's yes/no rule: the reference word is a *word* of the strictly normalised answer
    and the other word is not ("The answer is yes." right; "yes and no", "I do not know",
    "Eyes" wrong)."""
    words = set(strict_normalize(pred).split())
    want = strict_normalize(ref)
    other = "no" if want == "yes" else "yes"
    return want in words and other not in words


closed_correct = strict_closed_correct  # old name


def is_closed(ref: str) -> bool:
    """A closed (yes / no) question: its reference is "yes" or "no" (PathVQA's yes/no questions;
    Quilt-LLaVA's ``convert_pvqa_for_eval.py`` tags them CLOSED the same way)."""
    return strict_normalize(ref) in ("yes", "no")


def strict_bleu1(pred: str, ref: str) -> float:
    """medadapt's strict BLEU-1 of one answer: nltk ``sentence_bleu([ref], pred, weights=(1, 0, 0,
    0))`` on the raw lower-cased whitespace tokens, punctuation left on its word ("cells." is not
    "cells"); 0 when either side is empty."""
    hyp, r = pred.lower().split(), ref.lower().split()
    return _nltk_bleu1(r, hyp) if hyp and r else 0.0


sentence_bleu1 = strict_bleu1  # old name


def bleu1_sentence_mean(preds: list[str], refs: list[str], one=strict_bleu1) -> float:
    """Mean of ``one(pred, ref)`` over the items (default :func:`strict_bleu1`)."""
    return sum(one(p, r) for p, r in zip(preds, refs)) / len(preds) if preds else 0.0


# Which scorer produced each metrics.json key (written beside the numbers and in the docs).
_LM = f"LLaVA-Med released scorer ({LLAVA_MED_SOURCE})"
SCORERS: dict[str, str] = {
    "llava_med_closed_accuracy": _LM + ": yes/no accuracy, substring rule",
    "llava_med_open_recall": _LM + ": calculate_f1score recall, mean over open questions",
    "llava_med_open_precision": _LM + ": calculate_f1score precision, mean over open questions",
    "llava_med_open_f1": _LM + ": calculate_f1score F1, mean over open questions",
    "llava_med_open_exact_match": _LM + ": calculate_exactmatch (distinct reference words found / answer "
                                  "words), mean over open questions",
    "llava_med_open_bleu1": _LM + ": bleu_score_1, nltk sentence BLEU-1 after normalize_word, mean over open questions",
    "quilt_llava_closed_accuracy": f"Quilt-LLaVA released scorer ({QUILT_LLAVA_SOURCE}): yes/no accuracy, "
                                   "answer is 'no' iff a word is no/not",
    "strict_closed_accuracy": "medadapt strict rule: reference word is a word of the answer and the other word is not",
    "strict_open_exact_match": "medadapt strict rule: strictly normalised answer == reference, mean over open questions",
    "strict_exact_match": "medadapt strict rule: strictly normalised answer == reference, mean over all questions",
    "llava_med_bleu1": _LM + ": nltk sentence BLEU-1 after normalize_word, mean over items",
    "strict_bleu1": "medadapt strict rule: nltk sentence BLEU-1 on raw lower-cased whitespace tokens, mean over items",
    "bleu1_sacrebleu_corpus": "sacrebleu corpus BLEU-1 (13a tokenizer, lower-cased)",
    "bleu4_sacrebleu_corpus": "sacrebleu corpus BLEU-4 (13a tokenizer, lower-cased)",
    "rouge1_f1": "Google rouge-score ROUGE-1 F1 (no stemming), mean over items",
    "rouge1_recall": "Google rouge-score ROUGE-1 recall (no stemming), mean over items",
    "rouge1_precision": "Google rouge-score ROUGE-1 precision (no stemming), mean over items",
    "rougeL_f1": "Google rouge-score ROUGE-L F1 (no stemming), mean over items",
    "rougeL_recall": "Google rouge-score ROUGE-L recall (no stemming), mean over items",
    "rougeL_precision": "Google rouge-score ROUGE-L precision (no stemming), mean over items",
    "pathinsight_f1": "PathInsight Table 2 F1: micro over items, unparseable answers not predictions (= micro_f1)",
    "pathinsight_recall": "PathInsight Table 2 recall: correct / items (= micro_recall)",
    "pathinsight_precision": "PathInsight Table 2 precision: correct / parseable answers (= micro_precision)",
    "accuracy": "medadapt: correct / items after label mapping (scikit-learn accuracy_score)",
    "macro_f1": "medadapt: scikit-learn macro F1 over the classes present in references or predictions",
    "unparseable": "medadapt: answers mapped to no class",
}


def vqa_scores(preds: list[str], refs: list[str]) -> dict[str, Any]:
    """PathVQA / VQA metrics, split by closed (yes / no reference, :func:`is_closed`) and open.

    ``llava_med_*`` equal LLaVA-Med's released ``run_eval.py`` (b9a98a7) on the same answers;
    ``quilt_llava_closed_accuracy`` is Quilt-LLaVA's ``quilt_eval.py`` yes/no rule (its open
    metrics are the same functions as LLaVA-Med's, so they are not repeated); ``strict_*`` are
    medadapt's own rules. A mean over no questions is None (the official code divides by zero
    for open and prints 0.0 for closed).
    """
    closed = [(p, r) for p, r in zip(preds, refs) if is_closed(r)]
    opened = [(p, r) for p, r in zip(preds, refs) if not is_closed(r)]
    mean = lambda xs: (sum(xs) / len(xs)) if xs else None
    prf_open = [llava_med_prf(p, r) for p, r in opened]
    strict_eq = lambda p, r: float(strict_normalize(p) == strict_normalize(r))
    out = {
        "n": len(preds), "n_closed": len(closed), "n_open": len(opened),
        "llava_med_closed_accuracy": mean([float(llava_med_closed_correct(p, r)) for p, r in closed]),
        "llava_med_open_recall": mean([x[2] for x in prf_open]),
        "llava_med_open_precision": mean([x[1] for x in prf_open]),
        "llava_med_open_f1": mean([x[0] for x in prf_open]),
        "llava_med_open_exact_match": mean([llava_med_exact_match(p, r) for p, r in opened]),
        "llava_med_open_bleu1": mean([llava_med_bleu1(p, r) for p, r in opened]),
        "quilt_llava_closed_accuracy": mean([float(quilt_llava_closed_correct(p, r)) for p, r in closed]),
        "strict_closed_accuracy": mean([float(strict_closed_correct(p, r)) for p, r in closed]),
        "strict_open_exact_match": mean([strict_eq(p, r) for p, r in opened]),
        "strict_exact_match": mean([strict_eq(p, r) for p, r in zip(preds, refs)]),
    }
    out["scorers"] = {k: SCORERS[k] for k in out if k in SCORERS}
    return out
