"""Tests for fedasr.decoding: CTC best path, batched greedy RNN-T, beam search via torchaudio."""

import pytest
import torch

from fedasr.data import Batch
from fedasr.decoding import (
    _BlankLastAdapter,
    ctc_greedy_decode,
    greedy_decode,
    rnnt_beam_search,
    rnnt_greedy_decode,
    transcribe,
)
from fedasr.model import build_model, model_config
from fedasr.tokenizer import CharTokenizer

torch.set_num_threads(1)
TEXTS = ("hello a", "world")


def micro_rnnt(**kw):
    return build_model(model_config(
        "tiny", head="rnnt", subsampling_channels=8, d_model=32, num_heads=2, ffn_dim=64, num_layers=2,
        conv_kernel=7, dropout=0.0, pred_embed_dim=16, pred_hidden_dim=32, joiner_dim=32, **kw))


def one_hot_frames(seq, num_classes=5):
    return torch.nn.functional.one_hot(torch.tensor(seq), num_classes).float().log_softmax(-1)


def test_ctc_greedy_merges_repeats_drops_blanks_and_respects_lengths():
    lp = torch.stack([one_hot_frames([1, 1, 0, 1, 2, 2, 0, 3]), one_hot_frames([0, 4, 4, 4, 0, 4, 2, 2])])
    assert ctc_greedy_decode(lp, torch.tensor([8, 6])) == [[1, 1, 2, 3], [4, 4]]
    assert ctc_greedy_decode(lp, torch.tensor([8, 5])) == [[1, 1, 2, 3], [4]]
    assert ctc_greedy_decode(lp, torch.tensor([0, 1])) == [[], []]


def _greedy_one(model, enc, n, max_symbols):
    """Unbatched reference greedy RNN-T search (Graves 2012)."""
    hyp, (pred, state) = [], model.predictor(torch.zeros(1, 1, dtype=torch.long))
    for t in range(n):
        for _ in range(max_symbols):
            k = int(model.joiner(enc[None, t : t + 1], pred)[0, 0, 0].argmax())
            if k == 0:
                break
            hyp.append(k)
            pred, state = model.predictor(torch.tensor([[k]]), state)
    return hyp


@pytest.mark.parametrize("max_symbols", [1, 3])
def test_rnnt_greedy_batched_equals_unbatched(max_symbols):
    torch.manual_seed(0)
    model = micro_rnnt().eval()
    with torch.no_grad():
        model.joiner.out.bias[0] -= 2.0  # an untrained joiner mostly says blank: make it talk
        enc = torch.randn(3, 9, 32)
        lengths = torch.tensor([9, 4, 7])
        hyps = rnnt_greedy_decode(model, enc, lengths, max_symbols)
        for i, n in enumerate(lengths.tolist()):
            assert hyps[i] == _greedy_one(model, enc[i], n, max_symbols)
            assert len(hyps[i]) <= n * max_symbols
    assert sum(map(len, hyps)) > 0


def test_beam_search_adapter_moves_blank_last():
    torch.manual_seed(0)
    model = micro_rnnt().eval()
    adapter = _BlankLastAdapter(model)
    feats, lengths = torch.randn(1, 40, 80), torch.tensor([40])
    enc_p, _ = adapter.transcribe(feats, lengths)
    start = torch.tensor([[model.config.vocab_size]])  # rotated blank: the search's start token
    pred_p, _, state = adapter.predict(start, torch.tensor([1]), None)
    ours, _ = model.predictor(torch.zeros(1, 1, dtype=torch.long))  # our blank start
    assert torch.allclose(pred_p, model.joiner.pred_proj(ours))
    direct = model.joiner(model.encode(feats, lengths)[0][:, :1], ours)  # (1, 1, 1, C), blank first
    via, _, _ = adapter.join(enc_p[:, :1], None, pred_p, None)
    assert via.shape == direct.shape == (1, 1, 1, 29)
    assert torch.allclose(via[..., -1], direct[..., 0])  # blank is last for torchaudio
    assert torch.allclose(via[..., :-1], direct[..., 1:])
    assert state[0][0].shape == (1, 1, 32)  # batch-first state for torchaudio's concat/slice


@pytest.fixture(scope="module")
def overfit_rnnt():
    """A micro RNN-T trained until greedy decoding reproduces two random-feature 'utterances'."""
    torch.manual_seed(0)
    tok = CharTokenizer()
    ids = [tok.encode(t) for t in TEXTS]
    u = max(map(len, ids))
    batch = Batch(torch.randn(2, 60, 80), torch.tensor([60, 52]),
                  torch.tensor([x + [0] * (u - len(x)) for x in ids]), torch.tensor([len(x) for x in ids]),
                  ("a", "b"), TEXTS)
    batch.features[1, 52:] = 0
    model = micro_rnnt()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    first = None
    for step in range(1000):
        loss, _ = model.loss(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 19 and greedy_decode(model, batch.features, batch.feature_lengths) == ids:
            break
    assert loss.item() < 0.1 * first
    return model, batch, tok, ids


def test_rnnt_greedy_reproduces_overfit_transcripts(overfit_rnnt):
    model, batch, tok, ids = overfit_rnnt
    assert greedy_decode(model, batch.features, batch.feature_lengths) == ids
    assert transcribe(model, batch, tok) == list(TEXTS)


def test_rnnt_beam_search_reproduces_overfit_transcripts(overfit_rnnt):
    model, batch, tok, ids = overfit_rnnt
    model.train()
    assert rnnt_beam_search(model, batch.features, batch.feature_lengths, beam_width=4) == ids
    assert model.training  # mode restored
    assert transcribe(model, batch, tok, beam_width=3) == list(TEXTS)
    # each utterance decoded alone (no padding) gives the same answer
    alone = rnnt_beam_search(model, batch.features[1:, :52], batch.feature_lengths[1:], beam_width=2)
    assert alone == ids[1:]


def test_utterances_without_encoder_frames_decode_to_nothing(overfit_rnnt):
    model, batch, tok, ids = overfit_rnnt
    lengths = torch.tensor([60, 6])  # 6 input frames: no frame left after the 4x subsampling (7 give 1)
    assert greedy_decode(model, batch.features, lengths) == [ids[0], []]
    assert rnnt_beam_search(model, batch.features, lengths, beam_width=2) == [ids[0], []]


def test_beam_search_needs_rnnt():
    ctc = build_model(model_config("tiny", d_model=32, num_heads=2, ffn_dim=64, num_layers=1))
    with pytest.raises(ValueError, match="RNN-T"):
        rnnt_beam_search(ctc, torch.randn(1, 40, 80), torch.tensor([40]))
