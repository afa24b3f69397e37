"""The ``medadapt`` command line. Thin: parse, resolve config, call the engine, print.

Every error a user can cause ends with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

# Idle OpenMP threads spin by default; on a loaded or small machine that makes 2 threads slower
# than 1 (measured: 66 vs 486 images/s). Passive waiting keeps multi-threading a gain.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from medadapt import __version__
from medadapt.errors import UserError

# sub-packages that add their own sub-commands with ``add_parser(subparsers)``
PLUGINS = ("medadapt.synth.cli", "medadapt.instruct.cli", "medadapt.report.cli", "medadapt.demo",
           "medadapt.data.cli", "medadapt.recipes.cli")

EPILOG = """examples:
  medadapt backbones
  medadapt fit --backbone plip --dataset kather2016 --method coop --shots 16 --seeds 1 2 3 --out runs/coop
  medadapt fit --backbone tiny-hf-clip --dataset folder:../shared/data/crc-val-he-7k-sample \\
               --method linear-probe --shots 2 --seeds 1 2 --out runs/lp
  medadapt eval --run runs/lp
  medadapt predict --run runs/lp tile1.png tiles/ --out preds.csv
"""


from medadapt.helpfmt import HelpFormatter as _Fmt  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        self.print_usage(sys.stderr)
        print(f"medadapt: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _non_negative_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def _list(kind: str) -> int:
    if kind == "backbones":
        from medadapt.backbones import BACKBONES, how_to_get, local_status
        print(f"{'name':24} {'family':9} {'image':>5} {'ctx':>4}  {'source':62} weights here?")
        for name, s in BACKBONES.items():
            print(f"{name:24} {s.family:9} {s.image_size:>5} {s.context_length:>4}  {s.source:62} "
                  f"{local_status(s)}")
            print(f"{'':24} {s.license}; {s.note}")
            how = how_to_get(s)
            if how:
                print(f"{'':24} get: {how}")
        print("\nalso: open_clip:SRC, hf:SRC, conch:SRC, or a model folder (--backbone DIR); "
              "offline needs per model: docs/backbones.md")
    elif kind == "datasets":
        from medadapt.data.sources import DATASETS, _ensure_registered
        _ensure_registered()
        print(f"{'name':22} {'classes':>7}  {'modality':18} source")
        for name, d in DATASETS.items():
            how = "generated offline" if not d.needs_root else (d.homepage or d.manual[:60])
            print(f"{name:22} {len(d.classnames):>7}  {d.modality:18} {how}")
        print("\ndetails and download instructions: medadapt datasets NAME")
        print("also: folder:PATH (one sub-folder per class), csv:PATH (path,label[,split][,concepts]),"
              " npz:PATH (MedMNIST layout)")
    else:
        from medadapt.methods import METHODS, load_all
        load_all()
        print(f"{'name':16} {'trains':6} {'images':6} {'novel':5}  paper")
        for name, m in METHODS.items():
            print(f"{name:16} {'yes' if m.trainable else 'no':6} {'yes' if m.needs_images else 'cache':6} "
                  f"{'yes' if m.supports_novel else 'no':5}  {m.paper}")
    return 0


def _cmd_datasets(args) -> int:
    if args.name is None:
        if args.download:
            raise UserError("--download needs a data set name")
        return _list("datasets")
    if args.dest is not None and not args.download:
        raise UserError("--dest only applies with --download")
    kind = args.name.partition(":")[0]
    if kind in ("folder", "csv", "npz"):
        raise UserError(f"{args.name!r} is a spec for your own data, not a registered data set; "
                        "`medadapt datasets` lists the registered ones")
    from medadapt.data.download import describe, download
    if args.download:
        print(f"downloaded into {download(args.name, dest=args.dest)}")
    else:
        print(describe(args.name))
    return 0


def _methods(args) -> int:
    if args.name is None:
        return _list("methods")
    from medadapt.methods import get_method
    from medadapt.methods._defaults_doc import format_method
    get_method(args.name)  # unknown names: one-line error listing the valid ones
    if args.recipe or args.dataset:
        if not (args.recipe and args.dataset):
            from medadapt.errors import UserError
            raise UserError("--recipe and --dataset go together: the values of one run of a "
                            "recipe (see `medadapt recipes`)")
        from medadapt.recipes.cli import format_recipe_method
        print(format_recipe_method(args.name, args.recipe, args.dataset, args.shots,
                                   args.protocol))
        return 0
    print(format_method(args.name, 16 if args.shots is None else args.shots,
                        args.protocol or "few-shot"))
    return 0


def _fit_config(args) -> dict:
    from medadapt.config import apply_sets, load_yaml
    cfg = load_yaml(args.config) if args.config else {}
    for key in ("backbone", "dataset"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    if args.method:
        m = cfg.get("method") or {}
        cfg["method"] = dict(m, name=args.method) if isinstance(m, dict) else {"name": args.method}
    if args.shots is not None:
        cfg["shots"] = args.shots
    if args.seeds:
        cfg["seeds"] = args.seeds
    if args.base_to_novel:
        cfg["protocol"] = "base-to-novel"
    if args.device:
        cfg["device"] = args.device
    data = cfg.setdefault("data", {})
    if args.skip_bad:
        data["skip_bad"] = True
    if args.allow_fewer:
        data["allow_fewer"] = True
    return apply_sets(cfg, args.set)


def _cmd_fit(args) -> int:
    from medadapt import api
    if args.overwrite and args.resume:
        raise UserError("--overwrite and --resume exclude each other")
    cfg = _fit_config(args)
    run = api.fit(config=cfg, out=args.out, overwrite=args.overwrite, resume=args.resume,
                  quiet=args.quiet, progress=not args.quiet, log=args.log)
    rs = run.results
    for r in rs:
        m = r["metrics"]
        extra = f"  HM {r['hm']:.4f}" if r.get("hm") is not None else ""
        print(f"seed {r['seed']}: accuracy {m['accuracy']:.4f}  balanced {m['balanced_accuracy']:.4f}"
              f"  macro-F1 {m['macro_f1']:.4f}{extra}")
    if len(rs) > 1:
        import numpy as np
        acc = [r["metrics"]["accuracy"] for r in rs]
        print(f"mean accuracy {np.mean(acc):.4f} ± {np.std(acc):.4f} over {len(rs)} seeds")
    print(f"run folder: {run.path}")
    if args.log and "tensorboard" in args.log:
        print(f"tensorboard --logdir {run.path / 'tensorboard'}")
    return 0


def _cmd_eval(args) -> int:
    from medadapt import api
    out = api.load_run(args.run).evaluate(args.dataset, progress=not args.quiet)
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "n")
    if len(out["seeds"]) == 1:
        m = out["metrics"]
        print(json.dumps({k: m.get(k) for k in keys}, indent=1))
        return 0
    # several seeds: every seed, then the mean and std over seeds
    for s in out["seeds"]:
        m = s["metrics"]
        print(f"seed {s['seed']}: accuracy {m['accuracy']:.4f}  balanced "
              f"{m['balanced_accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  n {m['n']}")
    summ = out["summary"]
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc"):
        if k in summ:
            print(f"mean {k} {summ[k]['mean']:.4f} ± {summ[k]['std']:.4f} over "
                  f"{len(summ[k]['values'])} seeds")
    return 0


def _cmd_predict(args) -> int:
    from medadapt import api
    out = api.load_run(args.run).predict_csv(args.inputs, args.out, batch_size=args.batch_size,
                                             skip_bad=args.skip_bad, progress=not args.quiet,
                                             max_image_pixels=args.max_image_pixels,
                                             seed=args.seed)
    print(f"wrote {out}")
    return 0


def _cmd_push(args) -> int:
    from medadapt import api
    where = api.push(args.run, args.repo, dry_run=args.dry_run, private=args.private)
    if args.dry_run:
        files = sorted(str(p.relative_to(where)) for p in Path(where).rglob("*") if p.is_file())
        print(f"wrote {where} ({len(files)} files: {', '.join(files)}); nothing was uploaded")
    else:
        print(f"pushed to {where}; load it with medadapt.load_run(\"hf://{args.repo}\") or "
              f"medadapt predict --run hf://{args.repo} IMAGES")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="medadapt", formatter_class=_Fmt, epilog=EPILOG,
                description="Adapt medical vision-language models (PLIP, BiomedCLIP, QuiltNet, "
                            "CONCH, MONET, any CLIP) to clinical image tasks with few labels.")
    p.add_argument("--version", action="version", version=f"medadapt {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for kind, helptext in (("backbones", "list registered backbones (source id, image size, "
                                         "context length, license)"),
                           ("datasets", "list registered data sets"),
                           ("methods", "list registered adaptation methods, or show one "
                                       "method's resolved defaults with their sources")):
        sp = sub.add_parser(kind, help=helptext, description=helptext, formatter_class=_Fmt)
        sp.set_defaults(func=lambda a, k=kind: _list(k))
        if kind == "datasets":
            sp.add_argument("name", nargs="?", default=None,
                            help="show one data set in full: classes, on-disk layout, files with "
                                 "checksums, how to get it (default: list all)")
            sp.add_argument("--download", action="store_true",
                            help="download NAME's files, checksum-verified, into --dest")
            sp.add_argument("--dest", default=None,
                            help="download folder (default: $MEDADAPT_DATA/<the data set's folder>)")
            sp.set_defaults(func=_cmd_datasets)
        if kind == "methods":
            sp.add_argument("name", nargs="?", default=None,
                            help="a method: print its defaults and where each comes from")
            sp.add_argument("--shots", type=_non_negative_int, default=None,
                            help="resolve shot-dependent defaults for K shots (0 = all data) "
                                 "(default: 16; with --recipe: the recipe's largest K)")
            sp.add_argument("--protocol", default=None,
                            choices=["few-shot", "base-to-novel", "cross-domain"],
                            help="resolve protocol-dependent defaults (default: few-shot; with "
                                 "--recipe: the recipe's first protocol)")
            sp.add_argument("--recipe", default=None, metavar="R",
                            help="show the values one run of recipe R uses (see `medadapt "
                                 "recipes`), each with its source; needs --dataset (default: "
                                 "none, the method's own defaults)")
            sp.add_argument("--dataset", default=None, metavar="D",
                            help="with --recipe: the data set (its label in the recipe, e.g. "
                                 "DermaMNIST, or its spec) (default: none)")
            sp.set_defaults(func=_methods)

    f = sub.add_parser("fit", help="train and evaluate a method over one or more seeds",
                       formatter_class=_Fmt, epilog=EPILOG,
                       description="Sample K shots per class (seeded), train the method, evaluate "
                                   "on the test split, and write a run folder (config.yaml, "
                                   "fewshot.json, results.json, params.safetensors, log.txt; "
                                   "seed<N>/ and summary.json for several seeds).")
    f.add_argument("--backbone", help="registered alias (see `medadapt backbones`), open_clip:SRC, "
                                      "hf:SRC or a local model folder (default: the --config "
                                      "file's; required)")
    f.add_argument("--dataset", help="registered name, folder:PATH, csv:PATH or npz:PATH "
                   "(default: the --config file's; required)")
    f.add_argument("--method", help="method name (see `medadapt methods`) (default: the --config "
                   "file's; required)")
    f.add_argument("--shots", type=int, default=None, help="K training images per class "
                   "(default 16; 0 = all)")
    f.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: 1)")
    f.add_argument("--out", required=True, help="run folder to create (required)")
    f.add_argument("--config", help="YAML config file (flags and --set override it) "
                   "(default: none)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=0.002 --set method.n_ctx=4; "
                        "repeatable; unknown keys are refused (default: none)")
    f.add_argument("--base-to-novel", action="store_true",
                   help="train on base classes, report base / novel accuracy and their HM")
    f.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: auto)")
    f.add_argument("--skip-bad", action="store_true", help="skip and count unreadable images")
    f.add_argument("--allow-fewer", action="store_true",
                   help="allow classes with fewer than K training images")
    f.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    f.add_argument("--resume", action="store_true",
                   help="continue an interrupted run folder (finished seeds are kept)")
    f.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    from medadapt.engine.trackers import add_log_option
    add_log_option(f)
    f.set_defaults(func=_cmd_fit)

    e = sub.add_parser("eval", help="evaluate a finished run on its test split or another data set",
                       formatter_class=_Fmt)
    e.add_argument("--run", required=True, help="run folder written by `medadapt fit`, or "
                   "hf://ORG/NAME[@REVISION] (a pushed run, read through the Hugging Face cache) "
                   "(required)")
    e.add_argument("--dataset", default=None, help="data set spec (default: the run's)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("predict", help="class probabilities for images -> CSV", formatter_class=_Fmt)
    pr.add_argument("--run", required=True, help="run folder written by `medadapt fit`, or "
                    "hf://ORG/NAME[@REVISION] (a pushed run, read through the Hugging Face cache) "
                    "(required)")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--out", default=None, help="CSV to write (default: RUN/predictions.csv; "
                    "./predictions.csv for an hf:// run); "
                    "written to a temporary file and renamed into place when complete")
    pr.add_argument("--batch-size", type=_positive_int, default=32,
                    help="images decoded and encoded at a time (memory is flat in the number of "
                         "inputs)")
    pr.add_argument("--skip-bad", action="store_true",
                    help="skip unreadable images; they get a row with the reason in an 'error' "
                         "column")
    pr.add_argument("--max-image-pixels", type=_positive_int, default=None,
                    help="raise Pillow's decompression-bomb limit (default: the run's "
                         "data.max_image_pixels, else Pillow's ~89 Mpx)")
    pr.add_argument("--seed", type=int, default=None,
                    help="a run with several seeds: use this seed's model only (default: every "
                         "seed's model, writing the mean of their probabilities)")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=_cmd_predict)

    pu = sub.add_parser(
        "push", help="share a run on the Hugging Face Hub (learned parameters, config, classes, "
                     "model card)", formatter_class=_Fmt,
        description="Upload a finished run to the Hugging Face Hub: params.safetensors per seed, "
                    "the resolved config.yaml, classes.json, results and a model card README.md "
                    "(backbone and its licence, data set, method and its paper, shots, seeds, "
                    "metrics, how to load it). Local data paths are reduced to their last "
                    "component; fewshot.json and log.txt are not uploaded. Load it back with "
                    "medadapt.load_run('hf://ORG/NAME') or --run hf://ORG/NAME.",
        epilog="examples:\n  medadapt push runs/coop --repo my-lab/plip-coop-kather --dry-run "
               "/tmp/card\n  medadapt push runs/coop --repo my-lab/plip-coop-kather --private")
    pu.add_argument("run", metavar="RUN", help="run folder written by `medadapt fit`")
    pu.add_argument("--repo", required=True, help="Hugging Face repository ORG/NAME (created if "
                    "missing; needs `hf auth login` or HF_TOKEN) (required)")
    pu.add_argument("--dry-run", metavar="DIR", default=None,
                    help="write the folder that would be uploaded into DIR (new or empty) and "
                         "upload nothing (default: upload)")
    pu.add_argument("--private", action="store_true", help="create the repository private")
    pu.set_defaults(func=_cmd_push)

    for mod in PLUGINS:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name and mod.startswith(err.name):
                continue  # that part of medadapt is not present
            raise
        m.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except UserError as e:
        from medadapt.safeio import one_line
        print(f"medadapt: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except RecursionError:  # a hostile input nested too deeply that no reader caught first
        print("medadapt: error: an input file is nested too deeply to read; refused",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medadapt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
