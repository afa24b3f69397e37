"""Pretrain ``synthpath-clip``: a small transformers ``CLIPModel`` trained with the CLIP contrastive
loss on (synthetic tile, attribute caption) pairs, on CPU, deterministic for its seed.

Data are drawn fresh for every step (``medadapt.synth.captions.sample_pair``): no pair is seen
twice, so there is nothing to overfit. One DataLoader worker renders and tokenizes the next
batches while the main process trains (one torch thread by default: the result is bit-identical
for a seed on a given torch build and thread count).

The output folder is exactly what ``CLIPModel.save_pretrained`` + the tokenizer's and
``CLIPImageProcessor``'s ``save_pretrained`` write, plus ``training.json`` (config, loss curve,
wall time, versions); ``medadapt.backbones.load_backbone(folder)`` loads it like PLIP.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from medadapt.synth.captions import CorpusConfig, corpus_words, sample_pair
from medadapt.synth.tiles import render_tile


@dataclass
class PretrainConfig:
    seed: int = 0
    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 40
    weight_decay: float = 0.1
    logit_scale_lr_mult: float = 10.0  # the temperature learns faster than the weights
    grad_clip: float = 1.0
    threads: int = 1  # torch threads of the training process
    workers: int = 1  # data processes rendering the next batches
    augment: bool = True  # random 90-degree rotations and flips (tissue has no orientation)
    image_size: int = 64
    patch_size: int = 16
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp: int = 512
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_mlp: int = 512
    context_length: int = 32
    embed_dim: int = 128
    log_every: int = 25
    corpus: CorpusConfig = field(default_factory=CorpusConfig)

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        from medadapt.errors import UserError
        d = dict(d or {})
        corpus = d.pop("corpus", None) or {}
        names = {f.name for f in fields(cls)}
        bad = set(d) - names
        if bad:
            raise UserError(f"unknown pretrain config keys {sorted(bad)}; valid: {sorted(names)}")
        cnames = {f.name for f in fields(CorpusConfig)}
        bad = set(corpus) - cnames
        if bad:
            raise UserError(f"unknown corpus config keys {sorted(bad)}; valid: {sorted(cnames)}")
        return cls(**d, corpus=CorpusConfig(**corpus))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PretrainConfig":
        import yaml
        from medadapt.errors import UserError
        p = Path(path)
        if not p.exists():
            raise UserError(f"pretrain config not found: {p}")
        try:
            from medadapt.safeio import load_yaml  # alias / size / depth budget
            data = load_yaml(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
        return cls.from_dict(data.get("pretrain", data))


def clip_config(cfg: PretrainConfig, tok):
    from transformers import CLIPConfig
    return CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=cfg.text_width,
                         intermediate_size=cfg.text_mlp, num_hidden_layers=cfg.text_layers,
                         num_attention_heads=cfg.text_heads,
                         max_position_embeddings=cfg.context_length,
                         # WordPiece: [CLS] text [SEP] [PAD]...; transformers pools at eos = [SEP]
                         bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=cfg.vision_width, intermediate_size=cfg.vision_mlp,
                           num_hidden_layers=cfg.vision_layers,
                           num_attention_heads=cfg.vision_heads, image_size=cfg.image_size,
                           patch_size=cfg.patch_size),
        projection_dim=cfg.embed_dim)


def write_processors(folder: Path, cfg: PretrainConfig):
    """Tokenizer (WordPiece over the corpus words) + CLIPImageProcessor into ``folder``."""
    from transformers import CLIPImageProcessor
    from medadapt.backbones.tiny import IMAGE_MEAN, IMAGE_STD, write_wordpiece_tokenizer
    tok = write_wordpiece_tokenizer(folder, corpus_words(), max_length=cfg.context_length)
    CLIPImageProcessor(size={"shortest_edge": cfg.image_size},
                       crop_size={"height": cfg.image_size, "width": cfg.image_size},
                       image_mean=IMAGE_MEAN, image_std=IMAGE_STD).save_pretrained(folder)
    return tok


class PairBatches(torch.utils.data.Dataset):
    """Batch ``step`` of the corpus: depends only on (seed, step)."""

    def __init__(self, cfg: PretrainConfig, tok):
        from medadapt.backbones.tiny import IMAGE_MEAN, IMAGE_STD
        self.cfg, self.tok = cfg, tok
        self.mean = np.asarray(IMAGE_MEAN, np.float32) * 255
        self.std = np.asarray(IMAGE_STD, np.float32) * 255

    def __len__(self):
        return self.cfg.steps

    def make(self, step: int, n: int | None = None):
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, step, 7])
        n = n or cfg.batch_size
        imgs = np.empty((n, cfg.image_size, cfg.image_size, 3), np.uint8)
        texts = []
        for i in range(n):
            a, domain, text = sample_pair(rng, cfg.corpus)
            t = render_tile(a, int(rng.integers(2**62)), cfg.image_size, domain)
            if cfg.augment:
                t = np.rot90(t, int(rng.integers(4)))
                if rng.random() < 0.5:
                    t = t[:, ::-1]
            imgs[i] = t
            texts.append(text)
        x = (imgs.astype(np.float32) - self.mean) / self.std
        enc = self.tok(texts, padding="longest", truncation=True, max_length=cfg.context_length,
                       return_tensors="pt")
        return {"pixel_values": torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "texts": texts}

    def __getitem__(self, step: int):
        return self.make(step)


def _worker_init(_):
    torch.set_num_threads(1)


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def machine_description() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__}


def pretrain(cfg: PretrainConfig, out: str | Path, log=print) -> dict:
    """Train and save the model into ``out``; returns the training summary."""
    from transformers import CLIPModel
    import transformers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tok = write_processors(out, cfg)
    model = CLIPModel(clip_config(cfg, tok))
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    named = [(n, p) for n, p in model.named_parameters() if n != "logit_scale"]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0},
                             {"params": [model.logit_scale], "weight_decay": 0.0,
                              "lr": cfg.lr * cfg.logit_scale_lr_mult}],
                            lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_at(s, cfg))
    data = PairBatches(cfg, tok)
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, shuffle=False, num_workers=cfg.workers,
        worker_init_fn=_worker_init if cfg.workers else None,
        prefetch_factor=4 if cfg.workers else None, persistent_workers=False)
    log(f"synth pretrain: {n_params / 1e6:.2f}M parameters, {cfg.steps} steps x "
        f"{cfg.batch_size} pairs, seed {cfg.seed}, {cfg.threads} thread(s) + {cfg.workers} "
        f"data worker(s) -> {out}")
    curve = []
    t0, c0 = time.perf_counter(), time.process_time()
    run_loss, run_acc, run_n = 0.0, 0.0, 0
    max_scale = math.log(100.0)
    for step, batch in enumerate(loader):
        outp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     pixel_values=batch["pixel_values"], return_loss=True)
        loss = outp.loss
        if not torch.isfinite(loss):
            from medadapt.errors import TrainingError
            raise TrainingError(f"synth pretrain: non-finite loss at step {step}; lower --lr")
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_scale)
            logits = outp.logits_per_image
            acc = (logits.argmax(1) == torch.arange(logits.shape[0])).float().mean().item()
        run_loss += loss.item()
        run_acc += acc
        run_n += 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            el = time.perf_counter() - t0
            rec = {"step": step + 1, "loss": round(run_loss / run_n, 4),
                   "batch_i2t_acc": round(run_acc / run_n, 4),
                   "logit_scale": round(float(model.logit_scale.detach().exp()), 2),
                   "lr": float(sched.get_last_lr()[0]), "elapsed_s": round(el, 1)}
            curve.append(rec)
            eta = el / (step + 1) * (cfg.steps - step - 1)
            log(f"  step {step + 1:5d}/{cfg.steps}  loss {rec['loss']:.3f}  in-batch acc "
                f"{rec['batch_i2t_acc']:.3f}  scale {rec['logit_scale']:.1f}  "
                f"{el:6.0f}s  eta {eta:4.0f}s")
            run_loss, run_acc, run_n = 0.0, 0.0, 0
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    del loader  # ends the data workers, so that their CPU time is counted below
    import resource
    cpu_workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_workers = cpu_workers.ru_utime + cpu_workers.ru_stime
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    model.eval()
    model.save_pretrained(out)
    summary = {"config": asdict(cfg), "parameters": n_params, "wall_time_s": round(wall, 1),
               "cpu_time_s": {"trainer": round(cpu, 1), "data_workers": round(cpu_workers, 1)},
               "load_average_at_end": load, "curve": curve, "machine": machine_description(),
               "transformers": transformers.__version__}
    from medadapt.safeio import write_text  # temp + swap: a link in the way is refused
    write_text(out / "training.json", json.dumps(summary, indent=1))
    log(f"synth pretrain: done in {wall / 60:.1f} min; saved to {out}")
    return summary


# --------------------------------------------------------------------------------------------
# sanity figures

def _features(backbone, ds, idx, batch_size: int = 256) -> torch.Tensor:
    feats = []
    with torch.inference_mode():
        for i in range(0, len(idx), batch_size):
            x = torch.stack([backbone.preprocess(ds.load_image(j)) for j in idx[i:i + batch_size]])
            feats.append(backbone.encode_image(x).float())
    return torch.cat(feats)


def _lr_probe(xtr, ytr, xv, yv, xte, yte) -> tuple[float, float]:
    """Logistic regression with C chosen on the few-shot validation set (coarse + fine grid)."""
    import warnings
    from sklearn.linear_model import LogisticRegression

    def fit(c):
        clf = LogisticRegression(C=c, max_iter=1000, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(xtr, ytr)
        return clf

    scores = {c: float((fit(c).predict(xv) == yv).mean()) for c in
              [1e-6, 1e-4, 1e-2, 1e0, 1e2, 1e4, 1e6]}
    best = max(scores, key=lambda c: (scores[c], -abs(np.log10(c))))
    for c in np.logspace(np.log10(best) - 1, np.log10(best) + 1, 7):
        scores[float(c)] = float((fit(float(c)).predict(xv) == yv).mean())
    best = max(scores, key=lambda c: (scores[c], -abs(np.log10(c))))
    return float((fit(best).predict(xte) == yte).mean()), float(best)


def sanity(backbone, dataset: str = "synth-crc", shots: int = 16, seeds=(1, 2, 3),
           test_per_class: int | None = None, template: str | None = None,
           options: dict | None = None) -> dict:
    """Zero-shot accuracy from class names and from descriptions, and the ``shots``-shot linear
    probe (mean over ``seeds``), on the test split of a registered synthetic data set."""
    from medadapt.data.fewshot import ids_to_indices, sample_fewshot
    from medadapt.data.sources import load_dataset
    from medadapt.data.texts import TEMPLATES, load_class_texts

    ds = load_dataset(dataset, **(options or {}))
    test = ds.indices("test")
    if test_per_class:
        test = [i for c in range(ds.num_classes) for i in ds.indices("test", [c])[:test_per_class]]
    texts = load_class_texts(ds.classnames, ds.meta.get("template_set", "histopathology"),
                             ds.meta.get("descriptions"))
    template = template or TEMPLATES["histopathology"][0]
    y = ds.labels
    xte = _features(backbone, ds, test)
    yte = y[test]
    name_feats = backbone.encode_texts([template.format(c) for c in ds.classnames])
    desc = []
    for c in ds.classnames:
        f = backbone.encode_texts(texts.descriptions[c]).mean(0)
        desc.append(f / f.norm())
    desc_feats = torch.stack(desc)
    acc_names = float(((xte @ name_feats.T).argmax(1).numpy() == yte).mean())
    acc_desc = float(((xte @ desc_feats.T).argmax(1).numpy() == yte).mean())
    probe, Cs = [], []
    for seed in seeds:
        fs = sample_fewshot(ds, shots, seed)
        tr, va = ids_to_indices(ds, fs["train"]), ids_to_indices(ds, fs["val"])
        acc, C = _lr_probe(_features(backbone, ds, tr).numpy(), y[tr],
                           _features(backbone, ds, va).numpy(), y[va], xte.numpy(), yte)
        probe.append(acc)
        Cs.append(C)
    per_class = {}
    pred_d = (xte @ desc_feats.T).argmax(1).numpy()
    pred_n = (xte @ name_feats.T).argmax(1).numpy()
    for c, name in enumerate(ds.classnames):
        m = yte == c
        per_class[name] = {"names": round(float((pred_n[m] == c).mean()), 4),
                           "descriptions": round(float((pred_d[m] == c).mean()), 4)}
    per_domain = {}
    doms = np.array([ds.records[i].domain for i in test], dtype=object)
    for d in ds.domains():
        m = doms == d
        per_domain[d] = {"names": round(float((pred_n[m] == yte[m]).mean()), 4),
                         "descriptions": round(float((pred_d[m] == yte[m]).mean()), 4)}
    out = {"dataset": dataset, "n_test": len(test), "chance": 1 / ds.num_classes,
            "template": template, "zero_shot_names": acc_names,
            "zero_shot_descriptions": acc_desc, f"linear_probe_{shots}shot": float(np.mean(probe)),
            f"linear_probe_{shots}shot_std": float(np.std(probe)),
            f"linear_probe_{shots}shot_per_seed": probe, "linear_probe_C": Cs,
            "probe_seeds": list(seeds), "per_class": per_class}
    if per_domain:
        out["per_domain"] = per_domain
    return out
