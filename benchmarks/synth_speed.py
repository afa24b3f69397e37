"""Tile generation speed of ``medadapt.synth`` at 64x64 on one CPU core (issue 3 requires >= 500/s).

Renders tiles of every class profile (the 15 tissue classes + benign / malignant mixtures) and of
random attribute combinations, in all four domains, single-threaded (BLAS pinned to 1 thread).
Reports tiles per second of wall time and per second of process CPU time (the latter is the
one-core figure that stays meaningful when other jobs share the machine), and writes
``benchmarks/results/synth_speed.json`` with the machine description and the command.

    python benchmarks/synth_speed.py [--n 3000] [--size 64]
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="tiles to render")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "synth_speed.json"))
    args = ap.parse_args(argv)

    from medadapt.synth.captions import random_attrs
    from medadapt.synth.classes import ALL_CLASSES, MALIGNANCY_CLASSES, sample_binary
    from medadapt.synth.pretrain import machine_description
    from medadapt.synth.tiles import DOMAINS, render_tile

    rng = np.random.default_rng(0)
    domains = list(DOMAINS)
    jobs = []
    for i in range(args.n):
        k = i % (len(ALL_CLASSES) + 3)
        if k < len(ALL_CLASSES):
            a = ALL_CLASSES[k].sample(rng)
        elif k < len(ALL_CLASSES) + 2:
            a = sample_binary(MALIGNANCY_CLASSES[k - len(ALL_CLASSES)], rng)
        else:
            a = random_attrs(rng)
        jobs.append((a, i, domains[i % len(domains)]))
    for a, s, d in jobs[:50]:  # warm up caches
        render_tile(a, s, args.size, d)
    w0, c0 = time.perf_counter(), time.process_time()
    for a, s, d in jobs:
        render_tile(a, s, args.size, d)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    res = {"tiles": args.n, "size": args.size, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
           "tiles_per_s_wall": round(args.n / wall, 1),
           "tiles_per_s_cpu": round(args.n / cpu, 1), "required_tiles_per_s": 500,
           "meets_requirement": args.n / cpu >= 500,
           "threads": 1, "load_average_1_5_15": load, "machine": machine_description(),
           "command": "python " + " ".join([sys.argv[0].split("/work/main/")[-1]]
                                           + (argv or sys.argv[1:]))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"{args.n} tiles {args.size}x{args.size}: {res['tiles_per_s_cpu']:.0f} tiles/s per CPU "
          f"second ({res['tiles_per_s_wall']:.0f}/s wall, load {load}) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
