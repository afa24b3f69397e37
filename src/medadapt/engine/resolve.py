"""A user's settings -> the fully resolved run config, and the class texts it names.

Defaults (``medadapt.config.DEFAULTS``) <- the method's paper defaults (shot- and
protocol-dependent) <- the user's settings; then every section is validated against its schema.
"""
from __future__ import annotations

from medadapt.config import DEFAULTS, TRAIN_DEFAULTS, deep_update
from medadapt.data.dataset import DataSet
from medadapt.data.texts import ClassTexts, load_class_texts, shipped_descriptions
from medadapt.errors import UserError
from medadapt.methods import get_method


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
    if not cfg["seeds"]:
        raise UserError("give at least one seed")
    validate(cfg, cls.defaults, train_schema(TRAIN_DEFAULTS, cls.train_defaults))
    cfg["backbone"] = absolute_backbone(cfg["backbone"])
    from medadapt.engine.features import autocast_dtype
    autocast_dtype(cfg["data"].get("precision", "auto"), "cpu")  # validates the name
    return cfg


def split_backbone_prefix(spec: str) -> tuple[str, str]:
    """``("open_clip:local-dir:", "path")`` from ``open_clip:local-dir:path``: the loader prefixes
    of a backbone spec and the rest (a folder, a hub id or a name)."""
    prefix = ""
    for p in ("open_clip:", "hf:", "conch:", "pmc_clip:"):
        if spec.startswith(p):
            prefix, spec = p, spec[len(p):]
            break
    if spec.startswith("local-dir:"):
        prefix, spec = prefix + "local-dir:", spec[len("local-dir:"):]
    return prefix, spec


def absolute_backbone(spec: str) -> str:
    """A backbone folder given relative to the working directory, made absolute: the run folder's
    config.yaml then names it unambiguously (``eval`` reads relative paths in a run folder
    relative to that folder, never to the working directory)."""
    import os

    from medadapt.backbones import BACKBONES
    if spec in BACKBONES:
        return spec
    prefix, spec = split_backbone_prefix(spec)
    if spec and not os.path.isabs(spec) and not spec.startswith("~") and os.path.isdir(spec):
        return prefix + os.path.abspath(spec)
    return prefix + spec


def class_texts_for(cfg: dict, ds: DataSet, classnames: list[str], needs: bool) -> ClassTexts:
    t = cfg["texts"]
    desc = t.get("descriptions")
    if desc is None and ds.meta.get("descriptions"):
        shipped = shipped_descriptions(ds.meta["descriptions"])
        desc = str(shipped) if shipped.exists() else None
    return load_class_texts(classnames, t.get("template_set") or ds.meta.get("template_set",
                                                                          "histopathology"),
                            desc, t.get("templates"), require_descriptions=needs)
