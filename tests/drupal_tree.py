"""A generated tree of Drupal core's shape: seeded, deterministic, nothing on disk until written.

Drupal core (``drupal/core``) is about 20,000 files in about 2,500 directories, nested up to
about 8 deep, mostly small PHP/YAML/Twig/JS files (median about 1.3 kB) with a long tail
up to about 1 MB.  :func:`generate` draws such a tree:

- directories: a random tree of ``files // 8`` directories (2,500 for 20,000 files), each
  new directory under a random earlier one of depth below 8, shallow ones preferred;
- files: each in a directory drawn with Pareto weights (a few large directories, many small
  ones), names ``f<index>.<ext>`` with extensions in Drupal's proportions;
- sizes: log-normal with median 1,300 bytes and sigma 1.6, capped at 1,000,000 bytes
  (mean about 4.7 kB: about 95 MB for 20,000 files);
- contents: :meth:`FileSpec.content`, printable bytes from a generator seeded by the file's
  index, so they are produced on demand and checked without keeping them.

The same ``(files, seed)`` always gives the same tree.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path

MEDIAN_SIZE = 1_300  # bytes
SIGMA = 1.6
MAX_SIZE = 1_000_000  # bytes
MAX_DEPTH = 8
FILES_PER_DIR = 8
EXTENSIONS = (
    ("php", 45),
    ("yml", 20),
    ("twig", 10),
    ("js", 10),
    ("css", 5),
    ("md", 5),
    ("json", 5),
)
# bytes 0..255 -> printable ASCII and newlines, so contents look like text
_PRINTABLE = bytes((32 + b % 95) if b % 40 else 10 for b in range(256))


@dataclass(frozen=True)
class FileSpec:
    """One generated file: its path relative to the tree, its size (bytes) and content seed."""

    rel: Path
    size: int
    seed: int

    def content(self) -> bytes:
        """The file's bytes (deterministic; ``size`` of them)."""
        return random.Random(self.seed).randbytes(self.size).translate(_PRINTABLE)

    def sha256(self) -> bytes:
        """SHA-256 of :meth:`content`."""
        return hashlib.sha256(self.content()).digest()


@dataclass(frozen=True)
class Tree:
    """The directories (relative, parents before children) and files of a generated tree."""

    dirs: list[Path]
    files: list[FileSpec]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def depth_histogram(self) -> dict[int, int]:
        """Directory depth -> number of directories (depth 1 = a child of the root)."""
        out: dict[int, int] = {}
        for d in self.dirs:
            out[len(d.parts)] = out.get(len(d.parts), 0) + 1
        return dict(sorted(out.items()))


def generate(files: int = 20_000, seed: int = 10) -> Tree:
    """A Drupal-core-shaped tree of ``files`` files (see the module docstring)."""
    rng = random.Random(seed)
    ndirs = max(1, files // FILES_PER_DIR)
    dirs: list[Path] = []
    shallow: list[int] = []  # indices of dirs of depth <= 3
    open_dirs: list[int] = []  # indices of dirs of depth < MAX_DEPTH
    for i in range(ndirs):
        # a new top-level dir now and then; else under an earlier dir, a shallow one half the time
        if not dirs or rng.random() < 0.01:
            parent = Path()
        else:
            pool = shallow if shallow and rng.random() < 0.5 else open_dirs
            parent = dirs[rng.choice(pool)]
        path = parent / f"d{i}"
        dirs.append(path)
        if len(path.parts) <= 3:
            shallow.append(i)
        if len(path.parts) < MAX_DEPTH:
            open_dirs.append(i)
    weights = [rng.paretovariate(1.2) for _ in dirs]
    exts = [e for e, _ in EXTENSIONS]
    ext_weights = [w for _, w in EXTENSIONS]
    mu = math.log(MEDIAN_SIZE)
    specs = []
    homes = rng.choices(range(len(dirs)), weights=weights, k=files)
    for i, home in enumerate(homes):
        size = min(MAX_SIZE, int(rng.lognormvariate(mu, SIGMA)))
        ext = rng.choices(exts, weights=ext_weights)[0]
        specs.append(FileSpec(dirs[home] / f"f{i}.{ext}", size, seed * 1_000_003 + i))
    return Tree(dirs, specs)
