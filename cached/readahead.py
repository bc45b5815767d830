"""Readahead through a directory: which small files' bytes to fetch as lookups go by.

A directory listed without its files' bytes (a readdir counted its subdirectories, as
a stat walk does) gets them fetched only once files in it are looked up, and only
ahead of the reader: the first lookup asks for the :data:`FIRST_WINDOW` files named
after it; a lookup that comes within half a window of the end of what was asked for
asks for the next window, twice as large (up to :data:`LARGEST_WINDOW`).  A reader
going through a directory in name order (``cp -r``, ``tar``, a cold read of a tree)
then finds each file's bytes cached or on their way, many per query; a request that
opens a few scattered files costs one small window per directory instead of every
file there.  The same shape as the kernel's readahead of a file's pages
(``mm/readahead.c``: an initial window, doubled while the reads stay sequential),
applied to the names of a directory.

Pure bookkeeping: :class:`DirectoryReadahead` says which names to fetch; the daemon
(:meth:`cached.ops_metadata.MetadataOps._fetch_siblings`) fetches them.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

#: Files the first lookup in a directory asks for (those named right after it).
FIRST_WINDOW = 8
#: Most files one window asks for (one ``get_inodes_content`` query,
#: :data:`cached.store.INODES_PER_QUERY`).
LARGEST_WINDOW = 64
#: Directories remembered as listed without their files' bytes; the least recently
#: listed or looked into are forgotten past it (they get no readahead then).
DIRECTORIES_KEPT = 4096
#: Directories whose window is kept (each with its files' names, up to
#: :data:`cached.ops_metadata.PREFETCH_LIMIT`): a few readers at a time go through
#: directories.  The least recently looked into lose theirs past it, and their next
#: lookup starts a first window again.
WINDOWS_KEPT = 256


@dataclass
class _Window:
    names: list[bytes]  # the directory's files, sorted, when its first lookup came
    until: int  # names[:until] were asked for or passed by
    size: int  # files the last window asked for


class DirectoryReadahead:
    """Per directory (any hashable key), the files to fetch ahead of each lookup.

    :meth:`listed` marks a directory whose listing was loaded without its files'
    bytes; only those get readahead.  :meth:`looked_up` returns, for a lookup of
    ``name``, the names to fetch now (often none).  Memory: the keys of at most
    ``kept`` directories, and the names of the files of at most ``windows`` of them.
    """

    def __init__(
        self,
        first: int = FIRST_WINDOW,
        largest: int = LARGEST_WINDOW,
        kept: int = DIRECTORIES_KEPT,
        windows: int = WINDOWS_KEPT,
    ) -> None:
        self.first = first
        self.largest = largest
        self.kept = kept
        self.windows = windows
        #: Listed directories without a window yet (keys only), least recent first.
        self._listed: OrderedDict[Hashable, None] = OrderedDict()
        #: Listed directories looked into, and their windows, least recent first.
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()

    def listed(self, key: Hashable) -> None:
        """Directory ``key`` was listed (again) without its files' bytes: readahead
        starts over at its next lookup."""
        self._windows.pop(key, None)
        self._mark(key)

    def forget(self, key: Hashable) -> None:
        """No readahead for ``key`` (its listing was loaded with its files' bytes)."""
        self._listed.pop(key, None)
        self._windows.pop(key, None)

    def _mark(self, key: Hashable) -> None:
        self._listed[key] = None
        self._listed.move_to_end(key)
        while len(self._listed) > self.kept:
            self._listed.popitem(last=False)

    def looked_up(
        self, key: Hashable, name: bytes, files: Callable[[], list[bytes]]
    ) -> list[bytes]:
        """The names of files to fetch now that ``name`` was looked up in ``key``.

        ``files()`` gives the directory's regular files (any order); it is called at
        the directory's first lookup (and again if its window was dropped since).
        Empty when ``key`` is not a listed directory, or when the reader is not near
        the end of what was asked for.
        """
        window = self._windows.get(key)
        if window is None:
            if key not in self._listed:
                return []
            del self._listed[key]
            names = sorted(files())
            at = bisect.bisect_right(names, name)
            self._windows[key] = _Window(names, at + self.first, self.first)
            while len(self._windows) > self.windows:
                dropped, _ = self._windows.popitem(last=False)
                self._mark(dropped)  # still listed without bytes: a first window again
            return names[at : at + self.first]
        self._windows.move_to_end(key)
        at = bisect.bisect_right(window.names, name)
        if window.until >= len(window.names) or at < window.until - window.size // 2:
            return []
        start = max(window.until, at)
        window.size = min(2 * window.size, self.largest)
        window.until = start + window.size
        return window.names[start : window.until]
