"""Download with checksum verification."""
from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Sequence

from medadapt.data.catalog import DATASETS
from medadapt.errors import UserError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------

def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, spec: dict) -> tuple[bool, str]:
    """(ok, what was checked). A file without a known checksum is 'ok, unverified'."""
    for algo in ("sha256", "md5"):
        want = spec.get(algo)
        if want:
            got = file_digest(path, algo)
            if got.lower() != want.lower():
                return False, f"{algo} mismatch: expected {want}, got {got}"
            return True, f"{algo} verified"
    return True, "unverified (no checksum known)"


def _fetch(url: str, out: Path) -> None:
    from tqdm.auto import tqdm
    tmp = out.with_name(out.name + ".part")
    req = urllib.request.Request(url, headers={"User-Agent": "medadapt"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp, open(tmp, "wb") as fh:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=out.name, disable=None) as bar:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    fh.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def _safe_extract(archive: Path, dest: Path) -> None:
    dest_r = dest.resolve()
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for m in zf.namelist():
                target = (dest / m).resolve()
                if target != dest_r and dest_r not in target.parents:
                    raise UserError(f"refusing to extract {archive.name}: member {m!r} would land "
                                    f"outside {dest}")
            zf.extractall(dest)
    elif name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                for m in tf.getmembers():
                    target = (dest / m.name).resolve()
                    if target != dest_r and dest_r not in target.parents:
                        raise UserError(f"refusing to extract {archive.name}: member {m.name!r} "
                                        f"would land outside {dest}")
                tf.extractall(dest)
    elif name.endswith(".gz"):
        with gzip.open(archive, "rb") as src, open(dest / archive.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
    else:
        raise UserError(f"do not know how to extract {archive.name}")


def download_files(files: Sequence[dict], dest: str | Path, manual: str = "",
                   name: str = "data set") -> Path:
    """Download each ``{"url", "filename", "sha256"|"md5", "extract"}`` into ``dest``, verify its
    checksum, and unpack archives (zip, tar, gz). Files already present and verified are not
    fetched again; an archive unpacked before (marker file) is not unpacked again."""
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    how = f"; to get it by hand into {dest}: {manual}" if manual else ""
    for spec in files:
        out = dest / spec["filename"]
        marker = dest / f".{spec['filename']}.extracted"
        extract = spec.get("extract")
        if extract is None:
            extract = out.name.lower().endswith((".zip", ".tar", ".tar.gz", ".tgz", ".gz"))
        if extract and marker.exists():
            continue
        if out.exists():
            ok, what = _verify(out, spec)
            if not ok:
                log.warning("%s: existing %s fails its checksum (%s); downloading again",
                            name, out, what)
                out.unlink()
        if not out.exists():
            try:
                _fetch(spec["url"], out)
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", None) or e
                raise UserError(f"{name}: download of {spec['url']} failed ({reason}){how}") from None
            ok, what = _verify(out, spec)
            if not ok:
                bad = out.with_name(out.name + ".bad")
                os.replace(out, bad)
                raise UserError(f"{name}: {out.name} {what} (kept as {bad.name}); the download is "
                                f"corrupt or changed upstream{how}")
            if what.startswith("unverified"):
                log.warning("%s: %s downloaded %s", name, out.name, what)
        if extract:
            try:
                _safe_extract(out, dest)
            except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
                raise UserError(f"{name}: cannot unpack {out}: {type(e).__name__}: {e}{how}") from None
            marker.write_text(spec["url"])
    return dest


def download(name: str, dest: str | Path | None = None, include_optional: bool = False,
             only: Sequence[str] | None = None) -> Path:
    """Download a registered data set into ``dest`` (default ``$MEDADAPT_DATA/<name>``, where
    ``load_dataset(name)`` looks) with checksum verification. ``only`` picks files by name (e.g.
    ``["bloodmnist_224.npz"]``); otherwise every non-optional file. Data sets without a direct
    download raise ``UserError`` with the manual instructions."""
    info = DATASETS.get(name)
    target = Path(dest).expanduser() if dest is not None else info.default_root()
    if not info.files:
        raise UserError(f"{name} has no direct download; to get it by hand into {target}: "
                        f"{info.manual or info.homepage}")
    files = list(info.files)
    if only is not None:
        valid = [f["filename"] for f in files]
        bad = [o for o in only if o not in valid]
        if bad:
            raise UserError(f"{name}: no downloadable file(s) {bad}; valid: {', '.join(valid)}")
        files = [f for f in files if f["filename"] in only]
    elif not include_optional:
        files = [f for f in files if not f.get("optional")]
    return download_files(files, target, manual=info.manual, name=name)



def describe(name: str) -> str:
    """Everything ``medadapt datasets NAME`` prints: classes, where it is expected, its layout,
    its files (with checksums) and how to get it by hand."""
    from medadapt.data.sources import _ensure_registered
    _ensure_registered()
    info = DATASETS.get(name)
    lines = [f"{info.name}: {len(info.classnames)} classes, {info.modality}"
             + (f", {info.organ}" if info.organ else ""),
             "classes: " + ", ".join(info.classnames)]
    if info.needs_root:
        lines.append(f"expected at: {info.default_root()} (or pass {info.name}:PATH; "
                     "medadapt bench --data-root DIR)")
    if info.layout:
        lines.append(f"layout: {info.layout}")
    for f in info.files:
        check = next((f"{a} {f[a]}" for a in ("sha256", "md5") if f.get(a)), "no checksum known")
        lines.append(f"file: {f['filename']} <- {f['url']} ({check})")
    if info.manual:
        lines.append(f"by hand: {info.manual}")
    for key in ("homepage", "license", "citation"):
        if getattr(info, key):
            lines.append(f"{key}: {getattr(info, key)}")
    return "\n".join(lines)
