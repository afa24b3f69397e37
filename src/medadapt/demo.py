"""``medadapt demo``: the offline end-to-end example.

Runs zero-shot, linear probe and every registered trainable method at a few shot counts and two
seeds on the shipped ``synthpath-clip`` backbone and the generated ``synth-crc`` task, prints a
table (mean ± std over seeds) and writes a report folder with a few-shot accuracy plot. When the
synthetic world is missing it falls back to the tiny random ``tiny-hf-clip`` on the real tiles in
``../shared/data`` and says loudly that those numbers mean nothing.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from medadapt.errors import UserError

# Demo-sized training budgets, in optimisation steps (the papers' budgets are in each method's
# defaults; `medadapt fit` uses those). Methods that run the image encoder cost far more per step.
DEMO_STEPS = 100
DEMO_STEPS_IMAGES = 36
DEMO_BATCH = 32


# Per-method exceptions: CoCoOp encodes the class prompts once per image (batch x classes text
# passes per step); CLIP-Adapter's steps cost almost nothing and it needs many of them.
DEMO_STEP_OVERRIDES = {"cocoop": 30, "clip-adapter": 600}


def demo_train_cfg(needs_images: bool, n_items: int, method: str = "") -> dict:
    steps_per_epoch = max(1, -(-n_items // DEMO_BATCH))
    target = DEMO_STEP_OVERRIDES.get(method, DEMO_STEPS_IMAGES if needs_images else DEMO_STEPS)
    epochs = max(1, min(600, -(-target // steps_per_epoch)))
    return {"epochs": epochs, "batch_size": DEMO_BATCH, "checkpoint": False, "warmup_epochs": 0}


def _world(args) -> tuple[str, str, bool]:
    from medadapt.backbones import _shipped_synth
    if not args.tiny and (_shipped_synth() / "config.json").exists():
        try:
            from medadapt.data.sources import DATASETS, _ensure_registered
            _ensure_registered()
            if "synth-crc" in DATASETS:
                return "synthpath-clip", "synth-crc", True
        except Exception:
            pass
    crc = Path(__file__).resolve().parents[3] / "shared" / "data" / "crc-val-he-7k-sample"
    if not crc.exists():
        crc = Path("..") / "shared" / "data" / "crc-val-he-7k-sample"
    if args.data:
        crc = Path(args.data)
    if not crc.exists():
        raise UserError("the synthetic world is not installed and ../shared/data is not there; "
                        "pass --data FOLDER (one sub-folder per class)")
    return "tiny-hf-clip", f"folder:{crc}", False


def _methods(selected: list[str] | None) -> list[str]:
    from medadapt.methods import METHODS, load_all
    load_all()
    names = [n for n, m in METHODS.items() if m.trainable]
    names = ["zero-shot", "linear-probe"] + [n for n in names if n not in ("zero-shot", "linear-probe")]
    if selected:
        bad = [m for m in selected if m not in METHODS]
        if bad:
            raise UserError(f"unknown method(s) {bad}; valid: {', '.join(METHODS.names())}")
        names = [n for n in names if n in selected]
    return names


def run_demo(args) -> int:
    from medadapt.engine.runner import Runner
    from medadapt.methods import get_method
    from tqdm.auto import tqdm

    backbone, dataset, meaningful = _world(args)
    shots = args.shots or ([1, 4, 16] if meaningful else [1, 2])
    seeds = args.seeds or [1, 2]
    out = Path(args.out)
    # the report folder: new, empty, or an earlier demo's (never a user's folder of files)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if (out.is_dir() and any(e.name != "runs" for e in out.iterdir())  # runs/: an interrupted demo
            and not (out / "demo_results.json").exists()):
        raise UserError(f"--out {out} holds files that are not an earlier medadapt demo; choose "
                        "a new or empty folder")
    methods = _methods(args.methods)
    if not meaningful:
        print("!! synthetic world not found: running on the tiny RANDOM backbone 'tiny-hf-clip'; "
              "the numbers below are NOT meaningful (they only show the pipeline works) !!",
              file=sys.stderr)
    print(f"demo: {len(methods)} methods x shots {shots} x seeds {seeds} on {backbone} + {dataset}",
          file=sys.stderr)
    from medadapt.data.sources import load_dataset
    ds0 = load_dataset(dataset)
    n_classes, ds_meta = ds0.num_classes, ds0.meta
    rows, failures = [], {}
    t0 = time.time()
    jobs = [(m, k) for m in methods for k in shots]
    for m, k in tqdm(jobs, desc="demo runs", disable=not sys.stderr.isatty()):
        cls = get_method(m)
        mcfg = {"name": m}
        if "n_iters_per_shot" in cls.defaults:  # CLIP-LoRA's own 500 x shots schedule
            mcfg["n_iters_per_shot"] = None
        cfg = {"backbone": backbone, "dataset": dataset, "method": mcfg, "shots": k,
               "seeds": seeds, "train": demo_train_cfg(cls.needs_images, k * n_classes, m)}
        if cls.needs_descriptions and not meaningful:
            continue
        if "hierarchy" in cls.defaults and not ds_meta.get("hierarchy"):
            continue  # SCALE needs a class-concept hierarchy; synth-crc has none
        try:
            res = Runner(cfg, out / "runs" / f"{m}-{k}shot", resume=True, quiet=True,
                         progress=False).run()
        except UserError as e:
            failures[f"{m}-{k}shot"] = str(e)
            continue
        accs = [r["metrics"]["accuracy"] for r in res["results"]]
        rows.append({"method": m, "shots": k, "mean": float(np.mean(accs)),
                     "std": float(np.std(accs)), "values": accs,
                     "train_seconds": float(np.mean([r["train_seconds"] for r in res["results"]]))})
    elapsed = time.time() - t0
    _write_report(out, rows, failures, backbone, dataset, shots, meaningful, elapsed)
    print(_table(rows, shots))
    if failures:
        print(f"{len(failures)} run(s) failed: see {out / 'failures.json'}", file=sys.stderr)
    print(f"report: {out / 'report.md'} ({elapsed / 60:.1f} min)")
    return 0


def _table(rows, shots) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["shots"]): r for r in rows}
    head = "| method | " + " | ".join(f"{k}-shot" for k in shots) + " |"
    lines = [head, "|" + "---|" * (len(shots) + 1)]
    for m in methods:
        cells = []
        for k in shots:
            r = by.get((m, k))
            cells.append(f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}" if r else "–")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_report(out: Path, rows, failures, backbone, dataset, shots, meaningful, elapsed):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_results.json").write_text(json.dumps(
        {"backbone": backbone, "dataset": dataset, "meaningful": meaningful, "rows": rows,
         "elapsed_seconds": elapsed}, indent=1))
    if failures:
        (out / "failures.json").write_text(json.dumps(failures, indent=1))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^vP*Xh<>p"
    for i, m in enumerate(dict.fromkeys(r["method"] for r in rows)):
        rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["shots"])
        ax.errorbar([r["shots"] for r in rs], [100 * r["mean"] for r in rs],
                    yerr=[100 * r["std"] for r in rs], marker=markers[i % len(markers)],
                    color=plt.cm.tab20(i % 20), linestyle="-" if i < 10 else "--", capsize=3,
                    label=m)
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{backbone} on {dataset}" + ("" if meaningful else " (random backbone!)"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "fewshot_accuracy.png", dpi=120)
    plt.close(fig)
    note = ("" if meaningful else "\n**The backbone is random: these numbers are not meaningful.**\n")
    (out / "report.md").write_text(
        f"# medadapt demo\n\n{backbone} on {dataset}, seeds as configured, test accuracy "
        f"(%, mean ± std over seeds).{note}\n\n{_table(rows, shots)}\n\n"
        f"![few-shot accuracy](fewshot_accuracy.png)\n\nTotal time: {elapsed / 60:.1f} min.\n")


def add_parser(sub) -> None:
    from medadapt.helpfmt import HelpFormatter
    p = sub.add_parser("demo", help="offline end-to-end example (all methods, a few shot counts, "
                                    "2 seeds) with a table and a plot",
                       formatter_class=HelpFormatter,
                       description=__doc__)
    p.add_argument("--out", default="medadapt-demo", help="report folder (runs are resumed if it "
                                                          "exists)")
    p.add_argument("--shots", type=int, nargs="+", default=None,
                   help="shot counts (default: 1 4 16 on the synthetic world)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: 1 2)")
    p.add_argument("--methods", nargs="+", default=None, help="subset of methods (default: all)")
    p.add_argument("--tiny", action="store_true",
                   help="use the tiny random backbone on real tiles (pipeline check only)")
    p.add_argument("--data", default=None,
                   help="class-folder data set for --tiny (default: ../shared/data/crc-val-he-7k-sample)")
    p.set_defaults(func=run_demo)
