"""The usage counters' reading rules (:mod:`cached.usage`), over an in-memory store."""

from __future__ import annotations

from types import SimpleNamespace

import trio
import trio.testing

from cached.usage import Usage


class GatedCounters:
    """A tenant's usage row; ``add_usage`` applies only once ``gate`` is set."""

    def __init__(self) -> None:
        self.bytes = 0
        self.inodes = 0
        self.gate = trio.Event()

    async def add_usage(self, bytes_delta: int, inodes_delta: int) -> None:
        await self.gate.wait()
        self.bytes += bytes_delta
        self.inodes += inodes_delta

    async def get_usage(self) -> tuple[int, int]:
        await trio.lowlevel.checkpoint()
        return self.bytes, self.inodes


async def test_a_statfs_during_a_flush_counts_the_flushed_change_once() -> None:
    """A read of the counters while a flush writes them waits for it: the change is counted
    once, not lost between the taken pending counts and the not yet applied update."""
    counters = GatedCounters()
    session = SimpleNamespace(tenant=(1, "e"), store=counters, owner=1, environment="e")
    usage = Usage(ttl=0.0)
    await usage.count(session, 100, 1)  # type: ignore[arg-type]
    seen: list[tuple[int, int]] = []

    async def statfs() -> None:
        seen.append(await usage.figures(session))  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(usage.flush)
        await trio.testing.wait_all_tasks_blocked()  # the flush waits in add_usage
        nursery.start_soon(statfs)
        await trio.testing.wait_all_tasks_blocked()
        counters.gate.set()
    assert seen == [(100, 1)]
    assert (counters.bytes, counters.inodes) == (100, 1)
