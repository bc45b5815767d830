"""RPC methods of extended attributes: getxattr, listxattr, setxattr, removexattr.

Storage: table ``xattrs``, one partition per inode and one row per attribute, keyed by
its full name (``user.mime_type``).  Only the namespaces ``user.``, ``trusted.`` and
``security.`` are stored (:data:`cached.api.XATTR_NAMESPACES`); the request checks of
:mod:`cached.api` refuse other names (EOPNOTSUPP), names over 255 bytes (ERANGE) and
values over 64 KiB (E2BIG) before these methods run.

Cache: every attribute of an inode in one metadata entry (``("x", owner, env, ino)``
in :mod:`cached.cache`), fresh for the TTL like an inode, reread from Cassandra past it,
and served past it while Cassandra fails (stale-if-error).  An inode without attributes
caches ``{}``, so the kernel's ``security.capability`` probe before each write(2) to a
file (``file_remove_privs``) costs a dictionary lookup in memory, not a query.  Nor is
one needed when the inode is cached fresh with ``xattrs`` False (schema 7: it never had
an attribute; see :class:`~cached.model.Inode`): an overwrite after a purge reads its
inode, and that answers the probe.  Before its first attribute is written, an inode's
``xattrs`` column is set true (:meth:`~cached.store.TenantStore.mark_xattrs`), so a
reader never finds False beside an attribute row.

Writes: every row write is a lightweight transaction, so two hosts racing get one winner:
XATTR_CREATE is ``INSERT ... IF NOT EXISTS`` (EEXIST when not applied), XATTR_REPLACE
``UPDATE ... IF EXISTS`` (ENODATA), removexattr ``DELETE ... IF EXISTS`` (ENODATA), and
a plain set tries whichever of the two fits what the inode holds, then the other.  A
change sets the inode's ctime (as Linux does) and is visible on this host at once; other
hosts see it within their ``--cache-ttl``.  The inode's purge deletes the partition
(:meth:`cached.store.TenantStore.delete_inode`).

Limits per inode (:mod:`cached.api`): names with their NULs at most
:data:`~cached.api.XATTR_LIST_MAX` bytes (what listxattr(2) can return) and names plus
values at most :data:`~cached.api.XATTR_TOTAL_MAX` bytes; ENOSPC past either, as ext4
answers when an inode's attributes fill their block.  Two hosts adding attributes at once
may each pass the check: the limit is kept per daemon, not across hosts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cached.api import (
    XATTR_CREATE,
    XATTR_LIST_MAX,
    XATTR_REPLACE,
    XATTR_TOTAL_MAX,
    Xattr,
    check_xattr_name,
)
from cached.cache import Freshness
from cached.core import Core, Session
from cached.errors import Exists, NoAttribute, NoSpace, NotPermitted, StorageError
from cached.model import DIRECTORY, REGULAR, Inode

log = logging.getLogger(__name__)

#: Tries of a plain set that keeps finding the name created or removed by another host
#: between its two LWTs, before it gives up (EIO).
ATTEMPTS = 8


def _text(name: bytes) -> str:
    return name.decode(errors="replace")


def check_room(current: dict[bytes, bytes], name: bytes, value: bytes) -> None:
    """Raise ``NoSpace`` (ENOSPC) unless ``current`` with ``name`` set to ``value`` stays
    within :data:`~cached.api.XATTR_LIST_MAX` (names and NULs) and
    :data:`~cached.api.XATTR_TOTAL_MAX` (names and values), in bytes."""
    listed = len(name) + 1
    total = len(name) + len(value)
    for other, held in current.items():
        if other != name:
            listed += len(other) + 1
            total += len(other) + len(held)
    if listed > XATTR_LIST_MAX:
        raise NoSpace(f"the names of the inode's extended attributes would take {listed} bytes")
    if total > XATTR_TOTAL_MAX:
        raise NoSpace(f"the inode's extended attributes would take {total} bytes")


def check_kind(inode: Inode, namespace: bytes, name: bytes) -> None:
    """Raise ``NotPermitted`` (EPERM) for a ``user.*`` change on anything but a regular
    file or a directory, as Linux's ``xattr_permission`` does (symlinks, FIFOs, devices,
    sockets)."""
    if namespace == b"user." and inode.kind not in (REGULAR, DIRECTORY):
        raise NotPermitted(f"{_text(name)!r}: user attributes only on files and directories")


class XattrOps:
    """Extended attribute operations: the ``rpc_*`` methods of this group."""

    def __init__(self, core: Core) -> None:
        self.core = core

    # -- reading --------------------------------------------------------------------------

    async def _fetch(self, s: Session, ino: int) -> tuple[float, dict[bytes, bytes]]:
        """``(when the read began, {name: value})`` of ``ino`` from Cassandra (StorageError)."""
        self.core.counters.add("xattr_reads")
        started = self.core.cache.clock()
        return started, await s.store.list_xattrs(ino)

    async def _load(self, s: Session, ino: int) -> dict[bytes, bytes]:
        """The attributes of ``ino`` read from Cassandra now, and cached as of the read."""
        started, xattrs = await self._fetch(s, ino)
        await self.core.cache.put_xattrs(s.tenant, ino, xattrs, fetched_at=started)
        return xattrs

    async def xattrs(self, s: Session, ino: int) -> dict[bytes, bytes]:
        """Every attribute of ``ino`` through the cache (read-only): fresh from it, else read
        once for all concurrent callers; an expired map serves while Cassandra fails.
        StorageError (EIO) when Cassandra fails and nothing is cached."""
        state, cached = await self.core.cache.get_xattrs(s.tenant, ino)
        if state is Freshness.FRESH and cached is not None:
            self.core.counters.add("xattr_hits")
            return cached
        if await self._none_by_inode(s, ino):
            self.core.counters.add("xattr_hits")
            return {}
        try:
            return await self.core.flights.run(("x", s.tenant, ino), self._load, s, ino)
        except StorageError as exc:
            return self.core.stale_if_error(cached, exc, f"extended attributes of {ino}")

    async def _none_by_inode(self, s: Session, ino: int) -> bool:
        """True when ``ino`` is cached fresh and says it never had an attribute (schema
        7); then ``{}`` is cached as of that inode's fetch, so the answer's ``fresh_for``
        is what is left of the inode's TTL."""
        state, inode = await self.core.cache.get_inode(s.tenant, ino)
        if state is not Freshness.FRESH or inode is None or inode.xattrs is not False:
            return False
        fetched_at = self.core.cache.fetched_at(("i", *s.tenant, ino))
        if fetched_at > 0:  # 0: not in memory, so no time to cache it as of
            await self.core.cache.put_xattrs(s.tenant, ino, {}, fetched_at=fetched_at)
        return True

    async def rpc_getxattr(self, s: Session, ino: int, name: bytes) -> dict[str, Any]:
        """Attribute ``name`` of ``ino`` as :class:`~cached.api.Xattr`: its value, None
        when the inode has none of that name (ENODATA for the caller; also for an inode that
        does not exist), and the seconds the front may reuse that answer.  EIO.

        A negative answer is no error, so that the front can keep it: the kernel asks for
        ``security.capability`` before each write(2).
        """
        value = (await self.xattrs(s, ino)).get(name)
        fresh_for = self.core.cache.xattrs_fresh_for(s.tenant, ino)
        return Xattr(value, fresh_for).to_wire()

    async def rpc_listxattr(self, s: Session, ino: int) -> list[bytes]:
        """The names of every attribute of ``ino`` (all namespaces), sorted; EIO.

        The front hides ``trusted.*`` from callers other than root.
        """
        return sorted(await self.xattrs(s, ino))

    # -- writing --------------------------------------------------------------------------

    async def rpc_setxattr(
        self, s: Session, ino: int, name: bytes, value: bytes, flags: int = 0
    ) -> None:
        """Set attribute ``name`` of ``ino`` to ``value`` (an LWT; the inode's ctime is now).

        ``flags``: 0 sets (creates or replaces), :data:`~cached.api.XATTR_CREATE` fails
        with EEXIST when the name exists, :data:`~cached.api.XATTR_REPLACE` with ENODATA
        when it does not (both: whichever applies).  ENOENT (no such inode), EPERM
        (``user.*`` on a symlink or special file), ENOSPC (the inode's limits), EIO.
        """
        namespace = check_xattr_name(name)
        async with self.core.inode_locks((s.tenant, ino)):
            inode = await self.core.load_inode(s, ino)
            check_kind(inode, namespace, name)
            _, current = await self._fetch(s, ino)
            if flags & XATTR_CREATE and flags & XATTR_REPLACE:
                await self._cache_with(s, ino, current)
                raise Exists(_text(name)) if name in current else NoAttribute(_text(name))
            check_room(current, name, value)
            if inode.xattrs is not True:
                # Before the row: a reader must never find False beside an attribute.
                await s.store.mark_xattrs(ino)
                await self.core.cache.update_inode(s.tenant, ino, xattrs=True)
            if flags & XATTR_CREATE:
                held = await s.store.create_xattr(ino, name, value)
                if held is not None:
                    await self._cache_with(s, ino, current, name, held)
                    raise Exists(_text(name))
            elif flags & XATTR_REPLACE:
                if not await s.store.replace_xattr(ino, name, value):
                    await self._cache_with(s, ino, current, name, None)
                    raise NoAttribute(_text(name))
            else:
                await self._upsert(s, ino, name, value, exists=name in current)
            await self._cache_with(s, ino, current, name, value)
            await self._changed(s, inode)

    async def _upsert(self, s: Session, ino: int, name: bytes, value: bytes, exists: bool) -> None:
        """Create or replace ``name``: the LWT that fits ``exists`` first, then the other."""
        for _attempt in range(ATTEMPTS):
            if exists:
                if await s.store.replace_xattr(ino, name, value):
                    return
            elif await s.store.create_xattr(ino, name, value) is None:
                return
            exists = not exists
        raise StorageError(f"{_text(name)!r} kept being created and removed by others")

    async def rpc_removexattr(self, s: Session, ino: int, name: bytes) -> None:
        """Remove attribute ``name`` of ``ino`` (an LWT; the inode's ctime is now).

        ENOENT (no such inode), ENODATA (no such attribute), EPERM (``user.*`` on a
        symlink or special file), EIO.
        """
        namespace = check_xattr_name(name)
        async with self.core.inode_locks((s.tenant, ino)):
            inode = await self.core.load_inode(s, ino)
            check_kind(inode, namespace, name)
            removed = await s.store.remove_xattr(ino, name)
            # Read after the change, so no read begun earlier can replace it in the cache.
            await self._load(s, ino)
            if not removed:
                raise NoAttribute(_text(name))
            await self._changed(s, inode)

    async def _changed(self, s: Session, inode: Inode) -> None:
        """Set ``inode``'s ctime to now (Cassandra and the cache); tell the other sessions."""
        now = time.time_ns()
        await s.store.set_ctime(inode.ino, now)
        await self.core.cache.update_inode(s.tenant, inode.ino, ctime_ns=now)
        await self.core.announce(s, inode.ino)

    async def _cache_with(
        self,
        s: Session,
        ino: int,
        current: dict[bytes, bytes],
        name: bytes | None = None,
        value: bytes | None = None,
    ) -> None:
        """Cache ``current`` with ``name`` set to ``value`` (None: absent), as of now.

        As of now, not of the read: a read begun before this change must not replace it,
        so this host sees its own change at once.
        """
        xattrs = dict(current)
        if name is not None:
            if value is None:
                xattrs.pop(name, None)
            else:
                xattrs[name] = value
        await self.core.cache.put_xattrs(s.tenant, ino, xattrs)
