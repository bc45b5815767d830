"""RPC methods on file content: open, read, write (write-through), materialize."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from cached.api import MAX_FILE_SIZE, Materialized, Opened
from cached.core import ContentGone, Core, Session, unlink_quietly
from cached.errors import FileTooLarge, InvalidArgument, IsADirectory, StorageError
from cached.model import REGULAR, needs_atime
from cached.protocol import INLINE_LIMIT
from cached.versions import Contents

log = logging.getLogger(__name__)

#: Content up to this size comes back inline with ``open``, saving a ``read`` round trip.
OPEN_INLINE_LIMIT = 128 * 1024
#: Most bytes one ``read`` returns (the kernel asks for at most 1 MiB); larger asks get fewer.
READ_LIMIT = INLINE_LIMIT


class ContentOps:
    """Content operations: the ``rpc_*`` methods of this group."""

    def __init__(self, core: Core, contents: Contents) -> None:
        self.core = core
        self.contents = contents

    async def rpc_open(
        self,
        s: Session,
        ino: int,
        fetch: bool = True,
        inline: bool = True,
        atime_ns: int | None = None,
    ) -> dict[str, Any]:
        """Open ``ino``: its inode, and with ``fetch`` its content cached locally.

        Returns ``{"inode", "epoch", "data", "fresh_for"}``.  ``data`` is the whole
        content when ``inline`` and it is at most :data:`OPEN_INLINE_LIMIT` bytes,
        else None (use ``read``).  ``fresh_for`` is how many seconds the inode stays
        within the cache TTL: the front may reuse this answer that long, unless a
        ``changed`` notification names the inode first.  With ``atime_ns``
        (nanoseconds), a read access at that time is recorded under relatime rules, as
        ``touch_atime`` does, and the inode returned carries it: a cold open is one
        round trip, not two.  ENOENT; EIO when Cassandra fails or the content cannot be
        verified.
        """
        inode = await self.core.get_inode(s, ino)
        data = None
        if fetch and inode.kind == REGULAR:
            small = inline and inode.size <= OPEN_INLINE_LIMIT
            with contextlib.ExitStack() as hold:
                inode, data = await self.contents.cached_content(s, inode, small, hold)
                if data is None:  # read by range next: keep it cached meanwhile
                    self.core.cache.lease(s.tenant, inode.content_id)
            if data is not None:
                self.core.counters.add("bytes_served", len(data))
        if (
            atime_ns is not None
            and not s.read_only
            and inode.kind == REGULAR
            and needs_atime(inode, atime_ns)
            and await self.core.record_access(s, ino, atime_ns)
        ):
            inode = inode.evolve(atime_ns=atime_ns)
        return Opened(
            inode, self.core.epoch, data, self.core.cache.fresh_for(s.tenant, inode.ino)
        ).to_wire()

    async def rpc_read(
        self, s: Session, ino: int, content_id: bytes, file_size: int, offset: int, size: int
    ) -> bytes:
        """``size`` bytes at ``offset`` of version ``content_id`` of ``ino`` (fewer at EOF).

        ``file_size`` is that version's size.  At most :data:`READ_LIMIT` bytes
        come back, however many are asked for.  Refetched if it was evicted, also
        after another write replaced it, while the purge delay keeps it; the
        content stays pinned from the fetch to the read, and leased for the reads
        that follow (:meth:`~cached.cache.LocalCache.lease`).  EINVAL for a negative
        offset or size; EIO when that version is gone from Cassandra as well.
        """
        if offset < 0 or size < 0 or file_size < 0:
            raise InvalidArgument("negative offset or size")
        size = min(size, READ_LIMIT, max(0, file_size - offset))
        if size == 0:
            return b""
        cache = self.core.cache
        with cache.pinned(s.tenant, content_id):
            data = await cache.read_content(s.tenant, content_id, offset, size)
            if data is None:
                version = await self.contents.version_of(
                    s, await self.core.get_inode(s, ino), content_id, file_size
                )
                try:
                    await self.contents.fetch_once(s, version)
                except ContentGone as exc:
                    raise StorageError(
                        f"inode {ino} was rewritten and this version is gone"
                    ) from exc
                data = await cache.read_content(s.tenant, content_id, offset, size)
                if data is None:
                    raise StorageError("content evicted right after it was fetched")
            cache.lease(s.tenant, content_id)
        self.core.counters.add("bytes_served", len(data))
        return data

    async def rpc_write(
        self, s: Session, ino: int, data: bytes | None = None, path: str | None = None
    ) -> dict[str, Any]:
        """Replace the whole content of ``ino`` (write-through); the new inode.

        Content comes inline (``data``, at most :data:`INLINE_LIMIT` bytes) or as a
        file under the spool dir (``path``), which the daemon reads and leaves in
        place.  Returns only once the inode in Cassandra points at the new
        content.  ENOENT, EISDIR, EINVAL (bad path), EFBIG (content over
        :data:`~cached.api.MAX_FILE_SIZE` bytes, nothing changed), EIO (Cassandra
        failed).
        """
        if (data is None) == (path is None):
            raise InvalidArgument("write needs exactly one of data and path")
        if data is not None and len(data) > MAX_FILE_SIZE:
            raise FileTooLarge(f"{len(data)} B is over the {MAX_FILE_SIZE} B file size limit")
        spool = await self.contents.spool_path(path) if path is not None else None
        async with self.core.inode_locks((s.tenant, ino)):
            inode = await self.core.get_inode(s, ino)
            if inode.is_dir:
                raise IsADirectory(f"inode {ino} is a directory")
            if inode.kind != REGULAR:
                raise InvalidArgument(f"inode {ino} is not a regular file")
            updated = await self.contents.write_content(s, inode, data, spool)
            return updated.to_wire()

    async def rpc_materialize(self, s: Session, ino: int) -> dict[str, Any]:
        """The current content of ``ino`` for a read-modify-write by the front.

        Returns ``{"inode", "data"}`` with the bytes inline when at most
        :data:`INLINE_LIMIT`, else ``{"inode", "path"}``: a new spool file the
        front now owns (and deletes).  ENOENT, EISDIR, EIO.
        """
        inode = await self.core.get_inode(s, ino)
        if inode.is_dir:
            raise IsADirectory(f"inode {ino} is a directory")
        with contextlib.ExitStack() as hold:
            inode = await self.contents.ensure_content(s, inode, hold)
            if inode.size <= INLINE_LIMIT:
                data = await self.core.cache.read_content(s.tenant, inode.content_id, 0, inode.size)
                if data is None:
                    raise StorageError("content evicted during materialize")
                return Materialized(inode, data=data).to_wire()
            path, handle = await self.core.thread(self.contents.new_spool_file)
            try:
                if not await self.core.cache.copy_content(s.tenant, inode.content_id, handle):
                    raise StorageError("content evicted during materialize")
            except BaseException:
                await self.core.thread(unlink_quietly, path)
                raise
            finally:
                await self.core.thread(handle.close)
            return Materialized(inode, path=str(path)).to_wire()
