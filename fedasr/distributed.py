"""Data parallelism for central training: ``torchrun`` or spawned ranks, process groups, DDP that sums gradients.

The seed model (`fedasr.train`) trains with one process per CPU core or GPU (DESIGN §6). The same worker runs
under ``torchrun --nproc-per-node N -m fedasr.train ...`` (one or many machines; `torchrun_env`) and under a
plain ``python -m fedasr.train``, which spawns ``train.workers`` processes on this machine (`spawn`). Either
way the gradients are reduced by ``torch.nn.parallel.DistributedDataParallel`` (gloo on CPU, nccl with CUDA),
and the little non-gradient bookkeeping (utterance counts, loss sums, rank 0's clock, the stop flag) is one
small explicit ``all_reduce`` (`all_reduce_stats`).

DDP *averages* gradients over ranks by default; seed training needs their *sum* (each rank back-propagates the
summed loss of its shard and the update divides by the global utterance count, paper §2.3's exact mean), so
`data_parallel` registers `_sum_hook`, a comm hook that all-reduces without DDP's division by the world size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fedasr.ports import free_port

__all__ = ["TORCHRUN_KEYS", "RankInfo", "all_reduce_stats", "barrier", "data_parallel", "device", "from_rank0",
           "is_rank0", "join", "leave", "run_ranks", "spawn", "torchrun_env", "world_size"]

TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # set by torchrun per rank


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits: global ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int
    world: int
    local_rank: int


def torchrun_env(environ: Mapping[str, str] | None = None) -> RankInfo | None:
    """The rank ``torchrun`` (torch.distributed.run) gave this process, or None outside torchrun (no RANK,
    WORLD_SIZE or LOCAL_RANK: a shell that only exports MASTER_ADDR/MASTER_PORT is not a launcher).

    Raises:
        ValueError: a rank variable is set but not all of `TORCHRUN_KEYS` are (a half-configured launcher).
    """
    env = os.environ if environ is None else environ
    present = [k for k in TORCHRUN_KEYS if k in env]
    if not {"RANK", "WORLD_SIZE", "LOCAL_RANK"} & set(present):
        return None
    if len(present) < len(TORCHRUN_KEYS):
        missing = [k for k in TORCHRUN_KEYS if k not in env]
        raise ValueError(f"torchrun environment incomplete: {present} set but {missing} missing")
    return RankInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def device(rank: int = 0) -> torch.device:
    """The device a rank trains on: its own GPU when CUDA is there (``cuda:LOCAL_RANK`` under torchrun,
    ``cuda:rank`` for ranks spawned on this machine), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")


def _init(info: RankInfo, init_method: str) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)  # nccl collectives (and broadcast_object_list) use this device
    dist.init_process_group(_backend(), init_method=init_method, rank=info.rank, world_size=info.world)


def join() -> RankInfo | None:
    """Under torchrun, join its process group (``env://``, once) and return this rank; else None."""
    info = torchrun_env()
    if info is not None and not dist.is_initialized():
        _init(info, "env://")
    return info


def world_size(configured: int) -> int:
    """How many ranks a run has: torchrun's world size under torchrun (joining its group), else ``configured``."""
    info = join()
    return info.world if info is not None else max(1, configured)


def is_rank0() -> bool:
    """Whether this process is rank 0 of its group (or there is no group)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def leave() -> None:
    """Tear down the process group, if there is one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


class _SummedLoss(nn.Module):
    """``model.loss(batch, reduction="sum")`` as a forward pass, so that DDP sees (and hooks) it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch, reduction="sum", on_invalid="skip")


def _sum_hook(state, bucket):  # no annotations: DDP checks them, and this module's are strings
    """DDP comm hook: the bucket's (a ``dist.GradBucket``) gradients summed over ranks, as a
    ``Future[Tensor]`` (DDP's default hook divides by the world size).

    With 2 ranks each element is ``a + b`` whichever way the bucket is cut, so the sum is bit-identical to one
    all_reduce of a flat buffer; with more ranks the ring all-reduce may add in another order (last-bit changes).
    """
    del state  # Unused.
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def data_parallel(model: nn.Module, dev: torch.device) -> nn.Module:
    """``batch -> (summed loss, info)`` of ``model`` (an `ASRModel`); with a process group, wrapped in DDP so
    that ``backward()`` leaves each parameter's gradient summed over all ranks.

    ``broadcast_buffers=False``: ranks keep their own BatchNorm running statistics (they do not affect training,
    which normalises with batch statistics) and rank 0's are the ones checkpointed, as before DDP.
    """
    loss = _SummedLoss(model)
    if not dist.is_initialized():
        return loss
    ddp = nn.parallel.DistributedDataParallel(loss, device_ids=[dev] if dev.type == "cuda" else None,
                                              broadcast_buffers=False)
    ddp.register_comm_hook(None, _sum_hook)
    return ddp


def all_reduce_stats(values: Sequence[float], dev: torch.device) -> list[float]:
    """Sum a few float64 numbers over ranks (identity without a process group)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=dev)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (itself without a process group); other ranks pass a placeholder."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _spawned(rank: int, fn: Callable, world: int, port: int, args: tuple) -> None:
    _init(RankInfo(rank, world, rank), f"tcp://127.0.0.1:{port}")
    try:
        fn(rank, world, *args)
    finally:
        leave()


def spawn(fn: Callable, world: int, *args: Any) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` new processes on this machine, each in one process group
    (loopback TCP rendezvous; the same group torchrun would give them)."""
    mp.start_processes(_spawned, args=(fn, world, free_port(), args), nprocs=world, join=True, start_method="spawn")


def run_ranks(prepare: Callable[[], Any], worker: Callable, workers: int) -> tuple[Any, int] | None:
    """Run ``worker(rank, world, job)`` on every rank, ``job = prepare()`` made once, by rank 0 (or here).

    Under torchrun (`join`) this process is one rank and rank 0 broadcasts the job; otherwise ``workers``
    ranks are spawned (`spawn`), or the worker runs in this process when ``workers`` is 1.

    Returns:
        ``(job, world)`` on rank 0 or in the launching process once every rank is done; None on other ranks.

    Raises:
        Exception: what ``prepare`` raised (on rank 0; the other ranks raise a RuntimeError naming it).
    """
    info = join()
    job, error = None, None
    if info is None or info.rank == 0:
        try:
            job = prepare()
        except Exception as e:  # noqa: BLE001 — re-raised below, once every rank has heard of it
            error = e
    job, failure = from_rank0((job, None if error is None else repr(error)))  # other ranks would wait forever
    if error is not None:
        raise error
    if failure is not None:
        raise RuntimeError(f"rank 0 could not prepare the job: {failure}")
    if info is not None:
        worker(info.rank, info.world, job)
        return (job, info.world) if info.rank == 0 else None
    workers = max(1, workers)
    if workers == 1:
        worker(0, 1, job)
    else:
        spawn(worker, workers, job)
    return job, workers
