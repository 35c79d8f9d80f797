/*
 * device_int.h: what the files of libmqpki-device share and nothing else sees: the handle,
 * the key store interface, the EST client and the error/log plumbing.
 */
#ifndef MQPKI_DEVICE_INT_H
#define MQPKI_DEVICE_INT_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "mqpki_device.h"

#include "common.h"
#include "proto.h"

#define DEV_PATH_MAX     4096
#define DEV_RESPONSE_MAX (1024 * 1024) /* cap of any EST response body */
#define DEV_FILE_MAX     (256 * 1024)  /* cap of any file we read from the device directory */
#define DEV_SECRET_MAX   256
#define DEV_TOKEN_MAX    512
#define DEV_RETRY_BASE   5
#define DEV_RETRY_CAP    3600

/* Errors and logging (device/error.c). */
int dev_fail(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void dev_clear_error(void);
void dev_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
enum { DEV_LOG_ERROR, DEV_LOG_WARN, DEV_LOG_INFO, DEV_LOG_DEBUG };
/* Maps a common.h error (from p11/ or common/) to ours, keeping its detail. */
int dev_from_common(int common_rc, int fallback);

/*
 * A key store: keys are named by the store's owner ("1", "2": the identity generation); the
 * back end decides where a name lives (DIR/key-NAME.pem, a token label).
 */
struct dev_store_args {
    const char *param;       /* what follows "pkcs11:" (the module path); "" for file */
    const char *asset;       /* names token keys "mqpki-ASSET-NAME" */
    const char *token_label; /* PKCS#11 token label */
    int create;              /* enrollment: the file store may create its device secret */
};

struct mqpki_keystore_ops {
    const char *kind; /* "file", "pkcs11" */
    /* Opens the store of the device directory dir. */
    int (*open)(const char *dir, const struct dev_store_args *args, void **state);
    /* A new EC P-256 key under name; a leftover of an unfinished attempt under the same name is
     * replaced or reused (it was never part of a committed identity). */
    int (*generate)(void *state, const char *name, EVP_PKEY **out);
    /* The key under name: MQPKI_DEVICE_ERR_KEY_MISSING, _KEY_CORRUPT, _STORE_LOCKED. */
    int (*load)(void *state, const char *name, EVP_PKEY **out);
    /* Forgets the key under name once it is no longer referenced; best effort. */
    void (*remove)(void *state, const char *name);
    void (*close)(void *state);
};

extern const struct mqpki_keystore_ops dev_store_file;
extern const struct mqpki_keystore_ops dev_store_pkcs11;

/* The handle (mqpki_device.h). */
struct mqpki_device {
    char dir[DEV_PATH_MAX];
    int enrolled;
    /* device.json */
    char asset[PROTO_ASSET_ID_MAX + 1];
    char token_label[128];
    char *server;
    char *store_spec;
    unsigned generation;
    uint32_t jitter;
    /* the provisioned CA chain (ca.pem) */
    STACK_OF(X509) * ca_certs;
    X509_STORE *trust;
    char *ca_pem;
    size_t ca_pem_len;
    /* the committed identity */
    const struct mqpki_keystore_ops *ops;
    void *store;
    X509 *cert;
    STACK_OF(X509) * chain; /* intermediates sent with cert */
    EVP_PKEY *key;
    SSL_CTX *ssl_ctx; /* mqpki_device_mosquitto_tls */
    int64_t retry_after;
    /* mqpki_device_info / _ca_path buffers */
    char serial[PROTO_SERIAL_HEX_MAX + 1], subject[512], store_text[DEV_PATH_MAX + 16],
        ca_path[DEV_PATH_MAX + 8];
};

/* Store spec "file" or "pkcs11:MODULE" -> ops and param (points into spec). */
int dev_store_lookup(const char *spec, const struct mqpki_keystore_ops **ops, const char **param);

/* Reads a secret from env var, else the first line of file (which must be 0600 or stricter).
 * MQPKI_DEVICE_ERR_NOT_ENROLLED-free: returns MQPKI_DEVICE_ERR_STORE_LOCKED when absent. */
int dev_secret_read(const char *env, const char *file, char *out, size_t size);

/* EST client (device/est.c). */
struct dev_est {
    const char *server; /* base URL */
    X509_STORE *trust;  /* NULL: no peer verification (pin bootstrap only) */
    const char *ca_pem; /* the same trust as PEM (CURLOPT_CAINFO_BLOB) */
    size_t ca_pem_len;
    X509 *client_cert; /* reenroll: TLS client identity */
    STACK_OF(X509) * client_chain;
    EVP_PKEY *client_key;
    int64_t retry_after; /* out: Retry-After of a 429/503/202, else 0 */
};

int dev_est_cacerts(struct dev_est *est, STACK_OF(X509) * *certs);
/* POST simpleenroll (user/token set) or simplereenroll (client_cert set). */
int dev_est_enroll(struct dev_est *est, const char *asset, const char *token, X509_REQ *csr,
                   X509 **cert);

/* Pure helpers, also exercised by tests/unit/test_device.c. */
/* Parses a base64 PKCS#7 certs-only body into a stack of certificates (at least one). */
int dev_p7_certs_decode(const char *body, size_t len, STACK_OF(X509) * *out);
/* Parses a SHA-256 fingerprint (64 hex digits, colons and spaces allowed, any case). */
int dev_fingerprint_parse(const char *text, unsigned char out[32]);
/* The renewal instant for a certificate valid [nb, na]: nb + 2/3 (na-nb) + jitter in [0, 10%]. */
int64_t dev_renew_at(int64_t not_before, int64_t not_after, uint32_t jitter_seed);
/* The retry delay for attempt (0 based) given a random value r. */
int64_t dev_backoff(unsigned attempt, uint32_t r);

#endif
