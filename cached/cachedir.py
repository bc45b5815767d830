"""The cache dir on disk: kept private, cleared of dead spool files, its daemon's logs bounded.

A cache dir holds every cached content of every tenant served through it, so it
and everything in it belong to the daemon's user alone: the daemon runs with
umask :data:`PRIVATE_UMASK` and :func:`make_private` fixes what an older cassfs
(or an operator) left readable.  :func:`clean_spool` removes the spool and
fetch files of processes that died before they could (see the naming in
:func:`front_spool_prefix`).  :func:`spawn_daemon` starts a detached daemon
whose log rotates (:func:`log_to_file`) and whose stdout/stderr, only used
before logging is set up and for crashes, go to a small file.

Standard library only: the FUSE front imports this module too.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: The daemon's umask: whatever it creates is for its own user only (files 0600, dirs 0700).
PRIVATE_UMASK = 0o077
#: The daemon's log in the cache dir, rotated at :data:`LOG_MAX_BYTES`.
LOG_NAME = "daemon.log"
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
#: stdout/stderr of a spawned daemon: start-up errors and crashes before or beyond logging.
OUTPUT_NAME = "daemon.out"
#: Past this many bytes, :func:`open_output` moves ``daemon.out`` to ``daemon.out.1``.
OUTPUT_MAX_BYTES = 1024 * 1024
#: Spool files named without a creator pid (an older cassfs) are removed past this age, s.
UNOWNED_SPOOL_AGE = 3600.0

FRONT_PREFIX = "front-"
DAEMON_PREFIX = "daemon-"
FETCH_PREFIX = "fetch-"

_LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"


def front_spool_prefix(pid: int | None = None) -> str:
    """The name prefix of a FUSE front's spool files, ``front-<pid>-`` (default: this process).

    The pid lets a starting daemon tell the files of a dead front from a live one's.
    """
    return f"{FRONT_PREFIX}{os.getpid() if pid is None else pid}-"


def make_private(cache_dir: Path) -> list[Path]:
    """Make ``cache_dir`` and its first two levels private to this user; the paths changed.

    Directories become 0700, regular files lose every group and other bit (0644
    becomes 0600).  Deeper entries (diskcache's ``store/ab/cd/*.val``) are not
    walked: a 0700 directory above them already keeps every other user out.
    Symlinks and sockets are left alone.  Blocking.  Raises ``OSError`` when
    ``cache_dir`` itself cannot be changed (e.g. EPERM: another user owns it);
    entries below that cannot be changed are logged and skipped.
    """
    changed: list[Path] = []
    if _restrict(cache_dir, os.stat(cache_dir)):
        changed.append(cache_dir)
    for level_one in _entries(cache_dir):
        fixed, is_dir = _restrict_entry(level_one)
        changed += fixed
        if is_dir:
            for level_two in _entries(level_one.path):
                changed += _restrict_entry(level_two)[0]
    if changed:
        log.info("made %d paths in %s private to this user", len(changed), cache_dir)
    return changed


def _entries(directory: Path | str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as exc:
        log.warning("cannot list %s to make it private: %s", directory, exc)
        return []


def _restrict_entry(entry: os.DirEntry[str]) -> tuple[list[Path], bool]:
    """Restrict one entry; (the paths changed, whether it is a directory)."""
    path = Path(entry.path)
    try:
        st = entry.stat(follow_symlinks=False)
        changed = _restrict(path, st)
    except OSError as exc:
        log.warning("cannot make %s private: %s", path, exc)
        return [], False
    return ([path] if changed else []), stat.S_ISDIR(st.st_mode)


def _restrict(path: Path, st: os.stat_result) -> bool:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        wanted = 0o700
    elif stat.S_ISREG(st.st_mode):
        wanted = mode & 0o700
    else:
        return False
    if mode == wanted:
        return False
    os.chmod(path, wanted)
    return True


def clean_spool(cache_dir: Path) -> list[Path]:
    """Remove the spool and fetch files that no live process owns; the paths removed.

    Call it only while holding the daemon lock of ``cache_dir`` (no other daemon
    runs).  Then ``tmp/fetch-*`` (the daemon's own) are all dead; ``spool/daemon-*``
    are dead unless a process holds them open (``materialize`` hands one to a
    front, which keeps it open); ``spool/front-<pid>-*`` are dead once ``pid`` is;
    ``spool/front-*`` without a pid are dead once older than
    :data:`UNOWNED_SPOOL_AGE` and held open by no process.  Anything else is
    left alone.  Blocking; files that cannot be removed are logged and kept.
    """
    dead: list[Path] = [
        path for path in _files(cache_dir / "tmp") if path.name.startswith(FETCH_PREFIX)
    ]
    open_paths: set[str] | None = None

    def held_open(path: Path) -> bool:
        nonlocal open_paths
        if open_paths is None:
            open_paths = _open_paths()
        return str(path.resolve()) in open_paths

    now = time.time()
    for path in _files(cache_dir / "spool"):
        name = path.name
        if name.startswith(DAEMON_PREFIX):
            if not held_open(path):
                dead.append(path)
        elif name.startswith(FRONT_PREFIX):
            pid_text, sep, _ = name.removeprefix(FRONT_PREFIX).partition("-")
            if sep and pid_text.isdigit():
                if not _pid_alive(int(pid_text)):
                    dead.append(path)
            elif _age(path, now) > UNOWNED_SPOOL_AGE and not held_open(path):
                dead.append(path)
    removed: list[Path] = []
    freed = 0
    for path in dead:
        try:
            size = path.stat().st_blocks * 512
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove the leftover %s: %s", path, exc)
            continue
        removed.append(path)
        freed += size
    if removed:
        log.info(
            "removed %d leftover spool files (%d bytes) from %s", len(removed), freed, cache_dir
        )
    return removed


def _files(directory: Path) -> list[Path]:
    try:
        with os.scandir(directory) as entries:
            return [Path(e.path) for e in entries if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _open_paths() -> set[str]:
    """Every path some process visible in /proc holds open (what ``readlink`` of its fds says).

    Processes of other users are invisible to a non-root daemon, but those cannot
    open files in its private cache dir anyway.  Without /proc: an empty set.
    """
    paths: set[str] = set()
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return paths
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # exited, or not ours to see
            continue
        for fd in fds:
            try:
                paths.add(os.readlink(f"{fd_dir}/{fd}"))
            except OSError:
                continue
    return paths


def log_to_file(path: Path, debug: bool = False) -> logging.Handler:
    """Send this process's logging to ``path``, rotated at :data:`LOG_MAX_BYTES`.

    Keeps :data:`LOG_BACKUPS` old files (``path.1`` ...), so the log never takes
    more than about 40 MiB.  Replaces the root logger's handlers; new files are
    created 0600 (whatever the umask).  Returns the handler.  Raises ``OSError``
    when ``path`` cannot be opened.
    """
    handler = _PrivateRotatingHandler(
        path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    return handler


class _PrivateRotatingHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler whose new files are 0600 whatever the process umask."""

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def open_output(path: Path) -> int:
    """Open ``path`` for appending (0600), first moving it to ``path.1`` past
    :data:`OUTPUT_MAX_BYTES`; the file descriptor, which the caller closes.

    For the stdout/stderr of detached processes.  Raises ``OSError``.
    """
    try:
        if path.stat().st_size > OUTPUT_MAX_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def spawn_detached(command: list[str], output: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session, stdout and stderr appended to ``output``.

    ``output`` is opened with :func:`open_output` (0600, bounded).  Raises
    ``OSError`` when it cannot be opened or the command cannot start.
    """
    fd = open_output(output)
    try:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        os.close(fd)


def spawn_daemon(cache_dir: Path, command: list[str]) -> subprocess.Popen[bytes]:
    """Start the daemon ``command`` for ``cache_dir`` detached, logging to ``cache_dir/daemon.log``.

    Adds ``--log-file``; the process's own stdout and stderr (start-up errors,
    crashes) go to ``cache_dir/daemon.out``.  Raises ``OSError``.
    """
    return spawn_detached(
        [*command, "--log-file", str(cache_dir / LOG_NAME)], cache_dir / OUTPUT_NAME
    )
