"""Refinement of on-device data and labels: client selection, on-device filtering, WCA (paper §2.5).

Paper §2.5 [S]: the server selects **clients with corrections**; each device trains only on
**user-corrected** utterances and **eliminates incorrect corrections**; the server combines the
updates with **Weighted Client Aggregation** (WCA), whose two weightings are not public beyond
"freque[ncy]…" and a citing paper's "word frequency histograms". Every rule and formula below is a
documented, parameterized default of ours [INF] (paper.md §2.5, §5 rows 13–16).

Where each piece runs:

* **device** — `check_correction` / `filter_corrections` see only a record's `fedasr.corrections.device_view`
  (hypothesis shown, correction typed, audio duration); `client_round_stats` builds the numbers the client
  uploads (`ClientStats.to_metrics`) from its label-store lines, or declines the round (`ClientDeclined`).
* **simulation shortcut** — `write_label_store` runs the device filter for every client once and
  writes the label store `fedasr.asr_task` reads. The filter is a pure function of on-device data, so
  precomputing it is the same as running it on each phone at round time.
* **server** — `eligible_clients` (client selection from client-reported counts) and `wca_weights`
  (aggregation weights from the uploaded statistics only).

Nothing here imports Flower.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Mapping, Sequence, get_args

import numpy as np
from rapidfuzz.distance import Levenshtein  # a dependency of jiwer (pinned)

from fedasr import results
from fedasr.corrections import device_view
from fedasr.data import normalize_text

__all__ = [
    "DROP_REASONS", "DECLINE_REASONS", "LABEL_MODES", "WCAMethod", "WCA_METHODS", "ClientDeclined", "FilterConfig",
    "check_correction", "FilterResult", "filter_corrections", "label_store_lines", "write_label_store",
    "read_label_store", "correction_counts", "eligible_clients", "corrected_words", "word_bucket",
    "ClientStats", "client_stats", "client_round_stats", "wca_weights", "filter_report",
]

log = logging.getLogger(__name__)

# Why a correction is not trained on, in the order the rules run (the first that fires is counted)
DROP_REASONS = ("empty", "non-text", "too-long", "too-fast", "unchanged", "length-ratio", "char-edit",
                "word-edit")
DECLINE_REASONS = ("no-corrections", "all-filtered")
LABEL_MODES = ("hypotheses", "committed", "corrected", "filtered")
# Aggregation weights a_i (paper §2.5): "examples" is n_i (FedAvg); the others are WCA (`wca_weights`).
WCAMethod = Literal["examples", "uniform", "frequency", "frequency-common", "corrections", "loss"]
WCA_METHODS: tuple[str, ...] = get_args(WCAMethod)
# What a typed transcript may contain before normalization: letters, digits, spaces and the punctuation
# `normalize_text` maps or drops. Anything else (emoji, URLs, '@', '/', other scripts) is not a transcript.
_TEXT_CHARS = re.compile(r"^[A-Za-z0-9\s.,!?;:'\"()\-&#*’‘“”]*$")


class ClientDeclined(ValueError):
    """A selected client has nothing to train on this round; it declines (a counted outcome, not a bug).

    Attributes:
        client_id: the client. reason: one of `DECLINE_REASONS`. counts: its filter outcome counts.
    """

    def __init__(self, client_id: str, reason: str, counts: Mapping[str, int] | None = None) -> None:
        self.client_id, self.reason, self.counts = client_id, reason, dict(counts or {})
        detail = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        super().__init__(f"client {client_id!r} declines the round: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class FilterConfig:
    """On-device plausibility rules for a correction ``c`` of hypothesis ``h`` (``[refinement.filter]``).

    Edit distances are relative: ``ED(h, c) / max(|h|, |c|)``. They are **character**-level by default
    because a weak character-CTC seed splits and garbles words (a 30%-CER hypothesis already has a
    word-level distance ≈ 0.86 to its reference), while a content rewrite stays far in characters
    (median 0.77 between two utterances of one quick-profile client; 0.6 removes ≈ 90% of them and keeps
    corrections of hypotheses up to ≈ 50% CER). paper.md §5 row 13 proposes word-level 0.3–0.5 for a
    production-quality seed: set ``max_word_edit`` then.

    Attributes:
        max_words: absurd length: more words than any spoken command (quick corpus max: 12). (Default: 40)
        max_words_per_second: more words than the audio can hold (quick corpus max 4.7, median 2.75
            words/s; applied when the duration is known). (Default: 6.0)
        min_length_ratio, max_length_ratio: bounds on ``|c| / |h|`` in characters. (Default: 0.5, 2.0)
        max_char_edit: bound on the relative character edit distance. (Default: 0.6)
        max_word_edit: bound on the relative word edit distance (1.0 disables it). (Default: 1.0)
    """

    max_words: int = 40
    max_words_per_second: float = 6.0
    min_length_ratio: float = 0.5
    max_length_ratio: float = 2.0
    max_char_edit: float = 0.6
    max_word_edit: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.min_length_ratio <= 1 <= self.max_length_ratio:
            raise ValueError("need 0 < min_length_ratio <= 1 <= max_length_ratio")
        if self.max_words < 1 or self.max_words_per_second <= 0:
            raise ValueError("max_words and max_words_per_second must be > 0")


def check_correction(hypothesis: str, correction: str | None, duration: float | None = None,
                     cfg: FilterConfig | None = None) -> tuple[str, str]:
    """Return ``("kept", label)`` or ``(drop reason, "")`` for one correction, on the device.

    Rules, in order (`DROP_REASONS`): empty; characters a transcript cannot hold; normalization
    (`fedasr.data.normalize_text`: casing, punctuation, digits) leaves nothing; more than
    ``max_words``; faster than ``max_words_per_second``; identical to the hypothesis once normalized
    (a casing/punctuation edit fixes no recognition error); then, when the hypothesis is not empty, the
    character length ratio and the relative character and word edit distances. An empty hypothesis
    (the phone showed nothing) cannot be compared with, so only the length rules apply to it.
    """
    cfg = cfg or FilterConfig()
    if correction is None or not correction.strip():
        return "empty", ""
    if not _TEXT_CHARS.match(correction):
        return "non-text", ""
    c = normalize_text(correction.replace("’", "'").replace("‘", "'"))
    h = normalize_text(hypothesis)
    words = c.split()
    if not words:
        return "empty", ""
    if len(words) > cfg.max_words:
        return "too-long", ""
    if duration and len(words) / duration > cfg.max_words_per_second:
        return "too-fast", ""
    if c == h:
        return "unchanged", ""
    if h:
        ratio = len(c) / len(h)
        if not cfg.min_length_ratio <= ratio <= cfg.max_length_ratio:
            return "length-ratio", ""
        if Levenshtein.distance(h, c) / max(len(h), len(c)) > cfg.max_char_edit:
            return "char-edit", ""
        hw = h.split()
        if Levenshtein.distance(hw, words) / max(len(hw), len(words)) > cfg.max_word_edit:
            return "word-edit", ""
    return "kept", c


@dataclass
class FilterResult:
    """Outcome of on-device filtering: labels kept, and why each other utterance is not trained on."""

    kept: dict[str, str] = field(default_factory=dict)  # id → normalized correction (the label)
    status: dict[str, str] = field(default_factory=dict)  # id → "kept" | "uncorrected" | a drop reason
    counts: Counter = field(default_factory=Counter)  # status → number of utterances


def filter_corrections(items: Iterable[Mapping], cfg: FilterConfig | None = None) -> FilterResult:
    """Keep the corrected utterances whose correction passes `check_correction` (on-device filtering).

    ``items`` are correction records or device views; only `device_view` fields are read, so passing a
    full simulation record cannot leak its kind or oracle fields into the decision.
    """
    out = FilterResult()
    for item in items:
        d = device_view(item)
        if d["correction"] is None:
            status, label = "uncorrected", ""
        else:
            status, label = check_correction(d["hypothesis"] or "", d["correction"], d["duration"], cfg)
        out.status[d["id"]] = status
        out.counts[status] += 1
        if status == "kept":
            out.kept[d["id"]] = label
    return out


# ---------------------------------------------------------------------------------------------------
# Label stores (what `fedasr.asr_task` reads) and client selection
# ---------------------------------------------------------------------------------------------------


def label_store_lines(records: Sequence[Mapping], mode: str = "filtered",
                      cfg: FilterConfig | None = None) -> list[dict]:
    """Return one label-store line per utterance: ``{"id", "client", "label", "source", "status", ...}``.

    ``label`` (what the client trains on; ``""`` = not trained) by ``mode``:

    * ``"hypotheses"`` — the no-refinement baseline: every utterance, labelled with what the phone showed;
    * ``"committed"`` — the text the device ended with: the normalized correction where the user typed
      one (unfiltered), else the hypothesis;
    * ``"corrected"`` — corrected utterances only, unfiltered (normalized; empty ones skipped);
    * ``"filtered"`` — corrected utterances that pass the on-device filter (paper §2.5).

    Every line also carries ``hypothesis``, ``correction`` (device data) and ``status`` (the filter's
    outcome, whatever the mode), so a client can compute its statistics (`client_stats`) and its
    correction count from the store alone. No line holds a reference text.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {mode!r}: use one of {LABEL_MODES}")
    status = filter_corrections(records, cfg).status
    lines = []
    for r in records:
        d = device_view(r)
        hyp, corr = normalize_text(d["hypothesis"] or ""), d["correction"]
        typed = normalize_text(corr) if corr is not None else ""
        label, source = {
            "hypotheses": (hyp, "hypothesis"),
            "committed": (typed, "correction") if corr is not None else (hyp, "hypothesis"),
            "corrected": (typed, "correction") if corr is not None else ("", None),
            "filtered": (typed, "correction") if status[d["id"]] == "kept" else ("", None),
        }[mode]
        lines.append({"id": d["id"], "client": d["client"], "label": label, "source": source if label else None,
                      "status": status[d["id"]], "hypothesis": hyp, "correction": corr})
    return lines


def write_label_store(path: str | Path, records: Sequence[Mapping], mode: str = "filtered",
                      cfg: FilterConfig | None = None) -> dict:
    """Write the label store ``fedasr.asr_task`` reads (``task.params.labels = <path>``); return a summary.

    The summary: ``mode``, ``utterances``, ``labelled`` (lines with a label), ``clients_labelled``,
    ``status`` (filter outcome counts) and ``corrections_per_client``.
    """
    lines = label_store_lines(records, mode, cfg)
    results.write_jsonl(path, lines, ensure_ascii=False)
    return {"mode": mode, "utterances": len(lines), "labelled": sum(bool(x["label"]) for x in lines),
            "clients_labelled": len({x["client"] for x in lines if x["label"]}),
            "status": dict(Counter(x["status"] for x in lines)), "corrections_per_client": correction_counts(lines)}


def read_label_store(path: str | Path, client_id: str | None = None) -> list[dict]:
    """Read a label store's lines (all, or one client's: what that device holds)."""
    lines = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    return lines if client_id is None else [x for x in lines if x.get("client") == client_id]


def correction_counts(lines: Iterable[Mapping]) -> dict[str, int]:
    """Return ``{client: number of utterances the user corrected}`` (what each device reports)."""
    counts: dict[str, int] = defaultdict(int)
    for x in lines:
        counts[x["client"]] += x.get("correction") is not None  # a client with none still reports 0
    return dict(sorted(counts.items()))


def eligible_clients(counts: Mapping[str, int], min_corrections: int = 1) -> list[str]:
    """Return, sorted, the clients that report at least ``min_corrections`` corrections (paper §2.5).

    ``min_corrections = 0`` selects everyone (no client selection). The counts come from the clients:
    in production a device checks this eligibility criterion itself before it checks in for the task,
    so the server never learns the count of an ineligible device.
    """
    if min_corrections < 0:
        raise ValueError("min_corrections must be >= 0")
    return sorted(c for c, n in counts.items() if n >= min_corrections)


# ---------------------------------------------------------------------------------------------------
# Client statistics for WCA
# ---------------------------------------------------------------------------------------------------


def corrected_words(hypothesis: str, label: str) -> Counter:
    """Return the words of the label that the hypothesis lacked (multiset difference ``c − h``)."""
    return Counter(label.split()) - Counter(hypothesis.split())


def word_bucket(word: str, buckets: int) -> int:
    """Return the histogram bucket of ``word``: blake2b(word) mod ``buckets`` (stable everywhere)."""
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little") % buckets


@dataclass
class ClientStats:
    """What a client uploads beside its update for WCA (and nothing else reaches the server).

    Wire encoding (Flower MetricRecord values: ints and lists of ints), key → value:
    ``wca-utterances`` its on-device utterances, ``wca-corrections`` how many the user corrected,
    ``wca-kept`` corrections it trains on, ``wca-hist`` the corrected-word histogram as ``buckets``
    counts (word ``w`` → `word_bucket` (w)), ``wca-drop-<reason>`` filter drops by reason.
    The hashed histogram is compact (1024 int64 = 8 KiB vs ~12 MB of model), but it is not private:
    the hash is public, so a dictionary attack recovers common words. Production would aggregate it
    securely (df and H below are sums over clients) and add DP noise (paper.md §5 row 16).
    """

    utterances: int
    corrections: int
    kept: int
    histogram: np.ndarray  # (buckets,) int64 counts of corrected words
    drops: dict[str, int] = field(default_factory=dict)

    def to_metrics(self) -> dict[str, int | list[int]]:
        """Encode for the wire (a Flower MetricRecord accepts this dict as is)."""
        return {"wca-utterances": int(self.utterances), "wca-corrections": int(self.corrections),
                "wca-kept": int(self.kept), "wca-hist": [int(v) for v in self.histogram],
                **{f"wca-drop-{k}": int(v) for k, v in self.drops.items()}}

    @classmethod
    def from_metrics(cls, metrics: Mapping, buckets: int | None = None) -> ClientStats:
        """Decode `to_metrics`' output (server side); raise ValueError on a malformed histogram."""
        hist = np.asarray(list(metrics["wca-hist"]), dtype=np.float64)
        if hist.ndim != 1 or (buckets is not None and hist.size != buckets):
            raise ValueError(f"wca-hist has {hist.size} buckets, expected {buckets}")
        if not np.all(np.isfinite(hist)) or np.any(hist < 0) or np.any(hist != np.round(hist)):
            raise ValueError("wca-hist must hold non-negative integer counts")
        drops = {k[len("wca-drop-"):]: int(v) for k, v in metrics.items() if k.startswith("wca-drop-")}
        return cls(int(metrics["wca-utterances"]), int(metrics["wca-corrections"]), int(metrics["wca-kept"]),
                   hist.astype(np.int64), drops)


def client_stats(lines: Iterable[Mapping], buckets: int = 1024) -> ClientStats:
    """Compute one client's WCA statistics from its label-store lines (on the device).

    The histogram counts `corrected_words` of every utterance the client trains on with a correction
    as its label, ``h_i(b) = Σ_u Σ_{w ∈ c_u − h_u, bucket(w) = b} 1``.
    """
    lines = list(lines)
    hist = np.zeros(buckets, dtype=np.int64)
    kept = 0
    for x in lines:
        if x.get("label") and x.get("source") == "correction":
            kept += 1
            for w, n in corrected_words(x.get("hypothesis") or "", x["label"]).items():
                hist[word_bucket(w, buckets)] += n
    drops = Counter(x["status"] for x in lines if x.get("status") in DROP_REASONS)
    return ClientStats(len(lines), sum(x.get("correction") is not None for x in lines), kept, hist, dict(drops))


def client_round_stats(lines: Iterable[Mapping], client_id: str, buckets: int = 1024) -> ClientStats:
    """Return a selected client's `ClientStats` for this round, or raise `ClientDeclined` (on the device).

    ``lines`` are the client's label-store lines. A client with no labelled line declines:
    ``"all-filtered"`` if the user corrected something (the filter dropped it all), else
    ``"no-corrections"``; the exception carries the filter outcome counts.
    """
    lines = [x for x in lines if x.get("client") == client_id]
    if not any(x.get("label") for x in lines):
        corrected = any(x.get("correction") is not None for x in lines)
        raise ClientDeclined(client_id, "all-filtered" if corrected else "no-corrections",
                             Counter(x.get("status", "uncorrected") for x in lines))
    return client_stats(lines, buckets)


# ---------------------------------------------------------------------------------------------------
# Weighted Client Aggregation
# ---------------------------------------------------------------------------------------------------


def wca_weights(stats: Sequence[ClientStats], method: str = "frequency", *,
                num_examples: Sequence[float] | None = None, losses: Sequence[float] | None = None,
                power: float = 1.0) -> list[float]:
    """Return the aggregation weights ``a_i`` of one round's K clients (paper §2.5 WCA; formulas [INF]).

    With ``h_i`` the clients' corrected-word histograms, ``n_i`` their example counts (default: their
    kept corrections), ``df_b = |{i : h_i(b) > 0}|`` and ``H(b) = Σ_i h_i(b)``:

    * ``"examples"``:  a_i = n_i (FedAvg, no WCA);  ``"uniform"``: a_i = 1.
    * ``"frequency"`` (WCA 1, default): an IDF over the round's histograms, ``idf_b = 1 + ln((1+K)/(1+df_b))``;
      a client's informativeness is the mean IDF of its corrected words,
      ``s_i = Σ_b h_i(b)·idf_b / Σ_b h_i(b)`` (``s_i = 1`` for an empty histogram), and
      ``a_i = n_i · s_i^γ``. Clients whose corrections fix words few others fix (their own new terms)
      weigh up to ``1 + ln((1+K)/2)`` times more than clients fixing words everyone fixes.
    * ``"frequency-common"`` (paper.md §2.5's candidate): ``a_i = Σ_b h_i(b)·ln(1 + H(b))``: favours
      corrections that many clients make (systematic errors).
    * ``"corrections"`` (correction-count weighting): ``a_i = Σ_b h_i(b)``, the client's number of
      corrected words: its label information about the seed model's errors.
    * ``"loss"`` (WCA 2 default, loss-based aggregation of Gao et al. 2021, paper.md §2.5):
      ``a_i = n_i · L_i^γ`` with ``L_i`` the client's mean training loss at the global weights.

    Fallback: if any weight is negative or non-finite, or all are zero, a warning is logged and
    ``a_i = n_i`` is used (``a_i = 1`` if those are unusable too).
    """
    k = len(stats)
    if k == 0:
        return []
    n = np.asarray(num_examples if num_examples is not None else [s.kept for s in stats], dtype=np.float64)
    hist = np.stack([np.asarray(s.histogram, dtype=np.float64) for s in stats])  # (K, B)
    total = hist.sum(axis=1)  # corrected words per client
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "examples":
            a = n
        elif method == "uniform":
            a = np.ones(k)
        elif method == "frequency":
            idf = 1.0 + np.log((1.0 + k) / (1.0 + (hist > 0).sum(axis=0)))
            s = np.where(total > 0, hist @ idf / np.where(total > 0, total, 1.0), 1.0)
            a = n * s**power
        elif method == "frequency-common":
            a = hist @ np.log1p(hist.sum(axis=0))
        elif method == "corrections":
            a = total
        elif method == "loss":
            if losses is None or len(losses) != k:
                raise ValueError("WCA 'loss' needs one loss per client")
            a = n * np.asarray(losses, dtype=np.float64) ** power
        else:
            raise ValueError(f"unknown WCA method {method!r}: use one of {WCA_METHODS}")
    return _usable(a, n, method)


def _usable(a: np.ndarray, n: np.ndarray, method: str) -> list[float]:
    """Return ``a`` if it is a usable weight vector, else the documented fallback (with a warning)."""
    def ok(w: np.ndarray) -> bool:
        return bool(np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0)

    if ok(a):
        return [float(v) for v in a]
    fallback = n if ok(n) else np.ones_like(a)
    log.warning("WCA %r weights %s are unusable (all zero, negative or non-finite); falling back to %s",
                method, [float(v) for v in a], "example counts" if ok(n) else "uniform weights")
    return [float(v) for v in fallback]


# ---------------------------------------------------------------------------------------------------
# Analysis of the filter (evaluation only)
# ---------------------------------------------------------------------------------------------------


def filter_report(records: Sequence[Mapping], cfg: FilterConfig | None = None) -> dict:
    """How well the filter separates right from wrong corrections (evaluation only: reads oracle fields).

    Returns ``{"by_kind": {kind: {"corrections", "kept", "<reason>": n}}, "incorrect_removed"`` (share
    of corrections whose label is not the reference that the filter dropped), ``"wrong_removed"``
    (same, kind "wrong" only), ``"correct_kept"`` (share of right corrections kept), ``"precision"``
    (share of kept labels that are right)}``.
    """
    res = filter_corrections(records, cfg)
    by_kind: dict[str, Counter] = defaultdict(Counter)
    good = bad = good_kept = bad_removed = 0
    for r in records:
        if r["correction"] is None:
            continue
        st = res.status[r["id"]]
        by_kind[r["kind"]].update({"corrections": 1, st: 1})
        right = bool(r["oracle"]["label_correct"])
        good += right
        bad += not right
        good_kept += right and st == "kept"
        bad_removed += (not right) and st != "kept"
    kept = sum(c["kept"] for c in by_kind.values())
    wrong = by_kind.get("wrong", Counter())

    def rate(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {"by_kind": {k: dict(v) for k, v in sorted(by_kind.items())}, "incorrect_removed": rate(bad_removed, bad),
            "wrong_removed": rate(wrong["corrections"] - wrong["kept"], wrong["corrections"]),
            "correct_kept": rate(good_kept, good), "precision": rate(good_kept, kept)}
