"""``cassfs fsck``: check one tenant's tree in Cassandra and, with ``--repair``, mend it.

What is checked (see the README's consistency model for why each state can arise):

- every name (``dentries`` row) names an inode that exists, with the right file type,
  and no name names the root;
- every inode's ``nlink`` equals the names pointing to it (a file, symlink or special
  file may have several: hard links; a directory has one), and a directory's ``parent``
  is the directory that holds its name;
- every directory is reachable from the root (ino 1) and none is its own ancestor: a
  directory named twice (two parents, or a cycle through the root's tree) and trees cut
  off from the root (a cycle of directories naming each other, or a nameless directory
  that still holds entries) are found;
- every regular file's current version (``inodes.version``; empty: an empty file) has
  all its ``chunk_count(size, chunk_size)`` chunks of the right lengths, whose SHA-256,
  read in chunk order, equals ``content_id`` (skipped with ``content=False``); an
  absent chunk is a hole (zeros, never stored: :mod:`cached.content`) when the
  SHA-256 with zeros in its place matches, else it is reported missing;
- orphans are listed: unlinked inodes (nlink 0; maybe still open on some host),
  nameless inodes (in ``inode_index`` but named by no directory: read from its
  :data:`~cached.store.INDEX_BUCKETS` partitions, never a table scan), index rows whose
  inode is gone, inodes missing from the index, ``versions`` rows that are not their
  inode's current version, names claimed by a rename (``pending``), rename intents of
  the last :data:`INTENT_DAYS` days, and sealed directories that still have a name.

How (:meth:`Checker.run`): a breadth-first crawl from the root lists each directory
once (one partition read) and reads its inodes and their ``versions`` rows
:data:`BATCH` partitions per request, with at most ``concurrency`` requests in flight;
the regular files it finds go to ``files`` workers that stream their chunks in order
through SHA-256 (at most two chunks per file in memory).  Then the index is read and
every indexed inode the crawl did not reach is loaded, with the directories it holds.
Directories whose ``changed_ns`` or seal moved meanwhile are listed again, so that a
name created or moved during the crawl is not taken for a missing one, and the inodes
that problems are about are read again before they are reported.  The graph so
gathered is analysed in memory (:meth:`Checker.analyse`).

Repairs (``repair=True``) are safe while mounts run: anything younger than ``grace``
seconds (from ``created_ns``/``ctime_ns``/``changed_ns``, or the time inside a
time-based id) is left alone, since a running host may be about to name it or still be
using it; each repair rereads what it changes just before, and changes names only with
the name LWTs (``IF ino = ?``, ``IF pending = ?``).  Content that is missing or does not
match its checksum cannot be repaired; it is reported.  A repair that deletes or makes an
inode moves the tenant's usage counters (statfs, :mod:`cached.usage`) as a daemon would.

Limits: the crawl keeps every inode and name of the tenant in memory (the whole process
peaked at 109 MB for 22,000 inodes); an unlinked file held open on some host for longer
than ``grace`` is deleted by a repair (nothing in Cassandra records open files).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import sys
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import IO, ParamSpec, TypeVar

import trio

from cached.connection import ConnectionSettings
from cached.content import (
    CHUNK_SIZE,
    EMPTY_ID,
    INLINE_CONTENT_LIMIT,
    chunk_count,
    expected_length,
    zeros,
)
from cached.errors import CassfsError, StorageError
from cached.model import (
    BLOCKDEV,
    CHARDEV,
    DIRECTORY,
    FIFO,
    REGULAR,
    ROOT_INO,
    SOCKET,
    SYMLINK,
    Dentry,
    Inode,
    mode_of_kind,
)
from cached.recovery import STEP_DEADLINE, settle_intent
from cached.store import (
    INDEX_BUCKETS,
    INTENT_BUCKET_SECONDS,
    ContactPoints,
    Intent,
    Store,
    TenantStore,
    Version,
    index_bucket,
    intent_bucket,
    uuid_time_ns,
)

P = ParamSpec("P")
T = TypeVar("T")

#: Orphans that daemons delete themselves after their purge delay (see ``cached.reaper``).
AWAITED_ORPHANS = frozenset({"unlinked", "stale-version"})
#: Default grace period, seconds: younger orphans may belong to a running request.
DEFAULT_GRACE = 3600.0
#: Days of ``intents`` buckets read (the table's TTL is 30 days).
INTENT_DAYS = 30
#: Tries of one read before fsck gives up (a timeout under load is retried).
READ_ATTEMPTS = 3
#: Chunks of at least this many bytes are hashed in a worker thread (hashlib drops the GIL).
HASH_IN_THREAD = 64 * 1024
#: Inodes read in one request (an ``IN`` over their partitions).
BATCH = 64
#: Rounds of re-listing directories that changed while they were crawled.
RESCAN_ROUNDS = 2
#: The directory in the root that receives trees cut off from the root.
LOST_FOUND = b"lost+found"
#: Problems whose inodes are read again before they are reported.
_RECHECKED = {"links", "unlinked", "nameless", "stale-version", "orphan-index", "several-names"}

_NS = 1_000_000_000
_KIND_NAMES = {
    DIRECTORY: "directory",
    REGULAR: "file",
    SYMLINK: "symlink",
    FIFO: "fifo",
    CHARDEV: "character device",
    BLOCKDEV: "block device",
    SOCKET: "socket",
}

#: Problem code -> what the line says.
LABELS = {
    "no-root": "no root directory",
    "intent": "unfinished rename",
    "claim": "name claimed by a rename whose intent is gone",
    "stale-seal": "sealed directory that still has a name",
    "names-root": "name of the root directory",
    "dangling-name": "name of a missing inode",
    "kind-mismatch": "name with the wrong file type",
    "several-names": "directory with several names",
    "cut-off": "cut off from the root",
    "links": "wrong link count or parent",
    "unlinked": "unlinked inode (nlink 0)",
    "nameless": "nameless inode",
    "stale-version": "content version that is not current",
    "orphan-index": "index row without inode",
    "unindexed": "inode missing from inode_index",
    "missing-chunks": "missing chunks",
    "bad-content": "content does not match its inode",
    "bad-inode": "inconsistent inode",
}


@dataclass(frozen=True)
class Options:
    """What to do: ``repair`` (else only report), ``grace`` seconds (repairs leave
    anything younger alone), ``content`` (read and verify every chunk), ``concurrency``
    (queries in flight, at least 1) and ``files`` (files read at once, at least 1)."""

    repair: bool = False
    grace: float = DEFAULT_GRACE
    content: bool = True
    concurrency: int = 64
    files: int = 32


@dataclass
class Problem:
    """One thing found wrong.

    ``code`` is a key of :data:`LABELS`; ``where`` the path from the root when known
    (``""`` otherwise); ``born_ns`` the newest time (ns since the epoch) of the objects
    involved, 0 when unknown (then it counts as older than any grace).  ``fix``, when
    the problem is repairable, returns what it did or raises :class:`NotRepaired`;
    repairs run by ``stage``, those of a ``sequential`` stage one at a time.
    """

    code: str
    ino: int
    where: str
    detail: str
    born_ns: int = 0
    fix: Callable[[], Awaitable[str]] | None = None
    stage: int = 0
    sequential: bool = False
    outcome: str = ""
    repaired: bool = False

    def line(self) -> str:
        """``label: where (ino N): detail [outcome]``, one line."""
        where = f"{self.where} (ino {self.ino})" if self.where else f"ino {self.ino}"
        text = f"{LABELS.get(self.code, self.code)}: {where}: {self.detail}"
        return f"{text} [{self.outcome}]" if self.outcome else text


class NotRepaired(Exception):
    """Raised by a fix that found things changed since they were read (the message says how)."""


@dataclass
class Stats:
    """Live figures for a progress display; sizes in bytes."""

    phase: str = "starting"
    inodes_expected: int = 0
    inodes: int = 0
    directories: int = 0
    files_queued: int = 0
    files_done: int = 0
    bytes_queued: int = 0
    bytes_read: int = 0


@dataclass
class Report:
    """The outcome of one run: problems, what was checked, and how long it took (seconds)."""

    problems: list[Problem]
    inodes: int
    directories: int
    bytes_read: int
    content_checked: bool
    seconds: float
    #: Orphans born after this (ns since the epoch; younger than the grace) are awaited.
    young_before_ns: int = 0

    @property
    def repaired(self) -> int:
        """How many problems were repaired."""
        return sum(p.repaired for p in self.problems)

    def awaited(self, problem: Problem) -> bool:
        """True for an orphan younger than the grace that a daemon deletes itself.

        Every rewrite and unlink leaves one for the purge delay (``cassfs up
        --purge-delay``, 120 s by default); it is listed but is nothing wrong.
        """
        return problem.code in AWAITED_ORPHANS and problem.born_ns > self.young_before_ns

    @property
    def exit_status(self) -> int:
        """0 when nothing is wrong (everything found was repaired or is awaited), else 1."""
        return 0 if all(p.repaired or self.awaited(p) for p in self.problems) else 1

    def summary(self) -> str:
        """``fsck: 20412 inodes, 1873 directories, 88 MB checked in 41.2 s: 0 problems``."""
        checked = f"{_size(self.bytes_read)} checked" if self.content_checked else "content skipped"
        n = len(self.problems)
        found = f"{n} problem{'' if n == 1 else 's'}"
        awaited = sum(self.awaited(p) for p in self.problems)
        if awaited:
            found += f" ({awaited} young orphans that daemons delete after their purge delay)"
        if self.repaired:
            found += f", {self.repaired} repaired"
        return (
            f"fsck: {self.inodes} inodes, {self.directories} directories, {checked} "
            f"in {self.seconds:.1f} s: {found}"
        )


@dataclass
class _Listing:
    """One directory partition as read: entries by name, seal id, last change (ns)."""

    entries: dict[bytes, Dentry]
    sealed: bytes
    changed_ns: int


def _size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 10 * scale else f"{n // scale} {unit}"
    return f"{n} B"


def _text(name: bytes) -> str:
    return name.decode(errors="backslashreplace")


def _join(directory: str, name: bytes) -> str:
    return f"{directory.rstrip('/')}/{_text(name)}"


def _born(*times: int) -> int:
    return max(times, default=0)


class Checker:
    """One fsck run over ``store`` (a tenant).  Use :meth:`run` once.

    ``stats`` moves while it runs (for a progress display).  Every read goes through
    a limiter of ``options.concurrency`` queries and is retried up to
    :data:`READ_ATTEMPTS` times; a read that still fails raises ``StorageError``
    out of :meth:`run`.  A failed repair is reported on its problem instead.
    """

    def __init__(self, store: TenantStore, options: Options | None = None) -> None:
        self.store = store
        self.options = options or Options()
        self.stats = Stats()
        self._limit = trio.CapacityLimiter(max(1, self.options.concurrency))
        #: ino -> inode, or None when a name or index row pointed at a missing inode
        self.inodes: dict[int, Inode | None] = {}
        self._queued: set[int] = set()
        #: directory ino -> its listing (also for names of missing directory inodes)
        self.dirs: dict[int, _Listing] = {}
        self._listed: set[int] = set()
        self.versions: dict[int, list[Version]] = {}
        self.index: dict[int, tuple[int, int]] = {}
        self.intents: dict[bytes, Intent] = {}
        self._content_problems: dict[int, Problem] = {}
        self._files: trio.MemorySendChannel[Inode] | None = None
        self._filed: set[int] = set()
        self._lost_found_lock = trio.Lock()
        self._lost_found: int = 0
        self._paths: dict[int, str] = {}
        self._names: dict[int, list[Dentry]] = {}

    # -- running --------------------------------------------------------------------------

    async def run(self) -> Report:
        """Check the tenant (and repair, per the options); the :class:`Report`.

        Raises ``StorageError`` when Cassandra keeps failing a read.
        """
        started = time.monotonic()
        send, receive = trio.open_memory_channel[Inode](math.inf)
        async with trio.open_nursery() as nursery:
            async with receive:
                for _ in range(max(1, self.options.files)):
                    nursery.start_soon(self._file_worker, receive.clone())
            async with send:
                self._files = send
                self.stats.phase = "index"
                self.stats.inodes_expected = len(await self._read_index())
                self.stats.phase = "crawl"
                await self._crawl(inodes=[(ROOT_INO, DIRECTORY)])
                self.stats.phase = "orphans"
                self.index = await self._read_index()
                self.intents = await self._read_intents()
                await self._crawl(inodes=[(ino, kind) for ino, (kind, _) in self.index.items()])
                self.stats.phase = "recrawl"
                await self._recrawl_changed()
                await self._read_claimed_intents()
                self.stats.phase = "content"
            self._files = None
        self.stats.phase = "analysis"
        problems = await self._confirm(self.analyse())
        seen_ns = time.time_ns()
        if self.options.repair:
            self.stats.phase = "repair"
            await self._repair(problems, seen_ns)
        self.stats.phase = "done"
        live = [i for i in self.inodes.values() if i is not None]
        return Report(
            problems=problems,
            inodes=len(live),
            directories=sum(i.kind == DIRECTORY for i in live),
            bytes_read=self.stats.bytes_read,
            content_checked=self.options.content,
            seconds=time.monotonic() - started,
            young_before_ns=seen_ns - int(self.options.grace * _NS),
        )

    async def _read(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kw: P.kwargs) -> T:
        """``await fn(*args)`` within the query limiter, retried on ``StorageError``."""
        for attempt in range(READ_ATTEMPTS):
            try:
                async with self._limit:
                    return await fn(*args, **kw)
            except StorageError:
                if attempt == READ_ATTEMPTS - 1:
                    raise
            await trio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    async def _write(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kw: P.kwargs) -> T:
        """``await fn(*args)`` within the query limiter, not retried (repairs)."""
        async with self._limit:
            return await fn(*args, **kw)

    async def _count_usage(self, bytes_delta: int, inodes_delta: int) -> None:
        """Move the tenant's usage counters (statfs) by a repair that deleted or made an
        inode: ``bytes_delta`` bytes, ``inodes_delta`` inodes.  A failure is reported on
        stderr, not raised (the repair is done; the figures are approximate)."""
        try:
            await self._write(self.store.add_usage, bytes_delta, inodes_delta)
        except CassfsError as exc:
            print(f"fsck: usage counters not updated: {exc}", file=sys.stderr)

    @staticmethod
    async def _each(fn: Callable[[T], Awaitable[None]], items: Iterable[T]) -> None:
        """Run ``fn(item)`` for every item concurrently (bounded by the query limiter)."""
        async with trio.open_nursery() as nursery:
            for item in items:
                nursery.start_soon(fn, item)

    # -- gathering ------------------------------------------------------------------------

    async def _read_index(self) -> dict[int, tuple[int, int]]:
        """``{ino: (kind, created_ns)}`` from every bucket of ``inode_index``."""
        index: dict[int, tuple[int, int]] = {}

        async def bucket(number: int) -> None:
            for ino, kind, created_ns in await self._read(self.store.list_index, number):
                index[ino] = (kind, created_ns)

        await self._each(bucket, range(INDEX_BUCKETS))
        return index

    async def _read_intents(self) -> dict[bytes, Intent]:
        """Every intent of the last :data:`INTENT_DAYS` days (and the next hour), by id."""
        now = intent_bucket(time.time_ns())
        first = now - INTENT_DAYS * 86400 // INTENT_BUCKET_SECONDS
        intents: dict[bytes, Intent] = {}

        async def bucket(number: int) -> None:
            for intent in await self._read(self.store.list_intents, number):
                intents[intent.id] = intent

        await self._each(bucket, range(first, now + 2))
        return intents

    async def _read_claimed_intents(self) -> None:
        """Read the intents of claims that the bucket listing did not show (older ones)."""
        claims = {
            entry.pending
            for listing in self.dirs.values()
            for entry in listing.entries.values()
            if entry.pending and entry.pending not in self.intents
        }

        async def one(claim: bytes) -> None:
            intent = await self._read(self.store.get_intent, claim)
            if intent is not None:
                self.intents[intent.id] = intent

        await self._each(one, claims)

    async def _crawl(
        self, *, inodes: Iterable[tuple[int, int]] = (), dirs: Iterable[int] = ()
    ) -> None:
        """Load ``inodes`` (``(ino, kind hint)``) and list ``dirs`` (again), following every
        directory found, until nothing new is left; each inode is read once per run.

        Inodes are read :data:`BATCH` at a time (one ``IN`` request), and so are the
        versions of the regular files among them.
        """
        send, receive = trio.open_memory_channel[int | list[tuple[int, int]]](math.inf)
        pending = 0

        def put(job: int | list[tuple[int, int]]) -> None:
            nonlocal pending
            pending += 1
            send.send_nowait(job)

        def put_inodes(candidates: Iterable[tuple[int, int]]) -> None:
            batch: list[tuple[int, int]] = []
            for ino, hint in candidates:
                if ino in self._queued:
                    continue
                self._queued.add(ino)
                batch.append((ino, hint))
                if len(batch) == BATCH:
                    put(batch)
                    batch = []
            if batch:
                put(batch)

        async def load(batch: list[tuple[int, int]]) -> None:
            found = await self._read(self.store.get_inodes, [ino for ino, _ in batch])
            files = [inode for inode in found.values() if inode.kind == REGULAR]
            if files:
                versions = await self._read(self.store.list_versions_of, [i.ino for i in files])
                for inode in files:
                    self.versions[inode.ino] = versions.get(inode.ino, [])
                    self._queue_file(inode)
            for ino, hint in batch:
                loaded = found.get(ino)
                self.inodes[ino] = loaded
                if loaded is not None:
                    self.stats.inodes += 1
                    self.stats.directories += loaded.kind == DIRECTORY
                is_dir = loaded.kind == DIRECTORY if loaded is not None else hint == DIRECTORY
                if is_dir and ino not in self._listed:
                    self._listed.add(ino)
                    put(ino)

        async def list_dir(ino: int) -> None:
            entries, sealed, changed_ns = await self._read(self.store.list_directory, ino)
            self.dirs[ino] = _Listing({e.name: e for e in entries}, sealed, changed_ns)
            put_inodes((entry.ino, entry.kind) for entry in entries)

        async def worker() -> None:
            nonlocal pending
            async for job in receive:
                if isinstance(job, int):
                    await list_dir(job)
                else:
                    await load(job)
                pending -= 1
                if pending == 0:
                    await send.aclose()

        put_inodes(inodes)
        for ino in dirs:
            self._listed.add(ino)
            put(ino)
        if pending == 0:
            return
        async with trio.open_nursery() as nursery:
            for _ in range(max(1, self.options.concurrency)):
                nursery.start_soon(worker)

    async def _recrawl_changed(self) -> None:
        """List again the directories whose seal or ``changed_ns`` moved since they were
        listed (names created, moved or removed during the crawl), and crawl what is new."""
        changed: list[int] = []

        async def look(ino: int) -> None:
            state = await self._read(self.store.directory_state, ino)
            listing = self.dirs[ino]
            if state != (listing.sealed, listing.changed_ns):
                changed.append(ino)

        for _round in range(RESCAN_ROUNDS):
            changed.clear()
            await self._each(look, list(self.dirs))
            if not changed:
                return
            await self._crawl(dirs=list(changed))

    def _queue_file(self, inode: Inode) -> None:
        """Hand a regular file to the content workers (once; only when checking content)."""
        if self._files is None or inode.ino in self._filed or not self.options.content:
            return
        self._filed.add(inode.ino)
        self.stats.files_queued += 1
        self.stats.bytes_queued += inode.size
        self._files.send_nowait(inode)

    # -- files ----------------------------------------------------------------------------

    async def _file_worker(self, receive: trio.MemoryReceiveChannel[Inode]) -> None:
        async with receive:
            async for inode in receive:
                await self._check_file(inode)
                self.stats.files_done += 1

    async def _check_file(self, inode: Inode) -> None:
        """Verify the current version of a regular file.

        Content that fails makes it reread the inode: a rewrite on some host may just
        have flipped it to a new version (and deleted the old one's chunks).
        """
        for _attempt in range(3):
            problem = await self._verify(inode)
            if problem is None:
                self._content_problems.pop(inode.ino, None)
                return
            self._content_problems[inode.ino] = problem
            fresh = await self._reread(inode)
            if fresh.version == inode.version:
                return
            inode = fresh

    async def _reread(self, inode: Inode) -> Inode:
        """The inode as Cassandra has it now (recorded); ``inode`` itself when it is gone."""
        fresh = await self._read(self.store.get_inode, inode.ino)
        if fresh is None:
            return inode
        self.inodes[inode.ino] = fresh
        return fresh

    async def _verify(self, inode: Inode) -> Problem | None:
        """Check the current version of ``inode``: the bytes its ``versions`` row keeps
        (small content, schema 6), else chunk by chunk; the problem, or None."""
        ino, size, version, chunk_size = inode.ino, inode.size, inode.version, inode.chunk_size
        if not version:
            if size:
                return Problem("bad-inode", ino, "", f"size {size} B but no content version")
            if inode.content_id not in (b"", EMPTY_ID):
                return Problem(
                    "bad-content", ino, "", "empty, but its content_id is not that of no bytes"
                )
            return None
        if size < 0 or (size and chunk_size <= 0):
            return Problem("bad-inode", ino, "", f"size {size} B, chunk size {chunk_size} B")
        if size <= INLINE_CONTENT_LIMIT:
            kept = await self._read(self.store.get_version_data, ino, version)
            if kept is None:
                # Its versions row is written beside the flip that puts the bytes in the
                # inode row: a daemon that died between the two left only the latter.
                current, in_row = await self._read(self.store.get_inode_content, ino)
                if current is not None and current.version == version:
                    kept = in_row
            if kept is not None:  # schema 6: the bytes in the version's row, no chunks
                self.stats.bytes_read += len(kept)
                if len(kept) == size and hashlib.sha256(kept).digest() == inode.content_id:
                    return None
                return Problem(
                    "bad-content",
                    ino,
                    "",
                    f"the {len(kept)} B kept in the row of version {version.hex()[:12]} "
                    "are not the content the inode names",
                )
        count = chunk_count(size, chunk_size if chunk_size > 0 else CHUNK_SIZE)
        digest = hashlib.sha256()
        missing: list[int] = []  # absent: holes if the checksum matches with zeros there
        wrong: list[int] = []
        total = 0

        async def consume(index: int, data: bytes | None) -> None:
            nonlocal total
            if data is None:
                missing.append(index)
                data = zeros(expected_length(size, chunk_size, index))
            else:
                self.stats.bytes_read += len(data)
                if len(data) != min(chunk_size, size - index * chunk_size):
                    wrong.append(index)
            total += len(data)
            if wrong:
                return  # no checksum to compute any more
            if len(data) >= HASH_IN_THREAD:
                await trio.to_thread.run_sync(digest.update, data)
            else:
                digest.update(data)

        await self._stream(ino, version, count, consume)
        label = version.hex()[:12]
        if wrong:
            return Problem(
                "bad-content",
                ino,
                "",
                f"chunk {wrong[0]} of version {label} has the wrong length "
                f"({len(wrong)} of {count} chunks)",
            )
        if digest.digest() == inode.content_id:
            return None  # absent chunks, if any, were holes
        if missing:
            shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
            return Problem(
                "missing-chunks",
                ino,
                "",
                f"{len(missing)} of {count} chunks of version {label} are missing ({shown})",
            )
        return Problem(
            "bad-content",
            ino,
            "",
            f"SHA-256 of the {total} B of version {label} is {digest.hexdigest()[:16]}..., "
            f"the inode says {inode.content_id.hex()[:16]}...",
        )

    async def _stream(
        self,
        ino: int,
        version: bytes,
        count: int,
        consume: Callable[[int, bytes | None], Awaitable[None]],
    ) -> None:
        """Feed chunks ``0..count-1`` of ``(ino, version)`` to ``consume`` in order (None:
        missing), reading the next chunk while one is consumed: two chunks in memory."""
        if count <= 1:
            for index in range(count):
                await consume(index, await self._read(self.store.get_chunk, ino, version, index))
            return
        send, receive = trio.open_memory_channel[tuple[int, bytes | None]](0)

        async def produce() -> None:
            async with send:
                for index in range(count):
                    data = await self._read(self.store.get_chunk, ino, version, index)
                    await send.send((index, data))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            async with receive:
                async for index, data in receive:
                    await consume(index, data)

    # -- analysis -------------------------------------------------------------------------

    async def _confirm(self, problems: list[Problem]) -> list[Problem]:
        """Read again the inodes (and index rows) that problems are about, then analyse
        again: what changed while the tenant was crawled (a file unlinked, an inode
        purged, a version flipped) is then not reported as damage."""
        inos = {p.ino for p in problems if p.code in _RECHECKED}
        unindexed = {p.ino for p in problems if p.code == "unindexed"}
        if not inos and not unindexed:
            return problems

        async def reread(ino: int) -> None:
            self.inodes[ino] = await self._read(self.store.get_inode, ino)

        await self._each(reread, inos)
        gone = {ino for ino in inos if self.inodes.get(ino) is None}
        buckets = {index_bucket(ino) for ino in gone | unindexed}

        async def relist(bucket: int) -> None:
            rows = await self._read(self.store.list_index, bucket)
            for ino in [i for i in self.index if index_bucket(i) == bucket]:
                del self.index[ino]
            self.index.update((ino, (kind, created_ns)) for ino, kind, created_ns in rows)

        await self._each(relist, buckets)
        return self.analyse()

    def analyse(self) -> list[Problem]:
        """Every problem in what was gathered, each with its fix when one is safe to offer.

        Pure: reads nothing from Cassandra.
        """
        inodes = {ino: inode for ino, inode in self.inodes.items() if inode is not None}
        names: dict[int, list[Dentry]] = defaultdict(list)
        for listing in self.dirs.values():
            for entry in listing.entries.values():
                names[entry.ino].append(entry)
        self._names = names
        reached = self._reach()
        busy = self._busy()
        problems: list[Problem] = []
        if ROOT_INO not in inodes:
            problems.append(
                Problem(
                    "no-root",
                    ROOT_INO,
                    "/",
                    "the tenant has no root inode (never mounted, or wrong --owner/--environment?)",
                )
            )
        problems += self._rename_problems()
        problems += self._name_problems(inodes)
        problems += self._seal_problems(inodes, names)
        detached, tops = self._detached(inodes, reached, names)
        problems += detached
        problems += self._link_problems(inodes, names, busy)
        doomed, orphans = self._orphans(inodes, reached, names, busy, tops)
        problems += orphans
        problems += self._index_problems(inodes)
        problems += self._version_problems(inodes, doomed)
        for ino, problem in self._content_problems.items():
            if ino not in doomed:
                problem.where = self._where(ino)
                problem.stage = 10
                problems.append(problem)
        problems.sort(key=lambda p: (p.stage, p.where or "~", p.ino, p.detail))
        return problems

    def _reach(self) -> set[int]:
        """Inodes reachable from the root; records the path of every reached directory."""
        reached = {ROOT_INO}
        self._paths = {ROOT_INO: "/"}
        queue = deque([ROOT_INO])
        while queue:
            directory = queue.popleft()
            listing = self.dirs.get(directory)
            if listing is None:
                continue
            for name in sorted(listing.entries):
                child = listing.entries[name].ino
                if child in reached:
                    continue
                reached.add(child)
                if child in self.dirs:
                    self._paths[child] = _join(self._paths[directory], name)
                    queue.append(child)
        return reached

    def _busy(self) -> set[int]:
        """Inodes a rename in progress (an intent, or a claimed name) is changing."""
        busy = {i.ino for i in self.intents.values()}
        busy |= {i.replaced for i in self.intents.values() if i.replaced}
        for listing in self.dirs.values():
            busy |= {e.ino for e in listing.entries.values() if e.pending}
        return busy

    def _dir_path(self, directory: int) -> str:
        """The path of a directory; trees cut off from the root read ``<cut off at ino N>/...``."""
        if directory in self._paths:
            return self._paths[directory]
        parts: list[bytes] = []
        seen: set[int] = set()
        current = directory
        while current not in self._paths:
            entries = self._names.get(current)
            if not entries or current in seen or len(parts) > 64:
                return "/".join([f"<cut off at ino {current}>", *map(_text, reversed(parts))])
            seen.add(current)
            parts.append(entries[0].name)
            current = entries[0].parent
        return "/".join([self._paths[current].rstrip("/"), *map(_text, reversed(parts))])

    def _where(self, ino: int) -> str:
        """The path of ``ino`` through its first name, ``""`` when it has none."""
        if ino in self._paths:
            return self._paths[ino]
        entries = self._names.get(ino)
        if not entries:
            return ""
        return _join(self._dir_path(entries[0].parent), entries[0].name)

    def _rename_problems(self) -> list[Problem]:
        problems = []
        for intent in self.intents.values():
            source = _join(self._dir_path(intent.old_parent), intent.old_name)
            target = _join(self._dir_path(intent.new_parent), intent.new_name)
            problems.append(
                Problem(
                    "intent",
                    intent.ino,
                    source,
                    f"rename to {target} started {_ago(intent.started_ns)}",
                    born_ns=_born(intent.started_ns, uuid_time_ns(intent.id)),
                    fix=self._fix_intent(intent),
                    stage=1,
                )
            )
        for directory, listing in self.dirs.items():
            for entry in listing.entries.values():
                if entry.pending and entry.pending not in self.intents:
                    problems.append(
                        Problem(
                            "claim",
                            entry.ino,
                            _join(self._dir_path(directory), entry.name),
                            f"claimed by rename {entry.pending.hex()[:12]}",
                            born_ns=uuid_time_ns(entry.pending),
                            fix=self._fix_claim(entry),
                            stage=1,
                        )
                    )
        return problems

    def _name_problems(self, inodes: dict[int, Inode]) -> list[Problem]:
        problems = []
        for directory, listing in self.dirs.items():
            for entry in listing.entries.values():
                where = _join(self._dir_path(directory), entry.name)
                inode = inodes.get(entry.ino)
                if entry.ino == ROOT_INO:
                    problems.append(
                        Problem(
                            "names-root",
                            entry.ino,
                            where,
                            "the root can have no name",
                            born_ns=listing.changed_ns,
                            fix=self._fix_drop_name(entry),
                            stage=3,
                        )
                    )
                elif entry.pending:
                    continue  # a rename's: settled with its intent
                elif inode is None:
                    held = self.dirs.get(entry.ino)
                    holds = len(held.entries) if held is not None else 0
                    detail = "names no inode"
                    if holds:
                        detail += f"; that directory still holds {holds} entries"
                    problems.append(
                        Problem(
                            "dangling-name",
                            entry.ino,
                            where,
                            detail,
                            born_ns=listing.changed_ns,
                            fix=self._fix_dangling(entry, holds > 0),
                            stage=3,
                        )
                    )
                elif inode.kind != entry.kind:
                    problems.append(
                        Problem(
                            "kind-mismatch",
                            entry.ino,
                            where,
                            f"the name says {_kind(entry.kind)}, "
                            f"the inode is a {_kind(inode.kind)}",
                            born_ns=listing.changed_ns,
                            fix=self._fix_kind(entry, inode.kind),
                            stage=3,
                        )
                    )
        return problems

    def _seal_problems(
        self, inodes: dict[int, Inode], names: dict[int, list[Dentry]]
    ) -> list[Problem]:
        problems = []
        for directory, listing in self.dirs.items():
            inode = inodes.get(directory)
            if not listing.sealed or inode is None or inode.nlink == 0:
                continue
            if directory != ROOT_INO and not names.get(directory):
                continue  # removed: a removed directory stays sealed
            problems.append(
                Problem(
                    "stale-seal",
                    directory,
                    self._dir_path(directory),
                    f"sealed by {listing.sealed.hex()[:12]} (an rmdir or rename that died?)",
                    born_ns=uuid_time_ns(listing.sealed),
                    fix=self._fix_seal(directory, listing.sealed),
                    stage=2,
                )
            )
        return problems

    def _detached(
        self, inodes: dict[int, Inode], reached: set[int], names: dict[int, list[Dentry]]
    ) -> tuple[list[Problem], set[int]]:
        """Trees cut off from the root, one problem each; also the nameless tops of such
        trees (not orphans: they hold entries)."""
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        cycles: dict[int, list[int]] = {}
        for ino in inodes:
            if ino in reached or not names.get(ino):
                continue
            chain: list[int] = []
            current = ino
            while True:
                if current in chain:
                    cycle = chain[chain.index(current) :]
                    key = ("cycle", min(cycle))
                    cycles[min(cycle)] = cycle
                    break
                chain.append(current)
                up = names.get(current)
                if not up:
                    key = ("top", current)
                    break
                current = up[0].parent
            groups[key].append(ino)
        problems: list[Problem] = []
        tops: set[int] = set()
        for (shape, anchor), members in groups.items():
            count = len(set(members))
            changed = _born(*(self.dirs[m].changed_ns for m in members if m in self.dirs))
            if shape == "cycle":
                cycle = cycles[anchor]
                ring = " -> ".join(f"{_text(names[d][0].name)} (ino {d})" for d in reversed(cycle))
                top = inodes.get(anchor)
                problems.append(
                    Problem(
                        "cut-off",
                        anchor,
                        "",
                        f"directories name each other in a cycle: {ring}; {count} inodes in it "
                        "and below",
                        born_ns=_born(changed, top.ctime_ns if top else 0),
                        fix=self._fix_reconnect(anchor, names[anchor][0]),
                        stage=5,
                        sequential=True,
                    )
                )
                continue
            tops.add(anchor)
            top = inodes.get(anchor)
            can_fix = top is not None and top.kind == DIRECTORY
            problems.append(
                Problem(
                    "cut-off",
                    anchor,
                    "",
                    f"{'nameless directory' if can_fix else 'missing directory'} holding "
                    f"{count} inodes",
                    born_ns=_born(changed, top.ctime_ns if top else 0),
                    fix=self._fix_reconnect(anchor, None) if can_fix else None,
                    stage=5,
                    sequential=True,
                )
            )
        return problems, tops

    def _link_problems(
        self, inodes: dict[int, Inode], names: dict[int, list[Dentry]], busy: set[int]
    ) -> list[Problem]:
        problems = []
        for ino, inode in inodes.items():
            entries = names.get(ino)
            if ino == ROOT_INO or ino in busy or not entries:
                continue
            changed = _born(inode.ctime_ns, *(self.dirs[e.parent].changed_ns for e in entries))
            if inode.kind == DIRECTORY and len(entries) > 1:
                keep = self._keep_name(inode, entries)
                extra = [e for e in entries if e is not keep]
                listed = ", ".join(_join(self._dir_path(e.parent), e.name) for e in entries)
                problems.append(
                    Problem(
                        "several-names",
                        ino,
                        self._where(ino),
                        f"{len(entries)} names ({listed}); its parent is {inode.parent}",
                        born_ns=changed,
                        fix=self._fix_several_names(inode, keep, extra),
                        stage=4,
                    )
                )
                continue
            nlink = len(entries)
            parent = entries[0].parent if inode.kind == DIRECTORY else inode.parent
            wrong = []
            if inode.nlink != nlink:
                wrong.append(f"nlink {inode.nlink}, {nlink} name{'' if nlink == 1 else 's'}")
            if parent != inode.parent:
                wrong.append(f"parent {inode.parent}, named in {parent}")
            if wrong:
                problems.append(
                    Problem(
                        "links",
                        ino,
                        self._where(ino),
                        "; ".join(wrong),
                        born_ns=changed,
                        fix=self._fix_links(inode, nlink, parent),
                        stage=6,
                    )
                )
        return problems

    def _keep_name(self, inode: Inode, entries: list[Dentry]) -> Dentry:
        """Of a directory's several names: the one in its ``parent``, else the shallowest."""
        for entry in entries:
            if entry.parent == inode.parent:
                return entry

        def depth(entry: Dentry) -> tuple[bool, int, str]:
            path = self._dir_path(entry.parent)
            return entry.parent not in self._paths, path.count("/"), path

        return min(entries, key=depth)

    def _orphans(
        self,
        inodes: dict[int, Inode],
        reached: set[int],
        names: dict[int, list[Dentry]],
        busy: set[int],
        tops: set[int],
    ) -> tuple[set[int], list[Problem]]:
        """Unlinked and nameless inodes: ``(their inos, problems)``."""
        doomed: set[int] = set()
        problems = []
        for ino, inode in inodes.items():
            if ino == ROOT_INO or ino in reached or names.get(ino) or ino in tops or ino in busy:
                continue
            doomed.add(ino)
            created = self.index.get(ino, (0, 0))[1]
            if inode.nlink == 0:
                code, detail = "unlinked", f"{_kind(inode.kind)} unlinked {_ago(inode.ctime_ns)}"
            else:
                code = "nameless"
                detail = f"{_kind(inode.kind)} with nlink {inode.nlink}, created {_ago(created)}"
            if inode.kind == REGULAR:
                detail += f", {_size(inode.size)}"
            problems.append(
                Problem(
                    code,
                    ino,
                    "",
                    detail,
                    born_ns=_born(inode.ctime_ns, created),
                    fix=self._fix_delete(inode),
                    stage=7,
                )
            )
        return doomed, problems

    def _index_problems(self, inodes: dict[int, Inode]) -> list[Problem]:
        problems = []
        for ino, (kind, created_ns) in self.index.items():
            if ino not in inodes:
                problems.append(
                    Problem(
                        "orphan-index",
                        ino,
                        "",
                        f"{_kind(kind)} indexed {_ago(created_ns)}",
                        born_ns=created_ns,
                        fix=self._fix_orphan_index(ino),
                        stage=9,
                    )
                )
        for ino, inode in inodes.items():
            if ino != ROOT_INO and ino not in self.index:
                problems.append(
                    Problem(
                        "unindexed",
                        ino,
                        self._where(ino),
                        "fsck could not find it if it lost its names",
                        born_ns=inode.ctime_ns,
                        fix=self._fix_unindexed(inode),
                        stage=9,
                    )
                )
        return problems

    def _version_problems(self, inodes: dict[int, Inode], doomed: set[int]) -> list[Problem]:
        problems = []
        for ino, versions in self.versions.items():
            inode = inodes.get(ino)
            if inode is None or ino in doomed:
                continue
            for version in versions:
                if version.version == inode.version:
                    continue
                problems.append(
                    Problem(
                        "stale-version",
                        ino,
                        self._where(ino),
                        f"version {version.version.hex()[:12]} of {_size(version.size)} "
                        f"written {_ago(version.created_ns)}",
                        # replaced at the latest by the inode's last change (ctime):
                        # a daemon deletes it a purge delay after that
                        born_ns=_born(
                            version.created_ns, uuid_time_ns(version.version), inode.ctime_ns
                        ),
                        fix=self._fix_stale_version(ino, version),
                        stage=8,
                    )
                )
        return problems

    # -- repairs --------------------------------------------------------------------------

    async def _repair(self, problems: list[Problem], seen_ns: int) -> None:
        """Run the fix of every problem past the grace, stage by stage.

        ``seen_ns`` is when the problems were last confirmed.  Nameless inodes are
        deleted only once they were seen nameless ``min(grace, STEP_DEADLINE)`` seconds
        before: an unlink or a rename over a name removes the name first and marks the
        inode unlinked (nlink 0) just after, within a daemon's step deadline; the fix
        then finds the inode changed and leaves it to a later run.
        """
        now = time.time_ns()
        grace_ns = int(self.options.grace * _NS)
        by_stage: dict[int, list[Problem]] = defaultdict(list)
        for problem in problems:
            if problem.fix is None:
                problem.outcome = "not repairable"
                continue
            age = now - problem.born_ns
            if problem.born_ns and age < grace_ns:
                problem.outcome = (
                    f"left alone: {age / _NS:.0f} s old, younger than the grace "
                    f"({self.options.grace:g} s)"
                )
                continue
            by_stage[problem.stage].append(problem)
        for stage in sorted(by_stage):
            todo = by_stage[stage]
            if any(p.code == "nameless" for p in todo):
                settle = min(self.options.grace, STEP_DEADLINE) - (time.time_ns() - seen_ns) / _NS
                if settle > 0:
                    self.stats.phase = f"waiting {settle:.0f} s before deleting nameless inodes"
                    await trio.sleep(settle)
                    self.stats.phase = "repair"
            if todo[0].sequential:
                for problem in todo:
                    await self._apply(problem)
            else:
                await self._each(self._apply, todo)

    @staticmethod
    async def _apply(problem: Problem) -> None:
        assert problem.fix is not None
        try:
            problem.outcome = await problem.fix()
            problem.repaired = True
        except NotRepaired as exc:
            problem.outcome = f"not repaired: {exc}"
        except CassfsError as exc:
            problem.outcome = f"repair failed: {exc}"

    def _fix_intent(self, intent: Intent) -> Callable[[], Awaitable[str]]:
        async def fix() -> str:
            return f"rename {await self._write(settle_intent, self.store, intent)}"

        return fix

    def _fix_claim(self, entry: Dentry) -> Callable[[], Awaitable[str]]:
        async def fix() -> str:
            if await self._read(self.store.get_intent, entry.pending) is not None:
                raise NotRepaired("its intent is back; run fsck again")
            if not await self._write(
                self.store.release_claim, entry.parent, entry.name, entry.pending
            ):
                raise NotRepaired("the claim changed meanwhile")
            return "claim released"

        return fix

    def _fix_seal(self, directory: int, seal: bytes) -> Callable[[], Awaitable[str]]:
        async def fix() -> str:
            if not await self._write(self.store.unseal_dir, directory, seal):
                raise NotRepaired("the seal changed meanwhile")
            return "seal lifted"

        return fix

    def _fix_drop_name(self, entry: Dentry) -> Callable[[], Awaitable[str]]:
        async def fix() -> str:
            outcome = await self._write(
                self.store.delete_dentry, entry.parent, entry.name, entry.ino, time.time_ns()
            )
            if not outcome.applied:
                raise NotRepaired("the name changed meanwhile")
            return "name removed"

        return fix

    def _fix_dangling(self, entry: Dentry, holds_entries: bool) -> Callable[[], Awaitable[str]]:
        async def fix() -> str:
            if await self._read(self.store.get_inode, entry.ino) is not None:
                raise NotRepaired("the inode exists now")
            if not holds_entries:
                return await self._fix_drop_name(entry)()
            now = time.time_ns()
            await self._write(
                self.store.create_inode,
                _directory_inode(entry.ino, entry.parent, 0o755, now),
            )
            await self._count_usage(0, 1)
            return "directory inode recreated (mode 755, owner root)"

        return fix

    def _fix_kind(self, entry: Dentry, kind: int) -> Callable[[], Awaitable[str]]:
        async def fix() -> str:
            inode = await self._read(self.store.get_inode, entry.ino)
            if inode is None or inode.kind != kind:
                raise NotRepaired("the inode changed meanwhile")
            outcome = await self._write(
                self.store.replace_dentry,
                Dentry(entry.parent, entry.name, entry.ino, kind),
                entry.ino,
                time.time_ns(),
            )
            if not outcome.applied:
                raise NotRepaired("the name changed meanwhile")
            return f"name says {_kind(kind)} now"

        return fix

    def _fix_several_names(
        self, inode: Inode, keep: Dentry, extra: list[Dentry]
    ) -> Callable[[], Awaitable[str]]:
        async def fix() -> str:
            fresh = await self._read(self.store.get_inode, inode.ino)
            if fresh is None:
                raise NotRepaired("the directory is gone")
            removed = []
            for entry in extra:
                outcome = await self._write(
                    self.store.delete_dentry, entry.parent, entry.name, inode.ino, time.time_ns()
                )
                if outcome.applied:
                    removed.append(_join(self._dir_path(entry.parent), entry.name))
            now = time.time_ns()
            await self._write(
                self.store.set_link, fresh.evolve(parent=keep.parent, nlink=1, ctime_ns=now)
            )
            if len(removed) < len(extra):
                raise NotRepaired(f"removed {', '.join(removed) or 'none'}; the others changed")
            return f"kept {_join(self._dir_path(keep.parent), keep.name)}, removed " + ", ".join(
                removed
            )

        return fix

    def _fix_reconnect(self, ino: int, old: Dentry | None) -> Callable[[], Awaitable[str]]:
        """Name directory ``ino`` ``#ino`` in /lost+found, then drop its name ``old`` (which
        closes a cycle), and point its parent there."""

        async def fix() -> str:
            fresh = await self._read(self.store.get_inode, ino)
            if fresh is None or fresh.kind != DIRECTORY:
                raise NotRepaired("the directory changed meanwhile")
            home = await self._lost_and_found()
            name = b"#%d" % ino
            now = time.time_ns()
            outcome = await self._write(
                self.store.insert_dentry, Dentry(home, name, ino, DIRECTORY), now
            )
            if not outcome.applied:
                raise NotRepaired(f"/lost+found/{_text(name)} is taken")
            note = ""
            if old is not None:
                dropped = await self._write(
                    self.store.delete_dentry, old.parent, old.name, ino, now
                )
                if not dropped.applied:
                    note = f" (its name {_text(old.name)!r} changed meanwhile: run fsck again)"
            await self._write(self.store.set_link, fresh.evolve(parent=home, nlink=1, ctime_ns=now))
            return f"reconnected as /lost+found/{_text(name)}{note}"

        return fix

    async def _lost_and_found(self) -> int:
        """The ino of /lost+found, made (mode 700, owner root) when missing.

        Raises ``NotRepaired`` when that name holds something else than a directory.
        """
        async with self._lost_found_lock:
            if self._lost_found:
                return self._lost_found
            entry = await self._read(self.store.get_dentry, ROOT_INO, LOST_FOUND)
            if entry is None:
                now = time.time_ns()
                inode = _directory_inode(_new_ino(), ROOT_INO, 0o700, now)
                await self._write(self.store.create_inode, inode)
                await self._count_usage(0, 1)
                outcome = await self._write(
                    self.store.insert_dentry,
                    Dentry(ROOT_INO, LOST_FOUND, inode.ino, DIRECTORY),
                    now,
                )
                if outcome.applied:
                    self._lost_found = inode.ino
                    return inode.ino
                await self._write(self.store.delete_inode, inode.ino)
                await self._count_usage(0, -1)
                entry = outcome.holder
            if entry is None or entry.kind != DIRECTORY:
                raise NotRepaired("/lost+found is not a directory")
            self._lost_found = entry.ino
            return entry.ino

    def _fix_links(self, seen: Inode, nlink: int, parent: int) -> Callable[[], Awaitable[str]]:
        async def fix() -> str:
            fresh = await self._read(self.store.get_inode, seen.ino)
            if fresh is None or (fresh.nlink, fresh.parent) != (seen.nlink, seen.parent):
                raise NotRepaired("the inode changed meanwhile")
            await self._write(
                self.store.set_link,
                fresh.evolve(nlink=nlink, parent=parent, ctime_ns=time.time_ns()),
            )
            return f"set nlink {nlink}, parent {parent}"

        return fix

    def _fix_delete(self, seen: Inode) -> Callable[[], Awaitable[str]]:
        async def fix() -> str:
            fresh = await self._read(self.store.get_inode, seen.ino)
            if fresh is None:
                await self._write(self.store.delete_inode, seen.ino)
                return "already gone; its rows removed"
            if (fresh.nlink, fresh.ctime_ns, fresh.version) != (
                seen.nlink,
                seen.ctime_ns,
                seen.version,
            ):
                raise NotRepaired("the inode changed meanwhile")
            if fresh.kind == DIRECTORY:
                entries, _, _ = await self._read(self.store.list_directory, fresh.ino)
                if entries:
                    raise NotRepaired(f"it holds {len(entries)} entries now")
            chunks = await self._delete_content(fresh)
            # An unlinked inode may be purged by its daemon meanwhile: whichever
            # conditional delete applies takes it off the usage counters.
            counted = fresh.nlink > 0 or await self._write(self.store.delete_unlinked, fresh.ino)
            await self._write(self.store.delete_inode, fresh.ino)
            if counted:
                await self._count_usage(-(fresh.size if fresh.kind == REGULAR else 0), -1)
            return f"deleted with {chunks} chunks"

        return fix

    async def _delete_content(self, inode: Inode) -> int:
        """Delete the chunks of every version of ``inode`` (recorded, and the current one);
        how many chunk partitions were deleted."""
        versions = {
            v.version: (v.size, v.chunk_size)
            for v in await self._read(self.store.list_versions, inode.ino)
        }
        if inode.version:
            versions[inode.version] = (inode.size, inode.chunk_size)
        total = 0
        for version, (size, chunk_size) in versions.items():
            total += await self._delete_chunks(inode.ino, version, size, chunk_size)
        return total

    async def _delete_chunks(self, ino: int, version: bytes, size: int, chunk_size: int) -> int:
        count = chunk_count(max(size, 0), chunk_size if chunk_size > 0 else CHUNK_SIZE)

        async def one(index: int) -> None:
            await self._write(self.store.delete_chunk, ino, version, index)

        await self._each(one, range(count))
        return count

    def _fix_stale_version(self, ino: int, version: Version) -> Callable[[], Awaitable[str]]:
        async def fix() -> str:
            fresh = await self._read(self.store.get_inode, ino)
            if fresh is not None and fresh.version == version.version:
                raise NotRepaired("it is the current version now")
            count = await self._delete_chunks(
                ino, version.version, version.size, version.chunk_size
            )
            await self._write(self.store.delete_version, ino, version.version)
            return f"deleted with {count} chunks"

        return fix

    def _fix_orphan_index(self, ino: int) -> Callable[[], Awaitable[str]]:
        async def fix() -> str:
            if await self._read(self.store.get_inode, ino) is not None:
                raise NotRepaired("the inode exists now")
            chunks = 0
            for version in await self._read(self.store.list_versions, ino):
                chunks += await self._delete_chunks(
                    ino, version.version, version.size, version.chunk_size
                )
            await self._write(self.store.delete_inode, ino)
            return "deleted" + (f" with {chunks} chunks of its versions" if chunks else "")

        return fix

    def _fix_unindexed(self, inode: Inode) -> Callable[[], Awaitable[str]]:
        async def fix() -> str:
            await self._write(self.store.put_index, inode.ino, inode.kind, inode.ctime_ns)
            return "index row written"

        return fix


def _kind(kind: int) -> str:
    return _KIND_NAMES.get(kind, f"kind {kind}")


def _ago(ns: int) -> str:
    if not ns:
        return "at an unknown time"
    seconds = (time.time_ns() - ns) / _NS
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _new_ino() -> int:
    while (ino := secrets.randbits(63)) <= ROOT_INO:
        pass
    return ino


def _directory_inode(ino: int, parent: int, permissions: int, now_ns: int) -> Inode:
    return Inode(
        ino=ino, kind=DIRECTORY, mode=mode_of_kind(DIRECTORY, permissions), uid=0, gid=0,
        size=0, atime_ns=now_ns, mtime_ns=now_ns, ctime_ns=now_ns, parent=parent, nlink=1,
        content_id=b"", chunk_size=0, target=b"",
    )  # fmt: skip


# -- the command ----------------------------------------------------------------------------


def run(
    contact_points: ContactPoints | ConnectionSettings,
    keyspace: str,
    owner: int,
    environment: str,
    options: Options,
    *,
    out: IO[str] | None = None,
    progress: bool | None = None,
) -> int:
    """``cassfs fsck``: check one tenant, print a line per problem and the summary to
    ``out`` (default stdout); the exit status (0 clean or all repaired, 1 when something
    is wrong, 130 when interrupted: the repairs done so far stand, and the next run
    takes up from there).

    ``progress`` shows a live progress display (default: when ``out`` is a terminal).
    Raises ``StorageError`` when Cassandra is unreachable or keeps failing, and
    ``SchemaMissing`` when the keyspace lacks the cassfs schema.  Blocking (runs trio).
    """
    out = out or sys.stdout
    show = out.isatty() if progress is None else progress
    try:
        report = trio.run(_run, contact_points, keyspace, owner, environment, options, show)
    except BaseExceptionGroup as group:
        raise _first_cassfs_error(group) or group from None
    except KeyboardInterrupt:
        print("fsck: interrupted", file=sys.stderr)
        return 130
    for problem in report.problems:
        print(problem.line(), file=out)
    print(report.summary(), file=out)
    return report.exit_status


def _first_cassfs_error(group: BaseExceptionGroup[BaseException]) -> CassfsError | None:
    for exc in group.exceptions:
        if isinstance(exc, CassfsError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_cassfs_error(exc)
            if found is not None:
                return found
    return None


async def _run(
    contact_points: ContactPoints | ConnectionSettings,
    keyspace: str,
    owner: int,
    environment: str,
    options: Options,
    show: bool,
) -> Report:
    store = await Store.connect(contact_points, keyspace)
    try:
        checker = Checker(store.tenant(owner, environment), options)
        if not show:
            return await checker.run()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_display, checker.stats)
            report = await checker.run()
            nursery.cancel_scope.cancel()
        return report
    finally:
        with trio.CancelScope(shield=True):
            await store.close()


async def _display(stats: Stats) -> None:
    """Redraw a rich progress display from ``stats`` ten times a second until cancelled.

    Drawn from this task (``auto_refresh`` off): no thread of rich's own.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        TextColumn("{task.fields[figures]}"),
        TimeElapsedColumn(),
        auto_refresh=False,
        transient=True,
    ) as progress:
        inodes = progress.add_task("inodes", total=None, figures="")
        content = progress.add_task("content", total=None, figures="")
        while True:
            expected = max(stats.inodes_expected, stats.inodes)
            progress.update(
                inodes,
                completed=stats.inodes,
                total=expected or None,
                figures=f"{stats.inodes:,}/{expected:,} ({stats.directories:,} dirs), "
                f"{stats.phase}",
            )
            progress.update(
                content,
                completed=stats.bytes_read,
                total=stats.bytes_queued or None,
                figures=f"{_size(stats.bytes_read)}/{_size(stats.bytes_queued)}, "
                f"{stats.files_done:,}/{stats.files_queued:,} files",
            )
            progress.refresh()
            await trio.sleep(0.1)
