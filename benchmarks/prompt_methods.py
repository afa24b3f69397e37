"""Benchmark: every prompt-learning method against zero-shot, few-shot and base-to-novel.

Default world: the shipped ``synthpath-clip`` backbone on the generated ``synth-crc`` task
(16 shots, seeds 1 2 3) and base-to-novel on ``synth-crc-b2n``. Writes
``benchmarks/results/prompt_methods.json`` and ``.md`` (accuracy mean ± std over seeds, train
seconds, base / novel / HM).

    python benchmarks/prompt_methods.py                       # the synthetic world
    python benchmarks/prompt_methods.py --backbone tiny-hf-clip \\
        --dataset folder:../shared/data/crc-val-he-7k-sample --b2n-dataset folder:../shared/data/crc-val-he-7k-sample \\
        --shots 2 --epochs 5 --descriptions auto --tag tiny       # a smoke run anywhere

Each method runs with its paper defaults (``defaults`` / ``train_defaults``) unless ``--epochs``
or ``--set`` override them. BiomedCoOp uses its base-to-novel settings (λ2 = 0.5, τ = 1.25) in
the base-to-novel runs. Exits with status 2 and a one-line message when the synthetic world (its
backbone or data set) is not available yet.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METHODS = ["zero-shot", "coop", "cocoop", "kgcoop", "prograd", "maple", "promptsrc", "coprompt",
           "biomedcoop"]
B2N_SET = {"biomedcoop": ["method.kdsp_lambda=0.5", "method.tau=1.25"]}


def check_world(backbone: str, datasets: list[str]) -> str | None:
    """None when the backbone and data sets load, else a one-line reason."""
    from medadapt.errors import UserError
    try:
        from medadapt.backbones import load_backbone
        load_backbone(backbone)
    except (UserError, KeyError, OSError) as e:
        return f"backbone {backbone!r} is not available ({e})"
    from medadapt.data.sources import load_dataset
    for d in datasets:
        try:
            load_dataset(d)
        except (UserError, KeyError, OSError) as e:
            return f"data set {d!r} is not available ({e})"
    return None


def auto_descriptions(dataset: str) -> str:
    """A small descriptions file for a data set without shipped ones (smoke runs only)."""
    from medadapt.data.sources import load_dataset
    ds = load_dataset(dataset)
    generic = ["a tissue region of {}", "an H&E stained area showing {}",
               "a histopathology patch with {}", "microscopic appearance of {}"]
    data = {"meta": {"source": "benchmarks/prompt_methods.py --descriptions auto: generic "
                               "template sentences, not LLM descriptions (smoke run)"},
            "classes": {c: [g.format(c) for g in generic] for c in ds.classnames}}
    f = Path(tempfile.mkdtemp(prefix="medadapt_desc_")) / "descriptions.json"
    f.write_text(json.dumps(data, indent=1))
    return str(f)


def method_seeds(args, method: str) -> list[int]:
    """The seeds of one method: ``--seeds-for METHOD=S,S`` or else ``--seeds``."""
    for item in args.seeds_for or []:
        name, _, seeds = item.partition("=")
        if name == method:
            return [int(x) for x in seeds.split(",") if x]
    return list(args.seeds)


def finished(out: Path, seeds: list[int]) -> list[dict] | None:
    """The results of a run folder whose every seed finished, else None."""
    dirs = [out] if len(seeds) == 1 else [out / f"seed{s}" for s in seeds]
    if not all((d / "results.json").exists() for d in dirs):
        return None
    res = [json.loads((d / "results.json").read_text()) for d in dirs]
    return res if sorted(r.get("seed") for r in res) == sorted(seeds) else None


def run_fit(args, method: str, dataset: str, out: Path, b2n: bool, descriptions: str | None) -> list[dict]:
    from medadapt.cli import main
    seeds = method_seeds(args, method)
    if args.resume and (res := finished(out, seeds)) is not None:
        print(f"{method}: reusing the finished run folder {out}", flush=True)
        return res
    argv = ["fit", "--backbone", args.backbone, "--dataset", dataset, "--method", method,
            "--shots", str(args.shots), "--seeds", *[str(s) for s in seeds], "--out", str(out),
            "--overwrite", "--quiet", "--device", args.device]
    if b2n:
        argv.append("--base-to-novel")
    sets = list(args.set or [])
    if args.epochs is not None and method != "zero-shot":
        sets.append(f"train.epochs={args.epochs}")
    if descriptions:
        sets.append(f"texts.descriptions={descriptions}")
    if b2n:
        sets += B2N_SET.get(method, [])
    for s in sets:
        argv += ["--set", s]
    rc = main(argv)
    if rc:
        raise RuntimeError(f"medadapt fit exited with {rc}")
    res = finished(out, seeds)
    if res is None:
        raise RuntimeError(f"medadapt fit left {out} without results for seeds {seeds}")
    return res


def stat(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "values": vals}


def fmt(s, pct=True):
    if s is None:
        return "–"
    k = 100 if pct else 1
    return f"{k * s['mean']:.1f} ± {k * s['std']:.1f}" if pct else f"{s['mean']:.1f}"


def write(args, rows, t_all, done: bool) -> Path:
    zs = next((r for r in rows if r["method"] == "zero-shot" and r.get("accuracy")), None)
    for r in rows:
        if zs and r.get("accuracy") and r["method"] != "zero-shot":
            r["beats_zero_shot"] = r["accuracy"]["mean"] > zs["accuracy"]["mean"]
    import torch
    import medadapt
    meta = {"backbone": args.backbone, "dataset": args.dataset, "b2n_dataset": args.b2n_dataset,
            "shots": args.shots, "seeds": args.seeds, "epochs_override": args.epochs,
            "extra_set": args.set or [], "seeds_for": args.seeds_for or [], "descriptions": args.descriptions,
            "device": args.device, "torch_threads": torch.get_num_threads(),
            "medadapt_version": medadapt.__version__, "total_seconds": time.time() - t_all,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "complete": done, "methods_requested": args.methods}
    if args.backbone.startswith("tiny-"):
        meta["note"] = (f"{args.backbone} is a TEST-ONLY random-init backbone: these numbers are "
                        "meaningless; this run only shows that the script and every method work "
                        "end to end.")
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"prompt_methods{args.tag}"
    tmp = stem.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    os.replace(tmp, stem.with_suffix(".json"))
    lines = [f"# Prompt methods vs zero-shot: {args.backbone} on {args.dataset}",
             "",
             f"{args.shots} shots, seeds {args.seeds}; base-to-novel on {args.b2n_dataset or '–'}. "
             f"Accuracy / base / novel / HM in % (mean ± std over seeds); train seconds per seed "
             f"(mean). Epochs: {'paper defaults' if args.epochs is None else args.epochs}. "
             f"Generated by `benchmarks/prompt_methods.py` on {meta['date']}.",
             ""] + ([f"**{meta['note']}**", ""] if meta.get("note") else []) + (
             [f"Seeds differ per method (`--seeds-for`): {', '.join(args.seeds_for)}; the "
              "'seeds' column gives each row's count.", ""] if args.seeds_for else []) + (
             [f"**Partial: the run was interrupted; still missing: "
              f"{', '.join(m for m in args.methods if m not in {r['method'] for r in rows})}.**", ""]
             if not done else []) + [
             "| method | seeds | accuracy | macro-F1 | train s | params | base | novel | HM | > zero-shot |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | | error: {r['error'][:80]} |  |  |  |  |  |  |  |")
            continue
        beat = {True: "yes", False: "no"}.get(r.get("beats_zero_shot"), "–")
        n = len((r.get("accuracy") or {}).get("values", []))
        lines.append(f"| {r['method']} | {n} | {fmt(r.get('accuracy'))} | {fmt(r.get('macro_f1'))} | "
                     f"{fmt(r.get('train_seconds'), False)} | {r.get('n_trainable_params', 0)} | "
                     f"{fmt(r.get('base'))} | {fmt(r.get('novel'))} | {fmt(r.get('hm'))} | {beat} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="synthpath-clip")
    ap.add_argument("--dataset", default="synth-crc")
    ap.add_argument("--b2n-dataset", default="synth-crc-b2n", help="'' to skip base-to-novel")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--seeds-for", action="append", metavar="METHOD=S,S",
                    help="other seeds for one method (e.g. promptsrc=1 for a slow one); the "
                         "table's 'seeds' column shows how many each row has")
    ap.add_argument("--resume", action="store_true",
                    help="reuse run folders under --runs whose seeds all finished")
    ap.add_argument("--epochs", type=int, default=None, help="override every method's epochs")
    ap.add_argument("--set", action="append", help="extra --set KEY=VALUE for every fit")
    ap.add_argument("--descriptions", default=None,
                    help="descriptions JSON for every data set; 'auto' writes generic ones")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (1 is much faster for tiny models on a busy CPU)")
    ap.add_argument("--tag", default="", help="suffix of the result files (prompt_methods<tag>.*)")
    ap.add_argument("--runs", default=None, help="folder for the run folders (default: a temp dir)")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)

    datasets = [args.dataset] + ([args.b2n_dataset] if args.b2n_dataset else [])
    why = check_world(args.backbone, datasets)
    if why:
        print(f"prompt_methods: cannot run: {why}. The synthetic world (issue 3: `synthpath-clip`, "
              "`synth-crc`, `synth-crc-b2n`) must land first, or pass --backbone/--dataset/"
              "--b2n-dataset for another world.", file=sys.stderr)
        return 2
    runs = Path(args.runs or tempfile.mkdtemp(prefix="medadapt_bench_"))
    desc = {d: (auto_descriptions(d) if args.descriptions == "auto" else args.descriptions)
            for d in datasets}
    rows, t_all = [], time.time()
    for m in args.methods:
        row = {"method": m}
        try:
            t0 = time.time()
            res = run_fit(args, m, args.dataset, runs / f"fs-{m}", False, desc[args.dataset])
            row["accuracy"] = stat([r["metrics"]["accuracy"] for r in res])
            row["macro_f1"] = stat([r["metrics"]["macro_f1"] for r in res])
            row["train_seconds"] = stat([r["train_seconds"] for r in res])
            row["n_trainable_params"] = res[0]["n_trainable_params"]
            row["wall_seconds"] = time.time() - t0
            if args.b2n_dataset:
                res = run_fit(args, m, args.b2n_dataset, runs / f"b2n-{m}", True, desc[args.b2n_dataset])
                for k in ("base", "novel", "hm"):
                    row[k] = stat([r[k] for r in res])
        except Exception as e:  # one method's failure is reported, the others still run
            row["error"] = f"{type(e).__name__}: {e}"
        rows.append(row)
        write(args, rows, t_all, False)  # partial results survive an interrupted run
        print(f"{m:11s} acc {fmt(row.get('accuracy'))}  HM {fmt(row.get('hm'))}  "
              f"train {fmt(row.get('train_seconds'), False)}s {row.get('error', '')}", flush=True)

    stem = write(args, rows, t_all, True)
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
