"""What the FUSE front remembers of extended attributes: names known to be absent.

The kernel asks for ``security.capability`` before every write(2) to a regular file
(``file_remove_privs``, to drop file capabilities on a write), and SELinux kernels ask for
``security.selinux`` at every lookup.  Almost always the answer is ENODATA.  Asking the
daemon costs a round trip (about 0.6 ms on a loaded 2-core machine, more than the write
itself), so the front keeps a negative answer as long as the daemon says its own answer
holds (``fresh_for``: what is left of its cache TTL); the daemon would give the same
answer until then, so this adds no staleness.  Forgotten earlier:

- when this mount changes an attribute of the inode (setxattr, removexattr);
- when the daemon says another session changed the inode (``changed``), or its cache was
  purged (``purged``).

An answer that was in flight while one of those happened is not kept (:attr:`generation`).
Only negative answers are kept, for at most :data:`MAX_INODES` inodes.
"""

from __future__ import annotations

from collections import OrderedDict

#: Inodes whose absent names are kept; the least recently used go first.
MAX_INODES = 4096
#: Absent names kept per inode; past it the inode's are dropped and kept anew.
MAX_NAMES = 32


class AbsentXattrs:
    """Per inode, extended attribute names known to be absent, each until a deadline
    (seconds on the caller's clock, e.g. ``trio.current_time()``)."""

    def __init__(self, max_inodes: int = MAX_INODES, max_names: int = MAX_NAMES) -> None:
        self.max_inodes = max_inodes
        self.max_names = max_names
        #: Changes with every :meth:`forget` and :meth:`clear`: pass the value read before
        #: asking the daemon to :meth:`remember`, which keeps nothing if it changed since.
        self.generation = 0
        self._absent: OrderedDict[int, dict[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        """How many inodes have absent names kept."""
        return len(self._absent)

    def known(self, ino: int, name: bytes, now: float) -> bool:
        """True if ``name`` is known to be absent from ``ino`` at time ``now``."""
        names = self._absent.get(ino)
        if names is None:
            return False
        until = names.get(name)
        if until is None:
            return False
        if now < until:
            self._absent.move_to_end(ino)
            return True
        del names[name]
        if not names:
            del self._absent[ino]
        return False

    def remember(self, ino: int, name: bytes, until: float, generation: int) -> None:
        """Keep that ``ino`` has no attribute ``name`` until ``until``, unless something
        was forgotten since ``generation`` was read (the answer may predate a change)."""
        if generation != self.generation:
            return
        names = self._absent.get(ino)
        if names is None:
            names = self._absent[ino] = {}
        elif len(names) >= self.max_names and name not in names:
            names.clear()
        names[name] = until
        self._absent.move_to_end(ino)
        while len(self._absent) > self.max_inodes:
            self._absent.popitem(last=False)

    def forget(self, ino: int) -> None:
        """The attributes of ``ino`` changed, or may have: keep nothing about it."""
        self.generation += 1
        self._absent.pop(ino, None)

    def clear(self) -> None:
        """Keep nothing (the daemon's cache was purged)."""
        self.generation += 1
        self._absent.clear()
