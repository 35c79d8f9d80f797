/*
 * inventory/tokens.c: one-time enrollment tokens. The token text is shown once and never
 * stored or logged: the store keeps a random per-token salt and SHA-256(salt || token).
 */
#include "inventory_int.h"

#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define TOKEN_BYTES    16
#define TTL_MAX        (30 * 86400)
#define TOKEN_TEXT_MAX 64

_Static_assert(INV_CSR_HASH_LEN == INV_HASH_LEN, "a CSR hash is a SHA-256 like the token hash");

/* The one reply for every refusal: never say whether asset, token or expiry was wrong. */
#define REFUSED "enrollment token refused"

int inv_token_hash(const unsigned char *salt, const char *token, size_t len,
                   unsigned char out[INV_HASH_LEN])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int n = 0;
    int rc = MQPKI_OK;

    if (md == NULL)
        return MQPKI_ERR_NOMEM;
    if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(md, salt, INV_SALT_BYTES) != 1 || EVP_DigestUpdate(md, token, len) != 1 ||
        EVP_DigestFinal_ex(md, out, &n) != 1 || n != INV_HASH_LEN)
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "token: SHA-256 failed");
    EVP_MD_CTX_free(md);
    return rc;
}

void inv_base64url(const unsigned char *in, int len, char *out)
{
    int n = EVP_EncodeBlock((unsigned char *)out, in, len);

    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (int i = 0; i < n; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
}

static const char *const token_state_names[] = {"live", "used", "expired", "revoked", "burned"};

int inventory_token_state_parse(const char *name)
{
    for (int i = 0; name != NULL && i < (int)(sizeof(token_state_names) / sizeof(char *)); i++)
        if (strcmp(name, token_state_names[i]) == 0)
            return i;
    return -1;
}

const char *inventory_token_state_name(int state)
{
    if (state < 0 || state >= (int)(sizeof(token_state_names) / sizeof(char *)))
        return NULL;
    return token_state_names[state];
}

/*
 * Revokes the live tokens one statement selects (SQL_TOKEN_SUPERSEDE: the asset's others than
 * `except`; SQL_TOKEN_REVOKE_ID: token `id`; SQL_TOKEN_REVOKE_ASSET: all of the asset's) inside
 * the current unit of work, with one "token.revoke" event naming them; *count how many.
 */
static int token_revoke_rows(struct inventory *inv, enum inv_sql which, const char *asset_id,
                             int64_t id, int64_t except, int64_t now, const char *actor, int *count)
{
    struct db_stmt *st = NULL;
    json_t *ids = json_array();
    int rc, src;

    if (count != NULL)
        *count = 0;
    if (ids == NULL)
        return MQPKI_ERR_NOMEM;
    if ((rc = inv_stmt(inv, which, &st)) != MQPKI_OK)
        goto out;
    if (which == SQL_TOKEN_REVOKE_ID)
        db_bind_int64(st, 1, id);
    else if ((rc = inv_bind_text(inv, st, 1, asset_id)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 2, now);
    if (which == SQL_TOKEN_SUPERSEDE)
        db_bind_int64(st, 3, except);
    while ((src = db_step(st)) == DB_ROW) {
        if (json_array_append_new(ids, json_integer(db_column_int64(st, 0))) != 0) {
            rc = MQPKI_ERR_NOMEM;
            goto out;
        }
    }
    if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, "token revoke");
        goto out;
    }
    inv_stmt_done(st);
    st = NULL;
    if (json_array_size(ids) == 0)
        goto out;
    if (count != NULL)
        *count = (int)json_array_size(ids);
    if (which == SQL_TOKEN_SUPERSEDE)
        rc = inv_audit(inv, actor, "token.revoke", asset_id,
                       json_pack("{s:O,s:s,s:I}", "token_ids", ids, "reason", "superseded",
                                 "superseded_by", (json_int_t)except));
    else
        rc = inv_audit(inv, actor, "token.revoke", asset_id,
                       json_pack("{s:O,s:s}", "token_ids", ids, "reason", "revoked"));
out:
    inv_stmt_done(st);
    json_decref(ids);
    return rc;
}

/* inventory_token_create with an explicit clock (unit tests create expired tokens). */
MQPKI_STATIC int token_create_at(struct inventory *inv, const char *asset_id, int64_t ttl,
                                 int64_t now, const char *actor, char token_out[64])
{
    unsigned char raw[TOKEN_BYTES], salt[INV_SALT_BYTES], hash[INV_HASH_LEN];
    char text[4 * ((TOKEN_BYTES + 2) / 3) + 1], expires[32];
    struct inv_tx tx = {0};
    struct db_stmt *st = NULL;
    int rc, src, state = -1, started = 0;
    int64_t id = 0;

    if (token_out != NULL)
        memset(token_out, 0, 64);
    if (inv == NULL || token_out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "token create: arguments missing");
    rc = inv_check_id(asset_id);
    if (rc == MQPKI_OK)
        rc = inv_check_text(actor, INV_TEXT_MAX, "actor");
    if (rc == MQPKI_OK && (ttl <= 0 || ttl > TTL_MAX))
        rc = mqpki_fail(MQPKI_ERR_INVALID,
                        "asset %s: token lifetime must be between 1 second and 30 days", asset_id);
    if (rc != MQPKI_OK)
        goto out;
    rc = inv_tx_start(inv, &tx);
    if (rc != MQPKI_OK)
        goto out;
    started = 1;
    rc = inv_asset_state(inv, asset_id, &state, NULL);
    if (rc != MQPKI_OK)
        goto out;
    if (state == INV_STATE_DECOMMISSIONED) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "asset %s is decommissioned", asset_id);
        goto out;
    }
    if (RAND_bytes(raw, sizeof(raw)) != 1 || RAND_bytes(salt, sizeof(salt)) != 1) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "token: random generator failed");
        goto out;
    }
    inv_base64url(raw, sizeof(raw), text);
    rc = inv_token_hash(salt, text, strlen(text), hash);
    if (rc != MQPKI_OK)
        goto out;
    rc = inv_stmt(inv, SQL_TOKEN_INSERT, &st);
    if (rc != MQPKI_OK || (rc = inv_bind_text(inv, st, 1, asset_id)) != MQPKI_OK)
        goto out;
    db_bind_blob(st, 2, salt, INV_SALT_BYTES);
    db_bind_blob(st, 3, hash, INV_HASH_LEN);
    db_bind_int64(st, 4, now);
    db_bind_int64(st, 5, now + ttl);
    src = db_step(st);
    if (src != DB_ROW) {
        rc = inv_db_fail(inv, src, "token create");
        goto out;
    }
    id = db_column_int64(st, 0);
    inv_stmt_done(st);
    st = NULL;
    /* The event names the token by its row id, never by its text. */
    mqpki_time_str(now + ttl, expires);
    rc = inv_audit(inv, actor, "token.create", asset_id,
                   json_pack("{s:I,s:s}", "token_id", (json_int_t)id, "expires_at", expires));
    if (rc != MQPKI_OK)
        goto out;
    /* An older token still out would enroll a second certificate for the same asset: whoever
     * asks for a new token means the old one is lost or leaked. */
    rc = token_revoke_rows(inv, SQL_TOKEN_SUPERSEDE, asset_id, 0, id, now, actor, NULL);
out:
    inv_stmt_done(st);
    if (started)
        rc = inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
    if (rc == MQPKI_OK)
        memcpy(token_out, text, strlen(text) + 1);
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(text, sizeof(text));
    return rc;
}

int inventory_token_create(struct inventory *inv, const char *asset_id, int64_t ttl,
                           const char *actor, char token_out[64])
{
    return token_create_at(inv, asset_id, ttl, mqpki_now(), actor, token_out);
}

/* Finds the asset's live token matching text; *match_id 0 when none. */
static int token_find(struct inventory *inv, const char *asset_id, const char *token, size_t len,
                      int64_t now, int64_t *match_id)
{
    unsigned char calc[INV_HASH_LEN];
    struct db_stmt *st = NULL;
    int rc, src;

    *match_id = 0;
    rc = inv_stmt(inv, SQL_TOKEN_LIVE, &st);
    if (rc != MQPKI_OK || (rc = inv_bind_text(inv, st, 1, asset_id)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 2, now);
    while ((src = db_step(st)) == DB_ROW) {
        const void *salt = db_column_blob(st, 1);
        const void *hash = db_column_blob(st, 2);

        if (salt == NULL || hash == NULL || db_column_bytes(st, 1) != INV_SALT_BYTES ||
            db_column_bytes(st, 2) != INV_HASH_LEN)
            continue;
        rc = inv_token_hash(salt, token, len, calc);
        if (rc != MQPKI_OK)
            goto out;
        /* Constant time: the comparison must not reveal how much of a guess was right. */
        if (CRYPTO_memcmp(calc, hash, INV_HASH_LEN) == 0 && *match_id == 0)
            *match_id = db_column_int64(st, 0);
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "token check");
out:
    OPENSSL_cleanse(calc, sizeof(calc));
    inv_stmt_done(st);
    return rc;
}

/*
 * Bookkeeping of a refused attempt: one more failure on each live token of the asset, and the
 * tokens that reached the limit are burned (used without issuance).
 */
static int token_failed(struct inventory *inv, const char *asset_id, int64_t now)
{
    struct db_stmt *st = NULL;
    json_t *burned = NULL;
    int rc, src, bumped;

    rc = inv_stmt(inv, SQL_TOKEN_FAIL, &st);
    if (rc != MQPKI_OK || (rc = inv_bind_text(inv, st, 1, asset_id)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 2, now);
    src = db_step(st);
    if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, "token failure");
        goto out;
    }
    bumped = inv->db->ops->changes(inv->db);
    inv_stmt_done(st);
    st = NULL;
    /* Nothing live to guess at: an unknown asset or no token out; nothing to record. */
    if (bumped == 0)
        goto out;
    rc = inv_audit(inv, "enrollment", "token.refused", asset_id,
                   json_pack("{s:i}", "live_tokens", bumped));
    if (rc != MQPKI_OK)
        goto out;
    burned = json_array();
    if (burned == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    rc = inv_stmt(inv, SQL_TOKEN_BURN, &st);
    if (rc != MQPKI_OK || (rc = inv_bind_text(inv, st, 1, asset_id)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 2, now);
    db_bind_int64(st, 3, INV_TOKEN_MAX_FAILURES);
    while ((src = db_step(st)) == DB_ROW) {
        if (json_array_append_new(burned, json_integer(db_column_int64(st, 0))) != 0) {
            rc = MQPKI_ERR_NOMEM;
            goto out;
        }
    }
    if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, "token burn");
        goto out;
    }
    inv_stmt_done(st);
    st = NULL;
    if (json_array_size(burned) > 0) {
        rc = inv_audit(
            inv, "enrollment", "token.burned", asset_id,
            json_pack("{s:O,s:i}", "token_ids", burned, "failures", INV_TOKEN_MAX_FAILURES));
    }
out:
    inv_stmt_done(st);
    json_decref(burned);
    return rc;
}

/*
 * Transaction behaviour (see inventory.h): a match marks the token used inside the unit of work
 * (the caller's transaction when one is open, so it commits with the certificate). A refusal
 * returns MQPKI_ERR_AUTH but still records the failure: committed at once when no caller
 * transaction is open; inside the caller's transaction otherwise, which the caller must then
 * COMMIT (not roll back) for the attempt limit to hold. The bookkeeping runs in a savepoint, so
 * committing after an AUTH refusal never commits half-done work of this call.
 */
int inventory_token_refused(struct inventory *inv, const char *asset_id)
{
    struct inv_tx tx = {0};
    int rc;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "token refused: no store");
    if (!proto_asset_id_valid(asset_id))
        return MQPKI_OK; /* names no asset: nothing to count */
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    rc = token_failed(inv, asset_id, mqpki_now());
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}

int inventory_token_check(struct inventory *inv, const char *asset_id, const char *token)
{
    int64_t match = 0;
    size_t len;
    int rc;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "token check: no store");
    len = token != NULL ? strnlen(token, TOKEN_TEXT_MAX) : 0;
    if (!proto_asset_id_valid(asset_id) || len == 0 || len >= TOKEN_TEXT_MAX)
        return mqpki_fail(MQPKI_ERR_AUTH, REFUSED);
    rc = token_find(inv, asset_id, token, len, mqpki_now(), &match);
    if (rc == MQPKI_OK && match == 0)
        rc = mqpki_fail(MQPKI_ERR_AUTH, REFUSED);
    return rc;
}

int inventory_token_find_used(struct inventory *inv, const char *asset_id, const char *token,
                              int64_t since, unsigned char csr_sha256[INV_CSR_HASH_LEN],
                              char serial[PROTO_SERIAL_HEX_MAX + 1])
{
    unsigned char calc[INV_HASH_LEN];
    struct db_stmt *st = NULL;
    size_t len = token != NULL ? strnlen(token, TOKEN_TEXT_MAX) : 0;
    int rc, src, found = 0;

    serial[0] = '\0';
    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "token find: no store");
    if (!proto_asset_id_valid(asset_id) || len == 0 || len >= TOKEN_TEXT_MAX)
        return mqpki_fail(MQPKI_ERR_AUTH, REFUSED);
    rc = inv_stmt(inv, SQL_TOKEN_USED_SINCE, &st);
    if (rc != MQPKI_OK || (rc = inv_bind_text(inv, st, 1, asset_id)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 2, since);
    while ((src = db_step(st)) == DB_ROW) {
        const void *salt = db_column_blob(st, 1);
        const void *hash = db_column_blob(st, 2);
        const void *csr = db_column_blob(st, 3);

        if (salt == NULL || hash == NULL || csr == NULL ||
            db_column_bytes(st, 1) != INV_SALT_BYTES ||
            db_column_bytes(st, 2) != INV_HASH_LEN ||
            db_column_bytes(st, 3) != INV_CSR_HASH_LEN)
            continue;
        if ((rc = inv_token_hash(salt, token, len, calc)) != MQPKI_OK)
            goto out;
        /* Constant time, and every row hashed: as token_find. */
        if (CRYPTO_memcmp(calc, hash, INV_HASH_LEN) == 0 && !found) {
            memcpy(csr_sha256, csr, INV_CSR_HASH_LEN);
            inv_col_text(st, 4, serial, PROTO_SERIAL_HEX_MAX + 1);
            found = 1;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "token find");
    else if (!found)
        rc = mqpki_fail(MQPKI_ERR_AUTH, REFUSED);
out:
    OPENSSL_cleanse(calc, sizeof(calc));
    inv_stmt_done(st);
    return rc;
}

int inventory_token_consume(struct inventory *inv, const char *asset_id, const char *token,
                            const unsigned char *csr_sha256, const char *serial)
{
    struct inv_tx tx = {0};
    int64_t now = mqpki_now(), match = 0;
    size_t len;
    int rc, keep, src;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "token consume: no store");
    /* A malformed id names no asset: the same refusal as any other mismatch. */
    if (!proto_asset_id_valid(asset_id))
        return mqpki_fail(MQPKI_ERR_AUTH, REFUSED);
    len = token != NULL ? strnlen(token, TOKEN_TEXT_MAX) : 0;
    rc = inv_tx_start(inv, &tx);
    if (rc != MQPKI_OK)
        return rc;
    if (len > 0 && len < TOKEN_TEXT_MAX)
        rc = token_find(inv, asset_id, token, len, now, &match);
    if (rc == MQPKI_OK && match != 0) {
        struct db_stmt *st = NULL;
        rc = inv_stmt(inv, SQL_TOKEN_USE, &st);
        if (rc == MQPKI_OK) {
            db_bind_int64(st, 1, match);
            db_bind_int64(st, 2, now);
            if (csr_sha256 != NULL && serial != NULL) {
                db_bind_blob(st, 3, csr_sha256, INV_CSR_HASH_LEN);
                rc = inv_bind_text(inv, st, 4, serial);
            }
            /* Conditional: of two replicas racing with one token, exactly one gets the row. */
            if (rc == MQPKI_OK && (src = db_step(st)) != DB_ROW)
                rc = src == DB_DONE ? mqpki_fail(MQPKI_ERR_AUTH, REFUSED)
                                    : inv_db_fail(inv, src, "token use");
        }
        inv_stmt_done(st);
        if (rc == MQPKI_OK && serial != NULL)
            rc = inv_audit(inv, "enrollment", "token.use", asset_id,
                           json_pack("{s:I,s:s}", "token_id", (json_int_t)match, "serial", serial));
        else if (rc == MQPKI_OK)
            rc = inv_audit(inv, "enrollment", "token.use", asset_id,
                           json_pack("{s:I}", "token_id", (json_int_t)match));
        keep = rc == MQPKI_OK;
    } else if (rc == MQPKI_OK) {
        rc = token_failed(inv, asset_id, now);
        /* The failure is kept (committed) even though the call reports AUTH. */
        keep = rc == MQPKI_OK;
        if (rc == MQPKI_OK)
            rc = MQPKI_ERR_AUTH;
    } else {
        keep = 0;
    }
    rc = inv_tx_end(inv, &tx, keep, rc);
    if (rc == MQPKI_ERR_AUTH)
        mqpki_fail(MQPKI_ERR_AUTH, REFUSED);
    return rc;
}

/* A row of INV_TOKEN_COLS; the state derived as of now. */
static void token_from_row(struct db_stmt *st, int64_t now, struct inventory_token *t)
{
    memset(t, 0, sizeof(*t));
    t->id = db_column_int64(st, 0);
    inv_col_text(st, 1, t->asset_id, sizeof(t->asset_id));
    t->created_at = db_column_int64(st, 2);
    t->expires_at = db_column_int64(st, 3);
    t->used_at = db_column_int64(st, 4);
    t->revoked_at = db_column_int64(st, 5);
    t->failures = db_column_int(st, 6);
    inv_col_text(st, 7, t->serial, sizeof(t->serial));
    /* A burn marks the token used without a certificate; a consumed token stopped counting
     * failures below the limit (tokens used before schema 3 have no serial either). */
    if (t->revoked_at != 0)
        t->state = INV_TOKEN_REVOKED;
    else if (t->used_at != 0 && t->serial[0] == '\0' && t->failures >= INV_TOKEN_MAX_FAILURES)
        t->state = INV_TOKEN_BURNED;
    else if (t->used_at != 0)
        t->state = INV_TOKEN_USED;
    else if (t->expires_at <= now)
        t->state = INV_TOKEN_EXPIRED;
    else
        t->state = INV_TOKEN_LIVE;
}

int inventory_token_get(struct inventory *inv, int64_t id, struct inventory_token *out)
{
    struct db_stmt *st = NULL;
    int rc, src;

    if (inv == NULL || out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "token get: arguments missing");
    memset(out, 0, sizeof(*out));
    if ((rc = inv_stmt(inv, SQL_TOKEN_GET, &st)) != MQPKI_OK)
        return rc;
    db_bind_int64(st, 1, id);
    src = db_step(st);
    if (src == DB_ROW)
        token_from_row(st, mqpki_now(), out);
    else if (src == DB_DONE)
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "token %lld not found", (long long)id);
    else
        rc = inv_db_fail(inv, src, "token get");
    inv_stmt_done(st);
    return rc;
}

int inventory_token_list(struct inventory *inv, const char *asset_id, inventory_token_cb cb,
                         void *ctx)
{
    struct inventory_token t;
    struct db_stmt *st = NULL;
    int64_t now = mqpki_now();
    int rc, src;

    if (inv == NULL || cb == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "token list: arguments missing");
    if (asset_id != NULL && (rc = inv_check_id(asset_id)) != MQPKI_OK)
        return rc;
    rc = inv_stmt(inv, asset_id != NULL ? SQL_TOKEN_LIST_ASSET : SQL_TOKEN_LIST, &st);
    if (rc != MQPKI_OK || (asset_id != NULL && (rc = inv_bind_text(inv, st, 1, asset_id))))
        goto out;
    while ((src = db_step(st)) == DB_ROW) {
        token_from_row(st, now, &t);
        if (cb(&t, ctx) != 0) {
            src = DB_DONE;
            break;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "token list");
out:
    inv_stmt_done(st);
    return rc;
}

int inventory_token_revoke(struct inventory *inv, int64_t id, const char *asset_id,
                           const char *actor, int *revoked)
{
    struct inventory_token t;
    struct inv_tx tx = {0};
    int rc, state;

    if (revoked != NULL)
        *revoked = 0;
    if (inv == NULL || (id <= 0 && asset_id == NULL))
        return mqpki_fail(MQPKI_ERR_INVALID, "token revoke: a token id or an asset is needed");
    if ((rc = inv_check_text(actor, INV_TEXT_MAX, "actor")) != MQPKI_OK)
        return rc;
    if (id <= 0 && (rc = inv_check_id(asset_id)) != MQPKI_OK)
        return rc;
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    /* The asset (for the event's subject) and whether the token or asset exists at all. */
    if (id > 0) {
        if ((rc = inventory_token_get(inv, id, &t)) == MQPKI_OK)
            rc = token_revoke_rows(inv, SQL_TOKEN_REVOKE_ID, t.asset_id, id, 0, mqpki_now(), actor,
                                   revoked);
    } else if ((rc = inv_asset_state(inv, asset_id, &state, NULL)) == MQPKI_OK) {
        rc = token_revoke_rows(inv, SQL_TOKEN_REVOKE_ASSET, asset_id, 0, 0, mqpki_now(), actor,
                               revoked);
    }
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}
