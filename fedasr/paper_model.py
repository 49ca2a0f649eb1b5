"""The paper's model through Flower (issue 19): the 129M ``paper`` preset trained by FedSGD with the device stack.

Paper §2 trains a 130M Conformer RNN-T over word-pieces on phones. Here, three plain calls:

1. **pretrain** (`fedasr.train.ensure_seed`): a sentencepiece model trained on the proxy text (the paper's 4,096
   pieces where the text allows them; the synthetic quick corpus allows 1,047), then a short central pretraining
   of the RNN-T on proxy audio, so the federated rounds start from a point where the loss falls;
2. **federate** (`fedasr.experiments.run_federated_experiment`): FedSGD rounds on Flower's Simulation Engine with
   the device stack of ``configs/efficiency/paper.toml`` (micro-batch 1, every Conformer block recomputed in
   backward, 4-bit OMC (the download in its storage format), gradients folded into 8-bit codes in backward, int4
   upload + zlib, the budget's share of trainable blocks). Labels are the reference transcripts
   (``labels = "truth"``, an oracle): this run measures the model's fit into a device, not the quality of
   on-device labels;
3. **summarize**: ``results/<experiment>/summary.json``::

       {"preset", "head", "tokenizer": {"kind", "size"}, "params", "engine", "device", "rounds",
        "loss": [per round], "client_peak_rss_bytes": {"max", "median"}, "bench_peak_rss_bytes", "stack": [...]}

   ``client_peak_rss_bytes`` is each ClientApp process's own high-water mark of resident memory during its round
   (`fedasr.ledger`: VmHWM reset when the round starts). It holds what the benchmark's fresh process holds (the
   libraries, the model, the round) plus what a Ray worker and Flower add, so it is set beside the benchmark's
   process high-water mark for the same stack (``bench_peak_rss_bytes``: `bench/efficiency.py`'s ``vmhwm_bytes``
   of the row ``bench_row``) and their ratio is recorded.

Run: ``make paper-model`` (``configs/paper_model/quick.toml``: CPU, minutes per round at 129M).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fedasr import asr_task, config as config_lib, ledger, results, train
from fedasr.experiments import FederatedExperiment, run_federated_experiment
from fedasr.federated.config import FedConfig
from fedasr.tokenizer import load_tokenizer

__all__ = ["PaperModelExperiment", "run_paper_model", "stack_names", "summarize"]


@dataclass
class PaperModelExperiment:
    """One pretraining and one federated run of a preset (TOML: ``configs/paper_model/*.toml``)."""

    experiment: str = "paper-model"  # results/<experiment>/{seed,federated,summary.json}
    results_root: str = "results"
    # the machine the profile is meant for: "cuda" fails at once where torch sees no GPU. The pretraining uses a GPU
    # wherever torch sees one (fedasr.distributed.device); the ClientApps train on the CPU, as phones would
    device: str = "cpu"
    seed: train.SeedConfig = field(default_factory=lambda: train.SeedConfig(preset="paper"))
    task: asr_task.ASRTaskConfig = field(default_factory=lambda: asr_task.ASRTaskConfig(labels="truth"))
    fed: FedConfig = field(default_factory=FedConfig)
    concurrency: int = 2  # ClientApp processes at once
    bench: str = "results/efficiency/memory.json"  # the benchmark's rows (bench/efficiency.py)
    bench_row: str = "+partial"  # the benchmark's row with this run's stack

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise config_lib.ConfigError(f"device: {self.device!r} is not 'cpu' or 'cuda'")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise config_lib.ConfigError("device = 'cuda' but torch sees no CUDA device (torch.cuda.is_available() "
                                         "is False): run this profile on a GPU machine, or set device = 'cpu'")
        if self.fed.strategy != "fedsgd":
            raise config_lib.ConfigError(f"fed.strategy: {self.fed.strategy!r}; the paper's model trains by FedSGD "
                                         "(paper §2.3: one gradient per client at the global weights)")


def stack_names(fed: FedConfig, checkpointing: bool) -> list[str]:
    """The device stack a config runs, in the benchmark's order (`fedasr.efficiency.STACK`), read from it."""
    out = [fed.strategy]
    if fed.micro_batch == 1:
        out.append("+small_batch")
    if checkpointing:
        out.append("+checkpointing")
    if fed.transport.download.name != "none" or fed.transport.upload.name != "none":
        out.append("+transport_compression")
    if fed.omc.bits:
        out.append("+omc")
    if fed.grad_stream.enabled:
        out.append("+grad_stream")
    if fed.partial.policy != "all":
        out.append("+partial")
    return out


def run_paper_model(exp: PaperModelExperiment) -> dict[str, Any]:
    """Pretrain (if stale), federate, and write ``results/<experiment>/summary.json``; return the summary."""
    root = Path(exp.results_root) / exp.experiment
    seed_dir = root / "seed"
    train.ensure_seed(exp.seed, seed_dir)
    fed_exp = FederatedExperiment(experiment=f"{exp.experiment}/federated", results_root=exp.results_root,
                                  task=replace(exp.task, seed_model=str(seed_dir / "model")), fed=exp.fed,
                                  variants={"full_stack": {}}, concurrency=exp.concurrency)
    run = run_federated_experiment(fed_exp)["full_stack"]
    summary = summarize(exp, Path(run.path), seed_dir)
    results.open_run(root, exp.experiment, exp, resume=True).write_summary(summary)
    return summary


def summarize(exp: PaperModelExperiment, run_dir: Path, seed_dir: Path) -> dict[str, Any]:
    """The contract's summary from a finished run folder (``rounds.jsonl``) and its seed (``summary.json``)."""
    seed = results.read_json(seed_dir / "summary.json")  # head and parameters as the pretraining recorded them
    tokenizer = load_tokenizer(seed_dir / "model" / "tokenizer")  # no need to build the 129M model for its metadata
    by_round = {r["round"]: r for r in results.read_jsonl(run_dir / "rounds.jsonl")}  # a resume's last record wins
    rounds = [by_round[k] for k in sorted(by_round) if k > 0]
    rows = [r for r in ledger.build_ledger(run_dir)["rounds"] if r["status"] == "ok"]  # one per client round
    peaks = [r["peak_rss_bytes"] for r in rows if r["peak_rss_bytes"] is not None]
    starts = [r["start_rss_bytes"] for r in rows if r["start_rss_bytes"] is not None]
    losses = [r["train_loss"] for r in rounds if isinstance(r.get("train_loss"), (int, float))]
    bench = _bench_row(exp)
    bench_peak = bench.get("vmhwm_bytes") if bench else None
    return {
        "preset": exp.seed.preset, "head": seed["head"],
        "tokenizer": {"kind": tokenizer.kind, "size": tokenizer.vocab_size},
        "params": seed["params"],
        "engine": "flower-simulation", "device": exp.device,
        "rounds": len(rounds),
        "loss": [r.get("train_loss") for r in rounds],  # the clients' mean loss at the round's global weights
        "loss_falls": bool(len(losses) > 1 and losses[-1] < losses[0]),
        "client_peak_rss_bytes": {"max": max(peaks) if peaks else None,
                                  "median": statistics.median(peaks) if peaks else None, "n": len(peaks)},
        "client_start_rss_bytes_median": statistics.median(starts) if starts else None,
        "bench_peak_rss_bytes": bench_peak, "bench_row": exp.bench_row,
        "client_over_bench": (max(peaks) / bench_peak) if peaks and bench_peak else None,
        "stack": stack_names(exp.fed, bool(exp.seed.model.get("checkpoint_blocks"))),
        "eval": dict(rounds[-1].get("eval", {})) if rounds else {},
        "seed": {"steps": seed.get("steps"), "train_seconds": seed.get("train_seconds"), "wer": seed.get("wer")},
        "run": results.relative_to_repo(str(run_dir)),
    }


def _bench_row(exp: PaperModelExperiment) -> dict | None:
    path = Path(exp.bench)
    if not path.exists():
        return None
    rows = results.read_json(path)
    rows = rows["rows"] if isinstance(rows, dict) else rows
    return next((r for r in rows if r.get("stack") == exp.bench_row and r.get("preset") == exp.seed.preset), None)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="configs/paper_model/<profile>.toml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides (TOML values)")
    args = ap.parse_args(argv)
    exp = config_lib.load(PaperModelExperiment, args.config, config_lib.parse_overrides(args.set))
    s = run_paper_model(exp)
    print({k: s[k] for k in ("preset", "params", "rounds", "loss", "client_peak_rss_bytes", "bench_peak_rss_bytes")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
