"""``cassfs status``: this host's cassfs mounts, their tenants and daemons, cache use and
whether each daemon reaches Cassandra.

The mounts are those the kernel lists with type ``fuse.cassfs``
(:mod:`cassfs.mounts`) and those ``cassfs up`` recorded (:mod:`cassfs.state`); the
record gives the mount's process and cache dir, the mount's source its tenant.  Each
daemon is asked ``status`` and ``stats`` once (:data:`DAEMON_TIMEOUT` seconds at most);
its ``cassandra_unreachable`` gauge (:mod:`cached.outage`) tells reachability.

A mount is well when it answers ``stat`` (within :data:`STAT_TIMEOUT` seconds), its
process lives, and its daemon answers and reaches Cassandra; anything else is a
problem, listed in words in ``problems``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from cached.client import call_once
from cached.errors import CassfsError
from cassfs.mounts import DEAD_MOUNT_ERRNOS, MountEntry, cassfs_mounts, connection_error
from cassfs.state import MountRecord, pid_alive, read_record, run_dir

log = logging.getLogger(__name__)

#: Seconds a daemon has to answer ``status`` and then ``stats``.
DAEMON_TIMEOUT = 5.0
#: Seconds ``stat`` of a mountpoint may take before the mount counts as not answering.
STAT_TIMEOUT = 5.0


def _stat_mount(mountpoint: str) -> str:
    """``ok``, ``dead`` (ENOTCONN, ECONNABORTED: its process died), ``not answering``
    (no reply within :data:`STAT_TIMEOUT`) or ``error: <strerror>``, from a ``statfs``
    (:func:`~cassfs.mounts.connection_error`)."""
    outcome: list[str] = []

    def probe() -> None:
        error = connection_error(mountpoint)
        if error is None or error.errno == errno.EIO:
            # EIO is the front's own answer to statfs (its daemon has no usage figures
            # and cannot reach Cassandra, which the daemon's report says): it answers.
            outcome.append("ok")
        elif error.errno in DEAD_MOUNT_ERRNOS:
            outcome.append("dead")
        else:
            outcome.append(f"error: {error.strerror}")

    # A daemon thread: a hung FUSE mount must not keep this command from exiting.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(STAT_TIMEOUT)
    return outcome[0] if outcome else "not answering"


def daemon_report(cache_dir: Path) -> dict[str, Any]:
    """What the daemon of ``cache_dir`` says: ``{"answering", "pid", "sessions",
    "config", "cache": {"entries", "bytes", "limit"}, "cassandra_reachable"}``, or
    ``{"answering": False, "error": ...}`` when it does not answer."""
    try:
        status = call_once(cache_dir, "status", timeout=DAEMON_TIMEOUT)
        stats = call_once(cache_dir, "stats", timeout=DAEMON_TIMEOUT)
    except CassfsError as exc:  # DaemonUnavailable, or an error reply
        return {"answering": False, "error": str(exc)}
    return {
        "answering": True,
        "pid": status["pid"],
        "sessions": status["sessions"],
        "config": status["config"],
        "cache": {
            "entries": stats["entries"],
            "bytes": stats["bytes_cached"],
            "limit": status["config"].get("cache_size"),
        },
        "cassandra_reachable": not stats["cassandra_unreachable"],
    }


def _records() -> dict[str, MountRecord]:
    """Every mount record of :func:`run_dir`, by mountpoint."""
    found: dict[str, MountRecord] = {}
    for path in sorted((run_dir() / "mounts").glob("*.json")):
        try:
            record = MountRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        found[record.mountpoint] = record
    return found


def collect(only: list[Path] | None = None) -> dict[str, Any]:
    """The status of this host's cassfs mounts (of ``only``, when given) as JSON-able data:

    ``{"ok": bool, "mounts": [{"mountpoint", "owner", "environment", "state", "pid",
    "cache_dir", "daemon", "problems": [str, ...]}, ...]}``, ``state`` being ``ok``,
    ``dead``, ``not answering``, ``not mounted`` (a record left behind) or
    ``error: ...``; ``daemon`` as :func:`daemon_report`, None when the cache dir is
    unknown (a mount with no record in :func:`run_dir`, e.g. made with another
    ``CASSFS_RUN_DIR``: not counted as a problem).  Raises OSError when
    /proc/self/mounts cannot be read.
    """
    entries: dict[str, MountEntry | None] = {e.mountpoint: e for e in cassfs_mounts()}
    records = _records()
    for point in records:
        entries.setdefault(point, None)
    if only is not None:
        wanted = {os.path.abspath(path) for path in only}
        entries = {point: e for point, e in entries.items() if point in wanted}
        for point in wanted - set(entries):
            entries[point] = None
    daemons: dict[str, dict[str, Any]] = {}
    mounts = []
    for point in sorted(entries):
        entry = entries[point]
        record = records.get(point) or read_record(Path(point))
        tenant = entry.tenant if entry is not None else None
        problems = []
        daemon = None
        if record is not None:
            # The daemon first: a stat of the mount may make its front restart a dead one.
            if record.cache_dir not in daemons:
                daemons[record.cache_dir] = daemon_report(Path(record.cache_dir))
            daemon = daemons[record.cache_dir]
        if entry is None:
            state = "not mounted"
            problems.append("not mounted" + (" (a record was left behind)" if record else ""))
        else:
            state = _stat_mount(point)
            if state != "ok":
                problems.append(f"the mount is {state}")
        if record is not None and entry is not None and not pid_alive(record.pid):
            problems.append(f"its process {record.pid} is gone")
        if daemon is not None:
            if not daemon["answering"]:
                problems.append(f"its daemon does not answer ({daemon['error']})")
            elif not daemon["cassandra_reachable"]:
                problems.append("its daemon cannot reach Cassandra")
        mounts.append(
            {
                "mountpoint": point,
                "owner": tenant[0] if tenant else None,
                "environment": tenant[1] if tenant else None,
                "state": state,
                "pid": record.pid if record else None,
                "cache_dir": record.cache_dir if record else None,
                "daemon": daemon,
                "problems": problems,
            }
        )
    return {"ok": not any(m["problems"] for m in mounts), "mounts": mounts}
