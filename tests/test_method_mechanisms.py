"""Behaviour tests that FAIL when a method's defining mechanism is removed or altered.

Each test checks the exact quantity the mechanism defines (recomputed here by hand from the
method's own pieces), not only that "the loss goes down":

* ProGrad (Zhu et al. ICCV 2023, Eq. 4-5; released ``prograd_backward_and_update``): the gradient
  the engine sees is ``G_d - lambda (G_d . G_g / |G_g|^2) G_g`` when ``G_d . G_g < 0``, else ``G_d``;
* KgCoOp (Yao et al. CVPR 2023, Eq. 6-7; released code: ``1 - mean cos``): the term equals
  ``lambda (1 - mean_i cos(w_i, w_i^clip))``, and lambda = 0 gives plain CE;
* PromptSRC (Khattak et al. ICCV 2023, Eq. 6-7): after ``fit`` the prompts are the
  Gaussian-weighted mean of the per-epoch prompts; the frozen text target is the normalised
  mean of RAW template features (released code);
* CoPrompt (Roy & Etemad ICLR 2024, Eq. 4-5): the loss is CE + lambda (text + image consistency);
* BiomedCoOp (Koleilat et al. CVPR 2025, Eq. 4-7): SCCM and KDSP are in the loss;
* CoCoOp (Zhou et al. CVPR 2022, Eq. 3): the context depends on the image (meta-net);
* MaPLe (Khattak et al. CVPR 2023, Eq. 5-7): the vision prompts are F_j(P_j) of the language
  prompts and gradients reach the coupling functions;
* CLIP-Adapter (Gao et al.): residual ratio alpha = 0 gives the zero-shot logits exactly;
* Biomed-DPT: the visual prompts exist, are zero and are frozen by default.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medadapt.data.texts import TEMPLATES, ClassTexts
from medadapt.methods import Batch, get_method
from medadapt.methods._prompt import gaussian_weights

NAMES = ["adipose", "lymphocytes", "tumor"]
DESCRIPTIONS = {
    "adipose": ["large empty fat vacuoles", "pale white adipose tissue", "thin pink walls"],
    "lymphocytes": ["dense small round dark nuclei", "many lymphocytes", "blue dense cells"],
    "tumor": ["irregular crowded glands", "pleomorphic nuclei", "malignant epithelium"],
}


@pytest.fixture(scope="module")
def bb(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDADAPT_CACHE", str(tmp_path_factory.mktemp("mech_cache")))
    from medadapt.backbones import load_backbone
    yield load_backbone("tiny-hf-clip", device="cpu")
    mp.undo()


def texts():
    return ClassTexts(list(NAMES), TEMPLATES["histopathology"], dict(DESCRIPTIONS))


def make(bb, name, seed=0, **cfg):
    torch.manual_seed(seed)
    return get_method(name)(bb, texts(), cfg)


def feat_batch(bb, labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(labels=torch.as_tensor(labels), features=torch.randn(len(labels), bb.embed_dim,
                                                                      generator=g))


def pixel_batch(bb, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(labels=torch.arange(n) % len(NAMES),
                 images=torch.randn(n, 3, bb.image_size, bb.image_size, generator=g))


def grads(m):
    return {n: p.grad.detach().clone() for n, p in m.named_parameters()
            if p.requires_grad and p.grad is not None}


# ------------------------------------------------------------------------------------------------
# ProGrad
def _prograd_parts(m, b):
    """G_d (CE) and G_g (KL to the zero-shot prediction), each by its own backward pass."""
    from medadapt.methods._prompt import kl_to_teacher
    params = [p for p in m.parameters() if p.requires_grad]
    img = m.image_features(b)
    logits = m.backbone.logit_scale * img @ m.text_features().float().T
    zs = m.backbone.logit_scale * img @ m.zs_text.T
    ce = F.cross_entropy(logits, b.labels)
    kl = kl_to_teacher(logits, zs, float(m.cfg["T"]), reduction="batchmean")
    gd = torch.autograd.grad(ce, params, retain_graph=True)
    gg = torch.autograd.grad(kl, params)
    return params, gd, gg


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_prograd_projects_conflicting_gradient(bb, lam):
    m = make(bb, "prograd", n_ctx=4, ctx_init=None, **{"lambda": lam})
    m.train()
    with torch.no_grad():  # labels the zero-shot model likes least: CE and KL pull apart
        f = feat_batch(bb, [0, 0, 0, 0]).features
        zs = F.normalize(f, dim=-1) @ m.zs_text.T
    b = Batch(labels=zs.argmin(1), features=f)
    params, gd, gg = _prograd_parts(m, b)
    assert float((gd[0] * gg[0]).sum()) < 0, "test setup: the gradients must conflict"
    loss, parts = m.loss(b)
    loss.backward()
    assert parts["projected"] >= 1
    # the loss value is CE, its gradient the projected one (hand formula)
    assert float(loss.detach()) == pytest.approx(parts["ce"], rel=1e-6)
    for p, d, g in zip(params, gd, gg):
        dot, n2 = (d * g).sum(), (g * g).sum()
        want = d - lam * dot / n2 * g if dot < 0 else d
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)
        if dot < 0:
            assert not torch.allclose(p.grad, d)  # removing the projection would fail here
            # after the full projection the update no longer opposes the general knowledge
            if lam == 1.0:
                assert abs(float((p.grad * g).sum())) < 1e-5 * float(d.norm() * g.norm())


@pytest.mark.parametrize("g_kl,want", [((-1.0, 1.0), (0.5, 0.5)), ((1.0, 1.0), (1.0, 0.0))])
def test_prograd_projection_on_hand_vectors(monkeypatch, g_kl, want):
    """ProGrad.loss on one parameter whose CE and KL gradients are hand vectors:
    G_d = (1, 0), G_g = (-1, 1): dot = -1, |G_g|^2 = 2, G = G_d - (-1/2) G_g = (0.5, 0.5);
    G_g = (1, 1) does not conflict: G = G_d."""
    import medadapt.methods.prograd as pg
    gd, gg = torch.tensor([1.0, 0.0]), torch.tensor(g_kl)
    m = pg.ProGrad.__new__(pg.ProGrad)
    torch.nn.Module.__init__(m)
    m.w = torch.nn.Parameter(torch.zeros(2))
    m.cfg = {"lambda": 1.0, "T": 1.0}
    m.backbone = type("BB", (), {"logit_scale": torch.tensor(1.0)})()
    m.image_features = lambda b: torch.zeros(1, 2)
    m.text_features = lambda: torch.zeros(1, 2)
    m.zs_text = torch.zeros(1, 2)
    # CE = w . G_d and KL = w . G_g: their gradients are exactly the hand vectors
    monkeypatch.setattr(pg, "F", type("F", (), {"cross_entropy": staticmethod(
        lambda logits, labels: (m.w * gd).sum() + 1.0)}))
    monkeypatch.setattr(pg, "kl_to_teacher", lambda *a, **k: (m.w * gg).sum() + 1.0)
    loss, parts = pg.ProGrad.loss(m, Batch(labels=torch.zeros(1, dtype=torch.long)))
    loss.backward()
    torch.testing.assert_close(m.w.grad, torch.tensor(want))
    assert parts["projected"] == (1.0 if g_kl[0] < 0 else 0.0)


# ------------------------------------------------------------------------------------------------
# KgCoOp
def test_kgcoop_term_is_lambda_times_one_minus_cos(bb):
    b = feat_batch(bb, [0, 1, 2])
    m = make(bb, "kgcoop", distance="cosine", **{"lambda": 8.0})
    loss, parts = m.loss(b)
    with torch.no_grad():
        w = m.text_features().float()
        want = 1 - (F.normalize(w, dim=-1) * F.normalize(m.clip_text, dim=-1)).sum(-1).mean()
    assert parts["kg"] == pytest.approx(float(want), rel=1e-5, abs=1e-7)
    assert float(loss.detach()) == pytest.approx(parts["ce"] + 8.0 * float(want), rel=1e-5)
    assert parts["kg"] > 0
    # lambda = 0: plain CE (same context: same seed)
    m0 = make(bb, "kgcoop", distance="cosine", **{"lambda": 0.0})
    l0, p0 = m0.loss(b)
    assert float(l0.detach()) == pytest.approx(p0["ce"], rel=1e-6)
    assert p0["ce"] == pytest.approx(parts["ce"], rel=1e-6)
    assert float(l0.detach()) != pytest.approx(float(loss.detach()), rel=1e-4)
    # and the context gradients differ
    loss.backward()
    l0.backward()
    assert not torch.allclose(m.prompt.ctx.grad, m0.prompt.ctx.grad)
    # the paper's squared L2 on unit vectors is exactly twice 1 - cos
    ml2 = make(bb, "kgcoop", distance="l2", **{"lambda": 8.0})
    _, p2 = ml2.loss(b)
    assert p2["kg"] == pytest.approx(2 * parts["kg"], rel=1e-4)


# ------------------------------------------------------------------------------------------------
# PromptSRC
class _FakeEngine:
    """Runs ``method.loss`` step by step and writes known prompt values after each step (as an
    optimiser would), recording the prompts at the end of every epoch."""

    def __init__(self, batch, epochs, steps):
        self.cfg = {"epochs": epochs, "batch_size": 1}
        self.batch, self.epochs, self.steps = batch, epochs, steps
        self.end_of_epoch: list[dict[str, torch.Tensor]] = []

    def log(self, *a):
        pass

    def steps_per_epoch(self, n):
        return self.steps

    def train(self, m, train, val):
        g = torch.Generator().manual_seed(1)
        for _ in range(self.epochs):
            for _ in range(self.steps):
                with torch.no_grad():
                    m.loss(self.batch)
                    for p in m.parameters():
                        if p.requires_grad:
                            p.copy_(torch.randn(p.shape, generator=g))
            self.end_of_epoch.append({n: p.detach().clone() for n, p in m.named_parameters()
                                      if p.requires_grad})
        return {}


def test_promptsrc_gaussian_aggregation_is_applied_at_the_end(bb):
    epochs, steps, mean, std = 4, 2, 3.0, 1.0
    m = make(bb, "promptsrc", gpa=True, gpa_mean=mean, gpa_std=std)
    eng = _FakeEngine(pixel_batch(bb, 1), epochs, steps)
    info = m.fit(list(range(steps)), None, eng)  # len(train) / batch_size 1 = steps per epoch
    assert info["gpa_epochs"] == epochs
    w = gaussian_weights(epochs, mean, std)
    last = eng.end_of_epoch[-1]
    for n, p in m.named_parameters():
        if not p.requires_grad:
            continue
        want = sum(wi * snap[n] for wi, snap in zip(w, eng.end_of_epoch)) / sum(w)
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(p.detach(), last[n])  # GPA really replaced the last prompts
    # gpa: false keeps the last epoch's prompts
    m2 = make(bb, "promptsrc", gpa=False)
    eng2 = _FakeEngine(pixel_batch(bb, 1), epochs, steps)
    m2.fit(list(range(steps)), None, eng2)
    for n, p in m2.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.detach(), eng2.end_of_epoch[-1][n])


def test_promptsrc_frozen_target_averages_raw_features():
    """Hand-computed: raw features of class 0 under two templates (3, 0) and (0, 1): the
    reference target is normalise((1.5, 0.5)) = (0.9487, 0.3162); averaging normalised features
    would give (0.7071, 0.7071)."""
    from medadapt.methods.promptsrc import raw_template_mean

    raw = {"t1 a": [3.0, 0.0], "t2 a": [0.0, 1.0], "t1 b": [0.0, 2.0], "t2 b": [0.0, 5.0]}

    class Fake:
        def tokenize(self, sents):
            return list(sents)

        def encode_text(self, ids, normalize=True):
            out = torch.tensor([raw[s] for s in ids])
            return F.normalize(out, dim=-1) if normalize else out

    got = raw_template_mean(Fake(), ["a", "b"], ["t1 {}", "t2 {}"])
    want = torch.tensor([[1.5, 0.5], [0.0, 3.5]])
    want = want / want.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(got, want)
    assert got[0, 0] == pytest.approx(3 / 10 ** 0.5, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# CoPrompt
def test_coprompt_loss_has_consistency_term(bb):
    from medadapt.methods._prompt import augment_pixels
    b = pixel_batch(bb, 2)
    m = make(bb, "coprompt", **{"lambda": 2.0, "distill": "cosine"})
    m.loss(b)  # builds the description features
    torch.manual_seed(5)
    loss, parts = m.loss(b)
    torch.manual_seed(5)  # replay the two random draws (one description per class, view 2)
    with torch.no_grad():
        img, txt = m.features(b.images)
        pick = [d[int(torch.randint(len(d), (1,)))] for d in m._desc]
        t_teacher = F.normalize(torch.stack(pick), dim=-1)
        view2 = augment_pixels(b.images, min_scale=float(m.cfg["view2_min_scale"]))
        i_teacher = bb.encode_image(view2).float()
        l_t = 1 - (txt * t_teacher).sum(-1).mean()
        l_i = 1 - (img * i_teacher).sum(-1).mean()
    assert parts["cons_text"] == pytest.approx(float(l_t), rel=1e-5, abs=1e-7)
    assert parts["cons_image"] == pytest.approx(float(l_i), rel=1e-5, abs=1e-7)
    assert float(loss.detach()) == pytest.approx(parts["ce"] + 2.0 * float(l_t + l_i), rel=1e-5)
    assert float(l_t + l_i) > 0


# ------------------------------------------------------------------------------------------------
# BiomedCoOp
def test_biomedcoop_sccm_and_kdsp_are_in_the_loss(bb):
    b = feat_batch(bb, [0, 1, 2, 0])
    m = make(bb, "biomedcoop", sccm_lambda=0.5, kdsp_lambda=0.25, sccm_target="all")
    loss, parts = m.loss(b)
    with torch.no_grad():
        txt = m.text_features().float()
        target = F.normalize(m._descriptions().mean(1), dim=-1)
        sccm = 0.5 * ((txt - target) ** 2).mean()
    assert parts["sccm"] == pytest.approx(float(sccm), rel=1e-5, abs=1e-8)
    assert parts["sccm"] > 0 and parts["kdsp"] > 0
    assert float(loss.detach()) == pytest.approx(parts["ce"] + parts["sccm"] + parts["kdsp"],
                                                 rel=1e-5)
    ce_only = make(bb, "biomedcoop", sccm_lambda=0.0, kdsp_lambda=0.0)
    l0, p0 = ce_only.loss(b)
    assert float(l0.detach()) == pytest.approx(p0["ce"], rel=1e-6)
    no_sccm = make(bb, "biomedcoop", sccm_lambda=0.0, kdsp_lambda=0.25)
    no_kdsp = make(bb, "biomedcoop", sccm_lambda=0.5, kdsp_lambda=0.0)
    full = float(loss.detach())
    assert float(no_sccm.loss(b)[0].detach()) == pytest.approx(full - parts["sccm"], rel=1e-5)
    assert float(no_kdsp.loss(b)[0].detach()) == pytest.approx(full - parts["kdsp"], rel=1e-5)
    assert float(l0.detach()) < full


# ------------------------------------------------------------------------------------------------
# CoCoOp
def test_cocoop_context_is_conditioned_on_the_image(bb):
    m = make(bb, "cocoop")
    m.eval()
    b = feat_batch(bb, [0, 1])
    with torch.no_grad():
        img = m.image_features(b)
        txt0 = bb.encode_text(*m.prompt()).float()  # the unconditioned context
        static = bb.logit_scale * img @ txt0.T
        logits = m(b)
        # per-image class text features: recover them from the two images' meta-net biases
        bias = m.meta_net(img)
        assert not torch.allclose(bias[0], bias[1])
        t = [bb.encode_text(m.prompt.ids, embeddings=m.prompt.embeddings(m.prompt.ctx + bias[i]))
             for i in range(2)]
        assert not torch.allclose(t[0], t[1], atol=1e-5)  # two images -> two sets of class texts
        want = torch.stack([bb.logit_scale * img[i] @ t[i].float().T for i in range(2)])
        torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(logits, static, atol=1e-4)
        # without the meta-net's contribution CoCoOp is CoOp
        m.meta_net[-1].weight.zero_()
        m.meta_net[-1].bias.zero_()
        torch.testing.assert_close(m(b), static, rtol=1e-4, atol=1e-5)
    m.train()
    m.meta_net[-1].weight.data.normal_(0, 0.02)
    m.loss(b)[0].backward()
    assert m.meta_net[0].weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# MaPLe
def test_maple_vision_prompts_are_coupled_to_text_prompts(bb):
    m = make(bb, "maple")
    cp = m.mm.coupled
    vis = cp.vision_prompts(m.mm.prompt.ctx)
    texts_ = [m.mm.prompt.ctx] + list(cp.text.prompts)
    assert len(vis) == cp.depth >= 1
    for f, p, v in zip(cp.couplings, texts_, vis):
        torch.testing.assert_close(v, f(p.float()))  # P~_j = F_j(P_j)
    # no free visual prompt parameters: every learned tensor is a language prompt or a coupling
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert all(n.startswith(("mm.prompt.ctx", "mm.coupled.text.", "mm.coupled.couplings."))
               for n in names), names
    # a loss on the image features alone reaches the couplings and the language prompts
    b = pixel_batch(bb, 2)
    img = m.mm.image_features(bb, b.images)
    img.sum().backward()
    assert cp.couplings[0].weight.grad is not None and cp.couplings[0].weight.grad.abs().sum() > 0
    assert m.mm.prompt.ctx.grad is not None and m.mm.prompt.ctx.grad.abs().sum() > 0
    m.zero_grad()
    m.loss(b)[0].backward()
    assert all(f.weight.grad is not None and f.weight.grad.abs().sum() > 0 for f in cp.couplings)


# ------------------------------------------------------------------------------------------------
# CLIP-Adapter
def test_clip_adapter_alpha_zero_is_zero_shot_exactly(bb):
    from medadapt.methods.base import text_features_for
    b = feat_batch(bb, [0, 1, 2])
    m = make(bb, "clip-adapter", alpha=0.0)
    m.eval()
    with torch.no_grad():
        txt = text_features_for(bb, texts(), "template")
        want = bb.logit_scale * F.normalize(b.features.float(), dim=-1) @ F.normalize(txt, dim=-1).T
        assert torch.equal(m(b), want)
        m2 = make(bb, "clip-adapter", alpha=0.2)
        assert not torch.allclose(m2(b), want)
        # the blend is alpha * A(f) + (1 - alpha) * f (Gao et al. Eq. 3; released ``ratio``)
        f = b.features.float()
        blend = 0.2 * m2.image_adapter.adapter(f) + 0.8 * f
        torch.testing.assert_close(m2.adapted_image(b), F.normalize(blend, dim=-1))


# ------------------------------------------------------------------------------------------------
# Biomed-DPT
def test_biomed_dpt_zero_visual_prompts_present_zero_frozen(bb):
    m = make(bb, "biomed-dpt")
    vp = list(m.vision.prompts)
    assert len(vp) == len(bb.vision_blocks())
    assert all(torch.count_nonzero(p) == 0 and not p.requires_grad for p in vp)
    b = pixel_batch(bb, 2)
    with torch.no_grad():  # present: the image features are those of the prompted encoder
        assert not torch.allclose(m.prompted_image_features(b.images), bb.encode_image(b.images))
