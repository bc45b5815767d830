"""Start, stop and query a local cluster of Cassandra 5.0 nodes, one per loopback address.

Node K (1-based) runs from ``DIR/nodeK`` (a :class:`~cassfs.node.launcher.NodeDir`) and listens
on ``127.0.0.K`` (Linux routes all of 127.0.0.0/8 to ``lo``): CQL on the same ``port`` and
internode traffic on the same ``storage_port`` on every address, JMX on a free port of
127.0.0.1 (JMX binds the loopback address only). Node 1 is the only seed. Every node has one
token, evenly spaced, and joins without bootstrapping: the cluster is fresh, there is nothing to
stream. ``DIR/cluster.json`` records the size and ports, so ``stop`` and ``status`` find every
node; ``DIR/classpath.txt`` is Maven's classpath, resolved once for all nodes::

    DIR/cluster.json         {"nodes": N, "port": CQL port, "storage_port": storage port}
    DIR/classpath.txt        Cassandra's classpath (see launcher.resolve_classpath)
    DIR/node1 ... DIR/nodeN  one node directory each (conf, logs, data, pid file)

Start-up: node 1 first, until it answers CQL, then the others at once (each waits for gossip
to settle before it opens CQL), then until every node answers CQL, lists the others as peers,
and coordinates a read that needs every replica of ``system_distributed``. Errors a user can act
on (memory, ports, addresses) are :class:`~cassfs.node.launcher.NodeError` with a one-line
message.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click

from cassfs.node.launcher import (
    _CLUSTER_START_PROPERTIES,
    DEFAULT_EXIT_TIMEOUT,
    DEFAULT_START_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    HOST,
    NodeDir,
    NodeError,
    NodeStartFailed,
    NodeStatus,
    _free_port,
    _locked,
    _NotReady,
    _port_in_use,
    _terminate,
    _write_atomic,
    find_java,
    java_command,
    log_tail,
    polling,
    query_release_version,
    read_pid,
    resolve_classpath,
    settle_crash,
    spawn_jvm,
    stop,
    wait_gone,
    wait_until_ready,
    write_config,
)

log = logging.getLogger(__name__)

DEFAULT_CLUSTER_PORT = 9350
"""CQL port of every node of a local cluster (not 9042 or 9142: those serve single nodes)."""
DEFAULT_CLUSTER_STORAGE_PORT = 7350
DEFAULT_CLUSTER_HEAP = "512M"
"""Heap per node: the smallest that ran the cluster tests reliably here."""
#: Gossip's phi accrual threshold for the cluster's nodes (Cassandra's default: 8, a dead
#: node convicted after 18-25 s on a 2-core machine; 5: after about 12 s).
CLUSTER_PHI_CONVICT_THRESHOLD = 5
MAX_NODES = 9
CLUSTER_FILE = "cluster.json"
NODE_MEMORY_OVERHEAD_MIB = 700
"""Memory a node takes beyond its heap (metaspace, threads, off-heap memtables and buffers),
in MiB: a 512M node measured about 1.1 GiB of RSS after the cluster tests."""
_JMX_BASE_PORT = 7360


@dataclass(frozen=True)
class ClusterSpec:
    """The shape of the cluster of ``root``: ``nodes`` nodes, CQL on ``port``, internode
    traffic on ``storage_port``, on every address 127.0.0.1 … 127.0.0.N."""

    root: Path
    nodes: int
    port: int
    storage_port: int

    def node(self, k: int) -> NodeDir:
        """The directory of node ``k`` (1-based)."""
        return NodeDir(self.root / f"node{k}")

    @property
    def addresses(self) -> list[str]:
        """The nodes' addresses, node 1 first."""
        return [node_address(k) for k in range(1, self.nodes + 1)]

    @property
    def contact_points(self) -> str:
        """``HOST:PORT,...`` of every node, as ``cassfs --contact-points`` takes them."""
        return ",".join(f"{address}:{self.port}" for address in self.addresses)


@dataclass(frozen=True)
class ClusterNodeStatus:
    """One node of :func:`cluster_status`: its number, address and :class:`NodeStatus`."""

    k: int
    address: str
    status: NodeStatus


def node_address(k: int) -> str:
    """The loopback address of node ``k`` (1-based): ``127.0.0.K``."""
    return f"127.0.0.{k}"


def node_token(k: int, nodes: int) -> int:
    """Node ``k``'s Murmur3 token: the ring (-2^63 … 2^63-1) cut into ``nodes`` equal parts."""
    return -(2**63) + (k - 1) * (2**64 // nodes)


def read_spec(root: Path) -> ClusterSpec | None:
    """The cluster recorded in ``root/cluster.json``, or None when there is none.

    Raises NodeError when the file is not one this module wrote.
    """
    path = root / CLUSTER_FILE
    try:
        data = json.loads(path.read_text())
        return ClusterSpec(root, int(data["nodes"]), int(data["port"]), int(data["storage_port"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise NodeError(f"{path} is damaged ({exc}); stop the nodes and remove it") from exc


def mem_available_mib() -> int | None:
    """``MemAvailable`` of /proc/meminfo in MiB, or None where the kernel does not say."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) // 1024 if match else None


def heap_mib(heap: str) -> int:
    """``512M`` or ``1G`` in MiB. Raises NodeError for anything else."""
    match = re.fullmatch(r"(\d+)([mMgG])", heap)
    if not match:
        raise NodeError(f"heap size {heap!r} is not like 512M or 1G")
    return int(match.group(1)) * (1024 if match.group(2) in "gG" else 1)


def memory_needed_mib(nodes: int, heap: str) -> int:
    """MiB that ``nodes`` nodes of heap ``heap`` need (heap plus measured overhead)."""
    return nodes * (heap_mib(heap) + NODE_MEMORY_OVERHEAD_MIB)


def check_memory(nodes: int, heap: str) -> None:
    """Raise NodeError (one line) when MemAvailable cannot hold ``nodes`` more nodes."""
    needed = memory_needed_mib(nodes, heap)
    available = mem_available_mib()
    if available is not None and available < needed:
        raise NodeError(
            f"not enough memory for {nodes} Cassandra node(s) of heap {heap}: they need about "
            f"{needed} MiB, MemAvailable is {available} MiB; free memory, or start fewer nodes "
            "or a smaller --heap"
        )


def check_address(address: str) -> None:
    """Raise NodeError unless ``address`` can be bound on this host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                raise
            raise NodeError(
                f"address {address} is not local here (Linux routes 127.0.0.0/8 to lo; "
                f"elsewhere add it, e.g. `ifconfig lo0 alias {address}`)"
            ) from None


def free_cluster_port(nodes: int, preferred: int, avoid: set[int]) -> int:
    """A TCP port free on all of 127.0.0.1 … 127.0.0.N: ``preferred`` if it is, else one the
    kernel hands out on 127.0.0.1 that is free on the other addresses too."""
    candidate = preferred
    while candidate in avoid or any(
        _port_in_use(candidate, node_address(k)) for k in range(1, nodes + 1)
    ):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            candidate = sock.getsockname()[1]
    return candidate


def _check_ports(spec: ClusterSpec, ks: list[int]) -> None:
    for k in ks:
        address = node_address(k)
        for what, port in (("CQL", spec.port), ("storage", spec.storage_port)):
            if _port_in_use(port, address):
                raise NodeError(
                    f"{what} port {address}:{port} of node {k} is already in use by another "
                    f"process; pick other ports with --port/--storage-port"
                )


def _launch(
    spec: ClusterSpec, k: int, java: Path, classpath: list[str], heap: str, jmx: int
) -> subprocess.Popen[bytes]:
    node = spec.node(k)
    write_config(
        node,
        port=spec.port,
        storage_port=spec.storage_port,
        address=node_address(k),
        seeds=f"{node_address(1)}:{spec.storage_port}",
        initial_token=node_token(k, spec.nodes),
        auto_bootstrap=False,
        hinted_handoff=True,
        # A dead node convicted in about 12 s, not 18-25: a create (a logged batch) in
        # flight when a node dies then finishes within the daemon's 30 s step, its third
        # 10 s attempt going after the conviction (README, "Local node").
        phi_convict_threshold=CLUSTER_PHI_CONVICT_THRESHOLD,
    )
    cmd = java_command(
        node,
        java=java,
        classpath=classpath,
        heap=heap,
        jmx_port=jmx,
        properties=_CLUSTER_START_PROPERTIES,
    )
    log.info(
        "starting node %d: heap %s, CQL %s:%d, storage port %d, JMX port %d",
        k,
        heap,
        node_address(k),
        spec.port,
        spec.storage_port,
        jmx,
    )
    return spawn_jvm(node, cmd)


def start_cluster(
    root: str | os.PathLike[str],
    *,
    nodes: int,
    port: int = DEFAULT_CLUSTER_PORT,
    storage_port: int = DEFAULT_CLUSTER_STORAGE_PORT,
    heap: str = DEFAULT_CLUSTER_HEAP,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> ClusterSpec:
    """Start every node of the ``nodes``-node cluster in ``root`` that does not run, and wait
    until the whole cluster answers (see the module docstring).

    ``port``/``storage_port`` are the CQL and internode ports of every node, ``heap`` the JVM
    heap per node (``512M``), ``timeout`` the seconds to wait for the cluster. Returns the
    cluster's spec. Raises NodeError when the cluster in ``root`` runs with another shape, an
    address is not local, a port is taken, MemAvailable is short, or Java/Maven is missing;
    NodeStartFailed when a node exits or the cluster does not form in time (the JVMs this call
    started are then stopped).
    """
    if not 2 <= nodes <= MAX_NODES:
        raise NodeError(f"--nodes {nodes}: a local cluster has 2 to {MAX_NODES} nodes")
    heap_mib(heap)
    spec = ClusterSpec(Path(root).expanduser().resolve(), nodes, port, storage_port)
    with _locked(NodeDir(spec.root)):
        old = read_spec(spec.root)
        if old is not None and (old.nodes, old.port, old.storage_port) != (
            nodes,
            port,
            storage_port,
        ):
            running = [k for k in range(1, old.nodes + 1) if read_pid(old.node(k)) is not None]
            if running:
                raise NodeError(
                    f"the cluster in {spec.root} runs with {old.nodes} nodes, CQL port {old.port}"
                    f" and storage port {old.storage_port}; stop it first"
                )
        for k in range(1, nodes + 1):
            check_address(node_address(k))
        to_start = [k for k in range(1, nodes + 1) if read_pid(spec.node(k)) is None]
        if to_start:
            check_memory(len(to_start), heap)
            for k in to_start:  # a node just killed may still hold its ports
                address = node_address(k)
                ports = [(address, spec.port), (address, spec.storage_port)]
                settle_crash(spec.node(k), ports, DEFAULT_EXIT_TIMEOUT)
            _check_ports(spec, to_start)
            java = find_java()
            classpath = resolve_classpath(NodeDir(spec.root))
            _write_atomic(
                spec.root / CLUSTER_FILE,
                json.dumps({"nodes": nodes, "port": port, "storage_port": storage_port}) + "\n",
            )
        started: dict[int, subprocess.Popen[bytes]] = {}
        deadline = time.monotonic() + timeout
        try:
            jmx_ports: set[int] = {port, storage_port}
            for k in to_start:
                jmx = _free_port(_JMX_BASE_PORT + k, avoid=jmx_ports)
                jmx_ports.add(jmx)
                started[k] = _launch(spec, k, java, classpath, heap, jmx)
                if k == 1:  # the seed answers before the others look for it
                    wait_until_ready(
                        spec.node(1),
                        started[1].pid,
                        port,
                        deadline - time.monotonic(),
                        started[1],
                        host=node_address(1),
                    )
            for k in range(1, nodes + 1):
                pid = read_pid(spec.node(k))
                wait_until_ready(
                    spec.node(k),
                    pid if pid is not None else -1,
                    port,
                    max(1.0, deadline - time.monotonic()),
                    started.get(k),
                    host=node_address(k),
                )
            wait_until_formed(spec, max(1.0, deadline - time.monotonic()))
        except NodeStartFailed:
            for k, proc in started.items():
                if proc.poll() is None:
                    log.warning("stopping node %d (pid %d)", k, proc.pid)
                    _terminate(proc.pid, spec.node(k), DEFAULT_STOP_TIMEOUT)
                spec.node(k).pid_file.unlink(missing_ok=True)
            raise
    return spec


def _formed_on(spec: ClusterSpec, k: int, timeout: float = 5.0) -> None:
    """Raise _NotReady unless node ``k`` lists every other node as a peer and coordinates a
    read at consistency min(N, 3) of ``system_distributed`` (replication factor 3), which the
    node refuses while it holds a replica for down."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy
    from cassandra.query import SimpleStatement

    address = node_address(k)
    profile = ExecutionProfile(
        load_balancing_policy=WhiteListRoundRobinPolicy([address]), request_timeout=timeout
    )
    cluster = Cluster(
        [address],
        port=spec.port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=timeout,
        control_connection_timeout=timeout,
    )
    level = {2: ConsistencyLevel.TWO}.get(spec.nodes, ConsistencyLevel.THREE)
    try:
        session = cluster.connect()
        peers = session.execute("SELECT peer FROM system.peers_v2").all()
        if len(peers) != spec.nodes - 1:
            raise _NotReady(f"node {k} knows {len(peers)} of {spec.nodes - 1} peers")
        session.execute(
            SimpleStatement(
                "SELECT id FROM system_distributed.repair_history "
                "WHERE keyspace_name = 'cassfs' AND columnfamily_name = 'probe'",
                consistency_level=level,
            )
        )
    except _NotReady:
        raise
    except Exception as exc:  # the driver raises many types (Unavailable, NoHostAvailable, …)
        raise _NotReady(f"node {k}: {type(exc).__name__}: {exc}") from exc
    finally:
        cluster.shutdown()


def wait_until_formed(spec: ClusterSpec, timeout: float) -> None:
    """Poll every 0.5 s until every node sees all others up (see :func:`_formed_on`).

    ``timeout`` is in seconds. Raises NodeStartFailed when time runs out or a node died.
    """
    retrying = polling(timeout)
    try:
        for attempt in retrying:
            with attempt:
                for k in range(1, spec.nodes + 1):
                    if read_pid(spec.node(k)) is None:
                        raise NodeStartFailed(
                            f"node {k} of {spec.root} exited; see {spec.node(k).system_log}"
                        )
                    _formed_on(spec, k)
                return
    except _NotReady as exc:
        raise NodeStartFailed(
            f"the cluster in {spec.root} did not form within {timeout:g} s (last: {exc})"
        ) from exc


def stop_cluster(
    root: str | os.PathLike[str], *, timeout: float = DEFAULT_STOP_TIMEOUT
) -> dict[int, int | None]:
    """Stop every node of the cluster in ``root`` at once (SIGTERM, SIGKILL after ``timeout``
    seconds). Returns {node number: pid stopped, or None when it was not running}.

    Raises NodeError when ``root`` holds no cluster or a JVM survives SIGKILL.
    """
    spec = read_spec(Path(root).expanduser().resolve())
    if spec is None:
        raise NodeError(f"no cluster in {root} ({CLUSTER_FILE} is missing)")
    ks = list(range(1, spec.nodes + 1))
    with ThreadPoolExecutor(max_workers=len(ks)) as pool:
        pids = list(pool.map(lambda k: stop(spec.node(k).root, timeout=timeout), ks))
    return dict(zip(ks, pids, strict=True))


def cluster_status(root: str | os.PathLike[str]) -> list[ClusterNodeStatus]:
    """The status of every node of the cluster in ``root``, node 1 first.

    Raises NodeError when ``root`` holds no cluster.
    """
    spec = read_spec(Path(root).expanduser().resolve())
    if spec is None:
        raise NodeError(f"no cluster in {root} ({CLUSTER_FILE} is missing)")
    result: list[ClusterNodeStatus] = []
    for k in range(1, spec.nodes + 1):
        address = node_address(k)
        pid = read_pid(spec.node(k))
        version: str | None = None
        if pid is not None:
            try:
                version = query_release_version(spec.port, host=address)
            except _NotReady:
                version = None
        result.append(ClusterNodeStatus(k, address, NodeStatus(pid, spec.port, version)))
    return result


def kill_node(spec: ClusterSpec, k: int) -> int:
    """SIGKILL node ``k`` (a crash, for tests) and wait until its last thread has exited (its
    ports are free); return its pid.

    Raises NodeError when the node does not run.
    """
    node = spec.node(k)
    pid = read_pid(node)
    if pid is None:
        raise NodeError(f"node {k} of {spec.root} does not run")
    os.kill(pid, signal.SIGKILL)
    began = time.monotonic()
    if not wait_gone(pid, node, DEFAULT_EXIT_TIMEOUT):
        raise NodeError(
            f"node {k} (pid {pid}) is still alive {DEFAULT_EXIT_TIMEOUT:g} s after SIGKILL"
        )
    waited = time.monotonic() - began
    log.info("node %d (pid %d) killed; its last thread exited %.2f s later", k, pid, waited)
    return pid


# --------------------------------------------------------------------------------- CLI


def start_cluster_command(
    root: Path,
    nodes: int,
    port: int | None,
    storage_port: int | None,
    heap: str | None,
    timeout: float,
) -> None:
    """``start --nodes N``: start the cluster, print one line per node and the contact points.

    ``port``/``storage_port``/``heap`` None take the cluster defaults (``$CASSFS_NODE_PORT``
    is for the single node and does not apply). Raises click.ClickException with the error.
    """
    began = time.monotonic()
    try:
        spec = start_cluster(
            root,
            nodes=nodes,
            port=port or DEFAULT_CLUSTER_PORT,
            storage_port=storage_port or DEFAULT_CLUSTER_STORAGE_PORT,
            heap=heap or DEFAULT_CLUSTER_HEAP,
            timeout=timeout,
        )
    except NodeStartFailed as exc:
        failed = read_spec(Path(root).expanduser().resolve())
        for k in range(1, failed.nodes + 1 if failed is not None else 1):
            if failed is not None:
                sys.stderr.write(log_tail(failed.node(k), lines=15))
        raise click.ClickException(str(exc)) from exc
    except NodeError as exc:
        raise click.ClickException(str(exc)) from exc
    for node in cluster_status(spec.root):
        click.echo(f"node {node.k}: pid {node.status.pid}, CQL on {node.address}:{spec.port}")
    click.echo(
        f"cluster of {spec.nodes} nodes ready in {time.monotonic() - began:.1f} s, dir "
        f"{spec.root}; contact points {spec.contact_points}"
    )


def stop_cluster_command(root: Path, timeout: float) -> None:
    """``stop`` on a cluster dir: stop every node at once, one line per node."""
    try:
        pids = stop_cluster(root, timeout=timeout)
    except NodeError as exc:
        raise click.ClickException(str(exc)) from exc
    for k, pid in pids.items():
        click.echo(f"node {k}: " + ("not running" if pid is None else f"stopped (pid {pid})"))


def status_cluster_command(root: Path) -> None:
    """``status`` on a cluster dir: one line per node; exit 1 unless every node answers CQL."""
    try:
        nodes = cluster_status(root)
    except NodeError as exc:
        raise click.ClickException(str(exc)) from exc
    for node in nodes:
        st = node.status
        where = f"{node.address}:{st.port}"
        if st.ready:
            line = f"running: Cassandra {st.release_version}, pid {st.pid}, CQL on {where}"
        elif st.running:
            line = f"running but CQL does not answer on {where} (pid {st.pid}; starting?)"
        else:
            line = "stopped"
        click.echo(f"node {node.k}: {line}")
    if not all(node.status.ready for node in nodes):
        sys.exit(1)


__all__ = [
    "DEFAULT_CLUSTER_HEAP",
    "DEFAULT_CLUSTER_PORT",
    "DEFAULT_CLUSTER_STORAGE_PORT",
    "HOST",
    "ClusterNodeStatus",
    "ClusterSpec",
    "check_memory",
    "cluster_status",
    "free_cluster_port",
    "kill_node",
    "node_address",
    "start_cluster",
    "stop_cluster",
]
