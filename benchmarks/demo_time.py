"""How long does ``medadapt demo`` take from a cold cache? (issue 15: <= 6 min on 2 CPU cores.)

Runs the demo N times as a user would (``python -m medadapt demo``, a subprocess), each time with an
empty ``MEDADAPT_CACHE`` (synthetic data sets generated, features encoded) and an empty output
folder, and records per run: wall seconds, CPU seconds of the demo and its worker processes
(user + sys), the machine's load average before and after (``os.getloadavg``, what ``uptime``
prints), and the per-phase numbers the demo writes (preparation, per-run training seconds).
Reports the median wall time and writes ``benchmarks/results/demo_time.json``.

On a shared machine the wall time is inflated by the other jobs; the CPU time is not (much), and
``cpu_seconds / cores`` is the wall time the demo would take alone on this many cores when its
worker processes keep every core busy. Both are reported.

    python benchmarks/demo_time.py [--n 3] [--out-json benchmarks/results/demo_time.json]
                                   [-- extra demo arguments, e.g. --workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def one_run(extra: list[str], keep: Path | None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="medadapt-demo-time-"))
    env = dict(os.environ, MEDADAPT_CACHE=str(tmp / "cache"))
    src = HERE.parent / "src"
    env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp / "demo"
    cmd = [sys.executable, "-m", "medadapt", "demo", "--out", str(out), *extra]
    load0 = os.getloadavg()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load1 = os.getloadavg()
    rec = {"command": " ".join(["medadapt", "demo", *extra]), "returncode": proc.returncode,
           "wall_seconds": round(wall, 1),
           "cpu_seconds": round((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), 1),
           "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in load1],
           "stderr_tail": proc.stderr[-3000:], "stdout_tail": proc.stdout[-4000:]}
    res = out / "demo_results.json"
    if res.exists():
        d = json.loads(res.read_text())
        rows = d.get("rows", [])
        rec.update(workers=d.get("workers"), cores=d.get("cores"),
                   prepare_seconds=round(d.get("prepare_seconds", 0), 1),
                   demo_elapsed_seconds=round(d.get("elapsed_seconds", 0), 1),
                   n_runs=len(rows), n_failed=sum(1 for r in rows if r.get("error")))
        per = {}
        for r in rows:
            if not r.get("error"):
                per.setdefault(r["method"], 0.0)
                per[r["method"]] += sum(r.get("train_seconds") or [])
        rec["train_seconds_by_method"] = {k: round(v, 1) for k, v in
                                          sorted(per.items(), key=lambda kv: -kv[1])}
        rec["cpu_seconds_by_method"] = {}
        for r in rows:
            if r.get("cpu_seconds") is not None:
                m = r["method"]
                rec["cpu_seconds_by_method"][m] = round(
                    rec["cpu_seconds_by_method"].get(m, 0.0) + r["cpu_seconds"], 1)
    if keep:
        shutil.copytree(out, keep, dirs_exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return rec


def _git() -> dict:
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD"), "subject": git("log", "-1", "--format=%s"),
            "dirty": bool(git("status", "--porcelain"))}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3, help="cold-cache runs")
    ap.add_argument("--out-json", default=str(HERE / "results" / "demo_time.json"))
    ap.add_argument("--keep", default=None, help="copy the last run's report folder here")
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. the load)")
    a = ap.parse_args(argv)
    from _machine import machine
    runs = []
    for i in range(a.n):
        rec = one_run(extra, Path(a.keep) if a.keep and i == a.n - 1 else None)
        runs.append(rec)
        print(f"run {i + 1}/{a.n}: wall {rec['wall_seconds']:.0f} s, "
              f"cpu {rec['cpu_seconds']:.0f} s, "
              f"load {rec['load_before'][0]:.1f} -> {rec['load_after'][0]:.1f}, "
              f"rc {rec['returncode']}", flush=True)
    ok = [r for r in runs if r["returncode"] == 0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    summary = {
        "median_wall_seconds": statistics.median(r["wall_seconds"] for r in ok) if ok else None,
        "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in ok) if ok else None,
        "cores": cores}
    if ok:
        summary["median_cpu_seconds_per_core"] = round(summary["median_cpu_seconds"] / cores, 1)
    out = {"benchmark": "demo_time", "argv": ["python", "benchmarks/demo_time.py", *sys.argv[1:]],
           "tree": _git(), "note": a.note, "machine": machine(), "summary": summary, "runs": runs}
    Path(a.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out_json).write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {a.out_json}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
