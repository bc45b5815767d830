"""Unit tests of cassfs.fuseloop: the readiness gate over a real socket pair (standing for
the FUSE device) and the first-suspension hook, under trio."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
import trio
import trio.testing

from cassfs.fuseloop import READY_STREAK, ReadinessGate, _Watched


@pytest.fixture
def device() -> Iterator[tuple[socket.socket, socket.socket]]:
    """``(reader, writer)``: the reader's descriptor becomes readable once the writer sends."""
    reader, writer = socket.socketpair()
    yield reader, writer
    reader.close()
    writer.close()


async def test_one_task_watches_the_device_and_the_others_park(
    device: tuple[socket.socket, socket.socket],
) -> None:
    reader, writer = device
    gate = ReadinessGate(reader.fileno())
    answers: list[tuple[str, bool]] = []

    async def worker(name: str) -> None:
        answers.append((name, await gate.wait()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker, "first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(worker, "second")
        await trio.testing.wait_all_tasks_blocked()
        assert (gate.watching, gate.parked()) == (True, 1)

        writer.send(b"request")
        await trio.testing.wait_all_tasks_blocked()
        # the first is told; the second stays parked: nothing suspended, so nobody needs it
        assert answers == [("first", True)]
        assert (gate.watching, gate.parked()) == (False, 1)

        gate.suspending()  # the first one's handler suspends: the second takes the device
        await trio.testing.wait_all_tasks_blocked()
        assert answers == [("first", True), ("second", True)]  # the byte is still unread
        assert gate.parked() == 0


async def test_the_task_parked_last_is_woken_first(
    device: tuple[socket.socket, socket.socket],
) -> None:
    """Few tasks serve (their buffers stay few): the others stay parked."""
    reader, writer = device
    gate = ReadinessGate(reader.fileno())
    woken: list[str] = []

    async def worker(name: str) -> None:
        await gate.wait()
        woken.append(name)

    async with trio.open_nursery() as nursery:
        for name in ("watcher", "older", "newer"):
            nursery.start_soon(worker, name)
            await trio.testing.wait_all_tasks_blocked()
        writer.send(b"request")
        await trio.testing.wait_all_tasks_blocked()
        gate.suspending()
        await trio.testing.wait_all_tasks_blocked()
        assert woken == ["watcher", "newer"] and gate.parked() == 1
        gate.close()
    assert woken == ["watcher", "newer", "older"]


async def test_a_suspending_handler_wakes_nobody_while_a_task_watches(
    device: tuple[socket.socket, socket.socket],
) -> None:
    reader, _writer = device
    gate = ReadinessGate(reader.fileno())
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(gate.wait)
        await trio.testing.wait_all_tasks_blocked()
        gate.suspending()
        await trio.testing.wait_all_tasks_blocked()
        assert (gate.watching, gate.parked()) == (True, 1)
        nursery.cancel_scope.cancel()
    assert not gate.watching  # a cancelled watcher leaves the device to the next one


async def answers_after(gate: ReadinessGate, workers: int, end: Callable[[], None]) -> list[bool]:
    """What ``workers`` tasks waiting at ``gate`` answer once ``end()`` runs while they wait."""
    answers: list[bool] = []

    async def worker() -> None:
        answers.append(await gate.wait())

    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        end()
    return answers


async def test_the_end_of_the_session_answers_every_task_false(
    device: tuple[socket.socket, socket.socket],
) -> None:
    reader, _writer = device
    gate = ReadinessGate(reader.fileno())

    def end() -> None:
        gate.close()  # as fuse_session_exit or an unmount's ENODEV calls it
        trio.lowlevel.notify_closing(reader)  # as pyfuse3.terminate does for the watcher

    assert await answers_after(gate, 3, end) == [False, False, False]
    assert await gate.wait() is False


async def test_the_watcher_answers_false_when_the_device_is_closed_under_it(
    device: tuple[socket.socket, socket.socket],
) -> None:
    reader, _writer = device
    gate = ReadinessGate(reader.fileno())
    # pyfuse3.terminate, with no exit callback
    answers = await answers_after(gate, 2, lambda: trio.lowlevel.notify_closing(reader))
    assert answers == [False, False] and gate.closed


async def test_a_waiting_request_is_answered_without_yielding_until_a_streak_ends(
    device: tuple[socket.socket, socket.socket],
) -> None:
    """A request already on the device is handed out at once (no pass of trio's run loop,
    so a cancelled scope does not stop it), READY_STREAK times in a row; then the gate
    yields to trio once, so other tasks run during a stream of requests."""
    reader, writer = device
    gate = ReadinessGate(reader.fileno())
    writer.send(b"request")  # never read here: the device stays readable
    answered = 0
    with trio.CancelScope() as scope:
        scope.cancel()
        while True:
            assert await gate.wait()
            answered += 1
    assert scope.cancelled_caught and answered == READY_STREAK
    assert not gate.watching
    # the streak starts again after that yield
    assert await gate.wait()


async def test_with_no_request_waiting_the_gate_watches_the_device(
    device: tuple[socket.socket, socket.socket],
) -> None:
    reader, writer = device
    gate = ReadinessGate(reader.fileno())

    def request() -> None:
        assert gate.watching  # nothing was readable: it waits on the device
        writer.send(b"request")

    assert await answers_after(gate, 1, request) == [True]


class CountingGate(ReadinessGate):
    def __init__(self) -> None:
        super().__init__(-1)
        self.suspensions = 0

    def suspending(self) -> None:
        self.suspensions += 1


async def test_a_handler_that_never_suspends_is_answered_without_a_hook() -> None:
    gate = CountingGate()

    async def answer() -> str:
        return "attributes"

    assert await _Watched(answer(), gate) == "attributes"
    assert gate.suspensions == 0


async def test_the_hook_runs_once_at_the_first_suspension_and_results_pass_through() -> None:
    gate = CountingGate()
    seen: list[int] = []

    async def fetch() -> bytes:
        seen.append(gate.suspensions)
        await trio.lowlevel.checkpoint()
        seen.append(gate.suspensions)
        await trio.lowlevel.checkpoint()
        return b"content"

    assert await _Watched(fetch(), gate) == b"content"
    assert (seen, gate.suspensions) == ([0, 1], 1)

    async def fails() -> None:
        await trio.lowlevel.checkpoint()
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        await _Watched(fails(), gate)


async def test_cancellation_reaches_the_handler_through_the_hook() -> None:
    gate = CountingGate()
    cleaned: list[str] = []

    async def waits_forever() -> None:
        try:
            await trio.sleep_forever()
        finally:
            cleaned.append("finally")

    with trio.move_on_after(0.01) as scope:
        await _Watched(waits_forever(), gate)
    assert scope.cancelled_caught and cleaned == ["finally"] and gate.suspensions == 1
