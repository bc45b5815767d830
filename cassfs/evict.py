"""``cassfs cache evict PATH...``: make the next access of files read Cassandra again.

How it reaches the right tenant and daemon: the CLI, not the daemon, resolves the
paths.  The mount a path lies on gives the tenant (its ``fsname``,
``cassfs:OWNER/ENVIRONMENT``, see :mod:`cassfs.mounts`) and, through the record
``cassfs up`` keeps (:mod:`cassfs.state`), the cache dir whose daemon serves it.
The CLI stats every file and directory under the paths (``lstat``, never following
symlinks); on a cassfs mount ``st_ino`` is the daemon's inode number.  It sends those
numbers to the daemon (all but a mount's own node numbers, see :class:`EvictReport`)
in ``evict`` requests of at most :data:`cached.api.EVICT_BATCH`,
an administrative call on its own connection, which drops their metadata and
content and tells the tenant's mounts to stop reusing answers about them
(:meth:`cached.service.Service.rpc_evict`).  So the daemon needs no path lookup
(which would go through its cache, and cache again) and no mount session.

The kernel's page cache of each regular file is dropped here, before the request
(``posix_fadvise(POSIX_FADV_DONTNEED)`` on a descriptor opened with ``O_NOATIME``),
so that the open it takes is answered from the daemon's cache; only for files a
first ``dry_run`` request says have content cached (opening the others would fetch
them).  A process reading a file between the two may bring its pages back: evict
while it is quiet.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cached.api import EVICT_BATCH
from cassfs.inodes import ALIAS_BASE

log = logging.getLogger(__name__)


@dataclass
class EvictReport:
    """What an eviction did: inodes sent to the daemon, contents it removed, files
    whose kernel pages were dropped (those with cached content), paths that
    vanished while walked, and paths skipped because the mount gives them a node of
    their own, whose ``st_ino`` is no inode number (a newer version while an older
    one is open there, a directory another host moved: see :mod:`cassfs.inodes`)."""

    inodes: int = 0
    contents: int = 0
    files: int = 0
    vanished: int = 0
    skipped: int = 0

    def to_json(self) -> dict[str, int]:
        """The report as a JSON object."""
        return dict(self.__dict__)


def walk_inodes(root: Path, report: EvictReport) -> Iterator[tuple[int, Path, int]]:
    """``(st_ino, path, st_mode)`` of ``root`` and, for a directory, of everything
    under it (symlinks not followed).  Paths that vanish meanwhile are counted in
    ``report.vanished``; raises OSError for ``root`` itself."""
    info = os.lstat(root)
    yield info.st_ino, root, info.st_mode
    if not stat.S_ISDIR(info.st_mode):
        return
    for directory, dirs, files in os.walk(root, onerror=lambda exc: _vanished(report, exc)):
        for name in (*dirs, *files):
            path = Path(directory) / name
            try:
                entry = os.lstat(path)
            except FileNotFoundError:
                report.vanished += 1
                continue
            yield entry.st_ino, path, entry.st_mode


def _vanished(report: EvictReport, exc: OSError) -> None:
    if isinstance(exc, FileNotFoundError):
        report.vanished += 1
    else:
        raise exc


def drop_pages(path: Path) -> bool:
    """Drop the kernel's cached pages of the regular file ``path``; False when it
    vanished.  Raises OSError for other failures (EACCES...)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOATIME | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except PermissionError:  # O_NOATIME needs the file's owner or CAP_FOWNER
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def evict(
    roots: list[Path],
    tenant: tuple[int, str],
    call: Callable[..., Any],
) -> EvictReport:
    """Evict every inode under ``roots`` (all on one mount of ``tenant``) from the
    kernel's and the daemon's caches; ``call(method, **params)`` asks the daemon.

    Raises OSError for a root that cannot be read and whatever ``call`` raises
    (``DaemonUnavailable``...).
    """
    report = EvictReport()
    owner, environment = tenant
    batch: dict[int, Path | None] = {}  # ino -> path of a regular file
    seen: set[int] = set()

    def send() -> None:
        inos = list(batch)
        probe = call("evict", owner=owner, environment=environment, inos=inos, dry_run=True)
        for ino in probe["cached"]:
            path = batch.get(ino)
            if path is not None:
                if drop_pages(path):
                    report.files += 1
                else:
                    report.vanished += 1
        reply = call("evict", owner=owner, environment=environment, inos=inos)
        report.inodes += int(reply["inodes"])
        report.contents += int(reply["contents"])
        batch.clear()

    for root in roots:
        for ino, path, mode in walk_inodes(root, report):
            if ino in seen:  # hard links, overlapping roots
                continue
            if ino >= ALIAS_BASE:
                report.skipped += 1
                continue
            seen.add(ino)
            batch[ino] = path if stat.S_ISREG(mode) else None
            if len(batch) >= EVICT_BATCH:
                send()
    if batch:
        send()
    return report
