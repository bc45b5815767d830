"""A Cassandra node with passwords and TLS for the tests, its keys made at test time.

:func:`make_pki` makes a CA, the node's keystore and truststore with Java's ``keytool``
and a client key with ``openssl`` (signed by that CA with ``keytool``), plus an
unrelated CA for the wrong-CA cases; nothing of it is committed.  :func:`start_secure`
starts the node (``cassfs.node.launcher`` with ``security``) on free ports and makes
the application role.  ``python -m tests.secure_node DIR`` starts one by hand.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cassfs.node.launcher import HOST, SUPERUSER, NodeSecurity, start

#: The application role the tests connect as (``GRANT ALL`` on every keyspace).
APP_USER = "cassfs_app"
APP_PASSWORD = "s3cret-Pa55-for-cassfs"  # test only: the tests look for it in every argv
#: What ``keytool`` and ``openssl`` need; a missing one fails the tests that use the node.
TOOLS = ("java", "keytool", "openssl")
_STORE_PASSWORD = "changeit-cassfs"


@dataclass(frozen=True)
class Pki:
    """PEM files for clients, PKCS12 stores for the node."""

    ca: Path  # the CA that signed the node's and the client's certificates
    other_ca: Path  # a CA that signed nothing here
    client_cert: Path
    client_key: Path
    security: NodeSecurity


def missing_tools() -> list[str]:
    """The tools of :data:`TOOLS` not on PATH."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed: {result.stderr.strip()}")


def make_pki(where: Path) -> Pki:
    """Make the keys and certificates under ``where`` (valid 2 days); about 5 s.

    Raises RuntimeError naming the command that failed.
    """
    where.mkdir(parents=True, exist_ok=True)
    ca_store, node_store, trust = where / "ca.p12", where / "node.p12", where / "trust.p12"
    ca, node_csr, node_pem = where / "ca.pem", where / "node.csr", where / "node.pem"
    client_key, client_csr = where / "client.key", where / "client.csr"
    client_cert, other_ca = where / "client.pem", where / "other-ca.pem"
    pw = _STORE_PASSWORD
    store = ("-storetype", "PKCS12", "-storepass", pw)
    key = ("-keyalg", "RSA", "-keysize", "2048", "-validity", "2")
    _run("keytool", "-genkeypair", "-alias", "ca", *key, "-dname", "CN=cassfs test CA",
         "-ext", "bc:c", "-keystore", str(ca_store), *store)  # fmt: skip
    _run("keytool", "-exportcert", "-alias", "ca", "-rfc", "-file", str(ca),
         "-keystore", str(ca_store), *store)  # fmt: skip
    _run("keytool", "-genkeypair", "-alias", "node", *key, "-dname", f"CN={HOST}",
         "-keystore", str(node_store), *store)  # fmt: skip
    _run("keytool", "-certreq", "-alias", "node", "-file", str(node_csr),
         "-keystore", str(node_store), *store)  # fmt: skip
    _run("keytool", "-gencert", "-alias", "ca", "-infile", str(node_csr), "-outfile",
         str(node_pem), "-rfc", "-validity", "2", "-ext", f"san=ip:{HOST}",
         "-ext", "eku=serverAuth", "-keystore", str(ca_store), *store)  # fmt: skip
    _run("keytool", "-importcert", "-noprompt", "-alias", "ca", "-file", str(ca),
         "-keystore", str(node_store), *store)  # fmt: skip
    _run("keytool", "-importcert", "-noprompt", "-alias", "node", "-file", str(node_pem),
         "-keystore", str(node_store), *store)  # fmt: skip
    _run("keytool", "-importcert", "-noprompt", "-alias", "ca", "-file", str(ca),
         "-keystore", str(trust), *store)  # fmt: skip
    _run("openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout",
         str(client_key), "-subj", "/CN=cassfs-client", "-out", str(client_csr))  # fmt: skip
    _run("keytool", "-gencert", "-alias", "ca", "-infile", str(client_csr), "-outfile",
         str(client_cert), "-rfc", "-validity", "2", "-ext", "eku=clientAuth",
         "-keystore", str(ca_store), *store)  # fmt: skip
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(where / "other-ca.key"), "-subj", "/CN=another CA",
         "-out", str(other_ca))  # fmt: skip
    security = NodeSecurity(
        keystore=node_store,
        keystore_password=pw,
        ca_file=ca,
        truststore=trust,
        truststore_password=pw,
        probe_cert=client_cert,
        probe_key=client_key,
    )
    return Pki(ca, other_ca, client_cert, client_key, security)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of the call."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def start_secure(node_dir: Path, pki: Pki, port: int) -> float:
    """Start the node of ``node_dir`` with ``pki`` on ``port``, make :data:`APP_USER`;
    the seconds it took.  Raises ``cassfs.node.NodeError`` when it does not start."""
    from cached.connection import ConnectionSettings
    from cached.store import make_cluster

    started = time.monotonic()
    start(node_dir, port=port, heap="512M", security=pki.security)
    admin = ConnectionSettings.parse(
        f"{HOST}:{port}",
        username=SUPERUSER[0],
        ssl_ca=pki.ca,
        ssl_cert=pki.client_cert,
        ssl_key=pki.client_key,
        environ={"CASSFS_PASSWORD": SUPERUSER[1]},
    )
    cluster = make_cluster(admin, connect_timeout=30)
    try:
        session = cluster.connect()
        session.execute(
            f"CREATE ROLE IF NOT EXISTS {APP_USER} WITH PASSWORD = %s AND LOGIN = true",
            [APP_PASSWORD],
        )
        session.execute(f"GRANT ALL PERMISSIONS ON ALL KEYSPACES TO {APP_USER}")
    finally:
        cluster.shutdown()
    return time.monotonic() - started


if __name__ == "__main__":
    base = Path(sys.argv[1]).resolve()
    pki = make_pki(base / "pki")
    port = free_port()
    seconds = start_secure(base / "node", pki, port)
    print(f"secured node on {HOST}:{port} in {seconds:.1f} s; CA {pki.ca}")
