"""Label masking and stop-token supervision with the real chat templates and special-token ids of
LLaVA-1.5-hf, LLaVA-NeXT (mistral), Qwen2-VL / Qwen2.5-VL and Idefics2, built offline
(:mod:`medadapt.instruct.tiny`: the templates are copied from the checkpoints' files)."""
import json
from pathlib import Path

import pytest
import torch

from medadapt.instruct import config as C
from medadapt.instruct.encode import IGNORE, ChatEncoder, Collator, stop_token_ids
from medadapt.instruct.records import Record, read_records
from medadapt.instruct.tiny import FAMILIES, build_tiny_family

DATA = Path(__file__).parents[2] / "shared" / "data" / "crc-val-he-7k-sample"
TILE = str(sorted((DATA / "ADI").glob("*.png"))[0])
Q = "What tissue type is shown in this image?"
TWO_TURNS = [{"role": "user", "content": f"<image>\n{Q}"}, {"role": "assistant", "content": "Adipose tissue"},
             {"role": "user", "content": "Is it benign?"}, {"role": "assistant", "content": "Yes."}]
# what each template makes the model learn: the answers and a stop token after each
SUPERVISED = {
    "llava-1.5": " Adipose tissue</s> Yes.</s>",              # template writes no </s>: inserted
    "llava-next": " Adipose tissue</s> Yes.</s>",             # template writes the text "<\s>": not EOS
    "qwen2-vl": "Adipose tissue<|im_end|>\nYes.<|im_end|>\n",  # template's own end-of-turn
    "qwen2.5-vl": "Adipose tissue<|im_end|>\nYes.<|im_end|>\n",
    "idefics2": " Adipose tissue<end_of_utterance>\n Yes.<end_of_utterance>\n",
}
IDS = {"llava-1.5": {"</s>": 2, "<image>": 32000}, "llava-next": {"</s>": 2, "<image>": 32000},
       "qwen2-vl": {"<|im_end|>": 151645, "<|image_pad|>": 151655},
       "qwen2.5-vl": {"<|im_end|>": 151645, "<|image_pad|>": 151655},
       "idefics2": {"<end_of_utterance>": 32002, "<image>": 32001}}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: build_tiny_family(f, root / f, [Q, "Adipose tissue Yes."], with_model=f == "qwen2-vl")
            for f in FAMILIES}


@pytest.fixture(scope="module")
def procs(family_dirs):
    from transformers import AutoProcessor
    return {f: AutoProcessor.from_pretrained(d) for f, d in family_dirs.items()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_answer_ends_with_a_supervised_stop_token(procs, family):
    proc = procs[family]
    tok = proc.tokenizer
    for name, tid in IDS[family].items():
        assert tok.convert_tokens_to_ids(name) == tid  # the real checkpoint's id
    rec = Record(id="x", messages=TWO_TURNS, images=[TILE], task="conversation")
    info = {}
    enc = ChatEncoder(proc).encode(rec, info)
    ids, labels = enc["input_ids"], enc["labels"]
    assert tok.decode(ids[labels != IGNORE]) == SUPERVISED[family]
    assert info["eos_inserted"] == (2 if family.startswith("llava") else 0)
    stops = set(stop_token_ids(proc))
    sup = (labels != IGNORE).int().tolist()
    ends = [i for i in range(len(sup)) if sup[i] and (i + 1 == len(sup) or not sup[i + 1])]
    assert len(ends) == 2
    for e in ends:  # the last supervised token of a turn is (or directly follows) a stop token
        assert int(ids[e]) in stops or int(ids[e - 1]) in stops
    image_id = [v for k, v in IDS[family].items() if "image" in k][0]
    assert int((ids == image_id).sum()) > 1 and (labels[ids == image_id] == IGNORE).all()
    # the generation prompt the model answers from ends where the first supervised span starts
    first = Record(id="y", messages=TWO_TURNS[:2], images=[TILE], task="vqa")
    text, _ = ChatEncoder(proc).prompt(first)
    assert text.rstrip().endswith(("ASSISTANT:", "[/INST]", "assistant", "Assistant:"))


def test_image_processor_runs_once_per_item(procs):
    proc = procs["qwen2-vl"]
    calls = []
    orig = proc.image_processor.__class__.__call__

    def counting(self, *a, **k):
        calls.append(1)
        return orig(self, *a, **k)

    rec = Record(id="x", messages=TWO_TURNS, images=[TILE], task="conversation")
    enc = ChatEncoder(proc)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(proc.image_processor.__class__, "__call__", counting)
        enc.encode(rec)
    assert len(calls) == 1


def _items(tmp_path, n=1, sizes=((32, 32),)):
    from PIL import Image
    items = []
    for i, (w, h) in enumerate(sizes[:n] if len(sizes) >= n else sizes * n):
        p = tmp_path / f"im{i}.png"
        Image.open(TILE).convert("RGB").resize((w, h)).save(p)
        items.append({"id": f"i{i}", "task": "classification", "source": "crc", "label": "ADI",
                      "messages": [{"role": "user", "content": f"<image>\n{Q}"},
                                   {"role": "assistant", "content": "Adipose tissue"}], "images": [str(p)]})
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in items))
    return f


def test_llava15_learns_to_stop(tmp_path):
    """LLaVA-1.5-hf's template writes no </s>; trained a few steps on one answer, the tiny model
    must end its answer with EOS instead of running to max_new_tokens."""
    from medadapt.instruct.eval import generate
    from medadapt.instruct.train import load_for_inference, train
    path = build_tiny_family("llava-1.5", tmp_path / "llava", [Q, "Adipose tissue"], hidden=32)
    data = _items(tmp_path)
    cfg = C.load("train", sets=["save_strategy=no", "logging_steps=1", "warmup_ratio=0",
                                "lr_scheduler=constant", "batch_size=1", "freeze_vision=true",
                                "learning_rate=3e-3", "max_steps=25"])
    train(cfg, str(path), data, tmp_path / "run")
    model, proc = load_for_inference(str(tmp_path / "run" / "final"))
    rec = read_records(data)[0]
    text, images = ChatEncoder(proc).prompt(rec)
    inputs = proc(text=[text], images=images, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert 2 in new and len(new) < 20  # </s> generated, well before the limit
    assert generate(model, proc, [rec], max_new_tokens=20) == ["Adipose tissue"]


def test_llava_next_batches_images_with_different_patch_counts(tmp_path):
    from medadapt.instruct.train import load_model, load_processor
    path = build_tiny_family("llava-next", tmp_path / "next", [Q, "Adipose tissue"])
    proc = load_processor(str(path))
    recs = read_records(_items(tmp_path, 2, ((64, 32), (64, 64))))  # 2x1 vs 2x2 tiles, + base
    encs = [ChatEncoder(proc).encode(r) for r in recs]
    assert encs[0]["pixel_values"].shape[1] != encs[1]["pixel_values"].shape[1]
    batch = Collator(proc.tokenizer.pad_token_id)(encs)
    assert batch["pixel_values"].shape[0] == 2 and batch["image_sizes"].shape == (2, 2)
    model = load_model(str(path))
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss)


def test_qwen2vl_batches_images_with_different_grids(family_dirs, procs, tmp_path):
    from medadapt.instruct.train import load_model
    path, proc = family_dirs["qwen2-vl"], procs["qwen2-vl"]
    recs = read_records(_items(tmp_path, 2, ((56, 56), (56, 28))))
    encs = [ChatEncoder(proc).encode(r) for r in recs]
    assert [e["pixel_values"].shape[0] for e in encs] == [16, 8]  # patches of 14 px, 2x2 temporal
    batch = Collator(proc.tokenizer.pad_token_id)(encs)
    assert batch["pixel_values"].shape[0] == 24 and batch["image_grid_thw"].shape == (2, 3)
    assert batch["mm_token_type_ids"].shape == batch["input_ids"].shape
    with torch.no_grad():
        assert torch.isfinite(load_model(str(path))(**batch).loss)


def test_generation_stops_on_end_of_turn_tokens(procs):
    # evaluation passes these to generate(): Idefics2 ends turns with <end_of_utterance>, not </s>
    assert {2, 32002} <= set(stop_token_ids(procs["idefics2"]))
    assert 151645 in stop_token_ids(procs["qwen2-vl"]) and stop_token_ids(procs["llava-1.5"])[0] == 2
