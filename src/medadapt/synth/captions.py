"""The pretraining corpus: (attributes, caption) pairs.

Captions describe a tile's *attributes* in words, with many synonyms and varied sentence forms;
they rarely name a class. Half of the pairs come from the class profiles (all 15 tissue classes
and the benign / malignant mixtures), half from random attribute combinations, and only the
pairs drawn from a class may carry a class name (``name_prob``; about 5% of all captions by
default), and a third of those name a *neighbouring* tissue ("... next to tumour epithelium"), as
real captions often do.
So after pretraining a bare class name is a weak prompt, while a description that spells out the
attributes is a strong one, which is the situation the description-based methods of the papers
rely on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from medadapt.synth.classes import ALL_CLASSES, MALIGNANCY_CLASSES, ORGAN_MIX, sample_binary
from medadapt.synth.tiles import (ARCHITECTURES, BACKGROUNDS, CHROMATIN, DOMAINS, SHAPES,
                                  check_attrs)

# ---- phrase banks ------------------------------------------------------------------------------

DENSITY_WORDS = {  # used as determiners / adjectives before "nuclei"
    "none": ["almost no", "no", "very few", "rare"],
    "sparse": ["sparse", "scattered", "few", "widely spaced"],
    "moderate": ["moderately spaced", "a moderate number of", "evenly spaced", "some"],
    "dense": ["densely packed", "crowded", "numerous", "sheets of", "many", "tightly packed"],
}
DENSITY_PHRASES = {  # standalone
    "none": ["almost no nuclei", "acellular", "very low cellularity", "almost no cells",
             "no intact cells", "rare cells"],
    "sparse": ["low cellularity", "sparse nuclei", "scattered cells", "scant cells",
               "low to moderate cellularity"],
    "moderate": ["moderate cellularity", "a moderate number of nuclei",
                 "moderately numerous nuclei"],
    "dense": ["high cellularity", "densely packed nuclei", "crowded cells",
              "nuclei filling the field", "cells packed closely together",
              "a dense population of cells"],
}
SIZE_WORDS = {"small": ["small", "tiny"], "medium": ["medium sized", "intermediate"],
              "large": ["large", "enlarged", "big"]}
SHAPE_EXTRA = {"round": ["nuclei of similar size", "uniform nuclei"],
               "oval": ["nuclei aligned in one direction"],
               "pleomorphic": ["nuclei of variable size and shape", "nuclear atypia"]}
SHAPE_WORDS = {"round": ["round", "regular round", "uniform round"],
               "oval": ["oval", "elongated", "spindle shaped"],
               "pleomorphic": ["pleomorphic", "irregular", "atypical", "variably shaped"]}
SHAPE_ORIENTED = {"oval": ["cigar shaped", "elongated", "spindle shaped", "oval"]}
CHROMATIN_ADJ = {"dark": ["dark", "hyperchromatic", "dark purple"],
                 "pale": ["pale", "vesicular", "light purple"]}
CHROMATIN_SUFFIX = {"dark": ["with coarse dark chromatin", "with dark chromatin",
                             "that are hyperchromatic"],
                    "pale": ["with pale open chromatin", "with pale chromatin",
                             "that are pale and vesicular"]}
NUCLEUS_NOUN = ["nuclei", "nuclei", "cells"]
ARCH_PHRASES = {
    "none": ["no glands", "no particular architecture", "solid sheets", "no fibers or glands"],
    "glands_regular": ["regular glands", "round regular glands", "orderly crypts",
                       "evenly spaced crypts", "glands with clear round lumens",
                       "tubular glands lined by a single row of nuclei", "well formed glands",
                       "basal nuclei around open lumens", "neat crypts",
                       "a single layer of cells around clear lumens", "orderly architecture"],
    "glands_mid": ["glands", "glandular structures", "crypts", "glands with lumens"],
    "glands_irregular": ["irregular glands", "distorted angulated glands",
                         "crowded back to back glands", "complex irregular glandular structures",
                         "cribriform glands", "glands lined by stratified nuclei",
                         "disorganised glands", "disordered architecture",
                         "stratified nuclei forming irregular lumens"],
    "fibrous": ["wavy fibrous streaks", "pink fibrous stroma", "thin wavy collagen fibers",
                "loose fibrous tissue", "streaming fibers with pale gaps",
                "desmoplastic fibrous stroma", "fibrous streaks", "fibers separated by pale gaps",
                "streaky fibrous tissue"],
    "fat": ["large empty fat vacuoles", "clear round fat cells",
            "fat vacuoles with thin pink membranes", "empty polygonal spaces", "fat cells",
            "clear vacuoles", "a network of thin pink membranes around white vacuoles",
            "a mesh of thin pink lines", "flattened nuclei at the edges of fat vacuoles"],
    "mucin": ["pools of pale blue mucin", "wispy grey blue mucin", "extracellular mucin lakes",
              "pale bluish mucoid material", "mucin pools", "cells floating in mucin",
              "streaky pale mucin with wispy texture", "clusters and strips of cells in mucin"],
    "muscle": ["thick pink muscle bundles", "parallel smooth muscle fibers",
               "dense straight eosinophilic bundles", "fascicles of muscle",
               "straight pink bundles with thin clefts", "muscle bundles", "broad pink bundles",
               "nuclei aligned along the fibers", "blunt elongated nuclei in pink fascicles"],
}
DEBRIS_PHRASES = {
    "none": ["no necrosis", "clean background", "no debris"],
    "some": ["some necrotic fragments", "a little nuclear dust", "scattered cell fragments"],
    "abundant": ["abundant necrotic fragments", "nuclear dust and eosinophilic clumps",
                 "dirty necrosis", "karyorrhectic fragments", "necrotic material",
                 "abundant debris", "patchy pink clumps and cell fragments",
                 "pale ghost nuclei and nuclear dust"],
}
BACKGROUND_PHRASES = {
    "eosin": ["pink eosinophilic background", "eosin rich pink stroma", "bright pink background",
              "pink background", "pink cytoplasm"],
    "pale": ["pale background", "lightly stained pale pink background", "faint staining",
             "pale staining"],
    "white": ["white empty background", "bare white glass", "empty white slide area",
              "white background", "no tissue", "blank white slide", "nothing but white glass"],
}
GLUE = ["in", "on", "among", "between", "separated by", "mixed with", "and", "with", "forming",
        "in a background of", "together with"]
PREFIXES = ["", "", "", "a histopathology image of", "an h&e image of", "an h&e image showing",
            "h&e stained tissue with", "microscopic view of", "a pathology slide with",
            "tissue showing", "this slide shows"]
# a class name never comes alone: it is always embedded in an attribute description
NAME_FORMS = ["{n}: {p}.", "{n} with {p}.", "an h&e image of {n}, {p}.",
              "{p}, consistent with {n}.", "{p}; {n}.", "a pathology slide of {n} showing {p}.",
              "{p} in {n}."]
# a name can also be mentioned for tissue *next to* the pictured one (weak, contextual labels,
# as in real captions): the caption still describes what is in the image
CONTEXT_FORMS = ["{p} next to {n}.", "{p}, adjacent to {n}.", "{p} near {n}.",
                 "{p} at the edge of {n}.", "{p} surrounding {n}."]
NEIGHBOURS = {
    "adipose": ["smooth muscle", "cancer-associated stroma", "lymphocytes"],
    "background": ["adipose", "mucus", "debris"],
    "debris": ["tumour epithelium", "necrosis", "mucus"],
    "lymphocytes": ["tumour epithelium", "normal mucosa", "cancer-associated stroma"],
    "mucus": ["normal mucosa", "tumour epithelium", "mucinous adenocarcinoma"],
    "smooth muscle": ["normal mucosa", "adipose", "cancer-associated stroma"],
    "normal mucosa": ["lymphocytes", "smooth muscle", "tumour epithelium"],
    "cancer-associated stroma": ["tumour epithelium", "smooth muscle", "inflamed stroma"],
    "tumour epithelium": ["cancer-associated stroma", "debris", "normal mucosa", "lymphocytes"],
    "necrosis": ["solid carcinoma", "tumour epithelium", "debris"],
    "mucinous adenocarcinoma": ["mucus", "tumour epithelium", "cancer-associated stroma"],
    "inflamed stroma": ["lymphocytes", "cancer-associated stroma", "tumour epithelium"],
    "leiomyosarcoma": ["smooth muscle", "necrosis", "adipose"],
    "solid carcinoma": ["necrosis", "cancer-associated stroma", "lymphocytes"],
    "liposarcoma": ["adipose", "smooth muscle", "necrosis"],
}
ORGAN_FORMS = ["{o} tissue", "from the {o}", "{o}"]
MALIGNANCY_WORDS = {"benign": ["benign", "benign tissue", "no malignancy"],
                    "malignant": ["malignant", "malignant tumour", "cancer"]}


def density_bin(d: float) -> str:
    return "none" if d < 0.08 else "sparse" if d < 0.3 else "moderate" if d < 0.6 else "dense"


def size_bin(s: float) -> str:
    return "small" if s < 0.35 else "medium" if s < 0.6 else "large"


def debris_bin(d: float) -> str:
    return "none" if d < 0.15 else "some" if d < 0.5 else "abundant"


def arch_key(a: Mapping) -> str:
    if a["architecture"] != "glands":
        return a["architecture"]
    irr = a["irregular"]
    return "glands_regular" if irr < 0.3 else "glands_irregular" if irr > 0.5 else "glands_mid"


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def nuclear_phrase(a: Mapping, rng: np.random.Generator) -> str | None:
    """A noun phrase about the nuclei using a random subset of density/size/shape/chromatin."""
    dbin = density_bin(a["density"])
    if dbin == "none":
        return _pick(rng, DENSITY_PHRASES["none"]) if rng.random() < 0.7 else None
    use = rng.random(4) < np.array([0.65, 0.6, 0.6, 0.6])
    if not use.any():
        use[int(rng.integers(4))] = True
    words = []
    if use[0]:
        words.append(_pick(rng, DENSITY_WORDS[dbin]))
    if use[1]:
        words.append(_pick(rng, SIZE_WORDS[size_bin(a["size"])]))
    if use[2]:
        bank = SHAPE_ORIENTED.get(a["shape"]) if a["architecture"] in ("muscle", "fibrous") \
            else None
        words.append(_pick(rng, bank or SHAPE_WORDS[a["shape"]]))
    suffix = ""
    if use[3]:
        if rng.random() < 0.5:
            words.append(_pick(rng, CHROMATIN_ADJ[a["chromatin"]]))
        else:
            suffix = " " + _pick(rng, CHROMATIN_SUFFIX[a["chromatin"]])
    return " ".join(words + [_pick(rng, NUCLEUS_NOUN)]) + suffix


def attribute_phrases(a: Mapping, rng: np.random.Generator) -> list[str]:
    """Phrases for a random subset of the tile's attributes (2..5 phrases, shuffled)."""
    out = []
    arch = a["architecture"]
    if arch != "none" and rng.random() < 0.85:
        out.append(_pick(rng, ARCH_PHRASES[arch_key(a)]))
    elif arch == "none" and rng.random() < 0.15:
        out.append(_pick(rng, ARCH_PHRASES["none"]))
    nuc = nuclear_phrase(a, rng)
    if nuc and rng.random() < 0.9:
        out.append(nuc)
        if density_bin(a["density"]) != "none" and rng.random() < 0.12:
            out.append(_pick(rng, SHAPE_EXTRA[a["shape"]]))
    elif rng.random() < 0.3:
        out.append(_pick(rng, DENSITY_PHRASES[density_bin(a["density"])]))
    dbin = debris_bin(a["debris"])
    if dbin != "none" and rng.random() < 0.7 or dbin == "none" and rng.random() < 0.08:
        out.append(_pick(rng, DEBRIS_PHRASES[dbin]))
    if rng.random() < 0.4 or not out:
        out.append(_pick(rng, BACKGROUND_PHRASES[a["background"]]))
    if len(out) < 2:
        out.append(_pick(rng, BACKGROUND_PHRASES[a["background"]]) if rng.random() < 0.5
                   else _pick(rng, DENSITY_PHRASES[density_bin(a["density"])]))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def join_phrases(parts: list[str], rng: np.random.Generator) -> str:
    if len(parts) == 1:
        return parts[0]
    style = rng.integers(5)
    if style == 3:  # free glue words between phrases
        out = parts[0]
        for p in parts[1:]:
            out += " " + _pick(rng, GLUE) + " " + p
        return out
    if style == 4:
        return "mostly " + parts[0] + ", " + ", ".join(parts[1:])
    if style == 0:
        return ", ".join(parts)
    if style == 1:
        return ", ".join(parts[:-1]) + " and " + parts[-1]
    return parts[0] + " with " + (" and ".join(parts[1:]) if len(parts) < 4 else
                                  ", ".join(parts[1:-1]) + " and " + parts[-1])


def caption(a: Mapping, rng: np.random.Generator, name: str | None = None,
            organ: str | None = None, malignancy: str | None = None, organ_prob: float = 0.08,
            malignancy_prob: float = 0.06, context: str | None = None) -> str:
    """One caption for a tile with attributes ``a``; ``name`` (the pictured class) or
    ``context`` (a class next to the pictured tissue) are used as is."""
    body = join_phrases(attribute_phrases(a, rng), rng)
    extra = []
    if organ is not None and rng.random() < organ_prob:
        extra.append(_pick(rng, ORGAN_FORMS).format(o=organ))
    if malignancy is not None and rng.random() < malignancy_prob:
        extra.append(_pick(rng, MALIGNANCY_WORDS[malignancy]))
    if extra:
        body = body + ", " + ", ".join(extra)
    if name is not None:
        return _pick(rng, NAME_FORMS).format(n=name, p=body)
    if context is not None:
        return _pick(rng, CONTEXT_FORMS).format(n=context, p=body)
    prefix = _pick(rng, PREFIXES)
    text = f"{prefix} {body}" if prefix else body
    return text + "."


# ---- the corpus ----------------------------------------------------------------------------------

@dataclass
class CorpusConfig:
    class_frac: float = 0.35  # pairs drawn from a class profile (else random attributes)
    name_prob: float = 0.15  # P(a class name in the caption | drawn from a class)
    context_prob: float = 0.35  # P(the name is a neighbouring tissue's | a name is mentioned)
    binary_frac: float = 0.15  # of the class-drawn pairs: from the benign/malignant mixtures
    domain_frac: float = 0.4  # tiles rendered in a non-colon domain
    organ_prob: float = 0.08
    malignancy_prob: float = 0.06


def random_attrs(rng: np.random.Generator) -> dict:
    arch_w = np.array([0.25, 0.2, 0.15, 0.1, 0.15, 0.15])
    return check_attrs({
        "density": float(rng.random()), "size": float(rng.random()),
        "shape": SHAPES[int(rng.integers(len(SHAPES)))],
        "chromatin": CHROMATIN[int(rng.integers(len(CHROMATIN)))],
        "architecture": ARCHITECTURES[int(rng.choice(len(ARCHITECTURES), p=arch_w / arch_w.sum()))],
        "irregular": float(rng.random()),
        "debris": 0.0 if rng.random() < 0.6 else float(rng.random()),
        "background": BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
    })


def sample_pair(rng: np.random.Generator, cfg: CorpusConfig | None = None
                ) -> tuple[dict, str, str]:
    """(attributes, domain, caption) of one pretraining pair."""
    cfg = cfg or CorpusConfig()
    others = [d for d in DOMAINS if d != "colon"]
    domain = others[int(rng.integers(len(others)))] if rng.random() < cfg.domain_frac else "colon"
    name = malignancy = context = None
    if rng.random() < cfg.class_frac:
        if rng.random() < cfg.binary_frac:
            label = MALIGNANCY_CLASSES[int(rng.integers(2))]
            organ = domain if domain in ORGAN_MIX else None
            a = sample_binary(label, rng, organ)
            malignancy = label
            if rng.random() < cfg.name_prob:
                name = label + " tissue" if rng.random() < 0.5 else label
        else:
            c = ALL_CLASSES[int(rng.integers(len(ALL_CLASSES)))]
            a = c.sample(rng)
            if c.malignant is not None:
                malignancy = "malignant" if c.malignant else "benign"
            if rng.random() < cfg.name_prob:
                if rng.random() < cfg.context_prob:
                    context = _pick(rng, NEIGHBOURS[c.name])
                else:
                    name = c.name
    else:
        a = random_attrs(rng)
    text = caption(a, rng, name=name, organ=domain, malignancy=malignancy,
                   organ_prob=cfg.organ_prob, malignancy_prob=cfg.malignancy_prob,
                   context=context)
    return a, domain, text


def caption_vocabulary() -> set[str]:
    """Every word a caption can contain (phrase banks, glue, prefixes, names, organs)."""
    import re
    texts = list(GLUE) + PREFIXES + NAME_FORMS + CONTEXT_FORMS + ORGAN_FORMS + list(DOMAINS)
    for bank in (SHAPE_EXTRA, DENSITY_WORDS, DENSITY_PHRASES, SIZE_WORDS, SHAPE_WORDS,
                 SHAPE_ORIENTED, CHROMATIN_ADJ, CHROMATIN_SUFFIX, ARCH_PHRASES, DEBRIS_PHRASES,
                 BACKGROUND_PHRASES, MALIGNANCY_WORDS):
        for v in bank.values():
            texts += v
    texts += [c.name for c in ALL_CLASSES] + MALIGNANCY_CLASSES + ["tissue", "mostly"]
    words = set()
    for t in texts:
        words.update(re.findall(r"[a-z0-9]+", t.lower().replace("{n}", "").replace("{p}", "")
                                .replace("{o}", "")))
    return words


def corpus_words() -> list[str]:
    """Words for the tokenizer's vocabulary: caption words, prompt templates, descriptions."""
    import re
    from medadapt.data.texts import TEMPLATES
    from medadapt.synth.classes import description_sets
    words = caption_vocabulary()
    texts = [t for ts in TEMPLATES.values() for t in ts]
    for classes in description_sets().values():
        for sents in classes.values():
            texts += sents
    for t in texts:
        words.update(re.findall(r"[a-z0-9]+", t.lower().replace("{}", "")))
    return sorted(words)
