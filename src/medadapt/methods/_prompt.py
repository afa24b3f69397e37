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

from medadapt.backbones.base import INPUT, Backbone

PLACEHOLDER = "X"


class PromptLearner(nn.Module):
    """CoOp's learnable context. ``n_learned`` (with ``ctx_init``): learn only the phrase's first
    ``n_learned`` tokens and keep the rest of the phrase as fixed token embeddings between the
    context and the class name (MaPLe / CoPrompt: ``n_ctx=2`` with ``"a photo of a"`` learns
    "a photo" and keeps "of a"); :attr:`learned_positions` are then the learned slots only."""

    def __init__(self, backbone: Backbone, classnames: list[str], n_ctx: int = 16,
                 ctx_init: str | None = None, csc: bool = False, position: str = "end",
                 init_std: float = 0.02, suffix: str = ".", n_learned: int | None = None):
        super().__init__()
        if position not in ("end", "middle", "front"):
            raise ValueError(f"class token position must be end, middle or front, got {position!r}")
        self.backbone = [backbone]  # not a submodule: its weights are not ours
        self.position, self.csc, self.suffix = position, csc, suffix
        width = backbone.text_width
        fixed = None
        if ctx_init:
            init_ids = backbone.tokenize([ctx_init])[0]
            special = backbone.special_token_mask(init_ids[None])[0]
            word_ids = init_ids[~special]
            n_ctx = len(word_ids)
            with torch.no_grad():
                vec = backbone.embed_tokens(word_ids).float().cpu()
            if n_learned is not None and 0 < n_learned < n_ctx:
                vec, fixed = vec[:n_learned], vec[n_learned:]
            ctx = vec.unsqueeze(0).repeat(len(classnames), 1, 1) if csc else vec
            self.init_words = ctx_init
        else:
            shape = (len(classnames), n_ctx, width) if csc else (n_ctx, width)
            ctx = torch.empty(shape).normal_(0, init_std)
            self.init_words = " ".join([PLACEHOLDER] * n_ctx)
        self.n_ctx = n_ctx  # placeholder slots in the prompt (learned + fixed phrase tokens)
        self.n_learned = n_ctx if fixed is None else n_ctx - len(fixed)
        self.ctx = nn.Parameter(ctx)
        self.register_buffer("fixed_ctx", fixed, persistent=False)
        self.set_classnames(classnames)

    @property
    def learned_positions(self) -> torch.Tensor:
        """Token positions ``[C, n_learned]`` of the learned context (deep text prompts go here)."""
        return self.positions[:, :self.n_learned]

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
        ph_words = ph[~bb.special_token_mask(ph[None])[0]]
        if len(ph_words) != 1:
            raise ValueError(f"the placeholder {PLACEHOLDER!r} is {len(ph_words)} tokens for this "
                             "tokenizer; context positions would be wrong")
        ph_id = int(ph_words[0])
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
        if self.fixed_ctx is not None:
            fixed = self.fixed_ctx.to(ctx.device, ctx.dtype).unsqueeze(0).expand(ctx.shape[0], -1, -1)
            ctx = torch.cat([ctx, fixed], 1)
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
    """``n`` learnable visual tokens appended at layer 0 (before the pre-LayerNorm, hook point
    ``INPUT``) and replaced at layers 1..depth-1
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
            out.append(("vision", INPUT if j == 0 else j, fn))
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


# ------------------------------------------------------------------------------------------------
# Shared pieces of the deep / multi-modal prompt methods (MaPLe, PromptSRC, CoPrompt)
# ------------------------------------------------------------------------------------------------
def scaled_depth(depth: int, n_layers: int, ref_layers: int = 12) -> int:
    """A paper's prompt depth ``J`` of ``ref_layers`` (ViT-B: 12) scaled to a backbone with
    ``n_layers`` blocks: ``round(J * n_layers / ref_layers)`` clamped to ``[1, n_layers]``.
    MaPLe's J=9 of 12 is 9 on ViT-B, 18 on ViT-L/14 (24 blocks), 2 on a 2-block tiny model."""
    return max(1, min(n_layers, int(round(depth * n_layers / ref_layers))))


def vision_prompt_hooks(prompts: list[torch.Tensor]) -> list:
    """Hooks for visual deep prompts given as tensors ``[n, W]`` (or ``[B, n, W]``), one per layer
    from 0: appended after the patch tokens before the pre-LayerNorm (hook point ``INPUT``, as
    MaPLe's ``VisionTransformer_MaPLe`` concatenates before ``ln_pre``), replacing the same ``n``
    slots before blocks 1.. (VPT-deep, MaPLe Eq. 6-7). The pooled CLS token stays at position 0."""
    out = []
    for j, p in enumerate(prompts):
        n = p.shape[-2]

        def fn(h, p=p, j=j, n=n):
            src = p.to(h.dtype)
            src = src.unsqueeze(0).expand(h.shape[0], -1, -1) if src.dim() == 2 else src
            return torch.cat([h if j == 0 else h[:, :-n], src], 1)
        out.append(("vision", INPUT if j == 0 else j, fn))
    return out


class CoupledPrompts(nn.Module):
    """MaPLe's deep language prompts and coupling functions (Khattak et al. CVPR 2023, Sec. 3.2-3.3).

    Layer 0's language context is the :class:`PromptLearner`'s ``ctx``; layers 1..J-1 carry
    learnable language tokens ``P_j`` (:class:`TextDeepPrompts`). The vision prompts are not free
    parameters: ``P~_j = F_j(P_j)`` with one linear coupling function ``F_j`` (text width -> vision
    width) per layer j < J (Eq. 5-7), so gradients of the vision branch flow into the language
    prompts (the "multi-modal" coupling)."""

    def __init__(self, depth: int, n_ctx: int, text_width: int, vision_width: int,
                 init_std: float = 0.02):
        super().__init__()
        self.depth, self.n_ctx = depth, n_ctx
        self.text = TextDeepPrompts(depth, n_ctx, text_width, init_std)
        self.couplings = nn.ModuleList([nn.Linear(text_width, vision_width) for _ in range(depth)])

    def text_hooks(self, positions: torch.Tensor):
        return self.text.hooks(positions)

    def vision_prompts(self, ctx0: torch.Tensor) -> list[torch.Tensor]:
        texts = [ctx0] + list(self.text.prompts)
        return [f(p.float()) for f, p in zip(self.couplings, texts)]

    def vision_hooks(self, ctx0: torch.Tensor):
        return vision_prompt_hooks(self.vision_prompts(ctx0))


def gaussian_weights(n_epochs: int, mean: float, std: float) -> list[float]:
    """PromptSRC's Gaussian prompt aggregation weights (Khattak et al. ICCV 2023, Eq. 7):
    ``w_e ∝ exp(-(e - mean)^2 / (2 std^2))`` for epochs ``e = 1..n_epochs``, normalised."""
    import math
    w = [math.exp(-((e - mean) ** 2) / (2 * std ** 2)) for e in range(1, n_epochs + 1)]
    s = sum(w) or 1.0
    return [x / s for x in w]


class GaussianPromptAggregator:
    """Running Gaussian-weighted average of a module's learnable parameters over epochs (GPA).

    ``add(epoch, module)`` records the parameters at the end of ``epoch`` (1-based) with weight
    ``w_epoch``; ``apply(module)`` writes ``sum_e w_e P_e / sum_e w_e`` into the parameters
    (weights re-normalised over the epochs actually seen, so a resumed run still averages)."""

    def __init__(self, n_epochs: int, mean: float, std: float):
        self.weights = gaussian_weights(n_epochs, mean, std)
        self.sum: dict[str, torch.Tensor] = {}
        self.total = 0.0
        self.seen: set[int] = set()

    def add(self, epoch: int, module: nn.Module) -> None:
        if epoch in self.seen or not 1 <= epoch <= len(self.weights):
            return
        self.seen.add(epoch)
        w = self.weights[epoch - 1]
        self.total += w
        for n, p in module.named_parameters():
            if p.requires_grad:
                v = p.detach().float() * w
                self.sum[n] = self.sum[n] + v if n in self.sum else v.clone()

    def apply(self, module: nn.Module) -> bool:
        if not self.sum or self.total <= 0:
            return False
        params = dict(module.named_parameters())
        with torch.no_grad():
            for n, s in self.sum.items():
                params[n].copy_((s / self.total).to(params[n].dtype))
        return True


def kl_to_teacher(logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0,
                  reduction: str = "batchmean") -> torch.Tensor:
    """``KL(softmax(teacher/T) || softmax(logits/T)) * T^2``: the distillation term of ProGrad,
    PromptSRC and BiomedCoOp. ``batchmean`` sums over classes and averages over the batch
    (ProGrad's code); ``numel`` divides the sum by B*C (PromptSRC's and BiomedCoOp's code)."""
    kl = F.kl_div(F.log_softmax(logits.float() / T, dim=-1),
                  F.log_softmax(teacher_logits.float() / T, dim=-1), reduction="sum", log_target=True)
    denom = logits.shape[0] if reduction == "batchmean" else logits.numel()
    return kl / max(denom, 1) * T * T


def frozen_text_features(backbone: Backbone, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """Frozen CLIP class features ``[C, D]``: mean over ``templates`` of the normalised features,
    re-normalised (CLIP's prompt ensembling; PromptSRC's textual diversity)."""
    feats = []
    for t in templates:
        feats.append(backbone.encode_texts([t.format(c) for c in classnames]))
    return F.normalize(torch.stack(feats).mean(0), dim=-1)


def description_features(backbone: Backbone, classnames: list[str],
                         descriptions: dict[str, list[str]]) -> list[torch.Tensor]:
    """Per class, the normalised frozen features ``[n_c, D]`` of its LLM descriptions."""
    from medadapt.errors import UserError
    out = []
    for c in classnames:
        sents = descriptions.get(c) or []
        if not sents:
            raise UserError(f"no descriptions for class {c!r}; pass --set texts.descriptions=FILE")
        out.append(backbone.encode_texts(sents))
    return out


def augment_pixels(images: torch.Tensor, generator: torch.Generator | None = None,
                   min_scale: float = 0.6) -> torch.Tensor:
    """A second, independent augmented view of a batch of (already normalised) pixels, computed on
    the tensor: random resized crop (area ``min_scale..1``) and random horizontal/vertical flips.
    CoPrompt's two perturbed views: the batch's own train transform gives the first."""
    B, _, H, W = images.shape
    out = []
    for i in range(B):
        r = torch.rand(5, generator=generator)
        s = min_scale + (1 - min_scale) * float(r[0])
        h, w = max(1, int(round(H * s ** 0.5))), max(1, int(round(W * s ** 0.5)))
        y, x = int(float(r[1]) * (H - h + 1)), int(float(r[2]) * (W - w + 1))
        crop = images[i:i + 1, :, y:y + h, x:x + w]
        crop = F.interpolate(crop, size=(H, W), mode="bilinear", align_corners=False)
        if r[3] < 0.5:
            crop = crop.flip(-1)
        if r[4] < 0.5:
            crop = crop.flip(-2)
        out.append(crop)
    return torch.cat(out)
