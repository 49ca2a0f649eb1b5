"""One Ray instance for the runs of an experiment (in-process Simulation Engine; `launch.run_simulation`).

Flower 1.42's Ray backend starts Ray when a simulation starts (``ray.init`` unless Ray is already running)
and stops it when the simulation ends (``ray.shutdown()``, unconditionally). An experiment runs its variants
one after another in one process, so every variant paid for a fresh Ray: measured on the 2-core machine,
``ray.init`` with Flower's arguments 8–10 s and the shutdown 1–1.5 s, about 10 s of each variant's
20–30 s outside its rounds (17 variants in the quick reproduction: about 3 minutes).

`shared_ray` starts Ray once, with the arguments Flower would use (``init_args`` of the backend config and
Flower's ``runtime_env``), and for the duration of the block hands Flower's backend module a view of ``ray``
whose ``shutdown`` does nothing; on exit it restores the module and stops Ray if it started it. Each
simulation still creates and terminates its own client actors (fresh worker processes), so no client state
crosses from one run to the next: the runs' records are those of separate Ray sessions
(``tests/test_federated_flower.py`` checks it).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["ray_init_args", "shared_ray"]


def ray_init_args(concurrency: int) -> dict[str, Any]:
    """``ray.init`` arguments of a simulation whose clients train ``concurrency`` at a time, 1 CPU each."""
    return {"num_cpus": concurrency, "num_gpus": 0, "logging_level": "ERROR", "log_to_driver": False}


class _RayWithoutShutdown:
    """The ``ray`` module as Flower's backend sees it inside `shared_ray`: everything but ``shutdown``."""

    def __init__(self, ray: Any) -> None:
        self._ray = ray

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ray, name)

    @staticmethod
    def shutdown(*_: Any, **__: Any) -> None:
        """Keep Ray running for the next simulation of the block (the block's exit stops it)."""


@contextlib.contextmanager
def shared_ray(concurrency: int = 2) -> Iterator[None]:
    """Run the block's in-process simulations on one Ray instance (see the module docstring)."""
    import ray
    from flwr.server.superlink.fleet.vce.backend import raybackend

    started = not ray.is_initialized()
    if started:  # Flower's own ray.init call (RayBackend.init_ray), with the backend config's init args
        pythonpath = os.pathsep.join(sys.path)
        if os.environ.get("PYTHONPATH"):
            pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
        os.environ["PYTHONPATH"] = pythonpath
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, include_dashboard=False,
                 **ray_init_args(concurrency))
    before = raybackend.ray
    raybackend.ray = _RayWithoutShutdown(ray)
    try:
        yield
    finally:
        raybackend.ray = before
        if started:
            ray.shutdown()
