"""End to end on the synthetic world (synth-crc, generated offline, with the tiny test backbone):
a grid of 3 methods x 2 shot counts x 2 seeds (plus one run that fails) runs through
`medadapt bench`, is interrupted half-way, resumed without redoing finished work, then
`medadapt report` writes tables, curves and the HTML page whose CONTENT is checked against the
seeds' results.json."""
import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import run_cli
from medadapt.engine import runner as runner_mod

METHODS = ["zero-shot", "zs-ensemble", "linear-probe"]


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    g = {"name": "tiny bench", "backbones": ["tiny-hf-clip"],
         "datasets": ["synth-crc"],
         "methods": ["zero-shot",
                     {"name": "zero-shot", "mode": "ensemble", "label": "zs-ensemble"},
                     {"name": "linear-probe", "C": 1.0, "label": "linear-probe"},
                     # injected failure: an invalid regularisation strength, one run only
                     {"name": "linear-probe", "label": "broken", "C": "not-a-number",
                      "shots": [1]}],
         "shots": [1, 2], "seeds": [1, 2]}
    p = d / "grid.yaml"
    p.write_text(yaml.safe_dump(g, sort_keys=False))
    return p


class Spy:
    """Wraps Runner._run_seed: records seeds actually computed; can raise Ctrl-C at call n."""

    def __init__(self, interrupt_at=None):
        self.orig = runner_mod.Runner._run_seed
        self.calls, self.computed, self.interrupt_at = 0, [], interrupt_at
        spy = self

        def wrapped(self_, prep, backbone, seed, sdir):
            spy.calls += 1
            if spy.interrupt_at and spy.calls == spy.interrupt_at:
                raise KeyboardInterrupt
            fresh = not (Path(sdir) / "results.json").exists()
            res = spy.orig(self_, prep, backbone, seed, sdir)
            if fresh:
                spy.computed.append(str(Path(sdir)))
            return res
        self.wrapped = wrapped


def _mtimes(out: Path) -> dict:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("results.json")}


@pytest.fixture(scope="module")
def bench_out(grid_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "grid"
    mp = pytest.MonkeyPatch()
    # --- first pass: Ctrl-C during the 8th seed (run 4 = zs-ensemble/2shot, its second seed)
    spy = Spy(interrupt_at=8)
    mp.setattr(runner_mod.Runner, "_run_seed", spy.wrapped)
    assert run_cli("bench", grid_file, "--out", out, "--quiet") == 130
    first = _mtimes(out)
    idx = json.loads((out / "bench_index.json").read_text())
    st = {r["id"].split("/", 3)[3]: r["status"] for r in idx["runs"]}
    assert st == {"zero-shot/1shot": "done", "zero-shot/2shot": "done",
                  "zs-ensemble/1shot": "done", "zs-ensemble/2shot": "interrupted",
                  "linear-probe/1shot": "pending", "linear-probe/2shot": "pending",
                  "broken/1shot": "pending"}
    assert len(first) == 7  # 3 runs x 2 seeds + the first seed of run 4
    # --- second pass: resume; only the missing seeds are computed, the failure is recorded
    spy2 = Spy()
    mp.setattr(runner_mod.Runner, "_run_seed", spy2.wrapped)
    assert run_cli("bench", grid_file, "--out", out, "--quiet") == 1  # one run failed
    mp.undo()
    yield {"out": out, "first": first, "computed": spy2.computed, "calls": spy2.calls}


def test_resume_redoes_nothing_finished(bench_out):
    out = bench_out["out"]
    base = out / "tiny-hf-clip" / "synth-crc" / "few-shot"
    # exactly the unfinished seeds were computed on resume
    want = {str(base / "zs-ensemble" / "2shot" / "seed2")} | {
        str(base / "linear-probe" / k / f"seed{s}") for k in ("1shot", "2shot") for s in (1, 2)}
    assert set(bench_out["computed"]) == want
    assert len(bench_out["computed"]) == 5
    # finished files untouched
    now = _mtimes(out)
    for f, t in bench_out["first"].items():
        assert now[f] == t, f
    assert len(now) == 12
    # run folders follow the run-folder contract
    run = base / "linear-probe" / "2shot"
    for f in ("config.yaml", "classes.json", "summary.json", "bench.json", "seed1/fewshot.json",
              "seed1/params.safetensors", "seed2/results.json", "seed2/log.txt"):
        assert (run / f).exists(), f
    assert json.loads((run / "bench.json").read_text())["method"] == "linear-probe"


def test_failure_recorded_and_rest_done(bench_out):
    out = bench_out["out"]
    idx = json.loads((out / "bench_index.json").read_text())
    assert idx["counts"] == {"done": 6, "failed": 1}
    fails = json.loads((out / "bench_failures.json").read_text())
    assert [f["id"] for f in fails] == ["tiny-hf-clip/synth-crc/few-shot/broken/1shot"]
    assert fails[0]["status"] == "failed" and fails[0]["traceback"]
    assert "not-a-number" in fails[0]["error"] or fails[0]["error_type"]
    done = [r for r in idx["runs"] if r["status"] == "done"]
    for r in done:
        accs = [json.loads(p.read_text())["metrics"]["accuracy"]
                for p in sorted((out / r["folder"]).glob("seed*/results.json"))]
        assert r["accuracy_mean"] == pytest.approx(np.mean(accs))


def test_third_pass_skips_and_changed_config_is_left_alone(bench_out, grid_file, capsys):
    out = bench_out["out"]
    before = _mtimes(out)
    spy = Spy()
    mp = pytest.MonkeyPatch()
    mp.setattr(runner_mod.Runner, "_run_seed", spy.wrapped)
    try:
        # everything complete (the broken run is skipped with --skip-failed): nothing runs
        assert run_cli("bench", grid_file, "--out", out, "--quiet", "--skip-failed") == 1
        assert spy.calls == 0
        # a changed setting: finished runs are reported as changed, not silently mixed
        assert run_cli("bench", grid_file, "--out", out, "--quiet", "--set",
                       "data.allow_fewer=true", "--only", "zero-shot/1shot") == 1
        assert spy.calls == 0
        fails = json.loads((out / "bench_failures.json").read_text())
        changed = [f for f in fails if f["status"] == "changed"]
        assert changed and "data.allow_fewer" in changed[0]["error"]
        # back to the grid as it is: the index shows the real state again
        assert run_cli("bench", grid_file, "--out", out, "--quiet", "--skip-failed") == 1
        assert spy.calls == 0
    finally:
        mp.undo()
    idx = json.loads((out / "bench_index.json").read_text())
    assert idx["counts"] == {"done": 6, "failed": 1}
    assert _mtimes(out) == before
    capsys.readouterr()


def _md_table(md: str, title_part: str) -> dict:
    """{row label: [cell strings]} and header of the first table after a heading with title_part."""
    lines = md.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("### ") and title_part in l)
    rows = [l for l in lines[start + 1:] if l.startswith("|")]
    block = []
    for l in lines[start + 2:]:
        if not l.startswith("|"):
            if block:
                break
            continue
        block.append(l)
    header = [c.strip() for c in block[0].strip("|").split("|")]
    out = {}
    for l in block[2:]:
        cells = [c.strip() for c in l.strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return header, out


def _plain(cell: str) -> str:
    return re.sub(r"\*\*|</?u>", "", cell)


def test_report_content(bench_out, capsys):
    out = bench_out["out"]
    assert run_cli("report", out, "--quiet", "--tsne-max", "90") == 0
    rep = out / "report"
    md = (rep / "report.md").read_text()
    base = out / "tiny-hf-clip" / "synth-crc" / "few-shot"
    for k in (1, 2):
        header, rows = _md_table(md, f"{k}-shot")
        assert header == ["Method", "synth-crc Acc", "synth-crc F1"]
        assert list(rows) == METHODS  # the failed run has no row
        accs = {}
        for m in METHODS:
            res = [json.loads(p.read_text()) for p in sorted((base / m / f"{k}shot").glob(
                "seed*/results.json"))]
            assert len(res) == 2
            for j, key in enumerate(("accuracy", "macro_f1")):
                vals = [r["metrics"][key] for r in res]
                want = f"{np.mean(vals) * 100:.2f} ± {np.std(vals) * 100:.2f}"
                assert _plain(rows[m][j]) == want, (k, m, key)
            accs[m] = round(np.mean([r["metrics"]["accuracy"] for r in res]) * 100, 2)
        # best bold, second underlined (ties share the mark)
        ranked = sorted(set(accs.values()), reverse=True)
        for m, v in accs.items():
            cell = rows[m][0]
            if v == ranked[0]:
                assert cell.startswith("**") and cell.endswith("**"), (m, cell)
            elif len(ranked) > 1 and v == ranked[1]:
                assert cell.startswith("<u>"), (m, cell)
            else:
                assert "**" not in cell and "<u>" not in cell
    # curves: one point per K per method, equal to the table means
    rj = json.loads((rep / "report.json").read_text())
    curves = {c["method"]: c for c in rj["curves"] if c["dataset"] == "synth-crc"}
    assert set(curves) == set(METHODS)
    for m, c in curves.items():
        assert c["x"] == [1.0, 2.0]
        for x, y in zip(c["x"], c["mean"]):
            accs = [json.loads(p.read_text())["metrics"]["accuracy"]
                    for p in (base / m / f"{int(x)}shot").glob("seed*/results.json")]
            assert y == pytest.approx(np.mean(accs) * 100)
    # figures: curves, recall heat map, confusion matrices, t-SNE; all embedded in the HTML
    pngs = sorted(p.name for p in rep.glob("*.png"))
    kinds = {n.split("_")[0] for n in pngs}
    assert {"curves", "recall", "confusion", "tsne"} <= kinds
    for n in pngs:
        assert f"]({n})" in md
    page = (rep / "report.html").read_text()
    imgs = re.findall(r"<img [^>]*src='([^']+)'", page)
    assert len(imgs) == len(pngs) and all(s.startswith("data:image/png;base64,") for s in imgs)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in imgs}
    assert embedded == {(rep / n).read_bytes() for n in pngs}
    assert "class='best'" in page and "class='second'" in page
    assert "broken/1shot" in page and "Failed runs" in page
    # the t-SNE figure: frozen features + one panel per method
    tsne = [f for f in rj["figures"] if f["kind"] == "tsne"][0]
    assert len(tsne["data"]["panels"]) == 1 + len(METHODS)
    assert tsne["data"]["panels"][0].startswith("before")
    # recall heat map data = mean per-class recall over seeds
    rec = [f for f in rj["figures"] if f["kind"] == "recall"][0]["data"]
    lp = [json.loads(p.read_text()) for p in (base / "linear-probe" / "2shot").glob(
        "seed*/results.json")]
    cls = rec["classes"][0]
    want = np.mean([r["metrics"]["per_class_recall"][cls] for r in lp]) * 100
    assert rec["recall"][rec["methods"].index("linear-probe")][0] == pytest.approx(want, abs=1e-3)
    capsys.readouterr()
