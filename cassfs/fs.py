"""The FUSE operations: each turns a kernel request into one or two daemon RPCs.

This is the only place that raises ``pyfuse3.FUSEError``: every handler runs
under :func:`_fuse_errors`, which maps :mod:`cached.errors` (which carry their
errno) to ``FUSEError`` and anything unexpected to EIO, so no exception ever
escapes into ``pyfuse3.main()`` (which would kill the mount).

Timeouts: ``entry_ttl`` seconds is the entry and attr timeout of every reply,
``negative_ttl`` the timeout of a negative lookup (``st_ino = 0``).  Source:
pyfuse3 ``EntryAttributes`` and libfuse ``fuse_lowlevel.h``.

Operation -> RPC: lookup/getattr/setattr/readlink -> the same name;
opendir -> readdir; mkdir/create/symlink/unlink/rmdir/rename -> the same name;
open -> open; read -> read (unless the content came inline); write -> nothing
(buffered), or materialize for a partial rewrite; flush/fsync -> write;
forget -> purge_inode for unlinked inodes; statfs -> statfs.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from cached.client import DaemonClient
from cached.errors import CassfsError, NotFound
from cached.model import NAME_MAX, ROOT_INO
from cassfs.handles import OpenFile, WriteBuffer
from cassfs.lookups import LookupCounts

log = logging.getLogger(__name__)

#: Open answers kept for reuse (see Operations._reuse).
REUSABLE_ENTRIES = 100_000

P = ParamSpec("P")
R = TypeVar("R")


def _fuse_errors(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Map cassfs errors to ``FUSEError(errno)`` and anything unexpected to EIO."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except CassfsError as exc:
            if exc.errno != errno.ENOENT:
                log.debug("%s failed: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from exc
        except Exception as exc:
            log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from exc

    return wrapper


@dataclass(frozen=True)
class FrontConfig:
    """Kernel cache timeouts of the mount, seconds."""

    entry_ttl: float = 1.0
    negative_ttl: float = 1.0


class Operations(pyfuse3.Operations):
    """cassfs's pyfuse3 operations over a connected :class:`DaemonClient`.

    ``spool_dir`` receives write buffers larger than 1 MiB (it must be the
    daemon's spool dir: the daemon reads them from there).  Set ``nursery``
    before the mount serves requests; background purges run in it.
    """

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self, client: DaemonClient, config: FrontConfig, spool_dir: Path, epoch: int
    ) -> None:
        super().__init__()
        self.client = client
        self.config = config
        self.spool_dir = spool_dir
        self.epoch = epoch
        self.nursery: trio.Nursery | None = None
        self.lookups = LookupCounts()
        self.orphans: set[int] = set()
        self._handles: dict[int, OpenFile] = {}
        self._open_count: dict[int, int] = {}
        self._buffers: dict[int, WriteBuffer] = {}
        self._dirs: dict[int, list[list[Any]]] = {}
        self._seen: dict[int, tuple[bytes, int]] = {}
        #: ino -> (trio deadline, inode map): open answers reusable until the daemon's
        #: TTL for the inode runs out, unless a `changed` notification names it first.
        self._reusable: OrderedDict[int, tuple[float, dict[str, Any]]] = OrderedDict()
        self._fh = itertools.count(1)

    # -- helpers --------------------------------------------------------------------------

    def _entry(self, inode: dict[str, Any]) -> pyfuse3.EntryAttributes:
        """EntryAttributes of a daemon inode map, with the mount's timeouts."""
        attrs = pyfuse3.EntryAttributes()
        ino = inode["ino"]
        size = inode["size"]
        buffer = self._buffers.get(ino)
        if buffer is not None and buffer.loaded:
            size = buffer.size
        attrs.st_ino = ino
        attrs.generation = 0
        attrs.entry_timeout = self.config.entry_ttl
        attrs.attr_timeout = self.config.entry_ttl
        attrs.st_mode = inode["mode"]
        attrs.st_nlink = inode["nlink"]
        attrs.st_uid = inode["uid"]
        attrs.st_gid = inode["gid"]
        attrs.st_rdev = 0
        attrs.st_size = size
        attrs.st_blksize = 4096
        attrs.st_blocks = -(-size // 512)
        attrs.st_atime_ns = inode["atime_ns"]
        attrs.st_mtime_ns = inode["mtime_ns"]
        attrs.st_ctime_ns = inode["ctime_ns"]
        return attrs

    def _remember(self, inode: dict[str, Any]) -> pyfuse3.EntryAttributes:
        """An entry reply: the kernel now holds one more reference."""
        self.lookups.add(inode["ino"])
        return self._entry(inode)

    def _unlinked(self, ino: int) -> None:
        """``ino`` lost its last name: purge it now, or once the kernel forgets it."""
        self._forget_answers(ino)
        if ino and self.lookups.count(ino) == 0 and not self._open_count.get(ino):
            self._start_purge(ino)
        elif ino:
            self.orphans.add(ino)

    def _start_purge(self, ino: int) -> None:
        if self.nursery is not None:
            self.nursery.start_soon(self._purge, ino)

    async def _purge(self, ino: int) -> None:
        try:
            await self.client.call("purge_inode", ino=ino)
        except CassfsError as exc:
            log.warning("could not purge unlinked inode %d: %s", ino, exc)

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)

    # -- metadata -------------------------------------------------------------------------

    @_fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Resolve ``name`` in ``parent_inode``; a negative entry (st_ino 0) when absent."""
        log.debug("lookup %d %r", parent_inode, name)
        self._check_name(name)
        if name == b".":
            inode = await self.client.call("getattr", ino=parent_inode)
        elif name == b"..":
            parent = await self.client.call("getattr", ino=parent_inode)
            inode = await self.client.call("getattr", ino=parent["parent"] or ROOT_INO)
        else:
            try:
                inode = await self.client.call("lookup", parent=parent_inode, name=name)
            except NotFound:
                if self.config.negative_ttl <= 0:
                    raise
                negative = pyfuse3.EntryAttributes()
                negative.st_ino = 0
                negative.entry_timeout = self.config.negative_ttl
                return negative
        return self._remember(inode)

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Attributes of ``inode``, with the size of unflushed writes."""
        log.debug("getattr %d", inode)
        return self._entry(await self.client.call("getattr", ino=inode))

    @_fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        """chmod, chown, truncate and utimens.  EISDIR/EINVAL from the daemon on truncate."""
        log.debug("setattr %d", inode)
        changes: dict[str, Any] = {}
        if fields.update_mode:
            changes["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
        if fields.update_size:
            buffer = self._buffers.get(inode)
            if buffer is not None:
                async with buffer.lock:
                    await buffer.truncate(attr.st_size)
            else:
                changes["size"] = attr.st_size
        self._forget_answers(inode)
        if changes or not fields.update_size:
            result = await self.client.call("setattr", ino=inode, **changes)
        else:
            result = await self.client.call("getattr", ino=inode)
        return self._entry(result)

    @_fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        """The symlink's target."""
        return await self.client.call("readlink", ino=inode)  # type: ignore[no-any-return]

    @_fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """A large nominal capacity (Cassandra's free space is not known here)."""
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = data.f_bfree = data.f_bavail = 2**48 // 4096
        data.f_files = data.f_ffree = data.f_favail = 2**32
        data.f_namemax = NAME_MAX
        return data

    # -- directories ----------------------------------------------------------------------

    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        """Take a snapshot of the listing; readdir tokens index into it.

        POSIX leaves it unspecified whether entries added or removed after
        opendir(3) show up, so a per-handle snapshot is a valid, stable cursor.
        """
        log.debug("opendir %d", inode)
        fh = next(self._fh)
        self._dirs[fh] = await self.client.call("readdir", ino=inode)
        return fh

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Reply entries from ``start_id`` on; ``next_id`` is the index of the next one."""
        entries = self._dirs.get(fh)
        if entries is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        for index in range(start_id, len(entries)):
            name, inode = entries[index]
            if not pyfuse3.readdir_reply(token, name, self._entry(inode), index + 1):
                return
            self.lookups.add(inode["ino"])

    async def releasedir(self, fh: int) -> None:
        """Drop the listing snapshot."""
        self._dirs.pop(fh, None)

    @_fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Create a directory.  EEXIST, ENAMETOOLONG."""
        self._check_name(name)
        inode = await self.client.call(
            "mkdir",
            parent=parent_inode,
            name=name,
            mode=stat.S_IMODE(mode),
            uid=ctx.uid,
            gid=ctx.gid,
        )
        return self._remember(inode)

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Remove an empty directory.  ENOENT, ENOTDIR, ENOTEMPTY."""
        self._check_name(name)
        self._unlinked(await self.client.call("rmdir", parent=parent_inode, name=name))

    @_fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Create a symlink.  EEXIST, ENAMETOOLONG."""
        self._check_name(name)
        inode = await self.client.call(
            "symlink", parent=parent_inode, name=name, target=target, uid=ctx.uid, gid=ctx.gid
        )
        return self._remember(inode)

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Remove a name; the inode lives on while the kernel still holds it."""
        self._check_name(name)
        self._unlinked(await self.client.call("unlink", parent=parent_inode, name=name))

    @_fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        """Move a name, replacing a target.  EINVAL for RENAME_EXCHANGE or a move below itself."""
        self._check_name(name_old)
        self._check_name(name_new)
        result = await self.client.call(
            "rename",
            old_parent=parent_inode_old,
            old_name=name_old,
            new_parent=parent_inode_new,
            new_name=name_new,
            flags=flags,
        )
        self._unlinked(result["replaced"])

    @_fuse_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Hard links are not supported (EPERM, as on filesystems without them)."""
        raise pyfuse3.FUSEError(errno.EPERM)

    @_fuse_errors
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Drop kernel references; purge unlinked inodes nobody holds any more."""
        for ino, nlookup in inode_list:
            if self.lookups.forget(ino, nlookup):
                self._seen.pop(ino, None)
                self._forget_answers(ino)
                if ino in self.orphans and not self._open_count.get(ino):
                    self.orphans.discard(ino)
                    self._start_purge(ino)

    # -- files ----------------------------------------------------------------------------

    @_fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """Create and open an empty file.  EEXIST, ENAMETOOLONG."""
        self._check_name(name)
        inode = await self.client.call(
            "create",
            parent=parent_inode,
            name=name,
            mode=stat.S_IMODE(mode),
            uid=ctx.uid,
            gid=ctx.gid,
        )
        ino = inode["ino"]
        buffer = self._buffers.setdefault(ino, WriteBuffer(self.spool_dir))
        await buffer.load_bytes(b"")
        fh = self._open_handle(OpenFile(ino, inode["content_id"], 0, data=b""))
        self._seen[ino] = (inode["content_id"], self.epoch)
        return pyfuse3.FileInfo(fh=fh), self._remember(inode)

    def _open_handle(self, handle: OpenFile) -> int:
        fh = next(self._fh)
        self._handles[fh] = handle
        self._open_count[handle.ino] = self._open_count.get(handle.ino, 0) + 1
        return fh

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """Open a file; its content is cached by the daemon unless the open truncates it.

        The kernel keeps its page cache only when the content identity and the
        cache epoch are the ones this mount saw last (``keep_cache``).
        """
        log.debug("open %d flags %#o", inode, flags)
        access = flags & os.O_ACCMODE
        writable = access in (os.O_WRONLY, os.O_RDWR)
        truncating = writable and bool(flags & os.O_TRUNC)
        if not writable and inode not in self._buffers:
            reused = self._reuse(inode)
            if reused is not None:
                return reused
        reply = await self.client.call(
            "open", ino=inode, fetch=not truncating, inline=inode not in self._seen
        )
        info = reply["inode"]
        if stat.S_ISDIR(info["mode"]):
            raise pyfuse3.FUSEError(errno.EISDIR)
        content_id, epoch = info["content_id"], reply["epoch"]
        self.epoch = epoch
        if truncating:
            buffer = self._buffers.setdefault(inode, WriteBuffer(self.spool_dir))
            async with buffer.lock:
                if info["size"] > 0 or buffer.size > 0 or not buffer.loaded:
                    await buffer.truncate(0)
                buffer.dirty = buffer.dirty or info["size"] > 0
        keep_cache = self._seen.get(inode) == (content_id, epoch) and inode not in self._buffers
        self._seen[inode] = (content_id, epoch)
        if reply.get("fresh_for", 0) > 0 and not writable:
            self._reusable[inode] = (trio.current_time() + reply["fresh_for"], info)
            self._reusable.move_to_end(inode)
            if len(self._reusable) > REUSABLE_ENTRIES:
                self._reusable.popitem(last=False)
        fh = self._open_handle(OpenFile(inode, content_id, info["size"], data=reply.get("data")))
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache)

    def _reuse(self, ino: int) -> pyfuse3.FileInfo | None:
        """Open ``ino`` read-only without asking the daemon, if its last answer still holds.

        It holds while the daemon's TTL for the inode runs (the daemon would answer
        from its cache alike) and the kernel may keep the pages it has.
        """
        entry = self._reusable.get(ino)
        if entry is None:
            return None
        deadline, info = entry
        if deadline <= trio.current_time() or self._seen.get(ino) != (
            info["content_id"],
            self.epoch,
        ):
            del self._reusable[ino]
            return None
        fh = self._open_handle(OpenFile(ino, info["content_id"], info["size"]))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    def _forget_answers(self, *inos: int) -> None:
        """Stop reusing open answers for ``inos`` (changed here or by another session)."""
        for ino in inos:
            self._reusable.pop(ino, None)

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        """Bytes from unflushed writes, the inline content, or the daemon's cache."""
        handle = self._handles[fh]
        buffer = self._buffers.get(handle.ino)
        if buffer is not None and buffer.loaded:
            return await buffer.read(off, size)
        if handle.data is not None:
            return handle.data[off : off + size]
        if off >= handle.size:
            return b""
        return await self.client.call(  # type: ignore[no-any-return]
            "read",
            ino=handle.ino,
            content_id=handle.content_id,
            file_size=handle.size,
            offset=off,
            size=size,
        )

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        """Buffer ``buf`` at ``off``; the file reaches Cassandra on flush/fsync."""
        handle = self._handles[fh]
        buffer = self._buffers.setdefault(handle.ino, WriteBuffer(self.spool_dir))
        async with buffer.lock:
            if not buffer.loaded:
                await self._materialize(handle.ino, buffer)
            await buffer.write(off, buf)
        return len(buf)

    async def _materialize(self, ino: int, buffer: WriteBuffer) -> None:
        """Load the current content into ``buffer`` before a partial rewrite."""
        reply = await self.client.call("materialize", ino=ino)
        if "path" in reply:
            await buffer.load_file(Path(reply["path"]))
        else:
            await buffer.load_bytes(reply["data"])

    async def _commit(self, fh: int) -> None:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        buffer = self._buffers.get(handle.ino)
        if buffer is None or not buffer.dirty:
            return
        async with buffer.lock:
            if not buffer.dirty:
                return
            with trio.CancelScope(shield=True):
                inode = await self.client.call("write", ino=handle.ino, **buffer.wire_content())
            buffer.dirty = False
        self._seen[handle.ino] = (inode["content_id"], self.epoch)
        self._forget_answers(handle.ino)
        for other in self._handles.values():
            if other.ino == handle.ino:
                other.content_id, other.size, other.data = inode["content_id"], inode["size"], None

    @_fuse_errors
    async def flush(self, fh: int) -> None:
        """Write the file through to Cassandra if it changed; EIO reaches close(2)."""
        log.debug("flush %d", fh)
        await self._commit(fh)

    @_fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        """Same as flush: the file is in Cassandra when this returns."""
        await self._commit(fh)

    async def release(self, fh: int) -> None:
        """Close a handle; the last one of an inode drops its write buffer."""
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        left = self._open_count.get(handle.ino, 1) - 1
        if left > 0:
            self._open_count[handle.ino] = left
            return
        self._open_count.pop(handle.ino, None)
        buffer = self._buffers.pop(handle.ino, None)
        if buffer is not None:
            if buffer.dirty:
                log.warning("inode %d released with unflushed data; it was not saved", handle.ino)
            await buffer.close()
        if handle.ino in self.orphans and self.lookups.count(handle.ino) == 0:
            self.orphans.discard(handle.ino)
            self._start_purge(handle.ino)

    # -- daemon notifications -------------------------------------------------------------

    def on_notification(self, event: str, params: dict[str, Any]) -> None:
        """React to the daemon.

        ``changed``: another session of this tenant changed these inodes; stop reusing
        answers about them.  ``purged``: the cache was emptied; drop every reused
        answer and the kernel's caches of every inode.
        """
        if event == "changed":
            self._forget_answers(*params.get("inos", ()))
        elif event == "purged":
            self.epoch = params.get("epoch", self.epoch)
            self._seen.clear()
            self._reusable.clear()
            if self.nursery is not None:
                self.nursery.start_soon(self._invalidate_all)

    async def _invalidate_all(self) -> None:
        for ino in self.lookups.known():
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino)
            except OSError:
                pass  # ENOENT: the kernel held nothing for it

    async def destroy(self) -> None:
        """After unmount: purge the inodes still waiting for their last forget."""
        for ino in list(self.orphans):
            await self._purge(ino)
        self.orphans.clear()
        self.lookups.clear()
