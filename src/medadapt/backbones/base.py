"""One interface over CLIP-family vision-language models.

Methods only ever talk to :class:`Backbone`. Two families implement it (open_clip and Hugging Face
``CLIPModel``); each keeps the library's own model object and reaches into it in three ways only:

* ``encode_text(ids, embeddings=...)`` runs the library's own text forward, with a forward hook on
  the token-embedding table that swaps in the caller's token embeddings. Positional embeddings,
  attention masks and EOS pooling then stay exactly the library's (prompt learning feeds
  embeddings this way; the ``ids`` keep placeholder tokens where learned vectors go).
* ``add_layer_hook(tower, layer, fn)`` registers a forward pre-hook on transformer block ``layer``
  of the text or vision tower; ``fn(hidden)`` gets and returns hidden states ``[B, L, D]``,
  whatever the library's own layout. Deep prompts (MaPLe, IVLP, Biomed-DPT) use it.
  ``layer=INPUT`` ("input") is the vision token sequence *before* the tower's pre-LayerNorm
  (open_clip ``ln_pre``, HF CLIP ``pre_layrnorm``, timm ``norm_pre``, an Identity in BiomedCLIP's
  and CONCH's ViTs): MaPLe, PromptSRC and CoPrompt concatenate their layer-0 visual prompts there
  (MaPLe ``trainers/maple.py`` / ``clip/model.py``: ``torch.cat([x, visual_ctx], 1)`` then
  ``ln_pre``).
* ``token_embedding`` is the library's embedding table.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

HiddenFn = Callable[[torch.Tensor], torch.Tensor]
INPUT = "input"  # hook point: the vision tower's token sequence before its pre-LayerNorm


@dataclass
class BackboneSpec:
    """A registered backbone: where its weights come from and what to know before downloading."""

    name: str
    family: str  # "open_clip" | "hf_clip" | "conch"
    source: str  # hub id ("hf-hub:org/repo", "org/repo") or a builder key for test backbones
    image_size: int = 224
    context_length: int = 77
    license: str = ""
    note: str = ""
    builder: Callable[[], "Backbone"] | None = None  # for test/shipped backbones
    quick_gelu: bool | None = None  # open_clip: force QuickGELU activations (OpenAI CLIP's)
    files: str = ""  # what must be present offline (hub cache or a folder), for listings/docs


class Backbone(nn.Module):
    """The interface every method uses. Subclasses wrap one library model (``self.model``)."""

    family: str = ""
    # Causal text tower pooled at the end token (CLIP): the end token sees only the tokens before
    # it, so ``encode_text`` cuts the padding after the batch's last end token (same features,
    # fewer positions to run; prompt learners re-encode their prompts in every step).
    trim_text_padding: bool = False

    def __init__(self, name: str, source: str):
        super().__init__()
        self.name = name
        self.source = source
        self._fingerprint: str | None = None
        self._embedding_override: torch.Tensor | None = None

    # --- properties a subclass sets ------------------------------------------------------------
    image_size: int
    context_length: int
    embed_dim: int
    text_width: int
    vision_width: int
    preprocess: Callable  # PIL image -> float tensor [3, H, W] (the eval transform)
    train_preprocess: Callable  # PIL image -> tensor with the library's train augmentation

    # --- to implement ---------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @property
    def token_embedding(self) -> nn.Embedding:
        raise NotImplementedError

    def text_blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def vision_blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _logit_scale_param(self) -> torch.Tensor:
        raise NotImplementedError

    def special_token_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """Bool mask of start/end/pad tokens (PathoPrompt treats SOS/EOS apart)."""
        raise NotImplementedError

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Index of the end-of-text token per row (CLIP's EOT, BERT's [SEP], CONCH's
        <end_of_text>); tokens after it are padding."""
        raise NotImplementedError

    def pooled_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Index (in ``ids``) of the token whose final hidden state the text tower pools into the
        sentence feature: CLIP's EOT (argmax / eos id), BERT's [CLS] = 0 (BiomedCLIP's
        ``cls_last_hidden_state_pooler``), CONCH's appended CLS = the last slot. Methods that
        treat "the pooled token" apart use this, not :meth:`eos_positions`."""
        return self.eos_positions(ids)

    def vision_input_module(self) -> nn.Module:
        """The vision tower's pre-LayerNorm (``ln_pre`` / ``pre_layrnorm`` / ``norm_pre``): its
        input is the embedded token sequence [B, 1 + patches, D] (hook point :data:`INPUT`)."""
        raise NotImplementedError

    # --- shared API -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(learned temperature), clamped at 100 as in CLIP."""
        return self._logit_scale_param().detach().exp().clamp(max=100.0)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids.to(self.device))

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self._encode_image(pixels.to(self.device))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: torch.Tensor, embeddings: torch.Tensor | None = None,
                    normalize: bool = True) -> torch.Tensor:
        """Text features from token ids, or from token embeddings ``[N, L, W]`` laid over ``ids``."""
        ids = ids.to(self.device)
        if embeddings is not None and embeddings.shape[:2] != ids.shape:
            raise ValueError(f"embeddings {tuple(embeddings.shape)} do not match ids "
                             f"{tuple(ids.shape)}")
        if self.trim_text_padding and ids.shape[1] > 1:
            n = int(self.eos_positions(ids).max()) + 1
            if n < ids.shape[1]:
                ids = ids[:, :n]
                embeddings = None if embeddings is None else embeddings[:, :n]
        if embeddings is None:
            x = self._encode_text(ids)
        else:
            table = self.token_embedding
            # a library may embed fewer tokens than ``ids`` holds (CONCH drops the last slot to
            # make room for its CLS): the embeddings are laid over the same leading positions
            handle = table.register_forward_hook(
                lambda m, i, o: embeddings[:, :o.shape[1]].to(o.dtype))
            try:
                x = self._encode_text(ids)
            finally:
                handle.remove()
        return F.normalize(x, dim=-1) if normalize else x

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Normalised features for plain strings, batched, without gradients."""
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                out.append(self.encode_text(self.tokenize(texts[i:i + batch_size])).float())
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    def blocks(self, tower: str) -> list[nn.Module]:
        if tower == "text":
            return self.text_blocks()
        if tower == "vision":
            return self.vision_blocks()
        raise ValueError(f"tower must be 'text' or 'vision', got {tower!r}")

    def _hidden_layout(self, tower: str) -> str:
        """'bld' (batch first) or 'lbd' (sequence first) for the block inputs of a tower."""
        return "bld"

    def add_layer_hook(self, tower: str, layer: int | str, fn: HiddenFn):
        """Forward pre-hook on block ``layer`` of ``tower``: ``fn([B, L, D]) -> [B, L', D]``.
        ``layer=INPUT`` (vision only): before the pre-LayerNorm, see the module docstring."""
        if layer == INPUT:
            if tower != "vision":
                raise ValueError("the 'input' hook point exists for the vision tower only")

            def input_hook(module, args):
                return (fn(args[0]), *args[1:])
            return self.vision_input_module().register_forward_pre_hook(input_hook)
        block = self.blocks(tower)[layer]
        seq_first = self._hidden_layout(tower) == "lbd"

        def pre_hook(module, args, kwargs):
            if args:
                h = args[0]
                h2 = fn(h.transpose(0, 1)).transpose(0, 1) if seq_first else fn(h)
                return (h2, *args[1:]), kwargs
            for key in ("hidden_states", "x", "q_x"):
                if key in kwargs:
                    h = kwargs[key]
                    h2 = fn(h.transpose(0, 1)).transpose(0, 1) if seq_first else fn(h)
                    kwargs = dict(kwargs, **{key: h2})
                    return args, kwargs
            raise RuntimeError(f"cannot find hidden states in the inputs of {type(module).__name__}")

        return block.register_forward_pre_hook(pre_hook, with_kwargs=True)

    @contextlib.contextmanager
    def layer_hooks(self, hooks: list[tuple[str, int, HiddenFn]]) -> Iterator[None]:
        handles = [self.add_layer_hook(t, l, f) for t, l, f in hooks]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def freeze(self) -> "Backbone":
        """Freeze every weight and put the model in eval mode (methods train their own modules)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        return self

    def train(self, mode: bool = True):
        """Eval mode always (dropout / batch-norm frozen) unless the engine set
        ``allow_train_mode`` for a method whose reference trains the whole model in train mode
        (``train.backbone_mode: train``); weights stay frozen either way."""
        return super().train(bool(mode) and getattr(self, "allow_train_mode", False))

    def fingerprint(self) -> str:
        """sha256 over every weight (cached): the feature-cache key for these weights."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.family.encode())
            for k, v in sorted(self.state_dict().items()):
                h.update(k.encode())
                h.update(str(tuple(v.shape)).encode())
                h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                         if v.numel() else b"")
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def describe(self) -> dict:
        return {"name": self.name, "family": self.family, "source": self.source,
                "image_size": self.image_size, "context_length": self.context_length,
                "embed_dim": self.embed_dim, "text_width": self.text_width,
                "vision_width": self.vision_width,
                "text_layers": len(self.text_blocks()), "vision_layers": len(self.vision_blocks())}
