"""Seed training on DistributedDataParallel (issue 19): 2 DDP ranks make exactly the update of one process that
sums both ranks' gradients (the hand-written all_reduce it replaced), and torchrun's environment is detected."""

import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fedasr import config, distributed, train
from fedasr import features as feats_lib

SMALL_MODEL = {"d_model": 32, "num_heads": 2, "ffn_dim": 64, "num_layers": 2, "subsampling_channels": 8}


def _cfg(corpus, **train_kw):
    kw = {"max_minutes": 60.0, "max_steps": 3, "batch_seconds": 3.0, "workers": 2, "log_every_steps": 1,
          "eval_every_steps": 0, "checkpoint_every_steps": 0, "warmup_steps": 2, "peak_lr": 1e-3}
    kw.update(train_kw)
    return train.SeedConfig(profile="fake", corpus=str(corpus), preset="tiny", model=SMALL_MODEL,
                            train=train.TrainConfig(**kw), eval_splits=["proxy_test"])


def _one_process_reference(cfg: train.SeedConfig, out: Path, world: int) -> tuple[dict, list[float]]:
    """The pre-DDP arithmetic in one process: each step, every rank's summed-loss gradient (same batch, same
    dropout seed as `train._worker`), added rank 0 + rank 1, divided by the global utterance count, clipped,
    one Adam step. Returns the final parameters and the per-step loss per utterance."""
    tcfg = cfg.train
    torch.set_num_threads(1)
    random.seed(tcfg.seed), np.random.seed(tcfg.seed), torch.manual_seed(tcfg.seed)  # as train_seed seeds
    job = train._prepare(cfg, out, False, {})
    model = train.build_model(job["model_config"])
    model.load_state_dict(job["init_state"])
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.peak_lr, betas=(0.9, tcfg.adam_beta2), eps=1e-9)
    params = [p for p in model.parameters() if p.requires_grad]
    shards = []
    for rank in range(world):
        utts = job["train"][rank::world]
        feats = train.featurize(utts, cfg.features)
        shards.append((feats_lib.bucket_by_duration([u for u in utts if u.id in feats], tcfg.batch_seconds,
                                                    shuffle=False), feats))
    losses = []
    model.train()
    for step in range(tcfg.max_steps):
        grads, n, loss = None, 0, 0.0
        for rank, (batches, feats) in enumerate(shards):
            _, b = train._batch_order(step, len(batches), tcfg, rank)
            torch.manual_seed((tcfg.seed * 1_000_003 + rank) * 1_000_003 + step)
            opt.zero_grad(set_to_none=False)
            loss_sum, info = model.loss(feats_lib.collate(batches[b], feats, job["tokenizer"]), reduction="sum",
                                        on_invalid="skip")
            loss_sum.backward()
            g = [p.grad.clone() for p in params]
            grads = g if grads is None else [a + c for a, c in zip(grads, g)]
            n, loss = n + info["num_utterances"], loss + info["loss_sum"]
        for p, g in zip(params, grads):
            p.grad.copy_(g).div_(max(n, 1.0))
        for group in opt.param_groups:
            group["lr"] = train._lr(step + 1, tcfg, train.budget_progress(step + 1, 0.0, tcfg))
        torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        opt.step()
        losses.append(loss / n)
    return dict(model.named_parameters()), losses


def _trained_parameters(run_dir: Path) -> dict:
    model, *_ = train.load_checkpoint(run_dir / "checkpoint")
    return dict(model.named_parameters())


def test_two_ddp_ranks_equal_one_process_summing_both_shards(fake_corpus, tmp_path):
    cfg = _cfg(fake_corpus)
    run = train.train_seed(cfg, out=tmp_path / "ddp")
    ref, ref_losses = _one_process_reference(cfg, tmp_path / "ref", world=2)
    got = _trained_parameters(tmp_path / "ddp")
    # bitwise: with 2 ranks every gradient element is g0 + g1 in either path (BatchNorm running statistics are
    # buffers, per rank, not compared: rank 0's are checkpointed and training mode never reads them)
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref), [k for k in ref if not torch.equal(got[k], ref[k])]
    assert [r["loss_per_utterance"] for r in run.rounds()] == ref_losses
    assert run.summary()["workers"] == 2 and run.summary()["steps"] == cfg.train.max_steps


def test_one_worker_needs_no_process_group(fake_corpus, tmp_path):
    cfg = _cfg(fake_corpus, workers=1, max_steps=2)
    train.train_seed(cfg, out=tmp_path / "one")
    ref, _ = _one_process_reference(cfg, tmp_path / "ref", world=1)
    got = _trained_parameters(tmp_path / "one")
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert not torch.distributed.is_initialized()


def test_torchrun_environment_is_detected():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert distributed.torchrun_env(env) == distributed.RankInfo(rank=3, world=8, local_rank=1)
    assert distributed.torchrun_env({"PATH": "/bin"}) is None  # plain `python -m fedasr.train`
    assert distributed.torchrun_env({"MASTER_ADDR": "h", "MASTER_PORT": "1"}) is None  # a cluster shell's exports
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        distributed.torchrun_env({k: v for k, v in env.items() if k != "MASTER_ADDR"})


def test_without_torchrun_the_configured_workers_count(monkeypatch):
    for k in distributed.TORCHRUN_KEYS:
        monkeypatch.delenv(k, raising=False)
    assert distributed.world_size(2) == 2 and distributed.world_size(0) == 1
    assert distributed.from_rank0({"x": 1}) == {"x": 1} and distributed.is_rank0()


@pytest.mark.slow
def test_torchrun_entry_trains_the_same_weights(fake_corpus, tmp_path):
    cfg = _cfg(fake_corpus, max_steps=2)
    train.train_seed(cfg, out=tmp_path / "spawned")
    flat = config.flatten(config.to_dict(replace(cfg, train=replace(cfg.train, workers=1))))
    overrides = [f"{k}={json.dumps(v)}" for k, v in flat.items() if v is not None]  # JSON values read as TOML
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "fedasr.train",
                    "--out", str(tmp_path / "torchrun"), "--set", *overrides], check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parents[1])
    a, b = _trained_parameters(tmp_path / "spawned"), _trained_parameters(tmp_path / "torchrun")
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = train.results.RunDir(tmp_path / "torchrun").summary()
    assert summary["workers"] == 2  # the launcher's world size replaced train.workers = 1
