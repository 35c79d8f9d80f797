/*
 * inventory/copy.c: `mqpki store migrate`: one store copied into another, row for row, in one
 * transaction of the destination read from one snapshot of the source. Rows keep their values
 * exactly (audit hashes, sequence numbers, token ids, CRL DER), so the audit chain verifies on
 * the copy as it did on the source.
 */
#include "inventory_int.h"

#include <stdio.h>
#include <string.h>

/* Every table of schema version INV_SCHEMA_VERSION, parents first (foreign keys), with every
 * column. A new migration that adds a table or a column adds it here too. */
static const struct {
    const char *name;
    const char *cols;
    const char *order;
    const char *conflict; /* rows the destination's schema already holds */
} tables[] = {
    {"assets",
     "id, kind, state, model, hw_serial, firmware, location, tags, created_at, updated_at, "
     "last_seen, last_address, last_broker",
     "id", NULL},
    {"certs",
     "serial, asset_id, profile, not_before, not_after, state, key_fp, pem, revoked_at, reason, "
     "issued_seq, rev_seq, rev_time, seen_at, superseded_at, superseded_by",
     "issued_seq", NULL},
    {"tokens",
     "id, asset_id, salt, hash, created_at, expires_at, used_at, failures, revoked_at, "
     "csr_sha256, serial",
     "id", NULL},
    {"audit", "seq, time, actor, action, subject, detail, prev_hash, hash", "seq", NULL},
    {"audit_checkpoints", "id, seq, head, time, key_label, signature", "id", NULL},
    {"meta", "key, value", "key", NULL},
    {"counters", "name, value", "name", "ON CONFLICT(name) DO UPDATE SET value = excluded.value"},
    {"crls",
     "number, kind, state, reason, created_at, base, cutoff, this_update, next_update, entries, "
     "der, signed_at, done_at, folded_into",
     "number", NULL},
    {"broker_crls", "broker, full_number, delta_number, updated_at", "broker", NULL},
    {"events", "id, time, broker, type, asset, address, detail", "id", NULL},
    {"alerts",
     "id, time, rule, asset, address, broker, response, outcome, evidence, state, acked_at, "
     "acked_by",
     "id", NULL},
    {"quarantine", "asset, since, rule, alert_id", "asset", NULL},
};

#define N_TABLES (sizeof(tables) / sizeof(tables[0]))

/* The PostgreSQL tables whose id is an identity column (SQLite's INTEGER PRIMARY KEY). */
static const char *const identity_tables[] = {"tokens", "events", "alerts"};
#define N_IDENTITY (sizeof(identity_tables) / sizeof(identity_tables[0]))

static int count_rows(struct inventory *inv, const char *table, int64_t *out)
{
    struct db_stmt *st = NULL;
    char sql[128];
    int rc, src;

    snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM %s", table);
    if ((rc = inv_prepare(inv, sql, &st)) != MQPKI_OK)
        return rc;
    if ((src = db_step(st)) == DB_ROW)
        *out = db_column_int64(st, 0);
    else
        rc = inv_db_fail(inv, src, "count rows");
    db_finalize(st);
    return rc;
}

static int copy_table(struct inventory *from, struct inventory *to, size_t t,
                      inventory_copy_cb progress, void *ctx, int64_t *copied)
{
    struct db_stmt *rd = NULL, *wr = NULL;
    char sql[1024], params[256] = "";
    int rc, src, ncols = 1;
    size_t off = 0;

    *copied = 0;
    for (const char *c = tables[t].cols; *c != '\0'; c++)
        ncols += *c == ',';
    for (int i = 1; i <= ncols; i++)
        off += (size_t)snprintf(params + off, sizeof(params) - off, "%s?%d", i > 1 ? ", " : "", i);
    snprintf(sql, sizeof(sql), "SELECT %s FROM %s ORDER BY %s", tables[t].cols, tables[t].name,
             tables[t].order);
    if ((rc = inv_prepare(from, sql, &rd)) != MQPKI_OK)
        goto out;
    snprintf(sql, sizeof(sql), "INSERT INTO %s(%s) VALUES(%s) %s", tables[t].name, tables[t].cols,
             params, tables[t].conflict != NULL ? tables[t].conflict : "");
    if ((rc = to->db->ops->prepare(to->db, sql, 1, &wr)) != DB_OK) {
        rc = inv_db_fail(to, rc, "prepare copy");
        goto out;
    }
    while ((src = db_step(rd)) == DB_ROW) {
        db_reset(wr);
        for (int i = 0; i < ncols; i++) {
            switch (db_column_type(rd, i)) {
            case DB_NULL: src = db_bind_null(wr, i + 1); break;
            case DB_INTEGER: src = db_bind_int64(wr, i + 1, db_column_int64(rd, i)); break;
            case DB_BLOB:
                src = db_bind_blob(wr, i + 1, db_column_blob(rd, i), db_column_bytes(rd, i));
                break;
            default: src = db_bind_text(wr, i + 1, db_column_text(rd, i)); break;
            }
            if (src != DB_OK) {
                rc = inv_db_fail(to, src, "bind copy");
                goto out;
            }
        }
        if ((src = db_step(wr)) != DB_DONE) {
            rc = inv_db_fail(to, src, tables[t].name);
            goto out;
        }
        if (++*copied % 10000 == 0 && progress != NULL)
            progress(ctx, tables[t].name, *copied);
    }
    if (src != DB_DONE)
        rc = inv_db_fail(from, src, tables[t].name);
out:
    db_finalize(rd);
    db_finalize(wr);
    return rc;
}

int inventory_copy(struct inventory *from, struct inventory *to, inventory_copy_cb progress,
                   void *ctx)
{
    int64_t n = 0, copied = 0, there = 0;
    int rc = MQPKI_OK, src;

    if (from == NULL || to == NULL || from->in_tx || to->in_tx)
        return mqpki_fail(MQPKI_ERR_INVALID, "store copy: two idle stores required");
    /* An empty destination only: a copy never merges two CAs' histories. */
    if ((rc = count_rows(to, "audit", &n)) != MQPKI_OK)
        return rc;
    if (n > 0 || (rc = count_rows(to, "assets", &n)) != MQPKI_OK || n > 0)
        return rc != MQPKI_OK ? rc
                              : mqpki_fail(MQPKI_ERR_EXISTS,
                                           "%s: the destination store is not empty (%lld assets "
                                           "or audit events); a copy goes into a new store only",
                                           to->path, (long long)n);
    /* One state of the source, even while mqpkid keeps writing to it. */
    if ((src = from->db->ops->begin_snapshot(from->db)) != DB_OK)
        return inv_db_fail(from, src, "store copy");
    if ((rc = inventory_begin(to)) != MQPKI_OK)
        goto out;
    for (size_t t = 0; t < N_TABLES && rc == MQPKI_OK; t++) {
        if ((rc = copy_table(from, to, t, progress, ctx, &copied)) != MQPKI_OK)
            break;
        /* Every row arrived: the destination counts what the source counted. */
        if ((rc = count_rows(from, tables[t].name, &n)) != MQPKI_OK ||
            (rc = count_rows(to, tables[t].name, &there)) != MQPKI_OK)
            break;
        if (n != there || copied != n)
            rc = mqpki_fail(MQPKI_ERR_STORE, "store copy: %s: %lld rows in the source, %lld copied",
                            tables[t].name, (long long)n, (long long)there);
        if (rc == MQPKI_OK && progress != NULL)
            progress(ctx, tables[t].name, copied);
    }
    /* New ids go on above the copied ones. */
    for (size_t i = 0; rc == MQPKI_OK && to->ops == &db_pg_ops && i < N_IDENTITY; i++) {
        char sql[256];
        snprintf(sql, sizeof(sql),
                 "SELECT setval(pg_get_serial_sequence('%s', 'id'), "
                 "COALESCE((SELECT max(id) FROM %s), 0) + 1, false)",
                 identity_tables[i], identity_tables[i]);
        rc = inv_exec(to, sql);
    }
    if (rc == MQPKI_OK)
        rc = inventory_commit(to);
    else
        inventory_rollback(to);
out:
    if (from->db->ops->in_transaction(from->db))
        (void)from->db->ops->exec(from->db, "COMMIT");
    return rc;
}
