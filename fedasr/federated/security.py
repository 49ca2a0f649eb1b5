"""Throwaway credentials for a secure Flower deployment: a CA, a SuperLink TLS certificate, SuperNode keys.

What Flower's docs make with ``openssl`` and ``ssh-keygen`` scripts ("Enable TLS connections",
"Authenticate SuperNodes"), in Python with the ``cryptography`` package:

* TLS (``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key``,
  ``flower-supernode --root-certificates ca.crt``, ``root-certificates`` in the ``flwr`` connection): a
  self-signed CA and a server certificate it signs, whose Subject Alternative Names are the addresses the
  SuperNodes, the ``flwr`` CLI and the SuperLink's own ServerApp processes dial (127.0.0.1 and localhost
  on loopback; the server's host name or IP on a cluster).
* SuperNode authentication (``flower-superlink --enable-supernode-auth``; ``flwr supernode register
  supernode-i.pub``; ``flower-supernode --auth-supernode-private-key supernode-i``): one EC key pair per
  SuperNode on a NIST curve (Flower accepts P-256/P-384/P-521), in OpenSSH format as ``ssh-keygen -t ecdsa
  -b 384`` writes it (Flower reads ``load_ssh_private_key`` / ``load_ssh_public_key``).

The folder is 0700 and private keys are 0600. These credentials are for tests, demos and a first cluster
run: a production CA keeps its key offline and each SuperNode makes its own key pair on its own machine
(only the ``.pub`` file travels to whoever registers it).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "LOOPBACK_HOSTS",
    "Credentials",
    "NodeKey",
    "cli_main",
    "make_ca",
    "make_credentials",
    "make_server_certificate",
    "make_supernode_key",
]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
CURVE = ec.SECP384R1  # P-384, the curve of Flower's `ssh-keygen -t ecdsa -b 384` example
VALID_DAYS = 30  # throwaway: a month


@dataclass(frozen=True)
class NodeKey:
    """One SuperNode's key pair: ``private`` (OpenSSH PEM, 0600) and ``public`` (one ``ecdsa-sha2-nistp384`` line)."""

    private: Path
    public: Path


@dataclass(frozen=True)
class Credentials:
    """Paths of one deployment's credentials (see the module docstring for which flag takes which file)."""

    folder: Path
    ca_cert: Path  # --ssl-ca-certfile (SuperLink), --root-certificates (SuperNode), root-certificates (flwr)
    server_cert: Path  # --ssl-certfile
    server_key: Path  # --ssl-keyfile
    nodes: list[NodeKey] = field(default_factory=list)


def _write(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to ``path``, created with ``mode`` (a private key is never readable by others, even briefly)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # the umask may have removed bits from `mode`
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    """Subject Alternative Names: IP addresses as ``IPAddress`` entries, anything else as a DNS name."""
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_ca(folder: str | Path, common_name: str = "fedasr throwaway CA") -> tuple[Path, Path]:
    """Make a self-signed CA (P-384 key, ``VALID_DAYS`` days) in ``folder``; return ``(ca.crt, ca.key)``."""
    folder = Path(folder)
    key = ec.generate_private_key(CURVE())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    return (_write(folder / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644),
            _write(folder / "ca.key", _key_pem(key), 0o600))


def make_server_certificate(folder: str | Path, ca_cert: str | Path, ca_key: str | Path,
                            hosts: Sequence[str] = LOOPBACK_HOSTS) -> tuple[Path, Path]:
    """Make the SuperLink's TLS certificate, signed by the CA, valid for ``hosts``; return ``(server.pem, server.key)``.

    Args:
        folder: where ``server.pem`` (0644) and ``server.key`` (0600) go.
        ca_cert, ca_key: the CA of `make_ca`.
        hosts: every address clients dial the SuperLink by (IP addresses or DNS names): SuperNodes, the
            ``flwr`` CLI, and the SuperLink's own SuperExec/ServerApp processes (they dial ``--host``; on
            ``0.0.0.0`` they dial 127.0.0.1, so keep it in the list).
    """
    if not hosts:
        raise ValueError("make_server_certificate: hosts is empty (the certificate would match no address)")
    folder = Path(folder)
    ca = x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
    ca_private = serialization.load_pem_private_key(Path(ca_key).read_bytes(), password=None)
    key = ec.generate_private_key(CURVE())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)
            .sign(ca_private, hashes.SHA384()))
    return (_write(folder / "server.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644),
            _write(folder / "server.key", _key_pem(key), 0o600))


def make_supernode_key(folder: str | Path, name: str) -> NodeKey:
    """Make one SuperNode's EC P-384 key pair as ``<name>`` (private, 0600) and ``<name>.pub`` (OpenSSH line)."""
    folder = Path(folder)
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return NodeKey(private=_write(folder / name, private, 0o600),
                   public=_write(folder / f"{name}.pub", public + f" {name}\n".encode(), 0o644))


def make_credentials(folder: str | Path, n_supernodes: int, hosts: Sequence[str] = LOOPBACK_HOSTS) -> Credentials:
    """Make a CA, a SuperLink certificate for ``hosts`` and ``n_supernodes`` key pairs ``supernode-<i>`` in ``folder``.

    ``folder`` is created 0700 (it holds private keys); existing files of the same names are replaced.
    """
    if n_supernodes < 0:
        raise ValueError(f"make_credentials: n_supernodes must be >= 0, got {n_supernodes}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    ca_cert, ca_key = make_ca(folder)
    server_cert, server_key = make_server_certificate(folder, ca_cert, ca_key, hosts)
    nodes = [make_supernode_key(folder, f"supernode-{i}") for i in range(n_supernodes)]
    return Credentials(folder=folder, ca_cert=ca_cert, server_cert=server_cert, server_key=server_key, nodes=nodes)


def cli_main(argv: Sequence[str] | None = None) -> None:
    """Make credentials from the command line: ``ca FOLDER --hosts H...`` or ``node FOLDER NAME``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fedasr.federated.security", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    ca = sub.add_parser("ca", help="a CA (ca.crt, ca.key) and the SuperLink's certificate (server.pem, server.key)")
    ca.add_argument("folder", help="output folder (created 0700)")
    ca.add_argument("--hosts", nargs="+", default=list(LOOPBACK_HOSTS),
                    help="addresses the SuperLink is dialled by (Default: 127.0.0.1 localhost)")
    node = sub.add_parser("node", help="one SuperNode key pair: NAME (private) and NAME.pub (to register)")
    node.add_argument("folder", help="output folder (created 0700)")
    node.add_argument("name", help="file name of the private key, e.g. supernode-0")
    args = ap.parse_args(argv)
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    if args.what == "ca":
        ca_cert, ca_key = make_ca(folder)
        for p in (ca_cert, ca_key, *make_server_certificate(folder, ca_cert, ca_key, args.hosts)):
            print(p)
    else:
        key = make_supernode_key(folder, args.name)
        print(key.private, key.public, sep="\n")


if __name__ == "__main__":
    cli_main()
