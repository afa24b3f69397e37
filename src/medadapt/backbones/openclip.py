"""open_clip family: BiomedCLIP (HF text tower + timm ViT), QuiltNet and OpenAI CLIP (open_clip
text transformer), CONCH (when ``conch`` is installed), any open_clip checkpoint with its config.

Hub ids and local folders take the same path: ``open_clip.create_model_and_transforms`` with
``hf-hub:org/repo`` or ``local-dir:PATH`` (a folder with ``open_clip_config.json`` + weights).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from medadapt.backbones.base import Backbone
from medadapt.errors import UserError


def _size_of(preprocess_cfg, default: int = 224) -> int:
    size = (preprocess_cfg or {}).get("size", default)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


class OpenCLIPBackbone(Backbone):
    family = "open_clip"

    def __init__(self, model: nn.Module, tokenizer, preprocess_train, preprocess_val, name: str,
                 source: str):
        super().__init__(name, source)
        self.model = model
        self._tok = tokenizer
        self.preprocess = preprocess_val
        self.train_preprocess = preprocess_train
        self._hf_text = hasattr(model, "text") and hasattr(model.text, "transformer") and \
            hasattr(model.text, "config")
        self.image_size = _size_of(getattr(model.visual, "preprocess_cfg", None),
                                   getattr(model.visual, "image_size", (224,))[0]
                                   if isinstance(getattr(model.visual, "image_size", 224), tuple)
                                   else getattr(model.visual, "image_size", 224))
        self.context_length = int(getattr(tokenizer, "context_length", None) or
                                  getattr(model, "context_length", 77))
        self.text_width = self.token_embedding.embedding_dim
        visual = model.visual
        if hasattr(visual, "trunk"):
            self.vision_width = int(getattr(visual.trunk, "embed_dim", 0) or
                                    getattr(visual.trunk, "num_features", 0))
        else:
            self.vision_width = int(visual.transformer.width)
        self.freeze()
        with torch.inference_mode():
            self.embed_dim = int(self._encode_text(self.tokenize(["x"])).shape[-1])

    # --- tokens ---
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self._tok(list(texts), context_length=self.context_length) \
            if not self._hf_text else self._tok(list(texts))

    @property
    def token_embedding(self) -> nn.Embedding:
        m = self.model
        if self._hf_text:
            return m.text.transformer.get_input_embeddings()
        if hasattr(m, "token_embedding"):
            return m.token_embedding
        return m.text.token_embedding

    def _special_ids(self) -> list[int]:
        if self._hf_text:
            return list(self._tok.tokenizer.all_special_ids)
        t = self._tok
        return [0, getattr(t, "sot_token_id", 49406), getattr(t, "eot_token_id", 49407)]

    def special_token_mask(self, ids: torch.Tensor) -> torch.Tensor:
        special = torch.tensor(self._special_ids(), device=ids.device)
        return torch.isin(ids, special)

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        if self._hf_text:
            pad = self.model.text.config.pad_token_id
            return (ids != pad).sum(-1) - 1  # [SEP] is the last non-pad token
        pool = getattr(self.model, "text_pool_type", "argmax")
        if pool == "eos":
            return (ids == self.model.text_eos_id).int().argmax(-1)
        return ids.argmax(-1)

    # --- towers ---
    def text_blocks(self) -> list[nn.Module]:
        m = self.model
        if self._hf_text:
            enc = m.text.transformer.encoder
            return list(getattr(enc, "layer", getattr(enc, "layers", [])))
        tr = m.transformer if hasattr(m, "transformer") else m.text.transformer
        return list(tr.resblocks)

    def vision_blocks(self) -> list[nn.Module]:
        v = self.model.visual
        if hasattr(v, "trunk"):
            return list(v.trunk.blocks)
        return list(v.transformer.resblocks)

    def _hidden_layout(self, tower: str) -> str:
        if tower == "text" and self._hf_text:
            return "bld"
        tr = self.model.visual.transformer if tower == "vision" and not hasattr(self.model.visual, "trunk") \
            else (None if tower == "vision" else
                  (self.model.transformer if hasattr(self.model, "transformer") else self.model.text.transformer))
        return "bld" if tr is None or getattr(tr, "batch_first", True) else "lbd"

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids)

    def _logit_scale_param(self) -> torch.Tensor:
        return self.model.logit_scale


def load_open_clip(source: str, name: str | None = None, device: str = "cpu",
                   cache_dir: str | None = None) -> OpenCLIPBackbone:
    """``source``: ``hf-hub:org/repo``, ``local-dir:PATH``, or a built-in open_clip name with a
    pretrained tag as ``NAME@TAG`` (e.g. ``ViT-B-16@openai``)."""
    import open_clip

    model_name, pretrained = source, None
    if "@" in source and not source.startswith(("hf-hub:", "local-dir:")):
        model_name, pretrained = source.split("@", 1)
    try:
        model, pre_train, pre_val = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device, cache_dir=cache_dir)
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    except Exception as e:  # network, missing files, bad config: all user-fixable
        raise UserError(
            f"cannot load open_clip model {source!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "without internet, download its files (open_clip_config.json + weights) into a folder "
            "and pass --backbone open_clip:local-dir:PATH, or pre-fill the Hugging Face cache and "
            "set HF_HUB_OFFLINE=1") from None
    return OpenCLIPBackbone(model, tokenizer, pre_train, pre_val, name or source, source)
