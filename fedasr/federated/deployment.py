"""The Deployment Engine's security wiring: SuperLink/SuperNode command lines, the ``flwr`` connection, registration.

`fedasr.federated.launch.run_deployment_local` starts the processes on loopback; this module says how,
with TLS and SuperNode authentication (Flower 1.42) or, explicitly, without:

* TLS: the SuperLink serves its one HTTP API (Fleet, Control, ServerApp runtime) over HTTPS with
  ``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``; SuperNodes verify it with ``--root-certificates``,
  the ``flwr`` CLI with ``root-certificates`` in its connection, and the SuperLink's own SuperExec with the
  CA it is handed. A SuperNode's ClientApp runtime API stays on its machine's loopback, without TLS.
* Authentication: ``flower-superlink --enable-supernode-auth`` accepts only SuperNodes whose public key
  was registered (``flwr supernode register <key.pub> <connection>``) and which sign every Fleet request
  with the matching private key (``flower-supernode --auth-supernode-private-key``). An unregistered node
  is refused when it activates: it logs ``Exit Code: 305`` and ``[code: 2004] Failed to activate SuperNode.``
  and exits (`refusals`); a SuperNode without a key, which would register itself, is refused with ``[code: 2001]
  SuperNode authentication is enabled. All SuperNodes must be registered via the CLI.``

Deployment on several machines with TLS and authentication (the SuperLink serves one HTTP API on
``--host``/``--port``, default ``127.0.0.1:8000``; each SuperNode serves its ClientApp runtime API on its
own ``--port``, default 9094)::

    # every machine: the repo + venv, and
    export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
    export OMP_NUM_THREADS=1

    # server machine (10.0.0.1): a CA and the SuperLink's certificate for every address it is dialled by
    python -m fedasr.federated.security ca certs --hosts 10.0.0.1 127.0.0.1 localhost
    flower-superlink --host 0.0.0.0 --port 8000 --enable-supernode-auth \\
        --ssl-ca-certfile certs/ca.crt --ssl-certfile certs/server.pem --ssl-keyfile certs/server.key
    # copy certs/ca.crt (never the .key files) to every client machine and to the operator

    # client machine i of P: its own key pair; only keys/supernode-<i>.pub leaves the machine
    python -m fedasr.federated.security node keys supernode-<i>

    # operator (any machine with the repo and ca.crt): a SuperLink connection in $FLWR_HOME/config.toml
    #   [superlink.fedasr-cluster]
    #   address = "10.0.0.1:8000"
    #   root-certificates = "/abs/path/ca.crt"
    flwr supernode register supernode-<i>.pub fedasr-cluster      # once per SuperNode, before it starts
    flwr supernode list fedasr-cluster

    # client machine i
    flower-supernode --superlink 10.0.0.1:8000 --root-certificates ca.crt \\
        --auth-supernode-private-key keys/supernode-<i> --port 9094 \\
        --node-config "partition-id=<i> num-partitions=<P>"     # or: --node-config 'client-ids="u01,u07"'

    # operator
    flwr run . fedasr-cluster --stream --run-config \\
        'fed.node-data="partitioned" fed.min-nodes=<P> run.results-root="/abs/path/results"'

The ServerApp writes ``results/`` on the SuperLink's machine (``run.results-root`` should be absolute).
With ``fed.node-data="shared"`` (every SuperNode can read every client's data, e.g. a shared corpus path)
no ``--node-config`` is needed. Inside a trusted network only, ``--insecure`` on both and ``insecure = true``
in the connection replace the certificates, and the SuperLink without ``--enable-supernode-auth`` lets any
SuperNode join (`run_deployment_local(..., secure=False)`).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedasr.federated.security import Credentials, NodeKey

__all__ = [
    "REFUSED_EXIT_CODE",
    "connection_toml",
    "refusal",
    "refusals",
    "register_supernode",
    "superlink_command",
    "supernode_command",
]

# Flower's ExitCode.SUPERNODE_CONNECTION_ERROR: logged as "Exit Code: 305" (the process itself exits with status 1)
REFUSED_EXIT_CODE = 305
# what a refused SuperNode logs (flwr.supernode.fleet_http_connection), most specific first
_REFUSAL = (re.compile(r"Failed to activate SuperNode"), re.compile(r"All SuperNodes must be registered via the CLI"),
            re.compile(r"Invalid SuperNode authentication"),
            re.compile(r"Failed to initialize the connection to the SuperLink"))


def superlink_command(bin_dir: Path, host: str, port: int, creds: Credentials | None) -> list[str]:
    """Return the ``flower-superlink`` command: TLS + node authentication with ``creds``, ``--insecure`` without."""
    cmd = [str(bin_dir / "flower-superlink"), "--isolation", "subprocess", "--host", host, "--port", str(port)]
    if creds is None:
        return [*cmd, "--insecure"]
    return [*cmd, "--enable-supernode-auth", "--ssl-ca-certfile", str(creds.ca_cert),
            "--ssl-certfile", str(creds.server_cert), "--ssl-keyfile", str(creds.server_key)]


def supernode_command(bin_dir: Path, superlink: str, port: int, node_config: str, creds: Credentials | None,
                      key: NodeKey | None) -> list[str]:
    """Return the ``flower-supernode`` command for one node (its ClientApp runtime API on 127.0.0.1:``port``).

    Args:
        superlink: the SuperLink's ``host:port`` (its certificate must name ``host``).
        node_config: ``--node-config`` (which clients this node holds).
        creds: verify the SuperLink with ``creds.ca_cert``; ``None`` = ``--insecure``.
        key: sign Fleet requests with this key pair (must be registered with the SuperLink); ``None`` = none.
    """
    cmd = [str(bin_dir / "flower-supernode"), "--superlink", superlink, "--host", "127.0.0.1", "--port", str(port),
           "--node-config", node_config]
    cmd += ["--insecure"] if creds is None else ["--root-certificates", str(creds.ca_cert)]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(key.private)]
    return cmd


def connection_toml(name: str, address: str, creds: Credentials | None) -> str:
    """Return a ``$FLWR_HOME/config.toml`` whose default SuperLink connection ``name`` dials ``address``.

    With ``creds`` the CLI verifies the SuperLink against ``creds.ca_cert`` (``root-certificates``, an absolute
    path); without, it uses ``insecure = true``.
    """
    body = (f'root-certificates = "{Path(creds.ca_cert).resolve()}"\n' if creds is not None
            else "insecure = true\n")
    return f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n{body}'


def register_supernode(bin_dir: Path, public_key: Path, connection: str, env: Mapping[str, str],
                       timeout_s: float = 60.0) -> int:
    """Register a SuperNode's public key with the SuperLink (``flwr supernode register``); return its node id.

    Raises:
        RuntimeError: the CLI failed (its output is in the message), e.g. the key is already registered.
    """
    cmd = [str(bin_dir / "flwr"), "supernode", "register", str(public_key), connection, "--format", "json"]
    proc = subprocess.run(cmd, env=dict(env), capture_output=True, text=True, timeout=timeout_s, check=False,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout
    try:
        reply = json.loads(out[out.index("{"): out.rindex("}") + 1])
    except ValueError:
        reply = {}
    if proc.returncode != 0 or not reply.get("success"):
        raise RuntimeError(f"`flwr supernode register {public_key.name}` failed ({proc.returncode}):\n"
                           f"{out}\n{proc.stderr}")
    return int(reply["node-id"])


def refusal(log_text: str) -> str | None:
    """Return the line of a SuperNode's log saying the SuperLink refused it (the most specific one), or ``None``."""
    lines = log_text.splitlines()
    return next((line.strip() for pattern in _REFUSAL for line in lines if pattern.search(line)), None)


def refusals(procs: Sequence[subprocess.Popen], logs: Sequence[Path], wait_s: float = 30.0) -> list[dict]:
    """Wait (``wait_s`` at most in all) for SuperNodes the SuperLink should refuse; return what each did.

    A node counts as ``refused`` when it exited on its own, non-zero, with Flower's exit code
    `REFUSED_EXIT_CODE` and a refusal line (`refusal`) in its log. Each entry: ``{"refused", "exit_status",
    "flower_exit_code", "log_line"}`` (``exit_status`` ``None``: still running when the wait ended).
    """
    deadline, out = time.monotonic() + wait_s, []
    for proc, log in zip(procs, logs, strict=True):
        try:
            status = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            status = None
        text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
        code = re.search(r"Exit Code: (\d+)", text)
        flower_code = int(code.group(1)) if code else None
        line = refusal(text)
        out.append({"refused": status not in (None, 0) and flower_code == REFUSED_EXIT_CODE and line is not None,
                    "exit_status": status, "flower_exit_code": flower_code, "log_line": line})
    return out
