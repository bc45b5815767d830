"""POSIX behaviour through real mounts: hard links, special files, times, setgid directories
and permission checks as a user other than root.

Each test mounts its own tenant (see conftest); cross-host checks use a second mount with
its own cache dir, so a second daemon.  Waits are on conditions, never bare sleeps.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import KEYSPACE, Mount, scrape, value
from tests.test_metrics import metrics_address
from tests.test_xattr import cql

pytestmark = [pytest.mark.cassandra, pytest.mark.fuse]

#: A uid/gid no file here belongs to, for the checks run as another user.
OTHER = 4242
#: Short TTLs, so another host's change shows within a second.
FAST = ("--cache-ttl", "0.2", "--entry-ttl", "0.1", "--negative-ttl", "0.1")


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``check()`` is true (polling every 20 ms); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout} s: {what}")
        time.sleep(0.02)


def as_user(fn: Callable[[], object], cwd: Path, uid: int = OTHER, gid: int = OTHER) -> int:
    """Run ``fn`` in a forked child as ``uid``/``gid`` from ``cwd``; the errno it failed
    with, else 0.  ``fn`` uses paths relative to ``cwd`` (pytest's tmp dirs above it are
    root's alone, so a walk down from ``/`` would fail with EACCES before the mount)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.chdir(cwd)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            fn()
        except OSError as exc:
            code = exc.errno or 255
        except BaseException:
            code = 254
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def stored_nlink(cassandra: str, tenant: tuple[int, str], ino: int) -> list[int]:
    """The nlink Cassandra holds for ``ino`` (``[]``: the inode row is gone)."""
    from cached.store import ContactPoints, make_cluster

    cluster = make_cluster(ContactPoints.parse(cassandra))
    try:
        rows = cluster.connect(KEYSPACE).execute(
            "SELECT nlink FROM inodes WHERE owner = %s AND environment = %s AND ino = %s",
            (*tenant, ino),
        )
        return [row["nlink"] for row in rows]
    finally:
        cluster.shutdown()


# -- hard links -----------------------------------------------------------------------------


def test_hard_links_share_one_inode_and_keep_true_counts_across_hosts(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], cassandra: str
) -> None:
    a = mount_cassfs("a", *tenant, None, *FAST)
    b = mount_cassfs("b", *tenant, None, *FAST)
    (a.path / "d").mkdir()
    first = a.path / "index.php"
    first.write_bytes(b"<?php echo 1;")
    os.link(first, a.path / "d" / "copy.php")
    os.link(first, a.path / "third.php")
    ino = first.stat().st_ino
    for name in ("index.php", "d/copy.php", "third.php"):
        st = (a.path / name).stat()
        assert (st.st_ino, st.st_nlink) == (ino, 3), name
    # the content is one: a rewrite through one name shows through the others
    (a.path / "d" / "copy.php").write_bytes(b"<?php echo 2;")
    assert (a.path / "third.php").read_bytes() == b"<?php echo 2;"
    # the second host sees one inode with three names
    eventually(lambda: (b.path / "d" / "copy.php").exists(), what="link seen on host b")
    eventually(
        lambda: (
            (b.path / "index.php").stat().st_nlink == 3
            and (b.path / "d" / "copy.php").read_bytes() == b"<?php echo 2;"
        ),
        what="nlink 3 and the new content on host b",
    )
    # an unlink on host b keeps the other names, with the count told to host a
    os.unlink(b.path / "index.php")
    eventually(
        lambda: not (a.path / "index.php").exists() and (a.path / "third.php").stat().st_nlink == 2,
        what="host a sees the unlink",
    )
    assert (a.path / "d" / "copy.php").read_bytes() == b"<?php echo 2;"
    # the last names go: the count in Cassandra reaches 0 (or the inode is purged already)
    os.unlink(a.path / "third.php")
    os.unlink(a.path / "d" / "copy.php")
    assert stored_nlink(cassandra, tenant, ino) in ([0], [])


def test_link_errnos_and_rename_over_a_hard_link(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("m", *tenant)
    (m.path / "dir").mkdir()
    (m.path / "f").write_bytes(b"one")
    (m.path / "g").write_bytes(b"two")
    with pytest.raises(PermissionError):  # EPERM: no hard links to directories
        os.link(m.path / "dir", m.path / "dir2")
    with pytest.raises(FileExistsError):
        os.link(m.path / "f", m.path / "g")
    with pytest.raises(FileNotFoundError):
        os.link(m.path / "missing", m.path / "h")
    with pytest.raises(OSError) as too_long:
        os.link(m.path / "f", m.path / ("x" * 256))
    assert too_long.value.errno == errno.ENAMETOOLONG
    os.link(m.path / "f", m.path / "f2")
    # rename(2) between two names of one inode does nothing (POSIX): both names stay
    os.rename(m.path / "f", m.path / "f2")
    assert (m.path / "f").stat().st_nlink == (m.path / "f2").stat().st_nlink == 2
    # renaming another file over one name takes one name away, the other keeps the inode
    os.rename(m.path / "g", m.path / "f2")
    assert (m.path / "f2").read_bytes() == b"two"
    assert (m.path / "f").read_bytes() == b"one"
    assert (m.path / "f").stat().st_nlink == 1


def test_two_hosts_unlinking_two_names_of_one_inode_both_count(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], cassandra: str
) -> None:
    a = mount_cassfs("a", *tenant, None, *FAST)
    b = mount_cassfs("b", *tenant, None, *FAST)
    inos = []
    for round_ in range(6):
        (a.path / f"f{round_}").write_bytes(b"x")
        os.link(a.path / f"f{round_}", a.path / f"g{round_}")
        inos.append((a.path / f"f{round_}").stat().st_ino)
    eventually(lambda: all((b.path / f"g{r}").exists() for r in range(6)), what="names on b")
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def unlink_all(root: Path, prefix: str) -> None:
        try:
            for round_ in range(6):
                barrier.wait(10)
                os.unlink(root / f"{prefix}{round_}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=unlink_all, args=(a.path, "f")),
        threading.Thread(target=unlink_all, args=(b.path, "g")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for ino in inos:
        assert stored_nlink(cassandra, tenant, ino) in ([0], []), ino


# -- special files --------------------------------------------------------------------------


def test_fifos_sockets_and_device_nodes_are_stored_with_their_type_and_rdev(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    a = mount_cassfs("a", *tenant, None, *FAST)
    b = mount_cassfs("b", *tenant, None, *FAST)
    os.mkfifo(a.path / "fifo", 0o640)
    os.mknod(a.path / "chr", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(a.path / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(a.path / "php-fpm.sock"))
        server.listen(1)
        # the kernel serves the socket: a client connects through the mount
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(a.path / "php-fpm.sock"))
        conn, _ = server.accept()
        client.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        client.close()
        conn.close()
    finally:
        server.close()
    # a FIFO carries data between two opens, through the kernel
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append((a.path / "fifo").read_bytes()))
    reader.start()
    (a.path / "fifo").write_bytes(b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"]
    for host in (a, b):
        sock_path = host.path / "php-fpm.sock"
        eventually(sock_path.exists, what=f"{sock_path} exists")
        fifo, chr_, blk, sock = (
            os.lstat(host.path / n) for n in ("fifo", "chr", "blk", "php-fpm.sock")
        )
        assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o640
        assert stat.S_ISCHR(chr_.st_mode) and chr_.st_rdev == os.makedev(1, 3)
        assert stat.S_ISBLK(blk.st_mode) and blk.st_rdev == os.makedev(7, 0)
        assert stat.S_ISSOCK(sock.st_mode)
    assert sorted(os.listdir(b.path)) == ["blk", "chr", "fifo", "php-fpm.sock"]
    for name in ("fifo", "chr", "blk", "php-fpm.sock"):
        os.unlink(b.path / name)
    eventually(lambda: os.listdir(a.path) == [], what="unlinks seen on host a")


# -- times ----------------------------------------------------------------------------------


def test_cp_a_keeps_the_times_of_files_and_directories(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], tmp_path: Path
) -> None:
    m = mount_cassfs("m", *tenant)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "page.php").write_bytes(b"<?php // page" * 100)
    (src / "index.php").write_bytes(b"<?php // index")
    stamps = {
        "sub/page.php": 1_500_000_000_123_456_789,
        "index.php": 1_400_000_000_000_000_001,
        "sub": 1_300_000_000_987_654_321,
        ".": 1_200_000_000_000_000_000,
    }
    for name, ns in stamps.items():
        os.utime(src / name, ns=(ns - 10**9, ns))
    subprocess.run(["cp", "-a", f"{src}/.", str(m.path / "copy")], check=True)
    for name, ns in stamps.items():
        st = os.stat(m.path / "copy" / name)
        assert st.st_mtime_ns == ns, name  # nanoseconds kept
        assert st.st_atime_ns == ns - 10**9, name


def test_times_set_on_an_open_written_file_survive_its_close(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("m", *tenant)
    path = m.path / "f"
    with open(path, "wb") as f:
        f.write(b"written before the times are set")
        f.flush()
        os.utime(f.fileno(), ns=(1_000_000_000_000_000_000, 1_100_000_000_000_000_000))
    st = path.stat()
    assert st.st_mtime_ns == 1_100_000_000_000_000_000
    assert path.read_bytes() == b"written before the times are set"


def test_ctime_and_the_parents_times_follow_every_change(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("m", *tenant)
    (m.path / "d").mkdir()
    f = m.path / "d" / "f"
    f.write_bytes(b"x")

    def after(change: Callable[[], None], *paths: Path, field: str = "st_ctime_ns") -> None:
        before = [getattr(os.lstat(p), field) for p in paths]
        time.sleep(0.01)  # distinct nanosecond clocks, not a wait for a condition
        change()
        for p, old in zip(paths, before, strict=True):
            assert getattr(os.lstat(p), field) > old, (p, field)

    after(lambda: os.chmod(f, 0o600), f)
    after(lambda: os.chown(f, 12, 34), f)
    after(lambda: os.link(f, m.path / "d" / "g"), f, m.path / "d")
    after(lambda: os.link(f, m.path / "d" / "h"), m.path / "d", field="st_mtime_ns")
    after(lambda: os.unlink(m.path / "d" / "g"), f, m.path / "d")
    after(lambda: os.rename(m.path / "d" / "h", m.path / "d" / "i"), m.path / "d", f)
    before = os.lstat(m.path / "d" / "i").st_ctime_ns
    after(lambda: os.rename(m.path / "d" / "i", m.path / "i"), m.path / "d", m.path)
    assert os.lstat(m.path / "i").st_ctime_ns > before  # the moved inode's ctime too
    after(lambda: os.truncate(f, 100), f)
    after(lambda: os.truncate(f, 0), f, field="st_mtime_ns")
    after(lambda: f.write_bytes(b"new"), f, field="st_mtime_ns")
    after(lambda: (m.path / "d" / "new").write_bytes(b""), m.path / "d", field="st_mtime_ns")


def test_relatime_records_a_read_once_and_noatime_never(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    owner, environment = tenant
    m = mount_cassfs("m", owner, environment, None, "--entry-ttl", "0.1")
    f = m.path / "f"
    f.write_bytes(b"x")
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))  # atime before mtime: a read records
    f.read_bytes()
    eventually(lambda: f.stat().st_atime_ns > 2_000_000_000, what="relatime recorded the read")
    recorded = f.stat().st_atime_ns
    f.read_bytes()  # atime is after mtime and ctime now, and recent: nothing written
    time.sleep(0.3)  # past the attr timeout, so a changed atime would show
    assert f.stat().st_atime_ns == recorded
    n = mount_cassfs("n", owner, environment, "n-cache", "--entry-ttl", "0.1", "--atime", "noatime")
    g = n.path / "g"
    g.write_bytes(b"y")
    os.utime(g, ns=(1_000_000_000, 2_000_000_000))
    g.read_bytes()
    os.listdir(n.path)
    time.sleep(0.3)
    assert g.stat().st_atime_ns == 1_000_000_000


def test_a_cold_read_records_its_access_in_the_open_round_trip(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """A first read on another host is one ``open`` RPC: the open records relatime's
    access itself (no ``touch_atime`` after it), the reader sees it, and it reaches
    Cassandra."""
    a = mount_cassfs("a", *tenant)
    (a.path / "f").write_bytes(b"x")
    os.utime(a.path / "f", ns=(1_000_000_000, 2_000_000_000))  # atime before mtime
    b = mount_cassfs(
        "b", *tenant, "bcache", "--entry-ttl", "0.1", "--metrics-address", "127.0.0.1:0"
    )
    address = metrics_address(b)
    before = scrape(address)
    written = b.stats()["atime_writes"]
    assert (b.path / "f").read_bytes() == b"x"
    after = scrape(address)
    rpcs = "cassfs_rpc_duration_seconds_count"
    assert value(after, rpcs, method="open") == value(before, rpcs, method="open") + 1
    assert value(after, rpcs, method="touch_atime") == value(before, rpcs, method="touch_atime")
    eventually(
        lambda: (b.path / "f").stat().st_atime_ns > 2_000_000_000, what="the access seen on b"
    )
    eventually(lambda: b.stats()["atime_writes"] > written, what="the access written")


def test_an_access_is_written_behind_the_read_and_never_over_a_later_change(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], cassandra: str
) -> None:
    """relatime's writes go to Cassandra behind the reads (cached/atimes.py), each with the
    access's own write timestamp: a ``utimensat`` made after the access, before the
    flush, is what stays, on this host and in Cassandra."""
    m = mount_cassfs("m", *tenant)
    f, g = m.path / "f", m.path / "g"
    for path in (f, g):
        path.write_bytes(b"x")
        os.utime(path, ns=(1_000_000_000, 2_000_000_000))  # atime before mtime: reads record
    with cql(cassandra) as run:

        def stored(path: Path) -> int:
            rows = run(
                "SELECT atime_ns FROM {ks}.inodes WHERE owner = %s AND environment = %s "
                "AND ino = %s",
                *tenant,
                path.stat().st_ino,
            )
            return int(rows[0]["atime_ns"])

        written = m.stats()["atime_writes"]
        f.read_bytes()
        eventually(lambda: m.stats()["atime_writes"] > written, what="the access written")
        assert stored(f) == f.stat().st_atime_ns > 2_000_000_000
        written = m.stats()["atime_writes"]
        g.read_bytes()
        os.utime(g, ns=(3_000_000_000, 4_000_000_000))  # before the flush (every 0.5 s)
        eventually(lambda: m.stats()["atime_writes"] > written, what="the access written")
        assert stored(g) == g.stat().st_atime_ns == 3_000_000_000


# -- permissions ----------------------------------------------------------------------------


def test_setgid_directories_pass_their_group_and_the_bit(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("m", *tenant)
    shared = m.path / "www"
    shared.mkdir()
    os.chown(shared, 0, 33)  # www-data's group
    os.chmod(shared, 0o2775)
    (shared / "upload.php").write_bytes(b"x")
    (shared / "cache").mkdir()
    os.mkfifo(shared / "fifo")
    assert (shared / "upload.php").stat().st_gid == 33
    assert (shared / "fifo").stat().st_gid == 33
    sub = (shared / "cache").stat()
    assert sub.st_gid == 33 and sub.st_mode & stat.S_ISGID
    assert not (shared / "upload.php").stat().st_mode & stat.S_ISGID


def test_permission_checks_as_another_user(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("m", *tenant)
    (m.path / "root-only").write_bytes(b"secret")
    os.chmod(m.path / "root-only", 0o600)
    top = m.path
    assert as_user(lambda: Path("root-only").read_bytes(), top) == errno.EACCES
    assert as_user(lambda: os.chmod("root-only", 0o666), top) == errno.EPERM
    assert as_user(lambda: os.chown("root-only", OTHER, OTHER), top) == errno.EPERM
    assert as_user(lambda: Path("new").write_bytes(b"x"), top) == errno.EACCES  # root's 0755
    # the sticky bit: another user's file in a shared /tmp-like directory stays
    (m.path / "tmp").mkdir()
    os.chmod(m.path / "tmp", 0o1777)
    assert as_user(lambda: Path("tmp/mine").write_bytes(b"x"), top, uid=OTHER + 1) == 0
    assert as_user(lambda: os.unlink("tmp/mine"), top) == errno.EPERM
    assert as_user(lambda: os.unlink("tmp/mine"), top, uid=OTHER + 1) == 0
    # setuid and setgid are cleared when someone other than root writes the file
    prog = m.path / "prog"
    prog.write_bytes(b"#!/bin/sh\n")
    os.chown(prog, OTHER, OTHER)
    os.chmod(prog, 0o6775)
    assert as_user(lambda: Path("prog").open("ab").write(b"echo\n"), top) == 0
    assert stat.S_IMODE(prog.stat().st_mode) == 0o775
    # and by a chown (by root, of a setuid file)
    os.chmod(prog, 0o4755)
    os.chown(prog, 0, 0)
    assert not prog.stat().st_mode & stat.S_ISUID
