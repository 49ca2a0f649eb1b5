"""Reproducible randomness: seeds derived from names, client sampling, and RNG state capture.

Everything random in a federated run is a function of the run's seed and *where* the randomness is
used — ``derive_seed("client", seed, round, client_id)``, ``derive_seed("partial", seed, round,
client_id)``, ... — so a client's work depends only on ``(global weights, seed, round, client)``, in
any process, and a resumed run reaches the same weights as an uninterrupted one. This module is the
bottom of the package's import graph: it imports nothing from fedasr.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["derive_seed", "sample_clients", "capture_rng_state", "restore_rng_state"]


def derive_seed(*parts: Any) -> int:
    """Return a 63-bit seed from ``parts`` (stable across processes, unlike Python's salted ``hash``)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_clients(client_ids: Sequence[str], k: int, seed: int, server_round: int) -> list[str]:
    """Sample ``min(k, N)`` distinct clients for ``server_round``, reproducibly from ``(seed, round)``."""
    ids = sorted(client_ids)  # the sample must not depend on the order ids were listed in
    rng = random.Random(derive_seed("sample", seed, server_round))
    return rng.sample(ids, min(k, len(ids)))


def capture_rng_state() -> dict:
    """Return the Python, NumPy and torch global RNG states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states captured by `capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
