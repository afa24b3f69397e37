"""Runs on the Hugging Face Hub: ``medadapt push`` and ``hf://org/name[@revision]``.

A pushed repository mirrors the run folder, so a snapshot of it is a run folder that
:func:`medadapt.load_run`, ``medadapt eval`` and ``medadapt predict`` read like a local one:

- ``config.yaml`` (the resolved config; local data paths reduced to their last component),
- ``classes.json`` (class names, templates, descriptions: what the model predicts over),
- ``results.json`` + ``params.safetensors`` (one seed), or ``summary.json`` + ``seed<N>/`` with
  those two files per seed,
- ``README.md``: a model card (backbone and its licence, data set, method and its paper, shots,
  seeds, metrics, recipe, how to load it).

Only learned parameters travel, as safetensors; no pickle, no code. Reading a repository touches
only those file names (``allow_patterns``), parses YAML with the safe loader and JSON, and never
imports or executes anything from it. ``fewshot.json`` (the training file names) and ``log.txt``
stay local: file names of private images are not published.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from medadapt.errors import UserError

HF_PREFIX = "hf://"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# the files of a run that are shared, relative to the run folder
TOP_FILES = ("config.yaml", "classes.json", "summary.json", "results.json", "params.safetensors")
SEED_FILES = ("results.json", "params.safetensors")
ALLOW_PATTERNS = ["README.md", "config.yaml", "classes.json", "summary.json", "results.json",
                  "params.safetensors", "seed*/results.json", "seed*/params.safetensors"]
# SPDX-like ids of the Hub's model-card ``license`` field, for the licences of registered backbones
_LICENSE_IDS = (("apache-2.0", "apache-2.0"), ("mit", "mit"), ("cc-by-nc-nd", "cc-by-nc-nd-4.0"),
                ("cc-by-nc-sa", "cc-by-nc-sa-4.0"), ("cc-by-nc", "cc-by-nc-4.0"))


def check_repo_id(repo: str) -> str:
    if not isinstance(repo, str) or not _REPO.match(repo) or ".." in repo:
        raise UserError(f"--repo must be a Hugging Face repository id ORG/NAME, got {repo!r}")
    return repo


def parse_hf(source: str) -> tuple[str, str | None]:
    """``hf://org/name[@revision]`` -> (repo id, revision or None)."""
    rest = source[len(HF_PREFIX):]
    repo, _, rev = rest.partition("@")
    repo = repo.strip("/")
    if not _REPO.match(repo) or ".." in repo:
        raise UserError(f"{source!r}: expected hf://ORG/NAME or hf://ORG/NAME@REVISION")
    if _ and not rev:
        raise UserError(f"{source!r}: empty revision after '@'")
    return repo, rev or None


# ------------------------------------------------------------------------------------------------
# reading: hf://org/name -> a folder in the Hugging Face cache
def resolve_run(source) -> tuple[Path, str]:
    """(run folder, label) for a local folder or ``hf://org/name[@revision]``."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise UserError(f"a run must be a folder or hf://ORG/NAME, got {type(source).__name__}")
    if not source.startswith(HF_PREFIX):
        return Path(source), source
    repo, rev = parse_hf(source)
    folder = download_run(repo, rev, source)
    check_backbone_here(folder, source)
    return folder, source


def download_run(repo: str, revision: str | None, label: str) -> Path:
    from medadapt.backbones.hub import offline
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a core dependency
        raise UserError("hf:// runs need huggingface_hub: pip install huggingface_hub") from None
    off = offline()
    try:
        folder = Path(snapshot_download(repo_id=repo, revision=revision, repo_type="model",
                                        allow_patterns=ALLOW_PATTERNS, local_files_only=off))
    except Exception as e:  # LocalEntryNotFound, RepositoryNotFound, RevisionNotFound, network ...
        msg = str(e).splitlines()[0][:160] if str(e) else ""
        if off:
            raise UserError(f"{label} is not in the Hugging Face cache and the network is off "
                            f"(HF_HUB_OFFLINE=1); on a connected machine run `hf download {repo}"
                            f"{' --revision ' + revision if revision else ''}` (or unset "
                            "HF_HUB_OFFLINE)") from None
        raise UserError(f"cannot get {label} from the Hugging Face Hub ({type(e).__name__}: {msg}); "
                        "check the name and your access (`hf auth login` for a private "
                        "repository), or HF_HUB_OFFLINE=1 to use the cache only") from None
    if not (folder / "config.yaml").is_file():
        raise UserError(f"{label} is not a medadapt run (no config.yaml in the repository); "
                        "push runs with `medadapt push RUN --repo ORG/NAME`")
    return folder


def check_backbone_here(folder: Path, label: str) -> None:
    """Refuse a run whose backbone cannot be loaded on this machine, with one line saying which
    backbone to get and how. With the network on, a registered hub backbone is downloaded on first
    use as ``medadapt fit`` would; offline it must be in the Hugging Face cache."""
    from medadapt.backbones import BACKBONES, how_to_get, local_status
    from medadapt.backbones import hub as bhub
    from medadapt.config import load_yaml
    spec = load_yaml(folder / "config.yaml").get("backbone")
    if not isinstance(spec, str) or not spec:
        raise UserError(f"{label}: config.yaml names no backbone; the repository is damaged")
    off = bhub.offline()
    if spec in BACKBONES:
        info = BACKBONES.get(spec)
        if off and local_status(info).startswith("missing"):
            raise UserError(f"{label} needs the backbone {spec!r} ({info.source}), which is not on "
                            f"this machine: get it with {how_to_get(info)}")
        return
    from medadapt.engine.resolve import split_backbone_prefix
    kind = spec.partition(":")[0]
    _, src = split_backbone_prefix(spec)
    for prefix in ("hf-hub:", "hf_hub:"):
        if src.startswith(prefix):
            src = src[len(prefix):]
    if Path(src).expanduser().is_dir():
        return
    if _REPO.match(src) and not src.startswith("."):
        if off and bhub.cached_snapshot(src) is None:
            raise UserError(f"{label} needs the backbone {spec!r}, which is not in the Hugging "
                            f"Face cache and the network is off: get it with `hf download {src}` "
                            "on a connected machine")
        return
    if kind == "open_clip" and "@" in src:  # NAME@TAG: open_clip's own download
        return
    raise UserError(f"{label} was trained on the backbone folder {spec!r}, which is not on this "
                    "machine; ask its owner for that model folder (or use a run trained on a "
                    "registered backbone)")


# ------------------------------------------------------------------------------------------------
# writing: the folder that is uploaded
def _redact(spec: str) -> str:
    """A local data path in a spec -> its last component (``folder:/home/me/tiles`` ->
    ``folder:tiles``): the config on the Hub records which data, not where it lies on a disk."""
    if not isinstance(spec, str):
        return spec
    kind, sep, rest = spec.partition(":")
    if sep and rest and (kind in ("folder", "csv", "npz") or os.sep in rest):
        return f"{kind}:{Path(rest).name}"
    return spec


def _strip_paths(v):
    """Absolute file paths in settings (a split file, a descriptions file, SCALE's hierarchy)
    -> their file name: what they held travels in classes.json / params.safetensors."""
    if isinstance(v, dict):
        return {k: _strip_paths(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_strip_paths(x) for x in v]
    if isinstance(v, str) and (os.path.isabs(v) or v.startswith("~")):
        return Path(v).name
    return v


def _public_config(cfg: dict) -> dict:
    out = {k: (v if k in ("backbone", "dataset") else _strip_paths(v)) for k, v in cfg.items()}
    out["dataset"] = _redact(cfg.get("dataset"))
    return out


def _public_result(res: dict) -> dict:
    out = dict(res)
    if "dataset" in out:
        out["dataset"] = _redact(out["dataset"])
    return out


def stage_run(run: Path, dest: Path, repo: str) -> list[str]:
    """Write the shared files of ``run`` and its model card into the empty folder ``dest``;
    returns the relative file names."""
    from medadapt.config import dump_yaml, load_yaml
    from medadapt.engine.evaluate import _read_json
    from medadapt.engine.predict import predict_seed_dirs
    dirs = predict_seed_dirs(run)  # one-line errors for a missing or unfinished run
    cfg = load_yaml(run / "config.yaml")
    from medadapt.backbones import BACKBONES
    bb = str(cfg.get("backbone"))
    if bb not in BACKBONES and (os.path.isabs(bb) or bb.startswith((".", "~")) or os.sep in
                                bb.partition(":")[2] and not _REPO.match(bb.partition(":")[2])):
        import sys
        print(f"medadapt: warning: {run} was trained on the local backbone folder {bb}; whoever "
              "loads the pushed run needs that same model folder", file=sys.stderr)
    wanted = cfg.get("seeds") or []
    if len(wanted) > len(dirs):
        raise UserError(f"{run}: only {len(dirs)} of {len(wanted)} seeds are finished; finish the "
                        "run (`medadapt fit ... --resume`) before pushing it")
    files = []
    dump_yaml(_public_config(cfg), dest / "config.yaml")
    files.append("config.yaml")
    shutil.copyfile(run / "classes.json", dest / "classes.json")
    files.append("classes.json")
    results = []
    for d in dirs:
        rel = d.relative_to(run)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        res = _read_json(d / "results.json", "results.json")
        results.append(res)
        (dest / rel / "results.json").write_text(json.dumps(_public_result(res), indent=1))
        params = d / "params.safetensors"
        if not params.is_file():
            raise UserError(f"{d} has no params.safetensors; the run is incomplete, re-run it")
        shutil.copyfile(params, dest / rel / "params.safetensors")
        files += [str(rel / "results.json"), str(rel / "params.safetensors")]
    summary = None
    if len(dirs) > 1:
        summary = _read_json(run / "summary.json", "summary.json") \
            if (run / "summary.json").exists() else None
        if summary is None:
            from medadapt.engine.runner import summarise
            summary = summarise(results)
        (dest / "summary.json").write_text(json.dumps(_public_result(summary), indent=1))
        files.append("summary.json")
    bench = None
    if (run / "bench.json").is_file():
        try:
            bench = json.loads((run / "bench.json").read_text())
        except (OSError, ValueError):
            bench = None
    card = model_card(cfg, results, summary, repo, bench)
    (dest / "README.md").write_text(card)
    files.append("README.md")
    return [f.replace(os.sep, "/") for f in files]


def _license_id(text: str) -> str:
    low = (text or "").lower()
    for key, spdx in _LICENSE_IDS:
        if low.startswith(key) or low.replace(" ", "-").startswith(key):
            return spdx
    return "other"


def _fmt(v) -> str:
    if isinstance(v, dict) and "mean" in v:
        return f"{v['mean']:.4f} ± {v['std']:.4f}"
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def model_card(cfg: dict, results: list[dict], summary: dict | None, repo: str,
               bench: dict | None = None) -> str:
    """The README.md of a pushed run (Hub model-card metadata + what, how well, how to use)."""
    import medadapt
    from medadapt.backbones import BACKBONES
    from medadapt.methods import get_method
    bb = cfg["backbone"]
    info = BACKBONES.get(bb) if bb in BACKBONES else None
    lic = info.license if info else "see the backbone's own licence"
    method = cfg["method"]["name"]
    try:
        paper = get_method(method).paper
    except UserError:
        paper = ""
    ds_spec = _redact(cfg.get("dataset"))
    ds_cite, ds_home = "", ""
    kind = str(ds_spec).partition(":")[0]
    if kind in ("folder", "csv", "npz", "memory"):
        ds_line = f"`{ds_spec}`: the pusher's own data (not uploaded)"
    else:
        try:
            from medadapt.data.catalog import DATASETS
            from medadapt.data.sources import _ensure_registered
            _ensure_registered()
            d = DATASETS.get(kind)
            ds_cite, ds_home = d.citation, d.homepage
        except Exception:
            pass
        ds_line = f"`{ds_spec}` (registered in medadapt{'; ' + ds_home if ds_home else ''})"
    base_model = ""
    if info and "/" in info.source and not info.source.startswith(("package:", "hf-dataset:")):
        base_model = info.source.split(":", 1)[-1] if info.source.startswith("hf-hub:") \
            else info.source
    seeds = [r.get("seed") for r in results]
    shots = cfg.get("shots") if not (cfg.get("data") or {}).get("fraction") else \
        f"fraction {cfg['data']['fraction']}"
    recipe = cfg.get("recipe") or (bench or {}).get("recipe") or (bench or {}).get("grid")
    m = (summary or results[0]).get("metrics") or {}
    classes = cfg.get("classnames") or []
    front = ["---", "library_name: medadapt", f"license: {_license_id(lic)}",
             "tags:", "- medadapt", "- few-shot", "- vision-language", f"- {method}"]
    if base_model:
        front.append(f"base_model: {base_model}")
    front.append("---")
    lines = front + [
        "", f"# {repo.split('/')[-1]}: {method} on {bb}", "",
        f"A few-shot adaptation trained with medadapt "
        f"{medadapt.__version__}. Only the learned parameters are stored here "
        "(`params.safetensors`); the frozen backbone comes from its own source.", "",
        "| | |", "|---|---|",
        f"| backbone | `{bb}`{' (' + info.source + ')' if info else ''} |",
        f"| backbone licence | {lic} (these parameters are used with that backbone; its terms "
        "apply) |",
        f"| method | `{method}`{': ' + paper if paper else ''} |",
        f"| data set | {ds_line} |",
        f"| classes | {', '.join(classes)} |",
        f"| protocol | {cfg.get('protocol', 'few-shot')} |",
        f"| shots per class | {shots} |",
        f"| seeds | {', '.join(str(s) for s in seeds)} |",
    ]
    if recipe:
        lines.append(f"| recipe | {recipe} |")
    lines += ["", "## Test metrics" + (" (mean ± std over seeds)" if summary else ""), "",
              "| metric | value |", "|---|---|"]
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc"):
        if m.get(k) is not None:
            lines.append(f"| {k} | {_fmt(m[k])} |")
    src = summary or results[0]
    for k in ("base", "novel", "hm"):
        if src.get(k) is not None:
            lines.append(f"| {k} | {_fmt(src[k])} |")
    lines += ["", "## Use it", "", "```python", "import medadapt",
              f'run = medadapt.load_run("hf://{repo}")',
              'pred = run.predict(["tile.png"])   # PIL images, arrays, files or folders',
              "pred.probs, pred.predictions", "```", "", "```bash",
              f"medadapt predict --run hf://{repo} tiles/ --out predictions.csv",
              f"medadapt eval --run hf://{repo} --dataset folder:MY_TEST_SET", "```", "",
              f"The backbone `{bb}` must be available on the machine (`medadapt backbones` says "
              "whether it is, and how to get it).", ""]
    if paper or ds_cite:
        lines += ["## Cite", ""]
        if paper:
            lines.append(f"- method: {paper}")
        if ds_cite:
            lines.append(f"- data set: {ds_cite}")
        lines.append("")
    lines += ["## Files", "",
              "`config.yaml` (the resolved configuration), `classes.json` (class names, prompt "
              "templates, descriptions), `results.json` / `summary.json` (metrics), "
              "`params.safetensors` (learned parameters; `seed<N>/` per seed). The few-shot file "
              "list and the training log stay with the pusher.", ""]
    return "\n".join(lines)


def push_run(run: Path, repo: str, dry_run=None, private: bool = False, token: str | None = None,
             commit_message: str | None = None):
    """Upload the run folder ``run`` as ``repo``; ``dry_run=DIR`` writes DIR instead (DIR must
    not exist, or be empty). Returns the repository URL or DIR."""
    run = Path(run)
    check_repo_id(repo)
    if dry_run is not None:
        dest = Path(dry_run)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise UserError(f"--dry-run {dest} exists and is not an empty folder; choose a new "
                            "folder (nothing was written)")
        if not dest.parent.is_dir():
            raise UserError(f"--dry-run {dest}: folder {dest.parent} does not exist")
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            stage_run(run, work, repo)
            if dest.exists():
                dest.rmdir()
            os.replace(work, dest)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return dest
    from medadapt.backbones.hub import offline
    if offline():
        raise UserError("cannot push with the network off (HF_HUB_OFFLINE=1); unset it, or write "
                        "the folder with --dry-run DIR and upload it later (`hf upload`)")
    with tempfile.TemporaryDirectory(prefix="medadapt-push-") as tmp:
        stage_run(run, Path(tmp), repo)
        try:
            from huggingface_hub import create_repo, upload_folder
            url = create_repo(repo, private=private, exist_ok=True, token=token,
                              repo_type="model")
            upload_folder(repo_id=repo, folder_path=tmp, token=token, repo_type="model",
                          commit_message=commit_message or f"medadapt push of {run.name}")
        except UserError:
            raise
        except Exception as e:
            msg = " ".join(str(e).split())[:200]
            raise UserError(f"cannot push to {repo} ({type(e).__name__}: {msg}); log in with "
                            "`hf auth login` (or pass a token), or write the folder with "
                            "--dry-run DIR") from None
    return str(getattr(url, "url", None) or f"https://huggingface.co/{repo}")
