"""This host's cassfs mounts as the kernel lists them (``/proc/self/mounts``).

A cassfs mount is of type ``fuse.cassfs`` and its source (``-o fsname=``, see
:func:`cassfs.mount.fuse_options`) is ``cassfs:OWNER/ENVIRONMENT``: the tenant.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

#: What a request to a FUSE mount whose process died fails with (ECONNABORTED once the
#: connection was aborted through /sys/fs/fuse).
DEAD_MOUNT_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)
#: The type /proc/mounts gives a cassfs mount (``-o subtype=cassfs``).
CASSFS_FSTYPE = "fuse.cassfs"
_SOURCE = re.compile(r"cassfs:(-?\d+)/(.+)")


@dataclass(frozen=True)
class MountEntry:
    """One mount of the mount table: where, of which type, from which source."""

    mountpoint: str
    fstype: str
    source: str

    @property
    def tenant(self) -> tuple[int, str] | None:
        """``(owner, environment)`` of a cassfs mount, None when the source says none."""
        match = _SOURCE.fullmatch(self.source)
        return (int(match.group(1)), match.group(2)) if match else None


def _unescape(field: bytes) -> str:
    """A field as /proc/mounts writes it (space, tab, newline, backslash as ``\\ooo``)."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


def mount_table() -> list[MountEntry]:
    """Every mount of this process's namespace, in mount order (later ones on top).

    Raises OSError when /proc/self/mounts cannot be read.
    """
    entries = []
    with open("/proc/self/mounts", "rb") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3:
                entries.append(
                    MountEntry(_unescape(fields[1]), os.fsdecode(fields[2]), _unescape(fields[0]))
                )
    return entries


def cassfs_mounts() -> list[MountEntry]:
    """The cassfs mounts of this host (type ``fuse.cassfs``)."""
    return [entry for entry in mount_table() if entry.fstype == CASSFS_FSTYPE]


def mount_of(path: Path) -> MountEntry | None:
    """The mount ``path`` lies on (the topmost mount at the longest mountpoint above its
    real path), None when /proc/self/mounts is unreadable."""
    real = os.path.realpath(path)
    best: MountEntry | None = None
    try:
        table = mount_table()
    except OSError:
        return None
    for entry in table:
        point = entry.mountpoint
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mountpoint)):
            best = entry
    return best


def connection_error(mountpoint: str | os.PathLike[str]) -> OSError | None:
    """The error a request to ``mountpoint``'s file system fails with, None if it answers.

    A ``statfs`` always reaches the FUSE connection: a FUSE mount whose process died
    (``kill -9``) fails it with ENOTCONN (:data:`DEAD_MOUNT_ERRNOS`).  Other calls do
    not tell a dead mount from a live one: a ``stat`` of the root is answered from the
    kernel's cached attributes (``--entry-ttl``), and once the mount declined an
    opendir (``cassfs.openflags``) the kernel opens directories without asking and
    answers listings from the entries it keeps.  Blocks while the file system does
    not answer (a hung mount): callers that must not hang run it in a thread.
    """
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc
    return None


def dead_mount_error(mountpoint: str | os.PathLike[str]) -> OSError | None:
    """The error of :func:`connection_error` when ``mountpoint`` is a dead FUSE mount (its
    process died: :data:`DEAD_MOUNT_ERRNOS`), else None."""
    error = connection_error(mountpoint)
    return error if error is not None and error.errno in DEAD_MOUNT_ERRNOS else None
