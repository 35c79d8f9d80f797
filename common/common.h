/*
 * common: what every mqpki module shares: the project-wide error codes, the error-detail
 * channel, the logger, bounded file I/O with atomic replacement, and identifier checks.
 *
 * Libraries never print: they log through mqpki_log() (stderr unless the caller installs a
 * handler) and report a failure as an error code plus a one-line detail (mqpki_fail()), which
 * the CLI prints and the daemon logs.
 */
#ifndef MQPKI_COMMON_H
#define MQPKI_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#ifdef UNIT_TESTING
#define MQPKI_STATIC
#else
#define MQPKI_STATIC static
#endif

/*
 * The one list of error codes. X(name, exit_status, text): exit_status 1 when the error is the
 * caller's (bad input, refused by policy), 2 when it is ours (I/O, store, HSM).
 */
#define MQPKI_ERRORS(X)                                                                            \
    X(MQPKI_OK, 0, "success")                                                                      \
    X(MQPKI_ERR_INVALID, 1, "invalid argument")                                                    \
    X(MQPKI_ERR_PARSE, 1, "malformed input")                                                       \
    X(MQPKI_ERR_TOO_LARGE, 1, "input too large")                                                   \
    X(MQPKI_ERR_NOT_FOUND, 1, "not found")                                                         \
    X(MQPKI_ERR_EXISTS, 1, "already exists")                                                       \
    X(MQPKI_ERR_POLICY, 1, "refused by policy")                                                    \
    X(MQPKI_ERR_AUTH, 1, "authentication failed")                                                  \
    X(MQPKI_ERR_STATE, 1, "not allowed in the current state")                                      \
    X(MQPKI_ERR_RATE, 1, "rate limited")                                                           \
    X(MQPKI_ERR_TAMPERED, 1, "integrity check failed")                                             \
    X(MQPKI_ERR_IO, 2, "I/O error")                                                                \
    X(MQPKI_ERR_NOSPACE, 2, "disk full")                                                           \
    X(MQPKI_ERR_NOMEM, 2, "out of memory")                                                         \
    X(MQPKI_ERR_HSM, 2, "HSM failure")                                                             \
    X(MQPKI_ERR_STORE, 2, "store failure")                                                         \
    X(MQPKI_ERR_BUSY, 2, "store busy")                                                             \
    X(MQPKI_ERR_CRYPTO, 2, "cryptographic failure")                                                \
    X(MQPKI_ERR_INTERNAL, 2, "internal error")

#define MQPKI_ERR_ENUM_(name, user, text) name,
enum mqpki_err { MQPKI_ERRORS(MQPKI_ERR_ENUM_) MQPKI_ERR_COUNT_ };
#undef MQPKI_ERR_ENUM_

/* Short fixed text for an error code; never NULL. */
const char *mqpki_strerror(int rc);

/* 1 when rc is the caller's fault (exit status 1), 2 for an internal failure, 0 for MQPKI_OK. */
int mqpki_err_exit_status(int rc);

/*
 * Records a one-line detail for the current thread ("asset dev1: CSR key is RSA-1024; ...") and
 * returns rc, so that `return mqpki_fail(MQPKI_ERR_POLICY, "...", ...)` reads naturally. The
 * detail must never contain a secret; control characters in it are replaced by '?'.
 */
int mqpki_fail(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The current thread's last detail, or the error text of rc when none was recorded. */
const char *mqpki_err_detail(int rc);

/* Forgets the current thread's detail. */
void mqpki_err_clear(void);

/* Logging. */
enum mqpki_log_level { MQPKI_LOG_ERROR, MQPKI_LOG_WARN, MQPKI_LOG_INFO, MQPKI_LOG_DEBUG };
typedef void (*mqpki_log_fn)(enum mqpki_log_level level, const char *msg, void *ctx);

/* Installs a log handler (NULL restores stderr) and the most verbose level emitted. */
void mqpki_log_set_handler(mqpki_log_fn fn, void *ctx);
void mqpki_log_set_level(enum mqpki_log_level level);
void mqpki_log(enum mqpki_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * Reads a whole regular file of at most max bytes into a NUL-terminated heap buffer (*out,
 * length in *len). MQPKI_ERR_TOO_LARGE when larger, MQPKI_ERR_NOT_FOUND when missing,
 * MQPKI_ERR_INVALID for anything but a regular file (a FIFO, a device, a directory), refused
 * without blocking. Caller frees.
 */
int mqpki_file_read(const char *path, size_t max, unsigned char **out, size_t *len);

/* fsyncs a directory (a rename or unlink in it made durable); 0, or -1 with errno. */
int mqpki_dir_sync(const char *dir);

/*
 * Replaces path atomically: writes path.tmp.PID with the given mode (created with O_EXCL),
 * fsyncs it, renames it over path and fsyncs the directory. Either the old or the new content
 * survives a crash. For mqpki's own regular files only: the rename replaces whatever path
 * names. MQPKI_ERR_NOSPACE (mqpki_fail_errno's detail) when the file system is full.
 */
int mqpki_file_write_atomic(const char *path, const void *data, size_t len, unsigned mode);

/*
 * Writes data to a file the user named (an --out FILE), never replacing what path names by
 * something else:
 * - a new path or a regular file: replaced atomically as by mqpki_file_write_atomic, with mode;
 *   a new path is never renamed over something created there meanwhile;
 * - a symbolic link to a regular file: that file is replaced atomically, the link is kept;
 * - a character device or a FIFO (also through a link), e.g. /dev/null, a terminal, a pipe:
 *   opened for writing without O_CREAT or O_TRUNC and written directly (a FIFO waits for its
 *   reader, as a shell redirection does);
 * - a directory, a block device, a socket, a link to nothing or a link loop: refused with
 *   MQPKI_ERR_INVALID; a missing directory: MQPKI_ERR_NOT_FOUND.
 * "-" is an ordinary name here: the caller maps it to standard output.
 */
int mqpki_file_write_user(const char *path, const void *data, size_t len, unsigned mode);

/*
 * Checks, writing nothing, that mqpki_file_write_user(path, ...) would be allowed: the same
 * refusals, plus a directory that is missing or not writable for a new or regular file, and a
 * device or FIFO not writable. Lets a command refuse an output before doing what it cannot undo
 * (signing and recording a certificate).
 */
int mqpki_file_check_user(const char *path);

/*
 * Removes the temporary files (NAME.tmp.PID, regular files) that mqpki_file_write_atomic left
 * in dir when its process was killed: only those whose PID is no running process. *removed
 * (may be NULL) gets how many. A missing dir is not an error; failures to remove are skipped.
 * Every atomic write of a file also removes such leftovers of that one file's name.
 */
int mqpki_file_sweep_tmp(const char *dir, int *removed);

/*
 * Records the failure err (an errno value) of an operation on path and returns its code:
 * MQPKI_ERR_NOSPACE for ENOSPC and EDQUOT, with a detail naming the directory whose device is
 * full ("PATH: disk full: no space left on the device holding DIR"), else MQPKI_ERR_IO with
 * "PATH: strerror(err)".
 */
int mqpki_fail_errno(int err, const char *path);

/* The directory part of path ("." for a bare name, "/" for a name in the root) into out. */
int mqpki_path_dir(const char *path, char *out, size_t size);

/* Creates a directory and its parents (mkdir -p) with the given mode for the new ones. */
int mqpki_mkdir_p(const char *path, unsigned mode);

/* snprintf into a fixed buffer; MQPKI_ERR_TOO_LARGE instead of truncation. */
int mqpki_path(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Lower-case hex of len bytes into out (2*len+1 bytes). */
void mqpki_hex(const unsigned char *in, size_t len, char *out);

/* Seconds since the epoch. */
int64_t mqpki_now(void);

/* Formats t as RFC 3339 UTC ("2026-11-25T02:21:49Z") into out (at least 21 bytes). */
void mqpki_time_str(int64_t t, char out[32]);

/* Parses a duration such as "90s", "15m", "24h", "7d" into seconds; -1 when malformed. */
int64_t mqpki_duration_parse(const char *s);

/*
 * A growing byte buffer (DER, JSON, HTML, metrics), zero-initialized when empty, its bytes kept
 * followed by a NUL so that text can be used as a string. Running out of memory sets oom: later
 * calls then do nothing, and the writer checks oom once at the end. The caller frees p.
 */
struct mqpki_buf {
    unsigned char *p;
    size_t len, cap;
    int oom;
};

/* 1 when n more bytes (and the NUL) fit, growing the buffer if needed; 0 once oom. */
int mqpki_buf_reserve(struct mqpki_buf *b, size_t n);

/* Inline: a listing of a million rows appends some twenty short pieces per row, and a memcpy
 * of a known small size compiles to a few moves where it is inlined. */
static inline void mqpki_buf_put(struct mqpki_buf *b, const void *data, size_t n)
{
    if (b->oom || (n >= b->cap - b->len && !mqpki_buf_reserve(b, n)))
        return;
    /* memcpy(.., NULL, 0) is undefined behaviour (C11 7.24.1): an empty part may have no
     * buffer at all. */
    if (n > 0)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void mqpki_buf_str(struct mqpki_buf *b, const char *s);
void mqpki_buf_printf(struct mqpki_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
