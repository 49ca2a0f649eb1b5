"""Log-mel front end, global mean/variance normalisation, SpecAugment, batching and bucketing.

Follows the torchaudio Conformer RNN-T recipe (``examples/asr/librispeech_conformer_rnnt``):
transforms are `nn.Module`s composed with `nn.Sequential`. The front end is `eval_pipeline`; training
adds `SpecAugment` per utterance (`collate`'s ``augment``).
Front end as in Conformer (Gulati et al. 2020, paper.md §2.8.6): 80 log-mel channels, 25 ms window,
10 ms hop at 16 kHz.

`GlobalStatsNormalization` is defined here but lives inside `fedasr.model.ASRModel` (its first
stage), so the statistics travel in every model checkpoint and every federated download.
The front end here therefore produces *un-normalised* log-mels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torchaudio
from torch import nn

from .data import SAMPLE_RATE, Batch, DataError, Utterance

__all__ = [
    "FeatureConfig",
    "LogMel",
    "SpecAugment",
    "GlobalStatsNormalization",
    "compute_stats",
    "eval_pipeline",
    "collate",
    "make_batch",
    "bucket_by_duration",
]


@dataclass
class FeatureConfig:
    """Front end and SpecAugment knobs.

    SpecAugment is off by default: calibration.md found that on a tiny CPU budget it only slows
    the exit from the blank plateau. "Light" (calibration): 2 freq masks ≤10 bins, 2 time masks
    ≤20 frames, ≤10% of the utterance. Conformer (Gulati et al.): 2 freq masks ≤27 bins,
    10 time masks with ratio 0.05 (set time_mask_frames large, e.g. 10000, so the ratio binds).
    """

    sample_rate: int = SAMPLE_RATE  # Hz; audio at another rate is rejected by fedasr.data.load_audio
    n_mels: int = 80  # mel channels (F)
    win_ms: float = 25.0  # analysis window, ms (400 samples at 16 kHz)
    hop_ms: float = 10.0  # frame shift, ms (160 samples); 100 frames per second
    log_floor: float = 1e-6  # mel power floor before log, so silence gives log(1e-6) not -inf
    freq_masks: int = 0  # SpecAugment frequency masks per utterance (0 = off)
    freq_mask_bins: int = 10  # maximum width of each frequency mask, mel bins
    time_masks: int = 0  # SpecAugment time masks per utterance (0 = off)
    time_mask_frames: int = 20  # maximum width of each time mask, frames
    time_mask_ratio: float = 0.1  # ...and at most this share of the utterance's frames

    @property
    def hop_length(self) -> int:
        return round(self.sample_rate * self.hop_ms / 1000)

    @property
    def win_length(self) -> int:
        return round(self.sample_rate * self.win_ms / 1000)


class LogMel(nn.Module):
    """Waveform ``(N,)`` → log-mel features ``(T, F)`` with ``T = N // hop + 1``."""

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.win_length,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            n_mels=cfg.n_mels,
        )
        self.log_floor = cfg.log_floor

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Args: waveform ``(N,)`` float. Returns: ``(T, F)`` float32."""
        mel = self.mel(waveform.float())  # (F, T)
        return mel.clamp(min=self.log_floor).log().transpose(0, 1)


class SpecAugment(nn.Module):
    """SpecAugment (Park et al. 2019) on one utterance ``(T, F)``, training only.

    Built on ``torchaudio.functional.mask_along_axis`` rather than ``torchaudio.transforms.SpecAugment``
    because the latter applies its ratio ``p`` to frequency masks as well (``≤ 80·p`` bins).
    Masked cells get the utterance mean, as ``torchaudio.transforms.SpecAugment`` does by default;
    after global normalisation that is close to zero.
    """

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Args: feats ``(T, F)``. Returns: masked copy ``(T, F)``."""
        c = self.cfg
        if not self.training or (c.freq_masks == 0 and c.time_masks == 0):
            return feats
        x = feats.transpose(0, 1)  # (F, T): torchaudio's axis convention
        value = float(x.mean())
        for _ in range(c.freq_masks):
            x = torchaudio.functional.mask_along_axis(x, c.freq_mask_bins, value, axis=0)
        for _ in range(c.time_masks):
            x = torchaudio.functional.mask_along_axis(x, c.time_mask_frames, value, axis=1, p=c.time_mask_ratio)
        return x.transpose(0, 1)


class GlobalStatsNormalization(nn.Module):
    """Per-channel ``(x - mean) / std`` with training-set statistics held as buffers.

    As in the torchaudio recipe's ``GlobalStatsNormalization``, but the statistics are buffers
    (not a JSON file) so they are part of the model's ``state_dict``. Defaults (0, 1) are the identity.
    """

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

    @torch.no_grad()
    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Copy in statistics from `compute_stats` (shape ``(F,)`` each)."""
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(f"stats of shape {tuple(mean.shape)}/{tuple(std.shape)}, expected {tuple(self.mean.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("feature statistics must be finite with std > 0")
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Args: feats ``(..., F)``. Returns: normalised ``(..., F)``."""
        return (feats - self.mean) / self.std


@torch.no_grad()
def compute_stats(features: Iterable[torch.Tensor], min_std: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation per channel over all frames of a training set.

    Args:
        features: un-normalised features ``(T, F)`` per utterance (padding must not be included).
        min_std: floor on std, so a constant channel does not divide by zero.

    Returns:
        ``(mean, std)``, each ``(F,)`` float32. Sums run in float64 to avoid cancellation.
    """
    n, s, ss = 0, None, None
    for f in features:
        f = f.double()
        s = f.sum(0) if s is None else s + f.sum(0)
        ss = (f * f).sum(0) if ss is None else ss + (f * f).sum(0)
        n += f.shape[0]
    if n == 0:
        raise ValueError("compute_stats needs at least one frame")
    mean = s / n
    var = (ss / n - mean * mean).clamp(min=0)
    return mean.float(), var.sqrt().clamp(min=min_std).float()


def eval_pipeline(cfg: FeatureConfig) -> nn.Sequential:
    """Evaluation front end: waveform ``(N,)`` → log-mel ``(T, F)``."""
    return nn.Sequential(LogMel(cfg)).eval()


def collate(utts: Sequence[Utterance], feats: dict[str, torch.Tensor], tokenizer,
            augment: nn.Module | None = None) -> Batch:
    """Tokenise ``utt.text`` and pad the features ``(T, F)`` of ``utts`` (keyed by id) into a `Batch`.

    Order is kept, nothing is sorted. ``augment`` (e.g. `SpecAugment`) is applied per utterance.

    Returns:
        `Batch` with features ``(B, T, F)`` zero-padded, targets ``(B, U)`` padded with 0 (blank).

    Raises:
        DataError: an empty transcript or one the tokenizer cannot encode; names the utterance.
    """
    if not utts:
        raise ValueError("collate got no utterances")
    xs, ys = [], []
    for u in utts:
        if not u.text.strip():
            raise DataError(f"utterance {u.id!r} has an empty transcript")
        try:
            ys.append(torch.tensor(tokenizer.encode(u.text), dtype=torch.long))
        except ValueError as e:
            raise DataError(f"utterance {u.id!r}: {e}") from None
        xs.append(augment(feats[u.id]) if augment is not None else feats[u.id])
    return Batch(
        features=nn.utils.rnn.pad_sequence(xs, batch_first=True),
        feature_lengths=torch.tensor([x.shape[0] for x in xs], dtype=torch.long),
        targets=nn.utils.rnn.pad_sequence(ys, batch_first=True, padding_value=0),
        target_lengths=torch.tensor([len(y) for y in ys], dtype=torch.long),
        ids=tuple(u.id for u in utts),
        texts=tuple(u.text for u in utts),
    )


@torch.no_grad()
def make_batch(
    items: Iterable[tuple[Utterance, np.ndarray]],
    tokenizer,
    frontend: nn.Module,
) -> Batch:
    """Featurise ``(utterance, waveform (N,))`` pairs with ``frontend`` and `collate` them into a `Batch`."""
    items = list(items)
    feats = {u.id: frontend(torch.as_tensor(x, dtype=torch.float32)) for u, x in items}
    return collate([u for u, _ in items], feats, tokenizer)


def bucket_by_duration(
    utterances: Sequence[Utterance],
    max_seconds: float,
    shuffle: bool = True,
    seed: int = 0,
    sortagrad: bool = False,
) -> list[list[Utterance]]:
    """Group utterances into length-sorted batches of at most ``max_seconds`` *padded* audio.

    A batch's cost is ``len(batch) * longest duration`` (what padding makes the model compute).
    Utterances are sorted by duration and packed greedily; one longer than ``max_seconds`` gets a
    batch of its own rather than being dropped.

    Args:
        utterances: what to batch.
        max_seconds: padded-audio budget per batch, seconds (calibration: 30 s for the tiny preset).
        shuffle: shuffle the order of batches (contents stay length-sorted).
        seed: seed for the shuffle.
        sortagrad: return batches shortest-first regardless of ``shuffle`` ("SortaGrad",
            Amodei et al. 2016: use for the first epoch only).

    Returns:
        list of batches (lists of utterances).
    """
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    batches: list[list[Utterance]] = []
    cur: list[Utterance] = []
    for u in sorted(utterances, key=lambda u: (u.duration, u.id)):
        # sorted ascending, so u is the longest of cur + [u]
        if cur and (len(cur) + 1) * u.duration > max_seconds:
            batches.append(cur)
            cur = []
        cur.append(u)
    if cur:
        batches.append(cur)
    if shuffle and not sortagrad:
        random.Random(seed).shuffle(batches)
    return batches
