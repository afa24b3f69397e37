"""Done-when of the benchmark issue: synthetic stand-ins of BiomedCoOp's 11 data sets (generated
images at the paths the real split files name), the shipped BiomedCoOp few-shot config (the
recipe) run end to end on tiny-open-clip with one seed and a tiny budget, and the comparison table
with the published column filled, ours computed and every run marked off the recipe (tiny budget);
a missing data set gives a partial table, never zeros."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from biomedcoop_standins import SPLITS_DIR, make_all
from medadapt.cli import main
from medadapt.data.sets.biomedcoop import BIOMEDCOOP_SETS
from medadapt.report.compare import compare, load_table

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "bench" / "biomedcoop-fewshot.yaml"
LABELS = ["BTMRI", "BUSI", "CHMNIST", "COVID-QU-Ex", "CTKidney", "DermaMNIST", "KneeXray", "Kvasir",
          "LC25000", "OCTMNIST", "RETINA"]


def _grid(tmp: Path) -> Path:
    """The shipped config (it names the recipe) and, in the folder the test runs from, the
    descriptions file the recipe names (biomedcoop-descriptions.json)."""
    desc = {"meta": {"note": "test"}, "classes": {c: [f"an image of {c}.", f"a scan of {c}."]
            for s in BIOMEDCOOP_SETS.values() for c in s.classnames}}
    (tmp / "biomedcoop-descriptions.json").write_text(json.dumps(desc))
    grid = yaml.safe_load(CONFIG.read_text())
    assert grid["recipe"] == "biomedcoop-fewshot"
    from medadapt.recipes import load_recipe
    assert [d["label"] for d in load_recipe("biomedcoop-fewshot").datasets] == LABELS
    return CONFIG


@pytest.mark.slow
@pytest.mark.skipif(not SPLITS_DIR.exists(), reason="shared split files not found")
def test_biomedcoop_fewshot_config_end_to_end_with_comparison(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    data = make_all(tmp_path / "data")
    grid = _grid(tmp_path)
    runs = tmp_path / "runs"
    only = ["/lp++/1shot", "/biomedcoop/1shot"]  # two of the recipe's methods on all 11 data sets
    # a tiny backbone, one seed and one epoch: off the recipe, and the comparison says so
    args = ["bench", str(grid), "--backbone", "tiny-open-clip", "--data-root", str(data),
            "--out", str(runs), "--quiet", "--set", "train.epochs=1", "--set", "seeds=[1]",
            "--only", *only]
    assert main(args) == 0
    index = json.loads((runs / "bench_index.json").read_text())
    assert index["counts"]["done"] == 22  # the other methods stay pending (--only)
    assert main(["report", str(runs), "--compare", "biomedcoop-fewshot"]) == 0
    out = runs / "report"
    assert (out / "compare_biomedcoop-fewshot.png").stat().st_size > 0
    rows = list(csv.DictReader(open(out / "compare_biomedcoop-fewshot.csv")))
    lp_mean_1 = next(r for r in rows if r["row"] == "LP++" and r["dataset"] == "mean"
                     and r["column"] == "1")
    assert float(lp_mean_1["paper_value"]) == 47.24  # the published column, from the paper
    # ours: the mean over the 11 data sets of the per-data-set test accuracy (seed 1)
    per_ds = [json.loads((runs / "tiny-open-clip" / d / "few-shot" / "lp++" / "1shot"
                          / "results.json").read_text())["metrics"]["accuracy"] * 100 for d in LABELS]
    assert float(lp_mean_1["ours_mean"]) == pytest.approx(sum(per_ds) / 11)
    assert float(lp_mean_1["difference"]) == pytest.approx(sum(per_ds) / 11 - 47.24)
    assert lp_mean_1["note"] == ""  # all 11 data sets present
    bc = [r for r in rows if r["row"] == "BiomedCoOp" and r["column"] == "1"]
    assert {r["dataset"] for r in bc} == {"mean", *LABELS}
    assert all(r["ours_mean"] for r in bc)
    md = (out / "compare_biomedcoop-fewshot.md").read_text()
    assert "| LP++ | mean | 47.24 / " in md and "the paper's: biomedclip" in md
    assert "Recipe: `biomedcoop-fewshot`" in md and "0 run folder(s) follow it, 22 are off it" in md
    assert "seeds ([1] instead of [1, 2, 3])" in lp_mean_1["off_recipe"]

    # a missing data set: the bench records why, the table is partial and says so
    shutil.rmtree(data / "RETINA")
    runs2 = tmp_path / "runs2"
    assert main(["bench", str(grid), "--backbone", "tiny-open-clip", "--data-root", str(data),
                 "--out", str(runs2), "--quiet", "--set", "train.epochs=1", "--set", "seeds=[1]",
                 "--only", "/lp++/1shot"]) == 1
    res = compare(runs2, load_table("biomedcoop-fewshot"))
    assert "RETINA" in res["missing"] and str(data / "RETINA") in res["missing"]["RETINA"]
    cell = res["cells"][("LP++", "mean", "1")]
    assert cell.note == "mean over 10 of 11 data sets" and cell.ours is not None
    retina = res["cells"][("LP++", "RETINA", "1")]
    assert retina.ours is None and retina.note.startswith("missing: ")
    assert res["cells"][("LP++", "mean", "16")].ours is None  # no 16-shot runs: empty, not 0
