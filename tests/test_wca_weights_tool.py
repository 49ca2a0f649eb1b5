"""tools/wca_weights.py: the share of the aggregate's mass WCA moves between clients, from two runs' records."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("wca_weights_tool", ROOT / "tools" / "wca_weights.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def _run(folder: Path, rounds: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in [{"round": 0}, *rounds]) + "\n")


def test_total_variation_per_shared_round(tmp_path):
    _run(tmp_path / "seed0" / "filtering", [{"round": 1, "weights": {"a": 1.0, "b": 3.0}},
                                            {"round": 2, "weights": {"a": 1.0, "c": 1.0}}])
    _run(tmp_path / "seed0" / "wca_loss", [{"round": 1, "weights": {"a": 3.0, "b": 1.0}},
                                           {"round": 2, "weights": {"a": 1.0, "d": 1.0}}])  # other clients: skipped
    _run(tmp_path / "seed0" / "wca_frequency", [{"round": 1, "weights": {"a": 2.0, "b": 6.0}}])  # proportional
    out = tool.summarize(tmp_path)
    assert out["variants"]["wca_loss"]["rounds"] == 1
    assert out["variants"]["wca_loss"]["tv_median"] == pytest.approx(0.5)  # 0.25/0.75 vs 0.75/0.25
    assert out["variants"]["wca_frequency"]["tv_max"] == pytest.approx(0.0)
