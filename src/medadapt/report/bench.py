"""``medadapt bench GRID.yaml``: run an experiment grid through the engine, resumably.

A grid is the product backbones x data sets x protocols x methods x shots (or fractions); every
point is one run folder holding all its seeds (``seed<N>/``, ``summary.json``), written by the same
:class:`~medadapt.engine.runner.Runner` that ``medadapt fit`` uses::

    name: synth-fewshot                 # report title (optional)
    out: runs/synth-fewshot             # default output folder (--out overrides)
    backbones: [synthpath-clip]         # names / specs, or {spec: ..., label: ..., set: {...}}
    datasets: [synth-crc]               # specs, or {spec: ..., label: ..., set: {...},
                                        #            protocols: [...], shots: [...]}
    methods:                            # names, or {name: ..., label: ..., set: {...},
      - zero-shot                       #   shots: [...], protocols: [...], seeds: [...],
      - {name: zero-shot, mode: ensemble, label: zs-ensemble}   # other keys -> method config}
      - {name: coop, set: {train.epochs: 20}}
    shots: [1, 2, 4, 8, 16]             # or fractions: [0.05, 0.1] (data.fraction; SCALE)
    seeds: [1, 2, 3]
    protocols: [few-shot]               # few-shot | base-to-novel | cross-domain
    set: {data.batch_size: 128}         # shared overrides (dotted keys or nested mappings)

Config precedence (later wins): medadapt defaults <- method paper defaults <- grid ``set`` <-
backbone ``set`` <- data set ``set`` <- method ``set`` and method keys <- the grid axes <- ``--set``.

Folder of a run: ``OUT/<backbone>/<dataset>/<protocol>/<method label>/<K>shot`` (``frac<F>``).
Relative ``folder:`` / ``csv:`` / ``npz:`` paths (and ``name:ROOT`` roots) are taken relative to
the grid file when they exist there, else relative to the working directory.

Resuming: a run whose folder holds results for every seed is skipped without loading anything; a
partial one is finished with ``Runner(resume=True)`` (finished seeds kept, an interrupted seed
continues from its last epoch checkpoint). A folder whose ``config.yaml`` differs from what the
grid now asks for is not touched (recorded as ``changed``) unless ``--rerun-changed``.

Bookkeeping in ``OUT``: ``bench_index.json`` (every run of the grid with its status: done / failed /
changed / interrupted / pending), ``bench_failures.json`` (error and traceback of each failed run),
``grid.yaml`` (the grid as run), ``.bench/status/`` (one status file per run, so several processes
can share a grid), and ``bench.json`` inside each finished run folder (the labels the report uses).

Speed: all runs share the on-disk feature cache (frozen encoders never see an image twice) and,
within a process, the loaded backbone (loaded and fingerprinted once per backbone, then deep-copied
per run so that no method can leak changes into the next). Several processes or GPUs split a grid
with ``--shard I/N``, or automatically under ``accelerate launch`` / ``torchrun`` (``RANK`` /
``WORLD_SIZE``, one GPU per ``LOCAL_RANK``); see docs/scaling.md.
"""
from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from medadapt.config import apply_sets, read_yaml_mapping
from medadapt.engine.grid import (RunSpec, apply_overrides, backbone_label,  # noqa: F401
                                  budget_label, config_diff, dataset_label, slug)
from medadapt.errors import UserError
from medadapt.safeio import check_no_links, make_dir, write_text

GRID_KEYS = {"name", "title", "description", "out", "backbones", "datasets", "methods", "shots",
             "fractions", "seeds", "protocols", "set", "recipe"}
# a grid file that names a recipe (medadapt.recipes) takes its runs from the recipe
RECIPE_GRID_KEYS = {"recipe", "name", "title", "description", "out", "set"}
PROTOCOLS = ("few-shot", "base-to-novel", "cross-domain")
_ENTRY_KEYS = {
    "backbones": {"spec", "name", "label", "set"},
    "datasets": {"spec", "name", "label", "set", "protocols", "shots", "fractions"},
}
_METHOD_META = {"name", "label", "set", "shots", "fractions", "protocols", "seeds"}
INDEX = "bench_index.json"
FAILURES = "bench_failures.json"
STATUS_DIR = Path(".bench") / "status"


# ------------------------------------------------------------------------------------------------
# grid file -> run specs
@dataclass
class Entry:
    value: str  # backbone / data set spec or method name
    label: str
    sets: Any = None
    extra: dict = field(default_factory=dict)  # method config keys
    shots: list | None = None
    fractions: list | None = None
    protocols: list | None = None
    seeds: list | None = None


def _as_list(v, what: str) -> list | None:
    if v is None:
        return None
    if isinstance(v, (int, float, str)):
        v = [v]
    if not (isinstance(v, list) and v):
        raise UserError(f"{what} must be a value or a non-empty list, got {v!r}")
    for x in v:  # shots / seeds: integers; fractions: numbers (never a traceback from int())
        if what in ("shots", "seeds") and (isinstance(x, bool) or not isinstance(x, int)):
            raise UserError(f"{what} must be integers, got {x!r}")
        if what == "fractions" and (isinstance(x, bool) or not isinstance(x, (int, float))):
            raise UserError(f"fractions must be numbers in (0, 1], got {x!r}")
    return v


def _entries(kind: str, items, base_dir: Path | None) -> list[Entry]:
    items = _as_list(items, kind)
    if not items:
        raise UserError(f"grid needs '{kind}:' (a list)")
    out: list[Entry] = []
    for it in items:
        if isinstance(it, str):
            it = {"name": it}
        if not isinstance(it, dict):
            raise UserError(f"{kind}: each entry is a name or a mapping, got {it!r}")
        value = it.get("spec", it.get("name"))
        if not value or not isinstance(value, str):
            raise UserError(f"{kind}: entry {it} needs 'name' (or 'spec')")
        if kind == "methods":
            extra = {k: v for k, v in it.items() if k not in _METHOD_META}
            default = value + "".join(f"-{v}" for v in extra.values())
        else:
            bad = set(it) - _ENTRY_KEYS[kind]
            if bad:
                raise UserError(f"{kind}: unknown keys {sorted(bad)} in {it}; valid: "
                                f"{sorted(_ENTRY_KEYS[kind])}")
            extra = {}
            if kind == "datasets":
                value = _resolve_data_path(value, base_dir)
            default = (dataset_label if kind == "datasets" else backbone_label)(value)
        e = Entry(value, slug(it.get("label") or default), it.get("set"), extra,
                  _as_list(it.get("shots"), "shots"), _as_list(it.get("fractions"), "fractions"),
                  _as_list(it.get("protocols"), "protocols"), _as_list(it.get("seeds"), "seeds"))
        if e.shots and e.fractions:
            raise UserError(f"{kind} entry {value!r}: give shots or fractions, not both")
        out.append(e)
    labels = [e.label for e in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UserError(f"{kind}: duplicate labels {dup}; give the entries distinct 'label:'s")
    return out


def _resolve_data_path(spec: str, base_dir: Path | None) -> str:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest or base_dir is None:
        return spec
    p = Path(os.path.expanduser(rest))
    if p.is_absolute():
        return spec
    here = base_dir / p
    if here.exists() or not p.exists():
        return f"{kind}:{os.path.normpath(here.resolve())}"
    return f"{kind}:{os.path.normpath(p.resolve())}"


def load_grid(path: str | Path) -> dict:
    p = Path(path)
    grid = read_yaml_mapping(p, "grid file", allow_empty=False)
    bad = set(grid) - GRID_KEYS
    if bad:
        raise UserError(f"{p}: unknown grid keys {sorted(bad)}; valid: {sorted(GRID_KEYS)}")
    return grid


def expand_grid(grid: dict, base_dir: str | Path | None = None,
                sets: list[str] | None = None) -> list[RunSpec]:
    """All runs of a grid, in order backbone > data set > protocol > method > shots."""
    base = Path(base_dir) if base_dir else None
    backbones = _entries("backbones", grid.get("backbones"), base)
    datasets = _entries("datasets", grid.get("datasets"), base)
    methods = _entries("methods", grid.get("methods"), base)
    shots = _as_list(grid.get("shots"), "shots")
    fractions = _as_list(grid.get("fractions"), "fractions")
    if shots and fractions:
        raise UserError("grid: give 'shots' or 'fractions', not both")
    if not shots and not fractions:
        shots = [16]
    seeds = [int(s) for s in _as_list(grid.get("seeds", [1]), "seeds")]
    protocols = _as_list(grid.get("protocols", ["few-shot"]), "protocols")
    for e in [*datasets, *methods]:
        for p in (e.protocols or []) + protocols:
            if p not in PROTOCOLS:
                raise UserError(f"unknown protocol {p!r}; valid: {', '.join(PROTOCOLS)}")
    runs: list[RunSpec] = []
    for b in backbones:
        for d in datasets:
            for proto in protocols:
                if d.protocols and proto not in d.protocols:
                    continue
                for m in methods:
                    if m.protocols and proto not in m.protocols:
                        continue
                    if m.shots or m.fractions:
                        budgets = [(int(k), None) for k in m.shots or []] + \
                                  [(None, float(f)) for f in m.fractions or []]
                    elif d.shots or d.fractions:
                        budgets = [(int(k), None) for k in d.shots or []] + \
                                  [(None, float(f)) for f in d.fractions or []]
                    else:
                        budgets = [(int(k), None) for k in shots or []] + \
                                  [(None, float(f)) for f in fractions or []]
                    for k, frac in budgets:
                        cfg = apply_overrides({}, grid.get("set"))
                        for e in (b, d, m):
                            cfg = apply_overrides(cfg, e.sets)
                        mcfg = cfg.get("method") if isinstance(cfg.get("method"), dict) else {}
                        cfg["method"] = {**mcfg, **copy.deepcopy(m.extra), "name": m.value}
                        cfg.update(backbone=b.value, dataset=d.value, protocol=proto,
                                   seeds=[int(s) for s in (m.seeds or seeds)])
                        data = cfg.setdefault("data", {})
                        if frac is not None:
                            data["fraction"] = frac
                        else:
                            cfg["shots"] = k
                            data["fraction"] = None
                        cfg = apply_sets(cfg, sets or [])
                        rid = "/".join([b.label, d.label, proto, m.label, budget_label(k, frac)])
                        runs.append(RunSpec(rid, cfg, b.label, d.label, m.label, m.value, proto,
                                            k, frac, list(cfg["seeds"])))
    ids = [r.id for r in runs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise UserError(f"grid gives the same run folder twice: {dup[0]}")
    return runs


def expand_recipe(grid: dict, sets: list[str] | None = None, backbone: str | None = None):
    """``(runs, recipe)`` of a grid that names a recipe (``recipe: NAME`` or ``--recipe``): the
    recipe's runs, then the grid's ``set`` and ``--set`` on top (a run they change is off the
    recipe, and ``report --compare`` says so). ``backbone`` replaces the recipe's backbones."""
    from medadapt.recipes import load_recipe
    bad = set(grid) - RECIPE_GRID_KEYS
    if bad:
        raise UserError(f"a grid with 'recipe:' takes its data sets, methods, shots and seeds from "
                        f"the recipe; remove {sorted(bad)} (valid with a recipe: "
                        f"{sorted(RECIPE_GRID_KEYS)})")
    recipe = load_recipe(grid["recipe"])
    runs = recipe.runs(backbone=backbone)
    for r in runs:
        r.cfg = apply_sets(apply_overrides(r.cfg, grid.get("set")), sets or [])
        r.seeds = [int(x) for x in r.cfg["seeds"]]
    return runs, recipe


def validate(runs: list[RunSpec]) -> None:
    """Resolve every run's config (method names, protocol, seeds) and check backbone / data set
    names before anything runs: a typo ends the command at once instead of after hours."""
    from medadapt.backbones import BACKBONES
    from medadapt.data.sources import DATASETS, _ensure_registered
    from medadapt.engine.resolve import resolve
    _ensure_registered()
    problems: list[str] = []
    seen: set[str] = set()
    for r in runs:
        try:
            r.resolved = resolve(r.cfg)
            from medadapt.methods import get_method
            cls = get_method(r.method_name)
            unknown = sorted(set(r.cfg["method"]) - set(cls.defaults) - {"name"})
            if unknown:  # a typo would otherwise be merged silently into the method config
                raise UserError(f"unknown setting(s) {unknown} for method {r.method_name}; "
                                f"valid: {', '.join(sorted(cls.defaults)) or 'none'}")
            kind = r.cfg["dataset"].partition(":")[0]
            if kind not in ("folder", "csv", "npz"):
                DATASETS.get(kind)
            bb = r.cfg["backbone"]
            if ":" not in bb and os.sep not in bb and not bb.startswith("."):
                BACKBONES.get(bb)
        except UserError as e:
            msg = str(e)
            if msg not in seen:
                seen.add(msg)
                problems.append(f"{r.id}: {msg}")
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise UserError(f"grid: {problems[0]}{more}")


# ------------------------------------------------------------------------------------------------
# run folder state
def seed_dir(folder: Path, seeds: list[int], seed: int) -> Path:
    return folder / f"seed{seed}" if len(seeds) > 1 else folder


def run_state(spec: RunSpec, folder: Path) -> tuple[str, str]:
    """(state, detail): ``absent`` | ``partial`` (n of m seeds) | ``done`` | ``changed``."""
    if not folder.exists() or not any(folder.iterdir()):
        return "absent", ""
    cfg_path = folder / "config.yaml"
    if not cfg_path.exists():
        return "changed", f"{folder} exists but is not a medadapt run folder (no config.yaml)"
    from medadapt.config import load_yaml
    try:
        stored = load_yaml(cfg_path)
    except UserError as e:
        return "changed", str(e)
    wanted = spec.resolved
    if wanted is None:
        from medadapt.engine.resolve import resolve
        wanted = spec.resolved = resolve(spec.cfg)
    diff = config_diff(stored, wanted)
    if diff:
        return "changed", (f"{folder} was run with a different config (differs in: "
                           f"{', '.join(diff[:6])}{' ...' if len(diff) > 6 else ''}); "
                           "pass --rerun-changed to replace it")
    done = [s for s in spec.seeds if (seed_dir(folder, spec.seeds, s) / "results.json").exists()]
    if len(done) == len(spec.seeds) and (len(spec.seeds) == 1 or (folder / "summary.json").exists()):
        return "done", ""
    return "partial", f"{len(done)} of {len(spec.seeds)} seeds"


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # links below --out: refused in run_bench
    write_text(path, json.dumps(obj, indent=1, default=str))  # a link at path: refused


def is_bench_folder(out: Path) -> bool:
    """A folder ``bench`` wrote: ``bench_index.json`` (a mapping with ``runs``) or ``.bench/``."""
    if (out / ".bench").is_dir() and not (out / ".bench").is_symlink():
        return True
    try:
        idx = json.loads((out / INDEX).read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(idx, dict) and isinstance(idx.get("runs"), list)


def check_bench_out(out: Path) -> None:
    """``--out`` / the grid's ``out:``: absent, an empty folder, or a medadapt bench folder; never
    a folder of the user's files (its grid.yaml, bench_index.json ... would be overwritten)."""
    if out.is_symlink() and not out.exists():
        raise UserError(f"bench output folder {out} is a dangling symbolic link")
    if out.exists() and not out.is_dir():
        raise UserError(f"bench output folder {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not is_bench_folder(out):
        raise UserError(f"bench output folder {out} holds files that are not a medadapt bench "
                        "(no bench_index.json or .bench/); choose an empty or new folder")


def _status_path(out: Path, rid: str) -> Path:
    return out / STATUS_DIR / (rid.replace("/", "__") + ".json")


def _read_status(out: Path, rid: str) -> dict:
    p = _status_path(out, rid)
    try:
        st = json.loads(p.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return st if isinstance(st, dict) else {}


def _summary_of(folder: Path, seeds: list[int]) -> dict:
    accs = []
    for s in seeds:
        p = seed_dir(folder, seeds, s) / "results.json"
        try:
            accs.append(json.loads(p.read_text())["metrics"]["accuracy"])
        except (OSError, KeyError, TypeError, ValueError, RecursionError):
            pass
    if not accs:
        return {}
    import numpy as np
    return {"accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs))}


def write_index(out: Path, runs: list[RunSpec], grid_info: dict) -> dict:
    """Rebuild ``bench_index.json`` and ``bench_failures.json`` from the run folders and the
    per-run status files (safe with several processes sharing one grid)."""
    entries, failures = [], []
    counts: dict[str, int] = {}
    for r in runs:
        folder = out / r.id
        st = _read_status(out, r.id)
        state, detail = run_state(r, folder)
        if state == "done":
            status = "done"
        elif state == "changed":
            status = "changed"
        else:
            status = st.get("status") if st.get("status") in ("failed", "interrupted",
                                                               "running") else "pending"
            if status == "pending" and state == "partial":
                detail = detail or "partial"
        e = {**r.entry(), "folder": r.id, "status": status,
             "seconds": st.get("seconds"), "updated": st.get("updated")}
        if status == "done":
            e.update(_summary_of(folder, r.seeds))
        if status in ("failed", "changed", "interrupted"):
            e["error"] = st.get("error") or detail
            if status != "interrupted":
                failures.append({"id": r.id, "folder": r.id, "status": status,
                                 "error_type": st.get("error_type", "ConfigChanged"
                                                      if status == "changed" else None),
                                 "error": e["error"], "traceback": st.get("traceback"),
                                 "time": st.get("updated")})
        elif state == "partial":
            e["detail"] = detail
        counts[status] = counts.get(status, 0) + 1
        entries.append(e)
    index = {**grid_info, "updated": time.strftime("%Y-%m-%d %H:%M:%S"), "counts": counts,
             "runs": entries}
    _atomic_json(out / INDEX, index)
    _atomic_json(out / FAILURES, failures)
    return index


# ------------------------------------------------------------------------------------------------
# running
@contextlib.contextmanager
def shared_backbones(enabled: bool = True):
    """Within the block, ``medadapt.backbones.load_backbone`` loads (and fingerprints) each
    backbone once and hands out deep copies, so consecutive runs skip loading and hashing the
    weights while no run can see another's changes. Keeps the most recent backbone only."""
    import medadapt.backbones as B
    if not enabled:
        yield
        return
    orig = B.load_backbone
    pristine: dict = {}

    def load(spec: str, device: str = "cpu"):
        key = (spec, str(device))
        if key not in pristine:
            pristine.clear()
            bb = orig(spec, device=device)
            bb.fingerprint()
            pristine[key] = bb
        bb = pristine[key]
        # share what is neither a module, a tensor nor a container (tokenizer, transforms,
        # strings): copying a BPE tokenizer's vocabulary costs more than copying the weights
        import torch
        memo = {id(v): v for v in vars(bb).values()
                if not isinstance(v, (dict, list, set, tuple, torch.nn.Module, torch.Tensor))}
        return copy.deepcopy(bb, memo)

    B.load_backbone = load
    try:
        yield
    finally:
        B.load_backbone = orig
        pristine.clear()


def _check_data_present(todo) -> None:
    """The data sets the runs to do read must be on disk. None of them there (a wrong or missing
    data root) is one line before anything is run, not one failure per run; some missing is a
    warning, and their runs are recorded as failed, so a partial suite still gives a partial
    table (issue 16)."""
    import sys

    from medadapt.data.sources import data_location
    missing: dict[str, Path] = {}
    present: set[str] = set()
    for r in todo:
        name, path = data_location(str(r.cfg.get("dataset")))
        if path is not None and not path.exists():
            missing.setdefault(name, path)
        else:
            present.add(name)
    if not missing:
        return
    shown = "; ".join(f"{n} (looked in {p})" for n, p in list(missing.items())[:4])
    more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
    if not present:
        raise UserError(f"bench: {len(missing)} data set(s) not found, nothing was run: {shown}"
                        f"{more}; pass --data-root DIR or set MEDADAPT_DATA (`medadapt datasets "
                        "NAME` says how to get each)")
    print(f"medadapt: warning: bench: {len(missing)} data set(s) not found, their runs are "
          f"recorded as failed: {shown}{more}", file=sys.stderr)


def _bench_runner_cls():
    from medadapt.engine.runner import Runner

    class BenchRunner(Runner):
        """Runner that reports each seed it actually computes (progress, counters)."""

        on_seed: Callable[[int, bool], None] | None = None

        def _run_seed(self, prep, backbone, seed, sdir):
            fresh = not (sdir / "results.json").exists()
            res = super()._run_seed(prep, backbone, seed, sdir)
            if self.on_seed:
                self.on_seed(seed, fresh)
            return res

    return BenchRunner


def _dist_env() -> tuple[int, int, int | None]:
    """(rank, world size, local rank) from accelerate / torchrun environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = os.environ.get("LOCAL_RANK")
    return rank, world, (int(local) if local not in (None, "") else None)


def parse_shard(s: str | None) -> tuple[int, int] | None:
    if s is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", s)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise UserError(f"--shard expects I/N with 0 <= I < N (e.g. 0/4), got {s!r}")
    return int(m.group(1)), int(m.group(2))


def run_bench(runs: list[RunSpec], out: str | Path, *, grid_info: dict | None = None,
              only: list[str] | None = None, shard: tuple[int, int] | None = None,
              retry_failed: bool = True, rerun_changed: bool = False, reuse_backbone: bool = True,
              progress: bool = True, quiet: bool = False, verbose: bool = False,
              dry_run: bool = False, on_start: Callable[[], None] | None = None,
              log=None) -> dict:
    """Run (or, with ``dry_run``, list) every run of ``runs`` not yet complete in ``out``.

    ``log``: experiment trackers (:mod:`medadapt.engine.trackers`): one tracker run per grid run
    (and seed), named by the run's id.

    Returns ``{"counts": {status: n}, "ran": runs computed now, "seeds_run": seeds computed now,
    "skipped": runs already complete, "failed": [ids], "index": path}``.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    check_bench_out(out)
    grid_info = dict(grid_info or {})
    if only:
        runs_sel = [r for r in runs if any(fnmatch.fnmatch(r.id, pat) or pat in r.id
                                           for pat in only)]
        if not runs_sel:
            raise UserError(f"--only {' '.join(only)} matches none of the {len(runs)} runs")
    else:
        runs_sel = list(runs)
    rank, world, local_rank = _dist_env()
    if shard is None and world > 1:
        shard = (rank, world)
    mine = runs_sel[shard[0]::shard[1]] if shard else runs_sel
    states = {r.id: run_state(r, out / r.id) for r in mine}

    if dry_run:
        w = max([len(r.id) for r in mine] + [10])
        print(f"{'run':{w}}  seeds  state")
        for r in mine:
            st, det = states[r.id]
            print(f"{r.id:{w}}  {len(r.seeds):>5}  {st}{' (' + det + ')' if det else ''}")
        n = {s: sum(1 for v in states.values() if v[0] == s) for s in
             ("done", "partial", "absent", "changed")}
        print(f"{len(mine)} runs: {n['done']} done, {n['partial']} partial, {n['absent']} to run, "
              f"{n['changed']} changed" + (f" (shard {shard[0]}/{shard[1]})" if shard else ""))
        return {"counts": n, "ran": 0, "seeds_run": 0, "skipped": n["done"], "failed": [],
                "index": None}

    _check_data_present([r for r in mine if states[r.id][0] != "done"])
    if log:
        from medadapt.engine.trackers import check_available, check_names
        check_available(check_names(log))
    if on_start is not None:
        on_start()
    out.mkdir(parents=True, exist_ok=True)
    make_dir(out / STATUS_DIR, root=out)  # .bench/status planted as a link is refused
    for r in mine:  # so is a link anywhere inside a run folder's path (backbone/dataset/...)
        check_no_links(out, out / r.id)
    write_index(out, runs, grid_info)
    say = (lambda msg: None) if quiet else (lambda msg: tqdm.write(msg, file=sys.stderr))
    total = sum(len(r.seeds) for r in mine)
    initial = sum(len(r.seeds) for r in mine if states[r.id][0] == "done")
    bar = tqdm(total=total, initial=initial, desc="bench", unit="seed", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    counters = {"ran": 0, "seeds_run": 0, "skipped": 0}
    failed: list[str] = []
    Runner = _bench_runner_cls()
    todo = [r for r in mine if states[r.id][0] != "done"]
    counters["skipped"] = len(mine) - len(todo)
    if counters["skipped"]:
        say(f"bench: {counters['skipped']} of {len(mine)} runs already complete, skipped")

    def set_status(r: RunSpec, status: str, **kw) -> None:
        _atomic_json(_status_path(out, r.id), {"id": r.id, "status": status,
                                               "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
                                               "pid": os.getpid(), **kw})

    try:
        with shared_backbones(reuse_backbone):
            for n_done, r in enumerate(todo, 1):
                state, detail = states[r.id]
                folder = out / r.id
                prev = _read_status(out, r.id)
                if state == "changed" and not rerun_changed:
                    set_status(r, "changed", error=detail, error_type="ConfigChanged")
                    failed.append(r.id)
                    say(f"[{n_done}/{len(todo)}] {r.id}: skipped, {detail}")
                    bar.update(len(r.seeds))
                    continue
                if prev.get("status") == "failed" and not retry_failed:
                    failed.append(r.id)
                    bar.update(len(r.seeds))
                    continue
                cfg = r.cfg
                if (local_rank is not None and cfg.get("device", "auto") == "auto"
                        and _cuda_available()):
                    cfg = dict(cfg, device=f"cuda:{local_rank}")
                bar.set_postfix_str(f"{r.id} | failed {len(failed)}")
                set_status(r, "running")
                t0 = time.time()

                def on_seed(seed, fresh):
                    bar.update(1)
                    counters["seeds_run"] += int(fresh)

                n_before = bar.n
                try:
                    runner = Runner(cfg, folder, overwrite=(state == "changed"),
                                    resume=(state != "changed"), quiet=not verbose,
                                    progress=verbose, log=log, log_name=r.id)
                    runner.on_seed = on_seed
                    res = runner.run()
                except KeyboardInterrupt:
                    set_status(r, "interrupted", seconds=time.time() - t0,
                               error="interrupted by the user")
                    raise
                except Exception as e:  # one failing run must not stop the grid
                    one_line = " ".join(str(e).split()) or type(e).__name__
                    set_status(r, "failed", seconds=time.time() - t0, error=one_line,
                               error_type=type(e).__name__, traceback=traceback.format_exc())
                    failed.append(r.id)
                    bar.update(max(0, len(r.seeds) - (bar.n - n_before)))
                    say(f"[{n_done}/{len(todo)}] {r.id}: FAILED ({type(e).__name__}: "
                        f"{one_line[:300]})")
                    write_index(out, runs, grid_info)
                    continue
                secs = time.time() - t0
                counters["ran"] += 1
                _atomic_json(folder / "bench.json", {**r.entry(), "grid": grid_info.get("name")})
                set_status(r, "done", seconds=secs)
                accs = [x["metrics"]["accuracy"] for x in res["results"]]
                import numpy as np
                say(f"[{n_done}/{len(todo)}] {r.id}: accuracy {np.mean(accs):.4f} ± "
                    f"{np.std(accs):.4f} over {len(accs)} seed(s) ({secs:.1f}s)")
                write_index(out, runs, grid_info)
    finally:
        bar.close()
        index = write_index(out, runs, grid_info)
    return {"counts": index["counts"], "failed": failed, "index": str(out / INDEX), **counters}


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()
