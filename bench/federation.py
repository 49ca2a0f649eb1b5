"""Benchmark the federation's orchestration overhead on Flower's Simulation Engine (issue 4 contract).

A round's wall time is compared with the compute time of its slowest sampled client::

    overhead_ratio = round_seconds / slowest_client_seconds          # target <= 1.15

with 2 clients per round trained concurrently on 2 cores (1 Ray CPU and 1 torch thread each), a
500-client population (only the sampled clients are materialised), and the toy task scaled up so one
client computes for a few seconds (FedSGD over ``--examples`` examples of a 2.4M-parameter MLP).

* ``round_seconds``: sample → send → clients train → replies → validate → aggregate → server step
  (server-side evaluation and checkpoints are off; they are not orchestration overhead);
* ``slowest_client_seconds``: the slowest sampled client's ``compute-s``, measured inside the ClientApp
  around the client update (data + forward/backward), so everything else counts as overhead:
  message (de)serialisation, Ray scheduling, polling, aggregation, CPU contention;
* the first round also starts the Ray actors (imports, task build) and is reported separately;
  ratios are medians over the remaining rounds.

Usage::

    python bench/federation.py [--rounds 6] [--examples 12000] [--out results/bench/federation.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0",
               "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402

from fedasr import results  # noqa: E402
from fedasr.federated import client_update as cu
from fedasr.federated import launch  # noqa: E402
from fedasr.federated import task as task_lib
from fedasr.federated.config import FedConfig, FederatedConfig, RunSpec, TaskSpec


def toy_params(population: int, examples: int) -> dict:
    """Return toy-task parameters for a few seconds of compute per client."""
    return {"num-clients": population, "dim": 256, "hidden": 1024, "depth": 3, "classes": 32,
            "min-examples": examples, "max-examples": examples}


def solo_client_seconds(params: dict, micro_batch: int, repeats: int = 2) -> float:
    """Return one client's FedSGD compute time alone in this process (1 thread, no contention)."""
    torch.set_num_threads(1)
    task = task_lib.make_task(TaskSpec("toy", params))
    model = task.build_model()
    w = {k: v.clone() for k, v in model.state_dict().items()}
    cid = task.client_ids()[0]
    times = []
    for _ in range(repeats):
        upd = cu.fedsgd_client_update(model, w, task.client_batches(cid, micro_batch, 0), cid)
        times.append(upd.metrics["compute-s"])
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="rounds to run, the first is warm-up (Default: 6)")
    ap.add_argument("--clients-per-round", type=int, default=2, help="K (Default: 2)")
    ap.add_argument("--concurrency", type=int, default=2, help="clients trained at once (Default: 2)")
    ap.add_argument("--population", type=int, default=500, help="clients in the population (Default: 500)")
    ap.add_argument("--examples", type=int, default=12000, help="examples per client (Default: 12000)")
    ap.add_argument("--micro-batch", type=int, default=256, help="examples per forward/backward (Default: 256)")
    ap.add_argument("--out", default="results/bench/federation.json", help="(Default: results/bench/federation.json)")
    args = ap.parse_args(argv)

    params = toy_params(args.population, args.examples)
    load_before = os.getloadavg()
    solo = solo_client_seconds(params, args.micro_batch)
    with tempfile.TemporaryDirectory(prefix="fedasr-bench-") as tmp:
        cfg = FederatedConfig(
            fed=FedConfig(strategy="fedsgd", num_rounds=args.rounds, clients_per_round=args.clients_per_round,
                          micro_batch=args.micro_batch, server_lr=0.1, eval_every=0, checkpoint_every=0),
            task=TaskSpec("toy", params), run=RunSpec(experiment="bench", run_id="federation", results_root=tmp))
        t0 = time.perf_counter()
        run = launch.run_simulation(cfg, concurrency=args.concurrency)
        total_s = time.perf_counter() - t0
        rows = [r for r in run.rounds() if r["round"] > 0]
    assert all(r["status"] == "ok" and r["num_succeeded"] == args.clients_per_round for r in rows), rows
    n_params = sum(p.numel() for p in task_lib.make_task(TaskSpec("toy", params)).build_model().parameters())
    steady = rows[1:] if len(rows) > 1 else rows
    ratios = [r["train_s"] / r["slowest_client_s"] for r in steady]
    round_s = statistics.median(r["train_s"] for r in steady)
    out = {
        "clients_per_round": args.clients_per_round,
        "concurrency": args.concurrency,
        "round_seconds": round_s,
        "slowest_client_seconds": statistics.median(r["slowest_client_s"] for r in steady),
        "overhead_ratio": statistics.median(ratios),
        "overhead_target": 1.15,
        "meets_target": statistics.median(ratios) <= 1.15,
        "rounds_per_hour": 3600.0 / round_s,
        "population": args.population,
        "rounds_per_hour_note": f"{args.population}-client population, K={args.clients_per_round}, steady state",
        "solo_client_seconds": solo,
        "first_round_seconds": rows[0]["train_s"],
        "per_round": [{"round": r["round"], "round_seconds": r["train_s"],
                       "slowest_client_seconds": r["slowest_client_s"],
                       "overhead_ratio": r["train_s"] / r["slowest_client_s"]} for r in rows],
        "session_seconds": total_s,
        "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0],
                            "note": "other processes on the machine inflate client times and overhead alike"},
        "workload": {"task": "toy", **params, "micro_batch": args.micro_batch, "strategy": "fedsgd",
                     "parameters": n_params},
        "engine": "flwr.simulation.run_simulation (Ray), 1 CPU + 1 torch thread per client",
        "command": [sys.executable, *sys.argv],
        "environment": results.environment_info(),
    }
    results.write_json(Path(args.out), out)
    print(f"round {round_s:.2f} s, slowest client {out['slowest_client_seconds']:.2f} s, "
          f"overhead ratio {out['overhead_ratio']:.3f} (target <= 1.15), {out['rounds_per_hour']:.0f} rounds/hour")
    return out


if __name__ == "__main__":
    main()
