"""A frame written to a trio socket at once, for the RPC's client and server alike.

Sending through ``trio.SocketStream.send_all`` costs a pass of trio's run loop even
when the socket takes the whole frame; a small reply or request almost always fits.
"""

from __future__ import annotations

import os

import trio


def write_now(stream: trio.SocketStream, frame: bytes) -> int:
    """Bytes of ``frame`` written to ``stream``'s socket now, without waiting (one
    non-blocking ``write``): 0 when the socket is full, closed or broken, which the
    caller's ``send_all`` of the rest then reports.  The caller keeps frames in order
    with whatever it queued or is sending before this one."""
    try:
        return os.write(stream.socket.fileno(), frame)
    except OSError:
        return 0
