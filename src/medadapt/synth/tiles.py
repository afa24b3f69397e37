"""Procedural H&E-like tiles drawn from a dict of visual attributes.

A tile is rendered as two stain concentration fields, hematoxylin ``H`` (nuclei, mucin) and eosin
``E`` (cytoplasm, stroma, muscle), turned into RGB with the Beer-Lambert law:
``rgb = glass * exp(-(H * h_vec + E * e_vec))``, so colours mix the way stains do. A ``domain``
(stain / organ) changes the stain vectors, stain strength, glass colour, grain and texture scale.

Everything is numpy on one tile at a time; random numbers come from one PCG64 generator seeded
with the tile's seed, so the same (attributes, seed, size, domain) gives the same bytes on every
call, independently of what else is rendered in the same batch.

Attributes (all optional, see :data:`DEFAULT_ATTRS`):

* ``density`` 0..1: nuclear density (fraction of a packed sheet of nuclei).
* ``size`` 0..1: nuclear size (equivalent radius 1.3 .. 3.7 px at 64 px).
* ``shape``: ``round`` | ``oval`` | ``pleomorphic``.
* ``chromatin``: ``pale`` (vesicular, rim darker than centre) | ``dark`` (hyperchromatic, coarse).
* ``architecture``: ``none`` | ``glands`` | ``fibrous`` (wavy fibrous streaks) | ``fat``
  (fat vacuoles) | ``mucin`` (mucin pools) | ``muscle`` (thick parallel muscle bundles).
* ``irregular`` 0..1: architectural disorder (irregular, crowded, budding glands; crowded rims).
* ``debris`` 0..1: necrotic debris (nuclear dust, eosinophilic clumps).
* ``background``: ``eosin`` (pink stroma) | ``pale`` (lightly stained) | ``white`` (bare glass).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

SHAPES = ("round", "oval", "pleomorphic")
CHROMATIN = ("pale", "dark")
ARCHITECTURES = ("none", "glands", "fibrous", "fat", "mucin", "muscle")
BACKGROUNDS = ("eosin", "pale", "white")

DEFAULT_ATTRS: dict = {
    "density": 0.3, "size": 0.4, "shape": "round", "chromatin": "dark", "architecture": "none",
    "irregular": 0.0, "debris": 0.0, "background": "eosin",
}

# eosin concentration of the background per stain
_BG_EOSIN = {"eosin": 0.62, "pale": 0.26, "white": 0.025}


@dataclass(frozen=True)
class Domain:
    """A stain / organ domain: colour and texture shifts applied to every tile."""

    name: str
    h_vec: tuple[float, float, float] = (0.65, 0.70, 0.29)  # Ruifrok & Johnston hematoxylin OD
    e_vec: tuple[float, float, float] = (0.2159, 0.8012, 0.5581)  # eosin OD
    h_scale: float = 1.0
    e_scale: float = 1.0
    glass: tuple[float, float, float] = (246.0, 244.0, 247.0)
    texture_cells: int = 6  # coarse stain-texture grid cells across a tile
    texture_amp: float = 0.22
    grain: float = 3.0  # pixel noise (grey levels)
    fiber_freq: float = 1.0  # multiplies the fibre / bundle spatial frequency


DOMAINS: dict[str, Domain] = {
    # colon: the reference stain
    "colon": Domain("colon"),
    # breast: bluer hematoxylin, lighter eosin, finer texture
    "breast": Domain("breast", h_vec=(0.72, 0.66, 0.22), e_vec=(0.15, 0.85, 0.50), h_scale=1.1,
                     e_scale=0.8, glass=(244.0, 243.0, 250.0), texture_cells=10, texture_amp=0.3,
                     grain=4.0, fiber_freq=1.3),
    # stomach: warm, strongly eosinophilic, coarse texture
    "stomach": Domain("stomach", h_vec=(0.60, 0.72, 0.35), e_vec=(0.30, 0.80, 0.52), h_scale=0.9,
                      e_scale=1.2, glass=(250.0, 243.0, 238.0), texture_cells=4, texture_amp=0.35,
                      grain=2.5, fiber_freq=0.8),
    # lung: faded, greyish stain, grainy
    "lung": Domain("lung", h_vec=(0.58, 0.66, 0.45), e_vec=(0.25, 0.72, 0.62), h_scale=0.8,
                   e_scale=0.75, glass=(240.0, 240.0, 240.0), texture_cells=8, texture_amp=0.25,
                   grain=6.0, fiber_freq=1.1),
}


def get_domain(domain: str | Domain | None) -> Domain:
    if domain is None:
        return DOMAINS["colon"]
    if isinstance(domain, Domain):
        return domain
    try:
        return DOMAINS[domain]
    except KeyError:
        from medadapt.errors import UserError
        raise UserError(f"unknown synth domain {domain!r}; valid: {', '.join(DOMAINS)}") from None


def check_attrs(attrs: Mapping) -> dict:
    """Fill defaults and validate; returns a plain dict."""
    a = dict(DEFAULT_ATTRS)
    unknown = set(attrs) - set(DEFAULT_ATTRS)
    if unknown:
        raise ValueError(f"unknown tile attributes {sorted(unknown)}; "
                         f"valid: {sorted(DEFAULT_ATTRS)}")
    a.update(attrs)
    for k, valid in (("shape", SHAPES), ("chromatin", CHROMATIN), ("architecture", ARCHITECTURES),
                     ("background", BACKGROUNDS)):
        if a[k] not in valid:
            raise ValueError(f"attribute {k}={a[k]!r} not in {valid}")
    for k in ("density", "size", "irregular", "debris"):
        a[k] = float(min(1.0, max(0.0, float(a[k]))))
    return a


# --------------------------------------------------------------------------------------------
# cached geometry

@lru_cache(maxsize=32)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells+1) bilinear interpolation weights: value noise = M @ G @ M.T."""
    pos = (np.arange(size) + 0.5) / size * cells
    i0 = np.minimum(np.floor(pos).astype(int), cells - 1)
    f = pos - i0
    f = f * f * (3 - 2 * f)  # smoothstep for softer value noise
    m = np.zeros((size, cells + 1), np.float32)
    m[np.arange(size), i0] = 1 - f
    m[np.arange(size), i0 + 1] = f
    return m


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


@lru_cache(maxsize=32)
def _stamp_grid(k: int) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:k, 0:k].astype(np.float32)
    return v, u


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in [-1, 1]."""
    m = _interp_matrix(size, cells)
    g = rng.random((cells + 1, cells + 1), dtype=np.float32) * 2 - 1
    return m @ g @ m.T


def _blur(a: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge replication."""
    b = np.empty_like(a)
    b[1:-1] = (a[:-2] + 2 * a[1:-1] + a[2:]) * 0.25
    b[0] = (3 * a[0] + a[1]) * 0.25
    b[-1] = (a[-2] + 3 * a[-1]) * 0.25
    c = np.empty_like(b)
    c[:, 1:-1] = (b[:, :-2] + 2 * b[:, 1:-1] + b[:, 2:]) * 0.25
    c[:, 0] = (3 * b[:, 0] + b[:, 1]) * 0.25
    c[:, -1] = (b[:, -2] + 3 * b[:, -1]) * 0.25
    return c


# --------------------------------------------------------------------------------------------
# nuclei

_HALVES = np.array([3, 4, 5, 6, 8, 10, 13, 17, 22, 28, 36, 48, 64])


def _stamp(size: int, cy: np.ndarray, cx: np.ndarray, radius: np.ndarray, aspect: np.ndarray,
           theta: np.ndarray, wobble: np.ndarray, phase: np.ndarray, strength: np.ndarray,
           vesicular: np.ndarray) -> np.ndarray:
    """Draw N soft ellipses (with optional boundary wobble) and sum them into a (size, size) field.

    Vectorised over nuclei: each is evaluated in a k x k window around its centre (nuclei are
    grouped by window size) and scattered into a padded canvas with ``np.bincount``.
    """
    n = len(cy)
    if n == 0:
        return np.zeros((size, size), np.float32)
    need = np.ceil(radius * np.sqrt(aspect) * (1 + wobble)).astype(np.int64) + 2
    bucket = np.searchsorted(_HALVES, need)
    halves = np.where(bucket < len(_HALVES), _HALVES[np.minimum(bucket, len(_HALVES) - 1)], need)
    pad = int(halves.max()) + 1
    side = size + 2 * pad
    flats, vals = [], []
    for half in np.unique(halves):
        sel = halves == half
        f, v = _stamp_group(int(half), pad, side, cy[sel], cx[sel], radius[sel], aspect[sel],
                            theta[sel], wobble[sel], phase[sel], strength[sel], vesicular[sel])
        flats.append(f)
        vals.append(v)
    flat = np.concatenate(flats) if len(flats) > 1 else flats[0]
    val = np.concatenate(vals) if len(vals) > 1 else vals[0]
    canvas = np.bincount(flat, weights=val, minlength=side * side).astype(np.float32)
    return canvas.reshape(side, side)[pad:pad + size, pad:pad + size]


def _stamp_group(half, pad, side, cy, cx, radius, aspect, theta, wobble, phase, strength,
                 vesicular):
    k = 2 * half + 1
    v, u = _stamp_grid(k)
    f32 = np.float32
    iy, ix = np.floor(cy).astype(np.int64), np.floor(cx).astype(np.int64)
    dy = (v[None] - half) - (cy - iy).astype(f32)[:, None, None]
    dx = (u[None] - half) - (cx - ix).astype(f32)[:, None, None]
    c, s = np.cos(theta).astype(f32)[:, None, None], np.sin(theta).astype(f32)[:, None, None]
    p = dx * c + dy * s
    q = dy * c - dx * s
    sq = np.sqrt(aspect)
    sa = (radius * sq).astype(f32)[:, None, None]
    sb = (radius / sq).astype(f32)[:, None, None]
    rr = np.sqrt((p / sa) ** 2 + (q / sb) ** 2)  # 1 on the ellipse boundary
    if wobble.any():
        # outline r(a) = 1 + w (0.6 sin(2a + ph) + 0.4 sin(3a + 2.1 ph)), with the angle's
        # cosine / sine from p, q (no arctan2): sin2a, cos2a, sin3a, cos3a as polynomials
        rho = np.sqrt(p * p + q * q) + f32(1e-6)
        ca, sa_ = p / rho, q / rho
        ph = phase.astype(f32)[:, None, None]
        w = wobble.astype(f32)[:, None, None]
        s2, c2 = 2 * sa_ * ca, ca * ca - sa_ * sa_
        s3, c3 = sa_ * (3 - 4 * sa_ * sa_), ca * (4 * ca * ca - 3)
        f = 0.6 * (s2 * np.cos(ph) + c2 * np.sin(ph)) + 0.4 * (s3 * np.cos(2.1 * ph)
                                                              + c3 * np.sin(2.1 * ph))
        rr = rr / (1 + w * f)
    # anti-aliased edge about one pixel wide (in units of the minor radius)
    edge = np.clip((1 - rr) * sb * f32(1.3) + f32(0.5), 0, 1)
    val = edge * strength.astype(f32)[:, None, None]
    if vesicular.any():  # vesicular (pale) nuclei: membrane darker than the centre
        ves = vesicular.astype(f32)[:, None, None]
        val = val * ((1 - ves) + ves * (0.45 + 0.55 * np.minimum(rr, 1) ** 3))
    rows = iy[:, None, None] + (pad - half) + v[None].astype(np.int64)
    cols = ix[:, None, None] + (pad - half) + u[None].astype(np.int64)
    ok = (rows >= 0) & (rows < side) & (cols >= 0) & (cols < side) & (val > 0)
    return (rows * side + cols)[ok], val[ok]


def _nucleus_params(rng, n: int, a: dict, scale: float, elongate: float = 1.0,
                    orient: float | None = None):
    """Per-nucleus radius, aspect, angle, wobble, strength and vesicular flag."""
    r0 = (1.3 + 2.4 * a["size"]) * scale
    shape = a["shape"]
    if shape == "round":
        radius = r0 * rng.uniform(0.9, 1.1, n)
        aspect = rng.uniform(1.0, 1.2, n)
        wobble = np.zeros(n)
    elif shape == "oval":
        radius = r0 * rng.uniform(0.85, 1.15, n)
        aspect = rng.uniform(1.7, 2.4, n)
        wobble = np.zeros(n)
    else:  # pleomorphic: variable size and shape, wobbly outline
        radius = r0 * np.exp(rng.normal(0, 0.25, n))
        aspect = rng.uniform(1.0, 2.2, n)
        wobble = rng.uniform(0.12, 0.3, n)
    aspect = aspect * elongate
    if orient is None:
        theta = rng.uniform(0, np.pi, n)
    else:
        theta = orient + rng.normal(0, 0.15, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    if a["chromatin"] == "dark":
        strength = rng.uniform(1.5, 1.9, n)
        vesicular = np.zeros(n)
    else:
        strength = rng.uniform(0.75, 0.95, n)
        vesicular = np.ones(n)
    return radius, aspect, theta, wobble, phase, strength, vesicular


def _count(a: dict, size: int, scale: float, area_frac: float = 1.0) -> int:
    r0 = (1.3 + 2.4 * a["size"]) * scale
    packed = 0.55 * size * size * area_frac / (math.pi * r0 * r0)
    return int(round(a["density"] * packed))


def _sample_where(rng, mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n random (y, x) positions (with sub-pixel jitter) among the True pixels of ``mask``."""
    ys, xs = np.nonzero(mask)
    if n <= 0 or len(ys) == 0:
        return np.zeros(0), np.zeros(0)
    pick = rng.integers(0, len(ys), n)
    return ys[pick] + rng.random(n), xs[pick] + rng.random(n)


# --------------------------------------------------------------------------------------------
# the tile

def render_tile(attrs: Mapping, seed: int, size: int = 64, domain: str | Domain | None = None
                ) -> np.ndarray:
    """One RGB tile, ``uint8`` array ``(size, size, 3)``, deterministic for its arguments."""
    a = check_attrs(attrs)
    dom = get_domain(domain)
    if int(size) != size or size < 8:
        raise ValueError(f"tile size must be an integer >= 8, got {size!r}")
    size = int(size)
    rng = np.random.default_rng(int(seed))
    s = size / 64.0
    yy, xx = _grid(size)
    cells = max(2, int(round(dom.texture_cells * max(1.0, s ** 0.5))))
    tex = _noise(rng, size, cells)
    bg = _BG_EOSIN[a["background"]]
    E = bg * (1 + dom.texture_amp * tex)
    H = np.full((size, size), 0.04 if a["background"] != "white" else 0.01, np.float32)
    tissue = np.ones((size, size), bool)  # where nuclei may sit
    arch = a["architecture"]
    irr = a["irregular"]
    nuclei: list[tuple] = []  # (cy, cx, params) groups

    if arch == "glands":
        n_g = 1 + int(rng.random() < 0.45 + 0.45 * irr) + int(irr > 0.5 and rng.random() < irr)
        lumen = np.zeros((size, size), bool)
        rim = np.zeros((size, size), bool)
        ring_pos = []
        placed: list[tuple[float, float, float]] = []
        for _ in range(n_g):
            ra = rng.uniform(8, 13) * s
            rb = ra * rng.uniform(0.55, 0.95)
            thick_px = (4.0 + 4.0 * irr) * s
            cy, cx = rng.uniform(0.15, 0.85, 2) * size
            for _try in range(6):  # glands do not overlap (back to back when crowded)
                if all(math.hypot(cy - py, cx - px) > (ra + pr_ + 2 * thick_px) * (1 - 0.3 * irr)
                       for py, px, pr_ in placed):
                    break
                cy, cx = rng.uniform(0.0, 1.0, 2) * size
            else:
                continue
            placed.append((cy, cx, ra))
            th = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            p = dx * np.cos(th) + dy * np.sin(th)
            q = -dx * np.sin(th) + dy * np.cos(th)
            ang = np.arctan2(q, p)
            ph = rng.uniform(0, 2 * np.pi, 3)
            wob = 1 + irr * (0.3 * np.sin(3 * ang + ph[0]) + 0.2 * np.sin(5 * ang + ph[1]))
            rr = np.sqrt((p / ra) ** 2 + (q / rb) ** 2) / wob
            thick = thick_px / rb
            lumen |= rr < 1
            rim |= (rr >= 1) & (rr < 1 + thick)
            # nuclei along the rim: basal, one row, evenly spaced when regular; stacked and
            # disordered when irregular
            n_r = int(round((6 + 14 * a["density"]) * (ra + rb) / (20 * s) * (1 + 0.6 * irr)
                            * (0.4 / (0.15 + a["size"])) ** 0.5))
            t = (np.arange(n_r) + rng.uniform(0, 1)) / max(n_r, 1) * 2 * np.pi \
                + rng.normal(0, 0.05 + 0.5 * irr, n_r)
            depth = 1 + thick * np.clip(0.72 + rng.normal(0, 0.05 + 0.25 * irr, n_r), 0.3, 0.95)
            wt = 1 + irr * (0.3 * np.sin(3 * t + ph[0]) + 0.2 * np.sin(5 * t + ph[1]))
            pr, qr = ra * depth * wt * np.cos(t), rb * depth * wt * np.sin(t)
            ring_pos.append((cy + pr * np.sin(th) + qr * np.cos(th),
                             cx + pr * np.cos(th) - qr * np.sin(th), t + th))
        rim &= ~lumen
        E = np.where(lumen, 0.03, np.where(rim, 0.3 + 0.08 * tex, E * 0.8))
        H = np.where(rim, 0.3 + 0.06 * tex, np.where(lumen, 0.0, H))
        tissue = ~lumen & ~rim
        if ring_pos:
            cy_r = np.concatenate([r[0] for r in ring_pos])
            cx_r = np.concatenate([r[1] for r in ring_pos])
            iy = np.clip(cy_r.astype(int), 0, size - 1)
            ix = np.clip(cx_r.astype(int), 0, size - 1)
            keep = ~lumen[iy, ix]
            par = list(_nucleus_params(rng, len(cy_r), a, s))
            if a["shape"] != "pleomorphic":  # palisading: long axis across the rim
                par[2] = np.concatenate([r[2] for r in ring_pos]) + rng.normal(0, 0.15 + irr,
                                                                               len(cy_r))
            nuclei.append((cy_r[keep], cx_r[keep], [np.asarray(x)[keep] for x in par]))
        # stroma between glands keeps a few cells
        n_s = _count(a, size, s, float(tissue.mean())) // 4
        cy_s, cx_s = _sample_where(rng, tissue, n_s)
        nuclei.append((cy_s, cx_s, _nucleus_params(rng, n_s, a, s)))
        tissue = np.zeros_like(tissue)  # nuclei placed already

    elif arch in ("fibrous", "muscle"):
        th = rng.uniform(0, np.pi)
        u = xx * np.cos(th) + yy * np.sin(th)  # across the fibres
        w = -xx * np.sin(th) + yy * np.cos(th)  # along the fibres
        if arch == "fibrous":
            # thin wavy collagen fibres separated by pale gaps
            freq = 2 * np.pi / (5.0 * s) * dom.fiber_freq * rng.uniform(0.85, 1.15)
            wav = rng.uniform(1.5, 3.0) * s
            phase = freq * (u + wav * np.sin(w * 2 * np.pi / (rng.uniform(18, 28) * s)
                                               + rng.uniform(0, 6.3)))
            fib = (0.5 + 0.5 * np.sin(phase)) ** 3
            E = E * 0.35 + 0.62 * fib * (1 + 0.3 * tex)
            elong, orient = 1.8, th + np.pi / 2
        else:
            # broad, dense, straight bundles with thin clefts; fine parallel fibrils
            period = rng.uniform(18, 26) * s / dom.fiber_freq
            cleft = np.abs(np.sin(np.pi * (u + 2 * s * np.sin(w / (9 * s))) / period)) < 0.12
            fibril = 0.06 * np.sin(2 * np.pi * u / (2.2 * s))
            E = np.where(cleft, E * 0.3, 0.78 + 0.12 * tex + fibril)
            tissue = ~cleft
            elong, orient = 2.2, th + np.pi / 2
        n = _count(a, size, s, float(tissue.mean()))
        cy_n, cx_n = _sample_where(rng, tissue, n)
        oval = a["shape"] == "oval"
        par = list(_nucleus_params(rng, n, a, s, elongate=elong if oval else 1.0,
                                   orient=orient if oval else None))
        if arch == "muscle" and oval:
            par[5] = par[5] * 0.85  # cigar nuclei are a bit paler
        nuclei.append((cy_n, cx_n, par))
        tissue = np.zeros_like(tissue)

    elif arch == "fat":
        k = max(4, int(round(rng.uniform(5, 9) * s * s * (1 - 0.3 * irr))))
        py, px = rng.uniform(-0.1, 1.1, (2, k)) * size
        d = np.sqrt((yy[None] - py[:, None, None]) ** 2 + (xx[None] - px[:, None, None]) ** 2)
        d2 = np.partition(d, 1, axis=0)[:2]
        membrane = (d2[1] - d2[0]) < 1.6 * s
        E = np.where(membrane, 0.45 + 0.1 * tex, 0.02)
        H = np.where(membrane, H, 0.0)
        tissue = membrane
        n = max(0, int(round(a["density"] * 60 * s * s)))
        cy_n, cx_n = _sample_where(rng, membrane, n)
        par = list(_nucleus_params(rng, n, a, s, elongate=1.8 if a["shape"] == "oval" else 1.0))
        nuclei.append((cy_n, cx_n, par))
        tissue = np.zeros_like(tissue)

    elif arch == "mucin":
        m = _noise(rng, size, 3) + 0.5 * _noise(rng, size, 7)
        pool = m > rng.uniform(-0.9, -0.5)
        streak_th = rng.uniform(0, np.pi)
        wisp = 0.5 + 0.5 * np.sin((xx * np.cos(streak_th) + yy * np.sin(streak_th)) / (2.2 * s)
                                  + 4 * _noise(rng, size, 5))
        H = np.where(pool, 0.2 + 0.16 * wisp, H)
        E = np.where(pool, 0.07 + 0.06 * wisp, E)
        tissue = ~pool

    # nuclei in the open tissue (architecture none / mucin)
    if tissue.any():
        frac = float(tissue.mean())
        n = _count(a, size, s, frac)
        if arch == "mucin":  # floating cells and strips in mucin
            n = _count(a, size, s, 1.0) // 2
            cy_n, cx_n = rng.random(n) * size, rng.random(n) * size
        else:
            cy_n, cx_n = _sample_where(rng, tissue, n)
        nuclei.append((cy_n, cx_n, _nucleus_params(rng, len(cy_n), a, s)))

    # debris: nuclear dust + eosinophilic clumps + granular pale patches
    if a["debris"] > 0.02:
        dn = int(round(a["debris"] * 90 * s * s))
        cy_d, cx_d = rng.random(dn) * size, rng.random(dn) * size
        nuclei.append((cy_d, cx_d, (rng.uniform(0.45, 1.1, dn) * s, rng.uniform(1, 1.8, dn),
                                    rng.uniform(0, np.pi, dn), rng.uniform(0.1, 0.35, dn),
                                    rng.uniform(0, 6.3, dn), rng.uniform(1.0, 1.8, dn),
                                    np.zeros(dn))))
        clump = np.clip(_noise(rng, size, 9) * 2.2 - 0.4, 0, 1)
        E = E * (1 - 0.55 * a["debris"]) + a["debris"] * (0.65 * clump + 0.12)
        H = H + a["debris"] * 0.22 * np.clip(_noise(rng, size, 12), 0, 1)

    if nuclei:
        cy = np.concatenate([g[0] for g in nuclei])
        cx = np.concatenate([g[1] for g in nuclei])
        params = [np.concatenate([np.asarray(g[2][j], np.float64) for g in nuclei])
                  for j in range(7)]
        Hn = _stamp(size, cy, cx, *params)
        if a["chromatin"] == "dark":  # coarse chromatin
            Hn = Hn * (0.8 + 0.4 * rng.random((size, size), dtype=np.float32))
        Hn = np.minimum(Hn, 2.0)
        E = E * (1 - 0.45 * np.minimum(Hn, 1.0))
        H = H + Hn

    # nuisance variation of every tile: stain strength, focus, illumination
    h_j, e_j, light = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), rng.uniform(0.96, 1.02)
    H = _blur(H) * (dom.h_scale * h_j)
    E = np.maximum(E, 0) * (dom.e_scale * e_j)
    if rng.random() < 0.25:  # slightly out of focus
        H, E = _blur(H), _blur(E)
    hv = np.asarray(dom.h_vec, np.float32)
    ev = np.asarray(dom.e_vec, np.float32)
    od = H[..., None] * hv + E[..., None] * ev
    rgb = np.asarray(dom.glass, np.float32) * light * np.exp(-od)
    rgb += rng.standard_normal((size, size, 1), dtype=np.float32) * dom.grain
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def render_tiles(attrs: Sequence[Mapping], seeds: Sequence[int], size: int = 64,
                 domains: Sequence[str | Domain | None] | str | Domain | None = None) -> np.ndarray:
    """Many tiles -> ``uint8`` array ``(N, size, size, 3)``; tile i depends only on its own
    attributes, seed and domain."""
    n = len(attrs)
    if len(seeds) != n:
        raise ValueError("attrs and seeds differ in length")
    if domains is None or isinstance(domains, (str, Domain)):
        domains = [domains] * n
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        out[i] = render_tile(attrs[i], seeds[i], size, domains[i])
    return out


def tile_seed(*parts) -> int:
    """A stable 63-bit seed from strings / ints (for data set items)."""
    import hashlib
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1
