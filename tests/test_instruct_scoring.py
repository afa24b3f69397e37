"""Scoring functions against hand-computed values (PathInsight Section 3.1 metrics)."""
import math

import pytest

from medadapt.instruct import scoring
from medadapt.instruct.labels import CRC

REF = "the cat sat on the mat"


def test_bleu1_hand_computed():
    # 5 of 5 unigrams match (clipped), c=5 < r=6 -> BP = exp(1 - 6/5)
    assert scoring.bleu(["the cat on the mat"], [REF], 1) == pytest.approx(math.exp(-0.2), abs=1e-6)
    # clipping: "the" appears once in the reference -> 1/3, c=3 > r=2 -> BP = 1
    assert scoring.bleu(["the the the"], ["the cat"], 1) == pytest.approx(1 / 3, abs=1e-6)
    # sentence-level mean gives the same on one sentence
    assert scoring.bleu(["the cat on the mat"], [REF], 1, level="sentence") == pytest.approx(
        math.exp(-0.2), abs=1e-6)


def test_rouge1_hand_computed():
    r = scoring.rouge(["the cat on the mat"], [REF])["rouge1"]
    assert r["precision"] == pytest.approx(1.0)
    assert r["recall"] == pytest.approx(5 / 6)
    assert r["f1"] == pytest.approx(10 / 11)
    r = scoring.rouge(["a cat sat"], [REF])["rouge1"]  # overlap {cat, sat}: P 2/3, R 2/6
    assert r["f1"] == pytest.approx(4 / 9)


def test_predictions_are_never_truncated_to_reference_length():
    long = REF + " and many other words here"  # 11 tokens, 6 of them match
    r = scoring.text_scores([long], [REF])
    assert r["rouge1_f1"] == pytest.approx(2 * (6 / 11) * 1 / (6 / 11 + 1))  # 12/17, not 1.0
    assert r["rouge1_recall"] == pytest.approx(1.0)
    assert r["bleu1_sacrebleu_corpus"] == pytest.approx(6 / 11)  # BP = 1, precision 6/11
    assert r["strict_bleu1"] == pytest.approx(6 / 11)
    # LLaVA-Med's BLEU-1 normalises first: articles go, "cat sat on mat" + 5 words -> 4 / 9, BP 1
    assert r["llava_med_bleu1"] == pytest.approx(4 / 9)


def test_prf_small_confusion():
    y_true = ["A", "A", "A", "B", "B", "C"]
    y_pred = ["A", "A", "B", "B", "C", "C"]
    m = scoring.prf(y_true, y_pred, ["A", "B", "C"])
    pc = m["per_class"]
    assert (pc["A"]["precision"], pc["A"]["recall"], pc["A"]["f1"]) == pytest.approx((1, 2 / 3, 0.8))
    assert (pc["B"]["precision"], pc["B"]["recall"], pc["B"]["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (pc["C"]["precision"], pc["C"]["recall"], pc["C"]["f1"]) == pytest.approx((0.5, 1, 2 / 3))
    assert m["micro_f1"] == pytest.approx(4 / 6) and m["micro_precision"] == pytest.approx(4 / 6)
    assert m["macro_precision"] == pytest.approx(2 / 3)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)


def test_label_mapping_levels_reported_separately():
    classes = {"A": {"name": "alpha", "synonyms": ["first"]}, "B": {"name": "beta", "synonyms": []}}
    res = scoring.classification_scores(["Alpha.", "the first one", "betta", "no idea"],
                                        ["A", "A", "B", "B"], classes)
    assert res["counts"] == {"exact": 1, "synonym": 1, "fuzzy": 1, "unparseable": 1}
    assert res["exact"]["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)   # A: P 1, R 1/2
    assert res["synonym"]["macro_f1"] == pytest.approx((1 + 0) / 2)
    assert res["exact"]["micro_precision"] == 1.0 and res["exact"]["micro_recall"] == 0.25
    assert res["fuzzy"]["macro_f1"] == pytest.approx((1 + 2 / 3) / 2)   # B: P 1, R 1/2
    assert res["fuzzy"]["accuracy"] == pytest.approx(3 / 4)
    # the unparseable answer lowers recall of B and is no class of its own
    assert set(res["fuzzy"]["per_class"]) == {"A", "B"}


@pytest.mark.parametrize("answer,code,level", [
    ("Adipose tissue", "ADI", "exact"),
    ("This is adipose tissue.", "ADI", "exact"),
    ("fat", "ADI", "synonym"),
    ("The tissue shows lymphocytes.", "LYM", "exact"),   # lead-in "the tissue shows" dropped
    ("Mostly a lymphocytic infiltrate here", "LYM", "synonym"),
    ("tumor stroma", "STR", "synonym"),          # "tumor" inside a longer STR phrase
    ("Adipse tisue", "ADI", "fuzzy"),
    ("stroma and tumor", None, "unparseable"),   # names two classes
    ("banana", None, "unparseable"),
])
def test_map_label_crc(answer, code, level):
    assert scoring.map_label(answer, CRC["classes"]) == (code, level)


def test_vqa_scores_llava_med_and_strict_keys():
    r = scoring.vqa_scores(["Yes, it is.", "no", "squamous cell carcinoma", "carcinoma"],
                           ["yes", "yes", "Squamous cell carcinoma", "squamous cell carcinoma"])
    assert (r["n_closed"], r["n_open"]) == (2, 2)
    assert r["llava_med_closed_accuracy"] == pytest.approx(0.5) and r["strict_closed_accuracy"] == pytest.approx(0.5)
    assert r["strict_open_exact_match"] == pytest.approx(0.5) and r["strict_exact_match"] == pytest.approx(1 / 4)
    # LLaVA-Med's "exact match": distinct reference words found / answer words -> 3/3 and 1/1
    assert r["llava_med_open_exact_match"] == pytest.approx(1.0)
    assert r["llava_med_open_recall"] == pytest.approx((1 + 1 / 3) / 2)
    assert r["llava_med_open_f1"] == pytest.approx((1 + 2 * 1 * (1 / 3) / (1 + 1 / 3)) / 2)
    assert r["llava_med_open_precision"] == pytest.approx(1.0)
    assert set(r["scorers"]) == {k for k in r if k.startswith(("llava_med_", "quilt_llava_", "strict_"))}
    assert "b9a98a7" in r["scorers"]["llava_med_open_recall"]


@pytest.mark.parametrize("pred,ref,ok,llava_med", [
    ("The answer is yes.", "yes", True, True),       # not only the first word
    ("Yes", "yes", True, True),
    ("yes and no", "yes", False, True),              # both present: strict wrong, LLaVA-Med right
    ("No, there is no tumor.", "no", True, True),
    ("I do not know", "no", False, True),            # "not" / "know" are not the word "no"
    ("", "no", False, False),
    ("nodules are present", "no", False, True),
    ("Eyes", "yes", False, True),
    ("Yes,cardiovascular", "yes", True, True),       # glued punctuation splits
])
def test_closed_question_rule(pred, ref, ok, llava_med):
    assert scoring.strict_closed_correct(pred, ref) is ok
    assert scoring.vqa_scores([pred], [ref])["strict_closed_accuracy"] == float(ok)
    assert scoring.llava_med_closed_correct(pred, ref) is llava_med
    assert scoring.vqa_scores([pred], [ref])["llava_med_closed_accuracy"] == float(llava_med)


def test_open_recall_matches_llava_med_definition():
    # reference words found in the prediction / reference words, after LLaVA-Med's normalisation
    f1, p, r = scoring.llava_med_prf("There is an adenocarcinoma, with necrosis.", "Adenocarcinoma with mucin")
    assert r == pytest.approx(2 / 3) and p == pytest.approx(2 / 5)   # "there is adenocarcinoma with necrosis"
    assert scoring.llava_med_prf("", "x") == (0.0, 0.0, 0.0)
    assert scoring.llava_med_normalize("The two cells.") == "2 cells"


PAIRS = [  # (prediction, reference): empty, punctuation, case, sentences
    ("Lymphocytes.", "lymphocytes"), ("", "adipose tissue"), ("adipose tissue", ""),
    ("The tumour shows glands, necrosis and mucin", "Tumour with glands and necrosis."),
    ("SMOOTH MUSCLE", "smooth muscle bundles"), ("", ""),
]


def test_strict_bleu1_against_nltk():
    from nltk.translate.bleu_score import sentence_bleu
    # "Lymphocytes." vs "lymphocytes": strict BLEU-1 lower-cases and splits on spaces, so the period
    # stays on the word -> 0 (LLaVA-Med's normalises it away -> 1); sacrebleu splits it off -> 0.5
    assert scoring.llava_med_bleu1("Lymphocytes.", "lymphocytes") == 1.0
    assert scoring.sentence_bleu1("Lymphocytes", "lymphocytes") == 1.0
    assert scoring.sentence_bleu1("Lymphocytes.", "lymphocytes") == 0.0
    assert scoring.bleu(["Lymphocytes."], ["lymphocytes"], 1) == pytest.approx(0.5)  # "lymphocytes" "."
    for p, r in PAIRS:
        hyp, ref = p.lower().split(), r.lower().split()
        want = sentence_bleu([ref], hyp, weights=(1, 0, 0, 0)) if hyp and ref else 0.0
        assert scoring.sentence_bleu1(p, r) == pytest.approx(want), (p, r)
    # hand-computed: of "the tumour shows glands, necrosis and mucin" only "tumour" and "and" match
    # "tumour with glands and necrosis." ("glands," and "necrosis." keep their punctuation): 2/7, BP 1
    assert scoring.sentence_bleu1(*PAIRS[3]) == pytest.approx(2 / 7)
    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    assert scoring.bleu1_sentence_mean(preds, refs) == pytest.approx(
        sum(scoring.sentence_bleu1(p, r) for p, r in PAIRS) / len(PAIRS))


def test_rouge1_recall_and_f1_against_rouge_score():
    from rouge_score import rouge_scorer
    sc = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    res = scoring.text_scores(preds, refs)
    want = [sc.score(r, p)["rouge1"] for p, r in PAIRS]
    assert res["rouge1_recall"] == pytest.approx(sum(w.recall for w in want) / len(want))
    assert res["rouge1_f1"] == pytest.approx(sum(w.fmeasure for w in want) / len(want))
    one = scoring.text_scores(["SMOOTH MUSCLE"], ["smooth muscle bundles"])
    assert (one["rouge1_recall"], one["rouge1_precision"]) == pytest.approx((2 / 3, 1.0))  # case ignored
    assert set(res) >= {"llava_med_bleu1", "strict_bleu1", "bleu1_sacrebleu_corpus", "bleu4_sacrebleu_corpus"}
    assert set(res["scorers"]) == set(res) - {"n", "scorers"}


def test_macro_f1_counts_only_classes_present():
    codes = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
    names = {c: CRC["classes"][c]["name"] for c in codes}
    truths = ["ADI", "LYM", "TUM"] * 2
    res = scoring.classification_scores([names[t] for t in truths], truths, CRC["classes"])
    assert res["fuzzy"]["accuracy"] == 1.0
    assert res["fuzzy"]["macro_f1"] == 1.0           # not 3/9 = 0.333 (absent classes are no zeros)
    assert res["fuzzy"]["micro_f1"] == 1.0
    assert res["fuzzy"]["classes_present"] == ["ADI", "LYM", "TUM"]
    # a wrong prediction of an absent class makes that class present (precision 0)
    res = scoring.classification_scores(["debris", "lymphocytes"], ["ADI", "LYM"], CRC["classes"])
    assert res["fuzzy"]["classes_present"] == ["ADI", "DEB", "LYM"]
    assert res["fuzzy"]["macro_f1"] == pytest.approx((0 + 0 + 1) / 3)


@pytest.mark.parametrize("recall", [0.008, 0.074, 0.033, 0.876, 0.958, 0.967, 0.975, 0.983])
def test_micro_f1_reproduces_pathinsight_table2_relation(recall):
    """Table 2: F1 = 2R / (1 + R) in every row -> micro averaging with unparseable answers not
    counted as predictions (precision 1 when every parseable answer is right)."""
    n = 1000
    k = round(recall * n)
    truths = (["ADI", "LYM", "TUM"] * n)[:n]
    names = {"ADI": "Adipose tissue", "LYM": "Lymphocytes", "TUM": "Colorectal adenocarcinoma epithelium"}
    preds = [names[t] if i < k else "I cannot tell from this image." for i, t in enumerate(truths)]
    m = scoring.classification_scores(preds, truths, CRC["classes"])["fuzzy"]
    assert m["micro_recall"] == pytest.approx(recall) and m["micro_precision"] == 1.0
    assert m["micro_f1"] == pytest.approx(2 * recall / (1 + recall))
    assert (m["pathinsight_f1"], m["pathinsight_recall"], m["pathinsight_precision"]) == (
        m["micro_f1"], m["micro_recall"], m["micro_precision"])
    table2 = {0.008: 0.016, 0.074: 0.138, 0.033: 0.064, 0.876: 0.933, 0.958: 0.978, 0.967: 0.983,
              0.975: 0.987, 0.983: 0.991}
    assert m["micro_f1"] == pytest.approx(table2[recall], abs=1.5e-3)  # the table rounds R too


@pytest.mark.parametrize("answer", [
    "Adipose tissue Colorectal adenocarcinoma epithelium",   # two classes: never one of them
    "Adipose tisue and colorectal adenocarcinoma epithelum",  # two classes after typo fixing
    "Mucosa",                                                 # a real word, not a typo of mucous
    "mucosa.",
])
def test_fuzzy_never_resolves_ambiguous_answers(answer):
    assert scoring.map_label(answer, CRC["classes"]) == (None, "unparseable")


def test_typo_correction_leaves_short_and_real_words_alone():
    from medadapt.instruct.labels import PCAM
    assert scoring.map_label("It is not clear", PCAM["classes"]) == (None, "unparseable")  # not -> no
    only_mucus = {"MUC": {"name": "mucus", "synonyms": ["mucous"]}, "STR": {"name": "stroma"}}
    assert scoring.map_label("Mucosa", only_mucus) == (None, "unparseable")  # 2 edits from mucous
    assert scoring.map_label("mucos", only_mucus) == ("MUC", "fuzzy")


def test_fuzzy_fixes_typos_of_one_class():
    assert scoring.map_label("Lymphocytez", CRC["classes"]) == ("LYM", "fuzzy")
    assert scoring.map_label("Adipse tisue", CRC["classes"]) == ("ADI", "fuzzy")
