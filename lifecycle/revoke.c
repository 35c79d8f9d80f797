/*
 * lifecycle/revoke.c: revoke, hold, unhold and decommission. Each is one store transaction that
 * changes the certificates and the asset, appends the audit events and reserves the CRL number
 * of its publication in the outbox. Committed here; published by lifecycle_publish, which the
 * front end runs next and which every later process finishes if this one dies first.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "lifecycle_int.h"

int lifecycle_new(struct inventory *inv, const struct lifecycle_config *cfg, struct lifecycle **out)
{
    struct lifecycle *lc;

    *out = NULL;
    if (inv == NULL || cfg == NULL || cfg->crl_validity <= 0)
        return mqpki_fail(MQPKI_ERR_INVALID, "lifecycle: store and CRL validity needed");
    if ((lc = calloc(1, sizeof(*lc))) == NULL)
        return MQPKI_ERR_NOMEM;
    lc->inv = inv;
    lc->cfg = *cfg;
    if (lc->cfg.crl_full_every <= 0)
        lc->cfg.crl_full_every = cfg->crl_validity / 4;
    if (lc->cfg.crl_delta_max <= 0)
        lc->cfg.crl_delta_max = LIFECYCLE_DELTA_MAX_DEFAULT;
    *out = lc;
    return MQPKI_OK;
}

void lifecycle_free(struct lifecycle *lc)
{
    free(lc);
}

static void change_init(struct lifecycle_change *out)
{
    memset(out, 0, sizeof(*out));
    out->asset_state = out->asset_was = -1;
}

/* The asset's state after the change, for the caller's message. */
static void note_asset(struct lifecycle *lc, const char *asset, struct lifecycle_change *out)
{
    struct inventory_asset a;

    memset(&a, 0, sizeof(a));
    snprintf(out->asset, sizeof(out->asset), "%s", asset);
    if (inventory_asset_get(lc->inv, asset, &a) == MQPKI_OK)
        out->asset_state = a.state;
    inventory_asset_clear(&a);
}

/* 1 when c already is where a revocation with reason would put it. */
static int already_there(const struct inventory_cert *c, int reason)
{
    if (c->state != INV_CERT_REVOKED)
        return 0;
    /* A hold may still be made final, and a final revocation learn that the key was
     * compromised (inventory_cert_revoke); anything else changes nothing. */
    if (reason == CA_REASON_KEY_COMPROMISE && c->reason != CA_REASON_KEY_COMPROMISE)
        return 0;
    return c->reason != CA_REASON_HOLD || reason == CA_REASON_HOLD;
}

struct mates {
    int64_t now;
    int n, oom;
    size_t cap;
    struct inventory_cert *v;
};

static int collect_mate(const struct inventory_cert *c, void *ctx)
{
    struct mates *m = ctx;

    /* Live (accepted somewhere: valid, superseded, or only on hold) and unexpired. */
    if (c->not_after < m->now || c->state == INV_CERT_EXPIRED ||
        (c->state == INV_CERT_REVOKED && c->reason != CA_REASON_HOLD))
        return 0;
    if ((size_t)m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 8;
        void *v = realloc(m->v, cap * sizeof(*m->v));
        if (v == NULL) {
            m->oom = 1;
            return 1;
        }
        m->v = v;
        m->cap = cap;
    }
    m->v[m->n] = *c;
    m->v[m->n].pem = NULL;
    m->n++;
    return 0;
}

/*
 * Key compromise: the key, not one certificate, is what leaked. Revokes every other live
 * certificate of key_fp, on any asset, in the caller's transaction, and notes them in out.
 */
static int revoke_key_mates(struct lifecycle *lc, const char *key_fp, const char *actor,
                            struct lifecycle_change *out)
{
    struct mates m = {.now = mqpki_now()};
    int rc;

    if ((rc = inventory_cert_list_by_key(lc->inv, key_fp, collect_mate, &m)) != MQPKI_OK)
        goto out;
    if (m.oom) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "out of memory listing the certificates of a key");
        goto out;
    }
    for (int i = 0; i < m.n; i++) {
        size_t used = strlen(out->mates);
        if ((rc = inventory_cert_revoke(lc->inv, m.v[i].serial, CA_REASON_KEY_COMPROMISE, m.now,
                                        actor)) != MQPKI_OK)
            goto out;
        if (out->key_mates++ < 3)
            snprintf(out->mates + used, sizeof(out->mates) - used, "%s%s (asset %s)",
                     used > 0 ? ", " : "", m.v[i].serial, m.v[i].asset_id);
    }
out:
    free(m.v);
    return rc;
}

static const char *reserve_reason(int reason)
{
    return reason == CA_REASON_HOLD ? "hold" : "revoke";
}

/* Opens the change's transaction and reads the certificate it is about (*in_tx 1 when the
 * transaction was opened, also on failure). */
static int begin_on_cert(struct lifecycle *lc, const char *serial, struct inventory_cert *c,
                         int *in_tx, struct lifecycle_change *out)
{
    int rc;

    change_init(out);
    memset(c, 0, sizeof(*c));
    *in_tx = 0;
    if ((rc = inventory_begin(lc->inv)) != MQPKI_OK)
        return rc;
    *in_tx = 1;
    if ((rc = inventory_cert_get(lc->inv, serial, 0, c)) != MQPKI_OK) {
        if (rc == MQPKI_ERR_NOT_FOUND)
            rc = mqpki_fail(rc, "no certificate with serial %s", serial);
        return rc;
    }
    snprintf(out->serial, sizeof(out->serial), "%s", c->serial);
    return MQPKI_OK;
}

int lifecycle_revoke(struct lifecycle *lc, const char *serial, int reason, const char *actor,
                     struct lifecycle_change *out)
{
    struct inventory_cert c;
    int rc, in_tx = 0;

    if ((rc = begin_on_cert(lc, serial, &c, &in_tx, out)) != MQPKI_OK)
        goto out;
    if (already_there(&c, reason)) {
        out->already = 1;
        out->rev_seq = c.rev_seq;
    } else {
        if ((rc = inventory_cert_revoke(lc->inv, c.serial, reason, mqpki_now(), actor)) != MQPKI_OK)
            goto out;
        out->changed = 1;
    }
    /* Also when the certificate was revoked before: its key's other certificates (renewals,
     * a store from before this rule) may still be live. */
    if (reason == CA_REASON_KEY_COMPROMISE &&
        (rc = revoke_key_mates(lc, c.key_fp, actor, out)) != MQPKI_OK)
        goto out;
    if (out->changed + out->key_mates > 0 &&
        ((rc = inventory_crl_reserve(lc->inv, INV_CRL_DELTA, reserve_reason(reason), actor,
                                     &out->crl_number)) != MQPKI_OK ||
         (rc = inventory_rev_current(lc->inv, &out->rev_seq)) != MQPKI_OK))
        goto out;
    note_asset(lc, c.asset_id, out);
    /* Nothing changed: the transaction is rolled back below, nothing to write. */
    if (out->changed + out->key_mates > 0) {
        if ((rc = inventory_commit(lc->inv)) != MQPKI_OK)
            goto out;
        in_tx = 0;
    }
out:
    if (in_tx)
        inventory_rollback(lc->inv);
    inventory_cert_clear(&c);
    return rc;
}

/* The asset's certificates a revocation with reason concerns. */
struct asset_certs {
    int reason;
    int64_t now, max_seq;
    int already, oom;
    size_t n, cap;
    char (*serials)[PROTO_SERIAL_HEX_MAX + 1];
};

/* Appends a serial; 1 (stop the listing) when out of memory, with a->oom set. */
static int push_serial(struct asset_certs *a, const char *serial)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 8;
        void *v = realloc(a->serials, cap * sizeof(*a->serials));
        if (v == NULL) {
            a->oom = 1;
            return 1;
        }
        a->serials = v;
        a->cap = cap;
    }
    snprintf(a->serials[a->n++], sizeof(a->serials[0]), "%s", serial);
    return 0;
}

static int collect(const struct inventory_cert *c, void *ctx)
{
    struct asset_certs *a = ctx;

    /* Expired certificates are accepted nowhere and drop out of CRLs: nothing to do. */
    if (c->state == INV_CERT_EXPIRED || c->not_after < a->now)
        return 0;
    if (already_there(c, a->reason)) {
        a->already++;
        if (c->rev_seq > a->max_seq)
            a->max_seq = c->rev_seq;
        return 0;
    }
    return push_serial(a, c->serial);
}

/* Revokes the asset's live certificates and, when then_state >= 0, moves the asset there, in
 * the caller's transaction; with reserve, also reserves the delta CRL's number (a batch
 * reserves one for all its assets instead). */
static int revoke_asset_tx(struct lifecycle *lc, const char *asset, int reason, int then_state,
                           int reserve, const char *actor, struct lifecycle_change *out)
{
    struct asset_certs a = {.reason = reason, .now = mqpki_now()};
    struct inventory_asset as;
    int rc;

    memset(&as, 0, sizeof(as));
    if ((rc = inventory_asset_get(lc->inv, asset, &as)) != MQPKI_OK) {
        if (rc == MQPKI_ERR_NOT_FOUND)
            rc = mqpki_fail(rc, "unknown asset %s", asset);
        goto out;
    }
    out->asset_was = as.state;
    if ((rc = inventory_cert_list(lc->inv, asset, -1, 0, collect, &a)) != MQPKI_OK)
        goto out;
    /* A list cut short would revoke only some of the asset's certificates. */
    if (a.oom) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "asset %s: out of memory listing its certificates", asset);
        goto out;
    }
    for (size_t i = 0; i < a.n; i++)
        if ((rc = inventory_cert_revoke(lc->inv, a.serials[i], reason, a.now, actor)) != MQPKI_OK)
            goto out;
    /* Then the other certificates of the compromised keys, on other assets (the asset's own
     * are revoked above, so they are not counted twice). */
    for (size_t i = 0; reason == CA_REASON_KEY_COMPROMISE && i < a.n; i++) {
        struct inventory_cert c;
        if ((rc = inventory_cert_get(lc->inv, a.serials[i], 0, &c)) != MQPKI_OK ||
            (rc = revoke_key_mates(lc, c.key_fp, actor, out)) != MQPKI_OK)
            goto out;
    }
    if (then_state >= 0 && as.state != then_state &&
        (rc = inventory_asset_transition(lc->inv, asset, then_state, actor,
                                         "decommissioned by operator")) != MQPKI_OK)
        goto out;
    if (reserve && a.n > 0 &&
        (rc = inventory_crl_reserve(lc->inv, INV_CRL_DELTA, reserve_reason(reason), actor,
                                    &out->crl_number)) != MQPKI_OK)
        goto out;
    out->changed = (int)a.n;
    out->already = a.already;
    out->rev_seq = a.max_seq;
    if (reserve && a.n > 0)
        rc = inventory_rev_current(lc->inv, &out->rev_seq);
out:
    inventory_asset_clear(&as);
    free(a.serials);
    return rc;
}

int lifecycle_revoke_asset(struct lifecycle *lc, const char *asset, int reason, const char *actor,
                           struct lifecycle_change *out)
{
    int rc, in_tx = 0;

    change_init(out);
    if ((rc = inventory_begin(lc->inv)) != MQPKI_OK)
        goto out;
    in_tx = 1;
    if ((rc = revoke_asset_tx(lc, asset, reason, -1, 1, actor, out)) != MQPKI_OK)
        goto out;
    if (out->changed == 0 && out->already == 0) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "asset %s has no certificate to revoke", asset);
        goto out;
    }
    note_asset(lc, asset, out);
    if (out->changed > 0) {
        if ((rc = inventory_commit(lc->inv)) != MQPKI_OK)
            goto out;
        in_tx = 0;
    }
out:
    if (in_tx)
        inventory_rollback(lc->inv);
    return rc;
}

int lifecycle_decommission(struct lifecycle *lc, const char *asset, const char *actor,
                           struct lifecycle_change *out)
{
    int rc, in_tx = 0;

    change_init(out);
    if ((rc = inventory_begin(lc->inv)) != MQPKI_OK)
        goto out;
    in_tx = 1;
    /* In one transaction: no certificate can be issued between the revocations and the new
     * state (a decommissioned asset must not keep one issued in that gap). */
    if ((rc = revoke_asset_tx(lc, asset, CA_REASON_CESSATION, INV_STATE_DECOMMISSIONED, 1, actor,
                              out)) != MQPKI_OK)
        goto out;
    /* Its tokens not used yet end too: enrollment refuses a decommissioned asset anyway, but
     * `token list` must not show a live token for it. */
    if ((rc = inventory_token_revoke(lc->inv, 0, asset, actor, NULL)) != MQPKI_OK)
        goto out;
    note_asset(lc, asset, out);
    if ((rc = inventory_commit(lc->inv)) != MQPKI_OK)
        goto out;
    in_tx = 0;
out:
    if (in_tx)
        inventory_rollback(lc->inv);
    return rc;
}

int lifecycle_unhold(struct lifecycle *lc, const char *serial, const char *actor,
                     struct lifecycle_change *out)
{
    struct inventory_cert c;
    int rc, in_tx = 0;

    if ((rc = begin_on_cert(lc, serial, &c, &in_tx, out)) != MQPKI_OK)
        goto out;
    if ((rc = inventory_cert_unhold(lc->inv, c.serial, actor)) != MQPKI_OK ||
        (rc = inventory_crl_reserve(lc->inv, INV_CRL_DELTA, "unhold", actor, &out->crl_number)) !=
            MQPKI_OK ||
        (rc = inventory_rev_current(lc->inv, &out->rev_seq)) != MQPKI_OK)
        goto out;
    out->changed = 1;
    note_asset(lc, c.asset_id, out);
    if ((rc = inventory_commit(lc->inv)) != MQPKI_OK)
        goto out;
    in_tx = 0;
out:
    if (in_tx)
        inventory_rollback(lc->inv);
    inventory_cert_clear(&c);
    return rc;
}

int lifecycle_revoke_assets(struct lifecycle *lc, const char *const *assets, size_t n, int reason,
                            const char *actor, lifecycle_progress_cb progress, void *ctx,
                            struct lifecycle_change *out)
{
    struct lifecycle_change one;
    int rc, in_tx = 0;

    change_init(out);
    if ((rc = inventory_begin(lc->inv)) != MQPKI_OK)
        goto out;
    in_tx = 1;
    for (size_t i = 0; i < n; i++) {
        change_init(&one);
        if ((rc = revoke_asset_tx(lc, assets[i], reason, -1, 0, actor, &one)) != MQPKI_OK)
            goto out;
        out->changed += one.changed;
        out->already += one.already;
        if (one.changed > 0)
            out->assets++;
        if (one.rev_seq > out->rev_seq)
            out->rev_seq = one.rev_seq;
        if (one.key_mates > 0) {
            size_t used = strlen(out->mates);
            if (out->key_mates < 3)
                snprintf(out->mates + used, sizeof(out->mates) - used, "%s%s",
                         used > 0 ? ", " : "", one.mates);
            out->key_mates += one.key_mates;
        }
        if (progress != NULL)
            progress(i + 1, n, ctx);
    }
    /* One CRL number for the whole selection: one publication lists every serial. */
    if (out->changed + out->key_mates > 0) {
        if ((rc = inventory_crl_reserve(lc->inv, INV_CRL_DELTA, reserve_reason(reason), actor,
                                        &out->crl_number)) != MQPKI_OK ||
            (rc = inventory_rev_current(lc->inv, &out->rev_seq)) != MQPKI_OK ||
            (rc = inventory_commit(lc->inv)) != MQPKI_OK)
            goto out;
        in_tx = 0;
    }
out:
    if (in_tx)
        inventory_rollback(lc->inv);
    return rc;
}

/* The asset's certificates on hold. */
static int collect_held(const struct inventory_cert *c, void *ctx)
{
    struct asset_certs *a = ctx;

    if (c->state != INV_CERT_REVOKED || c->reason != CA_REASON_HOLD)
        return 0;
    return push_serial(a, c->serial);
}

int lifecycle_unhold_asset(struct lifecycle *lc, const char *asset, const char *actor,
                           struct lifecycle_change *out)
{
    struct asset_certs a = {.reason = CA_REASON_HOLD, .now = mqpki_now()};
    int rc, in_tx = 0;

    change_init(out);
    if ((rc = inventory_begin(lc->inv)) != MQPKI_OK)
        goto out;
    in_tx = 1;
    if ((rc = inventory_cert_list(lc->inv, asset, INV_CERT_REVOKED, 0, collect_held, &a)) !=
        MQPKI_OK)
        goto out;
    if (a.oom) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "asset %s: out of memory listing its certificates", asset);
        goto out;
    }
    if (a.n == 0) {
        struct inventory_asset as;
        memset(&as, 0, sizeof(as));
        rc = inventory_asset_get(lc->inv, asset, &as);
        inventory_asset_clear(&as);
        rc = rc == MQPKI_ERR_NOT_FOUND
                 ? mqpki_fail(rc, "unknown asset %s", asset)
                 : mqpki_fail(MQPKI_ERR_STATE, "asset %s has no certificate on hold", asset);
        goto out;
    }
    for (size_t i = 0; i < a.n; i++)
        if ((rc = inventory_cert_unhold(lc->inv, a.serials[i], actor)) != MQPKI_OK)
            goto out;
    if ((rc = inventory_crl_reserve(lc->inv, INV_CRL_DELTA, "unhold", actor, &out->crl_number)) !=
            MQPKI_OK ||
        (rc = inventory_rev_current(lc->inv, &out->rev_seq)) != MQPKI_OK)
        goto out;
    out->changed = (int)a.n;
    note_asset(lc, asset, out);
    if ((rc = inventory_commit(lc->inv)) != MQPKI_OK)
        goto out;
    in_tx = 0;
out:
    if (in_tx)
        inventory_rollback(lc->inv);
    free(a.serials);
    return rc;
}
