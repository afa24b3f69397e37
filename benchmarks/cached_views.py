"""Benchmark: CoOp on cached augmented views vs the pixel path (re-encode every step).

The references (CoOp's Dassl trainer) draw a fresh random resized crop (area 0.08-1) and a
horizontal flip of every training image each epoch and run the frozen image encoder on it.
medadapt's cached-feature methods instead encode ``data.augment_views`` = V views of each image once
(the same transform) and train on one view per image and epoch (``engine.train.view_schedule``).

Two measurements, both with medadapt's own CoOp and engine, the same transform in both arms
(random resized crop 0.08-1, bicubic, + flip + the backbone's normalisation, set explicitly here so
the result does not depend on a backbone family's own train transform):

1. **Accuracy** on synth-crc with synthpath-clip, CoOp at its released 16-shot defaults (200
   epochs, Dassl schedule), seeds 1 2 3: ``views`` (V cached views) vs ``pixel`` (re-encode each
   step); optionally ``plain`` (no augmentation) with ``--with-plain``.
2. **Speed** on a ViT-B/16-size encoder (random-init open_clip ``ViT-B-16``, 224 px, 86M-parameter
   image tower, 63M text tower), one thread, on synth-crc's 16-shot set: the time of one training
   epoch on each path and of encoding one image, measured on ``--speed-epochs`` epochs (a full
   200-epoch CPU run of the pixel path would take hours), then the whole-run totals projected for
   CoOp's released lengths: pixel = E x epoch_pixel; views = V x N x image + E x epoch_cached.

Writes ``benchmarks/results/cached_views.{json,md}``.

    python benchmarks/cached_views.py                    # both parts (~15 min on one busy core)
    python benchmarks/cached_views.py --part accuracy --epochs 50
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def reference_transform(bb):
    """RandomResizedCrop(size, scale 0.08-1, bicubic) + RandomHorizontalFlip + the backbone's own
    normalisation (CoOp configs: INPUT.TRANSFORMS random_resized_crop, random_flip, normalize)."""
    import torchvision.transforms as T
    norm = [t for t in getattr(bb.preprocess, "transforms", []) if isinstance(t, T.Normalize)]
    if not norm:
        raise SystemExit("cached_views: cannot find the backbone's Normalize transform")
    return T.Compose([T.RandomResizedCrop(bb.image_size, scale=(0.08, 1.0),
                                          interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), norm[0]])


def pixel_coop():
    """CoOp whose batches carry pixels: the image encoder runs every step (the references' way)."""
    from medadapt.methods import get_method
    CoOp = get_method("coop")

    class CoOpPixel(CoOp):
        needs_images = True
    CoOpPixel.name = "coop-pixel"
    return CoOpPixel


def train_split(bb, ds, seed, shots, cache, views):
    import torch

    from medadapt.data.fewshot import ids_to_indices, sample_fewshot
    from medadapt.engine.train import Split
    fs = sample_fewshot(ds, shots, seed, list(range(ds.num_classes)))
    idx = ids_to_indices(ds, fs["train"])
    labels = torch.tensor([ds.records[i].label for i in idx])
    feats, _ = cache.encode(bb, ds, idx, 0, progress=False)
    split = Split(ds, idx, labels, feats)
    t0 = time.time()
    if views:
        split.views = torch.stack([cache.encode(bb, ds, idx, v, progress=False)[0]
                                   for v in range(1, views + 1)])
    return split, time.time() - t0


def test_split(bb, ds, cache):
    import torch

    from medadapt.engine.train import Split
    idx = ds.indices("test")
    feats, _ = cache.encode(bb, ds, idx, 0, progress=False)
    return Split(ds, idx, torch.tensor([ds.records[i].label for i in idx]), feats)


def fit_once(arm, bb, ds, texts, seed, shots, epochs, views, cache, test):
    from medadapt.engine.rundir import set_seed
    from medadapt.engine.train import Engine
    from medadapt.methods import get_method
    cls = pixel_coop() if arm == "pixel" else get_method("coop")
    d = cls.resolved_defaults(shots)
    split, view_s = train_split(bb, ds, seed, shots, cache, views if arm == "views" else 0)
    set_seed(seed)
    m = cls(bb, texts, d["method"])
    cfg = dict(d["train"], checkpoint=False, **({"epochs": epochs} if epochs else {}))
    eng = Engine(cfg, progress=False, seed=seed)
    t0 = time.time()
    m.fit(split, None, eng)
    train_s = time.time() - t0
    m.needs_images = False  # evaluate the learned prompt on the cached test features
    acc = eng.accuracy(m, test)
    return {"arm": arm, "seed": seed, "epochs": cfg["epochs"], "accuracy": acc,
            "train_seconds": train_s, "view_encoding_seconds": view_s}


def part_accuracy(args) -> dict:
    from medadapt.backbones import load_backbone
    from medadapt.data.sources import load_dataset
    from medadapt.data.texts import load_class_texts
    from medadapt.engine.features import FeatureCache
    bb = load_backbone(args.backbone)
    bb.train_preprocess = reference_transform(bb)
    ds = load_dataset(args.dataset)
    texts = load_class_texts(ds.classnames, ds.meta.get("template_set", "histopathology"))
    cache = FeatureCache(Path(args.cache) / "features")
    test = test_split(bb, ds, cache)
    arms = ["views", "pixel"] + (["plain"] if args.with_plain else [])
    rows = []
    for seed in args.seeds:
        for arm in arms:
            r = fit_once(arm, bb, ds, texts, seed, args.shots, args.epochs, args.views, cache, test)
            rows.append(r)
            print(f"accuracy  {arm:6s} seed {seed}: {r['accuracy']:.4f}  "
                  f"({r['train_seconds']:.0f}s train)", flush=True)
    summary = {}
    for arm in arms:
        accs = [r["accuracy"] for r in rows if r["arm"] == arm]
        summary[arm] = {"mean": statistics.mean(accs), "std": statistics.pstdev(accs),
                        "values": accs,
                        "train_seconds": statistics.mean(r["train_seconds"] for r in rows
                                                         if r["arm"] == arm)}
    return {"backbone": args.backbone, "dataset": args.dataset, "shots": args.shots,
            "views": args.views, "seeds": args.seeds, "epochs": rows[0]["epochs"], "rows": rows,
            "summary": summary}


def vit_b16_backbone():
    import open_clip

    from medadapt.backbones.openclip import OpenCLIPBackbone
    model, pt, pv = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None)
    return OpenCLIPBackbone(model, open_clip.get_tokenizer("ViT-B-16"), pt, pv,
                            "ViT-B-16 (random init)", "open_clip:ViT-B-16")


def part_speed(args) -> dict:
    import torch

    from medadapt.data.sources import load_dataset
    from medadapt.data.texts import load_class_texts
    from medadapt.engine.features import FeatureCache
    from medadapt.engine.rundir import set_seed
    from medadapt.engine.train import Engine
    from medadapt.methods import get_method
    bb = vit_b16_backbone()
    bb.train_preprocess = reference_transform(bb)
    ds = load_dataset(args.dataset)
    texts = load_class_texts(ds.classnames, ds.meta.get("template_set", "histopathology"))
    cache = FeatureCache(enabled=False)
    # one image encoding, measured on a batch of 32 augmented views (the view cache's cost)
    split, _ = train_split(bb, ds, 1, args.shots, cache, 0)
    n = len(split)
    t0 = time.time()
    cache.encode(bb, ds, split.indices[:32], 1, batch_size=32, progress=False)
    per_image = (time.time() - t0) / 32
    split.views = split.features[None].repeat(args.views, 1, 1)  # stand-in values: timing only
    out = {"backbone": "open_clip ViT-B-16, random init, 224 px", "n_train": n,
           "image_seconds": per_image, "speed_epochs": args.speed_epochs}
    for arm in ("views", "pixel"):
        cls = pixel_coop() if arm == "pixel" else get_method("coop")
        d = cls.resolved_defaults(args.shots)
        set_seed(1)
        m = cls(bb, texts, d["method"])
        eng = Engine(dict(d["train"], epochs=args.speed_epochs, checkpoint=False), progress=False,
                     seed=1)
        t0 = time.time()
        m.fit(split, None, eng)
        out[f"{arm}_epoch_seconds"] = (time.time() - t0) / args.speed_epochs
        print(f"speed     {arm:6s}: {out[f'{arm}_epoch_seconds']:.1f}s per epoch", flush=True)
    proj = {}
    for shots_label, E in (("16 shots (200 epochs)", 200), ("2-4 shots (100 epochs)", 100),
                           ("1 shot (50 epochs)", 50)):
        pixel = E * out["pixel_epoch_seconds"]
        views = args.views * n * per_image + E * out["views_epoch_seconds"]
        proj[shots_label] = {"pixel_seconds": pixel, "views_seconds": views,
                             "speedup": pixel / views,
                             "speedup_views_already_cached": pixel / (E * out["views_epoch_seconds"])}
    out["projected_runs"] = proj
    out["note"] = (f"per-epoch times measured over {args.speed_epochs} epochs of the {n}-image "
                   "16-shot set; whole runs projected for CoOp's released lengths, keeping the "
                   "16-shot set size (the 1- and 2-4-shot rows show the cost of the epoch count "
                   "only); the view cache is encoded once per backbone and data set and reused "
                   "by every cached method and seed (last column)")
    return out


def write_md(res: dict, path: Path) -> None:
    L = ["# Cached augmented views vs the pixel path (CoOp)", "",
         "`python benchmarks/cached_views.py` " + res["meta"]["argv"], "",
         f"Machine: {res['meta']['machine']}; torch threads {res['meta']['threads']}; "
         f"{res['meta']['date']}.", ""]
    a = res.get("accuracy")
    if a:
        L += ["## Accuracy", "",
              f"{a['backbone']} on {a['dataset']}, CoOp, {a['shots']} shots, {a['epochs']} epochs "
              + ("(CoOp's released 16-shot schedule)" if a["epochs"] == 200 else
                 "(reduced from CoOp's 200)")
              + f", seeds {a['seeds']}. Both arms train on random "
              "resized crops (0.08-1) + flips; `views` draws them from V = "
              f"{a['views']} pre-encoded views per image (one per epoch), `pixel` re-encodes a "
              "fresh crop every step.", "",
              "| arm | accuracy mean ± std | per seed | train seconds (mean) |",
              "| --- | --- | --- | --- |"]
        for arm, s in a["summary"].items():
            L.append(f"| {arm} | {100 * s['mean']:.2f} ± {100 * s['std']:.2f} | "
                     + ", ".join(f"{100 * v:.2f}" for v in s["values"])
                     + f" | {s['train_seconds']:.0f} |")
        v, p = a["summary"]["views"], a["summary"]["pixel"]
        diff = 100 * (v["mean"] - p["mean"])
        noise = 100 * max(v["std"], p["std"])
        L += ["", f"Difference views - pixel: {diff:+.2f} points; seed std up to {noise:.2f} points "
              f"({'within' if abs(diff) <= 2 * max(noise, 1e-9) else 'outside'} 2 seed std).", ""]
    s = res.get("speed")
    if s:
        L += ["## Speed", "", f"{s['backbone']}, {s['n_train']} training images (synth-crc, 16 shots), "
              f"one thread. Measured: one image encoding {s['image_seconds'] * 1000:.0f} ms; one "
              f"epoch on cached views {s['views_epoch_seconds']:.1f} s; one epoch re-encoding "
              f"{s['pixel_epoch_seconds']:.1f} s (over {s['speed_epochs']} epochs each). "
              + s["note"] + ".", "",
              "| run length | pixel (s) | views incl. encoding V views (s) | speed-up | "
              "speed-up, views already cached |", "| --- | --- | --- | --- | --- |"]
        for k, r in s["projected_runs"].items():
            L.append(f"| {k} | {r['pixel_seconds']:.0f} | {r['views_seconds']:.0f} | "
                     f"{r['speedup']:.1f}x | {r['speedup_views_already_cached']:.1f}x |")
        L.append("")
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(L))
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["both", "accuracy", "speed"], default="both")
    ap.add_argument("--backbone", default="synthpath-clip")
    ap.add_argument("--dataset", default="synth-crc")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=None, help="accuracy part (default: CoOp's)")
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--with-plain", action="store_true", help="also train without augmentation")
    ap.add_argument("--speed-epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=None, help="feature cache root (default: a temp folder)")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    from prompt_methods import check_world
    why = check_world(args.backbone, [args.dataset])
    if why:
        print(f"cached_views: cannot run: {why}", file=sys.stderr)
        return 2
    args.cache = args.cache or tempfile.mkdtemp(prefix="medadapt_cached_views_")
    from _machine import machine
    res = {"meta": {"argv": " ".join(sys.argv[1:] if argv is None else argv),
                    "machine": ", ".join(f"{k} {v}" for k, v in machine().items()),
                    "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M")}}
    if args.part in ("both", "accuracy"):
        res["accuracy"] = part_accuracy(args)
    if args.part in ("both", "speed"):
        res["speed"] = part_speed(args)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    f = out / "cached_views.json"
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str))
    os.replace(tmp, f)
    write_md(res, out / "cached_views.md")
    print(f"wrote {f} and {out / 'cached_views.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
