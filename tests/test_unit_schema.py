"""Unit tests of cassfs.schema.statements on the real schema/ folder and on made-up ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cassfs.schema import DEFAULT_REPLICATION, schema_dir, statements

SCHEMA = Path(__file__).parent.parent / "schema"
REPLICATION = "{'class': 'NetworkTopologyStrategy', 'dc1': 3}"


def test_schema_dir_defaults_to_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CASSFS_SCHEMA_DIR", raising=False)
    assert schema_dir() == SCHEMA.resolve()
    monkeypatch.setenv("CASSFS_SCHEMA_DIR", "/elsewhere")
    assert schema_dir() == Path("/elsewhere")


def test_real_schema_statements() -> None:
    result = statements(SCHEMA, "cassfs_test", REPLICATION)
    assert len(result) == 5
    first = result[0]
    assert first.startswith("CREATE KEYSPACE IF NOT EXISTS cassfs_test")
    assert f"WITH replication = {REPLICATION}" in first
    assert "durable_writes = true" in first
    tables = [re.search(r"CREATE TABLE IF NOT EXISTS (\S+)", s).group(1) for s in result[1:]]
    assert tables == [
        "cassfs_test.inodes",
        "cassfs_test.dentries",
        "cassfs_test.chunks",
        "cassfs_test.schema_version",
    ]
    for statement in result:
        assert "cassfs_test" in statement
        # Only the replication map itself has braces: no placeholder is left.
        assert "{" not in statement.replace(REPLICATION, "")
        assert "}" not in statement.replace(REPLICATION, "")
        assert not statement.rstrip().endswith(";")
        assert statement == statement.strip()
        assert all(not line.lstrip().startswith("--") for line in statement.splitlines())


def test_real_schema_with_default_replication() -> None:
    result = statements(SCHEMA, "ks", DEFAULT_REPLICATION)
    assert DEFAULT_REPLICATION == "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    assert result[0].startswith("CREATE KEYSPACE IF NOT EXISTS ks")
    assert DEFAULT_REPLICATION in result[0]
    assert sum(DEFAULT_REPLICATION in s for s in result) == 1


def test_each_statement_is_exactly_one_create() -> None:
    # Trailing "--" comments inside a statement may hold a ';' (the inodes table
    # does): only a ';' at the end of a line ends a statement.
    result = statements(SCHEMA, "ks", REPLICATION)
    assert [s.count("CREATE ") for s in result] == [1] * len(result)
    inodes = result[1]
    assert inodes.endswith(")")
    assert "PRIMARY KEY ((owner, environment, ino))" in inodes
    for column in ("content_id", "chunk_size", "target", "nlink"):
        assert re.search(rf"^\s+{column}\s", inodes, re.MULTILINE), column


@pytest.mark.parametrize(
    "keyspace", ["drop table;x", "1abc", "", "_x", "a-b", "a.b", "a b", "k" * 49, "ks;"]
)
def test_bad_keyspace_names_raise(keyspace: str) -> None:
    with pytest.raises(ValueError, match="bad keyspace"):
        statements(SCHEMA, keyspace, REPLICATION)


@pytest.mark.parametrize("keyspace", ["a", "A1_b", "k" * 48])
def test_good_keyspace_names(keyspace: str) -> None:
    assert statements(SCHEMA, keyspace, REPLICATION)[0].startswith(
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace}\n"
    )


def test_keyspace_with_trailing_newline_raises() -> None:
    try:
        statements(SCHEMA, "cassfs\n", REPLICATION)
    except ValueError:
        return
    raise AssertionError("keyspace 'cassfs\\n' was accepted")


def test_folder_order_comments_and_placeholders(tmp_path: Path) -> None:
    (tmp_path / "b.cql").write_text(
        "-- a comment with {keyspace} and a ;\n"
        "INSERT INTO {keyspace}.t (a)\n"
        "    VALUES (1);\n"
        "   -- indented comment;\n"
        "SELECT * FROM {keyspace}.t;  \n"
    )
    (tmp_path / "a.cql").write_text("CREATE KEYSPACE {keyspace} WITH r = {replication};\n")
    (tmp_path / "notes.txt").write_text("not a statement")
    assert statements(tmp_path, "ks", "R") == [
        "CREATE KEYSPACE ks WITH r = R",
        "INSERT INTO ks.t (a)\n    VALUES (1)",
        "SELECT * FROM ks.t",
    ]


def test_statement_missing_its_semicolon_raises(tmp_path: Path) -> None:
    (tmp_path / "001.cql").write_text(
        "CREATE TABLE {keyspace}.a (x int PRIMARY KEY);\nCREATE TABLE {keyspace}.b (x int)\n"
    )
    with pytest.raises(ValueError, match=r"001\.cql"):
        statements(tmp_path, "ks", REPLICATION)


def test_only_comments_and_blank_lines_after_last_statement_are_fine(tmp_path: Path) -> None:
    (tmp_path / "x.cql").write_text("SELECT 1;\n\n-- trailing comment\n   \n")
    assert statements(tmp_path, "ks", REPLICATION) == ["SELECT 1"]


def test_empty_folder_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        statements(tmp_path, "ks", REPLICATION)
    (tmp_path / "readme.md").write_text("SELECT 1;\n")
    with pytest.raises(FileNotFoundError):
        statements(tmp_path, "ks", REPLICATION)


def test_bad_keyspace_is_checked_before_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        statements(tmp_path / "missing", "1abc", REPLICATION)
