"""The first code cell of every notebook, ``nb = notebook.setup("02_federated_training", globals())``, and `require`.

A notebook's source is ``notebooks/<name>.py`` (jupytext py:percent, paired with the ``.ipynb``); its cell tagged
``parameters`` holds literal assignments, papermill injects values after it. `setup` changes directory to the
repository root, sets one torch/BLAS thread and Flower's no-network variables, sends library logs (Flower, Ray) and
library warnings to ``<results_root>/logs/<name>.log`` and checks the injected parameters: a name the parameters cell
does not declare, or a value of another type than the default's (an int is a float; a None default takes anything),
raises `ParameterError` listing the accepted parameters. `require` names the make target of a missing upstream result.
"""

from __future__ import annotations

import ast
import difflib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedasr.ports import FLWR_ENV
from fedasr.results import REPO_ROOT

__all__ = ["ParameterError", "Notebook", "setup", "require", "declared_parameters", "ENV", "ipc_kernel_manager"]

# Set for this process and every process it starts (Ray's workers among them): the Flower launchers' environment,
# and FLWR_LOG_LEVEL, the level of Flower's console handler in each process that imports Flower from now on
# (errors only; the rest goes to the log file).
ENV = {**FLWR_ENV, "FLWR_LOG_LEVEL": "ERROR"}
LIBRARY_LOGGERS = ("flwr", "ray", "py.warnings")  # py.warnings: `warnings` routed through logging
IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})  # an ipykernel's own globals
LITERAL_TYPES = (str, int, float, bool, list, dict, type(None))  # what papermill can inject


class ParameterError(ValueError):
    """A notebook parameter is unknown or has the wrong type; the message lists the accepted ones."""


@dataclass(frozen=True)
class Notebook:
    """What `setup` returns: the parameters and the folders a notebook reads and writes."""

    name: str
    params: dict[str, Any]  # every declared parameter with its value in this run
    root: Path  # the repository root (the working directory from now on)
    results: Path  # the results_root parameter: everything this notebook writes lies below it
    figures: Path  # results / "figures"
    log: Path  # results / "logs" / "<name>.log": Flower, Ray and library warnings

    def result_path(self, path: str | Path) -> Path:
        """``path`` moved below this notebook's results root when a config names it under ``results/``."""
        p = Path(path)
        return self.results / p.relative_to("results") if p.parts[:1] == ("results",) else p


def declared_parameters(cells: list, source: str | Path = "") -> dict[str, tuple[Any, str]]:
    """``{name: (default, declaration line)}`` from the one code cell tagged ``parameters`` (jupytext cells)."""
    tagged = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ParameterError(f"{source}: expected one cell tagged 'parameters', found {len(tagged)}")
    lines, out = tagged[0].source.splitlines(), {}
    try:
        body = ast.parse(tagged[0].source).body
    except SyntaxError as e:
        raise ParameterError(f"{source}: parameters cell, line {e.lineno}: not Python ({e.msg})") from None
    for node in body:
        try:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
                raise ValueError
            out[node.targets[0].id] = (ast.literal_eval(node.value), lines[node.lineno - 1].strip())
        except ValueError:
            raise ParameterError(f"{source}: parameters cell, line {node.lineno}: not `name = literal`") from None
    return out


def _bound_names(cells: list) -> set[str]:
    """Names the notebook's own code binds (re-running the setup cell in JupyterLab then is no error)."""
    names = set()
    for cell in (c for c in cells if c.cell_type == "code"):
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:  # magics and shell escapes
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
    return names


def _check(name: str, declared: dict[str, tuple[Any, str]], namespace: dict[str, Any], bound: set[str]) -> None:
    """Raise `ParameterError` for an injected name that is not declared or a value of the wrong type."""
    accepted = "\n".join(f"  {line}" for _, line in declared.values())
    unknown = sorted(k for k, v in namespace.items() if k not in declared and k not in bound and
                     k not in IPYTHON_NAMES and not k.startswith("_") and isinstance(v, LITERAL_TYPES))
    if unknown:
        hints = {k: difflib.get_close_matches(k, declared, n=1) for k in unknown}
        named = ", ".join(f"{k!r}" + (f" (did you mean {hints[k][0]!r}?)" if hints[k] else "") for k in unknown)
        raise ParameterError(f"{name}: unknown parameter(s) {named}. Accepted parameters:\n{accepted}")
    for key, (default, _) in declared.items():
        value = namespace.get(key, default)
        if not (default is None or type(value) is type(default) or (type(default) is float and type(value) is int)):
            raise ParameterError(f"{name}: parameter {key!r} = {value!r} is a {type(value).__name__}, expected a "
                                 f"{type(default).__name__} like its default. Accepted parameters:\n{accepted}")


class _QuietLogger(logging.Logger):
    """A library logger whose own console handlers (Flower and Ray add one at import) print errors only."""

    def addHandler(self, hdlr: logging.Handler) -> None:  # noqa: N802 (logging's name)
        _quiet_handler(hdlr)
        super().addHandler(hdlr)


def _quiet_handler(h: logging.Handler) -> None:
    if isinstance(h, logging.StreamHandler) and not getattr(h, "_fedasr", False):
        h.setLevel(max(h.level, logging.ERROR))


class _LogFile(logging.FileHandler):
    """The library log file, in one format (ray.init sets its own on every handler of the "ray" logger)."""

    def setFormatter(self, fmt: logging.Formatter | None) -> None:  # noqa: N802 (logging's name)
        self.formatter = self.formatter or fmt


def _from_library(record: logging.LogRecord) -> bool:
    """A warning raised inside an installed package (its formatted text starts with the file's path)."""
    return any(d in record.getMessage().split(":", 1)[0] for d in ("site-packages", "dist-packages"))


def _route_logs(log: Path) -> None:
    """Flower's and Ray's log records and all warnings go to ``log``; warnings raised outside libraries also show."""
    log.parent.mkdir(parents=True, exist_ok=True)
    to_file = _LogFile(log, mode="w", encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    to_file.setLevel(logging.INFO)
    shown = logging.StreamHandler(sys.stderr)  # ipykernel's stderr: the cell's output
    shown.addFilter(lambda record: not _from_library(record))
    to_file._fedasr = shown._fedasr = True  # type: ignore[attr-defined]  # ours: replaced by a new setup, not quieted
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if getattr(h, "_fedasr", False)]:
            logger.removeHandler(h)
            h.close()
        logger.__class__ = _QuietLogger
        for h in logger.handlers:  # a library imported before setup
            _quiet_handler(h)
        logger.addHandler(to_file)
        if name == "py.warnings":
            logger.addHandler(shown)
        logger.propagate = False
        logger.setLevel(min(logger.level or logging.INFO, logging.INFO))
    logging.captureWarnings(True)


def setup(name: str, namespace: dict[str, Any], source: str | Path | None = None) -> Notebook:
    """Prepare the notebook process and check the parameters (the notebook's first code cell).

    Args:
        name: the notebook, e.g. ``"02_federated_training"``.
        namespace: the notebook's ``globals()`` after papermill's injected cell.
        source: the py:percent source (Default: ``notebooks/<name>.py`` in the repository).

    Raises:
        ParameterError: an injected name is not declared, or a value has another type than its default.
    """
    import jupytext  # reading the source is the one thing that needs it

    source = Path(source) if source is not None else REPO_ROOT / "notebooks" / f"{name}.py"
    cells = jupytext.read(source).cells
    declared = declared_parameters(cells, source)
    if "results_root" not in declared:
        raise ParameterError(f"{source}: the parameters cell must declare results_root (notebook conventions)")
    _check(name, declared, namespace, _bound_names(cells))
    os.chdir(REPO_ROOT)  # paths in configs and parameters are relative to the repository root
    os.environ.update(ENV)
    if "torch" in sys.modules:  # otherwise torch reads OMP_NUM_THREADS when it loads
        sys.modules["torch"].set_num_threads(1)
    params = {k: namespace.get(k, default) for k, (default, _) in declared.items()}
    results = Path(params["results_root"])
    nb = Notebook(name=name, params=params, root=REPO_ROOT, results=results, figures=results / "figures",
                  log=results / "logs" / f"{name}.log")
    nb.figures.mkdir(parents=True, exist_ok=True)
    _route_logs(nb.log)
    shell = namespace["get_ipython"]() if "get_ipython" in namespace else None
    if shell is not None:  # a figure that fedasr.plotting returns (drawn with Agg) shows as a PNG
        from IPython.core.pylabtools import select_figure_formats
        select_figure_formats(shell, {"png"})
    print(f"{name}: results under {results}/, library logs in {nb.log}")
    return nb


def require(path: str | Path, make_target: str) -> Path:
    """Return ``path`` if it exists, else raise FileNotFoundError naming the make target that produces it."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: run `make {make_target}` first (it produces it)")
    return p


_KERNEL_DIR: Path | None = None


def ipc_kernel_manager() -> type:
    """A jupyter_client ``KernelManager`` class whose kernels talk over Unix-domain sockets in a private temporary
    folder: no TCP port that another user of the machine could reach, and none of ipykernel 7's "Kernel is running
    over TCP without encryption" warnings on the console. For ``papermill.execute_notebook(...,
    kernel_manager_class=ipc_kernel_manager())`` (tools/reproduce.py, tests/test_notebooks.py)."""
    import atexit
    import shutil
    import tempfile

    from jupyter_client.manager import KernelManager

    global _KERNEL_DIR
    if _KERNEL_DIR is None:
        _KERNEL_DIR = Path(tempfile.mkdtemp(prefix="fedasr-kernels-"))
        atexit.register(shutil.rmtree, _KERNEL_DIR, ignore_errors=True)
    folder = _KERNEL_DIR

    class IPCKernelManager(KernelManager):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.transport = "ipc"
            self.ip = str(folder / f"kernel-{os.getpid()}-{id(self)}")  # sockets are <ip>-<port>

    return IPCKernelManager

