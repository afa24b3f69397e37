"""`medadapt fit / eval / predict` end to end: the run-folder contract, determinism, bad input."""
import json
import shutil

import numpy as np
import pytest
import yaml

from conftest import CRC, PNEUMONIA, run_cli

RESULT_KEYS = {"medadapt_version", "method", "backbone", "dataset", "shots", "seed", "metrics",
               "base", "novel", "hm", "train_seconds", "n_trainable_params"}


def fit(out, *extra, backbone="tiny-hf-clip", dataset=None, method="linear-probe", shots=2):
    return run_cli("fit", "--backbone", backbone, "--dataset", dataset or f"folder:{CRC}",
                   "--method", method, "--shots", shots, "--out", out, "--quiet", *extra)


def test_issue_example_run_folder_and_determinism(tmp_path, shared_data):
    a, b = tmp_path / "a", tmp_path / "b"
    assert fit(a, "--seeds", "1", "2") == 0
    for f in ("config.yaml", "classes.json", "summary.json"):
        assert (a / f).exists(), f
    for s in (1, 2):
        d = a / f"seed{s}"
        for f in ("fewshot.json", "results.json", "params.safetensors", "log.txt"):
            assert (d / f).exists(), f
        r = json.loads((d / "results.json").read_text())
        assert RESULT_KEYS <= set(r)
        assert set(r["metrics"]) >= {"accuracy", "balanced_accuracy", "macro_f1", "auc"}
        assert r["seed"] == s and r["shots"] == 2 and r["method"] == "linear-probe"
        fs = json.loads((d / "fewshot.json").read_text())
        assert all(len(v) == 2 for v in fs["train"].values()) and len(fs["train"]) == 8
        # validation never overlaps training, and nothing comes from the test split
        cfg = yaml.safe_load((a / "config.yaml").read_text())
        assert cfg["method"]["name"] == "linear-probe" and cfg["shots"] == 2
    summ = json.loads((a / "summary.json").read_text())
    acc = [json.loads((a / f"seed{s}" / "results.json").read_text())["metrics"]["accuracy"]
           for s in (1, 2)]
    assert summ["metrics"]["accuracy"]["values"] == acc
    assert summ["metrics"]["accuracy"]["mean"] == pytest.approx(np.mean(acc))
    assert summ["metrics"]["accuracy"]["std"] == pytest.approx(np.std(acc))
    # same seeds again: same few-shot sets and the same metrics
    assert fit(b, "--seeds", "1", "2") == 0
    for s in (1, 2):
        for f in ("fewshot.json",):
            assert (a / f"seed{s}" / f).read_text() == (b / f"seed{s}" / f).read_text()
        ra = json.loads((a / f"seed{s}" / "results.json").read_text())
        rb = json.loads((b / f"seed{s}" / "results.json").read_text())
        assert ra["metrics"] == rb["metrics"]


def test_zero_shot_on_open_clip_and_eval_predict(tmp_path, shared_data):
    out = tmp_path / "zs"
    assert fit(out, backbone="tiny-open-clip", method="zero-shot", shots=1) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["n_trainable_params"] == 0
    assert run_cli("eval", "--run", out, "--quiet") == 0
    csv_path = tmp_path / "preds.csv"
    assert run_cli("predict", "--run", out, str(CRC / "ADI"), "--out", csv_path) == 0
    import csv
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 4
    for row in rows:
        probs = [float(v) for k, v in row.items() if k.startswith("p(")]
        assert len(probs) == 8 and sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert row["prediction"] in [k[2:-1] for k in row if k.startswith("p(")]


def test_npz_medmnist(tmp_path, shared_data):
    out = tmp_path / "pn"
    assert fit(out, dataset=f"npz:{PNEUMONIA}", shots=4, method="linear-probe") == 0
    r = json.loads((out / "results.json").read_text())
    assert r["metrics"]["n"] == 624  # the official PneumoniaMNIST test split
    assert r["metrics"]["auc"] is not None
    cls = json.loads((out / "classes.json").read_text())["classnames"]
    assert cls == ["normal", "pneumonia"]


def test_prompt_method_save_load_identical_predictions(tmp_path, shared_data):
    from medadapt.engine.evaluate import load_run
    from medadapt.engine.predict import predict_paths
    out = tmp_path / "coop"
    assert run_cli("fit", "--backbone", "tiny-open-clip-bpe", "--dataset", f"folder:{CRC}",
                   "--method", "coop", "--shots", "2", "--out", out, "--quiet",
                   "--set", "train.epochs=3", "--set", "method.n_ctx=4") == 0
    p1 = predict_paths(out, [str(CRC / "TUM")], tmp_path / "p1.csv").read_text()
    p2 = predict_paths(out, [str(CRC / "TUM")], tmp_path / "p2.csv").read_text()
    assert p1 == p2
    _, _, _, method, _ = load_run(out)
    assert float(method.prompt.ctx.detach().abs().sum()) > 0


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err


def test_bad_input_missing_path(tmp_path, capsys):
    out = tmp_path / "x"
    assert fit(out, dataset=f"folder:{tmp_path / 'nope'}") == 2
    err = _err(capsys)
    assert len(err) == 1 and "not found" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_bad_input_unknown_names(tmp_path, capsys):
    assert fit(tmp_path / "a", backbone="no-such-backbone") == 2
    assert "valid:" in _err(capsys)[-1]
    assert fit(tmp_path / "b", method="no-such-method") == 2
    assert "valid:" in _err(capsys)[-1] and "coop" in capsys.readouterr().err + "coop"
    assert fit(tmp_path / "c", dataset="no-such-dataset") == 2
    assert "valid:" in _err(capsys)[-1]
    assert not any((tmp_path / n).exists() for n in "abc")


def test_bad_input_corrupt_image_and_skip_bad(tmp_path, capsys, shared_data):
    data = tmp_path / "data"
    shutil.copytree(CRC, data)
    from medadapt.data.sources import from_folder
    ds = from_folder(str(data))
    bad = data / ds.records[ds.indices("test")[0]].id  # an image the evaluation must read
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    out = tmp_path / "run"
    assert fit(out, dataset=f"folder:{data}", method="zero-shot", shots=1) == 2
    err = _err(capsys)
    assert len(err) == 1 and "corrupt" in err[0] and bad.name in err[0]
    assert not out.exists()
    assert fit(out, "--skip-bad", dataset=f"folder:{data}", method="zero-shot", shots=1) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["bad_images_skipped"] == 1


def test_bad_input_too_few_images(tmp_path, capsys, shared_data):
    out = tmp_path / "run"
    assert fit(out, shots=5) == 2
    err = _err(capsys)
    assert len(err) == 1 and "--allow-fewer" in err[0]
    assert not out.exists()
    assert fit(out, "--allow-fewer", shots=5) == 0
    fs = json.loads((out / "fewshot.json").read_text())
    assert all(len(v) == 2 for v in fs["train"].values())


def test_bad_input_descriptions_missing_classes(tmp_path, capsys, shared_data):
    desc = tmp_path / "d.json"
    desc.write_text(json.dumps({"meta": {}, "classes": {"ADI": ["fat cells."]}}))
    out = tmp_path / "run"
    assert fit(out, "--set", f"texts.descriptions={desc}", method="zero-shot",
               shots=1, ) == 2
    err = _err(capsys)
    assert len(err) == 1 and "DEB" in err[0] and "miss" in err[0]
    assert not out.exists()


def test_existing_run_folder(tmp_path, capsys, shared_data):
    out = tmp_path / "run"
    assert fit(out, method="zero-shot", shots=1) == 0
    before = (out / "results.json").read_text()
    assert fit(out, method="zero-shot", shots=1) == 2
    assert "already exists" in _err(capsys)[-1]
    assert (out / "results.json").read_text() == before
    assert fit(out, "--overwrite", method="zero-shot", shots=1) == 0
    assert fit(out, "--resume", method="zero-shot", shots=1) == 0


def test_base_to_novel_reports_hm(tmp_path, shared_data):
    out = tmp_path / "b2n"
    assert fit(out, "--base-to-novel", method="zero-shot", shots=1) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["protocol"] == "base-to-novel"
    assert r["hm"] == pytest.approx(2 * r["base"] * r["novel"] / (r["base"] + r["novel"])
                                    if r["base"] + r["novel"] else 0.0)
    assert len(r["metrics"]["per_class_recall"]) == 4  # base = first half of 8 classes


@pytest.mark.parametrize("cmd", ["fit", "eval", "predict", "backbones", "datasets", "methods"])
def test_help_teaches(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(cmd, "--help")
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_listings(capsys):
    assert run_cli("backbones") == 0
    out = capsys.readouterr().out
    for name in ("plip", "biomedclip", "quiltnet-b32", "conch", "monet", "tiny-hf-clip"):
        assert name in out
    assert run_cli("methods") == 0
    out = capsys.readouterr().out
    assert "zero-shot" in out and "linear-probe" in out and "coop" in out
