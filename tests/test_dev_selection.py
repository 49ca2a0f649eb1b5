"""`fedasr.dev_selection`: the headline's rule on dev splits (issue 18)."""

import json

import pytest

from fedasr import dev_selection


def _run(root, name, curve, lr=1e-4):
    """A run folder with round 0 (the seed: user 0.50, proxy 0.40) and ``curve``: {round: (user, proxy)}."""
    d = root / "screen" / name
    d.mkdir(parents=True)
    rows = [{"round": 0, "eval": {"wer_user_dev": 0.50, "wer_proxy_dev": 0.40}}]
    for rnd, (u, p) in curve.items():
        rows += [{"round": rnd - 1}, {"round": rnd, "eval": {"wer_user_dev": u, "wer_proxy_dev": p}}]
    (d / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "config.json").write_text(json.dumps({"config": {"fed": {"server-lr": lr, "central-mix": 0.5}}}))


def test_lowest_user_wer_within_the_proxy_bound_and_ties_to_fewer_rounds(tmp_path):
    _run(tmp_path, "fast", {20: (0.40, 0.45), 40: (0.35, 0.46)})          # best user WER, but forgets: excluded
    _run(tmp_path, "slow", {20: (0.44, 0.41), 40: (0.42, 0.411), 60: (0.42, 0.405)}, lr=2e-4)  # 0.412 is the limit
    out = dev_selection.select(tmp_path, "screen", ["fast", "slow"], bound=0.03)
    assert out["chosen"]["variant"] == "slow" and out["chosen"]["round"] == 40  # tie at 0.42: fewer rounds
    assert out["chosen"]["fed"]["server-lr"] == 2e-4
    assert out["chosen"]["user_rel"] == pytest.approx(0.42 / 0.50 - 1)
    assert json.loads((tmp_path / "screen" / "selection.json").read_text())["chosen"] == out["chosen"]
    assert [r["round"] for r in out["candidates"]["slow"]] == [20, 40, 60]  # round 0 is not a candidate


def test_limits_name_the_best_gain_within_the_bound_and_at_any_cost(tmp_path):
    _run(tmp_path, "fast", {20: (0.40, 0.45), 40: (0.35, 0.46)})
    _run(tmp_path, "slow", {20: (0.44, 0.41), 40: (0.42, 0.411)})
    dev_selection.select(tmp_path, "screen", ["fast", "slow"], bound=0.03)
    (line,) = dev_selection.limits(tmp_path, "screen")
    assert "within the proxy bound was -16.0% (`slow`, round 40)" in line
    assert "at any proxy cost -30.0% (`fast`, round 40, proxy +15.0%)" in line
    assert dev_selection.limits(tmp_path, "absent") == []


def test_nothing_within_the_bound_chooses_nothing_and_says_so(tmp_path):
    _run(tmp_path, "fast", {20: (0.40, 0.45)})
    out = dev_selection.select(tmp_path, "screen", ["fast"], bound=0.03)
    assert out["chosen"] is None and "nothing chosen" in out["note"]


def test_runs_from_different_seed_models_are_refused(tmp_path):
    _run(tmp_path, "a", {20: (0.40, 0.40)})
    _run(tmp_path, "b", {20: (0.40, 0.40)})
    rows = (tmp_path / "screen" / "b" / "rounds.jsonl").read_text().replace('"wer_user_dev": 0.5,', '"wer_user_dev": 0.6,')
    (tmp_path / "screen" / "b" / "rounds.jsonl").write_text(rows)
    with pytest.raises(ValueError, match="round 0 differs"):
        dev_selection.select(tmp_path, "screen", ["a", "b"])


@pytest.mark.parametrize("name", ["headline", "quick", "quick_rnnt"])
def test_the_committed_headline_config_is_the_dev_screens_choice(name):
    """configs/quality/headline.toml and the ablation's quick.toml (whose last row is the headline) must carry what
    results/quality-dev/selection.json chose (α, server lr, rounds), and declare the dev splits it was chosen on; their
    test splits are read at the end of the run only."""
    import tomllib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    sel_path, cfg_path = repo / "results/quality-dev/selection.json", repo / f"configs/quality/{name}.toml"
    if not (sel_path.exists() and cfg_path.exists()):
        pytest.skip("the dev screen or the headline config is not committed yet")
    chosen = json.loads(sel_path.read_text())["chosen"]
    cfg = tomllib.loads(cfg_path.read_text())
    variant = cfg["variants"][list(cfg["variants"])[-1]]  # the last row is the headline
    fed = {**cfg["fed"], **variant.get("fed", {})}
    assert fed["central-mix"] == chosen["fed"]["central-mix"] and fed["server-lr"] == chosen["fed"]["server-lr"]
    assert fed["num-rounds"] == chosen["round"] and fed["eval-every"] == chosen["round"]  # test read once, at the end
    assert {"user_dev", "user_heldout_dev", "proxy_dev"} <= set(cfg["tuned_on"])
    assert set(cfg["task"]["eval-splits"]) == {"user_test", "user_heldout", "proxy_test"}
    assert fed["weighting"] == "frequency" and variant["labels"] == "filtered" and variant["min-corrections"] == 1
    assert cfg["filter"]["max-char-edit"] == json.loads(
        (repo / "results/quality/filter_calibration.json").read_text())["threshold"]  # the held-out choice
