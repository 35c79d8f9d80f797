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

#endif
