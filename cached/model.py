"""The records the daemon keeps and sends: inodes and directory entries.

Both travel over the RPC as plain msgpack maps (:meth:`Inode.to_wire`) and are
kept in diskcache in the same form, so the front, the daemon and the cache
agree on one shape.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, fields, replace
from typing import Any

from cached.errors import InvalidArgument, NameTooLong

ROOT_INO = 1
#: Longest name in a directory, bytes (NAME_MAX).
NAME_MAX = 255

DIRECTORY = 1
REGULAR = 2
SYMLINK = 3
FIFO = 4
CHARDEV = 5
BLOCKDEV = 6
SOCKET = 7

_KIND_BITS = {
    DIRECTORY: stat.S_IFDIR,
    REGULAR: stat.S_IFREG,
    SYMLINK: stat.S_IFLNK,
    FIFO: stat.S_IFIFO,
    CHARDEV: stat.S_IFCHR,
    BLOCKDEV: stat.S_IFBLK,
    SOCKET: stat.S_IFSOCK,
}
#: Kinds made by mknod(2): no content, no target; devices keep ``rdev``.
SPECIAL_KINDS = frozenset({FIFO, CHARDEV, BLOCKDEV, SOCKET})


def mode_of_kind(kind: int, permissions: int) -> int:
    """Return the ``st_mode`` for ``kind`` with ``permissions`` (the low 12 bits)."""
    return _KIND_BITS[kind] | (permissions & 0o7777)


def kind_of_mode(mode: int) -> int:
    """The kind whose file type bits ``mode`` has (``stat.S_IFMT``).

    Raises ``InvalidArgument`` (EINVAL) for a type cassfs does not store.
    """
    for kind, bits in _KIND_BITS.items():
        if stat.S_IFMT(mode) == bits:
            return kind
    raise InvalidArgument(f"unknown file type in mode {mode:#o}")


@dataclass(frozen=True, slots=True)
class Inode:
    """One inode of one tenant, as stored in ``inodes``.

    Times are nanoseconds since the epoch, ``size`` is bytes; ``content_id`` is
    the SHA-256 of the whole content (regular files; ``b""`` otherwise);
    ``nlink`` counts the names of a non-directory (hard links); 0 means unlinked
    but still open somewhere.  ``version`` is the chunk key of the current content
    version (``b""``: no chunks, an empty file).  ``rdev`` is the device number of
    a character or block device (0 otherwise).  ``xattrs`` says whether the inode may
    have extended attributes (schema 7): False for one made without any and never given
    one, True once one was set (it stays True when they are removed), None when unknown
    (an inode of an older schema): only False lets a reader skip the ``xattrs`` table.
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
    rdev: int = 0
    xattrs: bool | None = None

    @property
    def is_dir(self) -> bool:
        """True for a directory."""
        return self.kind == DIRECTORY

    def to_wire(self) -> dict[str, Any]:
        """Return a msgpack-friendly map of every field (every field is a scalar, so no
        deep copy as ``dataclasses.asdict`` makes: one is sent per reply)."""
        return {name: getattr(self, name) for name in _INODE_FIELDS}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Inode:
        """Build from :meth:`to_wire` output; KeyError/TypeError on a malformed map."""
        return cls(**data)

    def evolve(self, **changes: Any) -> Inode:
        """Return a copy with ``changes`` applied."""
        return replace(self, **changes)


_INODE_FIELDS = tuple(f.name for f in fields(Inode))

#: Nanoseconds after which ``relatime`` records an access even without a change since.
RELATIME_AGE_NS = 24 * 3600 * 1_000_000_000


def needs_atime(inode: Inode, now_ns: int) -> bool:
    """Whether ``relatime`` records an access to ``inode`` at ``now_ns``: the access
    time is not after the last modification or change, or it is a day old (Linux's
    ``relatime_need_update`` in fs/inode.c)."""
    atime = inode.atime_ns
    return atime <= inode.mtime_ns or atime <= inode.ctime_ns or now_ns - atime >= RELATIME_AGE_NS


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
