"""``cassfs status`` (mounts, tenants, daemons, cache use, Cassandra reachability) and
``cassfs cache evict``."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cassfs.state import pid_alive
from tests.conftest import KEYSPACE, Daemon, Mount, run_cli, unmount

pytestmark = [pytest.mark.cassandra, pytest.mark.fuse]


def status(*mounts: Mount, ok: bool = True) -> dict[str, dict[str, Any]]:
    """``cassfs status --json`` of ``mounts`` by mountpoint; checks the exit status."""
    result = run_cli("status", "--json", *(str(m.path) for m in mounts), check=False)
    assert result.returncode == (0 if ok else 1), result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is ok
    return {m["mountpoint"]: m for m in report["mounts"]}


def test_status_lists_two_mounts_of_two_tenants_with_their_daemons(
    mount_cassfs: Callable[..., Mount],
) -> None:
    a = mount_cassfs("a", 7001, "status-a")
    b = mount_cassfs("b", 7002, "status-b", None, "--cache-size", "64M")
    (a.path / "f").write_bytes(b"x" * 10_000)
    assert (b.path / "g").write_bytes(b"y" * 20_000)
    shown = status(a, b)
    assert set(shown) == {str(a.path), str(b.path)}
    for m, size, limit in ((a, 10_000, 1024**3), (b, 20_000, 64 * 1024**2)):
        entry = shown[str(m.path)]
        assert (entry["owner"], entry["environment"]) == (m.owner, m.environment)
        assert entry["state"] == "ok" and entry["problems"] == []
        assert entry["cache_dir"] == str(m.cache_dir)
        assert pid_alive(entry["pid"])
        daemon = entry["daemon"]
        assert daemon["answering"] and daemon["cassandra_reachable"]
        assert daemon["sessions"] == 1 and pid_alive(daemon["pid"])
        assert daemon["config"]["keyspace"] == KEYSPACE
        assert daemon["cache"]["entries"] > 0
        assert daemon["cache"]["bytes"] >= size
        assert daemon["cache"]["limit"] == limit
    assert shown[str(a.path)]["daemon"]["pid"] != shown[str(b.path)]["daemon"]["pid"]
    table = run_cli("status", str(a.path), str(b.path), env={"COLUMNS": "250"}).stdout
    assert "7001/status-a" in table and "7002/status-b" in table and "reachable" in table


def test_status_shows_a_killed_daemon(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("m", *tenant)
    pid = status(m)[str(m.path)]["daemon"]["pid"]
    # Any request reaching the mount (another user's `df` on this shared host) makes its
    # front start a new daemon; then that one is killed and status asked again.
    for _attempt in range(5):
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid) and not _zombie(pid):
            time.sleep(0.05)
        result = run_cli("status", "--json", str(m.path), check=False)
        entry = json.loads(result.stdout)["mounts"][0]
        if entry["daemon"]["answering"]:
            assert result.returncode == 0 and entry["daemon"]["pid"] != pid  # restarted
            pid = entry["daemon"]["pid"]
            continue
        assert result.returncode == 1
        assert any("daemon does not answer" in p for p in entry["problems"])
        return
    pytest.fail("every daemon killed came back before status asked")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return False


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_shows_a_daemon_that_cannot_reach_cassandra(
    mount_cassfs: Callable[..., Mount],
    start_daemon: Callable[..., Daemon],
    tenant: tuple[int, str],
) -> None:
    first = mount_cassfs("first", *tenant, "cache")  # fills the cache dir, then goes
    (first.path / "f").write_bytes(b"cached")
    unmount(first)
    while (first.cache_dir / "daemon.sock").exists():
        time.sleep(0.05)
    # a daemon whose contact point is a closed port serves what it cached
    closed = f"127.0.0.1:{_closed_port()}"
    start_daemon("cache", 60.0, "2G", "--contact-points", closed)
    m = mount_cassfs("m", *tenant, "cache", "--contact-points", closed)
    entry = status(m, ok=False)[str(m.path)]
    assert entry["state"] == "ok"
    assert entry["daemon"]["answering"] is True
    assert entry["daemon"]["cassandra_reachable"] is False
    assert entry["daemon"]["config"]["contact_points"] == closed
    assert entry["problems"] == ["its daemon cannot reach Cassandra"]


def test_evict_makes_the_next_read_fetch_while_other_files_stay_cached(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("m", *tenant)
    files = {
        "one.bin": os.urandom(150_000),
        "keep.bin": os.urandom(40_000),
        "d/x": os.urandom(3000),
        "d/sub/y": os.urandom(70_000),
    }
    for rel, data in files.items():
        (m.path / rel).parent.mkdir(parents=True, exist_ok=True)
        (m.path / rel).write_bytes(data)
    for rel, data in files.items():  # all cached now: reads fetch nothing
        assert (m.path / rel).read_bytes() == data
    before = m.stats()["bytes_fetched"]
    for rel, data in files.items():
        assert (m.path / rel).read_bytes() == data
    assert m.stats()["bytes_fetched"] == before

    result = run_cli("cache", "evict", str(m.path / "one.bin"), "--json")
    assert json.loads(result.stdout) == {
        "inodes": 1,
        "contents": 1,
        "files": 1,
        "vanished": 0,
        "skipped": 0,
    }
    assert (m.path / "one.bin").read_bytes() == files["one.bin"]
    assert m.stats()["bytes_fetched"] - before == len(files["one.bin"])
    assert (m.path / "keep.bin").read_bytes() == files["keep.bin"]  # still cached
    assert m.stats()["bytes_fetched"] - before == len(files["one.bin"])

    before = m.stats()["bytes_fetched"]
    report = json.loads(run_cli("cache", "evict", str(m.path / "d"), "--json").stdout)
    assert report["inodes"] == 4 and report["contents"] == 2  # d, d/x, d/sub, d/sub/y
    for rel in ("d/x", "d/sub/y", "keep.bin"):
        assert (m.path / rel).read_bytes() == files[rel]
    assert m.stats()["bytes_fetched"] - before == len(files["d/x"]) + len(files["d/sub/y"])


def test_evict_refuses_a_path_off_cassfs(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    for path, message in (
        (tmp_path / "plain", "is not on a cassfs mount"),
        (tmp_path / "missing", "does not exist"),
    ):
        result = run_cli("cache", "evict", str(path), check=False)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and message in result.stderr
