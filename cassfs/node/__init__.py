"""The local Apache Cassandra 5.0 node that cassfs is developed and tested against.

Command line: ``python -m cassfs.node start|stop|status [--dir DIR] [--port N]``
(see :mod:`cassfs.node.launcher`). The same operations as functions::

    from cassfs.node import start, stop, status
    st = start(".cassandra", port=9042)     # NodeStatus(pid=…, port=9042, release_version="5.0.9")
"""

from cassfs.node.launcher import (
    NodeDir,
    NodeError,
    NodeStartFailed,
    NodeStatus,
    cli,
    start,
    status,
    stop,
)

__all__ = [
    "NodeDir",
    "NodeError",
    "NodeStartFailed",
    "NodeStatus",
    "cli",
    "start",
    "status",
    "stop",
]
