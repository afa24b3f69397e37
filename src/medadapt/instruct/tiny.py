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
