"""The change feed (issue 9): another host's change is seen within a poll, not a TTL.

Two daemons on one tenant with a cache TTL of an hour, so that nothing but the feed can
make host B see host A's changes within the waits here; then two real mounts with the
default flags.  The feed's reading rules (overlap, duplicates, its own rows, failures and
gaps) are unit-tested over plain data at the end.
"""

from __future__ import annotations

import errno
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from cached.client import DaemonClient
from cached.errors import CassfsError, StorageError
from cached.feed import APPEND_WINDOW, GAP_LIMIT, OVERLAP, ROW_LIMIT, Feed
from cached.model import ROOT_INO
from cached.store import Change
from tests.conftest import Daemon, Mount, wait_for
from tests.test_daemon import make_file, session

#: Seconds a test waits for another host's change to show: far under the TTLs in use
#: (an hour for the daemons; the mounts' cache TTL is 60 s), far over a feed poll.
SHOWS_WITHIN = 10.0
HOUR = 3600.0


async def eventually(probe: Callable[[], Any], within: float = SHOWS_WITHIN) -> Any:
    """Call ``probe`` (async) until it returns something true; fail after ``within`` s."""
    deadline = trio.current_time() + within
    while True:
        result = await probe()
        if result:
            return result
        if trio.current_time() > deadline:
            pytest.fail(f"not seen within {within} s: {probe.__doc__ or probe}")
        await trio.sleep(0.05)


async def errno_or_result(call: Callable[[], Any]) -> Any:
    try:
        return await call()
    except CassfsError as exc:
        return exc.errno


def lookup(client: DaemonClient, name: bytes, parent: int = ROOT_INO) -> Callable[[], Any]:
    return lambda: errno_or_result(lambda: client.call("lookup", parent=parent, name=name))


@pytest.mark.cassandra
async def test_another_hosts_changes_show_within_a_poll_not_the_ttl(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """Create, rewrite, chmod, rename, link, unlink, mkdir, rmdir and setxattr on A, each
    seen on B (which has cached the state before, negative entries included) long before
    B's one-hour TTL; A's daemon skips its own rows."""
    host_a, host_b = start_daemon("a", cache_ttl=HOUR), start_daemon("b", cache_ttl=HOUR)
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        assert await lookup(b, b"page.php")() == errno.ENOENT  # B caches the absence
        assert await b.call("readdir", ino=ROOT_INO) == []  # and an empty listing
        made = await make_file(a, ROOT_INO, b"page.php", b"<?php echo 1;")

        async def b_finds_it() -> Any:
            found = await lookup(b, b"page.php")()
            return found if isinstance(found, dict) else None

        assert (await eventually(b_finds_it))["ino"] == made["ino"]
        assert [name for name, _ in await b.call("readdir", ino=ROOT_INO)] == [b"page.php"]
        assert (await b.call("open", ino=made["ino"]))["data"] == b"<?php echo 1;"

        await a.call("write", ino=made["ino"], data=b"<?php echo 2;")

        async def b_reads_the_new_content() -> bool:
            return (await b.call("open", ino=made["ino"]))["data"] == b"<?php echo 2;"

        await eventually(b_reads_the_new_content)

        await a.call("setattr", ino=made["ino"], mode=0o600)

        async def b_sees_the_mode() -> bool:
            return (await b.call("getattr", ino=made["ino"]))["mode"] & 0o777 == 0o600

        await eventually(b_sees_the_mode)

        await a.call("setxattr", ino=made["ino"], name=b"user.k", value=b"v", flags=0)

        async def b_sees_the_xattr() -> bool:
            reply = await b.call("getxattr", ino=made["ino"], name=b"user.k")
            return bool(reply["value"] == b"v")

        await eventually(b_sees_the_xattr)

        sub = await a.call("mkdir", parent=ROOT_INO, name=b"sub", mode=0o755, uid=0, gid=0)
        await eventually(lambda: _is_dict(lookup(b, b"sub")))
        await a.call(
            "rename", old_parent=ROOT_INO, old_name=b"page.php", new_parent=sub["ino"],
            new_name=b"moved.php", flags=0,
        )  # fmt: skip

        async def b_sees_the_move() -> bool:
            old = await lookup(b, b"page.php")()
            new = await lookup(b, b"moved.php", sub["ino"])()
            return old == errno.ENOENT and isinstance(new, dict)

        await eventually(b_sees_the_move)
        await a.call("link", ino=made["ino"], new_parent=ROOT_INO, new_name=b"again.php")
        await eventually(lambda: _is_dict(lookup(b, b"again.php")))

        async def b_counts_two_links() -> bool:
            return (await b.call("getattr", ino=made["ino"]))["nlink"] == 2

        await eventually(b_counts_two_links)
        await a.call("unlink", parent=sub["ino"], name=b"moved.php")
        await a.call("unlink", parent=ROOT_INO, name=b"again.php")
        await a.call("rmdir", parent=ROOT_INO, name=b"sub")

        async def b_sees_them_gone() -> bool:
            listing = await b.call("readdir", ino=ROOT_INO)
            return listing == [] and await lookup(b, b"sub")() == errno.ENOENT

        await eventually(b_sees_them_gone)
    # One row per step above at least: each waited for B to see the one before (the
    # three removals at the end may share a row, made within APPEND_WINDOW).
    assert host_b.stats()["feed_changes"] >= 7
    assert host_a.stats().get("feed_changes", 0) == 0  # A read its own rows and skipped them


async def _is_dict(probe: Callable[[], Any]) -> bool:
    return isinstance(await probe(), dict)


@pytest.mark.cassandra
@pytest.mark.fuse
def test_mounts_on_two_hosts_see_each_others_writes_and_new_names(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """Default flags (cache TTL 60 s): a rewrite, a new name (B's kernel held it absent)
    and an unlink on host A show on host B well within a second's polls, not 60 s."""
    a = mount_cassfs("a", *tenant)
    b = mount_cassfs("b", *tenant)
    (a.path / "index.php").write_bytes(b"one")
    assert wait_for(lambda: _read(b.path / "index.php") == b"one", SHOWS_WITHIN)
    assert not (b.path / "new.php").exists()  # a negative dentry in B's kernel
    (a.path / "index.php").write_bytes(b"two, longer")
    (a.path / "new.php").write_bytes(b"new")
    assert wait_for(lambda: _read(b.path / "index.php") == b"two, longer", SHOWS_WITHIN)
    assert wait_for(lambda: (b.path / "new.php").exists(), SHOWS_WITHIN)
    assert os.stat(b.path / "index.php").st_size == len(b"two, longer")
    os.unlink(a.path / "new.php")
    assert wait_for(lambda: not (b.path / "new.php").exists(), SHOWS_WITHIN)


@pytest.mark.cassandra
@pytest.mark.fuse
def test_two_mounts_of_one_daemon_see_each_others_changes_once_they_return(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """Default flags (kernel entries and attributes kept 60 s, listings reused): on two
    mounts of one daemon, a rewrite, a create, a chmod and an unlink through mount A
    show on mount B as soon as A's syscall returned, warm kernel caches and a reused
    listing on B notwithstanding."""
    a = mount_cassfs("a", *tenant, "shared-cache")
    b = mount_cassfs("b", *tenant, "shared-cache")
    (a.path / "index.php").write_bytes(b"one")
    for _ in range(2):  # warm: B's kernel holds the attributes, B's front the listing
        assert (b.path / "index.php").read_bytes() == b"one"
        assert os.listdir(b.path) == ["index.php"]
        assert not (b.path / "new.php").exists()
    (a.path / "index.php").write_bytes(b"two, longer")
    assert os.stat(b.path / "index.php").st_size == len(b"two, longer")
    assert (b.path / "index.php").read_bytes() == b"two, longer"
    (a.path / "new.php").write_bytes(b"new")
    assert (b.path / "new.php").exists()
    assert sorted(os.listdir(b.path)) == ["index.php", "new.php"]
    os.chmod(a.path / "new.php", 0o600)
    assert os.stat(b.path / "new.php").st_mode & 0o777 == 0o600
    os.unlink(a.path / "new.php")
    assert not (b.path / "new.php").exists()
    assert os.listdir(b.path) == ["index.php"]


@pytest.mark.cassandra
@pytest.mark.fuse
def test_a_listing_the_kernel_keeps_shows_another_hosts_new_moved_and_removed_names(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """Default flags: B's kernel keeps a directory's entries between opendirs
    (FOPEN_CACHE_DIR, through cassfs/_openflags.c), so a second listing asks the front
    nothing; a create, a rename across directories, an unlink, and a create after which
    the directory's mtime is put back, on host A, still show in B's listings within the
    feed's bound, at the root and in a subdirectory."""
    a = mount_cassfs("a", *tenant)
    b = mount_cassfs("b", *tenant, None, "--debug")
    (a.path / "sub").mkdir()
    (a.path / "sub" / "one.php").write_bytes(b"1")
    assert wait_for(lambda: _listing(b.path / "sub") == ["one.php"], SHOWS_WITHIN)
    assert _listing(b.path) == ["sub"]
    readdirs = len(b.operations("readdir"))
    assert _listing(b.path / "sub") == ["one.php"] and _listing(b.path) == ["sub"]
    assert len(b.operations("readdir")) == readdirs  # both from the kernel's cache
    (a.path / "sub" / "two.php").write_bytes(b"2")
    assert wait_for(lambda: _listing(b.path / "sub") == ["one.php", "two.php"], SHOWS_WITHIN)
    os.rename(a.path / "sub" / "one.php", a.path / "top.php")
    assert wait_for(lambda: _listing(b.path) == ["sub", "top.php"], SHOWS_WITHIN)
    assert wait_for(lambda: _listing(b.path / "sub") == ["two.php"], SHOWS_WITHIN)
    os.unlink(a.path / "top.php")
    assert wait_for(lambda: _listing(b.path) == ["sub"], SHOWS_WITHIN)
    # rsync -t and tar put a directory's mtime back after filling it: the kernel must not
    # take an unchanged mtime for an unchanged listing
    before = os.stat(a.path / "sub")
    (a.path / "sub" / "three.php").write_bytes(b"3")
    os.utime(a.path / "sub", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert wait_for(lambda: _listing(b.path / "sub") == ["three.php", "two.php"], SHOWS_WITHIN)


def _listing(path: Path) -> list[str] | None:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


# -- the reading rules, over plain data --------------------------------------------------


class FakeStore:
    """A tenant's feed rows in memory; ``fail`` makes reads raise StorageError."""

    def __init__(self) -> None:
        self.rows: dict[int, list[Change]] = {}
        self.fail = False
        self.reads: list[int] = []

    tenant = (5, "unit")

    def add(self, change: Change, bucket: int) -> None:
        self.rows.setdefault(bucket, []).append(change)

    async def append_change(self, change: Change) -> None:
        await trio.sleep(0.001)  # a query's round trip
        self.add(change, 0)

    async def read_changes(self, bucket: int, after: uuid.UUID) -> list[Change]:
        self.reads.append(bucket)
        if self.fail:
            raise StorageError("no node answers")
        return [c for c in self.rows.get(bucket, []) if c.id.time > after.time]


class FakeCore:
    """Records what the feed makes the daemon forget."""

    def __init__(self) -> None:
        self.forgotten: list[tuple[tuple[int, ...], tuple[tuple[int, bytes], ...]]] = []
        self.all_forgotten = 0
        self.counters = type("C", (), {"add": staticmethod(lambda *a: None)})()

    async def forget(self, tenant: Any, inos: Any, names: Any) -> None:
        self.forgotten.append((tuple(inos), tuple(names)))

    async def forget_all(self) -> int:
        self.all_forgotten += 1
        return 0


def change_at(seconds: float, origin: bytes, ino: int) -> Change:
    """A row whose id has the time ``seconds`` (since the epoch)."""
    from cassandra.util import uuid_from_time

    return Change(uuid_from_time(seconds), origin, (ino,), ((1, b"n%d" % ino),))


TENANT = (5, "unit")


async def test_rows_are_read_back_over_the_overlap_once_each_and_own_ones_skipped() -> None:
    core, store = FakeCore(), FakeStore()
    feed = Feed(core)  # type: ignore[arg-type]
    feed.follow(TENANT, store)  # type: ignore[arg-type]
    now = time.time()
    bucket = int(now) // 60
    store.add(change_at(now - OVERLAP / 2, b"other", 10), bucket)  # a writer's clock behind
    store.add(change_at(now - 5 * OVERLAP, b"other", 11), bucket - 1)  # before the window
    store.add(change_at(now - 0.1, feed.origin, 12), bucket)  # this daemon's own
    assert await feed.poll(TENANT) == 1
    assert core.forgotten == [((10,), ((1, b"n10"),))]
    assert await feed.poll(TENANT) == 0  # read again over the overlap: not applied twice
    now = time.time()
    for ino in (13, 14):
        store.add(change_at(now, b"other", ino), int(now) // 60)
    assert await feed.poll(TENANT) == 2
    # the rows of one poll are forgotten together: one notification per mount, not per row
    assert core.forgotten[1:] == [((13, 14), ((1, b"n13"), (1, b"n14")))]


async def test_a_failed_read_keeps_its_place_and_a_long_gap_forgets_everything() -> None:
    core, store = FakeCore(), FakeStore()
    feed = Feed(core)  # type: ignore[arg-type]
    feed.follow(TENANT, store)  # type: ignore[arg-type]
    store.fail = True
    store.add(change_at(time.time(), b"other", 20), int(time.time()) // 60)
    assert await feed.poll(TENANT) == 0
    store.fail = False
    assert await feed.poll(TENANT) == 1  # the row missed while failing is read after
    feed._follows[TENANT].since -= GAP_LIMIT + 1  # unread past the table's TTL
    assert await feed.poll(TENANT) == 0
    assert core.all_forgotten == 1


async def test_changes_made_within_a_window_share_one_row_written_before_they_return(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core, store = FakeCore(), FakeStore()
    feed = Feed(core)  # type: ignore[arg-type]
    returned: list[tuple[str, int]] = []

    async def append(what: str, inos: list[int], names: list[tuple[int, bytes]]) -> None:
        await feed.append(store, inos, names)  # type: ignore[arg-type]
        returned.append((what, len(store.rows.get(0, []))))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(append, "create", [1], [(1, b"a")])
        await trio.sleep(APPEND_WINDOW / 2)
        nursery.start_soon(append, "write", [2, 1], [(1, b"b"), (1, b"a")])
    rows = store.rows[0]
    assert [(row.inos, row.names) for row in rows] == [((1, 2), ((1, b"a"), (1, b"b")))]
    assert sorted(returned) == [("create", 1), ("write", 1)]  # both once the row was in
    # A change after the window: a row of its own.  Many inodes: rows of ROW_LIMIT.
    await feed.append(store, [3], [])  # type: ignore[arg-type]
    await feed.append(store, list(range(ROW_LIMIT + 1)), [])  # type: ignore[arg-type]
    assert [len(row.inos) for row in store.rows[0][1:]] == [1, ROW_LIMIT, 1]


async def test_a_change_whose_append_is_cancelled_in_the_window_still_gets_its_row(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core, store = FakeCore(), FakeStore()
    feed = Feed(core)  # type: ignore[arg-type]
    joined: list[bool] = []

    async def join() -> None:
        await feed.append(store, [8], [])  # type: ignore[arg-type]
        joined.append(True)

    async with trio.open_nursery() as nursery:
        with trio.move_on_after(APPEND_WINDOW / 4):
            nursery.start_soon(join)
            await feed.append(store, [7], [])  # type: ignore[arg-type]
    assert [row.inos for row in store.rows[0]] == [(7, 8)] and joined == [True]
