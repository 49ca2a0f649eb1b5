"""Calibrating and judging the on-device filter on clients it was not tuned on (paper §2.5, "filter on-device data").

The filter (`fedasr.refinement.check_correction`) drops corrections that cannot be a transcript of the audio. Its
``max_char_edit`` was first calibrated with the simulator's oracle right/wrong flags on the very corrections whose
removal rates were then reported (issue 18). Here the seen clients are split **by client** (seeded) into two
halves; the threshold is chosen on the calibration half only, by a criterion fixed in advance:

    maximise F1 of the class "wrong correction" (kind ``"wrong"``; the filter's positive call is a drop)
    subject to keeping ≥ ``min_correct_kept`` (98%) of the right corrections (label = reference);
    ties go to the larger threshold (the one that drops less); if no grid point keeps 98%, the one that keeps most.

and judged once on the evaluation half, with percentile-bootstrap 95% intervals over evaluation clients (Efron &
Tibshirani 1993; clients are resampled with all their records, as `fedasr.evidence.paired_delta` resamples
utterances). The other rules (word count, speaking rate, length ratio) keep `FilterConfig`'s defaults: absurdity
bounds set from the corpus's references, not from oracle flags.

A second judgement uses a wrong-correction kind that no rule was written for, the simulator's off-by-default
``wrong_substitute`` (`fedasr.corrections._substitute`: the right text with one name or word replaced by the
nearest-spelled alternative, e.g. the wrong contact picked from autocomplete), on the same evaluation clients and
with the threshold calibrated above, unchanged.

Records are simulated for several simulator seeds (which users correct what) over the same hypotheses, so each
half holds more corrections than one simulation gives; a client's records of every seed go into the bootstrap
together. Evaluation only: this reads oracle fields the device never sees.

    python -m fedasr.filter_calibration --out results/quality/filter_calibration.json
"""

from __future__ import annotations

import argparse
import random
import tomllib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from fedasr import asr_task, corrections, results
from fedasr import data as data_lib
from fedasr.data import DataError
from fedasr.refinement import FilterConfig, filter_corrections
from fedasr.seeding import derive_seed

__all__ = ["CalibrationConfig", "calibrate", "choose_threshold", "client_counts", "figures", "load_population", "main",
           "run", "split_clients"]

# Per-client counts (columns of `client_counts`) and the rates reported from them: name → (numerator, denominator)
COUNTS = ("corrections", "kept", "removed", "right", "right_kept", "incorrect", "incorrect_removed", "wrong",
          "wrong_removed", "seen_wrong", "seen_wrong_removed", "substitute", "substitute_removed")
RATES = {
    "correct_kept": ("right_kept", "right"),  # `filter_report`'s: right corrections kept
    "precision": ("right_kept", "kept"),  # `filter_report`'s: kept labels that are right
    "incorrect_removed": ("incorrect_removed", "incorrect"),  # `filter_report`'s: labels ≠ reference removed
    "wrong_removed": ("wrong_removed", "wrong"),  # `filter_report`'s; = the "wrong" class's recall
    "wrong_precision": ("wrong_removed", "removed"),  # the "wrong" class's precision: removals that were wrong
    "seen_wrong_removed": ("seen_wrong_removed", "seen_wrong"),  # the four kinds the rules were written for
    "substitute_removed": ("substitute_removed", "substitute"),  # the unseen kind
}


@dataclass
class CalibrationConfig:
    """What `run` reads, how it splits the clients and which thresholds it searches.

    Attributes:
        corpus: the corpus (its ``split`` holds the seen clients' on-device utterances). (Default: data/quick)
        seed_model: the checkpoint whose hypotheses of ``split`` the phones showed. (Default: results/seed/model)
        fallback_records: committed correction records whose ``hypothesis`` fields are the same hypotheses, used
            when the (git-ignored) label store is absent. (Default: results/quality/corrections.jsonl)
        quality_config: the experiment config whose ``[filter]`` is the shipped filter. (Default:
            configs/quality/quick.toml)
        split: the split whose corrections are simulated. (Default: user_train)
        split_seed: seeds the client split. (Default: 0)
        calibration_fraction: share of clients in the calibration half. (Default: 0.5)
        sim_seeds: simulator seeds (`CorrectionConfig.seed`); 0 is the quality experiment's. (Default: 0–4)
        grid: the ``max_char_edit`` values searched (1.0 leaves the rule off). (Default: 0.30, 0.35, …, 1.00)
        min_correct_kept: the criterion's floor on right corrections kept. (Default: 0.98)
        unseen_weight: ``wrong_substitute`` of the unseen-kind simulation; 1.0 against the four kinds' 1.0 makes
            half the wrong corrections substitutes. (Default: 1.0)
        n_boot, boot_seed: bootstrap replicates and their seed. (Default: 2000, 0)
    """

    corpus: str = "data/quick"
    seed_model: str = "results/seed/model"
    fallback_records: str = "results/quality/corrections.jsonl"
    quality_config: str = "configs/quality/quick.toml"
    split: str = "user_train"
    split_seed: int = 0
    calibration_fraction: float = 0.5
    sim_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    grid: tuple[float, ...] = field(default_factory=lambda: tuple(round(0.30 + 0.05 * i, 2) for i in range(15)))
    min_correct_kept: float = 0.98
    unseen_weight: float = 1.0
    n_boot: int = 2000
    boot_seed: int = 0


def split_clients(clients: Sequence[str], seed: int = 0, fraction: float = 0.5) -> tuple[list[str], list[str]]:
    """Split clients into ``(calibration, evaluation)`` halves, sorted, from ``seed`` alone (not the input order)."""
    ids = sorted(set(clients))
    random.Random(derive_seed("filter-calibration", seed)).shuffle(ids)
    k = round(len(ids) * fraction)
    return sorted(ids[:k]), sorted(ids[k:])


def client_counts(record_sets: Sequence[Sequence[Mapping]], cfg: FilterConfig) -> dict[str, Counter]:
    """Return ``{client: Counter of COUNTS}`` of the filter ``cfg`` on every simulation in ``record_sets``.

    Each element of ``record_sets`` is one simulation (one record per utterance id); the filter sees only the
    device fields (`fedasr.refinement.filter_corrections`), the counts read the oracle ones.
    """
    out: dict[str, Counter] = defaultdict(Counter)
    for records in record_sets:
        status = filter_corrections(records, cfg).status
        for r in records:
            if r["correction"] is None:
                continue
            c, kept = out[r["client"]], status[r["id"]] == "kept"
            right, sub = bool(r["oracle"]["label_correct"]), r.get("wrong_type") == "substitute"
            wrong = r["kind"] == "wrong"
            c.update(corrections=1, kept=kept, removed=not kept, right=right, right_kept=right and kept,
                     incorrect=not right, incorrect_removed=not right and not kept, wrong=wrong,
                     wrong_removed=wrong and not kept, seen_wrong=wrong and not sub,
                     seen_wrong_removed=wrong and not sub and not kept, substitute=sub,
                     substitute_removed=sub and not kept)
            c[f"by_kind:{r['wrong_type'] or r['kind']}:{status[r['id']]}"] += 1
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def figures(counts: Mapping[str, Counter], clients: Sequence[str], n_boot: int = 2000, seed: int = 0) -> dict:
    """Return the `RATES` and the "wrong" class's F1 of ``clients``, each ``{"value", "ci95", "n"}``, and counts.

    Intervals: percentile bootstrap over clients (each replicate draws ``len(clients)`` clients with replacement
    and pools their counts); ``n`` is the denominator's count. ``by_kind``: corrections by kind (wrong ones by
    wrong type) and filter outcome.
    """
    m = np.asarray([[counts.get(c, Counter())[k] for k in COUNTS] for c in clients], dtype=float)  # (C, K)
    w = np.random.default_rng(seed).multinomial(len(clients), np.full(len(clients), 1 / len(clients)), n_boot)
    tot, reps = m.sum(axis=0), w @ m  # (K,), (B, K)
    col = {k: i for i, k in enumerate(COUNTS)}
    out: dict = {}
    for name, (a, b) in {**RATES, "wrong_f1": ("wrong_removed", "wrong")}.items():
        if name == "wrong_f1":  # 2PR / (P + R) = 2·TP / (removed + wrong)
            point = _ratio(2 * tot[col[a]], tot[col["removed"]] + tot[col[b]])
            boot = _ratio(2 * reps[:, col[a]], reps[:, col["removed"]] + reps[:, col[b]])
        else:
            point, boot = _ratio(tot[col[a]], tot[col[b]]), _ratio(reps[:, col[a]], reps[:, col[b]])
        boot = boot[np.isfinite(boot)]
        ci = [float(q) for q in np.quantile(boot, [0.025, 0.975])] if boot.size else [None, None]
        out[name] = {"value": None if np.isnan(point) else float(point), "ci95": ci, "n": int(tot[col[b]])}
    out["counts"] = {k: int(v) for k, v in zip(COUNTS, tot)}
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for c in clients:
        for key, n in counts.get(c, Counter()).items():
            if key.startswith("by_kind:"):
                _, kind, status = key.split(":")
                by_kind[kind].update({"corrections": n, status: n})
    out["by_kind"] = {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())}
    out["clients"] = len(clients)
    return out


def _subset(record_sets: Sequence[Sequence[Mapping]], clients: Sequence[str]) -> list[list[Mapping]]:
    keep = set(clients)
    return [[r for r in records if r["client"] in keep] for records in record_sets]


def choose_threshold(record_sets: Sequence[Sequence[Mapping]], grid: Sequence[float], base: FilterConfig,
                     min_correct_kept: float = 0.98) -> dict:
    """Choose ``max_char_edit`` on ``record_sets`` by the module's criterion; return it with the searched table."""
    table = []
    for t in sorted(grid):
        counts = client_counts(record_sets, replace(base, max_char_edit=t))
        f = figures(counts, sorted(counts), n_boot=1)
        table.append({"max_char_edit": t, **{k: f[k]["value"] for k in ("correct_kept", "wrong_removed",
                                                                          "wrong_precision", "wrong_f1")}})
    feasible = [row for row in table if (row["correct_kept"] or 0) >= min_correct_kept]
    if feasible:
        best = max(feasible, key=lambda row: (row["wrong_f1"] or 0, row["max_char_edit"]))
        rule = f"max wrong_f1 subject to correct_kept >= {min_correct_kept}; ties: larger threshold"
    else:
        best = max(table, key=lambda row: (row["correct_kept"] or 0, row["max_char_edit"]))
        rule = f"no grid point keeps {min_correct_kept} of right corrections: the one that keeps most"
    return {"max_char_edit": best["max_char_edit"], "rule": rule, "table": table}


def calibrate(record_sets: Sequence[Sequence[Mapping]], calibration: Sequence[str], evaluation: Sequence[str],
              base: FilterConfig, grid: Sequence[float], min_correct_kept: float = 0.98, n_boot: int = 2000,
              boot_seed: int = 0) -> dict:
    """Choose the threshold on the ``calibration`` clients' records only; judge it on the ``evaluation`` clients."""
    if set(calibration) & set(evaluation):
        raise ValueError("calibration and evaluation clients overlap")
    choice = choose_threshold(_subset(record_sets, calibration), grid, base, min_correct_kept)
    cfg = replace(base, max_char_edit=choice["max_char_edit"])
    counts = client_counts(record_sets, cfg)
    return {"choice": choice, "filter": asdict(cfg),
            "calibration": figures(counts, calibration, n_boot, boot_seed),
            "evaluation": figures(counts, evaluation, n_boot, boot_seed)}


def load_population(ccfg: CalibrationConfig) -> tuple[list[data_lib.Utterance], dict[str, str], str]:
    """Return the ``split``'s utterances, the hypotheses the phones showed, and where those came from.

    The hypotheses come from the seed model's label store (`fedasr.asr_task.hypothesis_labels_path`), else from
    the committed correction records' ``hypothesis`` fields; nothing is decoded here.
    """
    utts = data_lib.load_corpus(ccfg.corpus, splits=[ccfg.split])[ccfg.split]
    store = asr_task.hypothesis_labels_path(asr_task.ASRTaskConfig(corpus=ccfg.corpus, seed_model=ccfg.seed_model,
                                                                   train_split=ccfg.split))
    if store.exists():
        return utts, asr_task.read_labels(store), results.relative_to_repo(str(store.resolve()))
    if Path(ccfg.fallback_records).exists():
        hyps = {r["id"]: r["hypothesis"] for r in corrections.read_records(ccfg.fallback_records)}
        if all(u.id in hyps for u in utts):
            return utts, hyps, ccfg.fallback_records
    raise DataError(f"no hypotheses of {ccfg.split}: {store} is absent; decode them once with "
                    "fedasr.asr_task.write_hypothesis_labels (the seed model over every utterance)")


def _shipped_filter(path: str) -> FilterConfig:
    table = tomllib.loads(Path(path).read_text()).get("filter", {}) if Path(path).exists() else {}
    return FilterConfig(**{k.replace("-", "_"): v for k, v in table.items()})


def run(ccfg: CalibrationConfig) -> dict:
    """Split, calibrate, evaluate, and judge the unseen kind; return the self-describing result (module docstring)."""
    # The population and the client split
    utts, hyps, source = load_population(ccfg)
    calibration, evaluation = split_clients([u.client for u in utts], ccfg.split_seed, ccfg.calibration_fraction)
    # Simulated users: the four kinds of wrong correction, and the same users with the unseen kind enabled
    seen = [corrections.simulate_corrections(utts, hyps, corrections.CorrectionConfig(seed=k)) for k in ccfg.sim_seeds]
    unseen_cfg = corrections.CorrectionConfig(wrong_substitute=ccfg.unseen_weight)
    unseen = [corrections.simulate_corrections(utts, hyps, replace(unseen_cfg, seed=k)) for k in ccfg.sim_seeds]
    # Calibrate on one half, judge on the other; the shipped threshold on the same evaluation clients for comparison
    shipped = _shipped_filter(ccfg.quality_config)
    cal = calibrate(seen, calibration, evaluation, FilterConfig(), ccfg.grid, ccfg.min_correct_kept, ccfg.n_boot,
                    ccfg.boot_seed)
    cfg = FilterConfig(**cal["filter"])
    where = f"{ccfg.split}: evaluation clients, simulator seeds {list(ccfg.sim_seeds)}"
    return {
        "what": "The on-device filter's max_char_edit chosen on one half of the seen clients (tuned_on) and judged "
                "on the other half, with 95% bootstrap intervals over clients; then judged, unchanged, on a kind "
                "of wrong correction its rules were not written for (fedasr.filter_calibration).",
        "tuned_on": [f"{ccfg.split}:calibration"],
        "hypotheses": source,
        "split": {"unit": "client", "seed": ccfg.split_seed, "fraction": ccfg.calibration_fraction,
                  "clients": len(calibration) + len(evaluation), "calibration": len(calibration),
                  "evaluation": len(evaluation), "calibration_clients": calibration, "evaluation_clients": evaluation,
                  "records_from": ccfg.split, "simulator_seeds": list(ccfg.sim_seeds),
                  "not_used": "user_heldout (the seed model's hypotheses of it are not in the label store)"},
        "criterion": {"objective": "F1 of the class 'wrong correction' (kind wrong; a drop is the positive call)",
                      "constraint": f"correct_kept >= {ccfg.min_correct_kept} (right corrections kept)",
                      "ties": "the larger threshold", "searched": "max_char_edit",
                      "fixed": "the other rules at FilterConfig defaults (absurdity bounds from the corpus)",
                      "grid": list(ccfg.grid), "rule_applied": cal["choice"]["rule"]},
        "threshold": cal["choice"]["max_char_edit"],
        "filter": cal["filter"],
        "calibration_grid": cal["choice"]["table"],
        "calibration": {"from": f"{ccfg.split}: calibration clients, simulator seeds {list(ccfg.sim_seeds)}",
                        **cal["calibration"]},
        "evaluation": {"from": where, **cal["evaluation"]},
        "shipped_on_evaluation": {"from": where, "max_char_edit": shipped.max_char_edit,
                                  "config": ccfg.quality_config,
                                  **figures(client_counts(_subset(seen, evaluation), shipped), evaluation,
                                            ccfg.n_boot, ccfg.boot_seed)},
        "unseen_kind": {"from": where, "wrong_type": "substitute",
                        "simulator": {"wrong_substitute": ccfg.unseen_weight, "other wrong_* weights": "defaults"},
                        "filter": "the calibrated one, unchanged",
                        **figures(client_counts(_subset(unseen, evaluation), cfg), evaluation, ccfg.n_boot,
                                  ccfg.boot_seed)},
        "rates": {k: f"{a} / {b}" for k, (a, b) in RATES.items()} | {"wrong_f1": "2·wrong_removed / (removed + wrong)"},
        "config": asdict(ccfg),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line: run the calibration and write its JSON."""
    d = CalibrationConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/quality/filter_calibration.json",
                   help="where the JSON goes (Default: results/quality/filter_calibration.json)")
    p.add_argument("--corpus", default=d.corpus, help=f"corpus folder (Default: {d.corpus})")
    p.add_argument("--seed-model", default=d.seed_model, help=f"seed checkpoint (Default: {d.seed_model})")
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="seeds the client split (Default: 0)")
    p.add_argument("--sim-seeds", type=int, nargs="+", default=list(d.sim_seeds),
                   help="simulator seeds (Default: 0 1 2 3 4)")
    args = p.parse_args(argv)
    out = run(replace(d, corpus=args.corpus, seed_model=args.seed_model, split_seed=args.split_seed,
                      sim_seeds=tuple(args.sim_seeds)))
    results.write_json(args.out, out)
    ev, un = out["evaluation"], out["unseen_kind"]
    print(f"max_char_edit {out['threshold']} (tuned on {out['split']['calibration']} clients); evaluation "
          f"({out['split']['evaluation']} clients): correct_kept {ev['correct_kept']['value']:.3f}, wrong "
          f"precision {ev['wrong_precision']['value']:.3f} recall {ev['wrong_removed']['value']:.3f}; unseen "
          f"kind removed {un['substitute_removed']['value']:.3f} of {un['substitute_removed']['n']} -> {args.out}")
    return out


if __name__ == "__main__":
    main()
