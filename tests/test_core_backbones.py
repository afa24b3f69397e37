"""Backbone interface: both families, the real on-disk formats, the hub-id path, and the
identity between medadapt's embeddings and the raw library calls."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from medadapt.backbones import load_backbone, tiny_dir
from medadapt.backbones.openclip import text_config_folder
from medadapt.backbones.tiny import BIOMEDBERT, text_tower_configs
from medadapt.errors import UserError

TINY = ["tiny-hf-clip", "tiny-open-clip", "tiny-open-clip-bpe"]


@pytest.fixture(scope="module", params=TINY)
def bb(request):
    return load_backbone(request.param)


def _img(seed=0, size=(40, 50)):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((*size, 3)) * 255).astype("uint8"))


def test_interface_shapes(bb):
    ids = bb.tokenize(["a histopathology image of debris.", "tumor"])
    assert ids.shape == (2, bb.context_length)
    t = bb.encode_text(ids)
    assert t.shape == (2, bb.embed_dim)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)
    x = torch.stack([bb.preprocess(_img(0)), bb.preprocess(_img(1))])
    assert x.shape == (2, 3, bb.image_size, bb.image_size)
    assert bb.encode_image(x).shape == (2, bb.embed_dim)
    assert bb.token_embedding.embedding_dim == bb.text_width
    assert len(bb.text_blocks()) == 2 and len(bb.vision_blocks()) == 2
    assert 1.0 < float(bb.logit_scale) <= 100.0
    assert all(not p.requires_grad for p in bb.parameters())
    assert not bb.training


def test_embeddings_path_equals_ids_path(bb):
    ids = bb.tokenize(["a photo of lymphocytes.", "mucus pools"])
    a = bb.encode_text(ids)
    b = bb.encode_text(ids, embeddings=bb.embed_tokens(ids))
    assert torch.allclose(a, b, atol=1e-6)
    # changing a word embedding through the embeddings path changes the output
    emb = bb.embed_tokens(ids).clone()
    emb[:, 1] += torch.randn(emb.shape[-1], generator=torch.Generator().manual_seed(0))
    c = bb.encode_text(ids, embeddings=emb)
    assert not torch.allclose(a, c, atol=1e-4)


def test_special_tokens_and_eos(bb):
    ids = bb.tokenize(["a photo of debris."])
    mask = bb.special_token_mask(ids)[0]
    eos = int(bb.eos_positions(ids)[0])
    assert mask[0] and mask[eos]
    assert not mask[1:eos].any()


def test_layer_hook_sees_and_changes_hidden_states(bb):
    ids = bb.tokenize(["a photo of debris."])
    x = bb.preprocess(_img()).unsqueeze(0)
    seen = {}
    base_t, base_i = bb.encode_text(ids), bb.encode_image(x)

    def spy(name):
        def fn(h):
            seen[name] = tuple(h.shape)
            return h
        return fn
    with bb.layer_hooks([("text", 1, spy("text")), ("vision", 0, spy("vision"))]):
        assert torch.allclose(bb.encode_text(ids), base_t, atol=1e-6)
        assert torch.allclose(bb.encode_image(x), base_i, atol=1e-6)
    # causal towers run only up to the last end token (Backbone.trim_text_padding)
    n_text = int(bb.eos_positions(ids).max()) + 1 if bb.trim_text_padding else bb.context_length
    assert seen["text"] == (1, n_text, bb.text_width)
    assert seen["vision"][0] == 1 and seen["vision"][2] == bb.vision_width
    # appending tokens to the vision sequence (deep visual prompts) works and changes the output
    with bb.layer_hooks([("vision", 0, lambda h: torch.cat([h, torch.ones_like(h[:, :2])], 1))]):
        y = bb.encode_image(x)
    assert y.shape == base_i.shape and not torch.allclose(y, base_i, atol=1e-5)
    # hooks are removed afterwards
    assert torch.allclose(bb.encode_image(x), base_i, atol=1e-6)


def test_tiny_backbones_are_deterministic(tmp_path, monkeypatch):
    """Built twice from scratch (two private caches: deleting the shared cache's copy would pull
    it from under other test workers), the tiny backbone is the same model."""
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "one"))
    a = load_backbone("tiny-hf-clip")
    assert str(tiny_dir("tiny-hf-clip")).startswith(str(tmp_path / "one"))
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "two"))
    b = load_backbone("tiny-hf-clip")
    assert (tmp_path / "two").exists() and a.fingerprint() == b.fingerprint()


def test_raw_library_calls_match():
    """Loading a saved folder through medadapt equals the raw library call on that folder."""
    import open_clip
    from transformers import AutoTokenizer, CLIPModel

    hf = load_backbone("tiny-hf-clip")
    folder = tiny_dir("tiny-hf-clip")
    raw = CLIPModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    texts = ["a photo of debris.", "adipose tissue"]
    ids = tok(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = raw.get_text_features(input_ids=ids)
        ref = ref if torch.is_tensor(ref) else ref.pooler_output
        x = hf.preprocess(_img()).unsqueeze(0)
        refi = raw.get_image_features(pixel_values=x)
        refi = refi if torch.is_tensor(refi) else refi.pooler_output
    assert torch.allclose(hf.encode_text(hf.tokenize(texts), normalize=False), ref, atol=1e-5)
    assert torch.allclose(hf.encode_image(x, normalize=False), refi, atol=1e-5)

    for name in ("tiny-open-clip", "tiny-open-clip-bpe"):
        oc = load_backbone(name)
        spec = "local-dir:" + str(tiny_dir(name))
        cfg = json.loads((tiny_dir(name) / "open_clip_config.json").read_text())["model_cfg"]
        kw = {}
        if "hf_model_name" in cfg["text_cfg"]:  # the real id; its config is carried by medadapt
            assert cfg["text_cfg"]["hf_model_name"] == BIOMEDBERT
            kw["text_cfg"] = dict(cfg["text_cfg"], hf_model_pretrained=False, hf_model_name=
                                  text_config_folder(BIOMEDBERT, text_tower_configs(tiny_dir(name))))
        model, _, pre = open_clip.create_model_and_transforms(spec, **kw)
        model.eval()
        tk = open_clip.get_tokenizer(spec)
        x = pre(_img()).unsqueeze(0)
        with torch.no_grad():
            assert torch.allclose(oc.encode_text(oc.tokenize(texts), normalize=False),
                                  model.encode_text(tk(texts)), atol=1e-5)
            assert torch.allclose(oc.encode_image(x, normalize=False), model.encode_image(x), atol=1e-5)


# The hub-id routes (Hugging Face cache, HF_HUB_OFFLINE=1) of every registered medical backbone are
# tested on published-config replicas in test_core_backbone_replicas.py.


def test_failed_hub_download_says_how_to_use_local_weights(tmp_path, monkeypatch):
    from medadapt.backbones import hf, openclip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="local|folder"):
        hf.load_hf_clip(str(tmp_path / "no-such-model"))
    with pytest.raises(UserError, match="local-dir"):
        openclip.load_open_clip("local-dir:" + str(tmp_path / "missing"))


def test_local_folder_spec_detects_family():
    for name, fam in (("tiny-hf-clip", "hf_clip"), ("tiny-open-clip", "open_clip")):
        load_backbone(name)
        bb = load_backbone(str(tiny_dir(name)))
        assert bb.family == fam


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(UserError, match="valid: .*plip"):
        load_backbone("plipp")


@pytest.mark.parametrize("kw", [
    dict(size=224, crop_size=224, resample=3),  # legacy CLIPFeatureExtractor file (PLIP)
    dict(size={"height": 200, "width": 240}, do_center_crop=False, resample=2),
    dict(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 192}, resample=2),
])
def test_hf_image_transform_follows_preprocessor_config(kw, tmp_path):
    """resample, exact height/width resize, do_center_crop and crop size come from the file;
    pixels equal the processor's to within one 8-bit grey level (its resize backend differs)."""
    from transformers import AutoImageProcessor, CLIPImageProcessor

    from medadapt.backbones.transforms import transform_from_image_processor
    cfg = dict(kw, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.25],
               image_processor_type="CLIPImageProcessor")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    ip = AutoImageProcessor.from_pretrained(tmp_path)
    img = _img(3, size=(300, 411))
    ref = torch.as_tensor(np.array(ip(img, return_tensors="np")["pixel_values"][0]))
    got = transform_from_image_processor(ip)(img)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= 1.05 / 255 / 0.2
    train = transform_from_image_processor(ip, train=True)
    assert train(img).shape == ref.shape
    assert isinstance(CLIPImageProcessor, type)


def test_one_train_augmentation_policy(bb):
    """RandomResizedCrop(scale 0.08-1, the model's interpolation) + flip + the eval normalisation."""
    from torchvision import transforms as T
    steps = bb.train_preprocess.transforms
    rrc = [t for t in steps if isinstance(t, T.RandomResizedCrop)]
    assert len(rrc) == 1 and rrc[0].scale == (0.08, 1.0)
    assert rrc[0].interpolation == T.InterpolationMode.BICUBIC
    assert tuple(rrc[0].size) == (bb.image_size, bb.image_size)
    assert any(isinstance(t, T.RandomHorizontalFlip) for t in steps)
    norm = [t for t in steps if isinstance(t, T.Normalize)][0]
    eval_norm = [t for t in bb.preprocess.transforms if isinstance(t, T.Normalize)][0]
    assert list(norm.mean) == list(eval_norm.mean) and list(norm.std) == list(eval_norm.std)
    assert bb.train_preprocess(_img()).shape == (3, bb.image_size, bb.image_size)
