"""Drop a model v2 network's graph blocks past its first N template levels.

The levels past the last kept block become the base face plus that block's refinement, carried
by the unpoolings (``model.graph.refined_levels``). On a face-model ground truth the finer blocks
learn next to nothing and cost most of the network's time (docs/default-model.md): compare
``facerecon eval`` before and after, then re-export the ONNX model.

    python scripts/prune_refinement.py runs/aflw-v2/last.pt pruned.pt --levels 1
    facerecon eval --cache aflw2000.h5 --checkpoint pruned.pt --split val
    facerecon export pruned.onnx --checkpoint pruned.pt
"""

from __future__ import annotations

import argparse
import sys

from facerecon.engine.checkpoint import prune_refinement
from facerecon.errors import InputError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a model v2 ('prior_graph') checkpoint")
    parser.add_argument("output", help="the pruned checkpoint to write (inference-only)")
    parser.add_argument("--levels", type=int, default=1, help="template levels that keep their graph block (default 1)")
    args = parser.parse_args()
    try:
        written = prune_refinement(args.source, args.output, args.levels)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: graph blocks on the first {written['config']['model']['graph']['refined_levels']} level(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
