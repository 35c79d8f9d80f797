/*
 * lifecycle/publish.c: CRL publication from the outbox (lifecycle.h).
 *
 * Order: sign the pending numbers as one CRL from a store snapshot; commit it as signed with its
 * DER; hand it to the feed; export the newest signed CRL of each kind; mark it done.
 * Crash windows, each healed by the next lifecycle_publish of any process:
 *   - after the revoking commit, before signing: the number is pending; it is signed then;
 *   - after signing, before the signed row commits: nothing of it was kept or seen; the number
 *     is still pending and is signed again;
 *   - after the signed row commits (DER in the store), before or during the feed or the export:
 *     the row is signed; the same bytes are exported (and fed, by mqpkid's catch-up) again;
 *   - after the export, before "done" commits: the export is repeated, byte for byte the same.
 * A failed export (a full disk) leaves the CRL signed and does not hold back newer CRLs: they are
 * signed and fed, and the next export writes the newest; only a delta based on a full CRL not
 * yet in crl/ waits for that one there (datadir_crl_export answers MQPKI_ERR_BUSY). One
 * publisher at a time (the store's publication lock) signs changes in number order; a scheduled
 * full CRL keeps its lower number and may be signed meanwhile by lifecycle_full_sign (mqpkid's
 * own thread, lifecycle.h). The crl/ export lock and the feed keep each kind's numbers going up,
 * so a file or a broker never receives a lower number of a kind after a higher one.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "lifecycle_int.h"

/* A single publish call gives up after this many CRLs and leaves the rest to the next call,
 * so that a stream of revocations cannot keep one caller busy forever. */
#define PUBLISH_ROUNDS_MAX 64

struct entries {
    struct ca_crl_entry *v;
    char (*serials)[PROTO_SERIAL_HEX_MAX + 1];
    size_t n, cap;
    int oom;
};

static void entries_clear(struct entries *e)
{
    free(e->v);
    free(e->serials);
    memset(e, 0, sizeof(*e));
}

static int collect(const char *serial, int64_t when, int reason, void *ctx)
{
    struct entries *e = ctx;

    if (e->n == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 256;
        void *v = realloc(e->v, cap * sizeof(*e->v));
        if (v == NULL)
            goto oom;
        e->v = v;
        v = realloc(e->serials, cap * sizeof(*e->serials));
        if (v == NULL)
            goto oom;
        e->serials = v;
        e->cap = cap;
    }
    snprintf(e->serials[e->n], sizeof(e->serials[0]), "%s", serial != NULL ? serial : "");
    e->v[e->n].revoked_at = when;
    e->v[e->n].reason = (enum ca_reason)(reason < 0 ? CA_REASON_UNSPECIFIED : reason);
    e->n++;
    return 0;
oom:
    e->oom = 1;
    return 1;
}

/*
 * Reads the entries of the CRL to sign from one snapshot of the store: a delta against the
 * newest full CRL when want_full is 0 and the delta stays small, else a full CRL. Fills the
 * kind, base and cutoff of c.
 */
static int read_entries(struct lifecycle *lc, int want_full, struct inventory_crl *c,
                        struct entries *e)
{
    struct inventory_crl full;
    int64_t upto = 0, since = -1;
    int rc;

    c->kind = want_full ? INV_CRL_FULL : INV_CRL_DELTA;
    c->base = -1;
    if ((rc = inventory_snapshot_begin(lc->inv)) != MQPKI_OK)
        return rc;
    /* Pending in this snapshot: it holds everything committed before the number was asked for
     * (a full CRL signed off the publication lock reads no older state than that). */
    {
        struct inventory_crl row;
        if ((rc = inventory_crl_get(lc->inv, c->number, &row)) != MQPKI_OK)
            goto out;
        if (row.state != INV_CRL_PENDING) {
            rc = mqpki_fail(MQPKI_ERR_STATE, "CRL %lld is not pending any more",
                            (long long)c->number);
            goto out;
        }
    }
    if ((rc = inventory_rev_current(lc->inv, &upto)) != MQPKI_OK)
        goto out;
    if (c->kind == INV_CRL_DELTA) {
        rc = inventory_crl_latest(lc->inv, INV_CRL_FULL, &full);
        if (rc == MQPKI_ERR_NOT_FOUND) {
            /* No full CRL to base a delta on (RFC 5280 5.2.4): the full CRL says it all. */
            mqpki_err_clear();
            c->kind = INV_CRL_FULL;
            rc = MQPKI_OK;
        } else if (rc != MQPKI_OK) {
            goto out;
        } else {
            c->base = full.number;
            since = full.cutoff;
        }
    }
    if (c->kind == INV_CRL_DELTA) {
        if ((rc = inventory_revoked_list(lc->inv, mqpki_now(), since, upto, collect, e)) !=
            MQPKI_OK)
            goto out;
        /* A delta as long as the full list gains nothing: sign the full CRL instead. */
        if (!e->oom && (int64_t)e->n > lc->cfg.crl_delta_max) {
            entries_clear(e);
            c->kind = INV_CRL_FULL;
            c->base = -1;
        }
    }
    if (c->kind == INV_CRL_FULL &&
        (rc = inventory_revoked_list(lc->inv, mqpki_now(), -1, upto, collect, e)) != MQPKI_OK)
        goto out;
    if (e->oom) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "CRL %lld: out of memory reading %zu entries",
                        (long long)c->number, e->n);
        goto out;
    }
    c->cutoff = upto;
out:
    inventory_snapshot_end(lc->inv);
    return rc;
}

/* The newest signed, not yet exported CRL of each kind. */
struct signed_rows {
    struct inventory_crl newest[2];
    int have[2];
};

static int note_signed(const struct inventory_crl *c, void *ctx)
{
    struct signed_rows *s = ctx;

    if (c->state == INV_CRL_SIGNED && (c->kind == INV_CRL_FULL || c->kind == INV_CRL_DELTA)) {
        s->newest[c->kind] = *c; /* the list is in number order: the last one wins */
        s->have[c->kind] = 1;
    }
    return 0;
}

/*
 * Exports the newest signed CRL of each kind and marks it done with every older signed one of
 * its kind (superseded: a file never goes back to a lower number). A CRL left signed by a
 * process that died, or by a failed export, goes out here with the same bytes it was signed
 * with. The feed does not wait for this: it got each CRL when it was signed.
 */
static int export_signed(struct lifecycle *lc, const struct lifecycle_sink *sink,
                         struct lifecycle_publication *pub, int want_full, int want_delta)
{
    struct signed_rows s;
    int rc;

    memset(&s, 0, sizeof(s));
    if ((rc = inventory_crl_open(lc->inv, note_signed, &s, NULL)) != MQPKI_OK)
        return rc;
    for (int k = INV_CRL_FULL; k <= INV_CRL_DELTA; k++) {
        unsigned char *der = NULL;
        size_t len = 0;

        if (!s.have[k])
            continue;
        if (!(k == INV_CRL_FULL ? want_full : want_delta)) {
            /* The full CRL lane's to export: tell the caller it has work. */
            if (k == INV_CRL_FULL && s.newest[k].number > pub->full_pending)
                pub->full_pending = s.newest[k].number;
            continue;
        }
        rc = inventory_crl_der(lc->inv, s.newest[k].number, &der, &len);
        /* A delta superseded and pruned meanwhile: the lane that signed the newer one exports
         * that. */
        if (rc == MQPKI_ERR_NOT_FOUND && k == INV_CRL_DELTA) {
            mqpki_err_clear();
            continue;
        }
        if (rc != MQPKI_OK)
            return rc;
        if (sink != NULL && sink->export_crl != NULL)
            rc = sink->export_crl(sink->ctx, &s.newest[k], der, len);
        free(der);
        /* A delta whose base is not in crl/ yet (datadir_crl_export): it stays signed, and the
         * exporter of the base (the full CRL lane, or mqpkid's catch-up) exports it next. */
        if (rc == MQPKI_ERR_BUSY && k == INV_CRL_DELTA) {
            mqpki_err_clear();
            if (s.newest[k].base > pub->full_pending)
                pub->full_pending = s.newest[k].base;
            continue;
        }
        if (rc != MQPKI_OK || (rc = inventory_crl_done(lc->inv, k, s.newest[k].number)) != MQPKI_OK)
            return rc;
        pub->exported_count++;
    }
    return MQPKI_OK;
}

/* Signs the pending number `number` (a full CRL when want_full) and hands it to the feed. */
static int sign_pending(struct lifecycle *lc, struct ca *ca, int64_t number, int want_full,
                        const struct lifecycle_sink *sink, const char *actor,
                        struct lifecycle_publication *pub, int *kind)
{
    struct inventory_crl c;
    struct entries e = {0};
    unsigned char *der = NULL;
    size_t len = 0;
    int64_t now;
    int rc;

    memset(&c, 0, sizeof(c));
    c.number = number;
    if (ca == NULL) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "CRL %lld is pending and no CA key is open to sign it",
                        (long long)number);
        goto out;
    }
    if ((rc = read_entries(lc, want_full, &c, &e)) != MQPKI_OK)
        goto out;
    for (size_t i = 0; i < e.n; i++)
        e.v[i].serial_hex = e.serials[i];
    now = mqpki_now();
    c.this_update = now;
    c.next_update = now + lc->cfg.crl_validity;
    c.entries = (int64_t)e.n;
    c.state = INV_CRL_SIGNED;
    if ((rc = ca_crl_encode(ca, c.number, c.base, e.v, e.n, c.this_update, c.next_update, &der,
                            &len)) != MQPKI_OK)
        goto out;
    /* Durable before anyone sees it: a CRL number is never signed twice with other content. */
    if ((rc = inventory_crl_signed(lc->inv, &c, der, len, actor)) != MQPKI_OK)
        goto out;
    pub->signed_count++;
    pub->entries = c.entries;
    *kind = c.kind;
    /* To the feed at once; the export follows (export_signed). */
    if (sink != NULL && sink->signed_crl != NULL)
        sink->signed_crl(sink->ctx, &c, der, len);
out:
    free(der);
    entries_clear(&e);
    return rc;
}

/* The pending publications, summarized. */
struct pending_rows {
    int64_t last_full;  /* highest pending number that asks for a full CRL, 0 when none */
    int64_t last_delta; /* highest pending number that asks for a delta (a change), 0 when none */
    int full_awaited;   /* a full CRL not asked for by the schedule: someone waits for it */
    int64_t last_scheduled; /* highest pending full CRL only the schedule asked for */
};

static int note_pending(const struct inventory_crl *c, void *ctx)
{
    struct pending_rows *p = ctx;

    if (c->state == INV_CRL_PENDING) {
        if (c->kind == INV_CRL_FULL) {
            p->last_full = c->number;
            if (strcmp(c->reason, LIFECYCLE_FULL_SCHEDULED) != 0)
                p->full_awaited = 1;
            else
                p->last_scheduled = c->number;
        } else {
            p->last_delta = c->number;
        }
    }
    return 0;
}

/*
 * Signs what is pending under the publication lock. Changes first: the highest pending delta
 * number as one delta (a burst folds into it). A full CRL asked for keeps its own number; with
 * fulls_here 0, one only the schedule asked for is left pending for lifecycle_full_sign
 * (out->full_pending).
 */
static int publish(struct lifecycle *lc, struct ca *ca, const struct lifecycle_sink *sink,
                   const char *actor, int lock_ms, int fulls_here,
                   struct lifecycle_publication *out)
{
    struct lifecycle_publication pub = {0, 0, -1, -1, 0, 0};
    struct inventory_crl latest;
    char detail[400] = "";
    int rc, erc, signed_full = 0;

    if ((rc = inventory_publish_lock(lc->inv, lock_ms)) != MQPKI_OK)
        goto out;
    for (int round = 0; round < PUBLISH_ROUNDS_MAX; round++) {
        struct pending_rows p;
        int kind = -1;

        memset(&p, 0, sizeof(p));
        if ((rc = inventory_crl_open(lc->inv, note_pending, &p, NULL)) != MQPKI_OK)
            break;
        if (p.last_delta > 0) {
            rc = sign_pending(lc, ca, p.last_delta, 0, sink, actor, &pub, &kind);
        } else if (p.last_full > 0 && (fulls_here || p.full_awaited)) {
            rc = sign_pending(lc, ca, p.last_full, 1, sink, actor, &pub, &kind);
        } else {
            pub.full_pending = p.last_full;
            break;
        }
        /* Signed or folded meanwhile by lifecycle_full_sign (another thread or a replica): out
         * already, from later state. The next round sees what is still pending. */
        if (rc == MQPKI_ERR_STATE && ca != NULL) {
            mqpki_err_clear();
            rc = MQPKI_OK;
            continue;
        }
        if (rc != MQPKI_OK)
            break;
        signed_full |= kind == INV_CRL_FULL;
    }
    /* Export what is signed, also when signing failed: what was signed before still goes out.
     * A full CRL the other lane signed is its to export (a file write of tens of MB). */
    if (rc != MQPKI_OK)
        snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
    erc = export_signed(lc, sink, &pub, fulls_here || signed_full, 1);
    if (rc == MQPKI_OK)
        rc = erc;
    else
        mqpki_fail(rc, "%s", detail);
    inventory_publish_unlock(lc->inv);
out:
    if (rc != MQPKI_OK)
        snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
    if (inventory_crl_latest(lc->inv, INV_CRL_FULL, &latest) == MQPKI_OK)
        pub.full_number = latest.number;
    if (inventory_crl_latest(lc->inv, INV_CRL_DELTA, &latest) == MQPKI_OK)
        pub.delta_number = latest.number;
    if (out != NULL)
        *out = pub;
    /* The lookups above may have recorded "not found" over the publication's own detail. */
    if (rc == MQPKI_OK)
        mqpki_err_clear();
    else
        mqpki_fail(rc, "%s", detail);
    return rc;
}

int lifecycle_publish(struct lifecycle *lc, struct ca *ca, const struct lifecycle_sink *sink,
                      const char *actor, int lock_ms, struct lifecycle_publication *out)
{
    return publish(lc, ca, sink, actor, lock_ms, 1, out);
}

int lifecycle_publish_changes(struct lifecycle *lc, struct ca *ca,
                              const struct lifecycle_sink *sink, const char *actor, int lock_ms,
                              struct lifecycle_publication *out)
{
    return publish(lc, ca, sink, actor, lock_ms, 0, out);
}

int lifecycle_full_sign(struct lifecycle *lc, struct ca *ca, const struct lifecycle_sink *sink,
                        const char *actor, struct lifecycle_publication *out)
{
    struct lifecycle_publication pub = {0, 0, -1, -1, 0, 0};
    struct pending_rows p;
    int kind = -1, rc;

    memset(&p, 0, sizeof(p));
    /* What an earlier run signed and did not export (it died, a full disk) first. */
    if ((rc = export_signed(lc, sink, &pub, 1, 1)) != MQPKI_OK)
        return rc;
    /* Only one nobody waits for: a full CRL an operator asked for is signed by the changes'
     * lane, which answers the command. */
    if ((rc = inventory_crl_open(lc->inv, note_pending, &p, NULL)) == MQPKI_OK &&
        p.last_scheduled > 0) {
        rc = sign_pending(lc, ca, p.last_scheduled, 1, sink, actor, &pub, &kind);
        if (rc == MQPKI_OK)
            pub.full_number = p.last_scheduled;
        /* Signed meanwhile by another publisher (a replica, or the changes' lane when it had to
         * sign a full CRL of its own): nothing is lost, it is out. */
        if (rc == MQPKI_ERR_STATE && ca != NULL) {
            mqpki_err_clear();
            rc = MQPKI_OK;
        }
        /* The files follow the feed; the changes' lane never waits for this write either. The
         * deltas based on it, held back until it is out, follow it. */
        if (rc == MQPKI_OK && pub.signed_count > 0)
            rc = export_signed(lc, sink, &pub, 1, 1);
    }
    if (out != NULL)
        *out = pub;
    return rc;
}

int lifecycle_crl_request(struct lifecycle *lc, int kind, const char *reason, const char *actor,
                          int64_t *number)
{
    return inventory_crl_reserve(lc->inv, kind, reason, actor, number);
}

static int note_pending_full(const struct inventory_crl *c, void *ctx)
{
    if (c->state == INV_CRL_PENDING && c->kind == INV_CRL_FULL)
        *(int *)ctx = 1;
    return 0;
}

int lifecycle_crl_due(struct lifecycle *lc, int64_t now, int *due)
{
    struct inventory_crl full;
    int rc, pending = 0;

    *due = 0;
    /* One asked for already (signing may be failing): asking again would only burn numbers. */
    if ((rc = inventory_crl_open(lc->inv, note_pending_full, &pending, NULL)) != MQPKI_OK ||
        pending)
        return rc;
    rc = inventory_crl_latest(lc->inv, INV_CRL_FULL, &full);
    if (rc == MQPKI_ERR_NOT_FOUND) {
        mqpki_err_clear();
        *due = 1;
        return MQPKI_OK;
    }
    if (rc != MQPKI_OK)
        return rc;
    /* Well before nextUpdate, so that a broker with fail_closed never sees it stale. */
    *due = now - full.this_update >= lc->cfg.crl_full_every ||
           full.next_update - now < lc->cfg.crl_validity / 2;
    if (!*due && lc->cfg.crl_full_after > 0) {
        struct inventory_crl delta;
        rc = inventory_crl_first_after(lc->inv, INV_CRL_DELTA, full.number, &delta);
        if (rc == MQPKI_OK)
            *due = now - delta.signed_at >= lc->cfg.crl_full_after;
        else if (rc != MQPKI_ERR_NOT_FOUND)
            return rc;
        mqpki_err_clear();
    }
    return MQPKI_OK;
}

int lifecycle_crl_schedule(struct lifecycle *lc, int64_t now, const char *actor, int64_t *number)
{
    int rc, due = 0;

    *number = 0;
    if ((rc = inventory_begin(lc->inv)) != MQPKI_OK)
        return rc;
    if ((rc = lifecycle_crl_due(lc, now, &due)) == MQPKI_OK && due)
        rc = lifecycle_crl_request(lc, INV_CRL_FULL, LIFECYCLE_FULL_SCHEDULED, actor, number);
    if (rc == MQPKI_OK)
        rc = inventory_commit(lc->inv);
    else
        inventory_rollback(lc->inv);
    if (rc != MQPKI_OK)
        *number = 0;
    return rc;
}

int lifecycle_open_count(struct lifecycle *lc, int64_t *count)
{
    return inventory_crl_open(lc->inv, NULL, NULL, count);
}

int lifecycle_crl_covers(struct lifecycle *lc, int64_t rev_seq, int *covered)
{
    struct inventory_crl full, delta;
    int64_t cutoff = -1;
    int rc;

    *covered = 0;
    rc = inventory_crl_latest(lc->inv, INV_CRL_FULL, &full);
    if (rc == MQPKI_OK)
        cutoff = full.cutoff;
    else if (rc != MQPKI_ERR_NOT_FOUND)
        return rc;
    rc = inventory_crl_latest(lc->inv, INV_CRL_DELTA, &delta);
    if (rc == MQPKI_OK && delta.cutoff > cutoff)
        cutoff = delta.cutoff;
    else if (rc != MQPKI_OK && rc != MQPKI_ERR_NOT_FOUND)
        return rc;
    mqpki_err_clear();
    *covered = cutoff >= rev_seq;
    return MQPKI_OK;
}
