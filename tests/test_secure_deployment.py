"""Secure deployment (issue 21): throwaway TLS credentials, SuperNode authentication, the Deployment Engine with both.

The credential tests check the files against what Flower and OpenSSL (Python's ``ssl``) accept. The process
tests start real ``flower-superlink`` / ``flower-supernode`` processes on loopback with certificates and keys
made by the test, and assert on what Flower does: an unregistered SuperNode (or one that does not trust the
SuperLink's CA) is refused and exits with Flower's log line; a registered one is activated.
"""

import datetime
import ipaddress
import json
import os
import socket
import ssl
import stat
import threading
import time
import tomllib

import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedasr.federated import deployment, launch, security
from fedasr.federated.config import FedConfig, FederatedConfig, RunSpec, TaskSpec
from fedasr.ports import free_port

# ---------------------------------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------------------------------


def test_credentials_are_written_with_private_permissions(tmp_path):
    creds = security.make_credentials(tmp_path / "creds", 2)
    assert stat.S_IMODE(creds.folder.stat().st_mode) == 0o700
    for private in (creds.server_key, *(k.private for k in creds.nodes)):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert stat.S_IMODE((creds.folder / "ca.key").stat().st_mode) == 0o600
    for public in (creds.ca_cert, creds.server_cert, *(k.public for k in creds.nodes)):
        assert stat.S_IMODE(public.stat().st_mode) == 0o644, public
    assert [k.private.name for k in creds.nodes] == ["supernode-0", "supernode-1"]


def _verify(ca_cert, leaf_cert, host):
    store = Store([x509.load_pem_x509_certificate(ca_cert.read_bytes())])
    subject = x509.IPAddress(ipaddress.ip_address(host)) if host[0].isdigit() else x509.DNSName(host)
    verifier = PolicyBuilder().store(store).time(datetime.datetime.now(datetime.UTC)).build_server_verifier(
        subject)
    return verifier.verify(x509.load_pem_x509_certificate(leaf_cert.read_bytes()), [])


def test_server_certificate_is_valid_for_its_hosts_only(tmp_path):
    creds = security.make_credentials(tmp_path / "a", 0, hosts=["10.1.2.3", "127.0.0.1", "superlink.example"])
    for host in ("10.1.2.3", "127.0.0.1", "superlink.example"):
        assert _verify(creds.ca_cert, creds.server_cert, host)
    with pytest.raises(VerificationError):
        _verify(creds.ca_cert, creds.server_cert, "10.9.9.9")
    other = security.make_credentials(tmp_path / "b", 0)  # another CA does not vouch for it
    with pytest.raises(VerificationError):
        _verify(other.ca_cert, creds.server_cert, "127.0.0.1")
    with pytest.raises(ValueError, match="hosts is empty"):
        security.make_server_certificate(tmp_path / "a", creds.ca_cert, tmp_path / "a" / "ca.key", hosts=[])


def _handshake(creds, trusted_ca):
    """Serve one TLS handshake on loopback with the server certificate; return the client's error or None."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(creds.server_cert, creds.server_key)
    client_ctx = ssl.create_default_context(cafile=str(trusted_ca))
    with socket.create_server(("127.0.0.1", 0)) as srv:
        def serve():
            conn, _ = srv.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            with socket.create_connection(srv.getsockname(), timeout=10) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                return None
        except ssl.SSLCertVerificationError as e:
            return e
        finally:
            t.join(10)


def test_tls_handshake_succeeds_with_the_ca_and_fails_without_it(tmp_path):
    creds = security.make_credentials(tmp_path / "a", 0)
    assert _handshake(creds, creds.ca_cert) is None
    other = security.make_credentials(tmp_path / "b", 0)
    assert "certificate verify failed" in str(_handshake(creds, other.ca_cert))


def test_supernode_keys_load_the_way_flower_loads_them(tmp_path):
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    key = security.make_supernode_key(tmp_path, "supernode-7")
    private = load_ssh_private_key(key.private.read_bytes(), None)  # what flower-supernode does
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    # `flwr supernode register` reads the .pub file: it is the private key's public half
    assert try_load_public_key(key.public) == public_key_to_bytes(private.public_key())


def test_connection_and_command_lines_parse_as_flower_reads_them(tmp_path):
    from flwr.cli.flower_config import parse_superlink_connection
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    creds = security.make_credentials(tmp_path, 1)
    secure = tomllib.loads(deployment.connection_toml("c", "127.0.0.1:9000", creds))
    conn = parse_superlink_connection(secure["superlink"]["c"], "c")
    assert secure["superlink"]["default"] == "c" and conn.root_certificates == str(creds.ca_cert.resolve())
    assert not conn.insecure
    plain = tomllib.loads(deployment.connection_toml("c", "h:1", None))
    plain = parse_superlink_connection(plain["superlink"]["c"], "c")
    assert plain.insecure and plain.root_certificates is None

    link = _parse_args_run_superlink().parse_args(
        deployment.superlink_command(launch.BIN, "127.0.0.1", 9000, creds)[1:])
    assert link.enable_supernode_auth and not link.insecure
    assert (link.ssl_ca_certfile, link.ssl_certfile, link.ssl_keyfile) == tuple(
        str(p) for p in (creds.ca_cert, creds.server_cert, creds.server_key))
    link = _parse_args_run_superlink().parse_args(deployment.superlink_command(launch.BIN, "127.0.0.1", 9000, None)[1:])
    assert link.insecure and not link.enable_supernode_auth

    node = _parse_args_run_supernode().parse_args(
        deployment.supernode_command(launch.BIN, "127.0.0.1:9000", 9100, "partition-id=0 num-partitions=2", creds,
                                     creds.nodes[0])[1:])
    assert not node.insecure and node.root_certificates == str(creds.ca_cert)
    assert node.auth_supernode_private_key == str(creds.nodes[0].private)
    node = _parse_args_run_supernode().parse_args(
        deployment.supernode_command(launch.BIN, "127.0.0.1:9000", 9100, "x=1", None, None)[1:])
    assert node.insecure and node.auth_supernode_private_key is None


def test_unregistered_nodes_need_authentication(tmp_path):
    cfg = FederatedConfig(run=RunSpec(results_root=str(tmp_path)))
    with pytest.raises(ValueError, match="needs secure=True"):
        launch.run_deployment_local(cfg, secure=False, unregistered_nodes=1)
    assert not any(p.name.startswith("fedasr-flwr-deploy-") for p in tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------
# Real processes on loopback
# ---------------------------------------------------------------------------------------------------


def _flwr_home_of(p):
    try:
        return p.environ().get("FLWR_HOME", "")
    except (psutil.Error, OSError):
        return ""


def _ours(prefix):
    """Processes whose private FLWR_HOME has this test's prefix (started by this test, never others')."""
    return [p.pid for p in psutil.process_iter() if p.pid != os.getpid()
            and _flwr_home_of(p).split("/")[-1].startswith(prefix)]


def _wait_for(pattern, path, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and pattern in path.read_text(errors="replace"):
            return True
        time.sleep(0.3)
    return False


@pytest.mark.timeout(180)
def test_superlink_refuses_an_unregistered_supernode_and_an_untrusting_one(tmp_path):
    """A registered node is activated; an unregistered key, a node without a key (which would register itself
    when authentication is off) and a node trusting another CA are refused."""
    prefix = f"fedasr-flwr-probe-{os.getpid()}-"
    port, conn = free_port(), "fedasr-probe"
    home = launch._flwr_home(prefix, conn, "")
    creds = security.make_credentials(home / "credentials", 2)
    (home / "config.toml").write_text(deployment.connection_toml(conn, f"127.0.0.1:{port}", creds))
    stranger_ca = security.make_credentials(tmp_path / "other-ca", 0)
    env, procs = launch._env(home), []
    link_log = home / "superlink.log"
    try:
        procs.append(launch._spawn(deployment.superlink_command(launch.BIN, "127.0.0.1", port, creds), env, link_log))
        launch._wait_http(f"https://127.0.0.1:{port}/health", time.monotonic() + 90, procs[0], link_log, creds.ca_cert)
        node_id = deployment.register_supernode(launch.BIN, creds.nodes[0].public, conn, env)
        starts = [(creds, creds.nodes[0]), (creds, creds.nodes[1]), (stranger_ca, creds.nodes[0]), (creds, None)]
        for i, (trust, key) in enumerate(starts):
            cmd = deployment.supernode_command(launch.BIN, f"127.0.0.1:{port}", free_port(), "x=1", trust, key)
            procs.append(launch._spawn(cmd, env, home / f"supernode-{i}.log"))
        unregistered, untrusting, keyless = deployment.refusals(
            procs[2:], [home / f"supernode-{i}.log" for i in (1, 2, 3)], wait_s=90)
        # the unregistered key: TLS is fine, activation is refused (exit code 305, FLEET_NODE_ACTIVATION_FAILED)
        assert unregistered["refused"], (unregistered, (home / "supernode-1.log").read_text())
        assert unregistered["flower_exit_code"] == deployment.REFUSED_EXIT_CODE
        assert "[code: 2004] Failed to activate SuperNode" in unregistered["log_line"]
        # the node without a key may not register itself (Fleet registration is off under authentication)
        assert keyless["refused"] and "[code: 2001]" in (home / "supernode-3.log").read_text(), keyless
        assert "All SuperNodes must be registered via the CLI" in keyless["log_line"]
        # the node that does not trust the SuperLink's CA never gets past the TLS handshake
        text = (home / "supernode-2.log").read_text()
        assert untrusting["exit_status"] not in (None, 0) and untrusting["flower_exit_code"] == 305, text
        assert "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text, text
        # the registered node is activated under its registered id and keeps running
        assert _wait_for(f"[Fleet.ActivateNode] Activated node_id={node_id}", link_log, 60), link_log.read_text()
        assert procs[1].poll() is None
        # ...and the SuperLink logged one refused activation (the untrusting node never reached its HTTP API)
        served = link_log.read_text()
        assert served.count("[Fleet.ActivateNode] Activated") == 1
        assert served.count("[/v1/fleet/activate-node][ApiError:2004]") == 1
        assert served.count("[/v1/fleet/register-node][ApiError:2001]") == 1
        assert served.count('"POST /v1/fleet/activate-node HTTP/1.1" 412') == 1
    finally:
        launch._cleanup(procs, home, keep_home=False)
    assert _ours(prefix) == []


def _toy(tmp_path, name):
    return FederatedConfig(fed=FedConfig(num_rounds=2, clients_per_round=2, eval_every=1, node_wait_s=120.0),
                           task=TaskSpec(name="toy", params={"num-clients": 8}),
                           run=RunSpec(experiment=name, run_id=name, results_root=str(tmp_path / "results"),
                                       progress=False, server_threads=1))


@pytest.mark.slow
@pytest.mark.timeout(500)
@pytest.mark.parametrize("secure", [True, False], ids=["tls+auth", "insecure"])
def test_deployment_engine_two_rounds(tmp_path, monkeypatch, secure):
    """The toy task for 2 rounds on 1 SuperLink + 2 SuperNodes; secure: plus one unregistered node, refused."""
    homes, real_home = [], launch._flwr_home  # note the private FLWR_HOME the launcher makes (it still makes it)
    monkeypatch.setattr(launch, "_flwr_home", lambda *a: homes.append(real_home(*a)) or homes[-1])
    run = launch.run_deployment_local(_toy(tmp_path, "secure" if secure else "insecure"), n_supernodes=2,
                                      secure=secure, unregistered_nodes=1 if secure else 0, timeout_s=400)
    rows = [r for r in run.rounds() if r["round"] > 0]
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["num_succeeded"] == 2 for r in rows)
    assert run.summary()["rounds_completed"] == 2
    record = json.loads((run.path / "deployment.json").read_text())
    assert record["tls"] is secure and record["node_auth"] is secure and record["supernodes"] == 2
    if secure:
        assert len(set(record["registered_node_ids"])) == 2
        [refused] = record["unregistered"]
        assert refused["refused"] and "Failed to activate SuperNode" in refused["log_line"], refused
    else:
        assert record["registered_node_ids"] == [] and record["unregistered"] == []
    # nothing left: no process of this launch (SuperLink, SuperNodes, SuperExec, apps), and its FLWR_HOME is gone
    [home] = homes
    assert not home.exists()
    assert [p.pid for p in psutil.process_iter() if _flwr_home_of(p) == str(home)] == []
