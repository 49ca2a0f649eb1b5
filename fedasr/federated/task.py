"""The task interface: what the federated layer needs from a model and its data, and the task registry.

A task is built from plain config values (`fedasr.federated.config.TaskSpec`) in every process that needs
it: the ServerApp and each ClientApp process. Two tasks implement it: `fedasr.federated.toy` (a small
non-IID classification task for tests and smoke runs) and `fedasr.asr_task` (the ASR model on the corpus).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from fedasr.federated.config import TaskSpec

__all__ = ["FederatedTask", "TASKS", "make_task"]


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


# Task registry: names → "module:factory"; a factory takes the params dict and returns a FederatedTask.
TASKS: dict[str, str] = {"toy": "fedasr.federated.toy:make_toy_task", "asr": "fedasr.asr_task:make_asr_task"}


def make_task(spec: TaskSpec) -> FederatedTask:
    """Build the task a `TaskSpec` names (a registry key or ``"module:factory"``)."""
    target = TASKS.get(spec.name, spec.name)
    if ":" not in target:
        raise ValueError(f"unknown task {spec.name!r}: use one of {sorted(TASKS)} or 'package.module:factory'")
    module, attr = target.split(":", 1)
    factory = getattr(importlib.import_module(module), attr)
    return factory(dict(spec.params))
