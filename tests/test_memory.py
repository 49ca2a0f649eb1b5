"""Memory accounting: the analytic model against exact saved-tensor counts, its scaling, and a measured subprocess."""

import pytest
import torch

from fedasr import memory, omc
from fedasr.data import Batch
from fedasr.model import _masked_block, build_model, model_config

MiB = 1 << 20


def _cfg(**kw):
    shape = dict(head="rnnt", num_layers=3, vocab_size=30, d_model=64, num_heads=4, ffn_dim=192,
                 subsampling_channels=16, pred_embed_dim=32, pred_hidden_dim=48, joiner_dim=40)
    return model_config("tiny", **{**shape, **kw})


def _batch(cfg, b=2, t=120, u=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(b, t, cfg.n_mels, generator=g), torch.full((b,), t),
                 torch.randint(1, cfg.vocab_size + 1, (b, u), generator=g), torch.full((b,), u))


@pytest.mark.parametrize("b, t", [(1, 40), (2, 40), (1, 90)], ids=["B1_T40", "B2_T40", "B1_T90"])
@pytest.mark.parametrize("d, h, f", [(64, 4, 256), (48, 2, 96)], ids=["D64_F4D", "D48_F2D"])
def test_block_formula_equals_the_saved_tensor_count(b, t, d, h, f):
    model = build_model(_cfg(d_model=d, num_heads=h, ffn_dim=f))
    layer = model.conformer.conformer_layers[0]
    x = torch.randn(t, b, d, requires_grad=True)
    pad = torch.zeros(b, t, dtype=torch.bool)
    _, saved = memory.saved_tensor_bytes(lambda: _masked_block(layer, x, pad), exclude=model.parameters())
    assert saved == memory.block_activation_floats(b, t, d, f, h) * 4


def test_whole_model_estimate_tracks_the_saved_tensor_count():
    cfg = _cfg()
    model = build_model(cfg)
    batch = _batch(cfg)
    _, saved = memory.saved_tensor_bytes(lambda: model.loss(batch)[0], exclude=model.parameters())
    est = memory.estimate(model, memory.RoundShape(batch=2, frames=120, tokens=6))["activations"]
    assert abs(est - saved) <= 0.1 * saved


def test_activations_scale_linearly_with_the_batch():
    model = build_model(_cfg())
    names = {n for n, _ in model.named_parameters()}
    one = memory.activation_breakdown(model, memory.RoundShape(batch=1, frames=400, tokens=20), names)
    four = memory.activation_breakdown(model, memory.RoundShape(batch=4, frames=400, tokens=20), names)
    for k in ("subsampling", "blocks", "joiner", "loss", "total"):
        assert four[k] == pytest.approx(4 * one[k], rel=0.01), k


def test_checkpointing_keeps_only_block_inputs():
    cfg = _cfg()
    model = build_model(cfg)
    names = {n for n, _ in model.named_parameters()}
    shape = memory.RoundShape(batch=2, frames=800, tokens=20)
    plain = memory.activation_breakdown(model, shape, names, checkpoint_blocks=())
    ckpt = memory.activation_breakdown(model, shape, names, checkpoint_blocks=range(cfg.num_layers))
    t = ((800 - 1) // 2 - 1) // 2
    assert ckpt["blocks"] == cfg.num_layers * 2 * t * cfg.d_model * 4  # one (B, T', D) input per block
    assert ckpt["blocks"] < plain["blocks"] / 10
    assert ckpt["transient"] >= plain["blocks"] / cfg.num_layers  # one block recomputed at a time


def test_measured_activations_fall_with_checkpointing():
    """The saved-tensor count agrees: checkpointed blocks keep only their inputs."""
    cfg = _cfg()
    batch = _batch(cfg)
    sizes = []
    for ckpt in ((), (0, 1, 2)):
        model = build_model(model_config("tiny", **{**cfg.__dict__, "checkpoint_blocks": ckpt}))
        sizes.append(memory.saved_tensor_bytes(lambda: model.loss(batch)[0], exclude=model.parameters())[1])
    est = [memory.estimate(build_model(_cfg(checkpoint_blocks=c)), memory.RoundShape(batch=2, frames=120, tokens=6))
           for c in ((), (0, 1, 2))]
    drop = sizes[0] - sizes[1]
    assert drop > 0 and abs(drop - (est[0]["activations"] - est[1]["activations"])) <= 0.1 * drop


def test_estimate_parts_follow_the_round_configuration():
    with torch.device("meta"):
        model = build_model("paper")
    p = sum(x.numel() for x in model.parameters())
    adam = memory.estimate(model, memory.RoundShape(batch=4, optimizer="adam", delta_copy=True))
    sgd = memory.estimate(model, memory.RoundShape(batch=4))
    assert adam["weights"] == sgd["weights"] == p * 4 + 2 * 80 * 4  # + the normaliser's statistics
    assert adam["optimizer"] == 2 * p * 4 and adam["weight_copy"] == p * 4 and sgd["optimizer"] == 0
    assert adam["peak"] > sgd["peak"]
    omc.apply_omc(model)
    q = memory.estimate(model, memory.RoundShape(batch=4))
    assert q["weights"] < 0.27 * sgd["weights"]
    above = {n for n, _ in model.named_parameters()
             if not n.startswith(("subsampling.", "conformer.conformer_layers.0."))}  # block 0 and below frozen
    part = memory.estimate(model, memory.RoundShape(batch=4), trainable=above)
    assert part["gradients"] < q["gradients"] and part["activations"] < q["activations"]
    # fedasr.grad_stream: 8-bit accumulators instead of fp32 .grad, held through backward beside one fold's two fp32
    # copies of the largest variable; no fp32 update is formed for the upload
    s8 = memory.estimate(model, memory.RoundShape(batch=4, grad_bits=8))
    largest = max(x.numel() for x in model.parameters())
    assert s8["gradients"] == p and q["gradients"] == 4 * p
    assert s8["phases"]["backward"] == q["phases"]["backward"] + p + 2 * largest * 4  # one micro-batch: q holds none
    assert s8["phases"]["upload"] == q["phases"]["upload"] - 4 * p + p


def test_measured_peak_of_a_fresh_process_is_plausible():
    nbytes = 200 * MiB
    m = memory.measure_peak("fedasr.memory:_allocate", {"nbytes": nbytes}, timeout=120)
    assert m["result"]["numel"] == nbytes // 4
    assert m["baseline_rss_bytes"] > 50 * MiB  # torch is imported
    assert nbytes * 0.95 <= m["peak_rss_bytes"] <= nbytes + 100 * MiB
    assert m["vmhwm_bytes"] >= m["baseline_rss_bytes"] + m["peak_rss_bytes"] - MiB


def test_status_and_cuda_counters():
    s = memory.read_status()
    assert s["VmRSS"] > 0 and s["VmHWM"] >= s["VmRSS"]
    with memory.cuda_peak() as peak:
        torch.ones(10)
    if not torch.cuda.is_available():
        assert peak["peak_bytes"] is None
