"""One training loop for every trainable method.

SGD or AdamW (``eps`` a setting), cosine schedule with warm-up stepped per epoch exactly as
Dassl's ``ConstantWarmupScheduler`` / ``LinearWarmupScheduler`` around ``CosineAnnealingLR``
(``sched_unit: epoch``, the trainer of CoOp and every method built on it) or per optimiser step
(``sched_unit: step``: Tip-Adapter-F, CLIP-LoRA), optional gradient clipping (off by default: no
reference trainer clips), the backbone in eval or train mode during training (``backbone_mode``:
the Dassl trainers of MaPLe / PromptSRC / CoPrompt / BiomedCoOp call ``train()`` on the whole
model, CoOp's on the prompt learner only), mixed precision (``amp`` / ``amp_dtype``: fp16 with
gradient scaling on CUDA by default, bf16 on any device), checkpoints with resume, a progress bar,
and a clear stop on a non-finite loss. Frozen-feature methods train on cached features, by
default on pre-encoded augmented views (one view per item and epoch, see :func:`view_schedule`);
methods with ``needs_images`` get pixels through the backbone's train transform.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

# TRAIN_DEFAULTS (the engine settings, config section ``train``) live in medadapt.config
from medadapt.config import ENUMS, TRAIN_DEFAULTS  # noqa: F401 (TRAIN_DEFAULTS re-exported)
from medadapt.data.dataset import DataSet
from medadapt.errors import TrainingError
from medadapt.methods.base import Batch, Method



AMP_DTYPES = ENUMS["train.amp_dtype"]  # auto | fp16 | bf16, the one list the schema checks too


@dataclass
class Split:
    """Items of one split as the method sees them."""

    ds: DataSet
    indices: list[int]
    labels: torch.Tensor  # in the method's class index space
    features: torch.Tensor | None = None  # [N, D] raw features of the eval transform
    views: torch.Tensor | None = None  # [V, N, D] augmented views (optional)
    concepts: list[tuple[str, ...]] = field(default_factory=list)
    # data.fresh_views: pass k -> [N, D] raw features of a fresh augmented pass over the items
    # (deterministic per run seed, pass and item; encoded once, cached on disk)
    fresh: Callable[[int], torch.Tensor] | None = None
    fresh_count: int = 0  # data.augment_views under fresh_views: passes a method averages
    # encode passes ahead, all at once (each image decoded once); a no-op without fresh passes
    prefetch: Callable[[list[int]], None] | None = None

    def __len__(self):
        return len(self.indices)

    @property
    def n_views(self) -> int:
        """Augmented passes a method that averages views (Tip-Adapter's cache) should use."""
        if self.fresh is not None:
            return self.fresh_count
        return 0 if self.views is None else len(self.views)

    def prefetch_passes(self, ks) -> None:
        if self.fresh is not None and self.prefetch is not None:
            self.prefetch(list(ks))

    def augmented(self, k: int) -> torch.Tensor:
        """Raw features of augmented pass ``k``: a fresh pass (``fresh_views``), else cached view
        ``k mod V``; a ``UserError`` when the split has neither."""
        if self.fresh is not None:
            return self.fresh(k)
        if self.views is not None and len(self.views):
            return self.views[k % len(self.views)]
        from medadapt.errors import UserError
        raise UserError("this method needs augmented training features: set data.fresh_views: "
                        "true (a fresh pass per epoch) or data.augment_views >= 1")


class _PixelDS(torch.utils.data.Dataset):
    def __init__(self, split: Split, transform):
        self.split, self.t = split, transform

    def __len__(self):
        return len(self.split)

    def __getitem__(self, j):
        return self.t(self.split.ds.load_image(self.split.indices[j])), j


def lr_at(step: int, total: int, warmup: int, cfg: dict) -> float:
    """Per-step schedule (``sched_unit: step``): learning rate at ``step`` (0-based), warm-up then
    cosine to zero over the remaining steps (as ``CosineAnnealingLR(T_max=steps)`` stepped per
    iteration, Tip-Adapter-F / CLIP-LoRA)."""
    base = cfg["lr"]
    if step < warmup:
        if cfg["warmup"] == "linear":
            return base * (step + 1) / warmup
        return cfg["warmup_lr"]
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * t))


def dassl_lr(epoch: int, max_epoch: int, cfg: dict) -> float:
    """Per-epoch schedule (``sched_unit: epoch``): the learning rate of 0-based ``epoch`` exactly as
    Dassl's ``build_lr_scheduler`` (cosine, ``WARMUP_RECOUNT: True``) stepped once per epoch.

    ``CosineAnnealingLR(T_max=max_epoch)`` wrapped in a warm-up scheduler of ``W`` epochs: epochs
    ``0..W-1`` run at the warm-up rate (constant: ``warmup_lr``; linear: ``warmup_lr`` at epoch 0,
    then ``lr · e / W``), and epoch ``e ≥ W`` at ``lr/2 · (1 + cos(π (e − W) / max_epoch))``: the
    cosine starts after the warm-up and is not rescaled, so the last epoch's rate is not zero
    (Dassl.pytorch ``dassl/optim/lr_scheduler.py``)."""
    base, w = cfg["lr"], int(cfg.get("warmup_epochs") or 0)
    if epoch < w:
        if cfg.get("warmup", "constant") == "linear":
            return cfg["warmup_lr"] if epoch == 0 else base * epoch / w
        return cfg["warmup_lr"]
    return 0.5 * base * (1 + math.cos(math.pi * (epoch - w) / max(1, max_epoch)))


def view_schedule(n_items: int, n_views: int, epoch: int, seed: int) -> torch.Tensor:
    """Which pre-encoded augmented view (0..V-1) each item uses in ``epoch``.

    The reference trainers draw a fresh random crop of every image each epoch; with a cache of V
    views, each item walks through its own random permutation of the V views, one per epoch, and
    a new permutation every V epochs. So an item never sees the same view twice within V epochs,
    every view is used, and the choice depends only on (seed, epoch) - not on batch order."""
    cycle, pos = divmod(epoch, n_views)
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * cycle + 17)
    perms = torch.rand(n_items, n_views, generator=g).argsort(dim=1)
    return perms[:, pos]


class Engine:
    def __init__(self, cfg: dict, device: str = "cpu", run_dir: str | Path | None = None,
                 progress: bool = True, log=print, seed: int = 0):
        self.cfg = {**TRAIN_DEFAULTS, **cfg}
        self.device = torch.device(device)
        self.run_dir = Path(run_dir) if run_dir else None
        self.progress = progress
        self.log = log
        self.seed = seed
        self.resume = False
        # an experiment tracker (medadapt.engine.trackers.Tracker) or None: per-step loss and
        # learning rate, per-epoch loss and validation accuracy
        self.tracker = None
        self._first_draw = 0
        self._method_lr = None

    # -- batches ---------------------------------------------------------------------------------
    def steps_per_epoch(self, n: int) -> int:
        """Training steps per epoch: Dassl's loader drops the last incomplete batch
        (``drop_last=is_train and len(data_source) >= batch_size``)."""
        bs = self.cfg["batch_size"]
        if self.cfg["drop_last"] and n >= bs:
            return n // bs
        return max(1, math.ceil(n / bs))

    def batches(self, method: Method, split: Split, shuffle: bool, epoch: int = 0, train=True,
                draw: int | None = None):
        """Batches of one pass; a training pass of a split with fresh augmented passes
        (``data.fresh_views``) uses pass ``draw`` (default: ``epoch``)."""
        bs = self.cfg["batch_size"]
        n = len(split)
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
        if train and shuffle and self.cfg["drop_last"] and n >= bs:
            order = order[:n // bs * bs]
        if method.needs_images:
            t = method.backbone.train_preprocess if train else method.backbone.preprocess
            ds = _PixelDS(split, t)
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(ds, order.tolist()), batch_size=bs,
                num_workers=self.cfg["workers"])
            for xs, js in loader:
                yield self._batch(split, js, images=xs)
            return
        feats = split.features
        if train and split.fresh is not None:
            # a fresh augmented pass per epoch, as the reference loops draw (exact)
            feats = split.fresh(epoch if draw is None else draw)
        elif train and split.views is not None and len(split.views):
            # one pre-encoded augmented view per item and epoch (the un-augmented view is the
            # eval transform's, which the references never train on)
            feats = split.views[view_schedule(n, len(split.views), epoch, self.seed), torch.arange(n)]
        for s in range(0, len(order), bs):
            js = order[s:s + bs]
            yield self._batch(split, js, features=feats[js])

    def _batch(self, split: Split, js, features=None, images=None) -> Batch:
        js = torch.as_tensor(js)
        return Batch(labels=split.labels[js].to(self.device),
                     features=None if features is None else features.to(self.device),
                     images=None if images is None else images.to(self.device),
                     index=torch.as_tensor([split.indices[j] for j in js.tolist()]),
                     concepts=[split.concepts[j] for j in js.tolist()] if split.concepts else None)

    # -- training --------------------------------------------------------------------------------
    def _optimizer(self, params):
        c = self.cfg
        if c["optimizer"] == "sgd":
            return torch.optim.SGD(params, lr=c["lr"], momentum=c["momentum"],
                                   weight_decay=c["weight_decay"])
        if c["optimizer"] == "adamw":
            return torch.optim.AdamW(params, lr=c["lr"], weight_decay=c["weight_decay"],
                                     eps=float(c["eps"]))
        from medadapt.errors import UserError
        raise UserError(f"unknown optimizer {c['optimizer']!r}; valid: sgd, adamw")

    def _check(self) -> None:
        from medadapt.errors import UserError
        c = self.cfg
        for key, valid in (("sched_unit", ("epoch", "step")), ("backbone_mode", ("eval", "train")),
                           ("warmup", ("constant", "linear"))):
            if c[key] not in valid:
                raise UserError(f"train.{key} must be one of {', '.join(valid)}, got {c[key]!r}")

    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype of training steps (None: fp32). ``train.amp`` false: None;
        ``train.amp_dtype`` auto: fp16 on CUDA (with gradient scaling), None elsewhere; fp16 / bf16:
        that dtype on any device (bf16 autocast runs on CPU too, so CI exercises the AMP path)."""
        c = self.cfg
        kind = c.get("amp_dtype", "auto")
        if kind not in AMP_DTYPES:
            from medadapt.errors import UserError
            raise UserError(f"train.amp_dtype must be one of {', '.join(AMP_DTYPES)}, got {kind!r}")
        if not c["amp"]:
            return None
        if kind == "auto":
            return torch.float16 if self.device.type == "cuda" else None
        return torch.float16 if kind == "fp16" else torch.bfloat16

    def lr(self, epoch: int, step: int, total: int, warm: int) -> float:
        """The learning rate of a step (``step`` counts from 0 over the whole run); a method's own
        schedule (``Method.lr_schedule``) when it has one."""
        if self._method_lr is not None:
            return self._method_lr(epoch, step)
        if self.cfg["sched_unit"] == "epoch":
            return dassl_lr(epoch, self.cfg["epochs"], self.cfg)
        return lr_at(step, total, warm, self.cfg)

    def train(self, method: Method, train: Split, val: Split | None = None,
              first_draw: int = 0) -> dict:
        """Train ``method``; with fresh augmented passes, epoch ``e`` uses pass
        ``first_draw + e``."""
        c = self.cfg
        self._check()
        self._first_draw = int(first_draw)
        if not method.needs_images and hasattr(train, "prefetch_passes"):
            train.prefetch_passes(range(self._first_draw, self._first_draw + int(c["epochs"])))
        sched = getattr(method, "lr_schedule", None)
        self._method_lr = sched(c) if callable(sched) else None
        params = [p for p in method.parameters() if p.requires_grad]
        if not params:
            return {"epochs": 0}
        opt = self._optimizer(params)
        steps_per_epoch = self.steps_per_epoch(len(train))
        total = c["epochs"] * steps_per_epoch
        warm = min(c["warmup_epochs"] * steps_per_epoch, max(total - 1, 0))
        amp_dtype = self.amp_dtype()
        # gradient scaling for fp16 only (bf16 has fp32's exponent range)
        scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype is torch.float16)
        start_epoch, history = 0, []
        ckpt = self.run_dir / "checkpoint.safetensors" if self.run_dir and c["checkpoint"] else None
        state_path = ckpt.with_name("checkpoint_state.pt") if ckpt else None
        if ckpt and self.resume and ckpt.exists() and state_path.exists():
            try:  # a damaged or hostile checkpoint (weights_only refuses any pickle): one line
                method.load_learned_state_dict(load_file(str(ckpt)))
                st = torch.load(state_path, weights_only=True)  # tensors and numbers only
                opt.load_state_dict(st["optimizer"])
                start_epoch, history = int(st["epoch"]), list(st["history"])
            except Exception as e:
                from medadapt.errors import UserError
                why = "it holds pickled Python objects, which medadapt never loads" \
                    if "Weights only load failed" in str(e) else \
                    f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                raise UserError(f"--resume: the checkpoint in {self.run_dir} cannot be read safely "
                                f"({why}); "
                                "delete checkpoint.safetensors and checkpoint_state.pt to restart "
                                "that seed") from None
            self.log(f"resumed from epoch {start_epoch}")
        t0 = time.time()
        bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, desc=f"training {method.name}",
                   disable=not self.progress, leave=False)
        set_backbone_mode(method, c["backbone_mode"] == "train")
        method.train()
        try:
            history = self._epochs(method, train, val, opt, scaler, amp_dtype, params, start_epoch,
                                   history, steps_per_epoch, total, warm, bar, ckpt, state_path)
        finally:
            set_backbone_mode(method, False)
        bar.close()
        method.eval()
        info = {"epochs": c["epochs"], "history": history, "train_loop_seconds": time.time() - t0}
        if val is not None and len(val):
            info["val_accuracy"] = self.accuracy(method, val)
            if self.tracker is not None and not (history and "val_accuracy" in history[-1]
                                                 and history[-1]["epoch"] == c["epochs"]):
                self.tracker.log_scalars({"val/accuracy": info["val_accuracy"]}, c["epochs"])
        return info

    def _epochs(self, method, train, val, opt, scaler, amp_dtype, params, start_epoch, history,
                steps_per_epoch, total, warm, bar, ckpt, state_path) -> list:
        c = self.cfg
        step = start_epoch * steps_per_epoch
        for epoch in range(start_epoch, c["epochs"]):
            losses = []
            for batch in self.batches(method, train, shuffle=True, epoch=epoch,
                                      draw=self._first_draw + epoch):
                for g in opt.param_groups:
                    g["lr"] = self.lr(epoch, step, total, warm)
                with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss, parts = method.loss(batch)
                if not torch.isfinite(loss):
                    bar.close()
                    raise TrainingError(
                        f"{method.name}: loss became {float(loss.detach())} at epoch {epoch + 1}, step "
                        f"{step + 1} ({parts}); lower the learning rate (--set train.lr=...)")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if c["grad_clip"]:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, c["grad_clip"])
                scaler.step(opt)
                scaler.update()
                losses.append(float(loss.detach()))
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if self.tracker is not None:
                    self.tracker.log_scalars({"train/loss": losses[-1],
                                              "train/lr": opt.param_groups[0]["lr"]}, step)
            rec = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None}
            if val is not None and len(val) and c["eval_every"] and (epoch + 1) % c["eval_every"] == 0:
                rec["val_accuracy"] = self.accuracy(method, val)
                method.train()
            history.append(rec)
            if self.tracker is not None:
                self.tracker.log_scalars({"train/epoch_loss": rec["loss"],
                                          "val/accuracy": rec.get("val_accuracy")}, epoch + 1)
            every = c["checkpoint_every"] or max(1, c["epochs"] // 20)
            if ckpt and ((epoch + 1) % every == 0 or epoch + 1 == c["epochs"]):
                self._save_ckpt(method, opt, epoch + 1, history, ckpt, state_path)
        return history

    def _save_ckpt(self, method, opt, epoch, history, ckpt, state_path):
        from medadapt.safeio import replacing  # a fresh temp file: never through a planted link
        with replacing(ckpt) as tmp:
            save_file(method.learned_state_dict(), tmp)
        with replacing(state_path) as tmp2:
            torch.save({"optimizer": opt.state_dict(), "epoch": epoch, "history": history}, tmp2)

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, method: Method, split: Split) -> torch.Tensor:
        method.eval()
        out = []
        for batch in self.batches(method, split, shuffle=False, train=False):
            out.append(method(batch).float().cpu())
        return torch.cat(out) if out else torch.empty(0, len(method.texts.classnames))

    def accuracy(self, method: Method, split: Split) -> float:
        lg = self.logits(method, split)
        return float((lg.argmax(1) == split.labels).float().mean()) if len(lg) else float("nan")


def set_backbone_mode(method: Method, train: bool) -> None:
    """Let every backbone inside ``method`` follow ``method.train()`` (``train=True``: dropout of
    e.g. BiomedCLIP's BERT active, as in references that call ``train()`` on the whole model) or
    keep it in eval mode (``False``, the default)."""
    from medadapt.backbones.base import Backbone
    for m in method.modules():
        if isinstance(m, Backbone):
            m.allow_train_mode = bool(train)
