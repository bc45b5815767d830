"""pjdfstest, the POSIX conformance suite, on a cassfs mount while a second host watches.

``test_pjdfstest_two_hosts`` builds pjdfstest from the tarball beside the checkout (see
:mod:`tests.pjdfstest_run`; it FAILS, never skips, when the tarball or a build tool is
missing), mounts hosts A and B (two ``cassfs up``, two cache dirs, so two daemons) on a fresh
tenant, runs the whole suite with ``prove -r`` from a new directory of A's mount while a thread
walks that directory from B every :data:`WALK_EVERY_S` seconds, then checks that B sees the
tree A sees.  It prints prove's counts and the path of its full output (kept in
``build/pjdfstest/logs/``), and fails on any failed test file not listed in
:data:`KNOWN_FAILURES`, and on any listed one that passes (so the list stays true).

``just pjdfstest`` runs this file alone.  ``CASSFS_PJDFSTEST_JOBS`` (prove ``-j``, default
:data:`tests.pjdfstest_run.DEFAULT_JOBS`) and ``CASSFS_PJDFSTEST_TIMEOUT`` (seconds, default
1200) change the run.  To iterate on one failing file by hand, see ``python -m
tests.pjdfstest_run --help``.

The other tests check the prove-output parser and the known-failure rules on canned output.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Mount
from tests.pjdfstest_run import (
    DEFAULT_JOBS,
    DEFAULT_TIMEOUT_S,
    PjdfstestError,
    ProveSummary,
    build,
    format_numbers,
    new_log_path,
    parse_numbers,
    parse_prove,
    report,
    run_prove,
)

log = logging.getLogger(__name__)

#: Test files allowed to fail, ``{"dir/NN.t": "reason"}``; one that passes fails the test.
KNOWN_FAILURES: dict[str, str] = {}

JOBS = int(os.environ.get("CASSFS_PJDFSTEST_JOBS", DEFAULT_JOBS))
TIMEOUT_S = float(os.environ.get("CASSFS_PJDFSTEST_TIMEOUT", DEFAULT_TIMEOUT_S))
#: Host B's daemon cache TTL and kernel entry/attr/negative TTLs, seconds (short: B watches A).
B_CACHE_TTL_S = 2.0
B_ENTRY_TTL_S = 1.0
#: Seconds between two walks of the test directory from host B.
WALK_EVERY_S = 10.0
#: How long B may lag behind A at the end, seconds, past its TTLs.
CONVERGE_SLACK_S = 20.0
#: Errors a walk from B may meet while A creates and removes names under it.
RACE_ERRNOS = {errno.ENOENT, errno.ESTALE, errno.ENOTDIR}
#: Longest path the kernel takes, bytes with its NUL (Linux PATH_MAX): pjdfstest's
#: ENAMETOOLONG tests nest directories deeper than a walk by absolute path can reach.
PATH_MAX = 4096


def tree(root: Path) -> list[str]:
    """Every name below ``root`` as ``relative/path`` plus a type letter (d, f, l, p, c, b, s)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            kind = next((k for k, t in _KINDS if t(mode)), "?")
            out.append(f"{path.relative_to(root).as_posix()} {kind}")
    return sorted(out)


_KINDS: list[tuple[str, Callable[[int], bool]]] = [
    ("d", stat.S_ISDIR),
    ("f", stat.S_ISREG),
    ("l", stat.S_ISLNK),
    ("p", stat.S_ISFIFO),
    ("c", stat.S_ISCHR),
    ("b", stat.S_ISBLK),
    ("s", stat.S_ISSOCK),
]


class Walker(threading.Thread):
    """Walks ``root`` (lstat of every entry) every ``every_s`` seconds until :meth:`stop`.

    Counts walks and entries; errors by errno name; keeps errors other than
    :data:`RACE_ERRNOS` (names vanishing under a walk) in ``unexpected``.
    """

    def __init__(self, root: Path, every_s: float) -> None:
        super().__init__(name="pjdfstest-walker-b", daemon=True)
        self.root, self.every_s = root, every_s
        self.walks = self.entries = 0
        self.errors: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Ask the walker to finish its current walk and end."""
        self._stopping.set()

    def _error(self, exc: OSError, path: Path) -> None:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self.errors[name] += 1
        if exc.errno == errno.ENAMETOOLONG and len(os.fsencode(path)) >= PATH_MAX:
            return  # the walker's absolute path is too long (pjdfstest nests that deep)
        if exc.errno not in RACE_ERRNOS and len(self.unexpected) < 20:
            self.unexpected.append(f"{path}: {exc}")

    def _walk(self, path: Path) -> None:
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as exc:
            self._error(exc, path)
            return
        for entry in entries:
            self.entries += 1
            try:
                is_dir = stat.S_ISDIR(entry.stat(follow_symlinks=False).st_mode)
            except OSError as exc:
                self._error(exc, Path(entry.path))
                continue
            if is_dir:
                self._walk(Path(entry.path))

    def run(self) -> None:
        """Walk, then wait ``every_s`` seconds or until stopped."""
        while True:
            self._walk(self.root)
            self.walks += 1
            if self._stopping.wait(self.every_s):
                return

    def summary(self) -> str:
        """``walks=…, entries=…, errors={…}``."""
        return f"walks={self.walks}, entries seen={self.entries}, errors={dict(self.errors)}"


def wait_same_tree(a: Path, b: Path, timeout_s: float) -> tuple[list[str], list[str], float]:
    """Poll until ``tree(b) == tree(a)`` or ``timeout_s`` seconds pass: (A's, B's, seconds)."""
    started = time.monotonic()
    ticker = threading.Event()
    while True:
        seen_a = tree(a)
        try:
            seen_b = tree(b)
        except OSError as exc:  # B listed a name it can no longer stat: not settled yet
            seen_b = [f"error {exc}"]
        waited = time.monotonic() - started
        if seen_a == seen_b or waited > timeout_s:
            return seen_a, seen_b, waited
        ticker.wait(0.25)


def judge(summary: ProveSummary, expected_files: list[str], known: dict[str, str]) -> list[str]:
    """What is wrong with a finished run, given the allowed failures ``known``; [] when right."""
    problems = []
    if not summary.complete:
        problems.append("prove printed no totals (killed or crashed): see its log")
    elif summary.files != len(expected_files):
        problems.append(f"prove ran {summary.files} test files of {len(expected_files)}")
    failures = summary.failures
    new = sorted(name for name in failures if name not in known)
    if new:
        problems.append(
            f"{len(new)} test files failed:\n"
            + "\n".join(f"  {failures[name].describe()}" for name in new)
        )
    for name, reason in sorted(known.items()):
        if name not in expected_files:
            problems.append(f"KNOWN_FAILURES lists {name} ({reason}), which is no test file")
        elif summary.complete and name not in failures:
            problems.append(f"{name} passes now: remove it from KNOWN_FAILURES ({reason})")
    return problems


@pytest.mark.pjdfstest
@pytest.mark.cassandra
@pytest.mark.fuse
@pytest.mark.timeout(TIMEOUT_S + 300)  # prove's own limit, then the second host's check
def test_pjdfstest_two_hosts(
    mount_cassfs: Callable[..., Mount], capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole suite on host A with host B mounted on the tenant: no unexpected failure."""
    try:
        built = build()
    except PjdfstestError as exc:
        failure = str(exc)
    else:
        failure = ""
    if failure:  # outside the except: no "during handling of the above exception"
        pytest.fail(failure, pytrace=False)
    owner, environment = secrets.randbelow(2**31 - 2) + 2, f"pjd-{secrets.token_hex(6)}"
    a = mount_cassfs("a", owner, environment)
    b_ttls = ["--cache-ttl", str(B_CACHE_TTL_S), "--entry-ttl", str(B_ENTRY_TTL_S)]
    b = mount_cassfs("b", owner, environment, None, *b_ttls, "--negative-ttl", str(B_ENTRY_TTL_S))
    work = f"run-{secrets.token_hex(4)}"
    (a.path / work).mkdir()
    log_path = new_log_path()
    with capsys.disabled():
        print(
            f"\npjdfstest: {len(built.test_files())} files with prove -j{JOBS} in {a.path / work}"
            f" (host A; host B walks it every {WALK_EVERY_S:g} s), tenant {owner}/{environment},"
            f" output in {log_path}",
            flush=True,
        )
    walker = Walker(b.path / work, WALK_EVERY_S)
    walker.start()
    try:
        run = run_prove(built, a.path / work, jobs=JOBS, timeout_s=TIMEOUT_S, log_path=log_path)
    finally:
        walker.stop()
        walker.join()
    problems = judge(run.summary, run.expected_files, KNOWN_FAILURES)
    if run.timed_out:
        problems.insert(0, f"prove ran past {TIMEOUT_S:g} s and was killed")
    for m in (a, b):
        if not os.path.ismount(m.path):
            problems.append(f"{m.path} is no longer mounted (see {m.cache_dir}/logs)")
    if walker.unexpected:
        problems.append("walks from host B failed:\n  " + "\n  ".join(walker.unexpected))
    seen_a, seen_b, waited = wait_same_tree(
        a.path / work, b.path / work, B_CACHE_TTL_S + B_ENTRY_TTL_S + CONVERGE_SLACK_S
    )
    if seen_a != seen_b:
        problems.append(
            f"after {waited:.0f} s host B sees {len(seen_b)} names under the test directory, "
            f"host A {len(seen_a)}: only on A {sorted(set(seen_a) - set(seen_b))[:10]}, "
            f"only on B {sorted(set(seen_b) - set(seen_a))[:10]}"
        )
    known = sorted(set(KNOWN_FAILURES) & set(run.summary.failures))
    text = "\n".join(
        [
            report(run),
            f"pjdfstest: known failures {len(known)} of {len(KNOWN_FAILURES)} listed",
            f"pjdfstest: host B {walker.summary()}; at the end A and B list "
            + ("the same" if seen_a == seen_b else "different")
            + f" {len(seen_a)} names left under the test directory (after {waited:.1f} s)",
        ]
    )
    with capsys.disabled():
        print(text, flush=True)
    assert not problems, "\n".join(problems) + f"\nfull prove output: {run.log_path}"


# -- the parser and the rules on canned output ------------------------------------------------

T = "/x/build/pjdfstest/0123/pjdfstest/tests"
CANNED = f"""\
{T}/a/01.t ..
Failed 20/40 subtests
{T}/a/02.t ..
Dubious, test returned 1 (wstat 256, 0x100)
Failed 30/32 subtests
{T}/a/03.t .. ok

Test Summary Report
-------------------
{T}/a/01.t      (Wstat: 0 Tests: 40 Failed: 20)
  Failed tests:  3, 6, 9, 12, 15, 18, 21, 24, 27, 30-40
{T}/a/02.t      (Wstat: 256 (exited 1) Tests: 2 Failed: 0)
  Non-zero exit status: 1
  Parse errors: Bad plan.  You planned 32 tests but ran 2.
{T}/a/03.t      (Wstat: 0 Tests: 3 Failed: 0)
  TODO passed:   3
{T}/a/04.t      (Wstat: 9 (Signal: KILL) Tests: 1 Failed: 0)
  Non-zero wait status: 9
  Parse errors: No plan found in TAP output
{T}/b/06.t      (Wstat: 0 Tests: 300 Failed: 9)
  Failed tests:  2, 4, 6, 8, 10, 12, 14
                16, 18
{T}/b/07.t      (Wstat: 0 Tests: 1280 Failed: 0)
  TODO passed:   1054, 1058
                1064
Files=9, Tests=1656, 268 wallclock secs ( 0.04 usr  0.01 sys +  0.01 cusr  0.00 csys =  0.06 CPU)
Result: FAIL
"""


def test_parse_prove_counts_failures_deaths_and_wrapped_lists() -> None:
    s = parse_prove(CANNED, T)
    assert s.complete and (s.files, s.tests, s.wallclock_s, s.result) == (9, 1656, 268, "FAIL")
    assert sorted(s.failures) == ["a/01.t", "a/02.t", "a/04.t", "b/06.t"]
    assert s.files_failed == 4 and s.tests_failed == 29 and s.tests_not_run == 30
    assert s.failures["a/01.t"].failed_tests == [3, 6, 9, 12, 15, 18, 21, 24, 27, *range(30, 41)]
    assert s.failures["b/06.t"].failed_tests == list(range(2, 19, 2))
    assert s.reported["b/07.t"].todo_passed == [1054, 1058, 1064]
    assert s.failures["a/02.t"].wstat == 256 and s.failures["a/04.t"].wstat == 9
    assert "No plan found" in s.failures["a/04.t"].describe()
    assert (
        s.failures["a/01.t"].describe() == "a/01.t: failed 3, 6, 9, 12, 15, 18, 21, 24, 27, 30-40"
    )


def test_parse_prove_all_passing_and_killed_runs() -> None:
    passed = parse_prove(
        "x.t .. ok\nAll tests successful.\nFiles=1, Tests=5,  1 wallclock secs\nResult: PASS\n"
    )
    assert passed.complete and passed.failures == {} and passed.result == "PASS"
    killed = parse_prove(f"{T}/a/01.t .. ok\n{T}/a/02.t .. ", T)
    assert not killed.complete and killed.failures == {}


def test_numbers_round_trip() -> None:
    assert parse_numbers("1-3, 5,  7-8\n  10") == [1, 2, 3, 5, 7, 8, 10]
    assert format_numbers([10, 1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8, 10"


def test_judge_new_failures_known_ones_and_known_ones_that_pass() -> None:
    s = parse_prove(CANNED, T)
    files = ["a/01.t", "a/02.t", "a/03.t", "a/04.t", "a/05.t", "b/06.t", "b/07.t", "b/08.t", "c.t"]
    known = {"a/01.t": "r1", "a/02.t": "r2", "a/04.t": "r4", "b/06.t": "r6"}
    assert judge(s, files, known) == []
    problems = judge(s, files, {**known, "a/03.t": "was broken", "z/99.t": "typo"})
    assert any("a/03.t passes now" in p for p in problems)
    assert any("z/99.t" in p and "no test file" in p for p in problems)
    new = judge(s, files, {"a/01.t": "r1"})
    assert len(new) == 1 and "3 test files failed" in new[0] and "a/02.t" in new[0]
    assert any("ran 9 test files of 8" in p for p in judge(s, files[:-1], known))
    assert any("no totals" in p for p in judge(parse_prove("x.t .. "), files, {}))


def test_walker_passes_over_trees_deeper_than_path_max(tmp_path: Path) -> None:
    """pjdfstest nests directories past PATH_MAX; a walk by absolute path meets
    ENAMETOOLONG there, which says nothing about the filesystem (seen in a CI-like run)."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for _level in range(24):  # 24 * 201 bytes: past PATH_MAX below tmp_path
            os.mkdir("d" * 200, dir_fd=fd)
            inner = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)
    walker = Walker(tmp_path, every_s=60)
    walker._walk(tmp_path)
    assert walker.errors["ENAMETOOLONG"] >= 1
    assert walker.unexpected == []
