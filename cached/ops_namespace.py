"""RPC methods that change names: mkdir, create, symlink, mknod, link, unlink, rmdir, rename,
purge_inode.

Every name change is a lightweight transaction (LWT) or a conditional batch on
one directory's ``dentries`` partition, read from Cassandra (never from the
cache) just before; see the README's consistency model.  A change that loses a
race rereads and tries again (:data:`ATTEMPTS` times) rather than report an
errno the race does not explain.
"""

from __future__ import annotations

import functools
import logging
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from cached import content
from cached.api import Renamed
from cached.cache import Freshness
from cached.core import (
    Core,
    Session,
    gather,
    new_inode_number,
)
from cached.errors import (
    Exists,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    StorageError,
)
from cached.lease import RenameLease
from cached.links import count_link, uncount_link
from cached.model import (
    BLOCKDEV,
    CHARDEV,
    DIRECTORY,
    REGULAR,
    ROOT_INO,
    SPECIAL_KINDS,
    SYMLINK,
    Dentry,
    Inode,
    check_name,
    kind_of_mode,
    mode_of_kind,
)
from cached.recovery import finish_move, lift_stale_seal
from cached.store import Intent, LwtOutcome, new_op_id
from cached.versions import Contents

log = logging.getLogger(__name__)

#: rename(2) flags (linux/fs.h).
RENAME_NOREPLACE = 1
#: Tries of a name change that keeps losing races before it gives up (EIO).
ATTEMPTS = 8
#: Seconds a request waits for another host's rename to release a name it claims (a rename
#: takes milliseconds; one whose daemon died is settled once its claim is past the grace).
CLAIM_WAIT = 10.0
#: Seconds between looks at a name claimed by another host's rename in progress.
CLAIM_POLL = 0.02


def _text(name: bytes) -> str:
    return name.decode(errors="replace")


class NamespaceOps:
    """Namespace operations: the ``rpc_*`` methods of this group."""

    def __init__(self, core: Core, contents: Contents) -> None:
        self.core = core
        self.contents = contents

    # -- reading names from Cassandra -----------------------------------------------------

    async def _entry(self, s: Session, parent: int, name: bytes) -> Dentry | None:
        """The entry ``name`` in ``parent`` from Cassandra, once no rename claims it.

        A claim is settled as soon as it may be (``cached.recovery.settle_claim``: the
        rename finished at once if it set its new name, fenced and undone once the
        claim is seconds old); a rename in progress is waited out, up to
        :data:`CLAIM_WAIT` seconds, then ``StorageError`` (EIO).  Refreshes the
        cached dentry.
        """
        deadline = trio.current_time() + CLAIM_WAIT
        while True:
            started = self.core.cache.clock()
            entry = await s.store.get_dentry(parent, name)
            if entry is None or not entry.pending:
                await self.core.cache.put_dentry(
                    s.tenant,
                    parent,
                    name,
                    entry.ino if entry else 0,
                    entry.kind if entry else 0,
                    started_at=started,
                )
                return entry
            if await self.core.settle_claim(s, entry) != "waiting":
                continue
            if trio.current_time() > deadline:
                raise StorageError(f"{_text(name)!r} stays claimed by a rename in progress")
            await trio.sleep(CLAIM_POLL)

    async def _cached_entry(
        self, s: Session, parent: int, name: bytes
    ) -> tuple[bool, Dentry | None]:
        """``(known, entry)``: what the cache holds fresh of ``name`` in ``parent`` (from
        its listing or its own entry; ``entry`` None: known absent), or ``(False,
        None)`` when it holds nothing fresh.  A hint only: an LWT checks it."""
        cache = self.core.cache
        state, index = await cache.get_listing_index(s.tenant, parent)
        if state is Freshness.FRESH and index is not None:
            ino, kind = index.get(name, (0, 0))
        else:
            state, held = await cache.get_dentry(s.tenant, parent, name)
            if state is not Freshness.FRESH or held is None:
                return False, None
            ino, kind = held
        return True, Dentry(parent, name, ino, kind) if ino else None

    async def _cached_move(
        self, s: Session, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
        flags: int,
    ) -> tuple[Dentry, Dentry | None] | None:  # fmt: skip
        """The source and target of a rename as the cache knows them, when that leads
        straight to the move's LWT: a file or symlink known present, a target known
        (present, of a kind it may replace, another inode; or absent).  None otherwise:
        the names are read from Cassandra, so that no error, nor a rename found to do
        nothing, is answered from the cache.  A stale hint fails the LWT, and the next
        try reads both names."""
        known, source = await self._cached_entry(s, old_parent, old_name)
        if not known or source is None or source.kind == DIRECTORY:
            return None
        known, target = await self._cached_entry(s, new_parent, new_name)
        if not known:
            return None
        if target is not None:
            if target.ino == source.ino or target.kind == DIRECTORY:
                return None
            if flags & RENAME_NOREPLACE:
                return None
        return source, target

    async def _refresh_name(
        self, s: Session, parent: int, name: bytes, holder: Dentry | None
    ) -> None:
        """Cache what a lost LWT said ``name`` in ``parent`` now names (None: nothing)."""
        ino, kind = (holder.ino, holder.kind) if holder is not None else (0, 0)
        await self.core.dentries_changed(s, parent, name, ino, kind)

    async def _check_open_dir(
        self, s: Session, parent: int, outcome: LwtOutcome, touched: bool = False
    ) -> None:
        """After an insert refused because ``parent`` is sealed: lift a dead rmdir's seal.

        Raises ``NotFound`` (ENOENT) when the directory is removed or being removed.
        ``touched``: the caller wrote ``parent``'s mtime before its insert (a create,
        :meth:`TenantStore.create_inode`); when the directory's inode is gone, that
        write may have left a fragment of its row, which is deleted again.
        """
        directory = await s.store.get_inode(parent)
        if directory is None and touched:
            try:
                with trio.CancelScope(shield=True):
                    await s.store.delete_fragment(parent)
            except StorageError as exc:  # the caller's answer is still ENOENT
                log.warning("a fragment of removed directory %d may be left: %s", parent, exc)
        elif directory is not None and await lift_stale_seal(s.store, directory, outcome.sealed):
            return
        raise NotFound(f"directory {parent} was removed")

    # -- create ---------------------------------------------------------------------------

    async def _make(self, s: Session, parent: int, name: bytes, inode: Inode) -> Inode:
        check_name(name)
        directory = await self.core.directory(s, parent)
        if directory.mode & stat.S_ISGID:
            # A setgid directory passes on its group, and to subdirectories the bit
            # itself (what ext4 does; the kernel already cleared S_ISGID from the mode
            # of a file whose creator is not in that group).
            mode = inode.mode | (stat.S_ISGID if inode.is_dir else 0)
            inode = inode.evolve(gid=directory.gid, mode=mode)
        # The inode (and its index row) before its name: a name never points at nothing.
        # If the name LWT fails without an answer, the inode stays: the name may have
        # been set; if not, fsck finds a nameless inode.  The same batch sets the
        # parent's mtime and ctime, a round trip fewer than after the name.  A create
        # that then loses the name leaves that mtime moved: another host took the name
        # (and moved it too), or the directory is gone (see _check_open_dir).
        await s.store.create_inode(inode, touch_parent=parent)
        await self.core.usage.count(s, 0, 1)
        for _attempt in range(2):
            outcome = await s.store.insert_dentry(
                Dentry(parent, name, inode.ino, inode.kind), inode.ctime_ns
            )
            if outcome.applied:
                break
            try:
                if outcome.sealed:
                    await self._check_open_dir(s, parent, outcome, touched=True)
                    continue  # a dead rmdir's seal was lifted
                await self._refresh_name(s, parent, name, outcome.holder)
                raise Exists(_text(name))
            except BaseException:
                with trio.CancelScope(shield=True):
                    await s.store.delete_inode(inode.ino)
                    await self.core.usage.count(s, 0, -1)
                raise
        else:
            with trio.CancelScope(shield=True):
                await s.store.delete_inode(inode.ino)
                await self.core.usage.count(s, 0, -1)
            raise NotFound(f"directory {parent} was removed")
        await self.core.dir_touched(s, parent, inode.ctime_ns)
        await self.core.cache.put_inode(s.tenant, inode)
        # A new inode has no extended attributes: the kernel's security.capability probe
        # at its first write is answered without a query.
        await self.core.cache.put_xattrs(s.tenant, inode.ino, {})
        await self.core.dentries_changed(s, parent, name, inode.ino, inode.kind, 0)
        await self.core.announce(s, parent, names=[(parent, name)])
        return inode

    def _new_inode(
        self, kind: int, mode: int, uid: int, gid: int, parent: int, **extra: Any
    ) -> Inode:
        now = time.time_ns()
        fields: dict[str, Any] = {
            "ino": new_inode_number(),
            "kind": kind,
            "mode": mode_of_kind(kind, mode),
            "uid": uid,
            "gid": gid,
            "size": 0,
            "atime_ns": now,
            "mtime_ns": now,
            "ctime_ns": now,
            "parent": parent,
            "nlink": 1,
            "content_id": b"",
            "chunk_size": 0,
            "target": b"",
            "xattrs": False,  # none yet: a getxattr needs no query (schema 7)
        }
        fields.update(extra)
        return Inode(**fields)

    async def rpc_mkdir(
        self, s: Session, parent: int, name: bytes, mode: int, uid: int, gid: int
    ) -> dict[str, Any]:
        """Create directory ``name`` in ``parent``; EEXIST, ENOENT (parent removed), ENOTDIR.

        The answer's nlink is 2 (no subdirectory yet; see ``rpc_getattr``); the
        stored one is 1.
        """
        inode = self._new_inode(DIRECTORY, mode, uid, gid, parent)
        return (await self._make(s, parent, name, inode)).evolve(nlink=2).to_wire()

    async def rpc_create(
        self, s: Session, parent: int, name: bytes, mode: int, uid: int, gid: int
    ) -> dict[str, Any]:
        """Create empty regular file ``name`` in ``parent``; EEXIST, ENOENT, ENOTDIR."""
        inode = self._new_inode(
            REGULAR,
            mode,
            uid,
            gid,
            parent,
            content_id=content.EMPTY_ID,
            chunk_size=content.CHUNK_SIZE,
        )
        return (await self._make(s, parent, name, inode)).to_wire()

    async def rpc_symlink(
        self, s: Session, parent: int, name: bytes, target: bytes, uid: int, gid: int
    ) -> dict[str, Any]:
        """Create symlink ``name`` -> ``target``; EEXIST, ENAMETOOLONG, EINVAL (empty target)."""
        if not target or len(target) > 4096:
            raise InvalidArgument("symlink target must be 1 to 4096 bytes")
        inode = self._new_inode(SYMLINK, 0o777, uid, gid, parent, target=target, size=len(target))
        return (await self._make(s, parent, name, inode)).to_wire()

    async def rpc_mknod(
        self, s: Session, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int
    ) -> dict[str, Any]:
        """Create a FIFO, socket, device or empty regular file ``name`` (mknod(2)).

        ``mode`` carries the file type bits; ``rdev`` (the kernel's encoding) is kept
        for character and block devices.  EEXIST, ENOENT, ENOTDIR; EINVAL for a
        directory, symlink or unknown type (the kernel refuses those first).
        """
        kind = kind_of_mode(mode)
        if kind == REGULAR:
            return await self.rpc_create(s, parent, name, mode & 0o7777, uid, gid)
        if kind not in SPECIAL_KINDS:
            raise InvalidArgument(f"mknod cannot make a {stat.filemode(mode)[0]!r} inode")
        device = rdev if kind in (CHARDEV, BLOCKDEV) else 0
        inode = self._new_inode(kind, mode, uid, gid, parent, rdev=device)
        return (await self._make(s, parent, name, inode)).to_wire()

    async def rpc_link(
        self, s: Session, ino: int, new_parent: int, new_name: bytes
    ) -> dict[str, Any]:
        """Give the non-directory ``ino`` the name ``new_name`` in ``new_parent`` (link(2)).

        Returns the inode with its new nlink.  EEXIST, ENOENT (the inode has no name
        left or the directory is removed), ENOTDIR, EPERM for a directory, EMLINK
        past :data:`~cached.links.LINK_MAX` names.  The name is counted before it
        is written (see :mod:`cached.links`).
        """
        check_name(new_name)
        await self.core.directory(s, new_parent)
        existing = await s.store.get_inode(ino)
        if existing is not None and existing.kind == DIRECTORY:
            raise NotPermitted("hard links to directories are not allowed")
        target = await self._entry(s, new_parent, new_name)
        if target is not None:
            await self._refresh_name(s, new_parent, new_name, target)
            raise Exists(_text(new_name))
        now = time.time_ns()
        inode = await count_link(s.store, ino, now)
        try:
            for _attempt in range(2):
                outcome = await s.store.insert_dentry(
                    Dentry(new_parent, new_name, ino, inode.kind), now
                )
                if outcome.applied:
                    break
                if outcome.sealed:
                    await self._check_open_dir(s, new_parent, outcome)
                    continue  # a dead rmdir's seal was lifted
                await self._refresh_name(s, new_parent, new_name, outcome.holder)
                raise Exists(_text(new_name))
            else:
                raise NotFound(f"directory {new_parent} was removed")
        except BaseException:
            with trio.CancelScope(shield=True):
                await uncount_link(s.store, ino, time.time_ns())
            raise
        await self.core.touch_dir(s, new_parent, now)
        await self.core.cache.put_inode(s.tenant, inode)
        await self.core.dentries_changed(s, new_parent, new_name, ino, inode.kind, 0)
        await self.core.announce(s, new_parent, ino, names=[(new_parent, new_name)])
        return inode.to_wire()

    # -- remove ---------------------------------------------------------------------------

    async def _seal_empty(self, s: Session, directory: int, op: bytes, name: bytes) -> None:
        """Seal ``directory`` for ``op`` and check that it is empty.

        Raises ``NotEmpty`` (ENOTEMPTY, the seal lifted again) or ``NotFound``
        (another operation removes it).
        """
        for _attempt in range(ATTEMPTS):
            holder = await s.store.seal_dir(directory, op)
            if holder is None:
                break
            inode = await s.store.get_inode(directory)
            if inode is not None and await lift_stale_seal(s.store, inode, holder):
                continue
            await trio.sleep(CLAIM_POLL)  # another rmdir or rename: it removes it, or unseals
            if await s.store.dir_sealed(directory) == holder:
                raise NotFound(f"{_text(name)!r} is being removed")
        else:
            raise NotFound(f"{_text(name)!r} is being removed")
        if await s.store.has_dentries(directory):
            with trio.CancelScope(shield=True):
                await s.store.unseal_dir(directory, op)
            raise NotEmpty(_text(name))

    async def _unlink_entry(self, s: Session, parent: int, name: bytes, want_dir: bool) -> int:
        check_name(name)
        for _attempt in range(ATTEMPTS):
            entry = await self._entry(s, parent, name)
            if entry is None:
                raise NotFound(_text(name))
            if want_dir and entry.kind != DIRECTORY:
                raise NotADirectory(_text(name))
            if not want_dir and entry.kind == DIRECTORY:
                raise IsADirectory(_text(name))
            op = new_op_id()
            if want_dir:
                await self._seal_empty(s, entry.ino, op, name)
            now = time.time_ns()
            outcome = await s.store.delete_dentry(parent, name, entry.ino, now)
            if outcome.applied:
                break
            if want_dir:  # the name changed: the directory stays
                with trio.CancelScope(shield=True):
                    await s.store.unseal_dir(entry.ino, op)
        else:
            raise StorageError(f"{_text(name)!r} kept changing while being removed")
        await self.core.dentries_changed(s, parent, name, 0, 0, entry.kind)
        # both follow the name's removal and nothing else: at once
        inode, _ = await gather(
            functools.partial(uncount_link, s.store, entry.ino, now),
            functools.partial(self.core.touch_dir, s, parent, now),
        )
        if inode is not None:
            await self.core.cache.put_inode(s.tenant, inode)
        await self.core.announce(s, parent, entry.ino, names=[(parent, name)])
        return entry.ino if inode is None or inode.nlink == 0 else 0

    async def rpc_unlink(self, s: Session, parent: int, name: bytes) -> int:
        """Remove the non-directory ``name``.  ENOENT, EISDIR.

        Returns its inode number when that was its last name (purge it once nothing
        holds it), else 0 (other hard links remain).
        """
        return await self._unlink_entry(s, parent, name, want_dir=False)

    async def rpc_rmdir(self, s: Session, parent: int, name: bytes) -> int:
        """Remove the empty directory ``name``; its inode number.  ENOENT, ENOTDIR, ENOTEMPTY."""
        return await self._unlink_entry(s, parent, name, want_dir=True)

    # -- rename ---------------------------------------------------------------------------

    async def rpc_rename(
        self,
        s: Session,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int = 0,
    ) -> dict[str, int]:
        """Move ``old_name`` to ``new_name``, replacing a target of the same kind.

        Returns ``{"ino": moved inode, "replaced": replaced inode or 0}``.
        ENOENT, EEXIST (RENAME_NOREPLACE), EISDIR, ENOTDIR, ENOTEMPTY, EINVAL
        (moving a directory under itself, or unsupported flags such as
        RENAME_EXCHANGE).  Atomic within one directory (one conditional batch);
        across directories through an intent (see the README).
        """
        if flags & ~RENAME_NOREPLACE:
            raise InvalidArgument(f"rename flags {flags:#x} are not supported")
        check_name(old_name)
        check_name(new_name)
        await self.core.directory(s, new_parent)
        # Cancelled when the rename lease, once taken, may be near its end (a cancel at any
        # step leaves what a killed daemon leaves: an intent later requests settle).
        hold = trio.CancelScope()
        lease = RenameLease(s.store, hold, self.core.background)
        try:
            with hold:
                for _attempt in range(ATTEMPTS):
                    if (old_parent, old_name) == (new_parent, new_name):
                        source = await self._entry(s, old_parent, old_name)
                        if source is None:
                            raise NotFound(_text(old_name))
                        return Renamed(source.ino, 0).to_wire()
                    # The cache's names on the first try (a temp file made here, renamed
                    # over a name looked up), else both names at once from Cassandra:
                    # the move's LWTs check them again either way.
                    hinted = None
                    if _attempt == 0:
                        hinted = await self._cached_move(
                            s, old_parent, old_name, new_parent, new_name, flags
                        )
                    if hinted is not None:
                        source, target = hinted
                    else:
                        source, target = await gather(
                            functools.partial(self._entry, s, old_parent, old_name),
                            functools.partial(self._entry, s, new_parent, new_name),
                        )
                    if source is None:
                        raise NotFound(_text(old_name))
                    if source.kind == DIRECTORY and old_parent != new_parent:
                        if not lease.holder:
                            await lease.take()
                        await self._check_not_below(s, source.ino, new_parent)
                    if target is not None:
                        if target.ino == source.ino:
                            return Renamed(source.ino, 0).to_wire()
                        self._check_replace(source, target, new_name, flags)
                    done = await self._move(s, source, new_parent, new_name, target)
                    if done is not None:
                        return done
                raise StorageError(f"rename of {_text(old_name)!r} kept losing races")
            raise StorageError(f"moving {_text(old_name)!r} outlasted its rename lease")
        finally:
            await lease.release()

    @staticmethod
    def _check_replace(source: Dentry, target: Dentry, new_name: bytes, flags: int) -> None:
        if flags & RENAME_NOREPLACE:
            raise Exists(_text(new_name))
        if source.kind == DIRECTORY and target.kind != DIRECTORY:
            raise NotADirectory(_text(new_name))
        if source.kind != DIRECTORY and target.kind == DIRECTORY:
            raise IsADirectory(_text(new_name))

    async def _move(
        self, s: Session, source: Dentry, new_parent: int, new_name: bytes, target: Dentry | None
    ) -> dict[str, int] | None:
        """One try at the move; None when it lost a race and the caller should reread."""
        op = new_op_id()
        if target is not None and target.kind == DIRECTORY:
            await self._seal_empty(s, target.ino, op, new_name)
        replaced = target.ino if target is not None else 0
        now = time.time_ns()
        moved = False
        counted: Inode | None = None  # the replaced inode, one name fewer
        try:
            if source.parent == new_parent:
                outcome = await s.store.rename_in_dir(new_parent, source, new_name, replaced, now)
                moved = outcome.applied
                if not moved and outcome.sealed:
                    await self._check_open_dir(s, new_parent, outcome)
            else:
                intent = Intent(
                    op, source.parent, source.name, new_parent, new_name, source.ino,
                    source.kind, replaced, now,
                )  # fmt: skip
                moved, counted = await self._move_across(s, intent, target)
        finally:
            if not moved and target is not None and target.kind == DIRECTORY:
                with trio.CancelScope(shield=True):
                    await s.store.unseal_dir(target.ino, op)
        if not moved:
            return None

        async def uncount() -> Inode | None:
            if source.parent == new_parent and replaced:
                # the cached inode's nlink spares a read before the compare-and-set
                _state, known = await self.core.cache.get_inode(s.tenant, replaced)
                return await uncount_link(s.store, replaced, now, known)
            return counted

        # what follows the move depends on nothing but the move: at once
        after: list[Callable[[], Awaitable[Any]]] = [
            uncount,
            functools.partial(s.store.set_ctime, source.ino, now),
            functools.partial(self.core.touch_dir, s, source.parent, now),
        ]
        if new_parent != source.parent:
            after.append(functools.partial(self.core.touch_dir, s, new_parent, now))
        counted = (await gather(*after))[0]
        await self.core.cache.drop_inode(s.tenant, source.ino)
        if replaced:
            await self.core.cache.drop_inode(s.tenant, replaced)
        await self.core.dentries_changed(s, source.parent, source.name, 0, 0, source.kind)
        await self.core.dentries_changed(
            s, new_parent, new_name, source.ino, source.kind, target.kind if target else 0
        )
        await self.core.announce(
            s, source.parent, new_parent, source.ino, replaced,
            names=[(source.parent, source.name), (new_parent, new_name)],
        )  # fmt: skip
        last_name = replaced if counted is not None and counted.nlink == 0 else 0
        return Renamed(source.ino, last_name).to_wire()

    async def _move_across(
        self, s: Session, intent: Intent, target: Dentry | None
    ) -> tuple[bool, Inode | None]:
        """Intent, claim the source, set the new name, finish.

        Returns ``(moved, replaced)``: moved False when a race was lost; replaced is
        the replaced inode after one name fewer was counted (see ``finish_move``).
        """
        store = s.store
        await store.put_intent(intent)
        if not await store.claim_dentry(intent.old_parent, intent.old_name, intent.ino, intent.id):
            with trio.CancelScope(shield=True):
                await store.delete_intent(intent)
            return False, None
        # Should this LWT fail without an answer, whether the new name was set is
        # unknown: the claim and the intent stay for a later request or fsck to settle.
        moved = Dentry(intent.new_parent, intent.new_name, intent.ino, intent.kind)
        # The same batch sets the rename's move marker, unless a settler fenced it first
        # (see cached.recovery): then it is not applied, and the rename tries again.
        if target is None:
            outcome = await store.insert_dentry(moved, intent.started_ns, move=intent.id)
        else:
            outcome = await store.replace_dentry(
                moved, target.ino, intent.started_ns, move=intent.id
            )
        if not outcome.applied:
            with trio.CancelScope(shield=True):
                await store.release_claim(intent.old_parent, intent.old_name, intent.id)
                await store.delete_intent(intent)
            if outcome.sealed:
                await self._check_open_dir(s, intent.new_parent, outcome)
            return False, None
        return True, await finish_move(store, intent, intent.started_ns)

    async def _check_not_below(self, s: Session, moving: int, new_parent: int) -> None:
        """EINVAL if ``new_parent`` is ``moving`` or lies below it.

        Reads the parents from Cassandra under the rename lease, so no other
        directory move can change them meanwhile.  Raises ``StorageError`` on a
        parent chain that does not end at the root (a corrupt tree: run fsck).
        """
        ino, seen = new_parent, set[int]()
        while ino != ROOT_INO:
            if ino == moving:
                raise InvalidArgument("cannot move a directory below itself")
            if ino in seen:
                raise StorageError(f"directory {ino} is its own ancestor: run `cassfs fsck`")
            seen.add(ino)
            inode = await s.store.get_inode(ino)
            if inode is None:
                raise NotFound(f"directory {ino} vanished")
            ino = inode.parent

    # -- purge ----------------------------------------------------------------------------

    async def rpc_purge_inode(self, s: Session, ino: int) -> bool:
        """Delete an unlinked inode (nlink 0), its versions and chunks; True if deleted now.

        The front calls this when the kernel has forgotten the inode.  With a purge
        delay (see :mod:`cached.reaper`) the deletion is queued instead, for hosts
        that still hold a name of it or a handle on it, and this returns False.
        """
        if self.core.reaper.delay <= 0:
            return await self.purge_now(s, ino)
        inode = await s.store.get_inode(ino)
        if inode is not None and inode.nlink == 0:  # purge_now checks again when it is due
            with trio.CancelScope(shield=True):
                await self.core.reaper.schedule(s.owner, s.environment, ino)
        return False

    async def purge_now(self, s: Session, ino: int) -> bool:
        """Delete ``ino`` if it is still unlinked, and count it off the tenant's usage
        (:mod:`cached.usage`); True if this call deleted it.  StorageError (EIO)."""
        async with self.core.inode_locks((s.tenant, ino)):
            inode = await s.store.get_inode(ino)
            if inode is None or inode.nlink != 0:
                return False
            for version in await s.store.list_versions(ino):
                await self.contents.delete_chunks(
                    s, ino, version.version, version.size, version.chunk_size
                )
            if inode.version:
                await self.contents.delete_chunks(
                    s, ino, inode.version, inode.size, inode.chunk_size
                )
            # Conditional: of several purges of this inode at once (two daemons' queues)
            # exactly one takes it off the usage counters.
            if not await s.store.delete_unlinked(ino):
                # Another purge deleted it (or an earlier send of this one, whose outcome
                # was unknown): its other rows go too, idempotently, but it is not counted
                # off again (see TenantStore.delete_unlinked).
                if await s.store.get_inode(ino) is None:
                    await s.store.delete_inode(ino)
                    await self.core.cache.drop_xattrs(s.tenant, ino)
                await self.core.cache.drop_inode(s.tenant, ino)
                return False
            await self.core.usage.count(s, -inode.size if inode.kind == REGULAR else 0, -1)
            await s.store.delete_inode(ino)  # its xattrs partition too
            await self.core.cache.drop_inode(s.tenant, ino)
            await self.core.cache.drop_xattrs(s.tenant, ino)
            return True
