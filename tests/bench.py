"""Benchmark: cassfs against a native directory, on the installed Python standard library.

What it measures
    The tree is the installed standard library (``sysconfig.get_paths()["stdlib"]`` without
    ``site-packages``, ``__pycache__`` and symlinks: ~2450 files, ~100 MB), a stand-in for a
    PHP site of many small, mostly read files.  In one run, in a fresh temporary directory, it
    mounts cassfs (``cassfs up``, a fresh tenant ``1/bench-<hex>`` and a fresh cache dir) and
    creates a native directory beside it on the same disk, then times with
    ``time.perf_counter`` each operation over every file, for both targets, one target right
    after the other:

    1. copy in: ``shutil.copyfile`` from the stdlib (directories created as needed).  On cassfs
       ``close`` returns once the file is in Cassandra; the native copy is not fsynced.
    2. warm stat: ``os.stat`` of every file.
    3. warm read: every file read whole (cassfs: from the local cache).
    4. cold stat and cold read.  cassfs: after ``cassfs cache purge`` (empties the local cache
       and makes the mount drop the kernel's caches), so metadata and data come from Cassandra.
       Native: after ``fsync`` + ``posix_fadvise(POSIX_FADV_DONTNEED)`` on every file, which
       drops the file's page cache (the residency left over is measured with ``mincore`` and
       printed) but not the kernel's dentry/inode caches: native "cold stat" stays a
       cached-metadata stat, and native "cold read" is a local-disk read without page cache.
       ``/proc/sys/vm/drop_caches`` is deliberately not used (shared machine).
    5. warm stat and read once more; the best of the two warm passes is reported.

    Before each cold pass it waits ``--settle`` seconds (default 2 s, untimed, for both
    targets) so that the kernel's 1 s entry/attribute timeouts run out and the mount has
    finished the invalidation the purge asked for.

    Every read is checked: the bytes of every file (SHA-256) and every ``st_size`` must equal
    the source's, hashed outside the timed loops; the daemon counters (``cassfs cache stats
    --json``) are taken across the cold pass and ``bytes_fetched`` must cover every distinct
    content of the tree (the daemon caches content by SHA-256, so of files with identical bytes
    only the first is fetched; ``bytes_fetched`` is below the tree's total by those bytes).
    Any difference exits with status 1.

Why ratios to native in the same run
    The machine is shared and noisy (other jobs, CPU steal, disk contention), so absolute
    seconds drift from run to run.  Native and cassfs figures of one operation are taken
    back to back in the same run on the same disk, so the ratio cassfs/native is the figure to
    compare between runs; the absolute seconds only describe this run.

How to run it
    Needs the Cassandra node with the schema applied and FUSE (root, ``/dev/fuse``)::

        just bench                       # = python -m tests.bench
        python -m tests.bench --files 200               # quick run on the first 200 files
        python -m tests.bench --json /tmp/bench.json    # also write the figures as JSON

    ``--contact-points`` and ``--keyspace`` default to ``$CASSFS_CONTACT_POINTS`` /
    ``$CASSFS_KEYSPACE`` (else ``127.0.0.1:9042`` / ``cassfs``).  The mount and the temporary
    directories are removed at the end, also on failure or Ctrl-C; the tenant's rows stay in
    Cassandra.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import hashlib
import json
import logging
import mmap
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from cached.stats import NAMES
from tests.stdlib_tree import STDLIB, stdlib_files

log = logging.getLogger("bench")

MB = 1_000_000
OWNER = 1
CLI_TIMEOUT = 180.0  # seconds for one `cassfs` command
COUNTERS = NAMES
GAUGES = ("entries", "bytes_cached")


class BenchError(Exception):
    """A failure that ends the run with a one-line message."""


# -- the tree -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    """One file of the tree: its path relative to the stdlib, size and SHA-256."""

    rel: Path
    size: int
    sha256: bytes


def describe(files: list[Path]) -> list[SourceFile]:
    """Size and SHA-256 of each source file (untimed)."""
    out = []
    for rel in files:
        data = (STDLIB / rel).read_bytes()
        out.append(SourceFile(rel, len(data), hashlib.sha256(data).digest()))
    return out


# -- timed operations -----------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of ``fn()``, timed with ``perf_counter``."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def copy_in(files: list[SourceFile], root: Path) -> None:
    """Copy every file below ``root``, creating each directory once."""
    made: set[Path] = set()
    for f in files:
        target = root / f.rel
        parent = target.parent
        if parent not in made:
            parent.mkdir(parents=True, exist_ok=True)
            made.add(parent)
        shutil.copyfile(STDLIB / f.rel, target)


def stat_all(paths: list[Path]) -> list[int]:
    """``os.stat`` every path; returns the sizes (checked after the timing)."""
    return [os.stat(p).st_size for p in paths]


def read_all(paths: list[Path]) -> list[bytes]:
    """Read every path whole; returns the contents (hashed after the timing)."""
    out = []
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            out.append(f.readall())
    return out


# -- native page cache ----------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_MAP_FAILED = ctypes.c_void_p(-1).value
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_pages(path: Path) -> tuple[int, int]:
    """``(resident, total)`` pages of ``path`` in the page cache (mincore; no read, no fault)."""
    size = path.stat().st_size
    if size == 0:
        return 0, 0
    pages = (size + PAGE - 1) // PAGE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr == _MAP_FAILED:
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            return sum(b & 1 for b in vec), pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def residency(paths: list[Path]) -> float:
    """Fraction of the pages of ``paths`` that are in the page cache."""
    resident = total = 0
    for p in paths:
        r, t = resident_pages(p)
        resident, total = resident + r, total + t
    return resident / total if total else 0.0


def drop_native_cache(paths: list[Path]) -> None:
    """fsync (so no page stays dirty) then POSIX_FADV_DONTNEED every file."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# -- cassfs ---------------------------------------------------------------------------------


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
    """The daemon's counters and gauges (``cassfs cache stats --json``)."""
    out = cassfs_cli("cache", "stats", "--cache-dir", str(cache_dir), "--json").stdout
    figures: dict[str, Any] = json.loads(out)
    if not figures.get("daemon_running"):
        raise BenchError(f"no cache daemon answers for {cache_dir}")
    return {k: int(v) for k, v in figures.items() if isinstance(v, int | bool)}


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
    if os.path.ismount(mnt):
        lazy = subprocess.run(
            ["fusermount3", "-u", "-z", str(mnt)], capture_output=True, text=True, check=False
        )
        if lazy.returncode != 0:
            log.error("fusermount3 -u -z %s failed: %s", mnt, lazy.stderr.strip())


# -- the run --------------------------------------------------------------------------------


@dataclass
class Figures:
    """Seconds per operation and target; warm operations keep every pass."""

    native: dict[str, list[float]] = field(default_factory=dict)
    cassfs: dict[str, list[float]] = field(default_factory=dict)

    def add(self, target: str, op: str, seconds: float) -> None:
        getattr(self, target).setdefault(op, []).append(seconds)
        log.info("%-6s %-10s %8.3f s", target, op, seconds)

    def best(self, target: str, op: str) -> float:
        return min(getattr(self, target)[op])


@dataclass
class Run:
    """Everything one run measured, checked and printed."""

    files: list[SourceFile]
    mnt: Path
    cache: Path
    native: Path
    settle: float
    figures: Figures = field(default_factory=Figures)
    errors: list[str] = field(default_factory=list)
    native_residency: dict[str, float] = field(default_factory=dict)
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def unique_bytes(self) -> int:
        """Bytes of distinct content: the daemon caches content by SHA-256, so a file whose
        bytes equal an earlier file's is served from the cache without a fetch."""
        return sum({f.sha256: f.size for f in self.files}.values())

    def paths(self, root: Path) -> list[Path]:
        return [root / f.rel for f in self.files]

    def check_sizes(self, what: str, sizes: list[int]) -> None:
        bad = [str(f.rel) for f, s in zip(self.files, sizes, strict=True) if s != f.size]
        if bad:
            self.errors.append(f"{what}: {len(bad)} wrong st_size, e.g. {bad[:5]}")

    def check_contents(self, what: str, contents: list[bytes]) -> None:
        bad = [
            str(f.rel)
            for f, data in zip(self.files, contents, strict=True)
            if hashlib.sha256(data).digest() != f.sha256
        ]
        if bad:
            self.errors.append(f"{what}: {len(bad)} files differ from the source, e.g. {bad[:5]}")

    def stat(self, target: str, root: Path, op: str) -> None:
        paths = self.paths(root)
        seconds, sizes = timed(lambda: stat_all(paths))
        self.figures.add(target, op, seconds)
        self.check_sizes(f"{target} {op}", sizes)

    def read(self, target: str, root: Path, op: str) -> None:
        paths = self.paths(root)
        seconds, contents = timed(lambda: read_all(paths))
        self.figures.add(target, op, seconds)
        self.check_contents(f"{target} {op}", contents)
        del contents

    def execute(self) -> None:
        """copy, warm stat, warm read, purge/drop, cold stat, cold read, warm stat, warm read."""
        targets = (("native", self.native), ("cassfs", self.mnt))
        for target, root in targets:
            start = time.perf_counter()
            copy_in(self.files, root)
            self.figures.add(target, "copy", time.perf_counter() - start)
        for target, root in targets:
            self.stat(target, root, "warm stat")
        for target, root in targets:
            self.read(target, root, "warm read")

        # cold: native first (drop its page cache), then cassfs (purge), each settled
        native_paths = self.paths(self.native)
        self.native_residency["after warm read"] = residency(native_paths)
        drop_native_cache(native_paths)
        self.native_residency["after fadvise"] = residency(native_paths)
        time.sleep(self.settle)
        self.stat("native", self.native, "cold stat")
        self.read("native", self.native, "cold read")

        self.before = cache_stats(self.cache)
        log.info("%s", cassfs_cli("cache", "purge", "--cache-dir", str(self.cache)).stdout.strip())
        time.sleep(self.settle)
        self.stat("cassfs", self.mnt, "cold stat")
        self.read("cassfs", self.mnt, "cold read")
        self.after = cache_stats(self.cache)
        fetched = self.after["bytes_fetched"] - self.before["bytes_fetched"]
        if fetched < self.unique_bytes:
            self.errors.append(
                f"cold pass fetched {fetched:,} bytes from Cassandra, less than the tree's "
                f"{self.unique_bytes:,} bytes of distinct content: it was not cold"
            )

        for target, root in targets:
            self.stat(target, root, "warm stat")
        for target, root in targets:
            self.read(target, root, "warm read")

    # -- report -----------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """One dict per operation: seconds, ratio, cassfs files/s and MB/s."""
        count, total = len(self.files), self.total_bytes
        out = []
        for op in ("copy", "warm stat", "warm read", "cold stat", "cold read"):
            native, cassfs = self.figures.best("native", op), self.figures.best("cassfs", op)
            moves_bytes = op in ("copy", "warm read", "cold read")
            out.append(
                {
                    "operation": op,
                    "native_s": native,
                    "cassfs_s": cassfs,
                    "ratio": cassfs / native if native > 0 else float("inf"),
                    "cassfs_files_per_s": count / cassfs if cassfs > 0 else float("inf"),
                    "cassfs_mb_per_s": total / MB / cassfs if moves_bytes and cassfs > 0 else None,
                    "native_passes": self.figures.native[op],
                    "cassfs_passes": self.figures.cassfs[op],
                }
            )
        return out

    def counter_delta(self) -> dict[str, int]:
        return {name: self.after.get(name, 0) - self.before.get(name, 0) for name in COUNTERS}

    def print_report(self, console: Console, elapsed: float) -> None:
        count, total = len(self.files), self.total_bytes
        table = Table(
            title=f"cassfs vs native: {count:,} files, {total:,} bytes "
            f"({total / MB:.1f} MB) of {STDLIB}"
        )
        table.add_column("operation")
        table.add_column("native s", justify="right")
        table.add_column("cassfs s", justify="right")
        table.add_column("cassfs/native", justify="right")
        table.add_column("cassfs files/s", justify="right")
        table.add_column("cassfs MB/s", justify="right")
        for row in self.rows():
            mbps = row["cassfs_mb_per_s"]
            table.add_row(
                row["operation"],
                f"{row['native_s']:.3f}",
                f"{row['cassfs_s']:.3f}",
                f"{row['ratio']:.1f}x",
                f"{row['cassfs_files_per_s']:,.0f}",
                "-" if mbps is None else f"{mbps:,.1f}",
            )
        console.print(table)
        console.print(
            "warm = best of 2 passes. cold cassfs = after `cassfs cache purge` (from "
            "Cassandra); cold native = after fsync + POSIX_FADV_DONTNEED per file "
            "(page cache dropped; dentry/inode caches stay warm). MB = 10^6 bytes."
        )
        res = self.native_residency
        console.print(
            f"native page-cache residency: {res['after warm read']:.1%} after the warm "
            f"read, {res['after fadvise']:.1%} after fadvise (before the cold read)"
        )

        counters = Table(title="daemon counters across the cold pass (purge, cold stat, cold read)")
        counters.add_column("counter")
        counters.add_column("delta", justify="right")
        for name, value in self.counter_delta().items():
            counters.add_row(name, f"{value:,}")
        for name in GAUGES:
            counters.add_row(f"{name} (after)", f"{self.after.get(name, 0):,}")
        console.print(counters)
        fetched = self.counter_delta()["bytes_fetched"]
        unique = self.unique_bytes
        verdict = "ok" if fetched >= unique else "TOO FEW: the cold pass was not cold"
        console.print(
            f"bytes_fetched {fetched:,} vs tree {total:,} bytes ({unique:,} bytes of distinct "
            f"content; {total - unique:,} bytes are files identical to another file, which the "
            f"daemon's content-addressed cache serves without a second fetch): {verdict}"
        )
        console.print(f"total run time {elapsed:.1f} s")

    def as_json(self, elapsed: float, environment: str) -> dict[str, Any]:
        return {
            "files": len(self.files),
            "total_bytes": self.total_bytes,
            "unique_content_bytes": self.unique_bytes,
            "stdlib": str(STDLIB),
            "tenant": {"owner": OWNER, "environment": environment},
            "settle_s": self.settle,
            "operations": self.rows(),
            "native_residency": self.native_residency,
            "counters_before_cold": self.before,
            "counters_after_cold": self.after,
            "counters_cold_delta": self.counter_delta(),
            "errors": self.errors,
            "elapsed_s": elapsed,
        }


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Copy, stat and read the Python standard library on cassfs and on a native "
        "directory; print each figure with its ratio to native.",
    )
    parser.add_argument(
        "--files",
        type=int,
        default=None,
        metavar="N",
        help="only the first N files (sorted), for a quick run",
    )
    parser.add_argument(
        "--contact-points",
        default=os.environ.get("CASSFS_CONTACT_POINTS", "127.0.0.1:9042"),
        help="Cassandra HOST[:PORT],... (env CASSFS_CONTACT_POINTS)",
    )
    parser.add_argument(
        "--keyspace",
        default=os.environ.get("CASSFS_KEYSPACE", "cassfs"),
        help="keyspace (env CASSFS_KEYSPACE)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the figures as JSON to FILE",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=2.0,
        metavar="S",
        help="untimed wait before each cold pass, seconds (default 2)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.files is not None and args.files < 1:
        parser.error("--files must be at least 1")
    if args.settle < 0:
        parser.error("--settle must not be negative")
    return args


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


@contextmanager
def workspace(args: argparse.Namespace, environment: str) -> Iterator[tuple[Path, Path, Path]]:
    """A temp dir with MNT (cassfs mounted), CACHE and NATIVE; all removed on the way out."""
    tmp = Path(tempfile.mkdtemp(prefix="cassfs-bench-", dir="/tmp"))
    mnt, cache, native = tmp / "mnt", tmp / "cache", tmp / "native"
    for d in (mnt, cache, native):
        d.mkdir()
    mounted = False
    try:
        log.info("mounting %d/%s at %s (cache %s)", OWNER, environment, mnt, cache)
        mounted = True  # `up` may have mounted even if it then failed: always try to unmount
        cassfs_cli(
            "up",
            str(mnt),
            "--cache-dir",
            str(cache),
            "--owner",
            str(OWNER),
            "--environment",
            environment,
            "--contact-points",
            args.contact_points,
            "--keyspace",
            args.keyspace,
        )
        if not os.path.ismount(mnt):
            raise BenchError(f"`cassfs up` succeeded but {mnt} is not a mount point")
        yield mnt, cache, native
    finally:
        # a second Ctrl-C must not leave the mount behind
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if mounted and os.path.ismount(mnt):
                log.info("unmounting %s", mnt)
                unmount(mnt)
            if os.path.ismount(mnt):
                log.error("%s is still mounted: leaving %s in place", mnt, tmp)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    console = Console()
    started = time.perf_counter()
    rels = stdlib_files()
    if args.files is not None:
        rels = rels[: args.files]
    log.info("hashing %d source files of %s", len(rels), STDLIB)
    files = describe(rels)
    environment = f"bench-{secrets.token_hex(6)}"
    try:
        with sigterm_as_interrupt(), workspace(args, environment) as (mnt, cache, native):
            run = Run(files, mnt, cache, native, args.settle)
            run.execute()
    except BenchError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; cleaned up")
        return 130
    elapsed = time.perf_counter() - started
    run.print_report(console, elapsed)
    if args.json is not None:
        args.json.write_text(json.dumps(run.as_json(elapsed, environment), indent=2) + "\n")
        log.info("figures written to %s", args.json)
    if run.errors:
        for error in run.errors:
            console.print(f"[bold red]FAIL[/] {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
