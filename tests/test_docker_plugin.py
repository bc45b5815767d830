"""`cassfs docker-plugin`, spoken to as Docker speaks to it: JSON over HTTP on a unix socket.

No Docker engine runs here: the tests send the requests Docker sends (Plugin.Activate,
VolumeDriver.*) with http.client, and check the replies and the real cassfs mounts the
plugin makes on the real node.  Every mount (the plugin's too) is taken down afterwards.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cached.client import call_once, socket_path
from cached.errors import DaemonUnavailable
from cassfs import docker_plugin
from tests.conftest import CONTACT_POINTS, KEYSPACE, run_cli, wait_for

pytestmark = [pytest.mark.fuse, pytest.mark.cassandra]

#: What Docker sends its plugins (moby pkg/plugins/transport.VersionMimetype).
DOCKER_MEDIA_TYPE = "application/vnd.docker.plugins.v1.2+json"


def cassfs_mounts() -> list[str]:
    """Mountpoints of every fuse.cassfs mount in /proc/self/mounts."""
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[2] == "fuse.cassfs"]


def pending_ups(mount_root: Path) -> list[int]:
    """Pids of `cassfs up` runs (not the mount processes) on a mountpoint under
    ``mount_root``: a plugin killed mid-Mount leaves its run going."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "up" in args and "--foreground" not in args:
            after = args[args.index("up") + 1 : args.index("up") + 2]
            if after and Path(after[0]).parent == mount_root:
                pids.append(int(cmdline.parent.name))
    return pids


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket, as Docker's plugin client connects."""

    def __init__(self, path: Path, timeout: float = 240.0):
        super().__init__("plugin", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


@dataclass
class PluginProcess:
    """A running `cassfs docker-plugin`."""

    socket: Path
    mount_root: Path
    cache_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def post(self, endpoint: str, body: Any = None) -> tuple[int, dict[str, Any], str]:
        """POST ``body`` (JSON) to ``/endpoint``: (status, reply, reply Content-Type)."""
        connection = UnixHTTPConnection(self.socket)
        try:
            data = b"" if body is None else json.dumps(body).encode()
            connection.request(
                "POST",
                f"/{endpoint}",
                data,
                {"Accept": DOCKER_MEDIA_TYPE, "Content-Type": DOCKER_MEDIA_TYPE},
            )
            response = connection.getresponse()
            reply = json.loads(response.read())
            return response.status, reply, response.getheader("Content-Type", "")
        finally:
            connection.close()

    def ok(self, endpoint: str, body: Any = None) -> dict[str, Any]:
        """The reply of a request that must succeed (status 200, no Err)."""
        status, reply, _ = self.post(endpoint, body)
        assert status == 200 and not reply.get("Err"), (endpoint, body, status, reply)
        return reply

    def err(self, endpoint: str, body: Any = None) -> str:
        """The Err of a request that must be refused."""
        status, reply, _ = self.post(endpoint, body)
        assert status == 500 and reply.get("Err"), (endpoint, body, status, reply)
        assert "\n" not in reply["Err"]
        return str(reply["Err"])

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., PluginProcess]]:
    """Factory: start the plugin (again) on one socket, mount root and cache dir; at the
    end stop it, take down every mount under its mount root and stop their daemons."""
    monkeypatch.setenv("CASSFS_RUN_DIR", str(tmp_path / "run"))
    socket_dir = Path(tempfile.mkdtemp(prefix="cassfs-dp-"))  # short: sun_path is 108 bytes
    mount_root, cache_dir = tmp_path / "volumes", tmp_path / "cache"
    started: list[PluginProcess] = []

    def start(keyspace: str = KEYSPACE) -> PluginProcess:
        log = tmp_path / f"plugin-{len(started)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "cassfs", "docker-plugin"),
                    *("--socket", str(socket_dir / "cassfs.sock")),
                    *("--mount-root", str(mount_root), "--cache-dir", str(cache_dir)),
                    *("--contact-points", CONTACT_POINTS, "--keyspace", keyspace),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        p = PluginProcess(socket_dir / "cassfs.sock", mount_root, cache_dir, process, log)
        started.append(p)
        assert wait_for(lambda: process.poll() is not None or "serving" in log.read_text())
        if process.poll() is not None:
            pytest.fail(f"the plugin exited: {log.read_text()}", pytrace=False)
        return p

    yield start
    for p in started:
        p.stop()
    wait_for(lambda: not pending_ups(mount_root), timeout=200)
    for point in cassfs_mounts():
        if Path(point).parent == mount_root:
            result = run_cli("down", point, check=False)
            if result.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", point], check=False)
    for cache in cache_dir.glob("*"):
        if socket_path(cache).exists():
            try:
                if call_once(cache, "status", timeout=2)["sessions"] == 0:
                    call_once(cache, "shutdown", timeout=2)
            except DaemonUnavailable:
                pass
    shutil.rmtree(socket_dir, ignore_errors=True)


def test_activate_capabilities_and_unknown_endpoints(
    plugin: Callable[..., PluginProcess],
) -> None:
    p = plugin()
    status, reply, content_type = p.post("Plugin.Activate")
    assert (status, reply) == (200, {"Implements": ["VolumeDriver"]})
    assert content_type == DOCKER_MEDIA_TYPE
    assert p.ok("VolumeDriver.Capabilities", {}) == {"Capabilities": {"Scope": "local"}}
    assert p.ok("VolumeDriver.List", {})["Volumes"] == []
    status, reply, _ = p.post("VolumeDriver.Snapshot", {"Name": "site"})
    assert status == 404 and "unknown endpoint /VolumeDriver.Snapshot" in reply["Err"]
    assert "no cassfs volume 'site'" in p.err("VolumeDriver.Mount", {"Name": "site", "ID": "a"})
    assert "no cassfs volume 'site'" in p.err("VolumeDriver.Path", {"Name": "site"})
    assert "bad volume name" in p.err("VolumeDriver.Create", {"Name": "../etc", "Opts": {}})
    assert "bad volume name" in p.err("VolumeDriver.Get", {})
    # Docker keeps its connection: requests one after another on one connection
    connection, sockets = UnixHTTPConnection(p.socket), []
    try:
        for endpoint in ("Plugin.Activate", "VolumeDriver.Capabilities", "VolumeDriver.List"):
            connection.request("POST", f"/{endpoint}", b"{}", {"Accept": DOCKER_MEDIA_TYPE})
            response = connection.getresponse()
            assert response.status == 200 and json.loads(response.read())
            sockets.append(connection.sock)
        assert all(
            s is sockets[0] for s in sockets
        )  # http.client reconnects silently when the server closes
    finally:
        connection.close()
    log = p.log.read_text()
    assert "/VolumeDriver.Capabilities -> 200" in log
    assert "/VolumeDriver.Mount name=site id=a -> 500 Err: no cassfs volume" in log


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": "red", "size": "1"}, "unknown volume option(s) colour, size: use owner,"),
        ({"owner": "-1"}, "volume option owner='-1': -1 is not in the range 0<=x<=2147483647"),
        ({"owner": "one"}, "volume option owner='one': 'one' is not a valid integer"),
        ({"environment": "a/b"}, "volume option environment='a/b': 'a/b': use 1 to 64"),
        ({"environment": ""}, "volume option environment='': '': use 1 to 64"),
        ({"cache_ttl": "soon"}, "volume option cache_ttl='soon'"),
        ({"negative_ttl": "-2"}, "TTLs are seconds, 0 or more"),
        ({"cache_size": "12Q"}, "bad size '12Q'"),
        ({"cache_size": "512K"}, "under 1 MiB"),
        ({"ro": "maybe"}, "volume option ro='maybe': give ro, ro=true or ro=false"),
        ({"owner": 7}, "volume options owner must be strings"),
    ],
)
def test_create_refuses_bad_options(
    plugin: Callable[..., PluginProcess], options: dict[str, Any], message: str
) -> None:
    p = plugin()
    assert message in p.err("VolumeDriver.Create", {"Name": "site", "Opts": options})
    assert p.ok("VolumeDriver.List", {})["Volumes"] == []


def test_create_keeps_good_options_and_refuses_other_ones_for_the_same_name(
    plugin: Callable[..., PluginProcess],
) -> None:
    p = plugin()
    options = {
        "owner": "42",
        "environment": "stage-2",
        "entry_ttl": "0.5",
        "negative_ttl": "0",
        "cache_ttl": "5",
        "cache_size": "64M",
        "ro": "false",
    }
    p.ok("VolumeDriver.Create", {"Name": "site", "Opts": options})
    p.ok("VolumeDriver.Create", {"Name": "site", "Opts": options})  # again: nothing changes
    other = {**options, "owner": "43"}
    assert "volume site exists with options" in p.err(
        "VolumeDriver.Create", {"Name": "site", "Opts": other}
    )
    p.ok("VolumeDriver.Create", {"Name": "bare"})  # no Opts: `cassfs up`'s defaults
    assert p.ok("VolumeDriver.List", {})["Volumes"] == [{"Name": "bare"}, {"Name": "site"}]
    volume = p.ok("VolumeDriver.Get", {"Name": "site"})["Volume"]
    assert volume == {"Name": "site", "Status": {"Options": options, "Mounts": 0}}
    assert "Mountpoint" not in p.ok("VolumeDriver.Path", {"Name": "site"})
    p.ok("VolumeDriver.Remove", {"Name": "bare"})
    assert "no cassfs volume 'bare'" in p.err("VolumeDriver.Get", {"Name": "bare"})


def test_ro_maps_to_up_ro(plugin: Callable[..., PluginProcess]) -> None:
    """`-o ro` mounts with `cassfs up --ro`."""
    p = plugin()
    p.ok("VolumeDriver.Create", {"Name": "site", "Opts": {"ro": ""}})
    for value in ("", "true", "yes", "1"):
        plan = docker_plugin.plan_mount({"owner": "3", "ro": value})
        assert plan.args[:3] == ["--owner", "3", "--ro"]
    for value in ("false", "no", "0"):
        assert "--ro" not in docker_plugin.plan_mount({"ro": value}).args


def test_volume_options_become_up_options() -> None:
    """The mount's own options as given; the daemon's always, naming the cache dir."""
    options = {"owner": "3", "environment": "e", "entry_ttl": "0.5", "cache_ttl": "5"}
    plan = docker_plugin.plan_mount({**options, "cache_size": "64M"})
    assert plan.args == [
        *("--owner", "3", "--environment", "e", "--entry-ttl", "0.5"),
        *("--cache-ttl", "5.0", "--cache-size", str(64 << 20)),
    ]
    assert plan.cache_key == f"ttl5-size{64 << 20}"
    defaults = docker_plugin.plan_mount({})  # `cassfs up`'s defaults, the change feed on
    assert defaults.args == ["--cache-ttl", "600.0", "--cache-size", str(1 << 30)]
    assert defaults.cache_key == f"ttl600-size{1 << 30}"


def test_mount_writes_through_one_volume_and_reads_through_another_of_the_tenant(
    plugin: Callable[..., PluginProcess],
    cassandra: str,
    fuse_available: None,
    tenant: tuple[int, str],
) -> None:
    p = plugin()
    owner, environment = str(tenant[0]), tenant[1]
    p.ok(
        "VolumeDriver.Create",
        {"Name": "site", "Opts": {"owner": owner, "environment": environment}},
    )
    # the same tenant with another cache TTL: another cache dir, so another daemon
    p.ok(
        "VolumeDriver.Create",
        {"Name": "mirror", "Opts": {"owner": owner, "environment": environment, "cache_ttl": "2"}},
    )
    site = p.ok("VolumeDriver.Mount", {"Name": "site", "ID": "c1"})["Mountpoint"]
    assert site == str(p.mount_root / "site")
    assert cassfs_mounts().count(site) == 1
    (Path(site) / "index.php").write_text("<?php echo 'from site';")

    mirror = Path(p.ok("VolumeDriver.Mount", {"Name": "mirror", "ID": "c2"})["Mountpoint"])
    assert (mirror / "index.php").read_text() == "<?php echo 'from site';"
    assert len(list(p.cache_dir.iterdir())) == 2  # one daemon per set of daemon settings

    assert p.ok("VolumeDriver.Path", {"Name": "site"}) == {"Mountpoint": site, "Err": ""}
    volume = p.ok("VolumeDriver.Get", {"Name": "mirror"})["Volume"]
    assert volume["Mountpoint"] == str(mirror) and volume["Status"]["Mounts"] == 1
    assert p.ok("VolumeDriver.List", {})["Volumes"] == [
        {"Name": "mirror", "Mountpoint": str(mirror)},
        {"Name": "site", "Mountpoint": site},
    ]
    assert "volume site is mounted" in p.err("VolumeDriver.Remove", {"Name": "site"})
    assert Path(site, "index.php").exists()

    p.ok("VolumeDriver.Unmount", {"Name": "site", "ID": "c1"})
    p.ok("VolumeDriver.Unmount", {"Name": "mirror", "ID": "c2"})
    assert site not in cassfs_mounts() and str(mirror) not in cassfs_mounts()
    assert "Mountpoint" not in p.ok("VolumeDriver.Path", {"Name": "site"})
    p.ok("VolumeDriver.Remove", {"Name": "site"})
    assert not Path(site).exists()
    assert p.ok("VolumeDriver.List", {})["Volumes"] == [{"Name": "mirror"}]
    # the files stay in Cassandra: a volume is a view of its tenant
    p.ok("VolumeDriver.Mount", {"Name": "mirror", "ID": "c3"})
    assert (mirror / "index.php").read_text() == "<?php echo 'from site';"
    p.ok("VolumeDriver.Unmount", {"Name": "mirror", "ID": "c3"})


def test_a_volume_mounted_by_two_containers_is_mounted_once_until_both_unmount(
    plugin: Callable[..., PluginProcess],
    cassandra: str,
    fuse_available: None,
    tenant: tuple[int, str],
) -> None:
    p = plugin()
    opts = {"owner": str(tenant[0]), "environment": tenant[1]}
    p.ok("VolumeDriver.Create", {"Name": "shared", "Opts": opts})
    # two containers starting at once: both Mounts in flight together
    with ThreadPoolExecutor(2) as pool:
        replies = list(
            pool.map(
                lambda mount_id: p.ok("VolumeDriver.Mount", {"Name": "shared", "ID": mount_id}),
                ["one", "two"],
            )
        )
    first, second = (reply["Mountpoint"] for reply in replies)
    assert first == second and cassfs_mounts().count(first) == 1
    Path(first, "a.txt").write_text("a")
    assert p.ok("VolumeDriver.Get", {"Name": "shared"})["Volume"]["Status"]["Mounts"] == 2

    p.ok("VolumeDriver.Unmount", {"Name": "shared", "ID": "one"})
    assert cassfs_mounts().count(first) == 1
    assert Path(first, "a.txt").read_text() == "a"
    assert "volume shared is mounted (1 mount IDs)" in p.err(
        "VolumeDriver.Remove", {"Name": "shared"}
    )

    p.ok("VolumeDriver.Unmount", {"Name": "shared", "ID": "two"})
    assert first not in cassfs_mounts()
    assert not os.path.ismount(first)
    p.ok("VolumeDriver.Remove", {"Name": "shared"})


def test_a_restarted_plugin_keeps_its_volumes_and_their_mounts(
    plugin: Callable[..., PluginProcess],
    cassandra: str,
    fuse_available: None,
    tenant: tuple[int, str],
) -> None:
    p = plugin()
    opts = {"owner": str(tenant[0]), "environment": tenant[1], "entry_ttl": "0"}
    p.ok("VolumeDriver.Create", {"Name": "kept", "Opts": opts})
    p.ok("VolumeDriver.Create", {"Name": "idle", "Opts": {"owner": "5"}})
    point = p.ok("VolumeDriver.Mount", {"Name": "kept", "ID": "c1"})["Mountpoint"]
    Path(point, "f").write_text("before the restart")

    assert p.stop() == 0
    assert not p.socket.exists()
    assert point in cassfs_mounts()  # the mounts outlive the plugin
    saved = json.loads((p.mount_root / docker_plugin.STATE_NAME).read_text())
    assert saved["volumes"]["kept"] == {"options": opts, "ids": ["c1"]}

    again = plugin()
    assert again.ok("VolumeDriver.List", {})["Volumes"] == [
        {"Name": "idle"},
        {"Name": "kept", "Mountpoint": point},
    ]
    assert again.ok("VolumeDriver.Get", {"Name": "kept"})["Volume"]["Status"] == {
        "Options": opts,
        "Mounts": 1,
    }
    assert again.ok("VolumeDriver.Mount", {"Name": "kept", "ID": "c2"})["Mountpoint"] == point
    assert cassfs_mounts().count(point) == 1
    assert Path(point, "f").read_text() == "before the restart"
    again.ok("VolumeDriver.Unmount", {"Name": "kept", "ID": "c1"})
    assert point in cassfs_mounts()
    again.ok("VolumeDriver.Unmount", {"Name": "kept", "ID": "c2"})
    assert point not in cassfs_mounts()


def test_a_plugin_stopped_during_a_mount_finishes_it_first(
    plugin: Callable[..., PluginProcess],
    cassandra: str,
    fuse_available: None,
    tenant: tuple[int, str],
) -> None:
    p = plugin()
    opts = {"owner": str(tenant[0]), "environment": tenant[1]}
    p.ok("VolumeDriver.Create", {"Name": "busy", "Opts": opts})
    point = p.mount_root / "busy"
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(p.post, "VolumeDriver.Mount", {"Name": "busy", "ID": "c1"})
        assert wait_for(point.exists)  # made just before `cassfs up` runs
        p.process.send_signal(signal.SIGTERM)
        status, answer, _ = reply.result()
    assert (status, answer) == (200, {"Mountpoint": str(point), "Err": ""})
    assert p.process.wait(60) == 0
    log = p.log.read_text()
    assert log.index("stopping (signal 15)") < log.index("volume busy mounted")
    saved = json.loads((p.mount_root / docker_plugin.STATE_NAME).read_text())
    assert saved["volumes"]["busy"]["ids"] == ["c1"]
    assert str(point) in cassfs_mounts()
    again = plugin()
    again.ok("VolumeDriver.Unmount", {"Name": "busy", "ID": "c1"})
    assert str(point) not in cassfs_mounts()


def test_a_failed_mount_is_reported_and_not_counted(
    plugin: Callable[..., PluginProcess], cassandra: str, fuse_available: None
) -> None:
    p = plugin(keyspace="cassfs_not_there")
    p.ok("VolumeDriver.Create", {"Name": "site", "Opts": {"owner": "9"}})
    message = p.err("VolumeDriver.Mount", {"Name": "site", "ID": "c1"})
    assert message.startswith("mounting volume site failed: ")
    assert "cassfs schema apply" in message
    assert str(p.mount_root / "site") not in cassfs_mounts()
    assert p.ok("VolumeDriver.Get", {"Name": "site"})["Volume"]["Status"]["Mounts"] == 0
    p.ok("VolumeDriver.Remove", {"Name": "site"})


def test_the_volume_file_at_start(plugin: Callable[..., PluginProcess], tmp_path: Path) -> None:
    """IDs of a volume no longer mounted (a host reboot) are dropped; an unreadable file
    stops the plugin with one line."""
    root = tmp_path / "volumes"
    root.mkdir()
    state = root / docker_plugin.STATE_NAME
    state.write_text(
        json.dumps({"version": 1, "volumes": {"gone": {"options": {"owner": "4"}, "ids": ["x"]}}})
    )
    p = plugin()
    volume = p.ok("VolumeDriver.Get", {"Name": "gone"})["Volume"]
    assert volume == {"Name": "gone", "Status": {"Options": {"owner": "4"}, "Mounts": 0}}
    assert json.loads(state.read_text())["volumes"]["gone"]["ids"] == []
    assert p.stop() == 0

    state.write_text('{"volumes": [')
    result = run_cli(
        *("docker-plugin", "--socket", str(p.socket), "--mount-root", str(root)),
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"cassfs: the volume file {state} is unreadable (")
    assert result.stderr.strip().endswith("repair or remove it")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_second_plugin_on_a_served_socket_is_refused(
    plugin: Callable[..., PluginProcess], tmp_path: Path
) -> None:
    p = plugin()
    result = run_cli(
        "docker-plugin",
        *("--socket", str(p.socket), "--mount-root", str(tmp_path / "other")),
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"cassfs: another process serves {p.socket}: stop it or choose another --socket"
    )
    p.ok("Plugin.Activate")


def test_mounts_get_the_plugins_connection_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cassfs docker-plugin --username ... --ssl-ca ...` mounts with those options (never
    a password: `cassfs up` finds it as the plugin does)."""
    plugin = docker_plugin.Plugin(
        tmp_path / "root", tmp_path / "cache", "10.0.0.1:9042", "ks",
        ["--username", "app", "--ssl-ca", "/etc/ca.pem"],
    )  # fmt: skip
    commands: list[list[str]] = []
    monkeypatch.setattr(plugin, "_run", lambda action, name, command: commands.append(command))
    plugin.create("site", {"owner": "3"})
    plugin.mount("site", "container-1")
    (command,) = commands
    assert command[command.index("--contact-points") :][:6] == [
        *("--contact-points", "10.0.0.1:9042", "--keyspace", "ks", "--username", "app"),
    ]
    assert command[command.index("--ssl-ca") + 1] == "/etc/ca.pem"
