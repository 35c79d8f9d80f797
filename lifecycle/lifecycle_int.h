/* lifecycle internals shared by its files. Not for other modules. */
#ifndef MQPKI_LIFECYCLE_INT_H
#define MQPKI_LIFECYCLE_INT_H

#include "lifecycle.h"

/* A delta CRL with more entries than this is published as a full CRL instead. */
#define LIFECYCLE_DELTA_MAX_DEFAULT 10000

struct lifecycle {
    struct inventory *inv; /* borrowed */
    struct lifecycle_config cfg;
};

struct inventory_cert;

/* What a record carries besides the certificate. */
struct lifecycle_auth {
    const char *token;               /* consumed with the record, or NULL */
    const unsigned char *csr_sha256; /* recorded with the consumed token (a retry's check) */
    const char *auth_serial;         /* re-enrollment: still valid or superseded, or NULL */
    int supersede;
    const char *actor;
    int64_t reenroll_grace; /* see lifecycle_check_auth_cert */
};

/* Records an issued certificate in the open transaction: token consumed, authenticating
 * certificate checked again, then the certificate added. */
int lifecycle_record(struct inventory *inv, const struct inventory_cert *rec,
                     const struct lifecycle_auth *auth);

/* Hands a record to the committer and waits until its batch is durable; the record's result. */
int lifecycle_committer_record(struct lifecycle_committer *cm, const struct inventory_cert *rec,
                               const struct lifecycle_auth *auth);

#endif
