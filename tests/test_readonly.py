"""Read-only mounts (`cassfs up --ro`): every change fails with EROFS, and nothing on the
read-only host writes to Cassandra.

Three layers, each checked on its own: the front's handlers over an in-memory daemon (no
RPC for a change, no access time recorded); the daemon's raw sessions against the real
node (a session that said ``read_only`` at hello is refused every changing method, even
with the front bypassed, and a read-only hello makes no root); real mounts (the kernel's
``ro``, reads that match a read-write host's, every changing syscall EROFS, Cassandra's
rows and their write times unchanged, a daemon shared with a read-write mount, a daemon
restarted under a read-only mount).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing
from cassandra.query import ValueSequence

from cached.api import REQUESTS
from cached.client import DaemonClient, call_once, open_client, socket_path
from cached.errors import InvalidArgument, ReadOnly, from_wire
from cached.model import ROOT_INO
from cached.server import ADMIN_METHODS, READ_ONLY_METHODS
from cached.store import STATEMENTS, ContactPoints, ReadOnlyStatements, make_cluster
from cassfs.fs import FrontConfig, Operations
from tests.conftest import KEYSPACE, Daemon, Mount, run_cli, unmount
from tests.test_unit_fs import CTX, DIR_INO, FILE_INO, FakeDaemon, FakeKernel

#: Short TTLs, so the read-write host's changes show on the other within a second.
FAST = ("--cache-ttl", "0.2", "--entry-ttl", "0.1", "--negative-ttl", "0.1")
#: Seconds a read-only host is given to (wrongly) record an access time in the background
#: before its absence is checked; the same read on a read-write mount records one within
#: milliseconds (checked after it, in the same test).
QUIET = 1.0


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``check()`` is true (polling every 20 ms); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout} s: {what}")
        time.sleep(0.02)


def errno_of(fn: Callable[[], object]) -> int:
    """The errno ``fn()`` fails with, 0 when it succeeds."""
    try:
        fn()
    except OSError as exc:
        return exc.errno or 0
    return 0


# -- Cassandra's rows of a tenant, with their write times ------------------------------------

_INODE_COLUMNS = (
    "kind", "mode", "uid", "gid", "size", "atime_ns", "mtime_ns", "ctime_ns", "parent", "nlink",
    "content_id", "chunk_size", "target", "version", "rdev",
)  # fmt: skip


def _select(columns: tuple[str, ...], keys: str, table: str, where: str) -> str:
    """A SELECT of ``keys`` and ``columns`` with the write time of every column."""
    times = ", ".join(f"WRITETIME({c}) AS w_{c}" for c in columns)
    return f"SELECT {keys}, {', '.join(columns)}, {times} FROM {table} WHERE {where}"


def tenant_rows(cassandra: str, tenant: tuple[int, str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tenant in inode_index, inodes, dentries, versions and xattrs, with
    the write time of each cell: any write to them, even of an equal value, shows."""
    cluster = make_cluster(ContactPoints.parse(cassandra))
    try:
        session = cluster.connect(KEYSPACE)
        tenant_is = "owner = %s AND environment = %s"

        def rows(cql: str, *params: Any) -> list[tuple[Any, ...]]:
            found = session.execute(cql, (*tenant, *params))
            return sorted((tuple(sorted(row.items())) for row in found), key=repr)

        index = rows(
            _select(("kind", "created_ns"), "bucket, ino", "inode_index", tenant_is)
            + " AND bucket IN %s",
            ValueSequence(range(256)),
        )
        inos = sorted(dict(row)["ino"] for row in index)
        found: dict[str, list[tuple[Any, ...]]] = {"inode_index": index}
        for table, cql in (
            ("inodes", _select(_INODE_COLUMNS, "ino", "inodes", f"{tenant_is} AND ino = %s")),
            (
                "dentries",
                _select(("ino", "kind", "pending"), "parent, name", "dentries",
                        f"{tenant_is} AND parent = %s"),
            ),
            (
                "versions",
                _select(("content_id", "size", "chunk_size", "created_ns"), "ino, version",
                        "versions", f"{tenant_is} AND ino = %s"),
            ),
            ("xattrs", _select(("value",), "ino, name", "xattrs", f"{tenant_is} AND ino = %s")),
        ):  # fmt: skip
            found[table] = [row for ino in inos for row in rows(cql, ino)]
        return found
    finally:
        cluster.shutdown()


def stored_atime(cassandra: str, tenant: tuple[int, str], ino: int) -> tuple[int, int]:
    """``(atime_ns, its write time)`` of ``ino`` in Cassandra."""
    cluster = make_cluster(ContactPoints.parse(cassandra))
    try:
        row = (
            cluster.connect(KEYSPACE)
            .execute(
                "SELECT atime_ns, WRITETIME(atime_ns) AS w FROM inodes "
                "WHERE owner = %s AND environment = %s AND ino = %s",
                (*tenant, ino),
            )
            .one()
        )
        return row["atime_ns"], row["w"]
    finally:
        cluster.shutdown()


# -- the front, over an in-memory daemon -----------------------------------------------------


class AtimeDaemon(FakeDaemon):
    """A :class:`FakeDaemon` that records access times too."""

    def rpc_touch_atime(self, ino: int, atime_ns: int) -> bool:
        if ino in self.inodes:
            self.inodes[ino] = self.inodes[ino].evolve(atime_ns=atime_ns)
        return True


def read_only_ops(daemon: FakeDaemon, tmp_path: Path, read_only: bool = True) -> Operations:
    ops = Operations(
        daemon,  # type: ignore[arg-type]
        FrontConfig(entry_ttl=1.0, negative_ttl=1.0, atime="relatime", read_only=read_only),
        tmp_path,
        0,
    )
    ops.kernel = FakeKernel()  # type: ignore[assignment]
    return ops


async def test_the_front_answers_every_change_with_erofs_and_asks_the_daemon_nothing(
    tmp_path: Path,
) -> None:
    daemon = FakeDaemon()
    daemon.add_file(b"page.php", b"<?php 1;")
    daemon.add_dir(b"sub", 300)
    ops = read_only_ops(daemon, tmp_path)
    attr = pyfuse3.EntryAttributes()
    attr.st_size, attr.st_mode = 0, 0o100600
    every = SimpleNamespace(
        update_size=True, update_mode=True, update_uid=True, update_gid=True,
        update_atime=True, update_mtime=True, update_ctime=False,
    )  # fmt: skip
    changes: dict[str, Callable[[], Any]] = {
        "create": lambda: ops.create(DIR_INO, b"new", 0o100644, os.O_WRONLY | os.O_CREAT, CTX),
        "mkdir": lambda: ops.mkdir(DIR_INO, b"new", 0o40755, CTX),
        "mknod": lambda: ops.mknod(DIR_INO, b"fifo", stat.S_IFIFO | 0o644, 0, CTX),
        "symlink": lambda: ops.symlink(DIR_INO, b"link", b"page.php", CTX),
        "link": lambda: ops.link(FILE_INO, DIR_INO, b"again", CTX),
        "unlink": lambda: ops.unlink(DIR_INO, b"page.php", CTX),
        "rmdir": lambda: ops.rmdir(DIR_INO, b"sub", CTX),
        "rename": lambda: ops.rename(DIR_INO, b"page.php", DIR_INO, b"moved", 0, CTX),
        "setattr": lambda: ops.setattr(FILE_INO, attr, every, None, CTX),
        "open O_WRONLY": lambda: ops.open(FILE_INO, os.O_WRONLY, CTX),
        "open O_RDWR": lambda: ops.open(FILE_INO, os.O_RDWR, CTX),
        "open O_TRUNC": lambda: ops.open(FILE_INO, os.O_RDONLY | os.O_TRUNC, CTX),
        "write": lambda: ops.write(1, 0, b"x"),
        "setxattr": lambda: ops.setxattr(FILE_INO, b"user.k", b"v", CTX),
        "removexattr": lambda: ops.removexattr(FILE_INO, b"user.k", CTX),
    }
    for what, change in changes.items():
        with pytest.raises(pyfuse3.FUSEError) as info:
            await change()
        assert info.value.errno == errno.EROFS, what
    assert daemon.calls == []
    # reads work, and a read-only open is an open
    assert (await ops.lookup(DIR_INO, b"page.php", CTX)).st_ino == FILE_INO
    info = await ops.open(FILE_INO, os.O_RDONLY, CTX)
    assert await ops.read(info.fh, 0, 100) == b"<?php 1;"
    await ops.release(info.fh)
    assert [method for method, _ in daemon.calls] == ["lookup", "open"]


@pytest.mark.parametrize("read_only", [True, False])
async def test_only_a_read_only_mount_tells_the_kernel_it_needs_no_flush(
    tmp_path: Path, read_only: bool
) -> None:
    """ENOSYS from flush makes the kernel stop sending flushes on close (one round trip
    fewer per close); only a mount that never writes may say so."""
    daemon = FakeDaemon()
    daemon.add_file(b"page.php", b"<?php 1;")
    ops = read_only_ops(daemon, tmp_path, read_only)
    info = await ops.open(FILE_INO, os.O_RDONLY, CTX)
    if read_only:
        with pytest.raises(pyfuse3.FUSEError) as raised:
            await ops.flush(info.fh)
        assert raised.value.errno == errno.ENOSYS
    else:
        await ops.flush(info.fh)
    await ops.release(info.fh)


@pytest.mark.parametrize("read_only", [True, False])
async def test_the_front_of_a_read_only_mount_records_no_access_time(
    tmp_path: Path, read_only: bool
) -> None:
    daemon = AtimeDaemon()
    daemon.add_file(b"page.php", b"<?php 1;")  # atime 0, before its mtime: relatime records
    daemon.add_dir(b"sub", 300)
    ops = read_only_ops(daemon, tmp_path, read_only)
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        info = await ops.open(FILE_INO, os.O_RDONLY, CTX)
        await ops.release(info.fh)
        fh = await ops.opendir(300, CTX)
        await ops.releasedir(fh)
        await trio.testing.wait_all_tasks_blocked()
    touched = [params["ino"] for method, params in daemon.calls if method == "touch_atime"]
    # the same reads on a read-write mount record both accesses: the control
    assert touched == ([] if read_only else [FILE_INO, 300])


# -- the store's guard -----------------------------------------------------------------------


class RecordingStore:
    """Stands for :class:`cached.store.Store`: records the statements it is asked to run."""

    timeout = 3.0

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def run(self, name: str, params: Any) -> list[dict[str, Any]]:
        self.ran.append(name)
        return []

    async def run_batch(self, parts: Any, *, logged: bool = False) -> list[dict[str, Any]]:
        self.ran.append("batch")
        return []


async def test_a_read_only_tenant_view_sends_no_write() -> None:
    store = RecordingStore()
    guard = ReadOnlyStatements(store)  # type: ignore[arg-type]
    reads = [name for name, cql in STATEMENTS.items() if cql.lstrip().startswith("SELECT")]
    writes = [name for name in STATEMENTS if name not in reads]
    assert "get_inode" in reads and "put_root" in writes and "set_atime_at" in writes
    for name in reads:
        await guard.run(name, ())
    for name in writes:
        with pytest.raises(ReadOnly) as info:
            await guard.run(name, ())
        assert info.value.errno == errno.EROFS, name
    with pytest.raises(ReadOnly):
        await guard.run_batch([("get_inode", ())])
    assert store.ran == reads
    assert guard.timeout == 3.0


# -- the daemon's sessions, against the node -------------------------------------------------


@asynccontextmanager
async def session(
    daemon: Daemon, tenant: tuple[int, str], read_only: bool = False
) -> AsyncIterator[DaemonClient]:
    async with open_client(socket_path(daemon.cache_dir)) as client:
        await client.hello(*tenant, read_only=read_only)
        yield client


async def status(daemon: Daemon) -> dict[str, Any]:
    """The daemon's ``status`` reply (sessions, read-only sessions...)."""
    return await trio.to_thread.run_sync(daemon.call, "status")  # type: ignore[no-any-return]


def changing_calls(file_ino: int, dir_ino: int) -> dict[str, dict[str, Any]]:
    """A valid request of every method that changes something, each of which would change
    the tree ``f`` (a file with ``user.k``) and ``d`` (an empty directory) if allowed."""
    new = {"parent": ROOT_INO, "uid": 0, "gid": 0}
    return {
        "setattr": {"ino": file_ino, "mode": 0o600},
        "touch_atime": {"ino": file_ino, "atime_ns": time.time_ns()},
        "mkdir": {**new, "name": b"new-dir", "mode": 0o755},
        "create": {**new, "name": b"new-file", "mode": 0o644},
        "symlink": {**new, "name": b"new-link", "target": b"f"},
        "mknod": {**new, "name": b"new-fifo", "mode": stat.S_IFIFO | 0o644, "rdev": 0},
        "link": {"ino": file_ino, "new_parent": ROOT_INO, "new_name": b"new-name"},
        "unlink": {"parent": ROOT_INO, "name": b"f"},
        "rmdir": {"parent": ROOT_INO, "name": b"d"},
        "rename": {"old_parent": ROOT_INO, "old_name": b"f", "new_parent": dir_ino,
                   "new_name": b"g"},
        "purge_inode": {"ino": file_ino},
        "write": {"ino": file_ino, "data": b"changed"},
        "materialize": {"ino": file_ino},
        "setxattr": {"ino": file_ino, "name": b"user.k", "value": b"changed"},
        "removexattr": {"ino": file_ino, "name": b"user.k"},
    }  # fmt: skip


@pytest.mark.cassandra
async def test_a_read_only_session_is_refused_every_change_before_cassandra(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], cassandra: str
) -> None:
    daemon = start_daemon()
    async with session(daemon, tenant) as rw:
        f = await rw.call("create", parent=ROOT_INO, name=b"f", mode=0o644, uid=0, gid=0)
        f = await rw.call("write", ino=f["ino"], data=b"<?php 'served';")
        await rw.call("setxattr", ino=f["ino"], name=b"user.k", value=b"v")
        # atime before mtime: a touch_atime that got through would write
        await rw.call("setattr", ino=f["ino"], atime_ns=1_000_000_000)
        d = await rw.call("mkdir", parent=ROOT_INO, name=b"d", mode=0o755, uid=0, gid=0)
        before = await trio.to_thread.run_sync(tenant_rows, cassandra, tenant)
        async with session(daemon, tenant, read_only=True) as ro:
            assert (await status(daemon))["read_only_sessions"] == 1
            # reads work
            found = await ro.call("lookup", parent=ROOT_INO, name=b"f")
            assert found["ino"] == f["ino"] and found["content_id"] == f["content_id"]
            opened = await ro.call("open", ino=f["ino"])
            assert opened["data"] == b"<?php 'served';"
            names = [name for name, _ in await ro.call("readdir", ino=ROOT_INO)]
            assert names == [b"d", b"f"]
            assert (await ro.call("getxattr", ino=f["ino"], name=b"user.k"))["value"] == b"v"
            assert await ro.call("listxattr", ino=f["ino"]) == [b"user.k"]
            assert (await ro.call("getattr", ino=d["ino"]))["kind"] == 1
            # every change is refused, whatever it is
            calls = changing_calls(f["ino"], d["ino"])
            assert set(calls) == set(REQUESTS) - READ_ONLY_METHODS - ADMIN_METHODS - {"hello"}
            for method, params in calls.items():
                with pytest.raises(ReadOnly) as info:
                    await ro.call(method, **params)
                assert info.value.errno == errno.EROFS, method
            assert await ro.call("stats")  # administrative calls of a mount still work
        with trio.fail_after(10):  # the daemon ends the session once it sees the close
            while True:
                if (await status(daemon))["read_only_sessions"] == 0:
                    break
                await trio.sleep(0.02)
        after = await trio.to_thread.run_sync(tenant_rows, cassandra, tenant)
        assert after == before
        # the read-write session of the same daemon still changes things
        await rw.call("setxattr", ino=f["ino"], name=b"user.k", value=b"w")
        await rw.call("unlink", parent=ROOT_INO, name=b"f")


@pytest.mark.cassandra
async def test_a_read_only_hello_does_not_make_a_missing_root(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str], cassandra: str
) -> None:
    daemon = start_daemon()
    async with open_client(socket_path(daemon.cache_dir)) as client:
        with pytest.raises(InvalidArgument):  # checked like every parameter
            await client.call("hello", owner=tenant[0], environment=tenant[1], read_only=1)
    async with open_client(socket_path(daemon.cache_dir)) as client:
        with pytest.raises(ReadOnly) as info:
            await client.hello(*tenant, read_only=True)
        assert info.value.errno == errno.EROFS
        assert "mount it once without --ro" in str(info.value)
    rows = await trio.to_thread.run_sync(tenant_rows, cassandra, tenant)
    assert rows["inode_index"] == [] and rows["inodes"] == []
    async with session(daemon, tenant):  # a read-write hello makes it
        pass
    async with session(daemon, tenant, read_only=True) as ro:
        assert (await ro.call("getattr", ino=ROOT_INO))["ino"] == ROOT_INO


# -- real mounts -----------------------------------------------------------------------------


def mount_options(path: Path) -> list[str]:
    """The options /proc/self/mounts lists for the mount at ``path``."""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == str(path):
                return fields[3].split(",")
    pytest.fail(f"{path} is not in /proc/self/mounts")


def tree_view(root: Path) -> dict[str, Any]:
    """Everything a reader sees of the tree under ``root``: per path its stat (but atime),
    content or link target, and extended attributes; read with O_NOATIME."""
    view: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            entry: dict[str, Any] = {
                "ino": st.st_ino, "mode": st.st_mode, "nlink": st.st_nlink, "uid": st.st_uid,
                "gid": st.st_gid, "size": st.st_size, "mtime": st.st_mtime_ns,
                "ctime": st.st_ctime_ns, "rdev": st.st_rdev,
            }  # fmt: skip
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            else:
                entry["xattrs"] = {n: os.getxattr(path, n) for n in sorted(os.listxattr(path))}
            if stat.S_ISREG(st.st_mode):
                fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
                try:
                    entry["data"] = os.read(fd, st.st_size + 1)
                finally:
                    os.close(fd)
            view[str(path.relative_to(root))] = entry
    return view


def write_tree(root: Path) -> None:
    """A small site: directories, PHP files, a symlink, a hard link, a FIFO, xattrs."""
    (root / "site" / "inc").mkdir(parents=True)
    (root / "site" / "index.php").write_text("<?php require 'inc/lib.php';")
    (root / "site" / "inc" / "lib.php").write_bytes(os.urandom(200_000))
    (root / "site" / "empty").mkdir()
    os.symlink("index.php", root / "site" / "home.php")
    os.link(root / "site" / "index.php", root / "site" / "index-again.php")
    os.mkfifo(root / "site" / "fifo")
    os.setxattr(root / "site" / "index.php", "user.mime_type", b"text/x-php")
    os.setxattr(root / "site", "user.owner", b"web")


def every_change(b: Path) -> dict[str, Callable[[], object]]:
    """Every changing syscall, aimed at the tree of :func:`write_tree` under ``b``."""
    site = b / "site"
    index = site / "index.php"

    def opened(flags: int) -> Callable[[], None]:
        return lambda: os.close(os.open(index, flags))

    return {
        "create": lambda: os.close(os.open(site / "new.php", os.O_WRONLY | os.O_CREAT, 0o644)),
        "mkdir": lambda: os.mkdir(site / "new"),
        "mknod": lambda: os.mknod(site / "node", stat.S_IFIFO | 0o644),
        "symlink": lambda: os.symlink("index.php", site / "new-link"),
        "link": lambda: os.link(index, site / "new-name"),
        "unlink": lambda: os.unlink(index),
        "rmdir": lambda: os.rmdir(site / "empty"),
        "rename": lambda: os.rename(index, site / "moved.php"),
        "rename over": lambda: os.rename(site / "inc" / "lib.php", index),
        "truncate": lambda: os.truncate(index, 0),
        "chmod": lambda: os.chmod(index, 0o600),
        "chown": lambda: os.chown(index, 33, 33),
        "utimens": lambda: os.utime(index, ns=(1, 1)),
        "open O_WRONLY": opened(os.O_WRONLY),
        "open O_RDWR": opened(os.O_RDWR),
        "open O_TRUNC": opened(os.O_RDONLY | os.O_TRUNC),
        "open O_APPEND": opened(os.O_WRONLY | os.O_APPEND),
        "setxattr": lambda: os.setxattr(index, "user.mime_type", b"text/plain"),
        "setxattr new": lambda: os.setxattr(index, "user.new", b"x"),
        "removexattr": lambda: os.removexattr(index, "user.mime_type"),
    }


@pytest.mark.cassandra
@pytest.mark.fuse
def test_a_read_only_host_reads_the_tree_and_every_change_fails_with_erofs(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], cassandra: str
) -> None:
    a = mount_cassfs("a", *tenant, None, *FAST, "--atime", "noatime")
    write_tree(a.path)
    b = mount_cassfs("b", *tenant, None, *FAST, "--ro")
    assert "ro" in mount_options(b.path) and "rw" in mount_options(a.path)
    assert os.statvfs(b.path).f_flag & os.ST_RDONLY
    expected = tree_view(a.path)
    assert tree_view(b.path) == expected  # reads, listings, stats, links, xattrs
    assert sorted(os.listdir(b.path / "site")) == sorted(os.listdir(a.path / "site"))
    with open(b.path / "site" / "inc" / "lib.php", "rb") as reader:  # an ordinary read
        assert reader.read() == (a.path / "site" / "inc" / "lib.php").read_bytes()
    rows = tenant_rows(cassandra, tenant)
    for what, change in every_change(b.path).items():
        assert errno_of(change) == errno.EROFS, what
    assert tenant_rows(cassandra, tenant) == rows  # nothing written, not even equal values
    for m in (a, b):  # what each host sees, read from Cassandra again
        run_cli("cache", "purge", "--cache-dir", str(m.cache_dir))
        assert tree_view(m.path) == expected
    run_cli("cache", "purge", "--cache-dir", str(b.cache_dir))
    warmed = run_cli("cache", "warmup", "--json", str(b.path))  # a web host's start
    report = json.loads(warmed.stdout)
    files = sum(stat.S_ISREG(entry["mode"]) for entry in expected.values())
    assert (report["files"], report["failed"]) == (files, 0), report
    assert tenant_rows(cassandra, tenant) == rows
    # the read-write host still changes the tree, and the read-only one follows
    (a.path / "site" / "index.php").write_text("<?php 'v2';")
    eventually(
        lambda: (b.path / "site" / "index.php").read_text() == "<?php 'v2';",
        what="the read-only host reads the new version",
    )


@pytest.mark.cassandra
@pytest.mark.fuse
def test_a_read_only_host_records_no_access_time(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], cassandra: str
) -> None:
    a = mount_cassfs("a", *tenant, None, *FAST)  # relatime, the default
    f = a.path / "page.php"
    f.write_text("<?php 'page';")
    (a.path / "dir").mkdir()
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))  # atime before mtime: a read records
    os.utime(a.path / "dir", ns=(1_000_000_000, 2_000_000_000))
    ino, dir_ino = f.stat().st_ino, (a.path / "dir").stat().st_ino
    before = stored_atime(cassandra, tenant, ino), stored_atime(cassandra, tenant, dir_ino)
    assert before[0][0] == 1_000_000_000
    b = mount_cassfs("b", *tenant, None, *FAST, "--ro")
    assert (b.path / "page.php").read_text() == "<?php 'page';"
    assert os.listdir(b.path / "dir") == []
    time.sleep(QUIET)  # an absence: give a background write the time to happen
    after = stored_atime(cassandra, tenant, ino), stored_atime(cassandra, tenant, dir_ino)
    assert after == before
    # the control: the same read on the read-write host records it
    assert f.read_text() == "<?php 'page';"
    eventually(
        lambda: stored_atime(cassandra, tenant, ino)[0] > 2_000_000_000,
        what="relatime recorded the read-write host's read",
    )


@pytest.mark.cassandra
@pytest.mark.fuse
def test_read_only_and_read_write_mounts_share_one_daemon(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], cassandra: str, tmp_path: Path
) -> None:
    a = mount_cassfs("a", *tenant, "shared-cache", *FAST)
    (a.path / "page.php").write_text("<?php 1;")
    b = Mount(tmp_path / "b", a.cache_dir, *tenant)
    b.path.mkdir()
    try:
        up = run_cli(
            "up", str(b.path), "--cache-dir", str(b.cache_dir), "--contact-points", cassandra,
            "--keyspace", KEYSPACE, "--owner", str(tenant[0]), "--environment", tenant[1],
            *FAST, env={"CASSFS_RO": "1"},
        )  # fmt: skip
        assert "read-only" in up.stdout, up.stdout
        assert "ro" in mount_options(b.path) and "rw" in mount_options(a.path)
        status = call_once(a.cache_dir, "status")
        assert (status["sessions"], status["read_only_sessions"]) == (2, 1)
        assert (b.path / "page.php").read_text() == "<?php 1;"
        assert errno_of(lambda: (b.path / "page.php").write_text("<?php 'b';")) == errno.EROFS
        assert errno_of(lambda: os.mkdir(b.path / "dir")) == errno.EROFS
        assert errno_of(lambda: os.setxattr(b.path / "page.php", "user.k", b"v")) == errno.EROFS
        # the read-write mount of the same daemon changes things, and the other sees them
        (a.path / "page.php").write_text("<?php 2;")
        os.mkdir(a.path / "dir")
        os.setxattr(a.path / "page.php", "user.k", b"a")
        assert (b.path / "page.php").read_text() == "<?php 2;"
        assert sorted(os.listdir(b.path)) == ["dir", "page.php"]
        assert os.getxattr(b.path / "page.php", "user.k") == b"a"
        assert os.stat(b.path / "page.php").st_ino == os.stat(a.path / "page.php").st_ino
    finally:
        unmount(b)


@pytest.mark.cassandra
@pytest.mark.fuse
def test_cassfs_up_ro_of_a_tenant_without_root_fails_clearly(
    cassandra: str, fuse_available: None, tenant: tuple[int, str], tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount(mnt, tmp_path / "cache", *tenant)
    try:
        up = run_cli(
            "up", str(mnt), "--cache-dir", str(m.cache_dir), "--contact-points", cassandra,
            "--keyspace", KEYSPACE, "--owner", str(tenant[0]), "--environment", tenant[1],
            "--ro", check=False,
        )  # fmt: skip
        assert up.returncode == 1, up.stderr
        lines = up.stderr.strip().splitlines()
        assert len(lines) == 1 and "mount it once without --ro" in lines[0], up.stderr
        assert f"{tenant[0]}/{tenant[1]} has no files yet" in lines[0]
        assert not os.path.ismount(mnt)
    finally:
        unmount(m)
    rows = tenant_rows(cassandra, tenant)
    assert rows["inode_index"] == [] and rows["inodes"] == []


@pytest.mark.cassandra
@pytest.mark.fuse
def test_a_read_only_mount_stays_read_only_when_its_daemon_restarts(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    a = mount_cassfs("a", *tenant, None, *FAST)
    (a.path / "page.php").write_text("<?php 1;")
    b = mount_cassfs("b", *tenant, None, *FAST, "--ro")
    pid = call_once(b.cache_dir, "status")["pid"]
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: not os.path.exists(f"/proc/{pid}"), what="the daemon died")
    # the mount starts a new daemon and says hello again: read-only again
    assert os.listdir(b.path) == ["page.php"]
    status = call_once(b.cache_dir, "status")
    assert status["pid"] != pid
    assert (status["sessions"], status["read_only_sessions"]) == (1, 1)
    assert (b.path / "page.php").read_text() == "<?php 1;"
    assert errno_of(lambda: os.unlink(b.path / "page.php")) == errno.EROFS


def test_read_only_methods_are_daemon_methods_and_erofs_crosses_the_wire() -> None:
    assert set(READ_ONLY_METHODS) <= set(REQUESTS)
    assert not READ_ONLY_METHODS & {"touch_atime", "write", "setattr", "materialize"}
    error = from_wire(ReadOnly("mkdir: this mount session is read-only").to_wire())
    assert type(error) is ReadOnly and error.errno == errno.EROFS
