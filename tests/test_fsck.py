"""``cassfs fsck`` against the real node: a clean tree passes; each kind of damage is found
(exit 1) and, where it can be, repaired (``--repair --grace 0``), after which fsck is clean.

Trees are written row by row through ``TenantStore`` (as the daemon writes them), then
damaged with the same statements.  The checker runs in-process for the details of each
problem, and as ``cassfs fsck`` (a subprocess) for exit statuses and the summary line.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio

from cached.content import CHUNK_SIZE, EMPTY_ID
from cached.model import (
    DIRECTORY,
    FIFO,
    REGULAR,
    ROOT_INO,
    SYMLINK,
    Dentry,
    Inode,
    mode_of_kind,
)
from cached.store import (
    ContactPoints,
    Intent,
    Store,
    TenantStore,
    Version,
    index_bucket,
    new_op_id,
)
from cassfs.fsck import AWAITED_ORPHANS, Checker, Options, Problem, Report
from tests.conftest import KEYSPACE, run_cli

pytestmark = pytest.mark.cassandra

SUMMARY = re.compile(
    r"^fsck: (\d+) inodes, (\d+) directories, (.+) checked in [\d.]+ s: (\d+) problems?"
    r"(?:, (\d+) repaired)?$"
)


def old_op_id(seconds_ago: float) -> bytes:
    """A time-based id (uuid1) made ``seconds_ago`` seconds ago."""
    ticks = (time.time_ns() - int(seconds_ago * 1e9)) // 100 + 0x01B21DD213814000
    node = uuid.getnode()
    fields = (
        ticks & 0xFFFFFFFF,
        (ticks >> 32) & 0xFFFF,
        ((ticks >> 48) & 0x0FFF) | 0x1000,
        0x80 | secrets.randbelow(0x40),
        secrets.randbelow(0x100),
        node,
    )
    return uuid.UUID(fields=fields).bytes


@dataclass
class Tree:
    """Writes a tenant's rows the way the daemon does: inode (and index) first, then its name."""

    ts: TenantStore

    @staticmethod
    def inode(kind: int, parent: int, **extra: object) -> Inode:
        now = time.time_ns()
        fields: dict[str, object] = {
            "ino": secrets.randbits(62) + 2,
            "kind": kind,
            "mode": mode_of_kind(kind, 0o755 if kind == DIRECTORY else 0o644),
            "uid": 0,
            "gid": 0,
            "size": 0,
            "atime_ns": now,
            "mtime_ns": now,
            "ctime_ns": now,
            "parent": parent,
            "nlink": 1,
            "content_id": b"",
            "chunk_size": 0,
            "target": b"",
        }
        fields.update(extra)
        return Inode(**fields)  # type: ignore[arg-type]

    async def root(self) -> Inode:
        now = time.time_ns()
        root = Inode(
            ino=ROOT_INO, kind=DIRECTORY, mode=mode_of_kind(DIRECTORY, 0o755), uid=0, gid=0,
            size=0, atime_ns=now, mtime_ns=now, ctime_ns=now, parent=ROOT_INO, nlink=1,
            content_id=b"", chunk_size=0, target=b"",
        )  # fmt: skip
        await self.ts.put_inode(root)
        return root

    async def name(self, parent: int, name: bytes, inode: Inode) -> None:
        outcome = await self.ts.insert_dentry(
            Dentry(parent, name, inode.ino, inode.kind), time.time_ns()
        )
        assert outcome.applied

    async def mkdir(self, parent: int, name: bytes) -> Inode:
        inode = self.inode(DIRECTORY, parent)
        await self.ts.create_inode(inode)
        await self.name(parent, name, inode)
        return inode

    async def write_version(self, ino: int, data: bytes, inline: bool = False) -> bytes:
        """Write a new content version of ``ino``: its versions row, then its chunks, or
        with ``inline`` the bytes in the row and no chunks (schema 6)."""
        version = new_op_id()
        await self.ts.put_version(
            Version(ino, version, hashlib.sha256(data).digest(), len(data), CHUNK_SIZE,
                    time.time_ns(), data if inline else None)
        )  # fmt: skip
        if inline:
            return version
        for index in range(0, len(data), CHUNK_SIZE):
            await self.ts.put_chunk(
                ino, version, index // CHUNK_SIZE, data[index : index + CHUNK_SIZE]
            )
        return version

    async def file(
        self, parent: int, name: bytes | None, data: bytes, inline: bool = False
    ) -> Inode:
        """A regular file holding ``data``; nameless when ``name`` is None."""
        inode = self.inode(REGULAR, parent, content_id=EMPTY_ID, chunk_size=CHUNK_SIZE)
        if data:
            version = await self.write_version(inode.ino, data, inline)
            inode = inode.evolve(
                version=version, content_id=hashlib.sha256(data).digest(), size=len(data)
            )
        await self.ts.create_inode(inode)
        if name is not None:
            await self.name(parent, name, inode)
        return inode

    async def symlink(self, parent: int, name: bytes, target: bytes) -> Inode:
        inode = self.inode(SYMLINK, parent, target=target, size=len(target))
        await self.ts.create_inode(inode)
        await self.name(parent, name, inode)
        return inode


@dataclass
class Clean:
    """The clean tree every test starts from."""

    tree: Tree
    docs: Inode
    sub: Inode
    empty: Inode
    small: Inode
    big: Inode
    link: Inode
    big_data: bytes


@pytest.fixture
async def ts(cassandra: str, tenant: tuple[int, str]) -> AsyncIterator[TenantStore]:
    store = await Store.connect(ContactPoints.parse(cassandra), KEYSPACE)
    try:
        yield store.tenant(*tenant)
    finally:
        await store.close()


@pytest.fixture
async def clean(ts: TenantStore) -> Clean:
    """/docs/sub/, /docs/empty (0 B), /docs/small (10 B), /docs/sub/big (2.5 MiB), /link."""
    tree = Tree(ts)
    await tree.root()
    docs = await tree.mkdir(ROOT_INO, b"docs")
    sub = await tree.mkdir(docs.ino, b"sub")
    empty = await tree.file(docs.ino, b"empty", b"")
    small = await tree.file(docs.ino, b"small", b"0123456789")
    big_data = secrets.token_bytes(5 * CHUNK_SIZE // 2)
    big = await tree.file(sub.ino, b"big", big_data)
    link = await tree.symlink(ROOT_INO, b"link", b"docs/small")
    return Clean(tree, docs, sub, empty, small, big, link, big_data)


async def check(ts: TenantStore, **options: object) -> Report:
    return await Checker(ts, Options(**options)).run()  # type: ignore[arg-type]


def only(report: Report, code: str) -> Problem:
    """The one problem of ``report``, which must have ``code``."""
    assert [p.code for p in report.problems] == [code], [p.line() for p in report.problems]
    return report.problems[0]


async def found_then_repaired(ts: TenantStore, code: str, ino: int) -> Problem:
    """fsck finds exactly one ``code`` problem about ``ino``; --repair --grace 0 mends it;
    fsck is clean afterwards.  Returns the repaired problem."""
    report = await check(ts)
    problem = only(report, code)
    assert problem.ino == ino
    if code in AWAITED_ORPHANS:  # young: the daemon that made it deletes it after its delay
        assert report.awaited(problem) and report.exit_status == 0
        report = await check(ts, grace=0)
        problem = only(report, code)
    assert not report.awaited(problem) and report.exit_status == 1
    repaired = await check(ts, repair=True, grace=0)
    problem = only(repaired, code)
    assert problem.repaired, problem.line()
    assert repaired.exit_status == 0
    after = await check(ts)
    assert after.problems == [], [p.line() for p in after.problems]
    return problem


def cli(cassandra: str, tenant: tuple[int, str], *args: str) -> tuple[int, list[str]]:
    result = run_cli(
        "fsck",
        "--contact-points",
        cassandra,
        "--keyspace",
        KEYSPACE,
        "--owner",
        str(tenant[0]),
        "--environment",
        tenant[1],
        *args,
        check=False,
    )
    assert result.stderr.strip() == "", result.stderr
    return result.returncode, result.stdout.splitlines()


# -- clean --------------------------------------------------------------------------------


async def test_a_clean_tree_passes(
    cassandra: str, tenant: tuple[int, str], clean: Clean, ts: TenantStore
) -> None:
    report = await check(ts)
    assert report.problems == [] and report.exit_status == 0
    assert (report.inodes, report.directories) == (7, 3)
    assert report.bytes_read == 10 + len(clean.big_data)

    status, lines = cli(cassandra, tenant)
    assert status == 0, lines
    match = SUMMARY.match(lines[-1])
    assert match, lines
    assert match.group(1, 2, 3, 4) == ("7", "3", "2.6 MB", "0")
    assert len(lines) == 1  # not a terminal: no progress, no problem lines


async def test_an_empty_tenant_has_no_root(cassandra: str, tenant: tuple[int, str]) -> None:
    status, lines = cli(cassandra, tenant)
    assert status == 1
    assert lines[0].startswith("no root directory: / (ino 1)")


async def test_cli_dangling_name_found_repaired_then_clean(
    cassandra: str, tenant: tuple[int, str], clean: Clean, ts: TenantStore
) -> None:
    ghost = secrets.randbits(62) + 2
    await ts.insert_dentry(Dentry(clean.docs.ino, b"ghost", ghost, REGULAR), time.time_ns())

    status, lines = cli(cassandra, tenant)
    assert status == 1
    assert lines[0] == f"name of a missing inode: /docs/ghost (ino {ghost}): names no inode"
    assert SUMMARY.match(lines[-1]) and lines[-1].endswith(": 1 problem")

    status, lines = cli(cassandra, tenant, "--repair", "--grace", "0", "--no-content")
    assert status == 0, lines
    assert lines[0].endswith("[name removed]")
    assert "directories, content skipped in " in lines[-1]
    assert lines[-1].endswith(": 1 problem, 1 repaired")
    assert await ts.get_dentry(clean.docs.ino, b"ghost") is None

    status, lines = cli(cassandra, tenant)
    assert (status, len(lines)) == (0, 1), lines


# -- names and links ----------------------------------------------------------------------


async def test_dangling_name(clean: Clean, ts: TenantStore) -> None:
    ghost = secrets.randbits(62) + 2
    await ts.insert_dentry(Dentry(ROOT_INO, b"ghost", ghost, REGULAR), time.time_ns())
    problem = await found_then_repaired(ts, "dangling-name", ghost)
    assert problem.where == "/ghost"
    assert await ts.get_dentry(ROOT_INO, b"ghost") is None


async def test_wrong_nlink(clean: Clean, ts: TenantStore) -> None:
    await ts.set_link(clean.small.evolve(nlink=3))
    problem = await found_then_repaired(ts, "links", clean.small.ino)
    assert problem.detail == "nlink 3, 1 name"
    assert (await ts.get_inode(clean.small.ino)).nlink == 1  # type: ignore[union-attr]


async def test_hard_links_and_special_files_are_clean_and_counted(
    clean: Clean, ts: TenantStore
) -> None:
    """A file with three names (nlink 3) and a FIFO are a clean tree; a count one too high,
    the state a link that died before writing its name leaves, is found and mended."""
    now = time.time_ns()
    for parent, name in ((ROOT_INO, b"small-again"), (clean.sub.ino, b"small-3")):
        await ts.insert_dentry(Dentry(parent, name, clean.small.ino, REGULAR), now)
    await ts.set_link(clean.small.evolve(nlink=3))
    fifo = clean.tree.inode(FIFO, ROOT_INO)
    await ts.create_inode(fifo)
    await clean.tree.name(ROOT_INO, b"fifo", fifo)
    report = await check(ts)
    assert report.problems == [], [p.line() for p in report.problems]
    await ts.set_link(clean.small.evolve(nlink=4))
    problem = await found_then_repaired(ts, "links", clean.small.ino)
    assert problem.detail == "nlink 4, 3 names"
    assert (await ts.get_inode(clean.small.ino)).nlink == 3  # type: ignore[union-attr]


async def test_wrong_parent_of_a_directory(clean: Clean, ts: TenantStore) -> None:
    await ts.set_link(clean.sub.evolve(parent=ROOT_INO))
    problem = await found_then_repaired(ts, "links", clean.sub.ino)
    assert problem.where == "/docs/sub"
    assert (await ts.get_inode(clean.sub.ino)).parent == clean.docs.ino  # type: ignore[union-attr]


async def test_a_directory_with_two_names(clean: Clean, ts: TenantStore) -> None:
    await clean.tree.name(ROOT_INO, b"again", clean.sub)  # two parents: / and /docs
    problem = await found_then_repaired(ts, "several-names", clean.sub.ino)
    assert "kept /docs/sub, removed /again" in problem.outcome
    assert await ts.get_dentry(ROOT_INO, b"again") is None


async def test_a_directory_cycle_cut_off_from_the_root(clean: Clean, ts: TenantStore) -> None:
    tree = clean.tree
    a = tree.inode(DIRECTORY, 0)
    b = tree.inode(DIRECTORY, a.ino)
    a = a.evolve(parent=b.ino)
    await ts.create_inode(a)
    await ts.create_inode(b)
    await tree.name(a.ino, b"b", b)
    await tree.name(b.ino, b"a", a)
    inside = await tree.file(b.ino, b"inside.php", b"<?php echo 1;")
    anchor = min(a.ino, b.ino)

    problem = await found_then_repaired(ts, "cut-off", anchor)
    assert "3 inodes" in problem.detail
    assert problem.outcome == f"reconnected as /lost+found/#{anchor}"
    home = await ts.get_dentry(ROOT_INO, b"lost+found")
    assert home is not None and home.kind == DIRECTORY
    moved = await ts.get_dentry(home.ino, b"#%d" % anchor)
    assert moved is not None and moved.ino == anchor
    assert (await ts.get_inode(inside.ino)) is not None


async def test_a_stale_seal(clean: Clean, ts: TenantStore) -> None:
    assert await ts.seal_dir(clean.sub.ino, new_op_id()) is None
    problem = await found_then_repaired(ts, "stale-seal", clean.sub.ino)
    assert problem.where == "/docs/sub"
    assert await ts.dir_sealed(clean.sub.ino) == b""


async def test_a_claim_whose_intent_is_gone(clean: Clean, ts: TenantStore) -> None:
    claim = new_op_id()
    assert await ts.claim_dentry(clean.docs.ino, b"small", clean.small.ino, claim)
    problem = await found_then_repaired(ts, "claim", clean.small.ino)
    assert problem.where == "/docs/small"
    entry = await ts.get_dentry(clean.docs.ino, b"small")
    assert entry is not None and entry.pending == b""


async def test_a_claim_with_its_intent_is_settled(clean: Clean, ts: TenantStore) -> None:
    """A cross-directory rename that died after its claim: undone (the new name was never
    set), through ``cached.recovery.settle_intent``."""
    intent = Intent(
        id=new_op_id(), old_parent=clean.docs.ino, old_name=b"small", new_parent=clean.sub.ino,
        new_name=b"moved", ino=clean.small.ino, kind=REGULAR, replaced=0,
        started_ns=time.time_ns(),
    )  # fmt: skip
    await ts.put_intent(intent)
    assert await ts.claim_dentry(clean.docs.ino, b"small", clean.small.ino, intent.id)
    problem = await found_then_repaired(ts, "intent", clean.small.ino)
    assert problem.outcome == "rename undone"
    assert await ts.get_intent(intent.id) is None
    entry = await ts.get_dentry(clean.docs.ino, b"small")
    assert entry is not None and entry.pending == b""


async def test_a_rename_that_set_its_new_name_is_completed(clean: Clean, ts: TenantStore) -> None:
    intent = Intent(
        id=new_op_id(), old_parent=clean.docs.ino, old_name=b"small", new_parent=clean.sub.ino,
        new_name=b"moved", ino=clean.small.ino, kind=REGULAR, replaced=0,
        started_ns=time.time_ns(),
    )  # fmt: skip
    await ts.put_intent(intent)
    assert await ts.claim_dentry(clean.docs.ino, b"small", clean.small.ino, intent.id)
    await clean.tree.name(clean.sub.ino, b"moved", clean.small)
    problem = await found_then_repaired(ts, "intent", clean.small.ino)
    assert problem.outcome == "rename completed"
    assert await ts.get_dentry(clean.docs.ino, b"small") is None
    assert (await ts.get_dentry(clean.sub.ino, b"moved")) is not None


async def test_a_directory_that_is_its_own_ancestor(clean: Clean, ts: TenantStore) -> None:
    """/docs/sub/loop names /docs: reached twice from the root, kept in its parent."""
    await clean.tree.name(clean.sub.ino, b"loop", clean.docs)
    problem = await found_then_repaired(ts, "several-names", clean.docs.ino)
    assert problem.outcome == "kept /docs, removed /docs/sub/loop"


async def test_a_name_of_the_root(clean: Clean, ts: TenantStore) -> None:
    root = await ts.get_inode(ROOT_INO)
    assert root is not None
    await clean.tree.name(clean.docs.ino, b"up", root)
    problem = await found_then_repaired(ts, "names-root", ROOT_INO)
    assert problem.where == "/docs/up"


async def test_a_name_with_the_wrong_type(clean: Clean, ts: TenantStore) -> None:
    outcome = await ts.replace_dentry(
        Dentry(clean.docs.ino, b"small", clean.small.ino, SYMLINK), clean.small.ino, time.time_ns()
    )
    assert outcome.applied
    problem = await found_then_repaired(ts, "kind-mismatch", clean.small.ino)
    assert problem.detail == "the name says symlink, the inode is a file"
    entry = await ts.get_dentry(clean.docs.ino, b"small")
    assert entry is not None and entry.kind == REGULAR


async def test_a_missing_directory_inode_that_holds_entries_is_recreated(
    clean: Clean, ts: TenantStore
) -> None:
    lost = clean.tree.inode(DIRECTORY, ROOT_INO)
    await clean.tree.name(ROOT_INO, b"lost", lost)  # a name, a partition, no inode
    inside = await clean.tree.file(lost.ino, b"index.php", b"<?php")
    problem = await found_then_repaired(ts, "dangling-name", lost.ino)
    assert problem.detail == "names no inode; that directory still holds 1 entries"
    assert problem.outcome.startswith("directory inode recreated")
    again = await ts.get_inode(lost.ino)
    assert again is not None and again.kind == DIRECTORY and again.parent == ROOT_INO
    assert await ts.get_inode(inside.ino) is not None


async def test_an_inode_missing_from_the_index(clean: Clean, ts: TenantStore) -> None:
    legacy = clean.tree.inode(REGULAR, clean.docs.ino, content_id=EMPTY_ID)
    await ts.put_inode(legacy)  # as schema version 1 wrote inodes: no index row
    await clean.tree.name(clean.docs.ino, b"legacy", legacy)
    problem = await found_then_repaired(ts, "unindexed", legacy.ino)
    assert problem.where == "/docs/legacy"
    assert legacy.ino in {i for i, _, _ in await ts.list_index(index_bucket(legacy.ino))}


# -- orphans ------------------------------------------------------------------------------


async def content_gone(ts: TenantStore, inode: Inode) -> bool:
    return (
        await ts.get_chunk(inode.ino, inode.version, 0) is None
        and await ts.list_versions(inode.ino) == []
        and inode.ino not in {i for i, _, _ in await ts.list_index(index_bucket(inode.ino))}
    )


async def test_a_nameless_inode(clean: Clean, ts: TenantStore) -> None:
    nameless = await clean.tree.file(clean.docs.ino, None, b"half-created")
    await found_then_repaired(ts, "nameless", nameless.ino)
    assert await ts.get_inode(nameless.ino) is None
    assert await content_gone(ts, nameless)


async def test_a_fresh_nameless_inode_is_left_to_its_create(
    cassandra: str, tenant: tuple[int, str], clean: Clean, ts: TenantStore
) -> None:
    """--repair with the default grace (an hour) must not delete a create in progress."""
    nameless = await clean.tree.file(clean.docs.ino, None, b"being created")
    status, lines = cli(cassandra, tenant, "--repair")
    assert status == 1
    assert lines[0].startswith(f"nameless inode: ino {nameless.ino}: file with nlink 1")
    assert re.search(r"\[left alone: \d+ s old, younger than the grace \(3600 s\)\]$", lines[0])
    assert lines[-1].endswith(": 1 problem")
    assert await ts.get_inode(nameless.ino) is not None
    assert await ts.get_chunk(nameless.ino, nameless.version, 0) is not None


async def test_a_nameless_inode_unlinked_while_fsck_waits_is_left_alone(
    clean: Clean, ts: TenantStore
) -> None:
    """An unlink removes the name, then sets nlink 0: in between the inode is nameless
    with nlink 1.  --repair waits min(grace, step deadline) before deleting nameless
    inodes, rereads them, and leaves alone one that changed."""
    hour_ago = time.time_ns() - 3600 * 10**9
    victim = clean.tree.inode(REGULAR, clean.docs.ino, content_id=EMPTY_ID, ctime_ns=hour_ago)
    await ts.create_inode(victim)
    checker = Checker(ts, Options(repair=True, grace=2))
    async with trio.open_nursery() as nursery:

        async def unlink_meanwhile() -> None:
            for _ in range(6000):  # the checker's phase is plain data: look every 10 ms
                if checker.stats.phase.startswith("waiting"):
                    break
                await trio.sleep(0.01)
            else:
                raise AssertionError(f"fsck never waited; phase {checker.stats.phase}")
            await ts.set_link(victim.evolve(nlink=0, ctime_ns=time.time_ns()))

        nursery.start_soon(unlink_meanwhile)
        report = await checker.run()
    problem = only(report, "nameless")
    assert problem.outcome == "not repaired: the inode changed meanwhile"
    assert await ts.get_inode(victim.ino) is not None
    later = await check(ts)
    assert only(later, "unlinked").ino == victim.ino


async def test_an_unlinked_inode(clean: Clean, ts: TenantStore) -> None:
    outcome = await ts.delete_dentry(clean.sub.ino, b"big", clean.big.ino, time.time_ns())
    assert outcome.applied
    await ts.set_link(clean.big.evolve(nlink=0))
    problem = await found_then_repaired(ts, "unlinked", clean.big.ino)
    assert problem.outcome == "deleted with 3 chunks"
    assert await ts.get_inode(clean.big.ino) is None
    assert await content_gone(ts, clean.big)


async def test_a_stale_version(clean: Clean, ts: TenantStore) -> None:
    stale = await clean.tree.write_version(clean.small.ino, b"an older version")
    problem = await found_then_repaired(ts, "stale-version", clean.small.ino)
    assert problem.where == "/docs/small"
    assert await ts.get_chunk(clean.small.ino, stale, 0) is None
    assert [v.version for v in await ts.list_versions(clean.small.ino)] == [clean.small.version]
    assert (await check(ts)).bytes_read == 10 + len(clean.big_data)


async def test_an_index_row_without_inode(clean: Clean, ts: TenantStore) -> None:
    lost = secrets.randbits(62) + 2
    await ts.put_index(lost, REGULAR, time.time_ns())
    await found_then_repaired(ts, "orphan-index", lost)
    assert lost not in {i for i, _, _ in await ts.list_index(index_bucket(lost))}


async def test_old_intents_without_claims_are_settled(clean: Clean, ts: TenantStore) -> None:
    """An intent written two hours ago whose claim never happened: undone by the default
    grace, as its id and start time are old."""
    started = time.time_ns() - 7200 * 10**9
    intent = Intent(
        id=old_op_id(7200), old_parent=clean.docs.ino, old_name=b"small",
        new_parent=clean.sub.ino, new_name=b"x", ino=clean.small.ino, kind=REGULAR,
        replaced=0, started_ns=started,
    )  # fmt: skip
    await ts.put_intent(intent)
    report = await check(ts, repair=True)
    assert only(report, "intent").outcome == "rename undone"
    assert await ts.get_intent(intent.id) is None


# -- content ------------------------------------------------------------------------------


async def test_a_missing_chunk_cannot_be_repaired(
    cassandra: str, tenant: tuple[int, str], clean: Clean, ts: TenantStore
) -> None:
    await ts.delete_chunk(clean.big.ino, clean.big.version, 1)
    problem = only(await check(ts), "missing-chunks")
    assert problem.where == "/docs/sub/big"
    assert problem.detail.startswith("1 of 3 chunks of version")

    status, lines = cli(cassandra, tenant, "--repair", "--grace", "0")
    assert status == 1
    assert lines[0].startswith(f"missing chunks: /docs/sub/big (ino {clean.big.ino}): 1 of 3")
    assert lines[0].endswith("[not repairable]")
    assert lines[-1].endswith(": 1 problem")


async def test_a_checksum_mismatch_cannot_be_repaired(clean: Clean, ts: TenantStore) -> None:
    await ts.put_chunk(clean.small.ino, clean.small.version, 0, b"9876543210")
    problem = only(await check(ts), "bad-content")
    assert problem.where == "/docs/small" and "SHA-256 of the 10 B" in problem.detail
    repaired = await check(ts, repair=True, grace=0)
    assert only(repaired, "bad-content").outcome == "not repairable"
    assert repaired.exit_status == 1
    assert (await check(ts, content=False)).problems == []  # a structural check misses it


async def test_content_kept_in_the_version_row_is_checked_there(
    clean: Clean, ts: TenantStore
) -> None:
    kept = await clean.tree.file(clean.docs.ino, b"kept.php", b"<?php echo 1;", inline=True)
    assert (await check(ts)).problems == []
    other = Version(kept.ino, kept.version, kept.content_id, kept.size, CHUNK_SIZE, 0, b"x" * 13)
    await ts.put_version(other)  # the same version's row, other bytes
    problem = only(await check(ts), "bad-content")
    assert problem.where == "/docs/kept.php" and "13 B kept in the row" in problem.detail


async def test_small_content_without_its_version_row_is_checked_in_the_inode_row(
    clean: Clean, ts: TenantStore
) -> None:
    """A daemon writes a small file's versions row beside the flip that puts its bytes in
    the inode row: killed between the two, it leaves the bytes in the inode row only.
    That content is whole (opens read it there): fsck checks it there, and finds it bad
    when those bytes are not the content the inode names."""
    kept = await clean.tree.file(clean.docs.ino, b"kept.php", b"<?php echo 1;", inline=True)
    assert await ts.flip_content(kept, kept.version, b"<?php echo 1;") is None
    await ts.delete_version(kept.ino, kept.version)
    assert (await check(ts)).problems == []
    assert await ts.flip_content(kept, kept.version, b"<?php echo 2;") is None
    problem = only(await check(ts), "bad-content")
    assert problem.where == "/docs/kept.php"


async def test_a_short_chunk_is_found(clean: Clean, ts: TenantStore) -> None:
    await ts.put_chunk(clean.big.ino, clean.big.version, 0, b"short")
    problem = only(await check(ts), "bad-content")
    assert problem.detail.startswith("chunk 0 of version")


# -- errors -------------------------------------------------------------------------------


def test_unreachable_cassandra_is_one_line() -> None:
    result = run_cli("fsck", "--contact-points", "127.0.0.1:1", check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cassfs: Cassandra unreachable at 127.0.0.1:1")


def test_missing_schema_is_one_line(cassandra: str) -> None:
    result = run_cli(
        "fsck", "--contact-points", cassandra, "--keyspace", "no_such_keyspace", check=False
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "run `cassfs schema apply --keyspace no_such_keyspace`" in lines[0]
