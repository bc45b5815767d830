"""The reaper's queue of deferred deletions: order, duplicates, persistence, retries."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from cached import reaper as reaper_module
from cached.errors import StorageError
from cached.reaper import Deletion, Reaper

TENANT = (7, "prod")


async def test_deletions_fall_due_after_the_delay_in_due_order() -> None:
    reaper = Reaper(None, 100.0)
    first = await reaper.schedule(*TENANT, 11, b"v1", 10, 4)
    second = await reaper.schedule(*TENANT, 12)
    assert reaper.due(first.due - 1) == []
    assert reaper.due(second.due) == [first, second]
    assert reaper.due(second.due + 1000) == []  # taken once


async def test_a_deletion_queued_twice_keeps_its_first_due_time() -> None:
    reaper = Reaper(None, 100.0)
    first = await reaper.schedule(*TENANT, 11)
    again = await reaper.schedule(*TENANT, 11)
    assert again is first
    assert len(reaper) == 1
    assert reaper.due(first.due) == [first]


async def test_a_negative_delay_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Reaper(None, -1.0)


async def test_the_queue_survives_a_restart(tmp_path: Path) -> None:
    reaper = Reaper(tmp_path / "reaper", 100.0)
    await reaper.open()
    queued = await reaper.schedule(*TENANT, 11, b"v1", 10, 4)
    restarted = Reaper(tmp_path / "reaper", 100.0)
    await restarted.open()
    assert len(restarted) == 1
    assert restarted.due(queued.due) == [queued]


async def test_run_executes_what_is_due_and_forgets_it(tmp_path: Path) -> None:
    reaper = Reaper(tmp_path / "reaper", 0.0)
    await reaper.open()
    done: list[Deletion] = []
    finished = trio.Event()

    async def execute(deletion: Deletion) -> None:
        done.append(deletion)
        finished.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(reaper.run, execute)
        queued = await reaper.schedule(*TENANT, 11)
        with trio.fail_after(10):
            await finished.wait()
        nursery.cancel_scope.cancel()
    assert done == [queued]
    assert len(reaper) == 0
    restarted = Reaper(tmp_path / "reaper", 0.0)
    await restarted.open()
    assert len(restarted) == 0  # done is gone from disk too


async def test_a_failed_deletion_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reaper_module, "RETRY_AFTER", 0.01)
    reaper = Reaper(tmp_path / "reaper", 0.0)
    await reaper.open()
    tries: list[Deletion] = []
    succeeded = trio.Event()

    async def execute(deletion: Deletion) -> None:
        tries.append(deletion)
        if len(tries) == 1:
            raise StorageError("Cassandra is down")
        succeeded.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(reaper.run, execute)
        queued = await reaper.schedule(*TENANT, 11)
        with trio.fail_after(10):
            await succeeded.wait()
        nursery.cancel_scope.cancel()
    assert [t.key for t in tries] == [queued.key, queued.key]
    assert tries[1].due > queued.due
    assert len(reaper) == 0
