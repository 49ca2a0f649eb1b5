"""The ledger of client rounds (`fedasr.ledger`): rows per sampled client, measured RSS, budget declines, ledger.json.

The toy task runs the real ServerApp loop and ClientApp on `InProcessGrid`; the budget check uses the ASR task on
the fake corpus (its analytic peak needs the ASR model), with one client's budget cut below any round's peak.
"""

import json
import sys

import pytest
import torch

from fedasr import asr_task, clients, config, ledger
from fedasr.federated import checkpoint, client_app
from fedasr.federated.client_app import make_client_app
from fedasr.federated.config import FedConfig, FederatedConfig, RunSpec, TaskSpec
from fedasr.federated.server_app import checkpoint_path, run_server
from tests.test_federated_flower import InProcessGrid, _cfg, _run

CONTRACT_TIER = {"name", "budget_bytes", "omc_bits", "trainable_fraction"}
CONTRACT_ROUND = {"round", "client", "tier", "peak_rss_bytes", "bytes_down", "bytes_up", "compute_s", "status"}
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is read from /proc (Linux)")


@pytest.fixture(autouse=True)
def _fresh_runtimes():
    client_app._RUNTIMES.clear()  # each test builds its own (OMC-converted or plain) client model
    yield
    client_app._RUNTIMES.clear()


def _rows(run):
    return {r["round"]: r for r in run.rounds()}


def test_every_sampled_client_has_a_ledger_row(tmp_path):
    def drop(msg, reply):  # toy0006's reply never arrives: a timeout
        return None if msg.content["config"]["client-id"] == "toy0006" else reply

    cfg = _cfg(tmp_path, num_rounds=2, clients_per_round=12, eval_every=0, params={"faults": {"toy0003": "raise"}})
    run, _ = _run(cfg, tamper=drop)
    toy = clients.Population.synthetic(12, prefix="toy")
    for rnd in (1, 2):
        r = _rows(run)[rnd]
        rows = {x["client"]: x for x in r["ledger"]}
        assert sorted(rows) == sorted(r["sampled"]) and all(set(x) == set(ledger.ROW_KEYS) for x in rows.values())
        assert rows["toy0003"]["status"] == "declined:RuntimeError" and rows["toy0006"]["status"] == "timeout"
        assert {x["status"] for c, x in rows.items() if c not in ("toy0003", "toy0006")} == {"ok"}
        # tier and budget: the client's device profile; bytes: per client, summing to the round's totals
        for cid, x in rows.items():
            assert (x["tier"], x["budget_bytes"]) == (toy.profile(cid).tier, toy.profile(cid).memory_budget_bytes)
            assert x["round"] == rnd
        assert sum(x["bytes_down"] for x in rows.values()) == r["bytes_down"]
        assert sum(x["bytes_up"] for x in rows.values()) == r["bytes_up"] and rows["toy0003"]["bytes_up"] == 0
        assert all(x["compute_s"] > 0 for x in rows.values() if x["status"] == "ok")
        assert rows["toy0003"]["peak_rss_bytes"] is None and rows["toy0003"]["compute_s"] is None


@linux_only
def test_the_peak_rss_is_measured_in_the_client_process(tmp_path):
    run, _ = _run(_cfg(tmp_path, num_rounds=1, clients_per_round=3, eval_every=0))
    for x in _rows(run)[1]["ledger"]:
        assert x["peak_rss_bytes"] > 0 and x["start_rss_bytes"] > 0 and isinstance(x["hwm_reset"], bool)
        if x["hwm_reset"]:  # reset at the round's start: the peak is the resident set then, or more (up to the
            assert x["peak_rss_bytes"] >= x["start_rss_bytes"] - (1 << 20)  # kernel's per-thread RSS batching)


@pytest.mark.parametrize("reason,code,status", [
    (None, None, "ok"),
    ("timeout", None, "timeout"),
    ("error: OverBudget: client declines round: analytic peak 9 bytes", 1, "declined:OverBudget"),
    ("error: RuntimeError: boom", 0, "failed:RuntimeError"),
    ("non-finite: 'net.0.weight' has NaN/Inf", None, "failed:non-finite"),
], ids=["ok", "timeout", "declined", "engine-error", "invalid-update"])
def test_row_status_names_the_kind(reason, code, status):
    assert ledger.row_status(reason, code) == status


class TightBudget(asr_task.ASRTask):
    """The ASR task with the first client's device budget cut to 1 KiB (no round fits it)."""

    def memory_budget_bytes(self, client_id):
        return 1024 if client_id == min(self.client_ids()) else super().memory_budget_bytes(client_id)


def _asr_cfg(tmp_path, fake_corpus, fake_seed, run_id, enforce):
    params = {"corpus": str(fake_corpus), "seed-model": str(fake_seed / "model"), "labels": "truth",
              "eval-splits": ["user_test"]}
    fed = config.from_dict(FedConfig, {"num-rounds": 1, "clients-per-round": 3, "micro-batch": 2, "eval-every": 0,
                                       "ledger": {"enforce-budget": enforce}}, prefix="fed")
    return FederatedConfig(fed=fed, task=TaskSpec("asr", params),
                           run=RunSpec(experiment="t", run_id=run_id, results_root=str(tmp_path), progress=False,
                                       overlap_central=False))


def tight_budget_factory(params):
    return lambda: TightBudget(config.from_dict(asr_task.ASRTaskConfig, params, prefix="task.params"))


def test_a_client_over_its_budget_declines_only_when_enforced(tmp_path, fake_corpus, fake_seed):
    runs = {}
    for enforce in (True, False):
        cfg = _asr_cfg(tmp_path, fake_corpus, fake_seed, f"enforce-{enforce}", enforce)
        factory = tight_budget_factory(cfg.task.params)
        runs[enforce] = run_server(InProcessGrid(make_client_app(cfg, factory)), cfg, factory)
    tight = min(tight_budget_factory(cfg.task.params)().client_ids())
    on, off = _rows(runs[True])[1], _rows(runs[False])[1]
    assert tight in on["sampled"]  # 3 clients in the fake corpus, all sampled
    reason = on["failed"][tight]
    assert "OverBudget" in reason and "analytic peak" in reason and "1024 bytes" in reason
    peak = int(reason.split("analytic peak ")[1].split(" bytes")[0])
    assert peak > 1024  # the reason names both numbers
    rows_on = {x["client"]: x for x in on["ledger"]}
    assert rows_on[tight]["status"] == "declined:OverBudget" and rows_on[tight]["budget_bytes"] == 1024
    assert rows_on[tight]["tier"] == "custom" and rows_on[tight]["bytes_up"] == 0
    assert {x["status"] for c, x in rows_on.items() if c != tight} == {"ok"}  # the others fit their tier's budget
    assert {x["tier"] for c, x in rows_on.items() if c != tight} <= {t.name for t in clients.DEVICE_TIERS}
    # off: the same client trains, and the ledger still records its (cut) budget
    assert off["failed"] == {} and {x["status"] for x in off["ledger"]} == {"ok"}


def test_enforcement_changes_nothing_when_every_client_fits(tmp_path, fake_corpus, fake_seed):
    """Off by default; on with budgets every round fits, the run reaches the same weights (the check only reads)."""
    assert FedConfig().ledger.enforce_budget is False
    weights = {}
    for enforce in (True, False):
        cfg = _asr_cfg(tmp_path, fake_corpus, fake_seed, f"fits-{enforce}", enforce)
        run = run_server(InProcessGrid(make_client_app(cfg)), cfg)
        assert _rows(run)[1]["failed"] == {}
        weights[enforce] = checkpoint.load_checkpoint(checkpoint_path(run.path))["weights"]
    assert all(torch.equal(weights[True][k], weights[False][k]) for k in weights[False])


def test_ledger_json_follows_the_contract_and_the_figure_is_written(tmp_path):
    cfg = _cfg(tmp_path, num_rounds=3, clients_per_round=4, eval_every=0, omc={"bits": 8},
               transport={"upload": {"name": "int8_sr"}})
    run, _ = _run(cfg)
    out, fig = tmp_path / "efficiency" / "ledger.json", tmp_path / "figures" / "ledger.png"
    ledger.main([str(run.path), "--out", str(out), "--figure", str(fig)])
    got = json.loads(out.read_text())
    assert set(got) >= {"tiers", "rounds"} and fig.stat().st_size > 0
    assert [t["name"] for t in got["tiers"]] == [t.name for t in clients.DEVICE_TIERS]
    for t in got["tiers"]:
        assert set(t) >= CONTRACT_TIER and t["omc_bits"] == 8 and t["trainable_fraction"] == 1.0
        assert t["budget_bytes"] == next(d.memory_budget_bytes for d in clients.DEVICE_TIERS if d.name == t["name"])
    assert len(got["rounds"]) == 3 * 4 and all(set(r) >= CONTRACT_ROUND for r in got["rounds"])
    assert sum(t["client_rounds"] for t in got["tiers"]) == 12
    rows = _rows(run)
    assert sum(r["bytes_up"] for r in got["rounds"]) == sum(rows[k]["bytes_up"] for k in (1, 2, 3))
    assert sum(r["bytes_down"] for r in got["rounds"]) == sum(rows[k]["bytes_down"] for k in (1, 2, 3))


def test_a_run_without_ledger_rows_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"config": {"fed": {}}}))
    (tmp_path / "rounds.jsonl").write_text(json.dumps({"round": 1, "status": "ok"}) + "\n")
    with pytest.raises(ValueError, match="no ledger rows"):
        ledger.build_ledger(tmp_path)
