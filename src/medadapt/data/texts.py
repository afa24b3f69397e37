"""Class texts: prompt templates per modality and fine-grained class descriptions.

Descriptions files are JSON: ``{"meta": {...how they were written...}, "classes": {name: [sentences]}}``.
Shipped files live in ``medadapt/data/descriptions/``; a user passes their own with
``--set texts.descriptions=PATH``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from medadapt.errors import UserError

# Template sets; the first template of each set is the "single template" for zero-shot.
TEMPLATES: dict[str, list[str]] = {
    "histopathology": [
        "a histopathology image of {}.",
        "a photo of {}.",
        "an H&E stained image of {}.",
        "a microscopic view of {}.",
        "a tissue sample slide of {}.",
        "an H&E image showing {}.",
        "a pathology slide of {}.",
    ],
    "cytology": [
        "a microscopic image of a {}.",
        "a photo of a {}.",
        "a blood smear showing a {}.",
        "a peripheral blood cell image of a {}.",
    ],
    "dermatology": [
        "a dermoscopic image of {}.",
        "a photo of a skin lesion with {}.",
        "a close-up photo of {} on the skin.",
    ],
    "radiology": [
        "a chest x-ray showing {}.",
        "a radiograph of {}.",
        "a photo of {}.",
    ],
    "generic": ["a photo of a {}.", "an image of {}."],
}

DESCRIPTIONS_DIR = "descriptions"


@dataclass
class ClassTexts:
    """Everything a method may know about classes in words."""

    classnames: list[str]
    templates: list[str]
    descriptions: dict[str, list[str]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def prompts(self, template: str | None = None) -> list[str]:
        t = template or self.templates[0]
        return [t.format(c) for c in self.classnames]

    def for_classes(self, names: list[str]) -> "ClassTexts":
        return ClassTexts(list(names), self.templates,
                          {c: self.descriptions[c] for c in names if c in self.descriptions},
                          self.meta)


def read_descriptions(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise UserError(f"descriptions file not found: {p}")
    if p.is_dir():
        raise UserError(f"descriptions file {p} is a folder; give the JSON file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise UserError(f"{p}: invalid JSON (nested too deeply)") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a UTF-8 JSON file") from None
    except OSError as e:
        raise UserError(f"cannot read descriptions file {p}: {e.strerror or e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict):
        raise UserError(f"{p}: descriptions file must be {{\"meta\": {{...}}, \"classes\": "
                        "{name: [sentences]}}")
    for name, sents in data["classes"].items():
        if not isinstance(sents, list) or not sents or not all(isinstance(s, str) and s.strip()
                                                                for s in sents):
            raise UserError(f"{p}: class {name[:120]!r} needs a non-empty list of sentences")
    return data


def shipped_descriptions(filename: str) -> Path:
    # joinpath one part at a time: on a namespace package (no __init__.py) files() returns a
    # MultiplexedPath whose joinpath takes a single argument.
    return Path(str(resources.files("medadapt.data").joinpath(DESCRIPTIONS_DIR).joinpath(filename)))


def load_class_texts(classnames: list[str], template_set: str = "histopathology",
                     descriptions: str | Path | None = None, templates: list[str] | None = None,
                     require_descriptions: bool = False) -> ClassTexts:
    """Build :class:`ClassTexts`; a descriptions file that misses a class is an error naming
    the classes."""
    if templates is None:
        if template_set not in TEMPLATES:
            raise UserError(f"unknown template set {template_set!r}; valid: "
                            f"{', '.join(sorted(TEMPLATES))}")
        templates = TEMPLATES[template_set]
    for t in templates:
        if "{}" not in t:
            raise UserError(f"prompt template {t!r} has no '{{}}' for the class name")
    desc: dict[str, list[str]] = {}
    meta: dict = {}
    if descriptions:
        p = Path(descriptions)
        if not p.exists() and not p.is_absolute() and len(p.parts) == 1:
            p = shipped_descriptions(str(p))
        data = read_descriptions(p)
        meta = data.get("meta", {})
        have = {k.lower(): v for k, v in data["classes"].items()}
        missing = [c for c in classnames if c.lower() not in have]
        if missing:
            raise UserError(f"{p}: descriptions miss classes {missing} "
                            f"(file has: {sorted(data['classes'])})")
        desc = {c: list(have[c.lower()]) for c in classnames}
    elif require_descriptions:
        raise UserError("this method needs class descriptions; pass "
                        "--set texts.descriptions=FILE.json")
    return ClassTexts(list(classnames), list(templates), desc, meta)
