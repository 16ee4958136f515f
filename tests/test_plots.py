"""Training curves drawn with OpenCV: each curve's markers lie where its data puts them, measured
against the panel's own reference lines (linear and log axes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from facerecon.plots import plot_metrics, read_metrics

FIRST_SERIES = (31, 119, 180)  # the first series' colour (matplotlib's tab:blue)
REFERENCE = (90, 90, 90)  # dashed reference lines


def _rows_of_dashed_lines(panel: np.ndarray) -> list[float]:
    """Rows where the reference grey (anti-aliased: within 30 levels) runs along a good part of the
    panel width: the dashed lines, each the mean of its run of adjacent rows."""
    grey = (np.abs(panel.astype(int) - np.array(REFERENCE)).max(axis=2) < 30).sum(axis=1) > panel.shape[1] // 4
    rows = np.flatnonzero(grey)
    runs = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1) if rows.size else []
    return [float(r.mean()) for r in runs]


def _check_curve(panel: np.ndarray, values: list[float], ceiling: float, floor: float, log_y: bool) -> None:
    """``values`` at epochs 1, 2, 3: the markers' rows follow the value axis that the dashed lines
    at ``ceiling`` and ``floor`` define, and the markers are evenly spaced in x (epochs 1, 2, 3)."""
    f = math.log10 if log_y else (lambda v: v)
    y_ceiling, y_floor = _rows_of_dashed_lines(panel)
    assert y_floor - y_ceiling > 50

    def row_of(v: float) -> float:
        return y_floor + (f(v) - f(floor)) / (f(ceiling) - f(floor)) * (y_ceiling - y_floor)

    mask = (panel == FIRST_SERIES).all(axis=2)
    mask[: int(y_ceiling + y_floor) // 2] = False  # the legend is in the upper half; the curve is not
    rows, cols = np.nonzero(mask)
    assert rows.size > 50
    first, last = cols.min() + 3, cols.max() - 3  # marker radius 3 px
    assert last - first > panel.shape[1] // 2  # the curve spans the plot's width
    for epoch, v in zip((1, 2, 3), values):
        x = round(first + (last - first) * (epoch - 1) / 2)
        at = rows[np.abs(cols - x) <= 1]
        assert at.size > 0, f"no marker at epoch {epoch}"
        assert abs(at.mean() - row_of(v)) < 2.0, (epoch, v, at.mean(), row_of(v))


def test_curves_lie_where_the_data_puts_them(tmp_path: Path) -> None:
    records = [{"epoch": e, "loss": 10.0 ** (1 - e), "val_nme": 20.0 - e} for e in (2, 1, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    out = tmp_path / "curves.png"
    plot_metrics(records, out, [("loss", ["loss"], True), ("nme", ["val_nme"], False)],
                 references={"loss": {"ceiling": 1000.0, "floor": 0.001}, "nme": {"ceiling": 40.0, "floor": 10.0}},
                 panel_size=(300, 240))
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (240, 600, 3)
    # log axis: 1, 0.1, 0.01 are evenly spaced (on a linear axis 0.1 would sit next to 0.01)
    _check_curve(img[:, :300], [1.0, 0.1, 0.01], 1000.0, 0.001, log_y=True)
    # linear axis: 19, 18, 17 evenly spaced, close to the floor at 10, far from the ceiling at 40
    _check_curve(img[:, 300:], [19.0, 18.0, 17.0], 40.0, 10.0, log_y=False)
