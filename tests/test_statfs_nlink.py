"""POSIX figures (issue 7): statfs from the tenant's usage counters, a directory's st_nlink
(2 + its subdirectories), and the limits on names (ENAMETOOLONG) and file sizes (EFBIG).

Real mounts and daemons on the real node; each test has a tenant of its own, so its usage
counters start at zero (the root inode, made by the first hello, is the first inode).
"""

from __future__ import annotations

import errno
import functools
import math
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from cached.api import MAX_FILE_SIZE
from cached.cache import LocalCache
from cached.client import DaemonClient, open_client, socket_path
from cached.model import DIRECTORY, ROOT_INO
from cached.stats import Counters
from cassfs.fs import STATFS_BLOCK, STATFS_CAPACITY, STATFS_INODES, statvfs_data
from tests.conftest import KEYSPACE, Daemon, Mount, errno_of, run_cli

#: Kernel and daemon caches short, deletions at once: figures settle within a second or two.
FAST = ["--cache-ttl", "0.3", "--entry-ttl", "0.1", "--negative-ttl", "0.1", "--purge-delay", "0"]


def used(path: Path) -> tuple[int, int]:
    """``(blocks, inodes)`` in use on the mount at ``path``, by ``os.statvfs``."""
    st = os.statvfs(path)
    assert (st.f_bsize, st.f_frsize, st.f_namemax) == (STATFS_BLOCK, STATFS_BLOCK, 255)
    assert st.f_blocks == STATFS_CAPACITY // STATFS_BLOCK and st.f_files == STATFS_INODES
    assert st.f_bfree == st.f_bavail and st.f_ffree == st.f_favail
    return st.f_blocks - st.f_bfree, st.f_files - st.f_ffree


def blocks(size: int) -> int:
    return math.ceil(size / STATFS_BLOCK)


def settles(check: Callable[[], object], expected: object, seconds: float = 10.0) -> object:
    """Poll ``check()`` until it returns ``expected`` (then return it) or ``seconds`` pass
    (then return the last value or ENOENT, for the assertion's message)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = check()
        except FileNotFoundError as exc:  # not seen by this host yet
            value = exc
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


# -- statfs ---------------------------------------------------------------------------------


def test_statvfs_data_is_capacity_less_use() -> None:
    data = statvfs_data(0, 0)
    assert data.f_bfree == data.f_blocks == 2**48 // 4096 and data.f_ffree == 2**32
    data = statvfs_data(1, 1)
    assert data.f_blocks - data.f_bfree == 1 and data.f_files - data.f_ffree == 1
    data = statvfs_data(4096, 7)
    assert data.f_blocks - data.f_bavail == 1 and data.f_files - data.f_favail == 7
    data = statvfs_data(4097, 0)
    assert data.f_blocks - data.f_bfree == 2
    full = statvfs_data(2**49, 2**33)
    assert (full.f_bfree, full.f_bavail, full.f_ffree, full.f_favail) == (0, 0, 0, 0)


@pytest.mark.cassandra
@pytest.mark.fuse
def test_statfs_shows_the_tenants_use_on_every_host(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    a = mount_cassfs("a", *tenant, None, *FAST)
    assert used(a.path) == (0, 1)  # the root
    sizes = {"one": 1, "page": 4096, "big": 3 * 1024 * 1024 + 5, "small": 10_000}
    (a.path / "d" / "e").mkdir(parents=True)
    for name, size in sizes.items():
        (a.path / "d" / name).write_bytes(os.urandom(size))
    os.symlink("d/one", a.path / "link")  # an inode; its target is no content
    (a.path / "empty").touch()
    total = sum(sizes.values())
    inodes = 1 + 2 + len(sizes) + 2
    assert settles(lambda: used(a.path), (blocks(total), inodes)) == (blocks(total), inodes)

    b = mount_cassfs("b", *tenant, None, *FAST)  # another host: the same counters
    assert used(b.path) == (blocks(total), inodes)

    # A rewrite counts the difference of the sizes, a truncate too.
    (a.path / "d" / "big").write_bytes(b"x" * 100)
    os.truncate(a.path / "d" / "small", 20_000)
    total += 100 - sizes["big"] + 10_000
    assert settles(lambda: used(b.path), (blocks(total), inodes)) == (blocks(total), inodes)

    # An unlinked inode counts until it is purged (at once here: --purge-delay 0).
    os.unlink(a.path / "d" / "small")
    os.unlink(a.path / "link")
    os.rmdir(a.path / "d" / "e")
    total -= 20_000
    inodes -= 3
    assert settles(lambda: used(a.path), (blocks(total), inodes)) == (blocks(total), inodes)
    assert settles(lambda: used(b.path), (blocks(total), inodes)) == (blocks(total), inodes)

    # A file held open stays counted after its unlink, until it is closed.
    with open(a.path / "d" / "page", "rb") as held:
        os.unlink(a.path / "d" / "page")
        time.sleep(1.5)
        assert used(a.path) == (blocks(total), inodes)
        assert len(held.read()) == 4096
    total -= 4096
    inodes -= 1
    assert settles(lambda: used(a.path), (blocks(total), inodes)) == (blocks(total), inodes)


@asynccontextmanager
async def session(daemon: Daemon, tenant: tuple[int, str]) -> AsyncIterator[DaemonClient]:
    async with open_client(socket_path(daemon.cache_dir)) as client:
        await client.hello(*tenant)
        yield client


async def figures(client: DaemonClient) -> tuple[int, int]:
    reply = await client.call("statfs")
    return reply["bytes"], reply["inodes"]


async def settled(client: DaemonClient, expected: tuple[int, int]) -> tuple[int, int]:
    """The daemon's statfs figures once they equal ``expected`` (or after 10 s)."""
    for _poll in range(200):
        found = await figures(client)
        if found == expected:
            break
        await trio.sleep(0.05)
    return found


@pytest.mark.cassandra
async def test_usage_counts_bytes_exactly_and_each_purge_once(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    first, second = start_daemon("first"), start_daemon("second")
    async with session(first, tenant) as a, session(second, tenant) as b:
        assert await settled(a, (0, 1)) == (0, 1)  # the root
        assert await settled(b, (0, 1)) == (0, 1)  # another host: within a flush and a TTL
        inodes = []
        for index in range(6):
            made = await a.call("create", parent=ROOT_INO, name=b"f%d" % index, mode=0o644,
                                uid=0, gid=0)  # fmt: skip
            await a.call("write", ino=made["ino"], data=b"x" * (1000 + index))
            inodes.append(made["ino"])
        total = sum(1000 + index for index in range(6))
        assert await figures(a) == (total, 7)  # this host's changes count at once
        assert await settled(b, (total, 7)) == (total, 7)
        # A rewrite with the same bytes changes nothing; a shorter one counts the difference.
        await a.call("write", ino=inodes[0], data=b"x" * 1000)
        await b.call("write", ino=inodes[1], data=b"y" * 10)
        total -= 991
        assert await settled(a, (total, 7)) == (total, 7)
        # Both hosts purge the same unlinked inodes at once: each is counted out once.
        for index in range(3):
            await a.call("unlink", parent=ROOT_INO, name=b"f%d" % index)
        async with trio.open_nursery() as nursery:
            for ino in inodes[:3]:
                nursery.start_soon(functools.partial(a.call, "purge_inode", ino=ino))
                nursery.start_soon(functools.partial(b.call, "purge_inode", ino=ino))
        total -= 1000 + 10 + 1002
        assert await settled(a, (total, 4)) == (total, 4)
        assert await settled(b, (total, 4)) == (total, 4)


@pytest.mark.cassandra
async def test_two_first_hellos_count_one_root(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    daemons = [start_daemon(f"host{index}") for index in range(3)]
    roots: list[int] = []

    async def hello(daemon: Daemon) -> None:
        async with session(daemon, tenant) as client:
            roots.append((await client.call("getattr", ino=ROOT_INO))["ctime_ns"])

    async with trio.open_nursery() as nursery:
        for daemon in daemons:
            nursery.start_soon(hello, daemon)
    assert len(set(roots)) == 1, "every host serves the one root made"
    async with session(daemons[0], tenant) as client:
        assert await settled(client, (0, 1)) == (0, 1)


# -- directory link counts ------------------------------------------------------------------


async def test_a_counted_directory_is_forgotten_when_this_daemon_changes_it(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    cache = LocalCache(tmp_path / "c", 2**20 * 64, 10.0, Counters(tmp_path / "n"), lambda: now[0])
    tenant = (1, "t")
    try:
        assert cache.subdirectories(tenant, 5) is None
        cache.put_subdirectories(tenant, 5, 3, now[0])
        assert cache.subdirectories(tenant, 5) == 3
        now[0] += 10.5  # past the TTL
        assert cache.subdirectories(tenant, 5) is None
        read_at = now[0]
        cache.put_subdirectories(tenant, 5, 3, read_at)
        now[0] += 1
        await cache.update_listing(tenant, 5, b"sub", 9, DIRECTORY)  # a mkdir here
        assert cache.subdirectories(tenant, 5) is None
        cache.put_subdirectories(tenant, 5, 3, read_at)  # a read begun before it: dropped
        assert cache.subdirectories(tenant, 5) is None
        now[0] += 0.1
        cache.put_subdirectories(tenant, 5, 4, now[0])  # a read begun after it
        assert cache.subdirectories(tenant, 5) == 4
        assert cache.subdirectories((1, "other"), 5) is None
    finally:
        cache.close()


@pytest.mark.cassandra
async def test_directory_nlink_reads_little_and_caches_no_listing(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    # "there" follows no change feed (--feed-poll 0): the reads counted are the count's own,
    # not those of entries the feed makes it forget.
    here, there = start_daemon("here"), start_daemon("there", 60.0, "2G", "--feed-poll", "0")
    async with session(here, tenant) as a, session(there, tenant) as b:
        made = await a.call("mkdir", parent=ROOT_INO, name=b"d", mode=0o755, uid=0, gid=0)
        assert made["nlink"] == 2
        for name in (b"x", b"y"):
            await a.call("mkdir", parent=made["ino"], name=name, mode=0o755, uid=0, gid=0)
        await a.call("create", parent=made["ino"], name=b"f", mode=0o644, uid=0, gid=0)
        # A stat on the other host reads the count once, and caches no listing: a name
        # made afterwards is found at once (its lookups are as before).
        d = await b.call("lookup", parent=ROOT_INO, name=b"d")
        assert d["nlink"] == 4
        before = there.stats()
        for _ in range(5):
            assert (await b.call("getattr", ino=d["ino"]))["nlink"] == 4
        assert there.stats()["misses"] == before["misses"]
        await a.call("create", parent=d["ino"], name=b"new", mode=0o644, uid=0, gid=0)
        assert (await b.call("lookup", parent=d["ino"], name=b"new"))["kind"] == 2
        # This host's listing of d (loaded by that lookup) answers with no read, and
        # follows its own mkdir at once.
        await b.call("mkdir", parent=d["ino"], name=b"z", mode=0o755, uid=0, gid=0)
        before = there.stats()
        assert (await b.call("getattr", ino=d["ino"]))["nlink"] == 5
        assert there.stats()["misses"] == before["misses"]
        # readdir answers the same count for each subdirectory; a file's nlink is its own.
        listing = {bytes(n): inode for n, inode in await b.call("readdir", ino=ROOT_INO)}
        assert listing[b"d"]["nlink"] == 5
        inner = {bytes(n): inode["nlink"] for n, inode in await b.call("readdir", ino=d["ino"])}
        assert inner == {b"f": 1, b"new": 1, b"x": 2, b"y": 2, b"z": 2}


def nlink(path: Path) -> int:
    return os.stat(path).st_nlink


@pytest.mark.cassandra
@pytest.mark.fuse
def test_directory_nlink_is_two_plus_its_subdirectories(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("here", *tenant, None, *FAST)
    other = mount_cassfs("there", *tenant, None, *FAST)
    root = m.path
    assert nlink(root) == 2
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "c").mkdir()
    (root / "a" / "file").write_text("not a directory")
    os.symlink("b", root / "a" / "link")
    assert nlink(root / "a") == 4
    assert nlink(root / "a" / "b") == 2
    assert nlink(root) == 3
    assert os.lstat(root / "a" / "file").st_nlink == 1
    assert settles(lambda: nlink(other.path / "a"), 4) == 4  # the other host, within the TTLs

    os.rmdir(root / "a" / "b")
    assert nlink(root / "a") == 3
    os.rename(root / "a" / "c", root / "c")
    assert (nlink(root / "a"), nlink(root), nlink(root / "c")) == (2, 4, 2)
    assert settles(lambda: (nlink(other.path / "a"), nlink(other.path)), (2, 4)) == (2, 4)

    # ls -l and readdir give the same counts as stat.
    with os.scandir(root) as entries:
        counts = {e.name: e.stat(follow_symlinks=False).st_nlink for e in entries}
    assert counts == {"a": 2, "c": 2}

    # Moved by the other host: seen here within the TTLs.  The other host's counts above
    # come from a count of the entries, not from the listing its lookups use, which a
    # load in flight across the move may hold for a moment more: wait for the name too.
    assert settles(lambda: (other.path / "c").is_dir(), True) is True
    (other.path / "c" / "x").mkdir()
    os.rename(other.path / "c", other.path / "a" / "c")
    assert settles(lambda: (nlink(root / "a"), nlink(root)), (3, 3)) == (3, 3)
    assert settles(lambda: nlink(root / "a" / "c"), 3) == 3

    # A removed directory held open reports 0.
    (root / "gone").mkdir()
    fd = os.open(root / "gone", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(root / "gone")
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    # find(1) finds every directory (its leaf optimisation trusts these counts on FUSE).
    (root / "a" / "c" / "x" / "f").write_text("a file beside no directory")
    found = subprocess.run(
        ["find", ".", "-mindepth", "1", "-type", "d"], cwd=root, check=True,
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert sorted(found) == ["./a", "./a/c", "./a/c/x"]


# -- limits ---------------------------------------------------------------------------------


def name_errnos(root: Path, path: Path) -> dict[str, int]:
    """The errno of every name-taking syscall on ``path`` (0: it worked); ``root`` holds
    a file ``f``."""
    checks: dict[str, Callable[[], object]] = {
        "create": lambda: os.open(path, os.O_CREAT | os.O_WRONLY, 0o644),
        "mkdir": lambda: os.mkdir(path),
        "symlink": lambda: os.symlink("f", path),
        "link": lambda: os.link(root / "f", path),
        "mknod": lambda: os.mkfifo(path),
        "rename to": lambda: os.rename(root / "f", path),
        "rename from": lambda: os.rename(path, root / "g"),
        "lookup": lambda: os.stat(path),
        "unlink": lambda: os.unlink(path),
        "rmdir": lambda: os.rmdir(path),
    }
    return {op: errno_of(fn) for op, fn in checks.items()}


@pytest.mark.cassandra
@pytest.mark.fuse
def test_names_over_255_bytes_and_sizes_past_the_maximum(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("limits", *tenant)
    root = m.path
    (root / "f").write_text("x")
    (root / "d").mkdir()
    longest, too_long = "n" * 255, "n" * 256
    long_utf8 = "é" * 128  # 256 bytes in 128 characters
    for name in (too_long, long_utf8):
        failed = name_errnos(root, root / "d" / name)
        assert failed == dict.fromkeys(failed, errno.ENAMETOOLONG)
    assert os.listdir(root / "d") == []
    (root / "d" / longest).write_text("255 bytes is fine")
    (root / "d" / longest[:-1]).mkdir()
    assert sorted(os.listdir(root / "d")) == [longest[:-1], longest]

    path = root / "f"
    assert errno_of(lambda: os.truncate(path, MAX_FILE_SIZE + 1)) == errno.EFBIG
    with open(path, "r+b") as handle:
        assert errno_of(lambda: os.pwrite(handle.fileno(), b"x", MAX_FILE_SIZE)) == errno.EFBIG
    assert path.read_text() == "x"


@pytest.mark.cassandra
async def test_fsck_repairs_move_the_usage_counters(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], cassandra: str
) -> None:
    daemon = start_daemon()
    async with session(daemon, tenant) as client:
        made = await client.call("create", parent=ROOT_INO, name=b"f", mode=0o644, uid=0, gid=0)
        await client.call("write", ino=made["ino"], data=b"z" * 3000)
        assert await figures(client) == (3000, 2)
        # Unlinked, and never purged (its daemon died, say): fsck's repair deletes it.
        await client.call("unlink", parent=ROOT_INO, name=b"f")
        result = run_cli(
            "fsck", "--contact-points", cassandra, "--keyspace", KEYSPACE, "--owner",
            str(tenant[0]), "--environment", tenant[1], "--repair", "--grace", "0",
            "--no-content", check=False,
        )  # fmt: skip
        assert "unlinked" in result.stdout and result.returncode == 0, result.stdout
        assert await settled(client, (0, 1)) == (0, 1)
        # Its daemon purging it afterwards counts nothing more.
        assert await client.call("purge_inode", ino=made["ino"]) is False
        assert await settled(client, (0, 1)) == (0, 1)
