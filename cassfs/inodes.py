"""What the FUSE front knows about each inode the kernel holds: one record per node.

A :class:`InodeState` gathers everything the front keeps about one kernel node (an
inode number, or an alias of one: see "Node ids and aliases" below):

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
- ``dentry``: for a directory, the ``(parent node, name)`` under which the front
  last gave it to the kernel.  The kernel holds one dentry per directory inode;
  when another host moved it, the new name gets a node of its own (see
  ``Operations._node_for``).
- ``names``: for a regular file, the ``(parent, name)`` pairs under which the front
  gave it to the kernel (at most :data:`NAMES_KEPT`), so that its dentries can be
  dropped once a newer version has a node of its own.
- ``stale_told``: ``(pid, trio time)`` of the last open this node answered ESTALE to
  send it to a newer node, so that the VFS's one retry is never sent away again.

Node ids and aliases.  The kernel knows an inode by its FUSE node id, and caches
pages and ``st_size`` per node, and one dentry per directory node.  A node id is the
inode number, except for an *alias* (:meth:`InodeTable.supersede`, ids from
:data:`ALIAS_BASE` up, above every inode number), which the front makes when the
kernel's node cannot take what must be given to it:

- another version of a file, while handles of the version the node holds read
  through the page cache: each node then has its own pages and size, so old readers
  read their version whole and new ones see the new size;
- a directory under another name than its node's dentry (another host moved it):
  attaching a second dentry to a directory node fails with ESTALE whenever the
  kernel cannot take the old parent's lock at once.

A record's ``node`` is its node id and ``ino`` the inode number the daemon knows.

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
import itertools
from dataclasses import dataclass

import trio

from cached.errors import CassfsError
from cached.model import REGULAR, ROOT_INO, Inode
from cassfs.handles import OpenFile, WriteBuffer

#: Node ids from here up are aliases (see the module docstring); inode numbers are
#: below 2**63 (``cached.core.new_inode_number``).
ALIAS_BASE = 1 << 63

#: Names kept per file record (hard links beyond these keep their dentries until the
#: entry timeout).
NAMES_KEPT = 8


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
        "_lock",
        "_page_handles_closed",
        "_switched",
        "_switches",
        "buffer",
        "dentry",
        "handles",
        "ino",
        "lookups",
        "names",
        "node",
        "pages",
        "reusable",
        "reusable_drops",
        "stale_told",
        "told",
        "unlinked",
    )

    def __init__(self, node: int, ino: int | None = None) -> None:
        self.node = node
        self.ino = node if ino is None else ino
        self.lookups = 0
        self.handles: dict[int, OpenFile] = {}
        self.buffer: WriteBuffer | None = None
        self.pages: Version | None = None
        self.reusable: Reusable | None = None
        #: How many times the reusable answer was dropped (a change told or made): an
        #: open answer fetched across a drop may predate that change and is not kept.
        self.reusable_drops = 0
        self.unlinked = False
        self.told: set[tuple[bytes, int]] | None = None
        self.dentry: tuple[int, bytes] | None = None
        # A tuple (most records hold one name or none; a set costs 216 bytes, and a
        # record per inode the kernel holds adds up).
        self.names: tuple[tuple[int, bytes], ...] = ()
        #: ``(pid, trio time)`` of the last open answered ESTALE to send its caller to a
        #: newer node (see ``Operations._place``).
        self.stale_told: tuple[int, float] | None = None
        self._lock: trio.Lock | None = None
        self._page_handles_closed: trio.Event | None = None
        self._switched: trio.Event | None = None
        self._switches = 0

    def __repr__(self) -> str:
        return (
            f"InodeState(node={self.node}, ino={self.ino}, lookups={self.lookups}, "
            f"handles={len(self.handles)}, buffer={self.buffer is not None}, "
            f"pages={self.pages}, unlinked={self.unlinked})"
        )

    @property
    def lock(self) -> trio.Lock:
        """The record's lock (see the module docstring), made at its first use: most
        records never write, and a trio lock is about 340 bytes."""
        if self._lock is None:
            self._lock = trio.Lock()
        return self._lock

    # -- page cache ---------------------------------------------------------------------

    def page_handles(self) -> int:
        """How many open handles read through the kernel's page cache."""
        return sum(1 for handle in self.handles.values() if handle.page_cache)

    def outdated_by(self, version: Version) -> bool:
        """True when handles read ``self.pages`` through the page cache and ``version``
        has other content: the kernel must get ``version`` as another node."""
        return (
            self.buffer is None
            and self.pages is not None
            and not self.pages.same_content(version)
            and self.page_handles() > 0
        )

    def named(self, parent: int, name: bytes) -> None:
        """The kernel got this file as ``name`` in ``parent`` (kept up to :data:`NAMES_KEPT`)."""
        if len(self.names) < NAMES_KEPT and (parent, name) not in self.names:
            self.names += ((parent, name),)

    def unnamed(self, parent: int, name: bytes) -> bool:
        """Forget the name ``name`` in ``parent`` (moved by the kernel); True if it was kept."""
        if (parent, name) not in self.names:
            return False
        self.names = tuple(kept for kept in self.names if kept != (parent, name))
        return True

    def take_names(self) -> list[tuple[int, bytes]]:
        """The names kept, which are forgotten (their dentries are being dropped)."""
        names, self.names = list(self.names), ()
        return names

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
            self.reusable = None  # the older version's; the opening handle's answer is newer
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
        self.drop_reusable()
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
          record forgets its page-cache version and drops the reusable answer (an
          open answered before this reply keeps none either).
        """
        size, mtime_ns = inode.size, inode.mtime_ns
        if inode.kind != REGULAR:
            return size, mtime_ns
        if self.buffer is not None:
            self.told = None
            return self.buffer.size, mtime_ns
        told = (inode.content_id, size)
        if self.pages is not None and not self.pages.same_content(Version.of(inode, epoch)):
            self.drop_reusable()  # the older version's; an open in flight may bring it too
            if self.page_handles():
                told = (self.pages.content_id, self.pages.size)
                size, mtime_ns = self.pages.size, self.pages.mtime_ns
            else:
                self.pages = None
        if self.told is not None:
            self.told.add(told)
        return size, mtime_ns

    def drop_reusable(self) -> None:
        """Stop reusing the open answer: something changed, or may have, since it was given.
        An open whose answer was fetched before this call does not keep it (see
        :attr:`reusable_drops`)."""
        self.reusable = None
        self.reusable_drops += 1

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
    """Every :class:`InodeState`, by node id, and every open handle, by ``fh``.

    A node id is the inode number, or an alias made by :meth:`supersede` (see the
    module docstring); :meth:`node_of` gives the node the kernel should get for an
    inode now, :meth:`ino_of` the inode number behind a node id.
    """

    def __init__(self) -> None:
        self._states: dict[int, InodeState] = {}
        self._handles: dict[int, OpenFile] = {}
        #: inode number -> its newest alias, while that alias has a record.
        self._current: dict[int, int] = {}
        #: inode number -> the node ids of its alias records.
        self._aliases: dict[int, set[int]] = {}
        self._next_alias = itertools.count(ALIAS_BASE)

    def get(self, node: int) -> InodeState | None:
        """The record of node ``node``, or None when the front knows nothing about it."""
        return self._states.get(node)

    def state(self, node: int) -> InodeState:
        """The record of node ``node``, created empty if missing.

        Raises :class:`InodeGone` (ESTALE) for an alias without a record: the kernel
        forgot it, so no request should name it.
        """
        state = self._states.get(node)
        if state is None:
            if node >= ALIAS_BASE:
                raise InodeGone(f"node {node} is no longer known")
            state = self._states[node] = InodeState(node)
        return state

    def node_of(self, ino: int) -> int:
        """The node id under which the kernel should get inode ``ino`` now."""
        return self._current.get(ino, ino)

    def ino_of(self, node: int) -> int:
        """The inode number behind node id ``node``; :class:`InodeGone` for an unknown alias."""
        if node < ALIAS_BASE:
            return node
        return self.state(node).ino

    def records_of(self, ino: int) -> list[InodeState]:
        """Every record of inode ``ino``: its own node's and its aliases'."""
        nodes = [ino, *self._aliases.get(ino, ())]
        return [state for node in nodes if (state := self._states.get(node)) is not None]

    def supersede(self, ino: int) -> InodeState:
        """Give inode ``ino`` a new alias node, from now on its current node; its record.

        The record starts counting the sizes told to the kernel, as :meth:`remember`'s.
        """
        node = next(self._next_alias)
        state = self._states[node] = InodeState(node, ino)
        state.told = set()
        self._current[ino] = node
        self._aliases.setdefault(ino, set()).add(node)
        return state

    def superseded(self, state: InodeState) -> bool:
        """True when ``state``'s inode has a newer node than ``state``'s."""
        return self.node_of(state.ino) != state.node

    def remember(self, node: int, n: int = 1) -> InodeState:
        """The kernel takes ``n`` more references to node ``node``; returns its record.

        Call it before building the entry reply: a record made here starts to count
        the sizes told to the kernel (it learns the inode from that reply).
        """
        state = self._states.get(node)
        if state is None:
            state = self.state(node)
            state.told = set()
        state.lookups += n
        return state

    def forget(self, node: int, n: int) -> InodeState | None:
        """The kernel dropped ``n`` references to node ``node``.

        Returns the record when the kernel now holds none (the root never counts as
        forgotten), else None.  Dropping more than were counted clamps at zero (unmount
        skips some forgets), never an error.  The record stays in the table while it is
        not :meth:`InodeState.idle`; call :meth:`discard_if_idle` when done with it.
        """
        state = self._states.get(node)
        if state is None:
            return None
        state.lookups = max(0, state.lookups - n)
        if state.lookups > 0 or node == ROOT_INO:
            return None
        return state

    def lookups(self, node: int) -> int:
        """References the kernel holds to node ``node``."""
        state = self._states.get(node)
        return state.lookups if state is not None else 0

    def known(self) -> list[int]:
        """Every node the kernel holds a reference to."""
        return [node for node, state in self._states.items() if state.lookups > 0]

    def discard_if_idle(self, state: InodeState) -> None:
        """Drop ``state`` from the table if nothing needs it any more."""
        if not state.idle() or self._states.get(state.node) is not state:
            return
        del self._states[state.node]
        if state.node != state.ino:
            aliases = self._aliases.get(state.ino, set())
            aliases.discard(state.node)
            if not aliases:
                self._aliases.pop(state.ino, None)
            if self._current.get(state.ino) == state.node:
                del self._current[state.ino]

    def in_use(self, ino: int) -> bool:
        """True while the kernel holds a node of inode ``ino`` or a handle is open on one."""
        return any(state.lookups or state.handles for state in self.records_of(ino))

    def unlinked(self) -> list[InodeState]:
        """Records of inodes that lost their last name and wait for a purge."""
        return [state for state in self._states.values() if state.unlinked]

    # -- handles --------------------------------------------------------------------------

    def handle(self, fh: int) -> OpenFile | None:
        """The open handle ``fh``, or None."""
        return self._handles.get(fh)

    def add_handle(self, handle: OpenFile, placement: Placement) -> InodeState:
        """Register an open handle as :meth:`InodeState.open_handle` does; returns its record."""
        state = self.state(handle.node)
        state.open_handle(handle, placement)
        self._handles[handle.fh] = handle
        return state

    def remove_handle(self, fh: int) -> tuple[OpenFile, InodeState] | None:
        """Unregister handle ``fh``; returns it and its inode's record, or None if unknown."""
        handle = self._handles.pop(fh, None)
        if handle is None:
            return None
        state = self.state(handle.node)
        state.close_handle(fh)
        return handle, state

    def handle_count(self) -> int:
        """How many handles are open."""
        return len(self._handles)

    def clear(self) -> None:
        """Forget everything (after unmount)."""
        self._states.clear()
        self._handles.clear()
        self._current.clear()
        self._aliases.clear()
