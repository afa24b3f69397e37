"""Supervised fine-tuning of any Hugging Face image-text-to-text model on the ChatML data.

PathInsight (Wu et al., Section 2.2) fine-tunes LLaVA-1.5, Qwen-VL and InternLM-XComposer2 with
full parameters or LoRA, the vision encoder (ViT) trainable in both, at learning rate 1e-5,
batch size 2, warm-up ratio 0.05, 3 epochs, sequence length 2048 -- medadapt's defaults
(:mod:`medadapt.instruct.config`). Here:

* the model and processor load with ``AutoModelForImageTextToText`` / ``AutoProcessor``
  ``from_pretrained`` from a hub id or a local folder (the offline tests take this same path);
* ``method``: ``full`` (vision tower trainable or frozen, projector likewise), ``lora`` (targets,
  rank, alpha, dropout; optionally on the vision tower too) or ``qlora`` (LoRA on a 4-/8-bit
  model; needs ``bitsandbytes`` and a CUDA GPU);
* the loss covers assistant tokens only and image tokens are never truncated
  (:mod:`medadapt.instruct.encode`);
* training runs through ``transformers.Trainer``, so ``accelerate launch`` / DeepSpeed scale it
  to many GPUs with no code here; ``resume`` continues from the last checkpoint;
* the result is ``OUT/final`` (full model, or a peft adapter with ``adapter_config.json``) plus
  the processor, and for LoRA optionally ``OUT/merged`` (:func:`merge_lora`).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from medadapt.errors import TrainingError, UserError
from medadapt.instruct.config import TrainConfig, to_dict
from medadapt.instruct.encode import ChatEncoder, Collator
from medadapt.instruct.records import BadItem, Record, read_records, write_json

VISION_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder", "image_encoder")
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "merger", "mlp1", "connector")
META = "medadapt_instruct.json"


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() \
            else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise UserError(f"dtype must be auto or one of {', '.join(table)}, got {name!r}")
    return table[name]


def _local_or_hub(path: str) -> str:
    p = Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
            raise UserError(f"{p}: not a model folder (no config.json or adapter_config.json)")
        return str(p)
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise UserError(f"model not found: {path} (give a local folder or a hub id like "
                        "llava-hf/llava-1.5-7b-hf)")
    return path


def load_processor(path: str):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(_local_or_hub(path))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the processor of {path}: {str(e).splitlines()[0]}") from None


def load_model(path: str, dtype: torch.dtype = torch.float32, quantization=None):
    """``AutoModelForImageTextToText.from_pretrained`` (hub id or folder), one-line errors."""
    from transformers import AutoModelForImageTextToText

    kw: dict[str, Any] = {"dtype": dtype}
    if quantization is not None:
        kw["quantization_config"] = quantization
    try:
        return AutoModelForImageTextToText.from_pretrained(_local_or_hub(path), **kw)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load {path} as an image-text-to-text model: "
                        f"{str(e).splitlines()[0]}") from None


def _find(model: torch.nn.Module, names: tuple[str, ...]) -> str | None:
    """Shortest module path whose last component is one of ``names``."""
    hits = [n for n, _ in model.named_modules() if n.split(".")[-1] in names]
    return min(hits, key=len) if hits else None


def vision_prefix(model: torch.nn.Module) -> str | None:
    return _find(model, VISION_NAMES)


def lora_targets(model: torch.nn.Module, lora) -> list[str]:
    """Full names of the linear layers LoRA wraps (never the LM head)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vis = vision_prefix(model)
    wanted = None if lora.target_modules in ("all-linear", None) else set(
        [lora.target_modules] if isinstance(lora.target_modules, str) else lora.target_modules)
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or mod is head:
            continue
        if not lora.vision and vis and (name == vis or name.startswith(vis + ".")):
            continue
        if wanted is not None and name.split(".")[-1] not in wanted:
            continue
        out.append(name)
    if not out:
        raise UserError(f"lora.target_modules {lora.target_modules!r} matches no linear layer")
    return out


def _set_trainable(model: torch.nn.Module, prefix: str | None, flag: bool) -> None:
    if prefix is None:
        return
    for p in model.get_submodule(prefix).parameters():
        p.requires_grad_(flag)


def prepare(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """Make the right parameters trainable for ``cfg.method`` (returns a peft model for LoRA)."""
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.freeze_vision:
            vis = vision_prefix(model)
            if vis is None:
                raise UserError("freeze_vision: cannot find the vision tower in this model")
            _set_trainable(model, vis, False)
        if cfg.freeze_projector:
            _set_trainable(model, _find(model, PROJECTOR_NAMES), False)
        return model
    from peft import LoraConfig, get_peft_model

    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    lc = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                    target_modules=lora_targets(model, cfg.lora),
                    modules_to_save=list(cfg.lora.modules_to_save) or None, task_type=None)
    return get_peft_model(model, lc)


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return train, sum(p.numel() for p in model.parameters())


class SFTDataset(torch.utils.data.Dataset):
    """Records encoded on the fly (images are not held in memory)."""

    def __init__(self, records: list[Record], encoder: ChatEncoder):
        self.records, self.encoder = records, encoder

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.encoder.encode(self.records[i])


def precheck(records: list[Record], encoder: ChatEncoder, skip_bad: bool, what: str
             ) -> tuple[list[Record], dict[str, int]]:
    """Encode every record once (progress bar) so bad items stop the run before training."""
    from tqdm import tqdm

    kept, skipped = [], {}
    for r in tqdm(records, desc=f"check {what}", unit="item", disable=None):
        try:
            encoder.encode(r)
            kept.append(r)
        except BadItem as e:
            if not skip_bad:
                raise UserError(f"{e} (use --skip-bad to skip and count such items)") from None
            skipped[e.reason] = skipped.get(e.reason, 0) + 1
    return kept, skipped


def _data_files(data: str | Path) -> tuple[Path, Path | None]:
    p = Path(data)
    if p.is_dir():
        train = p / "train.jsonl"
        if not train.is_file():
            raise UserError(f"{p}: no train.jsonl (build it with `medadapt instruct build`)")
        val = p / "val.jsonl"
        return train, (val if val.is_file() and val.stat().st_size > 0 else None)
    if not p.is_file():
        raise UserError(f"training data not found: {p}")
    return p, None


def _quantization(cfg: TrainConfig, dtype: torch.dtype):
    if cfg.method != "qlora":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("method qlora needs bitsandbytes (pip install bitsandbytes) and a CUDA "
                        "GPU; use method lora or full otherwise") from None
    if not torch.cuda.is_available():
        raise UserError("method qlora needs a CUDA GPU; use method lora or full on this machine")
    from transformers import BitsAndBytesConfig

    if cfg.qlora_bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
                                  llm_int8_skip_modules=["lm_head", *PROJECTOR_NAMES])
    if cfg.qlora_bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head", *PROJECTOR_NAMES])
    raise UserError(f"qlora_bits must be 4 or 8, got {cfg.qlora_bits}")


def _deepspeed(value: Any):
    if value in (None, "", False):
        return None
    if isinstance(value, dict):
        return value
    p = Path(str(value))
    if not p.is_file():
        raise UserError(f"deepspeed config not found: {p}")
    if p.suffix in (".yaml", ".yml"):
        import yaml
        return yaml.safe_load(p.read_text())
    return str(p)


def training_args(cfg: TrainConfig, out: Path, dtype: torch.dtype, has_val: bool):
    from transformers import TrainingArguments

    save = "no" if cfg.save_strategy in (False, None, "none") else str(cfg.save_strategy)
    try:
        return _training_args(TrainingArguments, cfg, out, dtype, has_val, save)
    except ValueError as e:
        raise UserError(f"invalid training option: {str(e).splitlines()[0]}") from None


def _training_args(TrainingArguments, cfg: TrainConfig, out: Path, dtype: torch.dtype,
                   has_val: bool, save: str):
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, logging_steps=cfg.logging_steps,
        logging_first_step=True, save_strategy=save, save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="epoch" if has_val else "no",
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        **_checkpointing_kwargs(TrainingArguments, cfg.gradient_checkpointing),
        remove_unused_columns=False, dataloader_num_workers=cfg.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to=cfg.report_to, deepspeed=_deepspeed(cfg.deepspeed),
    )


def _checkpointing_kwargs(TrainingArguments, on: bool) -> dict[str, Any]:
    """Activation (gradient) checkpointing under the name this transformers version uses."""
    import dataclasses
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: on, f"{key}_kwargs": {"use_reentrant": False}} if on else {}


def train(cfg: TrainConfig, model_path: str, data: str | Path, out: str | Path,
          resume: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune ``model_path`` on ``data`` (a built folder or a JSONL) into ``out``."""
    from transformers import Trainer, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    if cfg.method not in ("full", "lora", "qlora"):
        raise UserError(f"method must be full, lora or qlora, got {cfg.method!r}")
    out = Path(out)
    if (out / "final").exists() and not (resume or overwrite):
        raise UserError(f"{out} already holds a trained model; pass --resume, --overwrite or another --out")
    if overwrite and out.exists() and not resume:
        shutil.rmtree(out)
    ckpt = None
    if resume:
        ckpt = get_last_checkpoint(str(out / "checkpoints")) if resume == "auto" and \
            (out / "checkpoints").is_dir() else (None if resume == "auto" else resume)
        if ckpt is not None and not Path(ckpt).is_dir():
            raise UserError(f"checkpoint to resume from not found: {ckpt}")
    train_file, val_file = _data_files(data)
    skipped: dict[str, int] = {}
    train_recs = read_records(train_file, skip_bad=cfg.skip_bad, skipped=skipped)
    val_recs = read_records(val_file, skip_bad=cfg.skip_bad, skipped=skipped) \
        if val_file is not None and cfg.eval_val else []
    if not train_recs:
        raise UserError(f"{train_file}: no training items")
    set_seed(cfg.seed)
    dtype = resolve_dtype(cfg.dtype)
    processor = load_processor(model_path)
    encoder = ChatEncoder(processor, max_length=cfg.max_length, truncation=cfg.truncation)
    if cfg.precheck:
        train_recs, sk = precheck(train_recs, encoder, cfg.skip_bad, "train")
        for k, v in sk.items():
            skipped[k] = skipped.get(k, 0) + v
        if val_recs:
            val_recs, sk = precheck(val_recs, encoder, cfg.skip_bad, "val")
            for k, v in sk.items():
                skipped[k] = skipped.get(k, 0) + v
    if not train_recs:
        raise UserError(f"{train_file}: no training items left after skipping bad ones ({skipped})")
    model = load_model(model_path, dtype, _quantization(cfg, dtype))
    model = prepare(model, cfg)
    n_train, n_total = count_params(model)
    tok = getattr(processor, "tokenizer", processor)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    args = training_args(cfg, out, dtype, bool(val_recs))
    trainer = Trainer(model=model, args=args, train_dataset=SFTDataset(train_recs, encoder),
                      eval_dataset=SFTDataset(val_recs, encoder) if val_recs else None,
                      data_collator=Collator(pad), processing_class=processor)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=ckpt)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if any(not math.isfinite(x) for x in losses):
        raise TrainingError(f"non-finite training loss ({losses[-1]}); lower learning_rate or use "
                            "dtype float32")
    final = out / "final"
    trainer.save_model(str(final))
    summary: dict[str, Any] = {
        "method": cfg.method, "base_model": model_path, "data": str(train_file),
        "n_train": len(train_recs), "n_val": len(val_recs), "skipped": skipped,
        "n_trainable_params": n_train, "n_params": n_total, "losses": losses,
        "val_losses": [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h],
        "train_loss": float(result.training_loss), "steps": trainer.state.global_step,
        "train_seconds": round(time.time() - t0, 2), "final": str(final), "merged": None,
        "resumed_from": ckpt, "config": to_dict(cfg),
    }
    if trainer.is_world_process_zero():
        processor.save_pretrained(final)
        write_json(final / META, {"method": cfg.method, "base_model": model_path})
        if cfg.method in ("lora", "qlora") and cfg.merge_lora:
            summary["merged"] = str(merge_lora(final, out / "merged"))
        write_json(out / "train_summary.json", summary)
    return summary


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_for_inference(path: str, dtype: str = "auto", merge: bool = True):
    """Load a full model folder / hub id, or a peft adapter folder on top of its base model.

    Returns ``(model, processor)`` with the model in eval mode; adapters are merged when ``merge``.
    """
    from peft import PeftModel

    dt = resolve_dtype(dtype)
    if is_adapter(path):
        base_id = json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base_id:
            raise UserError(f"{path}/adapter_config.json names no base_model_name_or_path")
        base = load_model(base_id, dt)
        model = PeftModel.from_pretrained(base, str(path))
        if merge:
            model = model.merge_and_unload()
        processor = load_processor(path if (Path(path) / "processor_config.json").exists()
                                   or (Path(path) / "tokenizer_config.json").exists() else base_id)
    else:
        model, processor = load_model(path, dt), load_processor(path)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), processor


def merge_lora(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge a LoRA adapter into its base model and save a plain model folder (+ processor)."""
    model, processor = load_for_inference(str(adapter_dir), dtype="float32", merge=True)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
