"""fedasr.corpus_stats and fedasr.plotting_data: the numbers notebook 00_data shows, on hand-made corpora."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedasr import corpus_stats as cs
from fedasr import data
from fedasr import plotting_data as pdt
from fedasr.corpus_audio import Channel

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny"


def _u(id, text, split, client=None, voice="espeak:en-us+m1", duration=1.0, terms=()):
    domain = split.split("_")[0]
    return data.Utterance(id=id, path=f"/nowhere/{id}.flac", text=text, duration=duration,
                          speaker=f"{client or ''}:{voice}", voice=voice, client=client, split=split, domain=domain,
                          terms=tuple(terms))


@pytest.fixture
def corpus():
    """Server: 'call mom now' / 'set a timer'; two seen clients and one unseen."""
    return {
        "proxy_train": [_u("p0", "call mom now", "proxy_train", voice="flite:slt", duration=2.0),
                        _u("p1", "set a timer", "proxy_train", voice="espeak:en-029+m1", duration=4.0)],
        "user_train": [_u("a0", "call zelda now", "user_train", "ca", "espeak:en-029+m2", 1.0, ["zelda"]),
                       _u("a1", "call zelda", "user_train", "ca", "espeak:en-029+m2", 3.0, ["zelda"]),
                       _u("a2", "set a timer", "user_train", "ca", "espeak:en-029+m2", 2.0),
                       _u("b0", "navigate to port quill", "user_train", "cb", "espeak:en-us-nyc+f2", 2.5,
                          ["port quill"])],
        "user_heldout": [_u("a3", "set a timer", "user_heldout", "ca", "espeak:en-029+m2", 1.5)],
        "user_test": [_u("c0", "call mom", "user_test", "cc", "espeak:en-029+f4", 1.0)],
    }


def test_new_terms_are_exactly_the_client_words_missing_from_server_text():
    got = cs.new_terms({"ca": ["call zelda now", "text zelda"], "cb": ["call mom"], "cc": []},
                       ["call mom now", "text dad"])
    assert got == {"ca": ["zelda"], "cb": [], "cc": []}


def test_client_new_terms_splits_planned_terms_from_other_new_words(corpus):
    rows = {r["client"]: r for r in cs.client_new_terms(corpus)}
    assert rows["ca"]["new_terms"] == ["zelda"] and rows["ca"]["planned_terms"] == ["zelda"]
    assert rows["ca"]["other_new"] == [] and rows["ca"]["utterances"] == 4  # heldout counts too
    assert rows["cb"]["new_terms"] == ["navigate", "port", "quill", "to"]
    assert rows["cb"]["other_new"] == ["navigate", "to"]  # ordinary words the server text lacks
    assert rows["cc"]["new_terms"] == [] and rows["cc"]["word_types"] == 2


def test_vocabulary_overlap_counts_types_and_tokens(corpus):
    v = cs.vocabulary_overlap(corpus)
    # server {call mom now set a timer}; user {call zelda now set a timer navigate to port quill mom}
    assert (v["server_types"], v["user_types"], v["shared_types"], v["user_only_types"]) == (6, 11, 6, 5)
    assert v["user_tokens"] == 3 + 2 + 3 + 4 + 3 + 2
    assert v["user_only_tokens"] == 2 + 4  # zelda twice; navigate to port quill
    assert v["user_oov_rate"] == round(6 / 17, 4)
    assert v["top_user_only"][:2] == [{"word": "zelda", "count": 2}, {"word": "navigate", "count": 1}]


def test_client_sizes_count_each_split_and_sort_largest_first(corpus):
    rows = cs.client_sizes(corpus)
    assert [r["client"] for r in rows] == ["ca", "cb", "cc"]
    assert rows[0] | {} == {"client": "ca", "seen": True, "train": 3, "heldout": 1, "heldout_dev": 0, "test": 0,
                            "dev": 0, "total": 4, "seconds": 7.5, "voice": "espeak:en-029+m2"}
    assert rows[2]["seen"] is False and rows[2]["test"] == 1
    corpus = dict(corpus) | {"user_dev": [_u("d0", "call mom", "user_dev", "cd", "espeak:en-029+f2", 1.0)],
                             "user_heldout_dev": [_u("b1", "call dad", "user_heldout_dev", "cb", duration=1.0)]}
    rows = {r["client"]: r for r in cs.client_sizes(corpus)}
    assert rows["cd"]["seen"] is False and rows["cd"]["dev"] == 1  # user_dev's users never train
    assert rows["cb"]["seen"] is True and (rows["cb"]["heldout_dev"], rows["cb"]["total"]) == (1, 2)


@pytest.mark.skipif(not (TINY / "corpus.json").exists(), reason="data/tiny manifests not present")
def test_load_clients_reads_the_dev_users_too():
    clients = cs.load_clients(TINY)
    record = json.loads((TINY / "corpus.json").read_text())
    assert len(clients) == sum(record["clients"].values())
    dev = {u.client for u in data.load_corpus(TINY, ["user_dev"])["user_dev"]}
    assert dev and all(clients[c]["seen"] is False for c in dev)


def test_long_tail_share_of_the_largest_tenth():
    t = cs.long_tail([10] + [1] * 9)
    assert t == {"clients": 10, "min": 1, "median": 1.0, "mean": 1.9, "max": 10, "top_tenth_clients": 1,
                 "top_tenth_share": round(10 / 19, 3)}
    assert cs.long_tail([3, 1])["top_tenth_clients"] == 1
    with pytest.raises(ValueError):
        cs.long_tail([])


def test_engine_and_voice_tables(corpus):
    assert cs.voice_parts("espeak:en-gb-x-rp+Annie") == ("espeak", "en-gb-x-rp", "Annie")
    assert cs.voice_parts("festival:kal_diphone") == ("festival", None, "kal_diphone")
    eng = cs.engine_table(corpus)
    assert [(r["domain"], r["engine"], r["utterances"]) for r in eng] == [
        ("proxy", "espeak", 1), ("proxy", "flite", 1), ("user", "espeak", 6)]
    assert eng[0]["share"] == 0.5 and eng[2]["voices"] == 3 and eng[2]["hours"] == round(11 / 3600, 3)
    users = cs.voice_table(corpus, "user")
    assert [(r["voice"], r["clients"], r["utterances"]) for r in users] == [
        ("espeak:en-029+f4", 1, 1), ("espeak:en-029+m2", 1, 4), ("espeak:en-us-nyc+f2", 1, 1)]
    pools = {(r["pool"], r["engine"]): r for r in cs.voice_pools()}
    server, user = pools[("server", "espeak")]["voices"].split(", "), pools[("user", "espeak")]["voices"].split(", ")
    assert not set(server) & set(user)  # no user voice is heard in server data


def test_duration_percentiles():
    c = {"real": [_u(f"r{i}", "a b c", "real", duration=float(d)) for i, d in enumerate(range(1, 12))]}
    (row,) = cs.duration_stats(c)
    assert row == {"split": "real", "utterances": 11, "p10_s": 2.0, "median_s": 6.0, "p90_s": 10.0,
                   "mean_s": 6.0, "max_s": 11.0}


def test_channel_words_and_conditions():
    room = Channel(rt60=0.3, room=(4, 4, 2.8), source=(1, 1, 1.5), mic=(3, 3, 1), band=(300, 3400), noise="white",
                   snr=10, gain=0.5)
    assert cs.channel_conditions(room) == ("room", "band-limit", "noise")
    assert cs.channel_label(room) == "room RT60 0.3 s, band 300-3400 Hz, white noise at 10 dB"
    assert cs.channel_conditions(None) == () and cs.channel_label(None) == "clean"
    gain_only = {"rt60": 0.0, "band": None, "noise": None, "snr": None, "gain": 0.4}
    assert cs.channel_conditions(gain_only) == () and cs.channel_label(gain_only) == "clean"


def test_channel_summary_counts_clients_and_proxy_utterances():
    clean = {"rt60": 0.0, "band": None, "noise": None, "snr": None}
    clients = {"a": {"channel": clean}, "b": {"channel": clean | {"band": [300, 3400], "noise": "white", "snr": 5}},
               "c": {"channel": clean | {"rt60": 0.6, "noise": "vinyl_hiss", "snr": 20}},
               "d": {"channel": clean | {"noise": "white", "snr": 20}}}
    proxy = {"p0": None, "p1": None, "p2": None, "p3": Channel(band=(100, 7000))}
    rows = {(r["factor"], r["value"]): r for r in cs.channel_summary(clients, proxy)}
    assert rows[("any channel", "yes")]["clients"] == 3 and rows[("any channel", "no")]["proxy_utterances"] == 3
    assert rows[("noise SNR", "20 dB")]["clients"] == 2 and rows[("noise SNR", "20 dB")]["clients_share"] == 0.5
    assert rows[("noise type", "white")]["clients"] == 2 and rows[("room", "RT60 0.6 s")]["clients"] == 1
    assert rows[("band-limit", "100-7000 Hz")] | {} == {"factor": "band-limit", "value": "100-7000 Hz", "clients": 0,
                                                       "clients_share": 0.0, "proxy_utterances": 1,
                                                       "proxy_share": 0.25}
    snr = [r["value"] for r in cs.channel_summary(clients) if r["factor"] == "noise SNR"]
    assert snr == ["none", "5 dB", "20 dB"]  # "none" first, then numerically (not "20" before "5")
    assert "proxy_utterances" not in cs.channel_summary(clients)[0]


def test_pick_examples_matches_conditions_and_prefers_other_clients(corpus):
    clean = {"rt60": 0.0, "band": None, "noise": None, "snr": None}
    clients = {"ca": {"channel": clean | {"noise": "white", "snr": 10}},
               "cb": {"channel": clean | {"noise": "white", "snr": 5, "band": [300, 3400]}}, "cc": {"channel": clean}}
    proxy = {"p0": None, "p1": Channel(rt60=0.6, room=(4, 4, 2.8), source=(1, 1, 1.5), mic=(3, 3, 1))}
    rows = cs.pick_examples(corpus, clients, proxy, per_group=2)
    got = {}
    for r in rows:
        got.setdefault((r["domain"], r["condition"]), []).append(r["id"])
    assert got[("proxy", "clean")] == ["p0"] and got[("proxy", "room")] == ["p1"]
    assert got[("user", "clean")] == ["c0"]
    assert got[("user", "band-limit")] == ["b0"]  # the only band-limited client
    assert got[("user", "noise")] == ["a0", "a1"]  # noise alone first; b0 (another client) was taken already
    assert ("user", "room") not in got and ("proxy", "noise") not in got
    assert next(r for r in rows if r["id"] == "b0")["channel"] == "band 300-3400 Hz, white noise at 5 dB"


def test_log_mel_uses_the_project_front_end(fake_corpus):
    utts = data.load_corpus(fake_corpus, ["proxy_dev"])["proxy_dev"][:2]
    feats = cs.log_mel(utts)
    for u, f in zip(utts, feats):
        assert f.shape == (len(data.load_audio(u)) // 160 + 1, 80) and np.isfinite(f).all()


@pytest.mark.skipif(not (TINY / "corpus.json").exists(), reason="data/tiny manifests not present")
def test_proxy_channels_replan_the_tiny_corpus_and_refuse_a_stale_one(tmp_path):
    channels = cs.proxy_channels(TINY)
    record = json.loads((TINY / "corpus.json").read_text())
    assert len(channels) == sum(record["splits"][s]["utterances"] for s in ("proxy_train", "proxy_dev", "proxy_test"))
    share = sum(c is not None for c in channels.values()) / len(channels)
    assert 0.05 < share < 0.4  # the tiny profile gives about proxy_channel_frac = 0.2 of them a channel
    shutil.copy(TINY / "corpus.json", tmp_path / "corpus.json")
    shutil.copytree(TINY / "manifests", tmp_path / "manifests")
    lines = (tmp_path / "manifests" / "proxy_dev.jsonl").read_text().splitlines()
    first = json.loads(lines[0]) | {"text": "a different sentence"}
    (tmp_path / "manifests" / "proxy_dev.jsonl").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match="make data"):
        cs.proxy_channels(tmp_path)


def test_markdown_table_and_audio_table(fake_corpus):
    md = pdt.markdown_table([{"a": 1, "b": [("x", 2), ("y", 1)], "c": None}, {"a": 0.25, "b": ["p|q"], "c": True}],
                            caption="T")
    assert md.splitlines() == ["T", "", "| a | b | c |", "|---|---|---|", "| 1 | x 2, y 1 |  |",
                               "| 0.25 | p/q | True |"]
    assert pdt.markdown_table([]) == "(none)"
    utts = data.load_corpus(fake_corpus, ["proxy_dev"])["proxy_dev"][:2]
    html = pdt.audio_table([{"domain": "proxy", "text": "<b>", "utterance": u} for u in utts])
    assert html.count("<audio") == 2 and "data:audio/wav;base64," in html and "&lt;b&gt;" in html


def test_figures_write_pngs(fake_corpus, tmp_path):
    corpus = data.load_corpus(fake_corpus)
    rows = cs.client_sizes(corpus)
    outs = [pdt.client_sizes(rows, tmp_path / "sizes.png"), pdt.durations(corpus, tmp_path / "d" / "dur.png"),
            pdt.log_mel_spectrograms([{"domain": "proxy", "condition": "clean", "voice": "v", "channel": "clean"}] * 2,
                                     [np.zeros((50, 80)), np.ones((30, 80))], tmp_path / "lm.png")]
    for out in outs:
        assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"
