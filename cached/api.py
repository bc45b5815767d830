"""What the FUSE front and the CLI share with the daemon without importing it.

The front process never loads the daemon's modules (nor, through them,
cassandra-driver): it needs only where a daemon listens, how to start one, how
to parse the options both take, and the wire shapes in :mod:`cached.protocol`,
:mod:`cached.errors` and :mod:`cached.model`.  Those live here.
"""

from __future__ import annotations

import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cached.errors import InvalidArgument, NameTooLong, NotSupported, OutOfRange, TooBig
from cached.model import NAME_MAX, Inode
from cached.protocol import INLINE_LIMIT

if TYPE_CHECKING:
    from cached.client import DaemonClient

_SUFFIXES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
#: The daemon's caches kept in memory together by default (``--memory-cache``), bytes:
#: divided as :class:`cached.cache.MemoryBounds` says.
MEMORY_CACHE = 128 * 1024**2


SOCKET_NAME = "daemon.sock"

#: Largest regular file, bytes (4 GiB): a write or truncate past it fails with EFBIG, in
#: the front and in the daemon (``FileTooLarge``).  At most 4096 chunks of 1 MiB per file.
MAX_FILE_SIZE = 4 * 1024**3

#: Seconds between a daemon's reads of the change feeds (``--feed-poll``, :mod:`cached.feed`).
DEFAULT_FEED_POLL = 0.2


@dataclass(frozen=True)
class Timeouts:
    """How long answers are trusted without asking, in seconds.

    ``entry`` is the kernel's entry and attribute timeout of every reply, ``negative`` the
    kernel's timeout of a negative lookup (``--entry-ttl``, ``--negative-ttl``), ``cache``
    how long the daemon serves cached metadata before revalidating it (``--cache-ttl``).
    """

    entry: float
    negative: float
    cache: float


#: The defaults while the daemon follows the change feed (``--feed-poll`` above 0): another
#: host's change is told within a poll and drops what it names, kernel caches included, so
#: answers are trusted for long (the callback model of AFS: Howard et al., "Scale and
#: Performance in a Distributed File System", ACM TOCS 6(1), 1988).  The TTLs then bound only
#: what the feed cannot tell: a writer's clock more than 2 s behind, or a writer that died
#: between its change and its feed row.
FEED_TIMEOUTS = Timeouts(entry=60.0, negative=60.0, cache=600.0)

#: The defaults without the feed (``--feed-poll 0``): the TTLs are the only bound on
#: staleness, so they stay short.
POLL_TIMEOUTS = Timeouts(entry=1.0, negative=1.0, cache=60.0)


def default_timeouts(feed_poll: float) -> Timeouts:
    """The default :class:`Timeouts` for a feed poll interval of ``feed_poll`` seconds."""
    return FEED_TIMEOUTS if feed_poll > 0 else POLL_TIMEOUTS


#: Seconds a replaced content version or an unlinked inode stays in Cassandra
#: before this host's daemon deletes it (``--purge-delay``, :mod:`cached.reaper`):
#: longer than any host's ``--cache-ttl`` + ``--entry-ttl`` (600 + 60 by default with the
#: change feed), so another host still holding the name or a handle reads a whole old
#: version.
DEFAULT_PURGE_DELAY = 900.0

#: Extended attributes (see the README): the namespaces stored, and the limits, in bytes, of
#: a name (Linux's XATTR_NAME_MAX; ERANGE past it), of a value (XATTR_SIZE_MAX; E2BIG), of
#: an inode's list of names with their NULs (XATTR_LIST_MAX, what listxattr(2) returns at
#: most) and of the total of an inode's names and values (ENOSPC past either).
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_LIST_MAX = 65536
XATTR_TOTAL_MAX = 131072
#: setxattr(2) flags: the name must be new (EEXIST if not) / must exist (ENODATA if not).
XATTR_CREATE = 1
XATTR_REPLACE = 2


def check_xattr_name(name: bytes) -> bytes:
    """The namespace (one of :data:`XATTR_NAMESPACES`) of the extended attribute ``name``.

    Raises ``OutOfRange`` (ERANGE) for an empty name or one over :data:`XATTR_NAME_MAX`
    bytes (as setxattr(2) does), ``NotSupported`` (EOPNOTSUPP) for a name in no stored
    namespace (``system.posix_acl_access``, ``os2.x``, ``foo``: what ext4 answers), and
    ``InvalidArgument`` (EINVAL) for a bare namespace (``user.``, as ext4) or a NUL byte.
    """
    if not name or len(name) > XATTR_NAME_MAX:
        raise OutOfRange(f"extended attribute name of {len(name)} bytes (1 to {XATTR_NAME_MAX})")
    if b"\0" in name:
        raise InvalidArgument("extended attribute name with a NUL byte")
    for namespace in XATTR_NAMESPACES:
        if name.startswith(namespace):
            if len(name) == len(namespace):
                raise InvalidArgument(f"extended attribute name {name!r} is only a namespace")
            return namespace
    raise NotSupported(f"extended attribute {name[:64]!r} is in no namespace cassfs stores")


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
        raise ValueError(f"size {text!r} is under 1 MiB")
    return size


#: Connection settings passed to the daemon as options (see ``cached.connection``).
_CONNECTION = (
    "username",
    "password_file",
    "ssl_ca",
    "ssl_cert",
    "ssl_key",
    "local_dc",
    "serial_consistency",
)


def parse_metrics_address(text: str) -> tuple[str, int]:
    """Parse ``--metrics-address``: ``HOST:PORT`` or ``[IPv6]:PORT``; PORT 0 to 65535
    (0: any free port).  Returns ``(host, port)``; raises ValueError saying what to give.
    """
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"bad metrics address {text!r}: give HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464"
        )
    return host, int(port)


def daemon_command(cache_dir: Path, config: dict[str, Any], debug: bool = False) -> list[str]:
    """The command line that starts a daemon for ``cache_dir`` with ``config``.

    ``config`` has the keys of the ``status`` reply's config (``contact_points``,
    ``keyspace``, ``cache_ttl``, ``cache_size``; optionally ``consistency``, ``memory_cache``,
    ``query_timeout``, ``idle_exit``, ``purge_delay``, ``feed_poll``, ``metrics_address``
    and the connection settings of :meth:`cached.connection.ConnectionSettings.to_config`),
    so a mount can restart the daemon it had.  Never a password: the daemon reads it from
    ``password_file`` or from ``CASSFS_PASSWORD`` in the environment it inherits.
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
    daemon_options = (
        "consistency", "memory_cache", "query_timeout", "idle_exit", "purge_delay", "feed_poll",
    )  # fmt: skip
    for option in (*daemon_options, "metrics_address", *_CONNECTION):
        if config.get(option) is not None:
            command += [f"--{option.replace('_', '-')}", str(config[option])]
    if config.get("ssl_check_hostname") is False:
        command.append("--no-ssl-check-hostname")
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


@dataclass(frozen=True, slots=True)
class Xattr:
    """Reply of ``getxattr``: the attribute's value (None: the inode has no attribute of
    that name, ENODATA) and how many seconds the front may reuse this answer
    (``fresh_for``: the daemon answers from its cache that long; 0 for an answer served
    past its TTL)."""

    value: bytes | None
    fresh_for: float

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-friendly map."""
        return {"value": self.value, "fresh_for": self.fresh_for}

    @classmethod
    def from_wire(cls, reply: dict[str, Any]) -> Xattr:
        """Read :meth:`to_wire` output."""
        return cls(reply["value"], reply["fresh_for"])


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

    async def touch_atime(self, ino: int, atime_ns: int) -> bool:
        """Record a read access (relatime rules, see the daemon); True if written.  ENOENT."""
        return await self.client.call("touch_atime", ino=ino, atime_ns=atime_ns)  # type: ignore[no-any-return]

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

    async def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int
    ) -> Inode:
        """Create a FIFO, socket, device or empty file (``mode`` with its type bits, ``rdev``
        the device number); EEXIST, ENOENT (parent removed), ENOTDIR, EINVAL."""
        return await self._inode(
            "mknod", parent=parent, name=name, mode=mode, rdev=rdev, uid=uid, gid=gid
        )

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Inode:
        """Add the name ``new_name`` in ``new_parent`` to the non-directory ``ino``; the inode
        with its new nlink.  EEXIST, ENOENT, ENOTDIR, EPERM (a directory), EMLINK."""
        return await self._inode("link", ino=ino, new_parent=new_parent, new_name=new_name)

    async def unlink(self, parent: int, name: bytes) -> int:
        """Remove a non-directory name.  ENOENT, EISDIR.

        Returns the inode it named when that was its last name, else 0 (hard links remain).
        """
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

    async def open(
        self, ino: int, fetch: bool = True, inline: bool = True, atime_ns: int | None = None
    ) -> Opened:
        """Open ``ino`` (its content cached by the daemon with ``fetch``; a read access at
        ``atime_ns`` recorded, relatime rules, when given: only to a daemon whose
        ``hello`` named ``open_atime``); ENOENT, EIO."""
        if atime_ns is None:
            reply = await self.client.call("open", ino=ino, fetch=fetch, inline=inline)
        else:
            reply = await self.client.call(
                "open", ino=ino, fetch=fetch, inline=inline, atime_ns=atime_ns
            )
        return Opened.from_wire(reply)

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

    async def statfs(self) -> tuple[int, int]:
        """``(bytes, inodes)`` the tenant uses (its usage counters, at most 1 s old); EIO
        when Cassandra fails and the daemon knows no figures yet."""
        reply = await self.client.call("statfs")
        return int(reply["bytes"]), int(reply["inodes"])

    async def getxattr(self, ino: int, name: bytes) -> Xattr:
        """Extended attribute ``name`` of ``ino`` (its value None when absent); EOPNOTSUPP,
        ERANGE, EIO."""
        return Xattr.from_wire(await self.client.call("getxattr", ino=ino, name=name))

    async def listxattr(self, ino: int) -> list[bytes]:
        """The names of the extended attributes of ``ino``, sorted (every namespace)."""
        return await self.client.call("listxattr", ino=ino)  # type: ignore[no-any-return]

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        """Set extended attribute ``name`` of ``ino`` (``flags``: 0, :data:`XATTR_CREATE` or
        :data:`XATTR_REPLACE`).  ENOENT, EEXIST, ENODATA, EPERM (``user.*`` on a symlink or
        special file), EOPNOTSUPP, ERANGE, E2BIG, ENOSPC (the inode's limits)."""
        await self.client.call("setxattr", ino=ino, name=name, value=value, flags=flags)

    async def removexattr(self, ino: int, name: bytes) -> None:
        """Remove extended attribute ``name`` of ``ino``; ENOENT, ENODATA, EPERM, EOPNOTSUPP."""
        await self.client.call("removexattr", ino=ino, name=name)


# -- request validation ---------------------------------------------------------------------
#
# What the daemon accepts, per method: parameter name -> check.  The server applies
# REQUESTS[method] to every request before dispatch (cached.server), so handlers see only
# values of the right type and range; whatever a handler checks beyond that is about state
# (ENOENT, EEXIST...), not shape.


class Check:
    """One parameter's rule: :meth:`check` raises ``InvalidArgument`` (EINVAL) or
    ``NameTooLong`` (ENAMETOOLONG) for a value that breaks it."""

    def check(self, method: str, param: str, value: object) -> None:
        """Raise if ``value`` is not acceptable for ``param`` of ``method``."""
        raise NotImplementedError

    @staticmethod
    def fail(method: str, param: str, value: object, wanted: str) -> InvalidArgument:
        """The EINVAL for ``param`` of ``method`` holding ``value`` instead of ``wanted``."""
        shown = f"{type(value).__name__} {value!r:.40}"
        return InvalidArgument(f"{method}: {param} must be {wanted}, not {shown}")


@dataclass(frozen=True, slots=True)
class Int(Check):
    """An int (never a bool) from ``low`` to ``high`` inclusive."""

    low: int
    high: int

    def check(self, method: str, param: str, value: object) -> None:
        """EINVAL unless an int within the range."""
        if type(value) is not int or not self.low <= value <= self.high:
            raise self.fail(method, param, value, f"an int from {self.low} to {self.high}")


@dataclass(frozen=True, slots=True)
class Flag(Check):
    """A bool."""

    def check(self, method: str, param: str, value: object) -> None:
        """EINVAL unless a bool."""
        if type(value) is not bool:
            raise self.fail(method, param, value, "a bool")


@dataclass(frozen=True, slots=True)
class Blob(Check):
    """Bytes, ``low`` to ``high`` of them."""

    low: int
    high: int

    def check(self, method: str, param: str, value: object) -> None:
        """EINVAL unless bytes of a length within the range."""
        if type(value) is not bytes or not self.low <= len(value) <= self.high:
            raise self.fail(method, param, value, f"{self.low} to {self.high} bytes")


@dataclass(frozen=True, slots=True)
class Text(Check):
    """A str of ``low`` to ``high`` bytes in UTF-8, without control characters."""

    low: int
    high: int

    def check(self, method: str, param: str, value: object) -> None:
        """EINVAL unless such a str."""
        wanted = f"a str of {self.low} to {self.high} bytes without control characters"
        if type(value) is not str:
            raise self.fail(method, param, value, wanted)
        try:
            size = len(value.encode())
        except UnicodeEncodeError:  # lone surrogates cannot come from msgpack, but be sure
            raise self.fail(method, param, value, wanted) from None
        if not self.low <= size <= self.high or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise self.fail(method, param, value, wanted)


@dataclass(frozen=True, slots=True)
class Name(Check):
    """A directory entry name: bytes, not empty, no ``/`` or NUL, at most NAME_MAX (255).

    Too long raises ``NameTooLong`` (ENAMETOOLONG), the rest ``InvalidArgument``.
    ``.`` and ``..`` are left to the methods (:func:`cached.model.check_name`).
    """

    def check(self, method: str, param: str, value: object) -> None:
        """ENAMETOOLONG over 255 bytes; EINVAL for anything else that is no name."""
        if type(value) is not bytes or not value or b"/" in value or b"\0" in value:
            raise self.fail(method, param, value, "non-empty bytes without '/' or NUL")
        if len(value) > NAME_MAX:
            raise NameTooLong(f"{method}: {param} of {len(value)} bytes is over {NAME_MAX}")


@dataclass(frozen=True, slots=True)
class XattrName(Check):
    """An extended attribute name: bytes, as :func:`check_xattr_name` accepts (ERANGE,
    EOPNOTSUPP, EINVAL)."""

    def check(self, method: str, param: str, value: object) -> None:
        """EINVAL unless bytes; then as :func:`check_xattr_name`."""
        if type(value) is not bytes:
            raise self.fail(method, param, value, "bytes")
        check_xattr_name(value)


@dataclass(frozen=True, slots=True)
class XattrValue(Check):
    """An extended attribute value: bytes, at most :data:`XATTR_SIZE_MAX` (E2BIG past it)."""

    def check(self, method: str, param: str, value: object) -> None:
        """EINVAL unless bytes; E2BIG when too long."""
        if type(value) is not bytes:
            raise self.fail(method, param, value, "bytes")
        if len(value) > XATTR_SIZE_MAX:
            raise TooBig(f"{method}: {param} of {len(value)} bytes is over {XATTR_SIZE_MAX}")


#: The file type bits of a mode (``stat.S_IFMT`` of every bit).
_S_IFMT = 0o170000


@dataclass(frozen=True, slots=True)
class IntList(Check):
    """A list of 1 to ``most`` values, each as ``item`` accepts."""

    item: Check
    most: int

    def check(self, method: str, param: str, value: object) -> None:
        """EINVAL unless such a list."""
        if type(value) is not list or not 1 <= len(value) <= self.most:
            raise self.fail(method, param, value, f"a list of 1 to {self.most} values")
        for item in value:
            self.item.check(method, param, item)


@dataclass(frozen=True, slots=True)
class Mode(Check):
    """Permission bits (within 0o7777), optionally with the file type ``file_type``
    (an ``S_IF*`` constant) the method creates; 0 allows no type bits."""

    file_type: int = 0

    def check(self, method: str, param: str, value: object) -> None:
        """EINVAL unless such a mode."""
        if (
            type(value) is not int
            or not 0 <= value <= _S_IFMT | 0o7777
            or value & _S_IFMT not in (0, self.file_type)
        ):
            kind = f" (type bits: only 0o{self.file_type:o})" if self.file_type else ""
            raise self.fail(method, param, value, f"permission bits within 0o7777{kind}")


@dataclass(frozen=True, slots=True)
class OrNone(Check):
    """None, or a value ``inner`` accepts."""

    inner: Check

    def check(self, method: str, param: str, value: object) -> None:
        """Passes None; otherwise as ``inner``."""
        if value is not None:
            self.inner.check(method, param, value)


@dataclass(frozen=True, slots=True)
class Shape:
    """The parameters of one method: ``required`` and ``optional`` names -> checks."""

    required: Mapping[str, Check]
    optional: Mapping[str, Check] = field(default_factory=dict)

    def validate(self, method: str, params: Mapping[str, object]) -> None:
        """Raise EINVAL (or ENAMETOOLONG) unless ``params`` fit this shape exactly."""
        for name in params:
            if name not in self.required and name not in self.optional:
                raise InvalidArgument(f"{method}: unknown parameter {name!r:.40}")
        for name, rule in self.required.items():
            if name not in params:
                raise InvalidArgument(f"{method}: missing parameter {name!r}")
            rule.check(method, name, params[name])
        for name, rule in self.optional.items():
            if name in params:
                rule.check(method, name, params[name])


#: Inode numbers: random 63-bit integers, the root 1.
INO = Int(1, 2**63 - 1)
#: User and group ids: Linux's, 0 to 2**32 - 2 (2**32 - 1 is "no change" in chown(2)).
#: The store keeps them in CQL ``int`` columns, wrapped (``cached.store.id_to_cql``).
ID = Int(0, 2**32 - 2)
#: Times, nanoseconds since the epoch (a CQL bigint; before 1970 is negative).
TIME_NS = Int(-(2**63), 2**63 - 1)
#: Sizes and offsets, bytes.
SIZE = Int(0, 2**63 - 1)
#: Inode numbers per ``evict`` request (the wire allows 1,024 objects per request).
EVICT_BATCH = 256
#: Longest symlink target, bytes (PATH_MAX).
MAX_TARGET = 4096

_NAMED = {"parent": INO, "name": Name()}
_CREATED = {**_NAMED, "uid": ID, "gid": ID}

#: Every method the daemon serves -> the shape of its parameters.
REQUESTS: dict[str, Shape] = {
    # session and administration (see cached.server for who may call them)
    "hello": Shape(
        {"owner": Int(-(2**31), 2**31 - 1), "environment": Text(1, 255)},
        {"acks": Flag(), "read_only": Flag()},
    ),
    "status": Shape({}),
    "stats": Shape({}),
    "purge": Shape({}),
    "shutdown": Shape({}, {"force": Flag()}),
    "evict": Shape(
        {
            "owner": Int(-(2**31), 2**31 - 1),
            "environment": Text(1, 255),
            "inos": IntList(INO, EVICT_BATCH),
        },
        {"dry_run": Flag()},
    ),
    "seen": Shape({"seq": SIZE}),
    # metadata
    "lookup": Shape(_NAMED),
    "getattr": Shape({"ino": INO}),
    "setattr": Shape(
        {"ino": INO},
        {
            "mode": OrNone(Mode()),
            "uid": OrNone(ID),
            "gid": OrNone(ID),
            "atime_ns": OrNone(TIME_NS),
            "mtime_ns": OrNone(TIME_NS),
            "size": OrNone(SIZE),
        },
    ),
    "readlink": Shape({"ino": INO}),
    "touch_atime": Shape({"ino": INO, "atime_ns": TIME_NS}),
    "readdir": Shape({"ino": INO}),
    "statfs": Shape({}),
    # namespace
    "mkdir": Shape({**_CREATED, "mode": Mode(stat.S_IFDIR)}),
    "create": Shape({**_CREATED, "mode": Mode(stat.S_IFREG)}),
    "symlink": Shape({**_CREATED, "target": Blob(1, MAX_TARGET)}),
    "mknod": Shape({**_CREATED, "mode": Int(0, _S_IFMT | 0o7777), "rdev": Int(0, 2**63 - 1)}),
    "link": Shape({"ino": INO, "new_parent": INO, "new_name": Name()}),
    "unlink": Shape(_NAMED),
    "rmdir": Shape(_NAMED),
    "rename": Shape(
        {"old_parent": INO, "old_name": Name(), "new_parent": INO, "new_name": Name()},
        {"flags": Int(0, 2**32 - 1)},
    ),
    "purge_inode": Shape({"ino": INO}),
    # content
    "open": Shape({"ino": INO}, {"fetch": Flag(), "inline": Flag(), "atime_ns": TIME_NS}),
    "read": Shape(
        {
            "ino": INO,
            "content_id": Blob(0, 64),
            "file_size": SIZE,
            "offset": SIZE,
            "size": SIZE,  # the handler returns at most READ_LIMIT bytes
        }
    ),
    "write": Shape(
        {"ino": INO}, {"data": OrNone(Blob(0, INLINE_LIMIT)), "path": OrNone(Text(1, 4096))}
    ),
    "materialize": Shape({"ino": INO}),
    # extended attributes
    "getxattr": Shape({"ino": INO, "name": XattrName()}),
    "listxattr": Shape({"ino": INO}),
    "setxattr": Shape(
        {"ino": INO, "name": XattrName(), "value": XattrValue()},
        {"flags": Int(0, XATTR_CREATE | XATTR_REPLACE)},
    ),
    "removexattr": Shape({"ino": INO, "name": XattrName()}),
}


def validate_request(method: str, params: Mapping[str, object]) -> None:
    """Check a request against :data:`REQUESTS` before the daemon acts on it.

    Raises ``InvalidArgument`` (EINVAL) for an unknown method, an unknown or
    missing parameter, or a value of the wrong type or out of range, and
    ``NameTooLong`` (ENAMETOOLONG) for a name over 255 bytes.
    """
    shape = REQUESTS.get(method)
    if shape is None:
        raise InvalidArgument(f"unknown method {method!r:.60}")
    shape.validate(method, params)
