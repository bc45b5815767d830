"""What pyfuse3 cannot ask of the kernel, through ``cassfs/_openflags.c``.

pyfuse3 3.5 gives a handler no way to set ``FOPEN_NOFLUSH`` (no FUSE_FLUSH at close(2)),
and its ``readdir`` gets a handle number alone, so a file system cannot answer
``opendir`` with ENOSYS and still know which directory it lists.  Without opendir, Linux
(>= 5.1) sends no opendir or releasedir again and keeps each directory's entries in its
page cache between listings (``fs/fuse/file.c``, ``fuse_do_open``: FOPEN_KEEP_CACHE |
FOPEN_CACHE_DIR), until the directory changes through the mount, its mtime changes, or the
file system drops its pages (``invalidate_inode``).

The small C library ``cassfs/_openflags.c``, built by ``pip install``, defines
``fuse_reply_open`` and ``fuse_session_new`` ahead of libfuse's:

- an open answered with a handle number carrying :data:`NOFLUSH` gets ``noflush``; the
  kernel returns the number unchanged in every later request, so the front keys its
  handles by the whole number and never strips the bit;
- after :func:`skip_opendir`, the session answers opendir with ENOSYS itself and hands
  pyfuse3's ``readdir`` the directory's inode number as the handle number;
- the session is kept (:func:`session_fd`), and ``fuse_session_receive_buf`` and
  ``fuse_session_exit``, defined ahead of libfuse's too, call back when the session ends
  (:func:`on_session_end`, for :mod:`cassfs.fuseloop`).

It must be loaded ``RTLD_GLOBAL`` before pyfuse3 binds those symbols, hence :func:`load`
from the package's ``__init__``.  Without the library (a build without a C compiler)
:data:`LOADED` is False, the bit is harmless, and the front opens directories itself.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Handle-number bit: the kernel sends no FUSE_FLUSH at close(2) of this file handle.
NOFLUSH = 1 << 62

#: The library's file, built beside this module (``[tool.setuptools] ext-modules``).
LIBRARY = Path(__file__).with_name("_openflags" + str(sysconfig.get_config_var("EXT_SUFFIX")))

#: Whether the library is loaded and its functions are the ones the process binds first.
LOADED = False

_library: ctypes.CDLL | None = None


def load() -> bool:
    """Load the library into the global symbol scope; True when its functions are the ones
    later references to ``fuse_reply_open``, ``fuse_session_new``,
    ``fuse_session_receive_buf`` and ``fuse_session_exit`` bind to.  Never
    raises: a missing or broken library is logged at debug and the front does without."""
    global LOADED, _library
    if LOADED:
        return True
    try:
        library = ctypes.CDLL(str(LIBRARY), mode=os.RTLD_NOW | os.RTLD_GLOBAL)
        library.cassfs_openflags_bits.restype = ctypes.c_uint64
        library.cassfs_session_fd.restype = ctypes.c_int
        library.cassfs_on_session_end.argtypes = [ctypes.c_void_p]
        process = ctypes.CDLL(None)
        bound = all(
            ctypes.cast(getattr(library, name), ctypes.c_void_p).value
            == ctypes.cast(getattr(process, name), ctypes.c_void_p).value
            for name in (
                "fuse_reply_open",
                "fuse_session_new",
                "fuse_session_receive_buf",
                "fuse_session_exit",
            )
        )
    except (OSError, AttributeError) as exc:
        log.debug("%s not loaded (%s)", LIBRARY.name, exc)
        return False
    _library = library
    LOADED = bound and library.cassfs_openflags_bits() == NOFLUSH
    return LOADED


def file_handle(number: int, writable: bool) -> int:
    """The handle number to answer an open with: ``number`` (>= 1, below 2**62), with
    :data:`NOFLUSH` when the handle cannot write (its close has nothing to write through)."""
    return number if writable else number | NOFLUSH


def skip_opendir() -> bool:
    """Make the next pyfuse3 session opendir-free (call before ``pyfuse3.init``): the
    kernel then keeps directories' entries, and ``readdir``'s handle number is the
    directory's inode number.  False (and nothing changes) without the library."""
    if not LOADED or _library is None:
        return False
    _library.cassfs_skip_opendir(1)
    return True


#: The C type of an :func:`on_session_end` callback.
SessionEnd = ctypes.CFUNCTYPE(None)
_session_end: Any = None


def session_fd() -> int | None:
    """The FUSE device descriptor of the session ``pyfuse3.init`` made, or None (no
    library, or no session yet)."""
    if not LOADED or _library is None:
        return None
    fd = int(_library.cassfs_session_fd())
    return fd if fd >= 0 else None


def on_session_end(callback: Callable[[], None] | None) -> bool:
    """Have ``callback`` called when the session ends: ``fuse_session_receive_buf``
    returned 0 (unmounted: ENODEV) or an error, or ``fuse_session_exit`` was called
    (``pyfuse3.terminate``).  It runs on the thread that saw the end, inside that call,
    and must not raise (ctypes would print and drop the exception).  None removes it.
    False (and nothing is kept) without the library."""
    global _session_end
    if not LOADED or _library is None:
        return False
    wrapped = SessionEnd(callback) if callback is not None else None
    _library.cassfs_on_session_end(wrapped)
    _session_end = wrapped  # ctypes keeps no reference: the C pointer must stay valid
    return True
