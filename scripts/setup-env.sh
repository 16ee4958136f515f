#!/usr/bin/env bash
# Set up everything facerecon needs, idempotently: Debian packages (when apt is available and we
# are root), a virtualenv, torch + torchvision from PyPI, facerecon with its test extras, and the
# compiled nearest-neighbour extension. A second run only checks and returns in seconds.
#
#   VENV=.venv PYTHON=python3 scripts/setup-env.sh
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }

# 1. System libraries: Open3D needs libusb-1.0 to import; the renderer (moderngl) needs Mesa's EGL
#    and its software OpenGL driver; venv needs python3-venv on Debian.
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in libusb-1.0-0 libgomp1 libegl1 libegl-mesa0 libgl1-mesa-dri; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then missing+=(python3-venv); fi
fi
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "warning: missing system packages ${missing[*]} (install them with apt as root)"
  fi
fi

# 2. The virtualenv.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip "setuptools>=77" wheel
fi
PY="$VENV/bin/python"
# setuptools 77 reads the SPDX licence string of pyproject.toml (an older virtualenv is upgraded).
if ! "$PY" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null; then
  "$PY" -m pip install -q --upgrade "setuptools>=77" wheel
fi

# 3. torch + torchvision, explicitly and together, from PyPI (the default build, CUDA-enabled, which
#    also runs on the CPU). Installing them first keeps pip from picking a CPU-only local torch wheel
#    that PyPI's torchvision cannot load.
if ! "$PY" -c 'import torch, torchvision.ops; torchvision.ops.nms' >/dev/null 2>&1; then
  say "installing torch and torchvision (a few minutes the first time)"
  "$PY" -m pip install -q torch torchvision
fi

# 4. facerecon itself, editable, with its test extras (which include the `train` extra: torch,
#    facenet-pytorch, h5py, onnx, ...; a plain `pip install .` would give prediction alone); only
#    when pyproject.toml changed.
stamp="$VENV/.facerecon-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! "$PY" -c 'import facerecon' >/dev/null 2>&1; then
  say "installing facerecon and its dependencies"
  "$PY" -m pip install -q --no-build-isolation -e ".[test]"
  touch "$stamp"
fi

# 5. The compiled extension (a cached JIT build: ~30 s once, then instant). A machine without a
#    compiler still works through the pure-torch fallback, so a failed build is only a warning.
if [ -f facerecon/ops/build.py ]; then
  "$PY" -m facerecon.ops || say "warning: compiled extension unavailable; using the pure-torch fallback"
fi

# 6. Byte-code for facerecon's own modules, as a non-editable pip install writes it: an editable
#    install leaves it to the first import, and with PYTHONDONTWRITEBYTECODE set (as in some CI and
#    container images) every `facerecon` process would compile its modules again (~0.1-0.2 s).
#    Quick when nothing changed; a source edited later is simply compiled in memory, never stale.
"$PY" -m compileall -q facerecon >/dev/null || say "warning: could not write byte-code for facerecon"
