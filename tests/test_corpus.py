"""Tests of the TTS corpus generator: determinism, manifest contract, non-IID user domain, errors."""

import dataclasses
import hashlib
import itertools
import json
import shutil
import statistics
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from fedasr import corpus, corpus_audio
from fedasr.corpus import (
    PROFILES,
    SPLITS,  # the splits the generator makes
    CorpusError,
    Job,
    build_corpus,
    build_plan,
)
from fedasr.corpus_audio import Channel, apply_channel
from fedasr.corpus_text import USER_INTENTS, load_text_bank, make_client_text
from fedasr.data import (
    SAMPLE_RATE,
    is_normalized,
    load_audio,
    load_corpus,
    read_manifest,
)

USER_SPLITS = ("user_train", "user_heldout", "user_heldout_dev", "user_test", "user_dev")
PROXY_SPLITS = ("proxy_train", "proxy_dev", "proxy_test")

needs_debian = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="the generator needs Debian packages")


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_builds(tmp_path_factory):
    """The real tiny profile built twice (2 workers, then 1): about 25 s in all."""
    a, b = tmp_path_factory.mktemp("tiny_a"), tmp_path_factory.mktemp("tiny_b")
    build_corpus("tiny", a, seed=0, workers=2)
    build_corpus("tiny", b, seed=0, workers=1)
    return a, b


@pytest.fixture(scope="module")
def quick_plan():
    """The quick profile's plan (texts, voices, channels), no audio."""
    return build_plan(PROFILES["quick"], seed=0)


# ---------------------------------------------------------------- built corpus (tiny)


@needs_debian
def test_tiny_build_is_byte_identical(tiny_builds):
    a, b = tiny_builds
    ha, hb = _tree_hashes(a), _tree_hashes(b)
    assert ha.keys() == hb.keys()
    assert sum(k.endswith(".flac") for k in ha) > 250
    assert [k for k in ha if ha[k] != hb[k]] == []


@needs_debian
def test_tiny_manifests_and_audio_follow_the_contract(tiny_builds):
    root = tiny_builds[0]
    splits = load_corpus(root)
    assert set(splits) == set(SPLITS)
    ids = set()
    for split, utts in splits.items():
        assert utts, f"{split} is empty"
        for u in utts:
            assert u.split == split and u.id not in ids
            ids.add(u.id)
            assert Path(u.path) == root / "audio" / split / f"{u.id}.flac"
            assert is_normalized(u.text)
            x = load_audio(u)  # 16 kHz, mono, finite, non-empty (or DataError)
            assert abs(len(x) / SAMPLE_RATE - u.duration) < 1e-3
            assert 0 < np.abs(x).max() <= 1.0
            if u.domain == "user":
                assert u.client is not None and all(t in u.text for t in u.terms)
            else:
                assert u.client is None and u.terms == ()
    assert {u.voice for u in splits["real"]} == {"real:allison"}


@needs_debian
def test_tiny_corpus_json_records_counts_versions_and_hashes(tiny_builds):
    root = tiny_builds[0]
    record = json.loads((root / "corpus.json").read_text())
    assert record["profile"] == "tiny" and record["seed"] == 0 and record["generator_version"] == corpus.GENERATOR_VERSION
    for split in SPLITS:
        lines = (root / "manifests" / f"{split}.jsonl").read_text().splitlines()
        assert record["splits"][split]["utterances"] == len(lines)
        digest = hashlib.sha256((root / "manifests" / f"{split}.jsonl").read_bytes()).hexdigest()
        assert record["sha256"][f"manifests/{split}.jsonl"] == digest
    assert record["debian_packages"]["espeak-ng"] and record["python_packages"]["faker"]
    assert record["real_prompts"]["used"] == PROFILES["tiny"].real
    total = sum(s["utterances"] for s in record["splits"].values())
    assert 250 <= total <= 350


@needs_debian
def test_gap_breakdown_groups_every_utterance_by_its_planned_channel(tiny_builds, fake_seed):
    """tools/gap_breakdown.py on the real tiny corpus: clean + channel = all proxy_test utterances, the
    channel group is exactly the planned one, and every user group counts utterances without new terms."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gap_breakdown", Path(__file__).parents[1] / "tools" / "gap_breakdown.py")
    gap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gap)
    root = tiny_builds[0]
    report = gap.breakdown(fake_seed / "model", root, splits=("proxy_test", "user_test"))
    proxy, users = report["splits"]["proxy_test"], report["splits"]["user_test"]
    planned = build_plan(PROFILES["tiny"], 0).jobs["proxy_test"]
    assert proxy["all"]["utterances"] == PROFILES["tiny"].proxy_test
    assert proxy["channel"]["utterances"] == sum(j.channel is not None for j in planned) > 0
    assert proxy["clean"]["utterances"] + proxy["channel"]["utterances"] == proxy["all"]["utterances"]
    no_terms = sum(not u.terms for u in read_manifest(root / "manifests" / "user_test.jsonl"))
    assert users["no_terms"]["utterances"] == no_terms > 0
    assert sum(r["utterances"] for g, r in users.items() if g.startswith("band=")) == no_terms
    assert sum(r["utterances"] for g, r in users.items() if ",snr=" in g) == no_terms
    assert 0 < report["clients"]["with_channel"] <= report["clients"]["total"] == PROFILES["tiny"].seen_clients + \
        PROFILES["tiny"].unseen_clients
    assert all(r["wer"] >= 0 for split in report["splits"].values() for r in split.values())


def test_up_to_date_only_for_the_same_profile_sizes(tiny_builds, monkeypatch):
    root = tiny_builds[0]
    assert corpus.is_up_to_date(root, "tiny", seed=0)
    assert not corpus.is_up_to_date(root, "tiny", seed=1)
    import dataclasses
    bigger = dataclasses.replace(PROFILES["tiny"], proxy_train=PROFILES["tiny"].proxy_train + 1)
    monkeypatch.setitem(corpus.PROFILES, "tiny", bigger)
    assert not corpus.is_up_to_date(root, "tiny", seed=0)  # a resized profile rebuilds the corpus


# ---------------------------------------------------------------- plan: non-IID user domain


def _terms_by_client(plan):
    terms = defaultdict(set)
    for split in USER_SPLITS:
        for j in plan.jobs[split]:
            terms[j.client].update(j.terms)
    return terms


def test_user_voices_are_disjoint_from_server_voices(quick_plan):
    server = {j.voice_id for s in PROXY_SPLITS for j in quick_plan.jobs[s]}
    user = {j.voice_id for s in USER_SPLITS for j in quick_plan.jobs[s]}
    assert len(server) > 50 and len(user) >= 20
    assert server.isdisjoint(user)
    server_variants = {v.split("+")[1] for v in server if "+" in v}
    user_variants = {v.split("+")[1] for v in user if "+" in v}
    assert server_variants.isdisjoint(user_variants)


def test_each_client_has_one_voice_and_channel(quick_plan):
    by_client = defaultdict(set)
    for split in USER_SPLITS:
        for j in quick_plan.jobs[split]:
            by_client[j.client].add((j.speaker, j.voice_id, j.pitch, j.rate, j.channel))
    assert len(by_client) == len(quick_plan.clients) + len(quick_plan.dev_clients)
    assert all(len(v) == 1 for v in by_client.values())


def test_user_terms_never_occur_in_proxy_text(quick_plan):
    proxy_words = {w for s in PROXY_SPLITS for j in quick_plan.jobs[s] for w in j.text.split()}
    term_words = {w for terms in _terms_by_client(quick_plan).values() for t in terms for w in t.split()}
    assert len(term_words) > 500
    assert proxy_words.isdisjoint(term_words)
    assert proxy_words.isdisjoint(w for c in quick_plan.clients + quick_plan.dev_clients
                                  for name in c["contacts"] + c["places"]
                                  for w in name.split())


def test_terms_are_the_clients_own_names_and_places(quick_plan):
    clients = {c["id"]: c for c in quick_plan.clients + quick_plan.dev_clients}
    with_terms = 0
    for split in USER_SPLITS:
        for j in quick_plan.jobs[split]:
            c = clients[j.client]
            own = set(c["contacts"]) | set(c["places"]) | {n.split()[0] for n in c["contacts"]}
            assert set(j.terms) <= own
            assert all(f" {t} " in f" {j.text} " for t in j.terms)
            with_terms += bool(j.terms)
    assert 0.4 < with_terms / sum(len(quick_plan.jobs[s]) for s in USER_SPLITS) < 0.9


def test_client_term_sets_barely_overlap(quick_plan):
    sets = [s for s in _terms_by_client(quick_plan).values() if s]
    jaccard = [len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2)]
    assert statistics.mean(jaccard) < 0.01
    assert max(jaccard) < 0.5


def test_intent_mix_differs_between_clients(quick_plan):
    weights = np.array([[c["intent_weights"][i] for i in USER_INTENTS] for c in quick_plan.clients])
    assert np.allclose(weights.sum(axis=1), 1, atol=1e-4)
    assert weights.max(axis=1).mean() > 0.3  # Dirichlet(0.5): most clients favour a few intents
    assert weights.argmax(axis=1).tolist().count(0) < 0.5 * len(weights)


def test_unseen_clients_are_disjoint_and_seen_clients_have_heldout(quick_plan):
    clients = {s: {j.client for j in quick_plan.jobs[s]} for s in USER_SPLITS}
    assert clients["user_test"].isdisjoint(clients["user_train"] | clients["user_heldout"])
    assert clients["user_heldout"] == clients["user_train"]
    assert len(clients["user_test"]) == PROFILES["quick"].unseen_clients
    assert len(clients["user_train"]) == PROFILES["quick"].seen_clients
    assert clients["user_dev"].isdisjoint(clients["user_test"] | clients["user_train"])
    assert len(clients["user_dev"]) == PROFILES["quick"].dev_clients
    assert clients["user_heldout_dev"] == clients["user_train"]


def test_utterance_counts_are_long_tailed(quick_plan):
    p = PROFILES["quick"]
    counts = sorted(c["utterances"] for c in quick_plan.clients)
    assert p.utt_min <= counts[0] and counts[-1] <= p.utt_max
    assert statistics.mean(counts) > statistics.median(counts)  # right skew
    assert counts[int(0.95 * len(counts))] >= 2.5 * statistics.median(counts)
    assert len(set(counts)) > 20


# ---------------------------------------------------------------- dev splits (issue 18): nothing that existed changed

OLD_SPLITS = ("proxy_train", "proxy_dev", "proxy_test", "user_train", "user_heldout", "user_test", "real")
# sha256 of every job of the splits that existed before the dev splits (id, text, engine, voice, pitch, rate,
# channel, seed, speaker, client, terms) and every client record, computed with the generator as it was before them
# (commit 0b6b940: build_plan(PROFILES[name], 0), no real prompts; `_jobs_digest` below serialises them).
BEFORE_DEV_SPLITS = {"tiny": "5010805c3a24e2595b9f3f54688fc7e1f535e81b4bfe844140a6c8ba2830237c",
                     "quick": "88cd4aba2a459caa83580b90008fb52dad7fc73f551152013c43646d40e6e2a4",
                     "full": "823cff3e5519e10af822cfb16ae818e7a726ae903f9b94e44f011289abbd9cf5"}
TINY = Path(__file__).resolve().parents[1] / "data" / "tiny"


def _jobs_digest(plan) -> str:
    blob = json.dumps({"jobs": {s: [dataclasses.asdict(j) for j in plan.jobs[s]] for s in OLD_SPLITS},
                       "clients": plan.clients}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def test_dev_splits_change_no_job_or_client_of_the_other_splits(quick_plan):
    plans = {"quick": quick_plan, "tiny": build_plan(PROFILES["tiny"], 0), "full": build_plan(PROFILES["full"], 0)}
    for name, plan in plans.items():
        assert _jobs_digest(plan) == BEFORE_DEV_SPLITS[name], name
        assert len(plan.dev_clients) == PROFILES[name].dev_clients > 0 and plan.jobs["user_heldout_dev"]
    without = build_plan(dataclasses.replace(PROFILES["tiny"], dev_clients=0, heldout_dev_frac=0.0), 0)
    assert not (without.jobs["user_dev"] or without.jobs["user_heldout_dev"] or without.dev_clients)
    assert all(without.jobs[s] == plans["tiny"].jobs[s] for s in OLD_SPLITS) and without.clients == plans["tiny"].clients


def test_dev_splits_are_as_large_as_their_test_splits_and_follow_the_other_ids(quick_plan):
    p, jobs = PROFILES["quick"], quick_plan.jobs
    counts = {c["id"]: c["utterances"] for c in quick_plan.clients + quick_plan.dev_clients}
    n = p.seen_clients + p.unseen_clients
    assert [c["id"] for c in quick_plan.dev_clients] == [f"c{c:04d}" for c in range(n, n + p.dev_clients)]
    assert all(not c["seen"] for c in quick_plan.dev_clients)
    assert {j.client for j in jobs["user_dev"]} == {c["id"] for c in quick_plan.dev_clients}
    assert len(jobs["user_dev"]) == sum(c["utterances"] for c in quick_plan.dev_clients)
    assert 0.7 < len(jobs["user_dev"]) / len(jobs["user_test"]) < 1.4
    assert 0.8 < len(jobs["user_heldout_dev"]) / len(jobs["user_heldout"]) < 1.25
    assert all(int(j.id.rsplit("_", 1)[1]) >= counts[j.client] for j in jobs["user_heldout_dev"])  # after its others
    seen = {j.id for s in OLD_SPLITS for j in jobs[s]}
    assert seen.isdisjoint(j.id for s in ("user_dev", "user_heldout_dev") for j in jobs[s])
    # a seen client's dev utterances: its own voice, channel and names; new sentences, not copies of its others
    texts = defaultdict(set)
    for j in jobs["user_train"] + jobs["user_heldout"]:
        texts[j.client].add(j.text)
    fresh = sum(j.text not in texts[j.client] for j in jobs["user_heldout_dev"]) / len(jobs["user_heldout_dev"])
    assert fresh > 0.5


def _manifest_rows(path: Path) -> list[tuple]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(d["id"], d["path"], d["text"], d["speaker"], d["voice"], d["client"], d["split"], d["domain"],
             tuple(d["terms"])) for d in rows]


@pytest.mark.skipif(not (TINY / "corpus.json").exists(), reason="data/tiny manifests not present")
def test_committed_tiny_manifests_are_the_plan():
    """data/tiny's committed manifests (written before the dev splits, untouched since, but for the two dev
    manifests added) and users are exactly what the generator plans today, durations aside."""
    try:
        prompts = corpus_audio.asterisk_prompts()[0]
    except (OSError, StopIteration):  # no dpkg or no Asterisk prompts: the real split cannot be planned here
        prompts = []
    plan = build_plan(PROFILES["tiny"], 0, real_prompts=prompts)
    for split in SPLITS:
        if split == "real" and not prompts:
            continue
        planned = [(j.id, j.path, j.text, j.speaker, "real:allison" if j.engine == "real" else j.voice_id, j.client,
                    j.split, j.domain, j.terms) for j in plan.jobs[split]]
        assert _manifest_rows(TINY / "manifests" / f"{split}.jsonl") == planned, split
    assert json.loads((TINY / "clients.json").read_text()) == json.loads(json.dumps(plan.clients))
    assert json.loads((TINY / corpus.DEV_CLIENTS_FILE).read_text()) == json.loads(json.dumps(plan.dev_clients))
    record = json.loads((TINY / "corpus.json").read_text())
    assert corpus.Profile.from_record(record["sizes"]) == PROFILES["tiny"]
    assert all(hashlib.sha256((TINY / rel).read_bytes()).hexdigest() == h for rel, h in record["sha256"].items())


@needs_debian
def test_a_corpus_from_before_the_dev_splits_renders_only_them(tiny_builds, tmp_path, capsys):
    """`make data` on a corpus built before the dev splits keeps its audio and renders the dev splits alone;
    the result is byte for byte a fresh build. Anything else changed (sizes, seed) keeps nothing."""
    old = tmp_path / "old"
    shutil.copytree(tiny_builds[0], old)
    record = json.loads((old / "corpus.json").read_text())
    for key in ("dev_clients", "heldout_dev_frac"):
        del record["sizes"][key]
    for rel in ("manifests/user_dev.jsonl", "manifests/user_heldout_dev.jsonl", corpus.DEV_CLIENTS_FILE):
        (old / rel).unlink()
        del record["sha256"][rel]
    for split in ("user_dev", "user_heldout_dev"):
        shutil.rmtree(old / "audio" / split)
    (old / "corpus.json").write_text(json.dumps(record))
    assert not corpus.is_up_to_date(old, "tiny", seed=0)
    env = corpus_audio.check_requirements(False)
    assert corpus._rendered(old, dataclasses.replace(PROFILES["tiny"], proxy_test=31), 0, False, env) == {}
    assert corpus._rendered(old, PROFILES["tiny"], 1, False, env) == {}
    kept = min((old / "audio" / "user_train").glob("*.flac"))
    mtime = kept.stat().st_mtime_ns
    capsys.readouterr()
    build_corpus("tiny", old, seed=0, workers=2)
    plan = build_plan(PROFILES["tiny"], 0)
    n_dev = len(plan.jobs["user_dev"]) + len(plan.jobs["user_heldout_dev"])
    assert f": {n_dev} utterances to render" in capsys.readouterr().out
    assert kept.stat().st_mtime_ns == mtime
    assert _tree_hashes(old) == _tree_hashes(tiny_builds[0])
    assert corpus.is_up_to_date(old, "tiny", seed=0)


def test_seed_fingerprint_leaves_out_the_dev_splits_unless_the_seed_evaluates_them(tmp_path):
    """Adding the dev splits to a corpus keeps every committed seed's fingerprint (no retraining)."""
    from fedasr import train

    cfg = train.SeedConfig(corpus=str(tmp_path))
    sha = {f"manifests/{s}.jsonl": s for s in OLD_SPLITS} | {"clients.json": "c"}
    (tmp_path / "corpus.json").write_text(json.dumps({"sha256": sha}))
    before = train.seed_fingerprint(cfg)
    sha |= {"manifests/user_dev.jsonl": "d", "manifests/user_heldout_dev.jsonl": "h", corpus.DEV_CLIENTS_FILE: "u"}
    (tmp_path / "corpus.json").write_text(json.dumps({"sha256": sha}))
    assert train.seed_fingerprint(cfg) == before
    assert train.seed_fingerprint(dataclasses.replace(cfg, eval_splits=[*cfg.eval_splits, "user_dev"])) != before
    sha["manifests/proxy_train.jsonl"] = "changed"
    (tmp_path / "corpus.json").write_text(json.dumps({"sha256": sha}))
    assert train.seed_fingerprint(cfg) != before


# ---------------------------------------------------------------- text


def test_all_texts_are_normalised_and_proxy_vocabulary_is_moderate(quick_plan):
    assert all(is_normalized(j.text) for jobs in quick_plan.jobs.values() for j in jobs)
    types = quick_plan.stats["proxy_train_word_types"]
    assert 700 <= types <= 2000
    assert 0.05 < quick_plan.stats["user_oov_rate_vs_proxy_train"] < 0.4


def test_plan_depends_only_on_the_seed():
    tiny = PROFILES["tiny"]
    a, b, c = build_plan(tiny, 0), build_plan(tiny, 0), build_plan(tiny, 1)
    assert a.jobs == b.jobs and a.clients == b.clients
    assert [j.text for j in a.jobs["proxy_train"]] != [j.text for j in c.jobs["proxy_train"]]


def test_train_channel_frac_changes_only_the_training_channels():
    """Multi-condition training: more channels in proxy_train, same texts and voices; every other split
    (proxy dev/test, users, real) is the domain's own, untouched."""
    import dataclasses

    base = dataclasses.replace(PROFILES["tiny"], proxy_train=400)
    a, b = build_plan(base, 0), build_plan(dataclasses.replace(base, train_channel_frac=0.8), 0)
    share = [sum(j.channel is not None for j in p.jobs["proxy_train"]) / 400 for p in (a, b)]
    assert 0.1 < share[0] < 0.3 and 0.7 < share[1] < 0.9
    assert [(j.text, j.voice_id, j.pitch, j.rate) for j in a.jobs["proxy_train"]] == \
        [(j.text, j.voice_id, j.pitch, j.rate) for j in b.jobs["proxy_train"]]
    assert all(a.jobs[s] == b.jobs[s] for s in a.jobs if s != "proxy_train") and a.clients == b.clients


def test_train_extra_variants_add_server_voices_to_training_only():
    """More speakers in server training: extra espeak-ng variants appear in proxy_train only, never a user's
    variant; proxy dev/test, users and real are untouched; the profile survives corpus.json's JSON."""
    import dataclasses

    base = dataclasses.replace(PROFILES["tiny"], proxy_train=400)
    more = dataclasses.replace(base, train_extra_variants=corpus_audio.MORE_SERVER_VARIANTS)
    a, b = build_plan(base, 0), build_plan(more, 0)
    variants = [{j.voice.split("+")[1] for j in p.jobs["proxy_train"] if "+" in j.voice} for p in (a, b)]
    assert not variants[0] & set(corpus_audio.MORE_SERVER_VARIANTS)
    assert len(variants[1] & set(corpus_audio.MORE_SERVER_VARIANTS)) >= 5
    assert set(corpus_audio.MORE_SERVER_VARIANTS).isdisjoint(corpus_audio.USER_VARIANTS + corpus_audio.SERVER_VARIANTS)
    assert all(a.jobs[s] == b.jobs[s] for s in a.jobs if s != "proxy_train") and a.clients == b.clients
    record = json.loads(json.dumps(dataclasses.asdict(more)))
    assert corpus.Profile.from_record(record) == more
    del record["train_extra_variants"]  # a corpus.json written before the field existed
    assert corpus.Profile.from_record(record) == base


def test_client_names_reject_server_words():
    import random

    bank = load_text_bank()
    client = make_client_text(random.Random(3), "en_US", bank.lexicon)
    assert len(client.contacts) == 6 and len(client.places) == 7
    assert not {w for n in client.contacts + client.places for w in n.split()} & bank.lexicon
    assert "smith" in bank.lexicon and "london" in bank.lexicon and "call" in bank.lexicon


# ---------------------------------------------------------------- engines, channel, errors


@needs_debian
def test_asterisk_prompts_are_normalised_multi_word():
    prompts, missing = corpus_audio.asterisk_prompts()
    assert len(prompts) >= 270 and missing == 0
    assert all(len(t.split()) > 2 and is_normalized(t) and Path(w).exists() for _, t, w in prompts)
    keys = {k for k, _, _ in prompts}
    assert "pls-try-call-later" in keys


@needs_debian
@pytest.mark.parametrize("accent", sorted(set(corpus_audio.SERVER_ACCENTS) | set(corpus_audio.USER_ACCENTS)))
def test_espeak_variants_exist(accent, tmp_path):
    """espeak-ng silently falls back to the bare accent for an unknown variant: every variant must change the audio."""
    def render(voice):
        wav = tmp_path / "v.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), "--", "hello there"], check=True)
        return hashlib.sha256(wav.read_bytes()).hexdigest()

    variants = corpus_audio.SERVER_VARIANTS + corpus_audio.MORE_SERVER_VARIANTS + \
        (corpus_audio.USER_VARIANTS if accent in corpus_audio.USER_ACCENTS else ())
    digests = [render(accent)] + [render(f"{accent}+{v}") for v in variants]
    assert len(set(digests)) == len(digests)


def test_channel_mixes_noise_at_the_requested_snr():
    rng = np.random.default_rng(0)
    speech = np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    noisy = apply_channel(speech, Channel(noise="white", snr=10), rng)
    snr = 10 * np.log10(np.mean(speech ** 2) / np.mean((noisy - speech) ** 2))
    assert abs(snr - 10) < 0.1
    phone = apply_channel(np.random.default_rng(1).standard_normal(SAMPLE_RATE), Channel(band=(300, 3400)), rng)
    spectrum = np.abs(np.fft.rfft(phone)) ** 2
    freqs = np.fft.rfftfreq(SAMPLE_RATE, 1 / SAMPLE_RATE)
    assert spectrum[freqs > 5000].mean() < 0.01 * spectrum[(freqs > 500) & (freqs < 3000)].mean()


def test_missing_engine_stops_before_synthesis(monkeypatch, tmp_path):
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "flite" else which(name, *a, **k))
    if which("dpkg-query") is None:
        pytest.skip("needs dpkg-query")
    with pytest.raises(CorpusError, match=r"flite.*\n.*apt-get install -y .*flite"):
        build_corpus("tiny", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        corpus.cli_main(["--profile", "tiny", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2


@needs_debian
def test_tts_failure_names_the_utterance(tmp_path):
    corpus_audio.init_worker(str(tmp_path), str(tmp_path), {})
    (tmp_path / "audio" / "proxy_train").mkdir(parents=True)
    job = Job("proxy_train_000007", "proxy_train", "call emma", "espeak", "zzz-not-a-voice", 50, 160, None, 1, "x")
    with pytest.raises(CorpusError, match="proxy_train_000007.*espeak:zzz-not-a-voice"):
        corpus_audio._render(job, None)


def test_text_is_passed_verbatim_to_the_engine(quick_plan, tmp_path):
    for job in quick_plan.jobs["proxy_train"][:50]:
        if job.engine in ("espeak", "flite"):
            cmd = corpus_audio._tts_command(job, tmp_path / "x.wav")
            assert job.text in cmd and (job.engine != "espeak" or cmd[-2:] == ["--", job.text])
