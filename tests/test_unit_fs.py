"""Unit tests of cassfs.fs.Operations: handlers awaited directly over an in-memory daemon.

The daemon client is the front's I/O edge; :class:`FakeDaemon` answers its RPCs from
plain data (inodes and content in dicts) and can fail or hold a method, and
:class:`FakeKernel` records the kernel invalidations instead of writing to /dev/fuse.
Races between handlers that the kernel can send concurrently are played here in a fixed
order; the same behaviours are checked through real mounts in tests/test_front.py.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from cached.errors import CassfsError, Exists, NotFound, StorageError
from cached.model import DIRECTORY, REGULAR, Inode
from cassfs import openflags
from cassfs.fs import FrontConfig, Operations
from cassfs.inodes import ALIAS_BASE
from cassfs.kernel import ENTRY_INVALIDATION_THREADS, FuseKernelCache

DIR_INO = 1
FILE_INO = 100
CTX: Any = SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class FakeDaemon:
    """The daemon's RPCs over dicts: one directory (ino 1) holding regular files.

    ``fail[method]`` is raised once by the next call of ``method``; while
    ``hold[method]`` is set, calls of ``method`` wait for it.  ``calls`` lists
    ``(method, params)`` of every call.
    """

    def __init__(self) -> None:
        self.inodes: dict[int, Inode] = {}
        self.names: dict[bytes, int] = {}
        self.versions: dict[bytes, bytes] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[str, CassfsError] = {}
        self.hold: dict[str, trio.Event] = {}
        self.epoch = 0
        self.fresh_for = 0.0
        self._next_ino = 200

    def add_file(self, name: bytes, data: bytes, ino: int = FILE_INO) -> None:
        self.names[name] = ino
        self.inodes[ino] = Inode(
            ino=ino,
            kind=REGULAR,
            mode=0o100644,
            uid=0,
            gid=0,
            size=len(data),
            atime_ns=0,
            mtime_ns=1,
            ctime_ns=1,
            parent=DIR_INO,
            nlink=1,
            content_id=sha(data),
            chunk_size=1 << 20,
            target=b"",
        )
        self.versions[sha(data)] = data

    def add_dir(self, name: bytes, ino: int) -> None:
        self.names[name] = ino
        self.inodes[ino] = Inode(
            ino=ino, kind=DIRECTORY, mode=0o40755, uid=0, gid=0, size=0, atime_ns=0,
            mtime_ns=1, ctime_ns=1, parent=DIR_INO, nlink=1, content_id=b"", chunk_size=0,
            target=b"",
        )  # fmt: skip

    def content(self, ino: int = FILE_INO) -> bytes:
        return self.versions[self.inodes[ino].content_id]

    def rewrite(self, data: bytes, ino: int = FILE_INO) -> Inode:
        """Another host replaced the file's content."""
        old = self.inodes[ino]
        self.versions[sha(data)] = data
        self.inodes[ino] = old.evolve(
            content_id=sha(data), size=len(data), mtime_ns=old.mtime_ns + 1
        )
        return self.inodes[ino]

    def writes(self) -> list[bytes]:
        """The content of every ``write`` RPC, in order."""
        return [params["data"] for method, params in self.calls if method == "write"]

    async def call(self, method: str, **params: Any) -> Any:
        self.calls.append((method, params))
        gate = self.hold.get(method)
        if gate is not None:
            await gate.wait()
        error = self.fail.pop(method, None)
        if error is not None:
            raise error
        result = getattr(self, f"rpc_{method}")(**params)
        return result.to_wire() if isinstance(result, Inode) else result

    def _inode(self, ino: int) -> Inode:
        if ino not in self.inodes:
            raise NotFound(f"no inode {ino}")
        return self.inodes[ino]

    def rpc_lookup(self, parent: int, name: bytes) -> Inode:
        if name not in self.names:
            raise NotFound(f"no {name!r}")
        return self._inode(self.names[name])

    def rpc_getattr(self, ino: int) -> Inode:
        return self._inode(ino)

    def rpc_readdir(self, ino: int) -> list[list[Any]]:
        if ino != DIR_INO:  # the one directory has no inode record here
            self._inode(ino)
        return [[name, self.inodes[child].to_wire()] for name, child in self.names.items()]

    def rpc_readlink(self, ino: int) -> bytes:
        return self._inode(ino).target

    def rpc_setattr(self, ino: int, **changes: int) -> Inode:
        inode = self._inode(ino)
        if "size" in changes:
            size = changes.pop("size")
            data = self.content(ino)[:size].ljust(size, b"\0")
            self.versions[sha(data)] = data
            inode = inode.evolve(content_id=sha(data), size=size)
        self.inodes[ino] = inode = inode.evolve(**changes)
        return inode

    def rpc_open(self, ino: int, fetch: bool = True, inline: bool = True) -> dict[str, Any]:
        inode = self._inode(ino)
        data = self.content(ino) if fetch and inline else None
        return {
            "inode": inode.to_wire(),
            "epoch": self.epoch,
            "data": data,
            "fresh_for": self.fresh_for,
        }

    def rpc_read(
        self, ino: int, content_id: bytes, file_size: int, offset: int, size: int
    ) -> bytes:
        if content_id not in self.versions:
            self._inode(ino)
            raise StorageError("version gone")
        return self.versions[content_id][offset : offset + size]

    def rpc_write(self, ino: int, data: bytes | None = None, path: str | None = None) -> Inode:
        assert data is not None, "the tests keep buffers in memory"
        self.versions[sha(data)] = data
        inode = self._inode(ino)
        self.inodes[ino] = inode = inode.evolve(
            content_id=sha(data), size=len(data), mtime_ns=inode.mtime_ns + 1
        )
        return inode

    def rpc_materialize(self, ino: int) -> dict[str, Any]:
        return {"inode": self._inode(ino).to_wire(), "data": self.content(ino)}

    def rpc_create(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Inode:
        if name in self.names:
            raise Exists(f"{name!r} exists")
        self._next_ino += 1
        self.add_file(name, b"", self._next_ino)
        return self.inodes[self._next_ino]

    def rpc_mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Inode:
        raise Exists(f"{name!r} exists")

    def rpc_unlink(self, parent: int, name: bytes) -> int:
        if name not in self.names:
            raise NotFound(f"no {name!r}")
        return self.names.pop(name)

    def rpc_purge_inode(self, ino: int) -> bool:
        return self.inodes.pop(ino, None) is not None

    def rpc_touch_atime(self, ino: int, atime_ns: int) -> bool:
        self.inodes[ino] = self._inode(ino).evolve(atime_ns=atime_ns)
        return True


class FakeKernel:
    """Records what the operations ask the kernel to drop."""

    def __init__(self) -> None:
        self.attributes: list[int] = []
        self.inodes: list[int] = []
        self.entries: list[tuple[int, bytes]] = []
        self.dropped: list[tuple[int, bytes]] = []  # before the reply
        self.busy = False  # invalidate_entry times out

    async def invalidate_attributes(self, ino: int) -> None:
        await trio.lowlevel.checkpoint()
        self.attributes.append(ino)

    async def invalidate_inode(self, ino: int) -> None:
        await trio.lowlevel.checkpoint()
        self.inodes.append(ino)

    def invalidate_entry_soon(self, parent: int, name: bytes) -> None:
        self.entries.append((parent, name))

    async def invalidate_entry(self, parent: int, name: bytes, wait: float) -> bool:
        await trio.lowlevel.checkpoint()
        self.dropped.append((parent, name))
        return not self.busy


@pytest.fixture
def daemon() -> FakeDaemon:
    fake = FakeDaemon()
    fake.add_file(b"page.php", b"0123456789")
    return fake


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


def make_ops(
    daemon: FakeDaemon, kernel: FakeKernel, spool: Path, switch_wait: float = 1.0
) -> Operations:
    ops = Operations(
        daemon,  # type: ignore[arg-type]
        FrontConfig(entry_ttl=1.0, negative_ttl=1.0, switch_wait=switch_wait),
        spool,
        0,
    )
    ops.kernel = kernel
    return ops


@pytest.fixture
def ops(daemon: FakeDaemon, kernel: FakeKernel, tmp_path: Path) -> Operations:
    return make_ops(daemon, kernel, tmp_path)


async def looked_up(ops: Operations, name: bytes = b"page.php") -> int:
    """The kernel's lookup of ``name``, as before any open."""
    return (await ops.lookup(DIR_INO, name, CTX)).st_ino


async def read_open(ops: Operations, ino: int) -> None:
    """An open for reading and its release, as ``cat`` makes."""
    await ops.release((await ops.open(ino, os.O_RDONLY, CTX)).fh)


def daemon_opens(daemon: FakeDaemon) -> int:
    """How many ``open`` RPCs the daemon answered so far."""
    return sum(1 for method, _ in daemon.calls if method == "open")


def size_fields(**updates: bool) -> Any:
    names = ("update_size", "update_mode", "update_uid", "update_gid")
    names += ("update_atime", "update_mtime", "update_ctime")
    return SimpleNamespace(**{name: updates.get(name, False) for name in names})


async def truncate(ops: Operations, ino: int, size: int, fh: int | None = None) -> None:
    attr = pyfuse3.EntryAttributes()
    attr.st_size = size
    await ops.setattr(ino, attr, size_fields(update_size=True), fh, CTX)


async def test_a_readers_close_does_not_publish_a_half_written_truncate(
    ops: Operations, daemon: FakeDaemon
) -> None:
    ino = await looked_up(ops)
    writer = (await ops.open(ino, os.O_WRONLY | os.O_TRUNC, CTX)).fh
    await ops.write(writer, 0, b"half")
    reader = (await ops.open(ino, os.O_RDONLY, CTX)).fh
    assert await ops.read(reader, 0, 100) == b"half"  # the writing host sees it at once
    await ops.flush(reader)
    await ops.release(reader)
    assert daemon.writes() == []
    assert daemon.content() == b"0123456789"
    await ops.write(writer, 4, b" and the rest")
    await ops.flush(writer)
    assert daemon.writes() == [b"half and the rest"]
    await ops.flush(writer)  # a second close(2) of a dup: nothing new
    await ops.release(writer)
    assert daemon.writes() == [b"half and the rest"]


async def test_a_truncating_open_is_a_change_its_close_publishes(
    ops: Operations, daemon: FakeDaemon
) -> None:
    ino = await looked_up(ops)
    writer = (await ops.open(ino, os.O_WRONLY | os.O_TRUNC, CTX)).fh
    await ops.flush(writer)
    await ops.release(writer)
    assert daemon.writes() == [b""]


async def test_a_failed_load_leaves_no_buffer_and_a_truncate_writes_no_zeros(
    ops: Operations, daemon: FakeDaemon
) -> None:
    ino = await looked_up(ops)
    fh = (await ops.open(ino, os.O_RDWR, CTX)).fh
    daemon.fail["materialize"] = StorageError("Cassandra timed out")
    with pytest.raises(pyfuse3.FUSEError) as failed:
        await ops.write(fh, 2, b"xy")
    assert failed.value.errno == errno.EIO
    await truncate(ops, ino, 14, fh)  # ftruncate(fd, 14)
    assert await ops.read(fh, 0, 100) == b"0123456789\0\0\0\0"
    await ops.flush(fh)
    await ops.release(fh)
    assert daemon.content() == b"0123456789\0\0\0\0"
    assert b"\0" * 14 not in daemon.writes()


async def test_a_truncate_between_the_last_flush_and_release_is_saved(
    ops: Operations, daemon: FakeDaemon
) -> None:
    ino = await looked_up(ops)
    fh = (await ops.open(ino, os.O_RDWR, CTX)).fh
    await ops.write(fh, 0, b"ABC")
    await ops.flush(fh)  # close(2): FLUSH, then RELEASE comes later
    await truncate(ops, ino, 5)  # truncate(2) by path from another process, in between
    await ops.release(fh)
    assert daemon.content() == b"ABC34"


async def test_a_truncate_waiting_for_a_flush_is_saved_after_it(
    ops: Operations, daemon: FakeDaemon
) -> None:
    ino = await looked_up(ops)
    writer = (await ops.open(ino, os.O_RDWR, CTX)).fh
    await ops.write(writer, 0, b"ABC")
    held = daemon.hold["write"] = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ops.flush, writer)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(truncate, ops, ino, 2)
        await trio.testing.wait_all_tasks_blocked()
        held.set()
    await ops.release(writer)
    assert daemon.content() == b"AB"


async def test_writes_after_the_last_flush_are_saved_at_release(
    ops: Operations, daemon: FakeDaemon
) -> None:
    """mmap: close(fd) flushes, then munmap writes the dirty pages back, then RELEASE."""
    ino = await looked_up(ops)
    fh = (await ops.open(ino, os.O_RDWR, CTX)).fh
    await ops.flush(fh)
    await ops.write(fh, 0, b"MM")
    await ops.release(fh)
    assert daemon.content() == b"MM23456789"


async def test_a_write_whose_close_failed_is_not_written_again_at_release(
    ops: Operations, daemon: FakeDaemon
) -> None:
    """close(2) reported EIO: the release right after must not write that content through
    behind the caller's back (it could land after a newer write another host acknowledged;
    the race harness saw exactly that once: a "lost-ack")."""
    ino = await looked_up(ops)
    fh = (await ops.open(ino, os.O_RDWR, CTX)).fh
    await ops.write(fh, 0, b"XX")
    daemon.fail["write"] = StorageError("the daemon was killed")
    with pytest.raises(pyfuse3.FUSEError) as failed:
        await ops.flush(fh)
    assert failed.value.errno == errno.EIO
    writes = len(daemon.writes())
    await ops.release(fh)
    assert len(daemon.writes()) == writes
    assert daemon.content() == b"0123456789"


async def test_inodes_gone_by_number_are_stale_names_gone_are_absent(
    ops: Operations, daemon: FakeDaemon
) -> None:
    ino = await looked_up(ops)
    fh = (await ops.open(ino, os.O_RDONLY, CTX)).fh
    daemon.inodes.clear()  # another host replaced the file; its old inode was purged
    daemon.versions.clear()
    stale_calls: list[Callable[[], Awaitable[object]]] = [
        lambda: ops.getattr(ino, CTX),
        lambda: ops.open(ino, os.O_RDONLY, CTX),
        lambda: ops.open(ino, os.O_WRONLY | os.O_TRUNC, CTX),
        lambda: truncate(ops, ino, 0),
        lambda: ops.lookup(ino, b".", CTX),
        lambda: ops.opendir(ino, CTX),
        lambda: ops.readlink(ino, CTX),
        lambda: ops.write(fh, 0, b"x"),
    ]
    for call in stale_calls:
        with pytest.raises(pyfuse3.FUSEError) as failed:
            await call()
        assert failed.value.errno == errno.ESTALE
    assert (await ops.lookup(DIR_INO, b"missing.php", CTX)).st_ino == 0
    with pytest.raises(pyfuse3.FUSEError) as absent:
        await ops.unlink(DIR_INO, b"missing.php", CTX)
    assert absent.value.errno == errno.ENOENT


async def test_a_name_found_taken_drops_the_kernels_dentry(
    ops: Operations, kernel: FakeKernel
) -> None:
    creates: list[Callable[[], Awaitable[object]]] = [
        lambda: ops.create(DIR_INO, b"page.php", 0o100644, os.O_WRONLY | os.O_EXCL, CTX),
        lambda: ops.mkdir(DIR_INO, b"sub", 0o40755, CTX),
    ]
    for create in creates:
        with pytest.raises(pyfuse3.FUSEError) as failed:
            await create()
        assert failed.value.errno == errno.EEXIST
    assert kernel.entries == [(DIR_INO, b"page.php"), (DIR_INO, b"sub")]


async def test_a_directory_moved_elsewhere_gets_a_node_of_its_own(
    ops: Operations, daemon: FakeDaemon, kernel: FakeKernel
) -> None:
    """The kernel holds one dentry per directory node: attaching the moved directory's
    new name to the node that has the old one may fail with ESTALE (``__d_unalias``)."""
    daemon.add_dir(b"sub", 300)
    assert (await ops.lookup(DIR_INO, b"sub", CTX)).st_ino == 300
    assert (await ops.lookup(DIR_INO, b"sub", CTX)).st_ino == 300
    assert kernel.entries == []  # the same dentry again
    daemon.names[b"moved"] = daemon.names.pop(b"sub")  # another host renamed it
    alias = (await ops.lookup(DIR_INO, b"moved", CTX)).st_ino
    assert alias >= ALIAS_BASE
    assert kernel.entries == [(DIR_INO, b"sub")]  # the old dentry goes, without waiting
    assert kernel.dropped == []
    assert (await ops.lookup(DIR_INO, b"moved", CTX)).st_ino == alias
    # requests through either node name the directory's inode number to the daemon
    daemon.calls.clear()
    await ops.getattr(alias, CTX)
    await ops.getattr(300, CTX)
    await ops.releasedir(await ops.opendir(alias, CTX))
    assert {params["ino"] for _, params in daemon.calls} == {300}
    daemon.add_file(b"a.php", b"x", 301)
    daemon.add_file(b"b.php", b"x", 301)  # a file may have several names: one node
    assert (await ops.lookup(alias, b"a.php", CTX)).st_ino == 301
    assert (await ops.lookup(DIR_INO, b"b.php", CTX)).st_ino == 301
    assert kernel.entries == [(DIR_INO, b"sub")]


async def test_a_name_found_taken_is_dropped_under_every_node_of_its_directory(
    ops: Operations, daemon: FakeDaemon, kernel: FakeKernel
) -> None:
    """Either node of a moved directory may hold a negative dentry of the name."""
    daemon.add_dir(b"sub", 300)
    await ops.lookup(DIR_INO, b"sub", CTX)
    daemon.names[b"moved"] = daemon.names.pop(b"sub")
    alias = (await ops.lookup(DIR_INO, b"moved", CTX)).st_ino
    daemon.add_file(b"taken.php", b"x", 301)
    kernel.entries.clear()
    with pytest.raises(pyfuse3.FUSEError) as exists:
        await ops.create(alias, b"taken.php", 0o644, os.O_CREAT | os.O_EXCL, CTX)
    assert exists.value.errno == errno.EEXIST
    assert sorted(kernel.entries) == sorted([(alias, b"taken.php"), (300, b"taken.php")])


# -- the page cache's version ---------------------------------------------------------------


async def test_opens_of_one_version_keep_the_page_cache(
    ops: Operations, kernel: FakeKernel
) -> None:
    ino = await looked_up(ops)
    first = await ops.open(ino, os.O_RDONLY, CTX)
    assert (first.keep_cache, first.direct_io) == (False, False)
    assert kernel.attributes == []  # the kernel's size came from the lookup of this version
    await ops.release(first.fh)
    second = await ops.open(ino, os.O_RDONLY, CTX)
    assert (second.keep_cache, second.direct_io) == (True, False)
    assert kernel.attributes == []


async def test_an_open_drops_the_cached_size_when_the_kernel_was_told_another(
    ops: Operations, daemon: FakeDaemon, kernel: FakeKernel
) -> None:
    ino = await looked_up(ops)  # the kernel caches 10 bytes
    daemon.rewrite(b"a much longer new version")
    info = await ops.open(ino, os.O_RDONLY, CTX)
    assert (info.keep_cache, info.direct_io) == (False, False)
    assert kernel.attributes == [ino]  # before open returns: reads are not cut at 10 bytes
    await ops.release(info.fh)
    await ops.release((await ops.open(ino, os.O_RDONLY, CTX)).fh)
    assert kernel.attributes == [ino]


async def test_local_writes_make_the_next_switch_drop_the_cached_size(
    ops: Operations, daemon: FakeDaemon, kernel: FakeKernel
) -> None:
    ino = await looked_up(ops)
    writer = (await ops.open(ino, os.O_WRONLY | os.O_TRUNC, CTX)).fh
    await ops.write(writer, 0, b"local")
    await ops.flush(writer)
    await ops.release(writer)
    assert kernel.attributes == []
    daemon.rewrite(b"remote")
    await ops.release((await ops.open(ino, os.O_RDONLY, CTX)).fh)
    assert kernel.attributes == [ino]


async def test_a_new_version_with_no_old_reader_drops_pages_and_size(
    ops: Operations, daemon: FakeDaemon, kernel: FakeKernel
) -> None:
    ino = await looked_up(ops)
    await ops.release((await ops.open(ino, os.O_RDONLY, CTX)).fh)
    daemon.rewrite(b"a much longer new version")
    info = await ops.open(ino, os.O_RDONLY, CTX)
    assert (info.keep_cache, info.direct_io) == (False, False)
    assert kernel.attributes == [ino]
    assert (await ops.getattr(ino, CTX)).st_size == 25
    assert await ops.read(info.fh, 0, 100) == b"a much longer new version"


async def test_a_new_version_while_an_old_reader_is_open_gets_a_node_of_its_own(
    ops: Operations, daemon: FakeDaemon, kernel: FakeKernel
) -> None:
    """Pages and st_size are per kernel inode: two versions read at once need two nodes.

    The open of the new version is sent away (ESTALE); the VFS's retry looks the name
    up again and opens the new node, whose size is the new version's.
    """
    ino = await looked_up(ops)
    old = await ops.open(ino, os.O_RDONLY, CTX)
    daemon.rewrite(b"short")
    with pytest.raises(pyfuse3.FUSEError) as stale:
        await ops.open(ino, os.O_RDONLY, CTX)
    assert stale.value.errno == errno.ESTALE
    assert kernel.entries == [(DIR_INO, b"page.php")]  # other walks look it up again too
    entry = await ops.lookup(DIR_INO, b"page.php", CTX)  # the retry's LOOKUP_REVAL
    alias = entry.st_ino
    assert alias >= ALIAS_BASE and entry.st_size == 5
    new = await ops.open(alias, os.O_RDONLY, CTX)
    assert (new.keep_cache, new.direct_io) == (False, False)
    assert (await ops.getattr(alias, CTX)).st_size == 5
    # the old node keeps the old reader's size and pages: its reads are not cut
    assert (await ops.getattr(ino, CTX)).st_size == 10
    assert await ops.read(new.fh, 0, 100) == b"short"
    assert await ops.read(old.fh, 0, 100) == b"0123456789"
    assert (await ops.lookup(DIR_INO, b"page.php", CTX)).st_ino == alias
    # every daemon call names the inode number, never the alias
    assert {params["ino"] for method, params in daemon.calls if method != "lookup"} == {ino}
    await ops.release(old.fh)
    await ops.forget([(ino, 1)])
    assert ops.inodes.get(ino) is None
    assert (await ops.lookup(DIR_INO, b"page.php", CTX)).st_ino == alias


async def test_an_open_that_comes_back_to_the_old_node_bypasses_the_page_cache(
    daemon: FakeDaemon, kernel: FakeKernel, tmp_path: Path
) -> None:
    """A walk that cannot reach the new node (``/proc/PID/fd/N``) still reads its version."""
    ops = make_ops(daemon, kernel, tmp_path, switch_wait=0.0)
    ino = await looked_up(ops)
    old = await ops.open(ino, os.O_RDONLY, CTX)
    daemon.rewrite(b"short")
    with pytest.raises(pyfuse3.FUSEError):
        await ops.open(ino, os.O_RDONLY, CTX)
    new = await ops.open(ino, os.O_RDONLY, CTX)  # the same caller's retry, here again
    assert (new.keep_cache, new.direct_io) == (True, True)
    assert kernel.attributes == []
    assert (await ops.getattr(ino, CTX)).st_size == 10
    assert await ops.read(new.fh, 0, 100) == b"short"
    assert await ops.read(old.fh, 0, 100) == b"0123456789"
    await ops.release(old.fh)
    assert (await ops.getattr(ino, CTX)).st_size == 5
    other = SimpleNamespace(uid=0, gid=0, pid=2, umask=0o022)
    third = await ops.open(ino, os.O_RDONLY, other)
    assert (third.keep_cache, third.direct_io) == (False, False)
    assert kernel.attributes == [ino]


async def test_a_retry_is_never_sent_away_twice(
    daemon: FakeDaemon, kernel: FakeKernel, tmp_path: Path
) -> None:
    """The VFS retries an open once: a third version arriving before the retry reaches the
    new node must not make that node answer ESTALE too."""
    ops = make_ops(daemon, kernel, tmp_path, switch_wait=0.0)
    ino = await looked_up(ops)
    first = await ops.open(ino, os.O_RDONLY, CTX)
    daemon.rewrite(b"second")
    other = SimpleNamespace(uid=0, gid=0, pid=2, umask=0o022)
    alias = (await ops.lookup(DIR_INO, b"page.php", other)).st_ino
    second = await ops.open(alias, os.O_RDONLY, other)  # a reader of the second version
    daemon.rewrite(b"third!")
    with pytest.raises(pyfuse3.FUSEError):
        await ops.open(ino, os.O_RDONLY, CTX)  # sent to the newest node
    newest = (await ops.lookup(DIR_INO, b"page.php", CTX)).st_ino
    assert newest not in (ino, alias)
    third = await ops.open(newest, os.O_RDONLY, CTX)
    assert await ops.read(third.fh, 0, 100) == b"third!"
    assert await ops.read(second.fh, 0, 100) == b"second"
    assert await ops.read(first.fh, 0, 100) == b"0123456789"
    # pid 2 is sent from the second version's node to a new one; before its retry gets
    # there, pid 3 reads the fourth version on it and a fifth arrives
    daemon.rewrite(b"fourth")
    with pytest.raises(pyfuse3.FUSEError):
        await ops.open(alias, os.O_RDONLY, other)
    target = (await ops.lookup(DIR_INO, b"page.php", other)).st_ino
    reader = SimpleNamespace(uid=0, gid=0, pid=3, umask=0o022)
    fourth = await ops.open(target, os.O_RDONLY, reader)
    daemon.rewrite(b"fifth")
    retried = await ops.open(target, os.O_RDONLY, other)  # no second ESTALE: direct_io
    assert retried.direct_io
    assert await ops.read(retried.fh, 0, 100) == b"fifth"
    assert await ops.read(fourth.fh, 0, 100) == b"fourth"


async def test_a_retry_that_comes_back_waits_for_the_old_readers_to_close(
    ops: Operations, daemon: FakeDaemon, kernel: FakeKernel
) -> None:
    ino = await looked_up(ops)
    old = await ops.open(ino, os.O_RDONLY, CTX)
    daemon.rewrite(b"new")
    with pytest.raises(pyfuse3.FUSEError):
        await ops.open(ino, os.O_RDONLY, CTX)
    opened: list[pyfuse3.FileInfo] = []

    async def open_new() -> None:
        opened.append(await ops.open(ino, os.O_RDONLY, CTX))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_new)
        await trio.testing.wait_all_tasks_blocked()
        assert opened == []
        await ops.release(old.fh)
    assert (opened[0].keep_cache, opened[0].direct_io) == (False, False)
    assert kernel.attributes == [ino]


async def test_an_unlinked_file_is_purged_once_every_node_of_it_is_forgotten(
    ops: Operations, daemon: FakeDaemon
) -> None:
    ino = await looked_up(ops)
    old = await ops.open(ino, os.O_RDONLY, CTX)
    daemon.rewrite(b"new")
    alias = (await ops.lookup(DIR_INO, b"page.php", CTX)).st_ino
    assert alias != ino
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        await ops.unlink(DIR_INO, b"page.php", CTX)
        await ops.forget([(alias, 1)])
        await ops.release(old.fh)
        await trio.testing.wait_all_tasks_blocked()
        assert not any(method == "purge_inode" for method, _ in daemon.calls)
        await ops.forget([(ino, 1)])
        await trio.testing.wait_all_tasks_blocked()
    assert [params["ino"] for method, params in daemon.calls if method == "purge_inode"] == [ino]


async def test_a_reused_open_answer_is_dropped_once_a_newer_version_is_seen(
    ops: Operations, daemon: FakeDaemon
) -> None:
    daemon.fresh_for = 3600.0
    ino = await looked_up(ops)
    await ops.release((await ops.open(ino, os.O_RDONLY, CTX)).fh)
    opens = sum(1 for method, _ in daemon.calls if method == "open")
    await ops.release((await ops.open(ino, os.O_RDONLY, CTX)).fh)
    assert sum(1 for method, _ in daemon.calls if method == "open") == opens  # reused
    daemon.rewrite(b"new")
    assert (await ops.getattr(ino, CTX)).st_size == 3
    fh = (await ops.open(ino, os.O_RDONLY, CTX)).fh
    assert await ops.read(fh, 0, 10) == b"new"


async def test_an_open_answer_fetched_across_a_change_told_is_not_reused(
    ops: Operations, daemon: FakeDaemon
) -> None:
    """A ``changed`` notification while an open waits for the daemon: that open's answer
    may predate the change (another host's write), so the next open asks the daemon
    again instead of reusing it for the answer's TTL."""
    daemon.fresh_for = 3600.0
    ino = await looked_up(ops)
    gate = daemon.hold["open"] = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_open, ops, ino)
        await trio.testing.wait_all_tasks_blocked()
        ops.on_notification("changed", {"inos": [ino], "seq": 1, "remote": True})
        gate.set()
    del daemon.hold["open"]
    opens = daemon_opens(daemon)
    await read_open(ops, ino)
    assert daemon_opens(daemon) == opens + 1
    await read_open(ops, ino)  # that one is reused
    assert daemon_opens(daemon) == opens + 1


async def test_an_open_answer_older_than_a_version_reported_is_not_reused(
    ops: Operations, daemon: FakeDaemon
) -> None:
    """A getattr reports a newer version (another host's write) while an open's answer,
    read by the daemon before that write, is in flight: the open may use that answer,
    but the next open asks the daemon again instead of reusing it for its TTL."""
    daemon.fresh_for = 3600.0
    ino = await looked_up(ops)
    await read_open(ops, ino)  # pages: the first version
    ops.on_notification("changed", {"inos": [ino], "seq": 1})  # stop reusing it
    first = daemon.inodes[ino]
    gate = daemon.hold["open"] = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_open, ops, ino)  # its answer: the older version
        await trio.testing.wait_all_tasks_blocked()
        newer = daemon.rewrite(b"<?php // the other host's version")
        assert (await ops.getattr(ino, CTX)).st_size == newer.size
        daemon.inodes[ino] = first  # the held open answers what the daemon read before
        gate.set()
    del daemon.hold["open"]
    daemon.inodes[ino] = newer
    opens = daemon_opens(daemon)
    fh = (await ops.open(ino, os.O_RDONLY, CTX)).fh
    assert daemon_opens(daemon) == opens + 1
    assert await ops.read(fh, 0, 4096) == daemon.content(ino)
    await ops.release(fh)


async def test_opens_of_a_reused_answer_record_one_access_not_one_each(
    ops: Operations, daemon: FakeDaemon
) -> None:
    """relatime: the first open for reading records an access (the file changed since
    its access time); the opens that reuse that answer know it was recorded."""
    daemon.fresh_for = 3600.0
    ino = await looked_up(ops)
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        for _ in range(5):
            await ops.release((await ops.open(ino, os.O_RDONLY, CTX)).fh)
        await trio.testing.wait_all_tasks_blocked()
        ops.nursery = None
    methods = [method for method, _ in daemon.calls]
    assert methods.count("open") == 1  # the others reused its answer
    assert methods.count("touch_atime") == 1
    assert daemon.inodes[ino].atime_ns > daemon.inodes[ino].mtime_ns


async def test_a_change_elsewhere_drops_the_kernels_attributes_and_dentries_before_its_ack(
    ops: Operations, daemon: FakeDaemon, kernel: FakeKernel
) -> None:
    """A ``changed`` notification, from another mount of this daemon or from the change
    feed (``remote``), stops the reuse of answers at once and returns the work that drops
    the kernel's attributes of the inodes it knows and the dentries under directories it
    knows (the client acknowledges once it is done)."""
    daemon.fresh_for = 3600.0
    ino = await looked_up(ops)
    await ops.release((await ops.open(ino, os.O_RDONLY, CTX)).fh)
    work = ops.on_notification("changed", {"inos": [ino], "seq": 1})
    assert ops.inodes.state(ino).reusable is None
    assert work is not None and (kernel.attributes, kernel.dropped) == ([], [])
    await work()
    assert (kernel.attributes, kernel.dropped) == ([ino], [])
    unknown = 999_999  # an inode and a directory this mount never told the kernel of
    work = ops.on_notification(
        "changed",
        {
            "inos": [ino, unknown],
            "names": [[DIR_INO, b"page.php"], [unknown, b"x"]],
            "seq": 2,
            "remote": True,
        },
    )
    assert work is not None
    await work()
    assert kernel.attributes == [ino, ino]
    assert kernel.dropped == [(DIR_INO, b"page.php")]
    assert kernel.inodes == [DIR_INO]  # the entries the kernel keeps for readdir of it
    assert ops.on_notification("changed", {"inos": [unknown], "seq": 3}) is None


async def test_a_file_handle_that_cannot_write_asks_for_no_flush(ops: Operations) -> None:
    """The handle number carries cassfs/_openflags.c's FOPEN_NOFLUSH bit when the handle
    cannot write; every later request finds the handle by the whole number."""
    ino = await looked_up(ops)
    reader = (await ops.open(ino, os.O_RDONLY, CTX)).fh
    writer = (await ops.open(ino, os.O_RDWR, CTX)).fh
    assert (reader & openflags.NOFLUSH, writer & openflags.NOFLUSH) == (openflags.NOFLUSH, 0)
    assert await ops.read(reader, 0, 4) == b"0123"
    await ops.write(writer, 0, b"ab")
    await ops.flush(writer)
    await ops.release(reader)
    await ops.release(writer)
    assert ops.inodes.get(ino) is not None and not ops.inodes.state(ino).handles


async def test_an_opendir_free_readdir_goes_on_after_its_cookie_across_a_change(
    daemon: FakeDaemon, kernel: FakeKernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``kernel_keeps_listings`` (no opendir: the handle number is the directory's
    node) each readdir lists from the directory's listing in cookie order; one that goes
    on after a change, from a listing loaded again, lists every name that stayed exactly
    once over the two calls."""
    ops = make_ops(daemon, kernel, tmp_path)
    ops.config = replace(ops.config, kernel_keeps_listings=True)
    for n in range(8):
        daemon.add_file(b"f%d.php" % n, b"x", ino=300 + n)
    listed: list[tuple[bytes, int]] = []
    room = [3]

    def readdir_reply(token: object, name: bytes, attrs: object, next_id: int) -> bool:
        if room[0] == 0:
            return False
        room[0] -= 1
        listed.append((name, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", readdir_reply)
    await ops.readdir(DIR_INO, 0, None)  # type: ignore[arg-type]
    first = [name for name, _ in listed]
    assert len(first) == 3
    daemon.add_file(b"new.php", b"y", ino=400)
    gone = next(name for name in sorted(daemon.names) if name not in first and name != b"new.php")
    del daemon.names[gone]
    ops.on_notification("changed", {"inos": [], "names": [[DIR_INO, b"new.php"], [DIR_INO, gone]]})
    room[0] = 100
    await ops.readdir(DIR_INO, listed[-1][1], None)  # type: ignore[arg-type]
    names = [name for name, _ in listed]
    assert [m for m, _ in daemon.calls].count("readdir") == 2
    assert len(names) == len(set(names))
    assert set(names) - {b"new.php"} == set(daemon.names) - {b"new.php"}  # not `gone`
    assert [cookie for _, cookie in listed] == sorted(cookie for _, cookie in listed)


async def test_writes_on_this_host_move_every_handle_to_the_new_version(
    ops: Operations, daemon: FakeDaemon
) -> None:
    ino = await looked_up(ops)
    reader = (await ops.open(ino, os.O_RDONLY, CTX)).fh
    writer = (await ops.open(ino, os.O_WRONLY | os.O_TRUNC, CTX)).fh
    await ops.write(writer, 0, b"local")
    await ops.flush(writer)
    await ops.release(writer)
    assert await ops.read(reader, 0, 100) == b"local"
    assert (await ops.getattr(ino, CTX)).st_size == 5
    again = await ops.open(ino, os.O_RDONLY, CTX)
    assert again.keep_cache is True  # the kernel's pages are the written ones


async def test_an_unlinked_open_file_is_purged_after_its_last_release_and_forget(
    ops: Operations, daemon: FakeDaemon
) -> None:
    ino = await looked_up(ops)
    fh = (await ops.open(ino, os.O_RDONLY, CTX)).fh
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        await ops.unlink(DIR_INO, b"page.php", CTX)
        await ops.release(fh)
        await trio.testing.wait_all_tasks_blocked()
        assert ino in daemon.inodes  # the kernel still holds it
        await ops.forget([(ino, 1)])
        await trio.testing.wait_all_tasks_blocked()
    assert ino not in daemon.inodes
    assert ops.inodes.get(ino) is None


async def test_a_purge_failing_unexpectedly_does_not_end_the_mount(
    ops: Operations, daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Background work of the front never lets an exception reach the mount's nursery."""

    def broken(ino: int) -> bool:
        raise RuntimeError("a bug in the purge")

    monkeypatch.setattr(daemon, "rpc_purge_inode", broken)
    ino = await looked_up(ops)
    async with trio.open_nursery() as nursery:  # stands for the mount's nursery
        ops.nursery = nursery
        await ops.unlink(DIR_INO, b"page.php", CTX)
        await ops.forget([(ino, 1)])
        await trio.testing.wait_all_tasks_blocked()
        ops.on_notification("purged", {"epoch": 7})
        await trio.testing.wait_all_tasks_blocked()
    assert ops.epoch == 7  # reached: the nursery did not end with the error


# -- the kernel edge ----------------------------------------------------------------------------


async def test_kernel_invalidations_run_in_threads_and_treat_not_cached_as_done(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    trio_thread = threading.get_ident()
    calls: list[tuple[int, bool, bool]] = []
    outcomes: list[BaseException | None] = [
        None,
        FileNotFoundError(errno.ENOENT, "not cached"),
        OSError(errno.ENOENT, "not cached"),
        OSError(errno.EIO, "kernel said no"),
    ]

    def invalidate_inode(ino: int, attr_only: bool = False) -> None:
        calls.append((ino, attr_only, threading.get_ident() != trio_thread))
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(pyfuse3, "invalidate_inode", invalidate_inode)
    cache = FuseKernelCache()
    await cache.invalidate_attributes(5)
    await cache.invalidate_attributes(6)
    await cache.invalidate_inode(7)
    with caplog.at_level(logging.WARNING, logger="cassfs.kernel"):
        await cache.invalidate_attributes(8)
    assert calls == [(5, True, True), (6, True, True), (7, False, True), (8, True, True)]
    assert [record.getMessage() for record in caplog.records] == [
        "could not invalidate inode 8 in the kernel: [Errno 5] kernel said no"
    ]


async def test_dentry_drops_the_kernel_keeps_waiting_leave_threads_for_file_io(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More dentry drops stuck in the kernel (waiting for a directory lock) than trio's
    default thread limiter holds (40): each gives up after its wait, and the handles'
    file I/O (``trio.to_thread`` with the default limiter) still gets a thread.  A race
    run's mount hung for good when 40 abandoned drops held them all."""
    released = threading.Event()
    stuck: list[tuple[int, bytes]] = []

    def invalidate_entry(parent: int, name: bytes) -> None:
        stuck.append((parent, name))
        released.wait()

    monkeypatch.setattr(pyfuse3, "invalidate_entry", invalidate_entry)
    cache = FuseKernelCache()
    try:
        results: list[bool] = []

        async def drop(n: int) -> None:
            results.append(await cache.invalidate_entry(1, b"n%d" % n, 0.05))

        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(drop, n)
        assert results == [False] * 50
        assert len(stuck) <= ENTRY_INVALIDATION_THREADS
        with trio.fail_after(5):
            assert await trio.to_thread.run_sync(lambda: 42) == 42
    finally:
        released.set()


async def listed(ops: Operations) -> list[bytes]:
    """The names an opendir + readdir of the directory gives (readdir_reply recorded)."""
    fh = await ops.opendir(DIR_INO, CTX)
    try:
        return [name for name, _ in ops._dirs[fh][1]]
    finally:
        await ops.releasedir(fh)


async def test_opendir_reuses_the_listing_until_a_change_through_the_mount(
    ops: Operations, daemon: FakeDaemon
) -> None:
    """A warm opendir asks the daemon nothing; a create through the mount drops the
    listing, so the next opendir shows the new name."""
    assert await listed(ops) == [b"page.php"]
    assert await listed(ops) == [b"page.php"]
    assert [m for m, _ in daemon.calls].count("readdir") == 1
    await ops.create(DIR_INO, b"new.php", 0o100644, os.O_WRONLY, CTX)
    assert sorted(await listed(ops)) == [b"new.php", b"page.php"]
    assert [m for m, _ in daemon.calls].count("readdir") == 2


async def test_opendir_forgets_the_listing_when_told_of_a_change_elsewhere(
    ops: Operations, daemon: FakeDaemon
) -> None:
    """A ``changed`` notification naming the directory, or an inode listed in it, drops
    the listing: the next opendir asks the daemon again and shows the change."""
    await listed(ops)
    daemon.add_file(b"other.php", b"x", ino=300)  # another host's create
    ops.on_notification("changed", {"inos": [], "names": [[DIR_INO, b"other.php"]]})
    assert sorted(await listed(ops)) == [b"other.php", b"page.php"]
    ops.on_notification("changed", {"inos": [300]})  # another host's write of a listed file
    await listed(ops)
    ops.on_notification("changed", {"inos": [12345]})  # unrelated: the listing stays
    await listed(ops)
    assert [m for m, _ in daemon.calls].count("readdir") == 3


async def test_a_listing_loaded_across_a_change_is_not_reused(
    ops: Operations, daemon: FakeDaemon
) -> None:
    """An opendir whose readdir was in flight when a change was told keeps its answer
    for that handle only; the next opendir asks again."""
    gate = daemon.hold["readdir"] = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listed, ops)
        await trio.testing.wait_all_tasks_blocked()
        ops.on_notification("changed", {"inos": [], "names": [[DIR_INO, b"x.php"]]})
        gate.set()
    del daemon.hold["readdir"]
    await listed(ops)
    assert [m for m, _ in daemon.calls].count("readdir") == 2
