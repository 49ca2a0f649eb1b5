"""Filter calibration (issue 18): a seeded split by client, a threshold chosen on calibration clients only, the default
simulator unchanged, and an unseen kind of wrong correction that exists only when enabled."""

import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from fedasr import corrections as C
from fedasr import filter_calibration as F
from fedasr import refinement as R
from fedasr.data import DataError, Utterance, normalize_text

VOCAB = ["call", "set", "a", "timer", "for", "ten", "minutes", "play", "music", "navigate", "to", "the", "shop",
         "text", "that", "i'm", "late", "how", "cold", "is", "it", "in", "today", "please", "turn", "on", "lights"]
NAMES = ["walter hernandez", "jeanne harmon", "robin rodriguez", "candice riley", "jill briggs", "santiago freeway",
         "maple street", "timothy alexander"]
USERS = C.CorrectionConfig(never_fraction=0.2, p_base=0.8, p_wrong=0.3)  # many corrections, many wrong ones


def population(n_clients=40, per_client=12, seed=0):
    """Synthetic clients: commands, half with one of the client's three names; hypotheses with word errors."""
    rng = random.Random(seed)
    utts, hyps = [], {}
    for c in range(n_clients):
        client, names = f"c{c:04d}", rng.sample(NAMES, 3)
        for j in range(per_client):
            words = rng.sample(VOCAB, rng.randint(3, 6))
            terms = ()
            if rng.random() < 0.5:
                name = rng.choice(names)
                words.insert(rng.randint(0, len(words)), name)
                terms = (name,)
            text = " ".join(words)
            uid = f"{client}_{j:03d}"
            utts.append(Utterance(id=uid, path=f"{uid}.flac", text=text, duration=0.4 * len(text.split()) + 1,
                                  speaker="s", voice="v", client=client, split="user_train", domain="user",
                                  terms=terms))
            hyp = [w for w in text.split() if rng.random() > 0.1]
            hyps[uid] = " ".join(rng.choice(VOCAB) if rng.random() < 0.2 else w for w in hyp)
    return utts, hyps


@pytest.fixture(scope="module")
def pop():
    return population()


def _digest(records):
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def test_client_split_is_disjoint_deterministic_and_by_client():
    clients = [f"c{i:04d}" for i in range(120)]
    cal, ev = F.split_clients(clients, seed=0)
    assert not set(cal) & set(ev) and set(cal) | set(ev) == set(clients) and len(cal) == len(ev) == 60
    assert (cal, ev) == F.split_clients(clients[::-1] + clients[:7], seed=0)  # order and repeats do not matter
    assert F.split_clients(clients, seed=1) != (cal, ev)
    with pytest.raises(ValueError, match="overlap"):
        F.calibrate([[]], cal, cal[:1], R.FilterConfig(), [0.7])


def test_threshold_is_chosen_on_calibration_clients_only(pop):
    utts, hyps = pop
    sets = [C.simulate_corrections(utts, hyps, replace(USERS, seed=k)) for k in (0, 1)]
    cal, ev = F.split_clients([u.client for u in utts], seed=0)
    grid = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    a = F.calibrate(sets, cal, ev, R.FilterConfig(), grid, n_boot=200)
    # the evaluation clients' records replaced by something else entirely: every correction a rewrite
    evs = set(ev)
    poisoned = [[{**r, "correction": "completely different words here", "kind": "wrong", "wrong_type": "rewrite",
                  "oracle": {**r["oracle"], "label_correct": False}} if r["client"] in evs else r for r in recs]
                for recs in sets]
    b = F.calibrate(poisoned, cal, ev, R.FilterConfig(), grid, n_boot=200)
    assert a["choice"] == b["choice"] and a["calibration"] == b["calibration"]
    assert a["evaluation"] != b["evaluation"]  # the poisoning did reach the evaluation figures
    # ...while the calibration clients' records do move the choice (the check above is not vacuous)
    swapped = F.calibrate(sets, ev, cal, R.FilterConfig(), grid, n_boot=200)
    assert swapped["calibration"] != a["calibration"]
    assert a["choice"]["max_char_edit"] in grid and len(a["choice"]["table"]) == len(grid)


def test_figures_match_filter_report_on_one_simulation(pop):
    utts, hyps = pop
    recs = C.simulate_corrections(utts, hyps, USERS)
    cfg = R.FilterConfig(max_char_edit=0.7)
    rep = R.filter_report(recs, cfg)
    counts = F.client_counts([recs], cfg)
    fig = F.figures(counts, sorted(counts), n_boot=200)
    for k in ("correct_kept", "precision", "incorrect_removed", "wrong_removed"):
        assert fig[k]["value"] == pytest.approx(rep[k])
        lo, hi = fig[k]["ci95"]
        assert lo <= fig[k]["value"] <= hi
    assert fig["by_kind"]["exact"] == rep["by_kind"]["exact"]


# Digests of `simulate_corrections(population())` taken before `wrong_substitute` existed
DEFAULT_DIGESTS = {
    "default": "dcfbbd9833057e5d3614bd699a87aa84a238c022fc182fa48c607feb699dc974",
    "seed3-pwrong0.5": "8ed1aca926f6cca44f5e3c72e75f1aee002f519c02f5bc68b166f020bda04e42",
}


def test_default_simulator_is_unchanged(pop):
    utts, hyps = pop
    assert _digest(C.simulate_corrections(utts, hyps)) == DEFAULT_DIGESTS["default"]
    cfg = C.CorrectionConfig(seed=3, p_wrong=0.5)
    assert _digest(C.simulate_corrections(utts, hyps, cfg)) == DEFAULT_DIGESTS["seed3-pwrong0.5"]


def test_default_simulator_reproduces_the_committed_corrections(tmp_path):
    """Byte-identical to results/quality/corrections.jsonl (needs the generated corpus and the seed's label store)."""
    committed = Path("results/quality/corrections.jsonl")
    ccfg = F.CalibrationConfig()
    try:
        utts, hyps, _ = F.load_population(ccfg)
    except (DataError, OSError) as e:  # data/quick is generated, not committed
        pytest.skip(f"corpus not available: {e}")
    out = C.write_records(tmp_path / "c.jsonl", C.simulate_corrections(utts, hyps))
    assert out.read_bytes() == committed.read_bytes()


def test_unseen_kind_only_when_enabled_and_not_aimed_at_by_any_rule(pop):
    utts, hyps = pop
    by_id = {u.id: u for u in utts}
    assert C.CorrectionConfig().wrong_substitute == 0.0
    default = C.simulate_corrections(utts, hyps, USERS)
    assert not any(r["wrong_type"] == "substitute" for r in default)
    only = replace(USERS, wrong_substitute=1.0, wrong_rewrite=0.0, wrong_empty=0.0, wrong_junk=0.0, wrong_long=0.0)
    recs = C.simulate_corrections(utts, hyps, only)
    subs = [r for r in recs if r["wrong_type"] == "substitute"]
    assert len(subs) == sum(r["kind"] == "wrong" for r in recs) > 30
    # every substitute: a wrong label, the reference with one region of in-vocabulary words of the client changed
    vocab = {}
    for u in utts:
        vocab.setdefault(u.client, set()).update(u.text.split())
    for r in subs:
        ref, typed = by_id[r["id"]].text.split(), normalize_text(r["correction"]).split()
        assert not r["oracle"]["label_correct"]
        assert len(C.error_regions(typed, ref)) == 1 and set(typed) <= vocab[r["client"]]
    # What the filter sees: nothing a rule is aimed at. Content rules (text, word count, speaking rate) pass them
    # all, and the edit-distance rules drop a substitute about as often as the exact correction of the same
    # utterance, while they drop most of the four seen kinds.
    cfg = R.FilterConfig(max_char_edit=0.7)
    status = {r["id"]: R.check_correction(r["hypothesis"], r["correction"], r["duration"], cfg)[0] for r in subs}
    assert not {"empty", "non-text", "too-long", "too-fast"} & set(status.values())
    exact = {r["id"]: R.check_correction(r["hypothesis"], by_id[r["id"]].text, r["duration"], cfg)[0] for r in subs}
    removed_sub = sum(s != "kept" for s in status.values()) / len(subs)
    removed_exact = sum(s != "kept" for s in exact.values()) / len(subs)
    assert removed_sub <= removed_exact + 0.1
    seen = [r for r in default if r["kind"] == "wrong"]
    removed_seen = sum(R.check_correction(r["hypothesis"], r["correction"], r["duration"], cfg)[0] != "kept"
                       for r in seen) / len(seen)
    assert removed_seen >= 0.5 > removed_sub
