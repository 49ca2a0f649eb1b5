"""Online Model Compression: forward/gradients equal the dequantized model, no fp32 copy outlives its op."""

import copy

import pytest
import torch

from fedasr import omc
from fedasr.compression import dequantize
from fedasr.data import Batch
from fedasr.federated.client_update import fedsgd_client_update
from fedasr.model import build_model, model_config


def _cfg(head="rnnt", checkpoint=(), **kw):
    return model_config("tiny", head=head, num_layers=2, vocab_size=20, d_model=48, num_heads=4, ffn_dim=96,
                        subsampling_channels=16, pred_embed_dim=32, pred_hidden_dim=32, joiner_dim=32,
                        dropout=0.0, checkpoint_blocks=checkpoint, **kw)


def _batch(cfg, b=2, t=60, u=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(b, t, cfg.n_mels, generator=g), torch.tensor([t, t - 7][:b]),
                 torch.randint(1, cfg.vocab_size + 1, (b, u), generator=g), torch.tensor([u, u - 1][:b]),
                 tuple(f"u{i}" for i in range(b)))


def _pair(cfg, omc_cfg=None, seed=0):
    """An OMC model and a plain model holding exactly its dequantized weights."""
    torch.manual_seed(seed)
    m = build_model(cfg)
    omc.apply_omc(m, omc_cfg or omc.OMCConfig())
    ref = build_model(cfg)
    ref.load_state_dict(m.state_dict())
    return m, ref


@pytest.mark.parametrize("head", ["rnnt", "ctc"])
@pytest.mark.parametrize("checkpoint", [(), (0, 1)], ids=["no_ckpt", "ckpt_all"])
@pytest.mark.parametrize("bits", [16, 8, 4])
def test_omc_forward_and_gradients_equal_the_dequantized_model(head, checkpoint, bits):
    cfg = _cfg(head, checkpoint)
    m, ref = _pair(cfg, omc.OMCConfig(bits=bits))
    batch = _batch(cfg)
    loss, _ = m.loss(batch)
    loss.backward()
    ref_loss, _ = ref.loss(batch)
    ref_loss.backward()
    assert torch.allclose(loss, ref_loss, rtol=1e-6, atol=1e-6)
    grads, ref_grads = dict(m.named_parameters()), dict(ref.named_parameters())
    for n, p in ref_grads.items():  # straight-through: the anchor's gradient is the gradient w.r.t. Ŵ
        assert torch.allclose(grads[n].grad, p.grad, rtol=1e-5, atol=1e-6), n


@pytest.mark.parametrize("checkpoint", [(), (0, 1)], ids=["no_ckpt", "ckpt_all"])
def test_no_fp32_copy_of_a_quantized_weight_outlives_its_op(checkpoint):
    cfg = _cfg("rnnt", checkpoint)
    m, _ = _pair(cfg)
    scopes = {}
    for qv in m._omc.vars.values():
        scopes[id(qv.scope)] = scopes.get(id(qv.scope), 0) + qv.owner._parameters[qv.attr].numel() * 4
    with omc.track_dequantized(m) as stats:
        loss, _ = m.loss(_batch(cfg))
        assert stats.created > 0 and stats.alive() == 0  # forward done: autograd holds references, not copies
        loss.backward()
        assert stats.alive() == 0 and stats.live_bytes == 0
    assert stats.peak_live_bytes <= max(scopes.values())  # one module's weights at a time


def test_without_saved_tensor_hooks_autograd_keeps_fp32_copies():
    """The check above can fail: with ``free_saved=False`` the copies live until backward."""
    cfg = _cfg("rnnt")
    m, _ = _pair(cfg, omc.OMCConfig(free_saved=False))
    with omc.track_dequantized(m) as stats:
        loss, _ = m.loss(_batch(cfg))
        assert stats.alive() > 0
        loss.backward()
    assert stats.alive() == 0


def test_quantized_weights_hold_no_fp32_storage():
    cfg = _cfg()
    torch.manual_seed(0)
    m = build_model(cfg)
    fp32 = sum(p.numel() * 4 for p in m.parameters())
    names = omc.apply_omc(m, omc.OMCConfig(bits=8))
    params = dict(m.named_parameters())
    for n in names:
        assert params[n].untyped_storage().nbytes() == 4  # the anchor: a NaN scalar expanded
        assert torch.isnan(params[n]).all()  # reading it outside OMC's hooks is loud
    sizes = omc.storage_bytes(m)
    q_numel = sum(params[n].numel() for n in names)
    assert sizes["quantized"] == q_numel + 8 * len(names)  # 1 byte per weight + fp32 scale and offset
    assert sizes["total"] < 0.3 * fp32


def test_weight_matrices_only_and_partial_parameter_quantization():
    cfg = _cfg()
    m = build_model(cfg)
    params = dict(m.named_parameters())
    full = omc.select_quantized(m, omc.OMCConfig())
    assert full and all(params[n].dim() >= 2 for n in full)  # OMC technique 2
    assert not any(n.endswith(".bias") for n in full)
    part = omc.select_quantized(m, omc.OMCConfig(fp32_fraction=0.3))  # OMC technique 3
    kept = [n for n in full if n not in part]
    assert sum(params[n].numel() for n in kept) >= 0.3 * sum(params[n].numel() for n in full)
    assert full[0] in kept and full[-1] in kept  # nearest the input and the output first
    pat = omc.select_quantized(m, omc.OMCConfig(fp32_patterns=("joiner.*",)))
    assert not any(n.startswith("joiner.") for n in pat) and any(n.startswith("joiner.") for n in full)


@pytest.mark.parametrize("transform", ["per_variable", "per_channel", "global"])
def test_per_variable_transformation(transform):
    cfg = _cfg()
    torch.manual_seed(0)
    m = build_model(cfg)
    orig = {n: p.detach().clone() for n, p in m.named_parameters()}
    omc.apply_omc(m, omc.OMCConfig(transform=transform))
    scales = []
    for n, qv in m._omc.vars.items():
        e = omc._codes(qv)
        step = e.scale[:, None] if transform == "per_channel" else e.scale
        err = (dequantize(e).reshape(e.shape[0], -1) - orig[n].reshape(e.shape[0], -1)).abs()
        assert (err <= step / 2 + 1e-6).all(), n
        scales.append(e.scale)
        if transform == "per_channel":
            assert e.scale.numel() == e.shape[0]
    distinct = len({round(float(s[0]), 9) for s in scales})
    assert distinct == 1 if transform == "global" else distinct > 1


def test_fedsgd_client_update_works_unchanged_on_an_omc_model():
    cfg = _cfg()
    m, ref = _pair(cfg)
    batches = [_batch(cfg, seed=1), _batch(cfg, seed=2)]
    codes = {n: omc._codes(qv).data.clone() for n, qv in m._omc.vars.items()}
    up = fedsgd_client_update(m, omc.resident_state(m), batches)
    ref_up = fedsgd_client_update(ref, ref.state_dict(), batches)
    assert set(up.arrays) == set(ref_up.arrays)
    for n, g in ref_up.arrays.items():
        assert torch.allclose(up.arrays[n], g, rtol=1e-5, atol=1e-6), n
    for n, qv in m._omc.vars.items():  # FedSGD: the stored codes never change during the round
        assert torch.equal(omc._codes(qv).data, codes[n])


def test_loading_fp32_weights_quantizes_them():
    cfg = _cfg()
    m, _ = _pair(cfg)
    torch.manual_seed(7)
    other = build_model(cfg).state_dict()
    m.load_state_dict(other)
    back = m.state_dict()
    for n in m._omc.vars:
        e = omc._codes(m._omc.vars[n])
        assert (back[n] - other[n]).abs().max() <= float(e.scale.max()) / 2 + 1e-6


def test_download_payload_is_adopted_without_copies():
    cfg = _cfg()
    torch.manual_seed(0)
    server = build_model(cfg).state_dict()
    with torch.device("meta"):
        client = build_model(cfg)
    names = omc.apply_omc(client, omc.OMCConfig())
    payload = omc.encode_state(server, names)
    omc.load_payload(client, payload)
    for n in names:
        assert omc._codes(client._omc.vars[n]).data.data_ptr() == payload[n].data.data_ptr()
    m, _ = _pair(cfg)  # the same weights quantized on the server side
    batch = _batch(cfg)
    client.eval(), m.eval()
    with torch.no_grad():
        assert torch.allclose(client.loss(batch)[0], m.loss(batch)[0], atol=1e-6)
    assert omc.storage_bytes(client) == omc.storage_bytes(m)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_fedavg_local_step_requantizes(rounding):
    cfg = _cfg()
    m, ref = _pair(cfg, omc.OMCConfig(rounding=rounding))
    start = omc.snapshot(m)
    loss, _ = m.loss(_batch(cfg))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    before = {n: p.detach().clone() for n, p in ref.named_parameters()}  # dequantized start weights
    omc.sgd_step(m, lr=0.1, generator=torch.Generator().manual_seed(0))
    after = m.state_dict()
    for n, qv in m._omc.vars.items():
        e = omc._codes(qv)
        assert e.data.dtype == torch.uint8  # still stored as 8-bit codes
        target = before[n] - 0.1 * grads[n]
        bound = float(e.scale.max()) * (1.0 if rounding == "stochastic" else 0.5)
        assert (after[n] - target).abs().max() <= bound + 1e-6, n
    d = omc.delta(m, start)
    for n in d:
        assert torch.allclose(d[n], after[n] - before[n], atol=1e-6), n
    assert all(p.grad is None for p in m.parameters())


def test_frozen_anchor_gets_no_gradient():
    cfg = _cfg()
    m, _ = _pair(cfg)
    name = next(iter(m._omc.vars))
    dict(m.named_parameters())[name].requires_grad_(False)
    m.loss(_batch(cfg))[0].backward()
    assert dict(m.named_parameters())[name].grad is None


def test_double_conversion_is_rejected():
    m = build_model(_cfg())
    omc.apply_omc(m)
    with pytest.raises(ValueError, match="already"):
        omc.apply_omc(copy.copy(m))
