"""Federated training as plain functions: FedSGD / FedAvg client updates, aggregation, server optimizer.

Nothing here imports Flower: the Flower apps in ``client_app.py`` / ``server_app.py`` only translate
messages into calls of these functions (STYLE guideline 2), so every piece of maths is testable on the
CPU without starting a federation.

Paper §2.3 (FedSGD, McMahan et al. 2017)::

    client i:  g_i = (1/n_i) Σ_{(x,y) ∈ D_i} ∇_w ℓ(w_t; x, y)     # at the global weights, over micro-batches
    server:    G_t = Σ_i a_i g_i / Σ_i a_i                          # a_i = n_i (WCA weights later, §2.5)
               w_{t+1} = ServerOpt(w_t, G_t)                         # SGD(+momentum) or Adam, state on the server

FedAvg: the client runs E local epochs and uploads Δ_i = w_i − w_t; the server applies its optimizer to
the pseudo-gradient −Δ̄ (FedOpt, Reddi et al. 2021; server SGD with lr 1 and no momentum is plain FedAvg).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "FederatedTask",
    "FedConfig",
    "TaskSpec",
    "RunSpec",
    "FederatedConfig",
    "config_from_run_config",
    "fed_to_flat",
    "fed_from_flat",
    "TASKS",
    "make_task",
    "derive_seed",
    "sample_clients",
    "Update",
    "trainable_names",
    "payload_bytes",
    "fedsgd_client_update",
    "fedavg_client_update",
    "client_update",
    "partial_selection",
    "central_update",
    "mix_central",
    "encode_arrays",
    "decode_arrays",
    "encode_download",
    "decode_download",
    "validate_update",
    "aggregate",
    "ServerOptimizer",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
]


# ---------------------------------------------------------------------------------------------------
# The task interface: what the federated layer needs from a model + its data
# ---------------------------------------------------------------------------------------------------


@runtime_checkable
class FederatedTask(Protocol):
    """What the federated layer needs from a learning task (the toy task, or the ASR task).

    A task is built from plain config values (`TaskSpec`) in every process that needs it: the server
    (population, initial model, evaluation) and each client process (model, on-device data). It must be
    cheap to construct; data of a client is only loaded when `client_batches` is called for it.

    Contract of the model returned by `build_model`:
        ``model.loss(batch, reduction="sum") -> (loss, info)`` where ``loss`` is the scalar **sum** of
        per-example losses of the examples used and ``info["num_utterances"]`` (optional) the number of
        examples used (default: ``len(batch[0])``, i.e. the leading dimension of the batch's first
        field, as in `fedasr.data.Batch.features` ``(B, T, F)``). ``reduction="mean"`` must return the
        per-example mean. Only parameters with ``requires_grad`` are trained and uploaded.
    """

    def build_model(self) -> torch.nn.Module:
        """Return a freshly initialised model (the server overwrites its weights with the global ones)."""

    def client_ids(self) -> Sequence[str]:
        """Return the population's client ids, in a fixed order (≥ 500 must be cheap: ids only)."""

    def num_examples(self, client_id: str) -> int:
        """Return the number of training examples (utterances) one client holds."""

    def client_batches(self, client_id: str, micro_batch: int, seed: int) -> Iterable[Any]:
        """Return one client's on-device training batches of at most ``micro_batch`` examples.

        ``seed`` fixes any shuffling (it is derived from ``(seed, round, client_id[, epoch])``).
        Raising here marks the client as failed for this round (the round goes on without it).
        """

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Return server-side evaluation metrics of ``model`` (e.g. ``{"wer_user": 0.31}``)."""


# ---------------------------------------------------------------------------------------------------
# Configuration (one config flow: fedasr.config; kebab-case keys in TOML / Flower run_config)
# ---------------------------------------------------------------------------------------------------


@dataclass
class FedConfig:
    """Federated optimisation knobs (``[fed]`` table; ``fed.*`` keys in Flower's run config)."""

    strategy: Literal["fedsgd", "fedavg"] = "fedsgd"  # paper's baseline is FedSGD (§2.3)
    num_rounds: int = 3  # server rounds to run in total (a resumed run continues up to this)
    clients_per_round: int = 2  # K sampled clients per round (without replacement)
    min_successful_clients: int = 1  # fewer successful replies → round skipped (weights unchanged)
    micro_batch: int = 8  # utterances per forward/backward; FedSGD: memory only, FedAvg: local step size
    local_epochs: int = 1  # FedAvg: local passes over the client's data (ignored by FedSGD)
    client_optimizer: Literal["sgd", "adam"] = "sgd"  # FedAvg local optimizer (FedSGD has none: §2.3)
    client_lr: float = 0.05  # FedAvg local learning rate
    client_grad_clip: float = 0.0  # FedAvg: clip each local step's gradient norm to this (0 = off)
    server_optimizer: Literal["sgd", "adam"] = "sgd"  # applied to G_t (FedSGD) or −Δ̄ (FedAvg)
    server_lr: float = 1.0  # FedSGD: the step size η; FedAvg: 1.0 + sgd + momentum 0 = plain FedAvg
    server_momentum: float = 0.0  # server SGD momentum (FedAvgM when > 0 with FedAvg)
    server_beta1: float = 0.9  # server Adam β1
    server_beta2: float = 0.999  # server Adam β2
    server_eps: float = 1e-8  # server Adam ε (FedOpt's τ; 1e-3 is common for FedAdam)
    eval_every: int = 1  # server-side evaluation every k rounds (+ round 0 and the last); 0 = never
    round_timeout_s: float = 600.0  # replies later than this are counted as failed ("timeout")
    seed: int = 0  # client sampling uses (seed, round); client seeds use (seed, round, client_id)
    node_data: Literal["shared", "partitioned"] = "shared"  # who hosts which client: see `strategies`
    allow_partial_updates: bool = False  # True: a client may send a subset of the trainable variables
    checkpoint_every: int = 1  # write the server checkpoint every k rounds (and after the last)
    min_nodes: int = 1  # wait for this many connected SuperNodes before the first round
    node_wait_s: float = 120.0  # ... for at most this long (then fail with a clear error)
    weighting: str = "examples"  # aggregation weights a_i: "examples" (n_i, FedAvg) or a WCA method of
    #   fedasr.refinement.WCA_METHODS ("frequency", "loss", ...) computed from client-sent statistics (§2.5)
    wca_buckets: int = 1024  # size of the hashed corrected-word histogram clients send for WCA
    wca_power: float = 1.0  # γ sharpening the WCA score (0 = plain n_i)
    # Transport compression (paper §2.3; fedasr.compression): a CODECS name per direction. "none" = fp32
    # arrays exactly as before; anything else travels as `compression.to_arrays` arrays + a JSON description.
    download_codec: str = "none"  # server → client global weights (e.g. "fp16"); one encoding per round
    upload_codec: str = "none"  # client → server update (e.g. "int8_sr": stochastic rounding, client-seeded)
    upload_symmetric: bool = True  # int* upload codecs: zero-centred grid (suits gradients/deltas); False = affine
    upload_lossless: str = "none"  # "zlib": lossless coding of the upload's packed bytes (counted after it)
    # Partial model training (paper §2.4.2; fedasr.partial): which variables each client trains and uploads.
    partial_policy: str = "all"  # "all" | "top_k" | "random" (PVT, per (seed, round, client)) | "budget"
    partial_top_k: int = 6  # top_k: Conformer blocks trained, counted from the output side
    partial_train_head: bool = True  # top_k/budget: the predictor + joiner (or CTC head) train too
    partial_fraction: float = 0.5  # random: share of the parameters trained per client and round
    partial_unit: str = "block"  # random: draw whole units ("block") or single variables ("variable")
    partial_budget_mib: float = 0.0  # budget: the client's training-memory budget in MiB; 0 = its device
    #   tier's (task.memory_budget_bytes, fedasr.clients); the round's shape comes from the client's own data
    partial_budget_margin: float = 0.0  # budget: share of the budget kept free (allocator slack)
    # Mixed FL (paper §1: FL "combined with centralized server training under a joint training framework";
    # Augenstein et al. 2022; paper.md open question 17 on forgetting): each round the server also computes
    # the same kind of update on ``central_examples`` utterances of its own proxy data (task.central_batches)
    # and steps on (1 - α)·aggregate + α·central. 0 = plain FL; 1 = the central-only control.
    central_mix: float = 0.0  # α
    central_examples: int = 64  # server-side proxy utterances per round (a fresh seeded sample each round)
    # Online Model Compression on the client (paper §2.4.1; fedasr.omc): the client stores its weight
    # matrices quantized and the download travels in that storage format (it replaces download-codec).
    omc_bits: int = 0  # 0 = off; 16, 8, 4 or 2 bits per stored weight
    omc_transform: str = "per_variable"  # OMC technique 1: "per_variable" | "per_channel" | "global" (ablation)
    omc_fp32_fraction: float = 0.0  # OMC technique 3: share of weight matrices kept fp32 (ends first)
    omc_rounding: str = "nearest"  # FedAvg local steps re-quantize: "nearest" | "stochastic"

    def __post_init__(self) -> None:
        if self.num_rounds < 0 or self.clients_per_round < 1 or self.min_successful_clients < 1:
            raise ValueError("num-rounds must be >= 0, clients-per-round and min-successful-clients >= 1")
        if self.micro_batch < 1 or self.local_epochs < 1:
            raise ValueError("micro-batch and local-epochs must be >= 1")
        if self.round_timeout_s <= 0:
            raise ValueError("round-timeout-s must be > 0")
        from fedasr.refinement import WCA_METHODS  # plain Python: no Flower/torch import cycle

        if self.weighting not in WCA_METHODS:
            raise ValueError(f"weighting must be one of {WCA_METHODS}, got {self.weighting!r}")
        from fedasr.compression import CODECS  # plain torch/numpy: no cycle

        for key in ("download_codec", "upload_codec"):
            if getattr(self, key) not in CODECS:
                raise ValueError(f"{key.replace('_', '-')} must be one of {sorted(CODECS)}, got {getattr(self, key)!r}")
        if self.upload_lossless not in ("none", "zlib"):
            raise ValueError(f"upload-lossless must be 'none' or 'zlib', got {self.upload_lossless!r}")
        if self.partial_policy not in ("all", "top_k", "random", "budget"):
            raise ValueError(f"partial-policy must be 'all', 'top_k', 'random' or 'budget', got {self.partial_policy!r}")
        if self.partial_budget_mib < 0 or not 0.0 <= self.partial_budget_margin < 1.0:
            raise ValueError("partial-budget-mib must be >= 0 and partial-budget-margin in [0, 1)")
        if not 0.0 <= self.central_mix <= 1.0 or self.central_examples < 1:
            raise ValueError("central-mix must be in [0, 1] and central-examples >= 1")
        if self.omc_bits not in (0, 2, 4, 8, 16):
            raise ValueError(f"omc-bits must be 0 (off), 2, 4, 8 or 16, got {self.omc_bits}")
        if self.omc_transform not in ("per_variable", "per_channel", "global"):
            raise ValueError(f"omc-transform must be 'per_variable', 'per_channel' or 'global', got {self.omc_transform!r}")
        if self.omc_rounding not in ("nearest", "stochastic"):
            raise ValueError(f"omc-rounding must be 'nearest' or 'stochastic', got {self.omc_rounding!r}")
        if not 0.0 <= self.omc_fp32_fraction <= 1.0:
            raise ValueError(f"omc-fp32-fraction must be in [0, 1], got {self.omc_fp32_fraction}")
        if self.omc_bits:
            if self.download_codec != "none":
                raise ValueError(f"omc-bits = {self.omc_bits}: the download travels in the OMC storage format, so "
                                 f"download-codec must be 'none' (got {self.download_codec!r})")
            if self.strategy == "fedavg" and self.client_optimizer != "sgd":
                raise ValueError("OMC with FedAvg re-quantizes after each local SGD step (omc.sgd_step): "
                                 f"client-optimizer must be 'sgd', got {self.client_optimizer!r}")
        if self.partial_unit not in ("block", "variable"):
            raise ValueError(f"partial-unit must be 'block' or 'variable', got {self.partial_unit!r}")
        if self.partial_top_k < 0 or not 0.0 < self.partial_fraction <= 1.0:
            raise ValueError("partial-top-k must be >= 0 and partial-fraction in (0, 1]")

    @property
    def partial_updates(self) -> bool:
        """True when a client may upload a subset of the trainable variables (partial training or opted in)."""
        return self.allow_partial_updates or self.partial_policy != "all"

    def download_codec_config(self) -> Any:
        """The download's `compression.CodecConfig`."""
        from fedasr.compression import CodecConfig

        return CodecConfig(self.download_codec)

    def upload_codec_config(self) -> Any:
        """The upload's `compression.CodecConfig`."""
        from fedasr.compression import CodecConfig

        return CodecConfig(self.upload_codec, symmetric=self.upload_symmetric, lossless=self.upload_lossless)

    def omc_config(self) -> Any:
        """The client's `omc.OMCConfig` (None when ``omc_bits`` is 0)."""
        if not self.omc_bits:
            return None
        from fedasr.omc import OMCConfig

        return OMCConfig(bits=self.omc_bits, transform=self.omc_transform, fp32_fraction=self.omc_fp32_fraction,
                         rounding=self.omc_rounding)

    @property
    def compress_download(self) -> bool:
        """True when the download travels encoded (a codec, or the OMC storage format; otherwise the fp32
        ArrayRecord, as without compression)."""
        return self.download_codec != "none" or self.omc_bits > 0

    @property
    def compress_upload(self) -> bool:
        """True when the upload travels encoded."""
        return self.upload_codec != "none" or self.upload_lossless != "none"


@dataclass
class TaskSpec:
    """Which task to build, from config values alone (so `flwr run` / SuperNodes can rebuild it)."""

    name: str = "toy"  # a key of `TASKS` or "package.module:factory"
    params: dict = field(default_factory=dict)  # passed to the factory, which validates its own keys


@dataclass
class RunSpec:
    """Where the run's records go (``results/<experiment>/<run-id>/``)."""

    experiment: str = "federated"  # results sub-folder
    run_id: str = ""  # "" → UTC timestamp chosen when the run starts
    results_root: str = "results"  # relative to the ServerApp's working directory
    resume: bool = False  # continue from the run folder's checkpoint (same run-id) instead of starting anew


@dataclass
class FederatedConfig:
    """Everything one federated run needs: ``fed`` (maths), ``task`` (model + data), ``run`` (records)."""

    fed: FedConfig = field(default_factory=FedConfig)
    task: TaskSpec = field(default_factory=TaskSpec)
    run: RunSpec = field(default_factory=RunSpec)


FEDERATED_TABLES = ("fed", "task", "run")


def config_from_run_config(run_config: Mapping[str, Any]) -> FederatedConfig:
    """Build a `FederatedConfig` from Flower's flat ``context.run_config`` (``flwr run`` / SuperNodes).

    ``fed.*``, ``task.*`` and ``run.*`` keys are parsed by `fedasr.config.from_run_config` (unknown keys
    fail, naming the key). Keys of any other top-level table (e.g. ``model.preset``) are handed to the
    task inside ``task.params`` (``{"model": {"preset": ...}}``), where the task's own config validates
    them, so a task can keep its knobs in their own ``[tool.flwr.app.config.<table>]``.
    """
    from fedasr.config import from_run_config

    ours = {k: v for k, v in run_config.items() if k.split(".", 1)[0] in FEDERATED_TABLES}
    cfg = from_run_config(FederatedConfig, ours)
    extra = {k: v for k, v in run_config.items() if k.split(".", 1)[0] not in FEDERATED_TABLES}
    for key, value in extra.items():
        node = cfg.task.params
        *tables, leaf = key.split(".")
        for t in tables:
            node = node.setdefault(t, {})
        node[leaf] = value
    return cfg


def fed_to_flat(fed: FedConfig) -> dict[str, Any]:
    """Return ``fed`` as flat ``{"fed.<kebab-key>": scalar}`` (what the server sends in a ConfigRecord)."""
    from fedasr.config import to_dict

    return {f"fed.{k}": v for k, v in to_dict(fed).items()}


def fed_from_flat(flat: Mapping[str, Any]) -> FedConfig:
    """Rebuild a `FedConfig` from the ``fed.*`` entries of a flat mapping (other keys are ignored)."""
    from fedasr.config import from_dict

    return from_dict(FedConfig, {k[4:]: v for k, v in flat.items() if k.startswith("fed.")}, prefix="fed")


# Task registry: names → "module:factory"; a factory takes the params dict and returns a FederatedTask.
# The ASR wiring registers itself here (e.g. "asr": "fedasr.<module>:make_asr_task") or is named directly.
TASKS: dict[str, str] = {"toy": "fedasr.federated.toy:make_toy_task", "asr": "fedasr.asr_task:make_asr_task"}


def make_task(spec: TaskSpec) -> FederatedTask:
    """Build the task a `TaskSpec` names (a registry key or ``"module:factory"``)."""
    target = TASKS.get(spec.name, spec.name)
    if ":" not in target:
        raise ValueError(f"unknown task {spec.name!r}: use one of {sorted(TASKS)} or 'package.module:factory'")
    module, attr = target.split(":", 1)
    factory = getattr(importlib.import_module(module), attr)
    return factory(dict(spec.params))


# ---------------------------------------------------------------------------------------------------
# Seeds and sampling
# ---------------------------------------------------------------------------------------------------


def derive_seed(*parts: Any) -> int:
    """Return a 63-bit seed from ``parts`` (stable across processes, unlike Python's salted ``hash``)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_clients(client_ids: Sequence[str], k: int, seed: int, server_round: int) -> list[str]:
    """Sample ``min(k, N)`` distinct clients for ``server_round``, reproducibly from ``(seed, round)``."""
    ids = sorted(client_ids)  # the sample must not depend on the order ids were listed in
    rng = random.Random(derive_seed("sample", seed, server_round))
    return rng.sample(ids, min(k, len(ids)))


# ---------------------------------------------------------------------------------------------------
# Client updates
# ---------------------------------------------------------------------------------------------------


@dataclass
class Update:
    """One client's reply: a gradient (FedSGD) or a weight delta (FedAvg) per trainable variable."""

    arrays: dict[str, torch.Tensor]  # variable name → tensor (same shape as the global variable)
    num_examples: int  # n_i: examples the update was computed on (the default aggregation weight)
    metrics: dict[str, float] = field(default_factory=dict)  # "loss" (mean per example), "compute-s", ...
    client_id: str = ""
    kind: Literal["gradient", "delta"] = "gradient"


def trainable_names(model: torch.nn.Module) -> list[str]:
    """Return the names of the parameters that train (``requires_grad``), in module order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def payload_bytes(arrays: Mapping[str, Any]) -> int:
    """Return the exact payload size ``Σ numel · itemsize`` of tensors/ndarrays (no framing, no keys)."""
    total = 0
    for a in arrays.values():
        if isinstance(a, torch.Tensor):
            total += a.numel() * a.element_size()
        elif isinstance(a, np.ndarray):
            total += a.size * a.itemsize
        else:  # a Flower Array: dtype string + shape
            total += int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize
    return total


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
) -> Update:
    """Compute the client's mean-loss gradient at the global weights, accumulated over micro-batches.

    Each micro-batch contributes the gradient of its loss **sum**; the accumulated sum is divided by the
    number of examples at the end, so ``g_i = (1/n_i) Σ ∇ℓ`` (paper §2.3) whatever the micro-batch size:
    the micro-batch bounds activation memory, not the maths. The weights never change on the client.
    """
    t0 = time.perf_counter()
    _load_global(model, global_state)
    model.train()
    params = dict(model.named_parameters())
    names = trainable_names(model)
    for n in names:
        params[n].grad = None
    n_total, loss_sum = 0, 0.0
    for batch in batches:
        loss, info = model.loss(batch, reduction="sum")
        n = _batch_examples(batch, info)
        if n == 0:
            continue
        loss.backward()  # grads accumulate (sum over micro-batches)
        n_total += n
        loss_sum += float(loss.detach())
    if n_total == 0:
        raise ValueError(f"client {client_id!r} has no usable training examples")
    grads = {}
    for n in names:
        g = params[n].grad
        grads[n] = (g / n_total) if g is not None else torch.zeros_like(params[n])
        params[n].grad = None
    metrics = {"loss": loss_sum / n_total, "compute-s": time.perf_counter() - t0}
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
    from fedasr import omc  # plain torch: no cycle

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
    """Return the variables this client trains this round (``cfg.partial_policy``; None = all) and metrics.

    The selection comes from `fedasr.partial.select` (top-k blocks, PVT's random subset drawn from
    ``(cfg.seed, round, client)``, or the memory-budget policy), restricted to the parameters the task
    lets train. The budget policy is decided on the device: the round's shape comes from the client's own
    data (``task.round_shape``) and the budget from ``cfg.partial_budget_mib`` or the client's device tier
    (``task.memory_budget_bytes``); its metrics record both and the analytic peak of the chosen set.
    """
    if cfg.partial_policy == "all":
        return None, {}
    from fedasr import partial  # imports fedasr.memory: only when partial training is on

    pcfg = partial.PartialConfig(policy=cfg.partial_policy, top_k=cfg.partial_top_k, train_head=cfg.partial_train_head,
                                 fraction=cfg.partial_fraction, unit=cfg.partial_unit, seed=cfg.seed,
                                 budget_margin=cfg.partial_budget_margin)
    budget, shape, metrics = None, None, {}
    if cfg.partial_policy == "budget":
        if task is None or not hasattr(task, "round_shape"):
            raise ValueError("partial-policy 'budget' needs a task that reports the client's round shape (round_shape)")
        shape = dataclasses.replace(task.round_shape(client_id, cfg.micro_batch),
                                    optimizer="none" if cfg.strategy == "fedsgd" else cfg.client_optimizer,
                                    delta_copy=cfg.strategy == "fedavg")
        if cfg.partial_budget_mib > 0:
            budget = int(cfg.partial_budget_mib * (1 << 20))
        elif hasattr(task, "memory_budget_bytes"):
            budget = int(task.memory_budget_bytes(client_id))
        else:
            raise ValueError("partial-policy 'budget' needs partial-budget-mib > 0 or a task with memory_budget_bytes")
    sel = partial.select(model, pcfg, server_round=server_round, client_id=client_id, budget_bytes=budget, shape=shape)
    if cfg.partial_policy == "budget":
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

    With partial training (``cfg.partial_policy``), only the variables `partial_selection` picks for
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
    update.metrics["trained-params"] = float(sum(v.numel() for v in update.arrays.values()))
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
            return fedsgd_client_update(model, global_state, batches_for(seed), who)
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


def mix_central(aggregated: Mapping[str, torch.Tensor], central: Mapping[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """``(1 − α)·aggregated + α·central`` on the aggregate's variables (the clients' trainable set).

    Raises:
        ValueError: a variable of the aggregate is missing from the central update or differs in shape.
    """
    out = {}
    for k, v in aggregated.items():
        c = central.get(k)
        if c is None or c.shape != v.shape:
            raise ValueError(f"central update lacks {k!r} or has the wrong shape")
        out[k] = (1.0 - alpha) * v + alpha * c.to(v.dtype)
    return out


def encode_arrays(state: Mapping[str, torch.Tensor], codec: Any,
                  generator: torch.Generator | None = None) -> tuple[dict[str, np.ndarray], str, int]:
    """Encode ``state`` with a `compression.CodecConfig` for the wire.

    Returns ``(arrays, description, nbytes)``: the flat arrays of `compression.to_arrays` (``"<name>/data"``,
    ``"/scale"``, ``"/offset"``), its JSON description, and the exact payload bytes
    (`compression.payload_bytes`, equal to the arrays' total size).
    """
    from fedasr import compression

    payload = compression.compress(state, codec, generator)
    arrays, meta = compression.to_arrays(payload)
    return arrays, meta, compression.payload_bytes(payload)


def decode_arrays(arrays: Mapping[str, np.ndarray], meta: str) -> tuple[dict[str, torch.Tensor], int]:
    """Decode what `encode_arrays` produced: ``(name → tensor, exact payload bytes)``."""
    from fedasr import compression

    payload = compression.from_arrays(arrays, meta)
    return compression.decompress(payload), compression.payload_bytes(payload)


def encode_download(state: Mapping[str, torch.Tensor], cfg: FedConfig, omc_names: Sequence[str],
                    generator: torch.Generator | None = None) -> tuple[dict[str, np.ndarray], str, int]:
    """The round's download for the wire, as `encode_arrays` returns it: ``cfg.download_codec``, or with
    ``cfg.omc_bits`` the clients' OMC storage format (``omc_names`` quantized; paper §2.4.1)."""
    if not cfg.omc_bits:
        return encode_arrays(state, cfg.download_codec_config(), generator)
    from fedasr import compression, omc

    payload = omc.encode_state(state, omc_names, cfg.omc_config(), generator)
    arrays, meta = compression.to_arrays(payload)
    return arrays, meta, compression.payload_bytes(payload)


def decode_download(arrays: Mapping[str, np.ndarray], meta: str, cfg: FedConfig,
                    model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The global weights from `encode_download`'s arrays. OMC: ``model`` adopts the codes as its storage
    (`omc.load_payload`, no fp32 copy) and its resident tensors are returned; otherwise the decoded state."""
    if not cfg.omc_bits:
        return decode_arrays(arrays, meta)[0]
    from fedasr import compression, omc

    omc.load_payload(model, compression.from_arrays(arrays, meta))
    return omc.resident_state(model)


# ---------------------------------------------------------------------------------------------------
# Server side: validation, aggregation, server optimizer
# ---------------------------------------------------------------------------------------------------


def validate_update(
    update: Update,
    reference_shapes: Mapping[str, tuple[int, ...]],
    required_keys: Iterable[str] | None = None,
) -> str | None:
    """Return why ``update`` must be excluded from aggregation, or None if it is usable.

    Reasons: ``no-examples``, ``empty``, ``unknown-variable:<name>``, ``missing-variables:<n>``
    (only when ``required_keys`` is given, i.e. partial updates are not allowed),
    ``shape-mismatch:<name>``, ``non-finite:<name>`` (NaN or Inf).
    """
    if not update.num_examples or update.num_examples <= 0 or not math.isfinite(update.num_examples):
        return "no-examples"
    if not update.arrays:
        return "empty"
    for name, a in update.arrays.items():
        if name not in reference_shapes:
            return f"unknown-variable:{name}"
        if tuple(a.shape) != tuple(reference_shapes[name]):
            return f"shape-mismatch:{name}"
    if required_keys is not None:
        missing = [k for k in required_keys if k not in update.arrays]
        if missing:
            return f"missing-variables:{len(missing)}"
    for name, a in update.arrays.items():
        a = torch.as_tensor(a)
        # fast path: a finite sum means finite elements; an inf/nan sum is confirmed element-wise
        if not bool(torch.isfinite(a.sum())) and not bool(torch.isfinite(a).all()):
            return f"non-finite:{name}"
    return None


def aggregate(updates: Sequence[Update], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Return the weighted mean of the updates, each variable over the updates that contain it.

    ``G[k] = Σ_{i ∋ k} a_i x_i[k] / Σ_{i ∋ k} a_i`` with ``a_i = n_i`` by default (paper §2.3). Averaging
    each key over its own contributors supports partial model training, where a client only uploads the
    variables it trained. Weights must be ≥ 0 with a positive sum per key.
    """
    if not updates:
        raise ValueError("nothing to aggregate")
    a = [float(u.num_examples) for u in updates] if weights is None else [float(w) for w in weights]
    if len(a) != len(updates):
        raise ValueError(f"{len(a)} weights for {len(updates)} updates")
    if any(w < 0 or not math.isfinite(w) for w in a):
        raise ValueError(f"aggregation weights must be finite and >= 0, got {a}")
    sums: dict[str, torch.Tensor] = {}
    norms: dict[str, float] = {}
    for u, w in zip(updates, a):
        for k, x in u.arrays.items():
            x = torch.as_tensor(x).float()
            if k in sums:
                sums[k].add_(x, alpha=w)  # in place: aggregation is on the round's critical path
            else:
                sums[k] = x * w
            norms[k] = norms.get(k, 0.0) + w
    for k, s in sums.items():
        if norms[k] <= 0:
            raise ValueError(f"variable {k!r}: the weights of its contributors sum to 0")
        s.div_(norms[k])
    return sums


class ServerOptimizer:
    """The server's optimizer over the global trainable variables, with state kept on the server.

    ``step(weights, pseudo_grad)`` updates ``weights`` in place: FedSGD passes the aggregated gradient
    ``G_t``; FedAvg passes ``−Δ̄`` so that SGD with lr 1 gives ``w + Δ̄`` (FedOpt). Variables absent from
    ``pseudo_grad`` (partial training) are left untouched, including their optimizer state.
    """

    def __init__(self, weights: Mapping[str, torch.Tensor], trainable: Sequence[str], cfg: FedConfig) -> None:
        self.names = list(trainable)
        # the optimizer owns float32 copies; `step` writes them back into the caller's weights dict
        self._params = {n: torch.nn.Parameter(weights[n].detach().clone().float()) for n in self.names}
        plist = [self._params[n] for n in self.names]
        if cfg.server_optimizer == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(plist, lr=cfg.server_lr, momentum=cfg.server_momentum)
        elif cfg.server_optimizer == "adam":
            self.opt = torch.optim.Adam(plist, lr=cfg.server_lr, betas=(cfg.server_beta1, cfg.server_beta2),
                                        eps=cfg.server_eps)
        else:
            raise ValueError(f"unknown server optimizer {cfg.server_optimizer!r}")

    def step(self, weights: dict[str, torch.Tensor],
             pseudo_grad: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Apply one optimizer step to ``weights`` (in place, and returned) with ``pseudo_grad``."""
        unknown = set(pseudo_grad) - set(self.names)
        if unknown:
            raise KeyError(f"pseudo-gradient for non-trainable variables {sorted(unknown)[:3]}")
        with torch.no_grad():
            for n, p in self._params.items():
                p.copy_(weights[n])  # the global weights are the source of truth (e.g. after a resume)
                p.grad = pseudo_grad[n].to(p.dtype).clone() if n in pseudo_grad else None
        self.opt.step()
        for n, p in self._params.items():
            p.grad = None
            weights[n] = p.detach().clone().to(weights[n].dtype)
        return weights

    def state_dict(self) -> dict:
        """Return a snapshot of the optimizer state (momentum / Adam moments) for the checkpoint."""
        # deepcopy: torch returns live state tensors, which later steps would change in place
        return copy.deepcopy({"names": list(self.names), "optimizer": self.opt.state_dict()})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state written by `state_dict` (the variable list must match)."""
        if list(state["names"]) != self.names:
            raise ValueError("server optimizer state is for a different set of variables")
        self.opt.load_state_dict(copy.deepcopy(state["optimizer"]))


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict:
    """Return the Python, NumPy and torch global RNG states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states captured by `capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(path: str | Path, weights: Mapping[str, torch.Tensor], server_opt_state: Mapping[str, Any],
                    server_round: int, rng_state: Mapping[str, Any], config: Any) -> Path:
    """Write the server state after ``server_round`` atomically (temp file + rename).

    ``config`` is stored beside the weights (a dataclass is converted to a dict) so a checkpoint says
    what produced it, as nanoGPT does.
    """
    from fedasr.config import to_dict

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    cfg = to_dict(config) if dataclasses.is_dataclass(config) else config
    torch.save({"weights": {k: v.detach().cpu() for k, v in weights.items()}, "server_opt": server_opt_state,
                "round": int(server_round), "rng": rng_state, "config": cfg}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by `save_checkpoint` (keys: weights, server_opt, round, rng, config)."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)
