/* enrollment internals shared by its files. */
#ifndef MQPKI_ENROLLMENT_INT_H
#define MQPKI_ENROLLMENT_INT_H

#include "enrollment.h"

/*
 * Attempt and request limits, keyed by client address and by asset: a token bucket of requests
 * per address, and failed authentications counted per window, blocking the key for the rest of
 * the window once over the limit. Thread-safe; bounded memory (old entries are recycled).
 */
struct ratelimit;

int ratelimit_new(const struct est_config *cfg, struct ratelimit **out);
void ratelimit_free(struct ratelimit *rl);

/* Seconds the caller must wait (for Retry-After), 0 when the request may go on. addr (takes a
 * request from the bucket) or asset (failure block only) may be NULL. */
int ratelimit_check(struct ratelimit *rl, const char *addr, const char *asset);

/* Records a failed authentication from addr for asset (either may be NULL). */
void ratelimit_failure(struct ratelimit *rl, const char *addr, const char *asset);

struct inventory_cert;

/* What a record carries besides the certificate. */
struct enrollment_auth {
    const char *token;       /* consumed with the record, or NULL */
    const char *auth_serial; /* re-enrollment: still valid or superseded, or NULL */
    int supersede;
    const char *actor;
};

/* MQPKI_OK when serial is in the store, of asset, and valid or superseded (not revoked, held or
 * expired); MQPKI_ERR_AUTH with a detail otherwise. */
int enrollment_check_auth_cert(struct inventory *inv, const char *serial, const char *asset);

/* Records an issued certificate in the open transaction: token consumed, authenticating
 * certificate checked again, then the certificate added. */
int enrollment_record(struct inventory *inv, const struct inventory_cert *rec,
                      const struct enrollment_auth *auth);

/* Hands a record to the committer and waits until its batch is durable; the record's result. */
int enrollment_committer_record(struct enrollment_committer *cm, const struct inventory_cert *rec,
                                const struct enrollment_auth *auth);

#endif
