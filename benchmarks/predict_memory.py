"""Peak memory of ``medadapt predict`` against the number of inputs (issue 13: stream in batches).

Fits a linear probe on tiny-hf-clip once, then runs ``medadapt predict`` in a fresh process on
folders of N small tiles (hard links to a handful of real 64x64 PNG crops, so the folders cost no
disk) and reads the child's peak resident set size (``ru_maxrss``). With streaming, peak RSS is
flat in N; a predict that decodes every input first grows linearly.

    PYTHONPATH=src python benchmarks/predict_memory.py --sizes 1000 20000 \
        --out benchmarks/results/predict_memory.json
    # optional: the same for another checkout's predict (e.g. the pre-streaming code)
    PYTHONPATH=src python benchmarks/predict_memory.py --compare-src /path/to/old/src
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SRC = HERE.parent / "src"
CRC = HERE.parents[1] / "shared" / "data" / "crc-val-he-7k-sample"


def make_tiles(folder: Path, n: int, proto: list[Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = proto[i % len(proto)]
        dst = folder / f"tile_{i:06d}.png"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy(src, dst)


def run_predict(src: Path, run: Path, folder: Path, out_csv: Path, env: dict) -> dict:
    code = ("import resource, sys, time\n"
            "from medadapt.cli import main\n"
            "t = time.time()\n"
            f"rc = main(['predict', '--run', {str(run)!r}, {str(folder)!r}, '--out', "
            f"{str(out_csv)!r}])\n"
            "print('RESULT', rc, time.time() - t, "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n")
    e = dict(env, PYTHONPATH=str(src))
    p = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True)
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT")), None)
    if line is None:
        raise SystemExit(f"predict failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    _, rc, secs, rss_kib = line.split()
    return {"rc": int(rc), "seconds": round(float(secs), 2), "peak_rss_mib": round(int(rss_kib) / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    ap.add_argument("--tile", type=int, default=64, help="tile side in pixels")
    ap.add_argument("--compare-src", default=None, help="another medadapt src/ to measure too")
    ap.add_argument("--out", default=str(HERE / "results" / "predict_memory.json"))
    args = ap.parse_args()
    from PIL import Image
    from _machine import machine

    work = Path(tempfile.mkdtemp(prefix="predict_memory-"))
    env = dict(os.environ, MEDADAPT_CACHE=str(work / "cache"), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    try:
        proto = []
        for i, t in enumerate(sorted(CRC.glob("*/*.png"))[:8]):
            p = work / f"proto{i}.png"
            Image.open(t).convert("RGB").crop((0, 0, args.tile, args.tile)).save(p)
            proto.append(p)
        run = work / "run"
        subprocess.run([sys.executable, "-m", "medadapt", "fit", "--backbone", "tiny-hf-clip",
                        "--dataset", f"folder:{CRC}", "--method", "linear-probe", "--shots", "2",
                        "--out", str(run), "--quiet"], env=dict(env, PYTHONPATH=str(SRC)),
                       check=True, capture_output=True)
        srcs = {"streaming (this checkout)": SRC}
        if args.compare_src:
            srcs[f"other ({args.compare_src})"] = Path(args.compare_src)
        rows = []
        for n in args.sizes:
            folder = work / f"tiles{n}"
            make_tiles(folder, n, proto)
            for label, src in srcs.items():
                r = run_predict(src, run, folder, work / f"p{n}.csv", env)
                r.update(n_tiles=n, code=label, tile=args.tile)
                rows.append(r)
                print(json.dumps(r), flush=True)
            shutil.rmtree(folder)
        res = {"benchmark": "predict_memory", "backbone": "tiny-hf-clip", "method": "linear-probe",
               "batch_size": 32, "rows": rows, "machine": machine(),
               "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "command": "PYTHONPATH=src python " + " ".join(["benchmarks/predict_memory.py"] + sys.argv[1:])}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
