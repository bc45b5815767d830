"""Extended attributes: getxattr, setxattr, listxattr and removexattr.

Through real mounts (the kernel's own checks included: permissions as another user,
``trusted.*``, symlinks, name and value limits), across two hosts (separate cache dirs
and daemons on one tenant), against the daemon's RPCs directly (the checks the kernel
makes first), and over the front's handlers alone (pyfuse3's setxattr flags, the
negative answers the front keeps).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from cached.api import (
    XATTR_CREATE,
    XATTR_REPLACE,
    XATTR_TOTAL_MAX,
    Xattr,
    check_xattr_name,
)
from cached.errors import (
    CassfsError,
    Exists,
    InvalidArgument,
    NoAttribute,
    NotSupported,
    OutOfRange,
)
from cached.model import ROOT_INO
from cached.store import ContactPoints, make_cluster
from cassfs.fs import FrontConfig, Operations
from cassfs.xattrs import AbsentXattrs
from tests.conftest import KEYSPACE, Daemon, Mount, errno_of
from tests.test_daemon import session

NOBODY = 65534
ROOT_CTX: Any = SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.getxattr.restype = ctypes.c_ssize_t
_libc.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.listxattr.restype = ctypes.c_ssize_t


def c_getxattr(path: Path, name: str, size: int) -> tuple[int, int]:
    """getxattr(2) with a buffer of ``size`` bytes (0: the size probe): (result, errno)."""
    buf = ctypes.create_string_buffer(max(size, 1))
    ctypes.set_errno(0)
    got = _libc.getxattr(os.fsencode(path), name.encode(), buf if size else None, size)
    return got, ctypes.get_errno() if got < 0 else 0


def c_listxattr(path: Path, size: int) -> tuple[int, int]:
    """listxattr(2) with a buffer of ``size`` bytes (0: the size probe): (result, errno)."""
    buf = ctypes.create_string_buffer(max(size, 1))
    ctypes.set_errno(0)
    got = _libc.listxattr(os.fsencode(path), buf if size else None, size)
    return got, ctypes.get_errno() if got < 0 else 0


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    """True once ``check()`` holds, polling; False if it never did within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def as_user(uid: int, cwd: Path, ops: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``ops()`` in a forked child as ``uid`` (group ``uid``, no supplementary groups)
    in directory ``cwd`` (entered as root: pytest's tmp dirs are 0700); its JSON result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(write_end, json.dumps(ops()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        output = reader.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the child failed"
    return json.loads(output)  # type: ignore[no-any-return]


@contextmanager
def cql(cassandra: str) -> Iterator[Callable[..., list[dict[str, Any]]]]:
    """A function running CQL on the test keyspace (``{ks}`` in the statement)."""
    cluster = make_cluster(ContactPoints.parse(cassandra))
    try:
        connection = cluster.connect()

        def run(statement: str, *params: Any) -> list[dict[str, Any]]:
            return list(connection.execute(statement.format(ks=KEYSPACE), params))

        yield run
    finally:
        cluster.shutdown()


def xattr_rows(
    run: Callable[..., list[dict[str, Any]]], tenant: tuple[int, str], ino: int
) -> dict[bytes, bytes]:
    """The ``xattrs`` rows of ``ino``, read straight from Cassandra."""
    rows = run(
        "SELECT name, value FROM {ks}.xattrs WHERE owner = %s AND environment = %s AND ino = %s",
        *tenant,
        ino,
    )
    return {r["name"]: r["value"] for r in rows}


#: A valid POSIX ACL in its xattr form (version 2; user::rwx group::r-- other::r--), so the
#: kernel passes ``system.posix_acl_access`` through to the filesystem.
POSIX_ACL = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in ((1, 7), (4, 4), (0x20, 4))
)


# -- through a mount ------------------------------------------------------------------------

pytestmark = pytest.mark.cassandra


@pytest.mark.fuse
def test_set_get_list_remove_on_files_and_directories(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("x", *tenant)
    f = m.path / "file.txt"
    f.write_text("content")
    d = m.path / "dir"
    d.mkdir()
    for target in (f, d):
        assert os.listxattr(target) == []
        before = os.stat(target).st_ctime_ns
        os.setxattr(target, "user.mime_type", b"text/plain")
        os.setxattr(target, "user.empty", b"")
        os.setxattr(target, "user.binary", bytes(range(256)))
        os.setxattr(target, "security.label", b"s0")
        assert os.stat(target).st_ctime_ns > before  # setxattr changes the ctime
        assert os.getxattr(target, "user.mime_type") == b"text/plain"
        assert os.getxattr(target, "user.empty") == b""
        assert os.getxattr(target, "user.binary") == bytes(range(256))
        assert sorted(os.listxattr(target)) == [
            "security.label", "user.binary", "user.empty", "user.mime_type"
        ]  # fmt: skip
        os.setxattr(target, "user.mime_type", b"text/x-php")  # a plain set replaces
        assert os.getxattr(target, "user.mime_type") == b"text/x-php"
        before = os.stat(target).st_ctime_ns
        os.removexattr(target, "user.mime_type")
        assert os.stat(target).st_ctime_ns > before  # so does removexattr
        assert errno_of(partial(os.getxattr, target, "user.mime_type")) == errno.ENODATA
        assert errno_of(partial(os.removexattr, target, "user.mime_type")) == errno.ENODATA
        assert "user.mime_type" not in os.listxattr(target)
    assert f.read_text() == "content"  # the content is untouched


@pytest.mark.fuse
def test_xattr_create_and_replace_flags(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("x", *tenant)
    f = m.path / "f"
    f.write_bytes(b"")
    assert errno_of(lambda: os.setxattr(f, "user.a", b"1", os.XATTR_REPLACE)) == errno.ENODATA
    os.setxattr(f, "user.a", b"1", os.XATTR_CREATE)
    assert errno_of(lambda: os.setxattr(f, "user.a", b"2", os.XATTR_CREATE)) == errno.EEXIST
    assert os.getxattr(f, "user.a") == b"1"
    os.setxattr(f, "user.a", b"3", os.XATTR_REPLACE)
    assert os.getxattr(f, "user.a") == b"3"
    os.removexattr(f, "user.a")
    assert errno_of(lambda: os.setxattr(f, "user.a", b"4", os.XATTR_REPLACE)) == errno.ENODATA
    assert errno_of(lambda: os.getxattr(f, "user.a")) == errno.ENODATA


@pytest.mark.fuse
def test_names_sizes_and_limits(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("x", *tenant)
    f = m.path / "f"
    f.write_bytes(b"x")
    # namespaces: ACLs and names without a known namespace are not supported (as ext4)
    assert errno_of(lambda: os.setxattr(f, "system.posix_acl_access", POSIX_ACL)) == (
        errno.EOPNOTSUPP
    )
    assert errno_of(lambda: os.getxattr(f, "system.posix_acl_access")) == errno.EOPNOTSUPP
    for name in ("foo", "os2.name", "system.other", "User.x"):
        assert errno_of(partial(os.setxattr, f, name, b"v")) == errno.EOPNOTSUPP, name
        assert errno_of(partial(os.getxattr, f, name)) == errno.EOPNOTSUPP, name
    assert errno_of(lambda: os.setxattr(f, "user.", b"v")) == errno.EINVAL
    # names: 255 bytes at most (the kernel says ERANGE past it)
    longest = "user." + "n" * 250
    os.setxattr(f, longest, b"long name")
    assert os.getxattr(f, longest) == b"long name"
    assert errno_of(lambda: os.setxattr(f, longest + "n", b"v")) == errno.ERANGE
    os.removexattr(f, longest)
    # values: 64 KiB at most (the kernel says E2BIG past it); os.getxattr probes the size
    big = os.urandom(65536)
    os.setxattr(f, "user.big", big)
    assert os.getxattr(f, "user.big") == big
    assert errno_of(lambda: os.setxattr(f, "user.bigger", big + b"!")) == errno.E2BIG
    # the caller's buffer: size probe, too small (ERANGE), just right
    os.setxattr(f, "user.ten", b"0123456789")
    assert c_getxattr(f, "user.ten", 0) == (10, 0)
    assert c_getxattr(f, "user.ten", 9) == (-1, errno.ERANGE)
    assert c_getxattr(f, "user.ten", 10) == (10, 0)
    listed = len(b"user.big\0user.ten\0")
    assert c_listxattr(f, 0) == (listed, 0)
    assert c_listxattr(f, listed - 1) == (-1, errno.ERANGE)
    assert c_listxattr(f, listed) == (listed, 0)
    # per inode: names and values at most 128 KiB in all (ENOSPC past it, as a full ext4)
    assert errno_of(lambda: os.setxattr(f, "user.big2", big)) == errno.ENOSPC
    room = XATTR_TOTAL_MAX - (len("user.big") + len(big)) - (len("user.ten") + 10)
    os.setxattr(f, "user.rest", b"r" * (room - len("user.rest")))
    assert errno_of(lambda: os.setxattr(f, "user.z", b"")) == errno.ENOSPC
    os.setxattr(f, "user.big", b"smaller")  # replacing counts the old value out
    os.setxattr(f, "user.z", b"")
    assert sorted(os.listxattr(f)) == ["user.big", "user.rest", "user.ten", "user.z"]


@pytest.mark.fuse
def test_trusted_and_permissions_as_another_user(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("x", *tenant)
    root_file = m.path / "roots"  # root's, 0644
    root_file.write_text("r")
    os.setxattr(root_file, "user.seen", b"by all")
    os.setxattr(root_file, "trusted.secret", b"root only")
    assert sorted(os.listxattr(root_file)) == ["trusted.secret", "user.seen"]
    assert os.getxattr(root_file, "trusted.secret") == b"root only"
    private = m.path / "private"  # root's, 0600
    private.write_text("p")
    private.chmod(0o600)
    os.setxattr(private, "user.p", b"p")
    os.setxattr(private, "security.label", b"public")
    mine = m.path / "mine"  # nobody's, 0644
    mine.write_text("m")
    os.chown(mine, NOBODY, NOBODY)

    def ops() -> dict[str, Any]:
        return {
            "get_trusted": errno_of(lambda: os.getxattr("roots", "trusted.secret")),
            "set_trusted": errno_of(lambda: os.setxattr("mine", "trusted.x", b"x")),
            "remove_trusted": errno_of(lambda: os.removexattr("roots", "trusted.secret")),
            "list": sorted(os.listxattr("roots")),
            "get_user": os.getxattr("roots", "user.seen").decode(),
            "set_user_not_writable": errno_of(lambda: os.setxattr("roots", "user.x", b"x")),
            "remove_user_not_writable": errno_of(lambda: os.removexattr("roots", "user.seen")),
            "get_user_not_readable": errno_of(lambda: os.getxattr("private", "user.p")),
            "get_security_not_readable": os.getxattr("private", "security.label").decode(),
            "set_user_own": errno_of(lambda: os.setxattr("mine", "user.own", b"own")),
            "get_user_own": os.getxattr("mine", "user.own").decode(),
            "set_security": errno_of(lambda: os.setxattr("mine", "security.x", b"x")),
        }

    got = as_user(NOBODY, m.path, ops)
    assert got == {
        "get_trusted": errno.ENODATA,  # trusted.* is invisible to other users, as on Linux
        "set_trusted": errno.EPERM,
        "remove_trusted": errno.EPERM,
        "list": ["user.seen"],
        "get_user": "by all",
        "set_user_not_writable": errno.EACCES,  # the kernel checks write permission
        "remove_user_not_writable": errno.EACCES,
        "get_user_not_readable": errno.EACCES,  # and read permission
        "get_security_not_readable": "public",  # security.* needs no permission
        "set_user_own": 0,
        "get_user_own": "own",
        "set_security": errno.EPERM,  # security.* needs CAP_SYS_ADMIN (commoncap)
    }
    assert os.getxattr(root_file, "trusted.secret") == b"root only"
    assert os.getxattr(mine, "user.own") == b"own"


@pytest.mark.fuse
def test_user_attributes_not_on_symlinks(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("x", *tenant)
    (m.path / "target").write_text("t")
    link = m.path / "link"
    link.symlink_to("target")
    assert errno_of(lambda: os.setxattr(link, "user.x", b"x", follow_symlinks=False)) == errno.EPERM
    assert errno_of(lambda: os.getxattr(link, "user.x", follow_symlinks=False)) == errno.ENODATA
    assert errno_of(lambda: os.removexattr(link, "user.x", follow_symlinks=False)) == errno.EPERM
    # other namespaces are allowed on a symlink; following it reaches the target
    os.setxattr(link, "trusted.x", b"on the link", follow_symlinks=False)
    os.setxattr(link, "user.x", b"on the target")
    assert os.listxattr(link, follow_symlinks=False) == ["trusted.x"]
    assert os.getxattr(link, "trusted.x", follow_symlinks=False) == b"on the link"
    assert os.listxattr(m.path / "target") == ["user.x"]


@pytest.mark.fuse
def test_writes_do_not_ask_the_daemon_for_security_capability(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("x", *tenant)
    before = m.stats()
    fd = os.open(m.path / "log", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        for _ in range(300):  # the kernel asks for security.capability before each one
            os.write(fd, b"0123456789")
    finally:
        os.close(fd)
    after = m.stats()
    # the new file's empty attribute map was cached by create; the front keeps the answer
    assert after["xattr_reads"] == before["xattr_reads"]
    assert after["xattr_hits"] - before["xattr_hits"] <= 2
    assert (m.path / "log").stat().st_size == 3000
    # a change of the file's attributes is seen at once by the next probe
    capability = b"\x00\x00\x00\x02" + bytes(16)  # VFS_CAP_REVISION_2, no capabilities
    os.setxattr(m.path / "log", "security.capability", capability)
    assert os.getxattr(m.path / "log", "security.capability") == capability


def inode_flag(run: Callable[..., list[dict[str, Any]]], tenant: tuple[int, str], ino: int) -> Any:
    """The ``xattrs`` column of inode ``ino`` (schema 7), read straight from Cassandra."""
    rows = run(
        "SELECT xattrs FROM {ks}.inodes WHERE owner = %s AND environment = %s AND ino = %s",
        *tenant,
        ino,
    )
    return rows[0]["xattrs"]


@pytest.mark.fuse
def test_an_overwrite_after_a_purge_reads_no_attributes(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], cassandra: str
) -> None:
    """Schema 7: an inode cassfs makes says it has no extended attributes, so the kernel's
    ``security.capability`` probe at each overwrite after a purge queries no ``xattrs``
    partition; the first attribute set turns the flag on, and a row whose flag is null
    (written by an older cassfs) is asked as before."""
    m = mount_cassfs("x", *tenant)
    plain, tagged, old = m.path / "plain.php", m.path / "tagged.php", m.path / "old.php"
    for f in (plain, tagged, old):
        f.write_bytes(b"<?php // one")
    os.setxattr(tagged, "user.k", b"v")
    with cql(cassandra) as run:
        assert inode_flag(run, tenant, plain.stat().st_ino) is False
        assert inode_flag(run, tenant, tagged.stat().st_ino) is True
        run(
            "UPDATE {ks}.inodes SET xattrs = null WHERE owner = %s AND environment = %s "
            "AND ino = %s",
            *tenant,
            old.stat().st_ino,
        )
    m.cli("cache", "purge", "--cache-dir", str(m.cache_dir))
    before = m.stats()
    plain.write_bytes(b"<?php // two")  # O_TRUNC, then write(2): the kernel's probe
    assert m.stats()["xattr_reads"] == before["xattr_reads"]
    assert errno_of(lambda: os.getxattr(plain, "user.k")) == errno.ENODATA
    assert m.stats()["xattr_reads"] == before["xattr_reads"]
    old.write_bytes(b"<?php // two")
    assert m.stats()["xattr_reads"] == before["xattr_reads"] + 1  # unknown: asked
    assert os.getxattr(tagged, "user.k") == b"v"
    assert os.listxattr(plain) == []
    assert plain.read_bytes() == old.read_bytes() == b"<?php // two"


@pytest.mark.fuse
def test_an_attribute_set_on_one_host_is_seen_where_the_inode_said_none(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """Host B holds the inode, read with "no attributes", and answered ENODATA from it;
    host A sets an attribute: B sees it (the feed expires B's copy of the inode)."""
    a = mount_cassfs("host-a", *tenant)
    b = mount_cassfs("host-b", *tenant)
    (a.path / "f").write_text("f")
    g = b.path / "f"
    assert eventually(g.exists)  # B may have listed the root before A's create
    assert g.read_text() == "f"
    reads = b.stats()["xattr_reads"]
    assert errno_of(lambda: os.getxattr(g, "user.k")) == errno.ENODATA
    assert b.stats()["xattr_reads"] == reads  # answered from B's copy of the inode
    os.setxattr(a.path / "f", "user.k", b"v")
    assert eventually(lambda: errno_of(lambda: os.getxattr(g, "user.k")) == 0)
    assert os.getxattr(g, "user.k") == b"v"


@pytest.mark.fuse
def test_a_second_mount_on_the_daemon_sees_changes_at_once(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    a = mount_cassfs("a", *tenant, "shared-cache")
    b = mount_cassfs("b", *tenant, "shared-cache")
    (a.path / "f").write_text("f")
    assert errno_of(lambda: os.getxattr(b.path / "f", "user.k")) == errno.ENODATA  # kept by b
    os.setxattr(a.path / "f", "user.k", b"v")
    assert os.getxattr(b.path / "f", "user.k") == b"v"  # no TTL to wait for
    os.removexattr(a.path / "f", "user.k")
    assert errno_of(lambda: os.getxattr(b.path / "f", "user.k")) == errno.ENODATA


@pytest.mark.fuse
def test_purge_and_a_second_host(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    ttl = ["--cache-ttl", "2"]
    a = mount_cassfs("host-a", *tenant, None, *ttl)
    (a.path / "site").mkdir()
    f = a.path / "site" / "index.php"
    f.write_text("<?php")
    os.setxattr(f, "user.k", b"v1")
    os.setxattr(a.path / "site", "user.dir", b"d")
    # after a purge of the cache, read again from Cassandra
    before = a.stats()
    a.cli("cache", "purge", "--cache-dir", str(a.cache_dir))
    assert os.getxattr(f, "user.k") == b"v1"
    assert os.getxattr(a.path / "site", "user.dir") == b"d"
    assert a.stats()["xattr_reads"] > before["xattr_reads"]
    # another host: its own cache dir and daemon
    b = mount_cassfs("host-b", *tenant, None, *ttl)
    g = b.path / "site" / "index.php"
    assert os.getxattr(g, "user.k") == b"v1"
    assert os.listxattr(b.path / "site") == ["user.dir"]
    assert errno_of(lambda: os.getxattr(g, "user.other")) == errno.ENODATA  # kept a while
    os.setxattr(f, "user.k", b"v2")
    os.setxattr(f, "user.other", b"o")
    assert eventually(lambda: os.getxattr(g, "user.k") == b"v2")  # within b's TTL
    assert eventually(lambda: errno_of(lambda: os.getxattr(g, "user.other")) == 0)
    os.removexattr(g, "user.k")  # and back
    assert eventually(lambda: errno_of(lambda: os.getxattr(f, "user.k")) == errno.ENODATA)
    assert os.listxattr(f) == ["user.other"]


@pytest.mark.fuse
def test_two_hosts_racing_xattr_create_get_one_winner(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    a = mount_cassfs("host-a", *tenant)
    (a.path / "f").write_text("f")
    b = mount_cassfs("host-b", *tenant)
    paths = {"a": a.path / "f", "b": b.path / "f"}
    assert paths["b"].read_text() == "f"
    rounds = 15
    for i in range(rounds):
        name = f"user.race{i}"
        barrier = threading.Barrier(2)
        outcome: dict[str, int] = {}

        def race(
            host: str,
            name: str = name,
            barrier: threading.Barrier = barrier,
            outcome: dict[str, int] = outcome,
        ) -> None:
            barrier.wait()
            outcome[host] = errno_of(
                lambda: os.setxattr(paths[host], name, host.encode(), os.XATTR_CREATE)
            )

        threads = [threading.Thread(target=race, args=(host,)) for host in paths]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcome.values()) == [0, errno.EEXIST], (name, outcome)
        winner = next(host for host, err in outcome.items() if err == 0).encode()
        # the loser's daemon learnt the winner's value from the LWT's answer
        assert os.getxattr(paths["a"], name) == winner
        assert os.getxattr(paths["b"], name) == winner
    assert len(os.listxattr(paths["a"])) == rounds


@pytest.mark.fuse
def test_an_unlinked_files_attributes_are_deleted_with_it(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], cassandra: str
) -> None:
    m = mount_cassfs("x", *tenant, None, "--purge-delay", "0")
    f = m.path / "doomed"
    f.write_text("bye")
    os.setxattr(f, "user.a", b"1")
    os.setxattr(f, "trusted.b", b"2")
    ino = f.stat().st_ino
    kept = m.path / "kept"
    kept.write_text("stays")
    os.setxattr(kept, "user.a", b"stays")
    with cql(cassandra) as run:
        assert xattr_rows(run, tenant, ino) == {b"user.a": b"1", b"trusted.b": b"2"}
        f.unlink()
        assert eventually(lambda: xattr_rows(run, tenant, ino) == {}, 30)
        assert xattr_rows(run, tenant, kept.stat().st_ino) == {b"user.a": b"stays"}


@pytest.mark.fuse
def test_cp_preserves_attributes(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], tmp_path: Path
) -> None:
    cp = shutil.which("cp")
    assert cp is not None
    m = mount_cassfs("x", *tenant)
    local = tmp_path / "local.txt"
    local.write_text("local")
    os.setxattr(local, "user.origin", b"ext4")
    os.setxattr(local, "user.bin", b"\x00\xff")
    subprocess.run([cp, "--preserve=xattr", str(local), str(m.path / "in.txt")], check=True)
    inside = m.path / "in.txt"
    assert inside.read_text() == "local"
    assert {n: os.getxattr(inside, n) for n in os.listxattr(inside)} == {
        "user.origin": b"ext4", "user.bin": b"\x00\xff"
    }  # fmt: skip
    os.setxattr(inside, "user.added", b"in cassfs")
    subprocess.run([cp, "-a", str(inside), str(m.path / "copy.txt")], check=True)
    subprocess.run([cp, "--preserve=xattr", str(inside), str(tmp_path / "out.txt")], check=True)
    for copied in (m.path / "copy.txt", tmp_path / "out.txt"):
        assert sorted(os.listxattr(copied)) == ["user.added", "user.bin", "user.origin"]
        assert os.getxattr(copied, "user.added") == b"in cassfs"


# -- the daemon's RPCs directly: what the kernel checks before a request reaches FUSE --------


async def test_daemon_checks_names_values_flags_and_kinds(
    start_daemon: Callable[..., Daemon], tenant: tuple[int, str]
) -> None:
    daemon = start_daemon()
    async with session(daemon, tenant) as client:
        f = await client.call("create", parent=ROOT_INO, name=b"f", mode=0o644, uid=0, gid=0)
        link = await client.call("symlink", parent=ROOT_INO, name=b"l", target=b"f", uid=0, gid=0)
        ino = f["ino"]

        async def errno_of_call(method: str, **params: Any) -> int:
            try:
                await client.call(method, **params)
            except CassfsError as exc:
                return exc.errno
            return 0

        set_ = "setxattr"
        assert await errno_of_call(set_, ino=ino, name=b"user.k", value=b"x" * 65537) == (
            errno.E2BIG
        )
        assert await errno_of_call(set_, ino=ino, name=b"user." + b"n" * 251, value=b"") == (
            errno.ERANGE
        )
        assert await errno_of_call(set_, ino=ino, name=b"", value=b"") == errno.ERANGE
        assert await errno_of_call(set_, ino=ino, name=b"system.x", value=b"") == (errno.EOPNOTSUPP)
        assert await errno_of_call("getxattr", ino=ino, name=b"x") == errno.EOPNOTSUPP
        assert await errno_of_call(set_, ino=ino, name=b"user.k", value=b"", flags=4) == (
            errno.EINVAL
        )
        assert await errno_of_call(set_, ino=link["ino"], name=b"user.k", value=b"") == (
            errno.EPERM
        )
        assert await errno_of_call(set_, ino=2**62, name=b"user.k", value=b"") == errno.ENOENT
        assert await errno_of_call("removexattr", ino=ino, name=b"user.k") == errno.ENODATA
        # both flags: whichever applies
        both = XATTR_CREATE | XATTR_REPLACE
        assert await errno_of_call(set_, ino=ino, name=b"user.k", value=b"", flags=both) == (
            errno.ENODATA
        )
        await client.call(set_, ino=ino, name=b"user.k", value=b"v")
        assert await errno_of_call(set_, ino=ino, name=b"user.k", value=b"", flags=both) == (
            errno.EEXIST
        )
        reply = await client.call("getxattr", ino=ino, name=b"user.k")
        assert reply["value"] == b"v" and 0 < reply["fresh_for"] <= 60
        missing = await client.call("getxattr", ino=ino, name=b"user.none")
        assert missing["value"] is None
        assert await client.call("listxattr", ino=ino) == [b"user.k"]
        # the cache: a purge empties it, the next answer comes from Cassandra
        await client.call("purge")
        reads = (await client.call("stats"))["xattr_reads"]
        assert (await client.call("getxattr", ino=ino, name=b"user.k"))["value"] == b"v"
        assert (await client.call("stats"))["xattr_reads"] == reads + 1
        assert (await client.call("getxattr", ino=ino, name=b"user.k"))["value"] == b"v"
        assert (await client.call("stats"))["xattr_reads"] == reads + 1


# -- units: names, the front's negative answers, pyfuse3's setxattr flags -------------------


def test_check_xattr_name() -> None:
    assert check_xattr_name(b"user.a") == b"user."
    assert check_xattr_name(b"trusted.overlay.opaque") == b"trusted."
    assert check_xattr_name(b"security.selinux") == b"security."
    assert check_xattr_name(b"user." + b"n" * 250) == b"user."
    for name, error in (
        (b"", OutOfRange),
        (b"user." + b"n" * 251, OutOfRange),
        (b"system.posix_acl_access", NotSupported),
        (b"userx", NotSupported),
        (b"user.", InvalidArgument),
        (b"user.a\0b", InvalidArgument),
    ):
        with pytest.raises(error):
            check_xattr_name(name)


def test_absent_names_expire_are_forgotten_and_bounded() -> None:
    absent = AbsentXattrs(max_inodes=2, max_names=2)
    absent.remember(1, b"security.capability", until=10.0, generation=absent.generation)
    assert absent.known(1, b"security.capability", now=9.9)
    assert not absent.known(1, b"security.capability", now=10.0)  # expired, and dropped
    assert len(absent) == 0
    generation = absent.generation
    absent.forget(7)  # a change while an answer was in flight: that answer is not kept
    absent.remember(1, b"a", until=10.0, generation=generation)
    assert not absent.known(1, b"a", now=0.0)
    for ino in (1, 2, 3):
        absent.remember(ino, b"a", until=10.0, generation=absent.generation)
    assert len(absent) == 2 and not absent.known(1, b"a", now=0.0)  # least recently used
    for name in (b"a", b"b", b"c"):
        absent.remember(3, name, until=10.0, generation=absent.generation)
    assert absent.known(3, b"c", now=0.0) and not absent.known(3, b"a", now=0.0)
    absent.forget(3)
    assert not absent.known(3, b"c", now=0.0)
    absent.clear()
    assert len(absent) == 0


class XattrDaemon:
    """The daemon's xattr RPCs over one dict per inode; records every call."""

    def __init__(self, fresh_for: float = 30.0) -> None:
        self.xattrs: dict[int, dict[bytes, bytes]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fresh_for = fresh_for
        self.on_set: Callable[[], object] | None = None  # runs between check and write
        self.hold_get: trio.Event | None = None

    async def call(self, method: str, **params: Any) -> Any:
        self.calls.append((method, params))
        await trio.lowlevel.checkpoint()
        held = self.xattrs.setdefault(params["ino"], {})
        if method == "getxattr":
            value = held.get(params["name"])
            if self.hold_get is not None:
                await self.hold_get.wait()
            return Xattr(value, self.fresh_for).to_wire()
        if method == "setxattr":
            if self.on_set is not None:
                self.on_set()
            name, flags = params["name"], params["flags"]
            if flags & XATTR_CREATE and name in held:
                raise Exists(name.decode())
            if flags & XATTR_REPLACE and name not in held:
                raise NoAttribute(name.decode())
            held[name] = params["value"]
            return None
        if method == "removexattr":
            if held.pop(params["name"], None) is None:
                raise NoAttribute(params["name"].decode())
            return None
        if method == "listxattr":
            return sorted(held)
        raise AssertionError(method)

    def flags_sent(self) -> list[int]:
        return [params["flags"] for method, params in self.calls if method == "setxattr"]

    def gets(self) -> int:
        return sum(1 for method, _ in self.calls if method == "getxattr")


def front(daemon: XattrDaemon, tmp_path: Path) -> Operations:
    return Operations(daemon, FrontConfig(), tmp_path, 0)  # type: ignore[arg-type]


async def pyfuse3_setxattr(
    ops: Operations, ino: int, name: bytes, value: bytes, flags: int, ctx: Any
) -> None:
    """What pyfuse3 3.5 does with a setxattr request (handlers.pxi fuse_setxattr_async):
    the flags become a getxattr first, with the same context object."""
    if flags & XATTR_CREATE:
        try:
            await ops.getxattr(ino, name, ctx)
        except pyfuse3.FUSEError as exc:
            if exc.errno != errno.ENODATA:
                raise
        else:
            raise pyfuse3.FUSEError(errno.EEXIST)
    elif flags & XATTR_REPLACE:
        await ops.getxattr(ino, name, ctx)
    await ops.setxattr(ino, name, value, ctx)


def ctx() -> Any:
    """A new request context (pyfuse3 makes one per request)."""
    return SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)


async def test_setxattr_flags_are_recognised_from_pyfuse3s_getxattr(tmp_path: Path) -> None:
    daemon = XattrDaemon()
    ops = front(daemon, tmp_path)
    await pyfuse3_setxattr(ops, 5, b"user.a", b"1", XATTR_CREATE, ctx())
    await pyfuse3_setxattr(ops, 5, b"user.a", b"2", XATTR_REPLACE, ctx())
    await pyfuse3_setxattr(ops, 5, b"user.a", b"3", 0, ctx())
    # a getxattr of another request before a plain set does not make it a flagged one
    request = ctx()
    await ops.getxattr(5, b"user.a", request)
    await pyfuse3_setxattr(ops, 5, b"user.a", b"4", 0, ctx())
    with pytest.raises(pyfuse3.FUSEError):
        await ops.getxattr(5, b"user.b", request)
    await pyfuse3_setxattr(ops, 5, b"user.a", b"5", 0, request)  # same ctx, other name
    assert daemon.flags_sent() == [XATTR_CREATE, XATTR_REPLACE, 0, 0, 0]
    assert daemon.xattrs[5] == {b"user.a": b"5"}
    # another host takes the name between pyfuse3's check and the set: the daemon's LWT
    # decides, and the caller gets EEXIST
    daemon.on_set = lambda: daemon.xattrs[5].setdefault(b"user.new", b"other host")
    with pytest.raises(pyfuse3.FUSEError) as info:
        await pyfuse3_setxattr(ops, 5, b"user.new", b"mine", XATTR_CREATE, ctx())
    assert info.value.errno == errno.EEXIST
    assert daemon.xattrs[5][b"user.new"] == b"other host"
    # the negative answer of pyfuse3's check is not kept past the failed set
    assert await ops.getxattr(5, b"user.new", ctx()) == b"other host"
    # and one removed meanwhile makes XATTR_REPLACE fail with ENODATA
    daemon.on_set = lambda: daemon.xattrs[5].pop(b"user.a", None)
    with pytest.raises(pyfuse3.FUSEError) as info:
        await pyfuse3_setxattr(ops, 5, b"user.a", b"6", XATTR_REPLACE, ctx())
    assert info.value.errno == errno.ENODATA


async def test_the_front_keeps_negative_answers_until_a_change(tmp_path: Path) -> None:
    daemon = XattrDaemon(fresh_for=30.0)
    ops = front(daemon, tmp_path)
    for _ in range(5):
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.getxattr(5, b"security.capability", ctx())
        assert info.value.errno == errno.ENODATA
    assert daemon.gets() == 1
    await ops.setxattr(5, b"security.capability", b"cap", ctx())  # this mount's change
    assert await ops.getxattr(5, b"security.capability", ctx()) == b"cap"
    await ops.removexattr(5, b"security.capability", ctx())
    with pytest.raises(pyfuse3.FUSEError):
        await ops.getxattr(5, b"security.capability", ctx())
    ops.on_notification("changed", {"inos": [5]})  # another session's change
    daemon.xattrs[5][b"security.capability"] = b"theirs"
    assert await ops.getxattr(5, b"security.capability", ctx()) == b"theirs"
    # an answer in flight while this mount changes the inode is not kept
    gets = daemon.gets()
    daemon.xattrs[5].pop(b"security.capability")
    daemon.hold_get = trio.Event()
    async with trio.open_nursery() as nursery:

        async def probe() -> None:
            with pytest.raises(pyfuse3.FUSEError):
                await ops.getxattr(5, b"security.capability", ctx())

        nursery.start_soon(probe)
        await trio.testing.wait_all_tasks_blocked()
        await ops.setxattr(5, b"security.capability", b"new", ctx())
        daemon.hold_get.set()
    daemon.hold_get = None
    assert await ops.getxattr(5, b"security.capability", ctx()) == b"new"
    assert daemon.gets() == gets + 2
    # an answer the daemon served past its TTL (fresh_for 0) is not kept
    daemon.fresh_for = 0.0
    for _ in range(2):
        with pytest.raises(pyfuse3.FUSEError):
            await ops.getxattr(5, b"user.none", ctx())
    assert daemon.gets() == gets + 4


async def test_trusted_is_for_root_in_the_front(tmp_path: Path) -> None:
    daemon = XattrDaemon()
    daemon.xattrs[5] = {b"trusted.t": b"t", b"user.u": b"u"}
    ops = front(daemon, tmp_path)
    user: Any = SimpleNamespace(uid=1000, gid=1000, pid=1, umask=0o022)
    assert await ops.listxattr(5, user) == [b"user.u"]
    assert await ops.listxattr(5, ROOT_CTX) == [b"trusted.t", b"user.u"]
    for call, expected in (
        (ops.getxattr(5, b"trusted.t", user), errno.ENODATA),
        (ops.setxattr(5, b"trusted.t", b"x", user), errno.EPERM),
        (ops.removexattr(5, b"trusted.t", user), errno.EPERM),
        (ops.getxattr(5, b"system.posix_acl_access", ROOT_CTX), errno.EOPNOTSUPP),
    ):
        with pytest.raises(pyfuse3.FUSEError) as info:
            await call
        assert info.value.errno == expected
    assert daemon.xattrs[5][b"trusted.t"] == b"t"
