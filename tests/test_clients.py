"""The client population: long-tailed counts, lazy deterministic device profiles, manifests → clients."""

from collections import Counter

import pytest

from fedasr.clients import DEVICE_TIERS, Population


def test_synthetic_population_is_deterministic_long_tailed_and_bounded():
    p = Population.synthetic(500, seed=1, min_examples=5, max_examples=300)
    q = Population.synthetic(500, seed=1, min_examples=5, max_examples=300)
    assert len(p) == 500 and p.client_ids == q.client_ids
    counts = [p.num_examples(c) for c in p.client_ids]
    assert counts == [q.num_examples(c) for c in q.client_ids]
    assert min(counts) >= 5 and max(counts) <= 300
    s = p.summary()
    assert s["median"] < sum(counts) / len(counts) < s["p90"]  # a long right tail: mean above the median
    assert Population.synthetic(500, seed=2).summary() != Population.synthetic(500, seed=1).summary()


def test_profiles_are_lazy_and_deterministic():
    p = Population.synthetic(2000, seed=0)
    assert p._profiles == {}  # nothing materialised up front
    sampled = p.sample(10, server_round=1)
    profs = [p.profile(c) for c in sampled]
    assert len(p._profiles) == 10
    again = Population.synthetic(2000, seed=0)
    assert profs == [again.profile(c) for c in sampled]
    tiers = {t.name: t for t in DEVICE_TIERS}
    for pr in profs:
        assert pr.memory_budget_bytes == tiers[pr.tier].memory_budget_bytes and pr.speed == tiers[pr.tier].speed


def test_tier_shares_follow_the_table():
    p = Population.synthetic(4000, seed=3)
    got = Counter(p.profile(c).tier for c in p.client_ids)
    for t in DEVICE_TIERS:
        assert got[t.name] / 4000 == pytest.approx(t.share, abs=0.03)


def test_from_utterances_counts_one_split_and_ignores_clientless():
    utts = [{"client": "u1", "split": "user_train"}] * 3 + [{"client": "u2", "split": "user_train"}] + \
           [{"client": "u1", "split": "user_test"}, {"client": None, "split": "user_train"}]
    p = Population.from_utterances(utts)
    assert p.client_ids == ["u1", "u2"] and p.num_examples("u1") == 3
    with pytest.raises(ValueError, match="no utterances"):
        Population.from_utterances(utts, split="proxy_train")
    with pytest.raises(KeyError, match="unknown client"):
        p.num_examples("u3")


def test_bad_counts_and_tiers_are_rejected():
    with pytest.raises(ValueError, match="non-negative integers"):
        Population({"a": -1})
    with pytest.raises(ValueError, match="sum to 1"):
        Population({"a": 1}, tiers=DEVICE_TIERS[:2])
    assert Population({"a": 0, "b": 2}).client_ids == ["b"]  # a client with no data never trains


def test_sampling_matches_core_and_is_reproducible():
    p = Population.synthetic(600, seed=4)
    assert p.sample(20, 5) == p.sample(20, 5) != p.sample(20, 6)
