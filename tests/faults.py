"""Fault scenarios: a real cassfs mount under writers and readers while something breaks.

``python -m tests.faults [--only NAME] [--seconds N] [--keep]`` (``just faults``) runs each
scenario on a fresh tenant of its own keyspace (``--keyspace``, default ``cassfs_faults``,
schema applied by the script) with a real FUSE mount made by ``cassfs up MOUNT --cache-dir
DIR --cache-ttl 2`` and a daemon query timeout of 2 s.  Writer threads rewrite files of
their own whole (``open(O_TRUNC)``, new random content, ``close``); a write counts as
*acknowledged* only once ``close()`` returned.  Reader threads re-read files they read
before the fault (so the mount has them cached) and compare every byte.

Scenarios (``--seconds`` N, default 20 s, sets the outages and the kill periods):

- ``node-paused``: SIGSTOP of the Cassandra node for N s (longer than the TTL), SIGCONT.
- ``node-stopped``: ``python -m cassfs.node stop``, N s down, ``python -m cassfs.node start``.
- ``node-restarted-long``: the same with ``--long-seconds`` (default 60 s) down, to show that
  the time to recover does not grow with the outage.
- ``daemon-killed``: ``kill -9`` of the mount's cache daemon ``--kills`` times (default 4)
  over about N s; the front restarts it at its next request.
- ``front-killed``: ``kill -9`` of the FUSE front (the ``cassfs up --foreground`` process)
  ``--front-kills`` times (default 2), 2 s dead each time, then ``cassfs up`` on the same
  mountpoint again (a lazy ``fusermount3 -u -z`` first only if ``cassfs up`` cannot clear
  the dead mount itself; the notes say when).
- ``cache-smaller-than-file``: ``--cache-size 1M`` (the smallest cassfs takes) and a 3 MiB
  file, rewritten and read back byte for byte through a second mount on the same cache dir
  (so the read goes through the daemon, not the kernel's page cache of the writing mount)
  while the readers read other files there, for N s.

The node is the one of ``$CASSFS_NODE_DIR`` / ``$CASSFS_NODE_PORT`` (the Justfile exports
them); the mounts use ``$CASSFS_CONTACT_POINTS``, which must name that port.  Pausing or
stopping it disturbs everything else using it: point these variables at a node of its own.

After the load stops, the scenario's mount is taken down and a FRESH mount with its own
empty cache dir on the same tenant reads every file: each file must hold its last
acknowledged content byte for byte, or the content of a write attempted after it whose
``close()`` failed (its outcome is unknown: it may have landed, or its truncation may
have); anything else is an *acknowledged write lost*.

The table, one row per scenario:

- *fault*: what was injected, and how long the node (or front, or daemon) was away, in s;
- *injected*: how many faults;
- *operations*: whole-file writes and reads the load threads ran;
- *failed (errno)*: failed operations by kind and errno (``mismatch``: wrong bytes read;
  ``stale``: the big file read back as its version before the one just acknowledged).
  Front-killed: ENOTCONN/ECONNABORTED while the front is dead, and ENOENT while the dead
  mount is cleared and the new one not yet made (the path reaches the bare mountpoint
  directory, where ``wK/`` and ``r/`` do not exist);
- *acked*: acknowledged writes; *lost*: of those, not read back from the fresh mount (0);
- *cached reads failed*: reader failures (stale-if-error must serve them: 0 expected),
  except while the front itself was dead;
- *recover s*: seconds from the node answering CQL again (daemon: the new daemon answering
  ``status``; front: ``cassfs up`` returned) to the first acknowledged write; the worst of
  several faults.  A write counts for a node outage when it completed after SIGCONT/start,
  for a daemon or front kill when it began after the kill.

Exit status 1 if any acknowledged write was lost, else 2 if a scenario could not run (the
harness failed: the row says why), else 0.  Mounts and daemons are taken down at the end
and a paused or stopped node is resumed or started again, also on failure or Ctrl-C; the
work dir (mounts, cache dirs, logs) is removed unless ``--keep`` or something was lost.
The tenants' rows stay in Cassandra.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cached.client import call_once, socket_path
from cached.errors import CassfsError
from cassfs.mounts import dead_mount_error
from cassfs.node import launcher
from tests.benchkit import sigterm_as_interrupt

log = logging.getLogger("faults")

SCENARIOS = (
    "node-paused",
    "node-stopped",
    "node-restarted-long",
    "daemon-killed",
    "front-killed",
    "cache-smaller-than-file",
)
CLI_TIMEOUT = 180.0  # seconds for one `cassfs` command
KiB = 1024
MiB = 1024 * 1024


class HarnessError(Exception):
    """The scenario could not run (a mount did not come up, the node did not answer)."""


@dataclass(frozen=True)
class Config:
    """What a run does.  Times in seconds, sizes in bytes.

    ``outage``: node-paused/node-stopped outage and the daemon/front kill period;
    ``long_outage``: node-restarted-long's outage; ``calm``: load before the first fault and
    after recovery; ``recover_deadline``: how long to wait for the first acknowledged write
    after a fault before giving up on it; ``front_dead``: how long a killed front stays dead
    before ``cassfs up`` again.
    """

    outage: float = 20.0
    long_outage: float = 60.0
    calm: float = 5.0
    recover_deadline: float = 120.0
    front_dead: float = 2.0
    kills: int = 4
    front_kills: int = 2
    cache_ttl: float = 2.0
    query_timeout: float = 2.0
    writers: int = 2
    files_per_writer: int = 4
    write_size: int = 64 * KiB
    readers: int = 2
    reader_files: int = 16
    reader_size: int = 16 * KiB
    big_size: int = 3 * MiB
    small_cache: str = "1M"
    contact_points: str = "127.0.0.1:9042"
    keyspace: str = "cassfs_faults"
    node_dir: Path = Path(".cassandra")
    node_port: int = 9042
    debug: bool = False


# -- small helpers --------------------------------------------------------------------------


def errname(exc: OSError) -> str:
    """The errno name of ``exc`` (``EIO``), or ``error`` when it has none."""
    return errno.errorcode.get(exc.errno or 0, "error")


def digest(data: bytes) -> bytes:
    """SHA-256 of ``data``."""
    return hashlib.sha256(data).digest()


def cassfs(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cassfs ARGS`` (never raises on a non-zero exit; HarnessError on a hang)."""
    command = [sys.executable, "-m", "cassfs", *args]
    log.debug("run %s", " ".join(command))
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"`cassfs {' '.join(args)}` did not return in {timeout:g} s") from exc


def mounted(mnt: Path) -> bool:
    """True if /proc/self/mounts lists ``mnt`` (dead FUSE mounts included, unlike ismount)."""
    target = os.fsencode(str(mnt)).replace(b" ", b"\\040")
    with open("/proc/self/mounts", "rb") as mounts:
        return any(line.split()[1:2] == [target] for line in mounts)


def dead(mnt: Path) -> bool:
    """True if ``mnt`` is a FUSE mount whose process died (:func:`cassfs.mounts.dead_mount_error`:
    a ``stat`` of its root or a listing may be answered by the kernel alone)."""
    return dead_mount_error(mnt) is not None


def daemon_status(cache_dir: Path, timeout: float = 2.0) -> dict[str, Any] | None:
    """The ``status`` reply of ``cache_dir``'s daemon, or None when none answers."""
    if not socket_path(cache_dir).exists():
        return None
    try:
        reply = call_once(cache_dir, "status", timeout=timeout)
    except (CassfsError, OSError):
        return None
    return reply if isinstance(reply, dict) else None


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` exists and is no zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(what: str, check: Callable[[], bool], timeout: float, every: float = 0.05) -> float:
    """Poll ``check`` every ``every`` s until true; the time (monotonic) it was.

    HarnessError after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if check():
            return now
        if now > deadline:
            raise HarnessError(f"{what}: not within {timeout:g} s")
        time.sleep(every)


# -- the node -------------------------------------------------------------------------------


class Node:
    """The Cassandra node that the scenarios pause, stop and start again."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.dir = launcher.NodeDir.at(cfg.node_dir)
        self.env = {
            **os.environ,
            launcher.DIR_ENV: str(self.dir.root),
            launcher.PORT_ENV: str(cfg.node_port),
        }
        self.paused: int | None = None  # the pid SIGSTOPped and not yet continued
        self.stopped = False  # stopped by us and not yet started

    def pid(self) -> int:
        """The node's JVM pid (checked against /proc); HarnessError when it does not run."""
        pid = launcher.read_pid(self.dir)
        if pid is None:
            raise HarnessError(f"no Cassandra node runs in {self.dir.root}")
        return pid

    def answers(self) -> bool:
        """True if ``SELECT release_version FROM system.local`` answers (2 s at most)."""
        try:
            launcher.query_release_version(self.cfg.node_port, timeout=2.0)
        except Exception:  # the launcher's _NotReady, or anything the driver raises
            return False
        return True

    def wait_answering(self, timeout: float = 300.0) -> float:
        """Probe CQL until it answers; the monotonic time the answering probe began."""
        deadline = time.monotonic() + timeout
        while True:
            began = time.monotonic()
            if self.answers():
                return began
            if began > deadline:
                raise HarnessError(f"the node did not answer CQL within {timeout:g} s")
            time.sleep(0.2)

    def pause(self) -> None:
        """SIGSTOP the node (its connections stay open; it answers nothing)."""
        pid = self.pid()
        self.paused = pid
        os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the node paused by :meth:`pause`, if any."""
        if self.paused is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.paused, signal.SIGCONT)
            self.paused = None

    def _command(self, action: str) -> list[str]:
        return [sys.executable, "-m", "cassfs.node", action]

    def stop(self) -> None:
        """``python -m cassfs.node stop`` (SIGTERM, SIGKILL after 60 s)."""
        self.stopped = True
        result = subprocess.run(
            self._command("stop"), env=self.env, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise HarnessError(f"cassfs.node stop exited {result.returncode}: {result.stderr}")

    def start(self) -> subprocess.Popen[str]:
        """Launch ``python -m cassfs.node start`` (it returns once CQL answers)."""
        proc = subprocess.Popen(
            self._command("start"),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.stopped = False
        return proc

    def restore(self) -> None:
        """Leave the node as found: continue it if paused, start it if stopped (blocking)."""
        self.resume()
        if launcher.read_pid(self.dir) is None or self.stopped:
            log.info("starting the node in %s again", self.dir.root)
            proc = self.start()
            out, _ = proc.communicate(timeout=600)
            if proc.returncode != 0:
                log.error("the node did not start again (%d): %s", proc.returncode, out)


# -- the record of what the load did --------------------------------------------------------


@dataclass(slots=True)
class Attempt:
    """One whole-file write: monotonic start/end (s), SHA-256 and size of its content."""

    t0: float
    t1: float
    sha: bytes
    size: int
    acked: bool


@dataclass
class FileState:
    """One file's writes (only one thread writes it) and its last acknowledged content."""

    attempts: list[Attempt] = field(default_factory=list)
    last_acked: bytes | None = None


@dataclass(slots=True)
class Op:
    """One load operation: ``kind`` (write, read, read-big), monotonic start/end (s),
    ``outcome`` (``ok``, ``mismatch`` or an errno name) and the failing ``step``."""

    kind: str
    t0: float
    t1: float
    outcome: str
    step: str = ""


class Ledger:
    """Everything the load did, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: dict[str, FileState] = {}
        self.ops: list[Op] = []
        self.notes: list[str] = []

    def record_write(self, rel: str, attempt: Attempt, data: bytes) -> None:
        with self.lock:
            state = self.files.setdefault(rel, FileState())
            state.attempts.append(attempt)
            if attempt.acked:
                state.last_acked = data

    def record(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def first_ack(self, after: float, by_start: bool) -> Attempt | None:
        """The earliest acknowledged write ending after ``after`` (``by_start``: beginning)."""
        with self.lock:
            acked = [
                a
                for state in self.files.values()
                for a in state.attempts
                if a.acked and (a.t0 if by_start else a.t1) > after
            ]
        return min(acked, key=lambda a: a.t1, default=None)


def write_whole(path: Path, data: bytes) -> tuple[str, str]:
    """Rewrite ``path`` with ``data`` (O_TRUNC, write, close); ``(outcome, failing step)``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        return errname(exc), "open"
    failure: tuple[str, str] | None = None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        failure = (errname(exc), "write")
    try:
        os.close(fd)
    except OSError as exc:
        failure = failure or (errname(exc), "close")
    return failure or ("ok", "")


def read_whole(path: Path) -> tuple[bytes | None, str, str]:
    """Read ``path`` whole; ``(bytes or None, outcome, failing step)``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        return None, errname(exc), "open"
    chunks: list[bytes] = []
    failure: tuple[str, str] | None = None
    try:
        while chunk := os.read(fd, MiB):
            chunks.append(chunk)
    except OSError as exc:
        failure = (errname(exc), "read")
    try:
        os.close(fd)
    except OSError as exc:
        failure = failure or (errname(exc), "close")
    if failure:
        return None, *failure
    return b"".join(chunks), "ok", ""


# -- the load -------------------------------------------------------------------------------


class Load:
    """Writer and reader threads on a mount until :meth:`stop`.

    Writer ``k`` rewrites ``wK/f0..`` with new random content; readers re-read ``r/f*``
    (written and read once before the load starts) on ``read_mnt``; with ``big``, a thread
    rewrites ``big/file`` on ``mnt`` and reads it back through ``read_mnt``.
    """

    def __init__(
        self, cfg: Config, ledger: Ledger, mnt: Path, read_mnt: Path, expected: dict[str, bytes]
    ) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.mnt = mnt
        self.read_mnt = read_mnt
        self.expected = expected  # reader files: rel -> content
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.big_results: Counter[str] = Counter()

    def write(self, rel: str, data: bytes, kind: str = "write") -> bool:
        """One whole-file write of ``rel`` on the mount, logged; True if acknowledged."""
        t0 = time.monotonic()
        outcome, step = write_whole(self.mnt / rel, data)
        t1 = time.monotonic()
        acked = outcome == "ok"
        self.ledger.record_write(rel, Attempt(t0, t1, digest(data), len(data), acked), data)
        self.ledger.record(Op(kind, t0, t1, outcome, step))
        return acked

    def writer(self, k: int, rng: random.Random) -> None:
        while not self.stopping.is_set():
            rel = f"w{k}/f{rng.randrange(self.cfg.files_per_writer)}"
            size = rng.randint(KiB, self.cfg.write_size)
            ok = self.write(rel, rng.randbytes(size))
            self.stopping.wait(0.01 if ok else 0.1)  # no busy loop on fast failures

    def reader(self, rng: random.Random) -> None:
        names = sorted(self.expected)
        while not self.stopping.is_set():
            rel = rng.choice(names)
            t0 = time.monotonic()
            data, outcome, step = read_whole(self.read_mnt / rel)
            if data is not None and data != self.expected[rel]:
                outcome, step = "mismatch", "read"
            self.ledger.record(Op("read", t0, time.monotonic(), outcome, step))
            self.stopping.wait(0.01 if outcome == "ok" else 0.1)

    def big(self, rng: random.Random) -> None:
        """Rewrite ``big/file`` (``big_size`` bytes), then read it back on ``read_mnt``."""
        previous = b""  # SHA-256 of the version acknowledged before the last one
        while not self.stopping.is_set():
            data = rng.randbytes(self.cfg.big_size)
            if not self.write("big/file", data, kind="write-big"):
                self.big_results["write failed"] += 1
                self.stopping.wait(0.5)
                continue
            t0 = time.monotonic()
            got, outcome, step = read_whole(self.read_mnt / "big/file")
            if got is not None and got != data:
                # stale: the version before, though close() of the new one had returned
                outcome = "stale" if digest(got) == previous else "mismatch"
                step = "read"
                if outcome == "mismatch" and self.big_results["mismatch"] < 3:
                    self.ledger.notes.append(
                        f"big file read back as {len(got)} bytes that are neither the "
                        f"{len(data)} bytes just written nor the version before"
                    )
            self.ledger.record(Op("read-big", t0, time.monotonic(), outcome, step))
            self.big_results[outcome] += 1
            previous = digest(data)
            self.stopping.wait(0.2)

    def start(self, big: bool = False) -> None:
        master = random.Random(secrets.randbits(64))
        targets: list[tuple[str, Callable[..., None], tuple[Any, ...]]] = [
            (f"writer{k}", self.writer, (k,)) for k in range(self.cfg.writers)
        ]
        targets += [(f"reader{i}", self.reader, ()) for i in range(self.cfg.readers)]
        if big:
            targets.append(("big", self.big, ()))
        for name, target, args in targets:
            rng = random.Random(master.getrandbits(64))
            thread = threading.Thread(
                target=self._guard, args=(target, *args, rng), name=name, daemon=True
            )
            self.threads.append(thread)
            thread.start()

    def _guard(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:  # a harness bug: say so rather than lose the thread quietly
            self.ledger.notes.append(f"{threading.current_thread().name} crashed: {exc!r}")

    def stop(self, timeout: float = 120.0) -> list[str]:
        """Stop the threads; the names of those still in a syscall ``timeout`` s later."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]


# -- one scenario ---------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected fault, monotonic times in s: ``start`` (injected), ``resume`` (undone:
    SIGCONT, start launched, the kill itself, ``cassfs up`` launched), ``back`` (node answering
    CQL, new daemon answering, ``cassfs up`` returned); ``recover``: ``back`` to the first
    acknowledged write (None: none within the deadline)."""

    start: float
    resume: float
    back: float
    by_start: bool
    recover: float | None = None


@dataclass
class Result:
    """One table row (see the module docstring) and its notes."""

    name: str
    fault: str = ""
    injected: int = 0
    operations: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    acked: int = 0
    lost: int = 0
    reads_failed: int = 0
    recover: list[float | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""


class Scenario:
    """One scenario on a fresh tenant in ``workdir/NAME``: mount, load, fault, verify."""

    def __init__(self, name: str, cfg: Config, node: Node, workdir: Path) -> None:
        self.name = name
        self.cfg = cfg
        self.node = node
        self.dir = workdir / name
        self.tenant = (secrets.randbelow(2**31 - 2) + 2, f"faults-{secrets.token_hex(5)}")
        self.ledger = Ledger()
        self.result = Result(name)
        self.mounts: dict[Path, list[str]] = {}  # mountpoint -> its `cassfs up` arguments
        self.caches: list[Path] = []
        self.faults: list[Fault] = []
        self.front_dead: list[tuple[float, float]] = []  # [kill, up returned] windows
        self.began = time.monotonic()

    # -- mounts -----------------------------------------------------------------------------

    def mount(
        self, label: str, cache: str, cache_size: str | None = None, tuned: bool = True
    ) -> Path:
        """``cassfs up DIR/label --cache-dir DIR/cache`` on the scenario's tenant.

        ``tuned``: with the scenario's cache TTL and query timeout (the fresh checker mount
        takes the defaults); the mount restarts a killed daemon with the same options.
        """
        mnt, cache_dir = self.dir / label, self.dir / cache
        mnt.mkdir(parents=True, exist_ok=True)
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        args = [
            "up",
            str(mnt),
            "--cache-dir",
            str(cache_dir),
            "--contact-points",
            self.cfg.contact_points,
            "--keyspace",
            self.cfg.keyspace,
            "--owner",
            str(self.tenant[0]),
            "--environment",
            self.tenant[1],
        ]
        if cache_size:
            args += ["--cache-size", cache_size]
        if tuned:
            args += ["--cache-ttl", str(self.cfg.cache_ttl)]
            args += ["--query-timeout", str(self.cfg.query_timeout)]
        if self.cfg.debug:
            args.append("--debug")
        if cache_dir not in self.caches:
            self.caches.append(cache_dir)
        self.mounts[mnt] = args
        self.up(mnt)
        return mnt

    def up(self, mnt: Path) -> None:
        """Run the recorded ``cassfs up`` of ``mnt``; HarnessError unless it mounted."""
        result = cassfs(*self.mounts[mnt])
        if result.returncode != 0 or not mounted(mnt) or dead(mnt):
            raise HarnessError(
                f"cassfs up {mnt} exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[-1500:]}"
            )

    def front_pid(self, mnt: Path) -> int:
        """The pid of the front serving ``mnt``: its mount record, else a /proc search."""
        from cassfs.state import read_record

        record = read_record(mnt)
        if record is not None and pid_alive(record.pid):
            return record.pid
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if b"up" in argv and b"--foreground" in argv and os.fsencode(str(mnt)) in argv:
                    return int(proc.name)
        raise HarnessError(f"no front process found for {mnt}")

    def take_down(self, mnt: Path) -> None:
        """Unmount ``mnt`` whatever state it is in (logged, never raised)."""
        if not mounted(mnt):
            return
        with contextlib.suppress(HarnessError):
            result = cassfs("down", str(mnt), timeout=90)
            if result.returncode != 0:
                log.warning("cassfs down %s: %s", mnt, (result.stderr or result.stdout).strip())
        if mounted(mnt):
            with contextlib.suppress(HarnessError):
                pid = self.front_pid(mnt)
                os.kill(pid, signal.SIGKILL)
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, timeout=30)
        if mounted(mnt):
            log.error("%s is still mounted", mnt)

    def stop_daemons(self) -> None:
        """Shut down the daemons of this scenario's cache dirs once no session uses them."""
        for cache_dir in self.caches:
            status = daemon_status(cache_dir)
            if status is None:
                continue
            with contextlib.suppress(CassfsError, OSError):
                call_once(cache_dir, "shutdown", timeout=5)
            pid = status.get("pid")
            if isinstance(pid, int):

                def exited(daemon: int = pid) -> bool:
                    return not pid_alive(daemon)

                with contextlib.suppress(HarnessError):
                    wait_until("daemon exit", exited, 30, every=0.1)
                if pid_alive(pid):
                    log.warning("daemon %d of %s still runs: SIGTERM", pid, cache_dir)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)

    # -- set-up -----------------------------------------------------------------------------

    def prepare(self, mnt: Path, read_mnt: Path, rng: random.Random) -> Load:
        """Directories, the reader files and every writer file written once (acknowledged),
        the reader files read once on ``read_mnt`` (cached there); the load, not started."""
        expected: dict[str, bytes] = {}
        for directory in ["r", "big"] + [f"w{k}" for k in range(self.cfg.writers)]:
            os.mkdir(mnt / directory)
        load = Load(self.cfg, self.ledger, mnt, read_mnt, expected)
        for i in range(self.cfg.reader_files):
            rel = f"r/f{i}"
            expected[rel] = rng.randbytes(self.cfg.reader_size)
            if not load.write(rel, expected[rel], kind="setup"):
                raise HarnessError(f"the first write of {rel} failed")
        for k in range(self.cfg.writers):
            for j in range(self.cfg.files_per_writer):
                rel = f"w{k}/f{j}"
                if not load.write(
                    rel, rng.randbytes(rng.randint(KiB, self.cfg.write_size)), "setup"
                ):
                    raise HarnessError(f"the first write of {rel} failed")
        for rel, data in expected.items():
            got, outcome, _ = read_whole(read_mnt / rel)
            if got != data:
                raise HarnessError(f"warm-up read of {rel} on {read_mnt}: {outcome}")
        with self.ledger.lock:
            self.ledger.ops.clear()  # the set-up is not part of the load's figures
        return load

    # -- faults -----------------------------------------------------------------------------

    def await_recovery(self, fault: Fault) -> None:
        """Wait (polling) for the first acknowledged write after ``fault``; set its recover."""
        try:
            wait_until(
                "an acknowledged write after the fault",
                lambda: self.ledger.first_ack(fault.resume, fault.by_start) is not None,
                self.cfg.recover_deadline,
            )
        except HarnessError:
            self.result.notes.append(
                f"no acknowledged write within {self.cfg.recover_deadline:g} s of the fault's end"
            )
        first = self.ledger.first_ack(fault.resume, fault.by_start)
        if first is not None:
            fault.recover = max(0.0, first.t1 - fault.back)
        self.faults.append(fault)

    def node_paused(self) -> str:
        start = time.monotonic()
        self.node.pause()
        try:
            time.sleep(self.cfg.outage)  # the outage itself
        finally:
            resume = time.monotonic()
            self.node.resume()
        back = self.node.wait_answering()
        self.await_recovery(Fault(start, resume, back, by_start=False))
        return f"SIGSTOP node {resume - start:.0f} s"

    def node_stopped(self, seconds: float) -> str:
        start = time.monotonic()
        self.node.stop()
        stopped = time.monotonic()
        time.sleep(seconds)  # the outage itself (counted from the node being down)
        resume = time.monotonic()
        starter = self.node.start()
        try:
            back = self.node.wait_answering()
        finally:
            out, _ = starter.communicate(timeout=600)
        if starter.returncode != 0:
            raise HarnessError(f"cassfs.node start exited {starter.returncode}: {out[-1500:]}")
        self.await_recovery(Fault(start, resume, back, by_start=False))
        self.result.notes.append(
            f"node stop took {stopped - start:.1f} s, start until CQL answered "
            f"{back - resume:.1f} s"
        )
        return f"node stop/start, CQL away {back - start:.0f} s"

    def daemon_killed(self, cache_dir: Path, mnt: Path) -> str:
        gap = max(self.cfg.outage / self.cfg.kills, 1.0)
        restarts: list[float] = []
        for _ in range(self.cfg.kills):
            status = daemon_status(cache_dir, timeout=5)
            if status is None or not isinstance(status.get("pid"), int):
                raise HarnessError(f"no daemon answers for {cache_dir} before the kill")
            pid = status["pid"]
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)

            def new_daemon(old: int = pid) -> bool:
                now = daemon_status(cache_dir, timeout=1)
                return now is not None and now.get("pid") != old

            back = wait_until("a new daemon answering", new_daemon, 60)
            restarts.append(back - killed)
            self.await_recovery(Fault(killed, killed, back, by_start=True))
            self.result.injected += 1
            time.sleep(gap)  # load between kills, not a wait for a condition
        self.result.notes.append(
            "daemon back (new pid answering status) after "
            + ", ".join(f"{s:.2f}" for s in restarts)
            + " s"
        )
        return f"kill -9 daemon x{len(restarts)}"

    def front_killed(self, mnt: Path) -> str:
        gap = max(self.cfg.outage / self.cfg.front_kills, 1.0)
        lazy = 0
        for _ in range(self.cfg.front_kills):
            pid = self.front_pid(mnt)
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)

            def gone(front: int = pid) -> bool:
                return not pid_alive(front)

            wait_until(f"front {pid} gone", gone, 30)
            time.sleep(self.cfg.front_dead)  # the front stays dead this long while writes go on
            resume = time.monotonic()
            result = cassfs(*self.mounts[mnt])
            if result.returncode != 0 and mounted(mnt):
                lazy += 1
                self.result.notes.append(
                    f"cassfs up on the dead mount failed ({result.returncode}: "
                    f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}); "
                    "fusermount3 -u -z first, then cassfs up again"
                )
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, timeout=30)
                result = cassfs(*self.mounts[mnt])
            if result.returncode != 0 or not mounted(mnt) or dead(mnt):
                raise HarnessError(f"cassfs up after the front kill: {result.stderr.strip()}")
            back = time.monotonic()
            self.front_dead.append((killed, back))
            self.await_recovery(Fault(killed, resume, back, by_start=True))
            self.result.injected += 1
            time.sleep(gap)  # load between kills
        if not lazy:
            self.result.notes.append("cassfs up cleared the dead mount itself every time")
        return f"kill -9 front x{self.cfg.front_kills}, {self.cfg.front_dead:g} s dead each"

    # -- the whole scenario -----------------------------------------------------------------

    def run(self) -> Result:
        """Mount, load, inject, recover, stop, verify from a fresh mount; always clean up."""
        res = self.result
        rng = random.Random(secrets.randbits(64))
        load: Load | None = None
        try:
            self.dir.mkdir(parents=True)
            log.info("%s: tenant %d/%s in %s", self.name, *self.tenant, self.dir)
            small = self.name == "cache-smaller-than-file"
            mnt = self.mount("mnt", "cache", cache_size=self.cfg.small_cache if small else None)
            read_mnt = self.mount("mnt-b", "cache", self.cfg.small_cache) if small else mnt
            load = self.prepare(mnt, read_mnt, rng)
            started = time.monotonic()
            load.start(big=small)
            time.sleep(self.cfg.calm)  # load before the fault
            log.info("%s: injecting", self.name)
            if self.name == "node-paused":
                res.injected, res.fault = 1, self.node_paused()
            elif self.name == "node-stopped":
                res.injected, res.fault = 1, self.node_stopped(self.cfg.outage)
            elif self.name == "node-restarted-long":
                res.injected, res.fault = 1, self.node_stopped(self.cfg.long_outage)
            elif self.name == "daemon-killed":
                res.fault = self.daemon_killed(self.dir / "cache", mnt)
            elif self.name == "front-killed":
                res.fault = self.front_killed(mnt)
            else:
                time.sleep(self.cfg.outage)  # the load runs against the small cache this long
                res.fault = (
                    f"--cache-size {self.cfg.small_cache} < {self.cfg.big_size // MiB} MiB file"
                )
                big = load.big_results
                res.notes.append(
                    "big file read back through a second mount on the same cache dir: "
                    + (", ".join(f"{k} {n}" for k, n in sorted(big.items())) or "none")
                )
            time.sleep(self.cfg.calm)  # load after recovery
            hung = load.stop()
            log.info("%s: load stopped after %.0f s", self.name, time.monotonic() - started)
            if hung:
                res.notes.append(f"threads still in a syscall 120 s after the stop: {hung}")
            self.summarize()
            self.counters()
            for m in list(self.mounts):
                self.take_down(m)
            self.verify()
        except (HarnessError, OSError, subprocess.SubprocessError) as exc:
            res.error = str(exc) if isinstance(exc, HarnessError) else repr(exc)
            log.error("%s: %s", self.name, res.error)
        finally:
            if load is not None:
                load.stopping.set()
            self.node.restore()
            for m in list(self.mounts):
                self.take_down(m)
            self.stop_daemons()
            res.notes.extend(self.ledger.notes)
        return res

    def summarize(self) -> None:
        """Fill the row from the ledger: operations, failures by errno, failed cached reads."""
        res = self.result
        with self.ledger.lock:
            ops = list(self.ledger.ops)
        res.operations = len(ops)
        in_outage = in_flight = 0
        for op in ops:
            if op.outcome == "ok":
                continue
            res.failed[f"{op.kind} {op.outcome}"] += 1
            front_dead = any(a <= op.t1 and op.t0 <= b for a, b in self.front_dead)
            if op.kind == "read" and not front_dead:
                res.reads_failed += 1
                in_outage += any(f.start <= op.t1 and op.t0 <= f.back for f in self.faults)
                in_flight += self.name == "daemon-killed" and any(
                    op.t0 <= f.start <= op.t1 for f in self.faults
                )
        if res.reads_failed:
            res.notes.append(
                f"{in_outage} of the failed cached reads overlapped a fault, "
                f"{in_flight} were in flight at a kill (README: requests in flight when the "
                "daemon dies fail with EIO)"
            )
        during = sorted(
            op.t1 - op.t0
            for op in ops
            if op.kind == "read"
            and op.outcome == "ok"
            and any(f.start <= op.t1 and op.t0 <= f.back for f in self.faults)
        )
        if during:
            res.notes.append(
                f"cached reads during the fault: {len(during)}, "
                f"p50 {_quantile(during, 0.5) * 1e3:.1f} ms, "
                f"p99 {_quantile(during, 0.99) * 1e3:.1f} ms, max {during[-1] * 1e3:.1f} ms"
            )
        res.recover = [f.recover for f in self.faults]
        if len(self.faults) > 1:
            res.notes.append(
                "recover per fault: "
                + ", ".join("-" if r is None else f"{r:.2f}" for r in res.recover)
                + " s"
            )

    def counters(self) -> None:
        """Add the daemon's stale_served/evictions totals (``cassfs cache stats``) to the notes."""
        with contextlib.suppress(HarnessError, ValueError):
            out = cassfs("cache", "stats", "--cache-dir", str(self.dir / "cache"), "--json")
            figures = json.loads(out.stdout)
            self.result.notes.append(
                f"daemon counters: stale_served {figures.get('stale_served')}, "
                f"evictions {figures.get('evictions')}, "
                f"unreachable_queries {figures.get('unreachable_queries')}, "
                f"queries_failed_fast {figures.get('queries_failed_fast')}"
            )

    def verify(self) -> None:
        """From a fresh mount (empty cache dir, default TTLs), read every file back.

        Lost: a file holding neither its last acknowledged content nor that of a write
        attempted after it (unknown outcome, or its truncation: empty).  An unreadable file
        is retried for 30 s, then counted lost.
        """
        res = self.result
        checker = self.mount("check", "check-cache", tuned=False)
        with self.ledger.lock:
            files = dict(self.ledger.files)
        superseded = 0
        for rel, state in sorted(files.items()):
            acks = [a for a in state.attempts if a.acked]
            res.acked += len(acks)
            if not acks:
                continue
            last = acks[-1]
            later = {a.sha for a in state.attempts if a.t0 > last.t1}
            if later:
                later.add(digest(b""))
            deadline = time.monotonic() + 30
            while True:
                data, outcome, step = read_whole(checker / rel)
                if data is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if data is not None and data == state.last_acked:
                continue
            if data is not None and digest(data) in later:
                superseded += 1
                continue
            res.lost += 1
            if data is None:
                why = f"unreadable ({outcome} at {step})"
            else:
                older = any(a.sha == digest(data) for a in state.attempts if a.t1 <= last.t1)
                why = f"{len(data)} bytes, " + (
                    "an older version" if older else "content no write wrote"
                )
            res.notes.append(
                f"LOST {rel}: last acknowledged write ({last.size} bytes, ended at "
                f"+{last.t1 - self.began:.1f} s of the scenario) reads back as {why}"
            )
        res.acked -= self.cfg.reader_files + self.cfg.writers * self.cfg.files_per_writer
        res.notes.append(
            f"fresh mount: {len(files)} files checked"
            + (f", {superseded} hold a later unacknowledged write" if superseded else "")
        )


def _quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of the sorted, non-empty ``ordered`` (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- report ---------------------------------------------------------------------------------


def render(results: list[Result], console: Console, cfg: Config) -> None:
    """Print the table and each scenario's notes."""
    table = Table(
        title=f"cassfs faults (cache TTL {cfg.cache_ttl:g} s, query timeout "
        f"{cfg.query_timeout:g} s, {cfg.writers} writers, {cfg.readers} readers)"
    )
    for name in ("scenario", "fault", "injected", "operations", "failed (errno)"):
        table.add_column(name, justify="right" if name in ("injected", "operations") else "left")
    for name in ("acked writes", "lost", "cached reads failed", "recover s"):
        table.add_column(name, justify="right")
    for r in results:
        if r.error:
            table.add_row(r.name, f"[red]could not run: {r.error}[/]", *[""] * 7)
            continue
        known = [x for x in r.recover if x is not None]
        recover = "-" if not r.recover else f"{max(known):.1f}" if known else "[red]never[/]"
        if r.recover and None in r.recover and known:
            recover += " [red](one never)[/]"
        failed = ", ".join(f"{k} {n}" for k, n in sorted(r.failed.items())) or "0"
        table.add_row(
            r.name,
            r.fault,
            str(r.injected),
            f"{r.operations:,}",
            failed,
            f"{r.acked:,}",
            f"[red]{r.lost}[/]" if r.lost else "0",
            f"[red]{r.reads_failed}[/]" if r.reads_failed else "0",
            recover,
        )
    console.print(table)
    for r in results:
        for note in r.notes:
            console.print(f"  {r.name}: {note}", highlight=False)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Config]:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults",
        description="Run cassfs fault scenarios (node paused/stopped/restarted, daemon and "
        "front killed during writes, cache smaller than a file) and print a table.",
    )
    parser.add_argument(
        "--only", action="append", choices=SCENARIOS, metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )  # fmt: skip
    parser.add_argument(
        "--seconds", type=float, default=20.0, metavar="N",
        help="node outage, and the period of daemon/front kills and of the cache scenario (s)",
    )  # fmt: skip
    parser.add_argument(
        "--long-seconds", type=float, default=60.0, metavar="N",
        help="outage of node-restarted-long (s, default 60)",
    )  # fmt: skip
    parser.add_argument("--kills", type=int, default=4, help="daemon kills (default 4)")
    parser.add_argument("--front-kills", type=int, default=2, help="front kills (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--debug", action="store_true", help="mounts and daemons log every call")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging here")
    parser.add_argument(
        "--contact-points",
        default=os.environ.get("CASSFS_CONTACT_POINTS"),
        help="Cassandra HOST:PORT for the mounts (env CASSFS_CONTACT_POINTS; "
        "default 127.0.0.1:$CASSFS_NODE_PORT)",
    )
    parser.add_argument("--keyspace", default="cassfs_faults", help="default cassfs_faults")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.long_seconds <= 0 or args.kills < 1 or args.front_kills < 1:
        parser.error("--seconds, --long-seconds, --kills and --front-kills must be positive")
    try:
        port = launcher.default_port()
    except launcher.NodeError as exc:
        parser.error(str(exc))
    contact = args.contact_points or f"127.0.0.1:{port}"
    if not contact.endswith(f":{port}") or "," in contact:
        parser.error(
            f"the mounts would use {contact}, but the node these scenarios pause and stop is "
            f"{launcher.default_dir()} on port {port} ($CASSFS_NODE_DIR, $CASSFS_NODE_PORT): "
            "point both at the same node"
        )
    cfg = Config(
        outage=args.seconds,
        long_outage=args.long_seconds,
        kills=args.kills,
        front_kills=args.front_kills,
        contact_points=contact,
        keyspace=args.keyspace,
        node_dir=launcher.default_dir(),
        node_port=port,
        debug=args.debug,
    )
    return args, cfg


def main(argv: list[str] | None = None) -> int:
    """The command line: exit 0, 1 (an acknowledged write lost) or 2 (a scenario could not run)."""
    args, cfg = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("cassandra").setLevel(logging.CRITICAL)  # the probes of a node away
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a log or a pipe: keep each row on one line
    node = Node(cfg)
    try:
        pid = node.pid()
    except HarnessError as exc:
        log.error("%s (start it with `python -m cassfs.node start`)", exc)
        return 2
    log.info("node: pid %d, %s, CQL port %d", pid, cfg.node_dir, cfg.node_port)
    applied = cassfs(
        "schema", "apply", "--contact-points", cfg.contact_points, "--keyspace", cfg.keyspace
    )
    if applied.returncode != 0:
        log.error("schema apply failed: %s", applied.stderr.strip())
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="cassfs-faults-", dir="/tmp"))
    os.environ["CASSFS_RUN_DIR"] = str(workdir / "run")  # mount records of our mounts only
    results: list[Result] = []
    started = time.monotonic()
    try:
        with sigterm_as_interrupt():
            for name in args.only or SCENARIOS:
                results.append(Scenario(name, cfg, node, workdir).run())
    except KeyboardInterrupt:
        log.error("interrupted; cleaned up")
        return 130
    finally:
        node.restore()
        lost = any(r.lost for r in results)
        if args.keep or lost:
            log.info("work dir kept: %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    render(results, console, cfg)
    console.print(f"total {time.monotonic() - started:.0f} s")
    if any(r.lost for r in results):
        return 1
    return 2 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
