"""Run configuration: defaults <- method defaults <- ``--config FILE.yaml`` <- flags <- ``--set``.

The resolved config is a plain nested dict, written to the run folder as ``config.yaml``.
``--set a.b=value`` parses ``value`` as YAML (numbers, lists, null, booleans; ``2e-3`` is a float).

Every section has a schema (:func:`validate`): the top level and ``data`` / ``texts`` here,
``train`` = the engine's ``TRAIN_DEFAULTS`` (plus the chosen method's ``train_defaults``),
``method`` = the chosen method's ``defaults``. An unknown key is refused with a did-you-mean and a
value of the wrong type with the key and what is allowed, so a typo can never pass silently.
"""
from __future__ import annotations

import copy
import difflib
import math
import re
from pathlib import Path

import yaml

from medadapt.errors import UserError
from medadapt.safeio import bounded_loader, read_capped
from medadapt.safeio import short as _short

class _Loader(yaml.SafeLoader):
    """SafeLoader whose floats follow YAML 1.2: ``2e-3`` and ``1e5`` are numbers (YAML 1.1 wants
    a dot, ``2.0e-3``, and reads ``2e-3`` as a string)."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))
_Loader = bounded_loader(_Loader)  # no billion laughs: alias expansion and nesting are budgeted

DEFAULTS: dict = {
    "backbone": None,
    "dataset": None,
    "method": {"name": None},
    "shots": 16,
    "seeds": [1],
    "protocol": "few-shot",  # few-shot | base-to-novel | cross-domain
    "device": "auto",
    "data": {
        "skip_bad": False,  # skip and count unreadable images instead of failing
        "allow_fewer": False,  # allow classes with fewer than K training images
        "fraction": None,  # use a stratified fraction of the train split instead of K shots
        "base": None,  # explicit base classes for base-to-novel (default: first half)
        "novel": None,
        "train_domain": None,  # cross-domain: the domain to train on (default: the first)
        "batch_size": None,  # feature extraction batch size; null: by device (CPU 8, CUDA 128,
                             # medadapt.engine.features.DEFAULT_BATCH)
        "workers": 0,  # data loader workers for feature extraction
        "precision": "auto",  # feature extraction autocast: auto (fp16 on CUDA) | fp32 | fp16 | bf16
        # cached-feature methods train on V pre-encoded augmented views of each training image
        # (the backbone's train transform: random resized crop 0.08-1 + flip), one per epoch;
        # 0: train on the eval transform's features. See docs/methods.md ("Augmented views").
        "augment_views": 10,
        "cache": True,  # use the on-disk feature cache
        "max_image_pixels": None,  # Pillow's decompression-bomb limit (None: Pillow's ~89 Mpx)
        "split_file": None,  # a split file in the data set's own format (e.g. BiomedCoOp's JSON)
        "options": None,  # other builder options of a registered data set (a mapping)
        # few-shot sampling (issue 22): medadapt's sampler or Dassl's generate_fewshot_dataset
        "sampler": "medadapt",  # medadapt | dassl
        "val_shots": None,  # validation images per class: null = K (medadapt), e.g. 4 = min(K, 4)
        "b2n_draw": "base",  # base-to-novel: base = draw base classes only; all = draw K over all
                             # classes, then keep the base ones (BiomedCoOp / Dassl subsample)
        "sample_seed": None,  # null: each run seed draws its own images; N: every seed trains on
                              # seed N's images (BiomedCoOp main.py methods), the +- is then over
                              # augmentation / initialisation only
        # train-time augmentation policy: RandomResizedCrop(scale=crop_scale) [+ flip]
        "crop_scale": [0.08, 1.0],
        "flip": True,
        "fresh_views": False,  # cached-feature methods: a fresh augmented view per epoch (exact)
                               # instead of cycling augment_views cached views
    },
    "texts": {
        "template_set": None,  # default: the data set's (histopathology, cytology, ...)
        "templates": None,  # explicit list of templates with '{}'
        "descriptions": None,  # JSON file; default: the data set's shipped descriptions
    },
    "train": {},  # engine settings (see TRAIN_DEFAULTS below)
}


# Engine settings (config section ``train``, medadapt.engine.train.Engine); a method's
# ``train_defaults`` override them. Kept here, below the engine and the methods, so that both
# read one table.
TRAIN_DEFAULTS = {
    "optimizer": "sgd",  # sgd | adamw
    "lr": 0.002,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "epochs": 50,
    "batch_size": 32,
    "warmup_epochs": 1,
    "warmup": "constant",  # constant (CoOp: lr 1e-5 during warm-up) | linear
    "warmup_lr": 1e-5,
    "sched_unit": "epoch",  # epoch (Dassl: lr set once per epoch) | step (per optimiser step)
    "eps": 1e-8,  # AdamW eps (torch's default; Tip-Adapter-F's reference uses 1e-4)
    "grad_clip": 0.0,  # max gradient norm; 0 (default) disables: no reference trainer clips
    "backbone_mode": "eval",  # eval | train: the frozen backbone's module mode while training
    "drop_last": True,  # drop the last incomplete training batch when there is a full one (Dassl)
    "amp": True,  # mixed precision in the training loop (see amp_dtype; false: always fp32)
    "amp_dtype": "auto",  # auto (fp16 + grad scaling on CUDA, fp32 elsewhere) | fp16 | bf16
    "eval_every": 0,  # epochs between validation passes (0: only at the end)
    "checkpoint": True,  # save checkpoints during training (enables --resume)
    "checkpoint_every": 0,  # epochs between checkpoints; 0: about 20 per run
    "workers": 0,
}


def deep_update(base: dict, new: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (new or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def normalise(cfg: dict) -> dict:
    cfg = dict(cfg)
    if isinstance(cfg.get("method"), str):
        cfg["method"] = {"name": cfg["method"]}
    if isinstance(cfg.get("seeds"), int):
        cfg["seeds"] = [cfg["seeds"]]
    return cfg


def read_yaml_mapping(path: str | Path, what: str = "config file", allow_empty: bool = True) -> dict:
    """A YAML file that must hold a mapping; every problem is a one-line ``UserError``."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory, not a YAML file")
    try:
        raw = read_capped(p, what)
        if b"\x00" in raw:
            raise UnicodeDecodeError("utf-8", raw, 0, 1, "NUL byte")
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{what} {p} is not a text (UTF-8 YAML) file") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {p}: {e.strerror or e}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise UserError(f"{p}: invalid YAML ({_short(str(e).splitlines()[0], 160)})") from None
    except RecursionError:
        raise UserError(f"{p}: invalid YAML (nested too deeply)") from None
    if data is None and allow_empty:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: a {what} must be a YAML mapping")
    return data


def load_yaml(path: str | Path) -> dict:
    return normalise(read_yaml_mapping(path, "config file"))


def apply_sets(cfg: dict, sets: list[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    for s in sets or []:
        if "=" not in s:
            raise UserError(f"--set expects key=value, got {_short(s)}")
        key, raw = s.split("=", 1)
        try:
            value = yaml.load(raw, Loader=_Loader) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = cfg
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if isinstance(node.get(p), str) and p == "method":
                node[p] = {"name": node[p]}
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: {_short(p)} is not a section")
        node[parts[-1]] = value
    return normalise(cfg)


def parse_value(raw: str):
    """A ``--set`` value as YAML, where ``2e-3`` / ``1e5`` are floats (YAML 1.2), not strings."""
    try:
        return yaml.load(raw, Loader=_Loader) if raw != "" else None
    except yaml.YAMLError:
        return raw


# ------------------------------------------------------------------------------------------------
# schema
TOP_KEYS = {"backbone": (str,), "dataset": (str,), "method": (dict,), "shots": (int,),
            "seeds": (list,), "protocol": (str,), "device": (str,), "data": (dict,),
            "texts": (dict,), "train": (dict,), "classnames": (list,),
            "recipe": (str,)}  # recipe: the published suite a run belongs to (medadapt.recipes)
PROTOCOLS = ("few-shot", "base-to-novel", "cross-domain")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# keys whose value must be a positive number (> 0) / a non-negative one
_POSITIVE = {"train.epochs", "train.batch_size", "data.batch_size", "train.lr", "data.val_shots",
             "data.max_image_pixels", "train.eps"}
# settings with a fixed set of values (checked here, so a method that never reaches the code that
# reads them, e.g. linear-probe and train.sched_unit, cannot accept a typo silently)
ENUMS = {"train.optimizer": ("sgd", "adamw"), "train.warmup": ("constant", "linear"),
         "train.sched_unit": ("epoch", "step"), "train.backbone_mode": ("eval", "train"),
         "data.precision": ("auto", "fp32", "fp16", "bf16"),
         "train.amp_dtype": ("auto", "fp16", "bf16"),
         "data.sampler": ("medadapt", "dassl"), "data.b2n_draw": ("base", "all"),
         "method.impl": ("paper", "biomedcoop")}
# data settings that only mean something under one protocol
_PROTOCOL_ONLY = {"base": "base-to-novel", "novel": "base-to-novel", "train_domain": "cross-domain"}
_NON_NEGATIVE = {"shots", "data.sample_seed", "data.workers", "train.workers", "train.warmup_epochs",
                 "train.weight_decay", "train.grad_clip", "train.eval_every",
                 "train.checkpoint_every", "data.augment_views", "train.warmup_lr",
                 "train.momentum"}
_DATA_TYPES = {"skip_bad": bool, "allow_fewer": bool, "fraction": float, "base": list,
               "novel": list, "train_domain": str, "batch_size": int, "workers": int,
               "precision": str, "augment_views": int, "cache": bool, "max_image_pixels": int,
               "split_file": str, "options": dict, "sampler": str, "val_shots": int,
               "b2n_draw": str, "sample_seed": int, "crop_scale": list, "flip": bool,
               "fresh_views": bool}
_TEXT_TYPES = {"template_set": str, "templates": list, "descriptions": str}


def _type_name(t) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(t, t.__name__)


def _check_type(key: str, value, want, nullable: bool) -> None:
    if value is None:
        if nullable:
            return
        raise UserError(f"{key} must be {_type_name(want)}, got null")
    ok = (isinstance(value, bool) if want is bool else
          isinstance(value, int) and not isinstance(value, bool) if want is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else
          isinstance(value, (list, tuple)) if want is list else
          isinstance(value, want))
    if not ok:
        raise UserError(f"{key} must be {_type_name(want)}, got {_short(value)}")


def _unknown(key: str, allowed, section: str) -> UserError:
    prefix, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.6)
    hint = f"; did you mean {_short((prefix + '.' if prefix else '') + close[0])}?" if close else ""
    valid = ", ".join(sorted(allowed)) or "none"
    return UserError(f"unknown setting {_short(key)}{hint} (valid {section} keys: {valid})")


# method settings whose number default may also be null (documented by the method)
NULLABLE_METHOD_KEYS = {"n_iters_per_shot"}


def _check_section(prefix: str, values: dict, schema: dict, section: str,
                   nullable_all: bool = False) -> None:
    for k, v in values.items():
        key = f"{prefix}.{k}"
        if k not in schema:
            raise _unknown(key, schema, section)
        want = schema[k]
        if want is None:  # default None: any value
            continue
        if isinstance(want, type):
            nullable = nullable_all
            if section == "method":  # null: for text / list settings, or where documented
                nullable = want in (str, list, dict) or k in NULLABLE_METHOD_KEYS
            _check_type(key, v, want, nullable=nullable)
        _check_range(key, v)


def _check_range(key: str, v) -> None:
    if key in ENUMS and v is not None and v not in ENUMS[key]:
        close = difflib.get_close_matches(str(v), ENUMS[key], n=1, cutoff=0.5)
        hint = f"; did you mean {_short(close[0])}?" if close else ""
        raise UserError(f"{key} must be one of {', '.join(ENUMS[key])}, got {_short(v)}{hint}")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return
    if not math.isfinite(v):
        raise UserError(f"{key} must be a finite number, got {_short(v)}")
    if key in _POSITIVE and not v > 0:
        raise UserError(f"{key} must be > 0, got {_short(v)}")
    if key in _NON_NEGATIVE and v < 0:
        raise UserError(f"{key} must be >= 0, got {_short(v)}")


_FLOAT_NAME = re.compile(r"alpha|beta|lambda|weight|scale|ratio|temp|tau")


def _schema_of(defaults: dict) -> dict:
    """Key -> expected type from a defaults dict (None: any; int defaults also accept ints only,
    float defaults accept any number)."""
    out = {}
    for k, v in defaults.items():
        numeric = isinstance(v, int) and _FLOAT_NAME.search(k)  # e.g. LoRA alpha = 1
        out[k] = (None if v is None else bool if isinstance(v, bool) else
                  float if isinstance(v, float) or numeric else int if isinstance(v, int) else
                  list if isinstance(v, (list, tuple)) else dict if isinstance(v, dict) else
                  str if isinstance(v, str) else None)
    return out


def check_top_level(cfg: dict) -> None:
    """Unknown top-level keys and sections that must be mappings (before defaults are merged)."""
    for k, v in cfg.items():
        if k not in TOP_KEYS:
            raise _unknown(k, TOP_KEYS, "top-level")
        if k in ("data", "texts", "train") and v is not None and not isinstance(v, dict):
            raise UserError(f"{k} must be a mapping of settings (e.g. --set {k}.KEY=VALUE), "
                            f"got {_short(v)}")
        if k == "method" and not isinstance(v, (dict, str)):
            raise UserError(f"method must be a method name or a mapping, got {_short(v)}")
        if k == "recipe" and v is not None and not isinstance(v, str):
            raise UserError(f"recipe must be a recipe name, got {_short(v)}")


def validate(cfg: dict, method_defaults: dict, train_schema: dict) -> None:
    """Check a resolved config against the schemas; raises a one-line ``UserError``."""
    check_top_level(cfg)
    for key in ("backbone", "dataset"):
        if not isinstance(cfg.get(key), str):
            raise UserError(f"{key} must be a string, got {_short(cfg.get(key))}")
    shots = cfg.get("shots")
    _check_type("shots", shots, int, nullable=False)
    _check_range("shots", shots)
    seeds = cfg.get("seeds")
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise UserError(f"seeds must be a non-empty list of integers, got {_short(seeds)}")
    for s in seeds:
        _check_type("seeds", s, int, nullable=False)
        if s < 0 or s >= 2**32:
            raise UserError(f"seeds must be integers >= 0 and < 2**32, got {_short(s)}")
    dup = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if dup:
        raise UserError(f"seeds must be distinct; {dup[0]} is given twice")
    if cfg.get("protocol") not in PROTOCOLS:
        raise UserError(f"unknown protocol {_short(cfg.get('protocol'))}; valid: {', '.join(PROTOCOLS)}")
    dev = cfg.get("device")
    if not isinstance(dev, str) or not _DEVICE_RE.match(dev):
        raise UserError(f"device must be auto, cpu, cuda, cuda:N or mps, got {_short(dev)}")
    _check_data(cfg.get("data") or {})
    for k, proto in _PROTOCOL_ONLY.items():
        if (cfg.get("data") or {}).get(k) is not None and cfg.get("protocol") != proto:
            raise UserError(f"data.{k} applies only to the {proto} protocol, but the protocol is "
                            f"{cfg.get('protocol')}" + (" (add --base-to-novel)"
                                                        if proto == "base-to-novel" else ""))
    _check_section("texts", cfg.get("texts") or {}, _TEXT_TYPES, "texts", nullable_all=True)
    _check_section("train", cfg.get("train") or {}, train_schema, "train")
    method = dict(cfg.get("method") or {})
    method.pop("name", None)
    _check_section("method", method, _schema_of(method_defaults), "method", nullable_all=True)


_DATA_NULLABLE = {"fraction", "base", "novel", "train_domain", "max_image_pixels", "split_file",
                  "options", "val_shots", "sample_seed", "batch_size"}


def _check_data(d: dict) -> None:
    for k, v in d.items():
        key = f"data.{k}"
        if k not in _DATA_TYPES:
            raise _unknown(key, _DATA_TYPES, "data")
        _check_type(key, v, _DATA_TYPES[k], nullable=k in _DATA_NULLABLE)
        _check_range(key, v)
    frac = d.get("fraction")
    if frac is not None and not 0 < frac <= 1:
        raise UserError(f"data.fraction must be in (0, 1], got {_short(frac)}")


def train_schema(train_defaults: dict, *extra: dict) -> dict:
    """The ``train`` section's schema: the engine's defaults (read at call time, so keys added to
    ``TRAIN_DEFAULTS`` are known at once) plus any method's ``train_defaults``."""
    merged = dict(train_defaults)
    for e in extra:
        for k, v in e.items():
            merged.setdefault(k, v)
    return _schema_of(merged)


def dump_yaml(cfg: dict, path: str | Path) -> None:
    from medadapt.safeio import write_text
    write_text(path, yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
