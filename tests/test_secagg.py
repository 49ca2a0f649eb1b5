"""Secure aggregation (``[fed.secagg]``, `fedasr.federated.secagg`): masks cancel, uploads look uniform, the
federated run equals its unmasked control bitwise, dropouts are recovered, and bad combinations fail clearly."""


import numpy as np
import pytest
import torch

from fedasr import config
from fedasr.config import ConfigError
from fedasr.federated import checkpoint, secagg, secagg_experiment
from fedasr.federated import task as task_lib
from fedasr.federated.client_app import make_client_app
from fedasr.federated.client_update import client_update
from fedasr.federated.config import FedConfig, FederatedConfig, RunSpec, TaskSpec
from fedasr.federated.server_app import checkpoint_path, run_server
from fedasr.seeding import derive_seed
from tests.test_federated_flower import InProcessGrid

INT8 = {"transport": {"upload": {"name": "int8_sr", "symmetric": True}}}
INT4 = {"transport": {"upload": {"name": "int4_sr", "symmetric": True}}}


# --- the maths ------------------------------------------------------------------------------------------------------

def _cohort(n, seed=0):
    ids = [f"c{i}" for i in range(n)]
    keys = {c: secagg.keypair("derived", seed, 1, c) for c in ids}
    seeds = {c: {p: secagg.pair_seed(keys[c][0], keys[p][1], 1, c, p) for p in ids if p != c} for c in ids}
    return ids, seeds


@pytest.mark.parametrize("bits,mbits", [(8, 16), (4, 8)], ids=["int8-mod2^16", "int4-mod2^8"])
def test_masks_cancel_and_the_sum_equals_the_plain_quantized_sum(bits, mbits):
    ids, seeds = _cohort(5)
    half = (1 << (bits - 1)) - 1
    rng = np.random.default_rng(0)
    codes = {c: rng.integers(0, 2 * half + 1, size=1000) for c in ids}
    masked = [secagg.mask_codes(codes[c], c, seeds[c], mbits) for c in ids]
    assert all(m.dtype == np.dtype(f"uint{mbits}") for m in masked)
    total = secagg.unmask_sum(masked, {}, mbits)
    assert np.array_equal(total.astype(np.int64), sum(codes.values()))
    # a client lost after masking: the survivors reveal their seeds with it and the server removes its masks
    lost = "c2"
    revealed = {(c, lost): seeds[c][lost] for c in ids if c != lost}
    total = secagg.unmask_sum([m for c, m in zip(ids, masked) if c != lost], revealed, mbits)
    assert np.array_equal(total.astype(np.int64), sum(codes[c] for c in ids if c != lost))


def test_pair_seeds_agree_and_differ_by_pair_and_round():
    a, b, c = (secagg.keypair() for _ in range(3))
    s_ab = secagg.pair_seed(a[0], b[1], 3, "a", "b")
    assert s_ab == secagg.pair_seed(b[0], a[1], 3, "b", "a") and len(s_ab) == 32
    assert s_ab != secagg.pair_seed(a[0], c[1], 3, "a", "c") and s_ab != secagg.pair_seed(a[0], b[1], 4, "a", "b")


def test_a_masked_upload_alone_looks_uniform():
    _, seeds = _cohort(3)
    codes = np.full(200_000, 127)  # the most revealing input: every code the same
    y = secagg.mask_codes(codes, "c1", seeds["c1"], 16)
    counts = np.bincount((y >> 8).astype(np.int64), minlength=256)  # high byte: 256 bins of ~781
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    assert chi2 < 400  # chi-square with 255 dof: mean 255, sd ~23; a constant would give ~5e7
    assert abs(float(y.astype(np.float64).mean()) / 65535 - 0.5) < 0.01


def test_common_grid_decodes_to_the_weighted_mean_within_one_step():
    gen = torch.Generator().manual_seed(0)
    xs = [{"w": torch.randn(4, 50, generator=gen) * (i + 1)} for i in range(3)]
    a = [3.0, 1.0, 2.0]
    w = [x / sum(a) for x in a]
    scales = secagg.common_grid([[float(x["w"].abs().max())] for x in xs], w, 8)
    codes = [secagg.quantize_shifted(x, ["w"], scales, wi, 8, torch.Generator().manual_seed(i))
             for i, (x, wi) in enumerate(zip(xs, w))]
    assert all(c.min() >= 0 and c.max() <= 254 for c in codes)
    mean = secagg.decode_sum(sum(codes), 3, ["w"], {"w": (4, 50)}, scales, 1.0, 8)["w"]
    exact = sum(wi * x["w"] for wi, x in zip(w, xs))
    assert (mean - exact).abs().max() <= 3 * scales[0] + 1e-6  # stochastic rounding: < one step per client


# --- config ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fed,match", [
    ({}, "transport.upload must be"),
    ({"transport": {"upload": {"name": "int8", "symmetric": True}}}, "transport.upload must be"),
    ({"transport": {"upload": {"name": "int8_sr", "symmetric": False}}}, "transport.upload must be"),
    ({**INT8, "partial": {"policy": "random", "fraction": 0.5}}, "partial training"),
    ({**INT8, "dp": {"enabled": True}}, "DP with secagg is not supported"),
    ({**INT4, "clients-per-round": 19, "secagg": {"enabled": True, "modulus-bits": 8}}, "cannot hold the sum"),
    ({**INT8, "secagg": {"enabled": True, "min-cohort": 1}}, "min-cohort"),
    ({**INT8, "secagg": {"enabled": True, "salt": 1}}, "salt"),
], ids=["no-codec", "nearest-rounding", "affine", "partial", "dp", "modulus", "min-cohort", "unknown-key"])
def test_bad_combinations_fail_clearly(fed, match):
    fed = {"secagg": {"enabled": True}, **fed}
    with pytest.raises((ConfigError, ValueError), match=match):
        config.from_dict(FedConfig, fed, prefix="fed")


def test_modulus_matches_the_codec():
    s = config.from_dict(FedConfig, {**INT4, "secagg": {"enabled": True}}, prefix="fed").secagg
    assert s.modulus(4, 18) == 8 and s.modulus(4, 19) == 16 and s.modulus(8, 258) == 16 and s.modulus(8, 259) == 32


# --- federated runs (toy task, in-process grid whose nodes keep their state) ------------------------------------------

class StatefulGrid(InProcessGrid):
    """`InProcessGrid` whose nodes keep their Context between messages (as Flower's engines do)."""

    def __init__(self, client_app, tamper=None):
        super().__init__(client_app, node_configs=({}, {}, {}), tamper=tamper)
        self.contexts = {n: super(StatefulGrid, self).context(n) for n in self.node_configs}

    def context(self, node):
        return self.contexts[node]

    def record(self, m):
        conf = m.content["config"]
        return m.metadata.dst_node_id, conf.get("server-round"), conf.get("secagg-stage", ""), conf.get("client-id", "")


def _cfg(tmp_path, run_id, **fed):
    fed = {"num_rounds": 3, "clients_per_round": 5, "min_successful_clients": 2, "server_optimizer": "sgd",
           "server_lr": 0.5, **fed}
    return FederatedConfig(fed=config.from_dict(FedConfig, fed, prefix="fed"), task=TaskSpec("toy", {"num-clients": 12}),
                           run=RunSpec(experiment="t", run_id=run_id, results_root=str(tmp_path), overlap_central=False,
                                       progress=False))


def _run(cfg, tamper=None):
    grid = StatefulGrid(make_client_app(cfg), tamper=tamper)
    run = run_server(grid, cfg)
    return run, checkpoint.load_checkpoint(checkpoint_path(run.path))["weights"], grid


@pytest.mark.parametrize("codec", [INT8, INT4], ids=["int8_sr", "int4_sr"])
def test_secagg_run_equals_its_unmasked_control_bitwise(tmp_path, codec):
    _, masked, grid = _run(_cfg(tmp_path, "masked", **codec, secagg={"enabled": True}))
    ctl_run, control, _ = _run(_cfg(tmp_path, "control", **codec, secagg={"enabled": True, "masking": False}))
    assert masked.keys() == control.keys() and all(torch.equal(masked[k], control[k]) for k in masked)
    # the protocol ran: setup, then masked uploads, to the same node per client; the cache is emptied
    stages = [(d[2], d[3]) for d in grid.delivered if d[2]]
    assert {s for s, _ in stages} == {secagg.SETUP, secagg.MASKED}
    node_of = {}
    for node, rnd, _, cid in grid.delivered:
        assert node_of.setdefault((rnd, cid), node) == node
    assert not any(k.startswith("secagg:update:") for c in grid.contexts.values() for k in c.state)
    rows = [r for r in ctl_run.rounds() if r["round"] > 0]
    assert all(r["status"] == "ok" and r["secagg"]["cohort"] == 5 for r in rows)


def test_secagg_is_within_quantization_tolerance_of_the_plain_codec(tmp_path):
    """One FedSGD round (server SGD, lr η, weights w_i with Σ w_i = 1) against the fp32 upload. Secagg: each client
    rounds w_i·x_i on the common step ``s_k = max_i w_i·max|x_ik| / 127`` with an error below one step, so
    ``|w_secagg − w_fp32| < η·K·s_k``; the plain int8_sr codec rounds x_i on its own step, ``< η·Σ_i w_i·max|x_ik|/127``."""
    cfg = _cfg(tmp_path, "sec", num_rounds=1, **INT8, secagg={"enabled": True})
    sec_run, sec, _ = _run(cfg)
    plain_run, plain, _ = _run(_cfg(tmp_path, "plain", num_rounds=1, **INT8))
    _, exact, _ = _run(_cfg(tmp_path, "exact", num_rounds=1))  # fp32 upload: the reference
    (p1,) = [r for r in plain_run.rounds() if r["round"] == 1]
    (s1,) = [r for r in sec_run.rounds() if r["round"] == 1]
    assert p1["succeeded"] == s1["succeeded"] and p1["weights"] == s1["weights"]
    # the clients' own updates, to bound the rounding error
    task = task_lib.make_task(cfg.task)
    model = task.build_model()
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    xs = [client_update(task, model, c, w0, cfg.fed, derive_seed("client", 0, 1, c), 1).arrays for c in s1["succeeded"]]
    a = [s1["weights"][c] for c in s1["succeeded"]]
    w = [x / sum(a) for x in a]
    eta, slack = cfg.fed.server_lr, 1 + 1e-4
    for k in exact:
        m = [float(x[k].abs().max()) for x in xs]
        sec_tol = eta * len(xs) * max(wi * mi for wi, mi in zip(w, m)) / 127 * slack + 1e-7
        plain_tol = eta * sum(wi * mi for wi, mi in zip(w, m)) / 127 * slack + 1e-7
        assert (sec[k] - exact[k]).abs().max() <= sec_tol and (plain[k] - exact[k]).abs().max() <= plain_tol
        assert not torch.equal(sec[k], plain[k]) or exact[k].numel() < 8  # different grids, different draws
    # bytes: uint16 codes (2 bytes a parameter) vs int8 codes + one fp32 scale per variable
    nparams = sum(v.numel() for v in exact.values())
    assert s1["bytes_up"] == 5 * 2 * nparams and p1["bytes_up"] == 5 * (nparams + 4 * len(exact))
    b = s1["secagg"]["bytes"]
    assert b["setup_up"] == 5 * (32 + 4 * (len(exact) + 1)) and b["masked_down"] == 5 * (32 * 5 + 4 * (len(exact) + 1))


def test_a_client_lost_after_setup_is_recovered(tmp_path):
    lost = {}

    def tamper(msg, reply):  # drop the first masked upload of each round
        conf = msg.content["config"]
        if conf.get("secagg-stage") == secagg.MASKED and conf["server-round"] not in lost:
            lost[conf["server-round"]] = conf["client-id"]
            return None
        return reply

    run, weights, _ = _run(_cfg(tmp_path, "lost", **INT8, secagg={"enabled": True}), tamper)
    rows = [r for r in run.rounds() if r["round"] > 0]
    assert all(r["status"] == "ok" for r in rows) and all(torch.isfinite(v).all() for v in weights.values())
    for r in rows:
        assert r["secagg"]["dropped_after_setup"] == [lost[r["round"]]] and r["failed"] == {lost[r["round"]]: "timeout"}
        assert r["secagg"]["revealed_pairs"] == 4 and r["secagg"]["bytes"]["recovery_up"] == 4 * 32
    # equal to the unmasked control with the same client lost (recovery removed exactly the lost client's masks)
    _, control, _ = _run(_cfg(tmp_path, "lost-ctl", **INT8, secagg={"enabled": True, "masking": False}),
                         lambda m, r: None if m.content["config"].get("client-id") in lost.values()
                         and m.content["config"].get("secagg-stage") == secagg.MASKED
                         and lost.get(m.content["config"]["server-round"]) == m.content["config"]["client-id"] else r)
    assert all(torch.equal(weights[k], control[k]) for k in weights)


def test_without_recovery_a_dropout_skips_the_round_and_bad_setups_are_excluded(tmp_path):
    def tamper(msg, reply):
        conf = msg.content["config"]
        if conf.get("secagg-stage") == secagg.SETUP and conf["client-id"] == "toy0003" and not reply.has_error():
            reply.content["secagg"]["maxima"] = [float("nan")] + list(reply.content["secagg"]["maxima"])[1:]
        if conf.get("secagg-stage") == secagg.MASKED and conf["server-round"] == 1:
            return None if conf["client-id"] == min(conf["secagg-cohort"]) else reply
        return reply

    cfg = _cfg(tmp_path, "norec", clients_per_round=12, num_rounds=2, **INT8,
               secagg={"enabled": True, "recovery": False})
    run, _, _ = _run(cfg, tamper)
    r1, r2 = [r for r in run.rounds() if r["round"] > 0]
    assert r1["status"] == "skipped" and "recovery is off" in r1["skip_reason"]
    assert r2["status"] == "ok" and r2["failed"]["toy0003"].startswith("non-finite:")


def test_a_survivor_lost_during_recovery_is_recovered_in_turn(tmp_path):
    def tamper(msg, reply):  # round 1: the cohort's first client loses its upload, the second its recovery answer
        conf = msg.content["config"]
        if conf.get("secagg-stage") == secagg.MASKED and conf["client-id"] == min(conf["secagg-cohort"]):
            return None
        if conf.get("action") == secagg.RECOVER and len(seen) == 0:
            seen.append(conf["client-id"])
            return None
        return reply

    seen = []
    run, weights, _ = _run(_cfg(tmp_path, "chain", num_rounds=1, **INT8, secagg={"enabled": True}), tamper)
    (r1,) = [r for r in run.rounds() if r["round"] == 1]
    assert r1["status"] == "ok" and r1["num_succeeded"] == 3 and r1["failed"][seen[0]] == "secagg-recovery: no answer"
    # 4 survivors asked about 1 client, then 3 of them about the one lost in recovery
    assert r1["secagg"]["revealed_pairs"] == 3 + 3 and all(torch.isfinite(v).all() for v in weights.values())


def test_the_part_file_reads_bytes_and_wers_from_the_run_records():
    def rows(up, wer, extra=None):
        r = [{"round": 0, "status": "initial", "eval": {"wer_user": 0.7}}]
        r += [{"round": k, "status": "ok", "bytes_up": up, "num_succeeded": 8,
               **({"secagg": {"overhead_up": extra, "modulus_bits": 16}} if extra else {})} for k in (1, 2)]
        r[-1]["eval"] = {"wer_user": wer}
        return r

    part = secagg_experiment.secagg_part({"int8_sr": rows(1000, 0.5), "int8_sr_secagg": rows(1990, 0.51, 10)})
    assert part["available"] and part["bytes_ratio"] == 1.99 and part["seeds"] == [0]
    (pair,) = part["pairs"]
    assert pair["bytes_ratio_with_setup"] == 2.0 and pair["wer_user"] == {"int8_sr": 0.5, "int8_sr_secagg": 0.51}
    assert pair["modulus_bits"] == 16 and "not_claimed" in part["claims"]
    assert not secagg_experiment.secagg_part({})["available"]
