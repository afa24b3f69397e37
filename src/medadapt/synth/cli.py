"""``medadapt synth ...``: pretrain the shipped backbone, or write tiles to PNG files for a look."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from medadapt.errors import UserError
from medadapt.helpfmt import HelpFormatter
from medadapt.safeio import make_dir, replacing, write_text

PRETRAIN_HELP = """\
Train synthpath-clip: a small transformers CLIPModel (ViT image tower, 4-layer text transformer,
WordPiece tokenizer) with the CLIP contrastive loss on pairs (synthetic H&E tile, caption that
describes the tile's attributes; class names appear in few captions). CPU only, deterministic for
a seed (same torch build and --threads). The shipped weights were built with
configs/synth/pretrain.yaml:

  medadapt synth pretrain --config configs/synth/pretrain.yaml --out runs/synthpath-clip --sanity

The output folder loads with `--backbone PATH` (or copy it to
src/medadapt/synth/weights/synthpath-clip/ to replace the shipped model)."""

GENERATE_HELP = """\
Write tiles to PNG files (and a contact sheet grid.png) to look at the synthetic world.
From a registered data set (items of one split, N per class):

  medadapt synth generate --dataset synth-crc --split test -n 8 --out /tmp/tiles

or fresh tiles of one class profile (any class of synth-crc-b2n, or benign / malignant), in a
stain / organ domain:

  medadapt synth generate --class "tumour epithelium" --domain breast -n 16 --out /tmp/tiles"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "synth", help="synthetic pathology world: pretrain synthpath-clip, write tiles",
        description="The offline synthetic pathology world (tiles, captions, synthpath-clip).")
    sub = p.add_subparsers(dest="synth_command", metavar="{pretrain,generate}")
    sub.required = True

    pp = sub.add_parser("pretrain", help="train the small CLIP on the synthetic caption corpus",
                        description=PRETRAIN_HELP,
                        formatter_class=HelpFormatter)
    pp.add_argument("--config", metavar="YAML",
                    help="pretraining config (keys of PretrainConfig, optionally under "
                         "'pretrain:'); default: the built-in defaults, which equal "
                         "configs/synth/pretrain.yaml")
    pp.add_argument("--out", required=True, metavar="DIR",
                    help="output folder (CLIPModel + tokenizer + image processor + training.json)")
    pp.add_argument("--seed", type=int, help="training seed (data stream and init) "
                    "(default: the config's, 0)")
    pp.add_argument("--steps", type=int, help="optimizer steps (fresh pairs every step) (default: the config's, 600)")
    pp.add_argument("--batch-size", type=int, help="pairs per step (contrastive batch) (default: the config's, 128)")
    pp.add_argument("--lr", type=float, help="peak AdamW learning rate (cosine schedule) (default: the config's, 1e-3)")
    pp.add_argument("--threads", type=int,
                    help="torch threads of the training process (default 1; results are "
                         "bit-identical only for the same thread count)")
    pp.add_argument("--workers", type=int,
                    help="data processes rendering the next batches (default 1; 0 = inline)")
    pp.add_argument("--sanity", action="store_true",
                    help="after training, compute the sanity figures on synth-crc (zero-shot "
                         "from names / descriptions, 16-shot linear probe) into sanity.json")
    pp.set_defaults(func=cmd_pretrain)

    pg = sub.add_parser("generate", help="write synthetic tiles to PNG files",
                        description=GENERATE_HELP,
                        formatter_class=HelpFormatter)
    pg.add_argument("--out", required=True, metavar="DIR", help="output folder (required)")
    pg.add_argument("--dataset", metavar="NAME",
                    help="a registered synthetic data set (synth-crc, synth-crc-b2n, "
                         "synth-organs, synth-malignancy) (default: none, fresh tiles)")
    pg.add_argument("--split", default="test", choices=["train", "val", "test"],
                    help="split to take items from (with --dataset; default test)")
    pg.add_argument("--class", dest="cls", metavar="NAME",
                    help="class name (with --dataset: only that class; otherwise the class "
                         "profile to render fresh tiles from) (default: every class)")
    pg.add_argument("-n", "--num", type=int, default=8, help="tiles (per class with --dataset)")
    pg.add_argument("--domain", default="colon",
                    help="stain / organ domain for fresh tiles: colon, breast, stomach, lung")
    pg.add_argument("--size", type=int, default=64, help="tile side in pixels (fresh tiles)")
    pg.add_argument("--seed", type=int, default=0, help="first seed (fresh tiles)")
    pg.set_defaults(func=cmd_generate)
    return p


def cmd_pretrain(args) -> int:
    from medadapt.synth.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig.from_yaml(args.config) if args.config else PretrainConfig()
    for key, attr in (("seed", "seed"), ("steps", "steps"), ("batch_size", "batch_size"),
                      ("lr", "lr"), ("threads", "threads"), ("workers", "workers")):
        v = getattr(args, key)
        if v is not None:
            setattr(cfg, attr, v)
    if cfg.steps <= 0 or cfg.batch_size < 2:
        raise UserError("synth pretrain: --steps must be > 0 and --batch-size >= 2")
    out = Path(args.out)
    pretrain(cfg, out)
    if args.sanity:
        from medadapt.backbones import load_backbone
        from medadapt.synth.pretrain import sanity
        res = sanity(load_backbone(str(out)))
        write_text(out / "sanity.json", json.dumps(res, indent=1))
        print(f"sanity on synth-crc test ({res['n_test']} tiles, chance {res['chance']:.1%}): "
              f"zero-shot names {res['zero_shot_names']:.1%}, descriptions "
              f"{res['zero_shot_descriptions']:.1%}, 16-shot linear probe "
              f"{res['linear_probe_16shot']:.1%}")
    return 0


def _grid(tiles, cols: int = 8):
    import numpy as np
    n = len(tiles)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    h, w = tiles[0].shape[:2]
    g = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        g[r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = t
    return g


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def cmd_generate(args) -> int:
    import numpy as np
    from PIL import Image

    if args.num <= 0:
        raise UserError("synth generate: -n must be > 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiles, written = [], 0
    if args.dataset:
        from medadapt.data.sources import load_dataset
        if not args.dataset.startswith("synth-"):
            raise UserError(f"synth generate: --dataset must be a synthetic data set "
                            f"(synth-crc, ...), got {args.dataset!r}")
        ds = load_dataset(args.dataset)
        classes = list(range(ds.num_classes))
        if args.cls:
            lower = [c.lower() for c in ds.classnames]
            if args.cls.lower() not in lower:
                raise UserError(f"class {args.cls!r} not in {args.dataset}; valid: "
                                f"{', '.join(ds.classnames)}")
            classes = [lower.index(args.cls.lower())]
        info = []
        for c in classes:
            for i in ds.indices(args.split, [c])[:args.num]:
                r = ds.records[i]
                img = ds.load_image(i)
                p = out / _safe(ds.classnames[c]) / (_safe(r.id.replace("/", "_")) + ".png")
                make_dir(p.parent)
                with replacing(p) as tmp:
                    img.save(tmp, format="PNG")
                tiles.append(np.asarray(img))
                info.append({"file": str(p.relative_to(out)), "id": r.id,
                             "class": ds.classnames[c], "domain": r.domain,
                             "concepts": list(r.concepts), "attrs": ds.meta["attrs"][i]})
                written += 1
    else:
        from medadapt.synth.classes import BY_NAME, MALIGNANCY_CLASSES, sample_binary
        from medadapt.synth.tiles import get_domain, render_tile
        if not args.cls:
            raise UserError("synth generate: pass --dataset NAME or --class NAME")
        valid = list(BY_NAME) + MALIGNANCY_CLASSES
        name = next((v for v in valid if v.lower() == args.cls.lower()), None)
        if name is None:
            raise UserError(f"unknown synth class {args.cls!r}; valid: {', '.join(valid)}")
        get_domain(args.domain)
        if args.size < 16:
            raise UserError("synth generate: --size must be >= 16")
        info = []
        for k in range(args.num):
            rng = np.random.default_rng([args.seed + k, 11])
            attrs = (sample_binary(name, rng, args.domain if args.domain != "colon" else None)
                     if name in MALIGNANCY_CLASSES else BY_NAME[name].sample(rng))
            t = render_tile(attrs, args.seed + k, args.size, args.domain)
            p = out / _safe(name) / f"{args.domain}_{args.seed + k:05d}.png"
            make_dir(p.parent)
            with replacing(p) as tmp:
                Image.fromarray(t).save(tmp, format="PNG")
            tiles.append(t)
            info.append({"file": str(p.relative_to(out)), "class": name, "domain": args.domain,
                         "seed": args.seed + k, "attrs": attrs})
            written += 1
    if not tiles:
        raise UserError(f"synth generate: nothing to write (no {args.split} items)")
    with replacing(out / "grid.png") as tmp:
        Image.fromarray(_grid(tiles)).save(tmp, format="PNG")
    write_text(out / "tiles.json", json.dumps(info, indent=1))
    print(f"wrote {written} tiles to {out} (contact sheet: {out / 'grid.png'})")
    return 0
