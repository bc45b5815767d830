"""Fixtures: the real Cassandra node, cache daemons and FUSE mounts, each torn down after use.

Nothing here fakes Cassandra or FUSE.  When the node or /dev/fuse is missing,
the tests that need them FAIL with a message saying how to provide them; they
never skip.  Each test gets its own tenant (owner, environment), so tests share
the keyspace without seeing each other's files.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cached.api import daemon_command
from cached.client import call_once, socket_path
from cached.errors import DaemonUnavailable
from cached.store import ContactPoints, make_cluster
from tests.benchkit import sigterm_as_interrupt

CONTACT_POINTS = os.environ.get("CASSFS_CONTACT_POINTS", "127.0.0.1:9042")
KEYSPACE = os.environ.get("CASSFS_TEST_KEYSPACE", "cassfs_test")


@pytest.fixture(scope="session")
def cassandra() -> str:
    """Contact points of a live node with the schema applied in the test keyspace."""
    from cassandra.cluster import NoHostAvailable

    from cassfs import schema

    points = ContactPoints.parse(CONTACT_POINTS)
    cluster = make_cluster(points)
    try:
        cluster.connect().execute("SELECT release_version FROM system.local")
    except NoHostAvailable as exc:
        pytest.fail(
            f"Cassandra is not answering at {points} ({exc}): start the local node "
            "with `just node-start` (or set CASSFS_CONTACT_POINTS)",
            pytrace=False,
        )
    finally:
        cluster.shutdown()
    schema.apply(points, KEYSPACE)
    return str(points)


def local_node_pid() -> int:
    """The pid of the local node started by `just node-start` (for pausing it)."""
    pid_file = Path(os.environ.get("CASSFS_NODE_DIR", ".cassandra")) / "cassandra.pid"
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pytest.fail(
            f"no local node pid in {pid_file}: this test pauses the local node "
            "started by `just node-start`",
            pytrace=False,
        )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str) -> Samples:
    """Every sample of ``http://address/metrics``: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name{labels}``, 0 when absent (a label value not seen yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Poll ``condition`` every 50 ms until it is true (True) or ``timeout`` seconds pass
    (then its last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def errno_of(fn: Callable[[], object]) -> int:
    """The errno ``fn()`` fails with, 0 when it succeeds."""
    try:
        fn()
    except OSError as exc:
        return exc.errno or 0
    return 0


@pytest.fixture
def tenant() -> tuple[int, str]:
    """A tenant no other test uses: (random owner, unique environment)."""
    return secrets.randbelow(2**31 - 2) + 2, f"t{secrets.token_hex(6)}"


@dataclass
class Daemon:
    """A cache daemon process serving ``cache_dir``."""

    cache_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def call(self, method: str, **params: Any) -> Any:
        """Blocking admin call (stats, purge, status)."""
        return call_once(self.cache_dir, method, **params)

    def stats(self) -> dict[str, int]:
        """The daemon's counters."""
        return self.call("stats")  # type: ignore[no-any-return]


def _wait_for_daemon(daemon: Daemon, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            pytest.fail(f"the daemon exited: {daemon.log.read_text()[-2000:]}", pytrace=False)
        if socket_path(daemon.cache_dir).exists():
            try:
                daemon.call("status", timeout=2)
                return
            except DaemonUnavailable:
                pass
        time.sleep(0.05)
    pytest.fail(f"the daemon did not answer: {daemon.log.read_text()[-2000:]}", pytrace=False)


def _stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def start_daemon(cassandra: str, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: start a daemon on a new cache dir (``cache_ttl`` seconds, default 60).

    ``keyspace`` (keyword) serves another keyspace than the test keyspace;
    ``purge_delay`` (keyword, seconds) defaults to 0: deletions happen at once.
    """
    started: list[Daemon] = []

    def start(
        name: str = "cache",
        cache_ttl: float = 60.0,
        cache_size: str = "2G",
        *extra: str,
        keyspace: str = KEYSPACE,
        purge_delay: float = 0.0,
    ) -> Daemon:
        cache_dir = tmp_path / name
        cache_dir.mkdir(parents=True, exist_ok=True)
        log = tmp_path / f"{name}-daemon.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                daemon_command(
                    cache_dir,
                    {
                        "contact_points": cassandra,
                        "keyspace": keyspace,
                        "cache_ttl": cache_ttl,
                        "cache_size": cache_size,
                        "purge_delay": purge_delay,
                    },
                )
                + list(extra),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        daemon = Daemon(cache_dir, process, log)
        started.append(daemon)
        _wait_for_daemon(daemon)
        return daemon

    yield start
    for daemon in started:
        _stop(daemon.process)


# -- FUSE -----------------------------------------------------------------------------------


def _fusermount() -> str:
    return shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"


@pytest.fixture(scope="session")
def fuse_available() -> None:
    """Fail (never skip) when FUSE mounts cannot work here."""
    if not os.path.exists("/dev/fuse"):
        pytest.fail(
            "/dev/fuse is missing: FUSE tests need it (apt-get install fuse3; in a "
            "container --device /dev/fuse --cap-add SYS_ADMIN)",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("FUSE tests mount with allow_other and need root", pytrace=False)
    if shutil.which("fusermount3") is None:
        pytest.fail("fusermount3 is missing: apt-get install fuse3", pytrace=False)


@dataclass
class Mount:
    """A cassfs mount served by ``cassfs up`` in the background."""

    path: Path
    cache_dir: Path
    owner: int
    environment: str
    extra: list[str] = field(default_factory=list)

    def stats(self) -> dict[str, int]:
        """The counters of this mount's daemon."""
        return call_once(self.cache_dir, "stats")  # type: ignore[no-any-return]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``cassfs ARGS``."""
        return run_cli(*args, check=check)

    def operations(self, name: str) -> list[str]:
        """The ``NAME ...`` lines of this mount's log so far: one per kernel request of
        that operation, logged as it arrives (the mount must run with ``--debug``)."""
        logs = sorted((self.cache_dir / "logs").glob(f"mount-{self.path.name}-*.log"))
        assert logs, f"no log of {self.path} in {self.cache_dir / 'logs'}"
        marker = f" cassfs.fs DEBUG {name} "
        lines = logs[-1].read_text().splitlines()
        return [line.split(" DEBUG ", 1)[1] for line in lines if marker in line]


def run_cli(
    *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run the ``cassfs`` command; fail the test on a non-zero exit when ``check``."""
    result = subprocess.run(
        [sys.executable, "-m", "cassfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"cassfs {' '.join(args)} exited {result.returncode}:\n{result.stderr}", pytrace=False
        )
    return result


@pytest.fixture
def mount_cassfs(
    cassandra: str, fuse_available: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Mount]]:
    """Factory: ``cassfs up`` a new mountpoint; every mount is taken down after the test."""
    monkeypatch.setenv("CASSFS_RUN_DIR", str(tmp_path / "run"))
    mounts: list[Mount] = []

    def mount(
        name: str, owner: int, environment: str, cache: str | None = None, *extra: str
    ) -> Mount:
        path = tmp_path / name
        path.mkdir(exist_ok=True)
        cache_dir = tmp_path / (cache or f"{name}-cache")
        m = Mount(path, cache_dir, owner, environment, list(extra))
        mounts.append(m)
        run_cli(
            "up",
            str(path),
            "--cache-dir",
            str(cache_dir),
            "--contact-points",
            cassandra,
            "--keyspace",
            KEYSPACE,
            "--owner",
            str(owner),
            "--environment",
            environment,
            *extra,
        )
        assert os.path.ismount(path)
        return m

    yield mount
    for m in reversed(mounts):
        unmount(m)


def unmount(m: Mount) -> None:
    """Take a mount down; lazily if ``cassfs down`` fails, and stop its daemon."""
    if os.path.ismount(m.path):
        result = run_cli("down", str(m.path), check=False)
        if result.returncode != 0 and os.path.ismount(m.path):
            subprocess.run([_fusermount(), "-u", "-z", str(m.path)], check=False)
    if socket_path(m.cache_dir).exists():
        try:
            status = call_once(m.cache_dir, "status", timeout=2)
            if status["sessions"] == 0:
                call_once(m.cache_dir, "shutdown", timeout=2)
        except DaemonUnavailable:
            pass


# -- interruption ---------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Iterator[object]:
    """A SIGTERM or SIGHUP (a ``kill``, a closed terminal) stops the run as Ctrl-C does,
    so the fixtures still tear down: mounts unmounted, daemons and nodes stopped.  Left to
    Python's default, the process dies at once and leaves them behind."""
    with sigterm_as_interrupt():
        return (yield)


# -- reports --------------------------------------------------------------------------------

#: Of each log a failed test's daemons and mounts wrote under its tmp_path: the last lines.
FAILURE_LOG_LINES = 40
#: At most this many logs are added to one report (the most recently written first).
FAILURE_LOGS = 8


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Add the tails of the daemon and mount logs under a failed test's ``tmp_path`` to its
    report, so a failure seen only in CI (where nothing else is kept) says what the
    daemons and mounts saw."""
    outcome = yield
    report = outcome.get_result()
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if not report.failed or not isinstance(tmp_path, Path):
        return
    logs = sorted(_logs_under(tmp_path), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in logs[:FAILURE_LOGS]:
        try:
            lines = path.read_text(errors="replace").splitlines()[-FAILURE_LOG_LINES:]
        except OSError:
            continue
        report.sections.append(
            (f"{report.when}: last lines of {path.relative_to(tmp_path)}", "\n".join(lines))
        )


def _logs_under(tmp_path: Path) -> list[Path]:
    """Daemon and mount logs in ``tmp_path`` and its cache dirs, never looking inside a
    mountpoint (a stuck mount would hang the report)."""
    with open("/proc/self/mounts") as mounts:
        mounted = {line.split()[1].replace("\\040", " ") for line in mounts if " " in line}
    found: list[Path] = []
    for child in tmp_path.iterdir():
        if str(child) in mounted:
            continue
        if child.is_file() and ".log" in child.name:
            found.append(child)
        elif child.is_dir():
            for pattern in ("daemon.log*", "daemon.out*", "logs/*.log"):
                found.extend(p for p in child.glob(pattern) if p.is_file())
    return found
