"""Hugging Face hub repositories as local folders.

Every hub-hosted backbone is loaded from a folder: the repository's snapshot in the Hugging Face
cache when it is there (no network needed, ``HF_HUB_OFFLINE=1`` or not), otherwise the named files
are downloaded into that cache first. A missing file with the network off is one line naming the
repository and the files to fetch.
"""
from __future__ import annotations

import os
from pathlib import Path

from medadapt.errors import UserError


def offline() -> bool:
    try:
        from huggingface_hub import constants
        if constants.HF_HUB_OFFLINE:
            return True
    except Exception:  # pragma: no cover - very old huggingface_hub
        pass
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


def cached_snapshot(repo_id: str, cache_dir: str | None = None,
                    repo_type: str | None = None) -> Path | None:
    """The cached snapshot folder of ``repo_id`` (``refs/main``), or None; never uses the network."""
    from huggingface_hub import constants, snapshot_download
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir or constants.HF_HUB_CACHE,
                                      local_files_only=True, repo_type=repo_type))
    except Exception:
        return None


def has_file(folder: Path | None, names) -> str | None:
    if folder is None:
        return None
    for n in names:
        if (folder / n).is_file():
            return n
    return None


def fetch(repo_id: str, required: list[list[str]], optional: list[str] = (),
          cache_dir: str | None = None, what: str = "") -> Path:
    """A local folder holding ``repo_id``'s files. ``required``: groups of alternatives (the first
    file of a group that exists is enough); ``optional``: fetched when present on the hub.
    The cache is used first; the network only when a required file is missing."""
    snap = cached_snapshot(repo_id, cache_dir)
    if snap is not None and all(has_file(snap, g) for g in required):
        return snap
    names = " + ".join(" or ".join(g) for g in required)
    if offline():
        raise UserError(
            f"{what or repo_id}: {names} of https://huggingface.co/{repo_id} not in the Hugging Face "
            f"cache and the network is off (HF_HUB_OFFLINE=1); download them on a connected machine "
            f"(`hf download {repo_id}`) or put them in a folder and pass that folder as --backbone")
    from huggingface_hub import hf_hub_download
    folder = None
    try:
        for group in required:
            err = None
            for n in group:
                try:
                    folder = Path(hf_hub_download(repo_id, n, cache_dir=cache_dir)).parent
                    break
                except Exception as e:  # EntryNotFound: try the next alternative
                    err = e
            else:
                raise err
        for n in optional:
            try:
                hf_hub_download(repo_id, n, cache_dir=cache_dir)
            except Exception:
                pass
    except Exception as e:
        raise UserError(
            f"cannot download {names} of {repo_id!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else ''}); without internet, download the "
            f"repository on a connected machine into the Hugging Face cache (then HF_HUB_OFFLINE=1) "
            f"or into a folder and pass --backbone FOLDER") from None
    return folder
