"""Per-method engine settings (issue 11): Dassl's per-epoch schedule, no clipping by default, AdamW
eps, backbone train/eval mode, augmented views per epoch, shot-dependent released defaults, and
the KgCoOp / ProGrad pieces taken from the released code."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from medadapt.backbones import load_backbone
from medadapt.data.texts import ClassTexts
from medadapt.engine.resolve import resolve
from medadapt.engine.train import TRAIN_DEFAULTS, Engine, Split, dassl_lr, view_schedule
from medadapt.methods import Batch, get_method
from medadapt.methods.base import Method

TEXTS = ClassTexts(["adipose", "tumor"], ["a histopathology image of {}."])


@pytest.fixture(scope="module")
def bb():
    return load_backbone("tiny-open-clip")  # HF BERT text tower: dropout 0.1 in train mode


def split_of(n=8, dim=32, seed=0, views=0):
    g = torch.Generator().manual_seed(seed)
    s = Split(None, list(range(n)), torch.arange(n) % 2, torch.randn(n, dim, generator=g))
    if views:
        s.views = torch.randn(views, n, dim, generator=g)
    return s


class Probe(Method):
    """A linear head on cached features that records what the engine did at every step."""
    name = "probe"

    def __init__(self, backbone, texts, cfg=None, scale=1.0):
        super().__init__(backbone, texts, cfg)
        self.head = nn.Linear(backbone.embed_dim, len(texts.classnames), bias=False)
        self.scale, self.seen = scale, []

    def forward(self, batch):
        return self.head(batch.features)

    def loss(self, batch):
        self.seen.append({"backbone_training": self.backbone.training,
                          "features": batch.features.clone(), "index": batch.index.clone()})
        loss, parts = super().loss(batch)
        return loss * self.scale, parts


def capture_optimizer(engine):
    made = []
    orig = engine._optimizer
    engine._optimizer = lambda params: made.append(orig(params)) or made[-1]
    return made


# --- schedule ------------------------------------------------------------------------------------
def test_dassl_schedule_exact_values():
    cfg = {"lr": 0.0035, "warmup_epochs": 1, "warmup": "constant", "warmup_lr": 1e-5}
    got = [dassl_lr(e, 5, cfg) for e in range(5)]
    # hand-computed: warm-up epoch at 1e-5, then cos over T_max = 5 starting after the warm-up
    want = [1e-5, 0.0035, 0.0035 * (1 + math.cos(math.pi / 5)) / 2,
            0.0035 * (1 + math.cos(2 * math.pi / 5)) / 2, 0.0035 * (1 + math.cos(3 * math.pi / 5)) / 2]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[-1] > 0  # Dassl's cosine does not reach zero within MAX_EPOCH
    # the same as torch's CosineAnnealingLR(T_max=5) stepped once per epoch after the warm-up
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.0035)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 5.0)
    ref = [1e-5]
    for _ in range(4):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        cos.step()
    assert got == pytest.approx(ref, rel=1e-9)
    # linear warm-up (Dassl LinearWarmupScheduler): min lr at epoch 0, then lr * e / W
    lin = dict(cfg, warmup="linear", warmup_epochs=2)
    assert [dassl_lr(e, 10, lin) for e in range(3)] == pytest.approx([1e-5, 0.0035 / 2, 0.0035])
    assert dassl_lr(0, 4, dict(cfg, warmup_epochs=0)) == pytest.approx(0.0035)


def test_engine_sets_the_epoch_schedule(bb):
    m = Probe(bb, TEXTS)
    eng = Engine({"epochs": 4, "batch_size": 3, "lr": 0.1, "checkpoint": False}, progress=False)
    opt = capture_optimizer(eng)
    lrs = []
    orig_loss = m.loss
    m.loss = lambda b: (lrs.append(opt[0].param_groups[0]["lr"]), orig_loss(b))[1]
    eng.train(m, split_of(7))  # 2 full batches per epoch (Dassl drops the last incomplete one)
    per_epoch = [dassl_lr(e, 4, eng.cfg) for e in range(4)]
    assert lrs == [lr for lr in per_epoch for _ in range(2)]
    assert eng.cfg["sched_unit"] == "epoch"


@pytest.mark.parametrize("drop_last, n, steps, seen", [(True, 7, 2, 6), (False, 7, 3, 7),
                                                       (True, 2, 1, 2)])
def test_drop_last_as_dassl(bb, drop_last, n, steps, seen):
    m = Probe(bb, TEXTS)
    eng = Engine({"epochs": 1, "batch_size": 3, "drop_last": drop_last, "checkpoint": False},
                 progress=False)
    eng.train(m, split_of(n))
    assert eng.steps_per_epoch(n) == steps == len(m.seen)
    assert sum(len(r["index"]) for r in m.seen) == seen


# --- clipping, eps -------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", [None, 1.0])
def test_no_gradient_clipping_by_default(bb, clip):
    torch.manual_seed(0)
    m = Probe(bb, TEXTS, scale=50.0)  # gradient norm far above 1
    w0 = m.head.weight.detach().clone()
    s = split_of(4)
    b = Batch(labels=s.labels, features=s.features, index=torch.arange(4))
    loss, _ = m.loss(b)
    g = torch.autograd.grad(loss, m.head.weight)[0]
    assert g.norm() > 10
    cfg = {"epochs": 1, "batch_size": 4, "lr": 0.1, "warmup_epochs": 0, "momentum": 0.0,
           "weight_decay": 0.0, "checkpoint": False}
    if clip is not None:
        cfg["grad_clip"] = clip
    Engine(cfg, progress=False).train(m, s)
    step = m.head.weight.detach() - w0
    if clip is None:  # the full, unclipped step
        assert torch.allclose(step, -0.1 * g, atol=1e-6)
        assert TRAIN_DEFAULTS["grad_clip"] == 0
    else:
        assert step.norm() == pytest.approx(0.1, rel=1e-4)


def test_eps_reaches_the_optimizer(bb):
    eng = Engine({"optimizer": "adamw", "eps": 1e-4, "epochs": 1, "checkpoint": False}, progress=False)
    opt = capture_optimizer(eng)
    eng.train(Probe(bb, TEXTS), split_of(4))
    assert opt[0].param_groups[0]["eps"] == 1e-4
    cfg = resolve({"backbone": "x", "dataset": "y", "method": {"name": "tip-adapter-f"}})
    assert cfg["train"]["eps"] == 1e-4 and cfg["train"]["sched_unit"] == "step"


# --- backbone mode -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_backbone_mode_honoured(bb, mode):
    m = Probe(bb, TEXTS)
    ids = bb.tokenize(["a histopathology image of tumor."])
    outs = []
    orig = m.loss

    def loss(b):
        with torch.no_grad():
            outs.append((bb.encode_text(ids), bb.encode_text(ids)))
        return orig(b)
    m.loss = loss
    Engine({"epochs": 1, "batch_size": 8, "backbone_mode": mode, "checkpoint": False},
           progress=False).train(m, split_of(4))
    assert m.seen[0]["backbone_training"] is (mode == "train")
    a, b = outs[0]
    assert torch.equal(a, b) is (mode == "eval")  # BERT dropout active only in train mode
    assert not bb.training  # back in eval mode after training
    with torch.no_grad():
        assert torch.equal(bb.encode_text(ids), bb.encode_text(ids))


def test_backbone_mode_defaults_follow_the_references():
    train_mode = {n for n in ("coop", "cocoop", "kgcoop", "prograd", "maple", "promptsrc",
                              "coprompt", "biomedcoop", "tip-adapter-f")
                  if get_method(n).resolved_defaults()["train"]["backbone_mode"] == "train"}
    assert train_mode == {"maple", "promptsrc", "coprompt", "biomedcoop"}


# --- augmented views -----------------------------------------------------------------------------
def test_view_selection_differs_per_epoch_and_is_deterministic():
    n, V = 50, 10
    seq = torch.stack([view_schedule(n, V, e, seed=3) for e in range(V)])  # [V epochs, n]
    # within V epochs each item sees each of its V views exactly once
    assert all(sorted(seq[:, i].tolist()) == list(range(V)) for i in range(n))
    assert torch.equal(seq, torch.stack([view_schedule(n, V, e, seed=3) for e in range(V)]))
    assert not torch.equal(seq[0], view_schedule(n, V, 0, seed=4))  # another seed, other views
    assert not torch.equal(view_schedule(n, V, V, 3), seq[0])  # a new permutation next cycle


def test_engine_trains_on_one_view_per_item_and_epoch(bb):
    s = split_of(6, views=4)
    m = Probe(bb, TEXTS)
    Engine({"epochs": 3, "batch_size": 6, "checkpoint": False}, progress=False, seed=5).train(m, s)
    for epoch, rec in enumerate(m.seen):
        v = view_schedule(6, 4, epoch, seed=5)
        idx = rec["index"]
        assert torch.equal(rec["features"], s.views[v[idx], idx])
    assert not torch.equal(m.seen[0]["features"][m.seen[0]["index"].argsort()],
                           m.seen[1]["features"][m.seen[1]["index"].argsort()])


def test_cached_methods_default_to_views_and_others_not():
    for name in ("coop", "cocoop", "kgcoop", "prograd", "biomedcoop", "tip-adapter", "tip-adapter-f"):
        assert get_method(name).resolved_defaults()["data"]["augment_views"] == 10, name
    for name in ("zero-shot", "linear-probe"):
        assert get_method(name).resolved_defaults()["data"]["augment_views"] == 0, name


# --- released, shot-dependent defaults -----------------------------------------------------------
def _resolved(method, **kw):
    return resolve({"backbone": "x", "dataset": "y", "method": {"name": method}, **kw})


@pytest.mark.parametrize("shots, epochs", [(1, 50), (2, 100), (4, 100), (8, 200), (16, 200), (0, 200)])
def test_shot_dependent_epochs(shots, epochs):
    assert _resolved("coop", shots=shots)["train"]["epochs"] == epochs
    assert _resolved("prograd", shots=shots)["train"]["epochs"] == epochs


def test_protocol_defaults_and_user_settings_win():
    c = _resolved("promptsrc", protocol="base-to-novel")
    assert (c["train"]["epochs"], c["method"]["gpa_mean"], c["method"]["gpa_std"]) == (20, 15.0, 1.0)
    c = _resolved("promptsrc")
    assert (c["train"]["epochs"], c["method"]["gpa_mean"], c["method"]["gpa_std"]) == (50, 30.0, 30.0)
    c = _resolved("biomedcoop", protocol="base-to-novel")
    assert (c["train"]["epochs"], c["method"]["kdsp_lambda"], c["method"]["tau"]) == (50, 0.5, 1.25)
    c = _resolved("coop", shots=1, train={"epochs": 7}, data={"augment_views": 2})
    assert c["train"]["epochs"] == 7 and c["data"]["augment_views"] == 2
    k = _resolved("kgcoop")
    assert (k["train"]["batch_size"], k["train"]["epochs"], k["method"]["distance"]) == (128, 100, "cosine")


# --- KgCoOp / ProGrad ----------------------------------------------------------------------------
def test_kgcoop_loss_is_ce_plus_lambda_one_minus_cos(bb):
    torch.manual_seed(0)
    m = get_method("kgcoop")(bb, TEXTS, {"lambda": 8.0})
    D = bb.embed_dim
    e = torch.eye(D)
    txt = torch.stack([e[0], e[1]])  # learned class features (unit)
    clip = torch.stack([e[0], (e[1] + e[2]) / math.sqrt(2)])  # hand-crafted ones
    m.text_features = lambda: txt
    m.clip_text = clip
    img = torch.stack([3 * e[0], e[1] + e[0]])  # raw, normalised inside
    y = torch.tensor([0, 1])
    loss, parts = m.loss(Batch(labels=y, features=img))
    s = float(bb.logit_scale)
    # image 0 = e0: logits (s, 0); image 1 = (e0 + e1)/sqrt2: logits (s/sqrt2, s/sqrt2)
    ce = (math.log(1 + math.exp(-s)) + math.log(2)) / 2
    kg = 1 - (1 + 1 / math.sqrt(2)) / 2
    assert parts["kg"] == pytest.approx(kg, rel=1e-6)
    assert float(loss) == pytest.approx(ce + 8.0 * kg, rel=1e-5)


def test_prograd_init_is_zeros_then_a_photo_of_a(bb):
    torch.manual_seed(0)
    m = get_method("prograd")(bb, TEXTS)
    ctx = m.prompt.ctx.detach()
    ids = bb.tokenize(["a photo of a"])[0]
    words = ids[~bb.special_token_mask(ids[None])[0]]
    with torch.no_grad():
        emb = bb.embed_tokens(words).float()
    k = len(words)
    assert ctx.shape[0] == 16 and k >= 4
    assert torch.equal(ctx[:16 - k], torch.zeros(16 - k, ctx.shape[1]))
    assert torch.equal(ctx[16 - k:], emb)
    # the prompt still has 16 learned slots: the text features come from the learned context
    with torch.no_grad():
        f0 = m.text_features().clone()
        m.prompt.ctx.add_(0.1)
        assert not torch.allclose(f0, m.text_features())
    r = get_method("prograd")(bb, TEXTS, {"ctx_init": None})  # CoOp's random init
    assert r.prompt.ctx.detach().abs().min() > 0
    assert F.cosine_similarity(r.prompt.ctx.flatten(), ctx.flatten(), dim=0) < 0.5


# --- defaults with sources -----------------------------------------------------------------------
def test_methods_doc_is_up_to_date():
    from pathlib import Path

    from medadapt.methods._defaults_doc import render_doc
    doc = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
    assert doc.read_text() == render_doc(), (
        "docs/methods.md is stale: python -m medadapt.methods._defaults_doc > docs/methods.md")


def test_methods_cli_prints_resolved_defaults_with_sources(capsys):
    from conftest import run_cli
    assert run_cli("methods", "coop", "--shots", "1") == 0
    out = capsys.readouterr().out
    assert "train.epochs = 50" in out and "vit_b16_ep50.yaml" in out
    assert "train.grad_clip = 0.0" in out
    assert run_cli("methods", "nope") == 2
    # every released default of the methods this issue set up names a source
    for name in ("coop", "cocoop", "kgcoop", "prograd", "maple", "promptsrc", "coprompt",
                 "biomedcoop", "tip-adapter-f"):
        cls = get_method(name)
        for key in [*(f"method.{k}" for k in cls.defaults),
                    *(f"train.{k}" for k in cls.train_defaults)]:
            assert key in cls.sources, (name, key)


def test_frozen_targets_are_computed_in_eval_mode_under_train_mode(bb):
    from medadapt.engine.train import set_backbone_mode
    texts = ClassTexts(["adipose", "tumor"], ["a histopathology image of {}."],
                       {"adipose": ["fat cells", "empty vacuoles"], "tumor": ["dark nuclei", "glands"]})
    m = get_method("biomedcoop")(bb, texts)
    ref = m._descriptions().clone()  # built in eval mode
    set_backbone_mode(m, True)
    try:
        m.train()
        assert bb.training  # dropout on for the prompted forward ...
        m._desc = None
        assert torch.equal(m._descriptions(), ref)  # ... but not for the frozen targets
        assert bb.training
    finally:
        set_backbone_mode(m, False)
        m.eval()
