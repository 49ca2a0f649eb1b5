"""Benchmark one training step (forward + backward) of each model preset on one CPU thread.

Each preset runs in a fresh subprocess, so its peak RSS (VmHWM) is its own; the subprocess sets
``MALLOC_MMAP_THRESHOLD_`` so that freed tensors leave the RSS (see `cli_main`). Per preset it reports
the step time, peak RSS, FLOPs per step (``torch.utils.flop_counter.FlopCounterMode``, which does not
see custom kernels such as ``rnnt_loss``) and the same process' single-thread fp32 matmul rate, so
step times can be read as a fraction of what the core can do (``flop_rate_ratio``).

Usage::

    python bench/asr_step.py [--presets tiny paper paper+ckpt] [--out results/bench/asr_step.json]

A preset name with ``+ckpt`` enables gradient checkpointing on every Conformer block.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def _proc_status(key: str) -> int:
    """A ``/proc/self/status`` memory field (e.g. VmHWM, VmRSS) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _matmul_rate(torch, n: int = 1024, min_seconds: float = 1.0) -> float:
    """Single-thread fp32 FLOP/s of ``n × n`` matmuls (2n³ FLOPs each)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start)


def run_child(args: argparse.Namespace) -> dict:
    """Measure one preset in this (fresh) process and return its row."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fedasr.data import Batch
    from fedasr.model import build_model, count_parameters, model_config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rss_imports = _proc_status("VmRSS")
    name, _, variant = args.child.partition("+")
    cfg = model_config(name)
    if variant == "ckpt":
        cfg = model_config(name, checkpoint_blocks=tuple(range(cfg.num_layers)))
    model = build_model(cfg).train()
    rss_model = _proc_status("VmRSS")

    frames = int(args.seconds * 100) + 1  # 10 ms hop, centred frames
    batch = Batch(
        features=torch.randn(args.batch, frames, cfg.n_mels),
        feature_lengths=torch.full((args.batch,), frames),
        targets=torch.randint(1, cfg.vocab_size + 1, (args.batch, args.tokens)),
        target_lengths=torch.full((args.batch,), args.tokens),
        ids=tuple(f"bench{i}" for i in range(args.batch)),
    )

    def step() -> float:
        loss, _ = model.loss(batch)
        loss.backward()
        for p in model.parameters():
            p.grad = None
        return loss.item()

    step()  # warm-up: allocator pools, lazy kernel init
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = _proc_status("VmHWM")  # before the FLOP-counting step, whose bookkeeping adds memory
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    rate = _matmul_rate(torch)
    load = os.getloadavg()[0]  # other processes on the machine slow every number here
    step_seconds = sorted(times)[len(times) // 2]  # median
    return {
        "preset": args.child,
        "params": count_parameters(model)["total"],
        "step_seconds": step_seconds,
        "peak_rss_bytes": peak,
        "flops_per_step": flops,
        "matmul_flops_per_second": rate,
        "flop_rate_ratio": flops / step_seconds / rate,
        "step_seconds_all": times,
        "rss_after_imports_bytes": rss_imports,
        "peak_minus_imports_bytes": peak - rss_imports,
        "weights_plus_grads_bytes": 8 * count_parameters(model)["total"],  # fp32 weights + fp32 grads
        "rss_after_model_bytes": rss_model,
        "param_breakdown": count_parameters(model),
        "head": cfg.head,
        "checkpoint_blocks": list(cfg.checkpoint_blocks),
        "batch_size": args.batch,
        "audio_seconds": args.seconds,
        "input_frames": frames,
        "target_tokens": args.tokens,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "loadavg_1min": load,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "machine": platform.processor() or platform.machine(),
        "note": "fp32, train mode, forward + backward only (no optimizer step); FLOPs exclude rnnt_loss and LSTM kernels",
    }


def cli_main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "paper"], help="presets to run (Default: tiny paper)")
    p.add_argument("--out", default="results/bench/asr_step.json", help="(Default: results/bench/asr_step.json)")
    p.add_argument("--batch", type=int, default=2, help="utterances per batch (Default: 2)")
    p.add_argument("--seconds", type=float, default=5.0, help="audio seconds per utterance (Default: 5.0)")
    p.add_argument("--tokens", type=int, default=30, help="target tokens per utterance (Default: 30)")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (Default: 3)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_child(args)))
        return
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # Return freed large tensors to the OS at once, so VmHWM tracks live memory rather than what
    # glibc's heap keeps after a free (measured: ~0.5 GiB higher and order-dependent for `paper`).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--child", preset, "--batch", str(args.batch),
               "--seconds", str(args.seconds), "--tokens", str(args.tokens), "--steps", str(args.steps)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"preset {preset} failed:\n{out.stderr}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{preset:12s} params {row['params'] / 1e6:7.2f}M  step {row['step_seconds']:7.3f} s  "
              f"peak RSS {row['peak_rss_bytes'] / 2**30:6.2f} GiB  {row['flops_per_step'] / 1e9:8.1f} GFLOP/step  "
              f"{row['flop_rate_ratio']:.2f} of matmul rate {row['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    cli_main()
