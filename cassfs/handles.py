"""Open files of the FUSE front and the whole-file write buffer they share.

Writes replace whole files: the front collects a file's new content in a
:class:`WriteBuffer` (in memory up to :data:`SPILL_BYTES`, then in a file in the
cache dir's spool folder) and hands it to the daemon on ``flush``/``fsync``,
which writes it through to Cassandra before the call returns.  One buffer per
inode is shared by every handle open on it, as a page cache would be.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from cached.protocol import INLINE_LIMIT

#: Content larger than this moves from memory to a spool file, bytes.
SPILL_BYTES = INLINE_LIMIT


@dataclass
class OpenFile:
    """One open(2) of a regular file: the content version it opened.

    ``data`` holds the whole content when the daemon sent it inline at open.
    """

    ino: int
    content_id: bytes
    size: int
    data: bytes | None = None


class WriteBuffer:
    """The new content of one inode, from its first modification to its last release.

    ``loaded`` is False until the buffer holds the file's content (a truncating
    open, or the old content copied in for a partial write); ``dirty`` is True
    while it differs from what the daemon has.  File I/O runs in worker threads.
    """

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self.lock = trio.Lock()
        self.loaded = False
        self.dirty = False
        self._memory = bytearray()
        self._path: Path | None = None
        self._fd: int | None = None
        self._size = 0

    @property
    def size(self) -> int:
        """Current length of the content, bytes."""
        return self._size

    @property
    def path(self) -> Path | None:
        """The spool file once the content spilled to disk, else None."""
        return self._path

    async def load_bytes(self, data: bytes) -> None:
        """Start from ``data`` (clean), dropping any spool file."""
        await self.close()
        self._memory = bytearray(data)
        self._size = len(data)
        self.loaded = True

    async def load_file(self, path: Path) -> None:
        """Start from the spool file at ``path``, which the buffer now owns (clean)."""
        await self.close()
        self._path = path
        self._fd = await trio.to_thread.run_sync(os.open, path, os.O_RDWR)
        self._size = (await trio.to_thread.run_sync(os.fstat, self._fd)).st_size
        self._memory = bytearray()
        self.loaded = True

    async def _spill(self) -> None:
        def spill() -> tuple[Path, int]:
            fd, name = tempfile.mkstemp(dir=self.spool_dir, prefix="front-")
            os.write(fd, self._memory)
            return Path(name), fd

        self._path, self._fd = await trio.to_thread.run_sync(spill)
        self._memory = bytearray()

    async def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` (zero-filling any gap); marks the buffer dirty."""
        end = offset + len(data)
        if self._fd is None and end > SPILL_BYTES:
            await self._spill()
        if self._fd is not None:
            await trio.to_thread.run_sync(os.pwrite, self._fd, data, offset)
        else:
            if offset > len(self._memory):
                self._memory.extend(bytes(offset - len(self._memory)))
            self._memory[offset:end] = data
        self._size = max(self._size, end)
        self.loaded = self.dirty = True

    async def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end)."""
        if self._fd is not None:
            return await trio.to_thread.run_sync(os.pread, self._fd, size, offset)
        return bytes(self._memory[offset : offset + size])

    async def truncate(self, size: int) -> None:
        """Cut or zero-extend to ``size`` bytes; marks the buffer loaded and dirty."""
        if self._fd is None and size > SPILL_BYTES:
            await self._spill()
        if self._fd is not None:
            await trio.to_thread.run_sync(os.ftruncate, self._fd, size)
        elif size <= len(self._memory):
            del self._memory[size:]
        else:
            self._memory.extend(bytes(size - len(self._memory)))
        self._size = size
        self.loaded = self.dirty = True

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


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
