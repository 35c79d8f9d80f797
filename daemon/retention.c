/*
 * retention: mqpkid's daily tidy ([retention] in mqpki.conf, docs/operations.md). A thread of its
 * own with its own store connection: 10 minutes after start, then every 24 hours (once a day
 * across replicas sharing a store: inventory_job_due), it removes the
 * certificates expired more than expired_cert_days ago and the tokens dead for token_days
 * (inventory_tidy: one audited transaction), then gives the space back by incremental vacuum in
 * small steps, so enrollment's commits go on in between. A store that has not switched to
 * incremental vacuum yet is left for `mqpki tidy` (its one full VACUUM blocks writers).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "daemon.h"
#include "datadir.h"
#include "inventory.h"

#define RETENTION_FIRST_S  600
#define RETENTION_EVERY_S  86400
#define RETENTION_STEP_PGS 256
#define RETENTION_SLACK_S  3600 /* replicas started apart still tidy about once a day */

struct retention {
    struct daemon_ctx *ctx;
    pthread_t thread;
    int started, stop;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int noted; /* "switch with mqpki tidy" said once */
};

int retention_run(struct daemon_ctx *ctx, const char *actor, int *noted)
{
    const struct datadir_config *cfg = datadir_config(ctx->dd);
    struct inventory *inv = NULL;
    struct inventory_tidy t;
    int64_t now = mqpki_now(), freed = 0;
    int switched = 0, due = 0, rc;

    if ((rc = inventory_open(ctx->db_path, &inv)) != MQPKI_OK)
        goto out;
    /* Once a day across the replicas of a shared store: the first to find it due claims it. */
    if ((rc = inventory_job_due(inv, "tidy", now, RETENTION_EVERY_S - RETENTION_SLACK_S,
                                &due)) != MQPKI_OK)
        goto out;
    if (!due) {
        mqpki_log(MQPKI_LOG_DEBUG, "retention: today's tidy ran already (another mqpkid)");
        goto out;
    }
    if ((rc = inventory_tidy(inv, now, now - (int64_t)cfg->expired_cert_days * 86400,
                             now - (int64_t)cfg->token_days * 86400, 0, actor, &t)) != MQPKI_OK)
        goto out;
    rc = inventory_vacuum(inv, RETENTION_STEP_PGS, 0, &freed, &switched);
    if (rc == MQPKI_ERR_STATE) {
        if (noted == NULL || !*noted)
            mqpki_log(MQPKI_LOG_INFO, "retention: %s", mqpki_err_detail(rc));
        if (noted != NULL)
            *noted = 1;
        mqpki_err_clear();
        rc = MQPKI_OK;
    }
    mqpki_log(MQPKI_LOG_INFO,
              "retention: removed %lld certificates expired over %d days and %lld dead tokens; "
              "%lld pages freed",
              (long long)t.certs, cfg->expired_cert_days, (long long)t.tokens, (long long)freed);
out:
    if (rc != MQPKI_OK)
        mqpki_log(MQPKI_LOG_WARN, "retention: %s", mqpki_err_detail(rc));
    inventory_close(inv);
    return rc;
}

static void *run(void *arg)
{
    struct retention *r = arg;
    struct timespec until;
    int64_t next = mqpki_now() + RETENTION_FIRST_S;

    pthread_mutex_lock(&r->lock);
    while (!r->stop) {
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        (void)pthread_cond_timedwait(&r->wake, &r->lock, &until);
        if (r->stop || mqpki_now() < next)
            continue;
        pthread_mutex_unlock(&r->lock);
        (void)retention_run(r->ctx, "mqpkid:retention", &r->noted);
        next = mqpki_now() + RETENTION_EVERY_S;
        pthread_mutex_lock(&r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

int retention_start(struct daemon_ctx *ctx, struct retention **out)
{
    struct retention *r;

    *out = NULL;
    if ((r = calloc(1, sizeof(*r))) == NULL)
        return MQPKI_ERR_NOMEM;
    r->ctx = ctx;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->wake, NULL);
    if (pthread_create(&r->thread, NULL, run, r) != 0) {
        retention_stop(r);
        return mqpki_fail(MQPKI_ERR_INTERNAL, "retention: cannot start a thread");
    }
    r->started = 1;
    *out = r;
    return MQPKI_OK;
}

void retention_stop(struct retention *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->lock);
    r->stop = 1;
    pthread_cond_signal(&r->wake);
    pthread_mutex_unlock(&r->lock);
    if (r->started)
        pthread_join(r->thread, NULL);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->wake);
    free(r);
}
