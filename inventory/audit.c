/*
 * inventory/audit.c: the hash-chained audit log.
 *
 * hash(n) = SHA-256(prev_hash || seq || time || actor || action || subject || detail), every
 * field preceded by its 4-byte big-endian length so that no field can slide into the next
 * ("ab"+"c" and "a"+"bc" hash differently). prev_hash of the first event is 32 zero bytes.
 * The chain head (last seq and hash) is also kept in meta and moves in the same transaction,
 * so deleting the newest events is detected as well as editing or deleting older ones.
 *
 * All of that is plain SHA-256: whoever can write the database can edit an event and recompute
 * every later hash and the head. Checkpoints close that: the audit key in the CA's token signs
 * (id, seq, head, time) (proto_audit_tbs) into audit_checkpoints, and verification recomputes
 * the chain and compares it with every signed head. Events after the newest checkpoint are only
 * as good as the plain chain. A checkpoint is one transaction (head read, chain since the
 * previous checkpoint checked, signature, insert, all under the write lock): killed before the
 * commit it leaves nothing, and the signature nobody stored is worthless to anyone. The copies
 * outside the store (crl/audit-checkpoint.json, the retained message on the brokers) are
 * exports made after the commit, by datadir/ and mqpkid.
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

/* The chain head kept in meta (inventory_int.h). */
int inv_audit_head(struct inventory *inv, int64_t *seq, unsigned char hash[INV_HASH_LEN])
{
    struct db_stmt *st = NULL;
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
    src = db_step(st);
    if (src == DB_DONE)
        goto out;
    if (src != DB_ROW) {
        rc = inv_db_fail(inv, src, "audit head");
        goto out;
    }
    v = (const char *)db_column_text(st, 0);
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
    struct db_stmt *st = NULL;
    int rc, src;

    mqpki_hex(hash, INV_HASH_LEN, hex);
    snprintf(v, sizeof(v), "%" PRId64 " %s", seq, hex);
    rc = inv_stmt(inv, SQL_META_SET, &st);
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = inv_bind_text(inv, st, 1, INV_META_AUDIT_HEAD)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 2, v)) != MQPKI_OK)
        goto out;
    src = db_step(st);
    if (src != DB_DONE)
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
    struct db_stmt *st = NULL;
    int64_t seq, now = mqpki_now();
    int rc, src;

    rc = inv_audit_head(inv, &seq, prev);
    if (rc != MQPKI_OK)
        goto out;
    seq++;
    rc = audit_hash(prev, seq, now, actor, action, subject, detail, hash);
    if (rc != MQPKI_OK)
        goto out;
    rc = inv_stmt(inv, SQL_AUDIT_INSERT, &st);
    if (rc != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, seq);
    db_bind_int64(st, 2, now);
    if ((rc = inv_bind_text(inv, st, 3, actor)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 4, action)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 5, subject)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 6, detail)) != MQPKI_OK)
        goto out;
    db_bind_blob(st, 7, prev, INV_HASH_LEN);
    db_bind_blob(st, 8, hash, INV_HASH_LEN);
    src = db_step(st);
    if (src != DB_DONE) {
        /* A row beyond the head means someone appended behind the chain's back. */
        if (src == DB_CONSTRAINT)
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

/* A checkpoint as the chain walk needs it (its signature is checked before, row by row). */
struct cp_ref {
    int64_t id, seq, time;
    unsigned char head[INV_HASH_LEN];
};

/* One walk along the chain: what it checks on the way and where it ended. */
struct walk {
    const struct cp_ref *cps; /* checkpoints to meet, in seq order (NULL: none) */
    size_t n_cps;
    size_t next_cp;  /* the first one not met yet */
    int64_t count;   /* events recomputed */
    int64_t bad_seq; /* the event a failure names */
    int64_t bad_cp;  /* the checkpoint a failure names */
    int64_t end_seq; /* the last event walked (from_seq when none) */
    unsigned char end_hash[INV_HASH_LEN];
};

/*
 * Recomputes the chain after event from_seq, whose hash must be from_hash (zero for from_seq
 * 0), checking every stored row, and compares each checkpoint in w->cps with the recomputed hash
 * at its seq. from_cp names the checkpoint the walk starts from, for the detail (0: none).
 */
static int chain_walk(struct inventory *inv, int64_t from_seq,
                      const unsigned char from_hash[INV_HASH_LEN], int64_t from_cp, struct walk *w)
{
    unsigned char prev[INV_HASH_LEN], calc[INV_HASH_LEN];
    char when[32];
    struct db_stmt *st = NULL;
    int64_t expect = from_seq + 1, seq;
    int rc, src;

    memcpy(prev, from_hash, INV_HASH_LEN);
    if (from_seq > 0) {
        /* The event the walk starts from must still be the one its checkpoint certified. */
        if ((rc = inv_stmt(inv, SQL_AUDIT_HASH_AT, &st)) != MQPKI_OK)
            goto out;
        db_bind_int64(st, 1, from_seq);
        src = db_step(st);
        if (src != DB_ROW && src != DB_DONE) {
            rc = inv_db_fail(inv, src, "audit walk");
            goto out;
        }
        if (src == DB_DONE || db_column_bytes(st, 0) != INV_HASH_LEN ||
            CRYPTO_memcmp(db_column_blob(st, 0), from_hash, INV_HASH_LEN) != 0) {
            w->bad_seq = from_seq;
            w->bad_cp = from_cp;
            rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                            "audit log: event %" PRId64 " is %s since checkpoint %" PRId64
                            " certified it",
                            from_seq, src == DB_DONE ? "gone" : "different", from_cp);
            goto out;
        }
        inv_stmt_done(st);
        st = NULL;
    }
    if ((rc = inv_stmt(inv, SQL_AUDIT_WALK, &st)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, from_seq);
    while ((src = db_step(st)) == DB_ROW) {
        const char *actor = (const char *)db_column_text(st, 2);
        const char *action = (const char *)db_column_text(st, 3);
        const char *subject = (const char *)db_column_text(st, 4);
        const char *detail = (const char *)db_column_text(st, 5);
        const void *row_prev = db_column_blob(st, 6);
        int row_prev_len = db_column_bytes(st, 6);
        const void *row_hash = db_column_blob(st, 7);
        int row_hash_len = db_column_bytes(st, 7);

        seq = db_column_int64(st, 0);
        if (seq != expect) {
            /* A gap: the event after expect - 1 was deleted. */
            w->bad_seq = expect - 1;
            rc = mqpki_fail(MQPKI_ERR_TAMPERED, "audit log: event %" PRId64 " is missing", expect);
            goto out;
        }
        if (actor == NULL || action == NULL || subject == NULL || detail == NULL ||
            row_prev_len != INV_HASH_LEN || row_hash_len != INV_HASH_LEN ||
            CRYPTO_memcmp(row_prev, prev, INV_HASH_LEN) != 0) {
            w->bad_seq = seq;
            rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                            "audit log: event %" PRId64 " does not chain to event %" PRId64, seq,
                            seq - 1);
            goto out;
        }
        rc = audit_hash(prev, seq, db_column_int64(st, 1), actor, action, subject, detail,
                        calc);
        if (rc != MQPKI_OK)
            goto out;
        if (CRYPTO_memcmp(calc, row_hash, INV_HASH_LEN) != 0) {
            w->bad_seq = seq;
            rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                            "audit log: event %" PRId64 " was altered (hash mismatch)", seq);
            goto out;
        }
        /*
         * A chain recomputed by whoever rewrote an event passes the checks above; the heads
         * the audit key signed at the time do not move with it.
         */
        for (; w->next_cp < w->n_cps && w->cps[w->next_cp].seq == seq; w->next_cp++) {
            const struct cp_ref *cp = &w->cps[w->next_cp];
            if (CRYPTO_memcmp(cp->head, calc, INV_HASH_LEN) != 0) {
                w->bad_seq = seq;
                w->bad_cp = cp->id;
                mqpki_time_str(cp->time, when);
                rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                                "audit log: checkpoint %" PRId64 " (event %" PRId64
                                ", signed %s) does not match the recomputed chain: an event "
                                "up to %" PRId64 " was rewritten after it was signed",
                                cp->id, seq, when, seq);
                goto out;
            }
        }
        memcpy(prev, calc, INV_HASH_LEN);
        expect++;
        w->count++;
    }
    if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, "audit verify");
        goto out;
    }
    w->end_seq = expect - 1;
    memcpy(w->end_hash, prev, INV_HASH_LEN);
out:
    inv_stmt_done(st);
    return rc;
}

/* The head in meta catches truncation of the newest events. */
static int head_matches(int64_t head_seq, const unsigned char head_hash[INV_HASH_LEN],
                        struct walk *w)
{
    if (head_seq != w->end_seq) {
        w->bad_seq = w->end_seq;
        return mqpki_fail(MQPKI_ERR_TAMPERED,
                          "audit log: ends at event %" PRId64 " but the chain head is %" PRId64,
                          w->end_seq, head_seq);
    }
    if (CRYPTO_memcmp(head_hash, w->end_hash, INV_HASH_LEN) != 0) {
        w->bad_seq = head_seq;
        return mqpki_fail(MQPKI_ERR_TAMPERED,
                          "audit log: event %" PRId64 " does not match the chain head", head_seq);
    }
    return MQPKI_OK;
}

/* Reads a checkpoint row (INV_AUDIT_CP_COLS); a malformed one is tampering. */
static int cp_read(struct inventory *inv, struct db_stmt *st, struct inventory_audit_checkpoint *cp)
{
    size_t head_len = db_column_bytes(st, 2), sig_len = db_column_bytes(st, 5);
    const char *label = db_column_text(st, 4);

    memset(cp, 0, sizeof(*cp));
    cp->id = db_column_int64(st, 0);
    cp->seq = db_column_int64(st, 1);
    cp->time = db_column_int64(st, 3);
    if (cp->id < 1 || cp->seq < 1 || head_len != INV_HASH_LEN || sig_len < 1 ||
        sig_len > PROTO_AUDIT_SIG_MAX || label == NULL ||
        strlen((const char *)label) >= sizeof(cp->key_label))
        return mqpki_fail(MQPKI_ERR_TAMPERED, "%s: audit checkpoint %" PRId64 " is malformed",
                          inv->path, cp->id);
    memcpy(cp->head, db_column_blob(st, 2), INV_HASH_LEN);
    memcpy(cp->signature, db_column_blob(st, 5), (size_t)sig_len);
    cp->sig_len = (size_t)sig_len;
    snprintf(cp->key_label, sizeof(cp->key_label), "%s", (const char *)label);
    return MQPKI_OK;
}

int inventory_audit_checkpoint_latest(struct inventory *inv, struct inventory_audit_checkpoint *out)
{
    struct db_stmt *st = NULL;
    int rc, src;

    if (inv == NULL || out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "audit checkpoint: no store");
    if ((rc = inv_stmt(inv, SQL_AUDIT_CP_LATEST, &st)) != MQPKI_OK)
        goto out;
    src = db_step(st);
    if (src == DB_DONE)
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "%s: no audit checkpoint yet", inv->path);
    else if (src != DB_ROW)
        rc = inv_db_fail(inv, src, "audit checkpoint");
    else
        rc = cp_read(inv, st, out);
out:
    inv_stmt_done(st);
    return rc;
}

int inventory_audit_checkpoint(struct inventory *inv, const char *key_label,
                               inventory_audit_sign_fn sign, void *ctx,
                               struct inventory_audit_checkpoint *out, int *made)
{
    struct inventory_audit_checkpoint cp, latest;
    unsigned char head[INV_HASH_LEN], zero[INV_HASH_LEN] = {0}, tbs[PROTO_AUDIT_TBS_LEN];
    struct inv_tx tx = {0};
    struct walk w;
    struct db_stmt *st = NULL;
    int64_t head_seq = 0;
    int rc, src, have = 0;

    if (made != NULL)
        *made = 0;
    if (inv == NULL || sign == NULL || key_label == NULL ||
        strlen(key_label) >= sizeof(cp.key_label))
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "audit checkpoint: store, key label and signer needed");
    memset(&cp, 0, sizeof(cp));
    memset(&w, 0, sizeof(w));
    /* The write lock from the head read to the insert: the head signed is the head recorded. */
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    if ((rc = inv_audit_head(inv, &head_seq, head)) != MQPKI_OK)
        goto out;
    if (head_seq == 0) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "%s: the audit log is empty; nothing to certify",
                        inv->path);
        goto out;
    }
    rc = inventory_audit_checkpoint_latest(inv, &latest);
    if (rc == MQPKI_OK)
        have = 1;
    else if (rc != MQPKI_ERR_NOT_FOUND)
        goto out;
    mqpki_err_clear();
    if (have && latest.seq == head_seq && CRYPTO_memcmp(latest.head, head, INV_HASH_LEN) == 0) {
        /* Nothing happened since: the newest checkpoint still says it all. */
        cp = latest;
        rc = MQPKI_OK;
        goto out;
    }
    if (have && latest.seq > head_seq) {
        rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                        "audit log: checkpoint %" PRId64 " certifies event %" PRId64
                        " but the chain head is %" PRId64 "; not signing another",
                        latest.id, latest.seq, head_seq);
        goto out;
    }
    /* Only a chain that extends what was certified before gets certified. */
    if ((rc = chain_walk(inv, have ? latest.seq : 0, have ? latest.head : zero,
                         have ? latest.id : 0, &w)) != MQPKI_OK ||
        (rc = head_matches(head_seq, head, &w)) != MQPKI_OK) {
        rc = mqpki_fail(rc, "%s; no checkpoint signed", mqpki_err_detail(rc));
        goto out;
    }
    cp.id = have ? latest.id + 1 : 1;
    cp.seq = head_seq;
    memcpy(cp.head, head, INV_HASH_LEN);
    cp.time = mqpki_now();
    snprintf(cp.key_label, sizeof(cp.key_label), "%s", key_label);
    proto_audit_tbs(cp.id, cp.seq, cp.head, cp.time, tbs);
    cp.sig_len = sizeof(cp.signature);
    if ((rc = sign(ctx, tbs, sizeof(tbs), cp.signature, &cp.sig_len)) != MQPKI_OK)
        goto out;
    if (cp.sig_len == 0 || cp.sig_len > sizeof(cp.signature)) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "audit checkpoint: signature of %zu bytes", cp.sig_len);
        goto out;
    }
    if ((rc = inv_stmt(inv, SQL_AUDIT_CP_INSERT, &st)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, cp.id);
    db_bind_int64(st, 2, cp.seq);
    db_bind_blob(st, 3, cp.head, INV_HASH_LEN);
    db_bind_int64(st, 4, cp.time);
    if ((rc = inv_bind_text(inv, st, 5, cp.key_label)) != MQPKI_OK)
        goto out;
    db_bind_blob(st, 6, cp.signature, (int)cp.sig_len);
    src = db_step(st);
    if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, "audit checkpoint");
        goto out;
    }
    if (made != NULL)
        *made = 1;
out:
    inv_stmt_done(st);
    rc = inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
    if (rc == MQPKI_OK && out != NULL)
        *out = cp;
    if (rc != MQPKI_OK && made != NULL)
        *made = 0;
    return rc;
}

/* The checkpoints of the store, checked one by one, into cps (heap, caller frees). */
static int load_checkpoints(struct inventory *inv, EVP_PKEY *pub, struct cp_ref **cps_out,
                            size_t *n_out, struct inventory_audit_report *rep)
{
    struct inventory_audit_checkpoint cp;
    unsigned char tbs[PROTO_AUDIT_TBS_LEN];
    struct cp_ref *cps = NULL;
    char why[128];
    struct db_stmt *st = NULL;
    size_t n = 0, cap = 0;
    int64_t prev_id = 0, prev_seq = 0;
    int rc = MQPKI_OK, src;

    if ((rc = inv_stmt(inv, SQL_AUDIT_CP_LIST, &st)) != MQPKI_OK)
        goto out;
    while ((src = db_step(st)) == DB_ROW) {
        if ((rc = cp_read(inv, st, &cp)) != MQPKI_OK) {
            rep->bad_checkpoint = cp.id;
            goto out;
        }
        if (cp.id != prev_id + 1) {
            /* Numbers are signed: a hole left by a deleted checkpoint cannot be closed. */
            rep->bad_checkpoint = prev_id + 1;
            rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                            "audit log: checkpoint %" PRId64 "%s is missing (deleted): the "
                            "store goes from checkpoint %" PRId64 " to %" PRId64,
                            prev_id + 1, cp.id - prev_id > 2 ? " and later ones" : "", prev_id,
                            cp.id);
            goto out;
        }
        if (pub == NULL) {
            rep->bad_checkpoint = cp.id;
            rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                            "audit log: the store holds signed checkpoints but there is no "
                            "audit public key to check them with");
            goto out;
        }
        proto_audit_tbs(cp.id, cp.seq, cp.head, cp.time, tbs);
        if (proto_audit_verify(pub, tbs, sizeof(tbs), cp.signature, cp.sig_len, why, sizeof(why)) !=
            0) {
            rep->bad_checkpoint = cp.id;
            rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                            "audit log: checkpoint %" PRId64 " (event %" PRId64 "): %s; forged "
                            "or altered",
                            cp.id, cp.seq, why);
            goto out;
        }
        if (cp.seq < prev_seq) {
            rep->bad_checkpoint = cp.id;
            rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                            "audit log: checkpoint %" PRId64 " certifies event %" PRId64
                            ", before checkpoint %" PRId64 "'s event %" PRId64,
                            cp.id, cp.seq, prev_id, prev_seq);
            goto out;
        }
        if (n == cap) {
            size_t ncap = cap ? 2 * cap : 64;
            struct cp_ref *v = realloc(cps, ncap * sizeof(*cps));
            if (v == NULL) {
                rc = MQPKI_ERR_NOMEM;
                goto out;
            }
            cps = v;
            cap = ncap;
        }
        cps[n].id = cp.id;
        cps[n].seq = cp.seq;
        cps[n].time = cp.time;
        memcpy(cps[n].head, cp.head, INV_HASH_LEN);
        n++;
        rep->last = cp;
        prev_id = cp.id;
        prev_seq = cp.seq;
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "audit checkpoints");
out:
    inv_stmt_done(st);
    if (rc != MQPKI_OK) {
        free(cps);
        cps = NULL;
        n = 0;
    }
    *cps_out = cps;
    *n_out = n;
    return rc;
}

/* A copy kept outside the store must verify and be in the store unchanged. */
static int check_published(EVP_PKEY *pub, const struct inventory_audit_checkpoint *p,
                           const char *source, const struct cp_ref *cps, size_t n,
                           struct inventory_audit_report *rep)
{
    unsigned char tbs[PROTO_AUDIT_TBS_LEN];
    char why[128];

    rep->bad_checkpoint = p->id;
    proto_audit_tbs(p->id, p->seq, p->head, p->time, tbs);
    if (pub == NULL ||
        proto_audit_verify(pub, tbs, sizeof(tbs), p->signature, p->sig_len, why, sizeof(why)) != 0)
        return mqpki_fail(MQPKI_ERR_TAMPERED, "audit checkpoint %" PRId64 " in %s: %s", p->id,
                          source, pub == NULL ? "no audit public key to check it with" : why);
    /* Ids run 1..n without a gap (load_checkpoints): id i is at index i - 1. */
    if (p->id < 1 || (uint64_t)p->id > n)
        return mqpki_fail(MQPKI_ERR_TAMPERED,
                          "audit log: checkpoint %" PRId64 " (event %" PRId64 ", kept in %s) is "
                          "missing from the store, whose newest is %zu: checkpoints were "
                          "deleted or the store was rolled back",
                          p->id, p->seq, source, n);
    if (cps[p->id - 1].seq != p->seq || cps[p->id - 1].time != p->time ||
        CRYPTO_memcmp(cps[p->id - 1].head, p->head, INV_HASH_LEN) != 0)
        return mqpki_fail(MQPKI_ERR_TAMPERED,
                          "audit log: checkpoint %" PRId64 " in the store differs from the copy "
                          "in %s",
                          p->id, source);
    rep->bad_checkpoint = 0;
    return MQPKI_OK;
}

/* Verifies everything in one read snapshot; the caller holds it. */
static int verify_all(struct inventory *inv, EVP_PKEY *pub, int with_checkpoints,
                      const struct inventory_audit_checkpoint *published,
                      const char *const *sources, size_t n_published,
                      struct inventory_audit_report *rep)
{
    unsigned char head_hash[INV_HASH_LEN], zero[INV_HASH_LEN] = {0};
    struct cp_ref *cps = NULL;
    struct walk w;
    int64_t head_seq = 0;
    size_t n = 0;
    char when[32];
    int rc;

    memset(&w, 0, sizeof(w));
    rc = inv_audit_head(inv, &head_seq, head_hash);
    if (rc != MQPKI_OK)
        goto out;
    if (with_checkpoints) {
        if ((rc = load_checkpoints(inv, pub, &cps, &n, rep)) != MQPKI_OK)
            goto out;
        for (size_t i = 0; i < n_published; i++)
            if ((rc = check_published(pub, &published[i], sources[i], cps, n, rep)) != MQPKI_OK)
                goto out;
    }
    w.cps = cps;
    w.n_cps = n;
    rc = chain_walk(inv, 0, zero, 0, &w);
    if (rc == MQPKI_OK)
        rc = head_matches(head_seq, head_hash, &w);
    if (rc == MQPKI_OK && w.next_cp < n) {
        /* Signed heads beyond the end: the newest events were deleted, head and all. */
        const struct cp_ref *cp = &cps[w.next_cp];
        mqpki_time_str(cp->time, when);
        w.bad_cp = cp->id;
        w.bad_seq = w.end_seq;
        rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                        "audit log: checkpoint %" PRId64 " (signed %s) certifies event %" PRId64
                        " but the log ends at event %" PRId64 ": events were deleted",
                        cp->id, when, cp->seq, w.end_seq);
    }
    rep->events = w.count;
    rep->bad_seq = w.bad_seq;
    if (w.bad_cp != 0)
        rep->bad_checkpoint = w.bad_cp;
    if (rc == MQPKI_OK) {
        rep->checkpoints = (int64_t)n;
        rep->unanchored = w.end_seq - (n > 0 ? rep->last.seq : 0);
    }
out:
    if (rc != MQPKI_OK) {
        rep->checkpoints = 0;
        memset(&rep->last, 0, sizeof(rep->last));
    }
    free(cps);
    return rc;
}

/* Runs verify_all in one read snapshot (unless the caller holds a transaction). */
static int verify_snapshot(struct inventory *inv, EVP_PKEY *pub, int with_checkpoints,
                           const struct inventory_audit_checkpoint *published,
                           const char *const *sources, size_t n_published,
                           struct inventory_audit_report *rep)
{
    int own = 0, rc;

    memset(rep, 0, sizeof(*rep));
    /* One read snapshot, so the head and the rows agree even while others append. */
    if (!inv->in_tx) {
        if ((rc = inv->db->ops->begin_snapshot(inv->db)) != DB_OK)
            return inv_db_fail(inv, rc, "audit verify");
        own = 1;
    }
    rc = verify_all(inv, pub, with_checkpoints, published, sources, n_published, rep);
    if (own && inv->db->ops->in_transaction(inv->db))
        (void)inv->db->ops->exec(inv->db, "COMMIT");
    return rc;
}

int inventory_audit_verify_signed(struct inventory *inv, EVP_PKEY *pub,
                                  const struct inventory_audit_checkpoint *published,
                                  const char *const *sources, size_t n_published,
                                  struct inventory_audit_report *out)
{
    struct inventory_audit_report mine;

    if (out == NULL)
        out = &mine;
    memset(out, 0, sizeof(*out));
    if (inv == NULL || (n_published > 0 && (published == NULL || sources == NULL)))
        return mqpki_fail(MQPKI_ERR_INVALID, "audit verify: no store");
    return verify_snapshot(inv, pub, 1, published, sources, n_published, out);
}

int inventory_audit_verify(struct inventory *inv, int64_t *count, int64_t *bad_seq)
{
    struct inventory_audit_report rep;
    int rc;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "audit verify: no store");
    rc = verify_snapshot(inv, NULL, 0, NULL, NULL, 0, &rep);
    if (count != NULL)
        *count = rep.events;
    if (bad_seq != NULL)
        *bad_seq = rc == MQPKI_ERR_TAMPERED ? rep.bad_seq : 0;
    return rc;
}
