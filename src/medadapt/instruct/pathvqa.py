"""PathVQA evaluation as LLaVA-Med reports it, on PathVQA's own split, in one command.

LLaVA-Med (Li et al. 2023, Table 4) scores PathVQA per question type: closed (yes / no)
questions by accuracy, open questions by recall. Here the questions come straight from PathVQA's
``pvqa_{split}.json`` (LXMERT layout, as ``medadapt instruct build`` reads it), each model
answers greedily (:func:`medadapt.instruct.eval.generate`), and
:func:`medadapt.instruct.scoring.vqa_scores` scores them with LLaVA-Med's released scorer
(``llava_med_*`` keys: microsoft/LLaVA-Med b9a98a7 ``llava/eval/run_eval.py``, quirks included),
Quilt-LLaVA's yes/no rule (``quilt_llava_closed_accuracy``) and medadapt's strict rules
(``strict_*``); ``metrics.json`` names the scorer of each key under ``scorers``. Answers
produced elsewhere (a JSONL with ``id`` + ``prediction``, or LLaVA-Med's answer file with
``question_id`` + ``text``) are scored without a model, and without the images.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from medadapt.errors import UserError
from medadapt.instruct import scoring
from medadapt.instruct.config import EvalConfig, to_dict
from medadapt.instruct.records import BadItem, Record, iter_jsonl, validate, write_json, write_jsonl
from medadapt.safeio import write_text

NAME = "pathvqa"


def questions(path: str | Path, split: str = "test", images: str | Path | None = None,
              limit: int = 0, check_images: bool = True) -> tuple[list[Record], int]:
    """PathVQA questions of ``split`` as records; returns ``(records, n_without_answer)``."""
    from medadapt.instruct.sources import run_source

    if split not in ("train", "val", "test"):
        raise UserError(f"--split must be train, val or test, got {split!r}")
    p = Path(path).expanduser()
    f = p / f"pvqa_{split}.json" if p.is_dir() else p
    if not f.is_file():
        raise UserError(f"PathVQA file not found: {f}")
    spec: dict[str, Any] = {"kind": "pathvqa", "path": str(f), "name": NAME, "keep_split": False}
    if images is not None:
        spec["images"] = str(images)
    _, res = run_source(spec, random.Random(0))
    recs, empty = [], 0
    for it in res.items:
        if isinstance(it, BadItem):
            raise UserError(str(it))
        if not it.answer.strip():
            empty += 1
            continue
        recs.append(it)
    recs = recs[:limit] if limit else recs
    for r in recs:
        try:
            validate(r, check_images)
        except BadItem as e:
            raise UserError(f"{e} (PathVQA images: --images DIR with <img_id>.jpg/.png)") from None
    return recs, empty


def read_predictions(path: str | Path) -> dict[str, str]:
    """``id`` -> answer from our predictions.jsonl (``id``, ``prediction``) or LLaVA-Med's
    answers file (``question_id``, ``text``); ids with or without the ``pathvqa/`` prefix."""
    out: dict[str, str] = {}
    for n, obj in iter_jsonl(path):
        if isinstance(obj, BadItem):
            raise UserError(str(obj))
        qid = obj.get("id", obj.get("question_id")) if isinstance(obj, dict) else None
        ans = obj.get("prediction", obj.get("text")) if isinstance(obj, dict) else None
        if qid is None or ans is None:
            raise UserError(f"{path}:{n}: expected 'id' and 'prediction' (or 'question_id' and 'text')")
        qid = str(qid)
        out[qid if qid.startswith(NAME + "/") else f"{NAME}/{qid}"] = str(ans)
    return out


def score_predictions(records: list[Record], preds: list[str], name: str, source: str,
                      cfg: EvalConfig, out: Path, seconds: float | None = None) -> dict[str, Any]:
    """Write ``OUT/NAME/predictions.jsonl`` and ``metrics.json`` (results under ``vqa/pathvqa``)."""
    rows = [{"id": r.id, "task": "vqa", "source": NAME, "prompt": r.messages[-2]["content"],
             "reference": r.answer, "prediction": p,
             "answer_type": "closed" if scoring.is_closed(r.answer) else "open"}
            for r, p in zip(records, preds)]
    metrics = {"model": name, "path": source, "data": f"PathVQA {cfg.split}", "n": len(records),
               "skipped": {}, "generate_seconds": seconds,
               "results": {f"vqa/{NAME}": {"task": "vqa", **scoring.vqa_scores(preds, [r.answer for r in records])}},
               "config": to_dict(cfg)}
    write_jsonl(out / name / "predictions.jsonl", rows)
    write_json(out / name / "metrics.json", metrics)
    return metrics


def evaluate_pathvqa(path: str | Path, out: str | Path, cfg: EvalConfig, models: list[str] | None = None,
                     predictions: list[str] | None = None, images: str | Path | None = None
                     ) -> dict[str, Any]:
    """Score models (generated here) and / or prediction files on PathVQA's ``cfg.split``."""
    import time

    from medadapt.instruct.eval import comparison, comparison_markdown, generate, model_name

    if not models and not predictions:
        raise UserError("give --model and/or --predictions")
    out = Path(out)
    records, empty = questions(path, cfg.split, images, cfg.limit, check_images=bool(models))
    if not records:
        raise UserError(f"no PathVQA {cfg.split} questions to evaluate")
    all_metrics = []
    for spec in predictions or []:
        name, f = model_name(spec)
        got = read_predictions(f)
        missing = [r.id for r in records if r.id not in got]
        if missing:
            raise UserError(f"{f}: no prediction for {len(missing)} of {len(records)} questions "
                            f"(first: {missing[0]})")
        all_metrics.append(score_predictions(records, [got[r.id] for r in records], name, str(f), cfg, out))
    names = [model_name(m) for m in models or []]
    if len({n for n, _ in names} | {m["model"] for m in all_metrics}) != len(names) + len(all_metrics):
        raise UserError("two models / prediction files have the same name; give them names as NAME=PATH")
    from medadapt.instruct.train import load_for_inference

    for name, mpath in names:
        t0 = time.time()
        model, processor = load_for_inference(mpath, cfg.dtype, cfg.merge_lora)
        preds = generate(model, processor, records, cfg.batch_size, cfg.max_new_tokens)
        del model
        all_metrics.append(score_predictions(records, preds, name, mpath, cfg, out,
                                             round(time.time() - t0, 2)))
    table = comparison(all_metrics)
    write_json(out / "comparison.json", table)
    write_text(out / "comparison.md", comparison_markdown(table))
    return {"n": len(records), "n_without_answer": empty, "comparison": table,
            "models": [m["model"] for m in all_metrics]}
