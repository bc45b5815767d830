"""Telling the kernel to drop what it caches: the FUSE front's notification edge.

pyfuse3's invalidation calls write a notification to ``/dev/fuse`` and may block:
``invalidate_inode`` while writeback holds dirty data, ``invalidate_entry`` while a
related request (lookup, create, rename... in the parent) is in flight, which
deadlocks when called from inside such a handler.  So the calls here never run on
the trio thread: inode invalidations run in worker threads, entry invalidations go
through pyfuse3's own notification thread (``invalidate_entry_async``).  Both
raise ``FileNotFoundError`` when the kernel holds nothing for the inode or name,
which is success here.  Sources: pyfuse3 ``__init__.pyx`` docstrings, libfuse
``fuse_lowlevel.h`` (``fuse_lowlevel_notify_inval_inode``).

:class:`KernelCache` is the interface the operations use; tests pass a fake.
"""

from __future__ import annotations

import errno
import logging
from typing import Protocol

import pyfuse3
import trio

log = logging.getLogger(__name__)

#: Worker threads writing inode invalidations at once.
INVALIDATION_THREADS = 4
#: Worker threads dropping dentries at once, abandoned ones included: a thread the kernel
#: keeps waiting for a directory's lock holds its slot until the kernel lets it go.
ENTRY_INVALIDATION_THREADS = 8


class KernelCache(Protocol):
    """The kernel caches the front can drop."""

    async def invalidate_attributes(self, ino: int) -> None:
        """Drop the kernel's cached attributes (above all ``st_size``) of ``ino``."""

    async def invalidate_inode(self, ino: int) -> None:
        """Drop the kernel's cached attributes and pages of ``ino``."""

    def invalidate_entry_soon(self, parent: int, name: bytes) -> None:
        """Have the kernel drop its dentry for ``name`` in ``parent`` soon (never blocks)."""

    async def invalidate_entry(self, parent: int, name: bytes, wait: float) -> bool:
        """Drop the dentry ``name`` in ``parent``; True once the kernel has, False after
        ``wait`` seconds (the kernel may be waiting for a lock on ``parent``)."""


class FuseKernelCache:
    """:class:`KernelCache` of the mounted pyfuse3 session (one per process)."""

    def __init__(self) -> None:
        self._limiter = trio.CapacityLimiter(INVALIDATION_THREADS)
        # Not trio's default limiter (40 threads, shared with the handles' file I/O): 40
        # abandoned dentry drops held it all, so a flush could not get a thread to answer
        # the request whose directory lock those drops waited for (a race run's mount
        # hung for good, its worker threads in fuse_reverse_inval_entry).
        self._entry_limiter = trio.CapacityLimiter(ENTRY_INVALIDATION_THREADS)

    async def invalidate_attributes(self, ino: int) -> None:
        """Drop ``ino``'s cached attributes; returns once the kernel has.

        Errors other than "not cached" are logged, not raised: the attributes then
        expire with their timeout.
        """
        await self._invalidate(ino, True)

    async def invalidate_inode(self, ino: int) -> None:
        """Drop ``ino``'s cached attributes and pages; errors are logged, not raised."""
        await self._invalidate(ino, False)

    async def _invalidate(self, ino: int, attr_only: bool) -> None:
        try:
            await trio.to_thread.run_sync(
                pyfuse3.invalidate_inode, ino, attr_only, limiter=self._limiter
            )
        except FileNotFoundError:
            pass  # the kernel holds nothing for it
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("could not invalidate inode %d in the kernel: %s", ino, exc)

    def invalidate_entry_soon(self, parent: int, name: bytes) -> None:
        """Queue the invalidation of dentry ``name`` in ``parent`` (pyfuse3's notify thread)."""
        pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)

    async def invalidate_entry(self, parent: int, name: bytes, wait: float) -> bool:
        """Drop the dentry ``name`` in ``parent``, waiting at most ``wait`` seconds; True if done.

        Blocks in a worker thread: the kernel locks ``parent`` first, so a request in
        flight there (or a rename holding it) delays it.  Past ``wait`` the thread is
        abandoned and finishes on its own, holding one of
        :data:`ENTRY_INVALIDATION_THREADS` until then (none free: False after ``wait``
        too); False.  Other errors are logged, not raised.
        """
        with trio.move_on_after(wait):
            try:
                await trio.to_thread.run_sync(
                    pyfuse3.invalidate_entry,
                    parent,
                    name,
                    abandon_on_cancel=True,
                    limiter=self._entry_limiter,
                )
            except FileNotFoundError:
                pass  # the kernel holds no such dentry
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("could not drop dentry %r in %d: %s", name, parent, exc)
            return True
        log.info("dentry %r in %d not dropped within %s s: its directory is busy",
                 name, parent, wait)  # fmt: skip
        return False
