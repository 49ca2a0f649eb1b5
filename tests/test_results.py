"""Run directories write self-describing, atomic JSON."""

import json
import math

import pytest

from fedasr import results


def test_new_run_writes_config_with_provenance(tmp_path):
    run = results.new_run("exp", {"a": 1}, results_root=tmp_path, run_id="r1")
    cfg = json.loads(run.config_path.read_text())
    assert cfg["config"] == {"a": 1} and cfg["run_id"] == "r1"
    assert cfg["environment"]["packages"]["torch"]  # versions recorded
    with pytest.raises(FileExistsError):
        run.log_round({"round": 1})
        results.new_run("exp", {}, results_root=tmp_path, run_id="r1")
    again = results.new_run("exp", {"a": 2}, results_root=tmp_path, run_id="r1", resume=True)
    assert again.rounds() == [{"round": 1}]


def test_rounds_and_summary_handle_nan(tmp_path):
    run = results.new_run("exp", {}, results_root=tmp_path)
    run.log_round({"round": 1, "loss": float("nan")})
    run.log_round({"round": 2, "loss": 1.5})
    assert [r["loss"] for r in run.rounds()] == [None, 1.5]
    run.write_summary({"wer": 0.25, "inf": math.inf})
    assert run.summary() == {"wer": 0.25, "inf": None}
    assert not list(run.path.glob("*.tmp"))
