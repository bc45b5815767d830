"""Deferred deletion of replaced content versions and unlinked inodes (the purge delay).

Another host may still lead an application to what this host just made
obsolete: its daemon answers names and inodes from its cache for up to its
``--cache-ttl``, its kernel for ``--entry-ttl``, and a handle opened there reads
the version it opened.  Deleting a replaced version or an unlinked inode at once
turns those into EIO and ESTALE on that host (measured by the race harness,
``tests/race.py``: 40-60 ESTALE per 60 s run).  So this daemon deletes them
``delay`` seconds later (``--purge-delay``), by which time every other host has
revalidated and moved on.  NFS's "silly rename" keeps an unlinked open file
alive on one client the same way; here it is kept for the tenant's hosts.

The queue is kept in ``cache_dir/reaper`` (a diskcache ``Index``: SQLite, not
evicted, not cleared by ``cassfs cache purge``), so a daemon killed with work
queued does it after its restart.  What a lost cache dir forgets, ``cassfs fsck
--repair`` finds as orphans (nlink 0, versions no inode points to) and removes.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from diskcache import Index  # type: ignore[import-untyped]

from cached.errors import CassfsError

log = logging.getLogger(__name__)

#: Seconds before a deletion that failed (Cassandra unreachable) is tried again.
RETRY_AFTER = 30.0


@dataclass(frozen=True, order=True)
class Deletion:
    """One queued deletion, due at ``due`` (wall clock, seconds since the epoch).

    ``version`` empty: the unlinked inode ``ino`` with all its versions (done only
    if its nlink is still 0).  Otherwise that content version of ``ino``, ``size``
    bytes in chunks of ``chunk_size`` bytes (done only if it is not current).
    """

    due: float
    owner: int
    environment: str
    ino: int
    version: bytes = b""
    size: int = 0
    chunk_size: int = 0

    @property
    def key(self) -> tuple[int, str, int, bytes]:
        """What identifies the deletion in the queue: ``(owner, environment, ino, version)``."""
        return (self.owner, self.environment, self.ino, self.version)


Executor = Callable[[Deletion], Awaitable[None]]


class Reaper:
    """The queue of deferred deletions of one daemon, and the task that carries them out.

    ``delay`` is seconds (0: callers delete at once and nothing is queued);
    ``path`` the directory of the persistent queue (None: in memory only, for
    tests of pure logic).
    """

    def __init__(self, path: Path | None, delay: float) -> None:
        if delay < 0:
            raise ValueError("the purge delay must be >= 0 seconds")
        self.delay = delay
        self._path = path
        self._index: Index | None = None
        self._heap: list[Deletion] = []
        self._queued: dict[tuple[int, str, int, bytes], Deletion] = {}
        self._wakeup = trio.Event()

    def __len__(self) -> int:
        return len(self._queued)

    async def open(self) -> None:
        """Load what an earlier run of the daemon left queued (blocking I/O in a thread)."""
        if self._path is None:
            return

        def load() -> tuple[Index, list[Deletion]]:
            index = Index(str(self._path))
            return index, [Deletion(*value) for value in index.values()]

        self._index, pending = await trio.to_thread.run_sync(load)
        for deletion in pending:
            self._push(deletion)
        if pending:
            log.info("%d deferred deletions carried over from the last run", len(pending))

    async def schedule(
        self, owner: int, environment: str, ino: int, version: bytes = b"",
        size: int = 0, chunk_size: int = 0,
    ) -> Deletion:  # fmt: skip
        """Queue a deletion due ``delay`` seconds from now (persisted before it returns).

        A deletion queued again for the same ``(ino, version)`` keeps its first due time.
        """
        deletion = Deletion(
            time.time() + self.delay, owner, environment, ino, version, size, chunk_size
        )
        earlier = self._queued.get(deletion.key)
        if earlier is not None:
            return earlier
        await self._persist(deletion)
        self._push(deletion)
        return deletion

    def due(self, now: float) -> list[Deletion]:
        """Take every deletion due at ``now`` (wall clock seconds) off the heap, earliest first."""
        taken = []
        while self._heap and self._heap[0].due <= now:
            deletion = heapq.heappop(self._heap)
            if self._queued.get(deletion.key) is deletion:
                taken.append(deletion)
        return taken

    async def run(
        self, execute: Executor, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Carry out deletions as they fall due, forever; ``execute`` does one.

        A deletion whose ``execute`` raises ``CassfsError`` is tried again
        :data:`RETRY_AFTER` seconds later; any other error is logged and dropped
        (fsck finds what it left).
        """
        task_status.started()
        while True:
            for deletion in self.due(time.time()):
                try:
                    await execute(deletion)
                except CassfsError as exc:
                    log.warning("deferred deletion of inode %d failed, retrying: %s",
                                deletion.ino, exc)  # fmt: skip
                    retry = Deletion(time.time() + RETRY_AFTER, *deletion.key, deletion.size,
                                     deletion.chunk_size)  # fmt: skip
                    with trio.CancelScope(shield=True):
                        await self._persist(retry)  # replaces it on disk: same key
                    self._push(retry)
                    continue
                except Exception:
                    log.exception("deferred deletion of inode %d dropped", deletion.ino)
                with trio.CancelScope(shield=True):
                    await self._forget(deletion)
            self._wakeup = trio.Event()
            wait = self._heap[0].due - time.time() if self._heap else float("inf")
            with trio.move_on_after(max(wait, 0.0)):
                await self._wakeup.wait()

    def _push(self, deletion: Deletion) -> None:
        self._queued[deletion.key] = deletion
        heapq.heappush(self._heap, deletion)
        self._wakeup.set()

    async def _persist(self, deletion: Deletion) -> None:
        if self._index is not None:
            index = self._index
            value = (deletion.due, *deletion.key, deletion.size, deletion.chunk_size)
            await trio.to_thread.run_sync(index.__setitem__, deletion.key, value)

    async def _forget(self, deletion: Deletion) -> None:
        if self._queued.get(deletion.key) is deletion:
            del self._queued[deletion.key]
        if self._index is not None:
            await trio.to_thread.run_sync(self._index.pop, deletion.key, None)
