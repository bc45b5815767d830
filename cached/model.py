"""The records the daemon keeps and sends: inodes and directory entries.

Both travel over the RPC as plain msgpack maps (:meth:`Inode.to_wire`) and are
kept in diskcache in the same form, so the front, the daemon and the cache
agree on one shape.
"""

from __future__ import annotations

import stat
from dataclasses import asdict, dataclass, replace
from typing import Any

from cached.errors import InvalidArgument, NameTooLong

ROOT_INO = 1
#: Longest name in a directory, bytes (NAME_MAX).
NAME_MAX = 255

DIRECTORY = 1
REGULAR = 2
SYMLINK = 3

_KIND_BITS = {DIRECTORY: stat.S_IFDIR, REGULAR: stat.S_IFREG, SYMLINK: stat.S_IFLNK}


def mode_of_kind(kind: int, permissions: int) -> int:
    """Return the ``st_mode`` for ``kind`` with ``permissions`` (the low 12 bits)."""
    return _KIND_BITS[kind] | (permissions & 0o7777)


@dataclass(frozen=True, slots=True)
class Inode:
    """One inode of one tenant, as stored in ``inodes``.

    Times are nanoseconds since the epoch, ``size`` is bytes; ``content_id`` is
    the SHA-256 of the whole content (regular files; ``b""`` otherwise);
    ``nlink`` 0 means unlinked but still open somewhere.  ``version`` is the chunk
    key of the current content version (``b""``: no chunks, an empty file).
    """

    ino: int
    kind: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    parent: int
    nlink: int
    content_id: bytes
    chunk_size: int
    target: bytes
    version: bytes = b""

    @property
    def is_dir(self) -> bool:
        """True for a directory."""
        return self.kind == DIRECTORY

    def to_wire(self) -> dict[str, Any]:
        """Return a msgpack-friendly map of every field."""
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Inode:
        """Build from :meth:`to_wire` output; KeyError/TypeError on a malformed map."""
        return cls(**data)

    def evolve(self, **changes: Any) -> Inode:
        """Return a copy with ``changes`` applied."""
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Dentry:
    """A directory entry: ``name`` (bytes) in directory ``parent`` names inode ``ino``.

    ``pending`` is the id of the cross-directory rename moving it (``b""``: none).
    """

    parent: int
    name: bytes
    ino: int
    kind: int
    pending: bytes = b""


def check_name(name: bytes) -> None:
    """Reject names no directory may hold.

    Raises ``NameTooLong`` (ENAMETOOLONG) over NAME_MAX bytes and
    ``InvalidArgument`` (EINVAL) for empty names, ``.``/``..`` or a ``/`` or NUL inside.
    """
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes is over {NAME_MAX}")
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        raise InvalidArgument(f"invalid name {name!r}")
