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
