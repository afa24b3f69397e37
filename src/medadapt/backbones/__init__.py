"""Backbone registry and loader.

A backbone spec is a registered alias (``plip``, ``biomedclip``, ``tiny-hf-clip``, ...),
``open_clip:SOURCE`` (``hf-hub:org/repo``, ``local-dir:PATH``, ``NAME@TAG``), ``hf:SOURCE`` (hub
id or folder of a transformers CLIPModel), ``conch:SOURCE`` (hub id or folder with CONCH's
``pytorch_model.bin``), ``hf-hub:org/repo`` (open_clip), or a local folder (the family is detected
from its files). Hub ids are read from the Hugging Face cache when present, so every registered
backbone loads with the network off once its files are there (``medadapt backbones`` says which).
New families: a module with a loader, registered in :data:`FAMILY_LOADERS`, plus registry lines.
"""
from __future__ import annotations

import os
from pathlib import Path

from medadapt.backbones.base import Backbone, BackboneSpec
from medadapt.errors import UserError
from medadapt.registry import Registry

BACKBONES: Registry[BackboneSpec] = Registry("backbone")

# What a user needs offline (the Hugging Face cache of the hub id, or the same files in a folder)
_OC_BIN = "open_clip_config.json + open_clip_pytorch_model.bin"
_HF_FILES = ("config.json + weights (model.safetensors or pytorch_model.bin) + tokenizer files "
             "(vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json) + "
             "preprocessor_config.json")

_R = BACKBONES.register
_R("plip", BackboneSpec("plip", "hf_clip", "vinid/plip", 224, 77,
                        "research use (PLIP model card)", "PLIP, ViT-B/32, pathology (OpenPath tweets)",
                        files=_HF_FILES))
_R("biomedclip", BackboneSpec(
    "biomedclip", "open_clip", "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    224, 256, "MIT", "BiomedCLIP, ViT-B/16 + PubMedBERT text tower (PMC-15M)",
    files=_OC_BIN + " + tokenizer.json, tokenizer_config.json, vocab.txt, special_tokens_map.json "
    "(the PubMedBERT text-tower config is carried by medadapt)"))
_R("quiltnet-b32", BackboneSpec("quiltnet-b32", "open_clip", "hf-hub:wisdomik/QuiltNet-B-32", 224,
                                77, "MIT (research)", "QuiltNet ViT-B/32, histopathology (Quilt-1M); "
                                "GELU as its config says (see quiltnet-b32-quickgelu)", files=_OC_BIN))
_R("quiltnet-b16", BackboneSpec("quiltnet-b16", "open_clip", "hf-hub:wisdomik/QuiltNet-B-16", 224,
                                77, "MIT (research)", "QuiltNet ViT-B/16, histopathology (Quilt-1M); "
                                "GELU as its config says (see quiltnet-b16-quickgelu)", files=_OC_BIN))
_R("quiltnet-b32-quickgelu", BackboneSpec(
    "quiltnet-b32-quickgelu", "open_clip", "hf-hub:wisdomik/QuiltNet-B-32", 224, 77, "MIT (research)",
    "QuiltNet ViT-B/32 with OpenAI CLIP's QuickGELU (the activation of the weights it was "
    "fine-tuned from; docs/backbones.md)", quick_gelu=True, files=_OC_BIN))
_R("quiltnet-b16-quickgelu", BackboneSpec(
    "quiltnet-b16-quickgelu", "open_clip", "hf-hub:wisdomik/QuiltNet-B-16", 224, 77, "MIT (research)",
    "QuiltNet ViT-B/16 with QuickGELU (docs/backbones.md)", quick_gelu=True, files=_OC_BIN))
_R("conch", BackboneSpec("conch", "conch", "MahmoodLab/conch", 448, 128,
                         "CC-BY-NC-ND 4.0, gated (accept terms on the hub)",
                         "CONCH ViT-B/16 (CoCa), medadapt's own implementation (no conch package)",
                         files="pytorch_model.bin + conch_byte_level_bpe_uncased.json (CONCH's "
                         "GitHub, conch/open_clip_custom/tokenizers/) or tokenizer.json"))
_R("monet", BackboneSpec("monet", "hf_clip", "suinleelab/monet", 224, 77, "see model card",
                         "MONET ViT-L/14, dermatology", files=_HF_FILES))
_R("clip-vit-b16", BackboneSpec("clip-vit-b16", "hf_clip", "openai/clip-vit-base-patch16", 224, 77,
                                "MIT", "OpenAI CLIP ViT-B/16 (general domain)", files=_HF_FILES))
_R("clip-vit-b32", BackboneSpec("clip-vit-b32", "open_clip", "ViT-B-32-quickgelu@openai", 224, 77,
                                "MIT", "OpenAI CLIP ViT-B/32 via open_clip, QuickGELU as trained "
                                "(general domain)",
                                files="open_clip's download of the openai tag (hub "
                                "timm/vit_base_patch32_clip_224.openai: open_clip_pytorch_model.bin)"))
_R("pubmedclip", BackboneSpec(
    "pubmedclip", "hf_clip", "flaviagiammarino/pubmed-clip-vit-base-patch32", 224, 77, "see model card",
    "PubMedCLIP ViT-B/32 (CLIP fine-tuned on ROCO radiology captions; Eslami et al., EACL 2023 "
    "Findings), the transformers conversion; BiomedCoOp's tables", files=_HF_FILES))
_R("pmc-clip", BackboneSpec(
    "pmc-clip", "pmc_clip", "hf-dataset:axiong/pmc_oa", 224, 77, "code MIT; weights: see axiong/pmc_oa",
    "PMC-CLIP ResNet-50 + PubMedBERT (Lin et al., MICCAI 2023), its three .pth files "
    "(backbones/pmcclip.py); BiomedCoOp's tables",
    files="its three .pth files (backbones/pmcclip.py FILES) + the PubMedBERT text tower in the "
    "hub cache"))
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
    from medadapt.paths import cache_home
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
        (tmp / ".complete").write_text("ok")
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _detect_family(path: Path) -> str:
    from medadapt.backbones.conch import WEIGHTS, is_conch_folder
    if (path / "open_clip_config.json").exists():
        return "open_clip"
    if (path / "config.json").exists():
        return "hf_clip"
    if is_conch_folder(path):
        return "conch"
    raise UserError(f"{path}: not a model folder: expected open_clip_config.json (open_clip: "
                    "BiomedCLIP, QuiltNet), config.json (transformers CLIPModel: PLIP, MONET) or "
                    f"{WEIGHTS} without a config (CONCH)")


def _load_family(family: str, source: str, name: str, device: str, **kw) -> Backbone:
    from medadapt.backbones.conch import load_conch
    from medadapt.backbones.hf import load_hf_clip
    from medadapt.backbones.openclip import load_open_clip
    if family == "open_clip":
        if os.path.isdir(source):
            source = "local-dir:" + source
        return load_open_clip(source, name=name, device=device, **kw)
    if family == "hf_clip":
        return load_hf_clip(source, name=name, device=device)
    if family == "conch":
        return load_conch(source, name=name, device=device)
    if family in FAMILY_LOADERS:
        return FAMILY_LOADERS[family](source, name=name, device=device, **kw)
    raise UserError(f"unknown backbone family {family!r}")


# Extra families (new backbone files): family -> loader(source, name=, device=, **kw) -> Backbone
FAMILY_LOADERS: dict = {}


def _load_pmc_clip(source: str, name: str, device: str = "cpu", **kw) -> Backbone:
    from medadapt.backbones.pmcclip import load_pmc_clip
    return load_pmc_clip(source, name=name, device=device, **kw)


FAMILY_LOADERS["pmc_clip"] = _load_pmc_clip


def load_backbone(spec: str, device: str = "cpu") -> Backbone:
    """Resolve a backbone spec and load it; every user mistake is a one-line ``UserError``."""
    if spec.startswith("open_clip:"):
        return _load_family("open_clip", spec[len("open_clip:"):], spec, device)
    if spec.startswith("hf:"):
        return _load_family("hf_clip", spec[3:], spec, device)
    if spec.startswith("conch:"):
        return _load_family("conch", spec[len("conch:"):], spec, device)
    if spec.startswith(("hf-hub:", "local-dir:")):
        return _load_family("open_clip", spec, spec, device)
    if spec.startswith("pmc_clip:"):
        return _load_family("pmc_clip", spec[len("pmc_clip:"):], spec, device)
    if spec not in BACKBONES and (os.sep in spec or spec.startswith(".") or os.path.isdir(spec)):
        p = Path(spec)
        if not p.exists():
            raise UserError(f"backbone folder not found: {p}")
        return _load_family(_detect_family(p), str(p), spec, device)
    info = BACKBONES.get(spec)
    if info.source == "tiny":
        from medadapt.backbones import tiny
        folder = _tiny_folder(info.name)
        kw = {} if info.family != "open_clip" else {"text_configs": tiny.text_tower_configs(folder)}
        bb = _load_family(info.family, str(folder), info.name, device, **kw)
        bb.source = f"tiny (built at {folder})"
        return bb
    if info.source.startswith("package:"):
        folder = _shipped_synth()
        if not (folder / "config.json").exists():
            raise UserError(f"{info.name}: shipped weights missing at {folder}; rebuild with "
                            "`medadapt synth pretrain`")
        return _load_family("hf_clip", str(folder), info.name, device)
    kw = {"quick_gelu": True} if info.quick_gelu else {}
    return _load_family(info.family, info.source, info.name, device, **kw)


def local_status(info: BackboneSpec) -> str:
    """Whether ``info``'s weights are on this machine (no network): 'cached: PATH', 'built',
    'shipped', or 'missing'."""
    from medadapt.backbones import hub
    if info.source == "tiny":
        return "built on first use (test only)"
    if info.source.startswith("package:"):
        return "shipped" if (_shipped_synth() / "config.json").exists() else "missing (rebuild)"
    src = info.source
    if info.family == "open_clip" and not src.startswith("hf-hub:"):
        try:
            import open_clip
            name, tag = src.split("@", 1)
            cfg = open_clip.get_pretrained_cfg(name, tag)
            repo = (cfg.get("hf_hub") or "").strip("/")
            fname = cfg.get("hf_hub_filename") or "open_clip_pytorch_model.bin"
        except Exception:
            return "unknown"
        snap = hub.cached_snapshot(repo) if repo else None
        return f"cached ({snap})" if hub.has_file(snap, [fname, "open_clip_model.safetensors"]) \
            else "missing"
    if src.startswith("hf-dataset:"):  # PMC-CLIP: files of a Hugging Face dataset repo
        from medadapt.backbones.pmcclip import FILES
        snap = hub.cached_snapshot(src.split(":", 1)[1], repo_type="dataset")
        ok = snap is not None and all((snap / f).is_file() for f in FILES)
        return f"cached ({snap})" if ok else "missing"
    repo = src.split(":", 1)[1] if src.startswith(("hf-hub:", "hf_hub:")) else src
    snap = hub.cached_snapshot(repo)
    need = {"open_clip": ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"],
            "hf_clip": ["model.safetensors", "pytorch_model.bin"],
            "conch": ["pytorch_model.bin"]}.get(info.family, [])
    return f"cached ({snap})" if hub.has_file(snap, need) else "missing"


def how_to_get(info: BackboneSpec) -> str:
    if info.source == "tiny" or info.source.startswith("package:"):
        return ""
    src = info.source
    repo = src.split(":", 1)[1] if src.startswith(("hf-hub:", "hf_hub:")) else src
    if src.startswith("hf-dataset:"):
        return (f"`hf download --repo-type dataset {src.split(':', 1)[1]}` on a connected machine "
                f"(HF cache; then HF_HUB_OFFLINE=1), or the files in a folder: "
                f"--backbone pmc_clip:DIR. Needs: {info.files}")
    if info.family == "open_clip" and not src.startswith("hf-hub:"):
        return "first use with network (open_clip download), or --backbone open_clip:local-dir:DIR"
    return (f"`hf download {repo}` on a connected machine (HF cache; then HF_HUB_OFFLINE=1), or "
            f"its files in a folder: --backbone DIR. Needs: {info.files}")


__all__ = ["Backbone", "BackboneSpec", "BACKBONES", "FAMILY_LOADERS", "load_backbone",
           "local_status", "how_to_get"]
