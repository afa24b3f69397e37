"""Published benchmark suites as data: a *recipe* is how a paper's authors ran its table.

A method's defaults are its own paper's (``medadapt fit``); a published table was run with the
authors' own configs, per data set, with their prompts, few-shot sampler, validation size and
augmentation. A recipe (``medadapt/recipes/<name>.yaml``) holds all of that, every value with its
source (official file and line at a pinned commit, or the paper's section), and applies only
inside the recipe::

    name: biomedcoop-fewshot
    extends: OTHER                  # optional: start from another recipe (settings are appended)
    title / paper / paper_text / notes
    reference: HealthX-Lab/BiomedCoOp@7ceb5a8   # "ref:PATH:Ln" sources read "<reference> PATH:Ln"
    trainer_dirs: {coop: CoOp}      # "<METHOD>" in a source; "<method>" is the method's name,
                                    # "<file>" the data set's ``file``
    published: [biomedcoop-fewshot] # tables of medadapt/report/published this recipe reproduces
    out: runs/biomedcoop-fewshot
    protocols: [few-shot]
    shots: {value: [1, 2, 4, 8, 16], source: "..."}
    seeds: {value: [1, 2, 3], source: "..."}
    backbones: [{spec: biomedclip, source: "..."}]
    datasets: [{label: BTMRI, spec: btmri, file: btmri}, ...]
    methods: [coop, {name: zero-shot, shots: [16], seeds: [1], protocols: [...], source: "..."}]
    settings:                       # applied in order, the last one that sets a key wins
      - when: {methods: [coop], datasets: [...], protocols: [...], shots: [...]}   # all optional
        set: {train.epochs: {value: 100, source: "ref:configs/trainers/CoOp/vit_b16.yaml:L18"}}
      - when: {methods: [kgcoop]}
        per_dataset:                # one row per data set of the recipe (a missing one is an error)
          keys: {method.lambda: "ref:configs/trainers/KgCoOp/few_shot/<file>.yaml:L34 W"}
          values: {BTMRI: [2.0], ...}

A run of a recipe is an ordinary run folder whose ``config.yaml`` carries ``recipe: NAME``;
:meth:`Recipe.off_recipe` recomputes what the recipe resolves to and names every key where a run
differs, so ``report --compare`` never puts an off-recipe number silently beside a published one.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from medadapt.config import PROTOCOLS
from medadapt.errors import UserError

RECIPE_KEYS = {"name", "extends", "title", "paper", "paper_text", "reference", "trainer_dirs",
               "published", "out", "protocols", "shots", "seeds", "backbones", "datasets",
               "methods", "settings", "notes"}
WHEN_KEYS = {"methods", "datasets", "protocols", "shots"}
SECTIONS = ("method", "train", "data", "texts")
# the reference's trainer folder per method name ("<METHOD>" in a source)
DEFAULT_TRAINER_DIRS = {"coop": "CoOp", "cocoop": "CoCoOp", "kgcoop": "KgCoOp",
                        "prograd": "ProGrad", "biomedcoop": "BiomedCoOp",
                        "clip-adapter": "ClipAdapter", "tip-adapter": "TipAdapter",
                        "tip-adapter-f": "TipAdapter", "linear-probe": "LP", "lp++": "LP2",
                        "zero-shot": "Zeroshot"}


def recipes_dir() -> Path:
    return Path(str(resources.files("medadapt.recipes")))


def available() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml") if not p.stem.startswith("_"))


@dataclass
class MethodEntry:
    name: str
    shots: list[int] | None = None
    seeds: list[int] | None = None
    protocols: list[str] | None = None
    source: str = ""


@dataclass
class Recipe:
    name: str
    data: dict
    path: Path
    methods: list[MethodEntry] = field(default_factory=list)

    # --- axes -----------------------------------------------------------------------------------
    @property
    def title(self) -> str:
        return self.data.get("title") or self.name

    @property
    def protocols(self) -> list[str]:
        return list(self.data["protocols"])

    @property
    def shots(self) -> list[int]:
        return list(self.data["shots"]["value"])

    @property
    def seeds(self) -> list[int]:
        return list(self.data["seeds"]["value"])

    @property
    def backbones(self) -> list[dict]:
        return list(self.data["backbones"])

    @property
    def datasets(self) -> list[dict]:
        return list(self.data["datasets"])

    @property
    def published(self) -> list[str]:
        return list(self.data.get("published") or [])

    def dataset(self, label: str) -> dict:
        for d in self.datasets:
            if d["label"] == label or d["spec"] == label:
                return d
        raise UserError(f"recipe {self.name} has no data set {label!r}; valid: "
                        f"{', '.join(d['label'] for d in self.datasets)}")

    def method(self, name: str) -> MethodEntry:
        for m in self.methods:
            if m.name == name:
                return m
        raise UserError(f"recipe {self.name} has no method {name!r}; valid: "
                        f"{', '.join(m.name for m in self.methods)}")

    def method_protocols(self, m: MethodEntry) -> list[str]:
        return [p for p in self.protocols if not m.protocols or p in m.protocols]

    def method_shots(self, m: MethodEntry) -> list[int]:
        return list(m.shots or self.shots)

    def method_seeds(self, m: MethodEntry) -> list[int]:
        return list(m.seeds or self.seeds)

    def grid(self) -> list[tuple[str, str, str, int]]:
        """Every (data set label, protocol, method, K) of the recipe, in run order."""
        out = []
        for d in self.datasets:
            for p in self.protocols:
                for m in self.methods:
                    if p not in self.method_protocols(m):
                        continue
                    for k in self.method_shots(m):
                        out.append((d["label"], p, m.name, int(k)))
        return out

    # --- sources --------------------------------------------------------------------------------
    def source_text(self, src: str, method: str | None = None, dataset: dict | None = None) -> str:
        s = str(src)
        ref = self.data.get("reference")
        if ref:
            s = s.replace("ref:", f"{ref} ")
        if self.data.get("paper"):
            text = self.data.get("paper_text")
            s = s.replace("paper:", f"{self.data['paper']}" + (f" ({text})" if text else "") + ":")
        if dataset is not None:
            s = s.replace("<file>", str(dataset.get("file") or dataset["label"]))
        if method is not None:
            dirs = {**DEFAULT_TRAINER_DIRS, **(self.data.get("trainer_dirs") or {})}
            s = s.replace("<METHOD>", dirs.get(method, method)).replace("<method>", method)
        return s

    # --- resolution -----------------------------------------------------------------------------
    def resolve(self, method: str, dataset: str, protocol: str, shots: int | None = None
                ) -> dict[str, tuple[Any, str]]:
        """``{"section.key": (value, source)}``: what the recipe sets for one run (keys it does
        not set keep the method's own defaults)."""
        m = self.method(method)
        d = self.dataset(dataset)
        if protocol not in self.method_protocols(m):
            raise UserError(f"recipe {self.name} runs {method} under "
                            f"{', '.join(self.method_protocols(m))}, not {protocol}")
        k = self.method_shots(m)[-1] if shots is None else int(shots)
        out: dict[str, tuple[Any, str]] = {}
        for layer in self.data.get("settings") or []:
            w = layer.get("when") or {}
            if (w.get("methods") and method not in w["methods"]
                    or w.get("datasets") and d["label"] not in w["datasets"]
                    or w.get("protocols") and protocol not in w["protocols"]
                    or w.get("shots") and k not in w["shots"]):
                continue
            for key, spec in (layer.get("set") or {}).items():
                out[key] = (copy.deepcopy(spec["value"]), self.source_text(spec["source"], method, d))
            pd = layer.get("per_dataset")
            if pd:
                row = pd["values"][d["label"]]
                for (key, src), v in zip(pd["keys"].items(), row):
                    out[key] = (copy.deepcopy(v), self.source_text(src, method, d))
        return out

    def config(self, method: str, dataset: str, protocol: str, shots: int,
               backbone: str | None = None) -> dict:
        """The (unresolved) run config of one run of the recipe, as ``medadapt fit`` takes it."""
        from medadapt.engine.grid import apply_overrides
        m = self.method(method)
        d = self.dataset(dataset)
        cfg = {"recipe": self.name, "backbone": backbone or self.backbones[0]["spec"],
               "dataset": d["spec"], "protocol": protocol, "shots": int(shots),
               "seeds": self.method_seeds(m), "method": {"name": method},
               "data": {"fraction": None}}
        values = self.resolve(method, d["label"], protocol, shots)
        return apply_overrides(cfg, {k: v for k, (v, _) in values.items()})

    def runs(self, sets: list[str] | None = None, backbone: str | None = None) -> list:
        """Every run of the recipe as a bench :class:`~medadapt.engine.grid.RunSpec`."""
        from medadapt.config import apply_sets
        from medadapt.engine.grid import RunSpec, backbone_label
        specs = [backbone] if backbone else [b["spec"] for b in self.backbones]
        out = []
        for bb in specs:
            for ds, proto, meth, k in self.grid():
                cfg = apply_sets(self.config(meth, ds, proto, k, backbone=bb), sets or [])
                rid = "/".join([backbone_label(bb), ds, proto, meth, f"{k}shot"])
                out.append(RunSpec(rid, cfg, backbone_label(bb), ds, meth, meth, proto, k, None,
                                   list(cfg["seeds"])))
        return out

    def off_recipe(self, stored: dict, dataset: str, method: str | None = None) -> list[str]:
        """Keys where a run's resolved ``config.yaml`` differs from what this recipe resolves to
        for the same data set, protocol, method and K ([] = on the recipe). The backbone is not
        compared here (``report --compare`` reports it on its own)."""
        from medadapt.engine.resolve import resolve
        from medadapt.engine.grid import config_diff
        name = method or (stored.get("method") or {}).get("name")
        proto = stored.get("protocol", "few-shot")
        if stored.get("recipe") != self.name:
            why = stored.get("recipe")
            return [f"recipe ({why} instead of {self.name})" if why else "not run from a recipe"]
        try:
            m = self.method(name)
            self.dataset(dataset)
        except UserError as e:
            return [str(e)]
        if proto not in self.method_protocols(m):
            return [f"protocol {proto} is not in the recipe for {name}"]
        if stored.get("shots") not in self.method_shots(m):
            return [f"shots {stored.get('shots')} is not in the recipe for {name}"]
        try:
            want = resolve(self.config(name, dataset, proto, int(stored["shots"]),
                                       backbone=stored.get("backbone")))
        except UserError as e:
            return [f"the recipe does not resolve here: {e}"]
        diff = [k for k in config_diff(stored, want)
                if k != "backbone" and not k.startswith("seeds")]  # seeds: said below
        if list(stored.get("seeds") or []) != self.method_seeds(m):
            diff.append(f"seeds ({stored.get('seeds')} instead of {self.method_seeds(m)})")
        return diff

    def sample_seed_methods(self) -> dict[str, int]:
        """Methods whose seeds all train on one seed's images (``data.sample_seed``)."""
        out = {}
        for ds, proto, meth, k in self.grid():
            v = self.resolve(meth, ds, proto, k).get("data.sample_seed")
            if v is not None and v[0] is not None:
                out[meth] = v[0]
        return out


# ------------------------------------------------------------------------------------------------
# loading
def _read(path: Path) -> dict:
    from medadapt.config import read_yaml_mapping  # bounded: a recipe file may come from anyone
    data = read_yaml_mapping(path, "recipe", allow_empty=False)
    bad = set(data) - RECIPE_KEYS
    if bad:
        raise UserError(f"{path}: unknown recipe keys {sorted(bad)}; valid: {sorted(RECIPE_KEYS)}")
    return data


def _path_of(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise UserError(f"recipe file not found: {p}")
        return p
    here = recipes_dir() / f"{name_or_path}.yaml"
    if not here.exists():
        import difflib
        close = difflib.get_close_matches(str(name_or_path), available(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown recipe {str(name_or_path)!r}{hint}; valid: "
                        f"{', '.join(available())} (`medadapt recipes` lists them)")
    return here


def _merged(path: Path, seen: tuple = ()) -> dict:
    data = _read(path)
    parent = data.get("extends")
    if not parent:
        return data
    if parent in seen:
        raise UserError(f"{path}: recipe extends itself ({' -> '.join([*seen, parent])})")
    base = _merged(_path_of(parent), (*seen, data.get("name", path.stem)))
    out = {k: v for k, v in base.items() if k != "extends"}
    for k, v in data.items():
        if k == "settings":
            out["settings"] = list(base.get("settings") or []) + list(v or [])
        elif k != "extends":
            out[k] = v
    return out


def _check(data: dict, path: Path) -> list[MethodEntry]:
    def need(cond, msg):
        if not cond:
            raise UserError(f"{path}: {msg}")

    for k in ("name", "protocols", "shots", "seeds", "backbones", "datasets", "methods"):
        need(data.get(k), f"needs '{k}'")
    for p in data["protocols"]:
        need(p in PROTOCOLS, f"unknown protocol {p!r}; valid: {', '.join(PROTOCOLS)}")
    for k in ("shots", "seeds"):
        v = data[k]
        need(isinstance(v, dict) and isinstance(v.get("value"), list) and v.get("source"),
             f"'{k}' is {{value: [...], source: ...}}")
    for b in data["backbones"]:
        need(isinstance(b, dict) and b.get("spec") and b.get("source"),
             f"each backbone is {{spec, source}}, got {b!r}")
    labels = []
    for d in data["datasets"]:
        need(isinstance(d, dict) and d.get("label") and d.get("spec"),
             f"each data set is {{label, spec[, file]}}, got {d!r}")
        labels.append(d["label"])
    need(len(set(labels)) == len(labels), "duplicate data set labels")
    methods = []
    for m in data["methods"]:
        if isinstance(m, str):
            m = {"name": m}
        need(isinstance(m, dict) and m.get("name")
             and not set(m) - {"name", "shots", "seeds", "protocols", "source"},
             f"each method is a name or {{name, shots, seeds, protocols, source}}, got {m!r}")
        methods.append(MethodEntry(m["name"], m.get("shots"), m.get("seeds"), m.get("protocols"),
                                   m.get("source", "")))
    names = [m.name for m in methods]
    need(len(set(names)) == len(names), "duplicate methods")
    for i, layer in enumerate(data.get("settings") or []):
        where = f"settings[{i}]"
        need(isinstance(layer, dict) and not set(layer) - {"when", "set", "per_dataset"},
             f"{where} is {{when, set | per_dataset}}")
        w = layer.get("when") or {}
        need(isinstance(w, dict) and not set(w) - WHEN_KEYS,
             f"{where}.when keys: {', '.join(sorted(WHEN_KEYS))}")
        for key, spec in (layer.get("set") or {}).items():
            need(str(key).split(".", 1)[0] in SECTIONS and "." in str(key),
                 f"{where}: {key!r} is not a section.key setting ({', '.join(SECTIONS)})")
            need(isinstance(spec, dict) and set(spec) == {"value", "source"} and spec["source"],
                 f"{where}: {key} is {{value, source}} with a source, got {spec!r}")
        pd = layer.get("per_dataset")
        if pd is not None:
            need(isinstance(pd, dict) and isinstance(pd.get("keys"), dict)
                 and isinstance(pd.get("values"), dict), f"{where}.per_dataset is {{keys, values}}")
            for key, src in pd["keys"].items():
                need(str(key).split(".", 1)[0] in SECTIONS and src,
                     f"{where}.per_dataset: {key!r} needs a section.key and a source")
            wanted = [x for x in labels if not w.get("datasets") or x in w["datasets"]]
            for x in wanted:
                row = pd["values"].get(x)
                need(isinstance(row, list) and len(row) == len(pd["keys"]),
                     f"{where}.per_dataset: data set {x} needs {len(pd['keys'])} value(s) "
                     f"({', '.join(pd['keys'])}), got {row!r}")
    return methods


@functools.lru_cache(maxsize=32)
def _load(path: str) -> Recipe:
    p = Path(path)
    data = _merged(p)
    methods = _check(data, p)
    return Recipe(data["name"], data, p, methods)


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name (``biomedcoop-fewshot``) or a recipe YAML file."""
    return copy.deepcopy(_load(str(_path_of(name_or_path).resolve())))


def for_table(table: str) -> list[str]:
    """Shipped recipes that reproduce the published table ``table``."""
    return [n for n in available() if table in load_recipe(n).published]
