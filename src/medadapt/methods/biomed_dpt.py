"""Biomed-DPT: Dual Modality Prompt Tuning for Biomedical Vision-Language Models (arXiv 2505.05189).

Only the abstract is public text (``shared/papers/biomed-dpt-abstract.txt``); the rest follows what
is known of the method (``shared/papers/README.md``) and is marked as our choice where it is not.
The abstract has no numbered equations; the terms below are numbered here (D1-D5) and referred to
by these numbers in docs/biomed_dpt.md.

Text side ("dual prompt": template-driven clinical prompt + LLM-driven domain-adapted prompts):

* the learnable prompt's context is initialised from a clinical template per data set / modality
  (``"a histopathological photo of a {}."``, ``"a MR photo of a {} in the brain."``, ...;
  :data:`CLINICAL_TEMPLATES`): the template's words before ``{}`` are the CoOp context (5 tokens
  for the histopathology template, the "context length 5" of the method description); the words
  after ``{}`` stay fixed;
* the LLM-written descriptions of each class (the shipped JSON) are the teacher; their knowledge is
  distilled into the learned prompt (abstract: "extracts the clinical knowledge from the
  domain-adapted prompts through the knowledge distillation technique"):

  - (D1) ``L_CE = CE(s * cos(f_img, f_txt))``, ``s`` the model's logit scale;
  - (D2) ``L_L1 = mean_{c,d} |f_txt[c,d] - m[c,d]|``, ``m[c]`` the normalised mean of the
    normalised frozen features of class c's descriptions (weight ``l1_weight`` = 12.5, the
    derivative code's value);
  - (D3) ``L_KL = KL(softmax(z_teacher / T) || softmax(z / T)) * T^2 / (B*C)``, with the
    description-based zero-shot logits ``z_teacher = s * cos(f_img, m)`` (``teacher_image``) (weight
    ``kl_weight`` = 0.25); ``reduction: numel`` divides by ``B*C`` as the BiomedCoOp/PromptSRC
    code does, ``batchmean`` by ``B``;
  - (D4) ``L = L_CE + 12.5 L_L1 + 0.25 L_KL``.

Vision side: (D5) a deep visual soft prompt of ZERO vectors -- ``n`` tokens appended after the
patch tokens at layer 0 and replaced at every following layer (:class:`VisionDeepPrompts`) -- "to
leverage attention re-weighting". Default = the only public code of the authors' line (a
BiomedCoOp-based ``BiomedDPT_BiomedCLIP`` trainer, class ``CLIP_Inplanted``): ``prompt_embeddings
= torch.zeros(1, 4, 768)`` and ``deep_prompt_embeddings = torch.zeros(12, 4, 768)`` are plain
tensors, not parameters -- fixed zero vectors in ALL 12 layers that never train
(``vision_trainable: false``, ``vision_depth: 12`` of 12, ``vision_tokens: 4``). Fixed zero tokens
still change the image features: in a pre-norm block a zero token becomes the LayerNorm's bias,
one more key/value in every attention that takes softmax mass from the image tokens (the
abstract's "attention re-weighting").
``vision_trainable: true`` makes them parameters (our earlier reading; an option and an ablation).
Where we deviate from that code: it writes its 4 tokens over patch tokens 1..4 (``cat(x[:, :1],
prompt, x[:, 1+4:])`` on the un-prompted sequence, so four patches are dropped); we append them
(VPT-deep), which keeps every patch.

Teacher logits: that code uses the student's image features (``zero_shot_logits = logit_scale *
image_features @ fixed_embeddings.T`` with the same, zero-prompted ``image_features``):
``teacher_image: prompted`` (default). ``frozen`` runs the un-prompted encoder instead.

Choices where the description is silent (all under ``method``): ``desc_prune_z: null`` keeps
every description (BiomedCoOp prunes descriptions whose cosine to the class mean has
``|z| > 1.5``; set ``1.5`` to do so); optimiser and schedule from BiomedCoOp (SGD lr 0.0025,
batch 4, 100 epochs few-shot).

Ablations: ``distill: false`` (CE only, no descriptions needed at training time),
``vision_prompt: false`` (text prompt only), ``vision_trainable: true`` (learned visual prompts),
``vision_init: zeros | random`` (random: N(0, 0.02)).
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from medadapt.errors import UserError
from medadapt.methods._prompt import (PromptLearner, VisionDeepPrompts, clip_logits,
                                      encode_prompted_text)
from medadapt.methods.base import Batch, Method, register_method

# Clinical templates, per data set (the derivative code's ``CUSTOM_BIOMEDDPT_TEMPLATES``, one per
# Biomed-DPT data set) and per modality (aliases to the same strings; "cytology" and "generic" are
# ours). The learnable context is the words before ``{}``; the words after it stay fixed.
CLINICAL_TEMPLATES = {
    # per data set (derivative code)
    "btmri": "a MR photo of a {} in the brain.",
    "busi": "a ultrasound photo of a {} in the breast.",
    "chmnist": "a histopathological photo of a {}.",
    "covid": "a chest X-ray photo of a {} affected by COVID-19 in the lung.",
    "ctkidney": "a CT photo of a {} in the kidney.",
    "dermamnist": "a dermatoscopy photo of a {} in the skin.",
    "kneexray": "a frontal X-ray photo of a {} in the knee joint.",
    "kvasir": "a endoscopic photo of a {} in the colon.",
    "lc25000": "a histopathological photo of a {}.",
    "octmnist": "a OCT photo of a {}.",
    "retina": "a photo of a {} presented in image.",
    # per modality (aliases)
    "histopathology": "a histopathological photo of a {}.",
    "mri-brain": "a MR photo of a {} in the brain.",
    "oct": "a OCT photo of a {}.",
    "dermatology": "a dermatoscopy photo of a {} in the skin.",
    "ultrasound-breast": "a ultrasound photo of a {} in the breast.",
    "xray-chest": "a chest X-ray photo of a {} affected by COVID-19 in the lung.",
    "ct-kidney": "a CT photo of a {} in the kidney.",
    "endoscopy": "a endoscopic photo of a {} in the colon.",
    "fundus": "a photo of a {} presented in image.",
    "xray-knee": "a frontal X-ray photo of a {} in the knee joint.",
    "cytology": "a microscopic photo of a {}.",  # ours (no such data set in Biomed-DPT)
    "generic": "a photo of a {}.",
}

# first-template keywords of medadapt's template sets -> clinical template key (clinical_template:
# auto); a data set config names its template explicitly instead.
_AUTO = (("histopathology", "histopathology"), ("h&e", "histopathology"), ("tissue", "histopathology"),
         ("blood", "cytology"), ("microscopic", "cytology"), ("dermoscopic", "dermatology"),
         ("skin", "dermatology"), ("x-ray", "xray-chest"), ("radiograph", "xray-chest"),
         ("oct", "oct"), ("mr", "mri-brain"), ("ultrasound", "ultrasound-breast"),
         ("endoscop", "endoscopy"), ("fundus", "fundus"))


def resolve_template(spec: str | None, templates: list[str]) -> str:
    """``auto`` -> by keyword of the data set's first template; a key of
    :data:`CLINICAL_TEMPLATES`; or a template string with ``{}``."""
    if not spec or spec == "auto":
        first = (templates[0] if templates else "").lower()
        for kw, key in _AUTO:
            if kw in first.split() or (len(kw) > 3 and kw in first):
                return CLINICAL_TEMPLATES[key]
        return CLINICAL_TEMPLATES["generic"]
    if spec in CLINICAL_TEMPLATES:
        return CLINICAL_TEMPLATES[spec]
    if "{}" not in spec:
        raise UserError(f"biomed-dpt clinical_template {spec!r} is neither a known key "
                        f"({', '.join(CLINICAL_TEMPLATES)}) nor a template with '{{}}'")
    return spec


def scale_depth(depth: int, n_layers: int, ref_layers: int = 12) -> int:
    return max(1, min(n_layers, int(round(depth * n_layers / ref_layers))))


def distill_l1(text_features: torch.Tensor, desc_mean: torch.Tensor) -> torch.Tensor:
    """(D2): mean absolute difference between learned class text features and the mean
    description embeddings, ``[C, D]`` each."""
    return (text_features.float() - desc_mean.float()).abs().mean()


def distill_kl(logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0,
               reduction: str = "numel") -> torch.Tensor:
    """(D3): ``KL(P_teacher || P_student) * T^2``; ``numel`` divides the sum by ``B*C``,
    ``batchmean`` by ``B``. The teacher is the first argument (standard distillation)."""
    log_p = F.log_softmax(logits.float() / T, dim=-1)
    log_q = F.log_softmax(teacher_logits.float() / T, dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum()
    denom = logits.numel() if reduction == "numel" else logits.shape[0]
    return kl / max(denom, 1) * T * T


def prune_descriptions(feats: torch.Tensor, z: float | None) -> torch.Tensor:
    """Keep the descriptions whose cosine to the class mean has ``|z-score| <= z`` (BiomedCoOp's
    outlier pruning); ``z=None`` keeps all."""
    if z is None or feats.shape[0] < 3:
        return feats
    m = F.normalize(feats.mean(0), dim=-1)
    sims = feats @ m
    zs = (sims - sims.mean()) / sims.std().clamp(min=1e-8)
    keep = zs.abs() <= z
    return feats[keep] if keep.any() else feats


@register_method("biomed-dpt")
class BiomedDPT(Method):
    paper = ("Biomed-DPT: Dual Modality Prompt Tuning for Biomedical Vision-Language Models, "
             "arXiv 2505.05189")
    needs_images = True
    needs_descriptions = True
    defaults = {
        "clinical_template": "auto",  # auto | a key of CLINICAL_TEMPLATES | "... {} ..."
        "distill": True,
        "l1_weight": 12.5,
        "kl_weight": 0.25,
        "kl_T": 1.0,
        "kl_reduction": "numel",  # numel | batchmean
        "teacher_image": "prompted",  # prompted | frozen
        "desc_prune_z": None,
        "vision_prompt": True,
        "vision_trainable": False,  # reference: fixed zero tensors; true = learned (ablation)
        "vision_init": "zeros",  # zeros | random
        "vision_depth": 12,  # of 12 blocks (all), scaled to the backbone
        "vision_tokens": 4,
    }
    sources: ClassVar[dict[str, str]] = {
        "method.clinical_template": "derivative code CUSTOM_BIOMEDDPT_TEMPLATES (per data set); "
                                    "shared/papers/README.md",
        "method.l1_weight": "derivative code (12.5); shared/papers/README.md",
        "method.kl_weight": "derivative code (0.25); shared/papers/README.md",
        "method.kl_reduction": "derivative code: kl_div(sum) / logits.numel()",
        "method.teacher_image": "derivative code: zero_shot_logits from the same image_features",
        "method.vision_trainable": "abstract ('zero vector as a soft prompt'); derivative code "
                                   "CLIP_Inplanted: torch.zeros tensors, not parameters",
        "method.vision_depth": "derivative code: deep_prompt_embeddings = zeros(12, 4, 768)",
        "method.vision_tokens": "derivative code: num_tokens = 4",
        "method.desc_prune_z": "ours (no pruning in the derivative code)",
        "train.optimizer": "BiomedCoOp few-shot config (SGD)",
        "train.lr": "BiomedCoOp few-shot config (0.0025)",
        "train.batch_size": "BiomedCoOp few-shot config (4)",
        "train.epochs": "shared/papers/README.md (~100 epochs few-shot)",
    }
    train_defaults = {"optimizer": "sgd", "lr": 0.0025, "epochs": 100, "batch_size": 4,
                      "warmup_epochs": 1, "warmup": "constant", "warmup_lr": 1e-5}

    def __init__(self, backbone, texts, cfg=None):
        super().__init__(backbone, texts, cfg)
        c = self.cfg
        if c["vision_init"] not in ("zeros", "random"):
            raise UserError(f"biomed-dpt vision_init must be zeros or random, got {c['vision_init']!r}")
        if c["teacher_image"] not in ("frozen", "prompted"):
            raise UserError("biomed-dpt teacher_image must be frozen or prompted")
        self.template = resolve_template(c["clinical_template"], texts.templates)
        prefix, suffix = self.template.split("{}", 1)
        if not prefix.strip():
            raise UserError(f"biomed-dpt template {self.template!r} needs words before '{{}}'")
        self.prompt = PromptLearner(backbone, texts.classnames, ctx_init=prefix.strip(),
                                    suffix=suffix)
        self.vision = None
        if c["vision_prompt"]:
            depth = scale_depth(int(c["vision_depth"]), len(backbone.vision_blocks()))
            self.vision = VisionDeepPrompts(depth, int(c["vision_tokens"]), backbone.vision_width,
                                            init="zeros" if c["vision_init"] == "zeros" else "normal")
            if not c["vision_trainable"]:  # fixed tensors, as in the reference (never learned)
                self.vision.requires_grad_(False)
        self._eval_text = None
        self.desc_mean = None
        self._set_teacher(texts)

    def learned_state_dict(self) -> dict[str, torch.Tensor]:
        out = super().learned_state_dict()
        if self.vision is not None and not self.cfg["vision_trainable"] and \
                self.cfg["vision_init"] != "zeros":  # fixed random prompts: keep them with the run
            out.update({f"vision.prompts.{i}": p.detach().cpu().contiguous()
                        for i, p in enumerate(self.vision.prompts)})
        return out

    def _set_teacher(self, texts) -> None:
        """``m``: normalised mean of the normalised frozen description features per class."""
        self.desc_mean = None
        if not self.cfg["distill"] or not all(texts.descriptions.get(n) for n in texts.classnames):
            return
        means = []
        for n in texts.classnames:
            f = prune_descriptions(self.backbone.encode_texts(texts.descriptions[n]),
                                   self.cfg["desc_prune_z"])
            means.append(F.normalize(f.mean(0), dim=-1))
        self.desc_mean = torch.stack(means).to(self.backbone.device)

    def set_classes(self, texts) -> None:
        super().set_classes(texts)
        self.prompt.set_classnames(texts.classnames)
        self._set_teacher(texts)
        self._eval_text = None

    def train(self, mode: bool = True):
        self._eval_text = None
        return super().train(mode)

    # --- features -------------------------------------------------------------------------------
    def text_features(self) -> torch.Tensor:
        return encode_prompted_text(self.backbone, self.prompt).float()

    def prompted_image_features(self, images: torch.Tensor) -> torch.Tensor:
        hooks = self.vision.hooks() if self.vision is not None else []
        with self.backbone.layer_hooks(hooks):
            return self.backbone.encode_image(images).float()

    def _img(self, batch: Batch) -> torch.Tensor:
        if batch.images is None:  # cached features: no visual prompt possible
            return self.image_features(batch)
        return self.prompted_image_features(batch.images)

    def forward(self, batch: Batch) -> torch.Tensor:
        img = self._img(batch)
        if self.training:
            return clip_logits(self.backbone, img, self.text_features())
        if self._eval_text is None:
            self._eval_text = self.text_features().detach()
        return clip_logits(self.backbone, img, self._eval_text.to(img.device))

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg
        img = self._img(batch)
        txt = self.text_features()
        logits = clip_logits(self.backbone, img, txt)
        ce = F.cross_entropy(logits, batch.labels)  # (D1)
        total, parts = ce, {"ce": float(ce.detach())}
        if c["distill"]:
            if self.desc_mean is None:
                raise UserError("biomed-dpt needs descriptions for every training class "
                                "(--set texts.descriptions=FILE, or method.distill=false)")
            m = self.desc_mean.to(txt.device)
            l1 = distill_l1(txt, m)  # (D2)
            with torch.no_grad():
                if c["teacher_image"] == "frozen" and batch.images is not None and self.vision is not None:
                    img_t = self.backbone.encode_image(batch.images).float()
                else:
                    img_t = img.detach()
                teacher = clip_logits(self.backbone, img_t, m)
            kl = distill_kl(logits, teacher, c["kl_T"], c["kl_reduction"])  # (D3)
            total = total + c["l1_weight"] * l1 + c["kl_weight"] * kl  # (D4)
            parts.update(l1=float(l1.detach()), kl=float(kl.detach()))
        parts["total"] = float(total.detach())
        return total, parts
