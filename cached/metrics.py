"""Prometheus metrics of the cache daemon, served over HTTP on an opt-in address.

``python -m cached --metrics-address HOST:PORT`` (``cassfs up --metrics-address``)
serves ``/metrics`` in prometheus_client's own HTTP server thread, never on the
trio loop.  What it exposes:

- the daemon's counters (:mod:`cached.stats`: hits, misses, bytes fetched and
  served, evictions, stale answers...) through :class:`StatsCollector`, a custom
  collector reading the in-memory totals, so nothing is counted twice;
- gauges read at scrape time: cache entries, bytes and limit, mount sessions,
  whether Cassandra is unreachable;
- ``cassfs_rpc_duration_seconds{method}``: every RPC, timed in the server's
  dispatch (:meth:`Metrics.observe_rpc`);
- ``cassfs_cassandra_query_duration_seconds{statement}`` and
  ``cassfs_cassandra_query_errors_total{statement,kind}``: every query, timed in
  the store's execute path (:meth:`Metrics.observe_query`, :meth:`Metrics.query_failed`).

Thread safety: histograms and counters of prometheus_client take their own locks.
The collector runs in the HTTP thread and reads only values that the GIL keeps
whole: ints, the size of a set, a dict whose keys never change
(:meth:`cached.stats.Counters.snapshot`), and diskcache's own figures (diskcache
is thread-safe; it opens one SQLite connection per thread).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cached import stats
from cached.errors import CassfsError

if TYPE_CHECKING:
    from cached.cache import LocalCache
    from cached.service import Service
    from cached.store import Store

log = logging.getLogger(__name__)

#: Histogram buckets of RPC and query latencies, seconds (100 µs to 10 s).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip


class MetricsAddressError(CassfsError):
    """The metrics HTTP server could not listen on the address given (EADDRINUSE, ...)."""


class StatsCollector(Collector):
    """The daemon's counters and gauges, read when scraped (in the HTTP thread)."""

    def __init__(self, service: Service, cache: LocalCache, store: Store) -> None:
        self.service = service
        self.cache = cache
        self.store = store

    def collect(self) -> Iterator[Metric]:
        """One family per counter of :mod:`cached.stats` and per gauge."""
        totals = self.service.core.counters.snapshot()
        for name in stats.NAMES:
            family = CounterMetricFamily(f"cassfs_{name}", stats.COUNTERS[name])
            family.add_metric([], totals[name])
            yield family
        entries, volume = self.cache.usage_now()
        sessions = len(self.service.sessions)
        down = int(self.store.outage.down)
        gauges = (
            ("cassfs_cache_entries", "Entries in the local cache.", entries),
            ("cassfs_cache_bytes", "Bytes the local cache holds.", volume),
            ("cassfs_cache_limit_bytes", "The cache's size limit, bytes.", self.cache.size_limit),
            ("cassfs_mount_sessions", "Mount sessions (open mounts) using this daemon.", sessions),
            ("cassfs_cassandra_unreachable", "1 while Cassandra is unreachable.", down),
        )
        for name, text, value in gauges:
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], value)
            yield gauge


class Metrics:
    """The daemon's registry, its latency histograms and error counter, and its server.

    Create one per daemon, :meth:`attach` the service once it exists, and
    :meth:`serve` to listen.  The ``observe_*`` methods are cheap and thread-safe.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rpc_seconds = Histogram(
            "cassfs_rpc_duration_seconds",
            "Time the daemon took to answer an RPC, seconds, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.query_seconds = Histogram(
            "cassfs_cassandra_query_duration_seconds",
            "Time a Cassandra query took, seconds, by prepared statement (or batch).",
            ["statement"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.query_errors = Counter(
            "cassfs_cassandra_query_errors",
            "Cassandra queries that failed, by statement and kind (the driver's error class;"
            " FailedFast: refused unsent during an outage; NoSession: not connected yet).",
            ["statement", "kind"],
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def observe_rpc(self, method: str, seconds: float) -> None:
        """Count one RPC ``method`` that took ``seconds``."""
        self.rpc_seconds.labels(method).observe(seconds)

    def observe_query(self, statement: str, seconds: float) -> None:
        """Count one query of ``statement`` (a name of ``cached.store.STATEMENTS`` or a
        batch) that took ``seconds``, failed or not."""
        self.query_seconds.labels(statement).observe(seconds)

    def query_failed(self, statement: str, kind: str) -> None:
        """Count one failed query of ``statement``; ``kind`` is the error's class name."""
        self.query_errors.labels(statement, kind).inc()

    def attach(self, service: Service, cache: LocalCache, store: Store) -> None:
        """Expose the daemon's counters and gauges from now on."""
        self.registry.register(StatsCollector(service, cache, store))

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics`` on ``host``:``port`` (0: any free port) in a daemon thread.

        Returns the address bound ``(host, port)``.  Raises ``MetricsAddressError``
        when it cannot listen there (a port in use, an unknown host).
        """
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise MetricsAddressError(
                f"cannot serve metrics on {_join(host, port)}: {reason}: "
                "give a free --metrics-address HOST:PORT",
                err=exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else None,
            ) from exc
        bound = self._server.server_address
        log.info("serving metrics on http://%s/metrics", _join(host, int(bound[1])))
        return host, int(bound[1])

    def close(self) -> None:
        """Stop the HTTP server (blocking: it waits for the serving thread)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
