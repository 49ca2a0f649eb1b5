"""Central training plumbing on a small fake corpus (noise audio, real manifests): runs, logs,
checkpoints, resumes and evaluates. Learning itself is measured by `make seed`, not here."""

import json

import numpy as np
import pytest
import torch

from fedasr import config, data, train


def _cfg(corpus, **train_kw):
    kw = dict(max_minutes=5.0, max_steps=4, batch_seconds=3.0, workers=1, log_every_steps=1, eval_every_steps=2,
              eval_max_utterances=4, checkpoint_every_steps=2, warmup_steps=2)
    kw.update(train_kw)
    return train.SeedConfig(profile="fake", corpus=str(corpus), preset="tiny",
                            model={"d_model": 32, "num_heads": 2, "ffn_dim": 64, "num_layers": 2,
                                   "subsampling_channels": 8},
                            train=train.TrainConfig(**kw), eval_splits=["proxy_test", "user_test"])


def test_train_seed_writes_run_and_checkpoint(fake_corpus, tmp_path):
    run = train.train_seed(_cfg(fake_corpus), out=tmp_path / "seed")
    s = run.summary()
    assert s["steps"] == 4 and s["params"] > 0 and s["head"] == "ctc"
    assert set(s["wer"]) >= {"proxy", "user", "new_terms", "real"}
    assert 0 <= s["wer"]["proxy"] and s["wer"]["real"] is None  # no real split in this corpus
    rows = run.rounds()
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "dev_wer" in rows[1]
    assert all(np.isfinite(r["loss_per_utterance"]) for r in rows)
    cfg_json = json.loads(run.config_path.read_text())
    assert cfg_json["config"]["train"]["max-steps"] == 4
    # the committed fp16 seed and the full-precision checkpoint give (nearly) the same outputs
    m16, tok, fcfg, _ = train.load_checkpoint(tmp_path / "seed" / "model")
    m32, _, _, state = train.load_checkpoint(tmp_path / "seed" / "checkpoint")
    assert state["step"] == 4 and tok.kind == "char"
    x = torch.randn(1, 120, 80)
    m16.eval(), m32.eval()
    e16, _ = m16.encode(x, torch.tensor([120]))
    e32, _ = m32.encode(x, torch.tensor([120]))
    assert torch.allclose(e16, e32, atol=0.05)


def test_resume_reaches_the_same_weights(fake_corpus, tmp_path):
    straight = train.train_seed(_cfg(fake_corpus, max_steps=4, eval_every_steps=0), out=tmp_path / "a")
    train.train_seed(_cfg(fake_corpus, max_steps=2, eval_every_steps=0), out=tmp_path / "b")
    # continue the 2-step run to 4 steps: same fingerprint requires the same config, so patch the stored step budget
    cfg4 = _cfg(fake_corpus, max_steps=4, eval_every_steps=0)
    ck = torch.load(tmp_path / "b" / "checkpoint" / "model.pt", weights_only=False)
    ck["state"]["fingerprint"] = train.seed_fingerprint(cfg4)
    torch.save(ck, tmp_path / "b" / "checkpoint" / "model.pt")
    train.train_seed(cfg4, out=tmp_path / "b", resume=True)
    a = torch.load(straight.path / "checkpoint" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoint" / "model.pt", weights_only=False)["state_dict"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_two_workers_train_with_gloo(fake_corpus, tmp_path):
    run = train.train_seed(_cfg(fake_corpus, workers=2, max_steps=2, eval_every_steps=0), out=tmp_path / "ddp")
    assert run.summary()["workers"] == 2 and run.summary()["steps"] == 2


def test_unknown_config_key_is_named(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[train]\nmax-minute = 3\n")
    with pytest.raises(config.ConfigError, match="train.max-minute.*max-minutes"):
        config.load(train.SeedConfig, p)


def test_bad_audio_in_eval_is_counted_not_fatal(fake_corpus, tmp_path):
    utts = data.load_corpus(fake_corpus)["proxy_test"]
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"not audio")
    import dataclasses

    utts = utts + [dataclasses.replace(utts[0], id="broken", path=str(bad))]
    model, tok, fcfg, _ = train.load_checkpoint(train.train_seed(_cfg(fake_corpus, max_steps=1, eval_every_steps=0),
                                                                 out=tmp_path / "s").path / "model")
    rep = train.evaluate(model, tok, utts, fcfg)
    assert rep["skipped"] == 1 and rep["utterances"] == 4  # the broken file is counted; the other 4 are scored


def test_cosine_schedule_spends_the_budget():
    t = train.TrainConfig(peak_lr=1e-3, warmup_steps=10, lr_schedule="cosine", final_lr_fraction=0.1,
                          max_minutes=10.0, max_steps=0)
    assert train._lr(5, t, 0.0) == pytest.approx(5e-4)  # warm-up is shared with inverse-sqrt
    assert train._lr(10, t, 0.0) == pytest.approx(1e-3)
    assert train._lr(500, t, 0.5) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert train._lr(500, t, 1.0) == pytest.approx(1e-4)
    lrs = [train._lr(50, t, p / 10) for p in range(11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    # progress is the larger of the time and step fractions, clipped to [0, 1]
    assert train.budget_progress(0, 300.0, t) == pytest.approx(0.5)
    t.max_steps = 100
    assert train.budget_progress(80, 300.0, t) == pytest.approx(0.8)
    assert train.budget_progress(200, 9e9, t) == 1.0
    # the default keeps calibration.md's run-length-independent schedule
    d = train.TrainConfig(peak_lr=1e-3, warmup_steps=100)
    assert train._lr(400, d, 0.9) == pytest.approx(5e-4)


def test_cooldown_anneals_the_end_of_inverse_sqrt():
    t = train.TrainConfig(peak_lr=1e-3, warmup_steps=100, cooldown_fraction=0.25, final_lr_fraction=0.0)
    assert train._lr(400, t, 0.75) == pytest.approx(5e-4)  # before the cooldown: plain inverse-sqrt
    assert train._lr(400, t, 0.875) == pytest.approx(2.5e-4)  # half-way down
    assert train._lr(400, t, 1.0) == pytest.approx(0.0)


def test_constant_schedule_holds_peak_until_the_cooldown():
    t = train.TrainConfig(peak_lr=1e-3, warmup_steps=100, lr_schedule="constant", cooldown_fraction=0.25,
                          final_lr_fraction=0.0)
    assert train._lr(50, t, 0.0) == pytest.approx(5e-4)  # the shared warm-up
    assert train._lr(4000, t, 0.75) == pytest.approx(1e-3)  # stable: no decay with the step
    assert train._lr(4000, t, 0.875) == pytest.approx(5e-4)
    assert train._lr(4000, t, 1.0) == pytest.approx(0.0)


def test_bad_schedule_settings_are_named(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('[train]\nlr-schedule = "linear"\n')
    with pytest.raises(config.ConfigError, match="lr-schedule.*linear"):
        config.load(train.SeedConfig, p)
    p.write_text('[train]\ncooldown-fraction = 1.5\n')
    with pytest.raises(config.ConfigError, match="cooldown-fraction"):
        config.load(train.SeedConfig, p)


def test_two_workers_follow_one_cosine_schedule(fake_corpus, tmp_path):
    cfg = _cfg(fake_corpus, workers=2, max_steps=4, eval_every_steps=0, lr_schedule="cosine", peak_lr=1e-3,
               final_lr_fraction=0.0, warmup_steps=1, max_minutes=600.0)
    rows = train.train_seed(cfg, out=tmp_path / "ddp").rounds()
    # rank 0's clock is shared in the all_reduce; with a 600-minute budget the step fraction decides
    for r in rows:
        assert r["lr"] == pytest.approx(train._lr(r["step"], cfg.train, r["step"] / 4), rel=1e-3)
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_checkpoint_provenance_names_the_seed(fake_seed, tmp_path):
    import hashlib

    prov = train.checkpoint_provenance(fake_seed / "model")
    assert prov["sha256"] == hashlib.sha256((fake_seed / "model" / "model.pt").read_bytes()).hexdigest()
    assert prov["fingerprint"] == json.loads((fake_seed / "summary.json").read_text())["fingerprint"]
    assert prov["step"] == 2
    with pytest.raises(FileNotFoundError, match="make seed"):
        train.checkpoint_provenance(tmp_path)
