/*
 * inventory/copy.c: `mqpki store migrate`: one store copied into another, row for row, in one
 * transaction of the destination read from one snapshot of the source. Rows keep their values
 * exactly (audit hashes, sequence numbers, token ids, CRL DER), so the audit chain verifies on
 * the copy as it did on the source.
 *
 * Crash window: the copy commits in the destination, and only then does the caller
 * (datadir_store_migrate) point mqpki.conf at it. Killed between the two, the data directory
 * still uses its source and the destination is no longer empty. A rerun then finds the
 * destination holding exactly the source's rows (same audit chain head, and every table the
 * same rows) and reports it as copied, so the caller can finish the switch. A destination
 * holding anything else (another CA's store, a copy the source moved on from since) is refused.
 */
#include "inventory_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

/* Every table of schema version INV_SCHEMA_VERSION, parents first (foreign keys), with every
 * column, the primary key first (the comparison pages by it). A new migration that adds a table
 * or a column adds it here too. */
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
     "signed_at, done_at, folded_into, der_attempt",
     "number", NULL},
    {"crl_der", "number, attempt, part, der", "number, attempt, part", NULL},
    {"broker_crls", "broker, full_number, delta_number, updated_at", "broker", NULL},
    {"events", "id, time, broker, type, asset, address, detail, eid", "id", NULL},
    {"alerts",
     "id, time, rule, asset, address, broker, response, outcome, evidence, state, acked_at, "
     "acked_by, cause",
     "id", NULL},
    {"quarantine", "asset, since, rule, alert_id", "asset", NULL},
    {"campaigns", "id, selector, created_at, silent_after, finished_at", "id", NULL},
    {"campaign_assets", "campaign, asset, old_serial, state, sent_at", "campaign, asset", NULL},
    {"operator_tokens",
     "id, asset_id, use, salt, hash, created_at, expires_at, used_at, revoked_at", "id", NULL},
};

#define N_TABLES (sizeof(tables) / sizeof(tables[0]))

/* The PostgreSQL tables whose id is an identity column (SQLite's INTEGER PRIMARY KEY). */
static const char *const identity_tables[] = {"tokens", "events", "alerts", "campaigns", "operator_tokens"};
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

/* Rows read per statement when comparing two stores: a PostgreSQL result is read whole. */
#define CMP_PAGE 5000

/* One table's rows, in any order: how many, and the sum modulo 2^256 of every row's SHA-256.
 * Order-free because the engines sort text keys by different collations. */
struct table_sum {
    int64_t rows;
    unsigned char sum[INV_HASH_LEN]; /* big-endian */
};

static void sum_add(unsigned char sum[INV_HASH_LEN], const unsigned char h[INV_HASH_LEN])
{
    unsigned carry = 0;

    for (int i = INV_HASH_LEN - 1; i >= 0; i--) {
        carry += (unsigned)sum[i] + h[i];
        sum[i] = (unsigned char)carry;
        carry >>= 8;
    }
}

/* The SHA-256 of the current row: every column typed and length-prefixed. Text and blob hash
 * alike (SQLite keeps what it was given, PostgreSQL what the column declares). */
static int row_hash(EVP_MD_CTX *md, struct db_stmt *st, int ncols, unsigned char out[INV_HASH_LEN])
{
    unsigned char b[9];
    unsigned int outlen = 0;
    int ok = EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;

    for (int i = 0; ok && i < ncols; i++) {
        int type = db_column_type(st, i);
        const void *p = NULL;
        uint64_t v = 0;
        size_t len = 0;

        if (type == DB_NULL) {
            b[0] = 'N';
        } else if (type == DB_INTEGER) {
            b[0] = 'I';
            v = (uint64_t)db_column_int64(st, i);
        } else {
            b[0] = 'B';
            if (type == DB_TEXT) {
                p = db_column_text(st, i);
                len = p != NULL ? strlen(p) : 0;
            } else {
                p = db_column_blob(st, i);
                len = db_column_bytes(st, i);
            }
            v = len;
        }
        for (int k = 8; k >= 1; k--, v >>= 8)
            b[k] = (unsigned char)v;
        ok = EVP_DigestUpdate(md, b, type == DB_NULL ? 1 : sizeof(b)) == 1 &&
             (len == 0 || EVP_DigestUpdate(md, p, len) == 1);
    }
    ok = ok && EVP_DigestFinal_ex(md, out, &outlen) == 1 && outlen == INV_HASH_LEN;
    return ok ? MQPKI_OK : mqpki_fail(MQPKI_ERR_CRYPTO, "store compare: SHA-256 failed");
}

/* table_sum of table t, read CMP_PAGE rows at a time in primary key order (the sum does not
 * depend on the order: each back end pages in its own). */
static int table_sum(struct inventory *inv, size_t t, struct table_sum *out)
{
    struct db_stmt *first = NULL, *next = NULL, *st;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char h[INV_HASH_LEN];
    char sql[1024], key[64], *bound = NULL, *last = NULL;
    int64_t bound_int = 0, last_int = 0, n = 0;
    int rc, src, ncols = 1, last_is_int = 0;
    size_t klen = strcspn(tables[t].cols, ",");

    memset(out, 0, sizeof(*out));
    if (md == NULL)
        return MQPKI_ERR_NOMEM;
    for (const char *c = tables[t].cols; *c != '\0'; c++)
        ncols += *c == ',';
    snprintf(key, sizeof(key), "%.*s", (int)klen, tables[t].cols);
    /* A table keyed by several columns (campaign_assets) is read in one pass: paging on its
     * first column alone would skip rows that share it. */
    if (strchr(tables[t].order, ',') != NULL)
        snprintf(sql, sizeof(sql), "SELECT %s FROM %s", tables[t].cols, tables[t].name);
    else
        snprintf(sql, sizeof(sql), "SELECT %s FROM %s ORDER BY %s LIMIT %d", tables[t].cols,
                 tables[t].name, key, CMP_PAGE);
    if ((rc = inv_prepare(inv, sql, &first)) != MQPKI_OK)
        goto out;
    snprintf(sql, sizeof(sql), "SELECT %s FROM %s WHERE %s > ?1 ORDER BY %s LIMIT %d",
             tables[t].cols, tables[t].name, key, key, CMP_PAGE);
    if ((rc = inv_prepare(inv, sql, &next)) != MQPKI_OK)
        goto out;
    for (st = first;; st = next) {
        if (st == next) {
            /* The key bound stays in place while the page is read (db.h): a second buffer. */
            db_reset(next);
            free(bound);
            bound = last;
            last = NULL;
            bound_int = last_int;
            src = last_is_int ? db_bind_int64(next, 1, bound_int) : db_bind_text(next, 1, bound);
            if (src != DB_OK) {
                rc = inv_db_fail(inv, src, "store compare");
                goto out;
            }
        }
        n = 0;
        while ((src = db_step(st)) == DB_ROW) {
            if ((rc = row_hash(md, st, ncols, h)) != MQPKI_OK)
                goto out;
            sum_add(out->sum, h);
            out->rows++;
            n++;
            free(last);
            last = NULL;
            last_is_int = db_column_type(st, 0) == DB_INTEGER;
            if (last_is_int)
                last_int = db_column_int64(st, 0);
            else if ((last = strdup(db_column_text(st, 0) != NULL ? db_column_text(st, 0) : "")) ==
                     NULL) {
                rc = MQPKI_ERR_NOMEM;
                goto out;
            }
        }
        if (src != DB_DONE) {
            rc = inv_db_fail(inv, src, tables[t].name);
            goto out;
        }
        if (n < CMP_PAGE || strchr(tables[t].order, ',') != NULL)
            break;
    }
out:
    db_finalize(first);
    db_finalize(next);
    free(bound);
    free(last);
    EVP_MD_CTX_free(md);
    return rc;
}

/* The hash of audit event seq: *found 0 when there is none. */
static int audit_hash_at(struct inventory *inv, int64_t seq, unsigned char out[INV_HASH_LEN],
                         int *found)
{
    struct db_stmt *st = NULL;
    int rc, src;

    *found = 0;
    if ((rc = inv_prepare(inv, "SELECT hash FROM audit WHERE seq = ?1", &st)) != MQPKI_OK)
        return rc;
    db_bind_int64(st, 1, seq);
    if ((src = db_step(st)) == DB_ROW) {
        if (db_column_bytes(st, 0) == INV_HASH_LEN) {
            memcpy(out, db_column_blob(st, 0), INV_HASH_LEN);
            *found = 1;
        }
    } else if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, "audit event");
    }
    db_finalize(st);
    return rc;
}

/* 1 when event seq of inv has hash h. */
static int audit_has(struct inventory *inv, int64_t seq, const unsigned char h[INV_HASH_LEN],
                     int *yes)
{
    unsigned char there[INV_HASH_LEN];
    int found = 0, rc = audit_hash_at(inv, seq, there, &found);

    *yes = rc == MQPKI_OK && found && memcmp(there, h, INV_HASH_LEN) == 0;
    return rc;
}

/*
 * The destination to is not empty: MQPKI_OK when it holds exactly the rows of from (an earlier
 * copy committed and nothing changed on either side since), else MQPKI_ERR_EXISTS naming what it
 * holds instead.
 */
static int judge_destination(struct inventory *from, struct inventory *to)
{
    unsigned char fhead[INV_HASH_LEN], thead[INV_HASH_LEN], f1[INV_HASH_LEN], t1[INV_HASH_LEN];
    struct table_sum a, b;
    int64_t fseq, tseq;
    int rc, ffound = 0, tfound = 0, yes = 0;

    if ((rc = inv_audit_head(from, &fseq, fhead)) != MQPKI_OK ||
        (rc = inv_audit_head(to, &tseq, thead)) != MQPKI_OK)
        return rc;
    if (tseq == fseq && memcmp(fhead, thead, INV_HASH_LEN) == 0) {
        /* One audit chain; rows that change without an audit event (CRL publications, last
         * seen, token failures) must match too, or the copy would lose them. */
        for (size_t t = 0; t < N_TABLES; t++) {
            if ((rc = table_sum(from, t, &a)) != MQPKI_OK ||
                (rc = table_sum(to, t, &b)) != MQPKI_OK)
                return rc;
            if (a.rows != b.rows || memcmp(a.sum, b.sum, INV_HASH_LEN) != 0)
                return mqpki_fail(MQPKI_ERR_EXISTS,
                                  "%s: the destination store holds a copy of this store (the same "
                                  "audit head, event %lld) whose %s rows differ: one of them "
                                  "changed since; a copy goes into an empty store only",
                                  to->path, (long long)tseq, tables[t].name);
        }
        return MQPKI_OK;
    }
    if ((rc = audit_hash_at(from, 1, f1, &ffound)) != MQPKI_OK ||
        (rc = audit_hash_at(to, 1, t1, &tfound)) != MQPKI_OK)
        return rc;
    if (!ffound || !tfound || memcmp(f1, t1, INV_HASH_LEN) != 0)
        return mqpki_fail(MQPKI_ERR_EXISTS,
                          "%s: the destination store is not empty: it holds another CA's store "
                          "(%lld audit events, the first not this store's); a copy goes into an "
                          "empty store only",
                          to->path, (long long)tseq);
    if (tseq < fseq && (rc = audit_has(from, tseq, thead, &yes)) == MQPKI_OK && yes)
        return mqpki_fail(MQPKI_ERR_EXISTS,
                          "%s: the destination store holds an earlier copy of this store (up to "
                          "audit event %lld of %lld): this store changed after that copy "
                          "committed; drop and recreate the destination database, then migrate "
                          "again",
                          to->path, (long long)tseq, (long long)fseq);
    if (rc == MQPKI_OK && tseq > fseq && (rc = audit_has(to, fseq, fhead, &yes)) == MQPKI_OK && yes)
        return mqpki_fail(MQPKI_ERR_EXISTS,
                          "%s: the destination store holds this store and %lld audit events more: "
                          "it has been in use since it was copied, and is left as it is",
                          to->path, (long long)(tseq - fseq));
    if (rc != MQPKI_OK)
        return rc;
    return mqpki_fail(MQPKI_ERR_EXISTS,
                      "%s: the destination store holds a copy of this store that diverged from it "
                      "(audit event %lld there, %lld here); a copy goes into an empty store only",
                      to->path, (long long)tseq, (long long)fseq);
}

int inventory_copy(struct inventory *from, struct inventory *to, inventory_copy_cb progress,
                   void *ctx, int *already)
{
    int64_t n = 0, audit = 0, copied = 0, there = 0;
    int rc = MQPKI_OK, src;

    if (already != NULL)
        *already = 0;
    if (from == NULL || to == NULL || from->in_tx || to->in_tx)
        return mqpki_fail(MQPKI_ERR_INVALID, "store copy: two idle stores required");
    /* One state of the source, even while mqpkid keeps writing to it. */
    if ((src = from->db->ops->begin_snapshot(from->db)) != DB_OK)
        return inv_db_fail(from, src, "store copy");
    /* The destination is judged under its write lock: no other writer between the judgement
     * and the copy. */
    if ((rc = inventory_begin(to)) != MQPKI_OK)
        goto out;
    if ((rc = count_rows(to, "audit", &audit)) != MQPKI_OK ||
        (rc = count_rows(to, "assets", &n)) != MQPKI_OK)
        goto out;
    /* Not empty: a copy never merges two CAs' histories, but an earlier run of this copy that
     * committed and was killed before its caller's next step counts as done. */
    if (audit > 0 || n > 0) {
        if ((rc = judge_destination(from, to)) == MQPKI_OK && already != NULL)
            *already = 1;
        goto out;
    }
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
out:
    if (to->in_tx)
        inventory_rollback(to);
    if (from->db->ops->in_transaction(from->db))
        (void)from->db->ops->exec(from->db, "COMMIT");
    return rc;
}
