"""Bounded resources against the real node and real mounts: the maximum file size (EFBIG),
sparse files stored as their data chunks, a file larger than the cache read whole, and a
``read`` asking for far more than a file holds.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from cached.api import MAX_FILE_SIZE
from cached.client import DaemonClient, open_client, socket_path
from cached.content import CHUNK_SIZE
from cached.errors import FileTooLarge, InvalidArgument
from cached.model import ROOT_INO
from cached.versions import CHUNK_CONCURRENCY, run_workers, scan_file
from tests.conftest import KEYSPACE, Daemon, Mount, run_cli
from tests.test_daemon import chunk_rows as daemon_chunk_rows

pytestmark = [pytest.mark.cassandra]

TIB = 1024**4


@asynccontextmanager
async def session(daemon: Daemon, tenant: tuple[int, str]) -> AsyncIterator[DaemonClient]:
    async with open_client(socket_path(daemon.cache_dir)) as client:
        await client.hello(*tenant)
        yield client


def chunk_rows(cassandra: str, tenant: tuple[int, str], ino: int) -> list[tuple[bytes, int]]:
    """``(version, chunk)`` of every chunk row of ``ino``, sorted (a scan: tests only)."""
    return sorted(
        (row["version"], row["chunk"]) for row in daemon_chunk_rows(cassandra, tenant, ino)
    )


def fsck(cassandra: str, tenant: tuple[int, str]) -> tuple[int, str]:
    """``cassfs fsck`` of ``tenant`` (content checked): exit status and output."""
    result = run_cli(
        "fsck", "--contact-points", cassandra, "--keyspace", KEYSPACE,
        "--owner", str(tenant[0]), "--environment", tenant[1], check=False,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def purge(m: Mount) -> None:
    """Empty the mount's cache and the kernel's: the next reads come from Cassandra."""
    m.cli("cache", "purge", "--cache-dir", str(m.cache_dir))


# -- the maximum file size ----------------------------------------------------------------


def test_writes_and_truncates_past_the_maximum_fail_with_efbig(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("efbig", *tenant)
    path = m.path / "f"
    path.write_bytes(b"hello")
    before = os.stat(path)
    fd = os.open(path, os.O_RDWR)
    try:
        for offset in (TIB, MAX_FILE_SIZE, MAX_FILE_SIZE + 1):
            with pytest.raises(OSError) as info:
                os.pwrite(fd, b"x", offset)
            assert info.value.errno == errno.EFBIG, offset
        with pytest.raises(OSError) as info:
            os.ftruncate(fd, MAX_FILE_SIZE + 1)
        assert info.value.errno == errno.EFBIG
    finally:
        os.close(fd)  # nothing was buffered: the close publishes nothing
    for size in (TIB, MAX_FILE_SIZE + 1):
        with pytest.raises(OSError) as info:
            os.truncate(path, size)
        assert info.value.errno == errno.EFBIG
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (5, before.st_mtime_ns)
    assert path.read_bytes() == b"hello"
    purge(m)
    assert path.read_bytes() == b"hello"  # and so in Cassandra


async def test_the_daemon_refuses_content_past_the_maximum(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], cassandra: str
) -> None:
    daemon = start_daemon()
    spool = daemon.cache_dir / "spool" / "test-huge"
    spool.touch()
    await trio.to_thread.run_sync(os.truncate, spool, MAX_FILE_SIZE + 1)  # sparse: no cost
    async with session(daemon, tenant) as client:
        inode = await client.call("create", parent=ROOT_INO, name=b"f", mode=0o644, uid=0, gid=0)
        written = await client.call("write", ino=inode["ino"], data=b"hello")
        rows = await trio.to_thread.run_sync(chunk_rows, cassandra, tenant, inode["ino"])
        with trio.fail_after(10):  # refused before the file is read, let alone hashed
            with pytest.raises(FileTooLarge) as info:
                await client.call("write", ino=inode["ino"], path=str(spool))
        assert info.value.errno == errno.EFBIG
        for size in (MAX_FILE_SIZE + 1, TIB):
            with pytest.raises(FileTooLarge):
                await client.call("setattr", ino=inode["ino"], size=size)
        await client.call("purge")
        now = await client.call("getattr", ino=inode["ino"])
        assert (now["size"], now["version"]) == (5, written["version"])
        opened = await client.call("open", ino=inode["ino"])
        assert opened["data"] == b"hello"
    assert await trio.to_thread.run_sync(chunk_rows, cassandra, tenant, inode["ino"]) == rows


# -- sparse files -------------------------------------------------------------------------


def test_a_sparse_file_stores_only_its_data_chunks(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], cassandra: str
) -> None:
    size = 256 * CHUNK_SIZE
    middle = 100 * CHUNK_SIZE + 7
    # a cache smaller than the file: it is fetched back through a file of its own
    m = mount_cassfs("sparse", *tenant, None, "--cache-size", "64M")
    path = m.path / "sparse.bin"
    started = time.monotonic()
    with open(path, "wb") as out:
        out.seek(middle)
        out.write(b"middle")
        out.seek(size - 4)
        out.write(b"tail")
    written = time.monotonic() - started
    ino = os.stat(path).st_ino
    assert os.stat(path).st_size == size
    # two data chunks stored, not 256
    assert [chunk for _, chunk in chunk_rows(cassandra, tenant, ino)] == [100, 255]
    purge(m)
    started = time.monotonic()
    with open(path, "rb") as reader:
        reader.seek(size - 8)
        assert reader.read() == b"\0\0\0\0tail"
        reader.seek(middle - 3)
        assert reader.read(12) == b"\0\0\0middle\0\0\0"
        reader.seek(5 * CHUNK_SIZE)
        assert reader.read(CHUNK_SIZE) == bytes(CHUNK_SIZE)
    read = time.monotonic() - started
    status, output = fsck(cassandra, tenant)  # holes are not missing chunks
    assert status == 0, output
    print(f"sparse {size} B: close {written:.2f} s, cold read {read:.2f} s")


# -- a file larger than the cache -----------------------------------------------------------


def test_a_file_larger_than_the_cache_reads_whole_while_others_are_read(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("small-cache", *tenant, None, "--cache-size", "2M")
    big = os.urandom(6 * CHUNK_SIZE + 123)
    (m.path / "big").write_bytes(big)
    others = {m.path / f"other{i}": os.urandom(700 * 1024 + i) for i in range(6)}
    for other, data in others.items():
        other.write_bytes(data)
    purge(m)
    done = threading.Event()
    failures: list[BaseException] = []
    rounds = [0]

    def read_others() -> None:
        # each round reads every other file from the daemon (the kernel's pages dropped),
        # so the daemon keeps fetching and writing them to its 2 MiB cache
        try:
            while not done.is_set():
                for other, data in others.items():
                    fd = os.open(other, os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        assert os.read(fd, len(data) + 1) == data
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)
                rounds[0] += 1
        except BaseException as exc:
            failures.append(exc)

    readers = [threading.Thread(target=read_others) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + 30
        while rounds[0] < 2 and not failures and time.monotonic() < deadline:
            time.sleep(0.05)  # the other readers are going before the big file is read
        with open(m.path / "big", "rb") as f:
            got = b"".join(iter(lambda: f.read(128 * 1024), b""))
    finally:
        done.set()
        for reader in readers:
            reader.join(60)
    assert not failures, failures
    assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
    assert len(got) == len(big)
    assert m.stats()["evictions"] > 0  # the cache was under pressure all along


# -- a read asking for too much -------------------------------------------------------------


async def test_a_huge_read_is_clamped_not_allocated(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    daemon = start_daemon()
    data = os.urandom(300_000)
    async with session(daemon, tenant) as client:
        inode = await client.call("create", parent=ROOT_INO, name=b"f", mode=0o644, uid=0, gid=0)
        inode = await client.call("write", ino=inode["ino"], data=data)

        async def read(offset: int, size: int) -> Any:
            return await client.call(
                "read", ino=inode["ino"], content_id=inode["content_id"],
                file_size=len(data), offset=offset, size=size,
            )  # fmt: skip

        for offset in (0, 1000, len(data) - 10, len(data) + 5):
            try:
                got = await read(offset, 2**40)
            except InvalidArgument:
                pass  # refusing the request outright (EINVAL) is as good as clamping it
            else:
                assert got == data[offset:]
        assert await read(10, 20) == data[10:30]  # and it goes on serving
    assert daemon.process.poll() is None
    log = daemon.log.read_text()
    assert "MemoryError" not in log


# -- the pieces, without services ------------------------------------------------------------


def test_scan_file_hashes_holes_without_storing_them(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as out:
        out.truncate(8 * CHUNK_SIZE + 5)
        out.seek(3 * CHUNK_SIZE + 1)
        out.write(b"data")
        out.seek(5 * CHUNK_SIZE)
        out.write(bytes(CHUNK_SIZE))  # written zeros: allocated, still a hole to store
    whole = path.read_bytes()
    assert scan_file(path, CHUNK_SIZE) == (hashlib.sha256(whole).digest(), len(whole), [3])


async def test_chunk_work_runs_in_a_fixed_number_of_tasks() -> None:
    running = peak = 0
    done: list[int] = []

    async def work(index: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.lowlevel.checkpoint()
        running -= 1
        done.append(index)

    await run_workers(work, range(4096))
    assert sorted(done) == list(range(4096)) and peak == CHUNK_CONCURRENCY

    async def fail(index: int) -> None:
        if index == 7:
            raise FileTooLarge("seven")
        await trio.lowlevel.checkpoint()

    with pytest.raises(FileTooLarge, match="seven"):  # alone, not in an ExceptionGroup
        await run_workers(fail, range(100))
