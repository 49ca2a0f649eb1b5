"""Run the same fedasr Flower app three ways, from one `FederatedConfig` (STYLE guideline 4).

1. `run_simulation` — Flower's in-process Simulation Engine (Ray backend). Notebooks and tests use it;
   errors surface in the calling cell. The apps close over the config (``run_simulation`` gives apps an
   empty ``run_config``).
2. `run_flwr_local` — ``flwr run <app> <connection>`` on a local simulation SuperLink connection. In
   Flower 1.42 federations are *SuperLink connections* in the Flower config file
   (``$FLWR_HOME/config.toml``), no longer ``[tool.flwr.federations]`` in ``pyproject.toml`` (``flwr run``
   would migrate such a table into the config file and comment it out of ``pyproject.toml``). The
   address ``":local-in-memory:"`` makes ``flwr`` start a *detached* local SuperLink; this helper uses a
   private ``FLWR_HOME`` and private ports, and stops that SuperLink (and its children) afterwards.
3. `run_deployment_local` — the Deployment Engine on loopback: one SuperLink, ``n`` SuperNodes (each
   given its clients through ``--node-config``), and ``flwr run``; every process is stopped afterwards. It
   runs with TLS and SuperNode authentication by default (throwaway credentials, `fedasr.federated.security`;
   each node's key registered with ``flwr supernode register`` first), ``--insecure`` only with ``secure=False``.

Deployment on several machines, with TLS and SuperNode authentication: the recipe in the docstring of
`fedasr.federated.deployment`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import psutil

from fedasr import results
from fedasr.config import ConfigError, flatten, load, parse_overrides, to_dict
from fedasr.federated import deployment, security
from fedasr.federated.config import FederatedConfig
from fedasr.federated.ray_session import ray_init_args
from fedasr.federated.task import FederatedTask
from fedasr.ports import FLWR_ENV, free_port

__all__ = ["FLWR_ENV", "flower_log", "run_simulation", "run_flwr_local", "run_deployment_local", "run_config_args",
           "cli_main", "free_port"]

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # flwr, flower-superlink, flower-supernode of this environment


def _pinned(cfg: FederatedConfig) -> FederatedConfig:
    """Return ``cfg`` with a concrete run id and an absolute results root (other processes write there)."""
    run_id = cfg.run.run_id or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    root = str(Path(cfg.run.results_root).expanduser().resolve())
    return replace(cfg, run=replace(cfg.run, run_id=run_id, results_root=root))


def _finished_run(cfg: FederatedConfig) -> results.RunDir:
    run = results.RunDir(Path(cfg.run.results_root) / cfg.run.experiment / cfg.run.run_id)
    if not run.summary_path.exists():
        raise RuntimeError(f"the federated run did not finish: {run.summary_path} is missing")
    return run


# ---------------------------------------------------------------------------------------------------
# 1. In-process Simulation Engine
# ---------------------------------------------------------------------------------------------------


def run_simulation(cfg: FederatedConfig, task_factory: Callable[[], FederatedTask] | None = None, *,
                   num_supernodes: int | None = None, concurrency: int = 2,
                   verbose: bool = False) -> results.RunDir:
    """Run ``cfg`` on Flower's in-process Simulation Engine and return the run folder.

    Args:
        cfg: the resolved config (the apps close over it).
        task_factory: optional picklable ``() -> FederatedTask`` used instead of ``cfg.task``.
        num_supernodes: virtual SuperNodes; default ``clients-per-round``. A virtual node is a worker
            slot that trains whichever sampled client it is sent (``fed.node-data="shared"``), so the
            population (≥ 500 clients) does not need one node each.
        concurrency: clients trained at once (Ray CPUs; each client gets 1 CPU and 1 torch thread).
        verbose: Flower's DEBUG logs.

    Flower's log lines go to ``<results-root>/<experiment>/logs/<run-id>.log`` (`flower_log`), not the
    console: the console (or notebook) shows the server's progress bar over rounds. Ray's worker output
    stays in Ray's session logs; a client that fails is recorded with its reason in ``rounds.jsonl``.

    Why ``flwr.simulation.run_simulation``, which Flower 1.42 marks deprecated in favour of ``flwr run``:
    in-process, the apps close over the resolved config and an optional task factory, and an error surfaces
    in the calling cell. ``flwr run`` on a local simulation connection (`run_flwr_local`, tested) is its
    replacement and runs the same apps from ``run_config``; notebooks move to it when Flower removes this one.
    """
    # Flower and the apps load here, not at import: launch's other engines and CLI run flwr as a subprocess
    from flwr.simulation import run_simulation as flwr_run_simulation

    from fedasr.federated.client_app import make_client_app
    from fedasr.federated.server_app import make_server_app

    os.environ.update(FLWR_ENV)
    cfg = _pinned(cfg)
    cfg = replace(cfg, run=replace(cfg.run, largest_first=True))  # the engine queues by node: largest client first
    nodes = num_supernodes or cfg.fed.clients_per_round
    backend_config = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": ray_init_args(concurrency)}
    with flower_log(Path(cfg.run.results_root) / cfg.run.experiment / "logs" / f"{cfg.run.run_id}.log"):
        flwr_run_simulation(server_app=make_server_app(cfg, task_factory),
                            client_app=make_client_app(cfg, task_factory),
                            num_supernodes=nodes, backend_config=backend_config, verbose_logging=verbose)
    return _finished_run(cfg)


@contextlib.contextmanager
def flower_log(path: Path) -> Iterator[Path]:
    """Send Flower's logger (``flwr``) to the file ``path`` instead of the console while the block runs."""
    logger = logging.getLogger("flwr")
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    consoles = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    for h in consoles:
        logger.removeHandler(h)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()
        for h in consoles:
            logger.addHandler(h)


# ---------------------------------------------------------------------------------------------------
# Shared helpers for the `flwr run` modes
# ---------------------------------------------------------------------------------------------------


def run_config_args(cfg: FederatedConfig) -> list[str]:
    """Return ``--run-config`` pairs for ``flwr run`` (space-separated TOML values, Flower ≥ 1.11).

    ``task.params`` and list values (``fed.omc.fp32-patterns``) travel as JSON strings (Flower's run config
    holds scalars only); every key must exist in ``[tool.flwr.app.config]`` of ``pyproject.toml``.
    """
    d = to_dict(cfg)
    d["task"]["params"] = json.dumps(d["task"]["params"], sort_keys=True, separators=(",", ":"))
    pairs = []
    for k, v in flatten(d).items():
        if isinstance(v, (list, tuple)):
            v = json.dumps(list(v), separators=(",", ":"))
        if isinstance(v, str):
            # Flower splits pairs on spaces and does not unescape: use a TOML literal '...' or basic "..."
            if "'" not in v and "\n" not in v:
                v = f"'{v}'"
            elif '"' not in v and "\\" not in v and "\n" not in v:
                v = f'"{v}"'
            else:
                raise ValueError(f"{k}: {v!r} cannot be passed through `flwr run --run-config`")
        elif isinstance(v, bool):
            v = "true" if v else "false"
        pairs.append(f"{k}={v}")
    return ["--run-config", " ".join(pairs)]


def _flwr_home(prefix: str, connection: str, body: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix=prefix))
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{connection}"\n\n[superlink.{connection}]\n{body}')
    return home


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, **FLWR_ENV, "FLWR_HOME": str(home), **extra}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # flwr spawns flower-superlink etc. by name
    return env


def _spawn(cmd: Sequence[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group with output to ``log``."""
    f = open(log, "ab")  # noqa: SIM115 - handed to the child, closed when we reap it
    return subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def _ours(home: Path) -> list[psutil.Process]:
    """Return live processes started under this launch (their environment holds our private FLWR_HOME)."""
    mine = []
    for p in psutil.process_iter(["pid"]):
        if p.pid == os.getpid():
            continue
        try:
            if p.environ().get("FLWR_HOME") == str(home):
                mine.append(p)
        except (psutil.Error, OSError):
            continue
    return mine


def _stop(roots: Sequence[subprocess.Popen], home: Path, grace_s: float = 10.0) -> list[int]:
    """Stop ``roots``, their descendants, and any process carrying our ``FLWR_HOME``; return leftover pids.

    SIGTERM first (SuperLink/SuperNode shut down cleanly), SIGKILL after ``grace_s``. Processes are
    selected by id (our children, their descendants, and processes with our private FLWR_HOME), never
    by name.
    """
    procs: dict[int, psutil.Process] = {}
    for r in roots:
        try:
            p = psutil.Process(r.pid)
            procs[p.pid] = p
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    procs.update({p.pid: p for p in _ours(home)})
    for p in procs.values():
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    for r in roots:
        try:
            r.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        if r.stdout:
            r.stdout.close()
    return [p.pid for p in _ours(home)]


def _cleanup(roots: Sequence[subprocess.Popen], home: Path, keep_home: bool) -> None:
    """Stop every process of this launch and remove the private FLWR_HOME (kept on request)."""
    leftover = _stop(roots, home)
    if not keep_home:
        shutil.rmtree(home, ignore_errors=True)
    if leftover:
        msg = f"processes of this launch still running after SIGKILL: {leftover}"
        if sys.exc_info()[0] is None:  # do not mask the error that brought us here
            raise RuntimeError(msg)
        print(f"fedasr.federated.launch: {msg}", file=sys.stderr)


def _flwr_run(cfg: FederatedConfig, app_dir: Path, connection: str, env: dict[str, str], log: Path,
              timeout_s: float, extra: Sequence[str] = ()) -> subprocess.Popen:
    """Start ``flwr run`` and wait for it (``--stream`` returns when the run ends), bounded in time."""
    cmd = [str(BIN / "flwr"), "run", str(app_dir), connection, "--stream", *run_config_args(cfg), *extra]
    proc = _spawn(cmd, env, log, cwd=app_dir)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"`flwr run` did not finish within {timeout_s:.0f} s; log: {log}") from None
    return proc


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------------
# 2. `flwr run` on a local simulation federation
# ---------------------------------------------------------------------------------------------------


def run_flwr_local(cfg: FederatedConfig, *, app_dir: str | Path = REPO_ROOT, num_supernodes: int | None = None,
                   concurrency: int = 2, timeout_s: float = 600.0, keep_home: bool = False) -> results.RunDir:
    """Run ``cfg`` with ``flwr run`` on a local simulation SuperLink and return the run folder.

    Equivalent shell commands (``FLWR_HOME`` holding the connection below)::

        # $FLWR_HOME/config.toml
        [superlink.fedasr-local]
        address = ":local-in-memory:"

        flwr run . fedasr-local --stream --run-config 'fed.num-rounds=2 ...' \\
            --federation-config "num-supernodes=2 client-resources-num-cpus=1 init-args-num-cpus=2"
        # then stop the detached `flower-superlink --simulation` that flwr started

    Args:
        app_dir: the Flower app (the repo root: its ``pyproject.toml`` has ``[tool.flwr.app]``).
        num_supernodes: virtual SuperNodes (default ``clients-per-round``).
        concurrency: Ray CPUs (clients trained at once, 1 CPU each).
        timeout_s: bound on the whole run; the local SuperLink is stopped in any case.
        keep_home: keep the private ``FLWR_HOME`` (logs) instead of deleting it.
    """
    cfg = _pinned(cfg)
    app_dir = Path(app_dir).resolve()
    home = _flwr_home("fedasr-flwr-local-", "fedasr-local", 'address = ":local-in-memory:"\n')
    env = _env(home, FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
               FLWR_LOCAL_CONTROL_API_PORT=str(free_port()))
    nodes = num_supernodes or cfg.fed.clients_per_round
    fed_cfg = (f"num-supernodes={nodes} client-resources-num-cpus=1 client-resources-num-gpus=0.0 "
               f"init-args-num-cpus={concurrency} init-args-num-gpus=0")
    log, proc = home / "flwr-run.log", None
    try:
        proc = _flwr_run(cfg, app_dir, "fedasr-local", env, log, timeout_s, ["--federation-config", fed_cfg])
        if proc.returncode != 0:
            raise RuntimeError(f"`flwr run` failed ({proc.returncode}):\n{_tail(log)}")
        try:
            return _finished_run(cfg)
        except RuntimeError as e:
            server_log = home / "local-superlink" / "superlink.log"
            raise RuntimeError(f"{e}\n--- flwr run ---\n{_tail(log)}\n--- superlink ---\n{_tail(server_log)}") from None
    finally:
        _cleanup([proc] if proc else [], home, keep_home)


# ---------------------------------------------------------------------------------------------------
# 3. Deployment Engine on loopback
# ---------------------------------------------------------------------------------------------------


def _wait_http(url: str, deadline: float, proc: subprocess.Popen, log: Path, ca: Path | None = None) -> None:
    import ssl

    import httpx

    verify = ssl.create_default_context(cafile=str(ca)) if ca else True
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before {url} answered:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=0.5, verify=verify).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in time:\n{_tail(log)}")


def run_deployment_local(cfg: FederatedConfig, n_supernodes: int = 2, *, app_dir: str | Path = REPO_ROOT,
                         node_configs: Sequence[str] | None = None, timeout_s: float = 600.0, keep_home: bool = False,
                         secure: bool = True, unregistered_nodes: int = 0) -> results.RunDir:
    """Run ``cfg`` on the Deployment Engine on 127.0.0.1 (1 SuperLink + ``n_supernodes``) and return the run folder.

    Each SuperNode gets ``--node-config "partition-id=i num-partitions=n"`` (or ``node_configs[i]``) and
    its own port; the run uses ``fed.node-data="partitioned"`` and waits for all ``n`` nodes. All
    processes (SuperLink, SuperNodes, ``flwr run``, and the SuperExec/ServerApp/ClientApp processes they
    spawn) are stopped when this returns or raises.

    Args:
        secure: TLS + SuperNode authentication (`fedasr.federated.deployment`) with throwaway credentials in
            the private ``FLWR_HOME``; each node's public key is registered before the node starts.
            ``False``: ``--insecure`` and any node may join (a trusted network only).
        unregistered_nodes: extra SuperNodes (``secure`` only) whose keys are never registered: the SuperLink
            must refuse them. ``<run>/deployment.json`` records ``tls``, ``node_auth``, the registered node
            ids, and each unregistered node's exit code and Flower's refusal line.
    """
    if unregistered_nodes and not secure:
        raise ValueError("unregistered_nodes needs secure=True: without authentication any SuperNode may join")
    cfg = _pinned(cfg)
    cfg = replace(cfg, fed=replace(cfg.fed, node_data="partitioned", min_nodes=n_supernodes))
    app_dir = Path(app_dir).resolve()
    port, conn = free_port(), "fedasr-deployment"
    home = _flwr_home("fedasr-flwr-deploy-", conn, "")
    creds = security.make_credentials(home / "credentials", n_supernodes + unregistered_nodes) if secure else None
    (home / "config.toml").write_text(deployment.connection_toml(conn, f"127.0.0.1:{port}", creds))
    env = _env(home)
    deadline = time.monotonic() + timeout_s
    procs: list[subprocess.Popen] = []
    try:
        # Start the SuperLink (one HTTP API: Fleet + Control + ServerApp runtime; HTTPS when secure)
        link_log = home / "superlink.log"
        procs.append(_spawn(deployment.superlink_command(BIN, "127.0.0.1", port, creds), env, link_log))
        _wait_http(f"http{'s' if secure else ''}://127.0.0.1:{port}/health", min(deadline, time.monotonic() + 60),
                   procs[0], link_log, creds.ca_cert if creds else None)
        # Register the nodes' public keys (not the unregistered ones), then start every node on its own port
        node_ids = [deployment.register_supernode(BIN, k.public, conn, env) for k in creds.nodes[:n_supernodes]
                    ] if creds else []
        for i in range(n_supernodes + unregistered_nodes):
            node_cfg = (node_configs[i] if node_configs and i < n_supernodes
                        else f"partition-id={i % n_supernodes} num-partitions={n_supernodes}")
            cmd = deployment.supernode_command(BIN, f"127.0.0.1:{port}", free_port(), node_cfg, creds,
                                               creds.nodes[i] if creds else None)
            procs.append(_spawn(cmd, env, home / f"supernode-{i}.log"))
        # Run the app and wait for it
        log = home / "flwr-run.log"
        procs.append(_flwr_run(cfg, app_dir, conn, env, log, max(1.0, deadline - time.monotonic())))
        if procs[-1].returncode != 0:
            raise RuntimeError(f"`flwr run` failed ({procs[-1].returncode}):\n{_tail(log)}")
        try:
            run = _finished_run(cfg)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n--- superlink ---\n{_tail(link_log)}") from None
        refused = deployment.refusals(procs[1 + n_supernodes:1 + n_supernodes + unregistered_nodes],
                                      [home / f"supernode-{n_supernodes + j}.log" for j in range(unregistered_nodes)])
        results.write_json(run.path / "deployment.json", {"tls": secure, "node_auth": secure, "supernodes": n_supernodes,
                                                          "registered_node_ids": node_ids, "unregistered": refused})
        return run
    finally:
        _cleanup(procs, home, keep_home)


# ---------------------------------------------------------------------------------------------------
# Command line: `python -m fedasr.federated.launch {simulation,flwr,deployment} [--config F] [--set k=v]`
# ---------------------------------------------------------------------------------------------------


def cli_main(argv: Sequence[str] | None = None) -> results.RunDir:
    """Run one federated experiment from the command line and print its run folder."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fedasr.federated.launch", description=__doc__.split("\n\n")[0])
    ap.add_argument("engine", choices=["simulation", "flwr", "deployment"],
                    help="in-process Simulation Engine, `flwr run` on a local simulation, or loopback Deployment")
    ap.add_argument("--config", help="TOML with [fed], [task], [run] tables (Default: the dataclass defaults)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override, TOML value, e.g. --set fed.num-rounds=5 --set task.params.num-clients=40")
    ap.add_argument("--supernodes", type=int, default=None,
                    help="SuperNodes (Default: clients-per-round for simulations, 2 for deployment)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="bound for flwr/deployment runs in s (Default: 1800)")
    ap.add_argument("--insecure", action="store_true", help="deployment without TLS and SuperNode authentication")
    args = ap.parse_args(argv)
    try:
        cfg = load(FederatedConfig, args.config, parse_overrides(args.set))
    except ConfigError as e:
        ap.error(str(e))
    if args.engine == "simulation":
        run = run_simulation(cfg, num_supernodes=args.supernodes)
    elif args.engine == "flwr":
        run = run_flwr_local(cfg, num_supernodes=args.supernodes, timeout_s=args.timeout)
    else:
        run = run_deployment_local(cfg, n_supernodes=args.supernodes or 2, timeout_s=args.timeout,
                                   secure=not args.insecure)
    print(run.path)
    return run


if __name__ == "__main__":
    cli_main()
