"""A tiny random LLaVA (``LlavaForConditionalGeneration``) + processor, built offline.

Tests and the offline demo cannot download LLaVA-1.5 / Qwen2-VL weights, so they build this
model of the same architecture class (CLIP vision tower -> MLP projector -> Llama decoder) with
tiny sizes, save it with ``save_pretrained`` and load it back through exactly the
``from_pretrained(path)`` call that a hub id takes (:func:`medadapt.instruct.train.load_model`).

The tokenizer is a byte-level BPE trained on the given texts (e.g. the instruction data), so it
needs no download either. The chat template is ChatML, the format PathInsight writes its data in
(Wu et al., Section 2.1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>", "<image>"]
DEFAULT_CORPUS = [
    "What tissue type is shown in this image? Adipose tissue. Debris. Lymphocytes. Mucus.",
    "Smooth muscle. Normal colon mucosa. Cancer-associated stroma. Colorectal adenocarcinoma epithelium.",
    "Describe this pathology image. yes no. user assistant system",
]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on ``texts`` with ChatML special tokens; adds BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts) + DEFAULT_CORPUS, trainer=trainer)
    # like LLaMA's tokenizer (LLaVA-1.5): a BOS token before every sequence
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="<|im_end|>", extra_special_tokens=["<|im_start|>", "<image>"],
                                   padding_side="right")


def build_tiny_llava(out_dir: str | Path, texts: Iterable[str] = (), *, image_size: int = 32,
                     patch_size: int = 8, hidden: int = 48, layers: int = 2, vocab_size: int = 384,
                     seed: int = 0) -> Path:
    """Build, save (``save_pretrained``) and return the folder of a tiny random LLaVA + processor.

    Image tokens per image: ``(image_size // patch_size) ** 2`` (16 with the defaults; the CLS
    token is dropped by the ``default`` feature-select strategy, as in LLaVA-1.5).
    """
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts, vocab_size)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, do_resize=True)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=patch_size, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=CHATML_TEMPLATE)
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                              num_attention_heads=2, image_size=image_size, patch_size=patch_size,
                              projection_dim=hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=2048, tie_word_embeddings=False,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m medadapt.instruct.tiny OUT [--data BUILT_DIR]``: build the tiny model offline."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m medadapt.instruct.tiny",
                                description="Build a tiny random LLaVA + processor (offline tests / demo).")
    p.add_argument("out", help="folder to save the model and processor in")
    p.add_argument("--data", default=None,
                   help="built data folder; its texts train the tokenizer (default: a few built-in phrases)")
    args = p.parse_args(argv)
    texts: list[str] = []
    if args.data:
        f = Path(args.data) / "data.jsonl"
        if not f.is_file():
            from medadapt.errors import UserError
            raise UserError(f"{f} not found; build the data first")
        texts = [m["content"] for line in f.read_text().splitlines() if line.strip()
                 for m in json.loads(line)["messages"]]
    print(build_tiny_llava(args.out, texts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# --- real chat templates and special-token ids of published checkpoints -------------------------
# Copied from the checkpoints' chat_template.json / tokenizer_config.json (the same strings
# openvino.genai's tokenizer.cpp and vLLM's template fallbacks list for these models); the tests
# build tokenizers that hold these special tokens at the same ids, so span finding, stop-token
# supervision and image-token expansion run on what the real processors produce.
LLAVA15_TEMPLATE = (  # llava-hf/llava-1.5-7b-hf chat_template.json
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] "
    "!= 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
LLAVA_NEXT_TEMPLATE = (  # llava-hf/llava-v1.6-mistral-7b-hf chat_template.json (writes "<\s>", not EOS)
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + "
    "message['content'][0]['text'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% for content in "
    "message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + "
    "'<\\\\s> '}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)
QWEN2_VL_TEMPLATE = (  # Qwen/Qwen2-VL-2B-Instruct (Qwen2.5-VL-*-Instruct uses the same template)
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message "
    "in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a "
    "helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] "
    "is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set "
    "image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' "
    "in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ "
    "video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in "
    "content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if "
    "add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS2_TEMPLATE = (  # HuggingFaceM4/idefics2-8b
    "{% for message in messages %}{{message['role'].capitalize()}}{% if message['content'][0]['type'] == "
    "'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] "
    "== 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
LLAMA_SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2}
FAMILIES: dict[str, dict] = {
    # LLaMA / Mistral sentencepiece ids; <image> and <pad> appended by llava-hf (config image_token_index)
    "llava-1.5": {"template": LLAVA15_TEMPLATE, "specials": {**LLAMA_SPECIALS, "<image>": 32000, "<pad>": 32001},
                  "bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>", "add_bos": True},
    "llava-next": {"template": LLAVA_NEXT_TEMPLATE,
                   "specials": {**LLAMA_SPECIALS, "<image>": 32000, "<pad>": 32001},
                   "bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>", "add_bos": True},
    "qwen2-vl": {"template": QWEN2_VL_TEMPLATE,
                 "specials": {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                              "<|vision_start|>": 151652, "<|vision_end|>": 151653,
                              "<|image_pad|>": 151655, "<|video_pad|>": 151656},
                 "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": None, "add_bos": False},
    # Qwen/Qwen2.5-VL-*-Instruct: the same template string and special-token ids, its own processor class
    "qwen2.5-vl": {"template": QWEN2_VL_TEMPLATE,
                   "specials": {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                                "<|vision_start|>": 151652, "<|vision_end|>": 151653,
                                "<|image_pad|>": 151655, "<|video_pad|>": 151656},
                   "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": None, "add_bos": False},
    "idefics2": {"template": IDEFICS2_TEMPLATE,
                 "specials": {**LLAMA_SPECIALS, "<fake_token_around_image>": 32000, "<image>": 32001,
                              "<end_of_utterance>": 32002},
                 "bos": "<s>", "eos": "</s>", "pad": "<unk>", "unk": "<unk>", "add_bos": True},
}


def build_family_tokenizer(family: str, texts: Iterable[str] = (), vocab_size: int = 320):
    """A byte-level BPE trained on ``texts`` whose special tokens sit at ``family``'s real ids."""
    import itertools
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    f = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts) + DEFAULT_CORPUS, trainer=trainer)
    data = json.loads(tok.to_str())
    specials = f["specials"]
    taken = set(specials.values())
    free = (i for i in itertools.count() if i not in taken)
    vocab = {t: next(free) for t, _ in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])}
    used = taken | set(vocab.values())
    vocab.update({f"<|unused{i}|>": i for i in range(max(used)) if i not in used})
    vocab.update(specials)
    data["model"]["vocab"] = vocab
    if f["unk"]:
        data["model"]["unk_token"] = f["unk"]
    data["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for t, i in specials.items()]
    tok = Tokenizer.from_str(json.dumps(data))
    if f["add_bos"]:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{f['bos']} $A", pair=f"{f['bos']} $A {f['bos']} $B",
            special_tokens=[(f["bos"], specials[f["bos"]])])
    named = {f[k]: k for k in ("bos", "eos", "pad", "unk") if f[k]}
    extra = [t for t in specials if t not in named]
    kw = {f"{k}_token": f[k] for k in ("bos", "eos", "pad", "unk") if f[k]}
    return PreTrainedTokenizerFast(tokenizer_object=tok, extra_special_tokens=extra,
                                   padding_side="right", **kw)


def _family_processor(family: str, tokenizer, image_size: int, patch_size: int):
    tpl = FAMILIES[family]["template"]
    if family == "llava-1.5":
        from transformers import CLIPImageProcessor, LlavaProcessor
        ip = CLIPImageProcessor(size={"shortest_edge": image_size}, do_center_crop=True,
                                crop_size={"height": image_size, "width": image_size})
        return LlavaProcessor(image_processor=ip, tokenizer=tokenizer, patch_size=patch_size,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=tpl)
    if family == "llava-next":
        from transformers import LlavaNextImageProcessor, LlavaNextProcessor
        ip = LlavaNextImageProcessor(size={"shortest_edge": image_size}, do_center_crop=True,
                                     crop_size={"height": image_size, "width": image_size},
                                     image_grid_pinpoints=NEXT_PINPOINTS(image_size))
        return LlavaNextProcessor(image_processor=ip, tokenizer=tokenizer, patch_size=patch_size,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                  chat_template=tpl)
    if family in ("qwen2-vl", "qwen2.5-vl"):
        from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor
        ip = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, merge_size=2,
                                   temporal_patch_size=2)
        try:
            from transformers import Qwen2VLVideoProcessor
            vp = Qwen2VLVideoProcessor(min_pixels=28 * 28, max_pixels=56 * 56)
        except ImportError:  # older transformers: no separate video processor
            vp = None
        kw = {"video_processor": vp} if vp is not None else {}
        cls = Qwen2VLProcessor if family == "qwen2-vl" else Qwen2_5_VLProcessor
        return cls(image_processor=ip, tokenizer=tokenizer, chat_template=tpl, **kw)
    if family == "idefics2":
        from transformers import Idefics2ImageProcessor, Idefics2Processor
        ip = Idefics2ImageProcessor(do_image_splitting=False,
                                    size={"longest_edge": image_size, "shortest_edge": image_size})
        return Idefics2Processor(image_processor=ip, tokenizer=tokenizer, image_seq_len=4, chat_template=tpl)
    raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")


def NEXT_PINPOINTS(s: int) -> list[list[int]]:
    """LLaVA-NeXT's any-resolution grid (1x2, 2x1, 2x2 tiles), scaled to tile size ``s``."""
    return [[s, 2 * s], [2 * s, s], [2 * s, 2 * s]]


def build_tiny_family(family: str, out_dir: str | Path, texts: Iterable[str] = (), *,
                      with_model: bool = True, image_size: int = 32, patch_size: int = 8,
                      hidden: int = 32, seed: int = 0) -> Path:
    """A tiny random model of ``family``'s real class with its real chat template and token ids.

    Models: ``llava-1.5`` (LlavaForConditionalGeneration), ``llava-next``
    (LlavaNextForConditionalGeneration), ``qwen2-vl`` (Qwen2VLForConditionalGeneration); the other
    families (``qwen2.5-vl``, ``idefics2``) are processor only (``with_model=False``).
    """
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_family_tokenizer(family, texts)
    processor = _family_processor(family, tokenizer, image_size, patch_size)
    processor.save_pretrained(out)
    if not with_model:
        return out
    ids = FAMILIES[family]["specials"]
    tok_ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id}
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=2048, tie_word_embeddings=False, **tok_ids)
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                              num_attention_heads=2, image_size=image_size, patch_size=patch_size,
                              projection_dim=hidden)
    torch.manual_seed(seed)
    if family == "llava-1.5":
        from transformers import LlavaConfig, LlavaForConditionalGeneration
        cfg = LlavaConfig(vision_config=vision, text_config=LlamaConfig(**text), image_token_id=ids["<image>"],
                          vision_feature_select_strategy="default", vision_feature_layer=-1)
        model = LlavaForConditionalGeneration(cfg)
    elif family == "llava-next":
        from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, MistralConfig
        cfg = LlavaNextConfig(vision_config=vision, text_config=MistralConfig(**text),
                              image_token_id=ids["<image>"], vision_feature_select_strategy="default",
                              vision_feature_layer=-1, image_grid_pinpoints=NEXT_PINPOINTS(image_size))
        model = LlavaNextForConditionalGeneration(cfg)
    elif family == "qwen2-vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
        text.update(tie_word_embeddings=True,  # as Qwen2-VL-2B
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]})
        cfg = Qwen2VLConfig(
            vision_config=dict(depth=1, embed_dim=hidden, num_heads=2, hidden_size=hidden, mlp_ratio=2,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
            text_config=text, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=True)
        model = Qwen2VLForConditionalGeneration(cfg)
    else:
        raise ValueError(f"no tiny model for {family!r} (processor only: with_model=False)")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    return out
