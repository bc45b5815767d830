"""Every LWT whose outcome is unknown is settled by sending it again, on the real node.

A cluster leaves an LWT's outcome unknown when its coordinator times out or Paxos
contention leaves the proposal "accepted by 1 but not a quorum".  :class:`Lossy` plays
that on the real node: the first send of a chosen statement really goes to Cassandra
(it is applied, or not, as Cassandra decides) and its answer is then lost
(``OutcomeUnknown``); ``between`` runs another host's change before the answer is lost.
Each test checks what the caller concludes against the rows Cassandra holds.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from cached.errors import OutcomeUnknown
from cached.links import uncount_link
from cached.model import DIRECTORY, REGULAR, ROOT_INO, Dentry, Inode, mode_of_kind
from cached.recovery import finish_move
from cached.store import FENCED, MOVED, ContactPoints, Intent, Store, TenantStore, new_op_id
from tests.conftest import KEYSPACE

pytestmark = pytest.mark.cassandra


class Lossy(Store):
    """A real store whose first send of each statement named in :attr:`lose` (a batch:
    any of its statements) is sent to Cassandra, then answered ``OutcomeUnknown``.

    :attr:`between`, when set, runs after that send and before the loss (another host's
    change meanwhile).  :attr:`lost` counts the answers lost.
    """

    lose: set[str]
    between: Callable[[], Awaitable[object]] | None
    lost: int

    def _lost_now(self, names: Sequence[str]) -> bool:
        hit = self.lose.intersection(names)
        self.lose -= hit
        return bool(hit)

    async def _lose(self, what: str) -> None:
        if self.between is not None:
            between, self.between = self.between, None
            await between()
        self.lost += 1
        raise OutcomeUnknown(f"{what}: outcome unknown (lost by the test)")

    async def run(self, name: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """As :meth:`Store.run`; the answer lost on the first send of a lost statement."""
        rows = await super().run(name, params)
        if self._lost_now([name]):
            await self._lose(name)
        return rows

    async def run_batch(
        self, parts: Sequence[tuple[str, Sequence[Any]]], *, logged: bool = False
    ) -> list[dict[str, Any]]:
        """As :meth:`Store.run_batch`; lost as :meth:`run`."""
        rows = await super().run_batch(parts, logged=logged)
        if self._lost_now([name for name, _ in parts]):
            await self._lose("batch")
        return rows


@pytest.fixture
async def stores(
    cassandra: str, tenant: tuple[int, str]
) -> AsyncIterator[tuple[Lossy, TenantStore, TenantStore]]:
    """``(lossy, mine, other)``: a lossy store, the tenant through it, and the tenant
    through a plain store (another host)."""
    lossy = await Lossy.connect(ContactPoints.parse(cassandra), KEYSPACE)
    lossy.lose, lossy.between, lossy.lost = set(), None, 0
    plain = await Store.connect(ContactPoints.parse(cassandra), KEYSPACE)
    try:
        yield lossy, lossy.tenant(*tenant), plain.tenant(*tenant)
    finally:
        await lossy.close()
        await plain.close()


def a_file(ino: int, nlink: int = 1, parent: int = ROOT_INO) -> Inode:
    now = time.time_ns()
    return Inode(
        ino=ino, kind=REGULAR, mode=mode_of_kind(REGULAR, 0o644), uid=0, gid=0, size=0,
        atime_ns=now, mtime_ns=now, ctime_ns=now, parent=parent, nlink=nlink,
        content_id=b"", chunk_size=0, target=b"",
    )  # fmt: skip


async def renamed_over(ts: TenantStore, replaced: int) -> Intent:
    """An intent of a cross-directory rename over inode ``replaced``, its new name set."""
    now = time.time_ns()
    intent = Intent(new_op_id(), ROOT_INO, b"src", 50, b"dst", 40, REGULAR, replaced, now)
    await ts.put_intent(intent)
    assert (await ts.insert_dentry(Dentry(ROOT_INO, b"src", 40, REGULAR), now)).applied
    assert await ts.claim_dentry(ROOT_INO, b"src", 40, intent.id)
    assert (await ts.insert_dentry(Dentry(50, b"dst", replaced, REGULAR), now)).applied
    moved = Dentry(50, b"dst", 40, REGULAR)
    assert (await ts.replace_dentry(moved, replaced, now, move=intent.id)).applied
    return intent


# -- take_replaced: who takes a name from the replaced inode ------------------------------


async def test_a_take_whose_answer_was_lost_is_found_taken_by_its_own_token(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, other = stores
    await mine.create_inode(a_file(41, nlink=2))
    intent = await renamed_over(mine, 41)
    lossy.lose = {"take_replaced"}
    assert await mine.take_replaced(intent) is True
    assert lossy.lost == 1
    assert await other.take_replaced(intent) is False  # taken once
    assert [i.replaced for i in await other.list_intents(intent.bucket)] == [0]


async def test_a_take_whose_answer_was_lost_after_another_took_it_is_not_taken(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, other = stores
    intent = await renamed_over(mine, 41)
    assert await other.take_replaced(intent) is True
    lossy.lose = {"take_replaced"}  # this send finds it taken; its answer is lost
    assert await mine.take_replaced(intent) is False
    assert lossy.lost == 1


async def test_a_take_whose_intent_was_deleted_before_the_resend_takes_nothing(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, other = stores
    intent = await renamed_over(mine, 41)
    lossy.lose, lossy.between = {"take_replaced"}, lambda: other.delete_intent(intent)
    assert await mine.take_replaced(intent) is False  # cannot tell: count nothing


async def test_two_finishers_one_answer_lost_count_the_replaced_name_off_once(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    """The race harness's EIO on a 3-node cluster: a rename's ``take_replaced`` "accepted
    by 1 but not a quorum" while a settler finished the same rename."""
    lossy, mine, other = stores
    await mine.create_inode(a_file(41, nlink=3))
    intent = await renamed_over(mine, 41)
    lossy.lose = {"take_replaced"}
    counted = await finish_move(mine, intent, time.time_ns())
    again = await finish_move(other, intent, time.time_ns())
    assert counted is not None and counted.nlink == 2 and again is None
    assert (await other.get_inode(41)).nlink == 2  # type: ignore[union-attr]
    assert await other.list_intents(intent.bucket) == []
    assert await other.get_dentry(ROOT_INO, b"src") is None


# -- names --------------------------------------------------------------------------------


async def test_an_unlink_whose_answer_was_lost_is_found_applied(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, other = stores
    assert (await mine.insert_dentry(Dentry(7, b"f", 41, REGULAR), time.time_ns())).applied
    lossy.lose = {"delete_dentry"}
    assert (await mine.delete_dentry(7, b"f", 41, time.time_ns())).applied
    assert lossy.lost == 1 and await other.get_dentry(7, b"f") is None


async def test_an_unlink_lost_then_another_change_in_the_directory_is_outcome_unknown(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, other = stores
    assert (await mine.insert_dentry(Dentry(7, b"f", 41, REGULAR), time.time_ns())).applied

    async def another_create() -> None:
        assert (await other.insert_dentry(Dentry(7, b"g", 42, REGULAR), time.time_ns())).applied

    lossy.lose, lossy.between = {"delete_dentry"}, another_create
    with pytest.raises(OutcomeUnknown):
        await mine.delete_dentry(7, b"f", 41, time.time_ns())


async def test_an_unlink_lost_that_never_applied_is_not_applied(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, _other = stores
    assert (await mine.insert_dentry(Dentry(7, b"f", 41, REGULAR), time.time_ns())).applied
    assert await mine.claim_dentry(7, b"f", 41, new_op_id())  # a rename has it
    lossy.lose = {"delete_dentry"}
    outcome = await mine.delete_dentry(7, b"f", 41, time.time_ns())
    assert not outcome.applied and outcome.holder is not None and outcome.holder.pending


async def test_a_rename_in_one_directory_whose_answer_was_lost_is_found_applied(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, other = stores
    now = time.time_ns()
    assert (await mine.insert_dentry(Dentry(7, b"a", 41, REGULAR), now)).applied
    assert (await mine.insert_dentry(Dentry(7, b"b", 42, REGULAR), now)).applied
    lossy.lose = {"replace_dentry"}
    source = Dentry(7, b"a", 41, REGULAR)
    assert (await mine.rename_in_dir(7, source, b"b", 42, time.time_ns())).applied
    assert lossy.lost == 1
    assert {e.name: e.ino for e in await other.list_dentries(7)} == {b"b": 41}


async def test_the_loser_of_one_source_renamed_by_two_hosts_with_its_answer_lost_is_told(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    """The cluster's EIO instead of ENOENT: two hosts rename one source in one directory;
    the loser's answer is lost.  It is told "not applied" (then ENOENT), the winner's
    rename stands."""
    lossy, mine, other = stores
    assert (await mine.insert_dentry(Dentry(7, b"a", 41, REGULAR), time.time_ns())).applied
    source = Dentry(7, b"a", 41, REGULAR)

    assert (await other.rename_in_dir(7, source, b"x", 0, time.time_ns())).applied
    lossy.lose = {"insert_dentry"}  # the loser's first send: not applied, answer lost
    assert not (await mine.rename_in_dir(7, source, b"y", 0, time.time_ns())).applied
    assert lossy.lost == 1
    assert {e.name: e.ino for e in await other.list_dentries(7)} == {b"x": 41}


async def test_a_rename_lost_then_another_change_in_the_directory_is_still_told(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, other = stores
    assert (await mine.insert_dentry(Dentry(7, b"a", 41, REGULAR), time.time_ns())).applied

    async def another_create() -> None:
        assert (await other.insert_dentry(Dentry(7, b"g", 42, REGULAR), time.time_ns())).applied

    lossy.lose, lossy.between = {"insert_dentry"}, another_create
    source = Dentry(7, b"a", 41, REGULAR)
    assert (await mine.rename_in_dir(7, source, b"b", 0, time.time_ns())).applied
    assert lossy.lost == 1


async def test_claims_seals_markers_and_intents_lost_are_settled(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, other = stores
    now = time.time_ns()
    intent = await renamed_over(mine, 41)
    lossy.lose = {"delete_claimed"}
    assert await mine.delete_claimed(ROOT_INO, b"src", intent.id, now) is False  # gone
    assert await other.get_dentry(ROOT_INO, b"src") is None
    lossy.lose = {"delete_intent_lwt"}
    await mine.delete_intent(intent)
    lossy.lose = {"delete_marker"}
    await mine.clear_move_marker(50, intent.id)
    assert await other.list_intents(intent.bucket) == []
    assert await other.move_marker(50, intent.id) == 0
    assert lossy.lost == 3

    claim = new_op_id()
    assert (await mine.insert_dentry(Dentry(7, b"c", 43, REGULAR), now)).applied
    assert await mine.claim_dentry(7, b"c", 43, claim)
    lossy.lose = {"release_claim"}
    assert await mine.release_claim(7, b"c", claim) is False  # released by the lost send
    assert (await other.get_dentry(7, b"c")).pending == b""  # type: ignore[union-attr]

    seal = new_op_id()
    assert await mine.seal_dir(8, seal) is None
    lossy.lose = {"unseal_dir"}
    assert await mine.unseal_dir(8, seal) is True
    assert await other.dir_sealed(8) == b""

    lossy.lose = {"put_marker"}
    fenced = Intent(new_op_id(), 7, b"x", 9, b"y", 44, REGULAR, 0, now)
    assert await mine.fence_move(fenced) == FENCED
    assert await other.fence_move(fenced) == FENCED
    assert lossy.lost == 6


async def test_a_move_marker_set_before_a_lost_fence_still_says_moved(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, _other = stores
    intent = await renamed_over(mine, 41)
    lossy.lose = {"put_marker"}
    assert await mine.fence_move(intent) == MOVED


async def test_a_directory_moved_and_leases_released_with_lost_answers(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, other = stores
    await mine.create_inode(a_file(45).evolve(kind=DIRECTORY, parent=7))
    lossy.lose = {"move_parent"}
    assert await mine.move_parent(45, 9, 7) is True
    assert (await other.get_inode(45)).parent == 9  # type: ignore[union-attr]
    assert await other.move_parent(45, 9, 7) is False  # done already: not twice
    holder = new_op_id()
    assert await mine.acquire_lock("rename", holder, 30)
    lossy.lose = {"release_lock"}
    assert await mine.release_lock("rename", holder) is False  # given back by the lost send
    assert await other.acquire_lock("rename", new_op_id(), 30)
    assert lossy.lost == 2


# -- link counts, purge, root -------------------------------------------------------------


async def test_a_lost_decrement_counts_once(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, other = stores
    await mine.create_inode(a_file(41, nlink=2))
    lossy.lose = {"swap_nlink"}
    counted = await uncount_link(mine, 41, time.time_ns())
    assert counted is not None and counted.nlink == 1 and lossy.lost == 1
    assert (await other.get_inode(41)).nlink == 1  # type: ignore[union-attr]


async def test_a_decrement_from_a_cached_inode_reads_nothing_and_a_stale_one_still_counts_right(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    """uncount_link(known=...), as a rename over a cached file does: the compare-and-set
    expects the cached nlink, with no read first; a stale one costs a second try."""
    lossy, mine, other = stores
    await mine.create_inode(a_file(41, nlink=3))
    lossy.lose = {"get_inode"}  # a read of the row would fail this
    counted = await uncount_link(mine, 41, time.time_ns(), a_file(41, nlink=3))
    assert counted is not None and counted.nlink == 2 and lossy.lost == 0
    lossy.lose = set()
    # another host's unlink since the inode was cached: it still says 3
    counted = await uncount_link(mine, 41, time.time_ns(), a_file(41, nlink=3))
    assert counted is not None and counted.nlink == 1
    # a cached inode without names is not trusted: the row says 1
    counted = await uncount_link(mine, 41, time.time_ns(), a_file(41, nlink=0))
    assert counted is not None and counted.nlink == 0
    assert (await other.get_inode(41)).nlink == 0  # type: ignore[union-attr]


async def test_a_lost_increment_counts_once(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, other = stores
    await mine.create_inode(a_file(41, nlink=1))
    lossy.lose = {"swap_nlink"}
    assert await mine.swap_nlink(41, 2, 1, time.time_ns()) is None
    assert (await other.get_inode(41)).nlink == 2  # type: ignore[union-attr]


async def test_a_lost_decrement_after_another_host_changed_the_count_counts_as_done(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    """Not told apart (the other change wrote its own ctime): a decrement counts as
    applied, so the count ends one too high at worst, never too low."""
    lossy, mine, other = stores
    await mine.create_inode(a_file(41, nlink=3))

    async def another_unlink() -> None:
        assert await other.swap_nlink(41, 1, 2, time.time_ns()) is None

    lossy.lose, lossy.between = {"swap_nlink"}, another_unlink
    assert await mine.swap_nlink(41, 2, 3, time.time_ns()) is None
    assert (await other.get_inode(41)).nlink == 1  # type: ignore[union-attr]


async def test_a_lost_purge_is_not_counted_twice_and_the_root_is_made_once(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, other = stores
    await mine.create_inode(a_file(46, nlink=0))
    lossy.lose = {"delete_unlinked"}
    assert await mine.delete_unlinked(46) is False  # gone, by whom unknown: not counted
    assert await other.get_inode(46) is None
    root = a_file(ROOT_INO).evolve(kind=DIRECTORY)
    lossy.lose = {"put_root"}
    assert await mine.create_root(root) is True
    assert await other.create_root(root) is False
    assert lossy.lost == 2


async def test_extended_attributes_with_lost_answers(
    stores: tuple[Lossy, TenantStore, TenantStore],
) -> None:
    lossy, mine, other = stores
    lossy.lose = {"create_xattr"}
    assert await mine.create_xattr(41, b"user.a", b"one") is None
    assert await other.create_xattr(41, b"user.a", b"two") == b"one"
    lossy.lose = {"replace_xattr"}
    assert await mine.replace_xattr(41, b"user.a", b"three") is True
    lossy.lose = {"remove_xattr"}
    assert await mine.remove_xattr(41, b"user.a") is True
    assert await other.list_xattrs(41) == {}
    assert await mine.remove_xattr(41, b"user.a") is False  # nothing lost: not there
    assert lossy.lost == 3
