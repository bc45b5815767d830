"""cached.atimes over plain data: what is written, in which batches, and what is lost."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from cached import atimes
from cached.atimes import AccessTimes
from cached.errors import StorageError


class FakeStore:
    """A tenant's store: records each ``set_atimes`` call; fails the next one if told."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []
        self.fail_next = False

    async def set_atimes(self, accesses: Sequence[tuple[int, int]]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise StorageError("the node went away")
        self.batches.append(list(accesses))


def session(store: FakeStore, environment: str = "prod") -> Any:
    return SimpleNamespace(tenant=(1, environment), store=store)


async def test_the_latest_access_per_inode_is_written_once() -> None:
    store = FakeStore()
    times = AccessTimes()
    s = session(store)
    times.record(s, 7, 2_000)
    times.record(s, 7, 1_000)  # an older access arriving late changes nothing
    times.record(s, 7, 3_000)
    times.record(s, 8, 5_000)
    assert len(times) == 2
    await times.flush()
    assert store.batches == [[(7, 3_000), (8, 5_000)]]
    await times.flush()
    assert len(store.batches) == 1  # nothing left to write


async def test_batches_are_per_tenant_and_bounded() -> None:
    first, second = FakeStore(), FakeStore()
    times = AccessTimes()
    for ino in range(atimes.BATCH + 3):
        times.record(session(first), ino, 1_000 + ino)
    times.record(session(second, "staging"), 1, 9_000)
    await times.flush()
    assert [len(batch) for batch in first.batches] == [atimes.BATCH, 3]
    assert second.batches == [[(1, 9_000)]]


async def test_a_failed_batch_is_dropped_and_the_rest_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore()
    times = AccessTimes()
    for ino in range(atimes.BATCH + 1):
        times.record(session(store), ino, 1_000)
    store.fail_next = True
    await times.flush()
    assert store.batches == [[(atimes.BATCH, 1_000)]]
    assert "access times of 32 inodes not recorded" in caplog.text
    assert len(times) == 0


async def test_run_flushes_periodically_and_once_more_when_cancelled() -> None:
    store = FakeStore()
    times = AccessTimes(flush_every=3600.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(times.run)
        await trio.testing.wait_all_tasks_blocked()
        times.record(session(store), 1, 1_000)
        nursery.cancel_scope.cancel()
    assert store.batches == [[(1, 1_000)]]


async def test_run_writes_within_the_flush_interval(autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore()
    times = AccessTimes(flush_every=0.5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(times.run)
        await trio.sleep(0.1)
        times.record(session(store), 1, 1_000)
        await trio.sleep(0.39)
        assert store.batches == []  # the first flush is at 0.5 s
        await trio.sleep(0.02)
        assert store.batches == [[(1, 1_000)]]
        nursery.cancel_scope.cancel()
