"""Open flags pyfuse3 cannot set, asked for through the handle number (``_openflags.c``).

pyfuse3 3.5 gives a handler no way to set ``FOPEN_NOFLUSH`` (skip FUSE_FLUSH at close(2))
or ``FOPEN_CACHE_DIR`` (the kernel caches a directory's entries between opendirs).  The
small C library ``cassfs/_openflags.c``, built by ``pip install``, defines
``fuse_reply_open`` ahead of libfuse's: it sets those bits of ``struct fuse_file_info`` when
the handle number carries :data:`NOFLUSH` or :data:`CACHE_DIR`, then calls libfuse's.  It
must be loaded ``RTLD_GLOBAL`` before pyfuse3 binds the symbol, hence :func:`load` from
the package's ``__init__``.

The kernel returns the handle number unchanged in every later request, so the front keys
its handles by the whole number and never strips the bits.  Without the library (a build
without a C compiler) the bits are harmless: the kernel then flushes at every close and
reads directories afresh at every opendir, as before, and :data:`LOADED` is False.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sysconfig
from pathlib import Path

log = logging.getLogger(__name__)

#: Handle-number bit: the kernel sends no FUSE_FLUSH at close(2) of this file handle.
NOFLUSH = 1 << 62
#: Handle-number bit: the kernel caches this directory's entries and keeps them at opendir.
CACHE_DIR = 1 << 61

#: The library's file, built beside this module (``[tool.setuptools] ext-modules``).
LIBRARY = Path(__file__).with_name("_openflags" + str(sysconfig.get_config_var("EXT_SUFFIX")))

#: Whether the library is loaded and is the ``fuse_reply_open`` the process binds first.
LOADED = False


def load() -> bool:
    """Load the library into the global symbol scope; True when its reply function is the
    one a later ``fuse_reply_open`` reference binds to.  Never raises: a missing or broken
    library is logged at debug and the front runs without the flags."""
    global LOADED
    if LOADED:
        return True
    try:
        library = ctypes.CDLL(str(LIBRARY), mode=os.RTLD_NOW | os.RTLD_GLOBAL)
        bits = library.cassfs_openflags_bits
        bits.restype = ctypes.c_uint64
        ours = ctypes.cast(library.fuse_reply_open, ctypes.c_void_p).value
        first = ctypes.cast(ctypes.CDLL(None).fuse_reply_open, ctypes.c_void_p).value
    except (OSError, AttributeError) as exc:
        log.debug("open flags library not loaded (%s): close(2) flushes, readdir uncached", exc)
        return False
    LOADED = bits() == NOFLUSH | CACHE_DIR and ours == first
    return LOADED


def file_handle(number: int, writable: bool) -> int:
    """The handle number to answer an open with: ``number`` (>= 1, below 2**61), with
    :data:`NOFLUSH` when the handle cannot write (its close has nothing to write through)."""
    return number if writable else number | NOFLUSH


def dir_handle(number: int, cache: bool) -> int:
    """The handle number to answer an opendir with: ``number`` (>= 1, below 2**61), with
    :data:`CACHE_DIR` when the kernel may keep the entries it is given until told to drop
    them (the change feed runs, so another host's change reaches the kernel)."""
    return number | CACHE_DIR if cache else number
