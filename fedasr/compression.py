"""Transport codecs: matched encode/decode pairs that count their exact payload bytes (paper §2.3).

The paper applies "transportation compression methods" without naming them (paper.md §2.3, open
question 8); we offer the usual ones, chosen by name from `CODECS` and per direction by `TransportConfig`:

==========  =======================================================================================
``none``    fp32 as is (decoding returns the very tensors given: exact identity, no copy)
``fp16``    IEEE half; values beyond ±65504 are clamped (not turned into inf)
``bf16``    bfloat16 (fp32's range, 8 mantissa bits)
``int8``    8-bit codes on a uniform grid, round to nearest: ``|x̂ - x| <= scale / 2``
``int8_sr`` 8-bit codes with stochastic rounding: ``E[x̂] = x`` (unbiased), ``|x̂ - x| < scale``
``int4``    4-bit codes (two per byte), nearest; ``int4_sr`` the same with stochastic rounding
==========  =======================================================================================

Grids (`quantize`): *affine* ``x̂ = offset + scale·q``, ``q ∈ [0, 2^b - 1]``, offset = min, scale =
(max - min)/(2^b - 1); or *symmetric* ``x̂ = scale·(q - 2^(b-1))``, scale = max|x|/(2^(b-1) - 1), zero
exact and no offset sent. Either per tensor or per output channel (dim 0). Stochastic rounding
``q = ⌊v + u⌋, u ~ U[0, 1)`` has ``E[q] = v`` (as in google-research/federated's stochastic quantizer).

What `payload_bytes` counts, exactly: the bytes of every array that must travel, i.e. the packed
codes (or fp32/fp16/bf16 values) plus the fp32 scales and offsets, after lossless coding when it is
on. It does **not** count variable names, shapes, dtypes and codec names: both sides know the model's
architecture, so these are protocol constants (the same convention as
`fedasr.federated.transport.payload_bytes`, which counts ``numel · itemsize`` and no framing).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

__all__ = [
    "CODECS",
    "CodecConfig",
    "TransportConfig",
    "Encoded",
    "Payload",
    "quantize",
    "dequantize",
    "encode",
    "decode",
    "compress",
    "decompress",
    "payload_bytes",
    "to_arrays",
    "from_arrays",
]

_FP16_MAX = 65504.0


@dataclass(frozen=True)
class _Codec:
    """A registry entry: float cast (``dtype``) or integer grid (``bits``, ``stochastic``)."""

    dtype: torch.dtype | None = None
    bits: int = 32
    stochastic: bool = False


# name → codec; `encode` dispatches on the entry, `decode` needs only the `Encoded` it gets.
CodecName = Literal["none", "fp16", "bf16", "int8", "int8_sr", "int4", "int4_sr"]  # the keys of CODECS
CODECS: dict[str, _Codec] = {
    "none": _Codec(torch.float32),
    "fp16": _Codec(torch.float16, 16),
    "bf16": _Codec(torch.bfloat16, 16),
    "int8": _Codec(bits=8),
    "int8_sr": _Codec(bits=8, stochastic=True),
    "int4": _Codec(bits=4),
    "int4_sr": _Codec(bits=4, stochastic=True),
}


@dataclass
class CodecConfig:
    """One direction's codec (a `CODECS` name) and its options."""

    name: CodecName = "none"  # a key of CODECS
    per_channel: bool = False  # int*: one scale (+ offset) per output channel (dim 0) of tensors with ndim >= 2
    symmetric: bool = False  # int*: zero-centred grid, scale only (suits gradients); False = affine min/max
    fp32_vectors: bool = False  # tensors with ndim < 2 (biases, norm gains) travel as fp32 (OMC's matrices-only rule)
    lossless: Literal["none", "zlib"] = "none"  # lossless coding of each tensor's packed bytes; bytes counted after it
    zlib_level: int = 6  # 1 (fast) … 9 (smallest)

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise ValueError(f"unknown codec {self.name!r} (expected one of {sorted(CODECS)})")
        if self.lossless not in ("none", "zlib"):
            raise ValueError(f"lossless must be 'none' or 'zlib', got {self.lossless!r}")


@dataclass
class TransportConfig:
    """Codecs per direction (``[fed.transport.download]`` / ``[fed.transport.upload]``): the server→client
    model download and the client→server update upload. ``"none"`` both ways is fp32 exactly as without
    compression; with OMC (``fed.omc.bits``) the download travels in the OMC storage format instead."""

    download: CodecConfig = field(default_factory=CodecConfig)  # e.g. CodecConfig("fp16")
    # uploads are gradients or deltas, centred on zero: a symmetric grid by default (exact zero, no offset sent)
    upload: CodecConfig = field(default_factory=lambda: CodecConfig(symmetric=True))  # e.g. CodecConfig("int8_sr")

    @property
    def compress_upload(self) -> bool:
        """True when the upload travels encoded (a codec or lossless coding)."""
        return self.upload.name != "none" or self.upload.lossless != "none"


@dataclass
class Encoded:
    """One tensor as it travels.

    Attributes:
        codec: the `CODECS` name (or ``"omc"``) that produced it; informational, decoding needs only the fields.
        shape: shape of the decoded tensor.
        dtype: dtype of the decoded tensor.
        data: the values (fp32/fp16/bf16), or the integer codes (uint8, packed ``8 // bits`` per byte for
            bits < 8; int16 holding ``q - 2^15`` for 16 bits), or — when ``zipped`` — the zlib bytes (uint8).
        scale: fp32 ``(1,)`` or ``(C,)``; None for float codecs.
        offset: fp32 like ``scale`` for affine grids; None for symmetric grids and float codecs.
        bits: code width for integer grids; the float width otherwise.
        zipped: ``data`` holds ``zlib(bytes of the packed data)``; ``packed_dtype``/``packed_numel`` restore it.
    """

    codec: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    data: torch.Tensor
    scale: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    bits: int = 32
    zipped: bool = False
    packed_dtype: torch.dtype | None = None
    packed_numel: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: data + scale + offset (see the module docstring for what is not counted)."""
        return sum(_nbytes(t) for t in (self.data, self.scale, self.offset) if t is not None)


Payload = dict[str, Encoded]  # variable name → its encoded tensor


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# ---------------------------------------------------------------------------------------------------
# Integer grids
# ---------------------------------------------------------------------------------------------------


def _pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes ``q`` (any shape, values in ``[0, 2^bits)``) into the storage dtype."""
    if bits == 16:
        return (q.to(torch.int32) - 32768).to(torch.int16).reshape(-1)
    q = q.to(torch.uint8).reshape(-1)
    if bits == 8:
        return q
    per = 8 // bits
    q = torch.nn.functional.pad(q, (0, (-q.numel()) % per)).reshape(-1, per)
    out = q[:, 0].clone()
    for j in range(1, per):
        out |= q[:, j] << (bits * j)
    return out


def _unpack(data: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `_pack`: integer codes as a new flat float32 tensor of ``numel`` values.

    Sub-byte codes are written straight into one float32 buffer (no uint8 stack and no second float
    copy): OMC dequantizes every weight several times per step, so this is on the training path.
    """
    if bits == 16:
        return data.to(torch.float32).add_(32768.0)
    if bits == 8:
        return data.to(torch.float32)
    per, mask = 8 // bits, (1 << bits) - 1
    out = torch.empty(data.numel(), per, dtype=torch.float32, device=data.device)
    for j in range(per):
        out[:, j].copy_((data >> (bits * j)) & mask)
    return out.view(-1)[:numel]


def _rows(x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """View ``x`` as ``(C, -1)`` (per channel) or ``(1, -1)`` (per tensor)."""
    if per_channel and x.dim() >= 2:
        return x.reshape(x.shape[0], -1)
    return x.reshape(1, -1)


def quantize(
    x: torch.Tensor,
    bits: int = 8,
    *,
    per_channel: bool = False,
    symmetric: bool = False,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    value_range: tuple[float, float] | None = None,
    codec: str | None = None,
) -> Encoded:
    """Quantize ``x`` to ``bits``-bit codes on a uniform grid (module docstring).

    Args:
        x: any float tensor.
        bits: 2, 4, 8 or 16.
        per_channel: one grid per output channel (dim 0) when ``x.dim() >= 2``.
        symmetric: zero-centred grid without offset (else affine min/max).
        stochastic: round ``v`` to ``⌊v + u⌋``, ``u ~ U[0, 1)`` (unbiased) instead of to nearest.
        generator: the random source of stochastic rounding (None: torch's global generator).
        value_range: ``(lo, hi)`` to use instead of the data's own range (OMC's "global" transform);
            values outside are clipped.
        codec: name recorded in the result (default ``f"int{bits}"`` + ``"_sr"`` when stochastic).

    Returns:
        `Encoded` with packed codes and fp32 ``scale`` (and ``offset`` unless symmetric).
    """
    if bits not in (2, 4, 8, 16):
        raise ValueError(f"bits must be 2, 4, 8 or 16, got {bits}")
    codec = codec or f"int{bits}" + ("_sr" if stochastic else "")
    shape, dtype = tuple(x.shape), x.dtype
    if x.device.type == "meta":  # shapes only (building a model skeleton without memory)
        rows = _rows(x, per_channel).shape[0]
        per = 8 // bits if bits < 8 else 1
        n = math.ceil(x.numel() / per)
        data = torch.empty(n, dtype=torch.int16 if bits == 16 else torch.uint8, device="meta")
        scale = torch.empty(rows, device="meta")
        return Encoded(codec, shape, dtype, data, scale, None if symmetric else torch.empty(rows, device="meta"), bits)
    with torch.no_grad():
        v = _rows(x.detach(), per_channel).to(torch.float32)  # (C, N)
        levels = (1 << bits) - 1
        if symmetric:
            half = (1 << (bits - 1)) - 1
            # max |v| per row in one pass without an |v| copy (the stream folds 100M+ values per micro-batch)
            m = torch.linalg.vector_norm(v, ord=float("inf"), dim=1) if value_range is None else \
                v.new_full((v.shape[0],), max(map(abs, value_range)))
            scale = torch.where(m > 0, m / half, torch.ones_like(m))
            offset = None
            v = (v / scale[:, None]).add_(float(1 << (bits - 1)))  # one new buffer, then in place
        else:
            lo = v.amin(dim=1) if value_range is None else v.new_full((v.shape[0],), float(value_range[0]))
            hi = v.amax(dim=1) if value_range is None else v.new_full((v.shape[0],), float(value_range[1]))
            scale = torch.where(hi > lo, (hi - lo) / levels, torch.ones_like(lo))
            offset = lo
            v = (v - lo[:, None]).div_(scale[:, None])
        # v is a fresh buffer from here: round in place (same operations and order as out of place, same codes)
        if stochastic:
            # draws come from the generator's device (a CPU generator gives the same codes on CPU and CUDA)
            u = torch.rand(v.shape, generator=generator, device=generator.device if generator else v.device)
            v = v.add_(u.to(v.device)).floor_()
        else:
            v = v.round_()
        q = v.clamp_(0, levels)
        return Encoded(codec, shape, dtype, _pack(q, bits), scale, offset, bits)


def dequantize(e: Encoded, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Decode integer codes of `quantize` back to values: a new tensor of ``e.shape``."""
    n = math.prod(e.shape)
    q = _unpack(e.data, e.bits, n)
    rows = e.scale.numel()
    q = q.reshape(rows, -1)
    if e.offset is None:  # symmetric
        x = q.sub_(float(1 << (e.bits - 1))).mul_(e.scale[:, None])
    else:  # in place: q is a fresh buffer
        x = q.mul_(e.scale[:, None]).add_(e.offset[:, None])
    return x.reshape(e.shape).to(out_dtype or e.dtype)


# ---------------------------------------------------------------------------------------------------
# Codecs over tensors and state dicts
# ---------------------------------------------------------------------------------------------------


def encode(x: torch.Tensor, cfg: CodecConfig, generator: torch.Generator | None = None) -> Encoded:
    """Encode one tensor with ``cfg`` (non-float tensors and, with ``fp32_vectors``, vectors: as is)."""
    spec = CODECS[cfg.name]
    raw = not x.is_floating_point() or (cfg.fp32_vectors and x.dim() < 2) or spec.dtype == torch.float32
    if raw or x.numel() == 0:
        e = Encoded("none", tuple(x.shape), x.dtype, x.detach(), bits=x.element_size() * 8)
    elif spec.dtype is not None:
        y = x.detach().clamp(-_FP16_MAX, _FP16_MAX) if spec.dtype == torch.float16 else x.detach()
        e = Encoded(cfg.name, tuple(x.shape), x.dtype, y.to(spec.dtype), bits=spec.bits)
    else:
        e = quantize(x, spec.bits, per_channel=cfg.per_channel, symmetric=cfg.symmetric,
                     stochastic=spec.stochastic, generator=generator, codec=cfg.name)
    return _zip(e, cfg.zlib_level) if cfg.lossless == "zlib" else e


def decode(e: Encoded) -> torch.Tensor:
    """Decode one `Encoded` tensor (whatever codec made it)."""
    if e.zipped:
        e = _unzip(e)
    if e.scale is None:  # float codec: cast back (no copy for "none")
        return e.data.reshape(e.shape).to(e.dtype)
    return dequantize(e)


def _zip(e: Encoded, level: int) -> Encoded:
    """Replace ``e.data`` by the zlib coding of its bytes (lossless)."""
    flat = e.data.contiguous().reshape(-1)
    z = zlib.compress(flat.view(torch.uint8).numpy().tobytes(), level)
    data = torch.frombuffer(bytearray(z), dtype=torch.uint8)
    return Encoded(e.codec, e.shape, e.dtype, data, e.scale, e.offset, e.bits, True, flat.dtype, flat.numel())


def _unzip(e: Encoded) -> Encoded:
    raw = zlib.decompress(e.data.numpy().tobytes())
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(e.packed_dtype)[: e.packed_numel]
    return Encoded(e.codec, e.shape, e.dtype, data, e.scale, e.offset, e.bits)


def compress(
    state: Mapping[str, torch.Tensor], cfg: CodecConfig | str = "none", generator: torch.Generator | None = None
) -> Payload:
    """Encode every tensor of ``state`` with ``cfg`` (a `CodecConfig` or a `CODECS` name).

    Args:
        state: variable name → tensor (a state dict, gradients or a FedAvg delta).
        cfg: the codec; the same config decodes it (`decompress` reads everything from the payload).
        generator: random source of stochastic rounding, e.g. seeded from ``(seed, round, client)``.

    Returns:
        name → `Encoded`, in ``state``'s order.
    """
    cfg = CodecConfig(cfg) if isinstance(cfg, str) else cfg
    return {k: encode(v, cfg, generator) for k, v in state.items()}


def decompress(payload: Mapping[str, Encoded]) -> dict[str, torch.Tensor]:
    """Decode a `Payload` back into name → tensor (``none`` returns the tensors it was given)."""
    return {k: decode(e) for k, e in payload.items()}


def payload_bytes(payload: Mapping[str, Encoded]) -> int:
    """Exact bytes of a payload: codes/values + scales + offsets, after lossless coding (module docstring)."""
    return sum(e.nbytes for e in payload.values())


# ---------------------------------------------------------------------------------------------------
# Wire format for Flower: flat numpy arrays (an ArrayRecord) + a JSON description (a ConfigRecord value)
# ---------------------------------------------------------------------------------------------------

_PARTS = ("data", "scale", "offset")


def _dtype_name(dt: torch.dtype | None) -> str | None:
    return None if dt is None else str(dt).removeprefix("torch.")


def to_arrays(payload: Mapping[str, Encoded]) -> tuple[dict[str, np.ndarray], str]:
    """Flatten a payload into ``{"<name>/data"|"/scale"|"/offset": ndarray}`` and a JSON description.

    ``sum(a.nbytes for a in arrays.values()) == payload_bytes(payload)``; bf16 data travels as its raw
    16-bit patterns (numpy has no bfloat16).
    """
    arrays, meta = {}, {}
    for name, e in payload.items():
        for part in _PARTS:
            t = getattr(e, part)
            if t is not None:
                t = t.contiguous()
                arrays[f"{name}/{part}"] = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
        meta[name] = {"codec": e.codec, "shape": list(e.shape), "dtype": _dtype_name(e.dtype), "bits": e.bits,
                      "data_dtype": _dtype_name(e.data.dtype), "zipped": e.zipped,
                      "packed_dtype": _dtype_name(e.packed_dtype), "packed_numel": e.packed_numel}
    return arrays, json.dumps(meta)


def from_arrays(arrays: Mapping[str, np.ndarray], meta: str) -> Payload:
    """Rebuild the payload written by `to_arrays`."""
    out: Payload = {}
    for name, m in json.loads(meta).items():
        parts = {}
        for part in _PARTS:
            a = arrays.get(f"{name}/{part}")
            if a is not None:
                parts[part] = torch.from_numpy(np.ascontiguousarray(a))
        data = parts["data"]
        if m["data_dtype"] == "bfloat16":
            data = data.view(torch.bfloat16)
        out[name] = Encoded(m["codec"], tuple(m["shape"]), getattr(torch, m["dtype"]), data, parts.get("scale"),
                            parts.get("offset"), m["bits"], m["zipped"],
                            getattr(torch, m["packed_dtype"]) if m["packed_dtype"] else None, m["packed_numel"])
    return out
