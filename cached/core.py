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
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from cached.atimes import AccessTimes
from cached.cache import Freshness, LocalCache
from cached.content import content_id
from cached.errors import (
    CassfsError,
    NotADirectory,
    NotFound,
    StorageError,
)
from cached.feed import Feed
from cached.locks import KeyedLocks
from cached.model import (
    ROOT_INO,
    Dentry,
    Inode,
    needs_atime,
)
from cached.reaper import Reaper
from cached.recovery import Settled, settle_claim
from cached.singleflight import SingleFlight
from cached.stats import Counters
from cached.store import INODES_PER_QUERY, Store, TenantStore
from cached.usage import Usage

log = logging.getLogger(__name__)


Tenant = tuple[int, str]
T = TypeVar("T")

#: Longest wait, seconds, for another session's front to acknowledge a change.
ANNOUNCE_WAIT = 2.0
#: Most inodes and most names in one ``changed`` notification of other hosts' changes.
FORGET_BATCH = 256
#: ``get_inodes`` queries one :meth:`Core.load_inodes` has in flight at most.
INODE_BATCHES = 4


class ContentGone(Exception):
    """A chunk of the content version being fetched is missing: the file was rewritten."""


class NotInBatch(Exception):
    """A batch of :meth:`Core.load_contents` did not bring this content (its inode
    changed, or its row keeps no bytes): whoever joined it fetches the content alone."""


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

    def tell_changed(
        self, inos: list[int], names: Sequence[tuple[int, bytes]] = (), remote: bool = False
    ) -> int:
        """Send the peer a ``changed`` notification for ``inos`` and the ``(parent, name)``
        pairs ``names`` (``remote``: another host's change, from the feed); returns its
        sequence number."""
        self.changes_sent += 1
        params: dict[str, Any] = {"inos": inos, "seq": self.changes_sent}
        if names:
            params["names"] = [[parent, name] for parent, name in names]
        if remote:
            params["remote"] = True
        self.notify("changed", params)
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
        #: Keys (``("i", tenant, ino)``) of inode flights whose query also reads the
        #: bytes the rows keep (:meth:`load_inodes` with ``content``): a lookup joins
        #: those rather than reading the inode again for its bytes.
        self.content_flights: set[Hashable] = set()
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
        #: Read accesses (relatime) recorded here and written behind the reads.
        self.atimes = AccessTimes(counters)
        #: The change feed: this daemon's changes for other hosts, and theirs for it.
        self.feed = Feed(self)

    # -- helpers --------------------------------------------------------------------------

    async def thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.io_limiter)

    async def get_inode(self, s: Session, ino: int, not_before: float = 0.0) -> Inode:
        """The inode through the cache: fresh from it, else (re)validated from Cassandra.

        ``not_before`` (seconds, the cache's clock): a cached inode fetched before it is
        read again, and so is one whose fetch was in flight before it.  A fetch in
        flight since before the last change heard of to the inode (the feed told of
        another host's) is not joined either: it may return the state before it (a
        temp file's empty one, read by a listing's prefetch, answered as the file's
        attributes after its content and rename were told).  Raises ``NotFound``
        (ENOENT) when Cassandra has no such inode.
        """
        state, cached = await self.cache.get_inode(s.tenant, ino, not_before)
        if state is Freshness.FRESH and cached is not None:
            self.counters.add("hits")
            return cached
        self.counters.add("revalidations" if state is Freshness.STALE else "misses")
        # (A cached copy from before such a change is stale already: see LocalCache.)
        joinable_from = max(not_before, self.cache.changed_at(s.tenant, ino))
        try:
            # A fetch in flight that began before joinable_from is not joined.
            return await self.flights.run(
                ("i", s.tenant, ino), self.load_inode, s, ino, not_before=joinable_from
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
        The same read brings a small file's content when its row keeps it (schema 6):
        cached too once its SHA-256 matches, so the open that follows reads nothing.
        """
        started = self.cache.clock()
        inode, data = await s.store.get_inode_content(ino)
        if inode is None:
            await self.cache.drop_inode(s.tenant, ino)
            raise NotFound(f"inode {ino}")
        await self.cache.put_inode(s.tenant, inode, fetched_at=started)
        await self._keep_content(s, inode, data)
        return inode

    async def load_inodes(
        self, s: Session, inos: Sequence[int], content: bool = False
    ) -> dict[int, Inode]:
        """Read the inodes ``inos`` from Cassandra now, many per query, and cache them.

        Returns ``{ino: inode}`` of those read here; an inode with a read already in
        flight is left to it (a :meth:`get_inode` joins that), and one Cassandra does
        not have is dropped from the cache and left out.  With ``content``, the bytes
        the rows keep (small files, schema 6) are read too and cached (see
        :meth:`load_inode`).  Queries of :data:`~cached.store.INODES_PER_QUERY`
        inodes, :data:`INODE_BATCHES` at a time.  Raises ``StorageError`` (EIO) when
        Cassandra fails.
        """

        async def load(keys: list[Hashable]) -> dict[Hashable, Inode]:
            started = self.cache.clock()
            wanted = [key[2] for key in keys]  # type: ignore[index]
            if content:
                self.content_flights.update(keys)
                try:
                    read = await s.store.get_inodes_content(wanted)
                finally:
                    self.content_flights.difference_update(keys)
            else:
                read = {
                    ino: (inode, None) for ino, inode in (await s.store.get_inodes(wanted)).items()
                }
            for ino in wanted:
                if ino not in read:
                    await self.cache.drop_inode(s.tenant, ino)
            for inode, _data in read.values():
                await self.cache.put_inode(s.tenant, inode, fetched_at=started)
            for inode, data in read.values():
                await self._keep_content(s, inode, data)
            return {("i", s.tenant, ino): inode for ino, (inode, _data) in read.items()}

        got = await self._flights_in_batches(
            [("i", s.tenant, ino) for ino in inos],
            load,
            lambda key: NotFound(f"inode {key[2]}"),  # type: ignore[index]
        )
        return {key[2]: inode for key, inode in got.items()}  # type: ignore[index]

    async def _flights_in_batches(
        self,
        keys: Sequence[Hashable],
        load: Callable[[list[Hashable]], Awaitable[Mapping[Hashable, Any]]],
        missing: Callable[[Hashable], Exception],
    ) -> dict[Hashable, Any]:
        """``load`` the ``keys`` as flights (:meth:`SingleFlight.run_many`), queries of
        :data:`~cached.store.INODES_PER_QUERY` keys, :data:`INODE_BATCHES` at a time, in
        the order given; ``{key: result}`` of those loaded here (keys in flight already
        are left to their flights).  Raises the first ``StorageError`` (EIO) itself,
        not in an exception group, once every query ended."""
        found: dict[Hashable, Any] = {}
        failures: list[StorageError] = []
        limiter = trio.CapacityLimiter(INODE_BATCHES)

        async def batch(part: Sequence[Hashable]) -> None:
            try:
                async with limiter:
                    found.update(await self.flights.run_many(part, load, missing=missing))
            except StorageError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for start in range(0, len(keys), INODES_PER_QUERY):
                nursery.start_soon(batch, keys[start : start + INODES_PER_QUERY])
        if failures:
            raise failures[0]
        return found

    async def load_contents(self, s: Session, inodes: Sequence[Inode]) -> None:
        """Fetch the bytes of the small files ``inodes`` (each of at most
        :data:`~cached.content.INLINE_CONTENT_LIMIT` bytes, their contents found missing
        from the cache by the caller), kept in their inode rows (schema 6), many per
        query, in the order given, and cache them.

        Queries of :data:`~cached.store.INODES_PER_QUERY` rows, :data:`INODE_BATCHES`
        at a time; each is a flight of each content it should bring (key ``("c", tenant,
        content_id)``, as :meth:`~cached.versions.Contents.fetch_once`): an open of one
        of these files joins the query that brings its bytes instead of reading them
        again.  A row that does not hold the content asked for (the inode changed, or
        its bytes live in chunks) fails that content's flight with :class:`NotInBatch`.
        The inodes read are cached too.  Contents in flight already are left to their
        flights.  Raises ``StorageError`` (EIO) when Cassandra fails.
        """
        by_key: dict[Hashable, list[int]] = {}
        for inode in inodes:
            by_key.setdefault(("c", s.tenant, inode.content_id), []).append(inode.ino)

        async def load(keys: list[Hashable]) -> dict[Hashable, bytes]:
            started = self.cache.clock()
            asked = set(keys)
            read = await s.store.get_inodes_content([ino for key in keys for ino in by_key[key]])
            brought: dict[Hashable, bytes] = {}
            for inode, data in read.values():
                await self.cache.put_inode(s.tenant, inode, fetched_at=started)
                key = ("c", s.tenant, inode.content_id)
                if key in asked and data is not None and key not in brought:
                    # missing from the cache when asked for, and in flight since
                    if await self._keep_content(s, inode, data, look=False):
                        brought[key] = data
            return brought

        await self._flights_in_batches(
            [key for key in by_key if not self.flights.in_flight(key)],
            load,
            lambda key: NotInBatch(repr(key)),
        )

    async def _keep_content(
        self, s: Session, inode: Inode, data: bytes | None, look: bool = True
    ) -> bool:
        """Cache ``data``, read with ``inode`` from its row, if it is that inode's whole
        content (SHA-256) and not cached yet (``look=False``: known not to be, so the
        cache is not asked, a thread hop saved); whether it is that content."""
        if not data or len(data) != inode.size or content_id(data) != inode.content_id:
            return False
        if not (look and await self.cache.has_content(s.tenant, inode.content_id)) and (
            await self.cache.put_content_behind(s.tenant, inode.content_id, data)
        ):
            self.counters.add("bytes_fetched", len(data))
        return True

    async def directory(self, s: Session, ino: int) -> Inode:
        inode = await self.get_inode(s, ino)
        if not inode.is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")
        return inode

    async def touch_dir(self, s: Session, ino: int, now: int) -> None:
        """Set a directory's mtime/ctime (nanoseconds) after its entries changed."""
        await s.store.touch(ino, now, now)
        await self.dir_touched(s, ino, now)

    async def record_access(self, s: Session, ino: int, atime_ns: int) -> bool:
        """Record a read access to ``ino`` at ``atime_ns`` (nanoseconds) under relatime
        rules (:func:`~cached.model.needs_atime`): in the cached inode at once and in
        Cassandra within a flush (:mod:`cached.atimes`, like ``lazytime``).  True if
        recorded.  ENOENT; StorageError (EIO).
        """
        async with self.inode_locks((s.tenant, ino)):
            inode = await self.get_inode(s, ino)
            if not needs_atime(inode, atime_ns):
                return False
            self.atimes.record(s, ino, atime_ns)
            await self.cache.update_inode(s.tenant, ino, atime_ns=atime_ns)
            return True

    async def dir_touched(self, s: Session, ino: int, now: int) -> None:
        """Record in the cache a directory's mtime/ctime (nanoseconds) written to Cassandra."""
        await self.cache.update_inode(s.tenant, ino, mtime_ns=now, ctime_ns=now)

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

    async def settle_claim(self, s: Session, entry: Dentry) -> Settled:
        """Settle the claim on ``entry`` (a name a cross-directory rename claims) if it may
        be settled now (:func:`cached.recovery.settle_claim`); what was done.  A finished
        rename is made stale in the cache and announced to the tenant's other sessions
        and hosts; a file it took the last name of is queued for deletion (the purge
        delay, :mod:`cached.reaper`), as the rename's own daemon would have had its
        front ask.  ``"waiting"`` on a read-only session (it writes nothing).  Raises
        ``StorageError`` (EIO).
        """
        if s.store.read_only or not entry.pending:
            return "waiting"
        done, intent, replaced = await settle_claim(
            s.store, entry.parent, entry.name, entry.pending
        )
        if replaced is not None and replaced.nlink == 0:
            with trio.CancelScope(shield=True):
                await self.reaper.schedule(s.owner, s.environment, replaced.ino)
        if done == "completed" and intent is not None:
            names = [(intent.old_parent, intent.old_name), (intent.new_parent, intent.new_name)]
            inos = [intent.old_parent, intent.new_parent, intent.ino, intent.replaced]
            await self.cache.expire(s.tenant, [ino for ino in inos if ino], names)
            await self.announce(s, *inos, names=names)
        return done

    async def settle_listed(self, s: Session, entries: list[Dentry]) -> list[Dentry]:
        """``entries`` read from Cassandra, with the claims among them settled where they
        may be (:meth:`settle_claim`): the claimed names of renames found finished are
        left out (they are gone now), as a user must never see one inode under two
        names.  A claim that cannot be settled (Cassandra fails) keeps its entry."""
        kept = []
        for entry in entries:
            if entry.pending:
                try:
                    if await self.settle_claim(s, entry) == "completed":
                        continue
                except CassfsError as exc:
                    log.warning("could not settle the claim on %r: %s", entry.name, exc)
            kept.append(entry)
        return kept

    async def announce(
        self, s: Session, *inos: int, names: Sequence[tuple[int, bytes]] = ()
    ) -> None:
        """A change of ``inos`` (and of the ``(parent, name)`` pairs ``names``) is applied:
        add it to the change feed for other hosts (:mod:`cached.feed`; in the background
        when the daemon runs one, so the reply does not wait for it), tell the tenant's
        other sessions on this daemon, and wait until the fronts that acknowledge (see
        :class:`Session`) acted on it: at most :data:`ANNOUNCE_WAIT` seconds in all.

        Their fronts drop answers they reuse within the TTL (see ``rpc_open``), the
        extended attributes they know to be absent and the kernel's attributes and
        dentries; once this returns, a mount of the same daemon no longer answers from
        them.  A front that does not acknowledge in time is logged and marked lagging
        (not waited for until it acknowledges again).
        """
        changed = [ino for ino in inos if ino]
        if not changed and not names:
            return
        if self.background is not None:
            # Off the reply path: the row follows the change it names either way, and a
            # host that misses it sees the change at its TTL (as for a failed append).
            self.background.start_soon(self._append_shielded, s, changed, list(names))
            await self._tell_sessions(s, changed, names)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.feed.append, s.store, changed, list(names))
            await self._tell_sessions(s, changed, names)

    async def _append_shielded(
        self, s: Session, changed: list[int], names: list[tuple[int, bytes]]
    ) -> None:
        """:meth:`Feed.append`, not cancelled by a shutdown once begun (a query timeout
        bounds it)."""
        with trio.CancelScope(shield=True):
            await self.feed.append(s.store, changed, names)

    async def _tell_sessions(
        self, s: Session, changed: list[int], names: Sequence[tuple[int, bytes]]
    ) -> None:
        told = [
            (other, other.tell_changed(changed, names))
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

    async def forget(
        self, tenant: Tenant, inos: Sequence[int], names: Sequence[tuple[int, bytes]]
    ) -> None:
        """Other hosts changed ``inos`` and the ``(parent, name)`` pairs ``names`` (rows of
        the change feed): make them stale in the cache (read again at their next use,
        still served while Cassandra fails), and tell the tenant's sessions, at
        most :data:`FORGET_BATCH` of each per notification (their fronts drop what they
        reuse and the kernel's caches; not waited for)."""
        log.debug("the feed of %s/%s: inodes %s, names %s changed", *tenant, inos, names)
        await self.cache.expire(tenant, inos, names)
        sessions = [session for session in self.sessions if session.tenant == tenant]
        for start in range(0, max(len(inos), len(names)), FORGET_BATCH):
            part_inos = list(inos[start : start + FORGET_BATCH])
            part_names = names[start : start + FORGET_BATCH]
            for session in sessions:
                session.tell_changed(part_inos, part_names, remote=True)

    async def forget_all(self) -> int:
        """Empty the cache and tell every session to drop the kernel's caches (``cassfs
        cache purge``; a feed that may have missed changes); the entries removed."""
        removed = await self.cache.clear()
        self.epoch = (self.epoch + 1) % 2**31
        for session in list(self.sessions):
            session.notify("purged", {"epoch": self.epoch})
        return removed


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


async def gather(*calls: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Await every ``call()`` concurrently; their results in order.

    The first error cancels the rest and is re-raised alone (see :func:`gather_indexed`).
    """
    results: list[Any] = [None] * len(calls)

    async def run(index: int) -> None:
        results[index] = await calls[index]()

    await gather_indexed(run, len(calls))
    return results


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
