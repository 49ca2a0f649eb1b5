"""Federated training of fedasr models on Flower 1.42 (Message API): FedSGD, FedAvg, three ways to run.

One paper concept per module, the maths as plain functions (no Flower) and the Flower apps as thin
translators over them:

* `config` — `FedConfig` (``[fed]`` with ``[fed.transport]``, ``[fed.omc]``, ``[fed.partial]``), `TaskSpec`,
  `RunSpec`, `FederatedConfig`; parsing of Flower's run config.
* `task` — the `FederatedTask` interface and the task registry (`make_task`).
* `client_update` — a client's round: FedSGD gradient or FedAvg delta, with OMC and partial training.
* `transport` — what travels and its exact bytes (codecs, the OMC download).
* `aggregation` — validation of updates, (WCA-)weighted aggregation, Mixed FL, the server optimizer.
* `checkpoint` — the server's checkpoint for resuming a run.
* `strategies` — Flower strategies (FedSGD, FedAvg + server optimizer) that sample clients, not nodes.
* `client_app` / `server_app` — thin Flower adapters (``app`` objects for ``flwr run``).
* `launch` — one call per engine: `run_simulation`, `run_flwr_local`, `run_deployment_local`;
  `ray_session` — one Ray instance for the runs of an experiment.
* `security` — throwaway credentials: a CA, the SuperLink's TLS certificate, SuperNode key pairs.
* `deployment` — the Deployment Engine's command lines, the `flwr` connection, node registration and refusal.
* `privacy` — user-level DP (clip as sent, noise, accountant) and its paper-scale plan; `audit` — what leaves a
  device: the check of a ClientApp reply.
* `faults` — client faults on purpose (crashes, stragglers, NaN/Inf, wrong shapes, absurd norms).
* `toy` — a small non-IID task implementing `FederatedTask`, for tests, smoke runs and the bench.

Seeds and client sampling live in `fedasr.seeding`. Importing this package does not import Flower.
"""

from fedasr.federated.client_update import Update
from fedasr.federated.config import FedConfig, FederatedConfig, RunSpec, TaskSpec
from fedasr.federated.task import FederatedTask

__all__ = ["FedConfig", "FederatedConfig", "FederatedTask", "RunSpec", "TaskSpec", "Update"]
