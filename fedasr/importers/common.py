"""What every importer shares: the `ImportConfig`, the source utterance record, and the text and audio checks.

A source reader (`librispeech`, `commonvoice`, `manifest`) turns its files into `SourceUtterance` s; the
checks here bring a transcript to the project's normal form (`fedasr.data.normalize_text`) and decode,
validate and, where needed, convert its audio to 16 kHz mono FLAC. A bad utterance is a counted `Skip`
with a reason, never a crash; a source that lacks an expected file or column is a `SourceError`.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from fedasr.data import SAMPLE_RATE, DataError, is_normalized, normalize_text

__all__ = ["ImportConfig", "SourceError", "Skip", "SourceUtterance", "CheckedAudio", "SKIP_REASONS",
           "transcript_normal_form", "check_audio", "safe_name"]

# Why an utterance can be left out of an imported corpus (the keys of corpus.json's source.skipped).
SKIP_REASONS = ("no transcript", "empty transcript", "non-Latin script", "unreadable audio", "silent audio",
                "too short", "too long", "duplicate id", "malformed row")


@dataclass
class ImportConfig:
    """How a real corpus is cut into the paper's roles (§3: server proxy data, users as clients) and checked.

    Proxy-side fractions are shares of *utterances*, taken a whole speaker at a time (so a Common Voice
    client with thousands of clips cannot tip the server's share); user-side fractions are shares of
    *clients* (unseen users) or of a seen client's utterances (held-out utterances).
    """

    seed: int = field(default=0, metadata={"help": "seed of every random choice of roles and splits"})
    proxy_fraction: float = field(default=0.5, metadata={
        "help": "share of utterances whose speakers become the server's (proxy) speakers, where the source "
                "does not say who is the server's (e.g. one LibriSpeech subset, a Common Voice tsv)"})
    proxy_dev_fraction: float = field(default=0.05, metadata={
        "help": "share of the proxy utterances, whole speakers, held out as proxy_dev"})
    proxy_test_fraction: float = field(default=0.05, metadata={
        "help": "share of the proxy utterances, whole speakers, held out as proxy_test"})
    unseen_fraction: float = field(default=0.2, metadata={
        "help": "share of user clients that never train: user_test and user_dev (at least one of 2+ clients)"})
    unseen_dev_fraction: float = field(default=0.5, metadata={
        "help": "share of the unseen clients that form user_dev (disjoint from user_test's clients)"})
    heldout_fraction: float = field(default=0.1, metadata={
        "help": "share of each seen client's utterances held out (user_heldout + user_heldout_dev); at "
                "least one of a client's 2+ utterances, never all"})
    heldout_dev_fraction: float = field(default=0.5, metadata={
        "help": "share of the held-out utterances (all seen clients together) that form user_heldout_dev"})
    new_term_max_proxy_count: int = field(default=0, metadata={
        "help": "a user word is a new term if proxy_train's text has it at most this many times (0 = absent)"})
    min_seconds: float = field(default=0.3, metadata={"help": "shorter utterances are skipped ('too short')"})
    max_seconds: float = field(default=36.0, metadata={
        "help": "longer utterances are skipped ('too long'); 36 s keeps every standard LibriSpeech utterance"})
    silence_dbfs: float = field(default=-60.0, metadata={
        "help": "audio whose peak is below this level (dB full scale) is skipped ('silent audio')"})

    def __post_init__(self) -> None:
        for name in ("proxy_fraction", "proxy_dev_fraction", "proxy_test_fraction", "unseen_fraction",
                     "unseen_dev_fraction", "heldout_fraction", "heldout_dev_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if self.proxy_dev_fraction + self.proxy_test_fraction >= 1.0:
            raise ValueError("proxy-dev-fraction + proxy-test-fraction must leave some proxy_train (< 1)")
        if not 0 < self.min_seconds < self.max_seconds:
            raise ValueError(f"need 0 < min-seconds < max-seconds, got {self.min_seconds}, {self.max_seconds}")
        if self.new_term_max_proxy_count < 0:
            raise ValueError("new-term-max-proxy-count must be >= 0")


class SourceError(DataError):
    """The source lacks an expected file, folder or column; the message names it and what was expected."""


class Skip(Exception):
    """One utterance is left out: ``reason`` is one of `SKIP_REASONS`, ``detail`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class SourceUtterance:
    """One utterance as a source lists it, before any check.

    Attributes:
        id: unique id (file names and ids of the source, e.g. ``"103-1240-0000"``).
        audio: absolute path of the source audio file.
        text: transcript as the source writes it (checked and normalised later).
        unit: who the utterance belongs to: the client id it gets as a user (one client per speaker,
            per Common Voice ``client_id`` or per manifest ``client``); roles are drawn per unit.
        speaker: the speaker label written to the manifest.
        voice: ``"real:<source>"`` (the manifest's ``voice`` field for real speech).
        pool: a role the source fixes (``"proxy"``, ``"user"``, or a split such as ``"proxy_test"``);
            ``None`` = drawn by `fedasr.importers.roles.assign_roles`.
        locale: language/locale tag if the source has one (Common Voice ``locale``).
        where: file (and line) of the source entry, for messages.
    """

    id: str
    audio: Path
    text: str
    unit: str
    speaker: str
    voice: str
    pool: str | None = None
    locale: str | None = None
    where: str = ""

    def replace(self, **kw) -> "SourceUtterance":
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class CheckedAudio:
    """Audio that passed the checks: its duration, and whether it had to be converted (then ``path`` is new)."""

    duration: float  # seconds at 16 kHz
    converted: bool  # False: the source file is referenced in place
    path: Path  # the file the manifest points at


# Latin letters that Unicode does not decompose into a base letter + accents.
_LATIN_EXTRA = {"ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "þ": "th", "ð": "d", "ı": "i",
                "Æ": "ae", "Œ": "oe", "Ø": "o", "Ł": "l", "Đ": "d", "Þ": "th", "Ð": "d"}
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u00b4": "'", "`": "'"})


def transcript_normal_form(text: str) -> str:
    """Return ``text`` in the corpus' normal form (``[a-z' ]``, numbers spelled out), or raise `Skip`.

    Accents are removed (``"Müller"`` -> ``"muller"``), typographic apostrophes kept as ``'``; a transcript
    with letters of another script (Cyrillic, Greek, CJK, ...) is skipped as ``"non-Latin script"``, one
    with no words left as ``"empty transcript"``.
    """
    text = unicodedata.normalize("NFKC", text or "").translate(_QUOTES)
    foreign = sorted({ch for ch in text if ch.isalpha() and not unicodedata.name(ch, "").startswith("LATIN")})
    if foreign:
        raise Skip("non-Latin script", f"letters {''.join(foreign[:5])!r}")
    text = "".join(_LATIN_EXTRA.get(ch, ch) for ch in unicodedata.normalize("NFKD", text)
                   if unicodedata.category(ch) != "Mn")
    out = normalize_text(text)
    if not out:
        raise Skip("empty transcript", "no words left after normalisation")
    assert is_normalized(out), out
    return out


def check_audio(src: Path, convert_to: Path, cfg: ImportConfig) -> CheckedAudio:
    """Decode ``src``, validate it and return where the manifest should point; raise `Skip` if unusable.

    16 kHz mono FLAC or WAV is referenced in place; anything else (other rates, stereo, MP3, OGG, ...) is
    down-mixed, resampled with a polyphase filter and written to ``convert_to`` as 16 kHz 16-bit FLAC.
    """
    try:
        info = sf.info(str(src))
        x, sr = sf.read(str(src), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError for bad files
        reason = "missing file" if not Path(src).exists() else f"cannot be decoded ({e})"
        raise Skip("unreadable audio", f"{src}: {reason}") from None
    if x.size == 0 or not np.isfinite(x).all():
        raise Skip("unreadable audio", f"{src}: {'no samples' if x.size == 0 else 'non-finite samples'}")
    in_place = info.format in ("FLAC", "WAV") and sr == SAMPLE_RATE and x.shape[1] == 1
    x = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        from math import gcd

        from scipy.signal import resample_poly  # scipy is only needed when a source must be resampled

        g = gcd(SAMPLE_RATE, sr)
        x = resample_poly(x, SAMPLE_RATE // g, sr // g).astype(np.float32)
    duration = len(x) / SAMPLE_RATE
    peak = float(np.abs(x).max())
    if peak <= 10 ** (cfg.silence_dbfs / 20):
        level = f"{20 * np.log10(peak):.1f} dBFS" if peak > 0 else "digital silence"
        raise Skip("silent audio", f"{src}: peak {level}")
    if duration < cfg.min_seconds:
        raise Skip("too short", f"{src}: {duration:.2f} s < {cfg.min_seconds} s")
    if duration > cfg.max_seconds:
        raise Skip("too long", f"{src}: {duration:.2f} s > {cfg.max_seconds} s")
    if in_place:
        return CheckedAudio(round(duration, 4), False, Path(src))
    convert_to.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(convert_to), np.clip(x, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return CheckedAudio(round(duration, 4), True, convert_to)


def safe_name(s: str) -> str:
    """``s`` with anything but letters, digits, ``_ . -`` replaced by ``_`` (ids and file names)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s).strip(".") or "_"
