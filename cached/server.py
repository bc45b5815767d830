"""The daemon's unix socket server: framing, sessions and dispatch to :class:`Service`.

trio has no unix-socket listener helper, so the socket is made by hand
(bind, chmod 0600, listen) and served with ``trio.serve_listeners``.  One
connection carries many concurrent requests: each request runs in its own task
and every outgoing frame goes through one writer task.  A failure in one
connection never reaches the others.

Everything a connection can make the daemon hold is bounded: at most
:data:`MAX_CONNECTIONS` connections (more are closed at once); requests of at
most ``protocol.MAX_REQUEST`` bytes, flat (:class:`protocol.RequestDecoder`);
at most :data:`MAX_IN_FLIGHT` requests running per connection (then the socket
is not read until one finishes: backpressure, not an error) and
:data:`OUTBOX_FRAMES` frames queued for it.  A connection that holds an
incomplete request, or has no session and nothing running, for
:data:`IDLE_TIMEOUT` seconds is closed, as is one whose peer accepts no reply for
that long; a mount's idle connection stays.  Every request is checked against
:data:`cached.api.REQUESTS` before it reaches a handler (EINVAL, ENAMETOOLONG).

Who may call what: a connection is a mount's once ``hello`` opened its tenant's
session, and then calls the filesystem methods, ``stats`` and ``purge``.  A
connection that did not say ``hello`` is an administrative one: ``status``,
``stats``, ``purge``, ``evict`` and ``shutdown`` only, and it cannot say ``hello``
after them.  ``shutdown`` is refused (EBUSY) while a mount session exists, unless
``force=True``.  (The socket is 0600: only the daemon's user gets this far.)
A session whose ``hello`` said ``read_only=True`` may call only
:data:`READ_ONLY_METHODS` (and the administrative ones): any other gets EROFS
(``ReadOnly``) before it runs, and its tenant view sends no write to Cassandra.

Log: one line per connection closed for breaking the protocol, going idle or
being refused, at most :data:`LOG_BURST` such lines of a kind per
:data:`LOG_PERIOD` seconds (the rest counted in the next line); a failure that
is not one of those is logged once with its traceback.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from cached import protocol
from cached.api import REQUESTS, validate_request
from cached.errors import CassfsError, InvalidArgument, ReadOnly, StorageError, Unreachable
from cached.recovery import STEP_DEADLINE
from cached.sendnow import write_now
from cached.service import Service, Session
from cached.store import Store

if TYPE_CHECKING:
    from cached.metrics import Metrics

log = logging.getLogger(__name__)

#: Methods that change Cassandra: shielded from cancellation, bounded by a deadline.
MUTATING_METHODS = frozenset(
    {"mkdir", "create", "symlink", "mknod", "link", "unlink", "rmdir", "rename", "write"}
    | {"setattr", "purge_inode", "setxattr", "removexattr"}
)
#: Methods a connection may call before ``hello`` names its tenant.
ADMIN_METHODS = frozenset({"stats", "purge", "status", "shutdown", "evict"})
#: Administrative methods a mount's connection may call too.
MOUNT_ADMIN_METHODS = frozenset({"stats", "purge", "status"})
#: The only filesystem methods a read-only session may call (it said ``read_only`` at
#: ``hello``): every other one is refused with EROFS before it runs, so a method added
#: later is refused until it is listed here.
READ_ONLY_METHODS = frozenset(
    {"seen", "lookup", "getattr", "readlink", "readdir", "statfs", "open", "read"}
    | {"getxattr", "listxattr"}
)

#: Connections served at once; more are closed as soon as accepted.
MAX_CONNECTIONS = 256
#: Connections the kernel queues before the daemon accepts them.  Past a full queue,
#: trio's connect on a unix socket returns a socket that is not connected (its first send
#: fails with ENOTCONN), so the queue is kept long enough for bursts of clients.
LISTEN_BACKLOG = 1024
#: Requests running at once per connection; the socket is not read while this many run.
MAX_IN_FLIGHT = 64
#: Outgoing frames (replies and notifications) queued per connection.
OUTBOX_FRAMES = 1024
#: Seconds a connection may hold an incomplete request, stay idle without a session,
#: or leave a reply unaccepted, before it is closed.
IDLE_TIMEOUT = 30.0
#: Lines of one kind of connection event (refused, protocol broken, idle) per period.
LOG_BURST = 5
#: Seconds of that period.
LOG_PERIOD = 60.0


class _Quiet:
    """Logs at most ``burst`` lines per ``period`` seconds; counts the rest and says
    how many in its next line.  Sync, for the trio thread."""

    def __init__(self, level: int, burst: int = LOG_BURST, period: float = LOG_PERIOD) -> None:
        self.level = level
        self.burst = burst
        self.period = period
        self._window = -math.inf
        self._lines = 0
        self._suppressed = 0

    def __call__(self, message: str, *args: object) -> None:
        """Log ``message % args`` unless this period's lines are spent."""
        now = time.monotonic()
        if now - self._window >= self.period:
            self._window, self._lines = now, 0
        if self._lines >= self.burst:
            self._suppressed += 1
            return
        self._lines += 1
        if self._suppressed:
            message += " (and %d more like it not logged)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        log.log(self.level, message, *args)


class _Idle(Exception):
    """The connection was closed for idleness (see :data:`IDLE_TIMEOUT`)."""


@dataclass(eq=False)
class _Connection:
    """What the server knows of one connection."""

    outbox: trio.MemorySendChannel[bytes]
    scope: trio.CancelScope
    slots: trio.Semaphore
    #: Requests that may run at once (the semaphore's initial value).
    capacity: int
    #: The connection's stream, for replies written at once (:meth:`Server._send_now`);
    #: None once it is closing.
    stream: trio.SocketStream | None = None
    #: Frames handed to the writer task and not yet sent in full.
    queued: int = 0
    session: Session | None = None
    hello_started: bool = False
    admin: bool = False
    #: trio time of the last byte received or reply sent.
    active: float = field(default_factory=trio.current_time)
    #: Why the daemon closed it, once it did (one log line).
    closed_because: str | None = None

    @property
    def in_flight(self) -> int:
        """Requests running now."""
        return self.capacity - self.slots.value


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]``."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


class Server:
    """Serves ``service`` on the unix socket ``path`` (mode 0600).

    ``idle_exit`` (seconds or None): once the last mount session has gone and
    none came back for that long, :attr:`stopped` is set, as it is by the
    ``shutdown`` method.  ``config`` is returned by ``status``.
    ``max_connections``, ``max_in_flight`` and ``idle_timeout`` (seconds) default
    to this module's constants.  ``metrics`` times every RPC (None: off).
    """

    def __init__(
        self,
        service: Service,
        store: Store,
        path: Path,
        config: dict[str, Any],
        idle_exit: float | None = None,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_in_flight: int = MAX_IN_FLIGHT,
        idle_timeout: float = IDLE_TIMEOUT,
        metrics: Metrics | None = None,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.store = store
        self.path = path
        self.config = config
        self.idle_exit = idle_exit
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight
        self.idle_timeout = idle_timeout
        self.stopped = trio.Event()
        self._sessions_changed = trio.Event()
        self._connections = 0
        self._refused = _Quiet(logging.WARNING)
        self._rejected = _Quiet(logging.WARNING)
        self._idled = _Quiet(logging.INFO)

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return self._connections

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
        sock.listen(LISTEN_BACKLOG)
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

    # -- one connection -------------------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream) -> None:
        """Serve one accepted connection; never raises (but Cancelled)."""
        if self._connections >= self.max_connections:
            self._refused("refused a connection: %d connections open, the limit", self._connections)
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        self._connections += 1
        conn: _Connection | None = None
        try:
            outbox_send, outbox = trio.open_memory_channel[bytes](OUTBOX_FRAMES)
            conn = _Connection(
                outbox_send,
                trio.CancelScope(),
                trio.Semaphore(self.max_in_flight),
                self.max_in_flight,
                stream,
            )
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, stream, outbox, conn)
                    await self._read(stream, conn, nursery)
                    nursery.cancel_scope.cancel()
        except Exception as exc:  # groups too: trio's nurseries wrap what they raise
            self._log_failure(exc)
        finally:
            self._connections -= 1
            if conn is not None:
                conn.stream = None  # a late notification goes nowhere
            with trio.CancelScope(shield=True):
                await stream.aclose()
            if conn is not None:
                if conn.closed_because is not None:
                    self._idled("closed a connection: %s", conn.closed_because)
                if conn.session is not None:
                    self.service.sessions.discard(conn.session)
                    self._changed()
                    s = conn.session
                    log.info("session of %s/%s ended", s.owner, s.environment)

    def _log_failure(self, exc: Exception) -> None:
        """One line for a connection that ended badly; a traceback only for a bug."""
        leaves = _leaves(exc)
        expected = (trio.BrokenResourceError, trio.ClosedResourceError, protocol.ProtocolError)
        if not all(isinstance(leaf, expected) for leaf in leaves):
            log.error("connection handler failed", exc_info=exc)
            return
        broken = [leaf for leaf in leaves if isinstance(leaf, protocol.ProtocolError)]
        if broken:
            self._rejected("closed a connection that broke the protocol: %.200s", broken[0])
        else:
            log.debug("connection dropped: %s", leaves[0])

    async def _read(
        self, stream: trio.SocketStream, conn: _Connection, nursery: trio.Nursery
    ) -> None:
        """Receive, decode and dispatch requests until the peer closes.

        Raises ``ProtocolError`` for bytes that are no request; sets
        ``conn.closed_because`` and returns when the connection idles too long.
        """
        decoder = protocol.RequestDecoder()
        frame_since = trio.current_time()  # when the bytes held now began to come
        while True:
            data = await self._receive(stream, conn, decoder, frame_since)
            if data is None:
                return
            if not data:
                break
            now = trio.current_time()
            conn.active = now
            if not decoder.buffered:
                frame_since = now
            decoder.feed(data)
            dispatched = False
            while (request := decoder.pop()) is not None:
                try:  # backpressure: at most max_in_flight running
                    conn.slots.acquire_nowait()  # no extra pass of the run loop per request
                except trio.WouldBlock:
                    await conn.slots.acquire()
                nursery.start_soon(self._dispatch, request, conn)
                dispatched = True
            if dispatched:
                frame_since = trio.current_time()

    async def _receive(
        self,
        stream: trio.SocketStream,
        conn: _Connection,
        decoder: protocol.RequestDecoder,
        frame_since: float,
    ) -> bytes | None:
        """The next bytes (``b""`` at EOF), or None once the connection idled too long."""
        while True:
            if decoder.buffered:
                deadline = frame_since + self.idle_timeout
                why = f"an incomplete request held for over {self.idle_timeout:.0f} s"
            elif conn.session is None and not conn.hello_started:
                # Nothing running: idle since the last activity.  Running: look again later.
                deadline = conn.active + self.idle_timeout
                why = f"no session and idle for over {self.idle_timeout:.0f} s"
                if conn.in_flight:
                    deadline = max(deadline, trio.current_time() + self.idle_timeout)
            else:
                deadline = math.inf  # a mount's connection may idle as long as it likes
                why = ""
            with trio.move_on_at(deadline):
                return await stream.receive_some(protocol.RECEIVE_SIZE)
            if decoder.buffered or (conn.session is None and not conn.in_flight):
                conn.closed_because = why
                return None

    async def _writer(
        self,
        stream: trio.SocketStream,
        outbox: trio.MemoryReceiveChannel[bytes],
        conn: _Connection,
    ) -> None:
        async for frame in outbox:
            with trio.move_on_after(self.idle_timeout) as scope:
                await stream.send_all(frame)
            if scope.cancelled_caught:
                conn.closed_because = f"the peer took no reply for {self.idle_timeout:.0f} s"
                conn.scope.cancel()
                return
            conn.queued -= 1
            conn.active = trio.current_time()

    def _send_now(self, conn: _Connection, frame: bytes) -> bytes:
        """Write what of ``frame`` the socket takes now, without waiting; the rest
        (``b""`` once all was written) is for the writer task.

        Only while the writer holds nothing: frames leave in the order they were
        made.  A reply written here costs no task switch (the writer's two passes of
        the run loop per reply were a fifth of a cold request's).  A socket error
        leaves the frame to the writer, whose ``send_all`` meets it and ends the
        connection as before.
        """
        if conn.queued or conn.stream is None:
            return frame
        sent = write_now(conn.stream, frame)  # full or broken: the writer decides
        if sent:
            conn.active = trio.current_time()
        return frame[sent:]

    async def _send(self, conn: _Connection, frame: bytes) -> None:
        """Send ``frame`` on ``conn`` after every frame before it; waits while
        :data:`OUTBOX_FRAMES` frames are queued.  Raises ``trio.ClosedResourceError``
        or ``trio.BrokenResourceError`` once the connection is closing."""
        rest = self._send_now(conn, frame)
        if rest:
            conn.queued += 1
            try:
                await conn.outbox.send(rest)
            except BaseException:
                conn.queued -= 1
                raise

    async def _dispatch(self, request: protocol.Request, conn: _Connection) -> None:
        try:
            error: Any = None
            result: Any = None
            started = time.perf_counter()
            try:
                result = await self._call(request, conn)
            except CassfsError as exc:
                if isinstance(exc, StorageError) and not isinstance(exc, Unreachable):
                    # EIO reaches an application: always worth a line (an outage, by
                    # contrast, is logged once by the store).
                    log.warning("%.60s failed: %s", request.method, exc)
                elif exc.errno != errno.ENOENT:
                    log.debug("%s failed: %s", request.method, exc)
                error = exc.to_wire()
            except Exception as exc:
                log.exception("%.60s failed unexpectedly", request.method)
                error = [errno.EIO, f"{type(exc).__name__}: {exc}"]
            elapsed = time.perf_counter() - started
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "rpc %.60s took %.2f ms: %s",
                    request.method,
                    elapsed * 1e3,
                    _outcome(error, result),
                )
            if self.metrics is not None and request.method in REQUESTS:  # known labels only
                self.metrics.observe_rpc(request.method, elapsed)
            try:
                await self._send(conn, protocol.pack_response(request.msgid, error, result))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                log.debug("reply to %.60s dropped: connection closed", request.method)
        finally:
            conn.slots.release()

    def _notifier(self, conn: _Connection) -> Any:
        """The session's notification callback: queue the frame, or close a connection
        whose peer let :data:`OUTBOX_FRAMES` frames pile up."""

        def notify(event: str, data: dict[str, Any]) -> None:
            rest = self._send_now(conn, protocol.pack_notification(event, data))
            if not rest:
                return
            try:
                conn.outbox.send_nowait(rest)
                conn.queued += 1
            except trio.WouldBlock:
                conn.closed_because = f"the peer let {OUTBOX_FRAMES} frames pile up"
                conn.scope.cancel()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

        return notify

    async def _call(self, request: protocol.Request, conn: _Connection) -> Any:
        method, params = request.method, request.params
        if log.isEnabledFor(logging.DEBUG):  # no formatting of the parameters otherwise
            log.debug("rpc %.60s %s", method, _brief(params))
        validate_request(method, params)
        if method == "hello":
            if conn.hello_started:
                raise InvalidArgument("hello was already said on this connection")
            if conn.admin:
                raise InvalidArgument(
                    "this connection made administrative calls: a mount needs its own"
                )
            conn.hello_started = True
            owner, environment = params["owner"], params["environment"]
            read_only = bool(params.get("read_only", False))
            session = Session(
                owner,
                environment,
                self.store.tenant(owner, environment, read_only),
                self._notifier(conn),
                acknowledges=bool(params.get("acks", False)),
                read_only=read_only,
            )
            try:
                reply = await self.service.rpc_hello(session)
            except BaseException:
                conn.hello_started = False
                raise
            conn.session = session
            self.service.sessions.add(session)
            self._changed()
            mode = " (read-only)" if read_only else ""
            log.info("session of %s/%s started%s", owner, environment, mode)
            return {**reply, "config": self.config, "features": list(protocol.FEATURES)}
        if method in ADMIN_METHODS:
            return await self._admin(method, params, conn)
        current = conn.session
        if current is None:
            raise InvalidArgument(f"{method} needs a session: call hello first")
        if current.read_only and method not in READ_ONLY_METHODS:
            raise ReadOnly(f"{method}: this mount session is read-only")
        handler = self.service.handler(method)
        if handler is None:
            raise InvalidArgument(f"unknown method {method!r}")
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

    async def _admin(self, method: str, params: dict[str, Any], conn: _Connection) -> Any:
        """``status``, ``stats``, ``purge``, ``shutdown`` (see the module's rules)."""
        if conn.hello_started:
            if method not in MOUNT_ADMIN_METHODS:
                raise InvalidArgument(f"{method} is not a mount's call")
        else:
            conn.admin = True
        if method == "status":
            return {
                "pid": os.getpid(),
                "sessions": len(self.service.sessions),
                "read_only_sessions": sum(s.read_only for s in self.service.sessions),
                "connections": self._connections,
                "config": self.config,
            }
        if method == "shutdown":
            sessions = len(self.service.sessions)
            if sessions and not params.get("force", False):
                raise CassfsError(
                    f"{sessions} mount session(s) still use this daemon: unmount them first, "
                    "or pass force=True",
                    err=errno.EBUSY,
                )
            log.info("shutdown requested (%d mount sessions)", sessions)
            self.stopped.set()
            return True
        admin = self.service.handler(method)
        assert admin is not None
        return await admin(conn.session, **params)


def _brief(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}=<{len(v)} bytes>" if isinstance(v, bytes) and len(v) > 64 else f"{k}={v!r}"
        for k, v in params.items()
    )


def _outcome(error: Any, result: Any) -> str:
    """A reply in brief for the debug log: the errno's name, or the inode it names."""
    if error is not None:
        return errno.errorcode.get(error[0], str(error[0])) if error else "error"
    if isinstance(result, dict):
        inode = result.get("inode", result)
        if isinstance(inode, dict) and "ino" in inode:
            data = result.get("data")
            return (
                f"ino {inode['ino']} size {inode.get('size')} "
                f"content {bytes(inode.get('content_id') or b'')[:4].hex()}"
                + (f" data {len(data)}" if isinstance(data, bytes) else "")
            )
    return "ok"
