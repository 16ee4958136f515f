#!/usr/bin/env python
"""Plot a run's metrics.jsonl as a PNG (loss, validation Chamfer, F-score at 2 tau, NME), with the
mean-face baseline as dashed lines when its eval report is given.

    python scripts/plot_training.py RUN/metrics.jsonl out.png [--baseline baseline_val.json]
"""

from __future__ import annotations

import argparse
import json

from facerecon.plots import plot_metrics, read_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics")
    parser.add_argument("out")
    parser.add_argument("--baseline", help="JSON report of 'facerecon eval --baseline mean --split val -o ...'")
    args = parser.parse_args()
    records = read_metrics(args.metrics)
    refs: dict[str, dict[str, float]] = {}
    if args.baseline:
        base = json.load(open(args.baseline))["results"]["mean-face baseline"]
        refs = {
            "val Chamfer (crop units^2)": {"mean-face baseline": base["chamfer"]},
            "val F-score @ 2 tau": {"mean-face baseline": base["fscore@2tau"]},
            "val NME (%)": {"mean-face baseline": base["nme"]},
        }
    panels = [
        ("training loss (total, chamfer)", ["loss", "chamfer"], True),
        ("val Chamfer (crop units^2)", ["val_chamfer"], False),
        ("val F-score @ 2 tau", ["val_fscore@2tau", "val_fscore@tau"], False),
        ("val NME (%)", ["val_nme"], False),
    ]
    plot_metrics(records, args.out, panels, references=refs, panel_size=(420, 300))


if __name__ == "__main__":
    main()
