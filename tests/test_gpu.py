"""The CUDA path: the same numbers as on CPU for the loss, the codecs, OMC and decoding; the paper preset's step.

Skipped without a CUDA device (CI and developers' machines have none); run with ``pytest -m gpu`` where one is.
TF32 is switched off so that CUDA and CPU float32 results can be compared tightly.
"""

import pytest
import torch

from fedasr import omc
from fedasr.compression import dequantize, quantize
from fedasr.data import Batch
from fedasr.decoding import greedy_decode
from fedasr.memory import cuda_peak
from fedasr.model import build_model, count_parameters, model_config, rnnt_loss

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _batch(n_mels, vocab, b=2, t=60, u=5, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([t - 7 * i for i in range(b)])
    batch = Batch(torch.randn(b, t, n_mels, generator=g), lengths,
                  torch.randint(1, vocab + 1, (b, u), generator=g), torch.tensor([u - i for i in range(b)]),
                  tuple(f"u{i}" for i in range(b)), ())
    return Batch(*(x.to(device) if torch.is_tensor(x) else x for x in batch))


def _small(head):
    return model_config("tiny", head=head, num_layers=2, vocab_size=20, d_model=48, num_heads=4, ffn_dim=96,
                        subsampling_channels=16, pred_embed_dim=32, pred_hidden_dim=32, joiner_dim=32,
                        dropout=0.0)


def test_rnnt_loss_and_gradients_on_cuda_equal_cpu():
    torch.manual_seed(0)
    logits = 3 * torch.randn(3, 40, 9, 64)
    targets = torch.randint(1, 64, (3, 8))
    llen, tlen = torch.tensor([40, 31, 12]), torch.tensor([8, 5, 2])
    out = {}
    for dev in ("cpu", "cuda"):
        x = logits.to(dev).requires_grad_()
        loss = rnnt_loss(x, targets.to(dev), llen.to(dev), tlen.to(dev))
        (g,) = torch.autograd.grad(loss.sum(), x)
        out[dev] = loss.detach().cpu(), g.cpu()
    assert torch.allclose(out["cuda"][0], out["cpu"][0], rtol=1e-5, atol=1e-4)
    assert (out["cuda"][1] - out["cpu"][1]).abs().max() < 1e-4


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_on_cuda_gives_the_cpu_codes(bits, per_channel):
    x = torch.randn(64, 33)
    for kw in (dict(), dict(value_range=(-1.5, 2.0)), dict(symmetric=True)):
        cpu = quantize(x, bits, per_channel=per_channel, **kw)
        gpu = quantize(x.to(CUDA), bits, per_channel=per_channel, **kw)
        assert gpu.data.device.type == "cuda" and gpu.scale.device.type == "cuda"
        assert torch.equal(gpu.data.cpu(), cpu.data), kw
        assert torch.allclose(dequantize(gpu).cpu(), dequantize(cpu), atol=1e-6), kw
    # stochastic rounding with a CPU generator: the same draws, hence the same codes, on either device
    cpu = quantize(x, bits, stochastic=True, generator=torch.Generator().manual_seed(3))
    gpu = quantize(x.to(CUDA), bits, stochastic=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(gpu.data.cpu(), cpu.data)


@pytest.mark.parametrize("head", ["rnnt", "ctc"])
def test_omc_model_on_cuda_equals_cpu(head):
    cfg = _small(head)
    models = {}
    for dev in ("cpu", "cuda"):
        torch.manual_seed(0)
        m = build_model(cfg).to(dev)
        omc.apply_omc(m, omc.OMCConfig(bits=8))
        loss, _ = m.loss(_batch(cfg.n_mels, cfg.vocab_size, device=dev))
        loss.backward()
        omc.sgd_step(m, 0.1)
        models[dev] = loss.detach().cpu(), {k: v.detach().cpu() for k, v in m.state_dict().items()}
    assert torch.allclose(models["cuda"][0], models["cpu"][0], rtol=1e-5)
    for k, v in models["cpu"][1].items():
        # weights after the requantizing step agree; float32 rounding of the gradient may move a value that lies
        # on a rounding tie to the neighbouring 8-bit level (one grid step), but only rarely
        diff = (models["cuda"][1][k] - v).abs()
        step = float(v.max() - v.min()) / 255 if v.numel() > 1 else 0.0
        assert diff.max() <= 1.01 * step + 1e-5, k
        assert (diff > 1e-5).float().mean() < 0.01, k


@pytest.mark.parametrize("head", ["rnnt", "ctc"])
def test_greedy_decoding_on_cuda_equals_cpu(head):
    cfg = _small(head)
    torch.manual_seed(1)
    m = build_model(cfg).eval()
    b = _batch(cfg.n_mels, cfg.vocab_size, b=3, t=80)
    with torch.no_grad():
        cpu = greedy_decode(m, b.features, b.feature_lengths)
        gpu = greedy_decode(m.to(CUDA), b.features.to(CUDA), b.feature_lengths.to(CUDA))
    assert gpu == cpu


def test_paper_preset_step_on_cuda(record_property):
    """The 130M RNN-T preset: one fwd+bwd on 2 x 5 s, finite loss and gradients, peak CUDA memory reported."""
    cfg = model_config("paper", dropout=0.0)  # no dropout: CPU and CUDA see the same network
    torch.manual_seed(0)
    m = build_model(cfg).to(CUDA).train()
    assert abs(count_parameters(m)["total"] - 130e6) <= 0.03 * 130e6
    b = _batch(cfg.n_mels, cfg.vocab_size, b=2, t=500, u=30, device=CUDA)
    with cuda_peak(CUDA) as peak:
        loss, _ = m.loss(b)
        loss.backward()
        torch.cuda.synchronize()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    record_property("paper_step_cuda_peak_bytes", peak["peak_bytes"])
    print(f"paper preset fwd+bwd 2 x 5 s on CUDA: peak {peak['peak_bytes'] / 2**30:.2f} GiB")
    # the same loss as on CPU from the same weights and batch
    m_cpu = build_model(cfg)
    m_cpu.load_state_dict({k: v.cpu() for k, v in m.state_dict().items()})
    m_cpu.train()
    with torch.no_grad():
        ref, _ = m_cpu.loss(Batch(*(x.cpu() if torch.is_tensor(x) else x for x in b)))
    assert torch.allclose(loss.detach().cpu(), ref, rtol=1e-4)
