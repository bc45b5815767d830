"""The cache daemon process: configuration, start-up checks, serving and shutdown.

Run as ``python -m cached --cache-dir DIR [...]`` (``cassfs up`` starts it when
no daemon serves that cache dir).  One daemon per cache dir, enforced with an
``flock`` on ``DIR/daemon.lock``.  Start-up failures (Cassandra unreachable,
schema missing, cache dir not writable) print one line to stderr and exit 2.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click
import trio

from cached import cachedir
from cached.api import (  # noqa: F401 (daemon_command, socket_path: re-exported)
    DEFAULT_PURGE_DELAY,
    FEED_TIMEOUTS,
    MEMORY_CACHE,
    POLL_TIMEOUTS,
    daemon_command,
    default_timeouts,
    parse_metrics_address,
    socket_path,
)
from cached.cache import LocalCache, MemoryBounds
from cached.cliopts import BYTE_SIZE
from cached.connection import ConnectionSettings, connection_options
from cached.errors import CassfsError, Unreachable
from cached.feed import POLL_INTERVAL
from cached.reaper import Reaper
from cached.server import Server
from cached.service import Service
from cached.stats import Counters
from cached.store import ContactPoints, Store

log = logging.getLogger(__name__)

EXIT_STARTUP = 2
EXIT_RUNNING = 3


async def run_daemon(
    cache_dir: Path,
    connection: ContactPoints | ConnectionSettings,
    keyspace: str,
    cache_ttl: float,
    cache_size: int,
    idle_exit: float | None,
    query_timeout: float = 10.0,
    purge_delay: float = DEFAULT_PURGE_DELAY,
    feed_poll: float = POLL_INTERVAL,
    metrics_address: tuple[str, int] | None = None,
    memory_cache: int = MEMORY_CACHE,
) -> None:
    """Connect, serve on ``cache_dir/daemon.sock`` until SIGTERM/SIGINT or ``shutdown``.

    ``feed_poll``: seconds between reads of the change feeds (:mod:`cached.feed`); 0
    follows none (other hosts' changes then show at the TTL; this daemon's own still go
    into the feed).

    ``connection`` gives the cluster, credentials, TLS and consistency levels;
    ``cache_ttl``, ``idle_exit``, ``query_timeout`` and ``purge_delay`` (see
    :mod:`cached.reaper`) are seconds, ``cache_size`` bytes: on disk; ``memory_cache``
    bytes bound the caches kept in memory (:meth:`~cached.cache.MemoryBounds.split`).
    ``metrics_address`` ``(host, port)`` serves Prometheus metrics there (:mod:`cached.metrics`).
    Raises ``CassfsError`` subclasses on start-up failures (``ConnectionRejected`` for
    refused credentials or TLS, even with a cache to serve; ``MetricsAddressError`` for
    an address it cannot listen on).
    """
    settings = ConnectionSettings.of(connection)
    contact_points = settings.contact_points
    store = Store(settings, keyspace, query_timeout=query_timeout)
    metrics = None
    if metrics_address is not None:
        from cached.metrics import Metrics  # prometheus_client only when asked for

        metrics = Metrics()
        # First, before anything else starts: a bad address fails the start at once.
        metrics_address = await trio.to_thread.run_sync(metrics.serve, *metrics_address)
        store.metrics = metrics
    spool = cache_dir / "spool"

    def open_local() -> tuple[Counters, LocalCache]:  # blocking: SQLite, mkdir
        spool.mkdir(mode=0o700, exist_ok=True)
        counters = Counters(cache_dir / "counters")
        memory = MemoryBounds.split(memory_cache)
        return counters, LocalCache(cache_dir, cache_size, cache_ttl, counters, memory=memory)

    try:
        counters, cache = await trio.to_thread.run_sync(open_local)
    except BaseException:
        if metrics is not None:
            await trio.to_thread.run_sync(metrics.close)
        raise
    try:
        await store.try_connect()
    except Unreachable as exc:
        # With a cache to serve, start anyway (mounts keep reading what it holds) and
        # connect once Cassandra is back; with nothing cached there is nothing to serve.
        entries, _ = await cache.usage()
        if not entries:
            await trio.to_thread.run_sync(counters.close)
            await trio.to_thread.run_sync(cache.close)
            if metrics is not None:
                await trio.to_thread.run_sync(metrics.close)
            raise
        log.warning("%s: serving the %d cached entries until it answers", exc, entries)
        # an outage from the start, not from keep_connecting's first retry: status and
        # metrics say so at once, and queries fail fast meanwhile
        store.outage.failed(str(exc))
    reaper = Reaper(cache_dir / "reaper", purge_delay)
    await reaper.open()
    service = Service(store, cache, counters, spool, reaper)
    config = {
        **settings.to_config(),  # never the password
        "keyspace": keyspace,
        "cache_ttl": cache_ttl,
        "cache_size": cache_size,
        "memory_cache": memory_cache,
        "query_timeout": query_timeout,
        "idle_exit": idle_exit,
        "purge_delay": purge_delay,
        "feed_poll": feed_poll,
        "metrics_address": _address(metrics_address) if metrics_address else None,
    }
    if metrics is not None:
        metrics.attach(service, cache, store)
    server = Server(
        service, store, socket_path(cache_dir), config, idle_exit=idle_exit, metrics=metrics
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            if not store.connected:
                nursery.start_soon(store.keep_connecting)
            nursery.start_soon(_flush_counters, counters)
            nursery.start_soon(cache.run_writer)
            nursery.start_soon(service.core.usage.run)
            nursery.start_soon(service.core.atimes.run)
            if feed_poll > 0:
                await nursery.start(service.core.feed.run, feed_poll)
            service.core.background = nursery
            await nursery.start(reaper.run, service.reap)
            nursery.start_soon(_on_signals, server)
            log.info(
                "serving %s (keyspace %s at %s, TTL %s s, %d bytes)",
                cache_dir,
                keyspace,
                contact_points,
                cache_ttl,
                cache_size,
            )
            await server.stopped.wait()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lambda: socket_path(cache_dir).unlink(missing_ok=True))
            await cache.flush()
            await trio.to_thread.run_sync(counters.close)
            await trio.to_thread.run_sync(cache.close)
            await store.close()
            if metrics is not None:
                await trio.to_thread.run_sync(metrics.close)
        log.info("stopped")


def _address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _flush_counters(counters: Counters) -> None:
    while True:
        await trio.sleep(1)
        pending = counters.take_pending()
        if pending:
            await trio.to_thread.run_sync(counters.persist, pending)


async def _on_signals(server: Server) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("got signal %d: stopping", signum)
            server.stopped.set()
            return


def _lock(cache_dir: Path) -> int:
    fd = os.open(cache_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@click.command(context_settings={"auto_envvar_prefix": "CASSFS"})
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory of the cache, its socket and counters.",
)
@click.option(
    "--contact-points",
    default="127.0.0.1:9042",
    show_default=True,
    help="Cassandra contact points, HOST[:PORT],...",
)
@click.option("--keyspace", default="cassfs", show_default=True)
@click.option(
    "--cache-ttl",
    type=float,
    default=None,
    show_default=f"{FEED_TIMEOUTS.cache:g} with the change feed, {POLL_TIMEOUTS.cache:g} without",
    help="Seconds cached metadata is served before revalidation.",
)
@click.option(
    "--cache-size",
    type=BYTE_SIZE,
    default="1G",
    show_default=True,
    help="Cache size limit (bytes, or with K/M/G/T).",
)
@click.option(
    "--memory-cache",
    type=BYTE_SIZE,
    default="128M",
    envvar="CASSFS_MEMORY_CACHE",
    show_default=True,
    help="Bound of the caches kept in memory: small contents, metadata and SQLite's page"
    " cache (bytes, or with K/M/G/T; env CASSFS_MEMORY_CACHE).",
)
@click.option(
    "--query-timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds before a Cassandra query counts as failed (then stale cache entries serve).",
)
@click.option(
    "--idle-exit",
    type=float,
    default=None,
    help="Exit once no mount has used the daemon for this many seconds.",
)
@click.option(
    "--purge-delay",
    type=click.FloatRange(min=0),
    default=DEFAULT_PURGE_DELAY,
    show_default=True,
    help="Seconds replaced versions and unlinked inodes stay for other hosts before deletion"
    " (longer than every host's --cache-ttl + --entry-ttl).",
)
@click.option(
    "--feed-poll",
    type=click.FloatRange(min=0),
    default=POLL_INTERVAL,
    show_default=True,
    help="Seconds between reads of the change feeds of the tenants served: how soon other"
    " hosts' changes show; 0 reads none (they show at the TTL).",
)
@click.option(
    "--metrics-address",
    default=None,
    help="Serve Prometheus metrics on http://HOST:PORT/metrics (default: off; port 0: any"
    " free port, shown by the status call).",
)
@click.option(
    "--log-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Log here, rotated at 10 MiB, 3 old files kept (default: stderr).",
)
@click.option("--debug", is_flag=True, help="Log every RPC.")
@connection_options()
def main(
    cache_dir: Path,
    contact_points: str,
    keyspace: str,
    cache_ttl: float | None,
    cache_size: int,
    memory_cache: int,
    query_timeout: float,
    idle_exit: float | None,
    purge_delay: float,
    feed_poll: float,
    metrics_address: str | None,
    log_file: Path | None,
    debug: bool,
    **connection: Any,
) -> None:
    """Run the cassfs cache daemon for CACHE_DIR in the foreground.

    The password of ``--username`` comes from ``--password-file`` or CASSFS_PASSWORD.
    """
    os.umask(cachedir.PRIVATE_UMASK)  # the cache dir is for this user only
    if cache_ttl is None:
        cache_ttl = default_timeouts(feed_poll).cache
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    if not debug:
        logging.getLogger("cassandra").setLevel(logging.ERROR)
    try:
        points = ContactPoints.parse(contact_points)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        settings = ConnectionSettings.parse(points, **connection)
        metrics = parse_metrics_address(metrics_address) if metrics_address else None
    except ValueError as exc:
        click.echo(f"cassfs daemon: {exc}", err=True)  # one line, as other start-up failures
        sys.exit(EXIT_STARTUP)
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = _lock(cache_dir)
        if log_file is not None:
            cachedir.log_to_file(log_file, debug)
        cachedir.make_private(cache_dir)
        cachedir.clean_spool(cache_dir)  # under the lock: no other daemon uses them
    except BlockingIOError:
        click.echo(f"cassfs daemon: a daemon already serves {cache_dir}", err=True)
        sys.exit(EXIT_RUNNING)
    except OSError as exc:
        click.echo(
            f"cassfs daemon: cache dir {cache_dir} is not writable: {exc.strerror}", err=True
        )
        sys.exit(EXIT_STARTUP)
    try:
        trio.run(
            run_daemon,
            cache_dir,
            settings,
            keyspace,
            cache_ttl,
            cache_size,
            idle_exit,
            query_timeout,
            purge_delay,
            feed_poll,
            metrics,
            memory_cache,
        )
    except CassfsError as exc:
        log.error("start-up failed: %s", exc)
        click.echo(f"cassfs daemon: {exc}", err=True)
        sys.exit(EXIT_STARTUP)
    finally:
        os.close(lock_fd)
