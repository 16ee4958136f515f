"""Training curves drawn with OpenCV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from facerecon.plots import plot_metrics, read_metrics


def test_plot_metrics_writes_a_nonblank_png(tmp_path: Path) -> None:
    lines = [json.dumps({"epoch": e, "loss": 1.0 / e, "val_chamfer": 0.1 / e, "val_nme": 20 - e}) for e in (2, 1, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    out = tmp_path / "curves.png"
    plot_metrics(records, out, [("loss", ["loss"], True), ("val", ["val_chamfer"], True), ("nme", ["val_nme"], False)],
                 references={"nme": {"baseline": 17.0}}, panel_size=(300, 200))
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (200, 900, 3)
    coloured = (np.abs(img.astype(int) - img.mean(axis=2, keepdims=True)) > 30).any(axis=2)
    assert coloured[:, :300].any() and coloured[:, 300:600].any() and coloured[:, 600:].any()  # a curve per panel
