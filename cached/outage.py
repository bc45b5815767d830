"""Remembering that Cassandra is unreachable, so that an outage costs one timeout, not many.

Without memory, every query during an outage waits out its own timeout: one
lookup made up to five queries in a row (about 50 s per path component with the
default 10 s timeout), and the next request paid again.  :class:`Outage` is a
circuit breaker (M. Nygard, *Release It!*, 2007, ch. 5): after a failure that
says the node cannot be reached, queries fail at once for ``memory`` seconds;
then one query at a time goes through as a probe, and the first success ends
the outage.  Answers from a node that is up (a timeout reported by a replica,
an LWT that lost, a syntax error) are not outages.

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
        #: Queries that found Cassandra unreachable (each waited for the driver to say so).
        self.failures = 0
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
        if self.since is not None:
            log.warning(
                "Cassandra answers again after %.1f s unreachable", self.clock() - self.since
            )
        self.since = None
        self._probing = False

    def failed(self, reason: str) -> None:
        """A query found Cassandra unreachable (``reason``: the driver's message)."""
        now = self.clock()
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

    def abandoned(self) -> None:
        """A query admitted as the probe ended without an outcome (it was cancelled)."""
        self._probing = False

    def describe(self) -> str:
        """One line for the error a query gets while it is not admitted."""
        since = self.clock() - self.since if self.since is not None else 0.0
        return f"Cassandra unreachable for {since:.1f} s ({self.reason})"
