/*
 * broker: internals of the Mosquitto plugin mqpki_mosquitto.so (DESIGN.md 6). Nothing here is
 * exported from the plugin (only mosquitto_plugin_*); the header exists for the plugin's own
 * files and for tests/unit/test_broker.c. The plugin speaks X.509, CRLs and MQTT only: it never
 * links ca/, inventory/, hsm/ or datadir/.
 */
#ifndef MQPKI_BROKER_H
#define MQPKI_BROKER_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "proto.h"

/*
 * serialset: the revoked serials of one CRL as 16-byte keys (proto_serial_key) in an
 * open-addressing table (linear probing, load <= 1/2): O(1) lookups, 16 bytes a slot, so a
 * million serials take 32 MiB.
 */
struct serialset;

/* A set sized for about `expected` keys (it grows past that). NULL when out of memory. */
struct serialset *serialset_new(size_t expected);
void serialset_free(struct serialset *s);
/* Adds key (a no-op when present). 0, or -1 when out of memory. */
int serialset_add(struct serialset *s, const unsigned char key[PROTO_SERIAL_KEY_LEN]);
/* Removes key when present. */
void serialset_remove(struct serialset *s, const unsigned char key[PROTO_SERIAL_KEY_LEN]);
/* 1 when key is in the set. NULL-safe (0). */
int serialset_has(const struct serialset *s, const unsigned char key[PROTO_SERIAL_KEY_LEN]);
size_t serialset_count(const struct serialset *s);
/* Bytes held by the set's table. */
size_t serialset_bytes(const struct serialset *s);

/*
 * revset: what the plugin believes is revoked: the held full CRL, optionally extended by the
 * held delta CRL. Immutable once built; a new CRL builds a new revset that is swapped in (parts
 * unchanged by it, such as the full CRL under a new delta, are shared by reference count).
 */
struct revset;

/* An empty revset (no CRL held yet). */
struct revset *revset_new_empty(void);
void revset_free(struct revset *r);

/*
 * Builds the revset that results from applying a verified CRL (info from proto_crl_verify, order
 * already checked with proto_crl_order) to cur (may be NULL or empty). A full CRL replaces the
 * full part and keeps cur's delta only if it still extends it; a delta replaces the delta part.
 * 0, or -1 when out of memory.
 */
int revset_apply(const struct revset *cur, X509_CRL *crl, const struct proto_crl_info *info,
                 struct revset **out);

/*
 * The same from a CRL's DER (proto_crl_der_split, checked with proto_crl_der_check): the
 * signature over the TBS bytes by key, then the entries walked straight into the set, without
 * an X509_CRL of them. 0, or -1 with why.
 */
int revset_load_der(const struct revset *cur, const struct proto_crl_der *d, EVP_PKEY *key,
                    const struct proto_crl_info *info, struct revset **out, char *why,
                    size_t why_len);

/*
 * revpart: one CRL's serials, built off the broker's thread (crlload) and swapped in on it.
 * revpart_from_der walks d's entries (signature already checked) into a new part;
 * revset_with builds the revset of cur with p applied (as revset_apply) and takes p (0), or
 * leaves it to the caller (-1, out of memory). Parts are reference counted without locks: once
 * handed to revset_with, a part belongs to the broker's thread.
 */
struct revpart;
int revpart_from_der(const struct proto_crl_der *d, const struct proto_crl_info *info,
                     struct revpart **out, char *why, size_t why_len);
void revpart_free(struct revpart *p);
int64_t revpart_number(const struct revpart *p);
int revset_with(const struct revset *cur, struct revpart *p, struct revset **out);
/*
 * The revset of cur with delta p held ahead of its base, the full CRL the worker is still
 * loading: p's listed serials count as revoked at once, over cur's full and delta CRLs (which
 * a delta based on the older full CRL may still be needed for), and nothing it takes off counts
 * yet. Takes p (0) or leaves it to the caller (-1). revset_with keeps it until a full CRL
 * numbered at or above its base, or a newer delta, is applied: apply p itself then.
 */
int revset_with_ahead(const struct revset *cur, struct revpart *p, struct revset **out);

/*
 * crlload: one worker thread that loads large full CRLs off Mosquitto's thread. A submitted
 * CRL (its bytes copied) is split, checked, its signature verified over the TBS bytes, its
 * entries walked into a revpart, and, when it verified, written to persist_path (atomically);
 * the broker's thread collects the result with crlload_take on a later tick and swaps it in.
 * One job runs at a time; a job submitted while one runs waits in a single slot (a newer one
 * replaces it).
 */
struct crlload;
int crlload_start(STACK_OF(X509) * cas, struct crlload **out);
/* The trusted CRL signers from now on (the worker takes references of its own; the caller keeps
 * cas). 0, or -1 when out of memory. */
int crlload_set_cas(struct crlload *l, STACK_OF(X509) * cas);
/* Stops the worker (waits for the running job) and frees everything. NULL-safe. */
void crlload_stop(struct crlload *l);
/* 0, or -1 when out of memory. persist_path may be NULL. number: the CRL's number, for
 * crlload_pending. */
int crlload_submit(struct crlload *l, const unsigned char *der, size_t len, int64_t number,
                   const char *persist_path);
/* A full CRL announced by notice n: fetched from n->url by the worker (the peer checked with
 * the PEM certificates ca_pem), with retries; then as crlload_submit. 0, or -1 when out of
 * memory. */
int crlload_fetch(struct crlload *l, const struct proto_crl_notice *n, const char *ca_pem,
                  size_t ca_pem_len, const char *persist_path);
/* The full CRL number in force: a fetch retrying for that number or a lower one stops. */
void crlload_held(struct crlload *l, int64_t number);
/* 1 with the newest failed fetch attempt not reported yet (for the log), 0 when none. */
int crlload_note(struct crlload *l, char *out, size_t out_len);
/* A table to free on the worker (revset_set_reaper's fn; ctx is the struct crlload). It is
 * freed at once when the worker cannot take it. */
void crlload_reap(struct serialset *s, void *ctx);
/* The highest CRL number submitted and not yet taken, -1 when none. */
int64_t crlload_pending(const struct crlload *l);
/* 1 when a result was waiting: *part (NULL when refused, why says why) and *info; 0 when
 * none. */
int crlload_take(struct crlload *l, struct revpart **part, struct proto_crl_info *info, char *why,
                 size_t why_len);

/*
 * Hands the table of every part no revset holds any more to fn (NULL: freed at once). The
 * plugin passes crlload_reap: unmapping a million-serial table (32 MiB) is then the worker's
 * work, not Mosquitto's thread's. Set before any revset is freed; unset before fn's target
 * goes away.
 */
void revset_set_reaper(void (*fn)(struct serialset *s, void *ctx), void *ctx);

/* CRL numbers held (-1 when none) and the full CRL's nextUpdate (0 when none). */
int64_t revset_full_number(const struct revset *r);
int64_t revset_delta_number(const struct revset *r);
int64_t revset_next_update(const struct revset *r);
/* Number of serials currently considered revoked or on hold. */
size_t revset_count(const struct revset *r);

/* 1 when the serial key, issued by the CA whose name digest is issuer, is revoked or on hold. */
int revset_is_revoked(const struct revset *r, const unsigned char issuer[PROTO_ISSUER_LEN],
                      const unsigned char key[PROTO_SERIAL_KEY_LEN]);

/*
 * acl: who may do what. The service identity may publish, subscribe and read on the control
 * plane (PROTO_TOPIC_ROOT) only; every other identity ID may publish and subscribe under
 * fleet/ID/#, subscribe to and read its own command topic (proto_topic_asset_cmd), and what the
 * ACL file grants, but never publish on the control plane.
 */
enum acl_access { ACL_READ = 1, ACL_WRITE = 2, ACL_SUBSCRIBE = 4, ACL_UNSUBSCRIBE = 8 };

struct acl;

/*
 * Loads an ACL file: one rule a line, `WHO PATTERN read|write|readwrite`, WHO an asset id or `*`,
 * PATTERN a topic filter in which `%u` stands for the client's asset id; `#` starts a comment.
 * A subscription is granted when `read` covers its whole filter. NULL path: no extra rules.
 */
int acl_load(const char *path, struct acl **out, char *why, size_t why_len);
void acl_free(struct acl *a);

/* 1 when identity id (service when is_service) may do access on topic (a filter for
 * ACL_SUBSCRIBE). acl may be NULL. */
int acl_allowed(const struct acl *a, const char *id, int is_service, int access, const char *topic);

/* 1 when pattern (a filter with + and #) covers subject (a topic, or a filter whose wildcards
 * must then be covered by wildcards of pattern). */
int acl_topic_covers(const char *pattern, const char *subject);

/*
 * events: the plugin's security events (docs/detect.md) in a ring of fixed capacity. Callbacks
 * push (a full ring drops the event and counts it: the broker never waits for mqpkid); the tick
 * takes batches as JSON {"type":"batch","broker":B,"dropped":N,"events":[...]}.
 */
#define EVRING_BATCH_MAX 64 /* events in one message */
#define EVRING_BOOT_LEN  8  /* random bytes naming a ring (hex in each batch's "boot") */
#define BROKER_ADDR_MAX  64 /* a client's address as Mosquitto gives it, NUL included */

struct broker_event {
    char type[20]; /* connect, connect_refused, acl_denied, disconnect, takeover, ... */
    char asset[PROTO_ASSET_ID_MAX + 1];
    char client_id[PROTO_ASSET_ID_MAX * 2]; /* cut there: it is evidence, not a key */
    char address[BROKER_ADDR_MAX];
    char other_address[BROKER_ADDR_MAX]; /* takeover, cert_shared: the other connection's */
    char serial[PROTO_SERIAL_HEX_MAX + 1];
    char reason[32];
    char topic[PROTO_TOPIC_MAX];
    int wildcard;   /* acl_denied: a subscription filter with + or # */
    int abnormal;   /* disconnect: 1 not a clean DISCONNECT (the will goes out), 0 clean */
    int has_counts; /* stats */
    int64_t connects, messages, bytes;
    int64_t denials_dropped; /* stats: denial events left out (plugin_opt_denials_per_s) */
    int64_t time;
};

struct evring;

/* A ring of cap events; NULL when out of memory or cap is 0. */
struct evring *evring_new(size_t cap);
void evring_free(struct evring *r);
/* A cleared record of type in the ring to fill in, or NULL when the ring is full (counted as
 * dropped). Valid until the next evring_take_batch. */
struct broker_event *evring_push(struct evring *r, const char *type);
/* Copies s (NULL: "") into a field of size bytes, cut to fit. */
void broker_event_set(char *dst, size_t size, const char *s);
#define BROKER_EVENT_SET(field, s) broker_event_set((field), sizeof(field), (s))
/* The oldest events (at most max, at most EVRING_BATCH_MAX) as one JSON batch (caller frees),
 * removed from the ring; NULL when there is nothing to say (or out of memory: kept). */
char *evring_take_batch(struct evring *r, const char *broker, size_t max);
size_t evring_count(const struct evring *r);
uint64_t evring_dropped(const struct evring *r);

/* quarantine: the assets mqpkid put under quarantine, from its retained list on
 * PROTO_TOPIC_QUARANTINE ({"assets":["ID",...]}). A quarantined asset may only publish to
 * fleet/ID/quarantine. */
#define QUARANTINE_MAX 100000
struct quarantine;
/* Parses the retained list (hostile: size-capped, ids checked). NULL with why on refusal. */
struct quarantine *quarantine_parse(const void *payload, size_t len, char *why, size_t why_len);
void quarantine_free(struct quarantine *q);
int quarantine_has(const struct quarantine *q, const char *asset);
size_t quarantine_count(const struct quarantine *q);

#endif
