"""bench/efficiency.py's bookkeeping (no 129M runs): cumulative rows and P2's quality half."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_efficiency", ROOT / "bench" / "efficiency.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def test_rows_are_cumulative_and_the_paper_config_names_a_measured_p2_stack(bench):
    from fedasr import config, experiments

    cfg = config.load(bench.EfficiencyConfig, ROOT / "configs" / "efficiency" / "paper.toml")
    rows = bench.row_settings(cfg)
    assert [r["stack"] for r in rows] == list(bench.STACK)
    assert rows[0]["strategy"] == "fedavg" and all(r["strategy"] == "fedsgd" for r in rows[1:])
    assert rows[4]["upload"]["name"] == cfg.upload.name and rows[5]["omc"]["bits"] == cfg.omc.bits
    assert cfg.p2_row in bench.STACK and cfg.quality_variant
    # the named small-scale variant federates with the same OMC and upload settings as the p2 row
    qc = config.load(experiments.FederatedExperiment, ROOT / "configs" / "efficiency" / "quality_cost.toml")
    fed = qc.variants[cfg.quality_variant]["fed"]
    assert fed["omc-bits"] == cfg.omc.bits and fed["omc-transform"] == cfg.omc.transform
    assert fed["upload-codec"] == cfg.upload.name and fed["upload-lossless"] == cfg.upload.lossless


def test_p2_quality_reads_the_named_variant(bench, tmp_path):
    summary = {"relative_to": "fp32", "relative": [
        {"variant": "fp32", "transport_ratio": 1.0, "wer_user": 0.8, "wer_user_rel": 0.0, "within_3pct": True},
        {"variant": "small", "transport_ratio": 0.1, "wer_user": 0.84, "wer_user_rel": 0.05, "within_3pct": False}]}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    cfg = bench.EfficiencyConfig(quality_summary=str(path), quality_variant="small")
    q = bench._p2_quality(cfg)
    assert q["variant"] == "small" and q["reference"] == "fp32" and q["within_3pct"] is False
    assert bench._p2_quality(bench.EfficiencyConfig(quality_summary=str(path), quality_variant="missing")) is None
    assert bench._p2_quality(bench.EfficiencyConfig(quality_summary=str(tmp_path / "none.json"),
                                                    quality_variant="small")) is None


def test_resummarize_refreshes_p2_quality_without_measuring(bench, tmp_path):
    import shutil

    out = tmp_path / "eff"
    out.mkdir()
    for name in ("memory.json", "summary.json", "config.json"):
        shutil.copy(ROOT / "results" / "efficiency" / name, out / name)
    before = json.loads((out / "summary.json").read_text())
    quality = tmp_path / "q.json"
    cfg = bench.EfficiencyConfig(out_dir=str(out), figure=str(tmp_path / "fig.png"), quality_summary=str(quality),
                                 quality_variant="small", p2_row=before["P2"]["row"])
    for rel, met in ((0.05, False), (0.01, True)):
        quality.write_text(json.dumps({"relative_to": "fp32", "relative": [
            {"variant": "small", "transport_ratio": 0.1, "wer_user": 0.8, "wer_user_rel": rel}]}))
        after = bench.resummarize(cfg)
        assert after["P2"]["quality"]["wer_user_rel"] == rel and after["met"]["P2"] is (
            met and after["P2"]["transport_ratio"] <= 0.10)
        # the measured halves are read back, not re-measured
        assert after["P1_peak_ratio"] == before["P1_peak_ratio"]
        assert after["P3_step_time_ratio"] == before["P3_step_time_ratio"]
    # config.json still names the run that measured the rows
    assert (out / "config.json").read_text() == (ROOT / "results" / "efficiency" / "config.json").read_text()
    (out / "memory.json").write_text("[]")
    with pytest.raises(ValueError, match="no measured rows"):
        bench.resummarize(cfg)
