"""``medadapt bench GRID.yaml`` and ``medadapt report RUNS_DIR`` (plugged in by medadapt.cli).

Only argparse here; the work happens in :mod:`medadapt.report.bench` and
:mod:`medadapt.report.report`, imported when a command runs.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from medadapt.errors import UserError

BENCH_EPILOG = """grid file (YAML):
  name: synth-fewshot                     report title
  out: runs/synth-fewshot                 default output folder (--out overrides)
  backbones: [synthpath-clip]             names/specs, or {spec, label, set}
  datasets: [synth-crc]                   specs, or {spec, label, set, protocols, shots}
  methods:                                names, or {name, label, set, shots, protocols, seeds,
    - zero-shot                                       any other key -> method config}
    - {name: zero-shot, mode: ensemble, label: zs-ensemble}
    - {name: coop, set: {train.epochs: 20}}
  shots: [1, 2, 4, 8, 16]                 or fractions: [0.05, 0.1, 0.25]
  seeds: [1, 2, 3]
  protocols: [few-shot]                   few-shot | base-to-novel | cross-domain
  set: {data.batch_size: 128}             overrides shared by every run

run folders: OUT/<backbone>/<dataset>/<protocol>/<method label>/<K>shot (seeds inside).
status: OUT/bench_index.json (every run and its status), OUT/bench_failures.json (errors).
exit code: 0 when every selected run is complete, 1 when some run failed or was left
unchanged because its config changed, 2 on a user error in the grid or the options.

a grid may instead name a recipe (a published table as its authors ran it):
  recipe: biomedcoop-fewshot              its data sets, methods, shots, seeds and settings
  out: runs/biomedcoop-fewshot            (name, title, out and set are allowed beside it;
                                           set / --set put runs off the recipe, and report
                                           --compare marks them)

examples:
  medadapt bench configs/bench/synth-smoke.yaml
  medadapt bench --recipe biomedcoop-fewshot --data-root DATA
  medadapt bench configs/bench/synth-fewshot.yaml --out runs/fs --set train.epochs=5 --dry-run
  CUDA_VISIBLE_DEVICES=1 medadapt bench grid.yaml --shard 1/2      (second half on GPU 1)
  accelerate launch --num_processes 4 -m medadapt bench grid.yaml  (one shard per GPU)
  medadapt report runs/fs
"""

REPORT_EPILOG = """writes into OUT (default RUNS_DIR/report):
  report.md + *.png      tables (mean ± std over seeds, %; best in bold, second underlined),
                         few-shot curves, base/novel/HM, per-class recall heat maps,
                         confusion matrices, t-SNE of image embeddings
  report.html            the same on one self-contained page (images embedded as base64)
  report.json, *.csv     the aggregated numbers

examples:
  medadapt report runs/fs
  medadapt report runs/fs --metrics accuracy macro_f1 auc --shots 16 --no-tsne
  medadapt report runs/biomedcoop-fewshot --compare biomedcoop-fewshot
      (paper / ours ± seed std / difference per data set and mean -> compare_*.md/csv/png)
"""


from medadapt.helpfmt import HelpFormatter as _Fmt  # noqa: E402


def _cmd_bench(args) -> int:
    from medadapt.report.bench import (expand_grid, load_grid, parse_shard, run_bench, validate)
    if args.data_root:
        root = Path(args.data_root).expanduser()
        if not root.is_dir():
            raise UserError(f"--data-root: folder not found: {root}")
        os.environ["MEDADAPT_DATA"] = str(root.resolve())
    if bool(args.grid) == bool(args.recipe):
        raise UserError("give a grid file (GRID.yaml) or --recipe NAME (see `medadapt recipes`), "
                        "one of the two")
    if args.recipe:
        grid_path, grid = None, {"recipe": args.recipe}
    else:
        grid_path = Path(args.grid)
        grid = load_grid(grid_path)
    recipe = None
    if grid.get("recipe"):
        from medadapt.report.bench import expand_recipe
        runs, recipe = expand_recipe(grid, args.set, args.backbone)
        stem = recipe.name
    else:
        if args.backbone:
            raise UserError("--backbone goes with a recipe; a grid file names its backbones")
        runs = expand_grid(grid, grid_path.resolve().parent, args.set)
        stem = grid_path.stem
    out = args.out or grid.get("out") or (recipe.data.get("out") if recipe else None)
    if not out:
        raise UserError("give --out DIR (or 'out:' in the grid file)")
    if not isinstance(out, str):
        raise UserError(f"{grid_path or args.recipe}: 'out:' must be a folder name")
    from medadapt.report.bench import check_bench_out
    check_bench_out(Path(out))  # the grid's out: follows --out's rules: never a folder of yours
    validate(runs)
    shard = parse_shard(args.shard)
    info = {"grid": str(grid_path) if grid_path else None, "name": grid.get("name") or stem,
            "title": grid.get("title") or grid.get("name") or (recipe.title if recipe else stem),
            "n_runs": len(runs), "set": list(args.set)}
    if recipe is not None:
        info.update(recipe=recipe.name, backbone_override=args.backbone)
    def write_grid_copy():  # once every check has passed, before the first run
        import yaml
        from medadapt.safeio import write_text
        Path(out).mkdir(parents=True, exist_ok=True)
        write_text(Path(out) / "grid.yaml",  # temp + swap; a link in the way is refused
                   yaml.safe_dump({**grid, "cli_set": list(args.set),
                                   **({"cli_backbone": args.backbone} if args.backbone else {})},
                                  sort_keys=False))
    res = run_bench(runs, out, grid_info=info, only=args.only, shard=shard,
                    retry_failed=not args.skip_failed, rerun_changed=args.rerun_changed,
                    reuse_backbone=not args.no_reuse_backbone, progress=not args.quiet,
                    quiet=args.quiet, verbose=args.verbose, dry_run=args.dry_run,
                    on_start=write_grid_copy, log=args.log)
    if args.dry_run:
        return 0
    c = res["counts"]
    print(f"bench: {c.get('done', 0)} of {len(runs)} runs done ({res['ran']} run now, "
          f"{res['skipped']} already complete), {len(res['failed'])} failed or changed, "
          f"{c.get('pending', 0) + c.get('interrupted', 0)} pending"
          + (f", {c['running']} running in other processes" if c.get("running") else "")
          + f"; index: {res['index']}")
    if res["failed"]:
        print(f"see {Path(out) / 'bench_failures.json'} for the errors")
        return 1
    return 0


def _cmd_report(args) -> int:
    if args.compare:
        from medadapt.report.compare import write_comparison
        res = write_comparison(args.runs_dir, args.compare, out=args.out)
        for t in res["tables"]:
            print(f"compare {t['table']}: {t['markdown']}" + (f", plot {t['plot']}" if t["plot"] else ""))
            rec = t["result"].get("recipe") or {}
            if rec.get("recipe"):
                off = len(rec["off_runs"])
                print(f"  recipe {rec['recipe']}: {rec['on']} run folder(s) follow it"
                      + (f", {off} off it (marked † in the table)" if off else ""))
            else:
                print("  no recipe ships for this table: settings not checked against the authors'")
        print(f"all tables: {res['out']}/compare.md")
        return 0
    from medadapt.report.report import build_report
    res = build_report(args.runs_dir, out=args.out, metrics=args.metrics, shots=args.shots,
                       tsne=not args.no_tsne, tsne_max=args.tsne_max, title=args.title,
                       progress=not args.quiet)
    print(f"report: {res['n_runs']} run folders, {res['n_tables']} tables, {res['n_figures']} "
          f"figures -> {res['html']} and {res['markdown']}")
    for note in res.get("notes", []):
        print(f"  note: {note}")
    return 0


def add_parser(subparsers) -> None:
    b = subparsers.add_parser(
        "bench", help="run an experiment grid (backbones x data sets x methods x shots x seeds) or "
                  "a published suite (--recipe)",
        formatter_class=_Fmt, epilog=BENCH_EPILOG,
        description="Expand a grid YAML into run folders and run them in one process through the "
                    "same engine as `medadapt fit`, sharing the feature cache and the loaded "
                    "backbone. Runs already complete are skipped, partial ones resumed; a failing "
                    "run is recorded and the grid goes on. Ctrl-C stops cleanly; run the same "
                    "command again to resume.")
    b.add_argument("grid", metavar="GRID.yaml", nargs="?", default=None,
                   help="grid file (see below and configs/bench/); or give --recipe")
    b.add_argument("--recipe", default=None, metavar="NAME",
                   help="run a published suite as its authors ran it (`medadapt recipes` lists "
                        "them; a grid file with 'recipe: NAME' does the same) (default: none)")
    b.add_argument("--backbone", default=None, metavar="SPEC",
                   help="with a recipe: run it on this backbone instead of the recipe's (e.g. a "
                        "stand-in); report --compare notes the difference (default: the recipe's)")
    b.add_argument("--out", default=None,
                   help="output folder for the run folders and the index (default: the grid's "
                        "'out:', relative to the working directory)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every run, applied last (e.g. --set "
                        "train.epochs=5); part of each run's config, so changing it later marks "
                        "finished runs as changed (default: none)")
    b.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder holding the registered data sets, each in the folder `medadapt "
                        "datasets NAME` names (DIR/BTMRI for btmri, DIR/kather2016 for "
                        "kather2016, ...); sets MEDADAPT_DATA for this run (default: "
                        "$MEDADAPT_DATA or ~/.cache/medadapt/data)")
    b.add_argument("--only", nargs="+", default=None, metavar="PATTERN",
                   help="run only runs whose id (backbone/dataset/protocol/method/budget) contains "
                        "PATTERN or matches it as a glob (default: all)")
    b.add_argument("--shard", default=None, metavar="I/N",
                   help="run only every N-th run starting at I (0-based) to split a grid over "
                        "processes, GPUs or nodes (default: all; under accelerate launch / "
                        "torchrun: RANK/WORLD_SIZE)")
    b.add_argument("--dry-run", action="store_true",
                   help="list the runs and their state (done / partial / absent / changed), run "
                        "nothing")
    b.add_argument("--skip-failed", action="store_true",
                   help="do not retry runs that failed in an earlier bench (default: failed runs "
                        "are retried)")
    b.add_argument("--rerun-changed", action="store_true",
                   help="replace run folders whose config.yaml differs from what the grid now "
                        "asks for (default: such folders are left alone and reported as changed)")
    b.add_argument("--no-reuse-backbone", action="store_true",
                   help="load the backbone afresh for every run instead of loading it once and "
                        "handing each run a copy (saves memory with very large backbones)")
    b.add_argument("--verbose", action="store_true",
                   help="show each run's log lines and progress bars (default: one line per "
                        "run; the logs go to each run's log.txt)")
    b.add_argument("--quiet", action="store_true", help="no progress bar and no per-run lines")
    from medadapt.engine.trackers import add_log_option
    add_log_option(b, "; one tracker run per grid run and seed, named by the run's id")
    b.set_defaults(func=_cmd_bench)

    r = subparsers.add_parser(
        "report", help="tables, curves and plots (Markdown + PNG + one HTML page) from run folders",
        formatter_class=_Fmt, epilog=REPORT_EPILOG,
        description="Aggregate every run folder under RUNS_DIR (from `medadapt bench` or "
                    "`medadapt fit`): mean ± std over seeds per method, data set, protocol and "
                    "shot count, with the best and second best value of each column marked as "
                    "in the papers; few-shot curves; base / novel / HM tables; cross-domain "
                    "tables; per-class recall heat maps; confusion matrices; t-SNE of image "
                    "embeddings before and after adaptation.")
    r.add_argument("runs_dir", metavar="RUNS_DIR", help="folder holding run folders (searched "
                                                        "recursively)")
    r.add_argument("--out", default=None, help="report folder (default: RUNS_DIR/report)")
    r.add_argument("--metrics", nargs="+", default=["accuracy", "macro_f1"],
                   choices=["accuracy", "balanced_accuracy", "macro_f1", "auc"],
                   help="metric columns of the main tables")
    r.add_argument("--shots", type=float, default=None, metavar="K",
                   help="shot count (or fraction) for heat maps, confusion matrices and t-SNE "
                        "(default: the largest of each data set and protocol)")
    r.add_argument("--no-tsne", action="store_true",
                   help="skip the t-SNE figures (they reload the data set and each run's model)")
    r.add_argument("--tsne-max", type=int, default=600,
                   help="test images per t-SNE (stratified subsample)")
    r.add_argument("--title", default=None,
                   help="page title (default: the grid's name from bench_index.json, else the "
                        "folder name)")
    r.add_argument("--compare", nargs="+", default=None, metavar="TABLE",
                   help="instead of the full report: the published numbers of TABLE (a shipped "
                        "name: biomedcoop-fewshot, biomedcoop-b2n, biomed-dpt-fewshot, "
                        "biomed-dpt-b2n, pathoprompt-table1-fewshot, pathoprompt-table1-b2n, "
                        "pathoprompt-table2-cross-organ; or a YAML file of the same shape) next "
                        "to ours with the difference and its seed spread, per data set and mean, "
                        "and a plot of ours vs published -> OUT/compare_TABLE.{md,csv,json,png} "
                        "(default: none, the full report)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.set_defaults(func=_cmd_report)
