"""Figures and views of the corpus for notebook 00_data (the rows come from `fedasr.corpus_stats`).

One function per figure; each writes a PNG (the notebook passes ``<results_root>/figures/...``), closes the
figure and returns the PNG's path, so a notebook shows exactly the file it wrote. `markdown_table` and
`audio_table` are the text and HTML views the notebook displays.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: notebooks under papermill and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from fedasr.data import DOMAINS, SAMPLE_RATE, SPLITS, Utterance, load_audio  # noqa: E402

__all__ = ["client_sizes", "durations", "log_mel_spectrograms", "markdown_table", "audio_table"]

_SPLIT_COLOURS = {"train": "#4477aa", "heldout": "#66ccee", "test": "#ee6677"}


def _save(fig, out: str | Path, dpi: int = 110) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return out


def client_sizes(rows: Sequence[dict], out: str | Path, title: str = "Utterances per client") -> Path:
    """Clients ranked by size, bars stacked by user split (left), and how many clients have each size (right).

    Args:
        rows: `fedasr.corpus_stats.client_sizes` rows (largest first), with ``train``/``heldout``/``test`` counts.
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"width_ratios": [2, 1]}, layout="constrained")
    rank = np.arange(1, len(rows) + 1)
    bottom = np.zeros(len(rows))
    for part, colour in _SPLIT_COLOURS.items():
        n = np.array([r[part] for r in rows], dtype=float)
        a.bar(rank, n, bottom=bottom, width=1.0, color=colour, label=f"user_{part}")
        bottom += n
    a.axhline(float(np.median(bottom)), color="k", ls="--", lw=1, label="median client")
    a.set(xlabel="client rank (largest first)", ylabel="utterances", title=f"{title}: the long tail")
    a.legend(fontsize=8)
    lo, hi = int(bottom.min()), int(bottom.max())
    b.hist(bottom, bins=np.arange(lo, hi + 2) - 0.5 if hi - lo < 40 else 25, color="#888888")
    b.set(xlabel="utterances per client", ylabel="clients", title="size distribution")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    return _save(fig, out)


def durations(corpus: Mapping[str, Sequence[Utterance]], out: str | Path, bins: int = 30) -> Path:
    """Histogram of utterance durations, one panel per domain, one step line per split (share of the split's
    utterances, so splits of very different sizes compare)."""
    present = [d for d in DOMAINS if any(corpus.get(s) for s in SPLITS if s.startswith(d))]
    fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3.2), sharey=True, squeeze=False,
                             layout="constrained")
    top = max(u.duration for us in corpus.values() for u in us)
    edges = np.linspace(0, top, bins + 1)
    for ax, domain in zip(axes[0], present):
        for split in (s for s in SPLITS if s.startswith(domain) and corpus.get(s)):
            d = np.array([u.duration for u in corpus[split]])
            ax.hist(d, bins=edges, weights=np.full(d.size, 1 / d.size), histtype="step", lw=1.5,
                    label=f"{split} ({d.size})")
        ax.set(xlabel="seconds", title=f"{domain} domain")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of the split's utterances")
    return _save(fig, out)


def log_mel_spectrograms(examples: Sequence[Mapping], feats: Sequence[np.ndarray], out: str | Path,
                         hop_ms: float = 10.0, ncols: int = 2) -> Path:
    """Log-mel spectrograms side by side on one colour scale, so noise floors and band-limits compare.

    Args:
        examples: `fedasr.corpus_stats.pick_examples` rows (their domain, condition, voice and channel title
            each panel).
        feats: the examples' log-mel features ``(T, F)``, from `fedasr.corpus_stats.log_mel`.
        hop_ms: frame shift of the features, for the time axis.
    """
    nrows = -(-len(feats) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 2.3 * nrows), squeeze=False, layout="constrained")
    lo = min(float(np.percentile(f, 1)) for f in feats)
    hi = max(float(f.max()) for f in feats)
    for ax, e, f in zip(axes.flat, examples, feats):
        im = ax.imshow(f.T, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma",
                       extent=(0, f.shape[0] * hop_ms / 1000, 0, f.shape[1]))
        ax.set_title(f"{e['domain']} · {e['condition']} · {e['voice']}\n{e['channel']}", fontsize=9)
        ax.set(xlabel="seconds", ylabel="mel channel")
    for ax in list(axes.flat)[len(feats):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8, label="log mel power")
    return _save(fig, out, dpi=80)  # noise-like images compress poorly: keep the notebook light


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(" ".join(map(str, x)) if isinstance(x, tuple) else str(x) for x in v)
    return "" if v is None else str(v)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None, caption: str | None = None) -> str:
    """Rows (dicts) as a markdown table of ``columns`` (default: the first row's keys); lists are comma-joined."""
    if not rows:
        return f"{caption}\n\n(none)" if caption else "(none)"
    columns = list(columns or rows[0].keys())
    lines = ([caption, ""] if caption else []) + ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)).replace("|", "/") for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _audio_tag(u: Utterance) -> str:
    """An HTML5 player with the utterance embedded as 16-bit WAV. ``<audio src>`` rather than IPython's ``<source
    src>``: JupyterLab's sanitizer keeps the former in an untrusted (e.g. papermill-executed) notebook."""
    buf = io.BytesIO()
    sf.write(buf, load_audio(u), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return f'<audio controls src="data:audio/wav;base64,{base64.b64encode(buf.getvalue()).decode()}"></audio>'


def audio_table(examples: Sequence[Mapping], columns: Sequence[str] = ("domain", "condition", "voice", "client",
                                                                     "channel", "text")) -> str:
    """An HTML table of `fedasr.corpus_stats.pick_examples` rows, each with a player of its utterance."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (*columns, "audio"))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(e.get(c)))}</td>" for c in columns)
                   + f"<td>{_audio_tag(e['utterance'])}</td></tr>" for e in examples)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
