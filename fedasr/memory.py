"""Peak memory of one client round: measured in a fresh process (VmHWM) and estimated analytically (paper §2.3).

Two views, reported side by side (DESIGN.md §5; STYLE guideline 8):

* **measured** (`measure_peak`): run ``module:function`` in a fresh Python process. Its *baseline* is
  the resident set (VmRSS) right after importing torch, fedasr, the target's module and `PRELOAD` (and after
  resetting the kernel's high-water mark to it, where Linux allows: ``echo 5 > /proc/self/clear_refs``);
  the *peak* is VmHWM when the function returns. We report ``peak - baseline`` and the raw numbers.
  VmHWM counts every resident page: tensors, allocator slack, and code pages of libraries first
  touched during the round (``rss_file_growth_bytes`` shows those), so it bounds what the tensors need
  from above. The child runs with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then serves every
  allocation above 64 KiB with its own mapping and returns it on free, so RSS follows live tensors;
  with glibc's default *dynamic* threshold, freed chunks up to 32 MiB stay in the heap and the
  high-water mark also measures fragmentation (``malloc_env={}`` restores the default).
* **analytic** (`estimate`): bytes of weights (fp32 or OMC codes), gradients, optimizer state, the
  FedAvg start copy, activations autograd keeps for backward, and the largest transient, combined per
  phase of the round (download → forward/backward → optimizer step → upload) and maximised.

Sources of the formulas: gradient checkpointing stores only each segment's input and recomputes the
rest once in backward (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"); Adam keeps
two fp32 moments per parameter (Kingma & Ba 2015; the 2× of ZeRO, Rajbhandari et al. 2020); per-layer
activation counts in the style of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models": ``sbh·(34 + 5as/h)`` for GPT); the RNN-T joint tensor ``B×T'×(U+1)×C`` (Graves
2012), whose log-softmax ``fedasr.model.rnnt_loss`` keeps for backward. Our per-block
constants were counted with saved-tensor hooks on ``fedasr.model._masked_block`` (torchaudio 2.11,
dropout > 0, CPU math attention) and are exact for that code; tests re-check them.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from . import omc

__all__ = [
    "RoundShape",
    "read_status",
    "reset_peak",
    "measure_peak",
    "cuda_peak",
    "saved_tensor_bytes",
    "block_activation_floats",
    "activation_breakdown",
    "estimate",
]

F32 = 4  # bytes per fp32 value
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------
# Measured: VmHWM of a fresh process
# ---------------------------------------------------------------------------------------------------


def read_status() -> dict[str, int]:
    """Return VmRSS, VmHWM, VmSize, VmPeak, RssAnon and RssFile of this process in bytes (``/proc/self/status``)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize", "VmPeak", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) * 1024  # the kernel reports kB
    return out


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ≥ 4.0 ``clear_refs`` = 5); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # large allocations mmapped and unmapped on free (glibc)
# Imported before the baseline: torch.utils.checkpoint imports torch._dynamo on its first call (~110 MB of
# Python objects), which is an import, not memory of the round.
PRELOAD = ("torch._dynamo",)


def measure_peak(target: str, kwargs: Mapping[str, Any] | None = None, *, timeout: float | None = None,
                 env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                 malloc_env: Mapping[str, str] = MALLOC_ENV, preload: Iterable[str] = PRELOAD) -> dict[str, Any]:
    """Run ``target(**kwargs)`` once in a fresh Python process and return its peak memory.

    Args:
        target: ``"package.module:function"``; importable from ``cwd`` (default: the repository root).
            The function's return value must be JSON-serialisable; it comes back as ``result``.
        kwargs: JSON-serialisable keyword arguments.
        timeout: seconds before the child is killed (`subprocess.TimeoutExpired`).
        env: extra environment variables (``OMP_NUM_THREADS=1`` is always set: DESIGN.md §6).
        cwd: working directory of the child.
        malloc_env: allocator settings of the child (module docstring); ``{}`` = glibc defaults.
        preload: modules imported before the baseline besides the target's (lazy imports of the round).

    Returns:
        ``peak_rss_bytes`` (VmHWM at the end − baseline VmRSS), ``baseline_rss_bytes``,
        ``vmhwm_bytes`` (raw, at the end), ``vmhwm_after_imports_bytes`` (raw, before the reset),
        ``hwm_reset`` (whether the kernel reset VmHWM to the baseline; if not, a peak below the
        import-time high-water mark is hidden and ``peak_rss_bytes`` is a lower bound),
        ``rss_file_growth_bytes`` (file-backed pages, i.e. library code, added during the call),
        ``rss_anon_end_bytes`` − ``rss_anon_baseline_bytes`` (anonymous memory still held at the end),
        ``wall_seconds`` and ``result``.

    Raises:
        RuntimeError: the child failed (its stderr tail is in the message).
    """
    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / "result.json"
        request = json.dumps({"target": target, "kwargs": dict(kwargs or {}), "out": str(out_path),
                              "preload": list(preload)})
        child_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **malloc_env, **(env or {})}
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(cwd or ROOT), child_env.get("PYTHONPATH")) if p)
        proc = subprocess.run([sys.executable, "-c", "from fedasr.memory import _child; _child()"],
                              input=request, capture_output=True, text=True, timeout=timeout,
                              cwd=str(cwd or ROOT), env=child_env)
        if proc.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"measure_peak({target}) failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out_path.read_text())


def _child() -> None:
    """Body of the fresh process of `measure_peak` (reads its request from stdin)."""
    req = json.loads(sys.stdin.read())
    torch.set_num_threads(1)
    module, _, attr = req["target"].partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)  # imports belong to the baseline
    for name in req.get("preload", ()):
        importlib.import_module(name)
    gc.collect()
    after_imports = read_status()
    reset = reset_peak()
    baseline = read_status()
    t0 = time.perf_counter()
    result = fn(**req["kwargs"])
    wall = time.perf_counter() - t0
    end = read_status()
    Path(req["out"]).write_text(json.dumps({
        "peak_rss_bytes": end["VmHWM"] - baseline["VmRSS"],
        "baseline_rss_bytes": baseline["VmRSS"],
        "vmhwm_bytes": end["VmHWM"],
        "vmhwm_after_imports_bytes": after_imports["VmHWM"],
        "hwm_reset": reset and baseline["VmHWM"] - baseline["VmRSS"] <= (1 << 20),
        "rss_file_growth_bytes": end.get("RssFile", 0) - baseline.get("RssFile", 0),
        "rss_anon_baseline_bytes": baseline.get("RssAnon", 0),
        "rss_anon_end_bytes": end.get("RssAnon", 0),
        "wall_seconds": wall,
        "result": result,
    }))


def _allocate(nbytes: int) -> dict[str, int]:
    """Touch ``nbytes`` of fresh fp32 memory (a `measure_peak` target for self-checks)."""
    x = torch.ones(nbytes // F32)
    return {"numel": x.numel()}


@contextlib.contextmanager
def cuda_peak(device: torch.device | str | None = None) -> Iterator[dict[str, int | None]]:
    """Reset and read CUDA's peak-allocated counter around a block; ``{"peak_bytes": None}`` on CPU."""
    out: dict[str, int | None] = {"peak_bytes": None}
    if not torch.cuda.is_available():
        yield out
        return
    torch.cuda.reset_peak_memory_stats(device)
    try:
        yield out
    finally:
        out["peak_bytes"] = torch.cuda.max_memory_allocated(device)


def saved_tensor_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> tuple[Any, int]:
    """Run ``fn()`` and return ``(its result, bytes of distinct storages autograd saved for backward)``.

    Storages of ``exclude`` (e.g. the model's parameters, which are saved by reference) are skipped;
    the result keeps the graph alive, so the caller decides when to free it.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip and ptr not in seen:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, sum(seen.values())


# ---------------------------------------------------------------------------------------------------
# Analytic model
# ---------------------------------------------------------------------------------------------------


@dataclass
class RoundShape:
    """What one client round does, as the analytic model sees it (all utterances alike)."""

    batch: int = 1  # utterances per forward/backward pass (the micro-batch), B
    frames: int = 800  # input 10 ms frames per utterance, T (800 = 8 s)
    tokens: int = 40  # target tokens per utterance, U
    micro_batches: int = 1  # forward/backward passes in the round (FedSGD accumulates; FedAvg steps after each)
    optimizer: Literal["none", "sgd", "momentum", "adam"] = "none"  # client optimizer (FedSGD: none, §2.3)
    delta_copy: bool = False  # FedAvg keeps the round's start weights to form Δ (fp32, or OMC codes)
    download_bytes: int = 0  # encoded download held beside the decoded weights (0 when adopted as storage)
    upload_bytes_per_param: float = 0.0  # encoded upload per trained parameter, held beside the fp32 update
    # (int8: ~1, fp16: 2; 0 when the codec shares the update's storage, as fp32 "none" does)
    grad_bits: int = 32  # bits per gradient value held between micro-batches: 32 = fp32 .grad; 8 or 16 =
    # fedasr.grad_stream's accumulators (no fp32 update is formed: the accumulator is the upload)


def _subsampled(frames: int) -> int:
    return max(0, ((frames - 1) // 2 - 1) // 2)  # fedasr.model.ConvSubsampling.output_lengths


def block_activation_floats(batch: int, frames_out: int, d_model: int, ffn_dim: int, heads: int) -> int:
    """fp32 values one Conformer block saves for backward: ``B·T'·(27·D + 6·F + 11) + 3·B·H·T'² + 2·B``.

    Linear terms: layer-norm/linear inputs, SiLU/GLU inputs, dropout masks (1 byte each) of the two
    macaron feed-forwards (6·F in total), attention projections and the padding-aware conv module;
    quadratic term: attention probabilities, their dropout mask and the dropped-out copy (math
    attention on CPU); 2·B: the conv module's per-utterance GroupNorm statistics. Counted exactly with
    `saved_tensor_bytes` (module docstring).
    """
    b, t = batch, frames_out
    return b * t * (27 * d_model + 6 * ffn_dim + 11) + 3 * b * heads * t * t + 2 * b


def _units(model: nn.Module) -> dict[str, int]:
    """Depth of each parameter: -1 subsampling, i for Conformer block i, L for the head."""
    n_blocks = model.config.num_layers
    depth = {}
    for name, _ in model.named_parameters():
        if name.startswith("conformer.conformer_layers."):
            depth[name] = int(name.split(".")[2])
        elif name.startswith(("subsampling.", "normalizer.")):
            depth[name] = -1
        else:
            depth[name] = n_blocks
    return depth


def activation_breakdown(model: nn.Module, shape: RoundShape, trainable: set[str],
                         checkpoint_blocks: Iterable[int] | None = None) -> dict[str, int]:
    """Bytes autograd keeps for backward in one pass, per component, plus the largest transient.

    Autograd records nothing for ops whose inputs need no gradient, so parts below the lowest
    trainable variable store nothing (frozen bottom blocks cost no activations; paper.md §2.4.2).
    Checkpointed blocks on the gradient path keep only their input ``B·T'·D`` (Chen et al. 2016) and
    recompute one block at a time in backward (a transient).
    """
    c = model.config
    b, u = shape.batch, shape.tokens
    t_in, t = shape.frames, _subsampled(shape.frames)
    ckpt = set(c.checkpoint_blocks if checkpoint_blocks is None else checkpoint_blocks)
    depth = _units(model)
    lowest = min((depth[n] for n in trainable), default=None)
    out = dict.fromkeys(("subsampling", "blocks", "predictor", "joiner", "loss"), 0)
    trans = dict.fromkeys(("loss", "recompute", "omc_dequantized"), 0)
    if lowest is None:
        return {**out, "total": 0, "transient": 0}
    block = block_activation_floats(b, t, c.d_model, c.ffn_dim, c.num_heads) * F32
    if lowest < 0:  # conv1 input, ReLU outputs, linear input (a reshaped copy), dropout mask
        f1, f2 = (c.n_mels - 1) // 2, ((c.n_mels - 1) // 2 - 1) // 2
        t1 = (t_in - 1) // 2
        ch = c.subsampling_channels
        out["subsampling"] = b * (t_in * c.n_mels + ch * t1 * f1 + 2 * ch * t * f2 + t * c.d_model // 4) * F32
    on_path = [i for i in range(c.num_layers) if i >= lowest]
    out["blocks"] = sum(b * t * c.d_model * F32 if i in ckpt else block for i in on_path)
    if any(i in ckpt for i in on_path):
        trans["recompute"] = block
    if c.head == "rnnt":
        if any(n.startswith("predictor.") for n in trainable):  # embedding output + LSTM gates/states per step
            per_step = c.pred_embed_dim + 18.5 * c.pred_num_layers * c.pred_hidden_dim
            out["predictor"] = int(b * (u + 1) * per_step) * F32
        out["joiner"] = b * (t * (u + 1) * c.joiner_dim + t * c.d_model + (u + 1) * c.pred_hidden_dim) * F32
        logits = b * t * (u + 1) * (c.vocab_size + 1) * F32
        out["loss"] = logits  # the log-softmax output, kept for backward (fedasr.model.rnnt_loss)
        # forward: the logits beside it; backward: the logits' gradient (one buffer) beside it, then the tanh's
        trans["loss"] = logits + 2 * b * t * (u + 1) * c.joiner_dim * F32
    else:  # CTC: log-softmax output kept, logits-sized gradient in backward
        out["loss"] = b * t * (c.vocab_size + 1) * F32
        trans["loss"] = 2 * b * t * (c.vocab_size + 1) * F32
    trans["omc_dequantized"] = _largest_scope_bytes(model)
    total = sum(out.values())
    return {**out, "total": total, "transient": max(trans["loss"], trans["recompute"]) + trans["omc_dequantized"]}


def _largest_scope_bytes(model: nn.Module) -> int:
    """fp32 bytes of the largest group of weights OMC dequantizes at once (0 without OMC)."""
    if not omc.is_omc(model):
        return 0
    per_scope: dict[int, int] = {}
    for qv in model._omc.vars.values():
        n = qv.owner._parameters[qv.attr].numel()
        per_scope[id(qv.scope)] = per_scope.get(id(qv.scope), 0) + n * F32
    return max(per_scope.values(), default=0)


def estimate(model: nn.Module, shape: RoundShape, trainable: Iterable[str] | None = None,
             checkpoint_blocks: Iterable[int] | None = None) -> dict[str, Any]:
    """Analytic peak memory of one client round, with its breakdown (bytes).

    Args:
        model: the client's `fedasr.model.ASRModel` as it will train (real or on the ``meta`` device,
            plain or OMC-converted: weights are counted from its actual storage).
        shape: the round (`RoundShape`).
        trainable: variables that train (default: parameters with ``requires_grad``).
        checkpoint_blocks: blocks recomputed in backward (default: ``model.config.checkpoint_blocks``).

    Returns:
        ``weights``, ``gradients``, ``optimizer``, ``weight_copy``, ``activations``, ``transient``,
        ``activations_detail`` (per component), ``phases`` (total per phase) and ``peak`` = the largest
        phase. Phases: *download* = weights + encoded download; *backward* = weights + copy + activations
        + transient (+ gradients and optimizer state accumulated by earlier passes when there are
        several); *step* = weights + copy + gradients + optimizer; *upload* = weights + copy + optimizer
        + gradients (if an optimizer ran) + the fp32 update + the encoded upload. With ``shape.grad_bits`` < 32
        (`fedasr.grad_stream`) the gradients are the accumulators' codes, held through backward beside a fold's
        transient (two fp32 copies of the largest trained variable), and no fp32 update is formed.
    """
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad} if trainable is None else set(trainable)
    qnames = set(omc.quantized_names(model))
    p_train = sum(params[n].numel() for n in trainable)
    weights = omc.storage_bytes(model)["total"]
    gradients = p_train * shape.grad_bits // 8
    streamed = shape.grad_bits < 32
    # a streamed fold holds one variable's fp32 gradient and its dequantized accumulator at once
    fold = 2 * max((params[n].numel() for n in trainable), default=0) * F32 if streamed else 0
    optimizer = {"none": 0, "sgd": 0, "momentum": 1, "adam": 2}[shape.optimizer] * p_train * F32
    if shape.delta_copy and qnames:
        copy = sum(omc._codes(model._omc.vars[n]).nbytes if n in qnames else params[n].numel() * F32
                   for n in trainable)
    else:
        copy = p_train * F32 if shape.delta_copy else 0
    acts = activation_breakdown(model, shape, trainable, checkpoint_blocks)
    earlier = shape.micro_batches > 1
    phases = {
        "download": weights + shape.download_bytes,
        "backward": weights + copy + acts["total"] + acts["transient"] + fold
        + (gradients + optimizer if earlier or streamed else 0),
        "step": weights + copy + gradients + optimizer if shape.optimizer != "none" else 0,
        "upload": weights + copy + optimizer + (gradients if shape.optimizer != "none" or streamed else 0)
        + (0 if streamed else p_train * F32) + int(shape.upload_bytes_per_param * p_train),
    }
    detail = {k: v for k, v in acts.items() if k not in ("total", "transient")}
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer, "weight_copy": copy,
            "activations": acts["total"], "transient": acts["transient"], "activations_detail": detail,
            "phases": phases, "peak": max(phases.values()), "trainable_params": p_train, "shape": asdict(shape)}
