"""Fuzz every entry point with malformed inputs: each must be rejected with a reason, never crash (issue 21).

Kinds of input and the real entry point each is fed to (no part is mocked):

=============  ===========================================================  ===================================
kind           inputs                                                        entry point → documented rejection
=============  ===========================================================  ===================================
``audio``      truncated FLAC, wrong rate, stereo, 0 samples, NaN/Inf,       `data.load_audio` → `DataError`;
               random bytes, empty files, folders                            `train.featurize` → a counted skip
``manifest``   missing/unknown fields, bad JSON, unknown split, wrong        `data.read_manifest` → `DataError`
               types, bad durations, invalid UTF-8, duplicates               (``on_error="skip"``: counted)
``transcript`` empty, non-Latin, control characters, huge                    manifest line, label store
                                                                             (`asr_task.read_label_lines`), the
                                                                             seed tokenizer → `DataError`/ValueError
``reply``      wrong keys, shapes, dtypes, NaN/Inf, absurd norms, missing    the strategy's ``aggregate_train``
               metrics, bad counts, bad transport metadata, error replies    → an exclusion reason, never raises
``config``     bad TOML, unknown keys, wrong types and values, invalid       `config.load` → `ConfigError`; the
               UTF-8, missing files                                          launch CLI → exit 2 with a message
``notebook``   unknown or misspelt parameters, wrong types, bad cells        `notebook` checks → `ParameterError`
``runs``       runs that fail at config, task or resume time over an        `launch.cli_main` / `run_server` →
               existing results folder                                       the folder stays byte-identical
=============  ===========================================================  ===================================

An *unhandled* input raised anything else, or an error without a message. ``python -m fedasr.fuzz`` writes
``results/reliability/parts/fuzz.json``.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from fedasr import data
from fedasr.data import DataError
from fedasr.fuzz_cases import Case, config_cases, discard, notebook_cases, reply_cases, run_cases

__all__ = ["Case", "cases", "classify", "run_fuzz"]


def classify(case: Case) -> tuple[str, str]:
    """Run ``case``: ``("rejected", reason)``, ``("accepted", "")`` or ``("unhandled", traceback)``."""
    try:
        reason = case.call()
    except case.documented as e:
        if isinstance(e, SystemExit):  # argparse's error: exit status 2 after printing the message
            return ("rejected", f"exit {e.code}") if e.code == 2 else ("unhandled", f"SystemExit({e.code})")
        msg = str(e).strip()
        return ("rejected", f"{type(e).__name__}: {msg}"[:200]) if msg else ("unhandled", f"{type(e).__name__}()")
    except Exception:  # noqa: BLE001 — what the fuzzer looks for
        return "unhandled", traceback.format_exc(limit=6)[-1500:]
    return ("rejected", reason[:200]) if reason else ("accepted", "")


# ----------------------------------------------------------------------------------------------------------
# audio, manifests, transcripts


def _audio_files(work: Path, rng: random.Random) -> list[tuple[str, Path]]:
    """Write the malformed audio files; return ``(name, path)``."""
    t = np.arange(16000, dtype=np.float32) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    out: list[tuple[str, Path]] = []

    def put(name: str, writer: Callable[[Path], None]) -> None:
        p = work / "audio" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        writer(p)
        out.append((name, p))

    good = work / "audio" / "good.flac"
    good.parent.mkdir(parents=True, exist_ok=True)
    sf.write(good, tone, 16000, format="FLAC")
    raw = good.read_bytes()
    for frac in (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):  # truncated FLAC (header alone, mid-frame, ...)
        put(f"truncated-{frac}.flac", lambda p, f=frac: p.write_bytes(raw[: int(len(raw) * f)]))
    for i in range(4):  # a flipped run of bytes inside a frame
        pos = rng.randrange(64, len(raw) - 64)
        put(f"corrupt-{i}.flac", lambda p, pos=pos: p.write_bytes(raw[:pos] + bytes(32) + raw[pos + 32:]))
    for sr in (8000, 11025, 22050, 44100, 48000):
        put(f"rate-{sr}.flac", lambda p, sr=sr: sf.write(p, tone[: sr // 4], sr, format="FLAC"))
        put(f"rate-{sr}.wav", lambda p, sr=sr: sf.write(p, tone[: sr // 4], sr, format="WAV"))
    put("stereo.flac", lambda p: sf.write(p, np.stack([tone, tone], 1), 16000, format="FLAC"))
    put("zero-length.flac", lambda p: sf.write(p, np.zeros(0, np.float32), 16000, format="FLAC"))
    put("zero-length.wav", lambda p: sf.write(p, np.zeros(0, np.float32), 16000, format="WAV", subtype="FLOAT"))
    for bad, label in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")):
        x = tone.copy()
        x[100:110] = bad
        put(f"{label}-samples.wav", lambda p, x=x: sf.write(p, x, 16000, format="WAV", subtype="FLOAT"))
    for n in (0, 1, 4, 44, 100, 1000, 10_000, 100_000):
        put(f"random-{n}.flac", lambda p, n=n: p.write_bytes(rng.randbytes(n)))
    put("riff-header-only.wav", lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt "))
    put("fLaC-magic-only.flac", lambda p: p.write_bytes(b"fLaC"))
    put("text.flac", lambda p: p.write_text("this is not audio\n"))
    put("a-folder.flac", lambda p: p.mkdir())
    out.append(("missing.flac", work / "audio" / "missing.flac"))
    return out


def _utt(path: Path, uid: str = "u1", text: str = "hello world") -> data.Utterance:
    return data.Utterance(id=uid, path=str(path), text=text, duration=1.0, speaker="s", voice="v", client="c1",
                          split="user_train", domain="user")


def _featurize_skips(path: Path) -> str | None:
    """`train.featurize` must skip a bad file and count it (the ASR task's path to audio)."""
    from fedasr import train
    from fedasr.features import FeatureConfig

    report = data.SkipReport()
    feats = train.featurize([_utt(path)], FeatureConfig(), report)
    return f"skipped: {report.summary()}" if not feats and report.total else None


def audio_cases(work: Path, rng: random.Random) -> list[Case]:
    """Malformed audio through `data.load_audio` and `train.featurize`."""
    out = []
    for name, path in _audio_files(work, rng):
        out.append(Case("audio", f"load_audio:{name}", lambda p=path: discard(data.load_audio, p), (DataError,)))
        out.append(Case("audio", f"featurize:{name}", lambda p=path: _featurize_skips(p), ()))
    return out


GOOD_LINE = {"id": "u1", "path": "audio/u1.flac", "text": "hello world", "duration": 1.5, "speaker": "s1",
             "voice": "v1", "client": "c1", "split": "user_train", "domain": "user"}


def _manifest_lines(rng: random.Random) -> list[tuple[str, bytes]]:
    """``(name, file bytes)`` of malformed manifests."""
    dump = lambda d: (json.dumps(d) + "\n").encode()  # noqa: E731
    out = [(f"missing-{k}", dump({x: v for x, v in GOOD_LINE.items() if x != k})) for k in data.REQUIRED_FIELDS]
    out += [("unknown-field", dump({**GOOD_LINE, "speaker_age": 3})), ("unknown-split", dump({**GOOD_LINE, "split": "dev"})),
            ("unknown-domain", dump({**GOOD_LINE, "domain": "phone"})), ("duplicate-id", dump(GOOD_LINE) * 2)]
    wrong = {"id": [[1], {"a": 1}, None], "path": [3, None, [1], {"p": 1}], "text": [5, None, ["a"]],
             "duration": ["1.5", None, -1, 0, 1e999, [1]], "speaker": [None, [1]], "client": [{"a": 1}],
             "split": [["user_train"], 1], "domain": [None], "terms": [5, "abc", [1, None], {"a": 1}]}
    for k, values in wrong.items():
        out += [(f"type-{k}-{json.dumps(v)[:12]}", dump({**GOOD_LINE, k: v})) for v in values]
    out += [("nan-duration", json.dumps(GOOD_LINE).replace("1.5", "NaN").encode() + b"\n"),
            ("bad-json-brace", b'{"id": "u1",\n'), ("bad-json-trailing", json.dumps(GOOD_LINE)[:-1].encode() + b",}\n"),
            ("json-array", b"[1, 2, 3]\n"), ("json-number", b"42\n"), ("json-string", b'"u1"\n'), ("json-null", b"null\n"),
            ("invalid-utf8", b'{"id": "\xff\xfe"}\n'), ("utf8-bom", b"\xef\xbb\xbf" + dump(GOOD_LINE)),
            ("nul-bytes", b"\x00" * 64 + b"\n"), ("random-bytes", rng.randbytes(300)),
            ("huge-line", dump({**GOOD_LINE, "speaker": "x" * 1_000_000})), ("empty-file", b""),
            ("blank-lines", b"\n\n   \n")]
    return out


def _read_skip(path: Path) -> str | None:
    report = data.SkipReport()
    data.read_manifest(path, on_error="skip", report=report)
    return f"skipped: {report.summary()}" if report.total else None


def manifest_cases(work: Path, rng: random.Random) -> list[Case]:
    """Malformed manifests through `data.read_manifest` (raise and skip modes) and `data.load_corpus`."""
    out = []
    for name, raw in _manifest_lines(rng):
        path = work / "corpus" / "manifests" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        out.append(Case("manifest", f"read:{name}", lambda p=path: discard(data.read_manifest, p), (DataError,)))
        out.append(Case("manifest", f"skip:{name}", lambda p=path: _read_skip(p), (DataError,)))
    out.append(Case("manifest", "load_corpus:not-a-corpus", lambda: discard(data.load_corpus, work / "audio"),
                    (DataError,)))
    out.append(Case("manifest", "read:missing", lambda: discard(data.read_manifest, work / "nope.jsonl"), (DataError,)))
    return out


TEXTS = {"empty": "", "spaces": "   ", "newline": "hello\nworld", "tab": "hello\tworld", "nul": "hello\x00world",
         "upper": "Hello World", "punctuation": "hello, world!", "digits": "call 911 now", "chinese": "你好世界",
         "arabic": "مرحبا بالعالم", "cyrillic": "привет мир", "greek": "γειά σου κόσμε", "emoji": "hello 👋 world",
         "combining": "he\u0301llo", "rtl-mark": "hello\u200fworld", "zero-width": "hel\u200blo", "surrogate": "a\ud800b",
         "huge": "hello " * 200_000, "huge-word": "a" * 100_000, "only-apostrophes": "'''", "latin1": "café naïve"}


def _transcript_through_labels(work: Path, name: str, text: str) -> str | None:
    """A label store line → `asr_task.read_label_lines` → `data.normalize_text` → the seed tokenizer."""
    from fedasr import asr_task
    from fedasr.tokenizer import load_tokenizer

    path = work / "labels" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"id": "u1", "label": text}) + "\n", errors="surrogatepass")
    label = data.normalize_text(asr_task.read_label_lines(path)[0]["label"])
    if not label:
        return "empty after normalisation (the task skips the utterance)"
    seed_tok = Path("results/seed/model/tokenizer")
    if seed_tok.exists():
        load_tokenizer(seed_tok).encode(label)
    return None


def transcript_cases(work: Path) -> list[Case]:
    """Malformed transcripts as manifest text and as on-device labels."""
    out = []
    for name, text in TEXTS.items():
        path = work / "transcripts" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((json.dumps({**GOOD_LINE, "text": text}) + "\n").encode())
        out.append(Case("transcript", f"manifest:{name}", lambda p=path: discard(data.read_manifest, p), (DataError,)))
        out.append(Case("transcript", f"label:{name}", lambda n=name, t=text: _transcript_through_labels(work, n, t),
                        (DataError, ValueError)))
    return out


# ----------------------------------------------------------------------------------------------------------
# the run


def cases(work: Path, seed: int = 0) -> list[Case]:
    """Every fuzz case, in a fixed order, writing its files under ``work``."""
    rng = random.Random(seed)
    return [*audio_cases(work, rng), *manifest_cases(work, rng), *transcript_cases(work), *reply_cases(),
            *config_cases(work), *notebook_cases(work), *run_cases(work)]


def run_fuzz(workdir: str | Path | None = None, seed: int = 0, per_kind: int | None = None) -> dict:
    """Run the cases (the first ``per_kind`` of each kind, or all) and return the ``fuzz`` part.

    Returns ``{"inputs", "unhandled", "by_kind": {kind: {"inputs", "rejected", "accepted", "unhandled"}},
    "unhandled_cases": [{"kind", "name", "error"}], "accepted_cases": [...]}``.
    """
    work = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fedasr-fuzz-"))
    logging.disable(logging.WARNING)  # thousands of expected "client excluded" warnings
    try:
        chosen, seen = [], {}
        for c in cases(work, seed):
            seen[c.kind] = seen.get(c.kind, 0) + 1
            if per_kind is None or seen[c.kind] <= per_kind:
                chosen.append(c)
        by_kind: dict[str, dict[str, int]] = {}
        bad, accepted = [], []
        seconds: dict[str, float] = {}
        for c in chosen:
            t0 = time.perf_counter()
            outcome, detail = classify(c)
            seconds[c.kind] = seconds.get(c.kind, 0.0) + time.perf_counter() - t0
            row = by_kind.setdefault(c.kind, {"inputs": 0, "rejected": 0, "accepted": 0, "unhandled": 0})
            row["inputs"] += 1
            row[outcome] += 1
            if outcome == "unhandled":
                bad.append({"kind": c.kind, "name": c.name, "error": detail})
            elif outcome == "accepted":
                accepted.append(f"{c.kind}:{c.name}")
        return {"inputs": len(chosen), "unhandled": len(bad), "by_kind": by_kind, "unhandled_cases": bad,
                "accepted_cases": accepted, "seed": seed, "seconds": seconds}
    finally:
        logging.disable(logging.NOTSET)
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    """``python -m fedasr.fuzz [--out results/reliability/parts/fuzz.json]``: run every case, write the part."""
    import argparse

    from fedasr import results

    ap = argparse.ArgumentParser(prog="python -m fedasr.fuzz", description=main.__doc__)
    ap.add_argument("--out", default="results/reliability/parts/fuzz.json", help="(Default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="random bytes and positions (Default: 0)")
    args = ap.parse_args(argv)
    part = run_fuzz(seed=args.seed)
    results.write_json(args.out, part)
    print(f"{part['inputs']} inputs, {part['unhandled']} unhandled -> {args.out}", file=sys.stderr)
    return part


if __name__ == "__main__":
    main()
