"""Start, stop and query one local Apache Cassandra 5.0 node for development and tests.

The node is plain ``org.apache.cassandra.service.CassandraDaemon`` run by ``java`` on the classpath
that Maven resolves from ``cassfs/node/pom.xml`` (``cassandra-all`` and its dependencies), so no
Cassandra tarball or Docker engine is needed. Everything the node owns lives under one directory
(``DIR``, by default ``$CASSFS_NODE_DIR`` or ``./.cassandra``)::

    DIR/classpath.txt        Maven's classpath (re-resolved when pom.xml is newer or a jar is gone)
    DIR/cassandra.pid        pid of the running JVM
    DIR/conf/cassandra.yaml  generated from cassandra.template.yaml at every start
    DIR/conf/logback.xml     copied from this package at every start
    DIR/logs/system.log      Cassandra's log (INFO);  DIR/logs/stdout.log: the JVM's stdout/stderr
    DIR/data, DIR/commitlog, DIR/saved_caches, DIR/hints, DIR/cdc_raw   the node's data (kept)

Errors that a user can act on are raised as :class:`NodeError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import click
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
"""The node listens on loopback only (CQL, storage and JMX)."""
DEFAULT_PORT = 9042
DEFAULT_HEAP = "1G"
DEFAULT_START_TIMEOUT = 300.0
DEFAULT_STOP_TIMEOUT = 60.0
#: ``PF_KTHREAD`` of ``/proc/PID/stat``'s flags: a kernel thread (never a node).
_PF_KTHREAD = 0x00200000
#: ``PF_EXITING``: the thread has begun to exit (set first thing in the kernel's ``do_exit``).
_PF_EXITING = 0x00000004
#: What a pid file's process is (see :func:`_liveness`).
Liveness = Literal["running", "exiting", "gone"]
#: Seconds to wait for a JVM whose main thread has exited to end its other threads.
DEFAULT_EXIT_TIMEOUT = 30.0
DEFAULT_STORAGE_PORT = 7000
DEFAULT_JMX_PORT = 7199
CLUSTER_NAME = "cassfs-dev"
DIR_ENV = "CASSFS_NODE_DIR"
PORT_ENV = "CASSFS_NODE_PORT"
JAVA_ENV = "CASSFS_JAVA"
MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"
JAVA_MAJOR = 17
"""Cassandra 5.0 runs on Java 11 or 17; the flags shipped here are the Java 17 ones."""

_PACKAGE_DIR = Path(__file__).resolve().parent
POM = _PACKAGE_DIR / "pom.xml"
_TAIL_LINES = 40

# Added by cassandra-5.0's bin/cassandra.in.sh only when the JVM is a full JDK (javac present)
# on Java 17+ (CASSANDRA-19001); kept out of jvm17-server.options for that reason.
_JDK_ONLY_FLAGS = (
    "--add-exports",
    "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-exports",
    "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-opens",
    "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
)

# System properties that shorten the start of a lone seed node. Each is safe with one node only:
# there is no peer whose gossip could settle and no ring to wait for.
_FAST_START_PROPERTIES = (
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.ring_delay_ms=1000",
)

# The nodes of a local cluster keep Cassandra's wait for gossip to settle before CQL opens (a
# restarted node must know its peers are up before it coordinates QUORUM requests), shortened
# from 5 s + 3 polls of 1 s; ring_delay_ms bounds the gossip shadow round a joining node runs
# against the seed, which already answers by then (the seed is started first).
_CLUSTER_START_PROPERTIES = (
    "-Dcassandra.gossip_settle_min_wait_ms=2000",
    "-Dcassandra.gossip_settle_interval_ms=500",
    "-Dcassandra.gossip_settle_poll_success_required=3",
    "-Dcassandra.ring_delay_ms=5000",
)

# Cassandra 5.0's start-up checks warn unless the JVM stops on OutOfMemoryError ("which can cause
# data corruption"); exiting is the least surprising of the options it names for a dev node.
_OOM_FLAGS = ("-XX:+ExitOnOutOfMemoryError",)


#: The authentication block of a node without ``security`` (anyone may connect).
_OPEN_AUTH = """authenticator:
  class_name: org.apache.cassandra.auth.AllowAllAuthenticator
authorizer:
  class_name: org.apache.cassandra.auth.AllowAllAuthorizer"""
#: ... and of a node with ``security``: users and passwords (superuser cassandra/cassandra).
_PASSWORD_AUTH = """authenticator:
  class_name: org.apache.cassandra.auth.PasswordAuthenticator
authorizer:
  class_name: org.apache.cassandra.auth.CassandraAuthorizer
role_manager:
  class_name: org.apache.cassandra.auth.CassandraRoleManager"""
#: The superuser a PasswordAuthenticator node creates (and the readiness probe logs in as).
SUPERUSER = ("cassandra", "cassandra")


@dataclass(frozen=True)
class NodeSecurity:
    """A node with ``PasswordAuthenticator`` and TLS on CQL (``client_encryption_options``).

    ``keystore`` is a PKCS12 store (e.g. made by ``keytool``) holding the node's key and
    certificate chain, ``ca_file`` the PEM file of the CA that signed it (the readiness
    probe verifies the node with it).  With ``truststore`` (PKCS12 of the CAs of client
    certificates) clients must show a certificate; the probe then uses ``probe_cert`` and
    ``probe_key`` (PEM).  The superuser is :data:`SUPERUSER`, ready once the probe logs in.
    """

    keystore: Path
    keystore_password: str
    ca_file: Path
    truststore: Path | None = None
    truststore_password: str = ""
    probe_cert: Path | None = None
    probe_key: Path | None = None

    def yaml(self) -> str:
        """The ``client_encryption_options`` block of cassandra.yaml."""
        lines = [
            "client_encryption_options:",
            "  enabled: true",
            "  optional: false",
            f"  keystore: {json.dumps(str(self.keystore))}",
            f"  keystore_password: {json.dumps(self.keystore_password)}",
            "  store_type: PKCS12",
            f"  require_client_auth: {'true' if self.truststore else 'false'}",
        ]
        if self.truststore is not None:
            lines += [
                f"  truststore: {json.dumps(str(self.truststore))}",
                f"  truststore_password: {json.dumps(self.truststore_password)}",
            ]
        return "\n".join(lines)


class NodeError(Exception):
    """A node operation failed; ``str(err)`` is one line that says what failed."""


class NodeStartFailed(NodeError):
    """The JVM exited during start-up or CQL did not answer in time: the node's logs say why."""


class _NotReady(Exception):
    """CQL does not answer yet (retried by the start-up wait)."""


@dataclass(frozen=True)
class NodeDir:
    """The paths of one node directory; ``root`` is absolute."""

    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike[str] | None) -> NodeDir:
        """Return the node directory ``path``, or the default one (see :func:`default_dir`)."""
        return cls(Path(path).expanduser().resolve() if path is not None else default_dir())

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def yaml(self) -> Path:
        return self.conf / "cassandra.yaml"

    @property
    def logback(self) -> Path:
        return self.conf / "logback.xml"

    @property
    def pid_file(self) -> Path:
        return self.root / "cassandra.pid"

    @property
    def classpath_file(self) -> Path:
        return self.root / "classpath.txt"

    @property
    def system_log(self) -> Path:
        return self.logs / "system.log"

    @property
    def stdout_log(self) -> Path:
        return self.logs / "stdout.log"

    @property
    def data_dirs(self) -> dict[str, Path]:
        """Cassandra's storage directories, keyed by the template placeholder that names them."""
        return {
            "data_dir": self.root / "data",
            "commitlog_dir": self.root / "commitlog",
            "saved_caches_dir": self.root / "saved_caches",
            "hints_dir": self.root / "hints",
            "cdc_raw_dir": self.root / "cdc_raw",
        }


@dataclass(frozen=True)
class NodeStatus:
    """What :func:`status` found.

    ``pid`` is the JVM's pid or None when no node of this directory runs; ``release_version`` is
    what ``system.local`` answered over CQL, or None when CQL did not answer.
    """

    pid: int | None
    port: int
    release_version: str | None

    @property
    def running(self) -> bool:
        """True when the JVM is alive (CQL may not answer yet)."""
        return self.pid is not None

    @property
    def ready(self) -> bool:
        """True when the JVM is alive and CQL answers."""
        return self.pid is not None and self.release_version is not None


# --------------------------------------------------------------------------------- defaults


def default_dir() -> Path:
    """Return ``$CASSFS_NODE_DIR``, else ``./.cassandra``, as an absolute path."""
    return Path(os.environ.get(DIR_ENV) or ".cassandra").expanduser().resolve()


def default_port() -> int:
    """Return ``$CASSFS_NODE_PORT``, else 9042. Raises NodeError if the variable is not a port."""
    raw = os.environ.get(PORT_ENV)
    if not raw:
        return DEFAULT_PORT
    try:
        return _check_port(int(raw))
    except ValueError:
        raise NodeError(f"{PORT_ENV}={raw!r} is not a TCP port number") from None


def configured_port(node: NodeDir) -> int | None:
    """Return the ``native_transport_port`` in the node's generated cassandra.yaml, if any."""
    try:
        text = node.yaml.read_text()
    except FileNotFoundError:
        return None
    match = re.search(r"^native_transport_port:\s*(\d+)\s*$", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _check_port(port: int) -> int:
    if not 0 < port < 65536:
        raise ValueError(f"{port} is not a TCP port number")
    return port


# --------------------------------------------------------------------------------- processes


def read_pid(node: NodeDir) -> int | None:
    """Return the pid of this directory's running Cassandra JVM, or None.

    A pid file whose process is gone, is exiting (:func:`exiting_pid`), or is not a
    CassandraDaemon using this directory (the pid was reused) counts as "not running".
    """
    pid = _pid_file(node)
    return pid if pid is not None and _liveness(pid, node) == "running" else None


def exiting_pid(node: NodeDir) -> int | None:
    """The pid of this directory's JVM while it exits, else None.

    A JVM killed by a signal (SIGKILL, an OOM kill) ends its main thread first: the process
    is a zombie then, while its other threads may go on for a while holding the node's
    ports and files. It is not running (:func:`read_pid` is None) and not gone yet.
    """
    pid = _pid_file(node)
    return pid if pid is not None and _liveness(pid, node) == "exiting" else None


def wait_exited(node: NodeDir, timeout: float) -> None:
    """Wait up to ``timeout`` seconds until no JVM of this directory is exiting, so its
    ports can be bound again.  Returns at once when none is.  Raises NodeError on timeout.
    """
    pid = exiting_pid(node)
    if pid is None:
        return
    log.info("Cassandra (pid %d) is exiting; waiting for its last threads", pid)
    began = time.monotonic()
    if not wait_gone(pid, node, timeout):
        raise NodeError(
            f"Cassandra (pid {pid}) of {node.root} is still exiting after {timeout:g} s: "
            "its main thread is gone but other threads still run; wait, or kill -9 it"
        )
    log.info("Cassandra (pid %d) has exited, %.2f s later", pid, time.monotonic() - began)


def _pid_file(node: NodeDir) -> int | None:
    try:
        return int(node.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _liveness(pid: int, node: NodeDir) -> Liveness:
    """What ``pid`` is as this directory's JVM: "running"; "exiting" (its main thread is
    ending or a zombie, while threads may be left holding its ports); or "gone" (also when
    it is not a CassandraDaemon of this directory: the pid was reused).

    The node is told by its command line. A thread that is ending has released its memory
    and shows an empty one (a zombie main thread too), so then another thread is asked.
    When a SIGKILL ends every thread at once, none may show it: a main thread that is
    ending (``PF_EXITING``) or a zombie with threads left is then exiting, whoever it is
    (waiting for it, or killing it, does no harm). Its sockets are closed only when its
    last thread ends.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        threads = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return "gone"
    state, flags = fields[0], int(fields[6])
    if flags & _PF_KTHREAD:
        return "gone"
    zombie = state in ("Z", "X")  # the main thread is dead, not yet reaped
    dying = zombie or bool(flags & _PF_EXITING)
    wanted = (MAIN_CLASS.encode(), f"-Dcassandra.storagedir={node.root}".encode())
    for tid in [str(pid), *(tid for tid in threads if tid != str(pid))]:
        try:
            cmdline = Path(f"/proc/{pid}/task/{tid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # that thread has just ended: ask the next
        if not cmdline:
            continue  # that thread is ending (or is the zombie main thread)
        if not all(arg in cmdline.split(b"\0") for arg in wanted):
            return "gone"
        return "exiting" if dying else "running"
    if zombie:
        return "exiting" if len(threads) > 1 else "gone"
    return "exiting" if dying else "gone"


def wait_gone(pid: int, node: NodeDir, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds until ``pid`` is gone as the JVM of ``node`` (its
    last thread has exited: see :func:`_liveness`); True when it is, False on timeout."""
    deadline = time.monotonic() + timeout
    while _liveness(pid, node) != "gone":
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _is_our_node(pid: int, node: NodeDir) -> bool:
    """True while ``pid`` is this directory's running JVM (see :func:`_liveness`)."""
    return _liveness(pid, node) == "running"


def _describe_exit(proc: subprocess.Popen[bytes] | None) -> str:
    """Say how our child ``proc`` ended: " (exit status N)", " (killed by SIGX)" or ""."""
    if proc is None or proc.poll() is None:
        return ""
    if proc.returncode < 0:
        return f" (killed by {signal.Signals(-proc.returncode).name})"
    return f" (exit status {proc.returncode})"


def _port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def settle_crash(node: NodeDir, ports: Sequence[tuple[str, int]], timeout: float) -> None:
    """Before starting the JVM of ``node``: let a killed one's ports go.

    Waits up to ``timeout`` seconds in all, first for a JVM of ``node`` that is exiting
    (:func:`wait_exited`), then, when the node crashed (its pid file is left: a stop
    removes it), until every ``(host, port)`` of ``ports`` can be bound: a socket of the
    dead node can outlive its last thread for a moment.  Returns when a port is still
    taken then (the caller's port check names it); raises NodeError when the JVM is
    still exiting.  Used by the single node's :func:`start` and the cluster's start.
    """
    deadline = time.monotonic() + timeout
    wait_exited(node, timeout)
    if not node.pid_file.exists():
        return
    for host, port in ports:
        while _port_in_use(port, host) and time.monotonic() < deadline:
            time.sleep(0.1)


def _free_port(preferred: int, avoid: set[int]) -> int:
    """Return ``preferred`` if it can be bound on 127.0.0.1, else a port the kernel picks."""
    if preferred not in avoid and not _port_in_use(preferred):
        return preferred
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in avoid:
            log.info("port %d is taken; using %d instead", preferred, port)
            return port


@contextlib.contextmanager
def _locked(node: NodeDir) -> Iterator[None]:
    """Hold an exclusive lock on the node directory (serialises concurrent start/stop)."""
    node.root.mkdir(parents=True, exist_ok=True)
    with open(node.root / "node.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------- java & maven


def find_java() -> Path:
    """Return a Java 17 ``java`` executable.

    Tries ``$CASSFS_JAVA``, ``$JAVA_HOME/bin/java``, ``java`` on PATH, then ``/usr/lib/jvm/*``.
    Raises NodeError if none of them is Java 17.
    """
    candidates: list[Path] = []
    if os.environ.get(JAVA_ENV):
        candidates.append(Path(os.environ[JAVA_ENV]))
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    candidates.extend(sorted(Path("/usr/lib/jvm").glob("*/bin/java")))
    seen: list[str] = []
    for candidate in candidates:
        if not os.access(candidate, os.X_OK):
            continue
        major = java_major(candidate)
        seen.append(f"{candidate} is Java {major}")
        if major == JAVA_MAJOR:
            return candidate.resolve()
    found = "; ".join(seen) or "no java found"
    raise NodeError(
        f"Cassandra 5.0 needs Java {JAVA_MAJOR} ({found}); "
        f"install openjdk-{JAVA_MAJOR}-jre-headless or set {JAVA_ENV}/JAVA_HOME"
    )


def java_major(java: Path) -> int | None:
    """Return the major version of the JVM ``java`` (e.g. 17), or None if it cannot be told."""
    release = java.resolve().parent.parent / "release"
    with contextlib.suppress(OSError):
        match = re.search(r'^JAVA_VERSION="(\d+)', release.read_text(), re.MULTILINE)
        if match:
            return int(match.group(1))
    try:
        out = subprocess.run(
            [str(java), "-XshowSettings:properties", "-version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"java\.specification\.version = (\d+)", out)
    return int(match.group(1)) if match else None


def resolve_classpath(node: NodeDir, *, pom: Path = POM) -> list[str]:
    """Return Cassandra's classpath (jar paths), resolving it with Maven when needed.

    The classpath is cached in ``DIR/classpath.txt`` and resolved again when ``pom`` is newer than
    the cache or a jar in it is missing. Resolving downloads the jars into ``~/.m2`` (about
    100 jars, 60 MB) the first time. Raises NodeError if Maven is missing or fails.
    """
    cache = node.classpath_file
    if cache.exists() and cache.stat().st_mtime >= pom.stat().st_mtime:
        jars = [j for j in cache.read_text().strip().split(os.pathsep) if j]
        if jars and all(Path(j).is_file() for j in jars):
            return jars
        log.info("cached classpath is stale (a jar is missing); resolving it again")
    mvn = shutil.which("mvn")
    if mvn is None:
        raise NodeError("Maven (mvn) is not installed; it is needed to fetch Cassandra's jars")
    node.root.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    cmd = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:build-classpath",
        f"-Dmdep.outputFile={tmp}",
    ]
    log.info("resolving Cassandra's classpath with Maven: %s", " ".join(cmd))
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not tmp.exists():
        sys.stderr.write(_tail_text(proc.stdout + proc.stderr))
        raise NodeError(f"Maven could not resolve {pom} (exit status {proc.returncode})")
    tmp.replace(cache)
    log.info("classpath resolved in %.1f s", time.monotonic() - started)
    return [j for j in cache.read_text().strip().split(os.pathsep) if j]


def _read_options(name: str) -> list[str]:
    """Return the flags of a Cassandra-style options file shipped in this package."""
    flags: list[str] = []
    for raw in (_PACKAGE_DIR / name).read_text().splitlines():
        line = raw.strip()
        if line.startswith("-"):
            flags.extend(line.split())
    return flags


# --------------------------------------------------------------------------------- configuration


def write_config(
    node: NodeDir,
    *,
    port: int,
    storage_port: int,
    security: NodeSecurity | None = None,
    address: str = HOST,
    seeds: str | None = None,
    initial_token: int = 0,
    auto_bootstrap: bool = True,
    hinted_handoff: bool = False,
    phi_convict_threshold: int = 8,
) -> None:
    """Write ``DIR/conf/cassandra.yaml`` and ``DIR/conf/logback.xml`` and create the data dirs.

    ``security`` turns on passwords and TLS (see :class:`NodeSecurity`).  The other
    defaults make the lone seed node on 127.0.0.1. A node of a local cluster passes its
    ``address`` (listen and CQL), the ``seeds`` (``HOST:STORAGE_PORT,...``), its token, and
    ``auto_bootstrap=False``, ``hinted_handoff=True`` and a lower
    ``phi_convict_threshold`` (Cassandra's default: 8).
    """
    for path in (node.conf, node.logs, node.conf / "triggers", *node.data_dirs.values()):
        path.mkdir(parents=True, exist_ok=True)
    template = string.Template((_PACKAGE_DIR / "cassandra.template.yaml").read_text())
    # JSON strings are valid YAML double-quoted scalars: safe for any path.
    values = {key: json.dumps(str(path)) for key, path in node.data_dirs.items()}
    yaml = template.substitute(
        values,
        cluster_name=json.dumps(CLUSTER_NAME),
        native_port=port,
        storage_port=storage_port,
        auth=_OPEN_AUTH if security is None else _PASSWORD_AUTH,
        client_encryption="" if security is None else security.yaml(),
        address=address,
        seeds=seeds if seeds is not None else f"{address}:{storage_port}",
        initial_token=initial_token,
        auto_bootstrap=str(auto_bootstrap).lower(),
        hinted_handoff=str(hinted_handoff).lower(),
        phi_convict_threshold=phi_convict_threshold,
    )
    _write_atomic(node.yaml, yaml)
    _write_atomic(node.logback, (_PACKAGE_DIR / "logback.xml").read_text())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def java_command(
    node: NodeDir,
    *,
    java: Path,
    classpath: list[str],
    heap: str,
    jmx_port: int,
    properties: Sequence[str] = _FAST_START_PROPERTIES,
) -> list[str]:
    """Return the ``java`` command line that runs the node in the foreground.

    ``properties`` are the start-up ``-D`` flags: the lone node's by default, a cluster node
    passes :data:`_CLUSTER_START_PROPERTIES`.
    """
    jamm = next((j for j in classpath if re.search(r"/jamm-[^/]*\.jar$", j)), None)
    if jamm is None:
        raise NodeError("jamm (Cassandra's memory-meter agent) is missing from the classpath")
    cmd = [str(java), f"-Xms{heap}", f"-Xmx{heap}"]
    cmd += _read_options("jvm-server.options")
    cmd += _read_options("jvm17-server.options")
    if (java.parent / "javac").exists():
        cmd += _JDK_ONLY_FLAGS
    cmd += _OOM_FLAGS
    cmd += [
        f"-XX:HeapDumpPath={node.logs}",
        f"-javaagent:{jamm}",
        f"-Dcassandra.config={node.yaml.as_uri()}",
        f"-Dcassandra.storagedir={node.root}",
        f"-Dcassandra.logdir={node.logs}",
        f"-Dcassandra.triggers_dir={node.conf / 'triggers'}",
        f"-Dlogback.configurationFile={node.logback.as_uri()}",
        f"-Dcassandra.jmx.local.port={jmx_port}",
        "-Dcassandra-foreground=yes",
        # What cassandra-env.sh passes when it preloads no jemalloc: logged at INFO, not as a WARN.
        "-Dcassandra.libjemalloc=-",
        *properties,
        "-cp",
        os.pathsep.join(classpath),
        MAIN_CLASS,
    ]
    return cmd


def polling(timeout: float) -> Retrying:
    """Tries every 0.5 s for ``timeout`` seconds while the attempt raises ``_NotReady``
    (then that last ``_NotReady`` is raised): the wait for a node to answer."""
    return Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(0.5),
        retry=retry_if_exception_type(_NotReady),
        reraise=True,
    )


def spawn_jvm(node: NodeDir, cmd: list[str]) -> subprocess.Popen[bytes]:
    """Start the node's JVM ``cmd`` in its own session, its output in ``DIR/logs/stdout.log``
    (this start only; system.log keeps the history), and record its pid."""
    with open(node.stdout_log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=node.root,
            start_new_session=True,
        )
    _write_atomic(node.pid_file, f"{proc.pid}\n")
    return proc


# --------------------------------------------------------------------------------- CQL probe


def query_release_version(
    port: int, *, host: str = HOST, timeout: float = 5.0, security: NodeSecurity | None = None
) -> str:
    """Run ``SELECT release_version FROM system.local`` on ``host:port`` and return the answer.

    ``timeout`` (seconds) bounds the connection and the query; with ``security`` the probe
    logs in as :data:`SUPERUSER` over TLS. Raises ``_NotReady`` when the node does not answer.
    """
    # Imported here: the driver takes a while to import and only start/status need it.
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    # A plain TCP probe first: the driver logs an ERROR with a traceback for every refused connect.
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise _NotReady(f"{host}:{port}: {exc.strerror or exc}") from exc

    profile = ExecutionProfile(
        load_balancing_policy=WhiteListRoundRobinPolicy([host]), request_timeout=timeout
    )
    cluster = Cluster(
        [host],
        port=port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=timeout,
        control_connection_timeout=timeout,
        **({} if security is None else _probe_security(security)),
    )
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local").one()
        return str(row.release_version)
    except Exception as exc:  # the driver raises many types (NoHostAvailable, OperationTimedOut, …)
        raise _NotReady(f"{type(exc).__name__}: {exc}") from exc
    finally:
        cluster.shutdown()


def _probe_security(security: NodeSecurity) -> dict[str, object]:
    """The driver's ``Cluster`` arguments of a probe of a secured node."""
    import ssl

    from cassandra.auth import PlainTextAuthProvider

    context = ssl.create_default_context(cafile=str(security.ca_file))
    if security.probe_cert is not None:
        context.load_cert_chain(str(security.probe_cert), str(security.probe_key))
    return {"auth_provider": PlainTextAuthProvider(*SUPERUSER), "ssl_context": context}


def wait_until_ready(
    node: NodeDir,
    pid: int,
    port: int,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    security: NodeSecurity | None = None,
    *,
    host: str = HOST,
) -> str:
    """Poll CQL on ``host``:``port`` every 0.5 s until it answers; return the release version.

    ``timeout`` is in seconds; ``proc`` is the JVM's Popen when this process started it.
    Raises NodeStartFailed if the JVM ``pid`` exits first or time runs out.
    """
    retrying = polling(timeout)
    try:
        for attempt in retrying:
            with attempt:
                dead = proc.poll() is not None if proc is not None else not _is_our_node(pid, node)
                if dead:
                    raise NodeStartFailed(
                        f"Cassandra (pid {pid}) exited during start-up{_describe_exit(proc)}; "
                        f"see {node.system_log} and {node.stdout_log}"
                    )
                return query_release_version(port, host=host, security=security)
    except _NotReady as exc:
        raise NodeStartFailed(
            f"Cassandra (pid {pid}) did not answer CQL on {host}:{port} within {timeout:g} s "
            f"(last error: {exc}); see {node.system_log}"
        ) from exc
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------- operations


def start(
    node_dir: str | os.PathLike[str] | None = None,
    *,
    port: int | None = None,
    heap: str = DEFAULT_HEAP,
    timeout: float = DEFAULT_START_TIMEOUT,
    security: NodeSecurity | None = None,
) -> NodeStatus:
    """Start the node of ``node_dir`` unless it already runs, and wait until CQL answers.

    ``port`` is the CQL port (default: :func:`default_port`), ``heap`` the JVM heap as Java writes
    it (``512M``, ``1G``), ``timeout`` the seconds to wait for CQL, ``security`` passwords and
    TLS (:class:`NodeSecurity`; the wait then lasts until the superuser can log in). Returns
    the node's status.
    Raises NodeError if Java or Maven is missing or the CQL port is taken by another process, and
    NodeStartFailed if the node exits or stays silent past ``timeout`` (a JVM started by this call
    is then stopped).
    """
    node = NodeDir.at(node_dir)
    port = _check_port(port if port is not None else default_port())
    if not re.fullmatch(r"\d+[mMgG]", heap):
        raise NodeError(f"heap size {heap!r} is not like 512M or 1G")
    with _locked(node):
        pid = read_pid(node)
        if pid is not None:
            running_port = configured_port(node) or port
            if running_port != port:
                raise NodeError(
                    f"the node in {node.root} already runs (pid {pid}) with CQL port "
                    f"{running_port}, not {port}; stop it first"
                )
            log.info("node already running (pid %d); waiting for CQL on port %d", pid, port)
            version = wait_until_ready(node, pid, port, timeout, security=security)
            return NodeStatus(pid, port, version)
        settle_crash(node, [(HOST, port)], DEFAULT_EXIT_TIMEOUT)
        if _port_in_use(port):
            raise NodeError(
                f"CQL port {HOST}:{port} is already in use by another process "
                f"(not a node of {node.root}); pick another with --port or {PORT_ENV}"
            )
        java = find_java()
        classpath = resolve_classpath(node)
        storage_port = _free_port(DEFAULT_STORAGE_PORT, avoid={port})
        jmx_port = _free_port(DEFAULT_JMX_PORT, avoid={port, storage_port})
        write_config(node, port=port, storage_port=storage_port, security=security)
        cmd = java_command(node, java=java, classpath=classpath, heap=heap, jmx_port=jmx_port)
        if security is not None:  # the superuser at once, not after the default 10 s
            cmd.insert(-3, "-Dcassandra.superuser_setup_delay_ms=0")
        log.info(
            "starting Cassandra: java %s, heap %s, CQL %s:%d, storage port %d, JMX port %d",
            java,
            heap,
            HOST,
            port,
            storage_port,
            jmx_port,
        )
        log.debug("command: %s", cmd)
        proc = spawn_jvm(node, cmd)
        try:
            version = wait_until_ready(node, proc.pid, port, timeout, proc, security)
        except NodeStartFailed:
            if proc.poll() is None:
                log.warning("stopping the unresponsive node (pid %d)", proc.pid)
                _terminate(proc.pid, node, DEFAULT_STOP_TIMEOUT)
            node.pid_file.unlink(missing_ok=True)
            raise
        return NodeStatus(proc.pid, port, version)


def stop(
    node_dir: str | os.PathLike[str] | None = None, *, timeout: float = DEFAULT_STOP_TIMEOUT
) -> int | None:
    """Stop the node of ``node_dir``: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Returns once the JVM's last thread has exited (its ports are free): the pid that was
    stopped, or None if no node was running (not an error; a node still exiting after a
    crash is killed and waited for).  Raises NodeError if the JVM survives SIGKILL.
    """
    node = NodeDir.at(node_dir)
    with _locked(node):
        pid = read_pid(node)
        if pid is None:
            dying = exiting_pid(node)
            if dying is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(dying, signal.SIGKILL)
                wait_exited(node, DEFAULT_EXIT_TIMEOUT)
            node.pid_file.unlink(missing_ok=True)
            return None
        _terminate(pid, node, timeout)
        node.pid_file.unlink(missing_ok=True)
        return pid


def _terminate(pid: int, node: NodeDir, timeout: float) -> None:
    """SIGTERM ``pid``, wait up to ``timeout`` seconds for its last thread to exit, then
    SIGKILL and wait 10 s more."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        log.info("sending %s to Cassandra (pid %d)", sig.name, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, node, wait):
            return
        if sig is signal.SIGTERM:
            log.warning("Cassandra (pid %d) ignored SIGTERM for %g s; killing it", pid, timeout)
    raise NodeError(f"Cassandra (pid {pid}) is still alive after SIGKILL")


def status(
    node_dir: str | os.PathLike[str] | None = None, *, port: int | None = None
) -> NodeStatus:
    """Return whether the node of ``node_dir`` runs and whether CQL answers on ``port``.

    ``port`` defaults to the port in the node's cassandra.yaml, else :func:`default_port`.
    """
    node = NodeDir.at(node_dir)
    if port is None:
        port = configured_port(node) or default_port()
    pid = read_pid(node)
    if pid is None:
        return NodeStatus(None, port, None)
    try:
        version: str | None = query_release_version(port)
    except _NotReady:
        version = None
    return NodeStatus(pid, port, version)


# --------------------------------------------------------------------------------- CLI


def _tail_text(text: str, lines: int = _TAIL_LINES, width: int = 400) -> str:
    """Return the last ``lines`` lines of ``text``, each cut to ``width`` characters."""
    kept = text.splitlines()[-lines:]
    return "".join((line if len(line) <= width else line[:width] + " […]") + "\n" for line in kept)


def log_tail(node: NodeDir, lines: int = _TAIL_LINES) -> str:
    """Return the last ``lines`` lines of system.log and stdout.log, each under a header."""
    parts: list[str] = []
    for path in (node.system_log, node.stdout_log):
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        parts.append(f"----- last {lines} lines of {path} -----\n{_tail_text(text, lines)}")
    return "".join(parts)


_dir_option = click.option(
    "--dir",
    "node_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=DIR_ENV,
    default=".cassandra",
    show_default=f"${DIR_ENV} or .cassandra",
    help="Node directory: configuration, data, logs and pid file.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log each step (DEBUG).")
def cli(verbose: bool) -> None:
    """Manage the local Apache Cassandra 5.0 development node."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The driver logs every refused connection while the node boots; only real errors matter here.
    logging.getLogger("cassandra").setLevel(logging.ERROR)


@cli.command("start")
@_dir_option
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    envvar=PORT_ENV,
    default=None,
    show_default=f"${PORT_ENV} or {DEFAULT_PORT}; with --nodes N>1: 9350",
    help="CQL (native transport) port.",
)
@click.option(
    "--heap",
    default=None,
    show_default=f"{DEFAULT_HEAP}; with --nodes N>1: 512M per node",
    help="JVM heap, e.g. 512M or 1G.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=DEFAULT_START_TIMEOUT,
    show_default=True,
    help="Seconds to wait until CQL answers.",
)
@click.option(
    "--nodes",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    help="Run a local cluster of N nodes on 127.0.0.1 … 127.0.0.N, in DIR/node1 … DIR/nodeN.",
)
@click.option(
    "--storage-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="With --nodes N>1: the internode port of every node  [default: 7350]",
)
def start_command(
    node_dir: Path,
    port: int | None,
    heap: str | None,
    timeout: float,
    nodes: int,
    storage_port: int | None,
) -> None:
    """Start the node, or with --nodes the local cluster (no-op for what already runs), and
    wait until CQL answers."""
    if nodes > 1:
        from cassfs.node.cluster import start_cluster_command

        source = click.get_current_context().get_parameter_source("port")
        given = port if source is click.core.ParameterSource.COMMANDLINE else None
        start_cluster_command(node_dir, nodes, given, storage_port, heap, timeout)
        return
    if storage_port is not None:
        raise click.UsageError("--storage-port applies to a cluster (--nodes 2 or more)")
    heap = heap or DEFAULT_HEAP
    node = NodeDir.at(node_dir)
    was_running = read_pid(node)
    started = time.monotonic()
    try:
        st = start(node.root, port=port, heap=heap, timeout=timeout)
    except NodeStartFailed as exc:
        sys.stderr.write(log_tail(node))
        raise click.ClickException(str(exc)) from exc
    except NodeError as exc:
        raise click.ClickException(str(exc)) from exc
    elapsed = time.monotonic() - started
    what = "already running" if was_running == st.pid else f"started in {elapsed:.1f} s"
    click.echo(
        f"Cassandra {st.release_version} {what}: pid {st.pid}, CQL on {HOST}:{st.port}, "
        f"dir {node.root}"
    )


@cli.command("stop")
@_dir_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_STOP_TIMEOUT,
    show_default=True,
    help="Seconds to wait after SIGTERM before SIGKILL.",
)
def stop_command(node_dir: Path, timeout: float) -> None:
    """Stop the node, or every node of the local cluster in DIR (no-op if not running)."""
    node = NodeDir.at(node_dir)
    if (node.root / "cluster.json").exists():
        from cassfs.node.cluster import stop_cluster_command

        stop_cluster_command(node.root, timeout)
        return
    try:
        pid = stop(node.root, timeout=timeout)
    except NodeError as exc:
        raise click.ClickException(str(exc)) from exc
    if pid is None:
        click.echo(f"Cassandra not running (dir {node.root})")
    else:
        click.echo(f"Cassandra stopped (pid {pid})")


@cli.command("status")
@_dir_option
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    envvar=PORT_ENV,
    default=None,
    help=f"CQL port  [default: ${PORT_ENV}, else the node's cassandra.yaml, else {DEFAULT_PORT}]",
)
def status_command(node_dir: Path, port: int | None) -> None:
    """Print running/stopped; exit 0 only if the node (every node of a cluster) answers CQL."""
    node = NodeDir.at(node_dir)
    if (node.root / "cluster.json").exists():
        from cassfs.node.cluster import status_cluster_command

        status_cluster_command(node.root)
        return
    st = status(node.root, port=port)
    if st.ready:
        version = st.release_version
        click.echo(f"running: Cassandra {version}, pid {st.pid}, CQL on {HOST}:{st.port}")
        return
    if st.running:
        click.echo(f"running but CQL does not answer on {HOST}:{st.port} (pid {st.pid}; starting?)")
    else:
        click.echo(f"stopped (dir {node.root})")
    sys.exit(1)
