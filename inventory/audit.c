/*
 * inventory/audit.c: the hash-chained audit log.
 *
 * hash(n) = SHA-256(prev_hash || seq || time || actor || action || subject || detail), every
 * field preceded by its 4-byte big-endian length so that no field can slide into the next
 * ("ab"+"c" and "a"+"bc" hash differently). prev_hash of the first event is 32 zero bytes.
 * The chain head (last seq and hash) is also kept in meta and moves in the same transaction,
 * so deleting the newest events is detected as well as editing or deleting older ones.
 */
#include "inventory_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#define ACTION_MAX 64

static int hash_field(EVP_MD_CTX *md, const void *data, size_t len)
{
    unsigned char n[4];

    n[0] = (unsigned char)(len >> 24);
    n[1] = (unsigned char)(len >> 16);
    n[2] = (unsigned char)(len >> 8);
    n[3] = (unsigned char)len;
    return EVP_DigestUpdate(md, n, sizeof(n)) == 1 &&
           (len == 0 || EVP_DigestUpdate(md, data, len) == 1);
}

static int hash_int(EVP_MD_CTX *md, int64_t v)
{
    unsigned char b[8];
    uint64_t u = (uint64_t)v;

    for (int i = 7; i >= 0; i--) {
        b[i] = (unsigned char)u;
        u >>= 8;
    }
    return hash_field(md, b, sizeof(b));
}

/* The hash of one event; out holds INV_HASH_LEN bytes. */
MQPKI_STATIC int audit_hash(const unsigned char prev[INV_HASH_LEN], int64_t seq, int64_t time,
                            const char *actor, const char *action, const char *subject,
                            const char *detail, unsigned char out[INV_HASH_LEN])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int outlen = 0;
    int rc = MQPKI_OK;

    if (md == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 || !hash_field(md, prev, INV_HASH_LEN) ||
        !hash_int(md, seq) || !hash_int(md, time) || !hash_field(md, actor, strlen(actor)) ||
        !hash_field(md, action, strlen(action)) || !hash_field(md, subject, strlen(subject)) ||
        !hash_field(md, detail, strlen(detail)) || EVP_DigestFinal_ex(md, out, &outlen) != 1 ||
        outlen != INV_HASH_LEN) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "audit: SHA-256 failed");
        goto out;
    }
out:
    EVP_MD_CTX_free(md);
    return rc;
}

static int unhex(const char *hex, unsigned char *out, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned int b;
        if (sscanf(hex + 2 * i, "%2x", &b) != 1)
            return 0;
        out[i] = (unsigned char)b;
    }
    return hex[2 * len] == '\0';
}

/*
 * Reads the chain head from meta: *seq 0 and a zero hash when the log is empty. A malformed
 * head is tampering.
 */
static int head_read(struct inventory *inv, int64_t *seq, unsigned char hash[INV_HASH_LEN])
{
    sqlite3_stmt *st = NULL;
    const char *v;
    long long s = 0;
    int n = 0, rc, src;

    *seq = 0;
    memset(hash, 0, INV_HASH_LEN);
    rc = inv_stmt(inv, SQL_META_GET, &st);
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = inv_bind_text(inv, st, 1, INV_META_AUDIT_HEAD)) != MQPKI_OK)
        goto out;
    src = sqlite3_step(st);
    if (src == SQLITE_DONE)
        goto out;
    if (src != SQLITE_ROW) {
        rc = inv_db_fail(inv, src, "audit head");
        goto out;
    }
    v = (const char *)sqlite3_column_text(st, 0);
    if (v == NULL || sscanf(v, "%lld %n", &s, &n) != 1 || s < 1 ||
        !unhex(v + n, hash, INV_HASH_LEN)) {
        rc = mqpki_fail(MQPKI_ERR_TAMPERED, "%s: audit chain head in meta is malformed", inv->path);
        goto out;
    }
    *seq = s;
out:
    inv_stmt_done(st);
    return rc;
}

static int head_write(struct inventory *inv, int64_t seq, const unsigned char hash[INV_HASH_LEN])
{
    char v[32 + 2 * INV_HASH_LEN], hex[2 * INV_HASH_LEN + 1];
    sqlite3_stmt *st = NULL;
    int rc, src;

    mqpki_hex(hash, INV_HASH_LEN, hex);
    snprintf(v, sizeof(v), "%" PRId64 " %s", seq, hex);
    rc = inv_stmt(inv, SQL_META_SET, &st);
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = inv_bind_text(inv, st, 1, INV_META_AUDIT_HEAD)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 2, v)) != MQPKI_OK)
        goto out;
    src = sqlite3_step(st);
    if (src != SQLITE_DONE)
        rc = inv_db_fail(inv, src, "audit head");
out:
    inv_stmt_done(st);
    return rc;
}

/* Appends one event; the caller holds the write transaction. */
static int append(struct inventory *inv, const char *actor, const char *action, const char *subject,
                  const char *detail)
{
    unsigned char prev[INV_HASH_LEN], hash[INV_HASH_LEN];
    sqlite3_stmt *st = NULL;
    int64_t seq, now = mqpki_now();
    int rc, src;

    rc = head_read(inv, &seq, prev);
    if (rc != MQPKI_OK)
        goto out;
    seq++;
    rc = audit_hash(prev, seq, now, actor, action, subject, detail, hash);
    if (rc != MQPKI_OK)
        goto out;
    rc = inv_stmt(inv, SQL_AUDIT_INSERT, &st);
    if (rc != MQPKI_OK)
        goto out;
    sqlite3_bind_int64(st, 1, seq);
    sqlite3_bind_int64(st, 2, now);
    if ((rc = inv_bind_text(inv, st, 3, actor)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 4, action)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 5, subject)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 6, detail)) != MQPKI_OK)
        goto out;
    sqlite3_bind_blob(st, 7, prev, INV_HASH_LEN, SQLITE_STATIC);
    sqlite3_bind_blob(st, 8, hash, INV_HASH_LEN, SQLITE_STATIC);
    src = sqlite3_step(st);
    if (src != SQLITE_DONE) {
        /* A row beyond the head means someone appended behind the chain's back. */
        if ((src & 0xff) == SQLITE_CONSTRAINT)
            rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                            "%s: audit event %" PRId64 " exists beyond the chain head", inv->path,
                            seq);
        else
            rc = inv_db_fail(inv, src, "audit append");
        goto out;
    }
    inv_stmt_done(st);
    st = NULL;
    rc = head_write(inv, seq, hash);
out:
    inv_stmt_done(st);
    return rc;
}

static int check_event_text(const char *actor, const char *action, const char *subject)
{
    int rc = inv_check_text(actor, INV_TEXT_MAX, "actor");

    if (rc == MQPKI_OK)
        rc = inv_check_text(action, ACTION_MAX, "audit action");
    if (rc == MQPKI_OK)
        rc = inv_check_text(subject, INV_TEXT_MAX, "audit subject");
    return rc;
}

int inv_audit(struct inventory *inv, const char *actor, const char *action, const char *subject,
              json_t *detail)
{
    char *text = NULL;
    int rc;

    if (actor == NULL || actor[0] == '\0')
        actor = "unknown";
    if (detail == NULL) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "audit %s: cannot build the event detail", action);
        goto out;
    }
    rc = check_event_text(actor, action, subject);
    if (rc != MQPKI_OK)
        goto out;
    /* Sorted compact JSON: one canonical text per detail, which is what gets hashed. */
    text = json_dumps(detail, JSON_COMPACT | JSON_SORT_KEYS);
    if (text == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    rc = append(inv, actor, action, subject, text);
out:
    free(text);
    json_decref(detail);
    return rc;
}

int inventory_audit_append(struct inventory *inv, const char *actor, const char *action,
                           const char *subject, const char *detail_json)
{
    struct inv_tx tx = {0};
    json_error_t jerr;
    json_t *detail = NULL;
    int rc;

    if (inv == NULL || action == NULL || action[0] == '\0' || subject == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "audit append: action and subject required");
    rc = check_event_text(actor, action, subject);
    if (rc != MQPKI_OK)
        return rc;
    if (detail_json == NULL)
        detail_json = "{}";
    detail = json_loads(detail_json, JSON_REJECT_DUPLICATES, &jerr);
    if (detail == NULL)
        return mqpki_fail(MQPKI_ERR_PARSE, "audit detail: invalid JSON: %s", jerr.text);
    rc = inv_tx_start(inv, &tx);
    if (rc != MQPKI_OK) {
        json_decref(detail);
        return rc;
    }
    rc = inv_audit(inv, actor, action, subject, detail);
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}

/* Verifies the rows in seq order; *bad is the seq to report when the walk fails. */
static int walk(struct inventory *inv, int64_t *count, int64_t *bad)
{
    unsigned char prev[INV_HASH_LEN], calc[INV_HASH_LEN], head_hash[INV_HASH_LEN];
    sqlite3_stmt *st = NULL;
    int64_t expect = 1, head_seq = 0, seq;
    int rc, src;

    memset(prev, 0, sizeof(prev));
    rc = head_read(inv, &head_seq, head_hash);
    if (rc == MQPKI_ERR_TAMPERED)
        *bad = 0;
    if (rc != MQPKI_OK)
        goto out;
    rc = inv_prepare(inv,
                     "SELECT seq, time, actor, action, subject, detail, prev_hash, hash "
                     "FROM audit ORDER BY seq",
                     &st);
    if (rc != MQPKI_OK)
        goto out;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        const char *actor = (const char *)sqlite3_column_text(st, 2);
        const char *action = (const char *)sqlite3_column_text(st, 3);
        const char *subject = (const char *)sqlite3_column_text(st, 4);
        const char *detail = (const char *)sqlite3_column_text(st, 5);
        const void *row_prev = sqlite3_column_blob(st, 6);
        int row_prev_len = sqlite3_column_bytes(st, 6);
        const void *row_hash = sqlite3_column_blob(st, 7);
        int row_hash_len = sqlite3_column_bytes(st, 7);

        seq = sqlite3_column_int64(st, 0);
        if (seq != expect) {
            /* A gap: the event after expect - 1 was deleted. */
            *bad = expect - 1;
            rc = mqpki_fail(MQPKI_ERR_TAMPERED, "audit log: event %" PRId64 " is missing", expect);
            goto out;
        }
        if (actor == NULL || action == NULL || subject == NULL || detail == NULL ||
            row_prev_len != INV_HASH_LEN || row_hash_len != INV_HASH_LEN ||
            CRYPTO_memcmp(row_prev, prev, INV_HASH_LEN) != 0) {
            *bad = seq;
            rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                            "audit log: event %" PRId64 " does not chain to event %" PRId64, seq,
                            seq - 1);
            goto out;
        }
        rc = audit_hash(prev, seq, sqlite3_column_int64(st, 1), actor, action, subject, detail,
                        calc);
        if (rc != MQPKI_OK)
            goto out;
        if (CRYPTO_memcmp(calc, row_hash, INV_HASH_LEN) != 0) {
            *bad = seq;
            rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                            "audit log: event %" PRId64 " was altered (hash mismatch)", seq);
            goto out;
        }
        memcpy(prev, calc, INV_HASH_LEN);
        expect++;
        (*count)++;
    }
    if (src != SQLITE_DONE) {
        rc = inv_db_fail(inv, src, "audit verify");
        goto out;
    }
    /* The head in meta catches truncation of the newest events. */
    if (head_seq != expect - 1) {
        *bad = expect - 1;
        rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                        "audit log: ends at event %" PRId64 " but the chain head is %" PRId64,
                        expect - 1, head_seq);
        goto out;
    }
    if (CRYPTO_memcmp(head_hash, prev, INV_HASH_LEN) != 0) {
        *bad = head_seq;
        rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                        "audit log: event %" PRId64 " does not match the chain head", head_seq);
        goto out;
    }
out:
    sqlite3_finalize(st);
    return rc;
}

int inventory_audit_verify(struct inventory *inv, int64_t *count, int64_t *bad_seq)
{
    int64_t n = 0, bad = -1;
    int own = 0, rc;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "audit verify: no store");
    /* One read snapshot, so the head and the rows agree even while others append. */
    if (!inv->in_tx) {
        rc = inv_exec(inv, "BEGIN");
        if (rc != MQPKI_OK)
            goto out;
        own = 1;
    }
    rc = walk(inv, &n, &bad);
out:
    if (own && !sqlite3_get_autocommit(inv->db))
        sqlite3_exec(inv->db, "COMMIT", NULL, NULL, NULL);
    if (count != NULL)
        *count = n;
    if (bad_seq != NULL)
        *bad_seq = rc == MQPKI_ERR_TAMPERED ? bad : 0;
    return rc;
}
