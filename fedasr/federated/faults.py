"""Client faults on purpose (``[fed.faults]``): which sampled client misbehaves how, and the misbehaviour itself.

Real phones crash, answer late and send garbage (issue 21). A fault is drawn per ``(seed, round, client)``
(`draw_fault`), so every process and a resumed run inject the same ones, and is applied by the ClientApp around
the real update (`run_with_fault`); the server is not told, and its own checks must exclude the result:

=============  =====================================================  =====================================
kind           what the client does                                   how the server excludes it
=============  =====================================================  =====================================
``crash``      raises `InjectedFault` before training                 error reply → ``error: InjectedFault``
``straggler``  trains, then replies after ``fed.round-timeout-s``     no reply in time → ``timeout``
``nan``        its update holds a NaN                                 ``non-finite:<variable>``
``inf``        its update holds an Inf                                ``non-finite:<variable>``
``shape``      one variable is flattened and cut by one element       ``shape-mismatch:<variable>``
``norm``       its update is multiplied by ``norm-scale`` (1e6)       ``norm-outlier`` (`aggregation.norm_outliers`)
=============  =====================================================  =====================================

Stragglers follow the device tiers of `fedasr.clients`: ``straggler`` is the population-mean probability, and a
client's own is scaled by ``1 / speed`` of its tier (a low-tier phone at half speed straggles 1.7x as often as the
mean). ``max-norm-ratio`` is the server's side: an update whose L2 norm exceeds that multiple of the median norm
of the round is excluded (`fedasr.federated.aggregation.norm_outliers`).
"""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fedasr.clients import DEVICE_TIERS, Population
from fedasr.seeding import derive_seed

__all__ = ["FaultConfig", "FAULT_KINDS", "InjectedFault", "draw_fault", "tier_factor", "run_with_fault",
           "corrupt_update"]

FAULT_KINDS = ("crash", "straggler", "nan", "inf", "shape", "norm")
# E[1 / speed] over the device tiers' shares: a client's straggler probability is straggler * (1/speed) / this
_MEAN_INV_SPEED = sum(t.share / t.speed for t in DEVICE_TIERS)
_MAX_TIER_FACTOR = max(1.0 / t.speed for t in DEVICE_TIERS) / _MEAN_INV_SPEED


class InjectedFault(RuntimeError):
    """The ``crash`` fault: a client that fails on purpose (the server records ``error: InjectedFault``)."""


@dataclass
class FaultConfig:
    """Fault injection per (round, client) and the server's norm bound (``[fed.faults]``; all off by default)."""

    crash: float = 0.0  # P(a sampled client raises) per round
    straggler: float = 0.0  # mean P(a sampled client replies after fed.round-timeout-s); scaled by 1/tier speed
    nan: float = 0.0  # P(the update holds a NaN)
    inf: float = 0.0  # P(the update holds an Inf)
    shape: float = 0.0  # P(one variable has the wrong shape)
    norm: float = 0.0  # P(the update is scaled by norm-scale: an absurd norm)
    norm_scale: float = 1e6  # the factor of the "norm" fault
    straggler_margin_s: float = 1.0  # a straggler replies this long after the round timeout (from its start)
    # server side: exclude an update whose L2 norm > max-norm-ratio x the round's (lower) median norm, when >= 3
    # updates with the same variables arrived (with 2 the median cannot tell which is absurd). 0 = off. FedSGD
    # gradients and FedAvg deltas of honest clients differ in norm by a few x (more for tiny clients), not 100x.
    max_norm_ratio: float = 100.0

    def __post_init__(self) -> None:
        probs = {k: getattr(self, k) for k in FAULT_KINDS}
        bad = {k: v for k, v in probs.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"fault probabilities must be in [0, 1], got {bad}")
        worst = sum(probs.values()) + self.straggler * (_MAX_TIER_FACTOR - 1.0)
        if worst > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities sum to {worst:.3f} > 1 for the slowest device tier "
                             f"(straggler is scaled by up to {_MAX_TIER_FACTOR:.2f}x)")
        if self.norm_scale <= 0 or self.straggler_margin_s < 0 or self.max_norm_ratio < 0:
            raise ValueError("norm-scale must be > 0, straggler-margin-s and max-norm-ratio >= 0")

    @property
    def enabled(self) -> bool:
        """True when any fault is injected."""
        return any(getattr(self, k) > 0 for k in FAULT_KINDS)


@functools.lru_cache(maxsize=65536)
def tier_factor(client_id: str) -> float:
    """``(1 / speed) / E[1 / speed]`` of the client's device tier (`fedasr.clients`, drawn from ``(0, client_id)``
    as the ASR task's population draws it)."""
    speed = Population({client_id: 1}).profile(client_id).speed
    return (1.0 / speed) / _MEAN_INV_SPEED


def draw_fault(cfg: FaultConfig, seed: int, server_round: int, client_id: str) -> str | None:
    """Return the fault ``client_id`` shows in ``server_round`` (a `FAULT_KINDS` name) or None, from
    ``(seed, round, client)`` alone."""
    if not cfg.enabled:
        return None
    u = random.Random(derive_seed("fault", seed, server_round, client_id)).random()
    acc = 0.0
    for kind in FAULT_KINDS:
        p = getattr(cfg, kind) * (tier_factor(client_id) if kind == "straggler" else 1.0)
        acc += p
        if u < acc:
            return kind
    return None


def corrupt_update(kind: str | None, update: Any, cfg: FaultConfig) -> Any:
    """Return ``update`` (a `client_update.Update`) with the ``nan``/``inf``/``shape``/``norm`` fault applied."""
    if kind not in ("nan", "inf", "shape", "norm"):
        return update
    arrays = {k: v.detach().clone() for k, v in update.arrays.items()}
    name = sorted(arrays)[0]
    if kind in ("nan", "inf"):
        arrays[name].view(-1)[0] = float("nan") if kind == "nan" else float("inf")
    elif kind == "shape":
        arrays[name] = arrays[name].reshape(-1)[:-1].contiguous()
    else:
        arrays = {k: v * cfg.norm_scale for k, v in arrays.items()}
    return dataclasses.replace(update, arrays=arrays)


def run_with_fault(kind: str | None, cfg: FaultConfig, round_timeout_s: float, client_id: str,
                   compute: Callable[[], Any]) -> Any:
    """Run the client's real update ``compute()`` with fault ``kind`` (None = as is) and return the update.

    ``crash`` raises `InjectedFault` before any work; ``straggler`` computes, then waits until
    ``round_timeout_s + straggler-margin-s`` after the client started (its reply reaches the server after the
    round's deadline, which began before); the other kinds corrupt the finished update (`corrupt_update`).
    """
    t0 = time.monotonic()
    if kind == "crash":
        raise InjectedFault(f"injected crash of client {client_id}")
    update = compute()
    if kind == "straggler":
        time.sleep(max(0.0, round_timeout_s + cfg.straggler_margin_s - (time.monotonic() - t0)))
    with torch.no_grad():
        return corrupt_update(kind, update, cfg)
