"""cassfs: a FUSE filesystem whose files live in Apache Cassandra.

The FUSE front (this package) talks only to the local cache daemon
(:mod:`cached`) over a unix socket; the daemon talks to Cassandra.
"""

__version__ = "0.1.0"
