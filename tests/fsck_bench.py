"""Time ``cassfs fsck`` on a Drupal-sized tenant: ``python -m tests.fsck_bench``.

Writes (once; reused by later runs) 20,000 files of a Drupal-like size spread (median
about 1.3 kB, a few up to 1 MiB) in 2,000 directories straight through ``TenantStore``,
as the daemon writes them (versions row and chunks, inode with its index row, then the
name LWT), with at most ``--concurrency`` requests in flight; then runs ``cassfs fsck``
as a subprocess with and without content checks and prints each summary line and the
wall time.  Not part of ``just test``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import trio

from cached.content import CHUNK_SIZE, EMPTY_ID
from cached.model import DIRECTORY, REGULAR, ROOT_INO, Dentry, Inode, mode_of_kind
from cached.store import ContactPoints, Store, TenantStore, Version, new_op_id
from cassfs import schema

CONTACT_POINTS = os.environ.get("CASSFS_CONTACT_POINTS", "127.0.0.1:9042")
KEYSPACE = os.environ.get("CASSFS_TEST_KEYSPACE", "cassfs_test")


def sizes(count: int, rng: random.Random) -> list[int]:
    """File sizes in bytes: log-normal around 1.3 kB, 1% empty, ``count // 1000`` of
    256 kB to 1 MiB, none over 1 MiB."""
    result = [min(CHUNK_SIZE, int(rng.lognormvariate(math.log(1300), 1.1))) for _ in range(count)]
    for index in rng.sample(range(count), count // 100):
        result[index] = 0
    for index in rng.sample(range(count), max(1, count // 1000)):
        result[index] = rng.randint(256 * 1024, CHUNK_SIZE)
    return result


def _inode(ino: int, kind: int, parent: int, now: int, **extra: object) -> Inode:
    fields: dict[str, object] = {
        "ino": ino, "kind": kind, "mode": mode_of_kind(kind, 0o755 if kind == DIRECTORY else 0o644),
        "uid": 33, "gid": 33, "size": 0, "atime_ns": now, "mtime_ns": now, "ctime_ns": now,
        "parent": parent, "nlink": 1, "content_id": b"", "chunk_size": 0, "target": b"",
    }  # fmt: skip
    fields.update(extra)
    return Inode(**fields)  # type: ignore[arg-type]


async def build(ts: TenantStore, files: int, dirs: int, concurrency: int, seed: int) -> int:
    """Write the tree with ``concurrency`` workers; returns its content bytes."""
    rng = random.Random(seed)
    now = time.time_ns()
    await ts.put_inode(_inode(ROOT_INO, DIRECTORY, ROOT_INO, now))
    dir_inos = [ROOT_INO]
    made_dirs: list[tuple[int, int, bytes]] = []  # (parent, ino, name)
    for number in range(dirs):
        parent = dir_inos[int(len(dir_inos) * rng.random() ** 0.5)]  # favour deeper parents
        dir_inos.append(rng.getrandbits(62) + 2)
        made_dirs.append((parent, dir_inos[-1], b"d%04d" % number))
    spread = sizes(files, rng)
    made_files = [
        (dir_inos[rng.randrange(1, len(dir_inos))], rng.getrandbits(62) + 2, b"f%05d.php" % n, size)
        for n, size in enumerate(spread)
    ]

    async def make_dir(parent: int, ino: int, name: bytes) -> None:
        await ts.create_inode(_inode(ino, DIRECTORY, parent, now))
        outcome = await ts.insert_dentry(Dentry(parent, name, ino, DIRECTORY), now)
        assert outcome.applied, name

    async def make_file(parent: int, ino: int, name: bytes, size: int) -> None:
        extra: dict[str, object] = {"content_id": EMPTY_ID, "chunk_size": CHUNK_SIZE}
        if size:
            data = random.Random(ino).randbytes(size)
            version = new_op_id()
            digest = hashlib.sha256(data).digest()
            await ts.put_version(Version(ino, version, digest, size, CHUNK_SIZE, now))
            await ts.put_chunk(ino, version, 0, data)
            extra.update(version=version, content_id=digest, size=size)
        await ts.create_inode(_inode(ino, REGULAR, parent, now, **extra))
        outcome = await ts.insert_dentry(Dentry(parent, name, ino, REGULAR), now)
        assert outcome.applied, name

    async def workers(jobs: list[tuple[int, ...]], make: Callable[..., Awaitable[None]]) -> None:
        queue = iter(jobs)

        async def worker() -> None:
            for job in queue:
                await make(*job)

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)

    started = time.monotonic()
    await workers(made_dirs, make_dir)  # type: ignore[arg-type]
    await workers(made_files, make_file)  # type: ignore[arg-type]
    print(
        f"bench: wrote {files} files ({sum(spread) / 1e6:.1f} MB, median "
        f"{sorted(spread)[files // 2]} B) in {dirs} directories in "
        f"{time.monotonic() - started:.0f} s"
    )
    return sum(spread)


async def prepare(args: argparse.Namespace, tenant: tuple[int, str]) -> None:
    store = await Store.connect(ContactPoints.parse(args.contact_points), args.keyspace)
    try:
        ts = store.tenant(*tenant)
        if await ts.get_inode(ROOT_INO) is not None and not args.rebuild:
            print(f"bench: tenant {tenant[0]}/{tenant[1]} is there already (--rebuild to rewrite)")
            return
        await build(ts, args.files, args.dirs, args.concurrency, args.seed)
    finally:
        await store.close()


def fsck(args: argparse.Namespace, tenant: tuple[int, str], *extra: str) -> float:
    command = [
        sys.executable, "-m", "cassfs", "fsck", "--contact-points", args.contact_points,
        "--keyspace", args.keyspace, "--owner", str(tenant[0]), "--environment", tenant[1],
        *extra,
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.monotonic() - started
    print(f"bench: cassfs fsck {' '.join(extra)} -> exit {result.returncode}, {seconds:.1f} s wall")
    print("  " + (result.stdout.strip().splitlines() or ["(no output)"])[-1])
    if result.returncode != 0:
        print(result.stdout[-2000:] + result.stderr[-2000:])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contact-points", default=CONTACT_POINTS)
    parser.add_argument("--keyspace", default=KEYSPACE)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--dirs", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--environment", help="the tenant's environment (default: by the sizes)")
    parser.add_argument("--rebuild", action="store_true", help="write a new tree (new tenant)")
    parser.add_argument("--runs", type=int, default=1, help="fsck runs of each kind")
    args = parser.parse_args()
    schema.apply(ContactPoints.parse(args.contact_points), args.keyspace)
    environment = args.environment or f"fsck-bench-{args.files}-{args.dirs}-{args.seed}"
    if args.rebuild:
        environment = f"{environment}-{time.time_ns()}"
    tenant = (424242, environment)
    print(f"bench: tenant {tenant[0]}/{tenant[1]} in keyspace {args.keyspace}")
    trio.run(prepare, args, tenant)
    for _ in range(args.runs):
        fsck(args, tenant)
        fsck(args, tenant, "--no-content")


if __name__ == "__main__":
    main()
