"""The data-set registry: :class:`DatasetInfo`, ``DATASETS`` and where data and caches live.

The lowest layer of ``medadapt.data`` besides :mod:`~medadapt.data.dataset`: the per-family parser
modules in :mod:`medadapt.data.sets` register into ``DATASETS``, and
:mod:`~medadapt.data.sources` (specs -> :class:`DataSet`) looks them up; neither imports the other
back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from medadapt.data.dataset import DataSet
from medadapt.paths import cache_home, data_home  # noqa: F401 (re-exported)
from medadapt.registry import Registry

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


@dataclass
class DatasetInfo:
    """A registered data set: canonical class names, where it comes from, how to parse it.

    ``build(root, **options) -> DataSet`` parses the data set's real on-disk layout under ``root``
    (or generates it, for the synthetic world). ``files`` lists downloadable archives as
    ``{"url": ..., "sha256": ..., "filename": ...}``; when empty, ``manual`` says how to obtain
    the data by hand.
    """

    name: str
    classnames: list[str]
    build: Callable[..., DataSet]
    task: str = "classification"
    modality: str = "histopathology"
    organ: str = ""
    license: str = ""
    homepage: str = ""
    citation: str = ""
    files: list[dict] = field(default_factory=list)
    manual: str = ""
    template_set: str = "histopathology"
    descriptions: str | None = None  # file name in medadapt/data/descriptions/
    hierarchy: str | None = None  # class-concept hierarchy file name, if any
    base_classes: list[str] | None = None  # for base-to-novel, when the paper fixes them
    needs_root: bool = True  # False for generated data sets
    folder: str | None = None  # folder under the data home (default: the name)
    layout: str = ""  # the on-disk layout, one line (shown by `medadapt datasets NAME`)

    def default_root(self) -> Path:
        return data_home() / (self.folder or self.name)


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def dataset_options(cfg: dict) -> dict:
    """Builder options of a run config: ``data.split_file`` (a split file in the data set's own
    format, e.g. BiomedCoOp's JSON) and ``data.options`` (any other option of the data set's
    parser, e.g. ``{split_seed: 1}``)."""
    data = cfg.get("data") or {}
    opts = dict(data.get("options") or {})
    if data.get("split_file"):
        opts["split_file"] = str(data["split_file"])
    return opts
