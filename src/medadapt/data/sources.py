"""Data set specs -> :class:`DataSet`.

``folder:PATH`` (one sub-folder per class), ``csv:PATH`` (columns path,label[,split][,concepts]),
``npz:PATH`` (MedMNIST layout), or a registered name (``kather2016``, ``synth-crc``, ...), optionally
with a local root: ``kather2016:/data/Kather_texture_2016_image_tiles_5000``.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np

from medadapt.data.catalog import (DATASETS, IMAGE_EXTS, DatasetInfo,  # noqa: F401 (re-exported)
                                   cache_home, data_home)
from medadapt.data.dataset import (DataSet, Record, array_to_rgb, files_fingerprint, open_rgb,
                                   stratified_split)
from medadapt.data.sets.medmnist import (MEDMNIST_CLASSES, check_npz_file,  # noqa: F401
                                         medmnist_from_npz, npz_records)
from medadapt.errors import UserError

CONCEPT_SEP = ";"


def _ensure_registered() -> None:
    # Import the modules that register data sets (the per-family parsers in medadapt.data.sets,
    # and the synthetic world).
    import importlib
    for mod in ("medadapt.data.sets", "medadapt.synth.datasets"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a module not written yet, not a missing dependency
            if e.name != mod:
                raise


def load_dataset(spec: str, **options) -> DataSet:
    """Resolve a data set spec; every user mistake is a one-line ``UserError``."""
    kind, _, rest = spec.partition(":")
    if options and kind in ("folder", "csv", "npz"):
        raise UserError(f"data set options {sorted(options)} apply to registered data sets, not "
                        f"to {kind}: specs")
    if kind == "folder":
        return from_folder(rest)
    if kind == "csv":
        return from_csv(rest)
    if kind == "npz":
        return from_npz(rest)
    _ensure_registered()
    info = DATASETS.get(kind)
    if rest:
        root = Path(rest)
    elif info.needs_root:
        root = info.default_root()
    else:
        root = None
    if root is not None and not root.exists():
        how = info.manual or "see `medadapt datasets` for the download"
        raise UserError(f"data set {info.name!r} not found at {root}; {how} "
                        f"(or pass {info.name}:PATH, or set MEDADAPT_DATA)")
    ds = info.build(root, **options)
    if root is not None:  # what folder: data sets warn about, for a partial or edited download
        warn_empty_classes(ds, f"{info.name} ({root})")
        warn_thin_classes(ds, f"{info.name} ({root})")
    ds.meta.setdefault("template_set", info.template_set)
    if info.descriptions:
        ds.meta.setdefault("descriptions", info.descriptions)
    if info.hierarchy:
        ds.meta.setdefault("hierarchy", info.hierarchy)
    if info.base_classes:
        ds.meta.setdefault("base_classes", info.base_classes)
    return ds


def data_location(spec: str) -> tuple[str, Path | None]:
    """(name, the path a spec reads) without building the data set; ``None`` for data sets that
    are generated. Unknown names raise the usual one-line error."""
    kind, _, rest = spec.partition(":")
    if kind in ("folder", "csv", "npz"):
        return spec, Path(rest).expanduser() if rest else None
    _ensure_registered()
    info = DATASETS.get(kind)
    if rest:
        return info.name, Path(rest).expanduser()
    return info.name, (info.default_root() if info.needs_root else None)


def _require_dir(path: str, what: str) -> Path:
    if not path:
        raise UserError(f"{what}: missing path (write {what}:PATH)")
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{what} path not found: {p}")
    return p


def pretty_classname(name: str) -> str:
    return name.replace("_", " ").strip()


def warn(msg: str) -> None:
    print(f"medadapt: warning: {msg}", file=sys.stderr)


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def visible_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, skipping hidden files and folders (``.name``,
    e.g. ``.ipynb_checkpoints``, ``.thumbnails``): the same rule for ``fit`` and ``predict``."""
    return sorted(f for f in folder.rglob("*")
                  if f.suffix.lower() in IMAGE_EXTS and not _hidden(f.relative_to(folder))
                  and f.is_file())


def check_class_names(names: list[str], raw: list[str], where: str) -> None:
    """Two raw labels that prettify to one class name would merge two classes: refuse."""
    seen: dict[str, str] = {}
    for n, r in zip(names, raw):
        key = n.lower()
        if key in seen:
            raise UserError(f"{where}: class labels {seen[key]!r} and {r!r} both become the class "
                            f"name {n!r}; rename one of them")
        seen[key] = r


def warn_empty_classes(ds: DataSet, where: str) -> None:
    """A registered data set keeps its fixed class list: a class without a single image (a partial
    download, a deleted folder) is kept but cannot be trained or tested: say so."""
    counts = np.bincount(ds.labels, minlength=ds.num_classes) if len(ds.records) else \
        np.zeros(ds.num_classes, dtype=int)
    for c, name in enumerate(ds.classnames):
        if not counts[c]:
            warn(f"{where}: class {name!r} has no images; it cannot be trained or tested "
                 "(a partial download?)")


def warn_thin_classes(ds: DataSet, where: str) -> None:
    """A class without a test image vanishes from the metrics: say so."""
    if not ds.has_splits():
        return
    counts = np.bincount(ds.labels, minlength=ds.num_classes)
    tests = np.bincount([r.label for r in ds.records if r.split == "test"],
                        minlength=ds.num_classes)
    for c, name in enumerate(ds.classnames):
        if counts[c] and not tests[c]:
            warn(f"{where}: class {name!r} has {counts[c]} image(s) and no test image; it will be "
                 "missing from the test metrics")


def from_folder(path: str, classnames: dict[str, str] | None = None, name: str | None = None,
                split_seed: int = 0) -> DataSet:
    """One sub-folder per class. Optional ``train/val/test`` level above the class folders."""
    root = _require_dir(path, "folder")
    if not root.is_dir():
        raise UserError(f"folder data set must be a directory: {root}")
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_layout = bool(subdirs) and set(subdirs) <= {"train", "val", "test"} and "test" in subdirs
    entries: list[tuple[str, str, str | None]] = []  # (rel path, class folder, split)
    empty: list[str] = []
    if split_layout:
        for split in subdirs:
            for cdir in sorted(d for d in (root / split).iterdir()
                               if d.is_dir() and not d.name.startswith(".")):
                found = visible_images(cdir)
                if not found:
                    empty.append(f"{split}/{cdir.name}")
                for f in found:
                    entries.append((f"{split}/{cdir.name}/{f.relative_to(cdir).as_posix()}",
                                    cdir.name, split))
    else:
        for cname in subdirs:
            found = visible_images(root / cname)
            if not found:
                empty.append(cname)
            for f in found:
                entries.append((f.relative_to(root).as_posix(), cname, None))
    loose = [f.name for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS
             and not f.name.startswith(".")]
    if loose:
        warn(f"{root}: {len(loose)} image(s) directly in the data set folder (e.g. {loose[0]}) "
             "belong to no class folder and are ignored")
    folders = sorted({c for _, c, _ in entries})
    for e in empty:
        if not split_layout or e.partition("/")[2] not in folders:
            warn(f"{root}: class folder {e!r} holds no images ({', '.join(sorted(IMAGE_EXTS))}); "
                 "it is left out of the task")
    if not folders:
        raise UserError(f"no class sub-folders with images found in {root} "
                        f"(expected {root}/<class>/<image>.png)")
    label_of = {c: i for i, c in enumerate(folders)}
    names = [(classnames or {}).get(c, pretty_classname(c)) for c in folders]
    check_class_names(names, folders, str(root))
    splits: list[str | None] = [s for _, _, s in entries]
    if not split_layout:
        labels = np.array([label_of[c] for _, c, _ in entries])
        splits = stratified_split(labels, seed=split_seed)
    records = [Record(id=p, label=label_of[c], split=s) for (p, c, _), s in zip(entries, splits)]
    rootstr = str(root)
    ds = DataSet(name=name or f"folder:{root.name}", classnames=names, records=records,
                 loader=lambda r: open_rgb(os.path.join(rootstr, r.id)),
                 fingerprint=files_fingerprint(rootstr, [r.id for r in records]),
                 root=rootstr, meta={"folders": folders})
    warn_thin_classes(ds, str(root))
    return ds


def _read_csv_rows(f: Path) -> tuple[list[str], list[dict]]:
    try:
        raw = f.read_bytes()
    except IsADirectoryError:
        raise UserError(f"csv: {f} is a folder, not a CSV file") from None
    except OSError as e:
        raise UserError(f"cannot read CSV {f}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")  # Excel writes a UTF-8 BOM
    except UnicodeDecodeError as e:
        raise UserError(f"{f}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
                        "save the CSV as UTF-8 (e.g. Excel: 'CSV UTF-8')") from None
    if "\x00" in text:
        raise UserError(f"{f}: not a text CSV file (NUL bytes)")
    try:
        reader = csv.DictReader(text.splitlines())
        cols = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = cols
        rows = [{k: (v.strip() if isinstance(v, str) else v) for k, v in r.items()}
                for r in reader]
    except csv.Error as e:
        raise UserError(f"{f}: malformed CSV ({e})") from None
    return cols, rows


def from_csv(path: str, name: str | None = None, split_seed: int = 0) -> DataSet:
    """CSV with a header: ``path,label[,split][,concepts][,domain]``; relative paths are relative
    to the CSV's folder, absolute ones may point anywhere the user can read; concepts separated by
    ``;`` (multi-label allowed).

    Refused, each in one line naming the line: an empty path or label, a partial ``split`` column
    (some cells empty: the given splits would otherwise be dropped and re-drawn), one path listed
    twice (same or conflicting label), labels that become the same class name."""
    f = _require_dir(path, "csv")
    cols_list, rows = _read_csv_rows(f)
    cols = set(cols_list)
    if not {"path", "label"} <= cols:
        raise UserError(f"{f}: CSV needs a header with columns path,label[,split][,concepts]; "
                        f"found {sorted(cols)}")
    if not rows:
        raise UserError(f"{f}: CSV has no rows")
    has_split = "split" in cols and any(r.get("split") for r in rows)
    first_line: dict[str, int] = {}
    for lineno, r in enumerate(rows, start=2):
        if None in r or any(v is None for v in r.values()):
            raise UserError(f"{f}:{lineno}: wrong number of fields for the header {cols_list}")
        if not r["path"]:
            raise UserError(f"{f}:{lineno}: empty path")
        if not r["label"]:
            raise UserError(f"{f}:{lineno}: empty label for {r['path']!r}")
        if has_split and r["split"] not in ("train", "val", "test"):
            got = r["split"]
            raise UserError(f"{f}:{lineno}: split must be train, val or test, got {got!r}"
                            + ("; give a split for every row or drop the column" if not got else ""))
        key = os.path.normpath(r["path"])
        if key in first_line:
            prev = rows[first_line[key] - 2]
            what = (f"with conflicting labels {prev['label']!r} and {r['label']!r}"
                    if prev["label"] != r["label"] else "twice")
            raise UserError(f"{f}:{lineno}: {r['path']!r} is listed {what} (first on line "
                            f"{first_line[key]}); list each image once")
        first_line[key] = lineno
    classes = sorted({r["label"] for r in rows})
    label_of = {c: i for i, c in enumerate(classes)}
    names = [pretty_classname(c) for c in classes]
    check_class_names(names, classes, str(f))
    splits = ([r["split"] for r in rows] if has_split else
              stratified_split(np.array([label_of[r["label"]] for r in rows]), seed=split_seed))
    records = []
    for r, s in zip(rows, splits):
        concepts = tuple(c.strip() for c in (r.get("concepts") or "").split(CONCEPT_SEP) if c.strip())
        records.append(Record(id=r["path"], label=label_of[r["label"]], split=s, concepts=concepts,
                              domain=(r.get("domain") or None)))
    base = str(f.parent)
    ds = DataSet(name=name or f"csv:{f.stem}", classnames=names,
                 records=records, loader=lambda r: open_rgb(os.path.join(base, r.id)),
                 fingerprint=files_fingerprint(base, [f.name] + [r.id for r in records]),
                 root=base)
    warn_thin_classes(ds, str(f))
    return ds



def from_npz(path: str, classnames: list[str] | None = None, name: str | None = None) -> DataSet:
    """MedMNIST layout: ``{train,val,test}_images`` (N,H,W[,3] uint8) and ``*_labels`` (N,1)."""
    f = _require_dir(path, "npz")
    stem = f.stem.split("_")[0].lower()
    if classnames is None and stem in MEDMNIST_CLASSES:
        # a known MedMNIST flavour: canonical names, its templates and shipped descriptions
        from medadapt.data.texts import shipped_descriptions
        ds = medmnist_from_npz(f, stem)
        ds.name = name or f"npz:{f.stem}"
        if shipped_descriptions(f"{stem}.json").exists():
            ds.meta.setdefault("descriptions", f"{stem}.json")
        return ds
    check_npz_file(f)
    try:
        z = np.load(f, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError ...
        raise UserError(f"cannot read npz file {f}: {type(e).__name__}: {e}") from None
    records = npz_records(f, arrays)
    n_classes = max(r.label for r in records) + 1
    names = classnames
    if names is None or len(names) < n_classes:
        names = [f"class {i}" for i in range(n_classes)]

    def loader(r: Record):
        s, i = r.id.split("/")
        return array_to_rgb(arrays[f"{s}_images"][int(i)])

    import hashlib
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return DataSet(name=name or f"npz:{f.stem}", classnames=list(names), records=records,
                   loader=loader, fingerprint=h.hexdigest(), root=str(f.parent),
                   meta={"template_set": "generic"})
