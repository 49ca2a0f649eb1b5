"""One function per figure; each reads results (dicts / rows) and writes a PNG under ``results/figures``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: notebooks under papermill and CI have no display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["seed_training_curves", "wer_by_test_set", "federated_curves", "quality_table", "efficiency_memory"]


def _save(fig, out: str | Path | None) -> None:
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120, bbox_inches="tight")


def seed_training_curves(rounds: Sequence[dict], out: str | Path | None = None, title: str = "Seed model"):
    """Training loss per token and proxy-dev WER against training minutes (rows of ``rounds.jsonl``)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    t = [r["train_seconds"] / 60 for r in rounds]
    a.plot(t, [r["loss_per_token"] for r in rounds])
    a.set(xlabel="training minutes", ylabel="CTC/RNN-T loss per token", title=f"{title}: training loss")
    ev = [r for r in rounds if r.get("dev_wer") is not None]
    b.plot([r["train_seconds"] / 60 for r in ev], [100 * r["dev_wer"] for r in ev], "o-", label="WER")
    b.plot([r["train_seconds"] / 60 for r in ev], [100 * r["dev_cer"] for r in ev], "s--", label="CER")
    b.set(xlabel="training minutes", ylabel="% on proxy_dev slice", title=f"{title}: dev error (greedy)")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    _save(fig, out)
    return fig


def wer_by_test_set(summary: dict, out: str | Path | None = None, title: str = "Seed model WER by test set"):
    """Bar chart of ``summary["wer"]`` (fractions) — the domain gap FL must later close."""
    names = [k for k, v in summary["wer"].items() if v is not None]
    vals = [100 * summary["wer"][k] for k in names]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar(names, vals, color=["#4477aa", "#ee6677", "#aa3377", "#228833", "#bbbbbb"][: len(names)])
    ax.bar_label(bars, fmt="%.1f")
    ax.set(ylabel="WER %", title=title)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out)
    return fig


def federated_curves(runs: dict[str, Sequence[dict]], metrics: Sequence[str] = ("wer_user", "wer_proxy"),
                     out: str | Path | None = None, title: str = "Federated training"):
    """Server-side eval metrics and cumulative bytes against rounds, one line per run (``rounds.jsonl`` rows)."""
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4.2 * (len(metrics) + 1), 3.5))
    for name, rows in runs.items():
        ev = [r for r in rows if r.get("eval")]
        for ax, m in zip(axes, metrics):
            pts = [(r["round"], 100 * r["eval"][m]) for r in ev if r["eval"].get(m) is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", label=name)
        up, cum = [], 0
        for r in rows:
            if r.get("round", 0) > 0:
                cum += r.get("bytes_down", 0) + r.get("bytes_up", 0)
                up.append((r["round"], cum / 2**20))
        if up:
            axes[-1].plot(*zip(*up), label=name)
    for ax, m in zip(axes, metrics):
        ax.set(xlabel="round", ylabel=f"{m} %", title=f"{title}: {m}")
    axes[-1].set(xlabel="round", ylabel="MiB (down + up, all clients)", title="transport")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a metric no run evaluated has no lines to name
            ax.legend(fontsize=8)
    _save(fig, out)
    return fig


def quality_table(rows: Sequence[dict], out: str | Path | None = None,
                  title: str = "User corrections: WER by variant"):
    """Grouped bars of ``results/quality/wer.json`` rows (user, new terms, proxy)."""
    import numpy as np

    cols = [("wer_user", "user (unseen users)"), ("wer_new_terms", "new terms (seen users)"), ("wer_proxy", "proxy")]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.8))
    for i, (key, label) in enumerate(cols):
        vals = [100 * r[key] if r.get(key) is not None else 0 for r in rows]
        bars = ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(x, [r["variant"] for r in rows], rotation=20)
    ax.set(ylabel="WER %", title=title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out)
    return fig


def efficiency_memory(rows: Sequence[dict], out: str | Path | None = None):
    """Stacked analytic breakdown per row of ``results/efficiency/memory.json``, measured peak as a marker (MiB)."""
    mib = 2**20
    parts = ("weights", "gradients", "optimizer", "weight_copy", "activations", "transient")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = range(len(rows))
    bottom = [0.0] * len(rows)
    for p in parts:
        vals = [r["analytic"].get(p, 0) / mib for r in rows]
        ax.bar(x, vals, bottom=bottom, label=p)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.plot(x, [r["peak_rss_bytes"] / mib for r in rows], "k_", markersize=28, markeredgewidth=2.5,
            label="measured peak (VmHWM − baseline)")
    ax.plot(x, [r["analytic"]["peak"] / mib for r in rows], "rx", label="analytic peak (largest phase)")
    ax.set_xticks(list(x), [r["stack"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel("MiB (bars: every part; not all alive at once)")
    ax.set_title(f"One client round, {rows[0]['preset']} preset ({rows[0]['params'] / 1e6:.0f}M params)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out)
    return fig
