"""`medadapt demo` in miniature (CI cannot spend the full demo's 10 minutes)."""
import json

from conftest import run_cli


def test_demo_runs_offline_and_writes_report(tmp_path, capsys, shared_data):
    out = tmp_path / "demo"
    assert run_cli("demo", "--tiny", "--methods", "zero-shot", "linear-probe", "coop",
                   "--shots", "1", "2", "--seeds", "1", "2", "--out", out) == 0
    printed = capsys.readouterr()
    assert "NOT meaningful" in printed.err  # the random backbone says so
    res = json.loads((out / "demo_results.json").read_text())
    rows = {(r["method"], r["shots"]): r for r in res["rows"]}
    assert set(rows) == {(m, k) for m in ("zero-shot", "linear-probe", "coop") for k in (1, 2)}
    # the table's numbers are the seeds' results
    for (m, k), r in rows.items():
        accs = [json.loads((out / "runs" / f"{m}-{k}shot" / f"seed{s}" / "results.json").read_text())
                ["metrics"]["accuracy"] for s in (1, 2)]
        assert r["values"] == accs
        assert f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}" in printed.out
    assert (out / "fewshot_accuracy.png").stat().st_size > 1000
    assert "fewshot_accuracy.png" in (out / "report.md").read_text()
