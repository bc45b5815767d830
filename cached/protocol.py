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

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

REQUEST = 0
RESPONSE = 1
NOTIFICATION = 2

#: What this daemon's methods do beyond what a front of an older cassfs knew, named in the
#: ``hello`` reply's ``features`` so that a newer front asks only for what the daemon it
#: reached does (a daemon keeps running across an upgrade until its mounts are gone):
#: ``open_atime``: ``open`` takes ``atime_ns`` and records the read access itself.
FEATURES = ("open_atime",)

#: Largest message a client accepts from the daemon (a reply), bytes.  Content above
#: ``INLINE_LIMIT`` goes through files.
MAX_MESSAGE = 8 * 1024 * 1024
#: Content up to this many bytes travels inline in a message; larger through a file path.
INLINE_LIMIT = 1024 * 1024
#: Largest request the daemon accepts, bytes (one whole encoded message): inline content
#: of ``INLINE_LIMIT`` bytes plus room for the method name and the other parameters.
MAX_REQUEST = INLINE_LIMIT + 64 * 1024
#: Most msgpack objects (every scalar, array and map counts one) in one request; the
#: daemon's methods take at most 8 parameters, about 20 objects.
MAX_OBJECTS = 1024
#: Deepest nesting of arrays and maps in one request: the request, its parameter map, and
#: two levels inside a value (which the daemon then rejects with EINVAL, not by closing).
MAX_DEPTH = 4


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


def _is_msgid(value: Any) -> bool:
    """An unsigned 32-bit integer (not a bool)."""
    return type(value) is int and 0 <= value < 2**32


def _to_message(obj: Any) -> Message:
    if not isinstance(obj, list) or not obj:
        raise ProtocolError(f"expected a non-empty array, got {type(obj).__name__}")
    kind = obj[0]
    if kind == REQUEST and len(obj) == 4:
        _, msgid, method, params = obj
        if _is_msgid(msgid) and isinstance(method, str) and isinstance(params, dict):
            return Request(msgid, method, params)
    elif kind == RESPONSE and len(obj) == 4:
        _, msgid, error, result = obj
        if _is_msgid(msgid):
            return Response(msgid, error, result)
    elif kind == NOTIFICATION and len(obj) == 3:
        _, event, params = obj
        if isinstance(event, str) and isinstance(params, dict):
            return Notification(event, params)
    raise ProtocolError(f"malformed message: {obj!r:.200}")


class Decoder:
    """Turns received bytes into messages; feed it whatever ``receive_some`` returned.

    The client's decoder (replies and notifications from the daemon, which it
    trusts).  Raises :class:`ProtocolError` on bytes that are not msgpack, on a
    message that is not one of the three shapes, or when more than
    ``max_message`` bytes are buffered unparsed at once (one feed plus any
    incomplete message before it; the peers' reads are at most 1 MiB, so every
    message up to ``max_message - 1 MiB`` fits).  The daemon reads requests with
    :class:`RequestDecoder`, which bounds each whole message.
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


# -- the daemon's side: requests of bounded size, count and depth ---------------------------

#: Bytes the daemon reads from a connection at once.
RECEIVE_SIZE = 64 * 1024

#: Type bytes of fixed-size scalars -> encoded size (nil, bools, floats, ints).
_FIXED_SIZE = {
    0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9,
    0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9,
}  # fmt: skip
#: Type bytes of bin8/16/32 and str8/16/32 -> width of their length field.
_LENGTH_WIDTH = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
#: Type bytes of array16/32 and map16/32 -> (width of their count field, items per count).
_CONTAINER = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
_UNSIGNED = {1: struct.Struct(">B"), 2: struct.Struct(">H"), 4: struct.Struct(">I")}


class FrameScanner:
    """Finds where one msgpack message ends by reading its headers only, with bounds.

    Sans-IO and resumable: :meth:`end` is called again with the same buffer grown
    by more bytes and continues where it stopped, so a message trickling in byte by
    byte costs no more than one arriving whole.  :meth:`reset` after each message.
    Raises :class:`ProtocolError` as soon as the headers seen declare more than
    ``max_bytes`` bytes, more than ``max_objects`` objects or nesting deeper than
    ``max_depth`` arrays and maps, and for extension types and the byte 0xc1.
    """

    def __init__(self, max_bytes: int, max_objects: int, max_depth: int) -> None:
        self.max_bytes = max_bytes
        self.max_objects = max_objects
        self.max_depth = max_depth
        self.reset()

    def reset(self) -> None:
        """Start on a new message at offset 0."""
        self._pos = 0
        self._objects = 0
        self._left = [1]  # objects still to read at each open level; the root: one

    def end(self, buf: bytearray) -> int | None:
        """The length of the message at the start of ``buf``, or None while incomplete."""
        left = self._left
        while left:
            if left[-1] == 0:
                left.pop()
                continue
            pos = self._pos
            if pos >= len(buf):
                return None
            byte = buf[pos]
            count = 0
            if byte <= 0x7F or byte >= 0xE0:  # positive and negative fixint
                after = pos + 1
            elif 0x80 <= byte <= 0x9F:  # fixmap, fixarray
                count = (byte & 0x0F) * (2 if byte <= 0x8F else 1)
                after = pos + 1
            elif 0xA0 <= byte <= 0xBF:  # fixstr
                after = pos + 1 + (byte & 0x1F)
            elif byte in _FIXED_SIZE:
                after = pos + _FIXED_SIZE[byte]
            elif byte in _LENGTH_WIDTH or byte in _CONTAINER:
                width, per = _CONTAINER.get(byte) or (_LENGTH_WIDTH[byte], 0)
                if pos + 1 + width > len(buf):
                    return None  # the header itself is cut
                (length,) = _UNSIGNED[width].unpack_from(buf, pos + 1)
                after = pos + 1 + width + (0 if per else length)
                count = length * per
            else:
                raise ProtocolError(f"msgpack type 0x{byte:02x} is not accepted")
            container = 0x80 <= byte <= 0x9F or byte in _CONTAINER
            self._objects += 1
            if self._objects + count > self.max_objects:
                raise ProtocolError(f"a message of over {self.max_objects} objects")
            if after > self.max_bytes:
                raise ProtocolError(f"a message of over {self.max_bytes} bytes")
            left[-1] -= 1
            self._pos = after
            if container:
                if len(left) > self.max_depth:
                    raise ProtocolError(f"a message nested over {self.max_depth} deep")
                left.append(count)
        return self._pos if self._pos <= len(buf) else None


class RequestDecoder:
    """The daemon's decoder: turns received bytes into :class:`Request` messages.

    Sans-IO: :meth:`feed` what ``receive_some`` returned, then :meth:`pop`
    requests until it returns None, before feeding again.  Bounds: each whole
    encoded request at most ``max_request`` bytes, ``max_objects`` msgpack objects
    and ``max_depth`` nested arrays and maps, checked on its headers before its
    payload arrives (:class:`FrameScanner`); the buffer holds at most
    ``max_request + RECEIVE_SIZE`` bytes.  Raises :class:`ProtocolError` for
    anything else: not msgpack, not a request, invalid UTF-8 in a str, map keys
    that are not str...
    """

    def __init__(
        self,
        max_request: int = MAX_REQUEST,
        max_objects: int = MAX_OBJECTS,
        max_depth: int = MAX_DEPTH,
    ) -> None:
        self.max_request = max_request
        self._scanner = FrameScanner(max_request, max_objects, max_depth)
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a request (an incomplete frame), bytes."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Append ``data``; ProtocolError when the buffer would exceed its bound."""
        if len(self._buffer) + len(data) > self.max_request + RECEIVE_SIZE:
            raise ProtocolError("more unparsed bytes than a request may have")
        self._buffer += data

    def pop(self) -> Request | None:
        """The next complete request, or None until more bytes come; ProtocolError."""
        end = self._scanner.end(self._buffer)
        if end is None:
            return None
        self._scanner.reset()
        frame = bytes(self._buffer[:end])
        if end == len(self._buffer):
            self._buffer = bytearray()  # gives back the memory of a large frame
        else:
            del self._buffer[:end]
        try:
            obj = msgpack.unpackb(frame, raw=False, strict_map_key=True)
        except (msgpack.UnpackException, ValueError, TypeError) as exc:
            raise ProtocolError(f"undecodable request: {exc}") from exc
        message = _to_message(obj)
        if not isinstance(message, Request):
            raise ProtocolError("clients send only requests")
        if not all(isinstance(key, str) for key in message.params):
            raise ProtocolError("parameter names are str")
        return message
