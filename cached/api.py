"""What the FUSE front and the CLI share with the daemon without importing it.

The front process never loads the daemon's modules (nor, through them,
cassandra-driver): it needs only where a daemon listens, how to start one, how
to parse the options both take, and the wire shapes in :mod:`cached.protocol`,
:mod:`cached.errors` and :mod:`cached.model`.  Those live here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cached.model import Inode

if TYPE_CHECKING:
    from cached.client import DaemonClient

_SUFFIXES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


SOCKET_NAME = "daemon.sock"

#: Largest regular file, bytes (4 GiB): a write or truncate past it fails with EFBIG, in
#: the front and in the daemon (``FileTooLarge``).  At most 4096 chunks of 1 MiB per file.
MAX_FILE_SIZE = 4 * 1024**3

#: Seconds a replaced content version or an unlinked inode stays in Cassandra
#: before this host's daemon deletes it (``--purge-delay``, :mod:`cached.reaper`):
#: longer than any host's ``--cache-ttl`` + ``--entry-ttl`` (60 + 1 by default),
#: so another host still holding the name or a handle reads a whole old version.
DEFAULT_PURGE_DELAY = 120.0


def socket_path(cache_dir: Path) -> Path:
    """Where the daemon of ``cache_dir`` listens."""
    return cache_dir / SOCKET_NAME


def parse_size(text: str) -> int:
    """Parse ``1073741824``, ``512M``, ``1G`` or ``2GiB`` into bytes (binary multiples).

    Raises ValueError for anything else or a size under 1 MiB.
    """
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    number, suffix = raw, ""
    if raw and raw[-1] in _SUFFIXES:
        number, suffix = raw[:-1], raw[-1]
    try:
        size = int(float(number) * _SUFFIXES[suffix])
    except (ValueError, OverflowError):
        raise ValueError(f"bad size {text!r}: use bytes or a number with K, M, G or T") from None
    if size < 1024**2:
        raise ValueError(f"cache size {text!r} is under 1 MiB")
    return size


def daemon_command(cache_dir: Path, config: dict[str, Any], debug: bool = False) -> list[str]:
    """The command line that starts a daemon for ``cache_dir`` with ``config``.

    ``config`` has the keys of the ``status`` reply's config (``contact_points``,
    ``keyspace``, ``cache_ttl``, ``cache_size``; optionally ``consistency``,
    ``query_timeout``, ``idle_exit``, ``purge_delay``), so a mount can restart
    the daemon it had.
    """
    command = [
        sys.executable,
        "-m",
        "cached",
        "--cache-dir",
        str(cache_dir),
        "--contact-points",
        str(config["contact_points"]),
        "--keyspace",
        str(config["keyspace"]),
        "--cache-ttl",
        str(config["cache_ttl"]),
        "--cache-size",
        str(config["cache_size"]),
    ]
    for option in ("consistency", "query_timeout", "idle_exit", "purge_delay"):
        if config.get(option) is not None:
            command += [f"--{option.replace('_', '-')}", str(config[option])]
    return command + (["--debug"] if debug else [])


@dataclass(frozen=True)
class ContactPoints:
    """Where Cassandra answers: ``hosts`` on one native ``port``."""

    hosts: tuple[str, ...]
    port: int

    @classmethod
    def parse(cls, text: str) -> ContactPoints:
        """Parse ``HOST[:PORT],...``; every host must use the same port (default 9042).

        IPv6 addresses are written ``[::1]:9042`` or bare (``::1``, default port).
        Raises ValueError with a readable message on bad input.
        """
        hosts: list[str] = []
        ports: set[int] = set()
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            if item.startswith("["):
                host, _, rest = item[1:].partition("]")
                port_text = rest.removeprefix(":") if rest.startswith(":") else (rest or "9042")
            elif item.count(":") > 1:
                host, port_text = item, "9042"
            else:
                host, sep, port_text = item.rpartition(":")
                if not sep:
                    host, port_text = item, "9042"
            if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"bad contact point {item!r}: expected HOST[:PORT]")
            hosts.append(host)
            ports.add(int(port_text))
        if not hosts:
            raise ValueError("no contact points given")
        if len(ports) > 1:
            raise ValueError("all contact points must use the same port")
        return cls(tuple(hosts), ports.pop())

    def __str__(self) -> str:
        return ",".join(
            f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}" for host in self.hosts
        )


# -- typed RPC replies and requests ---------------------------------------------------------
#
# The wire carries msgpack maps (cached.protocol); these records are the one definition of
# each reply's shape, built by the daemon's methods and read by the front, and DaemonApi
# gives every request a typed signature.  Inodes travel as cached.model.Inode maps.


@dataclass(frozen=True, slots=True)
class Opened:
    """Reply of ``open``: the inode, the cache epoch, the content when it came inline
    (whole, at most ``OPEN_INLINE_LIMIT`` bytes) and how many seconds the front may reuse
    this answer (``fresh_for``)."""

    inode: Inode
    epoch: int
    data: bytes | None
    fresh_for: float

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-friendly map."""
        return {
            "inode": self.inode.to_wire(),
            "epoch": self.epoch,
            "data": self.data,
            "fresh_for": self.fresh_for,
        }

    @classmethod
    def from_wire(cls, reply: dict[str, Any]) -> Opened:
        """Read :meth:`to_wire` output; KeyError/TypeError on a malformed map."""
        return cls(
            Inode.from_wire(reply["inode"]), reply["epoch"], reply["data"], reply["fresh_for"]
        )


@dataclass(frozen=True, slots=True)
class Renamed:
    """Reply of ``rename``: the moved inode and the inode the new name replaced (0: none)."""

    ino: int
    replaced: int

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-friendly map."""
        return {"ino": self.ino, "replaced": self.replaced}

    @classmethod
    def from_wire(cls, reply: dict[str, Any]) -> Renamed:
        """Read :meth:`to_wire` output."""
        return cls(reply["ino"], reply["replaced"])


@dataclass(frozen=True, slots=True)
class Materialized:
    """Reply of ``materialize``: the inode and its content, inline (``data``) or as a
    spool file the front now owns (``path``); exactly one is set."""

    inode: Inode
    data: bytes | None = None
    path: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-friendly map (only the content field that is set)."""
        wire: dict[str, Any] = {"inode": self.inode.to_wire()}
        if self.path is not None:
            wire["path"] = self.path
        else:
            wire["data"] = self.data
        return wire

    @classmethod
    def from_wire(cls, reply: dict[str, Any]) -> Materialized:
        """Read :meth:`to_wire` output."""
        return cls(Inode.from_wire(reply["inode"]), reply.get("data"), reply.get("path"))


class DaemonApi:
    """Every RPC a mount makes, typed: one method per daemon method, same parameter names.

    Wraps a connected :class:`~cached.client.DaemonClient`.  Each method raises the
    :mod:`cached.errors` class of the daemon's errno (ENOENT -> ``NotFound``...), and
    ``DaemonUnavailable`` (EIO) when the daemon cannot be reached.
    """

    def __init__(self, client: DaemonClient) -> None:
        self.client = client

    async def _inode(self, method: str, **params: Any) -> Inode:
        return Inode.from_wire(await self.client.call(method, **params))

    async def lookup(self, parent: int, name: bytes) -> Inode:
        """The inode ``name`` names in directory ``parent``; ENOENT, ENOTDIR, ENAMETOOLONG."""
        return await self._inode("lookup", parent=parent, name=name)

    async def getattr(self, ino: int) -> Inode:
        """The inode ``ino``; ENOENT."""
        return await self._inode("getattr", ino=ino)

    async def setattr(self, ino: int, **changes: int) -> Inode:
        """chmod/chown/utimens/truncate: ``changes`` among mode, uid, gid, atime_ns,
        mtime_ns (nanoseconds) and size (bytes); the new inode.  ENOENT, EISDIR, EINVAL."""
        return await self._inode("setattr", ino=ino, **changes)

    async def readlink(self, ino: int) -> bytes:
        """The target of symlink ``ino``; EINVAL when it is not one."""
        return await self.client.call("readlink", ino=ino)  # type: ignore[no-any-return]

    async def readdir(self, ino: int) -> list[tuple[bytes, Inode]]:
        """Every entry of directory ``ino`` as ``(name, inode)``, by name; ENOTDIR."""
        return [
            (name, Inode.from_wire(inode))
            for name, inode in await self.client.call("readdir", ino=ino)
        ]

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Inode:
        """Create a directory; EEXIST, ENOENT (parent removed), ENOTDIR."""
        return await self._inode("mkdir", parent=parent, name=name, mode=mode, uid=uid, gid=gid)

    async def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Inode:
        """Create an empty regular file; EEXIST, ENOENT (parent removed), ENOTDIR."""
        return await self._inode("create", parent=parent, name=name, mode=mode, uid=uid, gid=gid)

    async def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Inode:
        """Create a symlink to ``target``; EEXIST, EINVAL (empty or over 4096 bytes)."""
        return await self._inode(
            "symlink", parent=parent, name=name, target=target, uid=uid, gid=gid
        )

    async def unlink(self, parent: int, name: bytes) -> int:
        """Remove a non-directory name; the inode it named.  ENOENT, EISDIR."""
        return await self.client.call("unlink", parent=parent, name=name)  # type: ignore[no-any-return]

    async def rmdir(self, parent: int, name: bytes) -> int:
        """Remove an empty directory; its inode.  ENOENT, ENOTDIR, ENOTEMPTY."""
        return await self.client.call("rmdir", parent=parent, name=name)  # type: ignore[no-any-return]

    async def rename(
        self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> Renamed:
        """Move a name; ENOENT, EEXIST (RENAME_NOREPLACE), EISDIR, ENOTDIR, ENOTEMPTY, EINVAL."""
        return Renamed.from_wire(
            await self.client.call(
                "rename", old_parent=old_parent, old_name=old_name, new_parent=new_parent,
                new_name=new_name, flags=flags,
            )
        )  # fmt: skip

    async def open(self, ino: int, fetch: bool = True, inline: bool = True) -> Opened:
        """Open ``ino`` (its content cached by the daemon with ``fetch``); ENOENT, EIO."""
        return Opened.from_wire(await self.client.call("open", ino=ino, fetch=fetch, inline=inline))

    async def read(
        self, ino: int, content_id: bytes, file_size: int, offset: int, size: int
    ) -> bytes:
        """``size`` bytes at ``offset`` of the version ``content_id`` (``file_size`` bytes)."""
        return await self.client.call(  # type: ignore[no-any-return]
            "read", ino=ino, content_id=content_id, file_size=file_size, offset=offset, size=size
        )

    async def write(self, ino: int, data: bytes | None = None, path: str | None = None) -> Inode:
        """Replace the whole content (inline ``data`` or a spool file ``path``); write-through."""
        params: dict[str, Any] = {"data": data} if path is None else {"path": path}
        return await self._inode("write", ino=ino, **params)

    async def materialize(self, ino: int) -> Materialized:
        """The current content of ``ino`` for a read-modify-write; ENOENT, EIO."""
        return Materialized.from_wire(await self.client.call("materialize", ino=ino))

    async def purge_inode(self, ino: int) -> bool:
        """Delete the unlinked inode ``ino`` once nothing holds it; True if deleted."""
        return await self.client.call("purge_inode", ino=ino)  # type: ignore[no-any-return]
