"""Typed exceptions shared by the daemon, its client and the FUSE front.

Each carries the errno that the FUSE edge reports, so a failure raised in the
daemon crosses the RPC boundary as ``(errno, message)`` and is raised again in
the front as the same class (see :func:`from_wire`).
"""

from __future__ import annotations

import errno as _errno


class CassfsError(Exception):
    """Base class; ``errno`` is the POSIX error number reported for it (default EIO)."""

    errno: int = _errno.EIO

    def __init__(self, message: str = "", *, err: int | None = None) -> None:
        super().__init__(message)
        if err is not None:
            self.errno = err

    def to_wire(self) -> list[object]:
        """Return ``[errno, message]`` for an RPC error reply."""
        return [self.errno, str(self)]


class NotFound(CassfsError):
    """No such inode or directory entry (ENOENT)."""

    errno = _errno.ENOENT


class Exists(CassfsError):
    """The name is already taken (EEXIST)."""

    errno = _errno.EEXIST


class NotEmpty(CassfsError):
    """The directory still has entries (ENOTEMPTY)."""

    errno = _errno.ENOTEMPTY


class NotADirectory(CassfsError):
    """A directory was required (ENOTDIR)."""

    errno = _errno.ENOTDIR


class IsADirectory(CassfsError):
    """A non-directory was required (EISDIR)."""

    errno = _errno.EISDIR


class NameTooLong(CassfsError):
    """A name is longer than NAME_MAX, 255 bytes (ENAMETOOLONG)."""

    errno = _errno.ENAMETOOLONG


class InvalidArgument(CassfsError):
    """The request makes no sense, e.g. moving a directory into itself (EINVAL)."""

    errno = _errno.EINVAL


class FileTooLarge(CassfsError):
    """A write or truncate would make a file larger than ``MAX_FILE_SIZE`` (EFBIG)."""

    errno = _errno.EFBIG


class TooManyLinks(CassfsError):
    """An inode has as many names as it may have, ``LINK_MAX`` (EMLINK)."""

    errno = _errno.EMLINK


class NotPermitted(CassfsError):
    """The operation is not allowed on this kind of inode, e.g. a hard link to a
    directory (EPERM)."""

    errno = _errno.EPERM


class NoAttribute(CassfsError):
    """No extended attribute of that name (ENODATA, which Linux also calls ENOATTR)."""

    errno = _errno.ENODATA


class NotSupported(CassfsError):
    """An extended attribute name outside the namespaces cassfs stores, e.g. ``system.*``
    or a name without a namespace (EOPNOTSUPP, which Linux also calls ENOTSUP)."""

    errno = _errno.EOPNOTSUPP


class OutOfRange(CassfsError):
    """An extended attribute name that is empty or longer than 255 bytes (ERANGE)."""

    errno = _errno.ERANGE


class TooBig(CassfsError):
    """An extended attribute value over 65536 bytes (E2BIG)."""

    errno = _errno.E2BIG


class NoSpace(CassfsError):
    """No room left, e.g. an inode's extended attributes at their total limit (ENOSPC)."""

    errno = _errno.ENOSPC


class ReadOnly(CassfsError):
    """A change asked of a read-only mount session (``hello`` with ``read_only``), refused
    before anything is written to Cassandra (EROFS)."""

    errno = _errno.EROFS


class StorageError(CassfsError):
    """Cassandra failed or timed out, or content failed verification (EIO)."""

    errno = _errno.EIO


class Unreachable(StorageError):
    """Cassandra as a whole cannot be asked: no node answers (the driver found none up, or a
    query got no answer while no other node answered either), or an outage is remembered
    (EIO).  Cached entries serve past their TTL instead.  One node away on a cluster is
    not this (see :mod:`cached.outage`)."""


class OutcomeUnknown(StorageError):
    """A conditional write (LWT) got no answer, or Cassandra said "CAS operation result is
    unknown": it may or may not have been applied (EIO).  The caller learns which by
    asking again (:class:`cached.store.TenantStore` does where the answer tells)."""


class ConnectionRejected(StorageError):
    """The nodes answered but refused this client: wrong credentials, a TLS handshake or
    certificate verification that failed, or a ``--local-dc`` the cluster lacks (EIO).
    Trying again will not help; the message says what to fix."""


class DaemonUnavailable(CassfsError):
    """The cache daemon cannot be reached or dropped the connection (EIO)."""

    errno = _errno.EIO


class SchemaMissing(CassfsError):
    """The keyspace or its tables are missing: run ``cassfs schema apply`` (EIO)."""

    errno = _errno.EIO


_BY_ERRNO: dict[int, type[CassfsError]] = {
    cls.errno: cls
    for cls in (
        NotFound,
        Exists,
        NotEmpty,
        NotADirectory,
        IsADirectory,
        NameTooLong,
        InvalidArgument,
        FileTooLarge,
        TooManyLinks,
        NotPermitted,
        NoAttribute,
        NotSupported,
        OutOfRange,
        TooBig,
        NoSpace,
        ReadOnly,
    )
}


def from_wire(payload: object) -> CassfsError:
    """Rebuild an exception from an RPC error reply ``[errno, message]``.

    Unknown or malformed payloads become :class:`CassfsError` with EIO.
    """
    if isinstance(payload, list | tuple) and len(payload) == 2 and isinstance(payload[0], int):
        err, message = payload[0], str(payload[1])
        cls = _BY_ERRNO.get(err, CassfsError)
        return cls(message, err=err)
    return CassfsError(f"malformed error reply: {payload!r}")
