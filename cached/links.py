"""Counting names: the ``nlink`` of an inode as names are added and taken away.

A directory has one name (nlink 1, or 0 once removed).  Any other inode may have
several (hard links): ``nlink`` counts them, and it changes only by
compare-and-set (:meth:`~cached.store.TenantStore.swap_nlink`, an LWT), so two
hosts unlinking two names of one inode at once leave 0, not 1.

Order against the names themselves: a link counts the new name *before* its
dentry is written, and an unlink or a replacing rename counts the lost name
*after* its dentry is gone.  A request that dies between the two steps leaves
nlink one too high, never too low: the inode is kept (``cassfs fsck`` reports
and fixes the count) rather than purged while a name still reaches it.
"""

from __future__ import annotations

import logging

from cached.errors import NotFound, StorageError, TooManyLinks
from cached.model import DIRECTORY, Inode
from cached.store import TenantStore

log = logging.getLogger(__name__)

#: Tries of a compare-and-set of nlink that keeps losing to other hosts (then EIO).
SWAP_ATTEMPTS = 16
#: Most names one inode may have (ext4's EXT4_LINK_MAX); past it link(2) says EMLINK.
LINK_MAX = 65000


async def count_link(store: TenantStore, ino: int, now_ns: int) -> Inode:
    """Count one more name of ``ino`` (before the name is written); the updated inode.

    Raises ``NotFound`` (ENOENT) when the inode is gone or has no name left (an
    unlinked inode cannot be linked again), ``TooManyLinks`` (EMLINK) at
    :data:`LINK_MAX`, ``StorageError`` (EIO).
    """
    inode = await store.get_inode(ino)
    if inode is None:
        raise NotFound(f"inode {ino} is gone")
    nlink = inode.nlink
    for _attempt in range(SWAP_ATTEMPTS):
        if nlink <= 0:
            raise NotFound(f"inode {ino} has no name left")
        if nlink >= LINK_MAX:
            raise TooManyLinks(f"inode {ino} has {nlink} names")
        current = await store.swap_nlink(ino, nlink + 1, nlink, now_ns)
        if current is None:
            return inode.evolve(nlink=nlink + 1, ctime_ns=now_ns)
        if current < 0:
            raise NotFound(f"inode {ino} is gone")
        nlink = current
    raise StorageError(f"the link count of inode {ino} kept changing")


async def uncount_link(
    store: TenantStore, ino: int, now_ns: int, known: Inode | None = None
) -> Inode | None:
    """Count one name fewer of ``ino`` (after the name is gone); the updated inode.

    A directory goes to nlink 0 at once.  Returns None when the inode row is
    gone.  ``inode.nlink == 0`` afterwards means it lost its last name (purge it
    once nothing holds it).  ``known``: the inode as last seen (a cache's copy,
    however old), whose nlink the first compare-and-set expects instead of reading
    the row first; the compare-and-set checks it, and a wrong one costs a second
    try, not a wrong count (a ``known`` without names is not trusted: the row is
    read).  Only the returned nlink and ctime then come from Cassandra, its other
    fields are ``known``'s.  Raises ``StorageError`` (EIO).
    """
    guess = known is not None and known.ino == ino and known.nlink > 0
    inode = known if guess else await store.get_inode(ino)
    if inode is None:
        return None
    if inode.kind == DIRECTORY:
        await store.set_nlink(ino, 0, now_ns)
        return inode.evolve(nlink=0, ctime_ns=now_ns)
    nlink = inode.nlink
    for _attempt in range(SWAP_ATTEMPTS):
        if nlink <= 0:  # already counted out (fsck, or a settled rename)
            return inode.evolve(nlink=0)
        current = await store.swap_nlink(ino, nlink - 1, nlink, now_ns)
        if current is None:
            return inode.evolve(nlink=nlink - 1, ctime_ns=now_ns)
        if current < 0:
            return None
        nlink = current
    raise StorageError(f"the link count of inode {ino} kept changing")
