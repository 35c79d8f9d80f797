/* device/keystore.c: picking a key store back end, and reading the secrets that unlock them. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "device_int.h"

int dev_store_lookup(const char *spec, const struct mqpki_keystore_ops **ops, const char **param)
{
    int rc = MQPKI_DEVICE_OK;

    *ops = NULL;
    *param = NULL;
    if (spec == NULL || strcmp(spec, "file") == 0) {
        *ops = &dev_store_file;
        *param = "";
    } else if (strncmp(spec, "pkcs11:", 7) == 0 && spec[7] == '/') {
        *ops = &dev_store_pkcs11;
        *param = spec + 7;
    } else {
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID,
                      "store '%s': expected 'file' or 'pkcs11:/path/to/module.so'", spec);
    }
    return rc;
}

int dev_secret_read(const char *env, const char *file, char *out, size_t size)
{
    const char *v = env != NULL ? getenv(env) : NULL;
    char buf[DEV_SECRET_MAX + 2];
    struct stat st;
    ssize_t n;
    int fd = -1, rc = MQPKI_DEVICE_OK;

    out[0] = '\0';
    if (v != NULL && v[0] != '\0') {
        if (strlen(v) >= size) {
            rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "%s is too long", env);
            goto out;
        }
        strcpy(out, v);
        goto out;
    }
    fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        rc = dev_fail(MQPKI_DEVICE_ERR_STORE_LOCKED, "key store locked: no %s%s%s",
                      env != NULL ? env : "", env != NULL ? " and no " : "", file);
        goto out;
    }
    /* A secret others can read protects nothing: refuse it rather than use it. */
    if (fstat(fd, &st) != 0 || (st.st_mode & 077) != 0) {
        rc = dev_fail(MQPKI_DEVICE_ERR_STORE_LOCKED,
                      "%s: readable by group or others; chmod 600 it", file);
        goto out;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    if (n < 0) {
        rc = dev_fail(MQPKI_DEVICE_ERR_IO, "%s: %s", file, strerror(errno));
        goto out;
    }
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    if (strlen(buf) >= size || buf[0] == '\0') {
        rc = dev_fail(MQPKI_DEVICE_ERR_STORE_LOCKED, "%s: empty or too long", file);
        goto out;
    }
    strcpy(out, buf);
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    if (fd >= 0)
        close(fd);
    return rc;
}
