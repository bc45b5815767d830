"""Cassandra outages against the real node: paused (SIGSTOP), stopped and restarted.

What a host keeps doing while Cassandra is away: every name and content it has
cached serves past its TTL (stale-if-error), an uncached request fails with EIO
after one timeout at most, a daemon restarted meanwhile starts from its cache,
and everything works again soon after the node is back.  These tests pause or
stop the node given by ``CASSFS_NODE_DIR``; run them alone, never beside other
test runs against that node.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio

from cached.errors import CassfsError
from cached.model import ROOT_INO
from tests.conftest import Daemon, local_node_pid, wait_for
from tests.test_daemon import make_file, session

pytestmark = pytest.mark.cassandra

#: --query-timeout of the daemons under test, seconds.
QUERY_TIMEOUT = 1.0
#: --cache-ttl of the daemons under test, seconds.
TTL = 1.0


@contextmanager
def node_paused() -> Iterator[None]:
    """SIGSTOP the local node for the block (it answers nothing, connections stay open)."""
    pid = local_node_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def start_reader(start_daemon: Callable[..., Daemon], name: str = "reader") -> Daemon:
    return start_daemon(name, TTL, "2G", "--query-timeout", str(QUERY_TIMEOUT))


async def past_ttl() -> None:
    """Let every entry cached so far pass its TTL (the TTL is a time; nothing to wait on)."""
    await trio.sleep(TTL * 1.2)


async def eventually(call: Callable[[], Any], deadline: float) -> float:
    """Retry ``call`` (async) until it succeeds; seconds it took.  Fails past ``deadline`` s."""
    started = time.monotonic()
    while True:
        try:
            await call()
            return time.monotonic() - started
        except CassfsError as exc:
            if time.monotonic() - started > deadline:
                pytest.fail(f"still failing after {deadline:.0f} s: {exc}")
            await trio.sleep(0.1)


async def test_names_known_only_through_a_listing_serve_while_the_node_is_paused(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """Names another host created, seen here only by a directory listing, serve stale."""
    writer = start_daemon("writer")
    files = {f"page{i}.php".encode(): f"<?php echo {i};".encode() for i in range(5)}
    async with session(writer, tenant) as client:
        site = await client.call("mkdir", parent=ROOT_INO, name=b"site", mode=0o755, uid=0, gid=0)
        for name, data in files.items():
            await make_file(client, site["ino"], name, data)
    reader = start_reader(start_daemon)
    async with session(reader, tenant) as client:
        found = await client.call("lookup", parent=ROOT_INO, name=b"site")
        listing = await client.call("readdir", ino=found["ino"])
        for _, inode in listing:
            await client.call("open", ino=inode["ino"])  # content cached
        await past_ttl()
        with node_paused():
            served = {}
            for name in files:
                inode = await client.call("lookup", parent=found["ino"], name=name)
                served[name] = (await client.call("open", ino=inode["ino"]))["data"]
            with pytest.raises(CassfsError) as absent:  # the listing was whole: a stale ENOENT
                await client.call("lookup", parent=found["ino"], name=b"never.php")
            relisted = await client.call("readdir", ino=found["ino"])
            stats = await client.call("stats")
        assert served == files
        assert [name for name, _ in relisted] == sorted(files)
        assert stats["stale_served"] >= len(files)
        assert absent.value.errno == errno.ENOENT


async def test_an_uncached_request_waits_for_one_timeout_at_most(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """A lookup made of several queries fails after one timeout, and the outage is remembered."""
    reader = start_reader(start_daemon)
    async with session(reader, tenant) as client:  # the root's inode cached, not its listing
        await past_ttl()
        before = await client.call("stats")
        with node_paused():
            failures = []
            for name in (b"unseen-1", b"unseen-2"):
                with pytest.raises(CassfsError) as info:
                    await client.call("lookup", parent=ROOT_INO, name=name)
                failures.append(info.value.errno)
            during = await client.call("stats")
    assert failures == [errno.EIO, errno.EIO]
    # Each lookup of a name in a stale directory asks Cassandra up to four times (the
    # directory, its listing, the directory again, the name): one query waits out
    # the timeout, the others fail at once.
    waited = during["unreachable_queries"] - before["unreachable_queries"]
    assert 1 <= waited <= 2, during
    assert during["queries_failed_fast"] - before["queries_failed_fast"] >= 4, during
    assert during["cassandra_unreachable"] == 1


async def test_a_daemon_restarted_while_the_node_is_paused_serves_its_cache(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """Start-up and ``hello`` need no Cassandra when the cache holds the tenant."""
    reader = start_reader(start_daemon)
    async with session(reader, tenant) as client:
        made = await make_file(client, ROOT_INO, b"index.php", b"<?php kept")
    reader.process.send_signal(signal.SIGTERM)
    reader.process.wait(30)
    with node_paused():
        restarted = start_reader(start_daemon)  # same cache dir, Cassandra away
        async with session(restarted, tenant) as client:
            found = await client.call("lookup", parent=ROOT_INO, name=b"index.php")
            opened = await client.call("open", ino=found["ino"])
            with pytest.raises(CassfsError) as refused:
                await client.call("create", parent=ROOT_INO, name=b"new", mode=0o644, uid=0, gid=0)
    assert (found["ino"], opened["data"]) == (made["ino"], b"<?php kept")
    assert refused.value.errno == errno.EIO
    async with session(restarted, tenant) as client:
        # Back: the daemon connects by itself and writes go through again.
        await eventually(lambda: make_file(client, ROOT_INO, b"after.php", b"ok"), deadline=60)
        assert (await client.call("stats"))["cassandra_unreachable"] == 0


async def test_after_the_node_is_stopped_and_started_again_everything_works_soon(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """A node stopped (not paused): cached reads stay, uncached requests fail at once,
    and the daemon works again within seconds of the node answering (the driver
    retries every second, so the wait does not grow with the outage)."""
    from cassfs.node import launcher

    reader = start_reader(start_daemon)
    async with session(reader, tenant) as client:
        made = await make_file(client, ROOT_INO, b"cached.php", b"<?php cached")
        await past_ttl()
        await trio.to_thread.run_sync(launcher.stop)
        try:
            found = await client.call("lookup", parent=ROOT_INO, name=b"cached.php")
            opened = await client.call("open", ino=found["ino"])
            failed = []
            for name in (b"unseen-1", b"unseen-2", b"unseen-3"):
                with pytest.raises(CassfsError) as info:
                    await client.call("mkdir", parent=ROOT_INO, name=name, mode=0o755, uid=0, gid=0)
                failed.append(info.value.errno)
        finally:
            await trio.to_thread.run_sync(lambda: launcher.start(timeout=300))
        recovered = await eventually(
            lambda: client.call("mkdir", parent=ROOT_INO, name=b"back", mode=0o755, uid=0, gid=0),
            deadline=60,
        )
        print(f"uncached requests work again {recovered:.1f} s after the node answers CQL")
    assert (found["ino"], opened["data"]) == (made["ino"], b"<?php cached")
    assert failed == [errno.EIO] * 3


async def test_writes_acknowledged_just_before_the_node_is_killed_are_there_after_it_restarts(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """Write-through: a write the daemon acknowledged is in Cassandra, even through a crash.
    Files written just before the node is SIGKILLed (no drain, no flush) are all read back,
    whole, by a fresh daemon once the node is up again.  This holds because the node's
    commit log is synced before a write is acknowledged (``commitlog_sync: batch``);
    Cassandra's default, a sync every 10 s, lost the last seconds' writes here."""
    from cassfs.node import launcher

    files = {f"f{i}".encode(): os.urandom(1000 + 700 * i) for i in range(20)}
    writer = start_daemon("writer")
    async with session(writer, tenant) as client:
        for name, data in files.items():
            await make_file(client, ROOT_INO, name, data)
    node = launcher.NodeDir.at(None)
    os.kill(local_node_pid(), signal.SIGKILL)
    try:
        assert await trio.to_thread.run_sync(
            lambda: wait_for(lambda: launcher.read_pid(node) is None, 30)
        ), "the node survived SIGKILL"
    finally:
        # As soon as its main thread is gone: the launcher waits for the JVM's last
        # threads to free its ports.
        await trio.to_thread.run_sync(lambda: launcher.start(timeout=300))
    reader = start_reader(start_daemon)
    async with session(reader, tenant) as client:
        await eventually(
            lambda: client.call("mkdir", parent=ROOT_INO, name=b"d", mode=0o755, uid=0, gid=0),
            deadline=60,
        )
        lost = []
        for name, data in files.items():
            try:
                found = await client.call("lookup", parent=ROOT_INO, name=name)
            except CassfsError as exc:
                lost.append(f"{name.decode()}: {exc}")
                continue
            opened = await client.call("open", ino=found["ino"])
            if opened["data"] != data:
                lost.append(f"{name.decode()}: {len(opened['data'])} bytes, not {len(data)}")
    assert lost == [], f"{len(lost)} of {len(files)} acknowledged files lost: {lost}"
