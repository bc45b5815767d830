"""Unit tests of cassfs.handles: the whole-file write buffer (spilling, short writes), handles."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cassfs.handles import SPILL_BYTES, OpenFile, WriteBuffer, pwrite_all

MiB = 1024 * 1024


@pytest.fixture
async def buf(tmp_path: Path) -> AsyncIterator[WriteBuffer]:
    spool = tmp_path / "spool"
    spool.mkdir()
    buffer = WriteBuffer(spool)
    yield buffer
    await buffer.close()


def test_open_file_moves_to_a_new_version_and_drops_inline_data() -> None:
    handle = OpenFile(fh=3, ino=5, content_id=b"\x01" * 32, size=3, data=b"abc")
    assert (handle.page_cache, handle.dirtied, handle.writable) == (True, False, False)
    handle.move_to(b"\x02" * 32, 7, 99, 4)
    assert (handle.content_id, handle.size, handle.mtime_ns, handle.epoch) == (
        b"\x02" * 32,
        7,
        99,
        4,
    )
    assert handle.data is None


async def test_new_buffer_is_empty_and_clean(buf: WriteBuffer) -> None:
    assert buf.size == 0
    assert buf.path is None
    assert buf.dirty is False
    assert await buf.read(0, 10) == b""
    assert buf.wire_content() == {"data": b""}


async def test_write_and_read_back(buf: WriteBuffer) -> None:
    await buf.write(0, b"hello")
    assert (buf.size, buf.dirty) == (5, True)
    assert await buf.read(0, 100) == b"hello"
    assert await buf.read(1, 3) == b"ell"
    assert await buf.read(5, 10) == b""
    assert await buf.read(50, 10) == b""
    await buf.write(3, b"p! world")  # overlaps and extends
    assert await buf.read(0, 100) == b"help! world"
    await buf.write(0, b"J")  # overwrite inside, size unchanged
    assert buf.size == 11
    assert await buf.read(0, 100) == b"Jelp! world"
    assert buf.wire_content() == {"data": b"Jelp! world"}


async def test_write_past_the_end_zero_fills_the_gap(buf: WriteBuffer) -> None:
    await buf.write(0, b"ab")
    await buf.write(6, b"cd")
    assert buf.size == 8
    assert await buf.read(0, 100) == b"ab\0\0\0\0cd"


async def test_first_write_at_an_offset(buf: WriteBuffer) -> None:
    await buf.write(3, b"x")
    assert buf.size == 4
    assert buf.wire_content() == {"data": b"\0\0\0x"}


async def test_truncate_shorter_and_longer(buf: WriteBuffer) -> None:
    await buf.write(0, b"0123456789")
    await buf.truncate(4)
    assert buf.size == 4
    assert await buf.read(0, 100) == b"0123"
    await buf.truncate(8)
    assert buf.size == 8
    assert await buf.read(0, 100) == b"0123\0\0\0\0"
    await buf.truncate(0)
    assert buf.size == 0
    assert await buf.read(0, 100) == b""
    assert buf.wire_content() == {"data": b""}


async def test_truncate_marks_dirty(buf: WriteBuffer) -> None:
    await buf.truncate(0)
    assert (buf.dirty, buf.size) == (True, 0)


async def test_write_after_truncate_longer_keeps_zeros(buf: WriteBuffer) -> None:
    await buf.write(0, b"abc")
    await buf.truncate(1)
    await buf.write(4, b"z")
    assert await buf.read(0, 10) == b"a\0\0\0z"


async def test_write_up_to_spill_bytes_stays_in_memory(buf: WriteBuffer) -> None:
    await buf.write(0, b"m" * SPILL_BYTES)
    assert buf.path is None
    assert buf.size == SPILL_BYTES
    assert buf.wire_content() == {"data": b"m" * SPILL_BYTES}


async def test_spill_moves_content_to_the_spool_dir(buf: WriteBuffer, tmp_path: Path) -> None:
    head = os.urandom(SPILL_BYTES - 10)
    await buf.write(0, head)
    assert buf.path is None
    tail = os.urandom(100)
    await buf.write(SPILL_BYTES - 10, tail)  # crosses the threshold
    path = buf.path
    assert path is not None
    assert path.parent == tmp_path / "spool"
    assert path.exists()
    assert buf.size == SPILL_BYTES + 90
    # Reads across the old in-memory boundary.
    across = (head + tail)[SPILL_BYTES - 20 : SPILL_BYTES + 20]
    assert await buf.read(SPILL_BYTES - 20, 40) == across
    assert await buf.read(0, buf.size) == head + tail
    assert await buf.read(buf.size, 10) == b""
    assert path.read_bytes() == head + tail
    assert buf.wire_content() == {"path": str(path)}
    assert buf.dirty is True


async def test_spill_by_writing_far_past_the_end(buf: WriteBuffer) -> None:
    await buf.write(0, b"start")
    await buf.write(2 * MiB, b"end")
    assert buf.path is not None
    assert buf.size == 2 * MiB + 3
    assert await buf.read(0, 5) == b"start"
    assert await buf.read(5, 10) == bytes(10)
    assert await buf.read(2 * MiB - 2, 10) == b"\0\0end"
    assert os.stat(buf.path).st_size == 2 * MiB + 3


async def test_spilled_buffer_writes_and_truncates_in_the_file(buf: WriteBuffer) -> None:
    data = bytes(range(256)) * (5 * 1024)  # 1.25 MiB
    await buf.write(0, data)
    path = buf.path
    assert path is not None
    await buf.write(10, b"XYZ")
    await buf.truncate(20)
    assert buf.path == path  # stays in the same file
    assert buf.size == 20
    assert await buf.read(0, 100) == data[:10] + b"XYZ" + data[13:20]
    await buf.truncate(30)
    assert await buf.read(0, 100) == data[:10] + b"XYZ" + data[13:20] + bytes(10)
    assert path.read_bytes() == data[:10] + b"XYZ" + data[13:20] + bytes(10)
    assert buf.wire_content() == {"path": str(path)}


async def test_truncate_longer_than_spill_bytes_spills(buf: WriteBuffer) -> None:
    await buf.write(0, b"abc")
    await buf.truncate(SPILL_BYTES + 1)
    assert buf.path is not None
    assert buf.size == SPILL_BYTES + 1
    assert await buf.read(0, 5) == b"abc\0\0"
    assert await buf.read(SPILL_BYTES - 1, 10) == b"\0\0"
    assert buf.path.stat().st_size == SPILL_BYTES + 1


async def test_close_removes_the_spool_file(tmp_path: Path) -> None:
    buffer = WriteBuffer(tmp_path)
    await buffer.write(0, b"x" * (SPILL_BYTES + 1))
    path = buffer.path
    assert path is not None
    assert path.exists()
    await buffer.close()
    assert not path.exists()
    assert buffer.path is None
    assert os.listdir(tmp_path) == []
    await buffer.close()  # twice is fine


async def test_close_tolerates_an_already_removed_spool_file(tmp_path: Path) -> None:
    buffer = WriteBuffer(tmp_path)
    await buffer.write(0, b"x" * (SPILL_BYTES + 1))
    assert buffer.path is not None
    buffer.path.unlink()
    await buffer.close()
    assert buffer.path is None


async def test_close_of_an_in_memory_buffer(tmp_path: Path) -> None:
    buffer = WriteBuffer(tmp_path)
    await buffer.write(0, b"abc")
    await buffer.close()
    assert os.listdir(tmp_path) == []


async def test_buffer_made_from_bytes_starts_clean(tmp_path: Path) -> None:
    buffer = WriteBuffer(tmp_path, b"old content")
    assert (buffer.dirty, buffer.size, buffer.path) == (False, 11, None)
    assert await buffer.read(4, 3) == b"con"
    await buffer.write(0, b"new")
    assert buffer.dirty is True
    assert buffer.wire_content() == {"data": b"new content"}


async def test_buffer_from_a_file_owns_the_file(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    source = spool / "materialized"
    data = os.urandom(2 * MiB + 7)
    source.write_bytes(data)
    buffer = await WriteBuffer.from_file(spool, source)
    assert (buffer.dirty, buffer.path) == (False, source)
    assert buffer.size == len(data)
    assert await buffer.read(MiB - 3, 6) == data[MiB - 3 : MiB + 3]
    await buffer.write(len(data), b"++")
    assert buffer.size == len(data) + 2
    assert source.read_bytes() == data + b"++"  # written in place
    assert buffer.wire_content() == {"path": str(source)}
    await buffer.close()
    assert not source.exists()


async def test_small_buffer_from_a_file_stays_a_file(tmp_path: Path) -> None:
    source = tmp_path / "small"
    source.write_bytes(b"tiny")
    buffer = await WriteBuffer.from_file(tmp_path, source)
    await buffer.write(4, b"!")
    assert await buffer.read(0, 10) == b"tiny!"
    assert buffer.wire_content() == {"path": str(source)}
    await buffer.close()
    assert not source.exists()


async def test_buffer_from_a_missing_file_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await WriteBuffer.from_file(tmp_path, tmp_path / "gone")
    assert os.listdir(tmp_path) == []


def _short_pwrites(monkeypatch: pytest.MonkeyPatch, at_most: int) -> list[int]:
    """Make os.pwrite write at most ``at_most`` bytes per call; returns the sizes written."""
    real = os.pwrite
    sizes: list[int] = []

    def short(fd: int, data: bytes, offset: int) -> int:
        written = real(fd, bytes(memoryview(data)[:at_most]), offset)
        sizes.append(written)
        return written

    monkeypatch.setattr(os, "pwrite", short)
    return sizes


async def test_short_pwrites_are_continued(
    buf: WriteBuffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = os.urandom(SPILL_BYTES)
    await buf.write(0, head)
    sizes = _short_pwrites(monkeypatch, 64 * 1024)
    tail = os.urandom(300_000)
    await buf.write(SPILL_BYTES - 100, tail)  # spills (pwrite of 1 MiB), then writes the tail
    assert buf.path is not None
    expected = head[: SPILL_BYTES - 100] + tail
    assert buf.path.read_bytes() == expected
    assert buf.size == len(expected)
    assert len(sizes) > 2 and max(sizes) == 64 * 1024


def test_pwrite_all_refuses_a_pwrite_that_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: 0)
    with open(tmp_path / "f", "wb") as f, pytest.raises(OSError):
        pwrite_all(f.fileno(), b"abc", 0)
