"""Access times recorded under relatime, written to Cassandra behind the reads.

Under relatime (:func:`cached.model.needs_atime`) the first read of a file after it
changed records an access.  A deploy that writes a tree and then serves it pays that
for every file, and a write per file on the read path cost as much as the read itself
(a cold read of WordPress spent 2.7 ms per file in ``touch_atime``, whose daemon CPU
slowed the reads beside it).  So, like Linux's ``lazytime``, an access is answered at
once (the daemon's cached inode carries it) and written later:

- :meth:`AccessTimes.record` keeps the latest access per inode until the next flush;
- :meth:`AccessTimes.run` flushes every :data:`FLUSH_EVERY` seconds, in unlogged batches
  of at most :data:`BATCH` inodes per tenant, and once more when the daemon stops.

Each write carries the time of the access as its Cassandra write timestamp (``USING
TIMESTAMP``, microseconds), not the time of the flush: a ``utimensat`` or an unlink
made after the access, written with later timestamps, is never overwritten by it, and
an inode deleted meanwhile is not brought back as a fragment.  (So an access stamped
before another host's last write of the row's ``atime_ns``, by a clock behind that
host's, is not recorded: the skew the feed already tolerates.)

What is lost: a daemon killed before its flush loses at most :data:`FLUSH_EVERY`
seconds of access times (an access time is not a write the user asked for, so no
reply waits for it); a batch that fails is logged and dropped.  Other hosts see an
access once it is flushed and their copy of the inode is read again; so does this
daemon if it reads the inode again before the flush.

Blocking: none (trio).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from cached.errors import CassfsError
from cached.periodic import flush_periodically

if TYPE_CHECKING:
    from cached.core import Session
    from cached.stats import Counters

log = logging.getLogger(__name__)

#: Seconds between two flushes of the recorded accesses (a daemon killed loses at most
#: this long's worth).
FLUSH_EVERY = 0.5
#: Inodes per unlogged batch (each its own partition; the coordinator sends them on).
BATCH = 32


class AtimeStore(Protocol):
    """What :class:`AccessTimes` needs of a tenant's store."""

    async def set_atimes(self, accesses: Sequence[tuple[int, int]]) -> None: ...


class AccessTimes:
    """The access times one daemon recorded and has not written yet, every tenant's."""

    def __init__(self, counters: Counters | None = None, flush_every: float = FLUSH_EVERY) -> None:
        self.flush_every = flush_every
        self._counters = counters
        #: (tenant, ino) -> (the tenant's store, access time in ns): the latest per inode.
        self._pending: dict[tuple[tuple[int, str], int], tuple[AtimeStore, int]] = {}

    def __len__(self) -> int:
        """How many inodes have an access waiting to be written."""
        return len(self._pending)

    def record(self, s: Session, ino: int, atime_ns: int) -> None:
        """Have ``ino``'s access at ``atime_ns`` (nanoseconds since the epoch) written
        within :attr:`flush_every` seconds; a later access of the same inode replaces
        it.  Never raises."""
        key = (s.tenant, ino)
        held = self._pending.get(key)
        if held is None or held[1] < atime_ns:
            self._pending[key] = (s.store, atime_ns)

    async def run(self) -> None:
        """Flush every :attr:`flush_every` seconds, until cancelled; then once more
        (shielded, at most 5 s)."""
        await flush_periodically(self.flush, self.flush_every)

    async def flush(self) -> None:
        """Write every pending access: per tenant, batches of :data:`BATCH`.  Never raises
        for Cassandra: a failed batch is logged and its accesses are dropped."""
        pending, self._pending = self._pending, {}
        by_store: dict[int, tuple[AtimeStore, list[tuple[int, int]]]] = {}
        for (_tenant, ino), (store, atime_ns) in pending.items():
            by_store.setdefault(id(store), (store, []))[1].append((ino, atime_ns))
        for store, accesses in by_store.values():
            for start in range(0, len(accesses), BATCH):
                part = accesses[start : start + BATCH]
                try:
                    await store.set_atimes(part)
                except CassfsError as exc:
                    log.warning("access times of %d inodes not recorded: %s", len(part), exc)
                else:
                    self._count(len(part))

    def _count(self, written: int) -> None:
        if self._counters is not None:
            self._counters.add("atime_writes", written)
