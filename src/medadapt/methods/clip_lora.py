"""CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models",
CVPRW 2024).

Low-rank adapters ``W x + (alpha / sqrt(r)) B A dropout(x)`` on the attention projections (q, k, v
by default; ``o`` adds the output projection) of every transformer block of both encoders, trained
with cross-entropy on ``logit_scale * cos(image, class text)`` while everything else stays frozen.
Paper defaults: rank 2, alpha 1, dropout 0.25 on the LoRA input, all layers, both encoders,
AdamW (lr 2e-4, weight decay 0.01), batch 32, cosine schedule, 500 x shots iterations. The scaling
``alpha / sqrt(r)`` is the one of the released code (peft's ``use_rslora``); A is Kaiming-uniform
and B zero, so training starts exactly at zero-shot CLIP.

How each family's modules get LoRA (through peft wherever the module is a plain ``nn.Linear``):

* Hugging Face CLIP (PLIP, MONET, synthpath-clip): ``q_proj`` / ``k_proj`` / ``v_proj`` /
  ``out_proj`` are ``nn.Linear``: peft injects LoRA directly.
* open_clip's own transformer (QuiltNet, OpenAI CLIP, BiomedCLIP's vision tower when it is an
  open_clip ViT): ``nn.MultiheadAttention`` keeps q, k, v packed in one ``in_proj_weight``, which
  peft cannot give separate rank-r adapters. As in the released CLIP-LoRA code
  (``PlainMultiheadAttentionLoRA``), each such module is first replaced by :class:`PlainMHA`, the
  same attention with separate ``q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj`` linears holding
  the same weights (outputs identical), and peft then targets those.
* timm ViTs (BiomedCLIP's vision trunk): the fused ``qkv`` linear is split the same way
  (:class:`FusedQKV`).
* Hugging Face BERT text towers (BiomedCLIP): ``query`` / ``key`` / ``value`` /
  ``attention.output.dense`` linears, through peft.

The method works on a private deep copy of the backbone, so a backbone shared between seeds is
never modified. ``learned_state_dict`` holds only the LoRA matrices (``lora_A`` / ``lora_B``) and
loads onto a fresh base model; :func:`merge_lora` returns a plain backbone with ``W + s B A``
folded into the weights and the original module types restored (outputs identical).
"""
from __future__ import annotations

import copy
import math
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from medadapt.backbones.base import Backbone
from medadapt.errors import UserError
from medadapt.methods.base import Batch, Method, register_method

PARAM_SUFFIXES = {
    "q": ("q_proj", "query"),
    "k": ("k_proj", "key"),
    "v": ("v_proj", "value"),
    "o": ("out_proj", "attention.output.dense", "attn.proj"),
}


class PlainMHA(nn.Module):
    """``nn.MultiheadAttention`` (self-attention) with separate q/k/v/out linears.

    Same computation as the module it replaces (``F.scaled_dot_product_attention`` on the same
    weights, masks converted to additive form), so LoRA can target each projection.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha._qkv_same_embed_dim:
            raise ValueError("PlainMHA needs q, k and v of the same width")
        d = mha.embed_dim
        self.embed_dim, self.num_heads = d, mha.num_heads
        self.head_dim = d // mha.num_heads
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout
        bias = mha.in_proj_bias is not None
        dev, dt = mha.in_proj_weight.device, mha.in_proj_weight.dtype
        self.q_proj = nn.Linear(d, d, bias=bias, device=dev, dtype=dt)
        self.k_proj = nn.Linear(d, d, bias=bias, device=dev, dtype=dt)
        self.v_proj = nn.Linear(d, d, bias=bias, device=dev, dtype=dt)
        self.out_proj = nn.Linear(d, d, bias=mha.out_proj.bias is not None, device=dev, dtype=dt)
        with torch.no_grad():
            w = mha.in_proj_weight
            for i, lin in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                lin.weight.copy_(w[i * d:(i + 1) * d])
                if bias:
                    lin.bias.copy_(mha.in_proj_bias[i * d:(i + 1) * d])
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        key = query if key is None else key
        value = query if value is None else value
        if not self.batch_first:  # contiguous: a projection of a transposed view that needs
            # grad runs as a slow batched bmm instead of one mm (see backbones.openclip.sequence_first)
            query, key, value = (x.transpose(0, 1).contiguous() for x in (query, key, value))
        b, lq, d = query.shape
        lk = key.shape[1]
        h, hd = self.num_heads, self.head_dim
        q = self.q_proj(query).view(b, lq, h, hd).transpose(1, 2)
        k = self.k_proj(key).view(b, lk, h, hd).transpose(1, 2)
        v = self.v_proj(value).view(b, lk, h, hd).transpose(1, 2)
        mask = None
        if attn_mask is not None:
            m = attn_mask
            if m.dtype == torch.bool:
                m = torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill(m, float("-inf"))
            m = m.to(q.dtype)
            mask = m.view(1, 1, lq, lk) if m.dim() == 2 else m.view(b, h, lq, lk)
        if key_padding_mask is not None:
            kp = key_padding_mask
            if kp.dtype == torch.bool:
                kp = torch.zeros(kp.shape, dtype=q.dtype, device=q.device).masked_fill(kp, float("-inf"))
            kp = kp.to(q.dtype).view(b, 1, 1, lk)
            mask = kp if mask is None else mask + kp
        causal = bool(is_causal) and mask is None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(b, lq, d))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None

    def to_mha(self) -> nn.MultiheadAttention:
        """Back to ``nn.MultiheadAttention`` with packed weights (after merging)."""
        d = self.embed_dim
        w = self.q_proj.weight
        mha = nn.MultiheadAttention(d, self.num_heads, dropout=self.dropout,
                                    bias=self.q_proj.bias is not None, batch_first=self.batch_first,
                                    device=w.device, dtype=w.dtype)
        with torch.no_grad():
            mha.in_proj_weight.copy_(torch.cat([self.q_proj.weight, self.k_proj.weight,
                                                self.v_proj.weight]))
            if self.q_proj.bias is not None:
                mha.in_proj_bias.copy_(torch.cat([self.q_proj.bias, self.k_proj.bias,
                                                  self.v_proj.bias]))
            mha.out_proj.weight.copy_(self.out_proj.weight)
            if self.out_proj.bias is not None:
                mha.out_proj.bias.copy_(self.out_proj.bias)
        return mha


class FusedQKV(nn.Module):
    """A fused ``qkv`` linear ([3D, D], timm) split into q/k/v linears; output concatenated."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        d3, d = lin.weight.shape
        if d3 % 3:
            raise ValueError("a fused qkv linear has 3 x D outputs")
        e = d3 // 3
        bias = lin.bias is not None
        dev, dt = lin.weight.device, lin.weight.dtype
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, e, bias=bias, device=dev, dtype=dt)
                                                 for _ in range(3))
        with torch.no_grad():
            for i, p in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                p.weight.copy_(lin.weight[i * e:(i + 1) * e])
                if bias:
                    p.bias.copy_(lin.bias[i * e:(i + 1) * e])

    def forward(self, x):
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)

    def to_linear(self) -> nn.Linear:
        w = self.q_proj.weight
        lin = nn.Linear(w.shape[1], 3 * w.shape[0], bias=self.q_proj.bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]))
            if lin.bias is not None:
                lin.bias.copy_(torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]))
        return lin


def _set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def make_lora_ready(model: nn.Module, blocks: list[nn.Module]) -> int:
    """Replace packed attention projections inside ``blocks`` by separate linears."""
    names = {id(m): n for n, m in model.named_modules()}
    n = 0
    for block in blocks:
        for sub_name, m in list(block.named_modules()):
            full = names.get(id(m))
            if full is None:
                continue
            if isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim:
                _set_child(model, full, PlainMHA(m))
                n += 1
            elif isinstance(getattr(m, "qkv", None), nn.Linear) and \
                    m.qkv.out_features == 3 * (m.qkv.out_features // 3) and \
                    not isinstance(m, FusedQKV):
                _set_child(model, full + ".qkv", FusedQKV(m.qkv))
                n += 1
    return n


def restore_packed(model: nn.Module) -> None:
    for name, m in list(model.named_modules()):
        if isinstance(m, PlainMHA):
            _set_child(model, name, m.to_mha())
        elif isinstance(m, FusedQKV):
            _set_child(model, name, m.to_linear())


def lora_targets(backbone: Backbone, encoders: str, layers, params) -> list[str]:
    """Full names (relative to ``backbone.model``) of the linears that get LoRA."""
    model = backbone.model
    names = {id(m): n for n, m in model.named_modules()}
    suffixes = tuple(s for p in params for s in PARAM_SUFFIXES[p])
    out = []
    towers = {"both": ("text", "vision"), "text": ("text",), "vision": ("vision",)}[encoders]
    for tower in towers:
        blocks = backbone.blocks(tower)
        idx = range(len(blocks)) if layers is None else layers
        for i in idx:
            if not -len(blocks) <= i < len(blocks):
                raise UserError(f"clip-lora: layer {i} out of range ({tower} tower has "
                                f"{len(blocks)} blocks)")
            for sub, m in blocks[i].named_modules():
                if isinstance(m, nn.Linear) and any(sub == s or sub.endswith("." + s)
                                                    for s in suffixes):
                    out.append(names[id(m)])
    return out


def merge_lora(method: "CLIPLoRA") -> Backbone:
    """A plain backbone (deep copy) with the LoRA updates folded into the weights.

    The merged model has the base model's module types (``nn.MultiheadAttention``, fused
    ``qkv``) and gives the same outputs as the LoRA model in eval mode.
    """
    from peft.tuners.lora import LoraLayer

    bb = copy.deepcopy(method.backbone)
    model = bb.model
    for name, m in list(model.named_modules()):
        if isinstance(m, LoraLayer):
            m.merge()
            _set_child(model, name, m.get_base_layer())
    restore_packed(model)
    bb._fingerprint = None
    return bb.freeze()


@register_method("clip-lora")
class CLIPLoRA(Method):
    paper = "Zanella & Ben Ayed, Low-Rank Few-Shot Adaptation of Vision-Language Models, CVPRW 2024"
    needs_images = True
    defaults = {"rank": 2, "alpha": 1, "dropout": 0.25, "params": ["q", "k", "v"],
                "encoders": "both",  # both | text | vision
                "layers": None,  # block indices (None: all), the same list for both towers
                "rslora": True,  # scaling alpha/sqrt(r) as in the released code; False: alpha/r
                "n_iters_per_shot": 500,  # 500 x shots iterations; null: use train.epochs
                "template": None}  # prompt template (default: the data set's first)
    train_defaults = {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 0.01, "batch_size": 32,
                      "warmup_epochs": 0, "grad_clip": 0.0, "epochs": 50,
                      "sched_unit": "step", "drop_last": False}
    sources: ClassVar[dict[str, str]] = {
        "method.rank": "MaxZanella/CLIP-LoRA run_utils.py --r 2",
        "method.alpha": "run_utils.py --alpha 1",
        "method.dropout": "run_utils.py --dropout_rate 0.25 (loralib LinearLoRA: dropout on the LoRA input)",
        "method.params": "run_utils.py --params q k v",
        "method.encoders": "run_utils.py --encoder both",
        "method.layers": "run_utils.py --position all",
        "method.rslora": "loralib/layers.py: scaling = lora_alpha / sqrt(r)",
        "method.n_iters_per_shot": "run_utils.py --n_iters 500; lora.py: total_iters = n_iters * shots",
        "method.template": "lora.py: dataset.template[0]",
        "train.optimizer": "lora.py: AdamW(betas=(0.9, 0.999))",
        "train.lr": "run_utils.py --lr 2e-4",
        "train.weight_decay": "lora.py: weight_decay=1e-2",
        "train.batch_size": "run_utils.py --batch_size 32",
        "train.warmup_epochs": "lora.py: CosineAnnealingLR(total_iters, eta_min=1e-6), no warm-up",
        "train.grad_clip": "lora.py: no clipping",
        "train.epochs": "unused while n_iters_per_shot is set (fit derives it)",
        "train.sched_unit": "lora.py: scheduler.step() after every iteration",
        "train.drop_last": "lora.py: iterates the whole train loader (Tip-Adapter's build_data_loader, "
                           "no drop_last) until total_iters",
        "deviations": "the cosine decays to 0, not to the reference's eta_min=1e-6 (a difference of "
                      "at most 1e-6 in the learning rate); fp32 on CPU where the reference autocasts "
                      "to fp16 on CUDA (AMP on CUDA here too)",
    }

    def __init__(self, backbone, texts, cfg=None):
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise UserError("clip-lora needs peft: pip install 'medadapt[lora]'") from None
        backbone = copy.deepcopy(backbone)  # never modify a backbone shared between seeds
        super().__init__(backbone, texts, cfg)
        c = self.cfg
        if c["encoders"] not in ("both", "text", "vision"):
            raise UserError(f"clip-lora: method.encoders must be both, text or vision, got "
                            f"{c['encoders']!r}")
        params = [c["params"]] if isinstance(c["params"], str) else list(c["params"])
        bad = [p for p in params if p not in PARAM_SUFFIXES]
        if bad or not params:
            raise UserError(f"clip-lora: method.params must be a list of q, k, v, o; got {params}")
        if int(c["rank"]) < 1:
            raise UserError("clip-lora: method.rank must be >= 1")
        towers = {"both": ("text", "vision"), "text": ("text",), "vision": ("vision",)}[c["encoders"]]
        for t in towers:
            make_lora_ready(backbone.model, backbone.blocks(t))
        targets = lora_targets(backbone, c["encoders"], c["layers"], params)
        if not targets:
            raise UserError(f"clip-lora: no attention projections found for {params} in "
                            f"{backbone.name}")
        self.targets = targets
        conf = LoraConfig(r=int(c["rank"]), lora_alpha=float(c["alpha"]),
                          lora_dropout=float(c["dropout"]), target_modules=targets, bias="none",
                          use_rslora=bool(c["rslora"]))
        inject_adapter_in_model(conf, backbone.model)
        for n, p in self.named_parameters():
            p.requires_grad_("lora_" in n)
        self._lora_dropouts = [m for n, m in backbone.model.named_modules()
                               if ".lora_dropout." in n and isinstance(m, nn.Dropout)]
        self._text_cache: torch.Tensor | None = None
        self._tokens = None
        self.eval()

    # --- modes ----------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)  # the backbone stays in eval mode (Backbone.train)...
        for m in self._lora_dropouts:  # ...except the LoRA dropouts, which must train
            m.train(mode)
        if self.cfg["encoders"] != "vision":
            self._text_cache = None
        return self

    def set_classes(self, texts) -> None:
        super().set_classes(texts)
        self._tokens, self._text_cache = None, None

    # --- schedule -------------------------------------------------------------------------------
    def fit(self, train, val, engine) -> dict:
        n_per = self.cfg["n_iters_per_shot"]
        info = {}
        if n_per:
            shots = int(torch.bincount(train.labels).max()) if len(train) else 1
            steps = max(1, math.ceil(len(train) / engine.cfg["batch_size"]))
            total = int(n_per) * shots
            engine.cfg["epochs"] = max(1, math.ceil(total / steps))
            info["schedule"] = (f"{n_per} x {shots} shots = {total} iterations -> "
                                f"{engine.cfg['epochs']} epochs of {steps} steps")
            engine.log(f"clip-lora: {info['schedule']}")
        info.update(engine.train(self, train, val))
        return info

    # --- forward --------------------------------------------------------------------------------
    def class_text_features(self) -> torch.Tensor:
        frozen_text = self.cfg["encoders"] == "vision"  # no LoRA in the text tower: constant
        if self._text_cache is not None and (frozen_text or not self.training):
            return self._text_cache
        if self._tokens is None:
            t = self.cfg["template"] or self.texts.templates[0]
            self._tokens = self.backbone.tokenize([t.format(c) for c in self.texts.classnames])
        train_text = self.training and self.cfg["encoders"] in ("both", "text")
        with torch.set_grad_enabled(train_text and torch.is_grad_enabled()):
            feats = self.backbone.encode_text(self._tokens).float()
        if frozen_text or not self.training:
            self._text_cache = feats.detach()
        return feats

    def forward(self, batch: Batch) -> torch.Tensor:
        if batch.images is None:
            img = F.normalize(batch.features.float(), dim=-1)
        else:
            train_vis = self.training and self.cfg["encoders"] in ("both", "vision")
            with torch.set_grad_enabled(train_vis and torch.is_grad_enabled()):
                img = self.backbone.encode_image(batch.images).float()
        txt = self.class_text_features()
        return self.backbone.logit_scale * img @ txt.to(img.device).T

    def merged_backbone(self) -> Backbone:
        return merge_lora(self)
