"""End to end: cassfs mounted with FUSE on the real node, driven through ordinary syscalls."""

from __future__ import annotations

import errno
import filecmp
import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cached.client import call_once
from tests.conftest import Mount, errno_of, run_cli, unmount
from tests.stdlib_tree import STDLIB, stdlib_files

pytestmark = [pytest.mark.cassandra, pytest.mark.fuse]


def copy_tree(files: list[Path], dest: Path) -> None:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(STDLIB / rel, target)


def tree_shape(root: Path) -> tuple[list[str], list[str]]:
    """(directories, files) below ``root`` as sorted relative paths."""
    dirs, files = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirs += [str(rel / d) for d in dirnames]
        files += [str(rel / f) for f in filenames]
    return sorted(dirs), sorted(files)


def assert_same_tree(files: list[Path], root: Path) -> None:
    """Every byte of every file equals the original, and the tree has the same shape."""
    expected_dirs = sorted({str(p) for f in files for p in f.parents if str(p) != "."})
    dirs, got_files = tree_shape(root)
    assert dirs == expected_dirs
    assert got_files == sorted(str(f) for f in files)
    mismatched = [str(f) for f in files if not filecmp.cmp(STDLIB / f, root / f, shallow=False)]
    assert mismatched == []


def test_stdlib_tree_roundtrip_purge_and_remount(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    files = stdlib_files()
    assert len(files) > 1000
    # the cache keys content by SHA-256, so identical files are fetched once
    unique = {
        hashlib.sha256((STDLIB / f).read_bytes()).digest(): (STDLIB / f).stat().st_size
        for f in files
    }
    total = sum(unique.values())
    m = mount_cassfs("site", *tenant)
    copy_tree(files, m.path / "lib")
    assert_same_tree(files, m.path / "lib")

    # purge: everything is read from Cassandra again
    before = m.stats()
    m.cli("cache", "purge", "--cache-dir", str(m.cache_dir))
    assert m.stats()["entries"] < before["entries"]
    assert_same_tree(files, m.path / "lib")
    after = m.stats()
    assert after["bytes_fetched"] - before["bytes_fetched"] >= total

    # a new host: unmount, remount with a new empty cache dir
    unmount(m)
    assert not os.path.ismount(m.path)
    m2 = mount_cassfs("site", *tenant, "fresh-cache")
    assert m2.stats()["bytes_cached"] < total
    assert_same_tree(files, m2.path / "lib")
    assert m2.stats()["bytes_fetched"] >= total


def test_64_mib_file(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], tmp_path: Path
) -> None:
    m = mount_cassfs("big", *tenant)
    source = tmp_path / "big.bin"
    block = os.urandom(1024 * 1024)
    with open(source, "wb") as out:
        for i in range(64):
            out.write(bytes([i]) + block[1:])
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    shutil.copyfile(source, m.path / "big.bin")
    assert (m.path / "big.bin").stat().st_size == 64 * 1024 * 1024
    m.cli("cache", "purge", "--cache-dir", str(m.cache_dir))
    assert hashlib.sha256((m.path / "big.bin").read_bytes()).hexdigest() == digest


def test_rename_populated_directory(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("ren", *tenant)
    src = m.path / "a" / "b"
    (src / "c").mkdir(parents=True)
    for i in range(50):
        (src / "c" / f"f{i}.php").write_text(f"<?php echo {i};")
    (m.path / "z").mkdir()
    os.rename(m.path / "a", m.path / "z" / "moved")
    assert not (m.path / "a").exists()
    moved = m.path / "z" / "moved" / "b" / "c"
    assert sorted(p.name for p in moved.iterdir()) == sorted(f"f{i}.php" for i in range(50))
    assert (moved / "f7.php").read_text() == "<?php echo 7;"
    # replacing an existing file by rename
    (m.path / "new.txt").write_text("new")
    (m.path / "old.txt").write_text("old")
    os.rename(m.path / "new.txt", m.path / "old.txt")
    assert (m.path / "old.txt").read_text() == "new"
    assert not (m.path / "new.txt").exists()


def test_two_hosts_see_each_others_writes_within_the_ttls(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    ttl = ["--cache-ttl", "2", "--entry-ttl", "1", "--negative-ttl", "1"]
    a = mount_cassfs("host-a", *tenant, None, *ttl)
    b = mount_cassfs("host-b", *tenant, None, *ttl)
    (a.path / "settings.php").write_text("<?php $v = 1;")
    assert _eventually(lambda: (b.path / "settings.php").read_text() == "<?php $v = 1;", 5)
    (a.path / "settings.php").write_text("<?php $v = 2; // rewritten whole")
    assert _eventually(
        lambda: (b.path / "settings.php").read_text() == "<?php $v = 2; // rewritten whole", 5
    )
    os.unlink(a.path / "settings.php")
    assert _eventually(lambda: not (b.path / "settings.php").exists(), 5)


def _eventually(check: Callable[[], bool], seconds: float) -> bool:
    """True once ``check()`` holds; False if it never did within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return True
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def test_two_tenants_do_not_see_each_other(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    a = mount_cassfs("tenant-a", *tenant)
    b = mount_cassfs("tenant-b", tenant[0], tenant[1] + "-other", "tenant-a-cache")
    (a.path / "secret.txt").write_text("a only")
    (b.path / "mine.txt").write_text("b only")
    assert os.listdir(a.path) == ["secret.txt"]
    assert os.listdir(b.path) == ["mine.txt"]
    assert not (b.path / "secret.txt").exists()


def test_errnos(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str], tmp_path: Path
) -> None:
    m = mount_cassfs("errs", *tenant)
    root = m.path
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "sub" / "f").write_text("x")
    (root / "file").write_text("y")
    (root / "emptydir").mkdir()
    assert errno_of(lambda: (root / "missing").stat()) == errno.ENOENT
    assert errno_of(lambda: open(root / "missing" / "x")) == errno.ENOENT
    assert errno_of(lambda: (root / "dir").mkdir()) == errno.EEXIST
    assert (
        errno_of(lambda: os.open(root / "file", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        == errno.EEXIST
    )
    assert errno_of(lambda: os.rmdir(root / "dir")) == errno.ENOTEMPTY
    assert errno_of(lambda: os.rmdir(root / "file")) == errno.ENOTDIR
    assert errno_of(lambda: (root / "file" / "x").stat()) == errno.ENOTDIR
    assert errno_of(lambda: os.unlink(root / "dir")) == errno.EISDIR
    assert errno_of(lambda: open(root / "dir", "w")) == errno.EISDIR
    assert errno_of(lambda: os.rename(root / "file", root / "emptydir")) == errno.EISDIR
    assert errno_of(lambda: os.rename(root / "emptydir", root / "file")) == errno.ENOTDIR
    assert errno_of(lambda: os.rename(root / "dir", root / "dir" / "sub" / "in")) == errno.EINVAL
    assert errno_of(lambda: (root / ("n" * 256)).write_text("")) == errno.ENAMETOOLONG
    assert errno_of(lambda: (root / ("n" * 256)).stat()) == errno.ENAMETOOLONG
    assert errno_of(lambda: os.rename(root / "file", tmp_path / "elsewhere")) == errno.EXDEV
    assert errno_of(lambda: os.link(root / "dir", root / "hard")) == errno.EPERM  # a directory
    # nothing was lost by the failures
    assert (root / "file").read_text() == "y"
    assert (root / "dir" / "sub" / "f").read_text() == "x"


def test_posix_file_operations(mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]) -> None:
    m = mount_cassfs("posix", *tenant)
    f = m.path / "f.txt"
    f.write_bytes(b"hello world")
    os.chmod(f, 0o600)
    assert f.stat().st_mode & 0o777 == 0o600
    os.chown(f, 33, 33)
    assert (f.stat().st_uid, f.stat().st_gid) == (33, 33)
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    assert f.stat().st_mtime_ns == 2_000_000_000
    os.truncate(f, 5)
    assert f.read_bytes() == b"hello"
    with open(f, "r+b") as handle:  # a partial rewrite in place
        handle.seek(1)
        handle.write(b"ELL")
    assert f.read_bytes() == b"hELLo"
    with open(f, "ab") as handle:
        handle.write(b" again")
    assert f.read_bytes() == b"hELLo again"
    os.symlink("f.txt", m.path / "link")
    assert os.readlink(m.path / "link") == "f.txt"
    assert (m.path / "link").read_bytes() == b"hELLo again"
    # an unlinked but open file stays readable
    with open(f, "rb") as handle:
        os.unlink(f)
        assert handle.read() == b"hELLo again"
    assert not f.exists()
    st = os.statvfs(m.path)
    assert st.f_namemax == 255 and st.f_bavail > 0
    # fsync reports success only once the data is in Cassandra: purge and read back
    with open(m.path / "durable", "wb") as handle:
        handle.write(b"on disk")
        handle.flush()
        os.fsync(handle.fileno())
    m.cli("cache", "purge", "--cache-dir", str(m.cache_dir))
    assert (m.path / "durable").read_bytes() == b"on disk"


def test_cli_errors_are_one_clear_line(tmp_path: Path, cassandra: str) -> None:
    missing = run_cli("up", str(tmp_path / "nope"), "--cache-dir", str(tmp_path / "c"), check=False)
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr and "mkdir -p" in missing.stderr
    (tmp_path / "file").write_text("")
    not_dir = run_cli("up", str(tmp_path / "file"), "--cache-dir", str(tmp_path / "c"), check=False)
    assert "not a directory" in not_dir.stderr
    (tmp_path / "mnt").mkdir()
    unreachable = run_cli(
        "up",
        str(tmp_path / "mnt"),
        "--cache-dir",
        str(tmp_path / "c2"),
        "--contact-points",
        "127.0.0.1:1",
        check=False,
    )
    assert unreachable.returncode == 1
    assert "127.0.0.1:1" in unreachable.stderr and "Traceback" not in unreachable.stderr
    no_schema = run_cli(
        "up",
        str(tmp_path / "mnt"),
        "--cache-dir",
        str(tmp_path / "c3"),
        "--contact-points",
        cassandra,
        "--keyspace",
        "cassfs_not_there",
        check=False,
    )
    assert no_schema.returncode == 1
    assert "cassfs schema apply" in no_schema.stderr
    ro = tmp_path / "ro"
    ro.write_text("a file where a dir should be")
    not_writable = run_cli("up", str(tmp_path / "mnt"), "--cache-dir", str(ro / "sub"), check=False)
    assert "not writable" in not_writable.stderr
    assert not os.path.ismount(tmp_path / "mnt")
    bad_size = run_cli(
        "up",
        str(tmp_path / "mnt"),
        "--cache-dir",
        str(tmp_path / "c4"),
        "--cache-size",
        "lots",
        check=False,
    )
    assert bad_size.returncode == 2 and "bad size 'lots'" in bad_size.stderr
    no_schema_files = run_cli(
        "schema", "apply", check=False, env={"CASSFS_SCHEMA_DIR": str(tmp_path / "none")}
    )
    assert no_schema_files.returncode == 1 and "CASSFS_SCHEMA_DIR" in no_schema_files.stderr
    schema_unreachable = run_cli("schema", "apply", "--contact-points", "127.0.0.1:1", check=False)
    assert schema_unreachable.returncode == 1
    assert "unreachable at 127.0.0.1:1" in schema_unreachable.stderr
    not_mounted = run_cli("down", str(tmp_path / "mnt"), check=False)
    assert not_mounted.returncode == 1 and "is not mounted" in not_mounted.stderr
    empty_stats = run_cli("cache", "stats", "--cache-dir", str(tmp_path / "nothing"), check=False)
    assert empty_stats.returncode == 1 and "no cache at" in empty_stats.stderr


def test_mount_survives_a_daemon_crash(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("crash", *tenant)
    (m.path / "before.php").write_text("<?php 'before';")
    pid = call_once(m.cache_dir, "status")["pid"]
    os.kill(pid, signal.SIGKILL)
    assert _eventually(lambda: not os.path.exists(f"/proc/{pid}"), 10)
    # the mount starts a new daemon on the same cache dir and carries on
    (m.path / "after.php").write_text("<?php 'after';")
    assert (m.path / "after.php").read_text() == "<?php 'after';"
    assert sorted(os.listdir(m.path)) == ["after.php", "before.php"]
    assert call_once(m.cache_dir, "status")["pid"] != pid


def test_readers_on_another_host_see_whole_versions_during_rewrites(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """PHP-FPM-like readers on host B while host A replaces files whole: no read is a mix.

    (On the writing host itself, readers see writes as they happen, as on a local
    disk: an open with O_TRUNC empties the file at once.)
    """
    import threading

    fast = ["--cache-ttl", "0.2", "--entry-ttl", "0.1", "--negative-ttl", "0.1"]
    a = mount_cassfs("writer-host", *tenant, None, *fast)
    b = mount_cassfs("reader-host", *tenant, None, *fast)
    versions = {
        f"page{i}.php": [bytes([65 + v]) * (3000 + 150_000 * i) for v in range(5)] for i in range(8)
    }
    for name, vs in versions.items():
        (a.path / name).write_bytes(vs[0])
    problems: list[str] = []
    reads = [0]
    seen: set[bytes] = set()  # the first byte of each version read
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for name, vs in versions.items():
                try:
                    data = (b.path / name).read_bytes()
                except FileNotFoundError:
                    continue  # not yet visible on this host
                reads[0] += 1
                seen.add(data[:1])
                if data not in vs:
                    problems.append(f"{name}: {len(data)} bytes of {sorted(set(data))!r}")

    readers = [threading.Thread(target=reader) for _ in range(6)]
    for t in readers:
        t.start()
    try:
        for round_ in range(1, 5):
            for name, vs in versions.items():
                (a.path / name).write_bytes(vs[round_])
            time.sleep(0.3)
    finally:
        stop.set()
        for t in readers:
            t.join(30)
    assert problems == []
    assert reads[0] > 50
    assert len(seen) >= 3  # the readers really saw the files change under them
    assert _eventually(
        lambda: all((b.path / name).read_bytes() == vs[4] for name, vs in versions.items()), 5
    )


def test_no_descriptor_per_open_file(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """The daemon and the mount hold no descriptor per file (these machines cap them)."""
    m = mount_cassfs("fds", *tenant)
    for i in range(300):
        (m.path / f"f{i}.php").write_bytes(b"x" * (40_000 + i))  # stored as files by diskcache
    daemon_pid = call_once(m.cache_dir, "status")["pid"]
    front_pid = next(
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _cmdline(p).count(str(m.path)) and "up" in _cmdline(p)
    )
    m.cli("cache", "purge", "--cache-dir", str(m.cache_dir))
    before = {pid: len(os.listdir(f"/proc/{pid}/fd")) for pid in (daemon_pid, front_pid)}
    handles = [open(m.path / f"f{i}.php", "rb") for i in range(300)]
    try:
        assert all(len(h.read()) == 40_000 + i for i, h in enumerate(handles))
        during = {pid: len(os.listdir(f"/proc/{pid}/fd")) for pid in (daemon_pid, front_pid)}
    finally:
        for h in handles:
            h.close()
    assert during[daemon_pid] - before[daemon_pid] < 20
    assert during[front_pid] - before[front_pid] < 20


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_cache_stats_and_purge_work_without_a_daemon(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    m = mount_cassfs("offline", *tenant)
    (m.path / "a.txt").write_bytes(b"a" * 50_000)
    live = json.loads(m.cli("cache", "stats", "--cache-dir", str(m.cache_dir), "--json").stdout)
    assert live["daemon_running"] is True and live["flushes"] == 1
    unmount(m)  # `cassfs down` also stops the daemon no mount uses any more
    assert not (m.cache_dir / "daemon.sock").exists()
    offline = json.loads(m.cli("cache", "stats", "--cache-dir", str(m.cache_dir), "--json").stdout)
    assert offline["daemon_running"] is False
    assert offline["flushes"] == 1 and offline["bytes_written"] == 50_000  # persisted
    assert offline["entries"] > 0
    table = m.cli("cache", "stats", "--cache-dir", str(m.cache_dir)).stdout
    assert "bytes_written" in table and "50,000" in table
    m.cli("cache", "purge", "--cache-dir", str(m.cache_dir))
    purged = json.loads(m.cli("cache", "stats", "--cache-dir", str(m.cache_dir), "--json").stdout)
    assert purged["entries"] == 0 and purged["purges"] == 1 and purged["flushes"] == 1


def test_open_creating_a_name_another_host_just_made_opens_it(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    """open(O_CREAT|O_TRUNC) without O_EXCL never says EEXIST (PHP's file_put_contents)."""
    a = mount_cassfs("a", *tenant, None, "--cache-ttl", "0.5")
    b = mount_cassfs("b", *tenant, None, "--cache-ttl", "0.5")
    (a.path / "d").mkdir()
    assert _eventually(lambda: (b.path / "d").is_dir(), 10)
    for i in range(10):
        with pytest.raises(FileNotFoundError):
            os.stat(b.path / "d" / f"x{i}")  # B's kernel now holds a negative dentry
        (a.path / "d" / f"x{i}").write_bytes(b"from a")
        (b.path / "d" / f"x{i}").write_bytes(b"from b")  # O_CREAT|O_TRUNC|O_WRONLY
        with pytest.raises(FileExistsError):
            os.open(b.path / "d" / f"x{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        assert _eventually(lambda i=i: (a.path / "d" / f"x{i}").read_bytes() == b"from b", 10)
