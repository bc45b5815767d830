"""``cassfs schema apply``: create the keyspace, then upgrade it version by version.

The schema folder holds ``NNN_<name>.cql`` files.  ``000_*.cql`` creates the
keyspace; ``NNN_*.cql`` with NNN >= 1 is the step that takes a keyspace from
schema version NNN-1 to NNN (``001`` builds version 1 from nothing).  A step may
also have a Python data step (:data:`DATA_STEPS`), run after its statements.

:func:`apply` reads the version recorded in ``<keyspace>.schema_version`` (none,
or no such table: a fresh keyspace, version 0), refuses a keyspace newer than
this cassfs (:data:`cached.store.SCHEMA_VERSION`), then for each version N after
the recorded one runs step N's statements, its data step, and records N.  An
upgrade that stops half-way (a crash, Ctrl-C, a timeout) resumes at the step it
stopped in, so every statement and every data step is idempotent.  A keyspace
already at the current version is left untouched.

Blocking: CLI only (the daemon never calls this; it refuses a keyspace whose
recorded version is not its own).  Stop the mounts of the previous cassfs before
upgrading: their daemons use the previous schema.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, Session
from cassandra.query import PreparedStatement, SimpleStatement

from cached.connection import ConnectionSettings
from cached.errors import StorageError
from cached.model import REGULAR
from cached.store import (
    SCHEMA_VERSION,
    ContactPoints,
    connect_cluster,
    index_bucket,
    make_cluster,
)

log = logging.getLogger(__name__)

DEFAULT_REPLICATION = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
_KEYSPACE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
_FILE_RE = re.compile(r"(\d{3})_[A-Za-z0-9_]+\.cql")

#: Seconds a schema statement (DDL) or one page of a data step may take.
DDL_TIMEOUT = 60.0
#: Inodes per page of the data steps' scans of ``inodes``.
SCAN_PAGE = 1000
#: Writes in flight during a data step.
WRITE_CONCURRENCY = 32

#: ``(version, items done so far)``: called by data steps after each page.
ProgressCallback = Callable[[int, int], None]


class SchemaTooNew(StorageError):
    """The keyspace records a schema version newer than this cassfs knows (EIO)."""


# -- the schema folder ---------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaFiles:
    """The statements of a schema folder, placeholders filled.

    ``keyspace``: the statements of ``000_*.cql``.  ``steps``: schema version ->
    the statements of its ``NNN_*.cql``, in file order.  ``files``: version ->
    the file's name (0 for the keyspace file), for messages.
    """

    keyspace: tuple[str, ...]
    steps: dict[int, tuple[str, ...]]
    files: dict[int, str]


def schema_dir() -> Path:
    """The folder of ``*.cql`` files: ``$CASSFS_SCHEMA_DIR`` or ``schema/`` of the checkout."""
    env = os.environ.get("CASSFS_SCHEMA_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "schema"


def check_keyspace(keyspace: str) -> None:
    """Raise ValueError unless ``keyspace`` is a name Cassandra accepts unquoted (<= 48)."""
    if not _KEYSPACE_RE.fullmatch(keyspace):
        raise ValueError(f"bad keyspace name {keyspace!r}: letters, digits and _, at most 48")


def parse_file(path: Path, keyspace: str, replication: str) -> list[str]:
    """The statements of one ``.cql`` file, ``{keyspace}``/``{replication}`` filled in.

    A statement ends with ``;`` at the end of a line (a ``;`` inside a trailing
    ``--`` comment does not end it); whole-line ``--`` comments are dropped; the
    returned statements have no ``;`` and no surrounding blanks.  Raises
    ValueError naming the file when its last statement has no closing ``;``.
    """
    result: list[str] = []
    current: list[str] = []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            text = "\n".join(current).strip().rstrip(";").rstrip()
            result.append(
                text.replace("{keyspace}", keyspace).replace("{replication}", replication)
            )
            current = []
    if "".join(current).strip():
        raise ValueError(f"{path.name}: statement without a closing ';'")
    return result


def load(directory: Path, keyspace: str, replication: str) -> SchemaFiles:
    """Read every ``NNN_*.cql`` of ``directory``.

    Raises ValueError for a bad keyspace name (checked first), a ``.cql`` file
    not named ``NNN_name.cql``, two files of one number, or a statement without
    its ``;``; FileNotFoundError when the folder holds no ``.cql`` file or no
    ``000_*.cql``.  Whether every step up to :data:`SCHEMA_VERSION` is there is
    checked by :func:`apply`.
    """
    check_keyspace(keyspace)
    paths = sorted(directory.glob("*.cql"))
    if not paths:
        raise FileNotFoundError(f"no .cql files in {directory}")
    by_number: dict[int, Path] = {}
    for path in paths:
        match = _FILE_RE.fullmatch(path.name)
        if match is None:
            raise ValueError(f"{path}: schema files are named NNN_name.cql (NNN: 3 digits)")
        number = int(match.group(1))
        if number in by_number:
            raise ValueError(f"{by_number[number].name} and {path.name}: two steps {number:03d}")
        by_number[number] = path
    if 0 not in by_number:
        raise FileNotFoundError(f"no 000_*.cql (the keyspace) in {directory}")
    parsed = {n: tuple(parse_file(p, keyspace, replication)) for n, p in by_number.items()}
    return SchemaFiles(
        keyspace=parsed.pop(0),
        steps=dict(sorted(parsed.items())),
        files={n: p.name for n, p in by_number.items()},
    )


# -- applying ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepReport:
    """One step applied: ``keyspace`` went from ``previous`` to schema ``version``.

    ``previous`` is 0 for a fresh keyspace (no recorded version).  ``detail``
    says what the data step did ("" when the step has none).
    """

    keyspace: str
    previous: int
    version: int
    detail: str = ""

    def __str__(self) -> str:
        if self.previous == 0:
            text = f"created schema version {self.version} in keyspace {self.keyspace}"
        else:
            text = (
                f"upgraded keyspace {self.keyspace} from version {self.previous} to {self.version}"
            )
        return f"{text}: {self.detail}" if self.detail else text


def apply(
    contact_points: ContactPoints | ConnectionSettings,
    keyspace: str,
    replication: str = DEFAULT_REPLICATION,
    *,
    on_step: Callable[[StepReport], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> int:
    """Create or upgrade ``keyspace`` to :data:`SCHEMA_VERSION`; returns that version.

    ``replication`` (a CQL map) is used only when the keyspace is created.
    ``on_step`` is called after each step is recorded; ``on_progress`` while a
    data step runs.  Raises ValueError or FileNotFoundError for a bad keyspace
    name or schema folder (before connecting), ``SchemaTooNew`` when the keyspace
    records a newer version (nothing is changed then), ``ConnectionRejected`` when
    the nodes refuse the credentials or the TLS handshake, and ``StorageError`` when
    Cassandra is unreachable or refuses a statement (apply again to resume).
    """
    files = load(schema_dir(), keyspace, replication)
    missing = [n for n in range(1, SCHEMA_VERSION + 1) if n not in files.steps]
    if missing:
        raise FileNotFoundError(
            f"no step {missing[0]:03d}_*.cql in {schema_dir()}: cassfs needs schema "
            f"version {SCHEMA_VERSION}"
        )
    cluster = make_cluster(contact_points)
    try:
        session = _connect(cluster, contact_points)
        recorded = recorded_version(session, keyspace)
        if recorded > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"keyspace {keyspace} has schema version {recorded}, newer than this cassfs "
                f"({SCHEMA_VERSION}): use a cassfs that knows schema version {recorded}; "
                "nothing was changed"
            )
        for cql in files.keyspace:
            _execute(session, cql)
        for version in range(recorded + 1, SCHEMA_VERSION + 1):
            log.info("applying %s to keyspace %s", files.files[version], keyspace)
            for cql in files.steps[version]:
                _execute(session, cql)
            data_step = DATA_STEPS.get(version)
            detail = (
                ""
                if data_step is None
                else data_step(session, keyspace, _progress_of(version, on_progress))
            )
            record_version(session, keyspace, version)
            if on_step is not None:
                on_step(StepReport(keyspace, version - 1, version, detail))
        return SCHEMA_VERSION
    finally:
        cluster.shutdown()


def _progress_of(version: int, on_progress: ProgressCallback | None) -> Callable[[int], None]:
    def progress(done: int) -> None:
        if on_progress is not None:
            on_progress(version, done)

    return progress


def recorded_version(session: Session, keyspace: str) -> int:
    """The schema version ``keyspace`` records; 0 when none (no keyspace, table or row)."""
    tables = {
        row["table_name"]
        for row in _execute(
            session,
            SimpleStatement("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s"),
            (keyspace,),
        )
    }
    if "schema_version" not in tables:
        return 0
    rows = _execute(
        session,
        SimpleStatement(
            f"SELECT version FROM {keyspace}.schema_version WHERE component = 'cassfs'",
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
        ),
    )
    return int(rows[0]["version"] or 0) if rows else 0


def record_version(session: Session, keyspace: str, version: int) -> None:
    """Record ``version`` as the schema version of ``keyspace`` (an upsert)."""
    _execute(
        session,
        SimpleStatement(
            f"INSERT INTO {keyspace}.schema_version (component, version, applied_at) "
            "VALUES ('cassfs', %s, toTimestamp(now()))",
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
        ),
        (version,),
    )


def _connect(cluster: Cluster, contact_points: ContactPoints | ConnectionSettings) -> Session:
    # The per-request timeout of what has no timeout of its own (concurrent writes, pages).
    cluster.profile_manager.profiles[EXEC_PROFILE_DEFAULT].request_timeout = DDL_TIMEOUT
    return connect_cluster(cluster, contact_points)


def _execute(
    session: Session, statement: str | SimpleStatement, params: Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    """Run one statement (blocking); rows as dicts.  StorageError when it fails."""
    log.debug("executing: %s", statement)
    try:
        return list(session.execute(statement, params, timeout=DDL_TIMEOUT))
    except Exception as exc:
        text = statement if isinstance(statement, str) else statement.query_string
        raise StorageError(f"Cassandra refused: {text.splitlines()[0]}...: {exc}") from exc


def _prepare(session: Session, cql: str, *, lwt: bool = False) -> PreparedStatement:
    try:
        prepared = session.prepare(cql)
    except Exception as exc:
        raise StorageError(f"Cassandra refused: {cql}: {exc}") from exc
    prepared.consistency_level = ConsistencyLevel.LOCAL_QUORUM
    if lwt:
        prepared.serial_consistency_level = ConsistencyLevel.LOCAL_SERIAL
    return prepared


def _run_concurrently(
    session: Session, work: Sequence[tuple[PreparedStatement, Sequence[Any]]]
) -> list[list[dict[str, Any]]]:
    """Run ``work`` with at most :data:`WRITE_CONCURRENCY` in flight; each one's rows."""
    if not work:
        return []
    try:
        results = session.execute_concurrent(
            work, concurrency=WRITE_CONCURRENCY, raise_on_first_error=True
        )
    except Exception as exc:
        raise StorageError(f"Cassandra failed during the upgrade: {exc}") from exc
    return [list(result) for _ok, result in results]


# -- data steps ----------------------------------------------------------------------------

#: ``(session, keyspace, progress(done)) -> detail``: the Python part of a step.
DataStep = Callable[[Session, str, Callable[[int], None]], str]


def upgrade_to_2(session: Session, keyspace: str, progress: Callable[[int], None]) -> str:
    """Version 2's data step: chunk key renamed, ``inode_index`` and ``versions`` backfilled.

    1. ``chunks.content_id`` becomes ``chunks.version`` (when system_schema still
       shows ``content_id``: CQL has no RENAME IF EXISTS).
    2. One paged scan of ``inodes`` (every tenant; no ALLOW FILTERING): each
       inode gets its ``inode_index`` row (bucket ``index_bucket(ino)``,
       ``created_ns`` = its ctime).  A regular file with content written by
       version 1 (size > 0, ``version`` null) gets a ``versions`` row whose id is
       its SHA-256 (its version-1 chunks are keyed by it, now in the ``version``
       column), then ``inodes.version`` = that id.  That last write is an LWT
       (``IF version = null AND content_id = <it>``) like every later flip, so
       no plain write with a client timestamp can shadow a daemon's flip.

    Idempotent (upserts and conditional writes only).  ``progress`` gets the
    inodes scanned so far after each page.  Returns the summary
    ``"N inodes indexed, M versions recorded"``.  Raises StorageError.
    """
    _rename_chunk_key(session, keyspace)
    scan = SimpleStatement(
        "SELECT owner, environment, ino, kind, size, content_id, chunk_size, ctime_ns, "
        f"version FROM {keyspace}.inodes",
        fetch_size=SCAN_PAGE,
        consistency_level=ConsistencyLevel.LOCAL_QUORUM,
    )
    # This step's own statements, as the tables stood at version 2: the daemon's (STATEMENTS)
    # may name columns a later version adds (``versions.data``, version 6).
    put_index = _prepare(
        session,
        f"INSERT INTO {keyspace}.inode_index (owner, environment, bucket, ino, kind, "
        "created_ns) VALUES (?, ?, ?, ?, ?, ?)",
    )
    put_version = _prepare(
        session,
        f"INSERT INTO {keyspace}.versions (owner, environment, ino, version, content_id, "
        "size, chunk_size, created_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    set_version = _prepare(
        session,
        f"UPDATE {keyspace}.inodes SET version = ? "
        "WHERE owner = ? AND environment = ? AND ino = ? IF version = null AND content_id = ?",
        lwt=True,
    )
    indexed = recorded = scanned = 0
    skipped: list[str] = []
    try:
        page = session.execute(scan, timeout=DDL_TIMEOUT)
    except Exception as exc:
        raise StorageError(f"scanning {keyspace}.inodes failed: {exc}") from exc
    while True:
        writes: list[tuple[PreparedStatement, Sequence[Any]]] = []
        flips: list[tuple[PreparedStatement, Sequence[Any]]] = []
        for row in page.current_rows:
            scanned += 1
            if row["kind"] is None:  # cells left by an update of a deleted inode
                continue
            tenant = (row["owner"], row["environment"])
            ino, created = row["ino"], row["ctime_ns"] or 0
            writes.append((put_index, (*tenant, index_bucket(ino), ino, row["kind"], created)))
            indexed += 1
            if row["kind"] != REGULAR or not row["size"] or row["version"] is not None:
                continue
            content_id = row["content_id"]
            if not content_id:
                skipped.append(f"{tenant[0]}/{tenant[1]} inode {ino}")
                continue
            writes.append(
                (put_version, (*tenant, ino, content_id, content_id, row["size"],
                               row["chunk_size"], created))
            )  # fmt: skip
            flips.append((set_version, (content_id, *tenant, ino, content_id)))
        _run_concurrently(session, writes)
        applied = _run_concurrently(session, flips)
        recorded += sum(bool(rows and rows[0]["[applied]"]) for rows in applied)
        progress(scanned)
        if not page.has_more_pages:
            break
        try:
            page.fetch_next_page()
        except Exception as exc:
            raise StorageError(f"scanning {keyspace}.inodes failed: {exc}") from exc
    if skipped:
        log.warning("regular files with a size but no content_id (left for fsck): %s", skipped)
    detail = f"{indexed} inodes indexed, {recorded} versions recorded"
    if skipped:
        detail += f", {len(skipped)} files without content_id left for fsck"
    return detail


def _rename_chunk_key(session: Session, keyspace: str) -> None:
    """Rename ``chunks.content_id`` to ``version`` unless that is done (StorageError)."""
    columns = {
        row["column_name"]
        for row in _execute(
            session,
            SimpleStatement(
                "SELECT column_name FROM system_schema.columns "
                "WHERE keyspace_name = %s AND table_name = 'chunks'"
            ),
            (keyspace,),
        )
    }
    if "content_id" in columns and "version" not in columns:
        _execute(session, f"ALTER TABLE {keyspace}.chunks RENAME content_id TO version")
    elif "version" not in columns or "content_id" in columns:
        raise StorageError(
            f"{keyspace}.chunks has columns {sorted(columns)}: expected content_id or version"
        )


def upgrade_to_3(session: Session, keyspace: str, progress: Callable[[int], None]) -> str:
    """Version 3's data step: every tenant's ``usage`` counters (statfs) set from its inodes.

    One paged scan of ``inodes`` (every tenant; no ALLOW FILTERING) counts, per
    (owner, environment), the inode rows and the sizes of the regular files among
    them, in bytes.  Unlinked inodes (nlink 0) count too, as the daemons' counters
    count an inode until it is purged; rows holding only cells left by an update
    of a deleted inode (no kind) are no inode.  Then each tenant's counters (and
    those of a tenant with a ``usage`` row but no inode, set to 0) are read and
    the difference is added, so the step is idempotent: run again (an upgrade
    resumed) it adds nothing.  That holds while nothing else counts: the mounts of
    the previous cassfs are stopped during an upgrade, and they do not count.

    ``progress`` gets the inodes scanned so far after each page.  Returns the
    summary ``"usage of T tenants counted: N inodes, B bytes"``.  Raises
    StorageError.
    """
    scan = SimpleStatement(
        f"SELECT owner, environment, kind, size FROM {keyspace}.inodes",
        fetch_size=SCAN_PAGE,
        consistency_level=ConsistencyLevel.LOCAL_QUORUM,
    )
    totals: dict[tuple[int, str], list[int]] = {}  # tenant -> [bytes, inodes]
    scanned = 0
    for rows in _pages(session, scan, f"scanning {keyspace}.inodes"):
        for row in rows:
            scanned += 1
            if row["kind"] is None:  # cells left by an update of a deleted inode
                continue
            figures = totals.setdefault((row["owner"], row["environment"]), [0, 0])
            figures[0] += (row["size"] or 0) if row["kind"] == REGULAR else 0
            figures[1] += 1
        progress(scanned)
    counted = {
        (row["owner"], row["environment"]): (row["bytes"] or 0, row["inodes"] or 0)
        for rows in _pages(
            session,
            SimpleStatement(
                f"SELECT owner, environment, bytes, inodes FROM {keyspace}.usage",
                fetch_size=SCAN_PAGE,
                consistency_level=ConsistencyLevel.LOCAL_QUORUM,
            ),
            f"reading {keyspace}.usage",
        )
        for row in rows
    }
    add = _prepare(  # as the table stood at version 3 (see upgrade_to_2)
        session,
        f"UPDATE {keyspace}.usage SET bytes = bytes + ?, inodes = inodes + ? "
        "WHERE owner = ? AND environment = ?",
    )
    updates: list[tuple[PreparedStatement, Sequence[Any]]] = []
    for tenant in sorted(totals.keys() | counted.keys()):
        used_bytes, inodes = totals.get(tenant, (0, 0))
        old_bytes, old_inodes = counted.get(tenant, (0, 0))
        if (used_bytes, inodes) != (old_bytes, old_inodes):
            updates.append((add, (used_bytes - old_bytes, inodes - old_inodes, *tenant)))
    _run_concurrently(session, updates)
    all_bytes = sum(figures[0] for figures in totals.values())
    all_inodes = sum(figures[1] for figures in totals.values())
    tenants = f"{len(totals)} tenant{'' if len(totals) == 1 else 's'}"
    return f"usage of {tenants} counted: {all_inodes} inodes, {all_bytes} bytes"


def _pages(
    session: Session, statement: SimpleStatement, what: str
) -> Iterator[list[dict[str, Any]]]:
    """The rows of ``statement``, one driver page at a time (blocking); StorageError
    naming ``what`` when a page cannot be read."""
    try:
        page = session.execute(statement, timeout=DDL_TIMEOUT)
        while True:
            yield list(page.current_rows)
            if not page.has_more_pages:
                return
            page.fetch_next_page()
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"{what} failed: {exc}") from exc


#: Schema version -> its data step, run after that step's statements.
DATA_STEPS: dict[int, DataStep] = {2: upgrade_to_2, 3: upgrade_to_3}


# -- terminal output -----------------------------------------------------------------------


class ConsoleReporter:
    """Prints :func:`apply`'s steps and progress; a context manager (``with ... as r``).

    Pass ``on_step=r.step, on_progress=r.progress``.  Each step is one line
    ``cassfs: <StepReport>`` given to ``echo``, and kept in ``steps``.  On a
    terminal a rich spinner counts the inodes a data step has scanned (it
    disappears when the step is done); otherwise only the lines are printed.
    """

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.steps: list[StepReport] = []
        self._echo = echo
        self._bar: Any = None
        self._tasks: dict[int, Any] = {}

    def __enter__(self) -> ConsoleReporter:
        if sys.stdout.isatty():
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TextColumn("{task.completed:,} inodes scanned"),
                TimeElapsedColumn(),
                transient=True,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def progress(self, version: int, done: int) -> None:
        """A data step of ``version`` has handled ``done`` items."""
        if self._bar is None:
            return
        if version not in self._tasks:
            self._tasks[version] = self._bar.add_task(
                f"upgrading to schema version {version}", total=None
            )
        self._bar.update(self._tasks[version], completed=done)

    def step(self, report: StepReport) -> None:
        """A step is applied and recorded: print its line."""
        self.steps.append(report)
        line = f"cassfs: {report}"
        if self._bar is None:
            self._echo(line)
            return
        if report.version in self._tasks:
            self._bar.remove_task(self._tasks.pop(report.version))
        self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
