"""Reliability (issue 21): injected client faults and their exclusion, the norm bound, a server killed with SIGKILL
and resumed, and the summary assembler."""

import json
import time
import zlib
from collections import Counter

import pytest
import torch

from fedasr import config, reliability
from fedasr.clients import DEVICE_TIERS
from fedasr.federated import faults
from fedasr.federated.aggregation import norm_outliers, validate_update
from fedasr.federated.client_app import make_client_app
from fedasr.federated.client_update import Update
from fedasr.federated.config import FedConfig, FederatedConfig, RunSpec, TaskSpec
from fedasr.federated.loopback import LoopbackGrid
from fedasr.federated.server_app import run_server

MIX = dict(crash=0.1, straggler=0.05, nan=0.05, inf=0.05, shape=0.05, norm=0.05)


def test_faults_are_drawn_per_round_and_client_at_the_configured_rates():
    cfg = faults.FaultConfig(**MIX)
    draws = [faults.draw_fault(cfg, 0, r, f"c{i:04d}") for r in range(1, 201) for i in range(100)]
    assert draws == [faults.draw_fault(cfg, 0, r, f"c{i:04d}") for r in range(1, 201) for i in range(100)]
    n, counts = len(draws), Counter(draws)
    for kind, p in MIX.items():
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(counts[kind] / n - p) < 5 * sd, (kind, counts[kind] / n)
    assert counts[None] / n == pytest.approx(0.65, abs=0.02)
    # another seed draws other faults; faults off draws none
    assert draws != [faults.draw_fault(cfg, 1, r, f"c{i:04d}") for r in range(1, 201) for i in range(100)]
    assert faults.draw_fault(faults.FaultConfig(), 0, 1, "c0001") is None


def test_stragglers_follow_the_device_tiers_speed():
    factors = {}
    for i in range(400):
        cid = f"c{i:04d}"
        factors.setdefault(round(faults.tier_factor(cid), 6), cid)
    assert len(factors) == len(DEVICE_TIERS)  # one factor per tier, slowest tier straggles most
    slow, fast = max(factors), min(factors)
    assert slow / fast == pytest.approx(max(t.speed for t in DEVICE_TIERS) / min(t.speed for t in DEVICE_TIERS))
    cfg = faults.FaultConfig(straggler=0.3)
    rate = {f: sum(faults.draw_fault(cfg, 0, r, factors[f]) == "straggler" for r in range(2000)) / 2000
            for f in (slow, fast)}
    assert rate[slow] == pytest.approx(0.3 * slow, abs=0.04) and rate[fast] == pytest.approx(0.3 * fast, abs=0.04)


@pytest.mark.parametrize("bad", [dict(crash=1.5), dict(nan=-0.1), dict(crash=0.6, shape=0.5), dict(straggler=0.7),
                                 dict(norm_scale=0.0), dict(max_norm_ratio=-1.0)])
def test_fault_config_rejects_impossible_settings(bad):
    keys = {k.replace("_", "-"): v for k, v in bad.items()}
    with pytest.raises(config.ConfigError):
        config.from_dict(FedConfig, {"faults": keys}, prefix="fed")


def _update(cid, scale=1.0, keys=("a", "b")):
    g = torch.Generator().manual_seed(zlib.crc32(cid.encode()))
    return Update({k: torch.randn(4, 3, generator=g) * scale for k in keys}, 5, {"loss": 1.0}, cid, "gradient")


def test_corrupted_updates_fail_the_servers_checks():
    shapes = {"a": (4, 3), "b": (4, 3)}
    cfg = faults.FaultConfig()
    u = _update("c1")
    assert validate_update(faults.corrupt_update("nan", u, cfg), shapes).startswith("non-finite:")
    assert validate_update(faults.corrupt_update("inf", u, cfg), shapes).startswith("non-finite:")
    assert validate_update(faults.corrupt_update("shape", u, cfg), shapes).startswith("shape-mismatch:")
    big = faults.corrupt_update("norm", u, cfg)
    assert validate_update(big, shapes) is None  # finite and well-shaped: only the norm bound catches it
    ups = [_update(f"c{i}") for i in range(4)] + [dataclass_replace(big, client_id="c9")]
    assert set(norm_outliers(ups, 100.0)) == {"c9"} and norm_outliers(ups, 100.0)["c9"].startswith("norm-outlier")
    assert torch.equal(u.arrays["a"], _update("c1").arrays["a"])  # the original is untouched


def dataclass_replace(u, **kw):
    import dataclasses
    return dataclasses.replace(u, **kw)


def test_norm_bound_needs_three_comparable_updates():
    honest = [_update(f"c{i}") for i in range(3)]
    assert norm_outliers(honest, 100.0) == {}
    assert norm_outliers(honest[:1] + [_update("x", 1e6)], 100.0) == {}  # 2 updates: which one is absurd?
    assert norm_outliers(honest + [_update("x", 1e6)], 0.0) == {}  # off
    assert set(norm_outliers(honest + [_update("x", 1e3)], 100.0)) == {"x"}
    assert norm_outliers(honest + [_update("x", 50.0)], 100.0) == {}  # within the bound
    partial = honest + [_update("x", 1e6, keys=("a",))]  # partial updates: norms over other variables
    assert norm_outliers(partial, 100.0) == {}
    # four of eight absurd: the lower median is still an honest norm
    assert len(norm_outliers(honest + [_update("y")] + [_update(f"x{i}", 1e6) for i in range(4)], 100.0)) == 4


def test_run_with_fault_crashes_delays_or_corrupts_the_real_update():
    cfg = faults.FaultConfig(straggler_margin_s=0.05)
    with pytest.raises(faults.InjectedFault):
        faults.run_with_fault("crash", cfg, 1.0, "c1", lambda: pytest.fail("a crashed client must not train"))
    t0 = time.monotonic()
    u = faults.run_with_fault("straggler", cfg, 0.2, "c1", lambda: _update("c1"))
    assert time.monotonic() - t0 >= 0.25 and torch.equal(u.arrays["a"], _update("c1").arrays["a"])
    assert faults.run_with_fault(None, cfg, 1.0, "c1", lambda: _update("c1")).arrays["b"].isfinite().all()


def test_injected_faults_are_all_excluded_with_their_reasons(tmp_path):
    mix = {"crash": 0.15, "nan": 0.1, "inf": 0.1, "shape": 0.1, "norm": 0.15}
    fed = config.from_dict(FedConfig, {"num-rounds": 3, "clients-per-round": 10, "faults": mix}, prefix="fed")
    cfg = FederatedConfig(fed=fed, task=TaskSpec("toy", {"num-clients": 12}),
                          run=RunSpec(experiment="t", run_id="faulty", results_root=str(tmp_path), progress=False))
    run = run_server(LoopbackGrid(make_client_app(cfg)), cfg)
    acc = reliability.fault_accounting(run.rounds(), fed.faults, fed.seed)
    assert acc["client_rounds"] == 30 and acc["faulty"] >= 5
    assert acc["undetected"] == 0 and acc["honest_excluded"] == 0
    expected = {"crash": "error: InjectedFault", "nan": "non-finite", "inf": "non-finite",
                "shape": "shape-mismatch", "norm": "norm-outlier"}
    for kind, reasons in acc["excluded_as"].items():
        assert set(reasons) == {expected[kind]}, (kind, reasons)
    assert sum(acc["fault_kinds"].values()) == sum(sum(r.values()) for r in acc["excluded_as"].values())
    s = run.summary()
    assert s["rounds_completed"] == 3 and s["clients_failed"] == acc["faulty"]
    final = torch.load(run.path / "checkpoints" / "server.pt", weights_only=False)["weights"]
    assert all(torch.isfinite(v).all() for v in final.values())


def test_server_killed_with_sigkill_resumes_to_bitwise_equal_weights(tmp_path):
    out = reliability.crash_resume(kill_after=2, rounds=4, delay_s=0.3, workdir=tmp_path)
    assert out["killed_returncode"] == -9 and 2 <= out["killed_at_round"] < 4
    assert out["resumed_after_round"] <= out["killed_at_round"]
    assert out["bitwise_equal"] is True
    rows = [json.loads(x) for x in (tmp_path / "crash" / "victim" / "rounds.jsonl").read_text().splitlines()]
    assert max(r["round"] for r in rows) == 4


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_assemble_merges_the_parts_into_the_contract(tmp_path):
    _write(tmp_path / "parts" / "faults.json", {"faulty_fraction": 0.3, "wer_clean": 0.5, "wer_faulty": 0.51,
                                                 "completed": True, "rounds": 20})
    _write(tmp_path / "parts" / "resume.json", {"killed_at_round": 3, "bitwise_equal": True})
    _write(tmp_path / "parts" / "dp.json", [{"epsilon": 8.0, "delta": 1e-5, "noise_multiplier": 1.1, "clip": 1.0,
                                             "wer_user": 0.6}])
    summary = reliability.cli_main(["assemble", "--root", str(tmp_path)])
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert summary == on_disk
    assert sorted(on_disk) == sorted(["faults", "resume", "fuzz", "deployment", "dp", "secagg", "privacy"])
    assert on_disk["faults"]["wer_faulty"] == 0.51 and on_disk["dp"][0]["epsilon"] == 8.0
    assert on_disk["fuzz"] is None and on_disk["privacy"] is None
    notes = json.loads((tmp_path / "assembly.json").read_text())
    assert set(notes["missing"]) == {"fuzz", "deployment", "secagg", "privacy"} and "faults" in notes["sha256"]


@pytest.mark.parametrize("part,value", [("resume", {"killed_at_round": 3}), ("dp", {"epsilon": 1.0}),
                                        ("dp", [{"epsilon": 1.0}]), ("fuzz", [1, 2])])
def test_assemble_rejects_a_part_that_breaks_the_contract(tmp_path, part, value):
    _write(tmp_path / "parts" / f"{part}.json", value)
    with pytest.raises(ValueError, match=part):
        reliability.assemble(tmp_path)
    assert not (tmp_path / "summary.json").exists()


def test_fault_curves_figure(tmp_path):
    rows = lambda w: [{"round": r, "eval": {"wer_user": w - 0.01 * r}} for r in (0, 5, 10)]  # noqa: E731
    out = reliability.plot_fault_curves([(rows(0.6), rows(0.62)), (rows(0.61), rows(0.6))], tmp_path / "f.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert reliability._wer_curve(rows(0.6)) == [(0, 0.6), (5, pytest.approx(0.55)), (10, pytest.approx(0.5))]


def test_stragglers_past_the_round_timeout_are_recorded_as_timeouts(tmp_path):
    fed = config.from_dict(FedConfig, {"num-rounds": 1, "clients-per-round": 6, "round-timeout-s": 1.0,
                                       "faults": {"straggler": 0.5, "straggler-margin-s": 0.05}}, prefix="fed")
    cfg = FederatedConfig(fed=fed, task=TaskSpec("toy", {"num-clients": 8}),
                          run=RunSpec(experiment="t", run_id="late", results_root=str(tmp_path), progress=False))
    run = run_server(LoopbackGrid(make_client_app(cfg), deadline=True), cfg)
    acc = reliability.fault_accounting(run.rounds(), fed.faults, fed.seed)
    assert acc["fault_kinds"].get("straggler", 0) >= 1 and acc["undetected"] == 0
    assert acc["excluded_as"]["straggler"] == {"timeout": acc["fault_kinds"]["straggler"]}
    assert acc["honest_excluded"] == 0


def test_faults_experiment_runs_every_seed_and_reports_means(tmp_path, monkeypatch):
    seen = []

    def fake_seed(exp, engine):
        seen.append((exp.fed.seed, exp.experiment, engine))
        k = exp.fed.seed
        curve = [{"round": 0, "eval": {"wer_user": 0.7}}, {"round": 20, "eval": {"wer_user": 0.5 + 0.01 * k}}]
        row = {"seed": k, "wer_initial": 0.7, "wer_clean": 0.5 + 0.01 * k, "wer_faulty": 0.52 + 0.01 * k,
               "completed": True, "faulty_fraction_realized": 0.3, "undetected": 0}
        row["wer_rel"] = row["wer_faulty"] / row["wer_clean"] - 1
        return row, (curve, curve)

    monkeypatch.setattr(reliability, "_faults_seed", fake_seed)
    part = reliability.faults_experiment("configs/reliability/faults.toml", tmp_path, seeds=(0, 1, 2))
    assert seen == [(k, f"faults/seed{k}", "simulation") for k in (0, 1, 2)]
    assert part["seeds"] == [0, 1, 2] and part["wer_clean"] == pytest.approx(0.51)
    assert part["wer_faulty"] == pytest.approx(0.53) and part["within_10pct"] and part["completed"]
    lo, hi = part["wer_rel_ci95"]
    assert lo < part["wer_rel"] < hi and all(k in part for k in reliability.CONTRACT["faults"])
    assert (tmp_path / "faults_wer.png").exists()
