"""Source adapters: each turns one on-disk data layout into instruction :class:`Record` s.

PathInsight (Wu et al., Section 2.1, Table 1) mixes four kinds of source; each is one small
adapter here, registered by kind:

========================  ==================================================================
``class-folder``          one sub-folder per class (CRC-VAL-HE-7K, ...): "What tissue type is
                          shown?" with the class as answer, several phrasings
``class-csv``             CSV ``image,label`` (PCam exported to files, ...)
``caption-csv``           CSV ``image,caption``: a description request drawn at random from a
                          list of queries (Section 2.1: "the query ... is randomly extracted from
                          a series of questions")
``pathvqa``               PathVQA in the LXMERT layout (``pvqa_{train,val,test}.json``) + an image
                          folder with ``<img_id>.<ext>``
``vqa-csv``               CSV ``image,question,answer``
``llava-med``             LLaVA-Med-instruct JSON / JSONL (``conversations`` with ``from``
                          human / gpt), multi-turn
``chatml``                medadapt's own JSONL (already ``messages`` + ``images``)
========================  ==================================================================

An adapter returns items; an item that cannot be read is returned as a :class:`BadItem` (with
``file:line``), so the builder can raise it or skip and count it (``--skip-bad``).
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from medadapt.errors import UserError
from medadapt.instruct import labels as L
from medadapt.instruct.records import IMAGE_PLACEHOLDER, BadItem, Record, iter_jsonl, record_from_json

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
               "system": "system"}


@dataclass
class SourceResult:
    items: list[Record | BadItem]
    labels: dict[str, Any] | None = None  # label set, for classification sources
    fixed_split: dict[str, str] = field(default_factory=dict)  # record id -> split from the source


ADAPTERS: dict[str, Callable[[dict[str, Any], random.Random], SourceResult]] = {}
OPTIONS: dict[str, str] = {}  # kind -> one-line help on its options


def register(kind: str, options: str):
    def deco(fn):
        ADAPTERS[kind] = fn
        OPTIONS[kind] = options
        return fn
    return deco


def parse_spec(text: str) -> dict[str, Any]:
    """``"kind=pathvqa,path=pvqa_test.json,images=imgs,limit=20"`` -> dict (values typed)."""
    spec: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise UserError(f"--source {text!r}: expected comma-separated key=value pairs, "
                            f"got {part!r} (e.g. kind=class-folder,path=DIR)")
        k, v = part.split("=", 1)
        spec[k.strip()] = _typed(v.strip())
    return spec


def _typed(v: str) -> Any:
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    try:
        return int(v)
    except ValueError:
        return v


def run_source(spec: dict[str, Any], rng: random.Random) -> tuple[str, SourceResult]:
    """Check ``spec`` and run its adapter; returns ``(source_name, result)``."""
    kind = spec.get("kind")
    if kind not in ADAPTERS:
        raise UserError(f"unknown source kind {kind!r}; valid: {', '.join(ADAPTERS)}")
    if "path" not in spec:
        raise UserError(f"source {kind!r} needs path=...")
    path = Path(str(spec["path"])).expanduser()
    if not path.exists():
        raise UserError(f"source {kind!r}: path not found: {path}")
    spec = dict(spec, path=path)
    spec.setdefault("name", path.stem if path.is_file() else path.name)
    try:
        res = ADAPTERS[kind](spec, rng)
    except UnicodeDecodeError as e:
        raise UserError(f"source {kind!r}: {path} is not UTF-8 text (byte {e.start}); a binary "
                        "file, or save it as UTF-8") from None
    except csv.Error as e:
        raise UserError(f"source {kind!r}: {path}: malformed CSV ({e})") from None
    except IsADirectoryError:
        raise UserError(f"source {kind!r}: {path} is a folder; this kind reads a file") from None
    except NotADirectoryError:
        raise UserError(f"source {kind!r}: {path} is a file; this kind reads a folder") from None
    limit = spec.get("limit")
    if limit:
        res.items = res.items[: int(limit)]
    for it in res.items:
        if isinstance(it, Record):
            it.source = spec["name"]
            it.id = f"{spec['name']}/{it.id}"
    if spec.get("split"):
        res.fixed_split = {it.id: str(spec["split"]) for it in res.items if isinstance(it, Record)}
    return spec["name"], res


def _single_turn(rid: str, image: str | None, query: str, answer: str, task: str, where: str,
                 label: str | None = None) -> Record:
    user = f"{IMAGE_PLACEHOLDER}\n{query}" if image else query
    return Record(id=rid, task=task, label=label, where=where,
                  images=[image] if image else [],
                  messages=[{"role": "user", "content": user},
                            {"role": "assistant", "content": answer}])


def _classification_items(rows: list[tuple[str, str, str]], spec: dict[str, Any],
                          rng: random.Random) -> SourceResult:
    """rows: (image path, class code, where)."""
    codes = sorted({c for _, c, _ in rows})
    ls = L.label_set(spec.get("labels"), codes)
    prompts = ls["prompts"]
    template = spec.get("answer_template", "{name}")
    options = spec.get("options_in_prompt", False)
    items: list[Record | BadItem] = []
    for img, code, where in rows:
        q = rng.choice(prompts)
        if options:
            q += " Answer with one of: " + ", ".join(ls["classes"][c]["name"] for c in codes) + "."
        name = ls["classes"][code]["name"]
        ans = template.format(name=name[:1].upper() + name[1:], code=code)
        items.append(_single_turn(Path(img).stem, img, q, ans, "classification", where, label=code))
    return SourceResult(items, labels=ls)


@register("class-folder", "path=DIR (one sub-folder per class), labels=crc|pcam (names and "
          "synonyms; default: folder names), limit_per_class=N, options_in_prompt=false, "
          "answer_template={name}")
def class_folder(spec: dict[str, Any], rng: random.Random) -> SourceResult:
    root: Path = spec["path"]
    if not root.is_dir():
        raise UserError(f"class-folder: {root} is not a folder")
    per_class = spec.get("limit_per_class")
    rows = []
    for cdir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in cdir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if per_class:
            files = files[: int(per_class)]
        rows += [(str(f.resolve()), cdir.name, str(f)) for f in files]
    if not rows:
        raise UserError(f"class-folder: no images ({', '.join(IMAGE_EXTS)}) in sub-folders of {root}")
    return _classification_items(rows, spec, rng)


def _read_csv(path: Path, needed: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}:1: missing column(s) {', '.join(missing)}; "
                            f"found {', '.join(reader.fieldnames or [])}")
        for row in reader:
            yield f"{path}:{reader.line_num}", row


def _resolve(path: Path, image: str, root: Any) -> str:
    base = Path(str(root)) if root else path.parent
    p = Path(image)
    return str(p if p.is_absolute() else (base / p).resolve())


@register("class-csv", "path=FILE.csv with columns image,label (image_col=, label_col=), "
          "image_root=DIR (default: CSV folder), labels=crc|pcam, options_in_prompt=false")
def class_csv(spec: dict[str, Any], rng: random.Random) -> SourceResult:
    ic, lc = spec.get("image_col", "image"), spec.get("label_col", "label")
    rows = [(_resolve(spec["path"], r[ic], spec.get("image_root")), str(r[lc]).strip(), where)
            for where, r in _read_csv(spec["path"], [ic, lc])]
    return _classification_items(rows, spec, rng)


@register("caption-csv", "path=FILE.csv with columns image,caption (image_col=, caption_col=), "
          "image_root=DIR; the request is drawn at random from the caption queries")
def caption_csv(spec: dict[str, Any], rng: random.Random) -> SourceResult:
    ic, cc = spec.get("image_col", "image"), spec.get("caption_col", "caption")
    items: list[Record | BadItem] = []
    for i, (where, r) in enumerate(_read_csv(spec["path"], [ic, cc])):
        img = _resolve(spec["path"], r[ic], spec.get("image_root"))
        items.append(_single_turn(f"{i:06d}-{Path(r[ic]).stem}", img, rng.choice(L.CAPTION_QUERIES),
                                  (r[cc] or "").strip(), "caption", where))
    return SourceResult(items)


@register("vqa-csv", "path=FILE.csv with columns image,question,answer, image_root=DIR")
def vqa_csv(spec: dict[str, Any], rng: random.Random) -> SourceResult:
    items: list[Record | BadItem] = []
    for i, (where, r) in enumerate(_read_csv(spec["path"], ["image", "question", "answer"])):
        img = _resolve(spec["path"], r["image"], spec.get("image_root"))
        items.append(_single_turn(f"{i:06d}", img, (r["question"] or "").strip(),
                                  (r["answer"] or "").strip(), "vqa", where))
    return SourceResult(items)


def iter_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, element)`` for each element of a top-level JSON array, with real line numbers.

    A syntax error raises :class:`BadItem` naming the file and line.
    """
    text = path.read_text(encoding="utf-8")
    dec = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if not text[pos:pos + 1] == "[":
        raise BadItem(f"{path}:{text.count(chr(10), 0, pos) + 1}", "expected a JSON array", "malformed_json")
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise BadItem(f"{path}:{text.count(chr(10)) + 1}", "unterminated JSON array", "malformed_json")
        if text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise BadItem(f"{path}:{e.lineno}", f"malformed JSON ({e.msg} at column {e.colno})",
                          "malformed_json") from None
        yield line, obj


def _find_image(folder: Path, stem: str) -> str:
    for ext in IMAGE_EXTS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return str(p.resolve())
    return str(folder / f"{stem}.jpg")  # reported as missing by validation


@register("pathvqa", "path=pvqa_SPLIT.json or the folder holding pvqa_{train,val,test}.json, "
          "images=DIR with <img_id>.jpg/.png (default: images/ beside the JSON), "
          "keep_split=true (use the file's split)")
def pathvqa(spec: dict[str, Any], rng: random.Random) -> SourceResult:
    path: Path = spec["path"]
    files = sorted(path.glob("pvqa_*.json")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"pathvqa: no pvqa_*.json in {path}")
    img_dir = Path(str(spec.get("images", (path if path.is_dir() else path.parent) / "images")))
    items: list[Record | BadItem] = []
    fixed: dict[str, str] = {}
    for f in files:
        split = f.stem.replace("pvqa_", "")
        split = {"train": "train", "val": "val", "valid": "val", "test": "test"}.get(split, "")
        try:
            for line, entry in iter_json_array(f):
                where = f"{f}:{line}"
                try:
                    qs = entry["sentf"]["pvqa"]
                    ans = entry["labelf"]["pvqa"]
                    img_id = entry["img_id"]
                except (KeyError, TypeError):
                    items.append(BadItem(where, "expected {img_id, sentf: {pvqa}, labelf: {pvqa}}",
                                         "malformed"))
                    continue
                img = _find_image(img_dir, img_id)
                for k, (q, a) in enumerate(zip(qs, ans)):
                    answer = max(a.items(), key=lambda kv: kv[1])[0] if a else ""
                    rec = _single_turn(f"{img_id}-{k}", img, str(q).strip(), str(answer).strip(),
                                       "vqa", where)
                    items.append(rec)
                    if split and spec.get("keep_split", True):
                        fixed[f"{spec['name']}/{rec.id}"] = split
        except BadItem as e:
            items.append(e)
    return SourceResult(items, fixed_split=fixed)


def _llava_record(obj: Any, where: str, img_dir: Path) -> Record | BadItem:
    if not isinstance(obj, dict) or not isinstance(obj.get("conversations"), list):
        return BadItem(where, "expected an object with a 'conversations' list", "malformed")
    msgs = []
    for turn in obj["conversations"]:
        role = turn.get("from", turn.get("role")) if isinstance(turn, dict) else None
        if role not in LLAVA_ROLES:
            return BadItem(where, f"unknown role {role!r} (expected human or gpt)", "unknown_role")
        value = turn.get("value", turn.get("content"))
        if value is None:  # a missing or null turn is bad input, never the string "None"
            what = "answer" if LLAVA_ROLES[role] == "assistant" else "question"
            return BadItem(where, f"missing or null {what}",
                           "empty_answer" if what == "answer" else "empty_message")
        msgs.append({"role": LLAVA_ROLES[role], "content": str(value)})
    images = obj.get("image") or obj.get("images") or []
    images = [images] if isinstance(images, str) else list(images)
    images = [str(p) if Path(p).is_absolute() else str((img_dir / p).resolve()) for p in images]
    n_ph = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in msgs)
    if images and n_ph == 0:
        first = next((m for m in msgs if m["role"] == "user"), None)
        if first is not None:
            first["content"] = IMAGE_PLACEHOLDER + "\n" + first["content"]
    for m in msgs:  # LLaVA writes "<image>\n" or "\n<image>"; normalise to the front
        if IMAGE_PLACEHOLDER in m["content"]:
            n = m["content"].count(IMAGE_PLACEHOLDER)
            rest = m["content"].replace(IMAGE_PLACEHOLDER, "").strip()
            m["content"] = (IMAGE_PLACEHOLDER + "\n") * n + rest
    rid = str(obj.get("id", where.rsplit(":", 1)[-1]))
    task = "conversation"  # free-text answers, single- or multi-turn: scored as text, never by exact match
    return Record(id=rid, messages=msgs, images=images, task=task, where=where)


@register("llava-med", "path=FILE.json (array) or FILE.jsonl in the LLaVA-Med-instruct layout "
          "{id, image, conversations: [{from: human|gpt, value}]}, images=DIR (default: JSON folder)")
def llava_med(spec: dict[str, Any], rng: random.Random) -> SourceResult:
    path: Path = spec["path"]
    img_dir = Path(str(spec.get("images", path.parent)))
    items: list[Record | BadItem] = []
    try:
        it = iter_jsonl(path) if path.suffix == ".jsonl" else iter_json_array(path)
        for line, obj in it:
            if isinstance(obj, BadItem):
                items.append(obj)
            else:
                items.append(_llava_record(obj, f"{path}:{line}", img_dir))
    except BadItem as e:
        items.append(e)
    return SourceResult(items)


@register("chatml", "path=FILE.jsonl in medadapt's ChatML form (messages + images); relative "
          "image paths are resolved against the file's folder")
def chatml(spec: dict[str, Any], rng: random.Random) -> SourceResult:
    path: Path = spec["path"]
    items: list[Record | BadItem] = []
    for line, obj in iter_jsonl(path):
        if isinstance(obj, BadItem):
            items.append(obj)
            continue
        try:
            rec = record_from_json(obj, f"{path}:{line}", path.parent)
            rec.id = rec.id.split("/", 1)[-1] if rec.source else rec.id
            items.append(rec)
        except BadItem as e:
            items.append(e)
    return SourceResult(items)
