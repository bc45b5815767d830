"""The daemon's RPC methods: one ``rpc_<name>`` per filesystem operation.

Each method takes the calling :class:`Session` (its tenant) and keyword
parameters from the request, and returns msgpack-friendly data.  Failures are
raised as :mod:`cached.errors` classes and reach the front as their errno.

Reads go through the cache (:mod:`cached.cache`): metadata within the TTL is
answered locally, past it revalidated against Cassandra; content is keyed by
its SHA-256 and fetched whole, once per concurrent burst (single-flight).

Mutations go to Cassandra first (:mod:`cached.store`) and then update the local
cache, so an acknowledged write is in Cassandra (write-through).  A whole-file
write follows the order *new chunks, then the inode flip, then delete the old
chunks*, so a reader sees the old version or the new one, never a mix.

Invariant between checkpoints: the cache never holds metadata newer than what
was read from or written to Cassandra by this daemon.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from cached import content
from cached.cache import Freshness, LocalCache, sha256_file
from cached.errors import (
    CassfsError,
    Exists,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    StorageError,
)
from cached.locks import KeyedLocks
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
from cached.protocol import INLINE_LIMIT
from cached.singleflight import SingleFlight
from cached.stats import Counters
from cached.store import Store, TenantStore

log = logging.getLogger(__name__)

#: Content up to this size comes back inline with ``open``, saving a ``read`` round trip.
OPEN_INLINE_LIMIT = 128 * 1024
#: Chunk reads or writes in flight for one file.
CHUNK_CONCURRENCY = 4
#: Content up to this size is assembled in memory when fetched; larger goes through a file.
MEMORY_FETCH_LIMIT = 4 * 1024 * 1024
#: Directories up to this many entries are listed whole to answer lookups.
LISTING_LIMIT = 4096
#: Directories up to this many entries get their inodes prefetched when listed.
PREFETCH_LIMIT = 512
#: rename(2) flags (linux/fs.h).
RENAME_NOREPLACE = 1

Tenant = tuple[int, str]
T = TypeVar("T")


class ContentGone(Exception):
    """A chunk of the content version being fetched is missing: the file was rewritten."""


@dataclass(eq=False)
class Session:
    """One connection's tenant, store view and notification callback (hashed by identity)."""

    owner: int
    environment: str
    store: TenantStore
    notify: Callable[[str, dict[str, Any]], None] = field(repr=False)

    @property
    def tenant(self) -> Tenant:
        """``(owner, environment)``."""
        return (self.owner, self.environment)


def new_inode_number() -> int:
    """A random 63-bit inode number above the root's (collisions: ~n²/2⁶⁴)."""
    while (ino := secrets.randbits(63)) <= ROOT_INO:
        pass
    return ino


class Service:
    """The RPC methods over one :class:`Store` and one :class:`LocalCache`.

    ``spool_dir`` is where the front leaves content too large to send inline
    (bytes over :data:`INLINE_LIMIT`), and where :meth:`rpc_materialize` leaves
    content for the front; paths outside it are refused (EINVAL).
    """

    def __init__(
        self, store: Store, cache: LocalCache, counters: Counters, spool_dir: Path
    ) -> None:
        self.store = store
        self.cache = cache
        self.counters = counters
        self.spool_dir = spool_dir
        self.epoch = secrets.randbits(31)  # changes at every start and purge
        self.sessions: set[Session] = set()
        self._flights = SingleFlight()
        #: Serialise this daemon's mutations of one inode.
        self._inode_locks = KeyedLocks()

        self._io_limiter = trio.CapacityLimiter(4)
        #: Where work that need not delay a reply runs (old-content deletion); set by
        #: the daemon.  None: such work runs inline.
        self.background: trio.Nursery | None = None

    # -- helpers --------------------------------------------------------------------------

    async def _thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._io_limiter)

    async def get_inode(self, s: Session, ino: int) -> Inode:
        """The inode through the cache: fresh from it, else (re)validated from Cassandra.

        Raises ``NotFound`` (ENOENT) when Cassandra has no such inode.
        """
        state, cached = await self.cache.get_inode(s.tenant, ino)
        if state is Freshness.FRESH and cached is not None:
            self.counters.add("hits")
            return cached
        self.counters.add("revalidations" if state is Freshness.STALE else "misses")
        try:
            return await self._flights.run(("i", s.tenant, ino), self._load_inode, s, ino)
        except StorageError as exc:
            return self._stale_if_error(cached, exc, f"inode {ino}")

    def _stale_if_error(self, cached: T | None, exc: StorageError, what: str) -> T:
        """Serve an expired cache entry while Cassandra fails, rather than EIO.

        Caching FUSE users ask for reads that keep working when the backend is down
        (rclone#9343; FuseDAV's "saint mode").  With nothing cached, EIO.
        """
        if cached is None:
            raise exc
        self.counters.add("stale_served")
        log.warning("Cassandra failed (%s): serving the cached %s past its TTL", exc, what)
        return cached

    async def _load_inode(self, s: Session, ino: int) -> Inode:
        inode = await s.store.get_inode(ino)
        if inode is None:
            await self.cache.drop_inode(s.tenant, ino)
            raise NotFound(f"inode {ino}")
        await self.cache.put_inode(s.tenant, inode)
        return inode

    async def _authoritative(self, s: Session, ino: int) -> Inode:
        """The inode read from Cassandra now (for mutations); NotFound (ENOENT)."""
        return await self._load_inode(s, ino)

    async def _directory(self, s: Session, ino: int) -> Inode:
        inode = await self.get_inode(s, ino)
        if not inode.is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")
        return inode

    async def _touch_dir(self, s: Session, ino: int, now: int) -> None:
        """Set a directory's mtime/ctime after its entries changed."""
        await s.store.touch(ino, now, now)
        _, cached = await self.cache.get_inode(s.tenant, ino)
        if cached is not None:
            await self.cache.put_inode(s.tenant, cached.evolve(mtime_ns=now, ctime_ns=now))

    async def _dentries_changed(
        self, s: Session, parent: int, name: bytes, ino: int, kind: int
    ) -> None:
        await self.cache.put_dentry(s.tenant, parent, name, ino, kind)
        await self.cache.update_listing(s.tenant, parent, name, ino, kind)

    def _announce(self, s: Session, *inos: int) -> None:
        """Tell the tenant's other sessions on this daemon that ``inos`` changed.

        Their fronts drop answers they reuse within the TTL (see ``rpc_open``).
        """
        changed = [ino for ino in inos if ino]
        for other in self.sessions:
            if other is not s and other.tenant == s.tenant and changed:
                other.notify("changed", {"inos": changed})

    # -- session --------------------------------------------------------------------------

    async def rpc_hello(self, s: Session) -> dict[str, Any]:
        """Start a session: make sure the tenant's root exists; return it and the epoch."""
        root = await s.store.get_inode(ROOT_INO)
        if root is None:
            now = time.time_ns()
            root = Inode(
                ROOT_INO,
                DIRECTORY,
                mode_of_kind(DIRECTORY, 0o755),
                0,
                0,
                0,
                now,
                now,
                now,
                ROOT_INO,
                1,
                b"",
                0,
                b"",
            )
            await s.store.put_inode(root)
            log.info("created the root inode of tenant %s/%s", s.owner, s.environment)
        await self.cache.put_inode(s.tenant, root)
        return {"root": root.to_wire(), "epoch": self.epoch, "pid": os.getpid()}

    async def rpc_ping(self, s: Session) -> str:
        """Liveness check."""
        return "pong"

    # -- metadata -------------------------------------------------------------------------

    async def rpc_lookup(self, s: Session, parent: int, name: bytes) -> dict[str, Any]:
        """The inode named ``name`` in ``parent``; ENOENT, ENAMETOOLONG, ENOTDIR.

        A cold lookup reads the parent's whole listing (one partition) when it
        has at most :data:`LISTING_LIMIT` entries; it then answers every lookup in
        that directory, negative ones included, for the TTL, and the inodes of a
        small directory are prefetched.  Larger directories are asked name by name.
        """
        check_name(name)
        listing_state, index = await self.cache.get_listing_index(s.tenant, parent)
        if listing_state is not Freshness.FRESH:
            index = None
            state, cached = await self.cache.get_dentry(s.tenant, parent, name)
            if state is not Freshness.FRESH:
                index = await self._listing_index(s, parent)
        if index is not None:
            state, cached = Freshness.FRESH, index.get(name, (0, 0))
        if state is Freshness.FRESH and cached is not None:
            ino = cached[0]
            if ino == 0:
                self.counters.add("hits")
                raise NotFound(name.decode(errors="replace"))
        else:
            await self._directory(s, parent)
            self.counters.add("revalidations" if state is Freshness.STALE else "misses")
            try:
                entry = await s.store.get_dentry(parent, name)
            except StorageError as exc:
                ino, kind = self._stale_if_error(cached, exc, f"entry {name!r}")
                entry = Dentry(parent, name, ino, kind) if ino else None
            else:
                await self.cache.put_dentry(
                    s.tenant, parent, name, entry.ino if entry else 0, entry.kind if entry else 0
                )
            if entry is None:
                raise NotFound(name.decode(errors="replace"))
            ino = entry.ino
        return (await self.get_inode(s, ino)).to_wire()

    async def _listing_index(self, s: Session, parent: int) -> dict[bytes, tuple[int, int]] | None:
        """A fresh ``{name: (ino, kind)}`` of ``parent``, loading it if the directory is small.

        None for a directory over :data:`LISTING_LIMIT` entries (remembered for the
        TTL) or when Cassandra fails.
        """
        state, index = await self.cache.get_listing_index(s.tenant, parent)
        if state is Freshness.FRESH and index is not None:
            return index
        if self.cache.is_large_dir(s.tenant, parent):
            return None
        return await self._flights.run(("L", s.tenant, parent), self._load_listing, s, parent)

    async def _load_listing(self, s: Session, parent: int) -> dict[bytes, tuple[int, int]] | None:
        self.counters.add("misses")
        try:
            await self._directory(s, parent)
            entries = await s.store.list_dentries(parent, limit=LISTING_LIMIT + 1)
        except StorageError:
            return None
        except NotADirectory:
            raise
        if len(entries) > LISTING_LIMIT:
            self.cache.mark_large_dir(s.tenant, parent)
            return None
        items = [(e.name, e.ino, e.kind) for e in entries]
        await self.cache.put_listing(s.tenant, parent, items)
        if len(items) <= PREFETCH_LIMIT and self.background is not None:
            self.background.start_soon(self._prefetch_inodes, s, [e.ino for e in entries])
        return {name: (ino, kind) for name, ino, kind in items}

    async def _prefetch_inodes(self, s: Session, inos: list[int]) -> None:
        """Warm the cache with the inodes of a directory just listed (errors ignored)."""
        limiter = trio.CapacityLimiter(8)

        async def one(ino: int) -> None:
            async with limiter:
                state, _ = await self.cache.get_inode(s.tenant, ino)
                if state is not Freshness.FRESH:
                    with contextlib.suppress(CassfsError):
                        await self._flights.run(("i", s.tenant, ino), self._load_inode, s, ino)

        async with trio.open_nursery() as nursery:
            for ino in inos:
                nursery.start_soon(one, ino)

    async def rpc_getattr(self, s: Session, ino: int) -> dict[str, Any]:
        """The inode ``ino``; ENOENT."""
        return (await self.get_inode(s, ino)).to_wire()

    async def rpc_readdir(self, s: Session, ino: int) -> list[list[Any]]:
        """Every entry of directory ``ino`` as ``[name, inode]``, ordered by name.

        Entries whose inode has vanished are left out.  ENOTDIR, ENOENT.
        """
        await self._directory(s, ino)
        state, items = await self.cache.get_listing(s.tenant, ino)
        if state is not Freshness.FRESH or items is None:
            self.counters.add("revalidations" if state is Freshness.STALE else "misses")
            try:
                entries = await s.store.list_dentries(ino)
            except StorageError as exc:
                items = self._stale_if_error(items, exc, f"listing of {ino}")
            else:
                items = [(e.name, e.ino, e.kind) for e in entries]
                await self.cache.put_listing(s.tenant, ino, items)
        else:
            self.counters.add("hits")
        results: list[list[Any] | None] = [None] * len(items)
        limiter = trio.CapacityLimiter(16)

        async def one(index: int, name: bytes, child: int) -> None:
            async with limiter:
                try:
                    results[index] = [name, (await self.get_inode(s, child)).to_wire()]
                except NotFound:
                    log.debug("dangling entry %r in %d", name, ino)

        async with trio.open_nursery() as nursery:
            for index, (name, child, _kind) in enumerate(items):
                nursery.start_soon(one, index, name, child)
        return [r for r in results if r is not None]

    async def rpc_readlink(self, s: Session, ino: int) -> bytes:
        """The target of symlink ``ino``; EINVAL if it is not a symlink."""
        inode = await self.get_inode(s, ino)
        if inode.kind != SYMLINK:
            raise InvalidArgument(f"inode {ino} is not a symlink")
        return inode.target

    async def rpc_setattr(
        self,
        s: Session,
        ino: int,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        size: int | None = None,
    ) -> dict[str, Any]:
        """chmod, chown, utimens and truncate; the new inode.  ENOENT, EISDIR, EINVAL."""
        async with self._inode_locks((s.tenant, ino)):
            inode = await self._authoritative(s, ino)
            now = time.time_ns()
            if size is not None:
                if inode.is_dir:
                    raise IsADirectory(f"inode {ino} is a directory")
                if inode.kind != REGULAR or size < 0:
                    raise InvalidArgument(f"cannot truncate inode {ino} to {size}")
                if size != inode.size:
                    inode = await self._truncate(s, inode, size)
            changed = inode.evolve(
                mode=inode.mode if mode is None else stat.S_IFMT(inode.mode) | (mode & 0o7777),
                uid=inode.uid if uid is None else uid,
                gid=inode.gid if gid is None else gid,
                atime_ns=inode.atime_ns if atime_ns is None else atime_ns,
                mtime_ns=inode.mtime_ns if mtime_ns is None else mtime_ns,
                ctime_ns=now,
            )
            await s.store.set_attrs(changed)
            await self.cache.put_inode(s.tenant, changed)
            self._announce(s, ino)
            return changed.to_wire()

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
                await self._delete_content(s, inode)
            await s.store.delete_inode(ino)
            await self.cache.drop_inode(s.tenant, ino)
            return True

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
                inode = await self._authoritative(s, inode.ino)
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
                    data = await s.store.get_chunk(inode.ino, inode.content_id, index)
                if data is None:
                    raise ContentGone(index)
                parts[index] = data

            await _gather(get, count)
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
                        data = await s.store.get_chunk(inode.ino, inode.content_id, index)
                        if data is None:
                            raise ContentGone(index)
                        await self._thread(os.pwrite, handle.fileno(), data, index * chunk_size)

                await _gather(get_to_file, count)
                await self._thread(handle.close)
                digest, size = await self._thread(sha256_file, path)
                if digest != inode.content_id or size != inode.size:
                    raise ContentGone("content does not match its identity")
                await self.cache.put_content_file(s.tenant, inode.content_id, path)
            finally:
                await self._thread(handle.close)
                await self._thread(_unlink_quietly, path)
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
            new_id, size = await self._identify(data, spool)
            # Reading the inode and uploading the chunks do not depend on each other,
            # so they run together.  Were the inode gone or not a file, the chunks
            # just uploaded belong to nothing and are deleted again.  The inode may
            # come from the cache: the chunks are uploaded whatever it says, so a
            # stale answer (another host rewrote the file meanwhile) can at worst
            # leave that host's version behind unreferenced, never lose this one.
            found: list[Inode] = []

            async def read_inode() -> None:
                found.append(await self.get_inode(s, ino))

            async def upload() -> None:
                await self._put_chunks(s, ino, new_id, size, data, spool)

            steps = (read_inode, upload)
            try:
                await _gather(lambda index: steps[index](), 2)
                inode = found[0]
                if inode.is_dir:
                    raise IsADirectory(f"inode {ino} is a directory")
                if inode.kind != REGULAR:
                    raise InvalidArgument(f"inode {ino} is not a regular file")
            except (NotFound, IsADirectory, InvalidArgument):
                version = Inode(
                    ino, REGULAR, 0, 0, 0, size, 0, 0, 0, 0, 0, new_id, content.CHUNK_SIZE, b""
                )
                with trio.CancelScope(shield=True):
                    await self._delete_content(s, version)
                raise
            updated = await self._write_content(s, inode, data, spool, (new_id, size))
            return updated.to_wire()

    async def _identify(self, data: bytes | None, spool: Path | None) -> tuple[bytes, int]:
        """``(SHA-256, size in bytes)`` of the content given inline or as a spool file."""
        if data is not None:
            return content.content_id(data), len(data)
        assert spool is not None
        return await self._thread(sha256_file, spool)  # type: ignore[no-any-return]

    async def _write_content(
        self,
        s: Session,
        inode: Inode,
        data: bytes | None,
        spool: Path | None,
        uploaded: tuple[bytes, int] | None = None,
    ) -> Inode:
        """Make ``inode`` point at new content: chunks, flip, then old chunks deleted.

        ``uploaded`` is ``(content_id, size)`` when the caller already wrote the chunks.
        Called with the inode lock held.
        """
        new_id, size = uploaded or await self._identify(data, spool)
        now = time.time_ns()
        updated = inode.evolve(
            content_id=new_id, size=size, chunk_size=content.CHUNK_SIZE, mtime_ns=now, ctime_ns=now
        )
        same = new_id == inode.content_id and inode.chunk_size == content.CHUNK_SIZE
        if not same and uploaded is None:
            await self._put_chunks(s, inode.ino, new_id, size, data, spool)

        async def cache_content() -> None:
            if data is not None:
                await self.cache.put_content(s.tenant, new_id, data)
            else:
                assert spool is not None
                await self.cache.put_content_file(s.tenant, new_id, spool)

        async def flip() -> None:
            await s.store.set_content(updated)  # readers now see the new version

        # Caching the content (keyed by its hash) needs no order against the flip.
        steps = (flip, cache_content)
        await _gather(lambda index: steps[index](), 2)
        if not same and inode.content_id and inode.size > 0:
            # The old version is unreachable now; deleting it need not delay the writer.
            if self.background is not None:
                self.background.start_soon(self._delete_old_content, s, inode)
            else:  # we hold the inode lock and the new version is current
                with trio.CancelScope(shield=True):
                    await self._delete_content(s, inode)
        await self.cache.put_inode(s.tenant, updated)
        self.counters.add("flushes")
        self.counters.add("bytes_written", size)
        self._announce(s, inode.ino)
        return updated

    async def _put_chunks(
        self, s: Session, ino: int, new_id: bytes, size: int, data: bytes | None, spool: Path | None
    ) -> None:
        chunk_size = content.CHUNK_SIZE
        count = content.chunk_count(size, chunk_size)
        limiter = trio.CapacityLimiter(CHUNK_CONCURRENCY)

        async def put(index: int) -> None:
            async with limiter:
                if data is not None:
                    part = data[index * chunk_size : (index + 1) * chunk_size]
                else:
                    assert spool is not None
                    part = await self._thread(_read_at, spool, index * chunk_size, chunk_size)
                await s.store.put_chunk(ino, new_id, index, part)

        await _gather(put, count)

    async def _delete_old_content(self, s: Session, old: Inode) -> None:
        """Delete the chunks of version ``(old.ino, old.content_id)`` once it is not current.

        Runs after the writer released the inode lock, so it takes the lock and
        rereads the inode: a later write may have made that same content current
        again (A -> B -> A), and then its chunks must stay.
        """
        with trio.CancelScope(shield=True):
            try:
                async with self._inode_locks((s.tenant, old.ino)):
                    current = await s.store.get_inode(old.ino)
                    if current is not None and current.content_id == old.content_id:
                        return
                    await self._delete_content(s, old)
            except CassfsError as exc:
                log.warning("old content of inode %d left behind: %s", old.ino, exc)

    async def _delete_content(self, s: Session, inode: Inode) -> None:
        count = content.chunk_count(inode.size, inode.chunk_size or content.CHUNK_SIZE)
        limiter = trio.CapacityLimiter(CHUNK_CONCURRENCY)

        async def delete(index: int) -> None:
            async with limiter:
                await s.store.delete_chunk(inode.ino, inode.content_id, index)

        await _gather(delete, count)

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
            await self._thread(_unlink_quietly, path)

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
            await self._thread(_unlink_quietly, path)
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

    # -- cache administration -------------------------------------------------------------

    async def rpc_stats(self, s: Session | None = None) -> dict[str, int]:
        """Every counter and gauge (see :mod:`cached.stats`)."""
        totals = await trio.to_thread.run_sync(self.counters.totals)
        entries, volume = await self.cache.usage()
        return {**totals, "entries": entries, "bytes_cached": volume}

    async def rpc_purge(self, s: Session | None = None) -> int:
        """Empty the cache and tell every session to drop kernel caches; entries removed."""
        removed = await self.cache.clear()
        self.epoch = (self.epoch + 1) % 2**31
        self.counters.add("purges")
        for session in list(self.sessions):
            session.notify("purged", {"epoch": self.epoch})
        return removed


async def _gather(fn: Callable[[int], Any], count: int) -> None:
    """Run ``fn(0) ... fn(count - 1)`` concurrently; the first error cancels the rest.

    An error from one task is re-raised alone (not as an ExceptionGroup).
    """
    if count == 0:
        return
    if count == 1:
        await fn(0)
        return
    try:
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(fn, index)
    except BaseExceptionGroup as group:
        first = _first_leaf(group)
        raise first from group


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as reader:
        reader.seek(offset)
        return reader.read(size)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
