"""Tests for fedasr.tokenizer: round trips, the blank-id convention, OOV errors, save/load."""

import random

import pytest

from fedasr.tokenizer import (
    BLANK,
    CharTokenizer,
    SentencePieceTokenizer,
    TokenizerConfig,
    build_tokenizer,
    load_tokenizer,
)

WORDS = ("call mom dad play some music set an alarm for seven o'clock turn on the lights in kitchen "
         "what's weather like today navigate to work send message john i'll be late remind me buy milk "
         "how far is station from here open calendar next meeting").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) for _ in range(n)]


@pytest.fixture(scope="module")
def spm_unigram():
    return SentencePieceTokenizer.train(sentences(300), vocab_size=60, model_type="unigram")


def test_char_round_trip_and_ids():
    tok = CharTokenizer()
    assert tok.vocab_size == 28 and tok.num_classes == 29
    text = "what's the weather like"
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert min(ids) >= 1 and max(ids) <= tok.vocab_size and BLANK not in ids
    assert tok.decode(ids) == text
    assert tok.decode([0] + ids + [0]) == text  # blanks are ignored


@pytest.mark.parametrize("text", ["Hello world", "call 911", "café", "a-b"])
def test_char_oov_raises_naming_text(text):
    with pytest.raises(ValueError, match="outside") as e:
        CharTokenizer().encode(text)
    assert repr(text) in str(e.value)


def test_char_save_load(tmp_path):
    CharTokenizer().save(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, CharTokenizer)
    assert tok.encode("abc") == [3, 4, 5]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_round_trip(model_type):
    tok = SentencePieceTokenizer.train(sentences(300), vocab_size=60, model_type=model_type)
    assert tok.vocab_size == 60 and tok.num_classes == 61
    held_out = sentences(50, seed=1)
    for text in held_out:
        ids = tok.encode(text)
        assert ids and min(ids) >= 1 and max(ids) <= tok.vocab_size
        assert tok.decode(ids) == text
    # word-pieces are shorter than characters on average
    assert sum(len(tok.encode(t)) for t in held_out) < sum(len(t) for t in held_out)


def test_sentencepiece_oov_raises(spm_unigram):
    # 'z' and 'q' never occur in WORDS, so they are unknown to the model
    with pytest.raises(ValueError, match="cannot encode") as e:
        spm_unigram.encode("call zq")
    assert "'call zq'" in str(e.value)


def test_sentencepiece_save_load(tmp_path, spm_unigram):
    spm_unigram.save(tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    assert isinstance(tok, SentencePieceTokenizer)
    for text in sentences(20, seed=2):
        assert tok.encode(text) == spm_unigram.encode(text)


def test_sentencepiece_vocab_too_large_is_clear():
    with pytest.raises(ValueError, match="vocab_size=4096"):
        SentencePieceTokenizer.train(sentences(50), vocab_size=4096)


def test_build_tokenizer(tmp_path):
    assert isinstance(build_tokenizer(TokenizerConfig(kind="char")), CharTokenizer)
    with pytest.raises(ValueError, match="training texts"):
        build_tokenizer(TokenizerConfig(kind="sentencepiece", vocab_size=60))
    tok = build_tokenizer(TokenizerConfig(kind="sentencepiece", vocab_size=60), sentences(300))
    assert tok.vocab_size == 60
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing")
