/*
 * datadir/offline_root.c: the root CA kept in a token of its own, offline (docs/operations.md,
 * "Key ceremony").
 *
 * A root home is a small directory meant for removable media or an air-gapped machine: its own
 * SoftHSM token (hsm/, label DATADIR_ROOT_TOKEN, guarded like the CA's), its PIN in
 * secrets/pin (0600; or none, and MQPKI_ROOT_PIN gives it: then `root init` wrote no PIN at
 * all),
 * the root certificate root.pem
 * (written last: its presence means a complete root home) and ceremony.log, one JSON line per
 * signature the root key made, fsynced before the certificate is handed out. The root key never
 * leaves the token, and the CA's data directory never holds it: `mqpki init --root-home`
 * certifies the issuing CA and audit keys with it, `mqpki root sign` certifies a new issuing CA
 * generation from the request `mqpki ca rollover --csr-out` wrote.
 *
 * One process opens a root home at a time (run/token.lock). SoftHSM reads its configuration
 * once per C_Initialize, so the root token is opened only while no other token handle of this
 * process is open (init closes the CA's first).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "common.h"
#include "datadir.h"
#include "datadir_int.h"
#include "hsm.h"

#define ROOT_PEM     "root.pem"
#define ROOT_LOG     "ceremony.log"
#define ROOT_LOG_MAX 1024
/* "NAME Issuing CA", the longest name a CA of NAME's gets, within ca_name_build's 64. */
#define ROOT_NAME_MAX (64 - (int)sizeof(" Issuing CA") + 1)

struct root_home {
    int lock;
    struct hsm *hsm;
    EVP_PKEY *key;
    X509 *cert;
};

static void root_close(struct root_home *r)
{
    /* Token keys go before the token session they sign through. */
    EVP_PKEY_free(r->key);
    hsm_close(r->hsm);
    X509_free(r->cert);
    if (r->lock >= 0)
        close(r->lock);
    memset(r, 0, sizeof(*r));
    r->lock = -1;
}

static int take_lock(const char *dir, int *fd)
{
    static const char *const subdirs[] = {"", "/secrets"};
    char path[PATH_MAX];
    pid_t holder = 0;
    int rc = datadir_lock_take(dir, DATADIR_LOCK_TOKEN, 0, fd, &holder);

    if (rc == MQPKI_ERR_BUSY)
        rc = mqpki_fail(rc, "the root token in %s is in use by process %ld", dir, (long)holder);
    if (rc != MQPKI_OK)
        return rc;
    /* What a killed root init left half-written (a PIN for a token never made): the medium
     * keeps nothing it does not need. */
    for (size_t i = 0; i < sizeof(subdirs) / sizeof(subdirs[0]); i++)
        if (mqpki_path(path, sizeof(path), "%s%s", dir, subdirs[i]) == MQPKI_OK)
            (void)mqpki_file_sweep_tmp(path, NULL);
    mqpki_err_clear();
    return MQPKI_OK;
}

static int open_token(const char *dir, struct hsm **out)
{
    struct hsm_config hc;
    char hsm_dir[PATH_MAX], pin_file[PATH_MAX], pin[HSM_PIN_MAX];
    int rc;

    if (mqpki_path(hsm_dir, sizeof(hsm_dir), "%s/hsm", dir) != MQPKI_OK ||
        mqpki_path(pin_file, sizeof(pin_file), "%s/secrets/pin", dir) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", dir);
    if ((rc = hsm_softhsm_prepare(hsm_dir)) != MQPKI_OK)
        return rc;
    rc = hsm_root_pin_read(pin_file, pin);
    if (rc == MQPKI_ERR_NOT_FOUND)
        rc = mqpki_fail(rc, "no root token PIN: MQPKI_ROOT_PIN is not set and %s is missing",
                        pin_file);
    if (rc != MQPKI_OK)
        return rc;
    memset(&hc, 0, sizeof(hc));
    hc.module = HSM_SOFTHSM_MODULE;
    hc.token_label = DATADIR_ROOT_TOKEN;
    hc.pin = pin;
    hc.softhsm_dir = hsm_dir;
    rc = hsm_open(&hc, out);
    OPENSSL_cleanse(pin, sizeof(pin));
    return rc;
}

/* Opens the root home: lock, root.pem, token, key, and checks that they belong together. */
static int root_open(const char *dir, struct root_home *r)
{
    int rc;

    memset(r, 0, sizeof(*r));
    r->lock = -1;
    if ((rc = datadir_load_cert(dir, ROOT_PEM, &r->cert)) != MQPKI_OK) {
        char detail[PATH_MAX + 64];
        snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
        return mqpki_fail(rc == MQPKI_ERR_NOT_FOUND ? MQPKI_ERR_INVALID : rc,
                          "%s is not a root home (mqpki root init): %s", dir, detail);
    }
    if ((rc = take_lock(dir, &r->lock)) != MQPKI_OK || (rc = open_token(dir, &r->hsm)) != MQPKI_OK)
        goto fail;
    if ((rc = hsm_key_load(r->hsm, DATADIR_ROOT_KEY, &r->key)) != MQPKI_OK)
        goto fail;
    if (EVP_PKEY_eq(r->key, X509_get0_pubkey(r->cert)) != 1) {
        rc = mqpki_fail(MQPKI_ERR_TAMPERED, "%s/%s is not the certificate of the root token's key",
                        dir, ROOT_PEM);
        goto fail;
    }
    return MQPKI_OK;
fail:
    root_close(r);
    return rc;
}

/* The fingerprint of cert's key as the certificate encodes it (a certificate just signed holds
 * the token's key object, which ca_pubkey_fingerprint cannot read). */
static void cert_key_fp(X509 *cert, char out[PROTO_FP_HEX_LEN + 1])
{
    EVP_PKEY *pub = NULL;

    if (datadir_public_copy(X509_get0_pubkey(cert), &pub) != MQPKI_OK ||
        ca_pubkey_fingerprint(pub, out) != MQPKI_OK)
        out[0] = '\0';
    EVP_PKEY_free(pub);
    mqpki_err_clear();
}

/* Appends one line to ceremony.log and makes it durable. */
static int log_append(const char *dir, const char *op, X509 *cert)
{
    char path[PATH_MAX], line[ROOT_LOG_MAX], subject[256] = "", fp[PROTO_FP_HEX_LEN + 1] = "";
    char serial[PROTO_SERIAL_HEX_MAX + 1] = "", *s = NULL;
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    int64_t na = 0;
    int fd, n, rc = MQPKI_OK;

    if (bn != NULL && (s = BN_bn2hex(bn)) != NULL)
        snprintf(serial, sizeof(serial), "%s", s);
    OPENSSL_free(s);
    BN_free(bn);
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, subject,
                              sizeof(subject));
    /* The name is our own or checked (ca_name_build); quotes and controls never reach it. */
    for (char *p = subject; *p != '\0'; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
            *p = '?';
    cert_key_fp(cert, fp);
    (void)proto_asn1_time(X509_get0_notAfter(cert), &na);
    n = snprintf(line, sizeof(line),
                 "{\"time\":%lld,\"op\":\"%s\",\"subject\":\"%s\",\"serial\":\"%s\","
                 "\"key_sha256\":\"%s\",\"not_after\":%lld}\n",
                 (long long)mqpki_now(), op, subject, serial, fp, (long long)na);
    if (n < 0 || (size_t)n >= sizeof(line))
        return mqpki_fail(MQPKI_ERR_INTERNAL, "ceremony log line too long");
    if (mqpki_path(path, sizeof(path), "%s/%s", dir, ROOT_LOG) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", dir);
    if ((fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600)) < 0)
        return mqpki_fail_errno(errno, path);
    {
        /* A line an earlier run left torn (a full disk, a crash) is ended first, so that this
         * one stays a line of its own. */
        struct stat st;
        char last = '\n';
        if (fstat(fd, &st) == 0 && st.st_size > 0 && pread(fd, &last, 1, st.st_size - 1) == 1 &&
            last != '\n' && write(fd, "\n", 1) != 1) {
            rc = mqpki_fail_errno(errno != 0 ? errno : EIO, path);
            close(fd);
            return rc;
        }
    }
    errno = 0;
    if (write(fd, line, (size_t)n) != n || fsync(fd) != 0)
        rc = mqpki_fail_errno(errno != 0 ? errno : EIO, path);
    close(fd);
    return rc;
}

/* 1 when ceremony.log records an issuing CA of name cn certified by this root. Read a line at a
 * time: the log of a root's whole life, however long, in a fixed buffer. A line longer than
 * root_log ever writes (ROOT_LOG_MAX) is not one of ours and is skipped, as is a damaged one
 * (a NUL byte from a torn write: log_append ends it with a newline before the next line). */
static int name_certified(const char *dir, const char *cn)
{
    char path[PATH_MAX], line[4 * ROOT_LOG_MAX];
    struct stat st;
    FILE *f = NULL;
    int fd, found = 0, skipping = 0;

    if (mqpki_path(path, sizeof(path), "%s/%s", dir, ROOT_LOG) != MQPKI_OK ||
        (fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) < 0)
        return 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (f = fdopen(fd, "r")) == NULL) {
        close(fd);
        return 0;
    }
    for (;;) {
        const char *nl;
        size_t n;
        json_t *v;
        /* The newline found by memchr, not strlen: a NUL inside the line would hide it. */
        memset(line, 'x', sizeof(line));
        if (found || fgets(line, sizeof(line), f) == NULL)
            break;
        nl = memchr(line, '\n', sizeof(line) - 1);
        if (skipping || (nl == NULL && !feof(f))) {
            skipping = nl == NULL; /* the rest of an overlong line */
            continue;
        }
        n = nl != NULL ? (size_t)(nl - line) : strlen(line);
        v = json_loadb(line, n, 0, NULL); /* a NUL in the text: refused, the line skipped */
        const char *op = json_string_value(json_object_get(v, "op")),
                   *subject = json_string_value(json_object_get(v, "subject"));
        found = op != NULL && subject != NULL && strcmp(op, "issuing.certify") == 0 &&
                strcmp(subject, cn) == 0;
        json_decref(v);
    }
    fclose(f);
    return found;
}

int datadir_root_init(const char *dir, const struct datadir_root_opts *opts,
                      void (*progress)(const char *step), X509 **root_out)
{
    char path[PATH_MAX], pin[HSM_PIN_MAX] = "", so_pin[33] = "", name[160];
    const char *dirs[] = {"", "/hsm", "/secrets"};
    enum hsm_key_type type = HSM_KEY_EC_P256;
    struct root_home r;
    struct stat st;
    int rc, from_env = 0, made = 0, days = opts->days > 0 ? opts->days : DATADIR_ROOT_DAYS;

    memset(&r, 0, sizeof(r));
    r.lock = -1;
    *root_out = NULL;
    if (opts->ca_name != NULL &&
        (opts->ca_name[0] == '\0' || strlen(opts->ca_name) > ROOT_NAME_MAX ||
         strpbrk(opts->ca_name, "\"\\") != NULL || strspn(opts->ca_name, " ") > 0))
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "--ca-name: 1 to %d characters, no quote or backslash, not starting "
                          "with a space",
                          ROOT_NAME_MAX);
    for (const char *c = opts->ca_name != NULL ? opts->ca_name : ""; *c != '\0'; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            return mqpki_fail(MQPKI_ERR_INVALID, "--ca-name: no control characters");
    if ((rc = datadir_key_type(opts->key_type != NULL ? opts->key_type : "ec-p256", &type)) !=
        MQPKI_OK)
        return rc;
    if (mqpki_path(path, sizeof(path), "%s/hsm", dir) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "root home path too long");
    if ((rc = hsm_softhsm_path_check(path)) != MQPKI_OK)
        return rc;
    /* The PIN the officers give must be one SoftHSM takes, before anything is made. */
    rc = hsm_root_pin_read(NULL, pin);
    if (rc == MQPKI_OK && (strlen(pin) < 4 || strlen(pin) > 255)) {
        OPENSSL_cleanse(pin, sizeof(pin));
        return mqpki_fail(MQPKI_ERR_INVALID, "MQPKI_ROOT_PIN: 4 to 255 characters");
    }
    if (rc != MQPKI_OK && rc != MQPKI_ERR_NOT_FOUND)
        return rc;
    from_env = rc == MQPKI_OK;
    mqpki_err_clear();
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        if (mqpki_path(path, sizeof(path), "%s%s", dir, dirs[i]) != MQPKI_OK)
            return mqpki_fail(MQPKI_ERR_INVALID, "root home path too long");
        if ((rc = mqpki_mkdir_p(path, 0700)) != MQPKI_OK)
            return rc;
    }
    if (chmod(dir, 0700) != 0) {
        rc = mqpki_fail_errno(errno, dir);
        goto out;
    }
    /* Checked under the lock: two `root init` at once never both pass. */
    if ((rc = take_lock(dir, &r.lock)) != MQPKI_OK)
        goto out;
    if (mqpki_path(path, sizeof(path), "%s/%s", dir, ROOT_PEM) == MQPKI_OK &&
        stat(path, &st) == 0) {
        rc = mqpki_fail(MQPKI_ERR_EXISTS, "%s already holds a root (%s exists)", dir, ROOT_PEM);
        goto out;
    }
    if (mqpki_path(path, sizeof(path), "%s/hsm/tokens", dir) == MQPKI_OK && stat(path, &st) == 0) {
        rc = mqpki_fail(MQPKI_ERR_EXISTS,
                        "%s holds an incomplete root home (no %s); remove it or pick another", dir,
                        ROOT_PEM);
        goto out;
    }
    made = 1;
    if (progress != NULL)
        progress("creating the root home and its token (SoftHSM)");
    /* MQPKI_ROOT_PIN set: the officers hold the PIN, and neither it nor the SO PIN (which
     * could set a new one) is written; the token is never initialised again. Else random,
     * 0600 files. */
    if (!from_env) {
        if ((rc = datadir_random_secret(pin)) != MQPKI_OK ||
            (rc = datadir_random_secret(so_pin)) != MQPKI_OK ||
            (rc = datadir_write_file(dir, "secrets/pin", pin, strlen(pin), 0600)) != MQPKI_OK ||
            (rc = datadir_write_file(dir, "secrets/so-pin", so_pin, strlen(so_pin), 0600)) !=
                MQPKI_OK)
            goto out;
    } else if ((rc = datadir_random_secret(so_pin)) != MQPKI_OK) {
        goto out;
    }
    if (mqpki_path(path, sizeof(path), "%s/hsm", dir) != MQPKI_OK ||
        (rc = hsm_softhsm_prepare(path)) != MQPKI_OK ||
        (rc = hsm_token_init(HSM_SOFTHSM_MODULE, DATADIR_ROOT_TOKEN, so_pin, pin)) != MQPKI_OK ||
        (rc = open_token(dir, &r.hsm)) != MQPKI_OK)
        goto out;
    if (progress != NULL)
        progress("generating the root key inside the token and signing the root certificate");
    snprintf(name, sizeof(name), "%s Root CA", opts->ca_name != NULL ? opts->ca_name : "mqpki");
    if ((rc = hsm_key_generate(r.hsm, DATADIR_ROOT_KEY, type)) != MQPKI_OK ||
        (rc = hsm_key_load(r.hsm, DATADIR_ROOT_KEY, &r.key)) != MQPKI_OK ||
        (rc = ca_root_create(r.key, name, days, &r.cert)) != MQPKI_OK ||
        (rc = log_append(dir, "root.init", r.cert)) != MQPKI_OK)
        goto out;
    {
        char *pem = NULL;
        size_t len = 0;
        if ((rc = ca_cert_pem(r.cert, &pem, &len)) == MQPKI_OK)
            rc = datadir_write_file(dir, ROOT_PEM, pem, len, 0644);
        free(pem);
        if (rc != MQPKI_OK)
            goto out;
    }
    /* As relying parties will read it (not holding the token's key object). */
    rc = datadir_load_cert(dir, ROOT_PEM, root_out);
out:
    OPENSSL_cleanse(pin, sizeof(pin));
    OPENSSL_cleanse(so_pin, sizeof(so_pin));
    root_close(&r);
    if (rc != MQPKI_OK && made) {
        char detail[PATH_MAX + 256];
        snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
        rc = mqpki_fail(rc, "%s; %s is incomplete: remove it and run again", detail, dir);
    }
    return rc;
}

int datadir_root_certify(const char *dir, EVP_PKEY *pub, const char *cn,
                         enum datadir_root_kind kind, int days, unsigned flags, X509 **cert_out,
                         X509 **root_out)
{
    struct root_home r;
    X509 *cert = NULL;
    int64_t root_end = 0;
    int rc;

    *cert_out = NULL;
    if (root_out != NULL)
        *root_out = NULL;
    if ((rc = root_open(dir, &r)) != MQPKI_OK)
        return rc;
    /* A new generation of a CA this root made (init --root-home), not a CA of another name:
     * the name comes from a request the root has no other way to judge. */
    if (kind == DATADIR_ROOT_ISSUING && !(flags & DATADIR_ROOT_NEW_NAME) &&
        !name_certified(dir, cn)) {
        rc = mqpki_fail(MQPKI_ERR_POLICY,
                        "this root never certified an issuing CA named '%s' (%s/%s); a new CA "
                        "under it is made with `mqpki init --root-home`",
                        cn, dir, ROOT_LOG);
        goto out;
    }
    /* Nothing the root certifies outlives it: days are cut to the root's own end. */
    if (proto_asn1_time(X509_get0_notAfter(r.cert), &root_end) != MQPKI_OK ||
        root_end - mqpki_now() < 86400) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "the root in %s expires within a day", dir);
        goto out;
    }
    if ((int64_t)days * 86400 > root_end - mqpki_now())
        days = (int)((root_end - mqpki_now()) / 86400);
    if (kind == DATADIR_ROOT_AUDIT)
        rc = ca_audit_cert_create(r.cert, r.key, pub, cn, days, &cert);
    else
        rc = ca_issuing_create(r.cert, r.key, pub, cn, days, &cert);
    if (rc != MQPKI_OK ||
        (rc = log_append(dir, kind == DATADIR_ROOT_AUDIT ? "audit.certify" : "issuing.certify",
                         cert)) != MQPKI_OK)
        goto out;
    *cert_out = cert;
    cert = NULL;
    if (root_out != NULL) {
        *root_out = r.cert;
        r.cert = NULL;
    }
out:
    X509_free(cert);
    root_close(&r);
    return rc;
}

int datadir_root_check(const char *dir)
{
    struct root_home r;
    int rc = root_open(dir, &r);

    if (rc == MQPKI_OK)
        root_close(&r);
    return rc;
}

int datadir_public_copy(EVP_PKEY *key, EVP_PKEY **out)
{
    unsigned char *der = NULL;
    const unsigned char *p;
    int len = i2d_PUBKEY(key, &der);

    *out = NULL;
    if (len <= 0)
        return mqpki_fail(MQPKI_ERR_CRYPTO, "cannot encode a public key");
    p = der;
    *out = d2i_PUBKEY(NULL, &p, len);
    OPENSSL_free(der);
    return *out != NULL ? MQPKI_OK : mqpki_fail(MQPKI_ERR_CRYPTO, "cannot decode a public key");
}
