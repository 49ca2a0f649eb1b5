"""Tests for fedasr.model: shapes, torchaudio equivalence, presets, checkpointing, losses, bad inputs."""

import dataclasses
import subprocess
import sys

import pytest
import torch
import torchaudio

from fedasr.data import Batch, DataError
from fedasr.decoding import greedy_decode
from fedasr.model import (
    PRESETS,
    ASRModel,
    ConvSubsampling,
    ModelConfig,
    build_model,
    conformer_asr,
    count_parameters,
    model_config,
    rnnt_loss,
)

torch.set_num_threads(1)


def micro(head: str = "ctc", **kw) -> ModelConfig:
    """A model small enough to overfit a batch in about a second."""
    base = dict(head=head, subsampling_channels=8, d_model=32, num_heads=2, ffn_dim=64, num_layers=2,
                conv_kernel=7, dropout=0.0, pred_embed_dim=16, pred_hidden_dim=32, joiner_dim=32)
    return model_config("tiny", **{**base, **kw})


def make_batch(lengths=(60, 52), texts=((8, 5, 12, 12, 15, 1), (23, 15, 18, 12, 4)), seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    b, t = len(lengths), max(lengths)
    feats = torch.randn(b, t, 80, generator=g)
    for i, n in enumerate(lengths):
        feats[i, n:] = 0
    u = max(len(x) for x in texts)
    targets = torch.tensor([list(x) + [0] * (u - len(x)) for x in texts])
    return Batch(feats, torch.tensor(lengths), targets, torch.tensor([len(x) for x in texts]),
                 tuple(f"utt{i}" for i in range(b)), ())


@pytest.mark.parametrize("head", ["ctc", "rnnt"])
def test_shapes_through_every_stage(head):
    model = build_model(micro(head)).eval()
    batch = make_batch(lengths=(100, 57, 31), texts=((1, 2, 3), (4, 5), (6,)))
    sub, sub_len = model.subsampling(batch.features, batch.feature_lengths)
    assert sub_len.tolist() == [24, 13, 7]  # ((T - 1) // 2 - 1) // 2
    assert sub.shape == (3, 24, 32)
    enc, enc_len = model.encode(batch.features, batch.feature_lengths)
    assert enc.shape == (3, 24, 32) and torch.equal(enc_len, sub_len)
    if head == "ctc":
        lp = model.ctc_log_probs(enc)
        assert lp.shape == (3, 24, 29)
        assert torch.allclose(lp.exp().sum(-1), torch.ones(3, 24), atol=1e-5)
    else:
        pred, _ = model.predictor(torch.nn.functional.pad(batch.targets, (1, 0)))
        assert pred.shape == (3, 4, 32)
        assert model.joiner(enc, pred).shape == (3, 24, 4, 29)
    assert ConvSubsampling.output_lengths(torch.tensor([6, 7, 10, 11])).tolist() == [0, 1, 1, 2]


def _reference_encode(model: ASRModel, feats, lengths):
    """Normalise + subsample with the model, then a fresh torchaudio Conformer with its weights."""
    c = model.config
    ref = torchaudio.models.Conformer(input_dim=c.d_model, num_heads=c.num_heads, ffn_dim=c.ffn_dim,
                                      num_layers=c.num_layers, depthwise_conv_kernel_size=c.conv_kernel,
                                      dropout=c.dropout, use_group_norm=True).eval()
    ref.load_state_dict(model.conformer.state_dict())
    x = model.normalizer(feats)
    x = x.masked_fill(torch.arange(x.shape[1])[None, :, None] >= lengths[:, None, None], 0.0)
    x, sub_len = model.subsampling(x, lengths)
    return ref(x, sub_len)


def test_equivalent_to_torchaudio_conformer():
    torch.manual_seed(0)
    model = build_model(micro(dropout=0.1)).eval()
    model.normalizer.set_stats(torch.randn(80), torch.rand(80) + 0.5)
    batch = make_batch(lengths=(60, 60, 60))
    with torch.no_grad():
        ours, ours_len = model.encode(batch.features, batch.feature_lengths)
        ref, ref_len = _reference_encode(model, batch.features, batch.feature_lengths)
    assert torch.equal(ours_len, ref_len)
    assert torch.allclose(ours, ref, atol=1e-5)
    # with padding: mask_padding=False is torchaudio's Conformer.forward exactly ...
    padded = make_batch(lengths=(60, 44, 31), texts=((1,), (2,), (3,)))
    plain = ASRModel(dataclasses.replace(model.config, mask_padding=False)).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref, _ = _reference_encode(model, padded.features, padded.feature_lengths)
        assert torch.allclose(plain.encode(padded.features, padded.feature_lengths)[0], ref, atol=1e-5)
        # ... and mask_padding=True encodes each utterance exactly as torchaudio does it alone
        ours, ours_len = model.encode(padded.features, padded.feature_lengths)
        for i, n in enumerate(padded.feature_lengths.tolist()):
            alone, alone_len = _reference_encode(model, padded.features[i : i + 1, :n], padded.feature_lengths[i : i + 1])
            assert torch.allclose(ours[i, : alone_len[0]], alone[0], atol=1e-5)


def test_presets_sizes():
    with torch.device("meta"):  # no memory, no init time
        paper = build_model("paper")
    counts = count_parameters(paper)
    assert 0.97 * 130e6 <= counts["total"] <= 1.03 * 130e6
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    assert set(counts) == {"subsampling", "conformer", "predictor", "joiner", "total"}
    assert paper.config.head == "rnnt" and paper.config.vocab_size == 4096
    tiny = count_parameters(build_model("tiny"))
    assert tiny["total"] == 3_131_293  # calibration.md's measured CTC-char model, same architecture
    assert set(tiny) == {"subsampling", "conformer", "ctc_head", "total"}
    with torch.device("meta"):
        small = count_parameters(build_model("small"))["total"]
    assert 10e6 <= small <= 30e6


def test_config_validation():
    assert set(PRESETS) == {"tiny", "small", "paper"}
    with pytest.raises(ValueError, match="odd"):
        ModelConfig(conv_kernel=32)
    with pytest.raises(ValueError, match="out of range"):
        ModelConfig(num_layers=2, checkpoint_blocks=[0, 2])
    with pytest.raises(ValueError, match="unknown model preset"):
        model_config("huge")
    with pytest.raises(ValueError, match=r"\[model\]: unknown key\(s\) \['not_a_field'\]"):
        conformer_asr(preset="tiny", not_a_field=1)
    # TOML's kebab-case names the same fields as Python's snake_case
    assert model_config("tiny", **{"ctc-aux-weight": 0.3, "head": "rnnt"}).ctc_aux_weight == 0.3
    assert ModelConfig(checkpoint_blocks=[1, 0]).checkpoint_blocks == (1, 0)


@pytest.mark.parametrize("head", ["ctc", "rnnt"])
def test_state_dict_round_trip(tmp_path, head):
    torch.manual_seed(0)
    model = build_model(micro(head))
    model.normalizer.set_stats(torch.randn(80), torch.rand(80) + 0.5)
    torch.save({"config": dataclasses.asdict(model.config), "model": model.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt")
    loaded = build_model(ModelConfig(**ckpt["config"]))
    loaded.load_state_dict(ckpt["model"])
    batch = make_batch()
    model.eval(), loaded.eval()
    assert torch.equal(loaded.normalizer.mean, model.normalizer.mean)
    with torch.no_grad():
        assert torch.equal(model.loss(batch)[0], loaded.loss(batch)[0])
        assert torch.equal(model.encode(batch.features, batch.feature_lengths)[0],
                           loaded.encode(batch.features, batch.feature_lengths)[0])


def _saved_bytes(fn) -> int:
    """Bytes of tensors autograd saves for backward while ``fn`` runs."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out


@pytest.mark.parametrize("head", ["ctc", "rnnt"])
def test_gradient_checkpointing_same_loss_and_grads(head):
    torch.manual_seed(0)
    plain = build_model(micro(head, dropout=0.1, num_layers=3)).train()
    ckpt = ASRModel(dataclasses.replace(plain.config, checkpoint_blocks=(0, 2))).train()
    ckpt.load_state_dict(plain.state_dict())
    batch = make_batch()
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(123)  # same dropout masks; checkpoint replays the RNG state on recompute
        saved, (loss, _) = _saved_bytes(lambda: model.loss(batch))
        loss.backward()
        results.append((saved, loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (saved_p, loss_p, grads_p), (saved_c, loss_c, grads_c) = results
    assert torch.equal(loss_p, loss_c)
    for name, g in grads_p.items():
        assert torch.allclose(g, grads_c[name], atol=1e-6), name
    assert saved_c < 0.7 * saved_p  # checkpointed blocks really keep fewer activations


def _overfit(model, batch, steps, lr=5e-3, until=None):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        loss, info = model.loss(batch)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if until is not None and step % 20 == 19 and until(model):
            break
    return losses


def test_ctc_overfits_and_greedy_decodes_transcript():
    torch.manual_seed(0)
    model = build_model(micro("ctc"))
    batch = make_batch()
    want = [[8, 5, 12, 12, 15, 1], [23, 15, 18, 12, 4]]  # "hello" + "a" has a repeat: needs a blank
    decode = lambda m: greedy_decode(m, batch.features, batch.feature_lengths) == want
    losses = _overfit(model, batch, 300, until=decode)
    assert losses[-1] < 0.2 * losses[0]
    assert decode(model)
    assert model.training  # greedy_decode restored the mode


def test_rnnt_loss_finite_and_decreasing():
    torch.manual_seed(0)
    model = build_model(micro("rnnt"))
    losses = _overfit(model, make_batch(), 60)
    assert losses[-1] < 0.4 * losses[0]


@pytest.mark.parametrize("blank", [0, 5])
def test_two_class_rnnt_lattice_equals_torchaudio_fused_loss(blank):
    """fedasr.model.rnnt_loss hands torchaudio only [blank, next token] log-probs: same loss, same gradients."""
    torch.manual_seed(1)
    b, t, u, c = 3, 17, 6, 40
    logits = (3 * torch.randn(b, t, u + 1, c)).requires_grad_()
    targets = torch.randint(1, c, (b, u))
    targets[targets == blank] = blank + 1  # targets never hold the blank
    targets[2, 1:] = 0  # padding beyond the target length is ignored
    tlen, llen = torch.tensor([6, 4, 1]), torch.tensor([17, 12, 5])
    ref = torchaudio.functional.rnnt_loss(logits, targets.int(), llen.int(), tlen.int(), blank=blank,
                                          reduction="none")
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    ours = rnnt_loss(logits, targets, llen, tlen, blank=blank)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-4)
    assert (g_ours - g_ref).abs().max() < 1e-4, (g_ours - g_ref).abs().max()  # float32 rounding
    # the hand-written backward of the picked log-softmax, against finite differences in float64
    from fedasr.model import _PickedLogSoftmax

    x = torch.randn(2, 3, 4, 7, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 7, (2, 3, 4, 2))
    assert torch.autograd.gradcheck(_PickedLogSoftmax.apply, (x, index))
    # a wrong target changes the loss (the lattice really reads the targets)
    other = targets.clone()
    other[0, 0] = (other[0, 0] % (c - 1)) + 1 if other[0, 0] % (c - 1) + 1 != blank else other[0, 0] + 2
    assert not torch.isclose(rnnt_loss(logits, other, llen, tlen, blank=blank)[0], ours[0])


def test_loss_reductions():
    torch.manual_seed(0)
    model = build_model(micro("ctc")).eval()
    batch = make_batch()
    mean, info = model.loss(batch)
    total, _ = model.loss(batch, reduction="sum")
    assert torch.allclose(total, 2 * mean)
    assert info["num_utterances"] == 2 and info["num_tokens"] == 11
    assert info["loss_per_token"] == pytest.approx(total.item() / 11, rel=1e-5)


@pytest.mark.parametrize("head", ["ctc", "rnnt"])
def test_bad_inputs_give_clear_errors(head):
    model = build_model(micro(head))
    # 19 frames -> 4 encoder frames; "aaa" needs 3 tokens + 2 separating blanks = 5 for CTC
    short = make_batch(lengths=(60, 19), texts=((1, 2), (1, 1, 1)))
    if head == "ctc":
        with pytest.raises(DataError, match="'utt1'.*too short"):
            model.loss(short)
    else:
        assert torch.isfinite(model.loss(short)[0])  # RNN-T only needs one frame
    tiny = make_batch(lengths=(60, 6), texts=((1, 2), (3,)))  # 6 frames -> 0 encoder frames
    with pytest.raises(DataError, match="'utt1'.*too short"):
        model.loss(tiny)
    empty = make_batch(lengths=(60, 60), texts=((1, 2), ()))
    with pytest.raises(DataError, match="'utt1': empty transcript"):
        model.loss(empty)
    with pytest.raises(ValueError, match="'utt0'.*outside 1..28"):
        model.loss(make_batch(texts=((29,), (1,))))
    broken = make_batch()
    with pytest.raises(ValueError, match="exceed its padded tensors"):
        model.loss(broken._replace(feature_lengths=torch.tensor([61, 52])))
    nan = make_batch()
    nan.features[0, 3, 5] = float("nan")
    with pytest.raises(FloatingPointError, match="'utt0'"):
        model.loss(nan)


def test_model_does_not_import_decoding():
    code = "import sys, fedasr.model; sys.exit('fedasr.decoding' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # decoding imports model, not back


def test_invalid_utterances_can_be_skipped():
    torch.manual_seed(0)
    model = build_model(micro("ctc"))
    batch = make_batch(lengths=(60, 52, 6), texts=((1, 2), (3, 4), (5,)))
    loss, info = model.loss(batch, on_invalid="skip")
    assert list(info["skipped"]) == ["utt2"] and "too short" in info["skipped"]["utt2"]
    assert info["num_utterances"] == 2
    ok = Batch(batch.features[:2], batch.feature_lengths[:2], batch.targets[:2], batch.target_lengths[:2])
    model.eval()
    assert torch.allclose(model.loss(batch, on_invalid="skip")[0], model.loss(ok)[0])
    none_ok = make_batch(lengths=(6,), texts=((1,),))
    loss, info = model.loss(none_ok, on_invalid="skip")
    assert loss.item() == 0 and info["num_utterances"] == 0
    loss.backward()  # a zero that still supports backward
    assert greedy_decode(model, none_ok.features, none_ok.feature_lengths) == [[]]
