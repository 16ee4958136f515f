"""Training curves as a PNG, drawn with OpenCV (no plotting library needed).

``plot_metrics(records, path, panels)`` draws one panel per group of series from the per-epoch
records of ``metrics.jsonl`` (and optional horizontal reference lines, e.g. a baseline).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl``, one per epoch, in order."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(records, key=lambda r: r["epoch"])


def _panel(
    canvas: np.ndarray,
    origin: tuple[int, int],
    size: tuple[int, int],
    title: str,
    epochs: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    references: dict[str, float],
    log_y: bool,
) -> None:
    import cv2

    x0, y0 = origin
    w, h = size
    left, right, top, bottom = 70, 15, 30, 40
    px0, py0, pw, ph = x0 + left, y0 + top, w - left - right, h - top - bottom
    cv2.rectangle(canvas, (px0, py0), (px0 + pw, py0 + ph), (0, 0, 0), 1)
    cv2.putText(canvas, title, (px0, y0 + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    values = [v for s in series.values() for v in s if v is not None and math.isfinite(v)] + list(references.values())
    if not values or not epochs:
        return
    f = (lambda v: math.log10(max(v, 1e-12))) if log_y else (lambda v: v)
    lo, hi = min(map(f, values)), max(map(f, values))
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    e_lo, e_hi = min(epochs), max(epochs)
    e_hi = e_hi if e_hi > e_lo else e_lo + 1

    def to_px(e: float, v: float) -> tuple[int, int]:
        return (int(px0 + (e - e_lo) / (e_hi - e_lo) * pw), int(py0 + ph - (f(v) - lo) / (hi - lo) * ph))

    for k in range(5):  # y ticks
        t = lo + (hi - lo) * k / 4
        label = f"{10 ** t:.3g}" if log_y else f"{t:.3g}"
        y = int(py0 + ph - k / 4 * ph)
        cv2.line(canvas, (px0, y), (px0 + pw, y), (225, 225, 225), 1)
        cv2.putText(canvas, label, (x0 + 5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
    for e in sorted(set(int(round(e)) for e in epochs)):
        x, _ = to_px(e, values[0])
        cv2.putText(canvas, str(e), (x - 4, py0 + ph + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.putText(canvas, "epoch", (px0 + pw // 2 - 20, py0 + ph + 32), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    legend_y = py0 + 15
    for i, (name, vals) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]  # the canvas is RGB
        pts = [to_px(e, v) for e, v in zip(epochs, vals) if v is not None and math.isfinite(v)]
        for a, b in zip(pts, pts[1:]):
            cv2.line(canvas, a, b, color, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(canvas, p, 3, color, -1, cv2.LINE_AA)
        cv2.putText(canvas, name, (px0 + pw - 190, legend_y), cv2.FONT_HERSHEY_SIMPLEX, 0.42, color, 1, cv2.LINE_AA)
        legend_y += 16
    for j, (name, value) in enumerate(references.items()):
        color = (90, 90, 90)
        _, y = to_px(e_lo, value)
        for x in range(px0, px0 + pw, 12):
            cv2.line(canvas, (x, y), (min(x + 6, px0 + pw), y), color, 1, cv2.LINE_AA)
        cv2.putText(canvas, name, (px0 + pw - 190, legend_y), cv2.FONT_HERSHEY_SIMPLEX, 0.42, color, 1, cv2.LINE_AA)
        legend_y += 16


def plot_metrics(
    records: list[dict],
    path: str | Path,
    panels: Sequence[tuple[str, Sequence[str], bool]],
    references: dict[str, dict[str, float]] | None = None,
    panel_size: tuple[int, int] = (460, 300),
) -> None:
    """Draw ``panels`` = [(title, [metric keys], log_y)] side by side and write a PNG (atomically).

    ``references[title]`` maps a label to a constant drawn as a dashed line (e.g. a baseline).
    """
    from facerecon.overlay import save_image

    references = references or {}
    w, h = panel_size
    canvas = np.full((h, w * len(panels), 3), 255, dtype=np.uint8)
    epochs = [float(r["epoch"]) for r in records]
    for i, (title, keys, log_y) in enumerate(panels):
        series = {k: [r.get(k) for r in records] for k in keys}
        _panel(canvas, (i * w, 0), (w, h), title, epochs, series, references.get(title, {}), log_y)
    save_image(path, canvas)
