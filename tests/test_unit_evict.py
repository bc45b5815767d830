"""``cassfs cache evict``'s walk over plain data: which numbers reach the daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cassfs import evict
from cassfs.inodes import ALIAS_BASE


def test_a_mounts_own_node_numbers_are_skipped_not_sent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A node of its own (cassfs.inodes) has a number no inode has: the daemon would
    refuse the whole request for it."""
    walked = [(5, tmp_path, 0o40755), (ALIAS_BASE + 3, tmp_path / "new.php", 0o100644)]

    def walk(root: Path, report: evict.EvictReport) -> Iterator[tuple[int, Path, int]]:
        yield from walked

    monkeypatch.setattr(evict, "walk_inodes", walk)
    sent: list[list[int]] = []

    def call(method: str, **params: Any) -> dict[str, Any]:
        sent.append(params["inos"])
        return {"cached": [], "inodes": len(params["inos"]), "contents": 0}

    report = evict.evict([tmp_path], (1, "env"), call)
    assert sent == [[5], [5]]  # the dry run, then the eviction
    assert (report.inodes, report.skipped) == (1, 1)
