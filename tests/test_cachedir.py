"""The cache dir stays private and loses the spool files of dead processes; the daemon's log
rotates.  Unit tests of :mod:`cached.cachedir`, then the daemon against the real node."""

from __future__ import annotations

import logging
import logging.handlers
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cached import cachedir
from cached.model import ROOT_INO
from cassfs.handles import SPILL_BYTES, WriteBuffer
from tests.conftest import Daemon, wait_for
from tests.test_daemon import make_file, session

NOBODY = "65534"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def nobody_can_read(path: Path) -> bool:
    """Whether the user nobody can read ``path`` (run as root)."""
    result = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "cat", str(path)],
        capture_output=True,
    )
    return result.returncode == 0


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A 0755 directory under /tmp that the user nobody can traverse (pytest's tmp_path
    sits in a 0700 dir, which would hide every mode problem)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.fail("this test reads files as the user nobody: run as root with setpriv")
    path = Path(tempfile.mkdtemp(prefix="cassfs-cachedir-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def old_layout(cache: Path) -> dict[str, Path]:
    """A cache dir as an older cassfs (umask 022) left it: dirs 0755, files 0644."""
    paths = {
        "log": cache / "daemon.log",
        "db": cache / "store" / "cache.db",
        "wal": cache / "store" / "cache.db-wal",
        "val": cache / "store" / "ab" / "cd" / "0123.val",
        "counters": cache / "counters" / "totals",
        "mount_log": cache / "logs" / "mount-x-1.log",
    }
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"secret content of a 0600 file")
        path.chmod(0o644)
    for directory in [cache, *(p for p in cache.rglob("*") if p.is_dir())]:
        directory.chmod(0o755)
    return paths


# -- unit: make_private ---------------------------------------------------------------------


def test_make_private_shuts_out_other_users(open_dir: Path) -> None:
    cache = open_dir / "cache"
    paths = old_layout(cache)
    outside = open_dir / "outside"
    outside.write_text("not the cache's")
    outside.chmod(0o644)
    (cache / "link").symlink_to(outside)
    assert nobody_can_read(paths["val"]) and nobody_can_read(paths["db"])  # the leak

    changed = cachedir.make_private(cache)

    assert mode(cache) == 0o700
    for name in ("store", "logs", "counters"):
        assert mode(cache / name) == 0o700
    assert mode(cache / "store" / "ab") == 0o700
    for name in ("log", "db", "wal", "counters", "mount_log"):
        assert mode(paths[name]) == 0o600, name
    assert mode(outside) == 0o644  # a symlink is not followed
    for path in paths.values():  # deeper files too, through their 0700 parents
        assert not nobody_can_read(path), path
    assert cache in changed and paths["db"] in changed
    assert cachedir.make_private(cache) == []  # nothing left to change


def test_make_private_fails_when_the_cache_dir_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        cachedir.make_private(tmp_path / "none")


# -- unit: clean_spool ----------------------------------------------------------------------


def test_clean_spool_removes_only_what_no_live_process_owns(tmp_path: Path) -> None:
    spool, tmp = tmp_path / "spool", tmp_path / "tmp"
    spool.mkdir()
    tmp.mkdir()
    gone = dead_pid()
    two_hours_ago = time.time() - 7200

    def make(path: Path, age: float | None = None) -> Path:
        path.write_bytes(b"x" * 100)
        if age is not None:
            os.utime(path, (age, age))
        return path

    dead = [
        make(tmp / "fetch-abc123"),
        make(spool / "daemon-1tib_sparse"),
        make(spool / f"front-{gone}-k2j3h4"),
        make(spool / "front-oldstyle", two_hours_ago),  # no pid, old
    ]
    kept = [
        make(spool / f"front-{os.getpid()}-live"),  # its front runs
        make(spool / "front-young"),  # no pid, may belong to a running older front
        make(spool / "daemon-handed-to-a-front"),  # held open below, as materialize does
        make(spool / "other-file"),
        make(tmp / "not-a-fetch"),
    ]
    held = os.open(spool / "daemon-handed-to-a-front", os.O_RDWR)
    try:
        removed = cachedir.clean_spool(tmp_path)
    finally:
        os.close(held)
    assert sorted(removed) == sorted(dead)
    assert [p for p in dead if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []


def test_clean_spool_without_spool_dirs(tmp_path: Path) -> None:
    assert cachedir.clean_spool(tmp_path) == []


async def test_front_spool_files_name_their_process_and_are_private(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    buffer = WriteBuffer(spool)
    await buffer.write(0, b"x" * (SPILL_BYTES + 1))
    try:
        assert buffer.path is not None
        assert buffer.path.name.startswith(f"front-{os.getpid()}-")
        assert mode(buffer.path) == 0o600
        # a daemon starting meanwhile keeps it: this process lives
        assert cachedir.clean_spool(tmp_path) == []
        assert buffer.path.exists()
    finally:
        await buffer.close()


# -- unit: bounded logs ---------------------------------------------------------------------


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger's handlers and level after a test replaced them."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def test_log_file_rotates_within_its_bound_and_is_private(
    tmp_path: Path, root_logging: None
) -> None:
    path = tmp_path / "daemon.log"
    handler = cachedir.log_to_file(path)
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    assert (handler.maxBytes, handler.backupCount) == (10 * 1024 * 1024, 3)
    handler.maxBytes = 4096  # the same rotation, sooner
    logger = logging.getLogger("cached.test")
    for i in range(2000):
        logger.info("line %d of a log that must not grow without bound", i)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["daemon.log", *(f"daemon.log.{i}" for i in (1, 2, 3))]
    assert all(f.stat().st_size <= 4096 for f in files)
    assert all(mode(f) == 0o600 for f in files)
    assert "line 1999 of" in path.read_text()


def test_daemon_output_file_is_bounded_and_private(tmp_path: Path) -> None:
    out = tmp_path / "daemon.out"
    os.close(cachedir.open_output(out))
    assert mode(out) == 0o600
    out.write_bytes(b"t" * (cachedir.OUTPUT_MAX_BYTES + 1))
    fd = cachedir.open_output(out)
    try:
        os.write(fd, b"cassfs daemon: started again\n")
    finally:
        os.close(fd)
    assert out.read_bytes() == b"cassfs daemon: started again\n"
    assert (tmp_path / "daemon.out.1").stat().st_size == cachedir.OUTPUT_MAX_BYTES + 1


# -- the daemon -----------------------------------------------------------------------------


@pytest.mark.cassandra
async def test_daemon_start_makes_the_cache_dir_private_and_clears_dead_spool_files(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    paths = old_layout(cache)
    (cache / "store" / "cache.db").unlink()  # diskcache makes its own
    (cache / "store" / "cache.db-wal").unlink()
    shutil.rmtree(cache / "store" / "ab")  # left 0755 below a 0700 dir: make_private's unit test
    for name in ("spool", "tmp"):
        (cache / name).mkdir(mode=0o755)
    gone = dead_pid()
    leftovers = [cache / "tmp" / "fetch-a1b2c3", cache / f"spool/front-{gone}-d4e5f6"]
    for path in leftovers:
        path.write_bytes(b"x" * 4096)
    sparse = cache / "spool" / "daemon-g7h8i9"
    sparse.touch()
    os.truncate(sparse, 2**40)  # a 1 TiB sparse spool file of a daemon killed mid-write
    leftovers.append(sparse)
    live = cache / "spool" / f"front-{os.getpid()}-j0k1l2"
    live.write_bytes(b"a live front's")

    daemon = start_daemon("cache", 60.0, "2G", "--log-file", str(paths["log"]))
    data = os.urandom(300_000)  # stored by diskcache as a .val file
    async with session(daemon, tenant) as client:
        written = await make_file(client, ROOT_INO, b"secret.bin", data)
        assert (await client.call("open", ino=written["ino"]))["inode"]["size"] == len(data)
    assert wait_for(lambda: any(cache.glob("store/**/*.val")))

    assert [p for p in leftovers if p.exists()] == []
    assert live.exists()
    assert mode(cache) == 0o700
    everything = [cache, *cache.rglob("*")]
    assert (cache / "store" / "cache.db") in everything
    shared = {str(p.relative_to(tmp_path)): oct(mode(p)) for p in everything if mode(p) & 0o077}
    assert shared == {}
    log = paths["log"].read_text()
    assert "serving" in log and "removed 3 leftover spool files" in log
    assert "serving" not in daemon.log.read_text()  # stderr: only what precedes logging
