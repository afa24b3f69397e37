"""CONCH (Lu et al., Nature Medicine 2024) written from its published architecture, PyPI packages only.

Replicates ``conch_ViT-B-16`` of github.com/mahmoodlab/CONCH (``conch/open_clip_custom``:
``coca_model.py``, ``transformer.py``, ``vision_tower.py``, ``model_configs/conch_ViT-B-16.json``,
``custom_tokenizer.py``, ``transform.py``) module for module, so that the state-dict keys of the
published ``pytorch_model.bin`` (hub ``MahmoodLab/conch``) load 1:1 (``strict=True``):

* vision: a timm ``VisionTransformer`` trunk (ViT-B/16, 448 px, ``num_classes=0``,
  ``dynamic_img_size=True``, forward = ``forward_features``), an attentional pooler with 1 query for
  the contrastive embedding (+ LayerNorm + a 512x512 projection) and one with 256 queries for the
  captioning tokens;
* text: a CoCa text transformer, *sequence-first* (``nn.MultiheadAttention``), causal mask, a learned
  CLS embedding appended after the tokens with CoCa's ``build_cls_mask``; the pooled feature is
  ``ln_final`` of that CLS, times ``text_projection``. ``encode_text`` drops the last token first
  (``text[:, :-1]``, "make space for CLS"), so 128 = 127 tokens + CLS;
* the multimodal (captioning) decoder, built only so the checkpoint loads strictly; medadapt never
  runs it;
* tokenizer: the published byte-level BPE file (``conch_byte_level_bpe_uncased.json``: vocabulary
  32007, ``<pad>`` 0, ``<start_of_text>`` 1, ``<end_of_text>`` 2), 127 tokens padded to
  ``max_length`` + one ``<pad>`` placeholder for the CLS (``custom_tokenizer.tokenize``);
* preprocessing: bicubic resize of the short side to 448, centre crop, OpenAI CLIP mean/std.

Layer sizes are read from the checkpoint's tensor shapes (a full CONCH gives exactly the published
config); head counts are the published ones.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from medadapt.backbones.base import Backbone
from medadapt.errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # conch/open_clip_custom/constants.py
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_FILES = ("tokenizer.json", "conch_byte_level_bpe_uncased.json")
WEIGHTS = "pytorch_model.bin"
HUB_REPO = "MahmoodLab/conch"
TOKENIZER_URL = ("https://github.com/mahmoodlab/CONCH/blob/main/conch/open_clip_custom/tokenizers/"
                 "conch_byte_level_bpe_uncased.json")
# The tokenizer file is fetched once from a pinned commit of github.com/mahmoodlab/CONCH (main at
# 141cc09, 2025-03-25; the file itself last changed in e9c9e5b, 2024-03-19) into medadapt's cache,
# checked against its sha256: CONCH's licence (CC-BY-NC-ND 4.0) does not let medadapt ship it.
TOKENIZER_COMMIT = "141cc09c7d4ff33d8eda562bd75169b457f71a62"
TOKENIZER_REPO_PATH = "conch/open_clip_custom/tokenizers/conch_byte_level_bpe_uncased.json"
TOKENIZER_SHA256 = "a3861e67c64d32670eb6725a8e52d7dbdd2a06646a4a3c7463052ae7110760fb"
TOKENIZER_BYTES = 1388969
TOKENIZER_RAW_URL = (f"https://raw.githubusercontent.com/mahmoodlab/CONCH/{TOKENIZER_COMMIT}/"
                     f"{TOKENIZER_REPO_PATH}")

# conch_ViT-B-16.json (published), plus the defaults of CoCaVisionCfg / CLIPTextCfg it relies on
PUBLISHED_CONFIG = {
    "embed_dim": 512, "embed_dim_caption": 768,
    "vision_cfg": {"image_size": 448, "patch_size": 16, "layers": 12, "width": 768, "num_heads": 12,
                   "mlp_ratio": 4, "attentional_pool_caption": True,
                   "attentional_pool_contrast": True, "attn_pooler_heads": 8,
                   "n_queries_contrast": 1, "n_queries_caption": 256, "output_tokens": True},
    "text_cfg": {"context_length": 128, "vocab_size": 32007, "width": 768, "heads": 12,
                 "layers": 12, "embed_cls": True, "output_tokens": True, "pad_id": 0},
    "multimodal_cfg": {"context_length": 128, "vocab_size": 32007, "width": 768, "heads": 12,
                       "layers": 12},
}


class ResidualAttentionBlock(nn.Module):
    """open_clip's (CONCH's copy) pre-norm block on sequence-first input ``[L, N, D]``."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: float = 4.0,
                 is_cross_attention: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_head)
        if is_cross_attention:
            self.ln_1_kv = nn.LayerNorm(d_model)
        self.ln_2 = nn.LayerNorm(d_model)
        w = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d_model, w)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(w, d_model))]))

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
        k_x = self.ln_1_kv(k_x) if hasattr(self, "ln_1_kv") and k_x is not None else None
        v_x = self.ln_1_kv(v_x) if hasattr(self, "ln_1_kv") and v_x is not None else None
        q = self.ln_1(q_x)
        k = k_x if k_x is not None else q
        v = v_x if v_x is not None else q
        mask = attn_mask.to(q_x.dtype) if attn_mask is not None else None
        x = q_x + self.attn(q, k, v, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.width, self.layers, self.heads = width, layers, heads
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, mlp_ratio)
                                        for _ in range(layers)])

    def forward(self, x, attn_mask=None):
        for r in self.resblocks:
            x = r(x, attn_mask=attn_mask)
        return x


class TextTransformer(nn.Module):
    """CoCa's unimodal text encoder with an appended CLS token (``embed_cls=True``)."""

    def __init__(self, context_length: int, vocab_size: int, width: int, heads: int, layers: int,
                 output_dim: int, pad_id: int = 0):
        super().__init__()
        self.num_pos = self.context_length = context_length
        self.width, self.heads, self.pad_id = width, heads, pad_id
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self.cls_emb = nn.Parameter(torch.empty(width))
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(self.num_pos, width))
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        mask = torch.full((self.num_pos, self.num_pos), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)
        for p, std in ((self.token_embedding.weight, 0.02), (self.positional_embedding, 0.01),
                       (self.cls_emb, 0.01), (self.text_projection, width ** -0.5)):
            nn.init.normal_(p, std=std)

    def build_cls_mask(self, text, cast_dtype):
        # verbatim CoCa (open_clip <= 2.23 / CONCH): the pad shifts the key mask by one column
        cls_mask = (text != self.pad_id).unsqueeze(1)
        cls_mask = F.pad(cls_mask, (1, 0, cls_mask.shape[2], 0), value=1.0)
        additive = torch.zeros(cls_mask.shape, dtype=cast_dtype, device=cls_mask.device)
        additive.masked_fill_(~cls_mask, float("-inf"))
        return torch.repeat_interleave(additive, self.heads, 0)

    def forward(self, text):
        cast_dtype = self.transformer.resblocks[0].mlp.c_fc.weight.dtype
        seq_len = text.shape[1] + 1
        x = self.token_embedding(text).to(cast_dtype)
        x = torch.cat([x, self.cls_emb.reshape(1, 1, -1).repeat(x.shape[0], 1, 1).to(x.dtype)], 1)
        cls_mask = self.build_cls_mask(text, cast_dtype)
        attn_mask = self.attn_mask[None, :seq_len, :seq_len] + cls_mask[:, :seq_len, :seq_len]
        x = x + self.positional_embedding[:seq_len].to(cast_dtype)
        x = self.transformer(x.permute(1, 0, 2), attn_mask=attn_mask).permute(1, 0, 2)
        pooled, tokens = self.ln_final(x[:, -1]), x[:, :-1]
        return pooled @ self.text_projection, tokens


class MultimodalTransformer(Transformer):
    """CoCa's captioning decoder (self-attention + cross-attention to the image tokens)."""

    def __init__(self, width: int, layers: int, heads: int, context_length: int, output_dim: int):
        super().__init__(width, layers, heads)
        self.context_length = context_length
        self.cross_attn = nn.ModuleList([ResidualAttentionBlock(width, heads, is_cross_attention=True)
                                         for _ in range(layers)])
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    def forward(self, image_embs, text_embs):
        L = text_embs.shape[1]
        t, im = text_embs.permute(1, 0, 2), image_embs.permute(1, 0, 2)
        for blk, cross in zip(self.resblocks, self.cross_attn):
            t = blk(t, attn_mask=self.attn_mask[:L, :L])
            t = cross(t, k_x=im, v_x=im)
        return self.ln_final(t.permute(1, 0, 2)) @ self.text_projection


class AttentionalPooler(nn.Module):
    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 256):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x):
        x = self.ln_k(x).permute(1, 0, 2)  # NLD -> LND
        q = self.ln_q(self.query).unsqueeze(1).repeat(1, x.shape[1], 1)
        return self.attn(q, x, x, need_weights=False)[0].permute(1, 0, 2)


class VisualModel(nn.Module):
    def __init__(self, embed_dim: int, embed_dim_caption: int, vc: dict):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer
        self.trunk = VisionTransformer(embed_dim=vc["width"], depth=vc["layers"],
                                       num_heads=vc["num_heads"], mlp_ratio=vc["mlp_ratio"],
                                       img_size=vc["image_size"], patch_size=vc["patch_size"],
                                       num_classes=0, dynamic_img_size=True)
        self.image_size = (vc["image_size"], vc["image_size"])
        prev = self.trunk.num_features
        self.attn_pool_contrast = AttentionalPooler(embed_dim, prev, vc["attn_pooler_heads"],
                                                    vc["n_queries_contrast"])
        self.ln_contrast = nn.LayerNorm(embed_dim)
        self.proj_contrast = nn.Parameter(prev ** -0.5 * torch.randn(embed_dim, embed_dim))
        self.head = nn.Sequential()
        self.attn_pool_caption = AttentionalPooler(embed_dim_caption, prev, vc["attn_pooler_heads"],
                                                   vc["n_queries_caption"])
        self.ln_caption = nn.LayerNorm(embed_dim_caption)

    def forward(self, x):
        x = self.trunk.forward_features(x)
        pooled = self.ln_contrast(self.attn_pool_contrast(x)[:, 0]) @ self.proj_contrast
        return pooled, x

    def caption_tokens(self, x):
        return self.ln_caption(self.attn_pool_caption(self.trunk.forward_features(x)))


class CoCa(nn.Module):
    """CONCH's CoCa (same attribute names as ``conch.open_clip_custom.coca_model.CoCa``)."""

    def __init__(self, cfg: dict):
        super().__init__()
        tc, vc, mc = cfg["text_cfg"], cfg["vision_cfg"], cfg["multimodal_cfg"]
        self.text = TextTransformer(tc["context_length"], tc["vocab_size"], tc["width"], tc["heads"],
                                    tc["layers"], cfg["embed_dim"], tc.get("pad_id", 0))
        self.visual = VisualModel(cfg["embed_dim"], cfg["embed_dim_caption"], vc)
        self.text_decoder = (MultimodalTransformer(mc["width"], mc["layers"], mc["heads"],
                                                   mc["context_length"], tc["vocab_size"])
                             if mc["layers"] > 0 else None)
        self.logit_scale = nn.Parameter(torch.ones([]) * torch.log(torch.tensor(1 / 0.07)))
        self.pad_id = tc.get("pad_id", 0)
        self.context_length = tc["context_length"]

    def encode_image(self, images, normalize: bool = False):
        x = self.visual(images)[0]
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text, normalize: bool = False, embed_cls: bool = True):
        text = text[:, :-1] if embed_cls else text  # make space for CLS token
        x = self.text(text)[0]
        return F.normalize(x, dim=-1) if normalize else x


def config_from_state_dict(sd: dict) -> dict:
    """The model config of a CONCH checkpoint: sizes from tensor shapes, heads as published."""
    import copy

    def count(prefix):
        return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})
    cfg = copy.deepcopy(PUBLISHED_CONFIG)
    try:
        vw = sd["visual.trunk.cls_token"].shape[-1]
        patch = sd["visual.trunk.patch_embed.proj.weight"].shape[-1]
        n_tok = sd["visual.trunk.pos_embed"].shape[1] - 1
        tw = sd["text.token_embedding.weight"].shape[1]
        cfg["embed_dim"] = int(sd["visual.proj_contrast"].shape[0])
        cfg["embed_dim_caption"] = int(sd["visual.attn_pool_caption.query"].shape[1])
        cfg["vision_cfg"].update(
            width=int(vw), patch_size=int(patch), image_size=int(round(n_tok ** 0.5)) * int(patch),
            layers=count("visual.trunk.blocks."),
            mlp_ratio=sd["visual.trunk.blocks.0.mlp.fc1.weight"].shape[0] / vw,
            n_queries_contrast=int(sd["visual.attn_pool_contrast.query"].shape[0]),
            n_queries_caption=int(sd["visual.attn_pool_caption.query"].shape[0]))
        cfg["text_cfg"].update(
            width=int(tw), vocab_size=int(sd["text.token_embedding.weight"].shape[0]),
            context_length=int(sd["text.positional_embedding"].shape[0]),
            layers=count("text.transformer.resblocks."))
        cfg["multimodal_cfg"].update(
            width=int(tw), vocab_size=cfg["text_cfg"]["vocab_size"],
            context_length=cfg["text_cfg"]["context_length"],
            layers=count("text_decoder.resblocks."))
    except KeyError as e:
        raise UserError(f"not a CONCH checkpoint (missing {e})") from None
    heads = lambda w, h: h if w % h == 0 else max(d for d in range(1, h + 1) if w % d == 0)  # noqa
    cfg["vision_cfg"]["num_heads"] = heads(cfg["vision_cfg"]["width"], 12)
    cfg["text_cfg"]["heads"] = cfg["multimodal_cfg"]["heads"] = heads(cfg["text_cfg"]["width"], 12)
    return cfg


def read_state_dict(path) -> dict:
    """``pytorch_model.bin`` as conch's ``read_state_dict`` does (``state_dict`` key, ``module.``
    prefix), with ``weights_only=True`` (tensors only, no pickled code)."""
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: cannot read the CONCH checkpoint ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    sd = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    if next(iter(sd)).startswith("module."):
        sd = {k[7:]: v for k, v in sd.items()}
    return sd


def cached_tokenizer_path() -> Path:
    """Where the fetched tokenizer file lives: ``$MEDADAPT_CACHE/conch/<commit>/<file>``."""
    from medadapt.paths import cache_home
    return cache_home() / "conch" / TOKENIZER_COMMIT[:12] / TOKENIZER_FILES[1]


def _download(url: str, limit: int) -> bytes:
    """The bytes at ``url`` (at most ``limit + 1`` are read); network errors propagate."""
    import urllib.request
    req = urllib.request.Request(url, headers={"User-Agent": "medadapt"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read(limit + 1)


def _sha256(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


def fetch_tokenizer() -> Path | None:
    """The tokenizer file from medadapt's cache, fetched once (from the pinned commit, sha256
    checked) when it is not there and the network is on. ``None`` offline (``HF_HUB_OFFLINE=1``)
    or when the download fails; bytes with another sha256 are refused and nothing is cached."""
    dest = cached_tokenizer_path()
    if dest.is_file():
        if _sha256(dest.read_bytes()) == TOKENIZER_SHA256:
            return dest
        dest.unlink(missing_ok=True)  # damaged copy in medadapt's own cache: fetch it again
    from medadapt.backbones.hub import offline
    if offline():
        return None
    try:
        data = _download(TOKENIZER_RAW_URL, TOKENIZER_BYTES)
    except Exception:  # URLError, timeout, HTTP error: offline in practice
        return None
    got = _sha256(data)
    if got != TOKENIZER_SHA256:
        raise UserError(f"CONCH's tokenizer downloaded from {TOKENIZER_RAW_URL} has sha256 "
                        f"{got[:16]}..., not the pinned {TOKENIZER_SHA256[:16]}...; refused (nothing "
                        f"was cached); put conch_byte_level_bpe_uncased.json ({TOKENIZER_URL}) next "
                        f"to {WEIGHTS} instead")
    dest.parent.mkdir(parents=True, exist_ok=True)
    from medadapt.safeio import write_bytes
    write_bytes(dest, data)  # a temporary file beside it, renamed into place when complete
    return dest


def load_tokenizer(folder: Path | None):
    """The published tokenizer file as a transformers fast tokenizer (conch's ``get_tokenizer``):
    from the model folder, an installed ``conch`` package, or medadapt's cache (fetched there
    once, see :func:`fetch_tokenizer`)."""
    from transformers import PreTrainedTokenizerFast
    candidates = [folder / n for n in TOKENIZER_FILES] if folder is not None else []
    try:  # the conch package ships the file too
        import conch.open_clip_custom as _cc  # noqa: F401
        candidates.append(Path(_cc.__file__).parent / "tokenizers" / TOKENIZER_FILES[1])
    except Exception:
        pass
    f = next((c for c in candidates if c.is_file()), None) or fetch_tokenizer()
    if f is not None:
        return PreTrainedTokenizerFast(tokenizer_file=str(f), bos_token="<start_of_text>",
                                       eos_token="<end_of_text>", pad_token="<pad>")
    raise UserError(f"CONCH's tokenizer file is missing: put conch_byte_level_bpe_uncased.json "
                    f"({TOKENIZER_URL}) next to {WEIGHTS}"
                    + (f" in {folder}" if folder is not None else "")
                    + " (with the network on, medadapt fetches it once into its cache)")


def image_transform(size: int):
    from torchvision import transforms as T

    from medadapt.backbones.transforms import _rgb
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                      _rgb, T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


class CONCHBackbone(Backbone):
    family = "conch"

    def __init__(self, model: CoCa, tokenizer, name: str, source: str):
        super().__init__(name, source)
        from medadapt.backbones.transforms import train_transform
        self.model = model
        self._tok = tokenizer
        self.image_size = int(model.visual.image_size[0])
        self.context_length = int(model.context_length)
        self.text_width = model.text.width
        self.vision_width = int(model.visual.trunk.num_features)
        self.embed_dim = int(model.text.text_projection.shape[1])
        self.preprocess = image_transform(self.image_size)
        self.train_preprocess = train_transform(self.image_size, CLIP_MEAN, CLIP_STD, "bicubic")
        for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(tokenizer, attr) is None:
                raise UserError(f"CONCH tokenizer has no {attr.split('_')[0]} token")
        self.freeze()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        # custom_tokenizer.tokenize: 127 tokens (start/end added, truncated, padded), + 1 <pad>
        ids = self._tok(list(texts), max_length=self.context_length - 1, add_special_tokens=True,
                        return_token_type_ids=False, truncation=True, padding="max_length",
                        return_tensors="pt")["input_ids"]
        return F.pad(ids, (0, 1), value=self._tok.pad_token_id)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.text.token_embedding

    def special_token_mask(self, ids: torch.Tensor) -> torch.Tensor:
        special = torch.tensor(sorted(set(self._tok.all_special_ids)), device=ids.device)
        return torch.isin(ids, special)

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids == self._tok.eos_token_id).int().argmax(-1)

    def pooled_positions(self, ids: torch.Tensor) -> torch.Tensor:
        # the appended CLS takes the slot of the dropped last token
        return torch.full(ids.shape[:1], ids.shape[1] - 1, dtype=torch.long, device=ids.device)

    def text_blocks(self) -> list[nn.Module]:
        return list(self.model.text.transformer.resblocks)

    def vision_blocks(self) -> list[nn.Module]:
        return list(self.model.visual.trunk.blocks)

    def vision_input_module(self) -> nn.Module:
        return self.model.visual.trunk.norm_pre

    def _hidden_layout(self, tower: str) -> str:
        return "lbd" if tower == "text" else "bld"

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids)

    def _logit_scale_param(self) -> torch.Tensor:
        return self.model.logit_scale


def is_conch_folder(folder: Path) -> bool:
    return (folder / WEIGHTS).is_file() and not (folder / "config.json").is_file() \
        and not (folder / "open_clip_config.json").is_file()


def load_conch(source: str, name: str | None = None, device: str = "cpu",
               cache_dir: str | None = None) -> CONCHBackbone:
    """``source``: a folder holding ``pytorch_model.bin`` (+ the tokenizer file), or a hub id
    (``MahmoodLab/conch``; the Hugging Face cache first, see :mod:`medadapt.backbones.hub`)."""
    name = name or source
    src = source[len("hf_hub:"):] if source.startswith(("hf_hub:", "hf-hub:")) else source
    folder = Path(src)
    if not folder.is_dir():
        if src.count("/") != 1 or src.startswith((".", "/")):
            raise UserError(f"CONCH folder not found: {src}")
        from medadapt.backbones import hub
        folder = hub.fetch(src, [[WEIGHTS]], optional=list(TOKENIZER_FILES) + [
            "tokenizer_config.json", "special_tokens_map.json"], cache_dir=cache_dir,
            what=f"{name} (gated: accept the terms on https://huggingface.co/{src} first)")
    if not (folder / WEIGHTS).is_file():
        raise UserError(f"{folder}: no {WEIGHTS} (CONCH's checkpoint from "
                        f"https://huggingface.co/{HUB_REPO})")
    tok = load_tokenizer(folder)
    sd = read_state_dict(folder / WEIGHTS)
    cfg = config_from_state_dict(sd)
    model = CoCa(cfg)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise UserError(f"{folder / WEIGHTS}: does not match CONCH's architecture "
                        f"({str(e).splitlines()[0][:200]})") from None
    return CONCHBackbone(model.to(device), tok, name, source)
