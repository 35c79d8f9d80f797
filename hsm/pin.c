/*
 * hsm/pin.c: where the user PIN comes from: MQPKI_PIN, else a PIN file only its owner can read.
 * The PIN is never logged nor put in an error detail.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "common.h"
#include "hsm_int.h"

/* Room for the longest PIN, its line ending, and a byte to notice a longer line. */
#define PIN_READ_MAX (HSM_PIN_MAX + 2)

int hsm_pin_read(const char *pin_file, char out[HSM_PIN_MAX])
{
    char buf[PIN_READ_MAX];
    const char *env = getenv("MQPKI_PIN");
    struct stat st;
    size_t len = 0, n;
    ssize_t got;
    int fd = -1, rc = MQPKI_OK;

    out[0] = '\0';
    if (env != NULL && env[0] != '\0') {
        n = strlen(env);
        if (n > HSM_PIN_MAX - 1) {
            rc = mqpki_fail(MQPKI_ERR_INVALID, "MQPKI_PIN: longer than %d characters",
                            HSM_PIN_MAX - 1);
            goto out;
        }
        memcpy(out, env, n + 1);
        goto out;
    }
    if (pin_file == NULL || pin_file[0] == '\0') {
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "no PIN: MQPKI_PIN is not set and no PIN file given");
        goto out;
    }
    fd = open(pin_file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENOENT)
            rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "no PIN: MQPKI_PIN is not set and %s is missing",
                            pin_file);
        else
            rc = mqpki_fail(MQPKI_ERR_IO, "PIN file %s: %s", pin_file, strerror(errno));
        goto out;
    }
    /* Checked on the open file, so the file read is the file judged. */
    if (fstat(fd, &st) != 0) {
        rc = mqpki_fail(MQPKI_ERR_IO, "PIN file %s: %s", pin_file, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "PIN file %s: not a regular file", pin_file);
        goto out;
    }
    if (st.st_mode & 077) {
        rc = mqpki_fail(MQPKI_ERR_POLICY,
                        "PIN file %s: mode %04o lets group or others read it; chmod 600 it",
                        pin_file, (unsigned)(st.st_mode & 07777));
        goto out;
    }
    while (len < sizeof(buf)) {
        got = read(fd, buf + len, sizeof(buf) - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            rc = mqpki_fail(MQPKI_ERR_IO, "PIN file %s: %s", pin_file, strerror(errno));
            goto out;
        }
        if (got == 0)
            break;
        len += (size_t)got;
        if (memchr(buf, '\n', len) != NULL)
            break;
    }
    /* The PIN is the first line, without its line ending. */
    for (n = 0; n < len && buf[n] != '\n'; n++)
        ;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if (n > HSM_PIN_MAX - 1) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "PIN file %s: PIN longer than %d characters", pin_file,
                        HSM_PIN_MAX - 1);
        goto out;
    }
    if (n == 0) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "PIN file %s: first line is empty", pin_file);
        goto out;
    }
    memcpy(out, buf, n);
    out[n] = '\0';
out:
    if (fd >= 0)
        close(fd);
    OPENSSL_cleanse(buf, sizeof(buf));
    return rc;
}
