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
    run.log_round({"round": 1})
    with pytest.raises(FileExistsError, match="resume=True"):
        results.new_run("exp", {}, results_root=tmp_path, run_id="r1")
    assert json.loads(run.config_path.read_text())["config"] == {"a": 1}  # the refused run wrote nothing
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


def test_atomic_write_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "new" / "folder" / "model.pt"
    with results.atomic_write(path) as tmp:
        assert tmp.parent == path.parent and tmp != path  # parents created; a temp file beside the target
        tmp.write_bytes(b"v1")
        assert not path.exists()  # nothing at the target until the block succeeds
    assert path.read_bytes() == b"v1"
    with pytest.raises(RuntimeError, match="crash"):
        with results.atomic_write(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert path.read_bytes() == b"v1"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # the temp file is removed


def test_write_jsonl_round_trips_and_keeps_text_readable(tmp_path):
    rows = [{"id": "u1", "label": "café", "x": float("nan")}, {"id": "u2", "label": "", "x": 1.5}]
    path = results.write_jsonl(tmp_path / "s.jsonl", rows, ensure_ascii=False)
    assert results.read_jsonl(path) == [{**rows[0], "x": None}, rows[1]]
    assert "café" in path.read_text() and '"id": "u1", "label"' in path.read_text()  # raw UTF-8, sorted keys
    assert "caf\\u00e9" in results.write_jsonl(tmp_path / "a.jsonl", rows).read_text()  # ensure_ascii default


def test_results_record_repository_paths_relative_to_it(tmp_path):
    inside = results.REPO_ROOT / "data" / "quick" / "x.flac"
    path = results.write_json(tmp_path / "a.json", {"p": inside, "s": f"error in {inside}", "out": str(tmp_path)})
    got = results.read_json(path)
    assert got == {"p": "data/quick/x.flac", "s": "error in data/quick/x.flac", "out": str(tmp_path)}


def test_compare_trees_lists_real_differences_and_skips_timings(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root, wer, wall in ((a, 0.5, 1.0), (b, 0.5, 9.0)):
        results.write_json(root / "exp" / "summary.json", {"final": {"wer_user": wer}, "wall_s_total": wall,
                                                          "peak_rss_bytes": wall * 100})
        results.append_jsonl(root / "exp" / "rounds.jsonl", {"round": 1, "train_s": wall, "loss": 2.0})
    assert results.compare_trees(a, b) == []  # only wall-clock times and measured memory differ
    results.write_json(b / "exp" / "summary.json", {"final": {"wer_user": 0.6}, "wall_s_total": 1.0})
    results.write_json(b / "extra.json", {})
    diffs = results.compare_trees(a, b)
    assert diffs == ["exp/summary.json.final.wer_user: 0.5 != 0.6", "extra.json: only in second"]
