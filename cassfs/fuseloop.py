"""pyfuse3's request loop with one task switch fewer per request.

pyfuse3 3.5 serves ``/dev/fuse`` with worker tasks that each loop: wait until the device is
readable, read one request, run its handler (``_session_loop`` in pyfuse3's
``internal.pxi``).  Only one task may wait on the descriptor (trio raises
``BusyResourceError`` for a second), so pyfuse3 hands a ``trio.Lock`` from task to task:
the task woken by a request releases the lock, and the next task must run before the
descriptor is watched again.  That costs every request a second pass of trio's run loop
(one more ``epoll_wait`` and a task switch), although most warm requests (an open or a
getattr answered from the front's memory, a release) never suspend, and the task that
ran one could watch the descriptor again itself.

:class:`ReadinessGate` replaces pyfuse3's ``_wait_fuse_readable`` (a module global the
loop looks up at each call) with that: the task that finishes a request watches the
descriptor again unless another task already does; a task finding one watching parks.
A parked task is woken only when it is needed: when a request's handler suspends for the
first time (:func:`watched`, applied to every handler by ``cassfs.fs``), so that the
next request is read while that one waits for the daemon.  Measured on the warm
PHP-like request (WordPress tree, ``strace -c`` of the mount): 2 ``epoll_wait`` per
request became 1.

And a request that is already waiting on the device (the release the kernel sent after a
close while the front answered the open before it, or another reader's request) is read
at once: :meth:`ReadinessGate.wait` first polls the device without a timeout (one
``poll``), and only when nothing waits does it register with trio's epoll and yield.  It
yields anyway after :data:`READY_STREAK` requests in a row, so that the daemon's replies
and the feed's notifications are not starved by a stream of requests.

pyfuse3 keeps count of its waiting tasks in a C attribute this module cannot reach, so it
sees none waiting and starts a worker after each request until ``max_tasks``
(:data:`MAX_TASKS`); they park here, and the one parked last is woken first, so that only
as many serve as requests wait at once (a worker's libfuse buffer is touched only once it
reads a request).  The session's end wakes them all: the end of
``fuse_session_receive_buf`` (an unmount) or ``fuse_session_exit`` (``pyfuse3.terminate``)
calls :meth:`ReadinessGate.close` through :mod:`cassfs.openflags`.  Without that library,
or with a pyfuse3 without ``_wait_fuse_readable``, nothing is replaced (:func:`install`
returns False) and pyfuse3 runs its own loop.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

import pyfuse3
import trio

from cassfs import openflags

log = logging.getLogger(__name__)

T = TypeVar("T")

#: pyfuse3 worker tasks: requests that can wait for the daemon at once (pyfuse3's own
#: default is 99); more wait in the kernel's queue.  Linux queues up to 12 background
#: requests by default (max_background), plus one synchronous request per calling thread.
#: Unlike pyfuse3's, these workers never exit, so each keeps the libfuse buffer it touched
#: (about 1 MiB after a large write): at most 32 MiB or so in all.
MAX_TASKS = 32

#: Requests in a row that :meth:`ReadinessGate.wait` may hand out without a pass of trio's
#: run loop, when a request is already waiting on the device; then it yields once, so the
#: daemon's replies and the feed's work are never starved by a stream of requests.
READY_STREAK = 8


class ReadinessGate:
    """Who watches the FUSE device ``fd`` for the next request; the others park.

    ``wait()`` is pyfuse3's ``_wait_fuse_readable``: True when ``fd`` is readable and the
    caller may read one request, False when the session ended.  Runs on the trio thread
    only, as pyfuse3's loop does.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.watching = False
        self.closed = False
        self._parked: list[trio.lowlevel.Task] = []  # a stack: the last parked is woken first
        self._poll = select.poll()
        if fd >= 0:
            self._poll.register(fd, select.POLLIN)
        self._streak = 0

    async def wait(self) -> bool:
        """Watch ``fd`` if nobody does, else park until woken; True once readable, False
        once :meth:`close` was called or the descriptor was closed (``pyfuse3.terminate``
        calls ``trio.lowlevel.notify_closing``)."""
        while not self.closed:
            if not self.watching:
                if self._streak < READY_STREAK and self._ready():
                    self._streak += 1
                    return True
                self._streak = 0
                self.watching = True
                try:
                    await trio.lowlevel.wait_readable(self.fd)
                except trio.ClosedResourceError:
                    self.close()
                    return False
                finally:
                    self.watching = False
                return True
            await self._park()
        return False

    def _ready(self) -> bool:
        """True when a request waits on the device now (a poll with no timeout: one
        system call instead of a registration and a pass of trio's run loop)."""
        return any(events & select.POLLIN for _, events in self._poll.poll(0))

    async def _park(self) -> None:
        task = trio.lowlevel.current_task()
        self._parked.append(task)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._parked.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def suspending(self) -> None:
        """A handler suspends: wake a parked task to watch ``fd`` meanwhile, unless one
        does already.  The task parked last goes first, so that the tasks that serve
        are as few as the requests that wait at once: each task's libfuse buffer (up to
        the largest request, 1 MiB for a write) is touched only once it reads a request."""
        if not self.watching and self._parked:
            trio.lowlevel.reschedule(self._parked.pop())

    def close(self) -> None:
        """The session ended: every parked and later ``wait()`` returns False."""
        self.closed = True
        while self._parked:
            trio.lowlevel.reschedule(self._parked.pop())

    def parked(self) -> int:
        """How many tasks are parked."""
        return len(self._parked)


#: The gate of this process's mount, once :func:`install` ran (one mount per process).
gate: ReadinessGate | None = None
#: pyfuse3's own ``_wait_fuse_readable`` while the gate replaces it.
_replaced: list[Any] = []


class _Watched:
    """``await`` runs ``coro`` and calls :meth:`ReadinessGate.suspending` at its first
    suspension (its first yield to trio); every later yield, value and exception passes
    through unchanged."""

    __slots__ = ("coro", "gate")

    def __init__(self, coro: Coroutine[Any, Any, Any], gate: ReadinessGate) -> None:
        self.coro = coro
        self.gate = gate

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        try:
            yielded = coro.send(None)
        except StopIteration as done:
            return done.value
        self.gate.suspending()
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown in by the awaiting side: pass it on
                try:
                    yielded = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as done:
                    return done.value


def watched(coro: Coroutine[Any, Any, T]) -> Any:
    """What a FUSE handler awaits instead of ``coro``: the same result or exception, and
    another worker watches the device once ``coro`` first suspends.  ``coro`` itself
    when no gate is installed."""
    return coro if gate is None else _Watched(coro, gate)


def install() -> bool:
    """Replace pyfuse3's ``_wait_fuse_readable`` with a :class:`ReadinessGate` on the
    session's device; call after ``pyfuse3.init`` and before ``pyfuse3.main``, on the trio
    thread.  False (nothing replaced) without :mod:`cassfs.openflags`'s library or the
    pyfuse3 function."""
    global gate
    fd = openflags.session_fd()
    if fd is None or not hasattr(pyfuse3, "_wait_fuse_readable"):
        log.info("pyfuse3's own request loop (no gate: library loaded %s)", openflags.LOADED)
        return False
    new = ReadinessGate(fd)
    token = trio.lowlevel.current_trio_token()

    def session_ended() -> None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # another thread ended it
            try:
                token.run_sync_soon(new.close)
            except trio.RunFinishedError:
                pass
        else:
            new.close()

    if not openflags.on_session_end(session_ended):
        return False
    _replaced.append(pyfuse3._wait_fuse_readable)  # type: ignore[attr-defined]
    pyfuse3._wait_fuse_readable = new.wait  # type: ignore[attr-defined]
    gate = new
    log.debug("request loop: readiness gate on fd %d", fd)
    return True


def uninstall() -> None:
    """Undo :func:`install` (after ``pyfuse3.main`` returned); nothing if not installed."""
    global gate
    if gate is None:
        return
    openflags.on_session_end(None)
    pyfuse3._wait_fuse_readable = _replaced.pop()  # type: ignore[attr-defined]
    gate = None
