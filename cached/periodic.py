"""Writes kept behind the replies: a flush every few seconds, and a last one at the end."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

#: Seconds the last flush, once cancelled, may take.
LAST_FLUSH_LIMIT = 5.0


async def flush_periodically(
    flush: Callable[[], Awaitable[None]], every: float, last_within: float = LAST_FLUSH_LIMIT
) -> None:
    """Await ``flush()`` every ``every`` seconds until cancelled; then once more, shielded
    from that cancellation, for at most ``last_within`` seconds.  Raises what ``flush``
    raises (the flushes of :mod:`cached.atimes` and :mod:`cached.usage` never raise for
    Cassandra)."""
    try:
        while True:
            await trio.sleep(every)
            await flush()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(last_within):
            await flush()
