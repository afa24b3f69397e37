"""Training speed and memory of every registered method, and how both grow with the number of
classes (10 -> 100) and of shots (1 -> 16).

For each method and each (classes C, shots K) point the method is built on the backbone with C
synthetic class names (templates and descriptions included, for the methods that use them) and
trained through its own ``fit`` and the engine's real loop on C x K items (random cached features
for frozen-encoder methods, random images for pixel methods), with the method's paper settings
(batch size, optimizer, AMP on GPU). The engine's batch stream is capped at ``--steps`` training
steps; the time between consecutive training batches is one step (forward, loss, backward,
optimizer step); the median after ``--warmup`` steps is reported (CPU: CPU time of the compute
thread, robust when other jobs share the cores, wall time kept too; GPU: synchronised wall time),
with seconds per epoch = seconds per step x ceil(C K / batch size). Methods that do not train with gradients (zero-shot,
linear probe, Tip-Adapter) report their ``fit`` time instead.

Memory: on GPU ``torch.cuda.max_memory_allocated`` during fit (peak, and the increase over what
was allocated before); on CPU every point runs in a fresh process (forkserver, modules preloaded)
and reports ``resource.getrusage`` peak RSS plus the peak increase of the resident set during fit
(sampled every millisecond from /proc/self/statm).

Backbone: ``synthpath-clip`` when its weights are present, else ``tiny-hf-clip`` (the result file
says which). Results: ``benchmarks/results/speed_<backbone>_<device>.json`` and ``.md``, with the
machine description.

    python benchmarks/speed.py                                  # all methods, CPU
    python benchmarks/speed.py --methods coop clip-adapter --classes 10 100 --shots 1 16
    python benchmarks/speed.py --device cuda
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------
class RssSampler:
    """Peak resident set size (bytes) seen while running, sampled from /proc/self/statm."""

    def __init__(self, every: float = 0.001):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.start = self.peak = self.rss()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self.t.join()
        self.peak = max(self.peak, self.rss())


def _texts(n: int):
    from medadapt.data.texts import TEMPLATES, ClassTexts
    names = [f"tissue type {i}" for i in range(n)]
    desc = {c: [f"{c} shows {w} nuclei in a {v} stroma." for w, v in
                (("dense", "pink"), ("pale", "loose"), ("large", "fibrous"), ("small", "dense"),
                 ("irregular", "mucinous"))] for c in names}
    return ClassTexts(names, list(TEMPLATES["histopathology"]), desc)


def _hierarchy(n_classes: int, folder: Path) -> Path:
    """A class-concept hierarchy for SCALE: two concepts per synthetic class."""
    import yaml
    names = [f"tissue type {i}" for i in range(n_classes)]
    h = {"name": "speed", "domain": "histopathology image",
         "template": "a {domain} with {concept}, which indicates {class} tissue",
         "no_finding": "No finding.", "classes": names,
         "concepts": [{"name": f"pattern {a} of {c}", "classes": [c]} for c in names
                      for a in ("a", "b")]}
    p = folder / f"speed-{n_classes}.yaml"
    p.write_text(yaml.safe_dump(h, sort_keys=False))
    return p


def _split(n_classes: int, shots: int, backbone, needs_images: bool):
    import numpy as np
    import torch
    from PIL import Image

    from medadapt.data.dataset import DataSet, Record
    from medadapt.engine.train import Split
    n = n_classes * shots
    size = backbone.image_size
    recs = [Record(id=str(i), label=i % n_classes, split="train") for i in range(n)]

    def load(r):
        rng = np.random.default_rng(int(r.id))
        return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))

    ds = DataSet("speed", [f"tissue type {i}" for i in range(n_classes)], recs, load, "speed")
    labels = torch.tensor([r.label for r in recs])
    g = torch.Generator().manual_seed(0)
    feats = None if needs_images else torch.randn(n, backbone.embed_dim, generator=g) * 3
    concepts = [(f"pattern {'ab'[i % 2]} of tissue type {i % n_classes}",) for i in range(n)]
    return Split(ds, list(range(n)), labels, feats, concepts=concepts)


def measure(method_name: str, n_classes: int, shots: int, backbone_name: str, device: str,
            steps: int, warmup: int) -> dict:
    """One (method, C, K) point; runs in the calling process."""
    import resource

    import torch

    from medadapt.backbones import load_backbone
    from medadapt.engine.train import TRAIN_DEFAULTS, Engine
    from medadapt.methods import get_method
    cls = get_method(method_name)
    if backbone_name == "plip-arch-random":  # PLIP's architecture, random weights, no download
        sys.path.insert(0, str(HERE))
        from feature_throughput import build_backbone
        bb = build_backbone(backbone_name, device)
    else:
        bb = load_backbone(backbone_name, device=device)
    train = _split(n_classes, shots, bb, cls.needs_images)
    cfg = dict(cls.defaults)
    if "hierarchy" in cfg:  # SCALE: a class-concept hierarchy for the synthetic classes
        import tempfile
        cfg["hierarchy"] = str(_hierarchy(n_classes, Path(tempfile.mkdtemp(prefix="speed-"))))
    if "n_iters_per_shot" in cfg:
        cfg["n_iters_per_shot"] = None  # clip-lora: use train.epochs (capped below)
    tcfg = {**TRAIN_DEFAULTS, **cls.train_defaults, "checkpoint": False, "eval_every": 0,
            "workers": 0}
    spe = max(1, math.ceil(len(train) / tcfg["batch_size"]))
    tcfg["epochs"] = max(1, math.ceil((steps + 1) / spe))
    stamps: list[tuple[float, float]] = []  # (wall, cpu) when each training batch is asked for
    one_thread = not device.startswith("cuda") and torch.get_num_threads() == 1
    cpu_clock = time.thread_time if one_thread else time.process_time

    class TimedEngine(Engine):
        """The real engine; its training batch stream stops after ``steps`` batches and stamps
        the time each batch is requested (the gap between two requests is one step)."""

        def batches(self, method, split, shuffle, epoch=0, train=True):
            if not train:
                yield from super().batches(method, split, shuffle, epoch, train)
                return
            for b in super().batches(method, split, shuffle, epoch, train):
                if len(stamps) > steps:
                    return
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                stamps.append((time.perf_counter(), cpu_clock()))
                yield b

    eng = TimedEngine(tcfg, device=device, progress=False, log=lambda *_: None, seed=1)
    out = {"method": method_name, "classes": n_classes, "shots": shots, "items": len(train),
           "needs_images": cls.needs_images, "trainable": cls.trainable,
           "batch_size": tcfg["batch_size"], "steps_per_epoch": spe, "optimizer": tcfg["optimizer"]}
    try:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        method = cls(bb, _texts(n_classes), cfg).to(bb.device)
        out["init_s"] = time.perf_counter() - t0  # e.g. zero-shot's class text features
        out["learned_params"] = int(method.n_trainable_params())
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with RssSampler() as rs:
            method.fit(train, None, eng)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
            out["gpu_increase_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        out["fit_s"] = time.perf_counter() - t0
        out["rss_increase_mib"] = (rs.peak - rs.start) / 2**20
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        gaps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])][warmup:]
        if gaps:
            wall = statistics.median(g[0] for g in gaps)
            cpu = statistics.median(g[1] for g in gaps)
            # on CPU the CPU time of the (single) compute thread is the robust figure when other
            # jobs share the cores; on GPU the wall time (synchronised) is what counts
            s = wall if device.startswith("cuda") else cpu
            out.update(s_per_step=s, s_per_epoch=s * spe, wall_s_per_step=wall,
                       cpu_s_per_step=cpu, steps_timed=len(gaps),
                       clock="wall" if device.startswith("cuda") else
                       ("thread CPU time" if one_thread else "process CPU time"))
    except Exception as e:  # a method that cannot run in this synthetic setting is reported
        out["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return out


def _child(q, *a):
    import torch
    torch.set_num_threads(int(os.environ.get("SPEED_THREADS", "1")))
    try:
        q.put(measure(*a))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        q.put({"method": a[0], "classes": a[1], "shots": a[2], "error": repr(e)})


def pick_backbone(name: str | None) -> str:
    if name:
        return name
    try:
        from medadapt.backbones import load_backbone
        load_backbone("synthpath-clip")
        return "synthpath-clip"
    except Exception:  # noqa: BLE001 - weights not built yet
        return "tiny-hf-clip"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    ap.add_argument("--classes", nargs="+", type=int, default=[10, 25, 50, 100],
                    help="class counts (at --classes-shots shots)")
    ap.add_argument("--classes-shots", type=int, default=4)
    ap.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16],
                    help="shot counts (at the first class count)")
    ap.add_argument("--steps", type=int, default=12, help="training steps per point")
    ap.add_argument("--warmup", type=int, default=2, help="first steps not timed")
    ap.add_argument("--backbone", default=None, help="default: synthpath-clip if present, else "
                                                     "tiny-hf-clip; plip-arch-random = PLIP's "
                                                     "architecture with random weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    ap.add_argument("--no-isolate", action="store_true",
                    help="run every point in this process (CPU peak RSS is then cumulative)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from _machine import machine

    from medadapt.methods import METHODS, load_all
    load_all()
    methods = args.methods or [n for n, _ in METHODS.items()]
    bb = pick_backbone(args.backbone)
    c0 = args.classes[0]
    points = sorted({(c, args.classes_shots) for c in args.classes} | {(c0, k) for k in args.shots})
    os.environ["SPEED_THREADS"] = str(args.threads)
    isolate = not args.no_isolate and not args.device.startswith("cuda")
    ctx = None
    if isolate:
        import multiprocessing as mp
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "transformers", "open_clip", "sklearn",
                                    "medadapt.methods", "medadapt.engine.train",
                                    "medadapt.backbones"])
    else:
        import torch
        torch.set_num_threads(args.threads)
    rows = []
    t_start = time.time()
    for m in methods:
        for c, k in points:
            if isolate:
                q = ctx.Queue()
                p = ctx.Process(target=_child, args=(q, m, c, k, bb, args.device, args.steps,
                                                     args.warmup))
                p.start()
                try:
                    r = q.get(timeout=1800)
                except Exception as e:  # noqa: BLE001
                    r = {"method": m, "classes": c, "shots": k, "error": f"no result ({e!r})"}
                p.join()
            else:
                r = measure(m, c, k, bb, args.device, args.steps, args.warmup)
            rows.append(r)
            sp = r.get("s_per_step")
            print(f"{m:16} C={c:<3} K={k:<2} " + (
                f"{sp * 1e3:9.2f} ms/step  {r['s_per_epoch']:8.3f} s/epoch  " if sp is not None
                else f"fit {r.get('fit_s', float('nan')):8.3f} s            " if "fit_s" in r
                else "") + (f"+{r['rss_increase_mib']:.0f} MiB RSS" if "rss_increase_mib" in r
                            else "") + (f" {r['gpu_peak_mib']:.0f} MiB GPU" if "gpu_peak_mib" in r
                                        else "") + (f"  ERROR {r['error']}" if "error" in r else ""),
                  flush=True)
    growth = {}
    for m in methods:
        rs = {(r["classes"], r["shots"]): r for r in rows if r["method"] == m}

        def ratio(a, b, key):
            va, vb = rs.get(a, {}).get(key), rs.get(b, {}).get(key)
            return None if not va or vb is None else vb / va
        cl = (min(args.classes), args.classes_shots), (max(args.classes), args.classes_shots)
        sh = (c0, min(args.shots)), (c0, max(args.shots))
        growth[m] = {
            f"s_per_step x (C {cl[0][0]}->{cl[1][0]})": ratio(*cl, "s_per_step"),
            f"s_per_epoch x (K {sh[0][1]}->{sh[1][1]})": ratio(*sh, "s_per_epoch"),
            f"fit_s x (C {cl[0][0]}->{cl[1][0]})": ratio(*cl, "fit_s"),
            f"fit_s x (K {sh[0][1]}->{sh[1][1]})": ratio(*sh, "fit_s"),
            "mem_key": "gpu_peak_mib" if args.device.startswith("cuda") else "rss_increase_mib",
        }
        mk = growth[m]["mem_key"]
        growth[m][f"{mk} (C {cl[0][0]}->{cl[1][0]})"] = [rs.get(cl[0], {}).get(mk),
                                                         rs.get(cl[1], {}).get(mk)]
        growth[m][f"{mk} (K {sh[0][1]}->{sh[1][1]})"] = [rs.get(sh[0], {}).get(mk),
                                                         rs.get(sh[1], {}).get(mk)]
    dev = args.device.replace(":", "")
    out = Path(args.out) if args.out else HERE / "results" / f"speed_{bb}_{dev}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    res = {"benchmark": "speed", "command": "python benchmarks/speed.py " + " ".join(argv or sys.argv[1:]),
           "backbone": bb, "backbone_note": ("synthpath-clip (shipped synthetic CLIP)" if bb ==
                                             "synthpath-clip" else
                                             f"{bb} (synthpath-clip weights not present)"),
           "device": args.device, "threads": args.threads, "isolated_processes": isolate,
           "steps": args.steps, "warmup": args.warmup, "points": points, "rows": rows,
           "growth": growth, "machine": machine(), "seconds": time.time() - t_start,
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out.write_text(json.dumps(res, indent=1, default=str))
    md = [f"# Training speed: {bb} on {args.device}", "",
          f"`{res['command']}` — {res['date']}, {res['machine'].get('cpu')}, "
          f"{res['machine'].get('gpu', {}).get('name', 'no GPU')}, torch threads {args.threads}",
          "", "| method | C | K | items | batch | ms/step | s/epoch | init s | fit s | mem (MiB) "
              "| learned |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    memk = "gpu_peak_mib" if args.device.startswith("cuda") else "rss_increase_mib"
    for r in rows:
        if "error" in r and "fit_s" not in r:
            md.append(f"| {r['method']} | {r['classes']} | {r['shots']} | | | | | | | | "
                      f"error: {r['error'][:80]} |")
            continue
        md.append("| {method} | {classes} | {shots} | {items} | {batch_size} | {ms} | {se} | "
                  "{init:.3f} | {fit:.3f} | {mem} | {lp} |".format(
                      init=r.get("init_s", float("nan")),
                      ms=f"{r['s_per_step'] * 1e3:.2f}" if "s_per_step" in r else "–",
                      se=f"{r['s_per_epoch']:.3f}" if "s_per_epoch" in r else "–",
                      fit=r.get("fit_s", float("nan")),
                      mem=f"{r[memk]:.0f}" if r.get(memk) is not None else "–",
                      lp=r.get("learned_params", ""), **r))
    md += ["", f"mem = {'peak GPU memory allocated during fit' if memk == 'gpu_peak_mib' else 'peak increase of the resident set during fit (fresh process per point)'}."]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"-> {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
