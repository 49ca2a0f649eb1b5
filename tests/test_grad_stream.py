"""`fedasr.grad_stream`: gradients folded into b-bit accumulators during backward (issue 22)."""

import pytest
import torch

from fedasr import compression
from fedasr.compression import CodecConfig
from fedasr.grad_stream import GradientStream, StreamConfig

INT8 = CodecConfig("int8_sr", symmetric=True)


def _micro_grads(m: int = 8, shape=(4, 64)) -> list[torch.Tensor]:
    """Micro-batch gradients where one large entry sets the grid and the rest lie far below half a step of it."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(m):
        x = 1e-3 * (1.0 + torch.rand(shape, generator=g))  # all positive, ~1e-3
        x[0, 0] = 1.0  # the step is ~1/127: every other entry is under 1/8 of a step
        out.append(x)
    return out


def _streamed(grads, upload=INT8, cfg=None, seed=0) -> torch.Tensor:
    cfg = cfg or StreamConfig(enabled=True)
    p = torch.nn.Parameter(torch.zeros(grads[0].shape))
    gs = GradientStream({"w": p}, upload, cfg, torch.Generator().manual_seed(seed))
    for x in grads:
        gs.fold("w", x)
    return compression.decode(gs.finish(len(grads))["w"])


def test_the_streamed_gradient_is_unbiased_and_nearest_rounding_is_not():
    grads = _micro_grads()
    want = torch.stack(grads).mean(0)
    runs = torch.stack([_streamed(grads, seed=s) for s in range(400)])
    small = (slice(None), slice(1, None))  # the entries far below half a step
    # unbiased: the mean over 400 draws is within 5 standard errors of the true mean gradient, entry by entry
    se = runs.std(0) / 400 ** 0.5
    assert ((runs.mean(0) - want).abs() <= 5 * se + 1e-7).all()
    assert runs.mean(0)[small].mean() == pytest.approx(want[small].mean(), rel=0.05)
    # rounding to nearest loses them every time: biased to zero
    nearest = _streamed(grads, cfg=StreamConfig(enabled=True, rounding="nearest"))
    assert nearest[small].abs().max() == 0.0 and want[small].min() > 1e-3


def test_an_int4_upload_from_an_8_bit_accumulator_is_rounded_once_more_and_stays_unbiased():
    grads = _micro_grads(m=4)
    want = torch.stack(grads).mean(0)
    p = torch.nn.Parameter(torch.zeros(want.shape))
    gs = GradientStream({"w": p}, CodecConfig("int4_sr", symmetric=True), StreamConfig(enabled=True))
    assert gs.bits == 8
    for x in grads:
        gs.fold("w", x)
    assert gs.finish(4)["w"].bits == 4
    runs = torch.stack([_streamed(grads, CodecConfig("int4_sr", symmetric=True), seed=s) for s in range(400)])
    assert runs.mean(0)[:, 1:].mean() == pytest.approx(want[:, 1:].mean(), rel=0.1)


def test_backward_hooks_free_every_fp32_gradient_and_the_result_matches_plain_accumulation():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    xs = [torch.randn(3, 16) for _ in range(4)]
    for x in xs:  # plain: fp32 .grad accumulates over the micro-batches
        model(x).pow(2).sum().backward()
    plain = {n: p.grad.clone() / 12 for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    upload = CodecConfig("int8_sr", symmetric=True, fp32_vectors=True, lossless="zlib")
    with GradientStream(dict(model.named_parameters()), upload, StreamConfig(enabled=True),
                        torch.Generator().manual_seed(0)) as gs:
        for x in xs:
            model(x).pow(2).sum().backward()
            assert all(p.grad is None for p in model.parameters())  # nothing fp32 survives a backward
    matrices = sum(p.numel() for p in model.parameters() if p.dim() == 2)
    vectors = sum(p.numel() for p in model.parameters() if p.dim() < 2)
    # between micro-batches: one byte per matrix entry (+ one fp32 scale per matrix), fp32 vectors
    assert gs.resident_bytes() == matrices + 2 * 4 + 4 * vectors and gs.folds == 4 * 4
    payload = gs.finish(12)
    assert payload["0.weight"].zipped and payload["0.weight"].bits == 8
    got = compression.decompress(payload)
    assert torch.allclose(got["0.bias"], plain["0.bias"], atol=1e-6)  # vectors stay fp32: exact up to summation order
    for n in ("0.weight", "2.weight"):  # within the fold steps: 4 folds of at most one step each
        step = plain[n].abs().max() / 127 * 2
        assert (got[n] - plain[n]).abs().max() <= 4 * step


def test_bad_settings_fail_with_the_reason():
    p = {"w": torch.nn.Parameter(torch.zeros(2, 2))}
    with pytest.raises(ValueError, match="integer upload codec"):
        GradientStream(p, CodecConfig("fp16"), StreamConfig(enabled=True))
    with pytest.raises(ValueError, match="stream.bits"):
        StreamConfig(bits=4)
    with pytest.raises(ValueError, match="rounding"):
        StreamConfig(rounding="floor")
    with pytest.raises(ValueError, match="number of examples"):
        GradientStream(p, INT8, StreamConfig(enabled=True)).finish(0)
