"""KeyedLocks (``cached/locks.py``): one holder per key, waiters in arrival order, other
keys free, a waiter's cancel harmless, and nothing kept once a key's users are gone."""

from __future__ import annotations

import trio
import trio.testing

from cached.locks import KeyedLocks


async def test_one_holder_per_key_waiters_in_order_and_other_keys_free() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    release = trio.Event()

    async def hold(key: str, name: str) -> None:
        async with locks(key):
            order.append(f"{name} in")
            if name == "first":
                await release.wait()
            order.append(f"{name} out")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "a", "first")
        await trio.testing.wait_all_tasks_blocked()
        for name in ("second", "third"):
            nursery.start_soon(hold, "a", name)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "b", "other key")
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["first in", "other key in", "other key out"]
        assert len(locks) == 1  # b's lock is gone; a's is held and waited for
        release.set()
    assert order[3:] == ["first out", "second in", "second out", "third in", "third out"]
    assert len(locks) == 0


async def test_a_waiter_cancelled_leaves_the_lock_to_the_next_and_nothing_behind() -> None:
    locks = KeyedLocks()
    release = trio.Event()
    got: list[str] = []

    async def hold() -> None:
        async with locks("k"):
            await release.wait()

    async def wait_then(name: str) -> None:
        async with locks("k"):
            got.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as doomed:
            nursery.start_soon(wait_then, "next")
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as inner:
                inner.start_soon(wait_then, "cancelled")
                await trio.testing.wait_all_tasks_blocked()
                doomed.cancel()
        release.set()
    assert got == ["next"]
    assert len(locks) == 0
    async with locks("k"):  # free again, at once
        assert len(locks) == 1
