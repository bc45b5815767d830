"""Per-RPC cost of the daemon's metrics: ``python -m tests.metrics_bench``.

Starts a daemon without and with ``--metrics-address`` (alternately, ``--rounds``
times each), writes one 4 KiB file, then times a warm read loop over one
connection: ``--count`` sequential ``read`` RPCs of that file (a cache hit each,
served from the daemon's cache), and prints the mean microseconds per RPC of
each round and the medians.  Not part of ``just test``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from cached.api import DaemonApi, daemon_command
from cached.client import call_once, open_client, socket_path
from cached.errors import DaemonUnavailable

CONTACT_POINTS = os.environ.get("CASSFS_CONTACT_POINTS", "127.0.0.1:9042")
KEYSPACE = os.environ.get("CASSFS_TEST_KEYSPACE", "cassfs_test")


async def read_loop(cache_dir: Path, count: int) -> float:
    """Microseconds per warm ``read`` RPC, mean over ``count``."""
    async with open_client(socket_path(cache_dir)) as client:
        await client.hello(secrets.randbelow(2**30) + 2, f"bench{secrets.token_hex(4)}")
        api = DaemonApi(client)
        inode = await api.create(1, b"f", 0o644, 0, 0)
        inode = await api.write(inode.ino, data=os.urandom(4096))
        opened = await api.open(inode.ino)
        for _ in range(200):  # warm up
            await api.read(inode.ino, opened.inode.content_id, 4096, 0, 4096)
        started = time.perf_counter()
        for _ in range(count):
            await api.read(inode.ino, opened.inode.content_id, 4096, 0, 4096)
        return (time.perf_counter() - started) / count * 1e6


def run_round(metrics: bool, count: int) -> float:
    """One daemon, one loop; microseconds per RPC."""
    with tempfile.TemporaryDirectory(prefix="cassfs-metrics-bench-") as tmp:
        cache_dir = Path(tmp) / "cache"
        config = {
            "contact_points": CONTACT_POINTS,
            "keyspace": KEYSPACE,
            "cache_ttl": 60.0,
            "cache_size": 1 << 30,
            "metrics_address": "127.0.0.1:0" if metrics else None,
        }
        with open(Path(tmp) / "daemon.log", "wb") as log:
            daemon = subprocess.Popen(daemon_command(cache_dir, config), stderr=log, stdout=log)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    call_once(cache_dir, "status", timeout=2)
                    break
                except DaemonUnavailable:
                    if time.monotonic() > deadline or daemon.poll() is not None:
                        sys.exit(
                            f"the daemon did not start: {(Path(tmp) / 'daemon.log').read_text()}"
                        )
                    time.sleep(0.1)
            return trio.run(read_loop, cache_dir, count)
        finally:
            daemon.terminate()
            daemon.wait(30)


def main() -> None:
    """Parse the arguments, run the rounds, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    results: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for metrics in (False, True):
            us = run_round(metrics, args.count)
            results[metrics].append(us)
            print(f"metrics {'on ' if metrics else 'off'}: {us:7.1f} µs per read RPC")
    off, on = statistics.median(results[False]), statistics.median(results[True])
    print(f"median: off {off:.1f} µs, on {on:.1f} µs, difference {on - off:+.1f} µs")


if __name__ == "__main__":
    main()
