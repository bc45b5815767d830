# cassfs developer tasks. `just --list` shows them; `just test` is what CI runs (via .ci/run).
# The local Cassandra node lives in $CASSFS_NODE_DIR (default ./.cassandra), CQL on
# 127.0.0.1:$CASSFS_NODE_PORT (default 9042); the cassfs commands and the tests reach it through
# $CASSFS_CONTACT_POINTS, which follows that port unless you set it yourself.

set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments := true

export CASSFS_NODE_DIR := env("CASSFS_NODE_DIR", justfile_directory() / ".cassandra")
export CASSFS_NODE_PORT := env("CASSFS_NODE_PORT", "9042")
export CASSFS_CONTACT_POINTS := env("CASSFS_CONTACT_POINTS", "127.0.0.1:" + CASSFS_NODE_PORT)
# The local cluster (`just cluster-up`): nodes in $CASSFS_CLUSTER_DIR/nodeK on 127.0.0.K, CQL
# port $CASSFS_CLUSTER_PORT on each.
export CASSFS_CLUSTER_DIR := env("CASSFS_CLUSTER_DIR", justfile_directory() / ".cassandra-cluster")
export CASSFS_CLUSTER_PORT := env("CASSFS_CLUSTER_PORT", "9350")

# List the recipes.
default:
    @just --list

# System packages, the project (editable, with test extras) and Cassandra's jars; quick when present.
install:
    #!/usr/bin/env bash
    set -euo pipefail
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    missing=()
    for pkg in fuse3 libfuse3-dev pkg-config psmisc autoconf automake libtool make openssl systemd; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "install: apt-get install ${missing[*]}"
        $sudo apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
    mkdir -p "$CASSFS_NODE_DIR"
    stamp="$CASSFS_NODE_DIR/pip-install.stamp"
    # -P: do not put the checkout on sys.path, so only an installed cassfs/cached counts.
    # pip also builds cassfs/_openflags.c in place (cassfs/openflags.py): again when it changed
    if ! python -P -c 'import pyfuse3, cassfs, cached; assert cassfs.openflags.LOADED' 2>/dev/null \
        || [ pyproject.toml -nt "$stamp" ] || [ cassfs/_openflags.c -nt "$stamp" ]; then
        echo "install: pip install -e '.[test]'"
        python -m pip install -q --root-user-action=ignore -e '.[test]'
        if command -v pyenv >/dev/null; then pyenv rehash; fi  # shims for the new `cassfs` script
        touch "$stamp"
    fi
    if [ ! -s "$CASSFS_NODE_DIR/classpath.txt" ] || [ cassfs/node/pom.xml -nt "$CASSFS_NODE_DIR/classpath.txt" ]; then
        echo "install: mvn dependency:resolve (Cassandra's jars into ~/.m2)"
        mvn -q -B -Dstyle.color=never -f cassfs/node/pom.xml dependency:resolve
    fi

# Start the local Cassandra 5.0 node (no-op if it runs) and wait until CQL answers.
node-start: install
    python -m cassfs.node start

# Stop the local Cassandra node (no-op if it is not running).
node-stop:
    python -m cassfs.node stop

# Print whether the local Cassandra node runs (exit 1 if not).
node-status:
    python -m cassfs.node status

# Start a local cluster of NODES Cassandra nodes on 127.0.0.1 … 127.0.0.NODES (no-op for running nodes).
cluster-up NODES="3": install
    python -m cassfs.node start --dir "$CASSFS_CLUSTER_DIR" --nodes "$1" --port "$CASSFS_CLUSTER_PORT"

# Stop every node of the local cluster.
cluster-down:
    python -m cassfs.node stop --dir "$CASSFS_CLUSTER_DIR"

# Print the state of each node of the local cluster (exit 1 unless all answer).
cluster-status:
    python -m cassfs.node status --dir "$CASSFS_CLUSTER_DIR"

# The cluster tests alone (they start and stop a 3-node cluster of their own).
cluster-test *ARGS: install
    python -m pytest -m cluster tests/test_cluster.py "$@"

# Create or update the cassfs keyspace and tables on the node.
schema: node-start
    cassfs schema apply

# Mount cassfs at MNT with its cache in CACHE.
up MNT="./mnt" CACHE=".cache/cassfs": schema
    mkdir -p "$1" "$2"
    cassfs up "$1" --cache-dir "$2"

# Unmount cassfs from MNT.
down MNT="./mnt":
    cassfs down "$1"

# Run the test suite against the local node, the 60 s race run included; extra arguments go
# to pytest (`-m "not race"` leaves the race run out).
test *ARGS: schema
    python -m pytest "$@"

# The race harness alone, for about 60 s inside pytest (three hosts, kill -9, dropped connections).
race: schema
    python -m pytest -m race tests/test_race.py

# Built from ../shared/third_party into build/pjdfstest; `python -m tests.pjdfstest_run --help` runs part of it on a mount.
# pjdfstest, the POSIX suite (part of `just test`), on two hosts of one tenant; prints its counts.
pjdfstest *ARGS: schema
    python -m pytest tests/test_pjdfstest.py "$@"

# Issue 10's table (cold read, cold request, cold stat walk, copy in, rewrite, overwrite; 3
# rounds, cassfs beside native) on the standard library, then on the WordPress tree (see
# wordpress-tree); then the warm paths beside a minimal pyfuse3 passthrough; then how soon
# another host sees a change and what an idle host's feed costs (issue 9's rows).
# The benchmarks against the local node; ARGS go to tests.bench (e.g. --go-ancestor BINARY).
bench *ARGS: schema
    python -m tests.bench "$@"
    if tree="$(just --justfile "{{justfile()}}" wordpress-tree)"; then python -m tests.bench --tree "$tree" "$@"; else echo "bench: no WordPress tree (apt-get download wordpress failed): its table is skipped" >&2; fi
    python -m tests.warm_bench
    python -m tests.feed_bench

# Fetched once into $CASSFS_WORDPRESS_DIR (default /tmp/wpdeb) with `apt-get download` +
# `dpkg -x`, never into the checkout.
# Print the path of the WordPress tree of Debian's `wordpress` package (fetched if missing).
wordpress-tree:
    #!/usr/bin/env bash
    set -euo pipefail
    dir="${CASSFS_WORDPRESS_DIR:-/tmp/wpdeb}"
    tree="$dir/x/usr/share/wordpress"
    if [ ! -f "$tree/wp-settings.php" ]; then
        mkdir -p "$dir"
        cd "$dir"
        if ! ls wordpress_*.deb >/dev/null 2>&1; then apt-get download wordpress >&2; fi
        dpkg -x "$(ls wordpress_*.deb | tail -n 1)" x
    fi
    echo "$tree"

# A generated Drupal-core-shaped tree (20,000 files; `--files N`) copied in, read cold, read warm.
# Memory: the daemon's and the mount's RSS, peaks and growth per file.
bench-rss *ARGS: schema
    python -m tests.rss_bench "$@"

# The warm paths alone: stat walk, read, PHP-like requests (1 and 4 readers) on native, a
# minimal pyfuse3 passthrough and cassfs; `--tree DIR` measures another tree.
bench-warm *ARGS: schema
    python -m tests.warm_bench "$@"

# A warm WordPress page (front and login) served by `php -S` with opcache on, from cassfs and
# from a native copy, against one MariaDB (issue 9's last row). Installs PHP, MariaDB and ab
# with apt-get and fetches the twentytwentythree theme once, beside the WordPress tree.
bench-wordpress *ARGS: schema
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    for pkg in php8.2-cli php8.2-mysql php8.2-opcache mariadb-server apache2-utils; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
    tree="$(just --justfile "{{justfile()}}" wordpress-tree)"
    dir="${CASSFS_WORDPRESS_DIR:-/tmp/wpdeb}"
    theme="$dir/theme/usr/share/wordpress/wp-content/themes/twentytwentythree"
    if [ ! -d "$theme" ]; then
        cd "$dir"
        if ! ls wordpress-theme-twentytwentythree_*.deb >/dev/null 2>&1; then
            apt-get download wordpress-theme-twentytwentythree >&2
        fi
        dpkg -x "$(ls wordpress-theme-twentytwentythree_*.deb | tail -n 1)" theme
        cd - >/dev/null
    fi
    python -m tests.wordpress_bench --tree "$tree" --theme "$theme" "$@"

# How soon another host sees a change (two mounts, 100 changes of each kind), and the feed's idle cost.
bench-feed *ARGS: schema
    python -m tests.feed_bench "$@"

# Race hosts against each other for SECONDS (kill -9, dropped connections), then check invariants.
stress SECONDS="600": schema
    python -m tests.race --seconds "$1"

# Fault scenarios against the node of $CASSFS_NODE_DIR (pauses and stops it): outages, kill -9s, a tiny cache; prints a table.
faults *ARGS: schema
    python -m tests.faults "$@"

# Lint, format check and type check, changing nothing (CI runs this).
lint:
    ruff check cassfs cached tests && ruff format --check cassfs cached tests && mypy cassfs cached

# Lint (fixing what it can), type-check, then format.
check:
    ruff check --fix cassfs cached tests && mypy cassfs cached && ruff format cassfs cached tests
