"""``medadapt report --compare``: published values beside ours, the seed-matched mean over data
sets, result keys of every protocol, missing data sets, and the shipped tables' shape."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medadapt.cli import main
from medadapt.errors import UserError
from medadapt.report.compare import available_tables, compare, load_table


def _run(root: Path, method: str, dataset: str, protocol: str, shots: int, seeds: dict):
    """A run folder as the bench writes it: config.yaml, bench.json, seed<N>/results.json."""
    d = root / "bb" / dataset / protocol / method / f"{shots}shot"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"seeds": sorted(seeds), "protocol": protocol}))
    (d / "bench.json").write_text(json.dumps({"method": method, "dataset": dataset,
                                              "backbone": "bb"}))
    for s, res in seeds.items():
        (d / f"seed{s}").mkdir()
        (d / f"seed{s}" / "results.json").write_text(json.dumps(
            {"method": method, "protocol": protocol, "shots": shots, "fraction": None, "seed": s,
             **res}))


def _table(tmp: Path, **kw) -> Path:
    t = {"name": "t", "paper": "P", "citation": "C", "protocol": "few-shot", "backbone": "bb",
         "metric": "accuracy", "datasets": ["mean", "A", "B"], "columns": ["1", "2"],
         "rows": [{"row": "Ours-row", "method": "m", "values": {"mean": [50.0, None]}}]}
    t.update(kw)
    p = tmp / "t.yaml"
    p.write_text(yaml.safe_dump(t))
    return p


def test_mean_over_datasets_is_seed_matched_and_missing_is_not_zero(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "m", "A", "few-shot", 1, {1: {"metrics": {"accuracy": 0.5}},
                                          2: {"metrics": {"accuracy": 0.7}}})
    _run(runs, "m", "B", "few-shot", 1, {1: {"metrics": {"accuracy": 0.9}},
                                          2: {"metrics": {"accuracy": 0.3}}})
    (runs / "bench_index.json").write_text(json.dumps({"runs": [
        {"method": "m", "dataset": "C", "status": "failed",
         "error": "data set 'c' not found at /data/C; download ..."}]}))
    res = compare(runs, load_table(_table(tmp_path, datasets=["mean", "A", "B", "C"])))
    mean = res["cells"][("Ours-row", "mean", "1")]
    # seed 1: (50 + 90) / 2 = 70; seed 2: (70 + 30) / 2 = 50 -> 60 ± 10
    assert (mean.paper, mean.ours, mean.std, mean.n_seeds) == (50.0, 60.0, 10.0, 2)
    assert mean.diff == pytest.approx(10.0) and mean.note == "mean over 2 of 3 data sets"
    a = res["cells"][("Ours-row", "A", "1")]
    assert (a.paper, a.ours, a.std) == (None, 60.0, 10.0)
    c = res["cells"][("Ours-row", "C", "1")]
    assert c.ours is None and c.note == "missing: data set 'c' not found at /data/C; download ..."
    assert res["missing"] == {"C": "data set 'c' not found at /data/C; download ..."}
    assert res["cells"][("Ours-row", "mean", "2")].ours is None  # no 2-shot runs: empty


def test_b2n_and_cross_domain_keys(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "m", "A", "base-to-novel", 16,
         {1: {"metrics": {"accuracy": 0.8}, "base": 0.8, "novel": 0.6, "hm": 0.6857,
              "novel_metrics": {"accuracy": 0.6, "macro_f1": 0.55}}})
    t = _table(tmp_path, protocol="base-to-novel", shots=16, datasets=["A"],
               columns=["base", "novel", "hm", "novel_macro_f1"],
               rows=[{"row": "R", "method": "m", "values": {"A": [70, 60, 64.6, None]}}])
    res = compare(runs, load_table(t))
    got = [res["cells"][("R", "A", c)].ours for c in ("base", "novel", "hm", "novel_macro_f1")]
    assert got == pytest.approx([80.0, 60.0, 68.57, 55.0])
    _run(runs, "m", "P", "cross-domain", 16, {1: {"metrics": {"accuracy": 0.7,
                                                             "mean_domain_accuracy": 0.65},
                                                 "domain_accuracy": {"Colon": 0.9}}})
    t = _table(tmp_path, protocol="cross-domain", shots=16, datasets=["P"],
               columns=["domain:Colon", "mean_domain_accuracy"],
               rows=[{"row": "R", "method": "m", "values": {"P": [58.65, 72.74]}}])
    res = compare(runs, load_table(t))
    assert res["cells"][("R", "P", "domain:Colon")].ours == pytest.approx(90.0)
    assert res["cells"][("R", "P", "mean_domain_accuracy")].diff == pytest.approx(65 - 72.74)


def test_cli_writes_table_csv_and_plot(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "m", "A", "few-shot", 1, {1: {"metrics": {"accuracy": 0.5}}})
    assert main(["report", str(runs), "--compare", str(_table(tmp_path))]) == 0
    out = runs / "report"
    assert "| Ours-row | mean | 50.00 / 50.00 ± 0.00 / +0.00 |" in (out / "compare_t.md").read_text()
    assert (out / "compare_t.png").exists() and (out / "compare_t.csv").exists()
    assert main(["report", str(runs), "--compare", "no-such-table"]) == 2


def test_shipped_tables_load_and_carry_their_sources():
    names = available_tables()
    assert {"biomedcoop-fewshot", "biomedcoop-b2n", "biomed-dpt-fewshot", "biomed-dpt-b2n",
            "pathoprompt-table1-fewshot", "pathoprompt-table1-b2n",
            "pathoprompt-table2-cross-organ"} <= set(names)
    for n in names:
        t = load_table(n)
        assert t["citation"] and t["source"]
    lp = next(r for r in load_table("biomedcoop-fewshot")["rows"] if r["row"] == "LP++")
    assert lp["values"]["mean"] == [47.24, 53.18, 59.02, 63.69, 68.35]  # the row
    dpt = load_table("biomed-dpt-fewshot")["rows"][0]["values"]["mean"]
    assert dpt == [66.14]
    with pytest.raises(UserError, match="values expected"):
        load_table(_bad(Path(load_table("biomedcoop-b2n")["_path"])))


def _bad(p: Path) -> Path:
    import tempfile
    t = yaml.safe_load(p.read_text())
    t["rows"][0]["values"]["mean"] = [1.0]
    out = Path(tempfile.mkdtemp()) / "bad.yaml"
    out.write_text(yaml.safe_dump(t))
    return out
