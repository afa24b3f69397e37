"""Method registry: every module in this package registers its method on import."""
from __future__ import annotations

import importlib
import pkgutil

from medadapt.methods.base import METHODS, Batch, Method, register_method, text_features_for

_loaded = False


def load_all() -> None:
    global _loaded
    if _loaded:
        return
    for m in pkgutil.iter_modules(__path__):
        if m.name != "base" and not m.name.startswith("_"):
            importlib.import_module(f"{__name__}.{m.name}")
    _loaded = True


def get_method(name: str) -> type[Method]:
    load_all()
    return METHODS.get(name)


__all__ = ["METHODS", "Batch", "Method", "register_method", "text_features_for", "get_method",
           "load_all"]
