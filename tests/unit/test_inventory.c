/* Unit tests for inventory/: a fresh store in a temporary directory per test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "inventory_int.h"

#include <jansson.h>
#include <sqlite3.h>
#include <openssl/evp.h>
#include <cmocka.h>
/* Under UNIT_TESTING cmocka swaps malloc/free for its own; buffers cross into module code. */
#undef malloc
#undef calloc
#undef realloc
#undef free

/* MQPKI_STATIC helper from tokens.c. */
int token_create_at(struct inventory *inv, const char *asset_id, int64_t ttl, int64_t now,
                    const char *actor, char token_out[64]);
/* MQPKI_STATIC helper from audit.c: the hash of one event. */
int audit_hash(const unsigned char prev[INV_HASH_LEN], int64_t seq, int64_t time, const char *actor,
               const char *action, const char *subject, const char *detail,
               unsigned char out[INV_HASH_LEN]);

#define DAY 86400

struct fx {
    char dir[64];
    char path[128];
    struct inventory *inv;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/test_inventory.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/mqpki.db", f->dir);
    assert_int_equal(inventory_open(f->path, &f->inv), MQPKI_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char p[160];

    inventory_close(f->inv);
    unlink(f->path);
    snprintf(p, sizeof(p), "%s-wal", f->path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", f->path);
    unlink(p);
    snprintf(p, sizeof(p), "%s/garbage.db", f->dir);
    unlink(p);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void reopen(struct fx *f)
{
    inventory_close(f->inv);
    f->inv = NULL;
    assert_int_equal(inventory_open(f->path, &f->inv), MQPKI_OK);
}

/* Runs SQL on the file through a separate connection, as a tamperer would. */
static void raw_sql(struct fx *f, const char *sql)
{
    sqlite3 *db = NULL;

    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void add_asset(struct inventory *inv, const char *id, int kind)
{
    struct inventory_asset a = {0};

    snprintf(a.id, sizeof(a.id), "%s", id);
    a.kind = kind;
    assert_int_equal(inventory_asset_add(inv, &a, "test"), MQPKI_OK);
}

static int asset_state(struct inventory *inv, const char *id)
{
    struct inventory_asset a;
    int st;

    assert_int_equal(inventory_asset_get(inv, id, &a), MQPKI_OK);
    st = a.state;
    inventory_asset_clear(&a);
    return st;
}

static void make_cert(struct inventory_cert *c, const char *serial, const char *asset, char fp,
                      int64_t not_after)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->serial, sizeof(c->serial), "%s", serial);
    snprintf(c->asset_id, sizeof(c->asset_id), "%s", asset);
    snprintf(c->profile, sizeof(c->profile), "device");
    memset(c->key_fp, fp, 64);
    c->key_fp[64] = '\0';
    c->not_before = mqpki_now() - 60;
    c->not_after = not_after != 0 ? not_after : mqpki_now() + 90 * DAY;
    c->pem = (char *)"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
}

static int cert_add(struct inventory *inv, const char *serial, const char *asset, char fp,
                    int supersede)
{
    struct inventory_cert c;

    make_cert(&c, serial, asset, fp, 0);
    return inventory_cert_add(inv, &c, supersede, NULL, "test");
}

static int cert_state(struct inventory *inv, const char *serial)
{
    struct inventory_cert c;
    int st;

    assert_int_equal(inventory_cert_get(inv, serial, 0, &c), MQPKI_OK);
    st = c.state;
    inventory_cert_clear(&c);
    return st;
}

static int count_cb(const struct inventory_asset *a, void *ctx)
{
    (void)a;
    (*(int *)ctx)++;
    return 0;
}

static int count_assets(struct inventory *inv, int state, int kind)
{
    int n = 0;

    assert_int_equal(inventory_asset_list(inv, state, kind, count_cb, &n), MQPKI_OK);
    return n;
}

static int cert_count_cb(const struct inventory_cert *c, void *ctx)
{
    (void)c;
    (*(int *)ctx)++;
    return 0;
}

static int count_certs(struct inventory *inv, const char *asset, int state)
{
    int n = 0;

    assert_int_equal(inventory_cert_list(inv, asset, state, 0, cert_count_cb, &n), MQPKI_OK);
    return n;
}

static int64_t raw_int(struct fx *f, const char *sql)
{
    struct db *db = inv_test_db(f->inv);
    struct db_stmt *st = NULL;
    int64_t v;

    assert_int_equal(db->ops->prepare(db, sql, 0, &st), DB_OK);
    assert_int_equal(db_step(st), DB_ROW);
    v = db_column_int64(st, 0);
    db_finalize(st);
    return v;
}

static void test_open_schema_reopen(void **state)
{
    struct fx *f = *state;
    struct inventory *second = NULL;
    struct inventory_asset a;

    assert_int_equal(raw_int(f, "PRAGMA user_version"), INV_SCHEMA_VERSION);
    assert_int_equal(raw_int(f, "PRAGMA foreign_keys"), 1);
    assert_int_equal(raw_int(f, "PRAGMA synchronous"), 2);
    /* Counting an asset's certificates by state never walks the fleet's revoked ones. */
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND "
                                "name = 'certs_asset_state'"),
                     1);
    add_asset(f->inv, "dev1", INV_KIND_DEVICE);
    reopen(f);
    assert_int_equal(raw_int(f, "PRAGMA user_version"), INV_SCHEMA_VERSION);
    assert_int_equal(inventory_asset_get(f->inv, "dev1", &a), MQPKI_OK);
    assert_string_equal(a.id, "dev1");
    inventory_asset_clear(&a);
    /* A second handle on the same file (another process in real life). */
    assert_int_equal(inventory_open(f->path, &second), MQPKI_OK);
    assert_int_equal(asset_state(second, "dev1"), INV_STATE_REGISTERED);
    inventory_close(second);
    inventory_close(NULL);
}

/* Schema 3 -> 4 rebuilds the assets table (kind 'operator'): rows, certificates and foreign
 * keys survive; operator tokens check in constant time and a login token works once. */
static void test_migrate_3_to_4_operators(void **state)
{
    struct fx *f = *state;
    struct inventory *old = NULL;
    struct inventory_cert c;
    char tok[INV_OP_TOKEN_MAX], login[INV_OP_TOKEN_MAX], who[PROTO_ASSET_ID_MAX + 1];
    int n = 0;

    inventory_close(f->inv);
    f->inv = NULL;
    unlink(f->path);
    assert_int_equal(inv_test_open_version(f->path, 3, &old), MQPKI_OK);
    add_asset(old, "a", INV_KIND_DEVICE);
    assert_int_equal(cert_add(old, "21", "a", '1', 0), MQPKI_OK);
    inventory_close(old);
    reopen(f);
    assert_int_equal(raw_int(f, "PRAGMA user_version"), INV_SCHEMA_VERSION);
    assert_int_equal(raw_int(f, "PRAGMA foreign_keys"), 1);
    assert_int_equal(inventory_cert_get(f->inv, "21", 0, &c), MQPKI_OK);
    assert_string_equal(c.asset_id, "a");
    /* Foreign keys still point at the rebuilt table. */
    assert_int_not_equal(inv_test_db(f->inv)->ops->exec(inv_test_db(f->inv),
                                                        "INSERT INTO tokens(asset_id, salt, hash, "
                                                        "created_at, expires_at) VALUES "
                                                        "('nobody', x'00', x'00', 0, 0)"),
                         DB_OK);
    add_asset(f->inv, "op", INV_KIND_OPERATOR);
    assert_int_equal(inventory_operator_token_create(f->inv, "a", INV_OP_BEARER, 60, "t", tok),
                     MQPKI_ERR_POLICY);
    assert_int_equal(inventory_operator_token_create(f->inv, "op", INV_OP_BEARER, 60, "t", tok),
                     MQPKI_OK);
    assert_int_equal(inventory_operator_token_check(f->inv, tok, INV_OP_BEARER, mqpki_now(), who),
                     MQPKI_OK);
    assert_string_equal(who, "op");
    assert_int_equal(inventory_operator_token_check(f->inv, tok, INV_OP_SESSION, mqpki_now(), who),
                     MQPKI_ERR_AUTH);
    assert_int_equal(
        inventory_operator_token_check(f->inv, tok, INV_OP_BEARER, mqpki_now() + 61, who),
        MQPKI_ERR_AUTH);
    tok[strlen(tok) - 1] ^= 1;
    assert_int_equal(inventory_operator_token_check(f->inv, tok, INV_OP_BEARER, mqpki_now(), who),
                     MQPKI_ERR_AUTH);
    assert_int_equal(inventory_operator_token_check(f->inv, "1.x", INV_OP_BEARER, mqpki_now(), who),
                     MQPKI_ERR_AUTH);
    assert_int_equal(inventory_operator_token_create(f->inv, "op", INV_OP_LOGIN, 60, "t", login),
                     MQPKI_OK);
    assert_int_equal(inventory_operator_token_check(f->inv, login, INV_OP_LOGIN, mqpki_now(), who),
                     MQPKI_OK);
    assert_int_equal(inventory_operator_token_check(f->inv, login, INV_OP_LOGIN, mqpki_now(), who),
                     MQPKI_ERR_AUTH);
    assert_int_equal(inventory_operator_token_revoke(f->inv, "op", "t", &n), MQPKI_OK);
    assert_int_equal(n, 1);
    tok[strlen(tok) - 1] ^= 1;
    assert_int_equal(inventory_operator_token_check(f->inv, tok, INV_OP_BEARER, mqpki_now(), who),
                     MQPKI_ERR_AUTH);
}

static int64_t rev_now(struct inventory *inv)
{
    int64_t v = -1;

    assert_int_equal(inventory_rev_current(inv, &v), MQPKI_OK);
    return v;
}

/* A store of schema 1 (wave 1) with revocations and its CRL bookkeeping moves to schema 2:
 * every revocation gets its place in the revocation sequence, in revocation order, and CRL
 * numbers go on from the old counter. */
static void test_migrate_1_to_2(void **state)
{
    struct fx *f = *state;
    struct inventory *old = NULL;
    struct inventory_cert c;
    int64_t n = 0;

    inventory_close(f->inv);
    f->inv = NULL;
    unlink(f->path);
    assert_int_equal(inv_test_open_version(f->path, 1, &old), MQPKI_OK);
    add_asset(old, "a", INV_KIND_DEVICE);
    assert_int_equal(cert_add(old, "21", "a", '1', 0), MQPKI_OK);
    assert_int_equal(cert_add(old, "22", "a", '2', 0), MQPKI_OK);
    assert_int_equal(cert_add(old, "23", "a", '3', 0), MQPKI_OK);
    assert_int_equal(inv_test_db(old)->ops->exec(inv_test_db(old),
                                  "UPDATE certs SET state = 'revoked', reason = 1, revoked_at = "
                                  "CASE serial WHEN '22' THEN 100 ELSE 200 END "
                                  "WHERE serial IN ('22', '23');"
                                  "UPDATE counters SET value = 41 WHERE name = 'crl_number';"
                                  "INSERT INTO meta(key, value) VALUES ('crl.full.number', '41');"),
                     DB_OK);
    inventory_close(old);
    reopen(f);
    assert_int_equal(raw_int(f, "PRAGMA user_version"), INV_SCHEMA_VERSION);
    assert_int_equal(inventory_cert_get(f->inv, "22", 0, &c), MQPKI_OK);
    assert_int_equal(c.rev_seq, 1);
    assert_int_equal(inventory_cert_get(f->inv, "23", 0, &c), MQPKI_OK);
    assert_int_equal(c.rev_seq, 2);
    assert_int_equal(inventory_cert_get(f->inv, "21", 0, &c), MQPKI_OK);
    assert_int_equal(c.rev_seq, 0);
    assert_int_equal(rev_now(f->inv), 2);
    assert_int_equal(inventory_crl_reserve(f->inv, INV_CRL_DELTA, "revoke", "t", &n), MQPKI_OK);
    assert_int_equal(n, 42);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM meta WHERE key LIKE 'crl.%'"), 0);
    assert_int_equal(inventory_cert_revoke(f->inv, "21", 4, 0, "t"), MQPKI_OK);
    assert_int_equal(rev_now(f->inv), 3);
}

static void test_garbage_file(void **state)
{
    struct fx *f = *state;
    struct inventory *inv = (struct inventory *)1;
    char path[160], junk[4096];
    FILE *fp;

    snprintf(path, sizeof(path), "%s/garbage.db", f->dir);
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (char)('a' + i % 26);
    fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(junk, 1, sizeof(junk), fp), sizeof(junk));
    fclose(fp);
    mqpki_err_clear();
    assert_int_equal(inventory_open(path, &inv), MQPKI_ERR_STORE);
    assert_null(inv);
    assert_non_null(
        strstr(mqpki_err_detail(MQPKI_ERR_STORE), "garbage.db: file is not a database"));
}

static void test_assets(void **state)
{
    struct fx *f = *state;
    struct inventory_asset a = {0}, g;

    snprintf(a.id, sizeof(a.id), "dev1");
    a.kind = INV_KIND_DEVICE;
    snprintf(a.model, sizeof(a.model), "TH-100");
    snprintf(a.hw_serial, sizeof(a.hw_serial), "SN42");
    snprintf(a.firmware, sizeof(a.firmware), "1.0");
    snprintf(a.location, sizeof(a.location), "hall 3");
    a.tags_json = (char *)"{\"line\":\"a\",\"zone\":\"z1\"}";
    assert_int_equal(inventory_asset_add(f->inv, &a, "cli:root"), MQPKI_OK);
    add_asset(f->inv, "dev2", INV_KIND_DEVICE);
    add_asset(f->inv, "brk1", INV_KIND_BROKER);

    assert_int_equal(inventory_asset_get(f->inv, "dev1", &g), MQPKI_OK);
    assert_int_equal(g.kind, INV_KIND_DEVICE);
    assert_int_equal(g.state, INV_STATE_REGISTERED);
    assert_string_equal(g.model, "TH-100");
    assert_string_equal(g.hw_serial, "SN42");
    assert_string_equal(g.location, "hall 3");
    assert_string_equal(g.tags_json, "{\"line\":\"a\",\"zone\":\"z1\"}");
    assert_true(g.created_at > 0);
    assert_int_equal(g.last_seen, 0);
    inventory_asset_clear(&g);
    inventory_asset_clear(&g);

    assert_int_equal(inventory_asset_get(f->inv, "dev2", &g), MQPKI_OK);
    assert_string_equal(g.tags_json, "{}");
    inventory_asset_clear(&g);

    assert_int_equal(inventory_asset_get(f->inv, "nope", &g), MQPKI_ERR_NOT_FOUND);
    assert_int_equal(count_assets(f->inv, -1, -1), 3);
    assert_int_equal(count_assets(f->inv, INV_STATE_REGISTERED, -1), 3);
    assert_int_equal(count_assets(f->inv, INV_STATE_ACTIVE, -1), 0);
    assert_int_equal(count_assets(f->inv, -1, INV_KIND_BROKER), 1);
    assert_int_equal(count_assets(f->inv, INV_STATE_REGISTERED, INV_KIND_DEVICE), 2);
    assert_int_equal(inventory_asset_list(f->inv, 42, -1, count_cb, &(int){0}), MQPKI_ERR_INVALID);

    /* Update: firmware, a new tag, a changed tag, a deleted tag. */
    assert_int_equal(inventory_asset_update(f->inv, "dev1", "1.1", NULL, "owner", "ops", "cli"),
                     MQPKI_OK);
    assert_int_equal(inventory_asset_update(f->inv, "dev1", NULL, "hall 4", "zone", "", "cli"),
                     MQPKI_OK);
    assert_int_equal(inventory_asset_get(f->inv, "dev1", &g), MQPKI_OK);
    assert_string_equal(g.firmware, "1.1");
    assert_string_equal(g.location, "hall 4");
    assert_string_equal(g.model, "TH-100");
    assert_string_equal(g.tags_json, "{\"line\":\"a\",\"owner\":\"ops\"}");
    inventory_asset_clear(&g);
    assert_int_equal(inventory_asset_update(f->inv, "dev1", NULL, NULL, "", "x", "cli"),
                     MQPKI_ERR_INVALID);
    assert_int_equal(inventory_asset_update(f->inv, "ghost", "2", NULL, NULL, NULL, "cli"),
                     MQPKI_ERR_NOT_FOUND);

    /* Duplicate. */
    mqpki_err_clear();
    assert_int_equal(inventory_asset_add(f->inv, &a, "cli"), MQPKI_ERR_EXISTS);
    assert_string_equal(mqpki_err_detail(MQPKI_ERR_EXISTS), "asset dev1 already exists");

    /* Bad tags and overlong text. */
    snprintf(a.id, sizeof(a.id), "dev9");
    a.tags_json = (char *)"[\"x\"]";
    assert_int_equal(inventory_asset_add(f->inv, &a, "cli"), MQPKI_ERR_INVALID);
    a.tags_json = (char *)"{\"n\":1}";
    assert_int_equal(inventory_asset_add(f->inv, &a, "cli"), MQPKI_ERR_INVALID);
    a.tags_json = (char *)"{not json";
    assert_int_equal(inventory_asset_add(f->inv, &a, "cli"), MQPKI_ERR_INVALID);
    a.tags_json = NULL;
    memset(a.model, 'm', sizeof(a.model));
    assert_int_equal(inventory_asset_add(f->inv, &a, "cli"), MQPKI_ERR_INVALID);
    a.model[INV_TEXT_MAX - 1] = '\0';
    a.kind = 7;
    assert_int_equal(inventory_asset_add(f->inv, &a, "cli"), MQPKI_ERR_INVALID);
    a.kind = INV_KIND_SERVICE;
    assert_int_equal(inventory_asset_add(f->inv, &a, "cli"), MQPKI_OK);
    assert_int_equal(count_assets(f->inv, -1, INV_KIND_SERVICE), 1);

    assert_int_equal(inventory_state_parse("suspended"), INV_STATE_SUSPENDED);
    assert_int_equal(inventory_state_parse("bogus"), -1);
    assert_string_equal(inventory_state_name(INV_STATE_DECOMMISSIONED), "decommissioned");
    assert_null(inventory_state_name(99));
    assert_int_equal(inventory_kind_parse("broker"), INV_KIND_BROKER);
    assert_int_equal(inventory_cert_state_parse("expired"), INV_CERT_EXPIRED);
}

static int collect_json(const char *json, size_t len, void *ctx)
{
    json_t *arr = ctx;
    json_error_t err;

    return json_array_append_new(arr, json_loadb(json, len, 0, &err)) != 0;
}

/* The store-encoded listing: valid JSON per asset, the same fields as the struct listing. */
static void test_asset_list_json(void **state)
{
    struct fx *f = *state;
    struct inventory_asset a = {0};
    json_t *arr = json_array(), *o;

    snprintf(a.id, sizeof(a.id), "dev1");
    a.kind = INV_KIND_DEVICE;
    snprintf(a.model, sizeof(a.model), "quote \" and caf\xc3\xa9");
    snprintf(a.location, sizeof(a.location), "tab\there\\back\x01slash");
    a.tags_json = (char *)"{\"zone\":\"z1\"}";
    assert_int_equal(inventory_asset_add(f->inv, &a, "cli"), MQPKI_OK);
    add_asset(f->inv, "brk1", INV_KIND_BROKER);
    assert_int_equal(inventory_asset_seen(f->inv, "dev1", 1795570000, "10.0.0.7", "b1"), MQPKI_OK);

    assert_int_equal(inventory_asset_list_json(f->inv, -1, INV_KIND_DEVICE, collect_json, arr),
                     MQPKI_OK);
    assert_int_equal(json_array_size(arr), 1);
    o = json_array_get(arr, 0);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "id")), "dev1");
    assert_string_equal(json_string_value(json_object_get(o, "kind")), "device");
    assert_string_equal(json_string_value(json_object_get(o, "model")), "quote \" and caf\xc3\xa9");
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "tags"), "zone")),
                        "z1");
    assert_string_equal(json_string_value(json_object_get(o, "location")),
                        "tab\there\\back\x01slash");
    assert_string_equal(json_string_value(json_object_get(o, "serial")), "");
    assert_string_equal(json_string_value(json_object_get(o, "last_seen")), "2026-11-25T01:26:40Z");
    assert_string_equal(json_string_value(json_object_get(o, "last_broker")), "b1");
    /* One second before midnight, the day already formatted. */
    assert_int_equal(inventory_asset_seen(f->inv, "dev1", 1795651199, "10.0.0.7", "b1"), MQPKI_OK);
    json_array_clear(arr);
    assert_int_equal(inventory_asset_list_json(f->inv, -1, INV_KIND_DEVICE, collect_json, arr),
                     MQPKI_OK);
    o = json_array_get(arr, 0);
    assert_string_equal(json_string_value(json_object_get(o, "last_seen")), "2026-11-25T23:59:59Z");
    assert_string_equal(json_string_value(json_object_get(o, "last_address")), "10.0.0.7");
    json_array_clear(arr);
    assert_int_equal(inventory_asset_list_json(f->inv, INV_STATE_REGISTERED, -1, collect_json, arr),
                     MQPKI_OK);
    assert_int_equal(json_array_size(arr), 1);
    o = json_array_get(arr, 0);
    assert_string_equal(json_string_value(json_object_get(o, "id")), "brk1");
    assert_true(json_is_null(json_object_get(o, "last_seen")));
    assert_true(json_is_null(json_object_get(o, "last_address")));
    json_decref(arr);
}

static void test_invalid_ids(void **state)
{
    struct fx *f = *state;
    static const char *const bad[] = {"a/b",
                                      "a+b",
                                      "a#b",
                                      "a\x01"
                                      "b",
                                      "",
                                      ".a",
                                      "-a",
                                      "a b"};
    struct inventory_asset a = {0}, g;
    char tok[64];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(a.id, sizeof(a.id), "%s", bad[i]);
        mqpki_err_clear();
        assert_int_equal(inventory_asset_add(f->inv, &a, "t"), MQPKI_ERR_INVALID);
        assert_non_null(strstr(mqpki_err_detail(MQPKI_ERR_INVALID),
                               "only A-Z a-z 0-9 . _ - allowed, 1 to 64 characters"));
        assert_int_equal(inventory_asset_get(f->inv, bad[i], &g), MQPKI_ERR_INVALID);
        assert_int_equal(inventory_token_create(f->inv, bad[i], 3600, "t", tok), MQPKI_ERR_INVALID);
        assert_int_equal(inventory_asset_transition(f->inv, bad[i], INV_STATE_ENROLLED, "t", NULL),
                         MQPKI_ERR_INVALID);
    }
    assert_int_equal(inventory_asset_add(f->inv, &a, "t"), MQPKI_ERR_INVALID);
    /* 65 characters. */
    char long_id[70];
    memset(long_id, 'x', 65);
    long_id[65] = '\0';
    assert_int_equal(inventory_asset_get(f->inv, long_id, &g), MQPKI_ERR_INVALID);
    assert_int_equal(inventory_asset_history(f->inv, long_id, NULL, NULL), MQPKI_ERR_INVALID);
    /* 64 is fine. */
    long_id[64] = '\0';
    memcpy(a.id, long_id, 65);
    assert_int_equal(inventory_asset_add(f->inv, &a, "t"), MQPKI_OK);
    mqpki_err_clear();
    assert_int_equal(inventory_asset_get(f->inv, "a\nb", &g), MQPKI_ERR_INVALID);
    assert_null(strchr(mqpki_err_detail(MQPKI_ERR_INVALID), '\n'));
}

struct hist {
    int n;
    char actions[32][64];
};

static int hist_cb(const struct inventory_event *e, void *ctx)
{
    struct hist *h = ctx;

    if (h->n < 32)
        snprintf(h->actions[h->n], 64, "%s", e->action);
    h->n++;
    return 0;
}

static void test_lifecycle(void **state)
{
    struct fx *f = *state;
    struct inventory_asset a;
    struct hist h = {0};
    char tok[64];

    add_asset(f->inv, "dev1", INV_KIND_DEVICE);
    assert_int_equal(cert_add(f->inv, "0A01", "dev1", 'a', 0), MQPKI_OK);
    assert_int_equal(asset_state(f->inv, "dev1"), INV_STATE_ENROLLED);
    assert_int_equal(inventory_asset_seen(f->inv, "dev1", mqpki_now(), "10.0.0.7:5555", "brk1"),
                     MQPKI_OK);
    assert_int_equal(inventory_asset_get(f->inv, "dev1", &a), MQPKI_OK);
    assert_int_equal(a.state, INV_STATE_ACTIVE);
    assert_true(a.last_seen > 0);
    assert_string_equal(a.last_address, "10.0.0.7:5555");
    assert_string_equal(a.last_broker, "brk1");
    inventory_asset_clear(&a);

    /* Hold -> suspended; a second hold is refused; unhold -> active. */
    assert_int_equal(inventory_cert_revoke(f->inv, "0a01", 6, 0, "cli"), MQPKI_OK);
    assert_int_equal(asset_state(f->inv, "dev1"), INV_STATE_SUSPENDED);
    assert_int_equal(cert_state(f->inv, "0A01"), INV_CERT_REVOKED);
    assert_int_equal(inventory_cert_revoke(f->inv, "0A01", 6, 0, "cli"), MQPKI_ERR_STATE);
    assert_int_equal(inventory_cert_unhold(f->inv, "0a01", "cli"), MQPKI_OK);
    assert_int_equal(asset_state(f->inv, "dev1"), INV_STATE_ACTIVE);
    assert_int_equal(cert_state(f->inv, "0A01"), INV_CERT_VALID);
    assert_int_equal(inventory_cert_unhold(f->inv, "0A01", "cli"), MQPKI_ERR_STATE);

    /* Key compromise -> revoked; again -> already revoked. */
    assert_int_equal(inventory_cert_revoke(f->inv, "0A01", 1, 0, "cli"), MQPKI_OK);
    assert_int_equal(asset_state(f->inv, "dev1"), INV_STATE_REVOKED);
    mqpki_err_clear();
    assert_int_equal(inventory_cert_revoke(f->inv, "0A01", 4, 0, "cli"), MQPKI_ERR_STATE);
    assert_string_equal(mqpki_err_detail(MQPKI_ERR_STATE), "certificate 0A01 is already revoked");
    assert_int_equal(inventory_cert_revoke(f->inv, "0A01", 7, 0, "cli"), MQPKI_ERR_INVALID);

    /* Recovery: a new certificate with a new key -> enrolled. */
    assert_int_equal(cert_add(f->inv, "0A02", "dev1", 'b', 1), MQPKI_OK);
    assert_int_equal(asset_state(f->inv, "dev1"), INV_STATE_ENROLLED);

    /* Decommission: terminal. */
    assert_int_equal(
        inventory_asset_transition(f->inv, "dev1", INV_STATE_DECOMMISSIONED, "cli", "retired"),
        MQPKI_OK);
    mqpki_err_clear();
    assert_int_equal(cert_add(f->inv, "0A03", "dev1", 'c', 1), MQPKI_ERR_STATE);
    assert_string_equal(mqpki_err_detail(MQPKI_ERR_STATE), "asset dev1 is decommissioned");
    assert_int_equal(inventory_token_create(f->inv, "dev1", 3600, "cli", tok), MQPKI_ERR_STATE);
    assert_int_equal(inventory_asset_transition(f->inv, "dev1", INV_STATE_ACTIVE, "cli", NULL),
                     MQPKI_ERR_STATE);
    /* Its certificate may still be revoked (decommission revokes live certificates). */
    assert_int_equal(inventory_cert_revoke(f->inv, "0A02", 5, 0, "cli"), MQPKI_OK);
    assert_int_equal(asset_state(f->inv, "dev1"), INV_STATE_DECOMMISSIONED);

    /* History: asset events and the events of its certificates, oldest first. */
    assert_int_equal(inventory_asset_history(f->inv, "dev1", hist_cb, &h), MQPKI_OK);
    assert_true(h.n >= 12);
    assert_string_equal(h.actions[0], "asset.add");
    assert_string_equal(h.actions[1], "cert.issue");
    assert_string_equal(h.actions[2], "asset.state");
    assert_string_equal(h.actions[3], "asset.state");
    assert_string_equal(h.actions[4], "cert.revoke");
    assert_int_equal(inventory_audit_verify(f->inv, NULL, NULL), MQPKI_OK);
}

static void test_illegal_transitions(void **state)
{
    struct fx *f = *state;

    add_asset(f->inv, "d", INV_KIND_DEVICE);
    mqpki_err_clear();
    assert_int_equal(inventory_asset_transition(f->inv, "d", INV_STATE_ACTIVE, "t", NULL),
                     MQPKI_ERR_STATE);
    assert_string_equal(mqpki_err_detail(MQPKI_ERR_STATE),
                        "asset d: cannot go from registered to active");
    assert_int_equal(inventory_asset_transition(f->inv, "d", INV_STATE_SUSPENDED, "t", NULL),
                     MQPKI_ERR_STATE);
    assert_int_equal(inventory_asset_transition(f->inv, "d", INV_STATE_REGISTERED, "t", NULL),
                     MQPKI_ERR_STATE);
    assert_int_equal(inventory_asset_transition(f->inv, "d", 99, "t", NULL), MQPKI_ERR_INVALID);
    assert_int_equal(inventory_asset_transition(f->inv, "x", INV_STATE_ENROLLED, "t", NULL),
                     MQPKI_ERR_NOT_FOUND);
    assert_int_equal(inventory_asset_transition(f->inv, "d", INV_STATE_ENROLLED, "t", "manual"),
                     MQPKI_OK);
    assert_int_equal(inventory_asset_transition(f->inv, "d", INV_STATE_REGISTERED, "t", NULL),
                     MQPKI_ERR_STATE);
    assert_int_equal(inventory_asset_transition(f->inv, "d", INV_STATE_SUSPENDED, "t", NULL),
                     MQPKI_OK);
    assert_int_equal(inventory_asset_transition(f->inv, "d", INV_STATE_ENROLLED, "t", NULL),
                     MQPKI_OK);
    assert_int_equal(inventory_asset_transition(f->inv, "d", INV_STATE_REVOKED, "t", NULL),
                     MQPKI_OK);
    assert_int_equal(inventory_asset_transition(f->inv, "d", INV_STATE_ACTIVE, "t", NULL),
                     MQPKI_ERR_STATE);
    assert_int_equal(inventory_asset_transition(f->inv, "d", INV_STATE_SUSPENDED, "t", NULL),
                     MQPKI_ERR_STATE);
    assert_int_equal(inventory_asset_transition(f->inv, "d", INV_STATE_DECOMMISSIONED, "t", NULL),
                     MQPKI_OK);
    for (int s = INV_STATE_REGISTERED; s <= INV_STATE_DECOMMISSIONED; s++)
        assert_int_equal(inventory_asset_transition(f->inv, "d", s, "t", NULL), MQPKI_ERR_STATE);
    /* The table itself. */
    assert_true(inv_transition_allowed(INV_STATE_ACTIVE, INV_STATE_DECOMMISSIONED));
    assert_false(inv_transition_allowed(INV_STATE_ACTIVE, INV_STATE_ENROLLED));
    assert_false(inv_transition_allowed(INV_STATE_REVOKED, INV_STATE_ACTIVE));
}

static void test_cert_policy(void **state)
{
    struct fx *f = *state;
    struct inventory_cert c;

    add_asset(f->inv, "a1", INV_KIND_DEVICE);
    add_asset(f->inv, "a2", INV_KIND_DEVICE);
    assert_int_equal(cert_add(f->inv, "ABCDEF01", "a1", '1', 0), MQPKI_OK);
    /* Serial collision in any case. */
    assert_int_equal(cert_add(f->inv, "abcdef01", "a2", '2', 0), MQPKI_ERR_EXISTS);
    assert_int_equal(cert_add(f->inv, "XYZ", "a2", '2', 0), MQPKI_ERR_INVALID);
    assert_int_equal(cert_add(f->inv, "01", "ghost", '2', 0), MQPKI_ERR_NOT_FOUND);
    /* Same key on another asset: refused. */
    mqpki_err_clear();
    assert_int_equal(cert_add(f->inv, "02", "a2", '1', 0), MQPKI_ERR_POLICY);
    assert_non_null(
        strstr(mqpki_err_detail(MQPKI_ERR_POLICY), "public key already certified for asset a1"));
    /* Same key, same asset (renewal): allowed, and supersede applies. */
    assert_int_equal(cert_add(f->inv, "03", "a1", '1', 1), MQPKI_OK);
    assert_int_equal(cert_state(f->inv, "ABCDEF01"), INV_CERT_SUPERSEDED);
    assert_int_equal(cert_state(f->inv, "03"), INV_CERT_VALID);
    /* Without supersede the old one stays valid. */
    assert_int_equal(cert_add(f->inv, "04", "a1", '4', 0), MQPKI_OK);
    assert_int_equal(cert_state(f->inv, "03"), INV_CERT_VALID);
    /* Compromised key: refused everywhere, even for its own asset. */
    assert_int_equal(inventory_cert_revoke(f->inv, "04", 1, 0, "t"), MQPKI_OK);
    mqpki_err_clear();
    assert_int_equal(cert_add(f->inv, "05", "a1", '4', 0), MQPKI_ERR_POLICY);
    assert_non_null(
        strstr(mqpki_err_detail(MQPKI_ERR_POLICY), "public key was revoked for key compromise"));
    assert_int_equal(cert_add(f->inv, "06", "a2", '4', 0), MQPKI_ERR_POLICY);
    /* The asset keeps live certificates: not revoked. */
    assert_int_equal(asset_state(f->inv, "a1"), INV_STATE_ENROLLED);

    /* Expired is derived at read time, also for listing. */
    make_cert(&c, "07", "a2", '7', mqpki_now() - 10);
    c.not_before = mqpki_now() - 100;
    assert_int_equal(inventory_cert_add(f->inv, &c, 0, NULL, "t"), MQPKI_OK);
    assert_int_equal(cert_state(f->inv, "07"), INV_CERT_EXPIRED);
    assert_int_equal(count_certs(f->inv, NULL, INV_CERT_EXPIRED), 1);
    assert_int_equal(count_certs(f->inv, "a2", INV_CERT_VALID), 0);
    assert_int_equal(count_certs(f->inv, "a1", INV_CERT_VALID), 1);
    assert_int_equal(count_certs(f->inv, "a1", INV_CERT_SUPERSEDED), 1);
    assert_int_equal(count_certs(f->inv, NULL, INV_CERT_REVOKED), 1);
    assert_int_equal(count_certs(f->inv, NULL, -1), 4);
    assert_int_equal(count_certs(f->inv, "a1", -1), 3);

    /* Get with PEM. */
    assert_int_equal(inventory_cert_get(f->inv, "abcdef01", 1, &c), MQPKI_OK);
    assert_string_equal(c.serial, "ABCDEF01");
    assert_string_equal(c.asset_id, "a1");
    assert_non_null(c.pem);
    assert_non_null(strstr(c.pem, "BEGIN CERTIFICATE"));
    assert_int_equal(c.reason, -1);
    inventory_cert_clear(&c);
    assert_null(c.pem);
    assert_int_equal(inventory_cert_get(f->inv, "FF", 0, &c), MQPKI_ERR_NOT_FOUND);
    assert_int_equal(inventory_cert_get(f->inv, "04", 0, &c), MQPKI_OK);
    assert_int_equal(c.reason, 1);
    assert_true(c.revoked_at > 0);
    assert_null(c.pem);
}

struct revoked {
    int n;
    char serials[8][40];
    int64_t at[8];
    int reason[8];
};

static int revoked_cb(const char *serial, int64_t revoked_at, int reason, void *ctx)
{
    struct revoked *r = ctx;

    if (r->n < 8) {
        snprintf(r->serials[r->n], 40, "%s", serial);
        r->at[r->n] = revoked_at;
        r->reason[r->n] = reason;
    }
    r->n++;
    return 0;
}

static void test_revoked_list(void **state)
{
    struct fx *f = *state;
    struct inventory_cert c;
    struct revoked r = {0};
    int64_t now = mqpki_now();

    add_asset(f->inv, "a", INV_KIND_DEVICE);
    assert_int_equal(cert_add(f->inv, "11", "a", '1', 0), MQPKI_OK);
    assert_int_equal(cert_add(f->inv, "12", "a", '2', 0), MQPKI_OK);
    assert_int_equal(cert_add(f->inv, "13", "a", '3', 0), MQPKI_OK);
    make_cert(&c, "14", "a", '4', now + 100);
    assert_int_equal(inventory_cert_add(f->inv, &c, 0, NULL, "t"), MQPKI_OK);
    assert_int_equal(cert_add(f->inv, "15", "a", '5', 0), MQPKI_OK);
    assert_int_equal(inventory_cert_revoke(f->inv, "12", 4, now - 300, "t"), MQPKI_OK);
    assert_int_equal(inventory_cert_revoke(f->inv, "11", 1, now - 200, "t"), MQPKI_OK);
    assert_int_equal(inventory_cert_revoke(f->inv, "13", 6, now - 100, "t"), MQPKI_OK);
    assert_int_equal(inventory_cert_revoke(f->inv, "14", 4, now - 50, "t"), MQPKI_OK);

    assert_int_equal(rev_now(f->inv), 4);

    /* Full: revocation order, held included. */
    assert_int_equal(inventory_revoked_list(f->inv, now, -1, 4, revoked_cb, &r), MQPKI_OK);
    assert_int_equal(r.n, 4);
    assert_string_equal(r.serials[0], "12");
    assert_string_equal(r.serials[1], "11");
    assert_string_equal(r.serials[2], "13");
    assert_string_equal(r.serials[3], "14");
    assert_int_equal(r.at[0], now - 300);
    assert_int_equal(r.reason[2], 6);
    /* As of an earlier point of the sequence (what a snapshot saw). */
    memset(&r, 0, sizeof(r));
    assert_int_equal(inventory_revoked_list(f->inv, now, -1, 2, revoked_cb, &r), MQPKI_OK);
    assert_int_equal(r.n, 2);
    /* After 14 expired it drops out. */
    memset(&r, 0, sizeof(r));
    assert_int_equal(inventory_revoked_list(f->inv, now + 1000, -1, 4, revoked_cb, &r), MQPKI_OK);
    assert_int_equal(r.n, 3);
    /* Delta: what changed after sequence value 2. */
    memset(&r, 0, sizeof(r));
    assert_int_equal(inventory_revoked_list(f->inv, now, 2, 4, revoked_cb, &r), MQPKI_OK);
    assert_int_equal(r.n, 2);
    assert_string_equal(r.serials[0], "13");
    assert_string_equal(r.serials[1], "14");
    /* A hold turned final takes a new place in the sequence (so deltas carry it). */
    assert_int_equal(inventory_cert_revoke(f->inv, "13", 1, now - 10, "t"), MQPKI_OK);
    memset(&r, 0, sizeof(r));
    assert_int_equal(inventory_revoked_list(f->inv, now, 4, rev_now(f->inv), revoked_cb, &r),
                     MQPKI_OK);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.serials[0], "13");
    assert_int_equal(r.reason[0], 1);
    /* A lifted hold reads as removeFromCRL (8) in a delta and is gone from a full list. */
    assert_int_equal(inventory_cert_revoke(f->inv, "15", 6, now - 5, "t"), MQPKI_OK);
    assert_int_equal(inventory_cert_unhold(f->inv, "15", "t"), MQPKI_OK);
    assert_int_equal(rev_now(f->inv), 7);
    memset(&r, 0, sizeof(r));
    assert_int_equal(inventory_revoked_list(f->inv, now, 5, 7, revoked_cb, &r), MQPKI_OK);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.serials[0], "15");
    assert_int_equal(r.reason[0], 8);
    memset(&r, 0, sizeof(r));
    assert_int_equal(inventory_revoked_list(f->inv, now, -1, 7, revoked_cb, &r), MQPKI_OK);
    assert_int_equal(r.n, 4);
    /* One live certificate (15) remains: asset not revoked; revoke it -> revoked. */
    assert_int_not_equal(asset_state(f->inv, "a"), INV_STATE_REVOKED);
    assert_int_equal(inventory_cert_revoke(f->inv, "15", 5, 0, "t"), MQPKI_OK);
    assert_int_equal(asset_state(f->inv, "a"), INV_STATE_REVOKED);
}

static int64_t token_failures(struct fx *f, const char *where)
{
    char sql[256];

    snprintf(sql, sizeof(sql), "SELECT IFNULL(SUM(failures), 0) FROM tokens WHERE %s", where);
    return raw_int(f, sql);
}

static void test_tokens(void **state)
{
    struct fx *f = *state;
    char tok[64], tok2[64], expired[64];

    add_asset(f->inv, "dev1", INV_KIND_DEVICE);
    add_asset(f->inv, "dev2", INV_KIND_DEVICE);
    assert_int_equal(inventory_token_create(f->inv, "dev1", 3600, "cli", tok), MQPKI_OK);
    assert_int_equal(strlen(tok), 22);
    assert_int_equal(
        strspn(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), 22);
    /* Never stored in clear, not in the audit log either. */
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM tokens WHERE length(hash) = 32 "
                                "AND length(salt) = 16"),
                     1);
    {
        char sql[160];
        snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM audit WHERE instr(detail, '%s') > 0", tok);
        assert_int_equal(raw_int(f, sql), 0);
    }
    assert_int_equal(inventory_token_create(f->inv, "ghost", 3600, "cli", tok2),
                     MQPKI_ERR_NOT_FOUND);
    assert_int_equal(inventory_token_create(f->inv, "dev1", 0, "cli", tok2), MQPKI_ERR_INVALID);
    assert_int_equal(inventory_token_create(f->inv, "dev1", 31 * DAY, "cli", tok2),
                     MQPKI_ERR_INVALID);
    assert_int_equal(tok2[0], '\0');

    /* The read-only check spends nothing and counts nothing. */
    assert_int_equal(inventory_token_check(f->inv, "dev1", tok), MQPKI_OK);
    assert_int_equal(inventory_token_check(f->inv, "dev1", tok), MQPKI_OK);
    assert_int_equal(inventory_token_check(f->inv, "dev2", tok), MQPKI_ERR_AUTH);
    assert_int_equal(inventory_token_check(f->inv, "dev1", "wrong"), MQPKI_ERR_AUTH);
    assert_int_equal(inventory_token_check(f->inv, "a/b", tok), MQPKI_ERR_AUTH);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM tokens WHERE failures > 0 OR used_at "
                                "IS NOT NULL"),
                     0);
    /* A refusal counted apart from a consume (enrollment's pre-signing gate). */
    assert_int_equal(inventory_token_refused(f->inv, "dev1"), MQPKI_OK);
    assert_int_equal(raw_int(f, "SELECT failures FROM tokens WHERE asset_id = 'dev1'"), 1);
    assert_int_equal(inventory_token_check(f->inv, "dev1", tok), MQPKI_OK);

    /* Wrong asset, then the right one; second use refused. */
    mqpki_err_clear();
    assert_int_equal(inventory_token_consume(f->inv, "dev2", tok, NULL, NULL), MQPKI_ERR_AUTH);
    assert_string_equal(mqpki_err_detail(MQPKI_ERR_AUTH), "enrollment token refused");
    assert_int_equal(inventory_token_consume(f->inv, "dev1", tok, NULL, NULL), MQPKI_OK);
    mqpki_err_clear();
    assert_int_equal(inventory_token_consume(f->inv, "dev1", tok, NULL, NULL), MQPKI_ERR_AUTH);
    assert_string_equal(mqpki_err_detail(MQPKI_ERR_AUTH), "enrollment token refused");
    assert_int_equal(inventory_token_consume(f->inv, "a/b", tok, NULL, NULL), MQPKI_ERR_AUTH);
    assert_int_equal(inventory_token_consume(f->inv, "dev1", NULL, NULL, NULL), MQPKI_ERR_AUTH);
    assert_int_equal(inventory_token_consume(f->inv, "dev1", "", NULL, NULL), MQPKI_ERR_AUTH);

    /* Expired. */
    assert_int_equal(token_create_at(f->inv, "dev2", 3600, mqpki_now() - 2 * 3600, "cli", expired),
                     MQPKI_OK);
    assert_int_equal(inventory_token_consume(f->inv, "dev2", expired, NULL, NULL), MQPKI_ERR_AUTH);

    /* Wrong token, then 5 failures burn the live token. */
    assert_int_equal(inventory_token_create(f->inv, "dev1", 3600, "cli", tok2), MQPKI_OK);
    for (int i = 0; i < 4; i++)
        assert_int_equal(
            inventory_token_consume(f->inv, "dev1", "AAAAAAAAAAAAAAAAAAAAAA", NULL, NULL),
            MQPKI_ERR_AUTH);
    assert_int_equal(token_failures(f, "asset_id = 'dev1' AND used_at IS NULL"), 4);
    /* A failure inside a caller transaction persists when the caller commits. */
    assert_int_equal(inventory_begin(f->inv), MQPKI_OK);
    assert_int_equal(inventory_token_consume(f->inv, "dev1", "wrong", NULL, NULL), MQPKI_ERR_AUTH);
    assert_int_equal(inventory_commit(f->inv), MQPKI_OK);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM tokens WHERE asset_id = 'dev1' "
                                "AND used_at IS NULL"),
                     0);
    assert_int_equal(inventory_token_consume(f->inv, "dev1", tok2, NULL, NULL), MQPKI_ERR_AUTH);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM audit WHERE action = 'token.burned'"), 1);

    /* Consumed inside a caller transaction and rolled back: still usable. */
    assert_int_equal(inventory_token_create(f->inv, "dev2", 3600, "cli", tok), MQPKI_OK);
    assert_int_equal(inventory_begin(f->inv), MQPKI_OK);
    assert_int_equal(inventory_token_consume(f->inv, "dev2", tok, NULL, NULL), MQPKI_OK);
    inventory_rollback(f->inv);
    assert_int_equal(inventory_begin(f->inv), MQPKI_OK);
    assert_int_equal(inventory_token_consume(f->inv, "dev2", tok, NULL, NULL), MQPKI_OK);
    assert_int_equal(cert_add(f->inv, "0D02", "dev2", 'd', 1), MQPKI_OK);
    assert_int_equal(inventory_commit(f->inv), MQPKI_OK);
    assert_int_equal(inventory_token_consume(f->inv, "dev2", tok, NULL, NULL), MQPKI_ERR_AUTH);
    assert_int_equal(inventory_audit_verify(f->inv, NULL, NULL), MQPKI_OK);
}

struct token_seen {
    int n;
    int64_t id[8];
    int state[8];
    char asset[8][PROTO_ASSET_ID_MAX + 1];
};

static int note_token(const struct inventory_token *t, void *ctx)
{
    struct token_seen *s = ctx;

    if (s->n < 8) {
        s->id[s->n] = t->id;
        s->state[s->n] = t->state;
        snprintf(s->asset[s->n], sizeof(s->asset[0]), "%s", t->asset_id);
    }
    s->n++;
    return 0;
}

static int token_state(struct fx *f, int64_t id)
{
    struct inventory_token t;

    assert_int_equal(inventory_token_get(f->inv, id, &t), MQPKI_OK);
    return t.state;
}

/* A newer token revokes the asset's older live ones; the operator lists and revokes tokens. */
static void test_token_supersede_list_revoke(void **state)
{
    struct fx *f = *state;
    struct token_seen seen = {0};
    struct inventory_token t;
    char old[64], cur[64], other[64], expired[64], burn[64];
    int n = -1;

    add_asset(f->inv, "dev1", INV_KIND_DEVICE);
    add_asset(f->inv, "dev2", INV_KIND_DEVICE);
    add_asset(f->inv, "dev3", INV_KIND_DEVICE);
    assert_int_equal(token_create_at(f->inv, "dev1", 3600, mqpki_now() - 7200, "cli", expired),
                     MQPKI_OK); /* id 1: expired */
    assert_int_equal(inventory_token_create(f->inv, "dev1", 3600, "cli", old), MQPKI_OK);   /* 2 */
    assert_int_equal(inventory_token_create(f->inv, "dev2", 3600, "cli", other), MQPKI_OK); /* 3 */
    assert_int_equal(inventory_token_check(f->inv, "dev1", old), MQPKI_OK);
    assert_int_equal(inventory_token_create(f->inv, "dev1", 3600, "cli", cur), MQPKI_OK); /* 4 */
    /* The older live token is refused from now on, by the check and by the consume. */
    assert_int_equal(inventory_token_check(f->inv, "dev1", old), MQPKI_ERR_AUTH);
    assert_int_equal(inventory_token_consume(f->inv, "dev1", old, NULL, NULL), MQPKI_ERR_AUTH);
    assert_int_equal(inventory_token_check(f->inv, "dev1", cur), MQPKI_OK);
    assert_int_equal(inventory_token_check(f->inv, "dev2", other), MQPKI_OK);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM tokens WHERE revoked_at IS NOT NULL"), 1);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM audit WHERE action = 'token.revoke' "
                                "AND subject = 'dev1' AND json_extract(detail, '$.reason') = "
                                "'superseded' AND json_extract(detail, '$.superseded_by') = 4 "
                                "AND json_extract(detail, '$.token_ids[0]') = 2"),
                     1);
    /* A refusal after the revocation counts on the live token only. */
    assert_int_equal(raw_int(f, "SELECT failures FROM tokens WHERE id = 2"), 0);
    assert_int_equal(raw_int(f, "SELECT failures FROM tokens WHERE id = 4"), 1);

    assert_int_equal(token_state(f, 1), INV_TOKEN_EXPIRED);
    assert_int_equal(token_state(f, 2), INV_TOKEN_REVOKED);
    assert_int_equal(token_state(f, 4), INV_TOKEN_LIVE);
    assert_int_equal(inventory_token_consume(f->inv, "dev1", cur, NULL, NULL), MQPKI_OK);
    assert_int_equal(token_state(f, 4), INV_TOKEN_USED);
    assert_int_equal(inventory_token_get(f->inv, 99, &t), MQPKI_ERR_NOT_FOUND);

    /* Burned: five refusals on a live token. */
    assert_int_equal(inventory_token_create(f->inv, "dev3", 3600, "cli", burn), MQPKI_OK); /* 5 */
    for (int i = 0; i < INV_TOKEN_MAX_FAILURES; i++)
        assert_int_equal(inventory_token_refused(f->inv, "dev3"), MQPKI_OK);
    assert_int_equal(token_state(f, 5), INV_TOKEN_BURNED);

    /* Listings: all in creation order, or one asset's. */
    assert_int_equal(inventory_token_list(f->inv, NULL, note_token, &seen), MQPKI_OK);
    assert_int_equal(seen.n, 5);
    assert_int_equal(seen.id[0], 1);
    assert_int_equal(seen.id[4], 5);
    assert_int_equal(seen.state[2], INV_TOKEN_LIVE);
    memset(&seen, 0, sizeof(seen));
    assert_int_equal(inventory_token_list(f->inv, "dev1", note_token, &seen), MQPKI_OK);
    assert_int_equal(seen.n, 3);
    assert_string_equal(seen.asset[2], "dev1");
    assert_int_equal(inventory_token_list(f->inv, "a/b", note_token, &seen), MQPKI_ERR_INVALID);
    assert_string_equal(inventory_token_state_name(INV_TOKEN_BURNED), "burned");
    assert_int_equal(inventory_token_state_parse("revoked"), INV_TOKEN_REVOKED);
    assert_int_equal(inventory_token_state_parse("nope"), -1);

    /* Revoke by id: the live one goes; anything else is left as it is, without an error. */
    assert_int_equal(inventory_token_revoke(f->inv, 3, NULL, "cli", &n), MQPKI_OK);
    assert_int_equal(n, 1);
    assert_int_equal(inventory_token_check(f->inv, "dev2", other), MQPKI_ERR_AUTH);
    assert_int_equal(token_state(f, 3), INV_TOKEN_REVOKED);
    assert_int_equal(inventory_token_revoke(f->inv, 3, NULL, "cli", &n), MQPKI_OK);
    assert_int_equal(n, 0);
    assert_int_equal(inventory_token_revoke(f->inv, 4, NULL, "cli", &n), MQPKI_OK);
    assert_int_equal(n, 0);
    assert_int_equal(token_state(f, 4), INV_TOKEN_USED);
    assert_int_equal(inventory_token_revoke(f->inv, 99, NULL, "cli", &n), MQPKI_ERR_NOT_FOUND);
    /* Revoke by asset: every live token of it. */
    assert_int_equal(inventory_token_create(f->inv, "dev2", 3600, "cli", other), MQPKI_OK);
    assert_int_equal(inventory_token_revoke(f->inv, 0, "dev2", "cli", &n), MQPKI_OK);
    assert_int_equal(n, 1);
    assert_int_equal(inventory_token_check(f->inv, "dev2", other), MQPKI_ERR_AUTH);
    assert_int_equal(inventory_token_revoke(f->inv, 0, "dev2", "cli", &n), MQPKI_OK);
    assert_int_equal(n, 0);
    assert_int_equal(inventory_token_revoke(f->inv, 0, "ghost", "cli", &n), MQPKI_ERR_NOT_FOUND);
    assert_int_equal(inventory_token_revoke(f->inv, 0, NULL, "cli", &n), MQPKI_ERR_INVALID);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM audit WHERE action = 'token.revoke' AND "
                                "json_extract(detail, '$.reason') = 'revoked'"),
                     2);
    assert_int_equal(inventory_audit_verify(f->inv, NULL, NULL), MQPKI_OK);
}

/* A consumed token records the CSR's hash and the serial; a retry finds them by the token. */
static void test_token_find_used(void **state)
{
    struct fx *f = *state;
    unsigned char csr[INV_CSR_HASH_LEN], got[INV_CSR_HASH_LEN];
    char tok[64], serial[PROTO_SERIAL_HEX_MAX + 1];
    int64_t now = mqpki_now();

    memset(csr, 0xab, sizeof(csr));
    add_asset(f->inv, "dev1", INV_KIND_DEVICE);
    add_asset(f->inv, "dev2", INV_KIND_DEVICE);
    assert_int_equal(inventory_token_create(f->inv, "dev1", 3600, "cli", tok), MQPKI_OK);
    assert_int_equal(inventory_token_find_used(f->inv, "dev1", tok, now - 600, got, serial),
                     MQPKI_ERR_AUTH); /* live, not used */
    assert_int_equal(inventory_begin(f->inv), MQPKI_OK);
    assert_int_equal(inventory_token_consume(f->inv, "dev1", tok, csr, "0A0B"), MQPKI_OK);
    assert_int_equal(cert_add(f->inv, "0A0B", "dev1", 'a', 0), MQPKI_OK);
    assert_int_equal(inventory_commit(f->inv), MQPKI_OK);
    assert_int_equal(inventory_token_find_used(f->inv, "dev1", tok, now - 600, got, serial),
                     MQPKI_OK);
    assert_memory_equal(got, csr, sizeof(csr));
    assert_string_equal(serial, "0A0B");
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM audit WHERE action = 'token.use' AND "
                                "json_extract(detail, '$.serial') = '0A0B'"),
                     1);
    assert_int_equal(inventory_token_find_used(f->inv, "dev1", "wrong", now - 600, got, serial),
                     MQPKI_ERR_AUTH);
    assert_int_equal(inventory_token_find_used(f->inv, "dev2", tok, now - 600, got, serial),
                     MQPKI_ERR_AUTH);
    assert_int_equal(inventory_token_find_used(f->inv, "dev1", tok, now + 10, got, serial),
                     MQPKI_ERR_AUTH); /* used before `since` */
    /* A token burned or consumed without a record of its use is no retry's. */
    raw_sql(f, "UPDATE tokens SET csr_sha256 = NULL");
    assert_int_equal(inventory_token_find_used(f->inv, "dev1", tok, now - 600, got, serial),
                     MQPKI_ERR_AUTH);
}

/* A store with a known number of audit events; returns the count. */
static int64_t audit_events(struct fx *f)
{
    int64_t n = 0, bad = -1;

    add_asset(f->inv, "d1", INV_KIND_DEVICE);
    add_asset(f->inv, "d2", INV_KIND_DEVICE);
    assert_int_equal(inventory_audit_append(f->inv, "cli", "note", "d1", "{\"b\":1,\"a\":\"x\"}"),
                     MQPKI_OK);
    assert_int_equal(cert_add(f->inv, "AA", "d1", 'a', 0), MQPKI_OK);
    assert_int_equal(inventory_asset_update(f->inv, "d2", "2.0", NULL, NULL, NULL, "cli"),
                     MQPKI_OK);
    assert_int_equal(inventory_audit_append(f->inv, "cli", "note", "d2", NULL), MQPKI_OK);
    assert_int_equal(inventory_audit_verify(f->inv, &n, &bad), MQPKI_OK);
    assert_int_equal(bad, 0);
    assert_int_equal(n, 7);
    return n;
}

static void test_audit_ok(void **state)
{
    struct fx *f = *state;

    assert_int_equal(audit_events(f), 7);
    assert_int_equal(inventory_audit_append(f->inv, "cli", "note", "d1", "{bad"), MQPKI_ERR_PARSE);
    reopen(f);
    assert_int_equal(inventory_audit_verify(f->inv, NULL, NULL), MQPKI_OK);
    /* Detail is canonical JSON: sorted, compact. */
    assert_int_equal(
        raw_int(f, "SELECT COUNT(*) FROM audit WHERE detail = '{\"a\":\"x\",\"b\":1}'"), 1);
}

static void test_audit_edit(void **state)
{
    struct fx *f = *state;
    int64_t n = 0, bad = 0;

    audit_events(f);
    raw_sql(f, "UPDATE audit SET detail = '{\"kind\":\"broker\"}' WHERE seq = 3");
    mqpki_err_clear();
    assert_int_equal(inventory_audit_verify(f->inv, &n, &bad), MQPKI_ERR_TAMPERED);
    assert_int_equal(bad, 3);
    assert_int_equal(n, 2);
}

static void test_audit_delete_middle(void **state)
{
    struct fx *f = *state;
    int64_t bad = 0;

    audit_events(f);
    raw_sql(f, "DELETE FROM audit WHERE seq = 4");
    assert_int_equal(inventory_audit_verify(f->inv, NULL, &bad), MQPKI_ERR_TAMPERED);
    assert_int_equal(bad, 3);
}

static void test_audit_delete_newest(void **state)
{
    struct fx *f = *state;
    int64_t bad = 0;

    audit_events(f);
    raw_sql(f, "DELETE FROM audit WHERE seq = 7");
    reopen(f);
    assert_int_equal(inventory_audit_verify(f->inv, NULL, &bad), MQPKI_ERR_TAMPERED);
    assert_int_equal(bad, 6);
    /* Appending after tampering does not paper over it. */
    assert_int_equal(inventory_audit_append(f->inv, "cli", "note", "d1", NULL), MQPKI_OK);
    assert_int_equal(inventory_audit_verify(f->inv, NULL, &bad), MQPKI_ERR_TAMPERED);
}

/* Audit checkpoints: a software key stands in for the token's audit key. */
static int sw_sign(void *ctx, const unsigned char *tbs, size_t tbs_len, unsigned char *sig,
                   size_t *sig_len)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md != NULL && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, ctx) == 1 &&
             EVP_DigestSign(md, sig, sig_len, tbs, tbs_len) == 1;

    EVP_MD_CTX_free(md);
    return ok ? MQPKI_OK : MQPKI_ERR_CRYPTO;
}

static int64_t checkpoint(struct fx *f, EVP_PKEY *key, int want_made)
{
    struct inventory_audit_checkpoint cp;
    int made = -1;

    assert_int_equal(inventory_audit_checkpoint(f->inv, "mqpki-audit", sw_sign, key, &cp, &made),
                     MQPKI_OK);
    assert_int_equal(made, want_made);
    return cp.id;
}

static int verify_signed(struct fx *f, EVP_PKEY *pub, struct inventory_audit_report *rep)
{
    mqpki_err_clear();
    return inventory_audit_verify_signed(f->inv, pub, NULL, NULL, 0, rep);
}

/*
 * What an insider with write access to the database does: edit event `seq`, then recompute
 * every later hash and the head, so that the plain chain verifies again.
 */
static void insider_rewrite(struct fx *f, int64_t seq, const char *actor)
{
    unsigned char prev[INV_HASH_LEN] = {0}, h[INV_HASH_LEN];
    char sql[256], hex[2 * INV_HASH_LEN + 1], head[128];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL, *up = NULL;
    int64_t last = 0;

    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    snprintf(sql, sizeof(sql), "UPDATE audit SET actor = '%s' WHERE seq = %lld", actor,
             (long long)seq);
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT seq, time, actor, action, subject, detail "
                                        "FROM audit ORDER BY seq",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "UPDATE audit SET prev_hash = ?2, hash = ?3 WHERE seq = ?1",
                                        -1, &up, NULL),
                     SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        last = sqlite3_column_int64(st, 0);
        assert_int_equal(audit_hash(prev, last, sqlite3_column_int64(st, 1),
                                    (const char *)sqlite3_column_text(st, 2),
                                    (const char *)sqlite3_column_text(st, 3),
                                    (const char *)sqlite3_column_text(st, 4),
                                    (const char *)sqlite3_column_text(st, 5), h),
                         MQPKI_OK);
        sqlite3_reset(up);
        sqlite3_bind_int64(up, 1, last);
        sqlite3_bind_blob(up, 2, prev, INV_HASH_LEN, SQLITE_TRANSIENT);
        sqlite3_bind_blob(up, 3, h, INV_HASH_LEN, SQLITE_TRANSIENT);
        assert_int_equal(sqlite3_step(up), SQLITE_DONE);
        memcpy(prev, h, INV_HASH_LEN);
    }
    sqlite3_finalize(st);
    sqlite3_finalize(up);
    mqpki_hex(prev, INV_HASH_LEN, hex);
    snprintf(head, sizeof(head), "UPDATE meta SET value = '%lld %s' WHERE key = 'audit.head'",
             (long long)last, hex);
    assert_int_equal(sqlite3_exec(db, head, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void test_audit_checkpoints(void **state)
{
    struct fx *f = *state;
    struct inventory_audit_report rep;
    struct inventory_audit_checkpoint cp;
    EVP_PKEY *key = EVP_EC_gen("P-256");

    assert_non_null(key);
    /* An empty log has nothing to certify. */
    assert_int_equal(inventory_audit_checkpoint(f->inv, "mqpki-audit", sw_sign, key, &cp, NULL),
                     MQPKI_ERR_STATE);
    assert_int_equal(inventory_audit_checkpoint_latest(f->inv, &cp), MQPKI_ERR_NOT_FOUND);
    audit_events(f);
    assert_int_equal(checkpoint(f, key, 1), 1);
    /* Nothing happened since: the same checkpoint, nothing signed. */
    assert_int_equal(checkpoint(f, key, 0), 1);
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_OK);
    assert_int_equal(rep.events, 7);
    assert_int_equal(rep.checkpoints, 1);
    assert_int_equal(rep.last.id, 1);
    assert_int_equal(rep.last.seq, 7);
    assert_int_equal(rep.unanchored, 0);
    assert_int_equal(inventory_audit_append(f->inv, "cli", "note", "d1", NULL), MQPKI_OK);
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_OK);
    assert_int_equal(rep.unanchored, 1);
    assert_int_equal(checkpoint(f, key, 1), 2);
    assert_int_equal(inventory_audit_append(f->inv, "cli", "note", "d2", NULL), MQPKI_OK);
    assert_int_equal(checkpoint(f, key, 1), 3);
    reopen(f);
    assert_int_equal(inventory_audit_checkpoint_latest(f->inv, &cp), MQPKI_OK);
    assert_int_equal(cp.id, 3);
    assert_int_equal(cp.seq, 9);
    assert_string_equal(cp.key_label, "mqpki-audit");
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_OK);
    assert_int_equal(rep.checkpoints, 3);
    assert_int_equal(rep.last.seq, 9);
    /* The copy published outside the store agrees. */
    {
        const char *src = "crl/audit-checkpoint.json";
        assert_int_equal(inventory_audit_verify_signed(f->inv, key, &cp, &src, 1, &rep), MQPKI_OK);
    }
    /* Without the audit key, checkpoints cannot be taken on trust. */
    assert_int_equal(verify_signed(f, NULL, &rep), MQPKI_ERR_TAMPERED);
    EVP_PKEY_free(key);
}

/* The review's case: an event rewritten and the whole chain and head recomputed. */
static void test_audit_insider_rewrite(void **state)
{
    struct fx *f = *state;
    struct inventory_audit_report rep;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    int64_t bad = 0;

    assert_non_null(key);
    audit_events(f);
    checkpoint(f, key, 1);
    assert_int_equal(inventory_audit_append(f->inv, "cli", "note", "d1", NULL), MQPKI_OK);
    checkpoint(f, key, 1);
    insider_rewrite(f, 3, "mallory");
    reopen(f);
    /* The plain chain cannot tell. */
    assert_int_equal(inventory_audit_verify(f->inv, NULL, &bad), MQPKI_OK);
    /* The signed heads can: the first checkpoint after the edit is named. */
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_ERR_TAMPERED);
    assert_int_equal(rep.bad_checkpoint, 1);
    assert_int_equal(rep.bad_seq, 7);
    assert_non_null(strstr(mqpki_err_detail(MQPKI_ERR_TAMPERED), "checkpoint 1"));
    /* And a rewritten chain is never certified by a later checkpoint. */
    assert_int_equal(inventory_audit_append(f->inv, "cli", "note", "d1", NULL), MQPKI_OK);
    assert_int_equal(inventory_audit_checkpoint(f->inv, "mqpki-audit", sw_sign, key, NULL, NULL),
                     MQPKI_ERR_TAMPERED);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM audit_checkpoints"), 2);
    EVP_PKEY_free(key);
}

/* A rewrite after the newest checkpoint is only as good as the plain chain: said, not hidden. */
static void test_audit_unanchored(void **state)
{
    struct fx *f = *state;
    struct inventory_audit_report rep;
    EVP_PKEY *key = EVP_EC_gen("P-256");

    assert_non_null(key);
    audit_events(f);
    checkpoint(f, key, 1);
    assert_int_equal(inventory_audit_append(f->inv, "cli", "note", "d1", NULL), MQPKI_OK);
    assert_int_equal(inventory_audit_append(f->inv, "cli", "note", "d2", NULL), MQPKI_OK);
    insider_rewrite(f, 9, "mallory");
    reopen(f);
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_OK);
    assert_int_equal(rep.last.seq, 7);
    assert_int_equal(rep.unanchored, 2);
    EVP_PKEY_free(key);
}

static void test_audit_checkpoint_forged(void **state)
{
    struct fx *f = *state;
    struct inventory_audit_report rep;
    struct inventory_audit_checkpoint cp;
    EVP_PKEY *key = EVP_EC_gen("P-256"), *other = EVP_EC_gen("P-256");
    unsigned char tbs[PROTO_AUDIT_TBS_LEN];
    char sql[4096], hex[2 * PROTO_AUDIT_SIG_MAX + 1], head[2 * INV_HASH_LEN + 1];

    assert_non_null(key);
    assert_non_null(other);
    audit_events(f);
    checkpoint(f, key, 1);
    assert_int_equal(inventory_audit_append(f->inv, "cli", "note", "d1", NULL), MQPKI_OK);
    /* A checkpoint row made with another key (the insider's own), for the current head. */
    assert_int_equal(inventory_audit_checkpoint(f->inv, "mqpki-audit", sw_sign, other, &cp, NULL),
                     MQPKI_OK);
    assert_int_equal(cp.id, 2);
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_ERR_TAMPERED);
    assert_int_equal(rep.bad_checkpoint, 2);
    assert_non_null(strstr(mqpki_err_detail(MQPKI_ERR_TAMPERED), "forged"));
    /* An altered head under a genuine signature. */
    raw_sql(f, "DELETE FROM audit_checkpoints WHERE id = 2");
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_OK);
    raw_sql(f, "UPDATE audit_checkpoints SET time = time + 1 WHERE id = 1");
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_ERR_TAMPERED);
    assert_int_equal(rep.bad_checkpoint, 1);
    raw_sql(f, "UPDATE audit_checkpoints SET time = time - 1 WHERE id = 1");
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_OK);
    /* A checkpoint signed by the right key over other bytes than its row's. */
    assert_int_equal(inventory_audit_checkpoint_latest(f->inv, &cp), MQPKI_OK);
    proto_audit_tbs(3, cp.seq, cp.head, cp.time, tbs);
    cp.sig_len = sizeof(cp.signature);
    assert_int_equal(sw_sign(key, tbs, sizeof(tbs), cp.signature, &cp.sig_len), MQPKI_OK);
    mqpki_hex(cp.signature, cp.sig_len, hex);
    mqpki_hex(cp.head, INV_HASH_LEN, head);
    snprintf(sql, sizeof(sql),
             "INSERT INTO audit_checkpoints VALUES(2, %lld, X'%s', %lld, 'mqpki-audit', X'%s')",
             (long long)cp.seq, head, (long long)cp.time, hex);
    raw_sql(f, sql);
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_ERR_TAMPERED);
    assert_int_equal(rep.bad_checkpoint, 2);
    assert_non_null(strstr(mqpki_err_detail(MQPKI_ERR_TAMPERED), "forged"));
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

static void test_audit_checkpoint_removed(void **state)
{
    struct fx *f = *state;
    struct inventory_audit_report rep;
    struct inventory_audit_checkpoint newest;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    const char *src = "crl/audit-checkpoint.json";

    assert_non_null(key);
    audit_events(f);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(inventory_audit_append(f->inv, "cli", "note", "d1", NULL), MQPKI_OK);
        checkpoint(f, key, 1);
    }
    assert_int_equal(inventory_audit_checkpoint_latest(f->inv, &newest), MQPKI_OK);
    /* A checkpoint deleted in the middle leaves a hole in the signed numbers. */
    raw_sql(f, "CREATE TABLE saved AS SELECT * FROM audit_checkpoints");
    raw_sql(f, "DELETE FROM audit_checkpoints WHERE id = 2");
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_ERR_TAMPERED);
    assert_int_equal(rep.bad_checkpoint, 2);
    raw_sql(f, "DELETE FROM audit_checkpoints WHERE id = 1");
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_ERR_TAMPERED);
    assert_int_equal(rep.bad_checkpoint, 1);
    raw_sql(f, "DELETE FROM audit_checkpoints; INSERT INTO audit_checkpoints SELECT * FROM saved");
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_OK);
    /* The newest deleted: the store alone cannot tell, the copy kept outside it can. */
    raw_sql(f, "DELETE FROM audit_checkpoints WHERE id = 3");
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_OK);
    assert_int_equal(rep.last.id, 2);
    assert_int_equal(rep.unanchored, 1);
    mqpki_err_clear();
    assert_int_equal(inventory_audit_verify_signed(f->inv, key, &newest, &src, 1, &rep),
                     MQPKI_ERR_TAMPERED);
    assert_int_equal(rep.bad_checkpoint, 3);
    assert_non_null(strstr(mqpki_err_detail(MQPKI_ERR_TAMPERED), "missing from the store"));
    /* A copy that does not verify is named too. */
    newest.time++;
    raw_sql(f, "INSERT INTO audit_checkpoints SELECT * FROM saved WHERE id = 3");
    mqpki_err_clear();
    assert_int_equal(inventory_audit_verify_signed(f->inv, key, &newest, &src, 1, &rep),
                     MQPKI_ERR_TAMPERED);
    assert_non_null(strstr(mqpki_err_detail(MQPKI_ERR_TAMPERED), src));
    /* Events deleted with their head, under a checkpoint that certified them. */
    raw_sql(f, "DELETE FROM audit WHERE seq = 10");
    raw_sql(f, "UPDATE meta SET value = (SELECT seq || ' ' || lower(hex(hash)) FROM audit "
               "WHERE seq = 9) WHERE key = 'audit.head'");
    assert_int_equal(verify_signed(f, key, &rep), MQPKI_ERR_TAMPERED);
    assert_int_equal(rep.bad_checkpoint, 3);
    EVP_PKEY_free(key);
}

struct open_list {
    int n;
    int64_t numbers[8];
    int states[8];
};

static int open_cb(const struct inventory_crl *c, void *ctx)
{
    struct open_list *o = ctx;

    if (o->n < 8) {
        o->numbers[o->n] = c->number;
        o->states[o->n] = c->state;
    }
    o->n++;
    return 0;
}

static void test_crl_outbox(void **state)
{
    struct fx *f = *state;
    struct inventory_crl c, got;
    struct open_list o = {0};
    unsigned char der[] = {0x30, 0x03, 0x02, 0x01, 0x07}, *back = NULL;
    size_t len = 0;
    int64_t n = 0, count = -1;

    /* Numbers: one sequence, durable, a rolled-back reservation leaves nothing behind. */
    assert_int_equal(inventory_crl_reserve(f->inv, INV_CRL_FULL, "init", "t", &n), MQPKI_OK);
    assert_int_equal(n, 1);
    assert_int_equal(inventory_crl_reserve(f->inv, INV_CRL_DELTA, "revoke", "t", &n), MQPKI_OK);
    assert_int_equal(n, 2);
    reopen(f);
    assert_int_equal(inventory_begin(f->inv), MQPKI_OK);
    assert_int_equal(inventory_crl_reserve(f->inv, INV_CRL_DELTA, "revoke", "t", &n), MQPKI_OK);
    assert_int_equal(n, 3);
    inventory_rollback(f->inv);
    assert_int_equal(inventory_crl_reserve(f->inv, INV_CRL_DELTA, "revoke", "t", &n), MQPKI_OK);
    assert_int_equal(n, 3);
    assert_int_equal(inventory_crl_open(f->inv, open_cb, &o, &count), MQPKI_OK);
    assert_int_equal(count, 3);
    assert_int_equal(o.numbers[0], 1);
    assert_int_equal(o.states[2], INV_CRL_PENDING);
    assert_int_equal(inventory_crl_latest(f->inv, INV_CRL_FULL, &got), MQPKI_ERR_NOT_FOUND);

    /* Signing 3 as a full CRL folds 1 and 2 into it. */
    memset(&c, 0, sizeof(c));
    c.number = 3;
    c.kind = INV_CRL_FULL;
    c.base = -1;
    c.cutoff = 0;
    c.this_update = 100;
    c.next_update = 200;
    assert_int_equal(inventory_crl_signed(f->inv, &c, der, sizeof(der), "t"), MQPKI_OK);
    assert_int_equal(inventory_crl_signed(f->inv, &c, der, sizeof(der), "t"), MQPKI_ERR_STATE);
    memset(&o, 0, sizeof(o));
    assert_int_equal(inventory_crl_open(f->inv, open_cb, &o, &count), MQPKI_OK);
    assert_int_equal(count, 1);
    assert_int_equal(o.numbers[0], 3);
    assert_int_equal(o.states[0], INV_CRL_SIGNED);
    assert_int_equal(inventory_crl_get(f->inv, 1, &got), MQPKI_OK);
    assert_int_equal(got.state, INV_CRL_DONE);
    assert_int_equal(got.folded_into, 3);
    assert_int_equal(inventory_crl_latest(f->inv, INV_CRL_FULL, &got), MQPKI_OK);
    assert_int_equal(got.number, 3);
    assert_int_equal(got.kind, INV_CRL_FULL);
    assert_int_equal(inventory_crl_der(f->inv, 3, &back, &len), MQPKI_OK);
    assert_int_equal(len, sizeof(der));
    assert_memory_equal(back, der, len);
    free(back);
    assert_int_equal(inventory_crl_done(f->inv, INV_CRL_FULL, 3), MQPKI_OK);
    assert_int_equal(inventory_crl_open(f->inv, NULL, NULL, &count), MQPKI_OK);
    assert_int_equal(count, 0);

    /* Only the newest DER of a kind is kept. */
    assert_int_equal(inventory_crl_reserve(f->inv, INV_CRL_FULL, "operator", "t", &n), MQPKI_OK);
    c.number = n;
    assert_int_equal(inventory_crl_signed(f->inv, &c, der, sizeof(der), "t"), MQPKI_OK);
    assert_int_equal(inventory_crl_der(f->inv, 3, &back, &len), MQPKI_ERR_NOT_FOUND);
    assert_int_equal(inventory_crl_der(f->inv, n, &back, &len), MQPKI_OK);
    free(back);

    /* The publication lock excludes a second handle, also of the same process. */
    assert_int_equal(inventory_publish_lock(f->inv, 0), MQPKI_OK);
    {
        struct inventory *other = NULL;
        assert_int_equal(inventory_open(f->path, &other), MQPKI_OK);
        assert_int_equal(inventory_publish_lock(other, 50), MQPKI_ERR_BUSY);
        inventory_publish_unlock(f->inv);
        assert_int_equal(inventory_publish_lock(other, 0), MQPKI_OK);
        inventory_close(other);
    }
    assert_int_equal(inventory_publish_lock(f->inv, 0), MQPKI_OK);
    inventory_publish_unlock(f->inv);

    /* What brokers report. */
    assert_int_equal(inventory_broker_crl_set(f->inv, "b1", 3, -1, 1000), MQPKI_OK);
    assert_int_equal(inventory_broker_crl_set(f->inv, "b1", 4, 5, 1001), MQPKI_OK);
    assert_int_equal(inventory_broker_crl_set(f->inv, "../x", 4, 5, 1001), MQPKI_ERR_INVALID);
    assert_int_equal(inventory_audit_verify(f->inv, NULL, NULL), MQPKI_OK);
}

static void test_transactions(void **state)
{
    struct fx *f = *state;

    add_asset(f->inv, "a", INV_KIND_DEVICE);
    assert_int_equal(inventory_begin(f->inv), MQPKI_OK);
    assert_int_equal(inventory_begin(f->inv), MQPKI_ERR_STATE);
    assert_int_equal(cert_add(f->inv, "01", "a", '1', 0), MQPKI_OK);
    assert_int_equal(cert_add(f->inv, "02", "a", '2', 0), MQPKI_OK);
    /* A failed call inside the transaction leaves nothing behind but keeps the others. */
    assert_int_equal(cert_add(f->inv, "02", "a", '3', 0), MQPKI_ERR_EXISTS);
    assert_int_equal(cert_add(f->inv, "03", "a", '3', 0), MQPKI_OK);
    assert_int_equal(inventory_commit(f->inv), MQPKI_OK);
    assert_int_equal(inventory_commit(f->inv), MQPKI_ERR_STATE);
    reopen(f);
    assert_int_equal(count_certs(f->inv, "a", -1), 3);

    assert_int_equal(inventory_begin(f->inv), MQPKI_OK);
    assert_int_equal(cert_add(f->inv, "04", "a", '4', 0), MQPKI_OK);
    inventory_rollback(f->inv);
    inventory_rollback(f->inv);
    inventory_rollback(NULL);
    assert_int_equal(count_certs(f->inv, "a", -1), 3);
    assert_int_equal(cert_add(f->inv, "04", "a", '4', 0), MQPKI_OK);
    assert_int_equal(inventory_audit_verify(f->inv, NULL, NULL), MQPKI_OK);
}

static void test_meta(void **state)
{
    struct fx *f = *state;
    char buf[64], tiny[4];

    assert_int_equal(inventory_meta_get(f->inv, "ca.name", buf, sizeof(buf)), MQPKI_ERR_NOT_FOUND);
    assert_int_equal(inventory_meta_set(f->inv, "ca.name", "Plant CA"), MQPKI_OK);
    assert_int_equal(inventory_meta_set(f->inv, "ca.name", "Plant 7 CA"), MQPKI_OK);
    reopen(f);
    assert_int_equal(inventory_meta_get(f->inv, "ca.name", buf, sizeof(buf)), MQPKI_OK);
    assert_string_equal(buf, "Plant 7 CA");
    assert_int_equal(inventory_meta_get(f->inv, "ca.name", tiny, sizeof(tiny)),
                     MQPKI_ERR_TOO_LARGE);
    assert_int_equal(inventory_meta_set(f->inv, "audit.head", "1 00"), MQPKI_ERR_INVALID);
    assert_int_equal(inventory_audit_verify(f->inv, NULL, NULL), MQPKI_OK);
}

static int count_event(const struct inventory_broker_event *e, void *ctx)
{
    (*(int64_t *)ctx)++;
    assert_non_null(e->detail);
    return 0;
}

static int count_alert(const struct inventory_alert *a, void *ctx)
{
    (void)a;
    (*(int64_t *)ctx)++;
    return 0;
}

static int first_alert(const struct inventory_alert *a, void *ctx)
{
    *(int64_t *)ctx = a->id;
    return 1;
}

/* Detect: events with bounded retention, alerts with their audit event, quarantine. */
static void test_detect_tables(void **state)
{
    struct fx *f = *state;
    struct inventory_broker_event e;
    struct inventory_alert a;
    int64_t n = 0, deleted = 0, id = 0, first = 0;
    int changed = -1;

    memset(&e, 0, sizeof(e));
    snprintf(e.broker, sizeof(e.broker), "b1");
    snprintf(e.type, sizeof(e.type), "acl_denied");
    snprintf(e.asset, sizeof(e.asset), "dev1");
    e.detail = "{\"type\":\"acl_denied\"}";
    for (int i = 0; i < 300; i++) {
        e.time = 1000 + i;
        assert_int_equal(inventory_events_add(f->inv, &e, NULL), MQPKI_OK);
    }
    snprintf(e.asset, sizeof(e.asset), "../x");
    assert_int_equal(inventory_events_add(f->inv, &e, NULL), MQPKI_ERR_INVALID);
    /* Age first (time < 1100 goes), then all but the newest 150. */
    assert_int_equal(inventory_events_prune(f->inv, 150, 1100, &deleted), MQPKI_OK);
    assert_int_equal(deleted, 150);
    assert_int_equal(inventory_events_list(f->inv, "dev1", 0, 0, 0, count_event, &n), MQPKI_OK);
    assert_int_equal(n, 150);
    n = 0;
    assert_int_equal(inventory_events_list(f->inv, "dev2", 0, 0, 0, count_event, &n), MQPKI_OK);
    assert_int_equal(n, 0);

    memset(&a, 0, sizeof(a));
    a.time = 2000;
    snprintf(a.rule, sizeof(a.rule), "cloned_identity");
    snprintf(a.asset, sizeof(a.asset), "dev1");
    snprintf(a.response, sizeof(a.response), "hold");
    snprintf(a.outcome, sizeof(a.outcome), "held");
    a.evidence = "not json";
    assert_int_equal(inventory_alert_add(f->inv, &a, "detect", &id), MQPKI_ERR_INVALID);
    a.evidence = "{\"other_address\":\"::1\"}";
    assert_int_equal(inventory_alert_add(f->inv, &a, "detect", &id), MQPKI_OK);
    assert_true(id > 0);
    assert_int_equal(inventory_alert_list(f->inv, 1, first_alert, &first), MQPKI_OK);
    assert_int_equal(first, id);
    assert_int_equal(inventory_alert_ack(f->inv, id, "cli", &changed), MQPKI_OK);
    assert_int_equal(changed, 1);
    assert_int_equal(inventory_alert_ack(f->inv, id, "cli", &changed), MQPKI_OK);
    assert_int_equal(changed, 0);
    first = 0;
    assert_int_equal(inventory_alert_list(f->inv, 1, first_alert, &first), MQPKI_OK);
    assert_int_equal(first, 0);
    assert_int_equal(inventory_alert_ack(f->inv, 999, "cli", NULL), MQPKI_ERR_NOT_FOUND);
    assert_int_equal(inventory_alert_outcome(f->inv, id, "certificate 0A put on hold", "detect"),
                     MQPKI_OK);
    assert_int_equal(inventory_alert_outcome(f->inv, 999, "x", "detect"), MQPKI_ERR_NOT_FOUND);

    assert_int_equal(inventory_quarantine_add(f->inv, "dev1", "topic_scan", id, "detect", &changed),
                     MQPKI_OK);
    assert_int_equal(changed, 1);
    assert_int_equal(inventory_quarantine_add(f->inv, "dev1", "topic_scan", id, "detect", &changed),
                     MQPKI_OK);
    assert_int_equal(changed, 0);
    assert_int_equal(inventory_quarantine_remove(f->inv, "dev1", "cli", &changed), MQPKI_OK);
    assert_int_equal(changed, 1);
    assert_int_equal(inventory_quarantine_remove(f->inv, "dev1", "cli", &changed), MQPKI_OK);
    assert_int_equal(changed, 0);
    n = 0;
    assert_int_equal(inventory_audit_verify(f->inv, &n, NULL), MQPKI_OK);
    assert_true(n >= 4); /* alert, ack, quarantine, release */
}

/* Replicas receive every broker event: one with an id is stored once, and an alert with a
 * cause is raised once, whichever connection (replica) comes first. */
static void test_detect_once(void **state)
{
    struct fx *f = *state;
    struct inventory *other = NULL;
    struct inventory_broker_event e;
    struct inventory_alert a;
    int64_t id = -1, n = 0;

    assert_int_equal(inventory_open(f->path, &other), MQPKI_OK);
    memset(&e, 0, sizeof(e));
    e.time = 1000;
    snprintf(e.broker, sizeof(e.broker), "b1");
    snprintf(e.type, sizeof(e.type), "takeover");
    snprintf(e.asset, sizeof(e.asset), "dev1");
    snprintf(e.eid, sizeof(e.eid), "00ff00ff00ff00ff-7-0");
    e.detail = "{\"type\":\"takeover\"}";
    assert_int_equal(inventory_events_add(f->inv, &e, &id), MQPKI_OK);
    assert_true(id > 0);
    assert_int_equal(inventory_events_add(other, &e, &id), MQPKI_OK);
    assert_int_equal(id, 0);
    /* The same id from another broker, and events without an id, are other events. */
    snprintf(e.broker, sizeof(e.broker), "b2");
    assert_int_equal(inventory_events_add(other, &e, &id), MQPKI_OK);
    assert_true(id > 0);
    e.eid[0] = '\0';
    assert_int_equal(inventory_events_add(other, &e, &id), MQPKI_OK);
    assert_int_equal(inventory_events_add(other, &e, &id), MQPKI_OK);
    assert_true(id > 0);
    assert_int_equal(inventory_events_list(f->inv, "dev1", 0, 0, 0, count_event, &n), MQPKI_OK);
    assert_int_equal(n, 4);

    memset(&a, 0, sizeof(a));
    a.time = 2000;
    snprintf(a.rule, sizeof(a.rule), "cloned_identity");
    snprintf(a.asset, sizeof(a.asset), "dev1");
    snprintf(a.response, sizeof(a.response), "hold");
    snprintf(a.outcome, sizeof(a.outcome), "hold pending");
    snprintf(a.cause, sizeof(a.cause), "cloned_identity:dev1:b1/00ff00ff00ff00ff-7-0");
    a.evidence = "{}";
    assert_int_equal(inventory_alert_add(other, &a, "detect", &id), MQPKI_OK);
    assert_true(id > 0);
    assert_int_equal(inventory_alert_add(f->inv, &a, "detect", &id), MQPKI_OK);
    assert_int_equal(id, 0);
    n = 0;
    assert_int_equal(inventory_alert_list(f->inv, 0, count_alert, &n), MQPKI_OK);
    assert_int_equal(n, 1);
    inventory_close(other);
}

/* A scheduled job runs once per period, whichever connection (replica) asks first. */
static void test_job_due(void **state)
{
    struct fx *f = *state;
    struct inventory *other = NULL;
    int due = -1;

    assert_int_equal(inventory_open(f->path, &other), MQPKI_OK);
    assert_int_equal(inventory_job_due(f->inv, "tidy", 1000000, 86400, &due), MQPKI_OK);
    assert_int_equal(due, 1);
    /* The other connection finds it claimed, now and an hour later. */
    assert_int_equal(inventory_job_due(other, "tidy", 1000000, 86400, &due), MQPKI_OK);
    assert_int_equal(due, 0);
    assert_int_equal(inventory_job_due(other, "tidy", 1003600, 86400, &due), MQPKI_OK);
    assert_int_equal(due, 0);
    /* Another job is its own. */
    assert_int_equal(inventory_job_due(other, "sweep", 1003600, 86400, &due), MQPKI_OK);
    assert_int_equal(due, 1);
    /* A period later, the first to ask gets it, once. */
    assert_int_equal(inventory_job_due(other, "tidy", 1086400, 86400, &due), MQPKI_OK);
    assert_int_equal(due, 1);
    assert_int_equal(inventory_job_due(f->inv, "tidy", 1086401, 86400, &due), MQPKI_OK);
    assert_int_equal(due, 0);
    /* A claim from a clock far ahead does not block it for good. */
    assert_int_equal(inventory_meta_set(f->inv, "job.tidy.last_at", "9999999999"), MQPKI_OK);
    assert_int_equal(inventory_job_due(f->inv, "tidy", 1090000, 86400, &due), MQPKI_OK);
    assert_int_equal(due, 1);
    assert_int_equal(inventory_job_due(f->inv, "", 1090000, 86400, &due), MQPKI_ERR_INVALID);
    mqpki_err_clear();
    inventory_close(other);
}

/* A second store in the fixture's directory, removed by the test. */
static struct inventory *open_other(struct fx *f, const char *name, char path[160])
{
    struct inventory *inv = NULL;

    snprintf(path, 160, "%s/%s", f->dir, name);
    assert_int_equal(inventory_open(path, &inv), MQPKI_OK);
    return inv;
}

static void remove_other(struct inventory *inv, const char *path)
{
    char p[200];

    inventory_close(inv);
    unlink(path);
    snprintf(p, sizeof(p), "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", path);
    unlink(p);
}

static int copy_detail_has(const char *what)
{
    return strstr(mqpki_err_detail(MQPKI_ERR_EXISTS), what) != NULL;
}

/* store migrate's copy, and its rerun after a crash between the copy's commit and mqpki.conf. */
static void test_copy_rerun(void **state)
{
    struct fx *f = *state;
    struct inventory *to, *other;
    char to_path[160], other_path[160], tok[64];
    int already = -1;

    add_asset(f->inv, "a", INV_KIND_DEVICE);
    add_asset(f->inv, "b", INV_KIND_DEVICE);
    assert_int_equal(cert_add(f->inv, "11", "a", '1', 0), MQPKI_OK);
    assert_int_equal(cert_add(f->inv, "12", "b", '2', 0), MQPKI_OK);
    assert_int_equal(inventory_cert_revoke(f->inv, "12", 1, mqpki_now(), "t"), MQPKI_OK);
    assert_int_equal(token_create_at(f->inv, "a", DAY, mqpki_now(), "t", tok), MQPKI_OK);
    /* More rows than one comparison page, with text keys (meta) and integer keys (crls). */
    raw_sql(f, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 12000)"
               " INSERT INTO meta(key, value) SELECT 'k' || i, 'v' || i FROM n;"
               "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000)"
               " INSERT INTO crls(number, kind, state, reason, created_at)"
               " SELECT 1000 + i, 'full', 'done', 'test', 0 FROM n;");

    to = open_other(f, "copy.db", to_path);
    assert_int_equal(inventory_copy(f->inv, to, NULL, NULL, &already), MQPKI_OK);
    assert_int_equal(already, 0);
    assert_int_equal(inventory_audit_verify(to, NULL, NULL), MQPKI_OK);
    /* The rerun: the same rows are there, nothing is copied again. */
    assert_int_equal(inventory_copy(f->inv, to, NULL, NULL, &already), MQPKI_OK);
    assert_int_equal(already, 1);
    assert_int_equal(inventory_copy(f->inv, to, NULL, NULL, NULL), MQPKI_OK);

    /* A row that changed without an audit event, on a later page. */
    raw_sql(f, "UPDATE meta SET value = 'changed' WHERE key = 'k9999'");
    assert_int_equal(inventory_copy(f->inv, to, NULL, NULL, &already), MQPKI_ERR_EXISTS);
    assert_int_equal(already, 0);
    assert_true(copy_detail_has("the same audit head"));
    assert_true(copy_detail_has("whose meta rows differ"));
    raw_sql(f, "UPDATE meta SET value = 'v9999' WHERE key = 'k9999'");
    raw_sql(f, "DELETE FROM crls WHERE number = 6500");
    assert_int_equal(inventory_copy(f->inv, to, NULL, NULL, NULL), MQPKI_ERR_EXISTS);
    assert_true(copy_detail_has("whose crls rows differ"));
    raw_sql(f, "INSERT INTO crls(number, kind, state, reason, created_at)"
               " VALUES (6500, 'full', 'done', 'test', 0)");
    assert_int_equal(inventory_copy(f->inv, to, NULL, NULL, &already), MQPKI_OK);
    assert_int_equal(already, 1);

    /* The source moved on after the copy committed: the copy is stale. */
    add_asset(f->inv, "late", INV_KIND_DEVICE);
    assert_int_equal(inventory_copy(f->inv, to, NULL, NULL, &already), MQPKI_ERR_EXISTS);
    assert_int_equal(already, 0);
    assert_true(copy_detail_has("an earlier copy of this store"));
    /* ... and the copy moved on from the source: in use, left alone. */
    add_asset(to, "later", INV_KIND_DEVICE);
    add_asset(to, "latest", INV_KIND_DEVICE);
    assert_int_equal(inventory_copy(f->inv, to, NULL, NULL, NULL), MQPKI_ERR_EXISTS);
    assert_true(copy_detail_has("diverged"));
    remove_other(to, to_path);
    to = open_other(f, "copy.db", to_path);
    assert_int_equal(inventory_copy(f->inv, to, NULL, NULL, NULL), MQPKI_OK);
    add_asset(to, "later", INV_KIND_DEVICE);
    assert_int_equal(inventory_copy(f->inv, to, NULL, NULL, NULL), MQPKI_ERR_EXISTS);
    assert_true(copy_detail_has("1 audit events more"));
    remove_other(to, to_path);

    /* Another CA's store. */
    other = open_other(f, "other.db", other_path);
    add_asset(other, "x", INV_KIND_DEVICE);
    assert_int_equal(inventory_copy(f->inv, other, NULL, NULL, &already), MQPKI_ERR_EXISTS);
    assert_int_equal(already, 0);
    assert_true(copy_detail_has("another CA's store"));
    assert_null(strchr(mqpki_err_detail(MQPKI_ERR_EXISTS), '\n'));
    remove_other(other, other_path);
    assert_int_equal(inventory_audit_verify(f->inv, NULL, NULL), MQPKI_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_schema_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_assets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_asset_list_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_illegal_transitions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cert_policy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revoked_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_supersede_list_revoke, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_find_used, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_edit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_delete_middle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_delete_newest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_checkpoints, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_insider_rewrite, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_unanchored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_checkpoint_forged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_checkpoint_removed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crl_outbox, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_1_to_2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_3_to_4_operators, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transactions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_meta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detect_tables, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detect_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_copy_rerun, setup, teardown),
        cmocka_unit_test_setup_teardown(test_job_due, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
