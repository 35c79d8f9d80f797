/*
 * enrollment: turns a request (operator CLI, EST simpleenroll/simplereenroll) into checked
 * issuance options, has the CA sign, and records the certificate durably before anyone sees
 * it. Authorization decides here; ca/ only signs. No sockets.
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

struct enrollment_issue_req {
    const char *asset_id;
    const unsigned char *csr; /* DER, PEM or base64 DER; at most CA_CSR_MAX bytes */
    size_t csr_len;
    int profile;             /* enum ca_profile, or -1 for the one matching the asset's kind */
    int days;                /* validity; 0 for the configured default of the profile: */
    int device_days;         /*   device profile ([ca] device_days; 0: CA default) */
    int broker_days;         /*   broker profile ([ca] broker_days; 0: CA default) */
    const char *token;       /* one-time token consumed with the record, or NULL (operator) */
    const char *auth_serial; /* re-enrollment: the client certificate that authenticated it,
                                checked again (valid or superseded, same asset) in the
                                transaction that records the new one; NULL otherwise */
    int supersede;           /* re-enrollment: the asset's other valid certificates superseded */
    const char *actor;       /* for the audit log: "cli", "est:ADDR", ... */
    const char *const *dns;  /* SAN DNS names (broker, service profiles) */
    size_t n_dns;
    const char *const *ips; /* SAN IP addresses (broker, service profiles) */
    size_t n_ips;
};

/*
 * Parses and checks the CSR (proof of possession, key policy), checks the asset (exists, not
 * decommissioned, profile matching its kind), consumes the token if given, signs and records
 * the certificate with its audit event in one transaction. *out is set only after the commit:
 * a certificate the store does not know never leaves. Errors as in common.h with a one-line
 * detail (MQPKI_ERR_PARSE bad CSR, MQPKI_ERR_POLICY refused, MQPKI_ERR_AUTH bad token,
 * MQPKI_ERR_NOT_FOUND unknown asset, MQPKI_ERR_STATE decommissioned asset).
 */
int enrollment_issue(struct ca *ca, struct inventory *inv, const struct enrollment_issue_req *req,
                     X509 **out);

/*
 * Group commit: one thread that records the certificates of many concurrent issuances in one
 * durable commit (its own store connection on db_path).
 */
struct enrollment_committer;
int enrollment_committer_start(const char *db_path, struct enrollment_committer **out);
/* Finishes the queued records, then stops. NULL-safe. */
void enrollment_committer_stop(struct enrollment_committer *cm);

/* enrollment_issue, with the record written by the committer cm (NULL: on inv, as
 * enrollment_issue). inv is still used, read-only, for the asset checks. */
int enrollment_issue_batched(struct ca *ca, struct inventory *inv, struct enrollment_committer *cm,
                             const struct enrollment_issue_req *req, X509 **out);

/*
 * EST (RFC 7030) request handling, independent of sockets: the daemon passes what it read off
 * the connection and sends back what it is given.
 */
struct est;

/* A request body larger than this gets 413 before it is read. */
#define EST_BODY_MAX (96 * 1024)

struct est_config {
    int device_days, broker_days; /* default validity by profile ([ca] *_days) */
    int failures_per_window;      /* failed authentications per address or asset per window */
    int window_seconds;           /*   before 429 with Retry-After */
    double requests_per_second;   /* per client address (token bucket); 0 = unlimited */
    int burst;                    /*   bucket size */
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

/* Creates the EST handler over a CA (thread-safe signing), recording through committer cm
 * (NULL: each request commits on its own). Precomputes /cacerts and /csrattrs. */
int est_new(struct ca *ca, struct enrollment_committer *cm, const struct est_config *cfg,
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
