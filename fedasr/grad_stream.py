"""Streaming gradient encoding: no whole-model fp32 gradient on the device (issue 22).

FedSGD's client sums the gradients of its micro-batches and uploads the mean (paper §2.3). Done plainly, autograd
keeps one fp32 ``.grad`` per trained variable for the whole round: with 4-bit OMC weights that is the largest part
of a 129M client's peak. Here each variable's gradient is folded into a b-bit accumulator the moment backward has
produced it (torch's post-accumulate-grad hook), and ``.grad`` is freed at once, so the gradient resident between
micro-batches is b/32 of fp32, plus one variable's fp32 transient while it is folded in.

The accumulator of variable v after micro-batch m, on a symmetric grid re-fitted to the new range each time::

    A_1 = SR(g_1),   A_m = SR(deq(A_{m-1}) + g_m),   upload = deq(A_M) / n   (the scale divided by n: exact)

where ``SR`` is stochastic rounding (``⌊x/s + u⌋``, ``u ~ U[0, 1)``) and ``g_m`` the micro-batch's summed gradient.
SR is unbiased for any value inside its grid (``E[SR(x)] = x``) and the grid covers ``deq(A_{m-1}) + g_m`` by
construction, so by the tower property ``E[deq(A_M)] = Σ_m g_m``: the gradient sent is unbiased. Each fold adds
variance at most ``s_m² / 4`` per element (``s_m`` the grid step of fold m). Rounding to nearest instead would be
biased: a small gradient under half a step of a large one is lost every time (tests/test_grad_stream.py shows both).

When the upload codec has fewer bits than the accumulator (int4 uploads, 8-bit accumulation), the final
accumulator is stochastically rounded once more onto the upload's grid (unbiased again). Vectors may stay fp32
(``fp32_vectors``, OMC's matrices-only rule); lossless zlib coding is applied to the finished codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fedasr.compression import CODECS, CodecConfig, Encoded, _zip, dequantize, quantize

__all__ = ["StreamConfig", "GradientStream"]


@dataclass
class StreamConfig:
    """How gradients are folded in as backward produces them (``[fed.grad-stream]``)."""

    enabled: bool = False
    bits: int = 8  # accumulator width (8 or 16); the upload codec's own width when that is wider
    rounding: str = "stochastic"  # "stochastic" (unbiased) or "nearest" (biased: for comparison only)

    def __post_init__(self) -> None:
        if self.bits not in (8, 16):
            raise ValueError(f"stream.bits must be 8 or 16, got {self.bits}")
        if self.rounding not in ("stochastic", "nearest"):
            raise ValueError(f"stream.rounding must be 'stochastic' or 'nearest', got {self.rounding!r}")


class GradientStream:
    """Fold each trainable variable's gradient into a b-bit accumulator during backward (module docstring).

    Use as a context manager around the micro-batches' ``backward()`` calls, then `finish`::

        with GradientStream(params, upload_codec, StreamConfig(enabled=True), generator) as gs:
            for batch in micro_batches:
                model.loss(batch, reduction="sum")[0].backward()
        payload = gs.finish(n_examples)          # name → Encoded, ready for the wire (`compression.to_arrays`)

    Args:
        params: variable name → parameter (only those that train; frozen ones are ignored).
        upload: the upload codec (`compression.CodecConfig`): an integer grid (``int8_sr``, ``int4_sr``, ...).
        cfg: the accumulator's width and rounding.
        generator: the random source of stochastic rounding (seeded per client and round by the caller).
    """

    def __init__(self, params: Mapping[str, torch.nn.Parameter], upload: CodecConfig, cfg: StreamConfig,
                 generator: torch.Generator | None = None) -> None:
        spec = CODECS[upload.name]
        if spec.dtype is not None:
            raise ValueError(f"gradient streaming needs an integer upload codec (int8_sr, int4_sr, ...), "
                             f"got {upload.name!r}")
        self.params = {n: p for n, p in params.items() if p.requires_grad}
        self.upload, self.cfg, self.generator = upload, cfg, generator
        self.bits = max(cfg.bits, spec.bits)
        self.acc: dict[str, Encoded | torch.Tensor] = {}
        self.folds = 0  # gradients folded in (variables x micro-batches)
        self._handles: list = []

    def _keep_fp32(self, p: torch.Tensor) -> bool:
        return self.upload.fp32_vectors and p.dim() < 2

    def _quantize(self, x: torch.Tensor, bits: int, stochastic: bool) -> Encoded:
        return quantize(x, bits, per_channel=self.upload.per_channel, symmetric=True, stochastic=stochastic,
                        generator=self.generator, codec=self.upload.name)

    @torch.no_grad()
    def fold(self, name: str, grad: torch.Tensor) -> None:
        """Add one micro-batch's gradient of ``name`` to its accumulator."""
        prev = self.acc.get(name)
        if self._keep_fp32(grad):
            self.acc[name] = grad.detach().clone() if prev is None else prev.add_(grad)
        else:
            x = grad.detach().to(torch.float32) if prev is None else dequantize(prev, torch.float32).add_(grad)
            self.acc[name] = self._quantize(x, self.bits, self.cfg.rounding == "stochastic")
        self.folds += 1

    def _hook(self, name: str):
        def hook(p: torch.Tensor) -> None:
            self.fold(name, p.grad)
            p.grad = None  # the fp32 gradient lives only while it is folded in
        return hook

    def __enter__(self) -> GradientStream:
        for n, p in self.params.items():
            p.grad = None
            self._handles.append(p.register_post_accumulate_grad_hook(self._hook(n)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def resident_bytes(self) -> int:
        """Bytes the accumulators hold now (codes, scales, fp32 vectors)."""
        return sum(a.nbytes if isinstance(a, Encoded) else a.numel() * a.element_size() for a in self.acc.values())

    @torch.no_grad()
    def finish(self, n: int) -> dict[str, Encoded]:
        """The mean gradient ``Σ g / n`` of every trained variable in the upload's format (zero where a variable
        got no gradient), in ``params`` order."""
        if n <= 0:
            raise ValueError(f"finish needs the number of examples (> 0), got {n}")
        spec, out = CODECS[self.upload.name], {}
        for name, p in self.params.items():
            a = self.acc.pop(name, None)
            if a is None:
                a = torch.zeros_like(p, dtype=torch.float32) if self._keep_fp32(p) else \
                    self._quantize(torch.zeros_like(p, dtype=torch.float32), self.bits, False)
            if isinstance(a, torch.Tensor):  # an fp32 vector
                e = Encoded("none", tuple(a.shape), a.dtype, a.div_(n), bits=32)
            else:
                e = Encoded(a.codec, a.shape, a.dtype, a.data, a.scale / n, None, a.bits)
                if e.bits != spec.bits:  # e.g. int4 upload from an 8-bit accumulator: one more unbiased rounding
                    e = self._quantize(dequantize(e, torch.float32), spec.bits, spec.stochastic)
            out[name] = _zip(e, self.upload.zlib_level) if self.upload.lossless == "zlib" else e
        return out
