/*
 * inventory/certs.c: issued certificates, revocation and holds, and the revoked list that CRLs
 * are built from. "expired" is never stored: a valid or superseded certificate whose not_after
 * has passed reads as expired.
 */
#include "inventory_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REASON_KEY_COMPROMISE  1
#define REASON_HOLD            6
#define REASON_REMOVE_FROM_CRL 8
#define REASON_MAX             10

static const char *const cert_state_names[] = {"valid", "revoked", "expired", "superseded"};
#define N_CERT_STATES ((int)(sizeof(cert_state_names) / sizeof(cert_state_names[0])))

static const char *const profiles[] = {"device", "broker", "service", "operator"};

int inventory_cert_state_parse(const char *name)
{
    if (name == NULL)
        return -1;
    for (int i = 0; i < N_CERT_STATES; i++)
        if (strcmp(cert_state_names[i], name) == 0)
            return i;
    return -1;
}

const char *inventory_cert_state_name(int state)
{
    return state >= 0 && state < N_CERT_STATES ? cert_state_names[state] : NULL;
}

void inventory_cert_clear(struct inventory_cert *c)
{
    if (c == NULL)
        return;
    free(c->pem);
    c->pem = NULL;
}

/* Serials are stored as proto_serial_norm writes them (upper-case hex); lookups accept any case,
 * a 0x prefix and colons. */
static int serial_norm(const char *in, char out[PROTO_SERIAL_HEX_MAX + 1])
{
    if (in == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "certificate serial missing");
    if (proto_serial_norm(in, out) != 0)
        return mqpki_fail(MQPKI_ERR_INVALID, "certificate serial: 1 to %d hex digits expected",
                          PROTO_SERIAL_HEX_MAX);
    return MQPKI_OK;
}

/* Key fingerprints are SHA-256 in lower-case hex, as mqpki_hex writes them. */
static int key_fp_norm(const char *in, char out[PROTO_FP_HEX_LEN + 1])
{
    if (in == NULL || strnlen(in, PROTO_FP_HEX_LEN + 1) != PROTO_FP_HEX_LEN)
        return mqpki_fail(MQPKI_ERR_INVALID, "key fingerprint: %d hex digits expected",
                          PROTO_FP_HEX_LEN);
    for (size_t i = 0; i < PROTO_FP_HEX_LEN; i++) {
        if (!isxdigit((unsigned char)in[i]))
            return mqpki_fail(MQPKI_ERR_INVALID, "key fingerprint: hex digits expected");
        out[i] = (char)tolower((unsigned char)in[i]);
    }
    out[PROTO_FP_HEX_LEN] = '\0';
    return MQPKI_OK;
}

static int profile_valid(const char *p)
{
    if (p == NULL || strnlen(p, 16) >= 16)
        return 0;
    for (size_t i = 0; i < sizeof(profiles) / sizeof(profiles[0]); i++)
        if (strcmp(p, profiles[i]) == 0)
            return 1;
    return 0;
}

/* Fills c from a row of INV_CERT_COLS; pem points into the row when with_pem. */
static void cert_from_row(struct db_stmt *st, int64_t now, int with_pem, struct inventory_cert *c)
{
    const char *state = (const char *)db_column_text(st, 5);

    memset(c, 0, sizeof(*c));
    inv_col_text(st, 0, c->serial, sizeof(c->serial));
    inv_col_text(st, 1, c->asset_id, sizeof(c->asset_id));
    inv_col_text(st, 2, c->profile, sizeof(c->profile));
    c->not_before = db_column_int64(st, 3);
    c->not_after = db_column_int64(st, 4);
    c->state = inventory_cert_state_parse(state);
    if ((c->state == INV_CERT_VALID || c->state == INV_CERT_SUPERSEDED) && c->not_after < now)
        c->state = INV_CERT_EXPIRED;
    inv_col_text(st, 6, c->key_fp, sizeof(c->key_fp));
    c->revoked_at = db_column_type(st, 7) == DB_NULL ? 0 : db_column_int64(st, 7);
    c->reason = db_column_type(st, 8) == DB_NULL ? -1 : db_column_int(st, 8);
    c->pem = with_pem ? (char *)db_column_text(st, 9) : NULL;
    c->rev_seq = db_column_type(st, 10) == DB_NULL ? 0 : db_column_int64(st, 10);
    c->seen_at = db_column_type(st, 11) == DB_NULL ? 0 : db_column_int64(st, 11);
    c->superseded_at =
        db_column_type(st, 12) == DB_NULL ? 0 : db_column_int64(st, 12);
    inv_col_text(st, 13, c->superseded_by, sizeof(c->superseded_by));
}

/* Refuses a key that is compromised anywhere or certified for another asset. */
static int key_check(struct inventory *inv, const char *asset_id, const char *key_fp)
{
    char other[PROTO_ASSET_ID_MAX + 1] = "";
    struct db_stmt *st = NULL;
    int rc, src, compromised = 0;

    rc = inv_stmt(inv, SQL_CERT_KEY_USE, &st);
    if (rc != MQPKI_OK)
        goto out;
    /* Only a conflicting row matters: another asset's, or one revoked for key compromise
     * (first); renewals of one asset with one key do not make this grow. */
    if ((rc = inv_bind_text(inv, st, 1, key_fp)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 2, asset_id)) != MQPKI_OK)
        goto out;
    while ((src = db_step(st)) == DB_ROW) {
        const char *owner = (const char *)db_column_text(st, 0);
        if (db_column_type(st, 1) != DB_NULL &&
            db_column_int(st, 1) == REASON_KEY_COMPROMISE)
            compromised = 1;
        if (owner != NULL && strcmp(owner, asset_id) != 0 && other[0] == '\0')
            snprintf(other, sizeof(other), "%s", owner);
    }
    if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, "key check");
        goto out;
    }
    if (compromised)
        rc = mqpki_fail(MQPKI_ERR_POLICY, "asset %s: public key was revoked for key compromise",
                        asset_id);
    else if (other[0] != '\0')
        rc = mqpki_fail(MQPKI_ERR_POLICY, "asset %s: public key already certified for asset %s",
                        asset_id, other);
out:
    inv_stmt_done(st);
    return rc;
}

static int step_done(struct inventory *inv, struct db_stmt *st, const char *what)
{
    int src = db_step(st);

    inv_stmt_done(st);
    if (src != DB_DONE)
        return inv_db_fail(inv, src, what);
    return MQPKI_OK;
}

int inventory_cert_add(struct inventory *inv, const struct inventory_cert *c, int supersede,
                       const char *renews, const char *actor)
{
    char serial[PROTO_SERIAL_HEX_MAX + 1], key_fp[PROTO_FP_HEX_LEN + 1], nb[32], na[32];
    char renews_norm[PROTO_SERIAL_HEX_MAX + 1] = "";
    struct inv_tx tx = {0};
    struct db_stmt *st = NULL;
    int rc, src, state = -1, started = 0;

    if (inv == NULL || c == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "certificate add: arguments missing");
    rc = inv_check_id(c->asset_id);
    if (rc == MQPKI_OK)
        rc = serial_norm(c->serial, serial);
    if (rc == MQPKI_OK)
        rc = key_fp_norm(c->key_fp, key_fp);
    if (rc == MQPKI_OK && renews != NULL)
        rc = serial_norm(renews, renews_norm);
    if (rc == MQPKI_OK)
        rc = inv_check_text(actor, INV_TEXT_MAX, "actor");
    if (rc == MQPKI_OK && !profile_valid(c->profile))
        rc = mqpki_fail(MQPKI_ERR_INVALID, "certificate %s: unknown profile", serial);
    if (rc == MQPKI_OK && c->not_after < c->not_before)
        rc = mqpki_fail(MQPKI_ERR_INVALID, "certificate %s: not_after before not_before", serial);
    if (rc != MQPKI_OK)
        goto out;
    rc = inv_tx_start(inv, &tx);
    if (rc != MQPKI_OK)
        goto out;
    started = 1;
    rc = inv_asset_state(inv, c->asset_id, &state, NULL);
    if (rc != MQPKI_OK)
        goto out;
    if (state == INV_STATE_DECOMMISSIONED) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "asset %s is decommissioned", c->asset_id);
        goto out;
    }
    rc = inv_stmt(inv, SQL_CERT_EXISTS, &st);
    if (rc != MQPKI_OK || (rc = inv_bind_text(inv, st, 1, serial)) != MQPKI_OK)
        goto out;
    src = db_step(st);
    inv_stmt_done(st);
    st = NULL;
    if (src == DB_ROW) {
        rc = mqpki_fail(MQPKI_ERR_EXISTS, "certificate serial %s already exists", serial);
        goto out;
    }
    if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, "certificate add");
        goto out;
    }
    rc = key_check(inv, c->asset_id, key_fp);
    if (rc != MQPKI_OK)
        goto out;
    if (supersede) {
        /* Which certificate replaced which, and when: re-enrollment with the one that asked
         * for the new one is allowed only for a grace window while the newer one is unused;
         * the asset's other valid certificates are superseded without one. */
        rc = inv_stmt(inv, SQL_CERT_SUPERSEDE, &st);
        if (rc != MQPKI_OK || (rc = inv_bind_text(inv, st, 1, c->asset_id)) != MQPKI_OK ||
            (rc = inv_bind_text(inv, st, 3, serial)) != MQPKI_OK ||
            (rc = inv_bind_text(inv, st, 4, renews_norm)) != MQPKI_OK)
            goto out;
        db_bind_int64(st, 2, mqpki_now());
        rc = step_done(inv, st, "supersede");
        st = NULL;
        if (rc != MQPKI_OK)
            goto out;
    }
    if (supersede && renews_norm[0] != '\0') {
        /* A superseded certificate renewing in its window (its answers lost, maybe more than
         * once) now points at the newest one it asked for; its window still counts from its
         * first supersession. */
        rc = inv_stmt(inv, SQL_CERT_RENEWED_AGAIN, &st);
        if (rc != MQPKI_OK || (rc = inv_bind_text(inv, st, 1, renews_norm)) != MQPKI_OK ||
            (rc = inv_bind_text(inv, st, 2, serial)) != MQPKI_OK ||
            (rc = inv_bind_text(inv, st, 3, c->asset_id)) != MQPKI_OK)
            goto out;
        rc = step_done(inv, st, "supersede");
        st = NULL;
        if (rc != MQPKI_OK)
            goto out;
    }
    rc = inv_stmt(inv, SQL_CERT_INSERT, &st);
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = inv_bind_text(inv, st, 1, serial)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 2, c->asset_id)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 3, c->profile)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 6, key_fp)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 7, c->pem)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 4, c->not_before);
    db_bind_int64(st, 5, c->not_after);
    rc = step_done(inv, st, "certificate add");
    st = NULL;
    if (rc != MQPKI_OK)
        goto out;
    mqpki_time_str(c->not_before, nb);
    mqpki_time_str(c->not_after, na);
    rc = inv_audit(inv, actor, "cert.issue", serial,
                   json_pack("{s:s,s:s,s:s,s:s,s:s,s:b}", "asset", c->asset_id, "profile",
                             c->profile, "not_before", nb, "not_after", na, "key_fingerprint",
                             key_fp, "supersede", supersede != 0));
    if (rc != MQPKI_OK)
        goto out;
    /* First certificate, or recovery after revocation. */
    if (state == INV_STATE_REGISTERED || state == INV_STATE_REVOKED)
        rc = inv_asset_move(inv, c->asset_id, state, INV_STATE_ENROLLED, actor,
                            "certificate issued");
out:
    inv_stmt_done(st);
    if (started)
        rc = inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
    return rc;
}

int inventory_cert_get(struct inventory *inv, const char *serial, int with_pem,
                       struct inventory_cert *out)
{
    struct db_stmt *st = NULL;
    char norm[PROTO_SERIAL_HEX_MAX + 1];
    int rc;

    if (out != NULL)
        memset(out, 0, sizeof(*out));
    if (inv == NULL || out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "certificate get: arguments missing");
    rc = serial_norm(serial, norm);
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = inv_stmt_row(inv, SQL_CERT_GET, norm, "certificate", &st)) != MQPKI_OK)
        goto out;
    cert_from_row(st, mqpki_now(), with_pem, out);
    if (with_pem && out->pem != NULL) {
        out->pem = strdup(out->pem);
        if (out->pem == NULL)
            rc = MQPKI_ERR_NOMEM;
    }
out:
    inv_stmt_done(st);
    return rc;
}

int inventory_cert_list(struct inventory *inv, const char *asset_id, int state, int with_pem,
                        inventory_cert_cb cb, void *ctx)
{
    struct inventory_cert c;
    struct db_stmt *st = NULL;
    const char *cond = "";
    int64_t now = mqpki_now();
    char sql[512];
    int rc = MQPKI_OK, src;

    if (inv == NULL || cb == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "certificate list: arguments missing");
    if (asset_id != NULL && (rc = inv_check_id(asset_id)) != MQPKI_OK)
        return rc;
    /* Fixed fragments only; ?1 asset, ?2 now. Expiry is derived here as in cert_from_row. */
    switch (state) {
    case -1: cond = "TRUE"; break;
    case INV_CERT_VALID: cond = "state = 'valid' AND not_after >= ?2"; break;
    case INV_CERT_SUPERSEDED: cond = "state = 'superseded' AND not_after >= ?2"; break;
    case INV_CERT_EXPIRED: cond = "state IN ('valid', 'superseded') AND not_after < ?2"; break;
    case INV_CERT_REVOKED: cond = "state = 'revoked'"; break;
    default: return mqpki_fail(MQPKI_ERR_INVALID, "certificate list: unknown state %d", state);
    }
    snprintf(sql, sizeof(sql), "SELECT " INV_CERT_COLS " FROM certs WHERE %s%s ORDER BY issued_seq",
             cond, asset_id != NULL ? " AND asset_id = ?1" : "");
    rc = inv_prepare(inv, sql, &st);
    if (rc != MQPKI_OK)
        goto out;
    if (asset_id != NULL && (rc = inv_bind_text(inv, st, 1, asset_id)) != MQPKI_OK)
        goto out;
    if (strstr(cond, "?2") != NULL)
        db_bind_int64(st, 2, now);
    while ((src = db_step(st)) == DB_ROW) {
        cert_from_row(st, now, with_pem, &c);
        if (cb(&c, ctx) != 0) {
            src = DB_DONE;
            break;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "certificate list");
out:
    db_finalize(st);
    return rc;
}

int inventory_cert_count(struct inventory *inv, int state, int64_t *out)
{
    struct db_stmt *st = NULL;
    const char *cond;
    char sql[256];
    int rc, src;

    *out = 0;
    /* Fixed fragments only; ?1 now. The same derivation of expiry as inventory_cert_list. */
    switch (state) {
    case -1: cond = "TRUE"; break;
    case INV_CERT_VALID: cond = "state = 'valid' AND not_after >= ?1"; break;
    case INV_CERT_SUPERSEDED: cond = "state = 'superseded' AND not_after >= ?1"; break;
    case INV_CERT_EXPIRED: cond = "state IN ('valid', 'superseded') AND not_after < ?1"; break;
    case INV_CERT_REVOKED: cond = "state = 'revoked'"; break;
    default: return mqpki_fail(MQPKI_ERR_INVALID, "certificate count: unknown state %d", state);
    }
    snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM certs WHERE %s", cond);
    if ((rc = inv_prepare(inv, sql, &st)) != MQPKI_OK)
        goto out;
    if (strstr(cond, "?1") != NULL)
        db_bind_int64(st, 1, mqpki_now());
    if ((src = db_step(st)) != DB_ROW) {
        rc = inv_db_fail(inv, src, "certificate count");
        goto out;
    }
    *out = db_column_int64(st, 0);
out:
    db_finalize(st);
    return rc;
}

static int count_certs(struct inventory *inv, enum inv_sql which, const char *asset_id, int64_t now,
                       int64_t *n)
{
    struct db_stmt *st = NULL;
    int rc, src;

    *n = 0;
    rc = inv_stmt(inv, which, &st);
    if (rc != MQPKI_OK || (rc = inv_bind_text(inv, st, 1, asset_id)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 2, now);
    src = db_step(st);
    if (src != DB_ROW) {
        rc = inv_db_fail(inv, src, "certificate count");
        goto out;
    }
    *n = db_column_int64(st, 0);
out:
    inv_stmt_done(st);
    return rc;
}

enum follow { AFTER_HOLD, AFTER_FINAL, AFTER_UNHOLD };

/*
 * Where the asset stands after a hold, a final revocation or an unhold (DESIGN.md 8):
 * hold -> suspended; final revocation of its last live (valid or superseded, unexpired, not
 * held) certificate -> revoked; no hold left -> active again (enrolled if never seen), and a
 * revoked asset whose held certificate comes back is enrolled again (recovery).
 */
static int asset_follow(struct inventory *inv, const char *asset_id, enum follow what,
                        const char *actor, const char *reason)
{
    int64_t live = 0, held = 0, last_seen = 0, now = mqpki_now();
    int rc, state = -1, to = -1, back;

    rc = inv_asset_state(inv, asset_id, &state, &last_seen);
    if (rc == MQPKI_OK)
        rc = count_certs(inv, SQL_CERT_COUNT_LIVE, asset_id, now, &live);
    if (rc == MQPKI_OK)
        rc = count_certs(inv, SQL_CERT_COUNT_HELD, asset_id, now, &held);
    if (rc != MQPKI_OK || state == INV_STATE_DECOMMISSIONED)
        return rc;
    back = last_seen > 0 ? INV_STATE_ACTIVE : INV_STATE_ENROLLED;
    switch (what) {
    case AFTER_HOLD:
        if (state == INV_STATE_ENROLLED || state == INV_STATE_ACTIVE)
            to = INV_STATE_SUSPENDED;
        break;
    case AFTER_FINAL:
        if (live == 0 && state != INV_STATE_REVOKED)
            to = INV_STATE_REVOKED;
        else if (live > 0 && held == 0 && state == INV_STATE_SUSPENDED)
            to = back;
        break;
    case AFTER_UNHOLD:
        if (held == 0 && state == INV_STATE_SUSPENDED)
            to = back;
        else if (live > 0 && state == INV_STATE_REVOKED)
            to = INV_STATE_ENROLLED;
        break;
    }
    if (to < 0 || to == state)
        return MQPKI_OK;
    return inv_asset_move(inv, asset_id, state, to, actor, reason);
}

int inventory_cert_revoke(struct inventory *inv, const char *serial, int reason, int64_t when,
                          const char *actor)
{
    struct inventory_cert c = {0};
    struct inv_tx tx = {0};
    struct db_stmt *st = NULL;
    char norm[PROTO_SERIAL_HEX_MAX + 1], why[64], when_str[32];
    int64_t seq = 0;
    int rc, started = 0, upgrade = 0;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "revoke: no store");
    rc = serial_norm(serial, norm);
    if (rc == MQPKI_OK)
        rc = inv_check_text(actor, INV_TEXT_MAX, "actor");
    /* RFC 5280 5.3.1: 7 is unused; removeFromCRL (8) only appears in delta CRLs. */
    if (rc == MQPKI_OK &&
        (reason < 0 || reason > REASON_MAX || reason == 7 || reason == REASON_REMOVE_FROM_CRL))
        rc = mqpki_fail(MQPKI_ERR_INVALID,
                        "certificate %s: reason code %d not allowed "
                        "(RFC 5280 5.3.1)",
                        norm, reason);
    if (rc != MQPKI_OK)
        goto out;
    if (when <= 0)
        when = mqpki_now();
    rc = inv_tx_start(inv, &tx);
    if (rc != MQPKI_OK)
        goto out;
    started = 1;
    rc = inventory_cert_get(inv, norm, 0, &c);
    if (rc != MQPKI_OK)
        goto out;
    /* A final revocation learns of a key compromise after the fact (RFC 5280 5.3.1 lets the
     * reason change): the entry keeps its date and moves up the revocation sequence, so delta
     * CRLs carry the new reason, and the key is refused from then on (SQL_CERT_KEY_USE). */
    upgrade = c.state == INV_CERT_REVOKED && c.reason != REASON_HOLD &&
              c.reason != REASON_KEY_COMPROMISE && reason == REASON_KEY_COMPROMISE;
    if (c.state == INV_CERT_REVOKED && (c.reason != REASON_HOLD || reason == REASON_HOLD) &&
        !upgrade) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "certificate %s is already %s", norm,
                        c.reason == REASON_HOLD ? "on hold" : "revoked");
        goto out;
    }
    if (upgrade)
        when = c.revoked_at;
    /* A hold turned final gets the new date and a new place in the revocation sequence, so
     * delta CRLs since the hold carry it. */
    if ((rc = inv_rev_next(inv, &seq)) != MQPKI_OK)
        goto out;
    rc = inv_stmt(inv, SQL_CERT_REVOKE, &st);
    if (rc != MQPKI_OK || (rc = inv_bind_text(inv, st, 1, norm)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 2, when);
    db_bind_int64(st, 3, reason);
    db_bind_int64(st, 4, seq);
    rc = step_done(inv, st, "revoke");
    st = NULL;
    if (rc != MQPKI_OK)
        goto out;
    mqpki_time_str(when, when_str);
    rc = inv_audit(inv, actor, "cert.revoke", norm,
                   json_pack("{s:s,s:s?,s:s,s:b,s:I,s:o}", "asset", c.asset_id, "reason",
                             proto_reason_name(reason), "revoked_at", when_str, "was_held",
                             c.state == INV_CERT_REVOKED && !upgrade, "rev_seq", (json_int_t)seq,
                             "was_reason",
                             upgrade && proto_reason_name(c.reason) != NULL
                                 ? json_string(proto_reason_name(c.reason))
                                 : json_null()));
    if (rc != MQPKI_OK || upgrade)
        goto out;
    snprintf(why, sizeof(why), "%s %s", reason == REASON_HOLD ? "hold" : "revocation", norm);
    rc =
        asset_follow(inv, c.asset_id, reason == REASON_HOLD ? AFTER_HOLD : AFTER_FINAL, actor, why);
out:
    inv_stmt_done(st);
    if (started)
        rc = inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
    inventory_cert_clear(&c);
    return rc;
}

int inventory_cert_unhold(struct inventory *inv, const char *serial, const char *actor)
{
    struct inventory_cert c = {0};
    struct inv_tx tx = {0};
    struct db_stmt *st = NULL;
    char norm[PROTO_SERIAL_HEX_MAX + 1], why[64];
    int64_t seq = 0;
    int rc, started = 0;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "unhold: no store");
    rc = serial_norm(serial, norm);
    if (rc == MQPKI_OK)
        rc = inv_check_text(actor, INV_TEXT_MAX, "actor");
    if (rc != MQPKI_OK)
        goto out;
    rc = inv_tx_start(inv, &tx);
    if (rc != MQPKI_OK)
        goto out;
    started = 1;
    rc = inventory_cert_get(inv, norm, 0, &c);
    if (rc != MQPKI_OK)
        goto out;
    if (c.state != INV_CERT_REVOKED || c.reason != REASON_HOLD) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "certificate %s is not on hold", norm);
        goto out;
    }
    /* Lifting a hold is a change of revocation state too: the next delta CRL carries it as
     * removeFromCRL (RFC 5280 5.3.1). */
    if ((rc = inv_rev_next(inv, &seq)) != MQPKI_OK)
        goto out;
    rc = inv_stmt(inv, SQL_CERT_UNHOLD, &st);
    if (rc != MQPKI_OK || (rc = inv_bind_text(inv, st, 1, norm)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 2, seq);
    db_bind_int64(st, 3, mqpki_now());
    rc = step_done(inv, st, "unhold");
    st = NULL;
    if (rc != MQPKI_OK)
        goto out;
    rc = inv_audit(inv, actor, "cert.unhold", norm,
                   json_pack("{s:s,s:I}", "asset", c.asset_id, "rev_seq", (json_int_t)seq));
    if (rc != MQPKI_OK)
        goto out;
    snprintf(why, sizeof(why), "hold lifted %s", norm);
    rc = asset_follow(inv, c.asset_id, AFTER_UNHOLD, actor, why);
out:
    inv_stmt_done(st);
    if (started)
        rc = inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
    inventory_cert_clear(&c);
    return rc;
}

int inventory_revoked_list(struct inventory *inv, int64_t now, int64_t since_seq, int64_t upto_seq,
                           inventory_revoked_cb cb, void *ctx)
{
    struct db_stmt *st = NULL;
    int delta = since_seq >= 0;
    int rc, src;

    if (inv == NULL || cb == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "revoked list: arguments missing");
    if (!delta)
        /* Streams in revocation order through the partial index on revoked certificates;
         * pinned so the planner never falls back to sorting a million rows in a temporary
         * b-tree. */
        rc = inv_prepare(inv,
                         "SELECT serial, revoked_at, reason, state FROM certs INDEXED BY "
                         "certs_revoked WHERE state = 'revoked' AND not_after >= ?1 "
                         "AND rev_seq <= ?3 ORDER BY revoked_at, serial",
                         &st);
    else
        /* What changed after the base: revocations, holds made final, holds lifted. */
        rc = inv_prepare(inv,
                         "SELECT serial, rev_time, reason, state FROM certs INDEXED BY "
                         "certs_rev_seq WHERE rev_seq > ?2 AND rev_seq <= ?3 AND "
                         "not_after >= ?1 ORDER BY rev_seq",
                         &st);
    if (rc != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, now);
    if (delta)
        db_bind_int64(st, 2, since_seq);
    db_bind_int64(st, 3, upto_seq);
    while ((src = db_step(st)) == DB_ROW) {
        const char *state = (const char *)db_column_text(st, 3);
        int reason = db_column_type(st, 2) == DB_NULL ? 0 : db_column_int(st, 2);
        if (state == NULL || strcmp(state, "revoked") != 0)
            reason = REASON_REMOVE_FROM_CRL;
        if (cb((const char *)db_column_text(st, 0), db_column_int64(st, 1), reason,
               ctx) != 0) {
            src = DB_DONE;
            break;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "revoked list");
out:
    db_finalize(st);
    return rc;
}

int inventory_cert_list_by_key(struct inventory *inv, const char *key_fp, inventory_cert_cb cb,
                               void *ctx)
{
    struct inventory_cert c;
    struct db_stmt *st = NULL;
    char fp[PROTO_FP_HEX_LEN + 1];
    int64_t now = mqpki_now();
    int rc, src;

    if (inv == NULL || cb == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "certificates by key: arguments missing");
    if ((rc = key_fp_norm(key_fp, fp)) != MQPKI_OK)
        return rc;
    if ((rc = inv_stmt(inv, SQL_CERT_BY_KEY, &st)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 1, fp)) != MQPKI_OK)
        goto out;
    while ((src = db_step(st)) == DB_ROW) {
        cert_from_row(st, now, 0, &c);
        if (cb(&c, ctx) != 0) {
            src = DB_DONE;
            break;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "certificates by key");
out:
    inv_stmt_done(st);
    return rc;
}

int inventory_cert_seen(struct inventory *inv, const char *serial, const char *asset_id,
                        int64_t when)
{
    char norm[PROTO_SERIAL_HEX_MAX + 1];
    struct db_stmt *st = NULL;
    int rc;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "certificate seen: no store");
    if ((rc = serial_norm(serial, norm)) != MQPKI_OK || (rc = inv_check_id(asset_id)) != MQPKI_OK)
        return rc;
    if ((rc = inv_stmt(inv, SQL_CERT_SEEN, &st)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 1, norm)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 2, asset_id)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 3, when);
    rc = step_done(inv, st, "certificate seen");
    st = NULL;
out:
    inv_stmt_done(st);
    return rc;
}

int inventory_cert_set_key_fp(struct inventory *inv, const char *serial, const char *key_fp,
                              const char *actor)
{
    char norm[PROTO_SERIAL_HEX_MAX + 1];
    struct inv_tx tx = {0};
    struct db_stmt *st = NULL;
    int rc;

    if (inv == NULL || key_fp == NULL || strlen(key_fp) != PROTO_FP_HEX_LEN)
        return mqpki_fail(MQPKI_ERR_INVALID, "certificate key fingerprint: arguments missing");
    if ((rc = serial_norm(serial, norm)) != MQPKI_OK ||
        (rc = inv_check_text(actor, INV_TEXT_MAX, "actor")) != MQPKI_OK)
        return rc;
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    if ((rc = inv_stmt(inv, SQL_CERT_KEY_FP, &st)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 1, norm)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 2, key_fp)) != MQPKI_OK)
        goto out;
    rc = step_done(inv, st, "certificate key fingerprint");
    st = NULL;
    if (rc == MQPKI_OK)
        rc = inv_audit(inv, actor, "cert.key_fp", norm, json_pack("{s:s}", "key_fp", key_fp));
out:
    inv_stmt_done(st);
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}

int inventory_cert_list_expiring(struct inventory *inv, int64_t now, int64_t until,
                                 inventory_cert_cb cb, void *ctx)
{
    struct inventory_cert c;
    struct db_stmt *st = NULL;
    int rc, src;

    if (inv == NULL || cb == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "expiring certificates: arguments missing");
    /* Live certificates only: a superseded one expiring is the renewal working. */
    rc = inv_prepare(inv,
                     "SELECT " INV_CERT_COLS " FROM certs WHERE state = 'valid' AND "
                     "not_after >= ?1 AND not_after < ?2 ORDER BY not_after, serial",
                     &st);
    if (rc != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, now);
    db_bind_int64(st, 2, until);
    while ((src = db_step(st)) == DB_ROW) {
        cert_from_row(st, now, 0, &c);
        if (cb(&c, ctx) != 0) {
            src = DB_DONE;
            break;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "expiring certificates");
out:
    db_finalize(st);
    return rc;
}

int inventory_cert_expiry(struct inventory *inv, int64_t now, struct inventory_expiry *out)
{
    struct db_stmt *st = NULL;
    int rc, src;

    memset(out, 0, sizeof(*out));
    rc = inv_prepare(inv,
                     "SELECT MIN(not_after), "
                     "CAST(COALESCE(SUM(CASE WHEN not_after < ?2 THEN 1 ELSE 0 END), 0) "
                     "AS BIGINT), "
                     "CAST(COALESCE(SUM(CASE WHEN not_after < ?3 THEN 1 ELSE 0 END), 0) "
                     "AS BIGINT), COUNT(*) "
                     "FROM certs WHERE state = 'valid' AND not_after >= ?1",
                     &st);
    if (rc != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, now);
    db_bind_int64(st, 2, now + 7 * 86400);
    db_bind_int64(st, 3, now + 30 * 86400);
    if ((src = db_step(st)) != DB_ROW) {
        rc = inv_db_fail(inv, src, "certificate expiry");
        goto out;
    }
    out->earliest = db_column_type(st, 0) == DB_NULL ? 0 : db_column_int64(st, 0);
    out->within_7d = db_column_int64(st, 1);
    out->within_30d = db_column_int64(st, 2);
    out->live = db_column_int64(st, 3);
out:
    db_finalize(st);
    return rc;
}
