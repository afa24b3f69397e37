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
    assert r["rouge1"] == pytest.approx(2 * (6 / 11) * 1 / (6 / 11 + 1))  # 12/17, not 1.0
    assert r["bleu1"] == pytest.approx(6 / 11)  # BP = 1, precision 6/11


def test_prf_small_confusion():
    y_true = ["A", "A", "A", "B", "B", "C"]
    y_pred = ["A", "A", "B", "B", "C", "C"]
    m = scoring.prf(y_true, y_pred, ["A", "B", "C"])
    pc = m["per_class"]
    assert (pc["A"]["precision"], pc["A"]["recall"], pc["A"]["f1"]) == pytest.approx((1, 2 / 3, 0.8))
    assert (pc["B"]["precision"], pc["B"]["recall"], pc["B"]["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (pc["C"]["precision"], pc["C"]["recall"], pc["C"]["f1"]) == pytest.approx((0.5, 1, 2 / 3))
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


def test_vqa_scores():
    r = scoring.vqa_scores(["Yes, it is.", "no", "squamous cell carcinoma", "carcinoma"],
                           ["yes", "yes", "Squamous cell carcinoma", "squamous cell carcinoma"])
    assert (r["n_yes_no"], r["n_open"]) == (2, 2)
    assert r["yes_no_accuracy"] == pytest.approx(0.5)
    assert r["open_exact_match"] == pytest.approx(0.5)
    assert r["open_token_f1"] == pytest.approx((1 + 2 * 1 * (1 / 3) / (1 + 1 / 3)) / 2)
