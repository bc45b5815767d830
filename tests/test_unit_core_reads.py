"""Unit tests of the daemon's inode reads (cached.core.Core.get_inode) across changes the
feed tells of, over a real LocalCache and a tenant store kept in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from cached.cache import Freshness, LocalCache
from cached.core import Core, Session
from cached.model import DIRECTORY, REGULAR, Inode
from cached.stats import Counters
from tests.test_unit_cache import FakeClock, make_inode

MiB = 1024 * 1024
TENANT = (7, "unit")


class GatedStore:
    """Inode rows in memory; a read returns the row as it was when the read began and
    ends only once the test lets it (``release``), as a slow query over Cassandra."""

    def __init__(self, inode: Inode, gated: bool = True) -> None:
        self.rows = {inode.ino: inode}
        self.reads: list[int] = []
        self.release: dict[int, trio.Event] = {}
        self.gated = gated

    async def get_inode_content(self, ino: int) -> tuple[Inode | None, bytes | None]:
        row = self.rows.get(ino)  # what the query reads, when it reaches the node
        number = len(self.reads)
        self.reads.append(ino)
        self.release[number] = gate = trio.Event()
        if self.gated:
            await gate.wait()
        return row, None

    async def get_inodes_content(self, inos: list[int]) -> dict[int, tuple[Inode, bytes | None]]:
        """A batch of inodes with the bytes their rows keep (none here), gated as above."""
        return {ino: (row, None) for ino, row in (await self.get_inodes(inos)).items()}

    async def get_inodes(self, inos: list[int]) -> dict[int, Inode]:
        """A batch of inodes, gated as one read."""
        rows = {ino: self.rows[ino] for ino in inos if ino in self.rows}
        number = len(self.reads)
        self.reads.extend(inos)
        self.release[number] = gate = trio.Event()
        if self.gated:
            await gate.wait()
        return rows


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def core(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Core]:
    counters = Counters(tmp_path / "counters")
    cache = LocalCache(tmp_path / "cache", 64 * MiB, 3600.0, counters, clock=clock)
    await cache.clear()  # from now on a key missing from memory costs no disk read
    yield Core(SimpleNamespace(), cache, counters, tmp_path)  # type: ignore[arg-type]
    cache.close()
    counters.close()


async def test_a_read_after_the_feed_told_of_a_change_does_not_join_a_fetch_from_before(
    core: Core, clock: FakeClock
) -> None:
    """A listing's prefetch read another host's temp file while it was empty; the query
    is slow.  The other host writes it and renames it over a name; the feed tells of it.
    An open or a getattr of the inode must not join the prefetch's fetch (begun before
    the change): it would answer the empty state, and the reader would read nothing
    (the race harness's ``empty-read``).  It reads the inode again instead."""
    empty = make_inode(42, size=0)
    store = GatedStore(empty)
    s = Session(TENANT[0], TENANT[1], store, lambda *_: None)  # type: ignore[arg-type]
    answers: list[Inode] = []

    async def getattr_() -> None:
        answers.append(await core.get_inode(s, 42))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(core.get_inode, s, 42)  # the prefetch: reads the empty row
        await trio.testing.wait_all_tasks_blocked()
        written = make_inode(42, size=11)
        store.rows[42] = written  # the other host's write and rename
        clock.advance(0.2)
        await core.cache.expire(TENANT, inos=[42])  # the feed's row about them
        clock.advance(0.1)
        nursery.start_soon(getattr_)
        await trio.testing.wait_all_tasks_blocked()
        assert store.reads == [42, 42]  # a read of its own, not the prefetch's
        store.release[1].set()
        await trio.testing.wait_all_tasks_blocked()
        assert answers == [written]
        store.release[0].set()  # the prefetch ends last, with the empty row
    # ... which the cache keeps stale (read across the change): never an answer.
    state, cached = await core.cache.get_inode(TENANT, 42)
    assert (state, cached) == (Freshness.FRESH, written)


async def test_a_read_with_no_change_told_joins_the_fetch_in_flight(
    core: Core, clock: FakeClock
) -> None:
    """Without a change heard of since it began, a fetch in flight is joined: one query."""
    store = GatedStore(make_inode(42, size=11))
    s = Session(TENANT[0], TENANT[1], store, lambda *_: None)  # type: ignore[arg-type]
    answers: list[Inode] = []

    async def getattr_() -> None:
        answers.append(await core.get_inode(s, 42))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(getattr_)
        await trio.testing.wait_all_tasks_blocked()
        clock.advance(0.1)
        await core.cache.expire(TENANT, inos=[43])  # another inode's change
        nursery.start_soon(getattr_)
        await trio.testing.wait_all_tasks_blocked()
        assert store.reads == [42]
        store.release[0].set()
    assert answers == [make_inode(42, size=11)] * 2


async def test_an_entry_made_here_leaves_the_directorys_cached_inode_fresh(
    core: Core, clock: FakeClock
) -> None:
    """A create here changes its directory's entries (recorded for the listing's
    guards); the directory's cached inode, its mtime updated by the create, still
    answers the stat the kernel sends next without a query (a copy-in made one read
    per file when it did not)."""
    directory = make_inode(5, kind=DIRECTORY, mode=0o40755)
    store = GatedStore(directory, gated=False)
    s = Session(TENANT[0], TENANT[1], store, lambda *_: None)  # type: ignore[arg-type]
    await core.cache.put_inode(TENANT, directory, fetched_at=clock())
    clock.advance(0.1)
    await core.cache.update_listing(TENANT, 5, b"new.php", 42, REGULAR, 0)
    await core.cache.update_inode(TENANT, 5, mtime_ns=9, ctime_ns=9)
    clock.advance(0.1)
    assert await core.get_inode(s, 5) == directory.evolve(mtime_ns=9, ctime_ns=9)
    assert store.reads == []


async def test_a_batch_reading_the_bytes_marks_its_inodes_while_it_runs(core: Core) -> None:
    """While a batch read with the bytes runs, its inodes' flights are in
    ``content_flights`` (a lookup joins those instead of reading the inode again for its
    bytes); a batch without them is not, and nothing stays marked once either ends."""
    store = GatedStore(make_inode(42, size=11))
    store.rows[43] = make_inode(43, size=5)
    s = Session(TENANT[0], TENANT[1], store, lambda *_: None)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(core.load_inodes, s, [42], True)
        nursery.start_soon(core.load_inodes, s, [43], False)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(store.reads) == [42, 43]
        assert core.flights.in_flight(("i", TENANT, 43))
        assert core.content_flights == {("i", TENANT, 42)}
        for gate in store.release.values():
            gate.set()
    assert core.content_flights == set()
    for ino in (42, 43):
        assert (await core.cache.get_inode(TENANT, ino))[0] is Freshness.FRESH
