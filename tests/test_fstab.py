"""Mount at boot: the mount(8) form ``cassfs OWNER/ENVIRONMENT MOUNTPOINT -o KEY[=VALUE],...``.

Unit tests of its parsing (:mod:`cassfs.mountform`), then the real chain: fuse3's
``/sbin/mount.fuse3`` (what ``mount -t fuse.cassfs`` runs) and util-linux ``mount -T FSTAB``
running a ``cassfs`` wrapper of this checkout, ``umount`` and ``cassfs down``, against the
real node and FUSE; and the systemd unit in contrib/, checked by ``systemd-analyze verify``.

mount(8) clears PATH (and HOME, SHELL) before it runs a helper, so a ``fuse.cassfs`` line
finds ``cassfs`` only in /bin/sh's default PATH; the fstab test names the wrapper in the
source instead (``WRAPPER#OWNER/ENVIRONMENT`` with type ``fuse``, which mount.fuse3 runs as
``WRAPPER OWNER/ENVIRONMENT MOUNTPOINT -o ...`` just the same).
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest

from cached.client import call_once
from cached.errors import DaemonUnavailable
from cassfs import mountform
from cassfs.cli import up
from cassfs.state import pid_alive, read_record
from tests.conftest import KEYSPACE, Mount, run_cli, unmount, wait_for

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "contrib" / "srv-www.mount"
MOUNT_FUSE3 = "/sbin/mount.fuse3"


# -- parsing (pure logic) -------------------------------------------------------------------


def test_keywords_are_up_options() -> None:
    table = mountform.keywords(up)
    for key in (
        "cache_dir",
        "contact_points",
        "keyspace",
        "entry_ttl",
        "negative_ttl",
        "cache_ttl",
        "cache_size",
        "purge_delay",
        "query_timeout",
        "atime",
    ):
        assert not table[key].flag, key
    assert table["debug"].flag and table["debug"].option == "--debug"
    assert table["noexec"].flag and table["noexec"].option == "--noexec"
    assert table["cache_dir"].option == "--cache-dir"
    assert "owner" not in table and "environment" not in table


def test_an_option_added_to_up_becomes_a_keyword() -> None:
    """Options other engineers add to `cassfs up` are keywords without a table to edit."""
    grown = click.Command(
        "up",
        params=[
            *up.params,
            click.Option(["--metrics-address"]),
            click.Option(["--cache/--no-cache"], default=True),
        ],
    )
    assert mountform.option_args(grown, ["ro", "metrics_address=127.0.0.1:9100"]) == [
        "--ro",
        "--metrics-address",
        "127.0.0.1:9100",
    ]
    assert mountform.option_args(grown, ["no_cache", "cache"]) == ["--no-cache", "--cache"]
    assert mountform.option_args(up, ["ro"]) == ["--ro"]  # fstab's ro: a read-only mount


def test_to_up_args_maps_keywords_and_generic_options() -> None:
    args = mountform.to_up_args(
        up,
        [
            "12/prod.v2",
            "/srv/www",
            "-o",
            'rw,cache_dir=/var/cache/cassfs,contact_points="a:9042,b:9042",entry_ttl=5,'
            "noatime,debug,_netdev,nofail,dev,suid,x-systemd.automount,allow_other",
            "-ocache_size=2G",
        ],
    )
    assert args == [
        "/srv/www",
        "--owner",
        "12",
        "--environment",
        "prod.v2",
        "--fsname",
        "12/prod.v2",
        "--cache-dir",
        "/var/cache/cassfs",
        "--contact-points",
        "a:9042,b:9042",
        "--entry-ttl",
        "5",
        "--atime",
        "noatime",
        "--debug",
        "--cache-size",
        "2G",
    ]
    assert mountform.to_up_args(up, ["1/prod", "/m", "-o", "fsname=www"]) == [
        "/m",
        "--owner",
        "1",
        "--environment",
        "prod",
        "--fsname",
        "1/prod",
        "--fsname",
        "www",
    ]


def test_split_options_keeps_quoted_commas() -> None:
    assert mountform.split_options('a=1,,b="x,y",c') == ["a=1", 'b="x,y"', "c"]
    with pytest.raises(mountform.MountFormError, match="unbalanced"):
        mountform.split_options('a="x,y')


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prod", "/m"], "source 'prod' is not OWNER/ENVIRONMENT"),
        (["x/prod", "/m"], "source 'x/prod' is not OWNER/ENVIRONMENT"),
        (["1/", "/m"], "source '1/' is not OWNER/ENVIRONMENT"),
        (["1/a/b", "/m"], "source '1/a/b' is not OWNER/ENVIRONMENT"),
        (["1/a b", "/m"], "source '1/a b': environment"),
        (["9999999999/prod", "/m"], "source '9999999999/prod': owner"),
        (["1/prod"], "expected a source and a mountpoint, got 1"),
        (["1/prod", "/m", "/n"], "expected a source and a mountpoint, got 3"),
        (["1/prod", "/m", "-o"], "-o needs its options"),
        (["1/prod", "/m", "-x"], "unexpected argument '-x'"),
        (["1/prod", "/dev/fd/3"], "drop_privileges is not supported"),
        (["1/prod", "/m", "-o", "bogus=1"], "unknown mount option 'bogus'"),
        (["1/prod", "/m", "-o", "debug=yes"], "debug takes no value"),
        (["1/prod", "/m", "-o", "cache_dir"], "cache_dir needs a value"),
        (["1/prod", "/m", "-o", "entry_ttl=soon"], "entry_ttl=soon: 'soon' is not a valid float"),
        (["1/prod", "/m", "-o", "atime=strict"], "atime=strict: 'strict' is not one of"),
        (["1/prod", "/m", "-o", "owner=2"], "owner: the source OWNER/ENVIRONMENT gives"),
        (["1/prod", "/m", "-o", "strictatime"], "strictatime: cassfs records access times"),
    ],
)
def test_bad_mount_forms(args: list[str], message: str) -> None:
    with pytest.raises(mountform.MountFormError) as caught:
        mountform.to_up_args(up, args)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unknown_keyword_says_where_keywords_are_documented() -> None:
    with pytest.raises(mountform.MountFormError) as caught:
        mountform.option_args(up, ["cachedir=/c"])
    assert "`cassfs up --help`" in str(caught.value) and "Mount at boot" in str(caught.value)


def test_is_mount_form() -> None:
    commands = ["up", "down", "cache"]
    assert mountform.is_mount_form(["1/prod", "/m"], commands)
    assert mountform.is_mount_form(["prod", "/m"], commands)  # a bad source, said so
    assert not mountform.is_mount_form(["upp"], commands)  # click's "No such command"
    assert not mountform.is_mount_form(["up", "/m"], commands)
    assert not mountform.is_mount_form(["--help"], commands)
    assert not mountform.is_mount_form([], commands)


# -- the systemd unit -----------------------------------------------------------------------


def test_systemd_unit_verifies() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail(
            "systemd-analyze is missing: apt-get install systemd (`just install` does)",
            pytrace=False,
        )
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert str(UNIT) not in result.stderr, result.stderr  # no "Unknown key" warnings


def test_systemd_unit_is_a_valid_mount_form() -> None:
    """The unit's What/Where/Options pass through the same parsing as mount.fuse3's call."""
    unit = configparser.ConfigParser(interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    section = unit["Mount"]
    assert section["Type"] == "fuse.cassfs"
    assert "network-online.target" in unit["Unit"]["After"]
    args = mountform.to_up_args(up, [section["What"], section["Where"], "-o", section["Options"]])
    assert args[:5] == ["/srv/www", "--owner", "1", "--environment", "prod"]
    assert args[5:] == ["--fsname", "1/prod", "--cache-dir", "/var/cache/cassfs"]


# -- the real chain: mount.fuse3, mount -T, umount, cassfs down -----------------------------


def mount_entry(path: Path) -> list[str] | None:
    """The /proc/self/mounts fields of the mount at ``path``, if any."""
    found = None
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == str(path):
                found = fields
    return found


def daemon_pid(cache_dir: Path) -> int | None:
    try:
        return int(call_once(cache_dir, "status", timeout=5)["pid"])
    except DaemonUnavailable:
        return None


@pytest.fixture
def wrapper_bin(tmp_path: Path) -> Path:
    """A directory holding ``cassfs``: this checkout, run by this Python."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "cassfs"
    script.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" -m cassfs "$@"\n')
    script.chmod(0o755)
    return bin_dir


@pytest.fixture
def form_mounts(mount_cassfs: Callable[..., Mount]) -> Iterator[list[Mount]]:
    """Mounts made through mount(8)/mount.fuse3; each taken down after the test.

    Depends on ``mount_cassfs`` for its CASSFS_RUN_DIR and so that those mounts go first.
    """
    mounts: list[Mount] = []
    yield mounts
    for m in reversed(mounts):
        unmount(m)


def test_mount_fuse3_with_options_then_umount(
    cassandra: str,
    tenant: tuple[int, str],
    tmp_path: Path,
    wrapper_bin: Path,
    mount_cassfs: Callable[..., Mount],
    form_mounts: list[Mount],
) -> None:
    """``mount -t fuse.cassfs OWNER/ENV MNT -o ...`` execs exactly this mount.fuse3 call
    (seen with strace), with PATH cleared: here PATH leads to this checkout's cassfs."""
    owner, environment = tenant
    mnt, cache_dir = tmp_path / "form", tmp_path / "form-cache"
    mnt.mkdir()
    form_mounts.append(Mount(mnt, cache_dir, owner, environment))
    options = (
        f'rw,cache_dir={cache_dir},contact_points="{cassandra}",keyspace={KEYSPACE},'
        "entry_ttl=3600,negative_ttl=3600,cache_ttl=0,cache_size=64M,purge_delay=30,"
        "query_timeout=7,feed_poll=0,noatime,_netdev,nofail,dev,suid"
    )
    result = subprocess.run(
        [MOUNT_FUSE3, f"{owner}/{environment}", str(mnt), "-o", options, "-t", "fuse.cassfs"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PATH": f"{wrapper_bin}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr
    assert f"mounted {owner}/{environment} at {mnt}" in result.stdout
    entry = mount_entry(mnt)
    assert entry is not None
    assert entry[0] == f"{owner}/{environment}" and entry[2] == "fuse.cassfs"  # the source
    flags = entry[3].split(",")
    assert "noatime" in flags and "nosuid" in flags and "nodev" in flags  # cassfs up's
    status = call_once(cache_dir, "status", timeout=5)
    config = status["config"]
    assert (config["keyspace"], config["contact_points"]) == (KEYSPACE, cassandra)
    assert (config["cache_ttl"], config["cache_size"]) == (0.0, 64 * 2**20)
    assert (config["purge_delay"], config["query_timeout"]) == (30.0, 7.0)
    assert config["feed_poll"] == 0.0  # no change feed: the kernel's TTLs alone, below

    other = mount_cassfs("up", owner, environment)
    other_entry = mount_entry(other.path)
    assert other_entry is not None and other_entry[0] == f"cassfs:{owner}/{environment}"
    (mnt / "from-form").write_bytes(b"written through the mount(8) form")
    # Within a poll of the other host's change feed (it may have listed the root already).
    assert wait_for(lambda: (other.path / "from-form").exists(), 10)
    assert (other.path / "from-form").read_bytes() == b"written through the mount(8) form"
    (other.path / "from-up").write_bytes(b"written through cassfs up")
    assert (mnt / "from-up").read_bytes() == b"written through cassfs up"  # cache_ttl=0

    # entry_ttl and negative_ttl of an hour: the kernel keeps what it saw past the 1 s default
    assert not (mnt / "late").exists()
    size_seen = (mnt / "from-up").stat().st_size
    (other.path / "late").write_bytes(b"x")
    (other.path / "from-up").write_bytes(b"rewritten, longer, through cassfs up")
    time.sleep(1.5)  # outlast the default TTLs (1 s): no condition to wait on
    assert not (mnt / "late").exists()
    assert (mnt / "from-up").stat().st_size == size_seen

    record = read_record(mnt)
    assert record is not None
    daemon = daemon_pid(cache_dir)
    assert daemon is not None
    result = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert mount_entry(mnt) is None
    assert wait_for(lambda: not pid_alive(record.pid)), "the mount process outlived umount"
    assert read_record(mnt) is None
    # the daemon `up` started leaves 10 s after its last mount (DAEMON_IDLE_EXIT)
    assert wait_for(lambda: not pid_alive(daemon)), "the daemon outlived its last mount"


def test_fstab_line_then_cassfs_down(
    cassandra: str,
    tenant: tuple[int, str],
    tmp_path: Path,
    wrapper_bin: Path,
    mount_cassfs: Callable[..., Mount],
    form_mounts: list[Mount],
) -> None:
    owner, environment = tenant
    mnt, cache_dir = tmp_path / "www", tmp_path / "www-cache"
    mnt.mkdir()
    form_mounts.append(Mount(mnt, cache_dir, owner, environment))
    other = mount_cassfs("up", owner, environment, None, "--cache-ttl", "0")
    (other.path / "index.php").write_bytes(b"<?php echo 1;")
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a comment line\n"
        f"{wrapper_bin / 'cassfs'}#{owner}/{environment} {mnt} fuse "
        f'cache_dir={cache_dir},contact_points="{cassandra}",keyspace={KEYSPACE},'
        "_netdev,nofail,users,x-systemd.automount,comment=www 0 0\n"
    )
    result = subprocess.run(
        ["mount", "--fstab", str(fstab), str(mnt)], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    entry = mount_entry(mnt)
    assert entry is not None and entry[2] == "fuse.cassfs"
    assert "noexec" in entry[3].split(",")  # mount(8): `users` implies noexec,nosuid,nodev
    assert (mnt / "index.php").read_bytes() == b"<?php echo 1;"
    (mnt / "new.php").write_bytes(b"<?php echo 2;")
    assert (other.path / "new.php").read_bytes() == b"<?php echo 2;"
    (mnt / "run.sh").write_bytes(b"#!/bin/sh\necho ran\n")
    (mnt / "run.sh").chmod(0o755)
    with pytest.raises(PermissionError):
        subprocess.run([str(mnt / "run.sh")], check=False)
    ran = subprocess.run([str(other.path / "run.sh")], capture_output=True, text=True, check=True)
    assert ran.stdout == "ran\n"  # the `cassfs up` mount is not noexec

    # the fstab line proper: `mount -a` finds it mounted (by source and target), runs nothing
    real = tmp_path / "fstab-real"
    real.write_text(f"{owner}/{environment} {mnt} fuse.cassfs cache_dir={cache_dir},_netdev 0 0\n")
    again = subprocess.run(
        ["mount", "--fstab", str(real), "-a", "-v"], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert "already mounted" in again.stdout + again.stderr

    daemon = daemon_pid(cache_dir)
    assert daemon is not None
    down = run_cli("down", str(mnt))
    assert f"unmounted {mnt}" in down.stdout
    assert mount_entry(mnt) is None
    assert not pid_alive(daemon)  # `cassfs down` stops it as for a `cassfs up` mount


@pytest.mark.parametrize(
    ("source", "options", "message"),
    [
        ("prod", "rw", "cassfs: source 'prod' is not OWNER/ENVIRONMENT (e.g. 1/prod)"),
        ("1/prod", "rw,cachedir=/c,_netdev", "cassfs: unknown mount option 'cachedir'"),
    ],
)
def test_errors_through_mount(
    fuse_available: None,
    tmp_path: Path,
    wrapper_bin: Path,
    source: str,
    options: str,
    message: str,
) -> None:
    """A bad source or keyword: one line on stderr and status 1, from cassfs, from
    mount.fuse3 and from mount(8); nothing mounted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    direct = run_cli(source, str(mnt), "-o", options, check=False)
    through_fuse3 = subprocess.run(
        [MOUNT_FUSE3, source, str(mnt), "-t", "fuse.cassfs", "-o", options],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{wrapper_bin}:{os.environ['PATH']}"},
    )
    through_mount = subprocess.run(
        ["mount", "-t", "fuse", f"{wrapper_bin / 'cassfs'}#{source}", str(mnt), "-o", options],
        capture_output=True,
        text=True,
        timeout=60,
    )
    for result in (direct, through_fuse3, through_mount):
        assert result.returncode == 1, result
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert mount_entry(mnt) is None
    assert not any(mnt.iterdir())


def test_cassfs_up_unchanged(tmp_path: Path) -> None:
    """`cassfs up` and click's own errors keep their form (usage errors: status 2)."""
    result = run_cli("upp", check=False)
    assert result.returncode == 2 and "No such command 'upp'" in result.stderr
    result = run_cli("up", str(tmp_path / "missing"), check=False)
    assert result.returncode == 1
    assert "does not exist: create it with `mkdir -p" in result.stderr
    assert not (tmp_path / "missing").exists()


def test_up_fsname_is_checked(tmp_path: Path) -> None:
    """--fsname lands in the kernel's -o fsname=: a comma or space would split it."""
    result = run_cli("up", str(tmp_path), "--fsname", "a,b", check=False)
    assert result.returncode == 2 and "use 1 to 255 characters" in result.stderr
    result = run_cli("1/prod", str(tmp_path), "-o", "fsname=a b", check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "cassfs: mount option fsname=a b: 'a b': use 1 to 255 characters among the ASCII "
        "letters, digits and _ . : / @ + -"
    ]
