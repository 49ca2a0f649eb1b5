"""The headline configuration chosen on dev splits by a rule fixed in advance (issue 18; paper §2.5 setting).

A dev screen (``configs/quality/dev_screen.toml``, ``make quality-dev``) runs candidate configurations of the full
refinement row and evaluates them every few rounds on the dev splits only. `select` then applies one rule to every
(candidate, evaluated round):

1. keep those whose server-domain WER (``wer_proxy_dev``) is within ``+bound`` (relative) of the seed model's;
2. of those, take the lowest user-domain WER (``wer_user_dev``: unseen users); ties go to fewer rounds.

Round 0 (the seed model itself) is never a candidate. Nothing here reads a test split: the chosen configuration is
then run once per seed on the test splits (``configs/quality/headline.toml``). The record, ``selection.json``, keeps
every candidate's dev metrics, so a reader can see how close the others came and whether the curves had flattened.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedasr import results

__all__ = ["RULE", "candidates", "limits", "select"]

RULE = ("keep (candidate, round) with wer_proxy_dev <= seed * (1 + bound); take the lowest wer_user_dev; "
        "ties: fewer rounds. Round 0 (the seed model) is not a candidate.")


def candidates(rounds: Sequence[dict]) -> list[dict]:
    """``{"round", **eval}`` for every evaluated round of one run (round 0 included)."""
    return [{"round": r["round"], **r["eval"]} for r in rounds if r.get("eval")]


def select(root: str | Path, experiment: str, variants: Sequence[str], bound: float = 0.03,
           user: str = "wer_user_dev", proxy: str = "wer_proxy_dev") -> dict:
    """Apply the rule to the runs ``<root>/<experiment>/<variant>/rounds.jsonl``; write and return ``selection.json``.

    Raises:
        ValueError: a run lacks round 0 or the metrics, or the runs disagree on the seed model's dev metrics.
    """
    exp_dir = Path(root) / experiment
    curves, seed = {}, None
    for v in variants:
        path = exp_dir / v / "rounds.jsonl"
        rows = candidates(results.read_jsonl(path))
        if not rows or rows[0]["round"] != 0 or user not in rows[0] or proxy not in rows[0]:
            raise ValueError(f"{path}: needs round 0 and {user!r} / {proxy!r} in its evaluations")
        if seed is not None and (rows[0][user], rows[0][proxy]) != (seed[user], seed[proxy]):
            raise ValueError(f"{path}: round 0 differs from the other runs' (not the same seed model or splits)")
        seed, curves[v] = rows[0], rows
    limit = seed[proxy] * (1.0 + bound)
    pool = [(r[user], r["round"], v) for v, rows in curves.items() for r in rows[1:] if r[proxy] <= limit]
    chosen = None
    if pool:
        _, rnd, v = min(pool)
        row = next(r for r in curves[v] if r["round"] == rnd)
        fed = results.read_json(exp_dir / v / "config.json").get("config", {}).get("fed", {})
        chosen = {"variant": v, "round": rnd, user: row[user], proxy: row[proxy],
                  "user_rel": row[user] / seed[user] - 1.0, "proxy_rel": row[proxy] / seed[proxy] - 1.0,
                  "fed": {k: fed.get(k) for k in ("central-mix", "server-lr", "weighting", "clients-per-round")}}
    out = {"experiment": experiment, "rule": RULE, "bound": bound, "metrics": {"user": user, "proxy": proxy},
           "tuned_on": ["user_dev", "user_heldout_dev", "proxy_dev"], "seed": seed, "proxy_limit": limit,
           "candidates": {v: rows[1:] for v, rows in curves.items()}, "chosen": chosen,
           "note": None if chosen else "no (candidate, round) kept the proxy bound: nothing chosen"}
    results.write_json(exp_dir / "selection.json", out)
    return out


def limits(root: str | Path, experiment: str = "quality-dev") -> list[str]:
    """What the dev screen shows about the headline's ceiling (report lines, generated from ``selection.json``): the
    best user-domain gain found within the proxy bound, the best without it, and where each candidate's user-domain
    WER stopped falling."""
    path = Path(root) / experiment / "selection.json"
    if not path.exists():
        return []
    sel = results.read_json(path)
    user, proxy = sel["metrics"]["user"], sel["metrics"]["proxy"]
    seed, ch = sel["seed"], sel["chosen"]

    def rel(v: float) -> str:
        return f"{100 * (v / seed[user] - 1):+.1f}%"
    best = min((r[user], r["round"], v, r[proxy]) for v, rows in sel["candidates"].items() for r in rows)
    stops = ", ".join(f"`{v}` at round {min(rows, key=lambda r: (r[user], r['round']))['round']}"
                      for v, rows in sel["candidates"].items())
    out = [f"On the dev splits ({path.parent.name}/selection.json), the largest user-domain gain within the proxy "
           f"bound was {rel(ch[user])} (`{ch['variant']}`, round {ch['round']})" if ch else
           "On the dev splits no candidate kept the proxy bound"]
    out[0] += (f"; the largest at any proxy cost {rel(best[0])} (`{best[2]}`, round {best[1]}, proxy "
               f"{100 * (best[3] / seed[proxy] - 1):+.1f}%). Lowest user-domain WER of each candidate: {stops} "
               f"(evaluated every {sel['candidates'][next(iter(sel['candidates']))][0]['round']} rounds).")
    return out
