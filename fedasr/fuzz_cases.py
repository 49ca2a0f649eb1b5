"""Fuzz cases for the federated layer, the configuration and the notebooks (`fedasr.fuzz` runs them).

* ``reply``: a round of 4 toy clients whose last reply is malformed, through the real strategy's
  ``aggregate_train`` (validation, norm screening, aggregation, server step): the malformed client must be
  excluded with a reason, nothing may raise, and the global weights must stay finite.
* ``config``: TOML files and ``--set`` overrides through `fedasr.config.load` and the launch CLI.
* ``notebook``: injected parameters and parameter cells through `fedasr.notebook`'s checks.
* ``runs``: runs that fail (at config, task or resume time) over an existing run folder: the folder must stay
  byte-identical.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = ["Case", "discard", "tree_digest", "reply_cases", "config_cases", "notebook_cases", "run_cases"]


@dataclass
class Case:
    """One malformed input: ``call()`` feeds it to the entry point and returns None (accepted) or a reason."""

    kind: str
    name: str
    call: Callable[[], str | None]
    documented: tuple[type[BaseException], ...]  # the error types that count as a clean rejection


def discard(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call ``fn`` and drop its result (the input was accepted)."""
    fn(*args, **kwargs)


def tree_digest(root: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (to prove a failing run changed nothing)."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------------
# client replies


@functools.lru_cache(maxsize=None)
def _reply_env(weighting: str = "examples"):
    """A toy population, its initial weights, the ClientApp and a grid (built once per weighting)."""
    from fedasr import config
    from fedasr.federated.client_app import make_client_app
    from fedasr.federated.client_update import trainable_names
    from fedasr.federated.config import FedConfig, FederatedConfig, TaskSpec
    from fedasr.federated.loopback import LoopbackGrid
    from fedasr.federated.task import make_task

    fed = config.from_dict(FedConfig, {"num-rounds": 1, "clients-per-round": 4, "weighting": weighting})
    cfg = FederatedConfig(fed=fed, task=TaskSpec("toy", {"num-clients": 8}))
    model = make_task(cfg.task).build_model()
    app = make_client_app(cfg)
    return cfg, model.state_dict(), trainable_names(model), app, LoopbackGrid(app)


def _round_with(mutate: Callable[[Any, Any], Any], weighting: str = "examples") -> str | None:
    """One round where ``mutate(sent, honest_reply)`` replaces the last client's reply; return its exclusion
    reason (None: accepted). Raises AssertionError when the global weights end non-finite."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

    from fedasr.federated.strategies import build_strategy

    cfg, state, trainable, app, grid = _reply_env(weighting)
    weights = {k: v.clone() for k, v in state.items()}
    strategy = build_strategy(cfg.fed, [f"toy{i:04d}" for i in range(8)], weights, trainable)
    sent = list(strategy.configure_train(1, ArrayRecord(weights), ConfigRecord(), grid))
    grid.push_messages(sent)
    replies = []
    for m in sent:
        ctx = Context(run_id=1, node_id=m.metadata.dst_node_id, node_config={}, state=RecordDict(), run_config={})
        replies.append(app(m, ctx))
    replies[-1] = mutate(sent[-1], replies[-1])
    replies = [r for r in (replies[:-1] + (replies[-1] if isinstance(replies[-1], list) else [replies[-1]]))
               if r is not None]
    strategy.aggregate_train(1, replies)
    if not all(bool(torch.isfinite(v.float()).all()) for v in strategy.weights.values()):
        raise AssertionError("a malformed reply made the global weights non-finite")
    target = strategy._sent[-1][1]
    if strategy.record.get("succeeded", []).count(target) > 1:
        raise AssertionError(f"client {target} was aggregated more than once")
    return strategy.record["failed"].get(target)


def _content(sent, reply, arrays=None, metrics=None, drop=(), extra=None):
    """A new reply to ``sent`` with some of the honest reply's records replaced or dropped."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    honest = {"arrays": reply.content["arrays"], "metrics": reply.content["metrics"]}
    if arrays is not None:
        honest["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()}) if isinstance(arrays, dict) else arrays
    if metrics is not None:
        honest["metrics"] = MetricRecord(metrics) if isinstance(metrics, dict) else metrics
    content = RecordDict({k: v for k, v in {**honest, **(extra or {})}.items() if k not in drop})
    return Message(content, reply_to=sent)


def _arrays(reply, fn: Callable[[dict], dict]):
    """The honest reply's arrays as numpy, transformed by ``fn``."""
    return fn({k: v.numpy().copy() for k, v in reply.content["arrays"].items()})


def _first(fn):
    """Apply ``fn`` to the first (sorted) variable only."""
    def go(a: dict) -> dict:
        k = sorted(a)[0]
        return {**a, k: fn(a[k])}
    return go


def _set_first(value):
    def f(x):
        x = x.copy()
        x.reshape(-1)[0] = value
        return x
    return f


def reply_cases() -> list:
    """Malformed client replies through the strategy (see the module docstring)."""
    import numpy as np
    from flwr.app import ArrayRecord, ConfigRecord, Error, Message

    from fedasr.federated.transport import TRANSPORT, UPLOAD_META

    def arr(fn):
        return lambda s, r: _content(s, r, arrays=_arrays(r, fn))

    def met(update):
        return lambda s, r: _content(s, r, metrics={**dict(r.content["metrics"]), **update})

    variants: dict[str, Callable] = {
        "no-arrays": lambda s, r: _content(s, r, drop=("arrays",)),
        "no-metrics": lambda s, r: _content(s, r, drop=("metrics",)),
        "empty-content": lambda s, r: _content(s, r, drop=("arrays", "metrics")),
        "no-num-examples": lambda s, r: _content(s, r, metrics={k: v for k, v in r.content["metrics"].items()
                                                             if k != "num-examples"}),
        "empty-arrays": lambda s, r: _content(s, r, arrays=ArrayRecord()),
        "renamed-variable": arr(lambda a: {("bogus." + k if i == 0 else k): v for i, (k, v) in enumerate(a.items())}),
        "extra-variable": arr(lambda a: {**a, "extra.weight": np.zeros(3, np.float32)}),
        "missing-variable": arr(lambda a: dict(list(a.items())[1:])),
        "transposed": arr(_first(lambda x: x.T.copy() if x.ndim == 2 else x[:-1])),
        "flattened": arr(lambda a: {k: v.reshape(-1) for k, v in a.items()}),
        "extra-dim": arr(_first(lambda x: x[None])),
        "scalar": arr(_first(lambda x: np.ones((), np.float32))),
        "zero-size": arr(_first(lambda x: np.zeros((0,), np.float32))),
        "nan-one": arr(_first(_set_first(np.nan))),
        "nan-all": arr(lambda a: {k: np.full_like(v, np.nan) for k, v in a.items()}),
        "inf": arr(_first(_set_first(np.inf))),
        "-inf": arr(_first(_set_first(-np.inf))),
        "norm-x1e3": arr(lambda a: {k: v * 1e3 for k, v in a.items()}),
        "norm-x1e6": arr(lambda a: {k: v * 1e6 for k, v in a.items()}),
        "norm-x-1e6": arr(lambda a: {k: v * -1e6 for k, v in a.items()}),
        "norm-x1e30": arr(lambda a: {k: v * 1e30 for k, v in a.items()}),
        "norm-overflow": arr(lambda a: {k: v * np.float32(3e38) for k, v in a.items()}),
        "float64": arr(lambda a: {k: v.astype(np.float64) for k, v in a.items()}),
        "float16": arr(lambda a: {k: v.astype(np.float16) for k, v in a.items()}),
        "int32": arr(lambda a: {k: v.astype(np.int32) for k, v in a.items()}),
        "uint8": arr(lambda a: {k: v.astype(np.uint8) for k, v in a.items()}),
        "bool": arr(lambda a: {k: v.astype(bool) for k, v in a.items()}),
        "complex64": arr(lambda a: {k: v.astype(np.complex64) for k, v in a.items()}),
        "num-examples-0": met({"num-examples": 0}),
        "num-examples-negative": met({"num-examples": -5}),
        "num-examples-nan": met({"num-examples": float("nan")}),
        "num-examples-inf": met({"num-examples": float("inf")}),
        "num-examples-float": met({"num-examples": 2.5}),
        "num-examples-huge": met({"num-examples": 2**62}),
        "loss-nan": met({"loss": float("nan")}),
        "loss-inf": met({"loss": float("inf")}),
        "metrics-as-strings": lambda s, r: _content(s, r, metrics=ConfigRecord({"num-examples": "many", "loss": "low"})),
        "arrays-as-config": lambda s, r: _content(s, r, arrays=ConfigRecord({"w": "zeros"})),
        "transport-not-json": lambda s, r: _content(s, r, extra={TRANSPORT: ConfigRecord({UPLOAD_META: "{not json"})}),
        "transport-wrong-codec": lambda s, r: _content(s, r, extra={TRANSPORT: ConfigRecord(
            {UPLOAD_META: json.dumps({"codec": "zip9", "vars": {}})})}),
        "transport-empty": lambda s, r: _content(s, r, extra={TRANSPORT: ConfigRecord()}),
        "error-reply": lambda s, r: Message(Error(code=1, reason="client crashed"), reply_to=s),
        "error-no-reason": lambda s, r: Message(Error(code=1, reason=""), reply_to=s),
        "dropped": lambda s, r: None,
        "duplicated": lambda s, r: [r, _content(s, r)],
    }
    out = [Case("reply", name, functools.partial(_round_with, fn), ()) for name, fn in variants.items()]
    out.append(Case("reply", "wca-without-stats", functools.partial(_round_with, lambda s, r: r, "frequency"), ()))
    return out


# ----------------------------------------------------------------------------------------------------------
# configuration files and overrides

BAD_TOML = {
    "syntax-unclosed-table": "[fed\nnum-rounds = 2\n", "syntax-no-value": "[fed]\nnum-rounds =\n",
    "syntax-duplicate-key": "[fed]\nseed = 1\nseed = 2\n", "syntax-bare-string": "[fed]\nstrategy = fedsgd\n",
    "syntax-garbage": "}}}{{{ ::: \x01\n", "unknown-table": "[feed]\nnum-rounds = 2\n",
    "unknown-key": "[fed]\nnum-round = 2\n", "unknown-top-key": "rounds = 2\n",
    "retired-key": "[fed]\nomc-bits = 8\n", "type-str-for-int": '[fed]\nnum-rounds = "3"\n',
    "type-float-for-int": "[fed]\nnum-rounds = 3.5\n", "type-bool-for-int": "[fed]\nnum-rounds = true\n",
    "type-list-for-int": "[fed]\nnum-rounds = [3]\n", "type-table-for-int": "[fed.num-rounds]\nx = 1\n",
    "type-int-for-table": "fed = 3\n", "type-str-for-bool": '[run]\nresume = "yes"\n',
    "literal-strategy": '[fed]\nstrategy = "fedprox"\n', "literal-weighting": '[fed]\nweighting = "votes"\n',
    "nested-codec": '[fed.transport.upload]\nname = "zip"\n', "nested-unknown": "[fed.omc]\nbitz = 4\n",
    "negative-rounds": "[fed]\nnum-rounds = -1\n", "zero-clients": "[fed]\nclients-per-round = 0\n",
    "zero-timeout": "[fed]\nround-timeout-s = 0.0\n", "mix-above-1": "[fed]\ncentral-mix = 1.5\n",
    "fault-prob-2": "[fed.faults]\ncrash = 2.0\n", "fault-sum-above-1": "[fed.faults]\ncrash = 0.6\nnan = 0.6\n",
    "fault-unknown": "[fed.faults]\nmeteor = 0.1\n", "huge-int": "[fed]\nnum-rounds = 99999999999999999999999\n",
    "nan-float": "[fed]\nserver-lr = nan\n", "omc-with-download-codec":
        '[fed.omc]\nbits = 8\n[fed.transport.download]\nname = "int8"\n', "task-params-not-table": '[task]\nparams = "x"\n',
}


def _load_fed(path: Path) -> None:
    from fedasr import config
    from fedasr.federated.config import FederatedConfig

    config.load(FederatedConfig, path)


def _load_experiment(path: Path) -> None:
    from fedasr import config
    from fedasr.experiments import FederatedExperiment

    config.load(FederatedExperiment, path)


def _cli_rejects(path: Path, root: Path) -> str | None:
    """The launch CLI with a config that `config.load` rejects must exit 2 before any run starts."""
    from fedasr import config
    from fedasr.federated import launch
    from fedasr.federated.config import FederatedConfig

    try:
        config.load(FederatedConfig, path)
    except config.ConfigError:
        launch.cli_main(["simulation", "--config", str(path), "--set", f"run.results-root={str(root)!r}"])
        raise AssertionError("the launch CLI started a run with a rejected config") from None
    return None  # a valid config is not run here


def config_cases(work: Path) -> list:
    """Malformed TOML files and overrides through `config.load`, the experiment loader and the launch CLI."""
    from fedasr import config

    out, folder = [], work / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f"{name}.toml" for name in BAD_TOML}
    for name, text in BAD_TOML.items():
        files[name].write_text(text)
    (folder / "invalid-utf8.toml").write_bytes(b"[fed]\nstrategy = \"\xff\xfe\"\n")
    files["invalid-utf8"] = folder / "invalid-utf8.toml"
    files["a-folder"] = folder
    files["missing"] = folder / "missing.toml"
    for name, path in files.items():
        out.append(Case("config", f"load:{name}", functools.partial(_load_fed, path), (config.ConfigError,)))
    for name in ("syntax-unclosed-table", "unknown-key", "type-str-for-int", "literal-strategy", "fault-prob-2",
                 "invalid-utf8", "missing"):
        out.append(Case("config", f"cli:{name}", functools.partial(_cli_rejects, files[name], work / "cli-results"),
                        (SystemExit,)))
    experiments = {"variant-unknown-table": '[variants.a]\nmodel = {}\n', "variant-bad-key": "[variants.a.fed]\nrounds = 2\n",
                   "variant-bad-type": '[variants.a.fed]\nnum-rounds = "2"\n', "reference-missing": 'reference = "b"\n',
                   "variant-not-table": "variants = 3\n", "task-unknown": "[task]\ncorpuz = 'x'\n"}
    for name, text in experiments.items():
        p = folder / f"experiment-{name}.toml"
        p.write_text(text)
        out.append(Case("config", f"experiment:{name}", functools.partial(_load_experiment, p), (config.ConfigError,)))
    overrides = [["fed.num-rounds"], ["=3"], ["fed.num-rounds=abc"], ["fed..seed=1"], ["fed.seed.x=1"], ["nope.x=1"],
                 ["fed.strategy=[1, 2"], ["run.resume=maybe"]]
    for items in overrides:
        def go(items=items):
            from fedasr.federated.config import FederatedConfig
            config.load(FederatedConfig, None, config.parse_overrides(items))
        out.append(Case("config", f"override:{items[0]}", go, (config.ConfigError,)))
    return out


# ----------------------------------------------------------------------------------------------------------
# notebook parameters


def notebook_cases(work: Path) -> list:
    """Injected parameters through `notebook.setup` and malformed parameter cells through `declared_parameters`."""
    import nbformat

    from fedasr import notebook
    from fedasr.results import REPO_ROOT

    name, source = "02_federated_training", REPO_ROOT / "notebooks" / "02_federated_training.py"
    root = str(work / "nb-results")
    injected = {"unknown": {"num_rounds": 3}, "misspelt": {"config_fle": "x.toml"}, "str-for-bool": {"rerun": "no"},
                "int-for-str": {"config_file": 3}, "list-for-dict": {"overrides": [1]}, "str-for-dict": {"overrides": "{}"},
                "bool-for-str": {"config_file": True}, "none-for-str": {"config_file": None},
                "float-for-bool": {"rerun": 1.0}, "dict-for-str": {"results_root": {"a": 1}},
                "bytes-name": {"résultats": 1}, "two-unknown": {"a": 1, "b": [2]}}
    out = []
    for case, ns in injected.items():
        namespace = {"results_root": root, **ns}
        out.append(Case("notebook", f"setup:{case}", functools.partial(notebook.setup, name, namespace, source),
                        (notebook.ParameterError,)))
    cells = {"call": "x = open('f')\n", "two-targets": "a = b = 1\n", "tuple-target": "a, b = 1, 2\n",
             "augmented": "a += 1\n", "expression": "1 + 1\n", "syntax-error": "a = = 1\n", "attribute": "a.b = 1\n",
             "name-value": "a = b\n"}
    for case, src in cells.items():
        cell = nbformat.v4.new_code_cell(src, metadata={"tags": ["parameters"]})
        out.append(Case("notebook", f"cell:{case}", functools.partial(notebook.declared_parameters, [cell], "nb.py"),
                        (notebook.ParameterError,)))
    untagged = [nbformat.v4.new_code_cell("a = 1\n")]
    two = [nbformat.v4.new_code_cell("a = 1\n", metadata={"tags": ["parameters"]})] * 2
    for case, cs in (("no-tagged-cell", untagged), ("two-tagged-cells", two)):
        out.append(Case("notebook", f"cell:{case}", functools.partial(notebook.declared_parameters, cs, "nb.py"),
                        (notebook.ParameterError,)))
    return out


# ----------------------------------------------------------------------------------------------------------
# failing runs over an existing results folder


@functools.lru_cache(maxsize=None)
def _existing_run(work: Path) -> Path:
    """A finished 1-round toy run under ``work/results/t/existing`` (built once)."""
    from fedasr.federated.client_app import make_client_app
    from fedasr.federated.config import FedConfig, FederatedConfig, RunSpec, TaskSpec
    from fedasr.federated.loopback import LoopbackGrid
    from fedasr.federated.server_app import run_server

    cfg = FederatedConfig(fed=FedConfig(num_rounds=1, clients_per_round=2), task=TaskSpec("toy", {"num-clients": 6}),
                          run=RunSpec(experiment="t", run_id="existing", results_root=str(work / "results"),
                                      progress=False))
    run_server(LoopbackGrid(make_client_app(cfg)), cfg)
    return work / "results"


def _failing_run(work: Path, how: str) -> str | None:
    """Start a run that must fail over ``results/t/existing``; raise AssertionError if any file there changed."""
    from fedasr import config
    from fedasr.data import DataError
    from fedasr.federated import launch
    from fedasr.federated.client_app import make_client_app
    from fedasr.federated.config import FedConfig, FederatedConfig, RunSpec, TaskSpec
    from fedasr.federated.loopback import LoopbackGrid
    from fedasr.federated.server_app import run_server

    root = _existing_run(work)
    before = tree_digest(root)
    run = RunSpec(experiment="t", run_id="existing", results_root=str(root), progress=False)
    tasks = {"asr-missing-corpus": TaskSpec("asr", {"corpus": str(work / "no-corpus")}),
             "toy-unknown-param": TaskSpec("toy", {"num-clientz": 3}), "unknown-task": TaskSpec("nope", {}),
             "same-run-id": TaskSpec("toy", {"num-clients": 6}),
             "resume-other-model": TaskSpec("toy", {"num-clients": 6, "depth": 2}),
             "resume-other-width": TaskSpec("toy", {"num-clients": 6, "hidden": 8})}
    try:
        if how == "cli-bad-config":
            bad = work / "configs" / "unknown-key.toml"
            launch.cli_main(["simulation", "--config", str(bad), "--set", f"run.results-root={str(root)!r}",
                             "--set", "run.experiment='t'", "--set", "run.run-id='existing'"])
        else:
            cfg = FederatedConfig(fed=FedConfig(num_rounds=2, clients_per_round=2), task=tasks[how],
                                  run=replace(run, resume=how.startswith("resume")))
            run_server(LoopbackGrid(make_client_app(cfg)), cfg)
        outcome = None
    except (SystemExit, config.ConfigError, DataError, FileExistsError, ValueError, RuntimeError) as e:
        outcome = f"{type(e).__name__}: {str(e)[:120]}"
    changed = sorted(k for k in set(before) | set(tree_digest(root)) if before.get(k) != tree_digest(root).get(k))
    if changed:
        raise AssertionError(f"a failing run ({outcome}) changed the existing results: {changed[:5]}")
    return outcome and f"{outcome}; existing results unchanged"


def run_cases(work: Path) -> list:
    """Failing runs over an existing results folder (see `_failing_run`)."""
    hows = ("cli-bad-config", "asr-missing-corpus", "toy-unknown-param", "unknown-task", "same-run-id",
            "resume-other-model", "resume-other-width")
    return [Case("runs", how, functools.partial(_failing_run, work, how), ()) for how in hows]
