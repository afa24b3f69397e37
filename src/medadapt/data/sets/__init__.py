"""Registered data sets, one small module per family (as timm keeps one file per model family).

Importing this package registers every family into :data:`medadapt.data.catalog.DATASETS`. A
family module holds its class names, its on-disk layout, its parser and its registration, so a
reader finds e.g. BUSI's layout in one place. Modules here import only
:mod:`~medadapt.data.catalog`, :mod:`~medadapt.data.dataset` and :mod:`._common`, never
:mod:`~medadapt.data.sources`.

Every ``build(root, **options)`` finds its files under ``root`` (the folder the archive was
unpacked into, or any parent up to three levels above the data), so ``kather2016:/data`` and
``kather2016:/data/Kather_texture_2016_image_tiles_5000`` give the same records. Record ids are
relative to the data set's own folder, never to ``root``, so ``fewshot.json`` files move between
machines. Split rules (documented per data set in ``docs/datasets.md``):

* official splits where the data set ships them (NCT-100K / CRC-VAL-HE-7K, MedMNIST, PCam,
  PanNuke folds, Derm7pt index files, BCCD ``ImageSets/Main``);
* a validation part carved from *train* (never from test) with a fixed data seed where the
  official split has no validation set (NCT-CRC-HE: 10%, as MedMNIST's PathMNIST does);
* :func:`~medadapt.data.dataset.stratified_split` (val 20%, test 30%, data seed 0) where the data
  set ships no split (Kather 2016, CRC-VAL-HE-7K alone, KIMIA Path960, LC25000).
"""
from medadapt.data.sets import (bccd, biomedcoop, derm7pt, kather, kimia,  # noqa: F401
                                lc25000, medmnist, pannuke, pcam)
