/*
 * Open flags that pyfuse3 3.5 cannot set: FOPEN_NOFLUSH and FOPEN_CACHE_DIR.
 *
 * pyfuse3's FileInfo carries fh, direct_io, keep_cache and nonseekable only, and opendir()
 * returns a bare handle number, so a handler cannot ask the kernel to skip FUSE_FLUSH at
 * close(2) of a read-only handle, nor to cache a directory's entries for the next readdir.
 * libfuse can (struct fuse_file_info's noflush and cache_readdir bits, libfuse >= 3.10;
 * Linux >= 5.16 for FOPEN_NOFLUSH, >= 4.20 for FOPEN_CACHE_DIR).
 *
 * This library defines fuse_reply_open(), the call pyfuse3 makes to answer open and opendir.
 * cassfs.openflags loads it RTLD_GLOBAL before pyfuse3 is imported, so the dynamic linker
 * binds pyfuse3's reference here first.  The front asks for the flags through two high bits
 * of the handle number it returns (the kernel hands the number back unchanged, so the front
 * keys its handles by the whole number):
 *   bit 62: noflush (a read-only file handle: its close has nothing to write through);
 *   bit 61: cache_readdir and keep_cache (a directory handle: keep_cache stops the kernel
 *           from dropping the cached entries at this opendir, Linux fs/fuse/dir.c).
 * The answer then goes to libfuse's own fuse_reply_open, found with dlvsym.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 35
#include <dlfcn.h>
#include <errno.h>
#include <fuse_lowlevel.h>
#include <stddef.h>
#include <stdint.h>

#define CASSFS_FH_NOFLUSH (UINT64_C(1) << 62)
#define CASSFS_FH_CACHE_DIR (UINT64_C(1) << 61)

typedef int (*reply_open_fn)(fuse_req_t, const struct fuse_file_info *);

static reply_open_fn libfuse_reply_open(void)
{
    static reply_open_fn real;
    if (real == NULL) {
        real = (reply_open_fn)dlvsym(RTLD_NEXT, "fuse_reply_open", "FUSE_3.0");
        if (real == NULL)
            real = (reply_open_fn)dlsym(RTLD_NEXT, "fuse_reply_open");
    }
    return real;
}

/* Which of this library's bits it understands: lets Python check that it is the one bound. */
uint64_t cassfs_openflags_bits(void)
{
    return CASSFS_FH_NOFLUSH | CASSFS_FH_CACHE_DIR;
}

int fuse_reply_open(fuse_req_t req, const struct fuse_file_info *f)
{
    struct fuse_file_info answer = *f;
    if (answer.fh & CASSFS_FH_NOFLUSH)
        answer.noflush = 1;
    if (answer.fh & CASSFS_FH_CACHE_DIR) {
        answer.cache_readdir = 1;
        answer.keep_cache = 1;
    }
    reply_open_fn real = libfuse_reply_open();
    if (real == NULL)
        return fuse_reply_err(req, EIO);
    return real(req, &answer);
}
