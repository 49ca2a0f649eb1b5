"""OMC download format: a server state encoded as the client's storage (`encode_state`), adopted
without copies (`load_payload`), and the model's own tensors for no-op reloads (`resident_state`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..compression import Encoded, Payload, decode
from .storage import (
    OMCConfig,
    _anchor,
    _global_range,
    _quantize_var,
    _raw_state,
    _refresh_rnn,
    _resolve,
    _set_codes,
    _state,
)


def encode_state(
    state: Mapping[str, torch.Tensor], names: list[str] | set[str], cfg: OMCConfig | None = None,
    generator: torch.Generator | None = None,
) -> Payload:
    """Encode a server's fp32 state in OMC format: ``names`` quantized, everything else fp32 (``"none"``).

    The payload is what a client adopts as its weight storage (`load_payload`), so the OMC download
    needs no separate transport codec (paper.md open question 8).
    """
    cfg = cfg or OMCConfig()
    names = set(names)
    grange = _global_range(state[n] for n in names) if cfg.transform == "global" else None
    out: Payload = {}
    for k, v in state.items():
        if k in names:
            out[k] = _quantize_var(v, cfg, grange, generator)
        else:
            out[k] = Encoded("none", tuple(v.shape), v.dtype, v.detach(), bits=v.element_size() * 8)
    return out


def load_payload(model: nn.Module, payload: Mapping[str, Encoded]) -> None:
    """Adopt an OMC-format payload as the model's storage, without copies (skeletons on ``meta`` too).

    Quantized variables take the payload's codes as their buffers; other entries are decoded and
    assigned as the parameters/buffers themselves. Anchors are re-created on the payload's device.

    Raises:
        KeyError / ValueError: missing or unexpected variables, or a quantized/fp32 mismatch.
    """
    state = _state(model)
    expected = set(_raw_state(model))
    if set(payload) != expected:
        raise KeyError(f"payload keys differ from the model's: missing {sorted(expected - set(payload))[:3]}, "
                       f"unexpected {sorted(set(payload) - expected)[:3]}")
    for name, e in payload.items():
        owner, attr = _resolve(model, name)
        if name in state.vars:
            if e.scale is None or e.bits != state.vars[name].bits:
                raise ValueError(f"{name}: expected {state.vars[name].bits}-bit OMC codes, got codec {e.codec!r}")
            if e.zipped:
                raise ValueError(f"{name}: lossless-coded payloads must be decoded before adoption")
            _set_codes(owner, attr, e)
            old = owner._parameters[attr]
            state.anchors[name] = owner._parameters[attr] = _anchor(old.shape, e.data.device, old.requires_grad)
        elif attr in owner._parameters:
            if e.scale is not None:
                raise ValueError(f"{name}: stored fp32 in this model but the payload quantized it")
            old = owner._parameters[attr]
            owner._parameters[attr] = nn.Parameter(decode(e), requires_grad=old.requires_grad)
        else:
            owner._buffers[attr] = decode(e)
        _refresh_rnn(owner)


def resident_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own tensors by state-dict name (anchors for quantized variables), no copies.

    ``model.load_state_dict(resident_state(model))`` is a no-op: APIs that (re)load "the global weights"
    before a client update can be handed this instead of a materialised fp32 state.
    """
    return _raw_state(model)
