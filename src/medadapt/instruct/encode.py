"""Turn a ChatML :class:`Record` into model inputs with the processor's own chat template.

* The chat template comes from the processor (any image-text-to-text model: LLaVA-1.5-hf,
  Qwen2-VL / Qwen2.5-VL, InternVL, ...); each model writes its own image tokens for the
  ``<image>`` placeholders.
* Loss only on assistant tokens: every assistant turn's span is found by rendering the
  conversation up to that turn with and without it (``add_generation_prompt``), tokenizing both
  through the tokenizer and taking the common prefix -- no template-specific markers needed.
  The spans are found on the text before image-token expansion and mapped onto the processor's
  output, so the image processor runs once per item (not ``2T + 1`` times for ``T`` turns).
* **Stop token**: each supervised answer must end with the model's end-of-turn or EOS token, as
  LLaVA supervises ``answer</s>`` (``preprocess_v1``: ``conv.sep2``). When the chat template writes
  none inside the answer span (LLaVA-1.5-hf writes ``ASSISTANT: answer `` with no ``</s>``,
  LLaVA-NeXT-mistral writes the literal text ``<\\s>``), the tokenizer's EOS id is inserted right
  after the answer's last non-blank token and supervised. ChatML / Qwen2-VL (``<|im_end|>``) and
  Idefics (``<end_of_utterance>``) templates already emit one, so nothing is inserted there.
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
# special tokens that end a turn in common chat templates (besides the tokenizer's EOS)
END_OF_TURN = ("<|im_end|>", "<end_of_utterance>", "<|eot_id|>", "<|end|>", "<end_of_turn>",
               "<|endoftext|>", "</s>")


def stop_token_ids(processor) -> list[int]:
    """EOS plus the end-of-turn special tokens the tokenizer knows (generation stops on any)."""
    tok = getattr(processor, "tokenizer", processor)
    vocab = tok.get_vocab()
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    ids += [vocab[t] for t in END_OF_TURN if t in vocab and vocab[t] not in ids]
    return ids


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
        self.stop_ids = set(stop_token_ids(self.processor))
        tok = getattr(self.processor, "tokenizer", self.processor)
        self.eos_id = tok.eos_token_id

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

    def _text_ids(self, text: str) -> list[int]:
        """Token ids of a rendered text before image-token expansion (tokenizer only)."""
        tok = getattr(self.processor, "tokenizer", self.processor)
        bos = getattr(tok, "bos_token", None)
        add = not (bos and text.startswith(bos))
        return tok(text, add_special_tokens=add)["input_ids"]

    def _spans(self, msgs: list[dict[str, str]], where: str
               ) -> tuple[list[int], list[tuple[int, int, int]]]:
        """Unexpanded ids of the whole conversation and, per assistant turn, ``(start, end,
        content_end)``: the turn's span as the template writes it, and where the answer's own
        text ends inside it (before template text such as LLaVA-NeXT's literal ``<\\s>``)."""
        ids = self._text_ids(self.render(msgs, where=where))
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            start = _common_prefix(self._text_ids(self.render(msgs[:i], True, where)), ids)
            upto = self.render(msgs[: i + 1], where=where)
            end = _common_prefix(self._text_ids(upto), ids)
            content = m["content"].strip()
            k = upto.rfind(content) if content else -1
            cend = end
            if k >= 0:
                cend = min(end, max(start + 1, _common_prefix(
                    self._text_ids(upto[: k + len(content)]), ids)))
            if end > start:
                spans.append((start, end, cend))
        return ids, spans

    def encode(self, rec: Record, info: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
        """Tokenize a full conversation; ``labels`` are ``-100`` except on assistant turns.

        ``info`` (optional) receives ``truncated`` (1 if the item was cut to ``max_length``),
        ``turns_dropped`` (assistant turns lost entirely), ``turns_cut`` (cut inside) and
        ``eos_inserted`` (answers whose stop token the template did not write).
        """
        where = rec.where or rec.id
        images = load_images(rec)
        msgs = rec.messages
        full = self._tokenize(self.render(msgs, where=where), images, where)
        ids = full["input_ids"][0].tolist()
        flat, spans = self._spans(msgs, where)
        pos = _align(flat, ids)
        labels = [IGNORE] * len(ids)
        inserts = []
        for s, e, ce in spans:
            a, b, c = pos[s], pos[e - 1], pos[ce - 1]
            if a is None or b is None or c is None:
                raise BadItem(where, "cannot locate an answer in the processor's output",
                              "template_error")
            b, c = b + 1, c + 1
            if not any(t in self.stop_ids for t in ids[a:b]):
                # no stop token from the template: supervise the answer's text, then EOS (LLaVA's
                # "answer</s>"); template text after the answer stays unsupervised
                b = c
                inserts.append(b)
            labels[a:b] = ids[a:b]
        out = {k: v[0] if _is_seq(v, len(ids)) else v for k, v in full.items() if torch.is_tensor(v)}
        out["labels"] = torch.tensor(labels)
        if self.eos_id is None:
            inserts = []  # a tokenizer without EOS: nothing to insert (the template's text is all)
        if inserts:
            out = _insert(out, inserts, self.eos_id, len(ids))
        if not any(x != IGNORE for x in labels):
            raise BadItem(where, "no assistant tokens found after applying the chat template",
                          "no_answer_tokens")
        if info is not None:
            info["eos_inserted"] = info.get("eos_inserted", 0) + len(inserts)
        return self._fit(out, where, info)

    def _image_positions(self, enc: dict[str, torch.Tensor]) -> list[int]:
        ids = enc["input_ids"]
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for t in self.image_ids:
            mask |= ids == t
        if "mm_token_type_ids" in enc:
            mask |= enc["mm_token_type_ids"] != 0
        return mask.nonzero().flatten().tolist()

    def _fit(self, enc: dict[str, torch.Tensor], where: str,
             info: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
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
        if info is not None:
            sup = (enc["labels"] != IGNORE).int().tolist()
            turns = [(i, j) for i, j in _runs(sup)]
            info["truncated"] = info.get("truncated", 0) + 1
            info["turns_dropped"] = info.get("turns_dropped", 0) + sum(
                i >= self.max_length for i, _ in turns)
            info["turns_cut"] = info.get("turns_cut", 0) + sum(
                i < self.max_length < j for i, j in turns)
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


def _runs(flags: list[int]) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of 1s."""
    out, start = [], None
    for i, f in enumerate(flags + [0]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append((start, i))
            start = None
    return out


def _align(flat: list[int], expanded: list[int]) -> list[int | None]:
    """Index in ``expanded`` (image tokens expanded by the processor) of each token of ``flat``.

    Text tokens are identical in both; only image placeholders differ (one ``<image>`` becomes
    many, or ``<fake_token_around_image><image>...``). Tokens of ``flat`` with no counterpart map
    to None.
    """
    import difflib

    pos: list[int | None] = [None] * len(flat)
    sm = difflib.SequenceMatcher(None, flat, expanded, autojunk=False)
    for a, b, n in sm.get_matching_blocks():
        for k in range(n):
            pos[a + k] = b + k
    return pos


def _insert(enc: dict[str, torch.Tensor], where: list[int], token: int, seq_len: int
            ) -> dict[str, torch.Tensor]:
    """Insert ``token`` (supervised) before each index in ``where`` of every sequence field."""
    out = {}
    for k, v in enc.items():
        if not _is_seq(v, seq_len, batched=False):
            out[k] = v
            continue
        fill = token if k in ("input_ids", "labels") else (1 if k == "attention_mask" else 0)
        parts, prev = [], 0
        for w in sorted(where):
            parts += [v[prev:w], torch.tensor([fill], dtype=v.dtype)]
            prev = w
        parts.append(v[prev:])
        out[k] = torch.cat(parts)
    return out


def _is_seq(v: torch.Tensor, seq_len: int, batched: bool = True) -> bool:
    if batched:
        return v.dim() == 2 and v.shape[0] == 1 and v.shape[1] == seq_len
    return v.dim() == 1 and v.shape[0] == seq_len


class Collator:
    """Pad sequence fields (right), concatenate per-image fields (``pixel_values``,
    ``image_grid_thw``, ...), zero-padding LLaVA-NeXT's per-image patch counts."""

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
                out[k] = _cat_padded(vals)
        return out


def _cat_padded(vals: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-item tensors on dim 0, zero-padding the other dims to the largest.

    LLaVA-NeXT gives each image ``(1, n_patches, 3, H, W)`` with ``n_patches`` depending on the
    image's aspect ratio; its processor zero-pads within one call and the model keeps only the
    real patches (from ``image_sizes``), so padding here is what a batched processor call does.
    """
    if len({v.dim() for v in vals}) == 1 and vals[0].dim() > 1:
        shape = [max(v.shape[d] for v in vals) for d in range(1, vals[0].dim())]
        padded = []
        for v in vals:
            pad: list[int] = []
            for d in reversed(range(1, v.dim())):
                pad += [0, shape[d - 1] - v.shape[d]]
            padded.append(torch.nn.functional.pad(v, pad) if any(pad) else v)
        vals = padded
    return torch.cat(vals, dim=0)
