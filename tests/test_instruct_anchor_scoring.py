"""The anchor-named keys (``llava_med_*``, ``quilt_llava_*``) against a re-statement of the anchors'
released scorers, written here from reading them (not imported):

* LLaVA-Med, commit b9a98a7: ``llava/eval/run_eval.py`` ``evaluate()``,
  ``llava/eval/eval_metrics/glossary.py`` ``normalize_word``, ``evaluate_metrics.py``
  ``calculate_exactmatch`` / ``calculate_f1score``, ``utils.py`` ``split_sentence``;
* Quilt-LLaVA, commit a7a9a4c: ``llava/eval/quilt_eval.py`` ``evaluate()`` (closed branch).

Every quirk of theirs can be switched off in the re-statement; ``test_answer_set_exercises_quirk``
shows that switching any one off changes a value on ANSWERS, so the equality test would fail if
medadapt's scorer lost that quirk.
"""
import math
import re

import pytest

from medadapt.instruct import scoring

# (answer, reference): every case of the issue on PathVQA-like references
ANSWERS = [
    # closed
    ("Yes, it is.", "yes"), ("It is not.", "no"), ("It is not.", "yes"), ("No", "no"),
    ("yes and no", "no"), ("yes and no", "yes"), ("Eyes are visible", "yes"), ("Eyes", "no"),
    ("I don't know", "no"), ("normal", "no"), ("nodule present", "no"), ("", "yes"), ("", "no"),
    ("Yes,cardiovascular", "yes"), ("no" + "." * 40, "no"), ("Maybe", "yes"), ("no, yes", "yes"),
    ("Not sure", "yes"), ("know", "yes"), ("Yes" + "." * 70, "yes"), ("NO.", "no"),
    # open
    ("Liver" + "." * 40, "liver"), ("Liver" + "." * 70, "liver"), ("3", "three"), ("three", "3"),
    ("Yes,cardiovascular", "cardiovascular"), ("The answer is cardiovascular.", "Cardiovascular"),
    ("carcinoma", "squamous cell carcinoma"), ("squamous cell carcinoma", "Squamous cell carcinoma"),
    ("liver liver kidney", "liver spleen"), ("", "liver"), ("dont know", "don't know"),
    ("(hepatobiliary)", "hepatobiliary"), ("1,2 kidney(left)", "kidney left"),
    ("It is an oral lesion; oral.", "oral"), ("x,y 3.5 kidney", "kidney"), ("two cells", "2 cells"),
    ("Liver.Kidney", "liver kidney"), ("endocrine - pancreas", "endocrine"), ("no", "endocrine"),
]

# --- the re-statement (names follow the released code) --------------------------------------
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
CONTRACTIONS = {"dont": "don't", "isnt": "isn't", "somebody'd": "somebodyd"}  # the entries ANSWERS meet
ON = dict(count=re.UNICODE, glued_space=True, numbers=True, contractions=True, twice=True,
          substring=True, em_ratio=True, tp_answer_count=True)


def normalize_word(token, q):
    _token = token
    for p in PUNCT:
        if (p + " " in token or " " + p in token) or (re.search(COMMA_STRIP, token) != None):  # noqa: E711
            _token = _token.replace(p, "")
        else:
            _token = _token.replace(p, " " if q["glued_space"] else "")
    token = PERIOD_STRIP.sub("", _token, q["count"])  # the count quirk: 3rd positional = count
    out = []
    for word in token.lower().split():
        word = MANUAL_MAP.get(word, word) if q["numbers"] else word
        if word not in ["a", "an", "the"]:
            out.append(word)
    if q["contractions"]:
        out = [CONTRACTIONS.get(w, w) for w in out]
    return " ".join(out).replace(",", "")


def split_sentence(s):
    words = {}
    for w in s.lower().strip().split():
        words[w] = words.get(w, 0) + 1
    return words


def calculate_exactmatch(cand, ref, q):
    if q["twice"]:
        cand, ref = normalize_word(cand, q), normalize_word(ref, q)
    if not q["em_ratio"]:
        return float(cand == ref)
    c, r = split_sentence(cand), split_sentence(ref)
    total = sum(c.values())
    return sum(1 for w in r if w in c) / total if total else 0


def calculate_f1score(cand, ref, q):
    if q["twice"]:
        cand, ref = normalize_word(cand, q), normalize_word(ref, q)
    c, r = split_sentence(cand), split_sentence(ref)
    tp = fp = fn = 0
    for w in set(c) | set(r):
        if w in c and w in r:
            tp += c[w] if q["tp_answer_count"] else min(c[w], r[w])
        elif w in c:
            fp += c[w]
        else:
            fn += r[w]
    if not c or not r:
        return 0, 0, 0
    p, rec = tp / (tp + fp), tp / (tp + fn)
    return (0, 0, 0) if tp == 0 else (2 * p * rec / (p + rec), p, rec)


def bleu1(hyp, ref):
    """nltk sentence_bleu(weights=(1, 0, 0, 0)) by hand: BP * clipped unigram precision."""
    h, r = hyp.lower().split(), ref.lower().split()
    matches = sum(min(n, r.count(w)) for w, n in split_sentence(" ".join(h)).items())
    if not h or matches == 0:
        return 0.0
    bp = 1.0 if len(h) > len(r) else math.exp(1 - len(r) / len(h))
    return bp * matches / len(h)


def closed_hit(pred_value, gt_value, q):
    if q["substring"]:
        return int(("yes" in pred_value or "no" in pred_value) and gt_value in pred_value)
    words = pred_value.split()
    return int(gt_value in words and ({"yes", "no"} - {gt_value}).pop() not in words)


def quilt_closed_hit(pred_value, gt_value):
    words = pred_value.replace(",", "").split(" ")
    pred_answer = "no" if ("No" in words or "not" in words or "no" in words) else "yes"
    return int(pred_answer == gt_value)


def official(answers, **quirks):
    """run_eval.evaluate (LLaVA-Med) + quilt_eval.evaluate's closed accuracy, as fractions."""
    q = {**ON, **quirks}
    closed, quilt, em, f1, prec, rec, b1 = [], [], [], [], [], [], []
    for pred, gt in answers:
        gt_value, pred_value = normalize_word(gt.lower(), q), normalize_word(pred.lower(), q)
        if gt.lower() in ("yes", "no"):
            closed.append(closed_hit(pred_value, gt_value, q))
            quilt.append(quilt_closed_hit(pred_value, gt_value))
        else:
            em.append(calculate_exactmatch(pred_value, gt_value, q))
            f, p, r = calculate_f1score(pred_value, gt_value, q)
            f1.append(f), prec.append(p), rec.append(r)
            b1.append(bleu1(pred_value, gt_value))
    mean = lambda xs: sum(xs) / len(xs)
    return {"llava_med_closed_accuracy": mean(closed), "llava_med_open_exact_match": mean(em),
            "llava_med_open_f1": mean(f1), "llava_med_open_precision": mean(prec),
            "llava_med_open_recall": mean(rec), "llava_med_open_bleu1": mean(b1),
            "quilt_llava_closed_accuracy": mean(quilt)}


# --- tests ------------------------------------------------------------------------------------
def test_anchor_keys_equal_official_transcription():
    ours = scoring.vqa_scores([p for p, _ in ANSWERS], [r for _, r in ANSWERS])
    want = official(ANSWERS)
    assert ours["n_closed"] == sum(r in ("yes", "no") for _, r in ANSWERS)
    for k, v in want.items():
        assert abs(ours[k] - v) < 1e-9, (k, ours[k], v)


@pytest.mark.parametrize("quirk,off,key", [
    ("count", 0, "llava_med_open_bleu1"),              # all periods stripped: "liver" + 40 -> BLEU 1
    ("count", 0, "llava_med_open_f1"),                 # ... and + 70 -> F1 1
    ("twice", False, "llava_med_open_recall"),         # single normalisation leaves 8 periods
    ("glued_space", False, "llava_med_open_recall"),   # "Yes,cardiovascular" -> "yescardiovascular"
    ("numbers", False, "llava_med_open_recall"),       # "3" for "three"
    ("contractions", False, "llava_med_open_recall"),  # "dont know" for "don't know"
    ("substring", False, "llava_med_closed_accuracy"),  # "no" inside "not", "yes" inside "eyes"
    ("em_ratio", False, "llava_med_open_exact_match"),  # ratio, not string equality
    ("tp_answer_count", False, "llava_med_open_precision"),  # tp counts the answer's repeats
])
def test_answer_set_exercises_quirk(quirk, off, key):
    assert abs(official(ANSWERS, **{quirk: off})[key] - official(ANSWERS)[key]) > 1e-6


@pytest.mark.parametrize("text,want", [
    ("Yes, it is.", "yes it is"), ("Yes,cardiovascular", "yes cardiovascular"),
    ("Liver" + "." * 40, "liver" + "." * 8), ("three", "3"), ("The two cells.", "2 cells"),
    ("isnt it", "isn't it"), ("1,2 kidney(left)", "12 kidneyleft"), ("3.5 cm.", "3.5 cm"),
    ("x,y kidney", "x y kidney"), ("Eyes", "eyes"), ("somebody'd", "somebodyd"),
])
def test_llava_med_normalize_cases(text, want):
    assert scoring.llava_med_prepare(text) == want
    assert scoring.llava_med_prepare(text) == normalize_word(text.lower(), ON)


def test_llava_med_period_count_and_double_normalisation():
    assert scoring.LLAVA_MED_PERIOD_COUNT == 32
    forty, seventy = "Liver" + "." * 40, "Liver" + "." * 70
    # F1 / recall / exact match see the text normalised twice: 40 periods all gone, 70 leave 6
    assert scoring.llava_med_prf(forty, "liver") == (1.0, 1.0, 1.0)
    assert scoring.llava_med_prf(seventy, "liver") == (0.0, 0.0, 0.0)
    assert scoring.llava_med_exact_match(forty, "liver") == 1.0
    # BLEU-1 sees it normalised once: "liver........" is not "liver"
    assert scoring.llava_med_bleu1(forty, "liver") == 0.0
    assert scoring.llava_med_bleu1("Liver" + "." * 32, "liver") == 1.0


def test_llava_med_exact_match_and_f1_definitions():
    assert scoring.llava_med_exact_match("carcinoma", "squamous cell carcinoma") == 1.0
    assert scoring.llava_med_exact_match("liver liver", "liver") == 0.5   # distinct found / answer words
    assert scoring.llava_med_exact_match("", "liver") == 0.0
    f1, p, r = scoring.llava_med_prf("liver liver kidney", "liver spleen")  # tp = 2 (the answer's count)
    assert (p, r) == pytest.approx((2 / 3, 2 / 3)) and f1 == pytest.approx(2 / 3)
    assert scoring.llava_med_prf("3", "three") == (1.0, 1.0, 1.0)


def test_llava_med_contraction_table():
    assert len(scoring._LM_CONTRACTIONS) == 114   # 120 entries less 4 with capitals, 2 identities
    assert all(k == k.lower() for k in scoring._LM_CONTRACTIONS)
    for k, v in CONTRACTIONS.items():
        assert scoring._LM_CONTRACTIONS[k] == v


@pytest.mark.parametrize("pred,ref,want", [
    ("It is not.", "no", True), ("Eyes", "yes", True), ("", "yes", True), ("", "no", False),
    ("I don't know", "no", False), ("nodule", "no", False), ("yes and no", "yes", False),
    ("No, it is not.", "no", True), ("normal", "yes", True),
])
def test_quilt_llava_closed_rule(pred, ref, want):
    assert scoring.quilt_llava_closed_correct(pred, ref) is want
    assert quilt_closed_hit(normalize_word(pred.lower(), ON), ref) == want


# --- medadapt's strict rules ------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("Yes,cardiovascular", "yes cardiovascular"), ("Yes, it is.", "yes it is"),
    ("Liver" + "." * 40, "liver"), ("1,000 cells", "1000 cells"), ("3.5 cm.", "3.5 cm"),
    ("Don't know", "dont know"), ("The T-cells.", "t cells"), ("three", "three"),
    ("Liver.Kidney", "liver kidney"), ("  An   oral lesion ", "oral lesion"),
])
def test_strict_normalize(text, want):
    assert scoring.strict_normalize(text) == want


def test_strict_keys_differ_from_anchor_where_documented():
    # the docs/instruct.md examples, one per strict key
    r = scoring.vqa_scores(["It is not."], ["no"])
    assert (r["llava_med_closed_accuracy"], r["strict_closed_accuracy"]) == (1.0, 0.0)
    r = scoring.vqa_scores(["carcinoma"], ["squamous cell carcinoma"])
    assert (r["llava_med_open_exact_match"], r["strict_open_exact_match"]) == (1.0, 0.0)
    r = scoring.vqa_scores(["3"], ["three"])
    assert (r["llava_med_open_recall"], r["strict_exact_match"]) == (1.0, 0.0)
    r = scoring.text_scores(["Lymphocytes."], ["lymphocytes"])
    assert (r["llava_med_bleu1"], r["strict_bleu1"]) == (1.0, 0.0)
    r = scoring.vqa_scores(["Yes,cardiovascular", "Liver" + "." * 40], ["yes", "liver"])
    assert (r["strict_closed_accuracy"], r["strict_open_exact_match"]) == (1.0, 1.0)


def test_empty_groups_are_none():
    r = scoring.vqa_scores(["yes"], ["yes"])
    assert r["n_open"] == 0 and r["llava_med_open_recall"] is None and r["llava_med_closed_accuracy"] == 1.0


def test_comparison_names_scorers_and_reads_old_results():
    from medadapt.instruct.eval import comparison, comparison_markdown

    new = {"model": "new", "results": {"vqa/pathvqa": {"task": "vqa", **scoring.vqa_scores(["It is not."], ["no"])}}}
    old = {"model": "old", "results": {
        "vqa/pathvqa": {"task": "vqa", "closed_accuracy": 0.0, "open_recall": 0.5},
        "classification/crc": {"task": "classification", "counts": {"unparseable": 1},
                               "fuzzy": {"micro_f1": 0.4, "micro_recall": 0.25, "accuracy": 0.25},
                               "exact": {"micro_f1": 0.2}},
        "caption/quilt": {"task": "caption", "bleu1_nltk_sentence_mean": 0.3, "rouge1_f1": 0.2}}}
    t = comparison([new, old])
    row_new, row_old = t["rows"]
    assert row_new["pathvqa closed acc [LLaVA-Med]"] == 1.0 and row_new["pathvqa closed acc strict"] == 0.0
    assert row_old["pathvqa closed acc [LLaVA-Med]"] is None          # not the same computation
    assert row_old["crc F1 [PathInsight]"] == 0.4 and row_old["quilt BLEU-1 strict"] == 0.3
    assert row_old["quilt BLEU-1 [LLaVA-Med]"] is None
    assert t["scorers"]["pathvqa closed acc [LLaVA-Med]"].startswith("llava_med_closed_accuracy: LLaVA-Med")
    assert "b9a98a7" in t["scorers"]["pathvqa open recall [LLaVA-Med]"]
    assert t["scorers"]["crc F1 [PathInsight]"].startswith("fuzzy.pathinsight_f1: PathInsight")
    md = comparison_markdown(t)
    assert "- pathvqa closed acc [Quilt-LLaVA]: quilt_llava_closed_accuracy: Quilt-LLaVA" in md
