"""The notebooks' worked examples (`fedasr.examples`) show the numbers their text claims."""

import math

import pytest

from fedasr import examples
from fedasr.memory import F32, _subsampled
from fedasr.model import model_config
from fedasr.refinement import FilterConfig


def test_one_local_step_on_all_data_is_the_fedsgd_step():
    """FedAvg with one local SGD step over the whole client sends exactly Δ = −lr·g."""
    r = examples.fedsgd_vs_fedavg(micro_batch=1000, local_epochs=1)
    for c in r["clients"]:
        assert c["local steps"] == 1
        assert c["cos(Δ, −g)"] == pytest.approx(1.0, abs=1e-5)
        assert c["‖Δ‖ / (lr·steps·‖g‖)"] == pytest.approx(1.0, abs=1e-5)
    for b in r["bias"]:
        assert b["−Δ / (lr·steps)"] == pytest.approx(b["g"], abs=1e-6)


def test_fedsgd_vs_fedavg_defaults():
    """Several local steps drift from the gradient; weights are n_i; one server step of each lowers the loss."""
    r = examples.fedsgd_vs_fedavg()
    assert r["weights"] == [c["n"] for c in r["clients"]]
    for c in r["clients"]:
        assert c["local steps"] == 3 * math.ceil(c["n"] / 4)
        assert 0.5 < c["cos(Δ, −g)"] < 0.999
    start, *after = r["eval"]
    assert all(e["loss"] < start["loss"] for e in after)
    assert r["bias_name"] == "net.2.bias" and len(r["bias"]) == 4


def test_omc_error_is_at_most_half_a_grid_step_and_bytes_match_a_hand_count():
    r = examples.omc_weight(bits=4, shape=(4, 8))
    by = {s["grid"]: s for s in r["summary"]}
    for s in by.values():
        assert s["max error / step"] <= 0.5 + 1e-5
        assert s["fp32 bytes"] == 32 * 4
    assert by["per_variable"]["stored bytes"] == 32 // 2 + 2 * 4  # 4-bit codes + one fp32 scale and offset
    assert by["per_channel"]["stored bytes"] == 32 // 2 + 4 * 2 * 4  # ... one scale and offset per row
    small = r["rows"][-1]  # the row of smallest magnitude gains most from its own grid
    assert small["max error per_channel"] < small["max error per_variable"] / 4
    assert small["step per_variable"] == pytest.approx(r["rows"][0]["step per_variable"])


def test_checkpointing_keeps_only_block_inputs():
    plain, ckpt = examples.checkpointing_memory(preset="tiny", seconds=8.0, measure=False)
    c = model_config("tiny")
    inputs = c.num_layers * _subsampled(800) * c.d_model * F32  # one (1, T', D) input per block
    assert ckpt["blocks' saved activations MiB"] * examples.MiB == pytest.approx(inputs)
    assert plain["blocks' saved activations MiB"] > 50 * ckpt["blocks' saved activations MiB"]
    assert ckpt["analytic peak MiB"] < plain["analytic peak MiB"]
    assert ckpt["largest transient MiB"] > plain["largest transient MiB"]  # one block recomputed in backward


@pytest.mark.parametrize("cfg", [FilterConfig(), FilterConfig(max_char_edit=0.7)], ids=["default", "quality"])
def test_the_filter_keeps_the_name_fix_and_drops_the_rewrite(cfg):
    rows = examples.filter_pairs(cfg)
    assert [r["verdict"] for r in rows] == ["kept", "char-edit", "unchanged", "too-fast"]
    assert rows[0]["label"] == "text mairi i'm running late"
    assert rows[1]["char edit"] > cfg.max_char_edit >= rows[0]["char edit"]


def test_wca_weights_of_one_round():
    rows = {r["client"][0]: r for r in examples.wca_round(FilterConfig(max_char_edit=0.7))}
    assert [rows[k]["kept n_i"] for k in "ABC"] == [4, 2, 3]
    for k, n in zip("ABC", [4, 2, 3]):
        assert rows[k]["examples share"] == pytest.approx(n / 9)
    idf = lambda df: 1 + math.log(4 / (1 + df))  # noqa: E731  (K = 3 clients)
    assert rows["A"]["s_i"] == pytest.approx(idf(2))  # "weather": fixed by A and C
    assert rows["B"]["s_i"] == pytest.approx(idf(1))  # its own names
    assert rows["C"]["s_i"] == pytest.approx((idf(2) + 2 * idf(1)) / 3)
    assert rows["B"]["frequency share"] > rows["B"]["examples share"]
    assert rows["A"]["frequency share"] < rows["A"]["examples share"]
    loss = {"A": 4 * 0.8, "B": 2 * 2.0, "C": 3 * 1.2}  # n_i·L_i
    for k in "ABC":
        assert rows[k]["loss share"] == pytest.approx(loss[k] / sum(loss.values()))
