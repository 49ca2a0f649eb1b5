"""The server's checkpoint: weights, server optimizer state, round, RNG state and the config that produced it.

``run.resume = true`` continues a run from it to the same weights an uninterrupted run reaches
(`fedasr.seeding.capture_rng_state` / `restore_rng_state` carry the RNG streams across).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fedasr import config as config_lib
from fedasr import results

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: str | Path, weights: Mapping[str, torch.Tensor], server_opt_state: Mapping[str, Any],
                    server_round: int, rng_state: Mapping[str, Any], config: Any) -> Path:
    """Write the server state after ``server_round`` atomically (temp file + rename).

    ``config`` is stored beside the weights (a dataclass is converted to a dict) so a checkpoint says
    what produced it, as nanoGPT does.
    """
    path = Path(path)
    cfg = config_lib.to_dict(config) if dataclasses.is_dataclass(config) else config
    with results.atomic_write(path) as tmp:
        torch.save({"weights": {k: v.detach().cpu() for k, v in weights.items()}, "server_opt": server_opt_state,
                    "round": int(server_round), "rng": rng_state, "config": cfg}, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by `save_checkpoint` (keys: weights, server_opt, round, rng, config)."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)
