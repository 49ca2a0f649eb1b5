"""Tests for fedasr.features: log-mel shapes, normalisation stats, SpecAugment, batching, bucketing."""

import numpy as np
import pytest
import soundfile as sf
import torch

from fedasr.data import DataError, Utterance, load_audio
from fedasr.features import (
    FeatureConfig,
    GlobalStatsNormalization,
    LogMel,
    SpecAugment,
    bucket_by_duration,
    collate,
    compute_stats,
    eval_pipeline,
    make_batch,
)
from fedasr.tokenizer import CharTokenizer

torch.set_num_threads(1)
SR = 16_000


def utt(uid: str, duration: float, text: str = "hello", path: str = "") -> Utterance:
    return Utterance(id=uid, path=path, text=text, duration=duration, speaker="s", voice="v",
                     client=None, split="proxy_train", domain="proxy")


def tone(seconds: float, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def test_logmel_shape_and_floor():
    cfg = FeatureConfig()
    assert (cfg.win_length, cfg.hop_length) == (400, 160)
    feats = LogMel(cfg)(torch.from_numpy(tone(1.0)))
    assert feats.shape == (SR // 160 + 1, 80) and feats.dtype == torch.float32
    silent = LogMel(cfg)(torch.zeros(SR))
    assert torch.allclose(silent, torch.full_like(silent, np.log(cfg.log_floor)))
    # the loudest mel bin moves up with the tone's frequency
    high = LogMel(cfg)(torch.from_numpy(tone(1.0, freq=3000.0)))
    assert feats.mean(0).argmax() < high.mean(0).argmax()


def test_compute_stats_and_normalisation():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(n, 80, generator=g) * 3 + 5 for n in (50, 120, 7)]
    mean, std = compute_stats(feats)
    allf = torch.cat(feats)
    assert torch.allclose(mean, allf.mean(0), atol=1e-5)
    assert torch.allclose(std, allf.std(0, unbiased=False), atol=1e-5)
    norm = GlobalStatsNormalization(80)
    assert torch.equal(norm(allf), allf)  # identity before stats are set
    norm.set_stats(mean, std)
    z = norm(allf)
    assert torch.allclose(z.mean(0), torch.zeros(80), atol=1e-4)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(80), atol=1e-4)
    assert set(norm.state_dict()) == {"mean", "std"}  # buffers: they travel in checkpoints
    with pytest.raises(ValueError, match="std > 0"):
        norm.set_stats(mean, torch.zeros(80))
    with pytest.raises(ValueError, match="at least one frame"):
        compute_stats([])


def test_specaugment_train_only_and_bounded():
    cfg = FeatureConfig(freq_masks=2, freq_mask_bins=10, time_masks=2, time_mask_frames=20, time_mask_ratio=0.1)
    x = torch.randn(300, 80)
    aug = SpecAugment(cfg)
    torch.manual_seed(0)
    y = aug.train()(x)
    changed_frames = (y != x).all(dim=1).sum()  # frames masked over every bin = time-masked frames
    changed_bins = (y != x).all(dim=0).sum()
    assert 0 < changed_frames <= 2 * 30  # ratio binds: ≤ 10% of 300 frames per mask
    assert 0 < changed_bins <= 2 * 10
    assert torch.equal(aug.eval()(x), x)
    assert torch.equal(SpecAugment(FeatureConfig()).train()(x), x)  # default: off


def test_front_end_is_deterministic_and_training_augments_in_collate():
    cfg = FeatureConfig(time_masks=2)
    wav = torch.from_numpy(tone(0.5))
    ev = eval_pipeline(cfg)
    feats = {"u": ev(wav)}
    assert torch.equal(ev(wav), feats["u"])
    plain = collate([utt("u", 0.5)], feats, CharTokenizer())
    assert torch.equal(plain.features[0], feats["u"])
    torch.manual_seed(0)
    augmented = collate([utt("u", 0.5)], feats, CharTokenizer(), augment=SpecAugment(cfg).train())
    assert not torch.equal(augmented.features[0], feats["u"])  # how `fedasr.train` applies SpecAugment
    assert torch.equal(feats["u"], ev(wav))  # the cached features are not masked in place


def test_make_batch_from_audio_files(tmp_path):
    items = []
    for i, (secs, text) in enumerate([(0.5, "call mom"), (1.2, "play some music"), (0.8, "stop")]):
        path = tmp_path / f"u{i}.flac"
        sf.write(path, tone(secs, 300 + 100 * i, seed=i), SR)
        u = utt(f"u{i}", secs, text, str(path))
        items.append((u, load_audio(u)))
    tok = CharTokenizer()
    batch = make_batch(items, tok, eval_pipeline(FeatureConfig()))
    assert batch.features.shape == (3, 1.2 * 100 + 1, 80)
    assert batch.feature_lengths.tolist() == [51, 121, 81]
    assert batch.targets.shape == (3, len("play some music"))
    assert batch.target_lengths.tolist() == [8, 15, 4]
    assert batch.ids == ("u0", "u1", "u2") and batch.texts[2] == "stop"
    for i, (u, _) in enumerate(items):  # order kept, padding zero
        assert tok.decode(batch.targets[i, : batch.target_lengths[i]].tolist()) == u.text
        assert (batch.features[i, batch.feature_lengths[i]:] == 0).all()
        assert (batch.targets[i, batch.target_lengths[i]:] == 0).all()


def test_make_batch_rejects_oov_and_empty():
    fe = eval_pipeline(FeatureConfig())
    with pytest.raises(DataError, match="'bad1'.*outside"):
        make_batch([(utt("ok", 0.2), tone(0.2)), (utt("bad1", 0.2, "Hello"), tone(0.2))], CharTokenizer(), fe)
    with pytest.raises(DataError, match="'bad2'.*empty transcript"):
        make_batch([(utt("bad2", 0.2, ""), tone(0.2))], CharTokenizer(), fe)


def test_bucket_by_duration():
    rng = np.random.default_rng(0)
    utts = [utt(f"u{i}", float(d)) for i, d in enumerate(rng.uniform(0.5, 6.0, 200))] + [utt("long", 45.0)]
    batches = bucket_by_duration(utts, max_seconds=30, shuffle=True, seed=1)
    assert sorted(u.id for b in batches for u in b) == sorted(u.id for u in utts)  # each once
    for b in batches:
        assert len(b) * max(u.duration for u in b) <= 30 or len(b) == 1
    assert ["long"] in [[u.id for u in b] for b in batches]  # too long: alone, not dropped
    again = bucket_by_duration(utts, max_seconds=30, shuffle=True, seed=1)
    assert [[u.id for u in b] for b in again] == [[u.id for u in b] for b in batches]
    other = bucket_by_duration(utts, max_seconds=30, shuffle=True, seed=2)
    assert [[u.id for u in b] for b in other] != [[u.id for u in b] for b in batches]
    sg = bucket_by_duration(utts, max_seconds=30, shuffle=True, seed=1, sortagrad=True)
    longest = [max(u.duration for u in b) for b in sg]
    assert longest == sorted(longest)  # SortaGrad: short batches first
    with pytest.raises(ValueError):
        bucket_by_duration(utts, max_seconds=0)
