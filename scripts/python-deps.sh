#!/usr/bin/env bash
# Installs the Python examples' dependencies (FastAPI, uvicorn, CPU torch, Pillow, numpy)
# from PyPI into a virtualenv outside the repo, once; later runs only check it.
# SLUICE_VENV overrides where (default ~/.cache/sluice/venv). Prints the venv's python.
set -euo pipefail

VENV="${SLUICE_VENV:-$HOME/.cache/sluice/venv}"
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "python-deps: $PYTHON not found; the Python examples need Python >= 3.10" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi

# The marker records what was installed, so an unchanged list costs no network round trip.
REQUIREMENTS="fastapi>=0.110 uvicorn>=0.30 httpx>=0.27 httpx-sse>=0.4 numpy pillow torch>=2.4 mlserver>=1.7,<1.8"
MARKER="$VENV/.sluice-requirements"
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$REQUIREMENTS" ]; then
  echo "$VENV/bin/python"
  exit 0
fi

"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
# torch comes from PyPI (the only index reachable here); on Linux its wheel pulls the CUDA
# runtime packages too (~3 GB, once), so the same venv also runs token-stream on a GPU.
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet $REQUIREMENTS >&2
echo "$REQUIREMENTS" >"$MARKER"
echo "$VENV/bin/python"
