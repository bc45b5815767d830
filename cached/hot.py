"""Small contents kept in memory beside diskcache, least recently used first out.

A cold read fetches a directory's small files ahead of the opens (readahead), and the
writer puts them in diskcache a moment later; each open then read them back through
the cache's one diskcache thread, queued behind metadata writes.  Kept here too, an
open of a small file is answered without a thread hop.  Contents are keyed by their
SHA-256 (never change), so a copy here is never stale; the cache drops it with the disk's
copy on request (``cassfs cache evict``, ``cassfs cache purge``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

#: Contents of at most this many bytes are kept (a PHP file's median is 4 kB).
HOT_ITEM_LIMIT = 64 * 1024
#: Most bytes kept in all.
HOT_BYTES = 32 * 1024 * 1024


class HotContents:
    """An LRU of ``key -> bytes`` holding at most ``limit`` bytes, each item at most
    ``item_limit`` bytes (larger ones are not kept).  Use from one thread."""

    def __init__(self, limit: int = HOT_BYTES, item_limit: int = HOT_ITEM_LIMIT) -> None:
        self.limit = limit
        self.item_limit = item_limit
        self.bytes = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> bytes | None:
        """The bytes of ``key`` (now the most recently used), or None."""
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: Hashable, data: bytes) -> None:
        """Keep ``data`` under ``key`` if small enough, dropping the least recently used
        items past the byte limit."""
        if len(data) > self.item_limit or key in self._items:
            return
        self._items[key] = data
        self.bytes += len(data)
        while self.bytes > self.limit:
            _key, dropped = self._items.popitem(last=False)
            self.bytes -= len(dropped)

    def discard(self, key: Hashable) -> None:
        """Forget ``key`` if kept."""
        data = self._items.pop(key, None)
        if data is not None:
            self.bytes -= len(data)

    def clear(self) -> None:
        """Forget everything."""
        self._items.clear()
        self.bytes = 0
