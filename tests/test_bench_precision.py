"""`data.precision` of feature extraction (engine/features.py): autocast dtype, separate cache
keys for reduced precision, validation, and the option reaching the run's config."""
import pytest
import torch

from conftest import CRC, run_cli
from medadapt.engine.features import FeatureCache, autocast_dtype
from medadapt.errors import UserError


def test_autocast_dtype_table():
    assert autocast_dtype("auto", "cuda") is torch.float16
    assert autocast_dtype("auto", "cpu") is None
    assert autocast_dtype("fp32", "cuda") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    with pytest.raises(UserError, match="data.precision"):
        autocast_dtype("fp8", "cpu")
    with pytest.raises(UserError):
        FeatureCache(precision="half")


def test_bf16_features_cached_apart(tmp_path, shared_data):
    from medadapt.backbones import load_backbone
    from medadapt.data.sources import load_dataset
    bb = load_backbone("tiny-hf-clip")
    ds = load_dataset(f"folder:{CRC}")
    idx = list(range(8))
    fp32 = FeatureCache(tmp_path, precision="fp32")
    bf16 = FeatureCache(tmp_path, precision="bf16")
    assert fp32.key(bb, ds, 0) == FeatureCache(tmp_path, precision="auto").key(bb, ds, 0)  # CPU
    assert bf16.key(bb, ds, 0) != fp32.key(bb, ds, 0)
    a, _ = fp32.encode(bb, ds, idx, progress=False)
    b, _ = bf16.encode(bb, ds, idx, progress=False)
    assert a.dtype == b.dtype == torch.float32 and not torch.equal(a, b)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert bool((cos > 0.98).all())
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_precision_in_run_config(tmp_path, shared_data, capsys):
    import yaml
    out = tmp_path / "run"
    assert run_cli("fit", "--backbone", "tiny-hf-clip", "--dataset", f"folder:{CRC}", "--method",
                   "zero-shot", "--shots", "1", "--out", out, "--quiet", "--set",
                   "data.precision=bf16") == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["precision"] == "bf16"
    assert run_cli("fit", "--backbone", "tiny-hf-clip", "--dataset", f"folder:{CRC}", "--method",
                   "zero-shot", "--shots", "1", "--out", tmp_path / "r2", "--quiet", "--set",
                   "data.precision=fp8") == 2
    assert "data.precision must be one of" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
