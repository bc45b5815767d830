"""A warm WordPress page, opcache on: cassfs beside a native directory in one run (issue 9).

What it measures
    WordPress 6.1 (Debian's ``wordpress`` package, with its ``twentytwentythree`` theme) is
    copied into a native directory and into a fresh cassfs tenant mounted with the
    default flags (the change feed runs, long kernel timeouts).  Each copy is served by
    its own ``php -S`` (one process, opcache on for the CLI server, PHP's defaults
    otherwise: ``validate_timestamps`` on, ``revalidate_freq`` 2 s), both against one
    MariaDB database installed once through ``wp-admin/install.php``.  After warm-up
    requests, ``ab -n REQUESTS -c 1`` fetches the front page and the login page from each
    server in turn, ``--rounds`` times; the median requests/s of each is compared.  Every
    answer must be a 200 of the length of the first (``ab``'s failed and non-2xx counts).

    Then the cold front page (issue 10's "first WordPress front page after a purge"),
    ``--cold-rounds`` times for each copy in turn: the php server is stopped, the cache
    emptied (``cassfs cache purge`` for cassfs; the kernel's caches dropped for both,
    as ``tests.bench`` does), a new ``php -S`` started (opcache empty) and its first
    request of ``/`` timed, milliseconds.

Why ratios
    These machines are shared and noisy: the two servers take turns within one run, so
    cassfs over native is the figure to compare between runs.

How to run it
    Needs the node with the schema applied, FUSE (root) and ``php8.2-cli php8.2-mysql
    php8.2-opcache mariadb-server apache2-utils`` (``just bench-wordpress`` installs them
    and fetches the WordPress tree and theme with ``apt-get download``)::

        python -m tests.wordpress_bench --tree /tmp/wpdeb/x/usr/share/wordpress \\
            --theme /tmp/wpdeb/x/usr/share/wordpress/wp-content/themes/twentytwentythree

    MariaDB runs from a temporary data directory on a private socket, stopped at the end;
    mounts and temporary directories are removed too.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.benchkit import BenchError, Cold, mounted_cassfs, sigterm_as_interrupt

log = logging.getLogger("bench")

#: Pages fetched: the front page and the login page (the issue's two).
PAGES = ("/", "/wp-login.php")
#: Requests before timing, per page and server (opcache, realpath cache, daemon, kernel).
WARMUP = 20

WP_CONFIG = """<?php
define('DB_NAME', 'wordpress');
define('DB_USER', 'root');
define('DB_PASSWORD', '');
define('DB_HOST', 'localhost:{socket}');
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
define('WP_HOME', 'http://' . $_SERVER['HTTP_HOST']);
define('WP_SITEURL', 'http://' . $_SERVER['HTTP_HOST']);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('DISABLE_WP_CRON', true);
{salts}
$table_prefix = 'wp_';
if (!defined('ABSPATH')) {{ define('ABSPATH', __DIR__ . '/'); }}
require_once ABSPATH . 'wp-settings.php';
"""

SALT_NAMES = (
    "AUTH_KEY", "SECURE_AUTH_KEY", "LOGGED_IN_KEY", "NONCE_KEY",
    "AUTH_SALT", "SECURE_AUTH_SALT", "LOGGED_IN_SALT", "NONCE_SALT",
)  # fmt: skip


def need(*commands: str) -> None:
    """Fail with what to install when a command is missing."""
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        raise BenchError(
            f"missing {', '.join(missing)}: run `just bench-wordpress`, which installs "
            "php8.2-cli php8.2-mysql php8.2-opcache mariadb-server apache2-utils"
        )


def wait_until(check: object, seconds: float, what: str) -> None:
    """Call ``check()`` every 0.1 s until it is true; BenchError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {seconds} s")
        time.sleep(0.1)


@contextmanager
def mariadb(workdir: Path) -> Iterator[Path]:
    """A MariaDB server on a private socket with an empty ``wordpress`` database; yields
    the socket's path."""
    data, socket = workdir / "mysql", workdir / "mysql.sock"
    data.mkdir()
    subprocess.run(
        ["mariadb-install-db", f"--datadir={data}", "--user=root",
         "--auth-root-authentication-method=normal", "--skip-test-db"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = subprocess.Popen(
        ["mariadbd", f"--datadir={data}", f"--socket={socket}", "--skip-networking",
         "--user=root", f"--pid-file={workdir / 'mysql.pid'}",
         f"--log-error={workdir / 'mysql.err'}"],
    )  # fmt: skip
    try:
        wait_until(socket.exists, 60, "MariaDB's socket")
        subprocess.run(
            ["mariadb", f"--socket={socket}", "-uroot", "-e", "CREATE DATABASE wordpress"],
            check=True, capture_output=True,
        )  # fmt: skip
        yield socket
    finally:
        server.terminate()
        server.wait(60)


def install_copy(tree: Path, theme: Path, dest: Path, socket: Path, salts: str) -> None:
    """Copy WordPress (symlinks as they are) and the theme into ``dest``, with a
    wp-config.php for the database on ``socket``."""
    shutil.copytree(tree, dest, symlinks=True, dirs_exist_ok=True)
    shutil.copytree(theme, dest / "wp-content" / "themes" / theme.name, symlinks=True)
    (dest / "wp-config.php").write_text(WP_CONFIG.format(socket=socket, salts=salts))


@contextmanager
def php_server(root: Path, port: int, workdir: Path) -> Iterator[str]:
    """``php -S`` serving ``root`` with opcache on; yields its base URL."""
    log_file = open(workdir / f"php-{port}.log", "wb")
    server = subprocess.Popen(
        ["php", "-d", "opcache.enable=1", "-d", "opcache.enable_cli=1",
         "-d", "opcache.memory_consumption=128", "-S", f"127.0.0.1:{port}", "-t", str(root)],
        stdout=log_file, stderr=subprocess.STDOUT, cwd=root,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            try:
                urllib.request.urlopen(base + "/readme.html", timeout=5).read()
            except OSError:
                return False
            return True

        wait_until(answers, 30, f"php -S on port {port}")
        yield base
    finally:
        server.terminate()
        server.wait(30)
        log_file.close()


def install_wordpress(base: str) -> None:
    """Run WordPress's installer (step 2 of ``wp-admin/install.php``) once."""
    password = "bench-" + secrets.token_hex(8)
    form = urllib.parse.urlencode(
        {
            "weblog_title": "cassfs bench", "user_name": "admin",
            "admin_password": password, "admin_password2": password, "pw_weak": "on",
            "admin_email": "admin@example.org", "blog_public": "0", "language": "",
        }
    ).encode()  # fmt: skip
    page = urllib.request.urlopen(base + "/wp-admin/install.php?step=2", form, timeout=120)
    body = page.read().decode(errors="replace")
    if "Success" not in body and "Already Installed" not in body:
        raise BenchError(f"WordPress's installer did not succeed: {body[:500]}")


def fetch(base: str, page: str) -> bytes:
    """One GET of ``page``; BenchError unless 200."""
    answer = urllib.request.urlopen(base + page, timeout=60)
    if answer.status != 200:
        raise BenchError(f"{base}{page}: HTTP {answer.status}")
    return bytes(answer.read())


def ab(base: str, page: str, requests: int) -> tuple[float, int]:
    """``ab -n requests -c 1``: (requests/s, document length); BenchError on failures."""
    out = subprocess.run(
        ["ab", "-q", "-n", str(requests), "-c", "1", base + page],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rate = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    length = int(re.search(r"Document Length:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if failed or non2xx:
        raise BenchError(f"{base}{page}: {failed} failed, {non2xx and non2xx.group(1)} non-2xx")
    return rate, length


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tree", type=Path, required=True, help="WordPress tree")
    parser.add_argument("--theme", type=Path, required=True, help="a theme directory")
    parser.add_argument("--requests", type=int, default=200, help="ab -n (default 200)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cold-rounds", type=int, default=3, help="cold front pages per copy (default 3)"
    )
    parser.add_argument(
        "--contact-points", default=os.environ.get("CASSFS_CONTACT_POINTS", "127.0.0.1")
    )
    parser.add_argument("--keyspace", default=os.environ.get("CASSFS_KEYSPACE", "cassfs"))
    return parser.parse_args(argv)


def warm_rates(
    servers: dict[str, str], requests: int, rounds: int
) -> dict[tuple[str, str], list[float]]:
    """Warm every page on every server (:data:`WARMUP` requests), then ``ab`` each in
    turn ``rounds`` times: ``{(page, server): [requests/s per round]}``."""
    for page in PAGES:
        sizes = {name: len(fetch(base, page)) for name, base in servers.items()}
        for _ in range(WARMUP):
            for base in servers.values():
                fetch(base, page)
        log.info("%s: %s bytes", page, sizes)
    rates: dict[tuple[str, str], list[float]] = {}
    for round_ in range(rounds):
        for page in PAGES:
            for name, base in servers.items():
                rate, length = ab(base, page, requests)
                rates.setdefault((page, name), []).append(rate)
                log.info(
                    "round %d %s %s: %.1f requests/s, %d bytes", round_, name, page, rate, length
                )
    return rates


def cold_page(root: Path, port: int, workdir: Path, cold: Cold, cache: Path | None) -> float:
    """Milliseconds of the first request of the front page from a new ``php -S`` on
    ``root``, after emptying the caches: cassfs's ``cache`` (purged) and the kernel's."""
    cold.drop(cache, (p for p in root.rglob("*") if p.is_file()) if cache is None else ())
    with php_server(root, port, workdir) as base:
        started = time.perf_counter()
        fetch(base, "/")
        return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    need("php", "mariadbd", "mariadb-install-db", "ab")
    salts = "\n".join(f"define('{n}', '{secrets.token_hex(32)}');" for n in SALT_NAMES)
    with sigterm_as_interrupt(), ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cassfs-wp-")))
        socket = stack.enter_context(mariadb(work))
        native = work / "native"
        install_copy(args.tree, args.theme, native, socket, salts)
        (work / "mnt").mkdir()
        (work / "cache").mkdir()
        environment = f"wp{secrets.token_hex(4)}"
        mnt = stack.enter_context(
            mounted_cassfs(
                work / "mnt", work / "cache", environment, args.contact_points, args.keyspace
            )
        )
        log.info("copying WordPress into cassfs")
        install_copy(args.tree, args.theme, mnt, socket, salts)
        roots = {"native": (native, None), "cassfs": (mnt, work / "cache")}
        with ExitStack() as warm:
            servers = {
                name: warm.enter_context(php_server(root, port, work))
                for (name, (root, _cache)), port in zip(roots.items(), (18081, 18082), strict=True)
            }
            install_wordpress(servers["native"])
            rates = warm_rates(servers, args.requests, args.rounds)
        cold = Cold(2.0)  # the warm servers are stopped: a cold page starts a new one
        cold_ms: dict[str, list[float]] = {}
        for round_ in range(args.cold_rounds):
            for (name, (root, cache)), port in zip(roots.items(), (18083, 18084), strict=True):
                ms = cold_page(root, port, work, cold, cache)
                cold_ms.setdefault(name, []).append(ms)
                log.info("cold round %d %s /: %.0f ms", round_, name, ms)
        print(f"warm WordPress 6.1 pages, opcache on, ab -n {args.requests} -c 1, "
              f"median of {args.rounds} rounds (min-max):")  # fmt: skip
        for page in PAGES:
            n, c = rates[(page, "native")], rates[(page, "cassfs")]
            ratios = [cr / nr for cr, nr in zip(c, n, strict=True)]
            print(
                f"  {page:14} native {statistics.median(n):7.1f}/s  cassfs "
                f"{statistics.median(c):7.1f}/s  cassfs/native {statistics.median(ratios):.2f} "
                f"({min(ratios):.2f}-{max(ratios):.2f})"
            )
        if cold_ms:
            n, c = cold_ms["native"], cold_ms["cassfs"]
            ratios = [cm / nm for cm, nm in zip(c, n, strict=True)]
            print(
                f"cold front page (purge, {cold.method}, new php -S), median of "
                f"{args.cold_rounds} (min-max): native {statistics.median(n):.0f} ms, cassfs "
                f"{statistics.median(c):.0f} ms ({min(c):.0f}-{max(c):.0f}), cassfs/native "
                f"{statistics.median(ratios):.1f} ({min(ratios):.1f}-{max(ratios):.1f})"
            )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"wordpress_bench: {exc}", file=sys.stderr)
        sys.exit(1)
