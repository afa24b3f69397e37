"""Sanity figures of a synthetic-world backbone (default: the shipped ``synthpath-clip``).

On the test split of ``synth-crc`` (9 classes, 100 tiles each): zero-shot accuracy from class
names (template "a histopathology image of {}."), from descriptions (mean of each class's
description embeddings, ``synth-crc.json``), and a 16-shot logistic-regression linear probe on
image features (C chosen on the 16-shot validation set; mean over 3 few-shot seeds). Writes
``benchmarks/results/synth_sanity.json``; the figures are quoted in
``src/medadapt/synth/MODEL_CARD.md``.

    python benchmarks/synth_sanity.py [--backbone synthpath-clip] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="synthpath-clip", help="backbone spec or folder")
    ap.add_argument("--dataset", default="synth-crc")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seeds", default="1,2,3", help="few-shot seeds of the linear probe")
    ap.add_argument("--others", action="store_true",
                    help="also report the same figures on synth-crc-b2n, synth-organs and "
                         "synth-malignancy (informative, under 'others')")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "synth_sanity.json"))
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(1)
    from medadapt.backbones import load_backbone
    from medadapt.synth.pretrain import machine_description, sanity

    t0 = time.perf_counter()
    bb = load_backbone(args.backbone)
    res = sanity(bb, args.dataset, shots=args.shots,
                 seeds=tuple(int(s) for s in args.seeds.split(",")))
    res.update({"backbone": args.backbone, "backbone_fingerprint": bb.fingerprint()[:16],
                "wall_s": round(time.perf_counter() - t0, 1), "machine": machine_description(),
                "command": "python " + " ".join([sys.argv[0].split("/work/main/")[-1]]
                                                + (argv if argv is not None else sys.argv[1:]))})
    if args.others:
        res["others"] = {}
        for name in ("synth-crc-b2n", "synth-organs", "synth-malignancy"):
            r = sanity(bb, name, shots=args.shots, seeds=(1,))
            res["others"][name] = r
            print(f"  {name}: names {r['zero_shot_names']:.1%}, descriptions "
                  f"{r['zero_shot_descriptions']:.1%}, {args.shots}-shot probe "
                  f"{r[f'linear_probe_{args.shots}shot']:.1%} (chance {r['chance']:.1%})")
    k = f"linear_probe_{args.shots}shot"
    res["ordering_ok"] = bool(res["chance"] < res["zero_shot_names"] < res["zero_shot_descriptions"]
                              and res[k] > 0.8)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"{args.backbone} on {args.dataset} test ({res['n_test']} tiles, chance "
          f"{res['chance']:.1%}): zero-shot names {res['zero_shot_names']:.1%}, descriptions "
          f"{res['zero_shot_descriptions']:.1%}, {args.shots}-shot linear probe {res[k]:.1%} "
          f"(+-{res[k + '_std']:.1%}) -> {args.out}")
    for name, v in res["per_class"].items():
        print(f"  {name:28s} names {v['names']:6.1%}  descriptions {v['descriptions']:6.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
