"""The outage memory (cached.outage.Outage) over a hand-driven clock."""

from __future__ import annotations

from cached.outage import Outage


class Clock:
    """Seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_queries_go_through_while_cassandra_answers() -> None:
    outage = Outage(2.0, Clock())
    assert all(outage.admit() for _ in range(5))
    outage.succeeded()
    assert not outage.down and outage.refused == 0


def test_after_a_failure_queries_fail_at_once_until_the_memory_passes() -> None:
    clock = Clock()
    outage = Outage(2.0, clock)
    outage.failed("NoHostAvailable")
    assert outage.down
    assert [outage.admit() for _ in range(3)] == [False, False, False]
    clock.now += 1.9
    assert not outage.admit()
    clock.now += 0.2
    assert outage.admit()  # the probe
    assert not outage.admit()  # one probe at a time
    assert (outage.failures, outage.refused) == (1, 5)


def test_a_failed_probe_starts_another_period_and_a_successful_one_ends_the_outage() -> None:
    clock = Clock()
    outage = Outage(2.0, clock)
    outage.failed("timeout")
    clock.now += 2.0
    assert outage.admit()
    outage.failed("timeout again")
    assert not outage.admit()
    assert "timeout again" in outage.describe()
    clock.now += 2.0
    assert outage.admit()
    outage.succeeded()
    assert not outage.down
    assert all(outage.admit() for _ in range(3))


def test_a_cancelled_probe_lets_the_next_query_probe() -> None:
    clock = Clock()
    outage = Outage(2.0, clock)
    outage.failed("timeout")
    clock.now += 2.5
    assert outage.admit()
    outage.abandoned()  # its task was cancelled before an answer
    assert outage.admit()
