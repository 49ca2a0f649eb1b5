"""WER/CER via jiwer, aggregated over a corpus by word/character counts, plus new-term recall.

Corpus-level error rates are ``total edit errors / total reference words`` (or characters), the
standard definition (NIST sclite) and the one the paper's WER tables use; the mean of per-utterance
WERs would over-weight short utterances.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

import jiwer

__all__ = ["error_counts", "wer", "cer", "wer_report", "term_recall"]


def error_counts(refs: Sequence[str], hyps: Sequence[str], unit: str = "word") -> dict:
    """Edit-distance counts summed over utterances.

    Args:
        refs: reference transcripts; hyps: hypotheses, same length (empty strings allowed).
        unit: ``"word"`` or ``"char"`` (characters include spaces, as jiwer counts them).

    Returns:
        ``{"substitutions", "deletions", "insertions", "hits", "ref_units", "errors", "rate"}``;
        ``rate = errors / ref_units`` (NaN when there are no reference units).
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("no utterances to score")
    # jiwer sums the alignment counts over all pairs, i.e. corpus-level aggregation
    out = (jiwer.process_words if unit == "word" else jiwer.process_characters)(list(refs), list(hyps))
    s, d, i, h = out.substitutions, out.deletions, out.insertions, out.hits
    n = s + d + h  # reference units
    errors = s + d + i
    return {"substitutions": s, "deletions": d, "insertions": i, "hits": h, "ref_units": n,
            "errors": errors, "rate": errors / n if n else math.nan}


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus word error rate: total word errors / total reference words."""
    return error_counts(refs, hyps, "word")["rate"]


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus character error rate: total character errors / total reference characters."""
    return error_counts(refs, hyps, "char")["rate"]


def _summary(refs: Sequence[str], hyps: Sequence[str]) -> dict:
    w, c = error_counts(refs, hyps, "word"), error_counts(refs, hyps, "char")
    return {
        "wer": w["rate"], "cer": c["rate"], "utterances": len(refs), "ref_words": w["ref_units"],
        "substitutions": w["substitutions"], "deletions": w["deletions"], "insertions": w["insertions"],
        "ref_chars": c["ref_units"], "char_errors": c["errors"],
    }


def wer_report(
    refs: Sequence[str],
    hyps: Sequence[str],
    ids: Sequence[str] | None = None,
    subsets: dict[str, Iterable[str]] | None = None,
) -> dict:
    """WER and CER of a test set, overall and per named subset of utterance ids.

    Args:
        refs, hyps: transcripts, aligned.
        ids: utterance ids aligned with refs (needed for ``subsets``).
        subsets: ``{name: ids}``, e.g. ``{"new_terms": ...}``; ids absent from ``ids`` are ignored,
            an empty subset reports ``utterances: 0`` and NaN rates.

    Returns:
        ``{"wer", "cer", "utterances", "ref_words", "substitutions", "deletions", "insertions",
        "ref_chars", "char_errors", "subsets": {name: same keys}}``.
    """
    report = _summary(refs, hyps)
    report["subsets"] = {}
    if subsets:
        if ids is None or len(ids) != len(refs):
            raise ValueError("subsets need ids aligned with refs")
        for name, members in subsets.items():
            members = set(members)
            sel = [k for k, u in enumerate(ids) if u in members]
            if sel:
                report["subsets"][name] = _summary([refs[k] for k in sel], [hyps[k] for k in sel])
            else:
                report["subsets"][name] = {"wer": math.nan, "cer": math.nan, "utterances": 0, "ref_words": 0}
    return report


def term_recall(terms: Sequence[Iterable[str]], hyps: Sequence[str]) -> dict:
    """Share of term words (e.g. client contact/place names) that appear in the hypothesis.

    Each utterance's term words are matched against its own hypothesis' words as multisets, so a
    name said twice must be recognised twice (calibration.md's "entity recall").

    Args:
        terms: per utterance, its terms (e.g. `fedasr.data.Utterance.terms`; multi-word terms are split).
        hyps: hypotheses aligned with ``terms``.

    Returns:
        ``{"recall": found / total (NaN if no terms), "found": int, "total": int}``.
    """
    if len(terms) != len(hyps):
        raise ValueError(f"{len(terms)} term lists but {len(hyps)} hypotheses")
    found = total = 0
    for ts, h in zip(terms, hyps):
        want = Counter(w for t in ts for w in t.split())
        have = Counter(h.split())
        total += sum(want.values())
        found += sum(min(n, have[w]) for w, n in want.items())
    return {"recall": found / total if total else math.nan, "found": found, "total": total}
