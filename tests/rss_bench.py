"""Memory benchmark: the cache daemon's and the mount's RSS over a Drupal-sized tree.

What it measures
    A generated tree of Drupal core's shape (:mod:`tests.drupal_tree`: 20,000 files by
    default, ``--files``; about 2,500 directories, up to 8 deep, median 1.3 kB, a tail up to
    1 MB; seeded) goes through three phases on a fresh cassfs tenant (``1/rss-<hex>``,
    ``cassfs up`` with default flags, a fresh cache dir):

    1. **copy in**: the directories made, then every file created, written and closed;
    2. **cold read**: after ``cassfs cache purge`` + ``sync; echo 3 >
       /proc/sys/vm/drop_caches`` + the settle wait, every file read whole (checked against
       its SHA-256, untimed);
    3. **warm read**: every file read again (from the daemon's cache).

    A thread samples every ``--interval`` seconds (0.2) ``VmRSS``, ``VmHWM`` and ``RssAnon`` from
    ``/proc/PID/status`` of the daemon (its pid from the daemon's ``status`` reply, as
    ``cassfs status`` shows) and of the mount (the front process ``cassfs up`` recorded for
    the mountpoint, :mod:`cassfs.state`), with the phase and the number of files done.

The report
    Per phase and process: the peak RSS sampled, ``VmHWM`` at the end of the phase (the
    process's peak since it started), RSS at 25/50/75/100 % of the files, and the growth per
    file: the slope of a least-squares line through (files done, RSS) of the phase's samples,
    in bytes per file (near 0 when memory stays bounded; the fit starts at 10 % of the files
    so that start-up and first-touch allocations do not count).

How to run it
    Needs the node with the schema applied and FUSE (root)::

        just bench-rss                          # = python -m tests.rss_bench
        python -m tests.rss_bench --files 2000 --json /tmp/rss.json
        python -m tests.rss_bench --memory-cache 6M   # bounds full early: flat heap after

    ``--contact-points``/``--keyspace`` default to ``$CASSFS_CONTACT_POINTS`` and
    ``$CASSFS_KEYSPACE``.  The mount and the temporary directory are removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cassfs.state import read_record
from cassfs.status import daemon_report
from tests.bench import read_whole, write_file
from tests.benchkit import BenchError, Cold, mounted_cassfs, sigterm_as_interrupt
from tests.drupal_tree import Tree, generate

log = logging.getLogger("rss_bench")

MiB = 1 << 20
PHASES = ("copy in", "cold read", "warm read")
FIT_FROM = 0.10  # the growth fit starts at this fraction of the files


def proc_memory(pid: int) -> tuple[int, int, int] | None:
    """``(VmRSS, VmHWM, RssAnon)`` of ``pid`` in bytes, or None when it is gone.

    RssAnon is the heap's part of VmRSS; the rest is file-backed (code, and the pages of
    the cache database that SQLite maps: diskcache maps at most 64 MiB of it) or shared.
    """
    rss = hwm = anon = 0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return rss, hwm, anon


@dataclass(frozen=True)
class Sample:
    """One sample: seconds since the start, phase, files done, and per process
    ``(VmRSS, VmHWM, RssAnon)`` in bytes (None: the process was gone)."""

    t: float
    phase: str
    done: int
    memory: dict[str, tuple[int, int, int] | None]


@dataclass
class Sampler:
    """Samples the processes' memory every ``interval`` seconds in a thread."""

    pids: dict[str, int]
    interval: float
    phase: str = "start"
    done: int = 0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = field(default_factory=time.monotonic)

    def sample(self) -> None:
        """Take one sample now."""
        memory = {name: proc_memory(pid) for name, pid in self.pids.items()}
        self.samples.append(Sample(time.monotonic() - self._t0, self.phase, self.done, memory))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def enter(self, phase: str) -> None:
        """Start ``phase`` at 0 files done (with a sample at its start)."""
        self.phase, self.done = phase, 0
        self.sample()

    def finish(self) -> None:
        """A sample at the end of the current phase."""
        self.sample()


def _slope(points: list[tuple[int, int]], start: float) -> float | None:
    """Least-squares slope of ``(files done, bytes)`` from ``start`` files on (None with
    fewer than two distinct counts)."""
    fit = [(done, value) for done, value in points if done >= start]
    if len({d for d, _ in fit}) < 2:
        return None
    return statistics.linear_regression([d for d, _ in fit], [v for _, v in fit]).slope


def phase_report(samples: list[Sample], process: str, files: int) -> dict[str, Any]:
    """Peak RSS, HWM at the end, RSS at 25/50/75/100 % and growth (bytes/file) of one
    phase's ``samples`` for ``process``: of RSS from :data:`FIT_FROM` of the files on, and
    of RssAnon from there and from half of the files on (the caches in memory are bounded:
    once they are full, the heap should stop growing)."""
    points = [(s.done, s.memory[process]) for s in samples if s.memory.get(process)]
    if not points:
        return {"peak_rss": None, "hwm_end": None, "at": {}, "bytes_per_file": None}
    rss = [(done, mem[0]) for done, mem in points if mem is not None]
    anon = [(done, mem[2]) for done, mem in points if mem is not None]
    at: dict[str, int | None] = {}
    for pct in (25, 50, 75, 100):
        mark = files * pct // 100
        after = [r for done, r in rss if done >= mark]
        at[f"{pct}%"] = after[0] if after else None
    last = points[-1][1]
    return {
        "peak_rss": max(r for _, r in rss),
        "hwm_end": last[1] if last is not None else None,
        "at": at,
        "bytes_per_file": _slope(rss, files * FIT_FROM),
        "anon_bytes_per_file": _slope(anon, files * FIT_FROM),
        "anon_bytes_per_file_late": _slope(anon, files * 0.5),
        "samples": len(rss),
    }


def copy_in(tree: Tree, root: Path, sampler: Sampler) -> None:
    """Make the directories, then create, write and close every file."""
    for d in tree.dirs:
        (root / d).mkdir(exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for i, spec in enumerate(tree.files, 1):
        write_file(str(root / spec.rel), spec.content(), flags)
        sampler.done = i


def read_every(tree: Tree, root: Path, sampler: Sampler, errors: list[str], what: str) -> None:
    """Read every file whole and check it against its SHA-256.  The check runs inside the
    loop (this bench measures memory), so its files/s are for orientation only."""
    bad = []
    for i, spec in enumerate(tree.files, 1):
        data = read_whole(str(root / spec.rel))
        if hashlib.sha256(data).digest() != spec.sha256():
            bad.append(str(spec.rel))
        sampler.done = i
    if bad:
        errors.append(f"{what}: {len(bad)} files differ from what was written, e.g. {bad[:3]}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.rss_bench", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--files", type=int, default=20_000, help="files (default 20,000)")
    parser.add_argument("--seed", type=int, default=10, help="seed of the tree")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("--settle", type=float, default=2.0, help="wait after the cold drop, s")
    parser.add_argument(
        "--contact-points", default=os.environ.get("CASSFS_CONTACT_POINTS", "127.0.0.1:9042")
    )
    parser.add_argument("--keyspace", default=os.environ.get("CASSFS_KEYSPACE", "cassfs"))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--memory-cache",
        default=None,
        help="the daemon's --memory-cache (default: its own, 128M); smaller bounds fill "
        "within the run, so the heap's growth after they are full shows",
    )
    args = parser.parse_args(argv)
    if args.files < 1 or args.interval <= 0:
        parser.error("--files must be at least 1 and --interval positive")
    return args


def print_report(
    console: Console, tree: Tree, report: dict[str, Any], seconds: dict[str, float]
) -> None:
    """The table of :func:`main`'s ``report`` (phase -> process -> phase_report)."""
    files = len(tree.files)
    table = Table(
        title=f"RSS: {files:,} files, {len(tree.dirs):,} dirs, {tree.total_bytes / 1e6:.1f} MB "
        "(Drupal-core-shaped, generated); MiB unless said"
    )
    for column in ("phase", "process", "files/s", "peak RSS", "VmHWM at end"):
        table.add_column(column, justify="left" if column in ("phase", "process") else "right")
    for pct in (25, 50, 75, 100):
        table.add_column(f"RSS @{pct}%", justify="right")
    table.add_column("growth B/file", justify="right")
    table.add_column("heap growth B/file", justify="right")
    table.add_column("heap growth, 2nd half", justify="right")

    def mib(value: int | None) -> str:
        return "-" if value is None else f"{value / MiB:,.1f}"

    def per_file(slope: float | None) -> str:
        return "-" if slope is None else f"{slope:,.0f}"

    for phase in PHASES:
        for process, row in report[phase].items():
            table.add_row(
                phase,
                process,
                f"{files / seconds[phase]:,.0f}",
                mib(row["peak_rss"]),
                mib(row["hwm_end"]),
                *(mib(row["at"].get(f"{p}%")) for p in (25, 50, 75, 100)),
                per_file(row["bytes_per_file"]),
                per_file(row.get("anon_bytes_per_file")),
                per_file(row.get("anon_bytes_per_file_late")),
            )
    console.print(table)
    console.print(
        f"growth = least-squares slope of RSS over files done, from {FIT_FROM:.0%} of the "
        "files on; heap = RssAnon (RSS less file-backed pages, such as SQLite's map of the "
        "cache database), from there and from 50%; VmHWM = the process's peak since it "
        "started. Depths: "
        f"{tree.depth_histogram()}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    console = Console(width=200)
    tree = generate(args.files, args.seed)
    log.info(
        "tree: %d files, %d dirs, %.1f MB",
        len(tree.files),
        len(tree.dirs),
        tree.total_bytes / 1e6,
    )
    cold = Cold(args.settle)
    if args.memory_cache is not None:  # the daemon `cassfs up` starts inherits it
        os.environ["CASSFS_MEMORY_CACHE"] = args.memory_cache
    tmp = Path(tempfile.mkdtemp(prefix="cassfs-rss-", dir="/tmp"))
    mnt, cache = tmp / "mnt", tmp / "cache"
    mnt.mkdir()
    cache.mkdir()
    environment = f"rss-{secrets.token_hex(6)}"
    errors: list[str] = []
    seconds: dict[str, float] = {}
    try:
        with (
            sigterm_as_interrupt(),
            mounted_cassfs(mnt, cache, environment, args.contact_points, args.keyspace),
        ):
            record = read_record(mnt)
            daemon = daemon_report(cache)
            if record is None or not daemon.get("answering"):
                raise BenchError(f"no mount record for {mnt} or no daemon for {cache}")
            pids = {"daemon": int(daemon["pid"]), "mount": record.pid}
            log.info("pids: %s", pids)
            sampler = Sampler(pids, args.interval)
            sampler.start()
            try:
                for phase in PHASES:
                    if phase == "cold read":
                        cold.drop(cache)
                    sampler.enter(phase)
                    start = time.perf_counter()
                    if phase == "copy in":
                        copy_in(tree, mnt, sampler)
                    else:
                        read_every(tree, mnt, sampler, errors, phase)
                    seconds[phase] = time.perf_counter() - start
                    sampler.finish()
                    log.info("%s: %.1f s", phase, seconds[phase])
            finally:
                sampler.stop()
    except BenchError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; cleaned up")
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        phase: {
            process: phase_report(
                [s for s in sampler.samples if s.phase == phase], process, len(tree.files)
            )
            for process in pids
        }
        for phase in PHASES
    }
    print_report(console, tree, report, seconds)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "files": len(tree.files),
                    "dirs": len(tree.dirs),
                    "total_bytes": tree.total_bytes,
                    "seed": args.seed,
                    "tenant": f"1/{environment}",
                    "cold_method": cold.method,
                    "seconds": seconds,
                    "phases": report,
                    "samples": [
                        {"t": s.t, "phase": s.phase, "done": s.done, "memory": s.memory}
                        for s in sampler.samples
                    ],
                    "errors": errors,
                },
                indent=1,
            )
            + "\n"
        )
    for error in errors:
        console.print(f"[bold red]FAIL[/] {error}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
