/* daemon: counters for /metrics (Prometheus text format) and the /readyz readiness report. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "ca.h"
#include "common.h"
#include "daemon.h"
#include "datadir.h"
#include "feed.h"
#include "inventory.h"
#include "proto.h"

/* "challenge": a request without credentials answered 401 to ask for them (not a failure). */
static const char *const results[] = {"ok",         "bad_request", "unauthorized", "challenge",
                                      "forbidden",  "too_large",   "rate_limited", "unavailable",
                                      "bad_method", "not_found",   "error"};
#define N_RESULTS (sizeof(results) / sizeof(results[0]))
static const double buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
#define N_BUCKETS (sizeof(buckets) / sizeof(buckets[0]))

static atomic_ullong enrollments[N_RESULTS];
static atomic_ullong latency_le[N_BUCKETS];
static atomic_ullong latency_count, requests;
static double latency_sum;
static pthread_mutex_t sum_lock = PTHREAD_MUTEX_INITIALIZER;

void metrics_request(void)
{
    atomic_fetch_add(&requests, 1);
}

void metrics_enrollment(const char *result, double seconds)
{
    size_t i;

    for (i = 0; i < N_RESULTS - 1 && strcmp(results[i], result) != 0; i++)
        ;
    atomic_fetch_add(&enrollments[i], 1);
    for (size_t b = 0; b < N_BUCKETS; b++)
        if (seconds <= buckets[b])
            atomic_fetch_add(&latency_le[b], 1);
    atomic_fetch_add(&latency_count, 1);
    pthread_mutex_lock(&sum_lock);
    latency_sum += seconds;
    pthread_mutex_unlock(&sum_lock);
}

/* The newest full and delta CRL numbers, the full CRL's age and the publications still open,
 * from the store (the one truth about CRLs). */
struct crl_facts {
    long long full, delta, age, open;
};

static void crl_facts(struct inventory *inv, struct crl_facts *f)
{
    struct inventory_crl c;
    int64_t open = -1;

    f->full = f->delta = f->age = f->open = -1;
    if (inv == NULL)
        return;
    if (inventory_crl_latest(inv, INV_CRL_FULL, &c) == MQPKI_OK) {
        f->full = c.number;
        f->age = (long long)(mqpki_now() - c.this_update);
    }
    if (inventory_crl_latest(inv, INV_CRL_DELTA, &c) == MQPKI_OK)
        f->delta = c.number;
    if (inventory_crl_open(inv, NULL, NULL, &open) == MQPKI_OK)
        f->open = open;
    mqpki_err_clear();
}

#define METRICS_BROKERS_MAX 256

struct broker_rows {
    struct mqpki_buf *b;
    const struct feed_broker *linked;
    size_t n;
};

/* What a linked broker reported holding (removed brokers keep their row, not their metric). */
static int broker_crl_row(const char *broker, int64_t full, int64_t delta, int64_t at, void *ctx)
{
    struct broker_rows *r = ctx;

    (void)at;
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->linked[i].name, broker) == 0) {
            mqpki_buf_printf(r->b, "mqpki_broker_crl_number{broker=\"%s\",kind=\"full\"} %lld\n",
                             broker, (long long)full);
            mqpki_buf_printf(r->b, "mqpki_broker_crl_number{broker=\"%s\",kind=\"delta\"} %lld\n",
                             broker, (long long)delta);
        }
    return 0;
}

/* The CA certificates' and the live leaf certificates' expiry, the assets by state, the
 * brokers' feed links and what each broker acknowledged: the operator's day-two view. */
static void render_fleet(struct daemon_ctx *ctx, struct inventory *inv, struct mqpki_buf *b)
{
    static struct feed_broker linked[METRICS_BROKERS_MAX];
    static pthread_mutex_t linked_lock = PTHREAD_MUTEX_INITIALIZER;
    struct ca *ca = datadir_ca(ctx->dd);
    X509 *certs[2] = {ca != NULL ? ca_root_cert(ca) : NULL,
                      ca != NULL ? ca_issuing_cert(ca) : NULL};
    static const char *const ca_names[2] = {"root", "issuing"};
    struct inventory_expiry ex;
    int64_t counts[INV_STATE_COUNT_], t;
    struct broker_rows rows;
    size_t n;

    mqpki_buf_printf(b,
                     "# HELP mqpki_build_info The running mqpkid's version.\n"
                     "# TYPE mqpki_build_info gauge\n"
                     "mqpki_build_info{version=\"%s\"} 1\n",
                     MQPKI_VERSION);
    mqpki_buf_printf(
        b, "# HELP mqpki_ca_not_after_timestamp_seconds Expiry (notAfter) of each CA certificate.\n"
           "# TYPE mqpki_ca_not_after_timestamp_seconds gauge\n");
    for (int i = 0; i < 2; i++)
        if (certs[i] != NULL && proto_asn1_time(X509_get0_notAfter(certs[i]), &t) == 0)
            mqpki_buf_printf(b, "mqpki_ca_not_after_timestamp_seconds{ca=\"%s\"} %lld\n",
                             ca_names[i], (long long)t);
    if (inv != NULL && inventory_cert_expiry(inv, mqpki_now(), &ex) == MQPKI_OK) {
        mqpki_buf_printf(
            b,
            "# HELP mqpki_leaf_not_after_earliest_timestamp_seconds Earliest notAfter of the valid "
            "certificates issued by each CA (0 when none).\n"
            "# TYPE mqpki_leaf_not_after_earliest_timestamp_seconds gauge\n"
            "mqpki_leaf_not_after_earliest_timestamp_seconds{ca=\"issuing\"} %lld\n"
            "# HELP mqpki_certificates_expiring Valid certificates expiring within a window.\n"
            "# TYPE mqpki_certificates_expiring gauge\n"
            "mqpki_certificates_expiring{ca=\"issuing\",within=\"7d\"} %lld\n"
            "mqpki_certificates_expiring{ca=\"issuing\",within=\"30d\"} %lld\n",
            (long long)ex.earliest, (long long)ex.within_7d, (long long)ex.within_30d);
    }
    mqpki_err_clear();
    if (inv != NULL && inventory_asset_count_by_state(inv, counts) == MQPKI_OK) {
        mqpki_buf_printf(
            b, "# HELP mqpki_assets Assets by lifecycle state.\n# TYPE mqpki_assets gauge\n");
        for (int s = 0; s < INV_STATE_COUNT_; s++)
            mqpki_buf_printf(b, "mqpki_assets{state=\"%s\"} %lld\n", inventory_state_name(s),
                             (long long)counts[s]);
    }
    mqpki_err_clear();
    /* One scrape at a time fills the table (256 brokers do not fit a worker's stack kindly). */
    pthread_mutex_lock(&linked_lock);
    n = feed_brokers(ctx->feed, linked, METRICS_BROKERS_MAX);
    mqpki_buf_printf(
        b, "# HELP mqpki_broker_link_up 1 while mqpkid's CRL feed is connected to the broker.\n"
           "# TYPE mqpki_broker_link_up gauge\n");
    for (size_t i = 0; i < n; i++)
        mqpki_buf_printf(b, "mqpki_broker_link_up{broker=\"%s\"} %d\n", linked[i].name,
                         linked[i].connected);
    mqpki_buf_printf(
        b, "# HELP mqpki_broker_crl_number CRL numbers the broker's plugin acknowledged holding "
           "(-1: none).\n# TYPE mqpki_broker_crl_number gauge\n");
    rows.b = b;
    rows.linked = linked;
    rows.n = n;
    if (inv != NULL)
        (void)inventory_broker_crl_list(inv, broker_crl_row, &rows);
    pthread_mutex_unlock(&linked_lock);
    mqpki_err_clear();
}

/* Detect: events stored, events dropped (broker rings, mqpkid's queue), alerts by rule. */
static atomic_ullong detect_events, detect_dropped, detect_alerts[DETECT_COUNT_];

void metrics_detect_event(void)
{
    atomic_fetch_add(&detect_events, 1);
}

void metrics_detect_dropped(uint64_t n)
{
    atomic_fetch_add(&detect_dropped, n);
}

void metrics_detect_alert(const char *rule)
{
    for (int i = 0; i < DETECT_COUNT_; i++)
        if (strcmp(rule, datadir_detector_name(i)) == 0)
            atomic_fetch_add(&detect_alerts[i], 1);
}

char *metrics_render(struct daemon_ctx *ctx, size_t *len)
{
    struct mqpki_buf b = {0};
    struct inventory *inv = http_thread_inventory(ctx);
    struct crl_facts crl;
    int64_t revoked = -1;
    double sum;

    if (inv == NULL || inventory_cert_count(inv, INV_CERT_REVOKED, &revoked) != MQPKI_OK)
        revoked = -1;
    crl_facts(inv, &crl);
    pthread_mutex_lock(&sum_lock);
    sum = latency_sum;
    pthread_mutex_unlock(&sum_lock);

    mqpki_buf_printf(&b,
                     "# HELP mqpki_http_requests_total HTTP requests served.\n"
                     "# TYPE mqpki_http_requests_total counter\n"
                     "mqpki_http_requests_total %llu\n",
                     (unsigned long long)atomic_load(&requests));
    mqpki_buf_printf(
        &b, "# HELP mqpki_enrollments_total EST enrollments and re-enrollments by result.\n"
            "# TYPE mqpki_enrollments_total counter\n");
    for (size_t i = 0; i < N_RESULTS; i++)
        mqpki_buf_printf(&b, "mqpki_enrollments_total{result=\"%s\"} %llu\n", results[i],
                         (unsigned long long)atomic_load(&enrollments[i]));
    mqpki_buf_printf(
        &b, "# HELP mqpki_enrollment_seconds Time from request to response of EST enrollments.\n"
            "# TYPE mqpki_enrollment_seconds histogram\n");
    for (size_t i = 0; i < N_BUCKETS; i++)
        mqpki_buf_printf(&b, "mqpki_enrollment_seconds_bucket{le=\"%g\"} %llu\n", buckets[i],
                         (unsigned long long)atomic_load(&latency_le[i]));
    mqpki_buf_printf(&b, "mqpki_enrollment_seconds_bucket{le=\"+Inf\"} %llu\n",
                     (unsigned long long)atomic_load(&latency_count));
    mqpki_buf_printf(&b, "mqpki_enrollment_seconds_sum %.6f\nmqpki_enrollment_seconds_count %llu\n",
                     sum, (unsigned long long)atomic_load(&latency_count));
    mqpki_buf_printf(
        &b,
        "# HELP mqpki_certificates_revoked Revoked or held certificates in the store.\n"
        "# TYPE mqpki_certificates_revoked gauge\n"
        "mqpki_certificates_revoked %lld\n",
        (long long)revoked);
    mqpki_buf_printf(
        &b,
        "# HELP mqpki_crl_number Number of the newest full CRL.\n"
        "# TYPE mqpki_crl_number gauge\nmqpki_crl_number %lld\n"
        "# HELP mqpki_crl_delta_number Number of the newest delta CRL.\n"
        "# TYPE mqpki_crl_delta_number gauge\nmqpki_crl_delta_number %lld\n"
        "# HELP mqpki_crl_age_seconds Seconds since the newest full CRL's thisUpdate.\n"
        "# TYPE mqpki_crl_age_seconds gauge\nmqpki_crl_age_seconds %lld\n"
        "# HELP mqpki_crl_publications_open CRL publications not finished (should stay 0).\n"
        "# TYPE mqpki_crl_publications_open gauge\nmqpki_crl_publications_open %lld\n",
        crl.full, crl.delta, crl.age, crl.open);
    render_fleet(ctx, inv, &b);
    mqpki_buf_printf(
        &b,
        "# HELP mqpki_detect_events_total Broker security events received.\n"
        "# TYPE mqpki_detect_events_total counter\nmqpki_detect_events_total %llu\n"
        "# HELP mqpki_detect_events_dropped_total Events dropped (broker ring or mqpkid queue "
        "full).\n"
        "# TYPE mqpki_detect_events_dropped_total counter\n"
        "mqpki_detect_events_dropped_total %llu\n"
        "# HELP mqpki_detect_alerts_total Alerts raised, by rule.\n"
        "# TYPE mqpki_detect_alerts_total counter\n",
        (unsigned long long)atomic_load(&detect_events),
        (unsigned long long)atomic_load(&detect_dropped));
    for (int i = 0; i < DETECT_COUNT_; i++)
        mqpki_buf_printf(&b, "mqpki_detect_alerts_total{rule=\"%s\"} %llu\n",
                         datadir_detector_name(i),
                         (unsigned long long)atomic_load(&detect_alerts[i]));
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return (char *)b.p;
}

char *health_render(struct daemon_ctx *ctx, int *ready, size_t *len)
{
    struct inventory *inv = http_thread_inventory(ctx);
    struct crl_facts crl;
    char text[32];
    int token_ok, store_ok, total = 0, linked = 0;
    json_t *v;
    char *out;

    store_ok = inv != NULL && inventory_meta_get(inv, "ca.name", text, sizeof(text)) == MQPKI_OK;
    token_ok = ca_selftest(datadir_ca(ctx->dd)) == MQPKI_OK;
    /* Ready to enroll: the store and the token. A broker down does not stop enrollment, so the
     * feed is reported (and in /metrics per broker) but never makes mqpkid unready. */
    *ready = token_ok && store_ok;
    feed_links(ctx->feed, &total, &linked);
    crl_facts(inv, &crl);
    v = json_pack("{s:s, s:s, s:s, s:s, s:{s:i, s:i}, s:{s:I, s:I, s:I}}", "status",
                  *ready ? "ok" : "failing", "token", token_ok ? "ok" : "failing", "store",
                  store_ok ? "ok" : "failing", "feed",
                  ctx->feed == NULL || total == 0 ? "off"
                  : linked == total               ? "ok"
                                                  : "degraded",
                  "brokers", "registered", total, "linked", linked, "crl", "full",
                  (json_int_t)crl.full, "delta", (json_int_t)crl.delta, "publications_open",
                  (json_int_t)crl.open);
    mqpki_err_clear();
    out = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (out != NULL)
        *len = strlen(out);
    return out;
}
