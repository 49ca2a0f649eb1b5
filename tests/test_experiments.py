"""Experiment runners: config validation (fast) and one end-to-end quality ablation on Flower (slow)."""

import json

import pytest

from fedasr import config, experiments
from fedasr.config import ConfigError
from fedasr.results import REPO_ROOT


def test_variant_config_merges_and_validates(tmp_path):
    exp = experiments.FederatedExperiment(variants={"a": {"fed": {"strategy": "fedavg", "client-lr": 0.1}},
                                                    "b": {"task": {"labels": "truth"}}})
    a = experiments.variant_config(exp, "a")
    assert a.fed.strategy == "fedavg" and a.fed.client_lr == 0.1 and a.task.name == "asr"
    assert a.run.run_id == "a" and a.task.params["labels"] == "hypotheses"
    assert experiments.variant_config(exp, "b").task.params["labels"] == "truth"
    # a bad variant fails when the experiment is built (before any run), naming the key
    with pytest.raises(ConfigError, match="variants.x.fed.stratgy"):
        experiments.FederatedExperiment(variants={"x": {"fed": {"stratgy": "fedavg"}}})
    with pytest.raises(ConfigError, match=r"weighting: 'idf' is not an accepted value; accepted values: \['examples'"):
        experiments.FederatedExperiment(variants={"x": {"fed": {"weighting": "idf"}}})


def test_variant_tables_merge_key_by_key_over_the_shared_ones():
    exp = experiments.FederatedExperiment(fed=config.from_dict(experiments.FedConfig, {
        "omc": {"bits": 4, "transform": "per_channel"}, "transport": {"upload": {"name": "int8_sr"}}}),
        variants={"v": {"fed": {"omc": {"bits": 8}, "transport": {"upload": {"lossless": "zlib"}}}}})
    fed = experiments.variant_config(exp, "v").fed
    assert (fed.omc.bits, fed.omc.transform) == (8, "per_channel")  # the shared transform survives
    assert (fed.transport.upload.name, fed.transport.upload.lossless) == ("int8_sr", "zlib")
    assert fed.transport.upload.symmetric  # FedConfig's default for uploads, not CodecConfig's


@pytest.mark.parametrize("toml,message", [
    ('[fed]\nomc-bits = 4\n', r"exp.toml: config key 'fed.omc-bits' was renamed: use 'fed.omc.bits' instead"),
    ('[variants.v]\nfed = { upload-codec = "int8" }\n',
     r"exp.toml: config key 'variants.v.fed.upload-codec' was renamed: use 'variants.v.fed.transport.upload.name'"),
    ('[fed.partial]\npolicy = "largest"\n', r"exp.toml: fed.partial.policy: 'largest' is not an accepted value; "
                                              r"accepted values: \['all', 'top_k', 'random', 'budget'\]"),
    ('[fed]\nnum-round = 3\n', r"exp.toml: unknown config key 'fed.num-round'. Did you mean \['num-rounds'\]"),
])
def test_retired_unknown_and_bad_keys_fail_naming_the_file_key_and_accepted_values(tmp_path, toml, message):
    path = tmp_path / "exp.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        config.load(experiments.FederatedExperiment, path)


def test_quality_experiment_rejects_unknown_variant_keys():
    with pytest.raises(ConfigError, match="variants.v: unknown key"):
        experiments.QualityExperiment(variants={"v": {"label": "filtered"}})
    with pytest.raises(ConfigError, match="corrections.p-wrng"):
        config.from_dict(experiments.QualityExperiment, {"corrections": {"p-wrng": 0.1}})


def test_every_committed_experiment_config_loads_and_compare_names_rows():
    """configs/quality/*.toml and the quality-cost configs load (unknown keys, bad variants and bad `compare` pairs
    fail when loaded, before any run)."""
    for path in sorted((REPO_ROOT / "configs" / "quality").glob("*.toml")):
        config.load(experiments.QualityExperiment, path)
    for name in ("quality_cost", "quality_cost_tiny"):
        config.load(experiments.FederatedExperiment, REPO_ROOT / "configs" / "efficiency" / f"{name}.toml")
    wca = config.load(experiments.QualityExperiment, REPO_ROOT / "configs/quality/wca_hetero.toml")
    assert ["filtering", "wca_frequency"] in wca.compare and wca.corrections.wrong_concentration > 0
    with pytest.raises(ConfigError, match="compare"):
        experiments.QualityExperiment(variants={"v": {}}, compare=[["seed", "w"]])
    with pytest.raises(ConfigError, match="seeds"):
        experiments.FederatedExperiment(seeds=[1, 1])


@pytest.mark.slow
def test_federated_experiment_over_seeds_writes_means_and_paired_intervals(fake_corpus, fake_seed, tmp_path):
    exp = config.from_dict(experiments.FederatedExperiment, {
        "results-root": str(tmp_path), "experiment": "cost", "seeds": [0, 1], "reference": "plain",
        "task": {"corpus": str(fake_corpus), "seed-model": str(fake_seed / "model"), "labels": "truth",
                 "eval-splits": ["user_test", "proxy_test"]},
        "fed": {"strategy": "fedsgd", "num-rounds": 1, "clients-per-round": 2, "micro-batch": 4, "eval-every": 1},
        "variants": {"plain": {}, "int8": {"fed": {"transport": {"upload": {"name": "int8_sr"}}}}}})
    runs = experiments.run_federated_experiment(exp)
    assert sorted(runs) == ["seed0/int8", "seed0/plain", "seed1/int8", "seed1/plain"]
    s = json.loads((tmp_path / "cost" / "summary.json").read_text())
    per = [json.loads((tmp_path / "cost" / f"seed{k}" / "summary.json").read_text()) for k in (0, 1)]
    assert per[0]["seed"] == 0 and per[1]["seed"] == 1 and s["seeds"] == [0, 1]
    mean = (per[0]["variants"][1]["final"]["wer_user"] + per[1]["variants"][1]["final"]["wer_user"]) / 2
    assert s["variants"][1]["final"]["wer_user"] == pytest.approx(mean) and s["variants"][1]["n_seeds"] == 2
    rel = {r["variant"]: r for r in s["relative"]}
    assert len(rel["int8"]["wer_user_rel_ci95"]) == 2 and "verdict" in rel["int8"]
    assert s["evidence"].endswith("cost/evidence.json")
    assert experiments.finished_runs(exp)["int8"].path == tmp_path / "cost" / "seed0" / "int8"


@pytest.mark.slow
def test_quality_ablation_end_to_end_on_flower(fake_corpus, fake_seed, tmp_path):
    exp = config.from_dict(experiments.QualityExperiment, {
        "results-root": str(tmp_path), "task": {"corpus": str(fake_corpus), "seed-model": str(fake_seed / "model"),
                                                "eval-splits": ["user_test", "proxy_test"]},
        "fed": {"strategy": "fedavg", "num-rounds": 1, "clients-per-round": 2, "micro-batch": 4, "eval-every": 1},
        "corrections": {"never-fraction": 0.0, "p-base": 1.0},  # every user corrects: the tiny corpus needs them
        "variants": {"no_refinement": {"labels": "hypotheses"},
                     "wca_frequency": {"labels": "committed", "min-corrections": 1,
                                       "fed": {"weighting": "frequency"}}}})
    rows = experiments.run_quality_experiment(exp)
    assert [r["variant"] for r in rows] == ["seed", "no_refinement", "wca_frequency"]
    assert all(set(r) >= {"variant", "rounds", "wer_user", "wer_new_terms", "wer_proxy"} for r in rows)
    on_disk = json.loads((tmp_path / "quality" / "wer.json").read_text())
    assert on_disk == json.loads(json.dumps(rows))
    assert (tmp_path / "quality" / "config.json").exists() and (tmp_path / "quality" / "summary.json").exists()
    summary = json.loads((tmp_path / "quality" / "summary.json").read_text())
    assert summary["seed_model"]["fingerprint"] == json.loads((fake_seed / "summary.json").read_text())["fingerprint"]
    rounds = [json.loads(x) for x in (tmp_path / "quality" / "wca_frequency" / "rounds.jsonl").read_text().splitlines()]
    ok = [r for r in rounds if r.get("status") == "ok"]
    assert ok and all(r["weights"] for r in ok)  # WCA weights recorded per client


@pytest.mark.slow
def test_quality_ablation_over_seeds_writes_means_and_evidence(fake_corpus, fake_seed, tmp_path):
    exp = config.from_dict(experiments.QualityExperiment, {
        "results-root": str(tmp_path), "seeds": [0, 1], "tuned-on": ["user_dev"],
        "task": {"corpus": str(fake_corpus), "seed-model": str(fake_seed / "model"),
                 "eval-splits": ["user_test", "proxy_test"]},
        "fed": {"strategy": "fedavg", "num-rounds": 1, "clients-per-round": 2, "micro-batch": 4, "eval-every": 1},
        "corrections": {"never-fraction": 0.0, "p-base": 1.0},
        "variants": {"no_refinement": {"labels": "hypotheses"},
                     "filtering": {"labels": "filtered", "min-corrections": 1}}})
    rows = experiments.run_quality_experiment(exp)
    root = tmp_path / "quality"
    per_seed = [json.loads((root / f"seed{k}" / "wer.json").read_text()) for k in (0, 1)]
    for i, row in enumerate(rows):
        assert row["n_seeds"] == 2 and len(row["runs"]) == (0 if row["variant"] == "seed" else 2)
        assert row["wer_user"] == pytest.approx((per_seed[0][i]["wer_user"] + per_seed[1][i]["wer_user"]) / 2)
    # each seed simulates its own users: the two seeds' correction records differ
    recs = [(root / f"seed{k}" / "corrections.jsonl").read_text() for k in (0, 1)]
    assert recs[0] != recs[1]
    assert (root / "seed1" / "filtering" / "hypotheses" / "round001.jsonl").exists()
    ev = json.loads((root / "evidence.json").read_text())
    assert ev["seeds"] == [0, 1] and ev["tuned_on"] == ["user_dev"] and ev["headline"] == "filtering"
    assert [r["variant"] for r in ev["rows"]] == ["seed", "no_refinement", "filtering"]
    assert set(ev["rows"][0]) >= {"wer_user", "wer_proxy"} and "wer_new_terms" not in ev["rows"][0]  # no user_heldout
    assert {(c["a"], c["b"]) for c in ev["comparisons"]} == {("seed", "no_refinement"), ("no_refinement", "filtering"),
                                                             ("seed", "filtering")}
    summary = json.loads((root / "summary.json").read_text())
    assert summary["tuned_on"] == ["user_dev"] and summary["evidence"].endswith("evidence.json")


def test_relative_rows_against_the_reference_variant():
    rows = [{"variant": "fp32", "bytes_down": 600, "bytes_up": 400, "final": {"wer_user": 0.80, "wer_proxy": 0.7}},
            {"variant": "small", "bytes_down": 60, "bytes_up": 40, "final": {"wer_user": 0.82, "wer_proxy": 0.7}},
            {"variant": "worse", "bytes_down": 50, "bytes_up": 40, "final": {"wer_user": 0.84, "wer_proxy": 0.7}}]
    rel = {r["variant"]: r for r in experiments.relative_rows(rows, "fp32")}
    assert rel["fp32"]["transport_ratio"] == 1.0 and rel["fp32"]["wer_user_rel"] == 0.0
    assert rel["small"]["transport_ratio"] == pytest.approx(0.10) and rel["small"]["wer_user_rel"] == pytest.approx(0.025)
    assert rel["small"]["within_3pct"] and rel["fp32"]["within_3pct"]
    assert rel["worse"]["transport_ratio"] == pytest.approx(0.09) and not rel["worse"]["within_3pct"]  # 5% worse


def test_quality_targets_compare_full_refinement_with_the_seed():
    rows = [{"variant": "seed", "wer_user": 1.0, "wer_new_terms": 1.0, "wer_proxy": 0.5},
            {"variant": "no_refinement", "wer_user": 0.5, "wer_new_terms": 0.5, "wer_proxy": 0.5},
            {"variant": "full", "wer_user": 0.79, "wer_new_terms": 0.71, "wer_proxy": 0.52}]
    t = experiments.quality_targets(rows)
    assert t["compare"] == ["seed", "full"]
    assert t["relative_change"]["wer_user"] == pytest.approx(-0.21)
    assert t["met"] == {"wer_user": True, "wer_new_terms": False, "wer_proxy": False}  # -29% and +4%
