"""What a client computes in one round: FedSGD's gradient or FedAvg's delta (paper §2.3), plain functions.

Nothing here imports Flower: the ClientApp (`client_app`) only unpacks a message, calls `client_update`
and packs the reply (STYLE guideline 2), so the maths is testable on the CPU without a federation::

    FedSGD  client i:  g_i = (1/n_i) Σ_{(x,y) ∈ D_i} ∇_w ℓ(w_t; x, y)   # at the global weights, over micro-batches
    FedAvg  client i:  E local epochs from w_t → w_i;  Δ_i = w_i − w_t

The device techniques act here: Online Model Compression (`fedasr.omc`: the model stores its weights
quantized; FedAvg steps re-quantize) and partial model training (`fedasr.partial`: only the selected
variables train and are returned), and FedSGD's gradient may be folded into the upload's integer format as
backward produces it (`fedasr.grad_stream`, ``fed.grad-stream``: no whole-model fp32 gradient). The server's own
update for Mixed FL (`central_update`) is the same maths on its proxy data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from fedasr import omc, partial
from fedasr.compression import CodecConfig, Encoded
from fedasr.federated.config import FedConfig
from fedasr.federated.task import FederatedTask
from fedasr.grad_stream import GradientStream, StreamConfig
from fedasr.seeding import derive_seed

__all__ = ["Update", "trainable_names", "fedsgd_client_update", "fedavg_client_update", "partial_selection",
           "client_update", "central_update"]


@dataclass
class Update:
    """One client's reply: a gradient (FedSGD) or a weight delta (FedAvg) per trainable variable."""

    arrays: dict[str, torch.Tensor]  # variable name → tensor (same shape as the global variable)
    num_examples: int  # n_i: examples the update was computed on (the default aggregation weight)
    metrics: dict[str, float] = field(default_factory=dict)  # "loss" (mean per example), "compute-s", ...
    client_id: str = ""
    kind: Literal["gradient", "delta"] = "gradient"
    # the upload already in its codec's format (``fed.grad-stream``); ``arrays`` is then empty
    encoded: dict[str, Encoded] | None = None

    def sizes(self) -> dict[str, int]:
        """Elements per variable sent (from ``arrays`` or ``encoded``)."""
        if self.encoded is not None:
            return {k: int(torch.Size(e.shape).numel()) for k, e in self.encoded.items()}
        return {k: v.numel() for k, v in self.arrays.items()}


def trainable_names(model: torch.nn.Module) -> list[str]:
    """Return the names of the parameters that train (``requires_grad``), in module order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _batch_examples(batch: Any, info: Mapping[str, Any]) -> int:
    n = info.get("num_utterances") if isinstance(info, Mapping) else None
    return int(n) if n is not None else len(batch[0])


def _load_global(model: torch.nn.Module, global_state: Mapping[str, torch.Tensor]) -> None:
    model.load_state_dict({k: torch.as_tensor(v) for k, v in global_state.items()}, strict=True)


def fedsgd_client_update(
    model: torch.nn.Module,
    global_state: Mapping[str, torch.Tensor],
    batches: Iterable[Any],
    client_id: str = "",
    stream: tuple[CodecConfig, StreamConfig, torch.Generator | None] | None = None,
) -> Update:
    """Compute the client's mean-loss gradient at the global weights, accumulated over micro-batches.

    Each micro-batch contributes the gradient of its loss **sum**; the accumulated sum is divided by the
    number of examples at the end, so ``g_i = (1/n_i) Σ ∇ℓ`` (paper §2.3) whatever the micro-batch size:
    the micro-batch bounds activation memory, not the maths. The weights never change on the client.

    ``stream = (upload codec, StreamConfig, generator)`` folds each variable's gradient into the upload's integer
    format as backward produces it (`fedasr.grad_stream.GradientStream`): the update comes back ``encoded``.
    """
    t0 = time.perf_counter()
    _load_global(model, global_state)
    model.train()
    params = dict(model.named_parameters())
    names = trainable_names(model)
    for n in names:
        params[n].grad = None
    gs = GradientStream({n: params[n] for n in names}, *stream) if stream else None
    n_total, loss_sum = 0, 0.0
    with gs if gs is not None else contextlib.nullcontext():
        for batch in batches:
            loss, info = model.loss(batch, reduction="sum")
            n = _batch_examples(batch, info)
            if n == 0:
                continue
            loss.backward()  # grads accumulate (sum over micro-batches), or fold into the stream
            n_total += n
            loss_sum += float(loss.detach())
    if n_total == 0:
        raise ValueError(f"client {client_id!r} has no usable training examples")
    metrics = {"loss": loss_sum / n_total}
    if gs is not None:
        encoded = gs.finish(n_total)
        metrics.update({"compute-s": time.perf_counter() - t0, "stream-folds": float(gs.folds)})
        return Update({}, n_total, metrics, client_id, "gradient", encoded)
    grads = {}
    for n in names:
        g = params[n].grad
        grads[n] = (g / n_total) if g is not None else torch.zeros_like(params[n])
        params[n].grad = None
    metrics["compute-s"] = time.perf_counter() - t0
    return Update(grads, n_total, metrics, client_id, "gradient")


def _client_optimizer(name: str, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown client optimizer {name!r}")


def fedavg_client_update(
    model: torch.nn.Module,
    global_state: Mapping[str, torch.Tensor],
    batches: Iterable[Any] | Callable[[int], Iterable[Any]],
    cfg: FedConfig,
    client_id: str = "",
) -> Update:
    """Run ``cfg.local_epochs`` epochs of local training and return the delta ``w_local − w_global``.

    Args:
        batches: the client's batches (re-iterated each epoch), or ``epoch -> batches`` so the data
            can be reshuffled per epoch.
        cfg: uses ``local_epochs``, ``client_optimizer`` and ``client_lr``; each batch is one step.

    An OMC-converted model (`fedasr.omc`, paper §2.4.1) steps with `omc.sgd_step` (``Ŵ − lr·g``
    re-quantized after every step; ``client_optimizer`` must be ``"sgd"``) and forms Δ from the stored
    codes (`omc.snapshot` / `omc.delta`), so no fp32 copy of the quantized weights is kept.
    """
    t0 = time.perf_counter()
    _load_global(model, global_state)
    model.train()
    names = trainable_names(model)
    params = dict(model.named_parameters())
    quantized = omc.is_omc(model)
    if quantized:
        if cfg.client_optimizer != "sgd":
            raise ValueError(f"OMC local steps are plain SGD (omc.sgd_step), got client-optimizer {cfg.client_optimizer!r}")
        start = omc.snapshot(model, names)
        opt = None
        # stochastic re-quantization draws from the client's (seeded, forked) torch RNG stream
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
    else:
        start = {n: params[n].detach().clone() for n in names}
        opt = _client_optimizer(cfg.client_optimizer, [params[n] for n in names], cfg.client_lr)
    n_first, loss_first, steps = 0, 0.0, 0
    for epoch in range(cfg.local_epochs):
        for batch in (batches(epoch) if callable(batches) else batches):
            loss, info = model.loss(batch, reduction="mean")
            n = _batch_examples(batch, info)
            if n == 0:
                continue
            for k in names:
                params[k].grad = None
            loss.backward()
            if cfg.client_grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([params[k] for k in names], cfg.client_grad_clip)
            if opt is None:
                omc.sgd_step(model, cfg.client_lr, gen)
            else:
                opt.step()
            steps += 1
            if epoch == 0:  # loss over the first pass: comparable to FedSGD's loss at the global weights
                n_first += n
                loss_first += float(loss.detach()) * n
    if n_first == 0:
        raise ValueError(f"client {client_id!r} has no usable training examples")
    delta = omc.delta(model, start) if quantized else {n: params[n].detach() - start[n] for n in names}
    metrics = {"loss": loss_first / n_first, "steps": float(steps), "compute-s": time.perf_counter() - t0}
    return Update(delta, n_first, metrics, client_id, "delta")


def partial_selection(model: torch.nn.Module, cfg: FedConfig, server_round: int, client_id: str,
                      task: Any = None) -> tuple[list[str] | None, dict[str, float]]:
    """Return the variables this client trains this round (``cfg.partial``; None = all) and metrics.

    The selection comes from `fedasr.partial.select` (top-k blocks, PVT's random subset drawn from
    ``(cfg.seed, round, client)``, or the memory-budget policy), restricted to the parameters the task
    lets train. The budget policy is decided on the device: the round's shape comes from the client's own
    data (``task.round_shape``) and the budget from ``cfg.partial.budget_mib`` or the client's device tier
    (``task.memory_budget_bytes``); its metrics record both and the analytic peak of the chosen set.
    """
    pcfg = cfg.partial
    if not pcfg.enabled:
        return None, {}
    budget, shape, metrics = None, None, {}
    if pcfg.policy == "budget":
        if task is None or not hasattr(task, "round_shape"):
            raise ValueError("partial.policy 'budget' needs a task that reports the client's round shape (round_shape)")
        shape = dataclasses.replace(task.round_shape(client_id, cfg.micro_batch),
                                    optimizer="none" if cfg.strategy == "fedsgd" else cfg.client_optimizer,
                                    delta_copy=cfg.strategy == "fedavg",
                                    grad_bits=cfg.grad_stream.bits if cfg.grad_stream.enabled else 32)
        if pcfg.budget_mib > 0:
            budget = int(pcfg.budget_mib * (1 << 20))
        elif hasattr(task, "memory_budget_bytes"):
            budget = int(task.memory_budget_bytes(client_id))
        else:
            raise ValueError("partial.policy 'budget' needs partial.budget-mib > 0 or a task with memory_budget_bytes")
    sel = partial.select(model, pcfg, seed=cfg.seed, server_round=server_round, client_id=client_id,
                         budget_bytes=budget, shape=shape)
    if pcfg.policy == "budget":
        if not sel.fits:
            raise ValueError(f"client {client_id!r}: nothing trainable fits its {budget / 2**20:.1f} MiB budget "
                             f"(smallest analytic peak {sel.estimate_bytes / 2**20:.1f} MiB)")
        metrics = {"budget-bytes": float(budget), "estimate-bytes": float(sel.estimate_bytes)}
    chosen = set(sel.names)
    return [n for n in trainable_names(model) if n in chosen], metrics


def client_update(
    task: FederatedTask,
    model: torch.nn.Module,
    client_id: str,
    global_state: Mapping[str, torch.Tensor],
    cfg: FedConfig,
    client_seed: int,
    server_round: int = 0,
) -> Update:
    """Load one client's data from ``task`` and run the configured strategy's client update.

    Torch's RNG (dropout, SpecAugment) is seeded with ``client_seed`` inside a forked RNG state, so a
    client's update depends only on ``(global weights, seed, round, client_id)``, in any process.
    ``metrics["compute-s"]`` covers the client's whole work: loading its data and the update.

    With partial training (``cfg.partial``), only the variables `partial_selection` picks for
    ``(round, client)`` train and are returned; the model's ``requires_grad`` flags are restored after
    (the model is shared by the clients a process serves).
    """
    selection, sel_metrics = partial_selection(model, cfg, server_round, client_id, task)
    if selection is None:
        return _client_update(task, model, client_id, global_state, cfg, client_seed)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    chosen = set(selection)
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(n in chosen)
        if not chosen:
            raise ValueError(f"partial training selected no variable for client {client_id!r}")
        update = _client_update(task, model, client_id, global_state, cfg, client_seed)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
            p.grad = None
    update.metrics["trained-params"] = float(sum(update.sizes().values()))
    update.metrics.update(sel_metrics)
    return update


def _seeded_update(model: torch.nn.Module, global_state: Mapping[str, torch.Tensor], cfg: FedConfig, seed: int,
                   batches_for: Callable[[int], Iterable[Any]], who: str) -> Update:
    """Run ``cfg.strategy``'s update with torch's RNG forked and seeded by ``seed`` (dropout, SpecAugment).

    FedSGD trains on ``batches_for(seed)``; FedAvg's epoch e on ``batches_for(derive_seed(seed, "epoch", e))``,
    so the data can be reshuffled per epoch.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.strategy == "fedsgd":
            # the stream's stochastic rounding uses the upload's generator (client_app: derive_seed("upload", seed))
            stream = (cfg.transport.upload, cfg.grad_stream, torch.Generator().manual_seed(derive_seed("upload", seed))) \
                if cfg.grad_stream.enabled else None
            return fedsgd_client_update(model, global_state, batches_for(seed), who, stream)
        if cfg.strategy == "fedavg":
            return fedavg_client_update(model, global_state, lambda e: batches_for(derive_seed(seed, "epoch", e)),
                                        cfg, who)
    raise ValueError(f"unknown strategy {cfg.strategy!r}")


def _client_update(task: FederatedTask, model: torch.nn.Module, client_id: str,
                   global_state: Mapping[str, torch.Tensor], cfg: FedConfig, client_seed: int) -> Update:
    t0 = time.perf_counter()
    update = _seeded_update(model, global_state, cfg, client_seed,
                            lambda s: task.client_batches(client_id, cfg.micro_batch, s), client_id)
    if hasattr(task, "client_metrics"):  # e.g. WCA statistics the device reports (paper §2.5)
        update.metrics.update(task.client_metrics(client_id))
    update.metrics["compute-s"] = time.perf_counter() - t0
    return update


def central_update(task: FederatedTask, model: torch.nn.Module, global_state: Mapping[str, torch.Tensor],
                   cfg: FedConfig, server_round: int) -> Update:
    """The server's own update on its proxy data (Mixed FL; ``cfg.central_mix``): same maths as a client's.

    FedSGD: the mean gradient at the global weights over ``cfg.central_examples`` utterances from
    ``task.central_batches``; FedAvg: ``cfg.local_epochs`` local epochs over the same sample and the delta.
    The sample and all randomness come from ``(cfg.seed, round)``.
    """
    if not hasattr(task, "central_batches"):
        raise ValueError("central-mix > 0 needs a task with server-side data (central_batches)")
    seed = derive_seed("central", cfg.seed, server_round)
    t0 = time.perf_counter()
    batches = task.central_batches(cfg.micro_batch, seed, cfg.central_examples)  # featurized once, every epoch
    update = _seeded_update(model, global_state, cfg, seed, lambda _: batches, "central")
    update.metrics["compute-s"] = time.perf_counter() - t0
    return update
