"""Reliability of the federation (issue 21): client faults, a server killed mid-run, and the summary of all parts.

``results/reliability/parts/<part>.json`` are written by the experiments of issue 21, each by its own code:

* ``faults``: `faults_experiment` — the quick ASR profile with and without 30% faulty clients (`fedasr.federated.faults`);
* ``resume``: `crash_resume` — a run whose server process is SIGKILLed after round k, resumed from its checkpoint;
* ``fuzz``: `fedasr.fuzz.run_fuzz` — malformed inputs at every entry point;
* ``deployment``, ``dp``, ``secagg``, ``privacy``: the secure deployment, differential privacy, secure aggregation
  and message-inspection work.

`assemble` merges them into ``results/reliability/summary.json`` with exactly the keys of the issue's result
contract (a missing part is ``null``; ``assembly.json`` beside it says which parts were missing and where each
came from). Command line: ``python -m fedasr.reliability [assemble|faults|resume] [--root results/reliability]``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fedasr import results

__all__ = ["PARTS", "CONTRACT", "assemble", "crash_resume", "faults_experiment", "fault_accounting",
           "plot_fault_curves", "cli_main"]

# The result contract of issue 21: each part's required keys ("dp" is a list of rows with these keys)
CONTRACT: dict[str, tuple[str, ...]] = {
    "faults": ("faulty_fraction", "wer_clean", "wer_faulty", "completed"),
    "resume": ("killed_at_round", "bitwise_equal"),
    "fuzz": ("inputs", "unhandled", "by_kind"),
    "deployment": ("tls", "node_auth", "unregistered_refused", "task"),
    "dp": ("epsilon", "delta", "noise_multiplier", "clip", "wer_user"),
    "secagg": ("available", "bytes_ratio"),
    "privacy": ("messages_checked", "violations"),
}
PARTS = tuple(CONTRACT)


def _check_part(name: str, value: Any, path: Path) -> None:
    """Raise ValueError naming the file when a part lacks a contract key (``dp``: every row)."""
    rows = value if name == "dp" else [value]
    if name == "dp" and not isinstance(value, list):
        raise ValueError(f"{path}: part 'dp' must be a list of rows, got {type(value).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: part {name!r} must hold objects, got {type(row).__name__}")
        missing = [k for k in CONTRACT[name] if k not in row]
        if missing:
            raise ValueError(f"{path}: part {name!r}{f' row {i}' if name == 'dp' else ''} lacks {missing}")


def assemble(root: str | Path = "results/reliability") -> dict:
    """Merge ``<root>/parts/*.json`` into ``<root>/summary.json`` (the contract's keys) and return it.

    A missing part becomes ``null``, noted in ``<root>/assembly.json`` (with each present part's sha256).

    Raises:
        ValueError: a present part lacks a key of the contract (the message names file and keys).
    """
    root = Path(root)
    summary: dict[str, Any] = {}
    notes: dict[str, str] = {}
    sources: dict[str, str] = {}
    for name in PARTS:
        path = root / "parts" / f"{name}.json"
        if not path.exists():
            summary[name], notes[name] = None, f"{path} is missing: that part has not been run"
            continue
        value = results.read_json(path)
        _check_part(name, value, path)
        summary[name] = value
        sources[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    assembly = {"parts": {n: f"parts/{n}.json" for n in PARTS}, "missing": notes, "sha256": sources}
    results.open_run(root, "reliability", assembly, resume=True)  # config.json: what this summary was made from
    results.write_json(root / "summary.json", summary)
    results.write_json(root / "assembly.json", {"missing": notes, "sha256": sources})
    for name, note in notes.items():
        print(f"fedasr.reliability: {name} = null ({note})", file=sys.stderr)
    return summary


# ----------------------------------------------------------------------------------------------------------
# Server crash: SIGKILL after round k, resume, compare with an uninterrupted run


def _child(args: list[str], log: Path) -> subprocess.Popen:
    """Start ``python -m fedasr.federated.loopback`` with ``args`` (its own process, output to ``log``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    f = open(log, "ab")  # noqa: SIM115 — the child's stdout, closed by `_reap`
    return subprocess.Popen([sys.executable, "-m", "fedasr.federated.loopback", *args], stdout=f,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _reap(proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise TimeoutError(f"loopback run did not finish within {timeout_s:.0f} s; log: {log}") from None
    finally:
        if proc.stdout:
            proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"loopback run failed ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")


def _rounds_logged(rounds_path: Path) -> int:
    """The highest complete round in ``rounds.jsonl`` (0 if none)."""
    if not rounds_path.exists():
        return 0
    import json

    best = 0
    for line in rounds_path.read_text().splitlines():
        try:
            best = max(best, int(json.loads(line).get("round", 0)))
        except (ValueError, AttributeError):
            continue  # a line being written
    return best


def crash_resume(kill_after: int = 3, rounds: int = 6, delay_s: float = 0.4, workdir: str | Path | None = None,
                 overrides: list[str] | None = None, timeout_s: float = 300.0) -> dict:
    """Kill a federated run's server process with SIGKILL after round ``kill_after``, resume it, compare.

    Three runs of the same config on `fedasr.federated.loopback` (server and clients in one process, the toy task
    with FedSGD and a server Adam, whose state must survive): an uninterrupted one (in this process); one in a
    child process killed (SIGKILL, no clean-up) once ``rounds.jsonl`` shows round ``kill_after`` (during round
    ``kill_after + 1``: each round waits ``delay_s``); and that run resumed (another child, ``run.resume=true``). Returns ``{"killed_at_round",
    "resumed_after_round", "rounds", "bitwise_equal", "task"}``; ``bitwise_equal`` compares every variable of
    the two final checkpoints with ``torch.equal``.
    """
    import torch

    from fedasr.federated.checkpoint import load_checkpoint
    from fedasr.federated.server_app import checkpoint_path

    if not 1 <= kill_after < rounds:
        raise ValueError(f"kill_after must be in [1, rounds), got {kill_after} with rounds={rounds}")
    if workdir is None:  # the three run folders are scratch: only the comparison is kept
        with tempfile.TemporaryDirectory(prefix="fedasr-crash-") as tmp:
            return crash_resume(kill_after, rounds, delay_s, tmp, overrides, timeout_s)
    work = Path(workdir)
    common = ["--set", f"run.results-root={str(work)!r}", "--set", "run.experiment='crash'",
              "--set", 'task.name="toy"', "--set", f"fed.num-rounds={rounds}", "--set", "fed.clients-per-round=4",
              "--set", 'fed.server-optimizer="adam"', "--set", "fed.server-lr=0.05", "--set", "fed.eval-every=0",
              *[a for o in (overrides or []) for a in ("--set", o)]]
    # 1. the uninterrupted run (in this process: the comparison is across processes as well)
    from fedasr.federated import loopback

    loopback.main([*common, "--set", "run.run-id='full'"])
    # 2. the run whose server is killed after round `kill_after`
    victim = work / "crash" / "victim"
    proc = _child([*common, "--set", "run.run-id='victim'", "--delay", str(delay_s)], work / "victim.log")
    deadline = time.monotonic() + timeout_s
    while _rounds_logged(victim / "rounds.jsonl") < kill_after:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the run ended or stalled before round {kill_after}; log: {work / 'victim.log'}")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stdout:
        proc.stdout.close()
    killed_at = _rounds_logged(victim / "rounds.jsonl")
    resumed_after = int(load_checkpoint(checkpoint_path(victim))["round"])
    # 3. resume it
    _reap(_child([*common, "--set", "run.run-id='victim'", "--set", "run.resume=true"], work / "resume.log"),
          timeout_s, work / "resume.log")
    a = load_checkpoint(checkpoint_path(work / "crash" / "full"))["weights"]
    b = load_checkpoint(checkpoint_path(victim))["weights"]
    equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return {"killed_at_round": killed_at, "resumed_after_round": resumed_after, "rounds": rounds,
            "killed_returncode": proc.returncode, "bitwise_equal": bool(equal), "task": "toy",
            "engine": "loopback (server and clients in one process, killed with SIGKILL)"}


# ----------------------------------------------------------------------------------------------------------
# Client faults: the quick ASR profile with and without faulty clients


def fault_accounting(rows: list[dict], faults_cfg: Any, seed: int) -> dict:
    """Count, from a run's ``rounds.jsonl`` rows, the faults drawn for its sampled clients and how each ended.

    Returns ``{"client_rounds", "faulty", "fault_kinds": {kind: n}, "excluded_as": {kind: {reason kind: n}},
    "undetected": n, "honest_excluded": n}`` (undetected: a faulty client whose update was aggregated;
    honest_excluded: a fault-free client the server excluded).
    """
    from fedasr.federated.faults import draw_fault
    from fedasr.federated.server_app import _reason_kind

    by_round = {r["round"]: r for r in rows if r.get("round", 0) > 0}  # the last row of a round wins
    kinds, excluded_as = Counter(), {}
    client_rounds = undetected = honest_excluded = 0
    for rnd, r in sorted(by_round.items()):
        failed, ok = r.get("failed") or {}, set(r.get("succeeded") or [])
        for cid in r.get("sampled") or []:
            client_rounds += 1
            kind = draw_fault(faults_cfg, seed, rnd, cid)
            if kind is None:
                honest_excluded += cid in failed
                continue
            kinds[kind] += 1
            undetected += cid in ok
            if cid in failed:
                excluded_as.setdefault(kind, Counter())[_reason_kind(failed[cid])] += 1
    return {"client_rounds": client_rounds, "faulty": sum(kinds.values()), "fault_kinds": dict(sorted(kinds.items())),
            "excluded_as": {k: dict(v) for k, v in sorted(excluded_as.items())}, "undetected": undetected,
            "honest_excluded": honest_excluded}


def _wer_curve(rows: list[dict], key: str = "wer_user") -> list[tuple[int, float]]:
    by_round = {r["round"]: r for r in rows}
    return [(k, by_round[k]["eval"][key]) for k in sorted(by_round) if (by_round[k].get("eval") or {}).get(key) is not None]


def plot_fault_curves(runs: list[tuple[list[dict], list[dict]]], out: str | Path, label: str = "30% faulty clients"):
    """Draw user WER against round for each seed's fault-free and faulty run (``rounds.jsonl`` rows of
    ``[(clean, faulty), ...]``, one pair per seed: one colour per seed); save to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    for i, (clean, faulty) in enumerate(runs):
        for rows, name, style in ((clean, "fault-free", "o-"), (faulty, label, "s--")):
            pts = _wer_curve(rows)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=f"C{i}", markersize=4, alpha=0.85,
                    label=f"{name}" + (f", seed {i}" if len(runs) > 1 else ""))
    ax.set_xlabel("round")
    ax.set_ylabel("user WER (user_test)")
    ax.set_title("FedSGD with faulty clients (quick profile)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _loopback_runs(exp: Any) -> dict:
    """Each variant of ``exp`` on a `LoopbackGrid` with deadlines (no Ray: for a machine too busy to start it)."""
    import shutil

    from fedasr import asr_task
    from fedasr import config as config_lib
    from fedasr.experiments import variant_config
    from fedasr.federated.client_app import make_client_app
    from fedasr.federated.loopback import LoopbackGrid
    from fedasr.federated.server_app import run_server

    runs = {}
    for name in exp.variants:
        cfg = variant_config(exp, name)
        task_cfg = config_lib.from_dict(asr_task.ASRTaskConfig, cfg.task.params)
        if task_cfg.labels == "hypotheses":
            asr_task.write_hypothesis_labels(task_cfg)
        shutil.rmtree(Path(exp.results_root) / exp.experiment / name, ignore_errors=True)
        cfg.run.overlap_central = False
        print(f"{exp.experiment}: {name} on the loopback grid ({cfg.fed.num_rounds} rounds)", flush=True)
        runs[name] = run_server(LoopbackGrid(make_client_app(cfg), deadline=True), cfg)
    return runs


def _faults_seed(exp: Any, engine: str) -> tuple[dict, tuple[list[dict], list[dict]]]:
    """One seed of the faults experiment: run both variants; return the seed's row and its two runs' rows."""
    from fedasr.experiments import run_federated_experiment, variant_config

    runs = run_federated_experiment(exp) if engine == "simulation" else _loopback_runs(exp)
    clean, faulty = runs["clean"], runs["faulty"]
    fcfg = variant_config(exp, "faulty").fed
    acc = fault_accounting(faulty.rounds(), fcfg.faults, fcfg.seed)
    s_clean, s_faulty = clean.summary(), faulty.summary()
    wer_clean, wer_faulty = s_clean["final_eval"]["wer_user"], s_faulty["final_eval"]["wer_user"]
    row = {"seed": fcfg.seed, "wer_initial": s_clean["initial_eval"]["wer_user"], "wer_clean": wer_clean,
           "wer_faulty": wer_faulty, "wer_rel": wer_faulty / wer_clean - 1.0,
           "completed": bool(s_faulty["last_round"] == fcfg.num_rounds),
           "faulty_fraction_realized": acc["faulty"] / max(1, acc["client_rounds"]),
           "rounds_completed": {"clean": s_clean["rounds_completed"], "faulty": s_faulty["rounds_completed"]},
           "fault_kinds": acc["fault_kinds"], "excluded_as": acc["excluded_as"], "undetected": acc["undetected"],
           "honest_excluded": acc["honest_excluded"], "clean_clients_failed": s_clean["clients_failed"],
           "failure_reasons": s_faulty["failure_reasons"],
           "wall_s": {"clean": s_clean["wall_s_total"], "faulty": s_faulty["wall_s_total"]},
           "runs": {"clean": results.relative_to_repo(str(clean.path)),
                    "faulty": results.relative_to_repo(str(faulty.path))}}
    return row, (clean.rounds(), faulty.rounds())


def faults_experiment(config: str | Path = "configs/reliability/faults.toml", root: str | Path = "results/reliability",
                      max_wer_rel: float = 0.10, engine: str = "simulation", seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """Run the fault-free and the faulty variant of ``config`` once per seed, draw the WER curves, return the
    ``faults`` part.

    A seed (``fed.seed``) changes the clients sampled each round, the faults drawn for them (per seed, round and
    client) and the clients' stochastic rounding; the seed model and the evaluation sets are the same. With more
    than one seed the runs lie in ``<results_root>/<experiment>/seed<k>/<variant>``.

    ``engine``: ``"simulation"`` (Flower's Simulation Engine, 2 clients at a time) or ``"loopback"`` (one process,
    `fedasr.federated.loopback` with per-client deadlines; for a machine too loaded for Ray to start).

    Per seed ``wer_rel`` = final user WER of the faulty run ÷ the clean run's − 1. The contract's ``wer_clean`` and
    ``wer_faulty`` are means over seeds; ``within_10pct``: the mean ``wer_rel`` ≤ ``max_wer_rel`` and so is every
    seed's; ``wer_rel_ci95`` is the t-interval over seeds (``[None, None]`` for one seed).
    """
    import dataclasses

    from fedasr import config as config_lib
    from fedasr.evidence import mean_ci
    from fedasr.experiments import FederatedExperiment, variant_config

    base = config_lib.load(FederatedExperiment, config)
    rows, curves = [], []
    for seed in seeds:
        exp = dataclasses.replace(base, fed=dataclasses.replace(base.fed, seed=int(seed)),
                                  experiment=f"{base.experiment}/seed{seed}" if len(seeds) > 1 else base.experiment)
        row, pair = _faults_seed(exp, engine)
        rows.append(row)
        curves.append(pair)
    fig = plot_fault_curves(curves, Path(root) / "faults_wer.png")
    fcfg = variant_config(base, "faulty").fed
    rel = mean_ci([r["wer_rel"] for r in rows])
    return {"faulty_fraction": sum(getattr(fcfg.faults, k) for k in ("crash", "straggler", "nan", "inf", "shape",
                                                                      "norm")),
            "faulty_fraction_realized": sum(r["faulty_fraction_realized"] for r in rows) / len(rows),
            "seeds": [r["seed"] for r in rows],
            "wer_initial": rows[0]["wer_initial"],
            "wer_clean": mean_ci([r["wer_clean"] for r in rows])["mean"],
            "wer_faulty": mean_ci([r["wer_faulty"] for r in rows])["mean"],
            "wer_rel": rel["mean"], "wer_rel_ci95": rel["ci95"], "max_wer_rel": max_wer_rel,
            "within_10pct": bool(rel["mean"] <= max_wer_rel and all(r["wer_rel"] <= max_wer_rel for r in rows)),
            "completed": all(r["completed"] for r in rows),
            "undetected": sum(r["undetected"] for r in rows), "rounds": fcfg.num_rounds,
            "round_timeout_s": fcfg.round_timeout_s, "labels": base.task.labels, "per_seed": rows,
            "figure": str(fig), "engine": engine, "config": str(config)}


def cli_main(argv: list[str] | None = None) -> dict:
    """``python -m fedasr.reliability [assemble|faults|resume] [--root R]``: run a part (or none) and assemble."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fedasr.reliability", description=cli_main.__doc__)
    ap.add_argument("step", nargs="?", default="assemble", choices=["assemble", "faults", "resume"],
                    help="write parts/faults.json or parts/resume.json first, or only assemble (Default: assemble)")
    ap.add_argument("--root", default="results/reliability", help="(Default: results/reliability)")
    ap.add_argument("--config", default="configs/reliability/faults.toml", help="the faults experiment's config")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="faults: the seeds (fed.seed) to run both variants with (Default: 0 1 2)")
    ap.add_argument("--engine", default="simulation", choices=["simulation", "loopback"],
                    help="faults: Flower's Simulation Engine or the one-process loopback grid (Default: simulation)")
    args = ap.parse_args(argv)
    parts = Path(args.root) / "parts"
    if args.step == "faults":
        results.write_json(parts / "faults.json", faults_experiment(args.config, args.root, engine=args.engine,
                                                                              seeds=tuple(args.seeds)))
    elif args.step == "resume":
        results.write_json(parts / "resume.json", crash_resume())
    summary = assemble(args.root)
    print(Path(args.root) / "summary.json")
    return summary


if __name__ == "__main__":
    cli_main()
