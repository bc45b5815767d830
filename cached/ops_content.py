"""RPC methods on file content: open, read, write (write-through), materialize."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from cached import content
from cached.cache import sha256_file
from cached.errors import (
    CassfsError,
    InvalidArgument,
    IsADirectory,
    NotFound,
    StorageError,
)
from cached.model import (
    REGULAR,
    Inode,
)
from cached.protocol import INLINE_LIMIT
from cached.service_base import (
    ContentGone,
    ServiceBase,
    Session,
    gather_indexed,
    read_at,
    unlink_quietly,
)
from cached.store import Version, new_op_id

log = logging.getLogger(__name__)

#: Content up to this size comes back inline with ``open``, saving a ``read`` round trip.
OPEN_INLINE_LIMIT = 128 * 1024
#: Chunk reads or writes in flight for one file.
CHUNK_CONCURRENCY = 4
#: Tries of a flip that keeps finding another writer's version before it gives up (EIO).
ATTEMPTS = 8
#: Content up to this size is assembled in memory when fetched; larger goes through a file.
MEMORY_FETCH_LIMIT = 4 * 1024 * 1024


class ContentOps(ServiceBase):
    """Content operations: the ``rpc_*`` methods of this group."""

    # -- content --------------------------------------------------------------------------

    async def rpc_open(
        self, s: Session, ino: int, fetch: bool = True, inline: bool = True
    ) -> dict[str, Any]:
        """Open ``ino``: its inode, and with ``fetch`` its content cached locally.

        Returns ``{"inode", "epoch", "data", "fresh_for"}``.  ``data`` is the whole
        content when ``inline`` and it is at most :data:`OPEN_INLINE_LIMIT` bytes,
        else None (use ``read``).  ``fresh_for`` is how many seconds the inode stays
        within the cache TTL: the front may reuse this answer that long, unless a
        ``changed`` notification names the inode first.  ENOENT; EIO when Cassandra
        fails or the content cannot be verified.
        """
        inode = await self.get_inode(s, ino)
        data = None
        if fetch and inode.kind == REGULAR:
            small = inline and inode.size <= OPEN_INLINE_LIMIT
            inode, data = await self._content(s, inode, want_bytes=small)
            if data is not None:
                self.counters.add("bytes_served", len(data))
        return {
            "inode": inode.to_wire(),
            "epoch": self.epoch,
            "data": data,
            "fresh_for": self.cache.fresh_for(s.tenant, inode.ino),
        }

    async def rpc_read(
        self, s: Session, ino: int, content_id: bytes, file_size: int, offset: int, size: int
    ) -> bytes:
        """``size`` bytes at ``offset`` of version ``content_id`` of ``ino`` (fewer at EOF).

        ``file_size`` is that version's size.  Refetched if it was evicted; EIO
        when that version is gone from Cassandra as well.
        """
        if offset < 0 or size < 0:
            raise InvalidArgument("negative offset or size")
        data = await self.cache.read_content(s.tenant, content_id, offset, size)
        if data is None:
            version = (await self.get_inode(s, ino)).evolve(content_id=content_id, size=file_size)
            try:
                await self._fetch_once(s, version)
            except ContentGone as exc:
                raise StorageError(f"inode {ino} was rewritten and this version is gone") from exc
            data = await self.cache.read_content(s.tenant, content_id, offset, size)
            if data is None:
                raise StorageError("content evicted right after it was fetched")
        self.counters.add("bytes_served", len(data))
        return data

    async def _ensure_content(self, s: Session, inode: Inode) -> Inode:
        """Make sure ``inode``'s content is cached; returns the inode it fetched for.

        If the content version vanished (rewritten elsewhere), reread the inode and
        try again, up to three times; then EIO.
        """
        return (await self._content(s, inode, want_bytes=False))[0]

    async def _content(
        self, s: Session, inode: Inode, want_bytes: bool
    ) -> tuple[Inode, bytes | None]:
        """Cache ``inode``'s content; with ``want_bytes``, also return the whole content.

        Returns ``(inode fetched for, bytes or None)``; the bytes come in the same
        thread hop that checks the cache, or straight from the fetch.
        """
        for _attempt in range(3):
            if want_bytes:
                data = await self.cache.read_content(s.tenant, inode.content_id, 0, inode.size)
                if data is not None:
                    self.counters.add("hits")
                    return inode, data
            elif await self.cache.has_content(s.tenant, inode.content_id):
                self.counters.add("hits")
                return inode, None
            try:
                data = await self._fetch_once(s, inode)
            except ContentGone:
                log.info("inode %d changed during fetch; rereading it", inode.ino)
                inode = await self._load_inode(s, inode.ino)
                continue
            if want_bytes and data is None:
                data = await self.cache.read_content(s.tenant, inode.content_id, 0, inode.size)
            return inode, data
        raise StorageError(f"inode {inode.ino} keeps changing; gave up fetching it")

    async def _fetch_once(self, s: Session, inode: Inode) -> bytes | None:
        key = ("c", s.tenant, inode.content_id)
        return await self._flights.run(key, self._fetch, s, inode)

    async def _fetch(self, s: Session, inode: Inode) -> bytes | None:
        """Read every chunk of ``inode``'s content, verify its SHA-256, and cache it.

        Returns the content when it was assembled in memory (up to
        :data:`MEMORY_FETCH_LIMIT` bytes), else None.
        """
        self.counters.add("misses")
        count = content.chunk_count(inode.size, inode.chunk_size or content.CHUNK_SIZE)
        limiter = trio.CapacityLimiter(CHUNK_CONCURRENCY)
        if inode.size <= MEMORY_FETCH_LIMIT:
            parts: list[bytes] = [b""] * count

            async def get(index: int) -> None:
                async with limiter:
                    data = await s.store.get_chunk(inode.ino, inode.version, index)
                if data is None:
                    raise ContentGone(index)
                parts[index] = data

            await gather_indexed(get, count)
            try:
                data = content.join(parts, inode.size, inode.content_id)
            except ValueError as exc:
                raise ContentGone(str(exc)) from exc
            await self.cache.put_content(s.tenant, inode.content_id, data)
            self.counters.add("bytes_fetched", inode.size)
            return data
        else:
            path, handle = await self._thread(self.cache.new_tmp_file)
            try:
                chunk_size = inode.chunk_size

                async def get_to_file(index: int) -> None:
                    async with limiter:
                        data = await s.store.get_chunk(inode.ino, inode.version, index)
                        if data is None:
                            raise ContentGone(index)
                        await self._thread(os.pwrite, handle.fileno(), data, index * chunk_size)

                await gather_indexed(get_to_file, count)
                await self._thread(handle.close)
                digest, size = await self._thread(sha256_file, path)
                if digest != inode.content_id or size != inode.size:
                    raise ContentGone("content does not match its identity")
                await self.cache.put_content_file(s.tenant, inode.content_id, path)
            finally:
                await self._thread(handle.close)
                await self._thread(unlink_quietly, path)
            self.counters.add("bytes_fetched", inode.size)
            return None

    async def rpc_write(
        self, s: Session, ino: int, data: bytes | None = None, path: str | None = None
    ) -> dict[str, Any]:
        """Replace the whole content of ``ino`` (write-through); the new inode.

        Content comes inline (``data``, at most :data:`INLINE_LIMIT` bytes) or as a
        file under the spool dir (``path``), which the daemon reads and leaves in
        place.  Returns only once the inode in Cassandra points at the new
        content.  ENOENT, EISDIR, EINVAL (bad path), EIO (Cassandra failed).
        """
        if (data is None) == (path is None):
            raise InvalidArgument("write needs exactly one of data and path")
        spool = await self._spool_path(path) if path is not None else None
        async with self._inode_locks((s.tenant, ino)):
            inode = await self.get_inode(s, ino)
            if inode.is_dir:
                raise IsADirectory(f"inode {ino} is a directory")
            if inode.kind != REGULAR:
                raise InvalidArgument(f"inode {ino} is not a regular file")
            updated = await self._write_content(s, inode, data, spool)
            return updated.to_wire()

    async def _identify(self, data: bytes | None, spool: Path | None) -> tuple[bytes, int]:
        """``(SHA-256, size in bytes)`` of the content given inline or as a spool file."""
        if data is not None:
            return content.content_id(data), len(data)
        assert spool is not None
        return await self._thread(sha256_file, spool)  # type: ignore[no-any-return]

    async def _write_content(
        self, s: Session, inode: Inode, data: bytes | None, spool: Path | None
    ) -> Inode:
        """Make ``inode`` point at new content: a new version, its chunks, the flip (LWT).

        ``inode`` may come from the cache: the flip is conditional on the version
        it names, and a flip that finds another version rereads the inode and flips
        over it (last writer wins; both versions were whole).  Content equal to the
        current version's only moves the times, under the same condition.  The
        replaced version's chunks are deleted after the flip.  Called with the
        inode lock held.  Raises ``NotFound`` (ENOENT) when the inode is gone,
        ``StorageError`` (EIO).
        """
        content_id, size = await self._identify(data, spool)
        now = time.time_ns()
        uploaded = b""
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
                    if not uploaded:
                        uploaded = await self._upload(s, inode.ino, content_id, size, data, spool)
                    version = uploaded
                updated = inode.evolve(
                    version=version, content_id=content_id, size=size,
                    chunk_size=content.CHUNK_SIZE, mtime_ns=now, ctime_ns=now,
                )  # fmt: skip
                found = await s.store.flip_content(updated, inode.version)
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
                    await self._forget_version(s, inode.ino, uploaded, size, content.CHUNK_SIZE)
            raise
        if data is not None:
            await self.cache.put_content(s.tenant, content_id, data)
        else:
            assert spool is not None
            await self.cache.put_content_file(s.tenant, content_id, spool)
        if inode.version and inode.version != updated.version:
            # The replaced version can never be current again; deleting it need not
            # delay the writer.
            if self.background is not None:
                self.background.start_soon(
                    self._forget_version, s, inode.ino, inode.version, inode.size, inode.chunk_size
                )
            else:
                with trio.CancelScope(shield=True):
                    await self._forget_version(
                        s, inode.ino, inode.version, inode.size, inode.chunk_size
                    )
        await self.cache.put_inode(s.tenant, updated)
        self.counters.add("flushes")
        self.counters.add("bytes_written", size)
        self._announce(s, inode.ino)
        return updated

    async def _upload(
        self,
        s: Session,
        ino: int,
        content_id: bytes,
        size: int,
        data: bytes | None,
        spool: Path | None,
    ) -> bytes:
        """Write a new version of ``ino``: its ``versions`` row, then every chunk; its id."""
        version = new_op_id()
        await s.store.put_version(
            Version(ino, version, content_id, size, content.CHUNK_SIZE, time.time_ns())
        )
        chunk_size = content.CHUNK_SIZE
        count = content.chunk_count(size, chunk_size)
        limiter = trio.CapacityLimiter(CHUNK_CONCURRENCY)

        async def put(index: int) -> None:
            async with limiter:
                if data is not None:
                    part = data[index * chunk_size : (index + 1) * chunk_size]
                else:
                    assert spool is not None
                    part = await self._thread(read_at, spool, index * chunk_size, chunk_size)
                await s.store.put_chunk(ino, version, index, part)

        await gather_indexed(put, count)
        return version

    async def _forget_version(
        self, s: Session, ino: int, version: bytes, size: int, chunk_size: int
    ) -> None:
        """Delete version ``(ino, version)``: its chunks, then its ``versions`` row.

        Only for a version that is not current and never will be again.  Errors
        are logged, not raised: ``cassfs fsck`` finds what is left.
        """
        with trio.CancelScope(shield=True):
            try:
                await self._delete_chunks(s, ino, version, size, chunk_size)
                await s.store.delete_version(ino, version)
            except CassfsError as exc:
                log.warning("version of inode %d left behind: %s", ino, exc)

    async def _delete_chunks(
        self, s: Session, ino: int, version: bytes, size: int, chunk_size: int
    ) -> None:
        """Delete every chunk of version ``(ino, version)`` of ``size`` bytes."""
        count = content.chunk_count(size, chunk_size or content.CHUNK_SIZE)
        limiter = trio.CapacityLimiter(CHUNK_CONCURRENCY)

        async def delete(index: int) -> None:
            async with limiter:
                await s.store.delete_chunk(ino, version, index)

        await gather_indexed(delete, count)

    async def _truncate(self, s: Session, inode: Inode, size: int) -> Inode:
        """Rewrite ``inode`` cut or zero-extended to ``size`` bytes (write-through)."""
        if size == 0:
            return await self._write_content(s, inode, b"", None)
        inode = await self._ensure_content(s, inode)
        path, handle = await self._thread(self._new_spool_file)
        try:
            await self.cache.copy_content(s.tenant, inode.content_id, handle)
            await self._thread(handle.truncate, size)
            await self._thread(handle.close)
            return await self._write_content(s, inode, None, path)
        finally:
            await self._thread(handle.close)
            await self._thread(unlink_quietly, path)

    async def rpc_materialize(self, s: Session, ino: int) -> dict[str, Any]:
        """The current content of ``ino`` for a read-modify-write by the front.

        Returns ``{"inode", "data"}`` with the bytes inline when at most
        :data:`INLINE_LIMIT`, else ``{"inode", "path"}``: a new spool file the
        front now owns (and deletes).  ENOENT, EIO.
        """
        inode = await self._ensure_content(s, await self.get_inode(s, ino))
        if inode.size <= INLINE_LIMIT:
            data = await self.cache.read_content(s.tenant, inode.content_id, 0, inode.size)
            if data is None:
                raise StorageError("content evicted during materialize")
            return {"inode": inode.to_wire(), "data": data}
        path, handle = await self._thread(self._new_spool_file)
        try:
            if not await self.cache.copy_content(s.tenant, inode.content_id, handle):
                raise StorageError("content evicted during materialize")
        except BaseException:
            await self._thread(unlink_quietly, path)
            raise
        finally:
            await self._thread(handle.close)
        return {"inode": inode.to_wire(), "path": str(path)}

    def _new_spool_file(self) -> tuple[Path, Any]:
        fd, name = tempfile.mkstemp(dir=self.spool_dir, prefix="daemon-")
        return Path(name), os.fdopen(fd, "w+b")

    async def _spool_path(self, path: str) -> Path:
        def check() -> Path:
            resolved = Path(path).resolve()
            if resolved.parent != self.spool_dir.resolve() or not resolved.is_file():
                raise InvalidArgument(f"{path!r} is not a file in the spool dir")
            return resolved

        return await self._thread(check)  # type: ignore[no-any-return]
