"""Benchmark: one CoOp training step's text half on a ViT-B/16 open_clip text tower, medadapt
vs the official CoOp text path, before and after running the open_clip stack sequence-first.

The official CoOp ``TextEncoder`` (KaiyangZhou/CoOp ``trainers/coop.py``) adds the positional
embedding to the prompt embeddings, permutes to ``[L, B, D]`` and runs CLIP's transformer, whose
attention projects contiguous sequence-first activations (one ``mm`` per projection). open_clip
runs its stacks batch-first, and ``nn.MultiheadAttention`` then projects a transposed view; when
that view needs grad (the learned context) ``torch.matmul`` runs it as a batched ``aten::bmm``
over L small products, forward and backward. medadapt now switches open_clip's stacks to
sequence-first (``medadapt.backbones.openclip.sequence_first``). This script:

* builds a random-weight open_clip ``ViT-B-16`` (the full-size text tower: 12 layers, width 512,
  context 77), CoOp with 4 context tokens over 4 classes, a batch of 32 cached image features;
* times the step (forward + backward of CoOp's loss) with the stack batch-first (``before``, as
  open_clip builds it) and sequence-first (``after``), and the official-style text path (always
  sequence-first, as OpenAI CLIP runs it), repetitions interleaved (the CPU is shared), min kept;
* checks the text features and the context gradient of both layouts agree within 1e-6;
* counts ``aten::bmm`` time in a profile of each.

Writes ``benchmarks/results/text_step.json``.

    python benchmarks/text_step.py [--threads 1] [--reps 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--model", default="ViT-B-16", help="open_clip architecture (random init)")
    ap.add_argument("--out", default=str(HERE / "results" / "text_step.json"))
    args = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(args.threads)
    import open_clip
    from torch.profiler import ProfilerActivity, profile

    from _machine import machine
    from medadapt.backbones.openclip import OpenCLIPBackbone
    from medadapt.data.texts import ClassTexts
    from medadapt.methods import get_method
    from medadapt.methods.base import Batch

    torch.manual_seed(0)
    model, _, pre = open_clip.create_model_and_transforms(args.model)
    tok = open_clip.get_tokenizer(args.model)
    bb = OpenCLIPBackbone(model, tok, pre, pre, args.model, args.model)  # sequence-first now
    names = ["adipose", "lymphocytes", "tumor epithelium", "stroma"]
    torch.manual_seed(1)
    m = get_method("coop")(bb, ClassTexts(names, ["a photo of {}."]), {"n_ctx": 4})
    feats, labels = torch.randn(32, bb.embed_dim), torch.randint(0, 4, (32,))
    batch = Batch(labels=labels, features=feats)
    m.train()

    def layout(seq_first: bool):
        tr = model.transformer
        tr.batch_first = not seq_first
        for b in tr.resblocks:
            b.attn.batch_first = not seq_first

    def medadapt_step():
        m.prompt.ctx.grad = None
        loss, _ = m.loss(batch)
        loss.backward()
        return loss

    ids = m.prompt.ids

    def official_step():  # CoOp's TextEncoder + CustomCLIP forward, on the same weights, in
        # OpenAI CLIP's sequence-first layout whatever the arm
        m.prompt.ctx.grad = None
        was = model.transformer.batch_first
        layout(True)
        x = m.prompt.embeddings() + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0]), ids.argmax(-1)] @ model.text_projection
        logits = bb.logit_scale * F.normalize(feats, dim=-1) @ F.normalize(x, dim=-1).T
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        layout(not was)
        return loss

    def timed_once(fn, seq_first):
        layout(seq_first)
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def bmm_share(fn):
        with profile(activities=[ProfilerActivity.CPU]) as p:
            fn()
        ev = p.key_averages()
        total = sum(e.self_cpu_time_total for e in ev)
        bmm = sum(e.self_cpu_time_total for e in ev if e.key == "aten::bmm")
        return round(bmm / total, 3) if total else None

    out = {"model": args.model, "classes": len(names), "n_ctx": 4, "batch": 32,
           "threads": args.threads, "reps": args.reps}
    arms = (("before", False), ("after", True))
    for arm, seq_first in arms:
        layout(seq_first)
        with torch.no_grad():
            txt = m.text_features().clone()
        medadapt_step()
        grad = m.prompt.ctx.grad.clone()
        out[arm] = {"layout": "sequence-first" if seq_first else "batch-first",
                    "bmm_share": bmm_share(medadapt_step), "text_features": txt, "grad": grad}
    # interleaved repetitions (the CPU is shared: load drifts), min over repetitions
    times = {k: [] for k in ("before", "after", "official")}
    for _ in range(args.reps):
        for arm, seq_first in arms:
            times[arm].append(timed_once(medadapt_step, seq_first))
        times["official"].append(timed_once(official_step, True))
    for arm, _ in arms:
        out[arm]["step_s"] = min(times[arm])
        out[arm]["step_s_all"] = times[arm]
    out["official_step_s"] = min(times["official"])
    out["official_step_s_all"] = times["official"]
    b, a = out["before"], out["after"]
    out["max_abs_diff_text_features"] = float((b.pop("text_features") - a.pop("text_features")).abs().max())
    out["max_abs_diff_ctx_grad"] = float((b.pop("grad") - a.pop("grad")).abs().max())
    out["equal_within_1e-6"] = out["max_abs_diff_text_features"] <= 1e-6 and out["max_abs_diff_ctx_grad"] <= 1e-6
    out["speedup"] = round(b["step_s"] / a["step_s"], 2)
    out["after_vs_official"] = round(a["step_s"] / out["official_step_s"], 2)
    out["before_vs_official"] = round(b["step_s"] / out["official_step_s"], 2)
    out["machine"] = machine()
    out["command"] = "python benchmarks/text_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    if not out["equal_within_1e-6"]:
        print("text_step: the two layouts disagree by more than 1e-6", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
