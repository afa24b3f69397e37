"""Hugging Face ``CLIPModel`` family: PLIP (``vinid/plip``), MONET (``suinleelab/monet``),
``openai/clip-vit-base-patch16``, the shipped ``synthpath-clip``, any local CLIPModel folder.

Hub ids and local folders take the same path: ``CLIPModel.from_pretrained`` +
``AutoTokenizer`` / ``AutoImageProcessor.from_pretrained``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from medadapt.backbones.base import Backbone
from medadapt.backbones.transforms import transform_from_image_processor
from medadapt.errors import UserError


def transforms_from_image_processor(ip, train: bool = False):
    """Eval: the file's own steps (:func:`transform_from_image_processor`); train: the one
    augmentation policy of :mod:`medadapt.backbones.transforms`."""
    return transform_from_image_processor(ip, train=train)


class HFCLIPBackbone(Backbone):
    family = "hf_clip"
    trim_text_padding = True  # causal mask, absolute positions 0..L-1, pooled at the end token

    def __init__(self, model: nn.Module, tokenizer, image_processor, name: str, source: str):
        super().__init__(name, source)
        self.model = model
        self._tok = tokenizer
        self.preprocess = transforms_from_image_processor(image_processor)
        self.train_preprocess = transforms_from_image_processor(image_processor, train=True)
        tc, vc = model.config.text_config, model.config.vision_config
        self.image_size = int(vc.image_size)
        self.context_length = int(tc.max_position_embeddings)
        self.text_width = int(tc.hidden_size)
        self.vision_width = int(vc.hidden_size)
        self.embed_dim = int(model.config.projection_dim)
        self.freeze()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self._tok(list(texts), padding="max_length", truncation=True,
                         max_length=self.context_length, return_tensors="pt").input_ids

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.text_model.embeddings.token_embedding

    def special_token_mask(self, ids: torch.Tensor) -> torch.Tensor:
        special = torch.tensor(sorted(set(self._tok.all_special_ids)), device=ids.device)
        return torch.isin(ids, special)

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        eos = self.model.config.text_config.eos_token_id
        if eos == 2:  # legacy configs: the end token has the highest id (transformers does this)
            return ids.argmax(-1)
        return (ids == eos).int().argmax(-1)

    def pooled_positions(self, ids: torch.Tensor) -> torch.Tensor:
        return self.eos_positions(ids)  # CLIPTextTransformer pools the end-of-text token

    def vision_input_module(self) -> nn.Module:
        return self.model.vision_model.pre_layrnorm

    def text_blocks(self) -> list[nn.Module]:
        return list(self.model.text_model.encoder.layers)

    def vision_blocks(self) -> list[nn.Module]:
        return list(self.model.vision_model.encoder.layers)

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=pixels)
        return out if torch.is_tensor(out) else out.pooler_output

    def _encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model.get_text_features(input_ids=ids)
        return out if torch.is_tensor(out) else out.pooler_output

    def _logit_scale_param(self) -> torch.Tensor:
        return self.model.logit_scale


def load_hf_clip(source: str, name: str | None = None, device: str = "cpu",
                 cache_dir: str | None = None) -> HFCLIPBackbone:
    """``source``: a hub id (``vinid/plip``) or a local folder saved with ``save_pretrained``."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # medadapt shows its own progress; no per-load bars

    import os

    from medadapt.backbones import hub
    if not os.path.isdir(source) and source.count("/") == 1 and cache_dir is None:
        # a hub id: its cached snapshot first (no network call when the files are here)
        snap = hub.cached_snapshot(source)
        if snap is not None and (snap / "config.json").is_file() and hub.has_file(
                snap, ["model.safetensors", "pytorch_model.bin"]):
            source_dir = str(snap)
        elif hub.offline():
            raise UserError(
                f"{name or source}: config.json + weights (model.safetensors or pytorch_model.bin) + "
                f"tokenizer and preprocessor files of https://huggingface.co/{source} are not in "
                "the Hugging Face cache and the network is off (HF_HUB_OFFLINE=1); download them on "
                f"a connected machine (`hf download {source}`) or put them in a folder and pass "
                "--backbone FOLDER")
        else:
            source_dir = source
    else:
        source_dir = source

    from medadapt.safeio import refuse_remote_code
    refuse_remote_code(source_dir if os.path.isdir(source_dir) else None)  # data, never code
    try:
        no_code = {"trust_remote_code": False}
        model = CLIPModel.from_pretrained(source_dir, cache_dir=cache_dir, **no_code)
        tok = AutoTokenizer.from_pretrained(source_dir, cache_dir=cache_dir, **no_code)
        ip = AutoImageProcessor.from_pretrained(source_dir, cache_dir=cache_dir, **no_code)
    except Exception as e:
        raise UserError(
            f"cannot load Hugging Face CLIP model {source!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}); without internet, download the "
            "repository (config.json, model.safetensors, tokenizer and preprocessor files) into a "
            "folder and pass --backbone hf:PATH, or pre-fill the Hugging Face cache and set "
            "HF_HUB_OFFLINE=1") from None
    return HFCLIPBackbone(model.to(device), tok, ip, name or source, source)
