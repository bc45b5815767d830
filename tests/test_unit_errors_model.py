"""Unit tests of cached.errors (errno-carrying exceptions over the wire) and cached.model."""

from __future__ import annotations

import errno

import pytest

from cached.errors import (
    CassfsError,
    DaemonUnavailable,
    Exists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotEmpty,
    NotFound,
    SchemaMissing,
    StorageError,
    from_wire,
)
from cached.model import (
    DIRECTORY,
    REGULAR,
    ROOT_INO,
    SYMLINK,
    Inode,
    check_name,
    mode_of_kind,
)
from cached.protocol import Decoder, Response, pack_response

# -- errors ------------------------------------------------------------------------------

DISTINCT = [
    (NotFound, errno.ENOENT),
    (Exists, errno.EEXIST),
    (NotEmpty, errno.ENOTEMPTY),
    (NotADirectory, errno.ENOTDIR),
    (IsADirectory, errno.EISDIR),
    (NameTooLong, errno.ENAMETOOLONG),
    (InvalidArgument, errno.EINVAL),
]
EIO_CLASSES = [CassfsError, StorageError, DaemonUnavailable, SchemaMissing]


@pytest.mark.parametrize(("cls", "err"), DISTINCT)
def test_error_reaches_the_caller_as_its_class_errno_and_message(
    cls: type[CassfsError], err: int
) -> None:
    # The daemon's error reply, decoded as the client decodes it: the front reports `err`.
    (msg,) = Decoder().feed(pack_response(3, cls("it failed: \u00e9").to_wire(), None))
    assert isinstance(msg, Response)
    back = from_wire(msg.error)
    assert type(back) is cls
    assert back.errno == err
    assert str(back) == "it failed: \u00e9"


@pytest.mark.parametrize("cls", EIO_CLASSES)
def test_eio_classes_reach_the_caller_as_eio(cls: type[CassfsError]) -> None:
    # EIO is shared by several classes, so only the errno and message survive.
    (msg,) = Decoder().feed(pack_response(3, cls("cassandra timed out").to_wire(), None))
    back = from_wire(msg.error)
    assert isinstance(back, CassfsError)
    assert back.errno == errno.EIO
    assert str(back) == "cassandra timed out"


def test_explicit_errno_overrides_the_class_default() -> None:
    exc = CassfsError("no space", err=errno.ENOSPC)
    assert exc.errno == errno.ENOSPC
    assert exc.to_wire() == [errno.ENOSPC, "no space"]
    assert CassfsError().errno == errno.EIO  # the class default is untouched
    assert CassfsError().to_wire() == [errno.EIO, ""]


@pytest.mark.parametrize("err", [errno.EBUSY, errno.EXDEV, errno.EACCES, 9999])
def test_unknown_errno_becomes_cassfs_error_with_that_errno(err: int) -> None:
    back = from_wire([err, "odd"])
    assert type(back) is CassfsError
    assert back.errno == err
    assert str(back) == "odd"


def test_tuple_payload_is_accepted() -> None:
    back = from_wire((errno.ENOENT, "gone"))
    assert type(back) is NotFound
    assert str(back) == "gone"


def test_non_str_message_is_stringified() -> None:
    back = from_wire([errno.EEXIST, b"x"])
    assert type(back) is Exists
    assert str(back) == "b'x'"


@pytest.mark.parametrize(
    "payload",
    [None, "boom", 5, [], [2], [2, "a", "b"], ["2", "a"], [None, "a"], [2.0, "a"], {"a": 1}],
)
def test_malformed_payload_becomes_eio(payload: object) -> None:
    back = from_wire(payload)
    assert type(back) is CassfsError
    assert back.errno == errno.EIO
    assert "malformed" in str(back)


# -- model -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [b"a", b"x" * 255, "\u00e9".encode() * 127 + b"x", b"...", b".hidden", b"a b\xff"]
)
def test_check_name_accepts(name: bytes) -> None:
    assert check_name(name) is None


def test_check_name_256_bytes_is_too_long() -> None:
    with pytest.raises(NameTooLong) as info:
        check_name(b"x" * 256)
    assert info.value.errno == errno.ENAMETOOLONG
    with pytest.raises(NameTooLong):
        check_name("\u00e9".encode() * 128)  # 128 characters, 256 bytes


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"/", b"a\0b", b"\0", b"abc/"])
def test_check_name_invalid(name: bytes) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_name(name)
    assert info.value.errno == errno.EINVAL


def make_inode() -> Inode:
    return Inode(
        ino=0x7FFF_FFFF_FFFF_FFFF,
        kind=REGULAR,
        mode=0o100640,
        uid=33,
        gid=33,
        size=5,
        atime_ns=1,
        mtime_ns=2,
        ctime_ns=3,
        parent=ROOT_INO,
        nlink=1,
        content_id=b"\x00" * 31 + b"\xff",
        chunk_size=1024 * 1024,
        target=b"",
        version=b"\x01" * 16,
    )


def test_inode_round_trip() -> None:
    inode = make_inode()
    assert Inode.from_wire(inode.to_wire()) == inode


def test_inode_round_trip_through_msgpack() -> None:
    inode = make_inode().evolve(kind=SYMLINK, mode=0o120777, target=b"../t\xff")
    (msg,) = Decoder().feed(pack_response(1, None, inode.to_wire()))
    assert Inode.from_wire(msg.result) == inode


def test_inode_from_wire_rejects_malformed_maps() -> None:
    wire = make_inode().to_wire()
    del wire["target"]
    with pytest.raises(TypeError):
        Inode.from_wire(wire)
    with pytest.raises(TypeError):
        Inode.from_wire({**make_inode().to_wire(), "extra": 1})


def test_inode_evolve_and_is_dir() -> None:
    inode = make_inode()
    moved = inode.evolve(parent=9, nlink=0)
    assert (moved.parent, moved.nlink, moved.ino) == (9, 0, inode.ino)
    assert (inode.parent, inode.nlink) == (1, 1)  # the original is unchanged
    assert inode.is_dir is False
    assert inode.evolve(kind=DIRECTORY).is_dir is True


@pytest.mark.parametrize(
    ("kind", "permissions", "mode"),
    [
        (DIRECTORY, 0o755, 0o040755),
        (REGULAR, 0o644, 0o100644),
        (SYMLINK, 0o777, 0o120777),
        (REGULAR, 0o4755, 0o104755),  # setuid kept
        (REGULAR, 0o170644, 0o100644),  # type bits in permissions are dropped
    ],
)
def test_mode_of_kind(kind: int, permissions: int, mode: int) -> None:
    assert mode_of_kind(kind, permissions) == mode


def test_mode_of_unknown_kind_raises() -> None:
    with pytest.raises(KeyError):
        mode_of_kind(99, 0o644)
