"""The kernel's lookup counts, kept by the FUSE front.

The kernel holds a reference per successful ``lookup``, ``create``, ``mkdir``,
``symlink`` and accepted readdirplus entry, and drops them with ``forget``.
An inode that lost its last name (unlink, rmdir, rename over it) must stay
usable until its count reaches zero; then it is purged.  Source: pyfuse3
``rst/general.rst`` "Lookup Counts" and ``rst/gotchas.rst``.
"""

from __future__ import annotations

from cached.model import ROOT_INO


class LookupCounts:
    """Counts per inode number; the root is never forgotten."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}

    def add(self, ino: int, n: int = 1) -> None:
        """The kernel took ``n`` more references to ``ino``."""
        self._counts[ino] = self._counts.get(ino, 0) + n

    def forget(self, ino: int, n: int) -> bool:
        """The kernel dropped ``n`` references; True when ``ino`` is now unknown to it.

        Dropping more than were counted is clamped at zero (unmount skips some
        forgets, and a restart loses counts), never an error.
        """
        left = self._counts.get(ino, 0) - n
        if left > 0:
            self._counts[ino] = left
            return False
        self._counts.pop(ino, None)
        return ino != ROOT_INO

    def count(self, ino: int) -> int:
        """References the kernel holds to ``ino``."""
        return self._counts.get(ino, 0)

    def known(self) -> list[int]:
        """Every inode the kernel holds a reference to."""
        return list(self._counts)

    def clear(self) -> None:
        """Drop everything (after unmount)."""
        self._counts.clear()
