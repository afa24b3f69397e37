"""Fine-tuning a tiny random LLaVA (real LlavaForConditionalGeneration class) on real H&E tiles.

The model is saved with ``save_pretrained`` and loaded back through the same ``from_pretrained``
path a hub id takes.
"""
import json
from pathlib import Path

import pytest
import torch

from medadapt.errors import UserError
from medadapt.instruct import config as C
from medadapt.instruct.encode import IGNORE, ChatEncoder, Collator
from medadapt.instruct.eval import generate
from medadapt.instruct.records import read_records
from medadapt.instruct.tiny import build_tiny_llava
from medadapt.instruct.train import load_for_inference, load_model, load_processor, train

DATA = Path(__file__).parents[2] / "shared" / "data"
CRC = DATA / "crc-val-he-7k-sample"
ANSWERS = {"ADI": "Adipose tissue", "LYM": "Lymphocytes", "TUM": "Colorectal adenocarcinoma epithelium",
           "MUS": "Smooth muscle"}


def _item(code, i=0, q="What tissue type is shown in this image?"):
    tile = sorted((CRC / code).glob("*.png"))[i]
    return {"id": f"{code}{i}", "task": "classification", "source": "crc", "label": code,
            "messages": [{"role": "user", "content": f"<image>\n{q}"},
                         {"role": "assistant", "content": ANSWERS[code]}], "images": [str(tile)]}


def _write(path, items):
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = list(ANSWERS.values()) + ["What tissue type is shown in this image?", "Is it benign?"]
    return str(build_tiny_llava(tmp_path_factory.mktemp("tiny") / "llava", texts))


@pytest.fixture(scope="module")
def two_items(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("d") / "train.jsonl", [_item("ADI"), _item("LYM")])


def _cfg(**sets):
    base = {"save_strategy": "no", "logging_steps": 1, "warmup_ratio": 0, "lr_scheduler": "constant",
            "batch_size": 2}
    base.update(sets)
    return C.load("train", sets=[f"{k}={json.dumps(v)}" for k, v in base.items()])


def test_assistant_only_labels_and_image_tokens(tiny, tmp_path):
    proc = load_processor(tiny)
    item = _item("ADI")
    item["messages"] += [{"role": "user", "content": "Is it benign?"}, {"role": "assistant", "content": "Yes."}]
    rec = read_records(_write(tmp_path / "x.jsonl", [item]))[0]
    enc = ChatEncoder(proc, max_length=2048).encode(rec)
    ids, labels = enc["input_ids"], enc["labels"]
    sup = proc.tokenizer.decode(ids[labels != IGNORE])
    assert sup == "Adipose tissue<|im_end|>\nYes.<|im_end|>\n"
    assert ids[0] == proc.tokenizer.bos_token_id and int((ids == proc.tokenizer.bos_token_id).sum()) == 1
    assert int((ids == proc.image_token_id).sum()) == 16  # (32 / 8) ** 2 patches, CLS dropped
    assert (labels[ids == proc.image_token_id] == IGNORE).all()
    batch = Collator(proc.tokenizer.pad_token_id)([enc, ChatEncoder(proc).encode(
        read_records(_write(tmp_path / "y.jsonl", [_item("LYM")]))[0])])
    assert batch["pixel_values"].shape[0] == 2 and batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][1, batch["attention_mask"][1] == 0] == IGNORE).all()


def test_image_tokens_are_never_truncated(tiny, tmp_path):
    proc = load_processor(tiny)
    f = _write(tmp_path / "t.jsonl", [_item("ADI"), _item("LYM")])
    rec = read_records(f)[1]
    n = ChatEncoder(proc).encode(rec)["input_ids"].shape[0]
    cut = ChatEncoder(proc, max_length=n - 2).encode(rec)  # text after the image is cut
    assert cut["input_ids"].shape[0] == n - 2
    assert int((cut["input_ids"] == proc.image_token_id).sum()) == 16
    with pytest.raises(UserError) as e:
        ChatEncoder(proc, max_length=10).encode(rec)
    assert f"{f}:2" in str(e.value) and "image tokens" in str(e.value)
    with pytest.raises(UserError, match=rf"{f}:1: .*image tokens"):  # through training's precheck
        train(_cfg(max_steps=1, max_length=10), tiny, f, tmp_path / "run")
    with pytest.raises(UserError, match=r"no training items left .*image_tokens_truncated': 2"):
        train(_cfg(max_steps=1, max_length=10, skip_bad=True), tiny, f, tmp_path / "run")


def test_full_finetune_overfits_and_reproduces_answers(tiny, two_items, tmp_path):
    # the random tiny ViT stays frozen: at this learning rate training it washes out image content
    s = train(_cfg(method="full", freeze_vision=True, learning_rate=3e-3, max_steps=80), tiny, two_items,
              tmp_path / "run")
    losses = s["losses"]
    assert losses[-1] < 0.05 * losses[0]
    model, proc = load_for_inference(str(tmp_path / "run" / "final"))
    recs = read_records(two_items)
    assert generate(model, proc, recs, max_new_tokens=12) == ["Adipose tissue", "Lymphocytes"]


def test_freeze_vision_keeps_the_vision_tower(tiny, two_items, tmp_path):
    s = train(_cfg(method="full", freeze_vision=True, learning_rate=1e-3, max_steps=2), tiny, two_items,
              tmp_path / "run")
    before = load_model(tiny).state_dict()
    after = load_model(str(tmp_path / "run" / "final")).state_dict()
    vis = [k for k in before if "vision_tower" in k]
    assert vis and all(torch.equal(before[k], after[k]) for k in vis)
    assert any(not torch.equal(before[k], after[k]) for k in before if "language_model" in k)
    assert s["n_trainable_params"] < s["n_params"]


def test_lora_trains_only_lora_and_merges_identically(tiny, two_items, tmp_path):
    out = tmp_path / "run"
    s = train(_cfg(method="lora", learning_rate=1e-2, max_steps=12, merge_lora=True,
                   **{"lora.r": 16, "lora.alpha": 32}), tiny, two_items, out)
    assert s["losses"][-1] < s["losses"][0]
    final = out / "final"
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    from peft import PeftModel
    from safetensors.torch import load_file
    saved = load_file(str(final / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    assert any("vision_tower" in k for k in saved)  # LoRA on the ViT too (paper Section 2.2)
    # the base weights inside the peft model are untouched; only LoRA parameters are trainable
    base_sd = load_model(tiny).state_dict()
    peft_model = PeftModel.from_pretrained(load_model(tiny), str(final)).eval()
    for name, p in peft_model.named_parameters():
        if "lora_" not in name:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, base_sd[key]), name
    assert s["n_trainable_params"] == sum(v.numel() for v in saved.values())
    # merged model == base + adapter: same logits, same greedy answers
    merged, proc = load_for_inference(str(out / "merged"))
    recs = read_records(two_items)
    batch = Collator(proc.tokenizer.pad_token_id)([ChatEncoder(proc).encode(r) for r in recs])
    batch.pop("labels")
    with torch.no_grad():
        a, b = peft_model(**batch).logits, merged(**batch).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, load_model(tiny)(**batch).logits, atol=1e-4)  # LoRA did change it
    assert generate(peft_model, proc, recs, max_new_tokens=8) == generate(merged, proc, recs, max_new_tokens=8)


def test_resume_continues_from_last_checkpoint(tiny, two_items, tmp_path):
    out = tmp_path / "run"
    train(_cfg(method="lora", max_steps=2, save_strategy="steps", save_steps=2), tiny, two_items, out)
    with pytest.raises(UserError, match="--resume"):
        train(_cfg(method="lora", max_steps=4), tiny, two_items, out)
    s = train(_cfg(method="lora", max_steps=4, save_strategy="steps", save_steps=2), tiny, two_items, out,
              resume="auto")
    assert s["resumed_from"].endswith("checkpoint-2") and s["steps"] == 4


def test_qlora_without_bitsandbytes_or_gpu_is_a_clear_error(tiny, two_items, tmp_path):
    try:
        import bitsandbytes  # noqa: F401
        if torch.cuda.is_available():
            pytest.skip("QLoRA can run here")
    except ImportError:
        pass
    with pytest.raises(UserError, match="qlora needs"):
        train(_cfg(method="qlora", max_steps=1), tiny, two_items, tmp_path / "run")


def test_adapter_from_relative_model_path_loads_from_another_folder(tiny, two_items, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(tiny).parent)
    train(_cfg(method="lora", max_steps=1), Path(tiny).name, two_items, tmp_path / "run")
    cfg = json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(Path(tiny).resolve())
    monkeypatch.chdir(tmp_path)
    model, _ = load_for_inference(str(tmp_path / "run" / "final"))
    assert model is not None


def test_stage1_trains_only_the_projector(tiny, two_items, tmp_path):
    s = train(_cfg(method="full", freeze_llm=True, freeze_vision=True, learning_rate=1e-2, max_steps=2),
              tiny, two_items, tmp_path / "run")
    before = load_model(tiny).state_dict()
    after = load_model(str(tmp_path / "run" / "final")).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("multi_modal_projector" in k for k in changed)
    assert s["n_trainable_params"] == sum(v.numel() for k, v in before.items() if "multi_modal_projector" in k)


def test_projector_learning_rate_and_length_grouping(tiny, two_items, tmp_path, monkeypatch):
    from medadapt.instruct import train as T
    seen = {}
    orig = T._trainer_class

    def spy():
        cls = orig()

        class Spy(cls):
            def create_optimizer(self, *a, **k):
                opt = super().create_optimizer(*a, **k)
                seen["lrs"] = sorted({g["lr"] for g in opt.param_groups})
                return opt

            def _get_train_sampler(self, *a, **k):
                sampler = super()._get_train_sampler(*a, **k)
                seen["sampler"] = type(sampler).__name__
                return sampler
        return Spy

    monkeypatch.setattr(T, "_trainer_class", spy)
    train(_cfg(method="lora", learning_rate=2e-4, projector_lr=2e-5, group_by_length=True, max_steps=1,
               **{"lora.modules_to_save": ["multi_modal_projector"]}), tiny, two_items, tmp_path / "run")
    assert seen["lrs"] == [2e-5, 2e-4] and seen["sampler"] == "LengthGroupedSampler"


def test_truncation_is_counted_and_warned(tiny, tmp_path):
    item = _item("ADI")
    item["messages"] += [{"role": "user", "content": "Is it benign?"},
                         {"role": "assistant", "content": "Yes, benign adipose tissue."}]
    f = _write(tmp_path / "train.jsonl", [item, _item("LYM")])
    proc = load_processor(tiny)
    rec = read_records(f)[0]
    n = ChatEncoder(proc).encode(rec)["input_ids"].shape[0]
    first_end = int((ChatEncoder(proc).encode(rec)["labels"] != IGNORE).nonzero()[0]) + 6
    with pytest.warns(UserWarning, match="1 of 2 training items exceed"):
        s = train(_cfg(max_steps=1, max_length=first_end), tiny, f, tmp_path / "run")
    assert first_end < n
    assert s["truncation"]["truncated"] == 1 and s["truncation"]["turns_dropped"] == 1
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["truncation"]["turns_dropped"] == 1
