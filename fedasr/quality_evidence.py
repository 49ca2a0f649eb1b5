"""``results/quality/evidence.json``: the quality ablation as means over seeds with intervals (issue 18).

Each federated run writes the hypotheses of its first and last evaluation (``<run>/hypotheses/round<NNN>.jsonl``,
`fedasr.results.RunDir.hypotheses_path`: one ``{"split", "id", "hyp"}`` per line). This module scores them utterance by
utterance against the corpus (`fedasr.evidence.utterance_scores`) and writes, for the metrics of the ablation:

* ``wer_user``: WER on ``user_test`` (clients never seen in training);
* ``wer_new_terms``: WER on the ``user_heldout`` utterances that contain the speaker's own new terms (seen users);
* ``wer_proxy``: WER on ``proxy_test`` (the server domain: forgetting);
* ``term_recall``: share of those new-term words recognised (`fedasr.metrics.term_recall`),

a row per variant (the seed model first: round 0 of the runs; the headline configuration last) with the mean over
seeds and its Student-t 95% interval, and the paired comparisons — each row against the one before it, the
headline against the seed model and against FL on hypotheses — as relative deltas with two-level bootstrap
intervals (`fedasr.evidence.paired_delta`) and a verdict. ``tuned_on`` names the splits the configuration's
choices were made on (declared in the experiment config, never inferred).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedasr import data as data_lib
from fedasr import evidence

__all__ = ["DEV_TWINS", "HEADLINE", "METRICS", "MIN_SEEDS", "TARGETS", "build", "headline", "metric_table",
           "read_hypotheses", "run_scores"]

MIN_SEEDS = 3  # a difference is claimed only from at least this many seeds (one run is an anecdote)
HEADLINE = "quality-headline"  # the experiment of the configuration chosen on dev splits (configs/quality/headline.toml)
# issue 18's targets for the headline vs the seed, relative change of the mean: user and new-terms WER at most, proxy
TARGETS = {"wer_user": -0.20, "wer_new_terms": -0.30, "wer_proxy": 0.03}

# metric → (test split, only utterances with new terms, what is measured)
METRICS: dict[str, tuple[str, bool, str]] = {
    "wer_user": ("user_test", False, "wer"),
    "wer_new_terms": ("user_heldout", True, "wer"),
    "wer_proxy": ("proxy_test", False, "wer"),
    "term_recall": ("user_heldout", True, "term_recall"),
}


# The dev twins of the test splits: an analysis on dev splits only (e.g. configs/quality/wca_hetero.toml) scores the
# same metrics there, and its evidence.json says so ("splits": "dev").
DEV_TWINS = {"user_test": "user_dev", "user_heldout": "user_heldout_dev", "proxy_test": "proxy_dev"}


def metric_table(eval_splits: Sequence[str]) -> tuple[dict[str, tuple[str, bool, str]], str] | None:
    """``(METRICS, "test")`` when an experiment evaluates a test split, the same metrics on the dev twins and
    ``"dev"`` when it evaluates only dev splits, None when neither."""
    if {split for split, _, _ in METRICS.values()} & set(eval_splits):
        return METRICS, "test"
    dev = {m: (DEV_TWINS[split], terms, kind) for m, (split, terms, kind) in METRICS.items()}
    return (dev, "dev") if {split for split, _, _ in dev.values()} & set(eval_splits) else None


def read_hypotheses(path: str | Path) -> dict[str, dict[str, str]]:
    """``{split: {utterance id: hypothesis}}`` from a hypotheses file."""
    out: dict[str, dict[str, str]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    d = json.loads(line)
                    out.setdefault(d["split"], {})[d["id"]] = d["hyp"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{n}: not a hypothesis line ({e})") from e
    return out




def run_scores(hyps: Mapping[str, Mapping[str, str]], refs: Mapping[str, Sequence[data_lib.Utterance]],
               metrics: Sequence[str] = tuple(METRICS),
               table: Mapping[str, tuple[str, bool, str]] = METRICS) -> dict[str, evidence.Scores]:
    """Per-utterance scores of one evaluation for each metric (its split, restricted to new terms where due)."""
    out = {}
    for m in metrics:
        split, terms_only, _ = table[m]
        utts = [u for u in refs[split] if u.terms or not terms_only]
        out[m] = evidence.utterance_scores({u.id: u.text for u in utts}, {u.id: u.terms for u in utts},
                                           hyps.get(split, {}), ids=[u.id for u in utts])
    return out


def _value(scores: evidence.Scores, metric: str) -> float:
    return scores.term_recall if METRICS[metric][2] == "term_recall" else scores.wer


def build(runs: Mapping[str, Sequence[str | Path]], corpus: str | Path, seeds: Sequence[int],
          tuned_on: Sequence[str], headline: str | None = None, baseline: str = "no_refinement",
          n_boot: int = 2000, splits: str = "test", pairs: Sequence[tuple[str, str]] | None = None,
          max_utterances: int = 0) -> dict:
    """The evidence of an ablation.

    Args:
        runs: variant → one hypotheses file per seed (in the order of ``seeds``); the first entry is the seed
            model (``"seed"``: its round-0 hypotheses), the last the headline configuration.
        corpus: the corpus folder whose test splits were decoded.
        seeds: the experiment's seeds.
        tuned_on: the splits the configuration's choices were made on.
        headline: the headline variant (default: the last of ``runs``).
        baseline: FL on the phones' own hypotheses, which the headline is also compared with.
        splits: ``"test"`` (`METRICS`) or ``"dev"`` (the same metrics on `DEV_TWINS`: a dev-only analysis).
        pairs: the comparisons ``(a, b)`` to make (default: each row against the one before it, the headline
            against the first row and against ``baseline``).
        max_utterances: the server evaluated only the first N utterances of each split (``task.eval-max-utterances``;
            0 = all): the same N are scored here.
    """
    table = METRICS if splits == "test" else {m: (DEV_TWINS[s], t, k) for m, (s, t, k) in METRICS.items()}
    names = list(runs)
    headline = headline or names[-1]
    for name, files in runs.items():
        if len(files) != len(seeds):
            raise ValueError(f"variant {name!r}: {len(files)} runs for {len(seeds)} seeds")
    refs = {split: utts[: max_utterances or None]
            for split, utts in data_lib.load_corpus(corpus, splits=sorted({table[m][0] for m in table})).items()}
    hyps = {name: [read_hypotheses(f) for f in files] for name, files in runs.items()}
    # a metric needs its split in the corpus and in every evaluation (an experiment may evaluate fewer splits)
    metrics = [m for m in table if refs.get(table[m][0]) and all(table[m][0] in h for hs in hyps.values()
                                                                 for h in hs)]
    if not metrics:
        raise ValueError(f"no metric of {list(METRICS)} can be scored: their splits are not in {corpus} "
                         "or not in the runs' hypotheses")
    scores = {name: [run_scores(h, refs, metrics, table) for h in hs] for name, hs in hyps.items()}
    rows = []
    for name in names:
        row = {"variant": name, "n_seeds": len(seeds)}
        row.update({m: evidence.mean_ci([_value(s[m], m) for s in scores[name]]) for m in metrics})
        rows.append(row)
    if pairs is None:
        pairs = list(zip(names, names[1:]))
        pairs += [(a, headline) for a in (names[0], baseline)
                  if a in scores and (a, headline) not in pairs and a != headline]
    unknown = sorted({x for pair in pairs for x in pair} - set(scores))
    if unknown:
        raise ValueError(f"comparisons name {unknown}, which are not among the runs ({names})")
    comparisons = []
    for a, b in pairs:
        for m in metrics:
            d = evidence.paired_delta([s[m] for s in scores[a]], [s[m] for s in scores[b]], table[m][2],
                                      n_boot=n_boot)
            verdict = evidence.verdict(d["ci95"]) if len(seeds) >= MIN_SEEDS else \
                f"not claimed: fewer than {MIN_SEEDS} seeds (the interval covers the test utterances only)"
            comparisons.append({"a": a, "b": b, "metric": m, "delta_rel": d, "verdict": verdict})
    return {"seeds": list(seeds), "tuned_on": list(tuned_on), "headline": headline,
            "splits": splits, f"{splits}_splits": {m: table[m][0] + (" (utterances with new terms)" if table[m][1]
                                                                       else "") for m in metrics},
            "utterances": {m: int(len(scores[names[0]][0][m].ids)) for m in metrics},
            "rows": rows, "comparisons": comparisons,
            "method": "rows: mean over seeds, Student-t 95% interval; comparisons: (b - a) / a of the pooled metric, "
                      f"paired two-level bootstrap over seeds and utterances ({n_boot} replicates, percentile 95%)"}


def headline(root: str | Path, experiment: str = HEADLINE) -> dict | None:
    """The headline configuration against the seed model (its ``evidence.json``): per metric the relative change of
    the mean with its paired 95% interval, the target and whether the mean meets it; the term recall before and
    after. None when the experiment has not run."""
    path = Path(root) / experiment / "evidence.json"
    if not path.exists():
        return None
    ev = json.loads(path.read_text())
    rows = {r["variant"]: r for r in ev["rows"]}
    head = ev.get("headline") or ev["rows"][-1]["variant"]
    cmp = {c["metric"]: c for c in ev["comparisons"] if (c["a"], c["b"]) == (ev["rows"][0]["variant"], head)}
    out = {"experiment": experiment, "headline": head, "seeds": ev["seeds"], "tuned_on": ev["tuned_on"], "metrics": {}}
    for m, bound in TARGETS.items():
        if m in cmp:
            d = cmp[m]["delta_rel"]
            out["metrics"][m] = {"seed": rows[ev["rows"][0]["variant"]][m]["mean"], "headline": rows[head][m]["mean"],
                                 "delta_rel": d["mean"], "ci95": d["ci95"], "target": bound, "met": d["mean"] <= bound,
                                 "verdict": cmp[m].get("verdict")}
    if "term_recall" in rows.get(head, {}):
        out["term_recall"] = {"seed": rows[ev["rows"][0]["variant"]]["term_recall"]["mean"],
                              "headline": rows[head]["term_recall"]["mean"]}
    return out
