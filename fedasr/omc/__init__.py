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
that *is* the anchor (`resident_state`) is a no-op, so `fedasr.federated.client_update` can
reload "the global weights" without materialising them. ``model.state_dict()`` returns dequantized
fp32 values (a full-size copy: for the server and evaluation, not for the client's training path).
"""

from .payload import encode_state, load_payload, resident_state
from .steps import DequantStats, delta, sgd_step, snapshot, track_dequantized
from .storage import (
    QUANTIZABLE_MODULES,
    OMCConfig,
    apply_omc,
    is_omc,
    quantized_names,
    select_quantized,
    storage_bytes,
)
from .storage import (
    _codes as _codes,  # private, used by fedasr.memory and tests/test_omc.py
)

__all__ = [
    "OMCConfig",
    "QUANTIZABLE_MODULES",
    "select_quantized",
    "apply_omc",
    "is_omc",
    "quantized_names",
    "storage_bytes",
    "encode_state",
    "load_payload",
    "resident_state",
    "sgd_step",
    "snapshot",
    "delta",
    "DequantStats",
    "track_dequantized",
]
