"""The local cluster launcher's checks and configuration, without starting a JVM."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cassfs.node import cluster
from cassfs.node.cluster import (
    ClusterSpec,
    free_cluster_port,
    node_address,
    node_token,
    start_cluster,
)
from cassfs.node.launcher import NodeDir, NodeError, write_config


def test_tokens_cut_the_ring_evenly() -> None:
    tokens = [node_token(k, 3) for k in (1, 2, 3)]
    assert tokens[0] == -(2**63)
    steps = {b - a for a, b in zip(tokens, [*tokens[1:], tokens[0] + 2**64], strict=True)}
    assert max(steps) - min(steps) <= 3
    assert all(-(2**63) <= t < 2**63 for t in tokens)


def test_a_cluster_node_yaml_names_its_address_the_seed_and_its_token(tmp_path: Path) -> None:
    node = NodeDir(tmp_path / "node2")
    write_config(
        node,
        port=9350,
        storage_port=7350,
        address=node_address(2),
        seeds="127.0.0.1:7350",
        initial_token=node_token(2, 3),
        auto_bootstrap=False,
        hinted_handoff=True,
    )
    text = node.yaml.read_text()
    for line in (
        "listen_address: 127.0.0.2",
        "rpc_address: 127.0.0.2",
        'seeds: "127.0.0.1:7350"',
        f"initial_token: {node_token(2, 3)}",
        "auto_bootstrap: false",
        "hinted_handoff_enabled: true",
        "native_transport_port: 9350",
        "storage_port: 7350",
    ):
        assert line in text


def test_the_single_node_yaml_keeps_its_settings(tmp_path: Path) -> None:
    node = NodeDir(tmp_path)
    write_config(node, port=9042, storage_port=7000)
    text = node.yaml.read_text()
    for line in (
        "listen_address: 127.0.0.1",
        'seeds: "127.0.0.1:7000"',
        "initial_token: 0",
        "hinted_handoff_enabled: false",
    ):
        assert line in text


def test_short_memory_is_one_line_saying_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "mem_available_mib", lambda: 2000)
    with pytest.raises(NodeError, match=r"not enough memory for 3 Cassandra node\(s\)") as err:
        start_cluster(tmp_path, nodes=3, heap="512M")
    assert "MemAvailable is 2000 MiB" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "node1").exists()


def test_a_taken_port_on_one_address_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "mem_available_mib", lambda: 10**6)
    port = free_cluster_port(2, 9350, set())
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", port))
        taken.listen()
        with pytest.raises(NodeError, match=rf"CQL port 127\.0\.0\.2:{port} of node 2"):
            start_cluster(tmp_path, nodes=2, port=port, storage_port=port + 1)
    assert not (tmp_path / "node1" / "cassandra.pid").exists()


def test_a_free_cluster_port_is_free_on_every_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.3", 0))
        busy = taken.getsockname()[1]
        port = free_cluster_port(3, busy, set())
    assert port != busy


def test_too_many_or_too_few_nodes_are_refused(tmp_path: Path) -> None:
    for nodes in (1, 10):
        with pytest.raises(NodeError, match="a local cluster has 2 to 9 nodes"):
            start_cluster(tmp_path, nodes=nodes)


def test_status_and_stop_of_a_dir_without_a_cluster_say_so(tmp_path: Path) -> None:
    with pytest.raises(NodeError, match="no cluster in"):
        cluster.cluster_status(tmp_path)
    with pytest.raises(NodeError, match="no cluster in"):
        cluster.stop_cluster(tmp_path)


def test_status_of_a_stopped_cluster_lists_each_node(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text('{"nodes": 3, "port": 9350, "storage_port": 7350}')
    spec = cluster.read_spec(tmp_path)
    assert spec == ClusterSpec(tmp_path, 3, 9350, 7350)
    result = subprocess.run(
        [sys.executable, "-m", "cassfs.node", "status", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"node {k}: stopped" for k in (1, 2, 3)]


def test_storage_port_without_nodes_is_a_usage_error(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "cassfs.node", "start", "--dir", str(tmp_path)]
    result = subprocess.run(
        [*command, "--storage-port", "7350"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--storage-port applies to a cluster (--nodes 2 or more)" in result.stderr
