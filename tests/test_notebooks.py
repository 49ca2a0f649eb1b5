"""The notebooks as the product: sources and .ipynb agree, and every notebook runs at its teaching size.

Every ``notebooks/*.py`` (jupytext py:percent) is checked against its paired ``.ipynb`` and executed under papermill
with its ``notebooks/teaching.toml`` table into a temporary results root, so a broken notebook fails CI. The tiny
corpus (``data/tiny``) and a tiny seed are made once per session, or reused when up to date.
"""

import contextlib
import json
import re
import subprocess
import sys
import tomllib

import jupytext
import pytest

from fedasr import notebook
from fedasr.results import REPO_ROOT

NOTEBOOKS = sorted(p.stem for p in (REPO_ROOT / "notebooks").glob("*.py"))
TEACHING = tomllib.loads((REPO_ROOT / "notebooks" / "teaching.toml").read_text())
# what executed notebooks must not show (library logs and warnings belong in <results_root>/logs/)
NOISE = re.compile(r"DEPRECATED FEATURE|FutureWarning|DeprecationWarning|TqdmWarning|IProgress not found|"
                   r"Missing packages|INFO\s*:|\[ROUND \d")


def _read(name: str, ext: str):
    return jupytext.read(REPO_ROOT / "notebooks" / f"{name}.{ext}")


def _declared(name: str) -> dict:
    return {k: v for k, (v, _) in notebook.declared_parameters(_read(name, "py").cells).items()}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_source_and_ipynb_agree(name):
    """The .py and its .ipynb hold the same cells; the .ipynb has no outputs (`jupytext --to ipynb --update`)."""
    py, ipynb = _read(name, "py"), _read(name, "ipynb")
    assert [(c.cell_type, c.source) for c in py.cells] == [(c.cell_type, c.source) for c in ipynb.cells], (
        f"notebooks/{name}.ipynb differs from its source: run `.venv/bin/jupytext --to ipynb --update "
        f"notebooks/{name}.py`")
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in ipynb.cells if c.cell_type == "code")
    assert py.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert ipynb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_shape(name):
    """A markdown title, the parameters cell (with results_root), then exactly the setup call."""
    cells = _read(name, "py").cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    params = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    assert "results_root" in _declared(name)
    setup = next(c for c in cells[params + 1:] if c.cell_type == "code")
    assert setup.source == f'from fedasr import notebook\nnb = notebook.setup("{name}", globals())'
    assert name in TEACHING, f"notebooks/teaching.toml has no [{name}] table"


@pytest.fixture(scope="session")
def tiny_seed(tiny_corpus, tmp_path_factory):
    """The tiny corpus (built if stale) and a tiny seed's model folder (results/seed-tiny when up to date)."""
    from fedasr import config, train

    with contextlib.chdir(REPO_ROOT):  # the config's corpus path is relative to the repository
        cfg = config.load(train.SeedConfig, "configs/seed/tiny.toml")
        made = REPO_ROOT / "results" / "seed-tiny"
        summary = made / "summary.json"
        if (made / "model").is_dir() and summary.exists() and \
                json.loads(summary.read_text()).get("fingerprint") == train.seed_fingerprint(cfg):
            return made / "model"
    out = tmp_path_factory.mktemp("seed") / "seed-tiny"
    subprocess.run([sys.executable, "-m", "fedasr.train", "--config", "configs/seed/tiny.toml", "--out", str(out)],
                   cwd=REPO_ROOT, check=True, capture_output=True)
    return out / "model"


def _execute(name: str, out, parameters: dict):
    import papermill

    return papermill.execute_notebook(str(REPO_ROOT / "notebooks" / f"{name}.ipynb"), str(out),
                                      parameters=parameters, cwd=str(REPO_ROOT), progress_bar=False,
                                      execution_timeout=600, kernel_manager_class=notebook.ipc_kernel_manager())


def _teaching(name: str, results_root, seed) -> dict:
    params = {**TEACHING.get(name, {}), "results_root": str(results_root)}
    if "seed_model" in _declared(name):
        params["seed_model"] = str(seed)
    return params


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_at_teaching_size(name, tiny_seed, tmp_path):
    """Top to bottom with its teaching table, into a temporary results root, showing no library noise."""
    root = tmp_path / "results"
    nb = _execute(name, tmp_path / f"{name}.ipynb", _teaching(name, root, tiny_seed))
    shown = "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "stream")
    assert not NOISE.findall(shown), f"library logs or warnings in the notebook's output: {NOISE.findall(shown)}"
    assert (root / "logs" / f"{name}.log").exists()


@pytest.mark.parametrize("bad, named", [({"config_fiel": "configs/federated/tiny.toml"}, "'config_fiel'"),
                                        ({"rerun": "yes"}, "'rerun' = 'yes' is a str, expected a bool")])
def test_bad_parameter_fails_the_first_code_cell(bad, named, tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as e:
        _execute("02_federated_training", tmp_path / "out.ipynb", {"results_root": str(tmp_path), **bad})
    assert e.value.ename == "ParameterError" and named in e.value.evalue
    assert "notebook.setup(" in e.value.source
    for declared in _declared("02_federated_training"):  # the accepted parameters are listed
        assert f"{declared} = " in e.value.evalue


def test_missing_upstream_result_names_the_make_target(tmp_path):
    import papermill

    params = {**TEACHING["02_federated_training"], "results_root": str(tmp_path / "results")}  # no seed there
    with pytest.raises(papermill.PapermillExecutionError) as e:
        _execute("02_federated_training", tmp_path / "out.ipynb", params)
    assert e.value.ename == "FileNotFoundError"
    assert "seed-tiny/model is missing: run `make seed PROFILE=tiny` first" in e.value.evalue
