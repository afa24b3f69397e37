"""Reduced-size, random-weight replicas of the registered medical backbones, for tests ONLY.

Each builder follows the model's published configuration: the same library classes, image size,
patch size, context length, tokenizer kind with the real special tokens and ids, preprocessing
file, and the repository's file names and formats (``open_clip_pytorch_model.bin`` via
``torch.save``, ``pytorch_model.bin``, ``preprocessor_config.json`` ...). Depth and width are reduced
so that a test builds and runs them in seconds; their numbers mean nothing.

:func:`hub_cache_layout` lays a folder out as the Hugging Face cache holds a downloaded repository,
so that a registered alias resolves to it with ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from medadapt.backbones.tiny import (BIOMEDBERT, IMAGE_MEAN, IMAGE_STD, write_clip_bpe_tokenizer,
                                     write_wordpiece_tokenizer)

WIDTH = 48  # divisible by the published head counts (12 text / vision heads, 8 pooler heads)


def hub_cache_layout(cache: Path, repo_id: str, folder: Path, commit: str = "0" * 40) -> Path:
    """Copy ``folder``'s files into ``cache/models--org--name/snapshots/<commit>`` with
    ``refs/main``, the layout huggingface_hub writes. Returns the snapshot folder."""
    base = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    for f in Path(folder).iterdir():
        if f.is_file() and not f.name.startswith("."):
            shutil.copy(f, snap / f.name)
    return snap


# --------------------------------------------------------------------------------------------
# Hugging Face CLIPModel: PLIP (ViT-B/32), MONET (ViT-L/14)
# --------------------------------------------------------------------------------------------
def _hf_clip(folder: Path, patch: int, seed: int, bin_weights: bool) -> Path:
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _clip_tokenizer_into(folder)
    # the published configs of these checkpoints predate transformers' eos fix: text eos id 2
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=WIDTH, intermediate_size=4 * WIDTH,
                         num_hidden_layers=2, num_attention_heads=12, max_position_embeddings=77,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=2,
                           num_attention_heads=12, image_size=224, patch_size=patch,
                           hidden_act="quick_gelu"),
        projection_dim=32)
    torch.manual_seed(seed)
    model = CLIPModel(cfg)
    model.config.save_pretrained(folder)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if bin_weights:
        torch.save(sd, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    # legacy CLIPFeatureExtractor file, as these repositories publish it
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD, "resample": 3, "size": 224}, indent=2))
    return folder


def _clip_tokenizer_into(folder: Path) -> None:
    """CLIP's BPE tokenizer files (built once per cache from open_clip's merges, then copied)."""
    from medadapt.paths import cache_home
    src = cache_home() / "tiny" / "clip-bpe-tokenizer"
    if not (src / ".complete").is_file():
        tmp = src.with_name(src.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_clip_bpe_tokenizer(tmp, max_length=77)
        (tmp / ".complete").write_text("ok")
        shutil.rmtree(src, ignore_errors=True)
        tmp.rename(src)
    for f in src.iterdir():
        if not f.name.startswith("."):
            shutil.copy(f, folder / f.name)


def plip(folder: Path, seed: int = 0) -> Path:
    """vinid/plip: CLIPModel ViT-B/32, 224 px, CLIP BPE (49408), ``pytorch_model.bin``."""
    return _hf_clip(folder, patch=32, seed=seed, bin_weights=True)


def monet(folder: Path, seed: int = 0) -> Path:
    """suinleelab/monet: CLIPModel ViT-L/14, 224 px, CLIP BPE."""
    return _hf_clip(folder, patch=14, seed=seed, bin_weights=False)


# --------------------------------------------------------------------------------------------
# open_clip: BiomedCLIP (timm ViT-B/16 + PubMedBERT), QuiltNet (open_clip ViT-B/32, ViT-B/16)
# --------------------------------------------------------------------------------------------
def _save_open_clip(folder: Path, model_cfg: dict, preprocess_cfg: dict, seed: int,
                    text_override: dict | None = None) -> None:
    import open_clip
    torch.manual_seed(seed)
    cfg = json.loads(json.dumps(model_cfg))
    if text_override:
        cfg["text_cfg"].update(text_override)
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    model = cls(**cfg)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2))
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()},
               folder / "open_clip_pytorch_model.bin")


def biomedclip_text_config(vocab_size: int) -> dict:
    """The reduced PubMedBERT config standing in for the carried one (same id, fewer layers)."""
    from transformers import BertConfig
    return BertConfig(vocab_size=vocab_size, hidden_size=WIDTH, num_hidden_layers=2,
                      num_attention_heads=12, intermediate_size=4 * WIDTH,
                      max_position_embeddings=512, pad_token_id=0,
                      initializer_range=0.3).to_dict()


def biomedclip(folder: Path, seed: int = 0, full: bool = False) -> tuple[Path, dict]:
    """microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224: its published
    ``open_clip_config.json`` with the real ``hf_model_name``. Reduced (default): the vision tower
    is timm's ``vit_tiny_patch16_224`` (ViT/16 at 224, same class, smaller) and the text tower a
    2-layer BERT; returns the folder and ``{BIOMEDBERT: reduced BERT config}`` to supply through
    ``$MEDADAPT_HF_TEXT_CONFIGS``. ``full``: the published sizes (ViT-B/16 + the carried
    PubMedBERT-base config), random weights; the second value is then empty."""
    from medadapt.backbones.openclip import text_config_folder
    folder = Path(folder)
    tok = write_wordpiece_tokenizer(folder, max_length=256)
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id,
            tok.mask_token_id] == [0, 1, 2, 3, 4]  # PubMedBERT's vocab.txt order
    text_cfgs = {} if full else {BIOMEDBERT: biomedclip_text_config(len(tok))}
    model_cfg = {
        "embed_dim": 512,
        "vision_cfg": {"timm_model_name": "vit_base_patch16_224" if full else "vit_tiny_patch16_224",
                       "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear",
                       "image_size": 224},
        "text_cfg": {"hf_model_name": BIOMEDBERT, "hf_tokenizer_name": BIOMEDBERT,
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": 256},
    }
    text_folder = text_config_folder(BIOMEDBERT) if full else text_config_folder(BIOMEDBERT, text_cfgs)
    _save_open_clip(folder, model_cfg, {"mean": IMAGE_MEAN, "std": IMAGE_STD}, seed,
                    {"hf_model_name": text_folder, "hf_model_pretrained": False})
    return folder, text_cfgs


def quiltnet(folder: Path, patch: int = 32, seed: int = 0) -> Path:
    """wisdomik/QuiltNet-B-32 / -B-16: open_clip ``ViT-B-32`` / ``ViT-B-16`` configs (own text
    transformer, CLIP BPE from open_clip, context 77), ``open_clip_pytorch_model.bin``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = {"embed_dim": 32,
                 "vision_cfg": {"image_size": 224, "layers": 2, "width": WIDTH, "patch_size": patch,
                                "head_width": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": WIDTH,
                              "heads": 8, "layers": 2}}
    _save_open_clip(folder, model_cfg, {"mean": IMAGE_MEAN, "std": IMAGE_STD}, seed)
    return folder


# --------------------------------------------------------------------------------------------
# CONCH
# --------------------------------------------------------------------------------------------
_CONCH_SPECIALS = ["<pad>", "<start_of_text>", "<end_of_text>", "<|person|>", "<|mrn|>",
                   "<|specimen_id|>", "<|date|>"]
_CORPUS = ("an h&e image of tumor tissue. a histopathology image of lymphocytes, adipose tissue, "
           "stroma, mucus, debris, normal colon mucosa, colorectal adenocarcinoma epithelium, "
           "smooth muscle, background. invasive carcinoma with necrosis; benign glands. x x x x-ray "
           "x 10 x 40, x")


def write_conch_tokenizer(path: Path) -> None:
    """A byte-level BPE tokenizer file in the format of ``conch_byte_level_bpe_uncased.json``:
    NFD + strip accents + lowercase, ByteLevel(add_prefix_space=True), template
    ``<start_of_text> $A <end_of_text>``, the 7 special tokens at ids 0-6 (trained on a tiny
    corpus, so the vocabulary is small; the model keeps CONCH's 32007 rows)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(),
                                          normalizers.Lowercase()])
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([_CORPUS] * 4, BpeTrainer(
        vocab_size=400, special_tokens=_CONCH_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tk.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>", pair="$A $B:1",
        special_tokens=[("<start_of_text>", 1), ("<end_of_text>", 2)])
    tk.save(str(path))


def conch(folder: Path, seed: int = 0) -> Path:
    """MahmoodLab/conch: ``conch_ViT-B-16`` (448 px, patch 16, attentional poolers with 1 and 256
    queries, CoCa text tower with CLS, context 128, vocabulary 32007, decoder) at reduced depth
    and width, saved as ``pytorch_model.bin``, with the tokenizer file next to it."""
    import copy

    from medadapt.backbones.conch import PUBLISHED_CONFIG, CoCa
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(PUBLISHED_CONFIG)
    cfg["embed_dim"], cfg["embed_dim_caption"] = 32, WIDTH
    cfg["vision_cfg"].update(layers=2, width=WIDTH)
    cfg["text_cfg"].update(layers=2, width=WIDTH)
    cfg["multimodal_cfg"].update(layers=2, width=WIDTH)
    torch.manual_seed(seed)
    model = CoCa(cfg)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()},
               folder / "pytorch_model.bin")
    write_conch_tokenizer(folder / "conch_byte_level_bpe_uncased.json")
    return folder


BUILDERS = {  # alias -> (builder, hub repo id)
    "plip": (plip, "vinid/plip"),
    "monet": (monet, "suinleelab/monet"),
    "biomedclip": (biomedclip, "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"),
    "quiltnet-b32": (lambda f, seed=0: quiltnet(f, 32, seed), "wisdomik/QuiltNet-B-32"),
    "quiltnet-b16": (lambda f, seed=0: quiltnet(f, 16, seed), "wisdomik/QuiltNet-B-16"),
    "conch": (conch, "MahmoodLab/conch"),
}
