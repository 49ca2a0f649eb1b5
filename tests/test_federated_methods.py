"""Client- and server-side methods in the real Flower path: OMC, the budget policy, Mixed FL.

``fed.omc``: the server sends the global weights in the clients' OMC storage format, the ClientApp
adopts the codes as its weights (`omc.load_payload`) and computes its update on the dequantized-on-use
model; ``fed.partial.policy = "budget"``: each client picks its trainable set from its own round shape
and memory budget; ``fed.central-mix``: the server mixes an update on its own proxy data into the step.
"""

import dataclasses

import pytest
import torch

from fedasr import asr_task, compression, config, omc
from fedasr.federated import aggregation, client_app
from fedasr.federated import client_update as cu
from fedasr.federated import config as fedconfig
from fedasr.federated import task as task_lib
from fedasr.federated.config import FedConfig
from fedasr.federated.toy import ToyConfig, ToyTask
from fedasr.federated.transport import DOWNLOAD_META
from fedasr.omc import OMCConfig
from fedasr.partial import PartialConfig
from tests.test_federated_transport import _cfg, _rows, _run, _sent_bytes, _weights


@pytest.fixture(autouse=True)
def _fresh_runtimes():
    client_app._RUNTIMES.clear()  # each test builds its own (OMC-converted or plain) client model
    yield
    client_app._RUNTIMES.clear()


@pytest.mark.parametrize("bits", [8, 4])
def test_omc_fedsgd_sends_codes_and_clients_train_on_the_dequantized_weights(tmp_path, bits):
    cfg = _cfg(tmp_path, num_rounds=2, omc={"bits": bits}, server_optimizer="adam", server_lr=1e-2)
    run, rec = _run(cfg)
    rows = _rows(run)
    assert [rows[r]["status"] for r in (1, 2)] == ["ok", "ok"]
    task = task_lib.make_task(cfg.task)
    plain = task.build_model()
    fp32 = sum(v.numel() * v.element_size() for v in plain.state_dict().values())
    for rnd in (1, 2):
        msgs = [m for m, _ in rec.pairs if int(m.content["config"]["server-round"]) == rnd]
        sent = sum(_sent_bytes(m.content["arrays"], str(m.content["config"][DOWNLOAD_META])) for m in msgs)
        assert rows[rnd]["bytes_down"] == sent
    assert rows[1]["bytes_down"] < 3 * fp32 * (bits / 32 + 0.1)  # matrices at `bits`, vectors fp32
    # the client's model stores codes: its weight matrices are NaN anchors, never fp32 copies
    (_, model), = client_app._RUNTIMES.values()
    assert omc.is_omc(model) and all(omc.storage_bytes(model)[k] > 0 for k in ("quantized", "fp32"))
    # exactness: a client's gradient equals a plain model's gradient at the dequantized download
    msg, reply = rec.pairs[0]
    conf = msg.content["config"]
    payload = compression.from_arrays({k: v.numpy() for k, v in msg.content["arrays"].items()},
                                      str(conf[DOWNLOAD_META]))
    assert {e.bits for k, e in payload.items() if e.scale is not None} == {bits}
    fed = fedconfig.fed_from_flat(conf)
    ref = cu.client_update(task, plain, str(conf["client-id"]), compression.decompress(payload),
                             dataclasses.replace(fed, omc=OMCConfig(bits=0)), int(conf["client-seed"]), 1)
    got = reply.content["arrays"].to_torch_state_dict()
    assert set(got) == set(ref.arrays)
    for k in got:
        torch.testing.assert_close(got[k], ref.arrays[k], rtol=1e-5, atol=1e-7)
    assert all(torch.isfinite(v).all() for v in _weights(run).values())


def test_omc_fedavg_requantizes_local_sgd_steps(tmp_path):
    cfg = _cfg(tmp_path, num_rounds=2, strategy="fedavg", client_optimizer="sgd", client_lr=0.1, local_epochs=2,
               omc={"bits": 8, "rounding": "stochastic"})
    run, rec = _run(cfg)
    assert all(r["status"] == "ok" for r in run.rounds())
    init = task_lib.make_task(cfg.task).build_model().state_dict()
    final = _weights(run)
    assert not torch.equal(final["net.0.weight"], init["net.0.weight"])
    # a delta is a difference of two points of the 8-bit grid plus fp32 vectors: finite, and nonzero
    deltas = rec.pairs[0][1].content["arrays"].to_torch_state_dict()
    assert all(torch.isfinite(d).all() for d in deltas.values()) and deltas["net.0.weight"].abs().sum() > 0


@pytest.mark.parametrize("table,match", [
    ({"omc": {"bits": 3}}, r"fed.omc.bits: 3 .* accepted values: \[0, 2, 4, 8, 16\]"),
    ({"omc": {"bits": 8}, "transport": {"download": {"name": "fp16"}}}, "transport.download.name must be 'none'"),
    ({"omc": {"bits": 8}, "strategy": "fedavg", "client-optimizer": "adam"}, "client-optimizer must be 'sgd'"),
    ({"omc": {"bits": 8, "transform": "per_tensor"}}, "fed.omc.transform: 'per_tensor'"),
    ({"omc": {"transform": "per_tensor"}}, "fed.omc.transform"),  # checked even while OMC is off
    ({"omc": {"bits": 8, "rounding": "up"}}, "fed.omc.rounding"),
    ({"omc": {"fp32-fraction": 1.5}}, "fp32_fraction must be in"),
    ({"central-mix": 1.5}, "central-mix"),
    ({"partial": {"policy": "budget", "budget-mib": -1}}, "budget_mib must be >= 0"),
])
def test_bad_omc_and_budget_settings_are_named(table, match):
    with pytest.raises(config.ConfigError, match=match):
        config.from_dict(FedConfig, table, prefix="fed")


def test_budget_policy_without_round_shape_declines_with_the_reason(tmp_path):
    cfg = _cfg(tmp_path, num_rounds=1, partial={"policy": "budget", "budget_mib": 64})
    run, _ = _run(cfg)
    r1 = _rows(run)[1]
    assert r1["status"] == "skipped" and r1["num_failed"] == 3
    assert all("round shape" in v for v in r1["failed"].values())


def _asr_task(fake_corpus, fake_seed):
    return asr_task.make_asr_task({"corpus": str(fake_corpus), "seed_model": str(fake_seed / "model"),
                                   "labels": "truth", "eval_splits": ["user_test"]})


def test_budget_policy_on_the_device_fits_the_budget_and_shrinks_with_it(fake_corpus, fake_seed):
    from fedasr import memory, partial

    task = _asr_task(fake_corpus, fake_seed)
    model = task.build_model()
    cid = task.client_ids()[0]
    shape = task.round_shape(cid, 2)
    assert shape.batch <= 2 and shape.frames > 0 and shape.tokens > 0
    full = memory.estimate(model, shape, trainable=[n for n, _ in model.named_parameters()])["peak"]
    head_only = memory.estimate(model, shape, trainable=partial.top_k_names(model, 0))["peak"]
    assert head_only < full
    sizes = {}
    for budget in (full * 2, (full + head_only) / 2, head_only * 1.0001):
        fed = FedConfig(partial=PartialConfig(policy="budget", budget_mib=budget / 2**20), micro_batch=2)
        names, metrics = cu.partial_selection(model, fed, 1, cid, task)
        assert metrics["estimate-bytes"] <= metrics["budget-bytes"]
        sizes[budget] = sum(p.numel() for n, p in model.named_parameters() if n in names)
    a, b, c = sizes.values()
    assert a >= b >= c and a > c  # a smaller budget never trains more
    # the device tier's budget when no explicit one is set (the tiny model fits every tier)
    names, metrics = cu.partial_selection(model, FedConfig(partial=PartialConfig(policy="budget"), micro_batch=2), 1, cid,
                                         task)
    assert metrics["budget-bytes"] == task.memory_budget_bytes(cid) and len(names) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="nothing trainable fits"):
        cu.partial_selection(model, FedConfig(partial=PartialConfig(policy="budget", budget_mib=head_only / 2**21),
                                              micro_batch=2), 1, cid, task)


def test_asr_client_update_with_omc_and_budget(fake_corpus, fake_seed):
    """OMC and the budget policy compose in one ASR client update: a budget between the head-only and the
    full round's analytic peak trains a strict subset, and exactly that subset travels, finite."""
    from fedasr import memory, partial

    task = _asr_task(fake_corpus, fake_seed)
    model = task.build_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cid = task.client_ids()[0]
    shape = dataclasses.replace(task.round_shape(cid, 2), optimizer="none", delta_copy=False)  # FedSGD's round
    everything = [n for n, _ in model.named_parameters()]
    omc_cfg = OMCConfig(bits=8)
    omc.apply_omc(model, omc_cfg)
    full = memory.estimate(model, shape, trainable=everything)["peak"]
    head_only = memory.estimate(model, shape, trainable=partial.top_k_names(model, 0))["peak"]
    budget_mib = (full + head_only) / 2 / 2**20
    fed = FedConfig(omc=omc_cfg, partial=PartialConfig(policy="budget", budget_mib=budget_mib), micro_batch=2)
    up = cu.client_update(task, model, cid, state, fed, client_seed=3, server_round=1)
    assert up.metrics["budget-bytes"] == int(budget_mib * 2**20)
    assert up.metrics["estimate-bytes"] <= up.metrics["budget-bytes"]
    expected, _ = cu.partial_selection(model, fed, 1, cid, task)
    assert set(up.arrays) == set(expected) and 0 < len(expected) < len(everything)  # a strict subset travels
    assert up.metrics["trained-params"] == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert all(torch.isfinite(v).all() for v in up.arrays.values())  # never the NaN anchors


# --- Mixed FL: the server's own proxy-data update mixed into the step (fed.central-mix) ---------------------


def test_mix_central_is_the_convex_combination_on_the_clients_variables():
    agg = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([4.0])}
    central = {"a": torch.tensor([3.0, -2.0]), "b": torch.tensor([0.0]), "c": torch.tensor([9.0])}
    out = aggregation.mix_central(agg, central, 0.25)
    assert set(out) == {"a", "b"}  # variables no client trained are not touched
    torch.testing.assert_close(out["a"], torch.tensor([1.5, 1.0]))
    torch.testing.assert_close(out["b"], torch.tensor([3.0]))
    with pytest.raises(ValueError, match="lacks 'b'"):
        aggregation.mix_central(agg, {"a": central["a"]}, 0.5)


def test_mix_central_at_alpha_one_is_the_central_update_whatever_the_clients_sent():
    """Why configs/quality/quick.toml's `central_only` control samples 2 clients, not 8: at α = 1 the clients'
    aggregate is multiplied by 0, so any finite aggregate gives the central update's values exactly."""
    g = torch.Generator().manual_seed(0)
    central = {"a": torch.randn(64, generator=g)}
    for scale in (1e-3, 1.0, 1e6):
        out = aggregation.mix_central({"a": scale * torch.randn(64, generator=g)}, central, 1.0)
        assert torch.equal(out["a"], central["a"])


class CentralToyTask(ToyTask):
    """The toy task with server-side data: client toy0007's examples stand in for the proxy set."""

    def central_batches(self, micro_batch, seed, n):
        return self.client_batches("toy0007", micro_batch, seed)


def central_toy_task():
    return CentralToyTask(ToyConfig(num_clients=8))


def test_central_only_control_steps_on_the_server_gradient(tmp_path):
    """α = 1: the server step is exactly plain SGD on the central gradient at the global weights."""
    cfg = _cfg(tmp_path, num_rounds=1, central_mix=1.0, server_lr=0.5)
    run, _ = _run(cfg, central_toy_task)
    r1 = _rows(run)[1]
    assert r1["status"] == "ok" and r1["central"]["status"] == "ok"
    task = central_toy_task()
    model = task.build_model()
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    g = cu.fedsgd_client_update(model, w0, task.central_batches(cfg.fed.micro_batch, 0, 64), "central").arrays
    final = _weights(run)
    for k in g:
        torch.testing.assert_close(final[k], w0[k] - 0.5 * g[k], rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(300)
def test_central_update_computed_while_the_clients_train_gives_the_same_weights(tmp_path):
    """run.overlap-central: the prefetched central update (Simulation Engine: clients in Ray workers) reaches the
    weights of computing it after the clients, bitwise, on the same thread count."""
    from fedasr.federated import launch
    from fedasr.federated.ray_session import shared_ray

    runs = {}
    with shared_ray(2):
        for overlap in (True, False):
            cfg = _cfg(tmp_path, f"overlap-{overlap}", num_rounds=3, central_mix=0.5)
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, overlap_central=overlap, server_threads=1))
            runs[overlap] = launch.run_simulation(cfg, central_toy_task)
    a, b = _weights(runs[True]), _weights(runs[False])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(r["central"]["status"] == "ok" for k, r in _rows(runs[True]).items() if k > 0)


def test_a_task_without_server_data_keeps_the_clients_round(tmp_path):
    mixed = _cfg(tmp_path, "mixed", num_rounds=1, central_mix=0.5)
    plain = _cfg(tmp_path, "plain", num_rounds=1)
    run_m, _ = _run(mixed)
    run_p, _ = _run(plain)
    r1 = _rows(run_m)[1]
    assert r1["status"] == "ok" and r1["central"]["status"] == "failed" and "central_batches" in r1["central"]["reason"]
    a, b = _weights(run_m), _weights(run_p)
    assert all(torch.equal(a[k], b[k]) for k in a)  # nothing lost: the clients' aggregate alone was applied


def test_asr_central_batches_draw_the_servers_proxy_split(fake_corpus, fake_seed):
    task = _asr_task(fake_corpus, fake_seed)
    batches = task.central_batches(micro_batch=4, seed=1, n=6)
    ids = [i for b in batches for i in b.ids]
    assert len(ids) == 6 and all(i.startswith("proxy_train") for i in ids)
    assert ids == [i for b in task.central_batches(4, 1, 6) for i in b.ids]  # seeded
    assert ids != [i for b in task.central_batches(4, 2, 6) for i in b.ids]
