/*
 * enrollment: EST (RFC 7030) for devices and brokers: parses and authenticates a request
 * (bootstrap token, client certificate, limits per address and asset) and hands the checked
 * request to the issuance use case (lifecycle_issue). No sockets.
 */
#ifndef MQPKI_ENROLLMENT_H
#define MQPKI_ENROLLMENT_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "ca.h"
#include "common.h"
#include "proto.h"

struct ca;
struct inventory;
struct lifecycle_committer;

/*
 * EST (RFC 7030) request handling, independent of sockets: the daemon passes what it read off
 * the connection and sends back what it is given.
 */
struct est;

/* A request body larger than this gets 413 before it is read. */
#define EST_BODY_MAX (96 * 1024)

#define EST_ALSO_TRUSTED_MAX 16
struct est_config {
    int profile_days[CA_PROFILE_COUNT_]; /* default validity by profile ([ca] *_days) */
    int64_t reenroll_grace;              /* [enrollment] reenroll_grace (lifecycle.h) */
    int failures_per_window;    /* failed authentications per address or asset per window */
    int window_seconds;         /*   before 429 with Retry-After */
    double requests_per_second; /* per client address (token bucket); 0 = unlimited */
    int burst;                  /*   bucket size */
    /* Older issuing CA generations still trusted (datadir_issuers_read, not retired), borrowed
     * during est_new: they verify re-enrollment certificates and go into /cacerts after the
     * current issuing CA. */
    X509 *const *also_trusted;
    size_t n_also_trusted;
};

/*
 * What the server remembers about one TLS connection's client certificate once its chain has
 * verified: later requests on the same connection presenting the same certificate bytes skip
 * parsing and chain verification while the whole chain is within its validity period. The
 * store lookup (revocation, hold, supersession) still runs on every request. The server zeroes
 * one per connection when it opens and frees it when it closes; est_handle fills it.
 */
struct est_peer {
    int verified;                    /* 1 when the fields below hold a verified certificate */
    unsigned char cert_sha256[32];   /* SHA-256 of the verified certificate's DER */
    int64_t valid_from, valid_until; /* latest notBefore, earliest notAfter of the chain */
    char serial[PROTO_SERIAL_HEX_MAX + 1];
    char asset[PROTO_ASSET_ID_MAX + 1];
    char key_fp[PROTO_FP_HEX_LEN + 1]; /* its key's fingerprint (ca_pubkey_fingerprint) */
};

struct est_request {
    const char *method;        /* "GET", "POST" */
    const char *path;          /* "/.well-known/est/simpleenroll" */
    const char *content_type;  /* may be NULL */
    const char *authorization; /* the Authorization header, may be NULL */
    const char *client_addr;   /* textual address, for limits and the audit log */
    const unsigned char *body;
    size_t body_len;
    const unsigned char *client_cert; /* DER of the TLS client's leaf certificate, or NULL */
    size_t client_cert_len;
    struct est_peer *peer; /* the connection's cache, or NULL: verify every time */
};

struct est_response {
    int status;               /* HTTP status */
    const char *content_type; /* static string */
    char *body;               /* heap; est_response_clear frees it */
    size_t body_len;
    int retry_after;      /* seconds, for 429/503; 0 = none */
    int www_authenticate; /* add WWW-Authenticate: Basic realm="mqpki" */
    int base64;           /* add Content-Transfer-Encoding: base64 */
    const char *result;   /* for metrics: "ok", "bad_request", "unauthorized", ... */
};

/* MQPKI_OK when cert chains to a CA est trusts for client certificates (the current issuing
 * CA, the older generations not retired, the root), for TLS client use; MQPKI_ERR_AUTH else. */
int est_client_cert_verify(struct est *est, X509 *cert);

/* Creates the EST handler over a CA (thread-safe signing), recording through committer cm
 * (NULL: each request commits on its own). Precomputes /cacerts and /csrattrs. */
int est_new(struct ca *ca, struct lifecycle_committer *cm, const struct est_config *cfg,
            struct est **out);
void est_free(struct est *est);

/* 1 when path is under /.well-known/est/. */
int est_handles(const char *path);

/*
 * Handles one EST request on the calling thread's own store connection inv. Always fills resp
 * (status and a short fixed plain-text reason on errors; details go to the log).
 */
void est_handle(struct est *est, struct inventory *inv, const struct est_request *req,
                struct est_response *resp);
void est_response_clear(struct est_response *resp);

#endif
