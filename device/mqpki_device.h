/*
 * libmqpki-device: the client side of mqpki. Keeps a device's private key in a key store (an
 * encrypted file, or a PKCS#11 token such as a TPM, a secure element or SoftHSM), enrolls and
 * renews its certificate over EST (RFC 7030) trusting only the CA given at provisioning, and
 * sets up libmosquitto with the stored identity.
 *
 * Everything lives in one device directory (0700): see docs/device.md for the layout and the
 * crash-safe order of a renewal. The library never prints: install a logger with
 * mqpki_device_set_logger(). Functions return 0 (MQPKI_DEVICE_OK) or an error code; the
 * calling thread's one-line detail is mqpki_device_last_error(). Secrets (enrollment token,
 * PIN, device secret) are never logged and never part of an error detail.
 *
 * Thread safety: a handle is used by one thread at a time; different handles are independent.
 */
#ifndef MQPKI_DEVICE_H
#define MQPKI_DEVICE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MQPKI_DEVICE_BUILD)
#define MQPKI_DEVICE_EXPORT __attribute__((visibility("default")))
#else
#define MQPKI_DEVICE_EXPORT
#endif

/*
 * Error codes. X(name, exit_status, text): exit_status 1 when the cause is outside the device
 * (input, server refusal, trust, credentials), 2 for a local internal failure.
 */
#define MQPKI_DEVICE_ERRORS(X)                                                                     \
    X(MQPKI_DEVICE_OK, 0, "success")                                                               \
    X(MQPKI_DEVICE_ERR_INVALID, 1, "invalid argument")                                             \
    X(MQPKI_DEVICE_ERR_NOT_ENROLLED, 1, "device not enrolled")                                     \
    X(MQPKI_DEVICE_ERR_EXISTS, 1, "device already enrolled")                                       \
    X(MQPKI_DEVICE_ERR_UNREACHABLE, 1, "server unreachable")                                       \
    X(MQPKI_DEVICE_ERR_TLS, 1, "server certificate not trusted")                                   \
    X(MQPKI_DEVICE_ERR_CA_PIN, 1, "CA fingerprint pin mismatch")                                   \
    X(MQPKI_DEVICE_ERR_REFUSED, 1, "credentials refused by the server")                            \
    X(MQPKI_DEVICE_ERR_POLICY, 1, "request refused by the server's policy")                        \
    X(MQPKI_DEVICE_ERR_BAD_REQUEST, 1, "request rejected by the server")                           \
    X(MQPKI_DEVICE_ERR_RATE, 1, "rate limited by the server; retry later")                         \
    X(MQPKI_DEVICE_ERR_UNAVAILABLE, 1, "server temporarily unavailable")                           \
    X(MQPKI_DEVICE_ERR_PROTOCOL, 1, "malformed response from the server")                          \
    X(MQPKI_DEVICE_ERR_VERIFY, 1, "issued certificate failed verification")                        \
    X(MQPKI_DEVICE_ERR_STORE_LOCKED, 1, "key store locked (wrong secret or PIN)")                  \
    X(MQPKI_DEVICE_ERR_KEY_MISSING, 1, "private key missing")                                      \
    X(MQPKI_DEVICE_ERR_KEY_CORRUPT, 1, "private key file corrupted")                               \
    X(MQPKI_DEVICE_ERR_IO, 2, "I/O error")                                                         \
    X(MQPKI_DEVICE_ERR_NOMEM, 2, "out of memory")                                                  \
    X(MQPKI_DEVICE_ERR_HSM, 2, "PKCS#11 token failure")                                            \
    X(MQPKI_DEVICE_ERR_CRYPTO, 2, "cryptographic failure")                                         \
    X(MQPKI_DEVICE_ERR_INTERNAL, 2, "internal error")

#define MQPKI_DEVICE_ERR_ENUM_(name, exit_status, text) name,
enum mqpki_device_err { MQPKI_DEVICE_ERRORS(MQPKI_DEVICE_ERR_ENUM_) MQPKI_DEVICE_ERR_COUNT_ };
#undef MQPKI_DEVICE_ERR_ENUM_

/* Short fixed text of an error code; never NULL. */
MQPKI_DEVICE_EXPORT const char *mqpki_device_strerror(int rc);

/* Suggested process exit status for rc: 0, 1 (outside cause) or 2 (internal). */
MQPKI_DEVICE_EXPORT int mqpki_device_exit_status(int rc);

/* The calling thread's detail of its last failure ("server 127.0.0.1:8443 unreachable: ..."),
 * or "" when none. Valid until the next library call on this thread. */
MQPKI_DEVICE_EXPORT const char *mqpki_device_last_error(void);

/* Logging: the library is silent unless a logger is installed (process-wide; NULL removes it).
 * level: 0 error, 1 warning, 2 info, 3 debug. */
typedef void (*mqpki_device_log_fn)(int level, const char *msg, void *ctx);
MQPKI_DEVICE_EXPORT void mqpki_device_set_logger(mqpki_device_log_fn fn, void *ctx, int max_level);

struct mqpki_device;

/*
 * Opens the device directory dir (created 0700 when missing). Works on a directory that is not
 * enrolled yet (only mqpki_device_enroll is useful then). When enrolled, reads device.json and
 * opens the key store (file: needs the device secret; pkcs11: logs in to the token), so a locked
 * store or a missing key is reported here. *out is NULL on failure. Free with
 * mqpki_device_close.
 */
MQPKI_DEVICE_EXPORT int mqpki_device_open(const char *dir, struct mqpki_device **out);

/* Releases the handle, its key store session and its SSL_CTX. NULL-safe. */
MQPKI_DEVICE_EXPORT void mqpki_device_close(struct mqpki_device *dev);

/* Enrollment parameters. Strings are borrowed for the duration of the call. */
struct mqpki_device_enroll_opts {
    const char *server;         /* "https://host:port" (EST base; HTTPS only) */
    const char *ca_file;        /* trust this CA chain (PEM), or: */
    const char *ca_fingerprint; /* SHA-256 of the root's DER, hex, colons allowed */
    const char *asset;          /* asset id registered with `mqpki asset add` */
    const char *token;          /* one-time enrollment token; the library wipes no caller copy */
    const char *store;          /* "file" (default) or "pkcs11:/path/to/module.so" */
    int force;                  /* re-enroll over an existing identity */
};

/*
 * First enrollment: establishes trust in the CA, generates a key in the store, sends a CSR to
 * /simpleenroll with HTTP Basic ASSET:TOKEN, verifies the returned certificate and commits the
 * identity. An existing identity is refused with MQPKI_DEVICE_ERR_EXISTS unless force is set;
 * on any failure an existing identity is left untouched.
 */
MQPKI_DEVICE_EXPORT int mqpki_device_enroll(struct mqpki_device *dev,
                                            const struct mqpki_device_enroll_opts *opts);

/*
 * Renewal: new key, CSR, /simplereenroll authenticated with the current certificate, checks
 * (chain to the CA, key match, same asset), then an atomic switch; the old identity stays in
 * use until the new one is verified and committed. Without force, does nothing (returns OK,
 * *renewed 0) unless renewal is due. renewed may be NULL.
 */
MQPKI_DEVICE_EXPORT int mqpki_device_renew(struct mqpki_device *dev, int force, int *renewed);

/* What status shows. Strings point into the handle and stay valid until the next call on it. */
struct mqpki_device_info {
    const char *asset;
    const char *server;
    const char *store;   /* "file" or "pkcs11:MODULE" */
    const char *serial;  /* lower-case hex */
    const char *subject; /* one-line RFC 2253 */
    int64_t not_before;  /* seconds since the epoch */
    int64_t not_after;
    int64_t renew_at;    /* when the next renewal is due (2/3 of the lifetime + jitter) */
    unsigned generation; /* identity generation (1 after enrollment, +1 per renewal) */
};

/* Fills *info from the committed identity; MQPKI_DEVICE_ERR_NOT_ENROLLED when there is none. */
MQPKI_DEVICE_EXPORT int mqpki_device_info(struct mqpki_device *dev, struct mqpki_device_info *info);

/* 1 when renewal is due at time now (seconds since the epoch), 0 otherwise. */
MQPKI_DEVICE_EXPORT int mqpki_device_renewal_due(struct mqpki_device *dev, int64_t now);

/*
 * Delay in seconds before retry number attempt (0 based) after a failure: exponential backoff
 * from 5 s, capped at 1 h, with random jitter, so that a fleet does not retry in step. A
 * Retry-After from the server, when the last failure carried one, is honoured as a minimum.
 */
MQPKI_DEVICE_EXPORT int64_t mqpki_device_retry_delay(struct mqpki_device *dev, unsigned attempt);

/* Paths of the CA chain and of the current certificate chain (leaf first), for other tools. */
MQPKI_DEVICE_EXPORT const char *mqpki_device_ca_path(struct mqpki_device *dev);

/*
 * Configures a libmosquitto client (struct mosquitto *, passed as void * so that this header
 * does not need mosquitto.h) for mutual TLS with the stored identity: an SSL_CTX with TLS 1.2+,
 * the peer verified against the provisioned CA and host name checked by libmosquitto, the
 * certificate chain and the key from the store (for PKCS#11, signatures run in the token).
 * The SSL_CTX is owned by dev: keep dev open while mosq uses it; calling again after a renewal
 * builds a new SSL_CTX for the new identity (reconnect to use it).
 */
MQPKI_DEVICE_EXPORT int mqpki_device_mosquitto_tls(struct mqpki_device *dev, void *mosq);

#ifdef __cplusplus
}
#endif

#endif
