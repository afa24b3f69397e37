"""Optional CLIP-based cleaning filters, run with any medadapt backbone.

PathInsight (Wu et al., Section 2.1) used BiomedCLIP twice: to keep the OpenPath image-caption
pairs with the highest image-text similarity, and to keep only H&E images from PathVQA. Both are
here, with any backbone spec :func:`medadapt.backbones.load_backbone` accepts (``biomedclip``,
``plip``, ``hf:PATH``, ...):

* :func:`top_n_by_similarity` -- keep the ``top_n`` items of the chosen sources whose first image
  is most similar to the answer text (the caption).
* :func:`keep_he` -- zero-shot: keep items whose first image the backbone assigns to the H&E
  prompt rather than to any of the other prompts.
"""
from __future__ import annotations

from typing import Any

import torch

from medadapt.instruct.records import Record

HE_PROMPTS = [
    "an H&E stained histopathology image",
    "an immunohistochemistry stained histopathology image",
    "a radiology image such as CT, MRI or X-ray",
    "a photograph of a person or an object",
    "a chart, diagram or text",
]


def _image_features(backbone, paths: list[str], batch_size: int = 64) -> torch.Tensor:
    from PIL import Image
    from tqdm import tqdm

    feats = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(paths), batch_size), desc="clip filter: images", unit="batch",
                      leave=False, disable=None):
            ims = []
            for p in paths[i:i + batch_size]:
                with Image.open(p) as im:
                    ims.append(backbone.preprocess(im.convert("RGB")))
            feats.append(backbone.encode_image(torch.stack(ims)).float().cpu())
    return torch.cat(feats) if feats else torch.empty(0)


def top_n_by_similarity(records: list[Record], backbone, top_n: int) -> tuple[list[Record], int]:
    """Keep the ``top_n`` records by cosine(image, answer text); returns (kept, n_dropped)."""
    with_img = [r for r in records if r.images]
    if len(with_img) <= top_n:
        return records, 0
    img = _image_features(backbone, [r.images[0] for r in with_img])
    txt = backbone.encode_texts([r.answer for r in with_img]).cpu()
    sim = (img * txt).sum(-1)
    keep_idx = set(torch.topk(sim, top_n).indices.tolist())
    keep_ids = {id(r) for i, r in enumerate(with_img) if i in keep_idx}
    kept = [r for r in records if not r.images or id(r) in keep_ids]
    return kept, len(records) - len(kept)


def keep_he(records: list[Record], backbone, prompts: list[str] | None = None
            ) -> tuple[list[Record], int]:
    """Keep records whose first image the zero-shot classifier calls H&E (prompt 0)."""
    prompts = prompts or HE_PROMPTS
    with_img = [r for r in records if r.images]
    if not with_img:
        return records, 0
    img = _image_features(backbone, [r.images[0] for r in with_img])
    txt = backbone.encode_texts(prompts).cpu()
    is_he = (img @ txt.T).argmax(-1) == 0
    drop = {id(r) for r, ok in zip(with_img, is_he.tolist()) if not ok}
    kept = [r for r in records if id(r) not in drop]
    return kept, len(records) - len(kept)


def apply_clip_filters(records: list[Record], opts: dict[str, Any]) -> tuple[list[Record], dict[str, int]]:
    """Run the filters ``opts`` asks for on the records of ``opts['sources']`` (all if empty).

    ``opts``: ``backbone`` (spec), ``sources`` (list of source names), ``top_n`` (int or null),
    ``he_only`` (bool), ``he_prompts`` (list, H&E first), ``device``.
    """
    if not opts or not opts.get("backbone") or not (opts.get("top_n") or opts.get("he_only")):
        return records, {}
    from medadapt.backbones import load_backbone

    bb = load_backbone(str(opts["backbone"]), device=opts.get("device", "cpu"))
    bb.eval()
    sources = set(opts.get("sources") or [])
    chosen = [r for r in records if not sources or r.source in sources]
    rest = [r for r in records if sources and r.source not in sources]
    dropped: dict[str, int] = {}
    if opts.get("he_only"):
        chosen, n = keep_he(chosen, bb, opts.get("he_prompts"))
        dropped["clip_not_he"] = n
    if opts.get("top_n"):
        chosen, n = top_n_by_similarity(chosen, bb, int(opts["top_n"]))
        dropped["clip_low_similarity"] = n
    keep = {id(r) for r in chosen + rest}
    return [r for r in records if id(r) in keep], dropped
