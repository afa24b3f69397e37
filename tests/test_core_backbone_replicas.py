"""Every registered medical backbone, as a reduced-size replica of its published configuration
(medadapt.backbones.replicas: same classes, image size, tokenizer kind and special ids, file names
and formats), loads with the network off through its alias (Hugging Face cache layout,
HF_HUB_OFFLINE=1, subprocess) and through a folder (``--backbone DIR``), and runs zero-shot, CoOp
and MaPLe one step. Also: layer-0 visual prompts enter before the vision pre-LayerNorm (reference
forwards written out per family), CONCH's tokenizer / pooling conventions, BiomedCLIP's carried
text-tower config."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from medadapt.backbones import BACKBONES, load_backbone
from medadapt.backbones import replicas
from medadapt.backbones.tiny import BIOMEDBERT

ALIASES = list(replicas.BUILDERS)
# published conventions per alias: family, image size, context length, (start, end, pad) ids
PUBLISHED = {
    "plip": ("hf_clip", 224, 77, (49406, 49407, 49407)),
    "monet": ("hf_clip", 224, 77, (49406, 49407, 49407)),
    "biomedclip": ("open_clip", 224, 256, (2, 3, 0)),
    "quiltnet-b32": ("open_clip", 224, 77, (49406, 49407, 0)),
    "quiltnet-b16": ("open_clip", 224, 77, (49406, 49407, 0)),
    "conch": ("conch", 448, 128, (1, 2, 0)),
}
TEXTS = ["a photo of debris.", "tumor epithelium"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Replica folders, the same files in a fake Hugging Face cache, the reduced BERT config."""
    root = tmp_path_factory.mktemp("replicas")
    folders, text_cfgs = {}, {}
    for alias, (build, repo) in replicas.BUILDERS.items():
        out = build(root / "folders" / alias)
        if isinstance(out, tuple):
            out, tc = out
            text_cfgs.update(tc)
        folders[alias] = out
        assert BACKBONES.get(alias).source.split(":", 1)[-1] == repo
        replicas.hub_cache_layout(root / "hub", repo, out)
    tc_file = root / "text_configs.json"
    tc_file.write_text(json.dumps(text_cfgs))
    return {"root": root, "folders": folders, "hub": root / "hub", "text_configs": tc_file}


@pytest.fixture
def network_off(monkeypatch, world):
    """No socket may connect; huggingface_hub and transformers are offline."""
    def refuse(*a, **k):
        raise OSError("network is off in this test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MEDADAPT_HF_TEXT_CONFIGS", str(world["text_configs"]))
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def pixels(bb, n=2, seed=0):
    return torch.randn(n, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(seed))


def run_methods(bb) -> dict:
    """Zero-shot, then one optimiser step of CoOp and of MaPLe; returns a summary."""
    from medadapt.data.texts import TEMPLATES, ClassTexts
    from medadapt.methods import Batch, get_method
    texts = ClassTexts(["adipose", "tumor"], TEMPLATES["histopathology"], {})
    px, y = pixels(bb, 2, 1), torch.tensor([0, 1])
    out = {}
    with torch.no_grad():
        feats = bb.encode_image(px, normalize=False)
    for name in ("zero-shot", "coop", "maple"):
        torch.manual_seed(0)
        cls = get_method(name)
        m = cls(bb, texts, {})
        batch = Batch(labels=y, images=px) if cls.needs_images else Batch(labels=y, features=feats)
        params = [p for p in m.parameters() if p.requires_grad]
        if params:
            before = [p.detach().clone() for p in params]
            m.train()
            loss, _ = m.loss(batch)
            opt = torch.optim.SGD(params, lr=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            moved = any(not torch.equal(a, p.detach()) for a, p in zip(before, params))
            out[name] = {"loss": float(loss.detach()), "moved": moved}
        m.eval()
        with torch.no_grad():
            logits = m(batch)
        out.setdefault(name, {})["logits_shape"] = list(logits.shape)
        out[name]["finite"] = bool(torch.isfinite(logits).all())
    return out


def summary(bb) -> dict:
    ids = bb.tokenize(TEXTS)
    with torch.no_grad():
        t = bb.encode_text(ids, normalize=False)
        i = bb.encode_image(pixels(bb), normalize=False)
    return {"family": bb.family, "image_size": bb.image_size, "ctx": bb.context_length,
            "ids": ids[0, :3].tolist(), "eos": bb.eos_positions(ids).tolist(),
            "pooled": bb.pooled_positions(ids).tolist(), "t": t.flatten()[:6].tolist(),
            "i": i.flatten()[:6].tolist(), "methods": run_methods(bb)}


ALIAS_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[1])
    from test_core_backbone_replicas import summary
    from medadapt.backbones import load_backbone
    print("JSON" + json.dumps({a: summary(load_backbone(a)) for a in sys.argv[2:]}))
""")


@pytest.fixture(scope="module")
def by_alias(world):
    """One subprocess (network off) loads every alias from the fake Hugging Face cache."""
    env = dict(os.environ, HF_HUB_CACHE=str(world["hub"]), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9",
               MEDADAPT_HF_TEXT_CONFIGS=str(world["text_configs"]),
               PYTHONPATH=os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "src"),
                                           os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", ALIAS_SCRIPT, os.path.dirname(__file__), *ALIASES],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("JSON")][-1]
    return json.loads(line[4:])


@pytest.mark.parametrize("alias", ALIASES)
def test_alias_and_folder_load_offline_and_run_methods(alias, world, by_alias, network_off):
    fam, size, ctx, (start, end, pad) = PUBLISHED[alias]
    a = by_alias[alias]
    bb = load_backbone(str(world["folders"][alias]))  # --backbone DIR
    f = summary(bb)
    for s in (a, f):
        assert (s["family"], s["image_size"], s["ctx"]) == (fam, size, ctx)
        assert s["ids"][0] == start
        for name in ("zero-shot", "coop", "maple"):
            assert s["methods"][name]["logits_shape"] == [2, 2] and s["methods"][name]["finite"]
        for name in ("coop", "maple"):
            assert s["methods"][name]["moved"], (alias, name)
    # the same weights whichever route: features equal
    assert torch.allclose(torch.tensor(a["t"]), torch.tensor(f["t"]), atol=1e-5)
    assert torch.allclose(torch.tensor(a["i"]), torch.tensor(f["i"]), atol=1e-5)
    ids = bb.tokenize(TEXTS)
    assert ids[0, int(bb.eos_positions(ids)[0])] == end
    assert ids[0, -1] == pad
    from torchvision import transforms as T  # the one train policy, at the model's size
    rrc = [t for t in bb.train_preprocess.transforms if isinstance(t, T.RandomResizedCrop)][0]
    assert rrc.scale == (0.08, 1.0) and tuple(rrc.size) == (size, size)


def test_pooled_positions_are_what_each_family_pools(world, network_off):
    bm = load_backbone(str(world["folders"]["biomedclip"]))
    ids = bm.tokenize(TEXTS)
    assert bm.pooled_positions(ids).tolist() == [0, 0]  # [CLS]
    assert (ids[torch.arange(2), bm.eos_positions(ids)] == 3).all()  # [SEP]
    emb = bm.embed_tokens(ids).clone()
    emb[:, 0] += torch.randn(emb.shape[-1], generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(bm.encode_text(ids, embeddings=emb), bm.encode_text(ids), atol=1e-4)
    co = load_backbone(str(world["folders"]["conch"]))
    ids = co.tokenize(TEXTS)
    assert co.pooled_positions(ids).tolist() == [127, 127]


# ------------------------------------------------------------------------------------------------
# CONCH conventions
# ------------------------------------------------------------------------------------------------
def test_conch_tokenizer_and_text_forward_follow_the_reference(world, network_off):
    from medadapt.backbones.conch import PUBLISHED_CONFIG, config_from_state_dict, read_state_dict
    co = load_backbone(str(world["folders"]["conch"]))
    ids = co.tokenize(TEXTS)
    # custom_tokenizer.tokenize: 127 tokens (start ... end, padded) + one <pad> for the CLS
    assert ids.shape == (2, 128) and (ids[:, 0] == 1).all() and (ids[:, -1] == 0).all()
    e = co.eos_positions(ids)
    assert all(int(ids[r, e[r] + 1:].abs().sum()) == 0 for r in range(2))
    # the last slot is dropped before the transformer: its token id cannot matter
    ids2 = ids.clone()
    ids2[:, -1] = 5
    assert torch.equal(co.encode_text(ids), co.encode_text(ids2))
    # hand-written CoCa text forward (coca_model._encode_text + transformer.TextTransformer)
    tt = co.model.text
    text = ids[:, :-1]
    x = torch.cat([tt.token_embedding(text), tt.cls_emb.view(1, 1, -1).expand(2, 1, -1)], 1)
    L = x.shape[1]
    causal = torch.full((L, L), float("-inf")).triu(1)
    keep = torch.cat([torch.ones(2, 1, dtype=torch.bool), text != 0], 1)  # CoCa's shifted mask
    cls_rows = torch.zeros(2, L, L)
    cls_rows[:, -1] = torch.where(keep, 0.0, float("-inf"))
    mask = (causal[None] + cls_rows).repeat_interleave(tt.heads, 0)
    h = (x + tt.positional_embedding[:L]).permute(1, 0, 2)
    for blk in tt.transformer.resblocks:
        q = blk.ln_1(h)
        h = h + blk.attn(q, q, q, need_weights=False, attn_mask=mask)[0]
        h = h + blk.mlp(blk.ln_2(h))
    ref = tt.ln_final(h.permute(1, 0, 2)[:, -1]) @ tt.text_projection
    with torch.no_grad():
        assert torch.allclose(co.encode_text(ids, normalize=False), ref, atol=1e-5)
    # deep prompts see [B, L, D] although CONCH's text transformer is sequence-first
    seen = []
    with co.layer_hooks([("text", 1, lambda h: seen.append(tuple(h.shape)) or h)]):
        co.encode_text(ids)
    assert seen == [(2, 128, co.text_width)]
    # sizes come from the checkpoint; everything else is the published config
    cfg = config_from_state_dict(read_state_dict(world["folders"]["conch"] / "pytorch_model.bin"))
    assert cfg["vision_cfg"]["image_size"] == 448 and cfg["text_cfg"]["context_length"] == 128
    assert cfg["text_cfg"]["vocab_size"] == PUBLISHED_CONFIG["text_cfg"]["vocab_size"] == 32007
    assert cfg["vision_cfg"]["n_queries_caption"] == 256


def test_conch_full_size_config_is_the_published_one():
    """A full-size CONCH (built on the meta device: no memory) gives back conch_ViT-B-16.json."""
    from medadapt.backbones.conch import PUBLISHED_CONFIG, CoCa, config_from_state_dict
    with torch.device("meta"):
        sd = CoCa(PUBLISHED_CONFIG).state_dict()
    assert config_from_state_dict(sd) == PUBLISHED_CONFIG
    n = sum(v.numel() for k, v in sd.items() if not k.startswith("text_decoder."))
    assert 190e6 < n < 210e6  # ViT-B/16 + 12-layer text encoder + poolers (CONCH: ~200M w/o decoder)


def test_conch_folder_errors_are_one_line(tmp_path, world, network_off):
    from medadapt.errors import UserError
    (tmp_path / "pytorch_model.bin").write_bytes(
        (world["folders"]["conch"] / "pytorch_model.bin").read_bytes())
    with pytest.raises(UserError, match="conch_byte_level_bpe_uncased.json"):
        load_backbone(str(tmp_path))
    with pytest.raises(UserError, match="not found"):
        load_backbone("conch:" + str(tmp_path / "nope"))


# ------------------------------------------------------------------------------------------------
# BiomedCLIP: the text tower's config is carried; unknown towers name what to download
# ------------------------------------------------------------------------------------------------
def test_carried_biomedbert_config_is_bert_base(monkeypatch, tmp_path):
    from transformers import AutoConfig
    from medadapt.backbones.openclip import text_config_folder
    monkeypatch.delenv("MEDADAPT_HF_TEXT_CONFIGS", raising=False)
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path))
    for repo in (BIOMEDBERT, "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract"):
        c = AutoConfig.from_pretrained(text_config_folder(repo))
        assert (c.model_type, c.vocab_size, c.hidden_size, c.num_hidden_layers,
                c.num_attention_heads, c.intermediate_size, c.max_position_embeddings,
                c.pad_token_id) == ("bert", 30522, 768, 12, 12, 3072, 512, 0)


def test_unknown_hf_text_tower_offline_names_the_download(tmp_path, world, network_off, monkeypatch):
    import shutil
    from medadapt.errors import UserError
    folder = tmp_path / "m"
    shutil.copytree(world["folders"]["biomedclip"], folder)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["hf_model_name"] = "someorg/unknown-bert"
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError, match=r"config\.json of https://huggingface\.co/someorg/unknown-bert"):
        load_backbone(str(folder))


def test_missing_hub_files_offline_name_the_repository(tmp_path, network_off, monkeypatch):
    from medadapt.backbones import hub
    from medadapt.errors import UserError
    monkeypatch.setattr(hub, "cached_snapshot", lambda *a, **k: None)
    for alias, repo in (("biomedclip", "BiomedCLIP-PubMedBERT"), ("conch", "MahmoodLab/conch"),
                        ("plip", "vinid/plip"), ("quiltnet-b16", "wisdomik/QuiltNet-B-16")):
        with pytest.raises(UserError, match=repo):
            load_backbone(alias)


# ------------------------------------------------------------------------------------------------
# Layer-0 visual prompts enter before the pre-LayerNorm (MaPLe's VisionTransformer_MaPLe)
# ------------------------------------------------------------------------------------------------
def _reference_prompted_image(bb, px, p0):
    """Each family's vision forward written out, with ``p0`` concatenated before the pre-norm."""
    P = p0.unsqueeze(0).expand(px.shape[0], -1, -1)
    if bb.family == "hf_clip":
        vm, m = bb.model.vision_model, bb.model
        x = vm.pre_layrnorm(torch.cat([vm.embeddings(px), P], 1))
        x = vm.encoder(inputs_embeds=x).last_hidden_state
        return m.visual_projection(vm.post_layernorm(x[:, 0]))
    if bb.family == "conch" or hasattr(bb.model.visual, "trunk"):
        v = bb.model.visual
        t = v.trunk
        x = t._pos_embed(t.patch_embed(px))
        x = t.blocks(t.norm_pre(torch.cat([x, P], 1)))
        x = t.norm(x)
        if bb.family == "conch":
            return v.ln_contrast(v.attn_pool_contrast(x)[:, 0]) @ v.proj_contrast
        return v.head(t.forward_head(x))
    v = bb.model.visual  # open_clip VisionTransformer
    x = v.conv1(px).flatten(2).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1), x], 1)
    x = v.ln_pre(torch.cat([x + v.positional_embedding, P], 1))
    x = v.transformer(x)
    return v.ln_post(x)[:, 0] @ v.proj


@pytest.mark.parametrize("alias", ["quiltnet-b32", "plip", "biomedclip", "conch"])
def test_layer0_visual_prompts_enter_before_the_pre_norm(alias, world, network_off):
    from medadapt.methods._prompt import vision_prompt_hooks
    bb = load_backbone(str(world["folders"][alias]))
    px = pixels(bb)
    p0 = torch.randn(2, bb.vision_width, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with bb.layer_hooks(vision_prompt_hooks([p0])):
            got = bb.encode_image(px, normalize=False)
        ref = _reference_prompted_image(bb, px, p0)
        assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
        # after the norm (the old block-0 hook) is a different forward where a pre-norm exists
        with bb.layer_hooks([("vision", 0, lambda h: torch.cat(
                [h, p0.unsqueeze(0).expand(h.shape[0], -1, -1)], 1))]):
            post = bb.encode_image(px, normalize=False)
    has_norm = not isinstance(bb.vision_input_module(), torch.nn.Identity)
    assert has_norm == (alias in ("quiltnet-b32", "plip"))
    assert torch.allclose(post, ref, atol=1e-5) != has_norm


def test_backbones_listing_says_which_weights_are_here(world, network_off, monkeypatch, capsys):
    from huggingface_hub import constants

    from medadapt.cli import main
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(world["hub"]))
    assert main(["backbones"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
            if line and not line.startswith(" ")}
    for alias in ALIASES:
        assert "cached (" in rows[alias], rows[alias]
    assert rows["clip-vit-b16"].rstrip().endswith("missing")


PROMPT_METHODS = ["coop", "cocoop", "kgcoop", "prograd", "maple", "promptsrc", "coprompt",
                  "biomedcoop", "biomed-dpt", "pathoprompt"]


@pytest.fixture(scope="module")
def conch_bb(world):
    return load_backbone(str(world["folders"]["conch"]))


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_every_prompt_method_trains_on_conch(method, conch_bb):
    """CONCH's sequence-first text tower, dropped last slot and appended CLS under every prompt
    method: a loss, gradients into the method's own parameters only, finite logits."""
    from medadapt.data.texts import TEMPLATES, ClassTexts
    from medadapt.methods import Batch, get_method
    bb = conch_bb
    desc = {"adipose": ["large empty fat vacuoles", "pale white tissue"],
            "tumor": ["irregular crowded glands", "dark pleomorphic nuclei"]}
    texts = ClassTexts(["adipose", "tumor"], TEMPLATES["histopathology"], desc)
    px, y = pixels(bb, 2, 5), torch.tensor([0, 1])
    torch.manual_seed(0)
    cls = get_method(method)
    m = cls(bb, texts, {})
    with torch.no_grad():
        feats = bb.encode_image(px, normalize=False)
    batch = Batch(labels=y, images=px if cls.needs_images else None,
                  features=None if cls.needs_images else feats, index=torch.arange(2))
    m.train()
    loss, _ = m.loss(batch)
    loss.backward()
    own = [p for p in m.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    assert all(p.grad is None for p in bb.parameters())
    m.eval()
    with torch.no_grad():
        assert torch.isfinite(m(batch)).all()


def test_quickgelu_variants(world, network_off):
    import open_clip

    from medadapt.backbones.openclip import load_open_clip
    assert BACKBONES.get("clip-vit-b32").source == "ViT-B-32-quickgelu@openai"
    assert open_clip.get_pretrained_cfg("ViT-B-32-quickgelu", "openai").get("quick_gelu")
    for alias in ("quiltnet-b32", "quiltnet-b16"):
        assert BACKBONES.get(alias).quick_gelu is None
        assert BACKBONES.get(alias + "-quickgelu").quick_gelu is True
        assert BACKBONES.get(alias + "-quickgelu").source == BACKBONES.get(alias).source
    folder = "local-dir:" + str(world["folders"]["quiltnet-b32"])
    plain, quick = load_open_clip(folder), load_open_clip(folder, quick_gelu=True)
    act = lambda bb: type(bb.model.visual.transformer.resblocks[0].mlp.gelu).__name__  # noqa: E731
    assert (act(plain), act(quick)) == ("GELU", "QuickGELU")
    x = pixels(plain)
    assert not torch.allclose(plain.encode_image(x), quick.encode_image(x), atol=1e-5)


def test_biomedclip_tokenizer_from_its_text_repo_in_the_cache(tmp_path, world, network_off,
                                                              monkeypatch):
    """A cache filled by open_clip itself holds BiomedCLIP's config + weights, and the tokenizer
    under the BiomedBERT repository (fetched by id): that works offline too; without it, one line."""
    import shutil

    from huggingface_hub import constants

    from medadapt.errors import UserError
    src = world["folders"]["biomedclip"]
    model_only = tmp_path / "model"
    model_only.mkdir()
    for f in ("open_clip_config.json", "open_clip_pytorch_model.bin"):
        shutil.copy(src / f, model_only / f)
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(UserError, match="tokenizer files are missing"):
        load_backbone(str(model_only))
    tok_only = tmp_path / "tok"
    tok_only.mkdir()
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special")):
            shutil.copy(f, tok_only / f.name)
    replicas.hub_cache_layout(cache, BIOMEDBERT, tok_only)
    bb = load_backbone(str(model_only))
    ref = load_backbone(str(src))
    assert torch.equal(bb.tokenize(TEXTS), ref.tokenize(TEXTS))
    assert torch.allclose(bb.encode_texts(TEXTS), ref.encode_texts(TEXTS), atol=1e-6)
