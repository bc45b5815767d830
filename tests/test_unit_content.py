"""Unit tests of cached.content: content identity and chunking."""

from __future__ import annotations

import pytest

from cached.content import CHUNK_SIZE, EMPTY_ID, chunk_count, content_id, join


def pattern(size: int) -> bytes:
    """Deterministic bytes whose chunks all differ (so reordering is detectable)."""
    return bytes((i * 31 + i // 251) % 256 for i in range(size))


def test_content_id_is_sha256() -> None:
    assert content_id(b"abc") == bytes.fromhex(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert content_id(b"") == EMPTY_ID
    assert len(content_id(b"x" * 1000)) == 32


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, 0),
        (1, 1),
        (CHUNK_SIZE - 1, 1),
        (CHUNK_SIZE, 1),
        (CHUNK_SIZE + 1, 2),
        (2 * CHUNK_SIZE, 2),
        (3 * CHUNK_SIZE + 5, 4),
    ],
)
def test_chunk_count_default_chunk_size(size: int, expected: int) -> None:
    assert chunk_count(size) == expected


@pytest.mark.parametrize(
    ("size", "expected"), [(0, 0), (1, 1), (6, 1), (7, 1), (8, 2), (14, 2), (15, 3), (26, 4)]
)
def test_chunk_count_small_chunk_size(size: int, expected: int) -> None:
    assert chunk_count(size, 7) == expected


def test_chunk_count_rejects_negative_size() -> None:
    with pytest.raises(ValueError):
        chunk_count(-1)
    with pytest.raises(ValueError):
        chunk_count(-1, 7)


@pytest.mark.parametrize("chunk_size", [0, -7])
def test_chunk_count_rejects_non_positive_chunk_size(chunk_size: int) -> None:
    with pytest.raises(ValueError):
        chunk_count(10, chunk_size)


def chunks_of(data: bytes, chunk_size: int) -> list[bytes]:
    """The chunks a writer stores for ``data``: ``chunk_count`` slices of ``chunk_size``."""
    return [
        data[i * chunk_size : (i + 1) * chunk_size]
        for i in range(chunk_count(len(data), chunk_size))
    ]


@pytest.mark.parametrize("size", [0, 1, 6, 7, 8, 3 * 7 + 5])
def test_join_of_every_chunk_in_order_returns_the_content(size: int) -> None:
    data = pattern(size)
    assert join(chunks_of(data, 7), size, content_id(data)) == data


def test_empty_content_joins_from_no_chunks() -> None:
    assert join([], 0, EMPTY_ID) == b""
    with pytest.raises(ValueError):
        join([b""], 0, content_id(b"x"))


def test_join_missing_chunk_raises() -> None:
    data = pattern(26)
    chunks = chunks_of(data, 7)
    with pytest.raises(ValueError):
        join(chunks[:-1], len(data), content_id(data))
    with pytest.raises(ValueError):
        join(chunks[:1] + chunks[2:], len(data), content_id(data))


def test_join_reordered_chunks_raises() -> None:
    data = pattern(28)  # four full chunks: same total size after reordering
    chunks = chunks_of(data, 7)
    swapped = [chunks[1], chunks[0], *chunks[2:]]
    assert len(b"".join(swapped)) == len(data)
    with pytest.raises(ValueError):
        join(swapped, len(data), content_id(data))


def test_join_chunk_from_another_version_raises() -> None:
    old = pattern(21)
    new = bytearray(old)
    new[10] ^= 0xFF
    new = bytes(new)
    old_chunks = chunks_of(old, 7)
    new_chunks = chunks_of(new, 7)
    mixed = [new_chunks[0], old_chunks[1], new_chunks[2]]
    with pytest.raises(ValueError):
        join(mixed, len(new), content_id(new))
    # The unmixed versions both join.
    assert join(new_chunks, len(new), content_id(new)) == new
    assert join(old_chunks, len(old), content_id(old)) == old


def test_join_wrong_size_raises_even_with_matching_id() -> None:
    data = pattern(10)
    with pytest.raises(ValueError):
        join([data], 11, content_id(data))
