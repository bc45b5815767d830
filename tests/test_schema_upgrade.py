"""``cassfs schema apply`` upgrades a version-1 keyspace in place, data kept: on the real node.

Each test builds its own throwaway keyspace (``cassfs_up_<hex>``) the way schema version 1
did (``000`` and ``001`` applied, version 1 recorded), writes version-1 shaped rows with
plain CQL (chunks keyed by the content's SHA-256 in ``chunks.content_id``), upgrades it, and
drops it at the end.  The last proof is a cache daemon serving the upgraded keyspace.  A
version-2 keyspace is that one upgraded by a cassfs of schema version 2 (``SCHEMA_VERSION``
patched), then upgraded to 3, whose data step sets the usage counters.
"""

from __future__ import annotations

import hashlib
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cassandra.cluster import Session

from cached.client import DaemonClient, open_client, socket_path
from cached.errors import StorageError
from cached.model import DIRECTORY, REGULAR, ROOT_INO, SYMLINK
from cached.store import INDEX_BUCKETS, SCHEMA_VERSION, ContactPoints, make_cluster
from cassfs import schema
from cassfs.schema import DEFAULT_REPLICATION, SchemaTooNew, StepReport
from tests.conftest import Daemon, run_cli

pytestmark = pytest.mark.cassandra

MIB = 1024 * 1024
NOW = 1_700_000_000_000_000_000  # ns


# -- a version-1 keyspace ------------------------------------------------------------------


@dataclass
class V1File:
    """A regular file written by schema version 1."""

    owner: int
    environment: str
    ino: int
    data: bytes

    @property
    def content_id(self) -> bytes:
        return hashlib.sha256(self.data).digest()


@dataclass
class V1Tree:
    """What a version-1 keyspace holds: ``inodes`` = (owner, environment, ino) -> (kind, ctime)."""

    keyspace: str
    inodes: dict[tuple[int, str, int], tuple[int, int]] = field(default_factory=dict)
    files: dict[str, V1File] = field(default_factory=dict)  # name -> file
    names: dict[tuple[int, str], dict[tuple[int, bytes], int]] = field(default_factory=dict)

    @property
    def non_empty(self) -> list[V1File]:
        return [f for f in self.files.values() if f.data]

    def usage(self) -> dict[tuple[int, str], tuple[int, int]]:
        """What the usage counters must hold: tenant -> (bytes of its files, inodes)."""
        figures: dict[tuple[int, str], tuple[int, int]] = {}
        for owner, environment, _ino in self.inodes:
            used, count = figures.get((owner, environment), (0, 0))
            figures[(owner, environment)] = (used, count + 1)
        for f in self.files.values():
            used, count = figures[(f.owner, f.environment)]
            figures[(f.owner, f.environment)] = (used + len(f.data), count)
        return figures

    def usage_detail(self) -> str:
        """The summary line of version 3's data step for this tree."""
        figures = self.usage().values()
        return (
            f"usage of {len(figures)} tenants counted: {sum(n for _b, n in figures)} inodes, "
            f"{sum(b for b, _n in figures)} bytes"
        )


TENANT = (secrets.randbelow(2**31 - 2) + 2, "prod")
OTHER = (TENANT[0], "staging")


def make_version_1(session: Session, keyspace: str) -> None:
    """The keyspace as `cassfs schema apply` of version 1 left it."""
    files = schema.load(schema.schema_dir(), keyspace, DEFAULT_REPLICATION)
    for cql in (*files.keyspace, *files.steps[1]):
        session.execute(cql, timeout=60)
    session.execute(
        f"INSERT INTO {keyspace}.schema_version (component, version, applied_at) "
        "VALUES ('cassfs', 1, toTimestamp(now()))"
    )


def write_version_1_tree(session: Session, keyspace: str) -> V1Tree:
    """Version-1 shaped rows, with plain CQL, in two tenants.

    TENANT: / (1), /docs (dir), /docs/index.php (small), /big.bin (2 chunks of 1 MiB
    chunk_size), /empty (0 bytes), /link (symlink to docs/index.php).  OTHER: / and
    /other.txt.  Plus an inode "row" holding only a cell left by an update after a delete
    (no kind), which is no inode and must not be indexed.
    """
    tree = V1Tree(keyspace)
    insert_inode = session.prepare(
        f"INSERT INTO {keyspace}.inodes (owner, environment, ino, kind, mode, uid, gid, size, "
        "atime_ns, mtime_ns, ctime_ns, parent, nlink, content_id, chunk_size, target) "
        "VALUES (?, ?, ?, ?, ?, 0, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    insert_dentry = session.prepare(
        f"INSERT INTO {keyspace}.dentries (owner, environment, parent, name, ino, kind) "
        "VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"
    )
    insert_chunk = session.prepare(
        f"INSERT INTO {keyspace}.chunks (owner, environment, ino, content_id, chunk, data) "
        "VALUES (?, ?, ?, ?, ?, ?)"
    )
    counter = iter(range(1, 1000))

    def inode(
        tenant: tuple[int, str],
        ino: int,
        kind: int,
        parent: int,
        *,
        data: bytes = b"",
        target: bytes = b"",
        name: bytes | None = None,
    ) -> None:
        ctime = NOW + next(counter) * 1000
        mode = {DIRECTORY: stat.S_IFDIR | 0o755, REGULAR: stat.S_IFREG | 0o644}.get(
            kind, stat.S_IFLNK | 0o777
        )
        size = len(data) if kind == REGULAR else len(target)
        # Version 1: files carry the SHA-256 of their content (of b"" when empty) and
        # chunk_size 1 MiB; directories and symlinks an empty content_id.
        content_id = hashlib.sha256(data).digest() if kind == REGULAR else b""
        session.execute(
            insert_inode,
            (*tenant, ino, kind, mode, size, ctime, ctime, ctime, parent if kind == DIRECTORY
             else 0, 1, content_id, MIB if kind == REGULAR else 0, target),
        )  # fmt: skip
        tree.inodes[(*tenant, ino)] = (kind, ctime)
        for index in range(0, len(data), MIB):
            session.execute(
                insert_chunk, (*tenant, ino, content_id, index // MIB, data[index : index + MIB])
            )
        if name is not None:
            assert session.execute(insert_dentry, (*tenant, parent, name, ino, kind)).one()[
                "[applied]"
            ]
            tree.names.setdefault(tenant, {})[(parent, name)] = ino
        if kind == REGULAR:
            tree.files[name.decode() if name else str(ino)] = V1File(*tenant, ino, data)

    docs, index, big, empty, link, other = (secrets.randbits(63) | 2 for _ in range(6))
    inode(TENANT, ROOT_INO, DIRECTORY, ROOT_INO)
    inode(TENANT, docs, DIRECTORY, ROOT_INO, name=b"docs")
    inode(TENANT, index, REGULAR, docs, data=b"<?php echo 'hello';\n" * 200, name=b"index.php")
    inode(TENANT, big, REGULAR, ROOT_INO, data=secrets.token_bytes(MIB + MIB // 2 + 17),
          name=b"big.bin")  # fmt: skip
    inode(TENANT, empty, REGULAR, ROOT_INO, name=b"empty")
    inode(TENANT, link, SYMLINK, ROOT_INO, target=b"docs/index.php", name=b"link")
    inode(OTHER, ROOT_INO, DIRECTORY, ROOT_INO)
    inode(OTHER, other, REGULAR, ROOT_INO, data=b"another tenant\n", name=b"other.txt")
    session.execute(
        f"UPDATE {keyspace}.inodes SET mtime_ns = 1 WHERE owner = %s AND environment = %s "
        "AND ino = %s",
        (*TENANT, secrets.randbits(63) | 2),
    )
    return tree


@pytest.fixture
def cql(cassandra: str) -> Iterator[Session]:
    """A session on the node (rows as dicts)."""
    cluster = make_cluster(ContactPoints.parse(cassandra))
    try:
        yield cluster.connect()
    finally:
        cluster.shutdown()


@pytest.fixture
def keyspace(cql: Session) -> Iterator[str]:
    """The name of a throwaway keyspace, dropped after the test."""
    name = f"cassfs_up_{secrets.token_hex(6)}"
    yield name
    cql.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)


@pytest.fixture
def v1(cql: Session, keyspace: str) -> V1Tree:
    """A version-1 keyspace holding :func:`write_version_1_tree`."""
    make_version_1(cql, keyspace)
    return write_version_1_tree(cql, keyspace)


# -- what an upgraded keyspace holds -------------------------------------------------------


def recorded(cql: Session, keyspace: str) -> int:
    row = cql.execute(
        f"SELECT version FROM {keyspace}.schema_version WHERE component = 'cassfs'"
    ).one()
    return int(row["version"])


def usage(cql: Session, keyspace: str) -> dict[tuple[int, str], tuple[int, int]]:
    """Every tenant's usage counters: tenant -> (bytes, inodes)."""
    return {
        (r["owner"], r["environment"]): (r["bytes"], r["inodes"])
        for r in cql.execute(f"SELECT owner, environment, bytes, inodes FROM {keyspace}.usage")
    }


def chunk_key_columns(cql: Session, keyspace: str) -> set[str]:
    rows = cql.execute(
        "SELECT column_name FROM system_schema.columns "
        "WHERE keyspace_name = %s AND table_name = 'chunks'",
        (keyspace,),
    )
    return {r["column_name"] for r in rows}


def snapshot(cql: Session, keyspace: str) -> dict[str, set[tuple[Any, ...]]]:
    """Every backfilled row with the write time of its cells: equal snapshots, no writes."""
    ks = keyspace
    return {
        "index": {
            tuple(r.values())
            for r in cql.execute(
                f"SELECT owner, environment, bucket, ino, kind, created_ns, writetime(kind) "
                f"FROM {ks}.inode_index"
            )
        },
        "versions": {
            tuple(r.values())
            for r in cql.execute(
                "SELECT owner, environment, ino, version, content_id, size, chunk_size, "
                f"created_ns, writetime(size) FROM {ks}.versions"
            )
        },
        "inodes": {
            tuple(r.values())
            for r in cql.execute(
                f"SELECT owner, environment, ino, version, writetime(version) FROM {ks}.inodes"
            )
        },
    }


def check_upgraded(cql: Session, tree: V1Tree) -> None:
    """Version 7 recorded; every inode indexed; versions and chunks under the new key; the
    usage counters equal to the data; the change feed's table there; inodes and versions
    able to keep small content (none kept: what was written stays in its chunks); the
    inodes' ``xattrs`` flag unknown (null) in every row written before; the dentries
    table's comment set (version 5)."""
    ks = tree.keyspace
    assert recorded(cql, ks) == SCHEMA_VERSION == 7
    assert all(r["xattrs"] is None for r in cql.execute(f"SELECT xattrs FROM {ks}.inodes"))
    comment = cql.execute(
        "SELECT comment FROM system_schema.tables WHERE keyspace_name = %s "
        "AND table_name = 'dentries'",
        (ks,),
    ).one()["comment"]
    assert "move markers" in comment
    for table in ("inodes", "versions"):
        assert "data" in table_columns(cql, ks, table)
        assert all(r["data"] is None for r in cql.execute(f"SELECT data FROM {ks}.{table}"))
    assert feed_columns(cql, ks) == {
        "owner",
        "environment",
        "bucket",
        "id",
        "origin",
        "inos",
        "names",
    }
    assert usage(cql, ks) == tree.usage()
    assert {"version", "chunk"} <= chunk_key_columns(cql, ks)
    assert "content_id" not in chunk_key_columns(cql, ks)
    index = {
        (r["owner"], r["environment"], r["ino"]): (r["bucket"], r["kind"], r["created_ns"])
        for r in cql.execute(f"SELECT * FROM {ks}.inode_index")
    }
    assert index == {
        key: (key[2] % INDEX_BUCKETS, kind, ctime) for key, (kind, ctime) in tree.inodes.items()
    }
    versions = {
        (r["owner"], r["environment"], r["ino"]): r
        for r in cql.execute(f"SELECT * FROM {ks}.versions")
    }
    assert set(versions) == {(f.owner, f.environment, f.ino) for f in tree.non_empty}
    current = {
        (r["owner"], r["environment"], r["ino"]): r["version"]
        for r in cql.execute(f"SELECT owner, environment, ino, version FROM {ks}.inodes")
    }
    get_chunk = cql.prepare(
        f"SELECT data FROM {ks}.chunks WHERE owner = ? AND environment = ? AND ino = ? "
        "AND version = ? AND chunk = ?"
    )
    for f in tree.files.values():
        key = (f.owner, f.environment, f.ino)
        if not f.data:
            assert current[key] is None, "an empty file has no version"
            continue
        v = versions[key]
        assert v["version"] == v["content_id"] == f.content_id == current[key]
        assert (v["size"], v["chunk_size"]) == (len(f.data), MIB)
        assert v["created_ns"] == tree.inodes[key][1]
        chunks = [
            cql.execute(get_chunk, (*key[:2], f.ino, current[key], i)).one()["data"]
            for i in range(-(-len(f.data) // MIB))
        ]
        assert b"".join(chunks) == f.data
    assert len(tree.files["big.bin"].data) > MIB  # really two chunks
    others = {k: v for k, v in current.items() if k[2] not in {f.ino for f in tree.files.values()}}
    assert all(v is None for v in others.values()), "directories and symlinks have no version"


# -- the tests -----------------------------------------------------------------------------


def test_version_1_keyspace_is_upgraded_in_place(
    cassandra: str, cql: Session, v1: V1Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "SCAN_PAGE", 3)  # several pages of the inodes scan
    reports: list[StepReport] = []
    progress: list[tuple[int, int]] = []
    points = ContactPoints.parse(cassandra)
    version = schema.apply(
        points,
        v1.keyspace,
        on_step=reports.append,
        on_progress=lambda v, done: progress.append((v, done)),
    )
    assert version == 7
    check_upgraded(cql, v1)
    assert [str(r) for r in reports] == [
        f"upgraded keyspace {v1.keyspace} from version 1 to 2: "
        "8 inodes indexed, 3 versions recorded",
        f"upgraded keyspace {v1.keyspace} from version 2 to 3: {v1.usage_detail()}",
        f"upgraded keyspace {v1.keyspace} from version 3 to 4",
        f"upgraded keyspace {v1.keyspace} from version 4 to 5",
        f"upgraded keyspace {v1.keyspace} from version 5 to 6",
        f"upgraded keyspace {v1.keyspace} from version 6 to 7",
    ]
    scanned = [done for v, done in progress if v == 2]
    assert len(scanned) >= 3 and scanned == sorted(scanned) and scanned[-1] == 9

    # Again: a keyspace at the current version is not touched (no data step, no write).
    before = snapshot(cql, v1.keyspace)

    def must_not_run(*_args: object) -> str:
        raise AssertionError("the data step ran on a current keyspace")

    monkeypatch.setitem(schema.DATA_STEPS, 2, must_not_run)
    monkeypatch.setitem(schema.DATA_STEPS, 3, must_not_run)
    reports.clear()
    assert schema.apply(points, v1.keyspace, on_step=reports.append) == 7
    assert reports == []
    assert snapshot(cql, v1.keyspace) == before
    check_upgraded(cql, v1)


def test_interrupted_upgrade_resumes_where_it_stopped(
    cassandra: str, cql: Session, v1: V1Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The upgrade dies in the middle of its data step: after the chunk key rename and the
    # first page's index and versions rows, before any inode points at its version.
    monkeypatch.setattr(schema, "SCAN_PAGE", 4)
    real = schema._run_concurrently
    calls = []

    def dies_on_second_call(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise StorageError("the node went away")
        return real(*args)

    monkeypatch.setattr(schema, "_run_concurrently", dies_on_second_call)
    with pytest.raises(StorageError, match="went away"):
        schema.apply(ContactPoints.parse(cassandra), v1.keyspace)
    assert recorded(cql, v1.keyspace) == 1
    assert "version" in chunk_key_columns(cql, v1.keyspace)
    assert cql.execute(f"SELECT * FROM {v1.keyspace}.inode_index").all()
    monkeypatch.undo()

    # `cassfs schema apply` again, as a user would: it finishes the step.
    done = run_cli("schema", "apply", "--contact-points", cassandra, "--keyspace", v1.keyspace)
    assert done.stdout.splitlines() == [
        f"cassfs: upgraded keyspace {v1.keyspace} from version 1 to 2: "
        "8 inodes indexed, 3 versions recorded",
        f"cassfs: upgraded keyspace {v1.keyspace} from version 2 to 3: {v1.usage_detail()}",
        f"cassfs: upgraded keyspace {v1.keyspace} from version 3 to 4",
        f"cassfs: upgraded keyspace {v1.keyspace} from version 4 to 5",
        f"cassfs: upgraded keyspace {v1.keyspace} from version 5 to 6",
        f"cassfs: upgraded keyspace {v1.keyspace} from version 6 to 7",
        f"cassfs: keyspace {v1.keyspace} at {cassandra} is now at schema version 7",
    ]
    check_upgraded(cql, v1)


def test_version_2_keyspace_gets_usage_counters_equal_to_its_data(
    cassandra: str, cql: Session, v1: V1Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A keyspace at version 2 with data: version 1's tree upgraded by a cassfs of version 2,
    # then an unlinked file not purged yet (it counts until purged) and, like a second
    # tenant's, its own rows.
    with monkeypatch.context() as patch:
        patch.setattr(schema, "SCHEMA_VERSION", 2)
        assert schema.apply(ContactPoints.parse(cassandra), v1.keyspace) == 2
    assert recorded(cql, v1.keyspace) == 2
    unlinked = secrets.randbits(63) | 2
    cql.execute(
        f"INSERT INTO {v1.keyspace}.inodes (owner, environment, ino, kind, mode, size, nlink, "
        "ctime_ns) VALUES (%s, %s, %s, %s, %s, %s, 0, %s)",
        (*TENANT, unlinked, REGULAR, stat.S_IFREG | 0o644, 5000, NOW),
    )
    expected = v1.usage()
    expected[TENANT] = (expected[TENANT][0] + 5000, expected[TENANT][1] + 1)
    before = snapshot(cql, v1.keyspace)

    monkeypatch.setattr(schema, "SCAN_PAGE", 3)  # several pages of the inodes scan
    done = run_cli("schema", "apply", "--contact-points", cassandra, "--keyspace", v1.keyspace)
    detail = f"usage of 2 tenants counted: {sum(n for _b, n in expected.values())} inodes, "
    detail += f"{sum(b for b, _n in expected.values())} bytes"
    assert done.stdout.splitlines() == [
        f"cassfs: upgraded keyspace {v1.keyspace} from version 2 to 3: {detail}",
        f"cassfs: upgraded keyspace {v1.keyspace} from version 3 to 4",
        f"cassfs: upgraded keyspace {v1.keyspace} from version 4 to 5",
        f"cassfs: upgraded keyspace {v1.keyspace} from version 5 to 6",
        f"cassfs: upgraded keyspace {v1.keyspace} from version 6 to 7",
        f"cassfs: keyspace {v1.keyspace} at {cassandra} is now at schema version 7",
    ]
    assert recorded(cql, v1.keyspace) == 7
    assert usage(cql, v1.keyspace) == expected
    assert snapshot(cql, v1.keyspace) == before  # the data is kept, untouched

    # The step again (an upgrade resumed after it ran): the counters stay true.
    step = schema.DATA_STEPS[3]
    assert step(cql, v1.keyspace, lambda _done: None) == detail
    assert usage(cql, v1.keyspace) == expected
    # Counters off (a step stopped after some of its updates): set true again.
    cql.execute(
        f"UPDATE {v1.keyspace}.usage SET bytes = bytes + 7, inodes = inodes - 1 "
        "WHERE owner = %s AND environment = %s",
        OTHER,
    )
    cql.execute(
        f"UPDATE {v1.keyspace}.usage SET bytes = bytes + 1, inodes = inodes + 1 "
        "WHERE owner = %s AND environment = %s",
        (OTHER[0], "no-inodes"),
    )
    step(cql, v1.keyspace, lambda _done: None)
    assert usage(cql, v1.keyspace) == {**expected, (OTHER[0], "no-inodes"): (0, 0)}


@pytest.mark.parametrize("previous", [5, 6])
def test_the_previous_versions_keyspace_is_upgraded_by_the_cli_and_keeps_its_data(
    cassandra: str, cql: Session, v1: V1Tree, monkeypatch: pytest.MonkeyPatch, previous: int
) -> None:
    """A keyspace of version 5 (no inline content) or 6 (no attribute flag on inodes),
    with its data, upgraded in place by the CLI: no row rewritten, the data columns and
    the inodes' ``xattrs`` column added (null in every row: unknown)."""
    with monkeypatch.context() as patch:
        patch.setattr(schema, "SCHEMA_VERSION", previous)
        assert schema.apply(ContactPoints.parse(cassandra), v1.keyspace) == previous
    assert recorded(cql, v1.keyspace) == previous
    assert ("data" in table_columns(cql, v1.keyspace, "versions")) == (previous >= 6)
    assert "xattrs" not in table_columns(cql, v1.keyspace, "inodes")
    before = snapshot(cql, v1.keyspace)
    counted = usage(cql, v1.keyspace)
    done = run_cli("schema", "apply", "--contact-points", cassandra, "--keyspace", v1.keyspace)
    assert done.stdout.splitlines() == [
        *(
            f"cassfs: upgraded keyspace {v1.keyspace} from version {v} to {v + 1}"
            for v in range(previous, SCHEMA_VERSION)
        ),
        f"cassfs: keyspace {v1.keyspace} at {cassandra} is now at schema version 7",
    ]
    assert snapshot(cql, v1.keyspace) == before  # the data is kept, untouched
    assert usage(cql, v1.keyspace) == counted
    check_upgraded(cql, v1)


def feed_columns(cql: Session, keyspace: str) -> set[str]:
    """The columns of ``keyspace.changes`` (none: no such table)."""
    return table_columns(cql, keyspace, "changes")


def table_columns(cql: Session, keyspace: str, table: str) -> set[str]:
    """The columns of ``keyspace.table`` (none: no such table)."""
    return {
        r["column_name"]
        for r in cql.execute(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = %s "
            "AND table_name = %s",
            (keyspace, table),
        )
    }


def test_tables_without_a_version_row_count_as_version_1(
    cassandra: str, cql: Session, v1: V1Tree
) -> None:
    # A version-1 apply that stopped before recording its version.
    cql.execute(f"DELETE FROM {v1.keyspace}.schema_version WHERE component = 'cassfs'")
    reports: list[StepReport] = []
    schema.apply(ContactPoints.parse(cassandra), v1.keyspace, on_step=reports.append)
    assert [(r.previous, r.version) for r in reports] == [
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 4),
        (4, 5),
        (5, 6),
        (6, 7),
    ]
    check_upgraded(cql, v1)


def test_fresh_keyspace_goes_through_every_step(
    cassandra: str, cql: Session, keyspace: str
) -> None:
    reports: list[StepReport] = []
    schema.apply(ContactPoints.parse(cassandra), keyspace, on_step=reports.append)
    assert [str(r) for r in reports] == [
        f"created schema version 1 in keyspace {keyspace}",
        f"upgraded keyspace {keyspace} from version 1 to 2: 0 inodes indexed, 0 versions recorded",
        f"upgraded keyspace {keyspace} from version 2 to 3: "
        "usage of 0 tenants counted: 0 inodes, 0 bytes",
        f"upgraded keyspace {keyspace} from version 3 to 4",
        f"upgraded keyspace {keyspace} from version 4 to 5",
        f"upgraded keyspace {keyspace} from version 5 to 6",
        f"upgraded keyspace {keyspace} from version 6 to 7",
    ]
    assert recorded(cql, keyspace) == 7
    assert "content_id" not in chunk_key_columns(cql, keyspace)


def test_keyspace_of_a_newer_cassfs_is_refused(cassandra: str, cql: Session, keyspace: str) -> None:
    schema.apply(ContactPoints.parse(cassandra), keyspace)
    newer = SCHEMA_VERSION + 1
    cql.execute(
        f"INSERT INTO {keyspace}.schema_version (component, version) VALUES ('cassfs', {newer})"
    )
    with pytest.raises(SchemaTooNew) as info:
        schema.apply(ContactPoints.parse(cassandra), keyspace)
    message = (
        f"keyspace {keyspace} has schema version {newer}, newer than this cassfs ({SCHEMA_VERSION})"
    )
    assert message in str(info.value) and "nothing was changed" in str(info.value)
    result = run_cli(
        "schema", "apply", "--contact-points", cassandra, "--keyspace", keyspace, check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"cassfs: {info.value}"
    assert recorded(cql, keyspace) == newer


async def _read_whole(client: DaemonClient, ino: int) -> bytes:
    opened = await client.call("open", ino=ino)
    if opened["data"] is not None:
        return opened["data"]  # type: ignore[no-any-return]
    inode = opened["inode"]
    parts = []
    for offset in range(0, inode["size"], 256 * 1024):
        parts.append(
            await client.call(
                "read",
                ino=ino,
                content_id=inode["content_id"],
                file_size=inode["size"],
                offset=offset,
                size=256 * 1024,
            )
        )
    return b"".join(parts)


async def test_daemon_serves_the_upgraded_keyspace(
    cassandra: str, cql: Session, v1: V1Tree, start_daemon: Callable[..., Daemon]
) -> None:
    schema.apply(ContactPoints.parse(cassandra), v1.keyspace)
    daemon = start_daemon(keyspace=v1.keyspace)
    async with open_client(socket_path(daemon.cache_dir)) as client:
        await client.hello(*TENANT)
        used, inodes = v1.usage()[TENANT]
        assert await client.call("statfs") == {"bytes": used, "inodes": inodes}
        listing = await client.call("readdir", ino=ROOT_INO)
        assert {bytes(entry[0]) for entry in listing} >= {b"docs", b"big.bin", b"empty", b"link"}
        for parent, path in ((ROOT_INO, b"big.bin"), (ROOT_INO, b"empty")):
            found = await client.call("lookup", parent=parent, name=path)
            assert await _read_whole(client, found["ino"]) == v1.files[path.decode()].data
        docs = await client.call("lookup", parent=ROOT_INO, name=b"docs")
        index = await client.call("lookup", parent=docs["ino"], name=b"index.php")
        assert await _read_whole(client, index["ino"]) == v1.files["index.php"].data
        link = await client.call("lookup", parent=ROOT_INO, name=b"link")
        assert await client.call("readlink", ino=link["ino"]) == b"docs/index.php"

        # A version-2 write over content written by version 1 (its flip is
        # "IF version = <the SHA-256 the upgrade recorded>"), read back.
        await client.call("write", ino=index["ino"], data=b"<?php echo 'upgraded';\n")
        assert await _read_whole(client, index["ino"]) == b"<?php echo 'upgraded';\n"
        used += len(b"<?php echo 'upgraded';\n") - len(v1.files["index.php"].data)
        assert await client.call("statfs") == {"bytes": used, "inodes": inodes}
    async with open_client(socket_path(daemon.cache_dir)) as client:
        await client.hello(*OTHER)
        other = await client.call("lookup", parent=ROOT_INO, name=b"other.txt")
        assert await _read_whole(client, other["ino"]) == b"another tenant\n"
