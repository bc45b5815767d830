"""The FUSE front through real mounts: what the kernel sees of writes, versions and names.

Two mounts with their own cache dirs are two hosts (two daemons) on one tenant.  Each
test here failed on the front before issue 5's fixes; tests/test_unit_fs.py checks the
same handlers over an in-memory daemon, where races can be played in a fixed order.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cached.client import call_once
from cassfs import fuseloop
from tests.conftest import Mount

pytestmark = [pytest.mark.cassandra, pytest.mark.fuse]

#: A host that sees other hosts' changes within a tenth of a second.
FAST = ["--cache-ttl", "0.1", "--entry-ttl", "0.1", "--negative-ttl", "0.1"]
#: A host whose kernel keeps entries and attributes (above all st_size) for a minute,
#: while its daemon revalidates within a tenth of a second.
KERNEL_KEEPS = ["--cache-ttl", "0.1", "--entry-ttl", "60", "--negative-ttl", "60"]


def poll_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Call ``check`` until it returns True; fail the test after ``seconds``.

    A name another host just made may not be there yet (ENOENT) on this one: its
    directory's listing may be a few hundred milliseconds old (the change feed's bound,
    or the TTL); that counts as not yet.
    """
    deadline = time.monotonic() + seconds

    def done() -> bool:
        try:
            return check()
        except FileNotFoundError:
            return False

    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s", pytrace=False)
        time.sleep(0.02)


def writer_and_reader(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], name: str, first: bytes
) -> tuple[Mount, Mount]:
    """Two hosts: A writes ``name`` (content ``first``), B's kernel keeps entries and
    attributes for a minute; returns ``(a, b)`` once B reads ``first``."""
    a = mount_cassfs("writer", *tenant, None, *FAST)
    b = mount_cassfs("reader", *tenant, None, *KERNEL_KEEPS)
    (a.path / name).write_bytes(first)
    poll_until(lambda: (b.path / name).read_bytes() == first, 10, "the first version")
    return a, b


def read_whole(path: Path, versions: list[bytes]) -> bytes:
    """Read ``path``; fail the test if the bytes are not exactly one of ``versions``."""
    data = path.read_bytes()
    if data not in versions:
        pytest.fail(f"{path.name}: read {len(data)} bytes of {sorted(set(data))[:8]!r}, a mix")
    return data


def test_closing_a_reader_does_not_publish_a_half_written_file(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("host", *tenant)
    page = m.path / "page.php"
    page.write_bytes(b"<?php old();")
    flushes = m.stats()["flushes"]
    with open(page, "wb") as writer:  # O_TRUNC
        writer.write(b"<?php half")
        writer.flush()
        with open(page, "rb") as reader:
            assert reader.read() == b"<?php half"  # this host sees writes as they happen
        assert m.stats()["flushes"] == flushes  # the reader's close wrote nothing through
        writer.write(b"(); ?>")
    assert m.stats()["flushes"] == flushes + 1
    assert page.read_bytes() == b"<?php half(); ?>"


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def test_only_a_descriptor_that_can_write_sends_a_flush_at_close(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """close(2) of a read-only descriptor sends no FUSE_FLUSH (FOPEN_NOFLUSH, which pyfuse3
    cannot set: cassfs/_openflags.c), so a warm open/read/close is two kernel round trips;
    the close of a descriptor that can write still flushes, since a flush is where a
    written file reaches Cassandra before close(2) returns."""
    m = mount_cassfs("host", *tenant, None, "--debug")
    page = m.path / "page.php"
    page.write_bytes(b"<?php one();")
    flushes = len(m.operations("flush"))  # the write's, logged before its close returned
    for _ in range(3):
        assert page.read_bytes() == b"<?php one();"
    with open(page, "r+b") as either:  # O_RDWR: may write, so its close flushes
        assert either.read() == b"<?php one();"
    assert len(m.operations("flush")) == flushes + 1
    with open(page, "r+b") as writer:
        writer.write(b"<?php two();")
    assert len(m.operations("flush")) == flushes + 2
    assert page.read_bytes() == b"<?php two();"


def test_a_request_waiting_for_the_daemon_does_not_hold_up_one_the_front_answers(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """While a lookup waits for a paused daemon, a warm open/read/close (answered by the
    front and the kernel alone) completes: another pyfuse3 worker reads the device once a
    handler suspends (cassfs.fuseloop; a worker finishing a request watches the device
    itself, so nobody would otherwise)."""
    m = mount_cassfs("host", *tenant, None, "--debug", "--atime", "noatime")
    page = m.path / "page.php"
    page.write_bytes(b"<?php warm();")
    # from the second on, opens are answered from the front's memory; and past
    # fuseloop.MAX_TASKS requests, pyfuse3 starts no new worker, which would watch the device
    for _ in range(fuseloop.MAX_TASKS):
        assert page.read_bytes() == b"<?php warm();"
    daemon = call_once(m.cache_dir, "status")["pid"]
    os.kill(daemon, signal.SIGSTOP)
    try:
        waiting = threading.Thread(target=os.path.exists, args=(m.path / "absent.php",))
        waiting.start()
        poll_until(
            lambda: any("b'absent.php'" in line for line in m.operations("lookup")),
            10,
            "the lookup reaching the front",
        )
        read: list[bytes] = []
        reader = threading.Thread(target=lambda: read.append(page.read_bytes()), daemon=True)
        reader.start()
        reader.join(10)
        assert read == [b"<?php warm();"], "the warm read waited for the paused daemon's lookup"
        assert waiting.is_alive()
    finally:
        os.kill(daemon, signal.SIGCONT)
    waiting.join(30)
    assert not waiting.is_alive()


def test_writes_through_a_mapping_after_close_are_saved(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """A C program: mmap, close(fd), write to the mapping, munmap.

    (Python's mmap module keeps a dup of the descriptor and closes it after munmap,
    which flushes; libc's mmap does not.)
    """
    a = mount_cassfs("writer", *tenant, None, *FAST)
    b = mount_cassfs("reader", *tenant, None, *FAST)
    (a.path / "mapped.bin").write_bytes(b"hello world")
    libc = _libc()
    fd = os.open(a.path / "mapped.bin", os.O_RDWR)
    addr = libc.mmap(None, 11, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    os.close(fd)  # FLUSH: nothing changed yet
    ctypes.memmove(addr, b"HELLO", 5)
    assert libc.munmap(addr, 11) == 0  # writes the page back; the kernel then sends RELEASE
    poll_until(
        lambda: (b.path / "mapped.bin").read_bytes() == b"HELLO world",
        20,
        "the mapped write reached the other host",
    )


def test_another_hosts_new_version_is_read_whole_not_cut_at_the_old_size(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """WordPress served a rewritten plugin cut at the old size: `Unclosed '{'`."""
    a = mount_cassfs("writer", *tenant, None, *FAST)
    b = mount_cassfs("reader", *tenant, None, *KERNEL_KEEPS)
    old = b"<?php function f() { return 1; }\n"
    new = b"<?php function f() {\n" + b"    $x = 1;\n" * 400 + b"    return $x;\n}\n"
    (a.path / "plugin.php").write_bytes(old)
    poll_until(lambda: (b.path / "plugin.php").read_bytes() == old, 10, "the first version")
    (a.path / "plugin.php").write_bytes(new)
    poll_until(lambda: read_whole(b.path / "plugin.php", [old, new]) == new, 10, "the new version")
    assert os.stat(b.path / "plugin.php").st_size == len(new)


@pytest.mark.parametrize(("old_size", "new_size"), [(300_000, 200_000), (200_000, 300_000)])
def test_handles_open_on_two_versions_of_one_file_each_read_their_own_whole(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], old_size: int, new_size: int
) -> None:
    old, new = b"o" * old_size, b"n" * new_size
    a, b = writer_and_reader(mount_cassfs, tenant, "big.php", old)
    with open(b.path / "big.php", "rb") as first:
        head = first.read(100_000)  # the page cache holds the old version's first pages
        (a.path / "big.php").write_bytes(new)
        poll_until(
            lambda: read_whole(b.path / "big.php", [old, new]) == new,
            20,
            "the new version while the old one is open",
        )
        assert head + first.read() == old  # neither mixed nor cut at the new size
    with open(b.path / "big.php", "rb") as third:
        assert third.read() == new
        assert os.fstat(third.fileno()).st_size == new_size


def read_as_php_does(path: Path) -> tuple[int, int, bytes]:
    """``(st_ino, st_size, bytes)``: open, fstat, then read exactly ``st_size`` bytes, as
    PHP's include does (it trusts the size)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        data = b""
        while len(data) < st.st_size:
            chunk = os.read(fd, st.st_size - len(data))
            if not chunk:
                break
            data += chunk
        return st.st_ino, st.st_size, data
    finally:
        os.close(fd)


@pytest.mark.parametrize(("old_size", "new_size"), [(100_000, 150_000), (150_000, 100_000)])
def test_a_reader_trusting_st_size_gets_the_new_version_whole_while_an_old_one_is_open(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], old_size: int, new_size: int
) -> None:
    """A handle of the old version stays open on B (a long download, a slow request):
    the kernel's pages and size of that inode are the old version's.  A PHP include of
    the new version must still get it whole, with its own size (before: cut at the old
    size).  The new version gets a node of its own on B, so its st_ino differs there."""
    old, new = b"o" * old_size, b"n" * new_size
    a, b = writer_and_reader(mount_cassfs, tenant, "plugin.php", old)
    with open(b.path / "plugin.php", "rb") as held:
        head = held.read(50_000)
        old_ino = os.fstat(held.fileno()).st_ino
        (a.path / "plugin.php").write_bytes(new)
        poll_until(lambda: read_as_php_does(b.path / "plugin.php")[2] != old, 20, "the new version")
        for _ in range(20):
            ino, size, data = read_as_php_does(b.path / "plugin.php")
            assert (size, data) == (new_size, new)
            assert os.stat(b.path / "plugin.php").st_size == new_size
        assert ino != old_ino
        assert head + held.read() == old  # the old handle reads its version whole
        assert os.fstat(held.fileno()).st_size == old_size
    assert read_as_php_does(b.path / "plugin.php")[1:] == (new_size, new)


def test_a_file_replaced_by_rename_on_another_host_never_goes_missing(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """Deploy tools write a temp file and rename it over the old one.

    The writer deletes the replaced inode at once (no purge delay), so B's kernel,
    which names the old inode for a minute, must look the name up again.
    """
    a = mount_cassfs("writer", *tenant, None, *FAST, "--purge-delay", "0")
    b = mount_cassfs("reader", *tenant, None, *KERNEL_KEEPS)
    (a.path / "config.php").write_bytes(b"<?php $v = 1;")
    poll_until(lambda: (b.path / "config.php").read_bytes() == b"<?php $v = 1;", 10, "v1")
    (a.path / ".config.php.tmp").write_bytes(b"<?php $v = 2;")
    os.rename(a.path / ".config.php.tmp", a.path / "config.php")

    renamed = time.monotonic()

    def replaced() -> bool:
        try:
            data = (b.path / "config.php").read_bytes()
        except OSError as exc:
            pytest.fail(
                f"config.php failed on the other host {time.monotonic() - renamed:.2f} s "
                f"after the rename: {exc}",
                pytrace=False,
            )
        assert data in (b"<?php $v = 1;", b"<?php $v = 2;")
        return data == b"<?php $v = 2;"

    # B's kernel names the old inode for a minute; once A purges it, B must look again
    poll_until(replaced, 30, "the replacement")


def test_a_name_another_host_created_is_found_after_eexist(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """mkdir -p and PHP's file_put_contents on a host whose kernel cached "no such name".

    Linux 6.18's FUSE itself drops the dentry when a create or mkdir fails with EEXIST
    (this passed on the previous front too); the front drops it as well, for kernels
    that do not.
    """
    a = mount_cassfs("creator", *tenant, None, *FAST)
    b = mount_cassfs("latecomer", *tenant, None, "--negative-ttl", "60")
    (a.path / "ct").mkdir()
    poll_until(lambda: (b.path / "ct").is_dir(), 10, "the directory")
    for name in ("new-dir", "new.php"):
        assert not (b.path / "ct" / name).exists()  # B's kernel caches this for a minute
    (a.path / "ct" / "new-dir").mkdir()
    (a.path / "ct" / "new.php").write_bytes(b"<?php")
    with pytest.raises(FileExistsError):
        (b.path / "ct" / "new-dir").mkdir()
    with pytest.raises(OSError) as created:
        os.open(b.path / "ct" / "new.php", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    assert created.value.errno == errno.EEXIST
    # without O_EXCL, open(2) opens the file that is there (PHP's file_put_contents)
    os.close(os.open(b.path / "ct" / "new.php", os.O_RDONLY | os.O_CREAT, 0o644))
    # B's daemon answered from its cached listing; a purge makes it read Cassandra
    b.cli("cache", "purge", "--cache-dir", str(b.cache_dir))
    poll_until(lambda: (b.path / "ct" / "new-dir").is_dir(), 5, "new-dir found")
    poll_until(lambda: (b.path / "ct" / "new.php").is_file(), 5, "new.php found")
