"""What the benchmarks share: the ``cassfs`` CLI, a mounted tenant, cold caches, signals.

- :func:`cassfs_cli` runs ``python -m cassfs`` (this checkout's, not the ``cassfs`` script);
- :func:`mounted_cassfs` mounts a tenant with ``cassfs up`` and unmounts it on the way out;
- :func:`cache_stats` reads the daemon's counters; :func:`unmount` is ``cassfs down`` with a
  lazy ``fusermount3 -u -z`` behind it;
- :class:`Cold` makes caches cold: ``cassfs cache purge`` of a mount, then ``sync`` and
  ``echo 3 > /proc/sys/vm/drop_caches`` (page cache, dentries and inodes of every
  filesystem), or, where that file is not writable, ``fsync`` + ``POSIX_FADV_DONTNEED`` of
  the native files (page cache only);
- :func:`sigterm_as_interrupt` turns SIGTERM/SIGHUP into KeyboardInterrupt so that the
  cleanup (unmounts, temporary directories) runs for them too.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger("bench")

OWNER = 1
CLI_TIMEOUT = 180.0  # seconds for one `cassfs` command
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


class BenchError(Exception):
    """A failure that ends the run with a one-line message."""


def cassfs_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cassfs ARGS``; with ``check``, BenchError on a non-zero exit."""
    command = [sys.executable, "-m", "cassfs", *args]
    log.debug("run %s", " ".join(command))
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`cassfs {' '.join(args)}` did not finish in {CLI_TIMEOUT} s") from exc
    if check and result.returncode != 0:
        raise BenchError(
            f"`cassfs {' '.join(args)}` exited {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return result


def cache_stats(cache_dir: Path) -> dict[str, int]:
    """The daemon's counters and gauges (``cassfs cache stats --json``), name -> value."""
    out = cassfs_cli("cache", "stats", "--cache-dir", str(cache_dir), "--json").stdout
    figures: dict[str, Any] = json.loads(out)
    if not figures.get("daemon_running"):
        raise BenchError(f"no cache daemon answers for {cache_dir}")
    return {k: int(v) for k, v in figures.items() if isinstance(v, int | bool)}


def purge(cache_dir: Path) -> str:
    """``cassfs cache purge --cache-dir CACHE``: empties the daemon's cache and makes its
    mounts drop the kernel's caches; returns what it printed."""
    return cassfs_cli("cache", "purge", "--cache-dir", str(cache_dir)).stdout.strip()


def unmount(mnt: Path) -> None:
    """``cassfs down MNT``; ``fusermount3 -u -z MNT`` if that fails (logged, never raised)."""
    result = cassfs_cli("down", str(mnt), check=False)
    if result.returncode == 0:
        return
    log.warning(
        "cassfs down %s failed (%d): %s",
        mnt,
        result.returncode,
        (result.stderr or result.stdout).strip(),
    )
    if is_mounted(mnt):
        lazy = subprocess.run(
            ["fusermount3", "-u", "-z", str(mnt)], capture_output=True, text=True, check=False
        )
        if lazy.returncode != 0:
            log.error("fusermount3 -u -z %s failed: %s", mnt, lazy.stderr.strip())


@contextmanager
def mounted_cassfs(
    mnt: Path,
    cache: Path,
    environment: str,
    contact_points: str,
    keyspace: str,
    *extra: str,
) -> Iterator[Path]:
    """Tenant ``OWNER/environment`` mounted at ``mnt`` with its cache in ``cache`` (both
    existing directories); ``extra`` goes to ``cassfs up``.  Unmounted on the way out, a
    second Ctrl-C ignored meanwhile."""
    try:
        log.info("mounting cassfs %d/%s at %s (cache %s)", OWNER, environment, mnt, cache)
        cassfs_cli(
            "up", str(mnt), "--cache-dir", str(cache), "--owner", str(OWNER),
            "--environment", environment, "--contact-points", contact_points,
            "--keyspace", keyspace, *extra,
        )  # fmt: skip
        if not os.path.ismount(mnt):
            raise BenchError(f"`cassfs up` succeeded but {mnt} is not a mount point")
        yield mnt
    finally:
        # `up` may have mounted even if it then failed: always try to unmount
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if is_mounted(mnt):
                log.info("unmounting %s", mnt)
                unmount(mnt)
        finally:
            signal.signal(signal.SIGINT, previous)


def is_mounted(path: Path) -> bool:
    """True if ``path`` is a mount point in ``/proc/self/mounts``, also a dead FUSE mount
    (whose ``stat`` fails with ENOTCONN, so that ``os.path.ismount`` says False)."""
    want = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 1 and fields[1].replace("\\040", " ") == want:
                return True
    return False


def drop_caches_writable() -> bool:
    """True if this process may write ``/proc/sys/vm/drop_caches`` (root, not read-only)."""
    return os.access(DROP_CACHES, os.W_OK)


def drop_native_cache(paths: Iterable[Path]) -> None:
    """fsync (so no page stays dirty) then POSIX_FADV_DONTNEED every file."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class Cold:
    """Makes a target cold: its own purge, then the kernel's caches, then the settle wait.

    ``settle`` (seconds) is waited after every drop, for every target alike: the kernel's
    entry/attribute timeouts of the mounts (1 s without the change feed; the Go ancestor's
    1 s) run out and a mount finishes the invalidation a purge asked for.  Nothing signals
    that these timeouts ran out, so this is a plain wait.
    """

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self.drop_caches = drop_caches_writable()

    @property
    def method(self) -> str:
        """How the kernel's caches are dropped, in words for the report."""
        if self.drop_caches:
            return "sync; echo 3 > /proc/sys/vm/drop_caches"
        return (
            "fsync + POSIX_FADV_DONTNEED of the native files (/proc/sys/vm/drop_caches is not "
            "writable: the dentry/inode caches stay warm)"
        )

    def drop(self, cache_dir: Path | None, native_files: Iterable[Path] = ()) -> None:
        """``cassfs cache purge`` of ``cache_dir`` (if given), the kernel's caches, settle.

        ``native_files`` are fadvised when drop_caches is not writable.
        """
        if cache_dir is not None:
            log.debug("%s", purge(cache_dir))
        if self.drop_caches:
            os.sync()
            DROP_CACHES.write_text("3\n")
        else:
            drop_native_cache(native_files)
        time.sleep(self.settle)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt, so the cleanup runs for them too."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def read_whole(path: str) -> bytes:
    """Open ``path``, read it to the end and close it, as PHP's include does after its
    stat; the bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = []
        while chunk := os.read(fd, 1 << 20):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)
