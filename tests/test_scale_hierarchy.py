"""Class-concept hierarchy files: shipped ones, and validation errors with clear messages."""
from __future__ import annotations

import json

import pytest

from medadapt.errors import UserError
from medadapt.hierarchy import from_dict, load_hierarchy, loads


def test_shipped_derm7pt_has_seven_criteria_and_table1():
    h = load_hierarchy("derm7pt")
    assert list(h.criteria) == ["pigment network", "streaks", "pigmentation",
                                "regression structures", "dots and globules",
                                "blue-whitish veil", "vascular structures"]
    pig = h.criteria["pigmentation"]
    assert {c: h.classes_of(c) for c in pig} == {  # SCALE Table 1
        "absent pigmentation": ("nevus",), "localized regular pigmentation": ("nevus",),
        "diffuse regular pigmentation": ("nevus",),
        "localized irregular pigmentation": ("melanoma",),
        "diffuse irregular pigmentation": ("melanoma",)}
    assert h.find_concept("pigmentation:diffuse irregular") == "diffuse irregular pigmentation"
    assert len(h.groups()) == 7 and sum(len(g) for g in h.groups()) == len(h.combinations)
    assert h.prompt("melanoma", "diffuse irregular pigmentation") == (
        "a photo of a skin lesion with diffuse irregular pigmentation, which indicates a melanoma")
    t1 = load_hierarchy("derm7pt-pigmentation.yaml")
    assert t1.combinations == [(h.classes_of(c)[0], c) for c in pig]


def test_shipped_padchest_locations_shared_between_diseases():
    h = load_hierarchy("padchest-gr")
    assert h.classes == ["atelectasis", "cardiomegaly", "consolidation", "pleural effusion"]
    assert h.classes_of("left lower lobe") == ("atelectasis", "consolidation")
    assert len(h.combinations) == 12  # the 12 class-concept combinations of Sec. 2.3.1
    assert len(h.concepts_of("pleural effusion")) == 6
    assert h.item_combinations("consolidation", ["left lower lobe"]) == \
        [h.combo_index[("consolidation", "left lower lobe")]]


def test_item_combinations_class_from_concept():
    h = load_hierarchy("derm7pt")
    # a melanoma with regular streaks: the expression indicates a nevus (Table 1 reading)
    [i] = h.item_combinations("melanoma", ["regular streaks"])
    assert h.combinations[i] == ("nevus", "regular streaks")
    with pytest.raises(UserError, match="unknown concept 'purple dots'"):
        h.item_combinations("melanoma", ["purple dots"])
    p = load_hierarchy("padchest-gr")
    with pytest.raises(UserError, match="belongs to classes"):
        p.item_combinations("cardiomegaly", ["left lower lobe"])


BASE = {"classes": ["benign", "malignant"],
        "concepts": {"regular": ["benign"], "irregular": ["malignant"]}}


@pytest.mark.parametrize("data, msg", [
    ({**BASE, "concepts": {"regular": ["benign"], "irregular": ["cancer"]}},
     "concept 'irregular' names unknown class 'cancer'"),
    ({**BASE, "concepts": {"regular": ["benign"], "irregular": []}},
     "concept 'irregular' has no class"),
    ({**BASE, "concepts": {"regular": ["benign"], "irregular": None}},
     "concept 'irregular' has no class"),
    ({**BASE, "classes": ["benign", "malignant", "Benign"]}, "duplicate class name 'Benign'"),
    ({**BASE, "concepts": [{"name": "a", "classes": ["benign"]}, {"name": "A", "classes": "malignant"}]},
     "duplicate concept name 'A'"),
    ({**BASE, "concepts": {"a": {"classes": "benign", "aliases": ["x"]},
                           "b": {"classes": "malignant", "aliases": ["X"]}}}, "duplicate alias 'X'"),
    ({**BASE, "concepts": {"a": {"classes": "benign", "aliases": ["b"]}, "b": "malignant"}},
     "is the name of another concept"),
    ({**BASE, "classes": ["benign", "malignant", "other"]}, "class 'other' has no concepts"),
    ({**BASE, "criteria": {"c1": ["regular", "cystic"]}}, "criterion 'c1' lists unknown concept 'cystic'"),
    ({**BASE, "criteria": {"c1": ["regular", "irregular"], "c2": ["regular"]}},
     "concept 'regular' is in two criteria"),
    ({**BASE, "criteria": {"c1": ["regular"]}}, r"concepts \['irregular'\] are in no criterion"),
    ({**BASE, "template": "a {organ} with {concept}"}, "unknown placeholders"),
    ({**BASE, "template": "a photo"}, "needs {concept} or {class}"),
    ({**BASE, "colour": 1}, "unknown keys"),
    ({"classes": ["a"]}, "missing or empty 'concepts'"),
])
def test_validation_errors(data, msg):
    with pytest.raises(UserError, match=msg):
        from_dict(data)


def test_duplicate_keys_in_files(tmp_path):
    y = tmp_path / "h.yaml"
    y.write_text("classes: [a, b]\nconcepts:\n  x: [a]\n  y: [b]\n  x: [b]\n")
    with pytest.raises(UserError, match=r"h.yaml: duplicate name 'x' \(line 5\)"):
        load_hierarchy(y)
    j = tmp_path / "h.json"
    j.write_text('{"classes": ["a", "b"], "concepts": {"x": ["a"], "y": ["b"], "y": ["a"]}}')
    with pytest.raises(UserError, match="h.json: duplicate name 'y'"):
        load_hierarchy(j)


def test_formats_roundtrip_and_errors(tmp_path):
    j = tmp_path / "mine.json"
    j.write_text(json.dumps({**BASE, "domain": "skin lesion",
                             "criteria": {"pattern": ["regular", "irregular"]}}))
    h = load_hierarchy(j)
    assert h.name == "mine" and h.domain == "skin lesion" and h.group_names == ["pattern"]
    h2 = from_dict(json.loads(h.to_json()))
    assert h2.combinations == h.combinations and h2.criteria == h.criteria
    with pytest.raises(UserError, match="hierarchy file not found: nope.yaml"):
        load_hierarchy("nope.yaml")
    with pytest.raises(UserError, match="invalid YAML"):
        loads("classes: [a\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(UserError, match="bad.yaml: a hierarchy must be a mapping"):
        load_hierarchy(bad)
