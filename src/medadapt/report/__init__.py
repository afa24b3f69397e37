"""Experiment grids (``medadapt bench``) and reports (``medadapt report``).

* :mod:`medadapt.report.bench`: expand a grid YAML (backbones x data sets x methods x shots x seeds
  x protocols) into run folders and run them through the engine's
  :class:`~medadapt.engine.runner.Runner` in one process, sharing the feature cache and the loaded
  backbone; resumable after an interrupt, a failing run recorded without stopping the rest.
* :mod:`medadapt.report.report`: aggregate run folders into one report, Markdown + PNG and one
  self-contained HTML page, from its parts: :mod:`~medadapt.report.runs` (reading run folders),
  :mod:`~medadapt.report.tables` (mean ± std over seeds, best and second best marked per column;
  base / novel / HM, cross-domain and cost tables), :mod:`~medadapt.report.figures` (few-shot
  curves, per-class recall heat maps, confusion matrices), :mod:`~medadapt.report.tsne` (t-SNE).

Imports are lazy: the CLI imports :mod:`medadapt.report.cli` for every command, and that must not
pull in torch or matplotlib.
"""
from __future__ import annotations

_LAZY = {"expand_grid": "bench", "load_grid": "bench", "run_bench": "bench",
         "build_report": "report", "load_runs": "runs"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
