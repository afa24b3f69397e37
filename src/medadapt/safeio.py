"""Files from others are data, never code (docs/safety.md, "Files from others").

Small, dependency-free helpers every reader and writer of user-facing folders shares:

- writing: :func:`write_text` / :func:`write_bytes` / :func:`replacing`
  (a fresh temporary file made with ``mkstemp`` beside the target, renamed over it: a symbolic
  link in the way is refused, never followed), :func:`append_text` (``O_NOFOLLOW``),
  :func:`make_dir` / :func:`check_no_links` (refuse a folder that is a link),
  :func:`save_figure` (user text drawn literally, never as mathtext);
- names: :func:`check_name` (a name that becomes part of a file name);
- bounded reading: :func:`load_yaml` / :func:`bounded_loader` (alias / node / depth budget: no
  billion laughs), :func:`read_capped` (size), :func:`short` / :func:`one_line` (a value or a
  message cut for an error line);
- no remote code: :func:`refuse_remote_code` (a model folder or config that asks transformers /
  open_clip to import Python code from it is refused);
- data roots: :func:`inside_root` (a relative path from a data set's own files resolves under its
  root, or is refused).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

from medadapt.errors import UserError

# ------------------------------------------------------------------------------------------------
# values in messages


def short(value, limit: int = 200) -> str:
    """``repr(value)`` cut to about ``limit`` characters (a hostile value can be megabytes)."""
    n = None
    if isinstance(value, str) and len(value) > limit:
        n, value = len(value), value[:limit]
    try:
        r = repr(value)
    except RecursionError:
        return "<too deeply nested>"
    if len(r) > limit or n is not None:
        r = r[:limit - 20] + f"... ({n or len(r)} characters)"
    return r


def one_line(msg: str, limit: int = 2000) -> str:
    """An error message as one line of at most ~``limit`` characters (a user value quoted in it
    may hold newlines or be megabytes long)."""
    msg = msg.replace("\r", " ").replace("\n", " ")
    return msg if len(msg) <= limit else msg[:limit] + f"... ({len(msg)} characters)"


# ------------------------------------------------------------------------------------------------
# names that become file names

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(name, what: str) -> str:
    """``name`` may become part of a file or folder name: letters, digits, ``.``, ``_``, ``-``,
    starting with a letter or digit, at most 100 characters, no ``..``."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise UserError(f"{what} {short(name, 80)} is not a plain name (letters, digits, '.', '_', "
                        "'-', starting with a letter or digit, at most 100 characters, no '..'); "
                        "it becomes a file name")
    return name


# ------------------------------------------------------------------------------------------------
# writing without following links

def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; medadapt never writes through a link "
                        "(remove the link or choose another folder)")


def check_no_links(root: str | Path, path: str | Path) -> None:
    """Refuse a symbolic link at ``path`` or at any folder between ``root`` (which the user
    named, and may be a link) and ``path``."""
    root, path = Path(root), Path(path)
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
        root = path.parent
    p = root
    for part in rel.parts:
        p = p / part
        _refuse_link(p)


def make_dir(path: str | Path, root: str | Path | None = None) -> Path:
    """``mkdir -p`` that refuses when ``path`` itself (or a folder between ``root`` and it) is a
    symbolic link (a folder planted as a link would send every file written into it elsewhere)."""
    path = Path(path)
    _refuse_link(path)
    if root is not None:
        check_no_links(root, path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{path} exists and is not a folder") from None
    return path


@contextlib.contextmanager
def replacing(path: str | Path):
    """Yields the name of a fresh temporary file beside ``path`` (same suffix, so a writer that
    picks the format from it works); renamed over ``path`` when the block succeeds, removed when
    it fails. A symbolic link at ``path`` is refused; the temporary file is created with
    ``O_EXCL`` (``mkstemp``), so no link is ever followed."""
    path = Path(path)
    _refuse_link(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; medadapt wanted to write a file there")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                               dir=str(path.parent))
    os.close(fd)
    try:
        yield tmp
        _refuse_link(path)  # planted while we wrote: still replaced, never followed
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with replacing(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    write_bytes(path, text.encode(encoding))


def append_text(path: str | Path, text: str) -> None:
    """Append to ``path`` (created if absent) without following a symbolic link."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(str(path), flags, 0o644)
    except OSError:
        if Path(path).is_symlink():
            raise UserError(f"{path} is a symbolic link; medadapt never writes through a link "
                            "(remove the link or choose another folder)") from None
        raise
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(text)


# ------------------------------------------------------------------------------------------------
# bounded reading

MAX_CONFIG_BYTES = 16 << 20  # a YAML / JSON settings or table file; real ones are kilobytes
MAX_DEPTH = 100
MAX_YAML_NODES = 1_000_000


def read_capped(path: str | Path, what: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > limit:
            raise UserError(f"{what} {p} is {size / 2**20:.1f} MiB; a settings / table file above "
                            f"{limit >> 20} MiB is refused")
        with open(p, "rb") as fh:
            return fh.read(limit + 1)[:limit]
    except UserError:
        raise
    except OSError as e:
        raise UserError(f"cannot read {what} {p}: {e.strerror or e}") from None


def bounded_loader(base):
    """A subclass of the YAML loader ``base`` that refuses more than ``MAX_YAML_NODES`` nodes
    built from aliases (billion laughs: a few nested aliases that expand to gigabytes) and
    nesting deeper than ``MAX_DEPTH``."""
    import yaml

    class _Bounded(base):
        def compose_node(self, parent, index):
            depth = getattr(self, "_depth", 0) + 1
            if depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels")
            self._depth = depth
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth = depth - 1

        def construct_document(self, node):
            # count the values the document expands to: an alias counts each time it is used
            sizes: dict = {}
            busy: set = set()
            stack = [(node, False)]
            while stack:
                n, done = stack.pop()
                if id(n) in sizes:
                    continue
                kids = n.value if isinstance(n, yaml.SequenceNode) else \
                    [x for kv in n.value for x in kv] if isinstance(n, yaml.MappingNode) else []
                if done:
                    busy.discard(id(n))
                    s = 1 + sum(sizes[id(c)] for c in kids)
                    if s > MAX_YAML_NODES:
                        raise yaml.YAMLError(f"expands to more than {MAX_YAML_NODES} values "
                                             "(nested aliases)")
                    sizes[id(n)] = s
                    continue
                if id(n) in busy:
                    raise yaml.YAMLError("an alias refers to itself (a recursive structure)")
                busy.add(id(n))
                stack.append((n, True))
                for c in kids:
                    if id(c) in busy:
                        raise yaml.YAMLError("an alias refers to itself (a recursive structure)")
                    if id(c) not in sizes:
                        stack.append((c, False))
            return super().construct_document(node)

    _Bounded.__name__ = f"Bounded{base.__name__}"
    _Bounded._medadapt_bounded = True
    return _Bounded


_SAFE = None


def load_yaml(text: str, loader=None):
    """``yaml.load`` with the bounded form of ``loader`` (default ``SafeLoader``); raises
    ``yaml.YAMLError`` for a budget overrun like for any other YAML error."""
    import yaml
    global _SAFE
    if loader is None:
        if _SAFE is None:
            _SAFE = bounded_loader(yaml.SafeLoader)
        loader = _SAFE
    elif not getattr(loader, "_medadapt_bounded", False):
        loader = bounded_loader(loader)
    if len(text) > MAX_CONFIG_BYTES:
        raise yaml.YAMLError(f"text of {len(text)} characters is above {MAX_CONFIG_BYTES >> 20} MiB")
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def safe_yaml(text: str, what: str):
    """:func:`load_yaml` with every problem as one ``UserError`` naming ``what``."""
    import yaml
    try:
        return load_yaml(text)
    except yaml.YAMLError as e:
        raise UserError(f"{what}: invalid YAML ({short(str(e).splitlines()[0] if str(e) else '', 160)})") \
            from None


# ------------------------------------------------------------------------------------------------
# no remote code

REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code", "custom_pipelines")


def _remote_code_key(obj) -> str | None:
    stack = [(obj, 0)]
    while stack:
        o, d = stack.pop()
        if d > MAX_DEPTH:
            continue
        if isinstance(o, dict):
            for k, v in o.items():
                if k in REMOTE_CODE_KEYS and v:  # trust_remote_code: false is harmless
                    return k
                stack.append((v, d + 1))
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return None


def refuse_remote_code_in(cfg, where: str) -> None:
    """Refuse a config (a parsed JSON dict) that asks to import code (``auto_map``,
    ``trust_remote_code: true``)."""
    key = _remote_code_key(cfg)
    if key:
        raise UserError(f"{where} asks to run Python code shipped with the model ({key!r}); "
                        "medadapt never runs code from model folders or configs (no published "
                        "model it supports needs it); use a model folder without custom code")


def refuse_remote_code(folder: str | Path | None, what: str = "model folder") -> None:
    """Refuse a model folder whose JSON configs ask transformers / open_clip to import Python
    code (``auto_map``, ``trust_remote_code: true``, ``custom_pipelines``)."""
    if folder is None:
        return
    folder = Path(folder)
    if not folder.is_dir():
        return
    for f in sorted(folder.glob("*.json")):
        try:
            if f.stat().st_size > MAX_CONFIG_BYTES:
                continue  # e.g. tokenizer.json: no code keys are read from it
            data = json.loads(f.read_text(encoding="utf-8", errors="replace"))
        except (OSError, ValueError, RecursionError):
            continue
        refuse_remote_code_in(data, f"{what} {folder}: {f.name}")


# ------------------------------------------------------------------------------------------------
# data roots

def inside_root(root: str | Path, rel, what: str) -> str:
    """``rel``, a path read from a data set's own files (a split file, ``meta.csv``, an XML
    ``<filename>``), checked to stay under the data set's folder ``root``: relative, no ``..``
    part, no drive letter. The rule is on the text, so a data set whose image folder is itself a
    link to another disk keeps working. Returns ``rel`` with ``/`` separators."""
    s = str(rel).replace("\\", "/") if isinstance(rel, str) else None
    if not s or s.startswith("/") or re.match(r"^[A-Za-z]:", s) or "\x00" in s \
            or ".." in s.split("/"):
        raise UserError(f"{what}: path {short(rel, 120)} must be relative and inside the data set "
                        f"folder {root} (no '..', not absolute); refused")
    return s


# ------------------------------------------------------------------------------------------------
# figures

def save_figure(fig, path: str | Path, **kw) -> Path:
    """``fig.savefig`` for figures that show user data (class names, method labels, table
    names): every text is drawn literally (``$...$`` is not parsed as mathtext, no TeX), and the
    file is written through :func:`replacing` (a link in the way is refused)."""
    import matplotlib
    from matplotlib.text import Text
    path = Path(path)
    kw.setdefault("format", path.suffix.lstrip(".") or "png")
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        for t in fig.findobj(Text):
            t.set_parse_math(False)
            t.set_usetex(False)
        with replacing(path) as tmp:
            fig.savefig(tmp, **kw)
    return path
