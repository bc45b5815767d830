"""Pure functions on whole-file content: identity (SHA-256) and chunking.

A file's content is stored as ``ceil(size / chunk_size)`` chunks of
``chunk_size`` bytes (the last may be shorter; an empty file has none), each a
partition of its own in ``chunks``.  1 MiB keeps every cell far below
Cassandra's mutation limit (half of ``commitlog_segment_size``, 16 MiB by
default) while a typical PHP file is one chunk.

Holes: a chunk whose bytes are all zero is never stored.  A chunk row that is
absent reads as that many zero bytes (:func:`expected_length`), and every reader
checks the SHA-256 of the whole content, which tells a hole (the content has
zeros there) from a lost chunk (it does not).  A sparse file costs its data
chunks, not its size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

#: Bytes per chunk for new content.
CHUNK_SIZE = 1024 * 1024
#: Content up to this many bytes is kept whole in its ``versions`` row and in the inode's
#: row (schema version 6), not in chunks: one read of the inode gives a small file's bytes.
INLINE_CONTENT_LIMIT = 64 * 1024
#: SHA-256 of the empty content: the content identity of every empty file.
EMPTY_ID = hashlib.sha256(b"").digest()
#: One chunk of zero bytes: what a hole of :data:`CHUNK_SIZE` bytes reads as.
ZERO_CHUNK = bytes(CHUNK_SIZE)


def content_id(data: bytes) -> bytes:
    """Return the 32-byte SHA-256 digest that identifies ``data``."""
    return hashlib.sha256(data).digest()


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Number of chunks that hold ``size`` bytes (0 for an empty file).

    Raises ValueError for a negative size or a non-positive chunk size.
    """
    if size < 0 or chunk_size <= 0:
        raise ValueError(f"bad size {size} or chunk size {chunk_size}")
    return -(-size // chunk_size)


def expected_length(size: int, chunk_size: int, index: int) -> int:
    """Bytes chunk ``index`` holds in content of ``size`` bytes cut in ``chunk_size`` chunks.

    ``chunk_size`` bytes, the last chunk fewer; 0 past the end.
    """
    return max(0, min(chunk_size, size - index * chunk_size))


def zeros(length: int) -> bytes:
    """``length`` zero bytes: what an absent chunk (a hole) of that length reads as."""
    return ZERO_CHUNK[:length] if length <= CHUNK_SIZE else bytes(length)


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """True if every byte of ``data`` is zero (an empty ``data`` too): a hole, not stored."""
    if not isinstance(data, bytes):
        data = bytes(data)
    length = len(data)
    return data == (ZERO_CHUNK if length == CHUNK_SIZE else bytes(length))


def join(chunks: Iterable[bytes], size: int, expected_id: bytes) -> bytes:
    """Concatenate chunks and check them against the inode's ``size`` and ``content_id``.

    Raises ValueError when the result is not exactly that content (a chunk
    missing, or mixed from two versions).
    """
    data = b"".join(chunks)
    if len(data) != size or content_id(data) != expected_id:
        raise ValueError("content does not match its identity")
    return data
