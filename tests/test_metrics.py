"""The daemon's Prometheus endpoint (``--metrics-address``), scraped while mounts read and
write, and its start-up failures."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cached.api import parse_metrics_address
from cached.client import open_client, socket_path
from cached.errors import CassfsError
from cached.model import ROOT_INO
from tests.conftest import KEYSPACE, Daemon, Mount, run_cli, scrape, value

pytestmark = [pytest.mark.cassandra, pytest.mark.fuse]


def metrics_address(m: Mount) -> str:
    """Where the daemon of ``m`` serves metrics (its status config)."""
    address = m.cli("status", "--json", str(m.path))  # also checks the mount is well
    assert address.returncode == 0
    from cached.client import call_once

    bound: str = call_once(m.cache_dir, "status")["config"]["metrics_address"]
    assert bound.startswith("127.0.0.1:") and not bound.endswith(":0")
    return bound


def test_metrics_move_with_cold_and_warm_reads_and_writes(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    writer = mount_cassfs("writer", *tenant)
    data = os.urandom(200_000)
    (writer.path / "f.bin").write_bytes(data)
    # host B (its own daemon, serving metrics) and a second mount on B's daemon
    b = mount_cassfs("b", *tenant, "bcache", "--metrics-address", "127.0.0.1:0")
    b2 = mount_cassfs("b2", *tenant, "bcache")
    address = metrics_address(b)
    before = scrape(address)
    assert value(before, "cassfs_mount_sessions") == 2
    assert value(before, "cassfs_cache_limit_bytes") == 1024**3
    assert value(before, "cassfs_cassandra_unreachable") == 0

    assert (b.path / "f.bin").read_bytes() == data  # cold: from Cassandra
    cold = scrape(address)
    assert value(cold, "cassfs_bytes_fetched_total") - value(
        before, "cassfs_bytes_fetched_total"
    ) == len(data)
    assert value(cold, "cassfs_misses_total") > value(before, "cassfs_misses_total")
    assert value(cold, "cassfs_bytes_served_total") - value(
        before, "cassfs_bytes_served_total"
    ) == len(data)
    assert value(cold, "cassfs_cache_bytes") >= len(data)
    assert value(cold, "cassfs_cache_entries") > value(before, "cassfs_cache_entries")
    opens = value(cold, "cassfs_rpc_duration_seconds_count", method="open")
    assert opens >= value(before, "cassfs_rpc_duration_seconds_count", method="open") + 1
    # the chunk was read by one timed query
    queries = "cassfs_cassandra_query_duration_seconds"
    chunk_reads = value(cold, f"{queries}_count", statement="get_chunk")
    assert chunk_reads >= 1
    assert value(cold, f"{queries}_bucket", statement="get_chunk", le="+Inf") == chunk_reads

    assert (b2.path / "f.bin").read_bytes() == data  # warm: from B's cache
    warm = scrape(address)
    assert value(warm, "cassfs_bytes_fetched_total") == value(cold, "cassfs_bytes_fetched_total")
    assert value(warm, "cassfs_hits_total") > value(cold, "cassfs_hits_total")
    assert value(warm, "cassfs_bytes_served_total") - value(
        cold, "cassfs_bytes_served_total"
    ) == len(data)
    assert value(warm, "cassfs_rpc_duration_seconds_count", method="open") > opens
    assert value(warm, f"{queries}_count", statement="get_chunk") == chunk_reads

    (b.path / "new.bin").write_bytes(b"x" * 5000)  # write-through
    wrote = scrape(address)
    assert value(wrote, "cassfs_flushes_total") == value(warm, "cassfs_flushes_total") + 1
    assert (
        value(wrote, "cassfs_bytes_written_total") - value(warm, "cassfs_bytes_written_total")
        == 5000
    )
    assert (
        value(wrote, "cassfs_rpc_duration_seconds_count", method="write")
        == value(warm, "cassfs_rpc_duration_seconds_count", method="write") + 1
    )
    # the counters are the ones `cassfs cache stats` shows, not a second count
    stats = b.stats()
    assert stats["bytes_fetched"] == value(wrote, "cassfs_bytes_fetched_total")
    assert stats["bytes_written"] == value(wrote, "cassfs_bytes_written_total")


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_port_in_use_fails_cassfs_up_with_one_line(
    cassandra: str, fuse_available: None, tmp_path: Path, tenant: tuple[int, str]
) -> None:
    (tmp_path / "m").mkdir()
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        result = run_cli(
            "up", str(tmp_path / "m"), "--cache-dir", str(tmp_path / "c"),
            "--contact-points", cassandra, "--keyspace", KEYSPACE,
            "--owner", str(tenant[0]), "--environment", tenant[1],
            "--metrics-address", f"127.0.0.1:{port}",
            check=False, env={"CASSFS_RUN_DIR": str(tmp_path / "run")},
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert not os.path.ismount(tmp_path / "m")


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:99999", "127.0.0.1:http"])
def test_a_bad_metrics_address_fails_with_one_line(tmp_path: Path, address: str) -> None:
    result = run_cli("up", str(tmp_path), "--metrics-address", address, check=False)
    assert result.returncode == 2
    assert f"bad metrics address '{address}': give HOST:PORT" in result.stderr
    daemon = subprocess.run(
        [sys.executable, "-m", "cached", "--cache-dir", str(tmp_path / "c"),
         "--metrics-address", address],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert daemon.returncode == 2
    assert daemon.stderr.splitlines() == [
        f"cassfs daemon: bad metrics address '{address}': give HOST:PORT, e.g. 127.0.0.1:9464"
        " or [::1]:9464"
    ]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_failed_queries_and_stale_answers_are_counted(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    first = start_daemon("c")
    async with open_client(socket_path(first.cache_dir)) as client:
        await client.hello(*tenant)  # caches the tenant's root
    first.process.terminate()  # SIGTERM: a clean stop, the cache written out
    assert first.process.wait(30) == 0
    # the same cache, Cassandra behind a closed port: the cached root serves, stale
    daemon = start_daemon(
        "c", 60.0, "2G", "--contact-points", f"127.0.0.1:{_closed_port()}",
        "--metrics-address", "127.0.0.1:0",
    )  # fmt: skip
    address = daemon.call("status")["config"]["metrics_address"]
    before = scrape(address)
    assert value(before, "cassfs_cassandra_unreachable") == 1
    async with open_client(socket_path(daemon.cache_dir)) as client:
        await client.hello(*tenant)
        with pytest.raises(CassfsError) as failed:
            await client.call("lookup", parent=ROOT_INO, name=b"never-cached")
        assert failed.value.errno == errno.EIO
    after = scrape(address)
    assert value(after, "cassfs_stale_served_total") > value(before, "cassfs_stale_served_total")
    errors = "cassfs_cassandra_query_errors_total"
    for statement in ("get_inode", "get_dentry"):
        assert value(after, errors, statement=statement, kind="NoSession") >= 1, statement
    assert value(after, "cassfs_rpc_duration_seconds_count", method="lookup") == 1


def test_parse_metrics_address() -> None:
    assert parse_metrics_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_metrics_address("[::1]:0") == ("::1", 0)
    assert parse_metrics_address("metrics.internal:80") == ("metrics.internal", 80)
    for bad in ("", ":9464", "9464", "host:", "host:-1", "host:65536"):
        with pytest.raises(ValueError, match="give HOST:PORT"):
            parse_metrics_address(bad)
