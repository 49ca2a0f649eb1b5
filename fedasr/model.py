"""Conformer ASR model: conv subsampling + torchaudio Conformer + CTC or RNN-T head; presets up to the paper's 130M.

Architecture (paper.md §2.8.6; Gulati et al. 2020 "Conformer"):

* `GlobalStatsNormalization` of the log-mels (buffers, so the statistics travel with the model);
* `ConvSubsampling`: 4× in time (10 ms → 40 ms frames), two Conv2d stride 2 + ReLU, then Linear;
* ``torchaudio.models.Conformer`` with ``use_group_norm=True``: the convolution module's BatchNorm
  keeps running statistics that would be averaged across non-IID clients (and depend on each client's
  batch), so GroupNorm(1 group) is used instead (DESIGN.md §6). torchaudio's Conformer has **no
  positional encoding** (plain ``nn.MultiheadAttention``, not relative positions): position enters only
  through the depthwise convolution in each block;
* a head behind one API: CTC (Graves et al. 2006; CPU-sized presets) or RNN-T (Graves 2012): LSTM
  prediction network + additive tanh joiner, trained with ``torchaudio.functional.rnnt_loss``.

Id 0 is the blank for both heads (`fedasr.tokenizer`); heads have ``vocab_size + 1`` outputs.

Padding: torchaudio's ``ConformerLayer.forward`` lets padded frames into the convolution module
(the depthwise conv reads them at the utterance's end, and GroupNorm's statistics include them), so an
utterance's encoding depends on how much padding its batch adds. A tiny model overfit on two random
utterances learned to tell them apart *by their padding* and decoded the shorter one wrongly when it
was alone. With ``mask_padding=True`` (default) `ASRModel` runs each block from torchaudio's own
submodules and weights, but zeroes padded frames before the depthwise conv and takes GroupNorm's
statistics over valid frames only; every utterance then encodes exactly as it would alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from torch.utils.checkpoint import checkpoint

from .data import Batch, DataError
from .features import GlobalStatsNormalization
from .tokenizer import BLANK

__all__ = [
    "ModelConfig",
    "PRESETS",
    "model_config",
    "build_model",
    "conformer_asr",
    "ASRModel",
    "ConvSubsampling",
    "Predictor",
    "Joiner",
    "rnnt_loss",
    "count_parameters",
]


@dataclass
class ModelConfig:
    """Shape and head of an `ASRModel` (saved inside checkpoints as ``dataclasses.asdict``)."""

    head: Literal["ctc", "rnnt"] = "ctc"  # CTC learns on CPU in minutes; RNN-T is the paper's (calibration.md)
    vocab_size: int = 28  # non-blank symbols = Tokenizer.vocab_size (28 characters)
    n_mels: int = 80  # input feature channels (F)
    subsampling_channels: int = 64  # channels of both Conv2d layers of the 4x subsampling
    d_model: int = 144  # Conformer width (D)
    num_heads: int = 4  # attention heads; must divide d_model
    ffn_dim: int = 576  # feed-forward hidden size, usually 4 * d_model
    num_layers: int = 6  # Conformer blocks
    conv_kernel: int = 31  # depthwise conv kernel, frames; torchaudio needs it odd (Gulati's 32 -> 31)
    dropout: float = 0.1  # in subsampling, Conformer blocks and predictor
    pred_embed_dim: int = 320  # RNN-T prediction network: token embedding size
    pred_hidden_dim: int = 320  # ...LSTM hidden size
    pred_num_layers: int = 1  # ...LSTM layers
    joiner_dim: int = 256  # RNN-T joint network hidden size
    ctc_aux_weight: float = 0.0  # RNN-T: loss = RNN-T + w · CTC of an auxiliary CTC head on the encoder (0 = no head)
    checkpoint_blocks: tuple[int, ...] = ()  # Conformer block indices recomputed in backward (memory, paper §2.3)
    mask_padding: bool = True  # padding-invariant conv module (~5-10% slower); False = torchaudio's forward as is

    def __post_init__(self) -> None:
        self.checkpoint_blocks = tuple(int(i) for i in self.checkpoint_blocks)  # TOML/JSON give lists
        if self.head not in ("ctc", "rnnt"):
            raise ValueError(f"head must be 'ctc' or 'rnnt', got {self.head!r}")
        if self.ctc_aux_weight < 0 or (self.ctc_aux_weight and self.head != "rnnt"):
            raise ValueError(f"ctc_aux_weight must be >= 0 and only with head 'rnnt', got {self.ctc_aux_weight}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd for torchaudio's 'same' padding, got {self.conv_kernel}")
        bad = [i for i in self.checkpoint_blocks if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"checkpoint_blocks {bad} out of range for {self.num_layers} Conformer blocks")


PRESETS: dict[str, ModelConfig] = {
    # calibration.md's recipe that leaves the blank plateau in ~2 min on one CPU thread: 3.13M params
    "tiny": ModelConfig(),
    # intermediate (~20M): Conformer-S/M-like encoder with a small RNN-T for longer CPU runs
    "small": ModelConfig(
        head="rnnt", vocab_size=256, subsampling_channels=128, d_model=256, num_heads=4, ffn_dim=1024,
        num_layers=12, pred_embed_dim=320, pred_hidden_dim=320, pred_num_layers=1, joiner_dim=320,
    ),
    # paper: 130M (±3%) Conformer RNN-T; the paper gives only the size. Conformer-L (17 x 512, 8 heads,
    # kernel 32, Gulati et al.) with a production-style 2 x 640 LSTM predictor, 640 joiner and 4096
    # word-pieces comes to 122.9M; one more block (18, as in cascaded causal + non-causal encoders)
    # gives 129.0M. paper.md §2.8.6 has the arithmetic.
    "paper": ModelConfig(
        head="rnnt", vocab_size=4096, subsampling_channels=512, d_model=512, num_heads=8, ffn_dim=2048,
        num_layers=18, conv_kernel=31, pred_embed_dim=640, pred_hidden_dim=640, pred_num_layers=2,
        joiner_dim=640,
    ),
}


def model_config(preset: str, **overrides: Any) -> ModelConfig:
    """Return preset ``preset`` with fields replaced by ``overrides`` (unknown names raise)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r} (expected one of {sorted(PRESETS)})")
    overrides = {k.replace("-", "_"): v for k, v in overrides.items()}  # TOML's kebab-case or Python's names
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown := sorted(set(overrides) - known):
        raise ValueError(f"[model]: unknown key(s) {unknown}; ModelConfig has {sorted(known)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


def build_model(cfg: ModelConfig | str) -> "ASRModel":
    """Build an `ASRModel` from a config or a preset name."""
    return ASRModel(model_config(cfg) if isinstance(cfg, str) else cfg)


def conformer_asr(*, preset: str = "tiny", **overrides: Any) -> "ASRModel":
    """Build a Conformer ASR model: preset ``preset`` with `ModelConfig` fields as keyword overrides."""
    return ASRModel(model_config(preset, **overrides))


class ConvSubsampling(nn.Module):
    """4× time subsampling: two Conv2d(3×3, stride 2) + ReLU, then Linear to ``d_model`` + dropout."""

    def __init__(self, n_mels: int, channels: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2), nn.ReLU(), nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU()
        )
        f = ((n_mels - 1) // 2 - 1) // 2  # frequency bins left after two valid stride-2 convs (80 -> 19)
        self.linear = nn.Linear(channels * f, d_model)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        """Valid output frames for ``lengths`` input frames (``< 7`` input frames give 0)."""
        return (((lengths - 1) // 2 - 1) // 2).clamp(min=0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x ``(B, T, F)``, lengths ``(B,)``. Returns: ``(B, T', D)``, ``(B,)`` with T' ≈ T/4."""
        x = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.shape
        x = self.linear(x.transpose(1, 2).reshape(b, t, c * f))
        return self.dropout(x), self.output_lengths(lengths)


class Predictor(nn.Module):
    """RNN-T prediction network (Graves 2012): token embedding → LSTM; input starts with blank."""

    def __init__(self, num_classes: int, embed_dim: int, hidden_dim: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Args: tokens ``(B, U)``, state ``(h, c)`` each ``(layers, B, H)`` or None.

        Returns: output ``(B, U, H)`` and the new state.
        """
        out, state = self.lstm(self.embedding(tokens), state)
        return self.dropout(out), state


class _PickedLogSoftmax(torch.autograd.Function):
    """``log_softmax(logits).gather(-1, index)`` with one logits-sized tensor alive in backward.

    Autograd's own pair would keep the log-softmax output and, in backward, build a dense zero-filled
    gradient for the gather and a second one for the softmax. Here backward writes
    ``d logits = scatter_add(-softmax · Σ g, index, g)`` straight into one buffer.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        log_probs = logits.log_softmax(dim=-1)
        ctx.save_for_backward(log_probs, index)
        return log_probs.gather(-1, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        log_probs, index = ctx.saved_tensors
        d_logits = log_probs.exp().mul_(-grad.sum(dim=-1, keepdim=True))
        return d_logits.scatter_add_(-1, index, grad), None


def rnnt_loss(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor,
              target_lengths: torch.Tensor, blank: int = BLANK) -> torch.Tensor:
    """Per-utterance RNN-T loss (Graves 2012) through ``torchaudio.functional.rnnt_loss``, on the two
    log-probabilities its forward-backward recursion reads.

    The recursion over the (t, u) lattice uses only ``log p(blank | t, u)`` and ``log p(y_{u+1} | t, u)``.
    So the log-softmax over all C classes runs as one vectorised ATen op (`_PickedLogSoftmax`, whose
    backward is one fused expression), and torchaudio gets a 2-class lattice: class 0 = blank, class 1 =
    the next target token, every target relabelled 1 (``fused_log_softmax=False``). Loss and gradients
    equal the fused call on the full logits (tested); on one CPU thread the fused kernel took 27% of a
    `paper`-preset training step (1.5 s of 5.8 s under the profiler, batch 2 × 5 s, V = 4096).

    Args:
        logits: ``(B, T, U+1, C)`` joiner outputs (float32).
        targets: ``(B, U)`` token ids in ``1..C-1`` (padding beyond ``target_lengths`` is ignored).
        logit_lengths: ``(B,)`` encoder frames; target_lengths: ``(B,)`` tokens.
        blank: the blank class (torchaudio's own default is -1, the last class: ours is 0).

    Returns:
        ``(B,)`` negative log-likelihoods.
    """
    b, t, u1, _ = logits.shape
    nxt = F.pad(targets.long(), (0, u1 - targets.shape[1]), value=blank)  # (B, U+1): y_{u+1}; blank past the end
    pick = torch.stack([torch.full_like(nxt, blank), nxt], dim=-1)  # (B, U+1, 2): [blank, y_{u+1}]
    lattice = _PickedLogSoftmax.apply(logits, pick[:, None].expand(b, t, u1, 2).contiguous())  # (B, T, U+1, 2)
    ones = torch.ones(targets.shape, dtype=torch.int32, device=targets.device)
    return torchaudio.functional.rnnt_loss(lattice, ones, logit_lengths.int(), target_lengths.int(), blank=0,
                                           reduction="none", fused_log_softmax=False)


class Joiner(nn.Module):
    """RNN-T joint network: ``out(tanh(W_e·enc + W_p·pred))`` → ``vocab_size + 1`` logits."""

    def __init__(self, enc_dim: int, pred_dim: int, joiner_dim: int, num_classes: int) -> None:
        super().__init__()
        self.enc_proj = nn.Linear(enc_dim, joiner_dim)
        self.pred_proj = nn.Linear(pred_dim, joiner_dim)
        self.out = nn.Linear(joiner_dim, num_classes)

    def joint(self, enc_p: torch.Tensor, pred_p: torch.Tensor) -> torch.Tensor:
        """Logits of broadcast-added projected encodings ``(..., J)`` → ``(..., C)``."""
        return self.out(torch.tanh(enc_p + pred_p))

    def forward(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Args: enc ``(B, T, D)``, pred ``(B, U+1, H)``. Returns: logits ``(B, T, U+1, C)``."""
        return self.joint(self.enc_proj(enc).unsqueeze(2), self.pred_proj(pred).unsqueeze(1))


class ASRModel(nn.Module):
    """Conformer encoder with a CTC or RNN-T head; see the module docstring.

    Args:
        config: the model's shape; kept as ``self.config`` so checkpoints can store it.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        num_classes = c.vocab_size + 1
        self.normalizer = GlobalStatsNormalization(c.n_mels)
        self.subsampling = ConvSubsampling(c.n_mels, c.subsampling_channels, c.d_model, c.dropout)
        self.conformer = torchaudio.models.Conformer(
            input_dim=c.d_model, num_heads=c.num_heads, ffn_dim=c.ffn_dim, num_layers=c.num_layers,
            depthwise_conv_kernel_size=c.conv_kernel, dropout=c.dropout, use_group_norm=True,
        )
        if c.head == "ctc" or c.ctc_aux_weight > 0:
            self.ctc_head = nn.Linear(c.d_model, num_classes)
        if c.head == "rnnt":
            self.predictor = Predictor(num_classes, c.pred_embed_dim, c.pred_hidden_dim, c.pred_num_layers, c.dropout)
            self.joiner = Joiner(c.d_model, c.pred_hidden_dim, c.joiner_dim, num_classes)

    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run normalisation, subsampling and the Conformer blocks.

        Iterates over ``conformer.conformer_layers`` itself (``Conformer.forward``'s loop) so that
        blocks in ``config.checkpoint_blocks`` can run under ``torch.utils.checkpoint`` (Chen et al.
        2016; paper §2.3): their activations are recomputed in backward instead of stored. Each block
        is padding-invariant unless ``config.mask_padding`` is False (module docstring).

        Args:
            features: ``(B, T, F)`` un-normalised log-mels, zero-padded.
            lengths: ``(B,)`` valid frames.

        Returns:
            enc ``(B, T', D)`` and enc_lengths ``(B,)``, ``T' = max(enc_lengths)``.
        """
        features = features[:, : int(lengths.max())]
        pad = torch.arange(features.shape[1], device=lengths.device)[None, :] >= lengths[:, None]
        x = self.normalizer(features).masked_fill(pad.unsqueeze(-1), 0.0)  # padding = 0 after normalising
        x, enc_lengths = self.subsampling(x, lengths)
        mask = torch.arange(x.shape[1], device=lengths.device)[None, :] >= enc_lengths[:, None]  # True = pad
        x = x.transpose(0, 1)  # (T', B, D): torchaudio's layer convention
        block = _masked_block if self.config.mask_padding else _torchaudio_block
        for i, layer in enumerate(self.conformer.conformer_layers):
            if i in self.config.checkpoint_blocks and torch.is_grad_enabled():
                x = checkpoint(block, layer, x, mask, use_reentrant=False)  # RNG state kept: same dropout masks
            else:
                x = block(layer, x, mask)
        return x.transpose(0, 1), enc_lengths

    def ctc_log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        """CTC head: enc ``(B, T', D)`` → log-probabilities ``(B, T', C)``."""
        return F.log_softmax(self.ctc_head(enc), dim=-1)

    def validate(self, batch: Batch) -> dict[int, str]:
        """Find utterances the loss cannot use: ``{batch index: reason}``.

        CTC needs ``T' ≥ U + (number of adjacent repeated tokens)``: a blank must separate repeats
        (Graves et al. 2006). RNN-T needs ``T' ≥ 1``: it can emit several tokens per frame (with an auxiliary
        CTC head, CTC's bound).

        Raises:
            ValueError: target ids outside ``1..vocab_size`` (a tokenizer/model mismatch, not bad data),
                or lengths that do not fit the padded tensors (a collation bug).
        """
        if int(batch.feature_lengths.max()) > batch.features.shape[1] or int(batch.target_lengths.max()) > batch.targets.shape[1]:
            raise ValueError(f"batch lengths exceed its padded tensors: features {tuple(batch.features.shape)} "
                             f"vs max length {int(batch.feature_lengths.max())}, targets {tuple(batch.targets.shape)} "
                             f"vs max length {int(batch.target_lengths.max())}")
        enc_len = ConvSubsampling.output_lengths(batch.feature_lengths)
        problems: dict[int, str] = {}
        for i in range(len(enc_len)):
            u, t = int(batch.target_lengths[i]), int(enc_len[i])
            tg = batch.targets[i, :u]
            if u and (int(tg.min()) < 1 or int(tg.max()) > self.config.vocab_size):
                raise ValueError(f"utterance {_name(batch, i)}: target ids outside 1..{self.config.vocab_size} "
                                 "(tokenizer and model vocab_size disagree?)")
            ctc = self.config.head == "ctc" or self.config.ctc_aux_weight > 0
            need = max(1, u + int((tg[1:] == tg[:-1]).sum())) if ctc else 1
            if u == 0:
                problems[i] = "empty transcript"
            elif t < need:
                problems[i] = (f"too short for its transcript: {int(batch.feature_lengths[i])} frames -> {t} "
                               f"encoder frames, {self.config.head} needs >= {need} for {u} tokens")
        return problems

    def loss(
        self,
        batch: Batch,
        reduction: Literal["mean", "sum"] = "mean",
        on_invalid: Literal["raise", "skip"] = "raise",
    ) -> tuple[torch.Tensor, dict]:
        """CTC or RNN-T loss of a batch.

        ``reduction="mean"`` averages the per-utterance losses (negative log-likelihood of each
        transcript) over the utterances used, matching FedSGD's ``(1/n_i) Σ ℓ(w; x, y)`` (paper §2.3);
        ``"sum"`` returns the total, for exact accumulation over micro-batches.

        Args:
            batch: `Batch` with targets in ``1..vocab_size``.
            reduction: ``"mean"`` (per utterance) or ``"sum"``.
            on_invalid: utterances `validate` rejects (empty or too-short) ``"raise"`` a `DataError`
                naming them, or are ``"skip"``-ped before the forward pass and listed in ``info``.

        Returns:
            ``(loss, info)``: scalar loss; info has ``loss_sum``, ``num_utterances``, ``num_tokens``,
            ``loss_per_token`` (floats/ints for logging) and ``skipped`` (``{utterance id: reason}``).
            If every utterance is skipped the loss is a zero that still supports ``backward()``.

        Raises:
            DataError: invalid utterances with ``on_invalid="raise"``.
            FloatingPointError: a non-finite loss (NaN/inf in inputs or weights), naming the utterances.
        """
        problems = self.validate(batch)
        if problems and on_invalid == "raise":
            raise DataError("invalid utterances for the loss: "
                            + "; ".join(f"{_name(batch, i)}: {why}" for i, why in problems.items()))
        skipped = {batch.ids[i] if i < len(batch.ids) else f"#{i}": why for i, why in problems.items()}
        keep = [i for i in range(len(batch.feature_lengths)) if i not in problems]
        info = {"skipped": skipped, "num_utterances": len(keep)}
        if not keep:
            zero = sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), torch.zeros(()))
            return zero, {**info, "num_tokens": 0, "loss_sum": 0.0, "loss_per_token": 0.0}
        idx = torch.tensor(keep)
        flen, tlen = batch.feature_lengths[idx], batch.target_lengths[idx]
        feats, targets = batch.features[idx], batch.targets[idx, : int(tlen.max())]
        enc, enc_len = self.encode(feats, flen)
        if self.config.head == "ctc":
            # zero_infinity is not needed: validate() rules out infeasible alignments, so an inf here is a bug
            per_utt = F.ctc_loss(self.ctc_log_probs(enc).transpose(0, 1), targets, enc_len, tlen,
                                 blank=BLANK, reduction="none", zero_infinity=False)
        else:
            pred, _ = self.predictor(F.pad(targets, (1, 0), value=BLANK))  # (B, U+1, H): blank = start symbol
            logits = self.joiner(enc, pred)  # (B, T', U+1, C)
            per_utt = rnnt_loss(logits, targets, enc_len, tlen, blank=BLANK)
            if self.config.ctc_aux_weight > 0:  # joint CTC/RNN-T training (e.g. Watanabe et al. 2017's hybrid idea)
                per_utt = per_utt + self.config.ctc_aux_weight * F.ctc_loss(
                    self.ctc_log_probs(enc).transpose(0, 1), targets, enc_len, tlen, blank=BLANK, reduction="none")
        bad = ~torch.isfinite(per_utt)
        if bad.any():
            names = [_name(batch, keep[i]) for i in bad.nonzero().flatten().tolist()]
            raise FloatingPointError(f"non-finite {self.config.head} loss for utterances {names}")
        total = per_utt.sum()
        loss_sum, num_tokens = float(total.detach()), int(tlen.sum())
        info.update(loss_sum=loss_sum, num_tokens=num_tokens, loss_per_token=loss_sum / max(num_tokens, 1))
        return (total / len(keep) if reduction == "mean" else total), info


def _torchaudio_block(layer: nn.Module, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """torchaudio's ``ConformerLayer.forward``: x ``(T, B, D)``, pad ``(B, T)`` True at padding."""
    return layer(x, pad)


def _masked_block(layer: nn.Module, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """``ConformerLayer.forward`` (torchaudio 2.11, line for line) with a padding-aware conv module.

    Args: x ``(T, B, D)``; pad ``(B, T)`` True at padded frames. Returns: ``(T, B, D)``.
    """
    if layer.convolution_first:
        raise NotImplementedError("convolution_first Conformer blocks are not used in fedasr")
    x = layer.ffn1(x) * 0.5 + x  # macaron half-step feed-forward
    y = layer.self_attn_layer_norm(x)
    y, _ = layer.self_attn(query=y, key=y, value=y, key_padding_mask=pad, need_weights=False)
    x = layer.self_attn_dropout(y) + x
    x = _masked_conv_module(layer.conv_module, x.transpose(0, 1), pad).transpose(0, 1) + x
    x = layer.ffn2(x) * 0.5 + x
    return layer.final_layer_norm(x)


def _masked_conv_module(conv: nn.Module, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """torchaudio's ``_ConvolutionModule`` on x ``(B, T, D)`` as if each utterance were alone.

    Padded frames are zeroed before the depthwise conv (the zeros its 'same' padding would supply
    at an unpadded utterance's end) and GroupNorm(1 group) statistics use valid frames only.
    """
    pw1, glu, depthwise, norm, act, pw2, dropout = conv.sequential
    if not isinstance(norm, nn.GroupNorm) or norm.num_groups != 1:
        raise NotImplementedError("padding masking supports the GroupNorm(1 group) conv module only")
    keep = (~pad).unsqueeze(1).to(x.dtype)  # (B, 1, T)
    y = glu(pw1(conv.layer_norm(x).transpose(1, 2))) * keep  # (B, C, T)
    y = depthwise(y) * keep
    n = keep.sum(dim=(1, 2), keepdim=True) * y.shape[1]  # valid cells per utterance
    mean = y.sum(dim=(1, 2), keepdim=True) / n
    var = ((y - mean) * keep).pow(2).sum(dim=(1, 2), keepdim=True) / n  # biased, as GroupNorm
    y = (y - mean) * torch.rsqrt(var + norm.eps) * norm.weight[:, None] + norm.bias[:, None]
    return dropout(pw2(act(y))).transpose(1, 2)


def _name(batch: Batch, i: int) -> str:
    return repr(batch.ids[i]) if i < len(batch.ids) else f"#{i} (batch has no ids)"


def count_parameters(model: ASRModel) -> dict[str, int]:
    """Parameters per component (subsampling, conformer, ctc_head | predictor + joiner) and ``total``."""
    out = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    out = {k: v for k, v in out.items() if v}  # the normaliser holds buffers only
    out["total"] = sum(p.numel() for p in model.parameters())
    return out
