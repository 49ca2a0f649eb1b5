"""Warm start: initialise a model from another checkpoint where names and shapes agree (issue 19).

The field's usual way to make an RNN-T learn quickly is to start its encoder from a trained CTC model (e.g. Hu et
al. 2020, "Exploring pre-training with alignments for RNN transducer based end-to-end speech recognition"): the
encoder already maps audio to units, and only the prediction and joint networks start from scratch. Here that is
``init-from`` in a seed config (`fedasr.train.SeedConfig`): every variable of the checkpoint whose name and shape
match the new model's is copied (the normaliser's statistics, the subsampling, the Conformer blocks and, for the
same tokenizer, the CTC head as the auxiliary head); everything else keeps its fresh initialisation.
"""

from __future__ import annotations

import torch

__all__ = ["init_from"]


def _units(tok) -> tuple:
    """What a tokenizer's output ids mean: its kind and the text of every id."""
    return tok.kind, tok.vocab_size, tuple(tok.decode([i]) for i in range(1, tok.vocab_size + 1))


def init_from(model: torch.nn.Module, source: torch.nn.Module, source_tokenizer=None, tokenizer=None,
              name: str = "the source") -> dict:
    """Copy the variables of ``source`` (e.g. a `fedasr.train.load_checkpoint` model) into ``model`` in place.

    Args:
        model: the freshly built model.
        source: the trained model to copy from.
        source_tokenizer, tokenizer: the two models' `fedasr.tokenizer.Tokenizer`s; when both are given and their ids
            mean other units, output layers over units (``ctc_head``) are not copied even if their shapes agree.
        name: what to call the source in messages (its checkpoint folder).

    Returns:
        ``{"from", "copied": [names], "kept": [names not in the source or of another shape], "params_copied"}``.

    Raises:
        ValueError: nothing could be copied (another architecture altogether).
    """
    same_units = source_tokenizer is None or tokenizer is None or _units(source_tokenizer) == _units(tokenizer)
    theirs, ours = source.state_dict(), model.state_dict()
    copied, kept = [], []
    for n, t in ours.items():
        s = theirs.get(n)
        if s is None or s.shape != t.shape or (n.startswith("ctc_head.") and not same_units):
            kept.append(n)
            continue
        copied.append(n)
    if not copied:
        raise ValueError(f"init-from {name}: no variable of it matches this model by name and shape")
    model.load_state_dict({**ours, **{n: theirs[n] for n in copied}})
    params = dict(model.named_parameters())
    return {"from": str(name), "copied": copied, "kept": kept,
            "params_copied": sum(params[n].numel() for n in copied if n in params)}
