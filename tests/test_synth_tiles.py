"""The tile generator: determinism and a measurable statistic per attribute."""
import numpy as np
import pytest
from scipy import ndimage

from medadapt.synth.tiles import DOMAINS, render_tile, render_tiles

SEEDS = range(24)
BASE = {"density": 0.3, "size": 0.4, "shape": "round", "chromatin": "dark",
        "architecture": "none", "irregular": 0.0, "debris": 0.0, "background": "eosin"}


def tiles(seeds=SEEDS, px=64, domain="colon", **kw):
    a = dict(BASE, **kw)
    return np.stack([render_tile(a, s, px, domain) for s in seeds]).astype(np.float32)


def lum(t):
    return t @ np.array([0.299, 0.587, 0.114], np.float32)


def dark_frac(t):
    return float((lum(t) < 130).mean())


def white_frac(t):
    return float((lum(t) > 225).mean())


def blobs(t, thr=130):
    """Per tile: list of (area, elongation) of dark connected components."""
    out = []
    for im in lum(t):
        lab, n = ndimage.label(im < thr)
        props = []
        for k in range(1, n + 1):
            ys, xs = np.nonzero(lab == k)
            if len(ys) < 3:
                props.append((len(ys), 1.0))
                continue
            ev = np.linalg.eigvalsh(np.cov(np.stack([ys, xs]).astype(float)) + 1e-6 * np.eye(2))
            props.append((len(ys), float(np.sqrt(ev[1] / ev[0]))))
        out.append(props)
    return out


def coherence(t):
    """Mean structure-tensor coherence (1 = all gradients share one orientation)."""
    vals = []
    for im in lum(t):
        gy, gx = np.gradient(ndimage.gaussian_filter(im, 1.0))
        jxx = ndimage.gaussian_filter(gx * gx, 6)
        jyy = ndimage.gaussian_filter(gy * gy, 6)
        jxy = ndimage.gaussian_filter(gx * gy, 6)
        c = np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy + 1e-6)
        vals.append(float(c.mean()))
    return float(np.mean(vals))


# ---- determinism --------------------------------------------------------------------------------

def test_same_seed_same_bytes_different_seed_different():
    for arch in ("none", "glands", "fibrous", "fat", "mucin", "muscle"):
        a = dict(BASE, architecture=arch, shape="pleomorphic", debris=0.5)
        t1, t2 = render_tile(a, 123), render_tile(a, 123)
        assert t1.dtype == np.uint8 and t1.shape == (64, 64, 3)
        assert t1.tobytes() == t2.tobytes()
        assert render_tile(a, 124).tobytes() != t1.tobytes()


def test_batch_equals_single_and_size_is_configurable():
    attrs = [dict(BASE, density=d) for d in (0.1, 0.5, 0.9)]
    batch = render_tiles(attrs, [5, 6, 7], size=64, domains="breast")
    for i, a in enumerate(attrs):
        assert batch[i].tobytes() == render_tile(a, 5 + i, 64, "breast").tobytes()
    for size in (32, 96, 128):
        t = render_tile(dict(BASE, architecture="glands"), 1, size)
        assert t.shape == (size, size, 3)


def test_bad_attributes_are_rejected():
    with pytest.raises(ValueError):
        render_tile({"architecture": "spiral"}, 0)
    with pytest.raises(ValueError):
        render_tile({"colour": "red"}, 0)


# ---- attribute -> image statistics ----------------------------------------------------------------

def test_nuclear_density_raises_dark_fraction():
    fr = [dark_frac(tiles(density=d)) for d in (0.05, 0.3, 0.6, 0.9)]
    assert fr[0] < fr[1] < fr[2] < fr[3], fr
    assert fr[3] > 3 * fr[0]


def test_nuclear_size_raises_blob_area():
    def mean_area(t):
        return np.mean([a for tile in blobs(t) for a, _ in tile if a >= 3])
    small, large = mean_area(tiles(density=0.15, size=0.1)), mean_area(tiles(density=0.15, size=0.9))
    assert large > 2.0 * small, (small, large)


def area_cv(t, min_area=6):
    """Coefficient of variation of dark-blob areas, thresholded per tile halfway between the
    median and the darkest pixels (robust to the per-tile stain-strength jitter)."""
    areas = []
    for im in lum(t):
        med = np.percentile(im, 50)
        lab, n = ndimage.label(im < med - 0.5 * (med - np.percentile(im, 1)))
        a = ndimage.sum_labels(np.ones_like(im), lab, index=np.arange(1, n + 1))
        areas += [x for x in a if x >= min_area]
    areas = np.array(areas)
    return areas.std() / areas.mean()


def test_nuclear_shape_elongation_and_pleomorphism():
    def elongation(t):
        return np.median([e for tile in blobs(t) for a, e in tile if a >= 6])
    round_e = elongation(tiles(density=0.12, size=0.5, shape="round"))
    oval_e = elongation(tiles(density=0.12, size=0.5, shape="oval"))
    assert oval_e > round_e + 0.4, (round_e, oval_e)
    round_cv = area_cv(tiles(density=0.06, size=0.5, shape="round"))
    pleo_cv = area_cv(tiles(density=0.06, size=0.5, shape="pleomorphic"))
    assert pleo_cv > 1.25 * round_cv, (round_cv, pleo_cv)


def test_chromatin_dark_nuclei_are_darker():
    def darkest(t):
        return float(np.percentile(lum(t), 3))
    assert darkest(tiles(density=0.4, chromatin="dark")) < darkest(
        tiles(density=0.4, chromatin="pale")) - 25


def test_architectures():
    none = tiles(density=0.3)
    fat = tiles(architecture="fat", density=0.05)
    glands = tiles(architecture="glands", density=0.4)
    mucin = tiles(architecture="mucin", density=0.05, background="pale")
    fibrous = tiles(architecture="fibrous", density=0.05)
    muscle = tiles(architecture="muscle", density=0.05)
    bare = tiles(density=0.05)
    # fat vacuoles and gland lumens raise the white fraction
    assert white_frac(fat) > 0.6 > white_frac(glands) > 0.03 > white_frac(none)
    # mucin is bluish-grey: blue above red, unlike pink tissue
    def blue_minus_red(t):
        return float((t[..., 2] - t[..., 0]).mean())
    assert blue_minus_red(mucin) > 5 > blue_minus_red(none)
    # fibres and muscle bundles are oriented textures
    assert coherence(fibrous) > coherence(bare) + 0.2
    assert coherence(muscle) > coherence(bare) + 0.2
    # muscle is more eosinophilic (redder than green) than fibrous stroma with its pale gaps
    def eosin(t):
        return float((t[..., 0] - t[..., 1]).mean())
    assert eosin(muscle) > eosin(fibrous)


def test_debris_adds_small_fragments_and_clumps():
    def small_blobs(t):
        return np.mean([sum(1 for a, _ in tile if a <= 4) for tile in blobs(t, thr=130)])
    clean, dirty = tiles(density=0.1), tiles(density=0.1, debris=0.9)
    assert small_blobs(dirty) > small_blobs(clean) + 8
    assert lum(dirty).std() > lum(clean).std()


def test_background_stain_shifts_mean_colour():
    eosin, pale, white = (tiles(density=0.0, background=b) for b in ("eosin", "pale", "white"))
    pinkness = [float((t[..., 0] - t[..., 1]).mean()) for t in (eosin, pale, white)]
    assert pinkness[0] > pinkness[1] + 10 > pinkness[2] + 15
    assert lum(white).mean() > lum(pale).mean() > lum(eosin).mean()


def test_domain_shifts_colour():
    means = {d: tiles(domain=d, architecture="glands").reshape(-1, 3).mean(0) for d in DOMAINS}
    names = list(means)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert np.abs(means[names[i]] - means[names[j]]).sum() > 8, (names[i], names[j])
