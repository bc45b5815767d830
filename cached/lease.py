"""The tenant's rename lease: taken with an LWT, kept alive while a move uses it, given back.

Moving a directory to another parent takes the tenant's lease (a row of the ``locks``
table, as Linux takes ``s_vfs_rename_mutex``), so the "not below itself" check and the
move cannot interleave with another host's.  The row is written with a TTL of
:data:`LEASE_TTL` seconds, so a lease whose daemon died frees itself; while a move runs,
its daemon renews the row every :data:`LEASE_RENEW` seconds.  The holder stops using the
lease (its move is cancelled: EIO, leaving what a killed daemon leaves) once
:data:`LEASE_TTL` - :data:`LEASE_MARGIN` seconds have passed since it sent the last take
or renewal that succeeded.  The row outlives that by at least the margin, less the second
that Cassandra's TTLs round down: time for a statement the move sent just before to be
applied or to fail at the node before another host can take the lease.
"""

from __future__ import annotations

import logging

import trio

from cached.errors import CassfsError, StorageError
from cached.store import TenantStore, new_op_id

log = logging.getLogger(__name__)

#: Seconds the lease's row lives past its last take or renewal: how long a daemon killed
#: while holding it delays other hosts' directory moves, at most.
LEASE_TTL = 12
#: Seconds between renewals while a move holds the lease.
LEASE_RENEW = 2.0
#: Seconds before the row's expiry at which the holder stops using it.
LEASE_MARGIN = 5.0
#: Seconds a move waits for the lease: longer than two dead holders' rows live, shorter
#: than the request's own deadline (``cached.recovery.STEP_DEADLINE``, 30 s).
LEASE_WAIT = 25.0
#: The lease serialising directory moves between parents (see the README).
RENAME_LEASE = "rename-dir"


class RenameLease:
    """The rename lease as one request holds it: :meth:`take`, then :meth:`release`.

    ``hold`` is the cancel scope of the work done under the lease: :meth:`take` and each
    renewal set its deadline (trio seconds) to ``LEASE_TTL - LEASE_MARGIN`` after the
    statement's send; a renewal that finds the lease taken by another cancels it at once.
    Renewals run in ``background`` (the daemon's nursery); without one the lease is held
    for that first window only.
    """

    def __init__(
        self, store: TenantStore, hold: trio.CancelScope, background: trio.Nursery | None
    ) -> None:
        self._store = store
        self._hold = hold
        self._background = background
        self._keeper = trio.CancelScope()
        #: The holder id once taken, else b"".
        self.holder = b""

    async def take(self) -> None:
        """Take the lease, waiting up to :data:`LEASE_WAIT` seconds while another holds it.

        Raises ``StorageError`` (EIO) when another host keeps it past that wait, and the
        store's errors (EIO) when Cassandra fails.
        """
        holder = new_op_id()
        with trio.move_on_after(LEASE_WAIT):
            delay = 0.005
            while True:
                sent = trio.current_time()
                if await self._store.acquire_lock(RENAME_LEASE, holder, LEASE_TTL):
                    break
                await trio.sleep(delay)
                delay = min(delay * 2, 0.2)
            self.holder = holder
            self._hold.deadline = sent + LEASE_TTL - LEASE_MARGIN
            if self._background is not None:
                self._background.start_soon(self._keep)
            return
        raise StorageError("another host keeps the rename lease")

    async def _keep(self) -> None:
        """Renew the lease every :data:`LEASE_RENEW` seconds until :meth:`release`.

        A renewal that fails leaves the deadline where it was (the next one may still
        come in time); one refused (the lease is another's) cancels the work at once.
        """
        with self._keeper:
            while True:
                await trio.sleep(LEASE_RENEW)
                sent = trio.current_time()
                try:
                    kept = await self._store.renew_lock(RENAME_LEASE, self.holder, LEASE_TTL)
                except CassfsError as exc:
                    log.warning("rename lease not renewed: %s", exc)
                    continue
                if not kept:
                    log.warning("rename lease lost: the move under it stops")
                    self._hold.cancel()
                    return
                self._hold.deadline = max(self._hold.deadline, sent + LEASE_TTL - LEASE_MARGIN)

    async def release(self) -> None:
        """Stop renewing and give the lease back if it was taken (shielded from cancels).

        Raises the store's errors (EIO) when the release cannot be sent; the row then
        expires by itself within :data:`LEASE_TTL` seconds.
        """
        self._keeper.cancel()
        if self.holder:
            with trio.CancelScope(shield=True):
                await self._store.release_lock(RENAME_LEASE, self.holder)
