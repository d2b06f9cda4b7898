#!/usr/bin/env bash
# Installs the Python examples' dependencies (FastAPI, uvicorn, CPU torch, Pillow, numpy), the
# Python client's test tools (pytest, mypy) and the client itself (clients/python, editable)
# from PyPI into a virtualenv outside the repo, once; later runs only check it.
# SLUICE_VENV overrides where (default ~/.cache/sluice/venv). Prints the venv's python.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${SLUICE_VENV:-$HOME/.cache/sluice/venv}"
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "python-deps: $PYTHON not found; the Python examples need Python >= 3.10" >&2
  exit 1
fi

# The venv is shared by every checkout on the machine: one installer at a time.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi

# The markers record what was installed, so an unchanged list costs no network round trip.
# hatchling is the client's build backend, there so its editable install needs no network.
REQUIREMENTS="fastapi>=0.110 uvicorn>=0.30 httpx>=0.27 httpx-sse>=0.4 numpy pillow torch>=2.4 pytest>=8 mypy>=1.10 hatchling>=1.27"
MARKER="$VENV/.sluice-requirements"
if [ ! -f "$MARKER" ] || [ "$(cat "$MARKER")" != "$REQUIREMENTS" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  # torch comes from PyPI (the only index reachable here); on Linux its wheel pulls the CUDA
  # runtime packages too (~3 GB, once), so the same venv also runs token-stream on a GPU.
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install --quiet $REQUIREMENTS >&2
  echo "$REQUIREMENTS" >"$MARKER"
fi

# The client, editable: edits to its sources need nothing. Reinstalled (offline, a second or
# two) only when another checkout installed its own copy or pyproject.toml changed.
CLIENT="$ROOT/clients/python"
CLIENT_MARKER="$VENV/.sluice-client"
CLIENT_WANTED="$CLIENT $(sha256sum "$CLIENT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$CLIENT_MARKER" ] || [ "$(cat "$CLIENT_MARKER")" != "$CLIENT_WANTED" ]; then
  "$VENV/bin/python" -m pip install --quiet --no-build-isolation --editable "$CLIENT" >&2
  echo "$CLIENT_WANTED" >"$CLIENT_MARKER"
fi
echo "$VENV/bin/python"
