"""Warm start: initialise a model from another checkpoint where names and shapes agree (issue 19).

The field's usual way to make an RNN-T learn quickly is to start its encoder from a trained CTC model (e.g. Hu et
al. 2020, "Exploring pre-training with alignments for RNN transducer based end-to-end speech recognition"): the
encoder already maps audio to units, and only the prediction and joint networks start from scratch. Here that is
``init-from`` in a seed config (`fedasr.train.SeedConfig`): every variable of the checkpoint whose name and shape
match the new model's is copied (the normaliser's statistics, the subsampling, the Conformer blocks and, for the
same tokenizer, the CTC head as the auxiliary head); everything else keeps its fresh initialisation.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["init_from"]


def _units(tok) -> tuple:
    """What a tokenizer's output ids mean: its kind and the text of every id."""
    return tok.kind, tok.vocab_size, tuple(tok.decode([i]) for i in range(1, tok.vocab_size + 1))


def init_from(model: torch.nn.Module, checkpoint: str | Path, tokenizer=None) -> dict:
    """Copy the variables of ``checkpoint`` (a `fedasr.train.save_checkpoint` folder) into ``model`` in place.

    Args:
        model: the freshly built model.
        checkpoint: the source checkpoint folder.
        tokenizer: the new model's `fedasr.tokenizer.Tokenizer`; when given and its ids mean other units than the
            source's, output layers over units (``ctc_head``) are not copied even if their shapes agree.

    Returns:
        ``{"from", "copied": [names], "kept": [names not in the source or of another shape], "params_copied"}``.

    Raises:
        ValueError: nothing could be copied (another architecture altogether).
    """
    from fedasr.train import load_checkpoint  # train imports this module

    src, tok, _, _ = load_checkpoint(checkpoint)
    same_units = tokenizer is None or _units(tok) == _units(tokenizer)
    theirs, ours = src.state_dict(), model.state_dict()
    copied, kept = [], []
    for name, t in ours.items():
        s = theirs.get(name)
        if s is None or s.shape != t.shape or (name.startswith("ctc_head.") and not same_units):
            kept.append(name)
            continue
        copied.append(name)
    if not copied:
        raise ValueError(f"init-from {checkpoint}: no variable of it matches this model by name and shape")
    model.load_state_dict({**ours, **{n: theirs[n] for n in copied}})
    params = dict(model.named_parameters())
    return {"from": str(checkpoint), "copied": copied, "kept": kept,
            "params_copied": sum(params[n].numel() for n in copied if n in params)}
