"""``cassfs cache warmup``: a cold host fetches a subtree, then reads it from its cache."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cassfs import warmup
from tests.conftest import Mount, run_cli

pytestmark = [pytest.mark.cassandra, pytest.mark.fuse]


def _tree(root: Path) -> dict[str, bytes]:
    """A small site: nested directories, a file over the inline limit, an empty file, a
    symlink and a FIFO (neither opened); returns the regular files' bytes by path."""
    files = {
        "index.php": b"<?php echo 1;",
        "wp-includes/version.php": os.urandom(3000),
        "wp-includes/js/big.js": os.urandom(300_000),
        "wp-content/uploads/empty.txt": b"",
        "wp-content/themes/t/style.css": b"body{}" * 100,
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.symlink("index.php", root / "link.php")
    os.mkfifo(root / "wp-content" / "fifo")
    return files


def test_warmup_fetches_a_subtree_that_then_reads_without_fetching(
    mount_cassfs: Callable[..., Mount], tenant: tuple[int, str]
) -> None:
    a = mount_cassfs("host-a", *tenant)
    files = _tree(a.path)
    b = mount_cassfs("host-b", *tenant)  # another host: its cache holds none of it
    before = b.stats()
    result = run_cli("cache", "warmup", str(b.path / "wp-includes"), str(b.path / "index.php"),
                     "--json", "--jobs", "4")  # fmt: skip
    report = json.loads(result.stdout)
    included = {
        rel: data for rel, data in files.items() if rel.startswith(("wp-includes", "index"))
    }
    assert report["files"] == len(included)
    assert report["bytes"] == sum(len(d) for d in included.values())
    assert report["failed"] == 0 and report["errors"] == []
    warmed = b.stats()
    # Every warmed byte was fetched, by the warmup or by a readahead of the files of a
    # directory a lookup went into (cached/readahead.py), and none twice.  B's daemon
    # started with its mount.
    assert before["bytes_fetched"] <= len(files["index.php"])
    assert report["bytes"] <= warmed["bytes_fetched"] <= sum(map(len, files.values()))
    # everything warmed now reads from the cache: no byte fetched, and right
    for rel, data in included.items():
        assert (b.path / rel).read_bytes() == data
    assert b.stats()["bytes_fetched"] == warmed["bytes_fetched"]
    # the whole mount: the rest is fetched, the FIFO and the symlink are not opened
    report = json.loads(run_cli("cache", "warmup", str(b.path), "--json").stdout)
    assert report["files"] == len(files)
    assert b.stats()["bytes_fetched"] == sum(map(len, files.values()))


def test_warmup_refuses_a_path_that_is_not_on_a_mount(tmp_path: Path) -> None:
    result = run_cli("cache", "warmup", str(tmp_path), check=False)
    assert result.returncode == 1
    assert "is not on a cassfs mount" in result.stderr
    result = run_cli("cache", "warmup", str(tmp_path / "missing"), check=False)
    assert result.returncode == 1
    assert "does not exist" in result.stderr


def test_warm_opens_regular_files_only_and_counts_what_vanished(tmp_path: Path) -> None:
    """The walk and the opens (pure logic, on a local directory): symlinks, FIFOs and
    directories are not opened; a root that is gone counts as vanished, not failed."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ok").write_bytes(b"12345")
    (tmp_path / "top").write_bytes(b"x")
    os.symlink("ok", tmp_path / "d" / "link")
    os.mkfifo(tmp_path / "d" / "fifo")  # an open without O_NONBLOCK would wait for a writer
    progress: list[int] = []
    report = warmup.warm(
        [tmp_path, tmp_path / "gone"], jobs=2, on_progress=lambda r: progress.append(r.files)
    )
    assert (report.files, report.bytes, report.directories) == (2, 6, 2)
    assert (report.vanished, report.failed, report.errors) == (1, 0, [])
    assert progress[-1] == 2
    with pytest.raises(ValueError):
        warmup.warm([tmp_path], jobs=0)
