"""``medadapt recipes [NAME]`` (plugged in by medadapt.cli) and the recipe view of
``medadapt methods NAME --recipe R --dataset D``."""
from __future__ import annotations

import json

from medadapt.helpfmt import HelpFormatter as _Fmt

EPILOG = """a recipe is a published table as its authors ran it: data sets, grid, seeds, and per
(method, data set, protocol) the settings, prompts, few-shot sampler, validation rule and
augmentation, every value with its source (official file and line, or the paper's section).
Method defaults outside a recipe stay each method's own paper.

examples:
  medadapt recipes
  medadapt recipes biomedcoop-fewshot
  medadapt methods biomedcoop --recipe biomedcoop-fewshot --dataset DermaMNIST --shots 4
  medadapt bench --recipe biomedcoop-fewshot --data-root DATA
  medadapt report runs/biomedcoop-fewshot --compare biomedcoop-fewshot
"""


def _v(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _counts(r) -> tuple[int, int]:
    """(run folders, seed runs) of recipe ``r``."""
    runs = r.grid()
    return len(runs), sum(len(r.method_seeds(r.method(m))) for _, _, m, _ in runs)


def summary_line(r) -> str:
    runs, seeds = _counts(r)
    return (f"{r.name:32s} {r.title} [{len(r.datasets)} data sets, {len(r.methods)} methods, "
            f"{runs} runs, {seeds} seeds]")


def describe(name: str) -> str:
    from medadapt.recipes import load_recipe
    r = load_recipe(name)
    runs, seeds = _counts(r)
    lines = [f"{r.name}: {r.title}"]
    if r.data.get("paper"):
        lines.append(f"  paper:      {r.data['paper']}")
    if r.data.get("reference"):
        lines.append(f"  reference:  {r.data['reference']} (the sources' 'ref:')")
    lines += [f"  published:  {', '.join(r.published) or '-'} (report --compare TABLE)",
              f"  protocols:  {', '.join(r.protocols)}",
              f"  shots:      {_v(r.shots)}   source: {r.source_text(r.data['shots']['source'])}",
              f"  seeds:      {_v(r.seeds)}   source: {r.source_text(r.data['seeds']['source'])}",
              "  backbones:"]
    for b in r.backbones:
        lines.append(f"    {b['spec']}   source: {r.source_text(b['source'])}")
    lines.append("  data sets (label = the table's column, spec = medadapt's data set):")
    for d in r.datasets:
        lines.append(f"    {d['label']:14s} {d['spec']}")
    lines.append("  methods:")
    for m in r.methods:
        extra = []
        if m.protocols:
            extra.append(f"protocols {', '.join(m.protocols)}")
        if m.shots:
            extra.append(f"shots {_v(m.shots)}")
        if m.seeds:
            extra.append(f"seeds {_v(m.seeds)}")
        lines.append(f"    {m.name:14s} {'; '.join(extra)}"
                     + (f"   source: {r.source_text(m.source, m.name)}" if m.source else ""))
    lines.append(f"  grid: {runs} run folders, {seeds} seeds "
                 f"(each run's settings: medadapt methods METHOD --recipe {r.name} --dataset D)")
    ss = r.sample_seed_methods()
    if ss:
        lines.append("  note: " + ", ".join(sorted(ss)) + f" train every seed on seed "
                     f"{sorted(set(ss.values()))[0]}'s images (data.sample_seed): their +- is "
                     "over augmentation and initialisation only")
    if r.data.get("notes"):
        lines.append("  notes: " + " ".join(str(r.data["notes"]).split()))
    lines.append(f"  run: medadapt bench --recipe {r.name} --data-root DATA")
    return "\n".join(lines)


def format_recipe_method(method: str, recipe: str, dataset: str, shots: int | None,
                         protocol: str | None) -> str:
    """Every resolved value of one run of a recipe with where it comes from: the recipe's
    source, else the method's own default and its source."""
    from medadapt.engine.resolve import resolve
    from medadapt.methods import get_method
    from medadapt.methods._defaults_doc import RUN_KEYS, rows
    from medadapt.recipes import load_recipe
    from medadapt.errors import UserError
    r = load_recipe(recipe)
    m = r.method(method)
    d = r.dataset(dataset)
    protos = r.method_protocols(m)
    proto = protocol or protos[0]
    if proto not in protos:
        raise UserError(f"recipe {r.name} runs {method} under {', '.join(protos)}, not {proto}")
    ks = r.method_shots(m)
    k = ks[-1] if shots is None else shots
    if k not in ks:
        raise UserError(f"recipe {r.name} runs {method} at {_v(ks)} shots, not {k}")
    values = r.resolve(method, d["label"], proto, k)
    cfg = resolve(r.config(method, d["label"], proto, k))
    cls = get_method(method)
    defaults = {key: src for key, _, _, src in rows(cls, k, proto)}
    lines = [f"{method} in recipe {r.name} ({r.title}): data set {d['label']} ({d['spec']}), "
             f"{proto}, {k} shots, seeds {_v(cfg['seeds'])}, backbone {cfg['backbone']}", "",
             "set by the recipe:"]
    for key in sorted(values):
        lines.append(f"  {key} = {_v(values[key][0])}")
        lines.append(f"      source: {values[key][1]}")
    lines += ["", f"the method's own defaults (not set by the recipe; `medadapt methods {method}`):"]
    for section in ("method", "train", "data", "texts"):
        for key, val in (cfg.get(section) or {}).items():
            dotted = f"{section}.{key}"
            if dotted in values or dotted == "method.name" or (section == "train"
                                                                and key in RUN_KEYS):
                continue
            if section == "data" and dotted not in defaults and key not in (
                    "sampler", "val_shots", "b2n_draw", "sample_seed", "crop_scale", "flip",
                    "fresh_views", "augment_views"):
                continue
            if section == "texts" and val is None:
                continue
            lines.append(f"  {dotted} = {_v(val)}")
            lines.append(f"      source: {defaults.get(dotted, 'medadapt default')}")
    return "\n".join(lines)


def _cmd_recipes(args) -> int:
    from medadapt.recipes import available, load_recipe
    if args.name:
        print(describe(args.name))
        return 0
    for n in available():
        print(summary_line(load_recipe(n)))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "recipes", help="list the published suites (recipes) `medadapt bench --recipe` runs, or "
                        "show one recipe's grid",
        description="A recipe runs a published table as its authors ran it (settings, prompts, "
                    "few-shot sampler, validation rule, augmentation per method and data set, "
                    "each value with its source).", formatter_class=_Fmt, epilog=EPILOG)
    p.add_argument("name", nargs="?", default=None,
                   help="a recipe: show its grid, data sets, methods and sources (default: list "
                        "all, one line each)")
    p.set_defaults(func=_cmd_recipes)
