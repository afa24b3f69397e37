"""fit / eval / predict: from a resolved config to a run folder (DESIGN.md contracts).

Run folder: ``config.yaml``, ``classes.json``, and per seed ``fewshot.json``, ``results.json``,
``params.safetensors``, ``log.txt`` (in ``seed<N>/`` when several seeds, plus ``summary.json``).
Every input is validated (data set, backbone, class texts, K shots for every seed) before the folder
is created; any failure after that (not only a user error) removes what this call created, so
nothing is half-written; ``--overwrite`` builds beside the old run and swaps on success, ``--resume``
refuses another config, and one process at a time holds a run folder (:mod:`medadapt.engine.rundir`,
docs/safety.md). An interrupted run (Ctrl-C, SIGKILL) is kept for ``--resume``.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

import medadapt
from medadapt.config import DEFAULTS, deep_update, dump_yaml, load_yaml
from medadapt.data.catalog import dataset_options
from medadapt.data.dataset import DataSet
from medadapt.data.fewshot import (base_novel_split, fraction_subset, ids_to_indices, load_fewshot,
                                   sample_fewshot, save_fewshot)
from medadapt.data.sources import load_dataset
from medadapt.data.texts import ClassTexts, load_class_texts, shipped_descriptions
from medadapt.engine.features import FeatureCache
from medadapt.engine.rundir import (check_not_data_folder, check_out_dir, config_diff,  # noqa: F401
                                    foreign_entries, is_run_folder, run_lock)
from medadapt.engine.train import Engine, Split
from medadapt.errors import UserError
from medadapt.methods import Batch, Method, get_method
from medadapt.metrics import classification_metrics, harmonic_mean

CORE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc")


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available")
    return name


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(type(o).__name__)


class RunLog:
    def __init__(self, path: Path | None, quiet: bool = False):
        self.path, self.quiet = path, quiet

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        if not self.quiet:
            print(line, file=sys.stderr)


# ------------------------------------------------------------------------------------------------
def resolve(cfg: dict) -> dict:
    """Fill defaults (global, then the method's paper defaults) under the user's settings."""
    from medadapt.config import check_top_level, normalise, train_schema, validate
    cfg = normalise(cfg)
    check_top_level(cfg)
    user = cfg
    cfg = deep_update(DEFAULTS, cfg)
    for key in ("backbone", "dataset"):
        if not cfg.get(key):
            raise UserError(f"missing --{key}")
    name = (cfg.get("method") or {}).get("name")
    if not name:
        raise UserError("missing --method (see `medadapt methods`)")
    if not isinstance(name, str):
        raise UserError(f"method.name must be a method name, got {name!r}")
    cls = get_method(name)
    if cfg["protocol"] not in ("few-shot", "base-to-novel", "cross-domain"):
        raise UserError(f"unknown protocol {cfg['protocol']!r}; valid: few-shot, base-to-novel, "
                        "cross-domain")
    if not isinstance(cfg["shots"], int) or isinstance(cfg["shots"], bool):
        raise UserError(f"shots must be an integer >= 0 (0 = all images), got {cfg['shots']!r}")
    shots = None if cfg["data"].get("fraction") else int(cfg["shots"])
    d = cls.resolved_defaults(shots, cfg["protocol"])  # the paper's, shot/protocol-dependent
    cfg["method"] = {**d["method"], **cfg["method"]}
    cfg["train"] = {**d["train"], **(cfg.get("train") or {})}
    cfg["data"] = {**d["data"], **((user.get("data") or {}) if isinstance(user.get("data"), dict)
                                   else {})}
    from medadapt.engine.train import TRAIN_DEFAULTS
    if not cfg["seeds"]:
        raise UserError("give at least one seed")
    validate(cfg, cls.defaults, train_schema(TRAIN_DEFAULTS, cls.train_defaults))
    from medadapt.engine.features import autocast_dtype
    autocast_dtype(cfg["data"].get("precision", "auto"), "cpu")  # validates the name
    return cfg


def class_texts_for(cfg: dict, ds: DataSet, classnames: list[str], needs: bool) -> ClassTexts:
    t = cfg["texts"]
    desc = t.get("descriptions")
    if desc is None and ds.meta.get("descriptions"):
        shipped = shipped_descriptions(ds.meta["descriptions"])
        desc = str(shipped) if shipped.exists() else None
    return load_class_texts(classnames, t.get("template_set") or ds.meta.get("template_set",
                                                                          "histopathology"),
                            desc, t.get("templates"), require_descriptions=needs)


class Prepared:
    """Everything validated before a run folder is touched."""

    def __init__(self, cfg: dict, quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet
        self.method_cls: type[Method] = get_method(cfg["method"]["name"])
        self.ds = load_dataset(cfg["dataset"], **dataset_options(cfg))
        d = cfg["data"]
        self.texts = class_texts_for(cfg, self.ds, self.ds.classnames, self.method_cls.needs_descriptions)
        self.protocol = cfg["protocol"]
        all_classes = list(range(self.ds.num_classes))
        self.train_classes = all_classes
        self.novel_classes: list[int] = []
        self.train_domain = None
        if self.protocol == "base-to-novel":
            base = d.get("base") or self.ds.meta.get("base_classes")
            self.train_classes, self.novel_classes = base_novel_split(self.ds.classnames, base,
                                                                      d.get("novel"))
        elif self.protocol == "cross-domain":
            doms = self.ds.domains()
            if len(doms) < 2:
                raise UserError(f"cross-domain protocol needs a data set with several domains; "
                                f"{self.ds.name} has {doms or 'none'}")
            self.train_domain = d.get("train_domain") or doms[0]
            if self.train_domain not in doms:
                raise UserError(f"unknown train domain {self.train_domain!r}; valid: {doms}")
        self._bad: dict[int, bool] = {}
        ok = self._ok if d["skip_bad"] else None
        self.fewshots = {}
        for seed in cfg["seeds"]:
            if d.get("fraction"):
                fs = fraction_subset(self.ds, float(d["fraction"]), seed)
            else:
                fs = sample_fewshot(self.ds, int(cfg["shots"]), seed, self.train_classes,
                                    allow_fewer=d["allow_fewer"] or not self.method_cls.uses_shots,
                                    ok=ok, domain=self.train_domain)
            self.fewshots[seed] = fs

    def _ok(self, i: int) -> bool:
        if i not in self._bad:
            try:
                self.ds.load_image(i)
                self._bad[i] = False
            except UserError:
                self._bad[i] = True
        return not self._bad[i]


# ------------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, cfg: dict, out: str | Path, overwrite: bool = False, resume: bool = False,
                 quiet: bool = False, progress: bool = True):
        self.cfg = resolve(cfg)
        # absolute and normalised: `--out .` or `--out runs/..` still have a name and a parent
        # (the lock file and the --overwrite swap live beside the run folder)
        self.out = Path(os.path.abspath(out))
        self.overwrite, self.resume, self.quiet, self.progress = overwrite, resume, quiet, progress

    def run(self) -> dict:
        out = self.out
        check_out_dir(out)
        from medadapt.data.dataset import pixel_limit
        missing = []  # parent folders this call creates (removed again if it fails)
        p = out.parent
        while not p.exists() and p.parent != p:
            missing.append(p)
            p = p.parent
        try:
            with run_lock(out), pixel_limit(self.cfg["data"].get("max_image_pixels")):
                return self._run_locked(out)
        except BaseException:
            for d in missing:  # deepest first; only if still empty
                try:
                    d.rmdir()
                except OSError:
                    break
            raise

    def _run_locked(self, out: Path) -> dict:
        exists = out.exists() and any(out.iterdir())
        if exists and not (self.overwrite or self.resume):
            state = "an unfinished medadapt run" if is_run_folder(out, strict=False) else "files"
            raise UserError(f"run folder {out} already exists and holds {state}; pass --resume to "
                            "continue a run or --overwrite to replace one (or choose another --out)")
        if exists and self.overwrite and not is_run_folder(out):
            raise UserError(f"--overwrite refused: {out} is not a medadapt run folder (no "
                            "config.yaml + classes.json / results.json); nothing was deleted")
        if exists and self.overwrite:
            foreign = foreign_entries(out)
            if foreign:
                more = f" and {len(foreign) - 4} more" if len(foreign) > 4 else ""
                shown = ", ".join(foreign[:4]) + more
                raise UserError(f"--overwrite refused: {out} holds files medadapt did not write "
                                f"({shown}); move them out first or choose another --out; nothing "
                                "was deleted")
        if exists and self.resume:
            if not is_run_folder(out, strict=False):
                raise UserError(f"--resume refused: {out} is not a medadapt run folder (no "
                                "config.yaml + classes.json / results.json)")
            self._check_resume_config(out)
        prep = Prepared(self.cfg, self.quiet)
        check_not_data_folder(out, prep.ds)
        if exists and self.resume:
            stored = (load_yaml(out / "config.yaml").get("classnames") or None)
            if stored is not None and list(stored) != list(prep.ds.classnames):
                raise UserError(f"--resume refused: the classes of {self.cfg['dataset']} changed "
                                f"since {out} was started ({len(stored)} then, "
                                f"{prep.ds.num_classes} now); use another --out or --overwrite")
        device = pick_device(self.cfg["device"])
        from medadapt.backbones import load_backbone
        backbone = load_backbone(self.cfg["backbone"], device=device)
        if exists and self.overwrite:
            # build the new run beside the old one; swap only when it has succeeded
            work = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
            old = None
            try:
                res = self._write(prep, backbone, work, out)
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, old / "run")
                try:
                    os.replace(work, out)
                except BaseException:
                    os.replace(old / "run", out)  # put the old run back
                    raise
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                if old is not None and not (old / "run").exists():
                    shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
            return res
        created = not out.exists()
        try:
            return self._write(prep, backbone, out, out)
        except KeyboardInterrupt:
            raise  # an interrupted run stays for --resume
        except BaseException:
            # any failure (not only a UserError): remove what this call created
            if created:
                shutil.rmtree(out, ignore_errors=True)
            elif not exists and out.exists():  # it was an empty folder: empty it again
                for child in out.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            raise

    def _check_resume_config(self, out: Path) -> None:
        try:
            stored = load_yaml(out / "config.yaml")
        except UserError as e:
            raise UserError(f"--resume refused: {e}") from None
        diff = config_diff(stored, self.cfg)
        if diff:
            raise UserError(f"--resume refused: {out} was run with another config (differs in: "
                            f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}); use another "
                            "--out or --overwrite")

    def _write(self, prep: Prepared, backbone, folder: Path, out: Path) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        cfg = dict(self.cfg, classnames=list(prep.ds.classnames))
        dump_yaml(cfg, folder / "config.yaml.tmp")
        os.replace(folder / "config.yaml.tmp", folder / "config.yaml")
        atomic_json(folder / "classes.json", {"classnames": prep.texts.classnames,
                                              "train_classnames": [prep.ds.classnames[c] for c in
                                                                   prep.train_classes],
                                              "templates": prep.texts.templates,
                                              "descriptions": prep.texts.descriptions})
        seeds = self.cfg["seeds"]
        results = []
        for seed in seeds:
            sdir = folder / f"seed{seed}" if len(seeds) > 1 else folder
            results.append(self._run_seed(prep, backbone, seed, sdir))
        if len(seeds) > 1:
            atomic_json(folder / "summary.json", summarise(results))
        return {"results": results, "out": str(out)}

    # --------------------------------------------------------------------------------------------
    def _split(self, prep: Prepared, backbone, idx: list[int], class_map: dict[int, int],
               cache: FeatureCache, needs_images: bool, desc: str, views: int = 0) -> Split:
        d = self.cfg["data"]
        bad: list[int] = []
        feats = None
        if not needs_images:
            feats, bad = cache.encode(backbone, prep.ds, idx, 0, d["batch_size"], d["workers"],
                                      d["skip_bad"], self.progress, desc)
        elif d["skip_bad"]:
            bad = [i for i in idx if not prep._ok(i)]
        keep = [i for i in idx if i not in set(bad)]
        split = Split(prep.ds, keep, torch.tensor([class_map[prep.ds.records[i].label] for i in keep],
                                                  dtype=torch.long), feats,
                      concepts=[prep.ds.records[i].concepts for i in keep])
        if views and not needs_images:
            vs = [cache.encode(backbone, prep.ds, keep, v, d["batch_size"], d["workers"], False,
                               self.progress, f"{desc} (view {v})")[0] for v in range(1, views + 1)]
            split.views = torch.stack(vs)
        split.n_bad = len(bad)  # type: ignore[attr-defined]
        return split

    def _run_seed(self, prep: Prepared, backbone, seed: int, sdir: Path) -> dict:
        cfg = self.cfg
        sdir.mkdir(parents=True, exist_ok=True)
        res_path = sdir / "results.json"
        if self.resume and res_path.exists():
            return json.loads(res_path.read_text())
        log = RunLog(sdir / "log.txt", self.quiet)
        fs_path = sdir / "fewshot.json"
        if self.resume and fs_path.exists():
            fs = load_fewshot(fs_path)
        else:
            fs = prep.fewshots[seed]
            save_fewshot(fs_path, fs)
        ds = prep.ds
        log(f"medadapt {medadapt.__version__} | {cfg['method']['name']} on {cfg['backbone']} | "
            f"{ds.name} | protocol {prep.protocol} | shots {cfg['shots']} | seed {seed}")
        set_seed(seed)
        cls = prep.method_cls
        cache = FeatureCache(enabled=cfg["data"]["cache"], precision=cfg["data"].get("precision", "auto"))
        train_cls = prep.train_classes
        cmap = {c: j for j, c in enumerate(train_cls)}
        train_idx = ids_to_indices(ds, fs["train"])
        val_idx = ids_to_indices(ds, fs.get("val", {}))
        train = self._split(prep, backbone, train_idx, cmap, cache, cls.needs_images, "train images",
                            cfg["data"]["augment_views"])
        val = self._split(prep, backbone, val_idx, cmap, cache, cls.needs_images, "val images")
        texts_train = prep.texts.for_classes([ds.classnames[c] for c in train_cls])
        set_seed(seed)
        method = cls(backbone, texts_train, cfg["method"]).to(backbone.device)
        engine = Engine(cfg["train"], device=str(backbone.device), run_dir=sdir,
                        progress=self.progress, log=log, seed=seed)
        engine.resume = self.resume
        t0 = time.time()
        info = method.fit(train, val, engine) or {}
        train_seconds = time.time() - t0
        log(f"trained in {train_seconds:.1f}s ({method.n_trainable_params()} learned parameters)")

        result = {"medadapt_version": medadapt.__version__, "method": cls.name,
                  "backbone": cfg["backbone"], "dataset": cfg["dataset"],
                  "shots": cfg["shots"] if not cfg["data"].get("fraction") else None,
                  "fraction": cfg["data"].get("fraction"), "seed": seed,
                  "protocol": prep.protocol, "metrics": None, "base": None, "novel": None,
                  "hm": None, "train_seconds": train_seconds,
                  "n_trainable_params": method.n_trainable_params(),
                  "val_accuracy": info.get("val_accuracy"), "train_info": _small(info)}
        n_bad = train.n_bad + val.n_bad  # type: ignore[attr-defined]
        if prep.protocol == "base-to-novel":
            base = self._evaluate(prep, backbone, method, engine, cache, train_cls, log, "base")
            result["metrics"], result["base"] = base["metrics"], base["metrics"]["accuracy"]
            n_bad += base["n_bad"]
            if method.supports_novel:  # the instance decides (e.g. CoOp with class-specific context)
                method.set_classes(prep.texts.for_classes([ds.classnames[c] for c in prep.novel_classes]))
                nov = self._evaluate(prep, backbone, method, engine, cache, prep.novel_classes, log,
                                     "novel")
                result["novel_metrics"] = nov["metrics"]
                result["novel"] = nov["metrics"]["accuracy"]
                result["hm"] = harmonic_mean(result["base"], result["novel"])
                n_bad += nov["n_bad"]
                method.set_classes(texts_train)
            else:
                log(f"{cls.name} has class-specific parameters: novel classes not evaluated")
        elif prep.protocol == "cross-domain":
            per = {}
            for dom in ds.domains():
                r = self._evaluate(prep, backbone, method, engine, cache, train_cls, log,
                                   f"domain {dom}", domain=dom)
                per[dom] = r["metrics"]["accuracy"]
                n_bad += r["n_bad"]
            unseen = [v for k, v in per.items() if k != prep.train_domain]
            result["train_domain"] = prep.train_domain
            result["domain_accuracy"] = per
            pooled = self._evaluate(prep, backbone, method, engine, cache, train_cls, log,
                                    "unseen domains", exclude_domain=prep.train_domain)
            result["metrics"] = pooled["metrics"]
            result["metrics"]["mean_domain_accuracy"] = float(np.mean(unseen))
        else:
            r = self._evaluate(prep, backbone, method, engine, cache, train_cls, log, "test")
            result["metrics"] = r["metrics"]
            n_bad += r["n_bad"]
        result["bad_images_skipped"] = n_bad
        save_file(method.learned_state_dict(), str(sdir / "params.safetensors"))
        for f in ("checkpoint.safetensors", "checkpoint_state.pt"):
            (sdir / f).unlink(missing_ok=True)
        atomic_json(res_path, result)
        m = result["metrics"]
        log(f"accuracy {m['accuracy']:.4f} | balanced {m['balanced_accuracy']:.4f} | "
            f"macro-F1 {m['macro_f1']:.4f}" + (f" | HM {result['hm']:.4f}" if result["hm"] is not None else ""))
        return result

    def _evaluate(self, prep, backbone, method, engine, cache, classes, log, what, domain=None,
                  exclude_domain=None) -> dict:
        ds = prep.ds
        idx = ds.indices("test", classes, domain=domain)
        if exclude_domain is not None:
            idx = [i for i in idx if ds.records[i].domain != exclude_domain]
        if not idx:
            raise UserError(f"{ds.name}: no test images for {what}")
        cmap = {c: j for j, c in enumerate(classes)}
        split = self._split(prep, backbone, idx, cmap, cache, method.needs_images, f"{what} images")
        logits = engine.logits(method, split)
        names = [ds.classnames[c] for c in classes]
        m = classification_metrics(split.labels.numpy(), logits.numpy(), names)
        log(f"{what}: accuracy {m['accuracy']:.4f} on {m['n']} images")
        return {"metrics": m, "n_bad": split.n_bad}


def _small(info: dict) -> dict:
    """Keep train info JSON-friendly and short."""
    out = {}
    for k, v in info.items():
        if k == "history" and isinstance(v, list):
            out["loss_first"] = v[0]["loss"] if v else None
            out["loss_last"] = v[-1]["loss"] if v else None
            out["history"] = v
        elif isinstance(v, (int, float, str, bool, type(None), dict, list)):
            out[k] = v
    return out


def summarise(results: list[dict]) -> dict:
    """summary.json: the results.json keys with {mean, std, values} per metric."""
    def stat(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return None
        return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "values": vals}

    first = results[0]
    out = {k: first[k] for k in ("medadapt_version", "method", "backbone", "dataset", "shots",
                                 "fraction", "protocol")}
    out["seeds"] = [r["seed"] for r in results]
    out["metrics"] = {m: stat([r["metrics"].get(m) for r in results]) for m in CORE_METRICS}
    if "mean_domain_accuracy" in first["metrics"]:
        out["metrics"]["mean_domain_accuracy"] = stat([r["metrics"]["mean_domain_accuracy"]
                                                       for r in results])
    for k in ("base", "novel", "hm", "train_seconds", "n_trainable_params"):
        out[k] = stat([r.get(k) for r in results])
    return out


# ------------------------------------------------------------------------------------------------
def _seed_dirs(run: Path) -> list[Path]:
    if (run / "results.json").exists():
        return [run]
    dirs = sorted((d for d in run.glob("seed*") if (d / "results.json").exists()),
                  key=lambda d: (len(d.name), d.name))
    if not dirs:
        raise UserError(f"{run} is not a finished medadapt run (no results.json); finish it with "
                        "`medadapt fit ... --resume`")
    return dirs


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path.parent} is not a finished medadapt run (no {path.name}); "
                        "finish it with `medadapt fit ... --resume`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: {what} is not valid JSON ({e}); the run is damaged, re-run it") from None


def load_run(run: str | Path, seed_dir: Path | None = None, device: str = "auto"):
    """Rebuild the backbone and the trained method of a run folder; a missing, half-written or
    damaged file is a one-line ``UserError``."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run folder not found: {run}")
    if not (run / "config.yaml").exists():
        raise UserError(f"{run} is not a medadapt run folder (no config.yaml)")
    cfg = load_yaml(run / "config.yaml")
    for key in ("backbone", "method", "dataset"):
        if not cfg.get(key):
            raise UserError(f"{run}/config.yaml is damaged (no {key})")
    classes = _read_json(run / "classes.json", "classes.json")
    try:
        texts = ClassTexts(classes["classnames"], classes["templates"], classes["descriptions"])
    except (KeyError, TypeError):
        raise UserError(f"{run}/classes.json is damaged (missing classnames / templates)") from None
    sdir = seed_dir or _seed_dirs(run)[0]
    from medadapt.backbones import load_backbone
    backbone = load_backbone(cfg["backbone"], device=pick_device(device))
    cls = get_method(cfg["method"]["name"])
    res = _read_json(sdir / "results.json", "results.json")
    train_names = classes.get("train_classnames") or texts.classnames
    if "train_classnames" not in classes and res.get("protocol") == "base-to-novel":
        base, _ = base_novel_split(texts.classnames, cfg["data"].get("base"), cfg["data"].get("novel"))
        train_names = [texts.classnames[i] for i in base]
    set_seed(int(res.get("seed", 1)))
    method = cls(backbone, texts.for_classes(train_names), cfg["method"]).to(backbone.device)
    params = sdir / "params.safetensors"
    if not params.exists():
        raise UserError(f"{sdir} has no params.safetensors; the run is incomplete, re-run it")
    try:
        state = load_file(str(params))
        method.load_learned_state_dict(state)
    except Exception as e:  # SafetensorError (truncated), RuntimeError (shape mismatch) ...
        raise UserError(f"{params} is damaged or does not match the run's method "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "re-run it") from None
    method.eval()
    return cfg, texts, backbone, method, sdir


def evaluate_run(run: str | Path, dataset: str | None = None, progress: bool = True,
                 quiet: bool = False) -> dict:
    """Evaluate every seed of a run; ``metrics`` is the first seed's (backward compatible),
    ``seeds`` holds each seed's and ``summary`` the mean and std over seeds."""
    run = Path(run)
    if not (run / "config.yaml").exists():
        load_run(run)  # raises the one-line error
    dirs = _seed_dirs(run)
    try:
        wanted = load_yaml(run / "config.yaml").get("seeds") or []
    except UserError:
        wanted = []
    if len(wanted) > len(dirs):
        print(f"medadapt: warning: {run}: only {len(dirs)} of {len(wanted)} seeds are finished; "
              "evaluating those (finish the others with `medadapt fit ... --resume`)",
              file=sys.stderr)
    per = []
    memo: dict = {}
    for d in dirs:
        per.append(_evaluate_seed(run, d, dataset, progress, memo))
    out = dict(per[0])
    out["seeds"] = [{"seed": p["seed"], "seed_dir": p["seed_dir"], "metrics": p["metrics"]}
                    for p in per]
    if len(per) > 1:
        out["summary"] = {}
        for k in CORE_METRICS:
            vals = [p["metrics"].get(k) for p in per if p["metrics"].get(k) is not None]
            if vals:
                out["summary"][k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)),
                                     "values": vals}
    return out


def _evaluate_seed(run: Path, sdir: Path, dataset: str | None, progress: bool, memo: dict) -> dict:
    cfg, texts, backbone, method, sdir = load_run(run, sdir)
    seed = _read_json(sdir / "results.json", "results.json").get("seed")
    spec = dataset or cfg["dataset"]
    if spec not in memo:
        memo[spec] = load_dataset(spec, **(dataset_options(cfg) if not dataset else {}))
    ds = memo[spec]
    names = method.texts.classnames
    lower = {c.lower(): i for i, c in enumerate(ds.classnames)}
    trained = {n.lower(): j for j, n in enumerate(names)}
    if all(n.lower() in lower for n in names):
        classes = [lower[n.lower()] for n in names]
        cmap = {c: j for j, c in enumerate(classes)}
        metric_names = [ds.classnames[c] for c in classes]
    elif all(c.lower() in trained for c in ds.classnames):
        # an external test set with some of the trained classes: the model still chooses among
        # all of its classes; the metrics cover the classes present
        classes = list(range(ds.num_classes))
        cmap = {c: trained[ds.classnames[c].lower()] for c in classes}
        metric_names = list(names)
        print(f"medadapt: note: {spec} has {ds.num_classes} of the run's {len(names)} classes; "
              "predictions still range over all of them", file=sys.stderr)
    else:  # another data set's classes: methods that can take new class names switch to them
        if not method.supports_novel:
            unknown = [c for c in ds.classnames if c.lower() not in trained]
            raise UserError(f"{method.name} cannot evaluate on classes it was not trained on "
                            f"({', '.join(unknown[:6])}{' ...' if len(unknown) > 6 else ''}; "
                            f"trained: {', '.join(names)})")
        method.set_classes(class_texts_for(cfg, ds, ds.classnames, method.needs_descriptions))
        classes = list(range(ds.num_classes))
        cmap = {c: j for j, c in enumerate(classes)}
        metric_names = list(ds.classnames)
    idx = ds.indices("test", classes)
    if not idx:
        raise UserError(f"{spec}: no test images to evaluate on")
    cache = FeatureCache(enabled=cfg["data"]["cache"], precision=cfg["data"].get("precision", "auto"))
    eng = Engine(cfg["train"], device=str(backbone.device), progress=progress)
    if method.needs_images:
        split = Split(ds, idx, torch.tensor([cmap[ds.records[i].label] for i in idx]))
    else:
        feats, bad = cache.encode(backbone, ds, idx, progress=progress, skip_bad=cfg["data"]["skip_bad"])
        idx = [i for i in idx if i not in set(bad)]
        split = Split(ds, idx, torch.tensor([cmap[ds.records[i].label] for i in idx]), feats)
    logits = eng.logits(method, split)
    m = classification_metrics(split.labels.numpy(), logits.numpy(), metric_names)
    return {"run": str(run), "seed_dir": str(sdir), "seed": seed,
            "dataset": dataset or cfg["dataset"], "metrics": m}


def predict_inputs(inputs: list[str]) -> list[Path]:
    """Image files from files and folders; hidden files and folders (``.name``) are skipped, as
    ``folder:`` data sets skip them."""
    from medadapt.data.sources import IMAGE_EXTS, visible_images
    files: list[Path] = []
    for s in inputs:
        p = Path(s)
        if not p.exists():
            raise UserError(f"image or folder not found: {p}")
        if p.is_dir():
            files += visible_images(p)
        else:
            files.append(p)
    if not files:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) found in the given inputs")
    return files


PREDICTIONS_HEADER = "path,prediction,"


def check_replaceable_predictions(out: Path, inputs: list[Path]) -> None:
    """``predict --out`` replaces an existing file only when it is an earlier predictions CSV:
    never one of the input images, never the user's own spreadsheet."""
    o = out.resolve()
    if any(o == f.resolve() for f in inputs):
        raise UserError(f"--out {out} is one of the input images; give a CSV file name")
    try:
        with open(out, "rb") as fh:
            head = fh.read(len(PREDICTIONS_HEADER))
    except OSError as e:
        raise UserError(f"--out {out}: cannot read the existing file ({e.strerror or e})") from None
    if head != PREDICTIONS_HEADER.encode():
        raise UserError(f"--out {out} exists and is not a medadapt predictions CSV; it is left "
                        "alone: choose another --out (or delete it first)")


def _seed_of(sdir: Path) -> int | None:
    try:
        return int(_read_json(sdir / "results.json", "results.json").get("seed"))
    except (TypeError, ValueError, AttributeError):
        return None


def predict_seed_dirs(run: str | Path, seed: int | None = None) -> list[Path]:
    """The seed folders ``predict`` uses: every finished seed, or the one ``seed`` names."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run folder not found: {run}")
    if not (run / "config.yaml").exists():
        raise UserError(f"{run} is not a medadapt run folder (no config.yaml)")
    dirs = _seed_dirs(run)
    if seed is None:
        return dirs
    have = {_seed_of(d): d for d in dirs}
    if seed not in have:
        raise UserError(f"--seed {seed}: {run} has no finished seed {seed} (finished: "
                        f"{', '.join(str(s) for s in have if s is not None) or 'none'})")
    return [have[seed]]


def _predict_pass(method, backbone, files, batch_size, skip_bad, progress, desc, skip=()):
    """One model over ``files`` in batches: yields (chunk, {file: probs}, {file: extras},
    {file: error})."""
    from medadapt.data.dataset import open_rgb
    for s in tqdm(range(0, len(files), batch_size), disable=not progress, desc=desc):
        chunk = files[s:s + batch_size]
        ok, imgs, errors = [], [], {}
        for f in chunk:
            if f in skip:
                continue
            try:
                imgs.append(backbone.preprocess(open_rgb(str(f))))
                ok.append(f)
            except UserError as e:
                if not skip_bad:
                    raise
                errors[f] = str(e)
        probs, extras = {}, {}
        if imgs:
            xs = torch.stack(imgs).to(backbone.device)
            del imgs
            if method.needs_images:
                batch = Batch(labels=torch.zeros(len(xs), dtype=torch.long), images=xs)
            else:
                batch = Batch(labels=torch.zeros(len(xs), dtype=torch.long),
                              features=backbone.encode_image(xs, normalize=False))
            pr = torch.softmax(method(batch).float(), dim=-1).cpu().numpy()
            ex = method.extra_predictions(batch).get("rows") or [{}] * len(xs)
            probs = dict(zip(ok, pr))
            extras = dict(zip(ok, ex))
        yield chunk, probs, extras, errors


def predict_paths(run: str | Path, inputs: list[str], out_csv: str | Path | None,
                  batch_size: int = 32, skip_bad: bool = False, progress: bool = False,
                  max_image_pixels: int | None = None, seed: int | None = None) -> Path:
    """Class probabilities per image -> CSV (path, predicted class, one column per class).

    A run with several seeds predicts with every seed's model and writes the mean of their
    probabilities (the prediction is its arg-max; method-specific extra columns come from the
    first seed), and says so on stderr; ``seed`` picks one seed's model instead.
    Images are decoded, encoded and scored one batch at a time, so memory stays flat in the number
    of inputs (one row of probabilities per image is kept). With ``skip_bad`` an unreadable image
    gets a row with an empty prediction and the reason in the ``error`` column; without it the
    first one ends the command and nothing is written. The CSV is written to a unique temporary
    file beside ``out`` and renamed into place only when complete; an existing file is replaced
    only then.
    """
    from medadapt.data.dataset import pixel_limit
    files = predict_inputs(inputs)
    out = Path(out_csv) if out_csv else Path(run) / "predictions.csv"
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a CSV file name")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: folder {out.parent} is not writable")
    if out.exists():
        check_replaceable_predictions(out, files)
    sdirs = predict_seed_dirs(run, seed)
    index = {f: j for j, f in enumerate(files)}
    total = None
    extras: dict = {}
    errors: dict = {}
    names = None
    limit = max_image_pixels
    with torch.no_grad():
        for k, sdir in enumerate(sdirs):
            cfg, texts, backbone, method, _ = load_run(run, sdir)
            if names is None:
                names = method.texts.classnames
                limit = limit or (cfg.get("data") or {}).get("max_image_pixels")
                total = np.zeros((len(files), len(names)), dtype=np.float64)
            with pixel_limit(limit):
                desc = "predict" if len(sdirs) == 1 else f"predict (seed {_seed_of(sdir)})"
                for chunk, probs, ex, errs in _predict_pass(method, backbone, files, batch_size,
                                                            skip_bad, progress, desc, errors):
                    for f, p in probs.items():
                        total[index[f]] += p
                    if k == 0:
                        extras.update({f: e for f, e in ex.items() if e})
                        errors.update(errs)
            del method, backbone
    total /= len(sdirs)
    extra_cols = sorted({c for e in extras.values() for c in e})
    header = ["path", "prediction"] + [f"p({n})" for n in names] + extra_cols
    if skip_bad:
        header.append("error")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for j, f in enumerate(files):
                if f in errors:
                    w.writerow([str(f), ""] + [""] * (len(names) + len(extra_cols)) + [errors[f]])
                    continue
                p, e = total[j], extras.get(f, {})
                row = [str(f), names[int(np.argmax(p))]] + [f"{v:.6f}" for v in p] + \
                    [e.get(c, "") for c in extra_cols]
                w.writerow(row + ([""] if skip_bad else []))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if len(sdirs) > 1:
        seeds = [_seed_of(d) for d in sdirs]
        print(f"medadapt: predicted with the models of all {len(sdirs)} seeds "
              f"({', '.join(map(str, seeds))}): the probabilities are their mean; pick one "
              "seed's model with --seed N", file=sys.stderr)
    if errors:
        print(f"medadapt: {len(errors)} unreadable image(s) skipped; see the 'error' column of {out}",
              file=sys.stderr)
    return out
