#!/usr/bin/env python
"""Markdown tables from ``facerecon eval -o report.json`` files, as docs/default-model.md shows them.

    python scripts/report_tables.py test.json [more.json ...] [--label NAME=file.json:run ...]

Each column is one run of a report (``model``, ``five-point baseline``, ``mean-face baseline``);
``--label`` picks a run of a report under a new name, e.g. ``--label "model v1=v1.json:model"``.
"""

from __future__ import annotations

import argparse
import json

ROWS = (
    ("nme", "NME, 68 landmarks, x-y (%)", 1.0, "{:.2f}"),
    ("nme_yaw_0_30", "NME, abs(yaw) 0-30 deg (%)", 1.0, "{:.2f}"),
    ("nme_yaw_30_60", "NME, abs(yaw) 30-60 deg (%)", 1.0, "{:.2f}"),
    ("nme_yaw_60_90", "NME, abs(yaw) 60-90 deg (%)", 1.0, "{:.2f}"),
    ("nme_yaw_mean", "NME, mean of the yaw bins (%)", 1.0, "{:.2f}"),
    ("chamfer", "Chamfer distance (crop units², ×1000)", 1000.0, "{:.1f}"),
    ("fscore@tau", "F-score @ tau = 0.01 (%)", 100.0, "{:.2f}"),
    ("fscore@2tau", "F-score @ 2 tau (%)", 100.0, "{:.2f}"),
    ("folds", "folded interior edges, > 60 deg (%)", 1.0, "{:.3f}"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="*")
    parser.add_argument("--label", action="append", default=[], help="NAME=report.json:run")
    args = parser.parse_args()
    columns: list[tuple[str, dict]] = []
    for path in args.reports:
        for run, summary in json.load(open(path))["results"].items():
            columns.append((run, summary))
    for item in args.label:
        name, _, rest = item.partition("=")
        path, _, run = rest.rpartition(":")
        columns.append((name, json.load(open(path))["results"][run]))
    n = columns[0][1].get("num_samples", "?")
    print(f"| metric ({n} samples) | " + " | ".join(name for name, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for key, title, factor, fmt in ROWS:
        cells = [fmt.format(s[key] * factor) if key in s else "-" for _, s in columns]
        print(f"| {title} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
