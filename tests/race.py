"""Race harness: several cassfs hosts on one tenant race random namespace and content changes.

``python -m tests.race --seconds N [--hosts 3] [--seed S]`` mounts N hosts (one ``cassfs up``
each, with its own cache dir and so its own daemon) on one fresh tenant of the test keyspace,
runs random concurrent operations through real syscalls on every mount while daemons are
killed with SIGKILL and client connections are dropped mid-request, then quiesces, checks the
invariants from a fresh host (a new cache dir) and ends with ``cassfs fsck``.  It prints

    race: 4210 operations, 37 daemon kills, 12 dropped connections, 0 violations

and exits 0 without violations, 1 with any, 2 when the harness itself could not run (a mount
that does not come up, say).  ``tests/test_race.py`` runs it for about 60 s inside
``just test``; ``just stress SECONDS`` runs it longer.

What runs (every host, concurrently):

- *chaos workers* on a small shared namespace, ``d0..d2`` at the root and ``dK/n0..n7`` in
  them: ``open(O_CREAT|O_EXCL)`` + write + close, in-place rewrites (``O_TRUNC``) and
  rewrites through a temp name renamed over the target, renames in one directory and across
  directories (over existing names, files and directories, top-level directories moved into
  each other), unlink, mkdir, rmdir and whole-file reads;
- a *lane writer*: host H alone rewrites ``laneH/f0..f3`` (in place or by temp + rename; new
  content, the same content again, or an older content again: A->B->A), so what must be
  there at the end is known exactly: no acknowledged write may be lost;
- *readers* reading shared names and the other hosts' lanes whole;
- a *fault injector*: ``kill -9`` of a random host's daemon (the mount starts a new one at its
  next request), and raw connections to a daemon that say ``hello``, send a mutating request
  (create, mkdir, unlink, rename, write) and close without waiting for the reply.

Every file version is ``SIZE`` bytes (equal sizes, where torn reads hide): a header naming a
unique version id, then a body derived from that id, so any bytes read are either exactly
one version some writer wrote or provably torn.  Every operation is logged with its host,
paths, monotonic start/end and outcome; the checks run on that log once the run is over.

Violations (each names its kind; see :func:`analyze` and :func:`check_tree`):

- ``torn-read``/``torn-file``: bytes that are not exactly one whole version (a cut or a mix);
- ``foreign-content``: a version on an inode that no write wrote to that inode;
- ``lost-ack``: a write whose ``close()`` returned 0 replaced by older content;
- ``stale-read``: a lane read older than an acknowledged write past the staleness bound
  (``cache-ttl + entry-ttl + slack``) of the README;
- ``empty-mid-rewrite``: another host read a lane file empty: the truncation of an in-place
  rewrite, under way or (from a cache) up to the staleness bound old;
- ``empty-read``: a lane file read empty though it never was empty under its name (a temp
  file's state from before it was renamed over the name);
- ``unexplained-errno KIND/STEP ERRNO``: an errno the race cannot explain (EIO outside a
  fault window on its host, EEXIST from rename, ENOENT for a lane file that always exists...);
- ``eexist-without-excl``: ``open(O_CREAT)`` without ``O_EXCL`` failed with EEXIST (POSIX
  never says that: the file exists, so it is opened);
- ``daemon-not-back``: a killed daemon not restarted by its mount within 60 s;
- ``eexist-then-enoent``: ``O_EXCL``/mkdir said EEXIST, the same host's stat right after said
  ENOENT, and nothing could have removed the name meanwhile;
- ``double-create``: two exclusive creates of one name both succeeded with nothing that
  could have removed the name between them;
- ``dir-cycle``: two top-level directories moved into each other, both successfully;
- ``hung``: an operation still in flight long after the run stopped;
- ``dangling-name``/``unreadable``/``two-names``/``nlink``: from the fresh host's walk
  (namespace findings are re-checked once the README's grace period for unfinished
  cross-directory renames has passed, when faults may have left such renames behind);
- ``fsck``: ``cassfs fsck`` exited non-zero.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import errno
import hashlib
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cached import protocol
from cached.client import call_once, socket_path
from cached.errors import CassfsError
from cassfs.inodes import ALIAS_BASE

# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class RaceConfig:
    """What one run does.  Times in seconds, sizes in bytes.

    ``debug``: mounts and daemons log every call (``cassfs up --debug``) for post-mortems.
    ``kill_every``/``drop_every``: mean seconds between daemon kills / dropped connections
    (0 disables).  ``grace``: the README's grace period after which an unfinished
    cross-directory rename is completed or undone (namespace findings of the final walk are
    re-checked past it).  ``slack``: added to ``cache_ttl + entry_ttl`` for the staleness
    bound.  ``workdir``: where mounts, cache dirs and the run dir go (a new temp dir if None).
    """

    seconds: float = 60.0
    hosts: int = 3
    seed: int = 0
    workers: int = 3
    readers: int = 1
    dirs: int = 3
    names: int = 8
    lane_files: int = 4
    size: int = 20_000
    kill_every: float = 8.0
    drop_every: float = 1.0
    cache_ttl: float = 1.0
    entry_ttl: float = 1.0
    negative_ttl: float = 1.0
    slack: float = 2.0
    grace: float = 60.0
    contact_points: str = "127.0.0.1:9042"
    keyspace: str = "cassfs_test"
    workdir: Path | None = None
    keep: bool = False
    fsck: bool = True
    debug: bool = False


class HarnessError(Exception):
    """The harness could not run (a mount failed, a daemon never answered): not a verdict."""


# -- content --------------------------------------------------------------------------------

MAGIC = b"cassfs-race "
EMPTY = ""  # the version id of empty content


def make_content(vid: str, size: int) -> bytes:
    """The ``size`` bytes of version ``vid``: ``MAGIC vid size\\n`` then a body derived from vid."""
    header = MAGIC + f"{vid} {size}\n".encode()
    body = hashlib.shake_256(vid.encode()).digest(size - len(header))
    return header + body


@dataclass(frozen=True, slots=True)
class Verdict:
    """What some bytes are: version ``vid`` whole (``EMPTY`` for no bytes), or not.

    ``prefix``: the bytes are a proper prefix of version ``vid`` (allowed only for a reader
    on the host writing the file).  ``problem``: why the bytes are not one whole version.
    """

    vid: str | None
    problem: str = ""
    prefix: bool = False

    @property
    def whole(self) -> bool:
        """True when the bytes are exactly one whole version (or empty)."""
        return self.vid is not None and not self.problem


def judge(data: bytes, size: int, known: set[str] | None = None) -> Verdict:
    """Classify ``data`` (file content) against the version format of ``size`` bytes.

    ``known``: version ids some writer registered; an unknown id is a problem.
    """
    if not data:
        return Verdict(EMPTY)
    end = data.find(b"\n", 0, 80)
    if not data.startswith(MAGIC) or end < 0:
        return Verdict(None, f"{len(data)} bytes without a version header: {data[:24]!r}")
    try:
        vid, size_text = data[len(MAGIC) : end].decode().split(" ")
        declared = int(size_text)
    except ValueError:
        return Verdict(None, f"{len(data)} bytes with a bad header {data[:end]!r}")
    if known is not None and vid not in known:
        return Verdict(None, f"version {vid} that no writer wrote")
    expected = make_content(vid, declared)
    if len(data) < declared and expected.startswith(data):
        return Verdict(vid, f"{len(data)} of the {declared} bytes of {vid}", prefix=True)
    if len(data) != declared:
        return Verdict(vid, f"{len(data)} bytes of version {vid}, which has {declared}")
    if data != expected:
        at = next(i for i, (a, b) in enumerate(zip(data, expected, strict=True)) if a != b)
        return Verdict(vid, f"version {vid} mixed with other bytes from byte {at} of {len(data)}")
    if declared != size:
        return Verdict(vid, f"version {vid} declares {declared} bytes, not {size}")
    return Verdict(vid)


# -- the log --------------------------------------------------------------------------------


@dataclass(slots=True)
class Op:
    """One operation attempt: ``kind`` on ``host`` with ``src``/``dst`` relative paths.

    ``t0``/``t1``: monotonic start and end (``t1`` is inf while in flight).  ``outcome``:
    ``"ok"`` or the errno name of the failing step ``step`` (``open``, ``write``, ``close``,
    ``rename``...).  ``ino``: the file's inode number when an open descriptor told it.
    """

    kind: str
    host: int
    src: str
    dst: str = ""
    t0: float = 0.0
    t1: float = float("inf")
    outcome: str = "pending"
    step: str = ""
    ino: int = 0
    detail: str = ""

    @property
    def done(self) -> bool:
        """True when it succeeded."""
        return self.outcome == "ok"

    @property
    def uncertain(self) -> bool:
        """True when it may have taken effect without saying so (EIO, still in flight, ...)."""
        return self.outcome in ("pending", "EIO", "ENOTCONN", "ECONNABORTED", "error")


@dataclass(slots=True)
class Event:
    """Inode ``ino`` may hold version ``vid`` from within ``[t0, t1]``; ``acked`` if certain."""

    vid: str
    t0: float
    t1: float
    acked: bool


@dataclass(slots=True)
class LaneWrite:
    """One write of a lane file by its only writer; ``acked`` when every syscall returned 0."""

    vid: str
    t0: float
    t1: float
    acked: bool
    in_place: bool


@dataclass(slots=True)
class Read:
    """A whole-file read: its verdict or errno (name), the inode it read, lane if a lane file."""

    host: int
    path: str
    lane: tuple[int, int] | None
    t0: float
    t1: float
    verdict: Verdict | None
    err: str = ""
    ino: int = 0


@dataclass(slots=True)
class Followup:
    """``lstat`` by the same host right after an exclusive create of ``path`` said EEXIST."""

    host: int
    path: str
    t0: float  # the create's start
    t1: float  # the stat's end
    err: str


@dataclass(frozen=True, slots=True)
class Violation:
    """An invariant broken: ``kind`` (see the module docstring) and what was seen."""

    kind: str
    detail: str


class History:
    """Everything the run did, thread-safe: operations, inode events, lanes, reads, faults."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: list[Op] = []
        self.events: dict[int, list[Event]] = defaultdict(list)
        self.unknown_ino_vids: set[str] = set()  # written through a descriptor fstat failed on
        self.lanes: dict[tuple[int, int], list[LaneWrite]] = defaultdict(list)
        self.reads: list[Read] = []
        self.followups: list[Followup] = []
        self.faults: dict[int, list[list[float]]] = defaultdict(list)  # host -> [t_kill, t_back]
        self.known: set[str] = set()
        self.violations: list[Violation] = []
        self.limits: list[Violation] = []  # findings the README names as known limits
        self.notes: Counter[str] = Counter()
        self.kills = 0
        self.drops = 0
        self.start = time.monotonic()  # the origin of the "+N s" times in reports
        self.start_wall = time.time()  # the same moment on the wall clock (for the logs)
        self._seq = 0

    def new_vid(self, tag: str) -> str:
        """A version id never used before in this run, registered as known."""
        with self.lock:
            self._seq += 1
            vid = f"{tag}-{self._seq:07d}"
            self.known.add(vid)
            return vid

    def begin(self, kind: str, host: int, src: str, dst: str = "") -> Op:
        """Log the start of an operation; finish it with :meth:`end`."""
        op = Op(kind, host, src, dst, t0=time.monotonic())
        with self.lock:
            self.ops.append(op)
        return op

    @staticmethod
    def end(op: Op, error: OSError | None = None, step: str = "") -> None:
        """Log the end of ``op``: success, or ``error`` at ``step``."""
        op.t1 = time.monotonic()
        if error is None:
            op.outcome = "ok"
        else:
            op.outcome = errno.errorcode.get(error.errno or 0, "error")
            op.step = step
            op.detail = str(error)

    def event(self, ino: int, vid: str, t0: float, t1: float, acked: bool) -> None:
        """Inode ``ino`` may hold ``vid`` from ``[t0, t1]`` on (``ino`` 0: unknown inode;
        so is a mount's alias node, whose ``st_ino`` is no inode number)."""
        with self.lock:
            if ino and ino < ALIAS_BASE:
                self.events[ino].append(Event(vid, t0, t1, acked))
            else:
                self.unknown_ino_vids.add(vid)

    def violate(self, kind: str, detail: str) -> None:
        """Record a violation found while running (the rest are found by :func:`analyze`)."""
        with self.lock:
            self.violations.append(Violation(kind, detail))

    def dump(self, path: Path) -> None:
        """Write the log as JSON lines (times in seconds from :attr:`start`) for post-mortems."""

        def rel(t: float) -> float | None:
            return round(t - self.start, 4) if t != float("inf") else None

        with self.lock, open(path, "w") as out:
            out.write(json.dumps({"start_wall": self.start_wall}) + "\n")
            for op in self.ops:
                row = {
                    "op": op.kind, "host": op.host, "src": op.src, "dst": op.dst,
                    "t0": rel(op.t0), "t1": rel(op.t1), "outcome": op.outcome,
                    "step": op.step, "ino": op.ino, "detail": op.detail,
                }  # fmt: skip
                out.write(json.dumps(row) + "\n")
            for r in self.reads:
                verdict = r.verdict
                row = {
                    "read": r.path, "host": r.host, "t0": rel(r.t0), "t1": rel(r.t1),
                    "ino": r.ino, "err": r.err,
                    "vid": verdict.vid if verdict else None,
                    "problem": verdict.problem if verdict else None,
                }  # fmt: skip
                out.write(json.dumps(row) + "\n")
            for fu in self.followups:
                row = {"followup": fu.path, "host": fu.host, "t0": rel(fu.t0), "t1": rel(fu.t1),
                       "err": fu.err}  # fmt: skip
                out.write(json.dumps(row) + "\n")
            for ino, events in self.events.items():
                for e in events:
                    row = {"ino": ino, "vid": e.vid, "t0": rel(e.t0), "t1": rel(e.t1)}
                    out.write(json.dumps({**row, "acked": e.acked}) + "\n")
            for (h, f), writes in self.lanes.items():
                for w in writes:
                    row = {"lane": f"lane{h}/f{f}", "vid": w.vid, "t0": rel(w.t0), "t1": rel(w.t1)}
                    out.write(json.dumps({**row, "acked": w.acked, "in_place": w.in_place}) + "\n")
            for h, windows in self.faults.items():
                for a, b in windows:
                    out.write(json.dumps({"kill": h, "t0": rel(a), "t1": rel(b)}) + "\n")

    def in_fault(self, host: int, t0: float, t1: float) -> bool:
        """True if ``[t0, t1]`` overlaps a window in which ``host``'s daemon was down."""
        with self.lock:
            return any(a <= t1 and t0 <= b for a, b in self.faults.get(host, []))


def errname(exc: OSError) -> str:
    """The errno name of ``exc`` (``EIO``), or ``error`` when it has none."""
    return errno.errorcode.get(exc.errno or 0, "error")


# -- hosts ----------------------------------------------------------------------------------


@dataclass
class Host:
    """One ``cassfs up`` mount with its own cache dir, so its own daemon."""

    index: int
    mnt: Path
    cache_dir: Path
    env: dict[str, str]

    def daemon_pid(self, timeout: float = 5.0) -> int:
        """The pid of this host's daemon (``status`` reply); CassfsError when none answers."""
        reply = call_once(self.cache_dir, "status", timeout=timeout)
        if not isinstance(reply, dict) or not isinstance(reply.get("pid"), int):
            raise HarnessError(f"status of {self.cache_dir} has no pid: {reply!r}")
        return reply["pid"]


def cassfs(
    *args: str, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cassfs ARGS`` with ``env``; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "cassfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def mount_host(
    cfg: RaceConfig, tenant: tuple[int, str], root: Path, name: str, index: int, env: dict[str, str]
) -> Host:
    """``cassfs up`` ``root/name`` with cache dir ``root/name-cache``; HarnessError on failure."""
    mnt, cache_dir = root / name, root / f"{name}-cache"
    mnt.mkdir(parents=True, exist_ok=True)
    host = Host(index, mnt, cache_dir, env)
    try:
        result = _up(cfg, tenant, host)
    except subprocess.TimeoutExpired as exc:
        unmount_host(host)
        raise HarnessError(f"cassfs up {mnt} did not return in {exc.timeout} s") from exc
    if result.returncode != 0 or not os.path.ismount(mnt):
        unmount_host(host)  # whatever it left behind
        raise HarnessError(
            f"cassfs up {mnt} exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        )
    return host


def _up(cfg: RaceConfig, tenant: tuple[int, str], host: Host) -> subprocess.CompletedProcess[str]:
    """``cassfs up`` for ``host`` with the run's tenant, keyspace and TTLs."""
    mnt, cache_dir, env = host.mnt, host.cache_dir, host.env
    return cassfs(
        "up",
        str(mnt),
        "--cache-dir",
        str(cache_dir),
        "--contact-points",
        cfg.contact_points,
        "--keyspace",
        cfg.keyspace,
        "--owner",
        str(tenant[0]),
        "--environment",
        tenant[1],
        "--cache-ttl",
        str(cfg.cache_ttl),
        "--entry-ttl",
        str(cfg.entry_ttl),
        "--negative-ttl",
        str(cfg.negative_ttl),
        *(["--debug"] if cfg.debug else []),
        env=env,
    )


def unmount_host(host: Host) -> list[str]:
    """Take ``host`` down whatever state it is in; stop its daemon.  Returns what went wrong.

    ``cassfs down``; if that fails, a lazy ``fusermount3 -u -z`` and SIGKILL of the mount
    process recorded in the run dir; then ``shutdown`` of the daemon if no session is left.
    """
    problems: list[str] = []
    if os.path.ismount(host.mnt):
        try:
            result = cassfs("down", str(host.mnt), env=host.env, timeout=60)
            if result.returncode != 0:
                problems.append(f"cassfs down {host.mnt}: {result.stderr.strip()[-500:]}")
        except subprocess.TimeoutExpired:
            problems.append(f"cassfs down {host.mnt} took over 60 s")
        if os.path.ismount(host.mnt):
            fusermount = shutil.which("fusermount3") or "fusermount3"
            subprocess.run([fusermount, "-u", "-z", str(host.mnt)], check=False, timeout=30)
            _kill_front(host)
    if socket_path(host.cache_dir).exists():
        try:
            status = call_once(host.cache_dir, "status", timeout=2)
            if status.get("sessions") == 0:
                call_once(host.cache_dir, "shutdown", timeout=2)
        except (CassfsError, OSError):
            pass
    return problems


def _kill_front(host: Host) -> None:
    """SIGKILL the mount process of ``host`` (from its run-dir record), if any."""
    from cassfs.state import MountRecord

    records = Path(host.env["CASSFS_RUN_DIR"]) / "mounts"
    for record in records.glob("*.json") if records.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, TypeError):
            found = MountRecord(**json.loads(record.read_text()))
            if Path(found.mountpoint) == host.mnt:
                os.kill(found.pid, signal.SIGKILL)


# -- the run --------------------------------------------------------------------------------

WORKER_WEIGHTS = {
    "create": 14,
    "rewrite_inplace": 12,
    "rewrite_rename": 10,
    "rename": 22,
    "unlink": 10,
    "mkdir": 8,
    "rmdir": 8,
    "read": 16,
}

#: errnos that the race itself explains, per (operation kind, failing step).
EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("create", "open"): frozenset({"EEXIST", "ENOENT", "ENOTDIR"}),
    ("rewrite_inplace", "open"): frozenset({"ENOENT", "EISDIR", "ENOTDIR"}),
    ("rewrite_rename", "open"): frozenset({"ENOENT", "ENOTDIR"}),
    ("rewrite_rename", "rename"): frozenset({"ENOENT", "EISDIR", "ENOTDIR"}),
    ("rename_same", "rename"): frozenset({"ENOENT", "EISDIR", "ENOTDIR", "ENOTEMPTY", "EINVAL"}),
    ("rename_cross", "rename"): frozenset({"ENOENT", "EISDIR", "ENOTDIR", "ENOTEMPTY", "EINVAL"}),
    ("rename_top", "rename"): frozenset({"ENOENT", "EISDIR", "ENOTDIR", "ENOTEMPTY", "EINVAL"}),
    ("unlink", "unlink"): frozenset({"ENOENT", "EISDIR", "ENOTDIR"}),
    ("mkdir", "mkdir"): frozenset({"EEXIST", "ENOENT", "ENOTDIR"}),
    ("rmdir", "rmdir"): frozenset({"ENOENT", "ENOTDIR", "ENOTEMPTY"}),
    ("read", "open"): frozenset({"ENOENT", "EISDIR", "ENOTDIR"}),
    ("read", "read"): frozenset({"EISDIR"}),  # a directory opens O_RDONLY, then read fails
}
#: ``Op.detail`` of a successful rename that moved a directory.
MOVED_DIRECTORY = "directory"
#: A former known limit: a path walk through a directory that another host moved lately
#: failed with ESTALE now and then.  The kernel holds one dentry per directory node, and its
#: attempt to move the old dentry to the new name (``__d_unalias``, try-locks only) failed
#: while the old parent was locked.  The front now gives such a directory a node of its own
#: (``cassfs.inodes``), so the kernel never moves a dentry: the short run fails on any.
ESTALE_AFTER_REMOTE_DIR_MOVE = "estale-after-remote-dir-move"
#: ``Op.kind`` of a rename, seen by the checker, that moved a directory its own host's
#: kernel did not know was there (another host had just moved it onto the source name).
CHAINED_DIR_MOVE = "chained-dir-move"
#: errnos explained when the daemon of the operation's host was killed during it.
FAULT_ERRNOS = frozenset({"EIO", "ENOTCONN", "ECONNABORTED"})
#: What a file's vanished inode is reported as (the front says ESTALE, the daemon ENOENT):
#: explained for a descriptor whose file another host removed or replaced meanwhile.
VANISHED = frozenset({"ENOENT", "ESTALE"})
#: Kinds that can remove the name at ``src`` (and ``dst`` for renames, replaced).
REMOVERS = frozenset(
    {
        "unlink",
        "rmdir",
        "rename_same",
        "rename_cross",
        "rename_top",
        "drop_unlink",
        "drop_rename",
    }
)


class Race:
    """One run: hosts, threads, fault injection, the final walk and the verdicts."""

    def __init__(self, cfg: RaceConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.history = History()
        self.tenant = (secrets.randbelow(2**31 - 2) + 2, f"race{secrets.token_hex(5)}")
        self.env = {**os.environ, "CASSFS_RUN_DIR": str(workdir / "run")}
        self.hosts: list[Host] = []
        self.stop = threading.Event()
        self.inflight: dict[str, Op] = {}  # thread name -> its operation in flight
        self.tops = [f"d{k}" for k in range(cfg.dirs)]
        self.leaves = [f"d{k}/n{j}" for k in range(cfg.dirs) for j in range(cfg.names)]

    # -- helpers ----------------------------------------------------------------------------

    def path(self, host: int, rel: str) -> Path:
        """The absolute path of ``rel`` on ``host``'s mount."""
        return self.hosts[host].mnt / rel

    @contextlib.contextmanager
    def running(self, op: Op) -> Iterator[Op]:
        """Mark ``op`` in flight for this thread (hang detection) while the block runs."""
        name = threading.current_thread().name
        self.inflight[name] = op
        try:
            yield op
        finally:
            self.inflight.pop(name, None)

    def write_file(self, host: int, op: Op, fd: int, vid: str, t_open: float) -> bool:
        """Write version ``vid`` whole to ``fd`` and close it; True if every syscall said 0.

        Logs the inode's events (``vid`` acknowledged when close returned 0) and ends
        ``op`` with the failing step's errno, if any.
        """
        data = make_content(vid, self.cfg.size)
        try:
            op.ino = os.fstat(fd).st_ino
        except OSError:
            op.ino = 0
        t_write = time.monotonic()
        error: OSError | None = None
        step = ""
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.EIO, f"write returned {written}")
                view = view[written:]
        except OSError as exc:
            error, step = exc, "write"
        try:
            os.close(fd)
        except OSError as exc:
            if error is None:
                error, step = exc, "close"
        t_end = time.monotonic()
        acked = error is None
        self.history.event(op.ino, vid, t_write, t_end, acked)
        if error is not None:
            # the truncated buffer may have been published by close: empty is possible
            self.history.event(op.ino, EMPTY, t_write, t_end, False)
        self.history.end(op, error, step)
        return acked

    def read_file(self, host: int, rel: str, lane: tuple[int, int] | None, kind: str) -> None:
        """Read ``rel`` whole on ``host`` and log the verdict (checked by :func:`analyze`)."""
        op = self.history.begin(kind, host, rel)
        with self.running(op):
            read = Read(host, rel, lane, op.t0, 0.0, None)
            try:
                fd = os.open(self.path(host, rel), os.O_RDONLY)
            except OSError as exc:
                self.history.end(op, exc, "open")
                read.err = errname(exc)
            else:
                chunks: list[bytes] = []
                try:
                    read.ino = os.fstat(fd).st_ino
                    while sum(map(len, chunks)) <= 4 * self.cfg.size:
                        chunk = os.read(fd, 1 << 20)
                        if not chunk:
                            break
                        chunks.append(chunk)
                except OSError as exc:
                    read.err = errname(exc)
                    self.history.end(op, exc, "read")
                try:
                    os.close(fd)  # a flush: a read-only descriptor's close must not fail
                except OSError as exc:
                    if not read.err:
                        read.err = errname(exc)
                        self.history.end(op, exc, "close")
                if not read.err:
                    read.verdict = judge(b"".join(chunks), self.cfg.size)
                    self.history.end(op)
            read.t1 = time.monotonic()
            op.ino = read.ino
            with self.history.lock:
                self.history.reads.append(read)

    # -- set-up -----------------------------------------------------------------------------

    def setup(self) -> None:
        """Mount the hosts; make the top directories and the lanes; wait until all see them."""
        for index in range(self.cfg.hosts):
            self.hosts.append(
                mount_host(self.cfg, self.tenant, self.workdir, f"host{index}", index, self.env)
            )
        for top in self.tops:
            os.mkdir(self.path(0, top))
        for h in range(self.cfg.hosts):
            os.mkdir(self.path(h, f"lane{h}"))
            for f in range(self.cfg.lane_files):
                if not self.lane_write(h, f, in_place=False, vid=None):
                    raise HarnessError(f"the first write of lane{h}/f{f} failed")
        names = self.tops + [
            f"lane{h}/f{f}" for h in range(self.cfg.hosts) for f in range(self.cfg.lane_files)
        ]
        deadline = time.monotonic() + 30 + self.cfg.cache_ttl + self.cfg.negative_ttl
        for h in range(self.cfg.hosts):
            while not all(self.path(h, n).exists() for n in names):
                if time.monotonic() > deadline:
                    missing = [n for n in names if not self.path(h, n).exists()]
                    raise HarnessError(f"host{h} does not see {missing} after set-up")
                time.sleep(0.05)

    # -- lanes ------------------------------------------------------------------------------

    def lane_write(self, h: int, f: int, in_place: bool, vid: str | None) -> bool:
        """Rewrite ``laneH/fF`` with ``vid`` (a new version if None); True if acknowledged.

        In place: ``open(O_TRUNC)``, write, close.  Otherwise a new temp file, written,
        closed and renamed over the lane file.  Acknowledged = every syscall returned 0.
        """
        rel = f"lane{h}/f{f}"
        vid = vid or self.history.new_vid(f"h{h}L")
        op = self.history.begin("lane_inplace" if in_place else "lane_rename", h, rel)
        with self.running(op):
            if in_place:
                flags, target = os.O_WRONLY | os.O_CREAT | os.O_TRUNC, rel
            else:
                flags, target = os.O_WRONLY | os.O_CREAT | os.O_EXCL, f"lane{h}/.tmp{op.t0:.6f}"
            try:
                fd = os.open(self.path(h, target), flags, 0o644)
            except OSError as exc:
                self.history.end(op, exc, "open")
            else:
                t_open = time.monotonic()
                self.write_file(h, op, fd, vid, t_open)
                # in place, the truncation may be published; a temp file starts empty
                self.history.event(op.ino, EMPTY, op.t0, t_open, not in_place)
                if not in_place and op.done:
                    try:
                        os.rename(self.path(h, target), self.path(h, rel))
                    except OSError as exc:
                        self.history.end(op, exc, "rename")
                        with contextlib.suppress(OSError):
                            os.unlink(self.path(h, target))
                    else:
                        op.t1 = time.monotonic()
            with self.history.lock:
                self.history.lanes[(h, f)].append(LaneWrite(vid, op.t0, op.t1, op.done, in_place))
            return op.done

    def lane_writer(self, h: int, rng: random.Random) -> None:
        """Host ``h``'s only writer of its lane until the run stops."""
        mine: list[str] = []
        while not self.stop.is_set():
            f = rng.randrange(self.cfg.lane_files)
            choice = rng.random()
            with self.history.lock:
                last = next((w.vid for w in reversed(self.history.lanes[(h, f)]) if w.acked), None)
            if choice < 0.2 and last:
                vid: str | None = last  # the same content again
            elif choice < 0.4 and mine:
                vid = rng.choice(mine)  # an older content again: A -> B -> A
            else:
                vid = None
            self.lane_write(h, f, in_place=rng.random() < 0.5, vid=vid)
            with self.history.lock:
                mine.append(self.history.lanes[(h, f)][-1].vid)
            self.stop.wait(rng.uniform(0, 0.03))

    # -- chaos workers ----------------------------------------------------------------------

    def worker(self, h: int, w: int, rng: random.Random) -> None:
        """Random operations on the shared namespace through host ``h`` until the run stops."""
        kinds = list(WORKER_WEIGHTS)
        weights = list(WORKER_WEIGHTS.values())
        mine: list[str] = []  # versions this worker wrote
        made: list[str] = []  # directories this worker made
        while not self.stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            if kind == "create":
                self.do_create(h, w, rng.choice(self.leaves), mine)
            elif kind == "rewrite_inplace":
                self.do_rewrite(h, w, rng.choice(self.leaves), rng, mine, in_place=True)
            elif kind == "rewrite_rename":
                self.do_rewrite(h, w, rng.choice(self.leaves), rng, mine, in_place=False)
            elif kind == "rename":
                self.do_rename(h, rng)
            elif kind in ("unlink", "rmdir", "mkdir"):
                top = rng.random() < {"unlink": 0.05, "rmdir": 0.1, "mkdir": 0.3}[kind]
                rel = rng.choice(self.tops if top else self.leaves)
                if kind == "rmdir" and made and rng.random() < 0.6:
                    rel = made.pop(rng.randrange(len(made)))  # likely still an empty directory
                if self.do_simple(h, kind, rel) and kind == "mkdir":
                    made.append(rel)
            else:
                self.read_file(h, rng.choice(self.leaves), None, "read")
            self.stop.wait(rng.uniform(0, 0.02))

    def do_create(self, h: int, w: int, rel: str, mine: list[str]) -> None:
        """``open(O_CREAT|O_EXCL)`` + a new version + close; on EEXIST, stat the name again."""
        op = self.history.begin("create", h, rel)
        with self.running(op):
            try:
                fd = os.open(self.path(h, rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as exc:
                self.history.end(op, exc, "open")
                if exc.errno == errno.EEXIST:
                    self.followup(h, rel, op.t0)
                return
            t_open = time.monotonic()
            vid = self.history.new_vid(f"h{h}w{w}")
            mine.append(vid)
            self.write_file(h, op, fd, vid, t_open)
            self.history.event(op.ino, EMPTY, op.t0, t_open, True)

    def followup(self, h: int, rel: str, t0: float) -> None:
        """``lstat`` a name an exclusive create just found taken; log an ENOENT."""
        try:
            os.lstat(self.path(h, rel))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                with self.history.lock:
                    self.history.followups.append(
                        Followup(h, rel, t0, time.monotonic(), errname(exc))
                    )

    def do_rewrite(
        self, h: int, w: int, rel: str, rng: random.Random, mine: list[str], in_place: bool
    ) -> None:
        """Replace ``rel`` whole: in place (``O_TRUNC``) or a temp name renamed over it.

        The content is new (half the time), the file's current content again, or an older
        version this worker wrote (A -> B -> A).
        """
        vid: str | None = None
        choice = rng.random()
        if choice < 0.25:
            with contextlib.suppress(OSError):
                verdict = judge(self.path(h, rel).read_bytes(), self.cfg.size)
                if verdict.whole and verdict.vid:
                    vid = verdict.vid
        elif choice < 0.5 and mine:
            vid = rng.choice(mine)
        if vid is None:
            vid = self.history.new_vid(f"h{h}w{w}")
            mine.append(vid)
        if in_place:
            op = self.history.begin("rewrite_inplace", h, rel)
            target = rel
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        else:
            target = f"{rel.split('/')[0]}/.tmp-h{h}w{w}-{len(mine)}-{rng.randrange(10**9)}"
            op = self.history.begin("rewrite_rename", h, target, rel)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        with self.running(op):
            try:
                fd = os.open(self.path(h, target), flags, 0o644)
            except OSError as exc:
                self.history.end(op, exc, "open")
                return
            t_open = time.monotonic()
            self.write_file(h, op, fd, vid, t_open)
            # the truncation (in place) may be published; a new temp file is empty at first
            self.history.event(op.ino, EMPTY, op.t0, t_open, not in_place)
            if in_place or not op.done:
                return
            try:
                os.rename(self.path(h, target), self.path(h, rel))
            except OSError as exc:
                self.history.end(op, exc, "rename")
                with contextlib.suppress(OSError):
                    os.unlink(self.path(h, target))

    def do_rename(self, h: int, rng: random.Random) -> None:
        """Rename within a directory, across directories, or moving top-level directories."""
        k, j = rng.randrange(self.cfg.dirs), rng.randrange(self.cfg.names)
        choice = rng.random()
        if choice < 0.4:
            kind, src, dst = (
                "rename_same",
                f"d{k}/n{j}",
                f"d{k}/n{rng.randrange(self.cfg.names)}",
            )
        elif choice < 0.8:
            other = rng.randrange(self.cfg.dirs)
            kind, src, dst = (
                "rename_cross" if other != k else "rename_same",
                f"d{k}/n{j}",
                f"d{other}/n{rng.randrange(self.cfg.names)}",
            )
        elif choice < 0.9:
            kind, src, dst = "rename_top", f"d{k}", rng.choice(self.leaves)
        else:
            kind, src, dst = "rename_top", rng.choice(self.leaves), f"d{k}"
        op = self.history.begin(kind, h, src, dst)
        with self.running(op):
            try:
                moved_dir = stat.S_ISDIR(os.lstat(self.path(h, src)).st_mode)
            except OSError:
                moved_dir = False
            try:
                os.rename(self.path(h, src), self.path(h, dst))
            except OSError as exc:
                self.history.end(op, exc, "rename")
            else:
                self.history.end(op)
                with contextlib.suppress(OSError):  # what this host just put there
                    moved_dir = moved_dir or stat.S_ISDIR(os.lstat(self.path(h, dst)).st_mode)
                if moved_dir:
                    op.detail = MOVED_DIRECTORY

    def do_simple(self, h: int, kind: str, rel: str) -> bool:
        """unlink, rmdir or mkdir of ``rel``; True if it succeeded.

        After EEXIST from mkdir, the name is stat'ed again (see :meth:`followup`).
        """
        call: Callable[[Path], None] = {
            "unlink": os.unlink,
            "rmdir": os.rmdir,
            "mkdir": os.mkdir,
        }[kind]
        op = self.history.begin(kind, h, rel)
        with self.running(op):
            try:
                call(self.path(h, rel))
            except OSError as exc:
                self.history.end(op, exc, kind)
                if kind == "mkdir" and exc.errno == errno.EEXIST:
                    self.followup(h, rel, op.t0)
                return False
            self.history.end(op)
            return True

    # -- readers ----------------------------------------------------------------------------

    def reader(self, h: int, rng: random.Random) -> None:
        """Read shared names and other hosts' lane files whole until the run stops."""
        others = [o for o in range(self.cfg.hosts) if o != h]
        while not self.stop.is_set():
            if others and rng.random() < 0.6:
                o, f = rng.choice(others), rng.randrange(self.cfg.lane_files)
                self.read_file(h, f"lane{o}/f{f}", (o, f), "lane_read")
            else:
                self.read_file(h, rng.choice(self.leaves), None, "read")
            self.stop.wait(rng.uniform(0, 0.01))

    # -- faults -----------------------------------------------------------------------------

    def injector(self, rng: random.Random) -> None:
        """Kill daemons and drop connections at random moments until the run stops."""
        now = time.monotonic()
        next_kill = now + _gap(rng, self.cfg.kill_every)
        next_drop = now + _gap(rng, self.cfg.drop_every)
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_kill:
                self.kill_daemon(rng.randrange(self.cfg.hosts))
                next_kill = time.monotonic() + _gap(rng, self.cfg.kill_every)
            elif now >= next_drop:
                self.drop_connection(rng.randrange(self.cfg.hosts), rng)
                next_drop = time.monotonic() + _gap(rng, self.cfg.drop_every)
            else:
                self.stop.wait(min(next_kill, next_drop) - now)

    def kill_daemon(self, h: int) -> None:
        """SIGKILL host ``h``'s daemon; the fault window lasts until a new daemon answers.

        The mount starts the new daemon at its next request (the workers make plenty).
        A daemon that is not back within 60 s is a violation.
        """
        host = self.hosts[h]
        try:
            pid = host.daemon_pid()
        except (CassfsError, OSError, HarnessError) as exc:
            self.history.notes[f"kill skipped: {type(exc).__name__}"] += 1
            return
        window = [time.monotonic(), float("inf")]
        with self.history.lock:
            self.history.faults[h].append(window)
            self.history.kills += 1
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                os.stat(host.mnt / f"lane{h}" / "f0")  # a request, if the workers make none
            try:
                if host.daemon_pid(timeout=2) != pid:
                    # the mount connects right after the daemon answers: a little slack
                    window[1] = time.monotonic() + 0.5
                    return
            except (CassfsError, OSError, HarnessError):
                pass
            time.sleep(0.05)
        self.history.violate("daemon-not-back", f"host{h}'s daemon did not answer 60 s after kill")

    def drop_connection(self, h: int, rng: random.Random) -> None:
        """Send host ``h``'s daemon a mutating request on a raw connection and hang up.

        ``hello`` first (waiting for its reply), then create/mkdir/unlink/rename/write on
        names of the shared namespace (inode numbers from ``h``'s mount), then close after
        0 to 30 ms without reading the reply.
        """
        host = self.hosts[h]
        method = rng.choice(["create", "mkdir", "unlink", "rename", "rename", "write"])
        k, j = rng.randrange(self.cfg.dirs), rng.randrange(self.cfg.names)
        rel = f"d{k}/n{j}"
        try:
            parent = os.stat(self.path(h, f"d{k}")).st_ino
            params: dict[str, Any]
            dst = ""
            if method in ("create", "mkdir"):
                mode = 0o644 if method == "create" else 0o755
                params = {"parent": parent, "name": rel.split("/")[1].encode(), "mode": mode}
                params |= {"uid": 0, "gid": 0}
            elif method == "unlink":
                params = {"parent": parent, "name": f"n{j}".encode()}
            elif method == "rename":
                other = rng.randrange(self.cfg.dirs)
                dst = f"d{other}/n{rng.randrange(self.cfg.names)}"
                params = {
                    "old_parent": parent,
                    "old_name": f"n{j}".encode(),
                    "new_parent": os.stat(self.path(h, f"d{other}")).st_ino,
                    "new_name": dst.split("/")[1].encode(),
                    "flags": 0,
                }
            else:
                st = os.stat(self.path(h, rel))
                if not stat.S_ISREG(st.st_mode):
                    return
                vid = self.history.new_vid(f"h{h}drop")
                params = {"ino": st.st_ino, "data": make_content(vid, self.cfg.size)}
        except OSError:
            return  # the names moved under us: try another time
        if any(
            v >= ALIAS_BASE
            for k, v in params.items()
            if k in ("parent", "old_parent", "new_parent", "ino")
        ):
            return  # a node of its own on that mount (cassfs.inodes), not an inode number
        op = self.history.begin(f"drop_{method}", h, rel, dst)
        try:
            reply = send_and_hang_up(
                host.cache_dir, self.tenant, method, params, rng.uniform(0, 0.03)
            )
        except (OSError, CassfsError, protocol.ProtocolError) as exc:
            op.t1 = time.monotonic()
            op.outcome = "error"
            op.detail = str(exc)
            self.history.notes[f"drop failed to connect: {type(exc).__name__}"] += 1
            return
        # the daemon may go on with the request after the hang-up: count it as in flight
        op.t1 = time.monotonic() + 15
        op.outcome = "pending"
        if method == "write":
            self.history.event(params["ino"], vid, op.t0, op.t1, False)
        with self.history.lock:
            self.history.drops += 1
        if reply is not None and reply.error is not None:
            err = reply.error
            code = errno.errorcode.get(err[0], str(err[0])) if isinstance(err, list) else err
            if code == "EINVAL":
                self.history.notes[f"drop_{method} rejected: {str(err[1])[:80]}"] += 1
            else:
                self.history.notes[f"drop_{method} answered {code} before the hang-up"] += 1

    # -- the whole run ----------------------------------------------------------------------

    def run_load(self) -> float:
        """Run workers, lane writers, readers and the injector for ``seconds``; return when.

        Threads still busy 60 s after the stop are reported as ``hung`` (their operation).
        """
        cfg = self.cfg
        master = random.Random(cfg.seed)
        threads: list[threading.Thread] = []

        def spawn(name: str, target: Callable[..., None], *args: Any) -> None:
            rng = random.Random(master.getrandbits(64))
            thread = threading.Thread(
                target=self.guard, args=(target, *args, rng), name=name, daemon=True
            )
            threads.append(thread)

        for h in range(cfg.hosts):
            for w in range(cfg.workers):
                spawn(f"h{h}-worker{w}", self.worker, h, w)
            spawn(f"h{h}-lane", self.lane_writer, h)
            for r in range(cfg.readers):
                spawn(f"h{h}-reader{r}", self.reader, h)
        if cfg.kill_every > 0 or cfg.drop_every > 0:
            spawn("injector", self.injector)
        for thread in threads:
            thread.start()
        self.stop.wait(cfg.seconds)
        self.stop.set()
        stopped = time.monotonic()
        deadline = stopped + 60
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for name, op in list(self.inflight.items()):
            self.history.violate(
                "hung",
                f"{name}: {op.kind} {op.src} {op.dst} on host{op.host} still in flight "
                f"{time.monotonic() - op.t0:.0f} s after it began (the run stopped)",
            )
        return stopped

    def guard(self, target: Callable[..., None], *args: Any) -> None:
        """Run a thread's loop; an unexpected exception is a harness failure, logged."""
        try:
            target(*args)
        except Exception as exc:
            self.history.notes[f"thread crashed: {type(exc).__name__}: {exc}"] += 1
            self.history.violate("harness", f"{threading.current_thread().name}: {exc!r}")


def _gap(rng: random.Random, mean: float) -> float:
    """A random gap around ``mean`` seconds (inf when ``mean`` is 0: never)."""
    return rng.uniform(0.5, 1.5) * mean if mean > 0 else float("inf")


def send_and_hang_up(
    cache_dir: Path, tenant: tuple[int, str], method: str, params: dict[str, Any], delay: float
) -> protocol.Response | None:
    """Say ``hello`` for ``tenant``, send ``method(params)``, wait ``delay`` s, close.

    Returns the reply if one came before the close (None otherwise: the usual case).
    Raises OSError when the daemon cannot be reached, and the error of a refused hello.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(socket_path(cache_dir)))
        sock.sendall(
            protocol.pack_request(1, "hello", {"owner": tenant[0], "environment": tenant[1]})
        )
        decoder = protocol.Decoder()
        hello: protocol.Response | None = None
        while hello is None:
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionResetError("the daemon closed the connection after hello")
            for message in decoder.feed(data):
                if isinstance(message, protocol.Response) and message.msgid == 1:
                    hello = message
        if hello.error is not None:
            raise ConnectionRefusedError(f"hello refused: {hello.error!r}")
        sock.sendall(protocol.pack_request(2, method, params))
        time.sleep(delay)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError, OSError):
            data = sock.recv(1 << 20)
            for message in decoder.feed(data):
                if isinstance(message, protocol.Response) and message.msgid == 2:
                    return message
    return None


# -- the final walk -------------------------------------------------------------------------


@dataclass
class Walk:
    """What a fresh host sees: files (path -> (ino, verdict)), namespace problems."""

    files: dict[str, tuple[int, Verdict]] = field(default_factory=dict)
    unreadable: set[str] = field(default_factory=set)
    names_of: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    problems: list[Violation] = field(default_factory=list)
    entries: int = 0


def walk(root: Path, size: int, max_entries: int = 100_000) -> Walk:
    """Walk the tree below ``root``: stat every listed name, read every file whole.

    Findings: ``dangling-name`` (a listed name that does not stat), ``unreadable``
    (a directory that does not list, a file that does not read), ``two-names`` (one inode
    under two names), ``nlink`` (a file whose nlink is not 1).  Bounded by ``max_entries``.
    """
    result = Walk()
    pending = [""]
    while pending and result.entries < max_entries:
        rel_dir = pending.pop()
        try:
            names = sorted(os.listdir(root / rel_dir))
        except OSError as exc:
            result.problems.append(Violation("unreadable", f"listdir {rel_dir or '/'}: {exc}"))
            continue
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            result.entries += 1
            try:
                st = os.lstat(root / rel)
            except OSError as exc:
                result.problems.append(Violation("dangling-name", f"{rel}: listed, lstat: {exc}"))
                continue
            result.names_of[st.st_ino].append(rel)
            if len(result.names_of[st.st_ino]) > 1:
                continue  # reported below; do not walk a directory twice (a cycle)
            if stat.S_ISDIR(st.st_mode):
                pending.append(rel)
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink != 1:
                    result.problems.append(Violation("nlink", f"{rel}: nlink {st.st_nlink}"))
                try:
                    data = (root / rel).read_bytes()
                except OSError as exc:
                    result.problems.append(Violation("unreadable", f"read {rel}: {exc}"))
                    result.unreadable.add(rel)
                    continue
                result.files[rel] = (st.st_ino, judge(data, size))
    for ino, paths in result.names_of.items():
        if len(paths) > 1:
            result.problems.append(Violation("two-names", f"inode {ino} under {sorted(paths)}"))
    return result


#: Walk findings that an unfinished cross-directory rename explains until its grace period
#: has passed (both names visible; the claimed name's inode counted once).
GRACE_KINDS = frozenset({"two-names", "dangling-name", "nlink"})


# -- analysis -------------------------------------------------------------------------------


def path_and_parents(rel: str) -> list[str]:
    """``rel`` and every directory above it, top first: ``a/b/c`` -> ``a``, ``a/b``, ``a/b/c``."""
    parts = rel.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def analyze(cfg: RaceConfig, history: History, final: Walk | None) -> list[Violation]:
    """Check the log (and the final walk's files) against the invariants; the violations."""
    found: list[Violation] = []
    ops = sorted(history.ops, key=lambda op: op.t0)
    bound = cfg.cache_ttl + cfg.entry_ttl + cfg.slack  # how long a host may see the past
    removers: dict[str, list[Op]] = defaultdict(list)  # path -> ops that may remove the name
    replacers: dict[str, list[Op]] = defaultdict(list)  # path -> ops that may put another inode
    for op in ops:
        if not (op.done or op.uncertain):
            continue
        if op.kind in REMOVERS:
            removers[op.src].append(op)
            if op.kind.startswith(("rename", "drop_rename")) and op.dst:
                removers[op.dst].append(op)  # a directory replaced by another (empty) one
        if op.dst and op.kind.startswith(("rename", "drop_rename", "rewrite_rename")):
            replacers[op.dst].append(op)

    def touched(
        index: dict[str, list[Op]],
        rel: str,
        t0: float,
        t1: float,
        stale: float,
        counts: Callable[[Op], bool] = lambda r: True,
    ) -> bool:
        """True if an op of ``index`` on ``rel`` or a parent, one that ``counts``, overlaps
        ``[t0 - stale, t1]``."""
        return any(
            r.t0 <= t1 and t0 - stale <= r.t1 and counts(r)
            for p in path_and_parents(rel)
            for r in index.get(p, [])
        )

    dir_moves: dict[str, list[Op]] = defaultdict(list)  # path -> directories moved onto it
    moved_away: dict[str, list[Op]] = defaultdict(list)  # path -> directories moved from it
    for op in sorted(ops, key=lambda o: o.t1):
        if op.done and op.detail == MOVED_DIRECTORY:
            dir_moves[op.dst].append(op)
            moved_away[op.src].append(op)
        elif op.kind == "drop_rename" and op.dst:
            dir_moves[op.dst].append(op)  # an RPC no kernel was told of; maybe a directory
            moved_away[op.src].append(op)
        elif (
            op.done
            and op.dst
            and op.kind.startswith("rename")
            and any(op.t0 - bound <= move.t1 <= op.t1 for move in dir_moves.get(op.src, []))
        ):
            # Renames act on names: this host renamed what its kernel took for the entry
            # at src (within its entry TTL), and moved the directory another host had
            # just put there.  No kernel saw that directory move: count it as unseen.
            dir_moves[op.dst].append(replace(op, kind=CHAINED_DIR_MOVE))

    def dir_moved_elsewhere(op: Op) -> bool:
        """True if another host (or a dropped connection's rename, which no kernel saw)
        moved a directory onto or away from a component of ``op``'s paths before ``op``
        ended.

        This host's kernel may still hold the directory's old dentry (at its old name,
        or the dentry of what its new name held): see :data:`ESTALE_AFTER_REMOTE_DIR_MOVE`.
        No lower bound in time: the kernel keeps a dentry until a walk through its name
        revalidates it (the entry timeout only marks it for that), so a host that has not
        walked the old name since still holds it (CI saw one 5 s after the window this
        check had).
        """
        for path in filter(None, (op.src, op.dst)):
            for prefix in path_and_parents(path):
                for move in (*dir_moves.get(prefix, []), *moved_away.get(prefix, [])):
                    unseen = move.host != op.host or move.kind in ("drop_rename", CHAINED_DIR_MOVE)
                    if unseen and move.t0 <= op.t1:
                        return True
        return False

    def removed_elsewhere(rel: str, host: int, t0: float, t1: float) -> bool:
        """True if another host (or a dropped connection's request, which no kernel saw)
        may have removed ``rel`` (or a parent) in ``[t0 - bound, t1]``: a host may still
        see it up to ``bound`` seconds later (the README's consistency model)."""
        return touched(
            removers, rel, t0, t1, bound, lambda r: r.host != host or r.kind.startswith("drop_")
        )

    def may_be_removed(rel: str, t0: float, t1: float, stale: float = 0.0) -> bool:
        """True if the name ``rel`` (or a parent) may have been removed in ``[t0 - stale, t1]``.

        ``stale``: a host may act on a name through kernel entries and a daemon cache up to
        ``bound`` seconds old, so a path it uses may name what was there that long ago.
        """
        return touched(removers, rel, t0, t1, stale)

    # unexplained errnos
    for op in ops:
        if op.done or op.outcome == "pending" or op.kind.startswith("drop_"):
            continue
        if op.outcome in EXPECTED.get((op.kind, op.step), frozenset()):
            continue
        if op.outcome in FAULT_ERRNOS and history.in_fault(op.host, op.t0, op.t1):
            continue
        path = op.dst if op.kind == "rewrite_rename" else op.src
        if (
            op.step in ("write", "close")
            and op.outcome in VANISHED
            and op.kind in ("create", "rewrite_inplace", "rewrite_rename")
            and (final is None or op.ino not in final.names_of)
            and (
                may_be_removed(path, op.t0, op.t1, bound)
                or touched(replacers, path, op.t0, op.t1, bound)
            )
        ):
            continue  # another host removed or replaced the file while it was open here
        if (
            op.kind == "read"
            and op.step == "read"
            and op.outcome in VANISHED
            and may_be_removed(op.src, op.t0, op.t1, bound)
        ):
            continue  # the name vanished (another host unlinked the file being read)
        if op.outcome == "ESTALE" and dir_moved_elsewhere(op):
            history.limits.append(
                Violation(
                    ESTALE_AFTER_REMOTE_DIR_MOVE,
                    f"host{op.host} {op.kind} {op.src}{' -> ' + op.dst if op.dst else ''}: "
                    f"{op.step} ESTALE at +{op.t0 - history.start:.2f} s",
                )
            )
            continue
        if op.outcome == "EEXIST" and op.step == "open" and op.kind != "create":
            kind = "eexist-without-excl"  # open(O_CREAT) without O_EXCL never says EEXIST
        else:
            kind = f"unexplained-errno {op.kind}/{op.step} {op.outcome}"
        found.append(
            Violation(
                kind,
                f"host{op.host} {op.kind} {op.src}{' -> ' + op.dst if op.dst else ''}: "
                f"{op.step} {op.outcome} ({op.detail}) at +{op.t0 - history.start:.2f} s",
            )
        )
    found += _check_names(ops, history, may_be_removed, removed_elsewhere, bound)
    found += _check_reads(cfg, history, history.start)
    found += _check_lanes_final(cfg, history, final)
    if final is not None:
        found += _check_inodes_final(history, final)
    return found


def _check_names(
    ops: list[Op],
    history: History,
    may_be_removed: Callable[[str, float, float, float], bool],
    removed_elsewhere: Callable[[str, int, float, float], bool],
    bound: float,
) -> list[Violation]:
    """EEXIST then ENOENT; two exclusive creates both winning; directory cycles."""
    found: list[Violation] = []
    for f in history.followups:
        parent = f.path.rpartition("/")[0]
        # This host's own removals show at once; another host's may show up to the
        # bound late, so the EEXIST may come from a view of the name before one.
        if not may_be_removed(f.path, f.t0, f.t1, 0.0) and not (
            removed_elsewhere(f.path, f.host, f.t0, f.t1)
            or (parent and may_be_removed(parent, f.t0, f.t1, bound))  # a stale parent
        ):
            found.append(
                Violation(
                    "eexist-then-enoent",
                    f"host{f.host}: {f.path} EEXIST on create, then lstat {f.err} "
                    f"{f.t1 - f.t0:.3f} s later; nothing removed it meanwhile",
                )
            )
    creators: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind in ("create", "mkdir") and (op.done or op.step not in ("open", "mkdir")):
            creators[op.src].append(op)
    for rel, made in creators.items():
        for first, second in itertools.pairwise(made):
            # the first create may have gone through a stale view of a moved parent
            if not may_be_removed(rel, first.t0, second.t1, bound):
                found.append(
                    Violation(
                        "double-create",
                        f"{rel}: {first.kind} on host{first.host} and {second.kind} on "
                        f"host{second.host} both succeeded ({second.t0 - first.t0:.3f} s apart)"
                        ", and nothing removed the name between them",
                    )
                )
    moves = [op for op in ops if op.kind == "rename_top" and op.done and "/" in op.dst]
    # A top-level name made again while the two moves ran names another directory: moving
    # one into the new one forms no cycle.
    remakers: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind in ("mkdir", "drop_mkdir") and (op.done or op.kind.startswith("drop_")):
            remakers[op.src].append(op)
        elif op.dst and op.kind.startswith(("rename", "drop_rename")):
            remakers[op.dst].append(op)

    def remade(name: str, t0: float, t1: float) -> bool:
        return any(r.t0 <= t1 and t0 <= r.t1 for r in remakers.get(name, []))

    for a in moves:
        for b in moves:
            if (
                a is not b
                and a.t0 < b.t0 <= a.t1
                and b.src == a.dst.split("/")[0]
                and a.src == b.dst.split("/")[0]
                and not remade(a.src, a.t0, max(a.t1, b.t1))
                and not remade(b.src, a.t0, max(a.t1, b.t1))
            ):
                found.append(
                    Violation(
                        "dir-cycle",
                        f"{a.src} -> {a.dst} on host{a.host} and {b.src} -> {b.dst} on "
                        f"host{b.host} both succeeded at the same time",
                    )
                )
    return found


def _check_reads(cfg: RaceConfig, history: History, start: float) -> list[Violation]:
    """Every read during the run: whole versions, written to that inode, fresh enough."""
    found: list[Violation] = []
    bound = cfg.cache_ttl + cfg.entry_ttl + cfg.slack
    writers_by_host: dict[int, list[Op]] = defaultdict(list)
    for op in history.ops:
        if op.kind in ("create", "rewrite_inplace", "lane_inplace"):
            writers_by_host[op.host].append(op)
    lane_acked = {
        key: sorted((w for w in writes if w.acked), key=lambda w: w.t1)
        for key, writes in history.lanes.items()
    }
    for read in history.reads:
        at = f"host{read.host} {read.path} at +{read.t0 - start:.2f} s"
        if read.err:
            continue  # judged with the operations (unexplained-errno)
        verdict = read.verdict
        assert verdict is not None
        if verdict.problem:
            # the writing host's readers see an in-place write as it happens (as on a disk)
            local = verdict.vid is not None and any(
                w.t0 <= read.t1
                and read.t0 <= w.t1
                and (w.src == read.path or (w.ino and w.ino == read.ino) or not w.ino)
                for w in writers_by_host[read.host]
            )
            if not local:
                found.append(Violation("torn-read", f"{at}: {verdict.problem}"))
            continue
        vid = verdict.vid or EMPTY
        if read.ino and vid and not _written_to(history, read.ino, vid, read.t1):
            found.append(
                Violation(
                    "foreign-content", f"{at}: version {vid} never written to inode {read.ino}"
                )
            )
        if read.lane is None:
            continue
        writes = history.lanes[read.lane]
        if vid == EMPTY:
            if any(w.in_place and not w.acked and w.t0 <= read.t1 for w in writes):
                continue  # a failed in-place rewrite may have left it empty
            # An in-place rewrite truncates the inode first (an unacknowledged empty event);
            # a temp file renamed over the name was empty only before it had that name.
            truncated = [
                e
                for e in history.events.get(read.ino, [])
                if e.vid == EMPTY and not e.acked and e.t0 <= read.t1 and read.t0 - bound <= e.t1
            ]
            if truncated or any(w.in_place and w.t0 <= read.t1 and read.t0 <= w.t1 for w in writes):
                ago = max((read.t0 - e.t1 for e in truncated), default=0.0)
                found.append(
                    Violation(
                        "empty-mid-rewrite",
                        f"{at}: empty, the state of an in-place rewrite "
                        f"{'under way' if ago <= 0 else f'{ago:.2f} s old'}",
                    )
                )
            else:
                found.append(
                    Violation(
                        "empty-read",
                        f"{at}: empty; inode {read.ino} was empty only as a temp file before "
                        "it was renamed over this name",
                    )
                )
            continue
        producers = [w for w in writes if w.vid == vid and w.t0 <= read.t1]
        if not producers:
            found.append(Violation("foreign-content", f"{at}: version {vid} is not this lane's"))
            continue
        latest = max(producers, key=lambda w: w.t0)
        acked = lane_acked.get(read.lane, [])
        index = bisect.bisect_right([w.t1 for w in acked], read.t0 - bound) - 1
        if index >= 0 and latest.t1 < acked[index].t0:
            found.append(
                Violation(
                    "stale-read",
                    f"{at}: version {vid} (written until +{latest.t1 - start:.2f} s); "
                    f"{acked[index].vid} was acknowledged at +{acked[index].t1 - start:.2f} s, "
                    f"more than {bound:.1f} s before the read",
                )
            )
    return found


def _written_to(history: History, ino: int, vid: str, before: float) -> bool:
    """True if some write may have put ``vid`` on inode ``ino`` by ``before``.

    ``ino`` at or above :data:`~cassfs.inodes.ALIAS_BASE` is a node the mount made for a
    newer version (or a moved directory) of an inode it does not name: ``vid`` written
    to any inode then passes.
    """
    if vid in history.unknown_ino_vids:
        return True
    if ino >= ALIAS_BASE:
        return any(e.vid == vid and e.t0 <= before for es in history.events.values() for e in es)
    return any(e.vid == vid and e.t0 <= before for e in history.events.get(ino, []))


def _check_lanes_final(cfg: RaceConfig, history: History, final: Walk | None) -> list[Violation]:
    """Each lane file holds its last acknowledged version or a later unacknowledged one."""
    found: list[Violation] = []
    if final is None:
        return found
    for (h, f), writes in sorted(history.lanes.items()):
        rel = f"lane{h}/f{f}"
        acked = [w for w in writes if w.acked]
        if not acked:
            continue
        last = max(acked, key=lambda w: w.t1)
        allowed = {last.vid} | {w.vid for w in writes if w.t0 > last.t1}
        if any(w.in_place and not w.acked and w.t0 > last.t1 for w in writes):
            allowed.add(EMPTY)
        if rel in final.unreadable:
            continue  # reported by the walk (unreadable)
        if rel not in final.files:
            found.append(Violation("lost-ack", f"{rel} is missing; {last.vid} was acknowledged"))
            continue
        verdict = final.files[rel][1]
        if verdict.whole and verdict.vid not in allowed:
            found.append(
                Violation(
                    "lost-ack",
                    f"{rel} holds {verdict.vid or 'nothing'}; {last.vid} was acknowledged "
                    f"and only {sorted(allowed - {last.vid}) or 'nothing'} came after",
                )
            )
    return found


def _check_inodes_final(history: History, final: Walk) -> list[Violation]:
    """Every file holds one whole version written to its inode, not older than an ack."""
    found: list[Violation] = []
    for rel, (ino, verdict) in sorted(final.files.items()):
        if not verdict.whole:
            found.append(Violation("torn-file", f"{rel} (inode {ino}): {verdict.problem}"))
            continue
        vid = verdict.vid or EMPTY
        events = history.events.get(ino, [])
        if vid in history.unknown_ino_vids:
            continue
        producers = [e for e in events if e.vid == vid]
        if not producers:
            if events or vid != EMPTY or not any(op.kind == "drop_create" for op in history.ops):
                found.append(
                    Violation(
                        "foreign-content",
                        f"{rel} (inode {ino}) holds {vid or 'nothing'}, never written to it",
                    )
                )
            continue
        latest = max(producers, key=lambda e: e.t1)
        lost = [e for e in events if e.acked and e.t0 > latest.t1]
        if lost:
            first = min(lost, key=lambda e: e.t0)
            found.append(
                Violation(
                    "lost-ack",
                    f"{rel} (inode {ino}) holds {vid or 'nothing'} (written by "
                    f"{latest.t1:.3f}), yet {first.vid or 'empty'} was acknowledged after "
                    f"({first.t0:.3f} to {first.t1:.3f})",
                )
            )
    return found


# -- driver ---------------------------------------------------------------------------------


@dataclass
class RaceReport:
    """The outcome of a run: counts per kind (attempts, successes, errnos), faults, verdicts."""

    seed: int
    tenant: tuple[int, str]
    operations: int
    kinds: dict[str, Counter[str]]
    kills: int
    drops: int
    violations: list[Violation]
    notes: Counter[str]
    limits: list[Violation]
    fsck: str
    pending_namespace: list[Violation]
    seconds: float
    timeline: list[str] = field(default_factory=list)
    start_wall: float = 0.0

    def summary(self) -> str:
        """``race: N operations, K daemon kills, D dropped connections, V violations``."""
        return (
            f"race: {self.operations} operations, {self.kills} daemon kills, "
            f"{self.drops} dropped connections, {len(self.violations)} violations, "
            f"{len(self.limits)} known-limit events"
        )

    def ok(self, kind: str) -> int:
        """How many operations of ``kind`` succeeded."""
        return self.kinds.get(kind, Counter())["ok"]

    def details(self, examples: int = 5) -> str:
        """Counts per kind, notes, fsck and up to ``examples`` violations of each kind."""
        lines = [
            f"seed {self.seed}, tenant {self.tenant[0]}/{self.tenant[1]}, {self.seconds:.0f} s"
        ]
        for kind, counts in sorted(self.kinds.items()):
            rest = ", ".join(f"{k} {n}" for k, n in counts.most_common() if k != "ok")
            lines.append(f"  {kind:16} {sum(counts.values()):6} run, {counts['ok']:6} ok  {rest}")
        lines += [f"  note: {note} x{n}" for note, n in sorted(self.notes.items())]
        lines += [f"  {event}" for event in self.timeline]
        lines.append(f"  fsck: {self.fsck}")
        if self.pending_namespace:
            lines.append(
                f"  namespace findings right after the run, re-checked after the grace period: "
                f"{len(self.pending_namespace)}"
            )
            lines += [f"    {v.kind}: {v.detail}" for v in self.pending_namespace[:examples]]
        limits: dict[str, list[Violation]] = defaultdict(list)
        for v in self.limits:
            limits[v.kind].append(v)
        for kind, items in sorted(limits.items()):
            lines.append(f"  KNOWN LIMIT (README) {kind}: {len(items)}")
            lines += [f"    {v.detail}" for v in items[:examples]]
        by_kind: dict[str, list[Violation]] = defaultdict(list)
        for v in self.violations:
            by_kind[v.kind].append(v)
        for kind, items in sorted(by_kind.items()):
            lines.append(f"  VIOLATION {kind}: {len(items)}")
            lines += [f"    {v.detail}" for v in items[:examples]]
        return "\n".join(lines)


#: fsck's codes for leftovers that crashes and cancelled requests leave by design (the
#: README: "a later request or fsck finishes what a dead one began"; fsck lists them and
#: ``--repair`` removes them past its grace period): counted, not violations.
ORPHAN_CODES = (
    "unlinked",
    "nameless",
    "stale-version",
    "orphan-index",
    "unindexed",
    "intent",
    "claim",
    "stale-seal",
)


@dataclass
class FsckResult:
    """``cassfs fsck`` for the tenant: ``status`` to report, ``problems`` (lines that are
    violations), ``orphans`` (lines per orphan label, not violations)."""

    status: str
    problems: list[str] = field(default_factory=list)
    orphans: Counter[str] = field(default_factory=Counter)


def run_fsck(cfg: RaceConfig, tenant: tuple[int, str], env: dict[str, str]) -> FsckResult:
    """Run ``cassfs fsck`` for ``tenant`` and sort its findings into problems and orphans.

    A cassfs without the command gives status ``not available`` (no violation).  Exit
    status 1 with only orphan lines (labels of :data:`ORPHAN_CODES`) is no violation; any
    other finding line, or an exit status other than 0 and 1, is.
    """
    try:
        from cassfs.fsck import LABELS  # the labels fsck prints its findings under

        orphan_labels = [LABELS[code] for code in ORPHAN_CODES if code in LABELS]
    except ImportError:
        orphan_labels = []
    try:
        result = cassfs(
            "fsck",
            "--owner",
            str(tenant[0]),
            "--environment",
            tenant[1],
            "--contact-points",
            cfg.contact_points,
            "--keyspace",
            cfg.keyspace,
            env=env,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        return FsckResult("did not finish in 600 s", ["fsck did not finish in 600 s"])
    output = (result.stdout + "\n" + result.stderr).strip()
    if result.returncode != 0 and "No such command" in output:
        return FsckResult("not available")
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    summary = next((line for line in reversed(lines) if line.startswith("fsck:")), "")
    found = FsckResult(f"exit {result.returncode}: {summary or '(no summary line)'}")
    for line in lines:
        if line is summary:
            continue
        label = next((lab for lab in orphan_labels if line.startswith(lab + ":")), None)
        if label is not None:
            found.orphans[label] += 1
        elif result.returncode != 0:
            found.problems.append(line)
    if result.returncode not in (0, 1) or (result.returncode == 1 and not found.orphans):
        found.problems = found.problems or [f"exit {result.returncode}: {output[-2000:]}"]
    return found


def run(cfg: RaceConfig, log: Callable[[str], None] = print) -> RaceReport:
    """Run the race described by ``cfg`` and check it; every mount is down when it returns.

    Raises :class:`HarnessError` when the hosts cannot be set up (no verdict then).
    """
    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="cassfs-race-"))
    workdir.mkdir(parents=True, exist_ok=True)
    race = Race(cfg, workdir)
    history = race.history
    checkers: list[Host] = []
    fsck = "not run"
    pending: list[Violation] = []
    final: Walk | None = None
    violations: list[Violation] = []
    started = time.monotonic()
    try:
        log(f"race: seed {cfg.seed}, {cfg.hosts} hosts, tenant {race.tenant}, in {workdir}")
        race.setup()
        stopped = race.run_load()
        log(f"race: load stopped after {stopped - started:.0f} s; quiescing")
        down_problems = [p for host in race.hosts for p in unmount_host(host)]
        for problem in down_problems:
            history.violate("unmount", problem)
        checker = mount_host(cfg, race.tenant, workdir, "check0", 99, race.env)
        checkers.append(checker)
        final = walk(checker.mnt, cfg.size)
        log(f"race: fresh host walked {final.entries} names, {len(final.files)} files")
        history.violations.extend(v for v in final.problems if v.kind not in GRACE_KINDS)
        namespace = [v for v in final.problems if v.kind in GRACE_KINDS]
        faulted = history.kills > 0 or history.drops > 0
        if namespace and faulted:
            # unfinished cross-directory renames may show both names until the grace period
            pending = namespace
            unmount_host(checker)
            wait = stopped + cfg.grace + 5 - time.monotonic()
            log(f"race: {len(namespace)} namespace findings; re-checking in {max(wait, 0):.0f} s")
            if wait > 0:
                time.sleep(wait)  # a deadline of the design (the grace period), not a poll
            checker = mount_host(cfg, race.tenant, workdir, "check1", 100, race.env)
            checkers.append(checker)
            again = walk(checker.mnt, cfg.size)
            namespace = [v for v in again.problems if v.kind in GRACE_KINDS]
        history.violations.extend(namespace)
        for host in checkers:
            unmount_host(host)
        if cfg.fsck:
            checked = run_fsck(cfg, race.tenant, race.env)
            fsck = checked.status
            for problem in checked.problems:
                history.violate("fsck", problem)
            for label, n in checked.orphans.items():
                history.notes[f"fsck orphan (left by faults; --repair removes it): {label}"] += n
        violations = history.violations + analyze(cfg, history, final)
    finally:
        race.stop.set()  # an exception (or ^C) while the load ran: stop the threads first
        for host in race.hosts + checkers:
            unmount_host(host)
        with contextlib.suppress(OSError):
            history.dump(workdir / "history.jsonl")
        found_some = bool(violations or history.limits or sys.exc_info()[0] is not None)
        if found_some and not cfg.keep and cfg.workdir is None:
            log(f"race: findings; kept {workdir} (history.jsonl, hosts' logs) for a post-mortem")
        elif not cfg.keep and cfg.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    operations = 0
    for op in history.ops:
        kinds[op.kind][f"{op.outcome}@{op.step}" if op.step else op.outcome] += 1
        operations += not op.kind.startswith("drop_")
    return RaceReport(
        seed=cfg.seed,
        tenant=race.tenant,
        operations=operations,
        kinds=dict(kinds),
        kills=history.kills,
        drops=history.drops,
        violations=violations,
        notes=history.notes,
        limits=history.limits,
        fsck=fsck,
        pending_namespace=pending,
        seconds=time.monotonic() - started,
        start_wall=history.start_wall,
        timeline=[
            f"kill -9 of host{h}'s daemon at +{a - history.start:.2f} s, "
            f"fault window until +{b - history.start:.2f} s"
            for h, windows in sorted(history.faults.items())
            for a, b in windows
        ],
    )


def main(argv: list[str] | None = None) -> int:
    """The command line; exit 0 (no violation), 1 (violations), 2 (the harness failed)."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.race", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (s)")
    parser.add_argument("--hosts", type=int, default=3, help="mounts, each its own daemon")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--workers", type=int, default=3, help="chaos threads per host")
    parser.add_argument("--readers", type=int, default=1, help="reader threads per host")
    parser.add_argument("--kill-every", type=float, default=8.0, help="mean s between kills")
    parser.add_argument("--drop-every", type=float, default=1.0, help="mean s between drops")
    parser.add_argument("--cache-ttl", type=float, default=1.0)
    parser.add_argument("--grace", type=float, default=60.0, help="rename grace period (s)")
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp work dir (kept after findings anyway)"
    )
    parser.add_argument("--no-fsck", action="store_true")
    parser.add_argument("--debug", action="store_true", help="mounts and daemons log every call")
    parser.add_argument(
        "--contact-points",
        default=os.environ.get("CASSFS_CONTACT_POINTS", "127.0.0.1:9042"),
    )
    parser.add_argument("--keyspace", default=os.environ.get("CASSFS_TEST_KEYSPACE", "cassfs_test"))
    args = parser.parse_args(argv)
    if args.hosts < 1:
        parser.error("--hosts must be at least 1")
    cfg = RaceConfig(
        seconds=args.seconds,
        hosts=args.hosts,
        seed=args.seed if args.seed is not None else secrets.randbelow(2**31),
        workers=args.workers,
        readers=args.readers,
        kill_every=args.kill_every,
        drop_every=args.drop_every,
        cache_ttl=args.cache_ttl,
        grace=args.grace,
        contact_points=args.contact_points,
        keyspace=args.keyspace,
        workdir=args.workdir,
        keep=args.keep,
        fsck=not args.no_fsck,
        debug=args.debug,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up on SIGTERM
    applied = cassfs(
        "schema",
        "apply",
        "--contact-points",
        cfg.contact_points,
        "--keyspace",
        cfg.keyspace,
        env=dict(os.environ),
    )
    if applied.returncode != 0:
        print(f"race: schema apply failed: {applied.stderr.strip()}", file=sys.stderr)
        return 2
    try:
        report = run(cfg)
    except HarnessError as exc:
        print(f"race: the harness could not run: {exc}", file=sys.stderr)
        return 2
    print(report.details())
    print(report.summary())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
