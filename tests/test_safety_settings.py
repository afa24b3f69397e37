"""Issue 13, settings: every wrong value is one line naming the key and what is allowed, exit 2,
for --set, flags, YAML configs and bench grids; typos get a did-you-mean."""
import pytest

from conftest import CRC, run_cli
from medadapt.config import apply_sets, parse_value
from medadapt.engine.resolve import resolve
from medadapt.errors import UserError

BASE = {"backbone": "tiny-hf-clip", "dataset": f"folder:{CRC}", "method": {"name": "coop"}}


def fit(out, *extra, method="linear-probe"):
    return run_cli("fit", "--backbone", "tiny-hf-clip", "--dataset", f"folder:{CRC}",
                   "--method", method, "--shots", "1", "--out", out, "--quiet", *extra)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_exponent_floats_parse_as_numbers():
    assert parse_value("2e-3") == 0.002 and parse_value("1e5") == 100000.0
    assert parse_value("-1E-4") == -0.0001 and parse_value("5") == 5
    assert parse_value("abc") == "abc" and parse_value("1e-3x") == "1e-3x"
    cfg = resolve(apply_sets(BASE, ["train.lr=2e-3"]))
    assert cfg["train"]["lr"] == 0.002 and isinstance(cfg["train"]["lr"], float)


@pytest.mark.parametrize("setting, needles", [
    ("train.lrr=0.1", ["unknown setting 'train.lrr'", "did you mean 'train.lr'"]),
    ("method.n_ctxx=4", ["unknown setting 'method.n_ctxx'", "did you mean 'method.n_ctx'"]),
    ("trian.epochs=5", ["unknown setting 'trian'", "did you mean 'train'"]),
    ("data.batchsize=8", ["unknown setting 'data.batchsize'", "did you mean 'data.batch_size'"]),
    ("texts.templtes=[]", ["did you mean 'texts.templates'"]),
    ("train.lr=abc", ["train.lr must be a number", "'abc'"]),
    ("train.epochs=1.5", ["train.epochs must be an integer", "1.5"]),
    ("train.epochs=-1", ["train.epochs must be > 0"]),
    ("train.epochs=0", ["train.epochs must be > 0"]),
    ("train.batch_size=0", ["train.batch_size must be > 0"]),
    ("data.batch_size=0", ["data.batch_size must be > 0"]),
    ("data.skip_bad=maybe", ["data.skip_bad must be true or false"]),
    ("train=5", ["train must be a mapping"]),
    ("method.csc=3", ["method.csc must be true or false"]),
    ("shots=abc", ["shots must be an integer"]),
    ("data.fraction=2", ["data.fraction must be in (0, 1]"]),
])
def test_bad_settings_are_one_line(tmp_path, capsys, setting, needles):
    assert fit(tmp_path / "r", "--set", setting, method="coop") == 2
    msg = one_line_error(capsys)
    for n in needles:
        assert n in msg, msg
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--device", "tpu"], "device must be auto, cpu, cuda, cuda:N or mps"),
    (["--seeds", "-5"], "seeds must be integers >= 0"),
    (["--seeds", "1", "1"], "seeds must be distinct"),
    (["--shots", "-3"], "shots must be >= 0"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, flags, needle):
    assert fit(tmp_path / "r", *flags) == 2
    assert needle in one_line_error(capsys)


def test_yaml_config_is_checked_like_set(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lrr: 0.1\n")
    assert fit(tmp_path / "r", "--config", cfg) == 2
    assert "did you mean 'train.lr'" in one_line_error(capsys)
    cfg.write_text("train:\n  lr: 2e-3\n  epochs: 1\n")  # YAML 1.2 float in a file too
    from medadapt.config import load_yaml
    assert load_yaml(cfg)["train"]["lr"] == 0.002


def test_config_path_that_is_a_directory_or_binary(tmp_path, capsys):
    assert fit(tmp_path / "r", "--config", tmp_path) == 2
    assert "is a directory" in one_line_error(capsys)
    b = tmp_path / "weights.bin"
    b.write_bytes(bytes(range(256)) * 4)
    assert fit(tmp_path / "r", "--config", b) == 2
    assert "not a text" in one_line_error(capsys)


def test_train_schema_follows_train_defaults(monkeypatch):
    """Keys added to the engine's TRAIN_DEFAULTS are known at once (read at resolve time)."""
    from medadapt.engine import train
    with pytest.raises(UserError, match="unknown setting 'train.new_knob'"):
        resolve(apply_sets(BASE, ["train.new_knob=1e-8"]))
    monkeypatch.setitem(train.TRAIN_DEFAULTS, "new_knob", 1e-6)
    assert resolve(apply_sets(BASE, ["train.new_knob=1e-8"]))["train"]["new_knob"] == 1e-8


def test_method_defaults_are_the_method_schema():
    ok = resolve(apply_sets(dict(BASE, method={"name": "clip-lora"}), ["method.alpha=0.5",
                                                                      "method.layers=[0, 1]"]))
    assert ok["method"]["alpha"] == 0.5 and ok["method"]["layers"] == [0, 1]
    with pytest.raises(UserError, match="method.rank must be an integer"):
        resolve(apply_sets(dict(BASE, method={"name": "clip-lora"}), ["method.rank=two"]))


def test_bench_grid_is_checked(tmp_path):
    from medadapt.report.bench import expand_grid as expand, load_grid, validate
    g = tmp_path / "grid.yaml"
    g.write_text(f"backbones: [tiny-hf-clip]\ndatasets: ['folder:{CRC}']\nmethods: [linear-probe]\n"
                 "shots: [1]\nseeds: [1, 1]\n")
    with pytest.raises(UserError, match="seeds must be distinct"):
        validate(expand(load_grid(g)))
    g.write_text(f"backbones: [tiny-hf-clip]\ndatasets: ['folder:{CRC}']\nmethods: [linear-probe]\n"
                 "shots: [1]\nset: {train.lrr: 0.1}\n")
    with pytest.raises(UserError, match="did you mean 'train.lr'"):
        validate(expand(load_grid(g)))


@pytest.mark.parametrize("line, needle", [("shots: [abc]", "shots must be integers"),
                                          ("shots: [1.5]", "shots must be integers"),
                                          ("shots: [-2]", "shots must be >= 0")])
def test_bench_grid_bad_budgets(tmp_path, line, needle):
    from medadapt.report.bench import expand_grid, load_grid, validate
    g = tmp_path / "grid.yaml"
    g.write_text(f"backbones: [tiny-hf-clip]\ndatasets: ['folder:{CRC}']\nmethods: [linear-probe]\n"
                 f"{line}\n")
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        validate(expand_grid(load_grid(g)))


def test_method_number_settings_are_not_null():
    with pytest.raises(UserError, match="method.n_ctx must be an integer, got null"):
        resolve(apply_sets(BASE, ["method.n_ctx=null"]))
    assert resolve(apply_sets(BASE, ["method.ctx_init=null"]))["method"]["ctx_init"] is None
    lora = dict(BASE, method={"name": "clip-lora"})
    assert resolve(apply_sets(lora, ["method.n_iters_per_shot=null"]))["method"]["n_iters_per_shot"] is None
