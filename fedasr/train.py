"""Central training of the seed model on the proxy (server) domain, evaluation, and checkpoints.

The paper initialises federated training from a centrally pretrained model (paper.md §2.1/§2.6); this module trains
that *seed model* on ``proxy_train`` only (optionally from another checkpoint: ``init-from``, `fedasr.warm_start`),
then measures it on the proxy test set, the user domain (unseen users), its new-terms subset and the real speech.

Both CPU cores are used by data parallelism over processes, not threads (calibration.md: two 1-thread processes
with gloo ≈ 1.75× one process; two threads in one process ≈ 1.5×); on GPUs, one process per GPU (DESIGN §6). Each rank computes the *summed* loss gradient of its own shard;
``DistributedDataParallel`` with a summing comm hook (`fedasr.distributed`) adds them over ranks during
``backward()``, and one small ``all_reduce`` adds utterance counts, losses and the stop flag, so the update
is the exact mean over all ranks' utterances (bit-identical to the pre-DDP flat all_reduce with 2 ranks).

CLI: ``python -m fedasr.train --config configs/seed/quick.toml [--out results/seed] [--if-stale]`` spawns
``train.workers`` ranks; ``torchrun --nproc-per-node N [--nnodes ...] -m fedasr.train ...`` runs the same
worker on torchrun's ranks (its world size replaces ``train.workers``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from tqdm import tqdm

from fedasr import config as config_lib
from fedasr import data as data_lib
from fedasr import decoding, distributed, metrics, results, warm_start
from fedasr import features as feats_lib
from fedasr.model import ASRModel, ModelConfig, build_model, count_parameters, model_config
from fedasr.tokenizer import TOKENIZER_PRESETS, Tokenizer, TokenizerConfig, build_tokenizer, load_tokenizer

__all__ = ["TrainConfig", "SeedConfig", "train_seed", "evaluate", "featurize", "save_checkpoint",
           "load_checkpoint", "checkpoint_provenance", "seed_fingerprint", "ensure_seed", "build_model"]


@dataclass
class TrainConfig:
    """Optimisation knobs of central training (defaults: calibration.md's recipe that learns on CPU)."""

    max_minutes: float = 10.0  # wall-clock training budget (feature extraction and final eval excluded)
    max_steps: int = 0  # stop after this many updates as well (0 = no step limit); with a step budget the
    # result does not depend on the machine's speed (updates are deterministic given the seed)
    batch_seconds: float = 30.0  # padded audio per rank per step, seconds (calibration: 30 s)
    peak_lr: float = 2e-3  # Adam peak learning rate (calibration: 1e-3 stayed on the blank plateau)
    warmup_steps: int = 100  # linear warm-up steps, then the decay of ``lr_schedule``
    lr_schedule: Literal["inverse-sqrt", "constant", "cosine"] = "inverse-sqrt"  # see `_lr`
    final_lr_fraction: float = 0.02  # lr at the end of the budget, as a fraction of the schedule's lr there
    cooldown_fraction: float = 0.0  # last share of the budget over which lr falls linearly to final_lr_fraction x
    adam_beta2: float = 0.98  # Transformer-style Adam (0.9, 0.98, eps 1e-9)
    grad_clip: float = 5.0  # global gradient-norm clip
    sortagrad_epochs: int = 1  # epochs with batches in shortest-first order (SortaGrad)
    workers: int = 2  # data-parallel 1-thread processes (1 = no torch.distributed)
    log_every_steps: int = 25  # rows in rounds.jsonl
    eval_every_steps: int = 250  # greedy WER on (a slice of) proxy_dev during training (0 = off)
    eval_max_utterances: int = 150  # size of that dev slice
    checkpoint_every_steps: int = 250  # resumable checkpoint (0 = only at the end)
    seed: int = 0  # seeds weights, batch order and dropout

    def __post_init__(self) -> None:
        if self.max_minutes <= 0 and self.max_steps <= 0:
            raise ValueError("train: set max-minutes > 0 or max-steps > 0 (the training budget)")
        if not (0.0 <= self.final_lr_fraction <= 1.0 and 0.0 <= self.cooldown_fraction <= 1.0):
            raise ValueError(f"train: final-lr-fraction ({self.final_lr_fraction}) and cooldown-fraction "
                             f"({self.cooldown_fraction}) must lie in [0, 1]")
        if self.peak_lr <= 0 or self.warmup_steps < 1 or self.batch_seconds <= 0 or self.workers < 1:
            raise ValueError("train: peak-lr, warmup-steps, batch-seconds and workers must be positive")


@dataclass
class SeedConfig:
    """Everything that defines a seed-model run (TOML: ``configs/seed/*.toml``)."""

    profile: str = "quick"  # corpus profile the run is meant for (recorded, used in the default corpus path)
    corpus: str = ""  # corpus folder; "" = data/<profile>
    preset: str = "tiny"  # model preset (fedasr.model.PRESETS)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig field overrides on top of the preset
    tokenizer: TokenizerConfig | None = None  # None = the preset's units (TOKENIZER_PRESETS)
    features: feats_lib.FeatureConfig = field(default_factory=feats_lib.FeatureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_splits: list[str] = field(default_factory=lambda: ["proxy_test", "user_test", "real"])
    init_from: str = ""  # a checkpoint to start from where names and shapes agree (fedasr.warm_start; "" = none)

    def corpus_path(self) -> Path:
        return Path(self.corpus or f"data/{self.profile}")


def featurize(utterances: Sequence[data_lib.Utterance], fcfg: feats_lib.FeatureConfig,
              report: data_lib.SkipReport | None = None) -> dict[str, torch.Tensor]:
    """Log-mel features ``(T, F)`` of each readable utterance, keyed by id (bad audio is skipped and counted)."""
    frontend = feats_lib.eval_pipeline(fcfg)
    report = report if report is not None else data_lib.SkipReport()
    with torch.no_grad():
        return {u.id: frontend(torch.from_numpy(x)) for u, x in data_lib.iter_audio(utterances, report=report)}


def budget_progress(step: int, elapsed_s: float, tcfg: TrainConfig) -> float:
    """How much of the training budget is spent, in [0, 1]: the larger of the time and step fractions."""
    frac = elapsed_s / (tcfg.max_minutes * 60) if tcfg.max_minutes > 0 else 0.0
    if tcfg.max_steps:
        frac = max(frac, step / tcfg.max_steps)
    return min(max(frac, 0.0), 1.0)


def _lr(step: int, tcfg: TrainConfig, progress: float = 0.0) -> float:
    """Learning rate of update ``step`` (1-based): linear warm-up to ``peak_lr``, then

    * ``"inverse-sqrt"``: ``peak_lr * sqrt(warmup / step)`` (Vaswani et al. 2017): independent of the run's
      length, so a checkpoint at minute t equals a run of t minutes (calibration.md's recipe), unless
      ``cooldown_fraction`` > 0 anneals the last part of the budget linearly to ``final_lr_fraction`` x;
    * ``"constant"``: ``peak_lr`` until the same cooldown (warmup-stable-decay, Hägele et al. 2024);
    * ``"cosine"``: from ``peak_lr`` down to ``final_lr_fraction * peak_lr`` as ``progress`` (the share of
      the time/step budget spent, `budget_progress`) goes 0 → 1 (Loshchilov & Hutter 2017). A fixed budget
      is what the profiles have ("10 CPU-minutes"), so the run ends annealed instead of at a still-high lr.
    """
    s = max(step, 1)
    if s < tcfg.warmup_steps:
        return tcfg.peak_lr * s / tcfg.warmup_steps
    if tcfg.lr_schedule == "cosine":
        lo = tcfg.final_lr_fraction * tcfg.peak_lr
        return lo + (tcfg.peak_lr - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))
    lr = tcfg.peak_lr if tcfg.lr_schedule == "constant" else tcfg.peak_lr * math.sqrt(tcfg.warmup_steps / s)
    left = 1.0 - progress
    if tcfg.cooldown_fraction > 0 and left < tcfg.cooldown_fraction:
        lr *= tcfg.final_lr_fraction + (1.0 - tcfg.final_lr_fraction) * left / tcfg.cooldown_fraction
    return lr


def _batch_order(step: int, n: int, tcfg: TrainConfig, rank: int):
    """The batch index of ``step`` on one rank: a deterministic function of (seed, rank, step) for exact resume."""
    epoch, pos = divmod(step, n)
    order = list(range(n))
    if epoch >= tcfg.sortagrad_epochs:
        random.Random(tcfg.seed * 1_000_003 + rank * 1009 + epoch).shuffle(order)
    return epoch, order[pos]


# ----------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(model: ASRModel, tokenizer: Tokenizer, utterances: Sequence[data_lib.Utterance],
             fcfg: feats_lib.FeatureConfig, batch_seconds: float = 60.0,
             feats: dict[str, torch.Tensor] | None = None, keep_hypotheses: bool = False) -> dict:
    """Greedy-decode ``utterances`` and return `fedasr.metrics.wer_report` with the subsets
    ``new_terms`` (utterances with client-specific terms) and ``no_terms``, plus term recall
    (and every hypothesis by id under ``hypotheses`` if ``keep_hypotheses``).

    Unreadable audio is skipped and counted under ``skipped``; it never aborts an evaluation.
    """
    report = data_lib.SkipReport()
    feats = feats if feats is not None else featurize(utterances, fcfg, report)
    usable = [u for u in utterances if u.id in feats]
    refs, hyps, ids = [], [], []
    model.eval()
    dev = next(model.parameters()).device  # rank 0 evaluates during training on its training device
    for group in feats_lib.bucket_by_duration(usable, batch_seconds, shuffle=False):
        xs = [feats[u.id] for u in group]
        x = torch.nn.utils.rnn.pad_sequence(xs, batch_first=True)
        lengths = torch.tensor([t.shape[0] for t in xs])
        for u, h in zip(group, decoding.greedy_decode(model, x.to(dev), lengths.to(dev))):
            refs.append(u.text)
            hyps.append(tokenizer.decode(h))
            ids.append(u.id)
    by_id = {u.id: u for u in usable}
    subsets = {"new_terms": {i for i in ids if by_id[i].terms}, "no_terms": {i for i in ids if not by_id[i].terms}}
    out = metrics.wer_report(refs, hyps, ids=ids, subsets=subsets) if refs else {"utterances": 0}
    if subsets["new_terms"]:
        out["term_recall"] = metrics.term_recall([by_id[i].terms for i in ids], hyps)
    out["skipped"] = report.total
    out["examples"] = [{"id": i, "ref": r, "hyp": h} for i, r, h in list(zip(ids, refs, hyps))[:5]]
    if keep_hypotheses:
        out["hypotheses"] = dict(zip(ids, hyps))
    return out


# ----------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(directory: str | Path, model: ASRModel, tokenizer: Tokenizer, fcfg: feats_lib.FeatureConfig,
                    state: dict | None = None, half: bool = False) -> Path:
    """Write ``model.pt`` (model config, feature config, weights incl. feature statistics, training state)
    and the tokenizer into ``directory``. ``half=True`` stores float weights as fp16 (for committing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: (v.half() if half and v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}
    payload = {"model_config": asdict(model.config), "feature_config": asdict(fcfg),
               "state_dict": weights, "state": state or {}}
    with results.atomic_write(directory / "model.pt") as tmp:
        torch.save(payload, tmp)
    tokenizer.save(directory / "tokenizer")
    return directory / "model.pt"


def _checkpoint_file(directory: str | Path) -> Path:
    path = Path(directory) / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path} (train one with `make seed`)")
    return path


def checkpoint_provenance(directory: str | Path) -> dict:
    """Which checkpoint a downstream run started from: ``{"path", "sha256", "fingerprint", "step"}``
    (``fingerprint``: `seed_fingerprint` of the config and corpus that trained it; None if unrecorded)."""
    raw = _checkpoint_file(directory).read_bytes()
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False).get("state", {})
    return {"path": str(directory), "sha256": hashlib.sha256(raw).hexdigest(),
            "fingerprint": state.get("fingerprint"), "step": state.get("step")}


def load_checkpoint(directory: str | Path, weights: bool = True) -> tuple[Any, Tokenizer, feats_lib.FeatureConfig, dict]:
    """Load what `save_checkpoint` wrote: ``(model, tokenizer, feature_config, training_state)``; ``weights=False``:
    the model's `ModelConfig` instead, the file memory-mapped and its tensors never read (no 0.5 GB at 129M)."""
    directory = Path(directory)
    payload = torch.load(_checkpoint_file(directory), map_location="cpu", weights_only=False, mmap=not weights)
    model = ModelConfig(**payload["model_config"])
    if weights:
        model = build_model(model)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    return model, load_tokenizer(directory / "tokenizer"), feats_lib.FeatureConfig(**payload["feature_config"]), payload["state"]


def seed_fingerprint(cfg: SeedConfig) -> str:
    """Hash of the resolved config and the corpus files (the dev splits', issue 18, only if evaluated: seeds made
    before them keep their fingerprints): a seed is retrained only when this changes."""
    meta = json.loads((cfg.corpus_path() / "corpus.json").read_text())
    skip = {"clients_dev.json"} | {f"manifests/{s}.jsonl" for s in {"user_dev", "user_heldout_dev"} - {*cfg.eval_splits}}
    manifests = {k: v for k, v in meta.get("sha256", meta.get("manifest_sha256", {})).items() if k not in skip}
    conf = {k: v for k, v in config_lib.to_dict(cfg).items() if v or k != "init-from"}  # seeds made before it
    blob = json.dumps({"config": conf, "manifests": manifests}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# training


def _worker(rank: int, world: int, job: dict) -> None:
    """One data-parallel rank (in a process group if ``world`` > 1): trains until the budget is spent; rank 0
    logs and checkpoints."""
    torch.set_num_threads(1)
    cfg: SeedConfig = job["cfg"]
    tcfg = cfg.train
    dev = distributed.device(rank)
    model = build_model(job["model_config"]).to(dev)
    model.load_state_dict(job["init_state"])
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.peak_lr, betas=(0.9, tcfg.adam_beta2), eps=1e-9)
    step = job["resume_state"]["step"] if job.get("resume_state") else 0  # init_state: the checkpoint's weights then
    if step:
        opt.load_state_dict(job["resume_state"]["optimizer"])
    loss_fn = distributed.data_parallel(model, dev)  # backward() leaves gradients summed over all ranks
    shard = job["train"][rank::world]
    feats = featurize(shard, cfg.features)
    batches = feats_lib.bucket_by_duration([u for u in shard if u.id in feats], tcfg.batch_seconds, shuffle=False)
    augment = feats_lib.SpecAugment(cfg.features).train() if cfg.features.freq_masks or cfg.features.time_masks else None
    run = results.RunDir(Path(job["run_dir"])) if rank == 0 else None
    dev_set = job["dev"][: tcfg.eval_max_utterances]
    dev_feats = featurize(dev_set, cfg.features) if rank == 0 and tcfg.eval_every_steps else {}
    params = [p for p in model.parameters() if p.requires_grad]
    t0, trained_s = time.time(), job.get("trained_seconds", 0.0)
    window, window_t = Counter(), time.time()  # summed loss, utterances and tokens since the last logged row
    # progress in steps with a step budget (deterministic; max-minutes is then a guard), else in seconds
    bar = tqdm(total=tcfg.max_steps or int(tcfg.max_minutes * 60), initial=step if tcfg.max_steps else int(trained_s),
               unit="step" if tcfg.max_steps else "s", desc="seed training", disable=rank != 0)
    model.train()
    while True:
        epoch, b = _batch_order(step, len(batches), tcfg, rank)
        # dropout/SpecAugment randomness is a function of (seed, rank, step): exact resume at any step
        torch.manual_seed((tcfg.seed * 1_000_003 + rank) * 1_000_003 + step)
        batch = feats_lib.collate(batches[b], feats, job["tokenizer"], augment)
        batch = type(batch)(*(x.to(dev) if torch.is_tensor(x) else x for x in batch))
        opt.zero_grad(set_to_none=False)
        loss_sum, info = loss_fn(batch)
        loss_sum.backward()  # DDP: the gradients are summed over all ranks by the time this returns
        elapsed = trained_s + time.time() - t0
        stop = elapsed >= tcfg.max_minutes * 60 or (tcfg.max_steps and step + 1 >= tcfg.max_steps)
        # utterance count, summed loss, token count, rank 0's clock (so all ranks use one lr and stop together)
        n_utts, loss_total, tokens, elapsed, stop_votes = distributed.all_reduce_stats(
            [info["num_utterances"], info["loss_sum"], info["num_tokens"], elapsed if rank == 0 else 0.0,
             float(stop)], dev)
        last = stop_votes > 0
        lr = _lr(step + 1, tcfg, budget_progress(step + 1, elapsed, tcfg))
        for g in opt.param_groups:
            g["lr"] = lr
        for p in params:  # summed gradient / global utterance count = the exact mean over all ranks' utterances
            p.grad.div_(max(n_utts, 1.0))
        torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        opt.step()
        step += 1
        window.update(loss=loss_total, utts=n_utts, tokens=tokens)
        if rank == 0:
            bar.update((step if tcfg.max_steps else int(elapsed)) - bar.n)
            if step % tcfg.log_every_steps == 0 or last:
                dt = time.time() - window_t
                row = {"step": step, "epoch": epoch, "lr": lr, "train_seconds": round(elapsed, 1),
                       "loss_per_utterance": window["loss"] / max(window["utts"], 1),
                       "loss_per_token": window["loss"] / max(window["tokens"], 1),
                       "utterances_per_second": window["utts"] / max(dt, 1e-9)}
                if tcfg.eval_every_steps and (step % tcfg.eval_every_steps == 0 or last):
                    rep = evaluate(model, job["tokenizer"], dev_set, cfg.features, feats=dev_feats)
                    row.update(dev_wer=rep.get("wer"), dev_cer=rep.get("cer"))
                    model.train()
                    bar.set_postfix(loss=f"{row['loss_per_token']:.2f}", dev_wer=f"{row['dev_wer']:.3f}")
                run.log_round(row)
                window, window_t = Counter(), time.time()
            if last or (tcfg.checkpoint_every_steps and step % tcfg.checkpoint_every_steps == 0):
                save_checkpoint(Path(job["run_dir"]) / "checkpoint", model, job["tokenizer"], cfg.features,
                                {"step": step, "trained_seconds": elapsed, "optimizer": opt.state_dict(),
                                 "fingerprint": job["fingerprint"]})
        if last:
            break
    bar.close()
    distributed.barrier()  # the last checkpoint is written before any rank leaves


def _prepare(cfg: SeedConfig, out: Path, resume: bool, corpus: dict) -> dict:
    """Load ``corpus`` (in place); return the job all ranks train from: tokenizer, first weights, data, run folder."""
    corpus.update(data_lib.load_corpus(cfg.corpus_path(), splits=["proxy_train", "proxy_dev", *cfg.eval_splits]))
    if "proxy_train" not in corpus:
        raise data_lib.DataError(f"{cfg.corpus_path()} has no proxy_train split")
    fingerprint = seed_fingerprint(cfg)
    ckpt = out / "checkpoint"
    resume_state = None
    if resume and (ckpt / "model.pt").exists():
        model, tokenizer, _, state = load_checkpoint(ckpt)
        if state.get("fingerprint") != fingerprint:
            raise ValueError(f"{ckpt} belongs to another config/corpus; start a fresh run instead of --resume")
        resume_state, init_model = state, model
        run = results.RunDir(out)
    else:
        for name in ("rounds.jsonl", "summary.json"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "labels", ignore_errors=True)  # hypotheses of a previous seed are stale
        run = results.open_run(out, "seed", cfg, resume=True)
        tcfg = cfg.tokenizer or TOKENIZER_PRESETS.get(cfg.preset, TokenizerConfig())
        tokenizer = build_tokenizer(tcfg, [u.text for u in corpus["proxy_train"]])
        mcfg = model_config(cfg.preset, vocab_size=tokenizer.vocab_size, **cfg.model)
        init_model = build_model(mcfg)
        # global mean/variance normalisation from (a sample of) the proxy training set, stored in the model
        sample = random.Random(cfg.train.seed).sample(corpus["proxy_train"], min(500, len(corpus["proxy_train"])))
        init_model.normalizer.set_stats(*feats_lib.compute_stats(featurize(sample, cfg.features).values()))
        if cfg.init_from:  # e.g. an RNN-T's encoder from the CTC seed (the source's normaliser statistics too)
            w = warm_start.init_from(init_model, *load_checkpoint(cfg.init_from)[:2], tokenizer, cfg.init_from)
            print(f"init-from {cfg.init_from}: {w['params_copied']} parameters copied, kept {w['kept']}", flush=True)
    job = {"cfg": cfg, "tokenizer": tokenizer, "model_config": init_model.config, "init_state": init_model.state_dict(),
           "train": corpus["proxy_train"], "dev": corpus.get("proxy_dev", []), "run_dir": str(run.path),
           "fingerprint": fingerprint}
    if resume_state:
        job.update(resume_state=resume_state, trained_seconds=resume_state["trained_seconds"])
    return job


def train_seed(cfg: SeedConfig, out: str | Path = "results/seed", resume: bool = False) -> results.RunDir | None:
    """Train the seed model centrally on ``proxy_train`` and evaluate it (writes ``out/summary.json``).

    Under torchrun every rank calls this and only rank 0 returns the run (the others: None); otherwise this
    process launches ``train.workers`` ranks (`fedasr.distributed.run_ranks`).

    Args:
        cfg: the run's config.
        out: run folder: ``config.json``, ``rounds.jsonl``, ``summary.json``, ``checkpoint/`` (resumable,
            full precision) and ``model/`` (the seed model, fp16, small enough to commit).
        resume: continue from ``out/checkpoint`` if its config fingerprint matches.
    """
    torch.set_num_threads(1)
    cfg = replace(cfg, train=replace(cfg.train, workers=distributed.world_size(cfg.train.workers)))
    random.seed(cfg.train.seed), np.random.seed(cfg.train.seed), torch.manual_seed(cfg.train.seed)
    out = Path(out)
    corpus: dict = {}  # filled on rank 0 only
    done = distributed.run_ranks(lambda: _prepare(cfg, out, resume, corpus), _worker, cfg.train.workers)
    if done is None:  # a torchrun rank other than 0
        return None
    (job, world), run = done, results.RunDir(out)
    model, tokenizer, fcfg, state = load_checkpoint(out / "checkpoint")
    save_checkpoint(out / "model", model, tokenizer, fcfg, {"step": state["step"], "fingerprint": job["fingerprint"]},
                    half=True)
    model, tokenizer, fcfg, _ = load_checkpoint(out / "model")  # evaluate exactly what is committed
    reports = {s: evaluate(model, tokenizer, corpus[s], fcfg) for s in cfg.eval_splits if s in corpus}
    user = reports.get("user_test", {})
    summary = {
        "profile": cfg.profile, "preset": cfg.preset, "head": model.config.head, "units": tokenizer.kind,
        "params": count_parameters(model)["total"], "params_by_component": count_parameters(model),
        "train_seconds": round(state["trained_seconds"], 1), "steps": state["step"], "workers": world,
        "fingerprint": job["fingerprint"], "corpus": str(cfg.corpus_path()),
        "wer": {"proxy": reports.get("proxy_test", {}).get("wer"), "user": user.get("wer"),
                "new_terms": user.get("subsets", {}).get("new_terms", {}).get("wer"),
                "user_no_terms": user.get("subsets", {}).get("no_terms", {}).get("wer"),
                "real": reports.get("real", {}).get("wer")},
        "cer": {"proxy": reports.get("proxy_test", {}).get("cer"), "user": user.get("cer"),
                "real": reports.get("real", {}).get("cer")},
        "reports": reports, "synthetic_speech": data_lib.is_synthetic(cfg.corpus_path()),
    }
    run.write_summary(summary)
    return run


def ensure_seed(cfg: SeedConfig, out: str | Path = "results/seed") -> results.RunDir | None:
    """Return the seed run in ``out``, training it first only if it is missing or stale
    (made with another config or corpus: `seed_fingerprint`). Under torchrun rank 0 decides for all ranks."""
    cfg = replace(cfg, train=replace(cfg.train, workers=distributed.world_size(cfg.train.workers)))
    summary_path = Path(out) / "summary.json"
    fresh = summary_path.exists() and json.loads(summary_path.read_text()).get("fingerprint") == seed_fingerprint(cfg)
    if not distributed.from_rank0(fresh):
        return train_seed(cfg, out)
    if distributed.is_rank0():
        print(f"seed: {summary_path} is up to date with this config and corpus; not retraining")
        return results.RunDir(Path(out))
    return None


def cli_main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fedasr.train", description="Train the seed model centrally.",
                                 epilog="Under torchrun its world size replaces train.workers.")
    ap.add_argument("--config", help="TOML config, e.g. configs/seed/quick.toml (Default: built-in defaults)")
    ap.add_argument("--out", default="results/seed", help="run folder (Default: results/seed)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides, e.g. train.max-minutes=2 (values read as TOML, else as plain strings)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    ap.add_argument("--if-stale", action="store_true",
                    help="do nothing if OUT/summary.json was made with the same config and corpus")
    args = ap.parse_args(argv)
    try:
        cfg = config_lib.load(SeedConfig, args.config, config_lib.parse_overrides(args.set))
    except config_lib.ConfigError as e:
        ap.error(str(e))
    try:
        run = ensure_seed(cfg, args.out) if args.if_stale else train_seed(cfg, args.out, resume=args.resume)
    finally:
        distributed.leave()
    if run is not None:  # rank 0 (or the only process)
        s = run.summary()
        print(json.dumps({k: s[k] for k in ("profile", "preset", "params", "train_seconds", "wer", "cer")}, indent=2))


if __name__ == "__main__":
    cli_main()
