"""Label sets for classification instructions: display names, synonyms, prompt phrasings.

PathInsight (Wu et al., Section 2.1, Table 1) turns PCam and CRC-VAL-HE-7K into classification
instructions. A label set says how each class code is written in the answer (``name``) and which
other phrasings an answer may use (``synonyms``); evaluation maps free-text answers back to codes
with these (exact, then synonym, then fuzzy: see :mod:`medadapt.instruct.scoring`).

The builder writes the label sets it used to ``labels.json`` beside the data, so evaluation never
needs the build config.
"""
from __future__ import annotations

from typing import Any

TISSUE_PROMPTS = [
    "What tissue type is shown in this image?",
    "Which tissue class does this H&E image patch show?",
    "Classify the tissue in this histopathology image.",
    "What kind of tissue is visible in this pathology image?",
    "Identify the tissue type in this H&E-stained patch.",
]

CAPTION_QUERIES = [
    "Describe this pathology image.",
    "What do you see in this histopathology image?",
    "Write a pathology description of this image.",
    "Provide a brief description of the findings in this image.",
    "Summarize the visual content of this histology slide.",
    "Give a concise diagnostic description of this image.",
    "What are the key histological features in this image?",
    "Describe the microscopic findings shown here.",
]

# CRC-VAL-HE-7K / NCT-CRC-HE-100K class codes (Kather et al. 2018).
CRC = {
    "name": "crc",
    "prompts": TISSUE_PROMPTS,
    "classes": {
        "ADI": {"name": "adipose tissue", "synonyms": ["adipose", "fat", "fat tissue", "adipocytes"]},
        "BACK": {"name": "background", "synonyms": ["empty background", "no tissue"]},
        "DEB": {"name": "debris", "synonyms": ["necrosis", "necrotic debris", "necrotic tissue"]},
        "LYM": {"name": "lymphocytes", "synonyms": ["lymphocyte", "lymphoid tissue",
                                                     "lymphocytic infiltrate", "immune cells"]},
        "MUC": {"name": "mucus", "synonyms": ["mucin", "mucinous tissue", "mucous"]},
        "MUS": {"name": "smooth muscle", "synonyms": ["muscle", "muscle tissue", "muscularis",
                                                       "smooth muscle tissue"]},
        "NORM": {"name": "normal colon mucosa", "synonyms": ["normal mucosa", "normal colonic mucosa",
                                                             "normal colon", "normal tissue"]},
        "STR": {"name": "cancer-associated stroma", "synonyms": ["stroma", "tumor stroma",
                                                                 "tumour stroma", "desmoplastic stroma"]},
        "TUM": {"name": "colorectal adenocarcinoma epithelium",
                "synonyms": ["tumor", "tumour", "adenocarcinoma", "tumor epithelium", "carcinoma",
                             "cancer epithelium"]},
    },
}

# PatchCamelyon: binary metastasis detection in lymph-node patches.
PCAM = {
    "name": "pcam",
    "prompts": [
        "Does this lymph node patch contain metastatic tumor tissue?",
        "Is there metastatic cancer in this histopathology patch?",
        "Classify this lymph node patch as tumor or normal.",
    ],
    "classes": {
        "0": {"name": "normal", "synonyms": ["no tumor", "no metastasis", "benign", "negative",
                                             "no", "normal tissue", "non-tumor"]},
        "1": {"name": "tumor", "synonyms": ["metastatic tumor", "metastasis", "metastatic", "positive",
                                            "yes", "tumour", "cancer", "malignant"]},
    },
}

LABEL_SETS: dict[str, dict[str, Any]] = {"crc": CRC, "pcam": PCAM}


def label_set(name: str | None, codes: list[str]) -> dict[str, Any]:
    """The label set ``name`` restricted to ``codes`` (classes found on disk), or a plain one.

    A plain label set (``name`` None) writes each folder / CSV label as its own display name.
    Codes that a named set does not know keep their code as the display name.
    """
    if name is None:
        base: dict[str, Any] = {"name": "plain", "prompts": TISSUE_PROMPTS, "classes": {}}
    else:
        from medadapt.errors import UserError
        if name not in LABEL_SETS:
            raise UserError(f"unknown label set {name!r}; valid: {', '.join(LABEL_SETS)} "
                            "(or leave it out to use the folder / CSV labels as answers)")
        base = LABEL_SETS[name]
    classes = {c: dict(base["classes"].get(c, {"name": c.replace("_", " "), "synonyms": []}))
               for c in codes}
    return {"name": base["name"], "prompts": list(base["prompts"]), "classes": classes}
