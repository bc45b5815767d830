"""Unit tests of cached.protocol: msgpack-RPC framing and the sans-IO Decoder."""

from __future__ import annotations

import msgpack
import pytest

from cached.protocol import (
    MAX_MESSAGE,
    Decoder,
    Notification,
    ProtocolError,
    Request,
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
