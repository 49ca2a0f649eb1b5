"""What a process needs to start Flower's processes here: a free loopback port and the environment (DESIGN §4, §6).

Torch-free, so the notebook setup and the launchers share it without loading a model stack.
"""

from __future__ import annotations

import socket

__all__ = ["free_port", "FLWR_ENV"]

# Wherever flwr runs (DESIGN §4): no dependency installs, no telemetry, no update checks (no network);
# one BLAS thread per process (DESIGN §6).
FLWR_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # Ray's future default, set now (silences its FutureWarning)
}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (the OS picks it; it is not reserved)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
