"""Unit tests of cassfs.lookups.LookupCounts."""

from __future__ import annotations

from cached.model import ROOT_INO
from cassfs.lookups import LookupCounts


def test_root_is_inode_one() -> None:
    assert ROOT_INO == 1


def test_add_accumulates() -> None:
    counts = LookupCounts()
    assert counts.count(5) == 0
    counts.add(5)
    counts.add(5)
    counts.add(5, 3)
    counts.add(6, 2)
    assert counts.count(5) == 5
    assert counts.count(6) == 2
    assert sorted(counts.known()) == [5, 6]


def test_forget_partially_then_to_zero() -> None:
    counts = LookupCounts()
    counts.add(7, 4)
    assert counts.forget(7, 1) is False
    assert counts.count(7) == 3
    assert counts.forget(7, 2) is False
    assert counts.count(7) == 1
    assert counts.forget(7, 1) is True
    assert counts.count(7) == 0
    assert counts.known() == []


def test_over_forget_clamps_at_zero() -> None:
    counts = LookupCounts()
    counts.add(9, 2)
    assert counts.forget(9, 10) is True
    assert counts.count(9) == 0
    assert 9 not in counts.known()
    # Counting starts again from zero, not from a negative number.
    counts.add(9)
    assert counts.count(9) == 1


def test_forget_of_an_unknown_inode_reports_forgotten() -> None:
    counts = LookupCounts()
    assert counts.forget(12345, 1) is True
    assert counts.count(12345) == 0
    assert counts.known() == []


def test_root_never_reports_forgotten() -> None:
    counts = LookupCounts()
    counts.add(ROOT_INO, 2)
    assert counts.forget(ROOT_INO, 1) is False
    assert counts.count(ROOT_INO) == 1
    assert counts.forget(ROOT_INO, 1) is False
    assert counts.forget(ROOT_INO, 100) is False
    assert counts.count(ROOT_INO) == 0


def test_inodes_are_independent() -> None:
    counts = LookupCounts()
    counts.add(2, 1)
    counts.add(3, 1)
    assert counts.forget(2, 1) is True
    assert counts.count(3) == 1
    assert counts.known() == [3]


def test_clear() -> None:
    counts = LookupCounts()
    counts.add(ROOT_INO)
    counts.add(4, 3)
    counts.clear()
    assert counts.known() == []
    assert counts.count(4) == 0
    assert counts.count(ROOT_INO) == 0
