"""The federated run's configuration: ``[fed]`` (the maths), ``[task]`` (model + data), ``[run]`` (records).

One schema everywhere (`fedasr.config` loads it): TOML files (``configs/*.toml``), ``pyproject.toml``'s
``[tool.flwr.app.config]`` (Flower's run config, as dotted keys), papermill parameters and the messages the
server sends each client (`fed_to_flat`). The paper's device techniques are nested tables whose
dataclasses are the ones the methods use::

    [fed]                       FedConfig: strategy, rounds, sampling, optimizers, WCA, Mixed FL
    [fed.transport.download]    compression.CodecConfig   (paper §2.3 transport compression)
    [fed.transport.upload]      compression.CodecConfig
    [fed.omc]                   omc.OMCConfig             (paper §2.4.1 Online Model Compression)
    [fed.partial]               partial.PartialConfig     (paper §2.4.2 partial model training)
    [fed.dp]                    DPConfig                  (user-level DP; fedasr.federated.privacy)
    [fed.faults]                faults.FaultConfig        (injected client faults, the server's norm bound)
    [fed.secagg]                SecAggConfig              (pairwise-masked secure sum; fedasr.federated.secagg)
    [fed.ledger]                LedgerConfig              (the ledger of client rounds; fedasr.ledger)

Keys of the first wave's flat schema (``fed.omc-bits``, ``fed.upload-codec``, ``fed.partial-policy``, ...)
fail with a message naming their new key (`FedConfig.__renamed__`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from fedasr import config as config_lib
from fedasr.compression import TransportConfig
from fedasr.federated.faults import FaultConfig
from fedasr.grad_stream import StreamConfig
from fedasr.omc import OMCConfig
from fedasr.partial import PartialConfig
from fedasr.refinement import WCAMethod

__all__ = ["FEDERATED_TABLES", "DPConfig", "FedConfig", "FederatedConfig", "LedgerConfig", "RunSpec", "SecAggConfig",
           "TaskSpec",
           "config_from_run_config", "fed_from_flat", "fed_to_flat"]


@dataclass
class DPConfig:
    """User-level differential privacy (``[fed.dp]``; `fedasr.federated.privacy` has the maths). Off by default.

    DP-FedSGD / DP-FedAvg (McMahan et al. 2018): each client's update, as sent, is clipped to L2 norm ``clip``
    on the device (before transport encoding) and again on the server after decoding; the server adds
    N(0, (noise-multiplier·clip)²) to the sum of bounded-weight updates and divides by the clients sampled.
    """

    enabled: bool = False  # clip + noise + accountant; False leaves every update exactly as without DP
    clip: float = 1.0  # C: L2 bound of a client's whole update (gradient or delta, all variables it sends)
    noise_multiplier: float = 0.0  # z: noise std z·C on the clipped sum (z·C/K on the mean); 0 = no ε
    weighting: Literal["uniform", "capped"] = "uniform"  # w_i = 1, or min(1, a_i / weight-cap) (privacy docstring)
    weight_cap: float = 1.0  # "capped": a client's own weight a_i (n_i, WCA corrections / loss) that gets w_i = 1
    delta: float = 0.0  # δ of the reported ε; 0 = 1 / population
    accounting: Literal["without-replacement", "poisson"] = "without-replacement"  # sampling model of ε
    histogram_noise: Literal["none", "laplace", "gaussian"] = "none"  # device noise on the WCA histogram
    histogram_scale: float = 1.0  # its Laplace scale b or Gaussian std σ, in counts (applies without `enabled`)

    def __post_init__(self) -> None:
        if self.clip <= 0 or self.weight_cap <= 0 or self.histogram_scale <= 0:
            raise ValueError("dp.clip, dp.weight-cap and dp.histogram-scale must be > 0")
        if self.noise_multiplier < 0 or not 0 <= self.delta < 1:
            raise ValueError("dp.noise-multiplier must be >= 0 and dp.delta in [0, 1)")


@dataclass
class SecAggConfig:
    """Secure aggregation by pairwise additive masking (``[fed.secagg]``; `fedasr.federated.secagg`). Off by default.

    Needs a symmetric, per-tensor ``int8_sr`` or ``int4_sr`` upload (``fed.transport.upload``): clients send their
    codes on a common grid, masked modulo ``2^modulus-bits``; the server learns only the cohort's sum.
    """

    enabled: bool = False
    key_source: Literal["urandom", "derived"] = "urandom"  # X25519 keys from os.urandom, or from (seed, round,
    #   client): "derived" keys are NOT secret (anyone can recompute them), for debugging only; results are the same
    modulus_bits: int = 0  # 8, 16 or 32; 0 = the smallest that holds clients-per-round x the largest code
    min_cohort: int = 2  # fewer clients in the sum → round skipped: a "sum" of one client is that client's update
    recovery: bool = True  # a client lost after setup: survivors reveal their pair seeds with it; False = skip round
    masking: bool = True  # False: the same protocol and codes sent UNMASKED (a control for tests and experiments)

    def __post_init__(self) -> None:
        if self.modulus_bits not in (0, 8, 16, 32) or self.min_cohort < 2:
            raise ValueError("secagg.modulus-bits must be 0 (auto), 8, 16 or 32 and secagg.min-cohort >= 2")

    def modulus(self, code_bits: int, cohort: int) -> int:
        """Bits m of the modulus 2^m: the sum of ``cohort`` shifted codes (each <= 2^code_bits - 2) must fit."""
        top = cohort * ((1 << code_bits) - 2)
        if self.modulus_bits:
            if top >= 1 << self.modulus_bits:
                raise ValueError(f"secagg.modulus-bits = {self.modulus_bits} cannot hold the sum of {cohort} "
                                 f"{code_bits}-bit codes (up to {top}): use more bits or 0 (auto)")
            return self.modulus_bits
        if top >= 1 << 32:
            raise ValueError(f"secagg: a cohort of {cohort} is too large for a 32-bit modulus")
        return next(m for m in (8, 16, 32) if top < 1 << m)


@dataclass
class LedgerConfig:
    """The ledger of client rounds (``[fed.ledger]``; `fedasr.ledger`): measured always, enforced on request.

    Every client round reports its process's peak RSS and the server records tier, budget, bytes and time per
    client (``rounds.jsonl`` ``ledger``). With ``enforce-budget`` a client whose analytic peak
    (`fedasr.memory.estimate` over its round shape) exceeds its device tier's budget declines before training.
    """

    enforce_budget: bool = False  # False: every client trains, as without the ledger (same weights and metrics)


@dataclass
class FedConfig:
    """Federated optimisation knobs (``[fed]`` table; ``fed.*`` keys in Flower's run config)."""

    # old flat key → its nested key (a retired key fails naming the new one; fedasr.config.from_dict)
    __renamed__: ClassVar[dict[str, str]] = {
        "download-codec": "transport.download.name",
        "upload-codec": "transport.upload.name",
        "upload-symmetric": "transport.upload.symmetric",
        "upload-lossless": "transport.upload.lossless",
        "omc-bits": "omc.bits",
        "omc-transform": "omc.transform",
        "omc-fp32-fraction": "omc.fp32-fraction",
        "omc-rounding": "omc.rounding",
        "partial-policy": "partial.policy",
        "partial-top-k": "partial.top-k",
        "partial-train-head": "partial.train-head",
        "partial-fraction": "partial.fraction",
        "partial-unit": "partial.unit",
        "partial-budget-mib": "partial.budget-mib",
        "partial-budget-margin": "partial.budget-margin",
    }

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
    weighting: WCAMethod = "examples"  # aggregation weights a_i: "examples" (n_i, FedAvg) or a WCA method
    #   computed from client-sent statistics (paper §2.5; fedasr.refinement.wca_weights)
    wca_buckets: int = 1024  # size of the hashed corrected-word histogram clients send for WCA
    wca_power: float = 1.0  # γ sharpening the WCA score (0 = plain n_i)
    # Mixed FL (paper §1: FL "combined with centralized server training under a joint training framework";
    # Augenstein et al. 2022; paper.md open question 17 on forgetting): each round the server also computes
    # the same kind of update on ``central_examples`` utterances of its own proxy data (task.central_batches)
    # and steps on (1 - α)·aggregate + α·central. 0 = plain FL; 1 = the central-only control.
    central_mix: float = 0.0  # α
    central_examples: int = 64  # server-side proxy utterances per round (a fresh seeded sample each round)
    # Transport compression (paper §2.3; fedasr.compression): a codec per direction. "none" = fp32 arrays
    # exactly as without compression; anything else travels as `compression.to_arrays` arrays + a description.
    transport: TransportConfig = field(default_factory=TransportConfig)
    # Online Model Compression on the client (paper §2.4.1; fedasr.omc): the client stores its weight matrices
    # quantized and the download travels in that storage format (it replaces transport.download). bits 0 = off.
    omc: OMCConfig = field(default_factory=lambda: OMCConfig(bits=0))
    # Partial model training (paper §2.4.2; fedasr.partial): which variables each client trains and uploads.
    # The random policy draws from (seed, round, client); the budget policy's round shape comes from the
    # client's own data and its budget from partial.budget-mib or the client's device tier.
    partial: PartialConfig = field(default_factory=PartialConfig)
    # User-level differential privacy (fedasr.federated.privacy): clip what is sent, noise the aggregate, ε.
    dp: DPConfig = field(default_factory=DPConfig)
    # Client faults on purpose (fedasr.federated.faults; off by default) and the server's bound on update norms.
    faults: FaultConfig = field(default_factory=FaultConfig)
    # Secure aggregation (fedasr.federated.secagg): the server sees only the masked sum of the clients' codes.
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    # The ledger of client rounds (fedasr.ledger): a client over its tier's memory budget may decline.
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    # FedSGD without a whole-model fp32 gradient (fedasr.grad_stream, issue 22): each variable's gradient is folded
    # into a b-bit stochastic-rounding accumulator as backward produces it and sent in the upload codec's format.
    grad_stream: StreamConfig = field(default_factory=StreamConfig)

    def __post_init__(self) -> None:
        if self.num_rounds < 0 or self.clients_per_round < 1 or self.min_successful_clients < 1:
            raise ValueError("num-rounds must be >= 0, clients-per-round and min-successful-clients >= 1")
        if self.micro_batch < 1 or self.local_epochs < 1:
            raise ValueError("micro-batch and local-epochs must be >= 1")
        if self.round_timeout_s <= 0:
            raise ValueError("round-timeout-s must be > 0")
        if not 0.0 <= self.central_mix <= 1.0 or self.central_examples < 1:
            raise ValueError("central-mix must be in [0, 1] and central-examples >= 1")
        if self.omc.enabled:
            if self.transport.download.name != "none":
                raise ValueError(f"omc.bits = {self.omc.bits}: the download travels in the OMC storage format, so "
                                 f"transport.download.name must be 'none' (got {self.transport.download.name!r})")
            if self.strategy == "fedavg" and self.client_optimizer != "sgd":
                raise ValueError("OMC with FedAvg re-quantizes after each local SGD step (omc.sgd_step): "
                                 f"client-optimizer must be 'sgd', got {self.client_optimizer!r}")
        if self.dp.enabled and self.dp.weighting == "capped" and self.weighting in ("frequency", "frequency-common"):
            raise ValueError(f"dp.weighting 'capped' needs a client weight computed from the client's own upload; "
                             f"weighting {self.weighting!r} depends on the other clients of the round (use 'uniform')")
        if self.secagg.enabled:
            self._check_secagg()
        if self.grad_stream.enabled:
            self._check_grad_stream()

    def _check_grad_stream(self) -> None:
        """Reject what a streamed (already encoded) gradient cannot go through, naming the key to change."""
        up, f = self.transport.upload, self.faults
        checks = [(self.strategy != "fedsgd", "strategy must be 'fedsgd' (FedAvg uploads a weight delta)"),
                  (not up.name.startswith("int"), (f"transport.upload.name must be an integer codec (int8_sr, "
                                                   f"int4_sr, ...), got {up.name!r}")),
                  (self.dp.enabled, "dp.enabled re-clips the update, which is sent encoded"),
                  (self.secagg.enabled, "secagg.enabled masks codes on a grid common to the cohort"),
                  (any((f.nan, f.inf, f.shape, f.norm)), ("faults that corrupt the update (nan, inf, shape, norm) "
                                                          "need it in fp32"))]
        for bad, why in checks:
            if bad:
                raise ValueError(f"grad-stream.enabled: {why}")

    def _check_secagg(self) -> None:
        """Reject what pairwise masking cannot do here, naming the key to change."""
        up = self.transport.upload
        if up.name not in ("int8_sr", "int4_sr") or not up.symmetric or up.per_channel or up.fp32_vectors \
                or up.lossless != "none":
            raise ValueError("secagg masks integer codes on a common grid: transport.upload must be "
                             "{ name = 'int8_sr' or 'int4_sr', symmetric = true, per-channel = false, "
                             f"fp32-vectors = false, lossless = 'none' }}, got {up}")
        if self.partial_updates:
            raise ValueError("secagg sums one vector over the cohort: partial training / allow-partial-updates "
                             "(clients sending different variables) is not supported with secagg")
        if self.dp.enabled:
            raise ValueError("dp.enabled re-clips each decoded update on the server, which secagg hides; "
                             "DP with secagg is not supported yet")
        self.secagg.modulus(8 if up.name == "int8_sr" else 4, self.clients_per_round)

    @property
    def partial_updates(self) -> bool:
        """True when a client may upload a subset of the trainable variables (partial training or opted in)."""
        return self.allow_partial_updates or self.partial.enabled

    @property
    def compress_download(self) -> bool:
        """True when the download travels encoded (a codec, or the OMC storage format; otherwise the fp32
        ArrayRecord, as without compression)."""
        return self.transport.download.name != "none" or self.omc.enabled


@dataclass
class TaskSpec:
    """Which task to build, from config values alone (so `flwr run` / SuperNodes can rebuild it)."""

    name: str = "toy"  # a key of `fedasr.federated.task.TASKS` or "package.module:factory"
    params: dict = field(default_factory=dict)  # passed to the factory, which validates its own keys


@dataclass
class RunSpec:
    """Where the run's records go (``results/<experiment>/<run-id>/``)."""

    experiment: str = "federated"  # results sub-folder
    run_id: str = ""  # "" → UTC timestamp chosen when the run starts
    results_root: str = "results"  # relative to the ServerApp's working directory
    resume: bool = False  # continue from the run folder's checkpoint (same run-id) instead of starting anew
    progress: bool = True  # a text progress bar over rounds (stderr) with the latest loss and WER
    # torch threads of the server's own work (evaluation, Mixed FL's central update): it runs between rounds while
    # the clients wait, so it may use the cores the clients use (2 clients x 1 thread on 2 cores, DESIGN §6).
    # While the clients train the server process holds 1 thread. A result depends on it at the last float bit only.
    # On a machine busy with other work set 1: two threads under other load can run far slower (DESIGN §6).
    server_threads: int = 2
    # Mixed FL's central update depends only on the round's global weights: compute it on 1 thread while the
    # clients train (they run in other processes on every Flower engine) instead of after them. Same result;
    # a grid that runs its clients inside the server process (the tests' in-process grid) must turn it off.
    overlap_central: bool = True
    # Hand the sampled clients to the nodes largest first (`fedasr.federated.dispatch`): scheduling only, same result.
    # For engines that queue a round's messages in node-registration order; `launch` turns it on for the Simulation
    # Engine (in process and under `flwr run`). Off, node i trains the i-th sampled client.
    largest_first: bool = False


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
    ours = {k: v for k, v in run_config.items() if k.split(".", 1)[0] in FEDERATED_TABLES}
    cfg = config_lib.from_run_config(FederatedConfig, ours)
    extra = {k: v for k, v in run_config.items() if k.split(".", 1)[0] not in FEDERATED_TABLES}
    for key, value in extra.items():
        node = cfg.task.params
        *tables, leaf = key.split(".")
        for t in tables:
            node = node.setdefault(t, {})
        node[leaf] = value
    return cfg


def fed_to_flat(fed: FedConfig) -> dict[str, Any]:
    """Return ``fed`` as flat ``{"fed.<dotted.kebab-key>": value}`` (what the server sends in a ConfigRecord)."""
    return config_lib.flatten({"fed": config_lib.to_dict(fed)})


def fed_from_flat(flat: Mapping[str, Any]) -> FedConfig:
    """Rebuild a `FedConfig` from the ``fed.*`` entries of a flat mapping (other keys are ignored)."""
    return config_lib.from_run_config(FederatedConfig, {k: v for k, v in flat.items() if k.startswith("fed.")}).fed
