#!/usr/bin/env python
"""Plot a run's metrics.jsonl as a PNG (loss terms, validation Chamfer, F-score at 2 tau, NME),
with every baseline of an eval report (mean face, five-point) as dashed lines when it is given.

    python scripts/plot_training.py RUN/metrics.jsonl out.png [--baseline baselines_val.json]
"""

from __future__ import annotations

import argparse
import json

from facerecon.plots import plot_metrics, read_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics")
    parser.add_argument("out")
    parser.add_argument("--baseline", help="JSON report of 'facerecon eval --baseline all --split val -o ...'")
    args = parser.parse_args()
    records = read_metrics(args.metrics)
    refs: dict[str, dict[str, float]] = {}
    if args.baseline:
        results = json.load(open(args.baseline))["results"]
        names = {"val Chamfer (crop units^2)": "chamfer", "val F-score @ 2 tau": "fscore@2tau", "val NME (%)": "nme"}
        for panel, key in names.items():
            refs[panel] = {label: r[key] for label, r in results.items() if label.endswith("baseline") and key in r}
    terms = [k for k in ("loss", "chamfer", "vertex", "base", "landmark") if any(k in r and r[k] for r in records)]
    panels = [
        ("training loss (total and terms)", terms, True),
        ("val Chamfer (crop units^2)", ["val_chamfer"], False),
        ("val F-score @ 2 tau", ["val_fscore@2tau", "val_fscore@tau"], False),
        ("val NME (%)", ["val_nme"], False),
    ]
    plot_metrics(records, args.out, panels, references=refs, panel_size=(420, 300))


if __name__ == "__main__":
    main()
