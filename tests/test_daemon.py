"""The cache daemon against the real Cassandra node: RPC semantics, TTL, write-through."""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from cached import protocol
from cached.api import DaemonApi, Renamed
from cached.client import DaemonClient, open_client, socket_path
from cached.content import INLINE_CONTENT_LIMIT
from cached.errors import CassfsError, Exists, IsADirectory, NotEmpty, NotFound
from cached.feed import POLL_INTERVAL, RECHECK_DELAY
from cached.model import ROOT_INO
from cached.readahead import DENSE_LOOKUPS, FIRST_WINDOW
from cached.store import ContactPoints, make_cluster
from tests.conftest import KEYSPACE, Daemon, wait_for
from tests.secure_node import free_port

pytestmark = pytest.mark.cassandra


@asynccontextmanager
async def session(daemon: Daemon, tenant: tuple[int, str]) -> AsyncIterator[DaemonClient]:
    async with open_client(socket_path(daemon.cache_dir)) as client:
        await client.hello(*tenant)
        yield client


async def make_file(client: DaemonClient, parent: int, name: bytes, data: bytes) -> dict[str, Any]:
    inode = await client.call("create", parent=parent, name=name, mode=0o644, uid=0, gid=0)
    return await client.call("write", ino=inode["ino"], data=data)  # type: ignore[no-any-return]


async def feed_settled(daemon: Daemon, polls: int) -> None:
    """Wait until ``daemon``'s feed, ``polls`` reads ago, has applied what another daemon
    just changed (its rows are written behind its replies: within two polls) and has
    forgotten it once more :data:`~cached.feed.RECHECK_DELAY` later.  Either, landing in
    the middle of a test, expires what the test read, which is then read again, bytes
    included (seen once in CI, and once in a test loop at stop 31).  A poll makes two
    reads for 2 s after each minute's bucket starts, so twice the polls' reads are waited
    for."""
    needed = polls + 2 * (2 + math.ceil(RECHECK_DELAY / POLL_INTERVAL) + 1)
    assert await trio.to_thread.run_sync(
        wait_for, lambda: daemon.stats()["feed_reads"] >= needed, 20.0
    ), f"{daemon.stats()['feed_reads'] - polls} feed reads"


def chunk_rows(cassandra: str, tenant: tuple[int, str], ino: int) -> list[Any]:
    """Every chunk row of ``ino``, read straight from Cassandra (ALLOW FILTERING: tests only;
    it scans the test keyspace's chunks, hence the long timeout)."""
    cluster = make_cluster(ContactPoints.parse(cassandra))
    try:
        rows = cluster.connect().execute(
            f"SELECT version, chunk FROM {KEYSPACE}.chunks WHERE owner = %s AND "
            "environment = %s AND ino = %s ALLOW FILTERING",
            (*tenant, ino),
            timeout=120,  # a scan of the whole table, which grows over a run
        )
        return list(rows)
    finally:
        cluster.shutdown()


def kept_bytes(
    cassandra: str, tenant: tuple[int, str], ino: int
) -> tuple[bytes | None, dict[bytes, bytes | None]]:
    """The bytes the inode row of ``ino`` keeps, and those of each of its ``versions``
    rows by version, read straight from Cassandra."""
    cluster = make_cluster(ContactPoints.parse(cassandra))
    try:
        cql = cluster.connect()
        where = "WHERE owner = %s AND environment = %s AND ino = %s"
        inode = cql.execute(f"SELECT data FROM {KEYSPACE}.inodes {where}", (*tenant, ino)).one()
        versions = cql.execute(
            f"SELECT version, data FROM {KEYSPACE}.versions {where}", (*tenant, ino)
        )
        return inode["data"], {r["version"]: r["data"] for r in versions}
    finally:
        cluster.shutdown()


async def test_small_content_is_kept_in_its_rows_and_a_cold_open_reads_nothing_more(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], cassandra: str
) -> None:
    # "there" follows no change feed: the rows of "here"'s writes would make what it
    # cached stale at a poll, and the counts below would depend on when that came.
    here, there = start_daemon("here"), start_daemon("there", 60.0, "2G", "--feed-poll", "0")
    small = b"<?php echo 'small';\n" * 100
    big = os.urandom(INLINE_CONTENT_LIMIT + 1)
    async with session(here, tenant) as a:
        first = await make_file(a, ROOT_INO, b"page.php", small)
    ino = first["ino"]
    assert await trio.to_thread.run_sync(kept_bytes, cassandra, tenant, ino) == (
        small,
        {first["version"]: small},
    )
    assert await trio.to_thread.run_sync(chunk_rows, cassandra, tenant, ino) == []
    # Another host, cold: the lookup's read of the inode brings the bytes; the open
    # that follows fetches nothing.
    async with session(there, tenant) as b:
        found = await b.call("lookup", parent=ROOT_INO, name=b"page.php")
        before = there.stats()
        opened = await b.call("open", ino=found["ino"])
        assert opened["data"] == small
        assert there.stats()["misses"] == before["misses"]
        assert there.stats()["bytes_fetched"] == len(small)
    # Rewritten over the limit: chunks, and the inode row keeps no bytes any more.
    async with session(here, tenant) as a:
        second = await a.call("write", ino=ino, data=big)
    inode_bytes, versions = await trio.to_thread.run_sync(kept_bytes, cassandra, tenant, ino)
    assert inode_bytes is None and versions[second["version"]] is None
    chunks = await trio.to_thread.run_sync(chunk_rows, cassandra, tenant, ino)
    assert [r["chunk"] for r in chunks if r["version"] == second["version"]] == [0]
    async with session(there, tenant) as b:
        await b.call("purge")
        opened = await b.call("open", ino=ino)
        assert opened["data"] == big  # read from its chunk


async def make_php_dir(
    daemon: Daemon, tenant: tuple[int, str], count: int = 5
) -> tuple[dict[str, Any], dict[bytes, bytes]]:
    """Directory ``d`` with ``count`` small files (``f0.php``..., numbers zero-padded to
    one width), made through ``daemon``: ``(d, {name: data})``."""
    width = len(str(count - 1))
    files = {
        f"f{i:0{width}}.php".encode(): f"<?php // {i}\n".encode() * (i + 1) for i in range(count)
    }
    async with session(daemon, tenant) as a:
        d = await a.call("mkdir", parent=ROOT_INO, name=b"d", mode=0o755, uid=0, gid=0)
        for name, data in files.items():
            await make_file(a, d["ino"], name, data)
    return d, files


async def open_each(client: DaemonClient, parent: int, files: dict[bytes, bytes]) -> None:
    """Look up and open every file of ``files`` in ``parent``; each reads whole."""
    for name, data in files.items():
        found = await client.call("lookup", parent=parent, name=name)
        assert (await client.call("open", ino=found["ino"]))["data"] == data


async def test_a_lookup_of_a_directorys_first_file_brings_the_small_files_after_it(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """A reader that starts at a directory's first file (:mod:`cached.readahead`) gets the
    files after it fetched ahead, with their bytes, and its opens read nothing more."""
    # No change feed on "there" (see the test above).
    here, there = start_daemon("here"), start_daemon("there", 60.0, "2G", "--feed-poll", "0")
    d, files = await make_php_dir(here, tenant)
    async with session(there, tenant) as b:
        await b.call("lookup", parent=ROOT_INO, name=b"d")
        await b.call("lookup", parent=d["ino"], name=b"f0.php")
        # The other four come in the background, many per query, with their bytes.
        total = sum(map(len, files.values()))
        assert await trio.to_thread.run_sync(
            wait_for, lambda: there.stats()["bytes_fetched"] >= total
        )
        before = there.stats()
        await open_each(b, d["ino"], files)
        after = there.stats()
        assert (after["misses"], after["bytes_fetched"]) == (
            before["misses"],
            before["bytes_fetched"],
        )


async def test_a_walk_fetches_no_bytes_and_a_first_lookup_brings_its_siblings_bytes(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """A stat walk (readdir, whose answer counts each subdirectory's subdirectories)
    reads inodes only; a script's first lookup in a directory brings the bytes of the
    small files beside it, many per query, so that the opens that follow read nothing."""
    here, there = start_daemon("here"), start_daemon("there")  # "there" follows the feed
    d, files = await make_php_dir(here, tenant)
    async with session(there, tenant) as b:
        await feed_settled(there, there.stats()["feed_reads"])
        listed = await b.call("readdir", ino=ROOT_INO)  # counts d's subdirectories
        assert [entry[0] for entry in listed if entry[0] == b"d"] == [b"d"]
        assert sorted(entry[0] for entry in await b.call("readdir", ino=d["ino"])) == sorted(files)
        assert there.stats()["bytes_fetched"] == 0
        await b.call("lookup", parent=d["ino"], name=b"f0.php")
        total = sum(map(len, files.values()))
        assert await trio.to_thread.run_sync(
            wait_for, lambda: there.stats()["bytes_fetched"] >= total
        )
        before = there.stats()
        await open_each(b, d["ino"], files)
        assert there.stats()["bytes_fetched"] == before["bytes_fetched"]


async def test_a_path_lookup_of_a_directory_reads_none_of_its_files_until_they_are_read(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """A lookup of a directory (a path being resolved, as an open does) loads its listing
    to count its subdirectories, and reads none of its files.  A reader of its files in
    name order then gets each file's inode with its bytes (one read of each row), most
    of them many per query ahead of it, and no file is fetched twice."""
    port = free_port()
    here = start_daemon("here")
    there = start_daemon("there", 60.0, "2G", "--metrics-address", f"127.0.0.1:{port}")
    d, files = await make_php_dir(here, tenant, 40)
    async with session(there, tenant) as b:
        await feed_settled(there, there.stats()["feed_reads"])  # listings are kept
        read = ("get_inode", "get_inodes", "get_inode_content", "get_inodes_content")
        before = {name: queries_sent(port, name) for name in read}
        assert (await b.call("lookup", parent=ROOT_INO, name=b"d"))["nlink"] == 2
        listings = queries_sent(port, "list_dentries_limit")
        with pytest.raises(NotFound):  # answered by the listing loaded for d's lookup
            await b.call("lookup", parent=d["ino"], name=b"nothing")
        assert queries_sent(port, "list_dentries_limit") == listings
        assert there.stats()["bytes_fetched"] == 0
        await open_each(b, d["ino"], files)
        assert there.stats()["bytes_fetched"] == sum(map(len, files.values()))
        sent = {name: queries_sent(port, name) - before[name] for name in read}
        # none read at d's lookup, nor without its bytes
        assert sent["get_inode"] == sent["get_inodes"] == 0
        assert sent["get_inodes_content"] >= 2  # windows ahead of the reader
        assert sent["get_inode_content"] <= len(files) // 2  # most files came ahead


async def test_a_scattered_reader_fetches_the_files_it_opens_until_it_uses_many(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """Files opened here and there in a directory (a PHP request's includes) cost their
    own bytes and none of their siblings'; the DENSE_LOOKUPS-th lookup in the directory
    fetches all its files, as a reader that uses that much of it likely uses the rest."""
    here, there = start_daemon("here"), start_daemon("there")  # "there" follows the feed
    d, files = await make_php_dir(here, tenant, 40)
    names = sorted(files)
    async with session(there, tenant) as b:
        await feed_settled(there, there.stats()["feed_reads"])
        await b.call("lookup", parent=ROOT_INO, name=b"d")
        scattered = [names[30], names[7], names[21], names[2]][: DENSE_LOOKUPS - 1]
        await open_each(b, d["ino"], {name: files[name] for name in scattered})
        opened = sum(len(files[name]) for name in scattered)
        assert there.stats()["bytes_fetched"] == opened
        await b.call("lookup", parent=d["ino"], name=names[12])
        total = sum(map(len, files.values()))
        assert await trio.to_thread.run_sync(
            wait_for, lambda: there.stats()["bytes_fetched"] >= total
        )
        await open_each(b, d["ino"], files)
        assert there.stats()["bytes_fetched"] == total


async def test_a_reader_gets_the_bytes_of_the_files_ahead_of_it_each_fetched_once(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """After a walk listed a directory, its first lookup brings only the bytes of the
    files named next (a window, :mod:`cached.readahead`), not the whole directory's; a
    reader going on in name order gets every file right, and no file's bytes are
    fetched twice (a lookup's own fetch and the window's query share one flight)."""
    here, there = start_daemon("here"), start_daemon("there")  # "there" follows the feed
    d, files = await make_php_dir(here, tenant, 40)
    async with session(there, tenant) as b:
        await feed_settled(there, there.stats()["feed_reads"])
        await b.call("readdir", ino=ROOT_INO)  # counts d's subdirectories: d listed
        assert len(await b.call("readdir", ino=d["ino"])) == len(files)
        assert there.stats()["bytes_fetched"] == 0
        await b.call("lookup", parent=d["ino"], name=b"f00.php")
        first = sum(map(len, list(files.values())[: 1 + FIRST_WINDOW]))
        assert await trio.to_thread.run_sync(
            wait_for, lambda: there.stats()["bytes_fetched"] >= first
        )
        assert there.stats()["bytes_fetched"] == first
        await open_each(b, d["ino"], files)
        assert there.stats()["bytes_fetched"] == sum(map(len, files.values()))


async def test_a_readdir_loads_its_grandchildrens_listings_ahead(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """readdir(/) counts d's subdirectories (d's listing) and loads e's listing ahead, in
    the background, as a walk will list d next and count e's subdirectories then."""
    here, there = start_daemon("here"), start_daemon("there")  # "there" follows the feed
    async with session(here, tenant) as a:
        d = await a.call("mkdir", parent=ROOT_INO, name=b"d", mode=0o755, uid=0, gid=0)
        e = await a.call("mkdir", parent=d["ino"], name=b"e", mode=0o755, uid=0, gid=0)
        await a.call("mkdir", parent=e["ino"], name=b"f", mode=0o755, uid=0, gid=0)
    async with session(there, tenant) as b:
        await feed_settled(there, there.stats()["feed_reads"])
        before = there.stats()["misses"]
        await b.call("readdir", ino=ROOT_INO)
        # The listings of / and d (counted): 2 misses; e's listing ahead (and e's inode
        # unless d's prefetch brought it first): 1 or 2 more.
        assert await trio.to_thread.run_sync(
            wait_for, lambda: there.stats()["misses"] >= before + 3, 10.0
        ), there.stats()["misses"] - before
        settled = there.stats()["misses"]
        with pytest.raises(NotFound):  # answered by e's listing, loaded ahead
            await b.call("lookup", parent=e["ino"], name=b"nothing")
        assert there.stats()["misses"] == settled


async def test_hello_creates_root_and_lookup_misses(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    daemon = start_daemon()
    async with session(daemon, tenant) as client:
        root = await client.call("getattr", ino=ROOT_INO)
        assert root["ino"] == ROOT_INO and root["kind"] == 1
        with pytest.raises(NotFound) as info:
            await client.call("lookup", parent=ROOT_INO, name=b"missing")
        assert info.value.errno == errno.ENOENT


async def test_create_write_read_roundtrip(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], cassandra: str
) -> None:
    daemon = start_daemon()
    data = os.urandom(300_000)
    async with session(daemon, tenant) as client:
        written = await make_file(client, ROOT_INO, b"f.bin", data)
        assert written["size"] == len(data)
        assert written["content_id"] == hashlib.sha256(data).digest()
        found = await client.call("lookup", parent=ROOT_INO, name=b"f.bin")
        assert found["ino"] == written["ino"]
        opened = await client.call("open", ino=found["ino"])
        assert opened["data"] is None  # over the inline limit: read by ranges
        part = await client.call(
            "read",
            ino=found["ino"],
            content_id=found["content_id"],
            file_size=len(data),
            offset=1000,
            size=5000,
        )
        assert part == data[1000:6000]
    # write-through: the chunk is in Cassandra, one row for a 300 kB file
    assert len(chunk_rows(cassandra, tenant, written["ino"])) == 1


async def test_rewrite_deletes_old_chunks_and_large_file_via_spool(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], cassandra: str
) -> None:
    daemon = start_daemon()
    big = os.urandom(3 * 1024 * 1024 + 17)
    spool = daemon.cache_dir / "spool" / "test-big"
    spool.write_bytes(big)
    async with session(daemon, tenant) as client:
        first = await make_file(client, ROOT_INO, b"big", b"small version")
        inode = await client.call("write", ino=first["ino"], path=str(spool))
        assert inode["size"] == len(big)
        # the old version's chunk is deleted after the flip, in the background
        with trio.fail_after(10):
            while True:
                rows = await trio.to_thread.run_sync(chunk_rows, cassandra, tenant, first["ino"])
                if sorted(r["chunk"] for r in rows) == [0, 1, 2, 3] and {
                    r["version"] for r in rows
                } == {inode["version"]}:
                    break
                await trio.sleep(0.1)
        await client.call("purge")
        opened = await client.call("open", ino=first["ino"])
        got = await client.call(
            "read",
            ino=first["ino"],
            content_id=inode["content_id"],
            file_size=len(big),
            offset=len(big) - 100,
            size=4096,
        )
        assert got == big[-100:]
        assert opened["inode"]["content_id"] == hashlib.sha256(big).digest()


async def test_concurrent_opens_of_a_cold_file_fetch_once(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    daemon = start_daemon()
    data = os.urandom(2 * 1024 * 1024)
    spool = daemon.cache_dir / "spool" / "test-cold"
    spool.write_bytes(data)
    async with session(daemon, tenant) as client:
        inode = await client.call("create", parent=ROOT_INO, name=b"cold", mode=0o644, uid=0, gid=0)
        await client.call("write", ino=inode["ino"], path=str(spool))
        await client.call("purge")
        before = await client.call("stats")
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(lambda: client.call("open", ino=inode["ino"]))
        after = await client.call("stats")
    assert after["bytes_fetched"] - before["bytes_fetched"] == len(data)


async def test_ttl_revalidation_sees_another_hosts_write(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    # Without the change feed (--feed-poll 0): what a host falls back to when it cannot read it.
    host_a = start_daemon("a", cache_ttl=1.0)
    host_b = start_daemon("b", 1.0, "2G", "--feed-poll", "0")
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        first = await make_file(a, ROOT_INO, b"shared", b"version one")
        seen = await b.call("lookup", parent=ROOT_INO, name=b"shared")
        assert (await b.call("open", ino=seen["ino"]))["data"] == b"version one"
        await a.call("write", ino=first["ino"], data=b"version two, longer")
        # within the TTL, b still serves what it has
        stale = await b.call("open", ino=seen["ino"])
        assert stale["data"] == b"version one"
        await trio.sleep(1.2)
        before = await b.call("stats")
        fresh = await b.call("open", ino=seen["ino"])
        after = await b.call("stats")
        assert fresh["data"] == b"version two, longer"
        assert after["revalidations"] > before["revalidations"]


async def test_namespace_errors(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    daemon = start_daemon()
    async with session(daemon, tenant) as client:
        d = await client.call("mkdir", parent=ROOT_INO, name=b"d", mode=0o755, uid=0, gid=0)
        await make_file(client, d["ino"], b"x", b"1")
        with pytest.raises(Exists):
            await client.call("mkdir", parent=ROOT_INO, name=b"d", mode=0o755, uid=0, gid=0)
        with pytest.raises(NotEmpty):
            await client.call("rmdir", parent=ROOT_INO, name=b"d")
        with pytest.raises(IsADirectory):
            await client.call("unlink", parent=ROOT_INO, name=b"d")
        with pytest.raises(CassfsError) as info:
            await client.call(
                "rename",
                old_parent=ROOT_INO,
                old_name=b"d",
                new_parent=d["ino"],
                new_name=b"below",
                flags=0,
            )
        assert info.value.errno == errno.EINVAL
        with pytest.raises(CassfsError) as info:
            await client.call("lookup", parent=ROOT_INO, name=b"n" * 256)
        assert info.value.errno == errno.ENAMETOOLONG


async def test_unlinked_inode_stays_until_purged(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], cassandra: str
) -> None:
    daemon = start_daemon()
    async with session(daemon, tenant) as client:
        f = await make_file(client, ROOT_INO, b"gone", b"still readable")
        ino = await client.call("unlink", parent=ROOT_INO, name=b"gone")
        assert ino == f["ino"]
        with pytest.raises(NotFound):
            await client.call("lookup", parent=ROOT_INO, name=b"gone")
        assert (await client.call("getattr", ino=ino))["nlink"] == 0
        assert (await client.call("open", ino=ino))["data"] == b"still readable"
        assert await client.call("purge_inode", ino=ino) is True
        with pytest.raises(NotFound):
            await client.call("getattr", ino=ino)
    assert chunk_rows(cassandra, tenant, ino) == []


async def test_tenants_are_isolated(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    daemon = start_daemon()
    other = (tenant[0], tenant[1] + "x")
    async with session(daemon, tenant) as a, session(daemon, other) as b:
        await make_file(a, ROOT_INO, b"private", b"a's")
        with pytest.raises(NotFound):
            await b.call("lookup", parent=ROOT_INO, name=b"private")
        assert await b.call("readdir", ino=ROOT_INO) == []


def run_daemon_expecting_failure(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cached ARGS`` in the foreground; it should exit at start-up."""
    return subprocess.run(
        [sys.executable, "-m", "cached", *args], capture_output=True, text=True, timeout=60
    )


def test_daemon_reports_missing_schema(tmp_path: Path, cassandra: str) -> None:
    result = run_daemon_expecting_failure(
        "--cache-dir",
        str(tmp_path / "c"),
        "--contact-points",
        cassandra,
        "--keyspace",
        "cassfs_never_applied",
    )
    assert result.returncode == 2
    assert "cassfs schema apply" in result.stderr


def test_daemon_reports_unreachable_cassandra(tmp_path: Path) -> None:
    result = run_daemon_expecting_failure(
        "--cache-dir", str(tmp_path / "c"), "--contact-points", "127.0.0.1:1"
    )
    assert result.returncode == 2
    assert "unreachable at 127.0.0.1:1" in result.stderr


async def test_cache_dir_survives_kill_9_during_writes(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """diskcache keeps its index in SQLite: a daemon killed mid-write leaves a usable cache,
    and every acknowledged write reads back whole from it or from Cassandra."""
    daemon = start_daemon("crashy")
    contents = {f"f{i:03}".encode(): os.urandom(5000 + 997 * i) for i in range(60)}
    acknowledged: set[bytes] = set()
    some_done = trio.Event()

    async def writer(client: DaemonClient, name: bytes) -> None:
        try:
            await make_file(client, ROOT_INO, name, contents[name])
            acknowledged.add(name)
            if len(acknowledged) >= 3:  # some done, most still in flight
                some_done.set()
        except CassfsError:
            pass  # the daemon died under this write

    async with session(daemon, tenant) as client:
        async with trio.open_nursery() as nursery:
            for name in contents:
                nursery.start_soon(writer, client, name)
            with trio.fail_after(30):
                await some_done.wait()
            daemon.process.kill()  # SIGKILL, mid-flight
    daemon.process.wait()
    assert acknowledged, "no write finished before the kill"
    # Same cache dir, a new process.  The cache is written behind the replies (in SQLite
    # transactions of a batch each): the kill lost what was still queued, which reads
    # fetch again; what is on disk is whole and usable.
    restarted = start_daemon("crashy")
    async with session(restarted, tenant) as client:
        listing = await client.call("readdir", ino=ROOT_INO)
        for name, inode in listing:
            opened = await client.call("open", ino=inode["ino"], inline=False)
            data = await client.call(
                "read",
                ino=inode["ino"],
                content_id=opened["inode"]["content_id"],
                file_size=opened["inode"]["size"],
                offset=0,
                size=opened["inode"]["size"],
            )
            # a file is whole, or (created, never written) empty: never a mix
            assert data in (contents[name], b"")
        names = {name for name, _ in listing}
        assert acknowledged <= names
        for name in acknowledged:
            inode = next(i for n, i in listing if n == name)
            assert inode["size"] == len(contents[name])


async def test_typed_api_speaks_every_content_and_name_reply(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """The front's typed calls (cached.api.DaemonApi) read what the daemon's methods build."""
    daemon = start_daemon()
    async with session(daemon, tenant) as client:
        api = DaemonApi(client)
        made = await api.create(ROOT_INO, b"typed", 0o640, 0, 0)
        written = await api.write(made.ino, data=b"typed bytes")
        assert (written.size, written.mode & 0o777) == (11, 0o640)
        opened = await api.open(made.ino)
        assert (opened.inode.ino, opened.data, opened.fresh_for > 0) == (
            made.ino,
            b"typed bytes",
            True,
        )
        moved = await api.rename(ROOT_INO, b"typed", ROOT_INO, b"typed2")
        assert moved == Renamed(made.ino, 0)
        whole = await api.materialize(made.ino)
        assert (whole.inode.content_id, whole.data, whole.path) == (
            hashlib.sha256(b"typed bytes").digest(),
            b"typed bytes",
            None,
        )
        assert [(name, inode.ino) for name, inode in await api.readdir(ROOT_INO)] == [
            (b"typed2", made.ino)
        ]


async def test_user_and_group_ids_above_2_31_round_trip(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """Linux ids go up to 2**32 - 2; the schema's columns are signed 32-bit ints."""
    daemon = start_daemon()
    async with session(daemon, tenant) as client:
        made = await client.call(
            "create", parent=ROOT_INO, name=b"ids", mode=0o644, uid=3_000_000_000, gid=2**31
        )
        changed = await client.call("setattr", ino=made["ino"], gid=2**32 - 2)
    fresh = start_daemon("fresh")  # nothing cached: read back from Cassandra
    async with session(fresh, tenant) as client:
        found = await client.call("lookup", parent=ROOT_INO, name=b"ids")
    assert (made["uid"], made["gid"]) == (3_000_000_000, 2**31)
    assert (changed["uid"], changed["gid"]) == (3_000_000_000, 2**32 - 2)
    assert (found["uid"], found["gid"]) == (3_000_000_000, 2**32 - 2)


async def test_a_change_returns_after_the_other_sessions_acted_on_it(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """Two mounts of one tenant on one daemon: when a change made through one returns, the
    other's notification handler has already run (a mount of the same host never answers
    from what it was told is stale), and a session of another tenant is told nothing."""
    daemon = start_daemon()
    seen: list[tuple[str, list[int]]] = []
    other_tenant: list[str] = []
    path = socket_path(daemon.cache_dir)
    async with (
        session(daemon, tenant) as a,
        open_client(path, lambda event, params: seen.append((event, params["inos"]))) as b,
        open_client(path, lambda event, params: other_tenant.append(event)) as c,
    ):
        await b.hello(*tenant)
        await c.hello(tenant[0], tenant[1] + "-other")
        written = await make_file(a, ROOT_INO, b"f", b"data")
        ino = written["ino"]
        assert ("changed", [ino]) in seen  # the write's flip, acted on before it returned
        seen.clear()
        await a.call("setattr", ino=ino, mode=0o600)
        assert seen == [("changed", [ino])]
        seen.clear()
        await a.call("setxattr", ino=ino, name=b"user.k", value=b"v", flags=0)
        assert seen == [("changed", [ino])]
        assert other_tenant == []


async def test_a_change_waits_for_the_other_sessions_acknowledgement(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """The daemon answers a change only once the tenant's other sessions said ``seen``."""
    daemon = start_daemon()
    decoder = protocol.Decoder()

    async def next_message(stream: trio.SocketStream) -> protocol.Message:
        while True:
            for message in decoder.feed(await stream.receive_some(65536)):
                return message  # one message at a time suffices here

    async with session(daemon, tenant) as a:
        written = await make_file(a, ROOT_INO, b"f", b"data")
        stream = await trio.open_unix_socket(str(socket_path(daemon.cache_dir)))
        async with stream, trio.open_nursery() as nursery:
            await stream.send_all(
                protocol.pack_request(
                    1, "hello", {"owner": tenant[0], "environment": tenant[1], "acks": True}
                )
            )
            assert isinstance(await next_message(stream), protocol.Response)
            done = trio.Event()

            async def change() -> None:
                await a.call("setattr", ino=written["ino"], mode=0o600)
                done.set()

            nursery.start_soon(change)
            told = await next_message(stream)
            assert isinstance(told, protocol.Notification) and told.event == "changed"
            assert told.params["inos"] == [written["ino"]]
            with trio.move_on_after(0.5):  # no answer comes without the acknowledgement
                await done.wait()
            assert not done.is_set()
            await stream.send_all(protocol.pack_request(2, "seen", {"seq": told.params["seq"]}))
            await done.wait()
            # Withheld: the change returns anyway (after at most 2 s) and the session is
            # marked lagging, so the next change does not wait for it (one warning).
            await a.call("setattr", ino=written["ino"], mode=0o644)
            await a.call("setattr", ino=written["ino"], mode=0o640)
            assert daemon.log.read_text().count("did not acknowledge a change") == 1


def queries_sent(port: int, statement: str) -> int:
    """How many ``statement`` queries the daemon serving metrics on ``port`` has sent."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = re.search(
        rf'^cassfs_cassandra_query_duration_seconds_count\{{statement="{statement}"\}} (\S+)$',
        text,
        re.M,
    )
    return int(float(found.group(1))) if found else 0


async def test_a_rename_over_a_name_it_knows_reads_no_name_and_a_stale_one_still_lands(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """A rename takes both names from the daemon's cache on its first try (a temp file
    made there, renamed over a name it knows): no name is read.  A cached target that
    another host replaced meanwhile (this host follows no feed here) fails the move's
    LWT, and the next try reads both names: the rename replaces what is there now."""
    port = free_port()
    host_a = start_daemon("a")
    host_b = start_daemon(
        "b", 600.0, "2G", "--feed-poll", "0", "--metrics-address", f"127.0.0.1:{port}"
    )
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        x = await make_file(a, ROOT_INO, b"target", b"x")
        assert (await b.call("lookup", parent=ROOT_INO, name=b"target"))["ino"] == x["ino"]
        y = await make_file(a, ROOT_INO, b"y.tmp", b"y")
        await a.call(
            "rename", old_parent=ROOT_INO, old_name=b"y.tmp", new_parent=ROOT_INO,
            new_name=b"target",
        )  # fmt: skip
        z = await make_file(b, ROOT_INO, b"z.tmp", b"z")
        moved = await b.call(
            "rename", old_parent=ROOT_INO, old_name=b"z.tmp", new_parent=ROOT_INO,
            new_name=b"target",
        )  # fmt: skip
        assert moved == Renamed(z["ino"], y["ino"]).to_wire()  # y lost its last name
        w = await make_file(b, ROOT_INO, b"w.tmp", b"w")
        before = queries_sent(port, "get_dentry")
        moved = await b.call(
            "rename", old_parent=ROOT_INO, old_name=b"w.tmp", new_parent=ROOT_INO,
            new_name=b"target",
        )  # fmt: skip
        assert moved == Renamed(w["ino"], z["ino"]).to_wire()
        assert queries_sent(port, "get_dentry") == before
        for client in (a, b):
            with pytest.raises(NotFound):
                await client.call("lookup", parent=ROOT_INO, name=b"w.tmp")
        seen = await b.call("lookup", parent=ROOT_INO, name=b"target")
        assert (await b.call("open", ino=seen["ino"]))["data"] == b"w"
        # Host a sees it once the feed tells it (its own rename cached y under the name).
        with trio.fail_after(10):
            while True:
                if (await a.call("lookup", parent=ROOT_INO, name=b"target"))["ino"] == w["ino"]:
                    break
                await trio.sleep(0.05)  # the next poll of the feed (every 0.2 s)
        assert (await a.call("open", ino=w["ino"]))["data"] == b"w"


async def test_small_content_without_its_versions_row_is_read_from_its_inode_row(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], cassandra: str
) -> None:
    """A small file's versions row is written beside the flip that puts its bytes in the
    inode row: another host may read it before the row lands (or a killed writer left
    none).  A read by range on a cold host then takes the bytes from the inode row,
    where it used to find no chunks and fail with EIO."""
    host_a, host_b = start_daemon("a"), start_daemon("b")
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        written = await make_file(a, ROOT_INO, b"kept.php", b"<?php echo 'kept';")
        cluster = make_cluster(ContactPoints.parse(cassandra))
        try:
            cluster.connect().execute(
                f"DELETE FROM {KEYSPACE}.versions WHERE owner = %s AND environment = %s "
                "AND ino = %s AND version = %s",
                (*tenant, written["ino"], written["version"]),
            )
        finally:
            cluster.shutdown()
        data = await b.call(
            "read", ino=written["ino"], content_id=written["content_id"],
            file_size=written["size"], offset=6, size=4,
        )  # fmt: skip
        assert data == b"echo"
