"""The method interface. One file per method under ``medadapt/methods/``; each registers itself
with ``@register_method("name")``.

A method is an ``nn.Module`` holding the (frozen) backbone and its own learnable modules. The engine
hands it batches (:class:`Batch`) and runs one training loop for all trainable methods; methods
that need no gradient loop (zero-shot, linear probe, Tip-Adapter) override :meth:`Method.fit`.

Contract:
* ``forward(batch) -> logits [B, C]`` over the method's current classes (``self.texts``).
* ``loss(batch) -> (loss, parts)``: the training objective; default cross-entropy of ``forward``.
* ``set_classes(texts)``: switch to another class list (base-to-novel evaluation); methods whose
  parameters are class-specific set ``supports_novel = False``.
* Only parameters with ``requires_grad`` are learned; ``learned_state_dict`` returns them plus any
  buffers named in ``learned_buffers`` and is what ``params.safetensors`` holds.
* ``needs_images = False`` means the image encoder is not in the trained graph: batches carry
  cached image features (``batch.features``, raw, not normalised); ``True`` means batches carry
  pixels (``batch.images``) and the method encodes them itself (deep visual prompts, LoRA).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from medadapt.backbones.base import Backbone
from medadapt.data.texts import ClassTexts
from medadapt.registry import Registry


@dataclass
class Batch:
    labels: torch.Tensor  # [B] class index in the method's class list
    features: torch.Tensor | None = None  # [B, D] raw image features (frozen image encoder)
    images: torch.Tensor | None = None  # [B, 3, H, W] pixels (when needs_images)
    index: torch.Tensor | None = None  # [B] data set record index
    concepts: list[tuple[str, ...]] | None = None  # concept labels per item (SCALE)
    extra: dict = field(default_factory=dict)


class Method(nn.Module):
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs_images: ClassVar[bool] = False
    trainable: ClassVar[bool] = True
    needs_descriptions: ClassVar[bool] = False
    supports_novel: ClassVar[bool] = True
    uses_shots: ClassVar[bool] = True  # False: never reads the training images (zero-shot)
    defaults: ClassVar[dict] = {}  # method hyper-parameters (config key ``method``)
    train_defaults: ClassVar[dict] = {}  # engine settings this method's paper uses (``train``)
    data_defaults: ClassVar[dict] = {}  # data settings (``data``), e.g. ``augment_views``
    # Shot-dependent settings, as flat "section.key" overrides keyed by the smallest shot count
    # they apply to: {1: {"train.epochs": 50}, 2: {...}, 8: {...}}; the largest key <= shots wins
    # (all data / fractions: the largest key).
    by_shots: ClassVar[dict[int, dict[str, Any]]] = {}
    # Protocol-dependent settings ("base-to-novel", "cross-domain"), applied after ``by_shots``.
    by_protocol: ClassVar[dict[str, dict[str, Any]]] = {}
    # Where each default comes from: "method.<key>" / "train.<key>" / "data.<key>" -> source
    # (paper section or released config file + repository); "deviations" lists deliberate ones.
    sources: ClassVar[dict[str, str]] = {}
    learned_buffers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, backbone: Backbone, texts: ClassTexts, cfg: dict | None = None):
        super().__init__()
        self.backbone = backbone.freeze()
        self.texts = texts
        self.cfg = {**copy.deepcopy(self.defaults), **(cfg or {})}

    # --- to implement ---------------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    # --- resolved defaults ----------------------------------------------------------------------
    @classmethod
    def resolved_defaults(cls, shots: int | None = 16, protocol: str = "few-shot") -> dict:
        """{"method": ..., "train": ..., "data": ...}: the engine / data defaults under the class
        defaults under the shot- and protocol-dependent ones (user settings go on top)."""
        from medadapt.config import DEFAULTS, TRAIN_DEFAULTS
        out = {"method": copy.deepcopy(cls.defaults),
               "train": {**TRAIN_DEFAULTS, **copy.deepcopy(cls.train_defaults)},
               "data": {**DEFAULTS["data"], **copy.deepcopy(cls.data_defaults)}}
        overrides: dict[str, Any] = {}
        if cls.by_shots:
            keys = sorted(cls.by_shots)
            k = shots if shots and shots > 0 else keys[-1]
            fit = [s for s in keys if s <= k] or keys[:1]
            overrides.update(cls.by_shots[fit[-1]])
        overrides.update(cls.by_protocol.get(protocol, {}))
        for dotted, v in overrides.items():
            section, key = dotted.split(".", 1)
            out[section][key] = copy.deepcopy(v)
        return out

    # --- defaults -------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self(batch)
        ce = F.cross_entropy(logits, batch.labels)
        return ce, {"ce": float(ce.detach())}

    def fit(self, train, val, engine) -> dict:
        """Train on ``train`` (an ``engine.Split``); returns a dict of training info."""
        return engine.train(self, train, val)

    def set_classes(self, texts: ClassTexts) -> None:
        self.texts = texts

    def image_features(self, batch: Batch) -> torch.Tensor:
        """Normalised image features of a batch, from the cache or the frozen encoder."""
        if batch.features is not None:
            return F.normalize(batch.features.float(), dim=-1)
        return self.backbone.encode_image(batch.images).float()

    # --- learned state --------------------------------------------------------------------------
    def learned_state_dict(self) -> dict[str, torch.Tensor]:
        out = {n: p.detach().cpu().contiguous() for n, p in self.named_parameters()
               if p.requires_grad}
        for n in self.learned_buffers:
            b = getattr(self, n, None)
            if b is not None:
                out[n] = b.detach().cpu().contiguous()
        return out

    def load_learned_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        for k, v in sd.items():
            if k in own:
                with torch.no_grad():
                    own[k].copy_(v.to(own[k].device, own[k].dtype))
            elif k in self.learned_buffers:
                setattr(self, k, v.to(self.backbone.device))
            else:
                raise KeyError(f"unexpected learned parameter {k!r} for method {self.name}")

    def n_trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad) + sum(
            getattr(self, n).numel() for n in self.learned_buffers if getattr(self, n, None) is not None)

    def extra_predictions(self, batch: Batch) -> dict[str, Any]:
        """Optional per-item explanations for ``predict`` (SCALE: top concepts)."""
        return {}


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str):
    def deco(cls):
        cls.name = name
        METHODS.register(name, cls)
        return cls
    return deco


def text_features_for(backbone: Backbone, texts: ClassTexts, mode: str = "template") -> torch.Tensor:
    """Frozen class text features [C, D], normalised.

    ``template``: the first template; ``ensemble``: mean over templates (CLIP's prompt ensembling);
    ``descriptions``: mean over each class's descriptions.
    """
    feats = []
    for c in texts.classnames:
        if mode == "template":
            sents = [texts.templates[0].format(c)]
        elif mode == "ensemble":
            sents = [t.format(c) for t in texts.templates]
        elif mode == "descriptions":
            sents = texts.descriptions.get(c) or []
            if not sents:
                from medadapt.errors import UserError
                raise UserError(f"no descriptions for class {c!r}; pass --set texts.descriptions=FILE")
        else:
            raise ValueError(f"unknown text mode {mode!r}")
        f = backbone.encode_texts(sents)
        feats.append(F.normalize(f.mean(0), dim=-1))
    return torch.stack(feats)


@contextlib.contextmanager
def frozen_eval(backbone: Backbone):
    """Run the frozen backbone in eval mode inside the block (frozen targets such as description
    features are precomputed by an eval-mode model in the references, even where training runs
    the backbone in train mode)."""
    was = backbone.training
    backbone.eval()
    try:
        yield backbone
    finally:
        backbone.train(was)
