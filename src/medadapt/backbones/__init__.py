"""Backbone registry and loader.

A backbone spec is a registered alias (``plip``, ``biomedclip``, ``tiny-hf-clip``, ...),
``open_clip:SOURCE`` (``hf-hub:org/repo``, ``local-dir:PATH``, ``NAME@TAG``), ``hf:SOURCE`` (hub
id or folder of a transformers CLIPModel), ``hf-hub:org/repo`` (open_clip), or a local folder
(the family is detected from its files).
"""
from __future__ import annotations

import os
from pathlib import Path

from medadapt.backbones.base import Backbone, BackboneSpec
from medadapt.errors import UserError
from medadapt.registry import Registry

BACKBONES: Registry[BackboneSpec] = Registry("backbone")

_R = BACKBONES.register
_R("plip", BackboneSpec("plip", "hf_clip", "vinid/plip", 224, 77,
                        "research use (PLIP model card)", "PLIP, ViT-B/32, pathology (OpenPath tweets)"))
_R("biomedclip", BackboneSpec(
    "biomedclip", "open_clip", "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    224, 256, "MIT", "BiomedCLIP, ViT-B/16 + PubMedBERT text tower (PMC-15M)"))
_R("quiltnet-b32", BackboneSpec("quiltnet-b32", "open_clip", "hf-hub:wisdomik/QuiltNet-B-32", 224,
                                77, "MIT (research)", "QuiltNet ViT-B/32, histopathology (Quilt-1M)"))
_R("quiltnet-b16", BackboneSpec("quiltnet-b16", "open_clip", "hf-hub:wisdomik/QuiltNet-B-16", 224,
                                77, "MIT (research)", "QuiltNet ViT-B/16, histopathology (Quilt-1M)"))
_R("conch", BackboneSpec("conch", "conch", "hf_hub:MahmoodLab/conch", 448, 128,
                         "CC-BY-NC-ND 4.0, gated (accept terms on the hub)",
                         "CONCH ViT-B/16, needs the `conch` package (pip install from its GitHub)"))
_R("monet", BackboneSpec("monet", "hf_clip", "suinleelab/monet", 224, 77, "see model card",
                         "MONET ViT-L/14, dermatology"))
_R("clip-vit-b16", BackboneSpec("clip-vit-b16", "hf_clip", "openai/clip-vit-base-patch16", 224, 77,
                                "MIT", "OpenAI CLIP ViT-B/16 (general domain)"))
_R("clip-vit-b32", BackboneSpec("clip-vit-b32", "open_clip", "ViT-B-32@openai", 224, 77, "MIT",
                                "OpenAI CLIP ViT-B/32 via open_clip (general domain)"))
_R("pubmedclip", BackboneSpec(
    "pubmedclip", "hf_clip", "flaviagiammarino/pubmed-clip-vit-base-patch32", 224, 77, "see model card",
    "PubMedCLIP ViT-B/32 (CLIP fine-tuned on ROCO radiology captions; Eslami et al., EACL 2023 "
    "Findings), the transformers conversion; BiomedCoOp's tables"))
_R("pmc-clip", BackboneSpec(
    "pmc-clip", "pmc_clip", "hf-dataset:axiong/pmc_oa", 224, 77, "code MIT; weights: see axiong/pmc_oa",
    "PMC-CLIP ResNet-50 + PubMedBERT (Lin et al., MICCAI 2023), its three .pth files "
    "(backbones/pmcclip.py); BiomedCoOp's tables"))
_R("tiny-open-clip", BackboneSpec("tiny-open-clip", "open_clip", "tiny", 32, 32, "test only",
                                  "TEST ONLY: random-init open_clip CustomTextCLIP + HF BERT text tower "
                                  "(BiomedCLIP's classes); numbers are meaningless"))
_R("tiny-open-clip-bpe", BackboneSpec("tiny-open-clip-bpe", "open_clip", "tiny", 32, 77, "test only",
                                      "TEST ONLY: random-init open_clip CLIP with its own text "
                                      "transformer (QuiltNet's classes); numbers are meaningless"))
_R("tiny-hf-clip", BackboneSpec("tiny-hf-clip", "hf_clip", "tiny", 32, 77, "test only",
                                "TEST ONLY: random-init transformers CLIPModel (PLIP's class); "
                                "numbers are meaningless"))


def _shipped_synth() -> Path:
    from importlib import resources
    return Path(str(resources.files("medadapt.synth").joinpath("weights", "synthpath-clip")))


_R("synthpath-clip", BackboneSpec("synthpath-clip", "hf_clip", "package:synth/weights/synthpath-clip",
                                  64, 32, "Apache-2.0 (ours)",
                                  "small CLIPModel pretrained by medadapt on its synthetic H&E world "
                                  "(offline demo/tests; not a claim about real pathology)"))


def tiny_dir(name: str) -> Path:
    from medadapt.data.sources import cache_home
    return cache_home() / "tiny" / name


def _tiny_folder(name: str) -> Path:
    """Build (once, deterministically) and return the folder of a tiny test backbone."""
    from medadapt.backbones import tiny
    folder = tiny_dir(name)
    marker = folder / ".complete"
    if not marker.exists():
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        if name == "tiny-hf-clip":
            tiny.save_tiny_hf_clip(tmp)
        else:
            tiny.save_tiny_open_clip(tmp, hf_text=(name == "tiny-open-clip"))
            if name == "tiny-open-clip":  # the HF text tower config must point at the final folder
                import json
                cfg = json.loads((tmp / "open_clip_config.json").read_text())
                for k in ("hf_model_name", "hf_tokenizer_name"):
                    cfg["model_cfg"]["text_cfg"][k] = str(folder.resolve())
                (tmp / "open_clip_config.json").write_text(json.dumps(cfg, indent=1))
        (tmp / ".complete").write_text("ok")
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _detect_family(path: Path) -> str:
    if (path / "open_clip_config.json").exists():
        return "open_clip"
    if (path / "config.json").exists():
        return "hf_clip"
    raise UserError(f"{path}: neither an open_clip folder (open_clip_config.json) nor a "
                    "transformers CLIPModel folder (config.json)")


def _load_pmc_clip(source: str, name: str, device: str = "cpu", **kw) -> Backbone:
    from medadapt.backbones.pmcclip import load_pmc_clip
    return load_pmc_clip(source, name=name, device=device, **kw)


# Extra families (new backbone files): family -> loader(source, name=, device=, **kw) -> Backbone
FAMILY_LOADERS: dict = {}
FAMILY_LOADERS["pmc_clip"] = _load_pmc_clip


def load_backbone(spec: str, device: str = "cpu") -> Backbone:
    """Resolve a backbone spec and load it; every user mistake is a one-line ``UserError``."""
    from medadapt.backbones.hf import load_hf_clip
    from medadapt.backbones.openclip import load_open_clip

    if spec.startswith("open_clip:"):
        src = spec[len("open_clip:"):]
        if os.path.isdir(src):
            src = "local-dir:" + src
        return load_open_clip(src, name=spec, device=device)
    if spec.startswith("hf:"):
        return load_hf_clip(spec[3:], name=spec, device=device)
    if spec.startswith(("hf-hub:", "local-dir:")):
        return load_open_clip(spec, name=spec, device=device)
    if spec.startswith("pmc_clip:"):
        return FAMILY_LOADERS["pmc_clip"](spec[len("pmc_clip:"):], name=spec, device=device)
    if spec not in BACKBONES and (os.sep in spec or spec.startswith(".")):
        p = Path(spec)
        if not p.exists():
            raise UserError(f"backbone folder not found: {p}")
        fam = _detect_family(p)
        return (load_open_clip("local-dir:" + str(p), name=spec, device=device) if fam == "open_clip"
                else load_hf_clip(str(p), name=spec, device=device))
    info = BACKBONES.get(spec)
    if info.source == "tiny":
        folder = _tiny_folder(info.name)
        if info.family == "hf_clip":
            bb = load_hf_clip(str(folder), name=info.name, device=device)
        else:
            bb = load_open_clip("local-dir:" + str(folder), name=info.name, device=device)
        bb.source = f"tiny (built at {folder})"
        return bb
    if info.source.startswith("package:"):
        folder = _shipped_synth()
        if not (folder / "config.json").exists():
            raise UserError(f"{info.name}: shipped weights missing at {folder}; rebuild with "
                            "`medadapt synth pretrain`")
        return load_hf_clip(str(folder), name=info.name, device=device)
    if info.family == "conch":
        return _load_conch(info, device)
    if info.family in FAMILY_LOADERS:
        return FAMILY_LOADERS[info.family](info.source, name=info.name, device=device)
    if info.family == "hf_clip":
        return load_hf_clip(info.source, name=info.name, device=device)
    return load_open_clip(info.source, name=info.name, device=device)


def _load_conch(info: BackboneSpec, device: str) -> Backbone:
    """CONCH through its own package (a CoCa-style open_clip fork)."""
    try:
        from conch.open_clip_custom import create_model_from_pretrained, get_tokenizer
    except ImportError:
        raise UserError("backbone 'conch' needs the CONCH package: pip install "
                        "git+https://github.com/Mahmoodlab/CONCH.git (and accept the model's "
                        "terms on the Hugging Face hub)") from None
    from medadapt.backbones.openclip import OpenCLIPBackbone
    try:
        model, preprocess = create_model_from_pretrained("conch_ViT-B-16", info.source)
    except Exception as e:
        raise UserError(f"cannot load CONCH ({type(e).__name__}: {e}); download "
                        "pytorch_model.bin from MahmoodLab/conch and pass its path") from None
    tok = get_tokenizer()

    class _Tok:
        context_length = info.context_length
        tokenizer = tok

        def __call__(self, texts):
            from conch.open_clip_custom import tokenize
            return tokenize(texts=texts, tokenizer=tok)

    return OpenCLIPBackbone(model.to(device), _Tok(), preprocess, preprocess, info.name, info.source)


__all__ = ["Backbone", "BackboneSpec", "BACKBONES", "load_backbone"]
