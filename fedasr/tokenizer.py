"""Text ↔ token ids: characters for tiny CPU runs, sentencepiece word-pieces for the paper preset.

Id convention (shared by CTC and RNN-T): id ``0`` is the **blank** symbol and is never produced
by `Tokenizer.encode`; real symbols are ``1 .. vocab_size``. A model head therefore has
``vocab_size + 1`` output classes (`Tokenizer.num_classes`). Padding in `fedasr.data.Batch.targets`
also uses 0, which is safe because padded positions are excluded by ``target_lengths``.

Text must already be in the corpus' normal form (``[a-z' ]``, see `fedasr.data.normalize_text`).
A character a tokenizer cannot represent raises a `ValueError` that names the text: a silent
``<unk>`` would train the model on garbage and inflate WER without anyone noticing.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

__all__ = [
    "BLANK",
    "TokenizerConfig",
    "TOKENIZER_PRESETS",
    "Tokenizer",
    "CharTokenizer",
    "SentencePieceTokenizer",
    "build_tokenizer",
    "load_tokenizer",
]

BLANK = 0  # blank id for CTC and RNN-T; real symbols start at 1
_META = "tokenizer.json"  # file written by `Tokenizer.save` naming the implementation


@dataclass
class TokenizerConfig:
    """Which output units the model predicts."""

    kind: Literal["char", "sentencepiece"] = "char"  # char: learns on CPU in minutes (calibration.md)
    vocab_size: int = 4096  # sentencepiece pieces incl. <unk> (ignored for char); paper preset: 4096
    model_type: Literal["unigram", "bpe"] = "unigram"  # sentencepiece algorithm


# Units each model preset was designed for (see `fedasr.model.PRESETS`).
TOKENIZER_PRESETS = {
    "tiny": TokenizerConfig(kind="char"),
    "small": TokenizerConfig(kind="sentencepiece", vocab_size=256),
    "paper": TokenizerConfig(kind="sentencepiece", vocab_size=4096),
}


class Tokenizer(ABC):
    """Maps normalised text to ids ``1..vocab_size`` and back (id 0 is the blank)."""

    kind: str = ""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of non-blank symbols."""

    @property
    def num_classes(self) -> int:
        """Output classes of a CTC/RNN-T head: the symbols plus the blank."""
        return self.vocab_size + 1

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Return the ids of ``text``; raise `ValueError` naming the text if it cannot be encoded."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Return the text of ``ids`` (blanks are ignored)."""

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write the tokenizer into ``directory`` (created if missing)."""

    @staticmethod
    def load(directory: str | Path) -> "Tokenizer":
        """Load whichever tokenizer `save` wrote into ``directory``."""
        return load_tokenizer(directory)


class CharTokenizer(Tokenizer):
    """Characters ``a-z``, space and apostrophe: 28 symbols, ids 1..28."""

    kind = "char"
    ALPHABET = " '" + "abcdefghijklmnopqrstuvwxyz"

    def __init__(self) -> None:
        self._id = {c: i + 1 for i, c in enumerate(self.ALPHABET)}

    @property
    def vocab_size(self) -> int:
        return len(self.ALPHABET)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._id[c] for c in text]
        except KeyError:
            bad = sorted({c for c in text if c not in self._id})
            raise ValueError(
                f"text {text!r} has characters outside [a-z' ]: {bad} (normalise it with fedasr.data.normalize_text)"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.ALPHABET[i - 1] for i in ids if 0 < i <= len(self.ALPHABET))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / _META).write_text(json.dumps({"kind": self.kind, "alphabet": self.ALPHABET}) + "\n")


class SentencePieceTokenizer(Tokenizer):
    """Sentencepiece word-pieces (unigram or BPE); our id = sentencepiece id + 1.

    The sentencepiece model is trained without BOS/EOS and with the identity normaliser, so
    ``decode(encode(t)) == t`` for normalised text. Its ``<unk>`` piece (sentencepiece id 0, our id 1)
    is never emitted: `encode` raises instead.
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._unk = self._sp.unk_id()

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        model_type: Literal["unigram", "bpe"] = "unigram",
        seed: int = 0,
    ) -> "SentencePieceTokenizer":
        """Train on proxy (server) text.

        Args:
            texts: normalised sentences.
            vocab_size: number of pieces including ``<unk>`` (= `vocab_size` of the result).
            model_type: ``"unigram"`` (Kudo 2018) or ``"bpe"``.
            seed: sentencepiece's sampling seed, for reproducible vocabularies.

        Raises:
            ValueError: the text is too small for ``vocab_size`` pieces (sentencepiece's message is kept).
        """
        import sentencepiece as spm

        texts = [t for t in texts if t.strip()]
        if not texts:
            raise ValueError("cannot train a sentencepiece model on no text")
        buf = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=buf,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=1.0,  # a tiny alphabet: keep every character
                normalization_rule_name="identity",  # text is already normalised; exact round trip
                bos_id=-1,
                eos_id=-1,
                unk_id=0,
                num_threads=1,
                minloglevel=2,  # sentencepiece logs to stderr at INFO otherwise
            )
        except RuntimeError as e:
            raise ValueError(f"sentencepiece training failed for vocab_size={vocab_size}: {e}") from None
        return cls(buf.getvalue())

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        ids = self._sp.encode(text)
        if self._unk in ids:
            pieces = self._sp.encode(text, out_type=str)
            bad = [p for p, i in zip(pieces, ids) if i == self._unk]
            raise ValueError(f"text {text!r} has characters the sentencepiece model cannot encode: {bad}")
        return [i + 1 for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([i - 1 for i in ids if 0 < i <= self.vocab_size])

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "spm.model").write_bytes(self._proto)
        meta = {"kind": self.kind, "model": "spm.model", "vocab_size": self.vocab_size}
        (directory / _META).write_text(json.dumps(meta) + "\n")


def build_tokenizer(cfg: TokenizerConfig, texts: Iterable[str] | None = None) -> Tokenizer:
    """Build the tokenizer ``cfg`` asks for, training sentencepiece on ``texts`` when needed."""
    if cfg.kind == "char":
        return CharTokenizer()
    if cfg.kind == "sentencepiece":
        if texts is None:
            raise ValueError("a sentencepiece tokenizer needs training texts (the proxy-domain transcripts)")
        return SentencePieceTokenizer.train(texts, cfg.vocab_size, cfg.model_type)
    raise ValueError(f"unknown tokenizer kind {cfg.kind!r} (expected 'char' or 'sentencepiece')")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load a tokenizer written by `Tokenizer.save`."""
    directory = Path(directory)
    meta_path = directory / _META
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory} holds no tokenizer ({_META} missing)")
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") == "char":
        if meta.get("alphabet") != CharTokenizer.ALPHABET:
            raise ValueError(f"{meta_path}: character alphabet differs from this version's")
        return CharTokenizer()
    if meta.get("kind") == "sentencepiece":
        return SentencePieceTokenizer((directory / meta["model"]).read_bytes())
    raise ValueError(f"{meta_path}: unknown tokenizer kind {meta.get('kind')!r}")
