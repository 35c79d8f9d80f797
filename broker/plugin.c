/*
 * broker: mqpki_mosquitto.so, the Mosquitto 2.0 plugin (DESIGN.md 6). It authenticates clients
 * by their certificate (refusing revoked or held serials), confines them to their topics,
 * consumes the signed CRL feed, disconnects clients whose certificate became revoked, and
 * publishes security events for mqpkid. Mosquitto runs all callbacks on its one main thread.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <openssl/bn.h>
#include <openssl/x509v3.h>

#include "broker.h"
#include "common.h"
#include "proto.h"

#define EXPORT  __attribute__((visibility("default")))
#define WHY_MAX 256
/* Events: ring capacity by default, batches sent per tick at most (the rest wait or drop). */
#define EVENTS_MAX_DEFAULT  4096
#define EVENTS_BATCHES_TICK 8
#define EVENTS_GATHER_MS    20
#define STATS_EVERY_DEFAULT 60
/* Denial events a second per client: the topic-scan detector's default (10 topics) in one. */
#define DENIALS_PER_S_DEFAULT 20
#define DENY_TOPICS_MAX       64 /* distinct denied topics sent per client a second, at most */

enum { KICK_REVOKED = 1, KICK_ISSUER = 2 };
#define RETIRED_MAX 64 /* retired issuing CA keys remembered */

/* A connected, authenticated client. Keyed by its context pointer: client ids are chosen by
 * clients and may be taken over, a context is not. */
struct client {
    const struct mosquitto *ctx;
    char *client_id;
    char asset[PROTO_ASSET_ID_MAX + 1];
    char serial_hex[PROTO_SERIAL_HEX_MAX + 1];
    unsigned char serial[PROTO_SERIAL_KEY_LEN];
    unsigned char issuer[PROTO_ISSUER_LEN];
    unsigned char akid[PROTO_AKID_MAX]; /* its issuer's key identifier (akid_len 0: none) */
    size_t akid_len;
    char address[BROKER_ADDR_MAX];
    int64_t messages, bytes;               /* since the last stats event */
    int64_t deny_second;                   /* denial events: the second being counted, */
    int deny_count;                        /* events sent in it, */
    uint32_t deny_topics[DENY_TOPICS_MAX]; /* and the hashes of their topics */
    int64_t denials_dropped;               /* and denials left out since the last stats event */
    int kick;             /* KICK_REVOKED, KICK_ISSUER: disconnect on the next tick */
    struct client *next;  /* same context bucket */
    struct client *anext; /* same asset bucket: takeovers and shared certificates */
};

struct plugin {
    mosquitto_plugin_id_t *id;
    STACK_OF(X509) * cas;     /* the issuing CAs trusted (the CA file's, then the feed's list) */
    STACK_OF(X509) * crl_cas; /* the current generation alone (the list's first), once a list
                                 came; else cas */
    STACK_OF(X509) * roots;   /* the roots of plugin_opt_ca_file: what certifies a new issuing CA */
    int check_issuer;         /* issuing CAs known: a client's issuer key must be one of them */
    int from_list;            /* cas came from a list (the feed's or state/issuers.pem) */
    int current_crl;          /* a CRL of the current generation was taken: from then on the
                                 feed's CRLs must be its (crl_cas), before that any of cas */
    /* Key identifiers of issuing CA generations a list retired: their certificates are refused
     * (state/retired-keys). */
    unsigned char retired[RETIRED_MAX][PROTO_AKID_MAX];
    size_t retired_len[RETIRED_MAX], n_retired;
    struct revset *rev;
    struct acl *acl;
    char *state_dir;
    char service_id[PROTO_ASSET_ID_MAX + 1];
    char broker_name[PROTO_ASSET_ID_MAX + 1];
    char events_topic[PROTO_TOPIC_MAX];
    int fail_closed;
    struct crlload *loader;  /* large full CRLs, off this thread */
    struct proto_crl_notice notice; /* the last notice handed to the loader */
    unsigned char *deferred; /* a delta CRL waiting for its base (loading, or not yet here) */
    size_t deferred_len;
    int64_t deferred_number;
    struct client **bucket, **abucket; /* by context, by asset; n_buckets each */
    size_t n_buckets, n_clients, pending_kicks;
    struct evring *ev;       /* NULL when events are off (plugin_opt_events false) */
    double events_sent_ms;   /* mono_ms of the last batch sent */
    size_t events_max;       /* plugin_opt_events_max */
    int64_t stats_every;     /* plugin_opt_stats_every, seconds; 0 off */
    int denials_per_s;       /* plugin_opt_denials_per_s: denial events per client a second */
    int64_t stats_next;      /* when the next per-asset counters go out */
    struct quarantine *quar; /* the newest good quarantine list, NULL when none */
    int events_off;          /* plugin_opt_events false */
    int64_t log_second;      /* ACL denial log lines: the second being counted, */
    int log_count;           /* lines logged in it, */
    long log_suppressed;     /* and lines left out of it */
};

static size_t bucket_of(const struct plugin *pl, const struct mosquitto *ctx)
{
    uintptr_t p = (uintptr_t)ctx;
    return (size_t)((p >> 4) ^ (p >> 12)) & (pl->n_buckets - 1);
}

/* FNV-1a of an asset id. */
static size_t abucket_of(const struct plugin *pl, const char *asset)
{
    uint32_t h = 2166136261u;

    for (const unsigned char *p = (const unsigned char *)asset; *p != '\0'; p++)
        h = (h ^ *p) * 16777619u;
    return (size_t)h & (pl->n_buckets - 1);
}

static void aindex_remove(struct plugin *pl, struct client *c)
{
    struct client **pp = &pl->abucket[abucket_of(pl, c->asset)];

    for (; *pp != NULL; pp = &(*pp)->anext) {
        if (*pp == c) {
            *pp = c->anext;
            c->anext = NULL;
            return;
        }
    }
}

static void client_free(struct client *c)
{
    if (c == NULL)
        return;
    free(c->client_id);
    free(c);
}

static struct client *client_find(struct plugin *pl, const struct mosquitto *ctx)
{
    for (struct client *c = pl->bucket[bucket_of(pl, ctx)]; c != NULL; c = c->next)
        if (c->ctx == ctx)
            return c;
    return NULL;
}

static struct client *client_take(struct plugin *pl, const struct mosquitto *ctx)
{
    struct client **pp = &pl->bucket[bucket_of(pl, ctx)], *c;

    for (; (c = *pp) != NULL; pp = &c->next) {
        if (c->ctx == ctx) {
            *pp = c->next;
            aindex_remove(pl, c);
            pl->n_clients--;
            if (c->kick)
                pl->pending_kicks--;
            c->next = NULL;
            return c;
        }
    }
    return NULL;
}

static int client_put(struct plugin *pl, struct client *c)
{
    size_t b;

    client_free(client_take(pl, c->ctx));
    /* Keep chains short: double the buckets when clients outnumber them twice. */
    if (pl->n_clients + 1 > 2 * pl->n_buckets) {
        size_t n = pl->n_buckets * 2, old_n = pl->n_buckets;
        struct client **nb = calloc(n, sizeof(*nb)), **na = calloc(n, sizeof(*na));
        struct client **ob = pl->bucket;
        if (nb != NULL && na != NULL) {
            free(pl->abucket);
            pl->bucket = nb;
            pl->abucket = na;
            pl->n_buckets = n;
            nb = na = NULL;
            for (size_t i = 0; i < old_n; i++) {
                struct client *x = ob[i], *next;
                for (; x != NULL; x = next) {
                    next = x->next;
                    b = bucket_of(pl, x->ctx);
                    x->next = pl->bucket[b];
                    pl->bucket[b] = x;
                    b = abucket_of(pl, x->asset);
                    x->anext = pl->abucket[b];
                    pl->abucket[b] = x;
                }
            }
            free(ob);
        }
        free(nb);
        free(na);
    }
    b = bucket_of(pl, c->ctx);
    c->next = pl->bucket[b];
    pl->bucket[b] = c;
    b = abucket_of(pl, c->asset);
    c->anext = pl->abucket[b];
    pl->abucket[b] = c;
    pl->n_clients++;
    return 0;
}

/*
 * Queues one security event in the ring (docs/detect.md); the tick sends it in a batch on
 * PROTO_TOPIC_EVENTS + BROKER. Returns the record for more fields, or NULL when events are off
 * or the ring is full (counted: the batch after says how many were dropped).
 */
static struct broker_event *emit(struct plugin *pl, const char *type, const char *asset,
                                 const char *client_id, const char *address, const char *serial,
                                 const char *reason)
{
    struct broker_event *e = evring_push(pl->ev, type);

    if (e == NULL)
        return NULL;
    BROKER_EVENT_SET(e->asset, asset);
    BROKER_EVENT_SET(e->client_id, client_id);
    BROKER_EVENT_SET(e->address, address);
    BROKER_EVENT_SET(e->serial, serial);
    BROKER_EVENT_SET(e->reason, reason);
    e->abnormal = -1;
    return e;
}

/* Milliseconds on a monotonic clock, to pace event batches and log what CRL work costs the broker's
 * thread. */
static double mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Sends what the ring holds, a few batches a tick: a flood waits in (or drops from) the ring
 * instead of growing the broker's queues. Ticks come with every network event: under load a
 * batch waits until EVENTS_GATHER_MS after the last one or a full batch, so that a few hundred
 * connects a second cost mqpkid a few messages and commits, not one each. */
static void flush_events(struct plugin *pl)
{
    double now = mono_ms();

    if (evring_count(pl->ev) < EVRING_BATCH_MAX && now - pl->events_sent_ms < EVENTS_GATHER_MS)
        return;
    for (int i = 0; i < EVENTS_BATCHES_TICK; i++) {
        char *text = evring_take_batch(pl->ev, pl->broker_name, EVRING_BATCH_MAX);
        if (text == NULL)
            break;
        pl->events_sent_ms = now;
        if (mosquitto_broker_publish_copy(NULL, pl->events_topic, (int)strlen(text), text, 1, false,
                                          NULL) != MOSQ_ERR_SUCCESS)
            mosquitto_log_printf(MOSQ_LOG_WARNING, "mqpki: cannot publish security events");
        free(text);
    }
}

static void emit_stats_one(struct plugin *pl, struct client *c);

/* Per-asset counters of every connected client with traffic since the last ones. */
static void emit_stats(struct plugin *pl)
{
    for (size_t b = 0; b < pl->n_buckets; b++) {
        for (struct client *c = pl->bucket[b]; c != NULL; c = c->next) {
            if (c->messages > 0 || c->denials_dropped > 0)
                emit_stats_one(pl, c);
        }
    }
}

/* Tells mqpkid which CRLs this broker enforces now (`mqpki crl`, `mqpki revoke` run again). */
static void emit_crl_held(struct plugin *pl)
{
    char when[32];
    json_t *v;
    char *text = NULL;

    mqpki_time_str(mqpki_now(), when);
    v = json_pack("{s:s, s:I, s:I, s:I, s:s, s:s}", "type", "crl", "full",
                  (json_int_t)revset_full_number(pl->rev), "delta",
                  (json_int_t)revset_delta_number(pl->rev), "serials",
                  (json_int_t)revset_count(pl->rev), "broker", pl->broker_name, "time", when);
    if (v == NULL || (text = json_dumps(v, JSON_COMPACT)) == NULL)
        goto out;
    if (mosquitto_broker_publish_copy(NULL, pl->events_topic, (int)strlen(text), text, 1, false,
                                      NULL) != MOSQ_ERR_SUCCESS)
        mosquitto_log_printf(MOSQ_LOG_WARNING, "mqpki: cannot publish a crl event");
out:
    free(text);
    json_decref(v);
}

/* The serial for log lines and events; "?" for one that is not ours to print. */
static void serial_hex(X509 *cert, char out[PROTO_SERIAL_HEX_MAX + 1])
{
    if (proto_serial_hex(X509_get0_serialNumber(cert), out) != 0)
        snprintf(out, PROTO_SERIAL_HEX_MAX + 1, "?");
}

static int crl_fresh(const struct plugin *pl)
{
    int64_t next = revset_next_update(pl->rev);

    /* A CRL without nextUpdate says nothing about its freshness: fail_closed treats it as
     * stale (ours always carry one). */
    return revset_full_number(pl->rev) >= 0 && next != 0 && next > mqpki_now();
}

/*
 * A device's MQTT client id is its asset id, or starts with "ASSET:" (several connections of one
 * asset; ':' cannot occur in an asset id, so no asset's prefix is another's id). Otherwise any
 * device could connect under another's client id and, by MQTT's session takeover, throw that
 * device off the broker.
 */
MQPKI_STATIC int client_id_allowed(const char *cid, const char *asset)
{
    size_t n = strlen(asset);

    return cid != NULL && strncmp(cid, asset, n) == 0 && (cid[n] == '\0' || cid[n] == ':');
}

/*
 * What a new connection shares with the asset's live ones: the same client id (MQTT's session
 * takeover: the old one is about to be thrown off) or, from another address, the same
 * certificate (two holders of one key, or one device behind two networks).
 */
static void note_twins(struct plugin *pl, const struct client *c)
{
    for (struct client *o = pl->abucket[abucket_of(pl, c->asset)]; o != NULL; o = o->anext) {
        struct broker_event *e;
        if (o->ctx == c->ctx || strcmp(o->asset, c->asset) != 0)
            continue;
        if (strcmp(o->client_id, c->client_id) == 0) {
            mosquitto_log_printf(MOSQ_LOG_NOTICE,
                                 "mqpki: %s: session takeover of client %.100s (from %s, "
                                 "was %s)",
                                 c->asset, c->client_id, c->address, o->address);
            if ((e = emit(pl, "takeover", c->asset, c->client_id, c->address, c->serial_hex,
                          NULL)) != NULL)
                BROKER_EVENT_SET(e->other_address, o->address);
        } else if (memcmp(o->serial, c->serial, sizeof(c->serial)) == 0 &&
                   strcmp(o->address, c->address) != 0) {
            mosquitto_log_printf(MOSQ_LOG_NOTICE,
                                 "mqpki: %s: certificate %s connected from %s and %s at once",
                                 c->asset, c->serial_hex, c->address, o->address);
            if ((e = emit(pl, "cert_shared", c->asset, c->client_id, c->address, c->serial_hex,
                          NULL)) != NULL)
                BROKER_EVENT_SET(e->other_address, o->address);
        }
    }
}

static int issuer_ok(const struct plugin *pl, const ASN1_OCTET_STRING *aki, int is_service);

static int on_basic_auth(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_basic_auth *ed = event_data;
    struct plugin *pl = userdata;
    const char *cid = mosquitto_client_id(ed->client);
    const char *addr = mosquitto_client_address(ed->client);
    struct client *c = NULL;
    X509 *cert = mosquitto_client_certificate(ed->client);
    char asset[PROTO_ASSET_ID_MAX + 1] = "", hex[PROTO_SERIAL_HEX_MAX + 1] = "";
    unsigned char key[PROTO_SERIAL_KEY_LEN], issuer[PROTO_ISSUER_LEN];
    int rc = MOSQ_ERR_AUTH, is_service;

    if (cert == NULL) {
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "mqpki: client from %s refused: no certificate",
                             addr ? addr : "?");
        emit(pl, "connect_refused", NULL, cid, addr, NULL, "no_certificate");
        goto out;
    }
    serial_hex(cert, hex);
    if (!proto_cert_asset_id(cert, asset)) {
        mosquitto_log_printf(MOSQ_LOG_NOTICE,
                             "mqpki: certificate %s refused: no asset id "
                             "(SAN " PROTO_ASSET_URN "ID)",
                             hex);
        emit(pl, "connect_refused", NULL, cid, addr, hex, "no_asset");
        goto out;
    }
    proto_serial_key(X509_get0_serialNumber(cert), key);
    if (proto_name_digest(X509_get_issuer_name(cert), issuer) != 0)
        goto out;
    is_service = strcmp(asset, pl->service_id) == 0;
    /* An issuing CA generation retired: its certificates are refused even where Mosquitto's CA
     * file still trusts it (a generation this broker has not heard of yet passes: the root it
     * trusts certified it). */
    if (!issuer_ok(pl, X509_get0_authority_key_id(cert), is_service)) {
        mosquitto_log_printf(MOSQ_LOG_NOTICE,
                             "mqpki: %s (certificate %s) refused: its issuing CA is not trusted "
                             "any more (retired)",
                             asset, hex);
        emit(pl, "connect_refused", asset, cid, addr, hex, "issuer_retired");
        goto out;
    }
    if (revset_is_revoked(pl->rev, issuer, key)) {
        mosquitto_log_printf(MOSQ_LOG_NOTICE,
                             "mqpki: %s (certificate %s) refused: "
                             "certificate revoked or on hold",
                             asset, hex);
        emit(pl, "connect_refused", asset, cid, addr, hex, "revoked_or_held");
        goto out;
    }
    if (!is_service && !client_id_allowed(cid, asset)) {
        mosquitto_log_printf(MOSQ_LOG_NOTICE,
                             "mqpki: %s refused: client id '%.64s' is not its own (use '%s' or "
                             "'%s:...')",
                             asset, cid ? cid : "", asset, asset);
        emit(pl, "connect_refused", asset, cid, addr, hex, "client_id");
        goto out;
    }
    /* The service must get in to deliver the CRL that fail_closed waits for. */
    if (pl->fail_closed && !is_service && !crl_fresh(pl)) {
        mosquitto_log_printf(MOSQ_LOG_NOTICE,
                             "mqpki: %s refused: fail_closed and no fresh "
                             "CRL held",
                             asset);
        emit(pl, "connect_refused", asset, cid, addr, hex, "crl_stale");
        goto out;
    }
    if ((c = calloc(1, sizeof(*c))) == NULL ||
        (c->client_id = strdup(cid != NULL ? cid : "")) == NULL) {
        rc = MOSQ_ERR_NOMEM;
        goto out;
    }
    /* Authorization (ACL_CHECK) goes by this name, not by anything the client sent. */
    if (mosquitto_set_username(ed->client, asset) != MOSQ_ERR_SUCCESS) {
        rc = MOSQ_ERR_NOMEM;
        goto out;
    }
    c->ctx = ed->client;
    snprintf(c->asset, sizeof(c->asset), "%s", asset);
    snprintf(c->serial_hex, sizeof(c->serial_hex), "%s", hex);
    BROKER_EVENT_SET(c->address, addr);
    memcpy(c->serial, key, sizeof(key));
    memcpy(c->issuer, issuer, sizeof(issuer));
    {
        const ASN1_OCTET_STRING *aki = X509_get0_authority_key_id(cert);
        if (aki != NULL && aki->length > 0 && (size_t)aki->length <= sizeof(c->akid)) {
            memcpy(c->akid, aki->data, (size_t)aki->length);
            c->akid_len = (size_t)aki->length;
        }
    }
    if (!is_service)
        note_twins(pl, c);
    client_put(pl, c);
    c = NULL;
    emit(pl, "connect", asset, cid, addr, hex, NULL);
    rc = MOSQ_ERR_SUCCESS;
out:
    client_free(c);
    X509_free(cert);
    return rc;
}

static void emit_stats_one(struct plugin *pl, struct client *c)
{
    struct broker_event *e =
        emit(pl, "stats", c->asset, c->client_id, c->address, c->serial_hex, NULL);

    if (e == NULL)
        return;
    e->has_counts = 1;
    e->messages = c->messages;
    e->bytes = c->bytes;
    e->denials_dropped = c->denials_dropped;
    c->messages = c->bytes = c->denials_dropped = 0;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_disconnect *ed = event_data;
    struct plugin *pl = userdata;
    struct client *c = client_take(pl, ed->client);

    if (c != NULL) {
        const char *why;
        struct broker_event *e;
        switch (ed->reason) {
        case MOSQ_ERR_SUCCESS: why = "clean"; break;
        case MOSQ_ERR_KEEPALIVE: why = "keepalive"; break;
        case MOSQ_ERR_CONN_LOST: why = "socket_error"; break;
        case MOSQ_ERR_PROTOCOL: why = "protocol"; break;
        case MOSQ_ERR_ADMINISTRATIVE_ACTION: why = "kicked"; break;
        case MOSQ_ERR_OVERSIZE_PACKET: why = "oversize"; break;
        default: why = NULL; break;
        }
        if (c->messages > 0 || c->denials_dropped > 0)
            emit_stats_one(pl, c);
        e = emit(pl, "disconnect", c->asset, c->client_id, c->address, c->serial_hex, why);
        /* Anything but a DISCONNECT packet publishes the client's will, if it set one. Some
         * Mosquitto versions pass no reason (-1): then the event says nothing about it. */
        if (e != NULL && why != NULL)
            e->abnormal = ed->reason != MOSQ_ERR_SUCCESS;
        else if (e != NULL)
            snprintf(e->reason, sizeof(e->reason), "code %d", ed->reason);
        client_free(c);
    }
    return MOSQ_ERR_SUCCESS;
}

/* At most ACL_LOG_PER_S denial lines a second (a flood must not flood the log), then one line
 * saying how many were left out; the events still count every one. */
#define ACL_LOG_PER_S 10
static int acl_log_allowed(struct plugin *pl)
{
    int64_t now = mqpki_now();

    if (now != pl->log_second) {
        if (pl->log_suppressed > 0)
            mosquitto_log_printf(MOSQ_LOG_NOTICE, "mqpki: %ld more ACL denials not logged",
                                 pl->log_suppressed);
        pl->log_second = now;
        pl->log_count = 0;
        pl->log_suppressed = 0;
    }
    if (pl->log_count < ACL_LOG_PER_S) {
        pl->log_count++;
        return 1;
    }
    pl->log_suppressed++;
    return 0;
}

/*
 * Denial events of a client go into the ring for at most plugin_opt_denials_per_s (and 64)
 * distinct topics a second; a topic already sent in that second, and any topic over the
 * budget, is counted and reported in the client's next stats event (denials_dropped). One
 * client's flood of denied publishes then costs the broker a lookup and a counter per denial,
 * not a ring record, a share of a JSON batch and a row in mqpkid's store; and it cannot fill
 * the ring that carries every other client's events. Repeating one topic cannot spend the
 * budget that a scan's new topics need, and a wildcard subscription always goes out: each is
 * what the topic-scan detector looks for.
 */
static int denial_budget(struct plugin *pl, const struct mosquitto *client, const char *topic,
                         int wildcard)
{
    struct client *c = client_find(pl, client);
    uint32_t h = 2166136261u;
    int64_t now;

    if (c == NULL || pl->ev == NULL || wildcard)
        return 1; /* a wildcard subscription outside the subtree is an alert on its own */
    if ((now = mqpki_now()) != c->deny_second) {
        c->deny_second = now;
        c->deny_count = 0;
    }
    for (const char *s = topic != NULL ? topic : ""; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    /* The budget buys distinct topics: the same topic again adds nothing to a scan. */
    for (int i = 0; i < c->deny_count; i++)
        if (c->deny_topics[i] == h)
            goto drop;
    if (c->deny_count < pl->denials_per_s && c->deny_count < DENY_TOPICS_MAX) {
        c->deny_topics[c->deny_count++] = h;
        return 1;
    }
drop:
    c->denials_dropped++;
    return 0;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_acl_check *ed = event_data;
    struct plugin *pl = userdata;
    const char *user = mosquitto_client_username(ed->client);
    int access = 0, rc = MOSQ_ERR_ACL_DENIED;

    switch (ed->access) {
    case MOSQ_ACL_READ: access = ACL_READ; break;
    case MOSQ_ACL_WRITE: access = ACL_WRITE; break;
    case MOSQ_ACL_SUBSCRIBE: access = ACL_SUBSCRIBE; break;
    case MOSQ_ACL_UNSUBSCRIBE: access = ACL_UNSUBSCRIBE; break;
    default: goto out;
    }
    /* A quarantined asset may only publish to fleet/ID/quarantine until released. */
    if (user != NULL && quarantine_has(pl->quar, user)) {
        char own[PROTO_TOPIC_MAX];
        if (access == ACL_UNSUBSCRIBE ||
            (access == ACL_WRITE && ed->topic != NULL &&
             snprintf(own, sizeof(own), "fleet/%s" PROTO_QUARANTINE_SUFFIX, user) <
                 (int)sizeof(own) &&
             strcmp(ed->topic, own) == 0))
            rc = MOSQ_ERR_SUCCESS;
        else if (access != ACL_READ && denial_budget(pl, ed->client, ed->topic, 0)) {
            struct broker_event *e =
                emit(pl, "quarantine_denied", user, mosquitto_client_id(ed->client),
                     mosquitto_client_address(ed->client), NULL,
                     access == ACL_WRITE ? "publish" : "subscribe");
            if (e != NULL)
                BROKER_EVENT_SET(e->topic, ed->topic);
        }
        goto out;
    }
    if (user != NULL && ed->topic != NULL &&
        acl_allowed(pl->acl, user, strcmp(user, pl->service_id) == 0, access, ed->topic)) {
        rc = MOSQ_ERR_SUCCESS;
        goto out;
    }
    /* Reads are checked per delivered message: log them quietly, report only active attempts. */
    if (access == ACL_READ) {
        mosquitto_log_printf(MOSQ_LOG_DEBUG, "mqpki: %s may not read %s", user ? user : "?",
                             ed->topic ? ed->topic : "?");
        goto out;
    }
    if (acl_log_allowed(pl))
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "mqpki: acl denied: %s may not %s %.200s",
                             user ? user : "?", access == ACL_WRITE ? "publish on" : "subscribe to",
                             ed->topic ? ed->topic : "?");
    if (denial_budget(pl, ed->client, ed->topic,
                      access == ACL_SUBSCRIBE && ed->topic != NULL &&
                          strpbrk(ed->topic, "+#") != NULL)) {
        struct broker_event *e = emit(pl, "acl_denied", user, mosquitto_client_id(ed->client),
                                      mosquitto_client_address(ed->client), NULL,
                                      access == ACL_WRITE ? "publish" : "subscribe");
        if (e != NULL) {
            BROKER_EVENT_SET(e->topic, ed->topic);
            e->wildcard =
                access == ACL_SUBSCRIBE && ed->topic != NULL && strpbrk(ed->topic, "+#") != NULL;
        }
    }
out:
    return rc;
}

static void persist(struct plugin *pl, const char *name, const void *der, size_t len)
{
    char path[4096];

    if (pl->state_dir == NULL)
        return;
    if (mqpki_path(path, sizeof(path), "%s/%s", pl->state_dir, name) != MQPKI_OK ||
        mqpki_file_write_atomic(path, der, len, 0600) != MQPKI_OK)
        mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: cannot keep %s in %s: %s", name, pl->state_dir,
                             mqpki_err_detail(MQPKI_ERR_IO));
}

/* Marks every connected client whose certificate the held CRLs now revoke. */
static size_t mark_revoked(struct plugin *pl)
{
    size_t n = 0;

    for (size_t b = 0; b < pl->n_buckets; b++) {
        for (struct client *c = pl->bucket[b]; c != NULL; c = c->next) {
            if (c->kick || !revset_is_revoked(pl->rev, c->issuer, c->serial))
                continue;
            c->kick = KICK_REVOKED;
            pl->pending_kicks++;
            n++;
        }
    }
    return n;
}

/* Full CRLs from this size on are loaded by the worker (crlload), off Mosquitto's thread. */
#define CRL_ASYNC_MIN (256u * 1024u)

/* Puts next in force: the held CRLs are replaced, clients they revoke are marked for the kick. */
static void install(struct plugin *pl, struct revset *next, const struct proto_crl_info *info,
                    int persisted)
{
    int delta = info->base >= 0;
    int64_t number = info->number;
    const ASN1_OCTET_STRING *ski =
        pl->from_list ? X509_get0_subject_key_id(sk_X509_value(pl->crl_cas, 0)) : NULL;

    /* The first CRL the current generation signed: older keys' CRLs are refused from now on. */
    if (ski != NULL && !pl->current_crl && (size_t)ski->length == info->akid_len &&
        memcmp(ski->data, info->akid, info->akid_len) == 0) {
        pl->current_crl = 1;
        if (pl->loader != NULL)
            (void)crlload_set_cas(pl->loader, pl->crl_cas);
    }

    /* A delta the new full CRL no longer extends must not come back at restart. */
    if (!delta && persisted && revset_delta_number(next) < 0 && pl->state_dir != NULL) {
        char path[4096];
        if (mqpki_path(path, sizeof(path), "%s/delta.der", pl->state_dir) == MQPKI_OK)
            (void)unlink(path);
    }
    revset_free(pl->rev);
    pl->rev = next;
    if (pl->loader != NULL)
        crlload_held(pl->loader, revset_full_number(pl->rev));
    mosquitto_log_printf(MOSQ_LOG_NOTICE,
                         "mqpki: %s CRL %lld accepted: %zu serials revoked or "
                         "on hold; %zu connected clients to disconnect",
                         delta ? "delta" : "full", (long long)number, revset_count(pl->rev),
                         mark_revoked(pl));
}

/* Keeps a delta CRL whose base is not in force yet (loading, or still on its way), for when it
 * is; a newer one replaces it, an older one is ignored (1). */
static int defer_delta(struct plugin *pl, const unsigned char *der, size_t len, int64_t number)
{
    unsigned char *copy;

    if (pl->deferred != NULL && pl->deferred_number >= number)
        return 1;
    if ((copy = malloc(len)) == NULL)
        return -1;
    memcpy(copy, der, len);
    free(pl->deferred);
    pl->deferred = copy;
    pl->deferred_len = len;
    pl->deferred_number = number;
    return 0;
}

static int apply_crl(struct plugin *pl, const unsigned char *der, size_t len, int want_delta,
                     int persist_it, char *why, size_t why_len);

/* After a full CRL is put in force: the delta that waited for it, unless its base is still to
 * come (it waits on). */
static void retry_deferred(struct plugin *pl)
{
    unsigned char *der = pl->deferred;
    size_t len = pl->deferred_len;
    char why[WHY_MAX] = "";

    /* Also while another full CRL loads: apply_crl orders it against that one (it waits on,
     * ahead again, when its base is the one loading). */
    if (der == NULL)
        return;
    pl->deferred = NULL; /* apply_crl may defer it again: a copy of its own */
    pl->deferred_len = 0;
    pl->deferred_number = 0;
    if (apply_crl(pl, der, len, 1, 1, why, sizeof(why)) != 0)
        mosquitto_log_printf(MOSQ_LOG_WARNING, "mqpki: %s ignored: %s", PROTO_TOPIC_CRL_DELTA, why);
    free(der);
}

/*
 * A full CRL announced by a notice (proto_crl_notice): newer than the one held or loading, it
 * goes to the worker, which fetches it from the notice's URL (mqpkid's HTTPS, checked with
 * the roots and issuing CAs this broker trusts) and loads it as any large full CRL; nothing of
 * the CRL passes through this thread. 0 when taken (or not newer), -1 refused.
 */
static int apply_notice(struct plugin *pl, const unsigned char *payload, size_t len, int persist_it,
                        char *why, size_t why_len)
{
    struct proto_crl_notice n;
    int64_t held = revset_full_number(pl->rev), loading;
    char path[4096], *pem = NULL;
    size_t pem_len = 0;
    int keep, rc;

    if (proto_crl_notice_parse(payload, len, &n, why, why_len) != 0)
        return -1;
    if (pl->loader == NULL) {
        snprintf(why, why_len, "CRL %lld: no worker to fetch it", (long long)n.number);
        return -1;
    }
    loading = crlload_pending(pl->loader);
    if (n.number < held) {
        snprintf(why, why_len, "CRL %lld refused: CRL number lower than held %lld (RFC 5280 5.2.3)",
                 (long long)n.number, (long long)held);
        return -1;
    }
    if (n.number < loading) {
        snprintf(why, why_len, "CRL %lld: older than full CRL %lld being fetched",
                 (long long)n.number, (long long)loading);
        return -1;
    }
    /* Held, or the notice being fetched delivered again. Another notice of that number (a
     * replica's URL) or a newer one replaces the fetch still running. */
    if (n.number == held ||
        (loading > held && n.number == pl->notice.number && n.size == pl->notice.size &&
         memcmp(n.sha256, pl->notice.sha256, sizeof(n.sha256)) == 0 &&
         strcmp(n.url, pl->notice.url) == 0))
        return 0;
    if (proto_certs_pem(pl->roots, pl->cas, &pem, &pem_len) != 0) {
        snprintf(why, why_len, "CRL %lld: out of memory", (long long)n.number);
        return -1;
    }
    keep = persist_it && pl->state_dir != NULL &&
           mqpki_path(path, sizeof(path), "%s/full.der", pl->state_dir) == MQPKI_OK;
    rc = crlload_fetch(pl->loader, &n, pem, pem_len, keep ? path : NULL);
    free(pem);
    if (rc != 0) {
        snprintf(why, why_len, "CRL %lld: out of memory", (long long)n.number);
        return -1;
    }
    pl->notice = n;
    mosquitto_log_printf(MOSQ_LOG_NOTICE,
                         "mqpki: full CRL %lld (%zu bytes) announced: fetching it from %.200s off "
                         "the broker's thread",
                         (long long)n.number, n.size, n.url);
    return 0;
}

/*
 * Checks and applies one CRL. Returns 0 when accepted (or the one held, or handed to the
 * worker), -1 when refused (`why` says why). The CRL is read from its DER (proto_crl_der_*):
 * no X509_CRL of its entries is ever built. A large full CRL gets only the cheap checks here
 * (structure, issuer, CRL number, kind); its signature and entries are the worker's, and it is
 * put in force on a later tick (apply_loaded). One with the number held (a retained copy
 * re-delivered) is taken as the one held without hashing it on this thread.
 */
static int apply_crl(struct plugin *pl, const unsigned char *der, size_t len, int want_delta,
                     int persist_it, char *why, size_t why_len)
{
    struct proto_crl_der d;
    struct proto_crl_info info;
    struct revset *next = NULL;
    EVP_PKEY *key = NULL;
    enum proto_crl_order order;
    int64_t held_full = revset_full_number(pl->rev), loading = -1;
    double t0 = mono_ms();
    struct revpart *part = NULL;
    int async = !want_delta && len >= CRL_ASYNC_MIN && pl->loader != NULL, rc = -1;

    memset(&d, 0, sizeof(d));
    if (!want_delta && proto_crl_notice_is(der, len))
        return apply_notice(pl, der, len, persist_it, why, why_len);
    if (proto_crl_der_split(der, len, &d, why, why_len) != 0 ||
        proto_crl_der_check(&d, persist_it && pl->current_crl ? pl->crl_cas : pl->cas, &key, &info,
                            why, why_len) != 0)
        goto out;
    if ((info.base >= 0) != want_delta) {
        snprintf(why, why_len, "CRL %lld: a %s CRL on the %s topic", (long long)info.number,
                 info.base >= 0 ? "delta" : "full", want_delta ? "delta" : "full");
        goto out;
    }
    /* Small CRLs and deltas: the signature first, as every check that follows trusts it. */
    if (!async && proto_crl_der_verify_sig(&d, key, why, why_len) != 0)
        goto out;
    if (pl->loader != NULL)
        loading = crlload_pending(pl->loader);
    /* A full CRL being loaded counts as held: the same one re-delivered is not loaded twice. */
    order = proto_crl_order(&info, !want_delta && loading > held_full ? loading : held_full,
                            revset_delta_number(pl->rev), why, why_len);
    /* A delta whose base is not in force yet: the worker is loading it, or it is still on its
     * way (another link, another replica's feed). It waits for it. */
    if (order == PROTO_CRL_REFUSE && want_delta && info.base > held_full &&
        info.number > info.base && info.number > revset_delta_number(pl->rev) &&
        (loading < 0 || info.number > loading)) {
        rc = defer_delta(pl, der, len, info.number);
        if (rc < 0) {
            snprintf(why, why_len, "CRL %lld: out of memory", (long long)info.number);
            goto out;
        }
        if (rc > 0) { /* a newer one waits already: this one must not become the retained copy */
            snprintf(why, why_len,
                     "delta CRL %lld refused: delta CRL %lld waits for its base already",
                     (long long)info.number, (long long)pl->deferred_number);
            rc = -1;
            goto out;
        }
        mosquitto_log_printf(MOSQ_LOG_INFO,
                             "mqpki: delta CRL %lld waits for its base, full CRL %lld%s",
                             (long long)info.number, (long long)info.base,
                             info.base <= loading ? ", being loaded" : "");
        /* Its revocations count at once (signature verified above): a kick never waits for a
         * million entries to load. Applied whole when its base is in force (apply_loaded). */
        if (revpart_from_der(&d, &info, &part, why, why_len) == 0 &&
            revset_with_ahead(pl->rev, part, &next) == 0) {
            part = NULL;
            revset_free(pl->rev);
            pl->rev = next;
            next = NULL;
            mosquitto_log_printf(MOSQ_LOG_NOTICE,
                                 "mqpki: delta CRL %lld ahead of its base: %zu connected clients "
                                 "to disconnect",
                                 (long long)info.number, mark_revoked(pl));
        }
        why[0] = '\0';
        goto out;
    }
    if (order == PROTO_CRL_REFUSE)
        goto out;
    if (order == PROTO_CRL_SAME) {
        rc = 0;
        goto out;
    }
    if (async) {
        char path[4096];
        int keep = persist_it && pl->state_dir != NULL &&
                   mqpki_path(path, sizeof(path), "%s/full.der", pl->state_dir) == MQPKI_OK;
        if (crlload_submit(pl->loader, der, len, info.number, keep ? path : NULL) != 0) {
            snprintf(why, why_len, "CRL %lld: out of memory", (long long)info.number);
            goto out;
        }
        mosquitto_log_printf(MOSQ_LOG_NOTICE,
                             "mqpki: full CRL %lld (%zu bytes) loading off the broker's thread "
                             "(%.1f ms on it)",
                             (long long)info.number, len, mono_ms() - t0);
        rc = 0;
        goto out;
    }
    if (revpart_from_der(&d, &info, &part, why, why_len) != 0)
        goto out;
    if (revset_with(pl->rev, part, &next) != 0) {
        snprintf(why, why_len, "CRL %lld: out of memory", (long long)info.number);
        goto out;
    }
    part = NULL;
    if (persist_it)
        persist(pl, want_delta ? "delta.der" : "full.der", der, len);
    install(pl, next, &info, persist_it);
    next = NULL;
    rc = 0;
    if (!want_delta)
        retry_deferred(pl);
out:
    revpart_free(part);
    revset_free(next);
    proto_crl_der_clear(&d);
    return rc;
}

/* On the broker's thread: a full CRL the worker finished is put in force (O(1)), then a delta
 * that waited for it. */
static void apply_loaded(struct plugin *pl)
{
    struct revpart *part = NULL;
    struct proto_crl_info info;
    struct revset *next = NULL;
    char why[WHY_MAX] = "";
    double t0;

    if (pl->loader != NULL && crlload_note(pl->loader, why, sizeof(why)))
        mosquitto_log_printf(MOSQ_LOG_WARNING, "mqpki: %s", why);
    why[0] = '\0';
    if (pl->loader == NULL || !crlload_take(pl->loader, &part, &info, why, sizeof(why)))
        return;
    t0 = mono_ms();
    if (part == NULL) {
        mosquitto_log_printf(MOSQ_LOG_WARNING, "mqpki: %s ignored: %s", PROTO_TOPIC_CRL_FULL, why);
    } else if (proto_crl_order(&info, revset_full_number(pl->rev), revset_delta_number(pl->rev),
                               why, sizeof(why)) != PROTO_CRL_ACCEPT) {
        mosquitto_log_printf(MOSQ_LOG_WARNING, "mqpki: loaded full CRL %lld dropped: %s",
                             (long long)info.number, why);
        revpart_free(part);
    } else if (revset_with(pl->rev, part, &next) != 0) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: full CRL %lld: out of memory",
                             (long long)info.number);
        revpart_free(part);
    } else {
        if (why[0] != '\0')
            mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: %s", why);
        install(pl, next, &info, pl->state_dir != NULL && why[0] == '\0');
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "mqpki: full CRL %lld swapped in (%.1f ms)",
                             (long long)info.number, mono_ms() - t0);
    }
    retry_deferred(pl);
    emit_crl_held(pl);
}

static int has_key(STACK_OF(X509) * cas, const ASN1_OCTET_STRING *id)
{
    for (int i = 0; id != NULL && i < sk_X509_num(cas); i++) {
        const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(sk_X509_value(cas, i));
        if (ski != NULL && ASN1_OCTET_STRING_cmp(ski, id) == 0)
            return 1;
    }
    return 0;
}

static int is_retired(const struct plugin *pl, const ASN1_OCTET_STRING *id)
{
    for (size_t i = 0; id != NULL && i < pl->n_retired; i++)
        if (pl->retired_len[i] == (size_t)id->length &&
            memcmp(pl->retired[i], id->data, pl->retired_len[i]) == 0)
            return 1;
    return 0;
}

/*
 * A certificate whose issuer key is aki may be let in once issuing CAs are known: it has a key
 * identifier (without one, the TLS chain was built by name alone), the key is not retired, and
 * it is one of the issuing CAs trusted. The service identity may also come from a generation
 * not heard of yet (the root in Mosquitto's CA file certified it): it brings the list.
 */
static int issuer_ok(const struct plugin *pl, const ASN1_OCTET_STRING *aki, int is_service)
{
    if (!pl->check_issuer)
        return 1;
    if (aki == NULL || aki->length <= 0 || is_retired(pl, aki))
        return 0;
    return is_service || has_key(pl->cas, aki);
}

static int client_issuer_ok(const struct plugin *pl, const struct client *c)
{
    ASN1_OCTET_STRING id;

    id.length = (int)c->akid_len;
    id.data = (unsigned char *)c->akid;
    id.type = V_ASN1_OCTET_STRING;
    id.flags = 0;
    return issuer_ok(pl, c->akid_len > 0 ? &id : NULL, strcmp(c->asset, pl->service_id) == 0);
}

/* Remembers a retired key (once); 0, or -1 when the table is full. */
static int retire_key(struct plugin *pl, const ASN1_OCTET_STRING *ski)
{
    if (ski == NULL || ski->length <= 0 || (size_t)ski->length > PROTO_AKID_MAX)
        return 0;
    for (size_t i = 0; i < pl->n_retired; i++)
        if (pl->retired_len[i] == (size_t)ski->length &&
            memcmp(pl->retired[i], ski->data, (size_t)ski->length) == 0)
            return 0;
    if (pl->n_retired == RETIRED_MAX)
        return -1;
    memcpy(pl->retired[pl->n_retired], ski->data, (size_t)ski->length);
    pl->retired_len[pl->n_retired++] = (size_t)ski->length;
    return 0;
}

/* state/retired-keys: one key identifier in hex a line. */
static void persist_retired(struct plugin *pl)
{
    char *text = malloc(pl->n_retired * (2 * PROTO_AKID_MAX + 1) + 1);
    size_t len = 0;

    if (text == NULL)
        return;
    for (size_t i = 0; i < pl->n_retired; i++) {
        mqpki_hex(pl->retired[i], pl->retired_len[i], text + len);
        len += 2 * pl->retired_len[i];
        text[len++] = '\n';
    }
    persist(pl, "retired-keys", text, len);
    free(text);
}

static int unhex(const char *in, size_t n, unsigned char *out)
{
    for (size_t i = 0; i < n; i++) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            char c = in[2 * i + k];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
            if (d < 0)
                return -1;
            v = v * 16 + d;
        }
        out[i] = (unsigned char)v;
    }
    return 0;
}

static void load_retired(struct plugin *pl)
{
    char path[4096];
    unsigned char *text = NULL, id[PROTO_AKID_MAX];
    size_t len = 0, at = 0;
    int rc;

    if (pl->state_dir == NULL ||
        mqpki_path(path, sizeof(path), "%s/retired-keys", pl->state_dir) != MQPKI_OK)
        return;
    if ((rc = mqpki_file_read(path, RETIRED_MAX * (2 * PROTO_AKID_MAX + 2), &text, &len)) !=
        MQPKI_OK) {
        if (rc != MQPKI_ERR_NOT_FOUND)
            mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: %s: %s: retired issuing CA keys not known",
                                 path, mqpki_err_detail(rc));
        mqpki_err_clear();
        free(text);
        return;
    }
    while (at < len) {
        const char *line = (const char *)text + at;
        size_t n = 0;
        ASN1_OCTET_STRING ski;
        while (at + n < len && text[at + n] != '\n')
            n++;
        at += n + 1;
        if (n == 0)
            continue;
        if (n % 2 != 0 || n / 2 > sizeof(id) || unhex(line, n / 2, id) != 0) {
            mosquitto_log_printf(MOSQ_LOG_ERR,
                                 "mqpki: %s: a line that is no key identifier ignored", path);
            continue;
        }
        ski.length = (int)(n / 2);
        ski.data = id;
        ski.type = V_ASN1_OCTET_STRING;
        ski.flags = 0;
        (void)retire_key(pl, &ski);
    }
    free(text);
    if (pl->n_retired > 0)
        pl->check_issuer = 1;
}

/*
 * The issuing CAs to trust from now on (PROTO_TOPIC_CA_ISSUERS, or the copy kept in
 * state_dir), current generation first: each certified by a root of plugin_opt_ca_file, none
 * retired. The current one verifies the feed's CRLs once it has signed one. A trusted issuing
 * CA of the same name the list leaves out is retired for good: its certificates are refused,
 * and disconnected when connected. Trust only moves forward: a list whose current generation
 * is retired, or is an older one than the current generation of the list in force (a
 * replica's stale ca/, a replay), is refused.
 */
static int apply_issuers(struct plugin *pl, const void *pem, size_t len, int persist_it, char *why,
                         size_t why_len)
{
    STACK_OF(X509) *all = NULL, *cas = NULL, *crl_cas = NULL;
    const ASN1_OCTET_STRING *first, *held = NULL;
    X509 *current = NULL;
    size_t kicks = 0;
    int new_current;

    if (proto_issuers_verify(pem, len, pl->roots, &all, why, why_len) != 0)
        return -1;
    /* A retired key never comes back. */
    if ((cas = sk_X509_new_null()) == NULL || (crl_cas = sk_X509_new_null()) == NULL)
        goto nomem;
    for (int i = 0; i < sk_X509_num(all); i++) {
        X509 *c = sk_X509_value(all, i);
        if (is_retired(pl, X509_get0_subject_key_id(c)))
            continue;
        if (!X509_up_ref(c))
            goto nomem;
        if (!sk_X509_push(cas, c)) {
            X509_free(c);
            goto nomem;
        }
    }
    first = X509_get0_subject_key_id(sk_X509_value(all, 0));
    if (pl->from_list)
        held = X509_get0_subject_key_id(sk_X509_value(pl->crl_cas, 0));
    if (first == NULL) {
        snprintf(why, why_len, "its current issuing CA has no key identifier");
        goto refuse;
    }
    if (sk_X509_num(cas) == 0 || is_retired(pl, first) ||
        (held != NULL && ASN1_OCTET_STRING_cmp(first, held) != 0 && has_key(pl->cas, first))) {
        snprintf(why, why_len,
                 "it is older than the list in force: its current issuing CA is retired or an "
                 "older one than the current (a stale list: bring every replica's ca/ up to "
                 "date)");
        goto refuse;
    }
    current = sk_X509_value(cas, 0);
    if (!X509_up_ref(current))
        goto nomem;
    if (!sk_X509_push(crl_cas, current)) {
        X509_free(current);
        goto nomem;
    }
    new_current = held == NULL || ASN1_OCTET_STRING_cmp(first, held) != 0;
    /* Retired: what the list leaves out of the trusted issuing CAs of its name. */
    for (int i = 0; i < sk_X509_num(pl->cas); i++) {
        X509 *c = sk_X509_value(pl->cas, i);
        const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(c);
        if (X509_NAME_cmp(X509_get_subject_name(c), X509_get_subject_name(current)) != 0 ||
            has_key(cas, ski))
            continue;
        if (retire_key(pl, ski) != 0)
            mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: more than %d retired issuing CA keys",
                                 RETIRED_MAX);
    }
    sk_X509_pop_free(pl->cas, X509_free);
    sk_X509_pop_free(pl->crl_cas, X509_free);
    pl->cas = cas;
    pl->crl_cas = crl_cas;
    cas = crl_cas = NULL;
    pl->check_issuer = 1;
    pl->from_list = 1;
    /* Until the new current generation signs a CRL, those of the older ones still count. */
    if (new_current)
        pl->current_crl = 0;
    if (pl->loader != NULL &&
        crlload_set_cas(pl->loader, pl->current_crl ? pl->crl_cas : pl->cas) != 0)
        mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: out of memory for the CRL loader's issuers");
    for (size_t b = 0; b < pl->n_buckets; b++)
        for (struct client *c = pl->bucket[b]; c != NULL; c = c->next)
            if (!c->kick && !client_issuer_ok(pl, c)) {
                c->kick = KICK_ISSUER;
                pl->pending_kicks++;
                kicks++;
            }
    /* The retired keys first: a crash in between never forgets a retirement. */
    if (persist_it) {
        persist_retired(pl);
        persist(pl, "issuers.pem", pem, len);
    }
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "mqpki: trusting %d issuing CA key%s%s",
                         sk_X509_num(pl->cas), sk_X509_num(pl->cas) == 1 ? "" : "s",
                         kicks > 0 ? "; disconnecting the clients of a retired one" : "");
    sk_X509_pop_free(all, X509_free);
    return 0;
nomem:
    snprintf(why, why_len, "out of memory");
refuse:
    sk_X509_pop_free(all, X509_free);
    sk_X509_pop_free(cas, X509_free);
    sk_X509_pop_free(crl_cas, X509_free);
    return -1;
}

static int on_message(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_message *ed = event_data;
    struct plugin *pl = userdata;
    const char *user = mosquitto_client_username(ed->client);
    char why[WHY_MAX] = "";
    int delta, rc = MOSQ_ERR_SUCCESS;
    struct client *c;

    /* Per-asset counters: O(1) by context. */
    if (pl->stats_every > 0 && (c = client_find(pl, ed->client)) != NULL) {
        c->messages++;
        c->bytes += ed->payloadlen;
    }
    if (ed->topic == NULL || !proto_topic_is_control(ed->topic))
        goto out;
    if (user == NULL || strcmp(user, pl->service_id) != 0) {
        /* The ACL check denies this before; never trust a topic for authenticity anyway. */
        mosquitto_log_printf(MOSQ_LOG_WARNING,
                             "mqpki: publish on %.200s by %s ignored: only the "
                             "service identity publishes under " PROTO_TOPIC_ROOT,
                             ed->topic, user ? user : "an unnamed client");
        rc = MOSQ_ERR_ACL_DENIED;
        goto out;
    }
    if (strcmp(ed->topic, PROTO_TOPIC_QUARANTINE) == 0) {
        struct quarantine *q = quarantine_parse(ed->payload, ed->payloadlen, why, sizeof(why));
        if (q == NULL) {
            mosquitto_log_printf(MOSQ_LOG_WARNING, "mqpki: %s ignored: %s", ed->topic, why);
            rc = MOSQ_ERR_ACL_DENIED;
            goto out;
        }
        quarantine_free(pl->quar);
        pl->quar = q;
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "mqpki: %zu assets under quarantine",
                             quarantine_count(q));
        goto out;
    }
    if (strcmp(ed->topic, PROTO_TOPIC_CA_ISSUERS) == 0) {
        if (apply_issuers(pl, ed->payload, ed->payloadlen, 1, why, sizeof(why)) != 0) {
            mosquitto_log_printf(MOSQ_LOG_WARNING, "mqpki: %s ignored: %s", ed->topic, why);
            rc = MOSQ_ERR_ACL_DENIED;
        }
        goto out;
    }
    if (strcmp(ed->topic, PROTO_TOPIC_CRL_FULL) == 0)
        delta = 0;
    else if (strcmp(ed->topic, PROTO_TOPIC_CRL_DELTA) == 0)
        delta = 1;
    else
        goto out;
    if (apply_crl(pl, ed->payload, ed->payloadlen, delta, 1, why, sizeof(why)) != 0) {
        mosquitto_log_printf(MOSQ_LOG_WARNING, "mqpki: %s ignored: %s", ed->topic, why);
        /* Denied, the message is dropped: a refused CRL never replaces the retained good one. */
        rc = MOSQ_ERR_ACL_DENIED;
    }
    /* Also after a refusal or a repeat: what the broker holds is what mqpkid must know. */
    emit_crl_held(pl);
out:
    return rc;
}

static int on_tick(int event, void *event_data, void *userdata)
{
    struct plugin *pl = userdata;
    char **ids = NULL;
    size_t n = 0;

    apply_loaded(pl);
    if (pl->stats_every > 0 && mqpki_now() >= pl->stats_next) {
        pl->stats_next = mqpki_now() + pl->stats_every;
        emit_stats(pl);
    }
    flush_events(pl);
    if (pl->pending_kicks == 0)
        goto out;
    /* Kicking fires on_disconnect, which edits the table: collect first, kick after. */
    if ((ids = calloc(pl->pending_kicks, sizeof(*ids))) == NULL)
        goto out;
    for (size_t b = 0; b < pl->n_buckets && n < pl->pending_kicks; b++) {
        for (struct client *c = pl->bucket[b]; c != NULL && n < pl->pending_kicks; c = c->next) {
            if (!c->kick)
                continue;
            mosquitto_log_printf(MOSQ_LOG_NOTICE,
                                 "mqpki: disconnecting %s (client %.100s, "
                                 "certificate %s): %s",
                                 c->asset, c->client_id, c->serial_hex,
                                 c->kick == KICK_ISSUER ? "its issuing CA is retired"
                                                        : "certificate revoked");
            ids[n++] = strdup(c->client_id);
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] != NULL)
            mosquitto_kick_client_by_clientid(ids[i], false);
        free(ids[i]);
    }
    /* Whatever could not be kicked (already gone) is forgotten: it is re-checked at connect. */
    for (size_t b = 0; b < pl->n_buckets; b++)
        for (struct client *c = pl->bucket[b]; c != NULL; c = c->next)
            c->kick = 0;
    pl->pending_kicks = 0;
out:
    free(ids);
    return MOSQ_ERR_SUCCESS;
}

/* Loads the last good issuing CA list and CRLs kept in state_dir, checked like fresh ones. */
static void load_state(struct plugin *pl)
{
    static const char *const names[] = {"full.der", "delta.der"};
    char path[4096], why[WHY_MAX];
    unsigned char *pem = NULL;
    size_t pem_len = 0;

    if (pl->state_dir == NULL)
        return;
    if (mqpki_path(path, sizeof(path), "%s/issuers.pem", pl->state_dir) == MQPKI_OK &&
        mqpki_file_read(path, PROTO_ISSUERS_MAX, &pem, &pem_len) == MQPKI_OK &&
        apply_issuers(pl, pem, pem_len, 0, why, sizeof(why)) != 0)
        mosquitto_log_printf(MOSQ_LOG_WARNING, "mqpki: kept %s ignored: %s", path, why);
    free(pem);
    mqpki_err_clear();
    for (int i = 0; i < 2; i++) {
        unsigned char *der = NULL;
        size_t len = 0;
        if (mqpki_path(path, sizeof(path), "%s/%s", pl->state_dir, names[i]) != MQPKI_OK)
            continue;
        if (mqpki_file_read(path, PROTO_CRL_MAX_DER, &der, &len) != MQPKI_OK) {
            if (i == 0)
                mosquitto_log_printf(MOSQ_LOG_NOTICE, "mqpki: no CRL kept in %s yet",
                                     pl->state_dir);
            continue;
        }
        if (apply_crl(pl, der, len, i == 1, 0, why, sizeof(why)) != 0)
            mosquitto_log_printf(MOSQ_LOG_WARNING, "mqpki: kept %s ignored: %s", path, why);
        free(der);
    }
    mosquitto_log_printf(MOSQ_LOG_NOTICE,
                         "mqpki: holding full CRL %lld, delta CRL %lld: %zu "
                         "serials revoked or on hold",
                         (long long)revset_full_number(pl->rev),
                         (long long)revset_delta_number(pl->rev), revset_count(pl->rev));
}

static void plugin_free(struct plugin *pl)
{
    if (pl == NULL)
        return;
    for (size_t b = 0; b < pl->n_buckets; b++) {
        struct client *c = pl->bucket[b], *next;
        for (; c != NULL; c = next) {
            next = c->next;
            client_free(c);
        }
    }
    free(pl->bucket);
    /* The worker reads cas and frees old tables: told first, stopped next. */
    revset_set_reaper(NULL, NULL);
    crlload_stop(pl->loader);
    free(pl->deferred);
    free(pl->abucket);
    evring_free(pl->ev);
    quarantine_free(pl->quar);
    sk_X509_pop_free(pl->cas, X509_free);
    sk_X509_pop_free(pl->crl_cas, X509_free);
    sk_X509_pop_free(pl->roots, X509_free);
    revset_free(pl->rev);
    acl_free(pl->acl);
    free(pl->state_dir);
    free(pl);
}

static int set_name(char out[PROTO_ASSET_ID_MAX + 1], const char *key, const char *value)
{
    if (!proto_asset_id_valid(value)) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: plugin_opt_%s '%.80s': not a valid asset id",
                             key, value);
        return -1;
    }
    snprintf(out, PROTO_ASSET_ID_MAX + 1, "%s", value);
    return 0;
}

static int parse_options(struct plugin *pl, struct mosquitto_opt *opts, int n, const char **ca_file,
                         const char **acl_file)
{
    int rc = -1;

    for (int i = 0; i < n; i++) {
        const char *k = opts[i].key, *v = opts[i].value ? opts[i].value : "";
        if (strcmp(k, "ca_file") == 0) {
            *ca_file = v;
        } else if (strcmp(k, "acl_file") == 0) {
            *acl_file = v;
        } else if (strcmp(k, "state_dir") == 0) {
            free(pl->state_dir);
            if ((pl->state_dir = strdup(v)) == NULL)
                goto out;
        } else if (strcmp(k, "service_id") == 0) {
            if (set_name(pl->service_id, k, v) != 0)
                goto out;
        } else if (strcmp(k, "broker_name") == 0) {
            if (set_name(pl->broker_name, k, v) != 0)
                goto out;
        } else if (strcmp(k, "fail_closed") == 0) {
            if (strcmp(v, "true") != 0 && strcmp(v, "false") != 0) {
                mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: plugin_opt_fail_closed: use true "
                                                   "or false");
                goto out;
            }
            pl->fail_closed = strcmp(v, "true") == 0;
        } else if (strcmp(k, "events") == 0) {
            if (strcmp(v, "true") != 0 && strcmp(v, "false") != 0) {
                mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: plugin_opt_events: use true or false");
                goto out;
            }
            pl->events_off = strcmp(v, "false") == 0;
        } else if (strcmp(k, "events_max") == 0 || strcmp(k, "stats_every") == 0 ||
                   strcmp(k, "denials_per_s") == 0) {
            char *end = NULL;
            long long x = strtoll(v, &end, 10);
            if (end == v || *end != '\0' || x < (k[0] == 'd') || x > 10000000) {
                mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: plugin_opt_%s: %d to 10000000", k,
                                     k[0] == 'd');
                goto out;
            }
            if (k[0] == 'e')
                pl->events_max = (size_t)x;
            else if (k[0] == 'd')
                pl->denials_per_s = (int)x;
            else
                pl->stats_every = x;
        } else {
            mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: unknown option plugin_opt_%.60s", k);
            goto out;
        }
    }
    if (*ca_file == NULL) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: plugin_opt_ca_file is required (the issuing "
                                           "CA chain that signs CRLs)");
        goto out;
    }
    rc = 0;
out:
    return rc;
}

EXPORT int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
    for (int i = 0; i < supported_version_count; i++)
        if (supported_versions[i] == 5)
            return 5;
    return -1;
}

EXPORT int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
                                 struct mosquitto_opt *opts, int opt_count)
{
    struct plugin *pl = NULL;
    const char *ca_file = NULL, *acl_file = NULL;
    char why[WHY_MAX] = "";
    int rc = MOSQ_ERR_INVAL;

    if ((pl = calloc(1, sizeof(*pl))) == NULL) {
        rc = MOSQ_ERR_NOMEM;
        goto out;
    }
    pl->id = identifier;
    snprintf(pl->service_id, sizeof(pl->service_id), "%s", PROTO_SERVICE_ID);
    snprintf(pl->broker_name, sizeof(pl->broker_name), "broker");
    pl->n_buckets = 64;
    pl->events_max = EVENTS_MAX_DEFAULT;
    pl->stats_every = STATS_EVERY_DEFAULT;
    pl->denials_per_s = DENIALS_PER_S_DEFAULT;
    if ((pl->bucket = calloc(pl->n_buckets, sizeof(*pl->bucket))) == NULL ||
        (pl->abucket = calloc(pl->n_buckets, sizeof(*pl->abucket))) == NULL ||
        (pl->rev = revset_new_empty()) == NULL) {
        rc = MOSQ_ERR_NOMEM;
        goto out;
    }
    if (parse_options(pl, opts, opt_count, &ca_file, &acl_file) != 0)
        goto out;
    (void)proto_topic_events(pl->broker_name, pl->events_topic);
    if (pl->events_off)
        pl->events_max = 0;
    if (pl->events_max > 0 && (pl->ev = evring_new(pl->events_max)) == NULL) {
        rc = MOSQ_ERR_NOMEM;
        goto out;
    }
    pl->stats_next = mqpki_now() + pl->stats_every;
    if (proto_crl_load_cas(ca_file, &pl->cas, why, sizeof(why)) != 0 ||
        proto_ca_roots_load(ca_file, &pl->roots, why, sizeof(why)) != 0 ||
        acl_load(acl_file, &pl->acl, why, sizeof(why)) != 0) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: %s", why);
        goto out;
    }
    if (pl->state_dir != NULL && mqpki_mkdir_p(pl->state_dir, 0700) != MQPKI_OK) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: plugin_opt_state_dir: %s",
                             mqpki_err_detail(MQPKI_ERR_IO));
        goto out;
    }
    /* Issuing CAs named in the CA file: their clients' key identifiers are checked. */
    for (int i = 0; i < sk_X509_num(pl->cas); i++)
        if (X509_NAME_cmp(X509_get_subject_name(sk_X509_value(pl->cas, i)),
                          X509_get_issuer_name(sk_X509_value(pl->cas, i))) != 0)
            pl->check_issuer = 1;
    if ((pl->crl_cas = X509_chain_up_ref(pl->cas)) == NULL) {
        rc = MOSQ_ERR_NOMEM;
        goto out;
    }
    load_retired(pl);
    /* At start nobody waits on this thread yet: the kept CRLs load here, the worker after. */
    load_state(pl);
    if (crlload_start(pl->current_crl ? pl->crl_cas : pl->cas, &pl->loader) != 0) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: cannot start the CRL loader thread");
        rc = MOSQ_ERR_NOMEM;
        goto out;
    }
    revset_set_reaper(crlload_reap, pl->loader);
    if (mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, pl) ||
        mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, pl) ||
        mosquitto_callback_register(identifier, MOSQ_EVT_MESSAGE, on_message, NULL, pl) ||
        mosquitto_callback_register(identifier, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, pl) ||
        mosquitto_callback_register(identifier, MOSQ_EVT_TICK, on_tick, NULL, pl)) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "mqpki: cannot register the plugin's callbacks");
        goto out;
    }
    mosquitto_log_printf(MOSQ_LOG_NOTICE,
                         "mqpki: plugin ready for broker %s (service %s, "
                         "fail_closed %s, events %zu)",
                         pl->broker_name, pl->service_id, pl->fail_closed ? "true" : "false",
                         pl->events_max);
    *userdata = pl;
    pl = NULL;
    rc = MOSQ_ERR_SUCCESS;
out:
    plugin_free(pl);
    return rc;
}

EXPORT int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
    struct plugin *pl = userdata;

    if (pl != NULL) {
        mosquitto_callback_unregister(pl->id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
        mosquitto_callback_unregister(pl->id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
        mosquitto_callback_unregister(pl->id, MOSQ_EVT_MESSAGE, on_message, NULL);
        mosquitto_callback_unregister(pl->id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
        mosquitto_callback_unregister(pl->id, MOSQ_EVT_TICK, on_tick, NULL);
    }
    plugin_free(pl);
    return MOSQ_ERR_SUCCESS;
}
