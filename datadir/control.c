/*
 * datadir/control.c: the local control socket between mqpki and a running mqpkid
 * (run/mqpkid.sock in the data directory), both ends. While mqpkid runs it alone opens the CA
 * token; a command that needs the CA key signs through it, and a command that changed the
 * revocation state asks it to publish (it signs, feeds its brokers and writes crl/ at once).
 *
 * Framing, both ways: a 4-byte big-endian length, then the body (at most CONTROL_FRAME_MAX).
 * A request body starts with an operation byte, a reply body with a status byte (0 for
 * success, else an mqpki error code followed by the error's detail). The daemon answers only
 * peers of its own user (or root), checked with SO_PEERCRED.
 */
#include "datadir.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "datadir_int.h"

/* The socket address of home's control socket; *dirfd is opened when the path is too long for
 * sun_path (then reached through /proc/self/fd) and must be closed by the caller. */
static int control_addr(const char *home, struct sockaddr_un *sa, int *dirfd)
{
    char dir[PATH_MAX];

    *dirfd = -1;
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (mqpki_path(sa->sun_path, sizeof(sa->sun_path), "%s/%s", home, CONTROL_SOCKET) == MQPKI_OK)
        return MQPKI_OK;
    /* A deep data directory: name the socket relative to an open descriptor of run/. */
    if (mqpki_path(dir, sizeof(dir), "%s/%s", home, CONTROL_DIR) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", home);
    if ((*dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
        return mqpki_fail(errno == ENOENT ? MQPKI_ERR_NOT_FOUND : MQPKI_ERR_IO, "%s: %s", dir,
                          strerror(errno));
    snprintf(sa->sun_path, sizeof(sa->sun_path), "/proc/self/fd/%d/%s", *dirfd,
             strrchr(CONTROL_SOCKET, '/') + 1);
    return MQPKI_OK;
}

/* A new socket and home's control socket address (*dirfd as control_addr). */
static int control_socket(const char *home, struct sockaddr_un *sa, int *dirfd, int *fd)
{
    int rc;

    *fd = -1;
    if ((rc = control_addr(home, sa, dirfd)) != MQPKI_OK)
        return rc;
    if ((*fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return mqpki_fail(MQPKI_ERR_IO, "control socket: %s", strerror(errno));
    return MQPKI_OK;
}

/* Reads or writes exactly len bytes before deadline_ms (monotonic); -1 on error or timeout. */
static int io_full(int fd, void *buf, size_t len, int writing, int64_t deadline_ms)
{
    unsigned char *p = buf;
    size_t done = 0;

    while (done < len) {
        struct pollfd pfd = {fd, writing ? POLLOUT : POLLIN, 0};
        struct timespec now;
        int64_t left;
        ssize_t n;

        clock_gettime(CLOCK_MONOTONIC, &now);
        left = deadline_ms - ((int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000);
        if (left <= 0)
            return -1;
        if (poll(&pfd, 1, (int)(left > 60000 ? 60000 : left)) <= 0)
            continue;
        n = writing ? send(fd, p + done, len - done, MSG_NOSIGNAL)
                    : recv(fd, p + done, len - done, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            return -1;
        done += (size_t)n;
    }
    return 0;
}

static int64_t deadline(int timeout_ms)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 + timeout_ms;
}

int datadir_control_send(int fd, const void *body, size_t len, int timeout_ms)
{
    unsigned char hdr[4];
    int64_t until = deadline(timeout_ms);

    if (len > CONTROL_FRAME_MAX)
        return mqpki_fail(MQPKI_ERR_TOO_LARGE, "control message of %zu bytes", len);
    hdr[0] = (unsigned char)(len >> 24);
    hdr[1] = (unsigned char)(len >> 16);
    hdr[2] = (unsigned char)(len >> 8);
    hdr[3] = (unsigned char)len;
    if (io_full(fd, hdr, 4, 1, until) != 0 || io_full(fd, (void *)body, len, 1, until) != 0)
        return mqpki_fail(MQPKI_ERR_IO, "control socket: cannot send");
    return MQPKI_OK;
}

int datadir_control_recv(int fd, unsigned char **body, size_t *len, int timeout_ms)
{
    unsigned char hdr[4];
    int64_t until = deadline(timeout_ms);
    size_t n;

    *body = NULL;
    *len = 0;
    if (io_full(fd, hdr, 4, 0, until) != 0)
        return mqpki_fail(MQPKI_ERR_IO, "control socket: no answer");
    n = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
    if (n == 0 || n > CONTROL_FRAME_MAX)
        return mqpki_fail(MQPKI_ERR_PARSE, "control socket: message of %zu bytes refused", n);
    if ((*body = malloc(n)) == NULL)
        return MQPKI_ERR_NOMEM;
    if (io_full(fd, *body, n, 0, until) != 0) {
        free(*body);
        *body = NULL;
        return mqpki_fail(MQPKI_ERR_IO, "control socket: message cut short");
    }
    *len = n;
    return MQPKI_OK;
}

int datadir_control_call(const char *home, const void *req, size_t req_len, unsigned char **reply,
                         size_t *reply_len, int timeout_ms)
{
    struct sockaddr_un sa;
    unsigned char *body = NULL;
    size_t len = 0;
    int fd = -1, dirfd = -1, rc;

    *reply = NULL;
    *reply_len = 0;
    if ((rc = control_socket(home, &sa, &dirfd, &fd)) != MQPKI_OK)
        goto out;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        /* No socket, or one left by a daemon that died: nobody to ask. */
        rc = errno == ENOENT || errno == ECONNREFUSED || errno == ENOTDIR
                 ? mqpki_fail(MQPKI_ERR_NOT_FOUND, "mqpkid is not running")
                 : mqpki_fail(MQPKI_ERR_IO, "control socket %s: %s", sa.sun_path, strerror(errno));
        goto out;
    }
    if ((rc = datadir_control_send(fd, req, req_len, timeout_ms)) != MQPKI_OK ||
        (rc = datadir_control_recv(fd, &body, &len, timeout_ms)) != MQPKI_OK)
        goto out;
    if (body[0] != 0) {
        /* The daemon's failure, with its detail. */
        int code = body[0] < MQPKI_ERR_COUNT_ ? body[0] : MQPKI_ERR_INTERNAL;
        rc = mqpki_fail(code, "mqpkid: %.*s", (int)(len - 1 < 400 ? len - 1 : 400),
                        (const char *)body + 1);
        goto out;
    }
    *reply = body;
    *reply_len = len;
    body = NULL;
out:
    free(body);
    if (fd >= 0)
        close(fd);
    if (dirfd >= 0)
        close(dirfd);
    return rc;
}

int datadir_control_listen(const char *home, int *out)
{
    struct sockaddr_un sa;
    int fd = -1, dirfd = -1, rc;

    *out = -1;
    if ((rc = control_socket(home, &sa, &dirfd, &fd)) != MQPKI_OK)
        goto out;
    /* A socket left by a daemon that died: the caller holds the daemon lock, so it is stale. */
    (void)unlink(sa.sun_path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 16) != 0) {
        rc = mqpki_fail(MQPKI_ERR_IO, "control socket %s/%s: %s", home, CONTROL_SOCKET,
                        strerror(errno));
        goto out;
    }
    *out = fd;
    fd = -1;
out:
    if (fd >= 0)
        close(fd);
    if (dirfd >= 0)
        close(dirfd);
    return rc;
}

int datadir_control_peer_ok(int fd)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof(cred))
        return 0;
    return cred.uid == geteuid() || cred.uid == 0;
}

int datadir_lock_take(const char *home, const char *rel, int wait_ms, int *fd_out, pid_t *holder)
{
    char path[PATH_MAX], dir[PATH_MAX], text[32];
    int fd, waited = 0, rc = MQPKI_OK;

    *fd_out = -1;
    if (holder != NULL)
        *holder = 0;
    if (mqpki_path(dir, sizeof(dir), "%s/%s", home, CONTROL_DIR) != MQPKI_OK ||
        mqpki_path(path, sizeof(path), "%s/%s", home, rel) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", home);
    if ((rc = mqpki_mkdir_p(dir, 0700)) != MQPKI_OK)
        return rc;
    if ((fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0)
        return mqpki_fail(errno == ENOSPC ? MQPKI_ERR_NOSPACE : MQPKI_ERR_IO, "%s: %s", path,
                          strerror(errno));
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        struct timespec ten_ms = {0, 10 * 1000 * 1000};
        if (errno != EWOULDBLOCK && errno != EINTR) {
            rc = mqpki_fail(MQPKI_ERR_IO, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (waited >= wait_ms) {
            ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
            if (holder != NULL && n > 0) {
                text[n] = '\0';
                *holder = (pid_t)strtol(text, NULL, 10);
            }
            rc = MQPKI_ERR_BUSY;
            goto out;
        }
        nanosleep(&ten_ms, NULL);
        waited += 10;
    }
    /* Who holds it, for the message of whoever waits. */
    snprintf(text, sizeof(text), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0 && pwrite(fd, text, strlen(text), 0) < 0)
        mqpki_log(MQPKI_LOG_DEBUG, "%s: cannot note the holder", path);
    *fd_out = fd;
    fd = -1;
out:
    if (fd >= 0)
        close(fd);
    return rc;
}

void datadir_lock_release(int fd)
{
    if (fd < 0)
        return;
    (void)flock(fd, LOCK_UN);
    close(fd);
}
