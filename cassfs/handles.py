"""Open files of the FUSE front and the whole-file write buffer they share.

Writes replace whole files: the front collects a file's new content in a
:class:`WriteBuffer` (in memory up to :data:`SPILL_BYTES`, then in a file in the
cache dir's spool folder) and hands it to the daemon on ``flush``/``fsync``,
which writes it through to Cassandra before the call returns.  One buffer per
inode is shared by every handle open on it, as a page cache would be; each
:class:`OpenFile` records whether it changed that buffer since its last commit
(``dirtied``), so only a writer's ``close`` publishes it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from cached.api import MAX_FILE_SIZE
from cached.cachedir import front_spool_prefix
from cached.errors import FileTooLarge
from cached.protocol import INLINE_LIMIT

#: Content larger than this moves from memory to a spool file, bytes.
SPILL_BYTES = INLINE_LIMIT


@dataclass(slots=True)
class OpenFile:
    """One open(2) of a regular file, by its FUSE file handle ``fh``.

    ``ino`` is the inode number, ``node`` the kernel's node id it was opened through
    (the inode number unless an alias: see :mod:`cassfs.inodes`; 0 means ``ino``).

    The handle reads the content version it opened (``content_id``, ``size`` in
    bytes, ``mtime_ns``, under the daemon's cache ``epoch``) unless its inode has a
    write buffer; ``data`` holds that whole version when the daemon sent it inline.
    ``page_cache`` is False for a handle opened with ``direct_io``.  ``dirtied`` is
    True while the handle has changed the inode's buffer since the last commit (a
    truncating open counts), so its ``flush`` must write the buffer through.
    ``failed`` is True from a failed flush or fsync of this handle until its next
    write or successful commit: the caller was told (EIO), so ``release`` must not
    write that buffer through behind its back (it could land after a newer write
    another host had acknowledged meanwhile).
    """

    fh: int
    ino: int
    content_id: bytes
    size: int
    mtime_ns: int = 0
    epoch: int = 0
    data: bytes | None = None
    writable: bool = False
    page_cache: bool = True
    dirtied: bool = False
    failed: bool = False
    node: int = 0

    def __post_init__(self) -> None:
        if not self.node:
            self.node = self.ino

    def move_to(self, content_id: bytes, size: int, mtime_ns: int, epoch: int) -> None:
        """Read version ``content_id`` (``size`` bytes) from now on; drops inline data."""
        self.content_id, self.size, self.mtime_ns, self.epoch = content_id, size, mtime_ns, epoch
        self.data = None


class WriteBuffer:
    """The new content of one inode, from its first modification to its last release.

    A buffer always holds a whole content: it is made from bytes (empty for a
    truncating open, or the old content copied in for a partial rewrite) or from a
    spool file (:meth:`from_file`), never half loaded.  ``dirty`` is True while it
    differs from what the daemon has.  Sizes and offsets are bytes; file I/O runs
    in worker threads.
    """

    def __init__(self, spool_dir: Path, data: bytes = b"") -> None:
        self.spool_dir = spool_dir
        self.dirty = False
        self._memory = bytearray(data)
        self._path: Path | None = None
        self._fd: int | None = None
        self._size = len(data)

    @classmethod
    async def from_file(cls, spool_dir: Path, path: Path) -> WriteBuffer:
        """A clean buffer holding the spool file at ``path``, which it now owns.

        The file is removed again if it cannot be opened (``OSError``).
        """
        buffer = cls(spool_dir)
        buffer._path = path
        try:
            buffer._fd = await trio.to_thread.run_sync(os.open, path, os.O_RDWR)
            buffer._size = (await trio.to_thread.run_sync(os.fstat, buffer._fd)).st_size
        except BaseException:
            with trio.CancelScope(shield=True):
                await buffer.close()
            raise
        return buffer

    @property
    def size(self) -> int:
        """Current length of the content, bytes."""
        return self._size

    @property
    def path(self) -> Path | None:
        """The spool file once the content spilled to disk, else None."""
        return self._path

    async def _spill(self) -> None:
        def spill() -> tuple[Path, int]:
            # 0600; named front-<pid>-... so a daemon starting later can tell whether
            # its creator still lives (cached.cachedir.clean_spool)
            fd, name = tempfile.mkstemp(dir=self.spool_dir, prefix=front_spool_prefix())
            try:
                pwrite_all(fd, self._memory, 0)
            except BaseException:
                os.close(fd)
                _unlink_quietly(Path(name))
                raise
            return Path(name), fd

        self._path, self._fd = await trio.to_thread.run_sync(spill)
        self._memory = bytearray()

    async def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` (zero-filling any gap); marks the buffer dirty.

        Raises ``FileTooLarge`` (EFBIG), changing nothing, when the content would
        end past :data:`~cached.api.MAX_FILE_SIZE` bytes.  A gap left in a spool
        file stays a hole (sparse).
        """
        end = offset + len(data)
        check_size(end)
        if self._fd is None and end > SPILL_BYTES:
            await self._spill()
        if self._fd is not None:
            await trio.to_thread.run_sync(pwrite_all, self._fd, data, offset)
        else:
            if offset > len(self._memory):
                self._memory.extend(bytes(offset - len(self._memory)))
            self._memory[offset:end] = data
        self._size = max(self._size, end)
        self.dirty = True

    async def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end)."""
        if self._fd is not None:
            return await trio.to_thread.run_sync(os.pread, self._fd, size, offset)
        return bytes(self._memory[offset : offset + size])

    async def truncate(self, size: int) -> None:
        """Cut or zero-extend to ``size`` bytes; marks the buffer dirty.

        Raises ``FileTooLarge`` (EFBIG), changing nothing, over
        :data:`~cached.api.MAX_FILE_SIZE` bytes.
        """
        check_size(size)
        if self._fd is None and size > SPILL_BYTES:
            await self._spill()
        if self._fd is not None:
            await trio.to_thread.run_sync(os.ftruncate, self._fd, size)
        elif size <= len(self._memory):
            del self._memory[size:]
        else:
            self._memory.extend(bytes(size - len(self._memory)))
        self._size = size
        self.dirty = True

    def wire_content(self) -> dict[str, Any]:
        """The ``write`` RPC's content parameter: ``{"data": bytes}`` or ``{"path": str}``."""
        if self._path is not None:
            return {"path": str(self._path)}
        return {"data": bytes(self._memory)}

    async def close(self) -> None:
        """Release the spool file, if any."""
        fd, path = self._fd, self._path
        self._fd = self._path = None
        if fd is not None:
            await trio.to_thread.run_sync(os.close, fd)
        if path is not None:
            await trio.to_thread.run_sync(_unlink_quietly, path)


def check_size(size: int) -> None:
    """Raise ``FileTooLarge`` (EFBIG) if a file of ``size`` bytes would be over
    :data:`~cached.api.MAX_FILE_SIZE`."""
    if size > MAX_FILE_SIZE:
        raise FileTooLarge(f"{size} B is over the {MAX_FILE_SIZE} B file size limit")


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write all of ``data`` at byte ``offset`` of ``fd``, however short each pwrite(2) is.

    Blocking: call it in a worker thread.  Raises ``OSError`` (e.g. ENOSPC, EIO).
    """
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:  # pwrite(2) returns 0 only for an empty buffer
            raise OSError(errno.EIO, f"pwrite wrote nothing at offset {offset}")
        view = view[written:]
        offset += written


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
