"""The FUSE operations: each turns a kernel request into one or two daemon RPCs.

This is the only place that raises ``pyfuse3.FUSEError``: every handler runs
under :func:`_fuse_errors`, which maps :mod:`cached.errors` (which carry their
errno) to ``FUSEError`` and anything unexpected to EIO, so no exception ever
escapes into ``pyfuse3.main()`` (which would kill the mount).  A request naming
an inode by number that the daemon no longer has gets ESTALE, not ENOENT
(:class:`~cassfs.inodes.InodeGone`), so the kernel looks the path up again.

Timeouts: ``entry_ttl`` seconds is the entry and attr timeout of every reply,
``negative_ttl`` the timeout of a negative lookup (``st_ino = 0``).  Source:
pyfuse3 ``EntryAttributes`` and libfuse ``fuse_lowlevel.h``.

What the front keeps per inode (lookup count, open handles, write buffer, the
version in the kernel's page cache, the reusable open answer) is one
:class:`~cassfs.inodes.InodeState` in :attr:`Operations.inodes`, per kernel node:
handlers get node ids from the kernel and name inode numbers to the daemon
(``self.inodes.ino_of``); a file's newer version may get an alias node while older
handles read through the page cache (see :mod:`cassfs.inodes`).

Operation -> RPC: lookup/getattr/setattr/readlink -> the same name;
opendir -> readdir; mkdir/create/symlink/unlink/rmdir/rename -> the same name;
open -> open (or nothing while its last answer holds); read -> read (unless the
content came inline, or a write buffer exists); write -> nothing (buffered), or
materialize for a partial rewrite; flush/fsync -> write when the handle changed
the buffer; release -> write for changes after the last flush (mmap);
forget -> purge_inode for unlinked inodes; statfs -> statfs;
getxattr/listxattr/setxattr/removexattr -> the same name (a getxattr of a name known
to be absent -> nothing: :mod:`cassfs.xattrs`).

A read-only mount (``FrontConfig.read_only``) answers every change (create, mkdir,
mknod, symlink, link, unlink, rmdir, rename, setattr, an open for writing or with
``O_TRUNC``, write, setxattr, removexattr) with EROFS before any RPC, and records no
access time; the kernel's ``ro`` mount option refuses most of them before they get here.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import functools
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import pyfuse3
import trio

from cached.api import (
    MAX_FILE_SIZE,
    XATTR_CREATE,
    XATTR_REPLACE,
    XATTR_SIZE_MAX,
    DaemonApi,
    check_xattr_name,
)
from cached.errors import (
    CassfsError,
    Exists,
    FileTooLarge,
    NoAttribute,
    NotFound,
    NotPermitted,
    ReadOnly,
    TooBig,
)
from cached.model import NAME_MAX, REGULAR, ROOT_INO, Inode, needs_atime
from cassfs import fuseloop, openflags
from cassfs.handles import OpenFile, WriteBuffer, check_size
from cassfs.inodes import InodeGone, InodeState, InodeTable, Placement, Reusable, Version
from cassfs.kernel import FuseKernelCache, KernelCache
from cassfs.listings import Listings, in_cookie_order, readdir_cookie
from cassfs.xattrs import AbsentXattrs

if TYPE_CHECKING:
    from cached.client import DaemonClient

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Seconds the front waits for the kernel to drop one dentry another host changed.
REMOTE_ENTRY_WAIT = 0.5
#: Seconds during which an open by the same caller coming back to a node it was sent
#: away from (ESTALE) is taken for the VFS's retry that cannot go elsewhere.
STALE_RETRY_WINDOW = 2.0


def _fuse_errors(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Map cassfs errors to ``FUSEError(errno)`` and anything unexpected to EIO; once the
    handler suspends, another pyfuse3 worker reads the next request (:mod:`cassfs.fuseloop`)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fuseloop.watched(fn(*args, **kwargs))
        except pyfuse3.FUSEError:
            raise
        except CassfsError as exc:
            if exc.errno != errno.ENOENT:
                log.debug("%s failed: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from exc
        except Exception as exc:
            log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from exc

    return wrapper


def _drops_listings(
    fn: Callable[Concatenate[Operations, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Operations, P], Coroutine[Any, Any, R]]:
    """For a change made through this mount: drop the reused listings
    (:mod:`cassfs.listings`) before it is asked for and after it is done, so that no
    listing loaded before it or during it is reused."""

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: P.args, **kwargs: P.kwargs) -> R:
        self.listings.drop_all()
        try:
            return await fn(self, *args, **kwargs)
        finally:
            self.listings.drop_all()

    return wrapper


def _may_open(inode: Inode, flags: int, ctx: pyfuse3.RequestContext) -> bool:
    """Whether ``ctx`` may open ``inode`` with ``flags`` by its mode bits (root always).

    Supplementary groups are not known here, only ``ctx.gid``.
    """
    if ctx.uid == 0:
        return True
    access = flags & os.O_ACCMODE
    need = (4 if access in (os.O_RDONLY, os.O_RDWR) else 0) | (
        2 if access in (os.O_WRONLY, os.O_RDWR) or flags & os.O_TRUNC else 0
    )
    if ctx.uid == inode.uid:
        bits = inode.mode >> 6
    elif ctx.gid == inode.gid:
        bits = inode.mode >> 3
    else:
        bits = inode.mode
    return (bits & need) == need


@dataclass(frozen=True)
class FrontConfig:
    """Kernel cache timeouts of the mount, and how long an open waits for old readers.

    ``entry_ttl`` and ``negative_ttl`` are seconds.  ``switch_wait`` is how many
    seconds an open that found a new version of a file waits for the handles reading
    the kernel's page cache (an older version) to close, before it reads with
    ``direct_io`` instead.  ``atime`` is ``relatime`` (an open for reading records
    the access when the access time is not after the last change, or is a day old)
    or ``noatime`` (never).  ``read_only``: every change fails with EROFS before the
    daemon is asked, and no access time is recorded (whatever ``atime`` says).
    ``kernel_keeps_listings``: the mount is opendir-free and the kernel keeps directories'
    entries (:meth:`Operations.readdir`); set when the daemon follows the change feed,
    which tells the front of another host's changes, and :mod:`cassfs.openflags` made the
    session so.  ``open_records_access``: the daemon's ``open`` records the read access
    itself (its ``hello`` named the ``open_atime`` feature), so a cold open is one round
    trip; else the front asks for it with ``touch_atime`` after the open.
    """

    entry_ttl: float = 1.0
    negative_ttl: float = 1.0
    switch_wait: float = 1.0
    atime: str = "relatime"
    read_only: bool = False
    kernel_keeps_listings: bool = False
    open_records_access: bool = False


@dataclass(frozen=True)
class _XattrProbe:
    """The last ``getxattr`` answered: for which request (``ctx``, by identity), inode and
    name, and whether the attribute was found.

    pyfuse3 3.5 does not pass setxattr(2)'s flags to ``setxattr``: for XATTR_CREATE it
    first calls ``getxattr`` and answers EEXIST itself if that finds the name, for
    XATTR_REPLACE it lets that call's ENODATA through, and then calls ``setxattr`` with the
    same ``RequestContext`` object, with no checkpoint in between (``handlers.pxi
    fuse_setxattr_async``).  So a ``setxattr`` whose ``ctx`` is the one of the last
    ``getxattr`` had a flag: XATTR_CREATE when that found nothing, XATTR_REPLACE when it
    found the name; and the daemon applies it as an LWT, which settles a race with another
    host between the two calls.  Holding ``ctx`` keeps its identity from being reused.
    """

    ctx: pyfuse3.RequestContext
    ino: int
    name: bytes
    found: bool


#: statfs: bytes per block (``f_bsize``, ``f_frsize``).
STATFS_BLOCK = 4096
#: statfs: the nominal capacity of a mount, bytes (256 TiB): ``f_blocks``.
STATFS_CAPACITY = 2**48
#: statfs: the nominal number of inodes of a mount: ``f_files``.
STATFS_INODES = 2**32


def statvfs_data(used_bytes: int, used_inodes: int) -> pyfuse3.StatvfsData:
    """The statfs reply for a tenant using ``used_bytes`` bytes and ``used_inodes`` inodes.

    Used blocks are ``ceil(used_bytes / STATFS_BLOCK)``; free figures never go
    below 0 (a tenant past the nominal capacity shows a full mount).
    """
    data = pyfuse3.StatvfsData()
    data.f_bsize = data.f_frsize = STATFS_BLOCK
    data.f_blocks = STATFS_CAPACITY // STATFS_BLOCK
    data.f_bfree = data.f_bavail = max(data.f_blocks - -(-used_bytes // STATFS_BLOCK), 0)
    data.f_files = STATFS_INODES
    data.f_ffree = data.f_favail = max(STATFS_INODES - used_inodes, 0)
    data.f_namemax = NAME_MAX
    return data


@contextlib.contextmanager
def _stale_if_gone(ino: int) -> Iterator[None]:
    """Turn the daemon's ENOENT about inode ``ino`` (named by number) into ESTALE.

    The kernel's cached dentry named an inode that is gone (another host replaced the
    file); ESTALE makes the VFS look the path up again (see :class:`InodeGone`).
    """
    try:
        yield
    except NotFound as exc:
        raise InodeGone(f"inode {ino} is gone: {exc}") from exc


class Operations(pyfuse3.Operations):
    """cassfs's pyfuse3 operations over a connected daemon client (typed by :class:`DaemonApi`).

    ``spool_dir`` receives write buffers larger than 1 MiB (it must be the
    daemon's spool dir: the daemon reads them from there).  ``epoch`` is the
    daemon's cache epoch from ``hello``.  ``kernel`` drops the kernel's caches
    (the mounted session's by default).  Set ``nursery`` before the mount serves
    requests; background purges and invalidations run in it.
    """

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        client: DaemonClient,
        config: FrontConfig,
        spool_dir: Path,
        epoch: int,
        kernel: KernelCache | None = None,
    ) -> None:
        super().__init__()
        self.daemon = DaemonApi(client)
        self.config = config
        self.spool_dir = spool_dir
        self.epoch = epoch
        self.kernel: KernelCache = kernel if kernel is not None else FuseKernelCache()
        self.nursery: trio.Nursery | None = None
        self.inodes = InodeTable()
        #: Open directory handles: ``fh -> (directory ino, listing snapshot)``.
        self._dirs: dict[int, tuple[int, list[tuple[bytes, Inode]]]] = {}
        self._fh = itertools.count(1)
        self._xattr_probe: _XattrProbe | None = None
        #: Extended attribute names known absent, while the daemon's answer holds.
        self.xattrs_absent = AbsentXattrs()
        #: Directory listings reused by opendir for the entry timeout.
        self.listings = Listings(config.entry_ttl)

    # -- helpers --------------------------------------------------------------------------

    def _entry(self, inode: Inode, node: int | None = None) -> pyfuse3.EntryAttributes:
        """EntryAttributes of the daemon's ``inode`` as node ``node`` (default: its current
        node), with the mount's timeouts.

        Size and mtime are what the node's record says the kernel must see
        (:meth:`InodeState.reported`): a write buffer's size, or the size of the
        version handles read through the page cache.
        """
        attrs = pyfuse3.EntryAttributes()
        ino = self.inodes.node_of(inode.ino) if node is None else node
        state = self.inodes.get(ino)
        if state is not None:
            size, mtime_ns = state.reported(inode, self.epoch)
        else:
            size, mtime_ns = inode.size, inode.mtime_ns
        attrs.st_ino = ino
        attrs.generation = 0
        attrs.entry_timeout = self.config.entry_ttl
        attrs.attr_timeout = self.config.entry_ttl
        attrs.st_mode = inode.mode
        attrs.st_nlink = inode.nlink
        attrs.st_uid = inode.uid
        attrs.st_gid = inode.gid
        attrs.st_rdev = inode.rdev
        attrs.st_size = size
        attrs.st_blksize = 4096
        attrs.st_blocks = -(-size // 512)
        attrs.st_atime_ns = inode.atime_ns
        attrs.st_mtime_ns = mtime_ns
        attrs.st_ctime_ns = inode.ctime_ns
        return attrs

    def _remember(
        self, inode: Inode, parent: int | None = None, name: bytes | None = None
    ) -> pyfuse3.EntryAttributes:
        """An entry reply (as ``name`` in ``parent`` when given): the kernel now holds one
        more reference to the node :meth:`_node_for` chose."""
        node = self._node_for(inode, parent, name)
        state = self.inodes.remember(node)
        if parent is not None and name is not None:
            if inode.kind == REGULAR:
                state.named(parent, name)
            elif inode.is_dir:
                state.dentry = (parent, name)
        return self._entry(inode, node)

    def _node_for(self, inode: Inode, parent: int | None = None, name: bytes | None = None) -> int:
        """The node to give the kernel for the daemon's ``inode`` (as ``name`` in node
        ``parent`` when given): its current node, unless that node cannot take it, in which
        case ``inode`` gets a new alias node (:meth:`_supersede`):

        - a file whose node holds another version that handles read through the page
          cache (pages and ``st_size`` are per node);
        - a directory given as another name than its node's dentry: another host moved
          it.  The kernel holds one dentry per directory inode; attaching a second one
          moves the first (``__d_unalias`` in Linux's ``fs/dcache.c``), which fails with
          ESTALE when it cannot take the old parent's lock at once.
        """
        node = self.inodes.node_of(inode.ino)
        state = self.inodes.get(node)
        if state is None:
            return node
        if inode.kind == REGULAR:
            if state.outdated_by(Version.of(inode, self.epoch)):
                node = self._supersede(state).node
        elif inode.is_dir and name is not None and inode.ino != ROOT_INO:
            if state.dentry is not None and state.dentry != (parent, name):
                node = self._supersede(state).node
        return node

    def _supersede(self, state: InodeState) -> InodeState:
        """Give ``state``'s inode a new alias node; have the kernel drop the names it
        holds for ``state``'s node, so that walks look them up again and get the new one."""
        alias = self.inodes.supersede(state.ino)
        log.debug("inode %d: node %d superseded by %d", state.ino, state.node, alias.node)
        for parent, name in state.take_names():
            self.kernel.invalidate_entry_soon(parent, name)
        if state.dentry is not None:
            # kept: while anything holds it (a current directory), the kernel keeps the
            # old dentry even once dropped, so this node must not get another name
            self.kernel.invalidate_entry_soon(*state.dentry)
        return alias

    def _handle(self, fh: int) -> tuple[OpenFile, InodeState]:
        """The open handle ``fh`` and its inode's record; EBADF when unknown."""
        handle = self.inodes.handle(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle, self.inodes.state(handle.node)

    def _unlinked(self, ino: int) -> None:
        """``ino`` lost its last name: purge it now, or once the kernel forgets all its nodes."""
        if not ino:
            return
        records = self.inodes.records_of(ino)
        if not self.inodes.in_use(ino):
            self._start_purge(ino)
            for state in records:
                self.inodes.discard_if_idle(state)
            return
        for state in records:
            state.unlinked = True
            state.drop_reusable()

    def _purge_if_unused(self, state: InodeState) -> None:
        """Purge ``state``'s unlinked inode once no node of it is held or open."""
        if not state.unlinked or self.inodes.in_use(state.ino):
            return
        for record in self.inodes.records_of(state.ino):
            record.unlinked = False
        self._start_purge(state.ino)

    def _accessed(self, inode: Inode) -> Inode:
        """A read access to ``inode``: record it in the background if relatime asks to.

        Returns ``inode`` with the access time being recorded (``inode`` itself when
        none is), so that answers reused later do not record the same access again.
        """
        now = time.time_ns()
        if self._records_atime and needs_atime(inode, now):
            self._start(self._touch_atime, inode.ino, now)
            return inode.evolve(atime_ns=now)
        return inode

    @property
    def _records_atime(self) -> bool:
        """Whether read accesses are recorded: relatime, on a mount that is not read-only."""
        return self.config.atime == "relatime" and not self.config.read_only

    def _refuse_if_read_only(self, what: str) -> None:
        """Raise ``ReadOnly`` (EROFS) for the change ``what`` on a read-only mount.

        Called first thing, so nothing is asked of the daemon (which would refuse too).
        """
        if self.config.read_only:
            raise ReadOnly(f"{what}: the mount is read-only")

    def _start(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Run ``fn(*args)`` in the mount's nursery (which must not see it raise)."""
        if self.nursery is not None:
            self.nursery.start_soon(fn, *args)

    async def _touch_atime(self, ino: int, now_ns: int) -> None:
        """Have the daemon record a read access; never raises (failures are logged)."""
        try:
            await self.daemon.touch_atime(ino, now_ns)
        except CassfsError as exc:
            log.debug("access time of inode %d not recorded: %s", ino, exc)
        except Exception:
            log.exception("recording the access time of inode %d failed unexpectedly", ino)

    def _start_purge(self, ino: int) -> None:
        if self.nursery is not None:
            self.nursery.start_soon(self._purge, ino)

    async def _purge(self, ino: int) -> None:
        """Ask the daemon to delete an unlinked inode; runs in the mount's nursery, so it
        never raises (an escaping error would end the mount): failures are logged."""
        try:
            await self.daemon.purge_inode(ino)
        except CassfsError as exc:
            log.warning("could not purge unlinked inode %d: %s", ino, exc)
        except Exception:
            log.exception("purge of unlinked inode %d failed unexpectedly", ino)

    def _name_taken(self, parent: int, name: bytes) -> None:
        """A create found ``name`` taken: have the kernel forget its negative dentry.

        The kernel may hold a negative dentry for the name (a lookup answered before
        another host created it); without this, the next stat would say ENOENT
        again until ``negative_ttl`` runs out.
        """
        for node in self._nodes_of_parent(parent):
            self.kernel.invalidate_entry_soon(node, name)

    def _nodes_of_parent(self, parent: int) -> list[int]:
        """Node ``parent`` and every other node of its directory: the kernel may hold a
        dentry of a name under each (see :mod:`cassfs.inodes`)."""
        ino = self.inodes.ino_of(parent)
        nodes = [record.node for record in self.inodes.records_of(ino)]
        return nodes if parent in nodes else [parent, *nodes]

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)

    # -- metadata -------------------------------------------------------------------------

    @_fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Resolve ``name`` in ``parent_inode``; a negative entry (st_ino 0) when absent.

        ESTALE when ``parent_inode`` itself is gone (for ``.`` and ``..``).
        """
        log.debug("lookup %d %r", parent_inode, name)
        self._check_name(name)
        parent_ino = self.inodes.ino_of(parent_inode)
        if name == b".":
            with _stale_if_gone(parent_inode):
                inode = await self.daemon.getattr(parent_ino)
        elif name == b"..":
            with _stale_if_gone(parent_inode):
                parent = await self.daemon.getattr(parent_ino)
                inode = await self.daemon.getattr(parent.parent or ROOT_INO)
        else:
            try:
                inode = await self.daemon.lookup(parent_ino, name)
            except NotFound:
                log.debug("lookup %d %r: absent", parent_inode, name)
                if self.config.negative_ttl <= 0:
                    raise
                negative = pyfuse3.EntryAttributes()
                negative.st_ino = 0
                negative.entry_timeout = self.config.negative_ttl
                return negative
            entry = self._remember(inode, parent_inode, name)
            log.debug("lookup %d %r: node %d", parent_inode, name, entry.st_ino)
            return entry
        return self._remember(inode)

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Attributes of ``inode`` (see :meth:`_entry` for size and mtime).  ESTALE when gone."""
        log.debug("getattr %d", inode)
        with _stale_if_gone(inode):
            return self._entry(await self.daemon.getattr(self.inodes.ino_of(inode)), inode)

    @_fuse_errors
    @_drops_listings
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        """chmod, chown, truncate and utimens.

        A truncate is saved before this returns: through the write buffer when the
        inode has one (written through at once), else by the daemon.  ESTALE when
        the inode is gone; EISDIR/EINVAL from the daemon on truncate; EFBIG, with
        nothing changed, for a size over :data:`~cached.api.MAX_FILE_SIZE` bytes.
        """
        log.debug("setattr %d", inode)
        self._refuse_if_read_only("setattr")
        if fields.update_size:
            check_size(attr.st_size)
        changes: dict[str, int] = {}
        if fields.update_mode:
            changes["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
        state = self.inodes.state(inode)
        result: Inode | None = None
        try:
            with _stale_if_gone(inode):
                if (fields.update_atime or fields.update_mtime) and not fields.update_size:
                    await self._commit_before_times(state)
                if fields.update_size:
                    result = await self._truncate(state, attr.st_size, changes)
                    if "size" in changes:  # the daemon made the other changes too
                        changes = {}
                if changes:
                    result = await self.daemon.setattr(state.ino, **changes)
                elif result is None:
                    result = await self.daemon.getattr(state.ino)
            for record in self.inodes.records_of(state.ino):
                record.drop_reusable()
            return self._entry(result, inode)
        finally:
            self.inodes.discard_if_idle(state)

    async def _commit_before_times(self, state: InodeState) -> None:
        """Write unsaved writes through before times are set on the file.

        ``cp -a`` and ``rsync -t`` set the times on the still-open copy: the writes
        before it must not land later, at close, and stamp the close's time over them.
        """
        async with state.lock:
            buffer = state.buffer
            if buffer is not None and buffer.dirty:
                await self._write_buffer(state, buffer)

    async def _truncate(self, state: InodeState, size: int, changes: dict[str, int]) -> Inode:
        """Cut or zero-extend ``state``'s file to ``size`` bytes and save it; the new inode.

        Under the inode's lock, so ``release`` cannot drop the buffer meanwhile.  With
        a buffer: truncate it and write it through.  Without: the daemon truncates,
        together with ``changes`` (which then gain a ``size`` key to say so).
        """
        async with state.lock:
            buffer = state.buffer
            if buffer is None:
                changes["size"] = size
                result = await self.daemon.setattr(state.ino, **changes)
                if stat.S_ISREG(result.mode):
                    state.committed(result, self.epoch)
                return result
            await buffer.truncate(size)
            return await self._write_buffer(state, buffer)

    @_fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        """The symlink's target.  ESTALE when the inode is gone."""
        log.debug("readlink %d", inode)
        with _stale_if_gone(inode):
            return await self.daemon.readlink(self.inodes.ino_of(inode))

    @_fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """What the tenant uses, out of a nominal capacity (``df``, ``df -i``).

        Blocks of :data:`STATFS_BLOCK` bytes: ``f_blocks`` is :data:`STATFS_CAPACITY`
        bytes (Cassandra's free space is not known here), ``f_bfree`` and
        ``f_bavail`` that less the blocks the tenant's content takes (its bytes
        rounded up); ``f_files`` is :data:`STATFS_INODES`, ``f_ffree``/``f_favail``
        that less the tenant's inodes.  The figures come from the daemon's usage
        counters (at most 1 s old, approximate: see :mod:`cached.usage`).  EIO when
        the daemon knows no figures and Cassandra fails.
        """
        used_bytes, used_inodes = await self.daemon.statfs()
        return statvfs_data(used_bytes, used_inodes)

    # -- directories ----------------------------------------------------------------------

    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        """Take a snapshot of the listing for readdir; ESTALE when gone.

        Not called with ``kernel_keeps_listings``: the mount is then opendir-free (see
        :meth:`readdir`).  POSIX leaves it unspecified whether entries added or removed
        after opendir(3) show up, so a per-handle snapshot is a valid, stable cursor.
        """
        log.debug("opendir %d", inode)
        fh = next(self._fh)
        self._dirs[fh] = (inode, await self._listing(inode))
        return fh

    async def _listing(self, node: int) -> list[tuple[bytes, Inode]]:
        """Directory ``node``'s ``(name, inode)`` entries in readdir cookie order: a listing
        reused for the entry timeout (:mod:`cassfs.listings`) or the daemon's.  ESTALE when
        the directory is gone."""
        ino = self.inodes.ino_of(node)
        listing = self.listings.get(ino, trio.current_time())
        if listing is None:
            generation = self.listings.generation
            with _stale_if_gone(node):
                listing = in_cookie_order(await self.daemon.readdir(ino))
            self.listings.put(ino, listing, trio.current_time(), generation)
            # A reused listing records no access: relatime records one per change of the
            # directory (which drops the listing) or per day, longer than its lifetime.
            if self._records_atime:
                self._start(self._touch_atime, ino, time.time_ns())
        return listing

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Reply the entries after offset ``start_id`` (0: from the first), in cookie order;
        each entry's ``next_id`` is its name's :func:`~cassfs.listings.readdir_cookie`.

        With ``kernel_keeps_listings`` the mount is opendir-free (:mod:`cassfs.openflags`):
        ``fh`` is the directory's node, the entries come from :meth:`_listing` on each call,
        and the kernel keeps what it was given in its page cache.  It drops them itself at
        a change through this mount and when the directory's mtime changes; a change from
        elsewhere that names an entry of it drops them too (:meth:`_invalidate_changed`),
        whatever the mtime says.  Cookies keep a listing that changed between two calls
        from repeating or skipping a name that stayed.  Otherwise ``fh`` is an opendir's
        snapshot (EBADF when unknown).  ESTALE when the directory is gone.
        """
        log.debug("readdir %d from %d", fh, start_id)
        if self.config.kernel_keeps_listings:
            directory, entries = fh, await self._listing(fh)
        else:
            opened = self._dirs.get(fh)
            if opened is None:
                raise pyfuse3.FUSEError(errno.EBADF)
            directory, entries = opened
        first = bisect.bisect_right(entries, start_id, key=lambda e: readdir_cookie(e[0]))
        for name, inode in entries[first:]:
            node = self._node_for(inode, directory, name)
            state = self.inodes.remember(node)
            if not pyfuse3.readdir_reply(
                token, name, self._entry(inode, node), readdir_cookie(name)
            ):
                self.inodes.forget(node, 1)  # not sent: the kernel takes no reference
                self.inodes.discard_if_idle(state)
                return
            if inode.kind == REGULAR:
                state.named(directory, name)
            elif inode.is_dir:
                state.dentry = (directory, name)

    @_fuse_errors
    async def releasedir(self, fh: int) -> None:
        """Drop the listing snapshot."""
        log.debug("releasedir %d", fh)
        self._dirs.pop(fh, None)

    @_fuse_errors
    @_drops_listings
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Create a directory.  EEXIST (the kernel's dentry is dropped), ENAMETOOLONG."""
        log.debug("mkdir %d %r", parent_inode, name)
        self._refuse_if_read_only("mkdir")
        self._check_name(name)
        try:
            inode = await self.daemon.mkdir(
                self.inodes.ino_of(parent_inode), name, stat.S_IMODE(mode), ctx.uid, ctx.gid
            )
        except Exists:
            self._name_taken(parent_inode, name)
            raise
        return self._remember(inode, parent_inode, name)

    @_fuse_errors
    @_drops_listings
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Remove an empty directory.  ENOENT, ENOTDIR, ENOTEMPTY."""
        log.debug("rmdir %d %r", parent_inode, name)
        self._refuse_if_read_only("rmdir")
        self._check_name(name)
        self._unlinked(await self.daemon.rmdir(self.inodes.ino_of(parent_inode), name))

    @_fuse_errors
    @_drops_listings
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Create a symlink.  EEXIST (the kernel's dentry of the name is dropped), ENAMETOOLONG."""
        log.debug("symlink %d %r", parent_inode, name)
        self._refuse_if_read_only("symlink")
        self._check_name(name)
        try:
            inode = await self.daemon.symlink(
                self.inodes.ino_of(parent_inode), name, target, ctx.uid, ctx.gid
            )
        except Exists:
            self._name_taken(parent_inode, name)
            raise
        return self._remember(inode, parent_inode, name)

    @_fuse_errors
    @_drops_listings
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Remove a name; the inode lives on while the kernel still holds it."""
        log.debug("unlink %d %r", parent_inode, name)
        self._refuse_if_read_only("unlink")
        self._check_name(name)
        self._unlinked(await self.daemon.unlink(self.inodes.ino_of(parent_inode), name))

    @_fuse_errors
    @_drops_listings
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        """Move a name, replacing a target.  EINVAL for RENAME_EXCHANGE or a move below itself."""
        log.debug("rename %d %r -> %d %r", parent_inode_old, name_old, parent_inode_new, name_new)
        self._refuse_if_read_only("rename")
        self._check_name(name_old)
        self._check_name(name_new)
        result = await self.daemon.rename(
            self.inodes.ino_of(parent_inode_old),
            name_old,
            self.inodes.ino_of(parent_inode_new),
            name_new,
            flags,
        )
        for moved in self.inodes.records_of(result.ino):
            # the kernel moves the dentry of the node it renamed itself
            if moved.dentry == (parent_inode_old, name_old):
                moved.dentry = (parent_inode_new, name_new)
            if moved.unnamed(parent_inode_old, name_old):
                moved.named(parent_inode_new, name_new)
        self._unlinked(result.replaced)

    @_fuse_errors
    @_drops_listings
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Another name for a non-directory (a hard link).  EEXIST (the kernel's dentry of
        the name is dropped), ENOENT, EPERM for a directory, EMLINK, ENAMETOOLONG."""
        log.debug("link %d -> %d %r", inode, new_parent_inode, new_name)
        self._refuse_if_read_only("link")
        self._check_name(new_name)
        ino = self.inodes.ino_of(inode)
        try:
            linked = await self.daemon.link(ino, self.inodes.ino_of(new_parent_inode), new_name)
        except Exists:
            self._name_taken(new_parent_inode, new_name)
            raise
        for state in self.inodes.records_of(ino):
            state.drop_reusable()  # its nlink and ctime changed
        return self._remember(linked, new_parent_inode, new_name)

    @_fuse_errors
    @_drops_listings
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Create a FIFO, unix socket, device node or empty file (mknod(2), mkfifo(3), and
        bind(2) of a unix socket).  The kernel serves FIFOs, sockets and devices itself;
        cassfs stores their type, permissions and ``rdev``.  EEXIST, ENAMETOOLONG."""
        log.debug("mknod %d %r mode %#o", parent_inode, name, mode)
        self._refuse_if_read_only("mknod")
        self._check_name(name)
        try:
            inode = await self.daemon.mknod(
                self.inodes.ino_of(parent_inode), name, mode, rdev, ctx.uid, ctx.gid
            )
        except Exists:
            self._name_taken(parent_inode, name)
            raise
        return self._remember(inode, parent_inode, name)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Drop kernel references; purge unlinked inodes nobody holds any more.

        Never raises (pyfuse3 must not see an exception from ``forget``).
        """
        for node, nlookup in inode_list:
            try:
                state = self.inodes.forget(node, nlookup)
                if state is None:
                    continue
                state.drop_reusable()
                self._purge_if_unused(state)
                self.inodes.discard_if_idle(state)
            except Exception:
                log.exception("forget of node %d failed", node)

    # -- files ----------------------------------------------------------------------------

    @_fuse_errors
    @_drops_listings
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """Create and open an empty file.  EEXIST with O_EXCL, ENAMETOOLONG.

        The kernel asks to create when its dentry says the name is absent; another host
        may have created it since.  Then, as open(2) says, ``O_CREAT`` without
        ``O_EXCL`` opens the file that is there (EISDIR for a directory); with
        ``O_EXCL`` it is EEXIST.  Either way the kernel's negative dentry is dropped.
        """
        log.debug("create %d %r flags %#o", parent_inode, name, flags)
        self._refuse_if_read_only("create")
        self._check_name(name)
        try:
            inode = await self.daemon.create(
                self.inodes.ino_of(parent_inode), name, stat.S_IMODE(mode), ctx.uid, ctx.gid
            )
        except Exists:
            self._name_taken(parent_inode, name)
            if flags & os.O_EXCL:
                raise
            existing = await self.daemon.lookup(self.inodes.ino_of(parent_inode), name)
            if stat.S_ISDIR(existing.mode):
                raise pyfuse3.FUSEError(errno.EISDIR) from None
            if not _may_open(existing, flags, ctx):  # the kernel checked a create, not this
                raise pyfuse3.FUSEError(errno.EACCES) from None
            entry = self._remember(existing, parent_inode, name)
            try:
                info = await self.open(entry.st_ino, flags & ~os.O_CREAT, ctx)
            except BaseException:
                self._forget_one(entry.st_ino)
                raise
            return info, entry
        ino = inode.ino
        state = self.inodes.state(ino)
        async with state.lock:
            if state.buffer is None:
                state.buffer = WriteBuffer(self.spool_dir)
        version = Version.of(inode, self.epoch)
        state.pages = version
        handle = OpenFile(
            next(self._fh),
            ino,
            version.content_id,
            version.size,
            version.mtime_ns,
            self.epoch,
            data=b"",
            writable=True,
        )
        self.inodes.add_handle(handle, Placement.KEEP)
        return pyfuse3.FileInfo(fh=handle.fh), self._remember(inode, parent_inode, name)

    def _forget_one(self, node: int) -> None:
        """Take back one reference counted for a reply that was not sent."""
        state = self.inodes.forget(node, 1)
        if state is not None:
            self._purge_if_unused(state)
            self.inodes.discard_if_idle(state)

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """Open a file: its version from the daemon (or its last answer, while it holds).

        The kernel keeps its page cache and size per node, for the version it holds;
        an open of another version drops pages and cached attributes, or, while
        handles of the held version read through the page cache, answers ESTALE
        after giving the new version a node of its own: the VFS then walks the path
        again (``LOOKUP_REVAL``) and opens that node (see :meth:`_place`).  A
        truncating open empties the write buffer at once.  A handle that cannot write
        asks the kernel for no flush at its close (FOPEN_NOFLUSH, :mod:`cassfs.openflags`):
        it has nothing to write through.  ESTALE when the inode is gone, EISDIR for a
        directory.
        """
        log.debug("open %d flags %#o", inode, flags)
        access = flags & os.O_ACCMODE
        writable = access in (os.O_WRONLY, os.O_RDWR)
        if writable or flags & os.O_TRUNC:
            self._refuse_if_read_only("open for writing")
        truncating = writable and bool(flags & os.O_TRUNC)
        state = self.inodes.state(inode)
        drops = state.reusable_drops  # a drop from here on: this answer may be older
        try:
            info = None if writable else state.reuse(trio.current_time(), self.epoch)
            reused = info is not None
            data: bytes | None = None
            reusable: Reusable | None = None
            if info is None:
                records = (
                    self.config.open_records_access
                    and self._records_atime
                    and not writable
                    and not flags & os.O_NOATIME
                )
                with _stale_if_gone(inode):
                    reply = await self.daemon.open(
                        state.ino,
                        fetch=not truncating,
                        inline=state.pages is None,
                        atime_ns=time.time_ns() if records else None,
                    )
                info = reply.inode
                if info.is_dir:
                    raise pyfuse3.FUSEError(errno.EISDIR)
                self.epoch = reply.epoch
                data = reply.data
                if reply.fresh_for > 0 and not writable:
                    reusable = Reusable(trio.current_time() + reply.fresh_for, info)
            if not writable and not flags & os.O_NOATIME:
                accessed = self._accessed(info)
                if accessed is not info:  # an answer reused again must not record it again
                    kept = reusable or (state.reusable if reused else None)
                    if kept is not None:
                        reusable = Reusable(kept.deadline, accessed)
                    info = accessed
            version = Version.of(info, self.epoch)
            handle = OpenFile(
                openflags.file_handle(next(self._fh), writable),
                state.ino,
                version.content_id,
                version.size,
                version.mtime_ns,
                self.epoch,
                data=data,
                writable=writable,
                node=inode,
            )
            if truncating:
                await self._truncate_at_open(state, handle)
            placement = await self._place(state, handle, version, writable, ctx.pid)
            if reusable is not None and state.reusable_drops == drops:
                state.reusable = reusable
            return pyfuse3.FileInfo(
                fh=handle.fh,
                keep_cache=placement is not Placement.SWITCH,
                direct_io=placement is Placement.DIRECT,
            )
        finally:
            self.inodes.discard_if_idle(state)

    async def _truncate_at_open(self, state: InodeState, handle: OpenFile) -> None:
        """Empty the inode's write buffer for an ``O_TRUNC`` open (made empty if none).

        The handle counts as having changed the buffer when the file was not empty.
        """
        async with state.lock:
            buffer = state.buffer
            if buffer is None:
                state.buffer = buffer = WriteBuffer(self.spool_dir)
                buffer.dirty = changed = handle.size > 0
            else:
                changed = buffer.size > 0
                if changed:
                    await buffer.truncate(0)
            handle.dirtied = changed

    async def _place(
        self, state: InodeState, handle: OpenFile, version: Version, writable: bool, pid: int
    ) -> Placement:
        """Register ``handle`` (of ``version``) where it may use the page cache; its placement.

        While handles of another version read through the page cache of this node,
        the open goes to a node of its own: :class:`InodeGone` (ESTALE) after
        :meth:`_supersede` (or because it happened already).  The VFS retries the
        open once, walking the path with ``LOOKUP_REVAL``, whose lookup gets the new
        node (Linux ``fs/namei.c``, ``do_filp_open``).  An open by ``pid`` that comes
        back to this node within :data:`STALE_RETRY_WINDOW` seconds (a walk that
        cannot reach another node, e.g. through ``/proc/PID/fd``) waits up to
        ``switch_wait`` seconds for those handles to close, then bypasses the page
        cache (``direct_io``): its data is right, but ``st_size`` stays the older
        version's.  A SWITCH returns only once the kernel dropped the cached
        attributes, and so does a KEEP that found another open's switch in progress.
        """
        conflict = state.placement(version, writable=writable, may_wait=True)
        if conflict is Placement.WAIT and self._send_elsewhere(state, pid):
            raise InodeGone(
                f"inode {state.ino}: node {state.node} holds another version; "
                f"the open goes to node {self.inodes.node_of(state.ino)}"
            )
        deadline = trio.current_time() + self.config.switch_wait
        while True:
            placement = state.placement(
                version, writable=writable, may_wait=trio.current_time() < deadline
            )
            if placement is not Placement.WAIT:
                break
            state.reusable = None  # that answer is older than the version just found
            await state.wait_for_page_handles(deadline)
        self.inodes.add_handle(handle, placement)
        if placement is Placement.SWITCH:
            try:
                if not state.attributes_told_for(version):
                    state.attributes_dropped()
                    await self.kernel.invalidate_attributes(state.node)
            finally:
                state.finish_switch()
        elif placement is Placement.KEEP:
            await state.wait_for_switch()
        else:
            log.debug("node %d: handle %d reads with direct_io", state.node, handle.fh)
        return placement

    def _send_elsewhere(self, state: InodeState, pid: int) -> bool:
        """Whether an open by ``pid`` of ``state``'s node, which holds another version,
        is answered ESTALE to reach a newer node (made now if there is none).

        Not when a node of the inode answered ``pid`` so within
        :data:`STALE_RETRY_WINDOW` seconds: this is the VFS's one retry, which came back
        here, or found the node it was sent to holding yet another version.
        """
        now = trio.current_time()
        for record in self.inodes.records_of(state.ino):
            told = record.stale_told
            if told is not None and told[0] == pid and now - told[1] < STALE_RETRY_WINDOW:
                return False
        if not self.inodes.superseded(state):
            self._supersede(state)
        state.stale_told = (pid, now)
        return True

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        """Bytes from unflushed writes, the inline content, or the daemon's cache.

        ``off`` and ``size`` are bytes; fewer at the end of the handle's version.
        ESTALE when the inode is gone and its version not cached.
        """
        handle, state = self._handle(fh)
        buffer = state.buffer
        if buffer is not None:
            return await buffer.read(off, size)
        if handle.data is not None:
            return handle.data[off : off + size]
        if off >= handle.size:
            return b""
        with _stale_if_gone(handle.ino):
            return await self.daemon.read(handle.ino, handle.content_id, handle.size, off, size)

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        """Buffer ``buf`` at byte ``off``; the file reaches Cassandra on flush/fsync.

        The first write to a file without a buffer loads its content first
        (materialize); the buffer exists only once that succeeded.  Bytes past
        :data:`~cached.api.MAX_FILE_SIZE` are not written: a write that starts
        there fails with EFBIG, one that crosses it is short (what a local disk
        does at its limit).  ESTALE when the inode is gone, EIO when the daemon or
        the spool dir fails.
        """
        self._refuse_if_read_only("write")
        handle, state = self._handle(fh)
        if off >= MAX_FILE_SIZE:
            raise FileTooLarge(f"write at {off} B: files end at {MAX_FILE_SIZE} B")
        buf = buf[: MAX_FILE_SIZE - off]
        async with state.lock:
            buffer = state.buffer
            if buffer is None:
                buffer = await self._materialize(state.ino)
                state.buffer = buffer
            await buffer.write(off, buf)
            handle.dirtied = True
            handle.failed = False
        return len(buf)

    async def _materialize(self, ino: int) -> WriteBuffer:
        """A buffer holding the current content of ``ino``, for a partial rewrite."""
        with _stale_if_gone(ino):
            reply = await self.daemon.materialize(ino)
        if reply.path is not None:
            return await WriteBuffer.from_file(self.spool_dir, Path(reply.path))
        return WriteBuffer(self.spool_dir, reply.data or b"")

    async def _write_buffer(self, state: InodeState, buffer: WriteBuffer) -> Inode:
        """Write ``buffer`` through to Cassandra (shielded); the new inode.

        Called with ``state.lock`` held.  Every handle of the inode is clean
        afterwards and reads the new version.
        """
        self.listings.drop_all()
        try:
            with trio.CancelScope(shield=True), _stale_if_gone(state.ino):
                inode = await self.daemon.write(state.ino, **buffer.wire_content())
        finally:
            self.listings.drop_all()
        buffer.dirty = False
        for other in state.handles.values():
            other.dirtied = False
        state.committed(inode, self.epoch)
        return inode

    async def _commit(self, fh: int) -> None:
        """Write the buffer through if handle ``fh`` changed it since the last commit."""
        handle, state = self._handle(fh)
        if not handle.dirtied:
            return
        async with state.lock:
            buffer = state.buffer
            if buffer is None or not buffer.dirty:
                handle.dirtied = False  # another handle's commit took its changes along
                return
            try:
                await self._write_buffer(state, buffer)
            except CassfsError:
                handle.failed = True  # reported to close(2)/fsync(2): release leaves it
                raise
            handle.failed = False

    @_fuse_errors
    async def flush(self, fh: int) -> None:
        """Write the file through to Cassandra if this handle changed it; EIO reaches close(2).

        Only handles that can write get here: :meth:`open` asks the kernel not to flush
        the others.

        A read-only mount has nothing to write: it answers ENOSYS, on which the kernel
        stops sending flushes for the whole mount and close(2) returns 0 (Linux
        ``fs/fuse/file.c``, ``fuse_flush``), saving one round trip per close.
        """
        log.debug("flush %d", fh)
        if self.config.read_only:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        await self._commit(fh)

    @_fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        """Same as flush: the file is in Cassandra when this returns."""
        log.debug("fsync %d", fh)
        await self._commit(fh)

    @_fuse_errors
    async def release(self, fh: int) -> None:
        """Close a handle; save its changes made after the last flush (mmap writes).

        The last handle of an inode drops its write buffer.  Errors are logged:
        the kernel does not wait for release.
        """
        log.debug("release %d", fh)
        removed = self.inodes.remove_handle(fh)
        if removed is None:
            return
        handle, state = removed
        if state.buffer is not None:
            await self._release_buffer(state, handle)
        self._purge_if_unused(state)
        self.inodes.discard_if_idle(state)

    async def _release_buffer(self, state: InodeState, handle: OpenFile) -> None:
        """Save what ``handle`` wrote after the last flush; drop the buffer with the last handle.

        Shielded: the kernel's release is never taken back.
        """
        with trio.CancelScope(shield=True):
            async with state.lock:
                buffer = state.buffer
                if buffer is not None and buffer.dirty and handle.dirtied and not handle.failed:
                    try:
                        await self._write_buffer(state, buffer)
                    except CassfsError as exc:
                        log.warning(
                            "inode %d: writes after the last close were not saved: %s",
                            state.ino,
                            exc,
                        )
                if not state.handles and state.buffer is not None:
                    buffer, state.buffer = state.buffer, None
                    state.told = None  # the kernel's size came from the writes
                    if buffer.dirty:
                        # the kernel's pages hold what was not saved: drop them at next open
                        state.pages = None
                    await buffer.close()

    # -- extended attributes --------------------------------------------------------------
    #
    # The kernel checks before calling these (``xattr_permission`` in Linux's fs/xattr.c,
    # with ``default_permissions``): the caller's read or write permission on the inode for
    # ``user.*``, CAP_SYS_ADMIN for ``trusted.*``, ``user.*`` only on files and directories,
    # names of 1 to 255 bytes and values of at most 64 KiB.  The checks here and in the
    # daemon repeat what can be repeated without the caller's credentials, with root (uid 0)
    # standing for CAP_SYS_ADMIN; only the listing's filter of ``trusted.*`` is theirs alone.

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        """The value of attribute ``name`` (pyfuse3 answers the size probe and ERANGE for a
        small buffer itself).  ENODATA when absent, and for ``trusted.*`` asked by anyone
        but root (as Linux); EOPNOTSUPP outside ``user.``/``trusted.``/``security.``.

        Records its answer for :meth:`setxattr` (see :class:`_XattrProbe`) after its last
        checkpoint, so nothing runs between the record and pyfuse3's ``setxattr`` call.
        """
        try:
            value = await fuseloop.watched(self._getxattr(inode, name, ctx))
        except pyfuse3.FUSEError as exc:
            found = exc.errno == errno.ENODATA
            self._xattr_probe = _XattrProbe(ctx, inode, name, False) if found else None
            raise
        self._xattr_probe = _XattrProbe(ctx, inode, name, True)
        return value

    @_fuse_errors
    async def _getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        log.debug("getxattr %d %r", inode, name)
        if check_xattr_name(name) == b"trusted." and ctx.uid != 0:
            raise NoAttribute(f"{name!r} is for root only")
        now = trio.current_time()
        if self.xattrs_absent.known(self.inodes.ino_of(inode), name, now):  # cassfs.xattrs
            raise pyfuse3.FUSEError(errno.ENODATA)
        generation = self.xattrs_absent.generation
        ino = self.inodes.ino_of(inode)
        reply = await self.daemon.getxattr(ino, name)
        if reply.value is None:
            self.xattrs_absent.remember(ino, name, now + reply.fresh_for, generation)
            raise pyfuse3.FUSEError(errno.ENODATA)
        return reply.value

    @_fuse_errors
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        """Set attribute ``name`` to ``value``, in Cassandra when this returns.

        XATTR_CREATE / XATTR_REPLACE are recognised from pyfuse3's getxattr just before
        (:class:`_XattrProbe`) and applied by the daemon as LWTs: EEXIST / ENODATA.
        EPERM for ``trusted.*`` by anyone but root and for ``user.*`` on a symlink or
        special file; E2BIG over 64 KiB; ENOSPC past the inode's limits; ESTALE when gone.
        """
        probe, self._xattr_probe = self._xattr_probe, None  # before any checkpoint
        flags = 0
        if probe is not None and probe.ctx is ctx and (probe.ino, probe.name) == (inode, name):
            flags = XATTR_REPLACE if probe.found else XATTR_CREATE
        log.debug("setxattr %d %r (%d bytes, flags %d)", inode, name, len(value), flags)
        self._refuse_if_read_only("setxattr")
        if check_xattr_name(name) == b"trusted." and ctx.uid != 0:
            raise NotPermitted(f"{name!r} is for root only")
        if len(value) > XATTR_SIZE_MAX:
            raise TooBig(f"a value of {len(value)} bytes")
        ino = self.inodes.ino_of(inode)
        try:
            with _stale_if_gone(inode):
                await self.daemon.setxattr(ino, name, value, flags)
        finally:  # also after EEXIST/ENODATA: another host changed them
            self._xattrs_changed(ino)

    @_fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        """The attribute names of ``inode``; ``trusted.*`` only for root (as Linux lists)."""
        log.debug("listxattr %d", inode)
        names = await self.daemon.listxattr(self.inodes.ino_of(inode))
        if ctx.uid != 0:
            names = [n for n in names if not n.startswith(b"trusted.")]
        return names

    @_fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Remove attribute ``name``.  ENODATA when absent; EPERM for ``trusted.*`` by
        anyone but root and ``user.*`` on a symlink or special file; ESTALE when gone."""
        log.debug("removexattr %d %r", inode, name)
        self._refuse_if_read_only("removexattr")
        if check_xattr_name(name) == b"trusted." and ctx.uid != 0:
            raise NotPermitted(f"{name!r} is for root only")
        ino = self.inodes.ino_of(inode)
        try:
            with _stale_if_gone(inode):
                await self.daemon.removexattr(ino, name)
        finally:  # also after ENODATA: another host may have removed it
            self._xattrs_changed(ino)

    def _xattrs_changed(self, ino: int) -> None:
        """This mount changed, or tried to change, an attribute of ``ino``: forget what is
        kept of them (also answers in flight), and the reusable answer (its ctime changed;
        the kernel drops its cached ctime itself)."""
        self.xattrs_absent.forget(ino)
        for state in self.inodes.records_of(ino):
            state.drop_reusable()

    # -- daemon notifications -------------------------------------------------------------

    def on_notification(
        self, event: str, params: dict[str, Any]
    ) -> Callable[[], Coroutine[Any, Any, None]] | None:
        """React to the daemon; returns the work to finish before acknowledging it.

        ``changed``: another session of this tenant (on this daemon, or on another host
        when ``remote``, from the change feed) changed these inodes: stop reusing answers
        and listings about them now; the work returned drops the kernel's attributes of
        those inodes and its dentries of the ``names`` (``[parent, name]``) it may hold.
        ``purged``: the cache was emptied (or the daemon reconnected): drop every reused
        answer now and, in the background, the kernel's caches of every inode.
        """
        if event == "changed":
            inos = params.get("inos", ())
            self.listings.drop(inos, [(parent, name) for parent, name in params.get("names", ())])
            known: list[int] = []  # nodes
            names = [
                (node, name)
                for parent, name in params.get("names", ())
                for node in (
                    [ROOT_INO]
                    if parent == ROOT_INO
                    else [record.node for record in self.inodes.records_of(parent)]
                )
            ]
            for ino in inos:
                self.xattrs_absent.forget(ino)
                for state in self.inodes.records_of(ino):
                    state.drop_reusable()
                    known.append(state.node)
                    if state.page_handles() and state.names:
                        # it may hold another version now: walks must look the names
                        # up again, to get it as a node of its own (see _node_for)
                        names.extend(state.take_names())
            if known or names:
                return functools.partial(self._invalidate_changed, known, names)
        elif event == "purged":
            self.listings.drop_all()
            self.xattrs_absent.clear()
            self.epoch = params.get("epoch", self.epoch)
            for ino in self.inodes.known():
                self.inodes.state(ino).drop_reusable()
            if self.nursery is not None:
                self.nursery.start_soon(self._invalidate_all)
        return None

    async def _invalidate_changed(self, inos: list[int], names: list[tuple[int, bytes]]) -> None:
        """Drop the kernel's attributes of nodes ``inos``, its dentries of ``names`` and the
        entries it keeps of their parents (another mount or host changed them); never
        raises.  Dentries are dropped from worker threads, one at a time and at most
        :data:`REMOTE_ENTRY_WAIT` seconds each (a busy directory keeps its dentry until its
        entry timeout), never through pyfuse3's one notification queue, which this mount's
        own creates and renames use."""
        try:
            for ino in inos:
                await self.kernel.invalidate_attributes(ino)
            # the directories' pages: the entries the kernel caches for readdir
            for parent in dict.fromkeys(parent for parent, _ in names):
                await self.kernel.invalidate_inode(parent)
            for parent, name in names:
                await self.kernel.invalidate_entry(parent, name, REMOTE_ENTRY_WAIT)
        except Exception:
            log.exception("dropping the kernel's caches of another host's change failed")

    async def _invalidate_all(self) -> None:
        """Drop the kernel's caches of every known inode (after a purge); never raises."""
        try:
            for ino in dict.fromkeys([ROOT_INO, *self.inodes.known()]):
                await self.kernel.invalidate_inode(ino)
        except Exception:
            log.exception("dropping the kernel's caches after a purge failed")

    async def destroy(self) -> None:
        """After unmount: purge the inodes still waiting for their last forget."""
        for ino in {state.ino for state in self.inodes.unlinked()}:
            await self._purge(ino)
        self.inodes.clear()
