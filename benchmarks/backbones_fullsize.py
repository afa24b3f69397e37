"""Full-size random-weight replicas of BiomedCLIP and CONCH, loaded with the network off.

BiomedCLIP: the published ``open_clip_config.json`` (timm ``vit_base_patch16_224`` + the REAL
``hf_model_name``), built from medadapt's carried BiomedBERT config and saved as
``open_clip_pytorch_model.bin``; loaded by folder and by alias from a Hugging Face cache layout
with ``HF_HUB_OFFLINE=1`` and every socket refused. Checks that the carried text-tower config gives
exactly the checkpoint's shapes (strict load) at full size.

CONCH: the published ``conch_ViT-B-16`` (with decoder) saved as ``pytorch_model.bin``; loaded by
folder; the inferred config must equal the published one; one forward of each tower.

Usage: ``python benchmarks/backbones_fullsize.py [--out results/backbones_fullsize.json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    os.environ["HF_HUB_OFFLINE"] = "1"
    root = Path(tempfile.mkdtemp(prefix="fullsize-"))
    os.environ["HF_HUB_CACHE"] = str(root / "hub")
    os.environ.setdefault("MEDADAPT_CACHE", str(root / "cache"))

    def refuse(*a, **k):
        raise OSError("network refused by backbones_fullsize.py")
    socket.socket.connect = refuse

    from medadapt.backbones import load_backbone, replicas
    from medadapt.backbones.conch import PUBLISHED_CONFIG, CoCa, config_from_state_dict, read_state_dict
    report = {}

    # --- BiomedCLIP, full size ---
    t0 = time.time()
    bm = root / "biomedclip"
    bm.mkdir()
    replicas.biomedclip(bm, full=True)  # the published sizes, random weights
    replicas.hub_cache_layout(root / "hub", "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", bm)
    for route, spec in (("folder", str(bm)), ("alias", "biomedclip")):
        bb = load_backbone(spec)
        with torch.no_grad():
            t = bb.encode_text(bb.tokenize(["a histopathology image of tumor"]))
            i = bb.encode_image(torch.zeros(1, 3, 224, 224))
        report[f"biomedclip_{route}"] = {
            "params": sum(p.numel() for p in bb.parameters()), "text_layers": len(bb.text_blocks()),
            "text_width": bb.text_width, "vocab": bb.token_embedding.num_embeddings,
            "t": t[0, :3].tolist(), "i": i[0, :3].tolist()}
    report["biomedclip_seconds"] = round(time.time() - t0, 1)

    # --- CONCH, full size ---
    t0 = time.time()
    co = root / "conch"
    co.mkdir()
    torch.manual_seed(0)
    torch.save(CoCa(PUBLISHED_CONFIG).state_dict(), co / "pytorch_model.bin")
    replicas.write_conch_tokenizer(co / "conch_byte_level_bpe_uncased.json")
    report["conch_config_is_published"] = config_from_state_dict(
        read_state_dict(co / "pytorch_model.bin")) == PUBLISHED_CONFIG
    bb = load_backbone(str(co))
    with torch.no_grad():
        t = bb.encode_text(bb.tokenize(["a histopathology image of tumor"]))
        i = bb.encode_image(torch.zeros(1, 3, 448, 448))
    report["conch"] = {"params": sum(p.numel() for p in bb.parameters()),
                       "image_size": bb.image_size, "context": bb.context_length,
                       "embed_dim": bb.embed_dim, "t_shape": list(t.shape), "i_shape": list(i.shape)}
    report["conch_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    ok = report["conch_config_is_published"] and report["biomedclip_folder"]["t"] == \
        report["biomedclip_alias"]["t"] and report["biomedclip_folder"]["text_layers"] == 12
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
