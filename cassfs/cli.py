"""The ``cassfs`` command: up, down, status, cache stats/purge/warmup/evict, schema apply.

Every option can also come from a ``CASSFS_*`` environment variable (named on
``--help``).  Errors a user can cause print one line saying what to do and exit
with status 1 (2 for bad usage, as click does).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from cached import stats as stats_mod
from cached.api import (
    DEFAULT_FEED_POLL,
    DEFAULT_PURGE_DELAY,
    FEED_TIMEOUTS,
    MEMORY_CACHE,
    POLL_TIMEOUTS,
    ContactPoints,
    daemon_command,
    default_timeouts,
    parse_metrics_address,
)
from cached.cachedir import LOG_NAME, OUTPUT_NAME, spawn_daemon, spawn_detached
from cached.client import call_once, socket_path
from cached.cliopts import BYTE_SIZE
from cached.connection import ConnectionSettings, connection_options
from cached.errors import CassfsError, ConnectionRejected, DaemonUnavailable
from cassfs import mountform, warmup
from cassfs.mounts import CASSFS_FSTYPE, dead_mount_error
from cassfs.state import pid_alive, read_record, record_path, run_dir

log = logging.getLogger(__name__)

DAEMON_IDLE_EXIT = 10.0  # seconds a daemon started by `up` lingers after its last mount

#: What ``--environment`` may be: it lands in the mount's ``-o fsname=`` and in every key.
ENVIRONMENT_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: What ``--fsname`` may be: it lands in the mount's ``-o fsname=`` (no comma, no space).
FSNAME_PATTERN = re.compile(r"[A-Za-z0-9_.:/@+-]{1,255}")
#: ``owner`` is a CQL ``int`` (schema/001_tables.cql), and tenants are non-negative.
OWNER_MAX = 2**31 - 1


def default_cache_dir() -> Path:
    """``/var/cache/cassfs`` for root, ``~/.cache/cassfs`` for anyone else."""
    return Path("/var/cache/cassfs") if os.geteuid() == 0 else Path.home() / ".cache/cassfs"


def fail(message: str) -> NoReturn:
    """Print ``cassfs: message`` to stderr and exit 1."""
    click.echo(f"cassfs: {message}", err=True)
    sys.exit(1)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _last_error_line(path: Path) -> str:
    for line in reversed(_tail(path, 40).splitlines()):
        if line.startswith("cassfs"):
            return line.split(": ", 1)[-1]
    return ""


cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    envvar="CASSFS_CACHE_DIR",
    default=default_cache_dir,
    show_default="/var/cache/cassfs for root",
    help="Local cache directory (env CASSFS_CACHE_DIR).",
)
contact_points_option = click.option(
    "--contact-points",
    default="127.0.0.1:9042",
    envvar="CASSFS_CONTACT_POINTS",
    show_default=True,
    help="Cassandra contact points HOST[:PORT],... (env CASSFS_CONTACT_POINTS).",
)
keyspace_option = click.option(
    "--keyspace",
    default="cassfs",
    envvar="CASSFS_KEYSPACE",
    show_default=True,
    help="Keyspace (env CASSFS_KEYSPACE).",
)


#: ``ctx.meta`` key set when the command line is the mount(8) form.
MOUNT_FORM = "cassfs.mount_form"


class CassfsGroup(click.Group):
    """The ``cassfs`` group, which also takes mount.fuse3's form of a mount:
    ``cassfs OWNER/ENVIRONMENT MOUNTPOINT [-o KEY[=VALUE],...]`` runs ``up`` (see
    :mod:`cassfs.mountform`), and any error then is one line and exit status 1."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Rewrite the mount form into ``up ...`` before click parses it."""
        if mountform.is_mount_form(args, list(self.commands)):
            try:
                args = ["up", *mountform.to_up_args(self.commands["up"], args)]
            except mountform.MountFormError as exc:
                fail(str(exc))
            ctx.meta[MOUNT_FORM] = True
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; in the mount form, a usage error is one line, exit 1."""
        if not ctx.meta.get(MOUNT_FORM):
            return super().invoke(ctx)
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            fail(exc.format_message())


@click.group(cls=CassfsGroup)
@click.version_option(package_name="cassfs")
def main() -> None:
    """cassfs: a shared filesystem whose files live in Apache Cassandra.

    Also mounts as mount(8) runs it: cassfs OWNER/ENVIRONMENT MOUNTPOINT -o KEY[=VALUE],...
    with `cassfs up`'s options as keywords (cache_dir=DIR, entry_ttl=S, debug, ...).
    """


# -- up / down ------------------------------------------------------------------------------


def _check_environment(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Click callback: ``value`` if it is 1-64 of ``[A-Za-z0-9_.-]``; else click.BadParameter."""
    if not ENVIRONMENT_PATTERN.fullmatch(value):
        raise click.BadParameter(
            f"{value!r}: use 1 to 64 characters among the ASCII letters, digits, '_', '.' and '-'"
        )
    return value


def _check_fsname(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: ``value`` if None or 1-255 of ``[A-Za-z0-9_.:/@+-]``; else BadParameter."""
    if value is not None and not FSNAME_PATTERN.fullmatch(value):
        raise click.BadParameter(
            f"{value!r}: use 1 to 255 characters among the ASCII letters, digits and _ . : / @ + -"
        )
    return value


owner_option = click.option(
    "--owner",
    type=click.IntRange(0, OWNER_MAX),
    default=1,
    envvar="CASSFS_OWNER",
    show_default=True,
    help=f"Tenant owner id, 0 to {OWNER_MAX} (env CASSFS_OWNER).",
)
environment_option = click.option(
    "--environment",
    default="prod",
    envvar="CASSFS_ENVIRONMENT",
    show_default=True,
    callback=_check_environment,
    help="Tenant environment, 1 to 64 of A-Z a-z 0-9 _ . - (env CASSFS_ENVIRONMENT).",
)


@main.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@cache_dir_option
@contact_points_option
@keyspace_option
@owner_option
@environment_option
@click.option(
    "--entry-ttl",
    type=float,
    default=None,
    envvar="CASSFS_ENTRY_TTL",
    show_default=f"{FEED_TIMEOUTS.entry:g} with the change feed, {POLL_TIMEOUTS.entry:g} without",
    help="Kernel entry/attr timeout, seconds (env CASSFS_ENTRY_TTL).",
)
@click.option(
    "--negative-ttl",
    type=float,
    default=None,
    envvar="CASSFS_NEGATIVE_TTL",
    show_default=f"{FEED_TIMEOUTS.negative:g} with the change feed, "
    f"{POLL_TIMEOUTS.negative:g} without",
    help="Kernel timeout of negative lookups, seconds (env CASSFS_NEGATIVE_TTL).",
)
@click.option(
    "--cache-ttl",
    type=float,
    default=None,
    envvar="CASSFS_CACHE_TTL",
    show_default=f"{FEED_TIMEOUTS.cache:g} with the change feed, {POLL_TIMEOUTS.cache:g} without",
    help="Seconds the daemon serves metadata before revalidating (env CASSFS_CACHE_TTL).",
)
@click.option(
    "--cache-size",
    type=BYTE_SIZE,
    default="1G",
    envvar="CASSFS_CACHE_SIZE",
    show_default=True,
    help="Cache size limit, bytes or with K/M/G/T (env CASSFS_CACHE_SIZE).",
)
@click.option(
    "--memory-cache",
    type=BYTE_SIZE,
    default="128M",
    envvar="CASSFS_MEMORY_CACHE",
    show_default=True,
    help="Bound of the daemon's caches kept in memory: small contents, metadata and SQLite's"
    " page cache; bytes or with K/M/G/T (env CASSFS_MEMORY_CACHE).",
)
@click.option(
    "--purge-delay",
    type=click.FloatRange(min=0),
    default=DEFAULT_PURGE_DELAY,
    envvar="CASSFS_PURGE_DELAY",
    show_default=True,
    help="Seconds replaced versions and unlinked inodes stay for other hosts before the"
    " daemon deletes them; keep it above every host's --cache-ttl + --entry-ttl"
    " (env CASSFS_PURGE_DELAY).",
)
@click.option(
    "--query-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    envvar="CASSFS_QUERY_TIMEOUT",
    show_default=True,
    help="Seconds before a Cassandra query counts as failed; then cached entries serve past"
    " their TTL and uncached requests fail with EIO (env CASSFS_QUERY_TIMEOUT).",
)
@click.option(
    "--feed-poll",
    type=click.FloatRange(min=0),
    default=DEFAULT_FEED_POLL,
    envvar="CASSFS_FEED_POLL",
    show_default=True,
    help="Seconds between the daemon's reads of the tenants' change feeds: how soon other"
    " hosts' changes show; 0 reads none, and they show at --cache-ttl (env CASSFS_FEED_POLL).",
)
@click.option(
    "--atime",
    type=click.Choice(["relatime", "noatime"]),
    default="relatime",
    envvar="CASSFS_ATIME",
    show_default=True,
    help="Access times: relatime records a read when the file changed since the last"
    " recorded one or a day passed (one Cassandra write, not one per read); noatime never"
    " (env CASSFS_ATIME).",
)
@click.option(
    "--fsname",
    envvar="CASSFS_FSNAME",
    callback=_check_fsname,
    help="The mount's source in /proc/mounts and df, default cassfs:OWNER/ENVIRONMENT; the"
    " mount(8) form gives OWNER/ENVIRONMENT, so that `mount -a` finds an fstab line mounted"
    " (env CASSFS_FSNAME).",
)
@click.option(
    "--noexec",
    is_flag=True,
    envvar="CASSFS_NOEXEC",
    help="Mount noexec: the kernel runs no program from the mount (env CASSFS_NOEXEC).",
)
@click.option(
    "--ro",
    is_flag=True,
    envvar="CASSFS_RO",
    help="Mount read-only: every change fails with EROFS and this host writes nothing to"
    " Cassandra, not even access times; the tenant must have been mounted read-write once"
    " (env CASSFS_RO).",
)
@click.option(
    "--metrics-address",
    default=None,
    envvar="CASSFS_METRICS_ADDRESS",
    help="Have the cache daemon this starts serve Prometheus metrics on"
    " http://HOST:PORT/metrics; off by default (env CASSFS_METRICS_ADDRESS).",
)
@click.option(
    "--foreground",
    is_flag=True,
    envvar="CASSFS_FOREGROUND",
    help="Serve in this process until unmounted (env CASSFS_FOREGROUND).",
)
@click.option(
    "--debug", is_flag=True, envvar="CASSFS_DEBUG", help="Log every operation (env CASSFS_DEBUG)."
)
@connection_options()
def up(
    mountpoint: Path,
    cache_dir: Path,
    contact_points: str,
    keyspace: str,
    owner: int,
    environment: str,
    entry_ttl: float | None,
    negative_ttl: float | None,
    cache_ttl: float | None,
    cache_size: int,
    memory_cache: int,
    purge_delay: float,
    query_timeout: float,
    feed_poll: float,
    atime: str,
    fsname: str | None,
    noexec: bool,
    ro: bool,
    metrics_address: str | None,
    foreground: bool,
    debug: bool,
    **connection: Any,
) -> None:
    """Mount cassfs at MOUNTPOINT; returns once the mount answers.

    The password of --username comes from CASSFS_PASSWORD or --password-file.
    """
    _setup_logging(debug)
    try:
        points = ContactPoints.parse(contact_points)
        if metrics_address is not None:
            parse_metrics_address(metrics_address)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    settings = _settings(points, connection)
    mountpoint = Path(os.path.abspath(mountpoint))
    cache_dir = Path(os.path.abspath(cache_dir))
    running = _daemon_status(cache_dir)
    if running is not None:  # the TTLs' defaults follow the feed of the daemon that serves
        feed_poll = float(running["config"].get("feed_poll", feed_poll))
    entry_ttl, negative_ttl, cache_ttl = timeouts_of(entry_ttl, negative_ttl, cache_ttl, feed_poll)
    check_mount_values(entry_ttl, negative_ttl, cache_ttl)
    _check_mountpoint(mountpoint)
    if not Path("/dev/fuse").exists():
        fail(
            "/dev/fuse is missing: load the fuse module (modprobe fuse) or, in a container, "
            "run with --device /dev/fuse --cap-add SYS_ADMIN"
        )
    _check_cache_dir(cache_dir)
    _ensure_daemon(
        cache_dir, settings, keyspace, cache_ttl, cache_size, purge_delay, query_timeout, debug,
        metrics_address, feed_poll, memory_cache,
    )  # fmt: skip
    if foreground:
        _serve_foreground(
            mountpoint,
            cache_dir,
            owner,
            environment,
            entry_ttl,
            negative_ttl,
            atime,
            ro,
            debug,
            noexec,
            fsname,
        )
        return
    logs = cache_dir / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    log_path = logs / f"mount-{mountpoint.name or 'root'}-{os.getpid()}.log"
    command = [
        sys.executable,
        "-m",
        "cassfs",
        "up",
        str(mountpoint),
        "--foreground",
        "--cache-dir",
        str(cache_dir),
        "--contact-points",
        contact_points,
        "--keyspace",
        keyspace,
        "--owner",
        str(owner),
        "--environment",
        environment,
        "--entry-ttl",
        str(entry_ttl),
        "--negative-ttl",
        str(negative_ttl),
        "--cache-ttl",
        str(cache_ttl),
        "--cache-size",
        str(cache_size),
        "--memory-cache",
        str(memory_cache),
        "--purge-delay",
        str(purge_delay),
        "--query-timeout",
        str(query_timeout),
        "--feed-poll",
        str(feed_poll),
        "--atime",
        atime,
        *settings.to_args(),
    ]
    command += ["--noexec"] if noexec else []
    command += ["--fsname", fsname] if fsname else []
    command += ["--ro"] if ro else []
    if metrics_address is not None:
        command += ["--metrics-address", metrics_address]
    child = spawn_detached(command + (["--debug"] if debug else []), log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.ismount(mountpoint):
            click.echo(
                f"cassfs: mounted {owner}/{environment} at {mountpoint}"
                f"{' read-only' if ro else ''} (cache {cache_dir}, log {log_path})"
            )
            return
        if child.poll() is not None:
            fail(
                f"the mount process exited ({child.returncode}): "
                f"{_last_error_line(log_path) or _tail(log_path)}"
            )
        time.sleep(0.05)
    child.terminate()
    fail(f"the mount did not come up within 60 s; see {log_path}")


def timeouts_of(
    entry_ttl: float | None, negative_ttl: float | None, cache_ttl: float | None, feed_poll: float
) -> tuple[float, float, float]:
    """The (entry, negative, cache) TTLs in seconds: those given, the others the defaults
    for ``feed_poll`` (:func:`cached.api.default_timeouts`: long while the change feed is
    followed, short without it)."""
    defaults = default_timeouts(feed_poll)
    return (
        defaults.entry if entry_ttl is None else entry_ttl,
        defaults.negative if negative_ttl is None else negative_ttl,
        defaults.cache if cache_ttl is None else cache_ttl,
    )


def check_mount_values(entry_ttl: float, negative_ttl: float, cache_ttl: float) -> None:
    """The check of `up` its click types do not make: TTLs (seconds) 0 or more.

    Raises click.BadParameter saying what is wrong.
    """
    if min(entry_ttl, negative_ttl, cache_ttl) < 0:
        raise click.BadParameter("TTLs are seconds, 0 or more")


def _settings(points: ContactPoints, connection: dict[str, Any]) -> ConnectionSettings:
    """The checked connection settings of the options in ``connection``; fail (exit 1)
    with one line on bad ones (a missing file, no password...)."""
    try:
        return ConnectionSettings.parse(points, **connection)
    except ValueError as exc:
        fail(str(exc))


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    if not debug:
        logging.getLogger("cassandra").setLevel(logging.ERROR)


def _check_mountpoint(mountpoint: Path) -> None:
    dead = dead_mount_error(mountpoint)
    if dead is not None:
        _clear_dead_mount(mountpoint, dead)
        click.echo(f"cassfs: cleared a dead cassfs mount at {mountpoint} (its process had died)")
    try:
        is_dir = stat.S_ISDIR(os.stat(mountpoint).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        fail(f"mountpoint {mountpoint} does not exist: create it with `mkdir -p {mountpoint}`")
    except OSError as exc:
        fail(f"cannot use mountpoint {mountpoint}: {exc.strerror}")
    if not is_dir:
        fail(f"mountpoint {mountpoint} is not a directory: give an empty directory")
    if os.path.ismount(mountpoint):
        fail(f"{mountpoint} is already a mount point: `cassfs down {mountpoint}` first")


def _clear_dead_mount(mountpoint: Path, error: OSError) -> None:
    """Lazily unmount the dead cassfs mount at ``mountpoint``; fail (exit 1) if it is
    not cassfs's or stays mounted."""
    fstype = _mount_fstype(mountpoint)
    if fstype is None:
        fail(f"cannot use {mountpoint}: {error.strerror} (a dead mount above it?)")
    if fstype != CASSFS_FSTYPE:
        fail(
            f"{mountpoint} is a dead {fstype} mount ({error.strerror}), not a cassfs one: "
            f"unmount it yourself (`umount -l {mountpoint}`)"
        )
    result = subprocess.run(_unmount_command(mountpoint, lazy=True), capture_output=True, text=True)
    if result.returncode != 0 or _mount_fstype(mountpoint) == CASSFS_FSTYPE:
        fail(f"could not unmount the dead cassfs mount at {mountpoint}: {result.stderr.strip()}")


def _unmount_command(mountpoint: Path, lazy: bool = False) -> list[str]:
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if fusermount is None:
        return ["umount", *(["-l"] if lazy else []), str(mountpoint)]
    return [fusermount, "-u", *(["-z"] if lazy else []), str(mountpoint)]


def _mount_fstype(mountpoint: Path) -> str | None:
    """The type /proc/self/mounts gives the topmost mount at ``mountpoint`` (e.g.
    ``fuse.cassfs``), or None when nothing is mounted there (or /proc is unreadable)."""
    path, fstype = os.path.realpath(mountpoint), None
    try:
        with open("/proc/self/mounts", "rb") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 2 and _unescape_mount_field(fields[1]) == path:
                    fstype = os.fsdecode(fields[2])
    except OSError:
        return None
    return fstype


def _unescape_mount_field(field: bytes) -> str:
    """A path as /proc/mounts writes it (space, tab, newline, backslash as ``\\ooo``)."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


def _check_cache_dir(cache_dir: Path) -> None:
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = cache_dir / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        fail(
            f"cache dir {cache_dir} is not writable ({exc.strerror}): choose another with "
            "--cache-dir or fix its permissions"
        )


def _daemon_status(cache_dir: Path, timeout: float = 5.0) -> dict[str, Any] | None:
    if not socket_path(cache_dir).exists():
        return None
    try:
        return call_once(cache_dir, "status", timeout=timeout)  # type: ignore[no-any-return]
    except DaemonUnavailable:
        return None


def _ensure_daemon(
    cache_dir: Path,
    settings: ConnectionSettings,
    keyspace: str,
    cache_ttl: float,
    cache_size: int,
    purge_delay: float,
    query_timeout: float,
    debug: bool,
    metrics_address: str | None = None,
    feed_poll: float = DEFAULT_FEED_POLL,
    memory_cache: int = MEMORY_CACHE,
) -> None:
    """Start the cache daemon of ``cache_dir`` unless one already answers there.

    ``cache_ttl``, ``purge_delay``, ``query_timeout`` and ``feed_poll`` are seconds,
    ``cache_size`` (on disk) and ``memory_cache`` (in memory) bytes;
    ``metrics_address`` (HOST:PORT) has the daemon serve metrics (a running one keeps its own).
    The daemon gets the password from ``settings.password_file`` or the environment.
    """
    points = settings.contact_points
    status = _daemon_status(cache_dir)
    if status is not None:
        config = status["config"]
        if config["keyspace"] != keyspace or config["contact_points"] != str(points):
            fail(
                f"the daemon of {cache_dir} serves keyspace {config['keyspace']} at "
                f"{config['contact_points']}: use another --cache-dir for {keyspace} at "
                f"{points}"
            )
        other = settings.differences(config)
        if other:
            fail(
                f"the daemon of {cache_dir} runs with another {', '.join(other)}: use another "
                "--cache-dir, or the same connection options as its mounts"
            )
        if metrics_address is not None and config.get("metrics_address") is None:
            click.echo(
                f"cassfs: the daemon of {cache_dir} already runs without metrics: "
                "--metrics-address applies once it restarts (after its last mount is down)",
                err=True,
            )
        return
    log_path = cache_dir / LOG_NAME
    output = cache_dir / OUTPUT_NAME  # start-up errors (before logging) and crashes
    config = {
        **settings.to_config(),  # never the password
        "keyspace": keyspace,
        "cache_ttl": cache_ttl,
        "cache_size": cache_size,
        "memory_cache": memory_cache,
        "idle_exit": DAEMON_IDLE_EXIT,
        "purge_delay": purge_delay,
        "feed_poll": feed_poll,
        "query_timeout": query_timeout,
        "metrics_address": metrics_address,
    }
    daemon = spawn_daemon(cache_dir, daemon_command(cache_dir, config, debug))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if _daemon_status(cache_dir, timeout=2) is not None:
            return
        code = daemon.poll()
        if code is not None:
            if code == 3 and _daemon_status(cache_dir, timeout=10) is not None:
                return  # another `up` started it a moment ago
            fail(
                _last_error_line(output)
                or f"the cache daemon exited ({code}); see {output} and {log_path}"
            )
        time.sleep(0.1)
    daemon.terminate()
    fail(f"the cache daemon did not answer within 90 s; see {log_path}")


def _serve_foreground(
    mountpoint: Path,
    cache_dir: Path,
    owner: int,
    environment: str,
    entry_ttl: float,
    negative_ttl: float,
    atime: str,
    read_only: bool,
    debug: bool,
    noexec: bool = False,
    fsname: str | None = None,
) -> None:
    import trio

    from cassfs.mount import MountOptions, serve

    opts = MountOptions(
        mountpoint,
        cache_dir,
        owner,
        environment,
        entry_ttl,
        negative_ttl,
        atime=atime,
        noexec=noexec,
        fsname=fsname,
        read_only=read_only,
    )
    try:
        trio.run(serve, opts)
    except BaseException as exc:  # trio wraps failures in exception groups
        first = _first_leaf(exc)
        if isinstance(first, CassfsError):
            fail(str(first))
        if isinstance(first, RuntimeError) and "fuse" in str(first):
            fail(f"the kernel refused to mount {mountpoint}: {first}")
        raise


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@main.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for the mount process to exit.",
)
def down(mountpoint: Path, timeout: float) -> None:
    """Unmount MOUNTPOINT; stop its cache daemon once no mount uses it."""
    mountpoint = Path(os.path.abspath(mountpoint))
    record = read_record(mountpoint)
    dead = dead_mount_error(mountpoint)
    if dead is not None:
        _clear_dead_mount(mountpoint, dead)
    elif not os.path.ismount(mountpoint):
        if record is None:
            fail(f"{mountpoint} is not mounted")
    else:
        if _mount_fstype(mountpoint) not in (CASSFS_FSTYPE, None):
            fail(f"{mountpoint} is not a cassfs mount: use umount for other filesystems")
        result = subprocess.run(_unmount_command(mountpoint), capture_output=True, text=True)
        if result.returncode != 0:
            fail(
                f"unmounting {mountpoint} failed: {result.stderr.strip()} "
                "(is a process still using it? see `fuser -m` )"
            )
    if record is not None:
        deadline = time.monotonic() + timeout
        while pid_alive(record.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(record.pid):
            fail(f"the mount process {record.pid} did not exit within {timeout} s")
        if dead is not None and read_record(mountpoint) == record:
            record_path(mountpoint).unlink(missing_ok=True)  # its dead process could not
        cache_dir = Path(record.cache_dir)
        status = _daemon_status(cache_dir)
        if status is not None and status["sessions"] == 0:
            try:
                call_once(cache_dir, "shutdown", timeout=5)
            except DaemonUnavailable:
                pass
            except CassfsError as exc:  # EBUSY: a mount connected since: the daemon stays
                log.info("the daemon of %s stays: %s", cache_dir, exc)
            deadline = time.monotonic() + timeout
            while pid_alive(status["pid"]) and time.monotonic() < deadline:
                time.sleep(0.05)
    if _mount_fstype(mountpoint) == CASSFS_FSTYPE:
        fail(f"{mountpoint} is still mounted (see /proc/mounts)")
    if dead is not None:
        click.echo(
            f"cassfs: unmounted the dead mount at {mountpoint} lazily (its process had died)"
        )
    else:
        click.echo(f"cassfs: unmounted {mountpoint}")


# -- cache ----------------------------------------------------------------------------------


@main.group()
def cache() -> None:
    """Inspect or empty the local cache."""


def _offline_stats(cache_dir: Path) -> dict[str, int]:
    import diskcache

    totals = stats_mod.read_totals(cache_dir / "counters")
    store = diskcache.Cache(str(cache_dir / "store"))
    try:
        return {**totals, "entries": len(store), "bytes_cached": store.volume()}
    finally:
        store.close()


@cache.command("stats")
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts.")
def cache_stats(cache_dir: Path, as_json: bool) -> None:
    """Print the cache's counters (from the daemon if one runs, else from disk)."""
    if not (cache_dir / "store").exists():
        fail(f"no cache at {cache_dir}: give the --cache-dir a mount used")
    running = _daemon_status(cache_dir) is not None
    figures: dict[str, Any]
    if running:
        figures = call_once(cache_dir, "stats")
    else:
        figures = _offline_stats(cache_dir)
    if as_json:
        click.echo(json.dumps({**figures, "daemon_running": running}, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="cassfs cache",
        caption=f"{cache_dir}, {'daemon running' if running else 'no daemon running'}",
    )
    table.add_column("counter")
    table.add_column("value", justify="right")
    for name in (*stats_mod.NAMES, *stats_mod.GAUGES):
        table.add_row(name, f"{figures.get(name, 0):,}")
    Console().print(table)


@cache.command("purge")
@cache_dir_option
def cache_purge(cache_dir: Path) -> None:
    """Empty the cache; mounts then read everything from Cassandra again."""
    if not (cache_dir / "store").exists():
        fail(f"no cache at {cache_dir}: nothing to purge")
    if _daemon_status(cache_dir) is not None:
        removed = call_once(cache_dir, "purge")
    else:
        import diskcache

        store = diskcache.Cache(str(cache_dir / "store"))
        try:
            removed = store.clear()
        finally:
            store.close()
        counters = stats_mod.Counters(cache_dir / "counters")
        counters.add("purges")
        counters.close()
    click.echo(f"cassfs: purged {removed} entries from {cache_dir}")


@cache.command("warmup")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--jobs",
    default=warmup.DEFAULT_JOBS,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Files fetched at once.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts.")
def cache_warmup(paths: tuple[Path, ...], jobs: int, as_json: bool) -> None:
    """Fetch every file under PATHS (on a cassfs mount) into the local cache.

    Run it on a new host, or after a purge, before it takes traffic: its first
    requests are then served from local disk.  Prints files, bytes and files/s;
    exits 1 if a file could not be fetched.
    """
    for path in paths:
        if not path.exists():
            fail(f"{path} does not exist: give a file or directory on a cassfs mount")
        if _fstype_of(path) != CASSFS_FSTYPE:
            fail(f"{path} is not on a cassfs mount: give a path under a `cassfs up` mountpoint")
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        disable=as_json or not console.is_terminal,
    ) as progress:
        task = progress.add_task("walking")

        def show(report: warmup.WarmupReport) -> None:
            progress.update(
                task,
                description=f"{report.files:,} files, {report.bytes / 1e6:,.1f} MB, "
                f"{report.files_per_second:,.0f} files/s",
            )

        report = warmup.warm(paths, jobs, show)
    if as_json:
        click.echo(json.dumps(report.to_json(), sort_keys=True))
    else:
        click.echo(
            f"cassfs: warmed {report.files:,} files ({report.bytes / 1e6:,.1f} MB) in "
            f"{report.directories:,} directories in {report.seconds:.1f} s: "
            f"{report.files_per_second:,.0f} files/s"
            + (f"; {report.vanished} vanished meanwhile" if report.vanished else "")
        )
    if report.failed:
        for failed_path, message in report.errors:
            click.echo(f"cassfs: could not fetch {failed_path}: {message}", err=True)
        fail(
            f"{report.failed} file(s) or directories could not be fetched "
            "(see above; the mount's log says why): run it again once they are readable"
        )


def _fstype_of(path: Path) -> str | None:
    """The type of the mount ``path`` lies on (the longest mountpoint above it), or
    None when /proc/self/mounts is unreadable."""
    real, best, fstype = os.path.realpath(path), "", None
    try:
        with open("/proc/self/mounts", "rb") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = _unescape_mount_field(fields[1])
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, fstype = point, os.fsdecode(fields[2])
    except OSError:
        return None
    return fstype


@cache.command("evict")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts.")
def cache_evict(paths: tuple[Path, ...], as_json: bool) -> None:
    """Drop the files and directories under PATHS (on a cassfs mount) from the local
    cache and the kernel's, so that their next access reads Cassandra.

    Other cached files stay.  See cassfs/evict.py for how the daemon is reached.
    """
    from cassfs import evict as evict_mod
    from cassfs.mounts import mount_of

    groups: dict[str, list[Path]] = {}
    tenants: dict[str, tuple[tuple[int, str], Path]] = {}
    for path in paths:
        if not path.exists() and not path.is_symlink():
            fail(f"{path} does not exist: give a file or directory on a cassfs mount")
        entry = mount_of(path)
        if entry is None or entry.fstype != CASSFS_FSTYPE or entry.tenant is None:
            fail(f"{path} is not on a cassfs mount: give a path under a `cassfs up` mountpoint")
        record = read_record(Path(entry.mountpoint))
        if record is None:
            fail(
                f"no record of the mount at {entry.mountpoint} in {run_dir()}: set "
                "CASSFS_RUN_DIR as it was for `cassfs up`"
            )
        groups.setdefault(entry.mountpoint, []).append(path)
        tenants[entry.mountpoint] = (entry.tenant, Path(record.cache_dir))
    total = evict_mod.EvictReport()
    for mountpoint, roots in groups.items():
        tenant, cache_dir = tenants[mountpoint]
        try:
            report = evict_mod.evict(roots, tenant, functools.partial(call_once, cache_dir))
        except DaemonUnavailable as exc:
            fail(f"{exc}: is the mount at {mountpoint} still served?")
        except CassfsError as exc:
            fail(f"evicting under {mountpoint} failed: {exc}")
        except OSError as exc:
            fail(f"cannot read {exc.filename}: {exc.strerror}")
        for name, value in report.to_json().items():
            setattr(total, name, getattr(total, name) + value)
    if as_json:
        click.echo(json.dumps(total.to_json(), sort_keys=True))
    else:
        vanished = f"; {total.vanished} vanished meanwhile" if total.vanished else ""
        if total.skipped:
            vanished += (
                f"; {total.skipped} skipped: the mount holds another version of them open"
                " (or another host moved them); evict again once those are closed"
            )
        click.echo(
            f"cassfs: evicted {total.inodes:,} files and directories ({total.contents:,} cached"
            f" contents) from the cache{vanished}"
        )


# -- status ---------------------------------------------------------------------------------


@main.command("status")
@click.argument("mountpoints", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts.")
def status_command(mountpoints: tuple[Path, ...], as_json: bool) -> None:
    """Show this host's cassfs mounts (or MOUNTPOINTS): tenant, state, daemon, cache use,
    Cassandra reachability.

    Exits 1 when something is wrong: a dead or unanswering mount, a mount whose
    process is gone, a daemon that does not answer or cannot reach Cassandra.
    """
    from cassfs import status as status_mod

    try:
        report = status_mod.collect(list(mountpoints) or None)
    except OSError as exc:
        fail(f"cannot read the mount table: {exc.strerror}")
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        _print_status(report)
    if not report["ok"]:
        sys.exit(1)


def _print_status(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not report["mounts"]:
        console.print("no cassfs mounts")
        return
    table = Table(title="cassfs mounts")
    for column in ("mountpoint", "tenant", "state", "daemon", "cache", "Cassandra"):
        table.add_column(column)
    for m in report["mounts"]:
        daemon = m["daemon"]
        tenant = f"{m['owner']}/{m['environment']}" if m["owner"] is not None else "?"
        if daemon is None:
            who, use, cassandra = "unknown", "", ""
        elif not daemon["answering"]:
            who, use, cassandra = "[red]not answering[/]", "", "?"
        else:
            cache = daemon["cache"]
            who = f"pid {daemon['pid']}, {daemon['sessions']} sessions"
            use = f"{cache['entries']:,} entries, {cache['bytes'] / 1e6:,.1f} of " + (
                f"{cache['limit'] / 1e6:,.0f} MB" if cache["limit"] else "? MB"
            )
            cassandra = "reachable" if daemon["cassandra_reachable"] else "[red]unreachable[/]"
        state = m["state"] if not m["problems"] else f"[red]{'; '.join(m['problems'])}[/]"
        table.add_row(m["mountpoint"], tenant, state, who, use, cassandra)
    console.print(table)


# -- schema ---------------------------------------------------------------------------------


@main.group()
def schema() -> None:
    """Manage the Cassandra schema."""


@schema.command("apply")
@contact_points_option
@keyspace_option
@click.option(
    "--replication",
    envvar="CASSFS_REPLICATION",
    default="{'class': 'SimpleStrategy', 'replication_factor': 1}",
    show_default=True,
    help="CQL replication map for a new keyspace (env CASSFS_REPLICATION).",
)
@connection_options(levels=False)
def schema_apply(contact_points: str, keyspace: str, replication: str, **connection: Any) -> None:
    """Create the keyspace, or upgrade it in place to this cassfs's schema version.

    One line per version step applied; a keyspace already current is left as is.
    The password of --username comes from CASSFS_PASSWORD or --password-file.
    """
    from cassfs import schema as schema_mod

    logging.getLogger("cassandra").setLevel(logging.ERROR)
    try:
        points = ContactPoints.parse(contact_points)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    settings = _settings(points, connection)
    try:
        with schema_mod.ConsoleReporter(click.echo) as report:
            version = schema_mod.apply(
                settings, keyspace, replication, on_step=report.step, on_progress=report.progress
            )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    except FileNotFoundError as exc:
        fail(f"{exc}: point CASSFS_SCHEMA_DIR at the schema/ folder of cassfs")
    except (schema_mod.SchemaTooNew, ConnectionRejected) as exc:
        fail(str(exc))
    except CassfsError as exc:
        fail(f"{exc} (is the node up? `just node-start` starts a local one; apply again resumes)")
    state = "now at" if report.steps else "already at"
    click.echo(
        f"cassfs: keyspace {keyspace} at {contact_points} is {state} schema version {version}"
    )


# -- fsck -----------------------------------------------------------------------------------


@main.command("fsck")
@contact_points_option
@keyspace_option
@owner_option
@environment_option
@click.option("--repair", is_flag=True, help="Mend what is safe to mend (else only report).")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Seconds: --repair leaves anything younger alone (it may belong to a running "
    "request). 0 only when no mount of the tenant runs.",
)
@click.option("--no-content", is_flag=True, help="Skip reading chunks (structure only).")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Cassandra queries in flight.",
)
@connection_options()
def fsck_command(
    contact_points: str,
    keyspace: str,
    owner: int,
    environment: str,
    repair: bool,
    grace: float,
    no_content: bool,
    concurrency: int,
    **connection: Any,
) -> None:
    """Check a tenant's files in Cassandra; exit 1 when something is wrong (and not repaired).

    Prints one line per problem and a summary line; progress on a terminal.  On a tenant
    in use, changes in progress (younger than --grace) are listed too; --repair leaves
    them alone.
    """
    from cassfs import fsck as fsck_mod

    logging.getLogger("cassandra").setLevel(logging.ERROR)
    try:
        points = ContactPoints.parse(contact_points)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not environment:
        raise click.BadParameter("--environment must not be empty")
    settings = _settings(points, connection)
    options = fsck_mod.Options(
        repair=repair, grace=grace, content=not no_content, concurrency=concurrency
    )
    try:
        status = fsck_mod.run(settings, keyspace, owner, environment, options)
    except ConnectionRejected as exc:
        fail(str(exc))
    except CassfsError as exc:
        fail(f"{exc} (is the node up? `just node-start` starts a local one)")
    sys.exit(status)


# -- docker-plugin --------------------------------------------------------------------------


@main.command("docker-plugin")
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    default="/run/docker/plugins/cassfs.sock",
    envvar="CASSFS_DOCKER_SOCKET",
    show_default=True,
    help="Unix socket Docker finds the plugin by; its name names the volume driver"
    " (env CASSFS_DOCKER_SOCKET).",
)
@click.option(
    "--mount-root",
    type=click.Path(path_type=Path),
    default="/var/lib/cassfs/volumes",
    envvar="CASSFS_MOUNT_ROOT",
    show_default=True,
    help="Volumes mount at MOUNT_ROOT/NAME; the volume list is kept in"
    " MOUNT_ROOT/.volumes.json (env CASSFS_MOUNT_ROOT).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default="/var/cache/cassfs-docker",
    envvar="CASSFS_DOCKER_CACHE_DIR",
    show_default=True,
    help="The volumes' cache dirs are made under it, one per cache_ttl and cache_size"
    " (env CASSFS_DOCKER_CACHE_DIR).",
)
@contact_points_option
@keyspace_option
@click.option("--debug", is_flag=True, envvar="CASSFS_DEBUG", help="Log more (env CASSFS_DEBUG).")
@connection_options()
def docker_plugin_command(
    socket_path: Path,
    mount_root: Path,
    cache_dir: Path,
    contact_points: str,
    keyspace: str,
    debug: bool,
    **connection: Any,
) -> None:
    """Serve cassfs volumes to Docker: the volume plugin protocol on a unix socket.

    `docker volume create -d cassfs -o owner=N -o environment=NAME VOLUME` makes a
    volume of that tenant; a container using it gets a `cassfs up` mount, with this
    command's connection options (the password of --username from CASSFS_PASSWORD or
    --password-file, as for `cassfs up`).
    """
    from cassfs import docker_plugin

    _setup_logging(debug)
    try:
        points = ContactPoints.parse(contact_points)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    settings = _settings(points, connection)
    try:
        plugin = docker_plugin.Plugin(
            mount_root, cache_dir, str(points), keyspace, settings.to_args()
        )
        docker_plugin.serve(
            Path(os.path.abspath(socket_path)),
            plugin,
            ready=lambda: click.echo(f"cassfs: docker plugin serving {socket_path}"),
        )
    except docker_plugin.PluginError as exc:
        fail(str(exc))
