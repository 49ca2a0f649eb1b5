"""WER against ε at the quick profile (issue 21): run configs/privacy/dp.toml, write results/reliability/parts/dp.json.

Each row comes from a finished run's ``rounds.jsonl`` (`fedasr.federated.privacy.dp_result_row`); the paper-scale
plan (the cohort and noise multiplier for ε ≤ 10 under the stated assumptions, `privacy.plan_paper_scale`) is
written beside it as ``dp_plan.json``, and a figure of WER against ε as ``dp.png``.

    python tools/dp_quick.py                 # run every variant (about 2-4 minutes each on 2 cores), then write
    python tools/dp_quick.py --summarize-only   # rewrite the JSON and figure from the runs on disk
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedasr import config, experiments, results  # noqa: E402
from fedasr.federated import privacy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/privacy/dp.toml")
    ap.add_argument("--out", default="results/reliability/parts")
    ap.add_argument("--summarize-only", action="store_true", help="do not run; read the runs on disk")
    args = ap.parse_args(argv)
    exp = config.load(experiments.FederatedExperiment, args.config)
    if not args.summarize_only:
        experiments.run_federated_experiment(exp)
    out = Path(args.out)
    rows = []
    for name in exp.variants:
        run = results.RunDir(Path(exp.results_root) / exp.experiment / name)
        row = privacy.dp_result_row(run.rounds(), name)
        row.update(configured_rounds=exp.fed.num_rounds, clients_per_round=exp.fed.clients_per_round,
                   run=results.relative_to_repo(str(run.path)))
        rows.append(row)
    results.write_json(out / "dp.json", rows)
    results.write_json(out / "dp_plan.json", privacy.plan_paper_scale())
    _figure(rows, out / "dp.png")
    for r in rows:
        eps = "∞ (no DP)" if r["epsilon"] is None else f"{r['epsilon']:.3g}"
        print(f"{r['variant']:10s} ε {eps:>12s}  wer_user {r['wer_user']:.3f}  ({r['rounds']} rounds)")
    return 0


def _figure(rows: list[dict], path: Path) -> None:
    """WER (user) against ε; runs without a finite ε (DP off, clipping only) as a horizontal reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    finite = [r for r in rows if r["epsilon"] is not None and math.isfinite(r["epsilon"])]
    if finite:
        ax.plot([r["epsilon"] for r in finite], [r["wer_user"] for r in finite], "o-", label="DP-FedSGD")
        for r in finite:
            ax.annotate(f"z={r['noise_multiplier']:g}", (r["epsilon"], r["wer_user"]), fontsize=7)
        ax.set_xscale("log")
    for r in rows:
        if r not in finite and r["wer_user"] is not None:
            ax.axhline(r["wer_user"], ls="--", lw=0.8, color="gray")
            ax.text(ax.get_xlim()[0], r["wer_user"], f" {r['variant']}", fontsize=7, va="bottom")
    ax.set_xlabel("ε (δ = 1/population)")
    ax.set_ylabel("user WER")
    ax.set_title("quick profile: WER against ε", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
