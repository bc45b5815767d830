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
from typing import Any

_SUFFIXES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


SOCKET_NAME = "daemon.sock"


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
    ``query_timeout``, ``idle_exit``), so a mount can restart the daemon it had.
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
    for option in ("consistency", "query_timeout", "idle_exit"):
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
