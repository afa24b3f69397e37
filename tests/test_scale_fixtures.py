"""Shared helpers (no tests here) for the adapter / LoRA / SCALE tests: a tiny concept-labelled CSV
data set built from the CRC tiles in ``/work/shared/data`` and a matching hierarchy.

The tiles are shrunk to 32 px and tinted half-way towards a colour per class: the tiny random-init
test backbones map untinted H&E tiles to nearly parallel features (cosine ~0.98), which no method
can separate in a few steps; tinted tiles spread them (cosine ~0.8) while staying real tiles."""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

CRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "crc-val-he-7k-sample"

# class -> (folder, tint, concepts per tile; "a;b" = multi-label)
CLASSES = {
    "adipose": ("ADI", (230, 40, 40), ["fat vacuoles"]),
    "lymphocytes": ("LYM", (40, 200, 40), ["dense small round nuclei"]),
    "normal mucosa": ("NORM", (40, 40, 230), ["regular glands", "glandular architecture"]),
    "tumor": ("TUM", (220, 220, 40), ["irregular glands;glandular architecture",
                                      "pleomorphic nuclei", "glandular architecture"]),
}

HIERARCHY_YAML = """
name: crc-mini
domain: tissue
template: "a photo of a {domain} with {concept}, which indicates {class}"
classes: [adipose, lymphocytes, normal mucosa, tumor]
concepts:
  fat vacuoles: [adipose]
  dense small round nuclei: [lymphocytes]
  regular glands: [normal mucosa]
  glandular architecture: [normal mucosa, tumor]
  irregular glands: [tumor]
  pleomorphic nuclei: [tumor]
"""


def _tiles(folder: str) -> list[Path]:
    if CRC.is_dir():
        return sorted((CRC / folder).glob("*.png"))[:4]
    return []


def _tile(src: Path | None, tint, seed: int) -> Image.Image:
    if src is None:  # no shared data here: a noise tile
        a = np.random.default_rng(seed).integers(0, 255, (32, 32, 3)).astype(float)
    else:
        a = np.asarray(Image.open(src).convert("RGB").resize((32, 32))).astype(float)
    a = 0.5 * a + 0.5 * np.asarray(tint, dtype=float)[None, None]
    return Image.fromarray(a.astype(np.uint8))


@lru_cache(maxsize=None)
def concept_csv(root: str, splits: tuple[str, ...] = ("train", "val", "test")) -> str:
    """Write ``root/data.csv``: every tile once per split (copies), so test = train images."""
    r = Path(root)
    r.mkdir(parents=True, exist_ok=True)
    rows = []
    for ci, (cls, (folder, tint, concepts)) in enumerate(CLASSES.items()):
        tiles = _tiles(folder) or [None] * 4
        for ti, src in enumerate(tiles):
            name = f"{folder}_{ti}.png"
            img = _tile(src, tint, ci * 10 + ti)
            for split in splits:
                d = r / split
                d.mkdir(exist_ok=True)
                img.save(d / name)
                rows.append({"path": f"{split}/{name}", "label": cls, "split": split,
                             "concepts": concepts[ti % len(concepts)]})
    with open(r / "data.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split", "concepts"])
        w.writeheader()
        w.writerows(rows)
    (r / "hierarchy.yaml").write_text(HIERARCHY_YAML)
    return str(r / "data.csv")


# --- pytest fixtures (imported by the adapter / LoRA / SCALE test modules) -------------------------
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A shared cache folder for the session's tiny backbones and features (conftest already
    limits torch to one thread)."""
    cache = tmp_path_factory.getbasetemp() / "medadapt-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDADAPT_CACHE", str(cache))
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        yield cache


@pytest.fixture(scope="module")
def data_csv(env, tmp_path_factory):
    return concept_csv(str(tmp_path_factory.getbasetemp() / "scale-data"))


_BACKBONES: dict = {}


def backbone(name: str):
    """Load a tiny backbone once per session (after ``env`` set the cache folder)."""
    if name not in _BACKBONES:
        from medadapt.backbones import load_backbone
        _BACKBONES[name] = load_backbone(name)
    return _BACKBONES[name]


def feature_split(bb, csv_path: str, split: str = "train"):
    """A features ``Split`` of the CSV data set (as the runner builds it)."""
    from medadapt.data.sources import load_dataset
    from medadapt.engine.features import FeatureCache
    from medadapt.engine.train import Split

    ds = load_dataset(f"csv:{csv_path}")
    idx = ds.indices(split)
    feats, _ = FeatureCache().encode(bb, ds, idx, progress=False)
    return Split(ds, idx, torch.tensor([ds.records[i].label for i in idx]), feats,
                 concepts=[ds.records[i].concepts for i in idx])
