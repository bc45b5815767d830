"""Counters of the cache daemon, persisted beside the cache so they survive restarts.

Counted in memory (cheap, on the trio thread) and added to a diskcache
``counters`` directory by :meth:`Counters.flush`, which the daemon calls every
second and at shutdown.  ``cassfs cache stats`` reads the same directory when
no daemon runs.  A purge clears the cache, not the counters.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import diskcache

#: Every counter, in display order, with what it counts (the help of its Prometheus
#: metric, :mod:`cached.metrics`).  ``entries`` and ``bytes_cached`` are gauges read from
#: the cache itself, not counted here.
COUNTERS = {
    "hits": "Requests answered from the local cache (metadata within its TTL, cached content).",
    "misses": "Requests that had to read Cassandra because nothing was cached.",
    "revalidations": "Cached metadata past its TTL checked against Cassandra.",
    "bytes_fetched": "Content bytes read from Cassandra.",
    "bytes_served": "Content bytes returned to mounts from the local cache.",
    "flushes": "Whole files written through to Cassandra.",
    "bytes_written": "Content bytes written to Cassandra.",
    "evictions": "Cache entries removed by the size limit (LRU).",
    "purges": "Cache purges (cassfs cache purge).",
    "stale_served": "Expired entries served because Cassandra failed (stale-if-error).",
    "xattr_hits": "getxattr/listxattr answered from the cache (negative answers too).",
    "xattr_reads": "Extended attributes of an inode read from Cassandra.",
    "atime_writes": "Access times written to Cassandra (relatime; behind the reads).",
    "feed_reads": "Queries of the change feed (one per followed tenant per poll).",
    "feed_changes": "Rows of other hosts' changes read from the change feed and applied.",
    "feed_read_failures": "Reads of a tenant's change feed that failed (retried).",
    "feed_append_failures": "Changes of this daemon it could not add to the change feed.",
    "feed_gaps": "Change feeds unread too long: the whole cache was forgotten.",
}
NAMES = tuple(COUNTERS)
GAUGES = (
    "entries",
    "bytes_cached",
    # Of the running daemon only (0 when none runs); see cached.outage.
    "cassandra_unreachable",  # 1 while Cassandra is found unreachable
    "unreachable_queries",  # queries that found it unreachable (each waited for that)
    "queries_failed_fast",  # queries failed at once, unsent, while it was
)


class Counters:
    """In-memory deltas over the persistent totals in ``directory`` (a diskcache)."""

    def __init__(self, directory: Path) -> None:
        self._store = diskcache.Cache(str(directory), size_limit=2**40)
        self._pending: Counter[str] = Counter()
        # Totals kept in memory for readers in other threads (the metrics server): every
        # name is a key from the start, so the dict never changes size while read.
        self._totals = {name: int(self._store.get(name, 0)) for name in NAMES}

    def add(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name`` (in memory until the next flush).

        Raises KeyError for an unknown counter name.
        """
        if name not in NAMES:
            raise KeyError(name)
        self._pending[name] += amount
        self._totals[name] += amount

    def snapshot(self) -> dict[str, int]:
        """Every total of :data:`NAMES` as counted by this process (persisted ones
        included), from memory: safe to call from any thread, never blocks."""
        return dict(self._totals)

    def take_pending(self) -> Counter[str]:
        """Detach and return the deltas counted since the last call (call on the trio thread)."""
        pending, self._pending = self._pending, Counter()
        return pending

    def persist(self, deltas: Counter[str]) -> None:
        """Add ``deltas`` to the persistent totals (blocking: run in a worker thread)."""
        for name, amount in deltas.items():
            if amount:
                self._store.incr(name, amount, default=0)

    def flush(self) -> None:
        """:meth:`take_pending` then :meth:`persist`, for single-threaded use (shutdown)."""
        self.persist(self.take_pending())

    def totals(self) -> dict[str, int]:
        """Persistent totals plus pending deltas, for every name in :data:`NAMES` (blocking)."""
        return {name: int(self._store.get(name, 0)) + self._pending[name] for name in NAMES}

    def close(self) -> None:
        """Flush and close (blocking)."""
        self.flush()
        self._store.close()


def read_totals(directory: Path) -> dict[str, int]:
    """Totals persisted in ``directory`` without a daemon (all zero when it is new)."""
    store = diskcache.Cache(str(directory))
    try:
        return {name: int(store.get(name, 0)) for name in NAMES}
    finally:
        store.close()
