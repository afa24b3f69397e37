"""The report of ``medadapt demo``: Markdown + one self-contained HTML page (PNGs embedded).

Sections: the few-shot table (with each method's budget and training time), the few-shot curve,
"does every method learn?" (computed from the results: the largest-K accuracy against zero-shot
and the seed spread, with the evidence when a method does not clear it), the base-to-novel panel,
SCALE on the concept task with its concept-level output, training time, the budgets, skipped and
failed methods, and the commands to run the same comparison on your own images with a real
backbone (and how to get its weights offline).

Input rows are :func:`medadapt.demo.run_job`'s: ``method, dataset, task, shots, values`` (accuracy
per seed; base accuracy under base-to-novel), ``novel``, ``hm``, ``train_seconds``, ``budget``,
``loss_first`` / ``loss_last`` per seed, ``error`` for a failed run.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from medadapt.report.report import CSS, _img_b64
from medadapt.safeio import save_figure, write_text

# ------------------------------------------------------------------------------------------------
# numbers


def _ok(rows):
    return [r for r in rows if not r.get("error")]


def _by(rows, task: str) -> dict:
    return {(r["method"], r["shots"]): r for r in _ok(rows) if r.get("task") == task}


def mean_std(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], float) * 100
    return (float(v.mean()), float(v.std())) if len(v) else (float("nan"), float("nan"))


def spread(values) -> float:
    """Seed spread in points: max - min over seeds (0 with one seed)."""
    v = np.asarray([x for x in values if x is not None], float) * 100
    return float(v.max() - v.min()) if len(v) else float("nan")


def _cell(r) -> str:
    if r is None:
        return "–"
    m, s = mean_std(r["values"])
    return f"{m:.1f} ± {s:.1f}"


def learning_findings(rows: list[dict], task: str = "fewshot",
                      trainable: dict[str, bool] | None = None) -> list[dict]:
    """Per trainable method: is its accuracy at the largest K above zero-shot by more than its
    seed spread (max - min over seeds)? Computed from the rows; the evidence when it is not."""
    by = _by(rows, task)
    if trainable is None:
        from medadapt.methods import get_method
        trainable = {m: get_method(m).trainable for m, _ in by}
    out = []
    shots_all = sorted({k for _, k in by})
    if not shots_all:
        return out
    kmax = shots_all[-1]
    zs = by.get(("zero-shot", kmax))
    if zs is None:
        return out
    zs_mean, _ = mean_std(zs["values"])
    zs_spread = spread(zs["values"])
    for (m, k), r in sorted(by.items()):
        if k != kmax or not trainable.get(m, False) or m == "zero-shot":
            continue
        mean, _ = mean_std(r["values"])
        margin = mean - zs_mean
        sp = max(spread(r["values"]), zs_spread)
        passed = bool(margin > sp)
        f = {"method": m, "shots": k, "accuracy": mean, "zero_shot": zs_mean, "margin": margin,
             "spread": sp, "passed": passed, "budget": r.get("budget", {})}
        if not passed:
            f["evidence"] = _evidence(r, by, m, shots_all, zs_mean, margin < -sp)
        out.append(f)
    return out


def _evidence(r: dict, by: dict, m: str, shots_all: list[int], zs_mean: float,
              below: bool = False) -> str:
    parts = []
    curve = ", ".join(f"{k}-shot {mean_std(by[(m, k)]['values'])[0]:.1f}" for k in shots_all
                      if (m, k) in by)
    parts.append(f"accuracy by shots: {curve} (zero-shot {zs_mean:.1f})")
    lf = [x for x in r.get("loss_first") or [] if x is not None]
    ll = [x for x in r.get("loss_last") or [] if x is not None]
    if lf and ll:
        a, b = float(np.mean(lf)), float(np.mean(ll))
        drop = (a - b) / abs(a) if a else 0.0
        parts.append(f"training loss {a:.3f} (first epoch) -> {b:.3f} (last epoch)")
        if drop < 0.02:
            parts.append("the loss did not fall: the optimiser made no progress under this "
                         "budget (a learning rate, initialisation or gradient-flow problem)")
        elif below:
            parts.append("the loss fell, but the test accuracy fell below zero-shot: it fits the "
                         "few training shots at the cost of what the frozen prompts knew")
        else:
            parts.append("the loss fell, but the test accuracy stayed near zero-shot: what it "
                         "learned on the few shots did not change the test predictions")
    extra = {}
    for info in r.get("info") or []:
        for k2, v in info.items():
            if k2 in ("train_loop_seconds", "val_accuracy") or not np.isfinite(v):
                continue
            extra.setdefault(k2, []).append(v)
    if extra:
        parts.append(", ".join(f"{k2} {np.mean(v):.4g}" for k2, v in sorted(extra.items())))
    vals = [x for x in (r.get("info") or []) if "val_accuracy" in x]
    if vals:
        parts.append(f"validation accuracy {100 * np.mean([x['val_accuracy'] for x in vals]):.1f}")
    if r.get("n_trainable_params") is not None:
        parts.append(f"{r['n_trainable_params']} learned parameters")
    b = r.get("budget") or {}
    if b.get("kind") == "reduced":
        parts.append(f"trained at a reduced budget ({b['steps']} of its own {b['paper_steps']} "
                     "steps): the finding may be the budget's, not the method's")
    return "; ".join(parts)


def finding_text(f: dict) -> str:
    head = (f"**{f['method']}** at {f['shots']} shots: {f['accuracy']:.1f} vs zero-shot "
            f"{f['zero_shot']:.1f} ({f['margin']:+.1f} points; seed spread {f['spread']:.1f})")
    if f["passed"]:
        return head + ": learns."
    return head + ": **not above zero-shot by more than its seed spread.** " + f["evidence"] + "."


# ------------------------------------------------------------------------------------------------
# tables


def fewshot_table(rows, shots, task="fewshot", with_budget=True, with_time=True) -> str:
    by = _by(rows, task)
    methods = list(dict.fromkeys(r["method"] for r in _ok(rows) if r.get("task") == task))
    head = ["method"] + [f"{k}-shot" for k in shots]
    if with_time:
        head.append(f"train s/seed ({max(shots)}-shot)")
    if with_budget:
        head.append("budget")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [_cell(by.get((m, k))) for k in shots]
        top = by.get((m, max(shots))) or next((by[(m, k)] for k in reversed(shots) if (m, k) in by),
                                              None)
        if with_time:
            cells.append(f"{np.mean(top['train_seconds']):.1f}" if top else "–")
        if with_budget:
            cells.append(short_budget(m, [by.get((m, k)) for k in shots]))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def short_budget(m: str, rs) -> str:
    rs = [r for r in rs if r]
    if not rs:
        return "–"
    b = [r.get("budget") or {} for r in rs]
    if all(x.get("kind") == "none" for x in b):
        return "no gradient steps"
    steps = "/".join(str(x.get("steps")) for x in b)
    dev = next((x["deviation"].split(" (")[0] for x in b if x.get("deviation")), None)
    dev = f"; demo setting {dev}" if dev else ""
    if any(x.get("kind") == "reduced" for x in b):
        own = "/".join(str(x.get("paper_steps")) for x in b)
        return f"**reduced budget: {steps} steps** (own: {own}){dev}"
    return f"own schedule: {steps} steps{dev}"


def b2n_table(rows, shots) -> str:
    by = _by(rows, "fewshot")
    names = dict.fromkeys(r["method"] for r in _ok(rows) if r.get("task") == "fewshot")
    methods = [m for m in names
               if any(any(x is not None for x in (by.get((m, k)) or {}).get("novel") or [])
                      for k in shots)]
    head = ["method"] + [f"{k}-shot {w}" for k in shots for w in ("base", "novel", "HM")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = []
        for k in shots:
            r = by.get((m, k))
            if r is None:
                cells += ["–"] * 3
                continue
            b = mean_std(r["values"])[0]
            n = [x for x in r.get("novel") or [] if x is not None]
            h = [x for x in r.get("hm") or [] if x is not None]
            cells += [f"{b:.1f}", f"{100 * np.mean(n):.1f}" if n else "–",
                      f"{100 * np.mean(h):.1f}" if h else "–"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_rows(rows) -> list[tuple[str, str, str, str]]:
    """(method, task, schedule used, own schedule) per method and task."""
    seen = {}
    for r in sorted(_ok(rows), key=lambda r: (r["task"], r["method"], r["shots"])):
        b = r.get("budget") or {}
        key = (r["method"], r["task"])
        if b.get("kind") == "none":
            used = own = "no gradient steps (closed form / search)"
        else:
            ep = (r.get("epochs_run") or [None])[0]
            bs = r.get("batch_size") or b.get("batch_size")
            used = f"{r['shots']}-shot: {b.get('steps')} steps ({ep} epochs x batch {bs})"
            own = f"{r['shots']}-shot: {b.get('paper_steps')} steps"
        if key in seen:
            if b.get("kind") != "none":
                seen[key][0].append(used)
                seen[key][1].append(own)
        else:
            seen[key] = ([used], [own], b.get("kind"))
    devs = {(r["method"], r["task"]): (r.get("budget") or {}).get("deviation") for r in _ok(rows)}
    out = []
    for (m, task), (used, own, kind) in seen.items():
        label = {"reduced": "**reduced budget**", "own": "own (paper) schedule",
                 "none": "no training loop"}.get(kind, kind)
        dev = devs.get((m, task))
        out.append((m, task, label + ": " + "; ".join(dict.fromkeys(used))
                    + (f"; **demo setting** {dev}" if dev else ""),
                    "; ".join(dict.fromkeys(own))))
    return out


# ------------------------------------------------------------------------------------------------
# figures


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _style(i):
    plt = _plt()
    markers = "osD^vP*Xh<>p"
    return dict(marker=markers[i % len(markers)], color=plt.cm.tab20(i % 20),
                linestyle="-" if i < 10 else "--")


def fewshot_figure(rows, shots, out: Path, title: str, task="fewshot", key="values",
                   ylabel="test accuracy (%)", name="fewshot_accuracy.png") -> Path | None:
    plt = _plt()
    by = _by(rows, task)
    methods = list(dict.fromkeys(m for m, _ in by))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    drawn = 0
    for i, m in enumerate(methods):
        ks, ms, ss = [], [], []
        for k in shots:
            r = by.get((m, k))
            vals = [x for x in (r or {}).get(key) or [] if x is not None]
            if vals:
                mm, s = mean_std(vals)
                ks.append(k), ms.append(mm), ss.append(s)
        if ks:
            ax.errorbar(ks, ms, yerr=ss, capsize=3, label=m, **_style(i))
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    p = out / name
    save_figure(fig, p, dpi=110)
    plt.close(fig)
    return p


def time_figure(rows, out: Path) -> Path | None:
    plt = _plt()
    ok = [r for r in _ok(rows) if r.get("task") == "fewshot"]
    if not ok:
        return None
    kmax = max(r["shots"] for r in ok)
    top = sorted((r for r in ok if r["shots"] == kmax), key=lambda r: np.mean(r["train_seconds"]))
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(top) + 1.2))
    ys = np.arange(len(top))
    ax.barh(ys, [np.mean(r["train_seconds"]) for r in top],
            color=["#d62728" if (r.get("budget") or {}).get("kind") == "reduced" else "#1f77b4"
                   for r in top])
    ax.set_yticks(ys, [r["method"] + (" (reduced)" if (r.get("budget") or {}).get("kind")
                                      == "reduced" else "") for r in top], fontsize=8)
    ax.set_xlabel(f"training seconds per seed at {kmax} shots")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    p = out / "training_time.png"
    save_figure(fig, p, dpi=110)
    plt.close(fig)
    return p


# ------------------------------------------------------------------------------------------------
# SCALE: concept-level output


def concept_examples(run_dir: Path, n: int = 4) -> dict:
    """Load a finished SCALE run and explain ``n`` test images (alternating classes): true
    class and concepts, predicted class, the top class-concept combinations."""
    import torch

    from medadapt.data.sources import load_dataset
    from medadapt.engine.features import FeatureCache
    from medadapt.engine.evaluate import _seed_dirs, load_run
    from medadapt.methods import Batch

    sdir = _seed_dirs(Path(run_dir))[0]
    cfg, texts, backbone, method, sdir = load_run(run_dir, sdir, device="cpu")
    ds = load_dataset(cfg["dataset"])
    rng = np.random.default_rng(0)
    per = [rng.permutation(ds.indices("test", [c])).tolist() for c in range(ds.num_classes)]
    idx = [per[j % len(per)][j // len(per)] for j in range(n)
           if j // len(per) < len(per[j % len(per)])]
    feats, _ = FeatureCache(precision=cfg["data"].get("precision", "auto")).encode(
        backbone, ds, idx, progress=False)
    names = method.texts.classnames
    batch = Batch(labels=torch.tensor([ds.records[i].label for i in idx]), features=feats)
    with torch.no_grad():
        prob = torch.softmax(method(batch).float(), -1).numpy()
        extra = method.extra_predictions(batch).get("rows", [{}] * len(idx))
    items = []
    for j, i in enumerate(idx):
        rec = ds.records[i]
        items.append({"id": rec.id, "index": int(i), "true_class": ds.classnames[rec.label],
                      "true_concepts": list(rec.concepts),
                      "predicted": names[int(prob[j].argmax())],
                      "p": float(prob[j].max()), "top_concepts": extra[j].get("top_concepts", "")})
    try:
        where = str(Path(sdir).relative_to(Path(run_dir).parent.parent))
    except ValueError:
        where = str(sdir)
    return {"run": where, "items": items, "dataset": cfg["dataset"]}


def concept_figure(ex: dict, out: Path) -> Path | None:
    from medadapt.data.sources import load_dataset
    items = ex.get("items") or []
    if not items:
        return None
    plt = _plt()
    ds = load_dataset(ex["dataset"])
    fig, axes = plt.subplots(1, len(items), figsize=(2.2 * len(items), 2.6))
    for ax, it in zip(np.atleast_1d(axes), items):
        ax.imshow(ds.load_image(it["index"]))
        ax.set_title(f"true: {it['true_class']}\npred: {it['predicted']} ({it['p']:.2f})",
                     fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    p = out / "scale_examples.png"
    save_figure(fig, p, dpi=110)
    plt.close(fig)
    return p


# ------------------------------------------------------------------------------------------------
# the closing section


def own_data_grid(meta: dict, methods: list[str]) -> str:
    shots = meta.get("shots") or [1, 4, 16]
    lines = ["# The demo's comparison on your own images with a real backbone.",
             "# Edit the data set line, then:",
             "#   medadapt bench own-data.yaml && medadapt report runs/own-data",
             "# Methods run their papers' schedules here (no reduced budgets): use a GPU.",
             "name: my comparison", "out: runs/own-data", "backbones: [biomedclip]",
             "datasets: [folder:/path/to/my_tiles]   # one sub-folder per class (or csv:, npz:)",
             "methods:"]
    lines += [f"  - {m}" for m in methods if m != "scale"]
    lines += [f"shots: [{', '.join(map(str, shots))}]", "seeds: [1, 2, 3]",
              "protocols: [few-shot]"]
    return "\n".join(lines) + "\n"


def own_data_section(meta: dict) -> list[str]:
    return [
        "Everything above used `synthpath-clip`, a 1.8M-parameter CLIP trained on synthetic "
        "tiles. On your images, with a real medical backbone:",
        "",
        "```bash",
        "# 1. one method, one shot count, three seeds (folder:PATH = one sub-folder per class;",
        "#    also csv:FILE.csv with path,label[,split][,concepts] or npz:FILE.npz)",
        "medadapt fit --backbone biomedclip --dataset folder:/path/to/my_tiles --method coop "
        "--shots 16 --seeds 1 2 3 --out runs/coop",
        "",
        "# 2. the whole comparison of this page: edit the data set line of own-data.yaml "
        "(written next to this report), then",
        "medadapt bench own-data.yaml && medadapt report runs/own-data",
        "",
        "# other backbones: --backbone plip | quiltnet-b16 | conch | clip-vit-b16 "
        "(medadapt backbones lists them)",
        "# base-to-novel on your classes: add --base-to-novel --set data.base='[classA, classB]'",
        "# SCALE needs a class-concept hierarchy: --method scale --set "
        "method.hierarchy=my_hierarchy.yaml (docs/scale.md)",
        "medadapt predict --run runs/coop new_tiles/ --out predictions.csv",
        "```",
        "",
        "**Weights offline.** The backbones load through their libraries' own hub code. On a "
        "machine with internet, fill the Hugging Face cache once and copy it "
        "(`~/.cache/huggingface/hub`, or `$HF_HOME`) to the offline machine:",
        "",
        "```bash",
        "pip install -U huggingface_hub",
        "huggingface-cli download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        "huggingface-cli download vinid/plip          # PLIP (transformers)",
        "# on the offline machine:",
        "export HF_HUB_OFFLINE=1",
        "medadapt fit --backbone biomedclip ...",
        "```",
        "",
        "or download into a folder and pass the folder:",
        "",
        "```bash",
        "huggingface-cli download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 "
        "--local-dir /models/biomedclip",
        "medadapt fit --backbone open_clip:local-dir:/models/biomedclip ...   # open_clip family",
        "huggingface-cli download vinid/plip --local-dir /models/plip",
        "medadapt fit --backbone /models/plip ...                             # transformers CLIP",
        "```",
        "",
        "CONCH is gated: accept its terms on the hub (`MahmoodLab/conch`), log in with "
        "`huggingface-cli login`, download as above, and install the `conch` package.",
    ]


# ------------------------------------------------------------------------------------------------
# the page


def write_demo_report(out: Path, rows: list[dict], skipped: dict[str, str], meta: dict,
                      concept_ex: dict | None = None) -> dict:
    """Write demo_results.json, failures.json, figures, report.md, report.html, own-data.yaml.
    Returns the on-screen table and summary lines."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # --out as the user named it
    shots = list(meta["shots"])
    failures = {r["key"]: r["error"] for r in rows if r.get("error")}
    findings = learning_findings(rows)
    concept_findings = learning_findings(rows, "concepts")
    order = {m: i for i, m in enumerate(meta.get("methods") or [])}
    rows = sorted(rows, key=lambda r: (order.get(r["method"], len(order)), r["method"], r["shots"]))
    write_text(out / "demo_results.json", json.dumps(
        {**meta, "rows": rows, "skipped": skipped, "failures": failures, "findings": findings,
         "concept_findings": concept_findings, "concept_examples": concept_ex}, indent=1,
        default=str))
    fpath = out / "failures.json"
    if failures:
        write_text(fpath, json.dumps(failures, indent=1))
    elif fpath.exists():
        fpath.unlink()
    for old in out.glob("*.png"):
        old.unlink()
    bb, ds, cds = meta["backbone"], meta["dataset"], meta.get("concept_dataset")
    warn = "" if meta["meaningful"] else \
        "**The backbone is random (tiny fallback world): these numbers are not meaningful.**"
    figs = {}
    figs["fewshot"] = fewshot_figure(rows, shots, out, f"{bb}: {ds}, base classes"
                                     + ("" if meta["meaningful"] else " (random backbone!)"))
    figs["novel"] = fewshot_figure(rows, shots, out, f"{bb}: {ds}, novel classes (not trained on)",
                                   key="novel", ylabel="novel-class accuracy (%)",
                                   name="novel_accuracy.png")
    figs["concepts"] = fewshot_figure(rows, shots, out, f"{bb}: {cds}", task="concepts",
                                      name="concept_task_accuracy.png") if cds else None
    figs["time"] = time_figure(rows, out)
    if concept_ex and concept_ex.get("items"):
        try:
            figs["examples"] = concept_figure(concept_ex, out)
        except Exception:  # noqa: BLE001 - a missing thumbnail must not stop the report
            figs["examples"] = None
    table = fewshot_table(rows, shots)
    methods_run = list(dict.fromkeys(r["method"] for r in rows))
    write_text(out / "own-data.yaml", own_data_grid(meta, methods_run))

    md: list[str] = []
    md += ["# medadapt demo", ""]
    if warn:
        md += [warn, ""]
    intro = (f"Backbone `{bb}`; few-shot task `{ds}` under the base-to-novel protocol: methods "
             "train "
           "on K shots per base class, the table is the accuracy on the base classes' test "
           "images, and the panel below adds the novel classes. Test accuracy in %, mean ± std "
           f"over seeds {meta['seeds']}. Total time {meta['elapsed_seconds'] / 60:.1f} min "
           f"({meta['workers']} worker process(es), device {meta['device']}, "
           f"{meta.get('cores')} CPU cores).")
    md += [intro, ""]
    sections = []  # (title, [(kind, obj)])
    sections.append(("Few-shot accuracy", [
        ("md", "Budget (optimisation steps per run, one number per shot count): *own schedule* "
               "= the method's "
               "own defaults for this protocol and shot count (its paper's released schedule, as "
               "`medadapt fit` runs it; `medadapt methods NAME` lists them with their sources); "
               "**reduced budget** = a method that runs the image encoder in every step, trained "
               f"for about {meta.get('pixel_steps')} steps (at least "
               f"{meta.get('pixel_min_epochs')} "
               "epochs) at its own batch size, learning rate and warm-up"
               + (f"; `--max-steps {meta['max_steps']}` caps every method" if meta.get("max_steps")
                  else "") + ". *Demo setting* = a stated demo-only deviation (see Budgets)."),
        ("table", table), ("figure", (figs["fewshot"], "few-shot accuracy"))]))
    items = [("md", "Computed from the results above: each trainable method's accuracy at the "
                    f"largest K ({max(shots)} shots) against zero-shot, and its seed spread "
                    "(max − min over seeds; zero-shot's when larger).")]
    items += [("li", finding_text(f)) for f in findings]
    if not findings:
        items.append(("md", "No trainable method finished at the largest K, or zero-shot did not "
                            "run: nothing to compare."))
    sections.append(("Does every method learn?", items))
    b2n = b2n_table(rows, shots)
    if b2n.count("\n") > 1:
        sections.append(("Base-to-novel", [
            ("md", "Trained on the base classes only; *novel* = accuracy on classes never seen in "
                   "training (methods whose parameters are class-specific have no novel "
                   "column). HM = harmonic mean of base and novel (mean over seeds)."),
            ("table", b2n), ("figure", (figs["novel"], "novel-class accuracy"))]))
    if cds:
        items = [("md", f"`{cds}`: benign vs malignant tiles, each labelled with the visual "
                        "concepts it shows (a class-concept hierarchy of 11 concepts). SCALE "
                        "learns class-concept prompts; zero-shot, linear probe and CLIP-Adapter "
                        "(SCALE's adapter without the concepts) for reference.")]
        items.append(("table", fewshot_table(rows, shots, "concepts", with_budget=True)))
        items += [("li", finding_text(f)) for f in concept_findings if f["method"] == "scale"]
        items.append(("figure", (figs["concepts"], "concept task accuracy")))
        if concept_ex and concept_ex.get("items"):
            lines = ["| test image | true class | true concepts | predicted | SCALE's top "
                     "class-concept combinations |", "|---|---|---|---|---|"]
            for it in concept_ex["items"]:
                lines.append(f"| `{it['id']}` | {it['true_class']} | "
                             f"{', '.join(it['true_concepts']) or '–'} | {it['predicted']} "
                             f"({it['p']:.2f}) | {it['top_concepts']} |")
            items.append(("md", f"Concept-level output of SCALE (`{concept_ex['run']}`), as "
                                "`medadapt predict` writes it:"))
            items.append(("table", "\n".join(lines)))
            items.append(("figure", (figs.get("examples"), "the test images above")))
        elif concept_ex and concept_ex.get("error"):
            items.append(("md", f"Concept-level output failed: {concept_ex['error']}"))
        sections.append(("SCALE: concept-level classification", items))
    sections.append(("Training time", [
        ("md", "Seconds of training per seed at the largest K (red: reduced budget); the table "
               "above lists the same number per method."),
        ("figure", (figs["time"], "training time"))]))
    brows = budget_rows(rows)
    bt = ["| method | task | used | own schedule |", "|---|---|---|---|"]
    bt += [f"| {m} | {t} | {u} | {o} |" for m, t, u, o in brows]
    sections.append(("Budgets", [("table", "\n".join(bt))]))
    sk = [("li", f"`{m}`: {why}") for m, why in skipped.items()]
    sk += [("li", f"`{k}` failed: {e}") for k, e in failures.items()]
    if sk:
        sections.append(("Skipped and failed", sk))
    sections.append(("Run it on your own images", [("md", "\n".join(own_data_section(meta)))]))

    for title, items in sections:
        md += [f"## {title}", ""]
        prev = None
        for kind, obj in items:
            if prev == "li" and kind != "li":
                md.append("")
            prev = kind
            if kind == "figure":
                p, alt = obj
                if p is not None:
                    md += [f"![{alt}]({p.name})", ""]
            elif kind == "li":
                md.append(f"- {obj}")
            else:
                md += [obj, ""]
        md.append("")
    write_text(out / "report.md", "\n".join(md) + "\n")
    write_text(out / "report.html", _html(md_title="medadapt demo", warn=warn, sections=sections,
                                           intro=intro))

    summary = []
    bad = [f for f in findings if not f["passed"]]
    if findings:
        summary.append(f"{len(findings) - len(bad)}/{len(findings)} trainable methods beat "
                       f"zero-shot at {max(shots)} shots by more than their seed spread"
                       + (f"; not: {', '.join(f['method'] for f in bad)} (see the report)"
                          if bad else ""))
    red = sorted({r["method"] for r in rows if (r.get("budget") or {}).get("kind") == "reduced"})
    if red:
        summary.append(f"reduced budget (about {meta.get('pixel_steps')} steps): {', '.join(red)}")
    return {"table": table, "summary_lines": summary, "findings": findings}


def _md_inline(s: str) -> str:
    """The little Markdown the demo page uses (``code``, **bold**, *em*) -> HTML."""
    import re
    s = html.escape(s)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"\*([^*]+)\*", r"<i>\1</i>", s)
    return s


def _md_table_html(t: str) -> str:
    lines = [ln for ln in t.strip().splitlines() if ln.strip()]
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    head, body = cells[0], cells[2:]
    h = ["<table><thead><tr>" + "".join(f"<th>{_md_inline(c)}</th>" for c in head)
         + "</tr></thead><tbody>"]
    for r in body:
        h.append("<tr>" + "".join((f"<th class='row'>{_md_inline(c)}</th>" if i == 0 else
                                   f"<td>{_md_inline(c)}</td>") for i, c in enumerate(r)) + "</tr>")
    h.append("</tbody></table>")
    return "".join(h)


def _md_block_html(s: str) -> str:
    out, code, buf = [], False, []
    for ln in s.splitlines():
        if ln.startswith("```"):
            if code:
                out.append("<pre><code>" + html.escape("\n".join(buf)) + "</code></pre>")
                buf = []
            code = not code
            continue
        if code:
            buf.append(ln)
        elif ln.strip():
            out.append(f"<p>{_md_inline(ln)}</p>")
    return "".join(out)


def _html(md_title: str, warn: str, sections, intro: str) -> str:
    h = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
         f"<title>{html.escape(md_title)}</title><style>{CSS}"
         "pre{background:#f5f5f5;padding:.6em;overflow-x:auto;font-size:12px}</style></head><body>",
         f"<h1>{html.escape(md_title)}</h1>"]
    if warn:
        h.append(f"<p style='color:#c00'>{_md_inline(warn)}</p>")
    h.append(f"<p>{_md_inline(intro)}</p>")
    h.append("<ul>" + "".join(f"<li><a href='#s{i}'>{html.escape(t)}</a></li>"
                              for i, (t, _) in enumerate(sections)) + "</ul>")
    for i, (title, items) in enumerate(sections):
        h.append(f"<h2 id='s{i}'>{html.escape(title)}</h2>")
        in_list = False
        for kind, obj in items:
            if kind == "li" and not in_list:
                h.append("<ul>")
                in_list = True
            elif kind != "li" and in_list:
                h.append("</ul>")
                in_list = False
            if kind == "li":
                h.append(f"<li>{_md_inline(obj)}</li>")
            elif kind == "table":
                h.append(_md_table_html(obj))
            elif kind == "figure":
                p, alt = obj
                if p is not None:
                    h.append(f"<img alt='{html.escape(alt)}' "
                             f"src='data:image/png;base64,{_img_b64(p)}'>")
            else:
                h.append(_md_block_html(obj))
        if in_list:
            h.append("</ul>")
    h.append("</body></html>")
    return "".join(h)
