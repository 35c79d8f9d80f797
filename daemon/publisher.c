/*
 * publisher: mqpkid's one CRL publisher (daemon.h). A thread with its own store connection
 * works through the outbox (lifecycle_publish) at start, every second, and at once when asked
 * (the CLI over the control socket after a revocation). Each CRL goes to the feed the moment it
 * is durable in the store, then to the crl/ files. Every second it also signs a full CRL when
 * one is due, and offers the feed any CRL another process signed meanwhile. It also signs the
 * audit checkpoints (audit_tick) and offers the newest one to the feed.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "daemon.h"
#include "datadir.h"
#include "feed.h"
#include "inventory.h"
#include "lifecycle.h"

#define TICK_MS 1000
/* How long a cycle waits for a command that publishes by itself (mqpkid was not reachable when
 * it started): long enough for a large full CRL, short enough to retry on the next tick. */
#define PUBLISHER_LOCK_MS 5000

struct publisher {
    struct daemon_ctx *ctx;
    struct inventory *inv;
    struct lifecycle *lc;
    pthread_t thread;
    int started;
    pthread_mutex_t lock;
    pthread_mutex_t feed_order; /* one offer to the feed at a time (offer) */
    pthread_cond_t cond;
    int stop;
    uint64_t requested, done; /* generations: a request is served by a later completed cycle */
    int resend;               /* a request asked for the CRLs to be sent to the brokers again */
    int last_rc;
    char last_error[256];
    struct lifecycle_publication last;
    int64_t offered[2]; /* newest full and delta CRL handed to the feed */
    int64_t cp_offered; /* newest audit checkpoint handed to the feed */
    int64_t cp_next;    /* monotonic second of the next scheduled audit checkpoint */
    pthread_t listener; /* PostgreSQL: wakes the cycle when any replica commits a CRL */
    int listening;
    /* The full CRL signer: a thread with its own store connection that signs a pending full
     * CRL off the publication lock (lifecycle_full_sign), so that no delta waits for it. */
    pthread_t full_thread;
    int full_started;
    int full_wanted;       /* under lock: a full CRL is pending */
    int full_busy;         /* under lock: the signer is at work (catch-up leaves full CRLs to it) */
    int64_t full_signed;   /* under lock: newest full CRL it signed */
    int64_t full_anchored; /* under lock: newest of those an audit checkpoint followed */
};

/* Asks for a cycle without waiting for it. */
static void kick(struct publisher *p)
{
    pthread_mutex_lock(&p->lock);
    p->requested++;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

/*
 * Replicas over one PostgreSQL store: a CRL reserved or signed by any of them NOTIFYs the others
 * when its transaction commits, and this thread turns that into a cycle at once (the CRL reaches
 * this replica's brokers within milliseconds, not at the next tick). Its own connection waits
 * for notifications only; a lost one is reopened, and the one-second tick covers the gap.
 */
static void *listen_run(void *arg)
{
    struct publisher *p = arg;
    struct inventory *inv = NULL;
    int stop = 0, rc;

    while (!stop) {
        if (inv == NULL && (inventory_open(p->ctx->db_path, &inv) != MQPKI_OK ||
                            inventory_listen(inv) != MQPKI_OK)) {
            mqpki_log(MQPKI_LOG_ERROR, "CRL notifications: %s (retrying)",
                      mqpki_err_detail(MQPKI_ERR_STORE));
            inventory_close(inv);
            inv = NULL;
            sleep(1);
        } else if (inv != NULL) {
            rc = inventory_wait(inv, 250);
            if (rc == 1)
                kick(p);
            else if (rc < 0 || rc > 1)
                mqpki_err_clear();
        }
        pthread_mutex_lock(&p->lock);
        stop = p->stop;
        pthread_mutex_unlock(&p->lock);
    }
    inventory_close(inv);
    return NULL;
}

static int64_t offered(struct publisher *p, int kind)
{
    int64_t n;

    pthread_mutex_lock(&p->lock);
    n = p->offered[kind];
    pthread_mutex_unlock(&p->lock);
    return n;
}

static void offered_set(struct publisher *p, int kind, int64_t number)
{
    pthread_mutex_lock(&p->lock);
    if (number > p->offered[kind])
        p->offered[kind] = number;
    pthread_mutex_unlock(&p->lock);
}

/* The full CRL signer is at work and the brokers fetch full CRLs (notices): the base of a delta
 * is offered by that signer once exported, and not read back from the store (40 MB, most of a
 * second) ahead of the delta, which the brokers apply ahead of its base meanwhile. */
static int base_coming(struct publisher *p)
{
    int busy;

    if (!feed_full_by_notice(p->ctx->feed, SIZE_MAX))
        return 0;
    pthread_mutex_lock(&p->lock);
    busy = p->full_busy;
    pthread_mutex_unlock(&p->lock);
    return busy;
}

/*
 * From the publisher's thread and the full CRL signer's, one at a time (feed_order). A broker
 * refuses a delta based on a full CRL it does not hold, and each link sends a number once: so
 * a delta whose base this process has not fed yet (the full CRL signer committed it and is
 * about to feed it, or another replica signed it) takes its base along first, from the store.
 * Only the publisher's thread offers deltas, so p->inv is its own connection here.
 */
static void offer(struct publisher *p, const struct inventory_crl *c, const unsigned char *der,
                  size_t len)
{
    if (c->kind != INV_CRL_FULL && c->kind != INV_CRL_DELTA)
        return;
    pthread_mutex_lock(&p->feed_order);
    if (c->kind == INV_CRL_DELTA && c->base > offered(p, INV_CRL_FULL) && !base_coming(p)) {
        unsigned char *base = NULL;
        size_t base_len = 0;
        if (inventory_crl_der(p->inv, c->base, &base, &base_len) == MQPKI_OK) {
            feed_offer(p->ctx->feed, INV_CRL_FULL, c->base, base, base_len);
            offered_set(p, INV_CRL_FULL, c->base);
        } else {
            mqpki_log(MQPKI_LOG_WARN, "CRL %lld: its base, full CRL %lld, cannot go first: %s",
                      (long long)c->number, (long long)c->base, mqpki_err_detail(MQPKI_ERR_STORE));
        }
        free(base);
        mqpki_err_clear();
    }
    feed_offer(p->ctx->feed, c->kind, c->number, der, len);
    offered_set(p, c->kind, c->number);
    pthread_mutex_unlock(&p->feed_order);
}

/* A full CRL the brokers fetch (a notice names crl/'s URL): offered once crl/ holds it. */
static int by_notice(struct publisher *p, const struct inventory_crl *c, size_t len)
{
    return c->kind == INV_CRL_FULL && feed_full_by_notice(p->ctx->feed, len);
}

static void on_signed(void *ctx, const struct inventory_crl *c, const unsigned char *der,
                      size_t len)
{
    if (!by_notice(ctx, c, len))
        offer(ctx, c, der, len);
}

static int on_export(void *ctx, const struct inventory_crl *c, const unsigned char *der, size_t len)
{
    struct publisher *p = ctx;
    int rc = datadir_crl_export(p->ctx->dd, c, der, len);

    if (rc == MQPKI_OK && by_notice(p, c, len) && c->number > offered(p, INV_CRL_FULL))
        offer(p, c, der, len);

    /* The older generations' copies of it, made by the export (datadir_crl_export). */
    if (rc == MQPKI_OK)
        feed_offer_generations(p->ctx->feed);
    return rc;
}

/* A CRL signed by another process (a command run while this one was not reachable) reaches the
 * brokers too: the store, not this process, is the source. */
static void catch_up(struct publisher *p)
{
    int64_t full = -1;

    for (int k = INV_CRL_FULL; k <= INV_CRL_DELTA; k++) {
        struct inventory_crl c;
        unsigned char *der = NULL;
        size_t len = 0;
        int busy, feed, export;
        if (inventory_crl_latest(p->inv, k, &c) != MQPKI_OK)
            continue;
        if (k == INV_CRL_FULL)
            full = c.number;
        /* One the signer committed and is feeding and exporting right now: not twice. */
        pthread_mutex_lock(&p->lock);
        busy = p->full_busy;
        pthread_mutex_unlock(&p->lock);
        if (k == INV_CRL_FULL && busy)
            continue;
        /* Never a lower number after a higher one: a delta older than the full CRL is spent. */
        feed = c.number > offered(p, k) && !(k == INV_CRL_DELTA && c.number <= full);
        /* This replica's crl/ (served over HTTP) follows the store, also what others signed. */
        export = c.number > datadir_crl_exported(p->ctx->dd, k) &&
                 !(k == INV_CRL_DELTA && c.number <= full);
        if ((!feed && !export) || inventory_crl_der(p->inv, c.number, &der, &len) != MQPKI_OK) {
            free(der);
            continue;
        }
        /* The file first: a full CRL that goes as a notice names it. */
        if (export) {
            int erc = datadir_crl_export(p->ctx->dd, &c, der, len);
            if (erc != MQPKI_OK && erc != MQPKI_ERR_BUSY)
                mqpki_log(MQPKI_LOG_ERROR, "CRL %lld: %s", (long long)c.number,
                          mqpki_err_detail(erc));
        }
        /* A notice names crl/: offered once crl/ holds it (the next cycle retries). */
        if (feed &&
            !(by_notice(p, &c, len) && datadir_crl_exported(p->ctx->dd, INV_CRL_FULL) < c.number))
            offer(p, &c, der, len);
        free(der);
    }
    /* An older generation's copies behind crl/ (a process killed between the two) catch up. */
    datadir_generations_sync(p->ctx->dd);
    feed_offer_generations(p->ctx->feed);
    mqpki_err_clear();
}

/* Publishes what is open; logs what it signed. */
static int publish(struct publisher *p, struct lifecycle_publication *pub)
{
    struct lifecycle_sink sink = {on_signed, on_export, p};
    int64_t open = 0;
    int rc;

    if ((rc = lifecycle_open_count(p->lc, &open)) != MQPKI_OK || open == 0)
        return rc;
    rc = lifecycle_publish_changes(p->lc, datadir_ca(p->ctx->dd), &sink, "mqpkid",
                                   PUBLISHER_LOCK_MS, pub);
    if (pub->full_pending > 0) {
        pthread_mutex_lock(&p->lock);
        p->full_wanted = 1;
        pthread_cond_broadcast(&p->cond);
        pthread_mutex_unlock(&p->lock);
    }
    if (pub->signed_count > 0)
        mqpki_log(MQPKI_LOG_INFO, "published CRL %lld (%s, %lld entr%s)",
                  (long long)(pub->delta_number > pub->full_number ? pub->delta_number
                                                                   : pub->full_number),
                  pub->delta_number > pub->full_number ? "delta" : "full", (long long)pub->entries,
                  pub->entries == 1 ? "y" : "ies");
    return rc;
}

/*
 * One cycle's first half: what is open (revocations go out as deltas at once, a full CRL an
 * operator asked for), then the feed caught up with the store. The commands waiting for it are
 * answered after this half: a scheduled full CRL (the second half) never delays them.
 * error gets the failure's detail before anything else can overwrite it.
 */
static int cycle_open(struct publisher *p, struct lifecycle_publication *pub, char *error,
                      size_t size)
{
    int rc;

    memset(pub, 0, sizeof(*pub));
    pub->full_number = pub->delta_number = -1;
    error[0] = '\0';
    rc = publish(p, pub);
    if (rc != MQPKI_OK) {
        snprintf(error, size, "%s", mqpki_err_detail(rc));
        mqpki_log(MQPKI_LOG_ERROR, "CRL publication: %s (retried every second)", error);
    }
    catch_up(p);
    return rc;
}

/* The second half: a full CRL asked for when one is due (crl_full_every, crl_full_after), which
 * the full CRL signer signs (with a million entries, in about a second) while this thread goes
 * on publishing changes. */
static int cycle_scheduled(struct publisher *p, struct lifecycle_publication *pub)
{
    int64_t number = 0;
    int rc;

    memset(pub, 0, sizeof(*pub));
    pub->full_number = pub->delta_number = -1;
    if ((rc = lifecycle_crl_schedule(p->lc, mqpki_now(), "mqpkid", &number)) == MQPKI_OK &&
        number > 0)
        rc = publish(p, pub);
    if (rc != MQPKI_OK)
        mqpki_log(MQPKI_LOG_ERROR, "CRL publication: %s (retried every second)",
                  mqpki_err_detail(rc));
    catch_up(p);
    return rc;
}

/*
 * Audit checkpoints: one after every cycle that signed a CRL, one every [audit]
 * checkpoint_every (only when the chain moved: an unchanged head is certified already), one
 * at start and one at stop; each signed with the audit key this process alone holds, in one
 * store transaction, then exported to crl/audit-checkpoint.json. Every checkpoint newer than
 * the feed has, also one a command signed through the control socket, goes to the brokers
 * (retained), so the newest anchor is also where the store cannot take it back.
 */
static void audit_tick(struct publisher *p, int now_please)
{
    struct inventory_audit_checkpoint cp;
    struct timespec now;
    char *json = NULL;
    size_t len = 0;
    int made = 0, rc;

    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now_please || now.tv_sec >= p->cp_next) {
        p->cp_next = now.tv_sec + datadir_config(p->ctx->dd)->audit_every;
        rc = datadir_audit_checkpoint(p->ctx->dd, p->inv, &cp, &made);
        if (rc != MQPKI_OK)
            mqpki_log(MQPKI_LOG_ERROR, "audit checkpoint: %s", mqpki_err_detail(rc));
        else if (made)
            mqpki_log(MQPKI_LOG_INFO, "audit checkpoint %lld signed (event %lld)", (long long)cp.id,
                      (long long)cp.seq);
    }
    if (inventory_audit_checkpoint_latest(p->inv, &cp) == MQPKI_OK && cp.id > p->cp_offered &&
        datadir_audit_json(p->ctx->dd, &cp, &json, &len) == MQPKI_OK) {
        feed_offer_checkpoint(p->ctx->feed, cp.id, json, len);
        p->cp_offered = cp.id;
    }
    free(json);
    mqpki_err_clear();
}

static void *full_run(void *arg)
{
    struct publisher *p = arg;
    struct lifecycle_config lcfg;
    struct lifecycle_publication pub;
    struct inventory *inv = NULL;
    struct lifecycle *lc = NULL;
    struct lifecycle_sink sink = {on_signed, on_export, p};
    int rc;

    pthread_mutex_lock(&p->lock);
    while (!p->stop) {
        if (!p->full_wanted) {
            pthread_cond_wait(&p->cond, &p->lock);
            continue;
        }
        p->full_wanted = 0;
        p->full_busy = 1;
        pthread_mutex_unlock(&p->lock);
        datadir_lifecycle_config(datadir_config(p->ctx->dd), &lcfg);
        rc = MQPKI_OK;
        if (lc == NULL && ((rc = inventory_open(p->ctx->db_path, &inv)) != MQPKI_OK ||
                           (rc = lifecycle_new(inv, &lcfg, &lc)) != MQPKI_OK)) {
            inventory_close(inv);
            inv = NULL;
        }
        memset(&pub, 0, sizeof(pub));
        if (rc == MQPKI_OK)
            rc = lifecycle_full_sign(lc, datadir_ca(p->ctx->dd), &sink, "mqpkid", &pub);
        /* Failed: the number stays pending, and the next cycle asks again (a second on). */
        if (rc != MQPKI_OK)
            mqpki_log(MQPKI_LOG_ERROR, "full CRL: %s (retried every second)", mqpki_err_detail(rc));
        else if (pub.signed_count > 0)
            mqpki_log(MQPKI_LOG_INFO, "published CRL %lld (full, %lld entr%s)",
                      (long long)pub.full_number, (long long)pub.entries,
                      pub.entries == 1 ? "y" : "ies");
        mqpki_err_clear();
        pthread_mutex_lock(&p->lock);
        p->full_busy = 0;
        /* The publisher's next cycle signs an audit checkpoint for it. */
        if (pub.signed_count > 0) {
            p->full_signed = pub.full_number;
            p->requested++;
            pthread_cond_broadcast(&p->cond);
        }
    }
    pthread_mutex_unlock(&p->lock);
    lifecycle_free(lc);
    inventory_close(inv);
    return NULL;
}

static void *run(void *arg)
{
    struct publisher *p = arg;
    struct lifecycle_publication pub;
    char error[256];
    uint64_t gen;
    int resend, rc, signed_now;

    pthread_mutex_lock(&p->lock);
    while (!p->stop) {
        gen = p->requested;
        resend = p->resend;
        p->resend = 0;
        pthread_mutex_unlock(&p->lock);
        feed_tick(p->ctx->feed);
        rc = cycle_open(p, &pub, error, sizeof(error));
        if (resend)
            feed_resend(p->ctx->feed);
        pthread_mutex_lock(&p->lock);
        p->last_rc = rc;
        snprintf(p->last_error, sizeof(p->last_error), "%s", error);
        p->last = pub;
        p->done = gen;
        pthread_cond_broadcast(&p->cond);
        /* After the answer: a command waiting for its publication never waits for this. */
        pthread_mutex_unlock(&p->lock);
        signed_now = pub.signed_count;
        (void)cycle_scheduled(p, &pub);
        signed_now += pub.signed_count;
        /* A full CRL the signer thread signed since: anchored by this cycle's checkpoint too. */
        pthread_mutex_lock(&p->lock);
        if (p->full_signed > p->full_anchored) {
            p->full_anchored = p->full_signed;
            signed_now++;
        }
        pthread_mutex_unlock(&p->lock);
        audit_tick(p, signed_now > 0);
        pthread_mutex_lock(&p->lock);
        if (p->stop || p->requested != gen)
            continue;
        {
            /* Monotonic: a clock stepped back (NTP on a gateway without RTC) never stalls it. */
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += TICK_MS / 1000;
            pthread_cond_timedwait(&p->cond, &p->lock, &until);
        }
    }
    pthread_mutex_unlock(&p->lock);
    /* What happened since the last checkpoint is anchored before mqpkid stops. */
    audit_tick(p, 1);
    return NULL;
}

int publisher_start(struct daemon_ctx *ctx, struct publisher **out)
{
    struct publisher *p;
    struct lifecycle_config lcfg;
    int rc;

    *out = NULL;
    if ((p = calloc(1, sizeof(*p))) == NULL)
        return MQPKI_ERR_NOMEM;
    p->ctx = ctx;
    p->offered[0] = p->offered[1] = -1;
    p->cp_offered = -1;
    p->cp_next = 0; /* the first cycle signs one: what happened while mqpkid was down */
    pthread_mutex_init(&p->lock, NULL);
    pthread_mutex_init(&p->feed_order, NULL);
    {
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&p->cond, &attr);
        pthread_condattr_destroy(&attr);
    }
    datadir_lifecycle_config(datadir_config(ctx->dd), &lcfg);
    if ((rc = inventory_open(ctx->db_path, &p->inv)) != MQPKI_OK ||
        (rc = lifecycle_new(p->inv, &lcfg, &p->lc)) != MQPKI_OK)
        goto out;
    if (pthread_create(&p->thread, NULL, run, p) != 0) {
        rc = mqpki_fail(MQPKI_ERR_INTERNAL, "publisher: cannot start a thread");
        goto out;
    }
    p->started = 1;
    if (pthread_create(&p->full_thread, NULL, full_run, p) != 0) {
        rc = mqpki_fail(MQPKI_ERR_INTERNAL, "publisher: cannot start a thread");
        goto out;
    }
    p->full_started = 1;
    if (inventory_is_remote(p->inv)) {
        if (pthread_create(&p->listener, NULL, listen_run, p) != 0) {
            rc = mqpki_fail(MQPKI_ERR_INTERNAL, "publisher: cannot start a thread");
            goto out;
        }
        p->listening = 1;
    }
    *out = p;
    p = NULL;
out:
    publisher_stop(p);
    return rc;
}

int publisher_run(struct publisher *p, int resend, struct lifecycle_publication *out, char *error,
                  size_t error_size)
{
    uint64_t mine;
    int rc;

    pthread_mutex_lock(&p->lock);
    mine = ++p->requested;
    if (resend)
        p->resend = 1;
    pthread_cond_broadcast(&p->cond);
    while (p->done < mine && !p->stop)
        pthread_cond_wait(&p->cond, &p->lock);
    rc = p->stop && p->done < mine ? mqpki_fail(MQPKI_ERR_STATE, "mqpkid is stopping") : p->last_rc;
    if (out != NULL)
        *out = p->last;
    if (error != NULL && error_size > 0)
        snprintf(error, error_size, "%s", p->last_error);
    pthread_mutex_unlock(&p->lock);
    return rc;
}

void publisher_stop(struct publisher *p)
{
    if (p == NULL)
        return;
    if (p->started) {
        pthread_mutex_lock(&p->lock);
        p->stop = 1;
        pthread_cond_broadcast(&p->cond);
        pthread_mutex_unlock(&p->lock);
        pthread_join(p->thread, NULL);
        if (p->full_started)
            pthread_join(p->full_thread, NULL);
        if (p->listening)
            pthread_join(p->listener, NULL);
    }
    lifecycle_free(p->lc);
    inventory_close(p->inv);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->feed_order);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
