"""``medadapt predict``: class probabilities per image from a run folder, streamed batch by batch
into a CSV that replaces nothing but an earlier predictions file."""
from __future__ import annotations

import csv
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from medadapt.engine.evaluate import _read_json, _seed_dirs, load_run
from medadapt.errors import UserError
from medadapt.methods import Batch


def predict_inputs(inputs: list[str]) -> list[Path]:
    """Image files from files and folders; hidden files and folders (``.name``) are skipped, as
    ``folder:`` data sets skip them."""
    from medadapt.data.sources import IMAGE_EXTS, visible_images
    files: list[Path] = []
    for s in inputs:
        p = Path(s)
        if not p.exists():
            raise UserError(f"image or folder not found: {p}")
        if p.is_dir():
            files += visible_images(p)
        else:
            files.append(p)
    if not files:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) found in the given inputs")
    return files


PREDICTIONS_HEADER = "path,prediction,"


def check_replaceable_predictions(out: Path, inputs: list[Path]) -> None:
    """``predict --out`` replaces an existing file only when it is an earlier predictions CSV:
    never one of the input images, never the user's own spreadsheet."""
    o = out.resolve()
    if any(o == f.resolve() for f in inputs):
        raise UserError(f"--out {out} is one of the input images; give a CSV file name")
    try:
        with open(out, "rb") as fh:
            head = fh.read(len(PREDICTIONS_HEADER))
    except OSError as e:
        raise UserError(f"--out {out}: cannot read the existing file ({e.strerror or e})") from None
    if head != PREDICTIONS_HEADER.encode():
        raise UserError(f"--out {out} exists and is not a medadapt predictions CSV; it is left "
                        "alone: choose another --out (or delete it first)")


def _seed_of(sdir: Path) -> int | None:
    try:
        return int(_read_json(sdir / "results.json", "results.json").get("seed"))
    except (TypeError, ValueError, AttributeError):
        return None


def predict_seed_dirs(run: str | Path, seed: int | None = None) -> list[Path]:
    """The seed folders ``predict`` uses: every finished seed, or the one ``seed`` names."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run folder not found: {run}")
    if not (run / "config.yaml").exists():
        raise UserError(f"{run} is not a medadapt run folder (no config.yaml)")
    dirs = _seed_dirs(run)
    if seed is None:
        return dirs
    have = {_seed_of(d): d for d in dirs}
    if seed not in have:
        raise UserError(f"--seed {seed}: {run} has no finished seed {seed} (finished: "
                        f"{', '.join(str(s) for s in have if s is not None) or 'none'})")
    return [have[seed]]


def predict_pass(method, backbone, n: int, open_item, batch_size: int, skip_bad: bool,
                 progress: bool, desc: str, skip=()):
    """One model over items ``0 .. n-1`` in batches; ``open_item(j)`` gives item ``j`` as an RGB
    image (a ``UserError`` when it cannot). Yields ({j: probs}, {j: extras}, {j: error}) per
    batch; items in ``skip`` are passed over."""
    for s in tqdm(range(0, n, batch_size), disable=not progress, desc=desc):
        ok, imgs, errors = [], [], {}
        for j in range(s, min(s + batch_size, n)):
            if j in skip:
                continue
            try:
                imgs.append(backbone.preprocess(open_item(j)))
                ok.append(j)
            except UserError as e:
                if not skip_bad:
                    raise
                errors[j] = str(e)
        probs, extras = {}, {}
        if imgs:
            pr, ex = score_pixels(method, backbone, imgs)
            del imgs
            probs = dict(zip(ok, pr))
            extras = dict(zip(ok, ex))
        yield probs, extras, errors


@torch.no_grad()
def score_pixels(method, backbone, pixels: list[torch.Tensor]) -> tuple[np.ndarray, list[dict]]:
    """Preprocessed images (the backbone's eval transform) -> class probabilities [N, C] and the
    method's per-image extra outputs (SCALE: its top concepts; ``{}`` for other methods)."""
    xs = torch.stack(pixels).to(backbone.device)
    if method.needs_images:
        batch = Batch(labels=torch.zeros(len(xs), dtype=torch.long), images=xs)
    else:
        batch = Batch(labels=torch.zeros(len(xs), dtype=torch.long),
                      features=backbone.encode_image(xs, normalize=False))
    pr = torch.softmax(method(batch).float(), dim=-1).cpu().numpy()
    ex = method.extra_predictions(batch).get("rows") or [{}] * len(xs)
    return pr, list(ex)


def predict_paths(run: str | Path, inputs: list[str], out_csv: str | Path | None,
                  batch_size: int = 32, skip_bad: bool = False, progress: bool = False,
                  max_image_pixels: int | None = None, seed: int | None = None) -> Path:
    """Class probabilities per image -> CSV (path, predicted class, one column per class).

    A run with several seeds predicts with every seed's model and writes the mean of their
    probabilities (the prediction is its arg-max; method-specific extra columns come from the
    first seed), and says so on stderr; ``seed`` picks one seed's model instead.
    Images are decoded, encoded and scored one batch at a time, so memory stays flat in the number
    of inputs (one row of probabilities per image is kept). With ``skip_bad`` an unreadable image
    gets a row with an empty prediction and the reason in the ``error`` column; without it the
    first one ends the command and nothing is written. The CSV is written to a unique temporary
    file beside ``out`` and renamed into place only when complete; an existing file is replaced
    only then.
    """
    from medadapt.data.dataset import pixel_limit
    files = predict_inputs(inputs)
    out = Path(out_csv) if out_csv else Path(run) / "predictions.csv"
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a CSV file name")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: folder {out.parent} is not writable")
    if out.exists():
        check_replaceable_predictions(out, files)
    from medadapt.data.dataset import open_rgb
    sdirs = predict_seed_dirs(run, seed)
    total = None
    extras: dict = {}
    errors: dict = {}
    names = None
    limit = max_image_pixels
    with torch.no_grad():
        for k, sdir in enumerate(sdirs):
            cfg, texts, backbone, method, _ = load_run(run, sdir)
            if names is None:
                names = method.texts.classnames
                limit = limit or (cfg.get("data") or {}).get("max_image_pixels")
                total = np.zeros((len(files), len(names)), dtype=np.float64)
            with pixel_limit(limit):
                desc = "predict" if len(sdirs) == 1 else f"predict (seed {_seed_of(sdir)})"
                for probs, ex, errs in predict_pass(method, backbone, len(files),
                                                    lambda j: open_rgb(str(files[j])), batch_size,
                                                    skip_bad, progress, desc, errors):
                    for j, p in probs.items():
                        total[j] += p
                    if k == 0:
                        extras.update({j: e for j, e in ex.items() if e})
                        errors.update(errs)
            del method, backbone
    total /= len(sdirs)
    extra_cols = sorted({c for e in extras.values() for c in e})
    header = ["path", "prediction"] + [f"p({n})" for n in names] + extra_cols
    if skip_bad:
        header.append("error")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for j, f in enumerate(files):
                if j in errors:
                    w.writerow([str(f), ""] + [""] * (len(names) + len(extra_cols)) + [errors[j]])
                    continue
                p, e = total[j], extras.get(j, {})
                row = [str(f), names[int(np.argmax(p))]] + [f"{v:.6f}" for v in p] + \
                    [e.get(c, "") for c in extra_cols]
                w.writerow(row + ([""] if skip_bad else []))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if len(sdirs) > 1:
        seeds = [_seed_of(d) for d in sdirs]
        print(f"medadapt: predicted with the models of all {len(sdirs)} seeds "
              f"({', '.join(map(str, seeds))}): the probabilities are their mean; pick one "
              "seed's model with --seed N", file=sys.stderr)
    if errors:
        print(f"medadapt: {len(errors)} unreadable image(s) skipped; see the 'error' column of {out}",
              file=sys.stderr)
    return out
