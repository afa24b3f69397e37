"""Benchmark: CoOp training with cached image features vs re-encoding images every step.

CoOp leaves the image encoder untouched, so medadapt trains it on cached features (a step costs
one text encoding of the C class prompts). This script measures, in one run and on one backbone,
the 16-shot CoOp training time of

* ``cached``: the default path (features of the eval transform, encoded once, from the cache);
* ``cached+views``: the cache with ``data.augment_views=V`` pre-encoded augmented views;
* ``re-encode``: the same method with ``needs_images=True`` (registered here as
  ``coop-reencode``): every step loads the images, applies the train transform and runs the image
  encoder, as reference implementations do.

Writes ``benchmarks/results/coop_cache.json``.

    python benchmarks/coop_cache.py                                  # synthpath-clip + synth-crc
    python benchmarks/coop_cache.py --backbone tiny-hf-clip --dataset folder:../shared/data/crc-val-he-7k-sample --shots 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def register_reencode():
    from medadapt.methods import METHODS, get_method, register_method
    if "coop-reencode" in METHODS:
        return
    CoOp = get_method("coop")

    @register_method("coop-reencode")
    class CoOpReencode(CoOp):
        """CoOp that re-encodes the images every step (benchmark baseline only)."""
        needs_images = True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="synthpath-clip")
    ap.add_argument("--dataset", default="synth-crc")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="default: CoOp's (50)")
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (1 is much faster for tiny models on a busy CPU)")
    ap.add_argument("--set", action="append", help="extra --set KEY=VALUE for every fit")
    ap.add_argument("--tag", default="")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)

    from prompt_methods import check_world
    why = check_world(args.backbone, [args.dataset])
    if why:
        print(f"coop_cache: cannot run: {why}. The synthetic world (issue 3) must land first, or "
              "pass --backbone/--dataset for another world.", file=sys.stderr)
        return 2
    register_reencode()
    from medadapt.cli import main as cli
    runs = Path(tempfile.mkdtemp(prefix="medadapt_coop_cache_"))
    variants = [("cached", "coop", []),
                (f"cached+{args.views}views", "coop", [f"data.augment_views={args.views}"]),
                ("re-encode", "coop-reencode", [])]
    rows = []
    for label, method, sets in variants:
        out = runs / label
        argv = ["fit", "--backbone", args.backbone, "--dataset", args.dataset, "--method", method,
                "--shots", str(args.shots), "--seeds", str(args.seed), "--out", str(out),
                "--quiet", "--device", args.device]
        for s in sets + (args.set or []) + ([f"train.epochs={args.epochs}"] if args.epochs else []):
            argv += ["--set", s]
        t0, c0 = time.time(), time.process_time()
        rc = cli(argv)
        wall, cpu = time.time() - t0, time.process_time() - c0
        if rc:
            print(f"{label}: medadapt fit exited with {rc}", file=sys.stderr)
            return 1
        r = json.loads((out / "results.json").read_text())
        info = r["train_info"]
        rows.append({"variant": label, "method": method, "train_seconds": r["train_seconds"],
                     "train_loop_seconds": info.get("train_loop_seconds"),
                     "epochs": info.get("epochs"), "accuracy": r["metrics"]["accuracy"],
                     "fit_wall_seconds": wall, "fit_cpu_seconds": cpu})
        print(f"{label:16s} train {r['train_seconds']:.2f}s  accuracy {r['metrics']['accuracy']:.4f}",
              flush=True)
    base = rows[0]["train_seconds"]
    for r in rows:
        r["slowdown_vs_cached"] = r["train_seconds"] / base if base else None
    import torch
    import medadapt
    out = {"meta": {"backbone": args.backbone, "dataset": args.dataset, "shots": args.shots,
                    "seed": args.seed, "epochs": rows[0]["epochs"], "views": args.views,
                    "device": args.device, "cuda": torch.cuda.is_available(),
                    "torch_threads": torch.get_num_threads(),
                    "medadapt_version": medadapt.__version__,
                    "note": "train_seconds covers method.fit only: the cached variants encode "
                            "their features (and views) once before training, outside the timed "
                            "region (fit_wall_seconds includes it, plus evaluation); one "
                            "process, same backbone, same seed and shots",
                    "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "world": ("TEST-ONLY random-init backbone: accuracy is meaningless, timings "
                              "are real" if args.backbone.startswith("tiny-") else args.backbone)},
           "rows": rows}
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    f = res / f"coop_cache{args.tag}.json"
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, f)
    print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
