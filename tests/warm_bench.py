"""Warm-path benchmark: cassfs, a minimal pyfuse3 passthrough and native, in one run.

What it measures
    The tree (default: the installed standard library, as ``just bench``; ``--tree DIR``
    takes another, e.g. a WordPress tree) is copied into a native directory and into a
    fresh cassfs tenant mounted with default flags (so the change feed runs and the long
    TTLs apply), the tenant is mounted a second time read-only (``--ro``, its own cache dir
    and daemon: a web host), and the native directory is also mounted through
    :mod:`tests.passthrough`.
    After one untimed pass that warms every cache (kernel, daemon), each operation runs
    ``--passes`` times on each target, the targets taking turns, and the best pass counts:

    - **stat walk**: ``os.walk`` of the tree and ``os.lstat`` of every file (files/s);
    - **read**: every file opened, read whole and closed (files/s);
    - **request**: a PHP-like request, ``stat`` + ``open`` + ``read`` + ``close`` of
      ``--request-files`` files (300) in a fixed random order (ms per request);
    - **request xN**: ``--readers`` threads (4) making such requests at once, each its own
      order: the median time of one request while the others run (ms).

    Every read's bytes are checked against the source (SHA-256, untimed) and every
    ``st_size`` against the source's; a difference exits with status 1.

Why ratios
    These machines are shared and noisy; the three targets run back to back in one run, so
    the ratios are the figures to compare between runs.  Speed ratios are the target's
    speed over native's (1.0 = as fast as native); request ratios are the target's time
    over native's (1.0 = as fast).

How to run it
    Needs the node with the schema applied and FUSE (root)::

        python -m tests.warm_bench                 # `just bench` runs it after tests.bench
        python -m tests.warm_bench --files 500 --json /tmp/warm.json

    ``--contact-points``/``--keyspace`` default to ``$CASSFS_CONTACT_POINTS`` and
    ``$CASSFS_KEYSPACE``.  Mounts and temporary directories are removed at the end.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tests.benchkit import (
    OWNER,
    BenchError,
    cassfs_cli,
    read_whole,
    sigterm_as_interrupt,
    unmount,
)
from tests.stdlib_tree import STDLIB, stdlib_files

log = logging.getLogger("warm_bench")

TARGETS = ("native", "passthrough", "cassfs", "cassfs ro")


def tree_files(root: Path) -> list[Path]:
    """Regular files below ``root`` (no symlinks), relative and sorted."""
    if root == STDLIB:
        return stdlib_files()
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                out.append(path.relative_to(root))
    return sorted(out)


# -- timed operations -----------------------------------------------------------------------


def stat_walk(root: Path) -> dict[str, int]:
    """``os.walk`` + ``os.lstat`` of every file: relative path -> ``st_size``."""
    sizes = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            sizes[os.path.relpath(path, root)] = os.lstat(path).st_size
    return sizes


def read_all(paths: list[str]) -> list[bytes]:
    """Every path read whole."""
    return [read_whole(p) for p in paths]


def request(paths: list[str]) -> list[tuple[int, bytes]]:
    """One PHP-like request: ``(st_size, bytes)`` of each path after stat, open, read, close."""
    return [(os.stat(p).st_size, read_whole(p)) for p in paths]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of ``fn()``."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def concurrent_requests(
    orders: list[list[str]], rounds: int
) -> tuple[list[float], list[tuple[list[str], list[tuple[int, bytes]]]]]:
    """Each order in its own thread, ``rounds`` requests each, all started together.

    Returns every request's seconds and every request's ``(order, result)``.
    """
    barrier = threading.Barrier(len(orders))
    times: list[float] = []
    results: list[tuple[list[str], list[tuple[int, bytes]]]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def reader(order: list[str]) -> None:
        try:
            barrier.wait()
            for _ in range(rounds):
                seconds, result = timed(functools.partial(request, order))
                with lock:
                    times.append(seconds)
                    results.append((order, result))
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(order,)) for order in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return times, results


# -- the run --------------------------------------------------------------------------------


@dataclass
class Run:
    """The roots of the three targets, the source's sizes and hashes, and the figures."""

    source: Path
    files: list[Path]
    roots: dict[str, Path]
    request_files: int
    readers: int
    sizes: dict[str, int] = field(default_factory=dict)
    hashes: dict[str, bytes] = field(default_factory=dict)
    figures: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def describe_source(self) -> None:
        for rel in self.files:
            data = (self.source / rel).read_bytes()
            self.sizes[str(rel)] = len(data)
            self.hashes[str(rel)] = hashlib.sha256(data).digest()

    def orders(self, root: Path) -> list[list[str]]:
        """One fixed random order of ``request_files`` files per reader (reader 0 first)."""
        count = min(self.request_files, len(self.files))
        return [
            [str(root / rel) for rel in random.Random(7 + i).sample(self.files, count)]
            for i in range(self.readers)
        ]

    def add(self, target: str, op: str, seconds: float) -> None:
        self.figures.setdefault(op, {}).setdefault(target, []).append(seconds)
        log.info("%-11s %-12s %9.4f s", target, op, seconds)

    def check(self, what: str, root: Path, results: list[tuple[str, int, bytes | None]]) -> None:
        """``results``: (path, st_size, bytes or None) to compare with the source."""
        bad = []
        for path, size, data in results:
            rel = os.path.relpath(path, root)
            if size != self.sizes[rel] or (
                data is not None and hashlib.sha256(data).digest() != self.hashes[rel]
            ):
                bad.append(rel)
        if bad:
            self.errors.append(f"{what}: {len(bad)} files differ from the source, e.g. {bad[:3]}")

    def one_pass(self, timed_pass: bool) -> None:
        for target, root in self.roots.items():
            seconds, sizes = timed(functools.partial(stat_walk, root))
            missing = set(self.sizes) - set(sizes)
            if missing:
                self.errors.append(f"{target} stat walk: {len(missing)} files missing")
            self.check(
                f"{target} stat walk", root, [(str(root / r), s, None) for r, s in sizes.items()]
            )
            if timed_pass:
                self.add(target, "stat walk", seconds)
        for target, root in self.roots.items():
            paths = [str(root / rel) for rel in self.files]
            seconds, contents = timed(functools.partial(read_all, paths))
            self.check(
                f"{target} read",
                root,
                [(p, len(d), d) for p, d in zip(paths, contents, strict=True)],
            )
            del contents
            if timed_pass:
                self.add(target, "read", seconds)
        for target, root in self.roots.items():
            order = self.orders(root)[0]
            seconds, result = timed(functools.partial(request, order))
            self.check(
                f"{target} request",
                root,
                [(p, size, d) for p, (size, d) in zip(order, result, strict=True)],
            )
            if timed_pass:
                self.add(target, "request", seconds)
        for target, root in self.roots.items():
            orders = self.orders(root)
            times, results = concurrent_requests(orders, rounds=3)
            for order, result in results:
                self.check(
                    f"{target} request x{self.readers}",
                    root,
                    [(p, size, d) for p, (size, d) in zip(order, result, strict=True)],
                )
            if timed_pass:
                self.add(target, f"request x{self.readers}", statistics.median(times))

    def rows(self) -> list[dict[str, Any]]:
        out = []
        count = len(self.files)
        for op, by_target in self.figures.items():
            best = {target: min(values) for target, values in by_target.items()}
            speed = op in ("stat walk", "read")
            row: dict[str, Any] = {"operation": op, "seconds": best, "passes": by_target}
            for target in TARGETS[1:]:
                # speed rows: target's speed / native's; request rows: target's time / native's
                ratio = best["native"] / best[target] if speed else best[target] / best["native"]
                row[f"{target}_ratio"] = ratio
            if speed:
                row["files_per_s"] = {t: count / s for t, s in best.items()}
            out.append(row)
        return out

    def print_report(self, console: Console) -> None:
        table = Table(
            title=f"warm paths: {len(self.files):,} files of {self.source}; best of the passes"
        )
        table.add_column("operation")
        for target in TARGETS:
            table.add_column(target, justify="right")
        for target in TARGETS[1:]:
            table.add_column(f"{target} vs native", justify="right")
        for row in self.rows():
            op = row["operation"]
            if "files_per_s" in row:
                cells = [f"{row['files_per_s'][t]:,.0f} files/s" for t in TARGETS]
                unit = "of native speed"
            else:
                cells = [f"{row['seconds'][t] * 1000:,.1f} ms" for t in TARGETS]
                unit = "x native time"
            table.add_row(op, *cells, *(f"{row[f'{t}_ratio']:.2f} {unit}" for t in TARGETS[1:]))
        console.print(table)
        console.print(
            f"request = stat+open+read+close of {min(self.request_files, len(self.files))} files "
            f"in a fixed random order; request x{self.readers} = the median request while "
            f"{self.readers} threads make requests at once."
        )


@contextmanager
def mounted_targets(
    args: argparse.Namespace, tmp: Path
) -> Iterator[tuple[list[Path], dict[str, Path]]]:
    """The files copied, and the native, passthrough and cassfs roots holding them;
    unmounted on the way out."""
    native, pt, mnt, cache, ro, ro_cache = (
        tmp / d for d in ("native", "passthrough", "cassfs", "cache", "ro", "ro-cache")
    )
    for d in (native, pt, mnt, cache, ro, ro_cache):
        d.mkdir()
    with ExitStack() as stack:
        environment = f"warm-{secrets.token_hex(6)}"
        stack.callback(unmount, mnt)
        cassfs_cli(
            "up", str(mnt), "--cache-dir", str(cache), "--owner", str(OWNER),
            "--environment", environment, "--contact-points", args.contact_points,
            "--keyspace", args.keyspace,
        )  # fmt: skip
        files = tree_files(args.tree)
        if args.files is not None:
            files = files[: args.files]
        for root in (native, mnt):
            made: set[Path] = set()
            for rel in files:
                target = root / rel
                if target.parent not in made:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    made.add(target.parent)
                shutil.copyfile(args.tree / rel, target)
        pt_log = stack.enter_context(open(tmp / "passthrough.log", "w"))
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.passthrough", str(native), str(pt)], stderr=pt_log
        )
        stack.callback(child.wait, 30)
        stack.callback(subprocess.run, ["fusermount3", "-u", "-z", str(pt)], capture_output=True)
        deadline = time.monotonic() + 30
        while not os.path.ismount(pt):
            if child.poll() is not None or time.monotonic() > deadline:
                raise BenchError(
                    f"the passthrough did not mount: {(tmp / 'passthrough.log').read_text()}"
                )
            time.sleep(0.05)
        # the web-host shape: another host, read-only, of the same tenant
        stack.callback(unmount, ro)
        cassfs_cli(
            "up", str(ro), "--ro", "--cache-dir", str(ro_cache), "--owner", str(OWNER),
            "--environment", environment, "--contact-points", args.contact_points,
            "--keyspace", args.keyspace,
        )  # fmt: skip
        yield files, {"native": native, "passthrough": pt, "cassfs": mnt, "cassfs ro": ro}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tree", type=Path, default=STDLIB, help="source tree (default: stdlib)")
    parser.add_argument("--files", type=int, default=None, help="only the first N files")
    parser.add_argument("--passes", type=int, default=3, help="timed passes (best counts)")
    parser.add_argument("--request-files", type=int, default=300)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument(
        "--contact-points", default=os.environ.get("CASSFS_CONTACT_POINTS", "127.0.0.1:9042")
    )
    parser.add_argument("--keyspace", default=os.environ.get("CASSFS_KEYSPACE", "cassfs"))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="cassfs-warm-", dir="/tmp"))
    try:
        with sigterm_as_interrupt(), mounted_targets(args, tmp) as (files, roots):
            run = Run(args.tree, files, roots, args.request_files, args.readers)
            run.describe_source()
            run.one_pass(timed_pass=False)
            for _ in range(args.passes):
                run.one_pass(timed_pass=True)
    except BenchError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    run.print_report(console)
    if args.json is not None:
        args.json.write_text(json.dumps(run.rows(), indent=2) + "\n")
    for error in run.errors:
        console.print(f"[bold red]FAIL[/] {error}")
    return 1 if run.errors else 0


if __name__ == "__main__":
    sys.exit(main())
