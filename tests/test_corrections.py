"""Simulated user corrections: seeded, reproducible, realised rates match the parameters, no reference leaks."""

import json
import math
import random

import pytest

from fedasr import corrections as C
from fedasr.data import DataError, Utterance, normalize_text

VOCAB = ["call", "set", "a", "timer", "for", "ten", "minutes", "play", "music", "navigate", "to", "the", "shop",
         "tell", "that", "i'm", "late", "how", "cold", "is", "it", "in", "today", "please", "turn", "on", "lights"]


def _utt(uid, text, client="c0", terms=(), duration=3.0):
    return Utterance(id=uid, path=f"{uid}.flac", text=text, duration=duration, speaker="s", voice="v",
                     client=client, split="user_train", domain="user", terms=tuple(terms))


def _population(n_clients, per_client, seed=0):
    """Synthetic clients: commands with a client-specific name, hypotheses with ASR-like word errors."""
    rng = random.Random(seed)
    utts, hyps = [], {}
    for c in range(n_clients):
        name = "zq" + "".join("abcdefghij"[int(d)] for d in str(c)) + "name"  # letters only: normalized
        for j in range(per_client):
            words = rng.sample(VOCAB, rng.randint(3, 7))
            terms = ()
            if rng.random() < 0.6:
                words.insert(rng.randint(0, len(words)), name)
                terms = (name,)
            u = _utt(f"c{c:04d}_{j:03d}", " ".join(words), f"c{c:04d}", terms)
            hyp = [w for w in words if rng.random() > 0.15]  # deletions
            hyp = [rng.choice(VOCAB) if rng.random() < 0.2 else w for w in hyp]  # substitutions
            if terms and rng.random() < 0.8:
                hyp = [w if w != name else "nay" for w in hyp]  # the new term is usually wrong
            utts.append(u)
            hyps[u.id] = " ".join(hyp)
    return utts, hyps


@pytest.fixture(scope="module")
def big():
    return _population(2000, 8)


def test_seeded_reproducible_and_independent_of_order(big):
    utts, hyps = big[0][:400], big[1]
    a = C.simulate_corrections(utts, hyps, C.CorrectionConfig(seed=3))
    assert a == C.simulate_corrections(utts, hyps, C.CorrectionConfig(seed=3))
    shuffled = utts[::-1]
    b = {r["id"]: r for r in C.simulate_corrections(shuffled, hyps, C.CorrectionConfig(seed=3))}
    assert all(b[r["id"]] == r for r in a)  # a record depends on (seed, id), not on the input order
    other = C.simulate_corrections(utts, hyps, C.CorrectionConfig(seed=4))
    assert [r["correction"] for r in other] != [r["correction"] for r in a]


@pytest.mark.parametrize("cfg", [
    C.CorrectionConfig(),
    C.CorrectionConfig(never_fraction=0.3, engagement_a=2.0, engagement_b=1.0, p_base=0.5, p_wrong=0.3,
                       p_typo=0.15, p_partial=0.25, wrong_rewrite=1.0, wrong_empty=0.0, wrong_junk=1.0,
                       wrong_long=2.0),
], ids=["defaults", "other-rates"])
def test_realised_rates_match_parameters(big, cfg):
    utts, hyps = big
    recs = C.simulate_corrections(utts, hyps, cfg)

    def within(observed, expected, n, sigmas=4.5):
        se = math.sqrt(max(expected * (1 - expected), 1e-12) / n)
        assert abs(observed - expected) <= sigmas * se, (observed, expected, n)

    # Who corrects: never-correcting clients, and the engaged clients' mean propensity a / (a + b)
    eng = {r["client"]: r["oracle"]["engagement"] for r in recs}
    within(sum(e == 0 for e in eng.values()) / len(eng), cfg.never_fraction, len(eng))
    engaged = [e for e in eng.values() if e > 0]
    a, b = cfg.engagement_a, cfg.engagement_b
    sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    assert abs(sum(engaged) / len(engaged) - a / (a + b)) <= 4.5 * sd / math.sqrt(len(engaged))
    # When: the number of corrections matches Σ P(correct) (a sum of Bernoulli draws)
    ps = [r["oracle"]["p_correct"] for r in recs]
    n_corr = sum(r["correction"] is not None for r in recs)
    assert abs(n_corr - sum(ps)) <= 4.5 * math.sqrt(sum(p * (1 - p) for p in ps))
    assert all(r["correction"] is None for r in recs if r["oracle"]["engagement"] == 0)
    # How: kinds among corrections of erroneous hypotheses
    corr = [r for r in recs if r["correction"] is not None and r["oracle"]["errors"] > 0]
    within(sum(r["kind"] == "wrong" for r in corr) / len(corr), cfg.p_wrong, len(corr))
    within(sum(r["kind"] == "typo" for r in corr) / len(corr), cfg.p_typo, len(corr))
    feasible = [r for r in corr if r["oracle"]["regions"] >= 2]  # a partial fix needs two error regions
    within(sum(r["kind"] == "partial" for r in feasible) / len(feasible), cfg.p_partial, len(feasible))
    wrong = [r for r in recs if r["kind"] == "wrong"]
    for t, p in cfg.wrong_mix().items():
        within(sum(r["wrong_type"] == t for r in wrong) / len(wrong), p, len(wrong))
    # A label is right exactly when the kind is "exact" (or junk that normalization strips, "hi 👍")
    for r in recs:
        if r["correction"] is not None and r["wrong_type"] != "junk":
            assert r["oracle"]["label_correct"] == (r["kind"] == "exact"), r
    s = C.summarize(recs)
    assert s["corrected"] == n_corr and s["clients"] == 2000
    within(s["wrong_rate"], cfg.p_wrong, len(corr))


def test_correction_probability_hand_computed():
    cfg = C.CorrectionConfig()
    # one substitution in three words, on the new term: 0.3 + 0.5 + 0.4 * 1/3
    p, errors, term_wrong = C.correction_probability("call candy now", "call candice now", ["candice"], 0.5, cfg)
    assert (errors, term_wrong) == (1, True) and p == pytest.approx(0.5 * (0.3 + 0.5 + 0.4 / 3))
    p, _, term_wrong = C.correction_probability("call tom now", "call mom now", [], 1.0, cfg)
    assert not term_wrong and p == pytest.approx(0.3 + 0.4 / 3)
    p, _, _ = C.correction_probability("a b c d", "w x y z", ["x"], 1.0, cfg)
    assert p == 1.0  # capped
    p, errors, _ = C.correction_probability("call mom", "call mom", [], 0.8, cfg)
    assert errors == 0 and p == pytest.approx(0.8 * 0.05)
    assert C.correction_probability("call tom", "call mom", [], 0.0, cfg)[0] == 0.0


def test_users_fix_wrong_terms_more_often(big):
    recs = C.simulate_corrections(*big)
    rate = {}
    for flag in (True, False):
        sel = [r for r in recs if r["oracle"]["engagement"] > 0 and r["oracle"]["errors"] > 0
               and r["oracle"]["term_wrong"] == flag]
        rate[flag] = sum(r["correction"] is not None for r in sel) / len(sel)
    assert rate[True] > rate[False] + 0.2


ALWAYS = dict(never_fraction=0.0, engagement_a=1e3, engagement_b=1e-3, p_base=1.0)  # everyone corrects everything


def _one(cfg, hyp="call candy and tell him hi", ref="call candice and tell them hi", terms=("candice",)):
    utt = _utt("u1", ref, terms=terms)
    return C.simulate_utterance(utt, hyp, [ref, "set a timer for ten minutes", "play music"], cfg)


def test_kinds_of_corrections():
    exact = _one(C.CorrectionConfig(**ALWAYS, p_format=1.0, p_wrong=0, p_typo=0, p_partial=0))
    assert exact["kind"] == "exact" and exact["correction"] != "call candice and tell them hi"  # as typed
    assert normalize_text(exact["correction"]) == "call candice and tell them hi"
    partial = _one(C.CorrectionConfig(**ALWAYS, p_format=0, p_wrong=0, p_typo=0, p_partial=1.0))
    assert partial["kind"] == "partial" and partial["correction"] == "call candice and tell him hi"  # only the term
    for seed in range(20):
        typo = _one(C.CorrectionConfig(**ALWAYS, seed=seed, p_format=0, p_wrong=0, p_typo=1.0, p_partial=0))
        got, want = typo["correction"].split(), "call candice and tell them hi".split()
        diff = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
        assert typo["kind"] == "typo" and len(got) == len(want) and len(diff) == 1
        assert diff[0] in (1, 4)  # the typo is in a word the user typed (candice or them)
    # one region only: a partial fix is the whole fix
    single = _one(C.CorrectionConfig(**ALWAYS, p_wrong=0, p_typo=0, p_partial=1.0), hyp="call candy",
                  ref="call candice")
    assert single["kind"] == "exact"


@pytest.mark.parametrize("wrong_type,check", [
    ("rewrite", lambda c: normalize_text(c) != "call candice and tell them hi"),
    ("empty", lambda c: c.strip() == ""),
    ("junk", lambda c: any(not (ch.isascii() and (ch.isalnum() or ch in " '")) for ch in c)),
    ("long", lambda c: len(c.split()) == 60),
])
def test_wrong_corrections(wrong_type, check):
    mix = {f"wrong_{t}": float(t == wrong_type) for t in C.WRONG_TYPES}
    for seed in range(10):
        r = _one(C.CorrectionConfig(**ALWAYS, seed=seed, p_wrong=1.0, p_typo=0, p_partial=0, **mix))
        assert r["kind"] == "wrong" and r["wrong_type"] == wrong_type and check(r["correction"]), r
        # a wrong correction's label is wrong, unless normalization removes all of the junk ("hi 👍")
        assert r["oracle"]["label_correct"] == (normalize_text(r["correction"]) == "call candice and tell them hi")
        assert wrong_type == "junk" or not r["oracle"]["label_correct"]


def test_records_hold_no_reference_the_user_did_not_type(big):
    utts, hyps = big[0][:800], big[1]
    recs = C.simulate_corrections(utts, hyps)
    by_id = {u.id: u for u in utts}
    for r in recs:
        assert set(C.device_view(r)) == set(C.DEVICE_FIELDS)
        assert "text" not in r and "reference" not in r
        ref = by_id[r["id"]].text
        if r["correction"] is None and r["hypothesis"] != ref:
            assert ref not in json.dumps(r), "an uncorrected record carries its reference"


def test_records_round_trip_and_bad_input(tmp_path):
    utts, hyps = _population(3, 4)
    recs = C.simulate_corrections(utts, hyps)
    assert C.read_records(C.write_records(tmp_path / "r.jsonl", recs)) == recs
    with pytest.raises(DataError, match="no hypothesis"):
        C.simulate_corrections(utts, {})
    with pytest.raises(ValueError, match="p_wrong"):
        C.CorrectionConfig(p_wrong=0.6, p_typo=0.3, p_partial=0.3)
    with pytest.raises(ValueError, match="never_fraction"):
        C.CorrectionConfig(never_fraction=1.5)
