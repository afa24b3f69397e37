"""Do CLIP-Adapter and CLIP-LoRA learn? (issue 11; docs/adapters.md)

16 shots, seed 1, ``synthpath-clip`` + ``synth-crc``; the real ``Engine`` and each method's ``fit``.

    python benchmarks/adapters_learn.py                 # CLIP-Adapter grid (seconds)
    python benchmarks/adapters_learn.py --lora 10:2e-4 10:1e-3 50:2e-4   # + CLIP-LoRA runs
                                                         # (n_iters_per_shot:lr; minutes each)

Writes ``benchmarks/results/adapters_learn.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lora", nargs="*", default=[], help="n_iters_per_shot:lr pairs")
    ap.add_argument("--shots", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from medadapt.backbones import load_backbone
    from medadapt.data.fewshot import ids_to_indices
    from medadapt.engine.features import FeatureCache
    from medadapt.engine.runner import Prepared, Runner
    from medadapt.engine.resolve import resolve
    from medadapt.engine.train import Engine
    from medadapt.methods import get_method

    cfg = resolve({"backbone": "synthpath-clip", "dataset": "synth-crc",
                   "method": {"name": "clip-adapter"}, "shots": args.shots})
    prep = Prepared(cfg, quiet=True)
    bb = load_backbone("synthpath-clip", device="cpu")
    runner = Runner(cfg, "/tmp/unused")
    runner.progress = False
    cache = FeatureCache()
    cmap = {c: c for c in range(prep.ds.num_classes)}
    train_idx = ids_to_indices(prep.ds, prep.fewshots[1]["train"])
    test_idx = prep.ds.indices("test", list(cmap))
    out = {"command": "python benchmarks/adapters_learn.py " + " ".join(
        ["--lora", *args.lora] if args.lora else []), "shots": args.shots,
        "logit_scale": float(bb.logit_scale), "clip_adapter": [], "clip_lora": []}

    def split(idx, pixels):
        return runner._split(prep, bb, idx, cmap, cache, pixels, "images")

    tr, te = split(train_idx, False), split(test_idx, False)
    eng = Engine(cfg["train"], progress=False)
    out["zero_shot"] = eng.accuracy(get_method("zero-shot")(bb, prep.texts, {}), te)
    base = {"backbone": "synthpath-clip", "dataset": "synth-crc", "shots": args.shots}
    lp_cfg = resolve({**base, "method": {"name": "linear-probe"}})
    lp = get_method("linear-probe")(bb, prep.texts, lp_cfg["method"])
    lp.fit(tr, None, Engine(lp_cfg["train"], progress=False, log=lambda s: None))
    out["linear_probe"] = eng.accuracy(lp, te)

    def adapter(final_relu, lr, epochs=200, scale=None):
        torch.manual_seed(1)
        m = get_method("clip-adapter")(bb, prep.texts, {"final_relu": final_relu})
        e = Engine({**cfg["train"], "lr": lr, "epochs": epochs, "checkpoint": False,
                    "grad_clip": 0.0}, progress=False, log=lambda s: None, seed=1)
        cls = type(bb)
        orig = cls.__dict__.get("logit_scale")
        if scale is not None:  # what the same schedule does at CLIP's temperature
            cls.logit_scale = property(lambda self: torch.tensor(float(scale)))
        try:
            e.train(m, tr)
            return e.accuracy(m, te)
        finally:
            if scale is not None:
                if orig is None:
                    del cls.logit_scale
                else:
                    cls.logit_scale = orig

    for final_relu in (True, False):
        for lr, epochs, scale in ((0.002, 200, None), (0.002, 200, 100.0), (0.05, 200, None),
                                  (0.1, 200, None), (0.2, 200, None), (0.1, 120, None)):
            out["clip_adapter"].append({"final_relu": final_relu, "lr": lr, "epochs": epochs,
                                        "logit_scale": scale or float(bb.logit_scale),
                                        "accuracy": adapter(final_relu, lr, epochs, scale)})
            print(out["clip_adapter"][-1], flush=True)

    if args.lora:
        trp, tep = split(train_idx, True), split(test_idx, True)
        for spec in args.lora:
            npi, lr = spec.split(":")
            torch.manual_seed(1)
            m = get_method("clip-lora")(bb, prep.texts, {"n_iters_per_shot": int(npi)})
            e = Engine({**resolve({**base, "method": {"name": "clip-lora"}})["train"],
                        "lr": float(lr), "checkpoint": False}, progress=False,
                       log=lambda s: None, seed=1)
            t0 = time.time()
            info = m.fit(trp, None, e)
            rec = {"n_iters_per_shot": int(npi), "lr": float(lr),
                   "loss_first_epoch": info["history"][0]["loss"],
                   "loss_last_epoch": info["history"][-1]["loss"],
                   "train_seconds": time.time() - t0, "accuracy": e.accuracy(m, tep)}
            out["clip_lora"].append(rec)
            print(rec, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "adapters_learn.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
