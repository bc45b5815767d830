"""Unit tests of the configuration parsers: ContactPoints.parse, parse_size and the size
options of both command lines."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from cached.api import parse_size
from cached.cliopts import BYTE_SIZE
from cached.daemon import main as daemon_main
from cached.store import ContactPoints
from cassfs.cli import main as cassfs_main

MiB = 1024**2
GiB = 1024**3


# -- ContactPoints -----------------------------------------------------------------------


def test_single_host_defaults_to_port_9042() -> None:
    points = ContactPoints.parse("127.0.0.1")
    assert points == ContactPoints(("127.0.0.1",), 9042)
    assert str(points) == "127.0.0.1:9042"


def test_hosts_with_one_port() -> None:
    points = ContactPoints.parse("a:1,b:1")
    assert points.hosts == ("a", "b")
    assert points.port == 1
    assert str(points) == "a:1,b:1"


def test_spaces_and_empty_items_are_ignored() -> None:
    points = ContactPoints.parse(" cass1:9142 , ,cass2:9142,")
    assert points == ContactPoints(("cass1", "cass2"), 9142)


def test_explicit_default_port_mixes_with_implicit() -> None:
    assert ContactPoints.parse("a,b:9042") == ContactPoints(("a", "b"), 9042)


def test_highest_port() -> None:
    assert ContactPoints.parse("h:65535").port == 65535


def test_str_round_trips_through_parse() -> None:
    points = ContactPoints.parse("x.example,y.example")
    assert str(points) == "x.example:9042,y.example:9042"
    assert ContactPoints.parse(str(points)) == points


@pytest.mark.parametrize("text", ["a:1,b:2", "a:1,b", "a,b:9043"])
def test_mixed_ports_raise(text: str) -> None:
    with pytest.raises(ValueError, match="same port"):
        ContactPoints.parse(text)


@pytest.mark.parametrize("text", ["a:0", "a:65536", "a:x", "a:", ":9042", "a:-1", "a:1.5"])
def test_bad_port_or_host_raises(text: str) -> None:
    with pytest.raises(ValueError, match="bad contact point"):
        ContactPoints.parse(text)


@pytest.mark.parametrize("text", ["", " ", ",", " , ,"])
def test_empty_raises(text: str) -> None:
    with pytest.raises(ValueError, match="no contact points"):
        ContactPoints.parse(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::1", ContactPoints(("::1",), 9042)),
        ("[::1]", ContactPoints(("::1",), 9042)),
        ("[::1]:9142", ContactPoints(("::1",), 9142)),
        ("fe80::1, 2001:db8::7", ContactPoints(("fe80::1", "2001:db8::7"), 9042)),
        ("[fe80::1]:9142,[2001:db8::7]:9142", ContactPoints(("fe80::1", "2001:db8::7"), 9142)),
        ("[::1]:9142,h:9142", ContactPoints(("::1", "h"), 9142)),
    ],
)
def test_ipv6_literals(text: str, expected: ContactPoints) -> None:
    points = ContactPoints.parse(text)
    assert points == expected
    assert ContactPoints.parse(str(points)) == points


def test_ipv6_literal_is_bracketed_in_str() -> None:
    assert str(ContactPoints.parse("::1")) == "[::1]:9042"


@pytest.mark.parametrize("text", ["[]:9042", "[::1]:0", "[::1]:x", "[::1]x", "[::1]:"])
def test_bad_ipv6_contact_point_raises(text: str) -> None:
    with pytest.raises(ValueError, match="bad contact point"):
        ContactPoints.parse(text)


# -- parse_size --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1G", GiB),
        ("1g", GiB),
        ("512M", 512 * MiB),
        ("2GiB", 2 * GiB),
        ("1GB", GiB),
        ("1073741824", GiB),
        ("0.5G", GiB // 2),
        ("1M", MiB),
        ("1024K", MiB),
        ("1T", 1024**4),
        (" 3G ", 3 * GiB),
        ("1048576", MiB),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["abc", "", "G", "1X", "1.2.3M", "nan", "1 G G"])
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="bad size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["10", "1048575", "1023K", "0", "-1G", "0.5M"])
def test_parse_size_rejects_under_one_mib(text: str) -> None:
    with pytest.raises(ValueError, match="under 1 MiB"):
        parse_size(text)


@pytest.mark.parametrize("text", ["inf", "1e400"])
def test_parse_size_rejects_infinity_with_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# -- size options on the command lines ---------------------------------------------------


@pytest.mark.parametrize(
    ("command", "args"),
    [
        (cassfs_main, ["up", "/nonexistent/mnt", "--memory-cache"]),
        (cassfs_main, ["up", "/nonexistent/mnt", "--cache-size"]),
        (daemon_main, ["/nonexistent/cache", "--memory-cache"]),
        (daemon_main, ["/nonexistent/cache", "--cache-size"]),
    ],
)
@pytest.mark.parametrize(
    ("value", "says"), [("12K", "size '12K' is under 1 MiB"), ("lots", "bad size 'lots'")]
)
def test_a_bad_size_option_is_a_usage_error_naming_the_option(
    command: click.Command, args: list[str], value: str, says: str
) -> None:
    result = CliRunner().invoke(command, [*args, value])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{args[-1]}': {says}" in result.output


def test_a_size_option_converts_to_bytes() -> None:
    assert BYTE_SIZE.convert("6M", None, None) == 6 * MiB
    assert BYTE_SIZE.convert(3 * GiB, None, None) == 3 * GiB  # a default given as bytes
