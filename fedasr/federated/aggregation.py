"""The server's side of a round: validate each update, aggregate them, step the server optimizer (paper §2.3, §2.5).

::

    G_t = Σ_i a_i x_i / Σ_i a_i         # x_i: gradient (FedSGD) or delta (FedAvg); a_i = n_i or WCA weights (§2.5)
    G_t ← (1 − α)·G_t + α·x_server      # Mixed FL (fed.central-mix = α), optional
    w_{t+1} = ServerOpt(w_t, G_t)       # FedSGD; FedAvg steps on −Δ̄ (FedOpt, Reddi et al. 2021)

Plain functions over `fedasr.federated.client_update.Update`; the Flower strategy (`strategies`) calls them.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from fedasr.federated.client_update import Update
from fedasr.federated.config import FedConfig

__all__ = ["validate_update", "norm_outliers", "norm_outliers_of", "aggregate", "mix_central", "ServerOptimizer"]


def validate_update(
    update: Update,
    reference_shapes: Mapping[str, tuple[int, ...]],
    required_keys: Iterable[str] | None = None,
) -> str | None:
    """Return why ``update`` must be excluded from aggregation, or None if it is usable.

    Reasons: ``no-examples``, ``empty``, ``unknown-variable:<name>``, ``missing-variables:<n>``
    (only when ``required_keys`` is given, i.e. partial updates are not allowed),
    ``shape-mismatch:<name>``, ``bad-dtype:<name>`` (not floating point: int, bool, complex),
    ``non-finite:<name>`` (NaN or Inf).
    """
    if not update.num_examples or update.num_examples <= 0 or not math.isfinite(update.num_examples):
        return "no-examples"
    if not update.arrays:
        return "empty"
    for name, a in update.arrays.items():
        if name not in reference_shapes:
            return f"unknown-variable:{name}"
        if tuple(a.shape) != tuple(reference_shapes[name]):
            return f"shape-mismatch:{name}"
        if not torch.is_floating_point(torch.as_tensor(a)):  # an int/bool/complex "gradient" is garbage, not data
            return f"bad-dtype:{name}"
    if required_keys is not None:
        missing = [k for k in required_keys if k not in update.arrays]
        if missing:
            return f"missing-variables:{len(missing)}"
    for name, a in update.arrays.items():
        a = torch.as_tensor(a)
        # fast path: a finite sum means finite elements; an inf/nan sum is confirmed element-wise
        if not bool(torch.isfinite(a.sum())) and not bool(torch.isfinite(a).all()):
            return f"non-finite:{name}"
    return None


def norm_outliers(updates: Sequence[Update], max_ratio: float) -> dict[str, str]:
    """Return ``{client_id: reason}`` for updates whose L2 norm exceeds ``max_ratio`` x the round's median norm.

    The bound (``fed.faults.max-norm-ratio``, default 100; `fedasr.federated.faults`) excludes absurd norms (a
    corrupted or scaled upload) without judging honest spread: honest FedSGD gradients and FedAvg deltas differ
    by a few x. The median is the lower median of all the round's norms, an honest norm while fewer than half are
    absurd. Nothing is excluded with ``max_ratio`` <= 0, fewer than 3 updates (with 2 the median cannot tell which
    is absurd), updates over different variables (partial training: norms are not comparable) or a zero median.
    Reason: ``norm-outlier:<norm / median>x``. Not a defence against a crafted (Byzantine) update within the bound.
    """
    if len({frozenset(u.arrays) for u in updates}) > 1:
        return {}
    return norm_outliers_of({u.client_id: math.sqrt(sum(float(torch.linalg.vector_norm(torch.as_tensor(a).float())) ** 2
                                                        for a in u.arrays.values())) for u in updates}, max_ratio)


def norm_outliers_of(norms: Mapping[str, float], max_ratio: float) -> dict[str, str]:
    """`norm_outliers`' rule on given norms ``{client_id: L2 norm}`` (secure aggregation: the norms the clients
    reported, since the server never sees their updates)."""
    if max_ratio <= 0 or len(norms) < 3 or not (median := statistics.median_low(norms.values())) > 0:
        return {}
    return {c: f"norm-outlier:{n / median:.3g}x" for c, n in norms.items() if not n <= max_ratio * median}


def aggregate(updates: Sequence[Update], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Return the weighted mean of the updates, each variable over the updates that contain it.

    ``G[k] = Σ_{i ∋ k} a_i x_i[k] / Σ_{i ∋ k} a_i`` with ``a_i = n_i`` by default (paper §2.3). Averaging
    each key over its own contributors supports partial model training, where a client only uploads the
    variables it trained. Weights must be ≥ 0 with a positive sum per key.
    """
    if not updates:
        raise ValueError("nothing to aggregate")
    a = [float(u.num_examples) for u in updates] if weights is None else [float(w) for w in weights]
    if len(a) != len(updates):
        raise ValueError(f"{len(a)} weights for {len(updates)} updates")
    if any(w < 0 or not math.isfinite(w) for w in a):
        raise ValueError(f"aggregation weights must be finite and >= 0, got {a}")
    sums: dict[str, torch.Tensor] = {}
    norms: dict[str, float] = {}
    for u, w in zip(updates, a):
        for k, x in u.arrays.items():
            x = torch.as_tensor(x).float()
            if k in sums:
                sums[k].add_(x, alpha=w)  # in place: aggregation is on the round's critical path
            else:
                sums[k] = x * w
            norms[k] = norms.get(k, 0.0) + w
    for k, s in sums.items():
        if norms[k] <= 0:
            raise ValueError(f"variable {k!r}: the weights of its contributors sum to 0")
        s.div_(norms[k])
    return sums


def mix_central(aggregated: Mapping[str, torch.Tensor], central: Mapping[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """``(1 − α)·aggregated + α·central`` on the aggregate's variables (the clients' trainable set).

    Raises:
        ValueError: a variable of the aggregate is missing from the central update or differs in shape.
    """
    out = {}
    for k, v in aggregated.items():
        c = central.get(k)
        if c is None or c.shape != v.shape:
            raise ValueError(f"central update lacks {k!r} or has the wrong shape")
        out[k] = (1.0 - alpha) * v + alpha * c.to(v.dtype)
    return out


class ServerOptimizer:
    """The server's optimizer over the global trainable variables, with state kept on the server.

    ``step(weights, pseudo_grad)`` updates ``weights`` in place: FedSGD passes the aggregated gradient
    ``G_t``; FedAvg passes ``−Δ̄`` so that SGD with lr 1 gives ``w + Δ̄`` (FedOpt). Variables absent from
    ``pseudo_grad`` (partial training) are left untouched, including their optimizer state.
    """

    def __init__(self, weights: Mapping[str, torch.Tensor], trainable: Sequence[str], cfg: FedConfig) -> None:
        self.names = list(trainable)
        # the optimizer owns float32 copies; `step` writes them back into the caller's weights dict
        self._params = {n: torch.nn.Parameter(weights[n].detach().clone().float()) for n in self.names}
        plist = [self._params[n] for n in self.names]
        if cfg.server_optimizer == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(plist, lr=cfg.server_lr, momentum=cfg.server_momentum)
        elif cfg.server_optimizer == "adam":
            self.opt = torch.optim.Adam(plist, lr=cfg.server_lr, betas=(cfg.server_beta1, cfg.server_beta2),
                                        eps=cfg.server_eps)
        else:
            raise ValueError(f"unknown server optimizer {cfg.server_optimizer!r}")

    def step(self, weights: dict[str, torch.Tensor],
             pseudo_grad: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Apply one optimizer step to ``weights`` (in place, and returned) with ``pseudo_grad``."""
        unknown = set(pseudo_grad) - set(self.names)
        if unknown:
            raise KeyError(f"pseudo-gradient for non-trainable variables {sorted(unknown)[:3]}")
        with torch.no_grad():
            for n, p in self._params.items():
                p.copy_(weights[n])  # the global weights are the source of truth (e.g. after a resume)
                p.grad = pseudo_grad[n].to(p.dtype).clone() if n in pseudo_grad else None
        self.opt.step()
        for n, p in self._params.items():
            p.grad = None
            weights[n] = p.detach().clone().to(weights[n].dtype)
        return weights

    def state_dict(self) -> dict:
        """Return a snapshot of the optimizer state (momentum / Adam moments) for the checkpoint."""
        # deepcopy: torch returns live state tensors, which later steps would change in place
        return copy.deepcopy({"names": list(self.names), "optimizer": self.opt.state_dict()})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state written by `state_dict` (the variable list must match)."""
        if list(state["names"]) != self.names:
            raise ValueError("server optimizer state is for a different set of variables")
        self.opt.load_state_dict(copy.deepcopy(state["optimizer"]))
