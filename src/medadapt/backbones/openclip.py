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
        for tr in (None if self._hf_text else getattr(model, "transformer", None),
                   None if hasattr(visual, "trunk") else getattr(visual, "transformer", None)):
            sequence_first(tr)
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

    def pooled_positions(self, ids: torch.Tensor) -> torch.Tensor:
        if self._hf_text:
            pooler = type(self.model.text.pooler).__name__
            if pooler in ("ClsLastHiddenStatePooler", "ClsPooler"):  # BiomedCLIP: [CLS]
                pos = int(getattr(self.model.text.pooler, "cls_token_position", 0))
                return torch.full(ids.shape[:1], pos, dtype=torch.long, device=ids.device)
            raise NotImplementedError(f"{pooler} pools no single token")
        pool = getattr(self.model, "text_pool_type", "argmax")
        if pool == "first":
            return torch.zeros(ids.shape[:1], dtype=torch.long, device=ids.device)
        if pool == "last":
            return torch.full(ids.shape[:1], ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        return self.eos_positions(ids)  # argmax / eos: CLIP's end-of-text token

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

    def vision_input_module(self) -> nn.Module:
        v = self.model.visual
        if hasattr(v, "trunk"):  # timm ViT (BiomedCLIP): norm_pre, an Identity unless pre_norm
            return v.trunk.norm_pre
        return v.ln_pre  # open_clip VisionTransformer: applied batch-first in _embeds

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


def sequence_first(tr: nn.Module | None) -> bool:
    """Run an open_clip ``Transformer`` stack sequence-first (``[L, B, D]``, OpenAI CLIP's layout)
    instead of open_clip's default batch-first; same weights, same math, another memory layout.

    Why: with ``batch_first=True`` each ``nn.MultiheadAttention`` transposes its (contiguous,
    batch-first) input to ``[L, B, D]`` and projects the non-contiguous view; when that input
    requires grad (prompt learning: learned context in the text tower, deep visual prompts),
    ``torch.matmul`` does not fold it into one matrix product but runs a batched ``aten::bmm`` of
    L small products against an expanded weight, forward and backward: 38-40% of a CoOp step on a
    ViT-B/16 text tower on CPU (benchmarks/text_step.py). Sequence-first, the stack transposes once
    on entry, every block's LayerNorm output is contiguous ``[L, B, D]`` and each projection is a
    single ``mm``, as in the official CLIP code (``clip/model.py`` permutes to LND). Only stacks of
    plain ``nn.MultiheadAttention`` blocks are switched (returns whether it did)."""
    if tr is None or not hasattr(tr, "resblocks") or not getattr(tr, "batch_first", False):
        return False
    if not all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in tr.resblocks):
        return False
    tr.batch_first = False
    for b in tr.resblocks:
        b.attn.batch_first = False
    return True


_WEIGHTS = ["open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
            "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth"]
_HF_TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.txt",
                       "special_tokens_map.json", "vocab.json", "merges.txt"]
TEXT_CONFIGS_ENV = "MEDADAPT_HF_TEXT_CONFIGS"  # JSON file {hub id: config dict} added to ours


def carried_text_configs(extra: dict | None = None) -> dict:
    """Hub id -> config dict of the text towers medadapt carries (``hf_text_configs.json``), then
    those of the JSON file named by ``$MEDADAPT_HF_TEXT_CONFIGS`` (same layout), then ``extra``
    (a folder's ``text_tower_config.json``); later ones win."""
    import json
    import os
    from importlib import resources
    table = json.loads(resources.files("medadapt.backbones").joinpath("hf_text_configs.json")
                       .read_text())
    env = os.environ.get(TEXT_CONFIGS_ENV)
    if env:
        try:
            table.update(json.loads(open(env).read()))
        except (OSError, ValueError) as e:
            raise UserError(f"{TEXT_CONFIGS_ENV}={env}: not a readable JSON file ({e})") from None
    table.update(extra or {})
    out = {}
    for k, v in table.items():
        if k.startswith("_"):
            continue
        while isinstance(v, str):  # an alias (renamed repository)
            v = table[v]
        out[k] = v
    return out


def text_config_folder(hf_model_name: str, extra: dict | None = None) -> str | None:
    """A local folder with ``config.json`` for an open_clip HF text tower named by hub id: the
    carried config (written once under the medadapt cache), else the id's Hugging Face cache
    snapshot; None if neither (open_clip then needs the network)."""
    import hashlib
    import json
    import os
    from pathlib import Path

    from medadapt.backbones import hub
    from medadapt.paths import cache_home

    if os.path.isdir(hf_model_name):
        return hf_model_name
    cfg = carried_text_configs(extra).get(hf_model_name)
    if cfg is not None:
        text = json.dumps(cfg, indent=1, sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()[:12]
        folder = cache_home() / "hf-text-configs" / (hf_model_name.replace("/", "--") + "-" + key)
        if not (folder / "config.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f"config.json.tmp{os.getpid()}"
            tmp.write_text(text)
            os.replace(tmp, folder / "config.json")
        return str(folder)
    snap = hub.cached_snapshot(hf_model_name)
    if snap is not None and (Path(snap) / "config.json").is_file():
        return str(snap)
    return None


def _load_dir(folder, name: str, source: str, device: str, quick_gelu: bool | None,
              text_configs: dict | None = None):
    import json
    from pathlib import Path

    import open_clip

    from medadapt.backbones import hub

    folder = Path(folder)
    if not (folder / "open_clip_config.json").is_file():
        raise UserError(f"{folder}: no open_clip_config.json (an open_clip model folder holds "
                        "open_clip_config.json + open_clip_pytorch_model.bin or "
                        "open_clip_model.safetensors); pass it as open_clip:local-dir:PATH")
    try:
        cfg = json.loads((folder / "open_clip_config.json").read_text())
        model_cfg = cfg["model_cfg"]
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise UserError(f"{folder / 'open_clip_config.json'}: not an open_clip config "
                        f"({type(e).__name__})") from None
    # files from others are data: a folder (or a text tower / tokenizer it names) whose configs
    # ask transformers / open_clip to import Python code (auto_map, trust_remote_code) is refused
    from medadapt.safeio import refuse_remote_code, refuse_remote_code_in
    refuse_remote_code(folder)
    if not isinstance(model_cfg, dict) or not isinstance(model_cfg.get("text_cfg", {}), dict):
        raise UserError(f"{folder / 'open_clip_config.json'}: not an open_clip config (model_cfg)")
    refuse_remote_code_in(text_configs or {}, f"the text tower configs of {folder}")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")) \
            and not any(folder.glob("*.pth")):
        raise UserError(f"{folder}: no weights file (expected one of {', '.join(_WEIGHTS)})")
    kwargs = {}
    text_cfg = dict(model_cfg.get("text_cfg", {}))
    hf_name = text_cfg.get("hf_model_name")
    if hf_name:
        extra = dict(_folder_text_configs(folder) or {}, **(text_configs or {}))
        local = text_config_folder(hf_name, extra)
        refuse_remote_code(local, f"the text tower of {folder}")
        if local is None and hub.offline():
            raise UserError(
                f"{folder}: the text tower is {hf_name!r}, whose config.json medadapt does not "
                f"carry and the Hugging Face cache lacks; download config.json of "
                f"https://huggingface.co/{hf_name} (`hf download {hf_name} config.json`) or list it "
                f"in a JSON file named by ${TEXT_CONFIGS_ENV}")
        if local is not None:
            # the checkpoint holds the text weights: no pretrained download of the tower
            kwargs["text_cfg"] = dict(text_cfg, hf_model_name=local, hf_model_pretrained=False)
    tok_source = None  # None: open_clip's own choice for the folder
    tok_name = text_cfg.get("hf_tokenizer_name")
    if tok_name and not hub.has_file(folder, ["tokenizer.json", "vocab.txt", "vocab.json"]):
        # e.g. a cache filled by open_clip itself, which fetched the tokenizer by id
        snap = hub.cached_snapshot(tok_name) if not Path(tok_name).is_dir() else Path(tok_name)
        if hub.has_file(snap, ["tokenizer.json", "vocab.txt", "vocab.json"]):
            tok_source = str(snap)
        elif hub.offline():
            raise UserError(f"{folder}: the text tokenizer files are missing (tokenizer.json, "
                            "tokenizer_config.json, vocab.txt, special_tokens_map.json from the "
                            f"model's repository, or the repository {tok_name})")
        else:
            tok_source = tok_name
    if tok_source is not None and Path(tok_source).is_dir():
        refuse_remote_code(tok_source, f"the tokenizer of {folder}")
    # never from the folder's config: transformers gets trust_remote_code=False from us
    tok_kwargs = {k: v for k, v in (text_cfg.get("tokenizer_kwargs") or {}).items()
                  if k not in ("trust_remote_code", "auto_map")} \
        if isinstance(text_cfg.get("tokenizer_kwargs") or {}, dict) else {}
    try:
        model, _, pre_val = open_clip.create_model_and_transforms(
            "local-dir:" + str(folder), device=device, force_quick_gelu=bool(quick_gelu), **kwargs)
        if tok_source is None:
            tokenizer = open_clip.get_tokenizer(
                "local-dir:" + str(folder),
                **({"trust_remote_code": False} if tok_name else {}))
        else:
            from open_clip.tokenizer import HFTokenizer
            tokenizer = HFTokenizer(tok_source, context_length=int(text_cfg.get("context_length", 77)),
                                    **tok_kwargs, trust_remote_code=False)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot load open_clip model from {folder} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    pre_train = _train_transform_of(model)
    return OpenCLIPBackbone(model, tokenizer, pre_train, pre_val, name, source)


TEXT_TOWER_CONFIG = "text_tower_config.json"


def _folder_text_configs(folder) -> dict | None:
    """``{hub id: config}`` a model folder may carry for its HF text tower (``text_tower_config.json``;
    for open_clip models whose text tower medadapt does not carry; our test replicas use it)."""
    import json
    from pathlib import Path
    f = Path(folder) / TEXT_TOWER_CONFIG
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except (ValueError, RecursionError) as e:
        raise UserError(f"{f}: not valid JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{f}: must map hub ids to config mappings")
    return data


def _train_transform_of(model):
    from medadapt.backbones.transforms import train_transform
    pc = getattr(model.visual, "preprocess_cfg", None) or {}
    size = pc.get("size", getattr(model.visual, "image_size", 224))
    size = size if isinstance(size, int) else tuple(size)
    return train_transform(size, pc.get("mean", (0.48145466, 0.4578275, 0.40821073)),
                           pc.get("std", (0.26862954, 0.26130258, 0.27577711)),
                           pc.get("interpolation", "bicubic"))


def load_open_clip(source: str, name: str | None = None, device: str = "cpu",
                   cache_dir: str | None = None, quick_gelu: bool | None = None,
                   text_configs: dict | None = None) -> OpenCLIPBackbone:
    """``source``: ``hf-hub:org/repo`` (the repository's files, from the Hugging Face cache when
    present), ``local-dir:PATH`` (a folder with ``open_clip_config.json`` + weights), or a built-in
    open_clip name with a pretrained tag as ``NAME@TAG`` (e.g. ``ViT-B-16-quickgelu@openai``).
    ``quick_gelu=True`` forces QuickGELU activations (OpenAI CLIP's) over the config's.
    ``text_configs``: {hub id: config dict} for HF text towers, over the carried ones."""
    import open_clip

    name = name or source
    if source.startswith("hf-hub:"):
        from medadapt.backbones import hub
        repo = source[len("hf-hub:"):]
        folder = hub.fetch(repo, [["open_clip_config.json"], _WEIGHTS],
                           optional=_HF_TOKENIZER_FILES, cache_dir=cache_dir, what=name)
        return _load_dir(folder, name, source, device, quick_gelu, text_configs)
    if source.startswith("local-dir:"):
        from pathlib import Path
        folder = Path(source[len("local-dir:"):])
        if not folder.is_dir():
            raise UserError(f"open_clip model folder not found: {folder} (expected a folder with "
                            "open_clip_config.json + weights, as --backbone open_clip:local-dir:PATH)")
        return _load_dir(folder, name, source, device, quick_gelu, text_configs)
    model_name, pretrained = source, None
    if "@" in source:
        model_name, pretrained = source.split("@", 1)
    try:
        model, _, pre_val = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device, cache_dir=cache_dir,
            force_quick_gelu=bool(quick_gelu))
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    except Exception as e:  # network, missing files, bad config: all user-fixable
        raise UserError(
            f"cannot load open_clip model {source!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "without internet, download its files (open_clip_config.json + weights) into a folder "
            "and pass --backbone open_clip:local-dir:PATH, or pre-fill the Hugging Face cache and "
            "set HF_HUB_OFFLINE=1") from None
    return OpenCLIPBackbone(model, tokenizer, _train_transform_of(model), pre_val, name, source)
