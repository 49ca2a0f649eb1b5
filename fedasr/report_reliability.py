"""The report's section on privacy, security and reliability (issue 21), from ``results/reliability/``.

Reads only ``summary.json`` (assembled by ``python -m fedasr.reliability assemble``) and ``parts/dp_plan.json``;
every number below comes from them. A part that has not been run is named with the make target that runs it.
`fedasr.report` calls `section`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fedasr.tables import _pct, _where

__all__ = ["figures", "section"]

MAKE = {"faults": "make reliability", "resume": "make reliability", "fuzz": "make reliability",
        "deployment": "make deployment-demo", "dp": "make dp-quick", "secagg": "make secagg",
        "privacy": "make privacy-audit"}


def _num(v: Any, fmt: str = "{:.3g}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _fig(path: Path, caption: str, report_dir: Path) -> list[str]:
    if not path.exists():
        return []
    return ["", f"![{caption}]({Path(os.path.relpath(path.resolve(), report_dir.resolve())).as_posix()})", "",
            f"*{caption}.*"]


def _faults(f: dict, rel: Path, report_dir: Path) -> list[str]:
    seeds = f.get("seeds", [0])
    lo, hi = f.get("wer_rel_ci95", [None, None])
    out = ["", f"**Client faults** ({_pct(f['faulty_fraction'])} of sampled client-rounds faulty: crash, straggler "
           f"past the {_num(f.get('round_timeout_s'), '{:.0f}')}-s round timeout, NaN, Inf, wrong shape, absurd "
           f"norm; {f.get('rounds')} FedSGD rounds, labels `{f.get('labels', 'n/a')}`, {len(seeds)} seed(s)):"
           f" final user WER {_pct(f['wer_clean'])} fault-free and {_pct(f['wer_faulty'])} with faults "
           f"(from {_pct(f.get('wer_initial'))} at round 0), a relative difference of {_pct(f.get('wer_rel'))}"
           + (f" (95% CI over seeds {_pct(lo)} to {_pct(hi)})" if lo is not None else "")
           + f"; within 10%: {'yes' if f.get('within_10pct') else 'no'}; every run completed: "
           f"{'yes' if f['completed'] else 'no'}; faulty updates aggregated undetected: {f.get('undetected')}."]
    rows = f.get("per_seed") or []
    if rows:
        out += ["", "| seed | user WER fault-free | user WER faulty | relative | faulty share realised | "
                "honest clients excluded (clean / faulty run) |", "|---|---|---|---|---|---|"]
        out += [f"| {r['seed']} | {_pct(r['wer_clean'])} | {_pct(r['wer_faulty'])} | {_pct(r['wer_rel'])} | "
                f"{_pct(r.get('faulty_fraction_realized'))} | {r.get('clean_clients_failed', 'n/a')} / "
                f"{r.get('honest_excluded', 'n/a')} |" for r in rows]
    return out + _fig(rel / "faults_wer.png", "User WER against round with and without 30% faulty clients",
                      report_dir)


def _dp(rows: list[dict], plan: dict | None, rel: Path, report_dir: Path) -> list[str]:
    out = ["", "**Differential privacy** (user-level: each client's update clipped as sent, Gaussian noise on the "
           "aggregate, RDP accountant; one seed per row, so no difference is claimed from it):", "",
           "| variant | noise multiplier | clip | ε | δ | rounds | user WER |", "|---|---|---|---|---|---|---|"]
    out += [f"| {r.get('variant', '')} | {_num(r['noise_multiplier'])} | {_num(r['clip'])} | {_num(r['epsilon'])} | "
            f"{_num(r['delta'])} | {r.get('rounds', '')} | {_pct(r['wer_user'])} |" for r in rows]
    if plan and plan.get("recommended"):
        a, p = plan["assumptions"], plan["recommended"]
        out += ["", f"At paper scale ({a['source']}: population {a['population']:,}, {a['rounds']} rounds, "
                f"δ = {a['delta']:g}), a cohort of {p['cohort']:,} clients with noise multiplier "
                f"{p['noise_multiplier']:.3f} gives ε = {p['epsilon']:.2f} (`{_where(rel / 'parts' / 'dp_plan.json')}`)."]
    return out + _fig(rel / "parts" / "dp.png", "User WER against ε at the quick profile", report_dir)


def figures(root: str | Path) -> list[tuple[str, Path]]:
    """``(caption, path)`` of the reliability figures that exist under ``<root>/reliability``."""
    rel = Path(root) / "reliability"
    known = [("User WER against round with and without 30% faulty clients", rel / "faults_wer.png"),
             ("User WER against ε at the quick profile", rel / "parts" / "dp.png")]
    return [(cap, path) for cap, path in known if path.exists()]


def section(root: str | Path, report_dir: str | Path) -> list[str]:
    """Markdown lines of the reliability section (empty list when ``results/reliability`` is absent)."""
    rel, report_dir = Path(root) / "reliability", Path(report_dir)
    if not (rel / "summary.json").exists():
        return ["", "## Privacy, security and reliability", "", "- not run: `make reliability`"]
    s = json.loads((rel / "summary.json").read_text())
    out = ["", "## Privacy, security and reliability", "",
           f"From `{_where(rel / 'summary.json')}` (`python -m fedasr.reliability assemble`)."]
    if s.get("faults"):
        out += _faults(s["faults"], rel, report_dir)
    if r := s.get("resume"):
        out += ["", f"**Server crash**: the server process SIGKILLed after round {r['killed_at_round']} "
                f"({r.get('engine', '')}, {r.get('task', '')} task) and resumed from its checkpoint reaches final "
                f"weights bitwise equal to an uninterrupted run: {'yes' if r['bitwise_equal'] else 'no'}."]
    if z := s.get("fuzz"):
        kinds = ", ".join(f"{k} {v['inputs']}" for k, v in sorted(z["by_kind"].items()))
        out += ["", f"**Fuzz**: {z['inputs']} malformed inputs ({kinds}); unhandled exceptions: {z['unhandled']}."]
    if d := s.get("deployment"):
        out += ["", f"**Deployment**: the {d['task']} task over a SuperLink and {d.get('supernodes', 'n/a')} "
                f"SuperNodes holding disjoint clients ({'yes' if d.get('clients_disjoint') else 'no'}); TLS "
                f"{'on' if d['tls'] else 'off'}, SuperNode authentication {'on' if d['node_auth'] else 'off'}; an "
                f"unregistered SuperNode refused: {'yes' if d['unregistered_refused'] else 'no'}; rounds completed: "
                f"{d.get('rounds_completed', 'n/a')}."]
    if s.get("dp"):
        plan = rel / "parts" / "dp_plan.json"
        out += _dp(s["dp"], json.loads(plan.read_text()) if plan.exists() else None, rel, report_dir)
    if g := s.get("secagg"):
        out += ["", f"**Secure aggregation** (`fedasr.federated.secagg`: {g.get('method', 'pairwise masking')}): "
                f"available {'yes' if g['available'] else 'no'}; upload bytes with masking ÷ the same codec without: "
                f"{_num(g['bytes_ratio'], '{:.2f}')}; final weights bitwise equal to the unmasked control on the same "
                f"grid: {'yes' if g.get('masked_equals_unmasked_bitwise') else 'no'}; {len(g.get('seeds', []))} seed(s), "
                "so no quality difference is claimed."]
        pairs = g.get("pairs") or []
        if pairs:
            out += ["", "| upload codec | bytes masked ÷ plain | user WER plain | user WER masked |", "|---|---|---|---|"]
            out += [f"| {q['plain']} | {_num(q['bytes_ratio'], '{:.3f}')} | {_pct(q['wer_user'].get(q['plain']))} | "
                    f"{_pct(q['wer_user'].get(q['secagg']))} |" for q in pairs]
        claims = g.get("claims") or {}
        if claims:
            out += ["", f"What is claimed: {claims.get('claimed', 'n/a')}. Not claimed: "
                    + "; ".join(claims.get("not_claimed", [])) + "."]
    if p := s.get("privacy"):
        out += ["", f"**What leaves a device**: {p['messages_checked']} ClientApp replies inspected "
                f"({', '.join(p.get('variants', []))}); violations (audio, transcripts or per-utterance values): "
                f"{len(p['violations'])}."]
    missing = [f"- not run: {name} (`{MAKE[name]}`)" for name in MAKE if s.get(name) is None]
    return out + (["", *missing] if missing else [])
