"""Single-flight: concurrent callers of the same key share one run of the work.

The flight is registered before the first ``await`` (trio switches tasks only
at checkpoints), so N tasks asking for one cold key cause exactly one call.
If the leader is cancelled, a waiter takes over rather than failing.  Pattern
from S3QL ``block_cache.py`` (``in_flight``), written anew here.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")

#: How many keys' last flight end times are kept for :meth:`SingleFlight.finished_since`.
FINISHED_KEPT = 4096


class _Flight(Generic[T]):
    def __init__(self, started: float) -> None:
        self.started = started
        self.done = trio.Event()
        self.ok = False
        self.result: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """Deduplicates concurrent ``await run(key, fn, *args)`` calls per ``key``.

    ``clock`` (seconds) stamps when each flight started, for ``not_before``.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._flights: dict[Hashable, _Flight[Any]] = {}
        #: When the last flight of each recent key ended (on ``clock``), oldest first.
        self._finished: OrderedDict[Hashable, float] = OrderedDict()
        self.clock = clock
        self.calls = 0  # how many times work actually ran (for tests and stats)

    def finished_since(self, key: Hashable, since: float) -> bool:
        """True if a flight of ``key`` ended at or after ``since`` (seconds on :attr:`clock`).

        A caller that looked for a result (e.g. in a cache) from ``since`` on, did not
        find it, and is about to :meth:`run` the work, looks again when this is True:
        a flight that ended meanwhile may have stored it (only the last
        :data:`FINISHED_KEPT` keys are remembered; an older one answers False).
        """
        ended = self._finished.get(key)
        return ended is not None and ended >= since

    async def run(
        self,
        key: Hashable,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        not_before: float = 0.0,
    ) -> T:
        """Return ``await fn(*args)``, sharing one run with concurrent callers of ``key``.

        An exception from the work is raised in every caller that shared it.  A
        flight that started before ``not_before`` (on :attr:`clock`) is not joined:
        the caller runs the work itself, unshared (what it returns may predate
        something the caller must see).
        """
        while True:
            flight = self._flights.get(key)
            if flight is None:
                break
            if flight.started < not_before:
                self.calls += 1
                return await fn(*args)
            await flight.done.wait()
            if flight.ok:
                return flight.result  # type: ignore[no-any-return]
            if flight.error is not None:
                raise flight.error
            # The leader was cancelled: try again, perhaps as the new leader.
        flight = _Flight[T](self.clock())
        self._flights[key] = flight
        self.calls += 1
        try:
            result = await fn(*args)
        except Exception as exc:
            flight.error = exc
            raise
        else:
            flight.ok, flight.result = True, result
            return result
        finally:
            self._land(key, flight)

    def in_flight(self, key: Hashable) -> bool:
        """True while a flight of ``key`` runs."""
        return key in self._flights

    async def run_many(
        self,
        keys: Sequence[Hashable],
        fn: Callable[[list[Hashable]], Awaitable[Mapping[Hashable, Any]]],
        missing: Callable[[Hashable], Exception] = KeyError,
    ) -> dict[Hashable, Any]:
        """One flight for every key of ``keys`` not in flight, all served by one
        ``await fn(those keys)``; returns ``{key: result}`` for those keys.

        ``fn`` returns a result per key it was given; a key it leaves out fails its
        flight with ``missing(key)`` (a caller that joined it sees that).  Keys already in
        flight are left to their own flights and are not in the result: this is for
        work done ahead of need (prefetch), which a later :meth:`run` of a key joins.
        An exception from ``fn`` is raised here and in every caller that joined.
        """
        mine: dict[Hashable, _Flight[Any]] = {}
        for key in keys:
            if key not in self._flights and key not in mine:
                mine[key] = self._flights[key] = _Flight[Any](self.clock())
        if not mine:
            return {}
        self.calls += 1
        results: Mapping[Hashable, Any] = {}
        error: BaseException | None = None
        finished = False
        try:
            results = await fn(list(mine))
            finished = True
        except Exception as exc:
            error = exc
            raise
        finally:
            # Cancelled (neither finished nor failed): the waiters try again themselves.
            for key, flight in mine.items():
                if key in results:
                    flight.ok, flight.result = True, results[key]
                elif error is not None:
                    flight.error = error
                elif finished:
                    flight.error = missing(key)
                self._land(key, flight)
        return {key: results[key] for key in mine if key in results}

    def _land(self, key: Hashable, flight: _Flight[Any]) -> None:
        """End ``flight`` of ``key``: forget it, note when it ended, wake its waiters."""
        del self._flights[key]
        self._finished[key] = self.clock()
        self._finished.move_to_end(key)
        if len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)
        flight.done.set()
