"""fit: from a resolved config to a run folder (DESIGN.md contracts).

Run folder: ``config.yaml``, ``classes.json``, and per seed ``fewshot.json``, ``results.json``,
``params.safetensors``, ``log.txt`` (in ``seed<N>/`` when several seeds, plus ``summary.json``).
Every input is validated (data set, backbone, class texts, K shots for every seed) before the folder
is created; any failure after that (not only a user error) removes what this call created, so
nothing is half-written; ``--overwrite`` builds beside the old run and swaps on success, ``--resume``
refuses another config, and one process at a time holds a run folder (:mod:`medadapt.engine.rundir`,
docs/safety.md). An interrupted run (Ctrl-C, SIGKILL) is kept for ``--resume``.
Reading a finished run back: :mod:`medadapt.engine.evaluate`; predictions:
:mod:`medadapt.engine.predict`; resolving a config: :mod:`medadapt.engine.resolve`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import medadapt
from medadapt.config import dump_yaml, load_yaml
from medadapt.data.catalog import dataset_options
from medadapt.data.dataset import DataSet
from medadapt.data.fewshot import (base_novel_split, dassl_fewshot, dassl_task_order,
                                   fewshot_indices, fraction_subset, load_fewshot, sample_fewshot,
                                   save_fewshot)
from medadapt.data.sources import load_dataset
from medadapt.engine.features import FeatureCache
from medadapt.engine.resolve import class_texts_for, resolve
from medadapt.engine.rundir import (RunLog, atomic_json, check_not_data_folder, check_out_dir,
                                    config_diff, foreign_entries, is_run_folder, pick_device,
                                    run_lock, set_seed)
from medadapt.engine.train import Engine, Split
from medadapt.errors import UserError
from medadapt.methods import Method, get_method
from medadapt.metrics import CORE_METRICS, classification_metrics, harmonic_mean
from medadapt.safeio import make_dir, replacing


class Prepared:
    """Everything validated before a run folder is touched."""

    def __init__(self, cfg: dict, quiet: bool = False, dataset: DataSet | None = None):
        self.cfg = cfg
        self.quiet = quiet
        self.method_cls: type[Method] = get_method(cfg["method"]["name"])
        # an already-built data set (the Python API: in-memory images, or a DataSet loaded once)
        # or the config's spec
        self.ds = dataset if dataset is not None else load_dataset(cfg["dataset"],
                                                                   **dataset_options(cfg))
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
        sampler = d.get("sampler", "medadapt")
        # data.sample_seed: every run seed trains on that seed's images (BiomedCoOp main.py: the
        # data set is built once with cfg.SEED = 1, lines 181-190 @7ceb5a8); the run's own seed
        # still seeds initialisation and augmentation
        fixed = d.get("sample_seed")
        shots = int(cfg["shots"])
        allow = d["allow_fewer"] or not self.method_cls.uses_shots
        draws: dict[int, dict] = {}
        for seed in cfg["seeds"]:
            draw_seed = seed if fixed is None else int(fixed)
            if d.get("fraction"):
                fs = fraction_subset(self.ds, float(d["fraction"]), draw_seed)
            elif sampler == "dassl":
                if draw_seed not in draws:
                    draws[draw_seed] = dassl_fewshot(
                        self.ds, shots, draw_seed, self.train_classes, allow_fewer=allow,
                        domain=self.train_domain, val_shots=d.get("val_shots"),
                        draw_all=self.protocol == "base-to-novel" and d.get("b2n_draw") == "all")
                fs = draws[draw_seed]
                if fixed is not None:  # main.py re-draws K of K per task: same images, new order
                    fs = dassl_task_order(fs, seed, shots)
            else:
                fs = sample_fewshot(self.ds, shots, draw_seed, self.train_classes,
                                    allow_fewer=allow, ok=ok, domain=self.train_domain,
                                    val_shots=d.get("val_shots"))
            if fixed is not None:
                fs = dict(fs, seed=seed, sample_seed=draw_seed)
            self.fewshots[seed] = fs

    def _ok(self, i: int) -> bool:
        if i not in self._bad:
            try:
                self.ds.load_image(i)
                self._bad[i] = False
            except UserError:
                self._bad[i] = True
        return not self._bad[i]


class Runner:
    """``dataset``: a built :class:`DataSet` to train on instead of ``cfg["dataset"]`` (which then
    records its spec or name, e.g. ``memory:<fingerprint>``); ``log``: experiment trackers
    (:mod:`medadapt.engine.trackers`), one tracker run per seed named ``log_name`` (default: the
    run folder's name)."""

    def __init__(self, cfg: dict, out: str | Path, overwrite: bool = False, resume: bool = False,
                 quiet: bool = False, progress: bool = True, dataset: DataSet | None = None,
                 log=None, log_name: str | None = None):
        from medadapt.engine.trackers import check_names
        self.dataset = dataset
        if dataset is not None:
            if not isinstance(dataset, DataSet):
                raise UserError(f"dataset must be a medadapt DataSet (medadapt.load_dataset), "
                                f"got {type(dataset).__name__}")
            cfg = dict(cfg, dataset=dataset.meta.get("spec") or dataset.name)
        self.cfg = resolve(cfg)
        self.log = check_names(log)
        self.log_name = log_name
        self._tracker = None
        # absolute and normalised: `--out .` or `--out runs/..` still have a name and a parent
        # (the lock file and the --overwrite swap live beside the run folder)
        self.out = Path(os.path.abspath(out))
        self.overwrite, self.resume, self.quiet, self.progress = overwrite, resume, quiet, progress

    def run(self) -> dict:
        out = self.out
        check_out_dir(out)
        if self.log:
            from medadapt.engine.trackers import check_available
            check_available(self.log)
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
        prep = Prepared(self.cfg, self.quiet, dataset=self.dataset)
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
        from medadapt.backbones.transforms import set_train_policy
        set_train_policy(backbone, self.cfg["data"].get("crop_scale", [0.08, 1.0]),
                         self.cfg["data"].get("flip", True))
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
        dump_yaml(cfg, folder / "config.yaml")  # temp + swap, a link in the way refused
        atomic_json(folder / "classes.json", {"classnames": prep.texts.classnames,
                                              "train_classnames": [prep.ds.classnames[c] for c in
                                                                   prep.train_classes],
                                              "templates": prep.texts.templates,
                                              "descriptions": prep.texts.descriptions})
        seeds = self.cfg["seeds"]
        results = []
        for seed in seeds:
            sdir = folder / f"seed{seed}" if len(seeds) > 1 else folder
            if sdir != folder:
                make_dir(sdir)  # a seed folder planted as a link is refused
            try:
                results.append(self._run_seed(prep, backbone, seed, sdir))
            finally:
                self._close_tracker()
        if len(seeds) > 1:
            atomic_json(folder / "summary.json", summarise(results))
        return {"results": results, "out": str(out)}

    # --------------------------------------------------------------------------------------------
    def _split(self, prep: Prepared, backbone, idx: list[int], class_map: dict[int, int],
               cache: FeatureCache, needs_images: bool, desc: str, views: int = 0,
               fresh_seed: int | None = None) -> Split:
        """The items ``idx`` as a method sees them. Cached-feature methods get the eval-transform
        features, plus either ``views`` pre-encoded augmented views or, with ``fresh_seed``
        (``data.fresh_views``), fresh augmented passes encoded on demand (``Split.fresh``: pass
        ``k`` of run seed ``fresh_seed``, cached on disk and shared by every method that trains
        on the same images with the same policy and seed)."""
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
        if fresh_seed is not None and not needs_images:
            ready: dict[int, torch.Tensor] = {}  # passes encoded ahead (Split.prefetch)

            def fresh(k: int, _keep=keep) -> torch.Tensor:
                if int(k) in ready:
                    return ready.pop(int(k))
                return cache.encode(backbone, prep.ds, _keep, 0, d["batch_size"], d["workers"],
                                    False, self.progress, f"{desc} (pass {k})",
                                    fresh=(int(fresh_seed), int(k)))[0]

            def prefetch(ks, _keep=keep) -> None:
                ks = [int(k) for k in ks if int(k) not in ready]
                if ks:
                    ready.update(cache.encode_passes(backbone, prep.ds, _keep, int(fresh_seed), ks,
                                                     d["batch_size"], d["workers"], self.progress,
                                                     f"{desc} ({len(ks)} augmented passes)"))
            split.fresh = fresh
            split.prefetch = prefetch
            split.fresh_count = int(views)
        elif views and not needs_images:
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
        train_idx = fewshot_indices(ds, fs, "train")
        val_idx = fewshot_indices(ds, fs, "val")
        train = self._split(prep, backbone, train_idx, cmap, cache, cls.needs_images, "train images",
                            cfg["data"]["augment_views"],
                            fresh_seed=seed if cfg["data"].get("fresh_views") else None)
        val = self._split(prep, backbone, val_idx, cmap, cache, cls.needs_images, "val images")
        texts_train = prep.texts.for_classes([ds.classnames[c] for c in train_cls])
        set_seed(seed)
        method = cls(backbone, texts_train, cfg["method"]).to(backbone.device)
        engine = Engine(cfg["train"], device=str(backbone.device), run_dir=sdir,
                        progress=self.progress, log=log, seed=seed)
        engine.resume = self.resume
        engine.tracker = self._open_tracker(seed, sdir)
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
                  "val_accuracy": info.get("val_accuracy"), "train_info": _small(info),
                  # the few-shot draw: its sampler, and the seed whose images every run seed
                  # trains on (null: each seed its own; set: the +- over seeds measures
                  # initialisation and augmentation only, not the choice of images)
                  "sampler": cfg["data"].get("sampler", "medadapt"),
                  "sample_seed": fs.get("sample_seed")}
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
        if self._tracker is not None:
            self._tracker.log_final({**result["metrics"], **{k: result[k] for k in
                                                            ("base", "novel", "hm")
                                                            if result.get(k) is not None}})
        with replacing(sdir / "params.safetensors") as tmp:
            save_file(method.learned_state_dict(), tmp)
        for f in ("checkpoint.safetensors", "checkpoint_state.pt"):
            (sdir / f).unlink(missing_ok=True)
        atomic_json(res_path, result)
        m = result["metrics"]
        log(f"accuracy {m['accuracy']:.4f} | balanced {m['balanced_accuracy']:.4f} | "
            f"macro-F1 {m['macro_f1']:.4f}" + (f" | HM {result['hm']:.4f}" if result["hm"] is not None else ""))
        return result

    def _open_tracker(self, seed: int, sdir: Path):
        if not self.log:
            return None
        from medadapt.engine.trackers import make_tracker
        several = len(self.cfg["seeds"]) > 1
        run_dir = sdir.parent if several else sdir
        name = self.log_name or self.out.name
        self._tracker = make_tracker(self.log, run_dir, f"{name}/seed{seed}" if several else name,
                                     f"seed{seed}", config=dict(self.cfg, seed=seed))
        return self._tracker

    def _close_tracker(self) -> None:
        if self._tracker is not None:
            t, self._tracker = self._tracker, None
            t.close()

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
    out["sampler"] = first.get("sampler", "medadapt")
    out["sample_seed"] = first.get("sample_seed")  # set: every seed trained on these images
    out["metrics"] = {m: stat([r["metrics"].get(m) for r in results]) for m in CORE_METRICS}
    if "mean_domain_accuracy" in first["metrics"]:
        out["metrics"]["mean_domain_accuracy"] = stat([r["metrics"]["mean_domain_accuracy"]
                                                       for r in results])
    for k in ("base", "novel", "hm", "train_seconds", "n_trainable_params"):
        out[k] = stat([r.get(k) for r in results])
    return out
