"""The report's t-SNE figure (the papers' Fig. 4): frozen features before, a method's adapted
image features after when it exposes them (CLIP-Adapter), predictions over frozen features when
it does not (zero-shot); plus report on plain `medadapt fit` folders."""
import json

import numpy as np
import pytest
import torch

from conftest import CRC, run_cli


def test_tsne_before_after(tmp_path, shared_data):
    runs = tmp_path / "runs"
    common = ["--backbone", "tiny-hf-clip", "--dataset", f"folder:{CRC}", "--shots", "2",
              "--seeds", "1", "--quiet"]
    assert run_cli("fit", *common, "--method", "zero-shot", "--out", runs / "zs") == 0
    assert run_cli("fit", *common, "--method", "clip-adapter", "--set", "train.epochs=3",
                   "--out", runs / "ca") == 0
    assert run_cli("report", runs, "--quiet", "--tsne-max", "40") == 0
    rj = json.loads((runs / "report" / "report.json").read_text())
    tsne = [f for f in rj["figures"] if f["kind"] == "tsne"]
    assert len(tsne) == 1
    panels = tsne[0]["data"]["panels"]
    sil = tsne[0]["data"]["silhouette"]
    assert panels[0].startswith("before: frozen image features")
    after = [i for i, p in enumerate(panels) if p.startswith("after: clip-adapter adapted")]
    pred = [i for i, p in enumerate(panels) if p.startswith("zero-shot: frozen features, predicted")]
    assert after and pred
    assert sil[pred[0]] is None  # no new features, so no new clusters to score
    # the sample has one test image per class: silhouettes are undefined there (None)
    assert all(s is None or -1.0 <= s <= 1.0 for s in sil)
    # the panel's accuracy equals the run's test accuracy (same test images, all of them)
    acc = json.loads((runs / "zs" / "results.json").read_text())["metrics"]["accuracy"] * 100
    assert f"(acc {acc:.1f}%)" in panels[pred[0]]
    # plain fit folders: labelled by method name, one-seed cells without ±
    md = (runs / "report" / "report.md").read_text()
    assert "| clip-adapter |" in md and "| zero-shot |" in md
    assert (runs / "report" / tsne[0]["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
