"""In-memory data sets: images a notebook already holds (PIL images or numpy arrays) with labels.

:func:`from_memory` builds the same :class:`~medadapt.data.dataset.DataSet` every other source
builds. Its ``fingerprint`` covers the class names, every record (id, label, split, concepts) and
every image's pixels (mode, size and bytes), so the feature cache keys it like a folder: the same
images give the same key in another session, a changed pixel another key. Its name (and so the
``dataset`` a run folder records) is ``memory:<first 12 hex digits of the fingerprint>``, or
``memory:<name>`` when a name is given.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
from PIL import Image

from medadapt.data.dataset import SPLITS, DataSet, Record, array_to_rgb, stratified_split, to_rgb
from medadapt.errors import UserError

MEMORY_PREFIX = "memory:"


def _as_rgb(img: Any, where: str) -> Image.Image:
    if isinstance(img, Image.Image):
        return to_rgb(img)
    if hasattr(img, "detach") and hasattr(img, "cpu"):  # a torch tensor
        img = img.detach().cpu().numpy()
    if isinstance(img, np.ndarray):
        return array_to_rgb(img)
    raise UserError(f"{where}: an image must be a PIL image or a numpy array (HxW, HxWx3, 3xHxW), "
                    f"got {type(img).__name__}")


def _label_list(labels) -> list:
    """Labels as a flat list (a numpy array of shape (N,) or MedMNIST's (N, 1) included)."""
    return np.asarray(labels).reshape(-1).tolist() if isinstance(labels, np.ndarray) \
        else list(labels)


def _labels(labels: Sequence, classnames: Sequence[str] | None, n: int,
            where: str) -> tuple[list[int], list[str]]:
    labels = _label_list(labels)
    if len(labels) != n:
        raise UserError(f"{where}: {n} images but {len(labels)} labels")
    if not labels:
        raise UserError(f"{where}: no images")
    if all(isinstance(y, str) for y in labels):
        names = list(classnames) if classnames is not None else sorted(set(labels))
        idx = {c: i for i, c in enumerate(names)}
        unknown = sorted({y for y in labels if y not in idx})
        if unknown:
            raise UserError(f"{where}: labels {unknown[:5]} are not in classnames {names}")
        return [idx[y] for y in labels], names
    if all(isinstance(y, (int, np.integer)) and not isinstance(y, bool) for y in labels):
        hi = max(int(y) for y in labels)
        if min(int(y) for y in labels) < 0:
            raise UserError(f"{where}: labels must be class indices >= 0 or class names")
        if classnames is None:
            names = [f"class {i}" for i in range(hi + 1)]
        else:
            names = list(classnames)
            if hi >= len(names):
                raise UserError(f"{where}: label {hi} but only {len(names)} classnames")
        return [int(y) for y in labels], names
    raise UserError(f"{where}: labels must be all class indices (int) or all class names (str)")


def from_memory(images=None, labels=None, classnames: Sequence[str] | None = None,
                splits: Sequence[str] | dict | None = None, concepts: Sequence | None = None,
                name: str | None = None, template_set: str = "histopathology",
                split_seed: int = 0) -> DataSet:
    """A data set from images in memory.

    - ``from_memory(images, labels, classnames=None)``: one pool; train / val / test are drawn per
      class (the same deterministic 50/20/30 rule as ``folder:`` data sets) unless ``splits`` gives
      one of ``train``/``val``/``test`` per image;
    - ``from_memory({"train": (images, labels), "test": (images, labels)}, classnames=...)``: a
      dict of splits (``val`` optional; without one, the few-shot sampler draws validation images
      from ``train`` as for any data set without a val split).

    Labels are class indices (with ``classnames`` in that order; without, the classes are named
    ``class 0``...) or class names (``classnames`` then fixes their order; default: sorted).
    ``concepts``: per image a list of concept strings (SCALE). Images are converted to RGB once,
    here (16-bit and float arrays keep their range as in :func:`~medadapt.data.dataset.open_rgb`).
    """
    split_dict = images if isinstance(images, dict) else splits if isinstance(splits, dict) else None
    if split_dict is not None:
        if labels is not None and not isinstance(images, dict):
            raise UserError("give either images + labels or a dict of splits, not both")
        bad = sorted(set(split_dict) - set(SPLITS))
        if bad:
            raise UserError(f"unknown split(s) {bad}; valid: train, val, test")
        if "test" not in split_dict or "train" not in split_dict:
            raise UserError("a dict of splits needs at least 'train' and 'test'")
        all_imgs, all_labels, all_splits = [], [], []
        for s in SPLITS:
            if s not in split_dict:
                continue
            part = split_dict[s]
            if not (isinstance(part, (tuple, list)) and len(part) == 2):
                raise UserError(f"split {s!r}: expected (images, labels)")
            imgs, labs = part
            imgs = list(imgs)
            labs = _label_list(labs)
            if len(imgs) != len(labs):
                raise UserError(f"split {s!r}: {len(imgs)} images but {len(labs)} labels")
            all_imgs += imgs
            all_labels += labs
            all_splits += [s] * len(imgs)
        images, labels, splits = all_imgs, all_labels, all_splits
    if images is None or labels is None:
        raise UserError("an in-memory data set needs images and labels (or a dict of splits)")
    images = list(images)
    label_ids, names = _labels(labels, classnames, len(images), "in-memory data set")
    if len(set(n.lower() for n in names)) != len(names):
        raise UserError(f"in-memory data set: class names repeat: {names}")
    if splits is not None:
        splits = list(splits)
        if len(splits) != len(images) or any(s not in SPLITS for s in splits):
            raise UserError("in-memory data set: splits must give one of train, val, test per image")
        if "test" not in splits:
            raise UserError("in-memory data set: no image in the test split")
    else:
        splits = stratified_split(np.array(label_ids), seed=split_seed)
    if concepts is not None:
        concepts = [tuple(str(c) for c in (cs or ())) for cs in concepts]
        if len(concepts) != len(images):
            raise UserError(f"in-memory data set: {len(images)} images but {len(concepts)} "
                            "concept lists")
    rgb = [_as_rgb(im, f"image {i}") for i, im in enumerate(images)]
    counters: dict[str, int] = {}
    records = []
    for i, (y, s) in enumerate(zip(label_ids, splits)):
        k = counters.get(s, 0)
        counters[s] = k + 1
        records.append(Record(id=f"{s}/{k}", label=y, split=s,
                              concepts=concepts[i] if concepts is not None else ()))
    h = hashlib.sha256()
    h.update(repr(list(names)).encode())
    for r, im in zip(records, rgb):
        h.update(f"{r.id}|{r.label}|{r.split}|{';'.join(r.concepts)}|{im.mode}|{im.size}\n".encode())
        h.update(im.tobytes())
    fp = h.hexdigest()
    by_id = {r.id: im for r, im in zip(records, rgb)}
    ds = DataSet(name=f"{MEMORY_PREFIX}{name or fp[:12]}", classnames=list(names), records=records,
                 loader=lambda r: by_id[r.id].copy(), fingerprint=fp, root=None,
                 meta={"template_set": template_set, "in_memory": True})
    return ds
