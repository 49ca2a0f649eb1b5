"""Fuzzing (issue 21): a deterministic subset of every kind of malformed input is rejected with a reason, never an
unhandled exception, and failing runs leave an existing results folder byte-identical."""

import pytest

from fedasr import fuzz
from fedasr.config import ConfigError
from fedasr.fuzz_cases import Case, run_cases

KINDS = {"audio", "manifest", "transcript", "reply", "config", "notebook", "runs"}


def test_a_subset_of_every_kind_is_handled(tmp_path):
    part = fuzz.run_fuzz(tmp_path, per_kind=5)
    assert part["unhandled"] == 0, part["unhandled_cases"]
    assert set(part["by_kind"]) == KINDS and part["inputs"] == sum(r["inputs"] for r in part["by_kind"].values())
    for kind, row in part["by_kind"].items():
        assert row["rejected"] > 0 and row["rejected"] + row["accepted"] == row["inputs"], kind


def test_the_full_set_has_at_least_200_inputs(tmp_path):
    cases = fuzz.cases(tmp_path)
    assert len(cases) >= 200 and {c.kind for c in cases} == KINDS
    assert len({(c.kind, c.name) for c in cases}) == len(cases)  # each input is distinct


def test_failing_runs_leave_existing_results_unchanged(tmp_path):
    for case in run_cases(tmp_path):
        outcome, detail = fuzz.classify(case)
        assert outcome == "rejected", (case.name, detail)
        assert "existing results unchanged" in detail


def _raise(e):
    raise e


@pytest.mark.parametrize("error,documented,outcome", [
    (ConfigError("fed.seed: expected an integer"), (ConfigError,), "rejected"),
    (ConfigError(""), (ConfigError,), "unhandled"),  # a documented type without a message
    (KeyError("x"), (ConfigError,), "unhandled"),
    (SystemExit(2), (SystemExit,), "rejected"),
    (SystemExit(1), (SystemExit,), "unhandled"),
])
def test_classify(error, documented, outcome):
    assert fuzz.classify(Case("k", "n", lambda: _raise(error), documented))[0] == outcome
    assert fuzz.classify(Case("k", "n", lambda: "excluded: bad", ()))[0] == "rejected"
    assert fuzz.classify(Case("k", "n", lambda: None, ()))[0] == "accepted"


# The bugs fuzzing found, one test each (fixed in data.py, config.py, notebook.py, strategies.py, aggregation.py,
# server_app.py)


def test_manifest_lines_of_wrong_types_or_invalid_utf8_are_data_errors(tmp_path):
    import json

    from fedasr import data
    from fedasr.fuzz import GOOD_LINE

    for name, raw in {"path-int": json.dumps({**GOOD_LINE, "path": 3}).encode(),
                      "terms-int": json.dumps({**GOOD_LINE, "terms": 5}).encode(),
                      "id-list": json.dumps({**GOOD_LINE, "id": [1]}).encode(),
                      "not-utf8": b'{"id": "\xff"}'}.items():
        p = tmp_path / f"{name}.jsonl"
        p.write_bytes(raw + b"\n" + json.dumps({**GOOD_LINE, "id": "u2"}).encode() + b"\n")
        with pytest.raises(data.DataError, match=f"{p.name}:1"):
            data.read_manifest(p)
        report = data.SkipReport()
        assert [u.id for u in data.read_manifest(p, on_error="skip", report=report)] == ["u2"] and report.total == 1


def test_config_files_that_are_folders_or_not_utf8_are_config_errors(tmp_path):
    from fedasr import config
    from fedasr.federated.config import FederatedConfig

    (tmp_path / "bad.toml").write_bytes(b'[fed]\nstrategy = "\xff"\n')
    for path in (tmp_path, tmp_path / "bad.toml"):
        with pytest.raises(ConfigError, match=str(path)):
            config.load(FederatedConfig, path)


def test_a_parameters_cell_that_is_not_python_is_a_parameter_error():
    import nbformat

    from fedasr import notebook

    cell = nbformat.v4.new_code_cell("a = = 1\n", metadata={"tags": ["parameters"]})
    with pytest.raises(notebook.ParameterError, match="line 1"):
        notebook.declared_parameters([cell], "nb.py")


@pytest.mark.parametrize("name,reason", [("duplicated", None), ("int32", "bad-dtype:"), ("bool", "bad-dtype:"),
                                         ("norm-x1e6", "norm-outlier:"), ("norm-overflow", "norm-outlier:")])
def test_replies_counted_once_and_garbage_dtypes_and_norms_excluded(name, reason):
    from fedasr.fuzz_cases import reply_cases

    (case,) = [c for c in reply_cases() if c.name == name]
    outcome, detail = fuzz.classify(case)  # "duplicated": raises (unhandled) if the client is aggregated twice
    assert outcome == ("accepted" if reason is None else "rejected"), detail
    assert reason is None or detail.startswith(reason)
