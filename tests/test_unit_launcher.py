"""The node launcher's view of a JVM's process: running, exiting after a crash, gone.

A JVM killed by a signal ends its main thread first; its other threads may go on for a
while, holding the node's ports.  The stand-in here is a Python process with the node's
command line whose main thread exits alone (the ``exit`` system call, not ``exit_group``)
while another thread keeps a listening socket until told to end the process.  No JVM is
started.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cassfs.node import launcher
from cassfs.node.launcher import MAIN_CLASS, NodeDir, NodeError
from tests.conftest import wait_for

#: The number of the ``exit`` system call (one thread), by machine.
SYS_EXIT = {"x86_64": 60, "aarch64": 93}[os.uname().machine]
#: The stand-in: prints its port, then its main thread exits unless argv[-1] is "stay";
#: the process ends once the file argv[-2] exists.
STAND_IN = """
import ctypes, os, socket, sys, threading, time
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen()
print(sock.getsockname()[1], flush=True)
def hold():
    while not os.path.exists(sys.argv[-2]):
        time.sleep(0.02)
    os._exit(0)
threading.Thread(target=hold).start()
if sys.argv[-1] != "stay":
    ctypes.CDLL(None).syscall(int(sys.argv[-3]), 0)  # exit: this thread only
hold()
"""


class StandIn:
    """A stand-in node process of ``node`` and the port its other thread listens on."""

    def __init__(self, node: NodeDir, main_thread_exits: bool) -> None:
        self.release = node.root / "release"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", STAND_IN, MAIN_CLASS, f"-Dcassandra.storagedir={node.root}",
             str(SYS_EXIT), str(self.release), "exit" if main_thread_exits else "stay"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        node.pid_file.write_text(f"{self.proc.pid}\n")

    def main_thread_is_a_zombie(self) -> bool:
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] == "Z"

    def end(self) -> None:
        self.release.touch()
        self.proc.wait(timeout=10)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def node(tmp_path: Path) -> NodeDir:
    return NodeDir.at(tmp_path)


@pytest.fixture
def crashed(node: NodeDir) -> Iterator[StandIn]:
    """A stand-in whose main thread has exited while another thread holds its port."""
    stand_in = StandIn(node, main_thread_exits=True)
    try:
        assert wait_for(stand_in.main_thread_is_a_zombie, 10)
        yield stand_in
    finally:
        stand_in.end()


def test_a_running_node_is_running(node: NodeDir) -> None:
    stand_in = StandIn(node, main_thread_exits=False)
    try:
        assert launcher.read_pid(node) == stand_in.proc.pid
        assert launcher.exiting_pid(node) is None
    finally:
        stand_in.end()
    assert launcher.read_pid(node) is None
    assert launcher.exiting_pid(node) is None


def test_a_node_whose_main_thread_died_is_exiting_until_its_last_thread_ends(
    node: NodeDir, crashed: StandIn
) -> None:
    assert launcher.read_pid(node) is None  # not running: a start must not wait for its CQL
    assert launcher.exiting_pid(node) == crashed.proc.pid
    assert not port_free(crashed.port)
    with pytest.raises(NodeError, match="still exiting"):
        launcher.wait_exited(node, 0.2)
    crashed.release.touch()
    launcher.wait_exited(node, 10)
    assert port_free(crashed.port)
    assert launcher.exiting_pid(node) is None


def test_stop_ends_a_node_still_exiting_and_returns_once_its_port_is_free(
    node: NodeDir, crashed: StandIn
) -> None:
    assert launcher.stop(node.root) is None  # it was not running
    assert port_free(crashed.port)
    assert not node.pid_file.exists()


def test_a_pid_file_naming_another_directory_s_node_is_not_this_node(
    tmp_path: Path, node: NodeDir
) -> None:
    other = NodeDir.at(tmp_path / "other")
    other.root.mkdir()
    stand_in = StandIn(other, main_thread_exits=True)
    try:
        assert wait_for(stand_in.main_thread_is_a_zombie, 10)
        node.pid_file.write_text(f"{stand_in.proc.pid}\n")
        assert launcher.read_pid(node) is None
        assert launcher.exiting_pid(node) is None
        assert launcher.exiting_pid(other) == stand_in.proc.pid
    finally:
        stand_in.end()


def test_the_stand_in_shows_the_node_s_command_line_only_in_its_other_thread(
    crashed: StandIn,
) -> None:
    """What the launcher relies on: a zombie main thread's cmdline reads empty."""
    pid = crashed.proc.pid
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b""
    others = [tid for tid in os.listdir(f"/proc/{pid}/task") if tid != str(pid)]
    assert MAIN_CLASS.encode() in Path(f"/proc/{pid}/task/{others[0]}/cmdline").read_bytes()


def test_wait_gone_is_false_while_a_thread_is_left_and_true_once_the_last_ends(
    node: NodeDir, crashed: StandIn
) -> None:
    assert not launcher.wait_gone(crashed.proc.pid, node, 0.2)
    crashed.release.touch()
    assert launcher.wait_gone(crashed.proc.pid, node, 10)
    assert port_free(crashed.port)


def test_settle_crash_raises_while_the_jvm_is_still_exiting(
    node: NodeDir, crashed: StandIn
) -> None:
    with pytest.raises(NodeError, match="still exiting"):
        launcher.settle_crash(node, [("127.0.0.1", crashed.port)], 0.2)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def taken() -> Iterator[tuple[socket.socket, threading.Event]]:
    """A port listened on at 127.0.0.2 (a cluster node's address), and an event set once
    a timer has closed it."""
    sock = socket.socket()
    sock.bind(("127.0.0.2", 0))
    sock.listen()
    closed = threading.Event()
    yield sock, closed
    sock.close()


def close_later(sock: socket.socket, closed: threading.Event, seconds: float) -> None:
    def close() -> None:
        sock.close()
        closed.set()

    timer = threading.Timer(seconds, close)
    timer.daemon = True
    timer.start()


def test_after_a_crash_settle_crash_waits_for_every_port_on_its_address(
    node: NodeDir, taken: tuple[socket.socket, threading.Event]
) -> None:
    """The dead node's pid file is left (a crash): a socket it left open, here on
    127.0.0.2, is waited for until it closes."""
    sock, closed = taken
    port = sock.getsockname()[1]
    node.pid_file.write_text(f"{dead_pid()}\n")
    close_later(sock, closed, 0.3)
    launcher.settle_crash(node, [("127.0.0.2", port)], 30)
    assert closed.is_set()
    assert not launcher._port_in_use(port, "127.0.0.2")


def test_without_a_pid_file_a_taken_port_is_another_process_s_and_not_waited_for(
    node: NodeDir, taken: tuple[socket.socket, threading.Event]
) -> None:
    """A stop removes the pid file: a port taken then belongs to someone else, and the
    start's own check reports it at once."""
    sock, closed = taken
    port = sock.getsockname()[1]
    close_later(sock, closed, 5)
    launcher.settle_crash(node, [("127.0.0.2", port)], 30)
    assert not closed.is_set()
    assert launcher._port_in_use(port, "127.0.0.2")
