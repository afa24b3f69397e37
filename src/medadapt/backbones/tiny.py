"""Tiny random-init backbones of the real architecture classes, for tests and offline demos ONLY.

Their numbers mean nothing. Each builder creates the model with a fixed seed, saves it in the
family's real on-disk format, and loads it back through the same loader a hub id takes:

* ``tiny-open-clip``: open_clip ``CustomTextCLIP`` with a Hugging Face BERT text tower (like
  BiomedCLIP), folder = ``open_clip_config.json`` + ``open_clip_model.safetensors`` + BERT config
  and WordPiece tokenizer, loaded via ``local-dir:``.
* ``tiny-open-clip-bpe``: open_clip ``CLIP`` with its own text transformer and the real CLIP BPE
  tokenizer (like QuiltNet / OpenAI CLIP).
* ``tiny-hf-clip``: transformers ``CLIPModel`` with the real CLIP BPE tokenizer (like PLIP), saved
  with ``save_pretrained``.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

# A small WordPiece vocabulary: specials, characters, sub-word characters and frequent words of
# pathology captions. Unknown words fall back to character pieces, so any text tokenizes.
_WORDS = """a an the of in on with and or is are shows showing image photo slide tissue
histopathology pathology microscopic view sample stained h&e he stain cells cell nuclei nucleus
nuclear dense sparse large small round oval irregular pleomorphic dark pale pink purple blue
eosinophilic basophilic stroma glands gland glandular fat adipose vacuoles mucin mucus muscle
smooth fibers fibrous streaks debris necrosis necrotic lymphocytes lymphocyte tumor tumour
epithelium epithelial normal mucosa colon colorectal cancer associated background empty benign
malignant carcinoma adenocarcinoma cytoplasm chromatin architecture crowded scattered no many few
high low density size shape texture wavy pools clear spaces bright white red blood granules
granulocyte neutrophil eosinophil basophil monocyte platelet erythroblast immature lesion skin
pigmentation network dots globules streaks regular atypical nevus melanoma x-ray chest lung
pneumonia organ breast liver kidney prostate stomach""".split()


def _wordpiece_vocab() -> list[str]:
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()/&%+")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    seen = set(vocab)
    for w in _WORDS:
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    return vocab


def write_wordpiece_tokenizer(folder: Path, words: list[str] | None = None, max_length: int = 32):
    """Save a BERT WordPiece tokenizer (vocab.txt + tokenizer files) into ``folder``."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _wordpiece_vocab()
    for w in words or []:
        if w not in vocab:
            vocab.append(w)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    try:  # transformers 5
        tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True,
                                model_max_length=max_length)
    except TypeError:  # transformers 4: from the vocab file
        tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True,
                                model_max_length=max_length)
    tok.save_pretrained(folder)
    return tok


def write_clip_bpe_tokenizer(folder: Path, max_length: int = 77):
    """Save the real OpenAI CLIP BPE tokenizer (vocab.json + merges.txt), rebuilt from the BPE
    merges file that open_clip ships, so token ids equal open_clip's ``SimpleTokenizer``."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    files = {"vocab": str(folder / "vocab.json"), "merges": str(folder / "merges.txt")}
    try:  # transformers 5
        tok = CLIPTokenizer(**files, model_max_length=max_length, pad_token="<|endoftext|>")
    except TypeError:  # transformers 4: vocab_file / merges_file
        tok = CLIPTokenizer(vocab_file=files["vocab"], merges_file=files["merges"],
                            model_max_length=max_length, pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    return tok


BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
TEXT_TOWER_CONFIG = "text_tower_config.json"  # {hub id: reduced BERT config}, read by the loader

IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]  # OpenAI CLIP statistics
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def save_tiny_open_clip(folder: Path, hf_text: bool = True, seed: int = 0, image_size: int = 32,
                        width: int = 32, embed_dim: int = 32) -> Path:
    """Build a tiny open_clip model and save it as open_clip does on the hub."""
    import open_clip
    from safetensors.torch import save_file
    from transformers import BertConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vision_cfg = {"image_size": image_size, "layers": 2, "width": width, "patch_size": 8,
                  "head_width": 16, "mlp_ratio": 2.0}
    if hf_text:
        tok = write_wordpiece_tokenizer(folder, max_length=32)
        bert = BertConfig(vocab_size=len(tok), hidden_size=width, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=2 * width,
                          max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                          initializer_range=0.3)  # 0.02 makes a 2-layer BERT near-constant
        # the REAL text-tower id, as BiomedCLIP's config names it; the reduced BERT config that
        # stands in for the carried one is a test-only file read by the tiny loader
        (folder / TEXT_TOWER_CONFIG).write_text(json.dumps({BIOMEDBERT: bert.to_dict()}, indent=1))
        text_cfg = {"hf_model_name": BIOMEDBERT, "hf_tokenizer_name": BIOMEDBERT,
                    "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                    "context_length": 32}
        model_cfg = {"embed_dim": embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg,
                     "custom_text": True}
    else:
        text_cfg = {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 2,
                    "layers": 2, "mlp_ratio": 2.0}
        model_cfg = {"embed_dim": embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    torch.manual_seed(seed)
    cls = open_clip.CustomTextCLIP if hf_text else open_clip.CLIP
    build_text = dict(text_cfg)
    if hf_text:
        from medadapt.backbones.openclip import text_config_folder
        build_text.update(hf_model_pretrained=False,
                          hf_model_name=text_config_folder(BIOMEDBERT, {BIOMEDBERT: bert.to_dict()}))
    model = cls(embed_dim=embed_dim, vision_cfg=vision_cfg, text_cfg=build_text)
    cfg = {"model_cfg": model_cfg,
           "preprocess_cfg": {"size": image_size, "mean": IMAGE_MEAN, "std": IMAGE_STD,
                              "interpolation": "bicubic", "resize_mode": "shortest"}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=1))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return folder


def save_tiny_hf_clip(folder: Path, seed: int = 0, image_size: int = 32, width: int = 32,
                      embed_dim: int = 32) -> Path:
    """Build a tiny transformers CLIPModel (PLIP's class) and ``save_pretrained`` it."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = Path(folder)
    tok = write_clip_bpe_tokenizer(folder)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=8),
        projection_dim=embed_dim)
    torch.manual_seed(seed)
    model = CLIPModel(cfg)
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size},
                       image_mean=IMAGE_MEAN, image_std=IMAGE_STD).save_pretrained(folder)
    return folder


def text_tower_configs(folder: Path) -> dict | None:
    """The reduced text-tower config a tiny/replica folder carries for its real hub id (test only)."""
    f = Path(folder) / TEXT_TOWER_CONFIG
    return json.loads(f.read_text()) if f.is_file() else None
