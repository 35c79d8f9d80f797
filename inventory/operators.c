/*
 * inventory/operators.c: the dashboard's operator tokens (inventory.h, "Operator tokens").
 * Token text "ID.SECRET": the row id finds the one row to check, so no lookup compares the
 * secret against every row; the secret is checked against SHA-256(salt || secret) in constant
 * time. The secret is never stored or logged.
 */
#include "inventory_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#define SECRET_BYTES 32
/* base64url of 32 bytes: 43 characters. */
#define SECRET_TEXT 44

_Static_assert(INV_OP_TOKEN_MAX > 20 + 1 + SECRET_TEXT, "ID.SECRET fits");

static const char *const use_names[] = {"bearer", "login", "session"};

static int operator_usable(struct inventory *inv, const char *asset_id)
{
    struct inventory_asset a;
    int rc;

    memset(&a, 0, sizeof(a));
    if ((rc = inventory_asset_get(inv, asset_id, &a)) != MQPKI_OK)
        return rc;
    if (a.kind != INV_KIND_OPERATOR)
        rc = mqpki_fail(MQPKI_ERR_POLICY, "asset %s is a %s, not an operator", asset_id,
                        inventory_kind_name(a.kind));
    else if (a.state == INV_STATE_REVOKED || a.state == INV_STATE_DECOMMISSIONED ||
             a.state == INV_STATE_SUSPENDED)
        rc = mqpki_fail(MQPKI_ERR_STATE, "operator %s is %s", asset_id,
                        inventory_state_name(a.state));
    inventory_asset_clear(&a);
    return rc;
}

int inventory_operator_token_create(struct inventory *inv, const char *asset_id, int use,
                                    int64_t ttl, const char *actor,
                                    char token_out[INV_OP_TOKEN_MAX])
{
    unsigned char raw[SECRET_BYTES], salt[INV_SALT_BYTES], hash[INV_HASH_LEN];
    char secret[SECRET_TEXT + 4];
    int64_t now = mqpki_now(), id;
    struct db_stmt *st = NULL;
    struct inv_tx tx;
    int rc, src;

    token_out[0] = '\0';
    if (use < 0 || use > INV_OP_SESSION || ttl < 1 || ttl > INV_OP_TTL_MAX)
        return mqpki_fail(MQPKI_ERR_INVALID, "operator token: use or lifetime out of range");
    if ((rc = inv_check_id(asset_id)) != MQPKI_OK)
        return rc;
    if (RAND_bytes(raw, sizeof(raw)) != 1 || RAND_bytes(salt, sizeof(salt)) != 1)
        return mqpki_fail(MQPKI_ERR_CRYPTO, "operator token: no randomness");
    inv_base64url(raw, sizeof(raw), secret);
    if ((rc = inv_token_hash(salt, secret, strlen(secret), hash)) != MQPKI_OK)
        goto wipe;
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        goto wipe;
    if ((rc = operator_usable(inv, asset_id)) != MQPKI_OK)
        goto end;
    if ((rc = inv_prepare(inv,
                          "INSERT INTO operator_tokens(asset_id, use, salt, hash, created_at, "
                          "expires_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
                          &st)) != MQPKI_OK)
        goto end;
    inv_bind_text(inv, st, 1, asset_id);
    inv_bind_text(inv, st, 2, use_names[use]);
    db_bind_blob(st, 3, salt, sizeof(salt));
    db_bind_blob(st, 4, hash, sizeof(hash));
    db_bind_int64(st, 5, now);
    db_bind_int64(st, 6, now + ttl);
    if ((src = db_step(st)) != DB_ROW) {
        rc = inv_db_fail(inv, src, "operator token");
        goto end;
    }
    id = db_column_int64(st, 0);
    db_finalize(st);
    st = NULL;
    if (use != INV_OP_SESSION &&
        (rc = inv_audit(inv, actor, "operator.token", asset_id,
                        json_pack("{s:I, s:s, s:I}", "token", (json_int_t)id, "use", use_names[use],
                                  "expires_at", (json_int_t)(now + ttl)))) != MQPKI_OK)
        goto end;
    if (use == INV_OP_SESSION &&
        (rc = inv_audit(inv, actor, "operator.login", asset_id,
                        json_pack("{s:I, s:I}", "session", (json_int_t)id, "expires_at",
                                  (json_int_t)(now + ttl)))) != MQPKI_OK)
        goto end;
    snprintf(token_out, INV_OP_TOKEN_MAX, "%lld.%s", (long long)id, secret);
end:
    db_finalize(st);
    rc = inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
    if (rc != MQPKI_OK)
        OPENSSL_cleanse(token_out, INV_OP_TOKEN_MAX);
wipe:
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(secret, sizeof(secret));
    return rc;
}

/* "ID.SECRET" -> id and the secret's place; -1 when malformed. */
static int64_t token_split(const char *token, const char **secret)
{
    int64_t id = 0;
    const char *p = token;

    if (token == NULL || strlen(token) >= INV_OP_TOKEN_MAX)
        return -1;
    for (; *p >= '0' && *p <= '9' && id < INT64_MAX / 10 - 10; p++)
        id = id * 10 + (*p - '0');
    if (p == token || *p != '.' || id <= 0 || strlen(p + 1) != SECRET_TEXT - 1)
        return -1;
    *secret = p + 1;
    return id;
}

int inventory_operator_token_check(struct inventory *inv, const char *token, int use, int64_t now,
                                   char asset_out[PROTO_ASSET_ID_MAX + 1])
{
    unsigned char calc[INV_HASH_LEN];
    const unsigned char *salt, *hash;
    const char *secret = NULL;
    char asset[PROTO_ASSET_ID_MAX + 1] = "";
    struct db_stmt *st = NULL;
    struct inv_tx tx;
    int64_t id = token_split(token, &secret);
    /* Only a login writes (it consumes its token): bearer and session checks, one per page,
     * read without taking the store's write lock. */
    int rc = MQPKI_OK, src, ok = 0, write = use == INV_OP_LOGIN;

    asset_out[0] = '\0';
    if (id < 0 || use < 0 || use > INV_OP_SESSION)
        return mqpki_fail(MQPKI_ERR_AUTH, "operator token refused");
    if (write && (rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    if ((rc = inv_prepare(inv,
                          "SELECT asset_id, salt, hash FROM operator_tokens WHERE id = ?1 "
                          "AND use = ?2 AND expires_at > ?3 AND used_at IS NULL "
                          "AND revoked_at IS NULL",
                          &st)) != MQPKI_OK)
        goto end;
    db_bind_int64(st, 1, id);
    inv_bind_text(inv, st, 2, use_names[use]);
    db_bind_int64(st, 3, now);
    if ((src = db_step(st)) == DB_ROW) {
        inv_col_text(st, 0, asset, sizeof(asset));
        salt = db_column_blob(st, 1);
        hash = db_column_blob(st, 2);
        if (salt != NULL && hash != NULL && db_column_bytes(st, 1) == INV_SALT_BYTES &&
            db_column_bytes(st, 2) == INV_HASH_LEN &&
            inv_token_hash(salt, secret, strlen(secret), calc) == MQPKI_OK &&
            CRYPTO_memcmp(calc, hash, INV_HASH_LEN) == 0)
            ok = 1;
    } else if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, "operator token");
        goto end;
    }
    db_finalize(st);
    st = NULL;
    if (ok && operator_usable(inv, asset) != MQPKI_OK)
        ok = 0;
    if (ok && use == INV_OP_LOGIN) {
        if ((rc = inv_prepare(inv,
                              "UPDATE operator_tokens SET used_at = ?2 WHERE id = ?1 "
                              "AND used_at IS NULL",
                              &st)) != MQPKI_OK)
            goto end;
        db_bind_int64(st, 1, id);
        db_bind_int64(st, 2, now);
        if ((src = db_step(st)) != DB_DONE) {
            rc = inv_db_fail(inv, src, "operator login");
            goto end;
        }
        ok = inv->db->ops->changes(inv->db) == 1;
    }
    if (ok)
        snprintf(asset_out, PROTO_ASSET_ID_MAX + 1, "%s", asset);
    else
        rc = mqpki_fail(MQPKI_ERR_AUTH, "operator token refused");
end:
    db_finalize(st);
    OPENSSL_cleanse(calc, sizeof(calc));
    /* A refused token changes nothing; a consumed login token is kept. */
    return write ? inv_tx_end(inv, &tx, rc == MQPKI_OK, rc) : rc;
}

int inventory_operator_token_revoke(struct inventory *inv, const char *asset_id, const char *actor,
                                    int *count)
{
    struct db_stmt *st = NULL;
    struct inv_tx tx;
    int rc, src, n = 0;

    if (count != NULL)
        *count = 0;
    if ((rc = inv_check_id(asset_id)) != MQPKI_OK || (rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    if ((rc = inv_prepare(inv,
                          "UPDATE operator_tokens SET revoked_at = ?2 WHERE asset_id = ?1 "
                          "AND revoked_at IS NULL AND used_at IS NULL AND expires_at > ?2",
                          &st)) != MQPKI_OK)
        goto end;
    inv_bind_text(inv, st, 1, asset_id);
    db_bind_int64(st, 2, mqpki_now());
    if ((src = db_step(st)) != DB_DONE) {
        rc = inv_db_fail(inv, src, "operator token revoke");
        goto end;
    }
    n = inv->db->ops->changes(inv->db);
    rc = inv_audit(inv, actor, "operator.token_revoke", asset_id, json_pack("{s:i}", "tokens", n));
end:
    db_finalize(st);
    rc = inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
    if (rc == MQPKI_OK && count != NULL)
        *count = n;
    return rc;
}
