"""Unit tests of cached.stats: counters kept in memory and persisted in a diskcache dir."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cached.stats import NAMES, Counters, read_totals

ZEROS = dict.fromkeys(NAMES, 0)


def test_new_counters_are_zero(tmp_path: Path) -> None:
    counters = Counters(tmp_path / "c")
    try:
        assert counters.totals() == ZEROS
        assert counters.take_pending() == Counter()
    finally:
        counters.close()


def test_read_totals_on_a_new_dir_is_all_zeros(tmp_path: Path) -> None:
    assert read_totals(tmp_path / "never-used") == ZEROS


def test_add_take_pending_persist_totals(tmp_path: Path) -> None:
    counters = Counters(tmp_path / "c")
    try:
        counters.add("hits")
        counters.add("hits")
        counters.add("bytes_served", 1000)
        counters.add("misses", 0)
        # Pending deltas count in totals before they are persisted.
        assert counters.totals() == {**ZEROS, "hits": 2, "bytes_served": 1000}
        pending = counters.take_pending()
        assert pending == Counter({"hits": 2, "bytes_served": 1000})
        # Detached: neither pending any more nor persisted yet.
        assert counters.take_pending() == Counter()
        assert counters.totals() == ZEROS
        counters.persist(pending)
        assert counters.totals() == {**ZEROS, "hits": 2, "bytes_served": 1000}
        counters.add("hits", 3)
        counters.persist(Counter({"evictions": 4, "purges": 0}))
        assert counters.totals() == {**ZEROS, "hits": 5, "bytes_served": 1000, "evictions": 4}
        counters.flush()
        assert counters.take_pending() == Counter()
        assert counters.totals() == {**ZEROS, "hits": 5, "bytes_served": 1000, "evictions": 4}
    finally:
        counters.close()


def test_totals_persist_across_instances(tmp_path: Path) -> None:
    first = Counters(tmp_path / "c")
    first.add("flushes", 2)
    first.add("bytes_written", 4096)
    first.flush()
    first.add("purges")  # pending: close() flushes it
    first.close()
    expected = {**ZEROS, "flushes": 2, "bytes_written": 4096, "purges": 1}
    assert read_totals(tmp_path / "c") == expected
    second = Counters(tmp_path / "c")
    try:
        assert second.totals() == expected
        second.add("flushes")
        second.flush()
        assert second.totals() == {**expected, "flushes": 3}
    finally:
        second.close()
    assert read_totals(tmp_path / "c") == {**expected, "flushes": 3}


def test_unflushed_deltas_are_not_persisted(tmp_path: Path) -> None:
    counters = Counters(tmp_path / "c")
    try:
        counters.add("hits", 7)
        assert read_totals(tmp_path / "c") == ZEROS
        counters.flush()
        assert read_totals(tmp_path / "c") == {**ZEROS, "hits": 7}
    finally:
        counters.close()


@pytest.mark.parametrize("name", ["hit", "entries", "bytes_cached", "", "HITS"])
def test_unknown_names_raise_key_error(tmp_path: Path, name: str) -> None:
    counters = Counters(tmp_path / "c")
    try:
        with pytest.raises(KeyError):
            counters.add(name)
        assert counters.totals() == ZEROS
    finally:
        counters.close()
