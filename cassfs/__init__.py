"""cassfs: a FUSE filesystem whose files live in Apache Cassandra.

The FUSE front (this package) talks only to the local cache daemon
(:mod:`cached`) over a unix socket; the daemon talks to Cassandra.
"""

# Before anything imports pyfuse3: its fuse_reply_open must bind to cassfs/_openflags.c's.
from cassfs import openflags as _openflags

__version__ = "0.1.0"

_openflags.load()
