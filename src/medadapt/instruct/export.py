"""Exporters of the built data to other fine-tuning tools' layouts.

* LLaMA-Factory: ``sharegpt`` formatting with OpenAI-style ``messages`` (role / content) and an
  ``images`` column, one JSON array per split plus the ``dataset_info.json`` entries that name
  them (the layout of LLaMA-Factory's own ``mllm_demo`` data set).
* ms-swift: JSONL with ``messages`` and ``images`` per line (its standard multimodal format;
  ``<image>`` marks where each image goes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from medadapt.instruct.records import Record, write_json, write_jsonl


def _row(r: Record) -> dict[str, Any]:
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in r.messages],
            "images": list(r.images)}


def export_llamafactory(splits: dict[str, list[Record]], out: Path, name: str) -> Path:
    """Write ``out/llamafactory/{name}_{split}.json`` and ``dataset_info.json``."""
    from medadapt.safeio import check_name, make_dir
    check_name(name, "build name")  # never a path: it becomes NAME_<split>.json
    folder = make_dir(out / "llamafactory")
    info = {}
    for split, recs in splits.items():
        if not recs:
            continue
        fname = f"{name}_{split}.json"
        write_json(folder / fname, [_row(r) for r in recs])
        info[f"{name}_{split}"] = {
            "file_name": fname, "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant", "system_tag": "system"},
        }
    write_json(folder / "dataset_info.json", info)
    return folder


def export_swift(splits: dict[str, list[Record]], out: Path, name: str) -> Path:
    """Write ``out/swift/{name}_{split}.jsonl`` (pass them to ``swift sft --dataset``)."""
    from medadapt.safeio import check_name, make_dir
    check_name(name, "build name")  # never a path: it becomes NAME_<split>.jsonl
    folder = make_dir(out / "swift")
    for split, recs in splits.items():
        if recs:
            write_jsonl(folder / f"{name}_{split}.jsonl", [_row(r) for r in recs])
    return folder


EXPORTERS = {"llamafactory": export_llamafactory, "swift": export_swift}
