"""Decoding: batched greedy CTC, batched greedy RNN-T, and RNN-T beam search via torchaudio.

All functions return token ids in ``1..vocab_size`` (blank = 0 removed); `greedy_decode` runs a
`fedasr.model.ASRModel` of either head end to end, and `transcribe` turns a batch into text with a
tokenizer. This module imports `fedasr.model`; the model never imports decoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torchaudio.models import RNNTBeamSearch

from .model import ASRModel, ConvSubsampling
from .tokenizer import BLANK

if TYPE_CHECKING:
    from .data import Batch
    from .tokenizer import Tokenizer

__all__ = ["greedy_decode", "ctc_greedy_decode", "rnnt_greedy_decode", "rnnt_beam_search", "transcribe"]


@torch.no_grad()
def greedy_decode(
    model: ASRModel, features: torch.Tensor, lengths: torch.Tensor, max_symbols_per_frame: int = 5
) -> list[list[int]]:
    """Greedy (best-path) decoding of a batch with either head; utterances with no encoder frames give ``[]``.

    Args:
        model: CTC or RNN-T `ASRModel`, switched to eval mode for decoding and restored after.
        features: ``(B, T, F)`` un-normalised log-mels, zero-padded; lengths: ``(B,)`` valid frames.
        max_symbols_per_frame: RNN-T only: tokens emitted per encoder frame at most.

    Returns:
        token ids (``1..vocab_size``) per utterance.
    """
    was_training = model.training
    model.eval()
    try:
        ok = (ConvSubsampling.output_lengths(lengths) >= 1).nonzero().flatten()
        out: list[list[int]] = [[] for _ in range(len(lengths))]
        if len(ok) == 0:
            return out
        enc, enc_len = model.encode(features[ok], lengths[ok])
        if model.config.head == "ctc":
            hyps = ctc_greedy_decode(model.ctc_log_probs(enc), enc_len)
        else:
            hyps = rnnt_greedy_decode(model, enc, enc_len, max_symbols_per_frame)
        for i, h in zip(ok.tolist(), hyps):
            out[i] = h
        return out
    finally:
        model.train(was_training)


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = BLANK) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks (Graves et al. 2006).

    Args:
        log_probs: ``(B, T, C)`` frame scores (log-probabilities or logits).
        lengths: ``(B,)`` valid frames.
        blank: blank id.

    Returns:
        token ids per utterance.
    """
    best = log_probs.argmax(-1)  # (B, T)
    keep = best != blank
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]  # a repeat counts once unless a blank separates it
    keep &= torch.arange(best.shape[1], device=best.device)[None, :] < lengths[:, None]
    return [best[i][keep[i]].tolist() for i in range(best.shape[0])]


@torch.no_grad()
def rnnt_greedy_decode(
    model: ASRModel, enc: torch.Tensor, enc_lengths: torch.Tensor, max_symbols_per_frame: int = 5
) -> list[list[int]]:
    """Batched greedy RNN-T decoding (Graves 2012): at each frame emit argmax tokens until blank.

    The prediction network only advances for utterances that emitted a non-blank token, so every
    utterance follows exactly its own greedy path.

    Args:
        model: RNN-T `ASRModel` (uses ``predictor`` and ``joiner``).
        enc: ``(B, T, D)`` encoder output; enc_lengths: ``(B,)``.
        max_symbols_per_frame: tokens emitted per frame at most (guards against endless emission).

    Returns:
        token ids per utterance.
    """
    b, t_max, _ = enc.shape
    enc_p = model.joiner.enc_proj(enc)  # (B, T, J)
    pred, state = model.predictor(torch.full((b, 1), BLANK, dtype=torch.long, device=enc.device))
    pred_p = model.joiner.pred_proj(pred[:, 0])  # (B, J)
    hyps: list[list[int]] = [[] for _ in range(b)]
    for t in range(t_max):
        active = t < enc_lengths  # (B,)
        for _ in range(max_symbols_per_frame):
            k = model.joiner.joint(enc_p[:, t], pred_p).argmax(-1)  # (B,)
            emit = active & (k != BLANK)
            if not emit.any():
                break
            for i in emit.nonzero().flatten().tolist():
                hyps[i].append(int(k[i]))
            new_pred, new_state = model.predictor(k.unsqueeze(1), state)
            pred_p = torch.where(emit[:, None], model.joiner.pred_proj(new_pred[:, 0]), pred_p)
            state = tuple(torch.where(emit[None, :, None], n, s) for n, s in zip(new_state, state))
            active = emit  # an utterance that chose blank moves on to the next frame
    return hyps


class _BlankLastAdapter(nn.Module):
    """Presents an `ASRModel` with the ``transcribe/predict/join`` interface of ``torchaudio.models.RNNT``.

    torchaudio's ``RNNTBeamSearch`` takes a ``blank`` argument but only uses it as the start token:
    its scoring hard-codes the blank as the *last* class (``next_token_probs[:, -1]`` and
    ``[:, :-1]`` in ``rnnt_decoder.py``). Our blank is 0, so this adapter rotates the joiner's
    classes (our id ``k ≥ 1`` ↦ ``k - 1``, blank ↦ ``vocab_size``) and maps tokens back in `predict`.
    Predictor state is exposed batch-first (``[[h, c]]``, each ``(B, layers, H)``) because the
    beam search concatenates and slices states along dim 0.
    """

    def __init__(self, model: ASRModel) -> None:
        super().__init__()
        self.model = model
        self.num_classes = model.config.vocab_size + 1

    def transcribe(self, features: torch.Tensor, lengths: torch.Tensor):
        enc, enc_len = self.model.encode(features, lengths)
        return self.model.joiner.enc_proj(enc), enc_len

    def predict(self, tokens: torch.Tensor, lengths: torch.Tensor, state=None):
        ids = (tokens + 1) % self.num_classes  # rotated space -> our ids (blank: vocab_size -> 0)
        hc = None if state is None else tuple(s.transpose(0, 1).contiguous() for s in state[0])
        out, (h, c) = self.model.predictor(ids, hc)
        return self.model.joiner.pred_proj(out), lengths, [[h.transpose(0, 1), c.transpose(0, 1)]]

    def join(self, enc_p: torch.Tensor, enc_len: torch.Tensor, pred_p: torch.Tensor, pred_len: torch.Tensor):
        logits = self.model.joiner.joint(enc_p.unsqueeze(2), pred_p.unsqueeze(1))  # (B, T, U, C)
        return torch.roll(logits, shifts=-1, dims=-1), enc_len, pred_len  # blank (class 0) moves last


@torch.no_grad()
def rnnt_beam_search(
    model: ASRModel,
    features: torch.Tensor,
    lengths: torch.Tensor,
    beam_width: int = 4,
    max_symbols_per_frame: int = 5,
) -> list[list[int]]:
    """RNN-T beam search (Graves 2012, as implemented by ``torchaudio.models.RNNTBeamSearch``).

    One utterance at a time (torchaudio's search is unbatched); hypotheses are ranked by
    log-probability per token, torchaudio's default.

    Args:
        model: RNN-T `ASRModel`, switched to eval mode for the search and restored after.
        features: ``(B, T, F)``; lengths: ``(B,)``.
        beam_width: hypotheses kept per frame.
        max_symbols_per_frame: tokens emitted per frame at most.

    Returns:
        best hypothesis' token ids per utterance.
    """
    if model.config.head != "rnnt":
        raise ValueError("rnnt_beam_search needs an RNN-T model")
    adapter = _BlankLastAdapter(model)
    search = RNNTBeamSearch(adapter, blank=model.config.vocab_size, step_max_tokens=max_symbols_per_frame)
    frames = ConvSubsampling.output_lengths(lengths)
    was_training = model.training
    model.eval()
    try:
        out = []
        for i in range(features.shape[0]):
            if frames[i] < 1:  # no encoder frame after subsampling
                out.append([])
                continue
            hyps = search(features[i : i + 1, : int(lengths[i])], lengths[i : i + 1], beam_width)
            out.append([s + 1 for s in hyps[0][0][1:]])  # drop the start token; rotate back to our ids
        return out
    finally:
        model.train(was_training)


def transcribe(model: ASRModel, batch: "Batch", tokenizer: "Tokenizer", beam_width: int = 1) -> list[str]:
    """Decode a batch to text: greedy for ``beam_width == 1``, else RNN-T beam search."""
    if beam_width > 1:
        ids = rnnt_beam_search(model, batch.features, batch.feature_lengths, beam_width)
    else:
        ids = greedy_decode(model, batch.features, batch.feature_lengths)
    return [tokenizer.decode(h) for h in ids]
