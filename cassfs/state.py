"""Where a running mount records itself, so that ``cassfs down MOUNTPOINT`` finds it.

``/run/cassfs/mounts/<sha1 of the mountpoint's real path>.json`` holds a
:class:`MountRecord`; ``$CASSFS_RUN_DIR`` moves ``/run/cassfs`` (for tests).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MountRecord:
    """The front process serving ``mountpoint`` and the cache dir of its daemon."""

    pid: int
    mountpoint: str
    cache_dir: str


def run_dir() -> Path:
    """``$CASSFS_RUN_DIR`` or ``/run/cassfs``."""
    return Path(os.environ.get("CASSFS_RUN_DIR", "/run/cassfs"))


def record_path(mountpoint: Path) -> Path:
    """The record file of ``mountpoint``."""
    key = hashlib.sha1(str(mountpoint.resolve()).encode()).hexdigest()
    return run_dir() / "mounts" / f"{key}.json"


def read_record(mountpoint: Path) -> MountRecord | None:
    """The record of ``mountpoint``, or None when there is none (or it is unreadable)."""
    try:
        return MountRecord(**json.loads(record_path(mountpoint).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
