"""Where medadapt keeps data and caches (the lowest layer: everything may import it)."""
from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """Where registered data sets live by default: ``$MEDADAPT_DATA`` or ~/.cache/medadapt/data."""
    return Path(os.environ.get("MEDADAPT_DATA", Path.home() / ".cache" / "medadapt" / "data"))


def cache_home() -> Path:
    """Where caches live: ``$MEDADAPT_CACHE`` or ~/.cache/medadapt."""
    return Path(os.environ.get("MEDADAPT_CACHE", Path.home() / ".cache" / "medadapt"))
