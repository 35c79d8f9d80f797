/*
 * feed: mqpkid's CRL feed (feed.h, DESIGN.md 6). One MQTT link per bundled broker
 * (brokers/NAME/broker.conf), each with its own thread running libmosquitto's loop and
 * reconnecting with backoff. CRLs come from the store's outbox: the publisher offers each CRL
 * as soon as it is signed (the revocation latency path), and a link that (re)connects gets the
 * newest full and delta CRL read from the store. A link never sends a lower CRL number after a
 * higher one. The brokers' security events come back on PROTO_TOPIC_EVENTS_ALL and update the
 * inventory (last seen, address, broker, the CRL numbers each broker holds).
 */
#include "feed.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <mosquitto.h>
#include <openssl/rand.h>

#include "common.h"
#include "datadir.h"
#include "inventory.h"
#include "proto.h"

#define FEED_MAX_BROKERS 256
#define FEED_EVENT_MAX   (256 * 1024) /* a batch of EVRING_BATCH_MAX events */
#define FEED_BATCH_MAX   256          /* events taken from one batch */
#define SERVICE_ID       PROTO_SERVICE_ID
#define TOPIC_FULL       PROTO_TOPIC_CRL_FULL
#define TOPIC_DELTA      PROTO_TOPIC_CRL_DELTA
#define BACKOFF_MAX_MS   30000
#define NOTICE_TAIL      128 /* DER bytes at the end of a CRL: its signature, a notice key */
#define NOTICE_SLOTS     (DATADIR_ISSUERS_MAX + 1) /* the newest CRL's and each generation's */

_Static_assert(sizeof(((struct feed_broker *)0)->name) == PROTO_ASSET_ID_MAX + 1,
               "feed_broker.name holds an asset id");

/* A retained message the feed holds for every link (under the feed's sink_lock): its payload
 * (NULL until there is one) and a version that goes up with each new payload. */
struct retained {
    char *data;
    size_t len;
    uint64_t version;
};

struct link {
    struct feed *f;
    char name[PROTO_ASSET_ID_MAX + 1];
    char host[DATADIR_BROKER_HOST_MAX];
    int port;
    struct mosquitto *m;
    pthread_t thread;
    int started;
    atomic_int connected;
    atomic_int stop; /* this link only: its broker was removed or decommissioned */
    atomic_int gone; /* stopped for good; the slot is never reused */
    pthread_mutex_t sent_lock; /* guards sent[]: the publisher and the link thread both send */
    int64_t sent[2];           /* highest full and delta CRL number sent on this connection */
    int64_t sent_cp;           /* highest audit checkpoint sent on this connection */
    uint64_t sent_quar;        /* quarantine list version sent on this connection */
    uint64_t sent_iss;         /* issuers version sent on this connection */
    /* Older issuing CA generations' CRL numbers sent on this connection (full, delta). */
    int64_t sent_gen[DATADIR_ISSUERS_MAX + 1][2];
};

/* A notice made, keyed by the URL, the number, the size and the DER's last bytes (its
 * signature: a CRL signed again differs there). */
struct notice_slot {
    char url[PROTO_URL_MAX + 1];
    int64_t number;
    size_t der_len;
    unsigned char tail[NOTICE_TAIL];
    char *notice;
    size_t len;
};

struct feed {
    char home[PATH_MAX];
    struct inventory *inv;
    pthread_mutex_t inv_lock; /* the links' threads share the one store connection */
    struct link *links;       /* FEED_MAX_BROKERS slots, filled in order by feed_rescan */
    atomic_size_t n_links;
    atomic_int stop;
    pthread_mutex_t rescan_lock; /* one rescan at a time (publisher's tick, control socket) */
    char instance[16];           /* random per process: client ids of two mqpkids never clash */
    pthread_mutex_t cp_lock; /* guards the newest audit checkpoint below */
    char *cp_json;           /* its JSON (NULL until the publisher offers one) */
    size_t cp_len;
    int64_t cp_id;
    pthread_mutex_t sink_lock; /* guards the event sink and the quarantine list below */
    feed_event_fn sink;
    void *sink_ctx;
    struct retained quar; /* the newest quarantine list (none until detect offers one) */
    struct retained iss;  /* the issuing CA generations to trust (ca/chain.pem) */
    char crl_base[PROTO_URL_MAX + 1]; /* where brokers fetch a full CRL sent as a notice */
    size_t inline_max;                /* full CRLs this large or larger go as notices; 0 never */
    /* The last notice made per URL (the newest full CRL, and each older generation's while it
     * lives): each link's catch-up after a (re)connect sends them, and a notice is the SHA-256
     * of tens of MB. */
    pthread_mutex_t notice_lock;
    struct notice_slot notices[NOTICE_SLOTS];
    unsigned notice_next; /* the slot a new URL takes when none is free */
};

/* The notice for a full CRL that goes as one (heap, NULL: it goes whole). */
static char *make_notice(struct feed *f, const char *path, int64_t number, const unsigned char *der,
                         size_t len, size_t *notice_len)
{
    char url[PROTO_URL_MAX + 1], *notice = NULL;
    size_t tail = len < NOTICE_TAIL ? len : NOTICE_TAIL;

    if (!feed_full_by_notice(f, len))
        return NULL;
    if ((size_t)snprintf(url, sizeof(url), "%s%s", f->crl_base, path) >= sizeof(url)) {
        mqpki_log(MQPKI_LOG_WARN, "feed: no notice for CRL %lld (URL %s%s too long): sent whole",
                  (long long)number, f->crl_base, path);
        return NULL;
    }
    pthread_mutex_lock(&f->notice_lock);
    for (size_t i = 0; i < NOTICE_SLOTS && notice == NULL; i++) {
        const struct notice_slot *c = &f->notices[i];
        if (c->notice != NULL && c->number == number && c->der_len == len &&
            strcmp(c->url, url) == 0 && memcmp(c->tail, der + len - tail, tail) == 0 &&
            (notice = malloc(c->len)) != NULL) {
            memcpy(notice, c->notice, c->len);
            *notice_len = c->len;
        }
    }
    pthread_mutex_unlock(&f->notice_lock);
    if (notice != NULL)
        return notice;
    if (proto_crl_notice_make(number, der, len, url, &notice, notice_len) != 0) {
        mqpki_log(MQPKI_LOG_WARN, "feed: no notice for CRL %lld (URL %s): sent whole",
                  (long long)number, url);
        return NULL;
    }
    pthread_mutex_lock(&f->notice_lock);
    {
        struct notice_slot *c = NULL;
        /* The URL's own slot (its older CRL), else a free one, else the next in turn. */
        for (size_t i = 0; i < NOTICE_SLOTS && c == NULL; i++)
            if (f->notices[i].notice != NULL && strcmp(f->notices[i].url, url) == 0)
                c = &f->notices[i];
        for (size_t i = 0; i < NOTICE_SLOTS && c == NULL; i++)
            if (f->notices[i].notice == NULL)
                c = &f->notices[i];
        if (c == NULL)
            c = &f->notices[f->notice_next++ % NOTICE_SLOTS];
        free(c->notice);
        memset(c, 0, sizeof(*c));
        if ((c->notice = malloc(*notice_len)) != NULL) {
            memcpy(c->notice, notice, *notice_len);
            c->len = *notice_len;
            c->number = number;
            c->der_len = len;
            memcpy(c->url, url, strlen(url) + 1);
            memcpy(c->tail, der + len - tail, tail);
        }
    }
    pthread_mutex_unlock(&f->notice_lock);
    return notice;
}

/*
 * Publishes a full CRL on topic: itself, or, when it is large (f->inline_max), a notice naming
 * where the brokers fetch it (path under f->crl_base): a 40 MB message would hold Mosquitto's
 * one thread for hundreds of milliseconds. The notice is retained in the CRL's place.
 */
static int publish_full(struct link *l, const char *topic, const char *path, int64_t number,
                        const unsigned char *der, size_t len)
{
    size_t notice_len = 0;
    char *notice = make_notice(l->f, path, number, der, len, &notice_len);
    int rc;

    if (notice == NULL)
        return mosquitto_publish(l->m, NULL, topic, (int)len, der, 1, true);
    rc = mosquitto_publish(l->m, NULL, topic, (int)notice_len, notice, 1, true);
    free(notice);
    return rc;
}

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

static void lib_init(void)
{
    mosquitto_lib_init();
}

/* Sends one CRL (retained, QoS 1) on one link unless it already sent this number or a higher
 * one of the same kind on this connection, or (a delta) a full CRL as new. sent_lock held. */
static void send_crl_locked(struct link *l, int kind, int64_t number, const unsigned char *der,
                            size_t len, const char *notice, size_t notice_len)
{
    const char *topic = kind == INV_CRL_FULL ? TOPIC_FULL : TOPIC_DELTA;
    int rc;

    if (number <= l->sent[kind] || (kind == INV_CRL_DELTA && number <= l->sent[INV_CRL_FULL]))
        return;
    if (notice != NULL)
        rc = mosquitto_publish(l->m, NULL, topic, (int)notice_len, notice, 1, true);
    else if (kind == INV_CRL_FULL)
        rc = publish_full(l, topic, "/crl/issuing.crl", number, der, len);
    else
        rc = mosquitto_publish(l->m, NULL, topic, (int)len, der, 1, true);
    if (rc == MOSQ_ERR_SUCCESS)
        l->sent[kind] = number;
    if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN)
        mqpki_log(MQPKI_LOG_WARN, "feed: broker %s: cannot publish CRL %lld: %s", l->name,
                  (long long)number, mosquitto_strerror(rc));
    else if (rc == MOSQ_ERR_SUCCESS)
        mqpki_log(MQPKI_LOG_DEBUG, "feed: broker %s: CRL %lld published on %s (%zu bytes)", l->name,
                  (long long)number, topic, len);
}

static void send_crl(struct link *l, int kind, int64_t number, const unsigned char *der, size_t len,
                     const char *notice, size_t notice_len)
{
    pthread_mutex_lock(&l->sent_lock);
    send_crl_locked(l, kind, number, der, len, notice, notice_len);
    pthread_mutex_unlock(&l->sent_lock);
}

/* Sends the newest audit checkpoint unless this connection got it already. sent_lock held. */
static void send_checkpoint_locked(struct link *l)
{
    struct feed *f = l->f;
    char *json = NULL;
    size_t len = 0;
    int64_t id = 0;
    int rc;

    pthread_mutex_lock(&f->cp_lock);
    if (f->cp_json != NULL && f->cp_id > l->sent_cp && (json = malloc(f->cp_len)) != NULL) {
        memcpy(json, f->cp_json, f->cp_len);
        len = f->cp_len;
        id = f->cp_id;
    }
    pthread_mutex_unlock(&f->cp_lock);
    if (json == NULL)
        return;
    rc = mosquitto_publish(l->m, NULL, PROTO_TOPIC_AUDIT_CHECKPOINT, (int)len, json, 1, true);
    if (rc == MOSQ_ERR_SUCCESS)
        l->sent_cp = id;
    else if (rc != MOSQ_ERR_NO_CONN)
        mqpki_log(MQPKI_LOG_WARN, "feed: broker %s: cannot publish audit checkpoint %lld: %s",
                  l->name, (long long)id, mosquitto_strerror(rc));
    free(json);
}

/* Sends r (retained) on topic unless this connection got its version (*sent). sent_lock
 * held; r is read under the feed's sink_lock. */
static void send_retained_locked(struct link *l, const char *topic, const struct retained *r,
                                 uint64_t *sent, const char *what)
{
    struct feed *f = l->f;
    char *data = NULL;
    size_t len = 0;
    uint64_t version = 0;
    int rc;

    pthread_mutex_lock(&f->sink_lock);
    if (r->data != NULL && r->version != *sent && (data = malloc(r->len)) != NULL) {
        memcpy(data, r->data, r->len);
        len = r->len;
        version = r->version;
    }
    pthread_mutex_unlock(&f->sink_lock);
    if (data == NULL)
        return;
    rc = mosquitto_publish(l->m, NULL, topic, (int)len, data, 1, true);
    if (rc == MOSQ_ERR_SUCCESS)
        *sent = version;
    else if (rc != MOSQ_ERR_NO_CONN)
        mqpki_log(MQPKI_LOG_WARN, "feed: broker %s: cannot publish %s: %s", l->name, what,
                  mosquitto_strerror(rc));
    free(data);
}

/* The newest quarantine list. */
static void send_quarantine_locked(struct link *l)
{
    send_retained_locked(l, PROTO_TOPIC_QUARANTINE, &l->f->quar, &l->sent_quar,
                         "the quarantine list");
}

static int issuers_refresh(struct feed *f);

/* The trusted issuing CAs: they go before any CRL the newest of them signed. */
static void send_issuers_locked(struct link *l)
{
    send_retained_locked(l, PROTO_TOPIC_CA_ISSUERS, &l->f->iss, &l->sent_iss, "the issuing CAs");
}

/* Sends what crl/generation-G/ holds of each older live generation G (the same CRLs signed by
 * its own key) unless this connection got it, full before delta; a retired generation's
 * retained CRLs are cleared. sent_lock held. */
static void send_generations_locked(struct link *l)
{
    struct datadir_issuers is;
    char topic[PROTO_TOPIC_MAX], path[PATH_MAX];

    /* Never rolled over: no older generation (a lookup, not a read of ca/, per offer). */
    if (!datadir_issuers_rolled(l->f->home))
        return;
    if (datadir_issuers_read(l->f->home, &is) != MQPKI_OK) {
        mqpki_err_clear();
        return;
    }
    for (size_t i = 0; i < is.n; i++) {
        const struct datadir_issuer *g = &is.v[i];
        static const char *const names[2] = {"issuing.crl", "issuing-delta.crl"};
        unsigned char *text = NULL;
        size_t len = 0;
        long long have[2] = {-1, -1};

        if (g->current)
            continue;
        if (g->retired) {
            /* Once per connection: nothing of it stays retained on the broker. */
            for (int k = 0; k < 2; k++)
                if (l->sent_gen[g->gen][k] != INT64_MIN &&
                    proto_topic_crl_generation(g->gen, k, topic) == 0 &&
                    mosquitto_publish(l->m, NULL, topic, 0, NULL, 1, true) == MOSQ_ERR_SUCCESS)
                    l->sent_gen[g->gen][k] = INT64_MIN;
            continue;
        }
        if (mqpki_path(path, sizeof(path), "%s/crl/generation-%d/exported", l->f->home, g->gen) ==
                MQPKI_OK &&
            mqpki_file_read(path, 64, &text, &len) == MQPKI_OK)
            (void)sscanf((const char *)text, "%lld %lld", &have[0], &have[1]);
        free(text);
        for (int k = 0; k < 2; k++) {
            unsigned char *der = NULL;
            int rc;
            if (have[k] < 0 || have[k] <= l->sent_gen[g->gen][k] ||
                mqpki_path(path, sizeof(path), "%s/crl/generation-%d/%s", l->f->home, g->gen,
                           names[k]) != MQPKI_OK ||
                mqpki_file_read(path, PROTO_CRL_MAX_DER, &der, &len) != MQPKI_OK ||
                proto_topic_crl_generation(g->gen, k, topic) != 0) {
                free(der);
                continue;
            }
            if (k == 0) {
                char gpath[64];
                snprintf(gpath, sizeof(gpath), "/crl/generation/%d/issuing.crl", g->gen);
                rc = publish_full(l, topic, gpath, have[k], der, len);
            } else {
                rc = mosquitto_publish(l->m, NULL, topic, (int)len, der, 1, true);
            }
            if (rc == MOSQ_ERR_SUCCESS)
                l->sent_gen[g->gen][k] = have[k];
            else if (rc != MOSQ_ERR_NO_CONN)
                mqpki_log(MQPKI_LOG_WARN, "feed: broker %s: cannot publish %s: %s", l->name, topic,
                          mosquitto_strerror(rc));
            free(der);
        }
    }
    mqpki_err_clear();
    datadir_issuers_clear(&is);
}

/* Sends the newest full CRL and, when it extends it, the newest delta, read from the store.
 * sent_lock held, so that an offer of a newer delta cannot overtake the full CRL it extends. */
static void send_latest_locked(struct link *l)
{
    struct feed *f = l->f;
    struct inventory_crl c[2];
    unsigned char *der[2] = {NULL, NULL};
    size_t len[2] = {0, 0};
    int have[2] = {0, 0};

    pthread_mutex_lock(&f->inv_lock);
    for (int k = INV_CRL_FULL; k <= INV_CRL_DELTA; k++)
        have[k] = inventory_crl_latest(f->inv, k, &c[k]) == MQPKI_OK &&
                  inventory_crl_der(f->inv, c[k].number, &der[k], &len[k]) == MQPKI_OK;
    pthread_mutex_unlock(&f->inv_lock);
    if (have[INV_CRL_FULL])
        send_crl_locked(l, INV_CRL_FULL, c[INV_CRL_FULL].number, der[INV_CRL_FULL],
                        len[INV_CRL_FULL], NULL, 0);
    if (have[INV_CRL_DELTA])
        send_crl_locked(l, INV_CRL_DELTA, c[INV_CRL_DELTA].number, der[INV_CRL_DELTA],
                        len[INV_CRL_DELTA], NULL, 0);
    free(der[0]);
    free(der[1]);
}

static void on_connect(struct mosquitto *m, void *ud, int rc)
{
    struct link *l = ud;

    if (rc != 0) {
        mqpki_log(MQPKI_LOG_WARN, "feed: broker %s refused mqpkid: %s", l->name,
                  mosquitto_connack_string(rc));
        return;
    }
    mqpki_log(MQPKI_LOG_INFO, "feed: connected to broker %s (%s:%d)", l->name, l->host, l->port);
    mosquitto_subscribe(m, NULL, PROTO_TOPIC_EVENTS_ALL, 1);
    /* A new connection starts from nothing sent (the broker may have restarted) and gets the
     * current CRLs at once; offers made meanwhile wait for the lock, then send only newer. */
    pthread_mutex_lock(&l->sent_lock);
    l->sent[INV_CRL_FULL] = l->sent[INV_CRL_DELTA] = -1;
    l->sent_cp = -1;
    l->sent_quar = 0;
    l->sent_iss = 0;
    for (int g = 0; g <= DATADIR_ISSUERS_MAX; g++)
        l->sent_gen[g][0] = l->sent_gen[g][1] = -1;
    atomic_store(&l->connected, 1);
    /* What ca/ says now (a replica's ca/ updated by hand), never an old copy. */
    if ((rc = issuers_refresh(l->f)) != MQPKI_OK) {
        mqpki_log(MQPKI_LOG_WARN, "feed: ca/chain.pem: %s", mqpki_err_detail(rc));
        mqpki_err_clear();
    }
    send_issuers_locked(l);
    send_latest_locked(l);
    send_generations_locked(l);
    send_checkpoint_locked(l);
    send_quarantine_locked(l);
    pthread_mutex_unlock(&l->sent_lock);
}

static void on_disconnect(struct mosquitto *m, void *ud, int rc)
{
    struct link *l = ud;

    if (atomic_exchange(&l->connected, 0) && !atomic_load(&l->f->stop) && !atomic_load(&l->stop))
        mqpki_log(MQPKI_LOG_WARN, "feed: lost broker %s (%s); reconnecting", l->name,
                  mosquitto_strerror(rc));
}

/* Hands one event to the sink (detect), if one is set. */
static void to_sink(struct link *l, json_t *ev, int64_t dropped)
{
    struct feed *f = l->f;

    pthread_mutex_lock(&f->sink_lock);
    if (f->sink != NULL)
        f->sink(f->sink_ctx, l->name, ev, dropped);
    pthread_mutex_unlock(&f->sink_lock);
}

/*
 * The store writes of one message from a broker (a batch of connects: last seen, certificate in
 * use) share one transaction and one durable commit, each event's writes a savepoint in it. The
 * transaction opens with the first event that writes; seen_done commits it.
 */
struct seen_tx {
    int held;   /* inv_lock taken */
    int open;   /* the transaction is open */
    int failed; /* it failed: the rest of the message writes nothing */
    int events; /* events with writes in it */
};

static int seen_begin(struct link *l, struct seen_tx *t)
{
    int rc;

    if (!t->held) {
        pthread_mutex_lock(&l->f->inv_lock);
        t->held = 1;
    }
    if (t->failed)
        return mqpki_fail(MQPKI_ERR_STORE, "the message's transaction failed before");
    if (!t->open && (rc = inventory_begin(l->f->inv)) != MQPKI_OK) {
        t->failed = 1;
        return rc;
    }
    t->open = 1;
    if ((rc = inventory_savepoint(l->f->inv)) != MQPKI_OK)
        t->failed = 1;
    return rc;
}

/* Ends one event's savepoint: kept when rc is MQPKI_OK, else undone alone. */
static int seen_end(struct link *l, struct seen_tx *t, int rc)
{
    int src = inventory_savepoint_end(l->f->inv, rc == MQPKI_OK);

    if (src != MQPKI_OK) {
        t->failed = 1;
        return src;
    }
    t->events += rc == MQPKI_OK;
    return rc;
}

static void seen_done(struct link *l, struct seen_tx *t)
{
    int rc = MQPKI_OK;

    if (t->open && !t->failed)
        rc = inventory_commit(l->f->inv);
    else if (t->open)
        rc = mqpki_fail(MQPKI_ERR_STORE, "the transaction failed");
    if (rc != MQPKI_OK) {
        inventory_rollback(l->f->inv);
        mqpki_log(MQPKI_LOG_WARN,
                  "feed: broker %s: %d events' records (last seen, CRL held) "
                  "not stored: %s",
                  l->name, t->events, mqpki_err_detail(rc));
    }
    if (t->held)
        pthread_mutex_unlock(&l->f->inv_lock);
    memset(t, 0, sizeof(*t));
}

static void on_event(struct link *l, json_t *v, struct seen_tx *t);

/* A security event, or a batch of them, from the broker plugin. */
static void on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg)
{
    struct link *l = ud;
    json_error_t err;
    json_t *v = NULL, *list, *d, *seq;
    const char *type, *boot;
    struct seen_tx t = {0};
    int64_t dropped;

    if (strncmp(msg->topic, PROTO_TOPIC_EVENTS, strlen(PROTO_TOPIC_EVENTS)) != 0)
        goto out;
    if (msg->payloadlen <= 0 || msg->payloadlen > FEED_EVENT_MAX) {
        mqpki_log(MQPKI_LOG_WARN, "feed: broker %s: event of %d bytes ignored", l->name,
                  msg->payloadlen);
        goto out;
    }
    v = json_loadb(msg->payload, (size_t)msg->payloadlen, JSON_REJECT_DUPLICATES, &err);
    if (v == NULL || !json_is_object(v)) {
        mqpki_log(MQPKI_LOG_WARN, "feed: broker %s: malformed event ignored", l->name);
        goto out;
    }
    type = json_string_value(json_object_get(v, "type"));
    if (type == NULL || strcmp(type, "batch") != 0) {
        json_object_del(v, "eid"); /* only a batch names its events */
        on_event(l, v, &t);
        goto out;
    }
    list = json_object_get(v, "events");
    if (!json_is_array(list) || json_array_size(list) > FEED_BATCH_MAX) {
        mqpki_log(MQPKI_LOG_WARN, "feed: broker %s: malformed event batch ignored", l->name);
        goto out;
    }
    d = json_object_get(v, "dropped");
    dropped = json_is_integer(d) ? json_integer_value(d) : 0;
    if (dropped > 0) {
        mqpki_log(MQPKI_LOG_WARN,
                  "feed: broker %s dropped %lld security events (its ring was full)", l->name,
                  (long long)dropped);
        to_sink(l, NULL, dropped);
    }
    boot = json_string_value(json_object_get(v, "boot"));
    seq = json_object_get(v, "seq");
    if (boot == NULL || strlen(boot) > 32 || strspn(boot, "0123456789abcdef") != strlen(boot) ||
        boot[0] == '\0' || !json_is_integer(seq) || json_integer_value(seq) < 1)
        boot = NULL; /* a plugin before batch ids: its events are stored as received */
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *ev = json_array_get(list, i);
        char eid[64];
        if (!json_is_object(ev))
            continue;
        /* The event's id is the batch's, never one the event names itself. */
        json_object_del(ev, "eid");
        if (boot != NULL) {
            snprintf(eid, sizeof(eid), "%s-%lld-%zu", boot, (long long)json_integer_value(seq),
                     i);
            json_object_set_new(ev, "eid", json_string(eid));
        }
        on_event(l, ev, &t);
    }
out:
    seen_done(l, &t);
    json_decref(v);
}

/* One event: connects update the asset's last-seen record; every event goes to the sink. */
static void on_event(struct link *l, json_t *v, struct seen_tx *t)
{
    const char *type, *asset, *address, *serial;
    int rc;

    type = json_string_value(json_object_get(v, "type"));
    asset = json_string_value(json_object_get(v, "asset"));
    address = json_string_value(json_object_get(v, "address"));
    if (type == NULL)
        goto out;
    /* The plugin took a CRL: what this broker enforces now (`mqpki crl`, revoke again). */
    if (strcmp(type, "crl") == 0) {
        json_t *full = json_object_get(v, "full"), *delta = json_object_get(v, "delta");
        if (!json_is_integer(full) || !json_is_integer(delta))
            goto out;
        if ((rc = seen_begin(l, t)) == MQPKI_OK)
            rc = seen_end(l, t,
                          inventory_broker_crl_set(l->f->inv, l->name, json_integer_value(full),
                                                   json_integer_value(delta), mqpki_now()));
        if (rc != MQPKI_OK)
            mqpki_log(MQPKI_LOG_WARN, "feed: broker %s: CRL report: %s", l->name,
                      mqpki_err_detail(rc));
        goto out;
    }
    to_sink(l, v, 0);
    if (strcmp(type, "connect") != 0) {
        if (strcmp(type, "disconnect") != 0 && strcmp(type, "stats") != 0)
            mqpki_log(MQPKI_LOG_DEBUG, "feed: broker %s: %s by %s from %s", l->name, type,
                      asset != NULL && proto_asset_id_valid(asset) ? asset : "?",
                      address != NULL && strlen(address) < 64 ? address : "?");
        goto out;
    }
    if (asset == NULL || !proto_asset_id_valid(asset) || strcmp(asset, SERVICE_ID) == 0)
        goto out;
    if (address != NULL && strlen(address) >= INV_TEXT_MAX)
        address = NULL;
    serial = json_string_value(json_object_get(v, "serial"));
    /* Together: the asset seen, and the certificate in use (once seen, the one it superseded
     * can no longer renew). */
    if ((rc = seen_begin(l, t)) == MQPKI_OK) {
        rc = inventory_asset_seen(l->f->inv, asset, mqpki_now(), address ? address : "", l->name);
        if (rc == MQPKI_OK && serial != NULL)
            rc = inventory_cert_seen(l->f->inv, serial, asset, mqpki_now());
        rc = seen_end(l, t, rc);
    }
    if (rc != MQPKI_OK)
        mqpki_log(MQPKI_LOG_WARN, "feed: broker %s: asset %s seen: %s", l->name, asset,
                  mqpki_err_detail(rc));
out:
    return;
}

/* Sleeps ms milliseconds unless the feed stops first. */
static void nap(struct link *l, int ms)
{
    for (int i = 0; i < ms && !atomic_load(&l->f->stop) && !atomic_load(&l->stop); i += 50)
        usleep(50 * 1000);
}

static void *link_thread(void *arg)
{
    struct link *l = arg;
    int rc, backoff = 500, linked = 0;

    while (!atomic_load(&l->f->stop) && !atomic_load(&l->stop)) {
        if (!linked) {
            rc = mosquitto_connect(l->m, l->host, l->port, 30);
            if (rc != MOSQ_ERR_SUCCESS) {
                mqpki_log(backoff <= 500 ? MQPKI_LOG_WARN : MQPKI_LOG_DEBUG,
                          "feed: broker %s (%s:%d) unreachable: %s; retrying", l->name, l->host,
                          l->port, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
                nap(l, backoff);
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            linked = 1;
        }
        rc = mosquitto_loop(l->m, 200, 1);
        if (rc == MOSQ_ERR_SUCCESS) {
            if (atomic_load(&l->connected))
                backoff = 500;
            continue;
        }
        /* Lost or refused: back off (at most 30 s) and start a fresh connection. */
        atomic_store(&l->connected, 0);
        mosquitto_disconnect(l->m);
        linked = 0;
        nap(l, backoff);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
    if (linked) {
        mosquitto_disconnect(l->m);
        (void)mosquitto_loop(l->m, 100, 1);
    }
    atomic_store(&l->connected, 0);
    return NULL;
}

/* Reads brokers/NAME/broker.conf. 0 when usable. */
static int read_broker_conf(const char *path, struct link *l)
{
    if (datadir_broker_conf_read(path, l->host, &l->port) != MQPKI_OK) {
        mqpki_err_clear();
        mqpki_log(MQPKI_LOG_WARN, "feed: %s unreadable; broker skipped", path);
        return -1;
    }
    /* A wildcard listener is reached on the loopback address. */
    if (strcmp(l->host, "0.0.0.0") == 0)
        snprintf(l->host, sizeof(l->host), "127.0.0.1");
    else if (strcmp(l->host, "::") == 0)
        snprintf(l->host, sizeof(l->host), "::1");
    return 0;
}

static int link_setup(struct feed *f, struct link *l)
{
    char ca[PATH_MAX], cert[PATH_MAX], key[PATH_MAX];
    char client_id[sizeof(l->name) + sizeof(f->instance) + 16];
    int rc = MQPKI_OK;

    if (mqpki_path(ca, sizeof(ca), "%s/ca/chain.pem", f->home) != MQPKI_OK ||
        mqpki_path(cert, sizeof(cert), "%s/tls/mqpkid.pem", f->home) != MQPKI_OK ||
        mqpki_path(key, sizeof(key), "%s/tls/mqpkid.key", f->home) != MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", f->home);
        goto out;
    }
    /* Its own client id per link and per process: with one shared id two links to one broker,
     * or two mqpkids (replicas of one store among them), took over each other's session
     * forever (MQTT 3.1.1 3.1.4). */
    snprintf(client_id, sizeof(client_id), "%s-%s-%s", SERVICE_ID, l->name, f->instance);
    if ((l->m = mosquitto_new(client_id, true, l)) == NULL) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "feed: cannot create an MQTT client");
        goto out;
    }
    /* Our own loop thread: publishes from the publisher's thread are queued and wake it. */
    mosquitto_threaded_set(l->m, true);
    if (mosquitto_tls_set(l->m, ca, NULL, cert, key, NULL) != MOSQ_ERR_SUCCESS ||
        mosquitto_tls_opts_set(l->m, 1, "tlsv1.2", NULL) != MOSQ_ERR_SUCCESS) {
        rc = mqpki_fail(MQPKI_ERR_IO, "feed: cannot load mqpkid's TLS identity from %s/tls",
                        f->home);
        goto out;
    }
    mosquitto_connect_callback_set(l->m, on_connect);
    mosquitto_disconnect_callback_set(l->m, on_disconnect);
    mosquitto_message_callback_set(l->m, on_message);
    if (pthread_create(&l->thread, NULL, link_thread, l) != 0) {
        rc = mqpki_fail(MQPKI_ERR_INTERNAL, "feed: cannot start a thread");
        goto out;
    }
    l->started = 1;
out:
    return rc;
}

static int known(struct feed *f, const char *name)
{
    for (size_t i = 0; i < atomic_load(&f->n_links); i++)
        if (!atomic_load(&f->links[i].gone) && strcmp(f->links[i].name, name) == 0)
            return 1;
    return 0;
}

/* 1 when broker `name` is registered and not decommissioned (or the store cannot tell). */
static int broker_live(struct feed *f, const char *name)
{
    struct inventory_asset a;
    int live = 1;

    memset(&a, 0, sizeof(a));
    pthread_mutex_lock(&f->inv_lock);
    if (inventory_asset_get(f->inv, name, &a) == MQPKI_OK)
        live = a.state != INV_STATE_DECOMMISSIONED;
    mqpki_err_clear();
    pthread_mutex_unlock(&f->inv_lock);
    inventory_asset_clear(&a);
    return live;
}

/* Stops the links whose broker was removed (no brokers/NAME/broker.conf any more) or
 * decommissioned: their thread disconnects and ends; the slot stays, marked gone. */
static void prune(struct feed *f, const char *dir)
{
    char path[PATH_MAX];

    for (size_t i = 0; i < atomic_load(&f->n_links); i++) {
        struct link *l = &f->links[i];
        if (atomic_load(&l->gone))
            continue;
        if (mqpki_path(path, sizeof(path), "%s/%s/broker.conf", dir, l->name) == MQPKI_OK &&
            access(path, F_OK) == 0 && broker_live(f, l->name))
            continue;
        atomic_store(&l->stop, 1);
        if (l->started)
            pthread_join(l->thread, NULL);
        l->started = 0;
        atomic_store(&l->connected, 0);
        atomic_store(&l->gone, 1);
        mqpki_log(MQPKI_LOG_INFO, "feed: broker %s removed or decommissioned; link stopped",
                  l->name);
    }
}

/* Links every broker registered under brokers/ (NAME/broker.conf) that is not linked yet, and
 * stops the links of brokers removed or decommissioned meanwhile. */
static void rescan(struct feed *f)
{
    char dir[PATH_MAX], path[PATH_MAX];
    struct dirent *de;
    DIR *d;

    if (mqpki_path(dir, sizeof(dir), "%s/brokers", f->home) != MQPKI_OK)
        return;
    pthread_mutex_lock(&f->rescan_lock);
    prune(f, dir);
    if ((d = opendir(dir)) == NULL) {
        pthread_mutex_unlock(&f->rescan_lock);
        return; /* no broker registered: nothing to feed */
    }
    while ((de = readdir(d)) != NULL && atomic_load(&f->n_links) < FEED_MAX_BROKERS) {
        struct link *l = &f->links[atomic_load(&f->n_links)];
        if (!proto_asset_id_valid(de->d_name) || strlen(de->d_name) >= sizeof(l->name) ||
            known(f, de->d_name) ||
            mqpki_path(path, sizeof(path), "%s/%s/broker.conf", dir, de->d_name) != MQPKI_OK ||
            access(path, F_OK) != 0 || !broker_live(f, de->d_name))
            continue;
        memset(l, 0, sizeof(*l));
        if (read_broker_conf(path, l) != 0)
            continue;
        l->f = f;
        l->sent[INV_CRL_FULL] = l->sent[INV_CRL_DELTA] = -1;
        l->sent_cp = -1;
        pthread_mutex_init(&l->sent_lock, NULL);
        memcpy(l->name, de->d_name, strlen(de->d_name) + 1);
        if (link_setup(f, l) != MQPKI_OK) {
            mqpki_log(MQPKI_LOG_ERROR, "feed: broker %s: %s", l->name,
                      mqpki_err_detail(MQPKI_ERR_INTERNAL));
            mosquitto_destroy(l->m);
            pthread_mutex_destroy(&l->sent_lock);
            memset(l, 0, sizeof(*l));
            continue;
        }
        /* Published only once set up: other threads never see a half-made link. */
        atomic_fetch_add(&f->n_links, 1);
        mqpki_log(MQPKI_LOG_INFO, "feed: publishing CRLs to broker %s (%s:%d)", l->name, l->host,
                  l->port);
    }
    closedir(d);
    pthread_mutex_unlock(&f->rescan_lock);
}

int feed_full_by_notice(const struct feed *f, size_t len)
{
    return f != NULL && f->inline_max > 0 && len >= f->inline_max && f->crl_base[0] != '\0';
}

int feed_start(const char *home, const char *store, const char *crl_base, size_t inline_max,
               struct feed **out)
{
    struct feed *f;
    int rc;

    *out = NULL;
    if ((f = calloc(1, sizeof(*f))) == NULL)
        return MQPKI_ERR_NOMEM;
    pthread_mutex_init(&f->inv_lock, NULL);
    pthread_mutex_init(&f->cp_lock, NULL);
    pthread_mutex_init(&f->sink_lock, NULL);
    pthread_mutex_init(&f->rescan_lock, NULL);
    pthread_mutex_init(&f->notice_lock, NULL);
    {
        unsigned char r[4];
        if (RAND_bytes(r, sizeof(r)) != 1) {
            rc = mqpki_fail(MQPKI_ERR_INTERNAL, "feed: no randomness for the client ids");
            goto out;
        }
        snprintf(f->instance, sizeof(f->instance), "%02x%02x%02x%02x", r[0], r[1], r[2], r[3]);
    }
    snprintf(f->home, sizeof(f->home), "%s", home);
    if (crl_base != NULL && crl_base[0] != '\0' && proto_crl_url_ok(crl_base)) {
        snprintf(f->crl_base, sizeof(f->crl_base), "%s", crl_base);
        f->inline_max = inline_max;
    }
    pthread_once(&lib_once, lib_init);
    if ((f->links = calloc(FEED_MAX_BROKERS, sizeof(*f->links))) == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if ((rc = inventory_open(store, &f->inv)) != MQPKI_OK)
        goto out;
    /* Before the first link: every broker gets the issuing CAs before a CRL. */
    if ((rc = feed_offer_issuers(f)) != MQPKI_OK)
        goto out;
    rescan(f);
    if (atomic_load(&f->n_links) == 0)
        mqpki_log(MQPKI_LOG_INFO, "feed: no bundled broker registered yet (mqpki broker init)");
    *out = f;
    f = NULL;
out:
    feed_stop(f);
    return rc;
}

void feed_tick(struct feed *f)
{
    feed_rescan(f);
}

int feed_healthy(struct feed *f)
{
    if (f == NULL)
        return 1;
    for (size_t i = 0; i < atomic_load(&f->n_links); i++)
        if (!atomic_load(&f->links[i].gone) && !atomic_load(&f->links[i].connected))
            return 0;
    return 1;
}

void feed_links(struct feed *f, int *total, int *connected)
{
    *total = *connected = 0;
    if (f == NULL)
        return;
    for (size_t i = 0; i < atomic_load(&f->n_links); i++) {
        if (atomic_load(&f->links[i].gone))
            continue;
        (*total)++;
        *connected += atomic_load(&f->links[i].connected) != 0;
    }
}

void feed_offer(struct feed *f, int kind, int64_t number, const unsigned char *der, size_t len)
{
    char *notice = NULL;
    size_t notice_len = 0;

    if (f == NULL || (kind != INV_CRL_FULL && kind != INV_CRL_DELTA))
        return;
    /* One notice (one SHA-256 of tens of MB) for every link. */
    if (kind == INV_CRL_FULL)
        notice = make_notice(f, "/crl/issuing.crl", number, der, len, &notice_len);
    for (size_t i = 0; i < atomic_load(&f->n_links); i++)
        if (atomic_load(&f->links[i].connected))
            send_crl(&f->links[i], kind, number, der, len, notice, notice_len);
    free(notice);
}

void feed_offer_checkpoint(struct feed *f, int64_t id, const char *json, size_t len)
{
    char *copy;

    if (f == NULL || json == NULL || len == 0 || (copy = malloc(len)) == NULL)
        return;
    memcpy(copy, json, len);
    pthread_mutex_lock(&f->cp_lock);
    if (id > f->cp_id) {
        free(f->cp_json);
        f->cp_json = copy;
        f->cp_len = len;
        f->cp_id = id;
        copy = NULL;
    }
    pthread_mutex_unlock(&f->cp_lock);
    free(copy);
    for (size_t i = 0; i < atomic_load(&f->n_links); i++) {
        struct link *l = &f->links[i];
        if (!atomic_load(&l->connected))
            continue;
        pthread_mutex_lock(&l->sent_lock);
        send_checkpoint_locked(l);
        pthread_mutex_unlock(&l->sent_lock);
    }
}

void feed_set_sink(struct feed *f, feed_event_fn fn, void *ctx)
{
    if (f == NULL)
        return;
    pthread_mutex_lock(&f->sink_lock);
    f->sink = fn;
    f->sink_ctx = ctx;
    pthread_mutex_unlock(&f->sink_lock);
}

void feed_offer_quarantine(struct feed *f, const char *json, size_t len)
{
    char *copy;

    if (f == NULL || json == NULL || len == 0 || (copy = malloc(len)) == NULL)
        return;
    memcpy(copy, json, len);
    pthread_mutex_lock(&f->sink_lock);
    free(f->quar.data);
    f->quar.data = copy;
    f->quar.len = len;
    f->quar.version++;
    pthread_mutex_unlock(&f->sink_lock);
    for (size_t i = 0; i < atomic_load(&f->n_links); i++) {
        struct link *l = &f->links[i];
        if (!atomic_load(&l->connected))
            continue;
        pthread_mutex_lock(&l->sent_lock);
        send_quarantine_locked(l);
        pthread_mutex_unlock(&l->sent_lock);
    }
}

void feed_offer_generations(struct feed *f)
{
    if (f == NULL)
        return;
    for (size_t i = 0; i < atomic_load(&f->n_links); i++) {
        struct link *l = &f->links[i];
        if (!atomic_load(&l->connected))
            continue;
        pthread_mutex_lock(&l->sent_lock);
        send_generations_locked(l);
        pthread_mutex_unlock(&l->sent_lock);
    }
}

/* Reads ca/chain.pem into the list to send when it changed (sink_lock taken here). */
static int issuers_refresh(struct feed *f)
{
    char path[PATH_MAX];
    unsigned char *pem = NULL;
    size_t len = 0;
    int rc;

    if (mqpki_path(path, sizeof(path), "%s/ca/chain.pem", f->home) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", f->home);
    if ((rc = mqpki_file_read(path, PROTO_ISSUERS_MAX, &pem, &len)) != MQPKI_OK)
        return rc;
    pthread_mutex_lock(&f->sink_lock);
    if (f->iss.data != NULL && f->iss.len == len && memcmp(f->iss.data, pem, len) == 0) {
        /* The same as sent: nothing to send again. */
        pthread_mutex_unlock(&f->sink_lock);
        free(pem);
        return MQPKI_OK;
    }
    free(f->iss.data);
    f->iss.data = (char *)pem;
    f->iss.len = len;
    f->iss.version++;
    pthread_mutex_unlock(&f->sink_lock);
    return MQPKI_OK;
}

int feed_offer_issuers(struct feed *f)
{
    int rc;

    if (f == NULL)
        return MQPKI_OK;
    if ((rc = issuers_refresh(f)) != MQPKI_OK)
        return rc;
    for (size_t i = 0; i < atomic_load(&f->n_links); i++) {
        struct link *l = &f->links[i];
        if (!atomic_load(&l->connected))
            continue;
        pthread_mutex_lock(&l->sent_lock);
        send_issuers_locked(l);
        send_generations_locked(l);
        pthread_mutex_unlock(&l->sent_lock);
    }
    return MQPKI_OK;
}

void feed_publish_alert(struct feed *f, const char *json, size_t len)
{
    if (f == NULL || json == NULL || len == 0)
        return;
    for (size_t i = 0; i < atomic_load(&f->n_links); i++) {
        struct link *l = &f->links[i];
        int rc;
        if (!atomic_load(&l->connected))
            continue;
        rc = mosquitto_publish(l->m, NULL, PROTO_TOPIC_ALERTS, (int)len, json, 1, false);
        if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN)
            mqpki_log(MQPKI_LOG_WARN, "feed: broker %s: cannot publish an alert: %s", l->name,
                      mosquitto_strerror(rc));
    }
}

int feed_command(struct feed *f, const char *asset, const char *json, size_t len)
{
    char topic[sizeof(PROTO_TOPIC_ASSETS) + PROTO_ASSET_ID_MAX + sizeof(PROTO_TOPIC_CMD_SUFFIX)];
    int sent = 0;

    if (f == NULL || asset == NULL || !proto_asset_id_valid(asset) || json == NULL)
        return 0;
    snprintf(topic, sizeof(topic), PROTO_TOPIC_ASSETS "%s" PROTO_TOPIC_CMD_SUFFIX, asset);
    /* To every connected broker: the device is on one of them. Not retained: a command is for
     * now, and a device that connects later renews on its own schedule. */
    for (size_t i = 0; i < atomic_load(&f->n_links); i++) {
        struct link *l = &f->links[i];
        if (!atomic_load(&l->connected))
            continue;
        if (mosquitto_publish(l->m, NULL, topic, (int)len, json, 1, false) == MOSQ_ERR_SUCCESS)
            sent++;
    }
    return sent;
}

void feed_resend(struct feed *f)
{
    if (f == NULL)
        return;
    for (size_t i = 0; i < atomic_load(&f->n_links); i++) {
        struct link *l = &f->links[i];
        if (!atomic_load(&l->connected))
            continue;
        /* Sent again even if this connection sent them before: the broker lacks them. */
        pthread_mutex_lock(&l->sent_lock);
        l->sent[INV_CRL_FULL] = l->sent[INV_CRL_DELTA] = -1;
        l->sent_cp = -1;
        send_latest_locked(l);
        send_checkpoint_locked(l);
        pthread_mutex_unlock(&l->sent_lock);
    }
}

void feed_rescan(struct feed *f)
{
    if (f != NULL && !atomic_load(&f->stop))
        rescan(f);
}

size_t feed_brokers(struct feed *f, struct feed_broker *out, size_t max)
{
    size_t n = 0;

    if (f == NULL)
        return 0;
    for (size_t i = 0; i < atomic_load(&f->n_links) && n < max; i++) {
        struct link *l = &f->links[i];
        if (atomic_load(&l->gone))
            continue;
        snprintf(out[n].name, sizeof(out[n].name), "%s", l->name);
        out[n].connected = atomic_load(&l->connected) != 0;
        n++;
    }
    return n;
}

void feed_stop(struct feed *f)
{
    if (f == NULL)
        return;
    atomic_store(&f->stop, 1);
    for (size_t i = 0; f->links != NULL && i < FEED_MAX_BROKERS; i++) {
        struct link *l = &f->links[i];
        if (l->started)
            pthread_join(l->thread, NULL);
        mosquitto_destroy(l->m);
        if (l->f != NULL)
            pthread_mutex_destroy(&l->sent_lock);
    }
    inventory_close(f->inv);
    pthread_mutex_destroy(&f->inv_lock);
    pthread_mutex_destroy(&f->cp_lock);
    pthread_mutex_destroy(&f->rescan_lock);
    pthread_mutex_destroy(&f->sink_lock);
    pthread_mutex_destroy(&f->notice_lock);
    for (size_t i = 0; i < NOTICE_SLOTS; i++)
        free(f->notices[i].notice);
    free(f->cp_json);
    free(f->quar.data);
    free(f->iss.data);
    free(f->links);
    free(f);
}
