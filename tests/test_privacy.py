"""User-level DP (`fedasr.federated.privacy`, ``[fed.dp]``): clipping as sent, noise, accounting, DP off = old path."""

import math

import numpy as np
import pytest
import torch

from fedasr import compression, config, refinement
from fedasr.federated import aggregation, client_app, privacy, transport
from fedasr.federated.client_update import Update
from fedasr.federated.config import DPConfig, FedConfig
from fedasr.seeding import derive_seed
from tests.test_federated_transport import _cfg, _rows, _run, _weights

SHAPES = {"a.weight": (64, 32), "a.bias": (64,), "b.weight": (16, 64)}


def _update(cid="c0", scale=3.0, keys=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    arrays = {k: scale * torch.randn(s, generator=g) for k, s in SHAPES.items() if keys is None or k in keys}
    return Update(arrays, 10, {"loss": 1.0}, cid, "gradient")


def _fed(**kw):
    return config.from_dict(FedConfig, kw, prefix="fed")


# --- clipping: what is sent, and what the server aggregates ----------------------------------------------------

@pytest.mark.parametrize("codec", sorted(compression.CODECS))
@pytest.mark.parametrize("partial", [False, True], ids=["all", "partial"])
def test_clipping_bounds_the_decoded_update_for_every_codec(codec, partial):
    clip = 0.5
    fed = _fed(dp={"enabled": True, "clip": clip}, transport={"upload": {"name": codec}})
    up = _update(keys={"a.weight", "b.weight"} if partial else None)
    assert privacy.update_norm(up.arrays) > 10 * clip
    sent = privacy.clip_for_upload(up, fed, client_seed=7)
    assert sent.metrics["dp-clipped"] == 1 and set(sent.arrays) == set(up.arrays)
    # encode exactly as the ClientApp does, decode as the server does
    if fed.transport.compress_upload:
        gen = torch.Generator().manual_seed(derive_seed("upload", 7))
        enc, meta, _ = transport.encode_arrays({k: v.contiguous() for k, v in sent.arrays.items()},
                                               fed.transport.upload, gen)
        decoded = transport.decode_arrays(enc, meta)[0]
    else:
        decoded = sent.arrays
    assert privacy.update_norm(decoded) <= clip * (1 + 1e-6)
    # the server re-clips what it decoded: no violation, and the aggregate of one client has norm <= C / K
    agg = privacy.DPAggregator(fed, population=10, shapes=SHAPES)
    g, rec = agg.aggregate([Update(decoded, 10, sent.metrics, "c0")], num_sampled=1, server_round=1,
                           own_weight=lambda u: 1.0)
    assert rec["server_violations"] == 0 and rec["clipped_fraction"] == 1.0
    assert set(g) == set(SHAPES)  # every trainable variable is released (absent ones as noise only)
    assert privacy.update_norm(g) <= clip * (1 + 1e-6)


def test_small_updates_are_not_clipped_and_the_server_counts_violations():
    fed = _fed(dp={"enabled": True, "clip": 1e6})
    up = _update()
    sent = privacy.clip_for_upload(up, fed, client_seed=0)
    assert sent.metrics["dp-clipped"] == 0
    assert all(torch.equal(sent.arrays[k], up.arrays[k]) for k in up.arrays)
    # a client that did not clip (a modified device): the server clips it and counts it
    strict = _fed(dp={"enabled": True, "clip": 0.1})
    agg = privacy.DPAggregator(strict, population=10, shapes=SHAPES)
    g, rec = agg.aggregate([_update("c0"), _update("c1", seed=1)], num_sampled=2, server_round=1,
                           own_weight=lambda u: 1.0)
    assert rec["server_violations"] == 2
    assert privacy.update_norm(g) <= 0.1 * (1 + 1e-6)  # ‖(x̂_0 + x̂_1) / 2‖ <= C


def test_without_noise_the_dp_aggregate_is_the_fixed_denominator_mean_bit_for_bit():
    ups = [_update(f"c{i}", scale=0.001, seed=i) for i in range(3)]  # below the clip: no scaling
    fed = _fed(dp={"enabled": True, "clip": 1.0, "noise-multiplier": 0.0})
    g, _ = privacy.DPAggregator(fed, 10, SHAPES).aggregate(ups, num_sampled=3, server_round=1,
                                                           own_weight=lambda u: 1.0)
    want = aggregation.aggregate(ups, [1.0, 1.0, 1.0])
    assert all(torch.equal(g[k], want[k]) for k in SHAPES)
    # a client that failed still counts in the denominator K (fixed-denominator estimator)
    g4, _ = privacy.DPAggregator(fed, 10, SHAPES).aggregate(ups, num_sampled=4, server_round=1,
                                                            own_weight=lambda u: 1.0)
    assert torch.allclose(g4["a.bias"], want["a.bias"] * 3 / 4)


def test_capped_weights_are_the_clients_own_weight_bounded_by_one():
    fed = _fed(dp={"enabled": True, "clip": 1e6, "weighting": "capped", "weight-cap": 20.0})
    ups = [_update("c0", 0.01, seed=0), _update("c1", 0.01, seed=1)]
    own = {"c0": 10.0, "c1": 400.0}
    _, rec = privacy.DPAggregator(fed, 10, SHAPES).aggregate(ups, 2, 1, own_weight=lambda u: own[u.client_id])
    assert rec["weights"] == {"c0": 0.5, "c1": 1.0}


def test_cross_client_wca_weights_are_rejected_under_capped_dp():
    with pytest.raises(ValueError, match="frequency"):
        _fed(weighting="frequency", dp={"enabled": True, "weighting": "capped", "weight-cap": 10.0})
    _fed(weighting="frequency", dp={"enabled": True})  # uniform weights: fed.weighting is not used


def test_noise_on_the_mean_has_the_stated_std():
    z, clip, k = 1.3, 2.0, 4
    fed = _fed(dp={"enabled": True, "clip": clip, "noise-multiplier": z}, seed=3)
    shapes = {"w": (400, 500)}
    zeros = [Update({"w": torch.zeros(400, 500)}, 1, {}, f"c{i}") for i in range(2)]
    agg = privacy.DPAggregator(fed, 100, shapes)
    g, rec = agg.aggregate(zeros, num_sampled=k, server_round=5, own_weight=lambda u: 1.0)
    want = z * clip / k  # = flwr compute_stdv(z, C, K)
    assert rec["noise_std_on_mean"] == pytest.approx(want)
    x = g["w"].double()
    assert float(x.std()) == pytest.approx(want, rel=0.01)  # 200k samples: the std's own error is ~0.16%
    assert abs(float(x.mean())) < 5 * want / math.sqrt(x.numel())
    g2, _ = privacy.DPAggregator(fed, 100, shapes).aggregate(zeros, k, 5, lambda u: 1.0)
    assert torch.equal(g["w"], g2["w"])  # seeded by (seed, round): a resumed run draws the same noise


def test_histogram_noise_has_the_stated_scale_and_stays_valid_counts():
    hist = [50] * 20000
    metrics = {"wca-hist": hist, "wca-kept": 3, "wca-utterances": 5, "wca-corrections": 4}
    for kind, var in [("laplace", 2 * 1.5**2), ("gaussian", 1.5**2)]:
        out = privacy.noise_histogram(metrics, DPConfig(histogram_noise=kind, histogram_scale=1.5), seed=1)
        diff = np.asarray(out["wca-hist"], dtype=float) - 50
        assert np.std(diff) == pytest.approx(math.sqrt(var + 1 / 12), rel=0.03)  # + rounding's variance
        st = refinement.ClientStats.from_metrics(out, 20000)  # the server still accepts it
        assert st.kept == 3 and st.histogram.min() >= 0
    assert privacy.noise_histogram(metrics, DPConfig(), seed=1) == metrics


# --- accounting --------------------------------------------------------------------------------------------------

def test_epsilon_grows_with_rounds_and_falls_with_noise():
    eps = [privacy.compute_epsilon(1.0, 10, 1000, t, 1e-3) for t in (1, 10, 100)]
    assert eps[0] < eps[1] < eps[2]
    by_z = [privacy.compute_epsilon(z, 10, 1000, 50, 1e-3) for z in (0.5, 1.0, 2.0)]
    assert by_z[0] > by_z[1] > by_z[2]
    assert privacy.compute_epsilon(0.0, 10, 1000, 50, 1e-3) == math.inf
    # fixed-size sampling with replace-one neighbours (sensitivity 2C) costs more than the Poisson figure
    assert privacy.compute_epsilon(1.0, 10, 1000, 50, 1e-3) > privacy.compute_epsilon(1.0, 10, 1000, 50, 1e-3,
                                                                                       "poisson")


def test_flowers_accountant_matches_our_rdp_of_the_sampled_gaussian():
    orders = list(range(2, 65))
    q, z, rounds, delta = 0.01, 1.1, 500, 1e-5
    ours = privacy.epsilon_from_rdp(rounds * privacy.rdp_poisson_gaussian(q, z, orders), orders, delta)
    flower = privacy.compute_epsilon(z, 10, 1000, rounds, delta, "poisson", orders=orders)
    assert ours == pytest.approx(flower, rel=1e-6)


def test_unsampled_gaussian_matches_the_closed_form():
    """q = 1: ε(α) = Tα/(2z²) and Mironov (2017, Prop. 3) give ε* = T/(2z²) + √(2T log(1/δ)) / z."""
    z, rounds, delta = 5.0, 20, math.exp(-10)  # the optimal order 1 + z·√(2·log(1/δ)/T) = 6 is an integer
    orders = list(range(2, 400))
    ours = privacy.epsilon_from_rdp(rounds * privacy.rdp_poisson_gaussian(1.0, z, orders), orders, delta,
                                    improved=False)
    closed = rounds / (2 * z * z) + math.sqrt(2 * rounds * math.log(1 / delta)) / z
    assert ours == pytest.approx(closed, rel=1e-12)
    improved = privacy.epsilon_from_rdp(rounds * privacy.rdp_poisson_gaussian(1.0, z, orders), orders, delta)
    assert improved < ours  # Balle et al.'s conversion is tighter


def test_noise_for_epsilon_is_the_smallest_that_reaches_the_target():
    z = privacy.noise_for_epsilon(10.0, 100, 100_000, 200, 1e-5, tol=1e-3)
    assert privacy.compute_epsilon(z, 100, 100_000, 200, 1e-5) <= 10.0
    assert privacy.compute_epsilon(z - 2e-3, 100, 100_000, 200, 1e-5) > 10.0


def test_accountant_counts_every_round_once():
    dp = DPConfig(enabled=True, noise_multiplier=1.0)
    acc = privacy.Accountant(dp, population=1000, cohort=10)
    assert acc.delta == pytest.approx(1e-3)
    e3 = acc.epsilon_after(3)
    assert acc.epsilon_after(3) == e3
    assert e3 == pytest.approx(privacy.compute_epsilon(1.0, 10, 1000, 3, 1e-3))
    assert acc.epsilon_after(5) == pytest.approx(privacy.compute_epsilon(1.0, 10, 1000, 5, 1e-3))
    assert privacy.Accountant(DPConfig(enabled=True), 1000, 10).epsilon_after(3) is None  # z = 0: no guarantee


# --- through Flower -----------------------------------------------------------------------------------------------

def test_dp_run_records_clip_noise_and_epsilon_per_round(tmp_path):
    cfg = _cfg(tmp_path, num_rounds=3, transport={"upload": {"name": "int8_sr"}},
               dp={"enabled": True, "clip": 0.05, "noise-multiplier": 0.5})
    run, rec = _run(cfg)
    rows = _rows(run)
    dp = [rows[r]["dp"] for r in (1, 2, 3)]
    assert all(rows[r]["status"] == "ok" for r in (1, 2, 3))
    assert [d["epsilon"] for d in dp] == sorted(d["epsilon"] for d in dp) and dp[0]["epsilon"] < dp[2]["epsilon"]
    assert all(d["server_violations"] == 0 and d["clip"] == 0.05 and d["delta"] == pytest.approx(1 / 8) for d in dp)
    assert all(0.0 <= d["clipped_fraction"] <= 1.0 for d in dp)
    summary = privacy.summarize_dp(run.rounds())
    assert summary["rounds"] == 3 and summary["epsilon"] == dp[2]["epsilon"]
    for _, reply in rec.pairs:  # what left each device was clipped to C as decoded
        meta = str(reply.content["transport"]["upload"])
        decoded, _ = transport.decode_arrays({k: v.numpy() for k, v in reply.content["arrays"].items()}, meta)
        assert privacy.update_norm(decoded) <= 0.05 * (1 + 1e-6)


def test_dp_off_is_the_old_path(tmp_path, monkeypatch):
    """With ``[fed.dp]`` at its defaults no DP code runs, and the run is bit-for-bit what it was."""
    base = _weights(_run(_cfg(tmp_path, run_id="a", strategy="fedavg"))[0])

    def boom(*a, **k):
        raise AssertionError("DP code ran with dp.enabled = false")

    monkeypatch.setattr(privacy, "clip_for_upload", boom)
    monkeypatch.setattr(privacy, "noise_histogram", boom)
    monkeypatch.setattr(privacy.DPAggregator, "aggregate", boom)
    client_app._RUNTIMES.clear()
    again = _weights(_run(_cfg(tmp_path, run_id="b", strategy="fedavg"))[0])
    assert set(base) == set(again) and all(torch.equal(base[k], again[k]) for k in base)


def test_paper_scale_plan_reaches_the_target():
    plan = privacy.plan_paper_scale(cohorts=(1000, 10000), accounting="poisson")
    assert plan["assumptions"]["population"] == 1_000_000 and "assumed" in plan["assumptions"]["source"]
    for row in plan["rows"]:
        assert row["epsilon"] <= 10.0 and row["noise_multiplier"] > 0
    assert plan["rows"][0]["noise_std_on_mean_over_clip"] > plan["rows"][1]["noise_std_on_mean_over_clip"]
