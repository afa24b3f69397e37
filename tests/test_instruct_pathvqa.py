"""PathVQA evaluation in one command, on PathVQA's own test split (text from ../shared/data/pathvqa-text;
images are not shipped, so answers come from a file, or a tiny model looks at synthetic images)."""
import json
from pathlib import Path

import pytest

from medadapt.instruct import scoring
from medadapt.instruct.cli import main
from medadapt.instruct.pathvqa import questions

PVQA = Path(__file__).parents[2] / "shared" / "data" / "pathvqa-text"


def test_predictions_file_scored_with_anchor_and_strict_keys(tmp_path, capsys):
    recs, empty = questions(PVQA, "test", limit=60, check_images=False)
    assert len(recs) == 60 and all(r.id.startswith("pathvqa/test_") for r in recs)
    closed = [r for r in recs if scoring.is_closed(r.answer)]
    opened = [r for r in recs if r not in closed]
    assert closed and opened
    rows = []
    for i, r in enumerate(recs):
        if r in closed:  # a sentence with the right word, or the wrong word
            other = "no" if scoring.normalize(r.answer) == "yes" else "yes"
            ans = f"The answer is {r.answer}." if i % 2 == 0 else other.capitalize()
        else:
            ans = r.answer.upper() if i % 2 == 0 else "unknown"
        rows.append({"question_id": r.id.split("/", 1)[1], "text": ans})  # LLaVA-Med answer-file keys
    f = tmp_path / "answers.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in rows))
    out = tmp_path / "eval"
    assert main(["pathvqa", "--pathvqa", str(PVQA), "--out", str(out), "--limit", "60",
                 "--predictions", f"ext={f}"]) == 0
    m = json.loads((out / "ext" / "metrics.json").read_text())["results"]["vqa/pathvqa"]
    even = lambda group: sum(recs.index(r) % 2 == 0 for r in group) / len(group)
    assert m["n_closed"] == len(closed)
    for k in ("llava_med_closed_accuracy", "quilt_llava_closed_accuracy", "strict_closed_accuracy"):
        assert m[k] == pytest.approx(even(closed)), k
    assert m["llava_med_open_recall"] == pytest.approx(even(opened))
    assert m["llava_med_open_f1"] == pytest.approx(even(opened))
    assert m["strict_open_exact_match"] == pytest.approx(even(opened))
    assert m["llava_med_open_bleu1"] is not None and "b9a98a7" in m["scorers"]["llava_med_open_bleu1"]
    table = (out / "comparison.md").read_text()
    assert "closed acc [LLaVA-Med]" in table and "open recall [LLaVA-Med]" in table and "EM strict" in table
    assert "- pathvqa open EM [LLaVA-Med]: llava_med_open_exact_match: LLaVA-Med released scorer" in table
    assert set(json.loads((out / "comparison.json").read_text())["scorers"]) >= {
        "pathvqa closed acc [LLaVA-Med]", "pathvqa closed acc [Quilt-LLaVA]", "pathvqa closed acc strict"}
    # a prediction missing is a one-line error, exit 2
    f.write_text("".join(json.dumps(x) + "\n" for x in rows[:-1]))
    assert main(["pathvqa", "--pathvqa", str(PVQA), "--out", str(out), "--limit", "60",
                 "--predictions", f"ext2={f}"]) == 2
    assert "no prediction for 1 of 60" in capsys.readouterr().err


def test_model_answers_pathvqa_with_synthetic_images(tmp_path):
    from PIL import Image

    from medadapt.instruct.tiny import build_tiny_llava
    recs, _ = questions(PVQA, "test", limit=4, check_images=False)
    images = tmp_path / "images"
    images.mkdir()
    for r in recs:
        img_id = r.id.split("/", 1)[1].rsplit("-", 1)[0]
        Image.new("RGB", (40, 30), (200, 120, 160)).save(images / f"{img_id}.jpg")
    tiny = build_tiny_llava(tmp_path / "tiny", [r.messages[0]["content"] for r in recs])
    out = tmp_path / "eval"
    assert main(["pathvqa", "--pathvqa", str(PVQA / "pvqa_test.json"), "--images", str(images),
                 "--out", str(out), "--limit", "4", "--max-new-tokens", "3", "--model", f"tiny={tiny}"]) == 0
    preds = [json.loads(x) for x in (out / "tiny" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and {p["answer_type"] for p in preds} <= {"open", "closed"}
    assert json.loads((out / "tiny" / "metrics.json").read_text())["results"]["vqa/pathvqa"]["n"] == 4
