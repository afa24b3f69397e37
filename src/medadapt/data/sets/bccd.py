"""BCCD single cells cropped from the Pascal-VOC boxes of the official splits."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import OrderedDict

from PIL import Image

from medadapt.data.catalog import DATASETS, DatasetInfo
from medadapt.data.dataset import DataSet, Record, files_fingerprint
from medadapt.data.sets._common import _check_options, _find_dir, _hash, _root
from medadapt.data.dataset import open_rgb
from medadapt.errors import UserError
from medadapt.safeio import inside_root  # one rule for every reader: inside the root

# --------------------------------------------------------------------------------------------
# BCCD single cells: BCCD/{Annotations,JPEGImages,ImageSets/Main} (Pascal VOC), boxes cropped
# --------------------------------------------------------------------------------------------

BCCD_LABELS = {"RBC": 0, "WBC": 1, "Platelets": 2}
BCCD_CLASSES = ["red blood cell", "white blood cell", "platelet"]
BCCD_LAYOUT = "BCCD/{Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/{train,val,test}.txt}"


class _CropLoader:
    """Record id ``<image stem>/<object index>`` -> the box cropped from its JPEG, done lazily
    with a small cache of decoded source images (the records of one image are contiguous)."""

    def __init__(self, base: str, boxes: dict[str, tuple[str, tuple[int, int, int, int]]],
                 cache_size: int = 8):
        self.base, self.boxes, self.cache_size = base, boxes, cache_size
        self._cache: OrderedDict = OrderedDict()

    def __getstate__(self):
        return {"base": self.base, "boxes": self.boxes, "cache_size": self.cache_size,
                "_cache": OrderedDict()}

    def __call__(self, r: Record) -> Image.Image:
        rel, box = self.boxes[r.id]
        img = self._cache.get(rel)
        if img is None:
            img = open_rgb(os.path.join(self.base, rel))
            self._cache[rel] = img
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(rel)
        x1, y1, x2, y2 = box
        x1, y1 = max(0, x1), max(0, y1)
        x2, y2 = min(img.width, x2), min(img.height, y2)
        if x2 - x1 < 1 or y2 - y1 < 1:
            raise UserError(f"bccd-cells: box of {r.id} lies outside its image {rel}")
        return img.crop((x1, y1, x2, y2))


def build_bccd_cells(root, margin: int = 0, min_size: int = 2, **unknown) -> DataSet:
    """One record per annotated box (RBC / WBC / Platelets) of the official ImageSets/Main
    splits. ``margin`` pixels of context are added around each box; boxes narrower or lower than
    ``min_size`` pixels (BCCD has two zero-size boxes) are left out and counted in
    ``meta['skipped_boxes']``."""
    name = "bccd-cells"
    _check_options(name, unknown, ["margin", "min_size"])
    r = _root(root, name)
    d = _find_dir(r, lambda p: (p / "Annotations").is_dir() and (p / "JPEGImages").is_dir())
    if d is None:
        raise UserError(f"{name}: Annotations/ and JPEGImages/ not found under {r} "
                        f"(expected layout: {BCCD_LAYOUT})")
    split_of: dict[str, str] = {}
    for split in ("train", "val", "test"):
        p = d / "ImageSets" / "Main" / f"{split}.txt"
        if not p.is_file():
            raise UserError(f"{name}: official split file {p} not found")
        for line in p.read_text(encoding="utf-8").splitlines():
            stem = line.strip()
            if stem:
                if stem in split_of and split_of[stem] != split:
                    raise UserError(f"{p}: {stem} is also in the {split_of[stem]} split")
                split_of[stem] = split
    margin, min_size = int(margin), int(min_size)
    records, boxes, files, skipped = [], {}, [], 0
    for stem in sorted(split_of):
        xml = d / "Annotations" / f"{stem}.xml"
        try:
            ann = ET.parse(xml).getroot()
        except FileNotFoundError:
            raise UserError(f"{name}: annotation {xml} listed in ImageSets/Main not found") from None
        except ET.ParseError as e:
            raise UserError(f"{name}: corrupt annotation {xml}: {e}") from None
        fn = inside_root(d / "JPEGImages", (ann.findtext("filename") or f"{stem}.jpg").strip(),
                     f"{name}: {xml}: <filename>")
        rel = f"JPEGImages/{fn}"
        files += [f"Annotations/{stem}.xml", rel]
        w = int(float(ann.findtext("size/width") or 1e9))
        h = int(float(ann.findtext("size/height") or 1e9))
        for k, obj in enumerate(ann.findall("object")):
            cls = (obj.findtext("name") or "").strip()
            if cls not in BCCD_LABELS:
                raise UserError(f"{name}: {xml}: unknown cell type {cls!r}; expected "
                                f"{sorted(BCCD_LABELS)}")
            b = obj.find("bndbox")
            try:
                x1, y1, x2, y2 = (int(round(float(b.findtext(t))))
                                  for t in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                raise UserError(f"{name}: {xml}: object {k} has no valid bndbox") from None
            x1, y1 = max(0, x1 - margin), max(0, y1 - margin)
            x2, y2 = min(w, x2 + margin), min(h, y2 + margin)
            if x2 - x1 < min_size or y2 - y1 < min_size:
                skipped += 1
                continue
            rid = f"{stem}/{k:03d}"
            boxes[rid] = (rel, (x1, y1, x2, y2))
            records.append(Record(id=rid, label=BCCD_LABELS[cls], split=split_of[stem]))
    base = str(d)
    fp = _hash(files_fingerprint(base, ["ImageSets/Main/train.txt", "ImageSets/Main/val.txt",
                                        "ImageSets/Main/test.txt"] + files), margin, min_size)
    return DataSet(name=name, classnames=list(BCCD_CLASSES), records=records,
                   loader=_CropLoader(base, boxes), fingerprint=fp, root=base,
                   meta={"skipped_boxes": skipped, "source_images": len(split_of),
                         "margin": margin, "split": "official ImageSets/Main"})


# --------------------------------------------------------------------------------------------


def _register() -> None:
    DATASETS.register("bccd-cells", DatasetInfo(
        name="bccd-cells", classnames=list(BCCD_CLASSES), build=build_bccd_cells,
        modality="blood smear", organ="blood", license="MIT",
        homepage="https://github.com/Shenggan/BCCD_Dataset",
        citation="Shenggan. BCCD (Blood Cell Count and Detection) Dataset. GitHub (2017)",
        manual=("git clone https://github.com/Shenggan/BCCD_Dataset there (the BCCD/ folder with "
                "Annotations, JPEGImages, ImageSets/Main)"),
        template_set="cytology", descriptions="bccd-cells.json", layout=BCCD_LAYOUT))

_register()
