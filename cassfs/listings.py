"""Directory listings the front reuses, so that a warm ``opendir`` asks nobody.

A listing (every ``(name, inode)`` of a directory, as the daemon's ``readdir`` gave it) is
reused for ``lifetime`` seconds: the mount's entry timeout, as long as the kernel may keep
the dentries and attributes that came with it.  What could make it wrong drops it first:

- a change made through this mount (any create, removal, rename, attribute or content
  change): :meth:`Listings.drop_all`, before and after the change is asked for;
- a change told by the daemon (another mount of the daemon, or another host through the
  change feed): :meth:`Listings.drop` with the inodes and parents it names, which drops
  the listings of those directories and every listing holding one of those inodes (a
  listing carries its entries' attributes);
- a purge of the daemon's cache, or a reconnect: :meth:`Listings.drop_all`.

Entries are listed in :func:`readdir_cookie` order, which makes a readdir's offsets
stable while the directory changes (the front sorts a listing when it loads it).

A load that began before a drop is not kept (:meth:`Listings.generation`): its answer may
predate the change.  At most :data:`MAX_ENTRIES` entries are kept in all; the listing used
least recently goes first.  Pure logic over the caller's clock (seconds), tested with plain
data.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from cached.model import Inode

#: Entries kept in all listings together (about 300 bytes each).
MAX_ENTRIES = 100_000


def readdir_cookie(name: bytes) -> int:
    """The readdir offset (``next_id``) of the entry after ``name``: 1 to 2**63 - 1, the
    same for a name whatever else the directory holds (a hash of it, as ext4's and NFS's
    cookies are).  A listing in cookie order continued after any cookie neither repeats nor
    skips a name that stayed, as readdir(3) and pyfuse3's ``readdir_reply`` ask, even when
    the listing changed or was loaded again in between.  Two names of one directory
    sharing a cookie (about 1 in 2 * 10**7 for a million names) could make a continuation that
    starts between them skip the second."""
    cookie = int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big") >> 1
    return cookie or 1


def in_cookie_order(entries: Iterable[tuple[bytes, Inode]]) -> list[tuple[bytes, Inode]]:
    """``entries`` (``(name, inode)``) sorted by :func:`readdir_cookie` of the name."""
    return sorted(entries, key=lambda entry: readdir_cookie(entry[0]))


@dataclass(frozen=True)
class Listing:
    """One directory's entries, reusable until ``deadline`` (clock seconds)."""

    deadline: float
    entries: list[tuple[bytes, Inode]]
    inos: frozenset[int]


class Listings:
    """Reusable listings by directory inode; ``lifetime`` in seconds (0: none kept)."""

    def __init__(self, lifetime: float, max_entries: int = MAX_ENTRIES) -> None:
        self.lifetime = lifetime
        self.max_entries = max_entries
        self._by_dir: OrderedDict[int, Listing] = OrderedDict()
        self._entries = 0
        #: Bumped by every drop: a load keeps its answer only if it did not move meanwhile.
        self.generation = 0

    def __len__(self) -> int:
        return len(self._by_dir)

    def get(self, ino: int, now: float) -> list[tuple[bytes, Inode]] | None:
        """The entries of directory ``ino`` if a listing of it holds at ``now``, else None."""
        listing = self._by_dir.get(ino)
        if listing is None:
            return None
        if listing.deadline <= now:
            self._remove(ino)
            return None
        self._by_dir.move_to_end(ino)
        return listing.entries

    def put(
        self, ino: int, entries: list[tuple[bytes, Inode]], now: float, generation: int
    ) -> None:
        """Keep ``entries`` of directory ``ino``, loaded since ``generation`` was read.

        Not kept when a drop happened since (the answer may predate the change), when
        the lifetime is 0, or when the listing alone is larger than the limit.
        """
        if generation != self.generation or self.lifetime <= 0 or len(entries) > self.max_entries:
            return
        self._remove(ino)
        inos = frozenset(inode.ino for _, inode in entries)
        self._by_dir[ino] = Listing(now + self.lifetime, entries, inos)
        self._entries += len(entries)
        while self._entries > self.max_entries:
            self._remove(next(iter(self._by_dir)))

    def drop(self, inos: Iterable[int], names: Iterable[tuple[int, bytes]] = ()) -> None:
        """Drop the listings of the directories ``inos`` and of the parents of ``names``
        (``(parent, name)`` made, removed or moved), and every listing holding one of
        those inodes, or the inode a listed name named, as an entry (a directory removed
        or moved elsewhere loses its own listing too)."""
        changed = set(inos)
        for parent, name in names:
            changed.add(parent)
            listing = self._by_dir.get(parent)
            if listing is not None:
                changed.update(inode.ino for entry, inode in listing.entries if entry == name)
        self.generation += 1
        if not changed:
            return
        for ino in [d for d, got in self._by_dir.items() if d in changed or got.inos & changed]:
            self._remove(ino)

    def drop_all(self) -> None:
        """Drop every listing (a change through this mount, a purge, a reconnect)."""
        self.generation += 1
        self._by_dir.clear()
        self._entries = 0

    def _remove(self, ino: int) -> None:
        listing = self._by_dir.pop(ino, None)
        if listing is not None:
            self._entries -= len(listing.entries)
