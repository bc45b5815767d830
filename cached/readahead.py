"""Readahead through a directory: which small files' bytes to fetch as lookups go by.

A directory's listing is loaded without its files' inodes or bytes when a lookup needs
it (a path resolved through it, a file in it opened), and with their inodes only when a
stat walk counts its subdirectories.  Either way the bytes come only once files in it
are looked up, and only ahead of the reader, in windows of names: a window asks for the
files named after the lookup that started it; a lookup that comes within half a window
of the end of what was asked for asks for the next window, twice as large (up to
:data:`LARGEST_WINDOW`).  A reader going through a directory in name order (``cp -r``,
``tar``, a cold read of a tree) then finds each file's bytes cached or on their way,
many per query.

Where the first window starts depends on how the directory was listed:

- Listed by a walk (:meth:`DirectoryReadahead.listed`): at its first lookup, with
  :data:`FIRST_WINDOW` files (a walk that goes on to read does so in name order).
- Listed for a lookup (``looked_up=True``): at the lookup of its first file, or at a
  lookup of the file named right after the one looked up before (a reader in name
  order); a lookup elsewhere asks for nothing.  A scattered reader, such as a PHP
  request that includes a few files of many directories, then fetches the files it
  opens and no others (the issue 10 figures: a 300-file request fetched 20 MB for the
  5 MB it read when every listing brought all its files).  The
  :data:`DENSE_LOOKUPS`-th lookup in such a directory asks for all its files: a
  reader that uses that much of it (an application's includes) likely uses the rest.

The same shape as the kernel's readahead of a file's pages (``mm/readahead.c``: an
initial window, doubled while the reads stay sequential, none for random reads),
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
#: Lookups in a directory listed for a lookup, without a window started, after which
#: all its files are asked for.
DENSE_LOOKUPS = 4
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
    size: int  # files the last window asked for; 0: none yet (listed for a lookup)
    lookups: int = 1  # lookups in the directory while ``size`` is 0


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
        #: Listed directories without a window yet, least recent first: whether each
        #: was listed for a lookup.
        self._listed: OrderedDict[Hashable, bool] = OrderedDict()
        #: Listed directories looked into, and their windows, least recent first.
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()

    def listed(self, key: Hashable, looked_up: bool = False) -> None:
        """Directory ``key`` was listed (again) without its files' bytes: readahead
        starts over at its next lookup.  ``looked_up``: listed for a lookup, so the
        first window waits for a reader in name order (see the module's text)."""
        self._windows.pop(key, None)
        self._mark(key, looked_up)

    def _mark(self, key: Hashable, looked_up: bool) -> None:
        self._listed[key] = looked_up
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
            looked_up = self._listed.pop(key)
            names = sorted(files())
            at = bisect.bisect_right(names, name)
            first = 0 if looked_up and at != 1 else self.first
            self._windows[key] = _Window(names, at + first, first)
            while len(self._windows) > self.windows:
                dropped, lost = self._windows.popitem(last=False)
                # still listed without bytes: a first window again
                self._mark(dropped, lost.size == 0)
            return names[at : at + first]
        self._windows.move_to_end(key)
        at = bisect.bisect_right(window.names, name)
        if window.size == 0:  # listed for a lookup, no window yet
            window.lookups += 1
            if window.lookups >= DENSE_LOOKUPS:
                window.size, window.until = self.largest, len(window.names)
                return window.names
            if at != window.until + 1:  # not the file after the last one looked up
                window.until = at
                return []
            window.size, window.until = self.first, at + self.first
            return window.names[at : window.until]
        if window.until >= len(window.names) or at < window.until - window.size // 2:
            return []
        start = max(window.until, at)
        window.size = min(2 * window.size, self.largest)
        window.until = start + window.size
        return window.names[start : window.until]
