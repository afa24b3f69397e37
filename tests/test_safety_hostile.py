"""Issue 21: files from colleagues are data, never code. Each test plants a hostile file (a model
folder asking to import its own code, a link, a name with a path in it, a YAML bomb, ...) and a
canary, and asserts: the command ends in one line on stderr with exit code 2 (or succeeds where
the input is merely odd), no code ran and nothing was written outside its place (the canary is
absent), and the user's files are intact."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import run_cli

MATH_CLASS = "$\\frac{1}{$"  # matplotlib mathtext would choke on it
VICTIM_TEXT = "the user's own file\n"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def canary_code(canary: Path) -> str:
    return f"open({str(canary)!r}, 'w').write('code ran')\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny class-folder data set; one class is named like a mathtext formula."""
    root = tmp_path_factory.mktemp("data") / "set"
    rng = np.random.default_rng(0)
    for c, (cname, tone) in enumerate(((MATH_CLASS, 40), ("b", 200))):
        for split, n in (("train", 3), ("test", 3)):
            d = root / split / cname
            d.mkdir(parents=True)
            for i in range(n):
                px = np.clip(rng.normal(tone, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{c}_{i}.png")
    return root


def fit(out, data, *extra, method="linear-probe", backbone="tiny-hf-clip"):
    return run_cli("fit", "--backbone", backbone, "--dataset", f"folder:{data}", "--method",
                   method, "--shots", 2, "--out", out, "--quiet", *extra)


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("runs") / "lp"
    assert fit(out, data) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def victim(tmp_path: Path) -> Path:
    v = tmp_path / "home" / "thesis.tex"
    v.parent.mkdir(parents=True, exist_ok=True)
    v.write_text(VICTIM_TEXT)
    return v


# ------------------------------------------------------------------------------------------------
# no remote code
def _hostile_open_clip(tmp_path: Path, canary: Path) -> Path:
    from medadapt.backbones import _tiny_folder
    folder = tmp_path / "model"
    shutil.copytree(_tiny_folder("tiny-open-clip"), folder)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["tokenizer_kwargs"] = {"trust_remote_code": True}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    (folder / "evil.py").write_text(canary_code(canary))
    return folder


def test_model_folder_asking_to_run_code_is_refused(tmp_path, capsys, data):
    canary = tmp_path / "canary"
    folder = _hostile_open_clip(tmp_path, canary)
    assert fit(tmp_path / "run", data, backbone=f"open_clip:local-dir:{folder}") == 2
    err = one_line_error(capsys)
    assert "asks to run Python code" in err and "trust_remote_code" in err
    assert not canary.exists() and not (tmp_path / "run").exists()
    # the tokenizer's auto_map alone is enough to refuse
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    del cfg["model_cfg"]["text_cfg"]["tokenizer_kwargs"]
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    assert fit(tmp_path / "run", data, backbone=f"open_clip:local-dir:{folder}") == 2
    err = one_line_error(capsys)
    assert "auto_map" in err and "tokenizer_config.json" in err
    assert not canary.exists() and not (tmp_path / "run").exists()


def test_hf_folder_and_instruct_model_with_auto_map_are_refused(tmp_path, capsys, data):
    from medadapt.backbones import _tiny_folder
    from medadapt.errors import UserError
    from medadapt.instruct.train import load_model
    canary = tmp_path / "canary"
    folder = tmp_path / "hf"
    shutil.copytree(_tiny_folder("tiny-hf-clip"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "evil.Model", "AutoConfig": "evil.Config"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(canary_code(canary))
    assert fit(tmp_path / "run", data, backbone=str(folder)) == 2
    assert "asks to run Python code" in one_line_error(capsys)
    with pytest.raises(UserError, match="asks to run Python code"):
        load_model(str(folder))
    assert not canary.exists()


def test_run_folder_backbone_path_stays_inside_the_run(tmp_path, capsys, done_run):
    canary = tmp_path / "canary"
    run = copy_run(done_run, tmp_path / "received")
    _hostile_open_clip(run, canary)  # run/model: a model folder shipped inside the run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["backbone"] = "./model"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert run_cli("eval", "--run", run, "--quiet") == 2
    assert "asks to run Python code" in one_line_error(capsys)
    # a relative path that leaves the run folder is refused before anything is read
    (tmp_path / "outside").mkdir()
    cfg["backbone"] = "../outside"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert run_cli("eval", "--run", run, "--quiet") == 2
    assert "outside the run folder" in one_line_error(capsys)
    assert not canary.exists()


# ------------------------------------------------------------------------------------------------
# writes never follow a link
def _unfinish(run: Path) -> None:
    for f in ("results.json", "params.safetensors", "summary.json"):
        (run / f).unlink(missing_ok=True)


def test_resume_never_writes_through_a_link(tmp_path, capsys, data, done_run):
    v = victim(tmp_path)
    run = copy_run(done_run, tmp_path / "lp")
    _unfinish(run)
    (run / "log.txt").unlink()
    (run / "log.txt").symlink_to(v)
    assert fit(run, data, "--resume") == 2
    err = one_line_error(capsys)
    assert "log.txt" in err and "symbolic link" in err
    assert v.read_text() == VICTIM_TEXT
    # fewshot.json as a link: the seed is re-drawn, the link is refused, never written through
    (run / "log.txt").unlink()
    (run / "fewshot.json").unlink()
    (run / "fewshot.json").symlink_to(tmp_path / "home" / "absent.json")
    assert fit(run, data, "--resume") == 2
    assert "fewshot.json" in one_line_error(capsys)
    assert not (tmp_path / "home" / "absent.json").exists()
    assert v.read_text() == VICTIM_TEXT


def test_report_never_writes_through_a_link(tmp_path, capsys, done_run):
    v = victim(tmp_path)
    runs = tmp_path / "runs"
    copy_run(done_run, runs / "lp")
    rep = runs / "report"
    rep.mkdir()
    (rep / "report.json").write_text(json.dumps({"figures": []}))  # an earlier report
    (rep / "report.md").symlink_to(v)
    assert run_cli("report", runs, "--no-tsne") == 2
    assert "report.md" in one_line_error(capsys)
    assert v.read_text() == VICTIM_TEXT and (rep / "report.md").is_symlink()
    # a report folder that is itself a planted link is refused too
    (rep / "report.md").unlink()
    shutil.rmtree(rep)
    (tmp_path / "home" / "elsewhere").mkdir()
    rep.symlink_to(tmp_path / "home" / "elsewhere")
    assert run_cli("report", runs, "--no-tsne") == 2
    one_line_error(capsys)
    assert list((tmp_path / "home" / "elsewhere").iterdir()) == []


def test_safe_writers_unit(tmp_path):
    from medadapt.errors import UserError
    from medadapt.safeio import append_text, make_dir, write_text
    v = victim(tmp_path)
    link = tmp_path / "out.txt"
    link.symlink_to(v)
    for call in (lambda: write_text(link, "x"), lambda: append_text(link, "x"),
                 lambda: make_dir(link)):
        with pytest.raises(UserError, match="symbolic link"):
            call()
    assert v.read_text() == VICTIM_TEXT
    write_text(tmp_path / "new.txt", "ok")
    append_text(tmp_path / "new.txt", "!")
    assert (tmp_path / "new.txt").read_text() == "ok!"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "new.txt", "out.txt"]  # no temp


# ------------------------------------------------------------------------------------------------
# names are names
def test_published_table_name_is_not_a_path(tmp_path, capsys, done_run):
    runs = tmp_path / "runs"
    copy_run(done_run, runs / "lp")
    table = {"name": "../../escaped", "paper": "p", "citation": "c", "protocol": "few-shot",
             "columns": ["16"], "rows": [{"row": "lp", "method": "linear-probe",
                                          "values": {"set": [50.0]}}]}
    t = tmp_path / "t.yaml"
    t.write_text(yaml.safe_dump(table))
    assert run_cli("report", runs, "--compare", t) == 2
    assert "not a plain name" in one_line_error(capsys)
    assert not list(tmp_path.rglob("compare_*")) and not (runs / "report").exists()


def test_instruct_build_name_is_not_a_path(tmp_path, capsys):
    cfg = tmp_path / "build.yaml"
    cfg.write_text(yaml.safe_dump({"build": {"name": "../../../escaped"}}))
    src = tmp_path / "src.csv"
    src.write_text("image,question,answer\n")
    assert run_cli("instruct", "build", "--config", cfg, "--source", f"kind=csv,path={src}",
                   "--out", tmp_path / "out") == 2
    assert "not a plain name" in one_line_error(capsys)
    assert not list(tmp_path.rglob("escaped*")) and not (tmp_path / "out").exists()


def test_bench_out_never_a_folder_of_user_files(tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "grid.yaml").write_text("my grid\n")
    (user / "bench_index.json").write_text('{"mine": true}\n')
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"out": str(user), "backbones": ["tiny-hf-clip"],
                                    "datasets": ["folder:/nonexistent"],
                                    "methods": ["zero-shot"], "shots": [0]}))
    assert run_cli("bench", grid, "--quiet") == 2
    assert "not a medadapt bench" in one_line_error(capsys)
    assert (user / "grid.yaml").read_text() == "my grid\n"
    assert (user / "bench_index.json").read_text() == '{"mine": true}\n'
    assert sorted(p.name for p in user.iterdir()) == ["bench_index.json", "grid.yaml"]


# ------------------------------------------------------------------------------------------------
# bounded inputs
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)) \
    + "seeds: *i\n"


def test_yaml_bomb_and_long_values_end_in_one_short_line(tmp_path, capsys, data):
    assert len(BOMB) < 1024
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(BOMB)
    assert fit(tmp_path / "run", data, "--config", cfg) == 2
    err = one_line_error(capsys)
    assert "aliases" in err and len(err) < 400
    grid = tmp_path / "grid.yaml"
    grid.write_text(BOMB)
    assert run_cli("bench", grid, "--out", tmp_path / "b") == 2
    assert len(one_line_error(capsys)) < 400
    cfg.write_text(yaml.safe_dump({"device": "x" * 100_000}))
    assert fit(tmp_path / "run", data, "--config", cfg) == 2
    assert len(one_line_error(capsys)) < 400
    assert not (tmp_path / "run").exists() and not (tmp_path / "b").exists()


def test_seeds_beyond_32_bits_are_refused(tmp_path, capsys, data):
    assert fit(tmp_path / "run", data, "--set", f"seeds=[{10**30}]") == 2
    assert "2**32" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_class_list_checked_against_the_learned_parameters(tmp_path, capsys, data, done_run):
    run = copy_run(done_run, tmp_path / "lp")
    before = (run / "results.json").read_text()
    many = [f"c{i}" for i in range(20_000)]
    cl = json.loads((run / "classes.json").read_text())
    (run / "classes.json").write_text(json.dumps({**cl, "classnames": many,
                                                  "train_classnames": many}))
    assert run_cli("eval", "--run", run, "--quiet") == 2
    assert "classes.json" in one_line_error(capsys)
    # also when config.yaml is edited to agree: the learned parameters decide
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "classnames": many}))
    assert run_cli("eval", "--run", run, "--quiet") == 2
    assert "learned parameters" in one_line_error(capsys)
    assert (run / "results.json").read_text() == before
    # a method without per-class tensors: the run's own data set decides, before any metric
    zs = tmp_path / "zs"
    assert fit(zs, data, method="zero-shot") == 0
    capsys.readouterr()
    for f in ("classes.json", "config.yaml"):
        src = run / f
        (zs / f).write_text(src.read_text().replace("linear-probe", "zero-shot"))
    cfg = yaml.safe_load((zs / "config.yaml").read_text())
    (zs / "config.yaml").write_text(yaml.safe_dump({**cfg, "method": {"name": "zero-shot"}}))
    assert run_cli("eval", "--run", zs, "--quiet") == 2
    assert "not all in the run's data set" in one_line_error(capsys)


def test_deeply_nested_json_and_literals(tmp_path, capsys, done_run):
    run = copy_run(done_run, tmp_path / "lp")
    (run / "classes.json").write_text("[" * 200_000 + "]" * 200_000)
    assert run_cli("eval", "--run", run, "--quiet") == 2
    assert "nested too deeply" in one_line_error(capsys)
    py = tmp_path / "desc.py"
    py.write_text("D = {'a': " + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert run_cli("descriptions", "import", py, "--out", tmp_path / "d.json") == 2
    one_line_error(capsys)
    assert not (tmp_path / "d.json").exists()


# ------------------------------------------------------------------------------------------------
# tracebacks on hostile input
def test_hostile_checkpoint_state_is_one_line(tmp_path, capsys, data):
    import pickle
    canary = tmp_path / "canary"

    class Evil:
        def __reduce__(self):
            return (exec, (canary_code(canary),))

    run = tmp_path / "ca"
    assert fit(run, data, "--set", "train.epochs=2", method="clip-adapter") == 0
    shutil.copy(run / "params.safetensors", run / "checkpoint.safetensors")  # loads fine
    _unfinish(run)
    (run / "checkpoint_state.pt").write_bytes(pickle.dumps(Evil()))
    assert fit(run, data, "--set", "train.epochs=2", "--resume", method="clip-adapter") == 2
    assert "pickled Python objects" in one_line_error(capsys)
    assert not canary.exists()


def test_mathtext_class_name_and_unknown_protocol(tmp_path, capsys, done_run):
    runs = tmp_path / "runs"
    copy_run(done_run, runs / "lp")
    assert run_cli("report", runs, "--no-tsne") == 0  # figures show MATH_CLASS literally
    capsys.readouterr()
    assert list((runs / "report").glob("*.png"))
    shutil.rmtree(runs / "report")
    res = json.loads((runs / "lp" / "results.json").read_text())
    (runs / "lp" / "results.json").write_text(json.dumps({**res, "protocol": "xyz"}))
    assert run_cli("report", runs, "--no-tsne") == 2
    one_line_error(capsys)


# ------------------------------------------------------------------------------------------------
# one path rule for every data-set reader
def test_dataset_readers_refuse_paths_outside_their_root(tmp_path, capsys):
    from medadapt.data.sets.bccd import build_bccd_cells
    from medadapt.data.sets.derm7pt import DERM7PT_CRITERIA, build_derm7pt
    from medadapt.errors import UserError
    d = tmp_path / "derm" / "meta"
    d.mkdir(parents=True)
    crit = {k: "absent" for k in DERM7PT_CRITERIA}
    rows = [{"diagnosis": "melanoma", "derm": "../../../secret.jpg", "clinic": "c.jpg", **crit}]
    with open(d / "meta.csv", "w") as fh:
        fh.write(",".join(rows[0]) + "\n" + ",".join(rows[0].values()) + "\n")
    for f, idx in (("train_indexes.csv", "0"), ("valid_indexes.csv", ""), ("test_indexes.csv", "")):
        (d / f).write_text("indexes\n" + (idx + "\n" if idx else ""))
    with pytest.raises(UserError, match="inside the data set folder"):
        build_derm7pt(tmp_path / "derm")
    b = tmp_path / "bccd"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (b / sub).mkdir(parents=True)
    (b / "ImageSets/Main/train.txt").write_text("x\n")
    (b / "ImageSets/Main/val.txt").write_text("")
    (b / "ImageSets/Main/test.txt").write_text("")
    (b / "Annotations/x.xml").write_text("<annotation><filename>../../../etc/passwd</filename>"
                                         "</annotation>")
    with pytest.raises(UserError, match="inside the data set folder"):
        build_bccd_cells(b)
    assert run_cli("fit", "--backbone", "tiny-hf-clip", "--dataset", f"bccd-cells:{b}", "--method",
                   "zero-shot", "--out", tmp_path / "run", "--quiet") == 2
    assert "inside the data set folder" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_lock_file_and_bench_folders_never_followed(tmp_path, capsys, data):
    from medadapt.engine.rundir import run_lock
    from medadapt.errors import UserError
    elsewhere = tmp_path / "home" / "created-by-medadapt"
    elsewhere.parent.mkdir()
    (tmp_path / ".run.lock").symlink_to(elsewhere)  # a dangling link where the lock goes
    with pytest.raises(UserError, match="symbolic link"):
        with run_lock(tmp_path / "run"):
            pass
    assert not elsewhere.exists()
    # a received bench folder whose .bench/ is a link: refused before any run or status file
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench_index.json").write_text(json.dumps({"runs": []}))
    (tmp_path / "home" / "status").mkdir()
    (bench / ".bench").symlink_to(tmp_path / "home")
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"backbones": ["tiny-hf-clip"], "datasets": [f"folder:{data}"],
                                    "methods": ["zero-shot"], "shots": [0]}))
    assert run_cli("bench", grid, "--out", bench, "--quiet") == 2
    assert ".bench" in one_line_error(capsys)
    assert list((tmp_path / "home" / "status").iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["status"]
