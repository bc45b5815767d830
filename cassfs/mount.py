"""Run one mount in this process: connect to the daemon, mount, serve, unmount.

One mount per process (pyfuse3 keeps its session in module globals).  The
lifecycle follows pyfuse3's and S3QL's: ``init`` mounts, ``main`` serves until
``fusermount3 -u`` or a signal, ``close(unmount=clean)`` afterwards, with
``clean`` set only once ``main`` returned.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from cached.api import daemon_command
from cached.cachedir import LOG_NAME, spawn_daemon
from cached.client import open_client, socket_path
from cached.errors import DaemonUnavailable
from cassfs import fuseloop, openflags
from cassfs.fs import FrontConfig, Operations
from cassfs.state import MountRecord, record_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountOptions:
    """What ``cassfs up`` mounts: where, which tenant, through which cache dir; with
    ``read_only``, a mount that changes nothing (``ro``, EROFS, no Cassandra write)."""

    mountpoint: Path
    cache_dir: Path
    owner: int
    environment: str
    entry_ttl: float
    negative_ttl: float
    atime: str = "relatime"
    allow_other: bool = True
    debug_fuse: bool = False
    noexec: bool = False
    fsname: str | None = None  # default cassfs:OWNER/ENVIRONMENT
    read_only: bool = False


def fuse_options(opts: MountOptions) -> set[str]:
    """The ``-o`` options: pyfuse3's defaults (default_permissions) plus fsname/subtype
    (and ``ro`` for a read-only mount).

    Never max_read/max_write/entry_timeout (see shared notes §3.5, §3.7).
    """
    options = set(pyfuse3.default_options)
    options.add(f"fsname={opts.fsname or f'cassfs:{opts.owner}/{opts.environment}'}")
    options.add("subtype=cassfs")
    if opts.allow_other:
        options.add("allow_other")
    if opts.atime == "noatime":
        options.add("noatime")
    if opts.noexec:
        options.add("noexec")
    if opts.read_only:
        options.add("ro")
    if opts.debug_fuse:
        options.add("debug")
    return options


async def serve(opts: MountOptions) -> None:
    """Mount and serve until unmounted or SIGTERM/SIGINT.

    Raises ``DaemonUnavailable`` when the daemon does not answer and
    ``RuntimeError`` when the kernel refuses the mount.
    """
    ops: Operations | None = None
    if not openflags.LOADED:
        log.warning(
            "%s is not loaded (reinstall cassfs with a C compiler and libfuse3-dev): every "
            "close(2) sends a flush and every listing asks the front again",
            openflags.LIBRARY.name,
        )

    def notify(event: str, params: dict[str, Any]) -> Callable[[], Awaitable[None]] | None:
        return ops.on_notification(event, params) if ops is not None else None

    async with open_client(socket_path(opts.cache_dir), on_notification=notify) as client:
        hello = await client.hello(opts.owner, opts.environment, read_only=opts.read_only)
        # a debug mount (`cassfs up --debug`) restarts its daemon with per-operation logs too
        debug = logging.getLogger().isEnabledFor(logging.DEBUG)
        client.restart = functools.partial(restart_daemon, opts.cache_dir, hello["config"], debug)
        ops = Operations(
            client,
            FrontConfig(
                opts.entry_ttl,
                opts.negative_ttl,
                atime=opts.atime,
                read_only=opts.read_only,
                # opendir-free only while the feed tells of other hosts' changes
                kernel_keeps_listings=hello["config"].get("feed_poll", 0) > 0
                and openflags.skip_opendir(),
                open_records_access="open_atime" in hello.get("features", ()),
            ),
            opts.cache_dir / "spool",
            hello["epoch"],
        )
        # resolve() before the mount, never after: it would stat the mount from its
        # own server thread
        record = await trio.to_thread.run_sync(record_path, opts.mountpoint)
        pyfuse3.init(ops, str(opts.mountpoint), fuse_options(opts))
        clean = False
        try:
            await trio.to_thread.run_sync(
                _write_record,
                record,
                MountRecord(
                    pid=os.getpid(),
                    mountpoint=str(opts.mountpoint),
                    cache_dir=str(opts.cache_dir),
                ),
            )
            async with trio.open_nursery() as nursery:
                ops.nursery = nursery
                nursery.start_soon(_terminate_on_signal)
                log.info(
                    "mounted %s/%s at %s%s", opts.owner, opts.environment, opts.mountpoint,
                    " read-only" if opts.read_only else "",
                )  # fmt: skip
                if fuseloop.install():
                    try:
                        await pyfuse3.main(max_tasks=fuseloop.MAX_TASKS)
                    finally:
                        fuseloop.uninstall()
                else:
                    await pyfuse3.main()
                clean = True
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await ops.destroy()
            pyfuse3.close(unmount=clean)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lambda: record.unlink(missing_ok=True))
            log.info("unmounted %s", opts.mountpoint)


def _write_record(path: Path, record: MountRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record.__dict__))


async def restart_daemon(
    cache_dir: Path, config: dict[str, Any], debug: bool = False
) -> trio.SocketStream:
    """Start the cache daemon again with ``config`` and connect to it (60 s at most);
    ``debug``: it logs every operation, as the daemon it replaces did.

    For a daemon that died under a live mount (crash, OOM kill): the mount goes on
    with a new daemon on the same cache dir.  Raises ``DaemonUnavailable``.
    """
    log_path = cache_dir / LOG_NAME
    await trio.to_thread.run_sync(spawn_daemon, cache_dir, daemon_command(cache_dir, config, debug))
    with trio.move_on_after(60):
        while True:
            try:
                return await trio.open_unix_socket(str(socket_path(cache_dir)))
            except OSError:
                await trio.sleep(0.1)
    raise DaemonUnavailable(f"the cache daemon of {cache_dir} did not come back; see {log_path}")


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("got signal %d: unmounting", signum)
            pyfuse3.terminate()
            return
