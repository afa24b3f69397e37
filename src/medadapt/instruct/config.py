"""Configs as data: dataclasses filled from the packaged ``default.yaml``, a user YAML and
``--set key=value`` overrides (dotted keys reach nested sections, e.g. ``lora.r=16``).

The defaults are PathInsight's (Wu et al., Section 2.2): learning rate 1e-5, batch size 2,
warm-up ratio 0.05, 3 epochs, sequence length 2048, full fine-tuning with the vision tower
trainable. Where the paper is silent the choice is marked "(ours)" in ``default.yaml`` and in
``docs/instruct.md``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from medadapt.errors import UserError


@dataclass
class BuildConfig:
    sources: list[dict[str, Any]] = field(default_factory=list)
    name: str = "pathinsight"
    seed: int = 0
    split: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    dedup: bool = True
    max_chars: int = 8000
    min_answer_alnum: int = 1
    check_images: bool = True
    skip_bad: bool = False
    image_paths: str = "absolute"
    export: list[str] = field(default_factory=lambda: ["llamafactory", "swift"])
    clip_filter: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: Any = "all-linear"
    vision: bool = True
    modules_to_save: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    method: str = "full"
    freeze_vision: bool = False
    freeze_projector: bool = False
    freeze_llm: bool = False
    learning_rate: float = 1e-5
    projector_lr: float | None = None
    group_by_length: bool = False
    warmup_ratio: float = 0.05
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 2
    grad_accum: int = 1
    max_length: int = 2048
    truncation: str = "right"
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_strategy: str = "epoch"
    save_steps: int = 500
    save_total_limit: int = 2
    eval_val: bool = True
    skip_bad: bool = False
    precheck: bool = True
    num_workers: int = 0
    merge_lora: bool = False
    deepspeed: Any = None
    report_to: str = "none"
    qlora_bits: int = 4
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class EvalConfig:
    batch_size: int = 8
    max_new_tokens: int = 128
    limit: int = 0
    split: str = "test"
    fuzzy_cutoff: float = 0.8
    dtype: str = "auto"
    merge_lora: bool = True


SECTIONS = {"build": BuildConfig, "train": TrainConfig, "eval": EvalConfig}


def _default_yaml() -> dict[str, Any]:
    text = resources.files("medadapt.instruct").joinpath("default.yaml").read_text()
    return yaml.safe_load(text) or {}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise UserError(f"--set {dotted}: {k} is not a section")
    d[keys[-1]] = value


def _build(cls, data: dict[str, Any], where: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(names)}")
    kw = {}
    for k, v in data.items():
        if k == "lora" and isinstance(v, dict):
            v = _build(LoraConfig, v, f"{where}.lora")
        kw[k] = _coerce(v, str(names[k].type), f"{where}: {k}")
    return cls(**kw)


def _coerce(v: Any, typ: str, what: str) -> Any:
    """YAML reads ``1e-5`` as a string and ``no`` as False: give fields their declared type."""
    try:
        if typ in ("float", "float | None") and isinstance(v, (str, int)) and not isinstance(v, bool):
            return float(v)
        if typ == "int" and isinstance(v, (str, float)) and not isinstance(v, bool):
            if float(v) != int(float(v)):
                raise ValueError
            return int(float(v))
        if typ == "bool" and isinstance(v, str):
            if v.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError
            return v.lower() in ("true", "yes", "1")
        if typ == "str" and isinstance(v, bool):
            return "no" if v is False else "yes"
    except ValueError:
        raise UserError(f"{what}: expected {typ}, got {v!r}") from None
    return v


def load(section: str, path: str | Path | None = None, sets: list[str] | None = None,
         cli: dict[str, Any] | None = None, key: str | None = None):
    """Resolve one section (``build`` / ``train`` / ``eval``): defaults < YAML < CLI < --set.

    ``key`` reads the section's values from another top-level key of the YAML (e.g. ``stage1``
    of a two-stage config holds ``train`` values)."""
    data = dict(_default_yaml().get(section, {}))
    where = f"default.yaml:{section}"
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            from medadapt.safeio import load_yaml, read_capped
            user = load_yaml(read_capped(p, "config file").decode("utf-8", "replace")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            from medadapt.safeio import short
            raise UserError(f"{p}{line}: invalid YAML "
                            f"({short(str(getattr(e, 'problem', None) or e), 160)})") from None
        if not isinstance(user, dict):
            raise UserError(f"{p}: expected a mapping with sections build / train / eval")
        key = key or section
        if key not in user and key != section:
            raise UserError(f"{p}: no section {key!r} (has: {', '.join(map(str, user))})")
        if key in user:
            data = _merge(data, user[key] or {})
        where = str(p)
    for k, v in (cli or {}).items():
        if v is not None:
            _set(data, k, v)
    for s in sets or []:
        if "=" not in s:
            raise UserError(f"--set {s!r}: expected key=value")
        k, v = s.split("=", 1)
        try:
            from medadapt.safeio import load_yaml
            _set(data, k.strip(), load_yaml(v))
        except yaml.YAMLError:
            _set(data, k.strip(), v)
    return _build(SECTIONS[section], data, where)


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
