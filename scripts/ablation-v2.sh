#!/usr/bin/env bash
# The model-v2 ablation of docs/default-model.md: short runs of the same length (EPOCHS epochs,
# default 4) of the v2 recipe with one part switched off each, evaluated on the validation split
# (the test split stays untouched for the final numbers). The spiral decoder is compared at full
# length instead (docs/model.md, facerecon/configs/aflw-v2-spiral.toml).
#
#   scripts/ablation-v2.sh CACHE OUT_DIR [EPOCHS]
set -euo pipefail
CACHE=${1:?usage: ablation-v2.sh CACHE OUT_DIR [EPOCHS]}
OUT=${2:?usage: ablation-v2.sh CACHE OUT_DIR [EPOCHS]}
EPOCHS=${3:-4}
CONFIG=facerecon/configs/aflw-v2.toml
mkdir -p "$OUT"
last=$((EPOCHS > 1 ? EPOCHS - 1 : 1))
common=(--set "train.epochs=$EPOCHS" --set "train.milestones=[$last]" --val-limit 45)
declare -A variants=(
  [full]=""
  [no-augmentation]="--set train.augment=false"
  [no-prior-start]="--set model.start=\"template\" --set train.fit_template=true --set model.hidden=48 --set model.layers_per_block=4 --set loss.base=0.0"
  [no-correspondence]="--set loss.vertex=0.0 --set loss.base=0.0 --set loss.gt_normal=0.0 --set loss.chamfer=1.0 --set loss.normal=1.6e-4"
  [no-five-point]="--set model.five_point=false"
)
for name in full no-augmentation no-prior-start no-correspondence no-five-point; do
  run="$OUT/$name"
  if [ ! -f "$run/done" ]; then
    rm -rf "$run"
    # shellcheck disable=SC2086
    eval facerecon train --cache "$CACHE" --out "$run" --config "$CONFIG" "${common[@]}" ${variants[$name]}
    touch "$run/done"
  fi
  facerecon eval --cache "$CACHE" --checkpoint "$run/last.pt" --split val -o "$OUT/$name.json" >/dev/null
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'variant':20s} {'NME':>6s} {'0-30':>6s} {'30-60':>6s} {'60-90':>6s} {'CD x1e3':>8s} {'F@2tau':>7s} {'folds %':>8s}")
for name in ("full", "no-augmentation", "no-prior-start", "no-correspondence", "no-five-point"):
    r = json.loads((out / f"{name}.json").read_text())["results"]["model"]
    print(f"{name:20s} {r['nme']:6.2f} {r.get('nme_yaw_0_30', float('nan')):6.2f} {r.get('nme_yaw_30_60', float('nan')):6.2f} "
          f"{r.get('nme_yaw_60_90', float('nan')):6.2f} {1000 * r['chamfer']:8.2f} {100 * r['fscore@2tau']:7.2f} {r['folds']:8.3f}")
PY
