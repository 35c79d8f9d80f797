/*
 * inventory/crls.c: the CRL publication outbox, the revocation sequence, read snapshots, the
 * publication lock and what brokers report holding. The store is the one truth about CRLs:
 * every number, every signed CRL and its state live here; files are an export.
 */
#include "inventory_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

static const char *const kind_names[] = {"full", "delta"};
static const char *const crl_state_names[] = {"pending", "signed", "done"};

static int parse_name(const char *const *names, int n, const char *text)
{
    for (int i = 0; text != NULL && i < n; i++)
        if (strcmp(text, names[i]) == 0)
            return i;
    return -1;
}

static int step_bound(struct inventory *inv, struct db_stmt *st, const char *what, int *changes)
{
    int src = db_step(st);

    if (src != DB_DONE)
        return inv_db_fail(inv, src, what);
    if (changes != NULL)
        *changes = inv->db->ops->changes(inv->db);
    return MQPKI_OK;
}

/* One counter's next value (UPDATE ... RETURNING), inside the current unit of work. */
static int counter_next(struct inventory *inv, enum inv_sql which, const char *what, int64_t *out)
{
    struct db_stmt *st = NULL;
    int rc, src;

    *out = 0;
    if ((rc = inv_stmt(inv, which, &st)) != MQPKI_OK)
        goto out;
    src = db_step(st);
    if (src != DB_ROW) {
        rc = src == DB_DONE
                 ? mqpki_fail(MQPKI_ERR_STORE, "%s: %s counter missing", inv->path, what)
                 : inv_db_fail(inv, src, what);
        goto out;
    }
    *out = db_column_int64(st, 0);
    /* RETURNING: the update only completes when the statement has run to the end. */
    if ((src = db_step(st)) != DB_DONE)
        rc = inv_db_fail(inv, src, what);
out:
    inv_stmt_done(st);
    return rc;
}

int inv_rev_next(struct inventory *inv, int64_t *out)
{
    return counter_next(inv, SQL_REV_NEXT, "revocation sequence", out);
}

int inventory_rev_current(struct inventory *inv, int64_t *out)
{
    struct db_stmt *st = NULL;
    int rc, src;

    *out = 0;
    if ((rc = inv_stmt(inv, SQL_REV_CURRENT, &st)) != MQPKI_OK)
        return rc;
    if ((src = db_step(st)) == DB_ROW)
        *out = db_column_int64(st, 0);
    else
        rc = src == DB_DONE
                 ? mqpki_fail(MQPKI_ERR_STORE, "%s: revocation sequence missing", inv->path)
                 : inv_db_fail(inv, src, "revocation sequence");
    inv_stmt_done(st);
    return rc;
}

int inventory_snapshot_begin(struct inventory *inv)
{
    int rc;

    if (inv == NULL || inv->in_tx || inv->in_snapshot)
        return mqpki_fail(MQPKI_ERR_STATE, "inventory_snapshot_begin: a transaction is open");
    if ((rc = inv->db->ops->begin_snapshot(inv->db)) != DB_OK)
        return inv_db_fail(inv, rc, "snapshot");
    inv->in_snapshot = 1;
    return MQPKI_OK;
}

void inventory_snapshot_end(struct inventory *inv)
{
    if (inv == NULL || !inv->in_snapshot)
        return;
    if (inv->db->ops->in_transaction(inv->db))
        (void)inv->db->ops->exec(inv->db, "COMMIT");
    inv->in_snapshot = 0;
}

static void crl_from_row(struct db_stmt *st, struct inventory_crl *c)
{
    memset(c, 0, sizeof(*c));
    c->number = db_column_int64(st, 0);
    c->kind = parse_name(kind_names, 2, (const char *)db_column_text(st, 1));
    c->state = parse_name(crl_state_names, 3, (const char *)db_column_text(st, 2));
    inv_col_text(st, 3, c->reason, sizeof(c->reason));
    c->created_at = db_column_int64(st, 4);
    c->base = db_column_type(st, 5) == DB_NULL ? -1 : db_column_int64(st, 5);
    c->cutoff = db_column_type(st, 6) == DB_NULL ? -1 : db_column_int64(st, 6);
    c->this_update = db_column_int64(st, 7);
    c->next_update = db_column_int64(st, 8);
    c->entries = db_column_int64(st, 9);
    c->signed_at = db_column_int64(st, 10);
    c->done_at = db_column_int64(st, 11);
    c->folded_into = db_column_int64(st, 12);
}

int inventory_crl_reserve(struct inventory *inv, int kind, const char *reason, const char *actor,
                          int64_t *number)
{
    struct inv_tx tx = {0};
    struct db_stmt *st = NULL;
    int64_t n = 0;
    int rc;

    if (number != NULL)
        *number = 0;
    if (inv == NULL || number == NULL || (kind != INV_CRL_FULL && kind != INV_CRL_DELTA) ||
        reason == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "CRL reserve: arguments missing");
    if ((rc = inv_check_text(reason, 32, "CRL reason")) != MQPKI_OK ||
        (rc = inv_check_text(actor, INV_TEXT_MAX, "actor")) != MQPKI_OK)
        return rc;
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    if ((rc = counter_next(inv, SQL_CRL_NEXT, "CRL number", &n)) != MQPKI_OK)
        goto out;
    if ((rc = inv_stmt(inv, SQL_CRL_INSERT, &st)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, n);
    if ((rc = inv_bind_text(inv, st, 2, kind_names[kind])) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 3, reason)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 4, mqpki_now());
    if ((rc = step_bound(inv, st, "CRL reserve", NULL)) != MQPKI_OK)
        goto out;
    inv_stmt_done(st);
    st = NULL;
    /* Every replica's publisher wakes when this commits (PostgreSQL; a timer elsewhere). */
    if ((rc = inv->db->ops->notify(inv->db, INV_CHANNEL_OUTBOX)) != DB_OK) {
        rc = inv_db_fail(inv, rc, "CRL reserve");
        goto out;
    }
    rc = inv_audit(inv, actor != NULL ? actor : "system", "crl.reserve", "crl",
                   json_pack("{s:I,s:s,s:s}", "number", (json_int_t)n, "kind", kind_names[kind],
                             "reason", reason));
out:
    inv_stmt_done(st);
    rc = inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
    if (rc == MQPKI_OK)
        *number = n;
    return rc;
}

int inventory_crl_open(struct inventory *inv, inventory_crl_cb cb, void *ctx, int64_t *count)
{
    struct inventory_crl c;
    struct db_stmt *st = NULL;
    int64_t n = 0;
    int rc, src;

    if (count != NULL)
        *count = 0;
    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "CRL open list: no store");
    if ((rc = inv_stmt(inv, SQL_CRL_OPEN, &st)) != MQPKI_OK)
        return rc;
    while ((src = db_step(st)) == DB_ROW) {
        n++;
        if (cb == NULL)
            continue;
        crl_from_row(st, &c);
        if (cb(&c, ctx) != 0) {
            src = DB_DONE;
            break;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "CRL open list");
    inv_stmt_done(st);
    if (count != NULL)
        *count = n;
    return rc;
}

int inventory_crl_get(struct inventory *inv, int64_t number, struct inventory_crl *out)
{
    struct db_stmt *st = NULL;
    int rc, src;

    memset(out, 0, sizeof(*out));
    if ((rc = inv_stmt(inv, SQL_CRL_GET, &st)) != MQPKI_OK)
        return rc;
    db_bind_int64(st, 1, number);
    src = db_step(st);
    if (src == DB_ROW)
        crl_from_row(st, out);
    else if (src == DB_DONE)
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "no CRL number %lld", (long long)number);
    else
        rc = inv_db_fail(inv, src, "CRL get");
    inv_stmt_done(st);
    return rc;
}

int inventory_crl_latest(struct inventory *inv, int kind, struct inventory_crl *out)
{
    struct db_stmt *st = NULL;
    int rc;

    memset(out, 0, sizeof(*out));
    if (kind != INV_CRL_FULL && kind != INV_CRL_DELTA)
        return mqpki_fail(MQPKI_ERR_INVALID, "CRL latest: unknown kind %d", kind);
    rc = inv_stmt_row(inv, SQL_CRL_LATEST, kind_names[kind], "signed CRL of kind", &st);
    if (rc == MQPKI_OK)
        crl_from_row(st, out);
    inv_stmt_done(st);
    return rc;
}

int inventory_crl_first_after(struct inventory *inv, int kind, int64_t after,
                              struct inventory_crl *out)
{
    struct db_stmt *st = NULL;
    int rc, src;

    memset(out, 0, sizeof(*out));
    if (kind != INV_CRL_FULL && kind != INV_CRL_DELTA)
        return mqpki_fail(MQPKI_ERR_INVALID, "CRL first after: unknown kind %d", kind);
    if ((rc = inv_stmt(inv, SQL_CRL_FIRST_AFTER, &st)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 1, kind_names[kind])) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 2, after);
    src = db_step(st);
    if (src == DB_ROW)
        crl_from_row(st, out);
    else if (src == DB_DONE)
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "no %s CRL after %lld", kind_names[kind],
                        (long long)after);
    else
        rc = inv_db_fail(inv, src, "CRL first after");
out:
    inv_stmt_done(st);
    return rc;
}

int inventory_crl_der(struct inventory *inv, int64_t number, unsigned char **der, size_t *len)
{
    struct db_stmt *st = NULL;
    unsigned char *buf = NULL;
    size_t n = 0;
    int rc = MQPKI_OK, src;

    *der = NULL;
    *len = 0;
    if ((rc = inv_stmt(inv, SQL_CRL_DER, &st)) != MQPKI_OK)
        return rc;
    db_bind_int64(st, 1, number);
    /* In parts (inventory_crl_signed): one read snapshot, as the statement runs. */
    while ((src = db_step(st)) == DB_ROW) {
        const void *blob = db_column_blob(st, 0);
        int part = db_column_bytes(st, 0);
        unsigned char *grown;
        if (blob == NULL || part <= 0 || (size_t)part > INT32_MAX - n) {
            rc = mqpki_fail(MQPKI_ERR_STORE, "CRL %lld: a damaged part of its DER",
                            (long long)number);
            goto out;
        }
        if ((grown = realloc(buf, n + (size_t)part)) == NULL) {
            rc = MQPKI_ERR_NOMEM;
            goto out;
        }
        buf = grown;
        memcpy(buf + n, blob, (size_t)part);
        n += (size_t)part;
    }
    if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, "CRL DER");
        goto out;
    }
    if (n == 0) {
        struct inventory_crl c;
        rc = inventory_crl_get(inv, number, &c) == MQPKI_OK
                 ? mqpki_fail(MQPKI_ERR_NOT_FOUND, "CRL %lld: its DER is no longer kept",
                              (long long)number)
                 : mqpki_fail(MQPKI_ERR_NOT_FOUND, "no CRL number %lld", (long long)number);
        goto out;
    }
    *der = buf;
    *len = n;
    buf = NULL;
out:
    inv_stmt_done(st);
    free(buf);
    return rc;
}

/* Stores der as parts of CRL_DER_PART bytes under (number, attempt), each part in a transaction
 * of its own unless the caller holds one (then all in it). */
#define CRL_DER_PART (1024 * 1024)

static int der_put(struct inventory *inv, int64_t number, int64_t attempt, const unsigned char *der,
                   size_t len, int own_tx)
{
    size_t off = 0;
    int part = 0, rc = MQPKI_OK;

    while (rc == MQPKI_OK && off < len) {
        struct inv_tx tx = {0};
        struct db_stmt *st = NULL;
        size_t n = len - off < CRL_DER_PART ? len - off : CRL_DER_PART;

        if (own_tx && (rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
            break;
        if ((rc = inv_stmt(inv, SQL_CRL_DER_PUT, &st)) == MQPKI_OK) {
            db_bind_int64(st, 1, number);
            db_bind_int64(st, 2, attempt);
            db_bind_int64(st, 3, part);
            db_bind_blob(st, 4, der + off, n);
            rc = step_bound(inv, st, "CRL DER", NULL);
        }
        inv_stmt_done(st);
        if (own_tx)
            rc = inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
        off += n;
        part++;
        /* A gap between parts, long enough for a writer polling for the lock (a revocation,
         * its delta CRL) to take its turn. */
        if (own_tx && off < len) {
            struct timespec gap = {0, 3 * 1000 * 1000};
            nanosleep(&gap, NULL);
        }
    }
    return rc;
}

static int der_drop(struct inventory *inv, enum inv_sql which, int64_t number, int64_t attempt)
{
    struct db_stmt *st = NULL;
    int rc;

    if ((rc = inv_stmt(inv, which, &st)) == MQPKI_OK) {
        db_bind_int64(st, 1, number);
        db_bind_int64(st, 2, attempt);
        rc = step_bound(inv, st, "CRL DER", NULL);
    }
    inv_stmt_done(st);
    return rc;
}

int inventory_crl_signed(struct inventory *inv, const struct inventory_crl *c,
                         const unsigned char *der, size_t len, const char *actor)
{
    struct inv_tx tx = {0};
    struct db_stmt *st = NULL;
    char next_update[32];
    int64_t now = mqpki_now();
    int rc, changes = 0;

    int64_t attempt = 0;
    int early;

    if (inv == NULL || c == NULL || der == NULL || len == 0 || len > INT32_MAX ||
        (c->kind != INV_CRL_FULL && c->kind != INV_CRL_DELTA))
        return mqpki_fail(MQPKI_ERR_INVALID, "CRL signed: arguments missing");
    /*
     * A large DER goes in first, a part per transaction: the store has one writer at a time,
     * and a revocation's transaction or its delta CRL waits for one part, not for tens of MB.
     * Under an attempt id of its own, so that two signers of one number (replicas) never mix
     * their parts; the transaction below names the one that counts and drops the others. A
     * crash before it leaves parts nobody names (dropped when the number is signed or pruned).
     */
    if (RAND_bytes((unsigned char *)&attempt, sizeof(attempt)) != 1)
        return mqpki_fail(MQPKI_ERR_CRYPTO, "CRL signed: no random attempt id");
    attempt &= INT64_MAX;
    early = len > CRL_DER_PART && !inv->in_tx;
    if (early && (rc = der_put(inv, c->number, attempt, der, len, 1)) != MQPKI_OK) {
        (void)der_drop(inv, SQL_CRL_DER_DROP, c->number, attempt);
        return rc;
    }
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        goto out_early;
    if ((rc = inv_stmt(inv, SQL_CRL_SIGN, &st)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, c->number);
    if ((rc = inv_bind_text(inv, st, 2, kind_names[c->kind])) != MQPKI_OK)
        goto out;
    if (c->base >= 0)
        db_bind_int64(st, 3, c->base);
    db_bind_int64(st, 4, c->cutoff);
    db_bind_int64(st, 5, c->this_update);
    db_bind_int64(st, 6, c->next_update);
    db_bind_int64(st, 7, c->entries);
    db_bind_int64(st, 8, now);
    db_bind_int64(st, 9, attempt);
    rc = step_bound(inv, st, "CRL signed", &changes);
    inv_stmt_done(st);
    st = NULL;
    if (rc != MQPKI_OK)
        goto out;
    if (changes != 1) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "CRL %lld is not pending any more", (long long)c->number);
        goto out;
    }
    /* The DER in a table of its own: rows of crls are read and updated often, and SQLite reads
     * and writes a row with its whole value (tens of MB for a large full CRL). */
    if ((rc = der_drop(inv, SQL_CRL_DER_OTHERS, c->number, attempt)) != MQPKI_OK ||
        (!early && (rc = der_put(inv, c->number, attempt, der, len, 0)) != MQPKI_OK))
        goto out;
    /* Every replica's feed offers the new CRL to its brokers once this commits. */
    if ((rc = inv->db->ops->notify(inv->db, INV_CHANNEL_OUTBOX)) != DB_OK) {
        rc = inv_db_fail(inv, rc, "CRL signed");
        goto out;
    }
    /* Lower pending numbers are covered by this CRL, built from later store state; a delta
     * never covers a full CRL asked for (lifecycle/publish.c signs that one on its own). */
    if ((rc = inv_stmt(inv, SQL_CRL_FOLD, &st)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, c->number);
    db_bind_int64(st, 2, now);
    if ((rc = inv_bind_text(inv, st, 3, kind_names[c->kind])) == MQPKI_OK)
        rc = step_bound(inv, st, "CRL fold", NULL);
    inv_stmt_done(st);
    st = NULL;
    if (rc != MQPKI_OK)
        goto out;
    /* Only the newest CRL of each kind is ever published again: drop older copies. */
    if ((rc = inv_stmt(inv, SQL_CRL_PRUNE, &st)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 1, kind_names[c->kind])) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 2, c->number);
    rc = step_bound(inv, st, "CRL prune", NULL);
    inv_stmt_done(st);
    st = NULL;
    if (rc != MQPKI_OK)
        goto out;
    mqpki_time_str(c->next_update, next_update);
    rc = inv_audit(inv, actor != NULL ? actor : "system", "crl.sign", "crl",
                   json_pack("{s:I,s:s,s:I,s:I,s:I,s:s}", "number", (json_int_t)c->number, "kind",
                             kind_names[c->kind], "base", (json_int_t)c->base, "cutoff",
                             (json_int_t)c->cutoff, "entries", (json_int_t)c->entries,
                             "next_update", next_update));
out:
    inv_stmt_done(st);
    rc = inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
out_early:
    /* Lost to another signer, or failed: this attempt's parts are nobody's. */
    if (rc != MQPKI_OK && early)
        (void)der_drop(inv, SQL_CRL_DER_DROP, c->number, attempt);
    return rc;
}

int inventory_crl_done(struct inventory *inv, int kind, int64_t number)
{
    struct inv_tx tx = {0};
    struct db_stmt *st = NULL;
    int rc;

    if (kind != INV_CRL_FULL && kind != INV_CRL_DELTA)
        return mqpki_fail(MQPKI_ERR_INVALID, "CRL done: unknown kind %d", kind);
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    if ((rc = inv_stmt(inv, SQL_CRL_DONE, &st)) == MQPKI_OK &&
        (rc = inv_bind_text(inv, st, 3, kind_names[kind])) == MQPKI_OK) {
        db_bind_int64(st, 1, number);
        db_bind_int64(st, 2, mqpki_now());
        rc = step_bound(inv, st, "CRL done", NULL);
    }
    inv_stmt_done(st);
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}

int inventory_publish_lock(struct inventory *inv, int timeout_ms)
{
    int got;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "publish lock: no store");
    errno = 0;
    got = inv->db->ops->publish_lock(inv->db, timeout_ms);
    if (got == 1)
        return MQPKI_OK;
    if (got == 0)
        return mqpki_fail(MQPKI_ERR_BUSY,
                          "%s: another process is publishing CRLs (waited %d ms)", inv->path,
                          timeout_ms);
    if (got == DB_ERROR && errno != 0)
        return mqpki_fail(errno == ENOSPC ? MQPKI_ERR_NOSPACE : MQPKI_ERR_IO,
                          "%s.publish-lock: %s", inv->path, strerror(errno));
    return inv_db_fail(inv, got, "publish lock");
}

void inventory_publish_unlock(struct inventory *inv)
{
    if (inv == NULL || inv->db == NULL)
        return;
    inv->db->ops->publish_unlock(inv->db);
}

int inventory_broker_crl_set(struct inventory *inv, const char *broker, int64_t full, int64_t delta,
                             int64_t when)
{
    struct db_stmt *st = NULL;
    int rc;

    if (inv == NULL || !proto_asset_id_valid(broker))
        return mqpki_fail(MQPKI_ERR_INVALID, "broker CRL report: bad broker name");
    if ((rc = inv_stmt(inv, SQL_BROKER_CRL_SET, &st)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 1, broker)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 2, full);
    db_bind_int64(st, 3, delta);
    db_bind_int64(st, 4, when);
    rc = step_bound(inv, st, "broker CRL report", NULL);
out:
    inv_stmt_done(st);
    return rc;
}

int inventory_broker_crl_list(struct inventory *inv, inventory_broker_crl_cb cb, void *ctx)
{
    struct db_stmt *st = NULL;
    int rc, src;

    if ((rc = inv_prepare(inv,
                          "SELECT broker, full_number, delta_number, updated_at FROM broker_crls "
                          "ORDER BY broker",
                          &st)) != MQPKI_OK)
        return rc;
    while ((src = db_step(st)) == DB_ROW) {
        if (cb((const char *)db_column_text(st, 0), db_column_int64(st, 1),
               db_column_int64(st, 2), db_column_int64(st, 3), ctx) != 0) {
            src = DB_DONE;
            break;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "broker CRL list");
    db_finalize(st);
    return rc;
}
