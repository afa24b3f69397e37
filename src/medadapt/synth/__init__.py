"""The offline synthetic pathology world.

* :mod:`medadapt.synth.tiles`: procedural H&E-like tiles from visual attributes (numpy,
  deterministic from a seed, stain / organ domains).
* :mod:`medadapt.synth.classes`: tissue classes as attribute profiles, names, descriptions,
  benign / malignant concepts.
* :mod:`medadapt.synth.captions`: the pretraining corpus (captions describe attributes).
* :mod:`medadapt.synth.datasets`: the registered data sets ``synth-crc``, ``synth-crc-b2n``,
  ``synth-organs``, ``synth-malignancy`` (generated on first use).
* :mod:`medadapt.synth.pretrain`: trains the shipped backbone ``synthpath-clip`` (``weights/``;
  see ``MODEL_CARD.md``).

It is a test instrument with known ground truth, not a model of real pathology.
"""
