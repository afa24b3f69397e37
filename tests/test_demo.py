"""`medadapt demo` in miniature (CI cannot spend the full demo's minutes), and its pieces."""
import io
import json

import pytest

from conftest import run_cli


def test_demo_miniature_covers_every_registered_method(tmp_path, capsys, shared_data):
    """Every method in the registry is run or listed as skipped with a reason (a new method
    cannot silently miss the demo); the table's numbers are the seeds' results; progress lines
    when stderr is not a terminal; a Markdown and a self-contained HTML report."""
    from medadapt.methods import METHODS, load_all
    load_all()
    out = tmp_path / "demo"
    assert run_cli("demo", "--tiny", "--shots", "1", "--seeds", "1", "2", "--max-steps", "2",
                   "--workers", "2", "--out", out) == 0
    printed = capsys.readouterr()
    assert "NOT meaningful" in printed.err  # the random backbone says so
    res = json.loads((out / "demo_results.json").read_text())
    ran = {r["method"] for r in res["rows"] if not r.get("error")}
    skipped = res["skipped"]
    assert set(METHODS.names()) == ran | set(skipped) | {r["method"] for r in res["rows"]}
    assert all(isinstance(why, str) and len(why) > 10 for why in skipped.values())
    assert "scale" in skipped and "hierarchy" in skipped["scale"]
    assert not res["failures"], res["failures"]
    md = (out / "report.md").read_text()
    for m in ran:
        assert f"| {m} |" in md
    for m in skipped:
        assert f"`{m}`" in md
    # the table's numbers are the seeds' results, one progress line per run on stderr
    for r in res["rows"]:
        accs = [json.loads((out / "runs" / r["key"] / f"seed{s}" / "results.json").read_text())
                ["metrics"]["accuracy"] for s in (1, 2)]
        assert r["values"] == accs
        assert f"{r['method']} 1-shot: " in printed.err
    zs = next(r for r in res["rows"] if r["method"] == "zero-shot")
    assert f"{100 * sum(zs['values']) / 2:.1f} ± " in printed.out
    # budgets: --max-steps caps every method with a gradient loop and says so
    coop = next(r for r in res["rows"] if r["method"] == "coop")
    assert coop["budget"]["kind"] == "reduced" and coop["budget"]["paper_steps"] > 2
    assert "reduced budget" in md
    assert (out / "fewshot_accuracy.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "src='fewshot" not in html
    assert "Run it on your own images" in html and "HF_HUB_OFFLINE=1" in md
    assert "backbones: [biomedclip]" in (out / "own-data.yaml").read_text()


def _row(method, values, shots=16, task="fewshot", **kw):
    return {"key": f"{method}-{shots}", "method": method, "dataset": "d", "task": task,
            "shots": shots, "values": values, "novel": [None] * len(values),
            "train_seconds": [1.0] * len(values), "budget": {"kind": "own", "steps": 10,
                                                             "paper_steps": 10}, **kw}


def test_learning_findings_exact():
    from medadapt.report.demo_page import finding_text, learning_findings
    rows = [_row("zero-shot", [0.50, 0.50]),
            _row("coop", [0.60, 0.62]),  # +11.0 points, spread 2.0: learns
            _row("clip-adapter", [0.50, 0.52], loss_first=[1.30, 1.30], loss_last=[1.29, 1.30]),
            _row("kgcoop", [0.51, 0.53], loss_first=[1.3, 1.3], loss_last=[0.5, 0.5]),
            _row("coop", [0.99, 0.99], shots=4)]  # only the largest K counts
    trainable = {"zero-shot": False, "coop": True, "clip-adapter": True, "kgcoop": True}
    f = {x["method"]: x for x in learning_findings(rows, trainable=trainable)}
    assert set(f) == {"coop", "clip-adapter", "kgcoop"}
    assert f["coop"]["passed"] and f["coop"]["margin"] == pytest.approx(11.0)
    assert f["coop"]["spread"] == pytest.approx(2.0)
    ca = f["clip-adapter"]
    assert not ca["passed"] and ca["margin"] == pytest.approx(1.0)
    assert "did not fall" in ca["evidence"] and "1.300" in ca["evidence"]
    assert "4-shot" not in ca["evidence"]  # clip-adapter has no 4-shot row
    assert not f["kgcoop"]["passed"]  # margin 2.0 == spread 2.0: not more than the spread
    assert "loss fell" in f["kgcoop"]["evidence"]
    assert "not above zero-shot" in finding_text(ca)
    assert finding_text(f["coop"]).endswith("learns.")


def test_progress_line_without_terminal():
    from medadapt.demo import Progress, run_line
    row = _row("coop", [0.830, 0.864], wall_seconds=12.2)
    assert run_line(row) == "coop 16-shot: 84.7 ± 1.7 (12 s)"
    row["novel"] = [0.5, 0.7]
    assert run_line(row) == "coop 16-shot: 84.7 ± 1.7 | novel 60.0 (12 s)"
    buf = io.StringIO()  # not a terminal: one line per finished run, no bar
    p = Progress(3, stream=buf)
    p.done(_row("zero-shot", [0.5], wall_seconds=0.4))
    p.done({**_row("maple", [0.5]), "error": "boom", "wall_seconds": 1})
    p.close()
    assert buf.getvalue().splitlines() == ["zero-shot 16-shot: 50.0 ± 0.0 (0 s)",
                                           "maple 16-shot: FAILED (boom) (1 s)"]


def test_scale_concept_examples(tmp_path):
    """SCALE's concept-level output for the demo page: alternating classes, the item's true
    concepts, and the top class-concept combinations of the trained model."""
    from medadapt.engine.runner import Runner
    from medadapt.hierarchy import load_hierarchy
    from medadapt.report.demo_page import concept_examples
    run = tmp_path / "scale"
    Runner({"backbone": "tiny-hf-clip", "dataset": "synth-malignancy", "method": {"name": "scale"},
            "shots": 1, "seeds": [1], "train": {"epochs": 2, "checkpoint": False}}, run,
           quiet=True, progress=False).run()
    ex = concept_examples(run, 4)
    items = ex["items"]
    assert [it["true_class"] for it in items] == ["benign", "malignant"] * 2
    combos = load_hierarchy("synth-malignancy").combination_names()
    for it in items:
        assert it["true_concepts"] and it["predicted"] in ("benign", "malignant")
        tops = [t.rsplit(" (", 1)[0] for t in it["top_concepts"].split("; ")]
        assert len(tops) == 3 and all(t in combos for t in tops)


def test_demo_never_deletes_a_folder_it_did_not_write(tmp_path):
    from medadapt.demo import run_job
    mine = tmp_path / "runs" / "coop-1shot"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("user's file")
    job = {"key": "coop-1shot", "method": "coop", "dataset": "d", "protocol": "few-shot",
           "shots": 1, "task": "fewshot", "budget": {}, "seeds": [1],
           "cfg": {"backbone": "tiny-hf-clip", "dataset": "d", "method": {"name": "coop"}}}
    row = run_job(job, str(tmp_path))
    assert "not written by this demo" in row["error"]
    assert (mine / "notes.txt").read_text() == "user's file"
