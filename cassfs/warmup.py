"""``cassfs cache warmup``: fetch a subtree of a mount into its daemon's local cache.

A new host, or one whose cache was purged, serves its first requests from Cassandra
(a cold file costs a few milliseconds; a cached one well under one).  Warming it up
before it takes traffic moves that cost out of the requests: this walks the given
paths on a cassfs mount and opens every regular file for reading.  The mount's open
fetches the whole file into the daemon's cache (and the lookups and listings on the
way its metadata), so no byte of content crosses into this process.

Files are opened by ``jobs`` threads at once: each open blocks, and the kernel and
the mount serve concurrent requests concurrently, so the daemon's queries to
Cassandra overlap.  Directories are listed by the walking thread meanwhile.
Opens use ``O_NOATIME`` where the caller may (so warming up records no access
time), ``O_NONBLOCK`` (never waits on a lock or a FIFO) and only regular files are
opened.  A file that vanishes during the walk is counted, not an error.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: Files opened at once by default.
DEFAULT_JOBS = 16
#: Errors kept for the report (the rest are counted).
MAX_ERRORS_KEPT = 20


@dataclass
class WarmupReport:
    """What a warmup did: files opened and their bytes (``st_size``), directories
    listed, files that vanished meanwhile, errors (``(path, message)``, the first
    :data:`MAX_ERRORS_KEPT`) and their count, and the wall time in seconds."""

    files: int = 0
    bytes: int = 0
    directories: int = 0
    vanished: int = 0
    failed: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def files_per_second(self) -> float:
        """Files warmed per second of wall time (0 before anything was timed)."""
        return self.files / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        """The report as plain data (``--json``)."""
        return {
            "files": self.files,
            "bytes": self.bytes,
            "directories": self.directories,
            "vanished": self.vanished,
            "failed": self.failed,
            "errors": [list(error) for error in self.errors],
            "seconds": round(self.seconds, 3),
            "files_per_second": round(self.files_per_second, 1),
        }


def _open_flags() -> tuple[int, int]:
    """Flags to open with: ``(with O_NOATIME, without)``."""
    base = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    return base | getattr(os, "O_NOATIME", 0), base


def walk_files(roots: Iterable[Path], report: WarmupReport) -> Iterator[tuple[str, int]]:
    """Every regular file under ``roots`` as ``(path, size in bytes)``, depth first.

    Symlinks are not followed; a root that is a regular file is itself yielded.
    Counts listed directories in ``report``; an unreadable directory is recorded as
    an error and skipped, one that vanished as vanished.
    """
    for root in roots:
        try:
            top = os.stat(root, follow_symlinks=False)
        except OSError as exc:
            _record(report, str(root), exc)
            continue
        if not stat.S_ISDIR(top.st_mode):
            if stat.S_ISREG(top.st_mode):
                yield str(root), top.st_size
            continue
        stack = [str(root)]
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as entries:
                    report.directories += 1
                    for entry in entries:
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                stack.append(entry.path)
                            elif entry.is_file(follow_symlinks=False):
                                yield entry.path, entry.stat(follow_symlinks=False).st_size
                        except OSError as exc:
                            _record(report, entry.path, exc)
            except OSError as exc:
                _record(report, directory, exc)


def warm(
    roots: Iterable[Path],
    jobs: int = DEFAULT_JOBS,
    on_progress: Callable[[WarmupReport], None] | None = None,
) -> WarmupReport:
    """Open every regular file under ``roots`` (on a cassfs mount) with ``jobs``
    threads; the report.  ``on_progress`` is called from the calling thread after
    each file and once at the end.  Never raises for a file: errors are counted.

    Raises ``ValueError`` when ``jobs`` < 1.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    report = WarmupReport()
    started = time.perf_counter()
    with_noatime, without = _open_flags()
    flags = [with_noatime]  # becomes `without` once O_NOATIME is refused (EPERM)
    work: queue.Queue[tuple[str, int] | None] = queue.Queue(maxsize=jobs * 4)
    done: queue.Queue[tuple[str, int, OSError | None]] = queue.Queue()

    def worker() -> None:
        while (item := work.get()) is not None:
            path, size = item
            done.put((path, size, _open_close(path, flags, without)))

    def settle(path: str, size: int, error: OSError | None) -> None:
        if error is None:
            report.files += 1
            report.bytes += size
        else:
            _record(report, path, error)
        report.seconds = time.perf_counter() - started
        if on_progress is not None:
            on_progress(report)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    submitted = settled = 0
    try:
        for item in walk_files(roots, report):
            while True:
                while not done.empty():
                    settle(*done.get())
                    settled += 1
                try:
                    work.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            submitted += 1
        while settled < submitted:
            settle(*done.get())
            settled += 1
    finally:
        for _ in threads:
            work.put(None)
        for thread in threads:
            thread.join()
    report.seconds = time.perf_counter() - started
    if on_progress is not None:
        on_progress(report)
    return report


def _open_close(path: str, flags: list[int], without: int) -> OSError | None:
    """Open ``path`` for reading and close it; the error, or None."""
    try:
        try:
            fd = os.open(path, flags[0])
        except PermissionError:
            if flags[0] == without:
                raise
            fd = os.open(path, without)  # O_NOATIME: only for the owner or CAP_FOWNER
            flags[0] = without
        os.close(fd)
    except OSError as exc:
        return exc
    return None


def _record(report: WarmupReport, path: str, exc: OSError) -> None:
    if exc.errno == errno.ENOENT:
        report.vanished += 1
        return
    report.failed += 1
    if len(report.errors) < MAX_ERRORS_KEPT:
        report.errors.append((path, exc.strerror or str(exc)))
