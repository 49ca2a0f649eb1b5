"""Device budget of one client round, technique by technique (paper §2.3–2.4; DESIGN.md E1–E3).

Each row adds one technique to the row above and runs exactly one client round of the ``paper``
preset (129M Conformer RNN-T) in a fresh process (`fedasr.memory.measure_peak` of `client_round`):

    fedavg_adam             plain FedAvg: local Adam, batch 4, one local step, fp32 both ways
    fedsgd                  FedSGD (§2.3): one gradient at the global weights, no client optimizer state
    +small_batch            micro-batches of 1 utterance (the gradient is still over all 4)
    +checkpointing          every Conformer block recomputed in backward
    +transport_compression  (§2.3) ``transport.download`` fp16, ``transport.upload`` with stochastic rounding
                            + zlib (int8 by default; int4 in configs/efficiency/paper.toml)
    +omc                    (§2.4.1) weights stored quantized (``omc``: 8-bit per variable by default, 4-bit
                            per channel in paper.toml), downloaded in that format, dequantized on use
    +grad_stream            (issue 22) no whole-model fp32 gradient: each variable's gradient folded into an
                            8-bit stochastic-rounding accumulator as backward makes it (``grad_stream``)
    +partial                (§2.4.2) ``partial``: the largest top-k block set whose analytic peak fits the
                            client's budget (``partial.budget-mib``)

The knobs share the federated config's schema (`fedasr.federated.config.FedConfig`): ``[transport.download]``,
``[transport.upload]`` (`compression.CodecConfig`), ``[omc]`` (`omc.OMCConfig`) and ``[partial]``
(`partial.PartialConfig`).

P2 pairs the bytes of ``p2_row`` (default ``+omc``) with the final user WER of the same codecs in real
federated training at small scale: variant ``quality_variant`` of the experiment ``quality_config``
(configs/efficiency/quality_cost.toml), whose summary ``quality_summary`` says whether it is within 3% of
its uncompressed run. `check_quality_variant` fails when that variant's OMC or upload codec is not the
row's.

Utterance set (fixed, documented; real audio is not needed for memory): ``utterances`` = 4 utterances
of ``seconds`` = 8 s, i.e. 800 frames of 80 standard-normal "log-mel" values (the model's normaliser
is the identity at initialisation), each with ``tokens`` = 40 word-piece ids drawn uniformly from
1..4096, all from ``seed``. The global model is ``build_model(preset)`` after ``torch.manual_seed(seed)``.

Schedule (`fedasr.fresh_runs`): rows run ``jobs`` processes at a time (default 2; the two heaviest never side by
side). Peaks, bytes, analytic breakdown and loss are per process; step times beside another process are contended
(``step_concurrent``). The P3 pair's ``timing_repeats`` extra runs run alone; P3 uses solo runs only (``p3_timing``).

Writes ``results/efficiency/{memory.json, summary.json, config.json}`` and
``results/figures/efficiency_memory.png`` (paths relative to the repository root). Command line:
``python bench/efficiency.py --config configs/efficiency/paper.toml``. Measured peaks and step times are of
this CPU, not of a phone: compare ratios.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from fedasr import compression, fresh_runs, memory, omc, partial, plotting
from fedasr.clients import DEVICE_TIERS
from fedasr.compression import CodecConfig, TransportConfig
from fedasr.data import Batch
from fedasr.efficiency_p2 import check_pairing
from fedasr.efficiency_p2 import p2_quality as _p2_quality
from fedasr.federated.client_update import fedavg_client_update, fedsgd_client_update
from fedasr.federated.config import FedConfig
from fedasr.grad_stream import StreamConfig
from fedasr.model import build_model, model_config
from fedasr.omc import OMCConfig
from fedasr.partial import PartialConfig
from fedasr.results import REPO_ROOT, open_run, write_json
from fedasr.seeding import derive_seed

__all__ = ["STACK", "EfficiencyConfig", "budget_sweep", "check_quality_variant", "client_round", "resummarize",
           "row_settings", "run", "utterance_batch"]

ROOT = REPO_ROOT  # result paths in the config are relative to the repository root
MiB = 1 << 20
STACK = ("fedavg_adam", "fedsgd", "+small_batch", "+checkpointing", "+transport_compression", "+omc", "+grad_stream",
         "+partial")


def _transport() -> TransportConfig:
    # download fp16; upload: unbiased 8-bit gradient codes, then zlib (gradients are peaked around zero)
    return TransportConfig(download=CodecConfig("fp16"),
                           upload=CodecConfig("int8_sr", symmetric=True, lossless="zlib", zlib_level=1))


@dataclass
class EfficiencyConfig:
    """The efficiency table's knobs (``configs/efficiency/*.toml``; CLI flags override)."""

    # keys of the first schema → their nested keys (the same tables as the federated config's [fed])
    __renamed__: ClassVar[dict[str, str]] = {
        "download": "transport.download",
        "upload": "transport.upload",
        "budget-mib": "partial.budget-mib",
    }

    preset: str = "paper"  # fedasr.model preset; "tiny" for a fast check
    utterances: int = 4  # utterances in the client's round
    seconds: float = 8.0  # utterance duration (100 frames per second)
    tokens: int = 40  # target word-pieces per utterance
    seed: int = 0  # global model, utterances, stochastic rounding
    batch: int = 4  # plain rows: utterances per forward/backward (all of them)
    small_batch: int = 1  # +small_batch onwards: micro-batch size
    client_lr: float = 1e-4  # fedavg_adam: local Adam learning rate (one step; memory does not depend on it)
    transport: TransportConfig = field(default_factory=_transport)  # +transport_compression: codec per direction
    omc: OMCConfig = field(default_factory=lambda: OMCConfig(bits=8))  # +omc: int8, per-variable affine, matrices only
    # +grad_stream: the gradient accumulator's width and rounding (fedasr.grad_stream; the upload codec's format)
    grad_stream: StreamConfig = field(default_factory=lambda: StreamConfig(enabled=True))
    # +partial: the budget policy; budget-mib = the client's memory budget (between fedasr.clients' mid and high tiers)
    partial: PartialConfig = field(default_factory=lambda: PartialConfig(policy="budget", budget_mib=768))
    rows: tuple[str, ...] = STACK  # which rows to run (always cumulative from the first)
    timing_repeats: int = 2  # extra solo fresh-process runs of the first and last row for P3 (min solo step time)
    jobs: int = 2  # rows measured at a time (fresh 1-thread processes); 1 = one after another (fedasr.fresh_runs)
    timeout_s: float = 1800.0  # per row
    # P2's quality half: the small-scale federated run of the same codecs/OMC (variant `quality_variant` of the
    # experiment `quality_config`, summary "relative" rows in `quality_summary`) whose final user WER must be
    # within 3% of its uncompressed run; quality_variant "" = none
    quality_config: str = "configs/efficiency/quality_cost.toml"
    quality_summary: str = "results/efficiency-quality/summary.json"
    quality_variant: str = ""
    p2_row: str = "+omc"  # the row whose stack (codecs + OMC, every variable training) quality_variant reproduces
    out_dir: str = "results/efficiency"
    figure: str = "results/figures/efficiency_memory.png"

    def __post_init__(self) -> None:
        self.rows = tuple(self.rows)
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1 (got {self.jobs})")
        unknown = [r for r in (*self.rows, self.p2_row) if r not in STACK]
        if unknown:
            raise ValueError(f"unknown row(s) {unknown}; rows and p2-row must be among {list(STACK)}")
        if ("+omc" in self.rows or "+partial" in self.rows) and not self.omc.enabled:
            raise ValueError("the +omc row stores weights quantized: omc.bits must be > 0")
        if self.partial.policy != "budget" or self.partial.budget_mib <= 0:  # +partial and the budget sweep
            raise ValueError("the +partial row fits the client's budget: partial.policy must be 'budget' and "
                             f"partial.budget-mib > 0 (got {self.partial.policy!r}, {self.partial.budget_mib})")


def _mib(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _stack(cfg: EfficiencyConfig) -> list[dict[str, Any]]:
    """Every row of `STACK` with ``cfg``'s settings, each the row above plus one technique."""
    s: dict[str, Any] = {"stack": "fedavg_adam", "strategy": "fedavg", "optimizer": "adam", "micro_batch": cfg.batch,
                         "checkpoint": False, "download": dataclasses.asdict(CodecConfig("none")),
                         "upload": dataclasses.asdict(CodecConfig("none")), "omc": None, "budget_mib": None,
                         "grad_stream": None}
    steps = {
        "fedsgd": {"strategy": "fedsgd", "optimizer": "none"},
        "+small_batch": {"micro_batch": cfg.small_batch},
        "+checkpointing": {"checkpoint": True},
        "+transport_compression": {"download": dataclasses.asdict(cfg.transport.download),
                                   "upload": dataclasses.asdict(cfg.transport.upload)},
        "+omc": {"omc": dataclasses.asdict(cfg.omc)},
        "+grad_stream": {"grad_stream": dataclasses.asdict(cfg.grad_stream)},
        "+partial": {"budget_mib": _mib(cfg.partial.budget_mib)},
    }
    rows = []
    for name in STACK:
        s = {**s, **steps.get(name, {}), "stack": name}
        rows.append(dict(s))
    return rows


def row_settings(cfg: EfficiencyConfig) -> list[dict[str, Any]]:
    """The cumulative rows ``cfg.rows``: each is the row above plus one technique (module docstring)."""
    return [r for r in _stack(cfg) if r["stack"] in cfg.rows]


def _model_cfg(preset: str, row: dict[str, Any]):
    n = model_config(preset).num_layers
    return model_config(preset, checkpoint_blocks=tuple(range(n)) if row["checkpoint"] else ())


def utterance_batch(preset: str, utterances: int, seconds: float, tokens: int, seed: int) -> Batch:
    """The fixed synthetic utterance set (module docstring)."""
    c = model_config(preset)
    g = torch.Generator().manual_seed(seed)
    frames = round(seconds * 100)
    feats = torch.randn(utterances, frames, c.n_mels, generator=g)
    targets = torch.randint(1, c.vocab_size + 1, (utterances, tokens), generator=g)
    ids = tuple(f"synthetic-{i}" for i in range(utterances))
    return Batch(feats, torch.full((utterances,), frames), targets, torch.full((utterances,), tokens), ids)


def _shape(row: dict[str, Any], common: dict[str, Any], download_copy_bytes: int) -> memory.RoundShape:
    up = row["upload"]
    widths = {"fp16": 2.0, "bf16": 2.0, "int4": 0.5, "int4_sr": 0.5}  # bytes per value; int8: 1
    per_param = 0.0 if up["name"] == "none" else widths.get(up["name"], 1.0)
    return memory.RoundShape(
        batch=row["micro_batch"], frames=round(common["seconds"] * 100), tokens=common["tokens"],
        micro_batches=-(-common["utterances"] // row["micro_batch"]), optimizer=row["optimizer"],
        delta_copy=row["strategy"] == "fedavg", download_bytes=download_copy_bytes, upload_bytes_per_param=per_param,
        grad_bits=row["grad_stream"]["bits"] if row.get("grad_stream") else 32)


def _skeleton(preset: str, row: dict[str, Any]) -> torch.nn.Module:
    """The client's model on the meta device (no memory), OMC-converted if the row says so."""
    with torch.device("meta"):
        model = build_model(_model_cfg(preset, row))
    if row["omc"]:
        omc.apply_omc(model, OMCConfig(**row["omc"]))
    return model


def client_round(row: dict[str, Any], common: dict[str, Any], payload_path: str) -> dict[str, Any]:
    """Run exactly one client round, as a phone would (the `memory.measure_peak` target).

    Receives the encoded download, builds the model into it (OMC: adopts the codes as storage), picks
    the trainable set (``common["partial"]``, a `PartialConfig` as a dict), runs `fedsgd_client_update` /
    `fedavg_client_update` (`fedasr.federated.client_update`), encodes the upload.
    """
    preset = common["preset"]
    t0 = time.perf_counter()
    payload = torch.load(payload_path, weights_only=False)  # the download as received
    model = _skeleton(preset, row)
    if row["omc"]:
        omc.load_payload(model, payload)
    else:
        model.load_state_dict(compression.decompress(payload), assign=True)
    del payload
    decode_s = time.perf_counter() - t0
    if row["budget_mib"]:
        budget = int(row["budget_mib"] * MiB)
        sel = partial.select(model, PartialConfig(**common["partial"]), seed=common["seed"], client_id="bench",
                             budget_bytes=budget, shape=_shape(row, common, 0))
        if not sel.fits:
            raise RuntimeError(f"nothing trainable fits {row['budget_mib']} MiB (estimate {sel.estimate_bytes})")
        partial.apply_selection(model, sel)
    batch = utterance_batch(preset, common["utterances"], common["seconds"], common["tokens"], common["seed"])
    b = row["micro_batch"]
    micro = [Batch(*(f[i:i + b] for f in batch[:4]), batch.ids[i:i + b]) for i in range(0, len(batch.ids), b)]
    torch.manual_seed(common["seed"])  # dropout masks
    t1 = time.perf_counter()
    gen = torch.Generator().manual_seed(derive_seed(common["seed"], "upload"))
    if row["strategy"] == "fedsgd":  # +grad_stream: the upload is encoded during backward
        stream = (CodecConfig(**row["upload"]), StreamConfig(**row["grad_stream"]), gen) if row.get("grad_stream") \
            else None
        update = fedsgd_client_update(model, omc.resident_state(model), micro, "bench", stream)
    else:
        fcfg = FedConfig(strategy="fedavg", micro_batch=b, local_epochs=1, client_optimizer=row["optimizer"],
                         client_lr=common["client_lr"])
        update = fedavg_client_update(model, omc.resident_state(model), micro, fcfg, "bench")
    step_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    up = update.encoded if update.encoded is not None else compression.compress(update.arrays,
                                                                                 CodecConfig(**row["upload"]), gen)
    upload_bytes = compression.payload_bytes(up)
    encode_s = time.perf_counter() - t2
    return {"upload_bytes": upload_bytes, "step_seconds": step_s, "decode_seconds": decode_s,
            "encode_seconds": encode_s, "loss": update.metrics["loss"], "trainable": sorted(up)}


def _download(row: dict[str, Any], state: dict[str, torch.Tensor], preset: str, seed: int) -> compression.Payload:
    """The server's encoded download for ``row`` (OMC format when the row stores weights quantized)."""
    if row["omc"]:
        names = omc.quantized_names(_skeleton(preset, row))
        return omc.encode_state(state, names, OMCConfig(**row["omc"]))
    gen = torch.Generator().manual_seed(derive_seed(seed, "download"))
    return compression.compress(state, CodecConfig(**row["download"]), gen)


def _measure(row: dict[str, Any], common: dict[str, Any], state: dict[str, torch.Tensor],
             timeout: float) -> tuple[dict[str, Any], int]:
    """Encode ``row``'s download, run its client round in a fresh process; return the measurement and bytes."""
    down = _download(row, state, common["preset"], common["seed"])
    with tempfile.TemporaryDirectory() as tmp:  # one folder per run: runs may be side by side
        path = Path(tmp) / "download.pt"
        torch.save(down, path)
        download_bytes = compression.payload_bytes(down)
        del down
        m = memory.measure_peak("fedasr.efficiency:client_round",
                                {"row": row, "common": common, "payload_path": str(path)}, timeout=timeout)
    return m, download_bytes


def check_quality_variant(cfg: EfficiencyConfig, source: str | Path | None = None) -> FedConfig:
    """`efficiency_p2.check_pairing` of ``cfg``'s ``p2_row``: its quality variant must federate with the row's OMC
    and upload codec (a `ConfigError` naming both files otherwise); returns the variant's `FedConfig`."""
    return check_pairing(cfg, next(r for r in _stack(cfg) if r["stack"] == cfg.p2_row), source)


def run(cfg: EfficiencyConfig, source: str | Path | None = None) -> list[dict[str, Any]]:
    """Measure every row of ``cfg`` and write the result files; return the rows (in ``cfg.rows`` order).

    Rows run ``cfg.jobs`` fresh processes at a time (`fedasr.fresh_runs`); then the first and the last row (the
    P3 pair) run ``timing_repeats`` more times alone; their ``step_seconds`` is the solo minimum, P3's only input.
    ``source`` (the config's file) is only named in `check_quality_variant`'s error.
    """
    if cfg.quality_variant:
        check_quality_variant(cfg, source)
    common = {k: getattr(cfg, k) for k in ("preset", "utterances", "seconds", "tokens", "seed", "client_lr")}
    common["partial"] = dataclasses.asdict(cfg.partial)
    torch.manual_seed(cfg.seed)
    state = build_model(cfg.preset).state_dict()
    params = sum(v.numel() for k, v in state.items() if not k.startswith("normalizer."))
    fp32_bytes = compression.payload_bytes(compression.compress(state, "none"))
    settings = row_settings(cfg)

    def measure(i: int) -> tuple[dict[str, Any], int]:
        print(f"[efficiency] {settings[i]['stack']} ...", flush=True)
        m, download_bytes = _measure(settings[i], common, state, cfg.timeout_s)
        print(f"[efficiency] {settings[i]['stack']}: peak {m['peak_rss_bytes'] / MiB:.0f} MiB, down "
              f"{download_bytes / MiB:.1f} MiB, step {m['result']['step_seconds']:.1f} s", flush=True)
        return m, download_bytes

    # Every row once, cfg.jobs at a time (the two of largest analytic peak apart); then the P3 pair's runs, alone
    peaks = [memory.estimate(_skeleton(cfg.preset, r), _shape(r, common, 0))["peak"] for r in settings]
    out = []
    for row, runs in zip(settings, fresh_runs.measure_rows(measure, peaks, cfg.jobs, cfg.timing_repeats)):
        (m, download_bytes), r = runs[0].result, runs[0].result[0]["result"]  # the first run is the measurement
        timing = fresh_runs.step_times(runs, lambda res: res[0]["result"]["step_seconds"])
        copies = row["download"]["name"] != "none" and not row["omc"]  # decoding makes a second copy
        skel = _skeleton(cfg.preset, row)
        shape = _shape(row, common, download_bytes if copies else 0)
        analytic = memory.estimate(skel, shape, trainable=r["trainable"])
        sizes = {n: p.numel() for n, p in skel.named_parameters()}
        out.append({
            "stack": row["stack"], "preset": cfg.preset, "params": params,
            "peak_rss_bytes": m["peak_rss_bytes"], "analytic": analytic,
            "download_bytes": download_bytes, "upload_bytes": r["upload_bytes"], **timing,
            "baseline_rss_bytes": m["baseline_rss_bytes"], "vmhwm_bytes": m["vmhwm_bytes"],
            "vmhwm_after_imports_bytes": m["vmhwm_after_imports_bytes"], "hwm_reset": m["hwm_reset"],
            "rss_file_growth_bytes": m["rss_file_growth_bytes"],
            "rss_anon_held_at_end_bytes": m["rss_anon_end_bytes"] - m["rss_anon_baseline_bytes"],
            "decode_seconds": r["decode_seconds"], "encode_seconds": r["encode_seconds"], "loss": r["loss"],
            "trainable_params": sum(sizes[n] for n in r["trainable"]),
            "trainable_units": [k for k, ns in partial.units(skel) if any(n in r["trainable"] for n in ns)],
            "settings": row,
        })
    _write(cfg, out, fp32_bytes)
    return out


def resummarize(cfg: EfficiencyConfig, source: str | Path | None = None) -> dict[str, Any]:
    """Rewrite ``summary.json`` from the measured rows of the last run (``memory.json``), e.g. after the
    small-scale quality-cost runs were redone: P2's WER half is read from ``cfg.quality_summary`` again."""
    if cfg.quality_variant:
        check_quality_variant(cfg, source)
    out_dir = ROOT / cfg.out_dir
    rows = json.loads((out_dir / "memory.json").read_text())
    fp32_bytes = json.loads((out_dir / "summary.json").read_text())["fp32_model_bytes"]
    if not rows or any("settings" not in r for r in rows):
        raise ValueError(f"{out_dir / 'memory.json'} holds no measured rows; run the table first")
    return _write(cfg, rows, fp32_bytes, measured=False)


def _write(cfg: EfficiencyConfig, rows: list[dict[str, Any]], fp32_bytes: int, measured: bool = True) -> dict[str, Any]:
    """Write ``memory.json``, ``summary.json`` (P1–P3) and the figure; ``config.json`` only for measured rows."""
    out_dir = ROOT / cfg.out_dir
    if measured:  # config.json (command, commit) describes the run that measured the rows
        open_run(out_dir, "efficiency", cfg, resume=True)
    write_json(out_dir / "memory.json", rows)
    first, last = rows[0], rows[-1]
    summary: dict[str, Any] = {
        "preset": cfg.preset, "rows": [r["stack"] for r in rows], "fp32_model_bytes": fp32_bytes,
        "P1_peak_ratio": last["peak_rss_bytes"] / first["peak_rss_bytes"],
        "P1_analytic_ratio": last["analytic"]["peak"] / first["analytic"]["peak"],
        "P2_transport_ratio": (last["download_bytes"] + last["upload_bytes"]) / (2 * fp32_bytes),
        "P3_step_time_ratio": last["step_seconds"] / first["step_seconds"],  # minima over solo fresh-process runs
        "p3_timing": fresh_runs.p3_timing(first, last),
        "targets": {"P1": 0.20, "P2": 0.10, "P3": 1.3},
    }
    # VmHWM includes library code paged in during the round (the same ~0.1 GB in every row)
    summary["P1_peak_ratio_without_file_pages"] = ((last["peak_rss_bytes"] - last["rss_file_growth_bytes"])
                                                   / (first["peak_rss_bytes"] - first["rss_file_growth_bytes"]))
    # P2 of each row (the row before partial training is the stack whose WER the small-scale run measures
    # without partial training: configs/efficiency/quality_cost.toml)
    summary["P2_transport_ratio_by_row"] = {r["stack"]: (r["download_bytes"] + r["upload_bytes"]) / (2 * fp32_bytes)
                                            for r in rows}
    if last["settings"]["omc"]:
        summary["budget_sweep_analytic"] = budget_sweep(cfg, last["settings"])
    # P2 = bytes of `p2_row` at full scale (≤ 0.10) and its WER in real FL at small scale (within 3%)
    p2_quality = _p2_quality(cfg)
    p2_bytes = summary["P2_transport_ratio_by_row"].get(cfg.p2_row)
    summary["P2"] = {"row": cfg.p2_row, "transport_ratio": p2_bytes, "quality": p2_quality}
    summary["met"] = {"P1": summary["P1_peak_ratio"] <= 0.20,
                      "P2": p2_bytes is not None and p2_bytes <= 0.10 and bool(p2_quality and p2_quality["within_3pct"]),
                      "P3": summary["P3_step_time_ratio"] <= 1.3 and summary["p3_timing"]["solo_only"]}
    write_json(out_dir / "summary.json", summary)
    plotting.efficiency_memory(rows, ROOT / cfg.figure)
    return summary


def budget_sweep(cfg: EfficiencyConfig, row: dict[str, Any]) -> list[dict[str, Any]]:
    """What ``cfg.partial`` trains, and its analytic peak, for fedasr.clients' tiers and ``partial.budget-mib``."""
    common = {"seconds": cfg.seconds, "tokens": cfg.tokens, "utterances": cfg.utterances}
    skel = _skeleton(cfg.preset, row)
    out = []
    budgets = sorted({t.memory_budget_bytes for t in DEVICE_TIERS} | {int(cfg.partial.budget_mib * MiB)})
    for budget in budgets:
        sel = partial.select(skel, cfg.partial, seed=cfg.seed, client_id="bench", budget_bytes=budget,
                             shape=_shape(row, common, 0))
        d = partial.describe(sel, skel)
        tiers = [t.name for t in DEVICE_TIERS if t.memory_budget_bytes == budget]
        out.append({"budget_bytes": budget, "tier": tiers[0] if tiers else None, "fits": d["fits"],
                    "trainable_share": d["share"], "trained_units": d["units"],
                    "analytic_peak_bytes": d["estimate_bytes"]})
    return out
