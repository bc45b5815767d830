"""Cassandra access: one method per CQL statement, all prepared, none blocking trio.

``Store`` owns the driver's ``Cluster`` and ``Session`` (connected and shut
down in a worker thread, since both block) and the prepared statements;
``TenantStore`` binds every statement to one ``(owner, environment)`` pair, the
first columns of every partition key.  Queries go through
:func:`cached.bridge.execute`.  Driver failures become ``StorageError`` (EIO).

Consistency: ``consistency`` (default LOCAL_QUORUM) for reads and writes,
LOCAL_SERIAL for the lightweight transactions (LWT) on ``dentries``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio
from cassandra import ConsistencyLevel, DriverException
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import PreparedStatement, dict_factory

from cached.bridge import execute
from cached.errors import SchemaMissing, StorageError
from cached.model import Dentry, Inode

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_INODE_COLUMNS = (
    "ino, kind, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, parent, nlink, "
    "content_id, chunk_size, target"
)
_TENANT = "owner = ? AND environment = ?"

#: name -> CQL; {ks} is the keyspace.  The statement behind every Store call is here.
STATEMENTS: dict[str, str] = {
    "get_inode": f"SELECT {_INODE_COLUMNS} FROM {{ks}}.inodes WHERE {_TENANT} AND ino = ?",
    "put_inode": (
        f"INSERT INTO {{ks}}.inodes (owner, environment, {_INODE_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    "set_attrs": (
        "UPDATE {ks}.inodes SET mode = ?, uid = ?, gid = ?, atime_ns = ?, mtime_ns = ?, "
        f"ctime_ns = ? WHERE {_TENANT} AND ino = ?"
    ),
    "set_content": (
        "UPDATE {ks}.inodes SET content_id = ?, size = ?, chunk_size = ?, mtime_ns = ?, "
        f"ctime_ns = ? WHERE {_TENANT} AND ino = ?"
    ),
    "touch": f"UPDATE {{ks}}.inodes SET mtime_ns = ?, ctime_ns = ? WHERE {_TENANT} AND ino = ?",
    "set_link": (
        f"UPDATE {{ks}}.inodes SET parent = ?, nlink = ?, ctime_ns = ? WHERE {_TENANT} AND ino = ?"
    ),
    "delete_inode": f"DELETE FROM {{ks}}.inodes WHERE {_TENANT} AND ino = ?",
    "get_dentry": (
        f"SELECT ino, kind FROM {{ks}}.dentries WHERE {_TENANT} AND parent = ? AND name = ?"
    ),
    "list_dentries": f"SELECT name, ino, kind FROM {{ks}}.dentries WHERE {_TENANT} AND parent = ?",
    "list_dentries_limit": (
        f"SELECT name, ino, kind FROM {{ks}}.dentries WHERE {_TENANT} AND parent = ? LIMIT ?"
    ),
    "first_dentry": f"SELECT name FROM {{ks}}.dentries WHERE {_TENANT} AND parent = ? LIMIT 1",
    "insert_dentry": (
        "INSERT INTO {ks}.dentries (owner, environment, parent, name, ino, kind) "
        "VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"
    ),
    "replace_dentry": (
        f"UPDATE {{ks}}.dentries SET ino = ?, kind = ? WHERE {_TENANT} AND parent = ? "
        "AND name = ? IF ino = ?"
    ),
    "delete_dentry": (
        f"DELETE FROM {{ks}}.dentries WHERE {_TENANT} AND parent = ? AND name = ? IF ino = ?"
    ),
    "put_chunk": (
        "INSERT INTO {ks}.chunks (owner, environment, ino, content_id, chunk, data) "
        "VALUES (?, ?, ?, ?, ?, ?)"
    ),
    "get_chunk": (
        f"SELECT data FROM {{ks}}.chunks WHERE {_TENANT} AND ino = ? AND content_id = ? "
        "AND chunk = ?"
    ),
    "delete_chunk": (
        f"DELETE FROM {{ks}}.chunks WHERE {_TENANT} AND ino = ? AND content_id = ? AND chunk = ?"
    ),
    "schema_version": "SELECT version FROM {ks}.schema_version WHERE component = 'cassfs'",
}

_LWT = {"insert_dentry", "replace_dentry", "delete_dentry"}


@dataclass(frozen=True)
class ContactPoints:
    """Where Cassandra answers: ``hosts`` on one native ``port``."""

    hosts: tuple[str, ...]
    port: int

    @classmethod
    def parse(cls, text: str) -> ContactPoints:
        """Parse ``HOST[:PORT],...``; every host must use the same port (default 9042).

        IPv6 addresses are written ``[::1]:9042`` or bare (``::1``, default port).
        Raises ValueError with a readable message on bad input.
        """
        hosts: list[str] = []
        ports: set[int] = set()
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            if item.startswith("["):
                host, _, rest = item[1:].partition("]")
                port_text = rest.removeprefix(":") if rest.startswith(":") else (rest or "9042")
            elif item.count(":") > 1:
                host, port_text = item, "9042"
            else:
                host, sep, port_text = item.rpartition(":")
                if not sep:
                    host, port_text = item, "9042"
            if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"bad contact point {item!r}: expected HOST[:PORT]")
            hosts.append(host)
            ports.add(int(port_text))
        if not hosts:
            raise ValueError("no contact points given")
        if len(ports) > 1:
            raise ValueError("all contact points must use the same port")
        return cls(tuple(hosts), ports.pop())

    def __str__(self) -> str:
        return ",".join(
            f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}" for host in self.hosts
        )


def make_cluster(contact_points: ContactPoints, connect_timeout: float = 5.0) -> Cluster:
    """A driver ``Cluster`` for ``contact_points`` (not connected; ``connect()`` blocks).

    Rows come back as dicts.  Token-aware routing over DC-aware round robin, the
    driver's recommended default, is given explicitly so the driver does not warn.
    """
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
        row_factory=dict_factory,
    )
    return Cluster(
        list(contact_points.hosts),
        port=contact_points.port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        # Without TCP_NODELAY a request over one TCP segment waits for the peer's
        # delayed ACK (Nagle): a 10 kB insert took 44 ms instead of about 1 ms here.
        sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        connect_timeout=connect_timeout,
        control_connection_timeout=connect_timeout,
    )


class Store:
    """A connected Cassandra session with the cassfs statements prepared.

    Create with :meth:`connect`; close with :meth:`close`.  ``timeout`` is the
    per-query timeout in seconds.
    """

    def __init__(
        self,
        cluster: Cluster,
        session: Session,
        statements: dict[str, PreparedStatement],
        timeout: float,
    ) -> None:
        self._cluster = cluster
        self._session = session
        self._statements = statements
        self.timeout = timeout

    @classmethod
    async def connect(
        cls,
        contact_points: ContactPoints,
        keyspace: str,
        *,
        consistency: str = "LOCAL_QUORUM",
        query_timeout: float = 10.0,
    ) -> Store:
        """Connect, check the schema version and prepare every statement.

        ``query_timeout`` is each query's timeout in seconds.  Raises
        ``StorageError`` when no contact point answers (the message names them)
        and ``SchemaMissing`` when the keyspace, a table or the schema version
        row is missing.
        """
        level = ConsistencyLevel.name_to_value[consistency.upper()]
        return await trio.to_thread.run_sync(
            cls._connect_sync, contact_points, keyspace, level, query_timeout
        )

    @classmethod
    def _connect_sync(
        cls, contact_points: ContactPoints, keyspace: str, level: int, timeout: float
    ) -> Store:
        cluster = make_cluster(contact_points)
        try:
            session = cluster.connect()
        except NoHostAvailable as exc:
            cluster.shutdown()
            raise StorageError(
                f"Cassandra unreachable at {contact_points}: {_first_error(exc)}"
            ) from exc
        try:
            meta = cluster.metadata.keyspaces.get(keyspace)
            missing = [
                t
                for t in ("inodes", "dentries", "chunks", "schema_version")
                if meta is None or t not in meta.tables
            ]
            if missing:
                raise SchemaMissing(
                    f"keyspace {keyspace!r} lacks {', '.join(missing)}: "
                    f"run `cassfs schema apply --keyspace {keyspace}`"
                )
            rows = session.execute(
                STATEMENTS["schema_version"].format(ks=keyspace), timeout=timeout
            ).all()
            if not rows or rows[0]["version"] != SCHEMA_VERSION:
                raise SchemaMissing(
                    f"keyspace {keyspace!r} has schema version "
                    f"{rows[0]['version'] if rows else 'none'}, cassfs needs {SCHEMA_VERSION}: "
                    f"run `cassfs schema apply --keyspace {keyspace}`"
                )
            statements = {}
            for name, cql in STATEMENTS.items():
                prepared = session.prepare(cql.format(ks=keyspace))
                prepared.consistency_level = level
                if name in _LWT:
                    prepared.serial_consistency_level = ConsistencyLevel.LOCAL_SERIAL
                statements[name] = prepared
        except BaseException:
            cluster.shutdown()
            raise
        return cls(cluster, session, statements, timeout)

    async def close(self) -> None:
        """Shut the driver down (in a worker thread; it blocks)."""
        await trio.to_thread.run_sync(self._cluster.shutdown)

    def tenant(self, owner: int, environment: str) -> TenantStore:
        """Return the view of one tenant."""
        return TenantStore(self, owner, environment)

    async def run(self, name: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """Execute prepared statement ``name`` with ``params``; rows as dicts.

        Raises ``StorageError`` (EIO) on any driver failure or timeout.
        """
        try:
            return await execute(
                self._session, self._statements[name], params, query_timeout=self.timeout
            )
        except DriverException as exc:
            raise StorageError(f"{name}: {exc}") from exc
        except Exception as exc:  # OperationTimedOut and friends do not share a base
            if type(exc).__module__.startswith("cassandra"):
                raise StorageError(f"{name}: {exc}") from exc
            raise


def _first_error(exc: NoHostAvailable) -> str:
    errors = getattr(exc, "errors", None) or {}
    for err in errors.values():
        return str(err)
    return str(exc)


def _inode(row: dict[str, Any]) -> Inode:
    return Inode(
        ino=row["ino"],
        kind=row["kind"],
        mode=row["mode"],
        uid=row["uid"] or 0,
        gid=row["gid"] or 0,
        size=row["size"] or 0,
        atime_ns=row["atime_ns"] or 0,
        mtime_ns=row["mtime_ns"] or 0,
        ctime_ns=row["ctime_ns"] or 0,
        parent=row["parent"] or 0,
        nlink=row["nlink"] if row["nlink"] is not None else 1,
        content_id=row["content_id"] or b"",
        chunk_size=row["chunk_size"] or 0,
        target=row["target"] or b"",
    )


class TenantStore:
    """The statements of :data:`STATEMENTS`, bound to one ``(owner, environment)``."""

    def __init__(self, store: Store, owner: int, environment: str) -> None:
        self._store = store
        self._t = (owner, environment)

    async def get_inode(self, ino: int) -> Inode | None:
        """The inode ``ino``, or None when there is no such row."""
        rows = await self._store.run("get_inode", (*self._t, ino))
        return _inode(rows[0]) if rows and rows[0]["kind"] is not None else None

    async def put_inode(self, inode: Inode) -> None:
        """Write every column of ``inode`` (a new inode, or the root)."""
        i = inode
        await self._store.run(
            "put_inode",
            (
                *self._t,
                i.ino,
                i.kind,
                i.mode,
                i.uid,
                i.gid,
                i.size,
                i.atime_ns,
                i.mtime_ns,
                i.ctime_ns,
                i.parent,
                i.nlink,
                i.content_id,
                i.chunk_size,
                i.target,
            ),
        )

    async def set_attrs(self, inode: Inode) -> None:
        """Write mode, uid, gid and the three times of ``inode``."""
        i = inode
        await self._store.run(
            "set_attrs",
            (
                i.mode,
                i.uid,
                i.gid,
                i.atime_ns,
                i.mtime_ns,
                i.ctime_ns,
                *self._t,
                i.ino,
            ),
        )

    async def set_content(self, inode: Inode) -> None:
        """Point ``inode`` at its (already written) content: the atomic flip of a rewrite."""
        i = inode
        await self._store.run(
            "set_content",
            (
                i.content_id,
                i.size,
                i.chunk_size,
                i.mtime_ns,
                i.ctime_ns,
                *self._t,
                i.ino,
            ),
        )

    async def touch(self, ino: int, mtime_ns: int, ctime_ns: int) -> None:
        """Set only the mtime and ctime of ``ino`` (a directory whose entries changed)."""
        await self._store.run("touch", (mtime_ns, ctime_ns, *self._t, ino))

    async def set_link(self, inode: Inode) -> None:
        """Write ``parent``, ``nlink`` and ``ctime_ns`` of ``inode`` (rename, unlink)."""
        i = inode
        await self._store.run("set_link", (i.parent, i.nlink, i.ctime_ns, *self._t, i.ino))

    async def delete_inode(self, ino: int) -> None:
        """Delete the inode row (its content is deleted separately)."""
        await self._store.run("delete_inode", (*self._t, ino))

    async def get_dentry(self, parent: int, name: bytes) -> Dentry | None:
        """The entry ``name`` in directory ``parent``, or None."""
        rows = await self._store.run("get_dentry", (*self._t, parent, name))
        return Dentry(parent, name, rows[0]["ino"], rows[0]["kind"]) if rows else None

    async def list_dentries(self, parent: int, limit: int | None = None) -> list[Dentry]:
        """The entries of directory ``parent`` (all, or the first ``limit``), ordered by name."""
        if limit is None:
            rows = await self._store.run("list_dentries", (*self._t, parent))
        else:
            rows = await self._store.run("list_dentries_limit", (*self._t, parent, limit))
        return [Dentry(parent, r["name"], r["ino"], r["kind"]) for r in rows]

    async def has_dentries(self, parent: int) -> bool:
        """True if directory ``parent`` has at least one entry."""
        return bool(await self._store.run("first_dentry", (*self._t, parent)))

    async def insert_dentry(self, entry: Dentry) -> Dentry | None:
        """LWT insert; returns None when applied, else the entry that holds the name."""
        rows = await self._store.run(
            "insert_dentry", (*self._t, entry.parent, entry.name, entry.ino, entry.kind)
        )
        row = rows[0]
        if row["[applied]"]:
            return None
        return Dentry(entry.parent, entry.name, row["ino"], row["kind"])

    async def replace_dentry(self, entry: Dentry, expected_ino: int) -> bool:
        """LWT: point ``entry.name`` at ``entry.ino`` if it still names ``expected_ino``."""
        rows = await self._store.run(
            "replace_dentry",
            (
                entry.ino,
                entry.kind,
                *self._t,
                entry.parent,
                entry.name,
                expected_ino,
            ),
        )
        return bool(rows[0]["[applied]"])

    async def delete_dentry(self, parent: int, name: bytes, expected_ino: int) -> bool:
        """LWT: delete ``name`` from ``parent`` if it still names ``expected_ino``."""
        rows = await self._store.run("delete_dentry", (*self._t, parent, name, expected_ino))
        return bool(rows[0]["[applied]"])

    async def put_chunk(self, ino: int, content_id: bytes, index: int, data: bytes) -> None:
        """Write chunk ``index`` of content version ``(ino, content_id)``."""
        await self._store.run("put_chunk", (*self._t, ino, content_id, index, data))

    async def get_chunk(self, ino: int, content_id: bytes, index: int) -> bytes | None:
        """Chunk ``index`` of ``(ino, content_id)``, or None when it is gone."""
        rows = await self._store.run("get_chunk", (*self._t, ino, content_id, index))
        return rows[0]["data"] if rows else None

    async def delete_chunk(self, ino: int, content_id: bytes, index: int) -> None:
        """Delete chunk ``index`` of ``(ino, content_id)`` (a partition tombstone)."""
        await self._store.run("delete_chunk", (*self._t, ino, content_id, index))
