"""Recipes (issue 22): published suites as data. Resolved values against the released files of
HealthX-Lab/BiomedCoOp@7ceb5a8 (values read from those files by hand), sources on every value,
the CLI views, off-recipe detection, and one recipe end to end on stand-ins with report --compare
marking the run that left the recipe."""
from __future__ import annotations

import csv
import json

import pytest

from medadapt.cli import main
from medadapt.engine.resolve import resolve
from medadapt.errors import UserError
from medadapt.methods import METHODS, load_all
from medadapt.recipes import available, for_table, load_recipe

FEW, B2N = "biomedcoop-fewshot", "biomedcoop-b2n"


def values(recipe, method, ds, protocol=None, shots=None):
    r = load_recipe(recipe)
    return {k: v for k, (v, _) in r.resolve(method, ds, protocol or r.protocols[0], shots).items()}


def test_every_recipe_resolves_with_a_source_for_every_value():
    load_all()
    assert {FEW, B2N, "biomed-dpt-fewshot", "biomed-dpt-b2n", "pathoprompt-table1",
            "pathoprompt-table2-cross-organ"} <= set(available())
    for name in available():
        r = load_recipe(name)
        assert r.published and all(for_table(t) for t in r.published)
        for ds, proto, meth, k in r.grid():
            assert meth in METHODS
            for key, (_, src) in r.resolve(meth, ds, proto, k).items():
                assert src.strip() and "<file>" not in src and "ref:" not in src, (name, key)
        for run in r.runs()[:40]:  # every key is a valid setting of its method (schema check)
            cfg = resolve(run.cfg)
            assert cfg["recipe"] == name


def test_biomedcoop_per_dataset_values_as_released():
    # configs/trainers/BiomedCoOp/few_shot/dermamnist.yaml L34-36, kneexray.yaml L36
    v = values(FEW, "biomedcoop", "DermaMNIST", shots=4)
    assert (v["method.sccm_lambda"], v["method.kdsp_lambda"], v["method.tau"]) == (5.0, 20.0, 1.5)
    assert values(FEW, "biomedcoop", "KneeXray")["method.tau"] == 1.75
    assert values(FEW, "biomedcoop", "BTMRI")["method.kdsp_lambda"] == 0.25
    assert (v["train.lr"], v["train.batch_size"], v["train.epochs"]) == (0.0025, 4, 100)
    # base_to_novel/covid.yaml: SCCM 20, KDSP 1, TAU 1.25, 50 epochs
    b = values(B2N, "biomedcoop", "COVID-QU-Ex")
    assert (b["method.sccm_lambda"], b["method.kdsp_lambda"], b["method.tau"],
            b["train.epochs"]) == (20.0, 1.0, 1.25, 50)
    src = load_recipe(FEW).resolve("biomedcoop", "DermaMNIST", "few-shot", 4)["method.tau"][1]
    assert src == ("HealthX-Lab/BiomedCoOp@7ceb5a8 configs/trainers/BiomedCoOp/few_shot/"
                   "dermamnist.yaml:L36 TAU")


def test_baselines_as_biomedcoop_scripts_run_them():
    for k in (1, 16):  # CoOp: 4 tokens from "a photo of a", 100 epochs at every K
        c = values(FEW, "coop", "BTMRI", shots=k)
        assert (c["method.n_ctx"], c["method.ctx_init"], c["train.epochs"]) == (4, "a photo of a", 100)
    assert values(B2N, "coop", "BTMRI")["train.epochs"] == 50
    assert values(FEW, "cocoop", "BTMRI")["train.lr"] == 0.001
    assert values(FEW, "kgcoop", "DermaMNIST")["method.lambda"] == 8.0
    assert values(FEW, "kgcoop", "BUSI")["method.lambda"] == 10.0
    assert values(B2N, "kgcoop", "BTMRI")["train.epochs"] == 50
    p = values(FEW, "prograd", "DermaMNIST")
    assert (p["train.batch_size"], p["method.n_ctx"], p["method.T"]) == (128, 4, 4.0)
    pb = values(B2N, "prograd", "Kvasir")
    assert (pb["train.lr"], pb["train.epochs"]) == (0.0015, 50)
    ca = values(FEW, "clip-adapter", "Kvasir", shots=2)
    assert ca["method.impl"] == "biomedcoop" and ca["method.alpha"] == 0.5
    assert (ca["train.lr"], ca["train.epochs"], ca["train.momentum"]) == (0.01, 20, 0.0)
    tip = values(FEW, "tip-adapter-f", "Kvasir")
    assert (tip["data.augment_views"], tip["method.impl"], tip["data.fresh_views"]) == (1, "biomedcoop", True)


def test_prompts_sampler_and_augmentation_policies():
    r = load_recipe(FEW)
    for ds, proto, meth, k in r.grid():
        v = values(FEW, meth, ds, proto, k)
        assert v["texts.templates"] == ["a photo of a {}."]
        assert (v["data.sampler"], v["data.val_shots"]) == ("dassl", 4)
        if meth in ("coop", "cocoop", "kgcoop", "prograd", "biomedcoop"):
            assert (v["data.crop_scale"], v["data.flip"], v["data.fresh_views"]) == ([0.08, 1.0], False, True)
            assert "data.sample_seed" not in v
        elif meth != "zero-shot":  # main.py methods: seed 1's images, crop 0.5-1 + flip
            assert (v["data.sample_seed"], v["data.crop_scale"], v["data.flip"]) == (1, [0.5, 1.0], True)
    assert set(r.sample_seed_methods()) == {"clip-adapter", "tip-adapter", "tip-adapter-f",
                                            "linear-probe", "lp++"}
    b = load_recipe(B2N)
    assert len(b.datasets) == 10 and "BUSI" not in [d["label"] for d in b.datasets]
    assert values(B2N, "coop", "BTMRI")["data.b2n_draw"] == "all"
    assert [m.name for m in b.methods] == ["zero-shot", "coop", "cocoop", "kgcoop", "prograd",
                                           "biomedcoop"]


def test_method_defaults_outside_a_recipe_stay_the_papers():
    from medadapt.methods import get_method
    load_all()
    assert get_method("coop").defaults["n_ctx"] == 16  # CoOp's paper; the recipe's 4 stays inside
    cfg = resolve({"backbone": "tiny-open-clip", "dataset": "btmri", "method": "coop", "shots": 1})
    assert cfg["method"]["n_ctx"] == 16 and "recipe" not in cfg


def test_off_recipe_names_the_keys_that_differ():
    r = load_recipe(FEW)
    stored = resolve(r.config("kgcoop", "DermaMNIST", "few-shot", 2))
    assert r.off_recipe(stored, "DermaMNIST") == []
    stored["backbone"] = "tiny-open-clip"  # reported on its own by --compare, not here
    assert r.off_recipe(stored, "DermaMNIST") == []
    stored["train"]["epochs"] = 1
    stored["method"]["lambda"] = 1.0
    assert r.off_recipe(stored, "DermaMNIST") == ["method.lambda", "train.epochs"]
    stored.pop("recipe")
    assert r.off_recipe(stored, "DermaMNIST") == ["not run from a recipe"]


def test_bad_recipes_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="unknown recipe 'biomedcop-fewshot'.*did you mean"):
        load_recipe("biomedcop-fewshot")
    bad = tmp_path / "r.yaml"
    bad.write_text("name: r\nextends: biomedcoop-fewshot\nsettings:\n  - when: {methods: [coop]}\n"
                   "    per_dataset: {keys: {method.n_ctx: src}, values: {BTMRI: [4]}}\n")
    with pytest.raises(UserError, match="data set BUSI needs 1 value"):
        load_recipe(bad)
    bad.write_text("name: r\nextends: biomedcoop-fewshot\nsettings:\n  - set: {train.lr: 0.1}\n")
    with pytest.raises(UserError, match="train.lr is {value, source} with a source"):
        load_recipe(bad)


def test_cli_recipes_and_methods_with_recipe(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(available()) and out[0].split()[0] == available()[0]
    assert any(line.startswith(B2N) and "10 data sets" in line for line in out)
    assert main(["recipes", FEW]) == 0
    out = capsys.readouterr().out
    assert "published:  biomedcoop-fewshot" in out and "LC25000        biomedcoop-lc25000" in out
    assert "their +- is over augmentation and initialisation only" in out
    assert main(["methods", "biomedcoop", "--recipe", FEW, "--dataset", "DermaMNIST",
                 "--shots", "4"]) == 0
    out = capsys.readouterr().out
    assert "  method.kdsp_lambda = 20.0\n      source: HealthX-Lab/BiomedCoOp@7ceb5a8 configs/" \
           "trainers/BiomedCoOp/few_shot/dermamnist.yaml:L35 KDSP_LAMBDA" in out
    assert "the method's own defaults" in out and "method.sccm_target = all" in out
    assert main(["methods", "coop", "--recipe", FEW, "--dataset", "Nope"]) == 2
    assert "has no data set 'Nope'" in capsys.readouterr().err
    assert main(["methods", "coop", "--recipe", FEW]) == 2
    assert main(["methods", "coop", "--recipe", B2N, "--dataset", "BTMRI", "--shots", "4"]) == 2
    assert "not 4" in capsys.readouterr().err
    assert main(["bench", "--recipe", FEW, "--out", "x", "--dry-run", "--only", "zzz"]) == 2


def test_recipe_end_to_end_on_standins_with_compare(tmp_path, monkeypatch, capsys):
    """bench --recipe on stand-in data (tiny backbone), both BiomedCoOp recipes: runs as the
    recipe says, and one with a --set that leaves the recipe; report --compare names the recipe,
    marks only that run and says what the +- of the seed-1 methods measures."""
    from biomedcoop_standins import make_standin
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    make_standin(data, "biomedcoop-dermamnist", {"train": 16, "val": 4, "test": 2})
    runs = tmp_path / "runs"
    base = ["bench", "--recipe", FEW, "--backbone", "tiny-open-clip", "--data-root", str(data),
            "--out", str(runs), "--quiet"]
    assert main(base + ["--only", "DermaMNIST/few-shot/lp++/1shot",
                        "DermaMNIST/few-shot/tip-adapter/1shot"]) == 0
    assert main(base + ["--set", "train.epochs=1", "--only", "DermaMNIST/few-shot/coop/1shot"]) == 0
    cfg = (runs / "tiny-open-clip/DermaMNIST/few-shot/coop/1shot/config.yaml").read_text()
    assert "recipe: biomedcoop-fewshot" in cfg and "n_ctx: 4" in cfg
    capsys.readouterr()
    assert main(["report", str(runs), "--compare", FEW]) == 0
    assert "recipe biomedcoop-fewshot: 2 run folder(s) follow it, 1 off it" in capsys.readouterr().out
    md = (runs / "report" / f"compare_{FEW}.md").read_text()
    assert "Recipe: `biomedcoop-fewshot`" in md and "2 run folder(s) follow it, 1 are off it" in md
    assert "- tiny-open-clip/DermaMNIST/few-shot/coop/1shot: train.epochs" in md
    coop = next(line for line in md.splitlines() if line.startswith("| CoOp | DermaMNIST |"))
    lp = next(line for line in md.splitlines() if line.startswith("| LP++ | DermaMNIST |"))
    assert "†" in coop.split("|")[3] and "†" not in lp
    assert "± of lp++, tip-adapter: every seed trains on the same few-shot images" in md
    rows = list(csv.DictReader(open(runs / "report" / f"compare_{FEW}.csv")))
    cell = next(r for r in rows if r["row"] == "CoOp" and r["dataset"] == "DermaMNIST"
                and r["column"] == "1")
    assert cell["off_recipe"] == "train.epochs" and cell["recipe"] == FEW
    js = json.loads((runs / "report" / f"compare_{FEW}.json").read_text())
    assert js["recipe"]["runs_off"] == {"tiny-open-clip/DermaMNIST/few-shot/coop/1shot":
                                        ["train.epochs"]}

    # base-to-novel: zero-shot as the recipe says, CoOp with one epoch (off the recipe)
    b2n = tmp_path / "b2n"
    base = ["bench", "--recipe", B2N, "--backbone", "tiny-open-clip", "--data-root", str(data),
            "--out", str(b2n), "--quiet"]
    assert main(base + ["--only", "DermaMNIST/base-to-novel/zero-shot/16shot"]) == 0
    assert main(base + ["--set", "train.epochs=1", "--only", "DermaMNIST/base-to-novel/coop/"]) == 0
    res = json.loads((b2n / "tiny-open-clip/DermaMNIST/base-to-novel/coop/16shot/summary.json")
                     .read_text())
    assert res["novel"]["mean"] is not None
    assert main(["report", str(b2n), "--compare", B2N]) == 0
    md = (b2n / "report" / f"compare_{B2N}.md").read_text()
    assert "Recipe: `biomedcoop-b2n`" in md and "1 run folder(s) follow it, 1 are off it" in md
    assert "mean over 1 of 10 data sets" in md
    zs = next(line for line in md.splitlines() if line.startswith("| BiomedCLIP (zero-shot) | mean |"))
    assert "†" not in zs


def test_grid_file_naming_a_recipe(tmp_path):
    from medadapt.report.bench import expand_recipe, load_grid
    g = tmp_path / "g.yaml"
    g.write_text("recipe: biomedcoop-b2n\nout: o\nset: {train.epochs: 2}\n")
    runs, recipe = expand_recipe(load_grid(g), ["seeds=[1]"], backbone="tiny-open-clip")
    assert recipe.name == B2N and len(runs) == 60
    coop = next(r for r in runs if r.id == "tiny-open-clip/BTMRI/base-to-novel/coop/16shot")
    assert coop.cfg["train"]["epochs"] == 2 and coop.seeds == [1] and coop.cfg["recipe"] == B2N
    assert recipe.off_recipe(resolve(coop.cfg), "BTMRI") == ["train.epochs", "seeds ([1] instead "
                                                             "of [1, 2, 3])"]
    g.write_text("recipe: biomedcoop-b2n\nmethods: [coop]\n")
    with pytest.raises(UserError, match="takes its data sets, methods"):
        expand_recipe(load_grid(g))
    assert main(["bench", str(g), "--recipe", B2N]) == 2
