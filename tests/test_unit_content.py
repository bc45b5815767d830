"""Unit tests of cached.content: content identity and chunking."""

from __future__ import annotations

import hashlib

import pytest

from cached.content import CHUNK_SIZE, EMPTY_ID, chunk_count, content_id, join, split


def pattern(size: int) -> bytes:
    """Deterministic bytes whose chunks all differ (so reordering is detectable)."""
    return bytes((i * 31 + i // 251) % 256 for i in range(size))


def test_chunk_size_is_one_mib() -> None:
    assert CHUNK_SIZE == 1024 * 1024


def test_content_id_is_sha256() -> None:
    assert content_id(b"abc") == bytes.fromhex(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert content_id(b"") == EMPTY_ID == hashlib.sha256(b"").digest()
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


@pytest.mark.parametrize("size", [0, 1, 6, 7, 8, 3 * 7 + 5])
def test_split_join_round_trip_small_chunks(size: int) -> None:
    data = pattern(size)
    chunks = list(split(data, 7))
    assert [index for index, _ in chunks] == list(range(chunk_count(size, 7)))
    assert all(len(chunk) == 7 for _, chunk in chunks[:-1])
    if chunks:
        assert 1 <= len(chunks[-1][1]) <= 7
    assert all(type(chunk) is bytes for _, chunk in chunks)
    assert join((chunk for _, chunk in chunks), size, content_id(data)) == data


def test_split_of_empty_content_has_no_chunks() -> None:
    assert list(split(b"")) == []
    assert join([], 0, EMPTY_ID) == b""


def test_split_exact_chunk_sizes() -> None:
    data = pattern(3 * 7 + 5)
    assert list(split(data, 7)) == [
        (0, data[0:7]),
        (1, data[7:14]),
        (2, data[14:21]),
        (3, data[21:26]),
    ]


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 5])
def test_split_join_round_trip_real_chunk_size(size: int) -> None:
    data = pattern(size) if size < 4096 else (pattern(4093) * (size // 4093 + 1))[:size]
    chunks = list(split(data))
    assert len(chunks) == chunk_count(size)
    assert [len(c) for _, c in chunks[:-1]] == [CHUNK_SIZE] * (len(chunks) - 1 if chunks else 0)
    assert join((c for _, c in chunks), size, content_id(data)) == data


def test_join_missing_chunk_raises() -> None:
    data = pattern(26)
    chunks = [c for _, c in split(data, 7)]
    with pytest.raises(ValueError):
        join(chunks[:-1], len(data), content_id(data))
    with pytest.raises(ValueError):
        join(chunks[:1] + chunks[2:], len(data), content_id(data))


def test_join_reordered_chunks_raises() -> None:
    data = pattern(28)  # four full chunks: same total size after reordering
    chunks = [c for _, c in split(data, 7)]
    swapped = [chunks[1], chunks[0], *chunks[2:]]
    assert len(b"".join(swapped)) == len(data)
    with pytest.raises(ValueError):
        join(swapped, len(data), content_id(data))


def test_join_chunk_from_another_version_raises() -> None:
    old = pattern(21)
    new = bytearray(old)
    new[10] ^= 0xFF
    new = bytes(new)
    old_chunks = [c for _, c in split(old, 7)]
    new_chunks = [c for _, c in split(new, 7)]
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
