"""Partial model training: which variables train, chosen by a policy or a memory budget (paper §2.4.2).

A *selection* is data: the tuple of parameter names that train this round (STYLE guideline 7; FjORD
keeps mechanism and policy apart the same way). `apply_selection` turns it into ``requires_grad``
flags, after which nothing else branches on it:

* only trainable variables get gradients, and `fedasr.federated.client_update` uploads only
  those (``trainable_names``);
* autograd records nothing for ops whose inputs need no gradient, so frozen blocks *below* the lowest
  trainable one store no activations and run no backward — no ``torch.no_grad()`` or model change is
  needed (paper.md §2.4.2, open question 20); frozen blocks *above* it still store activations,
  because the gradient flows through them;
* the server averages each variable over the clients that trained it (`fedasr.federated.aggregation.aggregate`
  does this per key).

Policies (`PartialConfig.policy`): ``all``; ``top_k`` (the top k Conformer blocks, plus the head);
``random`` (Partial Variable Training, Yang et al. 2022, arXiv 2110.05607: a fresh random subset per
client and round, seeded by ``(seed, round, client)``); ``budget`` (the largest top-k set whose analytic
peak — `fedasr.memory.estimate` — fits the client's memory budget).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from . import memory
from .seeding import derive_seed

__all__ = [
    "PartialConfig",
    "Selection",
    "units",
    "top_k_names",
    "random_names",
    "budget_selection",
    "select",
    "apply_selection",
    "describe",
]


@dataclass
class PartialConfig:
    """Which variables train (module docstring; ``[fed.partial]`` in a federated config)."""

    policy: Literal["all", "top_k", "random", "budget"] = "all"  # selection rule
    top_k: int = 6  # top_k: Conformer blocks trained, counted from the top (output side)
    train_head: bool = True  # top_k/budget: the predictor + joiner (or CTC head) train too
    fraction: float = 0.5  # random: share of the model's parameters trained per client and round (PVT)
    unit: Literal["block", "variable"] = "block"  # random: draw whole units (blocks, head parts) or single variables
    budget_mib: float = 0.0  # budget: the client's training-memory budget in MiB; 0 = its device tier's
    #   (fedasr.clients; the federated task's memory_budget_bytes)
    budget_margin: float = 0.0  # budget: fraction of the budget kept free (allocator slack the model omits)

    def __post_init__(self) -> None:
        if self.policy not in ("all", "top_k", "random", "budget"):
            raise ValueError(f"unknown partial-training policy {self.policy!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.top_k < 0 or not 0.0 <= self.budget_margin < 1.0:
            raise ValueError("top_k must be >= 0 and budget_margin in [0, 1)")
        if self.budget_mib < 0:
            raise ValueError(f"budget_mib must be >= 0, got {self.budget_mib}")
        if self.unit not in ("block", "variable"):
            raise ValueError(f"unit must be 'block' or 'variable', got {self.unit!r}")

    @property
    def enabled(self) -> bool:
        """True when a client trains (and uploads) a subset of the variables."""
        return self.policy != "all"


@dataclass(frozen=True)
class Selection:
    """The variables that train, and (budget policy) the analytic peak they lead to."""

    names: tuple[str, ...]  # parameter names, in module order
    policy: str
    estimate_bytes: int | None = None  # analytic peak of the round with this selection (budget policy)
    budget_bytes: int | None = None
    fits: bool = True  # False: not even the smallest candidate fits the budget (names is then empty)


def units(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Group parameters into units, input to output: ``subsampling``, ``block.<i>``, then head parts.

    Head parts are the remaining top-level children (``predictor``, ``joiner`` or ``ctc_head``).
    """
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        key = f"block.{parts[2]}" if name.startswith("conformer.conformer_layers.") else parts[0]
        groups.setdefault(key, []).append(name)
    order = ["subsampling"] + [f"block.{i}" for i in range(model.config.num_layers)]
    order += [k for k in groups if k not in order]
    return [(k, groups[k]) for k in order if k in groups]


def _head_names(model: nn.Module) -> list[str]:
    return [n for k, names in units(model) if k != "subsampling" and not k.startswith("block.") for n in names]


def top_k_names(model: nn.Module, k: int, train_head: bool = True) -> list[str]:
    """Names of the top ``k`` Conformer blocks (+ the head when ``train_head``), in module order."""
    n_blocks = model.config.num_layers
    top = {f"block.{i}" for i in range(max(0, n_blocks - k), n_blocks)}
    head = set(_head_names(model)) if train_head else set()
    return [n for key, names in units(model) for n in names if key in top or n in head]


def random_names(model: nn.Module, fraction: float, seed: int, server_round: int, client_id: str,
                 unit: Literal["block", "variable"] = "block") -> list[str]:
    """PVT: a random subset covering at least ``fraction`` of the parameters, fixed by ``(seed, round, client)``.

    Units (or single variables) are drawn in a random order until the trained parameters reach the
    fraction, so every variable is equally likely to train.
    """
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    groups = [names for _, names in units(model)] if unit == "block" else [[n] for n in sizes]
    rng = random.Random(derive_seed("partial", seed, server_round, client_id))
    rng.shuffle(groups)
    target, chosen, total = fraction * sum(sizes.values()), set(), 0
    for g in groups:
        if total >= target:
            break
        chosen.update(g)
        total += sum(sizes[n] for n in g)
    return [n for n in sizes if n in chosen]


def budget_selection(model: nn.Module, budget_bytes: int, shape: memory.RoundShape,
                     train_head: bool = True, margin: float = 0.0) -> Selection:
    """The largest top-k set whose analytic peak (`memory.estimate`) fits ``budget_bytes · (1 - margin)``.

    Candidates run from everything (front end included), then all blocks, down to no block (head only
    when ``train_head``; with it off, the candidates are the top-k blocks alone, the smallest one
    block). Upper blocks come first because training them saves activations of everything below as
    well (paper.md §2.4.2).
    """
    limit = budget_bytes * (1.0 - margin)
    n_blocks = model.config.num_layers
    everything = [n for n, _ in model.named_parameters()]  # all blocks and the subsampling front end
    candidates = ([everything] if train_head else []) + [
        top_k_names(model, k, train_head) for k in range(n_blocks, -1 if train_head else 0, -1)]
    smallest = None
    for names in candidates:
        peak = memory.estimate(model, shape, trainable=names)["peak"]
        smallest = peak
        if peak <= limit:
            return Selection(tuple(names), "budget", peak, budget_bytes, True)
    return Selection((), "budget", smallest, budget_bytes, False)


def select(model: nn.Module, cfg: PartialConfig, *, seed: int = 0, server_round: int = 0, client_id: str = "",
           budget_bytes: int | None = None, shape: memory.RoundShape | None = None) -> Selection:
    """Apply ``cfg.policy`` to ``model``; ``random`` draws from ``(seed, server_round, client_id)`` (the run's
    seed), ``budget`` needs ``budget_bytes`` and the round's ``shape``."""
    if cfg.policy == "all":
        return Selection(tuple(n for n, _ in model.named_parameters()), "all")
    if cfg.policy == "top_k":
        return Selection(tuple(top_k_names(model, cfg.top_k, cfg.train_head)), "top_k")
    if cfg.policy == "random":
        return Selection(tuple(random_names(model, cfg.fraction, seed, server_round, client_id, cfg.unit)),
                         "random")
    if budget_bytes is None or shape is None:
        raise ValueError("the budget policy needs budget_bytes and the round's memory.RoundShape")
    return budget_selection(model, budget_bytes, shape, cfg.train_head, cfg.budget_margin)


def apply_selection(model: nn.Module, names: Sequence[str] | Selection) -> None:
    """Set ``requires_grad`` to True exactly for ``names`` (and drop stale gradients of the others)."""
    names = set(names.names if isinstance(names, Selection) else names)
    params = dict(model.named_parameters())
    unknown = names - set(params)
    if unknown:
        raise KeyError(f"unknown variables in the selection: {sorted(unknown)[:3]}")
    for n, p in params.items():
        p.requires_grad_(n in names)
        if n not in names:
            p.grad = None


def describe(selection: Selection, model: nn.Module) -> dict[str, Any]:
    """Summary for logs: trained units, trained parameters and their share."""
    names = set(selection.names)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    trained_units = [k for k, ns in units(model) if any(n in names for n in ns)]
    p = sum(sizes[n] for n in names)
    return {"policy": selection.policy, "units": trained_units, "params": p, "share": p / max(1, sum(sizes.values())),
            "estimate_bytes": selection.estimate_bytes, "budget_bytes": selection.budget_bytes, "fits": selection.fits}
