"""Shared test setup: an isolated medadapt cache per test session and the shared real data."""
import os
import tempfile
from pathlib import Path

import pytest

if "MEDADAPT_CACHE" not in os.environ:  # CI sets one; locally use a per-user temp folder
    os.environ["MEDADAPT_CACHE"] = str(Path(tempfile.gettempdir()) / "medadapt-test-cache")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The tiny test models gain nothing from intra-op threads, and with two pytest workers on two
# cores a thread pool per worker oversubscribes the machine (10-100x slower steps).
import torch  # noqa: E402

torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CRC = SHARED / "crc-val-he-7k-sample"
PNEUMONIA = SHARED / "medmnist" / "pneumoniamnist.npz"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def crc_folder(shared_data) -> Path:
    return CRC


def run_cli(*args: str) -> int:
    from medadapt.cli import main
    return main([str(a) for a in args])


def colour_tiles(root: Path, n: int = 18, seed: int = 0) -> Path:
    """A tiny ``folder:`` data set: n 32x32 PNG tiles of three classes (tumor / stroma / mucus),
    each class brighter in its own colour channel, so a method can learn it in a few steps."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = ["tumor", "stroma", "mucus"][i % 3]
        a = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
        a[..., i % 3] += 150
        (root / c).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / c / f"{i}.png")
    return root
