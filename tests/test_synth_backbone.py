"""The shipped `synthpath-clip`: loads through the standard backbone path, is small, matches its
config, and shows the sanity ordering (descriptions > names > chance) on a small test subset."""
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from medadapt.backbones import BACKBONES, load_backbone

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "src" / "medadapt" / "synth" / "weights" / "synthpath-clip"


@pytest.fixture(scope="module")
def bb():
    return load_backbone("synthpath-clip")


def test_shipped_folder_is_a_small_clipmodel_folder():
    names = {p.name for p in WEIGHTS.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json",
            "tokenizer_config.json", "vocab.txt"} <= names
    total = sum(p.stat().st_size for p in WEIGHTS.iterdir() if p.is_file())
    assert total <= 10 * 1024 * 1024, total
    cfg = json.loads((WEIGHTS / "config.json").read_text())
    assert cfg["architectures"] == ["CLIPModel"]
    assert cfg["text_config"]["eos_token_id"] == 3  # [SEP] of the WordPiece tokenizer


def test_loads_and_encodes_normalised(bb):
    info = BACKBONES.get("synthpath-clip")
    assert bb.family == "hf_clip" and bb.image_size == info.image_size == 64
    assert bb.context_length == info.context_length == 32
    ids = bb.tokenize(["a histopathology image of tumour epithelium.", "fat vacuoles"])
    assert ids.shape == (2, 32)
    # transformers pools at [SEP]; the backbone's EOS positions agree
    sep = bb._tok.sep_token_id
    assert (ids[torch.arange(2), bb.eos_positions(ids)] == sep).all()
    t = bb.encode_text(ids)
    assert t.shape == (2, bb.embed_dim)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-4)
    from PIL import Image
    img = Image.new("RGB", (64, 64), (220, 150, 190))
    x = bb.preprocess(img).unsqueeze(0)
    assert x.shape == (1, 3, 64, 64)
    f = bb.encode_image(x)
    assert f.shape == (1, bb.embed_dim)
    assert torch.allclose(f.norm(dim=-1), torch.ones(1), atol=1e-4)
    # prompt learning path: token embeddings laid over ids give the same features
    emb = bb.embed_tokens(ids)
    assert torch.allclose(bb.encode_text(ids, embeddings=emb), t, atol=1e-5)


def test_config_file_rebuilds_the_shipped_weights():
    from medadapt.synth.pretrain import PretrainConfig
    cfg = PretrainConfig.from_yaml(REPO / "configs" / "synth" / "pretrain.yaml")
    assert asdict(cfg) == asdict(PretrainConfig())  # the defaults are the shipped recipe
    log = json.loads((WEIGHTS / "training.json").read_text())
    assert log["config"] == asdict(cfg)


def test_sanity_ordering_on_a_small_test_subset(bb, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path))
    from medadapt.synth.pretrain import sanity
    r = sanity(bb, "synth-crc", shots=4, seeds=(1,),
               options={"n_train": 4, "n_val": 4, "n_test": 30})
    assert r["chance"] + 0.15 < r["zero_shot_names"] < r["zero_shot_descriptions"] - 0.05, r
    assert r["linear_probe_4shot"] > 0.6, r


def test_shipped_tokenizer_matches_the_corpus(tmp_path):
    """Editing captions or descriptions changes the vocabulary: then retrain (see the config)."""
    from medadapt.synth.pretrain import PretrainConfig, write_processors
    write_processors(tmp_path, PretrainConfig())
    assert (tmp_path / "vocab.txt").read_text() == (WEIGHTS / "vocab.txt").read_text()
