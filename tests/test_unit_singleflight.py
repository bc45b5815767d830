"""Unit tests of cached.singleflight under trio."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from cached.singleflight import FINISHED_KEPT, SingleFlight


class Work:
    """Async work that records its calls and finishes only once ``release`` is set."""

    def __init__(self) -> None:
        self.started: list[object] = []
        self.release = trio.Event()

    async def gated(self, value: object) -> str:
        self.started.append(value)
        await self.release.wait()
        return f"result-{value}"


async def test_concurrent_callers_of_one_key_share_one_run() -> None:
    flights = SingleFlight()
    work = Work()
    results: list[object] = []

    async def caller() -> None:
        results.append(await flights.run("k", work.gated, "v"))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(caller)
        await trio.testing.wait_all_tasks_blocked()
        # Every caller is waiting and the work has started once.
        assert work.started == ["v"]
        work.release.set()
    assert flights.calls == 1
    assert results == ["result-v"] * 20


async def test_sequential_calls_run_again() -> None:
    flights = SingleFlight()
    work = Work()
    work.release.set()
    assert await flights.run("k", work.gated, 1) == "result-1"
    assert await flights.run("k", work.gated, 2) == "result-2"
    assert flights.calls == 2
    assert work.started == [1, 2]


async def test_different_keys_run_separately_and_concurrently() -> None:
    flights = SingleFlight()
    work = Work()
    results: dict[str, list[object]] = {"a": [], "b": [], "c": []}

    async def caller(key: str) -> None:
        results[key].append(await flights.run(("c", key), work.gated, key))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            for key in results:
                nursery.start_soon(caller, key)
        await trio.testing.wait_all_tasks_blocked()
        # One run per key, all started although none finished: no key blocks another.
        assert sorted(work.started) == ["a", "b", "c"]  # type: ignore[type-var]
        work.release.set()
    assert flights.calls == 3
    assert results == {key: [f"result-{key}"] * 5 for key in results}


async def test_exception_reaches_every_waiter() -> None:
    flights = SingleFlight()
    calls = 0
    fail = trio.Event()

    async def failing() -> None:
        nonlocal calls
        calls += 1
        await fail.wait()
        raise OSError(5, "cassandra down")

    errors: list[BaseException] = []

    async def caller() -> None:
        try:
            await flights.run("k", failing)
        except OSError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(caller)
        await trio.testing.wait_all_tasks_blocked()
        fail.set()
    assert calls == 1
    assert flights.calls == 1
    assert len(errors) == 10
    assert all(isinstance(e, OSError) and e.args == (5, "cassandra down") for e in errors)


async def test_after_a_failure_the_key_can_run_again() -> None:
    flights = SingleFlight()

    async def boom() -> None:
        raise ValueError("x")

    async def fine() -> int:
        return 7

    with pytest.raises(ValueError, match="x"):
        await flights.run("k", boom)
    assert await flights.run("k", fine) == 7
    assert flights.calls == 2


async def test_cancelled_leader_hands_over_to_a_waiter() -> None:
    flights = SingleFlight()
    work = Work()
    leader_scope = trio.CancelScope()
    leader_outcome: list[str] = []
    waiter_results: list[object] = []

    async def leader() -> None:
        with leader_scope:
            await flights.run("k", work.gated, "first")
            leader_outcome.append("finished")
        if leader_scope.cancelled_caught:
            leader_outcome.append("cancelled")

    async def waiter() -> None:
        waiter_results.append(await flights.run("k", work.gated, "second"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leader)
        await trio.testing.wait_all_tasks_blocked()
        assert work.started == ["first"]
        for _ in range(3):
            nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert flights.calls == 1
        leader_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        # One waiter became the new leader; the others wait on it.
        assert flights.calls == 2
        assert work.started == ["first", "second"]
        work.release.set()
    assert leader_outcome == ["cancelled"]
    assert waiter_results == ["result-second"] * 3


async def test_cancelled_waiter_does_not_disturb_the_leader() -> None:
    flights = SingleFlight()
    work = Work()
    waiter_scope = trio.CancelScope()
    results: list[object] = []

    async def waiter() -> None:
        with waiter_scope:
            await flights.run("k", work.gated, "w")

    async def leader() -> None:
        results.append(await flights.run("k", work.gated, "l"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leader)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        waiter_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        work.release.set()
    assert results == ["result-l"]
    assert flights.calls == 1
    assert work.started == ["l"]


async def test_a_flight_started_before_not_before_is_not_joined() -> None:
    """A caller that must see what happened after ``not_before`` runs its own work
    rather than share a flight that began earlier; a later flight it joins."""
    now = [10.0]
    flights = SingleFlight(clock=lambda: now[0])
    release = trio.Event()
    runs: list[str] = []

    async def work(tag: str) -> str:
        runs.append(tag)
        await release.wait()
        return tag

    results: dict[str, str] = {}

    async def call(name: str, tag: str, not_before: float) -> None:
        results[name] = await flights.run("k", work, tag, not_before=not_before)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "early", "first", 0.0)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, "joiner", "unused", 9.0)  # the flight began at 10: joined
        nursery.start_soon(call, "later", "own", 11.0)  # began before 11: runs its own
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert runs == ["first", "own"]
    assert results == {"early": "first", "joiner": "first", "later": "own"}
    assert flights.calls == 2


async def test_finished_since_tells_a_caller_whose_miss_a_flight_ended_after() -> None:
    """A caller that missed the cache at 10 while a flight of its key was ending looks
    again instead of running the work a second time; older ends and other keys do not
    count, and only the last FINISHED_KEPT keys are remembered."""
    now = [10.0]
    flights = SingleFlight(clock=lambda: now[0])

    async def work() -> str:
        now[0] = 11.0  # the flight ends after the caller looked, at 10
        return "stored"

    assert not flights.finished_since("k", 10.0)
    await flights.run("k", work)
    assert flights.finished_since("k", 10.0)
    assert flights.finished_since("k", 11.0)
    assert not flights.finished_since("k", 11.5)  # looked after it ended: a real miss
    assert not flights.finished_since("other", 0.0)
    for index in range(FINISHED_KEPT):
        await flights.run(index, work)
    assert not flights.finished_since("k", 0.0)  # forgotten: the oldest of FINISHED_KEPT + 1
    assert flights.finished_since(FINISHED_KEPT - 1, 10.0)


async def test_run_many_serves_each_key_and_callers_of_one_key_join_it() -> None:
    """One call of the batch work for the keys not in flight; a ``run`` of one of them
    joins the batch; a key already in flight is left to its flight; a key the work does
    not answer fails its joiners with ``missing(key)``."""
    flights = SingleFlight()
    release = trio.Event()
    batches: list[list[object]] = []
    joined: dict[object, object] = {}

    async def batch(keys: list[object]) -> dict[object, str]:
        batches.append(keys)
        await release.wait()
        return {key: f"got-{key}" for key in keys if key != "gone"}

    async def join(key: object) -> None:
        try:
            joined[key] = await flights.run(key, Work().gated, key)  # must not run
        except LookupError as exc:
            joined[key] = exc

    own = Work()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flights.run, "busy", own.gated, "busy")
        await trio.testing.wait_all_tasks_blocked()
        result: dict[object, object] = {}

        async def many() -> None:
            result.update(
                await flights.run_many(
                    ["a", "busy", "gone", "a"], batch, missing=lambda k: LookupError(k)
                )
            )

        nursery.start_soon(many)
        await trio.testing.wait_all_tasks_blocked()
        assert flights.in_flight("a") and flights.in_flight("gone")
        nursery.start_soon(join, "a")
        nursery.start_soon(join, "gone")
        await trio.testing.wait_all_tasks_blocked()
        release.set()
        own.release.set()
    assert batches == [["a", "gone"]]
    assert result == {"a": "got-a"}
    assert joined["a"] == "got-a"
    assert isinstance(joined["gone"], LookupError)
    assert flights.calls == 2  # the batch and "busy"'s own run
    assert not flights.in_flight("a")


async def test_run_many_cancelled_lets_a_joiner_run_the_work_itself() -> None:
    flights = SingleFlight()
    work = Work()
    work.release.set()
    results: list[object] = []

    async def stuck(keys: list[object]) -> dict[object, object]:
        await trio.sleep_forever()
        raise AssertionError("not reached")

    async def join() -> None:
        results.append(await flights.run("k", work.gated, "k"))

    async with trio.open_nursery() as nursery:
        cancel = trio.CancelScope()

        async def many() -> None:
            with cancel:
                await flights.run_many(["k"], stuck)

        nursery.start_soon(many)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(join)
        await trio.testing.wait_all_tasks_blocked()
        assert work.started == []  # joined the batch
        cancel.cancel()
    assert results == ["result-k"]
    assert work.started == ["k"]


async def test_an_open_that_joined_a_batch_without_its_content_fetches_it_alone() -> None:
    """Contents.fetch_once joins a batch of siblings' bytes (Core.load_contents) by its
    content key; a batch that did not bring it (the row held other bytes) fails that
    key with NotInBatch, and the open then fetches the content itself."""
    from types import SimpleNamespace

    from cached.core import NotInBatch
    from cached.versions import Contents

    flights = SingleFlight()
    contents = Contents(SimpleNamespace(flights=flights))  # type: ignore[arg-type]
    fetched: list[object] = []

    async def fetch(s: object, inode: object) -> bytes:
        fetched.append(inode)
        return b"bytes"

    contents.fetch = fetch  # type: ignore[method-assign]
    s = SimpleNamespace(tenant=(1, "env"))
    inode = SimpleNamespace(content_id=b"cid")
    batch = Work()

    async def brings_nothing(keys: list[object]) -> dict[object, bytes]:
        await batch.gated(keys)
        return {}

    got: list[bytes | None] = []

    async def open_() -> None:
        got.append(await contents.fetch_once(s, inode))  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: flights.run_many([("c", s.tenant, b"cid")], brings_nothing, NotInBatch)
        )
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(open_)
        await trio.testing.wait_all_tasks_blocked()
        assert fetched == []  # joined the batch
        batch.release.set()
    assert got == [b"bytes"] and fetched == [inode]
