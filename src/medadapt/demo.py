"""``medadapt demo``: the offline end-to-end example.

Every registered method on the shipped ``synthpath-clip`` backbone (a small CLIP pretrained by
medadapt on its synthetic H&E world), in one command, with a report a user can act on:

* **Few-shot and base-to-novel**, one set of runs: ``synth-crc-b2n`` under the base-to-novel
  protocol. Methods train on K shots of the 9 base classes (the 9 classes of ``synth-crc``); the
  few-shot table is the accuracy on the base classes' test images, and methods that can take new
  class names are also tested on the 6 novel classes (base / novel / harmonic mean).
* **SCALE** on ``synth-malignancy`` (benign / malignant with a class-concept hierarchy of 11
  concepts), next to zero-shot, linear probe and CLIP-Adapter, with SCALE's concept-level output
  (the top class-concept combinations) for a few test images.
* **Budgets**: methods that train on cached image features run their own default schedule (the
  paper's, as ``medadapt fit`` runs it). Methods that run the image encoder in every step
  (``Method.needs_images``: deep visual prompts, LoRA) run a *reduced budget* of about
  ``--pixel-steps`` optimisation steps at their own batch size and learning rate; the table and
  the report say so, with the paper's budget next to it.
* **Speed**: runs are independent, so they go to ``--workers`` processes (one per CPU core, one
  torch thread each; the longest runs first); the frozen image features are encoded once and
  shared through the feature cache; the class texts of frozen-text methods are encoded once per
  run.
* **Progress**: a bar on a terminal; otherwise one flushed line per finished run
  (``coop 16-shot: 84.7 ± 1.7 (12 s)``).

The report (``OUT/report.md`` and the self-contained ``OUT/report.html``) holds the tables, the
few-shot curve, the base-to-novel panel, SCALE's concepts, training time, the budgets, whether
every method beat zero-shot by more than its seed spread (computed, with the evidence when not),
and the commands to run the same comparison on your own images with a real backbone.

When the synthetic world is missing (or with ``--tiny``) it runs the tiny random ``tiny-hf-clip``
on the real tiles in ``../shared/data`` and says loudly that those numbers mean nothing.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medadapt.errors import UserError

# ------------------------------------------------------------------------------------------------
# the plan, as data
FEWSHOT_TASK = "synth-crc-b2n"  # base-to-novel protocol: base accuracy = the few-shot table
CONCEPT_TASK = "synth-malignancy"  # carries a class-concept hierarchy (SCALE)
CONCEPT_METHODS = ("zero-shot", "linear-probe", "clip-adapter", "scale")  # SCALE and its references
SHOTS = [1, 4, 16]
SEEDS = [1, 2]
TINY_SHOTS = [1, 2]
# Methods that run the image encoder in every step get a reduced budget: about this many
# optimisation steps per run, at the method's own batch size, learning rate and warm-up, never
# more than the method's own schedule. Measured on synth-crc-b2n (benchmarks/demo_time.py notes).
PIXEL_STEPS = 108
# ... and at least this many epochs, so that a method's warm-up epoch (constant lr 1e-5 in the
# Dassl methods) stays a small part of the run at 16 shots (MaPLe's own schedule: 5 epochs).
PIXEL_MIN_EPOCHS = 5
PIXEL_STEPS_OVERRIDE: dict[str, int] = {"clip-lora": 160}
# Demo-only deviations from a method's own settings, each stated in the table and the report:
# method -> ({method key: value}, {train key: value}, why).
DEMO_SETTINGS: dict[str, tuple[dict, dict, str]] = {
    "clip-adapter": ({}, {"lr": 0.1},
                     "CoOp's lr 0.002 assumes CLIP's logit scale 100; synthpath-clip's is 13.3 and "
                     "the adapter then stays at zero-shot (docs/adapters.md)"),
    "clip-lora": ({}, {"lr": 1e-3},
                  "the paper runs 500 x shots iterations at lr 2e-4; the demo's reduced budget "
                  "uses 5x the learning rate"),
}
# Every run: no mid-run checkpoints (the demo resumes finished runs, not half-trained ones).
DEMO_TRAIN = {"checkpoint": False}
N_CONCEPT_EXAMPLES = 4


@dataclass
class Job:
    key: str  # run folder name under OUT/runs
    method: str
    dataset: str
    protocol: str
    shots: int
    seeds: list[int]
    cfg: dict
    task: str  # "fewshot" | "concepts"
    budget: dict = field(default_factory=dict)  # kind, steps, paper_steps, text
    cost: float = 1.0  # estimated, for longest-first scheduling


# ------------------------------------------------------------------------------------------------
def _world(args) -> tuple[str, str, str | None, bool]:
    """(backbone, few-shot data set, concept data set or None, meaningful)."""
    from medadapt.backbones import _shipped_synth
    if not args.tiny and (_shipped_synth() / "config.json").exists():
        try:
            from medadapt.data.sources import DATASETS, _ensure_registered
            _ensure_registered()
            if FEWSHOT_TASK in DATASETS and CONCEPT_TASK in DATASETS:
                return "synthpath-clip", FEWSHOT_TASK, CONCEPT_TASK, True
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
    return "tiny-hf-clip", f"folder:{crc}", None, False


def all_methods() -> list[str]:
    """Every registered method, zero-shot and linear probe first."""
    from medadapt.methods import METHODS, load_all
    load_all()
    names = list(METHODS.names())
    first = [n for n in ("zero-shot", "linear-probe") if n in names]
    return first + [n for n in names if n not in first]


def _selected(selected: list[str] | None) -> list[str]:
    names = all_methods()
    if selected:
        bad = [m for m in selected if m not in names]
        if bad:
            raise UserError(f"unknown method(s) {bad}; valid: {', '.join(names)}")
    return names


def steps_per_epoch(n_items: int, batch_size: int) -> int:
    return max(1, math.ceil(n_items / max(1, int(batch_size))))


def own_steps(cls, resolved: dict, n_items: int) -> int | None:
    """Optimisation steps of the method's own schedule (None: no gradient loop)."""
    if not cls.trainable:
        return None
    n_per = resolved["method"].get("n_iters_per_shot")
    if n_per:  # CLIP-LoRA: 500 x shots iterations
        return int(n_per) * int(resolved["shots"])
    t = resolved["train"]
    return int(t["epochs"]) * steps_per_epoch(n_items, t["batch_size"])


def make_jobs(backbone: str, fewshot_ds: str, concept_ds: str | None, methods: list[str],
              selected: list[str] | None, shots: list[int], seeds: list[int], meaningful: bool,
              pixel_steps: int, device: str, max_steps: int | None = None
              ) -> tuple[list[Job], dict[str, str]]:
    """The runs of the demo and the methods it skips, each with its reason."""
    from medadapt.data.sources import load_dataset
    from medadapt.engine.resolve import resolve
    from medadapt.methods import get_method

    ds = load_dataset(fewshot_ds)
    base = ds.meta.get("base_classes")
    n_base = len(base) if base else ds.num_classes // 2  # base_novel_split's default: first half
    hier_ds = load_dataset(concept_ds) if concept_ds else None
    jobs: list[Job] = []
    skipped: dict[str, str] = {}
    for m in methods:
        cls = get_method(m)
        if selected and m not in selected:
            skipped[m] = "not selected (--methods)"
            continue
        tasks = []
        if "hierarchy" in cls.defaults:  # SCALE: needs a class-concept hierarchy
            if hier_ds is None:
                skipped[m] = ("needs a data set with a class-concept hierarchy; the tiny fallback "
                              "world has none (the synthetic world runs it on synth-malignancy)")
                continue
        else:
            tasks.append(("fewshot", fewshot_ds, "base-to-novel", n_base))
        if hier_ds is not None and m in CONCEPT_METHODS:
            tasks.append(("concepts", concept_ds, "few-shot", hier_ds.num_classes))
        if cls.needs_descriptions and not meaningful:
            skipped[m] = ("needs class descriptions; the tiny fallback world's folder data has "
                          "none (the synthetic world ships them)")
            continue
        for task, dname, protocol, n_cls in tasks:
            for k in shots:
                mcfg = {"name": m}
                cfg = {"backbone": backbone, "dataset": dname, "method": mcfg, "shots": k,
                       "seeds": list(seeds), "protocol": protocol, "device": device,
                       "train": dict(DEMO_TRAIN)}
                own = resolve(cfg)
                n_items = k * n_cls
                paper = own_steps(cls, own, n_items)
                budget = {"kind": "none" if paper is None else "own", "steps": paper,
                          "paper_steps": paper, "batch_size": own["train"].get("batch_size"),
                          "epochs": own["train"].get("epochs") if paper is not None else None}
                spe = steps_per_epoch(n_items, own["train"]["batch_size"])
                target = None
                if cls.needs_images and paper is not None:
                    target = PIXEL_STEPS_OVERRIDE.get(m, pixel_steps)
                if max_steps and paper is not None:
                    target = min(target or max_steps, max_steps)
                if target is not None:
                    epochs = max(1, round(target / spe))
                    if cls.needs_images and not max_steps:
                        epochs = max(PIXEL_MIN_EPOCHS, epochs)
                    if epochs * spe < paper:
                        cfg["train"]["epochs"] = epochs
                        if own["method"].get("n_iters_per_shot"):
                            mcfg["n_iters_per_shot"] = None  # train.epochs decides
                        budget.update(kind="reduced", steps=epochs * spe, epochs=epochs)
                if m in DEMO_SETTINGS:
                    dm, dt, why = DEMO_SETTINGS[m]
                    mcfg.update(dm)
                    cfg["train"].update(dt)
                    budget["deviation"] = ", ".join(
                        [f"method.{k}={v}" for k, v in dm.items()]
                        + [f"train.{k}={v}" for k, v in dt.items()]) + f" ({why})"
                cost = (budget["steps"] or 1) * (4.0 if cls.needs_images else 1.0) * len(seeds)
                key = f"{m}-{k}shot" if task == "fewshot" else f"{task}-{m}-{k}shot"
                jobs.append(Job(key=key, method=m, dataset=dname, protocol=protocol, shots=k,
                                seeds=list(seeds), cfg=cfg, task=task, budget=budget, cost=cost))
    return jobs, skipped


# ------------------------------------------------------------------------------------------------
# running (in this process or in worker processes)
_WORKER_CTX = None


def _init_worker(threads: int) -> None:
    import torch
    torch.set_num_threads(max(1, threads))
    global _WORKER_CTX
    from medadapt.report.bench import shared_backbones
    _WORKER_CTX = shared_backbones()
    _WORKER_CTX.__enter__()  # the backbone is loaded once per worker, deep-copied per run


def run_job(job: dict, out: str) -> dict:
    """One (method, data set, shots) run over all seeds -> a row of the demo's results."""
    import traceback

    from medadapt.engine.runner import Runner
    t0, c0 = time.time(), time.process_time()
    row = {k: job[k] for k in ("key", "method", "dataset", "protocol", "shots", "task", "budget")}
    run_dir = Path(out) / "runs" / job["key"]
    # The demo's stamp of a run sits beside it (the run folder itself is plain medadapt's, so
    # fit's own rules on resuming apply): a folder without a stamp is not the demo's to touch.
    stamp_file = run_dir.parent / f"{job['key']}.demo_job.json"
    stamp = json.dumps({"cfg": job["cfg"], "seeds": job["seeds"]}, sort_keys=True)
    if run_dir.exists():  # a finished run is reused only if the demo asked for the same run
        if not stamp_file.exists():
            return {**row, "error": f"{run_dir} exists and was not written by this demo "
                                    f"(no {stamp_file.name}); pass another --out",
                    "wall_seconds": 0.0}
        if stamp_file.read_text() != stamp:  # the demo's own earlier run with other settings
            import shutil
            shutil.rmtree(run_dir)
    try:
        from medadapt.safeio import check_no_links, make_dir, write_text
        check_no_links(Path(out), run_dir)  # runs/ or runs/<key> planted as a link: refused
        runner = Runner(job["cfg"], run_dir, resume=run_dir.exists(), quiet=True,
                        progress=False)
        make_dir(run_dir.parent, root=Path(out))
        write_text(stamp_file, stamp)  # temp + swap: a link in the way is refused
        res = runner.run()["results"]
    except UserError as e:
        return {**row, "error": str(e), "wall_seconds": time.time() - t0}
    except Exception as e:  # noqa: BLE001 - one failing method must not stop the demo
        return {**row, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                "wall_seconds": time.time() - t0}
    row.update(
        seeds=[r["seed"] for r in res],
        values=[r["metrics"]["accuracy"] for r in res],
        novel=[r.get("novel") for r in res], hm=[r.get("hm") for r in res],
        train_seconds=[r["train_seconds"] for r in res],
        n_trainable_params=res[0].get("n_trainable_params"),
        epochs_run=[(r.get("train_info") or {}).get("epochs") for r in res],
        loss_first=[(r.get("train_info") or {}).get("loss_first") for r in res],
        loss_last=[(r.get("train_info") or {}).get("loss_last") for r in res],
        info=[{k: v for k, v in (r.get("train_info") or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)
               and k not in ("epochs", "loss_first", "loss_last")} for r in res],
        batch_size=runner.cfg["train"].get("batch_size"),
        wall_seconds=time.time() - t0, cpu_seconds=time.process_time() - c0)
    return row


def _pool_run(job: dict, out: str) -> dict:
    return run_job(job, out)


class Progress:
    """tqdm bar on a terminal; else one flushed line per finished run."""

    def __init__(self, total: int, stream=None):
        from tqdm.auto import tqdm
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = tqdm(total=total, desc="demo runs", file=self.stream, disable=not self.tty,
                        dynamic_ncols=True)

    def done(self, row: dict) -> None:
        line = run_line(row)
        if self.tty:
            self.bar.write(line, file=self.stream)
            self.bar.update(1)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()


def run_line(row: dict) -> str:
    name = f"{row['method']} {row['shots']}-shot"
    if row.get("task") == "concepts":
        name += f" [{row['dataset']}]"
    if row.get("error"):
        return f"{name}: FAILED ({row['error'][:160]}) ({row.get('wall_seconds', 0):.0f} s)"
    import numpy as np
    v = np.asarray(row["values"], float) * 100
    s = f"{name}: {v.mean():.1f} ± {v.std():.1f}"
    nov = [x for x in row.get("novel") or [] if x is not None]
    if nov:
        s += f" | novel {100 * float(np.mean(nov)):.1f}"
    return s + f" ({row.get('wall_seconds', 0):.0f} s)"


def default_workers(device: str) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _prepare_cache(backbone: str, jobs: list[Job], device: str) -> None:
    """Generate the synthetic data sets and encode every image once (view 0), plus the
    augmented views of every few-shot training image that a cached-feature run will draw
    (``data.augment_views``), before the workers start: no two workers encode the same images."""
    from medadapt.backbones import load_backbone
    from medadapt.data.fewshot import ids_to_indices
    from medadapt.data.sources import load_dataset
    from medadapt.engine.features import FeatureCache
    from medadapt.engine.runner import Prepared
    from medadapt.engine.rundir import pick_device
    from medadapt.engine.resolve import resolve
    from medadapt.methods import get_method
    bb = load_backbone(backbone, device=pick_device(device))
    cache = FeatureCache()
    views: dict[str, tuple[int, set]] = {}
    for j in jobs:
        cfg = resolve(j.cfg)
        v = int(cfg["data"].get("augment_views") or 0)
        if not v or get_method(j.method).needs_images or not cfg["data"].get("cache", True):
            continue
        key = json.dumps([j.dataset, j.protocol, j.shots])
        if key in views:
            views[key] = (max(v, views[key][0]), views[key][1])
            continue
        prep = Prepared(cfg, quiet=True)
        idx = set()
        for fs in prep.fewshots.values():
            idx.update(ids_to_indices(prep.ds, fs["train"]))
        views[key] = (v, idx)
    for d in dict.fromkeys(j.dataset for j in jobs):
        ds = load_dataset(d)
        cache.encode(bb, ds, range(len(ds)), 0, 128, 0, False, False)
        n_views = max((v for k, (v, _) in views.items() if json.loads(k)[0] == d), default=0)
        idx = sorted(set().union(*[i for k, (_, i) in views.items() if json.loads(k)[0] == d]))
        for view in range(1, n_views + 1):
            cache.encode(bb, ds, idx, view, 128, 0, False, False)


def run_jobs(jobs: list[Job], out: Path, workers: int, progress: Progress) -> list[dict]:
    order = sorted(jobs, key=lambda j: -j.cost)  # longest first: the pool ends together
    rows = []
    if workers <= 1:
        for j in order:
            row = run_job(asdict(j), str(out))
            progress.done(row)
            rows.append(row)
        return rows
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    threads = max(1, cores // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        futs = [pool.submit(_pool_run, asdict(j), str(out)) for j in order]
        try:
            for f in as_completed(futs):
                row = f.result()
                progress.done(row)
                rows.append(row)
        except KeyboardInterrupt:
            for f in futs:
                f.cancel()
            raise
    return rows


# ------------------------------------------------------------------------------------------------
def run_demo(args) -> int:
    import torch

    t0 = time.time()
    backbone, fewshot_ds, concept_ds, meaningful = _world(args)
    shots = args.shots or (SHOTS if meaningful else TINY_SHOTS)
    seeds = args.seeds or SEEDS
    out = Path(args.out).absolute()
    # the report folder: new, empty, or an earlier demo's (never a user's folder of files)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if (out.is_dir() and any(e.name != "runs" for e in out.iterdir())  # runs/: an interrupted demo
            and not (out / "demo_results.json").exists()):
        raise UserError(f"--out {out} holds files that are not an earlier medadapt demo; choose "
                        "a new or empty folder")
    methods = _selected(args.methods)
    workers = args.workers or default_workers(args.device)
    if not meaningful:
        print("!! synthetic world not found: running on the tiny RANDOM backbone 'tiny-hf-clip'; "
              "the numbers below are NOT meaningful (they only show the pipeline works) !!",
              file=sys.stderr)
    if workers <= 1 and args.threads:
        torch.set_num_threads(args.threads)
    jobs, skipped = make_jobs(backbone, fewshot_ds, concept_ds, methods, args.methods, shots,
                              seeds, meaningful, args.pixel_steps, args.device,
                              args.max_steps)
    n_fs = len({j.method for j in jobs if j.task == "fewshot"})
    print(f"demo: {n_fs} methods x shots {shots} x seeds {seeds} on {backbone} + {fewshot_ds} "
          f"(base-to-novel)" + (f", SCALE on {concept_ds}" if any(j.method == "scale" for j in jobs)
                                else "") + f"; {len(jobs)} runs in {workers} process(es)",
          file=sys.stderr, flush=True)
    _prepare_cache(backbone, jobs, args.device)
    prep_seconds = time.time() - t0
    progress = Progress(len(jobs))
    try:
        rows = run_jobs(jobs, out, workers, progress)
    finally:
        progress.close()
    elapsed = time.time() - t0
    from medadapt.report import demo_page
    concept_examples = None
    scale_rows = [r for r in rows if r["method"] == "scale" and not r.get("error")]
    if scale_rows:
        best = max(scale_rows, key=lambda r: r["shots"])
        try:
            concept_examples = demo_page.concept_examples(out / "runs" / best["key"],
                                                          N_CONCEPT_EXAMPLES)
        except Exception as e:  # noqa: BLE001 - the report still gets written
            concept_examples = {"error": f"{type(e).__name__}: {e}"}
    meta = {"backbone": backbone, "dataset": fewshot_ds, "concept_dataset": concept_ds,
            "meaningful": meaningful, "shots": shots, "seeds": seeds, "workers": workers,
            "methods": methods, "device": args.device, "pixel_steps": args.pixel_steps,
            "max_steps": args.max_steps, "pixel_min_epochs": PIXEL_MIN_EPOCHS,
            "cores": default_workers("cpu"), "torch_threads": torch.get_num_threads(),
            "prepare_seconds": prep_seconds, "elapsed_seconds": elapsed,
            "command": "medadapt " + " ".join(sys.argv[1:]) if sys.argv[0].endswith(
                ("medadapt", "__main__.py")) else "medadapt demo"}
    page = demo_page.write_demo_report(out, rows, skipped, meta, concept_examples)
    print(page["table"])
    for line in page["summary_lines"]:
        print(line)
    n_failed = sum(1 for r in rows if r.get("error"))
    if n_failed:
        print(f"{n_failed} run(s) failed: see {out / 'failures.json'}", file=sys.stderr)
    print(f"report: {out / 'report.md'} and {out / 'report.html'} ({elapsed / 60:.1f} min)")
    return 0


def add_parser(sub) -> None:
    import argparse
    p = sub.add_parser("demo", help="offline end-to-end example: every method, a few shot counts, "
                                    "2 seeds, base-to-novel and SCALE, with a report",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=__doc__)
    p.add_argument("--out", default="medadapt-demo", help="report folder (default: "
                   "medadapt-demo); the demo's finished runs in it are reused")
    p.add_argument("--shots", type=int, nargs="+", default=None,
                   help=f"shot counts (default: {' '.join(map(str, SHOTS))} on the synthetic "
                        "world)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help=f"seeds (default: {' '.join(map(str, SEEDS))})")
    p.add_argument("--methods", nargs="+", default=None, help="subset of methods (default: all)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel run processes (default: one per CPU core, at most 8)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads with --workers 1 (default: torch's own choice)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--pixel-steps", type=int, default=PIXEL_STEPS,
                   help="reduced budget (optimisation steps per run) of the methods that run the "
                        "image encoder in every step, at least 5 epochs; never more than their own "
                        f"schedule (default: {PIXEL_STEPS})")
    p.add_argument("--max-steps", type=int, default=None,
                   help="cap every method at about this many steps per run (a quick look; every "
                        "capped method is marked as a reduced budget; default: no cap)")
    p.add_argument("--tiny", action="store_true",
                   help="use the tiny random backbone on real tiles (pipeline check only; default: "
                        "the shipped synthetic world)")
    p.add_argument("--data", default=None,
                   help="class-folder data set for --tiny (default: "
                        "../shared/data/crc-val-he-7k-sample)")
    p.set_defaults(func=run_demo)
