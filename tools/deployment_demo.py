"""The ASR task on Flower's Deployment Engine, secure by default: TLS, SuperNode authentication, disjoint clients.

One SuperLink and two SuperNodes on 127.0.0.1 (`fedasr.federated.launch.run_deployment_local`). Each SuperNode
holds half of the quick corpus's user clients (``--node-config "partition-id=i num-partitions=2"``,
``fed.node-data="partitioned"``: the server sends a client's round only to the node that holds it). With TLS
and authentication (the default) a third SuperNode, whose key pair was never registered, is started too: the
demo records whether the SuperLink refused it (its exit code and Flower's log line)::

    python tools/deployment_demo.py --rounds 2            # secure (TLS + node authentication)
    python tools/deployment_demo.py --rounds 2 --insecure # --insecure, no authentication (trusted network only)

Writes ``results/reliability/parts/deployment.json``: ``{"tls", "node_auth", "unregistered_refused", "task",
"rounds_completed", "supernodes", "final_eval", ...}``. The settings are the FedSGD variant of
``configs/federated/quick.toml`` with fewer rounds and a capped evaluation. The run folder goes to a temporary
directory (``--keep-run DIR`` keeps it there instead): the JSON carries its per-round records.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fedasr import asr_task, config, experiments, results
from fedasr.federated import launch
from fedasr.federated import task as task_lib
from fedasr.federated.client_app import hosted_clients
from fedasr.federated.config import FederatedConfig

REPO = Path(__file__).resolve().parents[1]
SUPERNODES = 2


def demo_config(experiment_toml: Path, rounds: int, clients_per_round: int, eval_utterances: int,
                results_root: Path) -> FederatedConfig:
    """Return the FedSGD variant of ``experiment_toml`` for ``rounds`` rounds, evaluated every round."""
    exp = config.load(experiments.FederatedExperiment, experiment_toml)
    cfg = experiments.variant_config(exp, "fedsgd")
    task = config.from_dict(asr_task.ASRTaskConfig, cfg.task.params)
    task = replace(task, eval_max_utterances=eval_utterances)
    asr_task.write_hypothesis_labels(task)  # the clients' on-device labels (kept if already there)
    fed = replace(cfg.fed, num_rounds=rounds, clients_per_round=clients_per_round,
                  min_successful_clients=min(cfg.fed.min_successful_clients, clients_per_round), eval_every=1)
    run = replace(cfg.run, experiment="deployment-demo", run_id=time.strftime("%Y%m%d-%H%M%S", time.gmtime()),
                  results_root=str(results_root), progress=False)
    return replace(cfg, fed=fed, task=replace(cfg.task, params=config.to_dict(task)), run=run)


def _shown(path: str) -> str:
    """``path`` relative to the repo when inside it (a record that does not name this machine's folders)."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def node_partition(cfg: FederatedConfig) -> list[list[str]]:
    """Return the clients each SuperNode holds (what its ClientApp answers the server's hosts query with)."""
    task = task_lib.make_task(cfg.task)
    return [hosted_clients(task, {"partition-id": i, "num-partitions": SUPERNODES}) for i in range(SUPERNODES)]


def run_demo(cfg: FederatedConfig, secure: bool, timeout_s: float) -> dict:
    """Run ``cfg`` on the loopback Deployment Engine and return the ``deployment.json`` record."""
    parts = node_partition(cfg)
    node_of = {cid: i for i, ids in enumerate(parts) for cid in ids}
    run = launch.run_deployment_local(cfg, n_supernodes=SUPERNODES, secure=secure,
                                      unregistered_nodes=1 if secure else 0, timeout_s=timeout_s)
    summary, record = run.summary(), results.read_json(run.path / "deployment.json")
    rows = [r for r in run.rounds() if r["round"] > 0]
    unregistered = record["unregistered"]
    return {
        "tls": record["tls"],
        "node_auth": record["node_auth"],
        # an unregistered node is only "refused" when one was actually tried and the SuperLink refused every one
        "unregistered_refused": bool(unregistered) and all(u["refused"] for u in unregistered),
        "task": cfg.task.name,
        "rounds_completed": summary["rounds_completed"],
        "supernodes": record["supernodes"],
        "final_eval": summary["final_eval"],
        "initial_eval": summary["initial_eval"],
        "registered_node_ids": record["registered_node_ids"],
        "unregistered": unregistered,
        "clients_per_node": [len(p) for p in parts],
        "clients_disjoint": not set(parts[0]) & set(parts[1]),
        # which node trained each round's clients (a client's node is fixed by the partition)
        "clients_trained_per_node": [[sum(node_of[c] == i for c in r["succeeded"]) for i in range(SUPERNODES)]
                                     for r in rows],
        "rounds": [{k: r.get(k) for k in ("round", "status", "num_succeeded", "num_failed", "train_loss", "eval",
                                          "wall_s")} for r in rows],
        "session_wall_s": summary.get("session_wall_s"),
        "strategy": cfg.fed.strategy,
        "clients_per_round": cfg.fed.clients_per_round,
        "eval_max_utterances": cfg.task.params["eval-max-utterances"],
        "corpus": _shown(cfg.task.params["corpus"]),
    }


def cli_main(argv: list[str] | None = None) -> dict:
    """Run the demo from the command line and write its JSON record."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--insecure", action="store_true",
                    help="no TLS and no SuperNode authentication (Default: TLS + authentication)")
    ap.add_argument("--rounds", type=int, default=2, help="server rounds (Default: 2)")
    ap.add_argument("--clients-per-round", type=int, default=4, help="sampled clients per round (Default: 4)")
    ap.add_argument("--eval-utterances", type=int, default=100,
                    help="first N utterances of each evaluation split (Default: 100)")
    ap.add_argument("--config", type=Path, default=REPO / "configs/federated/quick.toml",
                    help="experiment TOML whose fedsgd variant is run (Default: configs/federated/quick.toml)")
    ap.add_argument("--out", type=Path, default=REPO / "results/reliability/parts/deployment.json",
                    help="the JSON record (Default: results/reliability/parts/deployment.json)")
    ap.add_argument("--keep-run", type=Path, default=None, help="results root to keep the run folder in "
                    "(Default: a temporary directory, removed)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="bound on the whole run in s (Default: 1800)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedasr-deployment-demo-") as tmp:
        root = (args.keep_run or Path(tmp)).resolve()
        cfg = demo_config(args.config, args.rounds, args.clients_per_round, args.eval_utterances, root)
        record = run_demo(cfg, secure=not args.insecure, timeout_s=args.timeout)
    results.write_json(args.out, record)
    print(f"{args.out}: tls={record['tls']} node_auth={record['node_auth']} "
          f"unregistered_refused={record['unregistered_refused']} rounds={record['rounds_completed']} "
          f"final wer_user={record['final_eval'].get('wer_user')}")
    return record


if __name__ == "__main__":
    cli_main()
