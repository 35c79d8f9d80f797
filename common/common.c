/* common: error codes, error detail, logging, bounded file I/O, identifiers. */
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MQPKI_ERR_TEXT_(name, user, text) text,
static const char *const err_text[] = {MQPKI_ERRORS(MQPKI_ERR_TEXT_)};
#undef MQPKI_ERR_TEXT_
#define MQPKI_ERR_USER_(name, user, text) user,
static const unsigned char err_user[] = {MQPKI_ERRORS(MQPKI_ERR_USER_)};
#undef MQPKI_ERR_USER_

static _Thread_local char err_detail[512];

const char *mqpki_strerror(int rc)
{
    if (rc < 0 || rc >= MQPKI_ERR_COUNT_)
        return "unknown error";
    return err_text[rc];
}

int mqpki_err_exit_status(int rc)
{
    if (rc == MQPKI_OK)
        return 0;
    if (rc < 0 || rc >= MQPKI_ERR_COUNT_)
        return 2;
    return err_user[rc];
}

int mqpki_fail(int rc, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err_detail, sizeof(err_detail), fmt, ap);
    va_end(ap);
    /* Details quote hostile input (ids, file names) and end up on terminals and in logs. */
    for (char *p = err_detail; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return rc;
}

const char *mqpki_err_detail(int rc)
{
    if (err_detail[0] != '\0')
        return err_detail;
    return mqpki_strerror(rc);
}

void mqpki_err_clear(void)
{
    err_detail[0] = '\0';
}

static mqpki_log_fn log_fn;
static void *log_ctx;
static enum mqpki_log_level log_level = MQPKI_LOG_INFO;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void mqpki_log_set_handler(mqpki_log_fn fn, void *ctx)
{
    pthread_mutex_lock(&log_lock);
    log_fn = fn;
    log_ctx = ctx;
    pthread_mutex_unlock(&log_lock);
}

void mqpki_log_set_level(enum mqpki_log_level level)
{
    log_level = level;
}

void mqpki_log(enum mqpki_log_level level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    char msg[1024];
    va_list ap;

    if (level > log_level)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_lock);
    if (log_fn != NULL) {
        log_fn(level, msg, log_ctx);
    } else {
        char ts[32];
        mqpki_time_str(mqpki_now(), ts);
        fprintf(stderr, "%s %s: %s\n", ts, names[level], msg);
    }
    pthread_mutex_unlock(&log_lock);
}

/* What a non-regular file is, for messages. */
static const char *file_kind(mode_t mode)
{
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISFIFO(mode))
        return "a FIFO";
    if (S_ISCHR(mode))
        return "a character device";
    if (S_ISBLK(mode))
        return "a block device";
    if (S_ISSOCK(mode))
        return "a socket";
    if (S_ISLNK(mode))
        return "a symbolic link";
    return S_ISREG(mode) ? "a regular file" : "not a regular file";
}

int mqpki_file_read(const char *path, size_t max, unsigned char **out, size_t *len)
{
    unsigned char *buf = NULL;
    size_t used = 0;
    struct stat st;
    int fd = -1, rc = MQPKI_OK;

    *out = NULL;
    *len = 0;
    /* Judged before opening: opening a FIFO blocks until a writer comes, and opening some
     * devices acts on them. */
    if (stat(path, &st) != 0) {
        if (errno == ENOENT)
            return mqpki_fail(MQPKI_ERR_NOT_FOUND, "%s: file not found", path);
        return mqpki_fail(MQPKI_ERR_IO, "%s: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode))
        return mqpki_fail(MQPKI_ERR_INVALID, "%s: not a regular file (%s)", path,
                          file_kind(st.st_mode));
    /* O_NONBLOCK: should path have become a FIFO meanwhile, open and read still return. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT)
            return mqpki_fail(MQPKI_ERR_NOT_FOUND, "%s: file not found", path);
        return mqpki_fail(MQPKI_ERR_IO, "%s: %s", path, strerror(errno));
    }
    /* Checked again on the open file, so the file read is the file judged. */
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: not a regular file", path);
        goto out;
    }
    if ((uint64_t)st.st_size > max) {
        rc = mqpki_fail(MQPKI_ERR_TOO_LARGE, "%s: file is %lld bytes; the limit is %zu", path,
                        (long long)st.st_size, max);
        goto out;
    }
    buf = malloc(max + 1);
    if (buf == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    /* Read up to max+1 bytes so that a file that grew after fstat is still caught. */
    for (;;) {
        ssize_t n = read(fd, buf + used, max + 1 - used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = mqpki_fail(MQPKI_ERR_IO, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        used += (size_t)n;
        if (used > max) {
            rc = mqpki_fail(MQPKI_ERR_TOO_LARGE, "%s: file exceeds the limit of %zu bytes", path,
                            max);
            goto out;
        }
    }
    buf[used] = '\0';
    *out = buf;
    *len = used;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

int mqpki_path_dir(const char *path, char *out, size_t size)
{
    size_t n = strlen(path);

    /* "a/b/" names a/b: trailing slashes are not the separator. */
    while (n > 1 && path[n - 1] == '/')
        n--;
    while (n > 0 && path[n - 1] != '/')
        n--;
    if (n == 0)
        return mqpki_path(out, size, ".");
    while (n > 1 && path[n - 1] == '/')
        n--;
    if (n >= size)
        return MQPKI_ERR_TOO_LARGE;
    memcpy(out, path, n);
    out[n] = '\0';
    return MQPKI_OK;
}

int mqpki_fail_errno(int err, const char *path)
{
    char dir[PATH_MAX], abs[PATH_MAX];

    if (err != ENOSPC && err != EDQUOT)
        return mqpki_fail(MQPKI_ERR_IO, "%s: %s", path, strerror(err));
    /* "disk I/O error" does not tell an operator what to free: the directory does. */
    if (mqpki_path_dir(path, dir, sizeof(dir)) != MQPKI_OK)
        snprintf(dir, sizeof(dir), "%s", path);
    if (dir[0] != '/' && realpath(dir, abs) != NULL)
        snprintf(dir, sizeof(dir), "%s", abs);
    return mqpki_fail(MQPKI_ERR_NOSPACE, "%s: disk full: %s on the device holding %s", path,
                      err == EDQUOT ? "disk quota exceeded" : "no space left", dir);
}

int mqpki_dir_sync(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = 0;

    if (fd < 0)
        return -1;
    if (fsync(fd) != 0)
        rc = -1;
    close(fd);
    return rc;
}

static int fsync_dir_of(const char *path)
{
    char dir[PATH_MAX];

    if (mqpki_path_dir(path, dir, sizeof(dir)) != MQPKI_OK)
        return -1;
    return mqpki_dir_sync(dir);
}

/* What the final rename of write_replace may replace. */
enum replace_rule {
    REPLACE_ANY,  /* whatever path names: our own files */
    REPLACE_NONE, /* nothing: path must still not exist */
    REPLACE_SAME, /* only the regular file judged before (same device and inode) */
};

/* rename(from, to) that fails with EEXIST instead of replacing an existing to. */
static int rename_noreplace(const char *from, const char *to)
{
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -1;
    /* A file system without renameat2's flags: link() refuses an existing name as well. */
    if (link(from, to) != 0)
        return -1;
    (void)unlink(from);
    return 0;
}

#define PID_LIMIT 4194304L /* the kernel's PID_MAX_LIMIT: no PID is larger */

static int sweep_tmp(const char *dir, const char *name, int *removed);

/* The temporary copies of path that killed writers left (path.tmp.PID of a PID no longer
 * running): also in a directory that is not ours, such as a command's --out, where nothing
 * else would ever remove them. */
static void sweep_own_tmp(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');

    /* Best effort, and silent: the write itself says what fails. */
    if (mqpki_path_dir(path, dir, sizeof(dir)) == MQPKI_OK)
        (void)sweep_tmp(dir, slash != NULL ? slash + 1 : path, NULL);
}

/* Writes path.tmp.PID, fsyncs it, renames it over path as rule allows, fsyncs the directory. */
static int write_replace(const char *path, const void *data, size_t len, unsigned mode,
                         enum replace_rule rule, const struct stat *was)
{
    char tmp[PATH_MAX];
    const unsigned char *p = data;
    struct stat now;
    size_t done = 0;
    int fd, err, rc = MQPKI_OK;

    if (mqpki_path(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", path);
    (void)unlink(tmp); /* a leftover of a crashed run of the same pid */
    sweep_own_tmp(path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode);
    if (fd < 0)
        return mqpki_fail_errno(errno, tmp);
    /* The mode given to open() is filtered by umask; secrets must end up exactly at mode. */
    if (fchmod(fd, (mode_t)mode) != 0)
        goto io_error;
    while (done < len) {
        ssize_t n = write(fd, p + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto io_error;
        done += (size_t)n;
    }
    if (fsync(fd) != 0)
        goto io_error;
    if (close(fd) != 0) {
        fd = -1;
        goto io_error;
    }
    fd = -1;
    switch (rule) {
    case REPLACE_NONE:
        if (rename_noreplace(tmp, path) != 0) {
            if (errno != EEXIST)
                goto io_error;
            rc =
                mqpki_fail(MQPKI_ERR_EXISTS,
                           "%s: created by another process while mqpki wrote it; left alone", path);
            goto out;
        }
        break;
    case REPLACE_SAME:
        /* The narrowest check we can make before the rename: still the file judged. */
        if (lstat(path, &now) != 0 || !S_ISREG(now.st_mode) || now.st_dev != was->st_dev ||
            now.st_ino != was->st_ino) {
            rc = mqpki_fail(MQPKI_ERR_STATE,
                            "%s: replaced by another process while mqpki wrote it; left alone",
                            path);
            goto out;
        }
        /* fall through */
    case REPLACE_ANY:
        if (rename(tmp, path) != 0)
            goto io_error;
        break;
    }
    if (fsync_dir_of(path) != 0)
        return mqpki_fail_errno(errno, path);
    return MQPKI_OK;
io_error:
    err = errno;
    rc = mqpki_fail_errno(err, path);
out:
    if (fd >= 0)
        close(fd);
    (void)unlink(tmp);
    return rc;
}

int mqpki_file_write_atomic(const char *path, const void *data, size_t len, unsigned mode)
{
    return write_replace(path, data, len, mode, REPLACE_ANY, NULL);
}

/* What a user-named output is (mqpki_file_write_user). */
enum out_kind {
    OUT_NEW,    /* nothing yet: created atomically at target */
    OUT_FILE,   /* a regular file (target: the file itself, through any link), replaced */
    OUT_STREAM, /* a character device or FIFO, written in place */
};

/* Sorts path into out_kind; target gets the path to create or replace, st what was judged. */
static int out_classify(const char *path, enum out_kind *kind, char target[PATH_MAX],
                        struct stat *st)
{
    char dir[PATH_MAX], link[PATH_MAX];
    ssize_t n;

    if (path == NULL || path[0] == '\0')
        return mqpki_fail(MQPKI_ERR_INVALID, "empty output file name");
    if (mqpki_path(target, PATH_MAX, "%s", path) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "%.80s...: path too long", path);
    if (lstat(path, st) != 0) {
        if (errno != ENOENT)
            return mqpki_fail(errno == EIO ? MQPKI_ERR_IO : MQPKI_ERR_INVALID, "%s: %s", path,
                              strerror(errno));
        if (mqpki_path_dir(path, dir, sizeof(dir)) != MQPKI_OK)
            return mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", path);
        if (stat(dir, st) != 0 || !S_ISDIR(st->st_mode))
            return mqpki_fail(MQPKI_ERR_NOT_FOUND, "%s: directory %s does not exist", path, dir);
        *kind = OUT_NEW;
        return MQPKI_OK;
    }
    if (S_ISLNK(st->st_mode)) {
        n = readlink(path, link, sizeof(link) - 1);
        link[n > 0 ? n : 0] = '\0';
        if (stat(path, st) != 0)
            return mqpki_fail(MQPKI_ERR_INVALID,
                              "%s: symbolic link to %s, which %s; give the file's own path", path,
                              link, errno == ENOENT ? "does not exist" : strerror(errno));
        /* The link stays; the regular file it leads to is the one replaced. */
        if (S_ISREG(st->st_mode) && realpath(path, target) == NULL)
            return mqpki_fail(MQPKI_ERR_IO, "%s: cannot resolve the link: %s", path,
                              strerror(errno));
    }
    if (S_ISREG(st->st_mode)) {
        *kind = OUT_FILE;
        return MQPKI_OK;
    }
    if (S_ISCHR(st->st_mode) || S_ISFIFO(st->st_mode)) {
        *kind = OUT_STREAM;
        return MQPKI_OK;
    }
    if (S_ISBLK(st->st_mode))
        return mqpki_fail(MQPKI_ERR_INVALID, "%s: a block device; mqpki does not write over disks",
                          path);
    return mqpki_fail(MQPKI_ERR_INVALID, "%s: %s, not a file to write", path,
                      file_kind(st->st_mode));
}

/* A device or FIFO: written where it is, never created, truncated or renamed over. */
static int write_stream(const char *path, const void *data, size_t len)
{
    const unsigned char *p = data;
    struct stat st;
    size_t done = 0;
    int fd, rc = MQPKI_OK;

    /* Blocking: a FIFO waits for its reader, as `cmd > fifo` does. */
    while ((fd = open(path, O_WRONLY | O_NOCTTY | O_CLOEXEC)) < 0 && errno == EINTR)
        ;
    if (fd < 0)
        return mqpki_fail(MQPKI_ERR_IO, "%s: %s", path, strerror(errno));
    /* Without O_TRUNC a regular file swapped in meanwhile would be overwritten in part. */
    if (fstat(fd, &st) != 0 || !(S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode))) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "%s: changed while mqpki opened it; not written", path);
        goto out;
    }
    while (done < len) {
        ssize_t n = write(fd, p + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = mqpki_fail(errno == ENOSPC ? MQPKI_ERR_NOSPACE : MQPKI_ERR_IO, "%s: %s", path,
                            strerror(errno));
            goto out;
        }
        done += (size_t)n;
    }
out:
    if (close(fd) != 0 && rc == MQPKI_OK)
        rc = mqpki_fail(MQPKI_ERR_IO, "%s: %s", path, strerror(errno));
    return rc;
}

int mqpki_file_write_user(const char *path, const void *data, size_t len, unsigned mode)
{
    char target[PATH_MAX];
    enum out_kind kind = OUT_NEW; /* set by out_classify on success */
    struct stat st;
    int rc;

    if ((rc = out_classify(path, &kind, target, &st)) != MQPKI_OK)
        return rc;
    switch (kind) {
    case OUT_NEW: return write_replace(target, data, len, mode, REPLACE_NONE, NULL);
    case OUT_FILE: return write_replace(target, data, len, mode, REPLACE_SAME, &st);
    default: return write_stream(target, data, len);
    }
}

int mqpki_file_check_user(const char *path)
{
    char target[PATH_MAX], dir[PATH_MAX];
    enum out_kind kind = OUT_NEW; /* set by out_classify on success */
    struct stat st;
    int rc;

    if ((rc = out_classify(path, &kind, target, &st)) != MQPKI_OK)
        return rc;
    if (kind == OUT_STREAM) {
        if (access(target, W_OK) != 0)
            return mqpki_fail(MQPKI_ERR_INVALID, "%s: cannot write: %s", path, strerror(errno));
        return MQPKI_OK;
    }
    /* Replacing a file, or creating one, is a change of its directory. */
    if (mqpki_path_dir(target, dir, sizeof(dir)) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", path);
    if (access(dir, W_OK | X_OK) != 0)
        return mqpki_fail(MQPKI_ERR_INVALID, "%s: cannot write in directory %s: %s", path, dir,
                          strerror(errno));
    return MQPKI_OK;
}

/* mqpki_file_sweep_tmp, or with name only the leftovers of NAME itself. */
static int sweep_tmp(const char *dir, const char *name, int *removed)
{
    DIR *d;
    struct dirent *e;
    struct stat st;
    int n = 0;

    if (removed != NULL)
        *removed = 0;
    if ((d = opendir(dir)) == NULL) {
        if (errno == ENOENT)
            return MQPKI_OK;
        if (name != NULL)
            return MQPKI_ERR_IO; /* sweep_own_tmp records nothing */
        return mqpki_fail(MQPKI_ERR_IO, "%s: %s", dir, strerror(errno));
    }
    while ((e = readdir(d)) != NULL) {
        const char *tmp = NULL, *p = e->d_name, *digits;
        char *end = NULL;
        long pid;

        /* NAME.tmp.PID, as write_replace names them; the last ".tmp." is the suffix. */
        while ((p = strstr(p, ".tmp.")) != NULL)
            tmp = p++;
        if (tmp == NULL || tmp == e->d_name)
            continue;
        if (name != NULL && ((size_t)(tmp - e->d_name) != strlen(name) ||
                             memcmp(e->d_name, name, strlen(name)) != 0))
            continue;
        digits = tmp + 5;
        if (digits[0] == '\0' || strspn(digits, "0123456789") != strlen(digits) ||
            strlen(digits) > 9)
            continue;
        pid = strtol(digits, &end, 10);
        /* Beside a file of the user's own (name): only what a process could have written (a
         * PID the kernel can give, 2^22 at most), and as this user: not "x.tmp.20241202". */
        if (name != NULL && pid > PID_LIMIT)
            continue;
        /* Alive, or a process of another user (EPERM): its write may still be under way. */
        if (pid <= 0 || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
            (name != NULL && st.st_uid != geteuid()))
            continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0)
            n++;
    }
    closedir(d);
    if (removed != NULL)
        *removed = n;
    return MQPKI_OK;
}

int mqpki_file_sweep_tmp(const char *dir, int *removed)
{
    return sweep_tmp(dir, NULL, removed);
}

int mqpki_mkdir_p(const char *path, unsigned mode)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);

    if (n == 0 || n >= sizeof(buf))
        return mqpki_fail(MQPKI_ERR_INVALID, "invalid directory path");
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p != '\0'; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
            return mqpki_fail_errno(errno, buf);
        *p = '/';
    }
    if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
        return mqpki_fail_errno(errno, buf);
    return MQPKI_OK;
}

int mqpki_path(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= size)
        return MQPKI_ERR_TOO_LARGE;
    return MQPKI_OK;
}

void mqpki_hex(const unsigned char *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0xf];
    }
    out[2 * len] = '\0';
}

int64_t mqpki_now(void)
{
    return (int64_t)time(NULL);
}

void mqpki_time_str(int64_t t, char out[32])
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (gmtime_r(&tt, &tm) == NULL || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, 32, "%lld", (long long)t);
}

int64_t mqpki_duration_parse(const char *s)
{
    char *end = NULL;
    long long v;
    int64_t unit;

    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || v < 0)
        return -1;
    switch (*end) {
    case '\0':
    case 's': unit = 1; break;
    case 'm': unit = 60; break;
    case 'h': unit = 3600; break;
    case 'd': unit = 86400; break;
    default: return -1;
    }
    if (*end != '\0' && end[1] != '\0')
        return -1;
    if (v > INT64_MAX / unit / 2)
        return -1;
    return (int64_t)v * unit;
}

int mqpki_buf_reserve(struct mqpki_buf *b, size_t n)
{
    size_t cap;
    unsigned char *p;

    if (b->oom)
        return 0;
    if (n < b->cap - b->len) /* n bytes and the NUL */
        return 1;
    if (n > SIZE_MAX / 2 - b->len - 1) {
        b->oom = 1;
        return 0;
    }
    cap = b->cap > 0 ? b->cap : 256;
    while (cap - b->len <= n)
        cap *= 2;
    if ((p = realloc(b->p, cap)) == NULL) {
        b->oom = 1;
        return 0;
    }
    b->p = p;
    b->cap = cap;
    return 1;
}

void mqpki_buf_str(struct mqpki_buf *b, const char *s)
{
    mqpki_buf_put(b, s, strlen(s));
}

void mqpki_buf_printf(struct mqpki_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (!mqpki_buf_reserve(b, 0))
        return;
    va_start(ap, fmt);
    n = vsnprintf((char *)b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n >= b->cap - b->len && mqpki_buf_reserve(b, (size_t)n)) {
        va_start(ap, fmt);
        n = vsnprintf((char *)b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    if (n < 0)
        b->oom = 1;
    else if (!b->oom)
        b->len += (size_t)n;
    b->p[b->len] = '\0'; /* also after a failed second try wrote part of the text */
}
