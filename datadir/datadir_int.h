/* datadir internals shared by its files. */
#ifndef MQPKI_DATADIR_INT_H
#define MQPKI_DATADIR_INT_H

#include "datadir.h"
#include "proto.h"

/* Labels of the CA keys in the token. */
#define DATADIR_ROOT_KEY    "mqpki-root"
#define DATADIR_ISSUING_KEY "mqpki-issuing"
/* How long a publisher waits for another one to finish (a million-entry CRL takes seconds). */
#define PUBLISH_LOCK_MS 60000

/* The asset id of mqpkid's own TLS and feed identity. */
#define DATADIR_SERVICE_ASSET PROTO_SERVICE_ID

struct datadir {
    char home[PATH_MAX];
    struct datadir_config cfg;
    struct hsm *hsm;
    struct inventory *inv;
    struct lifecycle *lc;
    struct ca *ca;
    const char *actor; /* who publishes, for the audit log ("cli", "init") */
};

/* Logs in to the configured token (embedded SoftHSM prepared when no module is set). */
int datadir_hsm_open(const char *home, const struct datadir_config *cfg, struct hsm **out);

/* Fills cfg with the defaults for home (what an empty mqpki.conf means). */
void datadir_config_defaults(const char *home, struct datadir_config *cfg);

/* Names for a service certificate's SAN. */
#define DATADIR_NAMES_MAX 34
struct datadir_names {
    char dns[DATADIR_NAMES_MAX][256];
    char ips[DATADIR_NAMES_MAX][64];
    size_t n_dns, n_ips;
};

/* Issues mqpkid's TLS identity for names (a fresh software EC P-256 key) and installs it in tls/
 * crash-safely; supersede marks the previous certificate superseded. */
int datadir_tls_issue(struct datadir *dd, const struct datadir_names *names, int supersede);

#endif
