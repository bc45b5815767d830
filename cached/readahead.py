"""Readahead through a directory: which small files' bytes to fetch as lookups go by.

A directory listed without its files' bytes (a stat of it counted its subdirectories,
as a path walk does) gets them fetched only once files in it are looked up, and only
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
#: Directories whose readahead is remembered; the least recently looked into are
#: forgotten past it (their next lookup starts a first window again).
DIRECTORIES_KEPT = 4096


@dataclass
class _Window:
    names: list[bytes]  # the directory's files, sorted, when its first lookup came
    until: int  # names[:until] were asked for or passed by
    size: int  # files the last window asked for


class DirectoryReadahead:
    """Per directory (any hashable key), the files to fetch ahead of each lookup.

    :meth:`listed` marks a directory whose listing was loaded without its files'
    bytes; only those get readahead.  :meth:`looked_up` returns, for a lookup of
    ``name``, the names to fetch now (often none).
    """

    def __init__(
        self,
        first: int = FIRST_WINDOW,
        largest: int = LARGEST_WINDOW,
        kept: int = DIRECTORIES_KEPT,
    ) -> None:
        self.first = first
        self.largest = largest
        self.kept = kept
        #: Listed directories: None until their first lookup, then its window.
        self._dirs: OrderedDict[Hashable, _Window | None] = OrderedDict()

    def listed(self, key: Hashable) -> None:
        """Directory ``key`` was listed (again) without its files' bytes: readahead
        starts over at its next lookup."""
        self._dirs[key] = None
        self._dirs.move_to_end(key)
        while len(self._dirs) > self.kept:
            self._dirs.popitem(last=False)

    def forget(self, key: Hashable) -> None:
        """No readahead for ``key`` (its listing was loaded with its files' bytes)."""
        self._dirs.pop(key, None)

    def looked_up(
        self, key: Hashable, name: bytes, files: Callable[[], list[bytes]]
    ) -> list[bytes]:
        """The names of files to fetch now that ``name`` was looked up in ``key``.

        ``files()`` gives the directory's regular files (any order); it is called
        once per directory, at its first lookup.  Empty when ``key`` is not a listed
        directory, or when the reader is not near the end of what was asked for.
        """
        if key not in self._dirs:
            return []
        self._dirs.move_to_end(key)
        window = self._dirs[key]
        if window is None:
            names = sorted(files())
            at = bisect.bisect_right(names, name)
            self._dirs[key] = _Window(names, at + self.first, self.first)
            return names[at : at + self.first]
        at = bisect.bisect_right(window.names, name)
        if window.until >= len(window.names) or at < window.until - window.size // 2:
            return []
        start = max(window.until, at)
        window.size = min(2 * window.size, self.largest)
        window.until = start + window.size
        return window.names[start : window.until]
