"""Evaluation: greedy generation over a split, scoring per task and source, comparison table.

PathInsight (Wu et al., Section 3, Table 2) compares base and fine-tuned models (full and LoRA)
on CRC classification (F1, recall), captioning (BLEU-1, ROUGE-1), PCam accuracy. Here every
model given is run greedily (``do_sample=False``) on the same items, its answers are scored with
:mod:`medadapt.instruct.scoring`, and the models are put side by side in ``comparison.md``.

Output folder::

    <model name>/predictions.jsonl   id, task, source, prompt, reference, prediction (+ mapped label)
    <model name>/metrics.json
    comparison.md comparison.json    one row per model, Table 2 style; each column names its
                                     scorer ([LLaVA-Med], [Quilt-LLaVA], [PathInsight] = that
                                     anchor's definition; "strict" = medadapt's), and
                                     ``scorers`` / the legend give the metrics.json key and scorer
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from medadapt.errors import UserError
from medadapt.instruct import scoring
from medadapt.instruct.config import EvalConfig, to_dict
from medadapt.instruct.encode import ChatEncoder, call_processor, stop_token_ids
from medadapt.instruct.records import Record, read_records, write_json, write_jsonl
from medadapt.safeio import write_text


def eval_file(data: str | Path, split: str) -> Path:
    p = Path(data)
    if p.is_dir():
        f = p / f"{split}.jsonl"
        if not f.is_file():
            raise UserError(f"{p}: no {split}.jsonl (build it with `medadapt instruct build`)")
        return f
    if not p.is_file():
        raise UserError(f"evaluation data not found: {p}")
    return p


def load_labels(path: str | Path | None) -> dict[str, Any]:
    if path is None or not Path(path).is_file():
        return {}
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    except RecursionError:
        raise UserError(f"{path}: malformed JSON (nested too deeply)") from None


@torch.inference_mode()
def generate(model, processor, records: list[Record], batch_size: int = 8,
             max_new_tokens: int = 128) -> list[str]:
    """Greedy answers to the last user turn of each record (earlier turns given as context)."""
    from tqdm import tqdm

    enc = ChatEncoder(processor)
    tok = getattr(processor, "tokenizer", processor)
    old_side = tok.padding_side
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = next(model.parameters()).device
    # stop on the model's own EOS ids and on every end-of-turn token training supervised
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stop = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
    stop += [t for t in stop_token_ids(processor) if t not in stop]
    outs: list[str] = []
    try:
        for i in tqdm(range(0, len(records), batch_size), desc="generate", unit="batch", disable=None):
            batch = records[i:i + batch_size]
            texts, images = [], []
            for r in batch:
                t, ims = enc.prompt(r)
                texts.append(t)
                images += ims
            kw: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
            if images:
                kw["images"] = images
            inputs = call_processor(processor, texts, kw)
            inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 num_beams=1, pad_token_id=pad, eos_token_id=stop or None)
            new = gen[:, inputs["input_ids"].shape[1]:]
            outs += [s.strip() for s in tok.batch_decode(new, skip_special_tokens=True)]
    finally:
        tok.padding_side = old_side
    return outs


def _classes_for(source: str, recs: list[Record], labels: dict[str, Any]) -> dict[str, Any]:
    if source in labels:
        return labels[source]["classes"]
    return {r.label: {"name": r.answer, "synonyms": []} for r in recs if r.label is not None}


def score(records: list[Record], preds: list[str], labels: dict[str, Any],
          cfg: EvalConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics per ``task/source`` group and per-item rows for predictions.jsonl."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[f"{r.task}/{r.source}"].append(i)
    rows = [{"id": r.id, "task": r.task, "source": r.source, "prompt": r.messages[-2]["content"],
             "reference": r.answer, "prediction": p} for r, p in zip(records, preds)]
    results: dict[str, Any] = {}
    for key, idx in sorted(groups.items()):
        task = key.split("/", 1)[0]
        recs = [records[i] for i in idx]
        ps, refs = [preds[i] for i in idx], [records[i].answer for i in idx]
        if task == "classification" and all(r.label is not None for r in recs):
            classes = _classes_for(recs[0].source, recs, labels)
            res = scoring.classification_scores(ps, [str(r.label) for r in recs], classes,
                                                cfg.fuzzy_cutoff)
            for i, m in zip(idx, res.pop("mapped")):
                rows[i].update({"label": records[i].label, "mapped_label": m["label"],
                                "match": m["level"]})
        elif task == "vqa":
            res = scoring.vqa_scores(ps, refs)
        else:
            res = scoring.text_scores(ps, refs)
        results[key] = {"task": task, **res}
    return results, rows


def model_name(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (name from the folder; ``.../final`` -> its parent's name)."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        return name, path
    p = Path(spec)
    name = p.parent.name if p.name in ("final", "merged") and p.parent.name else p.name
    return name or spec, spec


def evaluate(models: list[str], data: str | Path, out: str | Path, cfg: EvalConfig,
             labels_path: str | Path | None = None, results: list[str] | None = None,
             skip_bad: bool = False) -> dict[str, Any]:
    """Evaluate each model spec on the split; write predictions, metrics and the comparison."""
    from medadapt.instruct.train import load_for_inference

    out = Path(out)
    all_metrics: list[dict[str, Any]] = []
    for path in results or []:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"results file not found: {p}")
        try:
            m = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"--results {p}: not valid JSON ({e})") from None
        except RecursionError:
            raise UserError(f"--results {p}: not valid JSON (nested too deeply)") from None
        if not (isinstance(m, dict) and isinstance(m.get("model"), str)
                and isinstance(m.get("results"), dict)
                and all(isinstance(r, dict) and "task" in r for r in m["results"].values())):
            raise UserError(f"--results {p}: not a metrics.json written by `medadapt instruct "
                            "eval` (needs 'model' and 'results' with a 'task' per entry)")
        all_metrics.append(m)
    if models:
        f = eval_file(data, cfg.split)
        skipped: dict[str, int] = {}
        records = read_records(f, skip_bad=skip_bad, skipped=skipped)
        if cfg.limit:
            records = records[: cfg.limit]
        if not records:
            raise UserError(f"{f}: no items to evaluate")
        if labels_path is None and Path(data).is_dir():
            labels_path = Path(data) / "labels.json"
        labels = load_labels(labels_path)
        names = [model_name(m) for m in models]
        if len({n for n, _ in names}) != len(names):
            raise UserError("two models have the same name; give them names as NAME=PATH")
        for name, path in names:
            t0 = time.time()
            model, processor = load_for_inference(path, cfg.dtype, cfg.merge_lora)
            preds = generate(model, processor, records, cfg.batch_size, cfg.max_new_tokens)
            del model
            res, rows = score(records, preds, labels, cfg)
            metrics = {"model": name, "path": path, "data": str(f), "n": len(records),
                       "skipped": skipped, "generate_seconds": round(time.time() - t0, 2),
                       "results": res, "config": to_dict(cfg)}
            write_jsonl(out / name / "predictions.jsonl", rows)
            write_json(out / name / "metrics.json", metrics)
            all_metrics.append(metrics)
    if not all_metrics:
        raise UserError("nothing to evaluate: give --model and/or --results")
    table = comparison(all_metrics)
    write_json(out / "comparison.json", table)
    write_text(out / "comparison.md", comparison_markdown(table))
    return {"models": [m["model"] for m in all_metrics], "comparison": table}


# The comparison table's columns per task: (column label, key path in metrics.json, older key
# path read from results written before the keys were renamed -- only where it is the same
# computation, else None). The label says whose scorer made the number; ``scoring.SCORERS`` says
# exactly what it is, and the table's legend repeats it.
HEADLINE: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...] | None]]] = {
    # PathInsight Table 2 (F1, Recall) at the fuzzy mapping level; accuracy and macro-F1 beside it
    "classification": [("F1 [PathInsight]", ("fuzzy", "pathinsight_f1"), ("fuzzy", "micro_f1")),
                       ("Recall [PathInsight]", ("fuzzy", "pathinsight_recall"), ("fuzzy", "micro_recall")),
                       ("Acc", ("fuzzy", "accuracy"), None),
                       ("macro-F1", ("fuzzy", "macro_f1"), None),
                       ("F1 exact [PathInsight]", ("exact", "pathinsight_f1"), ("exact", "micro_f1")),
                       ("unparsed", ("counts", "unparseable"), None)],
    "caption": [("BLEU-1 [LLaVA-Med]", ("llava_med_bleu1",), None),
                ("BLEU-1 strict", ("strict_bleu1",), ("bleu1_nltk_sentence_mean",)),
                ("ROUGE-1", ("rouge1_f1",), None), ("ROUGE-1 R", ("rouge1_recall",), None)],
    "conversation": [("BLEU-1 [LLaVA-Med]", ("llava_med_bleu1",), None),
                     ("BLEU-1 strict", ("strict_bleu1",), ("bleu1_nltk_sentence_mean",)),
                     ("ROUGE-1", ("rouge1_f1",), None), ("ROUGE-1 R", ("rouge1_recall",), None)],
    # LLaVA-Med Table 4's PathVQA columns (closed accuracy, open recall) first, from its own scorer
    "vqa": [("closed acc [LLaVA-Med]", ("llava_med_closed_accuracy",), None),
            ("open recall [LLaVA-Med]", ("llava_med_open_recall",), None),
            ("open F1 [LLaVA-Med]", ("llava_med_open_f1",), None),
            ("open EM [LLaVA-Med]", ("llava_med_open_exact_match",), None),
            ("open BLEU-1 [LLaVA-Med]", ("llava_med_open_bleu1",), None),
            ("closed acc [Quilt-LLaVA]", ("quilt_llava_closed_accuracy",), None),
            ("closed acc strict", ("strict_closed_accuracy",), None),
            ("EM strict", ("strict_exact_match",), None)],
}

def _get(res: dict[str, Any], path: tuple[str, ...] | None) -> Any:
    if path is None:
        return None
    v: Any = res
    for k in path:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v


def comparison(all_metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows = models, columns = ``group: metric`` (Table 2 of the paper); ``scorers`` names, per
    column, the metrics.json key and the scorer that produced it. A column a results file lacks
    (written before that key existed) is None."""
    columns: list[str] = []
    scorers: dict[str, str] = {}
    rows = []
    for m in all_metrics:
        row: dict[str, Any] = {"model": m["model"]}
        for key, res in m["results"].items():
            for label, path, old in HEADLINE.get(res["task"], []):
                col = f"{key.split('/', 1)[1]} {label}"
                v = _get(res, path)
                row[col] = v if v is not None else _get(res, old)
                if col not in columns:
                    columns.append(col)
                    scorers[col] = f"{'.'.join(path)}: " + scoring.SCORERS.get(
                        path[-1], "medadapt (see docs/instruct.md, Metrics)")
        rows.append(row)
    return {"columns": columns, "rows": rows, "scorers": scorers}


def comparison_markdown(table: dict[str, Any]) -> str:
    cols = table["columns"]
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in table["rows"]:
        lines.append(f"| {r['model']} | " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    if table.get("scorers"):
        lines += ["", "Scorer of each column (metrics.json key: scorer); [LLaVA-Med], [Quilt-LLaVA] and "
                  "[PathInsight] columns are the ones to compare with those papers' tables:"]
        lines += [f"- {c}: {table['scorers'][c]}" for c in cols if c in table["scorers"]]
    return "\n".join(lines) + "\n"
