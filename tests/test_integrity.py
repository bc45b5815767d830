"""Integrity across hosts: two daemons on one tenant racing over names and versions.

Each race starts both sides together (a trio nursery; both requests are sent before
either answer comes back) and is repeated, counting outcomes: a defect that shows
in one run of three shows here.  The real node, real daemons, no fakes.
"""

from __future__ import annotations

import errno
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio

from cached import lease as lease_module
from cached import protocol
from cached.client import DaemonClient, socket_path
from cached.errors import CassfsError, Exists, NotEmpty, NotFound
from cached.lease import LEASE_TTL, RENAME_LEASE, RenameLease
from cached.model import DIRECTORY, ROOT_INO, Dentry
from cached.ops_metadata import PREFETCH_LIMIT
from cached.recovery import GRACE_NS
from cached.store import ContactPoints, Intent, Store, TenantStore, new_op_id
from tests.conftest import KEYSPACE, Daemon
from tests.test_daemon import chunk_rows, make_file, session
from tests.test_xattr import cql

pytestmark = pytest.mark.cassandra

ROUNDS = 12


async def both(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` concurrently; each result, or the CassfsError it raised."""
    results: list[Any] = [None] * len(calls)

    async def one(index: int) -> None:
        try:
            results[index] = await calls[index]()
        except CassfsError as exc:
            results[index] = exc

    async with trio.open_nursery() as nursery:
        for index in range(len(calls)):
            nursery.start_soon(one, index)
    return results


async def names(client: DaemonClient, ino: int) -> dict[bytes, int]:
    """``{name: ino}`` of directory ``ino`` as the daemon lists it (its cache, within the TTL)."""
    return {name: inode["ino"] for name, inode in await client.call("readdir", ino=ino)}


@pytest.fixture
async def truth(cassandra: str, tenant: tuple[int, str]) -> AsyncIterator[TenantStore]:
    """The tenant's rows in Cassandra, read directly: what every host will see."""
    store = await Store.connect(ContactPoints.parse(cassandra), KEYSPACE)
    try:
        yield store.tenant(*tenant)
    finally:
        await store.close()


async def listed(ts: TenantStore, ino: int) -> dict[bytes, int]:
    """``{name: ino}`` of directory ``ino`` in Cassandra."""
    return {entry.name: entry.ino for entry in await ts.list_dentries(ino)}


def rename(client: DaemonClient, op: bytes, on: bytes, np: int = ROOT_INO, p: int = ROOT_INO):  # type: ignore[no-untyped-def]
    return lambda: client.call(
        "rename", old_parent=p, old_name=op, new_parent=np, new_name=on, flags=0
    )


async def test_one_source_renamed_by_two_hosts_ends_under_one_name(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], truth: TenantStore
) -> None:
    """rename(src, x) on A and rename(src, y) on B: one wins, the other gets ENOENT."""
    host_a, host_b = start_daemon("a", cache_ttl=0.2), start_daemon("b", cache_ttl=0.2)
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        other = await a.call("mkdir", parent=ROOT_INO, name=b"other", mode=0o755, uid=0, gid=0)
        for round_ in range(ROUNDS):
            src = f"src{round_}".encode()
            made = await make_file(a, ROOT_INO, src, b"payload %d" % round_)
            # same directory on even rounds, across directories on odd ones
            y_parent = ROOT_INO if round_ % 2 == 0 else other["ino"]
            x, y = f"x{round_}".encode(), f"y{round_}".encode()
            results = await both(rename(a, src, x), rename(b, src, y, y_parent))
            wins = [r for r in results if not isinstance(r, CassfsError)]
            losses = [r for r in results if isinstance(r, CassfsError)]
            assert len(wins) == 1, results
            assert [e.errno for e in losses] == [errno.ENOENT], results
            here, there = await listed(truth, ROOT_INO), await listed(truth, other["ino"])
            holders = [n for n in (x,) if n in here] + [
                n for n in (y,) if n in (here if y_parent == ROOT_INO else there)
            ]
            assert len(holders) == 1, (round_, here, there, results)
            assert src not in here
            inode = await b.call("getattr", ino=made["ino"])
            assert inode["nlink"] == 1


async def test_two_sources_renamed_onto_one_target_never_eexist(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], truth: TenantStore
) -> None:
    """rename(s1, t) on A and rename(s2, t) on B: rename(2) never says EEXIST for that."""
    host_a, host_b = start_daemon("a", cache_ttl=0.2), start_daemon("b", cache_ttl=0.2)
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        other = await a.call("mkdir", parent=ROOT_INO, name=b"o", mode=0o755, uid=0, gid=0)
        for round_ in range(ROUNDS):
            s1, s2, t = (f"{p}{round_}".encode() for p in ("s1-", "s2-", "t-"))
            p2 = ROOT_INO if round_ % 2 == 0 else other["ino"]
            f1 = await make_file(a, ROOT_INO, s1, b"one")
            f2 = await make_file(a, p2, s2, b"two")
            if round_ % 4 >= 2:  # over an existing target, too
                await make_file(a, ROOT_INO, t, b"old target")
            results = await both(rename(a, s1, t), rename(b, s2, t, ROOT_INO, p2))
            assert not any(isinstance(r, CassfsError) for r in results), results
            target = (await listed(truth, ROOT_INO))[t]
            assert target in (f1["ino"], f2["ino"])
            loser = f2["ino"] if target == f1["ino"] else f1["ino"]
            assert (await truth.get_inode(loser)).nlink == 0  # type: ignore[union-attr]
            assert s1 not in await listed(truth, ROOT_INO)
            assert s2 not in await listed(truth, p2)


async def test_rmdir_and_create_on_two_hosts_never_lose_the_file(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], truth: TenantStore
) -> None:
    """rmdir(d) on A while B creates d/f: either d stays with f, or the create fails."""
    host_a, host_b = start_daemon("a", cache_ttl=60), start_daemon("b", cache_ttl=60)
    outcomes: dict[str, int] = {}
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        for round_ in range(ROUNDS * 2):
            name = f"d{round_}".encode()
            d = await a.call("mkdir", parent=ROOT_INO, name=name, mode=0o755, uid=0, gid=0)
            await b.call("getattr", ino=d["ino"])  # b caches the directory
            removed, created = await both(
                lambda: a.call("rmdir", parent=ROOT_INO, name=name),  # noqa: B023
                lambda: b.call("create", parent=d["ino"], name=b"f", mode=0o644, uid=0, gid=0),  # noqa: B023
            )
            listing = await listed(truth, ROOT_INO)
            if isinstance(removed, CassfsError):
                assert isinstance(removed, NotEmpty), removed
                assert not isinstance(created, CassfsError)
                assert listing[name] == d["ino"]
                assert b"f" in await listed(truth, d["ino"])
                outcomes["create first"] = outcomes.get("create first", 0) + 1
            else:
                assert isinstance(created, NotFound), created
                assert name not in listing
                outcomes["rmdir first"] = outcomes.get("rmdir first", 0) + 1
            # a host holding the removed directory cannot create in it later either
            if name not in listing:
                with pytest.raises(NotFound):
                    await b.call("mkdir", parent=d["ino"], name=b"late", mode=0o755, uid=0, gid=0)
    assert sum(outcomes.values()) == ROUNDS * 2


async def test_a_create_in_a_directory_removed_elsewhere_leaves_no_row_of_it(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], cassandra: str
) -> None:
    """B, not following the feed, creates in a directory A removed and purged: ENOENT,
    and the create's touch of the directory (sent with the new inode, before the name)
    leaves no fragment of the directory's row behind."""
    host_a = start_daemon("a", cache_ttl=60)
    host_b = start_daemon("b", 60.0, "2G", "--feed-poll", "0")
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        for round_ in range(3):
            name = f"gone{round_}".encode()
            d = await a.call("mkdir", parent=ROOT_INO, name=name, mode=0o755, uid=0, gid=0)
            await b.call("getattr", ino=d["ino"])  # b caches the directory, and keeps it
            await a.call("rmdir", parent=ROOT_INO, name=name)
            assert await a.call("purge_inode", ino=d["ino"]) is True
            for call in ("create", "mkdir"):
                with pytest.raises(NotFound):
                    await b.call(call, parent=d["ino"], name=b"f", mode=0o644, uid=0, gid=0)
            query = (
                "SELECT ino, kind, mtime_ns FROM {ks}.inodes"
                " WHERE owner = %s AND environment = %s AND ino = %s"
            )
            with cql(cassandra) as run:
                rows = await trio.to_thread.run_sync(run, query, *tenant, d["ino"])
            assert rows == []


async def test_eexist_refreshes_what_the_host_knows_of_the_name(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """B sees ENOENT, A creates the name, B's create gets EEXIST and B's lookup then finds it."""
    host_a, host_b = start_daemon("a", cache_ttl=60), start_daemon("b", cache_ttl=60)
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        d = await a.call("mkdir", parent=ROOT_INO, name=b"ct", mode=0o755, uid=0, gid=0)
        for round_ in range(ROUNDS):
            name = f"new{round_}.php".encode()
            with pytest.raises(NotFound):
                await b.call("lookup", parent=d["ino"], name=name)  # cached listing: negative
            made = await make_file(a, d["ino"], name, b"<?php")
            with pytest.raises(Exists):
                await b.call("create", parent=d["ino"], name=name, mode=0o644, uid=0, gid=0)
            found = await b.call("lookup", parent=d["ino"], name=name)
            assert found["ino"] == made["ino"]


async def test_replacing_a_file_by_rename_never_shows_enoent_elsewhere(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """Deploy pattern: write a temp name, rename it over the live one; B always finds the name."""
    host_a, host_b = start_daemon("a", cache_ttl=0.3), start_daemon("b", cache_ttl=0.3)
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        await make_file(a, ROOT_INO, b"live.php", b"v0")
        for round_ in range(ROUNDS):
            seen = await b.call("lookup", parent=ROOT_INO, name=b"live.php")
            tmp = f".live.php.{round_}".encode()
            await make_file(a, ROOT_INO, tmp, b"v%d" % (round_ + 1))
            result = await a.call(
                "rename", old_parent=ROOT_INO, old_name=tmp, new_parent=ROOT_INO,
                new_name=b"live.php", flags=0,
            )  # fmt: skip
            assert result["replaced"] == seen["ino"]
            assert await a.call("purge_inode", ino=seen["ino"]) is True  # its host forgot it
            await trio.sleep(0.35)  # past b's TTL: b revalidates what it cached
            found = await b.call("lookup", parent=ROOT_INO, name=b"live.php")
            assert found["ino"] == result["ino"]
            assert (await b.call("open", ino=found["ino"]))["data"] == b"v%d" % (round_ + 1)


async def test_same_bytes_written_back_after_a_rewrite_stay_readable(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], tmp_path: Any
) -> None:
    """A->B on one host while the other writes A again: the file must stay readable.

    Schema version 1 keyed chunks by (ino, SHA-256): the first host's deletion of
    A's chunks, behind its flip to B, removed the chunks of the second host's
    newer A, and every read failed with EIO for good.
    """
    host_a, host_b = start_daemon("a", cache_ttl=60), start_daemon("b", cache_ttl=60)
    one, two = b"A" * 5000, b"B" * 5000
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        f = await make_file(a, ROOT_INO, b"aba", one)
        await b.call("open", ino=f["ino"])
        for _round in range(ROUNDS):
            await both(
                lambda: a.call("write", ino=f["ino"], data=two),
                lambda: b.call("write", ino=f["ino"], data=one),
            )
            await a.call("write", ino=f["ino"], data=one)
    fresh = start_daemon("fresh", cache_ttl=60)
    async with session(fresh, tenant) as c:
        assert (await c.call("open", ino=f["ino"]))["data"] == one


async def test_directories_moved_into_each_other_on_two_hosts_make_no_cycle(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], truth: TenantStore
) -> None:
    """mv p/a p/b/a on A and mv p/b p/a/b on B: one fails (EINVAL or ENOENT), no cycle."""
    host_a, host_b = start_daemon("a", cache_ttl=0.2), start_daemon("b", cache_ttl=0.2)
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        for round_ in range(ROUNDS // 2):
            p = await a.call(
                "mkdir", parent=ROOT_INO, name=f"p{round_}".encode(), mode=0o755, uid=0, gid=0
            )
            da = await a.call("mkdir", parent=p["ino"], name=b"a", mode=0o755, uid=0, gid=0)
            db = await a.call("mkdir", parent=p["ino"], name=b"b", mode=0o755, uid=0, gid=0)
            results = await both(
                rename(a, b"a", b"a", db["ino"], p["ino"]),
                rename(b, b"b", b"b", da["ino"], p["ino"]),
            )
            failures = [r for r in results if isinstance(r, CassfsError)]
            assert len(failures) == 1, results
            assert failures[0].errno in (errno.EINVAL, errno.ENOENT)
            # both directories are still reachable from p
            top = await listed(truth, p["ino"])
            assert len(top) == 1
            (inner,) = top.values()
            below = await listed(truth, inner)
            assert set(below.values()) == {da["ino"], db["ino"]} - {inner}


async def test_a_directory_move_outlasts_the_rename_lease_a_dead_holder_left(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], truth: TenantStore
) -> None:
    """A daemon killed while it held the tenant's rename lease delays other hosts'
    directory moves until the lease's row expires (``LEASE_TTL``): the move then succeeds.
    (With the lease outliving the wait, every such move failed with EIO for a minute.)"""
    host = start_daemon("a")
    async with session(host, tenant) as a:
        p = await a.call("mkdir", parent=ROOT_INO, name=b"p", mode=0o755, uid=0, gid=0)
        q = await a.call("mkdir", parent=ROOT_INO, name=b"q", mode=0o755, uid=0, gid=0)
        await a.call("mkdir", parent=p["ino"], name=b"d", mode=0o755, uid=0, gid=0)
        # the lease as a holder left it when its daemon died, just now
        assert await truth.acquire_lock(RENAME_LEASE, new_op_id(), LEASE_TTL)
        await a.call(
            "rename", old_parent=p["ino"], old_name=b"d", new_parent=q["ino"], new_name=b"d",
            flags=0,
        )  # fmt: skip
    assert set(await listed(truth, q["ino"])) == {b"d"}
    assert await listed(truth, p["ino"]) == {}


async def test_a_renewed_lease_outlives_its_ttl_and_an_abandoned_one_frees_itself(
    truth: TenantStore,
) -> None:
    """The lease's row, renewed (``renew_lock``) every 0.5 s with a TTL of 2 s, is still
    its holder's after 3.5 s, and no one else can take it; once renewals stop, another
    holder takes it within the TTL (and a second after: Cassandra's TTLs count whole
    seconds).  A renewal that rewrote the row's time alone would lose the holder cell
    when the first TTL ran out."""
    holder, other = new_op_id(), new_op_id()
    assert await truth.acquire_lock(RENAME_LEASE, holder, 2)
    for _ in range(7):
        await trio.sleep(0.5)
        assert await truth.renew_lock(RENAME_LEASE, holder, 2)
    assert not await truth.acquire_lock(RENAME_LEASE, other, 2)
    stopped = time.monotonic()
    while not await truth.acquire_lock(RENAME_LEASE, other, 2):
        assert time.monotonic() - stopped < 3.5, "the abandoned lease did not expire"
        await trio.sleep(0.05)
    assert not await truth.renew_lock(RENAME_LEASE, holder, 2)  # another's now
    assert await truth.release_lock(RENAME_LEASE, other)


async def test_a_move_holds_the_lease_past_its_ttl_and_stops_once_it_is_lost(
    truth: TenantStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """:class:`RenameLease` with a TTL of 4 s, renewed every 0.3 s, used up to 0.5 s before
    its row's expiry: the work under it runs 5 s uncancelled while no other holder can
    take the lease, and after ``release`` another takes it at once.  When the row is taken
    away (given back and taken by another, as if it had expired) 1 s into the work, a
    renewal cancels the work within 1.5 s, long before the 3.5 s the last renewal gave."""
    monkeypatch.setattr(lease_module, "LEASE_TTL", 4)
    monkeypatch.setattr(lease_module, "LEASE_RENEW", 0.3)
    monkeypatch.setattr(lease_module, "LEASE_MARGIN", 0.5)
    other = new_op_id()
    async with trio.open_nursery() as background:
        hold = trio.CancelScope()
        lease = RenameLease(truth, hold, background)
        with hold:
            await lease.take()
            await trio.sleep(5.0)
            assert not await truth.acquire_lock(RENAME_LEASE, other, 2)
        assert not hold.cancelled_caught
        await lease.release()
        assert await truth.acquire_lock(RENAME_LEASE, other, 2)
        assert await truth.release_lock(RENAME_LEASE, other)

        hold = trio.CancelScope()
        lease = RenameLease(truth, hold, background)
        with hold:
            await lease.take()
            await trio.sleep(1.0)
            assert await truth.release_lock(RENAME_LEASE, lease.holder)
            assert await truth.acquire_lock(RENAME_LEASE, other, 4)
            with trio.fail_after(1.5):
                await trio.sleep_forever()
        assert hold.cancelled_caught
        await lease.release()
        assert not await truth.acquire_lock(RENAME_LEASE, new_op_id(), 2)  # still other's
        assert await truth.release_lock(RENAME_LEASE, other)


async def test_a_rename_cut_off_by_a_dropped_connection_completes(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], truth: TenantStore
) -> None:
    """A client that sends renames and hangs up at once: every rename is all or nothing."""
    daemon = start_daemon("a", cache_ttl=60)
    async with session(daemon, tenant) as a:
        other = await a.call("mkdir", parent=ROOT_INO, name=b"o", mode=0o755, uid=0, gid=0)
        made = [await make_file(a, ROOT_INO, f"f{i}".encode(), b"x") for i in range(ROUNDS)]
        for index in range(ROUNDS):
            stream = await trio.open_unix_socket(str(socket_path(daemon.cache_dir)))
            await stream.send_all(
                protocol.pack_request(1, "hello", {"owner": tenant[0], "environment": tenant[1]})
                + protocol.pack_request(
                    2,
                    "rename",
                    {
                        "old_parent": ROOT_INO,
                        "old_name": f"f{index}".encode(),
                        "new_parent": other["ino"],
                        "new_name": f"g{index}".encode(),
                        "flags": 0,
                    },
                )
            )
            await stream.aclose()
        with trio.fail_after(30):  # the daemon finishes what it began
            while True:
                entries = await truth.list_dentries(ROOT_INO) + await truth.list_dentries(
                    other["ino"]
                )
                where = {e.ino: e for e in entries if not e.pending}
                if all(m["ino"] in where for m in made) and len(entries) == ROUNDS + 1:
                    break
                await trio.sleep(0.05)
        for index, m in enumerate(made):
            entry = where[m["ino"]]
            assert (entry.parent, entry.name) in (
                (ROOT_INO, f"f{index}".encode()),
                (other["ino"], f"g{index}".encode()),
            )
            assert (await truth.get_inode(m["ino"])).nlink == 1  # type: ignore[union-attr]


async def test_a_rename_whose_daemon_died_is_settled_by_the_next_request(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], truth: TenantStore
) -> None:
    """An intent and a claim left by a dead daemon: settled (undone, or completed) later."""
    daemon = start_daemon("a", cache_ttl=60)
    ts = truth
    async with session(daemon, tenant) as a:
        other = await a.call("mkdir", parent=ROOT_INO, name=b"o", mode=0o755, uid=0, gid=0)
        undone = await make_file(a, ROOT_INO, b"undone", b"1")
        done = await make_file(a, ROOT_INO, b"done", b"2")
        old_ns = time.time_ns() - 2 * GRACE_NS
        for f, name, set_target in ((undone, b"undone", False), (done, b"done", True)):
            intent = Intent(
                _old_uuid(old_ns), ROOT_INO, name, other["ino"], name + b"-moved",
                f["ino"], f["kind"], 0, old_ns,
            )  # fmt: skip
            await ts.put_intent(intent)
            assert await ts.claim_dentry(ROOT_INO, name, f["ino"], intent.id)
            if set_target:  # the daemon died after setting the new name
                moved = Dentry(other["ino"], name + b"-moved", f["ino"], f["kind"])
                assert (await ts.insert_dentry(moved, old_ns)).applied
        # a claimed name cannot be unlinked until its rename is settled; these settle it
        await a.call("unlink", parent=ROOT_INO, name=b"undone")
        with pytest.raises(NotFound):
            await a.call("unlink", parent=ROOT_INO, name=b"done")
        assert await names(a, other["ino"]) == {b"done-moved": done["ino"]}
        assert b"done" not in await names(a, ROOT_INO)
        # a fresh claim (a rename in progress elsewhere) is waited out, not settled
        fresh = await make_file(a, ROOT_INO, b"busy", b"3")
        fresh_intent = uuid.uuid1().bytes
        assert await ts.claim_dentry(ROOT_INO, b"busy", fresh["ino"], fresh_intent)
        unlinked: list[int] = []

        async def unlink_busy() -> None:
            unlinked.append(await a.call("unlink", parent=ROOT_INO, name=b"busy"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(unlink_busy)
            await trio.sleep(0.5)  # the unlink must still be waiting: nothing to wait on
            assert unlinked == []
            assert (await ts.get_dentry(ROOT_INO, b"busy")) is not None
            assert await ts.release_claim(ROOT_INO, b"busy", fresh_intent)  # rename undone
        assert unlinked == [fresh["ino"]]


#: Renames timed whole, then renames cut by kill -9, at moments in one of KILL_SLICES
#: slices of the (median) time a whole rename took.
ROUNDS_TIMED, KILL_ROUNDS, KILL_SLICES = 3, 48, 12


async def test_a_rename_cut_by_kill_9_leaves_one_name_and_no_eio(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], truth: TenantStore
) -> None:
    """kill -9 of the daemon doing a cross-directory rename, at moments spread over the
    rename, until some kills cut it between its name steps: a fresh host then lists the
    file under one name, never two (the race harness found ``d0/n5`` and ``d2/n4`` still
    both listed after the grace period), and removes that name at once or within
    seconds, never EIO (it waited 10 s on a dead rename's claim, then failed, for the
    claim's whole grace period)."""
    checker = start_daemon("check", cache_ttl=60)
    cuts: Counter[str] = Counter()
    async with session(checker, tenant) as c:
        src = (await c.call("mkdir", parent=ROOT_INO, name=b"s", mode=0o755, uid=0, gid=0))["ino"]
        dst = (await c.call("mkdir", parent=ROOT_INO, name=b"t", mode=0o755, uid=0, gid=0))["ino"]
        timed: list[float] = []  # how long whole renames take on a warm daemon here
        for round_ in range(ROUNDS_TIMED + KILL_ROUNDS):
            name = b"f%d" % round_
            f = await make_file(c, src, name, b"x")
            mover = start_daemon(f"a{round_}", cache_ttl=60)
            async with session(mover, tenant) as a:
                await a.call("getattr", ino=src)
                await a.call("getattr", ino=dst)
                with pytest.raises(NotFound):  # a negative lookup: the listing cached
                    await a.call("lookup", parent=dst, name=b"warm")
                if round_ < ROUNDS_TIMED:
                    started = trio.current_time()
                    await rename(a, name, name, dst, src)()
                    timed.append(trio.current_time() - started)
                else:
                    # moments spread evenly over the rename's time, each in its own slice
                    # (a uniform draw could miss the steps' short middle for 39 rounds)
                    took = sorted(timed)[len(timed) // 2]
                    slice_ = (round_ - ROUNDS_TIMED) % KILL_SLICES
                    at = took * (slice_ + random.random()) / KILL_SLICES
                    with trio.move_on_after(at):
                        await rename(a, name, name, dst, src)()
                    mover.process.kill()  # SIGKILL, the rename cut wherever it was
                    await trio.to_thread.run_sync(mover.process.wait)
            if round_ < ROUNDS_TIMED:
                continue
            old = await truth.get_dentry(src, name)
            new = await truth.get_dentry(dst, name)
            cut = old is not None and old.pending
            if cut:
                cuts["new name set" if new is not None else "source claimed"] += 1
            # what a fresh host sees: the new directory listed first, then the old one
            await trio.to_thread.run_sync(checker.call, "purge")
            for _attempt in range(3):
                there, here = await names(c, dst), await names(c, src)
                holders = [n for n, ino in (*there.items(), *here.items()) if ino == f["ino"]]
                if holders:
                    break
                # the rename's last statement landed between the two listings
                await trio.to_thread.run_sync(checker.call, "purge")
            assert len(holders) == 1, (round_, cut, old, new, there, here)
            where = dst if name in there and there[name] == f["ino"] else src
            await c.call("unlink", parent=where, name=name)  # no EIO on a dead rename's claim
            assert f["ino"] not in (await listed(truth, src)).values()
            assert f["ino"] not in (await listed(truth, dst)).values()
            if cuts["new name set"] and cuts["source claimed"]:
                break
    assert sum(cuts.values()) > 0, f"no kill cut a rename between its steps in {round_} rounds"


async def test_a_name_claimed_by_a_dead_rename_is_removed_within_seconds(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], truth: TenantStore
) -> None:
    """A directory name claimed by a cross-directory rename whose daemon died before it set
    the new name: another host's rmdir succeeds once the claim is seconds old (it waited
    10 s, then failed with EIO, until the claim's 60 s grace ended), and the dead rename can
    never set its new name afterwards (its statement still in flight, say)."""
    daemon = start_daemon("a", cache_ttl=60)
    async with session(daemon, tenant) as a:
        other = await a.call("mkdir", parent=ROOT_INO, name=b"o", mode=0o755, uid=0, gid=0)
        d = await a.call("mkdir", parent=ROOT_INO, name=b"d", mode=0o755, uid=0, gid=0)
        started_ns = time.time_ns()
        intent = Intent(
            new_op_id(), ROOT_INO, b"d", other["ino"], b"d", d["ino"], DIRECTORY, 0, started_ns
        )
        await truth.put_intent(intent)  # what the dead daemon did: intent, claim, no more
        assert await truth.claim_dentry(ROOT_INO, b"d", d["ino"], intent.id)
        assert await a.call("rmdir", parent=ROOT_INO, name=b"d") == d["ino"]
        assert await listed(truth, ROOT_INO) == {b"o": other["ino"]}
        assert await truth.get_intent(intent.id) is None
        late = Dentry(other["ino"], b"d", d["ino"], DIRECTORY)
        assert not (await truth.insert_dentry(late, started_ns, move=intent.id)).applied
        assert await listed(truth, other["ino"]) == {}


async def test_a_rename_over_a_file_finished_by_a_listing_purges_the_replaced_file(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], truth: TenantStore
) -> None:
    """A cross-directory rename over a file, cut after it set its new name: the host whose
    listing finishes it shows one name, counts the replaced file's last name off and
    deletes that file (the purge delay is 0 here), which the dead daemon's front would
    have asked for; it stayed behind, nlink 0, for fsck."""
    daemon = start_daemon("a", cache_ttl=60)
    async with session(daemon, tenant) as a:
        other = await a.call("mkdir", parent=ROOT_INO, name=b"o", mode=0o755, uid=0, gid=0)
        target = await make_file(a, other["ino"], b"t", b"old")
        mover = await make_file(a, ROOT_INO, b"m", b"new")
        started_ns = time.time_ns()
        intent = Intent(
            new_op_id(), ROOT_INO, b"m", other["ino"], b"t", mover["ino"], mover["kind"],
            target["ino"], started_ns,
        )  # fmt: skip
        await truth.put_intent(intent)  # the dead daemon's steps, up to the new name
        assert await truth.claim_dentry(ROOT_INO, b"m", mover["ino"], intent.id)
        moved = Dentry(other["ino"], b"t", mover["ino"], mover["kind"])
        assert (await truth.replace_dentry(moved, target["ino"], started_ns, intent.id)).applied
    lister = start_daemon("b", cache_ttl=60)
    async with session(lister, tenant) as b:
        assert await names(b, ROOT_INO) == {b"o": other["ino"]}
        assert await names(b, other["ino"]) == {b"t": mover["ino"]}
    assert await truth.get_intent(intent.id) is None
    with trio.fail_after(30):  # the reaper deletes it in the background
        while True:
            if await truth.get_inode(target["ino"]) is None:
                break
            await trio.sleep(0.05)
    assert (await truth.get_inode(mover["ino"])).nlink == 1  # type: ignore[union-attr]


async def test_a_directory_sealed_by_a_dead_rmdir_opens_again_after_the_grace(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], truth: TenantStore
) -> None:
    daemon = start_daemon("a", cache_ttl=60)
    ts = truth
    async with session(daemon, tenant) as a:
        d = await a.call("mkdir", parent=ROOT_INO, name=b"d", mode=0o755, uid=0, gid=0)
        assert d["kind"] == DIRECTORY
        assert await ts.seal_dir(d["ino"], _old_uuid(time.time_ns() - 2 * GRACE_NS)) is None
        await make_file(a, d["ino"], b"f", b"lands")
        assert b"f" in await names(a, d["ino"])
        e = await a.call("mkdir", parent=ROOT_INO, name=b"e", mode=0o755, uid=0, gid=0)
        assert await ts.seal_dir(e["ino"], uuid.uuid1().bytes) is None  # rmdir in progress
        with pytest.raises(NotFound):
            await a.call("create", parent=e["ino"], name=b"f", mode=0o644, uid=0, gid=0)


def _old_uuid(at_ns: int) -> bytes:
    """A version-1 UUID made at ``at_ns`` (nanoseconds since the epoch)."""
    ticks = at_ns // 100 + 0x01B21DD213814000
    node, seq = uuid.getnode(), 0x1234
    return uuid.UUID(
        fields=(ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF, ((ticks >> 48) & 0x0FFF) | 0x1000,
                0x80 | (seq >> 8) & 0x3F, seq & 0xFF, node),
    ).bytes  # fmt: skip


async def test_chmod_and_chown_on_two_hosts_both_stay(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], truth: TenantStore
) -> None:
    """setattr writes only what it changes: no host undoes another's attribute."""
    host_a, host_b = start_daemon("a", cache_ttl=60), start_daemon("b", cache_ttl=60)
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        for round_ in range(ROUNDS):
            f = await make_file(a, ROOT_INO, f"attrs{round_}".encode(), b"x")
            await b.call("getattr", ino=f["ino"])  # b caches the old attributes
            await both(
                lambda: a.call("setattr", ino=f["ino"], mode=0o600),  # noqa: B023
                lambda: b.call("setattr", ino=f["ino"], uid=1000 + round_),  # noqa: B023
            )
            inode = await truth.get_inode(f["ino"])
            assert inode is not None
            assert (inode.mode & 0o7777, inode.uid) == (0o600, 1000 + round_)


async def test_a_temp_file_renamed_over_a_name_is_not_read_as_its_earlier_self(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """B cached the temp file while it was empty; after the rename B must read the content.

    B's listing is older than B's copy of the temp inode, so the listing expires first and
    names the inode B still holds as fresh, from before it was written.
    """
    host_a, host_b = start_daemon("a", cache_ttl=1.0), start_daemon("b", cache_ttl=1.0)
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        await make_file(a, ROOT_INO, b"live.php", b"old")
        tmp = await a.call("create", parent=ROOT_INO, name=b".tmp", mode=0o644, uid=0, gid=0)
        assert (await b.call("lookup", parent=ROOT_INO, name=b".tmp"))["size"] == 0
        await trio.sleep(1.1)  # past B's TTL for both; B rereads only the inode
        assert (await b.call("getattr", ino=tmp["ino"]))["size"] == 0
        await a.call("write", ino=tmp["ino"], data=b"new content")
        await a.call(
            "rename", old_parent=ROOT_INO, old_name=b".tmp", new_parent=ROOT_INO,
            new_name=b"live.php", flags=0,
        )  # fmt: skip
        found = await b.call("lookup", parent=ROOT_INO, name=b"live.php")
        assert (found["ino"], found["size"]) == (tmp["ino"], 11)
        assert (await b.call("open", ino=found["ino"]))["data"] == b"new content"


async def test_a_name_rebound_to_a_temp_file_cached_empty_reads_the_content(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    """B's fresh listing names the replaced inode, already purged: B asks Cassandra again.

    The name now leads to the temp file, which B cached empty a moment before the
    writer filled it: B must reread it, not serve it from its cache (the race
    harness's ``empty-read``).  Over :data:`PREFETCH_LIMIT` entries, so listing the
    directory caches no inode behind the test's back.
    """
    host_a, host_b = start_daemon("a", cache_ttl=60), start_daemon("b", cache_ttl=2.0)
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        d = await a.call("mkdir", parent=ROOT_INO, name=b"big", mode=0o755, uid=0, gid=0)
        limiter = trio.CapacityLimiter(16)

        async def filler(index: int) -> None:
            async with limiter:
                name = b"fill%04d" % index
                await a.call("create", parent=d["ino"], name=name, mode=0o644, uid=0, gid=0)

        async with trio.open_nursery() as nursery:
            for index in range(PREFETCH_LIMIT + 8):
                nursery.start_soon(filler, index)
        old = await make_file(a, d["ino"], b"live.php", b"old")
        tmp = await a.call("create", parent=d["ino"], name=b".tmp", mode=0o644, uid=0, gid=0)
        assert (await b.call("lookup", parent=d["ino"], name=b".tmp"))["size"] == 0
        await trio.sleep(2.1)  # past B's TTL: its listing and its copy of .tmp expire
        assert (await b.call("getattr", ino=tmp["ino"]))["size"] == 0  # .tmp fresh again
        with pytest.raises(NotFound):
            await b.call("lookup", parent=d["ino"], name=b"absent")  # the listing fresh again
        await a.call("write", ino=tmp["ino"], data=b"new content")
        await a.call(
            "rename", old_parent=d["ino"], old_name=b".tmp", new_parent=d["ino"],
            new_name=b"live.php", flags=0,
        )  # fmt: skip
        assert await a.call("purge_inode", ino=old["ino"]) is True
        found = await b.call("lookup", parent=d["ino"], name=b"live.php")
        assert (found["ino"], found["size"]) == (tmp["ino"], 11)


async def test_other_hosts_read_replaced_and_unlinked_files_whole_for_the_purge_delay(
    start_daemon: Callable[..., Daemon],
    tenant: tuple[int, str],
    truth: TenantStore,
    cassandra: str,
) -> None:
    """A deletes what it replaced or unlinked only after its purge delay, also across a restart.

    Meanwhile B, which still holds the name or the old version, reads it whole
    (deleted at once, B got ESTALE or EIO: the race harness's commonest finding).
    """
    delay = 3.0
    # Over the 64 KiB kept inline: these versions have chunks, which must wait too.
    host_a, host_b = start_daemon("a", purge_delay=delay), start_daemon("b", cache_ttl=60)
    async with session(host_a, tenant) as a, session(host_b, tenant) as b:
        gone = await make_file(a, ROOT_INO, b"gone.php", b"unlinked on A" * 6000)
        kept = await make_file(a, ROOT_INO, b"kept.php", b"first version" * 6000)
        assert (await b.call("lookup", parent=ROOT_INO, name=b"gone.php"))["ino"] == gone["ino"]
        seen = await b.call("lookup", parent=ROOT_INO, name=b"kept.php")
        assert await a.call("unlink", parent=ROOT_INO, name=b"gone.php") == gone["ino"]
        assert await a.call("purge_inode", ino=gone["ino"]) is False  # queued
        rewritten = await a.call("write", ino=kept["ino"], data=b"second version" * 6000)
        assert rewritten["content_id"] != seen["content_id"]
        # B holds the name of one, the first version of the other, neither's content
        assert (await b.call("open", ino=gone["ino"]))["data"] == b"unlinked on A" * 6000
        old = await b.call(
            "read", ino=kept["ino"], content_id=seen["content_id"], file_size=seen["size"],
            offset=0, size=seen["size"],
        )  # fmt: skip
        assert old == b"first version" * 6000
    host_a.process.terminate()  # with both deletions queued
    assert host_a.process.wait(20) == 0
    start_daemon("a", purge_delay=delay)  # carries the queue over
    deadline = time.monotonic() + delay + 30
    while (
        await truth.get_inode(gone["ino"]) is not None
        or len(await truth.list_versions(kept["ino"])) > 1
    ):
        assert time.monotonic() < deadline, "the deferred deletions did not happen"
        await trio.sleep(0.2)
    assert chunk_rows(cassandra, tenant, gone["ino"]) == []
    current = await truth.get_inode(kept["ino"])
    assert current is not None
    assert {row["version"] for row in chunk_rows(cassandra, tenant, kept["ino"])} == {
        current.version
    }


async def test_a_settled_rename_over_a_hard_link_takes_exactly_one_name(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], truth: TenantStore
) -> None:
    """A cross-directory rename that replaced one name of a file with two, whose daemon
    died after finishing but before deleting its intent: settling it again (a later
    request, or fsck) must not take a second name from the replaced file."""
    daemon = start_daemon("a", cache_ttl=60)
    ts = truth
    async with session(daemon, tenant) as a:
        other = await a.call("mkdir", parent=ROOT_INO, name=b"o", mode=0o755, uid=0, gid=0)
        kept = await make_file(a, ROOT_INO, b"kept", b"old")
        await a.call("link", ino=kept["ino"], new_parent=other["ino"], new_name=b"target")
        mover = await make_file(a, ROOT_INO, b"mover", b"new")
        old_ns = time.time_ns() - 2 * GRACE_NS
        intent = Intent(
            _old_uuid(old_ns), ROOT_INO, b"mover", other["ino"], b"target",
            mover["ino"], mover["kind"], kept["ino"], old_ns,
        )  # fmt: skip
        await ts.put_intent(intent)
        assert await ts.claim_dentry(ROOT_INO, b"mover", mover["ino"], intent.id)
        assert (await ts.replace_dentry(
            Dentry(other["ino"], b"target", mover["ino"], mover["kind"]), kept["ino"], old_ns
        )).applied  # fmt: skip
        from cached.links import uncount_link
        from cached.recovery import finish_move, settle_intent

        # the dead daemon's finish: the claimed name gone, the name counted, then it died
        assert await ts.delete_claimed(ROOT_INO, b"mover", intent.id, old_ns)
        assert await ts.take_replaced(intent)
        counted = await uncount_link(ts, kept["ino"], old_ns)
        assert counted is not None and counted.nlink == 1
        # the settler finds the intent, with nothing left to count
        found = await ts.list_intents(intent.bucket)
        assert [i.replaced for i in found] == [0]
        assert await settle_intent(ts, found[0]) == "completed"
        assert await ts.list_intents(intent.bucket) == []
        assert await finish_move(ts, intent, old_ns) is None  # stale memory: counts nothing
        assert (await ts.get_inode(kept["ino"])).nlink == 1  # type: ignore[union-attr]
        assert await names(a, ROOT_INO) == {b"kept": kept["ino"], b"o": other["ino"]}


async def test_link_and_unlink_of_one_file_on_two_hosts_keep_a_true_count(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], truth: TenantStore
) -> None:
    """Host A adds names to a file while host B removes others, all at once: the count
    in Cassandra always equals the names left, and the file survives while one is left."""
    a_daemon, b_daemon = start_daemon("a", cache_ttl=60), start_daemon("b", cache_ttl=60)
    async with session(a_daemon, tenant) as a, session(b_daemon, tenant) as b:
        f = await make_file(a, ROOT_INO, b"f0", b"content")
        for n in range(1, ROUNDS):
            await a.call("link", ino=f["ino"], new_parent=ROOT_INO, new_name=b"f%d" % n)
        for n in range(ROUNDS - 1):
            await both(
                lambda n=n: a.call("link", ino=f["ino"], new_parent=ROOT_INO, new_name=b"g%d" % n),
                lambda n=n: b.call("unlink", parent=ROOT_INO, name=b"f%d" % n),
            )
        left = await listed(ts := truth, ROOT_INO)
        assert len(left) == ROUNDS  # f11 and g0..g10
        assert (await ts.get_inode(f["ino"])).nlink == ROUNDS  # type: ignore[union-attr]
