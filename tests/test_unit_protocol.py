"""Unit tests of cached.protocol (msgpack-RPC framing, the client's Decoder, the daemon's
bounded RequestDecoder) and of the request validation tables in cached.api."""

from __future__ import annotations

import errno
import importlib
import inspect
from typing import Any

import msgpack
import pytest

from cached.api import REQUESTS, DaemonApi, validate_request
from cached.errors import CassfsError, InvalidArgument
from cached.protocol import (
    INLINE_LIMIT,
    MAX_DEPTH,
    MAX_MESSAGE,
    MAX_OBJECTS,
    MAX_REQUEST,
    RECEIVE_SIZE,
    Decoder,
    FrameScanner,
    Notification,
    ProtocolError,
    Request,
    RequestDecoder,
    Response,
    pack_notification,
    pack_request,
    pack_response,
)


def decode_all(data: bytes, max_message: int = MAX_MESSAGE) -> list:
    return list(Decoder(max_message).feed(data))


def sample_stream() -> tuple[bytes, list]:
    """Several messages of every kind, with the messages they must decode to."""
    parts = [
        (
            pack_request(1, "lookup", {"parent": 1, "name": b"a.php"}),
            Request(1, "lookup", {"parent": 1, "name": b"a.php"}),
        ),
        (pack_response(1, None, {"ino": 42, "kind": 2}), Response(1, None, {"ino": 42, "kind": 2})),
        (pack_response(7, [2, "no such file"], None), Response(7, [2, "no such file"], None)),
        (pack_notification("purged", {"epoch": 3}), Notification("purged", {"epoch": 3})),
        (
            pack_request(2**32 - 1, "read", {"data": b"\x00\xff" * 40, "text": "h\u00e9"}),
            Request(2**32 - 1, "read", {"data": b"\x00\xff" * 40, "text": "h\u00e9"}),
        ),
        (pack_request(0, "ping", {}), Request(0, "ping", {})),
    ]
    return b"".join(raw for raw, _ in parts), [msg for _, msg in parts]


def test_request_round_trip() -> None:
    params = {"ino": 5, "name": b"x", "flags": [1, 2], "nested": {"a": None}}
    assert decode_all(pack_request(17, "open", params)) == [Request(17, "open", params)]


def test_response_round_trip_with_result_and_with_error() -> None:
    assert decode_all(pack_response(3, None, [1, 2, 3])) == [Response(3, None, [1, 2, 3])]
    assert decode_all(pack_response(4, [28, "full"], None)) == [Response(4, [28, "full"], None)]


def test_notification_round_trip() -> None:
    assert decode_all(pack_notification("purged", {"epoch": 9})) == [
        Notification("purged", {"epoch": 9})
    ]


def test_bytes_stay_bytes_and_str_stays_str() -> None:
    blob = bytes(range(256))
    (msg,) = decode_all(pack_request(1, "write", {"data": blob, "name": "caf\u00e9"}))
    assert isinstance(msg, Request)
    assert type(msg.params["data"]) is bytes
    assert msg.params["data"] == blob
    assert type(msg.params["name"]) is str
    assert msg.params["name"] == "caf\u00e9"
    (resp,) = decode_all(pack_response(2, None, b"\x00\x01"))
    assert type(resp.result) is bytes
    assert resp.result == b"\x00\x01"


def test_many_messages_in_one_feed_come_out_in_order() -> None:
    stream, expected = sample_stream()
    assert decode_all(stream) == expected


def test_byte_by_byte_feeding() -> None:
    stream, expected = sample_stream()
    decoder = Decoder()
    got = []
    for i in range(len(stream)):
        got.extend(decoder.feed(stream[i : i + 1]))
    assert got == expected


def test_every_split_point_yields_the_same_messages() -> None:
    stream, expected = sample_stream()
    for cut in range(len(stream) + 1):
        decoder = Decoder()
        got = list(decoder.feed(stream[:cut]))
        got.extend(decoder.feed(stream[cut:]))
        assert got == expected, f"split at {cut}"


def test_incomplete_message_yields_nothing_until_completed() -> None:
    raw = pack_request(5, "stat", {"ino": 1})
    decoder = Decoder()
    assert list(decoder.feed(raw[:-1])) == []
    assert list(decoder.feed(raw[-1:])) == [Request(5, "stat", {"ino": 1})]
    assert list(decoder.feed(b"")) == []


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({"a": 1}, id="map"),
        pytest.param(5, id="int"),
        pytest.param("text", id="str"),
        pytest.param(None, id="nil"),
        pytest.param([], id="empty-array"),
        pytest.param([0, 1, "m"], id="request-arity-3"),
        pytest.param([0, 1, "m", {}, 5], id="request-arity-5"),
        pytest.param([1, 1, None], id="response-arity-3"),
        pytest.param([2, "ev"], id="notification-arity-2"),
        pytest.param([2, "ev", {}, 1], id="notification-arity-4"),
        pytest.param([3, 1, "m", {}], id="unknown-kind-3"),
        pytest.param([-1, 1, "m", {}], id="unknown-kind-neg"),
        pytest.param(["0", 1, "m", {}], id="kind-is-str"),
        pytest.param([0, 1, b"m", {}], id="method-is-bytes"),
        pytest.param([0, 1, 7, {}], id="method-is-int"),
        pytest.param([0, 1, "m", [1, 2]], id="params-is-array"),
        pytest.param([0, 1, "m", None], id="params-is-nil"),
        pytest.param([0, "1", "m", {}], id="request-msgid-is-str"),
        pytest.param([1, "1", None, None], id="response-msgid-is-str"),
        pytest.param([2, b"ev", {}], id="event-is-bytes"),
        pytest.param([2, "ev", "params"], id="notification-params-is-str"),
    ],
)
def test_malformed_messages_raise_protocol_error(obj: object) -> None:
    with pytest.raises(ProtocolError):
        decode_all(msgpack.packb(obj, use_bin_type=True))


def test_bytes_that_are_not_msgpack_raise_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_all(b"\xc1")  # the one byte msgpack never uses


def test_invalid_utf8_in_a_str_raises_protocol_error() -> None:
    # fixstr of length 2 holding bytes that are not UTF-8
    with pytest.raises(ProtocolError):
        decode_all(b"\x94\x00\x01\xa2\xff\xfe\x80")


def test_valid_message_before_a_malformed_one_is_still_delivered() -> None:
    good = pack_request(1, "a", {})
    bad = msgpack.packb([9, 9, 9, 9])
    got = []
    with pytest.raises(ProtocolError):
        for msg in Decoder().feed(good + bad):
            got.append(msg)
    assert got == [Request(1, "a", {})]


def test_message_over_max_message_raises_in_one_feed() -> None:
    raw = pack_request(1, "write", {"data": b"x" * 200})
    with pytest.raises(ProtocolError):
        decode_all(raw, max_message=100)


def test_message_over_max_message_raises_when_fed_byte_by_byte() -> None:
    raw = pack_request(1, "write", {"data": b"x" * 200})
    decoder = Decoder(max_message=100)
    with pytest.raises(ProtocolError):
        for i in range(len(raw)):
            list(decoder.feed(raw[i : i + 1]))
    # It failed while the message was still incomplete, not only once it was whole.
    assert i < len(raw) - 1


def test_message_of_exactly_max_message_is_accepted() -> None:
    raw = pack_request(1, "write", {"data": b"x" * 983})
    assert decode_all(raw, max_message=len(raw)) == [Request(1, "write", {"data": b"x" * 983})]
    with pytest.raises(ProtocolError):
        decode_all(raw, max_message=len(raw) - 1)


def test_messages_under_the_limit_split_across_feeds_are_accepted() -> None:
    # Each message is under the limit; fed in pieces no bigger than one message.
    raws = [pack_request(i, "w", {"data": b"y" * 50}) for i in range(10)]
    stream = b"".join(raws)
    decoder = Decoder(max_message=100)
    got = []
    for start in range(0, len(stream), 30):
        got.extend(decoder.feed(stream[start : start + 30]))
    assert [m.msgid for m in got] == list(range(10))


def test_map_with_unhashable_key_raises_protocol_error() -> None:
    # [0, 1, "m", {[1]: 2}]
    raw = b"\x94\x00\x01\xa1m\x81\x91\x01\x02"
    with pytest.raises(ProtocolError):
        decode_all(raw)


def test_max_message_limits_bytes_buffered_at_once() -> None:
    # The limit is on unparsed bytes held at once (documented), not per message:
    # small messages fed separately pass, the same bytes in one feed over it do not.
    raws = [pack_request(i, "w", {"data": b"y" * 50}) for i in range(3)]  # ~60 bytes each
    assert all(len(r) < 100 for r in raws)
    decoder = Decoder(max_message=100)
    got = [m for raw in raws for m in decoder.feed(raw)]
    assert [m.msgid for m in got] == [0, 1, 2]
    with pytest.raises(ProtocolError):
        decode_all(b"".join(raws), max_message=100)


# -- the daemon's RequestDecoder: whole-message bounds --------------------------------------


def requests_stream() -> tuple[bytes, list[Request]]:
    """Several requests, one with a nested value, with what they decode to."""
    parts: list[tuple[int, str, dict[str, Any]]] = [
        (1, "lookup", {"parent": 1, "name": b"a.php"}),
        (2, "write", {"ino": 7, "data": b"\x00\xff" * 300, "path": None}),
        (2**32 - 1, "status", {}),
        (4, "setattr", {"ino": 9, "mode": 0o644, "atime_ns": -(2**63), "x": 1.5, "ok": True}),
        (5, "hello", {"owner": 3, "environment": "caf\u00e9", "odd": [1, [2, b"v"], {"k": 3}]}),
    ]
    stream = b"".join(pack_request(*part) for part in parts)
    return stream, [Request(*part) for part in parts]


def pop_all(decoder: RequestDecoder) -> list[Request]:
    got = []
    while (request := decoder.pop()) is not None:
        got.append(request)
    return got


def test_request_decoder_yields_the_same_requests_at_every_split_point() -> None:
    stream, expected = requests_stream()
    for cut in range(len(stream) + 1):
        decoder = RequestDecoder()
        decoder.feed(stream[:cut])
        got = pop_all(decoder)
        decoder.feed(stream[cut:])
        got += pop_all(decoder)
        assert got == expected, f"split at {cut}"
        assert decoder.buffered == 0


def test_request_decoder_fed_byte_by_byte_holds_only_the_incomplete_request() -> None:
    stream, expected = requests_stream()
    decoder = RequestDecoder()
    got = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        got += pop_all(decoder)
        assert decoder.buffered <= max(
            len(pack_request(r.msgid, r.method, r.params)) for r in expected
        )
    assert got == expected


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xc1", id="unused-byte"),
        pytest.param(msgpack.packb(5), id="int"),
        pytest.param(pack_response(1, None, None), id="a-response"),
        pytest.param(pack_notification("purged", {}), id="a-notification"),
        pytest.param(msgpack.packb([0, True, "m", {}]), id="msgid-bool"),
        pytest.param(msgpack.packb([0, -1, "m", {}]), id="msgid-negative"),
        pytest.param(msgpack.packb([0, 2**32, "m", {}]), id="msgid-over-32-bits"),
        pytest.param(msgpack.packb([0, 1, "m", {1: 2}]), id="int-key"),
        pytest.param(msgpack.packb([0, 1, "m", {b"k": 2}]), id="bytes-key"),
        pytest.param(b"\x94\x00\x01\xa1m\x81\xa1k\xd4\x01\x00", id="fixext"),
        pytest.param(b"\x94\x00\x01\xa1m\x81\xa1k\xc7\x01\x05\x00", id="ext8"),
        pytest.param(b"\x94\x00\x01\xa1m\x81\xa1k\xd6\xff\x00\x00\x00\x00", id="timestamp"),
        pytest.param(b"\x94\x00\x01\xa2\xff\xfe\x80", id="invalid-utf8"),
        pytest.param(msgpack.packb([0, 1, "m", {"a": [[[1]]]}]), id="five-deep"),
        pytest.param(msgpack.packb([0, 1, "m", {"a": list(range(MAX_OBJECTS))}]), id="objects"),
    ],
)
def test_request_decoder_rejects(raw: bytes) -> None:
    decoder = RequestDecoder()
    decoder.feed(raw)
    with pytest.raises(ProtocolError):
        decoder.pop()


def test_nesting_up_to_max_depth_is_decoded_for_the_daemon_to_refuse_with_einval() -> None:
    assert MAX_DEPTH == 4
    raw = msgpack.packb([0, 1, "m", {"a": [[1], {"b": 2}]}])
    decoder = RequestDecoder()
    decoder.feed(raw)
    assert decoder.pop() == Request(1, "m", {"a": [[1], {"b": 2}]})


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"\x94\x00\x01\xa5write\x81\xa4data\xc6\x04\x00\x00\x00", id="64-MiB-bin"),
        pytest.param(b"\x94\x00\x01\xdb\x02\x00\x00\x00", id="32-MiB-method"),
        pytest.param(b"\x94\x00\x01\xa6lookup\x81\xa4name\xdd\x00\x20\x00\x00", id="2Mi-array"),
        pytest.param(b"\x94\x00\x01\xa1m\xdf\x00\x10\x00\x00", id="1Mi-map"),
        pytest.param(b"\xdd\xff\xff\xff\xff", id="4Gi-top-array"),
    ],
)
def test_oversized_requests_are_rejected_on_their_header_alone(header: bytes) -> None:
    decoder = RequestDecoder()
    decoder.feed(header)
    with pytest.raises(ProtocolError):
        decoder.pop()


def test_a_request_of_exactly_max_request_bytes_is_accepted_one_more_is_not() -> None:
    raw = pack_request(1, "write", {"data": b"x" * 983})
    decoder = RequestDecoder(max_request=len(raw))
    decoder.feed(raw)
    assert decoder.pop() == Request(1, "write", {"data": b"x" * 983})
    decoder = RequestDecoder(max_request=len(raw) - 1)
    decoder.feed(raw[:20])  # the headers say it all
    with pytest.raises(ProtocolError):
        decoder.pop()


def test_whole_inline_content_fits_in_a_request() -> None:
    raw = pack_request(2**32 - 1, "write", {"ino": 2**63 - 1, "data": b"\0" * INLINE_LIMIT})
    assert len(raw) <= MAX_REQUEST
    decoder = RequestDecoder()
    for start in range(0, len(raw), RECEIVE_SIZE):
        decoder.feed(raw[start : start + RECEIVE_SIZE])
    assert decoder.pop() is not None


def test_request_decoder_buffer_is_bounded() -> None:
    decoder = RequestDecoder(max_request=100)
    decoder.feed(b"\x94\x00")
    assert decoder.pop() is None
    assert decoder.buffered == 2
    with pytest.raises(ProtocolError):
        decoder.feed(b"\0" * (100 + RECEIVE_SIZE))


def test_frame_scanner_resumes_where_it_stopped() -> None:
    raw = pack_request(1, "m", {"a": list(range(1000))})
    scanner = FrameScanner(len(raw), MAX_OBJECTS, MAX_DEPTH)
    buf = bytearray()
    ends = []
    for byte in raw:
        buf.append(byte)
        ends.append(scanner.end(buf))
    assert ends[:-1] == [None] * (len(raw) - 1) and ends[-1] == len(raw)


# -- validation of every request (cached.api.REQUESTS) ---------------------------------------


def test_every_daemon_method_has_a_shape_and_every_front_call_fits_it() -> None:
    from cached.service import Service

    served = {name[4:] for name in dir(Service) if name.startswith("rpc_")}
    for group in (
        "ops_metadata.MetadataOps",
        "ops_namespace.NamespaceOps",
        "ops_content.ContentOps",
        "ops_xattr.XattrOps",
    ):
        module, cls = group.split(".")
        found = getattr(importlib.import_module(f"cached.{module}"), cls)
        served |= {name[4:] for name in dir(found) if name.startswith("rpc_")}
    assert set(REQUESTS) == served | {"status", "shutdown"}
    for name, method in inspect.getmembers(DaemonApi, inspect.isfunction):
        if name.startswith("_"):
            continue
        shape = REQUESTS[name]
        params = [p for p in inspect.signature(method).parameters if p not in ("self", "changes")]
        assert set(params) <= {*shape.required, *shape.optional}, name
        assert set(shape.required) <= set(params) | ({"ino"} if name == "setattr" else set())


def test_every_shape_names_exactly_the_parameters_of_its_daemon_method() -> None:
    """The server checks a request's names against its shape only, then calls the method
    with them: a shape and its ``rpc_*`` method must agree (required = no default)."""
    from cached.service import Service

    groups: list[type] = [Service]
    for group in ("ops_metadata.MetadataOps", "ops_namespace.NamespaceOps",
                  "ops_content.ContentOps", "ops_xattr.XattrOps"):  # fmt: skip
        module, cls = group.split(".")
        groups.append(getattr(importlib.import_module(f"cached.{module}"), cls))
    checked = 0
    for group in groups:
        for name in dir(group):
            if not name.startswith("rpc_") or name == "rpc_hello":  # hello: the server's
                continue
            params = list(inspect.signature(getattr(group, name)).parameters.values())[2:]
            shape = REQUESTS[name[4:]]
            required = {p.name for p in params if p.default is inspect.Parameter.empty}
            optional = {p.name for p in params if p.default is not inspect.Parameter.empty}
            assert (set(shape.required), set(shape.optional)) == (required, optional), name
            checked += 1
    assert checked == len(REQUESTS) - len({"hello", "status", "shutdown"})


GOOD: dict[str, dict[str, object]] = {
    "create": {"parent": 1, "name": b"a", "mode": 0o644, "uid": 0, "gid": 2**32 - 2},
    "mkdir": {"parent": 2**63 - 1, "name": b"n" * 255, "mode": 0o40755, "uid": 1, "gid": 1},
    "symlink": {"parent": 1, "name": b"\xff", "target": b"t" * 4096, "uid": 0, "gid": 0},
    "setattr": {"ino": 5, "mode": None, "uid": 7, "mtime_ns": -1, "size": 0},
    "read": {"ino": 5, "content_id": b"\0" * 32, "file_size": 0, "offset": 0, "size": 1 << 20},
    "write": {"ino": 5, "data": b"", "path": None},
    "rename": {"old_parent": 1, "old_name": b"a", "new_parent": 1, "new_name": b"b"},
    "open": {"ino": 1, "fetch": False},
    "hello": {"owner": -5, "environment": "prod-\u00e9"},
    "shutdown": {"force": True},
    "lookup": {"parent": 1, "name": b".."},
    "evict": {"owner": 1, "environment": "prod", "inos": [1, 2**63 - 1] * 128, "dry_run": True},
}


@pytest.mark.parametrize("method", sorted(GOOD))
def test_valid_requests_pass(method: str) -> None:
    validate_request(method, GOOD[method])


@pytest.mark.parametrize(
    ("method", "change", "err"),
    [
        ("create", {"uid": -5}, errno.EINVAL),
        ("create", {"gid": 2**32 - 1}, errno.EINVAL),
        ("create", {"uid": True}, errno.EINVAL),
        ("create", {"mode": -1}, errno.EINVAL),
        ("create", {"mode": 0o10000}, errno.EINVAL),
        ("create", {"mode": 0o40644}, errno.EINVAL),  # a directory's type bits
        ("create", {"mode": 2**64 - 1}, errno.EINVAL),
        ("create", {"mode": 420.0}, errno.EINVAL),
        ("create", {"name": "a"}, errno.EINVAL),
        ("create", {"name": b""}, errno.EINVAL),
        ("create", {"name": b"a/b"}, errno.EINVAL),
        ("create", {"name": b"a\0"}, errno.EINVAL),
        ("create", {"name": b"n" * 256}, errno.ENAMETOOLONG),
        ("create", {"parent": 0}, errno.EINVAL),
        ("create", {"parent": 2**63}, errno.EINVAL),
        ("create", {"parent": [1]}, errno.EINVAL),
        ("create", {"extra": 1}, errno.EINVAL),
        ("mkdir", {"mode": 0o100755}, errno.EINVAL),
        ("symlink", {"target": b""}, errno.EINVAL),
        ("symlink", {"target": b"t" * 4097}, errno.EINVAL),
        ("setattr", {"size": -1}, errno.EINVAL),
        ("setattr", {"mtime_ns": 2**63}, errno.EINVAL),
        ("setattr", {"mode": "0644"}, errno.EINVAL),
        ("read", {"offset": -1}, errno.EINVAL),
        ("read", {"size": -1}, errno.EINVAL),
        ("read", {"file_size": "1"}, errno.EINVAL),
        ("read", {"content_id": None}, errno.EINVAL),
        ("write", {"data": "text"}, errno.EINVAL),
        ("write", {"data": b"x" * (INLINE_LIMIT + 1)}, errno.EINVAL),
        ("write", {"path": ""}, errno.EINVAL),
        ("rename", {"flags": -1}, errno.EINVAL),
        ("rename", {"new_name": b"n" * 256}, errno.ENAMETOOLONG),
        ("open", {"fetch": 1}, errno.EINVAL),
        ("hello", {"environment": ""}, errno.EINVAL),
        ("hello", {"environment": "a\nb"}, errno.EINVAL),
        ("hello", {"environment": "e" * 256}, errno.EINVAL),
        ("hello", {"owner": 2**31}, errno.EINVAL),
        ("shutdown", {"force": "yes"}, errno.EINVAL),
        ("evict", {"inos": []}, errno.EINVAL),
        ("evict", {"inos": [1] * 257}, errno.EINVAL),
        ("evict", {"inos": [0]}, errno.EINVAL),
        ("evict", {"inos": (1,)}, errno.EINVAL),
        ("evict", {"dry_run": 1}, errno.EINVAL),
    ],
)
def test_invalid_values_are_refused_with_their_errno(
    method: str, change: dict[str, object], err: int
) -> None:
    with pytest.raises(CassfsError) as info:
        validate_request(method, {**GOOD[method], **change})
    assert info.value.errno == err


def test_missing_parameters_and_unknown_methods_are_einval() -> None:
    for method, params in (("getattr", {}), ("create", {"parent": 1}), ("nope", {})):
        with pytest.raises(InvalidArgument):
            validate_request(method, params)


def test_every_method_that_changes_cassandra_is_shielded_and_bounded() -> None:
    """A change once begun runs to its end or its deadline (MUTATING_METHODS): every method
    but the reads, the administrative ones, hello, materialize (it reads for the front's
    rewrite) and touch_atime (one idempotent write of an access time)."""
    from cached.api import REQUESTS
    from cached.server import ADMIN_METHODS, MUTATING_METHODS, READ_ONLY_METHODS

    others = {"hello", "materialize", "touch_atime"}
    assert set(REQUESTS) - READ_ONLY_METHODS - ADMIN_METHODS - others == MUTATING_METHODS
