"""Sans-IO msgpack framing for the daemon's RPC.

The wire format follows the MessagePack-RPC specification
(https://github.com/msgpack-rpc/msgpack-rpc/blob/master/spec.md): a stream of
msgpack arrays, self-delimiting, so no length prefix is needed.

- request       ``[0, msgid, method, params]``  (params: a map of str keys)
- response      ``[1, msgid, error, result]``   (error: ``None`` or ``[errno, message]``)
- notification  ``[2, event, params]``          (daemon to client, e.g. ``purged``)

``msgid`` is an unsigned 32-bit integer chosen by the client; replies may come
back in any order, so one connection carries many concurrent requests.  Large
file content never travels as one message: see ``cached.ops_content``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

REQUEST = 0
RESPONSE = 1
NOTIFICATION = 2

#: Largest message accepted, bytes.  Content above ``INLINE_LIMIT`` goes through files.
MAX_MESSAGE = 8 * 1024 * 1024
#: Content up to this many bytes travels inline in a message; larger through a file path.
INLINE_LIMIT = 1024 * 1024


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid message."""


@dataclass(frozen=True, slots=True)
class Request:
    """A call of ``method`` with keyword ``params``; ``msgid`` pairs it with its response."""

    msgid: int
    method: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Response:
    """The reply to request ``msgid``: ``error`` is ``None`` or ``[errno, message]``."""

    msgid: int
    error: Any
    result: Any


@dataclass(frozen=True, slots=True)
class Notification:
    """An unsolicited message from the daemon."""

    event: str
    params: dict[str, Any]


Message = Request | Response | Notification


def pack_request(msgid: int, method: str, params: dict[str, Any]) -> bytes:
    """Encode a request."""
    return msgpack.packb([REQUEST, msgid, method, params], use_bin_type=True)


def pack_response(msgid: int, error: Any, result: Any) -> bytes:
    """Encode a response; ``error`` is ``None`` or ``[errno, message]``."""
    return msgpack.packb([RESPONSE, msgid, error, result], use_bin_type=True)


def pack_notification(event: str, params: dict[str, Any]) -> bytes:
    """Encode a notification."""
    return msgpack.packb([NOTIFICATION, event, params], use_bin_type=True)


def _to_message(obj: Any) -> Message:
    if not isinstance(obj, list) or not obj:
        raise ProtocolError(f"expected a non-empty array, got {type(obj).__name__}")
    kind = obj[0]
    if kind == REQUEST and len(obj) == 4:
        _, msgid, method, params = obj
        if isinstance(msgid, int) and isinstance(method, str) and isinstance(params, dict):
            return Request(msgid, method, params)
    elif kind == RESPONSE and len(obj) == 4:
        _, msgid, error, result = obj
        if isinstance(msgid, int):
            return Response(msgid, error, result)
    elif kind == NOTIFICATION and len(obj) == 3:
        _, event, params = obj
        if isinstance(event, str) and isinstance(params, dict):
            return Notification(event, params)
    raise ProtocolError(f"malformed message: {obj!r:.200}")


class Decoder:
    """Turns received bytes into messages; feed it whatever ``receive_some`` returned.

    Raises :class:`ProtocolError` on bytes that are not msgpack, on a message
    that is not one of the three shapes, or when more than ``max_message`` bytes
    are buffered unparsed at once (one feed plus any incomplete message before it;
    the peers' reads are at most 1 MiB, so every message up to
    ``max_message - 1 MiB`` fits).
    """

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._unpacker = msgpack.Unpacker(
            raw=False, max_buffer_size=max_message, strict_map_key=False
        )

    def feed(self, data: bytes) -> Iterator[Message]:
        """Add ``data`` and yield every message now complete."""
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull as exc:
            raise ProtocolError("message larger than the limit") from exc
        try:
            for obj in self._unpacker:
                yield _to_message(obj)
        except (
            msgpack.ExtraData,
            msgpack.FormatError,
            msgpack.StackError,
            ValueError,
            TypeError,
        ) as exc:
            raise ProtocolError(str(exc)) from exc
