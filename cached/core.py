"""State and helpers shared by the daemon's RPC method groups.

:class:`Core` holds the store, the cache, the counters, the sessions and the
locks, and the helpers every group uses: reading an inode through the cache
(TTL, revalidation, stale-if-error), touching a directory, announcing changes
to the tenant's other sessions.  The groups are :mod:`cached.ops_metadata`,
:mod:`cached.ops_namespace` and :mod:`cached.ops_content`, each built from a
``Core`` and the content versions (:mod:`cached.versions`); :mod:`cached.service`
puts them together.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from cached.cache import Freshness, LocalCache
from cached.errors import (
    NotADirectory,
    NotFound,
    StorageError,
)
from cached.locks import KeyedLocks
from cached.model import (
    ROOT_INO,
    Inode,
)
from cached.reaper import Reaper
from cached.singleflight import SingleFlight
from cached.stats import Counters
from cached.store import Store, TenantStore
from cached.usage import Usage

log = logging.getLogger(__name__)


Tenant = tuple[int, str]
T = TypeVar("T")

#: Longest wait, seconds, for another session's front to acknowledge a change.
ANNOUNCE_WAIT = 2.0


class ContentGone(Exception):
    """A chunk of the content version being fetched is missing: the file was rewritten."""


@dataclass(eq=False)
class Session:
    """One connection's tenant, store view and notification callback (hashed by identity)."""

    owner: int
    environment: str
    store: TenantStore
    notify: Callable[[str, dict[str, Any]], None] = field(repr=False)
    #: The peer said at ``hello`` that it acknowledges ``changed`` notifications (``seen``);
    #: changes wait for it (:meth:`Core.announce`) unless it is ``lagging``: it let one
    #: wait run out, and is not waited for again until it acknowledges.
    acknowledges: bool = False
    lagging: bool = field(default=False, repr=False)
    #: The peer said at ``hello`` that its mount is read-only: the server refuses its
    #: changes (EROFS) and ``store`` sends no write (see :mod:`cached.server`).
    read_only: bool = False
    #: Sequence number of the last ``changed`` notification sent to this session's peer,
    #: and of the last one the peer said it acted on (``seen``).
    changes_sent: int = field(default=0, repr=False)
    changes_seen: int = field(default=0, repr=False)
    _seen_moved: trio.Event = field(default_factory=trio.Event, repr=False)

    @property
    def tenant(self) -> Tenant:
        """``(owner, environment)``."""
        return (self.owner, self.environment)

    def tell_changed(self, inos: list[int]) -> int:
        """Send the peer a ``changed`` notification for ``inos``; returns its sequence number."""
        self.changes_sent += 1
        self.notify("changed", {"inos": inos, "seq": self.changes_sent})
        return self.changes_sent

    def saw(self, seq: int) -> None:
        """The peer acted on every ``changed`` notification up to number ``seq``."""
        self.lagging = False
        if seq > self.changes_seen:
            self.changes_seen = seq
            self._seen_moved.set()
            self._seen_moved = trio.Event()

    async def wait_seen(self, seq: int) -> None:
        """Return once the peer acted on notification ``seq`` (callers bound the wait)."""
        while self.changes_seen < seq:
            await self._seen_moved.wait()


def new_inode_number() -> int:
    """A random 63-bit inode number above the root's (collisions: ~n²/2⁶⁴)."""
    while (ino := secrets.randbits(63)) <= ROOT_INO:
        pass
    return ino


class Core:
    """State and helpers shared by the RPC method groups, over one :class:`Store` and
    one :class:`LocalCache`.

    ``spool_dir`` is where the front leaves content too large to send inline
    (bytes over :data:`INLINE_LIMIT`), and where :meth:`rpc_materialize` leaves
    content for the front; paths outside it are refused (EINVAL).  ``reaper``
    queues deletions for the purge delay (none: deletions happen at once).
    """

    def __init__(
        self,
        store: Store,
        cache: LocalCache,
        counters: Counters,
        spool_dir: Path,
        reaper: Reaper | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.counters = counters
        self.spool_dir = spool_dir
        self.epoch = secrets.randbits(31)  # changes at every start and purge
        self.sessions: set[Session] = set()
        self.flights = SingleFlight(cache.clock)
        #: Serialise this daemon's mutations of one inode.
        self.inode_locks = KeyedLocks()

        self.io_limiter = trio.CapacityLimiter(4)
        #: Where work that need not delay a reply runs (old-content deletion); set by
        #: the daemon.  None: such work runs inline.
        self.background: trio.Nursery | None = None
        #: Deletions deferred by the purge delay (replaced versions, unlinked inodes).
        self.reaper = reaper if reaper is not None else Reaper(None, 0.0)
        #: The tenants' usage counters (statfs), counted as inodes and content change.
        self.usage = Usage()

    # -- helpers --------------------------------------------------------------------------

    async def thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.io_limiter)

    async def get_inode(self, s: Session, ino: int, not_before: float = 0.0) -> Inode:
        """The inode through the cache: fresh from it, else (re)validated from Cassandra.

        ``not_before`` (seconds, the cache's clock): a cached inode fetched before it is
        read again, and so is one whose fetch was in flight before it.  Raises
        ``NotFound`` (ENOENT) when Cassandra has no such inode.
        """
        state, cached = await self.cache.get_inode(s.tenant, ino, not_before)
        if state is Freshness.FRESH and cached is not None:
            self.counters.add("hits")
            return cached
        self.counters.add("revalidations" if state is Freshness.STALE else "misses")
        try:
            # A fetch in flight that began before not_before is not joined.
            return await self.flights.run(
                ("i", s.tenant, ino), self.load_inode, s, ino, not_before=not_before
            )
        except StorageError as exc:
            return self.stale_if_error(cached, exc, f"inode {ino}")

    def stale_if_error(self, cached: T | None, exc: StorageError, what: str) -> T:
        """Serve an expired cache entry while Cassandra fails, rather than EIO.

        Caching FUSE users ask for reads that keep working when the backend is down
        (rclone#9343; FuseDAV's "saint mode").  With nothing cached, EIO.
        """
        if cached is None:
            raise exc
        self.counters.add("stale_served")
        log.warning("Cassandra failed (%s): serving the cached %s past its TTL", exc, what)
        return cached

    async def load_inode(self, s: Session, ino: int) -> Inode:
        """The inode read from Cassandra now, and cached; NotFound (ENOENT).

        Cached as fetched when the read began (what it returns is at least that new).
        """
        started = self.cache.clock()
        inode = await s.store.get_inode(ino)
        if inode is None:
            await self.cache.drop_inode(s.tenant, ino)
            raise NotFound(f"inode {ino}")
        await self.cache.put_inode(s.tenant, inode, fetched_at=started)
        return inode

    async def directory(self, s: Session, ino: int) -> Inode:
        inode = await self.get_inode(s, ino)
        if not inode.is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")
        return inode

    async def touch_dir(self, s: Session, ino: int, now: int) -> None:
        """Set a directory's mtime/ctime after its entries changed."""
        await s.store.touch(ino, now, now)
        _, cached = await self.cache.get_inode(s.tenant, ino)
        if cached is not None:
            await self.cache.put_inode(s.tenant, cached.evolve(mtime_ns=now, ctime_ns=now))

    async def dentries_changed(
        self,
        s: Session,
        parent: int,
        name: bytes,
        ino: int,
        kind: int,
        old_kind: int | None = None,
    ) -> None:
        """``name`` in ``parent`` now names ``ino`` of ``kind`` (0: nothing); it named an
        inode of ``old_kind`` before (0: nothing, None: not known).  Updates the cached
        dentry, listing and subdirectory count."""
        await self.cache.put_dentry(s.tenant, parent, name, ino, kind)
        await self.cache.update_listing(s.tenant, parent, name, ino, kind, old_kind)

    async def announce(self, s: Session, *inos: int) -> None:
        """Tell the tenant's other sessions on this daemon that ``inos`` changed, and wait
        until the fronts that acknowledge (see :class:`Session`) acted on it: at most
        :data:`ANNOUNCE_WAIT` seconds in all.

        Their fronts drop answers they reuse within the TTL (see ``rpc_open``) and the
        extended attributes they know to be absent; once this returns, a mount of the
        same daemon no longer answers from them.  A front that does not acknowledge in
        time is logged and marked lagging (not waited for until it acknowledges again).
        """
        changed = [ino for ino in inos if ino]
        if not changed:
            return
        told = [
            (other, other.tell_changed(changed))
            for other in self.sessions
            if other is not s and other.tenant == s.tenant
        ]
        waited = [(other, seq) for other, seq in told if other.acknowledges and not other.lagging]
        if not waited:
            return
        with trio.move_on_after(ANNOUNCE_WAIT):
            for other, seq in waited:
                await other.wait_seen(seq)
            return
        for other, seq in waited:
            if other.changes_seen < seq:
                other.lagging = True
                log.warning(
                    "a mount session of %s/%s did not acknowledge a change within %.0f s; "
                    "not waiting for it until it does",
                    *other.tenant,
                    ANNOUNCE_WAIT,
                )


async def gather_indexed(fn: Callable[[int], Any], count: int) -> None:
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


def read_at(path: Path, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` of the file at ``path`` (blocking)."""
    with open(path, "rb") as reader:
        reader.seek(offset)
        return reader.read(size)


def unlink_quietly(path: Path) -> None:
    """Remove ``path`` if it exists (blocking)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
