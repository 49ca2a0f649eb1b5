"""fedasr.notebook: parameter checks, paths, quiet library logs and `require`, on a fake namespace (no kernel)."""

import json
import logging
import os
import sys
import warnings
from pathlib import Path

import pytest

from fedasr import notebook
from fedasr.results import REPO_ROOT

SOURCE = '''# %% [markdown]
# # A notebook

# %% tags=["parameters"]
results_root = "results"   # where everything goes
rate = 0.5                 # a float
steps = 3                  # an int
rerun = True               # a bool
seed_model = None          # anything
overrides = {}             # a dict

# %%
from fedasr import notebook
nb = notebook.setup("99_fake", globals())

# %%
import json
rows = [1, 2]
def helper():
    return rows
'''


@pytest.fixture
def source(tmp_path, monkeypatch):
    """A py:percent notebook source; cwd, environment and the library loggers are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    for key in notebook.ENV:
        monkeypatch.setenv(key, os.environ.get(key, ""))
    saved = {n: (lg.__class__, list(lg.handlers), lg.level, lg.propagate)
             for n in notebook.LIBRARY_LOGGERS for lg in [logging.getLogger(n)]}
    path = tmp_path / "99_fake.py"
    path.write_text(SOURCE)
    yield path
    logging.captureWarnings(False)
    for n, (cls, handlers, level, propagate) in saved.items():
        lg = logging.getLogger(n)
        for h in lg.handlers:
            if h not in handlers:
                h.close()
        lg.__class__, lg.handlers, lg.level, lg.propagate = cls, handlers, level, propagate


def namespace(results_root, **params):
    """What a kernel's globals() hold after papermill's injected cell."""
    # no get_ipython: without a shell setup registers no PNG formatter
    return {"In": [""], "Out": {}, "exit": None, "quit": None, "open": open, "_": "", "_i1": "", "__name__": "__main__",
            "results_root": str(results_root), "rate": 0.5, "steps": 3, "rerun": True, "seed_model": None,
            "overrides": {}, **params}


def test_declared_parameters_are_the_literals_of_the_parameters_cell(source):
    import jupytext

    declared = notebook.declared_parameters(jupytext.read(source).cells)
    assert {k: v[0] for k, v in declared.items()} == {"results_root": "results", "rate": 0.5, "steps": 3,
                                                       "rerun": True, "seed_model": None, "overrides": {}}
    assert declared["rate"][1] == "rate = 0.5                 # a float"


def test_setup_returns_paths_and_parameters_and_prepares_the_process(source, tmp_path):
    nb = notebook.setup("99_fake", namespace(tmp_path / "r", steps=7, rate=2), source=source)
    assert nb.params == {"results_root": str(tmp_path / "r"), "rate": 2, "steps": 7, "rerun": True,
                         "seed_model": None, "overrides": {}}  # an int is accepted for a float
    assert nb.root == REPO_ROOT and Path.cwd() == REPO_ROOT
    assert nb.results == tmp_path / "r" and nb.figures == tmp_path / "r" / "figures" and nb.figures.is_dir()
    assert nb.log == tmp_path / "r" / "logs" / "99_fake.log"
    assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["FLWR_TELEMETRY_ENABLED"] == "0"
    assert nb.result_path("results/efficiency-tiny") == tmp_path / "r" / "efficiency-tiny"
    assert nb.result_path("configs/x.toml") == Path("configs/x.toml")


@pytest.mark.parametrize("bad", [{"stpes": 4}, {"out_dir": "results/x"}])
def test_an_unknown_parameter_fails_listing_the_accepted_ones(source, tmp_path, bad):
    with pytest.raises(notebook.ParameterError) as e:
        notebook.setup("99_fake", namespace(tmp_path, **bad), source=source)
    msg = str(e.value)
    assert repr(next(iter(bad))) in msg and "Accepted parameters" in msg
    assert 'results_root = "results"   # where everything goes' in msg and "steps = 3" in msg
    if "stpes" in bad:
        assert "did you mean 'steps'?" in msg


@pytest.mark.parametrize("bad", [{"steps": 2.5}, {"steps": "3"}, {"rate": "fast"}, {"rerun": 1}, {"steps": True},
                                 {"overrides": [1]}, {"results_root": 3}])
def test_a_value_of_the_wrong_type_fails(source, tmp_path, bad):
    with pytest.raises(notebook.ParameterError, match=f"parameter {next(iter(bad))!r}.*expected a .*Accepted"):
        notebook.setup("99_fake", {**namespace(tmp_path), **bad}, source=source)


def test_names_that_are_not_injected_parameters_are_ignored(source, tmp_path):
    # a None default takes anything; modules, functions, objects and the notebook's own names (a re-run in
    # JupyterLab) are not injected parameters
    ns = namespace(tmp_path, seed_model="/any/thing", _private=1, json=json, helper=print, rows=[3], nb=object(),
                   Path=Path)
    assert notebook.setup("99_fake", ns, source=source).params["seed_model"] == "/any/thing"


def test_a_notebook_must_declare_results_root_and_literal_parameters(source, tmp_path):
    source.write_text(SOURCE.replace('results_root = "results"', 'root = "results"'))
    with pytest.raises(notebook.ParameterError, match="must declare results_root"):
        notebook.setup("99_fake", namespace(tmp_path), source=source)
    source.write_text(SOURCE.replace("steps = 3", "steps = len('abc')"))
    with pytest.raises(notebook.ParameterError, match="parameters cell, line 3: not `name = literal`"):
        notebook.setup("99_fake", namespace(tmp_path), source=source)


def test_library_logs_and_warnings_go_to_the_log_file(source, tmp_path, capsys):
    nb = notebook.setup("99_fake", namespace(tmp_path), source=source)
    flwr = logging.getLogger("flwr")
    console = logging.StreamHandler(sys.stderr)  # what Flower adds when it is imported after setup
    flwr.addHandler(console)
    assert console.level == logging.ERROR
    flwr.info("[ROUND 1]")
    for h in logging.getLogger("ray").handlers:  # what ray.init does to every handler of its logger
        h.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("ray.widgets.util").info("Missing packages: ['ipywidgets']")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)  # pytest's own warning capture replaced showwarning
        warnings.warn_explicit("Tip: ray future", FutureWarning, "/x/site-packages/ray/_private/worker.py", 1)
        warnings.warn_explicit("plotted nothing", UserWarning, str(REPO_ROOT / "fedasr" / "plotting.py"), 75)
    for h in flwr.handlers:
        h.flush()
    err = capsys.readouterr().err
    assert "[ROUND 1]" not in err and "Missing packages" not in err and "ray future" not in err
    assert "plotted nothing" in err  # a warning from our own code still shows
    log = nb.log.read_text()
    for text in ("flwr INFO: [ROUND 1]", "ray.widgets.util INFO: Missing packages", "Tip: ray future",
                 "plotted nothing"):
        assert text in log


def test_setup_run_again_replaces_its_log_handlers(source, tmp_path):
    notebook.setup("99_fake", namespace(tmp_path / "a"), source=source)
    notebook.setup("99_fake", namespace(tmp_path / "b"), source=source)
    ours = [h for h in logging.getLogger("flwr").handlers if getattr(h, "_fedasr", False)]
    assert len(ours) == 1 and Path(ours[0].baseFilename) == tmp_path / "b" / "logs" / "99_fake.log"


def test_require_names_the_make_target(tmp_path):
    assert notebook.require(tmp_path, "seed") == tmp_path
    with pytest.raises(FileNotFoundError, match=r"no-seed/model is missing: run `make seed PROFILE=tiny` first"):
        notebook.require(tmp_path / "no-seed" / "model", "seed PROFILE=tiny")


def test_flower_variables_are_launchs():
    from fedasr.federated.launch import FLWR_ENV

    assert {k: v for k, v in notebook.ENV.items() if k in FLWR_ENV} == {k: v for k, v in FLWR_ENV.items()
                                                                          if k in notebook.ENV}
    assert {k for k in FLWR_ENV if k.startswith("FLWR_")} <= set(notebook.ENV)
