"""Markdown tables of the results under ``results/`` (the README's results block and the notebooks).

Every number in a table comes from a run's JSON (STYLE: results are files, tables are views of them).
Each function takes a results root (default: the repository's ``results/``) and, where a notebook may
point elsewhere, the experiment's folder name under it, and returns markdown lines (empty, or a one-line
note, when the run has not been made yet)::

    seed_table            central pretraining (paper §2.1; results/seed, results/seed-full)
    step_table            one training step's cost per model preset (results/bench/asr_step.json)
    federated_table       FedSGD vs FedAvg from the seed (§2.3; notebook 02)
    efficiency_table      device budget of one client round, technique by technique (§2.3–2.4; notebook 03)
    quality_cost_table    WER cost of those techniques in real FL at small scale (notebook 03)
    quality_table         quality from user corrections (§2.5; notebook 04)
    headline_table        the configuration chosen on dev splits against the seed, with targets (issue 18)
    wca_hetero_line       WCA against example weights when clients differ in correction quality (make quality-wca)
    paper_model_line      the 129M preset through Flower (make paper-model)
    clientapp_memory_line one ClientApp process's round peaks per malloc setting (bench/clientapp_memory.py)
    reproduce_line        how long the last `make reproduce` took, per notebook
    evidence_markdown     means over seeds with intervals and paired comparisons (evidence.json; the report)
    results_markdown      all of the above: the README's results block (tools/readme_results.py)

In a notebook: ``display(Markdown("\\n".join(tables.efficiency_table())))``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from fedasr.results import REPO_ROOT

__all__ = ["RESULTS", "seed_table", "step_table", "federated_table", "efficiency_table", "quality_cost_table",
           "quality_table", "headline_table", "evidence_markdown", "reproduce_line", "evidence_targets_line",
           "footnote", "paper_model_line", "clientapp_memory_line", "wca_hetero_line", "results_markdown"]

RESULTS = REPO_ROOT / "results"
MiB = 2**20
FOOTNOTE = ("WER is greedy decoding without a language model, so a character model's word errors stay high where its "
            "CER is moderate.")


def footnote(root: str | Path = RESULTS) -> str:
    """What speech the results under ``root`` were trained on (their summaries' ``synthetic_speech``), then `FOOTNOTE`."""
    flags = {f.parent.name: v for f in sorted(Path(root).glob("*/summary.json"))
             if isinstance(v := (_load(f) or {}).get("synthetic_speech"), bool)}
    real = sorted(k for k, v in flags.items() if not v)
    speech = ("All training speech is synthetic (TTS)" if flags and not real else
              f"Results on real speech: {', '.join(f'`{k}`' for k in real)}; the others' training speech is synthetic "
              "(TTS)" if real else "")
    return (speech + "; " if speech else "") + FOOTNOTE


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _where(path: Path) -> str:
    """``path`` as the tables name it: relative to the repository root where it lies inside it."""
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _read(root: str | Path, experiment: str, *files: str) -> tuple[Any, ...]:
    """``(folder, *loaded files)`` of ``<root>/<experiment>/`` (a missing file loads as None)."""
    folder = Path(root) / experiment
    return (folder, *(_load(folder / f) for f in files))


def _eval_scope(folder: Path) -> str:
    """What the server evaluated on, from the experiment's ``config.json`` (``task.eval-max-utterances``)."""
    n = ((_load(folder / "config.json") or {}).get("config", {}).get("task", {}) or {}).get("eval-max-utterances")
    return f"the first {n} utterances of each test set" if n else "every utterance of each test set"


def _table(caption: str, columns: Sequence[str]) -> list[str]:
    """A blank line, the caption, a blank line and a markdown table header with ``columns``."""
    return ["", caption, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def seed_table(root: str | Path = RESULTS) -> list[str]:
    """The seed models (quick and full profile): size, training budget, WER/CER per test set."""
    root = Path(root)
    folders = {"quick": "seed", "quick RNN-T": "seed-rnnt", "full": "seed-full"}
    runs = {p: _load(root / d / "summary.json") for p, d in folders.items()}
    runs = {p: s for p, s in runs.items() if s}
    if not runs:
        return ["*No seed run yet (`make seed`).*"]
    out = []
    for profile, s in runs.items():
        folder = folders[profile]
        start = ((_load(root / folder / "config.json") or {}).get("config") or {}).get("init-from")
        out += [""] if out else []
        out.append(f"**Seed model, {profile} profile** (`{_where(root / folder / 'summary.json')}`): `{s['preset']}` "
                   f"preset, {s['head'].upper()} over {s['units']} units, {s['params'] / 1e6:.2f}M parameters, "
                   f"{s['train_seconds'] / 60:.0f} minutes on {s['workers']} processes ({s['steps']} steps) on "
                   f"`{s['corpus']}`, proxy domain only" + (f", starting from `{start}` (its training time not included)."
                                                        if start else "."))
    cols = list(runs)
    out += ["", "| test set | " + " | ".join(f"WER {p} | CER {p}" for p in cols) + " |",
            "|---|" + "---|---|" * len(cols)]
    for label, key, cer in (("proxy (server domain)", "proxy", True), ("user domain, unseen users", "user", True),
                            ("user domain, new terms (client names/places)", "new_terms", False),
                            ("user domain, no new terms", "user_no_terms", False),
                            ("real speech (Asterisk, 1 speaker)", "real", True)):
        cells = [f"{_pct(s['wer'].get(key))} | {_pct(s['cer'].get(key)) if cer else ''}" for s in runs.values()]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def step_table(root: str | Path = RESULTS) -> list[str]:
    """One fwd+bwd training step per preset (`bench/asr_step.py`): time, peak RSS, FLOPs, FLOP-rate ratio."""
    path = Path(root) / "bench" / "asr_step.json"
    rows = _load(path)
    if not rows:
        return []
    r0 = rows[0]
    out = _table(f"**One training step, fwd+bwd** (`{_where(path)}`, `bench/asr_step.py`; batch "
           f"{r0['batch_size']} × {r0['audio_seconds']:g} s, {r0['target_tokens']} tokens, 1 torch thread; FLOP rate = "
           "counted matmul/conv FLOPs per second ÷ a 1024² fp32 matmul's rate measured in the same process; "
           "target for `paper` ≥ 0.6):", ("preset", "parameters", "step s", "peak RSS GiB", "GFLOP/step",
                                          "FLOP-rate ratio", "load (1 min)"))
    for r in rows:
        out.append(f"| {r['preset']} | {r['params'] / 1e6:.1f}M | {r['step_seconds']:.2f} | "
                   f"{r['peak_rss_bytes'] / 2**30:.2f} | {r['flops_per_step'] / 1e9:.0f} | {r['flop_rate_ratio']:.2f} | "
                   f"{r.get('loadavg_1min', float('nan')):.2f} |")
    return out


def federated_table(root: str | Path = RESULTS, experiment: str = "federated") -> list[str]:
    """Federated variants from the seed (``<root>/<experiment>/summary.json``): WER start → end, bytes, failures."""
    folder = Path(root) / experiment
    s = _load(folder / "summary.json")
    if not s:
        return []
    out = _table("**Federated training from the seed, labels = the seed's own hypotheses** "
                 f"(`{_where(folder)}/`, notebook 02; server-side evaluation on {_eval_scope(folder)}):", ("variant", "rounds", "user WER (start → end)", "user CER", "proxy WER", "MiB down+up",
                           "failed clients"))
    for r in s["variants"]:
        i, f = r["initial"] or {}, r["final"] or {}
        out.append(f"| {r['variant']} | {r['rounds']} | {_pct(i.get('wer_user'))} → {_pct(f.get('wer_user'))} | "
                   f"{_pct(i.get('cer_user'))} → {_pct(f.get('cer_user'))} | {_pct(i.get('wer_proxy'))} → "
                   f"{_pct(f.get('wer_proxy'))} | {(r['bytes_down'] + r['bytes_up']) / MiB:.0f} | {r['clients_failed']} |")
    return out


def efficiency_table(root: str | Path = RESULTS, experiment: str = "efficiency") -> list[str]:
    """The device-budget rows (`fedasr.efficiency`: ``memory.json``) and P1–P3 (``summary.json``)."""
    folder, rows, s = _read(root, experiment, "memory.json", "summary.json")
    if not rows:
        return []
    out = _table(f"**Device budget of one client round, `{rows[0]['preset']}` preset ({rows[0]['params'] / 1e6:.1f}M "
                 f"parameters), each row adds one technique** (`{_where(folder)}/`, notebook 03; peak = VmHWM of a "
                 "fresh process minus its baseline):",
                 ("stack", "measured peak MiB", "analytic MiB", "download MiB", "upload MiB", "step s"))
    for r in rows:
        out.append(f"| {r['stack']} | {r['peak_rss_bytes'] / MiB:.0f} | {r['analytic']['peak'] / MiB:.0f} | "
                   f"{r['download_bytes'] / MiB:.1f} | {r['upload_bytes'] / MiB:.1f} | {r['step_seconds']:.1f}"
                   f"{'*' if r.get('step_concurrent') else ''} |")
    if any(r.get("step_concurrent") for r in rows):
        out += ["", "\\* step time measured while another row's process ran on the other core (contended); the P3 "
                "pair's step times come from solo runs only (`fedasr.fresh_runs`)."]
    if s:
        met = s.get("met", {})
        p2 = s.get("P2", {})
        q = p2.get("quality") or {}
        p2_text = (f"P2 transport ratio {p2.get('transport_ratio') or float('nan'):.3f} for the `{p2.get('row')}` row "
                   f"(≤ 0.10) with user WER {100 * q['wer_user_rel']:+.1f}% vs {q.get('reference') or 'uncompressed'} "
                   f"in real FL at small scale (`{q['variant']}`; limit +3%)" if q else "P2 quality not measured")
        out += ["", f"P1 peak ratio {s['P1_peak_ratio']:.3f} (target ≤ 0.20: {'met' if met.get('P1') else 'not met'}); "
                f"{p2_text}: {'met' if met.get('P2') else 'not met'}; the full stack with partial training sends "
                f"{s['P2_transport_ratio']:.3f}; P3 step-time ratio {s['P3_step_time_ratio']:.2f} (≤ 1.3: "
                f"{'met' if met.get('P3') else 'not met'})."]
    return out


def quality_cost_table(root: str | Path = RESULTS, experiment: str = "efficiency-quality") -> list[str]:
    """The small-scale quality-cost variants (``summary.json`` of configs/efficiency/quality_cost.toml's runs; means
    over seeds with the paired 95% interval of each row's user-WER change where several seeds ran)."""
    folder = Path(root) / experiment
    s = _load(folder / "summary.json")
    if not s:
        return []
    seeds = s.get("seeds") or [s.get("seed", 0)]
    what = (f"mean over {len(seeds)} seeds ({', '.join(map(str, seeds))}), the change with its paired 95% interval "
            "and a verdict" if len(seeds) > 1 else "one seed: no difference is claimed from it")
    ref = s.get("relative_to") or "uncompressed"
    out = _table(f"**Quality cost of the device-budget methods at small scale** (`{_where(folder)}/`, "
                 f"`make efficiency-quality`, notebook 03; FedSGD, every row with the same oracle labels, server "
                 f"evaluation on {_eval_scope(folder)}; {what}):",
                 ("variant", "rounds", "user WER (start → end)", f"vs {ref}", "proxy WER (end)", "MiB down", "MiB up",
                  "bytes vs fp32"))
    rel = {r["variant"]: r for r in s.get("relative", [])}
    for r in s["variants"]:
        i, f, x = r["initial"] or {}, r["final"] or {}, rel.get(r["variant"], {})
        vs = f"{100 * x['wer_user_rel']:+.1f}%" if x else ""
        if x.get("wer_user_rel_ci95") and r["variant"] != ref:
            lo, hi = x["wer_user_rel_ci95"]
            vs += f" [{100 * lo:+.1f}, {100 * hi:+.1f}] {x.get('verdict', '')}".rstrip()
        ratio = f"{x['transport_ratio']:.3f}" if x else ""
        out.append(f"| {r['variant']} | {r['rounds']} | {_pct(i.get('wer_user'))} → {_pct(f.get('wer_user'))} | {vs} | "
                   f"{_pct(f.get('wer_proxy'))} | {r['bytes_down'] / MiB:.0f} | {r['bytes_up'] / MiB:.0f} | {ratio} |")
    return out


def quality_table(root: str | Path = RESULTS, experiment: str = "quality") -> list[str]:
    """The user-corrections ablation (``wer.json``: means over seeds when several ran) and what the simulated users
    and the filter did (each seed's ``summary.json``: a range over seeds)."""
    folder, rows, s = _read(root, experiment, "wer.json", "summary.json")
    if not rows:
        return []
    seeds = (s or {}).get("seeds") or [0]
    what = (f"mean over {len(seeds)} seeds ({', '.join(map(str, seeds))}: a seed changes the clients sampled, the "
            "simulated users' corrections and the stochastic rounding); 95% intervals and paired comparisons in "
            "`results/report.md`" if len(seeds) > 1 else
            "one seed: fewer than 3, so no difference is claimed from it")
    cfg = ((_load(folder / "config.json") or {}).get("config") or {})
    fed, flt = cfg.get("fed") or {}, cfg.get("filter") or {}
    settings = (f"α {fed.get('central-mix')}, server {fed.get('server-optimizer')} {fed.get('server-lr')}, "
                f"max-char-edit {flt.get('max-char-edit')}, settings chosen on "
                f"{', '.join((s or {}).get('tuned_on') or ['(not recorded)'])}; " if fed else "")
    out = _table(f"**Quality from simulated user corrections** (`{_where(folder / 'wer.json')}`, notebook 04; same "
                 f"seed model, rounds and clients per round in every row; {settings}{what}):",
                 ("variant", "rounds", "user WER (unseen users)", "new-terms WER (seen users)", "proxy WER"))
    for r in rows:
        out.append(f"| {r['variant']} | {r['rounds']} | {_pct(r['wer_user'])} | {_pct(r['wer_new_terms'])} | "
                   f"{_pct(r['wer_proxy'])} |")
    per_seed = [s] if s and "corrections" in s else [
        _load(folder / f"seed{k}" / "summary.json") for k in seeds] if s else []
    per_seed = [p for p in per_seed if p and "corrections" in p]
    if per_seed:
        def span(get, fmt=_pct) -> str:
            vals = sorted(get(p) for p in per_seed)
            return fmt(vals[0]) if vals[0] == vals[-1] else f"{fmt(vals[0])}–{fmt(vals[-1])}"
        c, f = (lambda k: (lambda p: p["corrections"][k])), (lambda k: (lambda p: p["filter"][k]))
        out += ["", f"Simulated users corrected {span(c('corrected'), str)} of {span(c('utterances'), str)} utterances "
                f"on {span(c('clients_with_corrections'), str)} clients; {span(c('incorrect_rate'))} of corrections "
                f"were not the reference. On-device filtering removed {span(f('wrong_removed'))} of wrong corrections "
                f"and {span(f('incorrect_removed'))} of all incorrect ones, keeping {span(f('correct_kept'))} of the "
                "right ones" + (" (range over seeds)." if len(per_seed) > 1 else ".")]
    return out


def headline_table(root: str | Path = RESULTS) -> list[str]:
    """The headline configuration (chosen on dev splits, test splits read once) against the seed model, per metric:
    both means over seeds, the relative change with its paired 95% interval, and issue 18's target."""
    from fedasr import quality_evidence

    h = quality_evidence.headline(root)
    if not h:
        return []
    path = Path(root) / h["experiment"] / "evidence.json"
    head = h["headline"]
    names = {"wer_user": "user WER (unseen users)", "wer_new_terms": "new-terms WER (seen users)",
             "wer_proxy": "proxy WER (server domain)"}
    out = _table(f"**Headline configuration, chosen on dev splits** (`{_where(path)}`; `{head}` against the seed model, "
                 f"mean over seeds {', '.join(map(str, h['seeds']))}; choices made on {', '.join(h['tuned_on'])}; "
                 "test splits read once):",
                 ("metric", "seed", head, "change [95% CI]", "target", "met"))
    for m, x in h["metrics"].items():
        lo, hi = x["ci95"]
        out.append(f"| {names[m]} | {_pct(x['seed'])} | {_pct(x['headline'])} | "
                   f"{100 * x['delta_rel']:+.1f}% [{100 * lo:+.1f}%, {100 * hi:+.1f}%] | "
                   f"{100 * x['target']:+.0f}% | {'yes' if x['met'] else 'no'} |")
    if "term_recall" in h:
        out += ["", f"Seen users' new terms recognised (term recall): {_pct(h['term_recall']['seed'])} by the seed, "
                f"{_pct(h['term_recall']['headline'])} after federated training (mean over seeds)."]
    return out


def evidence_markdown(root: str | Path,
                      experiments: Sequence[str] = ("quality", "quality-headline", "efficiency-quality")) -> list[str]:
    """Report lines: rows with a mean and a 95% interval over seeds (``evidence.json``), and each comparison with
    its verdict, where a run carries them (``evidence.json``, `fedasr.quality_evidence`; used by `fedasr.report`)."""
    from fedasr import evidence

    def rel(v: float | None) -> str:  # None: undefined (a relative change from 0, e.g. a term recall of 0)
        return "undefined" if v is None else f"{100 * v:+.1f}%"
    out = []
    for exp in experiments:
        path = Path(root) / exp / "evidence.json"
        ev = json.loads(path.read_text()) if path.exists() else {}
        if not ev.get("rows"):
            continue
        cols = [k for k, v in ev["rows"][0].items() if isinstance(v, dict) and "ci95" in v]
        out += ["", f"**Mean over seeds with 95% confidence intervals** (`{_where(path)}`):",
                "", "| variant | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
        out += [f"| {row['variant']} | {row.get('n_seeds', '')} | " + " | ".join(
            f"{_pct(row[k]['mean'])} [{_pct(row[k]['ci95'][0])}, {_pct(row[k]['ci95'][1])}]"
            if isinstance(row.get(k), dict) else "" for k in cols) + " |" for row in ev["rows"]] + [""]
        for cmp in ev.get("comparisons", []):
            (lo, hi), mean = cmp["delta_rel"]["ci95"], cmp["delta_rel"]["mean"]
            verdict = cmp.get("verdict") or evidence.verdict((lo, hi))
            out.append(f"- `{cmp['b']}` vs `{cmp['a']}`, {cmp['metric']}: {rel(mean)} (95% CI {rel(lo)} to "
                       f"{rel(hi)}, {len(ev.get('seeds', []))} seed(s)): {verdict}.")
    return out


def time_table(root: str | Path = RESULTS, experiment: str = "quality") -> list[str]:
    """Where the time of an experiment's runs goes, summed over rounds (``rounds.jsonl``): the clients' phase
    (their compute, transport and the engine's scheduling), the clients' own compute, the server's update (with
    Mixed FL's central update), server-side evaluation, and what no part accounts for (checkpoints, startup)."""
    folder = Path(root) / experiment
    runs = sorted(p.parent for p in folder.glob("*/rounds.jsonl"))
    if not runs:
        return []
    out = _table(f"**Where the time goes** (`{_where(folder)}/*/rounds.jsonl`; seconds summed over rounds; client "
                 "compute is the sum over clients, so it can exceed the clients' phase when clients run in parallel):",
                 ("run", "rounds", "wall", "clients' phase", "client compute (sum / slowest)", "server update",
                  "of which central", "evaluation", "other"))
    for run in runs:
        rows = [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines() if x.strip()]
        summary = _load(run / "summary.json") or {}
        tot = {k: sum(r.get(k) or 0.0 for r in rows) for k in ("wall_s", "clients_s", "server_s", "eval_s")}
        compute = sum(sum((r.get("client_compute_s") or {}).values()) for r in rows)
        slowest = sum(r.get("slowest_client_s") or 0.0 for r in rows)
        central = sum((r.get("central") or {}).get("compute_s") or 0.0 for r in rows)
        session = summary.get("session_wall_s")
        other = f"{session - tot['wall_s']:.0f}" if session is not None else ""
        phase = f"{tot['clients_s']:.0f}" if any("clients_s" in r for r in rows) else "n/a"
        server = f"{tot['server_s']:.0f}" if any("server_s" in r for r in rows) else "n/a"
        out.append(f"| {run.name} | {sum(r['round'] > 0 for r in rows)} | {tot['wall_s']:.0f} | {phase} | "
                   f"{compute:.0f} / {slowest:.0f} | {server} | {central:.0f} | {tot['eval_s']:.0f} | {other} |")
    return out


def reproduce_line(root: str | Path = RESULTS) -> list[str]:
    """How long the last ``make reproduce`` took (``reproduce.json``): steps before the notebooks, then each notebook."""
    r = _load(Path(root) / "reproduce.json")
    if not r or r.get("size") != "full":
        return []
    steps = sum(x["seconds"] for x in r.get("steps", []))
    nbs = ", ".join(f"{n['name']} {n['seconds'] / 60:.1f}" for n in r["notebooks"])
    loads = ", ".join(f"{n['load_avg_15min']:.1f}" for n in r["notebooks"] if "load_avg_15min" in n)
    return ["", f"**The quick reproduction** (`{_where(Path(root) / 'reproduce.json')}`, profile `{r['profile']}`, "
            f"{r['cores']} cores): {r['wall_seconds'] / 60:.1f} min in all, of which {steps / 60:.1f} min corpus, "
            f"summary and seed checks and {sum(n['seconds'] for n in r['notebooks']) / 60:.1f} min of notebooks "
            f"(minutes: {nbs})" + (f"; 15-minute load average at each notebook's end {loads}" if loads else "")
            + "".join(f"; {', '.join(x['notebooks'])} rerun apart ({x['seconds'] / 60:.1f} min, its time above)"
                      for x in r.get("reruns", [])) + ".",
            *evidence_targets_line(root)]


# evidence runs over seeds that do not fit the quick reproduction: make target → the experiment it writes
EVIDENCE_TARGETS = {"efficiency-quality": "efficiency-quality", "quality-seeds": "quality",
                    "quality-headline": "quality-headline", "quality-wca": "quality-wca-hetero"}


def evidence_targets_line(root: str | Path = RESULTS) -> list[str]:
    """The evidence targets outside ``make reproduce``, each with its federated runs' summed wall time (``wall_s_total``
    of every run's ``summary.json``, as measured: the machine's load at the time is not recorded there)."""
    parts = []
    for target, experiment in EVIDENCE_TARGETS.items():
        walls = [w for f in sorted((Path(root) / experiment).glob("**/summary.json"))
                 if isinstance(w := (_load(f) or {}).get("wall_s_total"), (int, float))]
        seeds = (_load(Path(root) / experiment / "summary.json") or {}).get("seeds") or [0]
        if walls:
            parts.append(f"`make {target}` {len(walls)} runs over {len(seeds)} seed{'s' * (len(seeds) > 1)}, "
                         f"{sum(walls) / 60:.0f} min")
    return ["", "Evidence runs over seeds have their own targets and are not part of it (federated runs, their summed "
            "wall time on 2 cores): " + "; ".join(parts) + "."] if parts else []


def paper_model_line(root: str | Path = RESULTS) -> list[str]:
    """The 129M preset through Flower (`make paper-model`): rounds, loss, client peak RSS beside the benchmark's."""
    path = Path(root) / "paper-model" / "summary.json"
    s = _load(path)
    if not s:
        return []
    peak, bench = s["client_peak_rss_bytes"], s.get("bench_peak_rss_bytes")
    loss = s["loss"]
    return ["", f"**The paper's model through Flower** (`{_where(path)}`, `make paper-model`): the `{s['preset']}` "
            f"preset ({s['params'] / 1e6:.1f}M parameters, {s['head'].upper()} over {s['tokenizer']['size']} "
            f"{s['tokenizer']['kind']} pieces), {s['rounds']} FedSGD rounds on Flower's "
            f"{'Simulation Engine' if s['engine'] == 'flower-simulation' else s['engine']} with "
            f"{' '.join(s['stack'][1:])}: the sampled clients' mean loss per round "
            f"{' → '.join(f'{x:.1f}' for x in loss if x is not None)} (other clients each round; the last round's "
            f"{'below' if s.get('loss_falls') else 'not below'} the first's); each ClientApp process's peak RSS during "
            f"its round: max {peak['max'] / 2**20:.0f} MiB, median {peak['median'] / 2**20:.0f} MiB over {peak['n']} "
            "client rounds" + (f" (median {s['client_start_rss_bytes_median'] / 2**20:.0f} MiB already held when the "
                               "round began: the process keeps its runtime between rounds)"
                               if s.get("client_start_rss_bytes_median") else "")
            + (f"; the benchmark's fresh process for the same stack (`{s['bench_row']}`, with its "
                               "own utterances and vocabulary: `configs/efficiency/paper.toml`): "
                               f"{bench / 2**20:.0f} MiB (ratio {peak['max'] / bench:.2f})."
                               if bench and peak.get("max") else ".")]


def wca_hetero_line(root: str | Path = RESULTS) -> list[str]:
    """WCA where clients differ in how well they correct (`make quality-wca`, dev splits only): each WCA row against
    the filtering row, per metric, as the relative change of the mean over seeds with its paired 95% interval."""
    path = Path(root) / "quality-wca-hetero" / "evidence.json"
    e = _load(path)
    if not e:
        return []
    kappa = ((_load(path.parent / "config.json") or {}).get("config", {}).get("corrections", {}) or {}).get(
        "wrong-concentration")
    names = {"wer_user": "user WER", "wer_new_terms": "new-terms WER", "wer_proxy": "proxy WER"}
    rel = lambda v: "undefined" if v is None else f"{100 * v:+.1f}%"  # noqa: E731
    parts = [f"`{c['b']}` {names[c['metric']]} {rel(c['delta_rel']['mean'])} [{rel(c['delta_rel']['ci95'][0])}, "
             f"{rel(c['delta_rel']['ci95'][1])}] ({c['verdict']})"
             for c in e["comparisons"] if c["a"] == "filtering" and c["metric"] in names]
    return ["", f"**WCA when clients differ in correction quality** (`{_where(path)}`, `make quality-wca`; each "
            f"client's wrong-correction rate drawn with concentration κ {kappa}, the headline's other settings; dev "
            f"splits only, mean over seeds {', '.join(map(str, e['seeds']))}), against example weights (`filtering`): "
            + "; ".join(parts) + "."] if parts else []


def clientapp_memory_line(root: str | Path = RESULTS) -> list[str]:
    """`bench/clientapp_memory.py`: one ClientApp process's round peaks at 129M under each glibc malloc setting."""
    path = Path(root) / "bench" / "clientapp_memory.json"
    b = _load(path)
    if not b:
        return []
    parts = [f"`{name}` round 1 {s['round_1_peak_mib']:.0f} MiB, later rounds at most "
             f"{s['later_peak_mib_max']:.0f} MiB"
             for name, s in b["settings"].items() if s.get("later_peak_mib_max") is not None]
    return ["", f"**Where a ClientApp's memory goes** (`{_where(path)}`, `bench/clientapp_memory.py`, `make bench`): "
            f"the paper-model profile's ClientApp handler outside Ray, {b['rounds']} rounds of different clients in one "
            "fresh process per glibc malloc setting (round 1 also builds the task and the model): "
            + "; ".join(parts) + "."]


def results_markdown(root: str | Path = RESULTS) -> str:
    """Every table above, in the README's order, with the synthetic-speech footnote."""
    lines = ["", *seed_table(root), *step_table(root), *federated_table(root), *efficiency_table(root),
             *paper_model_line(root), *clientapp_memory_line(root), *quality_cost_table(root), *quality_table(root),
             *headline_table(root), *wca_hetero_line(root),
             *reproduce_line(root), "",
             footnote(root)]
    return "\n".join(lines)
