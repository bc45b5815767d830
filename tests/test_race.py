"""The race harness (:mod:`tests.race`): a short run inside ``just test``, and its checkers.

``test_race_short_run`` mounts three hosts on one tenant for ``CASSFS_RACE_SECONDS``
(default 60) seconds of random races with daemon kills and dropped connections, and
asserts that no invariant broke and that every kind of operation really ran.  The seed is
random and printed (``CASSFS_RACE_SEED`` replays one); the report's details (counts per
operation, faults, the first violations of each kind) are the assertion message.

The other tests feed the checkers made-up histories, to show that each check can fail.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from cassfs.inodes import ALIAS_BASE
from tests import race
from tests.conftest import KEYSPACE

#: Fewest successful operations of each kind a short run must show (about 60 s: a run on
#: this 2-core machine makes several times these).
MIN_OK = {
    "create": 20,
    "rewrite_inplace": 20,
    "rewrite_rename": 20,
    "rename_same": 20,
    "rename_cross": 10,
    "rename_top": 3,
    "unlink": 20,
    "mkdir": 10,
    "rmdir": 5,
    "read": 50,
    "lane_inplace": 20,
    "lane_rename": 20,
    "lane_read": 50,
}


@pytest.mark.race
@pytest.mark.cassandra
@pytest.mark.fuse
def test_race_short_run(cassandra: str, fuse_available: None, tmp_path: Path) -> None:
    """Three hosts race for about a minute: 0 violations, every operation kind ran."""
    seconds = float(os.environ.get("CASSFS_RACE_SECONDS", "60"))
    seed = int(os.environ.get("CASSFS_RACE_SEED", secrets.randbelow(2**31)))
    cfg = race.RaceConfig(
        seconds=seconds,
        seed=seed,
        contact_points=cassandra,
        keyspace=KEYSPACE,
        workdir=tmp_path / "race",
    )
    report = race.run(cfg)  # unmounts every host before it returns or raises
    details = report.details()
    print(details)
    print(report.summary())
    assert report.violations == [], f"{report.summary()}\n{details}"
    assert report.limits == [], f"no known limit is left: {report.summary()}\n{details}"
    scale = min(1.0, seconds / 60)
    short = {kind: report.ok(kind) for kind, n in MIN_OK.items() if report.ok(kind) < n * scale}
    assert short == {}, f"too few successful operations: {short}\n{details}"
    assert report.kills >= 3 * scale and report.drops >= 10 * scale, details


# -- the checkers on made-up histories --------------------------------------------------------

SIZE = 20_000


def test_judge_tells_whole_versions_from_cut_mixed_and_unknown_ones() -> None:
    a, b = race.make_content("a-1", SIZE), race.make_content("b-2", SIZE)
    assert len(a) == SIZE and race.judge(a, SIZE).whole
    assert race.judge(a, SIZE).vid == "a-1"
    assert race.judge(b"", SIZE).vid == race.EMPTY and race.judge(b"", SIZE).whole
    mixed = race.judge(a[:16384] + b[16384:], SIZE)  # pages of two versions
    assert not mixed.whole and "mixed" in mixed.problem
    cut = race.judge(a[:12000], SIZE)  # new content cut at an old size
    assert not cut.whole and cut.prefix
    assert not race.judge(a + b"x", SIZE).whole
    assert not race.judge(b"<?php garbage", SIZE).whole
    assert not race.judge(a, SIZE, known={"b-2"}).whole
    assert race.judge(a, SIZE, known={"a-1"}).whole


def _op(
    history: race.History, kind: str, host: int, src: str, t0: float, t1: float, **kw: str
) -> None:
    """Log a finished ``kind`` op from ``t0`` to ``t1`` s after the history's start.

    ``dst=`` for renames; ``err=ERRNO`` and ``step=`` for a failure (else it succeeded).
    """
    op = history.begin(kind, host, src, kw.get("dst", ""))
    op.t0, op.t1 = history.start + t0, history.start + t1
    if "err" in kw:
        op.outcome, op.step = kw["err"], kw["step"]
    else:
        op.outcome = "ok"


def test_two_exclusive_creates_of_one_name_are_a_violation_unless_it_was_removed() -> None:
    cfg = race.RaceConfig()
    history = race.History()
    _op(history, "create", 0, "d0/n1", 10.0, 10.1)
    _op(history, "create", 1, "d0/n1", 10.05, 10.2)
    kinds = [v.kind for v in race.analyze(cfg, history, None)]
    assert kinds == ["double-create"]
    _op(history, "unlink", 2, "d0/n1", 10.1, 10.15)
    assert race.analyze(cfg, history, None) == []


def test_eexist_then_enoent_unless_a_removal_could_explain_both() -> None:
    """This host's own removals show at once; another host's up to the staleness bound
    late (README), so an EEXIST right after one may come from the name's older view."""
    cfg = race.RaceConfig()
    bound = cfg.cache_ttl + cfg.entry_ttl + cfg.slack
    history = race.History()
    _op(history, "create", 2, "d0/n0", 20.0, 20.01, err="EEXIST", step="open")
    start = history.start
    history.followups.append(race.Followup(2, "d0/n0", start + 20.0, start + 20.1, "ENOENT"))
    kinds = [v.kind for v in race.analyze(cfg, history, None)]
    assert kinds == ["eexist-then-enoent"]
    _op(history, "rename_same", 2, "d0/n0", 19.0, 19.5, dst="d0/n1")  # seen here at once
    assert [v.kind for v in race.analyze(cfg, history, None)] == ["eexist-then-enoent"]
    _op(history, "unlink", 1, "d0/n0", 20.0 - bound - 0.2, 20.0 - bound - 0.1)  # too old
    assert [v.kind for v in race.analyze(cfg, history, None)] == ["eexist-then-enoent"]
    _op(history, "rename_same", 1, "d0/n0", 19.0, 19.5, dst="d0/n7")  # within the bound
    assert race.analyze(cfg, history, None) == []


def test_two_top_directories_moved_into_each_other_at_once_unless_one_was_made_again() -> None:
    cfg = race.RaceConfig()
    history = race.History()
    _op(history, "rename_top", 0, "d2", 10.0, 10.5, dst="d1/n0")
    _op(history, "rename_top", 2, "d1", 10.1, 10.9, dst="d2/n2")
    assert [v.kind for v in race.analyze(cfg, history, None)] == ["dir-cycle"]
    _op(history, "mkdir", 1, "d2", 10.6, 10.7)  # the second move went into a new d2
    assert race.analyze(cfg, history, None) == []


def test_errnos_the_race_cannot_explain() -> None:
    cfg = race.RaceConfig()
    history = race.History()
    _op(history, "rename_same", 0, "d0/n1", 5.0, 5.1, dst="d0/n2", err="EEXIST", step="rename")
    _op(history, "rewrite_inplace", 1, "d0/n3", 6.0, 6.1, err="EEXIST", step="open")
    _op(history, "unlink", 2, "d0/n4", 7.0, 7.1, err="EIO", step="unlink")
    _op(history, "unlink", 2, "d0/n5", 7.0, 7.1, err="ENOENT", step="unlink")
    _op(history, "lane_read", 1, "lane0/f0", 8.0, 8.1, err="ENOENT", step="open")
    kinds = sorted(v.kind for v in race.analyze(cfg, history, None))
    assert kinds == [
        "eexist-without-excl",
        "unexplained-errno lane_read/open ENOENT",
        "unexplained-errno rename_same/rename EEXIST",
        "unexplained-errno unlink/unlink EIO",
    ]
    history.faults[2].append([history.start + 7.05, history.start + 9.0])  # a daemon killed
    assert "unexplained-errno unlink/unlink EIO" not in {
        v.kind for v in race.analyze(cfg, history, None)
    }


def test_estale_after_another_host_moved_a_directory_is_a_known_limit_not_hidden() -> None:
    cfg = race.RaceConfig(cache_ttl=1.0, entry_ttl=1.0, slack=2.0)
    history = race.History()
    _op(history, "read", 1, "d0/n0/f", 10.0, 10.1, err="ESTALE", step="open")
    _op(history, "unlink", 0, "d0/n0/g", 10.0, 10.1, err="ESTALE", step="unlink")
    _op(history, "rename_top", 0, "d2", 9.0, 9.2, dst="d0/n0")
    kinds = sorted(v.kind for v in race.analyze(cfg, history, None))
    assert kinds == [  # a file's move explains nothing
        "unexplained-errno read/open ESTALE",
        "unexplained-errno unlink/unlink ESTALE",
    ]
    history.ops[-1].detail = race.MOVED_DIRECTORY
    history.limits.clear()
    kinds = sorted(v.kind for v in race.analyze(cfg, history, None))
    assert kinds == ["unexplained-errno unlink/unlink ESTALE"]  # the mover's own host
    assert [v.kind for v in history.limits] == [race.ESTALE_AFTER_REMOTE_DIR_MOVE]
    _op(history, "read", 1, "d0/n0/f", 30.0, 30.1, err="ESTALE", step="open")
    history.limits.clear()
    kinds = sorted(v.kind for v in race.analyze(cfg, history, None))
    assert kinds == ["unexplained-errno unlink/unlink ESTALE"]  # the old dentry may stay
    assert [v.kind for v in history.limits] == [race.ESTALE_AFTER_REMOTE_DIR_MOVE] * 2
    _op(history, "read", 1, "d0/n0/f", 8.0, 8.1, err="ESTALE", step="open")
    history.limits.clear()
    kinds = sorted(v.kind for v in race.analyze(cfg, history, None))
    assert "unexplained-errno read/open ESTALE" in kinds  # before the move


def test_estale_through_a_directory_another_host_moved_away_is_a_known_limit() -> None:
    """Host 1 moves d1 (and host 2 d1/n3) away; host 0's kernel still holds their old
    dentries, and its open of d1/n3 fails with ESTALE (seen in a 60 s run)."""
    cfg = race.RaceConfig(cache_ttl=1.0, entry_ttl=1.0, slack=2.0)
    history = race.History()
    _op(history, "rename_top", 1, "d1", 9.55, 9.62, dst="d2/n4")
    history.ops[-1].detail = race.MOVED_DIRECTORY
    _op(history, "read", 0, "d1/n3", 9.73, 9.77, err="ESTALE", step="open")
    assert race.analyze(cfg, history, None) == []
    assert [v.kind for v in history.limits] == [race.ESTALE_AFTER_REMOTE_DIR_MOVE]
    _op(history, "read", 1, "d1/n3", 9.73, 9.77, err="ESTALE", step="open")
    history.limits.clear()
    kinds = [v.kind for v in race.analyze(cfg, history, None)]
    assert kinds == ["unexplained-errno read/open ESTALE"]  # the mover's own kernel knew
    _op(history, "read", 0, "d0/n3", 9.73, 9.77, err="ESTALE", step="open")
    history.limits.clear()
    kinds = sorted(v.kind for v in race.analyze(cfg, history, None))
    assert kinds == ["unexplained-errno read/open ESTALE"] * 2  # nothing moved from d0


def test_estale_after_renaming_on_a_directory_taken_for_a_file_is_a_known_limit() -> None:
    """Host 0 moves a directory onto d2/n2; host 1, whose kernel still has d2/n2 as a file,
    renames that name on (renames act on names): its kernel never saw a directory move."""
    cfg = race.RaceConfig(cache_ttl=1.0, entry_ttl=1.0, slack=2.0)
    history = race.History()
    _op(history, "rename_same", 0, "d2/n3", 10.0, 10.1, dst="d2/n2")
    history.ops[-1].detail = race.MOVED_DIRECTORY
    _op(history, "rename_cross", 1, "d2/n2", 10.2, 10.3, dst="d1/n4")
    _op(history, "rename_same", 1, "d1/n4", 10.4, 10.5, dst="d1/n5")
    _op(history, "create", 1, "d1/n5", 10.8, 10.9, err="ESTALE", step="open")
    assert race.analyze(cfg, history, None) == []
    assert [v.kind for v in history.limits] == [race.ESTALE_AFTER_REMOTE_DIR_MOVE]
    _op(history, "create", 1, "d1/n4", 10.8, 10.9, err="ESTALE", step="open")
    history.limits.clear()
    kinds = [v.kind for v in race.analyze(cfg, history, None)]
    assert kinds == []  # d1/n4 too was a (chained) unseen directory move target
    _op(history, "create", 1, "d1/n6", 10.8, 10.9, err="ESTALE", step="open")
    history.limits.clear()
    kinds = [v.kind for v in race.analyze(cfg, history, None)]
    assert kinds == ["unexplained-errno create/open ESTALE"]  # no move onto d1/n6


def _lane_walk(content: bytes, ino: int = 7) -> race.Walk:
    walk = race.Walk()
    walk.files["lane0/f0"] = (ino, race.judge(content, SIZE))
    walk.names_of[ino].append("lane0/f0")
    return walk


def test_an_acknowledged_lane_write_replaced_by_older_content_is_lost() -> None:
    cfg = race.RaceConfig(size=SIZE)
    history = race.History()
    t = history.start
    history.lanes[(0, 0)] += [
        race.LaneWrite("v1", t + 1, t + 2, acked=True, in_place=True),
        race.LaneWrite("v2", t + 3, t + 4, acked=True, in_place=True),
    ]
    for vid, t0 in (("v1", 1.0), ("v2", 3.0)):
        history.known.add(vid)
        history.event(7, vid, t + t0, t + t0 + 1, acked=True)
    lost = race.analyze(cfg, history, _lane_walk(race.make_content("v1", SIZE)))
    assert {v.kind for v in lost} == {"lost-ack"}
    assert race.analyze(cfg, history, _lane_walk(race.make_content("v2", SIZE))) == []
    torn = race.make_content("v2", SIZE)[:16384] + race.make_content("v1", SIZE)[16384:]
    assert "torn-file" in {v.kind for v in race.analyze(cfg, history, _lane_walk(torn))}


def test_lane_reads_torn_stale_or_empty_mid_rewrite() -> None:
    cfg = race.RaceConfig(size=SIZE, cache_ttl=1.0, entry_ttl=1.0, slack=2.0)
    history = race.History()
    t = history.start
    history.lanes[(0, 0)] += [
        race.LaneWrite("v1", t + 1, t + 2, acked=True, in_place=False),
        race.LaneWrite("v2", t + 3, t + 4, acked=True, in_place=True),
    ]
    for vid, t0 in (("v1", 1.0), ("v2", 3.0)):
        history.event(7, vid, t + t0, t + t0 + 1, acked=True)

    def read(t0: float, content: bytes) -> race.Read:
        return race.Read(
            1, "lane0/f0", (0, 0), t + t0, t + t0 + 0.1, race.judge(content, SIZE), ino=7
        )

    v1, v2 = race.make_content("v1", SIZE), race.make_content("v2", SIZE)
    history.reads = [read(5.0, v1), read(5.0, v2)]  # within the bound: old is fine
    assert race.analyze(cfg, history, None) == []
    history.reads = [read(9.0, v1)]  # 5 s after v2 was acknowledged: more than 1 + 1 + 2
    assert [v.kind for v in race.analyze(cfg, history, None)] == ["stale-read"]
    history.reads = [read(3.5, b"")]
    assert [v.kind for v in race.analyze(cfg, history, None)] == ["empty-mid-rewrite"]
    history.reads = [read(5.0, b"")]  # what a prefetched empty temp file renamed over shows
    assert [v.kind for v in race.analyze(cfg, history, None)] == ["empty-read"]
    history.event(7, race.EMPTY, t + 3.0, t + 3.01, acked=False)  # v2's truncation, cached
    assert [v.kind for v in race.analyze(cfg, history, None)] == ["empty-mid-rewrite"]
    history.reads = [read(5.0, v2[:16384] + v1[16384:])]
    assert [v.kind for v in race.analyze(cfg, history, None)] == ["torn-read"]


def test_content_read_through_an_alias_node_is_checked_against_every_inode() -> None:
    """A mount answers a file's newer version with an alias node (``st_ino`` from
    ``ALIAS_BASE`` up) while handles of the older one read through the page cache: a read
    there names no inode, so its version need only have been written to some inode."""
    cfg = race.RaceConfig(size=SIZE)
    history = race.History()
    t = history.start
    history.event(7, "v1", t + 1, t + 2, acked=True)
    alias = ALIAS_BASE + 5

    def read(vid: str, ino: int) -> race.Read:
        content = race.make_content(vid, SIZE)
        return race.Read(0, "d0/n1", None, t + 3, t + 3.1, race.judge(content, SIZE), ino=ino)

    history.reads = [read("v1", alias), read("v1", 7)]
    assert race.analyze(cfg, history, None) == []
    history.reads = [read("v9", alias), read("v1", 8)]
    assert [v.kind for v in race.analyze(cfg, history, None)] == ["foreign-content"] * 2
    history.event(alias, "v2", t + 1, t + 2, acked=True)  # written through an alias node
    history.reads = [read("v2", 7)]
    assert race.analyze(cfg, history, None) == []


def test_the_final_walk_finds_two_names_of_one_inode(tmp_path: Path) -> None:
    (tmp_path / "d0").mkdir()
    (tmp_path / "d0" / "n1").write_bytes(race.make_content("v1", SIZE))
    os.link(tmp_path / "d0" / "n1", tmp_path / "n2")  # what a lost rename step leaves
    (tmp_path / "n3").write_bytes(b"torn")
    found = race.walk(tmp_path, SIZE)
    assert {v.kind for v in found.problems} == {"two-names", "nlink"}
    assert found.files["n2"][1].whole and not found.files["n3"][1].whole  # d0/n1: not read twice
