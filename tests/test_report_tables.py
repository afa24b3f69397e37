"""`medadapt report` on hand-written run folders with known numbers: few-shot tables over two data
sets with an Average column, ties in the best / second-best marks, base-to-novel (HM of the
averages), cross-domain per-domain tables, curves, labels of plain `fit` runs, and the HTML page.
No model is loaded (--no-tsne), so this is fast."""
import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_cli
from medadapt.report.runs import load_runs
from medadapt.report.tables import Table

CLASSES = ["ADI", "DEB", "TUM"]


def _result(acc, f1, seed, method, dataset, shots, protocol="few-shot", **extra):
    cm = [[2, 0, 0], [0, 1, 1], [1, 0, 1]]
    return {"medadapt_version": "0.1.0", "method": method, "backbone": "tiny-hf-clip",
            "dataset": dataset, "shots": shots, "fraction": None, "seed": seed,
            "protocol": protocol,
            "metrics": {"accuracy": acc, "balanced_accuracy": acc, "macro_f1": f1, "auc": 0.5,
                        "per_class_recall": {c: acc for c in CLASSES}, "confusion_matrix": cm,
                        "n": 6},
            "base": None, "novel": None, "hm": None, "train_seconds": 1.5,
            "n_trainable_params": 64, **extra}


def write_run(root: Path, rel: str, method: str, dataset: str, shots: int, values, label=None,
              protocol="few-shot", method_cfg=None, **extra_per_seed):
    """values: list of (acc, f1) per seed, seeds 1..n."""
    folder = root / rel
    seeds = list(range(1, len(values) + 1))
    cfg = {"backbone": "tiny-hf-clip", "dataset": dataset, "shots": shots, "seeds": seeds,
           "protocol": protocol, "method": {"name": method, **(method_cfg or {})}}
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    for s, (acc, f1) in zip(seeds, values):
        d = folder / f"seed{s}" if len(seeds) > 1 else folder
        d.mkdir(exist_ok=True)
        extra = {k: v[s - 1] for k, v in extra_per_seed.items()}
        (d / "results.json").write_text(json.dumps(
            _result(acc, f1, s, method, dataset, shots, protocol, **extra)))
    if label:
        (folder / "bench.json").write_text(json.dumps(
            {"method": label, "backbone": "bb", "dataset": dataset.split(":")[-1],
             "protocol": protocol}))
    return folder


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    fs = {  # (method label, dataset, K): per-seed (acc, f1)
        ("coop", "kather", 2): [(0.80, 0.70), (0.90, 0.80)],
        ("coop", "kather", 8): [(0.85, 0.75), (0.95, 0.85)],
        ("zs", "kather", 2): [(0.85, 0.60), (0.85, 0.60)],  # ties coop's 85.00 mean
        ("zs", "kather", 8): [(0.85, 0.60), (0.85, 0.60)],
        ("lp", "kather", 2): [(0.50, 0.40), (0.60, 0.50)],
        ("lp", "kather", 8): [(0.70, 0.65), (0.72, 0.66)],
        ("coop", "blood", 2): [(0.40, 0.30), (0.50, 0.40)],
        ("coop", "blood", 8): [(0.60, 0.50), (0.62, 0.52)],
        ("zs", "blood", 2): [(0.30, 0.20), (0.30, 0.20)],
        ("zs", "blood", 8): [(0.30, 0.20), (0.30, 0.20)],
        ("lp", "blood", 2): [(0.45, 0.42), (0.47, 0.44)],
        ("lp", "blood", 8): [(0.70, 0.69), (0.74, 0.73)],
    }
    for (m, ds, k), vals in fs.items():
        write_run(root, f"bb/{ds}/few-shot/{m}/{k}shot", {"zs": "zero-shot", "lp": "linear-probe"}
                  .get(m, m), ds, k, vals, label=m)
    # base-to-novel, one data set
    write_run(root, "bb/kather/b2n/coop/8shot", "coop", "kather", 8, [(0.9, 0.9), (0.8, 0.8)],
              label="coop", protocol="base-to-novel", base=[0.9, 0.8], novel=[0.5, 0.7],
              hm=[2 * .9 * .5 / 1.4, 2 * .8 * .7 / 1.5])
    write_run(root, "bb/kather/b2n/zs/8shot", "zero-shot", "kather", 8, [(0.7, 0.7), (0.7, 0.7)],
              label="zs", protocol="base-to-novel", base=[0.7, 0.7], novel=[0.75, 0.75],
              hm=[2 * .7 * .75 / 1.45] * 2)
    # cross-domain
    for m, a in (("coop", 0.6), ("zs", 0.5)):
        write_run(root, f"bb/pannuke/cross/{m}/4shot", "coop" if m == "coop" else "zero-shot",
                  "pannuke", 4, [(a, a), (a + 0.1, a)], label=m, protocol="cross-domain",
                  domain_accuracy=[{"Adrenal_gland": 0.9, "Colon": a, "Skin": a - 0.1},
                                   {"Adrenal_gland": 0.9, "Colon": a + 0.2, "Skin": a}],
                  train_domain=["Adrenal_gland"] * 2)
    for m, a in (("coop", 0.6), ("zs", 0.5)):  # mean_domain_accuracy lives in metrics
        for s in (1, 2):
            p = root / f"bb/pannuke/cross/{m}/4shot/seed{s}/results.json"
            r = json.loads(p.read_text())
            r["metrics"]["mean_domain_accuracy"] = float(np.mean(
                [v for k, v in r["domain_accuracy"].items() if k != "Adrenal_gland"]))
            p.write_text(json.dumps(r))
    # a plain `fit` run folder without bench.json and a finished-nothing folder
    write_run(root, "plain/zs-ens", "zero-shot", "folder:/x/other", 2, [(0.3, 0.2)],
              method_cfg={"mode": "ensemble"})
    write_run(root, "plain/zs-tpl", "zero-shot", "folder:/x/other", 2, [(0.4, 0.2)],
              method_cfg={"mode": "template"})
    (root / "plain" / "empty").mkdir()
    (root / "plain" / "empty" / "config.yaml").write_text("seeds: [1]\n")
    assert run_cli("report", root, "--no-tsne", "--quiet") == 0
    return root


def md_tables(md: str) -> dict:
    """{heading: (header, {row: cells})} for every Markdown table."""
    out, lines = {}, md.splitlines()
    for i, l in enumerate(lines):
        if l.startswith("### ") and i + 2 < len(lines) and lines[i + 2].startswith("| Method"):
            block = []
            for m in lines[i + 2:]:
                if not m.startswith("|"):
                    break
                block.append(m)
            header = [c.strip() for c in block[0].strip("|").split("|")]
            rows = {}
            for m in block[2:]:
                cells = [c.strip() for c in m.strip("|").split("|")]
                rows[cells[0]] = cells[1:]
            out[l[4:]] = (header, rows)
    return out


def _find(tables, *parts):
    hits = [k for k in tables if all(p in k for p in parts)]
    assert len(hits) == 1, (parts, list(tables))
    return tables[hits[0]]


def test_fewshot_table_numbers_marks_and_average(runs_dir):
    md = (runs_dir / "report" / "report.md").read_text()
    t = md_tables(md)
    header, rows = _find(t, "Few-shot", "— bb —", "2-shot")
    # without a bench index, run folders are taken in path order
    assert header == ["Method", "blood Acc", "blood F1", "kather Acc", "kather F1", "Average Acc",
                      "Average F1"]
    assert list(rows) == ["coop", "lp", "zs"]
    # Kather accuracy: coop 85.00 ± 5.00 ties zs 85.00 ± 0.00 -> both best; lp second
    assert rows["coop"][2] == "**85.00 ± 5.00**"
    assert rows["zs"][2] == "**85.00 ± 0.00**"
    assert rows["lp"][2] == "<u>55.00 ± 5.00</u>"
    # Kather F1: coop 75 best, zs 60 second, lp 45 plain
    assert rows["coop"][3] == "**75.00 ± 5.00**" and rows["zs"][3] == "<u>60.00 ± 0.00</u>"
    assert rows["lp"][3] == "45.00 ± 5.00"
    # blood accuracy: lp 46 best, coop 45 second
    assert rows["lp"][0] == "**46.00 ± 1.00**" and rows["coop"][0] == "<u>45.00 ± 5.00</u>"
    # Average over data sets (no std): coop (85 + 45) / 2 = 65
    assert rows["coop"][4] == "**65.00**" and rows["zs"][4] == "<u>57.50</u>"
    assert rows["lp"][4] == "50.50"


def test_b2n_and_cross_domain_tables(runs_dir):
    t = md_tables((runs_dir / "report" / "report.md").read_text())
    header, rows = _find(t, "Base-to-novel", "8-shot")
    assert header == ["Method", "kather Base", "kather Novel", "kather HM"]
    assert rows["coop"][0] == "**85.00 ± 5.00**" and rows["zs"][0] == "<u>70.00 ± 0.00</u>"
    assert rows["zs"][1] == "**75.00 ± 0.00**" and rows["coop"][1] == "<u>60.00 ± 10.00</u>"
    hm = np.mean([2 * .9 * .5 / 1.4, 2 * .8 * .7 / 1.5]) * 100
    assert rows["coop"][2].strip("*<u>/") .startswith(f"{hm:.2f}")
    header, rows = _find(t, "Cross-domain", "pannuke")
    assert header == ["Method", "Adrenal_gland (train)", "Colon", "Skin", "AVG unseen",
                      "Pooled unseen F1"]
    assert rows["coop"][1] == "**70.00 ± 10.00**"  # Colon: (0.6 + 0.8) / 2
    assert rows["coop"][3] == "**62.50 ± 7.50**"  # per seed: mean of Colon and Skin
    assert rows["zs"][3] == "<u>52.50 ± 7.50</u>"
    assert rows["coop"][0] == rows["zs"][0] == "**90.00 ± 0.00**"  # a tie: both best, no 2nd


def test_curves_and_plain_run_labels(runs_dir):
    rj = json.loads((runs_dir / "report" / "report.json").read_text())
    c = [x for x in rj["curves"] if x["dataset"] == "blood" and x["method"] == "lp"][0]
    assert c["x"] == [2.0, 8.0] and c["mean"] == pytest.approx([46.0, 72.0])
    assert c["std"] == pytest.approx([1.0, 2.0])
    avg = [x for x in rj["curves"] if x["dataset"] == "Average over data sets"
           and x["method"] == "coop"][0]
    assert avg["mean"] == pytest.approx([65.0, 75.5])
    labels = {r["label"] for r in rj["runs"] if r["folder"].startswith("plain")}
    assert labels == {"zero-shot (mode=ensemble)", "zero-shot (mode=template)"}
    assert any("no finished seed" in n for n in rj["notes"])
    t = md_tables((runs_dir / "report" / "report.md").read_text())
    header, rows = _find(t, "Few-shot", "— tiny-hf-clip —", "2-shot")
    assert rows["zero-shot (mode=template)"][0] == "**40.00**"  # one seed: no ± part


def test_html_is_self_contained(runs_dir):
    rep = runs_dir / "report"
    page = (rep / "report.html").read_text()
    pngs = sorted(rep.glob("*.png"))
    assert {p.name.split("_")[0] for p in pngs} == {"curves", "recall", "confusion"}
    srcs = re.findall(r"src='([^']+)'", page)
    assert len(srcs) == len(pngs)
    assert {base64.b64decode(s.split(",", 1)[1]) for s in srcs} == {p.read_bytes() for p in pngs}
    assert "<link" not in page and "<script" not in page
    # the few-shot best cell is red-bold in HTML
    assert "<td class='best'>85.00 ± 5.00</td>" in page
    assert (rep / "table_bb_few-shot_k2.csv").exists()


def test_table_marks_unit():
    t = Table("k", "t", [("d", "Acc")], ["a", "b", "c", "d"])
    t.cells = {("a", 0): (0.5, 0.0, 2), ("b", 0): (0.50001, 0.0, 2), ("c", 0): (0.4, 0.1, 2),
               ("d", 0): None}
    assert t.marks() == {("a", 0): "best", ("b", 0): "best", ("c", 0): "second"}
    one = Table("k", "t", [("d", "Acc")], ["a"], {("a", 0): (0.5, 0.0, 2)})
    assert one.marks() == {}  # one row: nothing to compare


def test_load_runs_skips_report_folder(runs_dir):
    runs, notes = load_runs(runs_dir, exclude=runs_dir / "report")
    assert len(runs) == 12 + 2 + 2 + 2
    assert all("report" not in r.rel for r in runs)


def test_silhouette_and_stratified_subsample():
    from medadapt.report.tsne import _silhouette, _stratified
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, .05, (20, 4)) + [1, 0, 0, 0],
                        rng.normal(0, .05, (20, 4)) + [0, 1, 0, 0]])
    y = np.array([0] * 20 + [1] * 20)
    assert _silhouette(x, y) > 0.8
    assert _silhouette(x[:2], y[[0, 20]]) is None  # one item per class: undefined
    keep = _stratified(np.array([0] * 90 + [1] * 10), 20)
    assert len(keep) == 20 and (np.array([0] * 90 + [1] * 10)[keep] == 1).sum() == 10
