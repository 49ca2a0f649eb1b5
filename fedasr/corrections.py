"""Simulated users correcting the transcripts their phone showed them (paper §2.5, Gift of Feedback).

The seed model's hypothesis ``h`` is what the phone displayed; a simulated user looks at it, knows
what they said (the reference ``r``, used **only here**, to simulate the user, and in evaluation) and
may type a correction ``c``. Gift of Feedback (paper.md §2.8.3) treats such edits as "a treasure
trove" of training pairs (audio, c); the paper (§2.5) adds that some of them are *incorrect
corrections* that on-device filtering must remove. Neither paper publishes how often users correct
or how they get it wrong, so every rate below is **our choice**, parameterized in `CorrectionConfig`
and anchored, where one exists, to the ranges paper.md §4.1 (E6) and §4.2 suggest [INF].

The user model, per utterance ``u`` of client ``k`` (all draws seeded from ``(seed, u.id)`` or
``(seed, client)``, so a record does not depend on which other utterances are simulated)::

    e_k = 0 with prob. never_fraction, else e_k ~ Beta(engagement_a, engagement_b)   # per-client propensity
    if h == r:  P(correct) = e_k · p_edit_correct                   # a content edit of a right transcript
    else:       P(correct) = e_k · min(1, p_base + p_term·[a term word is wrong]
                                            + p_per_error·min(WER_u, 1))
    given a correction of an erroneous h, its kind is
        wrong   with q_k        (rewrite | empty | junk | long [| substitute, off by default], by the wrong_* mix)
        typo    with p_typo     (the right text, one typed word mistyped)
        partial with p_partial  (only some error regions fixed: the new term's first, if wrong)
        exact   otherwise       (c = r, up to casing/punctuation the device normalizes away)
    q_k = p_wrong, or with wrong_concentration κ > 0 a per-client Beta draw of mean p_wrong (correction_quality)

A *record* per utterance (``simulate_corrections``) holds what the device has — ``id``, ``client``,
``duration``, ``hypothesis``, ``correction`` (the raw typed text, or ``None``) — plus the simulation's
``kind`` / ``wrong_type`` and an ``oracle`` dict (probability used, error count, whether the label
is right) for analysis. The reference text itself is never stored. Device-side code must read a
record through `device_view`, which drops everything the device could not know.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from rapidfuzz.distance import Levenshtein  # a dependency of jiwer (pinned), C-speed edit distances

from fedasr import results
from fedasr.correction_quality import client_wrong_rate, kind_thresholds
from fedasr.data import DataError, Utterance, normalize_text
from fedasr.seeding import derive_seed

__all__ = [
    "KINDS",
    "WRONG_TYPES",
    "DEVICE_FIELDS",
    "CorrectionConfig",
    "client_engagement",
    "error_regions",
    "correction_probability",
    "simulate_utterance",
    "simulate_corrections",
    "device_view",
    "write_records",
    "read_records",
    "summarize",
]

KINDS = ("none", "exact", "partial", "typo", "wrong")
WRONG_TYPES = ("rewrite", "empty", "junk", "long", "substitute")
DEVICE_FIELDS = ("id", "client", "duration", "hypothesis", "correction")  # what a phone holds per utterance


def _qwerty_neighbours() -> dict[str, str]:
    """Return the keys next to each letter on a QWERTY keyboard (left/right, and above/below)."""
    out = {}
    for ri, row in enumerate(_ROWS):
        for i, ch in enumerate(row):
            near = [row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)]
            near += [_ROWS[r][i] for r in (ri - 1, ri + 1) if 0 <= r < len(_ROWS) and i < len(_ROWS[r])]
            out[ch] = "".join(near)
    return out


_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS = _qwerty_neighbours()  # a typo is most often an adjacent key (our typo model)
_JUNK = ("👍", "😂😂", "🙏", "📍", "https://maps.example.com/?q=", "@home", "ok 👌", "<3")


@dataclass
class CorrectionConfig:
    """How simulated users correct (``[corrections]`` table). All rates are our choice [INF].

    Attributes:
        seed: seeds every draw, with the client id (engagement) or the utterance id (everything else).
        never_fraction: share of clients who never correct anything. paper.md §4.2 suggests 30–50%
            of clients hold ≥ 1 correction; on the quick profile (~16 utterances per client) 0.5 with
            the default engagement gives 42–45% (50–54 of 120 clients with synthetic hypotheses).
            (Default: 0.5)
        engagement_a, engagement_b: Beta(a, b) correction propensity of the other clients. a, b < 1
            is U-shaped: most engaged users correct rarely or almost always, so per-client correction
            counts are long-tailed on top of the long-tailed utterance counts. Mean a/(a+b) = 0.5, in
            paper.md E6's p_correct range 0.3–0.7. (Default: 0.7, 0.7)
        p_base: chance an engaged user corrects any erroneous transcript. (Default: 0.3)
        p_term: added when a client-specific new term (name, place) is wrong: Gift of Feedback's
            point is that users fix fresh terms they care about. (Default: 0.5)
        p_per_error: added per unit of the utterance's WER (capped at 1): bigger errors are likelier
            to be fixed. (Default: 0.4)
        p_edit_correct: chance an engaged user edits a *correct* transcript (changing what they meant
            to say): always a wrong correction. (Default: 0.05)
        p_wrong: share of corrections that are content rewrites / cleared / junk / pasted text, the
            "incorrect corrections" filtering must remove (paper.md E6: p_bad 10–30%). (Default: 0.15)
        wrong_concentration: κ > 0 gives each client its own wrong rate ~ Beta(p_wrong·κ, (1 − p_wrong)·κ), mean
            p_wrong (careful vs careless typists; `fedasr.correction_quality`). 0: one rate for all. (Default: 0.0)
        p_typo: share of corrections with one mistyped word. (Default: 0.05)
        p_partial: share of corrections fixing only some error regions (needs ≥ 2 regions; with one
            region a partial fix is the whole fix and the kind is "exact"). (Default: 0.10)
        wrong_rewrite, wrong_empty, wrong_junk, wrong_long: relative mix of wrong corrections: a
            different message (another of the client's utterances, or a splice with one), a cleared
            field, emoji / a URL / chat text, a pasted text of ``long_words`` words. (Default: 0.7, 0.1,
            0.1, 0.1)
        wrong_substitute: weight of a fifth wrong type, **off by default**, that the filter's rules were not
            written for (issue 18: judging the filter on a kind it never saw): the right text with one name or
            word wrong (`_substitute`). It is as long, as fast and as close to the hypothesis as a right
            correction, so no rule of `fedasr.refinement.check_correction` is aimed at it. (Default: 0.0)
        p_splice: share of rewrites that keep the first half of what was said (harder to filter).
            (Default: 0.3)
        p_format: share of typed texts with a capital first letter and final punctuation, which the
            device's text normalization removes. (Default: 0.3)
        long_words: length of a pasted long text, in words. (Default: 60)
    """

    seed: int = 0
    never_fraction: float = 0.5
    engagement_a: float = 0.7
    engagement_b: float = 0.7
    p_base: float = 0.3
    p_term: float = 0.5
    p_per_error: float = 0.4
    p_edit_correct: float = 0.05
    p_wrong: float = 0.15
    wrong_concentration: float = 0.0  # off: every client's wrong rate is p_wrong (records unchanged)
    p_typo: float = 0.05
    p_partial: float = 0.10
    wrong_rewrite: float = 0.7
    wrong_empty: float = 0.1
    wrong_junk: float = 0.1
    wrong_long: float = 0.1
    wrong_substitute: float = 0.0  # off: the default simulation never draws it (records unchanged)
    p_splice: float = 0.3
    p_format: float = 0.3
    long_words: int = 60

    def __post_init__(self) -> None:
        probs = ("never_fraction", "p_base", "p_term", "p_per_error", "p_edit_correct", "p_wrong", "p_typo",
                 "p_partial", "p_splice", "p_format")
        for name in probs:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.p_wrong + self.p_typo + self.p_partial > 1.0:
            raise ValueError("p_wrong + p_typo + p_partial must be <= 1")
        mix = self.wrong_mix()
        if any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError("wrong_* weights must be >= 0 with a positive sum")
        if self.engagement_a <= 0 or self.engagement_b <= 0 or self.long_words < 1:
            raise ValueError("engagement_a, engagement_b and long_words must be > 0")
        if self.wrong_concentration < 0:
            raise ValueError("wrong_concentration must be >= 0 (0 = off)")

    def wrong_mix(self) -> dict[str, float]:
        """Return the wrong-correction types with their normalised probabilities."""
        w = {t: getattr(self, f"wrong_{t}") for t in WRONG_TYPES}
        total = sum(w.values())
        return {t: v / total for t, v in w.items()} if total > 0 else w


def _rng(*parts) -> random.Random:
    """Return a Random seeded from ``parts`` (`fedasr.seeding.derive_seed`: stable across processes)."""
    return random.Random(derive_seed(*parts))


def client_engagement(client: str | None, cfg: CorrectionConfig) -> float:
    """Return client ``client``'s correction propensity ``e_k`` (0 for a client who never corrects)."""
    rng = _rng("engagement", cfg.seed, client)
    if rng.random() < cfg.never_fraction:
        return 0.0
    return rng.betavariate(cfg.engagement_a, cfg.engagement_b)


def error_regions(hyp_words: Sequence[str], ref_words: Sequence[str]) -> list[tuple[int, int, int, int]]:
    """Return the maximal non-matching regions ``(h0, h1, r0, r1)`` of a minimum word alignment.

    Adjacent substitutions/insertions/deletions merge into one region: a user fixes a stretch of text
    at once (e.g. ``"west way in view"`` → ``"west wayneview"`` is one region, not three edits).
    """
    regions: list[list[int]] = []
    for op in Levenshtein.opcodes(list(hyp_words), list(ref_words)):
        if op.tag == "equal":
            continue
        if regions and regions[-1][1] == op.src_start and regions[-1][3] == op.dest_start:
            regions[-1][1], regions[-1][3] = op.src_end, op.dest_end
        else:
            regions.append([op.src_start, op.src_end, op.dest_start, op.dest_end])
    return [tuple(r) for r in regions]


def _term_wrong(hyp_words: Sequence[str], terms: Iterable[str]) -> bool:
    want = Counter(w for t in terms for w in t.split())
    have = Counter(hyp_words)
    return any(have[w] < n for w, n in want.items())


def correction_probability(hypothesis: str, reference: str, terms: Iterable[str], engagement: float,
                           cfg: CorrectionConfig) -> tuple[float, int, bool]:
    """Return ``(P(correct), word errors, a term word is wrong)`` for one utterance (module docstring)."""
    h, r = hypothesis.split(), reference.split()
    errors = Levenshtein.distance(h, r)
    term_wrong = _term_wrong(h, terms)
    if errors == 0:
        return engagement * cfg.p_edit_correct, 0, term_wrong
    wer = min(errors / max(len(r), 1), 1.0)
    p = min(1.0, cfg.p_base + cfg.p_term * term_wrong + cfg.p_per_error * wer)
    return engagement * p, errors, term_wrong


def _fix(hyp: list[str], ref: list[str], regions: Sequence[tuple[int, int, int, int]]) -> tuple[list[str], list[int]]:
    """Apply the chosen regions' reference words to ``hyp``; return the words and the typed positions."""
    out, typed, pos = [], [], 0
    for h0, h1, r0, r1 in sorted(regions):
        out += hyp[pos:h0]
        typed += range(len(out), len(out) + r1 - r0)
        out += ref[r0:r1]
        pos = h1
    return out + hyp[pos:], typed


def _term_positions(ref: list[str], terms: Iterable[str]) -> set[int]:
    pos = set()
    for t in terms:
        tw = t.split()
        for i in range(len(ref) - len(tw) + 1):
            if tw and ref[i: i + len(tw)] == tw:
                pos.update(range(i, i + len(tw)))
    return pos


def _partial_regions(regions, ref, terms, rng) -> list:
    """Pick the regions a partial fix repairs: those with the wrong new term, else a random subset."""
    tpos = _term_positions(ref, terms)
    on_terms = [g for g in regions if tpos & set(range(g[2], g[3]))]
    if 0 < len(on_terms) < len(regions):
        return on_terms
    return rng.sample(regions, rng.randint(1, len(regions) - 1))


def _typo(word: str, rng: random.Random) -> str:
    """Return ``word`` with one keyboard typo (adjacent key, dropped, doubled or swapped letter)."""
    letters = [i for i, ch in enumerate(word) if ch in _NEIGHBOURS]
    if not letters:
        return word + rng.choice("aeiou")
    i = rng.choice(letters)
    op = rng.choice(("sub", "del", "dup", "swap"))
    if op == "del" and len(word) > 1:
        return word[:i] + word[i + 1:]
    if op == "dup":
        return word[:i] + word[i] + word[i:]
    if op == "swap" and i + 1 < len(word) and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return word[:i] + rng.choice(_NEIGHBOURS[word[i]]) + word[i + 1:]


def _substitute(reference: str, terms: Sequence[str], pool: Sequence[str], term_pool: Sequence[str],
                rng: random.Random) -> str:
    """Return ``reference`` with one name or word replaced by a plausible wrong one (wrong type "substitute").

    Where the utterance holds a client term and the client has another, the term becomes the other name
    spelled nearest to it: the user picks the wrong contact or place from the suggestions the keyboard or
    contact picker offers (the client's own names, correctly spelled). Otherwise one word of ≥ 3 letters
    becomes the nearest-spelled other word of the client's vocabulary (its references and names): an
    autocorrect or near-homophone slip ("fifteen" → "sixteen"). Everything else is right. Ties: at random.
    """
    ref = reference.split()
    others = sorted({t for t in term_pool if t not in terms})
    spans = [(i, t) for t in terms for i in range(len(ref)) if t and ref[i: i + len(t.split())] == t.split()]
    if spans and others:
        i, term = rng.choice(spans)
        return " ".join(ref[:i] + _nearest(term, others, rng).split() + ref[i + len(term.split()):])
    if not ref:
        return "never mind"
    i = rng.choice([j for j, w in enumerate(ref) if len(w) >= 3] or range(len(ref)))
    ref[i] = _nearest(ref[i], sorted({w for t in (*pool, *term_pool) for w in t.split()} - {ref[i]}) or ["the"], rng)
    return " ".join(ref)


def _nearest(text: str, candidates: Sequence[str], rng: random.Random) -> str:
    """Return the candidate with the smallest character edit distance to ``text`` (ties at random)."""
    dist = [Levenshtein.distance(text, c) for c in candidates]
    return rng.choice([c for c, d in zip(candidates, dist) if d == min(dist)])


def _wrong(reference: str, pool: Sequence[str], cfg: CorrectionConfig, rng: random.Random,
           terms: Sequence[str] = (), term_pool: Sequence[str] = ()) -> tuple[str, str]:
    """Return ``(typed text, wrong type)`` for an incorrect correction (``terms``, ``term_pool``: for substitutes)."""
    mix = cfg.wrong_mix()
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]  # a zero weight is never drawn
    if kind == "substitute":
        return _substitute(reference, terms, pool, term_pool, rng), kind
    others = [t for t in pool if t != reference] or ["never mind"]
    if kind == "rewrite":
        other = rng.choice(others).split()
        ref = reference.split()
        spliced = ref[: (len(ref) + 1) // 2] + other[len(other) // 2:]
        if rng.random() < cfg.p_splice and spliced != ref:
            return " ".join(spliced), kind
        return " ".join(other), kind
    if kind == "empty":
        return rng.choice(("", " ")), kind
    if kind == "junk":
        junk = rng.choice(_JUNK)
        return (junk + reference.replace(" ", "+") if junk.startswith("http") else f"{reference} {junk}"), kind
    words: list[str] = []
    while len(words) < cfg.long_words:
        words += rng.choice(others + [reference]).split()
    return " ".join(words[: cfg.long_words]), kind


def _format(text: str, rng: random.Random, cfg: CorrectionConfig) -> str:
    """Return ``text`` as typed: sometimes capitalised with final punctuation (normalized on device)."""
    if text and rng.random() < cfg.p_format:
        return text[0].upper() + text[1:] + rng.choice((".", "?", "!"))
    return text


def simulate_utterance(utt: Utterance, hypothesis: str, pool: Sequence[str], cfg: CorrectionConfig,
                       engagement: float | None = None, term_pool: Sequence[str] = ()) -> dict:
    """Return the correction record of one utterance (module docstring; ``pool``: texts for rewrites,
    ``term_pool``: the client's names for substitutes).

    Draw order is fixed (decide, then kind, then details) so a record depends only on
    ``(cfg, utt, hypothesis, pool, term_pool)``.
    """
    e = client_engagement(utt.client, cfg) if engagement is None else engagement
    rng = _rng("correction", cfg.seed, utt.id)
    hyp, ref = hypothesis.split(), utt.text.split()
    p, errors, term_wrong = correction_probability(hypothesis, utt.text, utt.terms, e, cfg)
    record = {"id": utt.id, "client": utt.client, "duration": utt.duration, "hypothesis": hypothesis,
              "correction": None, "kind": "none", "wrong_type": None,
              "oracle": {"p_correct": p, "engagement": e, "errors": errors, "term_wrong": term_wrong,
                         "regions": 0, "label_correct": None}}
    corrects, u_kind = rng.random() < p, rng.random()
    q = client_wrong_rate(utt.client, cfg.seed, cfg.p_wrong, cfg.wrong_concentration)
    if cfg.wrong_concentration > 0:
        record["oracle"]["p_wrong"] = q  # only when on: default records keep their fields
    if not corrects:
        return record
    regions = error_regions(hyp, ref)
    record["oracle"]["regions"] = len(regions)
    t_wrong, t_typo, t_partial = kind_thresholds(q, cfg.p_wrong, cfg.p_typo, cfg.p_partial)
    if errors == 0 or u_kind < t_wrong:
        text, record["wrong_type"] = _wrong(utt.text, pool, cfg, rng, utt.terms, term_pool)
        kind = "wrong"
    elif u_kind < t_typo:
        words, typed = _fix(hyp, ref, regions)
        i = rng.choice(typed) if typed else rng.randrange(len(words))
        words[i] = _typo(words[i], rng)
        text, kind = " ".join(words), "typo"
    elif u_kind < t_partial and len(regions) >= 2:
        text, kind = " ".join(_fix(hyp, ref, _partial_regions(regions, ref, utt.terms, rng))[0]), "partial"
    else:
        text, kind = utt.text, "exact"
    if kind != "wrong" or record["wrong_type"] in ("rewrite", "substitute"):  # typed; empty/junk/long stay as are
        text = _format(text, rng, cfg)
    record["correction"], record["kind"] = text, kind
    record["oracle"]["label_correct"] = normalize_text(record["correction"]) == normalize_text(utt.text)
    return record


def simulate_corrections(utterances: Sequence[Utterance], hypotheses: Mapping[str, str],
                         cfg: CorrectionConfig | None = None) -> list[dict]:
    """Simulate every user's corrections of the hypotheses their phone showed.

    Args:
        utterances: the clients' on-device utterances (e.g. ``user_train``); ``text`` is the reference.
        hypotheses: ``{id: what the phone showed}`` (e.g. `fedasr.asr_task.read_labels` of the seed
            model's hypothesis store); every utterance needs one.
        cfg: the user model (default `CorrectionConfig()`).

    Returns:
        One record per utterance, in input order (module docstring). Rewrites draw from the client's
        own other references (sorted by id, so records do not depend on the input order), substitutes
        from its references and terms.
    """
    cfg = cfg or CorrectionConfig()
    missing = [u.id for u in utterances if u.id not in hypotheses]
    if missing:
        raise DataError(f"{len(missing)} utterances have no hypothesis (e.g. {missing[:3]})")
    pools: dict[str | None, list[str]] = defaultdict(list)
    names: dict[str | None, set[str]] = defaultdict(set)
    for u in sorted(utterances, key=lambda u: u.id):
        pools[u.client].append(u.text)
        names[u.client].update(u.terms)
    engagement = {c: client_engagement(c, cfg) for c in pools}
    return [simulate_utterance(u, hypotheses[u.id], pools[u.client], cfg, engagement[u.client], sorted(names[u.client]))
            for u in utterances]


def device_view(record: Mapping) -> dict:
    """Return the fields of a record a device holds (`DEVICE_FIELDS`): no kind, no oracle, no reference."""
    return {k: record.get(k) for k in DEVICE_FIELDS}


def write_records(path: str | Path, records: Iterable[Mapping]) -> Path:
    """Write correction records as JSON lines (atomically: `fedasr.results.write_jsonl`)."""
    return results.write_jsonl(path, records, ensure_ascii=False)


def read_records(path: str | Path) -> list[dict]:
    """Read correction records written by `write_records`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summarize(records: Sequence[Mapping]) -> dict:
    """Realised rates of a simulation (analysis only: reads the simulation's kinds and oracle fields).

    Returns ``utterances``, ``clients``, ``clients_with_corrections``, ``corrected`` (count),
    ``corrected_rate`` (of utterances), ``expected_corrected`` (Σ P(correct)), ``erroneous``,
    ``corrected_rate_erroneous``, ``kinds`` (counts), ``wrong_rate`` (kind "wrong" among corrections of
    erroneous hypotheses), ``incorrect_rate`` (labels that differ from the reference, among all
    corrections) and ``wrong_types`` (counts).
    """
    n = len(records)
    corrected = [r for r in records if r["correction"] is not None]
    erroneous = [r for r in records if r["oracle"]["errors"] > 0]
    err_corr = [r for r in erroneous if r["correction"] is not None]
    per_client = Counter(r["client"] for r in corrected)
    return {
        "utterances": n,
        "clients": len({r["client"] for r in records}),
        "clients_with_corrections": len(per_client),
        "corrected": len(corrected),
        "corrected_rate": len(corrected) / n if n else math.nan,
        "expected_corrected": sum(r["oracle"]["p_correct"] for r in records),
        "erroneous": len(erroneous),
        "corrected_rate_erroneous": len(err_corr) / len(erroneous) if erroneous else math.nan,
        "kinds": dict(Counter(r["kind"] for r in records)),
        "wrong_rate": sum(r["kind"] == "wrong" for r in err_corr) / len(err_corr) if err_corr else math.nan,
        "incorrect_rate": (sum(not r["oracle"]["label_correct"] for r in corrected) / len(corrected)
                           if corrected else math.nan),
        "wrong_types": dict(Counter(r["wrong_type"] for r in corrected if r["wrong_type"])),
    }
