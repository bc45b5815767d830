"""RPC methods that change names: mkdir, create, symlink, unlink, rmdir, rename, purge_inode."""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from cached import content
from cached.errors import (
    Exists,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
)
from cached.model import (
    DIRECTORY,
    REGULAR,
    ROOT_INO,
    SYMLINK,
    Dentry,
    Inode,
    check_name,
    mode_of_kind,
)
from cached.service_base import (
    ServiceBase,
    Session,
    new_inode_number,
)

log = logging.getLogger(__name__)

#: rename(2) flags (linux/fs.h).
RENAME_NOREPLACE = 1


class NamespaceOps(ServiceBase):
    """Namespace operations: the ``rpc_*`` methods of this group."""

    # -- namespace ------------------------------------------------------------------------

    async def _make(self, s: Session, parent: int, name: bytes, inode: Inode) -> Inode:
        check_name(name)
        await self._directory(s, parent)
        await s.store.put_inode(inode)  # before its name: a name never points at nothing
        holder: list[Dentry | None] = [None]

        async def insert() -> None:
            holder[0] = await s.store.insert_dentry(Dentry(parent, name, inode.ino, inode.kind))

        # The parent's mtime is set alongside the LWT; if the name turns out taken,
        # the parent merely got a newer mtime.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(insert)
            nursery.start_soon(self._touch_dir, s, parent, inode.ctime_ns)
        if holder[0] is not None:
            await s.store.delete_inode(inode.ino)
            await self.cache.put_dentry(s.tenant, parent, name, holder[0].ino, holder[0].kind)
            raise Exists(name.decode(errors="replace"))
        await self.cache.put_inode(s.tenant, inode)
        await self._dentries_changed(s, parent, name, inode.ino, inode.kind)
        self._announce(s, parent)
        return inode

    def _new_inode(
        self, kind: int, mode: int, uid: int, gid: int, parent: int, **extra: Any
    ) -> Inode:
        now = time.time_ns()
        fields: dict[str, Any] = {
            "ino": new_inode_number(),
            "kind": kind,
            "mode": mode_of_kind(kind, mode),
            "uid": uid,
            "gid": gid,
            "size": 0,
            "atime_ns": now,
            "mtime_ns": now,
            "ctime_ns": now,
            "parent": parent,
            "nlink": 1,
            "content_id": b"",
            "chunk_size": 0,
            "target": b"",
        }
        fields.update(extra)
        return Inode(**fields)

    async def rpc_mkdir(
        self, s: Session, parent: int, name: bytes, mode: int, uid: int, gid: int
    ) -> dict[str, Any]:
        """Create directory ``name`` in ``parent``; EEXIST, ENOTDIR, ENAMETOOLONG."""
        inode = self._new_inode(DIRECTORY, mode, uid, gid, parent)
        return (await self._make(s, parent, name, inode)).to_wire()

    async def rpc_create(
        self, s: Session, parent: int, name: bytes, mode: int, uid: int, gid: int
    ) -> dict[str, Any]:
        """Create empty regular file ``name`` in ``parent``; EEXIST, ENOTDIR, ENAMETOOLONG."""
        inode = self._new_inode(
            REGULAR,
            mode,
            uid,
            gid,
            parent,
            content_id=content.EMPTY_ID,
            chunk_size=content.CHUNK_SIZE,
        )
        return (await self._make(s, parent, name, inode)).to_wire()

    async def rpc_symlink(
        self, s: Session, parent: int, name: bytes, target: bytes, uid: int, gid: int
    ) -> dict[str, Any]:
        """Create symlink ``name`` -> ``target``; EEXIST, ENAMETOOLONG, EINVAL (empty target)."""
        if not target or len(target) > 4096:
            raise InvalidArgument("symlink target must be 1 to 4096 bytes")
        inode = self._new_inode(SYMLINK, 0o777, uid, gid, parent, target=target, size=len(target))
        return (await self._make(s, parent, name, inode)).to_wire()

    async def _unlink_entry(self, s: Session, parent: int, name: bytes, want_dir: bool) -> int:
        check_name(name)
        entry = await s.store.get_dentry(parent, name)
        if entry is None:
            await self.cache.put_dentry(s.tenant, parent, name, 0, 0)
            raise NotFound(name.decode(errors="replace"))
        if want_dir and entry.kind != DIRECTORY:
            raise NotADirectory(name.decode(errors="replace"))
        if not want_dir and entry.kind == DIRECTORY:
            raise IsADirectory(name.decode(errors="replace"))
        if want_dir and await s.store.has_dentries(entry.ino):
            raise NotEmpty(name.decode(errors="replace"))
        if not await s.store.delete_dentry(parent, name, entry.ino):
            raise NotFound(f"{name!r} changed while being removed")
        now = time.time_ns()
        await self._dentries_changed(s, parent, name, 0, 0)
        await self._orphan(s, entry.ino, now)
        await self._touch_dir(s, parent, now)
        self._announce(s, parent, entry.ino)
        return entry.ino

    async def _orphan(self, s: Session, ino: int, now: int) -> None:
        """Mark an inode that lost its last name (nlink 0); purged when no longer open."""
        inode = await s.store.get_inode(ino)
        if inode is None:
            return
        inode = inode.evolve(nlink=0, ctime_ns=now)
        await s.store.set_link(inode)
        await self.cache.put_inode(s.tenant, inode)

    async def rpc_unlink(self, s: Session, parent: int, name: bytes) -> int:
        """Remove the non-directory ``name``; its inode number.  ENOENT, EISDIR."""
        return await self._unlink_entry(s, parent, name, want_dir=False)

    async def rpc_rmdir(self, s: Session, parent: int, name: bytes) -> int:
        """Remove the empty directory ``name``; its inode number.  ENOENT, ENOTDIR, ENOTEMPTY."""
        return await self._unlink_entry(s, parent, name, want_dir=True)

    async def rpc_rename(
        self,
        s: Session,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int = 0,
    ) -> dict[str, int]:
        """Move ``old_name`` to ``new_name``, replacing a target of the same kind.

        Returns ``{"ino": moved inode, "replaced": replaced inode or 0}``.
        ENOENT, EEXIST (RENAME_NOREPLACE), EISDIR, ENOTDIR, ENOTEMPTY, EINVAL
        (moving a directory under itself, or unsupported flags such as RENAME_EXCHANGE).

        Not atomic across two directory partitions: the new name is written
        (LWT) before the old one is deleted (LWT), so a concurrent reader may see
        both names for a moment, never neither.
        """
        if flags & ~RENAME_NOREPLACE:
            raise InvalidArgument(f"rename flags {flags:#x} are not supported")
        check_name(old_name)
        check_name(new_name)
        source = await s.store.get_dentry(old_parent, old_name)
        if source is None:
            raise NotFound(old_name.decode(errors="replace"))
        await self._directory(s, new_parent)
        if (old_parent, old_name) == (new_parent, new_name):
            return {"ino": source.ino, "replaced": 0}
        if source.kind == DIRECTORY and old_parent != new_parent:
            await self._check_not_below(s, source.ino, new_parent)
        target = await s.store.get_dentry(new_parent, new_name)
        moved = Dentry(new_parent, new_name, source.ino, source.kind)
        if target is not None:
            if target.ino == source.ino:
                return {"ino": source.ino, "replaced": 0}
            if flags & RENAME_NOREPLACE:
                raise Exists(new_name.decode(errors="replace"))
            if source.kind == DIRECTORY and target.kind != DIRECTORY:
                raise NotADirectory(new_name.decode(errors="replace"))
            if source.kind != DIRECTORY and target.kind == DIRECTORY:
                raise IsADirectory(new_name.decode(errors="replace"))
            if target.kind == DIRECTORY and await s.store.has_dentries(target.ino):
                raise NotEmpty(new_name.decode(errors="replace"))
            if not await s.store.replace_dentry(moved, target.ino):
                raise Exists(f"{new_name!r} changed during rename")
        elif (holder := await s.store.insert_dentry(moved)) is not None:
            raise Exists(f"{new_name!r} was created during rename (inode {holder.ino})")
        if not await s.store.delete_dentry(old_parent, old_name, source.ino):
            log.warning("rename: %r in %d changed before its removal", old_name, old_parent)
        now = time.time_ns()
        await self._dentries_changed(s, old_parent, old_name, 0, 0)
        await self._dentries_changed(s, new_parent, new_name, source.ino, source.kind)
        inode = await s.store.get_inode(source.ino)
        if inode is not None:
            inode = inode.evolve(parent=new_parent if inode.is_dir else inode.parent, ctime_ns=now)
            await s.store.set_link(inode)
            await self.cache.put_inode(s.tenant, inode)
        if target is not None:
            await self._orphan(s, target.ino, now)
        await self._touch_dir(s, old_parent, now)
        if new_parent != old_parent:
            await self._touch_dir(s, new_parent, now)
        self._announce(s, old_parent, new_parent, source.ino, target.ino if target else 0)
        return {"ino": source.ino, "replaced": target.ino if target else 0}

    async def _check_not_below(self, s: Session, moving: int, new_parent: int) -> None:
        """EINVAL if ``new_parent`` is ``moving`` or lies below it."""
        ino, seen = new_parent, 0
        while True:
            if ino == moving:
                raise InvalidArgument("cannot move a directory below itself")
            if ino == ROOT_INO or seen > 4096:
                return
            inode = await s.store.get_inode(ino)
            if inode is None:
                raise NotFound(f"inode {ino} vanished")
            ino, seen = inode.parent, seen + 1

    async def rpc_purge_inode(self, s: Session, ino: int) -> bool:
        """Delete an unlinked inode (nlink 0) and its content; True if it was deleted.

        The front calls this when the kernel has forgotten the inode.
        """
        async with self._inode_locks((s.tenant, ino)):
            inode = await s.store.get_inode(ino)
            if inode is None or inode.nlink != 0:
                return False
            if inode.kind == REGULAR and inode.content_id:
                await self._delete_chunks(s, inode.ino, inode.content_id, inode.size)
            await s.store.delete_inode(ino)
            await self.cache.drop_inode(s.tenant, ino)
            return True
