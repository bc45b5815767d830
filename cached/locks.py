"""Locks by key, created on first use and dropped when nobody holds or waits for them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

import trio


class KeyedLocks:
    """``async with locks(key):`` serialises the tasks of this process that use ``key``.

    Memory stays proportional to the keys in use: a key's lock is dropped when
    its last user leaves.  trio locks are FIFO, so waiters run in arrival order.
    A free lock is taken without a pass of trio's run loop (no checkpoint): most
    keys are uncontended, and a cold open takes one.
    """

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def __call__(self, key: Hashable) -> AsyncIterator[None]:
        held = self._locks.get(key)
        lock, users = held if held is not None else (trio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            try:
                lock.acquire_nowait()  # free and nobody waiting (trio hands a lock over)
            except trio.WouldBlock:
                await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
