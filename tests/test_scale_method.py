"""SCALE through the engine and the CLI: overfits a tiny concept-labelled set, explains its
predictions, saves / loads to identical predictions, and fails clearly on bad inputs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medadapt.cli import main
from medadapt.data.texts import load_class_texts
from medadapt.engine.train import Engine
from medadapt.errors import UserError
from medadapt.methods.scale import SCALE
from test_scale_fixtures import backbone, data_csv, env, feature_split  # noqa: F401

FAST = ["--set", "train.epochs=200", "--set", "train.lr=0.01", "--set", "method.alpha=0.5",
        "--set", "method.lambdas=[1,1,0.1,0.1]", "--set", "train.checkpoint=false", "--quiet"]


def _hier(data_csv) -> str:
    return str(Path(data_csv).parent / "hierarchy.yaml")


def _fit(data_csv, out, *extra, method="scale", backbone_name="tiny-hf-clip"):
    return main(["fit", "--backbone", backbone_name, "--dataset", f"csv:{data_csv}", "--method",
                 method, "--shots", "4", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def scale_run(env, data_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "scale"
    assert _fit(data_csv, out, "--set", f"method.hierarchy={_hier(data_csv)}", *FAST) == 0
    return out


def test_cli_fit_overfits_and_records_alpha(scale_run):
    res = json.loads((scale_run / "results.json").read_text())
    assert res["metrics"]["accuracy"] == 1.0  # test images are copies of the training images
    info = res["train_info"]
    assert info["loss_last"] < 0.3 * info["loss_first"]
    assert info["hierarchy"] == "crc-mini" and info["n_combinations"] == 7
    assert info["alpha_image"] != 0.5 and info["alpha_text"] != 0.5  # alpha is learned
    assert res["n_trainable_params"] == 2 * (2 * 32 * 8 + 1)


def test_predict_says_why(scale_run, data_csv, tmp_path):
    root = Path(data_csv).parent
    out = tmp_path / "p.csv"
    assert main(["predict", "--run", str(scale_run), str(root / "test" / "ADI_1.png"),
                 str(root / "test" / "TUM_2.png"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["prediction"] for r in rows] == ["adipose", "tumor"]
    assert rows[0]["why"] == "fat vacuoles -> adipose"
    assert rows[1]["why"].endswith("-> tumor")
    assert rows[1]["top_concepts"].count("->") == 3 and float(rows[0]["why_score"]) > 0.3


def test_save_load_identical_predictions(scale_run, data_csv, tmp_path):
    from medadapt.engine.evaluate import evaluate_run, load_run
    res = json.loads((scale_run / "results.json").read_text())
    again = evaluate_run(scale_run, progress=False)
    assert again["metrics"]["auc"] == res["metrics"]["auc"]
    assert again["metrics"]["confusion_matrix"] == res["metrics"]["confusion_matrix"]
    # the saved hierarchy travels with params.safetensors: predict works without the file
    cfg, texts, bb, method, _ = load_run(scale_run)
    assert method.hierarchy.name == "crc-mini"
    sd = load_file(str(scale_run / "params.safetensors"))
    fresh = SCALE(bb, texts, {**cfg["method"], "hierarchy": str(tmp_path / "moved.yaml")})
    fresh.load_learned_state_dict(sd)
    split = feature_split(bb, data_csv, "test")
    from medadapt.methods.base import Batch
    b = Batch(labels=split.labels, features=split.features)
    assert torch.equal(method(b), fresh(b))


def test_engine_fit_save_load_roundtrip(env, data_csv, tmp_path):
    bb = backbone("tiny-open-clip")
    tr = feature_split(bb, data_csv)
    texts = load_class_texts(tr.ds.classnames)
    tr.ds.meta["hierarchy"] = _hier(data_csv)  # the data set names its hierarchy
    m = SCALE(bb, texts, {"supcon_on": "cross"})
    eng = Engine({**SCALE.train_defaults, "epochs": 5, "checkpoint": False}, progress=False)
    info = m.fit(tr, None, eng)
    assert info["hierarchy"] == "crc-mini"
    save_file(m.learned_state_dict(), str(tmp_path / "p.safetensors"))
    m2 = SCALE(bb, texts, {"supcon_on": "cross"})
    m2.load_learned_state_dict(load_file(str(tmp_path / "p.safetensors")))
    lg1, lg2 = eng.logits(m, tr), eng.logits(m2, tr)
    assert torch.equal(lg1, lg2)
    ex = m2.extra_predictions(next(eng.batches(m2, tr, shuffle=False, train=False)))
    assert len(ex["rows"]) == len(tr) and "why" in ex["rows"][0]


def test_missing_hierarchy_is_a_clear_error(env, data_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert _fit(data_csv, out, "--quiet", "--set", "train.epochs=1") == 2
    err = capsys.readouterr().err
    assert "scale needs a class-concept hierarchy" in err and "method.hierarchy" in err
    assert not out.exists()  # nothing half-written


def test_bad_concepts_and_classes(env, data_csv, tmp_path):
    bb = backbone("tiny-hf-clip")
    tr = feature_split(bb, data_csv)
    texts = load_class_texts(tr.ds.classnames)
    eng = Engine({"epochs": 1, "checkpoint": False}, progress=False)
    h = tmp_path / "h.yaml"
    h.write_text(Path(_hier(data_csv)).read_text().replace("fat vacuoles", "lipid droplets"))
    with pytest.raises(UserError, match="train item 'train/ADI_0.png': unknown concept 'fat vacuoles'"):
        SCALE(bb, texts, {"hierarchy": str(h)}).fit(tr, None, eng)
    h.write_text("classes: [adipose, tumor]\nconcepts: {a: adipose, b: tumor}\n")
    with pytest.raises(UserError, match=r"data set classes \['lymphocytes', 'normal mucosa'\] "
                                        "are not in hierarchy"):
        SCALE(bb, texts, {"hierarchy": str(h)}).fit(tr, None, eng)
    with pytest.raises(UserError, match="method.lambdas must be a list of 4"):
        SCALE(bb, texts, {"lambdas": [1, 2]})


def test_items_without_concepts(env, data_csv):
    bb = backbone("tiny-hf-clip")
    tr = feature_split(bb, data_csv)
    tr.concepts = [() if i % 4 == 0 else c for i, c in enumerate(tr.concepts)]
    texts = load_class_texts(tr.ds.classnames)
    eng = Engine({**SCALE.train_defaults, "epochs": 2, "checkpoint": False}, progress=False)
    with pytest.raises(UserError, match="has no concept labels"):
        SCALE(bb, texts, {"hierarchy": _hier(data_csv)}).fit(tr, None, eng)
    m = SCALE(bb, texts, {"hierarchy": _hier(data_csv), "missing_concepts": "class-only"})
    info = m.fit(tr, None, eng)
    assert info["train_items_without_concepts"] == 4
    assert all(h["loss"] == h["loss"] for h in info["history"])  # finite


def test_derm7pt_criteria_end_to_end(env):
    """Seven concepts per lesion (one per criterion): per-criterion softmaxes, explanations per
    criterion, a class-concept table with one column per expression."""
    from medadapt.hierarchy import load_hierarchy
    from medadapt.methods.base import Batch
    bb = backbone("tiny-hf-clip")
    h = load_hierarchy("derm7pt")
    texts = load_class_texts(["nevus", "melanoma"], "dermatology")
    m = SCALE(bb, texts, {"hierarchy": "derm7pt"})
    g = torch.Generator().manual_seed(0)
    lesion = tuple(cs[int(torch.randint(len(cs), (1,), generator=g))]
                   for cs in h.criteria.values())
    benign = tuple(cs[0] for cs in h.criteria.values())  # all "absent ..."
    b = Batch(labels=torch.tensor([1, 0, 1]), features=torch.randn(3, bb.embed_dim, generator=g),
              concepts=[lesion, benign, benign])
    loss, parts = m.loss(b)
    assert torch.isfinite(loss) and set(parts) == {"ce_combination", "ce_concept", "ce_class",
                                                   "supcon_q", "supcon_qt"}
    loss.backward()
    rows = m.extra_predictions(b)["rows"]
    assert len([k for k in rows[0] if k.startswith("criterion: ")]) == 7
    assert rows[0]["criterion: pigmentation"].split(" (")[0].endswith(("-> nevus", "-> melanoma"))
    assert m(b).shape == (3, 2)
