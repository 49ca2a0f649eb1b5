"""The federated maths without Flower: FedSGD = central SGD, micro-batching, weighting, partial keys, faults."""

import math

import pytest
import torch

from fedasr import config, seeding
from fedasr.config import ConfigError
from fedasr.federated import aggregation, checkpoint, transport
from fedasr.federated import client_update as cu
from fedasr.federated import config as fedconfig
from fedasr.federated import task as task_lib
from fedasr.federated.client_update import Update
from fedasr.federated.config import FedConfig, FederatedConfig
from fedasr.federated.toy import ToyBatch, ToyConfig, ToyTask, make_toy_task


@pytest.fixture(scope="module")
def task():
    return ToyTask(ToyConfig(num_clients=6, min_examples=10, max_examples=40, hidden=8, seed=3))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _full_batch(task, cid):
    x, y = task.client_data(cid)
    return ToyBatch(x, y)


def test_fedsgd_one_client_full_batch_equals_central_sgd_step(task):
    cid = task.client_ids()[0]
    model = task.build_model()
    w0 = _state(model)
    # Federated: the client's gradient, then one server SGD step
    upd = cu.fedsgd_client_update(model, w0, [_full_batch(task, cid)], cid)
    fed = FedConfig(server_optimizer="sgd", server_lr=0.3, server_momentum=0.0)
    weights = dict(w0)
    aggregation.ServerOptimizer(weights, cu.trainable_names(model), fed).step(weights, aggregation.aggregate([upd]))
    # Central: one SGD step on the same data with the mean loss
    central = task.build_model()
    central.load_state_dict(w0)
    opt = torch.optim.SGD(central.parameters(), lr=0.3)
    central.loss(_full_batch(task, cid))[0].backward()
    opt.step()
    for k, v in central.state_dict().items():
        torch.testing.assert_close(weights[k], v, rtol=1e-6, atol=1e-7)
    assert upd.num_examples == task.num_examples(cid)


@pytest.mark.parametrize("micro_batch", [1, 3, 7, 1000], ids=lambda b: f"micro{b}")
def test_microbatch_accumulation_equals_full_batch_gradient(task, micro_batch):
    cid = task.client_ids()[1]
    model = task.build_model()
    w0 = _state(model)
    full = cu.fedsgd_client_update(model, w0, [_full_batch(task, cid)], cid)
    micro = cu.fedsgd_client_update(model, w0, task.client_batches(cid, micro_batch, seed=5), cid)
    assert micro.num_examples == full.num_examples
    assert micro.metrics["loss"] == pytest.approx(full.metrics["loss"], rel=1e-5)
    for k in full.arrays:
        torch.testing.assert_close(micro.arrays[k], full.arrays[k], rtol=1e-5, atol=1e-6)


def test_fedsgd_leaves_client_weights_unchanged(task):
    cid = task.client_ids()[2]
    model = task.build_model()
    w0 = _state(model)
    cu.fedsgd_client_update(model, w0, task.client_batches(cid, 4, seed=0), cid)
    for k, v in model.state_dict().items():
        assert torch.equal(v, w0[k])
    assert all(p.grad is None for p in model.parameters())


def test_fedavg_client_update_one_sgd_step_is_minus_lr_times_gradient(task):
    cid = task.client_ids()[3]
    model = task.build_model()
    w0 = _state(model)
    batch = _full_batch(task, cid)
    g = cu.fedsgd_client_update(model, w0, [batch], cid)
    d = cu.fedavg_client_update(model, w0, [batch], FedConfig(strategy="fedavg", client_lr=0.1), cid)
    assert d.kind == "delta" and d.num_examples == g.num_examples
    for k in g.arrays:
        torch.testing.assert_close(d.arrays[k], -0.1 * g.arrays[k], rtol=1e-5, atol=1e-7)


def test_fedavg_weighting_by_examples_hand_computed():
    a = Update({"w": torch.tensor([1.0, 2.0])}, num_examples=1)
    b = Update({"w": torch.tensor([5.0, -2.0])}, num_examples=3)
    out = aggregation.aggregate([a, b])
    torch.testing.assert_close(out["w"], torch.tensor([(1 * 1 + 3 * 5) / 4, (1 * 2 + 3 * -2) / 4]))
    # the weight hook (WCA later): explicit weights replace n_i
    out = aggregation.aggregate([a, b], weights=[1.0, 1.0])
    torch.testing.assert_close(out["w"], torch.tensor([3.0, 0.0]))


def test_fedavg_server_step_with_lr_one_adds_the_mean_delta():
    w = {"w": torch.tensor([1.0, 1.0])}
    opt = aggregation.ServerOptimizer(w, ["w"], FedConfig(strategy="fedavg", server_lr=1.0))
    delta = aggregation.aggregate([Update({"w": torch.tensor([0.5, 0.0])}, 1), Update({"w": torch.tensor([0.0, 1.0])}, 1)])
    opt.step(w, {k: -v for k, v in delta.items()})
    torch.testing.assert_close(w["w"], torch.tensor([1.25, 1.5]))


def test_partial_updates_average_each_variable_over_its_contributors():
    a = Update({"enc": torch.tensor([2.0]), "dec": torch.tensor([10.0])}, num_examples=2)
    b = Update({"enc": torch.tensor([4.0])}, num_examples=6)  # trained the encoder only
    out = aggregation.aggregate([a, b])
    torch.testing.assert_close(out["enc"], torch.tensor([(2 * 2 + 6 * 4) / 8]))
    torch.testing.assert_close(out["dec"], torch.tensor([10.0]))  # not diluted by b
    # the server optimizer leaves variables without a pseudo-gradient untouched
    w = {"enc": torch.zeros(1), "dec": torch.zeros(1), "frozen": torch.ones(1)}
    aggregation.ServerOptimizer(w, ["enc", "dec", "frozen"], FedConfig(server_lr=1.0)).step(w, {"enc": torch.ones(1)})
    assert w["enc"].item() == -1.0 and w["dec"].item() == 0.0 and w["frozen"].item() == 1.0


def test_aggregate_rejects_bad_weights():
    u = Update({"w": torch.ones(1)}, 1)
    with pytest.raises(ValueError, match="nothing to aggregate"):
        aggregation.aggregate([])
    with pytest.raises(ValueError, match=">= 0"):
        aggregation.aggregate([u], weights=[-1.0])
    with pytest.raises(ValueError, match="sum to 0"):
        aggregation.aggregate([u], weights=[0.0])


SHAPES = {"a": (2, 3), "b": (3,)}


@pytest.mark.parametrize("arrays, n, required, reason", [
    ({"a": torch.zeros(2, 3), "b": torch.zeros(3)}, 4, None, None),
    ({"a": torch.zeros(2, 3)}, 4, None, None),  # a partial update is fine when allowed
    ({"a": torch.zeros(2, 3)}, 4, ["a", "b"], "missing-variables:1"),
    ({"a": torch.zeros(3, 2)}, 4, None, "shape-mismatch:a"),
    ({"a": torch.zeros(2, 3), "zz": torch.zeros(1)}, 4, None, "unknown-variable:zz"),
    ({"a": torch.full((2, 3), math.nan)}, 4, None, "non-finite:a"),
    ({"b": torch.tensor([0.0, math.inf, 0.0])}, 4, None, "non-finite:b"),
    ({"a": torch.zeros(2, 3)}, 0, None, "no-examples"),
    ({}, 4, None, "empty"),
], ids=["ok", "partial-ok", "missing", "shape", "unknown", "nan", "inf", "no-examples", "empty"])
def test_validate_update_names_the_reason(arrays, n, required, reason):
    assert aggregation.validate_update(Update(arrays, n), SHAPES, required) == reason


def test_sampling_is_seeded_and_reproducible():
    ids = [f"c{i:03d}" for i in range(500)]
    s1 = seeding.sample_clients(ids, 10, seed=7, server_round=3)
    assert s1 == seeding.sample_clients(list(reversed(ids)), 10, seed=7, server_round=3)  # order-independent
    assert len(set(s1)) == 10 and set(s1) <= set(ids)
    assert s1 != seeding.sample_clients(ids, 10, seed=7, server_round=4)
    assert s1 != seeding.sample_clients(ids, 10, seed=8, server_round=3)
    assert sorted(seeding.sample_clients(ids[:3], 10, seed=0, server_round=1)) == ids[:3]  # K > N: everyone
    # per-client seeds: stable, and distinct across clients and rounds
    assert seeding.derive_seed("client", 7, 3, "c001") == seeding.derive_seed("client", 7, 3, "c001")
    assert len({seeding.derive_seed("client", 7, r, c) for r in range(3) for c in ids[:50]}) == 150


def test_server_adam_state_round_trips_through_state_dict():
    fed = FedConfig(server_optimizer="adam", server_lr=0.1)
    w1 = {"w": torch.tensor([1.0, -1.0])}
    opt1 = aggregation.ServerOptimizer(w1, ["w"], fed)
    for g in ([1.0, 2.0], [0.5, -1.0]):
        opt1.step(w1, {"w": torch.tensor(g)})
    w2 = {"w": w1["w"].clone()}
    opt2 = aggregation.ServerOptimizer(w2, ["w"], fed)
    opt2.load_state_dict(opt1.state_dict())
    opt1.step(w1, {"w": torch.tensor([3.0, 3.0])})
    opt2.step(w2, {"w": torch.tensor([3.0, 3.0])})
    assert torch.equal(w1["w"], w2["w"])
    fresh = {"w": w2["w"].clone()}
    aggregation.ServerOptimizer(fresh, ["w"], fed).step(fresh, {"w": torch.tensor([3.0, 3.0])})
    assert not torch.equal(fresh["w"], w2["w"])  # the state matters, so the round trip is tested


def test_checkpoint_round_trip(tmp_path):
    w = {"w": torch.arange(3.0)}
    opt = aggregation.ServerOptimizer(w, ["w"], FedConfig(server_momentum=0.9))
    opt.step(w, {"w": torch.ones(3)})
    rng = seeding.capture_rng_state()
    path = checkpoint.save_checkpoint(tmp_path / "c" / "server.pt", w, opt.state_dict(), 4, rng, FederatedConfig())
    ck = checkpoint.load_checkpoint(path)
    assert ck["round"] == 4 and torch.equal(ck["weights"]["w"], w["w"])
    assert ck["config"]["fed"]["strategy"] == "fedsgd"
    a = torch.rand(3)
    seeding.restore_rng_state(ck["rng"])
    assert torch.equal(torch.rand(3), a)


def test_payload_bytes_is_numel_times_itemsize():
    import numpy as np

    arrays = {"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.float16), "c": np.zeros(7, dtype=np.int8)}
    assert transport.payload_bytes(arrays) == 3 * 4 * 4 + 5 * 2 + 7


def test_unknown_config_keys_fail_with_their_name():
    with pytest.raises(ConfigError, match="unknown config key 'fed.num-round'"):
        config.from_dict(FederatedConfig, {"fed": {"num-round": 3}})
    with pytest.raises(ConfigError, match="fed.clients-per-rnd"):
        fedconfig.config_from_run_config({"fed.clients-per-rnd": 2})
    with pytest.raises(ConfigError, match="task.params.hiden"):
        make_toy_task({"hiden": 3})
    with pytest.raises(ConfigError, match="expected an integer"):
        fedconfig.config_from_run_config({"fed.num-rounds": "three"})


def test_run_config_parses_nested_keys_and_routes_other_tables_to_the_task():
    cfg = fedconfig.config_from_run_config({"fed.num-rounds": 7, "fed.strategy": "fedavg", "task.name": "toy",
                                       "task.params": '{"num-clients": 9}', "model.preset": "tiny"})
    assert cfg.fed.num_rounds == 7 and cfg.fed.strategy == "fedavg"
    assert cfg.task.params == {"num-clients": 9, "model": {"preset": "tiny"}}
    assert fedconfig.fed_from_flat(fedconfig.fed_to_flat(cfg.fed)) == cfg.fed


def test_task_registry(task):
    assert isinstance(task, task_lib.FederatedTask)
    t = task_lib.make_task(fedconfig.TaskSpec("fedasr.federated.toy:make_toy_task", {"num-clients": 3}))
    assert len(t.client_ids()) == 3
    with pytest.raises(ValueError, match="unknown task"):
        task_lib.make_task(fedconfig.TaskSpec("nope"))


def test_client_update_is_deterministic_given_the_client_seed(task):
    model = task.build_model()
    model.net.insert(0, torch.nn.Dropout(0.5))  # randomness inside the update
    w0, cid, fed = _state(model), task.client_ids()[4], FedConfig(micro_batch=4)
    a = cu.client_update(task, model, cid, w0, fed, client_seed=11)
    torch.manual_seed(123)  # the caller's RNG state does not matter...
    b = cu.client_update(task, model, cid, w0, fed, client_seed=11)
    c = cu.client_update(task, model, cid, w0, fed, client_seed=12)
    k = "net.1.weight"
    assert torch.equal(a.arrays[k], b.arrays[k]) and not torch.equal(a.arrays[k], c.arrays[k])
    state = torch.get_rng_state()
    cu.client_update(task, model, cid, w0, fed, client_seed=11)
    assert torch.equal(torch.get_rng_state(), state)  # ...and is left untouched


class _CountingTask(ToyTask):
    """The toy task counting its evaluations and naming what they depend on."""

    calls = 0

    def eval_identity(self):
        return "toy-eval"

    def evaluate(self, model):
        type(self).calls += 1
        return super().evaluate(model)


def test_round_zero_evaluation_is_computed_once_per_initial_weights():
    from fedasr.federated.server_app import initial_evaluation

    task = _CountingTask(ToyConfig(num_clients=3))
    model = task.build_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = initial_evaluation(task, model, state)
    assert initial_evaluation(task, task.build_model(), state) == first and _CountingTask.calls == 1
    other = {k: v + 0.01 for k, v in state.items()}  # other weights: evaluated, and (the toy is seeded) differently
    assert initial_evaluation(task, model, other) != first and _CountingTask.calls == 2
