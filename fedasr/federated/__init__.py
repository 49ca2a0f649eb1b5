"""Federated training of fedasr models on Flower 1.42 (Message API): FedSGD, FedAvg, three ways to run.

* `core` — the maths as plain functions (no Flower): client updates, validation, aggregation,
  server optimizer, sampling, checkpoints, the `FederatedTask` interface and `FederatedConfig`.
* `strategies` — Flower strategies (FedSGD, FedAvg + server lr) that sample clients, not nodes.
* `client_app` / `server_app` — thin Flower adapters (``app`` objects for ``flwr run``).
* `launch` — one call per engine: `run_simulation`, `run_flwr_local`, `run_deployment_local`.
* `toy` — a small non-IID task implementing `FederatedTask`, for tests, smoke runs and the bench.

Importing this package does not import Flower; `launch` functions are loaded on first use.
"""

from fedasr.federated.core import FedConfig, FederatedConfig, FederatedTask, RunSpec, TaskSpec, Update

__all__ = ["FedConfig", "FederatedConfig", "FederatedTask", "RunSpec", "TaskSpec", "Update",
           "run_simulation", "run_flwr_local", "run_deployment_local"]


def __getattr__(name: str):
    if name in ("run_simulation", "run_flwr_local", "run_deployment_local"):
        from fedasr.federated import launch

        return getattr(launch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
