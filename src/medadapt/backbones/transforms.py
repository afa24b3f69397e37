"""Image transforms shared by every backbone family.

* Eval: each model's own published preprocessing (open_clip's ``preprocess_cfg``, a Hugging Face
  ``preprocessor_config.json``, CONCH's bicubic resize + centre crop).
* Train: ONE augmentation policy for every family by default, the prompt-learning references'
  (CoOp / CoCoOp / MaPLe / PromptSRC via Dassl: ``random_resized_crop`` with scale (0.08, 1.0) then
  ``random_flip``, then ``normalize``; Dassl ``INPUT.RRCROP_SCALE = (0.08, 1.0)``):
  ``RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=<the model's>) ->
  RandomHorizontalFlip() -> ToTensor() -> Normalize(<the model's mean/std>)``. A run sets its own
  crop scale and flip (``data.crop_scale``, ``data.flip``; :func:`with_policy`), e.g. BiomedCoOp's
  prompt learners crop 0.08-1 without a flip, its ``main.py`` methods 0.5-1 with a flip.
"""
from __future__ import annotations

from typing import Sequence

from torchvision import transforms as T

TRAIN_CROP_SCALE = (0.08, 1.0)
TRAIN_FLIP = True

_INTERP = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
           "nearest": T.InterpolationMode.NEAREST, "lanczos": T.InterpolationMode.LANCZOS,
           "box": T.InterpolationMode.BOX, "hamming": T.InterpolationMode.HAMMING}
# PIL resample codes, as stored in a preprocessor_config.json ("resample": 3 = bicubic)
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def interpolation(name_or_code) -> T.InterpolationMode:
    if isinstance(name_or_code, T.InterpolationMode):
        return name_or_code
    if isinstance(name_or_code, int) or (hasattr(name_or_code, "value") and
                                         isinstance(getattr(name_or_code, "value"), int)):
        name_or_code = _PIL_RESAMPLE[int(getattr(name_or_code, "value", name_or_code))]
    return _INTERP[str(name_or_code).lower()]


def _rgb(img):
    return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img


def train_transform(size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                    interp="bicubic", crop_scale: Sequence[float] = TRAIN_CROP_SCALE,
                    flip: bool = TRAIN_FLIP) -> T.Compose:
    """The one train-time augmentation (see the module docstring); ``crop_scale`` / ``flip`` are
    the run's policy (``data.crop_scale`` / ``data.flip``)."""
    steps = [_rgb, T.RandomResizedCrop(size, scale=_scale(crop_scale),
                                       interpolation=interpolation(interp))]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + [T.ToTensor(), T.Normalize(list(mean), list(std))])


def _scale(crop_scale) -> tuple[float, float]:
    from medadapt.errors import UserError
    try:
        lo, hi = (float(v) for v in crop_scale)
    except (TypeError, ValueError):
        raise UserError(f"data.crop_scale must be [low, high], got {crop_scale!r}") from None
    if not 0 < lo <= hi <= 1:
        raise UserError(f"data.crop_scale must satisfy 0 < low <= high <= 1, got {[lo, hi]}")
    return (lo, hi)


def with_policy(t, crop_scale: Sequence[float] = TRAIN_CROP_SCALE, flip: bool = TRAIN_FLIP):
    """``t`` (a :func:`train_transform`) with the random resized crop's scale set to
    ``crop_scale`` and the horizontal flip present or not; the crop's size, ratio and
    interpolation and every other step are kept. The default policy returns ``t`` itself.

    The references: Dassl (CoOp, CoCoOp, KgCoOp, ProGrad, BiomedCoOp: ``INPUT.TRANSFORMS:
    ["random_resized_crop", "normalize"]``, scale (0.08, 1), bicubic, no flip); BiomedCoOp's
    ``main.py`` methods (CLIP-Adapter, Tip-Adapter(-F), LP, LP++): ``RandomResizedCrop(224,
    scale=(0.5, 1), BICUBIC)``, ``RandomHorizontalFlip(0.5)``, CLIP mean / std (main.py lines
    194-199 @7ceb5a8)."""
    from medadapt.errors import UserError
    scale = _scale(crop_scale)
    if scale == tuple(TRAIN_CROP_SCALE) and bool(flip) == TRAIN_FLIP:
        return t
    steps = list(getattr(t, "transforms", []) or [])
    crops = [s for s in steps if isinstance(s, T.RandomResizedCrop)]
    if len(crops) != 1:
        raise UserError("data.crop_scale / data.flip: this backbone's train transform has no "
                        "single random resized crop to set; keep the default policy")
    out = []
    for s in steps:
        if isinstance(s, T.RandomHorizontalFlip):
            continue
        if isinstance(s, T.RandomResizedCrop):
            s = T.RandomResizedCrop(s.size, scale=scale, ratio=s.ratio,
                                    interpolation=s.interpolation, antialias=s.antialias)
            out.append(s)
            if flip:
                out.append(T.RandomHorizontalFlip())
            continue
        out.append(s)
    return T.Compose(out)


def set_train_policy(backbone, crop_scale: Sequence[float] = TRAIN_CROP_SCALE,
                     flip: bool = TRAIN_FLIP) -> None:
    """Give ``backbone`` (this run's copy) the train transform of the run's augmentation policy:
    methods that encode pixels every step and the cached / fresh augmented views both use it,
    and the feature cache keys on it."""
    backbone.train_preprocess = with_policy(backbone.train_preprocess, crop_scale, flip)


def transform_from_image_processor(ip, train: bool = False) -> T.Compose:
    """torchvision equivalent of a ``CLIPImageProcessor``'s ``preprocessor_config.json``:
    ``resample``, ``do_resize`` with ``shortest_edge`` (aspect kept) or ``height``/``width``
    (exact), ``do_center_crop`` with ``crop_size``, ``do_normalize`` with mean/std."""
    interp = interpolation(getattr(ip, "resample", 3))
    size = {k: v for k, v in dict(getattr(ip, "size", None) or {}).items() if v is not None}
    crop = {k: v for k, v in dict(getattr(ip, "crop_size", None) or {}).items() if v is not None}
    do_crop = bool(getattr(ip, "do_center_crop", True)) and bool(crop)
    if "shortest_edge" in size:
        resize, out = int(size["shortest_edge"]), int(size["shortest_edge"])
    else:
        resize = (int(size.get("height", 224)), int(size.get("width", size.get("height", 224))))
        out = resize
    if do_crop:
        out = (int(crop.get("height", 224)), int(crop.get("width", crop.get("height", 224))))
    mean = getattr(ip, "image_mean", None) or [0.0, 0.0, 0.0]
    std = getattr(ip, "image_std", None) or [1.0, 1.0, 1.0]
    if not getattr(ip, "do_normalize", True):
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    if train:
        return train_transform(out, mean, std, interp)
    steps = [_rgb]
    if getattr(ip, "do_resize", True):
        steps.append(T.Resize(resize, interpolation=interp))
    if do_crop:
        steps.append(T.CenterCrop(out))
    return T.Compose(steps + [T.ToTensor(), T.Normalize(list(mean), list(std))])


def square_size(out) -> int:
    return int(out[0] if isinstance(out, (tuple, list)) else out)
