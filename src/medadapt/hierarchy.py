"""Class-concept hierarchies: which concepts belong to which classes (SCALE, Engelson et al.,
Sec. 2.2: "each concept l belongs to C_l, a set of one or more classes, and each class c is
associated with a set of concepts L_c").

A hierarchy is a YAML or JSON file::

    name: derm7pt
    domain: skin lesion                 # the noun in the prompt template
    template: "a photo of a {domain} with {concept}, which indicates a {class}"
    no_finding: "No finding."           # the negative prompt of the AUC protocol (Sec. 2.3.2)
    classes: [nevus, melanoma]
    concepts:                           # concept -> its classes (one or more) ...
      absent pigmentation: [nevus]
      diffuse irregular pigmentation: melanoma
      left lower lobe:                  # ... or a mapping with more fields
        classes: [atelectasis, consolidation]
        aliases: [LLL]                  # other spellings used in data set concept labels
        text: the left lower lobe       # what {concept} becomes in the prompt
    criteria:                           # optional groups (the 7-point checklist's criteria):
      pigmentation: [absent pigmentation, diffuse irregular pigmentation]

``concepts`` may also be a list of mappings with a ``name`` key. When ``criteria`` is given every
concept belongs to exactly one criterion; the expressions of one criterion are mutually exclusive
(Sec. 2.3.2), so SCALE's softmaxes and the metrics work per criterion.

Validation on load gives one-line :class:`~medadapt.errors.UserError` messages naming the file:
duplicate names (classes, concepts, aliases, YAML/JSON keys), a concept without a class, a concept
naming an unknown class, a class without concepts, a criterion naming an unknown concept, a concept
in two criteria or in none, an unknown placeholder in the template.

Shipped hierarchies live in ``medadapt/data/hierarchies/`` (and the synthetic world's in
``medadapt/synth/hierarchies/``); pass a file name (``derm7pt``, ``padchest-gr.yaml``) or a path.
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from medadapt.errors import UserError
from medadapt.safeio import bounded_loader, short

DEFAULT_TEMPLATE = "a photo of a {domain} with {concept}, which indicates a {class}"
DEFAULT_NO_FINDING = "No finding."
PLACEHOLDERS = {"domain", "concept", "class", "criterion"}
_CONCEPT_KEYS = {"name", "classes", "class", "aliases", "text", "description", "criterion", "umls",
                 "cases"}
_TOP_KEYS = {"name", "description", "domain", "template", "no_finding", "classes", "concepts",
             "criteria", "source", "notes"}
# folders searched for a hierarchy given by name: (package, sub-folder)
SHIPPED = (("medadapt.data", "hierarchies"), ("medadapt.synth", "hierarchies"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (plain YAML silently keeps the last)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise UserError(f"duplicate name {short(key)} (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_UniqueKeyLoader = bounded_loader(_UniqueKeyLoader)  # alias expansion and nesting budgeted


def _json_pairs(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise UserError(f"duplicate name {k!r}")
        out[k] = v
    return out


@dataclass
class Hierarchy:
    """A validated class-concept hierarchy.

    ``combinations`` lists the class-concept combinations h = (class, concept) with the class in
    C_l, ordered by criterion, then concept, then class (the columns of SCALE's Z, Sec. 2.2).
    """

    classes: list[str]
    concepts: list[str]
    concept_classes: dict[str, tuple[str, ...]]
    criteria: dict[str, list[str]] = field(default_factory=dict)
    name: str = ""
    domain: str = "lesion"
    template: str = DEFAULT_TEMPLATE
    no_finding: str = DEFAULT_NO_FINDING
    concept_text: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # lower-case spelling -> concept
    description: str = ""
    source: str = ""

    def __post_init__(self):
        crit_of = {c: k for k, cs in self.criteria.items() for c in cs}
        order = ([c for cs in self.criteria.values() for c in cs] if self.criteria
                 else list(self.concepts))
        self.concept_criterion: dict[str, str | None] = {c: crit_of.get(c) for c in self.concepts}
        self.combinations: list[tuple[str, str]] = [
            (k, c) for c in order for k in self.classes if k in self.concept_classes[c]]
        self.combo_index = {h: i for i, h in enumerate(self.combinations)}
        self._lower_class = {k.lower(): k for k in self.classes}
        self._lower_concept = {c.lower(): c for c in self.concepts}
        self._lower_concept.update(self.aliases)

    # --- lookups --------------------------------------------------------------------------------
    @property
    def group_names(self) -> list[str]:
        """Criterion names, or one unnamed group when the hierarchy has no criteria."""
        return list(self.criteria) if self.criteria else [""]

    def groups(self) -> list[list[int]]:
        """Combination indices per criterion (one group holding all without criteria)."""
        if not self.criteria:
            return [list(range(len(self.combinations)))]
        return [[i for i, (_, c) in enumerate(self.combinations) if self.concept_criterion[c] == g]
                for g in self.criteria]

    def concept_groups(self) -> list[list[int]]:
        """Concept indices (into ``concepts``) per criterion."""
        if not self.criteria:
            return [list(range(len(self.concepts)))]
        pos = {c: i for i, c in enumerate(self.concepts)}
        return [[pos[c] for c in cs] for cs in self.criteria.values()]

    def find_class(self, name: str) -> str | None:
        return self._lower_class.get(str(name).strip().lower())

    def find_concept(self, name: str) -> str | None:
        return self._lower_concept.get(str(name).strip().lower())

    def concept(self, name: str, where: str = "") -> str:
        """Canonical concept name for a data set label, or a ``UserError`` listing the valid ones."""
        c = self.find_concept(name)
        if c is None:
            raise UserError(f"{where}unknown concept {name!r} for hierarchy {self.name or '?'}; "
                            f"valid: {', '.join(self.concepts)}")
        return c

    def classes_of(self, concept: str) -> tuple[str, ...]:
        return self.concept_classes[concept]

    def concepts_of(self, cls: str) -> list[str]:
        return [c for c in self.concepts if cls in self.concept_classes[c]]

    def check_classes(self, classnames: list[str], where: str = "") -> None:
        """Every data set class must be a class of the hierarchy."""
        missing = [c for c in classnames if self.find_class(c) is None]
        if missing:
            raise UserError(f"{where}data set classes {missing} are not in hierarchy "
                            f"{self.name or '?'} (classes: {', '.join(self.classes)})")

    def item_combinations(self, cls: str, concepts, where: str = "") -> list[int]:
        """Combination indices of one item with class ``cls`` and concept labels ``concepts``.

        A concept of the item's class gives (class, concept). A concept that belongs to exactly
        one other class gives (that class, concept): in Derm7pt the expression of a criterion
        says which class it indicates (Table 1), whatever the lesion's diagnosis. A concept of
        several classes none of which is the item's class is an error.
        """
        k = self.find_class(cls) if cls is not None else None
        out = []
        for name in concepts:
            c = self.concept(name, where)
            owners = self.concept_classes[c]
            if k is not None and k in owners:
                h = (k, c)
            elif len(owners) == 1:
                h = (owners[0], c)
            else:
                raise UserError(f"{where}concept {c!r} belongs to classes {list(owners)}, not to "
                                f"the item's class {cls!r}")
            i = self.combo_index[h]
            if i not in out:
                out.append(i)
        return out

    # --- prompts --------------------------------------------------------------------------------
    def prompt(self, cls: str, concept: str, template: str | None = None) -> str:
        t = template or self.template
        return t.format_map({"domain": self.domain, "class": cls,
                             "concept": self.concept_text.get(concept, concept),
                             "criterion": self.concept_criterion.get(concept) or ""})

    def prompts(self, template: str | None = None) -> list[str]:
        """One prompt per combination (the text branch of SCALE, Sec. 2.3.1)."""
        if template is not None:
            check_template(template)
        return [self.prompt(k, c, template) for k, c in self.combinations]

    def combination_names(self) -> list[str]:
        return [f"{c} -> {k}" for k, c in self.combinations]

    # --- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        concepts = {}
        inv_alias: dict[str, list[str]] = {}
        for a, c in self.aliases.items():
            inv_alias.setdefault(c, []).append(a)
        for c in self.concepts:
            d: dict = {"classes": list(self.concept_classes[c])}
            if c in self.concept_text:
                d["text"] = self.concept_text[c]
            if c in inv_alias:
                d["aliases"] = inv_alias[c]
            concepts[c] = d
        out = {"name": self.name, "description": self.description, "domain": self.domain,
               "template": self.template, "no_finding": self.no_finding,
               "classes": list(self.classes), "concepts": concepts}
        if self.criteria:
            out["criteria"] = {k: list(v) for k, v in self.criteria.items()}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def check_template(t: str, where: str = "") -> None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}
    except ValueError as e:
        raise UserError(f"{where}invalid prompt template {t!r} ({e})") from None
    bad = fields - PLACEHOLDERS
    if bad:
        raise UserError(f"{where}prompt template {t!r} has unknown placeholders {sorted(bad)}; "
                        f"valid: {{domain}}, {{concept}}, {{class}}, {{criterion}}")
    if not fields & {"concept", "class"}:
        raise UserError(f"{where}prompt template {t!r} needs {{concept}} or {{class}}")


def _names(x, what: str, where: str) -> list[str]:
    if isinstance(x, str):
        x = [x]
    if not isinstance(x, list) or not all(isinstance(s, (str, int, float)) for s in x):
        raise UserError(f"{where}{what} must be a name or a list of names")
    return [str(s).strip() for s in x]


def from_dict(data: dict, where: str = "") -> Hierarchy:
    """Validate a parsed hierarchy file (see the module docstring for the format)."""
    if not isinstance(data, dict):
        raise UserError(f"{where}a hierarchy must be a mapping with 'classes' and 'concepts'")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise UserError(f"{where}unknown keys {sorted(unknown)}; valid: {sorted(_TOP_KEYS)}")
    for key in ("classes", "concepts"):
        if not data.get(key):
            raise UserError(f"{where}missing or empty {key!r}")
    classes = _names(data["classes"], "'classes'", where)
    seen: dict[str, str] = {}
    for k in classes:
        if not k:
            raise UserError(f"{where}empty class name")
        if k.lower() in seen:
            raise UserError(f"{where}duplicate class name {k!r}")
        seen[k.lower()] = k

    raw = data["concepts"]
    entries: list[tuple[str, object]] = []
    if isinstance(raw, dict):
        entries = [(str(n).strip(), v) for n, v in raw.items()]
    elif isinstance(raw, list):
        for i, e in enumerate(raw):
            if not isinstance(e, dict) or "name" not in e:
                raise UserError(f"{where}concepts[{i}] must be a mapping with 'name' and 'classes'")
            entries.append((str(e["name"]).strip(), e))
    else:
        raise UserError(f"{where}'concepts' must map concept names to their classes")

    concepts: list[str] = []
    concept_classes: dict[str, tuple[str, ...]] = {}
    concept_text: dict[str, str] = {}
    aliases: dict[str, str] = {}
    crit_field: dict[str, str] = {}
    lower_names: dict[str, str] = {}
    for name, v in entries:
        if not name:
            raise UserError(f"{where}empty concept name")
        if name.lower() in lower_names:
            raise UserError(f"{where}duplicate concept name {name!r}")
        lower_names[name.lower()] = name
        if isinstance(v, dict):
            bad = set(v) - _CONCEPT_KEYS
            if bad:
                raise UserError(f"{where}concept {name!r}: unknown keys {sorted(bad)}; valid: "
                                f"{sorted(_CONCEPT_KEYS - {'name'})}")
            owners = v.get("classes", v.get("class"))
            if v.get("text"):
                concept_text[name] = str(v["text"])
            for a in _names(v.get("aliases") or [], f"aliases of concept {name!r}", where):
                if a.lower() in aliases:
                    raise UserError(f"{where}duplicate alias {a!r}")
                aliases[a.lower()] = name
            if v.get("criterion"):
                crit_field[name] = str(v["criterion"])
        else:
            owners = v
        owners = _names(owners or [], f"classes of concept {name!r}", where)
        if not owners:
            raise UserError(f"{where}concept {name!r} has no class (give it one or more of "
                            f"{', '.join(classes)})")
        canon = []
        for k in owners:
            if k.lower() not in seen:
                raise UserError(f"{where}concept {name!r} names unknown class {k!r}; classes: "
                                f"{', '.join(classes)}")
            if seen[k.lower()] in canon:
                raise UserError(f"{where}concept {name!r} names class {k!r} twice")
            canon.append(seen[k.lower()])
        concepts.append(name)
        concept_classes[name] = tuple(canon)
    for a, c in aliases.items():
        if a in lower_names and lower_names[a] != c:
            raise UserError(f"{where}alias {a!r} of concept {c!r} is the name of another concept")

    criteria: dict[str, list[str]] = {}
    raw_crit = data.get("criteria")
    if raw_crit is not None and not isinstance(raw_crit, dict):
        raise UserError(f"{where}'criteria' must map criterion names to lists of concepts")
    if raw_crit:
        owner: dict[str, str] = {}
        for g, cs in raw_crit.items():
            g = str(g).strip()
            members = []
            for c in _names(cs or [], f"concepts of criterion {g!r}", where):
                if c.lower() not in lower_names:
                    raise UserError(f"{where}criterion {g!r} lists unknown concept {c!r}")
                c = lower_names[c.lower()]
                if c in owner:
                    raise UserError(f"{where}concept {c!r} is in two criteria ({owner[c]!r} and "
                                    f"{g!r}); the names must be unique")
                owner[c] = g
                members.append(c)
            if not members:
                raise UserError(f"{where}criterion {g!r} has no concepts")
            criteria[g] = members
        for c, g in crit_field.items():
            if owner.get(c) not in (None, g):
                raise UserError(f"{where}concept {c!r} says criterion {g!r} but is listed under "
                                f"{owner[c]!r}")
        for c, g in crit_field.items():
            if c not in owner:
                if g not in criteria:
                    raise UserError(f"{where}concept {c!r} names unknown criterion {g!r}")
                criteria[g].append(c)
                owner[c] = g
        missing = [c for c in concepts if c not in owner]
        if missing:
            raise UserError(f"{where}concepts {missing} are in no criterion (when 'criteria' is "
                            "given every concept belongs to one)")
    elif crit_field:  # criteria given only per concept
        for c in concepts:
            if c not in crit_field:
                raise UserError(f"{where}concept {c!r} has no criterion while others have one")
            criteria.setdefault(crit_field[c], []).append(c)

    for k in classes:
        if not any(k in concept_classes[c] for c in concepts):
            raise UserError(f"{where}class {k!r} has no concepts (SCALE's class score is the max "
                            "over its concepts, Sec. 2.2)")
    template = str(data.get("template") or DEFAULT_TEMPLATE)
    check_template(template, where)
    return Hierarchy(classes=classes, concepts=concepts, concept_classes=concept_classes,
                     criteria=criteria, name=str(data.get("name") or ""),
                     domain=str(data.get("domain") or "lesion"), template=template,
                     no_finding=str(data.get("no_finding") or DEFAULT_NO_FINDING),
                     concept_text=concept_text, aliases=aliases,
                     description=str(data.get("description") or ""))


def shipped_path(name: str) -> Path | None:
    """A shipped hierarchy file by name (with or without .yaml/.yml/.json)."""
    cands = [name] if Path(name).suffix in (".yaml", ".yml", ".json") else \
        [name + ".yaml", name + ".yml", name + ".json"]
    for pkg, sub in SHIPPED:
        try:
            root = resources.files(pkg).joinpath(sub)
        except ModuleNotFoundError:
            continue
        for c in cands:
            p = Path(str(root.joinpath(c)))
            if p.is_file():
                return p
    return None


def shipped_names() -> list[str]:
    out = []
    for pkg, sub in SHIPPED:
        try:
            root = Path(str(resources.files(pkg).joinpath(sub)))
        except ModuleNotFoundError:
            continue
        if root.is_dir():
            out += sorted(p.stem for p in root.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    return out


def resolve_path(spec: str | Path) -> Path:
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    if len(p.parts) == 1:
        found = shipped_path(str(spec))
        if found:
            return found
    raise UserError(f"hierarchy file not found: {spec} (a path, or a shipped name: "
                    f"{', '.join(shipped_names()) or 'none'})")


def loads(text: str, fmt: str = "yaml", where: str = "") -> Hierarchy:
    try:
        if fmt == "json":
            data = json.loads(text, object_pairs_hook=_json_pairs)
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except UserError as e:
        raise UserError(f"{where}{e}") from None
    except RecursionError:
        raise UserError(f"{where}nested too deeply") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{where}line {e.lineno}: invalid JSON ({e.msg})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{where}invalid YAML ({str(e).splitlines()[0]})") from None
    return from_dict(data, where)


def load_hierarchy(spec: str | Path) -> Hierarchy:
    """Load and validate a hierarchy from a path or a shipped name."""
    p = resolve_path(spec)
    fmt = "json" if p.suffix == ".json" else "yaml"
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read hierarchy {p} ({type(e).__name__})") from None
    h = loads(text, fmt, where=f"{p}: ")
    h.source = str(p)
    if not h.name:
        h.name = p.stem
    return h
