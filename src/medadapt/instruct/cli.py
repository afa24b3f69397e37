"""``medadapt instruct build | train | eval | merge`` (PathInsight pipeline, Wu et al.).

:func:`add_parser` plugs the ``instruct`` command into medadapt's CLI; :func:`main` runs it on its
own (``python -m medadapt.instruct.cli ...``). Every option's default is shown in ``--help``;
options left unset fall back to the config (``--config FILE.yaml``, then the packaged
``default.yaml``), and ``--set key=value`` overrides any config key.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from medadapt.errors import UserError
from medadapt.helpfmt import HelpFormatter
from medadapt.instruct.config import BuildConfig, EvalConfig, TrainConfig

_B, _T, _E = BuildConfig(), TrainConfig(), EvalConfig()


class _Fmt(HelpFormatter):
    """Wrap one-paragraph descriptions; keep multi-line examples (epilogs) as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _safe(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """User errors -> one line on stderr and exit code 2 (no traceback)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except UserError as e:
            from medadapt.safeio import one_line
            msg = one_line(" ".join(str(e).split()))
            print(f"medadapt instruct {args.instruct_cmd}: error: {msg}", file=sys.stderr)
            return 2
    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _common(p: argparse.ArgumentParser, section: str) -> None:
    p.add_argument("--config", metavar="FILE.yaml", default=None,
                   help=f"YAML with a '{section}:' section (see configs/instruct/); its keys "
                        "override the packaged defaults (default: none)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override one config key, dotted for nested keys, e.g. --set lora.r=16; "
                        "repeatable; applied last (default: none)")


# --- build --------------------------------------------------------------------------------------
def cmd_build(args: argparse.Namespace) -> int:
    """Build the ChatML instruction data, split, stats and exports."""
    from medadapt.instruct import config as C
    from medadapt.instruct.build import build
    from medadapt.instruct.sources import OPTIONS, parse_spec

    if args.list_sources:
        for kind, opts in OPTIONS.items():
            print(f"{kind:13s} {opts}")
        return 0
    if not args.out:
        raise UserError("--out DIR is required")
    cli: dict[str, Any] = {"seed": args.seed, "max_chars": args.max_chars, "image_paths": args.image_paths}
    if args.source:
        cli["sources"] = [parse_spec(s) for s in args.source]
    if args.split:
        try:
            tr, va, te = (float(x) for x in args.split.split(","))
        except ValueError:
            raise UserError(f"--split {args.split!r}: expected three numbers, e.g. 0.8,0.1,0.1") from None
        cli["split"] = {"train": tr, "val": va, "test": te}
    if args.no_dedup:
        cli["dedup"] = False
    if args.skip_bad:
        cli["skip_bad"] = True
    if args.export is not None:
        cli["export"] = [] if args.export in ("", "none") else args.export.split(",")
    if args.clip_backbone:
        cli["clip_filter"] = {"backbone": args.clip_backbone, "top_n": args.clip_top_n,
                              "he_only": args.clip_he_only,
                              "sources": args.clip_sources.split(",") if args.clip_sources else []}
    cfg = C.load("build", args.config, args.set, cli)
    st = build(cfg, args.out, overwrite=args.overwrite)
    print(f"wrote {st['n_items']} items to {args.out} ("
          + ", ".join(f"{k} {v}" for k, v in st["per_split"].items()) + ")")
    for key, n in sorted(st["per_task"].items()):
        print(f"  {key}: {n}")
    if st["skipped"]:
        print("skipped (bad input): " + ", ".join(f"{k} {v}" for k, v in st["skipped"].items()))
    if st["cleaned"]:
        print("cleaned: " + ", ".join(f"{k} {v}" for k, v in st["cleaned"].items()))
    return 0


def _build_parser(sub) -> None:
    p = sub.add_parser(
        "build", help="build ChatML instruction data from pathology sources",
        formatter_class=_Fmt,
        description="Turn classification folders / CSVs, caption CSVs, PathVQA, VQA CSVs and "
                    "LLaVA-Med conversations into one ChatML JSONL (messages + images, <image> "
                    "placeholder), cleaned, with a fixed train/val/test split, a stats report and "
                    "LLaMA-Factory / ms-swift exports (PathInsight Section 2.1).",
        epilog="example:\n  medadapt instruct build --out data/pi \\\n"
               "    --source kind=class-folder,path=../shared/data/crc-val-he-7k-sample,labels=crc,name=crc \\\n"
               "    --source kind=pathvqa,path=pvqa/pvqa_test.json,images=pvqa/images,limit=200\n"
               "  medadapt instruct build --list-sources   # every kind and its options")
    p.add_argument("--source", action="append", metavar="kind=K,path=P[,key=value...]",
                   help="a source, repeatable; kinds: class-folder, class-csv, caption-csv, "
                        "pathvqa, vqa-csv, llava-med, chatml; common keys: name= (default: file or "
                        "folder name), limit=N (first N items), split=train|val|test (force one "
                        "split); --list-sources shows each kind's keys (default: the config's "
                        "'sources' list)")
    p.add_argument("--list-sources", action="store_true", help="list source kinds and their options, then exit")
    p.add_argument("--out", metavar="DIR", help="output folder (required)")
    p.add_argument("--seed", type=int, default=None, help=f"seed for prompt phrasing and split (default: {_B.seed})")
    p.add_argument("--split", metavar="TRAIN,VAL,TEST", default=None,
                   help="split fractions, by image and per source (default: 0.8,0.1,0.1)")
    p.add_argument("--max-chars", type=int, default=None,
                   help=f"drop items longer than this many characters (default: {_B.max_chars})")
    p.add_argument("--no-dedup", action="store_true", help="keep duplicate items (default: duplicates dropped)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip and count bad items (missing image, malformed JSON line, unknown role, "
                        "empty answer) instead of stopping at the first (default: stop with file:line)")
    p.add_argument("--export", default=None, metavar="LIST",
                   help="comma list of exporters: llamafactory, swift; 'none' for none "
                        "(default: llamafactory,swift)")
    p.add_argument("--image-paths", choices=["absolute", "relative"], default=None,
                   help=f"how image paths are written (default: {_B.image_paths})")
    p.add_argument("--clip-backbone", metavar="SPEC", default=None,
                   help="run the CLIP filters with this medadapt backbone (biomedclip, plip, hf:PATH...) "
                        "(default: no CLIP filtering)")
    p.add_argument("--clip-top-n", type=int, default=None,
                   help="keep the N items with the highest image-answer similarity (default: all)")
    p.add_argument("--clip-he-only", action="store_true",
                   help="keep only images a zero-shot prompt calls H&E (default: off)")
    p.add_argument("--clip-sources", default=None, metavar="NAMES",
                   help="comma list of source names the CLIP filters apply to (default: all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing built data set in --out (default: refuse)")
    _common(p, "build")
    p.set_defaults(func=_safe(cmd_build))


# --- train --------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune a multimodal LLM on the built data."""
    from medadapt.instruct import config as C
    from medadapt.instruct.train import train

    cli: dict[str, Any] = {
        "method": args.method, "learning_rate": args.lr, "epochs": args.epochs,
        "max_steps": args.max_steps, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "max_length": args.max_length, "dtype": args.dtype, "deepspeed": args.deepspeed,
        "lora.r": args.lora_r, "lora.alpha": args.lora_alpha, "lora.dropout": args.lora_dropout,
        "seed": args.seed,
    }
    if args.lora_targets:
        cli["lora.target_modules"] = (args.lora_targets if args.lora_targets == "all-linear"
                                      else args.lora_targets.split(","))
    if args.freeze_vision:
        cli["freeze_vision"] = True
    if args.merge:
        cli["merge_lora"] = True
    if args.skip_bad:
        cli["skip_bad"] = True
    if args.freeze_llm:
        cli["freeze_llm"] = True
    cfg = C.load("train", args.config, args.set, cli, key=args.section)
    s = train(cfg, args.model, args.data, args.out, resume=args.resume, overwrite=args.overwrite)
    losses = s["losses"]
    print(f"trained {s['method']} on {s['n_train']} items, {s['steps']} steps, "
          f"{s['n_trainable_params']:,} / {s['n_params']:,} parameters trainable")
    if losses:
        print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    if s["skipped"]:
        print("skipped (bad input): " + ", ".join(f"{k} {v}" for k, v in s["skipped"].items()))
    print(f"model: {s['final']}" + (f"  merged: {s['merged']}" if s["merged"] else ""))
    return 0


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="fine-tune a multimodal LLM (full, LoRA or QLoRA)",
        formatter_class=_Fmt,
        description="Supervised fine-tuning of any Hugging Face image-text-to-text model (LLaVA-1.5-hf, "
                    "Qwen2-VL, InternVL, ...) on ChatML data; loss on assistant tokens only; image "
                    "tokens never truncated. Defaults follow PathInsight Section 2.2 (lr 1e-5, batch 2, "
                    "warm-up 0.05, 3 epochs, sequence 2048, full fine-tuning with the ViT trainable). "
                    "Scale out with `accelerate launch -m medadapt instruct train ...` (see docs/instruct.md).",
        epilog="example:\n  medadapt instruct train --model llava-hf/llava-1.5-7b-hf --data data/pi "
               "--out runs/llava-lora --method lora --lr 2e-4")
    p.add_argument("--model", required=True, metavar="ID_OR_DIR",
                   help="hub id or local folder of an image-text-to-text model (required)")
    p.add_argument("--data", required=True, metavar="DIR_OR_JSONL",
                   help="built folder (train.jsonl, val.jsonl for validation loss) or one JSONL (required)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run folder: checkpoints/, final/ (model or adapter + processor), train_summary.json (required)")
    p.add_argument("--method", choices=["full", "lora", "qlora"], default=None,
                   help=f"full fine-tuning, LoRA, or QLoRA (needs bitsandbytes + CUDA) (default: {_T.method})")
    p.add_argument("--freeze-vision", action="store_true",
                   help="full method: keep the vision tower frozen (default: trainable, as the paper)")
    p.add_argument("--freeze-llm", action="store_true",
                   help="full method: keep the language model frozen; with --freeze-vision only the "
                        "projector trains (LLaVA stage-1 pre-training) (default: trainable)")
    p.add_argument("--section", default=None, metavar="NAME",
                   help="read the training keys from section NAME of --config instead of 'train', "
                        "e.g. stage1 of configs/instruct/llava-two-stage.yaml (default: train)")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {_T.learning_rate})")
    p.add_argument("--epochs", type=float, default=None, help=f"training epochs (default: {_T.epochs:g})")
    p.add_argument("--max-steps", type=int, default=None,
                   help=f"stop after this many optimizer steps, overriding --epochs when > 0 (default: {_T.max_steps})")
    p.add_argument("--batch-size", type=int, default=None, help=f"per-device batch size (default: {_T.batch_size})")
    p.add_argument("--grad-accum", type=int, default=None, help=f"gradient accumulation steps (default: {_T.grad_accum})")
    p.add_argument("--max-length", type=int, default=None,
                   help=f"maximum tokens per item; text after the last image is cut, never image tokens (default: {_T.max_length})")
    p.add_argument("--lora-r", type=int, default=None, help=f"LoRA rank (default: {_T.lora.r})")
    p.add_argument("--lora-alpha", type=int, default=None, help=f"LoRA alpha (default: {_T.lora.alpha})")
    p.add_argument("--lora-dropout", type=float, default=None, help=f"LoRA dropout (default: {_T.lora.dropout})")
    p.add_argument("--lora-targets", default=None, metavar="NAMES",
                   help="all-linear or a comma list of module names, e.g. q_proj,v_proj (default: all-linear, "
                        "vision tower included; --set lora.vision=false leaves it out)")
    p.add_argument("--merge", action="store_true",
                   help="LoRA: also write OUT/merged, the adapter merged into the base (default: adapter only)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None,
                   help="weights dtype; auto = bfloat16 on a supporting GPU, else float32 (default: auto)")
    p.add_argument("--deepspeed", metavar="FILE", default=None,
                   help="DeepSpeed config (JSON or YAML, e.g. configs/instruct/ds_zero3.yaml) (default: none)")
    p.add_argument("--seed", type=int, default=None, help=f"random seed (default: {_T.seed})")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from OUT/checkpoints' last checkpoint, or from CHECKPOINT (default: start fresh)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `instruct train` output in --out (refused if the folder "
                   "holds anything else; the old one is restored if the new run fails) "
                   "(default: refuse)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip and count bad items, including ones whose image tokens do not fit "
                        "--max-length (default: stop with file:line)")
    _common(p, "train")
    p.set_defaults(func=_safe(cmd_train))


# --- eval ---------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    """Generate greedily, score, compare models."""
    from medadapt.instruct import config as C
    from medadapt.instruct.eval import evaluate

    cli = {"split": args.split, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
           "limit": args.limit, "dtype": args.dtype}
    cfg = C.load("eval", args.config, args.set, cli)
    if args.model and not args.data:
        raise UserError("--data is required with --model")
    res = evaluate(args.model or [], args.data, args.out, cfg, labels_path=args.labels,
                   results=args.results, skip_bad=args.skip_bad)
    from medadapt.instruct.eval import comparison_markdown
    print(comparison_markdown(res["comparison"]), end="")
    print(f"results in {args.out} (comparison.md, <model>/metrics.json, <model>/predictions.jsonl)")
    return 0


def _eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate base and fine-tuned models, Table 2 style",
        formatter_class=_Fmt,
        description=(
            "Greedy generation over a split, answers scored per task and source, and a comparison\n"
            "table of all models (PathInsight Section 3, Table 2). metrics.json keys and scorers:\n"
            "  classification: answers mapped to labels (exact, synonym, fuzzy; unparseable counted,\n"
            "    never a prediction) -> pathinsight_precision / _recall / _f1 = PathInsight Table 2's\n"
            "    definition (micro: precision = correct / parseable answers, recall = correct / items);\n"
            "    accuracy, macro and per-class scores (scikit-learn) beside them\n"
            "  caption, conversation: llava_med_bleu1 = LLaVA-Med's released scorer (nltk sentence\n"
            "    BLEU-1 after its normalize_word); strict_bleu1 = medadapt's (raw lower-cased tokens);\n"
            "    sacrebleu corpus BLEU-1/4; ROUGE-1/L precision, recall, F1 (rouge-score)\n"
            "  vqa: the keys of `medadapt instruct pathvqa` (LLaVA-Med's and Quilt-LLaVA's released\n"
            "    scorers, medadapt's strict rules)\n"
            "Each column of the table names its scorer: [LLaVA-Med], [Quilt-LLaVA], [PathInsight] =\n"
            "that anchor's released code or paper definition (compare these with published tables);\n"
            "'strict' = medadapt's rule. The legend under the table gives each column's key.\n"
            "See docs/instruct.md, 'Metrics'."),
        epilog="example:\n  medadapt instruct eval --data data/pi --out runs/eval "
               "--model base=llava-hf/llava-1.5-7b-hf --model lora=runs/llava-lora/final")
    p.add_argument("--model", action="append", metavar="[NAME=]ID_OR_DIR",
                   help="model to evaluate: hub id, model folder or LoRA adapter folder; repeatable "
                        "(default: none, then --results is needed)")
    p.add_argument("--data", metavar="DIR_OR_JSONL", default=None,
                   help="built folder (uses SPLIT.jsonl and labels.json) or one JSONL (required with --model)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (required)")
    p.add_argument("--labels", metavar="labels.json", default=None,
                   help="label sets for classification mapping (default: DATA/labels.json)")
    p.add_argument("--results", action="append", metavar="metrics.json", default=None,
                   help="earlier metrics.json to add to the comparison table; repeatable (default: none)")
    p.add_argument("--split", default=None, help=f"split to evaluate (default: {_E.split})")
    p.add_argument("--batch-size", type=int, default=None, help=f"generation batch size (default: {_E.batch_size})")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"maximum generated tokens per answer (default: {_E.max_new_tokens})")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N items (default: all)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None,
                   help="weights dtype (default: auto)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad items (default: stop with file:line)")
    _common(p, "eval")
    p.set_defaults(func=_safe(cmd_eval))


# --- pathvqa -------------------------------------------------------------------------------------
def cmd_pathvqa(args: argparse.Namespace) -> int:
    """PathVQA evaluation with LLaVA-Med's released scorer (and Quilt-LLaVA's, medadapt's strict rules)."""
    from medadapt.instruct import config as C
    from medadapt.instruct.eval import comparison_markdown
    from medadapt.instruct.pathvqa import evaluate_pathvqa

    cli = {"split": args.split, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
           "limit": args.limit, "dtype": args.dtype}
    cfg = C.load("eval", args.config, args.set, cli)
    res = evaluate_pathvqa(args.pathvqa, args.out, cfg, args.model, args.predictions, args.images)
    print(f"PathVQA {cfg.split}: {res['n']} questions ({res['n_without_answer']} without an answer left out)")
    print(comparison_markdown(res["comparison"]), end="")
    print(f"results in {args.out} (comparison.md, <model>/metrics.json, <model>/predictions.jsonl)")
    return 0


def _pathvqa_parser(sub) -> None:
    p = sub.add_parser(
        "pathvqa", help="PathVQA scored with LLaVA-Med's released scorer (closed acc, open recall), "
                        "Quilt-LLaVA's yes/no rule and medadapt's strict rules",
        formatter_class=_Fmt,
        description=(
            "Read PathVQA's own split (pvqa_SPLIT.json, LXMERT layout), let each model answer every\n"
            "question greedily, or read answers from a file, and score them. Questions whose reference\n"
            "is yes/no are closed, the rest open. metrics.json keys and their scorers:\n"
            "  LLaVA-Med's released scorer (microsoft/LLaVA-Med b9a98a7, llava/eval/run_eval.py),\n"
            "  reproduced exactly, quirks included -- compare these with LLaVA-Med-style tables:\n"
            "    llava_med_closed_accuracy   right when the reference word is a substring of the answer\n"
            "                                ('no' inside 'not'); an answer naming both words is right\n"
            "    llava_med_open_recall       reference words found in the answer (LLaVA-Med Table 4)\n"
            "    llava_med_open_precision, llava_med_open_f1, llava_med_open_bleu1\n"
            "    llava_med_open_exact_match  LLaVA-Med's 'exact match': distinct reference words found /\n"
            "                                answer words -- NOT string equality\n"
            "  Quilt-LLaVA's released scorer (quilt_eval.py; its open metrics equal LLaVA-Med's):\n"
            "    quilt_llava_closed_accuracy the answer means 'no' iff it has the word no or not\n"
            "  medadapt's strict rules:\n"
            "    strict_closed_accuracy      the reference word is a word of the answer, the other is not\n"
            "    strict_open_exact_match, strict_exact_match   string equality after medadapt's\n"
            "                                normaliser (open / all questions)\n"
            "The table's columns say whose scorer made them; see docs/instruct.md, 'Metrics'."),
        epilog="examples:\n  medadapt instruct pathvqa --pathvqa data/pathvqa --images data/pathvqa/images "
               "--out runs/pvqa --model lora=runs/llava-lora/final\n"
               "  medadapt instruct pathvqa --pathvqa data/pathvqa --out runs/pvqa "
               "--predictions llava-med=answers.jsonl   # id+prediction or question_id+text")
    p.add_argument("--pathvqa", required=True, metavar="DIR_OR_JSON",
                   help="folder with pvqa_{train,val,test}.json, or one such file (required)")
    p.add_argument("--images", metavar="DIR", default=None,
                   help="PathVQA images <img_id>.jpg/.png (needed with --model; default: DIR/images)")
    p.add_argument("--split", default=None, help="PathVQA split: train, val or test (default: test)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (required)")
    p.add_argument("--model", action="append", metavar="[NAME=]ID_OR_DIR", default=None,
                   help="model to evaluate (hub id, model or adapter folder); repeatable (default: none)")
    p.add_argument("--predictions", action="append", metavar="[NAME=]FILE.jsonl", default=None,
                   help="answers made elsewhere: JSONL with id + prediction (medadapt) or question_id + text "
                        "(LLaVA-Med); repeatable (default: none)")
    p.add_argument("--batch-size", type=int, default=None, help=f"generation batch size (default: {_E.batch_size})")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"maximum generated tokens per answer (default: {_E.max_new_tokens})")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions (default: all)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None,
                   help="weights dtype (default: auto)")
    _common(p, "eval")
    p.set_defaults(func=_safe(cmd_pathvqa))


# --- merge --------------------------------------------------------------------------------------
def cmd_merge(args: argparse.Namespace) -> int:
    """Merge a LoRA adapter into its base model."""
    from medadapt.instruct.train import is_adapter, merge_lora

    if not is_adapter(args.adapter):
        raise UserError(f"{args.adapter}: not a peft adapter folder (no adapter_config.json)")
    print(f"merged model: {merge_lora(args.adapter, args.out)}")
    return 0


def _merge_parser(sub) -> None:
    p = sub.add_parser("merge", help="merge a LoRA adapter into its base model",
                       description="Load the base model named in the adapter's adapter_config.json, merge "
                                   "the LoRA weights (peft merge_and_unload) and save a plain model folder.")
    p.add_argument("--adapter", required=True, metavar="DIR", help="adapter folder, e.g. OUT/final (required)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the merged model (required)")
    p.set_defaults(func=_safe(cmd_merge))


def add_parser(subparsers) -> None:
    """Add ``instruct`` with ``build`` / ``train`` / ``eval`` / ``merge`` to a subparsers object."""
    p = subparsers.add_parser(
        "instruct", help="pathology instruction data, multimodal-LLM fine-tuning and evaluation (PathInsight)",
        description="PathInsight pipeline (Wu et al.): build ChatML instruction data, fine-tune a "
                    "multimodal LLM (full / LoRA / QLoRA), evaluate base vs fine-tuned. See docs/instruct.md.")
    sub = p.add_subparsers(dest="instruct_cmd", metavar="{build,train,eval,merge,pathvqa}")
    sub.required = True
    _build_parser(sub)
    _train_parser(sub)
    _eval_parser(sub)
    _merge_parser(sub)
    _pathvqa_parser(sub)


def main(argv: list[str] | None = None) -> int:
    """Run ``instruct`` on its own: ``python -m medadapt.instruct.cli build ...``."""
    parser = argparse.ArgumentParser(prog="medadapt")
    add_parser(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "instruct":
        argv = ["instruct", *argv]
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
