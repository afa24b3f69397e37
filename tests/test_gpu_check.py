"""benchmarks/gpu_check.py end to end on CPU at reduced size (a subset of methods and every
section), with the network off as on the GPU machine: the JSON and Markdown it writes have the
structure the GPU run will be read by, each section's numbers are there and finite, the first
losses of fp32 and bf16 agree within the stated tolerance, and the table projections count the
shipped configs' runs as ``medadapt bench`` expands them."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--size", "reduced", "--out", str(out),
           "--sections", "methods,features,train,instruct,tables", "--methods", "coop,zero-shot",
           "--backbones", "plip", "--precisions", "fp32,bf16", "--train-epochs", "1",
           "--views", "1", "--cap-scale", "3"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return {"json": json.loads((out / "gpu_check.json").read_text()),
            "md": (out / "gpu_check.md").read_text(), "stdout": p.stdout}


def test_top_level(check):
    r = check["json"]
    assert r["benchmark"] == "gpu_check" and r["device"] == "cpu" and r["size"] == "reduced"
    assert r["errors"] == {}
    assert set(r["sections"]) == {"methods", "features", "train", "instruct", "tables"}
    assert r["precisions"] == ["fp32", "bf16"]
    assert r["machine"]["torch"] and r["total_s"] > 0
    assert all(r["caps_s"][k] > 0 for k in ("methods", "features", "train", "instruct", "tables"))
    assert "[gpu_check" in check["stdout"]  # progress lines


def test_methods_section(check):
    m = check["json"]["sections"]["methods"]
    assert "bf16" in m["tolerance"] and "fp16" in m["tolerance"]
    rows = {(x["backbone"], x["method"]): x for x in m["runs"]}
    assert set(rows) == {("plip", "coop"), ("plip", "zero-shot")}
    coop = rows[("plip", "coop")]
    f32, bf = coop["precisions"]["fp32"], coop["precisions"]["bf16"]
    assert f32["ok"] and bf["ok"] and coop["ok"]
    assert f32["first_losses"] and all(math.isfinite(x) for x in f32["first_losses"] + bf["first_losses"])
    assert f32["first_losses"] != bf["first_losses"]  # the bf16 run really ran in bf16
    assert bf["losses_agree"] and 0 <= bf["max_rel_diff_vs_fp32"] <= 0.05
    assert f32["peak_mem_mib"] is None  # CPU: no CUDA memory statistic
    assert rows[("plip", "zero-shot")]["precisions"]["fp32"]["first_losses"] == []  # no loop
    assert m["summary"] == {"runs": 2, "complete": 2, "all_ok": 2, "failed": [], "skipped_budget": []}


def test_features_section(check):
    f = check["json"]["sections"]["features"]
    assert f["batch_size"] == 8  # the CPU default
    assert set(f["by_precision"]) == {"fp32", "bf16"}
    for rec in f["by_precision"].values():
        for k in ("bare", "medadapt", "forward_only", "cache_hit"):
            assert rec[k]["images_per_s"] > 0
        assert rec["medadapt_vs_bare"] > 0


def test_train_section(check):
    t = check["json"]["sections"]["train"]
    assert t["step_s"]["coop"]["step_s"] > 0 and "zero-shot" not in t["step_s"]
    for m in ("coop", "biomedcoop"):
        run = t["full_runs"][m]
        assert run["recipe_epochs"] == 100
        for arm in ("medadapt", "reencode"):
            assert run[arm]["projected_run_s"] > run[arm]["epoch_s"] > 0
        assert run["speedup"] > 0 and "projected" in run["how"]


def test_instruct_section(check):
    i = check["json"]["sections"]["instruct"]
    assert i["family"] == "qwen2-vl"
    assert i["lora"]["ok"] and i["lora"]["steps"] == 3 and i["lora"]["tokens_per_s"] > 0
    assert "skipped" in i["qlora"] or i["qlora"].get("ok")


def test_tables_section_counts_the_shipped_grids(check):
    from medadapt.report.bench import expand_recipe, load_grid
    t = check["json"]["sections"]["tables"]
    assert t["assumptions"]
    configs = sorted((REPO / "configs" / "bench").glob("*.yaml"))
    assert set(t["tables"]) == {p.stem for p in configs}
    p = REPO / "configs" / "bench" / "biomedcoop-fewshot.yaml"
    grid = load_grid(p)
    assert grid["recipe"] == "biomedcoop-fewshot"  # the published table runs its recipe
    runs, _ = expand_recipe(grid)
    row = t["tables"]["biomedcoop-fewshot"]
    assert row["grid_runs"] == len(runs) and row["runs"] == sum(len(r.seeds) for r in runs)
    assert row["projected_s"] > 0


def test_markdown(check):
    md = check["md"]
    for head in ("# gpu_check (cpu, size reduced)", "## 1. Every method end to end",
                 "## 2. Feature extraction", "## 3. Training", "## 4. Instruct (bf16)",
                 "## 5. Projected table time"):
        assert head in md, head
    assert "| plip | coop |" in md and "| biomedcoop-fewshot |" in md


def test_bad_section_is_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    p = subprocess.run([sys.executable, str(SCRIPT), "--sections", "nope", "--device", "cpu",
                        "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "unknown section" in p.stderr and "Traceback" not in p.stderr


def test_default_method_list_is_the_registry(monkeypatch):
    """Without --methods the check covers every registered method (what the GPU run uses)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check

    from medadapt.errors import UserError
    from medadapt.methods import METHODS
    assert gpu_check.method_names(None) == METHODS.names() and len(METHODS.names()) >= 19
    assert gpu_check.method_names(["coop"]) == ["coop"]
    with pytest.raises(UserError, match="unknown method"):
        gpu_check.method_names(["nope"])
