"""Benchmark: issue 10's table, cassfs beside a native directory (and the Go ancestor), cold.

What it measures
    A tree (``--tree DIR``, default the installed standard library, ~2,450 files, ~100 MB;
    ``just bench`` also runs the WordPress tree, ~2,500 files, ~50 MB) is read into memory
    with the SHA-256 of every file, then, in one run, on each target:

    - **native**: a directory on the local disk (``/tmp``);
    - **cassfs**: a fresh tenant ``1/bench-<hex>`` mounted with ``cassfs up`` (default flags,
      so the change feed runs) with a fresh cache dir;
    - **go** (``--go-ancestor BINARY``): the 2017 Go program cgt212/cassfs mounted against
      the same node in its own keyspace (``--go-keyspace``), a fresh environment; see
      :mod:`tests.go_ancestor` for how to build it.

    ``--rounds`` rounds (default 3); each round works in a fresh directory ``roundN`` of every
    target, the targets taking turns within each workload (the first target rotates from
    round to round).  The workloads, each timed with ``time.perf_counter`` over every file:

    1. **copy in**: for every file, ``open(O_CREAT|O_EXCL|O_WRONLY)`` + ``write`` + ``close``
       from the bytes in memory (files/s).  The directories are made beforehand, untimed.
       On cassfs ``close`` returns once the file is in Cassandra; the native copy is not
       fsynced.
    2. **cold read**: every file opened, read whole, closed (files/s).
    3. **cold request**: a PHP-like request, ``stat`` + ``open`` + ``read`` + ``close`` of
       ``--request-files`` (300) files in a fixed random order (``--seed``), timed whole (ms).
    4. **cold stat walk**: ``os.walk`` of the round's directory and ``os.stat`` of every file
       (files/s).
    5. **rewrite**: for ``--mutate`` (300) files (a fixed random sample): a temporary name
       in the same directory created, written, closed, then ``os.rename`` over the file
       (files/s).
    6. **overwrite**: the same files opened ``O_WRONLY|O_TRUNC``, written, closed (files/s).

    Cold means, before each of 2-4 and for every target alike: ``cassfs cache purge`` (the
    cassfs target only: empties its daemon's cache and makes its mount drop the kernel's
    caches), then ``sync; echo 3 > /proc/sys/vm/drop_caches`` (page cache, dentries and
    inodes of every filesystem: the native directory's too), then the same ``--settle``
    wait (2 s: the 1 s kernel timeouts of the mounts and the Go ancestor's 1 s file cache
    run out).  If ``drop_caches`` is not writable the report says so and the native files
    are fsynced and ``POSIX_FADV_DONTNEED``-ed instead (their dentries and inodes then stay
    cached).  The Go ancestor has nothing to purge; its caches last 1 s.

    Every read is checked, untimed: the bytes of every file read (SHA-256) and every
    ``st_size`` must equal the source's, the stat walk must find every file, and after the
    overwrite (and one more drop) the changed files must read back as written.  On cassfs
    the daemon's ``bytes_fetched`` across each cold read must cover the tree's distinct
    content (its local cache is content-addressed, so of identical files only one is
    fetched): otherwise the read was not cold.  A failed check on native or cassfs exits
    with status 1; on the Go ancestor it is printed as a finding.

The table
    Per workload: the median over the rounds of native, cassfs and Go, with the spread
    (min-max); the ratios cassfs/native and cassfs/Go, each the median (min-max) of the
    per-round ratios (one round's targets run back to back, so their ratio is the figure that
    survives a noisy shared machine); the goal of issue 10 and whether the median meets it.
    files/s ratios are speed over speed (higher is better), ms ratios time over time (lower
    is better).  The goals compare with Go when it is measured (cold read: also with
    native); without Go, the issue's "≈ native" equivalents apply.

How to run it
    Needs the Cassandra node with the schema applied and FUSE (root, ``/dev/fuse``)::

        just bench                                  # stdlib, then WordPress (fetched)
        python -m tests.bench --files 200 --rounds 1            # quick
        python -m tests.bench --tree /tmp/wpdeb/x/usr/share/wordpress \\
            --go-ancestor /work/goanc-bin/cassfs-go --json /tmp/bench.json

    The Go ancestor keeps only the last 1 MiB chunk of a larger file and may crash (a panic
    in its Read) when such a file is read; ``--max-size 1048576`` leaves the files over 1 MiB
    out of the tree, for every target, so that it runs to the end.  A target whose mount dies
    (ENOTCONN, ECONNABORTED) is left out of the rest of the run, its figures missing.

    ``--contact-points`` and ``--keyspace`` default to ``$CASSFS_CONTACT_POINTS`` /
    ``$CASSFS_KEYSPACE``.  The mounts and temporary directories are removed at the end, also
    on failure or Ctrl-C; the tenants' rows stay in Cassandra.
"""

from __future__ import annotations

import argparse
import errno
import functools
import hashlib
import json
import logging
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tests import go_ancestor
from tests.benchkit import (
    OWNER,
    BenchError,
    Cold,
    cache_stats,
    is_mounted,
    mounted_cassfs,
    read_whole,
    sigterm_as_interrupt,
)
from tests.stdlib_tree import STDLIB
from tests.warm_bench import tree_files

log = logging.getLogger("bench")

MB = 1_000_000
TARGETS = ("native", "cassfs", "go")


@dataclass(frozen=True)
class Workload:
    """One row of the table.

    ``unit`` is ``files/s`` (higher is better) or ``ms`` (lower is better); ``go_goal`` is
    the bound on cassfs/Go, ``native_goal`` on cassfs/native (the "≈ native" equivalent,
    used without Go, or always when ``native_always``).
    """

    key: str
    label: str
    unit: str
    go_goal: float
    native_goal: float
    native_always: bool = False

    @property
    def higher_is_better(self) -> bool:
        return self.unit == "files/s"

    def meets(self, ratio: float, goal: float) -> bool:
        """True if ``ratio`` (cassfs over the other target) meets ``goal``."""
        return ratio >= goal if self.higher_is_better else ratio <= goal


WORKLOADS = (
    Workload("cold read", "cold read, every file", "files/s", 2.0, 0.10, native_always=True),
    Workload("cold request", "cold PHP-like request", "ms", 0.5, 13.0),
    Workload("cold stat walk", "cold stat walk (os.walk + stat)", "files/s", 2.0, 0.18),
    Workload("copy in", "copy in (create+write+close)", "files/s", 3.0, 0.010),
    Workload("rewrite", "rewrite (temp name + rename over)", "files/s", 2.0, 0.020),
    Workload("overwrite", "overwrite in place (O_TRUNC)", "files/s", 4.0, 0.05),
)


# -- the tree -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    """One file of the tree: its path relative to the tree, its bytes and their SHA-256."""

    rel: Path
    data: bytes
    sha256: bytes

    @property
    def size(self) -> int:
        return len(self.data)


def load_tree(tree: Path, limit: int | None, max_size: int | None = None) -> list[SourceFile]:
    """The regular files of ``tree`` (sorted; without those over ``max_size`` bytes; the
    first ``limit`` of them) read into memory."""
    rels = tree_files(tree)
    if max_size is not None:
        rels = [rel for rel in rels if (tree / rel).stat().st_size <= max_size]
    if limit is not None:
        rels = rels[:limit]
    out = []
    for rel in rels:
        data = (tree / rel).read_bytes()
        out.append(SourceFile(rel, data, hashlib.sha256(data).digest()))
    return out


# -- the timed operations -------------------------------------------------------------------


def write_file(path: str, data: bytes, flags: int) -> None:
    """``open(path, flags)``, write all of ``data``, close."""
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def copy_in(items: list[tuple[str, bytes]]) -> None:
    """Create, write and close each ``(path, bytes)``; the file must not exist yet."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for path, data in items:
        write_file(path, data, flags)


def read_all(paths: list[str]) -> list[bytes]:
    """Every path read whole."""
    return [read_whole(p) for p in paths]


def request(paths: list[str]) -> list[tuple[int, bytes]]:
    """One PHP-like request: ``(st_size, bytes)`` of each path after stat, open, read, close."""
    return [(os.stat(p).st_size, read_whole(p)) for p in paths]


def raise_error(exc: OSError) -> None:
    """``os.walk``'s ``onerror``: a directory it cannot list is an error, not an empty one."""
    raise exc


def stat_walk(root: str) -> dict[str, int]:
    """``os.walk`` + ``os.stat`` of every file: path relative to ``root`` -> ``st_size``."""
    sizes = {}
    for dirpath, _dirs, names in os.walk(root, onerror=raise_error):
        for name in names:
            path = os.path.join(dirpath, name)
            sizes[os.path.relpath(path, root)] = os.stat(path).st_size
    return sizes


def rewrite(items: list[tuple[str, bytes]]) -> None:
    """For each ``(path, bytes)``: write a temporary name in the same directory, then
    ``os.rename`` it over ``path``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for path, data in items:
        head, tail = os.path.split(path)
        tmp = os.path.join(head, f".{tail}.bench-tmp")
        write_file(tmp, data, flags)
        os.rename(tmp, path)


def overwrite(items: list[tuple[str, bytes]]) -> None:
    """For each ``(path, bytes)``: open ``O_WRONLY|O_TRUNC``, write, close."""
    flags = os.O_WRONLY | os.O_TRUNC
    for path, data in items:
        write_file(path, data, flags)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of ``fn()``, timed with ``perf_counter``."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a target's rounds go, and the cassfs cache dir to purge (None: nothing to)."""

    name: str
    root: Path
    cache: Path | None = None


def spread(values: list[float]) -> dict[str, float] | None:
    """``{"median", "min", "max"}`` of ``values``; None when there are none."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@dataclass
class Run:
    """The tree, the targets and everything measured; :meth:`round` runs one round."""

    files: list[SourceFile]
    targets: list[Target]
    cold: Cold
    request_files: int
    mutate: int
    seed: int
    #: target -> workload -> one value per round (files/s or ms; None: that round failed)
    figures: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    #: target -> workload -> one value per round, seconds
    seconds: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    fetched: list[int] = field(default_factory=list)
    #: targets whose mount died (left out of the rest of the run)
    dead: set[str] = field(default_factory=set)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def unique_bytes(self) -> int:
        """Bytes of distinct content (the cassfs daemon's cache is content-addressed)."""
        return sum({f.sha256: f.size for f in self.files}.values())

    def sample(self, count: int, salt: int) -> list[int]:
        """A fixed random sample of ``count`` file indices (seeded; sorted for mutations)."""
        return random.Random(self.seed + salt).sample(range(len(self.files)), count)

    def record(self, target: str, key: str, seconds: float | None, count: int) -> None:
        """Keep ``seconds`` and the figure of ``key`` (files/s or ms) for this round."""
        unit = next(w.unit for w in WORKLOADS if w.key == key)
        value = None
        if seconds is not None:
            value = seconds * 1000 if unit == "ms" else count / seconds
            log.info("%-6s %-15s %9.3f s  %10.1f %s", target, key, seconds, value, unit)
        self.figures.setdefault(target, {}).setdefault(key, []).append(value)
        self.seconds.setdefault(target, {}).setdefault(key, []).append(seconds)

    def fail(self, target: str, what: str) -> None:
        message = f"{target}: {what}"
        log.error("%s", message)
        self.errors.append(message)

    def check_contents(self, target: str, what: str, indices: list[int], got: list[bytes]) -> None:
        bad = [
            str(self.files[i].rel)
            for i, data in zip(indices, got, strict=True)
            if hashlib.sha256(data).digest() != self.files[i].sha256
        ]
        if bad:
            self.fail(target, f"{what}: {len(bad)} files differ from the source, e.g. {bad[:3]}")

    def make_cold(self, target: Target, base: Path) -> None:
        """Purge (cassfs), drop the kernel's caches, settle; without drop_caches only the
        native target's files are fadvised (opening files on a mount would warm it)."""
        native = target.name == "native"
        self.cold.drop(target.cache, (base / f.rel for f in self.files) if native else ())

    def failed_call(self, target: Target, what: str, exc: OSError) -> None:
        """A failed check; a dead mount (ENOTCONN, ECONNABORTED: its process exited) is
        left out of the rest of the run."""
        self.fail(target.name, f"{what}: {exc}")
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            self.dead.add(target.name)
            self.fail(target.name, "the mount died: left out of the rest of the run")

    def guarded(self, target: Target, key: str, count: int, fn: Callable[[], Any]) -> Any:
        """Time ``fn`` and record it; an OSError is a failed check and records no figure,
        and so does a dead target (None)."""
        if target.name in self.dead:
            self.record(target.name, key, None, count)
            return None
        try:
            seconds, result = timed(fn)
        except OSError as exc:
            self.failed_call(target, key, exc)
            self.record(target.name, key, None, count)
            return None
        self.record(target.name, key, seconds, count)
        return result

    def round(self, number: int) -> None:
        """Copy in, cold read, cold request, cold stat walk, rewrite, overwrite, check."""
        turn = number % len(self.targets)
        targets = self.targets[turn:] + self.targets[:turn]
        bases = {t.name: t.root / f"round{number}" for t in targets}
        count = len(self.files)
        everything = list(range(count))

        for t in targets:  # copy in
            base = bases[t.name]
            try:
                if t.name not in self.dead:  # untimed
                    for d in sorted({(base / f.rel).parent for f in self.files}):
                        d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self.failed_call(t, "making the directories", exc)
            items = [(str(base / f.rel), f.data) for f in self.files]
            self.guarded(t, "copy in", count, functools.partial(copy_in, items))

        for t in targets:  # cold read
            base = bases[t.name]
            paths = [str(base / f.rel) for f in self.files]
            self.make_cold(t, base)
            before = cache_stats(t.cache) if t.cache is not None else None
            got = self.guarded(t, "cold read", count, functools.partial(read_all, paths))
            if got is not None:
                self.check_contents(t.name, "cold read", everything, got)
            del got
            if t.cache is not None and before is not None:
                fetched = cache_stats(t.cache)["bytes_fetched"] - before["bytes_fetched"]
                self.fetched.append(fetched)
                if fetched < self.unique_bytes:
                    self.fail(
                        t.name,
                        f"cold read fetched {fetched:,} bytes from Cassandra, less than the "
                        f"tree's {self.unique_bytes:,} bytes of distinct content: not cold",
                    )

        order = self.sample(min(self.request_files, count), salt=0)
        for t in targets:  # cold request
            base = bases[t.name]
            paths = [str(base / self.files[i].rel) for i in order]
            self.make_cold(t, base)
            result = self.guarded(t, "cold request", len(order), functools.partial(request, paths))
            if result is not None:
                sizes = [size for size, _ in result]
                if sizes != [self.files[i].size for i in order]:
                    self.fail(t.name, "cold request: a st_size differs from the source")
                self.check_contents(t.name, "cold request", order, [d for _, d in result])

        for t in targets:  # cold stat walk
            base = bases[t.name]
            self.make_cold(t, base)
            sizes = self.guarded(
                t, "cold stat walk", count, functools.partial(stat_walk, str(base))
            )
            if sizes is not None:
                want = {str(f.rel): f.size for f in self.files}
                wrong = sorted(k for k in want.keys() | sizes.keys() if want.get(k) != sizes.get(k))
                if wrong:
                    self.fail(
                        t.name,
                        f"cold stat walk: {len(wrong)} files missing, extra or of the wrong "
                        f"size, e.g. {wrong[:3]}",
                    )

        changed = sorted(self.sample(min(self.mutate, count), salt=1))
        mutations = (("rewrite", rewrite, b"rewritten"), ("overwrite", overwrite, b"overwritten"))
        for key, fn, mark in mutations:
            for t in targets:
                base = bases[t.name]
                items = [
                    (str(base / self.files[i].rel), self.mutated(i, mark, number)) for i in changed
                ]
                self.guarded(t, key, len(items), functools.partial(fn, items))

        for t in targets:  # the overwritten files read back as written (untimed, after a drop)
            base = bases[t.name]
            if t.name in self.dead:
                continue
            self.make_cold(t, base)
            try:
                got = [read_whole(str(base / self.files[i].rel)) for i in changed]
            except OSError as exc:
                self.failed_call(t, "reading back the overwritten files", exc)
                continue
            bad = [
                str(self.files[i].rel)
                for i, data in zip(changed, got, strict=True)
                if data != self.mutated(i, b"overwritten", number)
            ]
            if bad:
                self.fail(t.name, f"{len(bad)} overwritten files read back wrong, e.g. {bad[:3]}")

    def mutated(self, index: int, mark: bytes, number: int) -> bytes:
        """The new bytes of file ``index`` for a rewrite/overwrite in round ``number``."""
        return self.files[index].data + b"\n/* bench " + mark + b" round %d */\n" % number

    # -- report -----------------------------------------------------------------------------

    def ratios(self, key: str, other: str) -> list[float]:
        """cassfs over ``other`` per round (where both have a figure)."""
        mine = self.figures.get("cassfs", {}).get(key, [])
        theirs = self.figures.get(other, {}).get(key, [])
        return [c / o for c, o in zip(mine, theirs, strict=False) if c and o]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per workload: figures, ratios (median/min/max), goal and verdict."""
        names = {t.name for t in self.targets}
        out = []
        for w in WORKLOADS:
            row: dict[str, Any] = {"workload": w.key, "label": w.label, "unit": w.unit}
            for name in TARGETS:
                values = [v for v in self.figures.get(name, {}).get(w.key, []) if v is not None]
                row[name] = spread(values) if name in names else None
                row[f"{name}_rounds"] = self.figures.get(name, {}).get(w.key)
            row["vs_native"] = spread(self.ratios(w.key, "native"))
            row["vs_go"] = spread(self.ratios(w.key, "go")) if "go" in names else None
            checks = []
            if row["vs_go"] is not None:
                checks.append(("go", w.go_goal, row["vs_go"]["median"]))
            if row["vs_go"] is None or w.native_always:
                if row["vs_native"] is not None:
                    checks.append(("native", w.native_goal, row["vs_native"]["median"]))
            sign = "≥" if w.higher_is_better else "≤"
            row["goal"] = " and ".join(f"{sign} {goal:g}x {other}" for other, goal, _ in checks)
            row["met"] = bool(checks) and all(w.meets(r, g) for _, g, r in checks)
            out.append(row)
        return out

    def print_report(self, console: Console, tree: Path, rounds: int, elapsed: float) -> None:
        names = [t for t in TARGETS if t in {x.name for x in self.targets}]
        table = Table(
            title=f"issue 10: {len(self.files):,} files, {self.total_bytes / MB:.1f} MB of "
            f"{tree}; median (min-max) of {rounds} rounds"
        )
        table.add_column("workload")
        table.add_column("unit")
        for name in names:
            table.add_column(name, justify="right")
        table.add_column("cassfs/native", justify="right")
        if "go" in names:
            table.add_column("cassfs/Go", justify="right")
        table.add_column("goal")
        table.add_column("met")

        def fmt(s: dict[str, float] | None, digits: int) -> str:
            if s is None:
                return "-"
            return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"

        for row in self.rows():
            digits = 1 if row["unit"] == "ms" else 0
            cells = [row["label"], row["unit"], *(fmt(row[n], digits) for n in names)]
            cells.append(fmt(row["vs_native"], 3))
            if "go" in names:
                cells.append(fmt(row["vs_go"], 2))
            cells += [row["goal"], "[green]yes[/]" if row["met"] else "[red]no[/]"]
            table.add_row(*cells)
        console.print(table)
        console.print(
            f"cold = `cassfs cache purge` (cassfs) + {self.cold.method}, then "
            f"{self.cold.settle:g} s settle, for every target. request = stat+open+read+close "
            f"of {min(self.request_files, len(self.files))} files in a fixed random order; "
            f"rewrite/overwrite: {min(self.mutate, len(self.files))} files. Ratios are "
            "per-round cassfs/target (files/s: higher is better; ms: lower is better)."
        )
        if self.fetched:
            console.print(
                f"cassfs bytes_fetched per cold read: {', '.join(f'{b:,}' for b in self.fetched)}"
                f" (tree: {self.unique_bytes:,} bytes of distinct content)"
            )
        console.print(f"total run time {elapsed:.1f} s")

    def as_json(self, tree: Path, rounds: int, elapsed: float, tenants: dict[str, str]) -> Any:
        return {
            "tree": str(tree),
            "dead_targets": sorted(self.dead),
            "files": len(self.files),
            "total_bytes": self.total_bytes,
            "unique_content_bytes": self.unique_bytes,
            "rounds": rounds,
            "settle_s": self.cold.settle,
            "cold_method": self.cold.method,
            "request_files": min(self.request_files, len(self.files)),
            "mutate_files": min(self.mutate, len(self.files)),
            "tenants": tenants,
            "rows": self.rows(),
            "figures": self.figures,
            "seconds": self.seconds,
            "cassfs_bytes_fetched_per_cold_read": self.fetched,
            "errors": self.errors,
            "elapsed_s": elapsed,
        }


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Issue 10's table: cold read, cold request, cold stat walk, copy in, "
        "rewrite, overwrite on native, cassfs and (optionally) the Go ancestor.",
    )
    parser.add_argument("--tree", type=Path, default=STDLIB, help="source tree (default: stdlib)")
    parser.add_argument("--files", type=int, default=None, metavar="N", help="first N files only")
    parser.add_argument(
        "--max-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="leave files over BYTES out of the tree, for every target (the Go ancestor "
        "garbles files over 1 MiB and may crash reading them: 1048576 keeps it running)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--request-files", type=int, default=300, metavar="N")
    parser.add_argument("--mutate", type=int, default=300, metavar="N", help="files rewritten")
    parser.add_argument("--seed", type=int, default=7, help="seed of the request order")
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
        "--go-ancestor", type=Path, default=None, metavar="BINARY", help="the Go ancestor"
    )
    parser.add_argument("--go-keyspace", default="cassfs_go", help="its keyspace (cassfs_go)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="figures")
    parser.add_argument(
        "--settle", type=float, default=2.0, metavar="S", help="wait after each drop (2 s)"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.files is not None and args.files < 1:
        parser.error("--files must be at least 1")
    if args.rounds < 1 or args.request_files < 1 or args.mutate < 1:
        parser.error("--rounds, --request-files and --mutate must be at least 1")
    if args.settle < 0:
        parser.error("--settle must not be negative")
    if args.go_ancestor is not None and not os.access(args.go_ancestor, os.X_OK):
        parser.error(f"--go-ancestor {args.go_ancestor} is not an executable file")
    return args


@contextmanager
def mounted_targets(
    args: argparse.Namespace, tmp: Path, tenants: dict[str, str]
) -> Iterator[list[Target]]:
    """native, cassfs and (with ``--go-ancestor``) go, mounted below ``tmp``; unmounted on
    the way out.  ``tenants`` gets each mounted tenant's ``OWNER/environment``."""
    with ExitStack() as stack:
        native, mnt, cache = tmp / "native", tmp / "cassfs", tmp / "cache"
        for d in (native, mnt, cache):
            d.mkdir()
        environment = f"bench-{secrets.token_hex(6)}"
        stack.enter_context(
            mounted_cassfs(mnt, cache, environment, args.contact_points, args.keyspace)
        )
        tenants["cassfs"] = f"{OWNER}/{environment}"
        targets = [Target("native", native), Target("cassfs", mnt, cache)]
        if args.go_ancestor is not None:
            go_ancestor.apply_schema(args.contact_points, args.go_keyspace)
            gomnt = tmp / "go"
            gomnt.mkdir()
            go_env = f"bench-{secrets.token_hex(6)}"
            try:
                stack.enter_context(
                    go_ancestor.mounted(
                        args.go_ancestor, gomnt, args.contact_points, args.go_keyspace,
                        OWNER, go_env, tmp / "go.log",
                    )
                )  # fmt: skip
            except RuntimeError as exc:
                raise BenchError(str(exc)) from exc
            tenants["go"] = f"{args.go_keyspace} {OWNER}/{go_env}"
            targets.append(Target("go", gomnt))
        yield targets


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("cassandra").setLevel(logging.ERROR)
    console = Console(width=200)
    started = time.perf_counter()
    log.info("reading the files of %s", args.tree)
    files = load_tree(args.tree, args.files, args.max_size)
    if not files:
        log.error("no files in %s", args.tree)
        return 1
    cold = Cold(args.settle)
    if not cold.drop_caches:
        log.warning("/proc/sys/vm/drop_caches is not writable: native cold = fadvise only")
    tmp = Path(tempfile.mkdtemp(prefix="cassfs-bench-", dir="/tmp"))
    tenants: dict[str, str] = {}
    try:
        with sigterm_as_interrupt(), mounted_targets(args, tmp, tenants) as targets:
            run = Run(files, targets, cold, args.request_files, args.mutate, args.seed)
            for number in range(args.rounds):
                log.info("round %d of %d", number + 1, args.rounds)
                run.round(number)
    except BenchError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; cleaned up")
        return 130
    finally:
        if any(is_mounted(tmp / d) for d in ("cassfs", "go")):
            log.error("a mount below %s is still there: leaving it in place", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - started
    run.print_report(console, args.tree, args.rounds, elapsed)
    if args.json is not None:
        report = run.as_json(args.tree, args.rounds, elapsed, tenants)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        log.info("figures written to %s", args.json)
    failed = False
    for error in run.errors:
        go = error.startswith("go:")
        failed = failed or not go
        console.print(f"[bold {'yellow' if go else 'red'}]{'GO' if go else 'FAIL'}[/] {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
