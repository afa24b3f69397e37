"""Classes of the synthetic world: attribute profiles, names and fine-grained descriptions.

A class is an attribute *profile*: each tile attribute is a fixed value, a ``(lo, hi)`` range
sampled uniformly, or a ``{choice: weight}`` mapping; sampling a profile gives the in-class
variation. Some pairs are deliberately close (smooth muscle vs cancer-associated stroma, normal
mucosa vs tumour epithelium, debris vs necrosis, mucus vs mucinous adenocarcinoma).

Tasks:

* :data:`CRC_CLASSES`: 9 classes mirroring NCT-CRC-HE (Kather et al. 2019).
* :data:`POOL_CLASSES`: 6 further tissue classes, the novel half of base-to-novel.
* :data:`MALIGNANCY_CLASSES`: benign vs malignant, each a mixture of sub-profiles, with
  attribute-level concepts (:data:`CONCEPTS`) for class-concept methods.

Every class has a coarse name and at least 10 descriptions written from its attributes in varied
wording; they play the role that LLM-written descriptions play in the papers and are shipped as
``medadapt/data/descriptions/synth-*.json`` (rebuilt with :func:`write_shipped_files`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from medadapt.synth.tiles import DOMAINS, check_attrs


@dataclass(frozen=True)
class ClassProfile:
    name: str
    code: str
    attrs: Mapping  # attribute -> value | (lo, hi) | {choice: weight}
    descriptions: tuple[str, ...]
    malignant: bool | None = None
    note: str = ""

    def sample(self, rng: np.random.Generator) -> dict:
        return sample_profile(self.attrs, rng)


def sample_profile(spec: Mapping, rng: np.random.Generator) -> dict:
    out = {}
    for k in sorted(spec):  # fixed order: the draw depends only on the rng state
        v = spec[k]
        if isinstance(v, tuple):
            out[k] = float(rng.uniform(v[0], v[1]))
        elif isinstance(v, Mapping):
            names = sorted(v)
            p = np.array([v[n] for n in names], float)
            out[k] = names[int(rng.choice(len(names), p=p / p.sum()))]
        else:
            out[k] = v
    return check_attrs(out)


# --------------------------------------------------------------------------------------------
# the 9 NCT-CRC-HE-like classes

ADIPOSE = ClassProfile(
    "adipose", "ADI",
    {"architecture": "fat", "density": (0.03, 0.12), "size": (0.1, 0.3), "shape": "oval",
     "chromatin": "dark", "irregular": (0.0, 0.4), "debris": 0.0, "background": "white"},
    (
        "Large empty fat vacuoles separated by thin pink membranes.",
        "Clear round and polygonal fat cells with very few small flattened nuclei.",
        "Mostly white empty spaces separated by thin eosinophilic membranes.",
        "Fat tissue with big clear vacuoles and rare small dark flattened nuclei on the membranes.",
        "A mesh of empty polygonal spaces with thin pink lines.",
        "Almost no nuclei, mostly large clear fat vacuoles.",
        "Adipose tissue: clear fat cells with thin membranes and scattered small oval nuclei.",
        "White vacuoles of fat with a thin network of pink membranes and almost no cells.",
        "Empty round fat cells, very low cellularity, no glands and no debris.",
        "Thin pink lines forming a mesh around large white vacuoles, with rare small dark nuclei.",
        "Big empty fat cells with sparse flattened nuclei at the edges of the vacuoles.",
    ), malignant=False)

BACKGROUND = ClassProfile(
    "background", "BACK",
    {"architecture": "none", "density": (0.0, 0.015), "size": (0.1, 0.4), "shape": "round",
     "chromatin": "dark", "debris": (0.0, 0.06), "background": {"white": 0.8, "pale": 0.2}},
    (
        "A bare white area of the glass slide with no tissue.",
        "Empty slide area with no nuclei and no stained tissue.",
        "Mostly white with no cells, no glands and no fibers.",
        "A blank white background with faint staining and no nuclei.",
        "No tissue on a white empty background.",
        "Bare white glass with no cells and almost no staining.",
        "An empty white field with no tissue and no nuclei.",
        "Faint pale staining on an empty white slide with no cells.",
        "Acellular white background, no tissue and no debris.",
        "Nothing but bare white glass, no nuclei and no pink stroma.",
    ))

DEBRIS = ClassProfile(
    "debris", "DEB",
    {"architecture": "none", "density": (0.15, 0.5), "size": (0.1, 0.4), "shape": "pleomorphic",
     "chromatin": "dark", "debris": (0.45, 1.0), "background": {"eosin": 0.6, "pale": 0.4}},
    (
        "Abundant necrotic fragments with nuclear dust and eosinophilic clumps.",
        "Dirty necrosis: small irregular dark nuclear fragments scattered among pink clumps.",
        "Karyorrhectic fragments and necrotic material and no glands.",
        "Scattered small irregular dark nuclei mixed with abundant nuclear dust.",
        "Necrotic debris with clumps of pink material and many tiny dark fragments.",
        "No architecture, cell fragments, nuclear dust and patchy eosinophilic clumps.",
        "Small pleomorphic hyperchromatic fragments in a background of necrotic material.",
        "Abundant debris of cell fragments with dark nuclear dust and pink clumps.",
        "Disorganised necrotic material with scattered small dark irregular nuclei.",
        "Patchy pink necrotic clumps and karyorrhectic nuclear dust, no glands or fibers.",
        "Abundant nuclear dust and small irregular dark fragments in pink necrotic material.",
    ))

LYMPHOCYTES = ClassProfile(
    "lymphocytes", "LYM",
    {"architecture": "none", "density": (0.65, 1.0), "size": (0.1, 0.35), "shape": "round",
     "chromatin": "dark", "debris": (0.0, 0.25), "background": {"pale": 0.6, "eosin": 0.4}},
    (
        "Sheets of densely packed small round dark nuclei.",
        "Crowded small round hyperchromatic nuclei with very little pink background.",
        "Numerous tiny round dark purple nuclei packed closely together.",
        "A dense population of small uniform round cells with dark chromatin.",
        "Densely packed small round nuclei with no glands or fibers.",
        "High cellularity of small round dark nuclei evenly packed in sheets.",
        "Small dark round nuclei crowded together with scant pale background.",
        "Many small round cells with dark chromatin and no architecture.",
        "Tightly packed tiny round hyperchromatic nuclei, no necrosis.",
        "Sheets of small uniform round dark cells filling the field.",
        "Crowded regular round small nuclei with coarse dark chromatin.",
    ), malignant=False)

MUCUS = ClassProfile(
    "mucus", "MUC",
    {"architecture": "mucin", "density": (0.0, 0.1), "size": (0.1, 0.35),
     "shape": {"oval": 0.5, "round": 0.5}, "chromatin": "pale", "debris": (0.0, 0.15),
     "background": "pale"},
    (
        "Pools of pale blue mucin with very few cells.",
        "Wispy grey blue mucin filling the field.",
        "Extracellular mucin lakes with rare small pale nuclei floating in the mucin.",
        "Pale bluish mucoid material with almost no nuclei.",
        "Streaky pale blue grey mucin pools on a pale background.",
        "Mucin pools with wispy texture and very sparse cells.",
        "Large lakes of pale blue mucin, no glands and almost no nuclei.",
        "Pale wispy mucoid material with rare floating small pale nuclei.",
        "A field of pale grey blue mucin with faint pink staining.",
        "Acellular mucin with wispy blue streaks and pale background.",
        "Mucin lakes with very few small vesicular nuclei.",
    ))

SMOOTH_MUSCLE = ClassProfile(
    "smooth muscle", "MUS",
    {"architecture": "muscle", "density": (0.15, 0.4), "size": (0.3, 0.6), "shape": "oval",
     "chromatin": {"pale": 0.7, "dark": 0.3}, "irregular": 0.0, "debris": 0.0,
     "background": "eosin"},
    (
        "Thick pink muscle bundles with parallel cigar shaped nuclei.",
        "Dense straight eosinophilic bundles with elongated pale nuclei.",
        "Parallel smooth muscle fibers with scattered oval nuclei with pale chromatin.",
        "Broad bundles of spindle cells with blunt elongated pale nuclei.",
        "Straight bright pink fascicles of muscle with sparse elongated nuclei.",
        "Bright pink dense bundles separated by thin clefts, nuclei oval and pale.",
        "Straight parallel fibers forming thick bundles, with scattered medium sized oval nuclei.",
        "Eosinophilic muscle bundles with moderately sparse cigar shaped vesicular nuclei.",
        "Dense pink fascicles with elongated nuclei aligned along the fibers.",
        "Thick straight bundles of pink cytoplasm with sparse pale spindle shaped nuclei.",
        "Smooth muscle: parallel eosinophilic bundles, oval pale nuclei, no glands.",
    ), malignant=False)

NORMAL_MUCOSA = ClassProfile(
    "normal mucosa", "NORM",
    {"architecture": "glands", "irregular": (0.0, 0.35), "density": (0.35, 0.65),
     "size": (0.2, 0.55), "shape": {"round": 0.5, "oval": 0.5},
     "chromatin": {"pale": 0.6, "dark": 0.4}, "debris": (0.0, 0.1),
     "background": {"eosin": 0.6, "pale": 0.4}},
    (
        "Regular round glands with clear lumens lined by a single row of small nuclei.",
        "Orderly evenly spaced crypts with small basal nuclei.",
        "Well formed tubular glands with open round lumens and uniform small oval nuclei.",
        "Regular glands lined by one layer of small pale nuclei around clear lumens.",
        "Evenly spaced crypts with small round nuclei in a single basal row.",
        "Orderly glandular structures with uniform small nuclei and pale chromatin.",
        "Round regular glands separated by pink stroma with scattered small nuclei.",
        "Well formed glands with clear lumens, small regular nuclei and no necrosis.",
        "Tubular crypts lined by a neat single row of small oval nuclei.",
        "Regular glands with basal small nuclei, moderate cellularity and a clean background.",
        "Orderly crypts with open lumens and small uniform vesicular nuclei.",
    ), malignant=False)

STROMA = ClassProfile(
    "cancer-associated stroma", "STR",
    {"architecture": "fibrous", "density": (0.15, 0.45), "size": (0.3, 0.6), "shape": "oval",
     "chromatin": {"dark": 0.6, "pale": 0.4}, "debris": (0.0, 0.15),
     "background": {"eosin": 0.7, "pale": 0.3}},
    (
        "Wavy fibrous streaks with scattered elongated dark nuclei.",
        "Thin wavy collagen fibers with pale gaps and sparse spindle shaped nuclei.",
        "Pink fibrous stroma with streaming fibers and oval nuclei.",
        "Loose wavy fibers separated by pale gaps, with scattered medium sized oval nuclei.",
        "Desmoplastic fibrous stroma with sparse elongated hyperchromatic nuclei.",
        "Streaming thin pink fibers with scattered spindle shaped nuclei, no glands.",
        "Wavy pink fibrous streaks with moderately sparse oval dark nuclei.",
        "Collagen fibers in wavy streaks with elongated nuclei between the fibers.",
        "Fibrous tissue of thin wavy fibers and pale gaps, with scattered oval nuclei.",
        "Sparse spindle shaped dark nuclei among wavy eosinophilic fibers.",
        "Pink streaky fibrous stroma, low to moderate cellularity, elongated nuclei.",
    ), malignant=False)

TUMOUR = ClassProfile(
    "tumour epithelium", "TUM",
    {"architecture": "glands", "irregular": (0.35, 1.0), "density": (0.5, 0.9),
     "size": (0.45, 0.95), "shape": {"pleomorphic": 0.6, "oval": 0.4},
     "chromatin": {"dark": 0.8, "pale": 0.2}, "debris": (0.0, 0.35), "background": "eosin"},
    (
        "Irregular crowded glands lined by large pleomorphic hyperchromatic nuclei.",
        "Distorted back to back glands with stratified enlarged dark nuclei.",
        "Complex irregular glandular structures with crowded large atypical nuclei.",
        "Large pleomorphic nuclei with coarse dark chromatin crowded around irregular lumens.",
        "Disorganised glands with enlarged variably shaped dark nuclei and some necrotic "
        "fragments.",
        "Crowded irregular glands with high cellularity and large dark nuclei.",
        "Cribriform irregular glands lined by stratified atypical hyperchromatic nuclei.",
        "Angulated distorted glands with densely packed enlarged pleomorphic nuclei.",
        "Irregular glandular structures with big dark irregular nuclei and dirty necrosis.",
        "Back to back irregular glands, large crowded nuclei, coarse dark chromatin.",
        "Densely packed large atypical nuclei forming irregular glands.",
    ), malignant=True)

CRC_CLASSES: list[ClassProfile] = [ADIPOSE, BACKGROUND, DEBRIS, LYMPHOCYTES, MUCUS, SMOOTH_MUSCLE,
                                   NORMAL_MUCOSA, STROMA, TUMOUR]

# --------------------------------------------------------------------------------------------
# the pool of further classes (novel classes for base-to-novel)

NECROSIS = ClassProfile(
    "necrosis", "NEC",
    {"architecture": "none", "density": (0.02, 0.12), "size": (0.2, 0.5), "shape": "pleomorphic",
     "chromatin": "pale", "debris": (0.7, 1.0), "background": "eosin"},
    (
        "Abundant necrotic material in a pink background with rare pale ghost nuclei.",
        "Eosinophilic necrotic clumps with nuclear dust and very few pale nuclei.",
        "Pink necrotic material, karyorrhectic fragments and almost no intact cells.",
        "Dirty necrosis on an eosinophilic background with sparse pale irregular nuclei.",
        "Abundant nuclear dust and pink clumps, very low cellularity, no glands.",
        "Patchy eosinophilic necrotic material with rare faint vesicular nuclei.",
        "Bright pink necrotic clumps and fragments with almost no nuclei.",
        "Necrotic material with nuclear dust, scattered pale pleomorphic ghost nuclei.",
        "Eosin rich necrosis with karyorrhectic fragments and few cells.",
        "Pink background with abundant necrotic fragments and rare pale nuclei.",
    ), malignant=None)

MUCINOUS = ClassProfile(
    "mucinous adenocarcinoma", "MAC",
    {"architecture": "mucin", "density": (0.35, 0.6), "size": (0.6, 0.9), "shape": "pleomorphic",
     "chromatin": "dark", "debris": (0.0, 0.2), "background": "pale"},
    (
        "Pools of pale blue mucin with floating clusters of large pleomorphic dark nuclei.",
        "Mucin lakes with crowded enlarged hyperchromatic atypical cells.",
        "Wispy grey blue mucin with many large irregular dark nuclei.",
        "Extracellular mucin pools with strips of large pleomorphic nuclei.",
        "Pale bluish mucoid material with numerous enlarged dark atypical nuclei.",
        "Mucin pools and clusters of big variably shaped hyperchromatic cells.",
        "Large lakes of mucin with a moderate number of large dark irregular nuclei.",
        "Pale blue mucin with floating large atypical cells with coarse dark chromatin.",
        "Mucin pools with strips of enlarged pleomorphic nuclei.",
        "Streaky pale mucin with moderately numerous large dark pleomorphic nuclei.",
    ), malignant=True)

INFLAMED_STROMA = ClassProfile(
    "inflamed stroma", "INF",
    {"architecture": "fibrous", "density": (0.6, 0.9), "size": (0.1, 0.3), "shape": "round",
     "chromatin": "dark", "debris": (0.0, 0.15), "background": {"eosin": 0.5, "pale": 0.5}},
    (
        "Wavy fibrous streaks crowded with small round dark nuclei.",
        "Pink fibrous stroma with numerous tiny round hyperchromatic cells among the fibers.",
        "Thin wavy collagen fibers with densely packed small round dark nuclei.",
        "Fibrous tissue with many small round dark cells between the fibers.",
        "Streaming pink fibers and crowded small uniform round nuclei.",
        "Dense small round dark nuclei scattered in wavy fibrous stroma.",
        "Collagen fibers with pale gaps and many small round cells between the fibers.",
        "Fibrous streaks with high cellularity of tiny round dark nuclei.",
        "Numerous small round hyperchromatic nuclei among wavy pink fibers.",
        "Wavy fibrous stroma with sheets of small dark round cells.",
    ), malignant=False)

LEIOMYOSARCOMA = ClassProfile(
    "leiomyosarcoma", "LMS",
    {"architecture": "muscle", "density": (0.45, 0.7), "size": (0.6, 0.9), "shape": "pleomorphic",
     "chromatin": "dark", "irregular": 0.0, "debris": (0.0, 0.2), "background": "eosin"},
    (
        "Thick pink muscle bundles with crowded large pleomorphic dark nuclei.",
        "Dense eosinophilic bundles with enlarged hyperchromatic atypical nuclei.",
        "Fascicles of muscle with numerous large irregular dark nuclei.",
        "Straight pink bundles with variably shaped enlarged nuclei and coarse dark chromatin.",
        "Parallel muscle fibers with densely packed large atypical nuclei.",
        "Pink bundles of spindle cells with big pleomorphic hyperchromatic nuclei.",
        "Eosinophilic fascicles with high cellularity and large dark irregular nuclei.",
        "Muscle bundles crowded with enlarged atypical dark nuclei.",
        "Thick bundles of pink fibers and large pleomorphic nuclei with dark chromatin.",
        "Dense pink fascicles with many big variably shaped hyperchromatic nuclei.",
    ), malignant=True)

SOLID_CARCINOMA = ClassProfile(
    "solid carcinoma", "SOL",
    {"architecture": "none", "density": (0.65, 0.9), "size": (0.65, 0.95), "shape": "pleomorphic",
     "chromatin": "dark", "debris": (0.0, 0.3), "background": "eosin"},
    (
        "Solid sheets of large pleomorphic hyperchromatic nuclei and no glands.",
        "Crowded enlarged atypical nuclei with coarse dark chromatin, no glands.",
        "Densely packed big irregular dark nuclei filling the field.",
        "Sheets of large variably shaped dark nuclei on a pink background.",
        "No glands or fibers, crowded large pleomorphic cells with dark chromatin.",
        "Enlarged hyperchromatic atypical nuclei in solid sheets with some necrotic fragments.",
        "High cellularity of large irregular dark nuclei in solid sheets.",
        "Numerous large pleomorphic nuclei packed together, no architecture.",
        "Crowded big atypical dark nuclei with pink cytoplasm between the nuclei.",
        "Sheets of enlarged pleomorphic nuclei with coarse dark chromatin and no lumens.",
    ), malignant=True)

LIPOSARCOMA = ClassProfile(
    "liposarcoma", "LPS",
    {"architecture": "fat", "density": (0.3, 0.6), "size": (0.55, 0.85), "shape": "pleomorphic",
     "chromatin": "dark", "irregular": (0.3, 0.8), "debris": 0.0, "background": "white"},
    (
        "Fat vacuoles with thin pink membranes and many large pleomorphic dark nuclei.",
        "Clear fat cells of variable size with enlarged hyperchromatic atypical nuclei.",
        "Empty vacuoles separated by thin membranes with large irregular dark nuclei.",
        "Fat tissue with numerous big variably shaped nuclei with dark chromatin.",
        "Large clear vacuoles and scattered enlarged atypical hyperchromatic cells.",
        "White fat vacuoles with moderately numerous large pleomorphic nuclei on the membranes.",
        "A mesh of thin pink membranes around fat vacuoles with big dark irregular nuclei.",
        "Fat cells with atypical enlarged nuclei and coarse dark chromatin.",
        "Clear fat vacuoles mixed with large pleomorphic dark nuclei.",
        "Polygonal empty fat spaces with many enlarged hyperchromatic nuclei.",
    ), malignant=True)

POOL_CLASSES: list[ClassProfile] = [NECROSIS, MUCINOUS, INFLAMED_STROMA, LEIOMYOSARCOMA,
                                    SOLID_CARCINOMA, LIPOSARCOMA]
ALL_CLASSES: list[ClassProfile] = CRC_CLASSES + POOL_CLASSES
BY_NAME: dict[str, ClassProfile] = {c.name: c for c in ALL_CLASSES}

# --------------------------------------------------------------------------------------------
# benign vs malignant, with attribute-level concepts


@dataclass(frozen=True)
class Concept:
    name: str
    classes: tuple[str, ...]
    description: str
    test: str  # a Python expression over the attribute dict ``a``: when the concept is visible

    def present(self, a: Mapping) -> bool:
        return bool(eval(self.test, {"__builtins__": {}}, {"a": a}))  # noqa: S307 (own constants)


CONCEPTS: list[Concept] = [
    Concept("small uniform nuclei", ("benign",),
            "small regular round or oval nuclei of similar size",
            "a['size'] < 0.5 and a['shape'] != 'pleomorphic'"),
    Concept("pale vesicular chromatin", ("benign",), "pale open chromatin with a darker rim",
            "a['chromatin'] == 'pale'"),
    Concept("regular glands", ("benign",),
            "well formed round glands lined by a single row of nuclei",
            "a['architecture'] == 'glands' and a['irregular'] < 0.35"),
    Concept("low cellularity", ("benign",), "sparse, well spaced nuclei",
            "a['density'] < 0.45"),
    Concept("orderly bundles", ("benign",), "parallel fibres or muscle bundles with aligned nuclei",
            "a['architecture'] in ('fibrous', 'muscle') and a['shape'] != 'pleomorphic'"),
    Concept("enlarged nuclei", ("malignant",), "large nuclei, much bigger than a lymphocyte",
            "a['size'] > 0.6"),
    Concept("pleomorphic nuclei", ("malignant",), "nuclei of variable size and irregular outline",
            "a['shape'] == 'pleomorphic'"),
    Concept("hyperchromatic nuclei", ("malignant",), "coarse dark chromatin",
            "a['chromatin'] == 'dark'"),
    Concept("crowded nuclei", ("malignant",), "densely packed, overlapping nuclei",
            "a['density'] > 0.6"),
    Concept("irregular glands", ("malignant",), "distorted, back to back, cribriform glands",
            "a['architecture'] == 'glands' and a['irregular'] > 0.5"),
    Concept("necrotic debris", ("malignant",), "nuclear dust and eosinophilic necrotic clumps",
            "a['debris'] > 0.4"),
]

# sub-profiles of the binary task (weights sum to 1 per class)
BENIGN_PARTS: dict[str, tuple[float, Mapping]] = {
    "glands": (0.45, NORMAL_MUCOSA.attrs),
    "muscle": (0.2, SMOOTH_MUSCLE.attrs),
    "stroma": (0.2, {"architecture": "fibrous", "density": (0.1, 0.35), "size": (0.2, 0.45),
                     "shape": "oval", "chromatin": "pale", "debris": 0.0,
                     "background": {"eosin": 0.6, "pale": 0.4}}),
    "lymphoid": (0.15, {"architecture": "none", "density": (0.3, 0.55), "size": (0.1, 0.3),
                        "shape": "round", "chromatin": {"pale": 0.6, "dark": 0.4}, "debris": 0.0,
                        "background": "pale"}),
}
MALIGNANT_PARTS: dict[str, tuple[float, Mapping]] = {
    "glands": (0.45, TUMOUR.attrs),
    "solid": (0.25, SOLID_CARCINOMA.attrs),
    "mucinous": (0.15, MUCINOUS.attrs),
    "sarcoma": (0.15, LEIOMYOSARCOMA.attrs),
}

BENIGN_DESCRIPTIONS = (
    "Regular glands lined by a single row of small uniform nuclei.",
    "Small round or oval nuclei with pale vesicular chromatin and low cellularity.",
    "Orderly tissue with well spaced small regular nuclei and no necrosis.",
    "Well formed glands with clear lumens and small basal nuclei.",
    "Parallel orderly bundles with aligned small oval pale nuclei.",
    "Sparse small uniform nuclei with open pale chromatin.",
    "Evenly spaced crypts with small regular nuclei and a clean background.",
    "Low cellularity, small nuclei of similar size and no nuclear atypia.",
    "Uniform small nuclei with pale chromatin in an orderly architecture.",
    "Orderly pink bundles or regular glands, nuclei small and pale, no debris.",
    "Benign tissue: regular architecture, small uniform pale nuclei.",
)
MALIGNANT_DESCRIPTIONS = (
    "Crowded large pleomorphic nuclei with coarse dark chromatin.",
    "Enlarged hyperchromatic atypical nuclei with high cellularity.",
    "Irregular back to back glands lined by stratified large dark nuclei.",
    "Solid sheets of big irregular dark nuclei with necrotic fragments.",
    "Densely packed enlarged nuclei of variable shape and dark chromatin.",
    "Large atypical nuclei crowded together, dirty necrosis.",
    "Distorted glands with enlarged pleomorphic hyperchromatic nuclei.",
    "Numerous big variably shaped nuclei with coarse dark chromatin.",
    "High cellularity of large irregular hyperchromatic cells.",
    "Atypical enlarged dark nuclei, crowded and pleomorphic, with some nuclear dust.",
    "Malignant tissue: crowded large pleomorphic dark nuclei and disordered architecture.",
)

MALIGNANCY_CLASSES = ["benign", "malignant"]
MALIGNANCY_PARTS = {"benign": BENIGN_PARTS, "malignant": MALIGNANT_PARTS}
MALIGNANCY_DESCRIPTIONS = {"benign": BENIGN_DESCRIPTIONS, "malignant": MALIGNANT_DESCRIPTIONS}

# organ-specific mixtures for the cross-organ task: each organ favours some sub-profiles
ORGAN_MIX: dict[str, dict[str, dict[str, float]]] = {
    "colon": {"benign": {"glands": 0.7, "muscle": 0.2, "stroma": 0.1},
              "malignant": {"glands": 0.7, "mucinous": 0.15, "solid": 0.15}},
    "breast": {"benign": {"glands": 0.4, "stroma": 0.5, "lymphoid": 0.1},
               "malignant": {"solid": 0.6, "glands": 0.4}},
    "stomach": {"benign": {"glands": 0.6, "muscle": 0.3, "lymphoid": 0.1},
                "malignant": {"mucinous": 0.4, "glands": 0.4, "solid": 0.2}},
    "lung": {"benign": {"stroma": 0.5, "lymphoid": 0.3, "glands": 0.2},
             "malignant": {"solid": 0.6, "sarcoma": 0.1, "glands": 0.3}},
}
assert set(ORGAN_MIX) <= set(DOMAINS)


def sample_binary(label: str, rng: np.random.Generator, organ: str | None = None) -> dict:
    """Attributes of one benign / malignant tile (optionally with an organ's mixture)."""
    parts = MALIGNANCY_PARTS[label]
    if organ is None:
        names = sorted(parts)
        w = np.array([parts[n][0] for n in names])
    else:
        mix = ORGAN_MIX[organ][label]
        names = sorted(mix)
        w = np.array([mix[n] for n in names])
    part = names[int(rng.choice(len(names), p=w / w.sum()))]
    return sample_profile(parts[part][1], rng)


def concepts_of(label: str, a: Mapping) -> tuple[str, ...]:
    """The concepts of ``label`` visible in a tile with attributes ``a`` (at least one)."""
    own = [c for c in CONCEPTS if label in c.classes]
    got = tuple(c.name for c in own if c.present(a))
    if not got:  # every tile shows at least one concept of its class; pick the closest
        fallback = {"benign": "small uniform nuclei", "malignant": "hyperchromatic nuclei"}
        got = (fallback[label],)
    return got


# --------------------------------------------------------------------------------------------
# shipped files (descriptions JSON, hierarchy YAML)

DESCRIPTION_META = {
    "source": "medadapt.synth.classes (hand-written from each class's attribute profile)",
    "note": "synthetic world: descriptions describe the generator's visual attributes; "
            "a test instrument, not a claim about real pathology",
}


def description_sets() -> dict[str, dict[str, list[str]]]:
    crc = {c.name: list(c.descriptions) for c in CRC_CLASSES}
    b2n = {c.name: list(c.descriptions) for c in ALL_CLASSES}
    mal = {k: list(v) for k, v in MALIGNANCY_DESCRIPTIONS.items()}
    return {"synth-crc.json": crc, "synth-crc-b2n.json": b2n, "synth-malignancy.json": mal}


def hierarchy_yaml() -> str:
    lines = ["# Class-concept hierarchy of the synthetic benign / malignant task.",
             "# Generated by medadapt.synth.classes.write_shipped_files(); concepts are visual",
             "# attributes of the synthetic tiles (a test instrument, not real pathology).",
             "name: synth-malignancy",
             "description: benign vs malignant synthetic H&E tiles with attribute-level concepts",
             "domain: histopathology image",
             "template: \"a {domain} with {concept}, which indicates {class} tissue\"",
             "no_finding: \"No finding.\"",
             "classes:"]
    lines += [f"  - {c}" for c in MALIGNANCY_CLASSES]
    lines.append("concepts:")
    for c in CONCEPTS:
        lines.append(f"  - name: {c.name}")
        lines.append(f"    classes: [{', '.join(c.classes)}]")
        lines.append(f"    description: {c.description}")
    return "\n".join(lines) + "\n"


def package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def write_shipped_files(root: Path | None = None) -> list[Path]:
    """(Re)write the descriptions JSON files and the hierarchy YAML inside the package."""
    root = root or package_dir()
    out = []
    for fname, classes in description_sets().items():
        p = root / "data" / "descriptions" / fname
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"meta": DESCRIPTION_META | {"task": fname[:-5]},
                                 "classes": classes}, indent=1, ensure_ascii=False) + "\n")
        out.append(p)
    p = root / "synth" / "hierarchies" / "synth-malignancy.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(hierarchy_yaml())
    out.append(p)
    return out


if __name__ == "__main__":
    for p in write_shipped_files():
        print(p)
