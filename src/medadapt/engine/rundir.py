"""Run-folder safety: what ``fit`` may write, overwrite and resume (docs/safety.md).

- :func:`is_run_folder`: the marker of a folder medadapt wrote (``--overwrite`` only replaces those);
- :func:`check_out_dir` / :func:`check_not_data_folder`: ``--out`` must be a writable folder
  outside the data set;
- :class:`run_lock`: one writer per run folder (``flock``; a killed holder leaves no stale lock);
- :func:`config_diff`: the keys that differ between a stored and a new config (``--resume``);
- :func:`atomic_json`, :class:`RunLog`, :func:`pick_device`, :func:`set_seed`: the small pieces
  every writer of a run folder shares.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medadapt.data.dataset import DataSet
from medadapt.errors import UserError

RUN_MARKERS = ("classes.json", "results.json", "summary.json")
# settings that may change between an interrupted run and its --resume
RESUME_IGNORED = ("device", "classnames", "data.workers", "data.batch_size", "train.workers",
                  "data.skip_bad", "data.max_image_pixels")


# every file ``fit`` (and ``bench``) writes into a run folder or a seed<N>/ folder; anything else
# in a run folder is the user's, and ``--overwrite`` refuses rather than delete it
RUN_FILES = frozenset({"config.yaml", "classes.json", "results.json", "summary.json",
                       "fewshot.json", "params.safetensors", "log.txt", "checkpoint.safetensors",
                       "checkpoint_state.pt", "bench.json"})
_RUN_TMP = re.compile(r"^(config\.yaml\.tmp|[a-z_]+\.json\.tmp\d*|checkpoint(_state)?\.tmp"
                      r"|\.[a-z_]+\.(json|yaml|txt|safetensors|pt)\.[a-z0-9_]{8}\.tmp\.[a-z]+)$")
_SEED_DIR = re.compile(r"^seed\d+$")
# folders medadapt writes into a run folder (--log tensorboard: RUN/tensorboard/seed<N>/)
RUN_DIRS = frozenset({"tensorboard"})


def foreign_entries(path: Path, prefix: str = "") -> list[str]:
    """Entries of a run folder that medadapt did not write (a notebook, predictions.csv, a data
    folder, ...), relative to ``path``; ``--overwrite`` would delete them, so it refuses."""
    out = []
    for e in sorted(path.iterdir(), key=lambda e: e.name):
        if e.is_symlink():
            out.append(prefix + e.name)
        elif e.is_dir() and _SEED_DIR.match(e.name) and not prefix:
            out += foreign_entries(e, f"{e.name}/")
        elif e.is_dir() and e.name in RUN_DIRS and not prefix:
            continue
        elif not (e.is_file() and (e.name in RUN_FILES or _RUN_TMP.match(e.name))):
            out.append(prefix + e.name + ("/" if e.is_dir() else ""))
    return out


def is_run_folder(path: Path, strict: bool = True) -> bool:
    """A folder medadapt wrote: a config.yaml naming a method and a backbone, plus (``strict``)
    classes.json, results.json or summary.json. ``--resume`` accepts a run killed right after
    writing its config.yaml (``strict=False``); ``--overwrite`` wants the full marker."""
    cfg = path / "config.yaml"
    if not cfg.is_file() or (strict and not any((path / m).is_file() for m in RUN_MARKERS)):
        return False
    try:
        from medadapt.safeio import load_yaml  # alias / size / depth budget
        data = load_yaml(cfg.read_text())
    except Exception:
        return False
    return isinstance(data, dict) and "method" in data and "backbone" in data


def check_out_dir(out: Path) -> None:
    """``--out`` must be (or become) a writable directory."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    p = out
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {out}: {p} is a file, so no folder can be created under it")
    if p.exists() and not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {p} is not writable")


def check_not_data_folder(out: Path, ds: DataSet) -> None:
    """Refuse a run folder that is, or contains, the data set's own folder."""
    if not ds.root:
        return
    o, r = out.resolve(), Path(ds.root).resolve()
    if o == r or o in r.parents:
        raise UserError(f"--out {out} is or contains the data set folder {ds.root}; choose a run "
                        "folder outside your data")
    if ds.meta.get("folders") is not None and r in o.parents:  # folder: one sub-folder per class
        raise UserError(f"--out {out} lies inside the class-folder data set {ds.root} (it would "
                        "become a class); choose a run folder outside your data")


class run_lock:
    """An exclusive lock on a run folder (``flock`` on a sibling ``.NAME.lock`` file): a second
    process writing to the same ``--out`` refuses at once. The kernel drops the lock when the
    holder dies, so a SIGKILLed run never leaves a stale lock behind."""

    def __init__(self, out: Path):
        self.path = out.parent / f".{out.name}.lock"
        self.out = out
        self.fh = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {self.out}: cannot create {self.path.parent} "
                            f"({e.strerror or e})") from None
        while True:
            try:  # O_NOFOLLOW: a lock file planted as a link is never created or opened through
                fh = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND
                                       | getattr(os, "O_NOFOLLOW", 0), 0o644), "a+")
            except OSError as e:  # read-only or special file system (root ignores permissions)
                if self.path.is_symlink():
                    raise UserError(f"{self.path} is a symbolic link; medadapt never writes "
                                    "through a link (remove it)") from None
                raise UserError(f"--out {self.out}: cannot write in {self.path.parent} "
                                f"({e.strerror or e})") from None
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                raise UserError(f"run folder {self.out} is in use by another medadapt process "
                                "(wait for it to finish or choose another --out)") from None
            try:  # the holder before us may have removed the file between our open and flock
                same = os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fh = fh
                return self
            fh.close()

    def __exit__(self, *exc):
        if self.fh is not None:
            try:
                self.path.unlink(missing_ok=True)  # while still held
            except OSError:
                pass
            self.fh.close()
        return False


def flat_keys(d: dict, prefix: str = "") -> dict:
    """A nested config as ``{"a.b": value}`` (empty mappings kept as values)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_keys(v, key + "."))
        else:
            out[key] = v
    return out


def flat_diff(stored: dict, wanted: dict, ignored: tuple[str, ...],
              stored_keys_only: bool = False) -> list[str]:
    """Dotted keys whose values differ between two configs, leaving out the keys under
    ``ignored``; ``stored_keys_only``: a key ``stored`` lacks is no difference. A change between a
    single-seed and a several-seed folder layout is always one."""
    import yaml
    a = flat_keys(yaml.safe_load(yaml.safe_dump(stored)))
    b = flat_keys(yaml.safe_load(yaml.safe_dump(wanted)))
    diff = [k for k in sorted(set(a) | set(b))
            if not any(k == i or k.startswith(i + ".") for i in ignored)
            and (k in a or not stored_keys_only) and a.get(k) != b.get(k)]
    old, new = list(stored.get("seeds") or []), list(wanted.get("seeds") or [])
    if (len(old) > 1) != (len(new) > 1):
        diff.append("seeds (single-seed vs several-seed folder layout)")
    return diff


def config_diff(stored: dict, wanted: dict) -> list[str]:
    """Dotted keys whose values differ between a stored and a new resolved config (``--resume``);
    a key the stored config lacks comes from a newer medadapt (it resolves every key): not a
    diff."""
    return flat_diff(stored, wanted, RESUME_IGNORED + ("seeds",), stored_keys_only=True)


# ------------------------------------------------------------------------------------------------
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
    from medadapt.safeio import write_text  # a fresh temp file: never through a planted link
    write_text(path, json.dumps(obj, indent=1, default=_json_default))


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
            from medadapt.safeio import append_text  # O_NOFOLLOW: a planted link is refused
            append_text(self.path, line + "\n")
        if not self.quiet:
            print(line, file=sys.stderr)
