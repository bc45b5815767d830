/*
 * What pyfuse3 3.5 cannot ask of the kernel: FOPEN_NOFLUSH, and opendir-free directories.
 *
 * pyfuse3's FileInfo carries fh, direct_io, keep_cache and nonseekable only, so an open
 * handler cannot ask the kernel to skip FUSE_FLUSH at close(2) of a read-only handle; and
 * its readdir handler gets the handle number alone, so a file system cannot answer
 * opendir with ENOSYS (the kernel then sends no opendir or releasedir again, and keeps
 * each directory's entries in its page cache: Linux fs/fuse/file.c, fuse_do_open: "Default
 * for no-open", FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR; Linux >= 5.1) and still know which
 * directory a readdir reads.  libfuse can do both (struct fuse_file_info's noflush bit,
 * libfuse >= 3.10 and Linux >= 5.16; the lowlevel ops table).
 *
 * This library defines two libfuse functions ahead of libfuse; cassfs.openflags loads it
 * RTLD_GLOBAL before pyfuse3 is imported, so the dynamic linker binds pyfuse3's references
 * here first, and each calls libfuse's own, found with dlvsym:
 *   fuse_reply_open(): a handle number with bit 62 set (CASSFS_FH_NOFLUSH) is answered
 *     with noflush.  The kernel hands the number back unchanged, so the front keys its
 *     handles by the whole number.
 *   fuse_session_new(): the session gets a copy of pyfuse3's ops table whose init also asks
 *     for FUSE_CAP_CACHE_SYMLINKS (the kernel keeps symlink targets in its page cache:
 *     cassfs never changes a symlink's target, a new target is a new inode; Linux >= 4.20),
 *     and, once cassfs_skip_opendir(1) was called, whose opendir answers ENOSYS and whose
 *     readdirplus passes the directory's inode number as the handle number (the kernel
 *     sends 0 without opendir).
 *     It also keeps the session, for cassfs_session_fd().
 *   fuse_session_receive_buf() and fuse_session_exit(): when the session ends (an unmount
 *     reads ENODEV and returns 0, an error, or an exit asked for), the callback given to
 *     cassfs_on_session_end() is called, on the calling thread.  cassfs.fuseloop parks
 *     pyfuse3's idle worker tasks where pyfuse3 cannot see them, and wakes them then.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 35
#include <dlfcn.h>
#include <errno.h>
#include <fuse_lowlevel.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define CASSFS_FH_NOFLUSH (UINT64_C(1) << 62)

typedef int (*reply_open_fn)(fuse_req_t, const struct fuse_file_info *);
typedef struct fuse_session *(*session_new_fn)(struct fuse_args *,
                                               const struct fuse_lowlevel_ops *, size_t,
                                               void *);
typedef void (*readdirplus_fn)(fuse_req_t, fuse_ino_t, size_t, off_t,
                               struct fuse_file_info *);
typedef void (*init_fn)(void *, struct fuse_conn_info *);
typedef int (*receive_buf_fn)(struct fuse_session *, struct fuse_buf *);
typedef void (*session_exit_fn)(struct fuse_session *);
typedef void (*session_end_fn)(void);

static void *libfuse_symbol(const char *name)
{
    void *symbol = dlvsym(RTLD_NEXT, name, "FUSE_3.0");
    return symbol != NULL ? symbol : dlsym(RTLD_NEXT, name);
}

/* Which handle-number bits this library understands: lets Python check that it is loaded. */
uint64_t cassfs_openflags_bits(void)
{
    return CASSFS_FH_NOFLUSH;
}

int fuse_reply_open(fuse_req_t req, const struct fuse_file_info *f)
{
    static reply_open_fn real;
    struct fuse_file_info answer = *f;
    if (answer.fh & CASSFS_FH_NOFLUSH)
        answer.noflush = 1;
    if (real == NULL)
        real = (reply_open_fn)libfuse_symbol("fuse_reply_open");
    if (real == NULL)
        return fuse_reply_err(req, EIO);
    return real(req, &answer);
}

static int skip_opendir;
static struct fuse_session *the_session;
static session_end_fn session_end_callback;
static readdirplus_fn pyfuse3_readdirplus;
static init_fn pyfuse3_init;
static struct fuse_lowlevel_ops session_ops;

/* Ask for opendir-free directories in the next fuse_session_new() (0 or 1). */
void cassfs_skip_opendir(int on)
{
    skip_opendir = on;
}

static void init_caching_symlinks(void *userdata, struct fuse_conn_info *conn)
{
    if (pyfuse3_init != NULL)
        pyfuse3_init(userdata, conn);
    if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
        conn->want |= FUSE_CAP_CACHE_SYMLINKS;
}

static void opendir_enosys(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    fuse_reply_err(req, ENOSYS);
}

static void readdirplus_by_inode(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                                 struct fuse_file_info *fi)
{
    fi->fh = ino;
    pyfuse3_readdirplus(req, ino, size, off, fi);
}

struct fuse_session *fuse_session_new(struct fuse_args *args,
                                      const struct fuse_lowlevel_ops *op, size_t op_size,
                                      void *userdata)
{
    session_new_fn real = (session_new_fn)libfuse_symbol("fuse_session_new");
    if (real == NULL)
        return NULL;
    if (op_size > sizeof session_ops)
        return real(args, op, op_size, userdata);
    memset(&session_ops, 0, sizeof session_ops);
    memcpy(&session_ops, op, op_size);
    pyfuse3_init = session_ops.init;
    session_ops.init = init_caching_symlinks;
    if (skip_opendir && session_ops.readdirplus != NULL) {
        pyfuse3_readdirplus = session_ops.readdirplus;
        session_ops.opendir = opendir_enosys;
        session_ops.readdirplus = readdirplus_by_inode;
    }
    the_session = real(args, &session_ops, sizeof session_ops, userdata);
    return the_session;
}

/* The FUSE device's descriptor of the session made last, or -1 before one. */
int cassfs_session_fd(void)
{
    return the_session != NULL ? fuse_session_fd(the_session) : -1;
}

/* Call `callback` (or nothing, with NULL) when the session ends; see the top comment. */
void cassfs_on_session_end(session_end_fn callback)
{
    session_end_callback = callback;
}

static void session_ended(void)
{
    session_end_fn callback = session_end_callback;
    if (callback != NULL)
        callback();
}

int fuse_session_receive_buf(struct fuse_session *se, struct fuse_buf *buf)
{
    static receive_buf_fn real;
    int res;
    if (real == NULL)
        real = (receive_buf_fn)libfuse_symbol("fuse_session_receive_buf");
    if (real == NULL)
        return -ENOSYS;
    res = real(se, buf);
    if (res <= 0 && res != -EINTR && res != -EAGAIN)
        session_ended();
    return res;
}

void fuse_session_exit(struct fuse_session *se)
{
    static session_exit_fn real;
    if (real == NULL)
        real = (session_exit_fn)libfuse_symbol("fuse_session_exit");
    if (real != NULL)
        real(se);
    session_ended();
}
