"""Finishing what a dead request began: cross-directory renames and directory seals.

A cross-directory rename is recorded as an :class:`~cached.store.Intent` before
it claims its source name (``dentries.pending``); see the README's consistency
model.  Its new-name step sets, in the same conditional batch, the rename's
*move marker* (a row of the new parent's partition) to ``MOVED``; a settler
that meets the claim can instead set that marker to ``FENCED``
(:meth:`~cached.store.TenantStore.fence_move`).  One of the two LWTs wins, so
the marker says for certain which step the rename reached, whatever its daemon
does later: ``MOVED``, the rename is finished (anyone may, at once: every step
is a conditional write, idempotent); ``FENCED``, it can never set its new name
and is undone.  A claim is fenced only once it is :data:`FENCE_AFTER` seconds old
(a rename sets its new name in milliseconds), so requests that meet the claim of
a killed daemon's rename wait seconds, not the grace period.

A daemon gives each request :data:`STEP_DEADLINE` seconds and sends none of its
statements after that; :data:`GRACE_NS` is what is left for what has no marker:
a claim whose intent is gone, the intents of daemons that set no markers (older
versions), and the seal of an rmdir that died between sealing a directory and
removing its name, which a later request lifts.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from cached.errors import CassfsError
from cached.links import uncount_link
from cached.model import DIRECTORY, Inode
from cached.store import MOVED, Intent, TenantStore, uuid_time_ns

log = logging.getLogger(__name__)

#: Seconds a daemon gives one mutating request (all its Cassandra statements).
STEP_DEADLINE = 30.0
#: Nanoseconds after which a claim, intent or seal belongs to a dead request.
GRACE_NS = 60 * 1_000_000_000
#: Seconds after which a claim whose rename has not set its new name is fenced and the
#: rename undone by a request that meets it (a live rename that slow retries).
FENCE_AFTER = 3.0

#: What settling a claim did: finished the rename, undid it, released a claim whose
#: intent is gone, or nothing yet (a rename in progress).
Settled = Literal["completed", "undone", "released", "waiting"]


def is_stale(op_id: bytes, now_ns: int | None = None, grace_ns: int = GRACE_NS) -> bool:
    """True if the time-based id ``op_id`` is older than ``grace_ns`` (:data:`GRACE_NS`).

    Ids without a time (not version-1 UUIDs) count as stale.
    """
    now = time.time_ns() if now_ns is None else now_ns
    return now - uuid_time_ns(op_id) > grace_ns


async def finish_move(store: TenantStore, intent: Intent, now_ns: int) -> Inode | None:
    """The steps of a cross-directory rename after its new name is set.

    Deletes the claimed source name, points a moved directory's ``parent`` at its
    new parent (only from its old one: a later move is never undone), counts one
    name fewer for the replaced inode, deletes the intent, then the move marker.
    Idempotent, and safe for several callers at once: the count is taken once, by
    whoever clears the intent's ``replaced``
    (:meth:`~cached.store.TenantStore.take_replaced`).  Returns the replaced inode
    after the count when this call took it (nlink 0: its last name), else None.
    Raises ``StorageError`` (EIO).
    """
    await store.delete_claimed(intent.old_parent, intent.old_name, intent.id, now_ns)
    if intent.kind == DIRECTORY:
        await store.move_parent(intent.ino, intent.new_parent, intent.old_parent)
    # (a file's ctime is not moved here: ctime_ns belongs to whichever change wrote it)
    replaced = None
    if intent.replaced and await store.take_replaced(intent):
        replaced = await uncount_link(store, intent.replaced, now_ns)
    await store.delete_intent(intent)
    # Last: a settler that fences the rename after this finds nothing left to undo.
    await store.clear_move_marker(intent.new_parent, intent.id)
    return replaced


async def settle_intent(store: TenantStore, intent: Intent) -> Literal["completed", "undone"]:
    """Complete or undo the cross-directory rename ``intent``, fencing it first.

    Safe at any time for the outcome, even while its daemon still runs (see the
    module): ``"completed"`` when the rename had set its new name (the rest is done
    now), else ``"undone"`` (the source claim is released; the rename can no longer
    set its new name).  A rename of a daemon that set no marker counts as having
    set its new name when that name names the moved inode.  Idempotent.  Raises
    ``StorageError`` (EIO).
    """
    return (await _settle_intent(store, intent))[0]


async def _settle_intent(
    store: TenantStore, intent: Intent
) -> tuple[Literal["completed", "undone"], Inode | None]:
    """:func:`settle_intent`, and the replaced inode when this call counted its name off
    (as :func:`finish_move` returns it)."""
    now = time.time_ns()
    if await store.fence_move(intent) != MOVED:
        target = await store.get_dentry(intent.new_parent, intent.new_name)
        if target is None or target.ino != intent.ino:
            await store.release_claim(intent.old_parent, intent.old_name, intent.id)
            await store.delete_intent(intent)
            log.info("settled rename %r -> %r: undone", intent.old_name, intent.new_name)
            return "undone", None
    replaced = await finish_move(store, intent, now)
    log.info("settled rename %r -> %r: completed", intent.old_name, intent.new_name)
    return "completed", replaced


async def settle_claim(
    store: TenantStore, parent: int, name: bytes, claim: bytes
) -> tuple[Settled, Intent | None, Inode | None]:
    """Settle, if it may be settled now, the claim ``claim`` met on ``name`` in ``parent``.

    With its intent: finished at once when the rename set its new name (its marker
    says ``MOVED``); fenced and undone once the claim is :data:`FENCE_AFTER` seconds
    old (or already fenced); else ``"waiting"`` (a rename in progress).  Without
    its intent (none, or one of another name): released past :data:`GRACE_NS` (the
    intent is gone, so the rename was undone, or finished and the release finds no
    claim).  Returns what was done, the intent (None when gone), and the inode the
    rename replaced when this call counted its name off (nlink 0: its last name, to
    purge).  Raises ``StorageError`` (EIO).
    """
    intent = await store.get_intent(claim)
    if intent is None or (intent.old_parent, intent.old_name) != (parent, name):
        # (an intent of another name under this id: not this claim's, which is gone)
        if not is_stale(claim):
            return "waiting", None, None
        await store.release_claim(parent, name, claim)
        return "released", None, None
    marker = await store.move_marker(intent.new_parent, intent.id)
    if marker == MOVED:
        replaced = await finish_move(store, intent, time.time_ns())
        log.info("finished rename %r -> %r met unfinished", intent.old_name, intent.new_name)
        return "completed", intent, replaced
    if marker or is_stale(claim, grace_ns=int(FENCE_AFTER * 1e9)):
        done, replaced = await _settle_intent(store, intent)
        return done, intent, replaced
    return "waiting", intent, None


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
