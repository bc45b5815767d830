"""Unit tests of cassfs.inodes: the front's one record per inode, with plain data."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from cached.model import DIRECTORY, REGULAR, ROOT_INO, Inode
from cassfs.handles import OpenFile, WriteBuffer
from cassfs.inodes import NAMES_KEPT, InodeState, InodeTable, Placement, Reusable, Version

OLD = b"\x01" * 32
NEW = b"\x02" * 32


def inode(
    ino: int = 7, content_id: bytes = OLD, size: int = 100, mtime_ns: int = 1, kind: int = REGULAR
) -> Inode:
    """A daemon inode of a regular file (or ``kind``)."""
    return Inode(
        ino=ino,
        kind=kind,
        mode=0o100644,
        uid=0,
        gid=0,
        size=size,
        atime_ns=0,
        mtime_ns=mtime_ns,
        ctime_ns=0,
        parent=0,
        nlink=1,
        content_id=content_id,
        chunk_size=1 << 20,
        target=b"",
    )


def handle(fh: int, ino: int = 7, content_id: bytes = OLD, size: int = 100) -> OpenFile:
    return OpenFile(fh, ino, content_id, size, mtime_ns=1, epoch=0)


# -- lookup counts ------------------------------------------------------------------------


def test_lookups_accumulate_and_forget_reports_the_last() -> None:
    table = InodeTable()
    assert table.lookups(5) == 0
    table.remember(5)
    table.remember(5, 3)
    table.remember(6, 2)
    assert (table.lookups(5), table.lookups(6)) == (4, 2)
    assert sorted(table.known()) == [5, 6]
    assert table.forget(5, 1) is None
    assert table.lookups(5) == 3
    state = table.forget(5, 3)
    assert state is not None and state.ino == 5 and state.lookups == 0
    assert table.known() == [6]


def test_over_forget_clamps_at_zero_and_counting_restarts() -> None:
    table = InodeTable()
    table.remember(9, 2)
    state = table.forget(9, 10)
    assert state is not None and state.lookups == 0
    table.remember(9)
    assert table.lookups(9) == 1


def test_forget_of_an_unknown_inode_is_nothing() -> None:
    assert InodeTable().forget(12345, 1) is None


def test_root_is_never_forgotten() -> None:
    table = InodeTable()
    table.remember(ROOT_INO, 2)
    assert table.forget(ROOT_INO, 100) is None
    assert table.lookups(ROOT_INO) == 0


def test_idle_records_are_discarded_busy_ones_kept(tmp_path: Path) -> None:
    table = InodeTable()
    state = table.remember(7)
    table.add_handle(handle(1), Placement.SWITCH)
    table.forget(7, 1)
    table.discard_if_idle(state)
    assert table.get(7) is state  # a handle is open
    table.remove_handle(1)
    state.buffer = WriteBuffer(tmp_path)
    table.discard_if_idle(state)
    assert table.get(7) is state  # a buffer exists
    state.buffer = None
    table.discard_if_idle(state)
    assert table.get(7) is None


def test_unlinked_records_are_listed() -> None:
    table = InodeTable()
    table.remember(3).unlinked = True
    table.remember(4)
    assert [state.ino for state in table.unlinked()] == [3]
    table.clear()
    assert table.known() == [] and table.unlinked() == []


# -- handles and the page cache -----------------------------------------------------------


def test_handles_by_fh_and_page_handles() -> None:
    table = InodeTable()
    state = table.add_handle(handle(1), Placement.SWITCH)
    table.add_handle(handle(2, content_id=NEW), Placement.DIRECT)
    assert table.handle(1) is not None and table.handle(2) is not None
    assert table.handle_count() == 2
    assert set(state.handles) == {1, 2}
    assert state.page_handles() == 1  # the direct_io handle does not count
    removed = table.remove_handle(1)
    assert removed is not None and removed[0].fh == 1 and removed[1] is state
    assert state.page_handles() == 0
    assert table.remove_handle(1) is None


def test_placement_of_opens() -> None:
    state = InodeState(7)
    v1 = Version(OLD, 100, 1, 0)
    v2 = Version(NEW, 50, 2, 0)
    # nothing cached: the first open becomes the page cache's version
    assert state.placement(v1, writable=False, may_wait=True) is Placement.SWITCH
    state.open_handle(handle(1), Placement.SWITCH)
    assert state.pages == v1
    # the same content: keep the pages (times do not matter)
    assert state.placement(Version(OLD, 100, 9, 0), writable=False, may_wait=True) is (
        Placement.KEEP
    )
    # another version while a page-cache handle is open: wait, then bypass
    assert state.placement(v2, writable=False, may_wait=True) is Placement.WAIT
    assert state.placement(v2, writable=False, may_wait=False) is Placement.DIRECT
    # a writer waits as well, then takes the page cache
    assert state.placement(v2, writable=True, may_wait=True) is Placement.WAIT
    assert state.placement(v2, writable=True, may_wait=False) is Placement.SWITCH
    # after a cache purge (new epoch) the pages are not the version's any more
    assert state.placement(Version(OLD, 100, 1, 1), writable=False, may_wait=False) is (
        Placement.DIRECT
    )
    state.close_handle(1)
    assert state.placement(v2, writable=False, may_wait=True) is Placement.SWITCH


def test_a_write_buffer_keeps_the_page_cache(tmp_path: Path) -> None:
    state = InodeState(7)
    state.open_handle(handle(1), Placement.SWITCH)
    state.buffer = WriteBuffer(tmp_path)
    assert state.placement(Version(NEW, 5, 1, 0), writable=False, may_wait=True) is (Placement.KEEP)


def test_switch_sets_the_version_and_drops_the_reusable_answer() -> None:
    state = InodeState(7)
    state.reusable = Reusable(10.0, inode())
    state.open_handle(handle(1, content_id=NEW, size=5), Placement.SWITCH)
    assert state.pages == Version(NEW, 5, 1, 0)
    assert state.reusable is None


def test_direct_handles_bypass_the_page_cache() -> None:
    state = InodeState(7)
    state.open_handle(handle(1), Placement.SWITCH)
    direct = handle(2, content_id=NEW)
    state.open_handle(direct, Placement.DIRECT)
    assert direct.page_cache is False
    assert state.pages == Version(OLD, 100, 1, 0)


async def test_waiting_opens_wake_when_the_last_page_handle_closes() -> None:
    state = InodeState(7)
    state.open_handle(handle(1), Placement.SWITCH)
    state.open_handle(handle(2), Placement.KEEP)
    state.open_handle(handle(3, content_id=NEW), Placement.DIRECT)
    woke: list[float] = []

    async def waiter() -> None:
        await state.wait_for_page_handles(trio.current_time() + 3600)
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        state.close_handle(1)
        state.close_handle(3)  # a direct_io handle does not matter
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        state.close_handle(2)
    assert len(woke) == 1


async def test_waiting_for_page_handles_ends_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    state = InodeState(7)
    state.open_handle(handle(1), Placement.SWITCH)
    start = trio.current_time()
    await state.wait_for_page_handles(start + 1.5)
    assert trio.current_time() - start == 1.5
    assert state.page_handles() == 1


async def test_keeping_opens_wait_for_a_switch_in_progress() -> None:
    state = InodeState(7)
    state.open_handle(handle(1), Placement.SWITCH)
    done: list[str] = []

    async def keeper() -> None:
        await state.wait_for_switch()
        done.append("kept")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        state.finish_switch()
    assert done == ["kept"]
    await state.wait_for_switch()  # none in progress: returns at once


# -- what the kernel is told ---------------------------------------------------------------


def test_reported_size_of_an_unchanged_file_is_the_daemons() -> None:
    state = InodeState(7)
    state.open_handle(handle(1), Placement.SWITCH)
    assert state.reported(inode(size=100, mtime_ns=5), 0) == (100, 5)


def test_reported_size_is_the_buffers_while_writing(tmp_path: Path) -> None:
    state = InodeState(7)
    state.buffer = WriteBuffer(tmp_path, b"abc")
    assert state.reported(inode(size=100, mtime_ns=5), 0) == (3, 5)


def test_reported_size_stays_the_page_cache_versions_while_its_handles_are_open() -> None:
    state = InodeState(7)
    state.reusable = Reusable(10.0, inode())
    state.open_handle(handle(1, size=100), Placement.SWITCH)
    assert state.reported(inode(content_id=NEW, size=30, mtime_ns=9), 0) == (100, 1)
    assert state.reusable is None
    assert state.pages == Version(OLD, 100, 1, 0)


def test_reported_new_content_with_no_page_handle_forgets_the_page_version() -> None:
    state = InodeState(7)
    state.open_handle(handle(1, size=100), Placement.SWITCH)
    state.close_handle(1)
    assert state.reported(inode(content_id=NEW, size=30, mtime_ns=9), 0) == (30, 9)
    # the kernel drops its pages on that reply; the next open must switch
    assert state.pages is None
    assert state.placement(Version(OLD, 100, 1, 0), writable=False, may_wait=True) is (
        Placement.SWITCH
    )


def test_reported_attributes_of_a_directory_are_the_daemons() -> None:
    state = InodeState(7)
    state.open_handle(handle(1), Placement.SWITCH)
    directory = inode(content_id=b"", size=4096, mtime_ns=3, kind=DIRECTORY)
    assert state.reported(directory, 0) == (4096, 3)


def test_commit_moves_every_handle_and_the_pages() -> None:
    state = InodeState(7)
    old = handle(1)
    old.data = b"x" * 100
    direct = handle(2, content_id=b"\x03" * 32)
    state.open_handle(old, Placement.SWITCH)
    state.open_handle(direct, Placement.DIRECT)
    state.reusable = Reusable(10.0, inode())
    state.committed(inode(content_id=NEW, size=12, mtime_ns=8), 2)
    for moved in (old, direct):
        assert (moved.content_id, moved.size, moved.mtime_ns, moved.epoch) == (NEW, 12, 8, 2)
    assert old.data is None
    assert state.pages == Version(NEW, 12, 8, 2)
    assert state.reusable is None


def test_reusable_answer_holds_only_for_the_page_cache_version(tmp_path: Path) -> None:
    state = InodeState(7)
    state.open_handle(handle(1), Placement.SWITCH)
    state.reusable = Reusable(10.0, inode())
    assert state.reuse(5.0, 0) == inode()
    assert state.reuse(5.0, 1) is None  # a cache purge happened
    state.reusable = Reusable(10.0, inode())
    assert state.reuse(10.0, 0) is None  # expired
    state.reusable = Reusable(10.0, inode(content_id=NEW))
    assert state.reuse(5.0, 0) is None  # not the version the kernel holds
    state.reusable = Reusable(10.0, inode())
    state.buffer = WriteBuffer(tmp_path)
    assert state.reuse(5.0, 0) is None  # local writes in progress


def test_sizes_told_to_the_kernel() -> None:
    table = InodeTable()
    state = table.remember(7)  # the kernel learns the inode from this reply
    v1, v2 = Version(OLD, 100, 1, 0), Version(NEW, 30, 2, 0)
    assert state.reported(inode(), 0) == (100, 1)
    assert state.attributes_told_for(v1) and not state.attributes_told_for(v2)
    state.reported(inode(content_id=NEW, size=30), 0)
    assert not state.attributes_told_for(v2)  # the kernel may have kept either reply
    state.attributes_dropped()
    assert state.attributes_told_for(v2)
    state.open_handle(handle(1, content_id=NEW, size=30), Placement.SWITCH)
    state.open_handle(handle(2), Placement.DIRECT)
    assert not state.attributes_told_for(v2)  # direct reads may move the kernel's size
    state.attributes_dropped()
    state.committed(inode(content_id=NEW, size=30), 0)
    assert not state.attributes_told_for(v2)  # local writes set the kernel's size


def test_a_record_made_outside_a_reply_knows_nothing_told() -> None:
    state = InodeTable().state(7)
    state.reported(inode(), 0)
    assert not state.attributes_told_for(Version(OLD, 100, 1, 0))


def test_a_file_keeps_its_names_once_each_up_to_the_limit() -> None:
    """named() keeps each (parent, name) once, at most NAMES_KEPT; unnamed() forgets one
    (the kernel moved it); take_names() hands them over and keeps none."""
    state = InodeState(41)
    assert state.take_names() == []
    state.named(1, b"a")
    state.named(1, b"a")
    state.named(2, b"b")
    assert state.names == ((1, b"a"), (2, b"b"))
    assert state.unnamed(1, b"a") is True
    assert state.unnamed(1, b"a") is False
    assert state.names == ((2, b"b"),)
    for n in range(NAMES_KEPT + 3):
        state.named(3, b"n%d" % n)
    assert len(state.names) == NAMES_KEPT
    assert state.take_names()[0] == (2, b"b")
    assert state.names == ()


async def test_a_records_lock_is_made_once_at_first_use() -> None:
    state = InodeState(42)
    lock = state.lock
    async with lock:
        assert state.lock is lock and state.lock.locked()
