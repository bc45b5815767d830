"""Remembering that Cassandra is unreachable, so that an outage costs one timeout, not many.

Without memory, every query during an outage waits out its own timeout: one
lookup made up to five queries in a row (about 50 s per path component with the
default 10 s timeout), and the next request paid again.  :class:`Outage` is a
circuit breaker (M. Nygard, *Release It!*, 2007, ch. 5): after a failure that
says the node cannot be reached, queries fail at once for ``memory`` seconds;
then one query at a time goes through as a probe, and the first success ends
the outage.  Answers from a node that is up (a timeout reported by a replica,
an LWT that lost, a syntax error) are not outages.

On a cluster, one node going away is not an outage either: the query in flight on
its connection, or a logged batch whose batchlog replica it was, times out while
the other nodes answer every other query.  So a timeout or a dropped connection
trips the breaker only when Cassandra answered nothing since that query was sent
(:meth:`Outage.failed` with ``sent``); "no host available" (the driver tried every
node it holds for up) always trips it.

Pure logic over a clock, so that it is tested with plain numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds during which queries fail at once after Cassandra was found unreachable.
DEFAULT_MEMORY = 2.0


class Outage:
    """Whether queries should be tried now; fed with each query's outcome.

    ``memory`` is in seconds; ``clock`` returns seconds (monotonic).  Use
    :meth:`admit` before a query: True means send it (when it returns True during
    an outage, the query is the probe and its outcome must be reported with
    :meth:`succeeded` or :meth:`failed`); False means fail at once.
    """

    def __init__(self, memory: float = DEFAULT_MEMORY, clock: Callable[[], float] = time.monotonic):
        self.memory = memory
        self.clock = clock
        #: Since when (clock seconds) Cassandra has been unreachable; None while it answers.
        self.since: float | None = None
        self._retry_at = 0.0
        self._probing = False
        self.reason = ""
        #: When (clock seconds) Cassandra last answered a query; None: never yet.
        self.answered_at: float | None = None
        #: Queries that found Cassandra unreachable (each waited for the driver to say so).
        self.failures = 0
        #: Queries that timed out or lost their connection while Cassandra answered others
        #: (one node away on a cluster): not outages.
        self.isolated = 0
        #: Queries failed at once, unsent, during an outage.
        self.refused = 0

    @property
    def down(self) -> bool:
        """True during an outage (from a failure until the next success)."""
        return self.since is not None

    def admit(self) -> bool:
        """True if a query may be sent now (always, unless in an outage)."""
        if self.since is None:
            return True
        if self._probing or self.clock() < self._retry_at:
            self.refused += 1
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        """A query got an answer from Cassandra: the outage, if any, is over."""
        now = self.clock()
        if self.since is not None:
            log.warning("Cassandra answers again after %.1f s unreachable", now - self.since)
        self.since = None
        self._probing = False
        self.answered_at = now

    def answered_since(self, sent: float) -> bool:
        """True if Cassandra answered a query at or after ``sent`` (clock seconds)."""
        return self.answered_at is not None and self.answered_at >= sent

    def failed(self, reason: str, sent: float | None = None) -> bool:
        """A query got no answer (``reason``: the driver's message); True if that is an
        outage (the breaker is now tripped).

        ``sent`` (clock seconds) is when the failed query was sent, for a failure that
        concerns one node (a client timeout, a dropped connection): it is an outage only
        if Cassandra answered no query since then.  None (the driver found no node to
        ask) is always an outage.
        """
        now = self.clock()
        if sent is not None and self.answered_since(sent):
            self.isolated += 1
            self._probing = False
            log.info("a query got no answer while Cassandra answered others: %s", reason)
            return False
        self.failures += 1
        if self.since is None:
            log.warning(
                "Cassandra unreachable (%s): failing queries at once for %.1f s at a time, "
                "serving cached entries past their TTL",
                reason,
                self.memory,
            )
            self.since = now
        self.reason = reason
        self._retry_at = now + self.memory
        self._probing = False
        return True

    def abandoned(self) -> None:
        """A query admitted as the probe ended without an outcome (it was cancelled)."""
        self._probing = False

    def describe(self) -> str:
        """One line for the error a query gets while it is not admitted."""
        since = self.clock() - self.since if self.since is not None else 0.0
        return f"Cassandra unreachable for {since:.1f} s ({self.reason})"
