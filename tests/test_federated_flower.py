"""The Flower layer: strategy rounds, faults, skipping, resume, run records, and the three engines.

Most tests drive the real ServerApp loop (`run_server`) and ClientApp handlers through `InProcessGrid`,
a Grid that answers each message by calling the ClientApp in this process: fast, deterministic, and able
to inject faults Flower would report (errors, lost replies, corrupted payloads). The engine tests run
the same apps on Flower's Simulation Engine, ``flwr run`` and the Deployment Engine.
"""

import dataclasses
import json
import os
import tomllib
import uuid
from pathlib import Path

import psutil
import pytest
import torch
from flwr.app import ArrayRecord, Context, Error, Message, RecordDict
from flwr.common.config import flatten_dict, parse_config_args
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedasr import config
from fedasr.federated import checkpoint, launch
from fedasr.federated import config as fedconfig
from fedasr.federated import task as task_lib
from fedasr.federated.client_app import make_client_app
from fedasr.federated.config import FedConfig, FederatedConfig, RunSpec, TaskSpec
from fedasr.federated.server_app import checkpoint_path, run_server

REPO = Path(__file__).resolve().parents[1]


class InProcessGrid(Grid):
    """A Grid whose nodes run the ClientApp in this process; ``tamper(msg, reply)`` may alter/drop replies."""

    def __init__(self, client_app, node_configs=({}, {}), tamper=None):
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
        self.app, self.tamper = client_app, tamper
        self.node_configs = {100 + i: dict(c) for i, c in enumerate(node_configs)}
        self.delivered: list[tuple[int, str, str]] = []  # (node, message type, client id)

    def set_run(self, run):
        pass

    @property
    def run(self):
        return None

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.node_configs)

    def push_messages(self, messages):
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids):
        return []

    def record(self, m):
        """What `delivered` keeps of a delivered message."""
        return m.metadata.dst_node_id, m.metadata.message_type, m.content["config"].get("client-id", "")

    def context(self, node):
        """The node's Context for one message: a fresh one (subclasses may keep state between messages)."""
        return Context(run_id=1, node_id=node, node_config=self.node_configs[node], state=RecordDict(), run_config={})

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.push_messages(messages)
        replies = []
        for m in messages:
            self.delivered.append(self.record(m))
            try:
                reply = self.app(m, self.context(m.metadata.dst_node_id))
            except Exception as e:  # noqa: BLE001 — what Flower does with a ClientApp exception
                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=m)
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            reply = self.tamper(m, reply) if self.tamper else reply
            if reply is not None:
                replies.append(reply)
        return replies


def _cfg(tmp_path, run_id="r", **fed):
    params = fed.pop("params", {})
    fed = {"num_rounds": 2, "clients_per_round": 4, **fed}
    return FederatedConfig(fed=config.from_dict(FedConfig, fed, prefix="fed"), task=TaskSpec("toy", {"num-clients": 12, **params}),
                           run=RunSpec(experiment="t", run_id=run_id, results_root=str(tmp_path),
                                       overlap_central=False))  # clients run in this process (InProcessGrid)


def _run(cfg, **grid_kw):
    grid = InProcessGrid(make_client_app(cfg), **grid_kw)
    return run_server(grid, cfg), grid


def _final_weights(run):
    return checkpoint.load_checkpoint(checkpoint_path(run.path))["weights"]


def test_faulty_clients_are_excluded_and_counted(tmp_path):
    def tamper(msg, reply):
        cid = msg.content["config"]["client-id"]
        if cid == "toy0005" and not reply.has_error():  # wrong shape in the upload
            arrays = reply.content["arrays"]
            k = next(iter(arrays))
            arrays[k] = ArrayRecord({k: torch.zeros(3, 3)})[k]
        if cid == "toy0006":
            return None  # the reply never arrives: a timeout
        return reply

    faults = {"toy0003": "raise", "toy0004": "nan"}
    cfg = _cfg(tmp_path, num_rounds=1, clients_per_round=12, params={"faults": faults})
    run, _ = _run(cfg, tamper=tamper)
    (r1,) = [r for r in run.rounds() if r["round"] == 1]
    assert r1["status"] == "ok" and r1["num_sampled"] == 12
    assert r1["failed"]["toy0003"].startswith("error: RuntimeError: injected fault")
    assert r1["failed"]["toy0004"].startswith("non-finite:")
    assert r1["failed"]["toy0005"].startswith("shape-mismatch:")
    assert r1["failed"]["toy0006"] == "timeout"
    assert r1["num_failed"] == 4 and r1["num_succeeded"] == 8 and len(r1["succeeded"]) == 8
    assert all(torch.isfinite(v).all() for v in _final_weights(run).values())
    s = run.summary()
    assert s["clients_failed"] == 4 and s["failure_reasons"] == {"error: RuntimeError": 1, "non-finite": 1, "shape-mismatch": 1,
                                                                 "timeout": 1}


def test_too_few_successes_skips_the_round_with_a_reason(tmp_path):
    faults = {f"toy{i:04d}": "raise" for i in range(12)}
    cfg = _cfg(tmp_path, num_rounds=2, clients_per_round=3, min_successful_clients=1, params={"faults": faults})
    run, _ = _run(cfg)
    rounds = {r["round"]: r for r in run.rounds()}
    assert rounds[1]["status"] == rounds[2]["status"] == "skipped"
    assert "0 successful client(s) < min-successful-clients 1" in rounds[1]["skip_reason"]
    initial = task_lib.make_task(cfg.task).build_model().state_dict()
    for k, v in _final_weights(run).items():
        assert torch.equal(v, initial[k])  # a skipped round leaves the global model unchanged
    assert run.summary()["rounds_skipped"] == 2 and run.summary()["rounds_completed"] == 0


@pytest.mark.parametrize("fed", [
    dict(strategy="fedsgd", server_optimizer="adam", server_lr=0.05),
    dict(strategy="fedavg", server_optimizer="sgd", server_lr=0.7, server_momentum=0.9, client_optimizer="adam",
         client_lr=0.01, local_epochs=2, micro_batch=5),
], ids=["fedsgd-adam", "fedavgm-local-adam"])
def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path, fed):
    full, _ = _run(_cfg(tmp_path, "full", num_rounds=4, clients_per_round=3, **fed))
    half, _ = _run(_cfg(tmp_path, "resumed", num_rounds=2, clients_per_round=3, **fed))
    cfg = _cfg(tmp_path, "resumed", num_rounds=4, clients_per_round=3, **fed)
    cfg.run.resume = True
    resumed, _ = _run(cfg)
    a, b = _final_weights(full), _final_weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.summary()["resumed_after_round"] == 2 and resumed.summary()["last_round"] == 4
    assert [r["round"] for r in resumed.rounds()] == [0, 1, 2, 3, 4]
    # ...and the server optimizer state mattered: restarting it from scratch gives other weights
    fresh = _cfg(tmp_path, "fresh", num_rounds=2, clients_per_round=3, **fed)
    _run(fresh)
    ck = checkpoint.load_checkpoint(checkpoint_path(Path(tmp_path) / "t" / "fresh"))
    assert not torch.equal(ck["weights"]["net.0.weight"], a["net.0.weight"])


def test_run_records_and_bytes(tmp_path):
    run, _ = _run(_cfg(tmp_path, num_rounds=2, clients_per_round=3, eval_every=2))
    assert {p.name for p in run.path.iterdir()} >= {"config.json", "rounds.jsonl", "summary.json", "checkpoints"}
    rows = {r["round"]: r for r in run.rounds()}
    assert set(rows) == {0, 1, 2} and "eval" in rows[0] and "eval" not in rows[1] and "eval" in rows[2]
    model = task_lib.make_task(_cfg(tmp_path).task).build_model()
    full = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    assert rows[1]["bytes_down"] == 3 * full and rows[1]["bytes_up"] == 3 * trainable
    assert rows[1]["train_loss"] > 0 and rows[1]["wall_s"] >= rows[1]["train_s"] > 0
    assert json.loads((run.path / "config.json").read_text())["config"]["fed"]["clients-per-round"] == 3


def test_server_work_uses_server_threads_and_restores_the_count(tmp_path):
    """Evaluation runs between rounds with ``run.server-threads`` torch threads; clients train with 1."""
    seen = []

    class Probe(type(task_lib.make_task(_cfg(tmp_path).task))):
        def evaluate(self, model):
            seen.append(torch.get_num_threads())
            return super().evaluate(model)

    cfg = _cfg(tmp_path, num_rounds=1, eval_every=1)
    cfg.run.server_threads = 2
    before = torch.get_num_threads()
    run_server(InProcessGrid(make_client_app(cfg)), cfg, task_factory=lambda: Probe(task_lib.make_task(cfg.task).cfg))
    assert seen == [2, 2] and torch.get_num_threads() == before


def test_partitioned_nodes_train_only_their_own_clients(tmp_path):
    cfg = _cfg(tmp_path, num_rounds=2, clients_per_round=5, node_data="partitioned")
    nodes = ({"partition-id": 0, "num-partitions": 2}, {"client-ids": "toy0001,toy0003,toy0005"})
    run, grid = _run(cfg, node_configs=nodes)
    hosted = {100: {f"toy{i:04d}" for i in range(0, 12, 2)}, 101: {"toy0001", "toy0003", "toy0005"}}
    trained = [(node, cid) for node, kind, cid in grid.delivered if kind == "train"]
    assert trained and all(cid in hosted[node] for node, cid in trained)
    assert {k for _, k, _ in grid.delivered} == {"query", "train"}
    assert all(r["status"] == "ok" for r in run.rounds() if r["round"] > 0)


def test_pyproject_run_config_matches_the_dataclass_defaults():
    app = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fedasr.federated.server_app:app",
                                 "clientapp": "fedasr.federated.client_app:app"}
    assert fedconfig.config_from_run_config(flatten_dict(app["config"])) == FederatedConfig()
    # every fed.* knob is listed (nested tables too), so `flwr run --run-config` overrides of any are known keys
    listed = set(flatten_dict({"fed": app["config"]["fed"]}))
    assert listed == set(fedconfig.fed_to_flat(fedconfig.FedConfig()))
    assert {"fed.omc.bits", "fed.transport.upload.name", "fed.partial.policy"} <= listed
    # and every run.* field: flwr's SuperLink refuses a --run-config key that pyproject does not list
    run_fields = {f"run.{f.name.replace('_', '-')}" for f in dataclasses.fields(fedconfig.RunSpec)}
    assert set(flatten_dict({"run": app["config"]["run"]})) == run_fields


def test_run_config_args_round_trip_through_flowers_parser(tmp_path):
    cfg = _cfg(tmp_path, strategy="fedavg", server_eps=1e-3, params={"faults": {"toy0001": "sleep:0.5"}})
    cfg.run.results_root = "/some dir/with spaces"
    flat = parse_config_args([run_config_args_value(cfg)])
    assert fedconfig.config_from_run_config(flat) == cfg


def run_config_args_value(cfg):
    args = launch.run_config_args(cfg)
    assert args[0] == "--run-config"
    return args[1]


# ---------------------------------------------------------------------------------------------------
# The three engines, end to end
# ---------------------------------------------------------------------------------------------------


def _check_two_round_run(run):
    for name in ("config.json", "rounds.jsonl", "summary.json"):
        assert (run.path / name).is_file(), name
    rows = [r for r in run.rounds() if r["round"] > 0]
    assert [r["round"] for r in rows] == [1, 2] and all(r["status"] == "ok" for r in rows)
    assert run.summary()["rounds_completed"] == 2 and checkpoint_path(run.path).is_file()
    return rows


def _no_flower_processes_left():
    mine = []
    for p in psutil.process_iter(["cmdline", "ppid"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(n in cmd for n in ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp",
                                  "flwr-clientapp", "flwr-simulation")) and "fedasr-flwr-" in str(_env(p)):
            mine.append(p.pid)
    return mine


def _env(p):
    try:
        return p.environ().get("FLWR_HOME", "")
    except psutil.Error:
        return ""


@pytest.fixture(scope="module")
def ray_shutdown():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.timeout(300)
def test_simulation_engine_two_rounds_end_to_end(tmp_path, ray_shutdown):
    cfg = _cfg(tmp_path, "sim", num_rounds=2, clients_per_round=3, params={"faults": {"toy0003": "raise"}})
    rows = _check_two_round_run(launch.run_simulation(cfg))
    # the engine's error replies are counted like any other failure
    failed = {cid: why for r in rows for cid, why in r["failed"].items()}
    assert all(cid == "toy0003" and "injected fault" in why for cid, why in failed.items())
    # ...and the in-process grid, with the same config, reaches the same weights
    ref, _ = _run(_cfg(tmp_path, "ref", num_rounds=2, clients_per_round=3, params={"faults": {"toy0003": "raise"}}))
    sim_w, ref_w = _final_weights(launch._finished_run(launch._pinned(cfg))), _final_weights(ref)
    for k in ref_w:
        torch.testing.assert_close(sim_w[k], ref_w[k], rtol=0, atol=0)


@pytest.mark.timeout(300)
def test_simulations_sharing_one_ray_match_separate_runs(tmp_path, ray_shutdown):
    """`ray_session.shared_ray`: Ray stays up between simulations, stops after the block, and each run reaches
    the weights the in-process grid reaches (fresh client actors per run: nothing carries over)."""
    import ray

    from fedasr.federated.ray_session import shared_ray

    cfgs = [_cfg(tmp_path, f"shared{i}", num_rounds=2, clients_per_round=3, seed=i) for i in range(2)]
    with shared_ray(2):
        for cfg in cfgs:
            launch.run_simulation(cfg)
            assert ray.is_initialized()
    assert not ray.is_initialized()
    for i, cfg in enumerate(cfgs):
        ref, _ = _run(_cfg(tmp_path, f"ref{i}", num_rounds=2, clients_per_round=3, seed=i))
        sim_w, ref_w = _final_weights(launch._finished_run(launch._pinned(cfg))), _final_weights(ref)
        for k in ref_w:
            torch.testing.assert_close(sim_w[k], ref_w[k], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_flwr_run_local_simulation_two_rounds(tmp_path):
    cfg = _cfg(tmp_path, "flwr-local", num_rounds=2, clients_per_round=2)
    _check_two_round_run(launch.run_flwr_local(cfg, timeout_s=300))
    assert _no_flower_processes_left() == []


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_deployment_engine_on_loopback_two_rounds(tmp_path):
    cfg = _cfg(tmp_path, "deploy", num_rounds=2, clients_per_round=2)
    rows = _check_two_round_run(launch.run_deployment_local(cfg, n_supernodes=2, timeout_s=300))
    assert all(r["num_succeeded"] == 2 for r in rows)
    assert _no_flower_processes_left() == []
    assert not any(str(tmp_path) in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])
                   if p.pid != os.getpid())


def test_largest_first_dispatch_orders_nodes_and_leaves_the_weights_unchanged(tmp_path):
    """`run.largest-first`: the costliest sampled client goes to the node the engine queues first (lowest partition
    id), and the run reaches bitwise the weights of the sampling-order dispatch (aggregation is in client-id order)."""
    from fedasr.federated.toy import make_toy_task

    nodes = tuple({"partition-id": p} for p in (3, 1, 0, 2))  # node ids 100..103; queue order 102, 101, 103, 100
    cfg = _cfg(tmp_path, "lpt", clients_per_round=4)
    cfg.run.largest_first = True
    run, grid = _run(cfg, node_configs=nodes)
    size = make_toy_task({"num-clients": 12}).num_examples
    trained = [(node, cid) for node, kind, cid in grid.delivered if kind == "train"]
    assert [k for _, k, _ in grid.delivered[:4]] == ["query"] * 4 and len(trained) == 8  # asked once, 2 rounds
    for rnd in (trained[:4], trained[4:]):
        by_node = dict(rnd)
        queued = [by_node[n] for n in (102, 101, 103, 100)]
        assert [size(c) for c in queued] == sorted((size(c) for c in queued), reverse=True)
    ref, ref_grid = _run(_cfg(tmp_path, "sampled", clients_per_round=4), node_configs=nodes)
    assert all(k == "train" for _, k, _ in ref_grid.delivered)
    assert [r.get("sampled") for r in run.rounds()] == [r.get("sampled") for r in ref.rounds()]
    assert sorted(trained) != sorted((n, c) for n, _, c in ref_grid.delivered)  # the order did change something
    a, b = _final_weights(run), _final_weights(ref)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
