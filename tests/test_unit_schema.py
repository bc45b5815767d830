"""Unit tests of cassfs.schema's folder parsing on the real schema/ folder and on made-up ones.

No Cassandra here: tests/test_schema_upgrade.py applies and upgrades keyspaces on the node.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cached.store import SCHEMA_VERSION, TABLES, ContactPoints
from cassfs import schema
from cassfs.schema import DEFAULT_REPLICATION, ConsoleReporter, StepReport, load, schema_dir

SCHEMA = Path(__file__).parent.parent / "schema"
REPLICATION = "{'class': 'NetworkTopologyStrategy', 'dc1': 3}"


def _created(statements: tuple[str, ...]) -> list[str]:
    return [
        m.group(1) for s in statements if (m := re.search(r"CREATE TABLE IF NOT EXISTS (\S+)", s))
    ]


def test_schema_dir_defaults_to_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CASSFS_SCHEMA_DIR", raising=False)
    assert schema_dir() == SCHEMA.resolve()
    monkeypatch.setenv("CASSFS_SCHEMA_DIR", "/elsewhere")
    assert schema_dir() == Path("/elsewhere")


def test_real_schema_has_a_step_per_version() -> None:
    files = load(SCHEMA, "cassfs_test", REPLICATION)
    assert list(files.steps) == list(range(1, SCHEMA_VERSION + 1))
    (keyspace,) = files.keyspace
    assert keyspace.startswith("CREATE KEYSPACE IF NOT EXISTS cassfs_test")
    assert f"WITH replication = {REPLICATION}" in keyspace
    assert "durable_writes = true" in keyspace
    assert files.files[0] == "000_keyspace.cql" and files.files[2] == "002_integrity.cql"
    assert _created(files.steps[1]) == [
        "cassfs_test.inodes",
        "cassfs_test.dentries",
        "cassfs_test.chunks",
        "cassfs_test.schema_version",
    ]
    assert _created(files.steps[2]) == [
        "cassfs_test.versions",
        "cassfs_test.inode_index",
        "cassfs_test.intents",
        "cassfs_test.locks",
    ]
    altered = [s.split("ADD IF NOT EXISTS")[1].split()[0] for s in files.steps[2] if "ALTER" in s]
    assert altered == ["version", "pending", "sealed", "changed_ns"]


def test_the_steps_create_every_table_the_daemon_needs() -> None:
    files = load(SCHEMA, "ks", REPLICATION)
    created = {t for step in files.steps.values() for t in _created(step)}
    assert created == {f"ks.{table}" for table in TABLES}


def test_every_statement_can_run_twice() -> None:
    # An interrupted upgrade resumes at the step it stopped in: every statement of every
    # step must be idempotent: creations and additions guarded by IF NOT EXISTS, or
    # table options set (WITH on its own line: setting an option again changes nothing).
    files = load(SCHEMA, "ks", REPLICATION)
    for statement in (*files.keyspace, *(s for step in files.steps.values() for s in step)):
        first = statement.split("\n")[0]
        assert re.match(
            r"(CREATE (KEYSPACE|TABLE) IF NOT EXISTS|ALTER TABLE \S+ ADD IF NOT EXISTS) ", first
        ) or re.fullmatch(r"ALTER TABLE \S+\s+WITH comment = '[^']*'", statement.strip()), first


def test_statements_are_clean() -> None:
    files = load(SCHEMA, "cassfs_test", REPLICATION)
    for statement in (*files.keyspace, *(s for step in files.steps.values() for s in step)):
        assert "cassfs_test." in statement or statement.startswith("CREATE KEYSPACE")
        # Only the replication map itself has braces: no placeholder is left.
        assert "{" not in statement.replace(REPLICATION, "")
        assert "}" not in statement.replace(REPLICATION, "")
        assert not statement.endswith(";")
        assert statement == statement.strip()
        assert all(not line.lstrip().startswith("--") for line in statement.splitlines())


def test_real_schema_with_default_replication() -> None:
    files = load(SCHEMA, "ks", DEFAULT_REPLICATION)
    assert DEFAULT_REPLICATION == "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    assert DEFAULT_REPLICATION in files.keyspace[0]
    assert not any(DEFAULT_REPLICATION in s for step in files.steps.values() for s in step)


def test_a_semicolon_in_a_trailing_comment_does_not_end_a_statement() -> None:
    # Trailing "--" comments inside a statement may hold a ';' (the inodes table does).
    inodes = load(SCHEMA, "ks", REPLICATION).steps[1][0]
    assert inodes.count("CREATE ") == 1 and inodes.endswith(")")
    assert "PRIMARY KEY ((owner, environment, ino))" in inodes
    for column in ("content_id", "chunk_size", "target", "nlink"):
        assert re.search(rf"^\s+{column}\s", inodes, re.MULTILINE), column


@pytest.mark.parametrize(
    "keyspace", ["drop table;x", "1abc", "", "_x", "a-b", "a.b", "a b", "k" * 49, "ks;", "ks\n"]
)
def test_bad_keyspace_names_raise(keyspace: str) -> None:
    with pytest.raises(ValueError, match="bad keyspace"):
        load(SCHEMA, keyspace, REPLICATION)


@pytest.mark.parametrize("keyspace", ["a", "A1_b", "k" * 48])
def test_good_keyspace_names(keyspace: str) -> None:
    assert (
        load(SCHEMA, keyspace, REPLICATION)
        .keyspace[0]
        .startswith(f"CREATE KEYSPACE IF NOT EXISTS {keyspace}\n")
    )


def test_folder_order_comments_and_placeholders(tmp_path: Path) -> None:
    (tmp_path / "002_later.cql").write_text(
        "-- a comment with {keyspace} and a ;\n"
        "INSERT INTO {keyspace}.t (a)\n"
        "    VALUES (1);\n"
        "   -- indented comment;\n"
        "SELECT * FROM {keyspace}.t;  \n"
    )
    (tmp_path / "010_much_later.cql").write_text("SELECT 10 ;\n")
    (tmp_path / "001_first.cql").write_text("CREATE TABLE {keyspace}.t (a int PRIMARY KEY);\n")
    (tmp_path / "000_ks.cql").write_text("CREATE KEYSPACE {keyspace} WITH r = {replication};\n")
    (tmp_path / "notes.txt").write_text("not a statement;\n")
    files = load(tmp_path, "ks", "R")
    assert files.keyspace == ("CREATE KEYSPACE ks WITH r = R",)
    assert list(files.steps) == [1, 2, 10]
    assert files.steps == {
        1: ("CREATE TABLE ks.t (a int PRIMARY KEY)",),
        2: ("INSERT INTO ks.t (a)\n    VALUES (1)", "SELECT * FROM ks.t"),
        10: ("SELECT 10",),
    }
    assert files.files == {
        0: "000_ks.cql",
        1: "001_first.cql",
        2: "002_later.cql",
        10: "010_much_later.cql",
    }


@pytest.mark.parametrize("name", ["a.cql", "1_x.cql", "0001_x.cql", "001.cql", "001-x.cql"])
def test_badly_named_cql_file_raises(tmp_path: Path, name: str) -> None:
    (tmp_path / "000_ks.cql").write_text("SELECT 1;\n")
    (tmp_path / name).write_text("SELECT 2;\n")
    with pytest.raises(ValueError, match=re.escape(name)):
        load(tmp_path, "ks", REPLICATION)


def test_two_files_of_one_version_raise(tmp_path: Path) -> None:
    (tmp_path / "000_ks.cql").write_text("SELECT 1;\n")
    (tmp_path / "001_a.cql").write_text("SELECT 2;\n")
    (tmp_path / "001_b.cql").write_text("SELECT 3;\n")
    with pytest.raises(ValueError, match=r"001_a\.cql and 001_b\.cql"):
        load(tmp_path, "ks", REPLICATION)


def test_folder_without_the_keyspace_file_raises(tmp_path: Path) -> None:
    (tmp_path / "001_a.cql").write_text("SELECT 2;\n")
    with pytest.raises(FileNotFoundError, match="000_"):
        load(tmp_path, "ks", REPLICATION)


def test_statement_missing_its_semicolon_raises(tmp_path: Path) -> None:
    (tmp_path / "000_ks.cql").write_text("SELECT 1;\n")
    (tmp_path / "001_t.cql").write_text(
        "CREATE TABLE {keyspace}.a (x int PRIMARY KEY);\nCREATE TABLE {keyspace}.b (x int)\n"
    )
    with pytest.raises(ValueError, match=r"001_t\.cql"):
        load(tmp_path, "ks", REPLICATION)


def test_only_comments_and_blank_lines_after_last_statement_are_fine(tmp_path: Path) -> None:
    (tmp_path / "000_x.cql").write_text("SELECT 1;\n\n-- trailing comment\n   \n")
    assert load(tmp_path, "ks", REPLICATION).keyspace == ("SELECT 1",)


def test_empty_folder_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load(tmp_path, "ks", REPLICATION)
    (tmp_path / "readme.md").write_text("SELECT 1;\n")
    with pytest.raises(FileNotFoundError):
        load(tmp_path, "ks", REPLICATION)


def test_bad_keyspace_is_checked_before_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load(tmp_path / "missing", "1abc", REPLICATION)


def test_apply_refuses_a_folder_without_every_step_before_connecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "000_ks.cql").write_text("CREATE KEYSPACE {keyspace};\n")
    (tmp_path / "001_t.cql").write_text("CREATE TABLE {keyspace}.t (a int PRIMARY KEY);\n")
    monkeypatch.setenv("CASSFS_SCHEMA_DIR", str(tmp_path))
    # Port 1: nothing answers there, so only the folder check can raise FileNotFoundError.
    with pytest.raises(FileNotFoundError, match=r"no step 002_\*\.cql"):
        schema.apply(ContactPoints(("127.0.0.1",), 1), "ks")


def test_step_reports_read_as_one_line() -> None:
    assert str(StepReport("ks", 0, 1)) == "created schema version 1 in keyspace ks"
    assert (
        str(StepReport("ks", 1, 2, "3 inodes indexed, 2 versions recorded"))
        == "upgraded keyspace ks from version 1 to 2: 3 inodes indexed, 2 versions recorded"
    )


def test_console_reporter_off_a_terminal_prints_plain_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    lines: list[str] = []
    with ConsoleReporter(lines.append) as report:
        report.progress(2, 1000)
        report.step(StepReport("ks", 1, 2, "5 inodes indexed, 1 versions recorded"))
    assert lines == [
        "cassfs: upgraded keyspace ks from version 1 to 2: 5 inodes indexed, 1 versions recorded"
    ]
    assert [r.version for r in report.steps] == [2]
