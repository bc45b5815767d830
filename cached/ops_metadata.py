"""RPC methods that read metadata: lookup, getattr, readdir, readlink; and setattr."""

from __future__ import annotations

import contextlib
import logging
import stat
import time
from typing import Any

import trio

from cached.cache import Freshness
from cached.content import INLINE_CONTENT_LIMIT
from cached.core import (
    ContentGone,
    Core,
    Session,
)
from cached.errors import (
    CassfsError,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    StorageError,
)
from cached.model import (
    DIRECTORY,
    REGULAR,
    SYMLINK,
    Dentry,
    Inode,
    check_name,
)
from cached.readahead import DirectoryReadahead
from cached.versions import Contents

log = logging.getLogger(__name__)

#: Directories up to this many entries are listed whole to answer lookups.
LISTING_LIMIT = 4096
#: Directories up to this many entries get their inodes prefetched when listed.
PREFETCH_LIMIT = 512
#: Regular files up to this many bytes get their content fetched as a lookup answers them.
PREFETCH_CONTENT_LIMIT = 128 * 1024
#: Content fetches started by lookups running at most (more are not started).
PREFETCH_CONTENT_TASKS = 8
#: Listings of a listed directory's grandchildren loaded ahead by one ``readdir`` at most
#: (see :meth:`MetadataOps._list_ahead_of`), and at most this many at a time per daemon.
LIST_AHEAD_MAX = 256
LIST_AHEAD_TASKS = 8


class MetadataOps:
    """Metadata operations: the ``rpc_*`` methods of this group."""

    def __init__(self, core: Core, contents: Contents) -> None:
        self.core = core
        self.contents = contents
        #: Content fetches started by lookups and not yet done.
        self._content_prefetches = 0
        #: Per ``(tenant..., parent)`` whose listing was loaded: which of its files'
        #: bytes to fetch ahead of the lookups in it.
        self._readahead = DirectoryReadahead()
        self._list_ahead = trio.CapacityLimiter(LIST_AHEAD_TASKS)

    # -- metadata -------------------------------------------------------------------------

    async def rpc_lookup(self, s: Session, parent: int, name: bytes) -> dict[str, Any]:
        """The inode named ``name`` in ``parent``; ENOENT, ENAMETOOLONG, ENOTDIR.

        A cold lookup reads the parent's whole listing (one partition) when it
        has at most :data:`LISTING_LIMIT` entries; it then answers every lookup in
        that directory, negative ones included, for the TTL; the inodes of its
        subdirectories are prefetched, and its files' inodes and small bytes come as
        the readahead asks for them (:mod:`cached.readahead`: a reader in name order,
        or one that uses much of the directory).  Larger directories are asked name
        by name.
        A small file's content is fetched in the background as it is answered
        (:meth:`_prefetch_content`): an open usually follows.
        """
        check_name(name)
        # The inode answered is never older than the name that led to it (bound_at): one
        # cached earlier may be from its life under another name (a temp file renamed
        # over this one, read while it was still empty).
        listing_state, index = await self.core.cache.get_listing_index(s.tenant, parent)
        if listing_state is not Freshness.FRESH:
            stale_index, index = index, None
            state, cached = await self.core.cache.get_dentry(s.tenant, parent, name)
            if cached is None and stale_index is not None:
                # Known only through an expired listing: what it says serves if
                # Cassandra fails (stale-if-error), a negative answer included.
                state, cached = Freshness.STALE, stale_index.get(name, (0, 0))
            if state is not Freshness.FRESH:
                index = await self._listing_index(s, parent, name)
        if index is not None:
            state, cached = Freshness.FRESH, index.get(name, (0, 0))
            bound_at = self.core.cache.fetched_at(("l", *s.tenant, parent))
        else:
            bound_at = self.core.cache.fetched_at(("d", *s.tenant, parent, name))
        if state is Freshness.FRESH and cached is not None:
            ino = cached[0]
            if ino == 0:
                self.core.counters.add("hits")
                log.debug(
                    "lookup %d %r: absent from the cached %s (fetched at %.3f)",
                    parent,
                    name,
                    "listing" if index is not None else "entry",
                    bound_at,
                )
                raise NotFound(name.decode(errors="replace"))
        else:
            await self.core.directory(s, parent)
            self.core.counters.add("revalidations" if state is Freshness.STALE else "misses")
            bound_at = self.core.cache.clock()
            try:
                entry = await self._get_entry(s, parent, name)
            except StorageError as exc:
                ino, kind = self.core.stale_if_error(cached, exc, f"entry {name!r}")
                entry = Dentry(parent, name, ino, kind) if ino else None
            else:
                await self.core.cache.put_dentry(
                    s.tenant,
                    parent,
                    name,
                    entry.ino if entry else 0,
                    entry.kind if entry else 0,
                    started_at=bound_at,
                )
            if entry is None:
                raise NotFound(name.decode(errors="replace"))
            ino = entry.ino
        kind = cached[1] if state is Freshness.FRESH and cached is not None else 0
        flight = ("i", s.tenant, ino)
        if (
            kind == REGULAR
            and self.core.flights.in_flight(flight)
            and flight not in self.core.content_flights
        ):
            # A prefetch's batch without content: a read of its own brings a small
            # file's bytes with its inode, for the open that usually follows.
            bound_at = max(bound_at, self.core.flights.clock())
        try:
            inode = await self.core.get_inode(s, ino, not_before=bound_at)
        except NotFound:
            # The cached entry names an inode that is gone: the name was rebound (a
            # file replaced by a rename over it) or removed.  Ask Cassandra; the inode
            # it names now may be cached from an earlier life (a temp file, empty).
            bound_at = self.core.cache.clock()
            entry = await self._get_entry(s, parent, name)
            await self.core.dentries_changed(
                s, parent, name, entry.ino if entry else 0, entry.kind if entry else 0
            )
            if entry is None or entry.ino == ino:
                raise
            inode = await self.core.get_inode(s, entry.ino, not_before=bound_at)
        if inode.kind == REGULAR:
            self._prefetch_siblings(s, parent, name, index)
        self._prefetch_content(s, inode)
        return await self._answer(s, inode, looked_up=True)

    async def _get_entry(self, s: Session, parent: int, name: bytes) -> Dentry | None:
        """The entry ``name`` in ``parent`` from Cassandra; a claim on it is settled where
        it may be (None when that finished the rename that claimed it).  EIO."""
        entry = await s.store.get_dentry(parent, name)
        if entry is not None and entry.pending:
            return next(iter(await self.core.settle_listed(s, [entry])), None)
        return entry

    async def _listing_index(
        self, s: Session, parent: int, first: bytes | None = None, lookup: bool = True
    ) -> dict[bytes, tuple[int, int]] | None:
        """A fresh ``{name: (ino, kind)}`` of ``parent``, loading it if the directory is small.

        None for a directory over :data:`LISTING_LIMIT` entries (remembered for the
        TTL) or when Cassandra fails.  ``first``: the name the caller looks up next,
        whose inode the prefetch of a newly loaded listing leaves to the caller.
        ``lookup``: a lookup in ``parent``, or of it (a path being resolved through
        it), asks: the prefetch brings only the subdirectories' inodes, and the
        files' come with their bytes as the readahead asks for them.  Else (a readdir
        counting its subdirectories' subdirectories, as a stat walk does, or loading
        them ahead) every entry's inode, without bytes.
        """
        state, index = await self.core.cache.get_listing_index(s.tenant, parent)
        if state is Freshness.FRESH and index is not None:
            return index
        if self.core.cache.is_large_dir(s.tenant, parent):
            return None
        loaded = await self.core.flights.run(
            ("L", s.tenant, parent), self._load_listing, s, parent, first, lookup
        )
        if loaded is None:
            return None
        started, index = loaded
        if self.core.cache.changed_since(s.tenant, parent, started):
            # a change was heard of while the listing was read: it may lack it (a
            # name another host just made, which a lost create here confirmed)
            return None
        return index

    async def _load_listing(
        self, s: Session, parent: int, first: bytes | None, lookup: bool
    ) -> tuple[float, dict[bytes, tuple[int, int]]] | None:
        """Read and cache ``parent``'s listing: ``(read start, {name: (ino, kind)})``
        (start on the cache's clock), or None when too large or Cassandra failed.
        Its inodes are prefetched (only its subdirectories' when ``lookup``: see
        :meth:`_listing_index`)."""
        self.core.counters.add("misses")
        started = self.core.cache.clock()
        try:
            await self.core.directory(s, parent)
            entries = await s.store.list_dentries(parent, limit=LISTING_LIMIT + 1)
        except StorageError:
            return None
        except NotADirectory:
            raise
        if len(entries) > LISTING_LIMIT:
            self.core.cache.mark_large_dir(s.tenant, parent)
            return None
        entries = await self.core.settle_listed(s, entries)
        items = [(e.name, e.ino, e.kind) for e in entries]
        await self.core.cache.put_listing(s.tenant, parent, items, started)
        if len(items) <= PREFETCH_LIMIT and self.core.background is not None:
            # For a lookup, only the subdirectories' inodes (paths resolve through
            # them); its files' come as the readahead asks for them, with their bytes.
            rest = [
                e.ino for e in entries if e.name != first and (e.kind == DIRECTORY or not lookup)
            ]
            if rest:
                self.core.background.start_soon(self._prefetch_inodes, s, rest)
            self._readahead.listed((*s.tenant, parent), looked_up=lookup)
        return started, {name: (ino, kind) for name, ino, kind in items}

    async def _prefetch_inodes(self, s: Session, inos: list[int]) -> None:
        """Warm the cache with inodes of a directory just listed, many per query
        (:meth:`~cached.core.Core.load_inodes`); errors ignored."""
        with contextlib.suppress(CassfsError):
            await self._load_stale_inodes(s, inos)

    def _prefetch_siblings(
        self,
        s: Session,
        parent: int,
        name: bytes,
        index: dict[bytes, tuple[int, int]] | None,
    ) -> None:
        """As the file ``name`` is looked up in ``parent`` (whose listing is ``index``),
        start fetching the bytes of the small files the readahead asks for
        (:class:`~cached.readahead.DirectoryReadahead`: those named after it, as a
        reader goes through the directory in name order), many per query.  A stat
        walk, which looks nothing up (readdir gives the kernel every entry's
        attributes), never pays for the bytes."""
        background = self.core.background
        if background is None:
            return
        if index is None:
            # Answered without a fresh listing (one loaded across a change is not
            # used): the cached one, even expired, names the files to read ahead.
            background.start_soon(self._prefetch_siblings_from_cache, s, parent, name)
            return
        names = self._readahead.looked_up(
            (*s.tenant, parent),
            name,
            lambda: [child for child, (_ino, kind) in index.items() if kind == REGULAR],
        )
        wanted = [index[child][0] for child in names if child in index]
        if wanted:
            background.start_soon(self._fetch_siblings, s, wanted)

    async def _prefetch_siblings_from_cache(self, s: Session, parent: int, name: bytes) -> None:
        _state, index = await self.core.cache.get_listing_index(s.tenant, parent)
        if index is not None:
            self._prefetch_siblings(s, parent, name, index)

    async def _fetch_siblings(self, s: Session, files: list[int]) -> None:
        """Fetch the bytes of those of the regular files ``files`` (inode numbers) that
        are small and not cached, in order: with their inodes, in one read of each row
        (:meth:`~cached.core.Core.load_inodes`), where the inode is not cached (a
        directory listed for a lookup); else by the inodes cached
        (:meth:`~cached.core.Core.load_contents`)."""
        cache = self.core.cache
        # The listing's prefetch of inodes (started as the directory was stat'ed) may
        # still run: wait for it, as the bytes to fetch are known by the inodes.
        for child in files:
            if self.core.flights.in_flight(("i", s.tenant, child)):
                with contextlib.suppress(CassfsError):
                    await self.core.get_inode(s, child)
        await self._load_stale_inodes(s, files, content=True)
        small: dict[bytes, Inode] = {}
        for child in files:
            _state, inode = await cache.get_inode(s.tenant, child)
            if (
                inode is not None
                and inode.kind == REGULAR
                and 0 < inode.size <= INLINE_CONTENT_LIMIT
                and not self.core.flights.in_flight(("c", s.tenant, inode.content_id))
            ):
                small.setdefault(inode.content_id, inode)
        missing = await cache.missing_contents(s.tenant, list(small))
        wanted = [inode for cid, inode in small.items() if cid in missing]
        if wanted:
            with contextlib.suppress(CassfsError):
                await self.core.load_contents(s, wanted)

    def _prefetch_content(self, s: Session, inode: Inode) -> None:
        """Start fetching a small file's content in the background, as its lookup is
        answered: a lookup by name is mostly followed by an open (a PHP include, a
        script), which then joins that fetch instead of starting its own.

        Only for regular files of at most :data:`PREFETCH_CONTENT_LIMIT` bytes whose
        content is neither cached nor being fetched, at most
        :data:`PREFETCH_CONTENT_TASKS` at a time (others are not queued); errors are
        ignored (the open fetches again and reports them).
        """
        background = self.core.background
        if (
            background is None
            or inode.kind != REGULAR
            or not 0 < inode.size <= PREFETCH_CONTENT_LIMIT
            or self._content_prefetches >= PREFETCH_CONTENT_TASKS
            or self.core.flights.in_flight(("c", s.tenant, inode.content_id))
        ):
            return
        self._content_prefetches += 1
        background.start_soon(self._fetch_content, s, inode)

    async def _fetch_content(self, s: Session, inode: Inode) -> None:
        try:
            if await self.core.cache.has_content(s.tenant, inode.content_id):
                return
            with contextlib.suppress(CassfsError, ContentGone):
                await self.contents.fetch_once(s, inode)
        finally:
            self._content_prefetches -= 1

    async def rpc_getattr(self, s: Session, ino: int) -> dict[str, Any]:
        """The inode ``ino``; ENOENT.

        A directory's nlink is 2 + its subdirectories (see :meth:`_answer`).
        """
        return await self._answer(s, await self.core.get_inode(s, ino))

    async def _answer(self, s: Session, inode: Inode, looked_up: bool = False) -> dict[str, Any]:
        """``inode`` as the front gets it (:meth:`Inode.to_wire`).

        A directory's stored nlink is 1 (0 once removed); the answer follows the
        Unix convention that ``find`` and ``fts`` rely on instead: 2 (its own entry
        and its ``.``) plus one per subdirectory (their ``..``), counted in its
        listing (:meth:`_dir_nlink`; ``looked_up``: the answer is a lookup's).  A
        removed directory answers 0.
        """
        if inode.is_dir and inode.nlink > 0:
            inode = inode.evolve(nlink=await self._dir_nlink(s, inode.ino, looked_up))
        return inode.to_wire()

    async def _dir_nlink(self, s: Session, ino: int, looked_up: bool = False) -> int:
        """2 + the subdirectories of directory ``ino``, or 1 when that is not known.

        Counted in the listing this daemon caches, when fresh: kept up to date by its
        own mkdir, rmdir and rename, so right at once on this host, and other hosts'
        changes show within the TTL.  Otherwise, while the change feed is followed,
        the listing is loaded (:meth:`_listing_index`), shared with the lookups in
        that directory that usually follow a stat of it: the feed drops it within a
        second of another host's change, as any listing.  Without the feed only the
        entries' count is kept (:meth:`_count_subdirectories`), so that a mere stat
        does not have a listing answer lookups, negative ones too, for the TTL.
        A listing read while a change to the directory was heard of is not used (it
        may lack the change): the entries are then counted as without the feed.
        1, which ``find`` and ``fts`` take as "unknown" (btrfs answers 1 for every
        directory), for a directory over :data:`LISTING_LIMIT` entries without a
        fresh whole listing (``readdir`` caches one), and when Cassandra fails with
        no listing cached (an expired one serves, stale-if-error).

        ``looked_up``: a lookup of the directory asks, as a path is resolved through
        it; a listing loaded here brings none of its files' inodes, which come with
        their bytes as they are looked up (:mod:`cached.readahead`).  A readdir's count
        (a stat walk) brings every entry's inode, without bytes.
        """
        cache = self.core.cache
        state, items = await cache.get_listing(s.tenant, ino)
        if state is Freshness.FRESH and items is not None:
            return 2 + _subdirectories(items)
        count = cache.subdirectories(s.tenant, ino)
        if count is None and not cache.is_large_dir(s.tenant, ino):
            if self.core.feed.follows(s.tenant):
                index = await self._listing_index(s, ino, lookup=looked_up)
                if index is not None:
                    return 2 + sum(kind == DIRECTORY for _ino, kind in index.values())
            if not cache.is_large_dir(s.tenant, ino):
                # Without the feed; or with it, a listing read across a change (which
                # may lack it) or a failure (the breaker then fails this one at once).
                with contextlib.suppress(StorageError):
                    count = await self.core.flights.run(
                        ("N", s.tenant, ino), self._count_subdirectories, s, ino
                    )
            if count is None and items is not None and not cache.is_large_dir(s.tenant, ino):
                self.core.counters.add("stale_served")  # Cassandra failed: the expired one
                return 2 + _subdirectories(items)
        return 1 if count is None else 2 + count

    async def _count_subdirectories(self, s: Session, ino: int) -> int | None:
        """Read the entries of directory ``ino`` and count its subdirectories (kept for
        the TTL); None over :data:`LISTING_LIMIT` entries (marked large).  EIO."""
        started = self.core.cache.clock()
        self.core.counters.add("misses")
        entries = await s.store.list_dentries(ino, limit=LISTING_LIMIT + 1)
        if len(entries) > LISTING_LIMIT:
            self.core.cache.mark_large_dir(s.tenant, ino)
            return None
        count = sum(entry.kind == DIRECTORY for entry in entries)
        self.core.cache.put_subdirectories(s.tenant, ino, count, started)
        return count

    async def rpc_readdir(self, s: Session, ino: int) -> list[list[Any]]:
        """Every entry of directory ``ino`` as ``[name, inode]``, ordered by name.

        Entries whose inode has vanished are left out.  ENOTDIR, ENOENT.
        """
        await self.core.directory(s, ino)
        state, items = await self.core.cache.get_listing(s.tenant, ino)
        if state is not Freshness.FRESH or items is None:
            self.core.counters.add("revalidations" if state is Freshness.STALE else "misses")
            started = self.core.cache.clock()
            try:
                entries = await self.core.settle_listed(s, await s.store.list_dentries(ino))
            except StorageError as exc:
                items = self.core.stale_if_error(items, exc, f"listing of {ino}")
            else:
                items = [(e.name, e.ino, e.kind) for e in entries]
                await self.core.cache.put_listing(s.tenant, ino, items, started)
        else:
            self.core.counters.add("hits")
        await self._load_stale_inodes(s, [child for _name, child, _kind in items])
        results: list[list[Any] | None] = [None] * len(items)
        limiter = trio.CapacityLimiter(16)

        async def one(index: int, name: bytes, child: int) -> None:
            async with limiter:
                try:
                    inode = await self.core.get_inode(s, child)
                    results[index] = [name, await self._answer(s, inode)]
                except NotFound:
                    log.debug("dangling entry %r in %d", name, ino)

        async with trio.open_nursery() as nursery:
            for index, (name, child, kind) in enumerate(items):
                if kind == DIRECTORY:  # its nlink may wait for its listing
                    nursery.start_soon(one, index, name, child)
                else:  # loaded just above: a task each would cost more than the answer
                    await one(index, name, child)
        await self._list_ahead_of(s, [child for _name, child, kind in items if kind == DIRECTORY])
        return [r for r in results if r is not None]

    async def _list_ahead_of(self, s: Session, subdirectories: list[int]) -> None:
        """Start loading the listings of the subdirectories of ``subdirectories`` (the
        listed directory's grandchildren), at most :data:`LIST_AHEAD_MAX`, in the
        background.

        A ``readdir`` waits for its subdirectories' listings (their nlink counts their
        own subdirectories); a walk (``find``, ``du``, ``os.walk``) lists each of them
        next and would wait, one directory after another, for the listings of their
        subdirectories in turn.  Loaded ahead, they are cached by then.  Only while the
        feed is followed (listings are cached then); lookups never start this.
        """
        background = self.core.background
        if background is None or not subdirectories or not self.core.feed.follows(s.tenant):
            return
        ahead: list[int] = []
        for child in subdirectories:
            _state, index = await self.core.cache.get_listing_index(s.tenant, child)
            if index is not None:
                ahead += [ino for ino, kind in index.values() if kind == DIRECTORY]
            if len(ahead) >= LIST_AHEAD_MAX:
                break
        for grandchild in ahead[:LIST_AHEAD_MAX]:
            background.start_soon(self._load_ahead, s, grandchild)

    async def _load_ahead(self, s: Session, ino: int) -> None:
        async with self._list_ahead:
            with contextlib.suppress(CassfsError):
                await self._listing_index(s, ino, lookup=False)

    async def _load_stale_inodes(self, s: Session, inos: list[int], content: bool = False) -> None:
        """Read those of ``inos`` not fresh in the cache, many per query (``content``:
        with the bytes of small files); a failure is left to the reads one by one that
        follow (stale-if-error, or EIO)."""
        wanted = []
        for ino in inos:
            state, _ = await self.core.cache.get_inode(s.tenant, ino)
            if state is not Freshness.FRESH:
                wanted.append(ino)
        if wanted:
            with contextlib.suppress(StorageError):
                await self.core.load_inodes(s, wanted, content)

    async def rpc_readlink(self, s: Session, ino: int) -> bytes:
        """The target of symlink ``ino``; EINVAL if it is not a symlink."""
        inode = await self.core.get_inode(s, ino)
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
        async with self.core.inode_locks((s.tenant, ino)):
            inode = await self.core.load_inode(s, ino)
            now = time.time_ns()
            if size is not None:
                if inode.is_dir:
                    raise IsADirectory(f"inode {ino} is a directory")
                if inode.kind != REGULAR or size < 0:
                    raise InvalidArgument(f"cannot truncate inode {ino} to {size}")
                if size != inode.size:
                    inode = await self.contents.truncate(s, inode, size)
            changes: dict[str, int] = {}
            if mode is not None:
                changes["mode"] = stat.S_IFMT(inode.mode) | (mode & 0o7777)
            for column, value in (
                ("uid", uid), ("gid", gid), ("atime_ns", atime_ns), ("mtime_ns", mtime_ns)
            ):  # fmt: skip
                if value is not None:
                    changes[column] = value
            await s.store.set_attrs(ino, changes, now)
            changed = inode.evolve(**changes, ctime_ns=now if changes else inode.ctime_ns)
            if changes:
                await self.core.cache.update_inode(s.tenant, ino, **changes, ctime_ns=now)
            await self.core.announce(s, ino)
            return await self._answer(s, changed)

    async def rpc_touch_atime(self, s: Session, ino: int, atime_ns: int) -> bool:
        """Record a read access at ``atime_ns`` (nanoseconds) under relatime rules.

        The access time is recorded only when it is not after the last change
        (mtime or ctime) or is a day old (:data:`~cached.model.RELATIME_AGE_NS`), as Linux's
        ``relatime`` does, so reads do not each cost a Cassandra write; and then in the
        cached inode at once and in Cassandra within a flush (:mod:`cached.atimes`, like
        ``lazytime``).  Returns True if recorded.  ENOENT; StorageError (EIO).  An
        ``open`` records its own access (its ``atime_ns``) without this call.
        """
        return await self.core.record_access(s, ino, atime_ns)


def _subdirectories(items: list[tuple[bytes, int, int]]) -> int:
    """How many of a listing's ``(name, ino, kind)`` entries are directories."""
    return sum(kind == DIRECTORY for _name, _ino, kind in items)
