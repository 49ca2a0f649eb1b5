"""Per-client correction quality (issue 18, `fedasr.correction_quality`): off changes no record; on, clients'
wrong-correction rates spread around p_wrong, deterministically, and their corrections follow them."""

import hashlib
import json
import math
import random
import statistics
from pathlib import Path

import pytest
from test_corrections import _population

from fedasr import corrections as C
from fedasr.correction_quality import client_wrong_rate, kind_thresholds
from fedasr.data import read_manifest

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny"
USER_SPLITS = ("user_train", "user_dev", "user_test", "user_heldout", "user_heldout_dev")


def _fingerprint(records) -> str:
    return hashlib.sha256(json.dumps(records, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _tiny():
    """data/tiny's user utterances (committed manifests) with seeded ASR-like hypotheses (deletions, garbled words)."""
    utts = [u for s in USER_SPLITS for u in read_manifest(TINY / "manifests" / f"{s}.jsonl", root=TINY)]
    hyps = {}
    for u in utts:
        rng = random.Random(u.id)
        words = [w for w in u.text.split() if rng.random() > 0.15]
        words = [w[::-1] if rng.random() < 0.25 else w for w in words]
        hyps[u.id] = " ".join(words) if rng.random() > 0.1 else u.text
    return utts, hyps


# sha256 of the records made by the simulator *before* wrong_concentration existed (same inputs, same configs)
BEFORE = {
    ("tiny", 0): "1a93651fd4a4bcbf759f97399b6eff34e9f1c1d2da756a6527e9844420fe46ea",
    ("tiny", 1): "627a90cfb4b4b7fd62885450077b5538a48d11350fcda7b0060c65428a272e15",
    ("population", 0): "164bfdd76db12d1deec17ad9444a6cedf7977562d029b887c01d76e3d12590ed",
}
BEFORE_SUBSTITUTE = "a589897599bb1c6e6f5650f1e730863c4a8816320780ef031ae505db86ae849d"  # seed 2, p_wrong 0.3


@pytest.mark.parametrize("name,seed", list(BEFORE), ids=[f"{n}-seed{s}" for n, s in BEFORE])
def test_off_gives_the_records_of_before(name, seed):
    utts, hyps = _tiny() if name == "tiny" else _population(300, 8)
    assert len({u.client for u in utts}) > 10
    for cfg in (C.CorrectionConfig(seed=seed), C.CorrectionConfig(seed=seed, wrong_concentration=0.0)):
        assert _fingerprint(C.simulate_corrections(utts, hyps, cfg)) == BEFORE[(name, seed)]


def test_off_gives_the_records_of_before_with_other_rates():
    recs = C.simulate_corrections(*_population(300, 8), C.CorrectionConfig(seed=2, wrong_substitute=0.5, p_wrong=0.3))
    assert _fingerprint(recs) == BEFORE_SUBSTITUTE


def test_on_changes_records_and_records_the_client_rate():
    utts, hyps = _tiny()
    off = C.simulate_corrections(utts, hyps, C.CorrectionConfig())
    on = C.simulate_corrections(utts, hyps, C.CorrectionConfig(wrong_concentration=1.4))
    assert all("p_wrong" not in r["oracle"] for r in off)
    assert all(r["oracle"]["p_wrong"] == client_wrong_rate(r["client"], 0, 0.15, 1.4) for r in on)
    # the decision to correct is drawn before the kind, so the same utterances are corrected; only kinds move
    assert [r["correction"] is None for r in on] == [r["correction"] is None for r in off]


@pytest.mark.parametrize("kappa", [1.4, 5.0, 20.0])
def test_client_rates_spread_around_p_wrong(kappa):
    p, n = 0.15, 4000
    q = [client_wrong_rate(f"c{i:05d}", 0, p, kappa) for i in range(n)]
    assert all(0.0 <= x <= 1.0 for x in q)
    sd = math.sqrt(p * (1 - p) / (kappa + 1))  # Beta(pκ, (1-p)κ)
    assert abs(statistics.fmean(q) - p) <= 4.5 * sd / math.sqrt(n)
    assert statistics.pstdev(q) == pytest.approx(sd, rel=0.1)
    assert len(set(q)) == n  # every client its own rate


def test_client_rates_are_seeded_per_client_and_off_is_constant():
    a = [client_wrong_rate(f"c{i}", 3, 0.15, 2.0) for i in range(50)]
    assert a == [client_wrong_rate(f"c{i}", 3, 0.15, 2.0) for i in range(50)]  # deterministic
    assert a != [client_wrong_rate(f"c{i}", 4, 0.15, 2.0) for i in range(50)]  # the seed matters
    assert client_wrong_rate("c7", 3, 0.15, 2.0) == a[7]  # independent of which other clients are drawn
    assert {client_wrong_rate(f"c{i}", 3, 0.15, 0.0) for i in range(50)} == {0.15}
    assert client_wrong_rate("c0", 0, 0.0, 2.0) == 0.0 and client_wrong_rate("c0", 0, 1.0, 2.0) == 1.0


def test_kind_thresholds_keep_the_right_mix():
    assert kind_thresholds(0.15, 0.15, 0.05, 0.10) == (0.15, 0.15 + 0.05, 0.15 + 0.05 + 0.10)  # bitwise, when off
    w, t, pa = kind_thresholds(0.6, 0.15, 0.05, 0.10)
    assert w == 0.6 and (t - w) / (1 - w) == pytest.approx(0.05 / 0.85) and (pa - t) / (1 - w) == pytest.approx(
        0.10 / 0.85)
    assert kind_thresholds(1.0, 0.15, 0.05, 0.10) == (1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def hetero():
    utts, hyps = _population(3000, 8)
    cfg = C.CorrectionConfig(never_fraction=0.0, wrong_concentration=1.4)
    return cfg, C.simulate_corrections(utts, hyps, cfg)


def test_realised_wrong_rates_follow_the_client_rates(hetero):
    cfg, recs = hetero
    corr = [r for r in recs if r["correction"] is not None and r["oracle"]["errors"] > 0]
    # population: the share of wrong corrections is still p_wrong (a Bernoulli mixture with mean Σq/n)
    expected = statistics.fmean(r["oracle"]["p_wrong"] for r in corr)
    observed = sum(r["kind"] == "wrong" for r in corr) / len(corr)
    assert abs(observed - expected) <= 4.5 * math.sqrt(expected * (1 - expected) / len(corr))
    assert abs(expected - cfg.p_wrong) < 0.03
    # per client: clients with a high drawn rate make far more wrong corrections than those with a low one
    q = sorted({r["oracle"]["p_wrong"] for r in corr})
    low, high = q[len(q) // 4], q[3 * len(q) // 4]

    def wrong_share(sel):
        return sum(r["kind"] == "wrong" for r in sel) / len(sel)

    careful = [r for r in corr if r["oracle"]["p_wrong"] <= low]
    careless = [r for r in corr if r["oracle"]["p_wrong"] >= high]
    assert wrong_share(careful) < 0.02 and wrong_share(careless) > 0.35
    # among the non-wrong corrections, the typo share is the population's p_typo / (1 - p_wrong)
    right = [r for r in corr if r["kind"] != "wrong"]
    typo = sum(r["kind"] == "typo" for r in right) / len(right)
    want = cfg.p_typo / (1 - cfg.p_wrong)
    assert abs(typo - want) <= 4.5 * math.sqrt(want * (1 - want) / len(right))


def test_negative_concentration_is_rejected():
    with pytest.raises(ValueError, match="wrong_concentration"):
        C.CorrectionConfig(wrong_concentration=-1.0)
