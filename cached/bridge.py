"""Bridge cassandra-driver's ``ResponseFuture`` into trio without blocking the event loop.

The driver runs callbacks on its IO thread (or at once in the calling thread
when the result is already in).  The callbacks here only hand the page to
trio with ``TrioToken.run_sync_soon``, which never blocks; the trio task waits
on a ``trio.Event`` per page and drives paging itself.  See
``shared/notes/pyfuse3-trio-pitfalls.md`` §3.8 and cassandra-driver
``cassandra/cluster.py`` (``ResponseFuture.add_callbacks``).
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from cassandra.cluster import ResponseFuture, Session
from cassandra.pool import Host

log = logging.getLogger(__name__)


async def execute(
    session: Session,
    statement: Any,
    params: Any = None,
    *,
    query_timeout: float = 10.0,
    host: Host | None = None,
) -> list[Any]:
    """Run ``statement`` with ``params`` and return every row of every page.

    ``query_timeout`` is in seconds, per page (the driver's own timeout); ``host`` sends
    it to that node only (None: the load-balancing policy's choice).
    Raises whatever the driver raises (``cassandra.DriverException`` and
    subclasses, ``OperationTimedOut``).
    Cancelling the calling task abandons the query; the driver finishes it.
    """
    token = trio.lowlevel.current_trio_token()
    # One page at a time: the driver delivers a page only after the task asked for
    # it, so a list and an event suffice (a memory channel cost a pass of the run
    # loop more per query, at its close).
    box: list[tuple[bool, Any]] = []
    arrived = trio.Event()

    def deliver(item: tuple[bool, Any]) -> None:
        box.append(item)
        arrived.set()

    def on_page(rows: Any) -> None:
        try:
            token.run_sync_soon(deliver, (True, rows))
        except trio.RunFinishedError:
            log.debug("query result dropped: the event loop has ended")

    def on_error(exc: BaseException) -> None:
        try:
            token.run_sync_soon(deliver, (False, exc))
        except trio.RunFinishedError:
            log.debug("query error dropped: the event loop has ended")

    future: ResponseFuture = session.execute_async(
        statement, params, timeout=query_timeout, host=host
    )
    rows: list[Any] = []
    # Added once: start_fetching_next_page() fires the same callbacks again.
    future.add_callbacks(on_page, on_error)
    while True:
        await arrived.wait()
        ok, value = box[0]  # the first delivery for a page counts, as with the channel
        box.clear()
        if not ok:
            raise value
        if value:  # None for statements without a result set
            rows.extend(value)
        if not future.has_more_pages:
            return rows
        arrived = trio.Event()
        future.start_fetching_next_page()
