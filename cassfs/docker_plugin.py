"""`cassfs docker-plugin`: a Docker volume plugin whose volumes are cassfs mounts.

Docker finds the plugin by its unix socket (``/run/docker/plugins/cassfs.sock`` makes the
volume driver ``cassfs``) and POSTs JSON to ``/Plugin.Activate`` and
``/VolumeDriver.{Create,Remove,Mount,Unmount,Path,Get,List,Capabilities}``.  A refused
request is answered with status 500 and ``{"Err": "one line saying what to do"}``.

A volume names a tenant through its options (``docker volume create -d cassfs -o owner=1
-o environment=prod site``), checked with `cassfs up`'s own option checks.  ``Mount`` runs
``cassfs up MOUNT_ROOT/NAME`` once, however many containers mount the volume (Docker gives
each mount an ID), and ``Unmount`` of the last ID runs ``cassfs down``.  Volumes and their
mount IDs are kept in ``MOUNT_ROOT/.volumes.json`` (replaced atomically), so a restarted
plugin knows them and the mounts it left running.  Volumes whose daemon settings
(``cache_ttl``, ``cache_size``) agree share one cache dir, hence one cache daemon.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import click

log = logging.getLogger(__name__)

#: The media type Docker sends its plugin requests with; replies carry it too.
MEDIA_TYPE = "application/vnd.docker.plugins.v1.2+json"
#: The file under the mount root that lists the volumes.
STATE_NAME = ".volumes.json"
#: Volume names: what Docker allows for local volumes, never ``.``, ``..`` or a path.
VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: Volume options (``-o KEY=VALUE``) and the `cassfs up` option each one sets.
VOLUME_OPTIONS = {
    "owner": "--owner",
    "environment": "--environment",
    "entry_ttl": "--entry-ttl",
    "negative_ttl": "--negative-ttl",
    "cache_ttl": "--cache-ttl",
    "cache_size": "--cache-size",
}
#: The volume options that are the mount's own (the others are the daemon's).
MOUNT_OPTIONS = ("owner", "environment", "entry_ttl", "negative_ttl")
#: The read-only flag (``-o ro``, ``-o ro=true``): `cassfs up --ro`.
READ_ONLY = "ro"
READ_ONLY_FLAG = "--ro"
#: Largest request body read, bytes.
MAX_BODY = 1 << 20
#: Seconds `cassfs up` / `cassfs down` may take (up waits up to 90 s for a daemon, 60 s
#: for the mount).
COMMAND_TIMEOUT = 180.0


class PluginError(Exception):
    """A request refused; its message goes back to Docker as ``Err``."""


class _UnknownEndpoint(Exception):
    pass


@dataclass(frozen=True)
class MountPlan:
    """How `cassfs up` mounts a volume: ``args`` follow ``up MOUNTPOINT``; ``cache_key``
    names the cache dir (under the plugin's) of the daemon settings in ``args``."""

    args: list[str]
    cache_key: str


def _read_only(value: str) -> bool:
    if value == "":
        return True  # `docker volume create -o ro` gives "ro": ""
    try:
        return bool(click.BOOL.convert(value, None, None))
    except click.BadParameter:
        raise PluginError(
            f"volume option ro={value!r}: give ro, ro=true or ro=false (or 1/0, yes/no)"
        ) from None


def plan_mount(options: Mapping[str, Any]) -> MountPlan:
    """Check a volume's options as `cassfs up` checks its own; the mount they make.

    ``options`` is Docker's ``Opts``: strings keyed by the names in :data:`VOLUME_OPTIONS`
    and ``ro``.  Options not given take `cassfs up`'s defaults (and its ``CASSFS_*``
    environment variables).  Raises :class:`PluginError` naming the bad or unknown option.
    """
    from cassfs.cli import check_mount_values, timeouts_of, up

    bad_types = sorted(key for key, value in options.items() if not isinstance(value, str))
    if bad_types:
        raise PluginError(f"volume options {', '.join(bad_types)} must be strings")
    unknown = sorted(set(options) - set(VOLUME_OPTIONS) - {READ_ONLY})
    if unknown:
        raise PluginError(
            f"unknown volume option(s) {', '.join(unknown)}: use "
            f"{', '.join([*VOLUME_OPTIONS, READ_ONLY])}"
        )
    args_of = {key: [flag, options[key]] for key, flag in VOLUME_OPTIONS.items() if key in options}
    args = [arg for pair in args_of.values() for arg in pair]
    if READ_ONLY in options and _read_only(options[READ_ONLY]):
        args.append(READ_ONLY_FLAG)
    flags = {flag: key for key, flag in VOLUME_OPTIONS.items()}
    try:
        context = up.make_context("up", ["/", *args])
        params = context.params
        entry_ttl, negative_ttl, cache_ttl = timeouts_of(
            params["entry_ttl"], params["negative_ttl"], params["cache_ttl"], params["feed_poll"]
        )
        check_mount_values(entry_ttl, negative_ttl, cache_ttl)
        size = params["cache_size"]
    except click.BadParameter as exc:
        given = next((o for o in getattr(exc.param, "opts", ()) if o in flags), None)
        if given is not None:
            key = flags[given]
            raise PluginError(f"volume option {key}={options[key]!r}: {exc.message}") from None
        raise PluginError(f"volume options: {exc.message}") from None
    except click.ClickException as exc:
        raise PluginError(f"volume options: {exc.format_message()}") from None
    # the daemon settings, given whether or not the volume set them: they name its cache dir
    mount_args = [arg for key in MOUNT_OPTIONS if key in options for arg in args_of[key]]
    if READ_ONLY_FLAG in args:
        mount_args.append(READ_ONLY_FLAG)
    daemon = ["--cache-ttl", repr(cache_ttl), "--cache-size", str(size)]
    return MountPlan(mount_args + daemon, f"ttl{cache_ttl:g}-size{size}")


@dataclass
class Volume:
    """A volume Docker created: its ``options`` (Docker's ``Opts``) and the mount IDs of
    the containers using it."""

    name: str
    options: dict[str, str]
    ids: set[str] = field(default_factory=set)


class Plugin:
    """The volume driver: one method per ``VolumeDriver`` call; safe to call from threads.

    ``mount_root``: volumes mount at ``mount_root/NAME``; the volume file lives there.
    ``cache_dir``: cache dirs of the volumes' daemons are made under it.
    ``contact_points`` (``HOST[:PORT],...``), ``keyspace`` and ``connection_args`` (the
    other connection options, :meth:`cached.connection.ConnectionSettings.to_args`: never a
    password, which `cassfs up` finds as this process does) are given to `cassfs up`.
    Raises :class:`PluginError` when the volume file exists but cannot be read.
    """

    def __init__(
        self,
        mount_root: Path,
        cache_dir: Path,
        contact_points: str,
        keyspace: str,
        connection_args: Sequence[str] = (),
    ):
        self.mount_root = Path(os.path.abspath(mount_root))
        self.cache_dir = Path(os.path.abspath(cache_dir))
        self.contact_points = contact_points
        self.keyspace = keyspace
        self.connection_args = list(connection_args)
        self._lock = threading.Lock()  # self.volumes, self._name_locks and the volume file
        self._name_locks: dict[str, threading.Lock] = {}
        self._idle = threading.Condition()  # self._busy: requests in progress
        self._busy = 0
        try:
            self.mount_root.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise PluginError(
                f"cannot make the mount root {self.mount_root}: {exc.strerror}: choose another "
                "with --mount-root"
            ) from None
        self.volumes = self._load()

    # -- the volume file ------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        """``MOUNT_ROOT/.volumes.json``."""
        return self.mount_root / STATE_NAME

    def _load(self) -> dict[str, Volume]:
        try:
            raw = json.loads(self.state_path.read_text())
            volumes = {
                name: Volume(name, dict(entry["options"]), set(entry["ids"]))
                for name, entry in raw["volumes"].items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PluginError(
                f"the volume file {self.state_path} is unreadable ({exc}): repair or remove it"
            ) from None
        for volume in volumes.values():
            if volume.ids and not self._serving(volume.name):
                log.info("volume %s is no longer mounted: forgetting its mount IDs", volume.name)
                volume.ids.clear()
        self._save(volumes)
        return volumes

    def _save(self, volumes: dict[str, Volume] | None = None) -> None:
        """Replace the volume file atomically (call with ``self._lock`` held)."""
        volumes = self.volumes if volumes is None else volumes
        data = {
            "version": 1,
            "volumes": {
                v.name: {"options": v.options, "ids": sorted(v.ids)} for v in volumes.values()
            },
        }
        fd, temp = tempfile.mkstemp(prefix=f"{STATE_NAME}.", dir=self.mount_root)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.state_path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        directory = os.open(self.mount_root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    # -- helpers ----------------------------------------------------------------------------

    def mountpoint(self, name: str) -> Path:
        """Where volume ``name`` mounts: ``MOUNT_ROOT/NAME``."""
        return self.mount_root / name

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())

    def _volume(self, name: str) -> Volume:
        with self._lock:
            volume = self.volumes.get(name)
        if volume is None:
            raise PluginError(
                f"no cassfs volume {name!r}: create it with `docker volume create -d cassfs "
                f"-o owner=N -o environment=NAME {name}`"
            )
        return volume

    def _listed(self, name: str) -> bool:
        """True when /proc/mounts lists a cassfs mount (alive or dead) at the mountpoint."""
        from cassfs.cli import CASSFS_FSTYPE, _mount_fstype

        return _mount_fstype(self.mountpoint(name)) == CASSFS_FSTYPE

    def _serving(self, name: str) -> bool:
        """True when a live cassfs mount answers at the mountpoint."""
        try:
            return os.path.ismount(self.mountpoint(name)) and self._listed(name)
        except OSError:
            return False

    def _run(self, action: str, name: str, command: list[str]) -> None:
        """Run a `cassfs` command; PluginError with its last error line if it fails."""
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise PluginError(
                f"{action} volume {name} took over {COMMAND_TIMEOUT:g} s: see the cassfs "
                f"logs under {self.cache_dir}"
            ) from None
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
            raise PluginError(
                f"{action} volume {name} failed: {lines[-1].removeprefix('cassfs: ')}"
            )

    def _mountpoint_reply(self, name: str) -> dict[str, str]:
        return {"Mountpoint": str(self.mountpoint(name))} if self._serving(name) else {}

    # -- VolumeDriver ---------------------------------------------------------------------

    def create(self, name: str, options: dict[str, str]) -> None:
        """Record volume ``name``; nothing is mounted yet.  Creating it again with the
        same options does nothing.  PluginError: bad options, or other options than the
        volume's."""
        plan_mount(options)
        with self._name_lock(name), self._lock:
            existing = self.volumes.get(name)
            if existing is not None:
                if existing.options != options:
                    raise PluginError(
                        f"volume {name} exists with options {existing.options}: "
                        f"`docker volume rm {name}` first"
                    )
                return
            self.volumes[name] = Volume(name, dict(options))
            self._save()

    def remove(self, name: str) -> None:
        """Forget volume ``name`` (the tenant's files stay in Cassandra).  PluginError
        while it is mounted."""
        with self._name_lock(name):
            volume = self._volume(name)
            if volume.ids or self._listed(name):
                raise PluginError(
                    f"volume {name} is mounted ({len(volume.ids)} mount IDs): stop the "
                    "containers using it first"
                )
            with self._lock:
                del self.volumes[name]
                self._save()
            try:
                self.mountpoint(name).rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("left %s behind: %s", self.mountpoint(name), exc.strerror)

    def mount(self, name: str, mount_id: str) -> str:
        """Mount volume ``name`` for ``mount_id`` (once for all IDs); its mountpoint.
        PluginError: unknown volume, or `cassfs up` failed (its error line)."""
        with self._name_lock(name):
            volume = self._volume(name)
            mountpoint = self.mountpoint(name)
            if not self._serving(name):
                plan = plan_mount(volume.options)
                try:
                    mountpoint.mkdir(mode=0o755, exist_ok=True)
                except FileExistsError:
                    pass  # a dead mount (its stat fails): `cassfs up` clears it
                except OSError as exc:
                    raise PluginError(f"cannot make {mountpoint}: {exc.strerror}") from None
                command = [
                    *(sys.executable, "-m", "cassfs", "up", str(mountpoint)),
                    *("--cache-dir", str(self.cache_dir / plan.cache_key)),
                    *("--contact-points", self.contact_points, "--keyspace", self.keyspace),
                    *self.connection_args,
                    *plan.args,
                ]
                self._run("mounting", name, command)
                log.info("volume %s mounted at %s", name, mountpoint)
            with self._lock:
                volume.ids.add(mount_id)
                self._save()
            return str(mountpoint)

    def unmount(self, name: str, mount_id: str) -> None:
        """Drop ``mount_id`` from volume ``name``; unmount when it was the last.
        PluginError: unknown volume, or `cassfs down` failed (the ID is kept)."""
        with self._name_lock(name):
            volume = self._volume(name)
            with self._lock:
                volume.ids.discard(mount_id)
                self._save()
            if volume.ids or not self._listed(name):
                return
            try:
                self._run(
                    "unmounting",
                    name,
                    [sys.executable, "-m", "cassfs", "down", str(self.mountpoint(name))],
                )
            except PluginError:
                with self._lock:
                    volume.ids.add(mount_id)
                    self._save()
                raise
            log.info("volume %s unmounted", name)

    def get(self, name: str) -> dict[str, Any]:
        """``Volume`` of Docker's Get reply: Name, Mountpoint (when mounted), Status."""
        volume = self._volume(name)
        return {
            "Name": name,
            **self._mountpoint_reply(name),
            "Status": {"Options": dict(volume.options), "Mounts": len(volume.ids)},
        }

    def list(self) -> list[dict[str, str]]:
        """``Volumes`` of Docker's List reply: Name and Mountpoint (when mounted)."""
        with self._lock:
            names = sorted(self.volumes)
        return [{"Name": name, **self._mountpoint_reply(name)} for name in names]

    # -- the protocol -------------------------------------------------------------------------

    def handle(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer one request: POST ``path`` with JSON ``body``; (HTTP status, reply)."""
        try:
            request = json.loads(body) if body.strip() else None
        except ValueError:
            return 400, {"Err": "the request body is not JSON"}
        if request is None:
            request = {}
        if not isinstance(request, dict):
            return 400, {"Err": "the request body must be a JSON object"}
        try:
            return 200, self._dispatch(path, request)
        except PluginError as exc:
            return 500, {"Err": str(exc)}
        except _UnknownEndpoint:
            return 404, {
                "Err": f"unknown endpoint {path}: this plugin serves Plugin.Activate and "
                "VolumeDriver.*"
            }
        except Exception as exc:
            log.exception("%s failed", path)
            return 500, {"Err": f"internal error ({type(exc).__name__}: {exc}): see the log"}

    @contextmanager
    def request(self) -> Iterator[None]:
        """Count a request in progress (read, answered and replied) for :meth:`wait_idle`."""
        with self._idle:
            self._busy += 1
        try:
            yield
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the requests in progress; False if some still
        run."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def _dispatch(self, path: str, request: dict[str, Any]) -> dict[str, Any]:
        if path == "/Plugin.Activate":
            return {"Implements": ["VolumeDriver"]}
        if path == "/VolumeDriver.Capabilities":
            return {"Capabilities": {"Scope": "local"}}
        if path == "/VolumeDriver.List":
            return {"Volumes": self.list(), "Err": ""}
        if path not in VOLUME_ENDPOINTS:
            raise _UnknownEndpoint(path)
        name = request.get("Name")
        if not isinstance(name, str) or not VOLUME_NAME.fullmatch(name):
            raise PluginError(
                f"bad volume name {name!r}: use 1 to 128 of A-Z a-z 0-9 _ . -, "
                "beginning with a letter or digit"
            )
        mount_id = request.get("ID") or ""
        if not isinstance(mount_id, str):
            raise PluginError("the mount ID must be a string")
        if path == "/VolumeDriver.Create":
            options = request.get("Opts") or {}
            if not isinstance(options, dict):
                raise PluginError("Opts must be an object of volume options")
            self.create(name, options)
            return {"Err": ""}
        if path == "/VolumeDriver.Remove":
            self.remove(name)
            return {"Err": ""}
        if path == "/VolumeDriver.Mount":
            return {"Mountpoint": self.mount(name, mount_id), "Err": ""}
        if path == "/VolumeDriver.Unmount":
            self.unmount(name, mount_id)
            return {"Err": ""}
        if path == "/VolumeDriver.Path":
            self._volume(name)
            return {**self._mountpoint_reply(name), "Err": ""}
        return {"Volume": self.get(name), "Err": ""}  # /VolumeDriver.Get


VOLUME_ENDPOINTS = frozenset(
    f"/VolumeDriver.{name}" for name in ("Create", "Remove", "Mount", "Unmount", "Path", "Get")
)


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, plugin: Plugin):
        self.plugin = plugin
        super().__init__(str(path), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # Docker keeps its connection open
    server: _Server

    def do_POST(self) -> None:
        with self.server.plugin.request():
            self._answer()

    def _answer(self) -> None:
        started = time.monotonic()
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            status, reply = 411, {"Err": "send a Content-Length, not a chunked body"}
            self.close_connection = True
            body = b""
        else:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                status, reply = 413, {"Err": f"request bodies are 0 to {MAX_BODY} bytes"}
                self.close_connection = True
                body = b""
            else:
                body = self.rfile.read(length)
                status, reply = self.server.plugin.handle(self.path, body)
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", MEDIA_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        log.info(
            "%s%s -> %d%s (%.2f s)",
            self.path,
            _summary(body),
            status,
            f" Err: {reply['Err']}" if reply.get("Err") else "",
            time.monotonic() - started,
        )

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # do_POST logs its own line

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


def _summary(body: bytes) -> str:
    """`` name=NAME id=ID`` of a request body, for the log line."""
    try:
        request = json.loads(body) if body else {}
    except ValueError:
        return ""
    if not isinstance(request, dict):
        return ""
    return "".join(
        f" {label}={request[key]}"
        for key, label in (("Name", "name"), ("ID", "id"))
        if key in request
    )


def _claim_socket(path: Path) -> None:
    """Make ``path``'s directory and remove a stale socket there; PluginError when
    another process serves it or it is not a socket."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise PluginError(f"{path} exists and is not a socket: remove it or choose --socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left by a plugin that died
            return
    raise PluginError(f"another process serves {path}: stop it or choose another --socket")


def serve(socket_path: Path, plugin: Plugin, ready: Any = None) -> None:
    """Serve the plugin protocol on ``socket_path`` (mode 0660) until SIGTERM or SIGINT.

    Then it stops listening and lets the requests in progress finish (a Mount records
    its ID) for up to :data:`COMMAND_TIMEOUT` seconds.  Mounts stay up when it stops.
    ``ready``, if given, is called once the socket listens.  Raises :class:`PluginError`
    when the socket cannot be claimed.
    """
    _claim_socket(socket_path)
    try:
        server = _Server(socket_path, plugin)
    except OSError as exc:
        raise PluginError(f"cannot listen on {socket_path}: {exc.strerror}") from None
    try:
        socket_path.chmod(0o660)

        def stop(signum: int, frame: object) -> None:
            log.info("stopping (signal %d); the volumes' mounts stay", signum)
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("serving %s; volumes under %s", socket_path, plugin.mount_root)
        if ready is not None:
            ready()
        server.serve_forever()
    finally:
        server.server_close()
        socket_path.unlink(missing_ok=True)
        if not plugin.wait_idle(COMMAND_TIMEOUT):
            log.warning("stopped with requests still in progress")
