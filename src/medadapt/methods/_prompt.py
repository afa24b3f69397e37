"""Prompt machinery shared by every prompt-learning method, written once over the backbone
interface so that it works for open_clip (own text transformer or HF text tower) and HF CLIPModel.

* :class:`PromptLearner` (CoOp, Zhou et al. IJCV 2022, Sec. 3.2): ``n_ctx`` learnable context
  vectors laid into the token embeddings of ``"X X ... X {class}."``; initialised randomly
  (N(0, 0.02)) or from a phrase (``ctx_init="a histopathology image of a"``); shared or
  class-specific (CSC); class token at the end, middle or front (CoOp Eq. 2-3).
* :class:`TextDeepPrompts` / :class:`VisionDeepPrompts`: layer-wise learnable tokens for layers
  1..J-1 (text: they replace the hidden states at the context positions, as in MaPLe / IVLP;
  vision: ``n`` tokens appended after the patch tokens at layer 0 and replaced at layers < J, as in
  VPT-deep / MaPLe). They act through ``Backbone.add_layer_hook``, so no library code is patched.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from medadapt.backbones.base import Backbone

PLACEHOLDER = "X"


class PromptLearner(nn.Module):
    def __init__(self, backbone: Backbone, classnames: list[str], n_ctx: int = 16,
                 ctx_init: str | None = None, csc: bool = False, position: str = "end",
                 init_std: float = 0.02, suffix: str = "."):
        super().__init__()
        if position not in ("end", "middle", "front"):
            raise ValueError(f"class token position must be end, middle or front, got {position!r}")
        self.backbone = [backbone]  # not a submodule: its weights are not ours
        self.position, self.csc, self.suffix = position, csc, suffix
        width = backbone.text_width
        if ctx_init:
            init_ids = backbone.tokenize([ctx_init])[0]
            special = backbone.special_token_mask(init_ids[None])[0]
            word_ids = init_ids[~special]
            n_ctx = len(word_ids)
            with torch.no_grad():
                vec = backbone.embed_tokens(word_ids).float().cpu()
            ctx = vec.unsqueeze(0).repeat(len(classnames), 1, 1) if csc else vec
            self.init_words = ctx_init
        else:
            shape = (len(classnames), n_ctx, width) if csc else (n_ctx, width)
            ctx = torch.empty(shape).normal_(0, init_std)
            self.init_words = " ".join([PLACEHOLDER] * n_ctx)
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx)
        self.set_classnames(classnames)

    def _text(self, name: str) -> str:
        ph = " ".join([PLACEHOLDER] * self.n_ctx)
        if self.position == "end":
            return f"{ph} {name}{self.suffix}"
        if self.position == "front":
            return f"{name} {ph}{self.suffix}"
        half = self.n_ctx // 2  # middle: half the context, the class, the other half (CoOp)
        return (f"{' '.join([PLACEHOLDER] * half)} {name} "
                f"{' '.join([PLACEHOLDER] * (self.n_ctx - half))}{self.suffix}")

    def set_classnames(self, classnames: list[str]) -> None:
        """(Re)build the token ids and context positions for a class list."""
        bb = self.backbone[0]
        if self.csc and hasattr(self, "classnames") and len(classnames) != self.ctx.shape[0]:
            raise ValueError("class-specific context cannot be moved to other classes")
        self.classnames = list(classnames)
        ids = bb.tokenize([self._text(n) for n in classnames])
        ph = bb.tokenize([PLACEHOLDER])[0]
        ph_id = int(ph[~bb.special_token_mask(ph[None])[0]][0])
        pos = []
        for row in ids:
            hits = (row == ph_id).nonzero().flatten().tolist()
            if len(hits) < self.n_ctx:
                raise ValueError(f"context of {self.n_ctx} tokens does not fit the "
                                 f"{bb.context_length}-token context length")
            pos.append(hits[:self.n_ctx])
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("positions", torch.tensor(pos, dtype=torch.long), persistent=False)
        with torch.no_grad():
            self.register_buffer("base_embeddings", bb.embed_tokens(ids).float(), persistent=False)

    def embeddings(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings [C, L, W] with the (given or learned) context laid in."""
        ctx = self.ctx if ctx is None else ctx
        C, _, W = self.base_embeddings.shape
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(C, -1, -1)
        idx = self.positions.to(ctx.device).unsqueeze(-1).expand(-1, -1, W)
        return self.base_embeddings.to(ctx.device).scatter(1, idx, ctx.to(self.base_embeddings.dtype))

    def forward(self, ctx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, embeddings) ready for ``backbone.encode_text(ids, embeddings)``."""
        return self.ids, self.embeddings(ctx)


class TextDeepPrompts(nn.Module):
    """Learnable text tokens for layers 1..depth-1 that replace the hidden states at the context
    positions (layer 0 is the :class:`PromptLearner`'s input context)."""

    def __init__(self, depth: int, n_ctx: int, width: int, init_std: float = 0.02):
        super().__init__()
        self.depth = depth
        self.prompts = nn.ParameterList(
            [nn.Parameter(torch.empty(n_ctx, width).normal_(0, init_std)) for _ in range(max(depth - 1, 0))])

    def hooks(self, positions: torch.Tensor, prompts: list[torch.Tensor] | None = None):
        prompts = list(self.prompts) if prompts is None else prompts
        out = []
        for j, p in enumerate(prompts, start=1):
            def fn(h, p=p):
                idx = positions.to(h.device).unsqueeze(-1).expand(-1, -1, h.shape[-1])
                src = p.to(h.dtype).unsqueeze(0).expand(h.shape[0], -1, -1)
                return h.scatter(1, idx, src)
            out.append(("text", j, fn))
        return out


class VisionDeepPrompts(nn.Module):
    """``n`` learnable visual tokens appended at layer 0 and replaced at layers 1..depth-1
    (VPT-deep; MaPLe's and IVLP's vision branch). ``init="zeros"`` gives Biomed-DPT's zero-vector
    soft prompt."""

    def __init__(self, depth: int, n_tokens: int, width: int, init: str = "normal",
                 init_std: float = 0.02):
        super().__init__()
        self.depth, self.n = depth, n_tokens

        def make():
            t = torch.zeros(n_tokens, width)
            if init == "normal":
                t.normal_(0, init_std)
            elif init != "zeros":
                raise ValueError(f"vision prompt init must be normal or zeros, got {init!r}")
            return nn.Parameter(t)
        self.prompts = nn.ParameterList([make() for _ in range(depth)])

    def hooks(self, prompts: list[torch.Tensor] | None = None):
        prompts = list(self.prompts) if prompts is None else prompts
        n = self.n
        out = []
        for j, p in enumerate(prompts):
            if j == 0:
                def fn(h, p=p):
                    return torch.cat([h, p.to(h.dtype).unsqueeze(0).expand(h.shape[0], -1, -1)], 1)
            else:
                def fn(h, p=p):
                    return torch.cat([h[:, :-n], p.to(h.dtype).unsqueeze(0).expand(h.shape[0], -1, -1)], 1)
            out.append(("vision", j, fn))
        return out


def encode_prompted_text(backbone: Backbone, learner: PromptLearner, hooks=(),
                         ctx: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised class text features [C, D] from learned prompts (+ optional deep-prompt hooks)."""
    ids, emb = learner(ctx)
    with backbone.layer_hooks(list(hooks)):
        return backbone.encode_text(ids, embeddings=emb)


def encode_prompted_image(backbone: Backbone, images: torch.Tensor, hooks=()) -> torch.Tensor:
    with backbone.layer_hooks(list(hooks)) if hooks else contextlib.nullcontext():
        return backbone.encode_image(images)


def clip_logits(backbone: Backbone, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """CLIP Eq. (1) of CoOp: scaled cosine similarity of normalised features."""
    return backbone.logit_scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
