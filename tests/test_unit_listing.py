"""Unit tests of the cached directory listings that answer lookups (cached.cache)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cached.cache import Freshness, LocalCache
from cached.model import DIRECTORY, REGULAR
from cached.stats import Counters

T = (1, "prod")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(tmp_path: Path, clock: Clock) -> Iterator[LocalCache]:
    local = LocalCache(tmp_path / "c", 64 * 1024 * 1024, 5.0, Counters(tmp_path / "n"), clock)
    yield local
    local.close()


async def test_index_answers_names_and_expires_with_the_listing(
    cache: LocalCache, clock: Clock
) -> None:
    await cache.put_listing(T, 1, [(b"a", 10, REGULAR), (b"d", 11, DIRECTORY)])
    state, index = await cache.get_listing_index(T, 1)
    assert state is Freshness.FRESH
    assert index == {b"a": (10, REGULAR), b"d": (11, DIRECTORY)}
    clock.now += 5.0
    state, index = await cache.get_listing_index(T, 1)
    assert state is Freshness.STALE and index is not None and b"a" in index


async def test_local_changes_update_the_listing_in_order_without_refreshing_it(
    cache: LocalCache, clock: Clock
) -> None:
    await cache.put_listing(T, 1, [(b"b", 2, REGULAR), (b"d", 4, REGULAR)])
    await cache.get_listing_index(T, 1)  # build the index, so the update must refresh it
    clock.now += 4.0
    await cache.update_listing(T, 1, b"c", 3, REGULAR)
    await cache.update_listing(T, 1, b"a", 1, DIRECTORY)
    await cache.update_listing(T, 1, b"d", 0, 0)  # removed
    state, items = await cache.get_listing(T, 1)
    assert items == [(b"a", 1, DIRECTORY), (b"b", 2, REGULAR), (b"c", 3, REGULAR)]
    _, index = await cache.get_listing_index(T, 1)
    assert index == {b"a": (1, DIRECTORY), b"b": (2, REGULAR), b"c": (3, REGULAR)}
    clock.now += 1.0  # the listing was fetched 5 s ago: local changes did not renew it
    state, _ = await cache.get_listing(T, 1)
    assert state is Freshness.STALE


async def test_update_of_an_uncached_listing_creates_nothing(cache: LocalCache) -> None:
    await cache.update_listing(T, 7, b"x", 3, REGULAR)
    assert await cache.get_listing(T, 7) == (Freshness.ABSENT, None)
    assert await cache.get_listing_index(T, 7) == (Freshness.ABSENT, None)


async def test_large_directory_mark_lasts_one_ttl(cache: LocalCache, clock: Clock) -> None:
    assert not cache.is_large_dir(T, 9)
    cache.mark_large_dir(T, 9)
    assert cache.is_large_dir(T, 9)
    assert not cache.is_large_dir((2, "prod"), 9)
    clock.now += 5.0
    assert not cache.is_large_dir(T, 9)


async def test_listing_from_before_a_restart_is_kept_but_answers_nothing_unchecked(
    tmp_path: Path, clock: Clock
) -> None:
    # Written behind the reply, so disk may be older than what was acknowledged: a new
    # daemon must revalidate the listing before it answers a negative lookup from it.
    first = LocalCache(tmp_path / "c", 64 * 1024 * 1024, 5.0, Counters(tmp_path / "n"), clock)
    await first.put_listing(T, 1, [(b"x", 5, REGULAR)])
    first.close()
    clock.now += 0.5  # well within the TTL
    second = LocalCache(tmp_path / "c", 64 * 1024 * 1024, 5.0, Counters(tmp_path / "n"), clock)
    try:
        state, index = await second.get_listing_index(T, 1)
        assert state is Freshness.STALE and index == {b"x": (5, REGULAR)}
    finally:
        second.close()
