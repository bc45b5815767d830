"""The daemon's socket under bad input: fuzzed frames, bad values, idle and too many connections.

``test_fuzzed_socket_leaves_the_daemon_serving`` runs a real daemon against the node and
throws at its socket: random bytes and random msgpack, mutated valid requests, oversized,
nested and truncated messages, requests with wrong types and out-of-range values, hundreds
of connections holding half a frame (more than the daemon's connection limit), and a
pipeline longer than the per-connection limit.  Then a real FUSE mount on the same cache dir
must write and read back a file, the daemon's RSS must be back near where it started, and
its log must stay small.  Randomness is seeded: the seed is printed and in every assertion
message; ``CASSFS_FUZZ_SEED=N`` replays one.

The other tests run :class:`cached.server.Server` in-process over a stub service, with short
limits, to check the limits themselves (idle connections, backpressure, admin calls, logs).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import secrets
import socket
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from cached import protocol, server
from cached.client import call_once, open_client, socket_path
from cached.model import ROOT_INO
from tests.conftest import Mount

# -- a raw connection -----------------------------------------------------------------------


class Raw:
    """A connection that sends whatever it is given and collects what comes back."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = protocol.Decoder()
        self.replies: dict[int, protocol.Response] = {}
        self.closed = False

    @classmethod
    async def open(cls, path: Path) -> Raw:
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, data: bytes) -> bool:
        """Send ``data``; False when the daemon has closed the connection."""
        try:
            await self.stream.send_all(data)
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
            return False

    async def _receive(self) -> bool:
        """Read once; False at EOF (or reset)."""
        try:
            data = await self.stream.receive_some(1 << 20)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = True
            return False
        for message in self.decoder.feed(data):
            if isinstance(message, protocol.Response):
                self.replies[message.msgid] = message
        return True

    async def reply(self, msgid: int, seconds: float = 20.0) -> protocol.Response:
        """The reply to ``msgid`` within ``seconds``; fails if the connection closes first."""
        with trio.fail_after(seconds):
            while msgid not in self.replies:
                if not await self._receive():
                    raise AssertionError(f"the daemon closed the connection before {msgid}")
        return self.replies.pop(msgid)

    async def call(self, msgid: int, method: str, **params: Any) -> protocol.Response:
        assert await self.send(protocol.pack_request(msgid, method, params)), "connection closed"
        return await self.reply(msgid)

    async def wait_closed(self, seconds: float) -> bool:
        """True once the daemon closes the connection, False if still open after ``seconds``."""
        with trio.move_on_after(seconds):
            while await self._receive():
                pass
            return True
        return False

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


def errno_of(response: protocol.Response) -> int:
    """0 for a result, else the reply's errno."""
    return 0 if response.error is None else int(response.error[0])


# -- random input ---------------------------------------------------------------------------


def random_value(rng: random.Random, depth: int = 0, strict: bool = False) -> Any:
    """A random msgpack-able value with arrays and maps up to 3 deep.

    ``strict``: only what the daemon's framing accepts inside a request's parameter
    (str keys, two levels of arrays and maps), so that it must answer, not hang up.
    """
    levels = 2 if strict else 3
    pick = rng.randrange(11 if strict else 12) if depth < levels else rng.randrange(9)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return rng.choice([-1, -5, 0, 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1, -(2**63)])
    if pick == 3:
        return rng.randint(-(2**63), 2**64 - 1) if rng.random() < 0.2 else rng.randint(-999, 9999)
    if pick == 4:
        return rng.random() * 1e6
    if pick == 5:
        return rng.randbytes(rng.choice([0, 1, 8, 32, 256, 300, 5000]))
    if pick == 6:
        return "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.choice([0, 1, 10, 300])))
    if pick == 7:
        return rng.choice([b"/", b"a/b", b"\0", b"x" * 256, b".", b"..", "text"])
    if pick == 8:
        return rng.choice([0o7777 + 1, -1, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777, 1 << 40])
    if pick == 9:
        return [random_value(rng, depth + 1, strict) for _ in range(rng.randrange(4))]
    if pick == 10:
        return {str(i): random_value(rng, depth + 1, strict) for i in range(rng.randrange(4))}
    return {rng.randrange(5): None}  # a key that is not a str


def garbage_frame(rng: random.Random) -> bytes:
    """Random bytes, random bytes behind a msgpack header, or a random msgpack object."""
    pick = rng.random()
    if pick < 0.3:
        return rng.randbytes(rng.randint(1, 200))
    if pick < 0.6:
        head = rng.choice([b"\x94", b"\x94\x00", b"\xdc\x00\x04", b"\x93", b"\x95", b"\xc1"])
        return head + rng.randbytes(rng.randint(0, 100))
    obj = rng.choice(
        [
            random_value(rng),
            [0, rng.randrange(2**32), "getattr", random_value(rng)],
            [rng.randrange(-1, 4), random_value(rng), random_value(rng), random_value(rng)],
            [1, 1, None, None],
            [2, "purged", {}],
        ]
    )
    return msgpack.packb(obj, use_bin_type=True)


def mutate(rng: random.Random, frame: bytes) -> bytes:
    """``frame`` with one to three random byte edits (replace, flip, insert, delete, cut)."""
    data = bytearray(frame)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and pos < len(data):
            data[pos] = rng.randrange(256)
        elif op == 1 and pos < len(data):
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 2:
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del data[pos : pos + rng.randint(1, 8)]
        else:
            del data[max(pos, 1) :]
    return bytes(data)


def connect_all(path: Path, count: int, data: bytes) -> list[socket.socket]:
    """Blocking (run it in a thread): ``count`` connections, each sent ``data``.

    A blocking connect waits while the daemon's listen backlog is full; trio's
    non-blocking connect can then hand back a socket that never connected.
    """
    connections = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        try:
            sock.sendall(data)
        except OSError:
            pass  # refused at once: closed under us
        connections.append(sock)
    return connections


def wrap(sockets: list[socket.socket]) -> list[Raw]:
    """Trio connections over connected stdlib sockets."""
    return [Raw(trio.SocketStream(trio.socket.from_stdlib_socket(sock))) for sock in sockets]


def vm_kib(pid: int, field: str) -> int:
    """``field`` (VmRSS, VmHWM) of process ``pid`` from /proc, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


# -- the fuzz against a real daemon ---------------------------------------------------------

#: RSS the daemon may keep after the fuzz, and reach at its peak, over its RSS before: MiB.
#: Measured: 48 MiB before, 52 after and at the peak; the code before the bounds went to a
#: peak of 210 MiB on the nested request alone and kept 81 after this fuzz (352 MiB with
#: 5,000 idle connections, 339 after they closed).
RSS_GROWTH_MIB = 20
PEAK_GROWTH_MIB = 50
#: Log the whole fuzz may write.
LOG_LINES = 200
LOG_BYTES = 100_000
#: Connections holding half a frame at once: more than the daemon's limit.
IDLE_CONNECTIONS = server.MAX_CONNECTIONS + 64


@pytest.mark.cassandra
@pytest.mark.fuse
async def test_fuzzed_socket_leaves_the_daemon_serving(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    seed = int(os.environ.get("CASSFS_FUZZ_SEED") or secrets.randbits(32))
    print(f"fuzz seed {seed} (replay with CASSFS_FUZZ_SEED={seed})")
    rng = random.Random(seed)
    at = f"(seed {seed})"
    owner, environment = tenant
    # A mount and the daemon `cassfs up` started for it: the mount's idle connection
    # must live through the fuzz, and the mount must work after it.
    m = await trio.to_thread.run_sync(mount_cassfs, "mnt", owner, environment)
    before = rng.randbytes(200_000)
    await trio.to_thread.run_sync((m.path / "before-fuzz.bin").write_bytes, before)
    path = socket_path(m.cache_dir)
    pid = (await trio.to_thread.run_sync(call_once, m.cache_dir, "status"))["pid"]
    daemon_log = m.cache_dir / "daemon.log"
    frames = 0
    timings: list[str] = []
    clock = trio.current_time()

    def tick(phase: str) -> None:
        nonlocal clock
        now = trio.current_time()
        timings.append(f"{phase} {now - clock:.1f} s")
        clock = now

    @asynccontextmanager
    async def session() -> AsyncIterator[Raw]:
        conn = await Raw.open(path)
        try:
            hello = await conn.call(0, "hello", owner=owner, environment=environment)
            assert hello.error is None, f"{hello.error} {at}"
            yield conn
        finally:
            await conn.aclose()

    # The tenant's things the fuzz works on, and the RSS of a daemon that has served them.
    async with session() as conn:
        d = await conn.call(1, "mkdir", parent=ROOT_INO, name=b"d", mode=0o755, uid=0, gid=0)
        f = await conn.call(2, "create", parent=ROOT_INO, name=b"f", mode=0o644, uid=0, gid=0)
        assert d.error is None and f.error is None, f"{d.error} {f.error} {at}"
        dir_ino, file_ino = d.result["ino"], f.result["ino"]
        w = await conn.call(3, "write", ino=file_ino, data=b"fuzz target " * 100)
        assert w.error is None, f"{w.error} {at}"
        content_id, size = w.result["content_id"], w.result["size"]
        for msgid in range(4, 40):
            await conn.call(msgid, "open", ino=file_ino)
    rss_before = vm_kib(pid, "VmRSS")
    tick("start")

    # 1. Random bytes and random msgpack on connections without a session.
    async def garbage_connection() -> None:
        nonlocal frames
        conn = await Raw.open(path)
        try:
            for _ in range(rng.randint(1, 20)):
                frames += 1
                if not await conn.send(garbage_frame(rng)):
                    break
            await conn.wait_closed(0.3)
        finally:
            await conn.aclose()

    # 2. Mutated valid requests, and valid requests with one value replaced, in a session.
    templates: list[tuple[str, dict[str, Any]]] = [
        ("lookup", {"parent": ROOT_INO, "name": b"f"}),
        ("getattr", {"ino": file_ino}),
        ("setattr", {"ino": file_ino, "mode": 0o640, "uid": 0}),
        ("readdir", {"ino": ROOT_INO}),
        ("readlink", {"ino": file_ino}),
        ("mkdir", {"parent": dir_ino, "name": b"m", "mode": 0o755, "uid": 0, "gid": 0}),
        ("create", {"parent": dir_ino, "name": b"c", "mode": 0o644, "uid": 0, "gid": 0}),
        ("symlink", {"parent": dir_ino, "name": b"s", "target": b"../f", "uid": 0, "gid": 0}),
        ("unlink", {"parent": dir_ino, "name": b"c"}),
        ("rmdir", {"parent": dir_ino, "name": b"m"}),
        (
            "rename",
            {"old_parent": dir_ino, "old_name": b"s", "new_parent": dir_ino, "new_name": b"t"},
        ),
        ("open", {"ino": file_ino, "fetch": True, "inline": True}),
        (
            "read",
            {"ino": file_ino, "content_id": content_id, "file_size": size, "offset": 0, "size": 99},
        ),
        ("write", {"ino": file_ino, "data": b"fuzzed"}),
        ("materialize", {"ino": file_ino}),
        ("stats", {}),
    ]
    errnos: dict[int, int] = {}

    async def value_mutants() -> None:
        """Valid frames with a wrong value: every one answered, the connection kept."""
        nonlocal frames
        async with session() as conn:
            batch = []
            for i in range(40):
                method, params = rng.choice(templates)
                value = random_value(rng, strict=True)
                if params and rng.random() < 0.8:
                    params = {**params, rng.choice(list(params)): value}
                else:
                    params = {**params, "extra": value}
                batch.append(protocol.pack_request(100 + i, method, params))
            frames += len(batch)
            assert await conn.send(b"".join(batch)), at
            for i in range(40):
                reply = await conn.reply(100 + i)
                got = errno_of(reply)
                errnos[got] = errnos.get(got, 0) + 1
                if got == errno.EIO and errnos[got] <= 5:
                    print(f"fuzz: EIO for {batch[i]!r:.300}: {reply.error}")

    async def byte_mutants() -> None:
        """Mutated frames, each followed by a valid one, until the daemon closes."""
        nonlocal frames
        async with session() as conn:
            for i in range(20):
                method, params = rng.choice(templates)
                frames += 2
                sent = await conn.send(
                    mutate(rng, protocol.pack_request(100 + i, method, params))
                    + protocol.pack_request(200 + i, "stats", {})
                )
                with trio.move_on_after(0.5):
                    while sent and 200 + i not in conn.replies and await conn._receive():
                        pass
                if conn.closed or 200 + i not in conn.replies:
                    break

    async def run(count: int, job: Callable[[], Any], concurrency: int = 16) -> None:
        limiter = trio.CapacityLimiter(concurrency)

        async def one() -> None:
            async with limiter:
                await job()

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)

    await run(1000, garbage_connection)
    tick("garbage")
    await run(10, value_mutants, concurrency=4)
    await run(25, byte_mutants, concurrency=8)
    tick("mutants")
    print(f"fuzz: errnos of the replies to wrong values: {sorted(errnos.items())}")

    # 3. Oversized, nested and truncated messages: closed at once, before all is sent.
    huge_blob = b"\x94\x00\x01\xa5write\x81\xa4data\xc6" + (64 << 20).to_bytes(4, "big")
    nested = (
        b"\x94\x00\x01\xa6lookup\x81\xa4name\xdd"
        + (2 << 20).to_bytes(4, "big")
        + b"\x80" * (2 << 20)
    )
    deep = b"\x94\x00\x01\xa6lookup\x81\xa4name" + b"\x91" * 100_000 + b"\xc0"
    many_params = b"\x94\x00\x01\xa6lookup\xdf" + (1 << 20).to_bytes(4, "big")
    big_string = b"\x94\x00\x01\xdb" + (32 << 20).to_bytes(4, "big")
    for name, head, body in [
        ("a 64 MiB blob", huge_blob, b"\0" * (1 << 20)),
        ("2 Mi nested maps", nested, b""),
        ("100,000 nested arrays", deep, b""),
        ("a million parameters", many_params, b"\xa1a\xc0" * 1000),
        ("a 32 MiB method name", big_string, b"x" * (1 << 20)),
    ]:
        conn = await Raw.open(path)
        frames += 1
        with trio.move_on_after(10):
            await conn.send(head)
            await conn.send(body)
        assert await conn.wait_closed(5), f"{name}: the daemon kept the connection {at}"
        await conn.aclose()
    for _ in range(20):  # a valid request cut short, then EOF
        conn = await Raw.open(path)
        frame = protocol.pack_request(1, "getattr", {"ino": file_ino})
        await conn.send(frame[: rng.randrange(1, len(frame))])
        frames += 1
        await conn.aclose()

    tick("oversized")

    # 4. Wrong types and values out of range: the errno a local disk would give, nothing stored.
    named = {"parent": ROOT_INO, "mode": 0o644, "uid": 0, "gid": 0}
    reading = {"ino": file_ino, "content_id": content_id, "file_size": size}
    moving = {"old_parent": dir_ino, "old_name": b"x", "new_parent": dir_ino, "new_name": b"y"}
    bad: list[tuple[str, dict[str, Any], int]] = [
        ("create", {**named, "name": b"uid-5", "uid": -5}, errno.EINVAL),
        ("create", {**named, "name": b"gid-big", "gid": 2**32 - 1}, errno.EINVAL),
        ("create", {**named, "name": b"mode-1", "mode": -1}, errno.EINVAL),
        ("create", {**named, "name": b"mode-big", "mode": 0o17777}, errno.EINVAL),
        ("create", {**named, "name": b"mode-dir", "mode": stat.S_IFDIR | 0o755}, errno.EINVAL),
        ("create", {**named, "name": b"mode-float", "mode": 420.0}, errno.EINVAL),
        ("create", {**named, "name": "str-name"}, errno.EINVAL),
        ("create", {**named, "name": b"a/b"}, errno.EINVAL),
        ("create", {**named, "name": b"nul\0"}, errno.EINVAL),
        ("create", {**named, "name": b""}, errno.EINVAL),
        ("create", {**named, "name": b"n" * 256}, errno.ENAMETOOLONG),
        ("create", {**named, "name": b"parent0", "parent": 0}, errno.EINVAL),
        ("create", {**named, "name": b"parent-str", "parent": "1"}, errno.EINVAL),
        ("create", {**named, "name": b"parent-huge", "parent": 2**64 - 1}, errno.EINVAL),
        ("create", {**named, "name": b"extra", "extra": 1}, errno.EINVAL),
        ("create", {"parent": ROOT_INO, "name": b"missing", "mode": 0o644}, errno.EINVAL),
        ("mkdir", {**named, "name": b"dir-uid", "mode": 0o755, "uid": 2**40}, errno.EINVAL),
        ("symlink", {**named, "name": b"empty-target", "target": b""}, errno.EINVAL),
        ("setattr", {"ino": file_ino, "uid": -5}, errno.EINVAL),
        ("setattr", {"ino": file_ino, "mode": -1}, errno.EINVAL),
        ("setattr", {"ino": file_ino, "size": -1}, errno.EINVAL),
        ("setattr", {"ino": file_ino, "mtime_ns": "now"}, errno.EINVAL),
        ("getattr", {"ino": True}, errno.EINVAL),
        ("getattr", {"ino": -1}, errno.EINVAL),
        ("lookup", {"parent": ROOT_INO, "name": None}, errno.EINVAL),
        ("readdir", {"ino": [ROOT_INO]}, errno.EINVAL),
        ("open", {"ino": file_ino, "fetch": "yes"}, errno.EINVAL),
        ("read", {**reading, "offset": -1, "size": 10}, errno.EINVAL),
        ("read", {**reading, "offset": 0, "size": -1}, errno.EINVAL),
        ("read", {**reading, "offset": 0, "size": 1.5}, errno.EINVAL),
        ("write", {"ino": file_ino, "data": "text"}, errno.EINVAL),
        ("rename", {**moving, "flags": -1}, errno.EINVAL),
        ("materialize", {"ino": dir_ino}, errno.EISDIR),
        ("hello", {"owner": owner, "environment": environment}, errno.EINVAL),
        ("shutdown", {"force": True}, errno.EINVAL),  # not a mount's call
        ("no_such_method", {}, errno.EINVAL),
    ]
    async with session() as conn:
        for msgid, (method, params, expected) in enumerate(bad, start=1):
            frames += 1
            got = errno_of(await conn.call(msgid, method, **params))
            assert got == expected, (
                f"{method} {params!r:.120}: errno {got}, expected {expected} {at}"
            )
        # nothing of the above was stored, and the directory lists (no EIO)
        listing = await conn.call(1000, "readdir", ino=ROOT_INO)
        assert listing.error is None, f"{listing.error} {at}"
        names = {name for name, _ in listing.result}
        refused = {p["name"] for _, p, _ in bad if isinstance(p.get("name"), bytes)}
        assert not names & refused, f"stored from bad requests: {names & refused} {at}"

        # 5. A pipeline longer than the in-flight limit: every request answered, in any order.
        count = 4 * server.MAX_IN_FLIGHT
        pipeline = b"".join(
            protocol.pack_request(2000 + i, "getattr", {"ino": file_ino}) for i in range(count)
        )
        frames += count
        assert await conn.send(pipeline), at
        for i in range(count):
            assert errno_of(await conn.reply(2000 + i)) == 0, at

    tick("bad values, pipeline")

    # 6. Connections holding half a frame, more than the limit: the extra ones are closed.
    half = protocol.pack_request(1, "getattr", {"ino": file_ino})[:7]
    idle: list[Raw] = []
    try:
        idle += wrap(await trio.to_thread.run_sync(connect_all, path, IDLE_CONNECTIONS, half))
        frames += IDLE_CONNECTIONS
        closed = 0
        for conn in idle:
            if await conn.wait_closed(0.01):
                closed += 1
        (extra,) = wrap(await trio.to_thread.run_sync(connect_all, path, 1, b""))
        idle.append(extra)
        assert await extra.wait_closed(5), f"a connection over the limit was kept {at}"
        assert closed >= IDLE_CONNECTIONS - server.MAX_CONNECTIONS, (
            f"{IDLE_CONNECTIONS} connections holding half a frame: only {closed} closed {at}"
        )
        rss_held = vm_kib(pid, "VmRSS")
    finally:
        for conn in idle:
            await conn.aclose()

    # The daemon serves again once they are gone: status from a new connection.
    with trio.fail_after(20):
        while True:
            try:
                admin = await Raw.open(path)
            except OSError:
                await trio.sleep(0.05)
                continue
            try:
                status = await admin.call(1, "status")
            except AssertionError:  # still full: refused
                status = None
            finally:
                await admin.aclose()
            if status is not None and status.result.get("connections") == 2:  # mount, this
                break
            await trio.sleep(0.05)
    rss_after = vm_kib(pid, "VmRSS")
    peak = vm_kib(pid, "VmHWM")
    tick("idle connections")
    print(
        f"fuzz: {frames} frames; daemon RSS {rss_before // 1024} MiB before, "
        f"{rss_held // 1024} MiB with {IDLE_CONNECTIONS} idle connections, "
        f"{rss_after // 1024} MiB after, peak {peak // 1024} MiB"
    )
    assert rss_after <= rss_before + RSS_GROWTH_MIB * 1024, (
        f"daemon RSS {rss_before} KiB before the fuzz, {rss_after} KiB after {at}"
    )
    assert peak <= rss_before + PEAK_GROWTH_MIB * 1024, (
        f"daemon RSS {rss_before} KiB before the fuzz, {peak} KiB at its peak {at}"
    )

    # 7. The mount, whose connection lived through all this, writes and reads back.
    payload = rng.randbytes(300_000)

    def write_and_read() -> tuple[bytes, bytes, list[str]]:
        (m.path / "after-fuzz.bin").write_bytes(payload)
        after = (m.path / "after-fuzz.bin").read_bytes()
        return after, (m.path / "before-fuzz.bin").read_bytes(), sorted(os.listdir(m.path))

    data, data_before, listing_after = await trio.to_thread.run_sync(write_and_read)
    assert data == payload and data_before == before, f"read back differs {at}"
    assert {"after-fuzz.bin", "before-fuzz.bin", "d", "f"} <= set(listing_after), (
        f"{listing_after} {at}"
    )
    final = await trio.to_thread.run_sync(call_once, m.cache_dir, "status")
    assert final["pid"] == pid and final["sessions"] == 1, f"{final} {at}"
    tick("mount")
    print(f"fuzz: phases {', '.join(timings)}")

    text = daemon_log.read_text(errors="replace")
    lines = text.splitlines()
    assert "Traceback" not in text and "failed unexpectedly" not in text, (
        f"the daemon logged a failure {at}:\n{text[-3000:]}"
    )
    assert len(lines) <= LOG_LINES and len(text) <= LOG_BYTES, (
        f"the fuzz made {len(lines)} log lines, {len(text)} bytes {at}:\n{text[-3000:]}"
    )


# -- the server's limits, in-process over a stub service -------------------------------------


class StubService:
    """Just enough of :class:`cached.service.Service` for the server: ``getattr`` waits
    on :attr:`gate`; ``fail`` raises a bug."""

    def __init__(self) -> None:
        self.sessions: set[Any] = set()
        self.gate = trio.Event()
        self.gate.set()
        self.running = 0
        self.most_running = 0

    async def rpc_hello(self, session: Any) -> dict[str, Any]:
        return {"root": {}, "epoch": 0, "pid": os.getpid()}

    async def rpc_getattr(self, s: Any, ino: int) -> dict[str, Any]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return {"ino": ino}

    async def rpc_readlink(self, s: Any, ino: int) -> bytes:
        raise RuntimeError("a bug")

    async def rpc_write(
        self, s: Any, ino: int, data: bytes | None = None, path: Any = None
    ) -> list[int]:
        """``[ino, len(data), data's first and last byte]``: what arrived, in brief."""
        assert data is not None
        return [ino, len(data), data[0], data[-1]]

    async def rpc_readdir(self, s: Any, ino: int) -> bytes:
        """A reply of ``ino`` bytes, each the low byte of ``ino``: large frames."""
        return bytes([ino % 256]) * ino

    async def rpc_stats(self, s: Any = None) -> dict[str, int]:
        await self.gate.wait()
        return {"hits": 0}

    def handler(self, method: str) -> Any:
        return getattr(self, f"rpc_{method}", None)


class StubStore:
    def tenant(self, owner: int, environment: str, read_only: bool = False) -> None:
        return None


@asynccontextmanager
async def stub_server(tmp_path: Path, **limits: Any) -> AsyncIterator[tuple[server.Server, Path]]:
    service = StubService()
    srv = server.Server(service, StubStore(), tmp_path / "s.sock", {}, **limits)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.serve)
        yield srv, srv.path
        nursery.cancel_scope.cancel()


def connection_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "cached.server" and r.levelno >= logging.INFO]


async def test_idle_and_surplus_connections_are_closed_but_an_idle_mount_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cached.server")
    async with stub_server(tmp_path, idle_timeout=0.5, max_connections=3) as (srv, path):
        mount = await Raw.open(path)
        assert errno_of(await mount.call(1, "hello", owner=1, environment="e")) == 0
        half = await Raw.open(path)
        await half.send(protocol.pack_request(1, "getattr", {"ino": 5})[:4])
        await trio.testing.wait_all_tasks_blocked()  # accepted in this order
        silent = await Raw.open(path)
        await trio.testing.wait_all_tasks_blocked()
        surplus = await Raw.open(path)
        started = trio.current_time()
        assert await surplus.wait_closed(0.3), "a 4th connection over a limit of 3 was kept"
        assert await half.wait_closed(5), "a half frame was held past the idle limit"
        assert await silent.wait_closed(5), "a connection without session idled past the limit"
        assert trio.current_time() - started >= 0.45
        await trio.sleep(1.0)  # twice the idle limit: the mount's idle connection stays
        assert errno_of(await mount.call(2, "getattr", ino=7)) == 0
        assert srv.connections == 1
        for conn in (mount, half, silent, surplus):
            await conn.aclose()
    lines = connection_lines(caplog)
    text = [r.getMessage() for r in lines]
    assert sum("refused a connection" in t for t in text) == 1, text
    assert sum("incomplete request" in t for t in text) == 1, text
    assert sum("no session and idle" in t for t in text) == 1, text
    assert all(r.exc_info is None for r in lines), "a traceback for an expected case"


async def test_a_connection_without_session_is_not_idle_while_its_call_runs(
    tmp_path: Path,
) -> None:
    async with stub_server(tmp_path, idle_timeout=0.3, max_in_flight=3) as (srv, path):
        service: StubService = srv.service  # type: ignore[assignment]
        service.gate = trio.Event()
        admin = await Raw.open(path)
        await admin.send(protocol.pack_request(1, "stats", {}))
        assert not await admin.wait_closed(1.0), "closed while its call was running"
        service.gate.set()
        assert errno_of(await admin.reply(1)) == 0
        assert await admin.wait_closed(5), "idle without a session, yet kept"
        await admin.aclose()


async def test_a_pipeline_past_the_in_flight_limit_waits_instead_of_failing(
    tmp_path: Path,
) -> None:
    async with stub_server(tmp_path, max_in_flight=3) as (srv, path):
        service: StubService = srv.service  # type: ignore[assignment]
        conn = await Raw.open(path)
        assert errno_of(await conn.call(1, "hello", owner=1, environment="e")) == 0
        service.gate = trio.Event()
        await conn.send(b"".join(protocol.pack_request(10 + i, "getattr", {"ino": i + 2})
                                 for i in range(20)))  # fmt: skip
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert service.running == 3, "the socket was read past the in-flight limit"
        service.gate.set()
        results = [await conn.reply(10 + i) for i in range(20)]
        assert [r.result["ino"] for r in results] == [i + 2 for i in range(20)]
        assert service.most_running == 3
        await conn.aclose()


async def test_replies_larger_than_the_socket_takes_arrive_whole_to_a_slow_reader(
    tmp_path: Path,
) -> None:
    # Replies are written at once when the socket takes them and left to the writer
    # task when it does not: none may be cut into by another, while the reader drains
    # the socket and new replies are made.
    async with stub_server(tmp_path) as (_srv, path):
        conn = await Raw.open(path)
        assert errno_of(await conn.call(1, "hello", owner=1, environment="e")) == 0
        sizes = [1 + (i * 7919) % 300_000 for i in range(200)]  # up to 300 kB, 30 MB in all

        async def ask() -> None:
            for i, n in enumerate(sizes):
                await conn.send(protocol.pack_request(10 + i, "readdir", {"ino": n}))
                await trio.sleep(0.001 * (i % 3))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            for i, n in enumerate(sizes):
                result = (await conn.reply(10 + i)).result
                assert result == bytes([n % 256]) * n, f"reply {10 + i} was torn"
        assert errno_of(await conn.call(999, "getattr", ino=5)) == 0
        await conn.aclose()


async def test_a_client_sends_large_requests_of_many_tasks_whole(tmp_path: Path) -> None:
    # The client writes a request at once when no other send is under way and sends
    # the rest under its send lock: requests of many tasks at once, each larger than
    # the socket takes, must reach the daemon whole (a torn one breaks the connection).
    async with stub_server(tmp_path) as (_srv, path), open_client(path) as client:
        await client.hello(1, "e")
        sizes = [1 + (i * 104_729) % (1 << 20) for i in range(48)]  # up to 1 MiB
        got: dict[int, list[int]] = {}

        async def one(i: int, n: int) -> None:
            await trio.sleep(0.0005 * (i % 8))  # new sends start while others are sent
            got[i] = await client.call("write", ino=2 + i, data=bytes([i]) * (n - 1) + b"\xff")

        async with trio.open_nursery() as nursery:
            for i, n in enumerate(sizes):
                nursery.start_soon(one, i, n)
        assert got == {i: [2 + i, n, i if n > 1 else 255, 255] for i, n in enumerate(sizes)}


async def test_a_peer_that_takes_no_reply_is_closed_and_others_are_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cached.server")
    async with stub_server(tmp_path, idle_timeout=0.5) as (srv, path):
        other = await Raw.open(path)
        assert errno_of(await other.call(1, "hello", owner=1, environment="e")) == 0
        deaf = await Raw.open(path)
        assert errno_of(await deaf.call(1, "hello", owner=2, environment="e")) == 0
        # Requests for more than the socket and the outbox hold, never read back.
        with trio.move_on_after(5):
            for batch in range(50):
                requests = (protocol.pack_request(10 + 64 * batch + i, "readdir", {"ino": 5000})
                            for i in range(64))  # fmt: skip
                if not await deaf.send(b"".join(requests)):
                    break
        # The writer gives up after the idle limit; the server offers no event for a
        # connection's end, so its count is polled.
        with trio.fail_after(10):
            while srv.connections > 1:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert errno_of(await other.call(2, "getattr", ino=7)) == 0
        await deaf.aclose()
        await other.aclose()
    text = [r.getMessage() for r in connection_lines(caplog)]
    assert sum("took no reply" in t for t in text) == 1, text


async def test_bad_connections_log_one_line_each_and_a_bug_logs_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cached.server")
    async with stub_server(tmp_path) as (_srv, path):
        for garbage in (b"\xc1", msgpack.packb([0, 1, "m", {"a": [[[1]]]}]), b"\x91\x90" * 10):
            conn = await Raw.open(path)
            await conn.send(garbage)
            assert await conn.wait_closed(5)
            await conn.aclose()
        for _ in range(3 * server.LOG_BURST):  # many more: the log stays bounded
            conn = await Raw.open(path)
            await conn.send(b"\xc1")
            assert await conn.wait_closed(5)
            await conn.aclose()
        conn = await Raw.open(path)
        assert errno_of(await conn.call(1, "hello", owner=1, environment="e")) == 0
        assert errno_of(await conn.call(2, "readlink", ino=5)) == errno.EIO  # the stub's bug
        assert errno_of(await conn.call(3, "getattr", ino=5)) == 0  # still served
        await conn.aclose()
    records = connection_lines(caplog)
    broke = [r for r in records if "broke the protocol" in r.getMessage()]
    assert len(broke) == server.LOG_BURST, [r.getMessage() for r in records]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in broke)
    bugs = [r for r in records if r.levelno >= logging.ERROR]
    assert len(bugs) == 1 and bugs[0].exc_info is not None, [r.getMessage() for r in bugs]
    assert "readlink" in bugs[0].getMessage()


async def test_admin_calls_stay_admin_and_shutdown_spares_mounts(tmp_path: Path) -> None:
    async with stub_server(tmp_path) as (srv, path):
        admin = await Raw.open(path)
        assert errno_of(await admin.call(1, "status")) == 0
        assert errno_of(await admin.call(2, "hello", owner=1, environment="e")) == errno.EINVAL
        assert errno_of(await admin.call(3, "getattr", ino=1)) == errno.EINVAL  # no session
        mount = await Raw.open(path)
        assert errno_of(await mount.call(1, "hello", owner=1, environment="e")) == 0
        assert errno_of(await mount.call(2, "stats")) == 0  # a mount may read the counters
        assert errno_of(await mount.call(3, "shutdown", force=True)) == errno.EINVAL
        assert errno_of(await admin.call(4, "shutdown")) == errno.EBUSY
        assert errno_of(await admin.call(5, "shutdown", force="yes")) == errno.EINVAL
        assert not srv.stopped.is_set()
        assert (await admin.call(6, "shutdown", force=True)).result is True
        assert srv.stopped.is_set()
        for conn in (admin, mount):
            await conn.aclose()
