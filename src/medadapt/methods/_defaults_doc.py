"""Every method's defaults with their sources, from the method classes themselves (``defaults``,
``train_defaults``, ``data_defaults``, ``by_shots``, ``by_protocol``, ``sources``).

``medadapt methods NAME`` prints :func:`format_method`; ``docs/methods.md`` is
:func:`render_doc` (regenerate with ``python -m medadapt.methods._defaults_doc > docs/methods.md``;
a test checks that the file is up to date).
"""
from __future__ import annotations

import json

from medadapt.methods import METHODS, load_all
from medadapt.methods.base import Method

# engine settings about the run, not the method (resume, logging, workers): not listed per method
RUN_KEYS = {"amp", "amp_dtype", "eval_every", "checkpoint", "checkpoint_every", "workers"}
ENGINE_NOTE = "medadapt engine default (medadapt/config.py TRAIN_DEFAULTS)"
DATA_NOTE = "medadapt default (medadapt/config.py)"


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v)


def _variants(cls: type[Method]) -> dict[str, list[str]]:
    """"section.key" -> ["100 at 2-7 shots", "20 for base-to-novel", ...]."""
    out: dict[str, list[str]] = {}
    keys = sorted(cls.by_shots)
    for i, k in enumerate(keys):
        hi = keys[i + 1] - 1 if i + 1 < len(keys) else None
        span = f"{k} shot" if hi == k else (f"{k}-{hi} shots" if hi else f"{k}+ shots")
        for dotted, v in cls.by_shots[k].items():
            out.setdefault(dotted, []).append(f"{_fmt(v)} at {span}")
    for proto, over in cls.by_protocol.items():
        for dotted, v in over.items():
            out.setdefault(dotted, []).append(f"{_fmt(v)} for {proto}")
    return out


def rows(cls: type[Method], shots: int | None = 16, protocol: str = "few-shot") -> list[tuple]:
    """(key, value, other values, source) for every default of ``cls``."""
    d = cls.resolved_defaults(shots, protocol)
    own_train = set(cls.train_defaults) | {k.split(".", 1)[1] for o in
                                           [*cls.by_shots.values(), *cls.by_protocol.values()]
                                           for k in o if k.startswith("train.")}
    variants = _variants(cls)
    out = []
    for section in ("method", "train", "data"):
        for key, value in d[section].items():
            dotted = f"{section}.{key}"
            if section == "train" and key in RUN_KEYS:
                continue
            if section == "data" and key != "augment_views":
                continue
            src = cls.sources.get(dotted)
            if src is None:
                if section == "train" and key not in own_train:
                    src = ENGINE_NOTE
                elif section == "data" and key not in cls.data_defaults:
                    src = DATA_NOTE
                else:
                    src = "-"
            out.append((dotted, _fmt(value), "; ".join(variants.get(dotted, [])), src))
    return out


def format_method(name: str, shots: int | None = 16, protocol: str = "few-shot") -> str:
    load_all()
    cls = METHODS.get(name)
    lines = [f"{name}: {cls.paper}",
             f"resolved defaults for {protocol}, "
             f"{'all training data' if not shots else f'{shots} shots'} "
             "(override with --set section.key=value):", ""]
    for key, value, other, src in rows(cls, shots, protocol):
        lines.append(f"  {key} = {value}" + (f"   [{other}]" if other else ""))
        lines.append(f"      source: {src}")
    if cls.sources.get("deviations"):
        lines += ["", f"deviations: {cls.sources['deviations']}"]
    return "\n".join(lines)


HEADER = """# Method defaults and their sources

Generated from the method classes (`defaults`, `train_defaults`, `data_defaults`, `by_shots`,
`by_protocol`, `sources`) by `python -m medadapt.methods._defaults_doc > docs/methods.md`; a test
fails when this file is out of date. `medadapt methods NAME [--shots K] [--protocol P]` prints the
same table resolved for a shot count and protocol. Values are the few-shot defaults at 16 shots;
"other values" lists the shot- and protocol-dependent ones. Any key can be overridden with
`--set method.KEY=...`, `--set train.KEY=...`, `--set data.KEY=...`.

## Engine settings shared by every method

* `train.sched_unit: epoch` sets the learning rate once per epoch exactly as Dassl's
  `build_lr_scheduler` (CoOp's trainer and every method built on it): `W` warm-up epochs at
  `warmup_lr` (constant) or Dassl's linear ramp, then `lr/2 (1 + cos(pi (e - W) / epochs))` for
  epoch `e >= W`, i.e. `CosineAnnealingLR(T_max=epochs)` stepped after each epoch, so the last
  epoch's rate is not zero. `step` anneals per optimiser step to zero (Tip-Adapter-F, CLIP-LoRA).
* `train.grad_clip: 0`: no gradient clipping; no reference trainer clips.
* `train.eps`: AdamW's eps (torch default 1e-8; Tip-Adapter-F's reference uses 1e-4).
* `train.backbone_mode`: `eval` keeps the frozen backbone in eval mode while training; `train`
  lets it follow `model.train()` (dropout on, e.g. BiomedCLIP's BERT), as the Dassl trainers of
  MaPLe, PromptSRC, CoPrompt and BiomedCoOp do by registering the whole model. CoOp, CoCoOp,
  KgCoOp and ProGrad register only the prompt learner, so CLIP stays in eval mode. Frozen targets
  (description features) are always computed in eval mode, as the references precompute them.
  Weights stay frozen in both modes.

## Augmented views (cached-feature methods)

The references draw a fresh random resized crop (area 0.08-1) and horizontal flip of every
training image in every epoch. Methods that never back-propagate into the image encoder (CoOp,
CoCoOp, KgCoOp, ProGrad, BiomedCoOp, PathoPrompt, CLIP-Adapter, Tip-Adapter(-F)) train instead on
a cache of `data.augment_views` = V = 10 views per image, encoded once with the backbone's train
transform and shared by every method and seed on the same backbone and data. In each epoch every
image uses one view: each image walks through its own random permutation of its V views (a new
permutation every V epochs), seeded by the run's seed and the epoch, so runs are reproducible and
no view repeats within V epochs. V = 10 is Tip-Adapter's released `augment_epoch`; it costs
V image encodings per training image, at most 1/5 of the pixel path's for the released schedules
of these methods (50-200 epochs; CoCoOp's 10 epochs break even, its cost is the per-image text
encoding). Measured (`benchmarks/results/cached_views.md`, CoOp, 16 shots, 200 epochs): accuracy
+0.26 points against re-encoding a fresh crop every step (seed std 0.96, synth-crc, 3 seeds);
6.2x faster on a ViT-B/16 including encoding the views, 8.7x once they are cached.
`data.augment_views: 0` trains on the un-augmented features. Zero-shot, linear probe and SCALE
default to 0 (their papers use no augmentation).
"""


def render_doc() -> str:
    load_all()
    parts = [HEADER]
    for name in sorted(METHODS.names()):
        cls = METHODS.get(name)
        parts.append(f"\n## {name}\n\n{cls.paper}\n")
        parts.append("| key | value | other values | source |\n| --- | --- | --- | --- |")
        for key, value, other, src in rows(cls):
            cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            parts.append(f"| `{key}` | {cell(value)} | {cell(other)} | {cell(src)} |")
        dev = [f"`{k}`: {v}" for k, v in cls.sources.items() if k != "deviations" and "deviation" in v]
        if cls.sources.get("deviations"):
            dev.append(cls.sources["deviations"])
        parts.append("\nDeviations: " + ("; ".join(dev) if dev else "none recorded") + ".")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render_doc(), end="")
