"""Benchmark of the change feed: how soon one host sees another host's change.

Two mounts of one fresh tenant with their own cache dirs (so two daemons: two hosts), with
the default flags.  For each kind of change (a rewrite, a create, a rename, a chmod, an
unlink) it makes ``--changes`` changes on host A, one at a time; after each, host B polls
(``os.stat`` or a read, every 2 ms) until it sees the change, and the time from A's syscall
returning to B seeing it is recorded.  B looks at each name before the change, so its kernel
and daemon hold the old state (negative entries included).  Then both hosts stay idle for
``--idle`` seconds and B's daemon's feed queries are counted: the feed's cost per idle host.

Prints p50, p99 and max per kind, and the idle reads per second; ``--json`` writes them.
A change not seen within ``--limit`` seconds counts as a failure (exit status 1).

    just bench-feed                      # = python -m tests.feed_bench
    python -m tests.feed_bench --changes 20
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tests.benchkit import BenchError, cache_stats, cassfs_cli, sigterm_as_interrupt, unmount

log = logging.getLogger("feed_bench")

OWNER = 1
POLL = 0.002


def seen_after(condition: Callable[[], bool], limit: float) -> float | None:
    """Seconds until ``condition()`` holds (polled every :data:`POLL` s); None past ``limit``."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > limit:
            return None
        time.sleep(POLL)
    return time.perf_counter() - started


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    return True


def measure(a: Path, b: Path, count: int, limit: float) -> dict[str, list[float | None]]:
    """Latencies (seconds; None: not seen within ``limit``) per kind of change."""
    kinds = ("write", "create", "rename", "chmod", "unlink")
    results: dict[str, list[float | None]] = {kind: [] for kind in kinds}
    for i in range(count):
        file, new, moved = b / f"f{i}.php", b / f"n{i}.php", b / f"m{i}.php"
        (a / file.name).write_bytes(b"v1")
        seen_after(lambda f=file: _read(f) == b"v1", limit)  # B holds v1 now
        (a / file.name).write_bytes(b"v2, longer")
        results["write"].append(seen_after(lambda f=file: _read(f) == b"v2, longer", limit))

        _exists(new)  # a negative entry on B
        (a / new.name).write_bytes(b"new")
        results["create"].append(seen_after(lambda n=new: _exists(n), limit))

        _exists(moved)
        os.rename(a / new.name, a / moved.name)
        results["rename"].append(
            seen_after(lambda m=moved, n=new: _exists(m) and not _exists(n), limit)
        )

        os.stat(file)
        os.chmod(a / file.name, 0o600)
        results["chmod"].append(
            seen_after(lambda f=file: os.stat(f).st_mode & 0o777 == 0o600, limit)
        )

        os.unlink(a / moved.name)
        results["unlink"].append(seen_after(lambda m=moved: not _exists(m), limit))
    return results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100, help="changes per kind (100)")
    parser.add_argument("--limit", type=float, default=30.0, help="seconds a change may take")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle count")
    parser.add_argument(
        "--contact-points", default=os.environ.get("CASSFS_CONTACT_POINTS", "127.0.0.1:9042")
    )
    parser.add_argument("--keyspace", default=os.environ.get("CASSFS_KEYSPACE", "cassfs"))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    environment = f"feed-{secrets.token_hex(6)}"
    tmp = Path(tempfile.mkdtemp(prefix="cassfs-feed-bench-", dir="/tmp"))
    mounts: list[Path] = []
    try:
        with sigterm_as_interrupt():
            for host in ("a", "b"):
                mnt, cache = tmp / host, tmp / f"{host}-cache"
                mnt.mkdir()
                mounts.append(mnt)
                cassfs_cli(
                    "up", str(mnt), "--cache-dir", str(cache), "--owner", str(OWNER),
                    "--environment", environment, "--contact-points", args.contact_points,
                    "--keyspace", args.keyspace,
                )  # fmt: skip
            log.info("%d changes of each kind on host A, watched from host B", args.changes)
            results = measure(mounts[0], mounts[1], args.changes, args.limit)
            before = cache_stats(tmp / "b-cache")["feed_reads"]
            time.sleep(args.idle)
            idle = (cache_stats(tmp / "b-cache")["feed_reads"] - before) / args.idle
    except BenchError as exc:
        log.error("%s", exc)
        return 1
    finally:
        for mnt in mounts:
            if os.path.ismount(mnt):
                unmount(mnt)
        if not any(os.path.ismount(m) for m in mounts):
            shutil.rmtree(tmp, ignore_errors=True)
    table = Table(title=f"another host's change seen (default flags, {args.changes} each)")
    for column in ("change", "p50 ms", "p99 ms", "max ms", "not seen"):
        table.add_column(column, justify="right")
    figures: dict[str, object] = {"idle_feed_reads_per_s": idle}
    failed = 0
    for kind, values in results.items():
        seen = [v for v in values if v is not None]
        missing = len(values) - len(seen)
        failed += missing
        if not seen:
            table.add_row(kind, "-", "-", "-", str(missing))
            continue
        row = [percentile(seen, q) * 1e3 for q in (0.5, 0.99)] + [max(seen) * 1e3]
        figures[kind] = {"p50_ms": row[0], "p99_ms": row[1], "max_ms": row[2], "not_seen": missing}
        table.add_row(kind, *(f"{v:.0f}" for v in row), str(missing))
    Console().print(table)
    print(f"idle host: {idle:.1f} feed queries/s (one tenant)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
