"""PMC-CLIP (its own three-file checkpoint) and PubMedCLIP (an HF CLIPModel): replicas built from
the published configs, saved in the real on-disk formats, loaded with the network off through the
same code path as the real files."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medadapt.backbones import BACKBONES, load_backbone
from medadapt.backbones.pmcclip import FILES, LOGIT_SCALE, resnet_config, save_pmc_clip_files
from medadapt.backbones.tiny import save_tiny_hf_clip, write_wordpiece_tokenizer
from medadapt.errors import UserError

BERT_ID = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"


def _replica(folder: Path, with_text_dir: bool = True):
    """RN50_fusion4.json reduced: ModifiedResNet layers [1,1,1,1] (of [3,4,6,3]), width 8 (of 64),
    output 16 (of 768), 8 heads as published, 64 px; a 2-layer BERT of width 16."""
    from open_clip.modified_resnet import ModifiedResNet
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    visual = ModifiedResNet([1, 1, 1, 1], output_dim=16, heads=8, image_size=64, width=8).eval()
    tokdir = folder.parent / (folder.name + "-tok")
    tok = write_wordpiece_tokenizer(tokdir, max_length=77)
    text = BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=32,
                                max_position_embeddings=77)).eval()
    proj = torch.randn(16, 16) / 4
    save_pmc_clip_files(folder, visual, text, proj, tok if with_text_dir else None)
    return visual, text, proj, tok


def test_published_rn50_config_is_read_from_the_weights():
    from open_clip.modified_resnet import ModifiedResNet
    with torch.device("meta"):
        full = ModifiedResNet([3, 4, 6, 3], output_dim=768, heads=8, image_size=224, width=64)
    sd = full.state_dict()
    assert resnet_config(sd) == {"layers": [3, 4, 6, 3], "width": 64, "output_dim": 768,
                                 "image_size": 224, "heads": 8}
    # the key names of BiomedCoOp's clip/pmcclip.py ModifiedResNet (downsample "-1" is a pool)
    for k in ("layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
              "attnpool.positional_embedding", "attnpool.c_proj.weight", "conv3.weight"):
        assert k in sd


def test_folder_in_released_layout_loads_and_encodes_as_biomedcoop(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    visual, text, proj, tok = _replica(tmp_path / "pmc")
    assert sorted(p.name for p in (tmp_path / "pmc").iterdir() if p.is_file()) == sorted(FILES)
    bb = load_backbone(f"pmc_clip:{tmp_path / 'pmc'}")
    assert (bb.family, bb.embed_dim, bb.image_size, bb.context_length) == ("pmc_clip", 16, 64, 77)
    assert float(bb.logit_scale) == pytest.approx(math.exp(LOGIT_SCALE))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = F.normalize(visual(x), dim=-1)
    assert torch.allclose(bb.encode_image(x), want, atol=1e-5)
    prompts = ["a photo of debris.", "a photo of an adipose tissue region."]
    enc = tok(prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        want_t = F.normalize(text(enc.input_ids, attention_mask=enc.attention_mask).pooler_output
                             @ proj, dim=-1)
    ids = bb.tokenize(prompts)
    assert torch.equal(ids, enc.input_ids)
    assert torch.allclose(bb.encode_text(ids), want_t, atol=1e-5)
    # prompt learners feed token embeddings: the same embeddings give the same features
    emb = bb.embed_tokens(ids)
    assert torch.allclose(bb.encode_text(ids, embeddings=emb), want_t, atol=1e-5)
    assert len(bb.text_blocks()) == 2 and bb.vision_blocks() == []
    assert bb.eos_positions(ids).tolist() == [int((i == tok.sep_token_id).nonzero()[0]) for i in ids]
    # the one train-time augmentation of every family: crop 0.08-1 (bicubic) + flip
    from torchvision import transforms as T
    steps = bb.train_preprocess.transforms
    rrc = [t for t in steps if isinstance(t, T.RandomResizedCrop)]
    assert len(rrc) == 1 and rrc[0].scale == (0.08, 1.0)
    assert any(isinstance(t, T.RandomHorizontalFlip) for t in steps)


def test_missing_or_wrong_files_are_user_errors(tmp_path):
    _replica(tmp_path / "pmc")
    (tmp_path / "pmc" / "text_projection_layer.pth").unlink()
    with pytest.raises(UserError, match=r"missing \['text_projection_layer.pth'\]"):
        load_backbone(f"pmc_clip:{tmp_path / 'pmc'}")
    torch.save(torch.randn(3, 3), tmp_path / "pmc" / "text_projection_layer.pth")
    with pytest.raises(UserError, match=r"shape \(3, 3\), expected \(16, 16\)"):
        load_backbone(f"pmc_clip:{tmp_path / 'pmc'}")


def _fake_repo(cache: Path, repo_id: str, src: Path, kind: str = "models") -> Path:
    base = cache / (f"{kind}--" + repo_id.replace("/", "--"))
    snap = base / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0" * 40)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy(f, snap / f.name)
    return snap


SCRIPT = textwrap.dedent("""
    import json, torch
    from medadapt.backbones import load_backbone
    out = {}
    for alias in ("pmc-clip", "pubmedclip"):
        bb = load_backbone(alias)
        t = bb.encode_text(bb.tokenize(["a photo of debris."]), normalize=False)
        out[alias] = {"family": bb.family, "t": t[0, :4].tolist()}
    print(json.dumps(out))
""")


def test_registered_ids_load_from_the_hub_cache_offline(tmp_path, monkeypatch):
    assert BACKBONES.get("pubmedclip").source == "flaviagiammarino/pubmed-clip-vit-base-patch32"
    assert BACKBONES.get("pmc-clip").source == "hf-dataset:axiong/pmc_oa"
    cache = tmp_path / "hub"
    _replica(tmp_path / "pmc", with_text_dir=False)
    _fake_repo(cache, "axiong/pmc_oa", tmp_path / "pmc", kind="datasets")
    bert = tmp_path / "bert"
    shutil.copytree(tmp_path / "pmc-tok", bert)
    from transformers import BertConfig
    BertConfig(vocab_size=len((bert / "vocab.txt").read_text().split("\n")) - 1, hidden_size=16,
               num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
               max_position_embeddings=77).save_pretrained(bert)
    _fake_repo(cache, BERT_ID, bert)
    save_tiny_hf_clip(tmp_path / "pubmedclip")
    _fake_repo(cache, "flaviagiammarino/pubmed-clip-vit-base-patch32", tmp_path / "pubmedclip")
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["pmc-clip"]["family"] == "pmc_clip" and out["pubmedclip"]["family"] == "hf_clip"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(bert, tmp_path / "pmc" / "text_encoder")
    ref = load_backbone(f"pmc_clip:{tmp_path / 'pmc'}")
    t = ref.encode_text(ref.tokenize(["a photo of debris."]), normalize=False)[0, :4]
    assert out["pmc-clip"]["t"] == pytest.approx(t.tolist(), abs=1e-5)
