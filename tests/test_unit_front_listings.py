"""Unit tests of the listings the front reuses (cassfs.listings), over plain data."""

from __future__ import annotations

from cached.model import REGULAR, Inode
from cassfs.listings import Listings


def inode(ino: int) -> Inode:
    return Inode(
        ino=ino, kind=REGULAR, mode=0o100644, uid=0, gid=0, size=1, atime_ns=0, mtime_ns=1,
        ctime_ns=1, parent=1, nlink=1, content_id=b"", chunk_size=1 << 20, target=b"",
    )  # fmt: skip


def entries(*inos: int) -> list[tuple[bytes, Inode]]:
    return [(f"f{ino}".encode(), inode(ino)) for ino in inos]


def test_a_listing_is_reused_until_its_lifetime_ends() -> None:
    listings = Listings(lifetime=60.0)
    listings.put(1, entries(10, 11), now=100.0, generation=listings.generation)
    assert listings.get(1, now=159.9) == entries(10, 11)
    assert listings.get(1, now=160.0) is None
    assert len(listings) == 0


def test_no_listing_is_kept_with_a_lifetime_of_zero() -> None:
    listings = Listings(lifetime=0.0)
    listings.put(1, entries(10), now=0.0, generation=listings.generation)
    assert listings.get(1, now=0.0) is None


def test_a_load_that_began_before_a_drop_is_not_kept() -> None:
    listings = Listings(lifetime=60.0)
    generation = listings.generation
    listings.drop([99])  # a change told while the load was in flight
    listings.put(1, entries(10), now=0.0, generation=generation)
    assert listings.get(1, now=1.0) is None
    listings.put(1, entries(10), now=0.0, generation=listings.generation)
    assert listings.get(1, now=1.0) == entries(10)


def test_a_change_drops_the_directorys_listing_and_every_listing_holding_the_inode() -> None:
    listings = Listings(lifetime=60.0)
    for directory, children in ((1, (10, 11)), (2, (20,)), (3, (11, 30)), (4, (40,))):
        listings.put(directory, entries(*children), now=0.0, generation=listings.generation)
    listings.drop([11, 2])  # inode 11 changed; a name in directory 2 changed
    assert [d for d in (1, 2, 3, 4) if listings.get(d, now=1.0) is not None] == [4]
    listings.drop_all()
    assert listings.get(4, now=1.0) is None


def test_the_least_recently_used_listings_go_past_the_entry_limit() -> None:
    listings = Listings(lifetime=60.0, max_entries=4)
    listings.put(1, entries(10, 11), now=0.0, generation=listings.generation)
    listings.put(2, entries(20), now=0.0, generation=listings.generation)
    assert listings.get(1, now=1.0) is not None  # 1 is now the most recently used
    listings.put(3, entries(30, 31), now=0.0, generation=listings.generation)
    assert listings.get(2, now=1.0) is None
    assert listings.get(1, now=1.0) is not None and listings.get(3, now=1.0) is not None
    listings.put(4, entries(40, 41, 42, 43, 44), now=0.0, generation=listings.generation)
    assert listings.get(4, now=1.0) is None  # larger than the limit alone: never kept


def test_a_removed_or_moved_name_drops_the_listing_of_what_it_named() -> None:
    """A directory removed by another host (told as its parent's name) loses its own
    listing as well as its parent's."""
    listings = Listings(lifetime=60.0)
    listings.put(1, [(b"sub", inode(2))], now=0.0, generation=listings.generation)
    listings.put(2, entries(20), now=0.0, generation=listings.generation)
    listings.put(3, entries(30), now=0.0, generation=listings.generation)
    listings.drop([], [(1, b"sub")])
    assert [d for d in (1, 2, 3) if listings.get(d, now=1.0) is not None] == [3]
