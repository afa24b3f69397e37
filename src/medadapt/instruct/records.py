"""The instruction record: ChatML ``messages`` + ``images``, and its JSONL reader / writer.

One record per line (PathInsight, Wu et al., Section 2.1: every source is turned into ChatML
instructions; a single round is ``User: <img>P_v</img> P_q`` / ``Assistant: P_d``)::

    {"id": "crc/ADI-TCGA-EENSRDNW", "task": "classification", "source": "crc", "split": "train",
     "messages": [{"role": "user", "content": "<image>\\nWhat tissue type is shown?"},
                  {"role": "assistant", "content": "Adipose tissue."}],
     "images": ["/data/crc/ADI/ADI-TCGA-EENSRDNW.png"], "label": "ADI"}

The ``<image>`` placeholder marks where each image goes (one placeholder per entry of
``images``, in order) -- the convention LLaMA-Factory and ms-swift use too. Relative image paths
are resolved against the folder of the JSONL file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from medadapt.errors import UserError

IMAGE_PLACEHOLDER = "<image>"
ROLES = ("system", "user", "assistant")
TASKS = ("classification", "caption", "vqa", "conversation")


class BadItem(UserError):
    """One bad input item; ``reason`` is a short key used to count skipped items."""

    def __init__(self, where: str, message: str, reason: str):
        super().__init__(f"{where}: {message}")
        self.reason = reason


@dataclass
class Record:
    """One instruction item (see module docstring for the JSONL form)."""

    id: str
    messages: list[dict[str, str]]
    images: list[str] = field(default_factory=list)
    task: str = "conversation"
    source: str = ""
    split: str = ""
    label: str | None = None
    where: str = ""  # "file:line" the item came from, for error messages (not serialised)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "task": self.task, "source": self.source}
        if self.split:
            out["split"] = self.split
        out["messages"] = self.messages
        out["images"] = self.images
        if self.label is not None:
            out["label"] = self.label
        return out

    @property
    def answer(self) -> str:
        """The last assistant message (the reference for evaluation)."""
        return self.messages[-1]["content"]


def validate(rec: Record, check_images: bool = True) -> Record:
    """Check roles, non-empty turns, placeholder count and image files; raise :class:`BadItem`."""
    where = rec.where or rec.id
    if not rec.messages:
        raise BadItem(where, "item has no messages", "no_messages")
    for m in rec.messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise BadItem(where, "each message needs 'role' and 'content'", "malformed")
        if m["role"] not in ROLES:
            raise BadItem(where, f"unknown role {m['role']!r} (expected one of {', '.join(ROLES)})",
                          "unknown_role")
        if not isinstance(m["content"], str):
            raise BadItem(where, f"content of a {m['role']} message must be a string", "malformed")
        if not m["content"].strip():
            what = "answer" if m["role"] == "assistant" else f"{m['role']} message"
            raise BadItem(where, f"empty {what}", "empty_answer" if m["role"] == "assistant"
                          else "empty_message")
    body = [m for m in rec.messages if m["role"] != "system"]
    if any(m["role"] == "system" for m in rec.messages[1:]):
        raise BadItem(where, "a system message may only come first", "malformed")
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise BadItem(where, f"turn {i + 1} is {m['role']!r}, expected {want!r} "
                          "(turns must alternate user/assistant)", "malformed")
    if not body or body[-1]["role"] != "assistant":
        raise BadItem(where, "the last message must be an assistant answer", "empty_answer")
    n_ph = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in rec.messages)
    if n_ph != len(rec.images):
        raise BadItem(where, f"{n_ph} {IMAGE_PLACEHOLDER} placeholder(s) but {len(rec.images)} "
                      "image(s)", "malformed")
    if any(IMAGE_PLACEHOLDER in m["content"] for m in rec.messages if m["role"] == "assistant"):
        raise BadItem(where, f"{IMAGE_PLACEHOLDER} may only appear in user messages", "malformed")
    if rec.task not in TASKS:
        raise BadItem(where, f"unknown task {rec.task!r} (expected one of {', '.join(TASKS)})",
                      "malformed")
    if check_images:
        for p in rec.images:
            if not os.path.isfile(p):
                raise BadItem(where, f"image not found: {p}", "missing_image")
    return rec


def record_from_json(obj: Any, where: str, base_dir: Path | None = None) -> Record:
    """Build a :class:`Record` from a parsed JSON object (no validation beyond the shape)."""
    if not isinstance(obj, dict):
        raise BadItem(where, "expected a JSON object", "malformed")
    msgs = obj.get("messages")
    if not isinstance(msgs, list):
        raise BadItem(where, "missing 'messages' list", "malformed")
    images = obj.get("images") or []
    if isinstance(images, str):
        images = [images]
    if base_dir is not None:
        images = [p if os.path.isabs(p) else str((base_dir / p)) for p in images]
    return Record(id=str(obj.get("id", where)), messages=msgs, images=list(images),
                  task=obj.get("task", "conversation"), source=obj.get("source", ""),
                  split=obj.get("split", ""), label=obj.get("label"), where=where)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed_object)``; a malformed line raises :class:`BadItem`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                yield n, BadItem(f"{path}:{n}", f"malformed JSON line ({e.msg} at column {e.colno})",
                                 "malformed_json")
            except RecursionError:
                yield n, BadItem(f"{path}:{n}", "malformed JSON line (nested too deeply)",
                                 "malformed_json")


def read_records(path: str | Path, check_images: bool = True, skip_bad: bool = False,
                 skipped: dict[str, int] | None = None) -> list[Record]:
    """Read and validate a ChatML JSONL file. Bad lines raise, or are counted into ``skipped``."""
    path = Path(path)
    out = []
    for n, obj in iter_jsonl(path):
        try:
            if isinstance(obj, BadItem):
                raise obj
            out.append(validate(record_from_json(obj, f"{path}:{n}", path.parent), check_images))
        except BadItem as e:
            if not skip_bad:
                raise
            if skipped is not None:
                skipped[e.reason] = skipped.get(e.reason, 0) + 1
    return out


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write rows atomically (temp file + rename), so no half-written file is ever left."""
    from medadapt.safeio import replacing
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:  # never through a link
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_json(path: str | Path, obj: Any) -> None:
    """Write one JSON document atomically."""
    from medadapt.safeio import replacing
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:  # never through a link
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def split_content(content: str) -> list[dict[str, str]]:
    """``"<image>\\nWhat is this?"`` -> ``[{"type": "image"}, {"type": "text", "text": "What is this?"}]``.

    This is the structured form that Hugging Face processors' chat templates expect; each model's
    template then writes its own image tokens (LLaVA ``<image>``, Qwen2-VL
    ``<|vision_start|><|image_pad|><|vision_end|>``, ...).
    """
    parts: list[dict[str, str]] = []
    pieces = content.split(IMAGE_PLACEHOLDER)
    for i, text in enumerate(pieces):
        if i > 0:
            parts.append({"type": "image"})
        text = text.strip()
        if text:
            parts.append({"type": "text", "text": text})
    return parts
