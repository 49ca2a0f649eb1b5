"""FedAvg local training with OMC (`sgd_step` re-quantizes, `snapshot` / `delta` form the upload from
codes) and `track_dequantized`, which counts the dequantized fp32 copies a block makes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..compression import Encoded, dequantize
from .storage import _codes, _quantize_var, _set_codes, _state, is_omc


@dataclass
class DequantStats:
    """Dequantized fp32 copies made while tracking (`track_dequantized`)."""

    created: int = 0  # dequantizations (forward, checkpoint recompute and saved-tensor unpacks)
    live_bytes: int = 0  # bytes of dequantized copies alive now
    peak_live_bytes: int = 0  # most bytes alive at once
    refs: list = field(default_factory=list)  # weakrefs to every copy made

    def alive(self) -> int:
        """Return how many dequantized copies are still alive."""
        return sum(r() is not None for r in self.refs)


@torch.no_grad()
def sgd_step(model: nn.Module, lr: float, generator: torch.Generator | None = None) -> None:
    """One local SGD step ``w ← Q(Ŵ - lr·g)`` for quantized variables and ``w ← w - lr·g`` for the rest.

    One variable is dequantized at a time (transient = the largest variable), then gradients are cleared.
    Rounding follows ``cfg.rounding``; ``generator`` seeds stochastic rounding.
    """
    st = _state(model)
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        if name in st.vars:
            qv = st.vars[name]
            w = dequantize(_codes(qv))
            w.add_(p.grad, alpha=-lr)
            _set_codes(qv.owner, qv.attr, _quantize_var(w, st.cfg, st.global_range, generator))
        else:
            p.add_(p.grad, alpha=-lr)
        p.grad = None


def snapshot(model: nn.Module, names: list[str] | None = None) -> dict[str, Encoded | torch.Tensor]:
    """Copy the trainable variables' storage (codes for quantized ones, fp32 otherwise) before local steps."""
    vars_ = model._omc.vars if is_omc(model) else {}
    names = names if names is not None else [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    out: dict[str, Encoded | torch.Tensor] = {}
    for n in names:
        if n in vars_:
            e = _codes(vars_[n])
            out[n] = Encoded("omc", e.shape, e.dtype, e.data.clone(), e.scale.clone(),
                             None if e.offset is None else e.offset.clone(), e.bits)
        else:
            out[n] = params[n].detach().clone()
    return out


def delta(model: nn.Module, start: Mapping[str, Encoded | torch.Tensor]) -> dict[str, torch.Tensor]:
    """FedAvg's upload ``Δ = Ŵ_end - Ŵ_start`` for the variables in ``start`` (from `snapshot`)."""
    vars_ = model._omc.vars if is_omc(model) else {}
    params = dict(model.named_parameters())
    out = {}
    for n, s in start.items():
        now = dequantize(_codes(vars_[n])) if n in vars_ else params[n].detach()
        out[n] = now - (dequantize(s) if isinstance(s, Encoded) else s)
    return out


@contextlib.contextmanager
def track_dequantized(model: nn.Module) -> Iterator[DequantStats]:
    """Count the dequantized copies made inside the block (live/peak bytes, weakrefs to each)."""
    st = _state(model)
    st.stats = DequantStats()
    try:
        yield st.stats
    finally:
        st.stats = None
