"""The change feed: each daemon appends the changes it makes and follows other hosts' (issue 9).

A daemon used to see another host's change only once its cached entry passed
``--cache-ttl`` (60 s by default).  Instead, as AFS's callbacks tell a client that a file
it caches changed (Howard et al., "Scale and Performance in a Distributed File System",
ACM TOCS 6(1), 1988), here a log in Cassandra tells every daemon:

- **Writing.** After a change is applied, :meth:`Feed.append` adds a row to the tenant's
  partition of table ``changes`` (``schema/004_feed.cql``): the inodes changed and the
  names made, removed or moved, with this daemon's id as ``origin``.  The changes a
  daemon makes to one tenant within :data:`APPEND_WINDOW` seconds share one row (a copy
  makes two changes per file, its create and its write: one insert each cost Cassandra
  as much CPU as the file's other statements together).  The row comes after the
  changes, so whoever reads it reads them too.  A failed append is logged: the changes
  stand, and other hosts see them at their TTL.
- **Following.** :meth:`Feed.run` reads, every :data:`POLL_INTERVAL` seconds, each
  followed tenant's rows made since its last read (one query per tenant, two across a
  minute boundary), back over :data:`OVERLAP` seconds because the ids come from the
  writers' clocks; rows already seen (by id) and this daemon's own are skipped.  For the
  new rows of a poll together, :meth:`cached.core.Core.forget` makes the named entries of
  the daemon's cache stale (read again at their next use, still served while Cassandra
  fails) and tells the tenant's mounts on this daemon (``changed``
  notifications with the inodes and names), which drop what they reuse and the kernel's
  cached attributes and dentries.
  :data:`RECHECK_DELAY` seconds later it does so once more: a read that was in flight
  when the row came may have cached the old state again.
- **Gaps.** A tenant whose feed could not be read for :data:`GAP_LIMIT` seconds (the rows
  live an hour) may have missed rows: everything cached of it is forgotten, and following
  resumes from now.  Until a read succeeds again, the TTLs bound staleness as before.

Cost: one query per followed tenant per poll on every host, whatever the number of files
or hosts; at most one plain insert per tenant per :data:`APPEND_WINDOW` while changes are
made (more for over :data:`ROW_LIMIT` inodes or names).
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from cassandra.util import min_uuid_from_time

from cached.api import DEFAULT_FEED_POLL
from cached.errors import StorageError
from cached.store import CHANGE_BUCKET_SECONDS, Change, TenantStore, uuid_time_ns

if TYPE_CHECKING:
    from cached.core import Core, Tenant

log = logging.getLogger(__name__)

#: Seconds between two reads of a tenant's feed (by default; ``--feed-poll``).
POLL_INTERVAL = DEFAULT_FEED_POLL
#: Seconds each read goes back before the previous one's start: a writer whose clock is
#: behind this host's by less than this is not missed.
OVERLAP = 2.0
#: Seconds after a row was applied that what it names is forgotten once more.
RECHECK_DELAY = 1.0
#: Seconds without a successful read after which a tenant's cache is forgotten whole
#: (the table keeps rows 3600 s; this leaves room for clocks and a slow read).
GAP_LIMIT = 3000.0
#: Seconds a change waits for others of the same tenant to share its row: what it adds
#: to the time another host takes to see a change (a poll is 0.2 s).
APPEND_WINDOW = 0.05
#: Most inodes, and most names, one row names; more make more rows.
ROW_LIMIT = 256


@dataclass
class _Pending:
    """The changes of one tenant waiting for their row: inodes and names in the order
    first named, and an event set once the rows are written (or failed)."""

    inos: dict[int, None] = field(default_factory=dict)
    names: dict[tuple[int, bytes], None] = field(default_factory=dict)
    written: trio.Event = field(default_factory=trio.Event)


@dataclass
class _Follow:
    """One followed tenant: its store, when its last successful read began (seconds since
    the epoch) and the rows already applied (id -> id's time, seconds)."""

    store: TenantStore
    since: float
    seen: dict[uuid.UUID, float] = field(default_factory=dict)
    failing: bool = False


class Feed:
    """Appends this daemon's changes and follows the feeds of the tenants it serves."""

    def __init__(self, core: Core) -> None:
        self.core = core
        #: This daemon's id in the rows it writes (a new one each start).
        self.origin = secrets.token_bytes(8)
        self._follows: dict[Tenant, _Follow] = {}
        #: True once :meth:`run` polls (``--feed-poll`` above 0).
        self.running = False
        #: What polls applied, to forget again: ``(due (trio clock), tenant, (inos, names))``.
        self._rechecks: deque[tuple[float, Tenant, tuple[list[int], list[tuple[int, bytes]]]]] = (
            deque()
        )
        #: Per tenant, the changes waiting for the row an earlier :meth:`append` writes.
        self._pending: dict[Tenant, _Pending] = {}

    def follow(self, tenant: Tenant, store: TenantStore) -> None:
        """Follow ``tenant``'s feed from now on (a mount of it said hello); idempotent.

        Nothing cached of it predates this (the cache counts what an earlier daemon
        left as stale), so reading from :data:`OVERLAP` seconds back is enough.
        """
        if tenant not in self._follows:
            self._follows[tenant] = _Follow(store, time.time())

    def follows(self, tenant: Tenant) -> bool:
        """True while ``tenant``'s feed is followed and its last read succeeded: another
        host's change to it is then forgotten here within about a second."""
        follow = self._follows.get(tenant)
        return self.running and follow is not None and not follow.failing

    async def append(
        self, store: TenantStore, inos: list[int], names: list[tuple[int, bytes]]
    ) -> None:
        """Add a change just applied (``inos`` changed; ``names`` as ``(parent, name)``
        made, removed or moved) to the tenant's feed; returns once its row is written.

        The first change of a tenant waits :data:`APPEND_WINDOW` seconds, then writes
        one row for itself and every change of the tenant appended meanwhile (their
        calls wait for it), at most :data:`ROW_LIMIT` inodes and names per row.  Never
        raises: a failure is logged and counted (``feed_append_failures``, once per
        row), and other hosts see those changes at their TTL.
        """
        pending = self._pending.get(store.tenant)
        if pending is not None:
            pending.inos.update(dict.fromkeys(inos))
            pending.names.update(dict.fromkeys(names))
            await pending.written.wait()
            return
        pending = self._pending[store.tenant] = _Pending(dict.fromkeys(inos), dict.fromkeys(names))
        try:
            await trio.sleep(APPEND_WINDOW)
        finally:
            # Cancelled or not, the row is written: other calls wait for it (a query
            # timeout bounds the write).
            del self._pending[store.tenant]
            with trio.CancelScope(shield=True):
                try:
                    await self._write_rows(store, list(pending.inos), list(pending.names))
                finally:
                    pending.written.set()

    async def _write_rows(
        self, store: TenantStore, inos: list[int], names: list[tuple[int, bytes]]
    ) -> None:
        """Write ``inos`` and ``names`` as rows of the feed, :data:`ROW_LIMIT` of each per row."""
        for start in range(0, max(len(inos), len(names)), ROW_LIMIT):
            change = Change(
                uuid.uuid1(),
                self.origin,
                tuple(inos[start : start + ROW_LIMIT]),
                tuple(names[start : start + ROW_LIMIT]),
            )
            try:
                await store.append_change(change)
            except StorageError as exc:
                self.core.counters.add("feed_append_failures")
                log.warning(
                    "changes not added to the feed (other hosts see them at their TTL): %s", exc
                )

    async def run(
        self,
        interval: float = POLL_INTERVAL,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Read the followed tenants' feeds every ``interval`` seconds, forever."""
        self.running = True
        task_status.started()
        while True:
            for tenant in list(self._follows):
                await self.poll(tenant)
            await self._recheck_due()
            await trio.sleep(interval)

    async def poll(self, tenant: Tenant) -> int:
        """Read and apply ``tenant``'s new rows once; how many were applied.

        A read that fails leaves the position where it was (the next poll reads the
        same rows again); never raises ``StorageError``.
        """
        follow = self._follows[tenant]
        started = time.time()
        if started - follow.since > GAP_LIMIT:
            log.warning(
                "the feed of %s/%s was not read for %.0f s: forgetting its cached entries",
                *tenant,
                started - follow.since,
            )
            await self.core.forget_all()  # the cache is not kept per tenant
            self.core.counters.add("feed_gaps")
            follow.since, follow.seen = started, {}
            return 0
        low = follow.since - OVERLAP
        after = min_uuid_from_time(low)
        changes: list[Change] = []
        try:
            for bucket in range(
                int(low) // CHANGE_BUCKET_SECONDS, int(started) // CHANGE_BUCKET_SECONDS + 1
            ):
                self.core.counters.add("feed_reads")
                changes += await follow.store.read_changes(bucket, after)
        except StorageError as exc:
            if not follow.failing:
                log.warning("the feed of %s/%s could not be read: %s", *tenant, exc)
            follow.failing = True
            self.core.counters.add("feed_read_failures")
            return 0
        if follow.failing:
            log.info("the feed of %s/%s is read again", *tenant)
            follow.failing = False
        follow.since = started
        applied = 0
        inos: dict[int, None] = {}  # ordered sets: all the new rows' names and inodes
        names: dict[tuple[int, bytes], None] = {}
        for change in changes:
            if change.id in follow.seen:
                continue
            follow.seen[change.id] = uuid_time_ns(change.id.bytes) / 1e9
            if change.origin == self.origin:
                continue
            inos.update(dict.fromkeys(change.inos))
            names.update(dict.fromkeys(change.names))
            applied += 1
        if applied:
            # One forget (one notification per mount) per poll, however many rows.
            await self.core.forget(tenant, list(inos), list(names))
            due = trio.current_time() + RECHECK_DELAY
            self._rechecks.append((due, tenant, (list(inos), list(names))))
        self.core.counters.add("feed_changes", applied)
        horizon = low - OVERLAP
        follow.seen = {key: when for key, when in follow.seen.items() if when >= horizon}
        return applied

    async def _recheck_due(self) -> None:
        """Forget once more what rows applied :data:`RECHECK_DELAY` seconds ago named."""
        now = trio.current_time()
        while self._rechecks and self._rechecks[0][0] <= now:
            _due, tenant, (inos, names) = self._rechecks.popleft()
            await self.core.forget(tenant, inos, names)
