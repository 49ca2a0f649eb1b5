"""Worked examples for the notebooks: each method on one small example, before its experiment (issue 17).

Each function runs in seconds on a CPU, needs no corpus and cites the paper section it teaches: FedSGD vs
FedAvg (notebook 02); 4-bit OMC of one weight, one micro-batch with and without checkpointing (03); the
correction filter and one round's WCA weights (04). `markdown_table` shows the rows they return.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rapidfuzz.distance import Levenshtein
from torch import nn

from fedasr import compression, efficiency, memory, omc, refinement
from fedasr.data import normalize_text
from fedasr.federated import aggregation, toy
from fedasr.federated.client_update import fedavg_client_update, fedsgd_client_update
from fedasr.federated.config import FedConfig
from fedasr.model import build_model, model_config

__all__ = ["FILTER_PAIRS", "WCA_CLIENTS", "WCA_LOSSES", "checkpointing_memory", "fedsgd_vs_fedavg", "filter_pairs",
           "markdown_table", "omc_weight", "wca_round"]

MiB = 1 << 20


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> list[str]:
    """Return ``rows`` as markdown table lines (floats to 3 significant digits)."""
    columns = list(columns or rows[0])
    cell = lambda v: (f"{v:.3g}" if isinstance(v, float) else str(v)).replace("|", "\\|")
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]


def fedsgd_vs_fedavg(clients: Sequence[str] = ("toy0000", "toy0001"), micro_batch: int = 4,
                     local_epochs: int = 3, client_lr: float = 0.05, server_lr: float = 1.0, seed: int = 0) -> dict:
    """One round of FedSGD and one of FedAvg from the same global weights, on the toy task (paper §2.3).

    Clients send FedSGD's gradient ``g_i`` at ``w_t`` / FedAvg's delta ``Δ_i`` after local SGD steps; the server
    averages with ``a_i = n_i`` and steps once: ``w_t − η·Ḡ`` / ``w_t + Δ̄``. Returns per client ``clients``
    (cos(Δ, −g) and ‖Δ‖ / (lr·steps·‖g‖) are both 1 when the local steps only repeat the first gradient step), the
    first client's output-layer ``bias`` g and Δ, and held-out loss and accuracy (``eval``) per weights."""
    task = toy.ToyTask(toy.ToyConfig(seed=seed))
    model = task.build_model()
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = FedConfig(strategy="fedavg", micro_batch=micro_batch, local_epochs=local_epochs, client_lr=client_lr)
    grads, deltas, rows = [], [], []
    for cid in clients:
        batches = task.client_batches(cid, micro_batch, seed)
        g = fedsgd_client_update(model, w0, batches, cid)
        d = fedavg_client_update(model, w0, batches, cfg, cid)
        (fg, fd), steps = (torch.cat([a.flatten() for a in u.arrays.values()]) for u in (g, d)), d.metrics["steps"]
        rows.append({"client": cid, "n": g.num_examples, "loss at w_t": g.metrics["loss"], "‖g‖": float(fg.norm()),
                     "local steps": int(steps), "‖Δ‖": float(fd.norm()),
                     "cos(Δ, −g)": float(-(fg @ fd) / (fg.norm() * fd.norm())),
                     "‖Δ‖ / (lr·steps·‖g‖)": float(fd.norm() / (client_lr * steps * fg.norm()))})
        grads, deltas = grads + [g], deltas + [d]
    names = list(grads[0].arrays)
    model.load_state_dict(w0)
    evals = {"w_t (global)": task.evaluate(model)}
    for label, updates, sign, lr in (("FedSGD step", grads, 1.0, server_lr), ("FedAvg step", deltas, -1.0, 1.0)):
        mean = aggregation.aggregate(updates)  # a_i = n_i
        weights = {k: v.clone() for k, v in w0.items()}
        opt = aggregation.ServerOptimizer(weights, names, dataclasses.replace(cfg, server_lr=lr))
        opt.step(weights, {k: sign * v for k, v in mean.items()})
        model.load_state_dict(weights)
        evals[label] = task.evaluate(model)
    bias = max(n for n in names if n.endswith("bias"))  # the output layer's
    g, d, lr_steps = grads[0].arrays[bias], deltas[0].arrays[bias], client_lr * deltas[0].metrics["steps"]
    return {"clients": rows, "weights": [u.num_examples for u in grads], "bias_name": bias,
            "bias": [{"class": c, "g": float(g[c]), "Δ": float(d[c]), "−Δ / (lr·steps)": float(-d[c] / lr_steps)}
                     for c in range(g.numel())], "eval": [{"weights": k, **v} for k, v in evals.items()]}


def omc_weight(bits: int = 4, shape: tuple[int, int] = (4, 8), seed: int = 0, cols: int = 3) -> dict[str, Any]:
    """One ``nn.Linear`` weight stored with Online Model Compression, per variable and per channel (paper §2.4.1).

    Row ``r`` is scaled by ``2^-r`` (output channels differ in magnitude). ``Ŵ`` (``state_dict()``) is what the
    model computes with; round to nearest gives ``abs(W − Ŵ) ≤ step / 2``. Returns a few ``values``, per-row
    steps and errors (``rows``) and per grid the max error in steps and the weight's stored bytes (``summary``)."""
    torch.manual_seed(seed)
    w = nn.Linear(shape[1], shape[0]).weight.detach() * 0.5 ** torch.arange(shape[0]).unsqueeze(1)
    idx = [(r, c) for r in (0, shape[0] - 1) for c in range(cols)]
    values = [{"element": f"W[{r},{c}]", "W": float(w[r, c])} for r, c in idx]
    rows, summary = [{"row": r, "max abs W": float(w[r].abs().max())} for r in range(shape[0])], []
    for transform in ("per_variable", "per_channel"):
        lin = nn.Linear(shape[1], shape[0])
        lin.weight.data.copy_(w)
        omc.apply_omc(lin, omc.OMCConfig(bits=bits, transform=transform))
        w_hat = lin.state_dict()["weight"]
        step = lin.weight_omc_scale.reshape(-1, 1).expand(shape[0], 1)  # (C, 1): each row's grid step
        err = (w - w_hat).abs()
        for v, (r, c) in zip(values, idx):
            v[f"Ŵ {transform}"] = float(w_hat[r, c])
        for r, row in enumerate(rows):
            row.update({f"step {transform}": float(step[r]), f"max error {transform}": float(err[r].max())})
        summary.append({"grid": transform, "bits": bits, "max error / step": float((err / step).max()),
                        "stored bytes": omc.storage_bytes(lin)["quantized"], "fp32 bytes": w.numel() * 4})
    return {"values": values, "rows": rows, "summary": summary}


def checkpointing_memory(preset: str = "tiny", seconds: float = 8.0, tokens: int = 40, seed: int = 0,
                         measure: bool = True) -> list[dict[str, Any]]:
    """One FedSGD micro-batch (one utterance) with and without gradient checkpointing (paper §2.3).

    Analytic: `fedasr.memory.estimate`; measured (``measure``): the peak of `fedasr.efficiency.client_round`
    (rows ``+small_batch`` / ``+checkpointing``) in a fresh process (`fedasr.memory.measure_peak`, ~5 s each),
    with the library code pages it first touched (part of the peak, not of the round's tensors)."""
    cfg = efficiency.EfficiencyConfig(preset=preset, utterances=1, seconds=seconds, tokens=tokens, seed=seed,
                                      small_batch=1, rows=("+small_batch", "+checkpointing"), timing_repeats=0)
    common = {**{k: getattr(cfg, k) for k in ("preset", "utterances", "seconds", "tokens", "seed", "client_lr")},
              "partial": dataclasses.asdict(cfg.partial)}  # what efficiency.run hands client_round
    shape = memory.RoundShape(batch=1, frames=round(seconds * 100), tokens=tokens, micro_batches=1)
    n_blocks, out = model_config(preset).num_layers, []
    with tempfile.TemporaryDirectory() as tmp:
        payload_path = Path(tmp) / "download.pt"
        if measure:  # the global model as the client receives it (fp32, no codec)
            torch.manual_seed(seed)
            torch.save(compression.compress(build_model(preset).state_dict(), "none"), payload_path)
        for row in efficiency.row_settings(cfg):
            with torch.device("meta"):  # shapes only: the estimate needs no memory
                skel = build_model(model_config(preset, checkpoint_blocks=range(n_blocks) if row["checkpoint"] else ()))
            est = memory.estimate(skel, shape)
            r = {"checkpointing": row["checkpoint"], "weights MiB": est["weights"] / MiB,
                 "blocks' saved activations MiB": est["activations_detail"]["blocks"] / MiB,
                 "all saved activations MiB": est["activations"] / MiB,
                 "largest transient MiB": est["transient"] / MiB, "analytic peak MiB": est["peak"] / MiB}
            if measure:
                m = memory.measure_peak("fedasr.efficiency:client_round",
                                        {"row": row, "common": common, "payload_path": str(payload_path)}, timeout=300)
                r.update({"measured peak MiB": m["peak_rss_bytes"] / MiB,
                          "of which library code MiB": m["rss_file_growth_bytes"] / MiB})
            out.append(r)
    return out


# (what it is, hypothesis the phone showed, correction the user typed, audio seconds)
FILTER_PAIRS = (
    ("a misrecognised name, fixed", "text marry i'm running late", "Text Mairi, I'm running late", 2.0),
    ("a rewrite, not a fix", "text marry i'm running late", "what's the weather in Tobermory tomorrow", 2.0),
    ("casing and punctuation only", "text marry i'm running late", "Text Marry, I'm running late!", 2.0),
    ("more words than the audio holds", "call mum", "call mum and tell her that I will be home late", 1.0),
)


def filter_pairs(cfg: refinement.FilterConfig | None = None,
                 pairs: Sequence[tuple[str, str, str, float]] = FILTER_PAIRS) -> list[dict[str, Any]]:
    """The on-device filter's verdict (`refinement.check_correction`, paper §2.5) on hand-made pairs, beside what
    its rules test on normalized text: words/s, ``|c| / |h|`` and the character edit ``ED(h, c) / max(|h|, |c|)``."""
    rows = []
    for what, hyp, corr, seconds in pairs:
        h, c = normalize_text(hyp), normalize_text(corr)
        verdict, label = refinement.check_correction(hyp, corr, seconds, cfg)
        rows.append({"what": what, "hypothesis": hyp, "correction": corr, "words/s": len(c.split()) / seconds,
                     "length ratio": len(c) / len(h), "char edit": Levenshtein.distance(h, c) / max(len(h), len(c)),
                     "verdict": verdict, "label": label})
    return rows


# one round's three selected clients: (hypothesis, correction) pairs of the utterances their users corrected
WCA_CLIENTS = {
    "A (fixes a common word)": [("what's the whether today", "what's the weather today")] * 4,
    "B (fixes its own names)": [("text marry i'm late", "text Mairi I'm late"),
                                ("directions to toby murray", "directions to Tobermory")],
    "C (a mix)": [("will it rain what's the whether", "will it rain what's the weather"),
                  ("set an alarm for seven", "set an alarm for eleven"),
                  ("call and rew", "call Andrew")],
}
WCA_LOSSES = {"A (fixes a common word)": 0.8, "B (fixes its own names)": 2.0, "C (a mix)": 1.2}  # mean loss at w_t


def wca_round(cfg: refinement.FilterConfig | None = None, clients: Mapping[str, Sequence[tuple[str, str]]] =
              WCA_CLIENTS, losses: Mapping[str, float] = WCA_LOSSES, buckets: int = 1024) -> list[dict[str, Any]]:
    """The aggregation weights of one round's clients under "examples", "frequency" and "loss" (paper §2.5).

    Corrections take the device's path: the filter ``cfg`` and label store (`refinement.label_store_lines`),
    the statistics the client uploads (`refinement.client_round_stats`); the server computes
    `refinement.wca_weights` from those alone. Shares sum to 1 per method; ``s_i``: mean IDF of its corrected words.
    """
    records = [{"id": f"{i}-{j}", "client": i, "duration": 2.0, "hypothesis": h, "correction": c}
               for i, pairs in clients.items() for j, (h, c) in enumerate(pairs)]
    lines, names = refinement.label_store_lines(records, "filtered", cfg), list(clients)
    stats = [refinement.client_round_stats(lines, i, buckets) for i in names]
    loss = [losses[i] for i in names]
    a = {m: refinement.wca_weights(stats, m, losses=loss) for m in ("examples", "frequency", "loss")}
    rows = []
    for k, (i, s) in enumerate(zip(names, stats)):
        words = sorted({w for x in lines if x["client"] == i and x["label"]
                        for w in refinement.corrected_words(x["hypothesis"], x["label"])})
        rows.append({"client": i, "kept n_i": s.kept, "corrected words": ", ".join(words),
                     "s_i": a["frequency"][k] / s.kept, "loss L_i": losses[i],
                     **{f"{m} share": w[k] / sum(w) for m, w in a.items()}})
    return rows
