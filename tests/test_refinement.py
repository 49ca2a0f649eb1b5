"""Refinement (paper §2.5): on-device filtering, label stores, client selection, client statistics, WCA."""

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from fedasr import asr_task, config, data
from fedasr import corrections as C
from fedasr import refinement as R
from fedasr.data import normalize_text


def _rec(uid, hyp, corr, client="c0", duration=3.0, **extra):
    return {"id": uid, "client": client, "duration": duration, "hypothesis": hyp, "correction": corr, **extra}


# --- on-device filtering ------------------------------------------------------------------------------

@pytest.mark.parametrize("hyp,corr,duration,want", [
    ("call mom", "", 3.0, "empty"),
    ("call mom", "   ", 3.0, "empty"),
    ("call mom", "...", 3.0, "empty"),  # nothing left after normalization
    ("call mom", "call mom 👍", 3.0, "non-text"),
    ("call mom", "https://x.y/call", 3.0, "non-text"),
    ("call mom", "позвони маме", 3.0, "non-text"),
    ("call mom", " ".join(["word"] * 41), 60.0, "too-long"),
    ("call mom", "call my mother right now please", 0.5, "too-fast"),
    ("call mom", "Call mom!", 3.0, "unchanged"),
    ("set a timer for ten minutes", "Set a timer for 10 minutes", 3.0, "unchanged"),  # digits normalized
    ("set a timer for ten minutes", "call mom", 3.0, "length-ratio"),
    ("play some music", "buy me a donut", 3.0, "char-edit"),
    ("tel canice at the shop", "Tell Candice at the shop.", 3.0, "kept"),
    ("call mom", "Call Mom’s phone", 3.0, "kept"),
    ("", "call mom", 3.0, "kept"),  # the phone showed nothing: only the length rules apply
    ("call mom now", "call tom now", None, "kept"),
], ids=lambda v: v if isinstance(v, str) and v in R.DROP_REASONS + ("kept",) else None)
def test_filter_rules(hyp, corr, duration, want):
    status, label = R.check_correction(hyp, corr, duration)
    assert status == want
    assert (label == normalize_text(corr.replace("’", "'"))) if want == "kept" else label == ""
    res = R.filter_corrections([_rec("u", hyp, corr, duration=duration)])
    assert res.counts == {want: 1} and res.status == {"u": want}  # the reason is counted


def test_word_edit_rule_is_a_parameter():
    cfg = R.FilterConfig(max_word_edit=0.3)
    assert R.check_correction("call mom now", "call tom now", cfg=cfg)[0] == "word-edit"
    assert R.check_correction("call mom now", "call tom now", cfg=R.FilterConfig(max_char_edit=0.05))[0] == "char-edit"
    with pytest.raises(ValueError):
        R.FilterConfig(min_length_ratio=1.5)


def test_filter_reads_only_what_the_device_has():
    recs = [_rec("a", "call mom", "Call Tom.", kind="exact", oracle={"label_correct": True}),
            _rec("b", "play music", "buy a donut now", kind="wrong", oracle={"label_correct": False}),
            _rec("c", "call mom", None, kind="none")]
    with_oracle = R.filter_corrections(recs)
    flipped = [{**r, "kind": "exact", "oracle": {"label_correct": True}} for r in recs]
    assert R.filter_corrections(flipped) == with_oracle
    assert R.filter_corrections([C.device_view(r) for r in recs]) == with_oracle
    assert with_oracle.kept == {"a": "call tom"} and with_oracle.counts == {"kept": 1, "char-edit": 1, "uncorrected": 1}


def test_client_with_nothing_left_declines_cleanly():
    lines = R.label_store_lines([_rec("a", "call mom", None, "c7"), _rec("b", "call tom", None, "c7"),
                                 _rec("c", "call mom", "", "c8"), _rec("d", "call mom", "👍", "c8"),
                                 _rec("e", "x", None, "c8"), _rec("f", "call mom", "call tom", "c9"),
                                 _rec("g", "x", None, "c9")])
    with pytest.raises(R.ClientDeclined) as e:
        R.client_round_stats(lines, "c7")
    assert e.value.reason == "no-corrections" and e.value.client_id == "c7" and "c7" in str(e.value)
    with pytest.raises(R.ClientDeclined) as e:
        R.client_round_stats(lines, "c8")
    assert e.value.reason == "all-filtered" and e.value.counts == {"empty": 1, "non-text": 1, "uncorrected": 1}
    assert isinstance(e.value, ValueError)  # the federated layer's per-client failure path catches it
    st = R.client_round_stats(lines, "c9")
    assert (st.utterances, st.corrections, st.kept) == (2, 1, 1)


# --- label stores -------------------------------------------------------------------------------------

RECS = [
    _rec("u1", "call candy", None),  # wrong hypothesis, not corrected: the reference must never appear
    _rec("u2", "tel canice", "Tell Candice."),  # a plausible correction
    _rec("u3", "play music", "buy a donut now"),  # a rewrite: dropped by the filter
    _rec("u4", "call mom", ""),  # cleared the field
]


@pytest.mark.parametrize("mode,labels", [
    ("hypotheses", {"u1": "call candy", "u2": "tel canice", "u3": "play music", "u4": "call mom"}),
    ("committed", {"u1": "call candy", "u2": "tell candice", "u3": "buy a donut now"}),
    ("corrected", {"u2": "tell candice", "u3": "buy a donut now"}),
    ("filtered", {"u2": "tell candice"}),
])
def test_label_store_modes(tmp_path, mode, labels):
    summary = R.write_label_store(tmp_path / "s.jsonl", RECS, mode)
    got = {k: v for k, v in asr_task.read_labels(tmp_path / "s.jsonl").items() if v}  # "" = not trained
    assert got == labels
    lines = R.read_label_store(tmp_path / "s.jsonl")
    assert [x["status"] for x in lines] == ["uncorrected", "kept", "char-edit", "empty"]
    assert summary["labelled"] == len(labels) and summary["corrections_per_client"] == {"c0": 3}
    with pytest.raises(ValueError, match="label mode"):
        R.label_store_lines(RECS, "truth")


def _synthetic(n_clients=30, per_client=12, seed=0):
    import random

    rng = random.Random(seed)
    words = "call set a timer for play music navigate to the shop tell that i'm late how cold is it".split()
    utts, hyps = [], {}
    for c in range(n_clients):
        for j in range(per_client):
            marker = "marker" + "abcdefghij"[c % 10] + "abcdefghij"[j % 10]  # letters only: normalized
            ref = " ".join(rng.sample(words, rng.randint(3, 6)) + [marker])
            u = data.Utterance(id=f"c{c:03d}_{j:02d}", path="x.flac", text=ref, duration=3.0, speaker="s",
                               voice="v", client=f"c{c:03d}", split="user_train", domain="user")
            utts.append(u)
            hyps[u.id] = ref if rng.random() < 0.1 else " ".join(w[:-1] or w for w in ref.split())
    return utts, hyps


@pytest.mark.parametrize("mode", R.LABEL_MODES)
def test_label_store_holds_no_reference_the_user_did_not_type(tmp_path, mode):
    utts, hyps = _synthetic()
    refs = {u.id: u.text for u in utts}
    recs = C.simulate_corrections(utts, hyps, C.CorrectionConfig(never_fraction=0.2))
    R.write_label_store(tmp_path / "s.jsonl", recs, mode)
    by_id = {r["id"]: r for r in recs}
    leaks_possible = 0
    for line in R.read_label_store(tmp_path / "s.jsonl"):
        r = by_id[line["id"]]
        typed = normalize_text(r["correction"]) if r["correction"] is not None else None
        assert line["label"] in ("", normalize_text(r["hypothesis"]), typed)
        if r["correction"] is None and r["hypothesis"] != refs[r["id"]]:
            leaks_possible += 1
            assert line["label"] != refs[r["id"]] and refs[r["id"]] not in json.dumps(line)
    assert leaks_possible > 50  # the check ran on many uncorrected wrong hypotheses


def test_clients_train_on_filtered_corrections_only(fake_corpus, fake_seed, tmp_path):
    """End to end through `fedasr.asr_task`: the batches a client trains on hold only kept corrections."""
    utts = data.load_corpus(fake_corpus)["user_train"]
    hyps = {u.id: u.text[:-1] + "x" for u in utts}  # every hypothesis wrong in its last letter
    cfg = C.CorrectionConfig(never_fraction=0.0, engagement_a=50.0, engagement_b=0.5, p_base=1.0, p_wrong=0.4)
    recs = C.simulate_corrections(utts, hyps, cfg)
    R.write_label_store(tmp_path / "s.jsonl", recs, "filtered")
    kept = R.filter_corrections(recs).kept
    refs = {u.id: u.text for u in utts}
    task = asr_task.make_asr_task({"corpus": str(fake_corpus), "seed_model": str(fake_seed / "model"),
                                   "labels": str(tmp_path / "s.jsonl"), "eval_splits": []})
    seen = {}
    for cid in task.client_ids():
        try:
            batches = task.client_batches(cid, micro_batch=4, seed=0)
        except R.ClientDeclined as e:  # the client declines only when its filter kept nothing
            assert e.client_id == cid and not R.filter_corrections([r for r in recs if r["client"] == cid]).kept
            continue
        for b in batches:
            seen.update(zip(b.ids, b.texts))
    assert seen and set(seen) <= set(kept)
    for uid, text in seen.items():
        assert text == kept[uid]
        r = next(r for r in recs if r["id"] == uid)
        assert text != refs[uid] or normalize_text(r["correction"]) == refs[uid]  # the user typed it


# --- client selection ---------------------------------------------------------------------------------

def test_client_selection_from_reported_counts():
    lines = R.label_store_lines([_rec("a", "x", "call", "c1"), _rec("b", "x", "set", "c1"), _rec("c", "x", None, "c2"),
                                 _rec("d", "x", "play", "c3")], "filtered")
    counts = R.correction_counts(lines)
    assert counts == {"c1": 2, "c2": 0, "c3": 1}
    assert R.eligible_clients(counts, 0) == ["c1", "c2", "c3"]
    assert R.eligible_clients(counts, 1) == ["c1", "c3"]
    assert R.eligible_clients(counts, 2) == ["c1"]
    assert R.eligible_clients(counts, 3) == []
    with pytest.raises(ValueError):
        R.eligible_clients(counts, -1)


# --- client statistics --------------------------------------------------------------------------------

def test_corrected_words_and_client_stats():
    assert R.corrected_words("call candy now", "call candice now") == {"candice": 1}
    assert R.corrected_words("a a b", "a a a c") == {"a": 1, "c": 1}
    lines = R.label_store_lines([_rec("a", "call candy now", "call candice now"),
                                 _rec("b", "tel canice", "tell candice"),
                                 _rec("c", "call mom", "👍"), _rec("d", "call mom", None)], "filtered")
    st = R.client_stats(lines, buckets=64)
    want = np.zeros(64, dtype=np.int64)
    for w in ("candice", "tell", "candice"):
        want[R.word_bucket(w, 64)] += 1
    assert np.array_equal(st.histogram, want)
    assert (st.utterances, st.corrections, st.kept, st.drops) == (4, 3, 2, {"non-text": 1})
    m = st.to_metrics()
    assert m["wca-hist"] == want.tolist() and m["wca-drop-non-text"] == 1
    assert all(isinstance(v, int) or (isinstance(v, list) and all(isinstance(x, int) for x in v)) for v in m.values())
    back = R.ClientStats.from_metrics(m, buckets=64)
    assert np.array_equal(back.histogram, st.histogram) and back.drops == st.drops and back.kept == 2
    with pytest.raises(ValueError, match="buckets"):
        R.ClientStats.from_metrics(m, buckets=32)
    for bad in ([-1] + [0] * 63, [math.nan] + [0] * 63, [0.5] + [0] * 63):
        with pytest.raises(ValueError):
            R.ClientStats.from_metrics({**m, "wca-hist": bad}, buckets=64)


def test_client_round_stats_declines_from_the_label_store():
    lines = R.label_store_lines([_rec("a", "call mom", "👍", "c1"), _rec("b", "call tom", None, "c1"),
                                 _rec("c", "call tom", None, "c2"), _rec("d", "tel canice", "tell candice", "c3")],
                                "filtered")
    with pytest.raises(R.ClientDeclined) as e:
        R.client_round_stats(lines, "c1")
    assert e.value.reason == "all-filtered" and e.value.counts == {"non-text": 1, "uncorrected": 1}
    with pytest.raises(R.ClientDeclined, match="no-corrections"):
        R.client_round_stats(lines, "c2")
    st = R.client_round_stats(lines, "c3", buckets=16)
    assert st.kept == 1 and st.histogram.sum() == 2  # "tell", "candice"


# --- WCA ----------------------------------------------------------------------------------------------

def _stats(*hists, kept=None):
    kept = kept or [1] * len(hists)
    return [R.ClientStats(10, k, k, np.array(h + [0] * (8 - len(h)), dtype=np.int64)) for h, k in zip(hists, kept)]


HISTS = ([2], [1, 1], [0, 0, 3])  # bucket 0 fixed by clients 1, 2; bucket 1 by 2 only; bucket 2 by 3 only
N = [4, 2, 3]


@pytest.mark.parametrize("method,kw,want", [
    ("examples", {}, [4, 2, 3]),
    ("uniform", {}, [1, 1, 1]),
    # K = 3: df = [2, 1, 1]; idf = 1 + ln(4/3), 1 + ln 2, 1 + ln 2
    ("frequency", {}, [4 * (1 + math.log(4 / 3)), 2 * (2 + math.log(4 / 3) + math.log(2)) / 2, 3 * (1 + math.log(2))]),
    ("frequency", {"power": 2.0}, [4 * (1 + math.log(4 / 3)) ** 2, 2 * ((2 + math.log(4 / 3) + math.log(2)) / 2) ** 2,
                                   3 * (1 + math.log(2)) ** 2]),
    # H = [3, 1, 3]: a_i = Σ h_i(b) ln(1 + H(b))
    ("frequency-common", {}, [2 * math.log(4), math.log(4) + math.log(2), 3 * math.log(4)]),
    ("corrections", {}, [2, 2, 3]),
    ("loss", {"losses": [1.0, 2.0, 0.5]}, [4.0, 4.0, 1.5]),
])
def test_wca_weights_hand_computed(method, kw, want):
    got = R.wca_weights(_stats(*HISTS), method, num_examples=N, **kw)
    assert got == pytest.approx(want, rel=1e-12)


def test_wca_frequency_prefers_clients_fixing_rare_words():
    # equal sizes; client 0 fixes its own name, clients 1-3 fix the same common word
    w = R.wca_weights(_stats([0, 0, 0, 1], [1], [1], [1]), "frequency", num_examples=[5, 5, 5, 5])
    assert w[0] > w[1] == w[2] == w[3]
    assert w[0] / w[1] == pytest.approx((1 + math.log(5 / 2)) / (1 + math.log(5 / 4)))
    # an empty histogram scores the minimum informativeness (s = 1): its weight is n_i
    assert R.wca_weights(_stats([], [1]), "frequency", num_examples=[3, 3])[0] == pytest.approx(3.0)


@pytest.mark.parametrize("method,kw,fallback", [
    ("frequency-common", {"num_examples": [4, 2, 3]}, [4, 2, 3]),  # every histogram empty: all zero
    ("corrections", {"num_examples": [4, 2, 3]}, [4, 2, 3]),
    ("loss", {"num_examples": [4, 2, 3], "losses": [1.0, math.nan, 2.0]}, [4, 2, 3]),
    ("loss", {"num_examples": [4, 2, 3], "losses": [1.0, math.inf, 2.0]}, [4, 2, 3]),
    ("examples", {"num_examples": [0, 0, 0]}, [1, 1, 1]),  # example counts unusable too: uniform
])
def test_wca_unusable_weights_fall_back_with_a_warning(caplog, method, kw, fallback):
    with caplog.at_level(logging.WARNING, logger="fedasr.refinement"):
        w = R.wca_weights(_stats([], [], []), method, **kw)
    assert w == fallback
    assert any("falling back" in r.getMessage() for r in caplog.records)


def test_wca_usable_weights_do_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="fedasr.refinement"):
        R.wca_weights(_stats(*HISTS), "corrections")
    assert not caplog.records
    assert R.wca_weights([], "frequency") == []
    with pytest.raises(ValueError, match="loss"):
        R.wca_weights(_stats(*HISTS), "loss")
    with pytest.raises(ValueError, match="unknown WCA"):
        R.wca_weights(_stats(*HISTS), "median")


# --- analysis and configuration -----------------------------------------------------------------------

def test_filter_report_counts_what_filtering_removed():
    recs = [_rec("a", "tel canice", "tell candice", kind="exact", oracle={"label_correct": True}),
            _rec("b", "play music", "buy a donut now", kind="wrong", oracle={"label_correct": False}),
            _rec("c", "call mom", "call mom 👍", kind="wrong", oracle={"label_correct": True}),
            _rec("d", "call tom", "call mam", kind="typo", oracle={"label_correct": False}),
            _rec("e", "call tom", None, kind="none", oracle={"label_correct": None})]
    rep = R.filter_report(recs)
    assert rep["by_kind"]["wrong"] == {"corrections": 2, "char-edit": 1, "non-text": 1}
    assert rep["wrong_removed"] == 1.0 and rep["incorrect_removed"] == 0.5
    assert rep["correct_kept"] == 0.5 and rep["precision"] == 0.5


def test_quality_ablation_config_loads_and_rejects_typos():
    from fedasr import experiments

    path = Path(__file__).parents[1] / "configs" / "quality" / "quick.toml"
    exp = config.load(experiments.QualityExperiment, path)
    assert list(exp.variants)[:2] == ["central_only", "no_refinement"] and list(exp.variants)[-1] == "wca_frequency"
    assert exp.variants["central_only"]["fed"]["central-mix"] == 1.0 and 0 < exp.fed.central_mix < 1
    assert exp.variants["no_refinement"]["labels"] == "hypotheses"
    assert exp.variants["wca_frequency"]["fed"]["weighting"] == "frequency"
    with pytest.raises(config.ConfigError, match="max-char-edt"):
        config.load(experiments.QualityExperiment, path, {"filter.max-char-edt": 0.5})
    with pytest.raises(config.ConfigError, match="labels"):
        config.load(experiments.QualityExperiment, path, {"variants.selection.labels": "median"})
