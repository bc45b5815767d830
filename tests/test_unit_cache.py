"""Unit tests of cached.cache: metadata freshness and the diskcache-backed LocalCache."""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache
import pytest
import trio
import trio.testing

from cached import cache as cache_module
from cached.api import MEMORY_CACHE
from cached.cache import (
    MEMO_ENTRY_BYTES,
    MEMO_NAME_BYTES,
    Freshness,
    LocalCache,
    MemoryBounds,
    _memo_cost,
    freshness,
    latest_per_key,
    sha256_file,
)
from cached.content import content_id
from cached.hot import HOT_ITEM_LIMIT, HotContents
from cached.model import DIRECTORY, REGULAR, Inode
from cached.stats import Counters

MiB = 1024 * 1024
TTL = 5.0
T1: tuple[int, str] = (1, "prod")
T2: tuple[int, str] = (1, "staging")
T3: tuple[int, str] = (2, "prod")


# -- freshness ---------------------------------------------------------------------------


def test_freshness_absent_when_never_fetched() -> None:
    assert freshness(None, 100.0, 5.0) is Freshness.ABSENT


@pytest.mark.parametrize(
    ("fetched_at", "now", "ttl", "expected"),
    [
        (100.0, 100.0, 5.0, Freshness.FRESH),  # age 0
        (100.0, 104.999, 5.0, Freshness.FRESH),  # just inside
        (100.0, 105.0, 5.0, Freshness.STALE),  # exactly ttl
        (100.0, 105.001, 5.0, Freshness.STALE),
        (100.0, 1e9, 5.0, Freshness.STALE),
        (100.0, 99.999, 5.0, Freshness.STALE),  # clock went backwards
        (100.0, 50.0, 1e9, Freshness.STALE),  # backwards, even with a huge ttl
        (100.0, 100.0, 0.0, Freshness.STALE),  # ttl 0: never fresh
        (100.0, 100.5, 0.0, Freshness.STALE),
    ],
)
def test_freshness(fetched_at: float, now: float, ttl: float, expected: Freshness) -> None:
    assert freshness(fetched_at, now, ttl) is expected


# -- LocalCache --------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_inode(ino: int = 42, **changes: object) -> Inode:
    inode = Inode(
        ino=ino,
        kind=REGULAR,
        mode=0o100644,
        uid=1000,
        gid=1000,
        size=11,
        atime_ns=1_700_000_000_000_000_001,
        mtime_ns=1_700_000_000_000_000_002,
        ctime_ns=1_700_000_000_000_000_003,
        parent=1,
        nlink=1,
        content_id=content_id(b"hello world"),
        chunk_size=MiB,
        target=b"",
    )
    return inode.evolve(**changes)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def counters(tmp_path: Path) -> Iterator[Counters]:
    c = Counters(tmp_path / "counters")
    yield c
    c.close()


@pytest.fixture
def open_cache(
    tmp_path: Path, counters: Counters, clock: FakeClock
) -> Iterator[Callable[..., LocalCache]]:
    """Factory: ``open_cache(name="cache", size=64 * MiB, **options)`` is a LocalCache in
    ``tmp_path / name`` of ``size`` bytes on disk, with the test's counters and clock
    (``options`` replace them, or give ``memory``).  Every one is closed at teardown,
    again if the test closed it itself (closing twice is harmless)."""
    opened: list[LocalCache] = []

    def open_(name: str = "cache", size: int = 64 * MiB, **options: Any) -> LocalCache:
        c = LocalCache(
            tmp_path / name, size, TTL, **{"counters": counters, "clock": clock, **options}
        )
        opened.append(c)
        return c

    yield open_
    for c in opened:
        c.close()


@pytest.fixture
def cache(open_cache: Callable[..., LocalCache]) -> LocalCache:
    return open_cache()


async def test_inode_fresh_then_stale(cache: LocalCache, clock: FakeClock) -> None:
    inode = make_inode()
    assert await cache.get_inode(T1, inode.ino) == (Freshness.ABSENT, None)
    await cache.put_inode(T1, inode)
    assert await cache.get_inode(T1, inode.ino) == (Freshness.FRESH, inode)
    clock.advance(TTL - 0.5)
    assert await cache.get_inode(T1, inode.ino) == (Freshness.FRESH, inode)
    clock.advance(0.5)  # exactly ttl
    assert await cache.get_inode(T1, inode.ino) == (Freshness.STALE, inode)
    clock.advance(1000)
    assert await cache.get_inode(T1, inode.ino) == (Freshness.STALE, inode)


async def test_inode_refetch_makes_it_fresh_again(cache: LocalCache, clock: FakeClock) -> None:
    await cache.put_inode(T1, make_inode(size=1))
    clock.advance(TTL + 1)
    newer = make_inode(size=2)
    await cache.put_inode(T1, newer)
    assert await cache.get_inode(T1, 42) == (Freshness.FRESH, newer)


async def test_inode_stale_when_clock_goes_backwards(cache: LocalCache, clock: FakeClock) -> None:
    await cache.put_inode(T1, make_inode())
    clock.advance(-1)
    assert (await cache.get_inode(T1, 42))[0] is Freshness.STALE


async def test_drop_inode(cache: LocalCache) -> None:
    await cache.put_inode(T1, make_inode())
    await cache.drop_inode(T1, 42)
    assert await cache.get_inode(T1, 42) == (Freshness.ABSENT, None)
    await cache.drop_inode(T1, 42)  # dropping what is not cached is fine


async def test_directory_and_symlink_inodes_round_trip(cache: LocalCache) -> None:
    d = make_inode(7, kind=DIRECTORY, mode=0o40755, size=0, content_id=b"", chunk_size=0)
    s = make_inode(8, kind=3, mode=0o120777, size=3, content_id=b"", target=b"../x\xff")
    await cache.put_inode(T1, d)
    await cache.put_inode(T1, s)
    assert await cache.get_inode(T1, 7) == (Freshness.FRESH, d)
    assert await cache.get_inode(T1, 8) == (Freshness.FRESH, s)


async def test_dentries_positive_and_negative(cache: LocalCache, clock: FakeClock) -> None:
    assert await cache.get_dentry(T1, 1, b"a.php") == (Freshness.ABSENT, None)
    await cache.put_dentry(T1, 1, b"a.php", 42, REGULAR)
    await cache.put_dentry(T1, 1, b"missing", 0, 0)
    assert await cache.get_dentry(T1, 1, b"a.php") == (Freshness.FRESH, (42, REGULAR))
    assert await cache.get_dentry(T1, 1, b"missing") == (Freshness.FRESH, (0, 0))
    # Same name in another parent is another entry.
    assert await cache.get_dentry(T1, 2, b"a.php") == (Freshness.ABSENT, None)
    clock.advance(TTL)
    assert await cache.get_dentry(T1, 1, b"a.php") == (Freshness.STALE, (42, REGULAR))
    assert await cache.get_dentry(T1, 1, b"missing") == (Freshness.STALE, (0, 0))


class HeldDiskReads:
    """Holds a :class:`LocalCache`'s reads from disk in their thread until released, to
    run something else while one is in flight (the interleavings of a loaded daemon)."""

    def __init__(self, cache: LocalCache) -> None:
        self._in_thread, self._release = threading.Event(), threading.Event()
        disk_get = cache._cache.get

        def held_get(key: object, *args: object, **kwargs: object) -> object:
            self._in_thread.set()
            self._release.wait(10)
            return disk_get(key, *args, **kwargs)

        cache._cache.get = held_get  # type: ignore[method-assign]

    async def reached(self) -> None:
        """Wait until a read from disk is held."""
        assert await trio.to_thread.run_sync(self._in_thread.wait, 10)

    def release(self) -> None:
        """Let held reads (and every later one) through."""
        self._release.set()


@contextlib.contextmanager
def held_disk_reads(cache: LocalCache) -> Iterator[HeldDiskReads]:
    """:class:`HeldDiskReads` over ``cache``; released and ``cache`` closed at the end."""
    held = HeldDiskReads(cache)
    try:
        yield held
    finally:
        held.release()
        cache.close()


async def test_listings(cache: LocalCache, clock: FakeClock) -> None:
    items = [(b"a", 10, REGULAR), (b"b\xff", 11, DIRECTORY), (b"c", 12, 3)]
    assert await cache.get_listing(T1, 1) == (Freshness.ABSENT, None)
    await cache.put_listing(T1, 1, items)
    fresh, got = await cache.get_listing(T1, 1)
    assert fresh is Freshness.FRESH
    assert [tuple(item) for item in got] == items
    await cache.put_listing(T1, 5, [])
    fresh, got = await cache.get_listing(T1, 5)
    assert fresh is Freshness.FRESH
    assert list(got) == []
    clock.advance(TTL + 0.1)
    fresh, got = await cache.get_listing(T1, 1)
    assert fresh is Freshness.STALE
    assert [tuple(item) for item in got] == items


async def test_a_read_from_disk_does_not_undo_a_change_made_while_it_ran(
    open_cache: Callable[..., LocalCache],
) -> None:
    """A new daemon (after a kill) reads an entry from disk in a thread; meanwhile a lost
    create caches what the name names now: the disk's older answer must not replace it
    (the next lookup said ENOENT after the create said EEXIST)."""
    first = open_cache()
    await first.put_dentry(T1, 7, b"n6", 0, 0)  # a negative entry, on disk
    first.close()
    cache = open_cache()
    got: list[object] = []

    async def lookup() -> None:
        got.append(await cache.get_dentry(T1, 7, b"n6"))

    with held_disk_reads(cache) as held:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lookup)
            await held.reached()
            await cache.put_dentry(T1, 7, b"n6", 42, REGULAR)  # the lost LWT's holder
            held.release()
        assert got == [(Freshness.FRESH, (42, REGULAR))]
        assert await cache.get_dentry(T1, 7, b"n6") == (Freshness.FRESH, (42, REGULAR))


async def test_a_listing_index_rebuilt_while_the_feed_expires_it_is_stale(
    open_cache: Callable[..., LocalCache],
) -> None:
    """The feed tells of a name made in directory 7 while a lookup rebuilds 7's index:
    that index must not answer "no such name" as fresh once the listing is stale."""
    cache = open_cache()
    await cache.put_listing(T1, 7, [(b"old", 41, REGULAR)])
    with held_disk_reads(cache) as held:
        async with trio.open_nursery() as nursery:
            # the new name's dentry is on no disk: expire's read of it waits in the thread
            nursery.start_soon(cache.expire, T1, (), [(7, b"new")])
            await held.reached()
            state, index = await cache.get_listing_index(T1, 7)  # a lookup, meanwhile
            assert state is Freshness.FRESH and index is not None and b"new" not in index
            held.release()
        assert (await cache.get_listing_index(T1, 7))[0] is Freshness.STALE


async def test_a_listing_read_across_a_change_to_its_directory_is_not_cached(
    cache: LocalCache, clock: FakeClock
) -> None:
    """A listing read began, another host made a name there, a create here lost to it
    (or the feed told of it), then the read ended: its entries may lack the name, and
    cached they would answer "no such name" for the TTL (EEXIST, then ENOENT)."""
    started = clock()
    clock.advance(0.01)
    await cache.update_listing(T1, 1, b"new", 42, REGULAR)  # the lost create's refresh
    clock.advance(0.01)
    assert not await cache.put_listing(T1, 1, [(b"old", 41, REGULAR)], started)
    assert await cache.get_listing(T1, 1) == (Freshness.ABSENT, None)
    started = clock()
    clock.advance(0.01)
    await cache.expire(T1, names=[(7, b"x")])  # the feed, about directory 7
    assert not await cache.put_listing(T1, 7, [], started)
    assert await cache.put_listing(T1, 1, [(b"new", 42, REGULAR)], clock())
    assert (await cache.get_listing(T1, 1))[0] is Freshness.FRESH
    assert cache.changed_since(T1, 7, started)
    assert not cache.changed_since(T2, 7, started)  # tenants apart


async def test_a_subdirectory_count_read_across_a_change_told_by_the_feed_is_not_kept(
    cache: LocalCache, clock: FakeClock
) -> None:
    """A directory's nlink counted from entries read while the feed told of another
    host's mkdir there may be one short: it must not answer stats for the TTL."""
    started = clock()
    clock.advance(0.01)
    await cache.expire(T1, names=[(7, b"sub")])  # the feed: a change to directory 7
    clock.advance(0.01)
    cache.put_subdirectories(T1, 7, 3, started)
    assert cache.subdirectories(T1, 7) is None
    cache.put_subdirectories(T1, 7, 4, clock())
    assert cache.subdirectories(T1, 7) == 4


async def test_an_inode_read_across_a_change_told_by_the_feed_is_cached_stale(
    cache: LocalCache, clock: FakeClock
) -> None:
    """A prefetch read a temp file's inode while it was empty; the feed told of its new
    content before the read ended: the empty state must not answer opens for the TTL."""
    started = clock()
    clock.advance(0.01)
    await cache.expire(T1, inos=[42])  # nothing cached yet: the read is in flight
    clock.advance(0.01)
    await cache.put_inode(T1, make_inode(42, size=0), fetched_at=started)
    assert await cache.get_inode(T1, 42) == (Freshness.STALE, make_inode(42, size=0))
    await cache.put_inode(T1, make_inode(42, size=7), fetched_at=clock())
    assert await cache.get_inode(T1, 42) == (Freshness.FRESH, make_inode(42, size=7))


async def test_a_name_read_across_a_change_told_by_the_feed_is_cached_stale(
    cache: LocalCache, clock: FakeClock
) -> None:
    """A lookup read that a name named a temp file (just renamed over it); before the
    read ended, the feed told of a second rename over the name: the name's first target
    must not answer lookups as fresh (it was read empty through the name)."""
    started = clock()
    clock.advance(0.01)
    await cache.expire(T1, names=[(7, b"f2")])  # the feed: the name changed again
    clock.advance(0.01)
    await cache.put_dentry(T1, 7, b"f2", 42, REGULAR, started_at=started)
    assert await cache.get_dentry(T1, 7, b"f2") == (Freshness.STALE, (42, REGULAR))
    await cache.put_dentry(T1, 7, b"f2", 43, REGULAR, started_at=clock())
    assert await cache.get_dentry(T1, 7, b"f2") == (Freshness.FRESH, (43, REGULAR))


async def test_a_local_change_keeps_a_cached_inodes_fetch_time(
    cache: LocalCache, clock: FakeClock
) -> None:
    """A directory's mtime set here (an entry made in it) or a file's atime: a cached
    copy the feed made stale meanwhile stays stale (its other fields may be older than
    another host's change), a fresh one keeps its age; nothing cached, nothing made."""
    await cache.put_inode(T1, make_inode(42), fetched_at=clock())
    await cache.put_inode(T1, make_inode(43), fetched_at=clock())
    clock.advance(1.0)
    await cache.expire(T1, inos=[43])  # another host chmod'ed 43
    await cache.update_inode(T1, 42, mtime_ns=7, ctime_ns=8)
    await cache.update_inode(T1, 43, mtime_ns=7, ctime_ns=8)
    await cache.update_inode(T1, 44, mtime_ns=7)
    assert await cache.get_inode(T1, 42) == (
        Freshness.FRESH,
        make_inode(42, mtime_ns=7, ctime_ns=8),
    )
    assert await cache.get_inode(T1, 43) == (
        Freshness.STALE,
        make_inode(43, mtime_ns=7, ctime_ns=8),
    )
    assert await cache.get_inode(T1, 44) == (Freshness.ABSENT, None)
    clock.advance(TTL - 1.0)  # its age counts from its fetch, not from the change
    assert (await cache.get_inode(T1, 42))[0] is Freshness.STALE


async def test_a_change_made_here_is_cached_stale_if_the_feed_told_of_another_since(
    cache: LocalCache, clock: FakeClock
) -> None:
    """A write's flip began; the feed told of another host's chmod of the file before
    the write cached its result: that result (the old mode) is cached stale."""
    began = clock()
    clock.advance(0.01)
    await cache.expire(T1, inos=[42])
    await cache.put_inode(T1, make_inode(42, size=3), changed_after=began)
    assert (await cache.get_inode(T1, 42))[0] is Freshness.STALE
    clock.advance(0.01)
    await cache.put_inode(T1, make_inode(42, size=4), changed_after=clock())
    assert (await cache.get_inode(T1, 42))[0] is Freshness.FRESH


async def test_a_reload_told_of_a_change_replaces_an_older_read_while_expire_runs(
    open_cache: Callable[..., LocalCache], clock: FakeClock
) -> None:
    """A prefetch read a temp file empty; the file got its content and was renamed over a
    name; a lookup reloads it while the feed's expire of that change is under way: the
    reload (stale, as it crossed the change) must replace the empty state, which must not
    answer an open as fresh (another host read the file empty)."""
    cache = open_cache()
    await cache.put_inode(T1, make_inode(42, size=0), fetched_at=clock())  # the prefetch
    clock.advance(0.2)
    started = clock()  # the lookup's reload begins
    clock.advance(0.01)
    with held_disk_reads(cache) as held:
        async with trio.open_nursery() as nursery:
            # inode 7 is on no disk: expire waits in the thread before it reaches 42
            nursery.start_soon(cache.expire, T1, [7, 42])
            await held.reached()
            await cache.put_inode(T1, make_inode(42, size=11), fetched_at=started)
            assert await cache.get_inode(T1, 42) == (Freshness.STALE, make_inode(42, size=11))
            held.release()
        assert (await cache.get_inode(T1, 42))[0] is Freshness.STALE


async def test_expire_makes_named_entries_stale_but_keeps_them(cache: LocalCache) -> None:
    """Another host's change (the change feed) makes what it names stale: read again at
    the next use, still there to serve while Cassandra fails; the rest stays fresh."""
    await cache.put_inode(T1, make_inode(42))
    await cache.put_inode(T1, make_inode(43))
    await cache.put_xattrs(T1, 42, {b"user.k": b"v"})
    items = [(b"a", 42, REGULAR)]
    await cache.put_listing(T1, 1, items)
    await cache.put_dentry(T1, 1, b"a", 42, REGULAR)
    await cache.put_dentry(T1, 1, b"new", 0, 0)  # known absent
    assert (await cache.get_listing_index(T1, 1))[0] is Freshness.FRESH
    await cache.expire(T1, inos=[42], names=[(1, b"new")])
    assert await cache.get_inode(T1, 42) == (Freshness.STALE, make_inode(42))
    assert await cache.get_xattrs(T1, 42) == (Freshness.STALE, {b"user.k": b"v"})
    assert await cache.get_dentry(T1, 1, b"new") == (Freshness.STALE, (0, 0))
    state, listing = await cache.get_listing(T1, 1)  # the name's directory: listed again
    assert state is Freshness.STALE and [tuple(i) for i in listing or []] == items
    assert (await cache.get_listing_index(T1, 1))[0] is Freshness.STALE
    assert (await cache.get_inode(T1, 43))[0] is Freshness.FRESH
    assert await cache.get_dentry(T1, 1, b"a") == (Freshness.FRESH, (42, REGULAR))
    await cache.expire(T2, inos=[99], names=[(1, b"x")])  # nothing cached: nothing made
    assert await cache.get_inode(T2, 99) == (Freshness.ABSENT, None)


async def test_tenants_are_isolated(cache: LocalCache) -> None:
    a = make_inode(42, uid=1)
    b = make_inode(42, uid=2)
    await cache.put_inode(T1, a)
    await cache.put_inode(T2, b)
    assert await cache.get_inode(T1, 42) == (Freshness.FRESH, a)
    assert await cache.get_inode(T2, 42) == (Freshness.FRESH, b)
    assert await cache.get_inode(T3, 42) == (Freshness.ABSENT, None)

    await cache.put_dentry(T1, 1, b"x", 42, REGULAR)
    assert await cache.get_dentry(T2, 1, b"x") == (Freshness.ABSENT, None)
    assert await cache.get_dentry(T3, 1, b"x") == (Freshness.ABSENT, None)

    await cache.put_listing(T2, 1, [(b"y", 9, REGULAR)])
    assert await cache.get_listing(T1, 1) == (Freshness.ABSENT, None)
    assert await cache.get_listing(T3, 1) == (Freshness.ABSENT, None)

    cid = content_id(b"secret")
    await cache.put_content(T1, cid, b"secret")
    assert await cache.has_content(T1, cid) is True
    assert await cache.has_content(T2, cid) is False
    assert await cache.has_content(T3, cid) is False
    other = content_id(b"other")
    assert await cache.missing_contents(T1, [cid, other]) == {other}
    assert await cache.missing_contents(T2, [cid]) == {cid}
    assert await cache.read_content(T2, cid, 0, 100) is None
    assert await cache.copy_content(T3, cid, io.BytesIO()) is False

    await cache.drop_inode(T2, 42)
    assert await cache.get_inode(T1, 42) == (Freshness.FRESH, a)


async def test_put_and_read_content_with_offsets(cache: LocalCache) -> None:
    data = b"0123456789abcdef"
    cid = content_id(data)
    assert await cache.has_content(T1, cid) is False
    assert await cache.read_content(T1, cid, 0, 4) is None
    await cache.put_content(T1, cid, data)
    assert await cache.has_content(T1, cid) is True
    assert await cache.read_content(T1, cid, 0, 4) == b"0123"
    assert await cache.read_content(T1, cid, 10, 4) == b"abcd"
    assert await cache.read_content(T1, cid, 14, 100) == b"ef"
    assert await cache.read_content(T1, cid, 16, 10) == b""
    assert await cache.read_content(T1, cid, 1000, 10) == b""
    assert await cache.read_content(T1, cid, 0, 0) == b""
    out = io.BytesIO()
    assert await cache.copy_content(T1, cid, out) is True
    assert out.getvalue() == data


async def test_large_in_memory_content_is_read_back(cache: LocalCache) -> None:
    # Over diskcache's inline threshold, so stored as a file.
    data = os.urandom(200_000)
    cid = content_id(data)
    await cache.put_content(T1, cid, data)
    assert await cache.read_content(T1, cid, 199_990, 100) == data[199_990:]
    assert await cache.read_content(T1, cid, 200_000, 1) == b""
    out = io.BytesIO()
    assert await cache.copy_content(T1, cid, out) is True
    assert out.getvalue() == data


async def test_put_content_file_then_slices_and_copy(cache: LocalCache, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    cid, size = sha256_file(source)
    assert (cid, size) == (content_id(data), 3 * MiB)
    await cache.put_content_file(T1, cid, source)
    assert source.read_bytes() == data  # the source is left alone
    assert await cache.has_content(T1, cid) is True
    assert await cache.read_content(T1, cid, 0, 10) == data[:10]
    assert await cache.read_content(T1, cid, MiB - 5, 10) == data[MiB - 5 : MiB + 5]
    assert await cache.read_content(T1, cid, 2 * MiB, MiB) == data[2 * MiB :]
    assert await cache.read_content(T1, cid, 3 * MiB - 3, 100) == data[-3:]
    assert await cache.read_content(T1, cid, 3 * MiB, 100) == b""
    assert await cache.read_content(T1, cid, 5 * MiB, 100) == b""
    out = io.BytesIO()
    assert await cache.copy_content(T1, cid, out) is True
    assert out.getvalue() == data


async def test_new_tmp_file_is_private_and_in_tmp_dir(cache: LocalCache) -> None:
    path, handle = cache.new_tmp_file()
    try:
        assert path.parent == cache.tmp_dir
        assert path.exists()
        assert os.stat(path).st_mode & 0o777 == 0o600
        handle.write(b"abc")
        handle.seek(0)
        assert handle.read() == b"abc"
    finally:
        handle.close()
        path.unlink()


async def test_clear_and_usage(cache: LocalCache) -> None:
    entries0, bytes0 = await cache.usage()
    assert entries0 == 0
    await cache.put_inode(T1, make_inode(1))
    await cache.put_dentry(T1, 1, b"a", 2, REGULAR)
    await cache.put_listing(T1, 1, [(b"a", 2, REGULAR)])
    big = os.urandom(100_000)
    await cache.put_content(T1, content_id(big), big)
    entries, volume = await cache.usage()
    assert entries == 4
    assert volume >= bytes0 + len(big)
    assert await cache.clear() == 4
    entries, volume = await cache.usage()
    assert entries == 0
    assert volume < bytes0 + len(big)
    assert await cache.get_inode(T1, 1) == (Freshness.ABSENT, None)
    assert await cache.get_dentry(T1, 1, b"a") == (Freshness.ABSENT, None)
    assert await cache.get_listing_index(T1, 1) == (Freshness.ABSENT, None)
    assert await cache.has_content(T1, content_id(big)) is False


async def test_clear_drops_metadata_writes_still_queued(cache: LocalCache) -> None:
    # Written behind: not yet in diskcache when the purge comes, and must not land after it.
    await cache.put_inode(T1, make_inode(1))
    await cache.put_listing(T1, 1, [(b"a", 2, REGULAR)])
    assert await cache.clear() == 0
    await cache.flush()
    assert (await cache.usage())[0] == 0
    assert await cache.get_inode(T1, 1) == (Freshness.ABSENT, None)
    assert await cache.get_listing(T1, 1) == (Freshness.ABSENT, None)


async def test_overwriting_an_entry_is_not_an_eviction(
    cache: LocalCache, counters: Counters
) -> None:
    for size in range(5):
        await cache.put_inode(T1, make_inode(size=size))
    assert (await cache.usage())[0] == 1
    assert counters.totals()["evictions"] == 0


async def test_lru_eviction_counts_and_keeps_recently_read(
    open_cache: Callable[..., LocalCache], counters: Counters
) -> None:
    # Many entries of 48 KiB (stored as files by diskcache), a 4 MiB limit: the
    # limit is reached after ~85 entries, more than the 64 that one cull removes.
    cache = open_cache("small", 4 * MiB)
    size = 48 * 1024
    blobs = [i.to_bytes(2, "big") * (size // 2) for i in range(120)]
    ids = [content_id(b) for b in blobs]
    for i, blob in enumerate(blobs):
        if i >= 2:
            # Keep entry 0 the most recently used one before each insertion.
            assert await cache.read_content(T1, ids[0], 2, 4) == blobs[0][2:6]
        await cache.put_content(T1, ids[i], blob)
    evictions = counters.totals()["evictions"]
    assert evictions > 0
    assert await cache.has_content(T1, ids[0]) is True
    assert await cache.read_content(T1, ids[0], size - 2, 10) == blobs[0][-2:]
    assert await cache.has_content(T1, ids[1]) is False  # the least recently used
    assert await cache.has_content(T1, ids[-1]) is True  # the newest
    present = [i for i in range(len(ids)) if await cache.has_content(T1, ids[i])]
    entries, volume = await cache.usage()
    assert entries == len(present) == len(blobs) - evictions
    assert volume <= 4 * MiB + size
    # Eviction follows insertion order apart from entry 0: the survivors are the newest.
    assert present == [0, *range(len(blobs) - len(present) + 1, len(blobs))]


async def test_eviction_count_matches_entries_lost(
    open_cache: Callable[..., LocalCache], counters: Counters
) -> None:
    cache = open_cache("small", 2 * MiB)
    inserted = 0
    for i in range(40):
        blob = bytes([i]) * (100 * 1024)
        await cache.put_content(T2, content_id(blob), blob)
        inserted += 1
    entries, _ = await cache.usage()
    assert counters.totals()["evictions"] > 0
    assert counters.totals()["evictions"] == inserted - entries
    # Counted in memory until persisted.
    assert counters.take_pending()["evictions"] == inserted - entries


async def test_lru_eviction_with_few_large_entries_keeps_recent_ones(
    open_cache: Callable[..., LocalCache], counters: Counters
) -> None:
    cache = open_cache("few", 4 * MiB)
    blobs = [bytes([i]) * (MiB // 2) for i in range(12)]
    ids = [content_id(b) for b in blobs]
    await cache.put_content(T1, ids[0], blobs[0])
    await cache.put_content(T1, ids[1], blobs[1])
    for i in range(2, len(blobs)):
        assert await cache.read_content(T1, ids[0], 0, 4) == blobs[0][:4]
        await cache.put_content(T1, ids[i], blobs[i])
        # What was just put can be read back.
        assert await cache.has_content(T1, ids[i]) is True
    assert counters.totals()["evictions"] > 0
    assert await cache.has_content(T1, ids[0]) is True
    assert await cache.has_content(T1, ids[1]) is False


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    assert sha256_file(path) == (content_id(b""), 0)
    data = os.urandom(MiB + 3)
    path.write_bytes(data)
    assert sha256_file(path) == (content_id(data), MiB + 3)


async def test_metadata_from_before_a_restart_is_revalidated_content_is_not(
    open_cache: Callable[..., LocalCache], tmp_path: Path, clock: FakeClock
) -> None:
    """Metadata reaches disk behind the reply, so a new daemon trusts none it finds."""
    first = open_cache("c", counters=Counters(tmp_path / "n1"))
    await first.put_inode(T1, make_inode(7))
    await first.put_content(T1, content_id(b"hello world"), b"hello world")
    first.close()
    clock.advance(0.5)  # well within the TTL
    second = open_cache("c", counters=Counters(tmp_path / "n2"))
    state, inode = await second.get_inode(T1, 7)
    assert state is Freshness.STALE and inode == make_inode(7)
    assert await second.read_content(T1, content_id(b"hello world"), 0, 5) == b"hello"
    await second.put_inode(T1, make_inode(7))
    assert (await second.get_inode(T1, 7))[0] is Freshness.FRESH


async def test_content_put_behind_is_served_before_and_after_it_reaches_disk(
    open_cache: Callable[..., LocalCache], tmp_path: Path
) -> None:
    """``put_content_behind`` answers reads from memory until the writer stored it, and
    a close stores what is still queued; past LANDING_BYTES it is written at once."""
    path = tmp_path / "behind"
    cache = open_cache(path.name)
    data = os.urandom(10_000)
    cid = content_id(data)
    try:
        await cache.put_content_behind(T1, cid, data)
        assert await cache.has_content(T1, cid) is True
        assert await cache.read_content(T1, cid, 100, 50) == data[100:150]
        out = io.BytesIO()
        assert await cache.copy_content(T1, cid, out) is True
        assert out.getvalue() == data
        # Nothing on disk yet: a second cache on the same store does not see it.
        assert cid not in _disk_keys(path)
        await cache.flush()
        assert cid in _disk_keys(path)
        assert await cache.read_content(T1, cid, 0, 10) == data[:10]  # now from disk
        big = b"x" * (cache_module.LANDING_BYTES + 1)
        await cache.put_content_behind(T1, content_id(big), big)
        assert content_id(big) in _disk_keys(path)  # over the bound: written at once
        queued = os.urandom(100)
        await cache.put_content_behind(T1, content_id(queued), queued)
    finally:
        cache.close()
    assert content_id(queued) in _disk_keys(path)  # close stored what was queued


async def test_small_content_is_served_from_memory_once_written_until_dropped(
    cache: LocalCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small content fetched ahead of an open stays in memory after the writer stored
    it (the open needs no hop to the diskcache thread); content read from disk is kept
    too; large content is not; an evict drops the memory copy with the disk's."""
    small, other, large = os.urandom(5_000), os.urandom(6_000), os.urandom(HOT_ITEM_LIMIT + 1)
    await cache.put_content_behind(T1, content_id(small), small)
    await cache.put_content(T1, content_id(other), other)  # straight to disk
    await cache.put_content_behind(T1, content_id(large), large)
    await cache.flush()
    assert await cache.read_content(T1, content_id(other), 10, 20) == other[10:30]
    disk_reads: list[object] = []
    monkeypatch.setattr(cache._cache, "get", lambda *a, **k: disk_reads.append(a))
    assert await cache.read_content(T1, content_id(small), 100, 50) == small[100:150]
    assert await cache.read_content(T1, content_id(other), 0, 6_000) == other
    assert await cache.missing_contents(T1, [content_id(small), content_id(other)]) == set()
    assert disk_reads == []
    await cache.read_content(T1, content_id(large), 0, 10)
    assert len(disk_reads) == 1  # not kept in memory: read from disk
    monkeypatch.undo()
    assert await cache.drop_content(T1, content_id(small)) is True
    assert await cache.read_content(T1, content_id(small), 0, 10) is None
    await cache.clear()
    assert await cache.read_content(T1, content_id(other), 0, 10) is None


async def test_a_cold_cache_answers_a_missing_content_without_asking_sqlite(
    open_cache: Callable[..., LocalCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that was empty when opened, or since a purge, knows which contents it
    holds: a content it never wrote is missing without a hop to the diskcache thread
    (a cold read asked three times per file).  One written, landed or not, is found;
    an evicted one is missing again; a store reopened with content, or past the index's
    limit, asks SQLite and never calls a held content missing."""
    data, other, never = os.urandom(3_000), os.urandom(70_000), os.urandom(10)
    cache = open_cache()
    hops: list[object] = []
    real_run = cache._run

    async def counted(fn: Callable[..., Any], *args: Any) -> Any:
        hops.append(fn)
        return await real_run(fn, *args)

    monkeypatch.setattr(cache, "_run", counted)
    cid, oid, nid = content_id(data), content_id(other), content_id(never)
    assert not await cache.has_content(T1, nid)
    assert await cache.read_content(T1, nid, 0, 10) is None
    assert await cache.missing_contents(T1, [nid, cid]) == {nid, cid}
    assert hops == [], "a cold cache asked SQLite about content it never wrote"
    await cache.put_content_behind(T1, cid, data)
    await cache.put_content(T1, oid, other)  # straight to disk (one hop)
    await cache.flush()
    cache._hot.clear()  # as if memory had let them go: only the disk holds them now
    assert await cache.has_content(T1, cid) and await cache.has_content(T1, oid)
    assert await cache.read_content(T1, oid, 5, 10) == other[5:15]
    assert await cache.missing_contents(T1, [cid, oid, nid]) == {nid}
    assert not await cache.has_content(T2, cid), "another tenant's content"
    assert await cache.drop_content(T1, oid)
    assert not await cache.has_content(T1, oid)
    hops.clear()
    assert await cache.read_content(T1, oid, 0, 10) is None
    assert hops == []
    cache.close()
    # Reopened, the store holds content this process never wrote: SQLite is asked.
    reopened = open_cache()
    assert await reopened.has_content(T1, cid)
    assert await reopened.read_content(T1, cid, 0, 3_000) == data
    assert await reopened.missing_contents(T1, [cid, nid]) == {nid}
    await reopened.clear()  # a purge: known empty again
    assert not await reopened.has_content(T1, cid)
    # Past the index's limit the index is dropped, and every written content is found.
    monkeypatch.setattr(cache_module, "CONTENT_INDEX_LIMIT", 3)
    blobs = [os.urandom(100) for _ in range(5)]
    for blob in blobs:
        await reopened.put_content(T1, content_id(blob), blob)
    reopened._hot.clear()
    assert reopened._content_index is None
    for blob in blobs:
        assert await reopened.read_content(T1, content_id(blob), 0, 100) == blob


def test_hot_contents_keep_the_most_recently_used_within_their_bytes() -> None:
    hot = HotContents(limit=10, item_limit=4)
    hot.put("a", b"aaaa")
    hot.put("b", b"bbbb")
    hot.put("big", b"xxxxx")  # over the item limit: not kept
    assert hot.get("a") == b"aaaa"  # now the most recently used
    hot.put("c", b"cccc")  # 12 bytes: the least recently used (b) goes
    assert ("a" in hot, "b" in hot, "c" in hot, "big" in hot) == (True, False, True, False)
    assert hot.bytes == 8
    hot.discard("a")
    assert hot.bytes == 4 and hot.get("a") is None


def _disk_keys(path: Path) -> set[bytes]:
    """Content ids diskcache holds at ``path`` (read by a separate diskcache handle)."""
    with diskcache.Cache(str(path / "store")) as disk:
        return {key[-1] for key in disk.iterkeys() if key[0] == "c"}


async def test_after_a_clear_a_missing_key_costs_no_disk_read(
    cache: LocalCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    await cache.put_inode(T1, make_inode(1))
    await cache.flush()
    await cache.clear()
    await cache.put_inode(T1, make_inode(2))
    reads: list[object] = []
    real_get = cache._cache.get

    def counted_get(key: object, *args: object, **kwargs: object) -> object:
        reads.append(key)
        return real_get(key, *args, **kwargs)

    monkeypatch.setattr(cache._cache, "get", counted_get)
    assert await cache.get_inode(T1, 1) == (Freshness.ABSENT, None)
    assert (await cache.get_inode(T1, 2))[1] == make_inode(2)
    assert reads == []
    # Once the memo has dropped an entry, a key missing from it is looked up on disk.
    cache.memo_bytes = 1
    await cache.put_inode(T1, make_inode(3))
    assert await cache.get_inode(T1, 1) == (Freshness.ABSENT, None)
    assert reads == [("i", *T1, 1)]


def test_a_batch_of_queued_writes_keeps_each_metadata_keys_last_write_in_order() -> None:
    listing, inode, content = ("l", *T1, 1), ("i", *T1, 2), ("c", *T1, b"id")
    queued = [
        ("set", listing, ["a"]),
        ("land", content, b"x"),
        ("set", inode, "i2"),
        ("delete", listing, None),
        ("set", listing, ["a", "b"]),
        ("delete", inode, None),
    ]
    assert latest_per_key(queued) == [
        ("land", content, b"x"),
        ("set", listing, ["a", "b"]),
        ("delete", inode, None),
    ]


def _listing(names: int) -> list[tuple[bytes, int, int]]:
    return [(b"f%04d" % n, 100 + n, REGULAR) for n in range(names)]


async def test_the_memo_is_bounded_in_bytes_and_a_listing_weighs_by_its_names(
    open_cache: Callable[..., LocalCache],
) -> None:
    """The memo drops its least recently used entries once their estimated bytes pass
    ``memo_bytes``; a listing counts each of its names; the entry just put always stays."""
    cache = open_cache(memory=MemoryBounds(memo=10 * MEMO_ENTRY_BYTES))
    for parent in range(8):  # marks held in memory only: gone once dropped
        cache.mark_large_dir(T1, parent)
    four = (4 * MEMO_NAME_BYTES["l"]) // MEMO_ENTRY_BYTES + 1  # entries a listing of 4 weighs
    await cache.put_listing(T1, 50, _listing(4))
    marks = [parent for parent in range(8) if cache.is_large_dir(T1, parent)]
    assert marks == list(range(four - 1, 8))  # the oldest made room
    await cache.put_listing(T1, 51, _listing(100))  # alone over the bound: kept alone
    assert not any(cache.is_large_dir(T1, parent) for parent in range(8))
    assert (await cache.get_listing(T1, 51)) == (Freshness.FRESH, _listing(100))
    assert cache._memo_bytes == MEMO_ENTRY_BYTES + 100 * MEMO_NAME_BYTES["l"]
    # index, update and drop keep the count exact
    cache.memo_bytes = 64 * MiB
    state, index = await cache.get_listing_index(T1, 51)
    assert state is Freshness.FRESH and index is not None and len(index) == 100
    await cache.update_listing(T1, 51, b"f0000", 0, 0)
    await cache.drop_listing(T1, 51)
    expected = sum(_memo_cost(key, value) for key, value in cache._memo.items())
    assert cache._memo_bytes == expected


def test_the_key_memo_disk_encodes_keys_as_diskcache_does_and_reads_its_old_entries(
    tmp_path: Path,
) -> None:
    """A cache dir written with diskcache's own Disk reads the same through
    :class:`CacheDisk`, first and second time (remembered), for every key shape the
    cache uses; keys it does not remember (a bool inside, a list) go to diskcache."""
    keys: list[object] = [
        ("i", 7, "prod", 2**63 - 1),
        ("c", 7, "prod", bytes(range(32))),
        ("L", -5, "\u00e9t\u00e9", 1),
        ("i", 7, "prod", True),  # not remembered: True pickles unlike 1
        "plain",
        12,
    ]
    with diskcache.Cache(str(tmp_path / "c")) as plain:
        for n, key in enumerate(keys):
            plain.set(key, n)
    with diskcache.Cache(str(tmp_path / "c"), disk=cache_module.CacheDisk) as memo:
        disk = diskcache.Disk(str(tmp_path / "c"), pickle_protocol=memo.disk_pickle_protocol)
        for _ in range(2):
            for n, key in enumerate(keys):
                assert memo._disk.put(key) == disk.put(key), key
                assert memo.get(key) == n, key
        assert memo.get(("i", 7, "prod", 1)) is None  # not the bool key's entry
        memo.set(("x", 1, "p", 2), "new")
    with diskcache.Cache(str(tmp_path / "c")) as plain:
        assert plain.get(("x", 1, "p", 2)) == "new"


def test_the_cache_disk_writes_a_large_value_in_one_part_and_plain_diskcache_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes of ``min_file_size`` or more, full of newlines, reach their file in one part
    (diskcache's own ``store`` hands them over line by line), as the same file and mode:
    plain diskcache reads them back, and the cache disk reads what plain diskcache wrote."""
    parts_written: list[int] = []
    write = diskcache.Disk._write

    def counting(self: diskcache.Disk, full_path: str, iterator: Any, *args: Any) -> int:
        parts = list(iterator)
        parts_written.append(len(parts))
        return write(self, full_path, iter(parts), *args)  # type: ignore[no-any-return]

    monkeypatch.setattr(diskcache.Disk, "_write", counting)
    large = b"<?php echo 1;\n" * 10_000  # 150 kB in 10,000 lines
    with diskcache.Cache(str(tmp_path / "c"), disk=cache_module.CacheDisk) as ours:
        ours.set(("c", 7, "prod", b"a"), large)
        ours.set(("c", 7, "prod", b"s"), b"small\n" * 10)  # under min_file_size: in SQLite
    assert parts_written == [1]
    with diskcache.Cache(str(tmp_path / "c")) as plain:
        assert plain.get(("c", 7, "prod", b"a")) == large
        assert plain.get(("c", 7, "prod", b"s")) == b"small\n" * 10
        plain.set(("c", 7, "prod", b"p"), large)
    assert parts_written[1] == 10_000  # diskcache's own, for contrast
    with diskcache.Cache(str(tmp_path / "c"), disk=cache_module.CacheDisk) as ours:
        assert ours.get(("c", 7, "prod", b"p")) == large
        with ours.get(("c", 7, "prod", b"a"), read=True) as stream:
            assert stream.read() == large


async def test_a_write_still_queued_is_read_after_the_memo_dropped_it(
    open_cache: Callable[..., LocalCache],
) -> None:
    """The memo may drop a key whose newest write the writer has not applied yet; the disk
    then holds the older value, which must not be served: a name made by mkdir, read
    back as the negative entry cached before it, made a create in it fail with ENOENT
    (seen with a 4 MiB memo while the writer lagged behind a copy)."""
    cache = open_cache(memory=MemoryBounds(memo=4 * MEMO_ENTRY_BYTES))
    await cache.put_dentry(T1, 1, b"dir", 0, 0)  # looked up first: absent
    await cache.put_inode(T1, make_inode(5, size=1))
    await cache.flush()  # on disk: the negative entry and size 1
    await cache.put_dentry(T1, 1, b"dir", 9, DIRECTORY)  # then made: queued only
    await cache.put_inode(T1, make_inode(5, size=2))
    await cache.drop_inode(T1, 5)
    await cache.put_inode(T1, make_inode(5, size=3))
    for ino in range(100, 110):  # pushes both out of the memo
        await cache.put_inode(T1, make_inode(ino))
    assert ("d", *T1, 1, b"dir") not in cache._memo
    assert await cache.get_dentry(T1, 1, b"dir") == (Freshness.FRESH, (9, DIRECTORY))
    state, inode = await cache.get_inode(T1, 5)
    assert state is Freshness.FRESH and inode is not None and inode.size == 3
    await cache.flush()  # written: read from disk now, and the same
    assert cache._unwritten == {}
    for ino in range(200, 210):
        await cache.put_inode(T1, make_inode(ino))
    assert await cache.get_dentry(T1, 1, b"dir") == (Freshness.FRESH, (9, DIRECTORY))
    state, inode = await cache.get_inode(T1, 5)
    assert inode is not None and inode.size == 3


def test_one_memory_bound_is_split_over_the_three_caches_kept_in_memory(
    open_cache: Callable[..., LocalCache],
) -> None:
    """``--memory-cache`` divides as the defaults do, and SQLite's page cache gets its
    share (in KiB, whatever the page size)."""
    assert MemoryBounds.split(MEMORY_CACHE) == MemoryBounds()
    bounds = MemoryBounds.split(6 * MiB + 3)
    assert (bounds.hot, bounds.memo, bounds.sqlite) == (1.5 * MiB, 3 * MiB + 3, 1.5 * MiB)
    cache = open_cache(memory=bounds)
    assert cache.memory_bound == 6 * MiB + 3
    assert cache._cache._sql("PRAGMA cache_size").fetchone()[0] == -(1536)
    assert cache._hot.limit == 1.5 * MiB and cache.memo_bytes == 3 * MiB + 3


async def test_the_writer_gathers_writes_queued_together_into_one_batch(
    open_cache: Callable[..., LocalCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes queued within :data:`WRITE_GATHER` seconds of the first go to disk in one
    batch (one transaction, one thread hop), not one batch each as the writer wakes."""
    monkeypatch.setattr(cache_module, "WRITE_GATHER", 1.0)  # margin for a slow machine
    cache = open_cache()
    batches: list[int] = []
    apply = cache._apply

    def counting(ops: list[tuple[str, tuple[Any, ...], Any]]) -> None:
        batches.append(len(ops))
        apply(ops)

    cache._apply = counting  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.run_writer)
        await trio.testing.wait_all_tasks_blocked()  # the writer waits
        for ino in range(10, 20):
            await cache.put_inode(T1, make_inode(ino))
            await trio.lowlevel.checkpoint()  # the writer may run between two writes
        with trio.fail_after(10):
            while cache.queued_writes:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        nursery.cancel_scope.cancel()
    assert batches == [10]
    assert (await cache.usage())[0] == 10


async def test_the_writer_goes_on_after_a_flush_found_nothing_queued(
    open_cache: Callable[..., LocalCache],
) -> None:
    """A flush (``cassfs cache stats`` makes one) while the writer waits must not leave it
    waiting for good: every write queued after it stayed in memory until the next flush,
    about 7 kB per file copied in."""
    cache = open_cache()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.run_writer)
        await trio.testing.wait_all_tasks_blocked()  # the writer waits
        for round_ in range(3):
            await cache.flush()  # with nothing queued
            await cache.put_inode(T1, make_inode(10 + round_))
            assert cache.queued_writes == 1
            with trio.fail_after(10):
                while cache.queued_writes:  # the writer applies it, no flush needed
                    await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        nursery.cancel_scope.cancel()
    assert (await cache.usage())[0] == 3
