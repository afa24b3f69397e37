"""Shipped class descriptions: every registered data set has a file with at least 10 sentences for
each of its canonical classes, and a file that misses a class is a UserError naming it."""
from __future__ import annotations

import json

import pytest

from medadapt.data import benchmarks as B
from medadapt.data.sources import DATASETS, MEDMNIST_CLASSES, load_dataset
from medadapt.data.texts import TEMPLATES, load_class_texts, read_descriptions, shipped_descriptions
from medadapt.errors import UserError

BENCHMARKS = ["kather2016", "chmnist", "nct-crc-he", "crc-val-he-7k", "bloodmnist", "pathmnist",
              "dermamnist", "kimia-path960", "lc25000", "pcam", "pannuke", "pannuke-tissue",
              "derm7pt", "bccd-cells"]
MIN_SENTENCES = 10


def _check_file(filename: str, classnames: list[str]) -> None:
    path = shipped_descriptions(filename)
    assert path.is_file(), f"missing shipped descriptions {filename}"
    data = read_descriptions(path)
    for key in ("written_by", "how", "source_knowledge"):
        assert data["meta"].get(key), f"{filename}: meta.{key} is empty"
    texts = load_class_texts(classnames, descriptions=filename, require_descriptions=True)
    for c in classnames:
        sents = texts.descriptions[c]
        assert len(sents) >= MIN_SENTENCES, f"{filename}: {c!r} has {len(sents)} sentences"
        assert len(set(sents)) == len(sents), f"{filename}: duplicate sentences for {c!r}"
        for s in sents:
            assert s == s.strip() and s[0].isupper() and s.endswith("."), (filename, s)
            assert len(s.split()) >= 5, (filename, s)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_ships_descriptions_for_its_classes(name):
    info = DATASETS.get(name)
    assert info.template_set in TEMPLATES
    _check_file(info.descriptions, info.classnames)


@pytest.mark.parametrize("flavour", sorted(MEDMNIST_CLASSES))
def test_every_medmnist_flavour_has_descriptions(flavour):
    _check_file(f"{flavour}.json", MEDMNIST_CLASSES[flavour])


def test_option_dependent_class_sets_are_covered():
    _check_file("derm7pt.json", B.DERM7PT_FIVE)  # derm7pt classes='five'
    _check_file("pannuke-tissue.json", B.PANNUKE_TISSUE_CLASSES)


def test_every_class_in_every_benchmark_file_has_enough_sentences():
    names = {DATASETS.get(n).descriptions for n in BENCHMARKS}
    names |= {f"{flavour}.json" for flavour in MEDMNIST_CLASSES}
    for f in sorted(shipped_descriptions(n) for n in names):
        data = json.loads(f.read_text(encoding="utf-8"))
        assert set(data) == {"meta", "classes"}, f.name
        for c, sents in data["classes"].items():
            assert len(sents) >= MIN_SENTENCES, (f.name, c)


def test_pneumoniamnist_texts_fit_the_real_npz():
    from pathlib import Path
    npz = (Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"
           / "pneumoniamnist.npz")
    ds = load_dataset(f"npz:{npz}")
    texts = load_class_texts(ds.classnames, template_set=ds.meta["template_set"],
                             descriptions="pneumoniamnist.json")
    assert set(texts.descriptions) == {"normal", "pneumonia"}
    assert texts.prompts()[1] == "a chest x-ray showing pneumonia."


def test_a_file_missing_a_class_names_the_class(tmp_path):
    data = json.loads(shipped_descriptions("kather2016.json").read_text(encoding="utf-8"))
    del data["classes"]["complex stroma"]
    p = tmp_path / "partial.json"
    p.write_text(json.dumps(data))
    with pytest.raises(UserError) as e:
        load_class_texts(B.KATHER16_CLASSES, descriptions=str(p))
    msg = str(e.value)
    assert "\n" not in msg and "complex stroma" in msg and "partial.json" in msg


def test_a_malformed_file_is_a_user_error(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"meta": {}, "classes": {"nevus": []}}')
    with pytest.raises(UserError) as e:
        load_class_texts(["nevus"], descriptions=str(p))
    assert "nevus" in str(e.value)
    p.write_text("{not json")
    with pytest.raises(UserError):
        load_class_texts(["nevus"], descriptions=str(p))
    with pytest.raises(UserError) as e:
        load_class_texts(["nevus"], descriptions=str(tmp_path / "absent.json"))
    assert "not found" in str(e.value)
