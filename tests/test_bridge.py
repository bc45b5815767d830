"""The driver-to-trio bridge (``cached/bridge.py``) against the live node: every page of
a paged result, the driver's errors raised in the calling task, a cancelled query
leaving the loop serving, and the event loop never blocked while a query runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import trio
from cassandra import InvalidRequest
from cassandra.cluster import Session
from cassandra.query import SimpleStatement

from cached.bridge import execute
from cached.store import ContactPoints, make_cluster
from tests.conftest import KEYSPACE


@pytest.fixture
def session(cassandra: str) -> Iterator[Session]:
    cluster = make_cluster(ContactPoints.parse(cassandra))
    try:
        yield cluster.connect(KEYSPACE)
    finally:
        cluster.shutdown()


@pytest.fixture
def table(session: Session) -> Iterator[str]:
    """A fresh table of 25 rows in one partition: ``k = 1``, ``c`` 0..24, ``v = c * c``."""
    name = f"bridge_{uuid.uuid4().hex[:8]}"
    session.execute(f"CREATE TABLE {name} (k int, c int, v int, PRIMARY KEY (k, c))")
    try:
        insert = session.prepare(f"INSERT INTO {name} (k, c, v) VALUES (1, ?, ?)")
        for c in range(25):
            session.execute(insert, (c, c * c))
        yield name
    finally:
        session.execute(f"DROP TABLE IF EXISTS {name}")


async def test_every_page_of_a_paged_result_comes_back_in_order(
    session: Session, table: str
) -> None:
    statement = SimpleStatement(f"SELECT c, v FROM {table} WHERE k = 1", fetch_size=4)
    rows = await execute(session, statement)
    assert [(r["c"], r["v"]) for r in rows] == [(c, c * c) for c in range(25)]  # 7 pages
    # an exact multiple of the page size ends on a page that says there is no more
    statement = SimpleStatement(f"SELECT c FROM {table} WHERE k = 1 AND c < 8", fetch_size=4)
    assert [r["c"] for r in await execute(session, statement)] == list(range(8))


async def test_a_write_returns_no_rows_and_a_driver_error_is_raised_in_the_task(
    session: Session, table: str
) -> None:
    assert await execute(session, f"UPDATE {table} SET v = 0 WHERE k = 1 AND c = 3") == []
    rows = await execute(session, f"SELECT v FROM {table} WHERE k = 1 AND c = 3")
    assert [r["v"] for r in rows] == [0]
    with pytest.raises(InvalidRequest, match="no_such_column"):
        await execute(session, f"SELECT no_such_column FROM {table}")


async def test_queries_run_concurrently_without_blocking_the_loop_and_a_cancel_is_clean(
    session: Session, table: str
) -> None:
    ticks = 0
    results: dict[int, list[int]] = {}

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async def one(i: int) -> None:
        rows = await execute(session, f"SELECT v FROM {table} WHERE k = 1 AND c = {i}")
        results[i] = [r["v"] for r in rows]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        async with trio.open_nursery() as queries:
            for i in range(25):
                queries.start_soon(one, i)
        nursery.cancel_scope.cancel()
    assert results == {i: [i * i] for i in range(25)}
    assert ticks > 25, "the loop stood still while the queries ran"
    # A query whose task is cancelled before the node answers: the answer is dropped,
    # and the next query gets its own.
    with trio.CancelScope() as scope:
        scope.cancel()
        await execute(session, f"SELECT v FROM {table} WHERE k = 1 AND c = 5")
    assert scope.cancelled_caught
    rows = await execute(session, f"SELECT v FROM {table} WHERE k = 1 AND c = 6")
    assert [r["v"] for r in rows] == [36]
