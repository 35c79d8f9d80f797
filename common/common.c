/* common: error codes, error detail, logging, bounded file I/O, identifiers. */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
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

int mqpki_file_read(const char *path, size_t max, unsigned char **out, size_t *len)
{
    unsigned char *buf = NULL;
    size_t used = 0;
    struct stat st;
    int fd, rc = MQPKI_OK;

    *out = NULL;
    *len = 0;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return mqpki_fail(MQPKI_ERR_NOT_FOUND, "%s: file not found", path);
        return mqpki_fail(MQPKI_ERR_IO, "%s: %s", path, strerror(errno));
    }
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

static int fsync_dir_of(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int fd, rc = 0;

    if (slash == NULL) {
        strcpy(dir, ".");
    } else if (slash == path) {
        strcpy(dir, "/");
    } else {
        size_t n = (size_t)(slash - path);
        if (n >= sizeof(dir))
            return -1;
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (fsync(fd) != 0)
        rc = -1;
    close(fd);
    return rc;
}

int mqpki_file_write_atomic(const char *path, const void *data, size_t len, unsigned mode)
{
    char tmp[PATH_MAX];
    const unsigned char *p = data;
    size_t done = 0;
    int fd, rc = MQPKI_OK;

    if (mqpki_path(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", path);
    (void)unlink(tmp); /* a leftover of a crashed run of the same pid */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode);
    if (fd < 0)
        return mqpki_fail(errno == ENOSPC || errno == EDQUOT ? MQPKI_ERR_NOSPACE : MQPKI_ERR_IO,
                          "%s: %s", tmp, strerror(errno));
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
    if (rename(tmp, path) != 0)
        goto io_error;
    if (fsync_dir_of(path) != 0)
        return mqpki_fail(MQPKI_ERR_IO, "%s: fsync of directory: %s", path, strerror(errno));
    return MQPKI_OK;
io_error:
    if (errno == ENOSPC || errno == EDQUOT)
        rc = mqpki_fail(MQPKI_ERR_NOSPACE, "%s: disk full (%s)", path, strerror(errno));
    else
        rc = mqpki_fail(MQPKI_ERR_IO, "%s: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    (void)unlink(tmp);
    return rc;
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
            return mqpki_fail(MQPKI_ERR_IO, "%s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
        return mqpki_fail(MQPKI_ERR_IO, "%s: %s", buf, strerror(errno));
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
