"""Turn a ChatML :class:`Record` into model inputs with the processor's own chat template.

* The chat template comes from the processor (any image-text-to-text model: LLaVA-1.5-hf,
  Qwen2-VL / Qwen2.5-VL, InternVL, ...); each model writes its own image tokens for the
  ``<image>`` placeholders.
* Loss only on assistant tokens: every assistant turn's span is found by rendering the
  conversation up to that turn with and without it (``add_generation_prompt``), tokenizing both
  through the processor and taking the common prefix -- no template-specific markers needed.
  The answer's end-of-turn token is supervised too, so the model learns to stop.
* Image tokens are never truncated away (a classic failure of SFT tools that clip at
  ``max_length`` and then crash or silently mis-align image features): when a sequence is longer
  than ``max_length`` the text after the last image token is cut; if that is not enough,
  :class:`~medadapt.errors.UserError` names the file and line.

PathInsight (Wu et al., Section 2.2) trains with sequence length 2048.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from medadapt.errors import UserError
from medadapt.instruct.records import BadItem, Record, split_content

IGNORE = -100


def hf_messages(messages: list[dict[str, str]]) -> list[dict[str, Any]]:
    """ChatML strings with ``<image>`` placeholders -> the structured form processors expect."""
    return [{"role": m["role"], "content": split_content(m["content"])} for m in messages]


def load_images(rec: Record) -> list:
    from PIL import Image, UnidentifiedImageError

    out = []
    for p in rec.images:
        try:
            with Image.open(p) as im:
                out.append(im.convert("RGB"))
        except FileNotFoundError:
            raise BadItem(rec.where or rec.id, f"image not found: {p}", "missing_image") from None
        except (UnidentifiedImageError, OSError) as e:
            raise BadItem(rec.where or rec.id, f"cannot read image {p}: {e}", "bad_image") from None
    return out


def image_token_ids(processor) -> set[int]:
    """Ids of the tokens that stand for image features (``<image>``, ``<|image_pad|>``, ...)."""
    ids = set()
    for attr in ("image_token_id", "video_token_id"):
        v = getattr(processor, attr, None)
        if isinstance(v, int):
            ids.add(v)
    tok = getattr(processor, "tokenizer", processor)
    for attr in ("image_token",):
        t = getattr(processor, attr, None)
        if isinstance(t, str):
            tid = tok.convert_tokens_to_ids(t)
            if isinstance(tid, int) and tid != tok.unk_token_id:
                ids.add(tid)
    return ids


def call_processor(processor, texts: list[str], kw: dict[str, Any]):
    """Call the processor like ``apply_chat_template(tokenize=True)`` does: no second BOS when the
    template already writes one, the tokenizer's own special tokens otherwise."""
    tok = getattr(processor, "tokenizer", processor)
    bos = getattr(tok, "bos_token", None)
    if bos and all(t.startswith(bos) for t in texts):
        return processor(**kw, add_special_tokens=False)
    return processor(**kw)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class ChatEncoder:
    """Encode records for training (``encode``) or generation (``prompt``).

    ``truncation``: ``"right"`` cuts the text after the last image token when a sequence exceeds
    ``max_length``; ``"error"`` refuses any truncation. Either way image tokens are never cut.
    """

    processor: Any
    max_length: int = 2048
    truncation: str = "right"

    def __post_init__(self):
        if self.truncation not in ("right", "error"):
            raise UserError(f"truncation must be 'right' or 'error', got {self.truncation!r}")
        self.image_ids = image_token_ids(self.processor)

    def render(self, messages: list[dict[str, str]], generation_prompt: bool = False,
               where: str = "") -> str:
        try:
            return self.processor.apply_chat_template(hf_messages(messages), tokenize=False,
                                                      add_generation_prompt=generation_prompt)
        except Exception as e:  # jinja TemplateError, ValueError for a missing template, ...
            raise BadItem(where, "the model's chat template rejects this item "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                          "template_error") from None

    def _tokenize(self, text: str, images: list, where: str = "") -> dict[str, Any]:
        kw: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if images:
            kw["images"] = images
        try:
            return dict(call_processor(self.processor, [text], kw))
        except (ValueError, RuntimeError) as e:
            raise BadItem(where, f"the processor rejects this item ({str(e).splitlines()[0]})",
                          "processor_error") from None

    def encode(self, rec: Record) -> dict[str, torch.Tensor]:
        """Tokenize a full conversation; ``labels`` are ``-100`` except on assistant turns."""
        where = rec.where or rec.id
        images = load_images(rec)
        msgs = rec.messages
        full = self._tokenize(self.render(msgs, where=where), images, where)
        ids = full["input_ids"][0].tolist()
        labels = [IGNORE] * len(ids)
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            n_img = sum(x["content"].count("<image>") for x in msgs[:i])
            prefix = self._tokenize(self.render(msgs[:i], True, where), images[:n_img], where)
            upto = self._tokenize(self.render(msgs[: i + 1], where=where), images[:n_img], where)
            start = _common_prefix(prefix["input_ids"][0].tolist(), ids)
            end = _common_prefix(upto["input_ids"][0].tolist(), ids)
            labels[start:end] = ids[start:end]
        out = {k: v[0] if _is_seq(v, len(ids)) else v for k, v in full.items() if torch.is_tensor(v)}
        out["labels"] = torch.tensor(labels)
        if not any(x != IGNORE for x in labels):
            raise BadItem(where, "no assistant tokens found after applying the chat template",
                          "no_answer_tokens")
        return self._fit(out, where)

    def _image_positions(self, enc: dict[str, torch.Tensor]) -> list[int]:
        ids = enc["input_ids"]
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for t in self.image_ids:
            mask |= ids == t
        if "mm_token_type_ids" in enc:
            mask |= enc["mm_token_type_ids"] != 0
        return mask.nonzero().flatten().tolist()

    def _fit(self, enc: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
        n = enc["input_ids"].shape[0]
        if n <= self.max_length:
            return enc
        pos = self._image_positions(enc)
        last = (pos[-1] + 1) if pos else 0
        if self.truncation == "error":
            raise BadItem(where, f"{n} tokens exceed max_length {self.max_length} and truncation "
                          "is 'error'; raise max_length or shorten the item", "too_long")
        if last > self.max_length:
            raise BadItem(
                where, f"{n} tokens exceed max_length {self.max_length} and truncating would cut "
                f"image tokens (they end at token {last}); raise max_length (config max_length / "
                "--max-length) or use smaller / fewer images", "image_tokens_truncated")
        seq_len = n
        enc = {k: (v[: self.max_length] if _is_seq(v, seq_len, batched=False) else v)
               for k, v in enc.items()}
        if not (enc["labels"] != IGNORE).any():
            raise BadItem(where, f"the whole answer lies beyond max_length {self.max_length}; "
                          "raise max_length or shorten the prompt", "answer_truncated")
        return enc

    def prompt(self, rec: Record) -> tuple[str, list]:
        """Text and images for generating the last assistant turn (earlier turns as context)."""
        return self.render(rec.messages[:-1], True, rec.where or rec.id), load_images(rec)


def _is_seq(v: torch.Tensor, seq_len: int, batched: bool = True) -> bool:
    if batched:
        return v.dim() == 2 and v.shape[0] == 1 and v.shape[1] == seq_len
    return v.dim() == 1 and v.shape[0] == seq_len


class Collator:
    """Pad sequence fields (right), stack per-image fields (``pixel_values``, ``image_grid_thw``...)."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        longest = max(b["input_ids"].shape[0] for b in batch)
        out: dict[str, torch.Tensor] = {}
        keys = {k for b in batch for k in b}
        for k in keys:
            vals = [b[k] for b in batch if k in b]
            if len(vals) == len(batch) and all(
                    _is_seq(v, b["input_ids"].shape[0], batched=False) for v, b in zip(vals, batch)):
                fill = IGNORE if k == "labels" else (self.pad if k == "input_ids" else 0)
                out[k] = torch.stack([torch.nn.functional.pad(v, (0, longest - v.shape[0]), value=fill)
                                      for v in vals])
            else:
                out[k] = torch.cat(vals, dim=0)
        return out
