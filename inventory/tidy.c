/*
 * inventory/tidy.c: retention. Removes what no one needs any more (certificates expired long
 * ago, tokens that can no longer be used) in one audited transaction, and gives the space back
 * to the file system with SQLite's incremental vacuum in small steps (PostgreSQL's autovacuum
 * does that on its own).
 */
#include <string.h>
#include <time.h>

#include "inventory_int.h"

/* A token no longer usable: used, revoked, burned or expired; its last moment is when that
 * happened (a burned token: its expiry). */
#define TOKEN_DEAD                                                                                 \
    "(used_at IS NOT NULL OR revoked_at IS NOT NULL OR failures >= 5 OR expires_at < ?2) AND "    \
    "COALESCE(used_at, revoked_at, expires_at) < ?1"
_Static_assert(INV_TOKEN_MAX_FAILURES == 5, "TOKEN_DEAD names the burn limit");

/* Expired long enough, unless revoked for key compromise (RFC 5280 reason 1): that row is what
 * keeps the key from ever being certified again (inventory_cert_add's key check). */
#define CERT_GONE "not_after < ?1 AND NOT (state = 'revoked' AND COALESCE(reason, 0) = 1)"

static int count_or_delete(struct inventory *inv, const char *sql, int nparams, int64_t a,
                           int64_t b, int64_t *n, int changes)
{
    struct db_stmt *st = NULL;
    int rc, src;

    if ((rc = inv_prepare(inv, sql, &st)) != MQPKI_OK)
        return rc;
    db_bind_int64(st, 1, a);
    if (nparams > 1)
        db_bind_int64(st, 2, b);
    src = db_step(st);
    if (src == DB_ROW && !changes)
        *n = db_column_int64(st, 0);
    else if (src == DB_DONE && changes)
        *n = inv->db->ops->changes(inv->db);
    else
        rc = inv_db_fail(inv, src, "tidy");
    db_finalize(st);
    return rc;
}

int inventory_tidy(struct inventory *inv, int64_t now, int64_t cert_before, int64_t token_before,
                   int dry_run, const char *actor, struct inventory_tidy *out)
{
    struct inv_tx tx;
    int rc;

    memset(out, 0, sizeof(*out));
    /* Never a certificate that has not expired: a CRL may still need its entry. */
    if (cert_before > now)
        cert_before = now;
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    if (dry_run) {
        if ((rc = count_or_delete(inv, "SELECT COUNT(*) FROM certs WHERE " CERT_GONE, 1,
                                  cert_before, 0, &out->certs, 0)) == MQPKI_OK)
            rc = count_or_delete(inv, "SELECT COUNT(*) FROM tokens WHERE " TOKEN_DEAD, 2,
                                 token_before, now, &out->tokens, 0);
        return inv_tx_end(inv, &tx, 0, rc);
    }
    /* Their history stays in the audit log, whose chain covers it (nothing there is removed). */
    if ((rc = count_or_delete(inv, "DELETE FROM certs WHERE " CERT_GONE, 1, cert_before, 0,
                              &out->certs, 1)) != MQPKI_OK ||
        (rc = count_or_delete(inv, "DELETE FROM tokens WHERE " TOKEN_DEAD, 2, token_before, now,
                              &out->tokens, 1)) != MQPKI_OK)
        return inv_tx_end(inv, &tx, 0, rc);
    rc = inv_audit(inv, actor, "store.tidy", "-",
                   json_pack("{s:I, s:I, s:I, s:I}", "certs", (json_int_t)out->certs, "tokens",
                             (json_int_t)out->tokens, "cert_before", (json_int_t)cert_before,
                             "token_before", (json_int_t)token_before));
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}

static int pragma_value(struct inventory *inv, const char *sql, int64_t *out)
{
    struct db_stmt *st = NULL;
    int rc, src;

    if ((rc = inv_prepare(inv, sql, &st)) != MQPKI_OK)
        return rc;
    if ((src = db_step(st)) == DB_ROW)
        *out = db_column_int64(st, 0);
    else
        rc = inv_db_fail(inv, src, sql);
    db_finalize(st);
    return rc;
}

int inventory_vacuum(struct inventory *inv, int step_pages, int allow_full, int64_t *freed,
                     int *switched)
{
    int64_t mode = 0, free_pages = 0, before = 0;
    char sql[64];
    int rc;

    *freed = 0;
    *switched = 0;
    if (inv->in_tx)
        return mqpki_fail(MQPKI_ERR_STATE, "vacuum: inside a transaction");
    if (step_pages < 1)
        step_pages = 1;
    /* PostgreSQL gives space back itself (autovacuum); the file-level steps are SQLite's. */
    if (inv->ops == &db_pg_ops)
        return MQPKI_OK;
    if ((rc = pragma_value(inv, "PRAGMA auto_vacuum", &mode)) != MQPKI_OK ||
        (rc = pragma_value(inv, "PRAGMA freelist_count", &before)) != MQPKI_OK)
        return rc;
    /* 2 is INCREMENTAL. A store made before it needs one full VACUUM to switch (it rewrites
     * the file and holds the write lock meanwhile): only when the caller allows it. */
    if (mode != 2) {
        if (!allow_full)
            return mqpki_fail(MQPKI_ERR_STATE, "%s: incremental vacuum not on yet (run 'mqpki "
                                               "tidy' once)",
                              inv->path);
        if ((rc = inv_exec(inv, "PRAGMA auto_vacuum = INCREMENTAL")) != MQPKI_OK ||
            (rc = inv_exec(inv, "VACUUM")) != MQPKI_OK)
            return rc;
        *switched = 1;
        *freed = before;
        before = 0;
    }
    /* Small steps, each its own short write transaction: enrollment commits in between. */
    snprintf(sql, sizeof(sql), "PRAGMA incremental_vacuum(%d)", step_pages);
    for (;;) {
        struct timespec pause = {0, 5 * 1000 * 1000};
        if ((rc = pragma_value(inv, "PRAGMA freelist_count", &free_pages)) != MQPKI_OK)
            return rc;
        if (free_pages == 0)
            break;
        if ((rc = inv_exec(inv, sql)) != MQPKI_OK)
            return rc;
        nanosleep(&pause, NULL);
    }
    *freed += before;
    /* WAL: the file shrinks when the checkpoint writes the truncation back. */
    (void)inv_exec(inv, "PRAGMA wal_checkpoint(TRUNCATE)");
    mqpki_err_clear();
    return MQPKI_OK;
}
