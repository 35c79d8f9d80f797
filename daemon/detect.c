/*
 * detect: mqpkid's detect -> respond loop (daemon.h, docs/detect.md). The feed hands every
 * broker event to detect_sink, which copies it into a bounded queue (a full queue drops and
 * counts: the feed's threads never wait for the store). One thread stores the queued events in
 * one transaction per batch, runs the built-in detectors over them in memory (sliding windows in
 * a bounded table), and answers a detector that fires with its configured response: an alert
 * (record, metric, PROTO_TOPIC_ALERTS, hook), a hold (lifecycle_revoke with certificateHold,
 * then a delta CRL at once: the brokers kick the client) or a quarantine (the store's
 * quarantine table, pushed to the brokers as a retained list). Every response is audited with
 * its rule and evidence ("detect.alert"; the hold's "cert.revoke" names actor detect:RULE).
 *
 * Crash windows: an event is stored before detectors see it, so a crash loses at most the
 * in-memory windows (they refill). A hold commits before its alert record: a crash between
 * them leaves the hold with its "cert.revoke" audit event (actor detect:RULE) and no alert row.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "common.h"
#include "daemon.h"
#include "datadir.h"
#include "feed.h"
#include "inventory.h"
#include "lifecycle.h"

#define QUEUE_MAX         8192 /* events waiting for the detect thread */
#define BATCH_MAX         512  /* events stored in one transaction */
#define GATHER_MS         10   /* how long the first event of a batch waits for others */
#define EVENT_JSON_MAX    4096 /* one event's JSON */
#define TRACK_BUCKETS     4096
#define TRACK_MAX         16384 /* keys (asset, address) tracked at once */
#define SLOTS             8     /* a window is counted in SLOTS slots */
#define DEFER_AFTER_OTHER 5     /* seconds a rule stays quiet after another replica raised it */
#define TOPICS_MAX        64 /* distinct topics remembered per asset (topic_scan_threshold cap) */
#define PRESENCE_MAX      100000
#define HOOKS_MAX         8 /* hook commands running at once */
#define PRUNE_EVERY       30
#define QUAR_SYNC_MS      1000 /* how often the quarantine list is compared with the store */

struct item {
    char broker[PROTO_ASSET_ID_MAX + 1];
    char *json;
};

/* A key's counts in one rule's window, and when that rule last fired for it. */
struct track {
    char key[PROTO_ASSET_ID_MAX + 80];
    int64_t slot_start[SLOTS];
    int32_t slot_count[SLOTS];
    uint32_t topic[TOPICS_MAX];
    int64_t topic_time[TOPICS_MAX];
    int64_t last, quiet_until;
    int64_t deferred_until; /* another replica answered: its response lands in the store first */
    struct track *next;
};

/* Whether an asset is connected somewhere, and since when nothing was heard from it. */
struct presence {
    char asset[PROTO_ASSET_ID_MAX + 1];
    int connections;
    int64_t last_heard, silent_reported;
    int64_t last_connect, interval; /* the usual time between its connects (moving average) */
    int gaps;                       /* connect-to-connect gaps that average holds */
    struct presence *next;
};

#define SILENT_GAPS_MIN  3  /* gaps seen before an asset's own interval counts */
#define SILENT_LIMIT_MIN 60 /* a learned silence limit is never shorter than this, seconds */

struct detect {
    struct daemon_ctx *ctx;
    struct datadir_config cfg;
    pthread_t thread;
    int started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stop;
    struct item *q;
    size_t q_head, q_n;
    uint64_t q_dropped;
    struct inventory *inv;
    struct lifecycle *lc;
    struct track *tracks[TRACK_BUCKETS];
    size_t n_tracks;
    struct presence *pres[TRACK_BUCKETS];
    size_t n_pres;
    int64_t started_at, next_prune, next_silent;
    int64_t next_quar_ms; /* monotonic: the next look for quarantines set or lifted elsewhere */
    char *quar_json; /* the list last offered to the feed */
    /* The event being looked at, as replicas all name it (BROKER/EID, silent-LAST_SEEN; "" for
     * an event without an id): with the rule and key, the cause of an alert it fires. */
    char event[PROTO_ASSET_ID_MAX + 72];
    struct track *firing; /* the track quiet() just let fire, until fire() returns */
    pid_t hooks[HOOKS_MAX];
};

static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u;

    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static int64_t window_of(const struct detect *d, int rule)
{
    return d->cfg.detect[rule].window > 0 ? d->cfg.detect[rule].window : 60;
}

/* The track of key, made when missing (NULL when the table is full). */
static struct track *track_get(struct detect *d, const char *key, int64_t now)
{
    uint32_t b = hash(key) % TRACK_BUCKETS;
    struct track *t;

    for (t = d->tracks[b]; t != NULL; t = t->next)
        if (strcmp(t->key, key) == 0)
            return t;
    if (d->n_tracks >= TRACK_MAX) {
        /* Forget keys quiet for longer than any window: they count nothing any more. */
        int64_t longest = 0;
        for (int r = 0; r < DETECT_COUNT_; r++)
            if (window_of(d, r) > longest)
                longest = window_of(d, r);
        for (size_t i = 0; i < TRACK_BUCKETS; i++) {
            struct track **pp = &d->tracks[i];
            while ((t = *pp) != NULL) {
                if (t->last < now - longest && t->quiet_until < now && t->deferred_until < now) {
                    *pp = t->next;
                    free(t);
                    d->n_tracks--;
                } else {
                    pp = &t->next;
                }
            }
        }
        if (d->n_tracks >= TRACK_MAX)
            return NULL;
    }
    if ((t = calloc(1, sizeof(*t))) == NULL)
        return NULL;
    snprintf(t->key, sizeof(t->key), "%s", key);
    t->next = d->tracks[b];
    d->tracks[b] = t;
    d->n_tracks++;
    return t;
}

/* Counts one occurrence at now; returns the count within window (approximate to a slot). */
static int64_t track_count(struct track *t, int64_t window, int64_t now)
{
    int64_t width = window / SLOTS > 0 ? window / SLOTS : 1, start = now - now % width, n = 0;
    int slot = (int)((now / width) % SLOTS);

    if (t->slot_start[slot] != start) {
        t->slot_start[slot] = start;
        t->slot_count[slot] = 0;
    }
    t->slot_count[slot]++;
    t->last = now;
    for (int i = 0; i < SLOTS; i++)
        if (t->slot_start[i] > now - window)
            n += t->slot_count[i];
    return n;
}

/* Remembers topic at now; returns the distinct topics seen within window. */
static int track_topics(struct track *t, const char *topic, int64_t window, int64_t now)
{
    uint32_t h = hash(topic);
    int n = 0, oldest = 0, found = -1;

    for (int i = 0; i < TOPICS_MAX; i++) {
        if (t->topic_time[i] != 0 && t->topic[i] == h)
            found = i;
        if (t->topic_time[i] < t->topic_time[oldest])
            oldest = i;
    }
    if (found < 0)
        found = oldest;
    t->topic[found] = h;
    t->topic_time[found] = now;
    t->last = now;
    for (int i = 0; i < TOPICS_MAX; i++)
        if (t->topic_time[i] != 0 && t->topic_time[i] > now - window)
            n++;
    return n;
}

static struct presence *presence_get(struct detect *d, const char *asset, int make)
{
    uint32_t b = hash(asset) % TRACK_BUCKETS;
    struct presence *p;

    for (p = d->pres[b]; p != NULL; p = p->next)
        if (strcmp(p->asset, asset) == 0)
            return p;
    if (!make || d->n_pres >= PRESENCE_MAX || (p = calloc(1, sizeof(*p))) == NULL)
        return NULL;
    snprintf(p->asset, sizeof(p->asset), "%s", asset);
    p->next = d->pres[b];
    d->pres[b] = p;
    d->n_pres++;
    return p;
}

/* Reaps finished hook commands. */
static void hooks_reap(struct detect *d)
{
    for (int i = 0; i < HOOKS_MAX; i++)
        if (d->hooks[i] > 0 && waitpid(d->hooks[i], NULL, WNOHANG) != 0)
            d->hooks[i] = 0;
}

/* Runs [detect] hook with the alert's JSON on stdin, no arguments, not waited for. */
static void run_hook(struct detect *d, const char *json)
{
    char *const argv[] = {d->cfg.detect_hook, NULL};
    posix_spawn_file_actions_t fa;
    int slot = -1, fds[2] = {-1, -1};
    pid_t pid;

    if (d->cfg.detect_hook[0] == '\0')
        return;
    hooks_reap(d);
    for (int i = 0; i < HOOKS_MAX && slot < 0; i++)
        if (d->hooks[i] == 0)
            slot = i;
    if (slot < 0) {
        mqpki_log(MQPKI_LOG_WARN, "detect: %d hooks still running; %s not run for this alert",
                  HOOKS_MAX, d->cfg.detect_hook);
        return;
    }
    if (pipe2(fds, O_CLOEXEC) != 0)
        return;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[0], 0);
    if (posix_spawn(&pid, d->cfg.detect_hook, &fa, NULL, argv, environ) == 0) {
        size_t len = strlen(json), off = 0;
        d->hooks[slot] = pid;
        close(fds[0]);
        fds[0] = -1;
        /* An alert is far below a pipe's buffer: the write does not wait for the hook. */
        while (off < len) {
            ssize_t n = write(fds[1], json + off, len - off);
            if (n <= 0 && errno != EINTR)
                break;
            off += n > 0 ? (size_t)n : 0;
        }
    } else {
        mqpki_log(MQPKI_LOG_WARN, "detect: cannot run hook %s", d->cfg.detect_hook);
    }
    posix_spawn_file_actions_destroy(&fa);
    if (fds[0] >= 0)
        close(fds[0]);
    close(fds[1]);
}

/* Pushes the store's quarantine list to the brokers when it changed (also after `release`). */
static int add_quarantined(const char *asset, int64_t since, const char *rule, void *ctx)
{
    (void)since;
    (void)rule;
    return json_array_append_new(ctx, json_string(asset)) != 0;
}

static void sync_quarantine(struct detect *d)
{
    json_t *list = json_array(), *v = NULL;
    char *text = NULL;

    if (list == NULL || inventory_quarantine_list(d->inv, add_quarantined, list) != MQPKI_OK)
        goto out;
    if ((v = json_pack("{s:O}", "assets", list)) == NULL ||
        (text = json_dumps(v, JSON_COMPACT)) == NULL)
        goto out;
    if (d->quar_json != NULL && strcmp(d->quar_json, text) == 0)
        goto out;
    feed_offer_quarantine(d->ctx->feed, text, strlen(text));
    mqpki_log(MQPKI_LOG_INFO, "detect: %zu assets under quarantine", json_array_size(list));
    free(d->quar_json);
    d->quar_json = text;
    text = NULL;
out:
    mqpki_err_clear();
    free(text);
    json_decref(v);
    json_decref(list);
}

/* The hold response: certificateHold on the certificate, then the delta CRL at once. */
static void respond_hold(struct detect *d, int rule, const char *serial, char *outcome, size_t size)
{
    struct lifecycle_change ch;
    struct lifecycle_publication pub;
    char actor[64], error[256] = "";
    int rc;

    snprintf(actor, sizeof(actor), "detect:%s", datadir_detector_name(rule));
    if (serial == NULL || serial[0] == '\0') {
        snprintf(outcome, size, "not held: the evidence names no certificate");
        return;
    }
    if ((rc = lifecycle_revoke(d->lc, serial, CA_REASON_HOLD, actor, &ch)) != MQPKI_OK) {
        snprintf(outcome, size, "hold failed: %.200s", mqpki_err_detail(rc));
        return;
    }
    if (ch.changed == 0) {
        snprintf(outcome, size, "certificate %s already revoked or on hold", serial);
        return;
    }
    rc = publisher_run(d->ctx->publisher, 0, &pub, error, sizeof(error));
    snprintf(outcome, size, "certificate %s put on hold; delta CRL %s", serial,
             rc == MQPKI_OK ? "published" : "pending (retried every second)");
}

/*
 * A detector fired: the response, then the alert record (audited with rule and evidence), the
 * metric, the alert on PROTO_TOPIC_ALERTS and the hook. evidence is consumed.
 */
static void fire(struct detect *d, int rule, const char *asset, const char *address,
                 const char *broker, const char *serial, json_t *evidence)
{
    struct inventory_alert a;
    int response = d->cfg.detect[rule].response;
    char outcome[INV_TEXT_MAX] = "alert only", *ev_text = NULL, *text = NULL, when[32];
    int64_t id = 0;
    json_t *v = NULL;
    int rc, added = 0;

    if (response == DETECT_OFF || evidence == NULL)
        goto out;
    memset(&a, 0, sizeof(a));
    a.time = mqpki_now();
    snprintf(a.rule, sizeof(a.rule), "%s", datadir_detector_name(rule));
    snprintf(a.asset, sizeof(a.asset), "%s", asset != NULL ? asset : "");
    snprintf(a.address, sizeof(a.address), "%s", address != NULL ? address : "");
    snprintf(a.broker, sizeof(a.broker), "%s", broker != NULL ? broker : "");
    snprintf(a.response, sizeof(a.response), "%s", datadir_response_name(response));
    if (d->event[0] != '\0')
        snprintf(a.cause, sizeof(a.cause), "%s:%s%s:%s", a.rule,
                 a.asset[0] ? "" : "addr=", a.asset[0] ? a.asset : a.address, d->event);
    if (response == DETECT_HOLD)
        snprintf(outcome, sizeof(outcome), "hold pending");
    else if (response == DETECT_QUARANTINE && a.asset[0] == '\0')
        snprintf(outcome, sizeof(outcome), "not quarantined: the evidence names no asset");
    else if (response == DETECT_QUARANTINE)
        snprintf(outcome, sizeof(outcome), "asset %s quarantined: may only publish to fleet/%s%s",
                 a.asset, a.asset, PROTO_QUARANTINE_SUFFIX);
    snprintf(a.outcome, sizeof(a.outcome), "%s", outcome);
    if ((ev_text = json_dumps(evidence, JSON_COMPACT | JSON_SORT_KEYS)) == NULL)
        goto out;
    a.evidence = ev_text;
    /* The alert first: of replicas that saw the same event, the one whose alert is stored
     * responds; the others stop here (docs/ha.md, "Detect with replicas"). */
    if ((rc = inventory_alert_add(d->inv, &a, "detect", &id)) != MQPKI_OK) {
        mqpki_log(MQPKI_LOG_ERROR, "detect: %s alert for %s not recorded: %s", a.rule,
                  a.asset[0] ? a.asset : a.address, mqpki_err_detail(rc));
        goto out;
    }
    if (id == 0) {
        mqpki_log(MQPKI_LOG_INFO, "detect: %s on %s: raised by another replica (%s)", a.rule,
                  a.asset[0] ? a.asset : a.address, a.cause);
        /* Its hold or quarantine commits just after its alert, and this replica re-reads the
         * quarantine list once a second: until then the next events must not fire again. */
        if (d->firing != NULL)
            d->firing->deferred_until = a.time + DEFER_AFTER_OTHER;
        goto out;
    }
    if (response == DETECT_HOLD) {
        respond_hold(d, rule, serial, outcome, sizeof(outcome));
        if ((rc = inventory_alert_outcome(d->inv, id, outcome, "detect")) != MQPKI_OK)
            mqpki_log(MQPKI_LOG_ERROR, "detect: alert %lld: outcome not recorded: %s",
                      (long long)id, mqpki_err_detail(rc));
        snprintf(a.outcome, sizeof(a.outcome), "%s", outcome);
    }
    if (response == DETECT_QUARANTINE && a.asset[0] != '\0') {
        if ((rc = inventory_quarantine_add(d->inv, a.asset, a.rule, id, "detect", &added)) !=
            MQPKI_OK)
            mqpki_log(MQPKI_LOG_ERROR, "detect: quarantine of %s failed: %s", a.asset,
                      mqpki_err_detail(rc));
        sync_quarantine(d);
    }
    metrics_detect_alert(a.rule);
    mqpki_log(MQPKI_LOG_WARN, "detect: alert %lld: %s on %s (broker %s): %s", (long long)id, a.rule,
              a.asset[0] ? a.asset : a.address, a.broker[0] ? a.broker : "-", a.outcome);
    mqpki_time_str(a.time, when);
    v = json_pack("{s:I, s:s, s:s, s:s?, s:s?, s:s?, s:s, s:s, s:O}", "id", (json_int_t)id, "time",
                  when, "rule", a.rule, "asset", asset, "address", address, "broker", broker,
                  "response", a.response, "outcome", a.outcome, "evidence", evidence);
    if (v != NULL && (text = json_dumps(v, JSON_COMPACT)) != NULL) {
        feed_publish_alert(d->ctx->feed, text, strlen(text));
        run_hook(d, text);
    }
out:
    d->firing = NULL;
    mqpki_err_clear();
    free(text);
    free(ev_text);
    json_decref(v);
    json_decref(evidence);
}

/* 1 when the hold or quarantine rule's response would give is in force already. -1 when the
 * rule has no such response for this evidence. */
static int in_force(struct detect *d, int rule, const char *asset, const char *serial)
{
    int response = d->cfg.detect[rule].response, held;
    struct inventory_cert c;
    char quoted[PROTO_ASSET_ID_MAX + 3];

    /* What this rule sees is a certificate revoked already: its hold is never "in force". */
    if (rule == DETECT_REVOKED_CONNECTED)
        return -1;
    if (response == DETECT_QUARANTINE && asset != NULL) {
        /* The list last sent, re-read from the store every second (release lifts it). */
        snprintf(quoted, sizeof(quoted), "\"%s\"", asset);
        return d->quar_json != NULL && strstr(d->quar_json, quoted) != NULL;
    }
    if (response != DETECT_HOLD || serial == NULL)
        return -1;
    memset(&c, 0, sizeof(c));
    if (inventory_cert_get(d->inv, serial, 0, &c) != MQPKI_OK) {
        mqpki_err_clear();
        return -1;
    }
    held = c.state == INV_CERT_REVOKED;
    inventory_cert_clear(&c);
    return held;
}

/*
 * Whether a rule that fired for a key stays quiet. A hold or quarantine answers again only once
 * it was lifted (`mqpki release`), and not while it is in force; an alert at most once a window
 * (one alert per burst, not per event).
 */
static int quiet(struct detect *d, struct track *t, int rule, const char *asset, const char *serial,
                 int64_t now)
{
    int force;

    d->firing = NULL;
    if (t != NULL && t->deferred_until > now)
        return 1;
    if ((force = in_force(d, rule, asset, serial)) >= 0) {
        if (force == 0)
            d->firing = t;
        return force;
    }
    if (t == NULL || t->quiet_until > now)
        return 1;
    t->quiet_until = now + window_of(d, rule);
    d->firing = t;
    return 0;
}

static const char *str(json_t *ev, const char *key)
{
    const char *s = json_string_value(json_object_get(ev, key));
    return s != NULL && strlen(s) < 256 ? s : NULL;
}

/* A revoked certificate a broker let in: its CRL should have refused it. */
static void check_revoked(struct detect *d, const char *broker, const char *asset,
                          const char *address, const char *serial, int64_t now)
{
    struct inventory_cert c;
    char key[PROTO_ASSET_ID_MAX + 80];
    struct track *t;

    memset(&c, 0, sizeof(c));
    if (serial == NULL || inventory_cert_get(d->inv, serial, 0, &c) != MQPKI_OK) {
        mqpki_err_clear();
        return;
    }
    if (c.state == INV_CERT_REVOKED &&
        c.revoked_at < now - window_of(d, DETECT_REVOKED_CONNECTED)) {
        snprintf(key, sizeof(key), "rev:%s", serial);
        t = track_get(d, key, now);
        if (!quiet(d, t, DETECT_REVOKED_CONNECTED, asset, serial, now))
            fire(d, DETECT_REVOKED_CONNECTED, asset, address, broker, serial,
                 json_pack("{s:s, s:s, s:I, s:i, s:s}", "serial", serial, "broker", broker,
                           "revoked_at", (json_int_t)c.revoked_at, "reason", c.reason, "seen",
                           "connect accepted after the CRL that lists it"));
    }
    inventory_cert_clear(&c);
}

/* Runs the detectors over one stored event. */
static void detect_one(struct detect *d, const char *broker, json_t *ev, int64_t now)
{
    const char *type = str(ev, "type"), *asset = str(ev, "asset"), *address = str(ev, "address");
    const char *serial = str(ev, "serial"), *other = str(ev, "other_address");
    char key[PROTO_ASSET_ID_MAX + 80];
    struct presence *p;
    struct track *t;
    int64_t n;

    if (type == NULL)
        return;
    if (asset != NULL && (!proto_asset_id_valid(asset) || strcmp(asset, PROTO_SERVICE_ID) == 0))
        return;
    if (asset != NULL && (p = presence_get(d, asset, strcmp(type, "connect") == 0)) != NULL) {
        p->last_heard = now;
        if (strcmp(type, "connect") == 0) {
            /* Learn the asset's usual interval between connects (gaps of a second or more:
             * a burst of reconnects is no rhythm). */
            int64_t gap = p->last_connect > 0 ? now - p->last_connect : 0;
            if (gap >= 1) {
                p->interval = p->gaps == 0 ? gap : (3 * p->interval + gap) / 4;
                p->gaps++;
            }
            p->last_connect = now;
            p->connections++;
        } else if (strcmp(type, "disconnect") == 0 && p->connections > 0)
            p->connections--;
    }
    if (strcmp(type, "connect_refused") == 0) {
        const struct datadir_detect_rule *r = &d->cfg.detect[DETECT_AUTH_FAILURES];
        for (int by_addr = 0; by_addr < 2; by_addr++) {
            const char *who = by_addr ? address : asset;
            if (who == NULL)
                continue;
            snprintf(key, sizeof(key), "auth:%s:%s", by_addr ? "addr" : "asset", who);
            if ((t = track_get(d, key, now)) == NULL)
                continue;
            n = track_count(t, r->window, now);
            if (n >= r->threshold &&
                !quiet(d, t, DETECT_AUTH_FAILURES, by_addr ? NULL : asset, NULL, now))
                fire(d, DETECT_AUTH_FAILURES, by_addr ? NULL : asset, address, broker, NULL,
                     json_pack("{s:s, s:s, s:I, s:I, s:s?}", "per", by_addr ? "address" : "asset",
                               "key", who, "refusals", (json_int_t)n, "window",
                               (json_int_t)r->window, "last_reason", str(ev, "reason")));
        }
    } else if (strcmp(type, "acl_denied") == 0 && asset != NULL) {
        const struct datadir_detect_rule *r = &d->cfg.detect[DETECT_TOPIC_SCAN];
        const char *topic = str(ev, "topic");
        int threshold = r->threshold < TOPICS_MAX ? r->threshold : TOPICS_MAX;
        snprintf(key, sizeof(key), "scan:%s", asset);
        if ((t = track_get(d, key, now)) == NULL || topic == NULL)
            return;
        if (json_is_true(json_object_get(ev, "wildcard"))) {
            if (!quiet(d, t, DETECT_TOPIC_SCAN, asset, NULL, now))
                fire(d, DETECT_TOPIC_SCAN, asset, address, broker, NULL,
                     json_pack("{s:s, s:s}", "wildcard_subscription", topic, "outside",
                               "the asset's own subtree"));
        } else if ((n = track_topics(t, topic, r->window, now)) >= threshold &&
                   !quiet(d, t, DETECT_TOPIC_SCAN, asset, NULL, now)) {
            fire(d, DETECT_TOPIC_SCAN, asset, address, broker, NULL,
                 json_pack("{s:I, s:I, s:s, s:s?}", "distinct_topics_denied", (json_int_t)n,
                           "window", (json_int_t)r->window, "last_topic", topic, "access",
                           str(ev, "reason")));
        }
    } else if ((strcmp(type, "takeover") == 0 || strcmp(type, "cert_shared") == 0) &&
               asset != NULL) {
        const struct datadir_detect_rule *r = &d->cfg.detect[DETECT_CLONED_IDENTITY];
        int two_places = other != NULL && address != NULL && strcmp(other, address) != 0;
        snprintf(key, sizeof(key), "clone:%s", asset);
        if ((t = track_get(d, key, now)) == NULL)
            return;
        n = track_count(t, r->window, now);
        if ((two_places || n >= r->threshold) &&
            !quiet(d, t, DETECT_CLONED_IDENTITY, asset, serial, now))
            fire(d, DETECT_CLONED_IDENTITY, asset, address, broker, serial,
                 json_pack("{s:s, s:s?, s:s?, s:s?, s:s?, s:I, s:I}", "seen", type, "serial",
                           serial, "client_id", str(ev, "client_id"), "address", address,
                           "other_address", other, "takeovers", (json_int_t)n, "window",
                           (json_int_t)r->window));
    } else if (strcmp(type, "connect") == 0 && asset != NULL) {
        const struct datadir_detect_rule *r = &d->cfg.detect[DETECT_FLAPPING];
        snprintf(key, sizeof(key), "flap:%s", asset);
        if ((t = track_get(d, key, now)) != NULL) {
            n = track_count(t, r->window, now);
            if (n >= r->threshold && !quiet(d, t, DETECT_FLAPPING, asset, NULL, now))
                fire(d, DETECT_FLAPPING, asset, address, broker, NULL,
                     json_pack("{s:I, s:I, s:s?}", "connects", (json_int_t)n, "window",
                               (json_int_t)r->window, "address", address));
        }
        if (d->cfg.detect[DETECT_REVOKED_CONNECTED].response != DETECT_OFF)
            check_revoked(d, broker, asset, address, serial, now);
    }
}

struct silent_ctx {
    struct detect *d;
    int64_t now;
    json_t *found; /* [asset, last_seen] pairs */
};

/* How long an asset may stay silent: [detect] silent_window, or sooner silent_threshold times
 * its usual interval between connects once that is known (at least SILENT_LIMIT_MIN). */
static int64_t silent_limit(const struct detect *d, const struct presence *p)
{
    int64_t limit = window_of(d, DETECT_SILENT), learned;

    if (p != NULL && p->gaps >= SILENT_GAPS_MIN) {
        learned = (int64_t)d->cfg.detect[DETECT_SILENT].threshold * p->interval;
        if (learned < SILENT_LIMIT_MIN)
            learned = SILENT_LIMIT_MIN;
        if (learned < limit)
            limit = learned;
    }
    return limit;
}

static int silent_asset(const struct inventory_asset *a, void *ctx)
{
    struct silent_ctx *s = ctx;
    struct presence *p = presence_get(s->d, a->id, 0);
    int64_t heard = a->last_seen, window = silent_limit(s->d, p);

    if (a->last_seen == 0 || a->kind != INV_KIND_DEVICE)
        return 0;
    if (p != NULL) {
        if (p->connections > 0 || p->silent_reported >= p->last_heard)
            return 0;
        if (p->last_heard > heard)
            heard = p->last_heard;
    }
    /* What this process did not hear itself it gives a window from its start. */
    if (heard < s->d->started_at && p == NULL)
        heard = s->d->started_at;
    if (heard > s->now - window)
        return 0;
    return json_array_append_new(s->found, json_pack("[s,I,I,I]", a->id, (json_int_t)a->last_seen,
                                                     (json_int_t)window,
                                                     (json_int_t)(p != NULL ? p->interval : 0)));
}

/* Active devices not heard of for a window (not connected, no traffic). */
static void sweep_silent(struct detect *d, int64_t now)
{
    struct silent_ctx s = {d, now, json_array()};

    if (s.found == NULL)
        return;
    if (inventory_asset_list(d->inv, INV_STATE_ACTIVE, INV_KIND_DEVICE, silent_asset, &s) ==
        MQPKI_OK) {
        for (size_t i = 0; i < json_array_size(s.found); i++) {
            json_t *pair = json_array_get(s.found, i);
            const char *id = json_string_value(json_array_get(pair, 0));
            struct presence *p = presence_get(d, id, 1);
            if (p != NULL)
                p->silent_reported = p->last_heard = now;
            d->firing = NULL;
            /* Replicas sweeping the same store name the same silence. */
            snprintf(d->event, sizeof(d->event), "silent-%lld",
                     (long long)json_integer_value(json_array_get(pair, 1)));
            fire(d, DETECT_SILENT, id, NULL, NULL, NULL,
                 json_pack("{s:I, s:I, s:I}", "last_seen",
                           (json_int_t)json_integer_value(json_array_get(pair, 1)), "limit",
                           (json_int_t)json_integer_value(json_array_get(pair, 2)),
                           "usual_interval",
                           (json_int_t)json_integer_value(json_array_get(pair, 3))));
        }
    }
    mqpki_err_clear();
    json_decref(s.found);
}

/* The id the feed gave an event (feed.c: BOOT-SEQ-N), or NULL. */
static const char *event_id(json_t *ev)
{
    const char *s = str(ev, "eid");

    return s != NULL && s[0] != '\0' && strlen(s) < 64 &&
                   strspn(s, "0123456789abcdef-") == strlen(s)
               ? s
               : NULL;
}

/* Takes up to BATCH_MAX queued events: stores them in one transaction, then detects. */
static void work(struct detect *d, struct item *batch, size_t n)
{
    json_t *evs[BATCH_MAX];
    int64_t now = mqpki_now();
    int rc = inventory_begin(d->inv);

    for (size_t i = 0; i < n; i++) {
        struct inventory_broker_event e;
        const char *s;
        evs[i] = json_loads(batch[i].json, JSON_REJECT_DUPLICATES, NULL);
        if (rc != MQPKI_OK || evs[i] == NULL)
            continue;
        memset(&e, 0, sizeof(e));
        e.time = now;
        snprintf(e.broker, sizeof(e.broker), "%s", batch[i].broker);
        snprintf(e.type, sizeof(e.type), "%s", (s = str(evs[i], "type")) ? s : "?");
        if ((s = event_id(evs[i])) != NULL)
            snprintf(e.eid, sizeof(e.eid), "%s", s);
        if ((s = str(evs[i], "asset")) != NULL && proto_asset_id_valid(s))
            snprintf(e.asset, sizeof(e.asset), "%s", s);
        if ((s = str(evs[i], "address")) != NULL && strlen(s) < sizeof(e.address))
            snprintf(e.address, sizeof(e.address), "%s", s);
        e.detail = batch[i].json;
        if (inventory_events_add(d->inv, &e, NULL) != MQPKI_OK)
            mqpki_err_clear(); /* a hostile event is not stored; the others are */
        metrics_detect_event();
    }
    if (rc == MQPKI_OK && (rc = inventory_commit(d->inv)) != MQPKI_OK)
        inventory_rollback(d->inv);
    if (rc != MQPKI_OK)
        mqpki_log(MQPKI_LOG_WARN, "detect: %zu events not stored: %s", n, mqpki_err_detail(rc));
    for (size_t i = 0; i < n; i++) {
        const char *eid = evs[i] != NULL ? event_id(evs[i]) : NULL;
        if (eid != NULL)
            snprintf(d->event, sizeof(d->event), "%s/%s", batch[i].broker, eid);
        else
            d->event[0] = '\0';
        if (evs[i] != NULL)
            detect_one(d, batch[i].broker, evs[i], now);
        json_decref(evs[i]);
        free(batch[i].json);
    }
}

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void periodic(struct detect *d)
{
    int64_t now = mqpki_now(), deleted = 0;

    /* A quarantine this thread sets is offered at once (fire()); one another replica or the
     * CLI set or lifted is found here, at most a second later, not after every batch. */
    if (mono_ms() >= d->next_quar_ms) {
        d->next_quar_ms = mono_ms() + QUAR_SYNC_MS;
        sync_quarantine(d);
    }
    hooks_reap(d);
    if (now >= d->next_prune) {
        d->next_prune = now + PRUNE_EVERY;
        if (inventory_events_prune(d->inv, d->cfg.events_max_rows, now - d->cfg.events_max_age,
                                   &deleted) != MQPKI_OK)
            mqpki_log(MQPKI_LOG_WARN, "detect: event retention: %s",
                      mqpki_err_detail(MQPKI_ERR_STORE));
        else if (deleted > 0)
            mqpki_log(MQPKI_LOG_DEBUG, "detect: %lld old events pruned", (long long)deleted);
        mqpki_err_clear();
    }
    if (d->cfg.detect[DETECT_SILENT].response != DETECT_OFF && now >= d->next_silent) {
        int64_t w = window_of(d, DETECT_SILENT) / 4;
        d->next_silent = now + (w < 1 ? 1 : w > 60 ? 60 : w);
        sweep_silent(d, now);
    }
}

static void *detect_thread(void *arg)
{
    struct detect *d = arg;
    struct item *batch = calloc(BATCH_MAX, sizeof(*batch));

    while (batch != NULL) {
        struct timespec until;
        size_t n = 0;
        uint64_t dropped;
        /* Idle: wake for the next look at the quarantine list, at least once a second. */
        int64_t wake = mono_ms() + 1000;
        if (d->next_quar_ms < wake)
            wake = d->next_quar_ms;
        until.tv_sec = (time_t)(wake / 1000);
        until.tv_nsec = (long)(wake % 1000) * 1000000L;
        pthread_mutex_lock(&d->lock);
        while (!d->stop && d->q_n == 0 &&
               pthread_cond_timedwait(&d->cond, &d->lock, &until) != ETIMEDOUT)
            ;
        /* Brokers send each tick's events, often one or two: a durable commit for each would
         * cost more than the events (one per connect at a few hundred connects a second). The
         * first event waits GATHER_MS for more, so a burst shares one commit. */
        if (!d->stop && d->q_n > 0 && d->q_n < BATCH_MAX) {
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_nsec += GATHER_MS * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            while (!d->stop && d->q_n < BATCH_MAX &&
                   pthread_cond_timedwait(&d->cond, &d->lock, &until) != ETIMEDOUT)
                ;
        }
        if (d->stop) {
            pthread_mutex_unlock(&d->lock);
            break;
        }
        for (; n < BATCH_MAX && d->q_n > 0; n++) {
            batch[n] = d->q[d->q_head];
            d->q_head = (d->q_head + 1) % QUEUE_MAX;
            d->q_n--;
        }
        dropped = d->q_dropped;
        d->q_dropped = 0;
        pthread_mutex_unlock(&d->lock);
        if (dropped > 0) {
            metrics_detect_dropped(dropped);
            mqpki_log(MQPKI_LOG_WARN, "detect: %llu events dropped (queue of %d full)",
                      (unsigned long long)dropped, QUEUE_MAX);
        }
        if (n > 0)
            work(d, batch, n);
        periodic(d);
    }
    free(batch);
    return NULL;
}

void detect_sink(void *ctx, const char *broker, json_t *ev, int64_t dropped)
{
    struct detect *d = ctx;
    char *json;

    if (d == NULL)
        return;
    if (ev == NULL) {
        metrics_detect_dropped(dropped > 0 ? (uint64_t)dropped : 0);
        return;
    }
    if ((json = json_dumps(ev, JSON_COMPACT)) == NULL)
        return;
    if (strlen(json) > EVENT_JSON_MAX) {
        free(json);
        return;
    }
    pthread_mutex_lock(&d->lock);
    if (d->q_n == QUEUE_MAX) {
        d->q_dropped++;
        free(json);
    } else {
        struct item *it = &d->q[(d->q_head + d->q_n) % QUEUE_MAX];
        snprintf(it->broker, sizeof(it->broker), "%s", broker);
        it->json = json;
        d->q_n++;
        pthread_cond_signal(&d->cond);
    }
    pthread_mutex_unlock(&d->lock);
}

int detect_start(struct daemon_ctx *ctx, struct detect **out)
{
    struct lifecycle_config lcfg;
    struct detect *d;
    int rc;

    *out = NULL;
    if ((d = calloc(1, sizeof(*d))) == NULL || (d->q = calloc(QUEUE_MAX, sizeof(*d->q))) == NULL) {
        free(d);
        return MQPKI_ERR_NOMEM;
    }
    d->ctx = ctx;
    d->cfg = *datadir_config(ctx->dd);
    d->started_at = mqpki_now();
    pthread_mutex_init(&d->lock, NULL);
    {
        /* Waits on the monotonic clock: a step of the wall clock never stalls the events. */
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&d->cond, &ca);
        pthread_condattr_destroy(&ca);
    }
    datadir_lifecycle_config(&d->cfg, &lcfg);
    if ((rc = inventory_open(ctx->db_path, &d->inv)) != MQPKI_OK ||
        (rc = lifecycle_new(d->inv, &lcfg, &d->lc)) != MQPKI_OK)
        goto out;
    if (pthread_create(&d->thread, NULL, detect_thread, d) != 0) {
        rc = mqpki_fail(MQPKI_ERR_INTERNAL, "detect: cannot start a thread");
        goto out;
    }
    d->started = 1;
    *out = d;
    d = NULL;
out:
    detect_stop(d);
    return rc;
}

void detect_stop(struct detect *d)
{
    if (d == NULL)
        return;
    if (d->started) {
        pthread_mutex_lock(&d->lock);
        d->stop = 1;
        pthread_cond_broadcast(&d->cond);
        pthread_mutex_unlock(&d->lock);
        pthread_join(d->thread, NULL);
    }
    for (size_t i = 0; i < d->q_n; i++)
        free(d->q[(d->q_head + i) % QUEUE_MAX].json);
    for (size_t i = 0; i < TRACK_BUCKETS; i++) {
        for (struct track *t = d->tracks[i], *next; t != NULL; t = next) {
            next = t->next;
            free(t);
        }
        for (struct presence *p = d->pres[i], *next; p != NULL; p = next) {
            next = p->next;
            free(p);
        }
    }
    hooks_reap(d);
    lifecycle_free(d->lc);
    inventory_close(d->inv);
    pthread_mutex_destroy(&d->lock);
    pthread_cond_destroy(&d->cond);
    free(d->quar_json);
    free(d->q);
    free(d);
}
