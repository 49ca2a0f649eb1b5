"""fedasr ClientApp: unpack a Flower message, run `client_update.client_update`, pack the reply.

Each TRAIN reply also carries the round's ledger metrics (`fedasr.ledger`): the process's peak resident memory
during the round, the resident set when it began, and whether the kernel reset the high-water mark.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from fedasr import compression, ledger, omc
from fedasr.federated import dispatch, faults, privacy, secagg, transport
from fedasr.federated.client_update import client_update
from fedasr.federated.config import (
    FedConfig,
    FederatedConfig,
    config_from_run_config,
    fed_from_flat,
)
from fedasr.federated.strategies import ANY_CLIENT, HOSTS_QUERY
from fedasr.federated.task import FederatedTask, make_task
from fedasr.federated.transport import DOWNLOAD_META, TRANSPORT, UPLOAD_META
from fedasr.ledger import CLIENT_DECLINED
from fedasr.seeding import derive_seed

__all__ = ["CLIENT_DECLINED", "app", "hosted_clients", "make_client_app"]

TaskFactory = Callable[[], FederatedTask]

# One task and one model per process (a Ray actor or a SuperNode's ClientApp process serves many
# clients): building the model once matters for the 130M-parameter ASR model.
_RUNTIMES: dict[str, tuple[FederatedTask, torch.nn.Module]] = {}


def _runtime(cfg: FederatedConfig, task_factory: TaskFactory | None,
             fed: FedConfig | None = None) -> tuple[FederatedTask, torch.nn.Module]:
    """Return this process's cached ``(task, model)`` for the run's task.

    With ``fed.omc.bits`` the model is OMC-converted once (`omc.apply_omc`): its weight matrices are
    stored quantized, and each round's download is adopted as that storage (`omc.load_payload`). Every variable
    then arrives with the download, so a task that offers ``build_skeleton`` (the ASR task) starts from its
    architecture on the ``meta`` device instead of reading the seed checkpoint's weights, which raised the
    process's first-round peak at 129M (measured by `bench/clientapp_memory.py`).
    """
    omc_cfg = fed.omc if fed is not None and fed.omc.enabled else None
    key = json.dumps([cfg.task.name, cfg.task.params, repr(omc_cfg)], sort_keys=True, default=str)
    if task_factory is not None:
        key = f"factory:{getattr(task_factory, '__qualname__', repr(task_factory))}:{key}"
    if key not in _RUNTIMES:
        task = task_factory() if task_factory is not None else make_task(cfg.task)
        skeleton = omc_cfg is not None and hasattr(task, "build_skeleton")
        model = task.build_skeleton() if skeleton else task.build_model()
        if omc_cfg is not None:
            omc.apply_omc(model, omc_cfg)
        _RUNTIMES[key] = (task, model)
    return _RUNTIMES[key]


def _global_state(msg: Message, conf: ConfigRecord, fed: FedConfig,
                  model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The round's global weights from the TRAIN message (fp32, transport-decoded, or adopted OMC codes)."""
    if DOWNLOAD_META not in conf:
        return msg.content["arrays"].to_torch_state_dict()
    return transport.decode_download({k: v.numpy() for k, v in msg.content["arrays"].items()}, str(conf[DOWNLOAD_META]),
                                fed, model)


def _resolve(cfg: FederatedConfig | None, context: Context) -> FederatedConfig:
    """Return the closed-over config (in-process simulation) or the one in ``context.run_config``."""
    return cfg if cfg is not None else config_from_run_config(context.run_config)


def hosted_clients(task: FederatedTask, node_config: dict) -> list[str] | str:
    """Return the client ids this node hosts, from its ``--node-config``, or `ANY_CLIENT`.

    ``client-ids="a,b,c"`` names them; ``partition-id=i num-partitions=P`` takes every P-th client of
    the sorted population starting at i; neither means the node can read any client's data.
    """
    if "client-ids" in node_config:
        return [c for c in str(node_config["client-ids"]).split(",") if c]
    if "partition-id" in node_config and "num-partitions" in node_config:
        pid, parts = int(node_config["partition-id"]), int(node_config["num-partitions"])
        return [c for i, c in enumerate(sorted(task.client_ids())) if i % parts == pid]
    return ANY_CLIENT


def handle_train(msg: Message, context: Context, cfg: FederatedConfig | None = None,
                 task_factory: TaskFactory | None = None) -> Message:
    """Compute one client's update (FedSGD gradient or FedAvg delta) for a TRAIN message.

    The reply's ``peak-rss-bytes`` is this process's VmHWM from the start of this call to the built reply
    (`fedasr.ledger`: the resident model, the libraries and the round's transient memory; ``start-rss-bytes`` is
    the resident set at the start). With ``fed.ledger.enforce-budget`` a client whose analytic peak exceeds its
    device tier's memory budget declines before training, naming both numbers.
    """
    torch.set_num_threads(1)  # one thread per client: 2 clients on 2 cores (DESIGN §6)
    meter = ledger.start_round()  # reset the process's VmHWM: the reply reports this round's peak
    # Load the task, the model and the instructions
    conf = msg.content["config"]
    fed = fed_from_flat(conf)
    task, model = _runtime(_resolve(cfg, context), task_factory, fed)
    client_id, client_seed = str(conf["client-id"]), int(conf["client-seed"])
    server_round = int(conf.get("server-round", 0))
    stage = conf.get(secagg.STAGE)
    if stage == secagg.MASKED:  # [fed.secagg] phase 2: the update cached in phase 1, quantized and masked
        try:
            return secagg.masked_reply(msg, context, fed)
        except Exception as e:  # noqa: BLE001
            return Message(Error(code=CLIENT_DECLINED, reason=f"{type(e).__name__}: {e}"[:500]), reply_to=msg)
    # Call the client update; a client that cannot train (no usable data, bad input, NaN) declines
    # with a readable reason that the server records, instead of an opaque runtime exception
    try:
        global_state = _global_state(msg, conf, fed, model)
        if fed.ledger.enforce_budget:  # [fed.ledger]: decline (OverBudget) when the analytic peak exceeds the budget
            ledger.check_budget(task, model, client_id, fed, server_round)
        # [fed.faults]: a fault drawn from (seed, round, client) crashes, delays or corrupts what is sent, on purpose
        fault = faults.draw_fault(fed.faults, fed.seed, server_round, client_id)
        update = faults.run_with_fault(fault, fed.faults, fed.round_timeout_s, client_id, lambda: (
            privacy.privatize_client_update(  # [fed.dp]: clip as sent; WCA noise
                client_update(task, model, client_id, global_state, fed, client_seed, server_round), fed, client_seed)))
    except Exception as e:  # noqa: BLE001 — any client failure must reach the server as a reason
        return Message(Error(code=CLIENT_DECLINED, reason=f"{type(e).__name__}: {e}"[:500]), reply_to=msg)
    # Construct and return the reply Message
    metrics = MetricRecord({"num-examples": int(update.num_examples),
                            **{k: v if isinstance(v, (int, list)) else float(v)
                               for k, v in update.metrics.items()}})
    if stage == secagg.SETUP:  # [fed.secagg] phase 1: keep the update on the node, send a key and maxima
        metrics.update(ledger.round_metrics(meter))
        return secagg.setup_reply(msg, context, update, metrics, client_seed, server_round, fed)
    if update.encoded is not None:  # [fed.grad-stream]: the gradient was folded into the upload's codes in backward
        enc, meta = compression.to_arrays(update.encoded)
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in enc.items()}),
                              TRANSPORT: ConfigRecord({UPLOAD_META: meta})})
    elif fed.transport.compress_upload:  # encode the update (stochastic rounding seeded from the client seed)
        gen = torch.Generator().manual_seed(derive_seed("upload", client_seed))
        enc, meta, _ = transport.encode_arrays({k: v.contiguous() for k, v in update.arrays.items()},
                                               fed.transport.upload, gen)
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in enc.items()}),
                              TRANSPORT: ConfigRecord({UPLOAD_META: meta})})
    else:
        content = RecordDict({"arrays": ArrayRecord({k: v.contiguous() for k, v in update.arrays.items()})})
    # the round's peak is read once the reply's arrays exist (the encoded upload is part of the round)
    metrics.update(ledger.round_metrics(meter))
    content["metrics"] = metrics
    return Message(content, reply_to=msg)


def handle_query(msg: Message, context: Context, cfg: FederatedConfig | None = None,
                 task_factory: TaskFactory | None = None) -> Message:
    """Answer the server's queries: the clients this node hosts, its partition id (dispatch order), secagg recovery."""
    action = msg.content["config"]["action"] if "config" in msg.content else ""
    if action == secagg.RECOVER:  # [fed.secagg]: reveal the pair seeds with the clients lost after setup
        return secagg.recovery_reply(msg, context)
    if action == dispatch.ORDER_QUERY:  # the simulation's dispatch order (fed.dispatch); -1: this node has none
        pid = int(context.node_config.get("partition-id", -1))
        return Message(RecordDict({"config": ConfigRecord({"partition-id": pid})}), reply_to=msg)
    if action != HOSTS_QUERY:
        raise ValueError(f"unknown query action {action!r}")
    task, _ = _runtime(_resolve(cfg, context), task_factory)
    ids = hosted_clients(task, dict(context.node_config))
    return Message(RecordDict({"config": ConfigRecord({"client-ids": json.dumps(ids)})}), reply_to=msg)


def make_client_app(cfg: FederatedConfig | None = None, task_factory: TaskFactory | None = None) -> ClientApp:
    """Return a ClientApp bound to ``cfg`` (in-process simulation) or reading ``context.run_config`` (None).

    ``task_factory`` (optional, must be picklable) replaces building the task from ``cfg.task``.
    """
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, cfg, task_factory)

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        return handle_query(msg, context, cfg, task_factory)

    return client_app


# Loaded by `flwr run` / SuperNodes through [tool.flwr.app.components] (configuration from run_config)
app = make_client_app()
