"""The outage memory (cached.outage.Outage) over a hand-driven clock, and the store's
decisions on a failed query (cached.store): an outage, one node away (send it again), or an
LWT whose outcome is unknown (ask again), over a scripted fake driver."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from cassandra import ConsistencyLevel, OperationTimedOut, Unavailable, WriteTimeout
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionBusy, ConnectionShutdown
from cassandra.policies import RetryPolicy
from cassandra.protocol import ErrorMessage

import cached.store
from cached.api import ContactPoints
from cached.errors import OutcomeUnknown, StorageError, Unreachable
from cached.model import Dentry
from cached.outage import Outage
from cached.store import (
    CAS_WRITE_UNKNOWN,
    STATEMENTS,
    LwtOutcome,
    Removal,
    SafeRetryPolicy,
    Store,
    _Connection,
    _intent,
    _settle,
    new_take_token,
    outcome_unknown,
    settle_removal,
    settle_swap,
)


class Clock:
    """Seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_queries_go_through_while_cassandra_answers() -> None:
    outage = Outage(2.0, Clock())
    assert all(outage.admit() for _ in range(5))
    outage.succeeded()
    assert not outage.down and outage.refused == 0


def test_after_a_failure_queries_fail_at_once_until_the_memory_passes() -> None:
    clock = Clock()
    outage = Outage(2.0, clock)
    outage.failed("NoHostAvailable")
    assert outage.down
    assert [outage.admit() for _ in range(3)] == [False, False, False]
    clock.now += 1.9
    assert not outage.admit()
    clock.now += 0.2
    assert outage.admit()  # the probe
    assert not outage.admit()  # one probe at a time
    assert (outage.failures, outage.refused) == (1, 5)


def test_a_failed_probe_starts_another_period_and_a_successful_one_ends_the_outage() -> None:
    clock = Clock()
    outage = Outage(2.0, clock)
    outage.failed("timeout")
    clock.now += 2.0
    assert outage.admit()
    outage.failed("timeout again")
    assert not outage.admit()
    assert "timeout again" in outage.describe()
    clock.now += 2.0
    assert outage.admit()
    outage.succeeded()
    assert not outage.down
    assert all(outage.admit() for _ in range(3))


def test_a_cancelled_probe_lets_the_next_query_probe() -> None:
    clock = Clock()
    outage = Outage(2.0, clock)
    outage.failed("timeout")
    clock.now += 2.5
    assert outage.admit()
    outage.abandoned()  # its task was cancelled before an answer
    assert outage.admit()


# -- one node away is not an outage ----------------------------------------------------


def test_a_timeout_while_cassandra_answered_others_is_not_an_outage() -> None:
    clock = Clock()
    outage = Outage(2.0, clock)
    sent = clock.now
    clock.now += 5.0
    outage.succeeded()  # another query answered while this one waited
    clock.now += 5.0
    assert outage.failed("OperationTimedOut", sent) is False
    assert not outage.down and outage.admit()
    assert (outage.failures, outage.isolated) == (0, 1)


def test_a_timeout_with_no_answer_since_it_was_sent_is_an_outage() -> None:
    clock = Clock()
    outage = Outage(2.0, clock)
    outage.succeeded()  # before the query was sent
    clock.now += 0.5
    sent = clock.now
    clock.now += 10.0
    assert outage.failed("OperationTimedOut", sent) is True
    assert outage.down and not outage.admit()
    assert (outage.failures, outage.isolated) == (1, 0)


def test_no_host_available_is_an_outage_whatever_answered() -> None:
    clock = Clock()
    outage = Outage(2.0, clock)
    outage.succeeded()
    assert outage.failed("NoHostAvailable") is True
    assert outage.down


def test_a_probe_that_fails_alone_keeps_the_outage() -> None:
    clock = Clock()
    outage = Outage(2.0, clock)
    outage.failed("NoHostAvailable")
    clock.now += 2.0
    assert outage.admit()
    sent = clock.now
    clock.now += 1.0
    assert outage.failed("OperationTimedOut", sent) is True
    assert outage.down and not outage.admit()


# -- the store's decisions over a scripted driver ---------------------------------------


class Host:
    """A node as the driver's metadata lists it."""

    def __init__(self, address: str, up: bool = True) -> None:
        self.endpoint = f"{address}:9042"
        self.is_up = up

    def __str__(self) -> str:
        return self.endpoint


H1, H2 = Host("127.0.0.1"), Host("127.0.0.2")


class Driver:
    """Answers queries from a script (rows, or an exception to raise), in order; the
    liveness read sent to one node is answered by ``alive`` (node -> answers?)."""

    def __init__(self, script: list[Any], alive: dict[str, bool]) -> None:
        self.script = script
        self.alive = alive
        self.sent: list[str] = []
        #: Called before a query (not a liveness read) is answered.
        self.before: Callable[[], object] = lambda: None

    async def execute(
        self, session: Any, statement: Any, params: Any = None, *, query_timeout: float,
        host: Any = None,
    ) -> list[Any]:  # fmt: skip
        if host is not None:
            self.sent.append(f"liveness@{host}")
            if not self.alive.get(str(host), False):
                raise OperationTimedOut({str(host): "timeout"}, host)
            return [{"release_version": "5.0"}]
        self.sent.append(statement.name)
        self.before()
        answer = self.script.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return list(answer)


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Driver]:
    fake = Driver([], {})
    monkeypatch.setattr(cached.store, "execute", fake.execute)
    monkeypatch.setattr(cached.store, "RETRY_PAUSE", 0.0)
    yield fake


def scripted(driver: Driver, script: list[Any], hosts: list[Host], alive: set[Host]) -> Store:
    """A store whose queries go to ``driver`` with ``script``, on a cluster of ``hosts``."""
    driver.script = script
    driver.alive = {str(h): h in alive for h in hosts}
    store = Store(ContactPoints.parse("127.0.0.1:9042"), "ks", query_timeout=1.0)
    statements = {
        name: SimpleNamespace(name=name, is_idempotent=name not in cached.store._NOT_IDEMPOTENT)
        for name in STATEMENTS
    }
    cluster = SimpleNamespace(metadata=SimpleNamespace(all_hosts=lambda: hosts))
    store._conn = _Connection(cluster, None, statements)  # type: ignore[arg-type]
    return store


def timed_out(host: Host) -> OperationTimedOut:
    return OperationTimedOut({str(host): "Client request timeout"}, host)


async def test_a_read_that_one_node_left_unanswered_is_sent_again(driver: Driver) -> None:
    store = scripted(driver, [timed_out(H1), [{"kind": None}]], [H1, H2], alive={H2})
    assert await store.run("get_inode", (1, "e", 5)) == [{"kind": None}]
    assert driver.sent == ["get_inode", "liveness@127.0.0.2:9042", "get_inode"]
    assert not store.outage.down and store.outage.isolated == 1


async def test_a_timeout_on_a_lone_node_is_an_outage_sent_once(driver: Driver) -> None:
    store = scripted(driver, [timed_out(H1)], [H1], alive=set())
    with pytest.raises(Unreachable):
        await store.run("get_inode", (1, "e", 5))
    assert driver.sent == ["get_inode"]  # no node to ask, no second send
    assert store.outage.down
    with pytest.raises(Unreachable):  # failed at once now
        await store.run("get_inode", (1, "e", 5))
    assert driver.sent == ["get_inode"]


async def test_a_timeout_when_no_other_node_answers_is_an_outage(driver: Driver) -> None:
    store = scripted(driver, [timed_out(H1)], [H1, H2], alive=set())
    with pytest.raises(Unreachable):
        await store.run("get_chunk", (1, "e", 5, b"v", 0))
    assert driver.sent == ["get_chunk", "liveness@127.0.0.2:9042"]
    assert store.outage.down


async def test_no_host_available_is_an_outage_never_sent_again(driver: Driver) -> None:
    store = scripted(driver, [NoHostAvailable("none", {})], [H1, H2], alive={H2})
    with pytest.raises(Unreachable):
        await store.run("get_inode", (1, "e", 5))
    assert driver.sent == ["get_inode"] and store.outage.down


def busy() -> NoHostAvailable:
    """What the driver raises when its one connection's socket buffer is full."""
    return NoHostAvailable("busy", {str(H1): ConnectionBusy("Connection 127.0.0.1 is overloaded")})


async def test_an_lwt_the_driver_did_not_send_for_busy_connections_is_sent_again(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``NoHostAvailable`` of ``ConnectionBusy`` errors alone means nothing was sent: the
    statement, an LWT too, goes again after a pause, and no outage is declared."""
    monkeypatch.setattr(cached.store, "BUSY_PAUSES", (0.0, 0.0))
    store = scripted(driver, [busy(), busy(), [{"[applied]": True}]], [H1], alive=set())
    assert await store.run("insert_dentry", (1, "e", 1, b"n", 5, 2)) == [{"[applied]": True}]
    assert driver.sent == ["insert_dentry"] * 3
    assert not store.outage.down
    assert not cached.store.not_sent_busy(NoHostAvailable("none", {}))
    mixed = {"a": ConnectionBusy("busy"), "b": ConnectionShutdown("reset")}
    assert not cached.store.not_sent_busy(NoHostAvailable("mixed", mixed))


async def test_a_request_still_not_sent_after_the_busy_pauses_is_an_outage(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cached.store, "BUSY_PAUSES", (0.0, 0.0))
    store = scripted(driver, [busy(), busy(), busy()], [H1], alive=set())
    with pytest.raises(Unreachable):
        await store.run("get_inode", (1, "e", 5))
    assert driver.sent == ["get_inode"] * 3 and store.outage.down


async def test_an_idempotent_write_is_sent_at_most_attempts_times(driver: Driver) -> None:
    script: list[Any] = [ConnectionShutdown("reset", H1)] * cached.store.ATTEMPTS
    store = scripted(driver, script, [H1, H2], alive={H2})
    with pytest.raises(StorageError) as failed:
        await store.run("put_chunk", (1, "e", 5, b"v", 0, b"data"))
    assert not isinstance(failed.value, Unreachable)
    assert driver.sent.count("put_chunk") == cached.store.ATTEMPTS
    assert not store.outage.down


async def test_a_counter_update_is_not_sent_again(driver: Driver) -> None:
    store = scripted(driver, [timed_out(H1)], [H1, H2], alive={H2})
    with pytest.raises(StorageError) as failed:
        await store.run("add_usage", (10, 1, 1, "e"))
    assert not isinstance(failed.value, Unreachable)
    assert driver.sent.count("add_usage") == 1


async def test_an_lwt_without_answer_is_outcome_unknown_sent_once(driver: Driver) -> None:
    store = scripted(driver, [timed_out(H1)], [H1, H2], alive={H2})
    with pytest.raises(OutcomeUnknown):
        await store.run("swap_nlink", (2, 0, 1, "e", 5, 1))
    assert driver.sent.count("swap_nlink") == 1 and not store.outage.down


async def test_a_replica_timeout_of_an_idempotent_read_is_sent_again(driver: Driver) -> None:
    replicas = WriteTimeout("replicas", consistency=ConsistencyLevel.LOCAL_QUORUM, write_type=0)
    store = scripted(driver, [replicas, []], [H1, H2], alive={H2})
    assert await store.run("put_version", (1, "e", 5, b"v", b"c", 3, 3, 0)) == []
    assert driver.sent == ["put_version", "put_version"]  # an answer: no liveness read


async def test_an_unavailable_answer_is_not_sent_again(driver: Driver) -> None:
    unavailable = Unavailable("2 of 3 down", consistency=ConsistencyLevel.LOCAL_QUORUM)
    store = scripted(driver, [unavailable], [H1, H2], alive={H2})
    with pytest.raises(StorageError):
        await store.run("get_inode", (1, "e", 5))
    assert driver.sent == ["get_inode"] and not store.outage.down


async def test_a_flip_whose_outcome_was_unknown_is_settled_by_asking_again(
    driver: Driver,
) -> None:
    from cached.model import Inode

    # The first send applied but its answer was lost; the second finds the new version.
    script = [timed_out(H1), [{"[applied]": False, "version": b"new"}]]
    store = scripted(driver, script, [H1, H2], alive={H2})
    inode = Inode(5, 1, 0o644, 0, 0, 3, 0, 0, 0, 1, 1, b"c", 3, b"", b"new", 0)
    assert await store.tenant(1, "e").flip_content(inode, b"old") is None
    assert driver.sent.count("flip_content") == 2


async def test_a_flip_lost_to_another_writer_reports_its_version(driver: Driver) -> None:
    from cached.model import Inode

    script = [timed_out(H1), [{"[applied]": False, "version": b"theirs"}]]
    store = scripted(driver, script, [H1, H2], alive={H2})
    inode = Inode(5, 1, 0o644, 0, 0, 3, 0, 0, 0, 1, 1, b"c", 3, b"", b"new", 0)
    assert await store.tenant(1, "e").flip_content(inode, b"old") == b"theirs"


def test_a_name_lwt_sent_again_that_finds_its_own_inode_was_applied() -> None:
    mine = LwtOutcome(False, Dentry(1, b"f", 42, 1))
    assert _settle(mine, resent=True, ino=42) == LwtOutcome(applied=True)
    assert _settle(mine, resent=False, ino=42) == mine  # sent once: another request's
    theirs = LwtOutcome(False, Dentry(1, b"f", 7, 1))
    assert _settle(theirs, resent=True, ino=42) == theirs
    claimed = LwtOutcome(False, Dentry(1, b"f", 42, 1, b"intent"))
    assert _settle(claimed, resent=True, ino=42) == claimed


def test_which_lwt_answers_leave_the_outcome_unknown() -> None:
    cas = WriteTimeout("cas", consistency=ConsistencyLevel.LOCAL_SERIAL, write_type=5)
    assert outcome_unknown(cas)
    unknown = ErrorMessage(CAS_WRITE_UNKNOWN, "CAS operation result is unknown", None)
    assert outcome_unknown(unknown)
    assert not outcome_unknown(Unavailable("down", consistency=ConsistencyLevel.LOCAL_SERIAL))


def test_the_driver_does_not_resend_a_non_idempotent_statement_on_a_dropped_connection() -> None:
    policy = SafeRetryPolicy()
    lwt = SimpleNamespace(is_idempotent=False)
    read = SimpleNamespace(is_idempotent=True)
    reset = ConnectionShutdown("Connection reset by peer")
    assert policy.on_request_error(lwt, None, reset, 0) == (RetryPolicy.RETHROW, None)
    assert policy.on_request_error(read, None, reset, 0) == (RetryPolicy.RETRY_NEXT_HOST, None)


async def test_during_an_outage_found_meanwhile_no_liveness_read_is_sent(
    driver: Driver,
) -> None:
    store = scripted(driver, [timed_out(H1)], [H1, H2], alive={H2})
    driver.before = lambda: store.outage.failed("NoHostAvailable")  # another query's finding
    with pytest.raises(Unreachable):
        await store.run("get_inode", (1, "e", 5))
    assert driver.sent == ["get_inode"]


async def test_claims_seals_and_leases_sent_again_find_their_own_id(driver: Driver) -> None:
    script: list[Any] = [
        timed_out(H1), [{"[applied]": False, "ino": 5, "pending": b"intent"}],
        timed_out(H1), [{"[applied]": False, "sealed": b"op"}],
        timed_out(H1), [{"[applied]": False, "holder": b"me", "name": "rename"}],
        [{"[applied]": False, "ino": 5, "pending": b"intent"}],  # sent once: another's
    ]  # fmt: skip
    store = scripted(driver, script, [H1, H2], alive={H2})
    tenant = store.tenant(1, "e")
    assert await tenant.claim_dentry(1, b"f", 5, b"intent") is True
    assert await tenant.seal_dir(7, b"op") is None
    assert await tenant.acquire_lock("rename", b"me", 30) is True
    assert await tenant.claim_dentry(1, b"f", 5, b"intent") is False
    assert driver.sent.count("claim_dentry") == 3


async def test_an_lwt_that_never_answers_fails_with_outcome_unknown(driver: Driver) -> None:
    script: list[Any] = [timed_out(H1)] * cached.store.ATTEMPTS
    store = scripted(driver, script, [H1, H2], alive={H2})
    with pytest.raises(OutcomeUnknown) as failed:
        await store.tenant(1, "e").seal_dir(7, b"op")
    assert failed.value.errno == errno.EIO
    assert driver.sent.count("seal_dir") == cached.store.ATTEMPTS


async def test_a_dropped_connection_naming_no_node_while_another_answers_is_no_outage(
    driver: Driver,
) -> None:
    # The driver's ConnectionShutdown of a reset connection does not name its node: a
    # counter update (not sent again) failed so right at a kill -9, and that tripped the
    # breaker (200 creates of the copy failed at once).
    down = Host("127.0.0.1", up=False)
    store = scripted(driver, [ConnectionShutdown("reset")], [down, H2], alive={H2})
    with pytest.raises(StorageError) as failed:
        await store.run("add_usage", (10, 1, 1, "e"))
    assert not isinstance(failed.value, Unreachable)
    assert driver.sent == ["add_usage", "liveness@127.0.0.2:9042"]
    assert not store.outage.down


async def test_a_dropped_connection_of_a_lone_node_is_an_outage(driver: Driver) -> None:
    store = scripted(driver, [ConnectionShutdown("reset")], [Host("127.0.0.1", up=False)], set())
    with pytest.raises(Unreachable):
        await store.run("get_inode", (1, "e", 5))
    assert driver.sent == ["get_inode"] and store.outage.down


def test_a_resent_nlink_swap_is_settled_by_its_ctime_else_by_its_direction() -> None:
    # found at the new count with this call's ctime: the earlier send was applied
    assert settle_swap(1, 2, ctime_ns=77, found=1, ctime_now=77) is None
    assert settle_swap(3, 2, ctime_ns=77, found=3, ctime_now=77) is None
    # cannot tell: a decrement counts as applied (one too high at worst)...
    assert settle_swap(1, 2, ctime_ns=77, found=1, ctime_now=78) is None
    assert settle_swap(1, 2, ctime_ns=77, found=0, ctime_now=None) is None
    # ...an increment as not applied: counted again from what is there
    assert settle_swap(3, 2, ctime_ns=77, found=3, ctime_now=78) == 3
    assert settle_swap(3, 2, ctime_ns=77, found=5, ctime_now=None) == 5
    assert settle_swap(3, 2, ctime_ns=77, found=-1, ctime_now=None) == -1  # gone
    assert settle_swap(1, 2, ctime_ns=77, found=-1, ctime_now=None) == -1


def test_take_tokens_are_negative_and_read_as_taken() -> None:
    tokens = {new_take_token() for _ in range(1000)}
    assert len(tokens) == 1000 and all(-(2**63) <= t < 0 for t in tokens)
    row = {
        "id": b"i", "old_parent": 1, "old_name": b"a", "new_parent": 2, "new_name": b"b",
        "ino": 5, "kind": 1, "started_ns": 9,
    }  # fmt: skip
    assert _intent({**row, "replaced": min(tokens)}).replaced == 0
    assert _intent({**row, "replaced": None}).replaced == 0
    assert _intent({**row, "replaced": 42}).replaced == 42


async def test_a_take_sent_again_finds_its_own_token_or_another(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cached.store import Intent

    monkeypatch.setattr(cached.store, "new_take_token", lambda: -7)
    script: list[Any] = [
        timed_out(H1), [{"[applied]": False, "replaced": -7}],  # mine: taken
        timed_out(H1), [{"[applied]": False, "replaced": -8}],  # another's
        timed_out(H1), [{"[applied]": False}],  # the intent gone: cannot tell
        [{"[applied]": False, "replaced": -7}],  # sent once: never mine
    ]  # fmt: skip
    store = scripted(driver, script, [H1, H2], alive={H2})
    intent = Intent(b"i" * 16, 1, b"a", 2, b"b", 5, 1, 42, 0)
    tenant = store.tenant(1, "e")
    assert [await tenant.take_replaced(intent) for _ in range(4)] == [True, False, False, False]


class Batch:
    """Stands for the driver's BatchStatement in the scripted store (sent as "batch")."""

    name = "batch"

    def __init__(self, **_settings: Any) -> None:
        self.parts: list[str] = []

    def add(self, statement: Any, params: Any) -> None:
        self.parts.append(statement.name)


async def test_an_unlink_sent_again_is_applied_only_with_its_own_directory_time(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cached.store, "BatchStatement", Batch)
    script: list[Any] = [
        timed_out(H1), [{"[applied]": False}], [{"sealed": None, "changed_ns": 77}],
        timed_out(H1), [{"[applied]": False}], [{"sealed": None, "changed_ns": 78}],
        # the name still there (claimed by a rename): the earlier send was not applied
        timed_out(H1), [{"[applied]": False, "name": b"f", "ino": 5, "pending": b"c"}],
        [{"sealed": None, "changed_ns": 78}],
    ]  # fmt: skip
    store = scripted(driver, script, [H1, H2], alive={H2})
    tenant = store.tenant(1, "e")
    assert (await tenant.delete_dentry(3, b"f", 5, 77)).applied
    with pytest.raises(OutcomeUnknown):
        await tenant.delete_dentry(3, b"f", 5, 77)
    outcome = await tenant.delete_dentry(3, b"f", 5, 77)
    assert not outcome.applied and outcome.holder == Dentry(3, b"f", 5, 0, b"c")
    assert driver.sent.count("dir_state") == 3


def test_a_removal_sent_again_is_settled_by_what_is_left_and_the_directory_time() -> None:
    not_applied = LwtOutcome(False)
    unlink = Removal(b"f", 5, now_ns=77)
    still_there = [{"[applied]": False, "name": b"f", "ino": 5, "pending": b"c"}]
    assert settle_removal(not_applied, still_there, unlink, changed_ns=78) == not_applied
    assert settle_removal(not_applied, [], unlink, changed_ns=77) == LwtOutcome(True)
    assert settle_removal(not_applied, [], unlink, changed_ns=78) is None  # unknown
    # a rename of f to g: the new name naming another inode, or none: not applied
    rename = Removal(b"f", 5, now_ns=77, lands=5)
    elsewhere = LwtOutcome(False, Dentry(3, b"g", 9, 1))
    assert settle_removal(elsewhere, [], rename, changed_ns=78) == elsewhere
    assert settle_removal(not_applied, [], rename, changed_ns=78) == not_applied
    # naming the moved inode: applied, unless a replaced name is at stake (unknown)
    landed = LwtOutcome(False, Dentry(3, b"g", 5, 1))
    assert settle_removal(landed, [], rename, changed_ns=78) == LwtOutcome(True)
    over = Removal(b"f", 5, now_ns=77, lands=5, counts=True)
    assert settle_removal(landed, [], over, changed_ns=78) is None
    assert settle_removal(landed, [], over, changed_ns=77) == LwtOutcome(True)
