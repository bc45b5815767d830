"""A minimal read-only pyfuse3 passthrough: the yardstick of the warm benchmark.

``python -m tests.passthrough SOURCE MOUNTPOINT [--timeout S]`` mounts SOURCE at MOUNTPOINT
and serves until unmounted (``fusermount3 -u MOUNTPOINT``).  It is what the least a pyfuse3
filesystem does per request costs: each request is answered with the matching system call
on SOURCE, made directly on the trio thread (no cache of its own, no thread hop, no
socket), with entry and attribute timeouts of ``--timeout`` seconds (default: cassfs's own
default with the change feed, so both let the kernel cache alike).  ``keep_cache`` is on,
as cassfs sets it for an unchanged version.

Inode numbers are SOURCE's own; a dict maps each to its path (one entry per inode looked
up: fine for a benchmark tree, not for a real filesystem).  Files are opened per FUSE open
and closed at release, never kept per inode.  Not part of cassfs: only
:mod:`tests.warm_bench` uses it.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
from collections.abc import Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from cached.api import FEED_TIMEOUTS

T = TypeVar("T")


def _os(call: Callable[[], T]) -> T:
    """``call()``, its OSError as the FUSEError of the same errno."""
    try:
        return call()
    except OSError as exc:
        raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None


class Passthrough(pyfuse3.Operations):
    """Read-only operations over ``source``; ``timeout`` seconds for entries and attributes."""

    def __init__(self, source: str, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
        self.dirs: dict[int, list[tuple[bytes, os.stat_result]]] = {}
        self.files: dict[int, int] = {}
        self._next_fh = 1

    def _attrs(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size"):
            setattr(attrs, name, getattr(st, name))
        attrs.st_ino = st.st_ino
        attrs.st_atime_ns, attrs.st_mtime_ns = st.st_atime_ns, st.st_mtime_ns
        attrs.st_ctime_ns = st.st_ctime_ns
        attrs.st_blksize, attrs.st_blocks = 4096, (st.st_size + 511) // 512
        attrs.entry_timeout = attrs.attr_timeout = self.timeout
        return attrs

    def _entry(self, path: str) -> pyfuse3.EntryAttributes:
        st = _os(lambda: os.lstat(path))
        self.paths.setdefault(st.st_ino, path)
        attrs = self._attrs(st)
        return attrs

    def _fh(self) -> int:
        self._next_fh += 1
        return self._next_fh

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._entry(os.path.join(self.paths[parent_inode], os.fsdecode(name)))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        attrs = self._entry(self.paths[inode])
        if inode == pyfuse3.ROOT_INODE:
            attrs.st_ino = pyfuse3.ROOT_INODE
        return attrs

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(_os(lambda: os.readlink(self.paths[inode])))

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        path = self.paths[inode]
        entries = []
        for entry in _os(lambda: list(os.scandir(path))):
            st = entry.stat(follow_symlinks=False)
            self.paths.setdefault(st.st_ino, entry.path)
            entries.append((os.fsencode(entry.name), st))
        fh = self._fh()
        self.dirs[fh] = sorted(entries)
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self.dirs[fh]
        for index in range(start_id, len(entries)):
            name, st = entries[index]
            if not pyfuse3.readdir_reply(token, name, self._attrs(st), index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        fd = _os(lambda: os.open(self.paths[inode], os.O_RDONLY))
        fh = self._fh()
        self.files[fh] = fd
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return _os(lambda: os.pread(self.files[fh], size, off))

    async def release(self, fh: int) -> None:
        fd = self.files.pop(fh, None)
        if fd is not None:
            os.close(fd)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files"):
            setattr(data, name, getattr(st, name))
        data.f_ffree, data.f_favail, data.f_namemax = st.f_ffree, st.f_favail, st.f_namemax
        return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("--timeout", type=float, default=FEED_TIMEOUTS.entry)
    args = parser.parse_args(argv)
    if not stat.S_ISDIR(os.stat(args.source).st_mode):
        parser.error(f"{args.source} is not a directory")
    ops = Passthrough(os.path.abspath(args.source), args.timeout)
    options: Any = set(pyfuse3.default_options) | {"fsname=passthrough", "ro"}
    pyfuse3.init(ops, args.mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
