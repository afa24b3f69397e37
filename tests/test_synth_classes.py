"""Classes, descriptions files, the concept hierarchy and the caption corpus."""
import json
import re

import numpy as np
import yaml

from medadapt.data.texts import load_class_texts, read_descriptions, shipped_descriptions
from medadapt.synth import captions, classes
from medadapt.synth.tiles import check_attrs


def test_descriptions_files_match_class_lists(tmp_path):
    expected = {"synth-crc.json": [c.name for c in classes.CRC_CLASSES],
                "synth-crc-b2n.json": [c.name for c in classes.ALL_CLASSES],
                "synth-malignancy.json": classes.MALIGNANCY_CLASSES}
    for fname, names in expected.items():
        data = read_descriptions(shipped_descriptions(fname))
        assert list(data["classes"]) == names
        for name, sents in data["classes"].items():
            assert len(sents) >= 10, (fname, name)
            assert len(set(sents)) == len(sents), (fname, name)
        texts = load_class_texts(names, descriptions=fname)  # the loader the methods use
        assert all(len(texts.descriptions[n]) >= 10 for n in names)
    # the shipped files are exactly what classes.py writes
    written = classes.write_shipped_files(tmp_path)
    for p in written:
        rel = p.relative_to(tmp_path)
        shipped = classes.package_dir() / rel
        assert shipped.read_text() == p.read_text(), f"{rel} is stale: run python -m medadapt.synth.classes"


def test_nine_crc_classes_and_pool_names_are_distinct():
    assert [c.name for c in classes.CRC_CLASSES] == [
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
        "normal mucosa", "cancer-associated stroma", "tumour epithelium"]
    names = [c.name for c in classes.ALL_CLASSES]
    assert len(set(names)) == len(names) == 15
    codes = [c.code for c in classes.ALL_CLASSES]
    assert len(set(codes)) == len(codes)


def test_profiles_sample_valid_varied_attributes():
    rng = np.random.default_rng(0)
    for c in classes.ALL_CLASSES:
        draws = [c.sample(rng) for _ in range(20)]
        for a in draws:
            assert check_attrs(a) == a
        varied = [k for k in ("density", "size") if len({round(a[k], 6) for a in draws}) > 1]
        assert varied, f"{c.name}: no in-class variation"
    for label in classes.MALIGNANCY_CLASSES:
        for organ in [None, *classes.ORGAN_MIX]:
            check_attrs(classes.sample_binary(label, rng, organ))


def test_hierarchy_file_and_concepts():
    path = classes.package_dir() / "synth" / "hierarchies" / "synth-malignancy.yaml"
    h = yaml.safe_load(path.read_text())
    assert h["classes"] == classes.MALIGNANCY_CLASSES
    names = [c["name"] for c in h["concepts"]]
    assert len(names) == len(set(names)) >= 8
    for c in h["concepts"]:
        assert c["classes"] and set(c["classes"]) <= set(h["classes"])
    for label in h["classes"]:
        assert any(label in c["classes"] for c in h["concepts"])
    # concepts attached to items belong to the item's class and are visible in its attributes
    rng = np.random.default_rng(1)
    own = {lab: {c["name"] for c in h["concepts"] if lab in c["classes"]} for lab in h["classes"]}
    for label in classes.MALIGNANCY_CLASSES:
        for _ in range(50):
            got = classes.concepts_of(label, classes.sample_binary(label, rng))
            assert got and set(got) <= own[label]


def test_captions_describe_attributes_and_rarely_name_classes():
    rng = np.random.default_rng(0)
    cfg = captions.CorpusConfig()
    named = 0
    n = 3000
    for _ in range(n):
        r = rng.integers(2**32)
        a, domain, text = captions.sample_pair(np.random.default_rng(r), cfg)
        assert text.strip()
        # re-draw with name_prob=0 from the same stream: the caption without a name differs only
        # when a name was inserted
        a2, _, text2 = captions.sample_pair(np.random.default_rng(r),
                                            captions.CorpusConfig(name_prob=0.0))
        named += text != text2
    rate = named / n
    assert 0.03 <= rate <= 0.12, rate
    # attribute words follow the attributes
    fat = check_attrs({"architecture": "fat", "density": 0.05})
    words = " ".join(captions.caption(fat, np.random.default_rng(i)) for i in range(100))
    assert len(re.findall(r"vacuole|fat|membrane", words)) >= 50
    mucin = check_attrs({"architecture": "mucin", "density": 0.05})
    words = " ".join(captions.caption(mucin, np.random.default_rng(i)) for i in range(100))
    assert len(re.findall(r"mucin|mucoid", words)) >= 50


def test_description_words_are_in_the_corpus_vocabulary():
    vocab = captions.caption_vocabulary()
    rng = np.random.default_rng(0)
    sampled = set()
    for _ in range(2000):
        sampled.update(re.findall(r"[a-z0-9]+", captions.sample_pair(rng)[2].lower()))
    assert sampled <= vocab
    for sets in classes.description_sets().values():
        for sents in sets.values():
            for s in sents:
                assert set(re.findall(r"[a-z0-9]+", s.lower())) <= vocab, s


def test_hierarchy_loads_with_the_project_loader():
    hierarchy = __import__("pytest").importorskip("medadapt.hierarchy")
    h = hierarchy.load_hierarchy("synth-malignancy")
    assert list(h.classes) == classes.MALIGNANCY_CLASSES
    assert [c for c in h.concepts] == [c.name for c in classes.CONCEPTS]
