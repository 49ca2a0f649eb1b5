"""Partial model training: selections are data, frozen variables stay put and are not sent, per-key aggregation."""

import pytest
import torch

from fedasr import memory, omc, partial
from fedasr.data import Batch
from fedasr.federated import aggregation
from fedasr.federated import client_update as cu
from fedasr.federated import config as fedconfig
from fedasr.model import build_model, model_config
from fedasr.partial import PartialConfig


def _cfg(**kw):
    return model_config("tiny", head="rnnt", num_layers=4, vocab_size=20, d_model=48, num_heads=4, ffn_dim=96,
                        subsampling_channels=16, pred_embed_dim=32, pred_hidden_dim=32, joiner_dim=32, **kw)


def _batch(cfg, seed=0, b=2, t=60, u=5):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(b, t, cfg.n_mels, generator=g), torch.full((b,), t),
                 torch.randint(1, cfg.vocab_size + 1, (b, u), generator=g), torch.full((b,), u),
                 tuple(f"u{i}" for i in range(b)))


POLICIES = {
    "all": PartialConfig("all"),
    "top_k=1": PartialConfig("top_k", top_k=1),
    "top_k=2_no_head": PartialConfig("top_k", top_k=2, train_head=False),
    "random_blocks": PartialConfig("random", fraction=0.4),
    "random_variables": PartialConfig("random", fraction=0.3, unit="variable"),
}


@pytest.mark.parametrize("pcfg", POLICIES.values(), ids=POLICIES.keys())
def test_frozen_variables_are_byte_identical_after_training_and_not_uploaded(pcfg):
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    sel = partial.select(model, pcfg, seed=3, server_round=2, client_id="c7")
    partial.apply_selection(model, sel)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    fcfg = fedconfig.FedConfig(strategy="fedavg", local_epochs=2, client_optimizer="adam", client_lr=0.01)
    update = cu.fedavg_client_update(model, omc.resident_state(model), [_batch(cfg, 1), _batch(cfg, 2)], fcfg)
    assert set(update.arrays) == set(sel.names)  # only trainable variables travel
    for n, p in model.named_parameters():
        if n in sel.names:
            continue
        assert p.grad is None
        assert torch.equal(p.detach().view(torch.uint8), start[n].view(torch.uint8)), n  # byte-identical
    moved = [n for n in sel.names if not torch.equal(dict(model.named_parameters())[n], start[n])]
    assert moved  # the trainable ones did train


def test_top_k_selects_the_top_blocks_and_the_head():
    model = build_model(_cfg())
    names = partial.top_k_names(model, 2)
    blocks = {n.split(".")[2] for n in names if n.startswith("conformer.")}
    assert blocks == {"2", "3"}
    assert any(n.startswith("predictor.") for n in names) and any(n.startswith("joiner.") for n in names)
    assert not any(n.startswith("subsampling.") for n in names)
    assert partial.top_k_names(model, 0, train_head=False) == []


def test_random_policy_is_seeded_by_seed_round_and_client():
    model = build_model(_cfg())
    pick = lambda r, c, s=0: partial.random_names(model, 0.3, s, r, c)  # noqa: E731
    assert pick(1, "a") == pick(1, "a")
    assert len({tuple(pick(r, c)) for r in range(4) for c in "abc"}) > 6
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    counts = dict.fromkeys(sizes, 0)
    for r in range(300):
        names = pick(r, "a")
        assert sum(sizes[n] for n in names) >= 0.3 * sum(sizes.values())
        for n in names:
            counts[n] += 1
    assert min(counts.values()) > 0  # every variable trains sometimes


def test_frozen_bottom_blocks_store_no_activations():
    cfg = _cfg()  # dropout > 0, as in training (the analytic model counts dropout masks)
    model = build_model(cfg)
    params = list(model.parameters())
    _, full = memory.saved_tensor_bytes(lambda: model.loss(_batch(cfg))[0], exclude=params)
    partial.apply_selection(model, partial.top_k_names(model, 1))
    outputs = []
    hook = model.conformer.conformer_layers[0].ffn2.register_forward_hook(lambda m, a, o: outputs.append(o))
    _, top1 = memory.saved_tensor_bytes(lambda: model.loss(_batch(cfg))[0], exclude=params)
    hook.remove()
    assert not outputs[0].requires_grad  # no graph is built below the lowest trainable block
    # what remains is the top block, the head and the loss; the analytic model says the same
    shape = memory.RoundShape(batch=2, frames=60, tokens=5)
    est_full = memory.activation_breakdown(model, shape, {n for n, _ in model.named_parameters()})["total"]
    est_top1 = memory.activation_breakdown(model, shape, set(partial.top_k_names(model, 1)))["total"]
    assert top1 < full
    assert abs((full - top1) - (est_full - est_top1)) <= 0.15 * (est_full - est_top1)


def test_partial_aggregation_averages_each_variable_over_its_contributors():
    a = cu.Update({"x": torch.tensor([1.0]), "y": torch.tensor([2.0])}, num_examples=1)
    b = cu.Update({"x": torch.tensor([3.0])}, num_examples=3)
    c = cu.Update({"y": torch.tensor([6.0]), "z": torch.tensor([5.0])}, num_examples=1)
    expected = {"x": 2.5, "y": 4.0, "z": 5.0}  # x: (1·1 + 3·3)/4; y: (2·1 + 6·1)/2; z: only c
    assert {k: float(v) for k, v in aggregation.aggregate([a, b, c]).items()} == expected


BUDGETS_MIB = [300, 400, 450, 500, 550, 600, 700, 800, 900, 1000, 1200, 1600]


@pytest.fixture(scope="module")
def paper_skeleton():
    with torch.device("meta"):
        model = build_model(model_config("paper", checkpoint_blocks=tuple(range(18))))
    omc.apply_omc(model)
    return model


def test_budget_policy_never_exceeds_its_budget(paper_skeleton):
    shape = memory.RoundShape(batch=1, frames=800, tokens=40, micro_batches=4, upload_bytes_per_param=1.0)
    prev = -1
    fitted = 0
    for mib in BUDGETS_MIB:
        sel = partial.select(paper_skeleton, PartialConfig("budget"), budget_bytes=mib << 20, shape=shape)
        if not sel.fits:
            assert sel.names == () and sel.estimate_bytes > mib << 20
            continue
        fitted += 1
        est = memory.estimate(paper_skeleton, shape, trainable=sel.names)["peak"]
        assert est == sel.estimate_bytes <= mib << 20
        size = sum(p.numel() for n, p in paper_skeleton.named_parameters() if n in sel.names)
        assert size >= prev  # a larger budget never trains less
        prev = size
    assert 0 < fitted < len(BUDGETS_MIB)  # the range covers both outcomes


def test_budget_policy_needs_a_budget():
    with pytest.raises(ValueError, match="budget"):
        partial.select(build_model(_cfg()), PartialConfig("budget"))


def test_unknown_variables_are_rejected():
    with pytest.raises(KeyError):
        partial.apply_selection(build_model(_cfg()), ["nope.weight"])
