"""Flower strategies for fedasr: FedSGD and FedAvg (+ server learning rate) over sampled *clients*.

Flower samples *nodes*; the paper samples *clients* (users). Here a SuperNode is a worker that can
train any client whose data it holds: the strategy samples K client ids per round (seeded by
``(seed, round)``), sends one TRAIN message per client to a node that hosts it, and records everything
per round. The maths is in plain modules: `client_update` (what clients compute), `aggregation` (validation,
aggregation, server optimizer), `transport` (what travels).

Which node hosts which client (``fed.node-data``):

* ``"shared"``: every node can read every client's data (simulation; deployments with a shared
  corpus). Sampled clients are spread round-robin over the connected nodes.
* ``"partitioned"``: each node holds some clients, named by its ``--node-config`` (``client-ids`` or
  ``partition-id``/``num-partitions``). The strategy first asks every node which clients it hosts
  (one QUERY message each) and samples among those.

Transport compression and partial training (``fed.transport``, ``fed.partial``): the download is encoded
once per round and ``bytes_down``/``bytes_up`` count the exact encoded bytes
(`fedasr.compression.payload_bytes`); uploads are decoded before validation; with partial training a client
uploads only the variables it trained and `aggregation.aggregate` averages each variable over the clients
that sent it (the server optimizer leaves the others untouched).

Online Model Compression (``fed.omc``): the download is the clients' OMC storage format
(`omc.encode_state` over the variables `omc.select_quantized` picks, which the ServerApp passes in), and
the server keeps fp32 weights. Mixed FL (``fed.central-mix``): after aggregating, the server mixes in an
update on its own proxy data (``central_update``, `client_update.central_update`):
``(1 − α)·Ḡ + α·G_server``; if that fails the clients' aggregate is applied alone and the reason recorded.

Secure aggregation (``fed.secagg``; `secagg`): each round's TRAIN exchange is preceded by a setup exchange (the
clients' keys, maxima and weight metrics) and followed, on dropouts, by a recovery exchange; the server then sees
only the masked sum of the clients' codes (`secagg.SecAggServer`), never an individual update.

Faults: an error reply (the ClientApp raised), a missing reply (timeout), or an update that
`aggregation.validate_update` rejects (NaN/Inf, wrong shape or dtype, unknown or missing variable), or a norm
beyond ``fed.faults.max-norm-ratio`` x the round's median (`aggregation.norm_outliers`), excludes that client
and is recorded with its reason; with fewer than ``fed.min-successful-clients`` usable updates the round
is skipped (global weights unchanged) and the reason recorded.

The ledger (`fedasr.ledger`): each round's record holds one ``ledger`` row per sampled client (tier, budget, the
client process's peak RSS, bytes down and up, compute seconds, status); ``device_of`` gives tier and budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.supercore import log

from fedasr import ledger, refinement
from fedasr.federated import dispatch, privacy, secagg, transport
from fedasr.federated.aggregation import (
    ServerOptimizer,
    aggregate,
    mix_central,
    norm_outliers,
    validate_update,
)
from fedasr.federated.client_update import Update
from fedasr.federated.config import FedConfig, fed_to_flat
from fedasr.federated.transport import DOWNLOAD_META, TRANSPORT, UPLOAD_META
from fedasr.seeding import derive_seed, sample_clients

__all__ = ["ANY_CLIENT", "HOSTS_QUERY", "FedAsrStrategy", "FedAvgServerLR", "FedSGD", "build_strategy"]

HOSTS_QUERY = "hosts"  # QUERY action asking a node which clients it hosts
ANY_CLIENT = "*"  # a node's answer meaning "I can train any client"


class FedAsrStrategy(FedAvg):
    """Client-sampling strategy base: configure/aggregate one round; subclasses define the server step.

    Args:
        fed: the federated config (sampling, faults, server optimizer).
        client_ids: the population the server knows (``task.client_ids()``).
        weights: the initial global state (all keys; updated in place as rounds complete).
        trainable: names of the variables clients train and the server optimizer updates.
    """

    update_kind = "gradient"

    def __init__(self, fed: FedConfig, client_ids: Sequence[str], weights: dict[str, torch.Tensor],
                 trainable: Sequence[str], omc_names: Sequence[str] = (),
                 central_update: Callable[[int, dict[str, torch.Tensor]], Update] | None = None) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=0,
                         min_available_nodes=max(1, fed.min_nodes), weighted_by_key="num-examples")
        self.fed = fed
        self.client_ids = list(client_ids)
        self.weights = weights
        self.trainable = list(trainable)
        self.omc_names = list(omc_names)  # variables the clients store quantized (fed.omc; omc.select_quantized)
        self.central_update = central_update  # (round, global weights) -> the server's proxy-data update
        if fed.central_mix > 0 and central_update is None:
            raise ValueError("fed.central-mix > 0 needs the server's central update (build_strategy central_update)")
        if fed.omc.enabled and not self.omc_names:
            raise ValueError("fed.omc.bits is set but no variable is quantized (build_strategy needs omc_names)")
        self.reference_shapes = {n: tuple(weights[n].shape) for n in self.trainable}
        self.server_opt = ServerOptimizer(weights, self.trainable, fed)
        # user-level DP (fed.dp): re-clip, bounded weights, fixed denominator, noise, accountant
        self.dp = privacy.DPAggregator(fed, len(self.client_ids), self.reference_shapes) if fed.dp.enabled else None
        # secure aggregation (fed.secagg): the server sees only the masked sum of the cohort's codes
        self.secagg = secagg.SecAggServer(fed, self.reference_shapes) if fed.secagg.enabled else None
        self.hosts: dict[str, int] | None = None  # client → node, after `discover_hosts` (partitioned)
        self.record: dict[str, Any] = {}  # the current round's record (rounds.jsonl row)
        self.device_of: Callable[[str], ledger.Device] = lambda cid: (None, None)  # tier, budget (server_app sets it)
        self.cost_of: Callable[[str], float] | None = None  # a client's work: dispatch largest first (run.largest-first)
        self.node_order: list[int] | None = None  # nodes in the engine's dispatch order (shared node data)
        self._ledger: dict[str, dict] = {}  # what the round's replies told the ledger, per client
        self._sent: list[tuple[Message, str]] = []

    # --- hooks for subclasses and later issues ----------------------------------------------------
    def client_weight(self, update: Update) -> float:
        """Return the aggregation weight ``a_i`` of an update (``n_i``; WCA overrides this, paper §2.5)."""
        return float(update.num_examples)

    def round_weights(self, updates: Sequence[Update]) -> list[float]:
        """Return the round's aggregation weights: ``n_i`` (``fed.weighting="examples"``) or WCA.

        WCA (paper §2.5) needs the whole round: the frequency weighting scores each client's corrected
        words against the other clients' of the same round. It uses only what clients sent
        (`fedasr.refinement.ClientStats` in their metrics, and their training loss).
        """
        if self.fed.weighting == "examples":
            return [self.client_weight(u) for u in updates]
        stats = [refinement.ClientStats.from_metrics(u.metrics, self.fed.wca_buckets) for u in updates]
        return refinement.wca_weights(stats, self.fed.weighting, num_examples=[u.num_examples for u in updates],
                                      losses=[u.metrics.get("loss", float("nan")) for u in updates],
                                      power=self.fed.wca_power)

    def server_step(self, aggregated: dict[str, torch.Tensor]) -> None:
        """Apply the aggregated update to ``self.weights`` (FedSGD / FedAvg define it)."""
        raise NotImplementedError

    # --- Flower Strategy API ------------------------------------------------------------------------
    def summary(self) -> None:
        """Log the strategy's configuration."""
        f = self.fed
        log(INFO, "\t├──> %s over %d clients: %d per round, min %d successful", type(self).__name__,
            len(self.client_ids), f.clients_per_round, f.min_successful_clients)
        log(INFO, "\t└──> server %s lr=%g momentum=%g; node data: %s", f.server_optimizer, f.server_lr,
            f.server_momentum, f.node_data)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample clients for the round and build one TRAIN message per client."""
        # Sample clients and the nodes that will train them
        nodes = self._wait_for_nodes(grid)
        pool = sorted(self.hosts) if self.hosts is not None else self.client_ids
        sampled = sample_clients(pool, self.fed.clients_per_round, self.fed.seed, server_round)
        # Build the messages: global arrays + this client's config
        base = {**fed_to_flat(self.fed), **dict(config), "server-round": server_round}
        down_bytes = transport.payload_bytes(arrays)
        if self.fed.compress_download:  # one encoding per round (a codec or OMC codes), sent to every sampled client
            gen = torch.Generator().manual_seed(derive_seed("download", self.fed.seed, server_round))
            enc, meta, down_bytes = transport.encode_download(arrays.to_torch_state_dict(), self.fed, self.omc_names,
                                                              gen)
            arrays = ArrayRecord({k: Array(v) for k, v in enc.items()})
            base[DOWNLOAD_META] = meta
        self._sent = []
        # largest first once the engine's node order is known (start(), when cost_of is set); else in sampling order
        spread = (dispatch.assign_nodes(sampled, self.node_order, self.cost_of) if self.node_order is not None
                  else dispatch.assign_nodes(sampled, nodes, None))
        for i, cid in enumerate(sampled):
            node = self.hosts[cid] if self.hosts is not None else spread[i]
            cfg = ConfigRecord({**base, "client-id": cid,
                                "client-seed": derive_seed("client", self.fed.seed, server_round, cid)})
            msg = Message(RecordDict({"arrays": arrays, "config": cfg}), dst_node_id=node,
                          message_type=MessageType.TRAIN, group_id=str(server_round))
            self._sent.append((msg, cid))
        self.record.update(round=server_round, sampled=sampled, num_sampled=len(sampled),
                           bytes_down=len(sampled) * down_bytes)
        log(INFO, "configure_train: round %d, %d clients on %d nodes", server_round, len(sampled), len(nodes))
        if self.secagg is not None:  # the setup exchange runs now; what is returned are the masked-upload requests
            self._sent = self.secagg.setup(self, grid, server_round)
        return [m for m, _ in self._sent]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate the replies, aggregate the usable updates and take one server optimizer step."""
        if self.secagg is not None:  # the masked sum (+ recovery) gives the weighted mean directly
            agg, updates = self.secagg.aggregate(self, server_round, replies)
            stubs = self.secagg.st.get("stubs", {})  # setup metrics; the exchange counts bytes per round, not client
            self._ledger = {c: {"metrics": stubs[c].metrics if c in stubs else {}, "bytes_up": None}
                            for c in self.record.get("sampled", [])}
            return (None, None) if agg is None else self._apply(server_round, agg, updates)
        # Match replies to the clients they answer (message ids are set when the grid pushes)
        by_msg_id = {m.metadata.message_id: cid for m, cid in self._sent}
        updates, failed, bytes_up, compute_s = [], {}, 0, {}
        self._ledger = {}
        for reply in replies:
            cid = by_msg_id.get(reply.metadata.reply_to_message_id)
            if cid is None or cid in failed or any(u.client_id == cid for u in updates):
                continue  # a late reply to an earlier round's message, or a duplicate (counted once)
            update, reason, nbytes = self._parse_reply(reply, cid)
            self._ledger[cid] = ledger.reply_info(reply, update, nbytes)
            bytes_up += nbytes
            if update is not None and "compute-s" in update.metrics:
                compute_s[cid] = update.metrics["compute-s"]
            if reason is None:
                updates.append(update)
            else:
                failed[cid] = reason
        for cid, why in norm_outliers(updates, self.fed.faults.max_norm_ratio).items():  # absurd norms (faults)
            failed[cid] = why
        updates = [u for u in updates if u.client_id not in failed]
        for _, cid in self._sent:
            if cid not in failed and all(u.client_id != cid for u in updates):
                failed[cid] = "timeout"
        self.record.update(succeeded=sorted(u.client_id for u in updates), failed=failed, num_succeeded=len(updates),
                           num_failed=len(failed), bytes_up=bytes_up, client_compute_s=compute_s,
                           slowest_client_s=max(compute_s.values(), default=None))
        for cid, why in failed.items():
            log(WARNING, "round %d: client %s excluded (%s)", server_round, cid, why)
        # Too few usable updates: skip the round (weights unchanged), do not crash
        if len(updates) < self.fed.min_successful_clients:
            reason = (f"{len(updates)} successful client(s) < min-successful-clients "
                      f"{self.fed.min_successful_clients}")
            self.record.update(status="skipped", skip_reason=reason)
            log(WARNING, "round %d skipped: %s", server_round, reason)
            return None, None
        # Aggregate (in client-id order: results must not depend on reply arrival) and apply the server optimizer
        updates.sort(key=lambda u: u.client_id)
        if self.dp is not None:  # DP: each weight from the client's own upload (privacy.DPAggregator)
            agg, dp_record = self.dp.aggregate(updates, self.record["num_sampled"], server_round,
                                               lambda u: self.round_weights([u])[0])
            self.record.update(weights=dp_record.pop("weights"), dp=dp_record)
        else:
            weights = self.round_weights(updates)
            self.record["weights"] = {u.client_id: w for u, w in zip(updates, weights)}
            agg = aggregate(updates, weights)
        return self._apply(server_round, agg, updates)

    def _apply(self, server_round: int, agg: dict[str, torch.Tensor],
               updates: Sequence[Update]) -> tuple[ArrayRecord, MetricRecord]:
        """Mix in the central update (Mixed FL), take the server step and record the round's loss."""
        if self.fed.central_mix > 0:  # Mixed FL: the server's own proxy-data update joins the step
            agg = self._mix_central(server_round, agg)
        self.server_step(agg)
        n = sum(u.num_examples for u in updates)
        loss = sum(u.metrics.get("loss", float("nan")) * u.num_examples for u in updates) / n
        self.record.update(status="ok", train_loss=loss, num_examples=n)
        return ArrayRecord(self.weights), MetricRecord({"loss": loss, "num-examples": n})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Return no messages: evaluation is server-side (``evaluate_fn``), on the test sets."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Return None: there is no federated evaluation."""
        return None

    # --- the round loop ---------------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None, *,
              start_round: int = 1,
              on_round_end: Callable[[int, ArrayRecord, dict], None] | None = None) -> Result:
        """Run rounds ``start_round..num_rounds`` (Flower's loop plus records, resume and skipping).

        ``on_round_end(round, arrays, record)`` receives each round's record (round 0 holds the initial
        evaluation); the server app logs it and writes the checkpoint there.
        """
        del evaluate_config  # Unused: no federated evaluation
        train_config = ConfigRecord() if train_config is None else train_config
        result, arrays = Result(arrays=initial_arrays), initial_arrays
        if self.fed.node_data == "partitioned" and self.hosts is None:
            self.discover_hosts(grid, timeout)
        elif self.cost_of is not None:  # the engine's node order, asked once (run.largest-first)
            nodes = self._wait_for_nodes(grid)
            self.node_order = dispatch.node_order(nodes, grid.send_and_receive(dispatch.order_messages(nodes),
                                                                               timeout=timeout))
        if start_round == 1 and evaluate_fn is not None:
            t0 = time.perf_counter()
            res = evaluate_fn(0, arrays)
            if res is not None:
                result.evaluate_metrics_serverapp[0] = res
                if on_round_end:
                    on_round_end(0, arrays, {"round": 0, "status": "initial", "eval": dict(res),
                                             "eval_s": time.perf_counter() - t0})
        for rnd in range(start_round, num_rounds + 1):
            log(INFO, "[ROUND %s/%s]", rnd, num_rounds)
            self.record = {}
            t0 = time.perf_counter()
            messages = self.configure_train(rnd, arrays, train_config, grid)
            ta = time.perf_counter()
            replies = grid.send_and_receive(messages, timeout=timeout)
            tb = time.perf_counter()
            agg_arrays, agg_metrics = self.aggregate_train(rnd, replies)
            self.record["ledger"] = ledger.round_rows(self.record, self._ledger, self.device_of)
            if agg_arrays is not None:
                arrays = result.arrays = agg_arrays
            if agg_metrics is not None:
                result.train_metrics_clientapp[rnd] = agg_metrics
            t1 = time.perf_counter()
            res = evaluate_fn(rnd, arrays) if evaluate_fn is not None else None
            if res is not None:
                result.evaluate_metrics_serverapp[rnd] = res
                self.record["eval"] = dict(res)
            t2 = time.perf_counter()
            # where a round's time goes: building the messages (download encoding), the clients (their compute,
            # transport and the engine's scheduling), the server's own update (validation, aggregation, Mixed
            # FL's central update, optimizer step), and server-side evaluation
            self.record.update(configure_s=ta - t0, clients_s=tb - ta, server_s=t1 - tb, train_s=t1 - t0,
                               eval_s=t2 - t1, wall_s=t2 - t0)
            if on_round_end:
                on_round_end(rnd, arrays, dict(self.record))
        return result

    # --- helpers ----------------------------------------------------------------------------------
    def _mix_central(self, server_round: int, agg: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``(1 − α)·agg + α·central``; a failed or non-finite central update leaves ``agg`` as is (recorded)."""
        try:
            cu = self.central_update(server_round, self.weights)
            reason = validate_update(cu, self.reference_shapes)
            if reason is None:
                mixed = mix_central(agg, cu.arrays, self.fed.central_mix)
        except Exception as e:  # noqa: BLE001 — the clients' round must survive the server's own data
            reason = f"{type(e).__name__}: {e}"[:300]
        if reason is not None:
            log(WARNING, "round %d: central update not mixed (%s)", server_round, reason)
            self.record["central"] = {"status": "failed", "reason": reason}
            return agg
        self.record["central"] = {"status": "ok", "alpha": self.fed.central_mix, "loss": cu.metrics.get("loss"),
                                  "num_examples": cu.num_examples, "compute_s": cu.metrics.get("compute-s")}
        return mixed

    def discover_hosts(self, grid: Grid, timeout: float) -> dict[str, int]:
        """Ask every node which clients it hosts; keep the population's clients that some node hosts."""
        nodes = self._wait_for_nodes(grid)
        msgs = [Message(RecordDict({"config": ConfigRecord({"action": HOSTS_QUERY})}), dst_node_id=n,
                        message_type=MessageType.QUERY) for n in nodes]
        replies = list(grid.send_and_receive(msgs, timeout=timeout))
        known, hosts, wildcard = set(self.client_ids), {}, []
        for reply in replies:
            if reply.has_error():
                log(WARNING, "node %s did not answer the hosts query: %s", reply.metadata.src_node_id,
                    reply.error.reason)
                continue
            ids = json.loads(str(reply.content["config"]["client-ids"]))
            if ids == ANY_CLIENT:
                wildcard.append(reply.metadata.src_node_id)
                continue
            for cid in ids:
                if cid in known:
                    hosts.setdefault(cid, reply.metadata.src_node_id)
        for i, cid in enumerate(c for c in sorted(known) if c not in hosts and wildcard):
            hosts[cid] = wildcard[i % len(wildcard)]
        if not hosts:
            raise RuntimeError("no connected node hosts any client of the population")
        log(INFO, "discover_hosts: %d clients on %d nodes", len(hosts), len(set(hosts.values())))
        self.hosts = hosts
        return hosts

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.fed.node_wait_s
        while len(nodes := sorted(grid.get_node_ids())) < max(1, self.fed.min_nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(nodes)} SuperNode(s) connected after {self.fed.node_wait_s:.0f} s; "
                                   f"fed.min-nodes = {self.fed.min_nodes}")
            time.sleep(0.5)
        return nodes

    def _parse_reply(self, reply: Message, cid: str) -> tuple[Update | None, str | None, int]:
        """Return ``(update, reason to exclude or None, uploaded bytes)`` for one reply."""
        if reply.has_error():
            return None, f"error: {reply.error.reason}"[:300], 0
        try:
            record = reply.content["arrays"]
            metrics = dict(reply.content["metrics"])
            if TRANSPORT in reply.content:  # an encoded upload: decode before validation and aggregation
                meta = str(reply.content[TRANSPORT][UPLOAD_META])
                arrays, nbytes = transport.decode_arrays({k: v.numpy() for k, v in record.items()}, meta)
            else:
                nbytes = transport.payload_bytes(record)
                arrays = {k: torch.from_numpy(v.numpy()) for k, v in record.items()}
            update = Update(arrays, int(metrics.pop("num-examples")), metrics, cid, self.update_kind)
        except Exception as e:  # noqa: BLE001 — a malformed reply must not end the round
            return None, f"malformed-reply: {type(e).__name__}: {e}"[:300], 0
        required = None if self.fed.partial_updates else self.trainable
        reason = validate_update(update, self.reference_shapes, required)
        if reason is None and self.fed.weighting != "examples":
            try:  # WCA needs the client's statistics: a reply without usable ones is excluded, counted
                refinement.ClientStats.from_metrics(update.metrics, self.fed.wca_buckets)
            except Exception as e:  # noqa: BLE001
                reason = f"bad-wca-stats: {type(e).__name__}: {e}"[:300]
        return update, reason, nbytes


class FedSGD(FedAsrStrategy):
    """FedSGD (paper §2.3): clients upload ``g_i`` at the global weights; the server optimizer steps on ``G_t``."""

    update_kind = "gradient"

    def server_step(self, aggregated: dict[str, torch.Tensor]) -> None:
        """Apply the server optimizer to the aggregated gradient ``G_t``."""
        self.server_opt.step(self.weights, aggregated)


class FedAvgServerLR(FedAsrStrategy):
    """FedAvg / FedOpt: clients upload ``Δ_i``; the server optimizer steps on the pseudo-gradient ``−Δ̄``.

    With server SGD, lr 1 and no momentum this is McMahan et al.'s FedAvg; other settings are FedAvgM or
    FedAdam (Reddi et al. 2021).
    """

    update_kind = "delta"

    def server_step(self, aggregated: dict[str, torch.Tensor]) -> None:
        """Apply the server optimizer to ``−Δ̄``."""
        self.server_opt.step(self.weights, {k: -v for k, v in aggregated.items()})


def build_strategy(fed: FedConfig, client_ids: Sequence[str], weights: dict[str, torch.Tensor],
                   trainable: Sequence[str], omc_names: Sequence[str] = (),
                   central_update: Callable[[int, dict[str, torch.Tensor]], Update] | None = None) -> FedAsrStrategy:
    """Return the strategy ``fed.strategy`` names (``omc_names``: what OMC clients store quantized;
    ``central_update``: the server's proxy-data update for ``fed.central-mix``)."""
    cls = {"fedsgd": FedSGD, "fedavg": FedAvgServerLR}[fed.strategy]
    return cls(fed, client_ids, weights, trainable, omc_names, central_update)

