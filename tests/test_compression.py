"""Transport codecs: exact byte counts (by hand), round-trip error bounds, identity, unbiased stochastic rounding."""

import zlib

import pytest
import torch

from fedasr import compression as C
from fedasr.compression import CodecConfig


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(10, 6, generator=g), "b": torch.randn(6, generator=g), "odd": torch.randn(7, generator=g)}


# hand-computed bytes for w (10x6 = 60 values), b (6) and odd (7): codes + fp32 scale (+ fp32 offset)
BYTES = {
    "none": (60 + 6 + 7) * 4,
    "fp16": (60 + 6 + 7) * 2,
    "bf16": (60 + 6 + 7) * 2,
    "int8": (60 + 8) + (6 + 8) + (7 + 8),  # one byte per value + scale + offset per tensor
    "int8_sr": (60 + 8) + (6 + 8) + (7 + 8),
    "int4": (30 + 8) + (3 + 8) + (4 + 8),  # two codes per byte, rounded up (7 values -> 4 bytes)
    "int4_sr": (30 + 8) + (3 + 8) + (4 + 8),
}


@pytest.mark.parametrize("name", sorted(C.CODECS), ids=lambda n: f"codec={n}")
def test_payload_bytes_match_a_hand_count(name):
    payload = C.compress(_state(), name)
    assert C.payload_bytes(payload) == BYTES[name]


@pytest.mark.parametrize("cfg, expected", [
    (CodecConfig("int8", symmetric=True), (60 + 4) + (6 + 4) + (7 + 4)),  # no offset
    (CodecConfig("int8", per_channel=True), (60 + 10 * 8) + (6 + 8) + (7 + 8)),  # 10 rows: 10 scales + offsets
    (CodecConfig("int8", fp32_vectors=True), (60 + 8) + 6 * 4 + 7 * 4),  # vectors travel fp32
], ids=["symmetric", "per_channel", "fp32_vectors"])
def test_option_byte_counts(cfg, expected):
    assert C.payload_bytes(C.compress(_state(), cfg)) == expected


def test_none_is_exact_identity_without_copies():
    state = _state()
    out = C.decompress(C.compress(state, "none"))
    for k, v in state.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v)
        assert out[k].data_ptr() == v.data_ptr()  # no copy


@pytest.mark.parametrize("name", ["int8", "int4", "int8_sr", "int4_sr"], ids=lambda n: f"codec={n}")
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["affine", "symmetric"])
def test_integer_round_trip_error_within_the_grid_step(name, per_channel, symmetric):
    x = torch.randn(16, 33, generator=torch.Generator().manual_seed(1)) * 3
    e = C.encode(x, CodecConfig(name, per_channel=per_channel, symmetric=symmetric), torch.Generator().manual_seed(2))
    err = (C.decode(e) - x).abs()
    step = e.scale[:, None] if per_channel else e.scale
    bound = step * (1.0 if name.endswith("_sr") else 0.5)  # nearest: half a step; stochastic: under one step
    assert (err <= bound * (1 + 1e-5) + 1e-6).all()
    assert err.max() > 0  # it is lossy: the test compares something


@pytest.mark.parametrize("name, rtol", [("fp16", 2**-11), ("bf16", 2**-8)], ids=["fp16", "bf16"])
def test_float_codecs_relative_error(name, rtol):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(3))
    y = C.decode(C.encode(x, CodecConfig(name)))
    assert y.dtype == torch.float32
    assert ((y - x).abs() <= rtol * x.abs() + 1e-7).all()


def test_fp16_clamps_instead_of_overflowing():
    y = C.decode(C.encode(torch.tensor([1e6, -1e6, 1.0]), CodecConfig("fp16")))
    assert torch.isfinite(y).all() and y[0] == 65504.0 and y[1] == -65504.0


def test_constant_tensor_round_trips_exactly():
    x = torch.full((5, 4), 0.37)
    for name in ("int8", "int4_sr"):
        assert torch.equal(C.decode(C.encode(x, CodecConfig(name))), x)


@pytest.mark.parametrize("name", ["int8_sr", "int4_sr"], ids=lambda n: f"codec={n}")
def test_stochastic_rounding_is_unbiased(name):
    """Mean of many decodes -> the input (as baselines/dasha's compressor test); nearest rounding is not."""
    # values at 0.3 of a grid step away from the grid: nearest rounding is off by 0.3 steps on average
    bits = 8 if name.startswith("int8") else 4
    levels = (1 << bits) - 1
    x = torch.tensor([0.0, 1.0] + [(k + 0.3) / levels for k in range(0, levels - 1, max(1, levels // 20))])
    step = 1.0 / levels
    n = 4000
    gen = torch.Generator().manual_seed(4)
    mean = sum(C.decode(C.encode(x, CodecConfig(name), gen)) for _ in range(n)) / n
    # per value the decode is one of two grid points: std <= step/2, so std of the mean <= step / (2 sqrt(n))
    tol = 5 * step / (2 * n**0.5)
    assert (mean - x).abs().max() <= tol
    nearest = C.decode(C.encode(x, CodecConfig(name.removesuffix("_sr"))))
    assert (nearest - x).abs().max() > 0.25 * step  # the biased alternative would fail the check above


def test_stochastic_rounding_is_reproducible_from_a_seed():
    x = torch.randn(100, generator=torch.Generator().manual_seed(5))
    a = C.encode(x, CodecConfig("int8_sr"), torch.Generator().manual_seed(9))
    b = C.encode(x, CodecConfig("int8_sr"), torch.Generator().manual_seed(9))
    assert torch.equal(a.data, b.data)


def test_zlib_is_lossless_and_counted_after_coding():
    x = torch.zeros(4000)
    x[::50] = torch.arange(80, dtype=torch.float32)  # compressible codes
    cfg = CodecConfig("int8", lossless="zlib", zlib_level=9)
    e = C.encode(x, cfg)
    plain = C.encode(x, CodecConfig("int8"))
    assert torch.equal(C.decode(e), C.decode(plain))
    raw = zlib.compress(plain.data.numpy().tobytes(), 9)
    assert C.payload_bytes({"x": e}) == len(raw) + 8  # coded codes + fp32 scale + fp32 offset
    assert C.payload_bytes({"x": e}) < C.payload_bytes({"x": plain}) / 4


@pytest.mark.parametrize("cfg", [CodecConfig("none"), CodecConfig("bf16"), CodecConfig("int4_sr", per_channel=True),
                                 CodecConfig("int8", symmetric=True, lossless="zlib")],
                         ids=["none", "bf16", "int4_sr_per_channel", "int8_symmetric_zlib"])
def test_wire_format_round_trip_and_byte_count(cfg):
    from fedasr.federated.transport import payload_bytes as wire_bytes

    payload = C.compress(_state(), cfg, torch.Generator().manual_seed(0))
    arrays, meta = C.to_arrays(payload)
    assert sum(a.nbytes for a in arrays.values()) == C.payload_bytes(payload) == wire_bytes(arrays)
    back = C.decompress(C.from_arrays(arrays, meta))
    for k, v in C.decompress(payload).items():
        assert torch.equal(back[k], v)


def test_codec_names_and_their_literal_type_agree():
    import typing

    assert tuple(C.CODECS) == typing.get_args(C.CodecName)  # config validation lists exactly the registry


def test_unknown_codec_is_rejected():
    with pytest.raises(ValueError, match="unknown codec"):
        CodecConfig("int3")
