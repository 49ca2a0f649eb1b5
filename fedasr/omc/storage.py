"""OMC storage: the config, quantized variables with their dequantize-on-use hooks, `apply_omc`, queries.

Holds everything a converted model carries (``model._omc``): the per-variable codes, the anchors, the
forward pre/post hooks and saved-tensor hooks that dequantize on use (package docstring), and the
state-dict hooks through which ``state_dict()`` / ``load_state_dict()`` see fp32 values.
"""

from __future__ import annotations

import fnmatch
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from ..compression import Encoded, dequantize, quantize

if TYPE_CHECKING:
    from .steps import DequantStats

# Modules whose own forward reads their parameters (so a pre-hook can swap them). GroupNorm is absent on
# purpose: fedasr.model's padding-aware conv module reads ``norm.weight`` outside GroupNorm.forward.
QUANTIZABLE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.LSTM, nn.MultiheadAttention, nn.LayerNorm,
)


@dataclass
class OMCConfig:
    """Online Model Compression knobs (OMC's three techniques + storage width; module docstring)."""

    bits: Literal[0, 2, 4, 8, 16] = 8  # storage bits per quantized weight: 16, 8 (default), 4 or 2; 0 = OMC off
    transform: Literal["per_variable", "per_channel", "global"] = "per_variable"  # OMC technique 1 ("global": ablation)
    matrices_only: bool = True  # OMC technique 2: only ndim >= 2 weights are quantized; vectors stay fp32
    fp32_fraction: float = 0.0  # OMC technique 3: share of quantizable params kept fp32 (input/output ends first)
    fp32_patterns: tuple[str, ...] = ()  # fnmatch patterns of variable names always kept fp32
    rounding: Literal["nearest", "stochastic"] = "nearest"  # when (re)quantizing: download, FedAvg local steps
    free_saved: bool = True  # re-dequantize weights autograd saves for backward (False: autograd keeps fp32 Ŵ)

    def __post_init__(self) -> None:
        self.fp32_patterns = tuple(self.fp32_patterns)
        if self.bits not in (0, 2, 4, 8, 16):
            raise ValueError(f"OMC bits must be 0 (off), 2, 4, 8 or 16, got {self.bits}")
        if not 0.0 <= self.fp32_fraction <= 1.0:
            raise ValueError(f"fp32_fraction must be in [0, 1], got {self.fp32_fraction}")
        if self.transform not in ("per_variable", "per_channel", "global"):
            raise ValueError(f"unknown OMC transform {self.transform!r}")
        if self.rounding not in ("nearest", "stochastic"):
            raise ValueError(f"OMC rounding must be 'nearest' or 'stochastic', got {self.rounding!r}")

    @property
    def enabled(self) -> bool:
        """True when weights are stored quantized (``bits`` > 0)."""
        return self.bits > 0


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
    if not cfg.enabled:
        raise ValueError("OMC is off (bits = 0): nothing to convert")
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
# State dicts: the quantized storage seen through state_dict() / load_state_dict()
# ---------------------------------------------------------------------------------------------------


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
