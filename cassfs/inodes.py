"""What the FUSE front knows about each inode the kernel holds: one record per inode.

A :class:`InodeState` gathers everything the front keeps about one inode number:

- ``lookups``: the kernel's lookup count (+1 per ``lookup``, ``create``, ``mkdir``,
  ``symlink`` and accepted readdirplus entry, -n per ``forget``; pyfuse3
  ``rst/general.rst`` "Lookup Counts").  An inode that lost its last name stays
  usable until the count reaches zero and its last handle is released
  (``unlinked``); then it is purged.
- ``handles``: its open files (:class:`~cassfs.handles.OpenFile`, by ``fh``).
- ``buffer``: the whole-file write buffer its writers share.  It exists only
  once it holds the file's content (loaded from the daemon, or emptied by
  ``O_TRUNC``), never half made.
- ``pages``: the :class:`Version` whose pages and attributes the kernel may hold.
  The kernel's page cache and cached ``st_size`` belong to the inode, not to an
  open file, so only handles of that version read through the page cache; see
  :meth:`InodeState.placement`.
- ``reusable``: the last ``open`` answer of the daemon, reused for read-only
  opens while the daemon's TTL for the inode runs.
- ``told``: the contents ``(content_id, size)`` whose size the front told the
  kernel since it last dropped the kernel's cached attributes, or None when the
  kernel's size may come from elsewhere (local writes and truncates, a
  ``direct_io`` handle) or is not known.  An open that makes a version the page
  cache's must drop the kernel's cached size unless only that version's was told.
- ``lock``: serialises loading, writing, truncating, committing and dropping the
  buffer, so a ``setattr`` cannot truncate a buffer that ``release`` is closing.
- ``dentry``: for a directory, the ``(parent, name)`` under which the front last
  gave it to the kernel.  The kernel holds one dentry per directory; when another
  host moved it, the old one must go (see ``Operations._dentry_told``).

Invariants between checkpoints (every ``await``):

1. Every handle with ``page_cache`` set has the content of ``pages``, or reads
   from ``buffer`` (which exists while local writes are in progress); the one
   exception is a writer that waited in vain for older readers (then, as on a
   local disk, they may see its writes).
2. ``buffer`` is None or loaded; it is replaced or dropped only under ``lock``.
3. A record with ``lookups == 0``, no handle and no buffer is dropped from the table.
"""

from __future__ import annotations

import enum
import errno as _errno
from dataclasses import dataclass

import trio

from cached.errors import CassfsError
from cached.model import REGULAR, ROOT_INO, Inode
from cassfs.handles import OpenFile, WriteBuffer


class InodeGone(CassfsError):
    """The inode a request names by number no longer exists (ESTALE).

    The kernel's cached dentry still names it (e.g. another host replaced the file
    by renaming over it).  On ESTALE Linux's VFS walks the path again with
    ``LOOKUP_REVAL`` (``fs/namei.c``, ``retry_estale``), which looks the name up anew.
    """

    errno = _errno.ESTALE


@dataclass(frozen=True, slots=True)
class Version:
    """One content version of a file as the kernel may cache it.

    ``content_id`` is the SHA-256 of the content, ``size`` its length in bytes,
    ``mtime_ns`` the inode's mtime in nanoseconds when it was read, and ``epoch``
    the daemon's cache epoch (it changes on ``cassfs cache purge``).
    """

    content_id: bytes
    size: int
    mtime_ns: int
    epoch: int

    @classmethod
    def of(cls, inode: Inode, epoch: int) -> Version:
        """The version of the daemon's ``inode`` under cache epoch ``epoch``."""
        return cls(inode.content_id, inode.size, inode.mtime_ns, epoch)

    def same_content(self, other: Version) -> bool:
        """True when ``other`` has the same bytes (content and size; times and epoch aside)."""
        return self.content_id == other.content_id and self.size == other.size

    def same_pages(self, other: Version) -> bool:
        """True when the kernel's pages of ``self`` serve ``other``: same content and epoch."""
        return self.same_content(other) and self.epoch == other.epoch


class Placement(enum.Enum):
    """How an open uses the kernel's page cache (see :meth:`InodeState.placement`)."""

    #: The kernel's pages and size are this version's (or the buffer's): keep them.
    KEEP = "keep"
    #: Make this version the page cache's: drop pages and cached attributes at open.
    SWITCH = "switch"
    #: Handles of another version read through the page cache: wait for them to close.
    WAIT = "wait"
    #: They did not close in time: bypass the page cache (``direct_io``).
    DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class Reusable:
    """An ``open`` answer reusable until ``deadline`` (trio clock, seconds)."""

    deadline: float
    inode: Inode


class InodeState:
    """The front's record of one inode; see the module docstring for its fields."""

    __slots__ = (
        "_page_handles_closed",
        "_switched",
        "_switches",
        "buffer",
        "dentry",
        "handles",
        "ino",
        "lock",
        "lookups",
        "pages",
        "reusable",
        "told",
        "unlinked",
    )

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.lookups = 0
        self.handles: dict[int, OpenFile] = {}
        self.buffer: WriteBuffer | None = None
        self.pages: Version | None = None
        self.reusable: Reusable | None = None
        self.unlinked = False
        self.told: set[tuple[bytes, int]] | None = None
        self.dentry: tuple[int, bytes] | None = None
        self.lock = trio.Lock()
        self._page_handles_closed: trio.Event | None = None
        self._switched: trio.Event | None = None
        self._switches = 0

    def __repr__(self) -> str:
        return (
            f"InodeState(ino={self.ino}, lookups={self.lookups}, handles={len(self.handles)}, "
            f"buffer={self.buffer is not None}, pages={self.pages}, unlinked={self.unlinked})"
        )

    # -- page cache ---------------------------------------------------------------------

    def page_handles(self) -> int:
        """How many open handles read through the kernel's page cache."""
        return sum(1 for handle in self.handles.values() if handle.page_cache)

    def placement(self, version: Version, *, writable: bool, may_wait: bool) -> Placement:
        """How an open that found ``version`` must use the page cache.

        - A loaded buffer (local writes in progress) or ``version`` being the page
          cache's: KEEP (reads of every handle come from the buffer, or from pages of
          their own version).
        - No handle reads through the page cache: SWITCH, this version becomes the
          page cache's.
        - Handles of another version do: WAIT while ``may_wait``.  Then a reader gets
          DIRECT, so it neither reads nor fills their pages; a writer SWITCHes anyway
          (its writes go through the page cache; on the writing host readers see
          writes as they happen, as on a local disk).
        """
        if self.buffer is not None:
            return Placement.KEEP
        if self.pages is not None and self.pages.same_pages(version):
            return Placement.KEEP
        if self.page_handles() == 0:
            return Placement.SWITCH
        if may_wait:
            return Placement.WAIT
        return Placement.SWITCH if writable else Placement.DIRECT

    async def wait_for_page_handles(self, deadline: float) -> None:
        """Wait until no handle reads through the page cache, or until ``deadline`` (trio clock)."""
        with trio.move_on_at(deadline):
            while self.page_handles():
                if self._page_handles_closed is None:
                    self._page_handles_closed = trio.Event()
                await self._page_handles_closed.wait()

    def open_handle(self, handle: OpenFile, placement: Placement) -> None:
        """Register ``handle``, opened as ``placement`` decided (never WAIT).

        SWITCH makes the handle's version the page cache's and starts a switch that
        :meth:`finish_switch` ends once the kernel dropped the cached attributes;
        DIRECT makes the handle bypass the page cache.
        """
        if placement is Placement.WAIT:
            raise ValueError("a waiting open has no handle yet")
        handle.page_cache = placement is not Placement.DIRECT
        if placement is Placement.DIRECT:
            self.told = None  # direct reads past the kernel's size may change it
        if placement is Placement.SWITCH:
            self.pages = Version(handle.content_id, handle.size, handle.mtime_ns, handle.epoch)
            self.reusable = None
            self._switches += 1
            if self._switched is None:
                self._switched = trio.Event()
        self.handles[handle.fh] = handle

    def finish_switch(self) -> None:
        """One switch's invalidation is done; once all are, waiting opens may return."""
        self._switches = max(0, self._switches - 1)
        if self._switches == 0 and self._switched is not None:
            self._switched.set()
            self._switched = None

    async def wait_for_switch(self) -> None:
        """Wait until a switch in progress (another open's) has dropped the cached attributes."""
        if self._switched is not None:
            await self._switched.wait()

    def close_handle(self, fh: int) -> OpenFile | None:
        """Unregister handle ``fh``; wakes opens waiting for the page-cache handles to close."""
        handle = self.handles.pop(fh, None)
        if (
            handle is not None
            and handle.page_cache
            and self._page_handles_closed is not None
            and not self.page_handles()
        ):
            self._page_handles_closed.set()
            self._page_handles_closed = None
        return handle

    def committed(self, inode: Inode, epoch: int) -> None:
        """The daemon now holds ``inode``'s content, written from this host.

        Every handle here moves to that version (readers on the writing host see its
        writes), and so do the kernel's pages, which the writes went through.
        """
        version = Version.of(inode, epoch)
        for handle in self.handles.values():
            handle.move_to(version.content_id, version.size, version.mtime_ns, epoch)
        self.pages = version
        self.reusable = None
        self.told = None  # the writes set the kernel's size themselves

    def attributes_told_for(self, version: Version) -> bool:
        """True when every size told to the kernel (see ``told``) is ``version``'s.

        Then the kernel's cached size, whichever reply it kept, is that version's,
        and an open switching to it need not drop the cached attributes.
        """
        return self.told is not None and self.told <= {(version.content_id, version.size)}

    def attributes_dropped(self) -> None:
        """The kernel's cached attributes are being dropped: nothing told stands."""
        self.told = set()

    def reported(self, inode: Inode, epoch: int) -> tuple[int, int]:
        """``(st_size bytes, st_mtime ns)`` to tell the kernel about the daemon's ``inode``.

        - A loaded buffer: its size (writes not yet flushed), the daemon's mtime.
        - A file whose daemon content differs from the page cache's version while
          handles read through the page cache: that version's size and mtime, so the
          kernel neither cuts their reads at the new size nor drops their pages.
        - Otherwise the daemon's; when its content differs from the page cache's,
          the kernel drops its pages on this reply (size or mtime changed), so the
          record forgets its page-cache version and the reusable answer.
        """
        size, mtime_ns = inode.size, inode.mtime_ns
        if inode.kind != REGULAR:
            return size, mtime_ns
        if self.buffer is not None:
            self.told = None
            return self.buffer.size, mtime_ns
        told = (inode.content_id, size)
        if self.pages is not None and not self.pages.same_content(Version.of(inode, epoch)):
            self.reusable = None
            if self.page_handles():
                told = (self.pages.content_id, self.pages.size)
                size, mtime_ns = self.pages.size, self.pages.mtime_ns
            else:
                self.pages = None
        if self.told is not None:
            self.told.add(told)
        return size, mtime_ns

    def reuse(self, now: float, epoch: int) -> Inode | None:
        """The reusable open answer, if it holds at ``now`` (trio clock) and for the pages.

        It holds while the daemon's TTL runs, no buffer exists, and its version is
        the page cache's (so the kernel may keep its pages).
        """
        entry = self.reusable
        if entry is None:
            return None
        if (
            entry.deadline <= now
            or self.buffer is not None
            or self.pages is None
            or not self.pages.same_pages(Version.of(entry.inode, epoch))
        ):
            self.reusable = None
            return None
        return entry.inode

    def idle(self) -> bool:
        """True when nothing needs the record: the kernel forgot it and nothing is open."""
        return self.lookups == 0 and not self.handles and self.buffer is None


class InodeTable:
    """Every :class:`InodeState`, by inode number, and every open handle, by ``fh``."""

    def __init__(self) -> None:
        self._states: dict[int, InodeState] = {}
        self._handles: dict[int, OpenFile] = {}

    def get(self, ino: int) -> InodeState | None:
        """The record of ``ino``, or None when the front knows nothing about it."""
        return self._states.get(ino)

    def state(self, ino: int) -> InodeState:
        """The record of ``ino``, created empty if missing."""
        state = self._states.get(ino)
        if state is None:
            state = self._states[ino] = InodeState(ino)
        return state

    def remember(self, ino: int, n: int = 1) -> InodeState:
        """The kernel takes ``n`` more references to ``ino``; returns its record.

        Call it before building the entry reply: a record made here starts to count
        the sizes told to the kernel (it learns the inode from that reply).
        """
        state = self._states.get(ino)
        if state is None:
            state = self._states[ino] = InodeState(ino)
            state.told = set()
        state.lookups += n
        return state

    def forget(self, ino: int, n: int) -> InodeState | None:
        """The kernel dropped ``n`` references to ``ino``.

        Returns the record when the kernel now holds none (the root never counts as
        forgotten), else None.  Dropping more than were counted clamps at zero (unmount
        skips some forgets), never an error.  The record stays in the table while it is
        not :meth:`InodeState.idle`; call :meth:`discard_if_idle` when done with it.
        """
        state = self._states.get(ino)
        if state is None:
            return None
        state.lookups = max(0, state.lookups - n)
        if state.lookups > 0 or ino == ROOT_INO:
            return None
        return state

    def lookups(self, ino: int) -> int:
        """References the kernel holds to ``ino``."""
        state = self._states.get(ino)
        return state.lookups if state is not None else 0

    def known(self) -> list[int]:
        """Every inode the kernel holds a reference to."""
        return [ino for ino, state in self._states.items() if state.lookups > 0]

    def discard_if_idle(self, state: InodeState) -> None:
        """Drop ``state`` from the table if nothing needs it any more."""
        if state.idle() and self._states.get(state.ino) is state:
            del self._states[state.ino]

    def unlinked(self) -> list[InodeState]:
        """Records of inodes that lost their last name and wait for a purge."""
        return [state for state in self._states.values() if state.unlinked]

    # -- handles --------------------------------------------------------------------------

    def handle(self, fh: int) -> OpenFile | None:
        """The open handle ``fh``, or None."""
        return self._handles.get(fh)

    def add_handle(self, handle: OpenFile, placement: Placement) -> InodeState:
        """Register an open handle as :meth:`InodeState.open_handle` does; returns its record."""
        state = self.state(handle.ino)
        state.open_handle(handle, placement)
        self._handles[handle.fh] = handle
        return state

    def remove_handle(self, fh: int) -> tuple[OpenFile, InodeState] | None:
        """Unregister handle ``fh``; returns it and its inode's record, or None if unknown."""
        handle = self._handles.pop(fh, None)
        if handle is None:
            return None
        state = self.state(handle.ino)
        state.close_handle(fh)
        return handle, state

    def handle_count(self) -> int:
        """How many handles are open."""
        return len(self._handles)

    def clear(self) -> None:
        """Forget everything (after unmount)."""
        self._states.clear()
        self._handles.clear()
