"""The report: the paper's claims E1–E5 beside what we measured, generated from ``results/*.json`` only.

``write(results_root, report_path)`` renders ``results/report.md`` (notebook ``05_report``; shell:
``python -m fedasr.report [RESULTS_ROOT [REPORT_PATH]]``). The paper's side of each claim is its qualitative
statement ([P] its own text, [S] a secondary description; its tables could not be read). Every sentence with
a number is built from a results file, and a claim's status from checks on them (targets, ``met`` flags)::

    reproduced       every check passes
    partly           some checks pass (or all that could run, while others have no results yet)
    not reproduced   no check passes
    not run          no check has results yet (the report names the make target)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedasr import dev_selection, evidence, quality_evidence, report_reliability, tables
from fedasr.results import REPO_ROOT
from fedasr.tables import _pct, _where

__all__ = ["STATUSES", "Check", "Claim", "assess", "checks_markdown", "claims_table", "figures", "render", "write"]

MiB = 2**20
PAPER_PARAMS = 130e6  # "full-size ASR models of 130M parameters" (the paper's abstract)
PARAMS_TOLERANCE = 0.03  # DESIGN §1, E1: the `paper` preset is 130M ± 3%
COMPARABLE = 0.03  # "comparable quality" = user WER within +3% of uncompressed: the rows' `within_3pct` flag
STATUSES = ("reproduced", "partly", "not reproduced", "not run")
METRICS = (("wer_user", "user"), ("wer_new_terms", "new-terms"))
INPUTS = {"seed": "summary.json", "federated": "summary.json", "efficiency": "memory.json",
          "efficiency-quality": "summary.json", "quality": "wer.json", "seed-full": "summary.json",
          "quality-mixing": "wer.json", "quality-lr": "wer.json", "bench": "asr_step.json"}  # what the report reads
BYTES = {"peak_rss_bytes": "peak", "download_bytes": "download", "upload_bytes": "upload",
         "round_bytes": "bytes per round"}  # the device-budget rows' fields, as the checks name them
# figures under <results>/figures, by the report section that shows them
FIGURES = {"efficiency_memory.png": ("budget", "Peak memory of one client round at 129M, technique by technique"),
           "efficiency_quality_cost.png": ("budget", "User WER cost of the device-budget methods at small scale"),
           "quality_wer.png": ("quality", "The user-corrections ablation"),
           "quality_curves.png": ("quality", "The ablation's WER over rounds"),
           "federated_federated.png": ("federated", "FedSGD vs FedAvg on the seed's own hypotheses"),
           "seed_training.png": ("seed", "Seed model training (quick profile)"),
           "seed_full_training.png": ("seed", "Seed model training (full profile)"),
           "seed_wer.png": ("seed", "Seed model WER by test set")}
CLAIMS = {  # DESIGN §1: id → (the claim, what the paper says)
    "E1": ("a 130M Conformer is too big for a device with plain FL",
           "[P] for models with \"over 100 million parameters\" common devices lack the memory and compute to "
           "finish FL tasks; the paper trains \"the full-size ASR models of 130M parameters\"."),
    "E2": ("gradient checkpointing + FedSGD + small batch + transport compression make it fit",
           "[S] the two bottlenecks are peak memory and transport size; a baseline system enables gradient "
           "checkpointing and FedSGD, sets a small batch size and applies transportation compression."),
    "E3": ("OMC and partial model training cut memory and upload further at comparable quality",
           "[S] OMC \"reduces model size and memory usage by quantizing variables\"; partial model training "
           "\"reduces memory usage and upload size by setting trainable and non-trainable variables\"; the OMC "
           "paper reports comparable accuracy."),
    "E4": ("FL on raw user data does not improve quality; client selection + on-device filtering + WCA does",
           "[P] \"first paper showing FL can improve the ASR model quality\" with methods that \"refine the "
           "quality of data and labels of clients\"; [S] the server selects clients with corrections, devices "
           "train only on user-corrected data and eliminate incorrect corrections, and the server aggregates "
           "with Weighted Client Aggregation."),
    "E5": ("FL can improve a centrally pretrained model",
           "[S] the model is \"initialized from a centrally pretrained model\"; [P] FL \"can also be combined "
           "with centralized server training under a joint training framework to mitigate distribution shift\"."),
}
FIXED_FACTS = (
    "All training and test speech except the small real-speech check is synthetic (text-to-speech voices "
    "with simulated rooms, band limits and noise); the real-speech check is one speaker, evaluation only.",
    "The 130M `paper` preset (Conformer + RNN-T) is measured for memory, bytes and step time only: it is not "
    "trained federatedly yet, so every WER here comes from the small seed model and its federated runs.",
    "Peak memory is a CPU process's peak RSS plus an analytic breakdown, not a phone's; the device tiers "
    "and their training budgets are our assumption, not the paper's.",
    "The paper's tables could not be read: its side of every comparison is qualitative.")


@dataclass
class Check:
    """One test of a claim against the JSON: ``ok`` is None when its input has not been made yet."""

    text: str
    ok: bool | None


@dataclass
class Claim:
    """A claim of DESIGN §1: what the paper says, what we measured, the checks behind its status and,
    where a check fails, what the results say about why."""

    id: str
    claim: str
    paper: str
    measured: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    why: list[str] = field(default_factory=list)

    @classmethod
    def new(cls, claim_id: str) -> Claim:
        """The claim ``claim_id`` of `CLAIMS`, nothing measured yet."""
        return cls(claim_id, *CLAIMS[claim_id])

    def add(self, check: Check) -> Claim:
        """Append ``check``; return the claim."""
        self.checks.append(check)
        return self

    @property
    def status(self) -> str:
        """One of `STATUSES`, from the checks (see the module docstring)."""
        done = [c.ok for c in self.checks if c.ok is not None]
        every = bool(done) and all(done) and len(done) == len(self.checks)
        return "not run" if not done else "reproduced" if every else "partly" if any(done) else "not reproduced"


def _load(root: Path, experiment: str, name: str = "summary.json") -> Any:
    path = root / experiment / name
    return json.loads(path.read_text()) if path.exists() else None


def _make(experiment: str) -> str:
    """``make <experiment>``, the target that writes ``<results>/<experiment>/``, if the Makefile has it."""
    makefile = REPO_ROOT / "Makefile"
    if makefile.exists() and re.search(rf"^{re.escape(experiment)}:", makefile.read_text(), re.M):
        return f"`make {experiment}`"
    return f"`{experiment}/` (no make target yet)"


def _not_run(*experiments: str) -> Check:
    return Check("not run: " + ", ".join(_make(e) for e in experiments), None)


def _rel(v: float) -> str:
    return f"{100 * v:+.1f}%"


def _bound(v: float) -> str:
    return f"{100 * v:+g}%"


def _mib(v: float) -> str:
    return f"{v / MiB:.0f} MiB" if v >= 100 * MiB else f"{v / MiB:.1f} MiB"


# ---------------------------------------------------------------- the device budget (E1–E3)

def _rows(root: Path) -> dict[str, dict]:
    """The device-budget rows by stack name, each with its ``round_bytes`` (download + upload)."""
    rows = _load(root, "efficiency", "memory.json") or []
    return {row["stack"]: {**row, "round_bytes": row["download_bytes"] + row["upload_bytes"]} for row in rows}


def _tiers(root: Path) -> list[tuple[str, int]]:
    """Device tiers ``(name, training budget bytes)`` as the efficiency run recorded them, smallest first."""
    sweep = (_load(root, "efficiency") or {}).get("budget_sweep_analytic") or []
    return [(name, b) for b, name in sorted((s["budget_bytes"], s["tier"]) for s in sweep if s.get("tier"))]


def _lowers(rows: dict[str, dict], a: str, b: str, label: str, *keys: str) -> Check:
    """Check that row ``b`` needs less than row ``a`` in each of ``keys`` (`BYTES`)."""
    values = ", ".join(f"{_mib(rows[a][k])} → {_mib(rows[b][k])}" for k in keys)
    return Check(f"{label} lowers the {' and the '.join(BYTES[k] for k in keys)}: {values}",
                 all(rows[b][k] < rows[a][k] for k in keys))


def _e1(root: Path) -> Claim:
    c = Claim.new("E1")
    plain, tiers = _rows(root).get("fedavg_adam"), _tiers(root)
    if not (plain and tiers):
        return c.add(_not_run("efficiency"))
    (name, budget), p, peak = tiers[-1], plain["params"], plain["peak_rss_bytes"]
    c.measured.append(f"`{plain['preset']}` preset: {p / 1e6:.1f}M parameters; one client round of plain FedAvg "
                      f"with local Adam peaks at {_mib(peak)} ({_mib(plain['analytic']['peak'])} analytic), "
                      f"{peak / budget:.2f}× the largest device tier's budget ({name}, {_mib(budget)}).")
    c.checks = [Check(f"the `{plain['preset']}` preset has {PAPER_PARAMS / 1e6:.0f}M parameters ± "
                      f"{100 * PARAMS_TOLERANCE:g}%: {p / 1e6:.1f}M", abs(p / PAPER_PARAMS - 1) <= PARAMS_TOLERANCE),
                Check(f"plain FedAvg (local Adam) needs more than the largest tier's budget: {_mib(peak)} vs "
                      f"{_mib(budget)}", peak > budget)]
    return c


def _e2(root: Path) -> Claim:
    c = Claim.new("E2")
    rows, tiers, base = _rows(root), _tiers(root), "+transport_compression"
    steps = [("fedavg_adam", ""), ("fedsgd", "FedSGD"), ("+small_batch", "a small batch"),
             ("+checkpointing", "gradient checkpointing")]
    if not (tiers and all(s in rows for s in [*dict(steps), base])):
        return c.add(_not_run("efficiency"))
    peak, trip = ({s: row[k] for s, row in rows.items()} for k in ("peak_rss_bytes", "round_bytes"))
    fits = [(n, b) for n, b in tiers if peak[base] <= b]
    c.checks = [*[_lowers(rows, a, b, label, "peak_rss_bytes") for (a, _), (b, label) in zip(steps, steps[1:])],
                _lowers(rows, "+checkpointing", base, "transport compression", "round_bytes"),
                Check(f"the baseline fits a device tier: {_mib(peak[base])} vs the largest budget "
                      f"{_mib(tiers[-1][1])}", bool(fits))]
    chain = " → ".join(_mib(peak[s]) + (f" ({label})" if label else "") for s, label in steps)
    where = f"fits the {fits[0][0]} tier ({_mib(fits[0][1])}) and above" if fits else "fits no device tier"
    c.measured.append(f"Peak per client round {chain}: {peak[base] / peak['fedavg_adam']:.2f}× plain; transport "
                      f"compression cuts bytes per round {_mib(trip['+checkpointing'])} → {_mib(trip[base])} "
                      f"({trip[base] / trip['+checkpointing']:.2f}×); the baseline {where}.")
    return c


def _e3_quality(root: Path, c: Claim) -> Claim:
    """Add E3's quality checks to ``c``: OMC and partial training against uncompressed FL at small scale."""
    q = _load(root, "efficiency-quality")
    if not (q and q.get("relative")):
        return c.add(_not_run("efficiency-quality"))
    rel = [x for x in q["relative"] if x["variant"] != q.get("relative_to")]
    omc = [x for x in rel if "omc" in x["variant"] and "partial" not in x["variant"]]
    part = sorted((x for x in rel if "partial" in x["variant"]), key=lambda x: x["wer_user_rel"])
    small, n = [], len(q.get("seeds") or [q.get("seed", 0)])
    runs = f"mean over {n} seeds" if n > 1 else "one run per variant"
    if omc:
        lo, hi = min(x["wer_user_rel"] for x in omc), max(x["wer_user_rel"] for x in omc)
        c.checks.append(Check(f"every OMC variant within {_bound(COMPARABLE)} user WER of uncompressed ({runs}): "
                              f"{_rel(lo)} to {_rel(hi)}", all(x["within_3pct"] for x in omc)))
        verdicts = "; ".join(f"`{x['variant']}` {x['verdict']}" for x in omc if x.get("verdict"))
        small.append(f"OMC changes user WER by {_rel(lo)} to {_rel(hi)} vs uncompressed ({runs}"
                     + (f"; paired 95% intervals: {verdicts}" if verdicts else "") + ")")
    if part:
        best, rounds = part[0], {v["variant"]: v["rounds"] for v in q.get("variants", [])}
        c.checks.append(Check(f"some partial-training variant within {_bound(COMPARABLE)}: best "
                              f"`{best['variant']}` {_rel(best['wer_user_rel'])}", any(x["within_3pct"] for x in part)))
        small.append(f"the best partial-training variant (`{best['variant']}`) by {_rel(best['wer_user_rel'])} "
                     f"(comparable: within {_bound(COMPARABLE)})")
        if not best["within_3pct"]:
            c.why.append(f"Partial training updates part of the model per round; after {rounds.get(best['variant'])} "
                         f"small-scale rounds its best variant is still {_rel(best['wer_user_rel'])} behind "
                         f"uncompressed ({runs}).")
    c.measured += ["At small scale " + "; ".join(small) + "."] if small else []
    return c


def _e3(root: Path) -> Claim:
    c = Claim.new("E3")
    rows, s = _rows(root), _load(root, "efficiency")
    if all(k in rows for k in ("+transport_compression", "+omc", "+partial")):
        c.checks += [_lowers(rows, "+transport_compression", "+omc", "OMC", "peak_rss_bytes", "download_bytes"),
                     _lowers(rows, "+omc", "+partial", "partial training", "peak_rss_bytes", "upload_bytes")]
    if s:
        t, met, p2 = s["targets"], s.get("met", {}), s["P2"]
        said = {"P1": f"full-stack peak {s['P1_peak_ratio']:.3f}× plain FedAvg",
                "P2": f"bytes {p2['transport_ratio']:.3f}× fp32 with OMC (the `{p2['row']}` row) at comparable "
                      "small-scale quality",
                "P3": f"step time {s['P3_step_time_ratio']:.2f}× plain"}
        c.checks += [Check(f"{k}: {v} (target ≤ {t[k]:g})", bool(met.get(k))) for k, v in said.items()]
        text = "; ".join(f"{v} ({k} ≤ {t[k]:g}: {'met' if met.get(k) else 'not met'})" for k, v in said.items())
        c.measured.append(f"{text[:1].upper()}{text[1:]}; bytes {s['P2_transport_ratio']:.3f}× fp32 with partial "
                          "training too.")
    elif not rows:
        c.checks.append(_not_run("efficiency"))
    return _e3_quality(root, c)


# ---------------------------------------------------------------- quality from user corrections (E4, E5)

def _ablation(root: Path, experiment: str = "quality") -> tuple[dict[str, dict], Any]:
    """An ablation's rows by variant (``wer.json``) and its ``summary.json``."""
    return {x["variant"]: x for x in _load(root, experiment, "wer.json") or []}, _load(root, experiment)


def _comparisons(root: Path) -> dict[tuple[str, str, str], dict]:
    """evidence.json's paired comparisons by ``(a, b, metric)``, only where at least 3 seeds ran (else none)."""
    ev = _load(root, "quality", "evidence.json") or {}
    return {} if len(ev.get("seeds", [])) < 3 else {(c["a"], c["b"], c["metric"]): c for c in ev.get("comparisons", [])}


def _evidence(root: Path, metric: str) -> tuple[float, float, float] | None:
    """``(mean, lo, hi)`` of the headline's relative change against the seed, where evidence.json has ≥ 3 seeds."""
    ev = _load(root, "quality", "evidence.json") or {}
    head = ev["rows"][-1]["variant"] if ev.get("rows") else None
    c = _comparisons(root).get(("seed", head, metric))
    return (c["delta_rel"]["mean"], *c["delta_rel"]["ci95"]) if c else None


def _steps(rows: dict[str, dict], cmp: dict[tuple[str, str, str], dict]) -> list[str]:
    """Each refinement step against the one it adds to (WCA rows against the row before), user and new-terms WER,
    with the verdict of its paired interval (evidence.json, ≥ 3 seeds) or none."""
    chain = [v for v in ("no_refinement", "selection", "filtering", "wca_loss", "wca_frequency") if v in rows]

    def verdict(a: str, b: str, m: str) -> str:
        c = cmp.get((a, b, m))
        return (f"{c.get('verdict') or evidence.verdict(c['delta_rel']['ci95'])}, 95% CI {_rel(c['delta_rel']['ci95'][0])}"
                f" to {_rel(c['delta_rel']['ci95'][1])}") if c else "no interval: not claimed"
    out = [f"`{b}` vs `{a}`: " + ", ".join(f"{label} WER {_pct(rows[a][m])} → {_pct(rows[b][m])} ({verdict(a, b, m)})"
                                           for m, label in METRICS) + "." for a, b in zip(chain, chain[1:])]
    refined = sorted((x["wer_user"], v) for v, x in rows.items() if v not in ("seed", "central_only", "no_refinement"))
    return out + [f"Lowest mean user WER among the refinement rows: `{v}` ({_pct(w)})." for w, v in refined[:1]]


def _e4(root: Path) -> Claim:
    c = Claim.new("E4")
    fed = (_load(root, "federated") or {}).get("variants", [])
    runs = ", ".join(f"{v['variant']} {_pct((v['initial'] or {}).get('wer_user'))} → "
                     f"{_pct((v['final'] or {}).get('wer_user'))}" for v in fed)
    c.measured += [f"FL on the seed's own hypotheses, user WER: {runs}."] if runs else []
    rows, s = _ablation(root)
    if not (s and s.get("targets") and "seed" in rows and "no_refinement" in rows):
        return c.add(_not_run("quality"))
    t, seed = s["targets"], _load(root, "seed")
    head, ref = t["compare"][1], t["relative_change"]
    raw = {m: rows["no_refinement"][m] / rows["seed"][m] - 1 for m, _ in METRICS}
    c.checks = [Check(f"refinement (`{head}`) gains more {label} WER than FL on hypotheses: {_rel(ref[m])} vs "
                      f"{_rel(raw[m])}", ref[m] < raw[m]) for m, label in METRICS]
    c.checks += [Check(f"{label} WER target: {_rel(ref[m])} vs the seed (target ≤ {_bound(t['bounds'][m])})",
                       bool(t["met"][m])) for m, label in METRICS]
    c.measured.append(f"Ablation vs the seed: FL on hypotheses {_rel(raw['wer_user'])} user / "
                      f"{_rel(raw['wer_new_terms'])} new-terms WER; full refinement (`{head}`) {_rel(ref['wer_user'])} "
                      f"/ {_rel(ref['wer_new_terms'])} (targets {_bound(t['bounds']['wer_user'])} / "
                      f"{_bound(t['bounds']['wer_new_terms'])}).")
    c.details = _steps(rows, _comparisons(root))
    if not all(t["met"][m] for m, _ in METRICS):
        k = s.get("corrections") or (_load(root, "quality/seed0") or {}).get("corrections", {})
        model = f", a {seed['params'] / 1e6:.2f}M-parameter {seed['head'].upper()} model" if seed else ""
        c.why.append(f"The scale is small: {k.get('corrected')} corrected utterances on "
                     f"{k.get('clients_with_corrections')} clients{'' if 'corrections' in s else ' (seed 0)'}, "
                     f"{rows.get(head, {}).get('rounds')} rounds{model}.")
    return c


def _within_bound(root: Path, experiment: str, bound: float) -> list[str]:
    """The sweep rows that keep the proxy domain within ``bound`` while improving the user domain."""
    rows, _ = _ablation(root, experiment)
    changes = {v: {m: rows[v][m] / rows["seed"][m] - 1 for m in ("wer_user", "wer_new_terms", "wer_proxy")}
               for v in rows if v != "seed" and "seed" in rows}
    return [f"`{v}` in `{experiment}` keeps proxy WER within the bound ({_rel(ch['wer_proxy'])}) at "
            f"{_rel(ch['wer_user'])} user and {_rel(ch['wer_new_terms'])} new-terms WER (a sweep, one run, not the "
            "adopted configuration)." for v, ch in changes.items() if ch["wer_proxy"] <= bound and ch["wer_user"] < 0]


def _e5(root: Path) -> Claim:
    c = Claim.new("E5")
    seed, (_, s) = _load(root, "seed"), _ablation(root)
    if seed:
        c.measured.append(f"Seed: `{seed['preset']}` {seed['head'].upper()} model, {seed['params'] / 1e6:.2f}M "
                          f"parameters, trained centrally on the proxy domain only: proxy WER "
                          f"{_pct(seed['wer']['proxy'])}, unseen users {_pct(seed['wer']['user'])}.")
    if not (s and s.get("targets")):
        return c.add(_not_run(*([] if seed else ["seed"]), "quality"))
    t = s["targets"]
    head, ch, bound = t["compare"][1], t["relative_change"], t["bounds"]["wer_proxy"]
    for (m, label), ev in ((m, _evidence(root, m[0])) for m in METRICS):
        c.checks.append(Check(f"{label} WER improves on the seed: {_rel(ev[0])} (95% CI {_rel(ev[1])} to "
                              f"{_rel(ev[2])})", ev[2] < 0) if ev else
                        Check(f"{label} WER improves on the seed: {_rel(ch[m])} (one run)", ch[m] < 0))
    c.checks.append(Check(f"no catastrophic forgetting: proxy WER {_rel(ch['wer_proxy'])} (bound ≤ {_bound(bound)})",
                          bool(t["met"]["wer_proxy"])))
    c.measured.append(f"After FL with refined corrections (`{head}`): user WER {_rel(ch['wer_user'])}, new terms "
                      f"{_rel(ch['wer_new_terms'])}, proxy {_rel(ch['wer_proxy'])} (bound {_bound(bound)}: "
                      f"{'met' if t['met']['wer_proxy'] else 'not met'}).")
    h = quality_evidence.headline(root)  # the configuration chosen on dev splits, test read once (issue 18)
    c.checks += [Check(f"headline `{h['headline']}` (chosen on {', '.join(h['tuned_on'])}) {m}: {_rel(x['delta_rel'])} vs "
                       f"the seed (95% CI {_rel(x['ci95'][0])} to {_rel(x['ci95'][1])}; target {_bound(x['target'])})",
                       x["met"]) for m, x in h["metrics"].items()] if h else []
    if h and not all(x["met"] for x in h["metrics"].values()):
        c.why.extend(dev_selection.limits(root))
    sweeps = [x for e in ("quality-lr", "quality-mixing") for x in _within_bound(root, e, bound)]
    (c.details if t["met"]["wer_proxy"] else c.why).extend(sweeps)
    return c


# ---------------------------------------------------------------- rendering

def assess(results_root: str | Path = "results") -> list[Claim]:
    """The claims E1–E5: what we measured, the checks and the status of each."""
    return [fn(Path(results_root)) for fn in (_e1, _e2, _e3, _e4, _e5)]


def claims_table(claims: list[Claim]) -> list[str]:
    """The claims as one markdown table: the paper says / we measured / status."""
    return ["| | claim | the paper says | we measured | status |", "|---|---|---|---|---|",
            *[f"| {c.id} | {c.claim} | {c.paper} | {' '.join(c.measured) or '—'} | **{c.status}** |" for c in claims]]


def checks_markdown(claims: list[Claim]) -> list[str]:
    """Each claim's checks (✓ passes, ✗ fails, – not run yet) and the measurements beside them."""
    return [line for c in claims for line in ("", f"### {c.id} · {c.claim} — {c.status}", "",
            *[f"- {'✓' if ch.ok else '✗' if ch.ok is False else '–'} {ch.text}" for ch in c.checks],
            *[f"- {d}" for d in c.details])]


def figures(results_root: str | Path = "results") -> list[tuple[str, str, Path]]:
    """``(section, caption, path)`` of every PNG under ``<results_root>/figures`` (unknown ones: "other")."""
    folder = Path(results_root) / "figures"
    pngs = {p.name: p for p in sorted(folder.glob("*.png"))} if folder.is_dir() else {}
    known = [(sec, cap, pngs[name]) for name, (sec, cap) in FIGURES.items() if name in pngs]
    return known + [("other", p.stem.replace("_", " "), p) for name, p in pngs.items() if name not in FIGURES]


def _figs(figs: list[tuple[str, str, Path]], section: str, report_dir: Path) -> list[str]:
    return [f"\n![{cap}]({Path(os.path.relpath(p.resolve(), report_dir.resolve())).as_posix()})\n\n*{cap}.*"
            for sec, cap, p in figs if sec == section]


def _unreproduced(claims: list[Claim]) -> list[str]:
    out = []
    for c in claims:
        out += [f"- **{c.id}** ({c.status}) — {ch.text}: {'not met' if ch.ok is False else 'no results yet'}."
                for ch in c.checks if not ch.ok]
        out += [f"- **{c.id}**, why: {why}" for why in c.why]
    return out + ["", "What holds for every result here:", "", *[f"- {fact}" for fact in FIXED_FACTS]]


def render(results_root: str | Path = "results", report_path: str | Path = "results/report.md") -> str:
    """The report as markdown (figure links relative to ``report_path``'s folder)."""
    root, report_dir = Path(results_root), Path(report_path).parent
    claims, figs = assess(root), figures(root)
    seeds = len((_load(root, "quality", "evidence.json") or {}).get("seeds", []))
    single = (root / "quality" / "wer.json").exists() and seeds < 3  # < 3 seeds: no claim from the rows
    out = ["# fedasr: the paper's claims and what we measured", "",
           f"*Generated by `fedasr.report` (notebook `05_report`) from the JSON under `{_where(root)}/`: "
           "rerun it rather than editing this file.* The paper is Xiao et al., *Federated Learning of Large ASR "
           "Models in the Real World* (arXiv 2408.10443); its side of each row is its qualitative statement "
           "([P] its own text, [S] a secondary description of it). All training speech is synthetic.", "",
           "## Claims E1–E5", "", *claims_table(claims), "",
           "Status: **reproduced** when every check below passes, **partly** when some do, **not reproduced** "
           "when none do, **not run** when its results are missing.", "", "## How each status is decided",
           *checks_markdown(claims)]
    out += ["", "## Device budget of one client round (E1–E3)", *tables.efficiency_table(root),
            *_figs(figs, "budget", report_dir), *tables.paper_model_line(root), *tables.clientapp_memory_line(root),
            *tables.quality_cost_table(root),
            "", "## Quality from user corrections (E4, E5)",
            *(["", f"Each federated row below is from {max(seeds, 1)} seed(s): fewer than 3, so no difference is "
                   "claimed from it (`make quality-seeds` runs 3)."] if single else []),
            *tables.quality_table(root), *tables.evidence_markdown(root), *tables.wca_hetero_line(root),
            *_figs(figs, "quality", report_dir),
            *[line for e in ("quality-mixing", "quality-lr") for line in tables.quality_table(root, e)],
            "", "## Federated training on the seed's own hypotheses (E4)", *tables.federated_table(root),
            *_figs(figs, "federated", report_dir), "", "## Seed model and step cost (E5's starting point)", "",
            *tables.seed_table(root), *tables.step_table(root), *_figs(figs, "seed", report_dir)]
    out += report_reliability.section(root, report_dir)  # issue 21: privacy, security and reliability
    other = _figs(figs, "other", report_dir)
    missing = [f"- not run: {_make(e)}" for e, f in INPUTS.items() if not (root / e / f).exists()]
    out += [*(["", "## Other figures", *other] if other else []), "", "## What is not reproduced, and why", "",
            *_unreproduced(claims), *(["", "## Not run", "", *missing] if missing else [])]
    return "\n".join(out + ["", tables.footnote(root), ""])


def write(results_root: str | Path = "results", report_path: str | Path = "results/report.md") -> Path:
    """Render the report from ``results_root`` and write it to ``report_path``; return that path."""
    (path := Path(report_path)).parent.mkdir(parents=True, exist_ok=True), path.write_text(render(results_root, path))
    return path


if __name__ == "__main__":  # python -m fedasr.report [RESULTS_ROOT [REPORT_PATH]]
    import sys
    print(write(*(sys.argv[1:] or [REPO_ROOT / "results", REPO_ROOT / "results" / "report.md"])))
