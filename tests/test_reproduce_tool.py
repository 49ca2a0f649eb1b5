"""tools/reproduce.py's notebook parameters: committed defaults for quick, a profile's corpus and configs otherwise."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reproduce_tool", ROOT / "tools" / "reproduce.py")
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)


def test_quick_keeps_the_notebooks_defaults_and_teaching_reads_its_table():
    assert reproduce.notebook_parameters("01_seed_model", "full", "results") == {"results_root": "results"}
    teaching = reproduce.notebook_parameters("02_federated_training", "teaching", "/tmp/r")
    assert teaching["results_root"] == "/tmp/r" and len(teaching) > 1


def test_another_profile_points_each_notebook_at_its_corpus_and_configs(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    for rel in ("data/ls/corpus.json", "configs/seed/ls.toml", "configs/quality/ls.toml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert reproduce.notebook_parameters("00_data", "full", "results", "ls") == {"corpus": "data/ls",
                                                                                   "results_root": "results"}
    assert reproduce.notebook_parameters("01_seed_model", "full", "results", "ls") == {
        "config_file": "configs/seed/ls.toml", "run_name": "seed-ls", "results_root": "results"}
    assert reproduce.notebook_parameters("04_user_corrections", "full", "r", "ls")["config_file"] == \
        "configs/quality/ls.toml"
    # no configs/federated/ls.toml: notebook 02 keeps its defaults rather than failing on a missing file
    assert reproduce.notebook_parameters("02_federated_training", "full", "r", "ls") == {"results_root": "r"}


def test_a_rerun_of_a_failed_notebook_replaces_its_entry_and_its_seconds():
    before = {"profile": "quick", "wall_seconds": 100.0, "steps": [], "notebooks": [
        {"name": "04", "seconds": 90.0, "status": "ok"}, {"name": "05", "seconds": 1.0, "status": "failed: X"}]}
    rerun = {"wall_seconds": 6.0, "notebooks": [{"name": "05", "seconds": 5.0, "status": "ok"}]}
    out = reproduce.merge_rerun(before, rerun)
    assert [n["status"] for n in out["notebooks"]] == ["ok", "ok"]
    assert out["wall_seconds"] == 104.0 and out["reruns"] == [{"notebooks": ["05"], "seconds": 6.0}]
