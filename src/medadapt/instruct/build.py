"""Instruction data builder: sources -> cleaning -> ChatML JSONL + fixed split + stats + exports.

Follows PathInsight's PathEnhanceDS compilation (Wu et al., Section 2.1, Fig. 2, Table 1):
several sources (captioning, classification, VQA, conversation) are turned into ChatML
instructions, cleaned (empty, duplicate, over-long items; optionally a CLIP similarity top-N and
an H&E-only zero-shot filter, as the paper did with BiomedCLIP), and written as one data set.

Output folder::

    data.jsonl                 every item, with its "split"
    train.jsonl val.jsonl test.jsonl
    labels.json                label sets of the classification sources (for evaluation)
    stats.json stats.md        items per split / task / source, lengths, skipped and cleaned counts
    build_config.yaml          the resolved config
    llamafactory/              sharegpt JSON per split + dataset_info.json
    swift/                     ms-swift JSONL per split

The split is fixed by the seed and made by image across all sources (all items about one image,
from whichever source, land in the same split), spreading each class of each source across
splits; a source's own split (PathVQA's train / val / test files) is kept and the other items on
its images follow it.
"""
from __future__ import annotations

import os
import random
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml

from medadapt.errors import UserError
from medadapt.instruct.config import BuildConfig, to_dict
from medadapt.instruct.export import EXPORTERS
from medadapt.instruct.records import BadItem, Record, validate, write_json, write_jsonl
from medadapt.instruct.sources import run_source
from medadapt.safeio import make_dir, write_text

# keys every source takes; the adapter's own come from its registered option help
_SOURCE_KEYS = {"kind", "path", "name", "limit", "split"}
_CLASS_KEYS = {"labels", "limit_per_class", "options_in_prompt", "answer_template"}


def check_source_keys(spec: dict) -> None:
    """Refuse a source key the adapter does not read (a typo would pass silently)."""
    import difflib

    from medadapt.instruct.sources import ADAPTERS, OPTIONS
    kind = spec.get("kind")
    if kind not in ADAPTERS:
        return  # run_source names the valid kinds
    allowed = _SOURCE_KEYS | set(re.findall(r"([A-Za-z_]\w*)=", OPTIONS.get(kind, "")))
    if kind.startswith("class-"):
        allowed |= _CLASS_KEYS
    for k in spec:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), sorted(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"source {kind!r}: unknown key {k!r}{hint} (valid: "
                            f"{', '.join(sorted(allowed))})")
    for k in ("limit", "limit_per_class"):
        v = spec.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise UserError(f"source {kind!r}: {k} must be a positive integer, got {v!r}")
    if spec.get("split") is not None and spec["split"] not in SPLITS:
        raise UserError(f"source {kind!r}: split must be one of {', '.join(SPLITS)}, got "
                        f"{spec['split']!r}")
    if "options_in_prompt" in spec and not isinstance(spec["options_in_prompt"], bool):
        raise UserError(f"source {kind!r}: options_in_prompt must be true or false, got "
                        f"{spec['options_in_prompt']!r}")

SPLITS = ("train", "val", "test")


class Skips:
    """Raise bad items, or count them by reason when ``skip_bad``."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.counts: Counter[str] = Counter()

    def handle(self, err: BadItem) -> None:
        if not self.skip_bad:
            raise UserError(f"{err} (use --skip-bad to skip and count such items)")
        self.counts[err.reason] += 1


def _alnum(text: str) -> int:
    return sum(ch.isalnum() for ch in text)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def _dedup_key(r: Record) -> tuple:
    """Same images and same conversation; for captions and classification the request phrasing
    is drawn at random, so there the same images and answer make a duplicate."""
    if r.task in ("caption", "classification"):
        return (r.task, tuple(r.images), tuple(_norm(m["content"]) for m in r.messages
                                              if m["role"] == "assistant"))
    return (r.task, tuple(r.images), tuple((m["role"], _norm(m["content"])) for m in r.messages))


def clean(records: list[Record], cfg: BuildConfig) -> tuple[list[Record], Counter[str]]:
    """Drop empty-ish answers, over-long items and duplicates; count each reason."""
    dropped: Counter[str] = Counter()
    seen: set[tuple] = set()
    out = []
    for r in records:
        if any(_alnum(m["content"]) < cfg.min_answer_alnum for m in r.messages if m["role"] == "assistant"):
            dropped["clean_empty"] += 1
            continue
        if cfg.max_chars and sum(len(m["content"]) for m in r.messages) > cfg.max_chars:
            dropped["clean_too_long"] += 1
            continue
        if cfg.dedup:
            key = _dedup_key(r)
            if key in seen:
                dropped["clean_duplicate"] += 1
                continue
            seen.add(key)
        out.append(r)
    return out, dropped


def _image_groups(records: list[Record]) -> list[list[Record]]:
    """Records linked by a shared image (across all sources) form one group (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    keys = []
    for r in records:
        nodes = [f"img:{os.path.realpath(p)}" for p in r.images] or [f"id:{r.id}"]
        for n in nodes[1:]:
            parent[find(n)] = find(nodes[0])
        keys.append(nodes[0])
    groups: dict[str, list[Record]] = defaultdict(list)
    for r, k in zip(records, keys):
        groups[find(k)].append(r)
    return list(groups.values())


def assign_splits(records: list[Record], fractions: dict[str, float], seed: int,
                  fixed: dict[str, str]) -> None:
    """Set ``rec.split`` for every record (see module docstring).

    By image across all sources: records that share an image, whatever their source, land in
    one split. A source's own split (``fixed``) is kept, and the other records on its images
    follow it. The remaining groups are split per source (the source of the group's first
    record), stratified by class, in the given proportions.
    """
    bad = set(fractions) - set(SPLITS)
    if bad or any(not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1
                  for v in fractions.values()) or sum(fractions.values()) <= 0:
        raise UserError(f"split must give fractions in [0, 1] for {', '.join(SPLITS)}; got {fractions}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise UserError(f"split fractions must add up to 1 (e.g. 0.8,0.1,0.1); "
                        f"{', '.join(f'{k} {v:g}' for k, v in fractions.items())} add up to {total:g}")
    total = sum(fractions.values())
    frac = {s: fractions.get(s, 0.0) / total for s in SPLITS}
    by_source: dict[str, list[list[Record]]] = defaultdict(list)
    for group in _image_groups(records):
        pinned = [fixed[r.id] for r in group if r.id in fixed]
        if pinned:
            for r in group:
                r.split = fixed.get(r.id, pinned[0])
            continue
        group.sort(key=lambda r: (r.source, r.id))
        by_source[group[0].source].append(group)
    for source, groups in sorted(by_source.items()):
        rng = random.Random(f"{seed}:{source}")
        groups.sort(key=lambda g: g[0].images[0] if g[0].images else g[0].id)
        rng.shuffle(groups)
        groups.sort(key=lambda g: str(g[0].label or ""))  # strata by class, shuffled within
        done = Counter()
        for n, g in enumerate(groups, start=1):
            split = max(SPLITS, key=lambda s: (frac[s] * n - done[s], frac[s]))
            done[split] += 1
            for r in g:
                r.split = split


def _dist(values: list[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0, "median": 0, "p95": 0, "max": 0}
    v = sorted(values)
    return {"mean": round(statistics.fmean(v), 2), "median": statistics.median(v),
            "p95": v[min(len(v) - 1, int(0.95 * len(v)))], "max": v[-1]}


def stats(records: list[Record], skipped: Counter[str], cleaned: Counter[str]) -> dict[str, Any]:
    """Items per split / task / source, word lengths of prompts and answers, turns, images."""
    counts: dict[str, dict[str, int]] = defaultdict(Counter)
    for r in records:
        counts[r.split][f"{r.task}/{r.source}"] += 1
    words = lambda role: [sum(len(m["content"].replace("<image>", " ").split()) for m in r.messages
                              if m["role"] == role) for r in records]
    return {
        "n_items": len(records),
        "per_split": {s: len([r for r in records if r.split == s]) for s in SPLITS},
        "per_task": dict(Counter(r.task for r in records)),
        "per_source": dict(Counter(r.source for r in records)),
        "per_split_task_source": {s: dict(sorted(c.items())) for s, c in sorted(counts.items())},
        "lengths_words": {"prompt": _dist(words("user")), "answer": _dist(words("assistant"))},
        "turns": _dist([sum(m["role"] == "assistant" for m in r.messages) for r in records]),
        "images_per_item": _dist([len(r.images) for r in records]),
        "skipped": dict(skipped), "cleaned": dict(cleaned),
    }


def stats_markdown(st: dict[str, Any]) -> str:
    lines = ["# Instruction data statistics", "", f"Items: {st['n_items']}  ",
             "Per split: " + ", ".join(f"{k} {v}" for k, v in st["per_split"].items()), "",
             "| split | task/source | items |", "|---|---|---|"]
    for s, c in st["per_split_task_source"].items():
        lines += [f"| {s} | {k} | {v} |" for k, v in c.items()]
    lines += ["", "| length (words) | mean | median | p95 | max |", "|---|---|---|---|---|"]
    for k, d in st["lengths_words"].items():
        lines.append(f"| {k} | {d['mean']} | {d['median']} | {d['p95']} | {d['max']} |")
    lines += ["", "Skipped (bad input): " + (", ".join(f"{k} {v}" for k, v in st["skipped"].items()) or "none"),
              "Cleaned: " + (", ".join(f"{k} {v}" for k, v in st["cleaned"].items()) or "none"), ""]
    return "\n".join(lines)


def build(cfg: BuildConfig, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Run the whole builder; returns the stats dict. Nothing is written if an error is raised."""
    from tqdm import tqdm

    out = Path(out)
    from medadapt.safeio import check_name
    check_name(cfg.name, "build name")  # it becomes the export file names (NAME_train.json ...)
    if not cfg.sources:
        raise UserError("no sources: pass --source kind=...,path=... or list sources in the config")
    if (out / "data.jsonl").exists() and not overwrite:
        raise UserError(f"{out} already holds a built data set; pass --overwrite or another --out")
    skips = Skips(cfg.skip_bad)
    records: list[Record] = []
    fixed: dict[str, str] = {}
    label_sets: dict[str, Any] = {}
    names = set()
    for spec in cfg.sources:
        if not isinstance(spec, dict):
            raise UserError(f"a source must be a mapping of key=value settings, got {spec!r}")
        check_source_keys(spec)
    assign_splits([], cfg.split, cfg.seed, {})  # validates the fractions before any work
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    o = out.resolve()
    for spec in cfg.sources:
        src = Path(str(spec.get("path", ""))).expanduser()
        if spec.get("path") and src.is_dir() and (o == src.resolve() or src.resolve() in o.parents):
            raise UserError(f"--out {out} is or lies inside the source folder {src}; write the "
                            "built data set outside your data")
    for spec in cfg.sources:
        spec = dict(spec)
        name, res = run_source(spec, random.Random(f"{cfg.seed}:{spec.get('name', spec.get('path'))}"))
        if name in names:
            raise UserError(f"two sources are named {name!r}; give one a name=...")
        names.add(name)
        if res.labels:
            label_sets[name] = res.labels
        fixed.update(res.fixed_split)
        for it in tqdm(res.items, desc=f"build: {name}", unit="item", leave=False, disable=None):
            if isinstance(it, BadItem):
                skips.handle(it)
                continue
            try:
                records.append(validate(it, cfg.check_images))
            except BadItem as e:
                skips.handle(e)
    records, cleaned = clean(records, cfg)
    if cfg.clip_filter:
        from medadapt.instruct.filters import apply_clip_filters
        records, dropped = apply_clip_filters(records, cfg.clip_filter)
        cleaned.update(dropped)
    if not records:
        raise UserError("no items left after reading and cleaning the sources "
                        f"(skipped: {dict(skips.counts)}, cleaned: {dict(cleaned)})")
    assign_splits(records, cfg.split, cfg.seed, fixed)
    if cfg.image_paths not in ("absolute", "relative"):
        raise UserError(f"image_paths must be absolute or relative, got {cfg.image_paths!r}")
    out.mkdir(parents=True, exist_ok=True)  # --out as the user named it
    for sub in ("llamafactory", "swift"):
        if (out / sub).is_symlink():
            make_dir(out / sub)  # refused in one line: never written through
    if cfg.image_paths == "relative":
        for r in records:
            r.images = [os.path.relpath(p, out) for p in r.images]
    st = stats(records, skips.counts, cleaned)
    write_jsonl(out / "data.jsonl", [r.to_json() for r in records])
    splits = {s: [r for r in records if r.split == s] for s in SPLITS}
    for s, recs in splits.items():
        write_jsonl(out / f"{s}.jsonl", [r.to_json() for r in recs])
    write_json(out / "labels.json", label_sets)
    write_json(out / "stats.json", st)
    write_text(out / "stats.md", stats_markdown(st))
    write_text(out / "build_config.yaml", yaml.safe_dump({"build": to_dict(cfg)}, sort_keys=False))
    for name in cfg.export:
        if name not in EXPORTERS:
            raise UserError(f"unknown exporter {name!r}; valid: {', '.join(EXPORTERS)}")
        EXPORTERS[name](splits, out, cfg.name)
    return st
