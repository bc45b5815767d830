"""What a tenant uses, for statfs (``df``): bytes of file content and inodes.

The figures are counters in Cassandra (the ``usage`` table, one row per
tenant), moved by the daemons as they work, so a ``df`` reads one row instead
of scanning the tenant:

- +1 inode for every inode row written (a create, mkdir, symlink, mknod; a
  tenant's root), -1 when a failed create deletes its row again;
- +(new size - old size) bytes when a regular file's content flips (only when
  the flip's LWT applied);
- -1 inode and -size bytes (regular files) when an unlinked inode is purged
  (only by the purge whose conditional delete applied).

So an unlinked inode counts until it is purged (after ``--purge-delay``), and
replaced content versions kept for the purge delay do not count.  Bytes are
file sizes: holes count, chunk overhead and replication do not.

The figures are approximate: a counter update is neither atomic with the change
it counts nor idempotent, so a daemon killed before writing what it counted (it
writes each tenant's changes every :data:`FLUSH_EVERY` seconds, in one update),
an update that failed (logged; it never fails the user's operation) or one the
driver resent after a timeout leaves them off.  Schema version 3's data step
(:func:`cassfs.schema.upgrade_to_3`) sets them from the inodes a keyspace holds.

Blocking: none (trio).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from cached.errors import CassfsError, StorageError
from cached.periodic import flush_periodically
from cached.singleflight import SingleFlight

if TYPE_CHECKING:
    from cached.core import Session

log = logging.getLogger(__name__)

#: Seconds a daemon answers statfs from the figures it read last, without asking
#: Cassandra (``df`` in a loop reads the counters at most this often per tenant).
STATFS_TTL = 1.0
#: Seconds between two writes of a tenant's counted changes (a daemon killed loses at
#: most this long's worth of counts).
FLUSH_EVERY = 0.5


@dataclass
class _Figures:
    """The figures of one tenant as last read (``read_at``: trio clock, seconds),
    plus this daemon's own counted changes since."""

    read_at: float
    bytes: int
    inodes: int


class Usage:
    """The usage counters of every tenant one daemon serves: counting and reading.

    ``ttl`` is how many seconds figures read from Cassandra are answered again
    without reading them (:data:`STATFS_TTL` by default).
    """

    def __init__(self, ttl: float = STATFS_TTL, flush_every: float = FLUSH_EVERY) -> None:
        self.ttl = ttl
        self.flush_every = flush_every
        self._known: dict[tuple[int, str], _Figures] = {}
        self._flights = SingleFlight()
        #: Changes counted and not yet written: tenant -> [its store, bytes, inodes].
        self._pending: dict[tuple[int, str], list[Any]] = {}
        #: Held by a flush while it writes and by a read of the counters, so that a read
        #: sees a flushed change either still pending or already in Cassandra, never in
        #: between (a statfs answered 0 for six files just counted, the flush in flight).
        self._writing = trio.Lock()

    async def count(self, s: Session, bytes_delta: int, inodes_delta: int) -> None:
        """Add ``bytes_delta`` bytes and ``inodes_delta`` inodes to ``s``'s tenant.

        The change joins the tenant's pending one, written by :meth:`run` within
        :attr:`flush_every` seconds (one counter update per tenant then, not one per
        create or write: none of them waits for it).  This daemon's statfs answers
        include it at once.  Never raises.
        """
        if not bytes_delta and not inodes_delta:
            return
        pending = self._pending.setdefault(s.tenant, [s.store, 0, 0])
        pending[1] += bytes_delta
        pending[2] += inodes_delta
        known = self._known.get(s.tenant)
        if known is not None:
            known.bytes += bytes_delta
            known.inodes += inodes_delta

    async def run(self) -> None:
        """Write the pending changes every :attr:`flush_every` seconds, until cancelled;
        then once more (shielded, at most 5 s)."""
        await flush_periodically(self.flush, self.flush_every)

    async def flush(self) -> None:
        """Write every tenant's pending change (one counter update each).  Never raises
        for Cassandra: a failed update is logged and lost (the figures are approximate)."""
        async with self._writing:
            await self._flush_pending()

    async def _flush_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for (owner, environment), (store, bytes_delta, inodes_delta) in pending.items():
            if not bytes_delta and not inodes_delta:
                continue
            try:
                await store.add_usage(bytes_delta, inodes_delta)
            except CassfsError as exc:
                log.warning(
                    "usage of %s/%s not counted (%+d bytes, %+d inodes): %s",
                    owner, environment, bytes_delta, inodes_delta, exc,
                )  # fmt: skip

    async def figures(self, s: Session) -> tuple[int, int]:
        """``(bytes, inodes)`` used by ``s``'s tenant, each at least 0.

        Read from Cassandra at most once per :attr:`ttl` seconds per tenant (one
        read for concurrent callers).  While Cassandra fails, the last figures read
        serve (with this daemon's changes since); with none, ``StorageError`` (EIO).
        """
        known = self._known.get(s.tenant)
        if known is None or trio.current_time() - known.read_at >= self.ttl:
            try:
                known = await self._flights.run(s.tenant, self._read, s)
            except StorageError as exc:
                if known is None:
                    raise
                log.debug("usage of %s/%s: serving the last figures: %s",
                          s.owner, s.environment, exc)  # fmt: skip
        return max(known.bytes, 0), max(known.inodes, 0)

    async def _read(self, s: Session) -> _Figures:
        async with self._writing:
            return await self._read_counters(s)

    async def _read_counters(self, s: Session) -> _Figures:
        read_at = trio.current_time()
        used_bytes, inodes = await s.store.get_usage()
        pending = self._pending.get(s.tenant)  # counted here, not written yet
        if pending is not None:
            used_bytes, inodes = used_bytes + pending[1], inodes + pending[2]
        figures = _Figures(read_at, used_bytes, inodes)
        self._known[s.tenant] = figures
        return figures
