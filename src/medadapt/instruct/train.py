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
import os
import shutil
import tempfile
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
# what `instruct train` writes into --out (--overwrite replaces only folders holding nothing else)
TRAIN_OUTPUTS = frozenset({"checkpoints", "final", "merged", "train_summary.json"})


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
        from medadapt.safeio import refuse_remote_code
        refuse_remote_code(p)  # a folder asking to import its own Python code is refused
        return str(p)
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise UserError(f"model not found: {path} (give a local folder or a hub id like "
                        "llava-hf/llava-1.5-7b-hf)")
    return path


def load_processor(path: str):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(_local_or_hub(path), trust_remote_code=False)
    except (OSError, ValueError) as e:
        _refuse_code_error(path, e)
        raise UserError(f"cannot load the processor of {path}: {str(e).splitlines()[0]}") from None


def load_model(path: str, dtype: torch.dtype = torch.float32, quantization=None):
    """``AutoModelForImageTextToText.from_pretrained`` (hub id or folder), one-line errors."""
    from transformers import AutoModelForImageTextToText

    kw: dict[str, Any] = {_dtype_kwarg(): dtype, "trust_remote_code": False}
    if quantization is not None:
        kw["quantization_config"] = quantization
    try:
        return AutoModelForImageTextToText.from_pretrained(_local_or_hub(path), **kw)
    except (OSError, ValueError) as e:
        _refuse_code_error(path, e)
        raise UserError(f"cannot load {path} as an image-text-to-text model: "
                        f"{str(e).splitlines()[0]}") from None


def _refuse_code_error(path: str, e: Exception) -> None:
    """transformers refused a repository with custom code (we pass trust_remote_code=False)."""
    if "trust_remote_code" in str(e) or "custom code" in str(e):
        raise UserError(f"{path} asks to run Python code shipped with the model (custom code, "
                        "trust_remote_code); medadapt never runs code from model folders or the hub "
                        "(no model it supports needs it); use a model with built-in transformers "
                        "support") from None


def _dtype_kwarg() -> str:
    """``dtype=`` (transformers >= 4.56) or ``torch_dtype=`` (older releases) for ``from_pretrained``."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


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
        if set(name.split(".")) & set(lora.modules_to_save):  # trained fully, no LoRA inside
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
        if cfg.freeze_llm:  # stage 1 (LLaVA "pretrain"): everything but vision tower and projector
            keep = [x for x in (vision_prefix(model), _find(model, PROJECTOR_NAMES)) if x]
            if _find(model, PROJECTOR_NAMES) is None:
                raise UserError("freeze_llm: cannot find the projector in this model")
            for name, p in model.named_parameters():
                if not any(name == k or name.startswith(k + ".") for k in keep):
                    p.requires_grad_(False)
        if cfg.freeze_vision:
            vis = vision_prefix(model)
            if vis is None:
                raise UserError("freeze_vision: cannot find the vision tower in this model")
            _set_trainable(model, vis, False)
        if cfg.freeze_projector:
            _set_trainable(model, _find(model, PROJECTOR_NAMES), False)
        if not any(p.requires_grad for p in model.parameters()):
            raise UserError("nothing left to train: freeze_llm, freeze_vision and freeze_projector are all set")
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

    def __init__(self, records: list[Record], encoder: ChatEncoder, lengths: list[int] | None = None):
        self.records, self.encoder = records, encoder
        # token counts for group_by_length (from precheck), else a character-based estimate
        self.lengths = lengths or [sum(len(m["content"]) for m in r.messages) // 4 + 1 for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.encoder.encode(self.records[i])


def precheck(records: list[Record], encoder: ChatEncoder, skip_bad: bool, what: str,
             info: dict[str, int] | None = None) -> tuple[list[Record], dict[str, int], list[int]]:
    """Encode every record once (progress bar) so bad items stop the run before training.

    Returns the kept records, skipped counts by reason and each kept record's token count;
    truncation counts go into ``info`` (see :meth:`ChatEncoder.encode`).
    """
    from tqdm import tqdm

    kept, skipped, lengths = [], {}, []
    for r in tqdm(records, desc=f"check {what}", unit="item", disable=None):
        try:
            lengths.append(int(encoder.encode(r, info)["input_ids"].shape[0]))
            kept.append(r)
        except BadItem as e:
            if not skip_bad:
                raise UserError(f"{e} (use --skip-bad to skip and count such items)") from None
            skipped[e.reason] = skipped.get(e.reason, 0) + 1
    return kept, skipped, lengths


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
        from medadapt.safeio import safe_yaml
        return safe_yaml(p.read_text(), str(p))
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
        max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
        **_version_kwargs(TrainingArguments, cfg),
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
        **_cpu_kwargs(TrainingArguments, dtype),
    )


def _cpu_kwargs(TrainingArguments, dtype: torch.dtype) -> dict[str, Any]:
    """bf16 without an accelerator: transformers refuses ``bf16=True`` ("Your setup doesn't
    support bf16/gpu") unless ``use_cpu`` is set, although CPU bf16 autocast works; set it then."""
    import dataclasses
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    mps = getattr(torch.backends, "mps", None)
    accel = torch.cuda.is_available() or bool(mps and mps.is_available()) or \
        bool(getattr(torch, "xpu", None) and torch.xpu.is_available())
    if dtype == torch.bfloat16 and not accel and "use_cpu" in names:
        return {"use_cpu": True}
    return {}


def _version_kwargs(TrainingArguments, cfg: TrainConfig) -> dict[str, Any]:
    """Warm-up ratio and length-grouped batching under the names this transformers release uses.

    transformers 5 dropped ``warmup_ratio`` (a float ``warmup_steps`` < 1 is a ratio there) and
    ``group_by_length`` (now ``train_sampling_strategy="group_by_length"``); on 4.x a float
    ``warmup_steps`` would silently mean 0 steps.
    """
    import dataclasses
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    if not 0 <= cfg.warmup_ratio < 1:
        raise UserError(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    kw: dict[str, Any] = ({"warmup_ratio": cfg.warmup_ratio} if "warmup_ratio" in names
                          else {"warmup_steps": cfg.warmup_ratio})
    if cfg.group_by_length:
        kw.update({"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in names
                  else {"group_by_length": True})
    return kw


def _checkpointing_kwargs(TrainingArguments, on: bool) -> dict[str, Any]:
    """Activation (gradient) checkpointing under the name this transformers version uses."""
    import dataclasses
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: on, f"{key}_kwargs": {"use_reentrant": False}} if on else {}


def _trainer_class():
    """``transformers.Trainer`` with LLaVA's two additions: a separate projector learning rate
    (LLaVA ``LLaVATrainer.create_optimizer``: ``mm_projector_lr``) and length-grouped batches from
    known token counts (no second encoding pass over the data)."""
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class SFTTrainer(Trainer):
        projector_lr: float | None = None

        def create_optimizer(self, *args, **kwargs):
            if self.projector_lr is None or self.optimizer is not None:
                return super().create_optimizer(*args, **kwargs)
            model = self.model
            decay = set(self.get_decay_parameter_names(model))
            groups: dict[tuple[bool, bool], list] = {}
            for n, p in model.named_parameters():
                if p.requires_grad:
                    proj = any(part in PROJECTOR_NAMES for part in n.split("."))
                    groups.setdefault((proj, n in decay), []).append(p)
            params = [{"params": ps, "weight_decay": self.args.weight_decay if dec else 0.0,
                       **({"lr": self.projector_lr} if proj else {})}
                      for (proj, dec), ps in groups.items()]
            cls, kw = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = cls(params, **kw)
            return self.optimizer

        def _get_train_sampler(self, *args, **kwargs):
            ds = args[0] if args else kwargs.get("train_dataset", self.train_dataset)
            ds = ds if ds is not None else self.train_dataset
            strategy = getattr(self.args, "train_sampling_strategy", None)
            grouped = strategy == "group_by_length" or getattr(self.args, "group_by_length", False)
            if grouped and hasattr(ds, "lengths"):
                return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                            dataset=ds, lengths=ds.lengths)
            return super()._get_train_sampler(*args, **kwargs)

    return SFTTrainer


def base_model_id(path: str) -> str:
    """A local model folder as an absolute path (an adapter must find its base from anywhere),
    a hub id unchanged."""
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else path


def train(cfg: TrainConfig, model_path: str, data: str | Path, out: str | Path,
          resume: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune ``model_path`` on ``data`` (a built folder or a JSONL) into ``out``."""
    import warnings

    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    if cfg.method not in ("full", "lora", "qlora"):
        raise UserError(f"method must be full, lora or qlora, got {cfg.method!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.is_dir():  # a planted link (final -> ~/...) would send the model files elsewhere
        from medadapt.safeio import check_no_links
        for e in sorted(TRAIN_OUTPUTS):
            check_no_links(out, out / e)
        if (out / "checkpoints").is_dir():
            for e in (out / "checkpoints").iterdir():
                check_no_links(out, e)
    if (out / "final").exists() and not (resume or overwrite):
        raise UserError(f"{out} already holds a trained model; pass --resume, --overwrite or another --out")
    if overwrite and not resume and out.is_dir() and any(out.iterdir()):
        # replace only what an earlier `instruct train` wrote, and only once this run succeeded
        foreign = sorted(e.name for e in out.iterdir() if e.name not in TRAIN_OUTPUTS)
        if foreign:
            raise UserError(f"--overwrite refused: {out} holds files `instruct train` did not write "
                            f"({', '.join(foreign[:4])}{' ...' if len(foreign) > 4 else ''}); move "
                            "them out first or choose another --out; nothing was deleted")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        for e in list(out.iterdir()):
            os.replace(e, old / e.name)
        try:
            res = train(cfg, model_path, data, out, resume=None, overwrite=False)
        except BaseException:
            for e in list(out.iterdir()):  # the failed run's files, then the old run back
                shutil.rmtree(e) if e.is_dir() and not e.is_symlink() else e.unlink()
            for e in list(old.iterdir()):
                os.replace(e, out / e.name)
            old.rmdir()
            raise
        shutil.rmtree(old, ignore_errors=True)
        return res
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
    model_path = base_model_id(model_path)
    dtype = resolve_dtype(cfg.dtype)
    processor = load_processor(model_path)
    encoder = ChatEncoder(processor, max_length=cfg.max_length, truncation=cfg.truncation)
    truncation: dict[str, int] = {"truncated": 0, "turns_dropped": 0, "turns_cut": 0, "eos_inserted": 0}
    lengths = None
    if cfg.precheck:
        train_recs, sk, lengths = precheck(train_recs, encoder, cfg.skip_bad, "train", truncation)
        for k, v in sk.items():
            skipped[k] = skipped.get(k, 0) + v
        if val_recs:
            val_recs, sk, _ = precheck(val_recs, encoder, cfg.skip_bad, "val")
            for k, v in sk.items():
                skipped[k] = skipped.get(k, 0) + v
        if truncation["truncated"]:
            msg = (f"{truncation['truncated']} of {len(train_recs)} training items exceed max_length "
                   f"{cfg.max_length} and are cut: {truncation['turns_dropped']} assistant turn(s) "
                   f"dropped, {truncation['turns_cut']} cut short (raise max_length to keep them)")
            warnings.warn(msg, stacklevel=2)
            print(f"warning: {msg}")
    if not train_recs:
        raise UserError(f"{train_file}: no training items left after skipping bad ones ({skipped})")
    model = load_model(model_path, dtype, _quantization(cfg, dtype))
    model = prepare(model, cfg)
    n_train, n_total = count_params(model)
    tok = getattr(processor, "tokenizer", processor)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    args = training_args(cfg, out, dtype, bool(val_recs))
    trainer = _trainer_class()(model=model, args=args, train_dataset=SFTDataset(train_recs, encoder, lengths),
                      eval_dataset=SFTDataset(val_recs, encoder) if val_recs else None,
                      data_collator=Collator(pad), processing_class=processor)
    trainer.projector_lr = cfg.projector_lr
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
        "truncation": truncation if cfg.precheck else None,
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
        from medadapt.safeio import refuse_remote_code
        refuse_remote_code(path, "adapter folder")
        try:
            acfg = json.loads((Path(path) / "adapter_config.json").read_text())
        except (ValueError, RecursionError, OSError) as e:
            raise UserError(f"{path}/adapter_config.json: not valid JSON ({type(e).__name__})") from None
        base_id = acfg.get("base_model_name_or_path") if isinstance(acfg, dict) else None
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
