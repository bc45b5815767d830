"""Finishing what a dead request began: cross-directory renames and directory seals.

A cross-directory rename is recorded as an :class:`~cached.store.Intent` before
it claims its source name (``dentries.pending``); see the README's consistency
model.  A daemon gives each such sequence :data:`STEP_DEADLINE` seconds and
sends none of its statements after that, so a claim older than :data:`GRACE_NS`
belongs to a request that is dead (killed, or cut off from Cassandra), and
anyone may settle it: roll it forward when the new name was already set, else
undo it.  Both are idempotent: every step is a conditional write (LWT).

The same grace lets a later request lift the seal of an rmdir that died between
sealing a directory and removing its name.
"""

from __future__ import annotations

import logging
import time

from cached.errors import CassfsError
from cached.links import uncount_link
from cached.model import DIRECTORY, Inode
from cached.store import Intent, TenantStore, uuid_time_ns

log = logging.getLogger(__name__)

#: Seconds a daemon gives one mutating request (all its Cassandra statements).
STEP_DEADLINE = 30.0
#: Nanoseconds after which a claim, intent or seal belongs to a dead request.
GRACE_NS = 60 * 1_000_000_000


def is_stale(op_id: bytes, now_ns: int | None = None) -> bool:
    """True if the time-based id ``op_id`` is older than :data:`GRACE_NS`.

    Ids without a time (not version-1 UUIDs) count as stale.
    """
    now = time.time_ns() if now_ns is None else now_ns
    return now - uuid_time_ns(op_id) > GRACE_NS


async def finish_move(store: TenantStore, intent: Intent, now_ns: int) -> Inode | None:
    """The steps of a cross-directory rename after its new name is set.

    Deletes the claimed source name, points a moved directory's ``parent`` at its
    new parent, counts one name fewer for the replaced inode, and deletes the
    intent.  Idempotent: the count is taken once, by whoever clears the intent's
    ``replaced`` (:meth:`~cached.store.TenantStore.take_replaced`).  Returns the
    replaced inode after the count when this call took it (nlink 0: its last
    name), else None.  Raises ``StorageError`` (EIO).
    """
    await store.delete_claimed(intent.old_parent, intent.old_name, intent.id, now_ns)
    if intent.kind == DIRECTORY:
        await store.set_parent(intent.ino, intent.new_parent, now_ns)
    # (a file's ctime is not moved here: ctime_ns belongs to whichever change wrote it)
    replaced = None
    if intent.replaced and await store.take_replaced(intent):
        replaced = await uncount_link(store, intent.replaced, now_ns)
    await store.delete_intent(intent)
    return replaced


async def settle_intent(store: TenantStore, intent: Intent) -> str:
    """Complete or undo the cross-directory rename ``intent`` of a dead request.

    Call only past the grace period (:func:`is_stale` of ``intent.id``).  Returns
    ``"completed"`` when the new name already named the moved inode (the rest is
    done now), else ``"undone"`` (the source claim is released).  Idempotent.
    Raises ``StorageError`` (EIO).
    """
    now = time.time_ns()
    target = await store.get_dentry(intent.new_parent, intent.new_name)
    if target is not None and target.ino == intent.ino:
        await finish_move(store, intent, now)
        log.info("settled rename %r -> %r: completed", intent.old_name, intent.new_name)
        return "completed"
    await store.release_claim(intent.old_parent, intent.old_name, intent.id)
    await store.delete_intent(intent)
    log.info("settled rename %r -> %r: undone", intent.old_name, intent.new_name)
    return "undone"


async def settle_claim(store: TenantStore, parent: int, name: bytes, claim: bytes) -> None:
    """Settle the stale claim ``claim`` on ``name`` in ``parent``.

    Settles its intent when the intent row exists, else releases the claim (the
    intent is gone, so the rename never set its new name... or finished it, in
    which case the release finds no claim).  Raises ``StorageError`` (EIO).
    """
    intent = await store.get_intent(claim)
    if intent is not None:
        await settle_intent(store, intent)
    else:
        await store.release_claim(parent, name, claim)


async def lift_stale_seal(store: TenantStore, directory: Inode, seal: bytes) -> bool:
    """Lift the seal ``seal`` of an rmdir that died before removing ``directory``'s name.

    Only when the seal is past the grace period, the directory still has links,
    and its parent still names it.  Returns True if the seal was lifted.
    Raises ``StorageError`` (EIO).
    """
    if not is_stale(seal) or directory.nlink == 0:
        return False
    try:
        entries = await store.list_dentries(directory.parent)
    except CassfsError:
        return False
    if not any(entry.ino == directory.ino for entry in entries):
        return False
    lifted = await store.unseal_dir(directory.ino, seal)
    if lifted:
        log.warning("lifted the stale seal of directory %d (an rmdir died)", directory.ino)
    return lifted
