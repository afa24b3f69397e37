"""``medadapt descriptions import``: BiomedCoOp-style dict literals read with ast, never run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from medadapt.cli import main
from medadapt.data.importers import import_python_descriptions
from medadapt.data.texts import load_class_texts
from medadapt.errors import UserError

SAMPLE = Path(__file__).parent / "data" / "prompt_templates_sample.py"
EXECUTED = Path("/tmp/medadapt-prompt-templates-was-executed")


def test_reads_biomedcoop_dict_without_running_the_file():
    EXECUTED.unlink(missing_ok=True)
    data = import_python_descriptions(SAMPLE)
    assert not EXECUTED.exists()  # the file's open(...).write(...) never ran
    assert data["meta"]["variable"] == "BIOMEDCOOP_TEMPLATES"
    assert data["classes"] == {
        "glioma tumor": ["A brain MRI showing an infiltrative mass with irregular margins.",
                         "An MR image of a glioma with surrounding edema and mass effect."],
        "normal brain": ["A normal brain MRI without lesions.", "An MR image of a healthy brain."],
        "benign tumor": ["An ultrasound of a well-circumscribed oval mass."],
    }
    assert data["meta"]["duplicate_keys_later_wins"] == ["normal brain"]


def test_variable_choice_and_errors(tmp_path):
    with pytest.raises(UserError, match="no dict literal named 'NOPE'.*BIOMEDCOOP_TEMPLATES"):
        import_python_descriptions(SAMPLE, variable="NOPE")
    with pytest.raises(UserError, match="CUSTOM_TEMPLATES must map class names"):
        import_python_descriptions(SAMPLE, variable="CUSTOM_TEMPLATES")
    bad = tmp_path / "bad.py"
    bad.write_text('T = {"a": ["x", f"{y}"]}\n')
    with pytest.raises(UserError, match=r"bad.py:1: the value of 'a' is not a literal"):
        import_python_descriptions(bad)
    two = tmp_path / "two.py"
    two.write_text('A = {"a": ["x"]}\nB = {"b": ["y"]}\n')
    with pytest.raises(UserError, match="several description dicts .*--variable"):
        import_python_descriptions(two)
    assert import_python_descriptions(two, variable="B")["classes"] == {"b": ["y"]}


def test_cli_writes_json_usable_as_descriptions(tmp_path, capsys):
    out = tmp_path / "d.json"
    assert main(["descriptions", "import", str(SAMPLE), "--out", str(out)]) == 0
    assert "3 classes, 5 sentences" in capsys.readouterr().out
    texts = load_class_texts(["glioma tumor", "normal brain"], "radiology", str(out))
    assert texts.descriptions["normal brain"][1] == "An MR image of a healthy brain."
    before = out.read_text()
    assert main(["descriptions", "import", str(SAMPLE), "--out", str(out)]) == 2  # kept
    assert out.read_text() == before
    assert main(["descriptions", "import", str(SAMPLE), "--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["meta"]["source"] == SAMPLE.name
