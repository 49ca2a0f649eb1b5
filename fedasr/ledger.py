"""The ledger of client rounds: each sampled client's device tier, budget, measured peak RSS, bytes, time and status.

Three places write it (issue 22):

* **the ClientApp process** measures its own round (`client_app.handle_train`): `start_round` resets the kernel's
  high-water mark of resident memory (VmHWM; ``echo 5 > /proc/self/clear_refs``, Linux ≥ 4.0, `fedasr.memory`) and
  `round_metrics` reads it once the reply is built. ``peak-rss-bytes`` is the *process's* peak during the round: the
  resident model the process keeps for every client it serves (`client_app._RUNTIMES`; the first round of a process
  also builds it), the code and data of the libraries (torch, Flower, a Ray worker), and the round's transient
  memory (data, activations, gradients, the encoded upload). ``start-rss-bytes`` is the resident set when the round
  began, so ``peak − start`` is what the round added *beyond the pages the process already held*: memory an earlier
  round freed to the allocator but kept resident is reused without counting, so it bounds the round's need from
  below, and the raw peak bounds it from above (the kernel's RSS counters are batched per thread: tens of KiB).
  ``hwm-reset`` is 0 where the kernel refused the reset: the peak is then the process's lifetime peak. A phone would
  hold no Python runtime: compare the budgets with `fedasr.memory.estimate` (or a fresh process's
  `fedasr.memory.measure_peak`) before reading the raw peak as a phone's.
  With ``fed.ledger.enforce-budget`` the client first checks its analytic peak (`fedasr.memory.estimate` over its
  round shape, as the budget partial policy does) against its tier's budget and declines (`OverBudget`), naming both.
* **the strategy** adds one row per sampled client to the round's record (`round_rows`; ``rounds.jsonl``
  ``ledger``): tier and budget (`device_of`: the server's task derives them from ``(seed, client)``, as the
  client's does), the download's encoded bytes, that client's upload bytes, compute seconds and its status.
* **after the run** `build_ledger` collects the rows into ``ledger.json`` and `ledger_figure` draws them::

    python -m fedasr.ledger RUN_DIR --out results/efficiency/ledger.json [--figure results/figures/ledger.png]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedasr import clients, memory, results
from fedasr.federated import client_update

__all__ = [
    "CLIENT_DECLINED",
    "ROW_KEYS",
    "OverBudget",
    "build_ledger",
    "check_budget",
    "device_of",
    "ledger_figure",
    "main",
    "reply_info",
    "round_metrics",
    "round_rows",
    "row_status",
    "start_round",
]

CLIENT_DECLINED = 1  # Error code of a client that raised during its update (the reason names why)
ROW_KEYS = ("round", "client", "tier", "budget_bytes", "peak_rss_bytes", "start_rss_bytes", "hwm_reset",
            "bytes_down", "bytes_up", "compute_s", "status")
MiB = 1 << 20

Device = tuple[str | None, int | None]  # (tier name, memory budget in bytes); (None, None) = unknown


class OverBudget(ValueError):
    """The client's analytic round peak exceeds its device's memory budget: it declines the round."""


# --- on the device --------------------------------------------------------------------------------------


def device_of(task: Any, client_id: str) -> Device:
    """Return the client's device tier and memory budget from the task's population (`fedasr.clients`).

    A task with a ``population`` (the toy task) gives the profile; one with ``memory_budget_bytes`` (the ASR task)
    gives the budget, and the tier is the `clients.DEVICE_TIERS` entry with that budget (``"custom"`` if none).
    """
    pop = getattr(task, "population", None)
    if isinstance(pop, clients.Population):
        profile = pop.profile(client_id)
        return profile.tier, profile.memory_budget_bytes
    if hasattr(task, "memory_budget_bytes"):
        budget = int(task.memory_budget_bytes(client_id))
        return next((t.name for t in clients.DEVICE_TIERS if t.memory_budget_bytes == budget), "custom"), budget
    return None, None


def start_round() -> dict[str, int] | None:
    """Reset this process's VmHWM to its resident set and return ``{"start", "reset"}`` (None without /proc)."""
    try:
        reset = memory.reset_peak()
        status = memory.read_status()
    except (OSError, KeyError):
        return None
    # the kernel took the reset if the high-water mark now sits at the resident set (within 1 MiB)
    return {"start": status["VmRSS"], "reset": int(reset and status["VmHWM"] - status["VmRSS"] <= MiB)}


def round_metrics(start: Mapping[str, int] | None) -> dict[str, int]:
    """The reply's ledger metrics: ``peak-rss-bytes`` (VmHWM now), ``start-rss-bytes``, ``hwm-reset`` (1/0)."""
    if start is None:
        return {}
    try:
        peak = memory.read_status()["VmHWM"]
    except (OSError, KeyError):
        return {}
    return {"peak-rss-bytes": int(peak), "start-rss-bytes": int(start["start"]), "hwm-reset": int(start["reset"])}


def check_budget(task: Any, model: Any, client_id: str, fed: Any, server_round: int) -> int:
    """Return the client's analytic round peak; raise `OverBudget` when it exceeds its tier's budget.

    The round's shape comes from the client's own data (``task.round_shape``) with the strategy's optimizer and
    start copy, and the trained variables are those of ``fed.partial`` (all trainable ones by default), as the
    budget partial policy computes them (`client_update.partial_selection`).
    """
    if not hasattr(task, "round_shape"):
        raise ValueError("fed.ledger.enforce-budget needs a task that reports the client's round shape (round_shape)")
    tier, budget = device_of(task, client_id)
    if budget is None:
        raise ValueError("fed.ledger.enforce-budget needs a task that knows the client's device (memory_budget_bytes)")
    shape = dataclasses.replace(task.round_shape(client_id, fed.micro_batch),
                                optimizer="none" if fed.strategy == "fedsgd" else fed.client_optimizer,
                                delta_copy=fed.strategy == "fedavg",
                                grad_bits=fed.grad_stream.bits if fed.grad_stream.enabled else 32)
    names, _ = client_update.partial_selection(model, fed, server_round, client_id, task)
    trainable = names if names is not None else client_update.trainable_names(model)
    peak = int(memory.estimate(model, shape, trainable=trainable)["peak"])
    if peak > budget:
        raise OverBudget(f"client declines round: analytic peak {peak} bytes ({peak / MiB:.1f} MiB) exceeds "
                         f"the {tier} tier's budget {budget} bytes ({budget / MiB:.1f} MiB)")
    return peak


# --- on the server ------------------------------------------------------------------------------------------


def reply_info(reply: Any, update: Any, nbytes: int) -> dict[str, Any]:
    """What the ledger keeps of one TRAIN reply: upload bytes, the client's metrics, the error code if any."""
    return {"bytes_up": int(nbytes), "metrics": dict(update.metrics) if update is not None else {},
            "error_code": int(reply.error.code) if reply.has_error() else None}


def row_status(reason: str | None, error_code: int | None = None) -> str:
    """``ok``, ``timeout``, ``declined:<kind>`` (the client raised: its exception type) or ``failed:<kind>``.

    A reply whose error code is not `CLIENT_DECLINED` (the engine's own error) counts as failed; an unknown code
    (the secure-aggregation exchange keeps none) as declined.
    """
    if reason is None:
        return "ok"
    if reason == "timeout":
        return "timeout"
    parts = reason.split(": ")
    if parts[0] == "error":
        kind = parts[1] if len(parts) > 2 else "error"
        return f"{'declined' if error_code in (None, CLIENT_DECLINED) else 'failed'}:{kind[:60]}"
    return f"failed:{reason.split(':')[0][:60]}"


def round_rows(record: Mapping[str, Any], info: Mapping[str, Mapping[str, Any]],
               device: Callable[[str], Device]) -> list[dict[str, Any]]:
    """One ledger row per sampled client of a round's record (``rounds.jsonl``; keys `ROW_KEYS`).

    ``bytes_down`` is the round's encoded download (the same for every sampled client); ``bytes_up`` what that
    client uploaded (0 after an error or a timeout; None where the exchange does not count it per client: secure
    aggregation).
    """
    sampled = list(record.get("sampled", []))
    down = record.get("bytes_down", 0) // max(1, len(sampled))
    failed = record.get("failed") or {}
    rows = []
    for cid in sampled:
        try:
            tier, budget = device(cid)
        except Exception:  # noqa: BLE001 — the ledger must not end a round
            tier, budget = None, None
        got = info.get(cid, {})
        m = got.get("metrics", {})
        rows.append({"round": record.get("round"), "client": cid, "tier": tier, "budget_bytes": budget,
                     "peak_rss_bytes": _int(m.get("peak-rss-bytes")), "start_rss_bytes": _int(m.get("start-rss-bytes")),
                     "hwm_reset": None if "hwm-reset" not in m else bool(m["hwm-reset"]),
                     "bytes_down": down, "bytes_up": got.get("bytes_up", 0), "compute_s": m.get("compute-s"),
                     "status": row_status(failed.get(cid), got.get("error_code"))})
    return rows


def _int(x: Any) -> int | None:
    return None if x is None else int(x)


# --- after the run: ledger.json and its figure -----------------------------------------------------------


def _trainable_fraction(partial: Mapping[str, Any]) -> float | None:
    """Share of the parameters a client trains: 1 (``all``), the configured share (``random``), None (top-k /
    budget: it depends on the model, or on the client)."""
    policy = partial.get("policy", "all")
    return 1.0 if policy == "all" else float(partial["fraction"]) if policy == "random" else None


def build_ledger(run_dir: str | Path) -> dict[str, Any]:
    """Collect a run's ledger rows (``rounds.jsonl``; the last row of a round wins after a resume) into the contract
    ``{"tiers": [{"name", "budget_bytes", "omc_bits", "trainable_fraction", ...}], "rounds": [{ROW_KEYS}]}``."""
    run = Path(run_dir)
    cfg = results.read_json(run / "config.json").get("config", {})
    fed = cfg.get("fed", {})
    by_round = {r["round"]: r for r in results.read_jsonl(run / "rounds.jsonl")}
    rows = [{k: row.get(k) for k in ROW_KEYS} for rnd in sorted(by_round) if rnd > 0
            for row in by_round[rnd].get("ledger", [])]
    if not rows:
        raise ValueError(f"{run / 'rounds.jsonl'} has no ledger rows (a run from before fedasr.ledger?)")
    omc_bits, fraction = int(fed.get("omc", {}).get("bits", 0)), _trainable_fraction(fed.get("partial", {}))
    known = {t.name: t.memory_budget_bytes for t in clients.DEVICE_TIERS}
    known.update({r["tier"]: r["budget_bytes"] for r in rows if r["tier"] is not None and r["tier"] not in known})
    tiers = []
    for name, budget in known.items():
        mine = [r for r in rows if r["tier"] == name]
        peaks = [r["peak_rss_bytes"] for r in mine if r["peak_rss_bytes"] is not None]
        tiers.append({"name": name, "budget_bytes": budget, "omc_bits": omc_bits, "trainable_fraction": fraction,
                      "client_rounds": len(mine), "declined": sum(r["status"].startswith("declined") for r in mine),
                      "peak_rss_bytes_min": min(peaks, default=None), "peak_rss_bytes_max": max(peaks, default=None)})
    return {"run": results.relative_to_repo(str(run.resolve())), "run_id": run.name,
            "measurement": "peak_rss_bytes: VmHWM of the client's process during its round (resident model, "
                           "libraries and the round's transient memory); start_rss_bytes: its resident set "
                           "when the round began; hwm_reset: whether the kernel reset VmHWM at the start",
            "tiers": tiers, "rounds": rows}


TIER_COLORS = ("#ee6677", "#4477aa", "#228833", "#aa3377", "#ccbb44", "#66ccee", "#bbbbbb")


def ledger_figure(ledger: Mapping[str, Any], out: str | Path | None = None, title: str = "Client-round ledger"):
    """Peak RSS per client round against the round, coloured by tier with its budget dashed (declines: ×), and
    the bytes down and up per round (all sampled clients)."""
    from fedasr import plotting  # matplotlib only where a figure is drawn (client processes import this module)

    fig, (a, b) = plotting.plt.subplots(1, 2, figsize=(11, 3.8))
    rows: Sequence[dict] = ledger["rounds"]
    for tier, color in zip(ledger["tiers"], TIER_COLORS):
        mine = [r for r in rows if r["tier"] == tier["name"]]
        if not mine:
            continue
        pts = [(r["round"], r["peak_rss_bytes"] / MiB) for r in mine if r["peak_rss_bytes"] is not None]
        if pts:
            a.scatter(*zip(*pts), s=16, color=color, label=f"{tier['name']} ({len(mine)} client rounds)")
        a.axhline(tier["budget_bytes"] / MiB, color=color, ls="--", lw=1)
        declined = [r["round"] for r in mine if r["status"].startswith("declined")]
        if declined:
            a.scatter(declined, [tier["budget_bytes"] / MiB] * len(declined), marker="x", color=color)
    start = [(r["round"], r["start_rss_bytes"] / MiB) for r in rows if r.get("start_rss_bytes") is not None]
    if start:
        a.scatter(*zip(*start), s=8, marker="_", color="#777777", label="RSS at the round's start")
    a.set(xlabel="round", ylabel="MiB", ylim=(0, None), title=f"{title}: client process peak RSS (dashed: budgets)")
    a.xaxis.get_major_locator().set_params(integer=True)
    by_round: dict[int, list[int]] = {}
    for r in rows:
        acc = by_round.setdefault(r["round"], [0, 0])
        acc[0] += r["bytes_down"] or 0
        acc[1] += r["bytes_up"] or 0
    rounds = sorted(by_round)
    b.plot(rounds, [by_round[k][0] / MiB for k in rounds], "o-", label="down (all sampled clients)")
    b.plot(rounds, [by_round[k][1] / MiB for k in rounds], "s-", label="up (all sampled clients)")
    b.set(xlabel="round", ylabel="MiB per round", ylim=(0, None), title="transport per round")
    b.xaxis.get_major_locator().set_params(integer=True)
    for ax in (a, b):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    plotting._save(fig, out)
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Write ``ledger.json`` (and the figure) of a run folder."""
    p = argparse.ArgumentParser(prog="python -m fedasr.ledger", description=main.__doc__)
    p.add_argument("run_dir", help="a federated run folder holding config.json and rounds.jsonl")
    p.add_argument("--out", default="results/efficiency/ledger.json",
                   help="where to write ledger.json (Default: results/efficiency/ledger.json)")
    p.add_argument("--figure", default=None, help="also draw the ledger figure here, e.g. results/figures/ledger.png "
                   "(Default: no figure)")
    args = p.parse_args(argv)
    ledger = build_ledger(args.run_dir)
    results.write_json(args.out, ledger)
    if args.figure:
        ledger_figure(ledger, args.figure)
    return ledger


if __name__ == "__main__":
    main()
