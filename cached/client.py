"""Client of the cache daemon: many concurrent calls over one unix-socket connection.

Used by the FUSE front (inside its trio run) and, through :func:`call_once`, by
CLI commands.  Every failure to reach the daemon becomes ``DaemonUnavailable``
(EIO); an error reply is raised as the :mod:`cached.errors` class of its errno.
"""

from __future__ import annotations

import errno
import itertools
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from cached import protocol
from cached.api import SOCKET_NAME, socket_path  # noqa: F401 (re-exported)
from cached.errors import CassfsError, DaemonUnavailable, from_wire
from cached.sendnow import write_now

log = logging.getLogger(__name__)


class _Pending:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: CassfsError | None = None
        self.result: Any = None


#: Called with ``(event, params)`` of each notification, in the trio thread; returns None,
#: or work to finish (an async function of no arguments that never raises) before the
#: notification is acknowledged.
NotificationHandler = Callable[[str, dict[str, Any]], Callable[[], Awaitable[None]] | None]


class DaemonClient:
    """A connection to the daemon at ``path``.

    Open with ``async with open_client(path) as client``.  ``on_notification``
    (a :data:`NotificationHandler`) is called for each notification; the daemon
    hears that a notification was acted on once the work it returned is done.
    ``hello`` parameters given to :meth:`hello` are said again after a reconnect,
    which is then told as a ``purged`` notification with the daemon's epoch
    (notifications sent meanwhile were lost).
    """

    def __init__(
        self,
        path: Path,
        nursery: trio.Nursery,
        on_notification: NotificationHandler | None = None,
    ) -> None:
        self.path = path
        self.on_notification = on_notification
        self._stream: trio.SocketStream | None = None
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._send_lock = trio.Lock()
        self._connect_lock = trio.Lock()
        self._nursery = nursery
        self._hello: dict[str, Any] | None = None
        #: Called (under the connect lock) when the daemon is gone after ``hello``:
        #: starts it again and returns a connected stream, or raises DaemonUnavailable.
        self.restart: Callable[[], Awaitable[trio.SocketStream]] | None = None

    async def aclose(self) -> None:
        """Close the connection; calls in flight fail with DaemonUnavailable."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def connect(self) -> None:
        """Connect now (calls connect on demand too); DaemonUnavailable on failure."""
        await self._ensure_connected()

    async def _ensure_connected(self) -> trio.SocketStream:
        async with self._connect_lock:
            if self._stream is not None:
                return self._stream
            try:
                stream = await trio.open_unix_socket(str(self.path))
            except OSError as exc:
                if self.restart is None or self._hello is None:
                    raise DaemonUnavailable(f"no cache daemon at {self.path}: {exc}") from exc
                log.warning("the cache daemon is gone (%s): starting it again", exc)
                stream = await self.restart()
            self._nursery.start_soon(self._reader, stream)
            if self._hello is not None:
                # The stream serves calls only once its session exists: a failed
                # replay closes it, and the next call tries again from the start.
                try:
                    hello = await self._call_on(stream, "hello", self._hello)
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
                    raise
                log.info("reconnected to the cache daemon")
                if self.on_notification is not None:
                    # Notifications sent while disconnected are lost, and a restarted
                    # daemon did not follow the feed meanwhile: trust nothing told before.
                    work = self.on_notification("purged", {"epoch": hello["epoch"]})
                    if work is not None:
                        self._nursery.start_soon(work)
            self._stream = stream
            return stream

    async def _acknowledge(
        self, stream: trio.SocketStream, seq: int, work: Callable[[], Awaitable[None]] | None
    ) -> None:
        """Finish ``work`` (the handler's, which must not raise), then tell the daemon the
        notification numbered ``seq`` was acted on (the daemon waits for it before it
        answers the change); never raises."""
        if work is not None:
            await work()
        try:
            await self._call_on(stream, "seen", {"seq": seq})
        except CassfsError as exc:
            log.debug("notification %d not acknowledged: %s", seq, exc)

    async def _reader(self, stream: trio.SocketStream) -> None:
        decoder = protocol.Decoder()
        try:
            while True:
                data = await stream.receive_some(1024 * 1024)
                if not data:
                    break
                for message in decoder.feed(data):
                    if isinstance(message, protocol.Response):
                        pending = self._pending.pop(message.msgid, None)
                        if pending is None:
                            continue
                        if message.error is not None:
                            pending.error = from_wire(message.error)
                        pending.result = message.result
                        pending.done.set()
                    elif isinstance(message, protocol.Notification):
                        work = None
                        if self.on_notification is not None:
                            try:
                                work = self.on_notification(message.event, message.params)
                            except Exception:
                                log.exception("notification handler failed")
                        seq = message.params.get("seq")
                        if isinstance(seq, int):
                            self._nursery.start_soon(self._acknowledge, stream, seq, work)
                        elif work is not None:
                            self._nursery.start_soon(work)
        except trio.ClosedResourceError:
            log.debug("connection to the cache daemon closed")
        except (trio.BrokenResourceError, protocol.ProtocolError) as exc:
            log.warning("connection to the cache daemon broke: %s", exc)
        finally:
            if self._stream is stream:
                self._stream = None
            for pending in self._pending.values():
                pending.error = DaemonUnavailable("the cache daemon closed the connection")
                pending.done.set()
            self._pending.clear()

    async def _call_on(self, stream: trio.SocketStream, method: str, params: dict[str, Any]) -> Any:
        msgid = next(self._ids) % 2**32
        pending = _Pending()
        self._pending[msgid] = pending
        frame = protocol.pack_request(msgid, method, params)
        try:
            await self._send(stream, frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._pending.pop(msgid, None)
            raise DaemonUnavailable(f"sending {method} failed: {exc}") from exc
        try:
            await pending.done.wait()
        finally:
            self._pending.pop(msgid, None)
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def _send(self, stream: trio.SocketStream, frame: bytes) -> None:
        """Send ``frame`` whole, never into the middle of another task's frame.

        While no other send is under way the frame is written at once, without a pass
        of trio's run loop (a lock taken and a ``send_all`` cost two per call); what
        the socket does not take then is sent under the send lock, taken before anything
        else can run.  Raises ``trio.BrokenResourceError`` or ``trio.ClosedResourceError``.
        """
        if not self._send_lock.locked():
            sent = write_now(stream, frame)  # send_all below reports errors
            if sent == len(frame):
                return
            if sent:
                self._send_lock.acquire_nowait()
                try:
                    await stream.send_all(frame[sent:])
                finally:
                    self._send_lock.release()
                return
        async with self._send_lock:
            await stream.send_all(frame)

    async def call(self, method: str, **params: Any) -> Any:
        """Call ``method`` with ``params`` and return its result.

        Raises the :mod:`cached.errors` class of the reply's errno, or
        ``DaemonUnavailable`` (EIO) when the daemon cannot be reached.
        """
        stream = self._stream  # connected: no lock to take
        if stream is None:
            stream = await self._ensure_connected()
        return await self._call_on(stream, method, params)

    async def hello(self, owner: int, environment: str, read_only: bool = False) -> dict[str, Any]:
        """Open the tenant's session; remembered for reconnects (a restarted daemon hears
        the same ``hello``).  With ``read_only`` the daemon refuses the session's changes
        (``ReadOnly``, EROFS) and writes nothing for it; ``ReadOnly`` too when the tenant
        has no root yet.  Raises the errors of :meth:`call`."""
        # This client acknowledges every numbered notification (see _reader).
        params: dict[str, Any] = {"owner": owner, "environment": environment, "acks": True}
        if read_only:  # only then: a daemon older than read-only mounts refuses it (EINVAL)
            params["read_only"] = True
        result = await self.call("hello", **params)
        self._hello = params
        return result  # type: ignore[no-any-return]


@asynccontextmanager
async def open_client(
    path: Path, on_notification: NotificationHandler | None = None
) -> AsyncIterator[DaemonClient]:
    """Connect to the daemon at ``path``; the connection closes when the block ends.

    Raises ``DaemonUnavailable`` (EIO) when nothing listens there.
    """
    async with trio.open_nursery() as nursery:
        client = DaemonClient(path, nursery, on_notification)
        try:
            await client.connect()
            yield client
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()


def call_once(cache_dir: Path, method: str, timeout: float = 30.0, **params: Any) -> Any:
    """Blocking: connect to ``cache_dir``'s daemon, call ``method``, disconnect.

    For CLI commands and tests, outside any trio run (plain blocking socket).
    Raises ``DaemonUnavailable`` (EIO, or ETIMEDOUT after ``timeout`` seconds)
    when no daemon answers, and the reply's error class otherwise.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path(cache_dir)))
            sock.sendall(protocol.pack_request(1, method, params))
            decoder = protocol.Decoder()
            while True:
                data = sock.recv(1024 * 1024)
                if not data:
                    raise DaemonUnavailable(f"the cache daemon closed the connection ({method})")
                for message in decoder.feed(data):
                    if isinstance(message, protocol.Response) and message.msgid == 1:
                        if message.error is not None:
                            raise from_wire(message.error)
                        return message.result
    except TimeoutError as exc:
        raise DaemonUnavailable(
            f"the cache daemon did not answer {method} in {timeout} s", err=errno.ETIMEDOUT
        ) from exc
    except OSError as exc:
        raise DaemonUnavailable(f"no cache daemon at {socket_path(cache_dir)}: {exc}") from exc
