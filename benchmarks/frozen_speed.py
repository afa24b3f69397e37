"""Frozen-feature methods train fast: linear probe, CLIP-Adapter, Tip-Adapter, Tip-Adapter-F and
SCALE on a 16-shot, 10-class task, with image features already in the feature cache.

    .venv/bin/python benchmarks/frozen_speed.py

Goal (issue 6): each trains in under 10 s on 2 CPU cores once features are cached. Every method
runs through the real ``medadapt fit`` path (``Runner``: few-shot sampling, feature cache,
engine with its per-epoch checkpoint, evaluation, run folder) with its paper defaults; the time
reported is ``train_seconds`` of ``results.json`` (``method.fit``: the whole training, alpha /
beta or C searches included; feature encoding excluded because the cache is warmed first).
The JSON records the machine's load average: on a shared machine the wall-clock numbers are upper
bounds; ``fit_cpu_seconds`` (process CPU time of the whole ``fit``: sampling, training,
evaluation, run folder) is what the work itself costs.

Task: 10 classes of generated 32 px tiles (16 train, 4 val, 8 test each) with two concepts per
class and a matching hierarchy, written to a temporary folder. Backbone: by default a random
Hugging Face ``CLIPModel`` with 512-d embeddings (ViT-B/16's projection size: the frozen methods'
cost depends on the embedding size and the number of items, not on the towers, which only run
during the untimed encoding); ``--backbone`` takes any spec (``synthpath-clip``, ``hf:DIR``...).

Writes ``benchmarks/results/frozen_speed.json`` with the command, the per-method commands and
the machine.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["linear-probe", "clip-adapter", "tip-adapter", "tip-adapter-f", "scale"]
COLOURS = [(230, 40, 40), (40, 200, 40), (40, 40, 230), (220, 220, 40), (220, 40, 220),
           (40, 220, 220), (240, 140, 20), (120, 60, 20), (120, 120, 120), (250, 250, 250)]


def make_task(root: Path, n_classes: int, n_train: int, n_val: int, n_test: int) -> Path:
    from PIL import Image
    root.mkdir(parents=True, exist_ok=True)
    rows, concepts = [], {}
    for c in range(n_classes):
        cls = f"class {c}"
        own = [f"pattern {c}a", f"pattern {c}b"]
        concepts.update({o: cls for o in own})
        rng = np.random.default_rng(c)
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            for i in range(n):
                a = np.asarray(COLOURS[c % len(COLOURS)], float)[None, None] + \
                    rng.normal(0, 50, (32, 32, 3))
                name = f"{split}/c{c}_{i}.png"
                (root / split).mkdir(exist_ok=True)
                Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / name)
                rows.append({"path": name, "label": cls, "split": split, "concepts": own[i % 2]})
    with open(root / "data.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split", "concepts"])
        w.writeheader()
        w.writerows(rows)
    lines = ["name: speed-task", "domain: tile",
             "classes: [" + ", ".join(f'"class {c}"' for c in range(n_classes)) + "]",
             "concepts:"] + [f'  "{k}": ["{v}"]' for k, v in concepts.items()]
    (root / "hierarchy.yaml").write_text("\n".join(lines) + "\n")
    return root


def default_backbone() -> str:
    from medadapt.backbones.tiny import save_tiny_hf_clip
    from medadapt.data.sources import cache_home
    folder = cache_home() / "tiny" / "speed-clip-d512"
    if not (folder / ".complete").exists():
        save_tiny_hf_clip(folder, embed_dim=512, width=64)
        (folder / ".complete").write_text("ok")
    return f"hf:{folder}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default=None, help="default: a random 512-d CLIPModel")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--threads", type=int, default=1,
                   help="torch / BLAS / OpenMP threads; 0 = the libraries' defaults. One by "
                        "default: these models are tiny, and on a shared machine OpenMP spinning "
                        "with 2 threads made CLIP-Adapter 40x slower (133 s vs 3.4 s)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "frozen_speed.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=args.threads)
    from medadapt.backbones import load_backbone
    from medadapt.data.sources import load_dataset
    from medadapt.engine.features import FeatureCache
    from medadapt.engine.runner import Runner

    backbone = args.backbone or default_backbone()
    tmp = Path(tempfile.mkdtemp(prefix="medadapt-speed-"))
    task = make_task(tmp / "task", args.classes, args.shots, 4, 8)
    dataset = f"csv:{task / 'data.csv'}"
    bb = load_backbone(backbone)
    ds = load_dataset(dataset)
    t = time.time()
    FeatureCache().encode(bb, ds, range(len(ds)), progress=False)  # warm the cache (untimed)
    encode_s = time.time() - t
    results, commands = {}, {}
    for m in args.methods:
        cfg = {"backbone": backbone, "dataset": dataset, "method": {"name": m},
               "shots": args.shots, "seeds": [1]}
        sets = []
        if m == "scale":
            cfg["method"]["hierarchy"] = str(task / "hierarchy.yaml")
            sets = ["--set", f"method.hierarchy={task / 'hierarchy.yaml'}"]
        out = tmp / "runs" / m
        commands[m] = " ".join(shlex.quote(x) for x in
                               ["medadapt", "fit", "--backbone", backbone, "--dataset", dataset,
                                "--method", m, "--shots", str(args.shots), "--out", str(out),
                                *sets])
        t, c = time.time(), time.process_time()
        res = Runner(cfg, out, overwrite=True, quiet=True, progress=False).run()["results"][0]
        wall, cpu = time.time() - t, time.process_time() - c
        info = res["train_info"]
        results[m] = {"train_seconds": round(res["train_seconds"], 3),
                      "fit_wall_seconds": round(wall, 3),
                      "fit_cpu_seconds": round(cpu, 3),
                      "epochs": info.get("epochs"), "accuracy": res["metrics"]["accuracy"],
                      "n_trainable_params": res["n_trainable_params"],
                      "under_10s": res["train_seconds"] < 10.0}
        print(f"{m:14s} train {res['train_seconds']:6.2f}s  (whole fit: wall {wall:5.1f}s, "
              f"cpu {cpu:5.1f}s; accuracy {res['metrics']['accuracy']:.3f})", flush=True)
    import medadapt
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:])),
        "method_commands": commands,
        "medadapt_version": medadapt.__version__,
        "task": f"{args.classes} classes x {args.shots} shots (+4 val, 8 test per class), "
                "generated 32 px tiles, features cached before timing",
        "backbone": backbone if args.backbone else "random CLIPModel, 512-d embeddings "
                                                   "(medadapt.backbones.tiny, embed_dim=512)",
        "embed_dim": bb.embed_dim,
        "encode_seconds_untimed": round(encode_s, 2),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
                    "python": platform.python_version()},
        "results": results,
        "all_under_10s": all(r["under_10s"] for r in results.values()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}; all under 10 s: {report['all_under_10s']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
