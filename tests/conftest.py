"""Shared fixtures: a small fake corpus (noise audio, real manifests) and a seed model trained on it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fedasr import data

WORDS = ["call", "mom", "set", "a", "timer", "play", "music", "lights", "on", "off"]


@pytest.fixture(scope="session")
def fake_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for split, n in [("proxy_train", 16), ("proxy_dev", 4), ("proxy_test", 4), ("user_train", 12), ("user_test", 4)]:
        utts = []
        for i in range(n):
            text = " ".join(rng.choice(WORDS, size=rng.integers(1, 4)))
            dur = 0.6 + 0.1 * (i % 5)
            path = root / "audio" / split / f"{split}{i}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, (0.1 * rng.standard_normal(int(dur * 16000))).astype("float32"), 16000)
            user = split.startswith("user")
            utts.append(data.Utterance(id=f"{split}{i}", path=str(path), text=text, duration=dur, speaker="s",
                                       voice="v", client=f"c{i % 3:04d}" if user else None, split=split,
                                       domain="user" if user else "proxy",
                                       terms=("mom",) if user and "mom" in text else ()))
        data.write_manifest(root / "manifests" / f"{split}.jsonl", utts, root)
    (root / "corpus.json").write_text(json.dumps({"profile": "fake", "sha256": {"x": "1"}}))
    return root




@pytest.fixture(scope="session")
def tiny_corpus() -> Path:
    """``data/tiny`` with its audio: its manifests are committed, its audio is not (a clean clone has none), so
    the generator runs here with ``--if-stale`` (about 20 s on 2 cores; a no-op when the audio is up to date)."""
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "fedasr.corpus", "--profile", "tiny", "--out", "data/tiny", "--if-stale"],
                   cwd=repo, check=True, capture_output=True)
    return repo / "data" / "tiny"


SMALL_MODEL = {"d_model": 32, "num_heads": 2, "ffn_dim": 64, "num_layers": 2, "subsampling_channels": 8}


@pytest.fixture(scope="session")
def fake_seed(fake_corpus, tmp_path_factory):
    """A seed model trained 2 steps on the fake corpus: folder with model/, checkpoint/, summary.json."""
    from fedasr import train

    out = tmp_path_factory.mktemp("seed") / "seed"
    cfg = train.SeedConfig(profile="fake", corpus=str(fake_corpus), preset="tiny", model=SMALL_MODEL,
                           train=train.TrainConfig(max_steps=2, batch_seconds=3.0, workers=1, eval_every_steps=0,
                                                   warmup_steps=2),
                           eval_splits=["proxy_test"])
    train.train_seed(cfg, out=out)
    return out
