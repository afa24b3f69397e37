"""One prepared check that every path of medadapt runs on a GPU, and the table-level speed.

One command, no network (sockets refused, Hugging Face offline), random-weight replicas only:

    python benchmarks/gpu_check.py --device cuda --size full --out benchmarks/results/gpu_check
    python benchmarks/gpu_check.py --device cpu --size reduced --out /tmp/gpu_check   # CPU rehearsal

Writes ``DIR/gpu_check.json`` (everything) and ``DIR/gpu_check.md`` (a short summary table).
Designed for one H100 in under 8 minutes: every section has a wall-time cap (``--caps``, seconds,
scaled by ``--cap-scale``); what does not fit is recorded as ``"skipped": "budget"``, never
silently dropped. Sections (``--sections``, comma-separated, default all):

1. ``methods``: every registered method (``medadapt.methods`` registry), seed 1, 2 shots of a
   stand-in data set (4 colour-tinted noise classes with concepts, descriptions and a hierarchy,
   so SCALE and the description-teacher methods run too), on a random-weight replica of
   BiomedCLIP (open_clip: timm ViT-B/16 + the carried BiomedBERT config, the published
   ``open_clip_config.json``) and of PLIP (transformers ``CLIPModel`` ViT-B/32, CLIP's published
   defaults), end to end through ``medadapt fit``'s runner in fp32 and under AMP fp16 and bf16
   (``train.amp`` + ``train.amp_dtype``, features with ``data.precision``); the first training
   losses of fp32 and AMP must agree within ``TOL`` (relative, stated in the JSON), no NaN,
   peak GPU memory per run (``torch.cuda.max_memory_allocated``; null on CPU).
2. ``features``: images/s of ``FeatureCache.encode`` vs a bare batched forward of the same model
   (load, transform, stack, ``encode_image``), fp32 and fp16 (bf16 on CPU), plus the forward on
   pre-stacked tensors (the ceiling) and the feature-cache hit path.
3. ``train``: seconds per training step of every trainable method (16 shots, 2 epochs, the device's
   default precision), and one full 16-shot run of CoOp (4 context tokens) and BiomedCoOp at their
   100-epoch budgets: medadapt as it runs them (V cached augmented views, encoded once) vs the
   official loop's cost (the same method re-encoding every image every step); a few epochs are
   measured and the 100-epoch totals projected (stated in the JSON).
4. ``instruct``: a few LoRA steps in bf16 of ``medadapt instruct train`` on a random-init
   Qwen2-VL (full: Qwen2-VL-2B's published config at reduced depth; reduced: the tiny test model),
   tokens/s; QLoRA too when ``bitsandbytes`` imports and the device is CUDA.
5. ``tables``: the projected wall time on one device of every shipped table config
   (``configs/bench/*.yaml``, runs counted by ``medadapt.report.bench.expand_grid``) from the
   per-step times of section 3 (assumptions listed in the JSON).

``--size reduced`` uses the small replicas of ``medadapt.backbones.replicas`` so that a CPU run
takes a couple of minutes (``tests/test_gpu_check.py`` runs a subset end to end).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

SECTIONS = ("methods", "features", "train", "instruct", "tables")
# wall-time caps per section (seconds) for --size full on one H100: 8 minutes in all with setup
CAPS = {"setup": 60, "methods": 170, "features": 35, "train": 90, "instruct": 60, "tables": 10}
# first-step losses: |loss_amp - loss_fp32| <= TOL * max(1, |loss_fp32|)
TOL = {"fp16": 0.02, "bf16": 0.05}
CLASSES = {"adipose": ((230, 40, 40), ["fat vacuoles"]),
           "lymphocytes": ((40, 200, 40), ["dense small round nuclei"]),
           "mucosa": ((40, 40, 230), ["regular glands", "glandular architecture"]),
           "tumor": ((220, 220, 40), ["irregular glands", "pleomorphic nuclei"])}
HIERARCHY = """name: standin
domain: tissue
template: "a photo of a {domain} with {concept}, which indicates {class}"
classes: [adipose, lymphocytes, mucosa, tumor]
concepts:
  fat vacuoles: [adipose]
  dense small round nuclei: [lymphocytes]
  regular glands: [mucosa]
  glandular architecture: [mucosa, tumor]
  irregular glands: [tumor]
  pleomorphic nuclei: [tumor]
"""
DESCRIPTIONS = {
    "adipose": ["large empty fat vacuoles", "pale white adipose tissue", "thin pink cell walls"],
    "lymphocytes": ["dense small round dark nuclei", "many lymphocytes", "little cytoplasm"],
    "mucosa": ["regular crypts of glands", "goblet cells in rows", "orderly epithelium"],
    "tumor": ["irregular crowded glands", "pleomorphic nuclei", "dark chromatin"],
}
# settings that keep a 1-epoch smoke run of each method short (its paper's recipe is not the point)
SMOKE_SETS = {"clip-lora": {"method": {"n_iters_per_shot": 2}},
              "tip-adapter": {"method": {"search_step": [4, 4]}},
              "tip-adapter-f": {"method": {"search_step": [4, 4]}},
              "linear-probe": {"method": {"max_iter": 50}}}


class Budget:
    def __init__(self, cap: float):
        self.t0, self.cap = time.time(), cap

    def left(self) -> float:
        return self.cap - (time.time() - self.t0)

    def spent(self) -> float:
        return round(time.time() - self.t0, 1)


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def network_off() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"

    def refuse(*a, **k):
        raise OSError("network refused by gpu_check.py")
    socket.socket.connect = refuse


def sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_reset(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    import torch
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return None


# ------------------------------------------------------------------------------------------------
# stand-ins: data set, backbones
# ------------------------------------------------------------------------------------------------
def standin_data(root: Path, n_train: int = 16, n_val: int = 4, n_test: int = 8,
                 px: int = 64) -> dict:
    """A CSV data set (path,label,split,concepts) of colour-tinted noise tiles, its hierarchy and
    a descriptions file."""
    import csv

    import numpy as np
    from PIL import Image
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for cls, (tint, concepts) in CLASSES.items():
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            d = root / split
            d.mkdir(exist_ok=True)
            for i in range(n):
                a = 0.5 * rng.integers(0, 255, (px, px, 3)) + 0.5 * np.asarray(tint)[None, None]
                name = f"{cls}_{i}.png"
                Image.fromarray(a.astype(np.uint8)).save(d / name)
                rows.append({"path": f"{split}/{name}", "label": cls, "split": split,
                             "concepts": concepts[i % len(concepts)]})
    with open(root / "data.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split", "concepts"])
        w.writeheader()
        w.writerows(rows)
    (root / "hierarchy.yaml").write_text(HIERARCHY)
    (root / "descriptions.json").write_text(json.dumps({"meta": {"source": "gpu_check stand-in"},
                                                        "classes": DESCRIPTIONS}))
    return {"csv": str(root / "data.csv"), "hierarchy": str(root / "hierarchy.yaml"),
            "descriptions": str(root / "descriptions.json"), "images": sorted(root.glob("*/*.png"))}


def build_biomedclip(folder: Path, full: bool) -> str:
    """BiomedCLIP's published ``open_clip_config.json`` (timm ViT-B/16 + BiomedBERT, context 256,
    embed 512) with random weights: medadapt.backbones.replicas.biomedclip (reduced unless
    ``full``)."""
    from medadapt.backbones import replicas
    from medadapt.backbones.openclip import TEXT_TOWER_CONFIG
    folder.mkdir(parents=True, exist_ok=True)
    out, text_cfgs = replicas.biomedclip(folder, full=full)
    if text_cfgs:
        (out / TEXT_TOWER_CONFIG).write_text(json.dumps(text_cfgs))
    return str(out)


def build_plip(folder: Path, full: bool) -> str:
    """PLIP (vinid/plip): transformers ``CLIPModel`` ViT-B/32 at 224 px with CLIP's published
    sizes (``CLIPConfig()`` defaults: text 512 x 12, vision 768 x 12, projection 512) and PLIP's
    token ids; ``full=False``: medadapt.backbones.replicas.plip."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from medadapt.backbones import replicas
    from medadapt.backbones.tiny import IMAGE_MEAN, IMAGE_STD
    if not full:
        return str(replicas.plip(folder))
    folder.mkdir(parents=True, exist_ok=True)
    replicas._clip_tokenizer_into(folder)
    cfg = CLIPConfig(text_config=dict(bos_token_id=0, eos_token_id=2, pad_token_id=1,
                                      hidden_act="quick_gelu"),
                     vision_config=dict(patch_size=32, hidden_act="quick_gelu"), projection_dim=512)
    torch.manual_seed(0)
    model = CLIPModel(cfg)
    model.config.save_pretrained(folder)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "pytorch_model.bin")
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD, "resample": 3, "size": 224}))
    return str(folder)


# ------------------------------------------------------------------------------------------------
# engine instrumentation: first losses and step times of every engine.train call
# ------------------------------------------------------------------------------------------------
class Probe:
    """Wraps ``Engine.train``: records the first losses, the number of steps and the loop time."""

    def __init__(self, n_first: int = 3):
        self.n_first = n_first
        self.calls: list[dict] = []
        self.device = "cpu"

    def install(self):
        from medadapt.engine import train as T
        orig = T.Engine.train
        probe = self

        def train(eng, method, split, val=None):
            rec = {"losses": [], "steps": 0}
            cls_loss = method.loss

            def loss(batch):
                out = cls_loss(batch)
                rec["steps"] += 1
                if len(rec["losses"]) < probe.n_first:
                    rec["losses"].append(float(out[0].detach()))
                return out
            method.loss = loss
            sync(probe.device)
            t0 = time.perf_counter()
            try:
                return orig(eng, method, split, val)
            finally:
                sync(probe.device)
                rec["seconds"] = time.perf_counter() - t0
                rec["epochs"] = eng.cfg["epochs"]
                del method.loss
                probe.calls.append(rec)
        T.Engine.train = train
        return orig


def fit(cfg: dict, out: Path, probe: Probe) -> dict:
    """One ``medadapt fit`` through the runner; returns results + what the probe saw."""
    from medadapt.engine.runner import Runner
    n0 = len(probe.calls)
    t0 = time.perf_counter()
    res = Runner(cfg, out, quiet=True, progress=False).run()["results"][0]
    wall = time.perf_counter() - t0
    calls = probe.calls[n0:]
    return {"result": res, "wall_s": wall, "train_calls": calls}


def base_cfg(args, data: dict, backbone: str, method: str, shots: int, precision: str,
             epochs: int | None = 1, views: int = 1) -> dict:
    amp = precision != "fp32"
    cfg = {"backbone": backbone, "dataset": f"csv:{data['csv']}", "shots": shots, "seeds": [1],
           "device": args.device, "method": {"name": method},
           "data": {"precision": precision, "augment_views": views},
           "train": {"amp": amp, "amp_dtype": precision if amp else "auto", "checkpoint": False},
           "texts": {"descriptions": data["descriptions"]}}
    if epochs is not None:
        cfg["train"]["epochs"] = epochs
    if method == "scale":
        cfg["method"]["hierarchy"] = data["hierarchy"]
    for sec, vals in SMOKE_SETS.get(method, {}).items():
        cfg[sec].update(vals)
    return cfg


def method_names(chosen: list[str] | None) -> list[str]:
    """The chosen methods (each must be registered), or every registered method (not the
    re-encoding variants this script registers for section 3)."""
    from medadapt.methods import METHODS, load_all
    load_all()
    if chosen:
        for m in chosen:
            METHODS.get(m)  # an unknown name: one clear error
        return list(chosen)
    return [m for m in METHODS.names() if not m.endswith("-reencode")]


def _finite(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and math.isfinite(x))


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------
def section_methods(args, ctx, budget: Budget) -> dict:
    from medadapt.methods import METHODS, load_all
    load_all()
    names = method_names(args.methods)
    out = {"tolerance": {k: f"|loss_{k} - loss_fp32| <= {v} * max(1, |loss_fp32|) on each of the "
                         "first training losses" for k, v in TOL.items()},
           "shots": 2, "epochs": 1, "runs": []}
    for bb_name in args.backbones:
        for m in names:
            row = {"backbone": bb_name, "method": m, "precisions": {}}
            out["runs"].append(row)
            for prec in args.precisions:
                if budget.left() <= 0:
                    row["precisions"][prec] = {"skipped": "budget"}
                    continue
                peak_reset(args.device)
                cfg = base_cfg(args, ctx["data"], ctx["backbones"][bb_name], m, 2, prec)
                rdir = ctx["root"] / "runs" / "methods" / bb_name / m / prec
                try:
                    r = fit(cfg, rdir, ctx["probe"])
                except Exception as e:  # recorded, the check goes on
                    row["precisions"][prec] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:400],
                                               "trace": traceback.format_exc()[-1500:]}
                    log(f"methods {bb_name} {m} {prec}: FAILED {type(e).__name__}: {str(e)[:200]}")
                    continue
                losses = [x for c in r["train_calls"] for x in c["losses"]]
                acc = r["result"]["metrics"]["accuracy"]
                rec = {"ok": all(math.isfinite(x) for x in losses) and _finite(acc),
                       "first_losses": losses[:3], "accuracy": acc, "wall_s": round(r["wall_s"], 2),
                       "steps": sum(c["steps"] for c in r["train_calls"]),
                       "peak_mem_mib": peak_mib(args.device)}
                row["precisions"][prec] = rec
                log(f"methods {bb_name} {m} {prec}: ok={rec['ok']} losses={[round(x, 4) for x in losses[:3]]} "
                    f"{rec['wall_s']}s peak={rec['peak_mem_mib']}")
            ref = row["precisions"].get("fp32", {}).get("first_losses")
            for prec in args.precisions:
                rec = row["precisions"].get(prec, {})
                if prec == "fp32" or not rec.get("ok") or not ref:
                    continue
                got = rec["first_losses"]
                n = min(len(ref), len(got))
                diffs = [abs(a - b) / max(1.0, abs(a)) for a, b in zip(ref[:n], got[:n])]
                rec["max_rel_diff_vs_fp32"] = max(diffs) if diffs else None
                rec["losses_agree"] = bool(diffs) and max(diffs) <= TOL[prec]
            row["ok"] = all(p.get("ok") and p.get("losses_agree", True)
                            for p in row["precisions"].values() if "skipped" not in p)
    runs = out["runs"]
    done = [r for r in runs if all("skipped" not in p for p in r["precisions"].values())]
    out["summary"] = {"runs": len(runs), "complete": len(done),
                      "all_ok": sum(bool(r.get("ok")) for r in done),
                      "failed": [f"{r['backbone']}/{r['method']}" for r in runs if not r.get("ok")
                                 and all("skipped" not in p for p in r["precisions"].values())],
                      "skipped_budget": [f"{r['backbone']}/{r['method']}" for r in runs
                                         if any("skipped" in p for p in r["precisions"].values())]}
    return out


def _bare_images_per_s(bb, files, batch, dtype, device, budget_s: float) -> dict:
    import torch
    from PIL import Image
    n = 0
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(files), batch):
            xs = torch.stack([bb.preprocess(Image.open(f).convert("RGB")) for f in files[s:s + batch]])
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                f = bb.encode_image(xs.to(device, non_blocking=True), normalize=False)
            f.float().cpu()
            n += len(xs)
            if time.perf_counter() - t0 > budget_s:
                break
    sync(device)
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 2)}


def section_features(args, ctx, budget: Budget) -> dict:
    import torch

    from medadapt.data.sources import load_dataset
    from medadapt.engine.features import FeatureCache, autocast_dtype, default_batch_size
    from medadapt.backbones import load_backbone
    dev = args.device
    primary = args.backbones[0]
    bb = load_backbone(ctx["backbones"][primary], device=dev)
    ds = load_dataset(f"csv:{ctx['data']['csv']}")
    n_img = 512 if args.size == "full" else 16
    idx = [i % len(ds) for i in range(n_img)]
    files = [Path(ctx["data"]["csv"]).parent / ds.records[i].id for i in idx]  # ids: CSV paths
    if not all(f.is_file() for f in files[:4]):
        raise RuntimeError("stand-in record ids are not the CSV's relative paths")
    batch = default_batch_size(dev)
    out = {"backbone": primary, "n_images": n_img, "batch_size": batch,
           "workers": args.workers, "by_precision": {}}
    precs = ["fp32", "fp16"] if dev.startswith("cuda") else ["fp32", "bf16"]
    per = max(5.0, budget.left() / (len(precs) * 4 + 1))
    for prec in precs:
        if budget.left() <= 0:
            out["by_precision"][prec] = {"skipped": "budget"}
            continue
        dtype = autocast_dtype(prec, torch.device(dev).type)
        rec = {}
        _bare_images_per_s(bb, files[:batch], batch, dtype, dev, per)  # warm-up
        rec["bare"] = _bare_images_per_s(bb, files, batch, dtype, dev, per)
        cache = FeatureCache(root=ctx["root"] / f"fcache-{prec}", enabled=False, precision=prec)
        sync(dev)
        t0 = time.perf_counter()
        cache.encode(bb, ds, idx, 0, batch, args.workers, progress=False)
        sync(dev)
        dt = time.perf_counter() - t0
        rec["medadapt"] = {"images": n_img, "seconds": round(dt, 3), "images_per_s": round(n_img / dt, 2)}
        rec["medadapt_vs_bare"] = round(rec["medadapt"]["images_per_s"] / rec["bare"]["images_per_s"], 3)
        x = torch.randn(batch, 3, bb.image_size, bb.image_size, device=dev)
        with torch.inference_mode(), torch.autocast(torch.device(dev).type, dtype=dtype,
                                                    enabled=dtype is not None):
            bb.encode_image(x)
            sync(dev)
            t0, k = time.perf_counter(), 0
            while k < 3 or (time.perf_counter() - t0 < per / 4 and k < 50):
                bb.encode_image(x)
                k += 1
            sync(dev)
            dt = time.perf_counter() - t0
        rec["forward_only"] = {"images": k * batch, "seconds": round(dt, 3),
                               "images_per_s": round(k * batch / dt, 2)}
        hit = FeatureCache(root=ctx["root"] / f"fcache-hit-{prec}", enabled=True, precision=prec)
        hit.encode(bb, ds, idx, 0, batch, args.workers, progress=False)
        t0 = time.perf_counter()
        hit.encode(bb, ds, idx, 0, batch, args.workers, progress=False)
        dt = time.perf_counter() - t0
        rec["cache_hit"] = {"images": n_img, "seconds": round(dt, 4),
                            "images_per_s": round(n_img / max(dt, 1e-9), 1)}
        out["by_precision"][prec] = rec
        log(f"features {prec}: bare {rec['bare']['images_per_s']} img/s, medadapt "
            f"{rec['medadapt']['images_per_s']} img/s, forward-only {rec['forward_only']['images_per_s']}, "
            f"cache hit {rec['cache_hit']['images_per_s']} img/s")
    # the device-aware default batch (engine.features.DEFAULT_BATCH): forward images/s by batch
    out["forward_by_batch"] = {}
    prec = precs[-1]
    dtype = autocast_dtype(prec, torch.device(dev).type)
    for b in ((32, 64, 128, 256) if dev.startswith("cuda") else (8, 32)):
        if budget.left() <= 0:
            out["forward_by_batch"][str(b)] = {"skipped": "budget"}
            continue
        x = torch.randn(b, 3, bb.image_size, bb.image_size, device=dev)
        with torch.inference_mode(), torch.autocast(torch.device(dev).type, dtype=dtype,
                                                    enabled=dtype is not None):
            bb.encode_image(x)
            sync(dev)
            t0 = time.perf_counter()
            for _ in range(3):
                bb.encode_image(x)
            sync(dev)
        out["forward_by_batch"][str(b)] = {"precision": prec,
                                           "images_per_s": round(3 * b / (time.perf_counter() - t0), 1)}
    log(f"features forward by batch ({prec}): {json.dumps(out['forward_by_batch'])}")
    ctx["images_per_s"] = max((r["medadapt"]["images_per_s"] for r in out["by_precision"].values()
                               if "medadapt" in r), default=None)
    del bb
    return out


def _pixel_variant(name: str):
    """The method re-encoding every image every step (the official loop's cost)."""
    from medadapt.methods import METHODS, get_method, register_method
    pname = f"{name}-reencode"
    if pname not in METHODS:
        base = get_method(name)
        register_method(pname)(type(f"{base.__name__}Reencode", (base,), {"needs_images": True}))
    return pname


def section_train(args, ctx, budget: Budget) -> dict:
    from medadapt.methods import METHODS, load_all
    load_all()
    dev = args.device
    prec = "fp16" if dev.startswith("cuda") else "fp32"
    names = [m for m in method_names(args.methods) if METHODS.get(m).trainable]
    out = {"backbone": args.backbones[0], "shots": 16, "classes": len(CLASSES), "precision": prec,
           "epochs_measured": args.train_epochs, "step_s": {}, "full_runs": {}}
    bb = ctx["backbones"][args.backbones[0]]
    share = budget.left() * 0.5
    t_sec = time.time()
    for m in names:
        if time.time() - t_sec > share or budget.left() <= 0:
            out["step_s"][m] = {"skipped": "budget"}
            continue
        cfg = base_cfg(args, ctx["data"], bb, m, 16, prec, epochs=args.train_epochs, views=1)
        try:
            r = fit(cfg, ctx["root"] / "runs" / "train" / m, ctx["probe"])
        except Exception as e:
            out["step_s"][m] = {"error": f"{type(e).__name__}: {e}"[:300]}
            log(f"train {m}: FAILED {e}")
            continue
        steps = sum(c["steps"] for c in r["train_calls"])
        secs = sum(c["seconds"] for c in r["train_calls"])
        out["step_s"][m] = {"steps": steps, "loop_s": round(secs, 3),
                            "step_s": round(secs / steps, 4) if steps else None,
                            "needs_images": METHODS.get(m).needs_images}
        log(f"train {m}: {steps} steps, {out['step_s'][m]['step_s']} s/step")
    # one 16-shot run at the recipe budget: measured epochs, projected to 100
    E = 100
    V = args.views
    for m, extra in (("coop", {"n_ctx": 4}), ("biomedcoop", {})):
        rec = {"recipe_epochs": E, "views": V}
        for arm, name, views in (("medadapt", m, V), ("reencode", _pixel_variant(m), 0)):
            if budget.left() <= 0:
                rec[arm] = {"skipped": "budget"}
                continue
            cfg = base_cfg(args, ctx["data"], bb, name, 16, prec, epochs=args.train_epochs, views=views)
            cfg["method"].update(extra)
            try:
                r = fit(cfg, ctx["root"] / "runs" / "full" / f"{m}-{arm}", ctx["probe"])
            except Exception as e:
                rec[arm] = {"error": f"{type(e).__name__}: {e}"[:300]}
                continue
            loop = sum(c["seconds"] for c in r["train_calls"])
            per_epoch = loop / args.train_epochs
            other = r["wall_s"] - loop  # encoding (views: V x N once), evaluation, writing
            rec[arm] = {"wall_measured_s": round(r["wall_s"], 2), "loop_s": round(loop, 3),
                        "epoch_s": round(per_epoch, 4), "outside_loop_s": round(other, 3),
                        "projected_run_s": round(other + E * per_epoch, 2)}
        if "projected_run_s" in rec.get("medadapt", {}) and "projected_run_s" in rec.get("reencode", {}):
            rec["speedup"] = round(rec["reencode"]["projected_run_s"] / rec["medadapt"]["projected_run_s"], 2)
        rec["how"] = (f"{args.train_epochs} epoch(s) measured per arm; projected = time outside the "
                      f"training loop (feature / {V}-view encoding, evaluation, writing) + {E} x the "
                      "measured epoch time")
        out["full_runs"][m] = rec
        log(f"train full-run {m}: {json.dumps({k: v for k, v in rec.items() if k != 'how'})}")
    ctx["train"] = out
    return out


def _qwen2vl_full_config(ids: dict, depth: int, vision_depth: int):
    """Qwen2-VL-2B-Instruct's published config.json (text: hidden 1536, 12 heads, 2 KV heads,
    intermediate 8960, vocab 151936, rope theta 1e6, M-RoPE sections [16, 24, 24]; vision: depth 32,
    embed 1280, 16 heads, hidden 1536, patch 14, merge 2) at ``depth`` / ``vision_depth`` layers."""
    from transformers import Qwen2VLConfig
    text = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=depth,
                num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                 "mrope_section": [16, 24, 24]},
                bos_token_id=151643, eos_token_id=151645)
    return Qwen2VLConfig(
        vision_config=dict(depth=vision_depth, embed_dim=1280, num_heads=16, hidden_size=1536,
                           mlp_ratio=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           in_chans=3),
        text_config=text, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)


def section_instruct(args, ctx, budget: Budget) -> dict:
    import torch

    from medadapt.instruct import config as C
    from medadapt.instruct.tiny import FAMILIES, build_tiny_family
    from medadapt.instruct.train import train
    root = ctx["root"] / "instruct"
    q = "What tissue type is shown in this image?"
    answers = {c: f"{c.capitalize()} tissue." for c in CLASSES}
    folder = build_tiny_family("qwen2-vl", root / "model", [q] + list(answers.values()),
                               with_model=args.size != "full")
    out = {"family": "qwen2-vl"}
    if args.size == "full":
        from transformers import Qwen2VLForConditionalGeneration
        cfg = _qwen2vl_full_config(FAMILIES["qwen2-vl"]["specials"], depth=4, vision_depth=4)
        torch.manual_seed(0)
        model = Qwen2VLForConditionalGeneration(cfg).to(torch.bfloat16)  # trained in bf16
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(folder)
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(folder)
        out["model"] = "Qwen2-VL-2B published config, 4 of 28 text layers, 4 of 32 vision blocks"
        del model
    else:
        out["model"] = "medadapt.instruct.tiny qwen2-vl (hidden 32, 2 layers)"
    imgs = [p for p in ctx["data"]["images"] if "/train/" in str(p)][:8]
    items = []
    for i, p in enumerate(imgs):
        c = p.name.rsplit("_", 1)[0]
        items.append({"id": f"i{i}", "task": "classification", "source": "standin", "label": c,
                      "messages": [{"role": "user", "content": f"<image>\n{q}"},
                                   {"role": "assistant", "content": answers[c]}], "images": [str(p)]})
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in items))
    steps = 6 if args.size == "full" else 3
    variants = [("lora", {})]
    try:
        import bitsandbytes  # noqa: F401
        if args.device.startswith("cuda"):
            variants.append(("qlora", {}))
        else:
            out["qlora"] = {"skipped": "QLoRA needs CUDA"}
    except Exception as e:  # ImportError or a broken install
        out["qlora"] = {"skipped": f"bitsandbytes does not import ({type(e).__name__})"}
    for method, extra in variants:
        if budget.left() <= 0:
            out[method] = {"skipped": "budget"}
            continue
        sets = {"method": method, "dtype": "bfloat16", "max_steps": steps, "batch_size": 2,
                "save_strategy": "no", "logging_steps": 1, "warmup_ratio": 0, "learning_rate": 1e-4,
                "lr_scheduler": "constant"}
        tc = C.load("train", sets=[f"{k}={json.dumps(v)}" for k, v in sets.items()])
        peak_reset(args.device)
        try:
            s = train(tc, str(folder), data, root / f"run-{method}")
        except Exception as e:
            out[method] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:400]}
            log(f"instruct {method}: FAILED {e}")
            continue
        from medadapt.instruct.encode import ChatEncoder
        from medadapt.instruct.records import read_records
        from medadapt.instruct.train import load_processor
        enc = ChatEncoder(load_processor(str(folder)), max_length=tc.max_length)
        lengths = [len(enc.encode(r)["input_ids"]) for r in read_records(data)]
        tokens = s["steps"] * tc.batch_size * (sum(lengths) / len(lengths))
        out[method] = {"ok": all(math.isfinite(x) for x in s["losses"]), "steps": s["steps"],
                       "losses": s["losses"], "train_seconds": s["train_seconds"],
                       "tokens_per_step_mean": round(tc.batch_size * sum(lengths) / len(lengths), 1),
                       "tokens_per_s": round(tokens / max(s["train_seconds"], 1e-9), 1),
                       "n_trainable_params": s["n_trainable_params"], "n_params": s["n_params"],
                       "peak_mem_mib": peak_mib(args.device)}
        log(f"instruct {method}: {out[method]['steps']} steps, {out[method]['tokens_per_s']} tokens/s")
    return out


def section_tables(args, ctx, budget: Budget) -> dict:
    """Projected wall time of each shipped table config from the measured per-step times."""
    from medadapt.data.catalog import DATASETS
    from medadapt.engine.resolve import resolve
    from medadapt.methods import get_method
    from medadapt.report.bench import expand_grid, expand_recipe, load_grid
    import medadapt.data.benchmarks  # noqa: F401  (registers the data sets)
    tr = ctx.get("train") or {}
    steps = {m: v["step_s"] for m, v in tr.get("step_s", {}).items() if v.get("step_s")}
    img_s = ctx.get("images_per_s")
    out = {"assumptions": [
        "per-step times of section 3 (16 shots x 4 classes, batch of the method, the device's "
        "default precision) are used for every run of that method; text-side cost grows with "
        "the class count, which is modelled as linear in C / 4 for cached-feature methods",
        "steps per run = epochs x floor(train items / batch) (Dassl drops the last partial batch; "
        "one step when fewer items than a batch), or n_iters_per_shot x shots (CLIP-LoRA); train "
        "items = shots x classes (base classes only for base-to-novel)",
        "encoding: (1 + augment_views) x train items per (backbone, data set, shots, seed) at the "
        "measured medadapt images/s; test-set encoding is not counted (sizes unknown offline)",
        "methods without a measured step time (no gradient loop, or not measured) count 0 s of training",
        "the projection is for one process on one device; the multi-process bench divides it"],
        "tables": {}}
    for path in sorted((REPO / "configs" / "bench").glob("*.yaml")):
        if budget.left() <= 0:
            out["tables"][path.stem] = {"skipped": "budget"}
            continue
        try:
            grid = load_grid(path)
            # a published table's grid names its recipe (medadapt.recipes): the recipe's runs
            runs = (expand_recipe(grid)[0] if grid.get("recipe")
                    else expand_grid(grid, base_dir=path.parent))
        except Exception as e:
            out["tables"][path.stem] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        total, n_runs, unmeasured = 0.0, 0, set()
        for r in runs:
            seeds = len(r.seeds)
            n_runs += seeds
            try:
                cfg = resolve(dict(r.cfg))
            except Exception:
                cfg = {"train": {}, "data": {}}
            info = DATASETS.get(r.cfg["dataset"]) if r.cfg["dataset"] in DATASETS else None
            C = len(info.classnames) if info else 4
            if r.protocol == "base-to-novel":
                C = max(1, C // 2)
            k = r.shots or 16
            items = k * C
            t = cfg.get("train", {})
            bs = int(t.get("batch_size", 32) or 32)
            ep = int(t.get("epochs", 1) or 1)
            n_steps = ep * max(1, items // bs if items >= bs else 1)
            n_iters = (cfg.get("method") or {}).get("n_iters_per_shot")
            if n_iters:  # CLIP-LoRA: a fixed number of iterations per shot, not epochs
                n_steps = int(n_iters) * k
            name = r.method_name
            step = steps.get(name)
            if step is None:
                unmeasured.add(name)
                step = 0.0
            cls = get_method(name)
            if cls is not None and not cls.needs_images:
                step *= max(1.0, C / 4)
            views = int(cfg.get("data", {}).get("augment_views", 0) or 0)
            enc = (1 + views) * items / img_s if img_s else 0.0
            total += seeds * (n_steps * step + enc)
        out["tables"][path.stem] = {"grid_runs": len(runs), "runs": n_runs, "projected_s": round(total, 1),
                                    "projected_h": round(total / 3600, 3),
                                    "methods_without_step_time": sorted(unmeasured)}
        log(f"tables {path.stem}: {len(runs)} grid runs x seeds = {n_runs} runs, projected "
            f"{total / 60:.1f} min")
    return out


# ------------------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    L = [f"# gpu_check ({res['device']}, size {res['size']})", "",
         f"Command: `{res['command']}`  ", f"Device: {res['machine'].get('gpu') or res['machine'].get('cpu')}; "
         f"torch {res['machine'].get('torch')}; commit {res['machine'].get('git_commit')}; "
         f"total {res['total_s']} s.", ""]
    s = res["sections"]
    if "methods" in s and "runs" in s["methods"]:
        precs = res["precisions"]
        L += ["## 1. Every method end to end", "",
              "| backbone | method | " + " | ".join(f"{p} first loss" for p in precs) +
              " | agree | peak MiB (" + precs[-1] + ") |",
              "| --- | --- | " + " | ".join("---" for _ in precs) + " | --- | --- |"]
        for r in s["methods"]["runs"]:
            cells = []
            for p in precs:
                rec = r["precisions"].get(p, {})
                cells.append("skipped" if "skipped" in rec else
                             ("FAIL" if not rec.get("ok") else
                              (f"{rec['first_losses'][0]:.4f}" if rec.get("first_losses") else "no loop")))
            last = r["precisions"].get(precs[-1], {})
            L.append(f"| {r['backbone']} | {r['method']} | " + " | ".join(cells) +
                     f" | {('yes' if r.get('ok') else 'NO') + (' (partial)' if any('skipped' in p for p in r['precisions'].values()) else '')}"
                     f" | {last.get('peak_mem_mib')} |")
        L += ["", f"Summary: {json.dumps(s['methods'].get('summary'))}", ""]
    if "features" in s and "by_precision" in s["features"]:
        L += ["## 2. Feature extraction (images/s)", "",
              "| precision | bare | medadapt | medadapt/bare | forward only | cache hit |",
              "| --- | --- | --- | --- | --- | --- |"]
        for p, r in s["features"]["by_precision"].items():
            if "bare" in r:
                L.append(f"| {p} | {r['bare']['images_per_s']} | {r['medadapt']['images_per_s']} | "
                         f"{r['medadapt_vs_bare']} | {r['forward_only']['images_per_s']} | "
                         f"{r['cache_hit']['images_per_s']} |")
        L.append("")
    if "train" in s and "step_s" in s["train"]:
        L += ["## 3. Training", "", "| method | s/step |", "| --- | --- |"]
        for m, r in s["train"]["step_s"].items():
            L.append(f"| {m} | {r.get('step_s', r.get('skipped', r.get('error')))} |")
        L += ["", "| 16-shot run (100 epochs) | medadapt (s) | re-encode every step (s) | speed-up |",
              "| --- | --- | --- | --- |"]
        for m, r in s["train"]["full_runs"].items():
            L.append(f"| {m} | {r.get('medadapt', {}).get('projected_run_s')} | "
                     f"{r.get('reencode', {}).get('projected_run_s')} | {r.get('speedup')} |")
        L.append("")
    if "instruct" in s:
        L += ["## 4. Instruct (bf16)", ""]
        for k in ("lora", "qlora"):
            r = s["instruct"].get(k, {})
            L.append(f"- {k}: " + (f"{r.get('steps')} steps, {r.get('tokens_per_s')} tokens/s, "
                                   f"peak {r.get('peak_mem_mib')} MiB" if r.get("ok") else
                                   json.dumps({x: r[x] for x in r if x in ("skipped", "error")})))
        L.append("")
    if "tables" in s and "tables" in s["tables"]:
        L += ["## 5. Projected table time on this device", "",
              "| table | grid runs | runs x seeds | hours |", "| --- | --- | --- | --- |"]
        for t, r in s["tables"]["tables"].items():
            L.append(f"| {t} | {r.get('grid_runs')} | {r.get('runs')} | "
                     f"{r.get('projected_h', r.get('skipped', r.get('error')))} |")
        L.append("")
    for name, e in res.get("errors", {}).items():
        L.append(f"Section {name} failed: {e}")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    ap.add_argument("--size", choices=("full", "reduced"), default="full",
                    help="full: published-size replicas; reduced: small ones (CPU rehearsal)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated of {SECTIONS}")
    ap.add_argument("--out", required=True, help="output folder (gpu_check.json, gpu_check.md)")
    ap.add_argument("--methods", default=None, help="comma-separated subset of methods (default: all)")
    ap.add_argument("--backbones", default="biomedclip,plip",
                    help="replicas for section 1; the first also serves sections 2 and 3")
    ap.add_argument("--precisions", default="fp32,fp16,bf16",
                    help="section 1: fp32 (always run, the reference) and the AMP dtypes to compare")
    ap.add_argument("--train-epochs", type=int, default=2, help="epochs measured in section 3")
    ap.add_argument("--views", type=int, default=10,
                    help="cached augmented views in section 3's medadapt arm (data.augment_views)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's; reduced CPU runs: 1)")
    ap.add_argument("--workers", type=int, default=0, help="data loader workers (feature section)")
    ap.add_argument("--cap-scale", type=float, default=1.0,
                    help="multiply every section's wall-time cap (default caps: %s)" % CAPS)
    args = ap.parse_args(argv)
    network_off()
    import torch
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads or (args.device == "cpu" and args.size == "reduced"):
        torch.set_num_threads(args.threads or 1)  # tiny models on a shared CPU: one thread
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        print(f"gpu_check: unknown section(s) {bad}; valid: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    args.methods = [m for m in args.methods.split(",") if m] if args.methods else None
    args.backbones = [b for b in args.backbones.split(",") if b]
    args.precisions = [p for p in args.precisions.split(",") if p]
    wrong = [b for b in args.backbones if b not in ("biomedclip", "plip")] + \
        [p for p in args.precisions if p not in ("fp32", "fp16", "bf16")]
    if wrong or not args.backbones:
        print(f"gpu_check: unknown backbone or precision {wrong}; backbones: biomedclip, plip; "
              "precisions: fp32, fp16, bf16", file=sys.stderr)
        return 2
    if "fp32" not in args.precisions:
        args.precisions.insert(0, "fp32")
    if args.device == "cpu" and "fp16" in args.precisions and args.size == "full":
        pass  # fp16 autocast exists on CPU in recent torch; kept as asked
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    prev = os.environ.get("MEDADAPT_CACHE")
    os.environ["MEDADAPT_CACHE"] = str(root / "cache")  # fresh: no feature-cache hits from before
    bpe = Path(prev or "/nonexistent") / "tiny" / "clip-bpe-tokenizer"
    if (bpe / ".complete").is_file():  # the CLIP BPE tokenizer files take ~15 s to build: reuse
        import shutil
        shutil.copytree(bpe, root / "cache" / "tiny" / "clip-bpe-tokenizer")
    os.environ["HF_HUB_CACHE"] = str(root / "hub")
    t_all = time.time()
    from _machine import machine
    from medadapt.methods import load_all
    load_all()
    res = {"benchmark": "gpu_check", "device": args.device, "size": args.size, "sections": {},
           "precisions": args.precisions, "caps_s": {k: v * args.cap_scale for k, v in CAPS.items()},
           "command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "errors": {}}
    log(f"device {args.device}, size {args.size}, sections {sections}, scratch {root}")
    full = args.size == "full"
    b = Budget(CAPS["setup"] * args.cap_scale)
    data = standin_data(root / "data")
    log(f"setup: stand-in data set written ({b.spent()} s)")
    backbones = {}
    for name, build in (("biomedclip", build_biomedclip), ("plip", build_plip)):
        if name in args.backbones:
            backbones[name] = build(root / "models" / name, full)
            log(f"setup: {name} replica ({args.size}) built ({b.spent()} s)")
    probe = Probe()
    probe.device = args.device
    probe.install()
    ctx = {"root": root, "data": data, "backbones": backbones, "probe": probe}
    res["setup_s"] = b.spent()
    from medadapt.report.bench import shared_backbones
    fns = {"methods": section_methods, "features": section_features, "train": section_train,
           "instruct": section_instruct, "tables": section_tables}
    with shared_backbones():
        for name in SECTIONS:
            if name not in sections:
                continue
            if name == "tables" and "train" not in sections:
                log("tables: no section 3 times in this run; projections count encoding only")
            budget = Budget(CAPS[name] * args.cap_scale)
            log(f"section {name} (cap {budget.cap:.0f} s)")
            try:
                res["sections"][name] = fns[name](args, ctx, budget)
            except Exception as e:
                res["errors"][name] = f"{type(e).__name__}: {e}"[:500]
                res["sections"][name] = {"error": res["errors"][name], "trace": traceback.format_exc()[-3000:]}
                log(f"section {name} FAILED: {e}")
            res["sections"][name]["seconds"] = budget.spent()
    res["total_s"] = round(time.time() - t_all, 1)
    res["machine"] = machine()
    (out_dir / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out_dir / "gpu_check.md").write_text(markdown(res))
    log(f"done in {res['total_s']} s: {out_dir / 'gpu_check.json'}, {out_dir / 'gpu_check.md'}")
    import shutil
    shutil.rmtree(root, ignore_errors=True)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
