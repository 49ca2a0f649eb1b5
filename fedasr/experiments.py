"""Experiment runners behind the notebooks: one call per notebook, configured by one TOML file.

A federated experiment is the ASR task (`fedasr.asr_task`) + shared federated settings + named
*variants* (each a set of ``fed``/``task`` overrides). Every variant is one Flower run on the
in-process Simulation Engine, written to ``results/<experiment>/<variant>/``; the experiment's
own ``summary.json`` (with ``config.json`` beside it) collects the variants' final metrics.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedasr import asr_task, corrections, refinement, results, train
from fedasr import config as config_lib
from fedasr import data as data_lib
from fedasr.corrections import CorrectionConfig
from fedasr.federated.config import FedConfig, FederatedConfig, RunSpec, TaskSpec
from fedasr.federated.launch import run_simulation
from fedasr.federated.ray_session import shared_ray
from fedasr.refinement import FilterConfig

__all__ = ["FederatedExperiment", "run_federated_experiment", "finished_runs", "seed_summary", "variant_rows",
           "relative_rows", "QualityExperiment", "run_quality_experiment", "quality_rows", "quality_targets",
           "variant_config"]


@dataclass
class FederatedExperiment:
    """A set of federated runs that share a task and settings (``configs/federated/*.toml``)."""

    experiment: str = "federated"  # results/<experiment>/
    results_root: str = "results"
    task: asr_task.ASRTaskConfig = field(default_factory=asr_task.ASRTaskConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    variants: dict[str, dict] = field(default_factory=lambda: {"fedsgd": {"fed": {"strategy": "fedsgd"}}})
    concurrency: int = 2  # clients trained at once (one core and one torch thread each)
    reference: str = ""  # a variant to compare the others with (bytes and WER; `relative_rows`), "" = none
    # [] = one run per variant at fed.seed; [k, ...] = one run per variant and seed (fed.seed = k), several of them
    # under results/<experiment>/seed<k>/ with means over seeds and paired intervals above them (`seed_summary`)
    seeds: list[int] = field(default_factory=list)
    tuned_on: list[str] = field(default_factory=list)  # the splits this config's choices were made on ([] = none)

    def __post_init__(self) -> None:
        if len(set(self.seeds)) != len(self.seeds):
            raise config_lib.ConfigError(f"seeds: {self.seeds!r} must be distinct integers")
        for name in self.variants:  # a bad variant fails when the config is loaded, before any run starts
            variant_config(self, name)
        if self.reference and self.reference not in self.variants:
            raise config_lib.ConfigError(f"reference: {self.reference!r} is not a variant ({sorted(self.variants)})")


def variant_config(exp: FederatedExperiment, name: str) -> FederatedConfig:
    """The `FederatedConfig` of one variant: the shared settings with its overrides merged table by table
    (validated: unknown, retired or mistyped keys fail naming ``variants.<name>.<key>``)."""
    over = exp.variants[name]
    unknown = set(over) - {"fed", "task"}
    if unknown:
        raise config_lib.ConfigError(f"variants.{name}: unknown table(s) {sorted(unknown)} (expected 'fed', 'task')")
    fed = config_lib.from_dict(FedConfig, config_lib.merge(config_lib.to_dict(exp.fed), over.get("fed", {})),
                               prefix=f"variants.{name}.fed")
    task = config_lib.from_dict(asr_task.ASRTaskConfig, config_lib.merge(config_lib.to_dict(exp.task),
                                                                         over.get("task", {})),
                                prefix=f"variants.{name}.task")
    # absolute paths: Flower's client processes may not share this process's working directory
    task = replace(task, corpus=str(Path(task.corpus).resolve()), seed_model=str(Path(task.seed_model).resolve()),
                   labels=task.labels if task.labels in ("hypotheses", "truth") else str(Path(task.labels).resolve()))
    return FederatedConfig(fed=fed, task=TaskSpec(name="asr", params=config_lib.to_dict(task)),
                           run=RunSpec(experiment=exp.experiment, run_id=name, results_root=exp.results_root))


def run_federated_experiment(exp: FederatedExperiment, only: list[str] | None = None,
                             rerun: bool = True) -> dict[str, results.RunDir]:
    """Run every variant (or ``only`` those) and write ``results/<experiment>/summary.json``.

    Args:
        exp: the experiment.
        only: variant names to run (default: all).
        rerun: delete a variant's previous run folder first; ``False`` keeps finished runs as they are.

    Returns:
        variant → its run; with several ``seeds``, ``"seed<k>/<variant>"`` → the run of seed ``k``.
    """
    if len(exp.seeds) > 1:
        return _run_seeds(exp, only, rerun)
    if exp.seeds:
        exp = replace(exp, fed=replace(exp.fed, seed=exp.seeds[0]), seeds=[])
    configs = {name: variant_config(exp, name) for name in (only or list(exp.variants))}  # validate all first
    # on-device labels the clients hold: the seed model's hypotheses, computed once
    for cfg in configs.values():
        task_cfg = config_lib.from_dict(asr_task.ASRTaskConfig, cfg.task.params)
        if task_cfg.labels == "hypotheses":
            asr_task.write_hypothesis_labels(task_cfg)
    runs, ray_started = {}, False
    with contextlib.ExitStack() as ray_session:  # one Ray for the variants that run (federated.ray_session)
        for i, (name, cfg) in enumerate(configs.items(), 1):
            # one line per variant around the run's own progress bar over rounds (one bar at a time: nested bars need
            # cursor movement, which a notebook's output does not have)
            folder = Path(exp.results_root) / exp.experiment / name
            if folder.exists() and (rerun or not (folder / "summary.json").exists()):
                shutil.rmtree(folder)
            if (folder / "summary.json").exists():
                runs[name] = results.RunDir(folder)
            else:
                print(f"{exp.experiment} {i}/{len(configs)}: {name} ({cfg.fed.strategy}, {cfg.fed.num_rounds} rounds)",
                      flush=True)
                if not ray_started:  # on the first variant that runs; the block's exit stops it
                    ray_session.enter_context(shared_ray(exp.concurrency))
                    ray_started = True
                runs[name] = run_simulation(cfg, concurrency=exp.concurrency)
            final = runs[name].summary().get("final_eval") or {}
            print(f"{exp.experiment} {i}/{len(configs)}: {name} done: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in sorted(final.items()) if k.startswith("wer")), flush=True)
    top = results.open_run(Path(exp.results_root) / exp.experiment, exp.experiment, exp, resume=True)
    rows = variant_rows(runs)
    summary = {"variants": rows, "seed": exp.fed.seed, "tuned_on": list(exp.tuned_on),
               "seed_model": train.checkpoint_provenance(exp.task.seed_model),
               "synthetic_speech": data_lib.is_synthetic(exp.task.corpus)}
    if exp.reference and any(r["variant"] == exp.reference for r in rows):
        summary["relative_to"] = exp.reference
        summary["relative"] = relative_rows(rows, exp.reference)
    top.write_summary(summary)
    return runs


def _run_seeds(exp: FederatedExperiment, only: list[str] | None, rerun: bool) -> dict[str, results.RunDir]:
    """Every variant once per seed (``results/<experiment>/seed<k>/``, each with its own summary), then
    `seed_summary` above them."""
    per_seed = {k: run_federated_experiment(replace(exp, experiment=f"{exp.experiment}/seed{k}", seeds=[],
                                                    fed=replace(exp.fed, seed=k)), only, rerun) for k in exp.seeds}
    top = results.open_run(Path(exp.results_root) / exp.experiment, exp.experiment, exp, resume=True)
    top.write_summary(seed_summary(exp, per_seed))
    return {f"seed{k}/{name}": run for k, runs in per_seed.items() for name, run in runs.items()}


def seed_summary(exp: FederatedExperiment, per_seed: dict[int, dict[str, results.RunDir]]) -> dict[str, Any]:
    """An experiment over seeds: ``variants`` as means over seeds (`variant_rows`' schema, ``n_seeds`` and every
    seed's ``runs`` added), ``relative`` (`relative_rows` of those means, each row with the paired 95% interval
    of its user-WER change and a verdict from ``evidence.json``) and ``per_seed`` folders.

    A seed sets ``fed.seed``: which clients each round samples, the stochastic rounding of the codecs, the random
    partial-training draws; the seed model, the labels and the test sets are the same for every seed."""
    from fedasr import quality_evidence

    root = Path(exp.results_root) / exp.experiment
    rows = [_mean_variant_row(list(rs)) for rs in zip(*(variant_rows(runs) for runs in per_seed.values()))]
    summary: dict[str, Any] = {
        "variants": rows, "seeds": list(exp.seeds), "tuned_on": list(exp.tuned_on),
        "per_seed": [{"seed": k, "folder": results.relative_to_repo(str(root / f"seed{k}"))} for k in per_seed],
        "seed_model": train.checkpoint_provenance(exp.task.seed_model),
        "synthetic_speech": data_lib.is_synthetic(exp.task.corpus)}
    names = [r["variant"] for r in rows]
    found = quality_evidence.metric_table(exp.task.eval_splits)
    files: dict[str, list[Path]] = {"seed": [next(iter(runs.values())).hypotheses_path(0) for runs in per_seed.values()]}
    for name in names:
        files[name] = [runs[name].hypotheses_path(runs[name].summary().get("final_eval_round") or 0)
                       for runs in per_seed.values()]
    missing = [str(f) for fs in files.values() for f in fs if not f.exists()]
    ev = None
    if found and not missing:
        others = [n for n in names if n != exp.reference]
        ev = quality_evidence.build(files, exp.task.corpus, exp.seeds, exp.tuned_on, splits=found[1],
                                    pairs=[(exp.reference, n) for n in others] if exp.reference else None,
                                    max_utterances=exp.task.eval_max_utterances)
        summary["evidence"] = results.relative_to_repo(str(results.write_json(root / "evidence.json", ev)))
    else:
        print(f"{exp.experiment}: no evidence.json: " + (f"{len(missing)} runs lack hypotheses (e.g. {missing[0]})"
              if missing else f"it evaluates {list(exp.task.eval_splits)}, no test or dev twin"))
    if exp.reference and exp.reference in names:
        summary["relative_to"] = exp.reference
        summary["relative"] = relative_rows(rows, exp.reference)
        cmp = {c["b"]: c for c in (ev or {}).get("comparisons", []) if c["a"] == exp.reference and c["metric"] == "wer_user"}
        for r in summary["relative"]:
            if r["variant"] in cmp:
                r.update(wer_user_rel_ci95=cmp[r["variant"]]["delta_rel"]["ci95"], verdict=cmp[r["variant"]]["verdict"])
    return summary


def _mean_variant_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's `variant_rows` row averaged over seeds (metrics and bytes; failures summed)."""
    def mean(dicts: list[dict | None]) -> dict[str, float] | None:
        keys = [k for k in (dicts[0] or {}) if all(isinstance((d or {}).get(k), (int, float)) for d in dicts)]
        return {k: sum(d[k] for d in dicts) / len(dicts) for k in keys} if dicts[0] is not None else None

    def avg(key: str) -> float | None:
        vals = [r.get(key) for r in rows]
        return sum(vals) / len(vals) if all(isinstance(v, (int, float)) for v in vals) else None

    return {"variant": rows[0]["variant"], "rounds": rows[0]["rounds"], "initial": mean([r["initial"] for r in rows]),
            "final": mean([r["final"] for r in rows]), "bytes_down": avg("bytes_down"), "bytes_up": avg("bytes_up"),
            "clients_failed": sum(r.get("clients_failed") or 0 for r in rows), "wall_s": avg("wall_s"),
            "n_seeds": len(rows), "runs": [r["run"] for r in rows]}


def finished_runs(exp: FederatedExperiment) -> dict[str, results.RunDir]:
    """The runs of an earlier `run_federated_experiment` of ``exp``, from its ``summary.json``: variant → run (the
    first seed's where several ran). Redraws figures without rerunning."""
    s = results.read_json(Path(exp.results_root) / exp.experiment / "summary.json")
    return {r["variant"]: results.RunDir(results.REPO_ROOT / (r.get("runs") or [r["run"]])[0]) for r in s["variants"]}


def relative_rows(rows: list[dict[str, Any]], reference: str, max_wer_rel: float = 0.03) -> list[dict[str, Any]]:
    """Each variant's transport bytes and final user WER relative to the ``reference`` variant.

    ``transport_ratio`` = (download + upload bytes) ÷ the reference's: with an fp32 reference over the same
    sampled clients and rounds, the small model's ``(down + up) ÷ (2 × fp32 model)`` per client round (issue 5's
    P2 counts bytes at full scale, `fedasr.efficiency`, where fp32 vectors weigh less). ``wer_user_rel`` =
    final user WER ÷ the reference's − 1; ``within_3pct`` = ``wer_user_rel ≤ max_wer_rel`` (P2's quality half).
    """
    ref = next(r for r in rows if r["variant"] == reference)
    ref_bytes, ref_wer = ref["bytes_down"] + ref["bytes_up"], ref["final"]["wer_user"]
    out = []
    for r in rows:
        ratio = (r["bytes_down"] + r["bytes_up"]) / ref_bytes
        rel = r["final"]["wer_user"] / ref_wer - 1.0
        out.append({"variant": r["variant"], "transport_ratio": ratio, "wer_user": r["final"]["wer_user"],
                    "wer_user_rel": rel, "wer_proxy": r["final"].get("wer_proxy"),
                    "within_3pct": bool(rel <= max_wer_rel)})
    return out


def variant_rows(runs: dict[str, results.RunDir]) -> list[dict[str, Any]]:
    """One row per variant: rounds, initial and final server-side metrics, bytes, failures."""
    rows = []
    for name, run in runs.items():
        s = run.summary()
        rows.append({"variant": name, "rounds": s.get("rounds_completed"), "initial": s.get("initial_eval"),
                     "final": s.get("final_eval"), "bytes_down": s.get("bytes_down_total"),
                     "bytes_up": s.get("bytes_up_total"), "clients_failed": s.get("clients_failed"),
                     "wall_s": s.get("wall_s_total"), "run": str(run.path)})
    return rows


# ----------------------------------------------------------------------------------------------
# Quality from user corrections (paper §2.5; DESIGN E4)


@dataclass
class QualityExperiment:
    """The ablation of ``results/quality/wer.json`` (``configs/quality/quick.toml``).

    Every variant federates from the same seed model with the same rounds, clients per round and
    simulated users (``corrections``); variants differ in which labels devices train on
    (``labels``: a `fedasr.refinement.LABEL_MODES` mode), client selection (``min-corrections``) and
    aggregation weights (``fed.weighting``).
    """

    experiment: str = "quality"
    results_root: str = "results"
    task: asr_task.ASRTaskConfig = field(default_factory=asr_task.ASRTaskConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    corrections: CorrectionConfig = field(default_factory=CorrectionConfig)  # the simulated users
    filter: FilterConfig = field(default_factory=FilterConfig)  # on-device filtering of corrections
    variants: dict[str, dict] = field(default_factory=dict)  # name → {labels, min-corrections, fed: {...}}
    concurrency: int = 2
    # every seed runs the whole ablation (sets fed.seed and corrections.seed; see run_quality_experiment)
    seeds: list[int] = field(default_factory=lambda: [0])
    # the splits this configuration's choices (α, learning rate, rounds, filter thresholds, ...) were made on:
    # declared by whoever made them, recorded in summary.json and evidence.json (issue 18)
    tuned_on: list[str] = field(default_factory=list)
    # evidence.json's paired comparisons [[a, b], ...] (names: "seed" or a variant); [] = each row against the one
    # before it, and the last row against the seed and against "no_refinement" (`quality_evidence.build`)
    compare: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise config_lib.ConfigError(f"seeds: {self.seeds!r} must be distinct integers, at least one")
        for pair in self.compare:
            if len(pair) != 2 or not set(pair) <= {"seed", *self.variants}:
                raise config_lib.ConfigError(f"compare: {pair!r} is not a pair of 'seed' or variants "
                                             f"({sorted(self.variants)})")
        for name, v in self.variants.items():
            unknown = set(v) - {"labels", "min-corrections", "fed"}
            if unknown:
                raise config_lib.ConfigError(f"variants.{name}: unknown key(s) {sorted(unknown)} "
                                             "(expected labels, min-corrections, fed)")
            if v.get("labels", "filtered") not in refinement.LABEL_MODES:
                raise config_lib.ConfigError(f"variants.{name}.labels: {v.get('labels')!r} is not one of "
                                             f"{refinement.LABEL_MODES}")
            config_lib.from_dict(FedConfig, config_lib.merge(config_lib.to_dict(self.fed), v.get("fed", {})),
                                 prefix=f"variants.{name}.fed")


def run_quality_experiment(exp: QualityExperiment, rerun: bool = True) -> list[dict]:
    """Run the ablation once per seed, write ``wer.json`` (means over seeds), ``evidence.json`` and ``summary.json``.

    Per seed: (1) the seed model decodes every ``user_train`` utterance — what each phone showed;
    (2) simulated users correct some of those transcripts (ground truth used only to simulate them);
    (3) per variant, the devices' label store (hypotheses / committed / corrected / filtered);
    (4) one federated run per variant; (5) rows ``{variant, rounds, wer_user, wer_new_terms, wer_proxy}``,
    the seed model first and the full refinement last.

    A seed sets ``fed.seed`` (which clients each round samples, the central update's sample, stochastic
    rounding) and ``corrections.seed`` (which users correct what, rightly or wrongly); the seed model, the corpus
    and the test sets are the same for every seed. One seed writes its runs under ``results/<experiment>/``;
    several write each seed's ablation under ``results/<experiment>/seed<k>/`` and the means above them.
    """
    root = Path(exp.results_root) / exp.experiment
    top = results.open_run(root, exp.experiment, exp, resume=True)
    multi = len(exp.seeds) > 1
    per_seed = [_quality_seed(replace(exp, experiment=f"{exp.experiment}/seed{k}" if multi else exp.experiment,
                                      fed=replace(exp.fed, seed=k), corrections=replace(exp.corrections, seed=k)),
                              rerun) for k in exp.seeds]
    rows = per_seed[0]["rows"] if not multi else _mean_rows([p["rows"] for p in per_seed])
    results.write_json(root / "wer.json", rows)
    evidence_json = _write_evidence(exp, per_seed, root)
    summary = {"rows": rows, "targets": quality_targets(rows), "seeds": list(exp.seeds), "tuned_on": list(exp.tuned_on),
               "evidence": evidence_json, "seed_model": train.checkpoint_provenance(exp.task.seed_model),
               "synthetic_speech": data_lib.is_synthetic(exp.task.corpus)}
    if multi:
        summary["per_seed"] = [{"seed": k, "folder": results.relative_to_repo(str(root / f"seed{k}")),
                                "targets": quality_targets(p["rows"])} for k, p in zip(exp.seeds, per_seed)]
    else:
        summary.update({k: per_seed[0][k] for k in ("corrections", "filter", "label_stores")})
    top.write_summary(summary)
    return rows


def _quality_seed(exp: QualityExperiment, rerun: bool) -> dict:
    """One seed's ablation (steps 1–5 of `run_quality_experiment`) under ``results/<exp.experiment>/``."""
    root = Path(exp.results_root) / exp.experiment
    # (1) + (2): what the phones showed, and what the users typed
    task_cfg = replace(exp.task, labels="hypotheses")
    hyps = asr_task.read_labels(asr_task.write_hypothesis_labels(task_cfg))
    utts = data_lib.load_corpus(exp.task.corpus, splits=[exp.task.train_split])[exp.task.train_split]
    records = corrections.simulate_corrections(utts, hyps, exp.corrections)
    corrections.write_records(root / "corrections.jsonl", records)
    # (3) + (4): one label store and one federated run per variant
    fed_exp = FederatedExperiment(experiment=exp.experiment, results_root=exp.results_root, task=exp.task,
                                  fed=exp.fed, variants={}, concurrency=exp.concurrency)
    stores = {}
    for name, v in exp.variants.items():
        store = root / "labels" / f"{name}.jsonl"
        stores[name] = refinement.write_label_store(store, records, v.get("labels", "filtered"), exp.filter)
        fed_exp.variants[name] = {"fed": v.get("fed", {}),
                                  "task": {"labels": str(store), "min-corrections": v.get("min-corrections", 0)}}
    runs = run_federated_experiment(fed_exp, rerun=rerun)
    rows = quality_rows(exp, runs)
    out = {"rows": rows, "runs": runs, "corrections": corrections.summarize(records),
           "filter": refinement.filter_report(records, exp.filter), "label_stores": stores}
    if len(exp.seeds) > 1:  # the seed's own record beside its runs
        results.write_json(root / "wer.json", rows)
        results.open_run(root, exp.experiment, exp, resume=True).write_summary(
            {k: v for k, v in out.items() if k != "runs"} | {"seed": exp.fed.seed, "targets": quality_targets(rows)})
    return out


def _mean_rows(per_seed: list[list[dict]]) -> list[dict]:
    """``wer.json`` rows averaged over seeds (same schema; ``n_seeds`` and every seed's ``runs`` added)."""
    out = []
    for rows in zip(*per_seed):
        row = dict(rows[0])
        for k, v in rows[0].items():
            if k.startswith("wer") and all(isinstance(r.get(k), (int, float)) for r in rows):
                row[k] = sum(r[k] for r in rows) / len(rows)
        row.update(n_seeds=len(rows), runs=[r["run"] for r in rows if r.get("run")])
        out.append(row)
    return out


def _write_evidence(exp: QualityExperiment, per_seed: list[dict], root: Path) -> str | None:
    """``evidence.json`` from every run's first and last hypotheses (`fedasr.quality_evidence`); None (and a
    printed reason) where runs made before hypotheses were recorded lack them, or no test split was evaluated."""
    from fedasr import quality_evidence

    found = quality_evidence.metric_table(exp.task.eval_splits)  # test splits, else their dev twins (an analysis)
    if found is None:
        print(f"{exp.experiment}: no evidence.json: it evaluates {list(exp.task.eval_splits)}, no test or dev twin")
        return None
    files: dict[str, list[Path]] = {"seed": []}
    for p in per_seed:
        first = next(iter(p["runs"].values()))
        files["seed"].append(first.hypotheses_path(0))
        for name, run in p["runs"].items():
            files.setdefault(name, []).append(run.hypotheses_path(run.summary().get("final_eval_round") or 0))
    missing = [str(f) for fs in files.values() for f in fs if not f.exists()]
    if missing:
        print(f"{exp.experiment}: no evidence.json: {len(missing)} runs lack hypotheses (e.g. {missing[0]})")
        return None
    ev = quality_evidence.build(files, exp.task.corpus, exp.seeds, exp.tuned_on, splits=found[1],
                                max_utterances=exp.task.eval_max_utterances,
                                pairs=[tuple(p) for p in exp.compare] or None)
    return results.relative_to_repo(str(results.write_json(root / "evidence.json", ev)))


def quality_rows(exp: QualityExperiment, runs: dict[str, results.RunDir]) -> list[dict]:
    """The ablation table from finished runs and their label stores: the seed first, then each variant."""
    first = next(iter(runs.values())).summary()
    rows = [_quality_row("seed", 0, first.get("initial_eval") or {})]
    for name, run in runs.items():
        s = run.summary()
        lines = refinement.read_label_store(Path(exp.results_root) / exp.experiment / "labels" / f"{name}.jsonl")
        m = exp.variants[name].get("min-corrections", 0)
        labelled = {x["client"] for x in lines if x.get("label")}
        selected = set(refinement.eligible_clients(refinement.correction_counts(lines), m)) if m else labelled
        rows.append(_quality_row(name, s.get("rounds_completed"), s.get("final_eval") or {}))
        rows[-1].update(clients_selected=len(selected & labelled), utterances_labelled=sum(bool(x.get("label")) for x in lines),
                        clients_failed=s.get("clients_failed"), run=str(run.path))
    return rows


def quality_targets(rows: list[dict], user: float = -0.20, new_terms: float = -0.30,
                    proxy: float = 0.03) -> dict[str, Any]:
    """Issue 6's targets: the last row (full refinement) vs the first (seed), relative changes and whether met.

    Met when user WER falls by ≥ 20%, new-terms WER by ≥ 30% and proxy WER rises by ≤ 3% (relative).
    """
    seed, full = rows[0], rows[-1]

    def rel(key: str) -> float | None:
        a, b = seed.get(key), full.get(key)
        return None if a in (None, 0) or b is None else b / a - 1.0

    changes = {"wer_user": rel("wer_user"), "wer_new_terms": rel("wer_new_terms"), "wer_proxy": rel("wer_proxy")}
    bounds = {"wer_user": user, "wer_new_terms": new_terms, "wer_proxy": proxy}
    met = {k: v is not None and v <= bounds[k] for k, v in changes.items()}
    return {"compare": [seed["variant"], full["variant"]], "relative_change": changes, "bounds": bounds, "met": met}


def _quality_row(variant: str, rounds: int | None, ev: dict) -> dict:
    return {"variant": variant, "rounds": rounds, "wer_user": ev.get("wer_user"),
            "wer_new_terms": ev.get("wer_new_terms_seen", ev.get("wer_new_terms")),
            "wer_proxy": ev.get("wer_proxy"), "wer_user_heldout": ev.get("wer_user_heldout"),
            "wer_new_terms_unseen": ev.get("wer_new_terms")}
