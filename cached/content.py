"""Pure functions on whole-file content: identity (SHA-256) and chunking.

A file's content is stored as ``ceil(size / chunk_size)`` chunks of
``chunk_size`` bytes (the last may be shorter; an empty file has none), each a
partition of its own in ``chunks``.  1 MiB keeps every cell far below
Cassandra's mutation limit (half of ``commitlog_segment_size``, 16 MiB by
default) while a typical PHP file is one chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

#: Bytes per chunk for new content.
CHUNK_SIZE = 1024 * 1024
#: SHA-256 of the empty content: the content identity of every empty file.
EMPTY_ID = hashlib.sha256(b"").digest()


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


def join(chunks: Iterable[bytes], size: int, expected_id: bytes) -> bytes:
    """Concatenate chunks and check them against the inode's ``size`` and ``content_id``.

    Raises ValueError when the result is not exactly that content (a chunk
    missing, or mixed from two versions).
    """
    data = b"".join(chunks)
    if len(data) != size or content_id(data) != expected_id:
        raise ValueError("content does not match its identity")
    return data
