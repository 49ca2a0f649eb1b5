"""Evidence over seeds and utterances (issue 18): means with 95% intervals and paired relative deltas.

A result is one number per (variant, seed); a claim compares two variants. Two sources of chance move it:

* the **seed** of a run (which clients each round samples, which corrections the simulated users make, the
  central update's sample, stochastic rounding in the codecs): several runs per variant;
* the **test set**: a few hundred utterances, so one utterance more or less moves WER by a fraction of a point.

`mean_ci` gives a row's mean over seeds with a Student-t 95% interval (the spread of seeds only). A comparison
uses both sources: `paired_delta` is the relative change ``(b − a) / a`` of corpus WER (errors over reference
words, pooled over seeds) with a two-level bootstrap interval — each replicate draws seeds with replacement and,
independently, the test utterances with replacement, and scores both variants on the same draws (paired: seed
``k`` of ``a`` against seed ``k`` of ``b``, the same utterances). Efron & Tibshirani 1993 (percentile
bootstrap); Bisani & Ney 2004 (bootstrap for ASR error rates). A difference is claimed only where the
interval excludes zero (`verdict`); otherwise "no measurable difference".

Inputs are per-utterance scores: `utterance_scores` aligns hypotheses (a run's ``hypotheses/*.jsonl``) with the
references and term lists of the corpus.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jiwer
import numpy as np
from scipy import stats

__all__ = ["Scores", "mean_ci", "utterance_scores", "paired_delta", "verdict"]


@dataclass(frozen=True)
class Scores:
    """Per-utterance counts of one run on one test set, in the order of ``ids``.

    Attributes:
        ids: utterance ids ``(U,)``.
        errors: word errors (substitutions + deletions + insertions) ``(U,)``.
        words: reference words ``(U,)``.
        terms_found: term words recognised ``(U,)`` (`fedasr.metrics.term_recall`'s multiset match).
        terms_total: term words in the reference ``(U,)``.
    """

    ids: tuple[str, ...]
    errors: np.ndarray
    words: np.ndarray
    terms_found: np.ndarray
    terms_total: np.ndarray

    def subset(self, keep: Sequence[bool]) -> Scores:
        """The utterances where ``keep`` is true (e.g. those that contain new terms)."""
        k = np.asarray(keep, dtype=bool)
        return Scores(tuple(i for i, m in zip(self.ids, k) if m), self.errors[k], self.words[k],
                      self.terms_found[k], self.terms_total[k])

    @property
    def wer(self) -> float:
        """Corpus WER: all errors over all reference words."""
        return float(self.errors.sum() / self.words.sum()) if self.words.sum() else math.nan

    @property
    def term_recall(self) -> float:
        """Share of term words recognised (NaN without terms)."""
        return float(self.terms_found.sum() / self.terms_total.sum()) if self.terms_total.sum() else math.nan


def utterance_scores(refs: Mapping[str, str], terms: Mapping[str, Sequence[str]], hyps: Mapping[str, str],
                     ids: Sequence[str] | None = None) -> Scores:
    """Score ``hyps`` against ``refs`` utterance by utterance (jiwer word alignment).

    Args:
        refs: reference transcript by utterance id.
        terms: the utterance's new terms by id (missing: none).
        hyps: hypothesis by id; an utterance without one (unreadable audio at evaluation) counts all its
            reference words as deletions, so two runs are always scored on the same utterances.
        ids: the order (default: sorted ids of ``refs``).
    """
    ids = tuple(sorted(refs) if ids is None else ids)
    errors, words, found, total = [], [], [], []
    for i in ids:
        ref, hyp = refs[i], hyps.get(i, "")
        out = jiwer.process_words(ref, hyp)
        errors.append(out.substitutions + out.deletions + out.insertions)
        words.append(out.substitutions + out.deletions + out.hits)
        want = Counter(w for t in terms.get(i, ()) for w in t.split())
        have = Counter(hyp.split())
        total.append(sum(want.values()))
        found.append(sum(min(n, have[w]) for w, n in want.items()))
    arr = lambda xs: np.asarray(xs, dtype=np.int64)  # noqa: E731
    return Scores(ids, arr(errors), arr(words), arr(found), arr(total))


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean over seeds with a Student-t interval: ``{"mean", "ci95": [lo, hi], "n", "values"}``.

    One value has no interval (``ci95`` is ``[None, None]``): one run is an anecdote.
    """
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    out = {"mean": float(x.mean()) if x.size else None, "n": int(x.size), "values": [float(v) for v in x]}
    if x.size < 2:
        return {**out, "ci95": [None, None]}
    half = stats.t.ppf(0.5 + level / 2, df=x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return {**out, "ci95": [float(x.mean() - half), float(x.mean() + half)]}


def _rate(num: np.ndarray, den: np.ndarray, w_seed: np.ndarray, c_utt: np.ndarray) -> np.ndarray:
    """Pooled rate per replicate: ``Σ_s Σ_u w[b,s]·c[b,u]·num[s,u] / Σ_s Σ_u w[b,s]·c[b,u]·den[s,u]``."""
    return np.einsum("bs,su,bu->b", w_seed, num, c_utt) / np.einsum("bs,su,bu->b", w_seed, den, c_utt)


def paired_delta(a: Sequence[Scores], b: Sequence[Scores], metric: str = "wer", n_boot: int = 2000,
                 seed: int = 0, level: float = 0.95) -> dict:
    """Relative change ``(b − a) / a`` of ``metric`` (``"wer"`` or ``"term_recall"``) with a paired bootstrap.

    Args:
        a, b: per seed, the two variants' scores on the same utterances (seed ``k`` of each side paired).
        n_boot: bootstrap replicates; seed: the bootstrap's own random seed (the interval is reproducible).

    Returns:
        ``{"mean": point estimate on all seeds and utterances, "ci95": [lo, hi], "n_seeds", "n_utterances",
        "n_boot"}``.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired comparison needs the same number of seeds on both sides ({len(a)} vs {len(b)})")
    ids = a[0].ids
    for s in (*a, *b):
        if s.ids != ids:
            raise ValueError("paired comparison needs every run scored on the same utterances in the same order")
    if metric == "wer":
        num_a, num_b = np.stack([s.errors for s in a]), np.stack([s.errors for s in b])
        den_a, den_b = np.stack([s.words for s in a]), np.stack([s.words for s in b])
    elif metric == "term_recall":
        num_a, num_b = np.stack([s.terms_found for s in a]), np.stack([s.terms_found for s in b])
        den_a, den_b = np.stack([s.terms_total for s in a]), np.stack([s.terms_total for s in b])
    else:
        raise ValueError(f"unknown metric {metric!r} (expected 'wer' or 'term_recall')")
    n_seeds, n_utts = num_a.shape
    ones_s, ones_u = np.ones((1, n_seeds)), np.ones((1, n_utts))
    point = _rate(num_b, den_b, ones_s, ones_u) / _rate(num_a, den_a, ones_s, ones_u) - 1.0
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot).astype(float)
    c = rng.multinomial(n_utts, np.full(n_utts, 1.0 / n_utts), size=n_boot).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = _rate(num_b, den_b, w, c) / _rate(num_a, den_a, w, c) - 1.0
    reps = reps[np.isfinite(reps)]
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2]) if reps.size else (math.nan, math.nan)
    return {"mean": float(point[0]), "ci95": [float(lo), float(hi)], "n_seeds": n_seeds, "n_utterances": n_utts,
            "n_boot": n_boot}


def verdict(ci95: Sequence[float | None]) -> str:
    """``"lower"`` / ``"higher"`` where the interval excludes zero, else ``"no measurable difference"``."""
    lo, hi = ci95
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi) or lo <= 0.0 <= hi:
        return "no measurable difference"
    return "lower" if hi < 0 else "higher"
