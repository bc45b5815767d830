"""The daemon's RPC methods: one ``rpc_<name>`` per filesystem operation.

Each method takes the calling :class:`Session` (its tenant) and keyword
parameters from the request, and returns msgpack-friendly data.  Failures are
raised as :mod:`cached.errors` classes and reach the front as their errno.

Reads go through the cache (:mod:`cached.cache`): metadata within the TTL is
answered locally, past it revalidated against Cassandra; content is keyed by
its SHA-256 and fetched whole, once per concurrent burst (single-flight).

Mutations go to Cassandra first (:mod:`cached.store`) and then update the local
cache, so an acknowledged write is in Cassandra (write-through).  A whole-file
write follows the order *new chunks, then the inode flip, then delete the old
chunks*, so a reader sees the old version or the new one, never a mix.

Invariant between checkpoints: the cache never holds metadata newer than what
was read from or written to Cassandra by this daemon.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cached.cache import LocalCache
from cached.core import Core, Session
from cached.errors import ReadOnly, StorageError
from cached.model import DIRECTORY, ROOT_INO, Inode, mode_of_kind
from cached.ops_content import ContentOps
from cached.ops_metadata import MetadataOps
from cached.ops_namespace import NamespaceOps
from cached.ops_xattr import XattrOps
from cached.reaper import Deletion, Reaper
from cached.stats import Counters
from cached.store import Store
from cached.versions import Contents

__all__ = ["Service", "Session"]

log = logging.getLogger(__name__)


class Service:
    """Every RPC method of the daemon, found by name: the three operation groups, each
    composed from one shared :class:`~cached.core.Core` and :class:`~cached.versions.Contents`,
    plus session and cache administration here.

    Operation -> method: lookup/getattr/readdir/readlink/setattr in
    :mod:`cached.ops_metadata`; mkdir/create/symlink/unlink/rmdir/rename/purge_inode in
    :mod:`cached.ops_namespace`; open/read/write/materialize in :mod:`cached.ops_content`;
    getxattr/listxattr/setxattr/removexattr in :mod:`cached.ops_xattr`;
    hello/seen/statfs/stats/purge/evict here.
    """

    def __init__(
        self,
        store: Store,
        cache: LocalCache,
        counters: Counters,
        spool_dir: Path,
        reaper: Reaper | None = None,
    ) -> None:
        self.core = Core(store, cache, counters, spool_dir, reaper)
        self.contents = Contents(self.core)
        self.namespace = NamespaceOps(self.core, self.contents)
        self._groups: tuple[object, ...] = (
            self,
            MetadataOps(self.core, self.contents),
            self.namespace,
            ContentOps(self.core, self.contents),
            XattrOps(self.core),
        )
        self._methods: dict[str, Callable[..., Awaitable[Any]] | None] = {}

    async def reap(self, deletion: Deletion) -> None:
        """Carry out one deferred deletion (see :mod:`cached.reaper`); StorageError (EIO)."""
        s = Session(
            deletion.owner,
            deletion.environment,
            self.core.store.tenant(deletion.owner, deletion.environment),
            notify=_nobody,
        )
        if deletion.version:
            await self.contents.delete_version(
                s, deletion.ino, deletion.version, deletion.size, deletion.chunk_size
            )
        else:
            await self.namespace.purge_now(s, deletion.ino)

    @property
    def sessions(self) -> set[Session]:
        """The mount sessions connected now."""
        return self.core.sessions

    def handler(self, method: str) -> Callable[..., Awaitable[Any]] | None:
        """The ``rpc_<method>`` of whichever group has it, or None; found once per name.

        Its parameters are those of the method's shape in :data:`cached.api.REQUESTS`,
        which the server checks each request against first (a test holds the two equal).
        """
        if method in self._methods:
            return self._methods[method]
        found = None
        for group in self._groups:
            found = getattr(group, f"rpc_{method}", None)
            if found is not None:
                break
        if len(self._methods) < 256:  # names come from clients: keep the table bounded
            self._methods[method] = found
        return found

    # -- session --------------------------------------------------------------------------

    async def rpc_hello(self, s: Session) -> dict[str, Any]:
        """Start a session: make sure the tenant's root exists; return it and the epoch.

        While Cassandra is unreachable, the cached root serves (a daemon restarted
        during an outage keeps its mounts); with none cached, ``StorageError`` (EIO).
        A read-only session never makes the root: ``ReadOnly`` (EROFS) for a tenant
        that has none yet.
        """
        self.core.feed.follow(s.tenant, s.store)
        try:
            root = await s.store.get_inode(ROOT_INO)
        except StorageError as exc:
            _, cached = await self.core.cache.get_inode(s.tenant, ROOT_INO)
            root = self.core.stale_if_error(cached, exc, "root inode")
            return {"root": root.to_wire(), "epoch": self.core.epoch, "pid": os.getpid()}
        if root is None and s.read_only:
            raise ReadOnly(
                f"tenant {s.owner}/{s.environment} has no files yet, and a read-only mount "
                "does not make its root: mount it once without --ro (or wait until a "
                "read-write host has)"
            )
        if root is None:
            now = time.time_ns()
            root = Inode(
                ino=ROOT_INO, kind=DIRECTORY, mode=mode_of_kind(DIRECTORY, 0o755), uid=0, gid=0,
                size=0, atime_ns=now, mtime_ns=now, ctime_ns=now, parent=ROOT_INO, nlink=1,
                content_id=b"", chunk_size=0, target=b"",
            )  # fmt: skip
            if await s.store.create_root(root):
                await self.core.usage.count(s, 0, 1)
                log.info("created the root inode of tenant %s/%s", s.owner, s.environment)
            else:  # another host made it first: serve that one
                root = await self.core.load_inode(s, ROOT_INO)
        await self.core.cache.put_inode(s.tenant, root)
        return {"root": root.to_wire(), "epoch": self.core.epoch, "pid": os.getpid()}

    async def rpc_seen(self, s: Session, seq: int) -> None:
        """The front acted on every ``changed`` notification up to number ``seq`` (see
        :meth:`~cached.core.Core.announce`)."""
        s.saw(seq)

    async def rpc_statfs(self, s: Session) -> dict[str, int]:
        """What the tenant uses: ``{"bytes": content bytes, "inodes": inodes}``.

        From the usage counters (see :mod:`cached.usage`), read at most once a
        second per tenant; while Cassandra fails the last figures read serve, and
        with none, ``StorageError`` (EIO).
        """
        used_bytes, inodes = await self.core.usage.figures(s)
        return {"bytes": used_bytes, "inodes": inodes}

    # -- cache administration -------------------------------------------------------------

    async def rpc_stats(self, s: Session | None = None) -> dict[str, int]:
        """Every counter and gauge (see :mod:`cached.stats`).

        The counters come from memory (:meth:`~cached.stats.Counters.snapshot`): the
        persisted totals plus pending deltas would miss the deltas of a flush between
        taking them and persisting them (a test read ``bytes_fetched`` 0 after 9,785).
        """
        totals = self.core.counters.snapshot()
        queued = self.core.cache.queued_writes  # before usage(), which applies them
        entries, volume = await self.core.cache.usage()
        outage = self.core.store.outage
        in_memory, memory_bound = self.core.cache.memory_use()
        return {
            **totals,
            "entries": entries,
            "bytes_cached": volume,
            "bytes_in_memory": in_memory,
            "writes_queued": queued,
            "memory_cache": memory_bound,
            "cassandra_unreachable": int(outage.down),
            "unreachable_queries": outage.failures,
            "queries_failed_fast": outage.refused,
        }

    async def rpc_purge(self, s: Session | None = None) -> int:
        """Empty the cache and tell every session to drop kernel caches; entries removed."""
        removed = await self.core.forget_all()
        self.core.counters.add("purges")
        return removed

    async def rpc_evict(
        self,
        s: Session | None,
        owner: int,
        environment: str,
        inos: list[int],
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Drop inodes ``inos`` of tenant ``(owner, environment)`` from the local cache:
        each one's metadata (inode, extended attributes, directory listing) and its
        current content, so that the next access reads Cassandra.  The tenant's mount
        sessions are told (``changed``) and waited for as for a change, so that they
        stop reusing their answers about those inodes.

        For ``cassfs cache evict`` (an administrative call, see :mod:`cached.server`):
        the CLI names the tenant, read from the mount's ``fsname``, and the inode
        numbers it stats under the paths given (a FUSE inode number is the daemon's
        ``ino``), so the daemon needs no path lookup and no session of its own.  Its
        kernel page cache the CLI drops itself, on the files this call with ``dry_run``
        (which changes nothing) says have cached content: opening the others would
        fetch them.  Inodes not cached are skipped.

        Returns ``{"inodes": inodes looked at, "contents": contents removed (with
        ``dry_run``: found), "cached": [inodes whose content is (was) cached]}``.
        """
        tenant = (owner, environment)
        cache = self.core.cache
        cached: list[int] = []
        for ino in inos:
            _, inode = await cache.get_inode(tenant, ino)
            if inode is not None and inode.content_id:
                if dry_run:
                    if await cache.has_content(tenant, inode.content_id):
                        cached.append(ino)
                elif await cache.drop_content(tenant, inode.content_id):
                    cached.append(ino)
            if not dry_run:
                await cache.drop_inode(tenant, ino)
                await cache.drop_xattrs(tenant, ino)
                await cache.drop_listing(tenant, ino)
        if not dry_run:
            store = self.core.store.tenant(owner, environment)
            await self.core.announce(Session(owner, environment, store, _nobody), *inos)
            log.info("evicted %d inodes (%d contents) of %s/%s", len(inos), len(cached), *tenant)
        return {"inodes": len(inos), "contents": len(cached), "cached": cached}


def _nobody(method: str, params: dict[str, Any]) -> None:
    """The notification callback of the reaper's sessions: no front listens."""
