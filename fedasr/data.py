"""Manifests, validated audio loading and the `Batch` type shared by every stage.

A corpus lives in one folder (``data/<profile>/``)::

    corpus.json                    seed, profile, generator version, package versions, counts
    manifests/<split>.jsonl        one JSON object per utterance (see `Utterance`)
    audio/<split>/<id>.flac        16 kHz mono FLAC (git-ignored; rebuilt by `make data`)

Manifest paths are relative to the corpus folder, so a corpus can be moved or copied.
Loading validates on the way in: a bad file becomes a `DataError` that names it (or a counted skip
when ``on_error="skip"``), never a crash deep inside the feature extractor or the loss.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Literal, NamedTuple, Sequence

import numpy as np
import soundfile as sf

if TYPE_CHECKING:  # torch is only needed for Batch's annotations: the corpus generator stays light
    import torch

__all__ = [
    "SAMPLE_RATE",
    "SPLITS",
    "is_synthetic",
    "Utterance",
    "Batch",
    "DataError",
    "SkipReport",
    "normalize_text",
    "is_normalized",
    "read_manifest",
    "write_manifest",
    "load_corpus",
    "load_audio",
    "iter_audio",
]

SAMPLE_RATE = 16_000
# Every split a corpus may hold; `corpus.py` writes them, everything else reads them by name.
SPLITS = (
    "proxy_train",  # server (proxy) domain: central pretraining of the seed model
    "proxy_dev",  # server domain, held out: model selection
    "proxy_test",  # server domain, held out: forgetting check during FL
    "user_train",  # user domain: the federated clients' on-device data
    "user_heldout",  # user domain: new utterances of seen clients (personalisation)
    "user_heldout_dev",  # user domain: other new utterances of seen clients, for choices (issue 18)
    "user_test",  # user domain: clients never seen in training (main FL metric)
    "user_dev",  # user domain: other unseen clients, disjoint from user_test, for choices (issue 18)
    "real",  # real human speech (Asterisk prompts), evaluation only
)
DOMAINS = ("proxy", "user", "real")
REQUIRED_FIELDS = ("id", "path", "text", "duration", "speaker", "voice", "client", "split", "domain")
_NORMALIZED = re.compile(r"^[a-z']+( [a-z']+)*$")


class DataError(ValueError):
    """Bad input data; the message names the file or manifest line at fault."""


@dataclass(frozen=True)
class Utterance:
    """One manifest line.

    Attributes:
        id: unique utterance id within the corpus.
        path: audio path relative to the corpus root (absolute after `read_manifest` resolves it).
        text: normalised reference transcript (``[a-z' ]``, single spaces, numbers spelled out).
        duration: seconds of audio.
        speaker: speaker identity (voice + pitch + rate [+ channel]); one per client in the user domain.
        voice: TTS engine and voice, e.g. ``"espeak:en-gb-scotland+m2"`` (``"real:allison"`` for real speech).
        client: client id in the user domain (``None`` for proxy/real).
        split: one of `SPLITS`.
        domain: ``"proxy"``, ``"user"`` or ``"real"``.
        terms: the client-specific new terms (contact or place names) this utterance contains.
    """

    id: str
    path: str
    text: str
    duration: float
    speaker: str
    voice: str
    client: str | None
    split: str
    domain: str
    terms: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        d = asdict(self)
        d["terms"] = list(self.terms)
        return d


class Batch(NamedTuple):
    """A padded mini-batch, passed between data, model, loss and metrics.

    Attributes:
        features: ``(B, T, F)`` float32 log-mel features (zero-padded).
        feature_lengths: ``(B,)`` int64 valid frames per utterance.
        targets: ``(B, U)`` int64 token ids (padded with 0).
        target_lengths: ``(B,)`` int64 valid tokens per utterance.
        ids: utterance ids, length B.
        texts: reference transcripts, length B (for evaluation only, never for client training maths).
    """

    features: torch.Tensor
    feature_lengths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor
    ids: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()


@dataclass
class SkipReport:
    """Counts of skipped utterances by reason, with the first few offenders named."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "no utterances skipped"
        parts = [f"{n} {r} (e.g. {', '.join(self.examples[r])})" for r, n in self.counts.most_common()]
        return "skipped " + "; ".join(parts)


_NUMBER_WORDS = None


def normalize_text(text: str) -> str:
    """Return ``text`` lower-cased, digits spelled out, punctuation dropped (``[a-z' ]``)."""
    global _NUMBER_WORDS
    text = text.lower().replace("-", " ").replace("&", " and ")
    text = text.replace("#", " pound ").replace("*", " star ")
    text = re.sub(r"(\d)\.(\d)", r"\1 point \2", text)  # 28.8 -> 28 point 8
    if re.search(r"\d", text):
        if _NUMBER_WORDS is None:
            import inflect

            _NUMBER_WORDS = inflect.engine()
        text = re.sub(
            r"\d+",
            lambda m: " " + _NUMBER_WORDS.number_to_words(m.group(0), andword="").replace(",", "") + " ",
            text,
        )
        text = text.replace("-", " ")
    text = re.sub(r"[^a-z' ]", " ", text)
    text = re.sub(r"\s'|'\s|^'|'$", " ", text)  # stray quotes, keep apostrophes inside words
    return " ".join(text.split())


def is_normalized(text: str) -> bool:
    """Whether ``text`` is already in the corpus' normal form."""
    return bool(_NORMALIZED.match(text))


def _parse_line(line: str, where: str, root: Path) -> Utterance:
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(d, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(d).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in d]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")
    unknown = sorted(set(d) - set(REQUIRED_FIELDS) - {"terms"})
    if unknown:
        raise DataError(f"{where}: unknown field(s) {unknown}")
    wrong = [k for k in ("id", "path", "speaker", "voice") if not isinstance(d[k], str)]
    wrong += ["client"] if d["client"] is not None and not isinstance(d["client"], str) else []
    terms = d.get("terms") or []
    wrong += ["terms"] if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms) else []
    if wrong:
        raise DataError(f"{where}: field(s) {wrong} of the wrong type (strings; client may be null, terms a list "
                        "of strings)")
    if d["split"] not in SPLITS:
        raise DataError(f"{where}: unknown split {d['split']!r} (expected one of {SPLITS})")
    if d["domain"] not in DOMAINS:
        raise DataError(f"{where}: unknown domain {d['domain']!r} (expected one of {DOMAINS})")
    text = d["text"]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: utterance {d['id']!r} has an empty transcript")
    if not is_normalized(text):
        raise DataError(f"{where}: utterance {d['id']!r} transcript is not normalised: {text!r}")
    dur = d["duration"]
    if not isinstance(dur, (int, float)) or not math.isfinite(dur) or dur <= 0:
        raise DataError(f"{where}: utterance {d['id']!r} has invalid duration {dur!r}")
    path = Path(d["path"])
    if not path.is_absolute():
        path = root / path
    return Utterance(
        id=str(d["id"]),
        path=str(path),
        text=text,
        duration=float(dur),
        speaker=str(d["speaker"]),
        voice=str(d["voice"]),
        client=None if d["client"] is None else str(d["client"]),
        split=d["split"],
        domain=d["domain"],
        terms=tuple(d.get("terms") or ()),
    )


def read_manifest(
    path: str | Path,
    root: str | Path | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    report: SkipReport | None = None,
) -> list[Utterance]:
    """Read a JSON-lines manifest, validating each line.

    Args:
        path: the ``.jsonl`` file.
        root: folder that relative audio paths are resolved against
            (default: the manifest's grandparent, i.e. the corpus root).
        on_error: ``"raise"`` a `DataError` naming file and line, or ``"skip"`` the line and count it in ``report``.
        report: where skips are counted (a new one is made if omitted).
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent.parent
    if not path.exists():
        raise DataError(f"manifest {path} does not exist (run `make data`?)")
    out, seen = [], set()
    report = report if report is not None else SkipReport()
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is a DataError naming it (or a counted skip)
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{i}"
            try:
                u = _parse_line(_decode(raw, where), where, root)
                if u.id in seen:
                    raise DataError(f"{where}: duplicate utterance id {u.id!r}")
            except DataError as e:
                if on_error == "raise":
                    raise
                report.add(_reason(e), where)
                continue
            seen.add(u.id)
            out.append(u)
    return out


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _reason(e: Exception) -> str:
    msg = str(e)
    for key in ("not valid JSON", "not valid UTF-8", "wrong type", "missing field", "unknown field", "unknown split", "unknown domain",
                "empty transcript", "not normalised", "invalid duration", "duplicate", "does not exist",
                "cannot be decoded", "sample rate", "empty audio", "channels", "non-finite"):
        if key in msg:
            return key
    return "invalid"


def write_manifest(path: str | Path, utterances: Iterable[Utterance], root: str | Path) -> None:
    """Write utterances as JSON lines with paths relative to ``root`` (sorted keys: byte-stable)."""
    path, root = Path(path), Path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for u in utterances:
            d = u.to_json()
            p = Path(d["path"])
            if p.is_absolute():
                d["path"] = str(p.relative_to(root))
            f.write(json.dumps(d, sort_keys=True) + "\n")


def load_corpus(root: str | Path, splits: Sequence[str] = SPLITS, **kw) -> dict[str, list[Utterance]]:
    """Read the manifests of ``splits`` present under ``root/manifests`` (missing splits are absent)."""
    root = Path(root)
    if not (root / "corpus.json").exists():
        raise DataError(f"{root} is not a corpus (no corpus.json); build one with `make data PROFILE=...`")
    out = {}
    for s in splits:
        p = root / "manifests" / f"{s}.jsonl"
        if p.exists():
            out[s] = read_manifest(p, root=root, **kw)
    return out


def load_audio(utt: Utterance | str | Path, expected_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Load one utterance's audio as float32 mono ``(N,)``, validating it.

    Raises:
        DataError: missing file, undecodable/corrupt file, wrong sample rate, multi-channel,
            empty audio or non-finite samples. The message names the file (and utterance).
    """
    path = Path(utt.path if isinstance(utt, Utterance) else utt)
    name = f"{path}" + (f" (utterance {utt.id!r})" if isinstance(utt, Utterance) else "")
    if not path.exists():
        raise DataError(f"audio file {name} does not exist")
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError with varying types
        raise DataError(f"audio file {name} cannot be decoded: {e}") from None
    if sr != expected_sr:
        raise DataError(f"audio file {name} has sample rate {sr} Hz, expected {expected_sr} Hz")
    if x.shape[1] != 1:
        raise DataError(f"audio file {name} has {x.shape[1]} channels, expected mono")
    x = x[:, 0]
    if x.size == 0:
        raise DataError(f"audio file {name} is empty audio (0 samples)")
    if not np.isfinite(x).all():
        raise DataError(f"audio file {name} has non-finite samples")
    return x


def iter_audio(
    utterances: Iterable[Utterance],
    on_error: Literal["raise", "skip"] = "skip",
    report: SkipReport | None = None,
) -> Iterator[tuple[Utterance, np.ndarray]]:
    """Yield ``(utterance, audio)`` pairs; bad files raise or are skipped and counted in ``report``."""
    for u in utterances:
        try:
            x = load_audio(u)
        except DataError as e:
            if on_error == "raise":
                raise
            if report is not None:
                report.add(_reason(e), u.path)
            continue
        yield u, x


def is_synthetic(root: str | Path) -> bool:
    """Whether the corpus at ``root`` was generated by `make data` (all TTS) rather than imported from recordings
    (`fedasr.importers` write a ``source`` block into ``corpus.json``)."""
    path = Path(root) / "corpus.json"
    return not (path.exists() and "source" in json.loads(path.read_text()))


def speech_note(root: str | Path) -> str:
    """One italic markdown line saying what speech the corpus at ``root`` holds (notebooks print it under their
    config, so a run on an imported corpus never claims to be synthetic)."""
    path = Path(root) / "corpus.json"
    if is_synthetic(root):
        return (f"*All training speech in `{root}` is synthetic (TTS voices, `make data`); its `real` split, where "
                "present, is one real speaker (the Asterisk telephone prompts), for evaluation only.*")
    source = json.loads(path.read_text()).get("source") or {}
    kind = source.get("kind") or "an imported source"
    return f"*`{root}` is real speech imported from {kind} (`{path}`'s `source` block); no TTS voice is involved.*"


def summarize_corpus(root: str | Path) -> dict:
    """Per-split counts, hours, speakers, clients, vocabulary and new-term coverage of a corpus.

    Reads manifests only (no audio), so it is fast and works before audio is rebuilt.
    """
    root = Path(root)
    corpus = load_corpus(root)
    meta = json.loads((root / "corpus.json").read_text())
    proxy_vocab = {w for s in ("proxy_train",) for u in corpus.get(s, []) for w in u.text.split()}
    out = {"corpus": str(root), "profile": meta.get("profile"), "seed": meta.get("seed"), "splits": {}}
    for split, utts in corpus.items():
        words = [w for u in utts for w in u.text.split()]
        clients = {u.client for u in utts if u.client is not None}
        out["splits"][split] = {
            "utterances": len(utts),
            "hours": round(sum(u.duration for u in utts) / 3600, 4),
            "speakers": len({u.speaker for u in utts}),
            "voices": len({u.voice for u in utts}),
            "clients": len(clients),
            "words": len(words),
            "word_types": len(set(words)),
            "oov_rate_vs_proxy_train": round(sum(w not in proxy_vocab for w in words) / max(1, len(words)), 4),
            "new_terms_utterances": sum(1 for u in utts if u.terms),
        }
    return out


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fedasr.data", description="Inspect a generated corpus.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summary", help="print and optionally write a corpus summary")
    s.add_argument("root", help="corpus folder, e.g. data/quick")
    s.add_argument("--out", help="write the summary JSON here")
    s.add_argument("--check-audio", action="store_true", help="also open every audio file and count bad ones")
    args = ap.parse_args(argv)
    summary = summarize_corpus(args.root)
    if args.check_audio:
        report = SkipReport()
        n = sum(1 for utts in load_corpus(args.root).values() for _ in iter_audio(utts, report=report))
        summary["audio_check"] = {"ok": n, "bad": report.total, "detail": report.summary()}
    text = json.dumps(summary, indent=2, sort_keys=True)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    _main()
