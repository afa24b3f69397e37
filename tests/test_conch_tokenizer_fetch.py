"""CONCH's tokenizer file: fetched once from the pinned commit of mahmoodlab/CONCH into medadapt's
cache when missing and the network is up, sha256-checked (a monkeypatched downloader stands in for
the network: right bytes are accepted, cached and not fetched again; wrong bytes are refused and
nothing is cached); offline, the one-line instruction as before."""
import hashlib
import urllib.error

import pytest

from medadapt.backbones import conch, replicas
from medadapt.errors import UserError


@pytest.fixture
def env(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    src = tmp_path / "tok.json"
    replicas.write_conch_tokenizer(src)  # a stand-in in the published file's format
    good = src.read_bytes()
    monkeypatch.setattr(conch, "TOKENIZER_SHA256", hashlib.sha256(good).hexdigest())
    model = tmp_path / "model"  # a CONCH folder without the tokenizer file
    model.mkdir()
    calls = []

    def serve(data):
        def download(url, limit):
            calls.append((url, limit))
            return data
        monkeypatch.setattr(conch, "_download", download)
    return {"good": good, "src": src, "model": model, "calls": calls, "serve": serve,
            "cache": tmp_path / "cache", "mp": monkeypatch}


def test_pinned_source():
    assert conch.TOKENIZER_RAW_URL == (
        "https://raw.githubusercontent.com/mahmoodlab/CONCH/"
        "141cc09c7d4ff33d8eda562bd75169b457f71a62/"
        "conch/open_clip_custom/tokenizers/conch_byte_level_bpe_uncased.json")
    assert len(conch.TOKENIZER_SHA256) == 64 and conch.TOKENIZER_BYTES == 1388969


def test_right_bytes_are_cached_once(env):
    env["serve"](env["good"])
    tok = conch.load_tokenizer(env["model"])
    assert env["calls"] == [(conch.TOKENIZER_RAW_URL, conch.TOKENIZER_BYTES)]
    cached = conch.cached_tokenizer_path()
    assert cached.read_bytes() == env["good"] and str(cached).startswith(str(env["cache"]))
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temp file left
    from transformers import PreTrainedTokenizerFast
    ref = PreTrainedTokenizerFast(tokenizer_file=str(env["src"]))
    text = "an h&e image of adenocarcinoma"
    assert tok(text)["input_ids"] == ref(text)["input_ids"]
    conch.load_tokenizer(env["model"])  # second call: from the cache, no download
    assert len(env["calls"]) == 1
    # a damaged cached copy is fetched again
    cached.write_bytes(b"{}")
    conch.load_tokenizer(env["model"])
    assert len(env["calls"]) == 2 and cached.read_bytes() == env["good"]


def test_wrong_bytes_are_refused_and_nothing_cached(env):
    env["serve"](env["good"] + b" ")
    with pytest.raises(UserError, match="sha256 .* not the pinned .*refused \\(nothing was cached\\)"):
        conch.load_tokenizer(env["model"])
    assert not conch.cached_tokenizer_path().exists()
    assert not conch.cached_tokenizer_path().parent.exists() or \
        not any(conch.cached_tokenizer_path().parent.iterdir())


def test_offline_or_no_network_keeps_the_instruction(env):
    env["serve"](env["good"])
    env["mp"].setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="CONCH's tokenizer file is missing: put "
                                        "conch_byte_level_bpe_uncased.json"):
        conch.load_tokenizer(env["model"])
    assert env["calls"] == []
    env["mp"].delenv("HF_HUB_OFFLINE")

    def down(url, limit):
        raise urllib.error.URLError("no route to host")
    env["mp"].setattr(conch, "_download", down)
    with pytest.raises(UserError, match="tokenizer file is missing"):
        conch.load_tokenizer(env["model"])
    assert not conch.cached_tokenizer_path().exists()
    # a tokenizer file in the model folder wins: nothing is fetched
    (env["model"] / "conch_byte_level_bpe_uncased.json").write_bytes(env["good"])
    env["serve"](b"never used")
    conch.load_tokenizer(env["model"])
    assert env["calls"] == []
