"""Content versions of regular files: upload, flip, fetch, verify, delete.

A whole-file write makes a new version (an id of its own, see
:func:`cached.store.new_op_id`): its ``versions`` row, then its chunks, then the
flip of the inode (an LWT on the version it replaces); the replaced version's
chunks go after.  Content of at most :data:`~cached.content.INLINE_CONTENT_LIMIT`
bytes has no chunks: the flip writes its bytes into the inode row, and its
``versions`` row (bytes too, for readers of that version once it is replaced) is
written beside the flip, not before it.  A fetch reads every chunk of one version and checks the
SHA-256 of the whole.  Used by the content, metadata (truncate) and namespace
(purge) RPC groups.

Files are at most :data:`~cached.api.MAX_FILE_SIZE` bytes (``FileTooLarge``,
EFBIG, beyond).  Chunks of zeros are holes: never uploaded, read back as zeros
(:mod:`cached.content`), so a sparse file costs its data, not its size.  Chunk
reads, writes and deletions of one file run in :data:`CHUNK_CONCURRENCY` tasks,
whatever the file's size.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import trio

from cached import content
from cached.api import MAX_FILE_SIZE
from cached.cache import sha256_file
from cached.core import (
    ContentGone,
    Core,
    NotInBatch,
    Session,
    gather,
    read_at,
    unlink_quietly,
)
from cached.errors import CassfsError, FileTooLarge, InvalidArgument, NotFound, StorageError
from cached.model import Inode
from cached.store import Version, new_op_id

log = logging.getLogger(__name__)

#: Chunk reads, writes or deletions in flight for one file (tasks).
CHUNK_CONCURRENCY = 4
#: Tries of a flip that keeps finding another writer's version before it gives up (EIO).
ATTEMPTS = 8
#: Written content is cached when at most this share of the cache; larger would push the
#: rest out (and soon itself): it is fetched when read, its holes not transferred.
WRITE_CACHE_SHARE = 0.25
#: Content up to this size is assembled in memory when fetched; larger goes through a file.
MEMORY_FETCH_LIMIT = 4 * 1024 * 1024


class Contents:
    """The content versions of one daemon, over its :class:`~cached.core.Core`."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def ensure_content(self, s: Session, inode: Inode, hold: contextlib.ExitStack) -> Inode:
        """Make sure ``inode``'s content is cached; returns the inode it fetched for.

        The content stays pinned in the cache (not evicted) until ``hold`` closes.
        If the content version vanished (rewritten elsewhere), reread the inode and
        try again, up to three times; then EIO.
        """
        return (await self.cached_content(s, inode, False, hold))[0]

    async def cached_content(
        self, s: Session, inode: Inode, want_bytes: bool, hold: contextlib.ExitStack
    ) -> tuple[Inode, bytes | None]:
        """Cache ``inode``'s content; with ``want_bytes``, also return the whole content.

        Returns ``(inode fetched for, bytes or None)``; the bytes come in the same
        thread hop that checks the cache, or straight from the fetch.  Every content
        looked at stays pinned in the cache until ``hold`` closes.
        """
        for _attempt in range(3):
            looked = self.core.flights.clock()
            hold.enter_context(self.core.cache.pinned(s.tenant, inode.content_id))
            if want_bytes:
                data = await self.core.cache.read_content(s.tenant, inode.content_id, 0, inode.size)
                if data is not None:
                    self.core.counters.add("hits")
                    return inode, data
            elif await self.core.cache.has_content(s.tenant, inode.content_id):
                self.core.counters.add("hits")
                return inode, None
            try:
                data = await self.fetch_once(s, inode, looked)
            except ContentGone:
                log.info("inode %d changed during fetch; rereading it", inode.ino)
                inode = await self.core.load_inode(s, inode.ino)
                continue
            if want_bytes and data is None:
                data = await self.core.cache.read_content(s.tenant, inode.content_id, 0, inode.size)
            return inode, data
        raise StorageError(f"inode {inode.ino} keeps changing; gave up fetching it")

    async def fetch_once(
        self, s: Session, inode: Inode, looked: float | None = None
    ) -> bytes | None:
        """:meth:`fetch` ``inode``'s content, one fetch for all concurrent callers.

        ``looked`` is when the caller found the content missing from the cache (on
        ``core.flights.clock``): if a fetch of it ended since, the cache is asked once
        more instead of fetching it again (returns None when it is there now).  A joined
        batch of siblings' bytes (:meth:`~cached.core.Core.load_contents`) that did not
        bring this content is followed by a fetch of its own.
        """
        key = ("c", s.tenant, inode.content_id)
        if (
            looked is not None
            and self.core.flights.finished_since(key, looked)
            and await self.core.cache.has_content(s.tenant, inode.content_id)
        ):
            return None
        for _attempt in range(3):
            try:
                return await self.core.flights.run(key, self.fetch, s, inode)
            except NotInBatch:  # joined a batch of siblings that did not bring it
                continue
        return await self.fetch(s, inode)

    async def fetch(self, s: Session, inode: Inode) -> bytes | None:
        """Read every chunk of ``inode``'s content, verify its SHA-256, and cache it.

        Content of at most :data:`~cached.content.INLINE_CONTENT_LIMIT` bytes is read
        from its ``versions`` row when kept there (schema 6), else from the inode row
        while that version is current (its row is written beside the flip, so a read
        may come first, or a killed writer may have left none), else from its chunks.
        Absent chunks are holes (zeros); the SHA-256 tells them from lost ones.
        Returns the content when it was assembled in memory (up to
        :data:`MEMORY_FETCH_LIMIT` bytes), else None: larger content goes through a
        sparse file in the cache's tmp dir.  Raises ``ContentGone`` when what was
        read is not that content (the version was deleted), ``StorageError`` (EIO).
        """
        self.core.counters.add("misses")
        if 0 < inode.size <= content.INLINE_CONTENT_LIMIT:
            kept = await s.store.get_version_data(inode.ino, inode.version)
            if kept is None:
                current, in_row = await s.store.get_inode_content(inode.ino)
                if current is not None and current.version == inode.version:
                    kept = in_row
            if kept is not None:  # written by a version-6 daemon: no chunks
                if len(kept) != inode.size or content.content_id(kept) != inode.content_id:
                    raise ContentGone(f"version row of inode {inode.ino} holds other content")
                if await self.core.cache.put_content_behind(s.tenant, inode.content_id, kept):
                    self.core.counters.add("bytes_fetched", inode.size)
                return kept
        chunk_size = inode.chunk_size or content.CHUNK_SIZE
        count = content.chunk_count(inode.size, chunk_size)
        if inode.size <= MEMORY_FETCH_LIMIT:
            parts: list[bytes] = [b""] * count

            async def get(index: int) -> None:
                data = await s.store.get_chunk(inode.ino, inode.version, index)
                if data is None:
                    data = content.zeros(content.expected_length(inode.size, chunk_size, index))
                parts[index] = data

            await run_workers(get, range(count))
            try:
                data = content.join(parts, inode.size, inode.content_id)
            except ValueError as exc:
                raise ContentGone(str(exc)) from exc
            await self.core.cache.put_content_behind(s.tenant, inode.content_id, data)
            self.core.counters.add("bytes_fetched", inode.size)
            return data
        path, handle = await self.core.thread(self.core.cache.new_tmp_file)
        try:
            await self.core.thread(handle.truncate, inode.size)  # a hole until written
            fetched = 0

            async def get_to_file(index: int) -> None:
                nonlocal fetched
                data = await s.store.get_chunk(inode.ino, inode.version, index)
                if data is None or content.is_zero(data):
                    return  # stays a hole of the file
                fetched += len(data)
                if index * chunk_size + len(data) > inode.size:
                    raise ContentGone(f"chunk {index} runs past the end")
                await self.core.thread(os.pwrite, handle.fileno(), data, index * chunk_size)

            await run_workers(get_to_file, range(count))
            await self.core.thread(handle.close)
            digest, size = await self.core.thread(sha256_file, path)
            if digest != inode.content_id or size != inode.size:
                raise ContentGone("content does not match its identity")
            await self.core.cache.put_content_file(s.tenant, inode.content_id, path)
        finally:
            await self.core.thread(handle.close)
            await self.core.thread(unlink_quietly, path)
        self.core.counters.add("bytes_fetched", fetched)
        return None

    async def identify(
        self, data: bytes | None, spool: Path | None
    ) -> tuple[bytes, int, list[int]]:
        """``(SHA-256, size in bytes, indexes of the chunks that are not all zeros)`` of
        the content given inline or as a spool file.

        Holes of a spool file are not read (``SEEK_DATA``).  Raises ``FileTooLarge``
        (EFBIG) for content over :data:`MAX_FILE_SIZE` bytes, before reading any.
        """
        if data is not None:
            if len(data) > MAX_FILE_SIZE:
                raise FileTooLarge(f"{len(data)} B is over the {MAX_FILE_SIZE} B file size limit")
            chunk = content.CHUNK_SIZE
            stored = [
                index
                for index in range(content.chunk_count(len(data), chunk))
                if not content.is_zero(data[index * chunk : (index + 1) * chunk])
            ]
            return content.content_id(data), len(data), stored
        assert spool is not None
        return await self.core.thread(scan_file, spool, content.CHUNK_SIZE)  # type: ignore[no-any-return]

    async def write_content(
        self, s: Session, inode: Inode, data: bytes | None, spool: Path | None
    ) -> Inode:
        """Make ``inode`` point at new content: a new version, its chunks, the flip (LWT).

        ``inode`` may come from the cache: the flip is conditional on the version
        it names, and a flip that finds another version rereads the inode and flips
        over it (last writer wins; both versions were whole).  Content equal to the
        current version's only moves the times, under the same condition.  The
        replaced version's chunks are deleted after the flip.  Called with the
        inode lock held.  Raises ``FileTooLarge`` (EFBIG) over
        :data:`MAX_FILE_SIZE` bytes, ``NotFound`` (ENOENT) when the inode is gone,
        ``StorageError`` (EIO).
        """
        content_id, size, stored = await self.identify(data, spool)
        if data is None and 0 < size <= content.INLINE_CONTENT_LIMIT:
            assert spool is not None
            data, spool = await self.core.thread(spool.read_bytes), None  # kept inline
            if len(data) != size:
                raise StorageError(f"spool file of inode {inode.ino} changed while written")
        inline = data if data is not None and 0 < size <= content.INLINE_CONTENT_LIMIT else None
        now = time.time_ns()
        uploaded = b""
        row: Version | None = None  # the versions row of small content, not written yet
        try:
            for _attempt in range(ATTEMPTS):
                same = (
                    not uploaded
                    and content_id == inode.content_id
                    and size == inode.size
                    and (inode.version or size == 0)
                )
                if same:
                    version = inode.version
                elif size == 0:
                    version = b""  # an empty file has no chunks, so no version
                else:
                    if not uploaded and inline is not None:
                        # The flip carries the bytes (the inode row keeps them): the
                        # version's own row goes beside it, not before.
                        uploaded = new_op_id()
                        row = Version(
                            inode.ino, uploaded, content_id, size, content.CHUNK_SIZE,
                            time.time_ns(), inline,
                        )  # fmt: skip
                    elif not uploaded:
                        uploaded = await self.upload(
                            s, inode.ino, content_id, size, data, spool, stored
                        )
                    version = uploaded
                updated = inode.evolve(
                    version=version, content_id=content_id, size=size,
                    chunk_size=content.CHUNK_SIZE, mtime_ns=now, ctime_ns=now,
                )  # fmt: skip
                flip_started = self.core.cache.clock()
                flip = functools.partial(s.store.flip_content, updated, inode.version, inline)
                if row is not None:
                    found, _ = await gather(flip, functools.partial(self._put_row, s, row))
                    row = None
                else:
                    found = await flip()
                if found is None:
                    break
                # Another writer flipped first (or the cached inode was old): reread.
                current = await s.store.get_inode(inode.ino)
                if current is None:
                    raise NotFound(f"inode {inode.ino}")
                inode = current
            else:
                raise StorageError(f"inode {inode.ino} kept changing; gave up writing it")
        except BaseException:
            if uploaded:
                with trio.CancelScope(shield=True):
                    await self._drop_unflipped(s, inode.ino, uploaded, size)
            raise
        # The flip applied over ``inode``'s version, whose size was ``inode.size``.
        await self.core.usage.count(s, size - inode.size, 0)
        if data is not None:
            await self.core.cache.put_content_behind(s.tenant, content_id, data)
        elif size <= self.core.cache.size_limit * WRITE_CACHE_SHARE:
            assert spool is not None
            await self.core.cache.put_content_file(s.tenant, content_id, spool)
        if inode.version and inode.version != updated.version:
            await self.retire_version(s, inode.ino, inode.version, inode.size, inode.chunk_size)
        # Stale if the feed told of another host's change to the inode since the flip
        # began: the fields other than the content's may be older than that change.
        await self.core.cache.put_inode(s.tenant, updated, changed_after=flip_started)
        self.core.counters.add("flushes")
        self.core.counters.add("bytes_written", size)
        await self.core.announce(s, inode.ino)
        return updated

    async def _put_row(self, s: Session, row: Version) -> None:
        """Write the ``versions`` row of small content whose flip runs beside it.

        A failure is logged, not raised: once the flip applies, the bytes are in the
        inode row, which is what opens read; without its own row, that version is not
        readable once replaced (a reader then rereads the inode) and fsck verifies it
        from the inode row (``cassfs fsck``).
        """
        try:
            await s.store.put_version(row)
        except StorageError as exc:
            log.warning("versions row of inode %d not written: %s", row.ino, exc)

    async def _drop_unflipped(self, s: Session, ino: int, version: bytes, size: int) -> None:
        """Delete an uploaded version whose flip failed, unless the flip did apply.

        A flip LWT that timed out may still have been applied: the inode is reread
        first, and the version is kept when it is current (or when the inode
        cannot be read: fsck removes it later if it is not).
        """
        try:
            current = await s.store.get_inode(ino)
        except CassfsError as exc:
            log.warning("inode %d unreadable after a failed write; version left: %s", ino, exc)
            return
        if current is None or current.version != version:
            await self.forget_version(s, ino, version, size, content.CHUNK_SIZE)

    async def upload(
        self,
        s: Session,
        ino: int,
        content_id: bytes,
        size: int,
        data: bytes | None,
        spool: Path | None,
        stored: Iterable[int],
    ) -> bytes:
        """Write a new version of ``ino`` kept in chunks (content over
        :data:`~cached.content.INLINE_CONTENT_LIMIT` bytes): its ``versions`` row, then
        its chunks; its id.

        (Smaller content is kept in its ``versions`` row and the inode row, written
        with the flip: see :meth:`write_content`.)  Only the chunks listed in
        ``stored`` (those not all zeros) are written; the others are holes.  A chunk
        read from the spool that turns out all zeros is not written either.
        ``StorageError`` (EIO).
        """
        version = new_op_id()
        await s.store.put_version(
            Version(ino, version, content_id, size, content.CHUNK_SIZE, time.time_ns(), None)
        )
        chunk_size = content.CHUNK_SIZE

        async def put(index: int) -> None:
            if data is not None:
                part = data[index * chunk_size : (index + 1) * chunk_size]
            else:
                assert spool is not None
                part = await self.core.thread(read_at, spool, index * chunk_size, chunk_size)
            if not content.is_zero(part):
                await s.store.put_chunk(ino, version, index, part)

        await run_workers(put, stored)
        return version

    async def retire_version(
        self, s: Session, ino: int, version: bytes, size: int, chunk_size: int
    ) -> None:
        """A version just replaced: delete it after the purge delay (at once when it is 0).

        Other hosts may still read it for a while (see :mod:`cached.reaper`).  The
        replaced version can never be current again, so deleting it need not delay
        the writer: with no delay it goes in the background when the daemon runs one.
        """
        reaper = self.core.reaper
        if reaper.delay > 0:
            with trio.CancelScope(shield=True):
                await reaper.schedule(s.owner, s.environment, ino, version, size, chunk_size)
        elif self.core.background is not None:
            self.core.background.start_soon(self.forget_version, s, ino, version, size, chunk_size)
        else:
            await self.forget_version(s, ino, version, size, chunk_size)

    async def forget_version(
        self, s: Session, ino: int, version: bytes, size: int, chunk_size: int
    ) -> None:
        """:meth:`delete_version`, with errors logged rather than raised.

        ``cassfs fsck`` finds what a failure left.
        """
        with trio.CancelScope(shield=True):
            try:
                await self.delete_version(s, ino, version, size, chunk_size)
            except CassfsError as exc:
                log.warning("version of inode %d left behind: %s", ino, exc)

    async def delete_version(
        self, s: Session, ino: int, version: bytes, size: int, chunk_size: int
    ) -> None:
        """Delete version ``(ino, version)``: its chunks, then its ``versions`` row.

        Only for a version that is not current and never will be again.  Raises
        ``StorageError`` (EIO) when Cassandra fails.
        """
        await self.delete_chunks(s, ino, version, size, chunk_size)
        await s.store.delete_version(ino, version)

    async def version_of(self, s: Session, inode: Inode, content_id: bytes, size: int) -> Inode:
        """``inode`` as it was with content ``content_id`` of ``size`` bytes.

        The current version, or a replaced one still kept by the purge delay (a
        handle opened before another write reads it whole).  ``StorageError``
        (EIO) when that version is gone.
        """
        if inode.content_id == content_id and inode.size == size:
            return inode
        for kept in await s.store.list_versions(inode.ino):
            if kept.content_id == content_id and kept.size == size:
                return inode.evolve(
                    version=kept.version, content_id=content_id, size=size,
                    chunk_size=kept.chunk_size,
                )  # fmt: skip
        raise StorageError(f"inode {inode.ino} was rewritten and this version is gone")

    async def delete_chunks(
        self, s: Session, ino: int, version: bytes, size: int, chunk_size: int
    ) -> None:
        """Delete every chunk of version ``(ino, version)`` of ``size`` bytes (holes too:
        which chunks were holes is not recorded).  ``StorageError`` (EIO)."""
        count = content.chunk_count(size, chunk_size or content.CHUNK_SIZE)

        async def delete(index: int) -> None:
            await s.store.delete_chunk(ino, version, index)

        await run_workers(delete, range(count))

    async def truncate(self, s: Session, inode: Inode, size: int) -> Inode:
        """Rewrite ``inode`` cut or zero-extended to ``size`` bytes (write-through).

        Raises ``FileTooLarge`` (EFBIG) over :data:`MAX_FILE_SIZE` bytes, nothing
        changed; otherwise as :meth:`write_content`.
        """
        if size > MAX_FILE_SIZE:
            raise FileTooLarge(f"{size} B is over the {MAX_FILE_SIZE} B file size limit")
        if size == 0:
            return await self.write_content(s, inode, b"", None)
        with contextlib.ExitStack() as hold:
            inode = await self.ensure_content(s, inode, hold)
            path, handle = await self.core.thread(self.new_spool_file)
            try:
                if not await self.core.cache.copy_content(s.tenant, inode.content_id, handle):
                    raise StorageError(f"content of inode {inode.ino} left the cache")
                await self.core.thread(handle.truncate, size)
                await self.core.thread(handle.close)
                return await self.write_content(s, inode, None, path)
            finally:
                await self.core.thread(handle.close)
                await self.core.thread(unlink_quietly, path)

    def new_spool_file(self) -> tuple[Path, Any]:
        fd, name = tempfile.mkstemp(dir=self.core.spool_dir, prefix="daemon-")
        return Path(name), os.fdopen(fd, "w+b")

    async def spool_path(self, path: str) -> Path:
        def check() -> Path:
            resolved = Path(path).resolve()
            if resolved.parent != self.core.spool_dir.resolve() or not resolved.is_file():
                raise InvalidArgument(f"{path!r} is not a file in the spool dir")
            return resolved

        return await self.core.thread(check)  # type: ignore[no-any-return]


async def run_workers(
    fn: Callable[[int], Awaitable[None]], items: Iterable[int], workers: int = CHUNK_CONCURRENCY
) -> None:
    """Call ``fn(item)`` for every item of ``items`` in at most ``workers`` tasks.

    A fixed number of tasks take the items in order, so a file of 4096 chunks
    costs ``workers`` tasks, not 4096.  The first error cancels the rest and is
    raised alone (not as an ExceptionGroup).
    """
    pending = iter(items)

    async def work() -> None:
        for item in pending:  # shared: each item goes to one task
            await fn(item)

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(work)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        raise next(
            (exc for exc in leaves if not isinstance(exc, trio.Cancelled)), leaves[0]
        ) from group


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def scan_file(path: Path, chunk_size: int) -> tuple[bytes, int, list[int]]:
    """``(SHA-256, size in bytes, indexes of the chunks not all zeros)`` of the file at
    ``path``, cut in chunks of ``chunk_size`` bytes (blocking: run in a worker thread).

    Holes (``SEEK_DATA``/``SEEK_HOLE``) are hashed as zeros without being read, so
    a sparse file costs a hash of its size and a read of its data.  Raises
    ``FileTooLarge`` (EFBIG) over :data:`MAX_FILE_SIZE` bytes before reading
    anything, ``OSError`` when the file cannot be read.
    """
    digest = hashlib.sha256()
    stored: list[int] = []
    with open(path, "rb") as reader:
        fd = reader.fileno()
        size = os.fstat(fd).st_size
        if size > MAX_FILE_SIZE:
            raise FileTooLarge(f"{size} B is over the {MAX_FILE_SIZE} B file size limit")
        total = 0
        data_at = 0  # no data before this offset
        for index in range(content.chunk_count(size, chunk_size)):
            start = index * chunk_size
            length = min(chunk_size, size - start)
            if data_at < start + length:
                data_at = _next_data(fd, start, size)
            if data_at >= start + length:
                digest.update(content.zeros(length))
                total += length
                continue
            reader.seek(start)
            block = reader.read(length)
            digest.update(block)
            total += len(block)
            if not content.is_zero(block):
                stored.append(index)
            if len(block) < length:
                break  # the file shrank while read
    return digest.digest(), total, stored


def _next_data(fd: int, offset: int, size: int) -> int:
    """The offset of the first byte at or after ``offset`` that may be data (not a hole).

    ``size`` when only a hole follows; ``offset`` itself when the filesystem cannot
    tell (no ``SEEK_DATA``).
    """
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return size
        return offset
