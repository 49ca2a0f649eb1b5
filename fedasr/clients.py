"""The client population: which clients exist, how much data each holds, and the device each trains on.

A `Population` maps client ids to `ClientProfile` s *lazily*: building one for 500 (or 50 000) clients
costs a dict of example counts; a profile (device tier, memory budget, speed) is only materialised for
the clients that are actually sampled, and is deterministic from ``(seed, client_id)`` so every process
derives the same one.

Device tiers are our assumption [INF], not a number from the paper (its memory figures could not be
read): on-device FL runs as a background job on an idle, charging phone, and the training job is given
a fraction of RAM. We use four phone tiers with a training-memory budget of roughly 1/12–1/6 of RAM::

    tier      RAM     budget    speed  share
    low       3 GB    256 MiB   0.5    30%
    mid       6 GB    512 MiB   1.0    40%
    high      8 GB    1 GiB     1.6    22%
    flagship  12 GB   2 GiB     2.4     8%

``speed`` is relative compute throughput (mid tier = 1); later issues use the budget to decide whether a
client can train a model configuration (peak memory vs budget) and the speed to simulate stragglers.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fedasr.seeding import derive_seed, sample_clients

__all__ = ["DeviceTier", "DEVICE_TIERS", "ClientProfile", "Population"]

MiB = 1 << 20


@dataclass(frozen=True)
class DeviceTier:
    """A class of phones: RAM, the memory budget of a training job, relative speed, population share."""

    name: str
    ram_bytes: int
    memory_budget_bytes: int
    speed: float
    share: float


DEVICE_TIERS: tuple[DeviceTier, ...] = (
    DeviceTier("low", 3 * 1024 * MiB, 256 * MiB, 0.5, 0.30),
    DeviceTier("mid", 6 * 1024 * MiB, 512 * MiB, 1.0, 0.40),
    DeviceTier("high", 8 * 1024 * MiB, 1024 * MiB, 1.6, 0.22),
    DeviceTier("flagship", 12 * 1024 * MiB, 2048 * MiB, 2.4, 0.08),
)


@dataclass(frozen=True)
class ClientProfile:
    """One client: its data size and its device."""

    client_id: str
    num_examples: int  # training utterances on the device (user_train split)
    tier: str  # a `DeviceTier` name
    memory_budget_bytes: int  # peak memory the training job may use
    speed: float  # relative compute throughput (mid tier = 1.0)


class Population:
    """Client ids with example counts, and lazily derived device profiles.

    Args:
        counts: client id → number of training examples (clients with 0 examples are dropped).
        seed: seeds device profiles (``(seed, client_id)``) and sampling (``(seed, round)``).
        tiers: the device tiers to draw from, by their ``share``.
    """

    def __init__(self, counts: Mapping[str, int], seed: int = 0,
                 tiers: tuple[DeviceTier, ...] = DEVICE_TIERS) -> None:
        bad = {k: v for k, v in counts.items() if not isinstance(v, int) or v < 0}
        if bad:
            raise ValueError(f"example counts must be non-negative integers: {dict(list(bad.items())[:3])}")
        if not tiers or not math.isclose(sum(t.share for t in tiers), 1.0, abs_tol=1e-6):
            raise ValueError("device tier shares must sum to 1")
        self._counts = {str(k): int(v) for k, v in counts.items() if v > 0}
        self.client_ids = sorted(self._counts)
        self.seed = seed
        self.tiers = tiers
        self._profiles: dict[str, ClientProfile] = {}  # only sampled clients get materialised

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def synthetic(cls, num_clients: int, seed: int = 0, min_examples: int = 8, max_examples: int = 200,
                  sigma: float = 1.0, prefix: str = "client", **kw: Any) -> "Population":
        """Return ``num_clients`` clients with long-tailed (log-normal, clipped) example counts.

        The median is the geometric mean of the bounds; ``sigma`` is the log-normal spread.
        """
        if num_clients < 1 or min_examples < 1 or max_examples < min_examples:
            raise ValueError("need num_clients >= 1 and 1 <= min_examples <= max_examples")
        rng = random.Random(derive_seed("population", seed))
        mu = 0.5 * (math.log(min_examples) + math.log(max_examples))
        width = max(4, len(str(num_clients - 1)))
        counts = {}
        for i in range(num_clients):
            n = round(math.exp(rng.gauss(mu, sigma)))
            counts[f"{prefix}{i:0{width}d}"] = min(max_examples, max(min_examples, n))
        return cls(counts, seed=seed, **kw)

    @classmethod
    def from_utterances(cls, utterances: Iterable[Any], split: str | None = "user_train", seed: int = 0,
                        **kw: Any) -> "Population":
        """Return the population of a manifest: one client per ``client`` value, counting utterances.

        ``utterances`` are `fedasr.data.Utterance` s or dicts with ``client`` and ``split`` fields;
        only ``split`` (if given) is counted and utterances without a client are ignored.
        """
        def get(u: Any, k: str) -> Any:
            return u.get(k) if isinstance(u, Mapping) else getattr(u, k)

        counts = Counter(get(u, "client") for u in utterances
                         if get(u, "client") is not None and (split is None or get(u, "split") == split))
        if not counts:
            raise ValueError(f"no utterances with a client in split {split!r}")
        return cls(dict(counts), seed=seed, **kw)

    # --- queries ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.client_ids)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._counts

    def num_examples(self, client_id: str) -> int:
        """Return the number of training examples of ``client_id``."""
        try:
            return self._counts[client_id]
        except KeyError:
            raise KeyError(f"unknown client {client_id!r}") from None

    def profile(self, client_id: str) -> ClientProfile:
        """Return (and cache) the device profile of ``client_id``, deterministic from ``(seed, client_id)``."""
        if client_id not in self._profiles:
            self._profiles[client_id] = self._draw_profile(client_id)
        return self._profiles[client_id]

    def _draw_profile(self, client_id: str) -> ClientProfile:
        n = self.num_examples(client_id)
        u = random.Random(derive_seed("device", self.seed, client_id)).random()
        acc = 0.0
        tier = self.tiers[-1]
        for t in self.tiers:
            acc += t.share
            if u < acc:
                tier = t
                break
        return ClientProfile(client_id, n, tier.name, tier.memory_budget_bytes, tier.speed)

    def sample(self, k: int, server_round: int) -> list[str]:
        """Return ``min(k, N)`` distinct clients for ``server_round`` (seeded by ``(seed, round)``)."""
        return sample_clients(self.client_ids, k, self.seed, server_round)

    def summary(self) -> dict:
        """Return size, total and quantiles of examples per client (profiles are not materialised)."""
        counts = sorted(self._counts.values())
        q = lambda p: counts[min(len(counts) - 1, int(p * len(counts)))]  # noqa: E731
        return {"clients": len(counts), "examples": sum(counts), "min": counts[0], "median": q(0.5),
                "p90": q(0.9), "max": counts[-1]}
