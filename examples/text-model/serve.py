"""Runs `mlserver start` on this folder with the port Sluice gives the function.

    python3 text-model/serve.py rest   # REST on $PORT (default 9000): text-model.yaml
    python3 text-model/serve.py grpc   # gRPC on $PORT (default 9000): text-model-grpc.yaml

MLServer always opens both servers; the one this function does not serve gets a free port of
its own, so replicas on one machine (sluice serve --replicas N) do not collide.
"""

import os
import shutil
import socket
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


mode = sys.argv[1] if len(sys.argv) > 1 else "rest"
if mode not in ("rest", "grpc"):
    sys.exit(f"serve.py: expected rest or grpc, got {mode!r}")
port = os.environ.get("PORT", "9000")
other = str(free_port())
# An MLSERVER_*_PORT already set for the other side is kept (one process serving both sides).
if mode == "rest":
    os.environ["MLSERVER_HTTP_PORT"] = port
    os.environ.setdefault("MLSERVER_GRPC_PORT", other)
else:
    os.environ["MLSERVER_GRPC_PORT"] = port
    os.environ.setdefault("MLSERVER_HTTP_PORT", other)
os.environ.setdefault("MLSERVER_HOST", "127.0.0.1")

# The mlserver script installed beside this Python (a virtualenv), else the one on PATH.
beside = Path(sys.executable).parent / "mlserver"
mlserver = str(beside) if beside.exists() else shutil.which("mlserver")
if not mlserver:
    sys.exit("serve.py: mlserver is not installed (bash scripts/python-deps.sh installs it)")
model_dir = str(Path(__file__).resolve().parent)
os.execv(mlserver, [mlserver, "start", model_dir])
