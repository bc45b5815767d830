"""pjdfstest (the POSIX conformance suite) on a cassfs mount: build it, run it, read prove's TAP.

pjdfstest's source is a tarball kept outside the project's tree, beside the checkout:
``../shared/third_party/pjdfstest-85a8aea.tar.gz`` (``$CASSFS_PJDFSTEST_TARBALL`` names another
one).  :func:`build` extracts and builds it (``autoreconf -ifs && ./configure &&
make pjdfstest``, which needs the Debian packages autoconf, automake, libtool and make: `just
install` installs them) into ``build/pjdfstest/<16 hex digits of the tarball's SHA-256>/`` in
the checkout (gitignored; ``$CASSFS_PJDFSTEST_BUILD_DIR`` moves it), and reuses that build as long
as the tarball is the same.  :func:`run_prove` runs ``prove -r`` on the suite (or part of it) from
a directory inside a mount, as root, and writes prove's whole output to
``build/pjdfstest/logs/prove-<time>.log`` (the newest 20 kept); :func:`parse_prove` reads prove's
summary (files and tests run, files failed and which of their tests failed, files that died).

``tests/test_pjdfstest.py`` (``just pjdfstest``) runs the whole suite on two hosts of one tenant.
By hand, on a mount you made yourself (as root)::

    just up                                   # mounts ./mnt
    python -m tests.pjdfstest_run --mount ./mnt                  # the whole suite
    python -m tests.pjdfstest_run --mount ./mnt rename chmod/00.t -v   # two parts, verbose TAP
    python -m tests.pjdfstest_run --mount ./mnt -j 1 --keep link

It runs in a new directory ``pjdfstest-<random>`` of the mount (removed afterwards unless
``--keep``), prints the summary and the log's path, and exits 1 when a test failed (2 when
pjdfstest could not be built).  ``-v`` shows every TAP line (with ``-j 1`` they come in order).
Test paths are relative to pjdfstest's ``tests`` directory (``rename``, ``rename/12.t``;
``tests/rename`` works too).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
TARBALL_NAME = "pjdfstest-85a8aea.tar.gz"
#: The pjdfstest source: a tarball beside the checkout, never inside it.
DEFAULT_TARBALL = REPO.parent / "shared" / "third_party" / TARBALL_NAME
#: Builds, one directory per tarball digest, and the logs of prove runs (gitignored).
DEFAULT_BUILD_DIR = REPO / "build" / "pjdfstest"
#: Whole-suite time limit, seconds (serial: about 4.5 minutes on a 2-core machine).
DEFAULT_TIMEOUT_S = 20 * 60.0
#: prove's ``-j``: files run at once.  The whole suite on a 2-core machine loaded by other work:
#: -j1 443 s, -j2 313 s, -j4 199 s, -j8 188 s, the same failures in each run; less loaded, -j1
#: 350 s and -j4 124 s.  The tests wait on the daemon and Cassandra more than on the CPU, and
#: each makes its own random names, so files running at once do not meet.
DEFAULT_JOBS = 4
#: Build steps' time limit, seconds each.
BUILD_STEP_TIMEOUT_S = 600.0
#: prove logs kept in ``<build dir>/logs``.
LOGS_KEPT = 20

#: Tools the build needs, with the Debian package that has each.
BUILD_TOOLS = {
    "autoreconf": "autoconf",
    "automake": "automake",
    "libtoolize": "libtool",
    "make": "make",
    "cc": "gcc",
}
#: Tools a run needs.
RUN_TOOLS = {"prove": "perl", "openssl": "openssl"}


class PjdfstestError(RuntimeError):
    """pjdfstest could not be built or run; the message says why and what to do."""


def tarball_path() -> Path:
    """The pjdfstest tarball: ``$CASSFS_PJDFSTEST_TARBALL`` or the one beside the checkout."""
    return Path(os.environ.get("CASSFS_PJDFSTEST_TARBALL", DEFAULT_TARBALL))


def build_dir() -> Path:
    """Where builds and logs go: ``$CASSFS_PJDFSTEST_BUILD_DIR`` or ``build/pjdfstest``."""
    return Path(os.environ.get("CASSFS_PJDFSTEST_BUILD_DIR", DEFAULT_BUILD_DIR))


def missing_tools(tools: dict[str, str]) -> list[str]:
    """``"tool (package)"`` for each of ``tools`` not on ``$PATH``."""
    return [f"{tool} ({pkg})" for tool, pkg in tools.items() if shutil.which(tool) is None]


# -- building ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    """A built pjdfstest: ``root`` holds the ``pjdfstest`` binary and the ``tests`` directory."""

    root: Path

    @property
    def binary(self) -> Path:
        """The ``pjdfstest`` program the test scripts call."""
        return self.root / "pjdfstest"

    @property
    def tests(self) -> Path:
        """The directory of test scripts, one subdirectory per syscall."""
        return self.root / "tests"

    def test_files(self, paths: Sequence[Path] = ()) -> list[str]:
        """Every ``*.t`` under ``paths`` (default: the whole suite), relative to :attr:`tests`."""
        found: set[str] = set()
        for path in paths or [self.tests]:
            if path.is_file():
                found.add(path.relative_to(self.tests).as_posix())
            else:
                found.update(p.relative_to(self.tests).as_posix() for p in path.rglob("*.t"))
        return sorted(found)

    def resolve(self, names: Iterable[str]) -> list[Path]:
        """Test paths given as ``rename``, ``rename/12.t`` or ``tests/rename/12.t``."""
        paths = []
        for name in names:
            rel = name.removeprefix("tests/").strip("/")
            path = self.tests / rel
            if not rel or not path.exists() or self.tests not in path.resolve().parents:
                raise PjdfstestError(f"no pjdfstest test {name!r} in {self.tests}")
            paths.append(path)
        return paths


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _step(argv: list[str], cwd: Path, out: Path, keep: Path) -> None:
    """Run one build step, appending its output to ``out``; raise with the tail on failure.

    On failure the whole log is copied to ``keep`` (the scratch directory is removed).
    """
    log.info("pjdfstest build: %s", " ".join(argv))
    with open(out, "ab") as f:
        f.write(f"$ {' '.join(argv)}\n".encode())
        f.flush()
        try:
            rc = subprocess.run(
                argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, timeout=BUILD_STEP_TIMEOUT_S
            ).returncode
        except (OSError, subprocess.TimeoutExpired) as exc:
            rc = -1
            f.write(f"{exc}\n".encode())
    if rc != 0:
        shutil.copyfile(out, keep)
        text = keep.read_text(errors="replace").splitlines()
        raise PjdfstestError(
            f"building pjdfstest failed at `{' '.join(argv)}` (exit status {rc}):\n"
            + "\n".join(text[-25:])
            + f"\n(whole build log: {keep}; a tool missing? run `just install`)"
        )


def build(tarball: Path | None = None, into: Path | None = None) -> Build:
    """Build pjdfstest from ``tarball`` under ``into``, or reuse the build of the same tarball.

    The build happens in a scratch directory renamed into place once ``make`` succeeded, so a
    directory named after the tarball's SHA-256 is always a complete build, and two runs at once
    cannot see half of one.  Raises :class:`PjdfstestError` (tarball missing, a tool missing,
    a step failing) with what to do.
    """
    tarball = tarball or tarball_path()
    into = into or build_dir()
    if not tarball.is_file():
        raise PjdfstestError(
            f"the pjdfstest tarball {tarball} is missing: it lives beside the checkout in "
            f"../shared/third_party/{TARBALL_NAME} (or set CASSFS_PJDFSTEST_TARBALL)"
        )
    digest = _digest(tarball)
    final = into / digest[:16]
    built = Build(final / "pjdfstest")
    if os.access(built.binary, os.X_OK) and built.tests.is_dir():
        log.info("pjdfstest: reusing the build in %s", built.root)
        return built
    missing = missing_tools(BUILD_TOOLS)
    if missing:
        raise PjdfstestError(
            f"building pjdfstest needs {', '.join(missing)}: run `just install` "
            "(it installs autoconf, automake, libtool and make)"
        )
    into.mkdir(parents=True, exist_ok=True)
    scratch = into / f".tmp-{digest[:16]}-{os.getpid()}-{secrets.token_hex(3)}"
    scratch.mkdir()
    started = time.monotonic()
    try:
        with tarfile.open(tarball) as tar:
            tar.extractall(scratch, filter="data")
        tops = [p for p in scratch.iterdir() if p.is_dir()]
        if len(tops) != 1 or not (tops[0] / "configure.ac").is_file():
            raise PjdfstestError(f"{tarball} does not hold one pjdfstest source directory")
        src = tops[0]
        if src.name != "pjdfstest":
            src = src.rename(scratch / "pjdfstest")
        out, keep = scratch / "build.log", into / f"build-failed-{digest[:16]}.log"
        _step(["autoreconf", "-ifs"], src, out, keep)
        _step(["./configure"], src, out, keep)
        _step(["make", "pjdfstest"], src, out, keep)
        (scratch / "SOURCE").write_text(f"{tarball}\nsha256 {digest}\n")
        try:
            scratch.rename(final)
        except OSError:
            if not os.access(built.binary, os.X_OK):  # not another run's build: a real error
                raise
            log.info("pjdfstest: another run built %s first", final)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    log.info("pjdfstest: built in %s in %.0f s", built.root, time.monotonic() - started)
    return built


# -- prove's output ----------------------------------------------------------------------------

_HEADER = re.compile(
    r"^(?P<path>\S+)\s+\(Wstat: (?P<wstat>\d+)(?: \([^)]*\))? "
    r"Tests: (?P<tests>\d+) Failed: (?P<failed>\d+)\)\s*$"
)
_FIELD = re.compile(r"^\s+(?P<key>[A-Za-z][A-Za-z -]*?):\s*(?P<value>.*?)\s*$")
_NUMBERS = re.compile(r"^\s+\d[\d,\s-]*$")
_TOTALS = re.compile(r"^Files=(?P<files>\d+), Tests=(?P<tests>\d+),\s+(?P<wall>\d+) wallclock secs")
_RESULT = re.compile(r"^Result: (?P<result>[A-Z]+)\s*$")
_BAD_PLAN = re.compile(r"planned (?P<planned>\d+) tests? but ran (?P<ran>\d+)")


def parse_numbers(text: str) -> list[int]:
    """``"3, 6, 30-40"`` → ``[3, 6, 30, 31, …, 40]`` (prove's lists of test numbers)."""
    numbers: list[int] = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        low, _, high = part.partition("-")
        numbers.extend(range(int(low), int(high or low) + 1))
    return numbers


def format_numbers(numbers: Iterable[int]) -> str:
    """``[3, 6, 30, 31, …, 40]`` → ``"3, 6, 30-40"``."""
    out: list[str] = []
    run: list[int] = []
    for n in sorted(set(numbers)):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [n]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(out)


@dataclass
class FileResult:
    """One file of prove's "Test Summary Report" (files with failures, deaths or TODO passes)."""

    name: str
    wstat: int
    tests_run: int
    failed: int
    failed_tests: list[int] = field(default_factory=list)
    todo_passed: list[int] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def not_run(self) -> int:
        """Tests planned but never run (the script died or stopped early), from a "Bad plan"."""
        for error in self.parse_errors:
            m = _BAD_PLAN.search(error)
            if m:
                return max(0, int(m["planned"]) - int(m["ran"]))
        return 0

    @property
    def is_failure(self) -> bool:
        """A failed test, a non-zero wait status or a TAP parse error (a passed TODO is not)."""
        return self.failed > 0 or self.wstat != 0 or bool(self.parse_errors)

    def describe(self) -> str:
        """``rename/12.t: failed 8-31`` plus deaths and parse errors."""
        parts = []
        if self.failed_tests:
            parts.append(f"failed {format_numbers(self.failed_tests)}")
        elif self.failed:
            parts.append(f"{self.failed} failed")
        if self.wstat:
            parts.append(f"wstat {self.wstat}")
        parts += self.parse_errors
        if self.not_run:
            parts.append(f"{self.not_run} not run")
        return f"{self.name}: {'; '.join(parts) or 'ok'}"


@dataclass
class ProveSummary:
    """What prove's summary says; ``files``/``tests``/``result`` are None when it is missing."""

    files: int | None = None
    tests: int | None = None
    wallclock_s: int | None = None
    result: str | None = None
    reported: dict[str, FileResult] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Prove got to its totals and result (it was not killed half way)."""
        return self.files is not None and self.tests is not None and self.result is not None

    @property
    def failures(self) -> dict[str, FileResult]:
        """The files that failed, by name relative to pjdfstest's ``tests`` directory."""
        return {name: r for name, r in self.reported.items() if r.is_failure}

    @property
    def files_failed(self) -> int:
        """How many files failed."""
        return len(self.failures)

    @property
    def tests_failed(self) -> int:
        """Tests that ran and failed (prove's ``Failed:`` summed)."""
        return sum(r.failed for r in self.reported.values())

    @property
    def tests_not_run(self) -> int:
        """Tests planned by files that died or stopped early, never run."""
        return sum(r.not_run for r in self.reported.values())

    def counts(self) -> str:
        """One line: files and tests run and failed, prove's wall time and result."""

        def shown(value: object) -> str:
            return "?" if value is None else str(value)

        return (
            f"Files={shown(self.files)} ({self.files_failed} failed), "
            f"Tests={shown(self.tests)} ({self.tests_failed} failed, {self.tests_not_run} not run)"
            f", {shown(self.wallclock_s)} s wallclock, Result: {shown(self.result)}"
        )


def parse_prove(output: str, tests_dir: Path | str | None = None) -> ProveSummary:
    """Read prove's (non-verbose or verbose) output: its "Test Summary Report" and totals.

    File names are made relative to ``tests_dir`` when they lie below it.  Lists of test numbers
    that prove wraps onto continuation lines are joined.  A file that died (non-zero wait
    status, "Bad plan", "No plan found") counts as failed even when none of its tests did.
    """
    prefix = str(tests_dir).rstrip("/") + "/" if tests_dir else None
    summary = ProveSummary()
    in_report = False
    current: FileResult | None = None
    last_list: list[int] | None = None
    for line in output.splitlines():
        if line.startswith("Test Summary Report"):
            in_report, current, last_list = True, None, None
            continue
        m = _TOTALS.match(line)
        if m:
            summary.files, summary.tests = int(m["files"]), int(m["tests"])
            summary.wallclock_s = int(m["wall"])
            in_report, current = False, None
            continue
        m = _RESULT.match(line)
        if m:
            summary.result = m["result"]
            continue
        if not in_report or line.startswith("---"):
            continue
        m = _HEADER.match(line)
        if m:
            name = m["path"]
            if prefix and name.startswith(prefix):
                name = name[len(prefix) :]
            current = FileResult(name, int(m["wstat"]), int(m["tests"]), int(m["failed"]))
            summary.reported[name] = current
            last_list = None
            continue
        if current is None:
            continue
        if last_list is not None and _NUMBERS.match(line):
            last_list.extend(parse_numbers(line))
            continue
        m = _FIELD.match(line)
        if not m:
            log.warning("prove summary: unexpected line %r", line)
            continue
        key, value = m["key"], m["value"]
        last_list = None
        if key == "Failed tests":
            current.failed_tests.extend(parse_numbers(value))
            last_list = current.failed_tests
        elif key == "TODO passed":
            current.todo_passed.extend(parse_numbers(value))
            last_list = current.todo_passed
        elif key == "Parse errors":
            current.parse_errors.append(value)
        else:
            current.notes.append(f"{key}: {value}")
    return summary


# -- running -----------------------------------------------------------------------------------


@dataclass
class ProveRun:
    """One prove run: its summary, exit status, wall time (seconds) and full output's log."""

    summary: ProveSummary
    returncode: int | None
    elapsed_s: float
    log_path: Path
    timed_out: bool
    command: list[str]
    expected_files: list[str]
    jobs: int


def new_log_path(logs: Path | None = None, label: str = "prove") -> Path:
    """A new ``<build dir>/logs/<label>-<time>.log``; keeps the newest :data:`LOGS_KEPT`."""
    logs = logs or build_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    old = sorted(logs.glob("*.log"), key=lambda p: p.stat().st_mtime)
    for stale in old[: max(0, len(old) - LOGS_KEPT + 1)]:
        stale.unlink(missing_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return logs / f"{label}-{stamp}-{secrets.token_hex(2)}.log"


def run_prove(
    built: Build,
    cwd: Path,
    paths: Sequence[Path] = (),
    *,
    jobs: int = DEFAULT_JOBS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    verbose: bool = False,
    log_path: Path | None = None,
    echo: Callable[[str], None] | None = None,
) -> ProveRun:
    """Run ``prove -r [-jN] [-v] PATHS`` (default: the whole suite) with ``cwd`` as its directory.

    prove and its tests run in their own session, killed whole after ``timeout_s`` seconds.
    Every output line goes to ``log_path`` (default :func:`new_log_path`) and to ``echo``.
    """
    missing = missing_tools(RUN_TOOLS)
    if missing:
        raise PjdfstestError(f"running pjdfstest needs {', '.join(missing)}: run `just install`")
    if os.geteuid() != 0:
        raise PjdfstestError("pjdfstest must run as root")
    log_path = log_path or new_log_path()
    targets = list(paths) or [built.tests]
    command = ["prove", "-r", *([f"-j{jobs}"] if jobs > 1 else []), *(["-v"] if verbose else [])]
    command += [str(p) for p in targets]
    env = {k: v for k, v in os.environ.items() if k != "dir"}  # misc.sh reads $dir
    env["LC_ALL"] = "C"
    log.info("pjdfstest: %s (in %s), output in %s", " ".join(command), cwd, log_path)
    started = time.monotonic()
    timed_out = threading.Event()
    with open(log_path, "w") as out:
        out.write(f"# {' '.join(command)}\n# cwd {cwd}\n")
        out.flush()
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            start_new_session=True,
            umask=0o022,
        )

        def kill() -> None:
            timed_out.set()
            log.error("pjdfstest: prove ran past %.0f s, killing it", timeout_s)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout_s, kill)
        timer.daemon = True
        timer.start()
        text: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                text.append(line)
                if echo:
                    echo(line)
            proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        elapsed = time.monotonic() - started
        out.write(f"# exit status {proc.returncode} after {elapsed:.1f} s\n")
    summary = parse_prove("".join(text), built.tests)
    return ProveRun(
        summary,
        proc.returncode,
        elapsed,
        log_path,
        timed_out.is_set(),
        command,
        built.test_files(targets),
        jobs,
    )


def report(run: ProveRun) -> str:
    """A few lines for a terminal: counts, wall time, failing files and the log's path."""
    s = run.summary
    lines = [
        f"pjdfstest: {s.counts()}; {run.elapsed_s:.0f} s with prove -j{run.jobs}"
        + (" (TIMED OUT)" if run.timed_out else ""),
    ]
    if not s.complete:
        lines.append(f"pjdfstest: prove gave no totals (exit status {run.returncode})")
    if s.files is not None and s.files != len(run.expected_files):
        lines.append(f"pjdfstest: {len(run.expected_files)} test files exist, prove ran {s.files}")
    for name in sorted(s.failures):
        lines.append(f"  {s.failures[name].describe()}")
    lines.append(f"pjdfstest: full prove output in {run.log_path}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.pjdfstest_run --mount MNT [TESTS...]``: exit 0 when nothing failed."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.pjdfstest_run",
        description="Build pjdfstest and run (part of) it on an existing mount.",
    )
    parser.add_argument("--mount", type=Path, required=True, help="a mounted cassfs directory")
    parser.add_argument("tests", nargs="*", help="e.g. rename or rename/12.t (default: all)")
    parser.add_argument("-j", "--jobs", type=int, default=DEFAULT_JOBS, help="prove -j")
    parser.add_argument("-v", "--verbose", action="store_true", help="prove -v: every TAP line")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not os.path.ismount(args.mount):
        log.warning("%s is not a mountpoint: testing the filesystem it lies on", args.mount)
    try:
        built = build()
        paths = built.resolve(args.tests)
        work = args.mount.resolve() / f"pjdfstest-{secrets.token_hex(4)}"
        work.mkdir()
        try:
            run = run_prove(
                built,
                work,
                paths,
                jobs=args.jobs,
                timeout_s=args.timeout,
                verbose=args.verbose,
                echo=lambda line: print(line, end="", flush=True),
            )
        finally:
            if args.keep:
                print(f"work directory kept: {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    except PjdfstestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(run))
    return 0 if run.summary.complete and not run.summary.failures and not run.timed_out else 1


if __name__ == "__main__":
    sys.exit(main())
