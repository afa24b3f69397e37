"""Configs as data: packaged defaults = the paper's, shipped YAMLs load, overrides are typed."""
from pathlib import Path

import pytest

from medadapt.errors import UserError
from medadapt.instruct import config as C
from medadapt.instruct.train import _deepspeed

CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "instruct").glob("*.yaml"))


def test_defaults_are_the_papers():
    t = C.load("train")  # PathInsight Section 2.2
    assert (t.learning_rate, t.warmup_ratio, t.epochs, t.max_length, t.batch_size) == (1e-5, 0.05, 3, 2048, 2)
    assert t.method == "full" and t.freeze_vision is False


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    if path.name.startswith("ds_"):
        ds = _deepspeed(str(path))
        assert ds["zero_optimization"]["stage"] in (2, 3)
        return
    for section in ("build", "train", "eval"):
        C.load(section, path)


def test_overrides_are_typed_and_checked(tmp_path):
    t = C.load("train", sets=["learning_rate=2e-4", "lora.r=32", "save_strategy=no", "epochs=1"])
    assert t.learning_rate == pytest.approx(2e-4) and t.lora.r == 32 and t.save_strategy == "no"
    with pytest.raises(UserError, match="unknown key"):
        C.load("train", sets=["learning_rat=1"])
    with pytest.raises(UserError, match="expected float"):
        C.load("train", sets=["learning_rate=fast"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  method: [full\n")
    with pytest.raises(UserError, match=rf"{bad}:\d+: invalid YAML"):
        C.load("train", bad)


def test_anchor_and_two_stage_configs():
    root = Path(__file__).parents[1] / "configs" / "instruct"
    a = C.load("train", root / "llava-anchors-lora.yaml")  # LLaVA-1.5 finetune_lora.sh
    assert (a.lora.r, a.lora.alpha, a.learning_rate, a.projector_lr) == (128, 256, 2e-4, 2e-5)
    assert a.lora.modules_to_save == ["multi_modal_projector"] and a.group_by_length
    s1 = C.load("train", root / "llava-two-stage.yaml", key="stage1")
    assert s1.freeze_llm and s1.freeze_vision and s1.learning_rate == 1e-3
    s2 = C.load("train", root / "llava-two-stage.yaml")
    assert not s2.freeze_llm and s2.learning_rate == 2e-5
    with pytest.raises(UserError, match="no section 'stage3'"):
        C.load("train", root / "llava-two-stage.yaml", key="stage3")
