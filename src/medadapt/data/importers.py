"""Read the anchors' class descriptions in their own format, without running their code.

BiomedCoOp keeps its GPT-4 class descriptions as dict literals in ``trainers/prompt_templates.py``
(``BIOMEDCOOP_TEMPLATES = {"glioma tumor": ["...", ...], ...}``, keys are the class names of its
split files; next to it ``CUSTOM_TEMPLATES = {"BTMRI": "a MRI photo of a {}.", ...}``).
:func:`import_python_descriptions` parses such a file with :mod:`ast` and evaluates only literal
nodes (:func:`ast.literal_eval`): nothing in the file is executed or imported.

The result is medadapt's descriptions JSON (``{"meta": {...}, "classes": {name: [sentences]}}``,
see :mod:`medadapt.data.texts`), used with ``--set texts.descriptions=FILE``.
"""
from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

from medadapt.errors import UserError

PREFERRED = ("BIOMEDCOOP_TEMPLATES", "TEMPLATES")  # picked first when a file holds several


def _dict_assignments(tree: ast.Module) -> list[tuple[str, ast.Dict]]:
    out = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out.append((t.id, node.value))
        elif (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
              and isinstance(node.value, ast.Dict)):
            out.append((node.target.id, node.value))
    return out


def _literal(path: Path, node: ast.AST, what: str):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise UserError(f"{path}:{getattr(node, 'lineno', '?')}: {what} is not a literal "
                        "(only strings, lists and dicts are read; nothing is executed)") from None


def _is_descriptions(d: ast.Dict) -> bool:
    """Keys are string literals and every value is a list / tuple display."""
    return bool(d.keys) and all(isinstance(k, ast.Constant) and isinstance(k.value, str)
                                for k in d.keys) \
        and all(isinstance(v, (ast.List, ast.Tuple)) for v in d.values)


def import_python_descriptions(path: str | Path, variable: str | None = None) -> dict:
    """``{"meta": ..., "classes": {class name: [sentences]}}`` from a Python file's dict literal
    ``variable`` (default: ``BIOMEDCOOP_TEMPLATES``, else the only dict of lists of strings).
    Duplicate keys follow Python's rule (the later entry wins) and are listed in the meta."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"descriptions source not found: {p}")
    from medadapt.safeio import read_capped
    raw = read_capped(p, "descriptions source")
    try:
        tree = ast.parse(raw, filename=str(p))
    except (RecursionError, MemoryError):
        raise UserError(f"{p}: nested too deeply to read (nothing is executed)") from None
    except (SyntaxError, ValueError) as e:  # ValueError: NUL bytes (a binary file)
        where = f"{p}:{e.lineno}" if getattr(e, "lineno", None) else str(p)
        raise UserError(f"{where}: not valid Python ({getattr(e, 'msg', None) or e})") from None
    found = _dict_assignments(tree)
    if variable is not None:
        hits = [d for n, d in found if n == variable]
        if not hits:
            names = sorted({n for n, _ in found})
            raise UserError(f"{p}: no dict literal named {variable!r}; dicts in the file: "
                            f"{', '.join(names) or 'none'}")
        name, node = variable, hits[-1]  # the last assignment is the one Python keeps
    else:
        cands = [(n, d) for n, d in found if _is_descriptions(d)]
        if not cands:
            raise UserError(f"{p}: no dict literal of class name -> list of sentences found")
        names = sorted({n for n, _ in cands})
        pref = next((n for n in PREFERRED if n in names), None)
        if pref is None and len(names) > 1:
            raise UserError(f"{p}: several description dicts ({', '.join(names)}); pick one with "
                            "--variable NAME")
        name = pref or names[0]
        node = [d for n, d in cands if n == name][-1]  # the last assignment is the one kept
    if not _is_descriptions(node):
        raise UserError(f"{p}:{node.lineno}: {name} must map class names (strings) to lists of "
                        "sentences")
    classes: dict[str, list[str]] = {}
    duplicates: list[str] = []
    for k, v in zip(node.keys, node.values):
        key = k.value
        sents = _literal(p, v, f"the value of {key!r}")
        if not all(isinstance(s, str) for s in sents):
            raise UserError(f"{p}:{v.lineno}: descriptions of {key!r} must all be strings")
        sents = [" ".join(s.split()) for s in sents if s.strip()]
        if not sents:
            raise UserError(f"{p}:{v.lineno}: class {key!r} has no descriptions")
        if key in classes:
            duplicates.append(key)
        classes[key] = sents
    meta = {"source": p.name, "source_sha256": hashlib.sha256(raw).hexdigest(),
            "variable": name, "n_classes": len(classes),
            "n_descriptions": {k: len(v) for k, v in classes.items()},
            "imported_by": "medadapt descriptions import (ast, not executed)"}
    if duplicates:
        meta["duplicate_keys_later_wins"] = sorted(set(duplicates))
    return {"meta": meta, "classes": classes}


def write_descriptions(data: dict, out: str | Path, overwrite: bool = False) -> Path:
    """Write atomically; an existing file is kept unless ``overwrite``."""
    o = Path(out).expanduser()
    if o.is_dir():
        raise UserError(f"--out {o} is a folder; give a JSON file name")
    if o.exists() and not overwrite:
        raise UserError(f"{o} exists; pass --overwrite to replace it")
    if o.parent and not o.parent.is_dir():
        raise UserError(f"output folder not found: {o.parent}")
    from medadapt.safeio import write_text
    try:
        write_text(o, json.dumps(data, indent=1, ensure_ascii=False) + "\n")  # no-follow
    except OSError as e:
        raise UserError(f"cannot write {o}: {e.strerror or e}") from None
    return o
