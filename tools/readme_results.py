"""Rewrite README.md's results block from the JSON under results/ (so every number there comes from a run).

Run `make readme-results` after `make reproduce`; the block sits between the two markers below.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(rel: str):
    path = ROOT / rel
    return json.loads(path.read_text()) if path.exists() else None


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def seed_table() -> list[str]:
    runs = {p: _load(f"results/{d}/summary.json") for p, d in (("quick", "seed"), ("full", "seed-full"))}
    runs = {p: s for p, s in runs.items() if s}
    if not runs:
        return ["*No seed run yet (`make seed`).*"]
    out = []
    for profile, s in runs.items():
        folder = "seed" if profile == "quick" else "seed-full"
        out += [""] if out else []
        out.append(f"**Seed model, {profile} profile** (`results/{folder}/summary.json`): `{s['preset']}` preset, "
                   f"{s['head'].upper()} over {s['units']} units, {s['params'] / 1e6:.2f}M parameters, "
                   f"{s['train_seconds'] / 60:.0f} CPU-minutes on {s['workers']} processes ({s['steps']} steps) on "
                   f"`{s['corpus']}`, proxy domain only.")
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


def federated_table() -> list[str]:
    s = _load("results/federated/summary.json")
    if not s:
        return []
    out = ["", "**Federated training from the seed, labels = the seed's own hypotheses** "
           "(`results/federated/`, notebook 02; server-side evaluation on the first 300 utterances of each test set):", "",
           "| variant | rounds | user WER (start → end) | user CER | proxy WER | MiB down+up | failed clients |",
           "|---|---|---|---|---|---|---|"]
    for r in s["variants"]:
        i, f = r["initial"] or {}, r["final"] or {}
        out.append(f"| {r['variant']} | {r['rounds']} | {_pct(i.get('wer_user'))} → {_pct(f.get('wer_user'))} | "
                   f"{_pct(i.get('cer_user'))} → {_pct(f.get('cer_user'))} | {_pct(i.get('wer_proxy'))} → "
                   f"{_pct(f.get('wer_proxy'))} | {(r['bytes_down'] + r['bytes_up']) / 2**20:.0f} | {r['clients_failed']} |")
    return out


def efficiency_table() -> list[str]:
    rows, s = _load("results/efficiency/memory.json"), _load("results/efficiency/summary.json")
    if not rows:
        return []
    mib = 2**20
    out = ["", f"**Device budget of one client round, `{rows[0]['preset']}` preset ({rows[0]['params'] / 1e6:.1f}M "
           "parameters), each row adds one technique** (`results/efficiency/`, notebook 03; peak = VmHWM of a fresh "
           "process minus its baseline):", "",
           "| stack | measured peak MiB | analytic MiB | download MiB | upload MiB | step s |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['stack']} | {r['peak_rss_bytes'] / mib:.0f} | {r['analytic']['peak'] / mib:.0f} | "
                   f"{r['download_bytes'] / mib:.1f} | {r['upload_bytes'] / mib:.1f} | {r['step_seconds']:.1f} |")
    if s:
        met = s.get("met", {})
        p2 = s.get("P2", {})
        q = p2.get("quality") or {}
        p2_text = (f"P2 transport ratio {p2.get('transport_ratio') or float('nan'):.3f} for the `{p2.get('row')}` row "
                   f"(≤ 0.10) with user WER {100 * q['wer_user_rel']:+.1f}% vs uncompressed in real FL at small scale "
                   f"(`{q['variant']}`; limit +3%)" if q else "P2 quality not measured")
        out += ["", f"P1 peak ratio {s['P1_peak_ratio']:.3f} (target ≤ 0.20: {'met' if met.get('P1') else 'not met'}); "
                f"{p2_text}: {'met' if met.get('P2') else 'not met'}; the full stack with partial training sends "
                f"{s['P2_transport_ratio']:.3f}; P3 step-time ratio {s['P3_step_time_ratio']:.2f} (≤ 1.3: "
                f"{'met' if met.get('P3') else 'not met'})."]
    return out


def quality_cost_table() -> list[str]:
    s = _load("results/efficiency-quality/summary.json")
    if not s:
        return []
    out = ["", "**Quality cost of the device-budget methods at small scale** (`results/efficiency-quality/`, notebook 03; "
           "FedSGD, every row with the same oracle labels, server evaluation on the first 300 utterances):", "",
           "| variant | rounds | user WER (start → end) | vs uncompressed | proxy WER (end) | MiB down | MiB up | "
           "bytes vs fp32 |", "|---|---|---|---|---|---|---|---|"]
    rel = {r["variant"]: r for r in s.get("relative", [])}
    for r in s["variants"]:
        i, f, x = r["initial"] or {}, r["final"] or {}, rel.get(r["variant"], {})
        vs = f"{100 * x['wer_user_rel']:+.1f}%" if x else ""
        ratio = f"{x['transport_ratio']:.3f}" if x else ""
        out.append(f"| {r['variant']} | {r['rounds']} | {_pct(i.get('wer_user'))} → {_pct(f.get('wer_user'))} | {vs} | "
                   f"{_pct(f.get('wer_proxy'))} | {r['bytes_down'] / 2**20:.0f} | {r['bytes_up'] / 2**20:.0f} | {ratio} |")
    return out


def quality_table() -> list[str]:
    rows, s = _load("results/quality/wer.json"), _load("results/quality/summary.json")
    if not rows:
        return []
    out = ["", "**Quality from simulated user corrections** (`results/quality/wer.json`, notebook 04; same seed, "
           "rounds, clients per round and simulated users in every row):", "",
           "| variant | rounds | user WER (unseen users) | new-terms WER (seen users) | proxy WER |",
           "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['variant']} | {r['rounds']} | {_pct(r['wer_user'])} | {_pct(r['wer_new_terms'])} | "
                   f"{_pct(r['wer_proxy'])} |")
    if s:
        c, f = s["corrections"], s["filter"]
        out += ["", f"Simulated users corrected {c['corrected']} of {c['utterances']} utterances on "
                f"{c['clients_with_corrections']} clients; {_pct(c.get('incorrect_rate'))} of corrections were not the "
                f"reference. On-device filtering removed {_pct(f.get('wrong_removed'))} of wrong corrections and "
                f"{_pct(f.get('incorrect_removed'))} of all incorrect ones, keeping {_pct(f.get('correct_kept'))} of the "
                "right ones."]
    return out


def step_table() -> list[str]:
    rows = _load("results/bench/asr_step.json")
    if not rows:
        return []
    r0 = rows[0]
    out = ["", f"**One training step, fwd+bwd** (`results/bench/asr_step.json`, `bench/asr_step.py`; batch "
           f"{r0['batch_size']} × {r0['audio_seconds']:g} s, {r0['target_tokens']} tokens, 1 torch thread; FLOP rate = "
           "counted matmul/conv FLOPs per second ÷ a 1024² fp32 matmul's rate measured in the same process; "
           "target for `paper` ≥ 0.6):", "",
           "| preset | parameters | step s | peak RSS GiB | GFLOP/step | FLOP-rate ratio | load (1 min) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['preset']} | {r['params'] / 1e6:.1f}M | {r['step_seconds']:.2f} | "
                   f"{r['peak_rss_bytes'] / 2**30:.2f} | {r['flops_per_step'] / 1e9:.0f} | {r['flop_rate_ratio']:.2f} | "
                   f"{r.get('loadavg_1min', float('nan')):.2f} |")
    return out


def main() -> None:
    block = [START, "", *seed_table(), *step_table(), *federated_table(), *efficiency_table(), *quality_cost_table(), *quality_table(), "",
             "All training speech is synthetic (TTS); WER is greedy decoding without a language model, so a "
             "character model's word errors stay high where its CER is moderate.", END]
    readme = (ROOT / "README.md").read_text()
    a, b = readme.index(START), readme.index(END) + len(END)
    (ROOT / "README.md").write_text(readme[:a] + "\n".join(block) + readme[b:])
    print("README.md results block rewritten")


if __name__ == "__main__":
    main()
