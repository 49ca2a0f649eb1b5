"""Online Model Compression: weights stored quantized, dequantized on use and freed right after (paper §2.4.1).

OMC (Yang et al. 2022, arXiv 2205.03494; paper.md §2.8.1) keeps parameters in a compressed format,
"decompresses it on-the-fly and deallocates memory for the decompressed value immediately after it is
consumed". Its three accuracy techniques are `OMCConfig` fields:

1. per-variable transformation: each variable gets its own affine grid (fp32 scale + offset);
   ``transform="global"`` (one grid for all) is the ablation, ``"per_channel"`` a finer option;
2. weight-matrices-only quantization: vectors (biases, norm gains) stay fp32 (``matrices_only``);
3. partial parameter quantization: a fraction of the weight matrices stays fp32 (``fp32_fraction``).

Mechanism (PyTorch), after `apply_omc`:

* a quantized variable ``owner.<attr>`` keeps its name in ``named_parameters()`` as an *anchor*: an
  ``nn.Parameter`` of the right shape that is a NaN scalar expanded (stride 0, 4 bytes), so reading it
  outside OMC's hooks is loud (NaN), never silently wrong. The codes live in non-persistent buffers
  ``<attr>_omc_q / _omc_scale / _omc_offset`` of the owner;
* a forward pre-hook on the *scope* (the owner, or the ``nn.MultiheadAttention`` whose forward reads
  its ``out_proj.weight``) swaps in ``Ŵ = dequantize(q)`` through `_Dequantize`, whose backward passes
  the gradient straight through to the anchor (``anchor.grad`` is the fp32 gradient accumulator);
  the forward post-hook swaps the anchor back, so no module attribute keeps ``Ŵ``;
* while the scope runs, saved-tensor hooks (``torch.autograd.graph`` "hooks for saved tensors") replace
  every ``Ŵ`` (or view of it) autograd would keep for backward by a reference to the codes and
  re-dequantize it when backward needs it; every other saved tensor goes to the hooks below (e.g.
  ``torch.utils.checkpoint``'s). So no fp32 copy of a quantized weight outlives the op that used it,
  with or without gradient checkpointing; under checkpointing the recompute dequantizes again.

FedSGD (paper §2.3): weights are fixed during the round; gradients are taken w.r.t. ``Ŵ`` (straight
through) and the stored codes never change. FedAvg: `sgd_step` updates ``Ŵ - lr·g`` and re-quantizes
after each local step (``rounding="stochastic"`` keeps updates smaller than a grid step alive in
expectation); `snapshot` / `delta` form ``Δ = Ŵ_end - Ŵ_start`` without an fp32 copy of the start.

Loading: ``model.load_state_dict(fp32_state)`` quantizes the incoming weights, and loading a tensor
that *is* the anchor (`resident_state`) is a no-op, so `fedasr.federated.core`'s client updates can
reload "the global weights" without materialising them. ``model.state_dict()`` returns dequantized
fp32 values (a full-size copy: for the server and evaluation, not for the client's training path).
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .compression import Encoded, Payload, decode, dequantize, quantize

__all__ = [
    "OMCConfig",
    "QUANTIZABLE_MODULES",
    "select_quantized",
    "apply_omc",
    "is_omc",
    "quantized_names",
    "storage_bytes",
    "encode_state",
    "export_payload",
    "load_payload",
    "resident_state",
    "sgd_step",
    "snapshot",
    "delta",
    "DequantStats",
    "track_dequantized",
]

# Modules whose own forward reads their parameters (so a pre-hook can swap them). GroupNorm is absent on
# purpose: fedasr.model's padding-aware conv module reads ``norm.weight`` outside GroupNorm.forward.
QUANTIZABLE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.LSTM, nn.MultiheadAttention, nn.LayerNorm,
)


@dataclass
class OMCConfig:
    """Online Model Compression knobs (OMC's three techniques + storage width; module docstring)."""

    bits: int = 8  # storage bits per quantized weight: 16, 8 (default), 4 or 2
    transform: Literal["per_variable", "per_channel", "global"] = "per_variable"  # OMC technique 1 ("global": ablation)
    matrices_only: bool = True  # OMC technique 2: only ndim >= 2 weights are quantized; vectors stay fp32
    fp32_fraction: float = 0.0  # OMC technique 3: share of quantizable params kept fp32 (input/output ends first)
    fp32_patterns: tuple[str, ...] = ()  # fnmatch patterns of variable names always kept fp32
    rounding: Literal["nearest", "stochastic"] = "nearest"  # when (re)quantizing: download, FedAvg local steps
    free_saved: bool = True  # re-dequantize weights autograd saves for backward (False: autograd keeps fp32 Ŵ)

    def __post_init__(self) -> None:
        self.fp32_patterns = tuple(self.fp32_patterns)
        if self.bits not in (2, 4, 8, 16):
            raise ValueError(f"OMC bits must be 2, 4, 8 or 16, got {self.bits}")
        if not 0.0 <= self.fp32_fraction <= 1.0:
            raise ValueError(f"fp32_fraction must be in [0, 1], got {self.fp32_fraction}")
        if self.transform not in ("per_variable", "per_channel", "global"):
            raise ValueError(f"unknown OMC transform {self.transform!r}")


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


@dataclass
class _QVar:
    """One quantized variable: where it lives and how its codes decode."""

    name: str
    owner: nn.Module
    attr: str
    scope: nn.Module
    bits: int
    per_channel: bool


class _Dequantize(torch.autograd.Function):
    """``Ŵ = dequantize(q)``; backward hands ``∂L/∂Ŵ`` to the anchor unchanged (straight-through)."""

    @staticmethod
    def forward(ctx, anchor, q, scale, offset, bits, shape):  # noqa: D102
        del ctx, anchor  # Unused: the anchor only receives the gradient.
        return dequantize(Encoded("omc", shape, torch.float32, q, scale, offset, bits))

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad, None, None, None, None, None


class _SavedRef:
    """What autograd keeps instead of a dequantized weight: the variable and the view's geometry."""

    __slots__ = ("qv", "size", "stride", "offset")

    def __init__(self, qv: _QVar, t: torch.Tensor) -> None:
        self.qv, self.size, self.stride, self.offset = qv, t.size(), t.stride(), t.storage_offset()


class _OMCState:
    """Per-model OMC bookkeeping, kept as ``model._omc``."""

    def __init__(self, cfg: OMCConfig, global_range: tuple[float, float] | None) -> None:
        self.cfg = cfg
        self.global_range = global_range
        self.vars: dict[str, _QVar] = {}
        self.by_scope: dict[int, list[_QVar]] = {}
        self.live: dict[int, _QVar] = {}  # storage pointer of a dequantized Ŵ → its variable
        self.anchors: dict[str, nn.Parameter] = {}
        self.pushed: list[bool] = []  # per active scope: whether its saved-tensor hooks were pushed
        self.loaded: set[str] = set()  # variables `_load_pre_hook` quantized during a load_state_dict
        self.stats: DequantStats | None = None

    # --- dequantize -------------------------------------------------------------------------------
    def dequantize(self, qv: _QVar, track_grad: bool) -> torch.Tensor:
        b = qv.owner._buffers
        anchor = qv.owner._parameters[qv.attr]
        args = (b[qv.attr + "_omc_q"], b[qv.attr + "_omc_scale"], b.get(qv.attr + "_omc_offset"), qv.bits,
                tuple(anchor.shape))
        w = _Dequantize.apply(anchor, *args) if track_grad else _Dequantize.forward(None, anchor, *args)
        if self.stats is not None:
            self._track(w)
        return w

    def _track(self, w: torch.Tensor) -> None:
        s, n = self.stats, w.numel() * w.element_size()
        s.created += 1
        s.live_bytes += n
        s.peak_live_bytes = max(s.peak_live_bytes, s.live_bytes)
        s.refs.append(weakref.ref(w))

        def _free(stats=s, n=n) -> None:
            stats.live_bytes -= n

        weakref.finalize(w, _free)

    # --- scope hooks ------------------------------------------------------------------------------
    def pre_hook(self, scope: nn.Module, args) -> None:
        grad = torch.is_grad_enabled()
        for qv in self.by_scope[id(scope)]:
            w = self.dequantize(qv, grad)
            qv.owner._parameters[qv.attr] = w  # direct dict write: a plain tensor may stand in for the Parameter
            self.live[w.untyped_storage().data_ptr()] = qv
            _refresh_rnn(qv.owner)
        push = grad and self.cfg.free_saved
        if push:  # private torch API (pinned torch 2.11): the enclosing hooks, to delegate other tensors to
            prev = torch._C._autograd._top_saved_tensors_default_hooks(False)
            torch._C._autograd._push_saved_tensors_default_hooks(
                lambda t, prev=prev: self._pack(t, prev), self._unpack)
        self.pushed.append(push)

    def post_hook(self, scope: nn.Module, args, output) -> None:
        if self.pushed.pop():
            torch._C._autograd._pop_saved_tensors_default_hooks()
        for qv in self.by_scope[id(scope)]:
            w = qv.owner._parameters[qv.attr]
            self.live.pop(w.untyped_storage().data_ptr(), None)
            qv.owner._parameters[qv.attr] = self.anchors[qv.name]
            _refresh_rnn(qv.owner)

    def _pack(self, t: torch.Tensor, prev):
        qv = self.live.get(t.untyped_storage().data_ptr()) if t.layout == torch.strided else None
        if qv is not None:
            return _SavedRef(qv, t)
        if prev is None:
            return t
        return (prev[1], prev[0](t))  # delegate to the enclosing hooks (e.g. checkpoint's)

    def _unpack(self, obj):
        if isinstance(obj, _SavedRef):
            w = self.dequantize(obj.qv, False)
            return w.as_strided(obj.size, obj.stride, obj.offset)
        if isinstance(obj, tuple):
            return obj[0](obj[1])
        return obj


def _refresh_rnn(module: nn.Module) -> None:
    if isinstance(module, nn.RNNBase):
        module._init_flat_weights()  # LSTM's forward reads a cached list of its weights


def _anchor(shape: torch.Size, device: torch.device, requires_grad: bool) -> nn.Parameter:
    """A NaN scalar expanded to ``shape``: the variable's name, shape and gradient slot, 4 bytes of storage."""
    return nn.Parameter(torch.full((), float("nan"), device=device).expand(shape), requires_grad=requires_grad)


def _resolve(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def _scope(model: nn.Module, owner_path: str) -> nn.Module:
    """The module whose forward reads the variable: the nearest MultiheadAttention ancestor, else the owner."""
    parts = owner_path.split(".") if owner_path else []
    for i in range(len(parts), -1, -1):
        m = model.get_submodule(".".join(parts[:i]))
        if isinstance(m, nn.MultiheadAttention):
            return m
    return model.get_submodule(owner_path)


def select_quantized(model: nn.Module, cfg: OMCConfig) -> list[str]:
    """Return the variables OMC stores quantized, in module order (OMC techniques 2 and 3).

    Candidates are parameters of `QUANTIZABLE_MODULES` (matrices only when ``cfg.matrices_only``) not
    matching ``cfg.fp32_patterns``. Partial parameter quantization then keeps ``cfg.fp32_fraction`` of the
    candidates' parameters in fp32, taking whole variables alternately from the input end and the
    output end of the network (first/last layers are the usual precision-sensitive ones [INF]).
    """
    cands = []
    for mpath, m in model.named_modules():
        if not isinstance(m, QUANTIZABLE_MODULES):
            continue
        for attr, p in m.named_parameters(recurse=False):
            name = f"{mpath}.{attr}" if mpath else attr
            if cfg.matrices_only and p.dim() < 2:
                continue
            if any(fnmatch.fnmatchcase(name, pat) for pat in cfg.fp32_patterns):
                continue
            cands.append((name, p.numel()))
    order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    cands.sort(key=lambda c: order[c[0]])
    keep, target, kept = set(), cfg.fp32_fraction * sum(n for _, n in cands), 0
    lo, hi, take_low = 0, len(cands) - 1, True
    while kept < target and lo <= hi:
        name, n = cands[lo] if take_low else cands[hi]
        keep.add(name)
        kept += n
        lo, hi = (lo + 1, hi) if take_low else (lo, hi - 1)
        take_low = not take_low
    return [n for n, _ in cands if n not in keep]


def _quantize_var(x: torch.Tensor, cfg: OMCConfig, global_range, generator) -> Encoded:
    return quantize(x, cfg.bits, per_channel=cfg.transform == "per_channel",
                    stochastic=cfg.rounding == "stochastic", generator=generator,
                    value_range=global_range if cfg.transform == "global" else None, codec="omc")


def _global_range(tensors) -> tuple[float, float]:
    tensors = [t for t in tensors if t.device.type != "meta"]
    if not tensors:
        return (-1.0, 1.0)  # skeleton on the meta device: the download's grid replaces it
    return (min(float(t.min()) for t in tensors), max(float(t.max()) for t in tensors))


def apply_omc(model: nn.Module, cfg: OMCConfig | None = None, generator: torch.Generator | None = None) -> list[str]:
    """Convert ``model`` in place to OMC storage (module docstring); return the quantized variable names.

    Works on a skeleton on the ``meta`` device too (only shapes; `load_payload` then fills it). Call it
    before building optimizers; `fedasr.partial` may toggle ``requires_grad`` of anchors afterwards.
    """
    cfg = cfg or OMCConfig()
    if is_omc(model):
        raise ValueError("model is already OMC-converted")
    names = select_quantized(model, cfg)
    params = dict(model.named_parameters())
    grange = _global_range(params[n].detach() for n in names) if cfg.transform == "global" else None
    state = _OMCState(cfg, grange)
    scopes: dict[int, nn.Module] = {}
    for name in names:
        owner, attr = _resolve(model, name)
        p = owner._parameters[attr]
        enc = _quantize_var(p.detach(), cfg, grange, generator)
        _set_codes(owner, attr, enc)
        anchor = _anchor(p.shape, p.device, p.requires_grad)
        owner._parameters[attr] = anchor
        _refresh_rnn(owner)
        scope = _scope(model, name.rpartition(".")[0])
        qv = _QVar(name, owner, attr, scope, cfg.bits, cfg.transform == "per_channel")
        state.vars[name] = qv
        state.anchors[name] = anchor
        state.by_scope.setdefault(id(scope), []).append(qv)
        scopes[id(scope)] = scope
    for scope in scopes.values():
        scope.register_forward_pre_hook(state.pre_hook)
        scope.register_forward_hook(state.post_hook, always_call=True)
    model.register_state_dict_post_hook(_state_dict_hook)
    model.register_load_state_dict_pre_hook(_load_pre_hook)
    model.register_load_state_dict_post_hook(_load_post_hook)
    model._omc = state
    return names


def _set_codes(owner: nn.Module, attr: str, enc: Encoded) -> None:
    owner.register_buffer(attr + "_omc_q", enc.data, persistent=False)
    owner.register_buffer(attr + "_omc_scale", enc.scale, persistent=False)
    owner.register_buffer(attr + "_omc_offset", enc.offset, persistent=False)


def _codes(qv: _QVar) -> Encoded:
    b = qv.owner._buffers
    return Encoded("omc", tuple(qv.owner._parameters[qv.attr].shape), torch.float32, b[qv.attr + "_omc_q"],
                   b[qv.attr + "_omc_scale"], b.get(qv.attr + "_omc_offset"), qv.bits)


def _state(model: nn.Module) -> _OMCState:
    state = getattr(model, "_omc", None)
    if state is None:
        raise ValueError("model is not OMC-converted (call apply_omc first)")
    return state


def is_omc(model: nn.Module) -> bool:
    """Return whether `apply_omc` converted ``model``."""
    return getattr(model, "_omc", None) is not None


def quantized_names(model: nn.Module) -> list[str]:
    """Return the names of the quantized variables (empty for a plain model)."""
    return list(model._omc.vars) if is_omc(model) else []


def storage_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes the model's weights occupy: ``quantized`` (codes + scales/offsets), ``fp32`` (the rest), ``total``.

    Anchors (4 bytes each) are not counted; persistent buffers (e.g. feature statistics) count as fp32.
    """
    qnames = set(quantized_names(model))
    q = sum(_codes(model._omc.vars[n]).nbytes for n in qnames)
    rest = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n not in qnames)
    rest += sum(b.numel() * b.element_size() for n, b in _raw_state(model).items()
                if n not in qnames and not isinstance(b, nn.Parameter))
    return {"quantized": q, "fp32": rest, "total": q + rest}


# ---------------------------------------------------------------------------------------------------
# Download format, loading, state dicts
# ---------------------------------------------------------------------------------------------------


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


def export_payload(model: nn.Module) -> Payload:
    """Return the model's weights in OMC format without copying (codes as stored, the rest fp32)."""
    vars_ = model._omc.vars if is_omc(model) else {}
    out: Payload = {}
    for k, v in _raw_state(model).items():
        if k in vars_:
            out[k] = _codes(vars_[k])
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


def _raw_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters (anchors included) and persistent buffers by state-dict name, bypassing the hooks."""
    out: dict[str, torch.Tensor] = dict(model.named_parameters())
    for mpath, m in model.named_modules():
        for bname, b in m._buffers.items():
            if b is not None and bname not in m._non_persistent_buffers_set:
                out[f"{mpath}.{bname}" if mpath else bname] = b
    return out


def _state_dict_hook(model: nn.Module, state_dict, prefix: str, local_metadata) -> None:
    """``state_dict()``: dequantized fp32 values in place of the anchors."""
    del local_metadata  # Unused.
    st = getattr(model, "_omc", None)
    if st is None:
        return
    for name, qv in st.vars.items():
        key = prefix + name
        if key in state_dict:
            w = dequantize(_codes(qv))
            state_dict[key] = w if not isinstance(state_dict[key], nn.Parameter) else nn.Parameter(w)


def _load_pre_hook(model, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    """``load_state_dict``: quantize incoming weights of quantized variables (anchors load as no-ops)."""
    del local_metadata, strict, missing, unexpected, errors  # Unused.
    st = model._omc
    incoming = {n: state_dict.pop(prefix + n) for n in st.vars if prefix + n in state_dict}
    fresh = {n: v for n, v in incoming.items() if v is not st.anchors[n]}
    grange = st.global_range
    if st.cfg.transform == "global" and fresh:
        grange = st.global_range = _global_range(torch.as_tensor(v) for v in fresh.values())
    for n, v in fresh.items():
        qv = st.vars[n]
        _set_codes(qv.owner, qv.attr, _quantize_var(torch.as_tensor(v).to(torch.float32), st.cfg, grange, None))
    st.loaded = set(incoming)


def _load_post_hook(model, incompatible) -> None:
    """Quantized variables loaded by `_load_pre_hook` are not missing."""
    st = model._omc
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k not in st.loaded]
    st.loaded = set()


# ---------------------------------------------------------------------------------------------------
# FedAvg with OMC: local steps re-quantize; the delta is formed from codes
# ---------------------------------------------------------------------------------------------------


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
