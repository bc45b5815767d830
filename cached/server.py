"""The daemon's unix socket server: framing, sessions and dispatch to :class:`Service`.

trio has no unix-socket listener helper, so the socket is made by hand
(bind, chmod 0600, listen) and served with ``trio.serve_listeners``.  One
connection carries many concurrent requests: each request runs in its own task
and every outgoing frame goes through one writer task.  A failure in one
connection never reaches the others.
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
import time
from pathlib import Path
from typing import Any

import trio

from cached import protocol
from cached.errors import CassfsError, InvalidArgument, StorageError
from cached.recovery import STEP_DEADLINE
from cached.service import Service, Session
from cached.store import Store

log = logging.getLogger(__name__)

#: Methods that change Cassandra: shielded from cancellation, bounded by a deadline.
MUTATING_METHODS = frozenset(
    {"mkdir", "create", "symlink", "unlink", "rmdir", "rename", "write", "setattr", "purge_inode"}
)
#: Methods a connection may call before ``hello`` names its tenant.
ADMIN_METHODS = frozenset({"stats", "purge", "status", "shutdown"})


class Server:
    """Serves ``service`` on the unix socket ``path`` (mode 0600).

    ``idle_exit`` (seconds or None): once the last mount session has gone and
    none came back for that long, :attr:`stopped` is set, as it is by the
    ``shutdown`` method.  ``config`` is returned by ``status``.
    """

    def __init__(
        self,
        service: Service,
        store: Store,
        path: Path,
        config: dict[str, Any],
        idle_exit: float | None = None,
    ) -> None:
        self.service = service
        self.store = store
        self.path = path
        self.config = config
        self.idle_exit = idle_exit
        self.stopped = trio.Event()
        self._sessions_changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``task_status.started(path)`` once listening."""
        await trio.to_thread.run_sync(lambda: self.path.unlink(missing_ok=True))  # stale
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # no moment at which others could connect
        try:
            await sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        await trio.to_thread.run_sync(os.chmod, self.path, 0o600)
        sock.listen(128)
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, [listener])
            if self.idle_exit is not None:
                nursery.start_soon(self._watch_idle)
            task_status.started(self.path)

    async def _watch_idle(self) -> None:
        assert self.idle_exit is not None
        while True:
            if not self.service.sessions:
                with trio.move_on_after(self.idle_exit):
                    await self._sessions_changed.wait()
                if not self.service.sessions:
                    log.info("no mount has used this daemon for %.0f s: exiting", self.idle_exit)
                    self.stopped.set()
                    return
            await self._sessions_changed.wait()

    def _changed(self) -> None:
        self._sessions_changed.set()
        self._sessions_changed = trio.Event()

    async def _handle(self, stream: trio.SocketStream) -> None:
        outbox_send, outbox = trio.open_memory_channel[bytes](float("inf"))
        box: dict[str, Session] = {}
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, stream, outbox)
                decoder = protocol.Decoder()
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    for message in decoder.feed(data):
                        if isinstance(message, protocol.Request):
                            nursery.start_soon(self._dispatch, message, box, outbox_send)
                        else:
                            raise protocol.ProtocolError("clients send only requests")
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("connection dropped")
        except protocol.ProtocolError as exc:
            log.warning("closing a connection that broke the protocol: %s", exc)
        except Exception:
            log.exception("connection handler failed")
        finally:
            session = box.get("session")
            if session is not None:
                self.service.sessions.discard(session)
                self._changed()
                log.info("session of %s/%s ended", session.owner, session.environment)

    async def _writer(
        self, stream: trio.SocketStream, outbox: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        async for frame in outbox:
            await stream.send_all(frame)

    async def _dispatch(
        self,
        request: protocol.Request,
        box: dict[str, Session],
        outbox: trio.MemorySendChannel[bytes],
    ) -> None:
        error: Any = None
        result: Any = None
        started = time.perf_counter()
        try:
            result = await self._call(request, box, outbox)
        except CassfsError as exc:
            if exc.errno != errno.ENOENT:
                log.debug("%s failed: %s", request.method, exc)
            error = exc.to_wire()
        except Exception as exc:
            log.exception("%s failed unexpectedly", request.method)
            error = [errno.EIO, f"{type(exc).__name__}: {exc}"]
        log.debug("rpc %s took %.2f ms", request.method, (time.perf_counter() - started) * 1e3)
        try:
            outbox.send_nowait(protocol.pack_response(request.msgid, error, result))
        except trio.ClosedResourceError:
            log.debug("reply to %s dropped: connection closed", request.method)

    async def _call(
        self,
        request: protocol.Request,
        box: dict[str, Session],
        outbox: trio.MemorySendChannel[bytes],
    ) -> Any:
        method, params = request.method, request.params
        log.debug("rpc %s %s", method, _brief(params))
        if method == "hello":
            if "session" in box:
                raise InvalidArgument("hello was already said on this connection")
            owner, environment = params.get("owner"), params.get("environment")
            if not isinstance(owner, int) or not isinstance(environment, str) or not environment:
                raise InvalidArgument("hello needs an int owner and a non-empty environment")

            def notify(event: str, data: dict[str, Any]) -> None:
                try:
                    outbox.send_nowait(protocol.pack_notification(event, data))
                except trio.ClosedResourceError:
                    pass

            session = Session(owner, environment, self.store.tenant(owner, environment), notify)
            reply = await self.service.rpc_hello(session)
            box["session"] = session
            self.service.sessions.add(session)
            self._changed()
            log.info("session of %s/%s started", owner, environment)
            return {**reply, "config": self.config}
        if method == "status":
            return {
                "pid": os.getpid(),
                "sessions": len(self.service.sessions),
                "config": self.config,
            }
        if method == "shutdown":
            self.stopped.set()
            return True
        if method in ADMIN_METHODS:
            admin = self.service.handler(method)
            assert admin is not None
            return await admin(box.get("session"), **params)
        current = box.get("session")
        if current is None:
            raise InvalidArgument(f"{method} needs a session: call hello first")
        handler = self.service.handler(method)
        if handler is None:
            raise InvalidArgument(f"unknown method {method!r}")
        try:
            inspect.signature(handler).bind(current, **params)
        except TypeError as exc:
            raise InvalidArgument(f"{method}: {exc}") from exc
        if method not in MUTATING_METHODS:
            return await handler(current, **params)
        # A change once begun runs to its end (or to a state a later request or fsck
        # settles), whatever happens to the connection or the daemon's other tasks;
        # but never past its deadline, after which others may settle it.
        with trio.CancelScope(shield=True):
            try:
                with trio.fail_after(STEP_DEADLINE):
                    return await handler(current, **params)
            except trio.TooSlowError:
                raise StorageError(
                    f"{method} did not finish within {STEP_DEADLINE:.0f} s"
                ) from None


def _brief(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}=<{len(v)} bytes>" if isinstance(v, bytes) and len(v) > 64 else f"{k}={v!r}"
        for k, v in params.items()
    )
