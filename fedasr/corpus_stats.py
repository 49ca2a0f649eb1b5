"""The corpus as a person meets it: voices, clients, durations, channels and new terms (notebook 00_data).

Plain functions returning rows (lists of dicts) or dicts that the notebook shows and `fedasr.plotting_data`
draws, from the manifests (`fedasr.data.load_corpus`), ``clients.json`` and ``clients_dev.json`` (each user's
voice, channel, names, places; the second file: the user_dev split's users) and, for the proxy channels the manifests do not record, the plan `fedasr.corpus.build_plan` re-makes
from ``corpus.json``. Per-split counts, hours and vocabulary sizes are `fedasr.data.summarize_corpus`'s.
"Server text" is the ``proxy_train`` transcripts unless a function is told otherwise: the seed model's.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from fedasr import corpus as corpus_lib
from fedasr import features
from fedasr.corpus_audio import (FESTIVAL_VOICES, FLITE_VOICES, SERVER_ACCENTS, SERVER_VARIANTS, USER_ACCENTS,
                                 USER_VARIANTS, Channel)
from fedasr.data import DOMAINS, SPLITS, Utterance, load_audio, load_corpus

__all__ = ["SERVER_SPLITS", "USER_SPLITS", "UNSEEN_SPLITS", "CONDITIONS", "load_clients", "voice_parts", "engine_table",
           "voice_table", "voice_pools", "client_sizes", "long_tail", "duration_stats", "channel_conditions",
           "channel_label", "proxy_channels", "channel_summary", "new_terms", "vocabulary_overlap",
           "client_new_terms", "pick_examples", "log_mel"]

SERVER_SPLITS = ("proxy_train",)  # the server's text: what the seed model is trained on
USER_SPLITS = ("user_train", "user_heldout", "user_heldout_dev", "user_test", "user_dev")  # seen clients', then unseen
UNSEEN_SPLITS = ("user_test", "user_dev")  # clients that never train
CONDITIONS = ("clean", "room", "band-limit", "noise")  # a channel has any of the last three, or none

Corpus = Mapping[str, Sequence[Utterance]]  # split -> utterances, as `fedasr.data.load_corpus` returns


def load_clients(root: str | Path) -> dict[str, dict]:
    """Read ``<root>/clients.json`` (and ``clients_dev.json``, where the generator wrote user_dev's users): client
    id -> its voice, pitch, rate, channel, names, places, intent mix."""
    files = [Path(root) / name for name in ("clients.json", corpus_lib.DEV_CLIENTS_FILE)]
    return {c["id"]: c for f in files if f.exists() for c in json.loads(f.read_text())}


def _utterances(corpus: Corpus, splits: Iterable[str] = SPLITS) -> list[Utterance]:
    return [u for s in splits for u in corpus.get(s, ())]


# ---------------------------------------------------------------- voices and engines


def voice_parts(voice: str) -> tuple[str, str | None, str]:
    """Split a voice id into ``(engine, accent, variant)``: ``"espeak:en-029+m2"`` -> ``("espeak", "en-029",
    "m2")``; voices of other engines have no accent (``"flite:slt"`` -> ``("flite", None, "slt")``)."""
    engine, _, name = voice.partition(":")
    accent, _, variant = name.rpartition("+")
    return engine, accent or None, variant


def engine_table(corpus: Corpus) -> list[dict]:
    """One row per domain and engine: voices, speakers (voice + pitch + rate), utterances, hours, share."""
    groups: dict[tuple[str, str], list[Utterance]] = defaultdict(list)
    for u in _utterances(corpus):
        groups[(u.domain, voice_parts(u.voice)[0])].append(u)
    per_domain = Counter(u.domain for u in _utterances(corpus))
    return [{"domain": d, "engine": e, "voices": len({u.voice for u in us}), "speakers": len({u.speaker for u in us}),
             "utterances": len(us), "hours": round(sum(u.duration for u in us) / 3600, 3),
             "share": round(len(us) / per_domain[d], 3)}
            for (d, e), us in sorted(groups.items(), key=lambda kv: (DOMAINS.index(kv[0][0]), kv[0][1]))]


def voice_table(corpus: Corpus, domain: str | None = None) -> list[dict]:
    """One row per voice (of ``domain``, or all): engine, accent, variant, domains, utterances, hours, clients."""
    groups: dict[str, list[Utterance]] = defaultdict(list)
    for u in _utterances(corpus):
        if domain is None or u.domain == domain:
            groups[u.voice].append(u)
    return [dict(zip(("voice", "engine", "accent", "variant"), (v, *voice_parts(v))),
                 domains="+".join(sorted({u.domain for u in us})), utterances=len(us),
                 hours=round(sum(u.duration for u in us) / 3600, 3), clients=len({u.client for u in us} - {None}))
            for v, us in sorted(groups.items())]


def voice_pools() -> list[dict]:
    """The pools the generator draws voices from (`fedasr.corpus_audio`): the server's and the users' espeak-ng
    variants are disjoint, so no user voice is heard in server data; flite and festival voices are server-only."""
    pools = [("server", "espeak", SERVER_ACCENTS, SERVER_VARIANTS), ("server", "flite", (), tuple(FLITE_VOICES)),
             ("server", "festival", (), FESTIVAL_VOICES), ("user", "espeak", USER_ACCENTS, USER_VARIANTS)]
    return [{"pool": p, "engine": e, "accents": ", ".join(a), "voices": ", ".join(v), "count": max(len(a), 1) * len(v)}
            for p, e, a, v in pools]


# ---------------------------------------------------------------- clients and durations


def client_sizes(corpus: Corpus, clients: Mapping[str, dict] | None = None) -> list[dict]:
    """One row per client, largest first: seen, utterances in each user split, total, seconds, voice (and,
    given ``clients``, its locale and channel in words)."""
    by_client: dict[str, list[Utterance]] = defaultdict(list)
    for u in _utterances(corpus, USER_SPLITS):
        by_client[u.client].append(u)
    info = {c: clients[c] if clients and c in clients else {} for c in by_client}
    rows = [{"client": c, "seen": info[c].get("seen", any(u.split not in UNSEEN_SPLITS for u in us)),
             **{s.removeprefix("user_"): sum(u.split == s for u in us) for s in USER_SPLITS},
             "total": len(us), "seconds": round(sum(u.duration for u in us), 1), "voice": us[0].voice}
            | ({"locale": info[c]["locale"], "channel": channel_label(info[c]["channel"])} if info[c] else {})
            for c, us in by_client.items()]
    return sorted(rows, key=lambda r: (-r["total"], r["client"]))


def long_tail(sizes: Sequence[int]) -> dict:
    """How skewed the client sizes are: min, median, mean, max, and the share of all utterances that the
    largest tenth of the clients (at least one client) holds."""
    if not sizes:
        raise ValueError("long_tail needs at least one client size")
    ordered = sorted(sizes, reverse=True)
    top = ordered[: max(1, round(len(ordered) / 10))]
    return {"clients": len(ordered), "min": ordered[-1], "median": statistics.median(ordered),
            "mean": round(statistics.fmean(ordered), 2), "max": ordered[0],
            "top_tenth_clients": len(top), "top_tenth_share": round(sum(top) / sum(ordered), 3)}


def duration_stats(corpus: Corpus) -> list[dict]:
    """One row per split: utterances and the 10th/50th/90th percentile, mean and max duration in seconds."""
    rows = []
    for split in SPLITS:
        d = np.array([u.duration for u in corpus.get(split, ())])
        if d.size:
            p10, p50, p90 = np.percentile(d, [10, 50, 90])
            rows.append({"split": split, "utterances": int(d.size), "p10_s": round(float(p10), 2),
                         "median_s": round(float(p50), 2), "p90_s": round(float(p90), 2),
                         "mean_s": round(float(d.mean()), 2), "max_s": round(float(d.max()), 2)})
    return rows


# ---------------------------------------------------------------- channels


def _as_dict(ch: Channel | Mapping | None) -> dict | None:
    return asdict(ch) if isinstance(ch, Channel) else (dict(ch) if ch is not None else None)


def channel_conditions(ch: Channel | Mapping | None) -> tuple[str, ...]:
    """Which of ``"room"``, ``"band-limit"``, ``"noise"`` a channel (a `Channel`, its ``clients.json`` dict, or
    None) applies; ``()`` is clean speech (gain alone changes nothing a log-mel model cares about)."""
    ch = _as_dict(ch) or {}
    return tuple(name for name, key in (("room", "rt60"), ("band-limit", "band"), ("noise", "noise")) if ch.get(key))


def channel_label(ch: Channel | Mapping | None) -> str:
    """A channel in words: ``"room RT60 0.3 s, band 300-3400 Hz, white noise at 10 dB"`` or ``"clean"``."""
    ch = _as_dict(ch) or {}
    parts = [f"room RT60 {ch['rt60']} s" if ch.get("rt60") else "",
             f"band {ch['band'][0]}-{ch['band'][1]} Hz" if ch.get("band") else "",
             f"{ch['noise']} noise at {ch['snr']:g} dB" if ch.get("noise") else ""]
    return ", ".join(p for p in parts if p) or "clean"


def proxy_channels(root: str | Path) -> dict[str, Channel | None]:
    """Utterance id -> channel of every proxy utterance, re-planned from the profile and seed in ``corpus.json``
    (deterministic; checked against the manifests' texts and voices). Raises ValueError for a corpus that the
    current generator would plan differently (rebuild it with ``make data``)."""
    root = Path(root)
    record = json.loads((root / "corpus.json").read_text())
    if "source" in record:  # an imported corpus (fedasr.importers): recordings, no simulated channel
        return {}
    plan = corpus_lib.build_plan(corpus_lib.Profile.from_record(record["sizes"]), record["seed"])
    jobs = {j.id: j for s in ("proxy_train", "proxy_dev", "proxy_test") for j in plan.jobs[s]}
    corpus = _utterances(load_corpus(root, ("proxy_train", "proxy_dev", "proxy_test")), SPLITS)
    stale = [u.id for u in corpus if u.id not in jobs or (jobs[u.id].text, jobs[u.id].voice_id) != (u.text, u.voice)]
    if stale:
        raise ValueError(f"{root}: {len(stale)} proxy utterances (e.g. {stale[0]}) differ from what this generator "
                         f"plans for its profile and seed: rebuild the corpus with `make data`")
    return {u.id: jobs[u.id].channel for u in corpus}


_FACTORS = ("any channel", "room", "band-limit", "noise SNR", "noise type")


def _factors(ch: Channel | Mapping | None) -> list[tuple[str, str]]:
    ch = _as_dict(ch) or {"rt60": 0.0, "band": None, "noise": None, "snr": None}
    return [("any channel", "yes" if channel_conditions(ch) else "no"),
            ("room", f"RT60 {ch['rt60']} s" if ch["rt60"] else "none"),
            ("band-limit", f"{ch['band'][0]}-{ch['band'][1]} Hz" if ch["band"] else "none"),
            ("noise SNR", f"{ch['snr']:g} dB" if ch["noise"] else "none"), ("noise type", ch["noise"] or "none")]


def _order(key: tuple[str, str]) -> tuple:
    """Factor order, then "none"/"no" first, then by the number in the value (RT60, band, SNR), then by name."""
    number = re.match(r"(?:RT60 )?(\d+(?:\.\d+)?)\b", key[1])
    return _FACTORS.index(key[0]), key[1] not in ("none", "no"), float(number.group(1)) if number else 0.0, key[1]


def channel_summary(clients: Mapping[str, dict], proxy: Mapping[str, Channel | None] | None = None) -> list[dict]:
    """How many clients (and, given ``proxy``, proxy utterances) have any channel, and each room, band-limit
    and noise setting, with shares; one row per (factor, value)."""
    counts = {"clients": Counter(f for c in clients.values() for f in _factors(c["channel"])),
              "proxy": Counter(f for ch in (proxy or {}).values() for f in _factors(ch))}
    totals = {"clients": max(len(clients), 1), "proxy": max(len(proxy or {}), 1)}
    rows = []
    for key in sorted(set(counts["clients"]) | set(counts["proxy"]), key=_order):
        row = {"factor": key[0], "value": key[1]}
        for who, name in (("clients", "clients"), ("proxy", "proxy_utterances")):
            if who == "clients" or proxy is not None:
                row |= {name: counts[who][key], f"{who}_share": round(counts[who][key] / totals[who], 3)}
        rows.append(row)
    return rows


# ---------------------------------------------------------------- vocabulary and new terms


def new_terms(client_texts: Mapping[str, Iterable[str]], server_texts: Iterable[str]) -> dict[str, list[str]]:
    """Each client's new terms: the words of its texts that occur nowhere in ``server_texts``, sorted."""
    server = {w for t in server_texts for w in t.split()}
    return {c: sorted({w for t in texts for w in t.split()} - server) for c, texts in client_texts.items()}


def vocabulary_overlap(corpus: Corpus, server_splits: Sequence[str] = SERVER_SPLITS,
                       user_splits: Sequence[str] = USER_SPLITS, top: int = 15) -> dict:
    """Server vs user vocabulary: word types of each, shared, user-only; the user word tokens the server text
    never has (count and rate); and the ``top`` most frequent user-only words with their counts."""
    server = Counter(w for u in _utterances(corpus, server_splits) for w in u.text.split())
    user = Counter(w for u in _utterances(corpus, user_splits) for w in u.text.split())
    user_only = Counter({w: n for w, n in user.items() if w not in server})
    tokens, ranked = sum(user.values()), sorted(user_only.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {"server_types": len(server), "user_types": len(user), "shared_types": len(user.keys() & server.keys()),
            "user_only_types": len(user_only), "user_tokens": tokens, "user_only_tokens": sum(user_only.values()),
            "user_oov_rate": round(sum(user_only.values()) / max(tokens, 1), 4),
            "top_user_only": [{"word": w, "count": n} for w, n in ranked]}


def client_new_terms(corpus: Corpus, clients: Mapping[str, dict] | None = None,
                     server_splits: Sequence[str] = SERVER_SPLITS,
                     user_splits: Sequence[str] = USER_SPLITS) -> list[dict]:
    """One row per client: utterances, word types, its new terms (`new_terms` against the server text), the
    planned terms its utterances carry (contacts and places, manifest ``terms``), and the new terms that are
    not part of a planned term (ordinary words the server text happens to lack)."""
    texts: dict[str, list[str]] = defaultdict(list)
    planned: dict[str, set[str]] = defaultdict(set)
    for u in _utterances(corpus, user_splits):
        texts[u.client].append(u.text)
        planned[u.client].update(u.terms)
    new = new_terms(texts, (u.text for u in _utterances(corpus, server_splits)))
    return [{"client": c, "seen": clients[c]["seen"] if clients and c in clients else None,
             "utterances": len(texts[c]), "word_types": len({w for t in texts[c] for w in t.split()}),
             "new_terms": new[c], "planned_terms": sorted(planned[c]),
             "other_new": [w for w in new[c] if w not in {x for t in planned[c] for x in t.split()}]}
            for c in sorted(texts)]


# ---------------------------------------------------------------- examples to hear and see


def _channel_of(u: Utterance, clients: Mapping[str, dict], proxy: Mapping[str, Channel | None]):
    return clients[u.client]["channel"] if u.client is not None else proxy.get(u.id)


def _pick(cands: Sequence[Utterance], n: int, used: set[str]) -> list[Utterance]:
    """The first ``n`` of ``cands``: a new client (or TTS engine) with an utterance no earlier group took, then
    any utterance not taken before, then repeats."""
    chosen: list[Utterance] = []
    keys: set[str] = set()
    for tier in (2, 1, 0):
        for u in cands:
            key = u.client or voice_parts(u.voice)[0]
            fresh = (tier == 0 or u.id not in used) and (tier < 2 or key not in keys)
            if len(chosen) < n and u not in chosen and fresh:
                chosen.append(u)
                keys.add(key)
    used.update(u.id for u in chosen)
    return chosen


def pick_examples(corpus: Corpus, clients: Mapping[str, dict], proxy: Mapping[str, Channel | None],
                  per_group: int = 2) -> list[dict]:
    """Up to ``per_group`` utterances per domain and condition (`CONDITIONS`; real speech is one group).

    In a group, utterances whose channel has the fewest other effects come first (a room alone, where there
    is one), then by id; `_pick` prefers other clients (user) or TTS engines (proxy) and fresh utterances.
    Rows: domain, condition, id, voice, client, channel (in words), text, seconds, utterance."""
    rows = []
    for domain in DOMAINS:
        utts = [u for u in _utterances(corpus) if u.domain == domain]
        conds = {u.id: channel_conditions(_channel_of(u, clients, proxy)) for u in utts}
        used: set[str] = set()
        for condition in CONDITIONS if domain != "real" else ("real speech",):
            cands = sorted((u for u in utts if domain == "real" or condition in conds[u.id]
                            or (condition == "clean" and not conds[u.id])), key=lambda u: (len(conds[u.id]), u.id))
            rows += [{"domain": domain, "condition": condition, "id": u.id, "voice": u.voice, "client": u.client,
                      "channel": "real recording (8 kHz prompt)" if domain == "real" else
                      channel_label(_channel_of(u, clients, proxy)), "text": u.text, "seconds": round(u.duration, 2),
                      "utterance": u} for u in _pick(cands, per_group, used)]
    return rows


def log_mel(utterances: Sequence[Utterance], cfg=None) -> list[np.ndarray]:
    """The project's front end (`fedasr.features.eval_pipeline`) on each utterance: log-mel ``(T, F)`` arrays."""
    front = features.eval_pipeline(cfg or features.FeatureConfig())
    with torch.no_grad():
        return [front(torch.from_numpy(load_audio(u))).numpy() for u in utterances]
