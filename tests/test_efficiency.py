"""fedasr.efficiency: cumulative rows, the config schema, P2's pairing check, the schedule of the fresh-process
measurements (fedasr.fresh_runs), and a real (tiny) measured table."""

import dataclasses
import itertools
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedasr import config, efficiency, efficiency_p2, fresh_runs
from fedasr.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "efficiency" / "paper.toml"
QUALITY = "configs/efficiency/quality_cost.toml"
SETTINGS_KEYS = {"stack", "strategy", "optimizer", "micro_batch", "checkpoint", "download", "upload", "omc", "budget_mib",
                 "grad_stream"}
ROW_KEYS = {"stack", "preset", "params", "peak_rss_bytes", "analytic", "download_bytes", "upload_bytes", "step_seconds",
            "step_seconds_runs", "step_seconds_runs_concurrent", "step_concurrent", "baseline_rss_bytes", "vmhwm_bytes", "vmhwm_after_imports_bytes", "hwm_reset",
            "rss_file_growth_bytes", "rss_anon_held_at_end_bytes", "decode_seconds", "encode_seconds", "loss",
            "trainable_params", "trainable_units", "settings"}


def test_rows_are_cumulative_with_the_federated_schema():
    cfg = config.load(efficiency.EfficiencyConfig, PAPER)
    rows = efficiency.row_settings(cfg)
    assert [r["stack"] for r in rows] == list(efficiency.STACK)
    assert all(set(r) == SETTINGS_KEYS for r in rows)
    assert rows[0]["strategy"] == "fedavg" and rows[0]["optimizer"] == "adam"
    assert all(r["strategy"] == "fedsgd" and r["optimizer"] == "none" for r in rows[1:])
    # each row keeps everything of the row above and changes one technique
    changed = [{k for k in SETTINGS_KEYS - {"stack"} if a[k] != b[k]} for a, b in itertools.pairwise(rows)]
    assert changed == [{"strategy", "optimizer"}, {"micro_batch"}, {"checkpoint"}, {"download", "upload"}, {"omc"},
                       {"grad_stream"}, {"budget_mib"}]
    assert rows[4]["download"] == dataclasses.asdict(cfg.transport.download)
    assert rows[4]["upload"] == dataclasses.asdict(cfg.transport.upload) and cfg.transport.upload.name == "int4_sr"
    assert rows[5]["omc"] == dataclasses.asdict(cfg.omc) and (cfg.omc.bits, cfg.omc.transform) == (4, "per_channel")
    assert rows[6]["grad_stream"] == dataclasses.asdict(cfg.grad_stream) and cfg.grad_stream.bits == 8
    assert rows[7]["budget_mib"] == 512 == cfg.partial.budget_mib and cfg.partial.policy == "budget"
    # a subset of rows is still cumulative from the first
    sub = efficiency.row_settings(dataclasses.replace(cfg, rows=("fedsgd", "+omc")))
    assert [r["stack"] for r in sub] == ["fedsgd", "+omc"] and sub[1]["checkpoint"] and sub[1]["micro_batch"] == 1


def test_defaults_and_the_tiny_config():
    d = efficiency.EfficiencyConfig()
    assert d.transport.download.name == "fp16" and d.transport.upload.name == "int8_sr"
    assert d.transport.upload.symmetric and d.transport.upload.lossless == "zlib" and d.transport.upload.zlib_level == 1
    assert d.omc.bits == 8 and d.omc.transform == "per_variable"
    assert d.partial.policy == "budget" and d.partial.budget_mib == 768
    tiny = config.load(efficiency.EfficiencyConfig, ROOT / "configs" / "efficiency" / "tiny.toml")
    assert efficiency.row_settings(dataclasses.replace(tiny, preset="paper", out_dir=d.out_dir, figure=d.figure)) \
        == efficiency.row_settings(d)


@pytest.mark.parametrize("toml, new_key", [
    ('[upload]\nname = "int8_sr"\n', "transport.upload"),
    ('[download]\nname = "fp16"\n', "transport.download"),
    ("budget-mib = 512\n", "partial.budget-mib"),
])
def test_retired_keys_fail_naming_their_new_key(tmp_path, toml, new_key):
    path = tmp_path / "old.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=rf"renamed: use '{new_key}'"):
        config.load(efficiency.EfficiencyConfig, path)


def test_the_partial_row_needs_a_budget():
    with pytest.raises(ConfigError, match="partial.policy must be 'budget'"):
        config.load(efficiency.EfficiencyConfig, None, {"partial.policy": "top_k"})
    with pytest.raises(ConfigError, match="unknown row"):
        config.load(efficiency.EfficiencyConfig, None, {"p2-row": "+omcc"})


def test_p2_check_passes_for_the_paper_config_and_fails_on_a_mismatched_variant(tmp_path):
    cfg = config.load(efficiency.EfficiencyConfig, PAPER)
    assert cfg.quality_config == QUALITY and cfg.quality_variant
    fed = efficiency.check_quality_variant(cfg, PAPER)
    assert (fed.omc.bits, fed.omc.transform) == (cfg.omc.bits, cfg.omc.transform)
    assert fed.transport.upload.name == cfg.transport.upload.name
    for over, what in (({"omc.bits": 8}, "omc"), ({"omc.transform": "per_variable"}, "omc"),
                       ({"transport.upload.name": "int8_sr"}, "transport.upload"),
                       ({"transport.upload.lossless": "none"}, "transport.upload"),
                       ({"quality-variant": "omc4"}, "transport.upload"),  # omc4: per-variable, upload uncompressed
                       ({"quality-variant": "omc8"}, "omc")):
        bad = config.load(efficiency.EfficiencyConfig, PAPER, over)
        with pytest.raises(ConfigError, match=what) as e:
            efficiency.check_quality_variant(bad, "configs/efficiency/paper.toml")
        assert "configs/efficiency/paper.toml" in str(e.value) and QUALITY in str(e.value)
    with pytest.raises(ConfigError, match="not a variant"):
        efficiency.check_quality_variant(config.load(efficiency.EfficiencyConfig, PAPER, {"quality-variant": "nope"}))
    # run and resummarize check before measuring or reading anything
    bad = config.load(efficiency.EfficiencyConfig, PAPER, {"omc.bits": 8, "out-dir": str(tmp_path / "none")})
    for fn in (efficiency.run, efficiency.resummarize):
        with pytest.raises(ConfigError, match=QUALITY):
            fn(bad)


def test_p2_quality_reads_the_named_variant(tmp_path):
    summary = {"relative_to": "fp32", "relative": [
        {"variant": "fp32", "transport_ratio": 1.0, "wer_user": 0.8, "wer_user_rel": 0.0, "within_3pct": True},
        {"variant": "small", "transport_ratio": 0.1, "wer_user": 0.84, "wer_user_rel": 0.05, "within_3pct": False}]}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    cfg = efficiency.EfficiencyConfig(quality_summary=str(path), quality_variant="small")
    q = efficiency_p2.p2_quality(cfg)
    assert q["variant"] == "small" and q["reference"] == "fp32" and q["within_3pct"] is False
    assert efficiency_p2.p2_quality(dataclasses.replace(cfg, quality_variant="missing")) is None
    assert efficiency_p2.p2_quality(dataclasses.replace(cfg, quality_summary=str(tmp_path / "none.json"))) is None


class FakeRounds:
    """A stand-in for `efficiency._measure`: sleeps briefly, notes who ran beside whom, returns fixed numbers.

    Step times: a row's first run takes 100 + its index seconds, later runs 5 + index, 4 + index, ... so a
    row's minimum over its later (solo) runs is recognisable. Peaks and bytes depend on the row only.
    """

    def __init__(self, seconds=0.1):
        self.seconds, self.lock, self.active, self.runs = seconds, threading.Lock(), [], []
        self.calls: dict[str, int] = {}

    def __call__(self, row, common, state, timeout):
        stack = row["stack"]
        with self.lock:
            me = {"stack": stack, "neighbours": {a["stack"] for a in self.active}}
            for a in self.active:
                a["neighbours"].add(stack)
            self.active.append(me)
            self.runs.append(me)
            n = self.calls[stack] = self.calls.get(stack, 0) + 1
            me["most_at_once"] = len(self.active)
        time.sleep(self.seconds)
        with self.lock:
            self.active.remove(me)
        i = efficiency.STACK.index(stack)
        names = [k for k, _ in efficiency._skeleton(common["preset"], row).named_parameters()]
        result = {"upload_bytes": 1000 + i, "step_seconds": 100.0 + i if n == 1 else 6.0 - n + i,
                  "decode_seconds": 0.1, "encode_seconds": 0.1, "loss": 1.0 + i, "trainable": names}
        m = {"peak_rss_bytes": (10 - i) * 2**20, "baseline_rss_bytes": 2**20, "vmhwm_bytes": 11 * 2**20,
             "vmhwm_after_imports_bytes": 2**20, "hwm_reset": True, "rss_file_growth_bytes": 0,
             "rss_anon_end_bytes": 0, "rss_anon_baseline_bytes": 0, "result": result}
        return m, 2000 + i


def _fake_table(monkeypatch, tmp_path, jobs, repeats=2):
    fake = FakeRounds()
    monkeypatch.setattr(efficiency, "_measure", fake)
    # tiny.toml's utterance set: as at 129M, FedAvg+Adam and FedSGD (batch 4) have the largest analytic peaks
    cfg = config.load(efficiency.EfficiencyConfig, ROOT / "configs" / "efficiency" / "tiny.toml", {
        "jobs": jobs, "timing-repeats": repeats, "out-dir": str(tmp_path / "eff"), "figure": str(tmp_path / "fig.png"),
        "quality-summary": str(tmp_path / "none.json")})
    rows = efficiency.run(cfg)
    return fake, rows, json.loads((tmp_path / "eff" / "summary.json").read_text())


def test_rows_run_side_by_side_and_the_p3_pair_alone(monkeypatch, tmp_path):
    fake, rows, summary = _fake_table(monkeypatch, tmp_path, jobs=2)
    assert [r["stack"] for r in rows] == list(efficiency.STACK)  # output in row order
    assert max(r["most_at_once"] for r in fake.runs) == 2  # two at a time, never more
    # every row once side by side, then the P3 pair's 2 repeats each, alone
    n = len(efficiency.STACK)
    assert [r["stack"] for r in fake.runs[n:]] == ["fedavg_adam"] * 2 + ["+partial"] * 2
    assert sorted(r["stack"] for r in fake.runs[:n]) == sorted(efficiency.STACK)
    assert all(not r["neighbours"] for r in fake.runs[n:])
    # the two heaviest rows (analytic peak: FedAvg+Adam, then FedSGD with batch 4) never side by side
    peaks = {r["stack"]: r["analytic"]["peak"] for r in rows}
    assert sorted(peaks, key=peaks.get)[-2:] == ["fedsgd", "fedavg_adam"]
    assert not any({"fedavg_adam", "fedsgd"} <= {r["stack"], *r["neighbours"]} for r in fake.runs)
    for row in rows:
        runs = [r for r in fake.runs if r["stack"] == row["stack"]]
        assert len(row["step_seconds_runs"]) == len(row["step_seconds_runs_concurrent"]) == len(runs)
        # whoever had a neighbour is flagged (the flag is conservative: wall-clock overlap)
        assert all(flag for r, flag in zip(runs, row["step_seconds_runs_concurrent"]) if r["neighbours"])
        # per-process measurements are the row's first run, whatever ran beside it
        i = efficiency.STACK.index(row["stack"])
        assert (row["peak_rss_bytes"], row["download_bytes"], row["loss"]) == ((10 - i) * 2**20, 2000 + i, 1.0 + i)
    first, last = rows[0], rows[-1]
    for r, i in ((first, 0), (last, len(efficiency.STACK) - 1)):
        assert r["step_seconds_runs"][1:] == [4.0 + i, 3.0 + i] and r["step_seconds_runs_concurrent"][1:] == [False] * 2
        assert r["step_seconds"] == 3.0 + i and r["step_concurrent"] is False  # the solo minimum
    middle = [r for r in rows[1:-1] if r["step_seconds_runs_concurrent"][0]]
    assert middle and all(r["step_concurrent"] and r["step_seconds"] >= 100 for r in middle)
    assert summary["P3_step_time_ratio"] == (3.0 + len(efficiency.STACK) - 1) / 3.0  # solo runs only
    assert summary["p3_timing"]["solo_only"] and summary["p3_timing"]["solo_runs"] == {"fedavg_adam": 2, "+partial": 2}


def test_one_job_keeps_every_run_alone(monkeypatch, tmp_path):
    fake, rows, summary = _fake_table(monkeypatch, tmp_path, jobs=1)
    assert [r["stack"] for r in fake.runs] == [*efficiency.STACK, "fedavg_adam", "fedavg_adam", "+partial", "+partial"]
    assert all(not r["neighbours"] for r in fake.runs)
    assert not any(r["step_concurrent"] or any(r["step_seconds_runs_concurrent"]) for r in rows)
    assert rows[0]["step_seconds_runs"] == [100.0, 4.0, 3.0] and rows[0]["step_seconds"] == 3.0
    assert [r["step_seconds"] for r in rows[1:-1]] == [100.0 + i for i in range(1, len(efficiency.STACK) - 1)]
    assert summary["p3_timing"]["solo_runs"] == {"fedavg_adam": 3, "+partial": 3}


def test_without_repeats_the_p3_pair_is_measured_alone(monkeypatch, tmp_path):
    fake, rows, summary = _fake_table(monkeypatch, tmp_path, jobs=2, repeats=0)
    n = len(efficiency.STACK) - 2  # after the others, one at a time
    assert [r["stack"] for r in fake.runs[n:]] == ["fedavg_adam", "+partial"]
    assert all(not r["neighbours"] for r in fake.runs[n:])
    assert rows[0]["step_seconds_runs"] == [100.0] and not rows[0]["step_concurrent"]
    last = 100.0 + len(efficiency.STACK) - 1
    assert summary["p3_timing"]["solo_only"] and summary["P3_step_time_ratio"] == last / 100.0


def test_plan_and_the_side_by_side_runner():
    assert fresh_runs.plan(7, 2, 2) == (list(range(7)), [0, 0, 6, 6])
    assert fresh_runs.plan(7, 1, 2) == (list(range(7)), [0, 0, 6, 6])
    assert fresh_runs.plan(7, 2, 0) == ([1, 2, 3, 4, 5], [0, 6])
    assert fresh_runs.plan(7, 1, 0) == (list(range(7)), [])
    assert fresh_runs.plan(1, 2, 0) == ([], [0])
    # three at a time, results in task order although the first task ends last
    runs = fresh_runs.run_side_by_side([0.3, 0.05, 0.05, 0.05], lambda s: time.sleep(s) or s, jobs=3)
    assert [r.result for r in runs] == [0.3, 0.05, 0.05, 0.05] and all(r.concurrent for r in runs)
    assert [r.task for r in runs] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="boom"):
        fresh_runs.run_side_by_side([1, 2], lambda x: (_ for _ in ()).throw(RuntimeError("boom")), jobs=2)
    with pytest.raises(ConfigError, match="jobs"):
        config.load(efficiency.EfficiencyConfig, None, {"jobs": 0})


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A real table of the tiny preset: the plain row and the full stack, each one round in a fresh process.

    The P2 pairing of configs/efficiency/paper.toml is kept (checked against quality_cost.toml); the budget
    (5.5 MiB, with the streamed 8-bit gradient) lets the tiny model's top 3 of 6 blocks train.
    """
    tmp = tmp_path_factory.mktemp("efficiency")
    cfg = config.load(efficiency.EfficiencyConfig, PAPER, {
        "preset": "tiny", "utterances": 2, "seconds": 1.0, "tokens": 5, "rows": ["fedavg_adam", "+partial"],
        "timing-repeats": 0, "partial.budget-mib": 5.5, "out-dir": str(tmp / "eff"), "figure": str(tmp / "fig.png"),
        "quality-summary": str(tmp / "quality.json")})
    rows = efficiency.run(cfg)
    return cfg, rows, tmp / "eff"


def test_run_writes_the_table_schema(measured):
    cfg, rows, out = measured
    assert json.loads((out / "memory.json").read_text()) == json.loads(json.dumps(rows))  # tuples → lists
    assert [r["stack"] for r in rows] == ["fedavg_adam", "+partial"]
    assert all(set(r) == ROW_KEYS for r in rows)
    assert [r["settings"] for r in rows] == efficiency.row_settings(cfg)  # the settings each row ran with
    plain, full = rows
    assert plain["peak_rss_bytes"] > 0
    assert plain["analytic"]["optimizer"] > 0 and full["analytic"]["optimizer"] == 0  # Adam's moments
    assert full["download_bytes"] < plain["download_bytes"] / 4  # 4-bit OMC download vs fp32
    assert full["upload_bytes"] < plain["upload_bytes"] / 4  # int4 + zlib, and fewer variables
    # the fresh process trained what the budget policy picks for partial.budget-mib
    summary = json.loads((out / "summary.json").read_text())
    swept = next(s for s in summary["budget_sweep_analytic"] if s["budget_bytes"] == int(5.5 * 2**20))
    assert full["trainable_units"] == swept["trained_units"] == ["block.3", "block.4", "block.5", "ctc_head"]
    assert full["analytic"]["peak"] <= 5.5 * 2**20 and full["trainable_params"] < plain["trainable_params"]
    assert summary["rows"] == ["fedavg_adam", "+partial"] and summary["P2"]["quality"] is None
    assert summary["P1_peak_ratio"] == full["peak_rss_bytes"] / plain["peak_rss_bytes"]
    assert summary["met"]["P2"] is False  # no small-scale quality yet
    recorded = json.loads((out / "config.json").read_text())["config"]
    assert recorded["transport"]["upload"]["name"] == "int4_sr" and recorded["partial"]["budget-mib"] == 5.5
    assert (Path(cfg.figure)).exists()


def test_resummarize_reads_back_the_measured_halves(measured, tmp_path):
    cfg, _, measured_out = measured
    out = tmp_path / "eff"
    shutil.copytree(measured_out, out)
    config_json = (out / "config.json").read_text()
    before = json.loads((out / "summary.json").read_text())
    quality = tmp_path / "q.json"
    cfg = dataclasses.replace(cfg, out_dir=str(out), quality_summary=str(quality), p2_row="+partial")
    for rel, within in ((0.05, False), (0.01, True)):
        quality.write_text(json.dumps({"relative_to": "uncompressed", "relative": [
            {"variant": cfg.quality_variant, "transport_ratio": 0.1, "wer_user": 0.8, "wer_user_rel": rel}]}))
        after = efficiency.resummarize(cfg)
        assert after["P2"]["quality"]["wer_user_rel"] == rel
        assert after["met"]["P2"] is (within and after["P2"]["transport_ratio"] <= 0.10)
        for key in ("P1_peak_ratio", "P1_analytic_ratio", "P3_step_time_ratio", "fp32_model_bytes"):
            assert after[key] == before[key]  # read back, not re-measured
    assert (out / "config.json").read_text() == config_json  # still names the run that measured the rows
    (out / "memory.json").write_text("[]")
    with pytest.raises(ValueError, match="no measured rows"):
        efficiency.resummarize(cfg)


def test_command_line_maps_flags_to_the_config(measured, tmp_path):
    _, _, measured_out = measured
    out = tmp_path / "eff"
    shutil.copytree(measured_out, out)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "efficiency.py"), "--config", str(PAPER), "--summarize-only",
         "--out-dir", str(out), "--budget-mib", "600", "--set", f"figure={tmp_path / 'fig.png'}",
         "--set", "preset=tiny", "--set", f"quality-summary={tmp_path / 'none.json'}"],
        check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert 600 * 2**20 in [s["budget_bytes"] for s in summary["budget_sweep_analytic"]]  # --budget-mib → partial
    assert (tmp_path / "fig.png").exists()


def test_the_table_view_of_the_measured_rows(measured, tmp_path):
    from fedasr import tables

    _, rows, out = measured
    lines = tables.efficiency_table(out.parent, out.name)
    assert f"(`{out.as_posix()}/`, notebook 03;" in lines[1] and "`tiny` preset" in lines[1]
    body = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| stack")]
    assert [ln.split(" | ")[0][2:] for ln in body] == [r["stack"] for r in rows]
    assert lines[-1].startswith("P1 peak ratio") and "P2 quality not measured" in lines[-1]
    assert tables.efficiency_table(tmp_path) == []  # no run yet: no table
    # a contended step time is starred and explained; solo ones are not
    contended = [dict(r, step_concurrent=i == 1) for i, r in enumerate(rows)]
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "memory.json").write_text(json.dumps(contended))
    marked = tables.efficiency_table(tmp_path, "e")
    body = [ln for ln in marked if ln.startswith("| ") and not ln.startswith("| stack")]
    assert [ln.endswith("* |") for ln in body] == [i == 1 for i in range(len(rows))]
    assert any("contended" in ln for ln in marked)
