"""The Go ancestor (cgt212/cassfs, 2017) as a benchmark target: its keyspace and its mount.

The benchmarks (:mod:`tests.bench`) can measure the Go program cassfs grew out of beside
cassfs and a native directory.  Nothing of the Go project is part of this repository; build
it by hand, outside the checkout, and pass the binary with ``--go-ancestor BINARY``.

How to build it (Go 1.26; what was done for the figures in the README)
    Its ``vendor/`` directories are git submodules (empty in an archive) and the commits
    they pin are not on the Go module proxy, so it is built as a module against the oldest
    tagged versions that compile, with ``cmd/docker.go`` and ``driver/`` (the Docker volume
    plugin: sqlite3 via cgo, go-systemd) left out and three lock methods added::

        mkdir -p /work/gopath/src/github.com/cgt212/cassfs && cd $_
        git --git-dir=/path/to/cgt212/cassfs.git archive HEAD | tar -x   # or a clone
        rm -rf vendor driver cmd/docker.go
        export GOPATH=/work/gopath GOFLAGS=-mod=mod
        go mod init github.com/cgt212/cassfs
        go get github.com/gocql/gocql@v1.0.0 github.com/spf13/cobra@v0.0.1 \\
            github.com/spf13/viper@v1.0.2 github.com/hanwen/go-fuse@v1.0.0 \\
            github.com/golang/groupcache@v0.0.0-20190129154638-5b532d6fd5ef
        go mod tidy
        # go-fuse v1.0.0's nodefs.File wants GetLk/SetLk/SetLkw: append to cass/cassfile.go
        #   func (c *CassFileHandle) GetLk(owner uint64, lk *fuse.FileLock, flags uint32,
        #       out *fuse.FileLock) fuse.Status { return fuse.ENOSYS }
        #   (SetLk and SetLkw alike, without ``out``)
        go build -o /work/goanc-bin/cassfs-go .

    Its ``-server`` takes ``HOST:PORT`` (gocql parses the port), so it reaches a node on a
    port other than 9042 without a change.

What it gets wrong (seen in the benchmark)
    Its ``filedata`` table is keyed by the content hash alone while it writes a file in
    1 MiB chunks, so every chunk overwrites the one before: a file over 1 MiB reads back as
    its last chunk, and a read past that chunk's end panics (``slice bounds out of range``
    in ``CassFileHandle.Read``), which ends the process and leaves the mount dead (ENOTCONN).
    Whether the kernel's reads get there varies from run to run.

How it runs
    ``BINARY mount -s HOST:PORT -k KEYSPACE -o OWNER -e ENV -f 1 -t 1 -n 1 MOUNTPOINT`` runs
    in the foreground until ``fusermount -u MOUNTPOINT``.  Its file cache (``-f``,
    ``fcache_ttl``) lasts 1 s and its kernel entry/attribute timeouts (``-t``) 1 s, so after
    the benchmark's settle wait (2 s) every pass is cold for it; it has no cache to purge.

Its keyspace
    :func:`apply_schema` creates ``--go-keyspace`` (default ``cassfs_go``) from the
    project's ``cassfs.cql`` (three tables: ``filedata``, ``fileref``, ``filesystem``) with
    the keyspace name replaced and the table options Cassandra 4+ no longer knows
    (``read_repair_chance``, ``dclocal_read_repair_chance``) left out; the CQL is kept
    here (:data:`ANCESTOR_CQL`, the statements without their options) so that no file of
    the Go project is needed at run time.  ``IF NOT EXISTS`` everywhere: a second run reuses
    the keyspace, each run in a fresh tenant (environment).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cassandra.cluster import Cluster

from tests.benchkit import is_mounted

log = logging.getLogger("go_ancestor")

MOUNT_TIMEOUT = 30.0  # seconds for the Go mount to appear

#: The ancestor's ``cassfs.cql`` (commit c8d7028), table options left out; ``{ks}`` = keyspace.
ANCESTOR_CQL = (
    "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = "
    "{{'class': 'SimpleStrategy', 'replication_factor': '1'}} AND durable_writes = true",
    "CREATE TABLE IF NOT EXISTS {ks}.filedata (hash blob PRIMARY KEY, data blob, location int)",
    "CREATE TABLE IF NOT EXISTS {ks}.fileref (hash blob PRIMARY KEY, refs counter)",
    "CREATE TABLE IF NOT EXISTS {ks}.filesystem (cust_id bigint, environment text, "
    "directory text, name text, hash blob, metadata blob, "
    "PRIMARY KEY ((cust_id, environment), directory, name)) "
    "WITH CLUSTERING ORDER BY (directory ASC, name ASC)",
)


def split_contact_points(contact_points: str) -> tuple[list[str], int]:
    """``"h1:9142,h2"`` -> ``(["h1", "h2"], 9142)``: the hosts and the (first given) port."""
    hosts, port = [], 9042
    for item in contact_points.split(","):
        host, _, p = item.strip().rpartition(":")
        if not host:
            host, p = p, ""
        hosts.append(host)
        if p:
            port = int(p)
    return hosts, port


def apply_schema(contact_points: str, keyspace: str) -> None:
    """Create the ancestor's keyspace and tables (idempotent) with the python driver."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,47}", keyspace):
        raise ValueError(f"not a keyspace name: {keyspace!r}")
    hosts, port = split_contact_points(contact_points)
    cluster = Cluster(hosts, port=port)
    try:
        session = cluster.connect()
        for statement in ANCESTOR_CQL:
            session.execute(statement.format(ks=keyspace), timeout=60)
    finally:
        cluster.shutdown()


def fusermount_u(mnt: Path, lazy: bool = False) -> bool:
    """``fusermount3 -u [-z] MNT`` (``fusermount`` if there is no fusermount3); True if done."""
    for tool in ("fusermount3", "fusermount"):
        try:
            done = subprocess.run(
                [tool, "-u", *(["-z"] if lazy else []), str(mnt)],
                capture_output=True,
                text=True,
                check=False,
            )
        except FileNotFoundError:
            continue
        if done.returncode != 0:
            log.warning("%s -u %s: %s", tool, mnt, done.stderr.strip())
        return done.returncode == 0
    return False


@contextmanager
def mounted(
    binary: Path,
    mnt: Path,
    contact_points: str,
    keyspace: str,
    owner: int,
    environment: str,
    log_path: Path,
) -> Iterator[subprocess.Popen[bytes]]:
    """The ancestor mounted at ``mnt`` (its process yielded); unmounted and reaped on exit.

    Its stderr goes to ``log_path``.  BenchError-free: raises RuntimeError if it does not
    mount within :data:`MOUNT_TIMEOUT` seconds.
    """
    command = [
        str(binary), "mount", "-s", contact_points, "-k", keyspace, "-o", str(owner),
        "-e", environment, "-f", "1", "-t", "1", "-n", "1", str(mnt),
    ]  # fmt: skip
    log.info("mounting the Go ancestor: %s", " ".join(command))
    with open(log_path, "wb") as err:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(mnt):
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Go ancestor did not mount {mnt} (exit {child.poll()}): "
                    f"{log_path.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.05)  # no event tells that a FUSE mount appeared
        yield child
    finally:
        if child.poll() is not None:
            log.error(
                "the Go ancestor had exited (%s) before the unmount; its log ends: %s",
                child.returncode,
                log_path.read_text(errors="replace")[-3000:],
            )
        if is_mounted(mnt) and not fusermount_u(mnt):
            fusermount_u(mnt, lazy=True)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.warning("the Go ancestor (pid %d) did not exit after the unmount", child.pid)
            child.kill()
            child.wait(timeout=30)
