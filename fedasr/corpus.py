"""The offline TTS speech corpus behind `make data`: profiles, the plan and the build (DESIGN.md §2; data.md).

    python -m fedasr.corpus --profile quick --out data/quick [--seed 0] [--nonfree] [--workers N]

Writes ``audio/<split>/<id>.flac`` (16 kHz mono), ``manifests/<split>.jsonl`` (`fedasr.data`
contract), ``clients.json`` (each simulated user's voice, channel, names and intent mix) and
``corpus.json`` (seed, sizes, counts, package versions, manifest hashes) under the out folder, and
``clients_dev.json`` (the same for the user_dev split's users).

* proxy_*: server text (`fedasr.corpus_text`) from a pool of espeak-ng / flite / festival voices
  with random pitch and rate; a share of utterances gets a random device/room channel.
* user_*: one client per simulated user with a fixed voice (disjoint from the server pool),
  pitch, rate and channel, its own contacts and places (new terms) and intent mix. Seen clients'
  utterances -> user_train and user_heldout, unseen clients' -> user_test.
* dev splits, for every choice (issue 18), so the test splits are read once per final configuration:
  proxy_dev; user_dev (more unseen clients, disjoint from user_test) and user_heldout_dev (more new
  utterances of the seen clients). They are drawn from RNGs of their own after everything else, so adding
  them changed no utterance, voice or client of the other splits (tests/test_corpus.py checks it).
* real: Asterisk prompts (one real speaker), evaluation only.

The voices, Debian packages, channels and the rendering itself are `fedasr.corpus_audio`'s.
Same seed + same package versions give byte-identical manifests, audio and corpus.json: all
randomness comes from seeds derived from ``(seed, split, index)`` or ``(seed, client)``, and the
worker pool returns results in submission order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path

import soundfile as sf

from fedasr.corpus_audio import (FESTIVAL_VOICES, FLITE_VOICES, PYTHON_PACKAGES, SERVER_ACCENTS, SERVER_ENGINES,
                                 SERVER_VARIANTS, USER_ACCENTS, USER_VARIANTS, Channel, CorpusError, asterisk_prompts,
                                 check_requirements, init_worker, render_chunk, sample_channel)
from fedasr.corpus_profiles import PROFILES, Profile  # re-exported: fedasr.corpus.PROFILES is the same dict
from fedasr.corpus_text import (LOCALES, TextBank, load_text_bank, make_client_text, oov_rate, proxy_sentence,
                                user_command, vocabulary)
from fedasr.data import SAMPLE_RATE, Utterance, is_normalized, write_manifest
from fedasr.data import SPLITS as _ALL_SPLITS

__all__ = ["DEV_CLIENTS_FILE", "GENERATOR_VERSION", "PROFILES", "Job", "Plan", "Profile", "build_corpus", "build_plan",
           "cli_main", "is_up_to_date"]

SPLITS = _ALL_SPLITS  # the generator makes every split (importers write the same ones)
DEV_CLIENTS_FILE = "clients_dev.json"  # user_dev's users; clients.json (and every fingerprint over it) predates them

GENERATOR_VERSION = "1.1"  # bump whenever the same seed would give different audio or text

# ---------------------------------------------------------------- plan: what to synthesise, before any audio


@dataclass(frozen=True)
class Job:
    """One utterance to render; ``text`` is exactly what the TTS engine is given."""

    id: str
    split: str
    text: str
    engine: str  # espeak | mbrola | flite | festival | pico | real
    voice: str
    pitch: int | None  # espeak -p scale (50 = the voice's default); None where the voice has no pitch control
    rate: int | None  # words per minute (flite/festival: duration stretch 175/rate)
    channel: Channel | None
    seed: int
    speaker: str
    client: str | None = None
    terms: tuple[str, ...] = ()
    source: str | None = None  # wav file of a real recording

    @property
    def voice_id(self) -> str:
        return f"{self.engine}:{self.voice}"

    @property
    def path(self) -> str:
        return f"audio/{self.split}/{self.id}.flac"

    @property
    def domain(self) -> str:
        return self.split.split("_")[0]


@dataclass
class Plan:
    """Every job per split, the simulated users (``clients``: seen and user_test's; ``dev_clients``: user_dev's),
    and text statistics."""

    jobs: dict[str, list[Job]]
    clients: list[dict]
    stats: dict = field(default_factory=dict)
    dev_clients: list[dict] = field(default_factory=list)


def _derive(seed: int, *keys) -> int:
    """A 63-bit seed derived from the corpus seed and keys, stable across Python runs (unlike hash())."""
    return int.from_bytes(hashlib.sha256(repr((seed,) + keys).encode()).digest()[:8], "big") >> 1


def _takes_pitch(engine: str, voice: str) -> bool:
    return engine in ("espeak", "mbrola") or voice == "cmu_us_slt_arctic_hts" or FLITE_VOICES.get(voice) is not None


def _speaker(engine: str, voice: str, pitch: int | None, rate: int | None) -> str:
    return f"{engine}:{voice}" + (f":p{pitch}" if pitch is not None else "") + (f":r{rate}" if rate is not None else "")


def _server_voice(rng: random.Random, variants: tuple[str, ...]) -> tuple[str, str, int | None, int]:
    """Draw the engine family, then the voice (espeak-ng: accent, then one of ``variants``), then pitch (30-70)
    and rate (140-190 wpm)."""
    engine = rng.choices(list(SERVER_ENGINES), weights=list(SERVER_ENGINES.values()))[0]
    if engine == "espeak":
        voice = f"{rng.choice(SERVER_ACCENTS)}+{rng.choice(variants)}"
    else:
        voice = rng.choice(list(FLITE_VOICES) if engine == "flite" else FESTIVAL_VOICES)
    pitch, rate = rng.randint(30, 70), rng.randint(140, 190)
    return engine, voice, (pitch if _takes_pitch(engine, voice) else None), rate


def user_voices(nonfree_voices=()) -> list[tuple[str, str]]:
    """The user voice pool: regional espeak-ng accents with user-only variants (+ nonfree voices)."""
    return [("espeak", f"{a}+{v}") for a in USER_ACCENTS for v in USER_VARIANTS] + list(nonfree_voices)


def _plan_proxy(profile: Profile, seed: int, bank: TextBank) -> dict[str, list[Job]]:
    jobs = {}
    for split, n in (("proxy_train", profile.proxy_train), ("proxy_dev", profile.proxy_dev),
                     ("proxy_test", profile.proxy_test)):
        jobs[split] = []
        frac = profile.train_channel_frac if split == "proxy_train" and profile.train_channel_frac is not None \
            else profile.proxy_channel_frac
        variants = SERVER_VARIANTS + (tuple(profile.train_extra_variants) if split == "proxy_train" else ())
        for i in range(n):
            rng = random.Random(_derive(seed, split, i))
            text = proxy_sentence(rng, bank)
            engine, voice, pitch, rate = _server_voice(rng, variants)
            channel = sample_channel(rng) if rng.random() < frac else None
            jobs[split].append(Job(f"{split}_{i:06d}", split, text, engine, voice, pitch, rate, channel,
                                   rng.getrandbits(63), _speaker(engine, voice, pitch, rate)))
    return jobs


def _draw_client(profile: Profile, bank: TextBank, cid: str, crng: random.Random, engine: str, voice: str,
                 seen: bool) -> tuple:
    """One simulated user from its own RNG, drawn in this order: names and places, pitch, rate, channel, count."""
    persona = make_client_text(crng, crng.choice(LOCALES), bank.lexicon, profile.contacts, profile.places)
    pitch = crng.randint(25, 75) if _takes_pitch(engine, voice) else None
    rate = crng.randint(130, 200) if engine != "pico" else None
    channel = sample_channel(crng)
    count = round(crng.lognormvariate(math.log(profile.utt_median), profile.utt_sigma))
    count = min(max(count, profile.utt_min), profile.utt_max)
    record = {"id": cid, "seen": seen, "utterances": count, "locale": persona.locale, "voice": f"{engine}:{voice}",
              "pitch": pitch, "rate": rate, "channel": asdict(channel), "contacts": list(persona.contacts),
              "places": list(persona.places), "intent_weights": dict(zip(bank.by_intent, persona.intent_weights))}
    return persona, record, (engine, voice, pitch, rate, channel)


def _user_job(rng: random.Random, bank: TextBank, persona, cid: str, voice: tuple, j: int, split: str) -> Job:
    """The client's ``j``-th utterance: a command with its names and places, in its voice and channel."""
    sentence, terms = user_command(rng, bank, persona)
    return Job(f"{cid}_{j:03d}", split, sentence, *voice, rng.getrandbits(63), f"{cid}:{_speaker(*voice[:4])}", cid,
               terms)


def _plan_users(profile: Profile, seed: int, bank: TextBank, voices: list[tuple[str, str]]):
    """Simulated users: fixed voice, pitch, rate, channel, names, places and intent mix each.

    The dev splits' users and utterances come from RNGs of their own (``"dev_client"``, ``"heldout_dev"``) and
    follow the others' ids, so they leave every other split's jobs and clients exactly as they were without them.
    """
    n = profile.seen_clients + profile.unseen_clients
    rng = random.Random(_derive(seed, "clients"))
    unseen = set(rng.sample(range(n), profile.unseen_clients))
    order = rng.sample(voices, len(voices))  # cycled, so every voice serves about as many clients
    jobs = {s: [] for s in ("user_train", "user_heldout", "user_heldout_dev", "user_test", "user_dev")}
    clients, dev_clients = [], []
    for c in range(n + profile.dev_clients):
        dev, cid = c >= n, f"c{c:04d}"
        crng = random.Random(_derive(seed, "dev_client", c - n) if dev else _derive(seed, "client", c))
        seen = not dev and c not in unseen
        persona, record, voice = _draw_client(profile, bank, cid, crng, *order[c % len(order)], seen)
        count = record["utterances"]
        heldout = set()
        if seen and count >= 4:
            heldout = set(crng.sample(range(count), max(1, round(profile.heldout_frac * count))))
        for j in range(count):
            split = "user_dev" if dev else "user_test" if not seen else "user_heldout" if j in heldout else "user_train"
            jobs[split].append(_user_job(crng, bank, persona, cid, voice, j, split))
        extra = max(1, round(profile.heldout_dev_frac * count)) if heldout and profile.heldout_dev_frac > 0 else 0
        drng = random.Random(_derive(seed, "heldout_dev", c))
        jobs["user_heldout_dev"] += [_user_job(drng, bank, persona, cid, voice, j, "user_heldout_dev")
                                     for j in range(count, count + extra)]
        (dev_clients if dev else clients).append(record)
    return jobs, clients, dev_clients


def _plan_real(profile: Profile, seed: int, prompts: list[tuple[str, str, str]]) -> list[Job]:
    if profile.real is not None and profile.real < len(prompts):
        keep = sorted(random.Random(_derive(seed, "real")).sample(range(len(prompts)), profile.real))
        prompts = [prompts[i] for i in keep]
    return [Job("real_" + key.replace("/", "_"), "real", text, "real", "allison", None, None, None, 0, "allison",
                source=wav) for key, text, wav in prompts]


def build_plan(profile: Profile, seed: int = 0, nonfree_voices=(), real_prompts=(),
               bank: TextBank | None = None) -> Plan:
    """Decide every utterance's text, voice and channel without synthesising anything (fast)."""
    bank = bank or load_text_bank()
    jobs = _plan_proxy(profile, seed, bank)
    user_jobs, clients, dev_clients = _plan_users(profile, seed, bank, user_voices(nonfree_voices))
    jobs.update(user_jobs)
    jobs["real"] = _plan_real(profile, seed, list(real_prompts))
    bad = [j.text for split_jobs in jobs.values() for j in split_jobs if not is_normalized(j.text)]
    stray = {w for j in jobs["proxy_train"] + jobs["proxy_dev"] + jobs["proxy_test"] for w in j.text.split()} - bank.lexicon
    if bad or stray:  # a template or list error: fail before any audio is made
        raise CorpusError(f"text not normalised: {bad[:3]}; proxy words outside the server lexicon: {sorted(stray)[:5]}")
    proxy_vocab = vocabulary(j.text for j in jobs["proxy_train"])
    user = [j for s in ("user_train", "user_heldout", "user_test") for j in jobs[s]]  # as before the dev splits
    stats = {"proxy_train_word_types": len(proxy_vocab),
             "user_word_types": len(vocabulary(j.text for j in user)),
             "user_oov_rate_vs_proxy_train": round(oov_rate((j.text for j in user), proxy_vocab), 4),
             "user_utterances_with_terms": round(sum(bool(j.terms) for j in user) / max(len(user), 1), 4)}
    return Plan({s: jobs[s] for s in SPLITS}, clients, stats, dev_clients)


# ---------------------------------------------------------------- build


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _python_versions() -> dict:
    versions = {p: metadata.version(p) for p in PYTHON_PACKAGES}
    versions["libsndfile"] = sf.__libsndfile_version__  # writes the FLAC bytes
    return versions


def build_corpus(profile: Profile | str, out: str | Path, seed: int = 0, nonfree: bool = False,
                 workers: int | None = None, chunk_size: int = 64) -> dict:
    """Build the corpus under ``out`` and return the ``corpus.json`` record.

    Requirements are checked before anything is synthesised; ``out/audio`` and ``out/manifests``
    are replaced, except the audio `_rendered` finds already made from the same jobs (kept, not re-rendered).
    Timing is printed, never stored, so corpus.json is byte-stable.
    """
    profile = PROFILES[profile] if isinstance(profile, str) else profile
    out = Path(out)
    t0 = time.perf_counter()
    env = check_requirements(nonfree)
    if nonfree and not env["nonfree_voices"]:
        print("fedasr.corpus: --nonfree, but no mbrola or pico voice is installed (see data.md §3)")
    prompts, missing_wavs = asterisk_prompts()
    plan = build_plan(profile, seed, env["nonfree_voices"], prompts)
    all_jobs = [j for split in SPLITS for j in plan.jobs[split]]
    rendered = _rendered(out, profile, seed, nonfree, env)
    kept = {j.id: rendered[j.path] for j in all_jobs if j.path in rendered}
    shutil.rmtree(out / "manifests", ignore_errors=True)
    if kept:  # drop only audio that this plan does not have
        for path in (out / "audio").rglob("*.flac"):
            if path.relative_to(out).as_posix() not in rendered or path.stem not in kept:
                path.unlink()
    else:
        shutil.rmtree(out / "audio", ignore_errors=True)
    for split in SPLITS:
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)
    jobs = [j for j in all_jobs if j.id not in kept]
    chunks = [jobs[i:i + chunk_size] for i in range(0, len(jobs), chunk_size)]
    workers = workers or min(os.cpu_count() or 1, 8)
    print(f"fedasr.corpus: profile {profile.name}, seed {seed}: {len(jobs)} utterances to render ({len(kept)} kept), "
          f"{len(plan.clients) + len(plan.dev_clients)} clients, {workers} workers "
          f"(plan {time.perf_counter() - t0:.1f} s)", flush=True)
    lengths: list[int] = []
    with tempfile.TemporaryDirectory(prefix="fedasr-corpus-") as tmp, \
            multiprocessing.get_context("fork").Pool(workers, init_worker, (str(out), tmp, env["noises"])) as pool:
        for done in pool.imap(render_chunk, chunks):  # results come back in submission order
            lengths += done
            if len(lengths) % (chunk_size * 40) < chunk_size:
                print(f"  {len(lengths)}/{len(jobs)} utterances, {time.perf_counter() - t0:.0f} s", flush=True)
    durations = {j.id: round(n / SAMPLE_RATE, 4) for j, n in zip(jobs, lengths)} | kept
    record = _write_outputs(out, profile, seed, nonfree, plan, durations, env, len(prompts), missing_wavs)
    hours = sum(durations.values()) / 3600
    wall = time.perf_counter() - t0
    print(f"fedasr.corpus: wrote {out}: {len(durations)} utterances, {hours:.2f} h of audio; rendered {len(jobs)} "
          f"in {wall:.0f} s ({len(jobs) / wall:.1f} utt/s)")
    return record


def _write_outputs(out: Path, profile: Profile, seed: int, nonfree: bool, plan: Plan, durations: dict,
                   env: dict, n_prompts: int, missing_wavs: int) -> dict:
    """Write manifests, clients.json and corpus.json."""
    splits = {}
    for split in SPLITS:
        utts = [Utterance(j.id, j.path, j.text, durations[j.id], j.speaker, "real:allison" if j.engine == "real"
                          else j.voice_id, j.client, split, j.domain, j.terms) for j in plan.jobs[split]]
        write_manifest(out / "manifests" / f"{split}.jsonl", utts, out)
        splits[split] = {"utterances": len(utts), "hours": round(sum(u.duration for u in utts) / 3600, 4),
                         "speakers": len({u.speaker for u in utts}), "clients": len({u.client for u in utts} - {None})}
    (out / "clients.json").write_text(json.dumps(plan.clients, indent=1, sort_keys=True) + "\n")
    (out / DEV_CLIENTS_FILE).write_text(json.dumps(plan.dev_clients, indent=1, sort_keys=True) + "\n")
    voices = {d: sorted({j.voice_id for s in SPLITS if s.startswith(d) for j in plan.jobs[s]}) for d in ("proxy", "user")}
    record = {
        "generator_version": GENERATOR_VERSION,
        "profile": profile.name,
        "seed": seed,
        "nonfree": nonfree,
        "sizes": asdict(profile),
        "splits": splits,
        "clients": {"seen": profile.seen_clients, "unseen": profile.unseen_clients, "dev": profile.dev_clients},
        "voices": voices,
        "nonfree_voices_available": [f"{e}:{v}" for e, v in env["nonfree_voices"]],
        "real_prompts": {"multi_word": n_prompts + missing_wavs, "skipped_missing_wav": missing_wavs,
                         "used": len(plan.jobs["real"])},
        "text": plan.stats,
        "debian_packages": env["packages"],
        "python_packages": _python_versions(),
        "sha256": {f"manifests/{s}.jsonl": _sha256(out / "manifests" / f"{s}.jsonl") for s in SPLITS}
        | {name: _sha256(out / name) for name in ("clients.json", DEV_CLIENTS_FILE)},
    }
    (out / "corpus.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def is_up_to_date(out: str | Path, profile: str, seed: int = 0, nonfree: bool = False) -> bool:
    """Whether ``out`` already holds this generator's corpus for (profile, seed, nonfree), complete:
    same generator version, settings and profile sizes, manifests matching their recorded sha256, every audio file present."""
    out = Path(out)
    try:
        record = json.loads((out / "corpus.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if (record.get("generator_version"), record.get("profile"), record.get("seed"), record.get("nonfree")) != \
            (GENERATOR_VERSION, profile, seed, nonfree):
        return False
    if profile in PROFILES:
        try:
            if Profile.from_record(record.get("sizes", {})) != PROFILES[profile]:
                return False  # the profile's sizes changed since this corpus was built
        except TypeError:
            return False  # a field this generator no longer knows
    for rel, digest in record.get("sha256", {}).items():
        if not (out / rel).exists() or _sha256(out / rel) != digest:
            return False
    for split in SPLITS:
        manifest = out / "manifests" / f"{split}.jsonl"
        if not manifest.exists():
            return False
        for line in manifest.read_text().splitlines():
            if not (out / json.loads(line)["path"]).exists():
                return False
    return True


def _rendered(out: Path, profile: Profile, seed: int, nonfree: bool, env: dict) -> dict[str, float]:
    """Audio path -> duration of the audio ``out`` already holds from the very jobs this build would render, to
    keep: a complete corpus of this generator, seed and packages whose profile differs at most in the dev split
    sizes (e.g. one built before the dev splits), whose other jobs are the same (tests/test_corpus.py), and so
    is their audio (rendering is deterministic). {} when anything else differs."""
    try:
        record = json.loads((out / "corpus.json").read_text())
        old = Profile.from_record(record["sizes"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    same = (GENERATOR_VERSION, seed, nonfree, env["packages"], _python_versions(),
            [f"{e}:{v}" for e, v in env["nonfree_voices"]])
    if (record.get("generator_version"), record.get("seed"), record.get("nonfree"), record.get("debian_packages"),
            record.get("python_packages"), record.get("nonfree_voices_available")) != same or \
            replace(old, dev_clients=profile.dev_clients, heldout_dev_frac=profile.heldout_dev_frac) != profile:
        return {}
    durations = {}
    for rel, digest in record.get("sha256", {}).items():
        if not (out / rel).exists() or _sha256(out / rel) != digest:
            return {}
        if rel.startswith("manifests/"):
            for line in (out / rel).read_text().splitlines():
                u = json.loads(line)
                if not (out / u["path"]).exists():
                    return {}
                durations[u["path"]] = u["duration"]
    return durations


def _print_dry_run(plan: Plan, profile: Profile) -> None:
    for split in SPLITS:
        jobs = plan.jobs[split]
        print(f"{split:16s} {len(jobs):6d} utterances" + (f"   e.g. {jobs[0].voice_id}: {jobs[0].text!r}" if jobs else ""))
    print(f"clients: {profile.seen_clients} seen + {profile.unseen_clients} unseen + {profile.dev_clients} unseen "
          f"for user_dev; text: {json.dumps(plan.stats)}")


def cli_main(argv: list[str] | None = None) -> int:
    """Build a corpus from the command line (console script ``fedasr-corpus``)."""
    parser = argparse.ArgumentParser(prog="fedasr-corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick", help="corpus size (Default: quick)")
    parser.add_argument("--out", type=Path, help="output folder (Default: data/<profile>)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (Default: 0)")
    parser.add_argument("--nonfree", action="store_true",
                        help="add installed mbrola / SVOX pico voices (Debian contrib/non-free) to the user pool")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (Default: all cores, at most 8)")
    parser.add_argument("--dry-run", action="store_true", help="plan texts, voices and channels; synthesise nothing")
    parser.add_argument("--if-stale", action="store_true",
                        help="do nothing if OUT already holds this corpus, complete (same generator, profile, seed)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    out = args.out or Path("data") / profile.name
    try:
        if args.if_stale and not args.dry_run and is_up_to_date(out, profile.name, args.seed, args.nonfree):
            print(f"fedasr-corpus: {out} is complete and up to date; not rebuilding")
        elif args.dry_run:
            nonfree_voices = check_requirements(args.nonfree)["nonfree_voices"]
            _print_dry_run(build_plan(profile, args.seed, nonfree_voices, asterisk_prompts()[0]), profile)
        else:
            build_corpus(profile, out, args.seed, args.nonfree, args.workers)
    except CorpusError as e:
        parser.exit(2, f"fedasr-corpus: error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main())
