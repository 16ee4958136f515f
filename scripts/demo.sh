#!/usr/bin/env bash
# The README's main job, run by `make demo` after the set-up.
set -euo pipefail
VENV=${VENV:-.venv}
OUT=${DEMO_OUT:-demo-out}
FR="$VENV/bin/facerecon"
mkdir -p "$OUT"

"$FR" info
# The shipped templates: check they match a fresh generation, then render every level to PNG.
"$FR" make-initial-mesh --check
"$FR" make-initial-mesh hemisphere ellipsoid --out "$OUT/templates" --show --screenshot "$OUT/templates"
echo "demo outputs in $OUT/:"
ls "$OUT"/templates/*.png
