"""The daemon's local cache: diskcache in the cache dir, metadata with a TTL, content immutable.

Keys (tuples, so one tenant never sees another's entries):

- ``("i", owner, env, ino)``          -> ``(fetched_at, inode map)``     inode metadata
  (in memory ``(fetched_at, Inode)``: a third of a map's size, and nothing to convert at
  each hit; see :func:`_to_disk`)
- ``("d", owner, env, parent, name)`` -> ``(fetched_at, ino, kind)``     dentry; ino 0 = negative
- ``("l", owner, env, parent)``       -> ``(fetched_at, [(name, ino, kind), ...])`` listing
- ``("x", owner, env, ino)``          -> ``(fetched_at, {name: value})`` extended attributes
  (every one of the inode; ``{}`` answers ENODATA for any name)
- ``("c", owner, env, content_id)``   -> content bytes (diskcache keeps large values as files)

Metadata is fresh for ``ttl`` seconds after ``fetched_at`` (wall clock, so it
survives a daemon restart) and is revalidated after that (see :func:`freshness`).
Content is keyed by its SHA-256 and never changes, so it needs no TTL; it leaves
only by LRU eviction once the cache is over ``size_limit`` bytes, or by purge.
Content in use is never evicted: content *pinned* while a request fetches and
reads it (:meth:`LocalCache.pinned`), and content *leased* for
:data:`LEASE_SECONDS` after each read (:meth:`LocalCache.lease`), so that a
file read by range stays between its ranges.  The cache may so go over
``size_limit`` by the content in use (at most what was fetched in the last
:data:`LEASE_SECONDS`), e.g. by a file larger than the whole cache while it is
read; it comes back under the limit at the next write after that.

Every diskcache call blocks (SQLite and file I/O), so each runs in a worker
thread, one at a time (a ``CapacityLimiter`` of 1): under the LRU policy reads
write too, and one writer makes eviction and its count exact for this daemon.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import functools
import hashlib
import io
import logging
import math
import os
import pickle
import pickletools
import shutil
import sqlite3
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import diskcache
import trio

from cached.hot import HOT_BYTES, HotContents
from cached.model import DIRECTORY, Inode
from cached.stats import Counters

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Bytes of metadata mirrored in memory, as :func:`_memo_cost` estimates them; the least
#: recently used entries go first.  A bound in bytes, not entries: a listing holds up to
#: 4,096 names.  About 130,000 inodes and names fit.
MEMO_BYTES = 64 * 1024 * 1024
#: Estimated bytes of a memo entry (key, value and the LRU's own; an inode's is about
#: 450), and of each name of a listing (``"l"``) and of its in-memory index (``"L"``),
#: measured with ``tracemalloc``.
MEMO_ENTRY_BYTES = 512
MEMO_NAME_BYTES = {"l": 160, "L": 96}
#: Queued writes applied per worker-thread call (one SQLite transaction): at about 30
#: microseconds a set, the thread is held about 8 ms, which a cache read may wait.
WRITE_BATCH = 256
#: Seconds the writer lets queued writes gather before applying them (unless a whole
#: :data:`WRITE_BATCH` waits already).  A cold 300-file request queues about 3,700 writes;
#: applied as soon as queued they went in about 480 transactions of 8, each a thread hop
#: and a commit.  Gathered, the daemon's CPU fell by 10 % for that request and by 21 % for a
#: cold read of the whole tree (A/B, README "Benchmark", stop 30).
#: What waits is readable meanwhile (memo, landing), and a crash loses no more than a
#: daemon that had not applied it: a new daemon revalidates the metadata it finds on disk.
WRITE_GATHER = 0.1
#: Seconds content stays leased (kept from eviction) after a read.
LEASE_SECONDS = 10.0
#: Most leases held; the oldest goes first (memory bound).
MAX_LEASES = 4096
#: Most bytes of content held in memory until the writer has put them in diskcache
#: (:meth:`LocalCache.put_content_behind`); past it, content is written before it returns.
LANDING_BYTES = 32 * 1024 * 1024
#: Content entries the in-memory index of what is on disk may name (about 60 bytes
#: each); past that the index is dropped, and asking SQLite answers, until a purge.
CONTENT_INDEX_LIMIT = 65536
#: Rows read per query while looking for an entry that may be evicted.
EVICT_PAGE = 16
#: Directories whose last change :meth:`LocalCache.changed_since` keeps, at least;
#: past that, records older than :data:`ENTRY_CHANGES_KEPT` seconds go.
ENTRY_CHANGES_MAX = 10_000
ENTRY_CHANGES_KEPT = 120.0
#: Encoded diskcache keys remembered (:class:`CacheDisk`): a few hundred bytes each.
KEY_MEMO = 8192
_GONE = object()  # memo tombstone: deleted, the diskcache delete may still be queued
Tenant = tuple[int, str]


@functools.lru_cache(maxsize=KEY_MEMO)
def _pickled_key(key: tuple[Any, ...], protocol: int) -> bytes:
    return pickletools.optimize(pickle.dumps(key, protocol=protocol))


class CacheDisk(diskcache.Disk):
    """diskcache's ``Disk``, with two of its costs per entry taken out; what it stores is
    byte for byte what ``diskcache.Disk`` stores, so cache directories written by either
    read the same through both.

    - Keys: diskcache stores a key that is not bytes, str, int or float as a pickle run
      through ``pickletools.optimize``, at every get and set: about 9 microseconds for this
      cache's tuple keys, several times per file on a cold read.  This one remembers the
      encoding of the last :data:`KEY_MEMO` keys (the same calls, remembered).  Only
      tuples of str, bytes and int (never bool) are remembered: equal tuples of those
      always pickle the same.
    - Values: diskcache writes bytes of ``min_file_size`` (32 KiB) or more to their file
      by iterating over an ``io.BytesIO``, which yields them line by line: one ``write``
      per newline, about 117,000 calls for the 63 such files of a cold 300-file request
      of the WordPress tree.  This one hands them over as a stream read in 4 MiB parts
      (diskcache's own path for ``read=True``), which stores the same file and mode.
    """

    def put(self, key: Any) -> tuple[Any, bool]:
        """``(database key, raw)`` of ``key``, as ``diskcache.Disk.put``."""
        if type(key) is tuple and all(type(part) in (str, bytes, int) for part in key):
            return sqlite3.Binary(_pickled_key(key, self.pickle_protocol)), False
        return super().put(key)  # type: ignore[no-any-return]

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        """``(size, mode, filename, db value)`` of ``value``, as ``diskcache.Disk.store``."""
        if type(value) is bytes and len(value) >= self.min_file_size:
            return super().store(io.BytesIO(value), True, key=key)
        return super().store(value, read, key=key)


#: Bytes of SQLite's own page cache of the cache database (heap memory; diskcache's
#: default, 8,192 pages of 4 KiB).  The pages SQLite maps from the file (diskcache maps
#: at most 64 MiB) are file-backed and not counted here.
SQLITE_CACHE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class MemoryBounds:
    """Bytes each in-memory cache may hold: small contents (:mod:`cached.hot`), the
    metadata memo (:data:`MEMO_BYTES`) and SQLite's page cache."""

    hot: int = HOT_BYTES
    memo: int = MEMO_BYTES
    sqlite: int = SQLITE_CACHE_BYTES

    @classmethod
    def split(cls, total: int) -> MemoryBounds:
        """``total`` bytes divided as the defaults are (32, 64 and 32 MiB of
        :data:`cached.api.MEMORY_CACHE`): a quarter for small contents, half for the memo, a quarter
        for SQLite."""
        quarter = total // 4
        return cls(hot=quarter, memo=total - 2 * quarter, sqlite=quarter)


class Freshness(enum.Enum):
    """What a metadata entry is good for at a given moment."""

    FRESH = "fresh"  # within the TTL: answer from the cache
    STALE = "stale"  # past the TTL: revalidate against Cassandra
    ABSENT = "absent"  # not cached: fetch from Cassandra


def freshness(fetched_at: float | None, now: float, ttl: float) -> Freshness:
    """Classify an entry fetched at ``fetched_at`` (seconds, wall clock) at time ``now``.

    A clock that went backwards makes the entry stale, never fresher.
    """
    if fetched_at is None:
        return Freshness.ABSENT
    age = now - fetched_at
    return Freshness.FRESH if 0 <= age < ttl else Freshness.STALE


def latest_per_key(
    ops: list[tuple[str, tuple[Any, ...], Any]],
) -> list[tuple[str, tuple[Any, ...], Any]]:
    """``ops`` (queued ``(kind, key, value)`` writes, oldest first) without the metadata
    sets and deletes that a later one of the same key replaces: applying what is left,
    in order, leaves diskcache as applying all would.  A directory's listing is set
    again at every entry made in it; a batch writes it once.  Content landings are
    kept (the writer releases each from memory once written)."""
    last = {key: i for i, (kind, key, _value) in enumerate(ops) if kind != "land"}
    return [op for i, op in enumerate(ops) if op[0] == "land" or last[op[1]] == i]


def _memo_cost(key: tuple[Any, ...], value: Any) -> int:
    """The estimated bytes of memo entry ``key`` holding ``value`` (see :data:`MEMO_BYTES`)."""
    per_name = MEMO_NAME_BYTES.get(key[0])
    if per_name is None or value is _GONE:
        return MEMO_ENTRY_BYTES
    return MEMO_ENTRY_BYTES + per_name * len(value[1])


def _to_disk(key: tuple[Any, ...], value: Any) -> Any:
    """A metadata entry as diskcache stores it: an inode as its wire map (the memo holds
    the :class:`Inode` itself); the others as they are."""
    if key[0] == "i":
        fetched_at, inode = value
        return (fetched_at, inode.to_wire())
    return value


def _from_disk(key: tuple[Any, ...], value: Any) -> Any:
    """A metadata entry read from diskcache (None: absent) as the memo holds it."""
    if value is not None and key[0] == "i":
        fetched_at, data = value
        return (fetched_at, Inode.from_wire(data))
    return value


class LocalCache:
    """diskcache under ``directory`` holding at most ``size_limit`` bytes, evicting LRU.

    ``ttl`` is the metadata TTL in seconds; ``counters`` receives hits, misses,
    evictions and bytes.  ``clock`` returns wall-clock seconds (for tests).
    ``memory`` bounds the caches kept in memory (:class:`MemoryBounds`).
    """

    def __init__(
        self,
        directory: Path,
        size_limit: int,
        ttl: float,
        counters: Counters,
        clock: Callable[[], float] = time.time,
        memory: MemoryBounds = MemoryBounds(),
    ) -> None:
        self.directory = directory
        self.size_limit = size_limit
        self.ttl = ttl
        self.counters = counters
        self.clock = clock
        self.opened_at = clock()
        self.tmp_dir = directory / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(
            str(directory / "store"),
            size_limit=size_limit,
            eviction_policy="least-recently-used",
            cull_limit=0,
            disk=CacheDisk,
            sqlite_cache_size=-(memory.sqlite // 1024),  # negative: KiB, whatever the page
        )
        # One thread at a time: with the LRU policy every get() is a write transaction
        # (it updates access_time), and SQLite makes competing threads wait in its busy
        # handler, which sleeps: 8 reader threads spent most of a cold read there.
        self._limiter = trio.CapacityLimiter(1)
        self._memo: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        #: The memo's estimated size (:func:`_memo_cost`) and its bound, bytes.
        self._memo_bytes = 0
        self.memo_bytes = memory.memo
        self._sqlite_bytes = memory.sqlite
        #: True from a :meth:`clear` until the memo first drops an entry: every metadata
        #: entry on disk is then also in the memo, so a key missing there is absent.
        self._memo_whole = False
        self._pending_ops: list[tuple[str, tuple[Any, ...], Any]] = []
        #: Metadata keys with queued writes: ``key -> (writes queued, latest value)``
        #: (``_GONE`` for a delete), until the writer applied them all.  Read before
        #: the disk, which holds an older value until then, even when the memo dropped
        #: the key meanwhile.
        self._unwritten: dict[tuple[Any, ...], tuple[int, Any]] = {}
        self._ops_queued = trio.Event()
        #: ``(tenant..., ino) -> clock`` of the last change heard of to a directory's
        #: entries (made here or told by the feed) or to an inode (told by the feed),
        #: for :meth:`changed_since`.
        self._entries_changed: dict[tuple[Any, ...], float] = {}
        # Content kept from eviction: pins (key -> holders) and leases (key -> until,
        # time.monotonic(), in expiry order).  Changed only on the trio thread; the
        # diskcache thread only looks keys up (_protected), which the GIL keeps atomic.
        self._pins: dict[tuple[Any, ...], int] = {}
        self._leases: OrderedDict[tuple[Any, ...], float] = OrderedDict()
        # Content queued for the writer (key -> bytes), served from here until written.
        self._landing: dict[tuple[Any, ...], bytes] = {}
        self._landing_bytes = 0
        # Small content also kept in memory once written (:mod:`cached.hot`).
        self._hot = HotContents(memory.hot)
        #: ``hash(key)`` of every content entry on disk, while that is known (the store
        #: was empty when opened or since a purge, and no more than
        #: :data:`CONTENT_INDEX_LIMIT` entries were written since); None: unknown.  A
        #: content missing here is not cached, which a cold read learns without a hop
        #: to SQLite (three per file).  Added to after a write and dropped from after a
        #: delete, so a key present on disk is always in it; the diskcache thread
        #: changes it, and a set's single operations are atomic under the GIL.
        self._content_index: set[int] | None = set() if len(self._cache) == 0 else None

    def _freshness(self, fetched_at: float) -> Freshness:
        """:func:`freshness` now; entries fetched before this cache was opened are stale.

        Metadata is written to diskcache behind the reply, so after a crash disk may
        hold an older state than the one acknowledged: a new daemon revalidates every
        metadata entry it finds on disk once.  Content needs no such care (its key is
        its SHA-256).
        """
        if fetched_at < self.opened_at:
            return Freshness.STALE
        return freshness(fetched_at, self.clock(), self.ttl)

    def close(self) -> None:
        """Apply queued writes and close the SQLite connections (blocking; at shutdown)."""
        ops, self._pending_ops = self._pending_ops, []
        self._apply(ops)
        self._cache.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _set_counting(self, key: tuple[Any, ...], value: Any, read: bool = False) -> None:
        """Set ``key`` then evict least-recently-used entries, one at a time, to the limit.

        diskcache's own culling drops ``cull_limit`` entries at once (10 by
        default), which empties a cache of few large files; so it is off
        (``cull_limit=0``) and eviction happens here, never of ``key`` itself.
        """
        self._cache.set(key, value, read=read)
        self._indexed(key)
        self._evict_to_limit(key)

    def _indexed(self, key: tuple[Any, ...]) -> None:
        """Add ``key``, just written, to :attr:`_content_index` if it is content."""
        index = self._content_index
        if index is None or key[0] != "c":
            return
        index.add(hash(key))
        if len(index) > CONTENT_INDEX_LIMIT:
            self._content_index = None

    def _maybe_on_disk(self, key: tuple[Any, ...]) -> bool:
        """False when content ``key`` is surely not on disk (:attr:`_content_index`)."""
        index = self._content_index
        return index is None or hash(key) in index

    def _evict_to_limit(self, keep: tuple[Any, ...]) -> None:
        """Evict least-recently-used entries, never ``keep``, until the cache's volume
        (bytes, SQLite pages plus files) is within the limit or nothing else may go."""
        evicted = 0
        while self._cache.volume() > self.size_limit:
            victim = self._least_recently_used(exclude=keep)
            if victim is None:
                break  # only `keep` is left: it alone is over the limit
            if self._cache.delete(victim):
                evicted += 1
            if self._content_index is not None:
                self._content_index.discard(hash(victim))
        if evicted:
            self.counters.add("evictions", evicted)

    def _least_recently_used(self, exclude: tuple[Any, ...]) -> Any:
        """The least recently used key that is neither ``exclude`` nor pinned or leased."""
        # diskcache 5 keeps entries in table Cache(key, raw, access_time, ...), keys
        # encoded by its Disk; this is the query its "least-recently-used" policy runs.
        offset = 0
        while True:
            rows = self._cache._sql(
                "SELECT key, raw FROM Cache ORDER BY access_time LIMIT ? OFFSET ?",
                (EVICT_PAGE, offset),
            ).fetchall()
            for db_key, raw in rows:
                candidate = self._cache._disk.get(db_key, raw)
                if candidate != exclude and not self._protected(candidate):
                    return candidate
            if len(rows) < EVICT_PAGE:
                return None
            offset += len(rows)

    # -- content in use ---------------------------------------------------------------------

    def _protected(self, key: tuple[Any, ...]) -> bool:
        """True while ``key`` is pinned or leased (called from the diskcache thread)."""
        if key in self._pins:
            return True
        return self._leases.get(key, 0.0) > time.monotonic()

    @contextlib.contextmanager
    def pinned(self, tenant: Tenant, content_id: bytes) -> Iterator[None]:
        """Keep content ``content_id`` from eviction inside the ``with`` block.

        Pin before looking the content up or fetching it, so that what a request
        fetched is still there when it reads it, however many other entries are
        written meanwhile.  Pins nest and may name content not cached (yet).
        In memory only; costs no thread hop.
        """
        key = self._content_key(tenant, content_id)
        self._pins[key] = self._pins.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._pins[key] - 1
            if left:
                self._pins[key] = left
            else:
                del self._pins[key]

    def lease(self, tenant: Tenant, content_id: bytes) -> None:
        """Keep content ``content_id`` from eviction for :data:`LEASE_SECONDS` from now.

        For content read by range (``read`` requests follow an ``open``): a file
        larger than the cache stays while it is read, instead of being fetched again
        for each range.  At most :data:`MAX_LEASES` are held (the oldest dropped
        first).  In memory only; costs no thread hop.
        """
        key = self._content_key(tenant, content_id)
        now = time.monotonic()
        self._leases.pop(key, None)
        self._leases[key] = now + LEASE_SECONDS  # every lease as long: oldest first
        while self._leases:
            oldest, until = next(iter(self._leases.items()))
            if until > now and len(self._leases) <= MAX_LEASES:
                break
            del self._leases[oldest]

    # -- metadata -------------------------------------------------------------------------
    #
    # Metadata is mirrored in an in-memory LRU (MEMO_BYTES) so that a lookup or
    # getattr answered from the cache costs no thread hop, and it is written behind:
    # a change goes to the memo at once and is queued for diskcache, which one
    # writer applies in order (run_writer; flush waits for it).  A deletion leaves
    # a tombstone in the memo so that a queued delete is never read around.  Only
    # this daemon writes this cache dir (flock), so diskcache never holds anything
    # newer than the memo; but the memo may drop a key whose write is still queued,
    # so a key it lacks is looked up among the queued writes (_unwritten) before disk.

    def _memo_put(self, key: tuple[Any, ...], value: Any) -> None:
        """Put ``key`` in the memo as its most recently used entry, then drop the least
        recently used ones (never ``key``) until the memo is within :attr:`memo_bytes`."""
        held = self._memo.get(key)
        if held is not None:
            self._memo_bytes -= _memo_cost(key, held)
        self._memo[key] = value
        self._memo.move_to_end(key)
        self._memo_bytes += _memo_cost(key, value)
        while self._memo_bytes > self.memo_bytes and len(self._memo) > 1:
            dropped, old = self._memo.popitem(last=False)
            self._memo_bytes -= _memo_cost(dropped, old)
            self._memo_whole = False

    def _memo_drop(self, key: tuple[Any, ...]) -> None:
        """Take ``key`` out of the memo (an entry derived in memory, which a change made
        wrong)."""
        held = self._memo.pop(key, None)
        if held is not None:
            self._memo_bytes -= _memo_cost(key, held)

    async def _meta_get(self, key: tuple[Any, ...]) -> Any:
        if key in self._memo:
            self._memo.move_to_end(key)
            value = self._memo[key]
            return None if value is _GONE else value
        queued = self._unwritten.get(key)
        if queued is not None:  # dropped from the memo before the writer got to it
            self._memo_put(key, queued[1])
            return None if queued[1] is _GONE else queued[1]
        if self._memo_whole:
            return None  # cleared since, and all written since is in the memo
        value = _from_disk(key, await self._run(self._cache.get, key))
        if key in self._memo or key in self._unwritten:
            # Set or deleted while the read was in the thread: that is newer than the
            # disk's value, which must not replace it (a lost create's refresh of a
            # name, undone by a lookup's read begun before it, answered ENOENT).
            value = self._memo[key] if key in self._memo else self._unwritten[key][1]
            return None if value is _GONE else value
        # Remember misses too: only this daemon writes here, so a key absent on disk
        # stays absent until this daemon puts it (which replaces the tombstone).
        self._memo_put(key, _GONE if value is None else value)
        return value

    async def _meta_set(self, key: tuple[Any, ...], value: Any) -> None:
        self._memo_put(key, value)
        self._queue_meta(("set", key, value), value)

    async def _meta_delete(self, key: tuple[Any, ...]) -> None:
        self._memo_put(key, _GONE)
        self._queue_meta(("delete", key, None), _GONE)

    def _queue_meta(self, op: tuple[str, tuple[Any, ...], Any], value: Any) -> None:
        key = op[1]
        queued = self._unwritten.get(key)
        self._unwritten[key] = (1 if queued is None else queued[0] + 1, value)
        self._queue(op)

    def _written(self, ops: list[tuple[str, tuple[Any, ...], Any]]) -> None:
        """Count ``ops``, just applied to disk, off :attr:`_unwritten`."""
        for kind, key, _value in ops:
            if kind == "land":
                continue
            queued = self._unwritten.get(key)
            if queued is None:
                continue  # cleared meanwhile
            if queued[0] <= 1:
                del self._unwritten[key]
            else:
                self._unwritten[key] = (queued[0] - 1, queued[1])

    def _queue(self, op: tuple[str, tuple[Any, ...], Any]) -> None:
        self._pending_ops.append(op)
        self._ops_queued.set()

    def _apply(self, ops: list[tuple[str, tuple[Any, ...], Any]]) -> None:
        # One SQLite transaction per batch, not one per entry (commits cost most), and
        # one eviction pass after it (a volume check costs two queries): the batch's
        # entries are its most recently used, so the pass takes them last.
        last_set: tuple[Any, ...] | None = None
        with self._cache.transact(retry=True):
            for kind, key, value in ops:
                if kind in ("set", "land"):
                    self._cache.set(key, _to_disk(key, value) if kind == "set" else value)
                    self._indexed(key)
                    last_set = key
                else:
                    self._cache.delete(key)
            if last_set is not None:
                self._evict_to_limit(last_set)

    async def _apply_pending(self) -> None:
        # In batches, so that reads waiting for the one diskcache thread get a turn.
        while self._pending_ops:
            ops = self._pending_ops[:WRITE_BATCH]
            del self._pending_ops[:WRITE_BATCH]
            await self._run(self._apply, latest_per_key(ops))
            self._written(ops)
            for kind, key, value in ops:
                landed = self._landing.get(key) if kind == "land" else None
                if landed is not None and landed is value:
                    del self._landing[key]
                    self._landing_bytes -= len(landed)
                    self._hot.put(key, landed)

    async def run_writer(self) -> None:
        """Apply queued writes to diskcache, in order, in batches gathered for up to
        :data:`WRITE_GATHER` seconds, until cancelled.

        Only the writer makes a new wake-up event, just before it waits on it, with the
        queue seen empty: an event replaced elsewhere (a :meth:`flush` that emptied the
        queue used to) would leave the writer waiting on one nobody sets, and every
        write queued from then on in memory until the next flush.
        """
        while True:
            if not self._pending_ops:
                self._ops_queued = trio.Event()
                await self._ops_queued.wait()
            if len(self._pending_ops) < WRITE_BATCH:
                await trio.sleep(WRITE_GATHER)
            await self._apply_pending()

    async def flush(self) -> None:
        """Apply every queued metadata write now (at shutdown, before stats)."""
        await self._apply_pending()
        await self._run(lambda: None)  # and wait for a batch the writer holds

    async def get_inode(
        self, tenant: Tenant, ino: int, not_before: float = 0.0
    ) -> tuple[Freshness, Inode | None]:
        """The cached inode and its freshness; ``(ABSENT, None)`` when not cached.

        An entry fetched before ``not_before`` (seconds, this cache's clock) is STALE
        however young: see :meth:`fetched_at`.
        """
        entry = await self._meta_get(("i", *tenant, ino))
        if entry is None:
            return Freshness.ABSENT, None
        fetched_at, data = entry
        state = self._freshness(fetched_at)
        if state is Freshness.FRESH and fetched_at < not_before:
            state = Freshness.STALE
        return state, data

    def fetched_at(self, key: tuple[Any, ...]) -> float:
        """When the metadata entry under ``key`` (``("l", *tenant, parent)``, ``("d", ...)``)
        was fetched, seconds; 0 when it is not in memory.

        A lookup passes the time of the name it answered from as the ``not_before``
        of the inode it returns: an inode cached before that name was read may be
        from the inode's earlier life under another name (a temp file renamed over).
        """
        entry = self._memo.get(key)
        if entry is None or entry is _GONE:
            return 0.0
        return float(entry[0])

    def fresh_for(self, tenant: Tenant, ino: int) -> float:
        """Seconds the cached inode ``ino`` stays within its TTL (0 when not in memory).

        The front may reuse an answer this long: the daemon would not revalidate sooner.
        """
        entry = self._memo.get(("i", *tenant, ino))
        if entry is None or entry is _GONE:
            return 0.0
        age = self.clock() - entry[0]
        return self.ttl - age if 0 <= age < self.ttl else 0.0

    async def put_inode(
        self,
        tenant: Tenant,
        inode: Inode,
        fetched_at: float | None = None,
        changed_after: float | None = None,
    ) -> None:
        """Cache ``inode`` as fetched at ``fetched_at`` (seconds; default now).

        A read that began before the one cached (a slow prefetch finishing after a
        lookup's reload) does not replace it: the cache only moves forward.  A read
        that began before the feed told of a change to the inode (:meth:`expire`)
        is cached stale: it may predate the change, so its next use reads it again.
        ``changed_after`` (for a change made here, cached as of now): when the change's
        query began; if the feed told of another change to the inode since, the
        result is cached stale as well.
        """
        when = self.clock() if fetched_at is None else fetched_at
        if changed_after is not None and self.changed_since(tenant, inode.ino, changed_after):
            when = 0.0
        key = ("i", *tenant, inode.ino)
        held = self._memo.get(key)
        if fetched_at is not None and held is not None and held is not _GONE:
            if held[0] > fetched_at:
                return
        if fetched_at is not None and self.changed_since(tenant, inode.ino, fetched_at):
            # Compared above by when its read began: marked stale first, a reload was
            # refused in favour of an older read still held fresh (a temp file's empty
            # state, prefetched, served after the rename over a name and its rewrite).
            when = 0.0
        await self._meta_set(key, (when, inode))

    async def update_inode(self, tenant: Tenant, ino: int, **changes: Any) -> None:
        """Apply a change this daemon made to ``ino`` (fields of :class:`Inode`, e.g.
        ``mtime_ns``) to its cached copy, if one is cached; it keeps its fetch time.

        A local change says nothing of other hosts' changes: a copy the feed made stale
        (while the change's query ran) stays stale, where caching it as fetched now
        would answer its other fields, perhaps older than another host's write, as
        fresh for the TTL.
        """
        key = ("i", *tenant, ino)
        entry = await self._meta_get(key)
        if entry is not None:
            fetched_at, inode = entry
            await self._meta_set(key, (fetched_at, inode.evolve(**changes)))

    async def drop_inode(self, tenant: Tenant, ino: int) -> None:
        """Forget the cached inode."""
        await self._meta_delete(("i", *tenant, ino))

    async def get_xattrs(
        self, tenant: Tenant, ino: int
    ) -> tuple[Freshness, dict[bytes, bytes] | None]:
        """The cached extended attributes of ``ino`` (``{name: value}``, all of them: a name
        not in a fresh map has no attribute) and their freshness.  Treat the map as
        read-only: it is the memo's own."""
        entry = await self._meta_get(("x", *tenant, ino))
        if entry is None:
            return Freshness.ABSENT, None
        fetched_at, xattrs = entry
        return self._freshness(fetched_at), xattrs

    async def put_xattrs(
        self, tenant: Tenant, ino: int, xattrs: dict[bytes, bytes], fetched_at: float | None = None
    ) -> None:
        """Cache every extended attribute of ``ino`` as fetched at ``fetched_at`` (seconds;
        default now: a change this daemon made).  A read that began before the entry held
        was cached does not replace it, as in :meth:`put_inode`."""
        when = self.clock() if fetched_at is None else fetched_at
        key = ("x", *tenant, ino)
        held = self._memo.get(key)
        if fetched_at is not None and held is not None and held is not _GONE:
            if held[0] > when:
                return
        await self._meta_set(key, (when, xattrs))

    async def drop_xattrs(self, tenant: Tenant, ino: int) -> None:
        """Forget the cached extended attributes of ``ino``."""
        await self._meta_delete(("x", *tenant, ino))

    def xattrs_fresh_for(self, tenant: Tenant, ino: int) -> float:
        """Seconds the cached extended attributes of ``ino`` stay fresh (0 when not in memory
        or not fresh): the front may reuse an answer about them this long."""
        entry = self._memo.get(("x", *tenant, ino))
        if entry is None or entry is _GONE or self._freshness(entry[0]) is not Freshness.FRESH:
            return 0.0
        return max(0.0, self.ttl - (self.clock() - entry[0]))

    async def get_dentry(
        self, tenant: Tenant, parent: int, name: bytes
    ) -> tuple[Freshness, tuple[int, int] | None]:
        """The cached ``(ino, kind)`` of ``name`` in ``parent`` (ino 0: known absent)."""
        entry = await self._meta_get(("d", *tenant, parent, name))
        if entry is None:
            return Freshness.ABSENT, None
        fetched_at, ino, kind = entry
        return self._freshness(fetched_at), (ino, kind)

    async def put_dentry(
        self,
        tenant: Tenant,
        parent: int,
        name: bytes,
        ino: int,
        kind: int,
        started_at: float | None = None,
    ) -> None:
        """Cache that ``name`` in ``parent`` is ``ino`` (0 for a negative entry).

        ``started_at`` (this cache's clock): when the read that found it began.  When a
        change to ``parent``'s entries was heard of since (:meth:`changed_since`), the
        entry is cached stale: it may be the name's state before that change (another
        host's rename over it, told by the feed while the read ran), and fresh it would
        answer lookups for the TTL.
        """
        when = self.clock()
        if started_at is not None and self.changed_since(tenant, parent, started_at):
            when = 0.0
        await self._meta_set(("d", *tenant, parent, name), (when, ino, kind))

    async def drop_listing(self, tenant: Tenant, parent: int) -> None:
        """Forget the cached listing of ``parent`` and what was counted of it (its
        subdirectories, whether it is too large to list)."""
        self._forget_counts(tenant, parent)
        self._entries_changed_now(tenant, parent)
        await self._meta_delete(("l", *tenant, parent))

    def _forget_counts(self, tenant: Tenant, parent: int) -> None:
        """Forget what is derived in memory from ``parent``'s entries: the listing's index,
        the subdirectory count, the large-directory mark."""
        for kind in ("L", "N", "B"):
            self._memo_drop((kind, *tenant, parent))

    async def expire(
        self,
        tenant: Tenant,
        inos: Iterable[int] = (),
        names: Iterable[tuple[int, bytes]] = (),
    ) -> None:
        """Another host changed ``inos`` (their attributes, extended attributes, and for a
        directory its entries) and the ``(parent, name)`` pairs ``names``: make what is
        cached of them stale, as if fetched before this cache was opened.

        A stale entry is read again at its next use, yet still serves while Cassandra
        fails (stale-if-error), which a dropped one could not.
        """
        keys: list[tuple[Any, ...]] = []
        for ino in inos:
            self._forget_counts(tenant, ino)
            self._entries_changed_now(tenant, ino)
            keys += [("i", *tenant, ino), ("x", *tenant, ino), ("l", *tenant, ino)]
        for parent, name in names:
            self._forget_counts(tenant, parent)
            self._entries_changed_now(tenant, parent)
            keys += [("d", *tenant, parent, name), ("l", *tenant, parent)]
        for key in dict.fromkeys(keys):
            entry = await self._meta_get(key)
            if entry is not None and entry[0] >= self.opened_at:
                await self._meta_set(key, (0.0, *entry[1:]))
        # Again: a lookup may have rebuilt a listing's index from the listing, still
        # fresh then, while a read above was in its thread.
        for ino in inos:
            self._forget_counts(tenant, ino)
        for parent, _name in names:
            self._forget_counts(tenant, parent)

    async def get_listing(
        self, tenant: Tenant, parent: int
    ) -> tuple[Freshness, list[tuple[bytes, int, int]] | None]:
        """The cached listing of directory ``parent``: ``[(name, ino, kind), ...]``."""
        entry = await self._meta_get(("l", *tenant, parent))
        if entry is None:
            return Freshness.ABSENT, None
        fetched_at, items = entry
        return self._freshness(fetched_at), items

    async def put_listing(
        self,
        tenant: Tenant,
        parent: int,
        items: list[tuple[bytes, int, int]],
        started_at: float | None = None,
    ) -> bool:
        """Cache the listing of ``parent`` (sorted by name) as fetched now; True if cached.

        ``started_at`` (this cache's clock) is when the read that gave ``items`` began:
        when a change to ``parent``'s entries was heard of since (made here, or told
        by the feed while the read was in flight), ``items`` may miss it, and are not
        cached (they would answer lookups, negative ones too, for the TTL).
        """
        if started_at is not None and self.changed_since(tenant, parent, started_at):
            return False
        self._memo_drop(("L", *tenant, parent))
        await self._meta_set(("l", *tenant, parent), (self.clock(), items))
        return True

    def changed_since(self, tenant: Tenant, ino: int, since: float) -> bool:
        """True when a change to ``ino`` was heard of at or after ``since`` (seconds,
        this cache's clock): to its entries for a directory (made here, or told by the
        feed), or to the inode itself (told by the feed, :meth:`expire`)."""
        return self.changed_at(tenant, ino) >= since

    def changed_at(self, tenant: Tenant, ino: int) -> float:
        """When the last change to ``ino`` was heard of (see :meth:`changed_since`),
        seconds on this cache's clock; -inf when none was (recently)."""
        return self._entries_changed.get((*tenant, ino), -math.inf)

    def _entries_changed_now(self, tenant: Tenant, parent: int) -> None:
        """Record that ``parent``'s entries changed now (for :meth:`changed_since`).

        Only changes of the last :data:`ENTRY_CHANGES_KEPT` seconds matter (a listing
        read lasts far less), so older records go once there are many.
        """
        now = self.clock()
        changed = self._entries_changed
        changed[(*tenant, parent)] = now
        if len(changed) > ENTRY_CHANGES_MAX:
            for key in [k for k, at in changed.items() if at < now - ENTRY_CHANGES_KEPT]:
                del changed[key]

    async def get_listing_index(
        self, tenant: Tenant, parent: int
    ) -> tuple[Freshness, dict[bytes, tuple[int, int]] | None]:
        """The cached listing of ``parent`` as ``{name: (ino, kind)}``, for lookups.

        Kept in memory beside the listing; a complete listing answers negative
        lookups too.
        """
        key = ("L", *tenant, parent)
        entry = self._memo.get(key)
        if entry is None:
            state, items = await self.get_listing(tenant, parent)
            if items is None:
                return state, None
            fetched_at = self._memo[("l", *tenant, parent)][0]
            entry = (fetched_at, {name: (ino, kind) for name, ino, kind in items})
            self._memo_put(key, entry)
        fetched_at, index = entry
        return self._freshness(fetched_at), index

    def is_large_dir(self, tenant: Tenant, parent: int) -> bool:
        """True if ``parent`` was found too large to list whole, within the TTL."""
        marked = self._memo.get(("B", *tenant, parent))
        return marked is not None and self._freshness(marked) is Freshness.FRESH

    def mark_large_dir(self, tenant: Tenant, parent: int) -> None:
        """Remember (in memory, for the TTL) that ``parent`` is too large to list whole."""
        self._memo_put(("B", *tenant, parent), self.clock())

    def subdirectories(self, tenant: Tenant, parent: int) -> int | None:
        """How many subdirectories ``parent`` has, as counted (:meth:`put_subdirectories`)
        within the TTL and kept up to date by this daemon's changes; None: not known."""
        entry = self._memo.get(("N", *tenant, parent))
        if entry is None or entry[1] is None or self._freshness(entry[0]) is not Freshness.FRESH:
            return None
        return int(entry[1])

    def put_subdirectories(
        self, tenant: Tenant, parent: int, count: int, fetched_at: float
    ) -> None:
        """Remember (in memory, for the TTL from ``fetched_at``, seconds) that ``parent``
        has ``count`` subdirectories, for a directory's nlink without caching its listing
        (which would answer lookups).  Ignored when this daemon changed the entries of
        ``parent`` after ``fetched_at`` (:meth:`update_listing`) or heard of a change
        to them since (:meth:`changed_since`)."""
        key = ("N", *tenant, parent)
        held = self._memo.get(key)
        if (held is not None and held[2] > fetched_at) or self.changed_since(
            tenant, parent, fetched_at
        ):
            return
        self._memo_put(key, (fetched_at, count, fetched_at))

    def _recount(self, tenant: Tenant, parent: int, delta: int | None) -> None:
        """A local change moved ``parent``'s subdirectory count by ``delta`` (None:
        unknown, so the count is forgotten); counts read before now are refused."""
        key = ("N", *tenant, parent)
        now = self.clock()
        held = self._memo.get(key)
        if delta is None or held is None or held[1] is None:
            self._memo_put(key, (now, None, now))
        else:
            self._memo_put(key, (held[0], held[1] + delta, now))

    async def update_listing(
        self,
        tenant: Tenant,
        parent: int,
        name: bytes,
        ino: int,
        kind: int,
        old_kind: int | None = None,
    ) -> None:
        """Apply a local change to a cached listing: ``name`` now names ``ino`` of ``kind``
        (ino 0: gone); ``old_kind`` is the kind it named before (0: nothing; None: not
        known to the caller).

        The listing keeps its fetch time: a local change says nothing of other hosts'.
        A subdirectory count of ``parent`` (:meth:`subdirectories`) follows the change
        when the old kind is known (from the caller or the cached listing), else it is
        forgotten.
        """
        self._entries_changed_now(tenant, parent)
        entry = await self._meta_get(("l", *tenant, parent))
        if entry is not None:
            old_kind = next((item[2] for item in entry[1] if item[0] == name), 0)
        delta = None
        if old_kind is not None:
            delta = int(bool(ino) and kind == DIRECTORY) - int(old_kind == DIRECTORY)
        self._recount(tenant, parent, delta)
        if entry is None:
            return
        fetched_at, items = entry
        updated = [item for item in items if item[0] != name]
        if ino:
            bisect.insort(updated, (name, ino, kind))
        self._memo_drop(("L", *tenant, parent))
        await self._meta_set(("l", *tenant, parent), (fetched_at, updated))

    # -- content --------------------------------------------------------------------------

    def _content_key(self, tenant: Tenant, content_id: bytes) -> tuple[Any, ...]:
        return ("c", *tenant, content_id)

    async def has_content(self, tenant: Tenant, content_id: bytes) -> bool:
        """True if the content is cached (no LRU touch)."""
        key = self._content_key(tenant, content_id)
        if key in self._landing or key in self._hot:
            return True
        if not self._maybe_on_disk(key):
            return False
        return await self._run(self._cache.__contains__, key)

    async def missing_contents(self, tenant: Tenant, content_ids: list[bytes]) -> set[bytes]:
        """Those of ``content_ids`` not cached (no LRU touch), in one thread hop."""
        keys = {self._content_key(tenant, cid): cid for cid in content_ids}
        wanted = [key for key in keys if key not in self._landing and key not in self._hot]
        surely = {keys[key] for key in wanted if not self._maybe_on_disk(key)}
        wanted = [key for key in wanted if keys[key] not in surely]

        def absent() -> set[bytes]:
            return {keys[key] for key in wanted if key not in self._cache}

        return surely | await self._run(absent) if wanted else surely

    async def put_content(self, tenant: Tenant, content_id: bytes, data: bytes) -> None:
        """Cache ``data`` (whose SHA-256 is ``content_id``) now."""
        await self._run(self._set_counting, self._content_key(tenant, content_id), data)

    async def put_content_behind(self, tenant: Tenant, content_id: bytes, data: bytes) -> bool:
        """Cache ``data`` (whose SHA-256 is ``content_id``), written behind the caller.

        ``data`` is held in memory, and read from there, until the writer
        (:meth:`run_writer`, or :meth:`flush`) has put it in diskcache, so a cold open
        or a write replies without waiting for SQLite and the disk (about 1 ms each,
        measured on a cold read of 300 small files).  Past :data:`LANDING_BYTES` held,
        it is written before this returns.  A crash loses only what a later read
        fetches again: content is keyed by its SHA-256 and verified when fetched.
        False when that content was already on its way to disk (nothing done).
        """
        key = self._content_key(tenant, content_id)
        if key in self._landing:
            return False
        if self._landing_bytes + len(data) > LANDING_BYTES:
            await self._run(self._set_counting, key, data)
            return True
        self._landing[key] = data
        self._landing_bytes += len(data)
        self._queue(("land", key, data))
        return True

    async def put_content_file(self, tenant: Tenant, content_id: bytes, path: Path) -> None:
        """Cache the content of the file at ``path`` (streamed, not loaded in memory)."""

        def put() -> None:
            with open(path, "rb") as reader:
                self._set_counting(self._content_key(tenant, content_id), reader, read=True)

        await self._run(put)

    async def read_content(
        self, tenant: Tenant, content_id: bytes, offset: int, size: int
    ) -> bytes | None:
        """``size`` bytes at ``offset`` of cached content, or None when not cached.

        Touches the entry for LRU.  Holds no descriptor after it returns.
        """
        key = self._content_key(tenant, content_id)
        held = self._landing.get(key)
        if held is None:
            held = self._hot.get(key)
        if held is not None:
            return held[offset : offset + size]
        if not self._maybe_on_disk(key):
            return None

        def read() -> tuple[bytes | None, bool]:
            """``(bytes read, whether they are the whole content)``."""
            value = self._cache.get(key, read=True)
            if value is None:
                return None, False
            if isinstance(value, bytes):
                if len(value) <= self._hot.item_limit:
                    return value, True
                return value[offset : offset + size], False
            with value:
                value.seek(offset)
                return value.read(size), False

        data, whole = await self._run(read)
        if data is not None and whole:
            self._hot.put(key, data)
            return data[offset : offset + size]
        return data

    async def copy_content(self, tenant: Tenant, content_id: bytes, dest: BinaryIO) -> bool:
        """Write the whole cached content into ``dest``; False when not cached."""
        key = self._content_key(tenant, content_id)
        held = self._hot.get(key)

        def copy() -> bool:
            value = self._landing.get(key)  # bytes never change: safe from this thread
            if value is None:
                value = held
            if value is None:
                value = self._cache.get(key, read=True)
            if value is None:
                return False
            if isinstance(value, bytes):
                dest.write(value)
            else:
                with value:
                    shutil.copyfileobj(value, dest, 1024 * 1024)
            return True

        return await self._run(copy)

    def new_tmp_file(self) -> tuple[Path, BinaryIO]:
        """Create a private (0600) file in the cache's tmp dir, opened for read and write.

        Blocking: call from a worker thread.  The caller closes and unlinks it.
        """
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="fetch-")
        return Path(name), os.fdopen(fd, "w+b")

    # -- whole cache ----------------------------------------------------------------------

    async def clear(self) -> int:
        """Remove every entry; returns how many were removed."""
        self._memo.clear()
        self._memo_bytes = 0
        self._pending_ops = []
        self._unwritten.clear()
        self._landing.clear()
        self._landing_bytes = 0
        self._hot.clear()
        # Known empty from here: what is written after the clear is added, and what a
        # write running now adds is only a key that asks SQLite once more.
        self._content_index = set()
        removed = await self._run(self._cache.clear)
        self._memo_whole = not self._memo  # nothing was put meanwhile
        return removed

    async def usage(self) -> tuple[int, int]:
        """``(entries, bytes)`` held now (bytes as diskcache counts them)."""
        await self.flush()
        return await self._run(lambda: (len(self._cache), self._cache.volume()))

    @property
    def queued_writes(self) -> int:
        """Writes to diskcache queued behind the replies and not applied yet."""
        return len(self._pending_ops)

    def memory_use(self) -> tuple[int, int]:
        """``(bytes, bound)``: the bytes held by small contents (:mod:`cached.hot`) and by
        the metadata memo as :func:`_memo_cost` estimates them, and the sum of the
        in-memory bounds (``--memory-cache``, SQLite's page cache included, whose use is
        not read here).  Content still landing is bounded apart
        (:data:`LANDING_BYTES`)."""
        return self._hot.bytes + self._memo_bytes, self.memory_bound

    @property
    def memory_bound(self) -> int:
        """Bytes the caches kept in memory may hold together (:class:`MemoryBounds`)."""
        return self._hot.limit + self.memo_bytes + self._sqlite_bytes

    def usage_now(self) -> tuple[int, int]:
        """``(entries, bytes)`` held now without waiting for queued writes: diskcache's
        figures plus the content still landing (an entry just written may count twice
        for a moment).

        Blocking (two SQLite reads) but safe from any thread: for the metrics server.
        """
        landing, landing_bytes = len(self._landing), self._landing_bytes
        return len(self._cache) + landing, self._cache.volume() + landing_bytes

    # -- eviction on request (cassfs cache evict) -------------------------------------------

    async def drop_content(self, tenant: Tenant, content_id: bytes) -> bool:
        """Remove cached content ``content_id`` (even pinned or leased: a read in
        progress fetches it again); True if it was cached."""
        await self.flush()  # content still landing is in diskcache after this
        key = self._content_key(tenant, content_id)
        self._hot.discard(key)
        removed = await self._run(self._cache.delete, key)
        if self._content_index is not None:
            self._content_index.discard(hash(key))
        return removed


def sha256_file(path: Path) -> tuple[bytes, int]:
    """``(SHA-256 digest, size in bytes)`` of the file at ``path`` (blocking)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as reader:
        while block := reader.read(1024 * 1024):
            digest.update(block)
            size += len(block)
    return digest.digest(), size
