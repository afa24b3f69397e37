"""SCALE loss terms (Eq. 2-3) on hand-made tensors against direct transcriptions."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medadapt.hierarchy import from_dict
from medadapt.methods.scale import (ComboIndex, masked_max, scale_ce_terms, scale_supcon,
                                    supcon_khosla, supcon_loss)
from test_scale_fixtures import backbone, data_csv, env, feature_split  # noqa: F401


def test_supcon_matches_khosla_by_hand():
    # unit vectors, tau = 0.5; anchors 1,2 share label 0, anchors 3,4 share label 1
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]])
    y = torch.tensor([0, 0, 1, 1])
    # dot products / tau: 12: 1.2, 13: 0, 14: -1.2, 23: 1.6, 24: 0.56, 34: 1.6
    l1 = -(1.2 - math.log(math.exp(1.2) + math.exp(0.0) + math.exp(-1.2)))
    l2 = -(1.2 - math.log(math.exp(1.2) + math.exp(1.6) + math.exp(0.56)))
    l3 = -(1.6 - math.log(math.exp(0.0) + math.exp(1.6) + math.exp(1.6)))
    l4 = -(1.6 - math.log(math.exp(-1.2) + math.exp(0.56) + math.exp(1.6)))
    got = supcon_khosla(z, y, tau=0.5)
    assert float(got) == pytest.approx((l1 + l2 + l3 + l4) / 4, abs=1e-6)
    assert float(supcon_khosla(z, y, tau=0.5, reduction="sum")) == pytest.approx(l1 + l2 + l3 + l4,
                                                                                 abs=1e-5)


def test_supcon_two_positives_and_anchor_without_positive():
    # tau = 1; anchor 1 has positives {2, 3} (mean of their log-probabilities); anchor 4 has none
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    y = torch.tensor([0, 0, 0, 1])
    den1 = math.exp(1) + math.exp(0) + math.exp(0)  # s in {2, 3, 4}
    l1 = -0.5 * ((1 - math.log(den1)) + (0 - math.log(den1)))
    den2 = math.exp(1) + math.exp(0) + math.exp(0)
    l2 = -0.5 * ((1 - math.log(den2)) + (0 - math.log(den2)))
    den3 = math.exp(0) + math.exp(0) + math.exp(-1)
    l3 = -0.5 * ((0 - math.log(den3)) + (0 - math.log(den3)))
    got = supcon_khosla(z, y, tau=1.0)
    assert float(got) == pytest.approx((l1 + l2 + l3) / 3, abs=1e-6)  # anchor 4 is skipped


def _supcon_transcription(logits, g_anchor, g_cand, keep):
    """Eq. 2 with Zhang & Wu's multi-label reading, written as loops."""
    terms = []
    for a in range(logits.shape[0]):
        for h in range(g_anchor.shape[1]):
            if not g_anchor[a, h]:
                continue
            S = [s for s in range(logits.shape[1]) if keep[a, s]]
            P = [p for p in S if g_cand[p, h]]
            if not P:
                continue
            den = sum(math.exp(float(logits[a, s])) for s in S)
            terms.append(-sum(float(logits[a, p]) - math.log(den) for p in P) / len(P))
    return sum(terms) / len(terms)


def test_multilabel_supcon_matches_transcription():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 6, generator=g)
    ga = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]]).bool()
    gc = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]]).bool()
    keep = torch.rand(5, 6, generator=g) > 0.2
    got = supcon_loss(logits, ga, gc, keep)
    assert float(got) == pytest.approx(_supcon_transcription(logits, ga, gc, keep), abs=1e-5)


def _setup_q(seed=1):
    g = torch.Generator().manual_seed(seed)
    n, H = 4, 3
    pair_img = torch.tensor([0, 1, 1, 2, 3])  # image 1 has two combinations
    pair_combo = torch.tensor([0, 0, 2, 1, 2])
    Q = torch.randn(n, len(pair_img), generator=g).clamp(-1, 1)
    g_txt = F.one_hot(pair_combo, H).bool()
    g_img = torch.zeros(n, H, dtype=torch.bool)
    g_img[pair_img, pair_combo] = True
    return Q, g_img, g_txt, pair_img


def test_scale_supcon_rows_is_eq2_on_rows_of_q():
    Q, g_img, g_txt, src = _setup_q()
    tau = 0.1
    for transpose in (False, True):
        M = Q.T if transpose else Q
        G = g_txt if transpose else g_img
        q = F.normalize(M, dim=-1)  # q^i = Q_i,: (L2-normalised as Khosla's embeddings)
        n = len(q)
        logits = torch.tensor([[float(q[i] @ q[p]) / tau for p in range(n)] for i in range(n)])
        keep = ~torch.eye(n, dtype=torch.bool)  # S(i) = I \ {i}
        want = _supcon_transcription(logits, G, G, keep)
        got = scale_supcon(Q, g_img, g_txt, src, tau, "rows", transpose)
        assert float(got) == pytest.approx(want, abs=1e-5)


def test_scale_supcon_cross_reads_q_as_logits():
    Q, g_img, g_txt, src = _setup_q()
    tau = 0.2
    n, t = Q.shape
    keep = torch.tensor([[int(src[j]) != i for j in range(t)] for i in range(n)])
    want = _supcon_transcription(Q / tau, g_img, g_txt, keep)
    assert float(scale_supcon(Q, g_img, g_txt, src, tau, "cross")) == pytest.approx(want, abs=1e-5)
    want_t = _supcon_transcription(Q.T / tau, g_txt, g_img, keep.T)
    assert float(scale_supcon(Q, g_img, g_txt, src, tau, "cross", transpose=True)) == \
        pytest.approx(want_t, abs=1e-5)


HIER = {"classes": ["A", "B"], "concepts": {"x": ["A"], "y": ["A", "B"], "w": ["B"]}}


def _nll(scores, target):
    m = max(scores)
    return -(scores[target] - m - math.log(sum(math.exp(s - m) for s in scores)))


def test_ce_terms_match_transcription():
    h = from_dict(HIER)
    assert h.combinations == [("A", "x"), ("A", "y"), ("B", "y"), ("B", "w")]
    idx = ComboIndex(h)
    z = torch.tensor([[0.1, 0.5, -0.2, 0.3], [0.9, -0.1, 0.4, 0.0], [-0.3, 0.2, 0.6, 0.1]])
    pair_img = torch.tensor([0, 1, 2, 2])
    pair_combo = torch.tensor([1, 0, 2, 3])
    s = 10.0
    got = scale_ce_terms(z, pair_img, pair_combo, idx, s)
    cg, cl, cc = [], [], []
    for i, hh in zip(pair_img.tolist(), pair_combo.tolist()):
        zi = [s * float(v) for v in z[i]]
        cg.append(_nll(zi, hh))  # CE(g^i, z^i)
        concepts = [zi[0], max(zi[1], zi[2]), zi[3]]  # z_l = max over C_l
        cl.append(_nll(concepts, {0: 0, 1: 1, 2: 1, 3: 2}[hh]))
        classes = [max(zi[0], zi[1]), max(zi[2], zi[3])]  # z_c = max over L_c
        cc.append(_nll(classes, {0: 0, 1: 0, 2: 1, 3: 1}[hh]))
    for g, want in zip(got, (cg, cl, cc)):
        assert float(g) == pytest.approx(sum(want) / len(want), abs=1e-5)
    got_sum = scale_ce_terms(z, pair_img, pair_combo, idx, s, reduction="sum")
    assert float(got_sum[0]) == pytest.approx(sum(cg), abs=1e-4)


def test_ce_terms_softmax_within_criterion():
    h = from_dict({"classes": ["A", "B"],
                   "concepts": {"p1": "A", "p2": "B", "q1": "A", "q2": "B", "q3": "B"},
                   "criteria": {"P": ["p1", "p2"], "Q": ["q1", "q2", "q3"]}})
    idx = ComboIndex(h)
    assert [g.tolist() for g in idx.groups] == [[0, 1], [2, 3, 4]]
    z = torch.tensor([[0.2, -0.1, 0.4, 0.3, -0.5]])
    got = scale_ce_terms(z, torch.tensor([0, 0]), torch.tensor([1, 2]), idx, 5.0)
    zz = [5 * float(v) for v in z[0]]
    want_g = (_nll(zz[0:2], 1) + _nll(zz[2:5], 0)) / 2
    want_l = want_g  # one class per concept: concept scores = combination scores
    want_c = (_nll([zz[0], zz[1]], 1) + _nll([zz[2], max(zz[3], zz[4])], 0)) / 2
    assert [float(x) for x in got] == pytest.approx([want_g, want_l, want_c], abs=1e-5)


def test_masked_max():
    z = torch.tensor([[1.0, 3.0, 2.0]])
    member = torch.tensor([[True, False, True], [False, True, True]])
    assert masked_max(z, member).tolist() == [[2.0, 3.0]]


def test_full_loss_is_eq3_and_only_adapters_get_gradients(env, data_csv):
    from medadapt.data.texts import load_class_texts
    from medadapt.methods.base import Batch
    from medadapt.methods.scale import SCALE

    bb = backbone("tiny-hf-clip")
    split = feature_split(bb, data_csv)
    hier = str(__import__("pathlib").Path(data_csv).parent / "hierarchy.yaml")
    lam = [0.5, 2.0, 0.3, 0.7]
    m = SCALE(bb, load_class_texts(split.ds.classnames), {"hierarchy": hier, "lambdas": lam})
    batch = Batch(labels=split.labels, features=split.features, concepts=split.concepts)
    total, parts = m.loss(batch)
    want = (parts["ce_combination"] + lam[0] * parts["ce_concept"] + lam[1] * parts["ce_class"]
            + lam[2] * parts["supcon_q"] + lam[3] * parts["supcon_qt"])
    assert float(total.detach()) == pytest.approx(want, rel=1e-5)
    # the parts against the pure functions on the method's own embeddings
    img = m.adapted_image(batch)
    prompts = m.adapted_prompts()
    pi, pc = [], []
    for i, (lab, cs) in enumerate(zip(split.labels.tolist(), split.concepts)):
        for hh in m.hierarchy.item_combinations(split.ds.classnames[lab], cs):
            pi.append(i)
            pc.append(hh)
    assert len(pi) > len(split)  # the fixture has a multi-label item
    ce = scale_ce_terms(img @ prompts.T, torch.tensor(pi), torch.tensor(pc), m.index, m.scale())
    assert parts["ce_combination"] == pytest.approx(float(ce[0].detach()), rel=1e-5)
    Q = img @ prompts[torch.tensor(pc)].T
    g_img = torch.zeros(len(split), m.index.H, dtype=torch.bool)
    g_img[torch.tensor(pi), torch.tensor(pc)] = True
    sq = scale_supcon(Q, g_img, F.one_hot(torch.tensor(pc), m.index.H).bool(), torch.tensor(pi),
                      0.07, "rows")
    assert parts["supcon_q"] == pytest.approx(float(sq.detach()), rel=1e-5)

    total.backward()
    learned = {n for n, p in m.named_parameters() if p.requires_grad}
    assert learned == {"image_adapter.alpha", "image_adapter.adapter.w1.weight",
                       "image_adapter.adapter.w2.weight", "text_adapter.alpha",
                       "text_adapter.adapter.w1.weight", "text_adapter.adapter.w2.weight"}
    for n, p in m.named_parameters():
        if n in learned:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None and not p.requires_grad, n
