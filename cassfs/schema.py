"""``cassfs schema apply``: create the keyspace and tables from ``schema/*.cql``.

Idempotent: every statement is ``IF NOT EXISTS`` and the version row is an
upsert.  Blocking (CLI only; the daemon never calls this).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from cassandra.cluster import NoHostAvailable

from cached.errors import StorageError
from cached.store import SCHEMA_VERSION, ContactPoints, make_cluster

log = logging.getLogger(__name__)

DEFAULT_REPLICATION = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
_KEYSPACE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")


def schema_dir() -> Path:
    """The folder of ``*.cql`` files: ``$CASSFS_SCHEMA_DIR`` or ``schema/`` of the checkout."""
    env = os.environ.get("CASSFS_SCHEMA_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "schema"


def statements(directory: Path, keyspace: str, replication: str) -> list[str]:
    """Every statement of ``directory/*.cql`` in file-name order, placeholders filled.

    A statement ends with ``;`` at the end of a line; ``--`` comments are dropped.
    Raises ValueError for a keyspace name Cassandra would refuse, or FileNotFoundError
    when the folder holds no ``.cql`` file.
    """
    if not _KEYSPACE_RE.fullmatch(keyspace):
        raise ValueError(f"bad keyspace name {keyspace!r}: letters, digits and _, at most 48")
    files = sorted(directory.glob("*.cql"))
    if not files:
        raise FileNotFoundError(f"no .cql files in {directory}")
    result: list[str] = []
    for path in files:
        lines = [
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("--")
        ]
        current: list[str] = []
        for line in lines:
            current.append(line)
            if line.rstrip().endswith(";"):
                text = "\n".join(current).strip().rstrip(";")
                result.append(
                    text.replace("{keyspace}", keyspace).replace("{replication}", replication)
                )
                current = []
        if "".join(current).strip():
            raise ValueError(f"{path.name}: statement without a closing ';'")
    return result


def apply(
    contact_points: ContactPoints, keyspace: str, replication: str = DEFAULT_REPLICATION
) -> int:
    """Apply the schema and record its version; returns :data:`SCHEMA_VERSION`.

    Raises ``StorageError`` when Cassandra is unreachable or refuses a statement.
    """
    todo = statements(schema_dir(), keyspace, replication)
    cluster = make_cluster(contact_points)
    try:
        try:
            session = cluster.connect()
        except NoHostAvailable as exc:
            raise StorageError(f"Cassandra unreachable at {contact_points}") from exc
        for cql in todo:
            log.debug("applying: %s", cql)
            try:
                session.execute(cql, timeout=60)
            except Exception as exc:
                raise StorageError(f"Cassandra refused: {cql.splitlines()[0]}...: {exc}") from exc
        # TEMPORARY (replaced by the versioned upgrade): schema 2 renames a key column.
        columns = {
            row["column_name"]
            for row in session.execute(
                "SELECT column_name FROM system_schema.columns "
                "WHERE keyspace_name = %s AND table_name = 'chunks'",
                (keyspace,),
            )
        }
        if "content_id" in columns:
            session.execute(f"ALTER TABLE {keyspace}.chunks RENAME content_id TO version")
        session.execute(
            f"INSERT INTO {keyspace}.schema_version (component, version, applied_at) "
            "VALUES ('cassfs', %s, toTimestamp(now()))",
            (SCHEMA_VERSION,),
        )
        return SCHEMA_VERSION
    finally:
        cluster.shutdown()
