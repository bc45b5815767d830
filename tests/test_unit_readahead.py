"""Readahead through a directory's files (cached/readahead.py): which names each lookup
asks to fetch."""

from __future__ import annotations

from cached.readahead import DENSE_LOOKUPS, DirectoryReadahead

FILES = [f"f{i:02}".encode() for i in range(40)]


def files() -> list[bytes]:
    return list(reversed(FILES))  # any order: the readahead sorts


def test_a_directory_not_listed_gets_no_readahead() -> None:
    readahead = DirectoryReadahead()
    assert readahead.looked_up("d", b"f00", files) == []
    readahead.listed("e")
    assert readahead.looked_up("d", b"f00", files) == []


def test_a_reader_in_name_order_asks_for_each_file_once_in_doubling_windows() -> None:
    readahead = DirectoryReadahead(first=4, largest=16)
    readahead.listed("d")
    asked: list[list[bytes]] = []
    for name in FILES:
        window = readahead.looked_up("d", name, files)
        if window:
            asked.append(window)
    assert [len(window) for window in asked] == [4, 8, 16, 11]
    assert [name for window in asked for name in window] == FILES[1:]
    # Each window was asked for before the reader came to it.
    assert asked[1][0] == b"f05" and asked[2][0] == b"f13"


def test_a_scattered_reader_costs_one_first_window() -> None:
    readahead = DirectoryReadahead(first=4, largest=16)
    readahead.listed("d")
    assert readahead.looked_up("d", b"f10", files) == FILES[11:15]
    assert readahead.looked_up("d", b"f02", files) == []  # behind what was asked for
    assert readahead.looked_up("d", b"f11", files) == []  # not yet near its end
    # A jump past it asks from where the reader is.
    assert readahead.looked_up("d", b"f30", files) == FILES[31:39]


def test_files_are_listed_once_and_a_new_listing_starts_over() -> None:
    calls = 0

    def counted() -> list[bytes]:
        nonlocal calls
        calls += 1
        return FILES

    readahead = DirectoryReadahead(first=4, largest=16)
    readahead.listed("d")
    for name in FILES:
        readahead.looked_up("d", name, counted)
    assert calls == 1
    readahead.listed("d")
    assert readahead.looked_up("d", b"f20", counted) == FILES[21:25]
    assert calls == 2


def test_the_least_recently_listed_directory_is_forgotten_first() -> None:
    readahead = DirectoryReadahead(first=2, kept=2)
    readahead.listed("a")
    readahead.listed("b")
    readahead.listed("c")  # "a" goes
    assert readahead.looked_up("a", b"f00", files) == []
    assert readahead.looked_up("b", b"f00", files) == FILES[1:3]


def test_a_directory_whose_window_was_dropped_starts_a_first_window_again() -> None:
    readahead = DirectoryReadahead(first=2, windows=1)
    readahead.listed("a")
    readahead.listed("b")
    assert readahead.looked_up("a", b"f00", files) == FILES[1:3]
    assert readahead.looked_up("b", b"f10", files) == FILES[11:13]  # "a" loses its window
    assert readahead.looked_up("a", b"f01", files) == FILES[2:4]  # not f03: started over


def test_a_directory_listed_for_a_lookup_waits_for_a_reader_in_name_order() -> None:
    """Listed for a lookup: a lookup in the middle asks for nothing, nor one that skips
    a file; the file right after the last one looked up starts the first window."""
    readahead = DirectoryReadahead(first=4, largest=16)
    readahead.listed("d", looked_up=True)
    assert readahead.looked_up("d", b"f10", files) == []
    assert readahead.looked_up("d", b"f12", files) == []  # skipped f11
    assert readahead.looked_up("d", b"f13", files) == FILES[14:18]
    assert readahead.looked_up("d", b"f14", files) == []  # within what was asked for
    assert readahead.looked_up("d", b"f16", files) == FILES[18:26]  # doubled


def test_a_lookup_of_the_first_file_starts_a_window_at_once() -> None:
    readahead = DirectoryReadahead(first=4, largest=16)
    readahead.listed("d", looked_up=True)
    assert readahead.looked_up("d", b"f00", files) == FILES[1:5]


def test_a_scattered_reader_of_a_directory_listed_for_a_lookup_fetches_nothing_ahead() -> None:
    """Until its DENSE_LOOKUPS-th lookup, which asks for every file of the directory."""
    readahead = DirectoryReadahead(first=4, largest=16)
    readahead.listed("d", looked_up=True)
    scattered = [b"f30", b"f07", b"f21", b"f02", b"f15"]
    asked = [readahead.looked_up("d", name, files) for name in scattered]
    assert asked[: DENSE_LOOKUPS - 1] == [[]] * (DENSE_LOOKUPS - 1)
    assert asked[DENSE_LOOKUPS - 1] == FILES
    assert asked[DENSE_LOOKUPS:] == [[]] * (len(scattered) - DENSE_LOOKUPS)


def test_a_dropped_window_of_a_directory_listed_for_a_lookup_waits_again() -> None:
    readahead = DirectoryReadahead(first=2, windows=1)
    readahead.listed("a", looked_up=True)
    readahead.listed("b")
    assert readahead.looked_up("a", b"f10", files) == []
    assert readahead.looked_up("b", b"f10", files) == FILES[11:13]  # "a" loses its window
    assert readahead.looked_up("a", b"f20", files) == []  # still waits for a reader in order
