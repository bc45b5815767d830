"""Unit tests of cached.stats: counters kept in memory and persisted in a diskcache dir."""

from __future__ import annotations

import threading
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


def test_a_snapshot_counts_deltas_a_flush_took_and_has_not_persisted_yet(
    tmp_path: Path,
) -> None:
    """What ``stats`` answers (cached/service.py): right during the daemon's flush, where
    the persisted totals plus pending deltas miss what the flush holds."""
    counters = Counters(tmp_path / "c")
    try:
        counters.add("bytes_fetched", 9785)
        pending = counters.take_pending()  # the flush, before its thread persists
        assert counters.totals()["bytes_fetched"] == 0
        assert counters.snapshot()["bytes_fetched"] == 9785
        counters.persist(pending)
        counters.add("bytes_fetched", 5)
        assert counters.snapshot() == counters.totals() == {**ZEROS, "bytes_fetched": 9790}
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


def test_snapshot_includes_persisted_totals_and_is_read_safely_from_a_thread(
    tmp_path: Path,
) -> None:
    first = Counters(tmp_path / "c")
    first.add("hits", 3)
    first.close()
    counters = Counters(tmp_path / "c")
    try:
        counters.add("bytes_fetched", 10)
        assert counters.snapshot() == {**ZEROS, "hits": 3, "bytes_fetched": 10}
        counters.take_pending()  # detached, not persisted yet: the snapshot keeps it
        assert counters.snapshot()["bytes_fetched"] == 10
        seen: list[int] = []
        stop = threading.Event()

        def scrape() -> None:  # as the metrics server's thread does
            while not stop.is_set():
                seen.append(counters.snapshot()["misses"])

        reader = threading.Thread(target=scrape)
        reader.start()
        for _ in range(20_000):
            counters.add("misses")
        stop.set()
        reader.join()
        assert seen == sorted(seen)  # never goes back
        assert counters.snapshot()["misses"] == 20_000
    finally:
        counters.close()
