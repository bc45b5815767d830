"""`cassfs up`/`down` against dead mounts (a front killed with kill -9), what the next daemon
cleans after them, and the CLI's checks of its tenant options.  Real FUSE, real node."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cached.client import call_once
from cached.errors import DaemonUnavailable
from cassfs.mounts import dead_mount_error
from cassfs.state import read_record
from tests.conftest import KEYSPACE, Mount, run_cli, wait_for

pytestmark = [pytest.mark.fuse, pytest.mark.cassandra]

#: A FUSE filesystem that is not cassfs: mounted, then left dead by kill -9.
OTHER_FS = """
import sys
import pyfuse3, trio
pyfuse3.init(pyfuse3.Operations(), sys.argv[1], {"fsname=othertest", "subtype=othertest"})
print("mounted", flush=True)
trio.run(pyfuse3.main)
"""


def fstype(path: Path) -> str | None:
    """The type /proc/self/mounts lists for the topmost mount at ``path``, if any."""
    found = None
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == str(path):
                found = fields[2]
    return found


def is_dead(path: Path) -> bool:
    """True once ``path``'s FUSE connection is gone (:func:`cassfs.mounts.dead_mount_error`:
    a ``stat`` or a listing may be answered by the kernel alone after the front died)."""
    return dead_mount_error(path) is not None


def kill_front(m: Mount) -> int:
    """kill -9 the FUSE front of ``m`` and wait until its mount is dead; the front's pid."""
    record = read_record(m.path)
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)
    assert wait_for(lambda: is_dead(m.path)), "the mount did not die with its front"
    assert fstype(m.path) == "fuse.cassfs"
    return record.pid


def up_again(m: Mount) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "up",
        str(m.path),
        "--cache-dir",
        str(m.cache_dir),
        "--contact-points",
        os.environ.get("CASSFS_CONTACT_POINTS", "127.0.0.1:9042"),
        "--keyspace",
        KEYSPACE,
        "--owner",
        str(m.owner),
        "--environment",
        m.environment,
        check=False,
    )


def test_up_clears_a_dead_mount_of_a_killed_front(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("mnt", *tenant)
    (m.path / "index.php").write_text("<?php 'kept';")
    kill_front(m)

    result = up_again(m)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cassfs: cleared a dead cassfs mount at {m.path} (its process had died)" in (
        result.stdout
    )
    assert f"mounted {m.owner}/{m.environment} at {m.path}" in result.stdout
    assert (m.path / "index.php").read_text() == "<?php 'kept';"
    assert [fstype(m.path)] == ["fuse.cassfs"]


def test_up_clears_a_dead_mount_whose_directories_were_listed(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """Once the front declined an opendir (``cassfs.openflags``), the kernel opens
    directories without asking and answers a listing it keeps by itself, so a dead mount
    opens and lists its root like a live one.  ``cassfs status`` still calls it dead and
    ``cassfs up`` still clears it (before, both opened the root to tell, and `cassfs up`
    refused with "already a mount point")."""
    m = mount_cassfs("mnt", *tenant)
    (m.path / "d").mkdir()
    (m.path / "d" / "index.php").write_text("<?php 'kept';")
    assert os.listdir(m.path) == os.listdir(m.path) == ["d"]
    kill_front(m)
    os.scandir(m.path).close()  # what the old check asked: no error from a dead mount

    status = run_cli("status", str(m.path), "--json", check=False)
    mounts = {entry["mountpoint"]: entry for entry in json.loads(status.stdout)["mounts"]}
    assert mounts[str(m.path)]["state"] == "dead"

    result = up_again(m)

    assert result.returncode == 0, result.stderr
    assert f"cassfs: cleared a dead cassfs mount at {m.path} (its process had died)" in (
        result.stdout
    )
    assert (m.path / "d" / "index.php").read_text() == "<?php 'kept';"


def test_down_unmounts_a_dead_mount_lazily(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("mnt", *tenant)
    daemon_pid = call_once(m.cache_dir, "status")["pid"]
    kill_front(m)

    result = run_cli("down", str(m.path), check=False)

    assert result.returncode == 0, result.stderr
    assert f"unmounted the dead mount at {m.path} lazily" in result.stdout
    assert fstype(m.path) is None  # gone from /proc/mounts
    assert os.listdir(m.path) == []
    # and the daemon, which no mount uses any more, is gone too
    assert wait_for(lambda: not os.path.exists(f"/proc/{daemon_pid}"))
    again = run_cli("down", str(m.path), check=False)
    assert again.returncode == 1 and "is not mounted" in again.stderr


def test_next_daemon_removes_the_spool_file_of_a_killed_front(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("mnt", *tenant)
    spool = m.cache_dir / "spool"
    # a writer with 3 MiB unflushed: the front holds them in a spool file
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "f = open(sys.argv[1], 'wb')\n"
            "f.write(b'x' * (3 << 20)); f.flush()\n"
            "print('written', flush=True)\n"
            "time.sleep(600)\n",
            str(m.path / "big.bin"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "written\n"
        front_pid = read_record(m.path).pid  # type: ignore[union-attr]
        assert wait_for(lambda: any(spool.glob(f"front-{front_pid}-*")))
        daemon_pid = call_once(m.cache_dir, "status")["pid"]
        kill_front(m)
    finally:
        writer.kill()
        writer.wait()
    try:
        # The daemon ends the killed front's session when it reads the end of its
        # connection, which a shutdown sent at once can beat (it is then refused).
        assert wait_for(lambda: call_once(m.cache_dir, "status")["sessions"] == 0, 10)
        call_once(m.cache_dir, "shutdown", timeout=5)
    except DaemonUnavailable:
        pass  # it left by itself: no mount used it
    assert wait_for(lambda: not os.path.exists(f"/proc/{daemon_pid}"))
    assert list(spool.glob("front-*")) != []  # the leftover
    m.cache_dir.chmod(0o755)  # as an older cassfs or an operator left it

    result = up_again(m)

    assert result.returncode == 0, result.stderr
    assert list(spool.glob("front-*")) == []
    assert stat.S_IMODE(m.cache_dir.stat().st_mode) == 0o700
    shared = [
        str(p.relative_to(m.cache_dir))
        for p in [m.cache_dir, *m.cache_dir.rglob("*")]
        if stat.S_IMODE(p.lstat().st_mode) & 0o077
    ]
    assert shared == []
    for name in ("daemon.log", "daemon.out"):
        assert (m.cache_dir / name).exists(), name
    log = (m.cache_dir / "daemon.log").read_text()
    assert "removed 1 leftover spool files" in log and "serving" in log
    assert "serving" not in (m.cache_dir / "daemon.out").read_text()


@pytest.fixture
def dead_other_mount(tmp_path: Path, fuse_available: None) -> Iterator[Path]:
    """A directory holding a dead FUSE mount of another filesystem (fuse.othertest)."""
    path = tmp_path / "other"
    path.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-c", OTHER_FS, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == "mounted\n"
        server.kill()
        server.wait()
        assert wait_for(lambda: is_dead(path))
        assert fstype(path) == "fuse.othertest"
        yield path
    finally:
        server.kill()
        server.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


def test_a_dead_mount_of_another_filesystem_is_left_alone(
    dead_other_mount: Path, tmp_path: Path, cassandra: str
) -> None:
    up = run_cli("up", str(dead_other_mount), "--cache-dir", str(tmp_path / "c"), check=False)
    assert up.returncode == 1 and "Traceback" not in up.stderr
    assert "dead fuse.othertest mount" in up.stderr and "not a cassfs one" in up.stderr
    assert len(up.stderr.strip().splitlines()) == 1
    assert fstype(dead_other_mount) == "fuse.othertest"  # not unmounted
    down = run_cli("down", str(dead_other_mount), check=False)
    assert down.returncode == 1 and "dead fuse.othertest mount" in down.stderr
    assert fstype(dead_other_mount) == "fuse.othertest"


def test_daemon_start_up_errors_still_reach_the_user(tmp_path: Path, cassandra: str) -> None:
    (tmp_path / "mnt").mkdir()
    cache = tmp_path / "cache"
    result = run_cli(
        "up",
        str(tmp_path / "mnt"),
        "--cache-dir",
        str(cache),
        "--contact-points",
        cassandra,
        "--keyspace",
        "cassfs_not_there",
        check=False,
    )
    assert result.returncode == 1
    assert "cassfs schema apply" in result.stderr and "Traceback" not in result.stderr
    assert "cassfs schema apply" in (cache / "daemon.out").read_text()
    assert "start-up failed" in (cache / "daemon.log").read_text()
    assert stat.S_IMODE((cache / "daemon.out").stat().st_mode) == 0o600
    assert stat.S_IMODE((cache / "daemon.log").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--environment", "a,b", "1 to 64 characters"),
        ("--environment", "prød", "1 to 64 characters"),
        ("--environment", "", "1 to 64 characters"),
        ("--environment", "e" * 65, "1 to 64 characters"),
        ("--environment", "a/b", "1 to 64 characters"),
        ("--owner", "-1", "0<=x<=2147483647"),
        ("--owner", str(2**31), "0<=x<=2147483647"),
    ],
)
@pytest.mark.parametrize("command", ["up", "fsck"])
def test_bad_tenant_options_are_refused(
    command: str, option: str, value: str, message: str, tmp_path: Path
) -> None:
    (tmp_path / "mnt").mkdir()
    args = [str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "c")] if command == "up" else []
    result = run_cli(
        command, *args, "--contact-points", "127.0.0.1:1", option, value, check=False, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and option in result.stderr
    assert not (tmp_path / "c").exists()  # refused before anything started


def test_good_tenant_names_pass_the_check() -> None:
    for env in ("prod", "Stage-2", "a.b_c", "e" * 64):
        result = run_cli(
            "fsck", "--contact-points", "127.0.0.1:1", "--environment", env, check=False
        )
        assert result.returncode == 1, result.stderr  # it went on, to an unreachable node
        assert "127.0.0.1:1" in result.stderr


def test_up_passes_the_query_timeout_to_the_daemon_it_starts(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("mnt", *tenant, None, "--query-timeout", "3.5")
    status = call_once(m.cache_dir, "status")
    assert status["config"]["query_timeout"] == 3.5
