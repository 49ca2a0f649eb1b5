"""A toy federated task (non-IID synthetic classification with a small MLP) for tests, smoke runs and the bench.

It implements `fedasr.federated.task.FederatedTask` exactly as the ASR task does, so everything the
federated layer does can be exercised in seconds on a CPU. Data are deterministic given the seed:

* ``C`` class centroids in ``R^D`` are shared by every client (the "language");
* each client has its own input shift (its "voice") and its own class prior drawn from a
  Dirichlet(``alpha``) (its "intent mix"): non-IID in both features and labels;
* utterance counts are long-tailed (`fedasr.clients.Population.synthetic`).

Faults for tests are injected per client with ``faults = {client_id: kind}``: ``"raise"`` (loading the
data raises), ``"nan"`` (a NaN feature → non-finite gradient), ``"sleep:<seconds>"`` (a slow client).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from fedasr import config
from fedasr.clients import Population
from fedasr.seeding import derive_seed

__all__ = ["ToyConfig", "ToyBatch", "ToyModel", "ToyTask", "make_toy_task"]


@dataclass
class ToyConfig:
    """Knobs of the toy task (``task.params.*`` when ``task.name = "toy"``)."""

    num_clients: int = 20  # population size N
    dim: int = 16  # input features D
    classes: int = 4  # output classes C
    hidden: int = 32  # MLP width (0 = a linear model)
    depth: int = 1  # hidden layers
    min_examples: int = 8  # fewest examples a client holds
    max_examples: int = 64  # most examples a client holds (long tail in between)
    separation: float = 1.0  # std of the class centroids (larger = an easier task)
    alpha: float = 0.5  # Dirichlet concentration of client class priors (small = more skewed)
    shift: float = 0.5  # std of a client's input shift
    noise: float = 1.0  # within-class feature noise
    eval_examples: int = 256  # server-side evaluation set size
    seed: int = 0  # data and model initialisation seed
    faults: dict[str, str] = field(default_factory=dict)  # client id → "raise" | "nan" | "sleep:<s>"


class ToyBatch(NamedTuple):
    """A batch: ``x`` ``(B, D)`` float32 features, ``y`` ``(B,)`` int64 labels."""

    x: torch.Tensor
    y: torch.Tensor


class ToyModel(nn.Module):
    """An MLP classifier with the fedasr model contract ``loss(batch, reduction) -> (loss, info)``."""

    def __init__(self, dim: int, classes: int, hidden: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = dim
        for _ in range(depth if hidden > 0 else 0):
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, C)`` for features ``(B, D)``."""
        return self.net(x)

    def loss(self, batch: ToyBatch, reduction: str = "mean") -> tuple[torch.Tensor, dict]:
        """Return the cross-entropy of ``batch`` (``"mean"`` per example or ``"sum"``) and its size."""
        loss = nn.functional.cross_entropy(self(batch.x), batch.y, reduction=reduction)
        return loss, {"num_utterances": int(batch.y.shape[0])}


class ToyTask:
    """Synthetic non-IID classification clients; see the module docstring."""

    def __init__(self, cfg: ToyConfig | None = None) -> None:
        self.cfg = cfg or ToyConfig()
        c = self.cfg
        rng = np.random.default_rng(derive_seed("toy-centroids", c.seed))
        self._centroids = rng.normal(0.0, c.separation, size=(c.classes, c.dim)).astype(np.float32)
        self.population = Population.synthetic(c.num_clients, seed=c.seed, min_examples=c.min_examples,
                                               max_examples=c.max_examples, prefix="toy")
        unknown = set(c.faults) - set(self.population.client_ids)
        if unknown:
            raise config.ConfigError(f"task.params.faults names unknown clients {sorted(unknown)}")

    # --- FederatedTask -------------------------------------------------------------------------
    def build_model(self) -> ToyModel:
        """Return the MLP initialised from the task seed (identical in every process)."""
        torch.manual_seed(derive_seed("toy-init", self.cfg.seed))
        return ToyModel(self.cfg.dim, self.cfg.classes, self.cfg.hidden, self.cfg.depth)

    def client_ids(self) -> list[str]:
        """Return the client ids ``toy0000 ... toy{N-1}``."""
        return self.population.client_ids

    def num_examples(self, client_id: str) -> int:
        """Return how many examples ``client_id`` holds."""
        return self.population.num_examples(client_id)

    def client_batches(self, client_id: str, micro_batch: int, seed: int) -> list[ToyBatch]:
        """Return the client's examples in a ``seed``-shuffled order, in batches of ``micro_batch``."""
        fault = self.cfg.faults.get(client_id, "")
        if fault == "raise":
            raise RuntimeError(f"injected fault: client {client_id} failed to load its data")
        if fault.startswith("sleep:"):
            time.sleep(float(fault.split(":", 1)[1]))
        x, y = self.client_data(client_id)
        if fault == "nan":
            x[0, 0] = float("nan")
        order = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
        x, y = x[order], y[order]
        return [ToyBatch(x[i:i + micro_batch], y[i:i + micro_batch]) for i in range(0, len(y), micro_batch)]

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Return mean loss and accuracy on a held-out set mixing all clients' input shifts."""
        c = self.cfg
        rng = np.random.default_rng(derive_seed("toy-eval", c.seed))
        y = rng.integers(0, c.classes, size=c.eval_examples)
        shifts = rng.normal(0.0, c.shift, size=(c.eval_examples, c.dim))
        x = self._centroids[y] + shifts + rng.normal(0.0, c.noise, size=(c.eval_examples, c.dim))
        batch = ToyBatch(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64))
        was_training = model.training
        model.eval()
        loss, _ = model.loss(batch)
        acc = (model(batch.x).argmax(-1) == batch.y).float().mean()
        model.train(was_training)
        return {"loss": float(loss), "accuracy": float(acc)}

    # --- helpers ---------------------------------------------------------------------------------
    def client_data(self, client_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Return all of one client's examples ``(x (n, D), y (n,))``, deterministic from the seed."""
        c = self.cfg
        n = self.num_examples(client_id)
        rng = np.random.default_rng(derive_seed("toy-client", c.seed, client_id))
        prior = rng.dirichlet(np.full(c.classes, c.alpha))
        shift = rng.normal(0.0, c.shift, size=c.dim)
        y = rng.choice(c.classes, size=n, p=prior)
        x = self._centroids[y] + shift + rng.normal(0.0, c.noise, size=(n, c.dim))
        return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


def make_toy_task(params: dict) -> ToyTask:
    """Build a `ToyTask` from ``task.params`` (unknown keys raise `fedasr.config.ConfigError`)."""
    return ToyTask(config.from_dict(ToyConfig, params, prefix="task.params"))
