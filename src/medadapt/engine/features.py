"""Feature cache for frozen image encoders.

Key = backbone weights hash + transform (+ augmented view) + data set content fingerprint. Each key
owns one safetensors file holding the features of every item encoded so far, with the item ids in
its metadata; new items are encoded and merged in, so train subsets of other seeds and the shared
test set are encoded once and reused across methods and seeds. A changed file (size / mtime /
bytes) changes the fingerprint and so the key (see :func:`medadapt.data.dataset.files_fingerprint`
and docs/safety.md for what is guaranteed). A damaged cache file is detected, reported and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from medadapt.data.dataset import DataSet
from medadapt.paths import cache_home
from medadapt.errors import UserError


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def autocast_dtype(precision: str, device_type: str) -> torch.dtype | None:
    """``data.precision`` -> the autocast dtype of feature extraction (None: plain fp32).
    ``auto``: fp16 on CUDA, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise UserError(f"data.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return torch.float16 if device_type == "cuda" else None
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


# Feature-extraction batch by device (``data.batch_size: null``, the default). CPU: 8 for a
# full-size model. A batch brings a CPU nothing to amortise, and a larger one spills the caches:
# full-size ViT-B/16 at 224 px, process CPU time per image 0.415 s at batch 8, 0.456 at 16, 0.469
# at 32, 0.483 at 64 with one thread (benchmarks/results/feature_batch_cpu.json); wall time with
# torch's two threads on an idle machine 0.226 s at 8, 0.247 at 32, 0.249 at 64
# (benchmarks/results/feature_batch_cpu_2threads.json). A small model (under SMALL_MODEL
# parameters, e.g. synthpath-clip's 1.8M) is the other way round, its per-batch overhead dominates:
# 0.71 ms per image at batch 8 against 0.43 ms at 64, so it keeps 64. CUDA and other accelerators:
# 128, to fill the device (benchmarks/gpu_check.py records the forward images/s at 32-256).
DEFAULT_BATCH = {"cpu": 8, "cuda": 128}
SMALL_MODEL = 20_000_000
SMALL_MODEL_CPU_BATCH = 64


def default_batch_size(device, backbone=None) -> int:
    """The feature-extraction batch size for ``device`` (and ``backbone``, whose size matters on
    a CPU) when ``data.batch_size`` is null."""
    kind = torch.device(device).type
    if kind == "cpu" and backbone is not None:
        n = sum(p.numel() for p in backbone.parameters())
        if n < SMALL_MODEL:
            return SMALL_MODEL_CPU_BATCH
    return DEFAULT_BATCH.get(kind, DEFAULT_BATCH["cuda"])


def _seed_for(item_id: str, view) -> int:
    return int.from_bytes(hashlib.sha256(f"{item_id}|{view}".encode()).digest()[:8], "little") % (2**63)


def _fresh_tag(fresh: tuple[int, int]) -> str:
    """``data.fresh_views``: augmented pass ``k`` of run seed ``s``."""
    return f"fresh:seed={int(fresh[0])}:pass={int(fresh[1])}"


class _ImageDS(torch.utils.data.Dataset):
    def __init__(self, ds: DataSet, idx: Sequence[int], transform, view: int, skip_bad: bool):
        self.ds, self.idx, self.t, self.view, self.skip_bad = ds, list(idx), transform, view, skip_bad

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, j):
        i = self.idx[j]
        try:
            img = self.ds.load_image(i)
        except UserError:
            if not self.skip_bad:
                raise
            return None, j
        if self.view > 0:  # seeded augmentation: the same view of an item is identical everywhere
            torch.manual_seed(_seed_for(self.ds.records[i].id, self.view))
        return self.t(img), j


class _PassDS(torch.utils.data.Dataset):
    """(item, pass) pairs of fresh augmented passes, item-major: each image is decoded once for
    all the passes it needs (the last decoded image is kept), then cropped / flipped per pass
    with the generator of (item, run seed, pass)."""

    def __init__(self, ds: DataSet, idx: Sequence[int], transform, seed: int,
                 todo: list[tuple[int, int]]):
        self.ds, self.idx, self.t, self.seed, self.todo = ds, list(idx), transform, seed, todo
        self._last: tuple[int, object] | None = None

    def __len__(self):
        return len(self.todo)

    def __getitem__(self, n):
        j, p = self.todo[n]
        if self._last is None or self._last[0] != j:
            self._last = (j, self.ds.load_image(self.idx[j]))
        # crop / flip from a generator of (item, run seed, pass) only, so the pass is the same
        # in every method, batch order and worker (the CPU generator alone: torch.manual_seed also
        # seeds every accelerator, 100x slower); encode_passes restores the caller's RNG
        torch.default_generator.manual_seed(_seed_for(self.ds.records[self.idx[j]].id,
                                                      _fresh_tag((self.seed, p))))
        return self.t(self._last[1]), n


def _collate(items):
    ok = [(x, j) for x, j in items if x is not None]
    bad = [j for x, j in items if x is None]
    xs = torch.stack([x for x, _ in ok]) if ok else None
    return xs, [j for _, j in ok], bad


class FeatureCache:
    def __init__(self, root: str | Path | None = None, enabled: bool = True,
                 precision: str = "auto"):
        self.root = Path(root) if root else cache_home() / "features"
        self.enabled = enabled
        self.precision = precision
        autocast_dtype(precision, "cpu")  # validate early

    def key(self, backbone, ds: DataSet, view: int, fresh: tuple[int, int] | None = None) -> str:
        t = backbone.train_preprocess if view > 0 or fresh is not None else backbone.preprocess
        h = hashlib.sha256()
        # a function in the transform prints as "<function _rgb at 0x7f...>": the address differs
        # in every process, which would make every run miss the cache
        parts = [backbone.fingerprint(), _ADDRESS.sub("", repr(t)), ds.fingerprint,
                 f"view={view}" if fresh is None else _fresh_tag(fresh)]
        dtype = autocast_dtype(self.precision, backbone.device.type)
        if dtype is not None:  # reduced-precision features are cached apart from fp32 ones
            parts.append(f"autocast={dtype}")
        for part in parts:
            h.update(part.encode())
        return h.hexdigest()[:32]

    def _load(self, path: Path, dim: int | None = None) -> tuple[dict[str, int], torch.Tensor | None]:
        """The cached ids and features; a truncated, empty or foreign file is reported on stderr,
        removed and rebuilt (never a permanent failure)."""
        if not path.exists():
            return {}, None
        try:
            with safe_open(str(path), framework="pt") as f:
                ids = json.loads((f.metadata() or {})["ids"])
                feats = f.get_tensor("features")
            if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
                raise ValueError("ids are not a list of strings")
            if feats.ndim != 2 or feats.shape[0] != len(ids) or len(set(ids)) != len(ids):
                raise ValueError(f"{feats.shape[0] if feats.ndim else 0} rows for {len(ids)} ids")
            if dim is not None and feats.shape[1] != dim:
                raise ValueError(f"feature size {feats.shape[1]}, expected {dim}")
            if not torch.isfinite(feats).all():
                raise ValueError("non-finite values")
        except Exception as e:  # SafetensorError, KeyError, JSONDecodeError, OSError, ...
            print(f"medadapt: warning: feature cache file {path} is damaged "
                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                  "removing it and re-encoding", file=sys.stderr)
            try:
                path.unlink()
            except OSError:
                pass
            return {}, None
        return {k: i for i, k in enumerate(ids)}, feats

    def encode(self, backbone, ds: DataSet, idx: Sequence[int], view: int = 0,
               batch_size: int | None = None, workers: int = 0, skip_bad: bool = False,
               progress: bool = True, desc: str = "encoding images",
               fresh: tuple[int, int] | None = None) -> tuple[torch.Tensor, list[int]]:
        """Features ``[len(ok), D]`` (float32, raw) for ``idx`` and the list of bad indices
        (unreadable images, only with ``skip_bad``). ``batch_size`` None: the device's default
        (:func:`default_batch_size`). ``fresh=(seed, k)``: augmented pass ``k`` of run seed
        ``seed`` (``data.fresh_views``) under the backbone's train transform, keyed by (image
        fingerprint, policy, seed, pass): a second method on the same images hits it (computed
        by :meth:`encode_passes`; the images must be readable, ``skip_bad`` does not apply)."""
        if fresh is not None:
            seed, k = int(fresh[0]), int(fresh[1])
            return self.encode_passes(backbone, ds, idx, seed, [k], batch_size, workers, progress,
                                      desc)[k], []
        idx = list(idx)
        path = self.root / f"{self.key(backbone, ds, view, fresh)}.safetensors"
        pos, cached = self._load(path, backbone.embed_dim) if self.enabled else ({}, None)
        ids = [ds.records[i].id for i in idx]
        missing = [j for j, k in enumerate(ids) if k not in pos]
        new_feats: dict[int, torch.Tensor] = {}
        bad: list[int] = []
        if missing:
            t = backbone.train_preprocess if view > 0 else backbone.preprocess
            dev = backbone.device
            batch_size = int(batch_size or default_batch_size(dev, backbone))
            loader = torch.utils.data.DataLoader(
                _ImageDS(ds, [idx[j] for j in missing], t, view, skip_bad), batch_size=batch_size,
                num_workers=workers, collate_fn=_collate, pin_memory=dev.type == "cuda")
            dtype = autocast_dtype(self.precision, dev.type)
            with torch.inference_mode(), tqdm(total=len(missing), desc=desc, disable=not progress,
                                              leave=False) as bar:
                for xs, js, bad_js in loader:
                    bad += [idx[missing[j]] for j in bad_js]
                    if xs is not None:
                        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                            f = backbone.encode_image(xs.to(dev, non_blocking=True), normalize=False)
                        for j, row in zip(js, f.float().cpu()):
                            new_feats[missing[j]] = row
                    bar.update(len(js) + len(bad_js))
            if self.enabled and new_feats:
                self._merge_save(path, pos, cached, {ids[j]: v for j, v in new_feats.items()})
        rows = []
        bad_set = set(bad)
        for j, i in enumerate(idx):
            if i in bad_set:
                continue
            rows.append(new_feats[j] if j in new_feats else cached[pos[ids[j]]])
        dim = backbone.embed_dim
        return (torch.stack(rows) if rows else torch.empty(0, dim)), bad

    def encode_passes(self, backbone, ds: DataSet, idx: Sequence[int], seed: int,
                      passes: Sequence[int], batch_size: int | None = None, workers: int = 0,
                      progress: bool = True, desc: str = "augmented passes") -> dict[int, torch.Tensor]:
        """Fresh augmented passes ``passes`` of run seed ``seed`` over ``idx`` at once:
        ``{k: [len(idx), D]}``, each equal to ``encode(..., fresh=(seed, k))`` (same per-item
        generator, same cache files), but every image is decoded once for all its missing passes
        and each pass file is written once."""
        idx, passes = list(idx), [int(k) for k in passes]
        ids = [ds.records[i].id for i in idx]
        dim = backbone.embed_dim
        state, todo = {}, []
        for k in passes:
            path = self.root / f"{self.key(backbone, ds, 0, (seed, k))}.safetensors"
            pos, cached = self._load(path, dim) if self.enabled else ({}, None)
            state[k] = (path, pos, cached)
            todo += [(j, k) for j, i in enumerate(ids) if i not in pos]
        todo.sort()
        new: dict[int, dict[int, torch.Tensor]] = {k: {} for k in passes}
        if todo:
            dev = backbone.device
            loader = torch.utils.data.DataLoader(
                _PassDS(ds, idx, backbone.train_preprocess, seed, todo),
                batch_size=int(batch_size or default_batch_size(dev, backbone)),
                num_workers=workers, pin_memory=dev.type == "cuda")
            dtype = autocast_dtype(self.precision, dev.type)
            with torch.random.fork_rng(devices=[]), torch.inference_mode(), \
                    tqdm(total=len(todo), desc=desc, disable=not progress, leave=False) as bar:
                for xs, ns in loader:
                    with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                        f = backbone.encode_image(xs.to(dev, non_blocking=True), normalize=False)
                    for n, row in zip(ns.tolist(), f.float().cpu()):
                        j, k = todo[n]
                        new[k][j] = row
                    bar.update(len(ns))
            if self.enabled:
                for k in passes:
                    if new[k]:
                        path, pos, cached = state[k]
                        self._merge_save(path, pos, cached, {ids[j]: v for j, v in new[k].items()})
        out = {}
        for k in passes:
            _, pos, cached = state[k]
            rows = [new[k][j] if j in new[k] else cached[pos[ids[j]]] for j in range(len(idx))]
            out[k] = torch.stack(rows) if rows else torch.empty(0, dim)
        return out

    def _merge_save(self, path: Path, pos, cached, new: dict[str, torch.Tensor]) -> None:
        ids = list(pos) + list(new)
        parts = ([cached] if cached is not None else []) + [torch.stack(list(new.values()))]
        feats = torch.cat(parts).contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"features": feats}, str(tmp), metadata={"ids": json.dumps(ids)})
        os.replace(tmp, path)
