"""fedasr ServerApp: resolve the config, build the task and strategy, run the rounds, write the records.

Configuration reaches the ServerApp one of two ways (STYLE guideline 4):

* in-process simulation (`fedasr.federated.launch.run_simulation`): `make_server_app` closes over the
  resolved `FederatedConfig`, because ``flwr.simulation.run_simulation`` hands the app an empty
  ``run_config``;
* ``flwr run`` (local simulation federation or the Deployment Engine): the module-level ``app`` parses
  ``context.run_config`` (``[tool.flwr.app.config]`` + ``--run-config`` overrides) with
  `config.config_from_run_config` (through `fedasr.config.from_run_config`; unknown keys fail).

Records (DESIGN §4): ``<results-root>/<experiment>/<run-id>/{config.json, rounds.jsonl, summary.json}``
and ``checkpoints/server.pt`` (weights, server optimizer state, round, RNG state, config), from which
``run.resume = true`` continues a run to the same weights an uninterrupted run reaches.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log
from tqdm import tqdm

from fedasr import ledger, omc, results
from fedasr.federated import privacy
from fedasr.federated.checkpoint import load_checkpoint, save_checkpoint
from fedasr.federated.client_update import Update, central_update, trainable_names
from fedasr.federated.config import FedConfig, FederatedConfig, config_from_run_config
from fedasr.federated.strategies import build_strategy
from fedasr.federated.task import FederatedTask, make_task
from fedasr.seeding import capture_rng_state, restore_rng_state

__all__ = ["app", "checkpoint_path", "initial_evaluation", "make_server_app", "run_server", "summarize_rounds"]

CHECKPOINT = Path("checkpoints") / "server.pt"


def checkpoint_path(run_dir: str | Path) -> Path:
    """Return where a run keeps its server checkpoint."""
    return Path(run_dir) / CHECKPOINT


def _should_eval(fed: FedConfig, server_round: int) -> bool:
    if fed.eval_every <= 0:
        return False
    return server_round == 0 or server_round % fed.eval_every == 0 or server_round == fed.num_rounds


def run_server(grid: Grid, cfg: FederatedConfig,
               task_factory: Callable[[], FederatedTask] | None = None) -> results.RunDir:
    """Run federated training on ``grid`` as ``cfg`` says and return the run folder."""
    with torch_threads(1):  # the clients own the cores while they train (in-process simulation shares them)
        return _run(grid, cfg, task_factory)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads (``n`` ≤ 0: leave the setting), then restore the previous count."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(grid: Grid, cfg: FederatedConfig, task_factory: Callable[[], FederatedTask] | None) -> results.RunDir:
    fed = cfg.fed
    # Build the task, the run folder and the initial global model
    task = task_factory() if task_factory is not None else make_task(cfg.task)
    run_id = cfg.run.run_id or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    ckpt_file = checkpoint_path(Path(cfg.run.results_root) / cfg.run.experiment / run_id)
    resume = cfg.run.resume and ckpt_file.exists()
    model = task.build_model()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # a checkpoint that does not fit this model fails before the run folder is touched (fedasr.fuzz, "runs")
    ckpt = _fitting_checkpoint(ckpt_file, weights) if resume else None
    run = results.new_run(cfg.run.experiment, cfg, cfg.run.results_root, run_id, resume=cfg.run.resume)
    omc_names = omc.select_quantized(model, fed.omc) if fed.omc.enabled else ()
    central = prefetch = None
    if fed.central_mix > 0:  # Mixed FL: the server's update on its own proxy data (uses the eval model's memory)
        prefetch = CentralPrefetch(lambda r, w: central_update(task, model, w, fed, r))
        # one thread count for every central update of a run, prefetched or not (a resumed run's first one is not)
        central_threads = 1 if cfg.run.overlap_central else cfg.run.server_threads

        def central(server_round: int, global_weights: dict[str, torch.Tensor]) -> Update:
            done = prefetch.result(server_round, global_weights)  # computed while the clients trained
            if done is not None:
                return done
            with torch_threads(central_threads):  # the clients have finished the round: their cores are free
                return central_update(task, model, global_weights, fed, server_round)
    strategy = build_strategy(fed, task.client_ids(), weights, trainable_names(model), omc_names, central)
    strategy.device_of = lambda cid: ledger.device_of(task, cid)  # the ledger's tier and budget of each client
    if cfg.run.largest_first:  # a client's work, to queue the largest first (fedasr.federated.dispatch)
        strategy.cost_of = task.num_examples
    start_round = 1
    if resume:
        weights.update(ckpt["weights"])
        strategy.server_opt.load_state_dict(ckpt["server_opt"])
        restore_rng_state(ckpt["rng"])
        start_round = ckpt["round"] + 1
        log(INFO, "resuming %s after round %d", run.path, ckpt["round"])

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Evaluate the global model on the server every ``eval-every`` rounds (round 0 once per process for
        runs that start from the same weights and evaluate alike: `initial_evaluation`)."""
        if not _should_eval(fed, server_round):
            return None
        state = arrays.to_torch_state_dict()
        # the first and the last evaluation keep every hypothesis (per-utterance evidence: fedasr.quality_evidence)
        hyps: dict[str, dict[str, str]] | None = {} if server_round in (0, fed.num_rounds) and _keeps_hypotheses(task) \
            else None
        with torch_threads(cfg.run.server_threads):  # between rounds: the clients' cores are free
            if server_round == 0:
                metrics = initial_evaluation(task, model, state, hyps)
            else:
                model.load_state_dict(state)
                metrics = {k: float(v) for k, v in (task.evaluate(model, hypotheses=hyps) if hyps is not None
                                                    else task.evaluate(model)).items()}
        if hyps is not None:
            lines = ({"split": sp, "id": i, "hyp": h} for sp in sorted(hyps) for i, h in sorted(hyps[sp].items()))
            results.write_jsonl(run.hypotheses_path(server_round), lines)
        return MetricRecord(metrics)

    bar = tqdm(total=fed.num_rounds, initial=start_round - 1, unit="round", desc=f"{cfg.run.experiment}/{run_id}",
               disable=not cfg.run.progress, mininterval=1.0, dynamic_ncols=True)

    def on_round_end(server_round: int, arrays: ArrayRecord, record: dict) -> None:
        """Append the round's record, write the checkpoint when due and move the progress bar."""
        run.log_round(record)
        if server_round > 0:
            bar.set_postfix(_latest(record), refresh=False)
            bar.update(1)
        due = fed.checkpoint_every > 0 and (server_round % fed.checkpoint_every == 0 or server_round == fed.num_rounds)
        if server_round > 0 and due:
            save_checkpoint(ckpt_file, strategy.weights, strategy.server_opt.state_dict(), server_round,
                            capture_rng_state(), cfg)
        if prefetch is not None and cfg.run.overlap_central and server_round < fed.num_rounds:
            prefetch.start(server_round + 1, strategy.weights)  # the next round's global weights are final now

    # Run the rounds
    t0 = time.perf_counter()
    try:
        strategy.start(grid, ArrayRecord(weights), num_rounds=fed.num_rounds, timeout=fed.round_timeout_s,
                       evaluate_fn=evaluate_fn, start_round=start_round, on_round_end=on_round_end)
    finally:
        bar.close()
        if prefetch is not None:
            prefetch.close()
    summary = summarize_rounds(run.rounds())
    summary["dp"] = privacy.summarize_dp(run.rounds())  # None without fed.dp
    summary.update(experiment=cfg.run.experiment, run_id=run_id, strategy=fed.strategy,
                   resumed_after_round=start_round - 1 if resume else None,
                   session_wall_s=time.perf_counter() - t0, checkpoint=str(ckpt_file))
    run.write_summary(summary)
    return run


def _fitting_checkpoint(path: Path, weights: dict[str, torch.Tensor]) -> dict:
    """Load the checkpoint at ``path``; raise ValueError naming it if its variables or shapes are not ``weights``'."""
    ckpt = load_checkpoint(path)
    theirs = {k: tuple(v.shape) for k, v in ckpt["weights"].items()}
    ours = {k: tuple(v.shape) for k, v in weights.items()}
    if theirs != ours:
        diff = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
        raise ValueError(f"{path} does not fit this run's model ({len(diff)} variable(s) differ in name or shape, "
                         f"e.g. {diff[:3]}): resume with the config that wrote it")
    return ckpt


class CentralPrefetch:
    """Mixed FL's central update for round ``r + 1``, started when round ``r`` ends (its weights are then final)
    and computed on 1 torch thread while the clients train; `result` hands it over if it was computed at the same
    weights (checked), else returns None and the caller computes it. One job at a time, in one worker thread; it
    uses the server's evaluation model, which nothing else touches between the end of a round's evaluation and
    the next round's mixing.

    Same numbers as computing it after the clients: the update is a function of (weights, seed, round) only;
    the thread count changes float summation order at most (`run.server-threads`; 1 here).
    """

    def __init__(self, fn: Callable[[int, dict[str, torch.Tensor]], Update]) -> None:
        self._fn = fn
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="central")
        self._job: tuple[int, dict[str, torch.Tensor], Future] | None = None

    def _run(self, server_round: int, weights: dict[str, torch.Tensor]) -> Update:
        with torch_threads(1):  # the clients own the cores while it runs
            return self._fn(server_round, weights)

    def start(self, server_round: int, weights: dict[str, torch.Tensor]) -> None:
        snapshot = {k: v.detach().clone() for k, v in weights.items()}
        self._job = (server_round, snapshot, self._pool.submit(self._run, server_round, snapshot))

    def result(self, server_round: int, weights: dict[str, torch.Tensor]) -> Update | None:
        job, self._job = self._job, None
        if job is None:
            return None
        rnd, snapshot, future = job
        update = future.result()  # an exception propagates: the strategy records the central update as failed
        same = rnd == server_round and snapshot.keys() == weights.keys() and all(
            torch.equal(snapshot[k], weights[k]) for k in weights)
        return update if same else None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# Round-0 evaluations of this process: the variants of an experiment start from one seed model and evaluate on
# the same test sets, so their round 0 is one evaluation (a deterministic function of weights and task).
_INITIAL_EVALS: dict[tuple[str, str], tuple[dict[str, float], dict[str, dict[str, str]] | None]] = {}


def _keeps_hypotheses(task: FederatedTask) -> bool:
    """Whether ``task.evaluate`` can hand back its hypotheses (a ``hypotheses`` argument)."""
    return "hypotheses" in inspect.signature(task.evaluate).parameters


def initial_evaluation(task: FederatedTask, model: torch.nn.Module, state: dict[str, torch.Tensor],
                       hypotheses: dict[str, dict[str, str]] | None = None) -> dict[str, float]:
    """``task.evaluate`` of ``state``, computed once per process for tasks that name what their evaluation depends
    on (``task.eval_identity()``) and identical initial weights (a sha256 over the state). ``hypotheses``, if
    given, receives the evaluation's hypotheses (computed again if the cached evaluation did not keep them)."""
    key = None
    if hasattr(task, "eval_identity"):
        digest = hashlib.sha256()
        for name in sorted(state):
            digest.update(name.encode())
            digest.update(state[name].detach().contiguous().cpu().numpy().tobytes())
        key = (task.eval_identity(), digest.hexdigest())
        cached = _INITIAL_EVALS.get(key)
        if cached is not None and (hypotheses is None or cached[1] is not None):
            if hypotheses is not None:
                hypotheses.update({split: dict(h) for split, h in cached[1].items()})
            return dict(cached[0])
    model.load_state_dict(state)
    metrics = {k: float(v) for k, v in (task.evaluate(model, hypotheses=hypotheses) if hypotheses is not None
                                        else task.evaluate(model)).items()}
    if key is not None:
        _INITIAL_EVALS[key] = (dict(metrics), {s: dict(h) for s, h in hypotheses.items()} if hypotheses is not None
                               else None)
    return metrics


def _latest(record: dict) -> dict[str, str]:
    """The progress bar's postfix: the round's status, training loss and evaluation metrics."""
    ok = f"{record.get('num_succeeded', 0)}/{record.get('num_sampled', 0)}"
    out = {"status": str(record.get("status")), "ok": ok}
    if record.get("train_loss") is not None:
        out["loss"] = f"{record['train_loss']:.3g}"
    out.update({k: f"{v:.3f}" for k, v in (record.get("eval") or {}).items() if k.startswith("wer")})
    return out


def _reason_kind(why: str) -> str:
    """A failure's kind for counting: ``"timeout"``, ``"non-finite"``, or ``"error: <ExceptionType>"``."""
    parts = why.split(": ")
    return ": ".join(parts[:2]) if parts[0] == "error" and len(parts) > 1 else why.split(":")[0]


def summarize_rounds(rows: list[dict]) -> dict:
    """Return whole-run totals from ``rounds.jsonl`` rows (the last row of a round wins after a resume)."""
    by_round = {r["round"]: r for r in rows}
    rounds = [by_round[k] for k in sorted(by_round) if k > 0]
    evals = [(r["round"], r["eval"]) for r in (by_round[k] for k in sorted(by_round)) if r.get("eval")]
    reasons = Counter(_reason_kind(why) for r in rounds for why in (r.get("failed") or {}).values())
    ok = [r for r in rounds if r.get("status") == "ok"]
    return {
        "rounds_run": len(rounds),
        "rounds_completed": len(ok),
        "rounds_skipped": len(rounds) - len(ok),
        "skip_reasons": {r["round"]: r.get("skip_reason") for r in rounds if r.get("status") != "ok"},
        "last_round": rounds[-1]["round"] if rounds else 0,
        "final_train_loss": ok[-1].get("train_loss") if ok else None,
        "initial_eval": by_round[0]["eval"] if 0 in by_round and by_round[0].get("eval") else None,
        "final_eval": evals[-1][1] if evals else None,
        "final_eval_round": evals[-1][0] if evals else None,
        "clients_sampled": sum(r.get("num_sampled", 0) for r in rounds),
        "clients_failed": sum(r.get("num_failed", 0) for r in rounds),
        "failure_reasons": dict(reasons),
        "bytes_down_total": sum(r.get("bytes_down", 0) for r in rounds),
        "bytes_up_total": sum(r.get("bytes_up", 0) for r in rounds),
        "wall_s_total": sum(r.get("wall_s", 0.0) for r in rounds),
    }


def make_server_app(cfg: FederatedConfig | None = None,
                    task_factory: Callable[[], FederatedTask] | None = None) -> ServerApp:
    """Return a ServerApp bound to ``cfg`` (in-process simulation) or reading ``context.run_config`` (None)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        resolved = cfg if cfg is not None else config_from_run_config(context.run_config)
        run_server(grid, resolved, task_factory)

    return server_app


# Loaded by `flwr run` through [tool.flwr.app.components] (configuration from run_config)
app = make_server_app()
