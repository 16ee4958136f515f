#!/usr/bin/env bash
# The README's main job, run by `make demo` after the set-up: reconstruct the face in the bundled
# public-domain photo with the shipped default model, draw it over the photo, and render a view.
set -euo pipefail
VENV=${VENV:-.venv}
OUT=${DEMO_OUT:-demo-out}
FR="$VENV/bin/facerecon"
PHOTO=facerecon/assets/astronaut.png
mkdir -p "$OUT"

"$FR" info
"$FR" make-initial-mesh --check   # the shipped templates match a fresh generation
if "$VENV/bin/python" -c 'from facerecon.engine.results import default_checkpoint as d; raise SystemExit(d() is None)'; then
  "$FR" -v predict "$PHOTO" -o "$OUT/astronaut.obj" --overlay "$OUT/astronaut_overlay.png" --stages
  "$FR" view "$OUT/astronaut.obj" --image "$PHOTO" --screenshot "$OUT/astronaut_view.png"
  "$FR" view "$OUT/astronaut.obj" --screenshot "$OUT/astronaut_mesh.png"
  "$FR" predict "$PHOTO" -o "$OUT/astronaut_textured.obj" --texture --uv-texture "$OUT/astronaut_uv.png" \
    --maps depth,pncc,normals
  "$FR" view "$OUT/astronaut_textured.obj" --screenshot "$OUT/astronaut_textured_view.png"
  echo
  echo "demo outputs in $OUT/:"
  echo "  astronaut.obj          the mesh, in the photo's pixel frame (astronaut.json: box, landmarks, pose)"
  echo "  astronaut.stage*.obj   the mesh at each level (141, 491, 1821, 7001 vertices)"
  echo "  astronaut_overlay.png  the mesh and its 68 landmarks drawn over the photo"
  echo "  astronaut_view.png     an offscreen Open3D render of the mesh over the photo"
  echo "  astronaut_mesh.png     an offscreen Open3D render of the mesh alone"
  echo "  astronaut_textured.obj the mesh textured with the photo (.mtl, .texture.png beside it)"
  echo "  astronaut_textured_view.png  an offscreen render of the textured mesh (the photo's detail)"
  echo "  astronaut_uv.png       the face's colours in the template's fixed UV layout (alpha: seen)"
  echo "  astronaut_textured.{depth,pncc,normals}.png  the maps at the photo's size"
else
  echo "no default model is installed: showing the template meshes instead"
  "$FR" make-initial-mesh hemisphere ellipsoid --out "$OUT/templates" --show --screenshot "$OUT/templates"
  ls "$OUT"/templates/*.png
fi
