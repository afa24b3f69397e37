"""The Python API (medadapt.fit / load_run / Run.predict / evaluate / load_dataset), driven directly:
a tiny in-memory data set on tiny-hf-clip, predictions on PIL images, arrays, files and folders,
agreement with the CLI, and the same one-line errors as the command line."""
import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import medadapt
from conftest import run_cli
from medadapt.errors import UserError

CLASSES = ["red", "green", "blue"]


def images(n=30, seed=0):
    """Colour-coded 32x32 tiles: class c has channel c raised."""
    rng = np.random.default_rng(seed)
    out, labels = [], []
    for i in range(n):
        a = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
        a[..., i % 3] += 150
        out.append(a)
        labels.append(CLASSES[i % 3])
    return out, labels


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    imgs, labels = images()
    ds = medadapt.load_dataset(images=imgs, labels=labels, classnames=CLASSES)
    run = medadapt.fit(backbone="tiny-hf-clip", dataset=ds, method="coop", shots=2, seeds=[1, 2],
                       out=root / "run", settings={"train.epochs": 2, "method": {"n_ctx": 2},
                                                   "data.augment_views": 0},
                       quiet=True, progress=False)
    return {"root": root, "run": run, "ds": ds, "imgs": imgs, "labels": labels}


def test_in_memory_data_set_fingerprint_and_splits():
    imgs, labels = images()
    a = medadapt.load_dataset(images=imgs, labels=labels, classnames=CLASSES)
    b = medadapt.load_dataset(images=[Image.fromarray(x) for x in imgs], labels=labels,
                              classnames=CLASSES)
    assert a.name.startswith("memory:") and a.fingerprint == b.fingerprint and a.name == b.name
    changed = [x.copy() for x in imgs]
    changed[7][0, 0, 0] ^= 1
    c = medadapt.load_dataset(images=changed, labels=labels, classnames=CLASSES)
    assert c.fingerprint != a.fingerprint
    assert a.classnames == CLASSES and len(a) == 30
    assert {r.split for r in a.records} == {"train", "val", "test"}
    assert np.array_equal(np.asarray(a.load_image(0)), imgs[0])
    # int labels without names; a dict of splits
    d = medadapt.load_dataset(images=imgs[:6], labels=[0, 1, 2, 0, 1, 2])
    assert d.classnames == ["class 0", "class 1", "class 2"]
    e = medadapt.load_dataset({"train": (imgs[:6], labels[:6]), "test": (imgs[6:9], labels[6:9])})
    assert [r.split for r in e.records] == ["train"] * 6 + ["test"] * 3
    assert e.classnames == ["blue", "green", "red"]  # sorted names by default
    for bad, msg in ((dict(images=imgs[:3], labels=labels[:2]), "3 images but 2 labels"),
                     (dict(images=imgs[:3], labels=["a", "b", "zz"], classnames=["a", "b"]),
                      "not in classnames"),
                     (dict(images=["nope"] * 3, labels=[0, 1, 2]), "PIL image or a numpy array")):
        with pytest.raises(UserError, match=msg):
            medadapt.load_dataset(**bad)


def test_fit_returns_run_with_results(fitted):
    run = fitted["run"]
    assert run.config["dataset"] == fitted["ds"].name
    assert run.classes == CLASSES and run.seeds == [1, 2]
    assert run.summary["metrics"]["accuracy"]["values"] == [r["metrics"]["accuracy"]
                                                           for r in run.results]
    assert run.metrics["accuracy"] == pytest.approx(np.mean(run.summary["metrics"]["accuracy"]
                                                            ["values"]))


def test_predict_pil_arrays_paths_and_folders_agree(fitted, tmp_path):
    run, imgs = fitted["run"], fitted["imgs"][:5]
    p_arr = run.predict(imgs)
    p_pil = run.predict([Image.fromarray(x) for x in imgs])
    assert p_arr.probs.shape == (5, 3) and np.allclose(p_arr.probs.sum(1), 1)
    assert np.allclose(p_arr.probs, p_pil.probs, atol=1e-6)
    assert p_arr.predictions == [CLASSES[i] for i in p_arr.probs.argmax(1)]
    assert p_arr.classes == CLASSES and p_arr.extras == [{}] * 5
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i, x in enumerate(imgs):
        Image.fromarray(x).save(folder / f"t{i}.png")
    p_files = run.predict([str(folder / f"t{i}.png") for i in range(5)])
    p_dir = run.predict(folder)
    assert np.allclose(p_files.probs, p_arr.probs, atol=1e-6)
    assert np.allclose(p_dir.probs, p_arr.probs, atol=1e-6)
    assert p_dir.inputs == [str(folder / f"t{i}.png") for i in range(5)]
    # several seeds: the mean of each seed's probabilities; one seed alone differs
    s1, s2 = run.predict(imgs, seed=1).probs, run.predict(imgs, seed=2).probs
    assert np.allclose((s1 + s2) / 2, p_arr.probs, atol=1e-6)
    # the CLI's CSV holds the same numbers
    out = tmp_path / "p.csv"
    assert run_cli("predict", "--run", run.path, folder, "--out", out, "--quiet") == 0
    rows = list(csv.DictReader(out.open()))
    got = np.array([[float(r[f"p({c})"]) for c in CLASSES] for r in rows])
    assert np.allclose(got, p_arr.probs, atol=2e-6)
    # a bad file: skip_bad gives a NaN row and the reason
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="corrupt or unreadable image"):
        run.predict(folder)
    p = run.predict(folder, skip_bad=True)
    assert p.predictions[0] == "" and np.isnan(p.probs[0]).all() and "error" in p.extras[0]


def test_evaluate_matches_fit_metrics(fitted):
    run = fitted["run"]
    ev = run.evaluate()  # the in-memory data set of this session
    assert [s["metrics"]["accuracy"] for s in ev["seeds"]] == \
        pytest.approx([r["metrics"]["accuracy"] for r in run.results])
    again = medadapt.load_run(run.path)
    with pytest.raises(UserError, match="in-memory data set"):
        again.evaluate()
    ev2 = again.evaluate(fitted["ds"])
    assert ev2["summary"]["accuracy"]["values"] == pytest.approx(
        ev["summary"]["accuracy"]["values"])


def test_fit_on_a_plain_folder_path_and_a_spec(tmp_path):
    root = tmp_path / "data"
    imgs, labels = images(18, seed=3)
    for i, (x, y) in enumerate(zip(imgs, labels)):
        (root / y).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(root / y / f"{i}.png")
    ds = medadapt.load_dataset(root)  # a plain path means folder:
    assert ds.meta["spec"] == f"folder:{root}" and ds.classnames == ["blue", "green", "red"]
    run = medadapt.fit(backbone="tiny-hf-clip", dataset=root, method="linear-probe", shots=2,
                       out=tmp_path / "lp", quiet=True, progress=False)
    assert run.config["dataset"] == f"folder:{root}"
    ev = run.evaluate()  # the spec is in the config: no data set needed
    assert ev["metrics"]["accuracy"] == pytest.approx(run.results[0]["metrics"]["accuracy"])


def _cli_error(capsys, *args) -> str:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medadapt: error: ")
    return err[0][len("medadapt: error: "):]


def test_errors_are_the_cli_messages(fitted, tmp_path, capsys):
    ds = fitted["ds"]
    with pytest.raises(UserError, match="out=FOLDER"):
        medadapt.fit(backbone="tiny-hf-clip", dataset=ds, method="coop")
    msg = _cli_error(capsys, "fit", "--backbone", "tiny-hf-clip", "--dataset", "folder:/nope",
                     "--method", "nope-method", "--out", tmp_path / "x")
    with pytest.raises(UserError) as e:
        medadapt.fit(backbone="tiny-hf-clip", dataset="folder:/nope", method="nope-method",
                     out=tmp_path / "x")
    assert str(e.value) == msg
    msg = _cli_error(capsys, "fit", "--backbone", "tiny-hf-clip", "--dataset", "folder:/nope",
                     "--method", "coop", "--set", "train.nope=1", "--out", tmp_path / "x")
    with pytest.raises(UserError) as e:
        medadapt.fit(backbone="tiny-hf-clip", dataset="folder:/nope", method="coop",
                     settings={"train.nope": 1}, out=tmp_path / "x")
    assert str(e.value) == msg
    # an existing run folder
    msg = _cli_error(capsys, "fit", "--backbone", "tiny-hf-clip", "--dataset", "folder:/nope",
                     "--method", "coop", "--out", fitted["run"].path)
    with pytest.raises(UserError) as e:
        medadapt.fit(backbone="tiny-hf-clip", dataset="folder:/nope", method="coop",
                     out=fitted["run"].path)
    assert str(e.value) == msg
    assert not (tmp_path / "x").exists()
    msg = _cli_error(capsys, "eval", "--run", tmp_path / "missing")
    with pytest.raises(UserError) as e:
        medadapt.load_run(tmp_path / "missing")
    assert str(e.value) == msg
    with pytest.raises(UserError, match="no images given"):
        fitted["run"].predict([])


def test_import_medadapt_is_light():
    code = ("import sys, medadapt; assert 'torch' not in sys.modules; "
            "assert callable(medadapt.fit) and medadapt.Run.__name__ == 'Run'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_scale_concepts_come_back_from_predict(tmp_path):
    """SCALE's concept output: Prediction.extras holds what `medadapt predict` writes as columns."""
    from pathlib import Path

    from test_scale_fixtures import concept_csv
    data_csv = concept_csv(str(tmp_path / "scale-data"))
    root = Path(data_csv).parent
    run = medadapt.fit(backbone="tiny-hf-clip", dataset=f"csv:{data_csv}", method="scale",
                       shots=4, out=tmp_path / "scale", quiet=True, progress=False,
                       settings={"train.epochs": 40, "train.lr": 0.03, "method.alpha": 0.5,
                                 "method.lambdas": [1, 1, 0.1, 0.1], "train.checkpoint": False,
                                 "data.augment_views": 0,
                                 "method.hierarchy": str(root / "hierarchy.yaml")})
    files = [str(root / "test" / "ADI_1.png"), str(root / "test" / "TUM_2.png")]
    pred = run.predict(files)
    assert pred.predictions == ["adipose", "tumor"]
    assert pred.extras[0]["why"] == "fat vacuoles -> adipose"
    out = run.predict_csv(files, tmp_path / "p.csv")
    rows = list(csv.DictReader(out.open()))
    for row, ex in zip(rows, pred.extras):
        assert ex and all(row[k] == str(v) for k, v in ex.items())


def test_load_backbone_encodes():
    import torch
    bb = medadapt.load_backbone("tiny-hf-clip", device="cpu")
    x = bb.preprocess(Image.fromarray(images(1)[0][0]))
    f = bb.encode_image(x[None], normalize=True)
    assert f.shape[0] == 1 and torch.allclose(f.norm(dim=-1), torch.ones(1), atol=1e-5)
    with pytest.raises(UserError, match="valid"):
        medadapt.load_backbone("no-such-backbone")
