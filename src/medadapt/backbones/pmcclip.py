"""PMC-CLIP (Lin et al., MICCAI 2023; WeixiongLin/PMC-CLIP): a CLIP ResNet-50 image encoder and a
PubMedBERT text encoder, released as three PyTorch files rather than an open_clip or transformers
checkpoint (Hugging Face *dataset* repository ``axiong/pmc_oa``)::

    image_encoder(resnet50).pth    state dict of CLIP's ModifiedResNet (attention pooling)
    text_encoder.pth               state dict of a transformers BertModel (pooler included)
    text_projection_layer.pth      a tensor [text width, embed dim]

Loaded as BiomedCoOp loads it (``trainers/zeroshot.py`` ZeroshotPMCCLIP, ``clip/pmcclip.py``):
``ModifiedResNet(layers=[3, 4, 6, 3], output_dim=768, heads=8, image_size=224, width=64)``
(PMC-CLIP's ``model_configs/RN50_fusion4.json``), text features ``pooler_output @ projection`` of
prompts padded to 77 tokens with their attention mask, and a fixed logit scale ``exp(4.4292)``.
The BERT architecture and tokenizer come from ``microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract``
(BiomedCoOp's choice) unless the weights folder carries its own ``text_encoder/`` (config.json +
tokenizer files). Layers, width, output dimension and image size are read from the image state dict
(as CLIP's ``build_model`` does); the number of attention-pooling heads is not in the weights and
is PMC-CLIP's 8.

Sources: ``pmc_clip:FOLDER`` (a folder with the three files), or the registered ``pmc-clip`` (the
files from the Hugging Face cache of ``axiong/pmc_oa``; offline once cached). Deep visual prompts
are not available (a ResNet has no token sequence): :meth:`vision_blocks` is empty.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from torchvision import transforms as T

from medadapt.backbones.base import Backbone
from medadapt.errors import UserError

IMAGE_FILE = "image_encoder(resnet50).pth"
TEXT_FILE = "text_encoder.pth"
PROJ_FILE = "text_projection_layer.pth"
FILES = (IMAGE_FILE, TEXT_FILE, PROJ_FILE)
HUB_REPO = "axiong/pmc_oa"  # a dataset repository on the Hugging Face hub
TEXT_MODEL = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
HEADS = 8  # attention-pooling heads (clip/pmcclip.py; not recoverable from the weights)
LOGIT_SCALE = 4.4292  # BiomedCoOp ZeroshotPMCCLIP: logit_scale = exp(4.4292)
CONTEXT_LENGTH = 77  # RN50_fusion4.json text_cfg.context_length; BiomedCoOp max_length=77
MEAN = (0.48145466, 0.4578275, 0.40821073)  # PMC-CLIP transform.py: OpenAI mean / std
STD = (0.26862954, 0.26130258, 0.27577711)
CROP_SCALE = 0.5  # PMC-CLIP README pre-training command: --crop-scale 0.5 (not used for adaptation)


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code (refused), wrong format
        raise UserError(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


def resnet_config(sd: dict[str, torch.Tensor]) -> dict:
    """ModifiedResNet arguments from its state dict (CLIP ``build_model``'s reading)."""
    try:
        layers = [len({k.split(".")[1] for k in sd if k.startswith(f"layer{b}.")})
                  for b in (1, 2, 3, 4)]
        width = int(sd["conv1.weight"].shape[0]) * 2  # the stem's first conv has width // 2
        output_dim = int(sd["attnpool.c_proj.weight"].shape[0])
        spacial = int(round(math.sqrt(sd["attnpool.positional_embedding"].shape[0] - 1)))
    except KeyError as e:
        raise UserError(f"{IMAGE_FILE}: not a CLIP ModifiedResNet state dict (missing {e})") from None
    if min(layers) == 0:
        raise UserError(f"{IMAGE_FILE}: not a CLIP ModifiedResNet state dict (layers {layers})")
    return {"layers": layers, "width": width, "output_dim": output_dim,
            "image_size": spacial * 32, "heads": HEADS}


def _hub_files(repo: str) -> Path:
    from huggingface_hub import hf_hub_download
    paths = []
    for f in FILES:
        try:
            paths.append(Path(hf_hub_download(repo, f, repo_type="dataset")))
        except Exception as e:
            raise UserError(
                f"cannot get {f} of PMC-CLIP from the Hugging Face dataset {repo} "
                f"({type(e).__name__}); without internet, put {', '.join(FILES)} into a folder "
                "and pass --backbone pmc_clip:FOLDER (the text tower also needs "
                f"{TEXT_MODEL} in the hub cache, or FOLDER/text_encoder/)") from None
    if len({p.parent for p in paths}) != 1:
        raise UserError(f"PMC-CLIP files of {repo} are not in one snapshot folder")
    return paths[0].parent


class PMCCLIPBackbone(Backbone):
    family = "pmc_clip"

    def __init__(self, visual: nn.Module, text: nn.Module, projection: torch.Tensor, tokenizer,
                 image_size: int, name: str, source: str):
        super().__init__(name, source)
        self.visual = visual
        self.text = text
        self.text_projection = nn.Parameter(projection)
        self.register_buffer("_logit_scale", torch.tensor(LOGIT_SCALE))
        self._tok = tokenizer
        self.image_size = int(image_size)
        self.context_length = CONTEXT_LENGTH
        self.text_width = int(text.config.hidden_size)
        self.vision_width = int(visual.attnpool.k_proj.in_features)
        self.embed_dim = int(projection.shape[1])
        norm = T.Normalize(MEAN, STD)
        self.preprocess = T.Compose([T.Resize(self.image_size, interpolation=T.InterpolationMode.BICUBIC),
                                     T.CenterCrop(self.image_size), T.ToTensor(), norm])
        # the one train-time augmentation of every family (backbones/transforms.py), not PMC-CLIP's
        # pre-training crop scale (CROP_SCALE): the adaptation methods' references use 0.08-1 + flip
        from medadapt.backbones.transforms import train_transform
        self.train_preprocess = train_transform(self.image_size, MEAN, STD, "bicubic")
        self.freeze()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self._tok(list(texts), padding="max_length", truncation=True,
                         max_length=self.context_length, return_tensors="pt").input_ids

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.text.embeddings.word_embeddings

    def special_token_mask(self, ids: torch.Tensor) -> torch.Tensor:
        special = torch.tensor(sorted(set(self._tok.all_special_ids)), device=ids.device)
        return torch.isin(ids, special)

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids == self._tok.sep_token_id).int().argmax(-1)

    def pooled_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """BERT pools [CLS], the first token."""
        return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)

    def text_blocks(self) -> list[nn.Module]:
        return list(self.text.encoder.layer)

    def vision_blocks(self) -> list[nn.Module]:
        return []  # a ResNet: no token sequence for deep visual prompts

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels.to(self.text_projection.dtype))

    def _encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self._tok.pad_token_id).long()
        out = self.text(input_ids=ids, attention_mask=mask)
        return out.pooler_output @ self.text_projection

    def _logit_scale_param(self) -> torch.Tensor:
        return self._logit_scale


def load_pmc_clip(source: str, name: str | None = None, device: str = "cpu",
                  text_model: str | None = None) -> PMCCLIPBackbone:
    """``source``: a folder with the three files, or ``hf-dataset:REPO`` (default ``axiong/pmc_oa``)
    read through the Hugging Face cache."""
    from open_clip.modified_resnet import ModifiedResNet
    from transformers import AutoConfig, AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if source.startswith("hf-dataset:"):
        folder = _hub_files(source[len("hf-dataset:"):])
    else:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise UserError(f"PMC-CLIP folder not found: {folder}")
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{folder}: PMC-CLIP needs {', '.join(FILES)}; missing {missing} (from "
                        f"https://huggingface.co/datasets/{HUB_REPO})")
    img_sd = _torch_load(folder / IMAGE_FILE)
    txt_sd = _torch_load(folder / TEXT_FILE)
    proj = _torch_load(folder / PROJ_FILE)
    if not isinstance(img_sd, dict) or not isinstance(txt_sd, dict) or not torch.is_tensor(proj):
        raise UserError(f"{folder}: expected two state dicts and a projection tensor")
    cfg = resnet_config(img_sd)
    visual = ModifiedResNet(cfg["layers"], cfg["output_dim"], cfg["heads"], cfg["image_size"],
                            cfg["width"])
    try:
        visual.load_state_dict(img_sd, strict=True)
    except RuntimeError as e:
        raise UserError(f"{folder / IMAGE_FILE}: does not fit ModifiedResNet{cfg} "
                        f"({str(e).splitlines()[0][:200]})") from None
    tdir = folder / "text_encoder"
    tsrc = str(tdir) if (tdir / "config.json").is_file() else (text_model or TEXT_MODEL)
    from medadapt.safeio import refuse_remote_code
    refuse_remote_code(tsrc if Path(tsrc).is_dir() else None, "PMC-CLIP text tower")
    try:
        tcfg = AutoConfig.from_pretrained(tsrc, trust_remote_code=False)
        tok = AutoTokenizer.from_pretrained(tsrc, trust_remote_code=False)
    except Exception as e:
        raise UserError(f"PMC-CLIP text tower: cannot load the BERT config / tokenizer {tsrc!r} "
                        f"({type(e).__name__}); without internet, fill the Hugging Face cache with "
                        f"it or put config.json + vocab.txt into {tdir}") from None
    text = BertModel(tcfg)  # add_pooling_layer=True: PMC-CLIP uses pooler_output
    sd = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in txt_sd.items()}
    sd.pop("embeddings.position_ids", None)  # a buffer older transformers versions saved
    result = text.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{folder / TEXT_FILE}: does not fit {tsrc} (missing "
                        f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
    if tuple(proj.shape) != (tcfg.hidden_size, cfg["output_dim"]):
        raise UserError(f"{folder / PROJ_FILE}: shape {tuple(proj.shape)}, expected "
                        f"({tcfg.hidden_size}, {cfg['output_dim']})")
    bb = PMCCLIPBackbone(visual, text, proj.float(), tok, cfg["image_size"],
                         name or f"pmc_clip:{folder}", source)
    bb.config = {**cfg, "text_model": tsrc, "logit_scale": LOGIT_SCALE}
    return bb.to(device)


def save_pmc_clip_files(folder: str | Path, visual: nn.Module, text: nn.Module,
                        projection: torch.Tensor, tokenizer=None) -> Path:
    """Write the three files in PMC-CLIP's released layout (and, for a replica, the text tower's
    config and tokenizer under ``text_encoder/``)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(visual.state_dict(), out / IMAGE_FILE)
    torch.save(text.state_dict(), out / TEXT_FILE)
    torch.save(projection.detach().clone(), out / PROJ_FILE)
    if tokenizer is not None:
        text.config.save_pretrained(out / "text_encoder")
        tokenizer.save_pretrained(out / "text_encoder")
    return out


__all__ = ["PMCCLIPBackbone", "load_pmc_clip", "save_pmc_clip_files", "resnet_config", "FILES"]
