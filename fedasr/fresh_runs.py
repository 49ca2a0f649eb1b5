"""Schedule of the efficiency table's fresh-process measurements: rows side by side, the P3 pair's timing alone.

Each row of `fedasr.efficiency` is one client round in a fresh 1-thread process (`fedasr.memory.measure_peak`).
What such a process measures of itself does not depend on a neighbour on another core: its peak is its own
VmHWM, its bytes are exact encodings, its loss is seeded. Its step time does depend on one (shared caches and
memory bandwidth). So (`plan`):

* every row is measured once, up to ``jobs`` processes at a time (`run_side_by_side`), started in row order
  except that the rows in ``apart`` (the heaviest) never run beside each other;
* the P3 pair (the first and the last row) is then re-run ``timing_repeats`` times **alone**: one process at a
  time, nothing beside it. With ``jobs > 1`` and ``timing_repeats = 0`` the pair's rows are measured alone
  instead of side by side, so that P3 always has solo runs;
* a run is marked ``concurrent`` when another measurement of the same batch was in flight at any moment of it
  (wall-clock overlap; conservative: imports overlapping count). `step_times` folds a row's runs into its
  ``step_seconds`` fields: the minimum over its solo runs, or over all its runs when none was solo (then
  ``step_concurrent`` is true and the time is contended).

``jobs = 1`` is the sequential schedule: every run is alone, and the rows' step times are as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

__all__ = ["Run", "measure_rows", "p3_timing", "plan", "run_side_by_side", "step_times"]


@dataclass
class Run:
    """One call of ``measure``: its task, result and wall interval (``time.monotonic``)."""

    task: int  # index into the tasks
    result: Any
    start: float
    end: float
    concurrent: bool = False  # another run of the same batch overlapped this one


def run_side_by_side(tasks: Sequence[Any], measure: Callable[[Any], Any], jobs: int = 1,
                     apart: Collection[int] = ()) -> list[Run]:
    """Run ``measure(task)`` for every task, at most ``jobs`` at once; return the runs in task order.

    Tasks start in order, except that a task in ``apart`` waits while another task in ``apart`` runs (the
    next task that may start goes first). ``measure`` runs in a worker thread; it is meant to wait on a
    child process. The first exception stops new starts and is raised once the running tasks have ended.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1 (got {jobs})")
    pending = list(range(len(tasks)))
    running: dict[Future, int] = {}
    runs: dict[int, Run] = {}
    lock = threading.Lock()

    def timed(i: int) -> None:
        start = time.monotonic()
        result = measure(tasks[i])
        with lock:
            runs[i] = Run(i, result, start, time.monotonic())

    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while running or (pending and error is None):
            # Start what may start: free slot, and not beside another task of `apart`
            for i in list(pending) if error is None else ():
                if len(running) >= jobs:
                    break
                if i in apart and any(j in apart for j in running.values()):
                    continue
                running[pool.submit(timed, i)] = i
                pending.remove(i)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                del running[f]
                if f.exception() is not None and error is None:
                    error = f.exception()
    if error is not None:
        raise error
    out = [runs[i] for i in range(len(tasks))]
    for r in out:  # overlap of wall intervals, including the parent's work for the run (its download)
        r.concurrent = any(o is not r and o.start < r.end and r.start < o.end for o in out)
    return out


def plan(n_rows: int, jobs: int, timing_repeats: int) -> tuple[list[int], list[int]]:
    """Return (rows measured side by side, in order; row of each solo run, in order) for the table.

    Solo runs: ``timing_repeats`` runs of the first row, then of the last (the P3 pair); with ``jobs > 1``
    and no repeats, the pair's rows themselves run alone (module docstring).
    """
    pair = sorted({0, n_rows - 1}) if n_rows else []
    if jobs > 1 and timing_repeats == 0:
        return [i for i in range(n_rows) if i not in pair], pair
    return list(range(n_rows)), [i for i in pair for _ in range(timing_repeats)]


def measure_rows(measure: Callable[[int], Any], peaks: Sequence[float], jobs: int,
                 timing_repeats: int) -> list[list[Run]]:
    """Measure every row (``measure(row index)``) on the table's schedule; return each row's runs in order.

    The `plan`: every row once, at most ``jobs`` at a time (the two rows of largest ``peaks``, e.g. analytic
    peak bytes, never side by side), then the P3 pair's solo runs. A row's first run is its measurement; the
    others only add step times.
    """
    n_rows = len(peaks)
    heavy = set(sorted(range(n_rows), key=lambda i: -peaks[i])[:2])
    side, solo = plan(n_rows, jobs, timing_repeats)
    apart = {k for k, i in enumerate(side) if i in heavy}
    runs = run_side_by_side(side, measure, jobs, apart) + run_side_by_side(solo, measure)
    return [[r for i, r in zip(side + solo, runs) if i == row] for row in range(n_rows)]


def step_times(runs: Sequence[Run], seconds: Callable[[Any], float] = lambda res: res["step_seconds"]
               ) -> dict[str, Any]:
    """A row's step-time fields from its runs (in measurement order; ``seconds(run.result)`` is a step time).

    ``step_seconds``: the minimum over the solo runs, or over all runs if none was solo;
    ``step_seconds_runs`` with ``step_seconds_runs_concurrent`` (one flag per run); ``step_concurrent``:
    whether ``step_seconds`` comes from a run beside another process (contended).
    """
    times = [seconds(r.result) for r in runs]
    flags = [r.concurrent for r in runs]
    solo = [t for t, c in zip(times, flags) if not c]
    return {"step_seconds": min(solo or times), "step_seconds_runs": times,
            "step_seconds_runs_concurrent": flags, "step_concurrent": not solo}


def p3_timing(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """Say which runs P3's step-time ratio uses (summary.json ``p3_timing``); rows without flags ran alone."""
    def solo(r: dict[str, Any]) -> int:
        flags = r.get("step_seconds_runs_concurrent", [False] * len(r["step_seconds_runs"]))
        return sum(not c for c in flags)

    counts = {first["stack"]: solo(first), last["stack"]: solo(last)}
    only_solo = not first.get("step_concurrent", False) and not last.get("step_concurrent", False)
    return {"solo_runs": counts, "solo_only": only_solo,
            "note": ("P3_step_time_ratio = min step time over the last row's solo runs / the same for the first "
                     "row; a solo run has no other measurement process beside it. Rows measured side by side "
                     "(step_concurrent) have contended step times and are not used for P3."
                     if only_solo else "no solo run of the P3 pair: the ratio is of contended step times")}
