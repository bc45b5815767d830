"""Connecting to a node with PasswordAuthenticator and TLS (client certificates required).

The node is this module's own (``secure_node``: keys made with keytool and openssl in a
tmp dir, free ports, stopped at the end), never the shared one.  The tests run the real
CLI: ``schema apply``, ``up`` (and the daemon it starts), ``fsck``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cached.client import call_once, socket_path
from cassfs.node.launcher import HOST, stop
from tests.conftest import Mount, run_cli, unmount, wait_for
from tests.secure_node import (
    APP_PASSWORD,
    APP_USER,
    Pki,
    free_port,
    make_pki,
    missing_tools,
    start_secure,
)

KEYSPACE = "cassfs_secure"
#: What SimpleSnitch names the one data center.
NODE_DC = "datacenter1"


@dataclass(frozen=True)
class SecureNode:
    """The running node: where, and the files clients need."""

    contact_points: str
    pki: Pki
    start_seconds: float

    def options(
        self, ca: Path | None = None, client_cert: bool = True, username: bool = True
    ) -> list[str]:
        """``--contact-points``, ``--keyspace``, ``--username`` and the TLS options."""
        args = ["--contact-points", self.contact_points, "--keyspace", KEYSPACE]
        args += ["--username", APP_USER] if username else []
        args += ["--ssl-ca", str(ca or self.pki.ca)]
        if client_cert:
            args += ["--ssl-cert", str(self.pki.client_cert)]
            args += ["--ssl-key", str(self.pki.client_key)]
        return args


@pytest.fixture(scope="module")
def secure_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureNode]:
    """A node with passwords and TLS, the schema applied; FAILS without java/keytool/openssl."""
    missing = missing_tools()
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: the secured node needs Java 17 with keytool "
            "and openssl (apt-get install openjdk-17-jre-headless openssl)",
            pytrace=False,
        )
    base = tmp_path_factory.mktemp("secure")
    pki = make_pki(base / "pki")
    node_dir = base / "node"
    try:
        seconds = start_secure(node_dir, pki, free_port())
        port = int((node_dir / "conf/cassandra.yaml").read_text().split(
            "native_transport_port: ")[1].split()[0])  # fmt: skip
        node = SecureNode(f"{HOST}:{port}", pki, seconds)
        print(f"secured node started in {seconds:.1f} s")
        run_cli("schema", "apply", *node.options(), env={"CASSFS_PASSWORD": APP_PASSWORD})
        yield node
    finally:
        stop(node_dir)


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mount records under this test's tmp dir (as conftest's mount_cassfs does)."""
    monkeypatch.setenv("CASSFS_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("CASSFS_PASSWORD", raising=False)


def one_line(stderr: str) -> str:
    """The single ``cassfs: ...`` line of ``stderr``; fails the test otherwise."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cassfs: "), stderr
    return lines[0]


def password_in_any_argv(password: str) -> list[int]:
    """Pids of the processes whose command line holds ``password``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if password.encode() in cmdline:
            found.append(int(pid))
    return found


def up(
    tmp_path: Path,
    name: str,
    tenant: tuple[int, str],
    args: list[str],
    env: dict[str, str],
    cache_dir: Path | None = None,
) -> tuple[Mount, int, str]:
    """``cassfs up`` a new mountpoint (cache dir ``name-cache`` unless given): the
    mount, exit status and stderr; the caller unmounts."""
    path = tmp_path / name
    cache_dir = cache_dir or tmp_path / f"{name}-cache"
    path.mkdir()
    mount = Mount(path, cache_dir, *tenant)
    result = run_cli(
        "up", str(path), "--cache-dir", str(cache_dir), "--owner", str(tenant[0]),
        "--environment", tenant[1], *args, check=False, env=env,
    )  # fmt: skip
    return mount, result.returncode, result.stderr


def test_password_and_tls_mount_round_trip(
    secure_node: SecureNode,
    fuse_available: None,
    run_dir: None,
    tmp_path: Path,
    tenant: tuple[int, str],
) -> None:
    """Right user, password and CA: two mounts (the password from a file, and from
    CASSFS_PASSWORD) share files; no argv holds the password; the daemon shows its
    consistency levels and never the password; another daemon's settings are refused."""
    password_file = tmp_path / "password"
    password_file.write_text(APP_PASSWORD + "\n")
    password_file.chmod(0o600)
    levels = ["--consistency", "ONE", "--serial-consistency", "SERIAL", "--local-dc", NODE_DC]
    mounts: list[Mount] = []
    try:
        first, code, err = up(
            tmp_path,
            "a",
            tenant,
            [*secure_node.options(), "--password-file", str(password_file), *levels],
            env={},
        )
        mounts.append(first)
        assert code == 0, err
        second, code, err = up(
            tmp_path, "b", tenant, secure_node.options(), env={"CASSFS_PASSWORD": APP_PASSWORD}
        )
        mounts.append(second)
        assert code == 0, err
        data = os.urandom(300_000)
        (first.path / "f.bin").write_bytes(data)
        # Another host's new name: there within a poll of its change feed (its mount's
        # first stat of the root may have listed the root already).
        assert wait_for(lambda: (second.path / "f.bin").exists(), 10)
        assert (second.path / "f.bin").read_bytes() == data
        run_cli("cache", "purge", "--cache-dir", str(first.cache_dir))
        assert (first.path / "f.bin").read_bytes() == data  # read again over TLS

        assert password_in_any_argv(APP_PASSWORD) == []
        status = call_once(first.cache_dir, "status")
        daemon_argv = Path(f"/proc/{status['pid']}/cmdline").read_bytes().split(b"\0")
        assert str(password_file).encode() in daemon_argv
        config = status["config"]
        assert APP_PASSWORD not in repr(config)
        assert config["consistency"] == "ONE" and config["serial_consistency"] == "SERIAL"
        assert config["username"] == APP_USER and config["local_dc"] == NODE_DC
        assert config["ssl_ca"] == str(secure_node.pki.ca)
        other = call_once(second.cache_dir, "status")["config"]
        assert other["password_file"] is None and other["consistency"] == "LOCAL_QUORUM"

        # the first mount's cache dir with other levels: refused, nothing mounted
        third, code, err = up(
            tmp_path, "c", tenant, [*secure_node.options(), "--password-file", str(password_file)],
            env={}, cache_dir=first.cache_dir,
        )  # fmt: skip
        mounts.append(third)
        assert code == 1 and not os.path.ismount(third.path)
        assert "runs with another local_dc, consistency, serial_consistency" in one_line(err)

        # a daemon killed under a mount: the mount starts it again, password included
        for mount in (first, second):
            pid = call_once(mount.cache_dir, "status")["pid"]
            os.kill(pid, signal.SIGKILL)
            assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"))  # noqa: B023
            (mount.path / f"after-{mount.path.name}").write_bytes(data[:1000])
            assert (mount.path / f"after-{mount.path.name}").read_bytes() == data[:1000]
            status = call_once(mount.cache_dir, "status")
            assert status["pid"] != pid and status["config"]["username"] == APP_USER
        assert password_in_any_argv(APP_PASSWORD) == []
    finally:
        for mount in reversed(mounts):
            unmount(mount)


def test_wrong_password_one_line(
    secure_node: SecureNode, fuse_available: None, run_dir: None, tmp_path: Path
) -> None:
    """A wrong password: `schema apply`, `fsck` and `up` each exit 1 with one line; the
    daemon `up` started does not stay."""
    wrong = {"CASSFS_PASSWORD": "not-" + APP_PASSWORD}
    expected = f"cassfs: authentication failed for user {APP_USER} at {secure_node.contact_points}"
    result = run_cli("schema", "apply", *secure_node.options(), check=False, env=wrong)
    assert result.returncode == 1
    assert one_line(result.stderr).startswith(expected)
    assert "CASSFS_PASSWORD or --password-file" in result.stderr
    result = run_cli("fsck", *secure_node.options(), check=False, env=wrong)
    assert result.returncode == 1 and one_line(result.stderr).startswith(expected)
    mount, code, err = up(tmp_path, "m", (7, "wrongpw"), secure_node.options(), env=wrong)
    try:
        assert code == 1 and one_line(err).startswith(expected)
        assert not os.path.ismount(mount.path)
        assert not socket_path(mount.cache_dir).exists()
    finally:
        unmount(mount)
    result = run_cli("schema", "apply", *secure_node.options(username=False), check=False)
    assert result.returncode == 1
    assert "requires authentication: give --username" in one_line(result.stderr)


def test_wrong_ca_one_line(
    secure_node: SecureNode, fuse_available: None, run_dir: None, tmp_path: Path
) -> None:
    """A CA that did not sign the node's certificate, or no client certificate: one line
    saying the TLS handshake failed, from `schema apply` and from `up`."""
    env = {"CASSFS_PASSWORD": APP_PASSWORD}
    wrong_ca = secure_node.options(ca=secure_node.pki.other_ca)
    expected = f"cassfs: TLS handshake with Cassandra at {secure_node.contact_points} failed: "
    result = run_cli("schema", "apply", *wrong_ca, check=False, env=env)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(expected + "certificate verification failed"), line
    mount, code, err = up(tmp_path, "m", (7, "wrongca"), wrong_ca, env=env)
    try:
        assert code == 1 and not os.path.ismount(mount.path)
        assert one_line(err).startswith(expected + "certificate verification failed")
    finally:
        unmount(mount)
    no_cert = secure_node.options(client_cert=False)
    result = run_cli("schema", "apply", *no_cert, check=False, env=env)
    assert result.returncode == 1 and one_line(result.stderr).startswith(expected)


def test_no_hostname_check_still_verifies_the_ca(secure_node: SecureNode, run_dir: None) -> None:
    """--no-ssl-check-hostname drops the name check only: the right CA connects, a wrong
    one still fails verification."""
    env = {"CASSFS_PASSWORD": APP_PASSWORD}
    result = run_cli(
        "schema", "apply", *secure_node.options(), "--no-ssl-check-hostname", check=False, env=env
    )
    assert result.returncode == 0, result.stderr
    result = run_cli(
        "schema", "apply", *secure_node.options(ca=secure_node.pki.other_ca),
        "--no-ssl-check-hostname", check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 1
    assert "certificate verification failed" in one_line(result.stderr)


def test_local_dc(secure_node: SecureNode, run_dir: None) -> None:
    """--local-dc with the node's data center works; another name gives one line."""
    env = {"CASSFS_PASSWORD": APP_PASSWORD}
    result = run_cli(
        "schema", "apply", *secure_node.options(), "--local-dc", NODE_DC, check=False, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "already at schema version" in result.stdout
    result = run_cli(
        "schema", "apply", *secure_node.options(), "--local-dc", "nowhere", check=False, env=env
    )
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        f"cassfs: no node of the cluster at {secure_node.contact_points} is in data center "
        f"'nowhere' (it has {NODE_DC}): fix --local-dc"
    )


def test_missing_files_one_line(tmp_path: Path, run_dir: None) -> None:
    """TLS and password files that do not exist: one line naming the file, before any
    connection (no node needed)."""
    missing = tmp_path / "nope.pem"
    for command in (["schema", "apply"], ["fsck"], ["up", str(tmp_path)]):
        result = run_cli(
            *command, "--contact-points", "127.0.0.1:1", "--ssl-ca", str(missing), check=False
        )
        assert result.returncode == 1
        assert one_line(result.stderr) == (
            f"cassfs: TLS CA file {missing} does not exist: give the PEM file of the CA of "
            "the nodes"
        )
    result = run_cli(
        "schema", "apply", "--contact-points", "127.0.0.1:1", "--username", "u",
        "--password-file", str(missing), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"password file {missing} does not exist" in one_line(result.stderr)
