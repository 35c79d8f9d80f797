/*
 * Unit tests for lifecycle/: revocations and their publication through the store's outbox,
 * against a real store and a software CA. Each CRL the publisher hands out is parsed back and
 * checked as a broker would: number, base, entries, reasons.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
/* Under UNIT_TESTING cmocka swaps malloc/free for its own; buffers cross into module code. */
#undef malloc
#undef calloc
#undef realloc
#undef free

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>
#include <sqlite3.h>

#include "ca.h"
#include "common.h"
#include "inventory.h"
#include "lifecycle.h"

#define MAX_SEEN 16

/* What the sink saw: the CRLs in the order they were signed and exported. */
struct seen {
    int n_signed, n_exported, fail_export;
    int64_t signed_numbers[MAX_SEEN];
    int signed_kinds[MAX_SEEN];
    unsigned char *last_der[2]; /* newest exported DER by kind */
    size_t last_len[2];
    int64_t exported[MAX_SEEN];
};

struct fx {
    char dir[64], path[128];
    EVP_PKEY *root_key, *key;
    X509 *root, *issuing;
    struct ca *ca;
    struct inventory *inv;
    struct lifecycle *lc;
    struct lifecycle_config cfg;
    struct seen seen;
    struct lifecycle_sink sink;
};

static void on_signed(void *ctx, const struct inventory_crl *c, const unsigned char *der,
                      size_t len)
{
    struct seen *s = ctx;

    (void)der;
    (void)len;
    if (s->n_signed < MAX_SEEN) {
        s->signed_numbers[s->n_signed] = c->number;
        s->signed_kinds[s->n_signed] = c->kind;
    }
    s->n_signed++;
}

static int on_export(void *ctx, const struct inventory_crl *c, const unsigned char *der, size_t len)
{
    struct seen *s = ctx;

    if (s->fail_export)
        return mqpki_fail(MQPKI_ERR_NOSPACE, "crl/: disk full (test)");
    free(s->last_der[c->kind]);
    s->last_der[c->kind] = malloc(len);
    memcpy(s->last_der[c->kind], der, len);
    s->last_len[c->kind] = len;
    if (s->n_exported < MAX_SEEN)
        s->exported[s->n_exported] = c->number;
    s->n_exported++;
    return MQPKI_OK;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    snprintf(f->dir, sizeof(f->dir), "/tmp/mqpki-test-lifecycle.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/mqpki.db", f->dir);
    f->root_key = EVP_EC_gen("P-256");
    f->key = EVP_EC_gen("P-256");
    assert_int_equal(ca_root_create(f->root_key, "lifecycle test root", 365, &f->root), MQPKI_OK);
    assert_int_equal(
        ca_issuing_create(f->root, f->root_key, f->key, "lifecycle test issuing", 365, &f->issuing),
        MQPKI_OK);
    assert_int_equal(ca_open(f->issuing, f->key, f->root, NULL, &f->ca), MQPKI_OK);
    assert_int_equal(inventory_open(f->path, &f->inv), MQPKI_OK);
    f->cfg.crl_validity = 86400;
    f->cfg.crl_full_every = 3600;
    f->cfg.crl_full_after = 0;
    f->cfg.crl_delta_max = 100;
    assert_int_equal(lifecycle_new(f->inv, &f->cfg, &f->lc), MQPKI_OK);
    f->sink.signed_crl = on_signed;
    f->sink.export_crl = on_export;
    f->sink.ctx = &f->seen;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char cmd[160];

    lifecycle_free(f->lc);
    inventory_close(f->inv);
    ca_free(f->ca);
    X509_free(f->root);
    X509_free(f->issuing);
    EVP_PKEY_free(f->root_key);
    EVP_PKEY_free(f->key);
    free(f->seen.last_der[0]);
    free(f->seen.last_der[1]);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* An asset with one certificate of serial `serial` (hex). */
static void asset_with_cert(struct fx *f, const char *asset, const char *serial)
{
    struct inventory_asset a, old;
    struct inventory_cert c;

    memset(&a, 0, sizeof(a));
    snprintf(a.id, sizeof(a.id), "%s", asset);
    a.kind = INV_KIND_DEVICE;
    if (inventory_asset_get(f->inv, asset, &old) != MQPKI_OK)
        assert_int_equal(inventory_asset_add(f->inv, &a, "test"), MQPKI_OK);
    inventory_asset_clear(&old);
    memset(&c, 0, sizeof(c));
    snprintf(c.serial, sizeof(c.serial), "%s", serial);
    snprintf(c.asset_id, sizeof(c.asset_id), "%s", asset);
    snprintf(c.profile, sizeof(c.profile), "device");
    memset(c.key_fp, 'a', PROTO_FP_HEX_LEN);
    c.key_fp[0] = serial[strlen(serial) - 1]; /* one key per certificate */
    c.key_fp[1] = serial[strlen(serial) - 2];
    c.not_before = mqpki_now() - 60;
    c.not_after = mqpki_now() + 86400;
    c.pem = "-";
    assert_int_equal(inventory_cert_add(f->inv, &c, 0, NULL, "test"), MQPKI_OK);
}

/* The newest exported CRL of kind, parsed. */
static X509_CRL *exported(struct fx *f, int kind)
{
    const unsigned char *p = f->seen.last_der[kind];

    assert_non_null(p);
    return d2i_X509_CRL(NULL, &p, (long)f->seen.last_len[kind]);
}

static int64_t crl_int_ext(X509_CRL *crl, int nid)
{
    ASN1_INTEGER *v = X509_CRL_get_ext_d2i(crl, nid, NULL, NULL);
    int64_t n = -1;

    if (v != NULL)
        ASN1_INTEGER_get_int64(&n, v);
    ASN1_INTEGER_free(v);
    return n;
}

/* The reason of serial in crl; -1 when absent, 0 when listed without a reason. */
static int reason_of(X509_CRL *crl, const char *serial)
{
    STACK_OF(X509_REVOKED) *list = X509_CRL_get_REVOKED(crl);

    for (int i = 0; i < sk_X509_REVOKED_num(list); i++) {
        X509_REVOKED *r = sk_X509_REVOKED_value(list, i);
        char hex[PROTO_SERIAL_HEX_MAX + 1];
        ASN1_ENUMERATED *e;
        int reason = 0;

        assert_int_equal(proto_serial_hex(X509_REVOKED_get0_serialNumber(r), hex), 0);
        if (strcmp(hex, serial) != 0)
            continue;
        e = X509_REVOKED_get_ext_d2i(r, NID_crl_reason, NULL, NULL);
        if (e != NULL)
            reason = (int)ASN1_ENUMERATED_get(e);
        ASN1_ENUMERATED_free(e);
        return reason;
    }
    return -1;
}

static void publish_ok(struct fx *f, struct lifecycle_publication *pub)
{
    assert_int_equal(lifecycle_publish(f->lc, f->ca, &f->sink, "test", 1000, pub), MQPKI_OK);
}

static void test_first_publication_is_full(void **state)
{
    struct fx *f = *state;
    struct lifecycle_change ch;
    struct lifecycle_publication pub;
    X509_CRL *crl;

    asset_with_cert(f, "a", "0A0B0C01");
    assert_int_equal(lifecycle_revoke(f->lc, "0a0b0c01", CA_REASON_KEY_COMPROMISE, "test", &ch),
                     MQPKI_OK);
    assert_int_equal(ch.changed, 1);
    assert_int_equal(ch.crl_number, 1);
    assert_int_equal(ch.asset_state, INV_STATE_REVOKED);
    /* Without a CA nothing pending can be signed; nothing is lost either. */
    assert_int_equal(lifecycle_publish(f->lc, NULL, &f->sink, "test", 1000, &pub), MQPKI_ERR_STATE);
    /* No full CRL yet to base a delta on: the first CRL is full. */
    publish_ok(f, &pub);
    assert_int_equal(pub.signed_count, 1);
    assert_int_equal(pub.full_number, 1);
    assert_int_equal(pub.delta_number, -1);
    assert_int_equal(f->seen.signed_kinds[0], INV_CRL_FULL);
    crl = exported(f, INV_CRL_FULL);
    assert_int_equal(crl_int_ext(crl, NID_crl_number), 1);
    assert_int_equal(reason_of(crl, "0A0B0C01"), CA_REASON_KEY_COMPROMISE);
    X509_CRL_free(crl);
    /* Published again: nothing to do, nothing signed. */
    publish_ok(f, &pub);
    assert_int_equal(pub.signed_count, 0);
}

static void test_delta_after_full_and_again(void **state)
{
    struct fx *f = *state;
    struct lifecycle_change ch;
    struct lifecycle_publication pub;
    int64_t n, open = -1;
    int covered = 0;
    X509_CRL *crl;

    asset_with_cert(f, "a", "01");
    asset_with_cert(f, "b", "02");
    assert_int_equal(lifecycle_crl_request(f->lc, INV_CRL_FULL, "init", "test", &n), MQPKI_OK);
    publish_ok(f, &pub);
    assert_int_equal(lifecycle_revoke(f->lc, "02", CA_REASON_HOLD, "test", &ch), MQPKI_OK);
    assert_int_equal(ch.asset_state, INV_STATE_SUSPENDED);
    assert_int_equal(lifecycle_crl_covers(f->lc, ch.rev_seq, &covered), MQPKI_OK);
    assert_false(covered);
    assert_int_equal(lifecycle_open_count(f->lc, &open), MQPKI_OK);
    assert_int_equal(open, 1);
    publish_ok(f, &pub);
    assert_int_equal(pub.delta_number, ch.crl_number);
    crl = exported(f, INV_CRL_DELTA);
    assert_int_equal(crl_int_ext(crl, NID_delta_crl), pub.full_number);
    assert_int_equal(reason_of(crl, "02"), CA_REASON_HOLD);
    assert_int_equal(reason_of(crl, "01"), -1);
    X509_CRL_free(crl);
    assert_int_equal(lifecycle_crl_covers(f->lc, ch.rev_seq, &covered), MQPKI_OK);
    assert_true(covered);
    /* Holding again changes nothing and reserves nothing. */
    assert_int_equal(lifecycle_revoke(f->lc, "02", CA_REASON_HOLD, "test", &ch), MQPKI_OK);
    assert_int_equal(ch.changed, 0);
    assert_int_equal(ch.already, 1);
    assert_int_equal(ch.crl_number, 0);
    /* A lifted hold: the next delta says removeFromCRL. */
    assert_int_equal(lifecycle_unhold(f->lc, "02", "test", &ch), MQPKI_OK);
    publish_ok(f, &pub);
    crl = exported(f, INV_CRL_DELTA);
    assert_int_equal(reason_of(crl, "02"), CA_REASON_REMOVE_FROM_CRL);
    X509_CRL_free(crl);
    assert_int_equal(lifecycle_unhold(f->lc, "02", "test", &ch), MQPKI_ERR_STATE);
    assert_int_equal(lifecycle_revoke(f->lc, "FF", 0, "test", &ch), MQPKI_ERR_NOT_FOUND);
}

static void test_burst_folds_into_one(void **state)
{
    struct fx *f = *state;
    struct lifecycle_change ch;
    struct lifecycle_publication pub;
    struct inventory_crl c;
    int64_t n, last = 0;
    X509_CRL *crl;
    char serial[8];

    assert_int_equal(lifecycle_crl_request(f->lc, INV_CRL_FULL, "init", "test", &n), MQPKI_OK);
    publish_ok(f, &pub);
    for (int i = 1; i <= 5; i++) {
        snprintf(serial, sizeof(serial), "1%d", i);
        asset_with_cert(f, "a", serial);
        assert_int_equal(lifecycle_revoke(f->lc, serial, CA_REASON_UNSPECIFIED, "test", &ch),
                         MQPKI_OK);
        last = ch.crl_number;
    }
    f->seen.n_signed = 0;
    publish_ok(f, &pub);
    assert_int_equal(pub.signed_count, 1);
    assert_int_equal(pub.delta_number, last);
    crl = exported(f, INV_CRL_DELTA);
    assert_int_equal(crl_int_ext(crl, NID_crl_number), last);
    assert_int_equal(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)), 5);
    X509_CRL_free(crl);
    assert_int_equal(inventory_crl_get(f->inv, last - 1, &c), MQPKI_OK);
    assert_int_equal(c.state, INV_CRL_DONE);
    assert_int_equal(c.folded_into, last);
}

static void test_large_delta_becomes_full(void **state)
{
    struct fx *f = *state;
    struct lifecycle_change ch;
    struct lifecycle_publication pub;
    int64_t n;
    char serial[8];

    f->cfg.crl_delta_max = 2;
    lifecycle_free(f->lc);
    assert_int_equal(lifecycle_new(f->inv, &f->cfg, &f->lc), MQPKI_OK);
    assert_int_equal(lifecycle_crl_request(f->lc, INV_CRL_FULL, "init", "test", &n), MQPKI_OK);
    publish_ok(f, &pub);
    for (int i = 1; i <= 3; i++) {
        snprintf(serial, sizeof(serial), "2%d", i);
        asset_with_cert(f, "a", serial);
        assert_int_equal(lifecycle_revoke(f->lc, serial, 0, "test", &ch), MQPKI_OK);
    }
    publish_ok(f, &pub);
    assert_int_equal(pub.full_number, ch.crl_number);
    assert_true(pub.delta_number < pub.full_number);
}

static void test_export_failure_resumes(void **state)
{
    struct fx *f = *state;
    struct lifecycle_change ch;
    struct lifecycle_publication pub;
    unsigned char *first = NULL;
    size_t first_len = 0;
    int64_t n, open = 0;

    assert_int_equal(lifecycle_crl_request(f->lc, INV_CRL_FULL, "init", "test", &n), MQPKI_OK);
    publish_ok(f, &pub);
    asset_with_cert(f, "a", "31");
    asset_with_cert(f, "b", "32");
    /* The disk is full: the CRL is signed, kept and fed, not exported. */
    assert_int_equal(lifecycle_revoke(f->lc, "31", 1, "test", &ch), MQPKI_OK);
    f->seen.fail_export = 1;
    f->seen.n_signed = 0;
    assert_int_equal(lifecycle_publish(f->lc, f->ca, &f->sink, "test", 1000, &pub),
                     MQPKI_ERR_NOSPACE);
    assert_string_equal(mqpki_err_detail(MQPKI_ERR_NOSPACE), "crl/: disk full (test)");
    assert_int_equal(f->seen.n_signed, 1);
    assert_int_equal(lifecycle_open_count(f->lc, &open), MQPKI_OK);
    assert_int_equal(open, 1);
    assert_int_equal(inventory_crl_der(f->inv, ch.crl_number, &first, &first_len), MQPKI_OK);
    /* A newer revocation is still signed and fed while the export keeps failing. */
    assert_int_equal(lifecycle_revoke(f->lc, "32", 1, "test", &ch), MQPKI_OK);
    assert_int_equal(lifecycle_publish(f->lc, f->ca, &f->sink, "test", 1000, &pub),
                     MQPKI_ERR_NOSPACE);
    assert_int_equal(f->seen.n_signed, 2);
    /* Space is back: only the newest goes out, the older one is done with it. */
    f->seen.fail_export = 0;
    f->seen.n_exported = 0;
    publish_ok(f, &pub);
    assert_int_equal(pub.signed_count, 0);
    assert_int_equal(f->seen.n_exported, 1);
    assert_int_equal(f->seen.exported[0], ch.crl_number);
    assert_int_equal(lifecycle_open_count(f->lc, &open), MQPKI_OK);
    assert_int_equal(open, 0);
    free(first);
}

static void test_signed_left_by_a_crash(void **state)
{
    struct fx *f = *state;
    struct lifecycle_change ch;
    struct lifecycle_publication pub;
    unsigned char *der = NULL;
    size_t len = 0;
    int64_t n;

    assert_int_equal(lifecycle_crl_request(f->lc, INV_CRL_FULL, "init", "test", &n), MQPKI_OK);
    publish_ok(f, &pub);
    asset_with_cert(f, "a", "41");
    assert_int_equal(lifecycle_revoke(f->lc, "41", 1, "test", &ch), MQPKI_OK);
    /* A publisher that died after keeping the signed CRL: signed, never exported. */
    f->seen.fail_export = 1;
    assert_int_equal(lifecycle_publish(f->lc, f->ca, &f->sink, "test", 1000, &pub),
                     MQPKI_ERR_NOSPACE);
    assert_int_equal(inventory_crl_der(f->inv, ch.crl_number, &der, &len), MQPKI_OK);
    f->seen.fail_export = 0;
    f->seen.n_signed = 0;
    publish_ok(f, &pub);
    /* The next one exports the same bytes and signs nothing under that number again. */
    assert_int_equal(f->seen.n_signed, 0);
    assert_int_equal(f->seen.last_len[INV_CRL_DELTA], len);
    assert_memory_equal(f->seen.last_der[INV_CRL_DELTA], der, len);
    free(der);
}

static void test_change_goes_first_as_delta(void **state)
{
    struct fx *f = *state;
    struct lifecycle_change ch;
    struct lifecycle_publication pub;
    int64_t n, full;
    int due = 1;

    assert_int_equal(lifecycle_crl_request(f->lc, INV_CRL_FULL, "init", "test", &n), MQPKI_OK);
    publish_ok(f, &pub);
    asset_with_cert(f, "a", "71");
    /* A full CRL is asked for (operator, schedule) and a revocation comes in meanwhile. */
    assert_int_equal(lifecycle_crl_request(f->lc, INV_CRL_FULL, "operator", "test", &full),
                     MQPKI_OK);
    assert_int_equal(lifecycle_crl_due(f->lc, mqpki_now() + 86400, &due), MQPKI_OK);
    assert_false(due); /* one is already asked for: none again */
    assert_int_equal(lifecycle_revoke(f->lc, "71", 1, "test", &ch), MQPKI_OK);
    f->seen.n_signed = 0;
    publish_ok(f, &pub);
    /* The revocation went out as a delta first, then the full CRL under the number it was
     * given when asked for (below the delta's: the delta applies to it, RFC 5280 5.2.4). */
    assert_int_equal(f->seen.n_signed, 2);
    assert_int_equal(f->seen.signed_kinds[0], INV_CRL_DELTA);
    assert_int_equal(f->seen.signed_numbers[0], ch.crl_number);
    assert_int_equal(f->seen.signed_kinds[1], INV_CRL_FULL);
    assert_int_equal(f->seen.signed_numbers[1], full);
    assert_true(full < ch.crl_number);
    assert_int_equal(pub.full_number, full);
    assert_int_equal(pub.delta_number, ch.crl_number);
}

/* mqpkid's two lanes: changes never wait for a scheduled full CRL, which another thread signs
 * from a snapshot, and nothing revoked meanwhile is missed by the pair of newest CRLs. */
static void test_full_off_the_lock(void **state)
{
    struct fx *f = *state;
    struct lifecycle_change ch1, ch2;
    struct lifecycle_publication pub;
    struct inventory_crl c;
    int64_t n, full, first;

    assert_int_equal(lifecycle_crl_request(f->lc, INV_CRL_FULL, "init", "test", &n), MQPKI_OK);
    publish_ok(f, &pub);
    first = pub.full_number;
    asset_with_cert(f, "a", "71");
    asset_with_cert(f, "b", "72");
    assert_int_equal(lifecycle_crl_schedule(f->lc, mqpki_now() + 86400, "test", &full), MQPKI_OK);
    assert_true(full > first);
    assert_int_equal(lifecycle_revoke(f->lc, "71", 1, "test", &ch1), MQPKI_OK);
    f->seen.n_signed = 0;
    assert_int_equal(lifecycle_publish_changes(f->lc, f->ca, &f->sink, "test", 1000, &pub),
                     MQPKI_OK);
    /* Only the change: a delta on the first full CRL; the scheduled one is left pending. */
    assert_int_equal(f->seen.n_signed, 1);
    assert_int_equal(f->seen.signed_kinds[0], INV_CRL_DELTA);
    assert_int_equal(pub.full_pending, full);
    assert_int_equal(inventory_crl_get(f->inv, ch1.crl_number, &c), MQPKI_OK);
    assert_int_equal(c.base, first);
    assert_int_equal(c.entries, 1);
    assert_int_equal(inventory_crl_get(f->inv, full, &c), MQPKI_OK);
    assert_int_equal(c.state, INV_CRL_PENDING);

    /* The full CRL lane: its own number, the revocation in it. */
    assert_int_equal(lifecycle_full_sign(f->lc, f->ca, &f->sink, "test", &pub), MQPKI_OK);
    assert_int_equal(pub.signed_count, 1);
    assert_int_equal(pub.full_number, full);
    /* Signed, fed and exported by the lane itself: the changes' lane never writes its files. */
    assert_int_equal(inventory_crl_get(f->inv, full, &c), MQPKI_OK);
    assert_int_equal(c.state, INV_CRL_DONE);
    assert_int_equal(c.entries, 1);
    assert_int_equal(pub.exported_count, 1);
    /* Signed already: a second signer of the number does nothing. */
    assert_int_equal(lifecycle_full_sign(f->lc, f->ca, &f->sink, "test", &pub), MQPKI_OK);
    assert_int_equal(pub.signed_count, 0);

    /* The next change is a delta on the new full CRL; the changes' lane exports both. */
    assert_int_equal(lifecycle_revoke(f->lc, "72", 1, "test", &ch2), MQPKI_OK);
    assert_int_equal(lifecycle_publish_changes(f->lc, f->ca, &f->sink, "test", 1000, &pub),
                     MQPKI_OK);
    assert_int_equal(pub.full_pending, 0);
    assert_int_equal(pub.full_number, full);
    assert_int_equal(pub.delta_number, ch2.crl_number);
    assert_int_equal(inventory_crl_get(f->inv, ch2.crl_number, &c), MQPKI_OK);
    assert_int_equal(c.base, full);
    assert_int_equal(c.entries, 1);
    assert_int_equal(inventory_crl_get(f->inv, full, &c), MQPKI_OK);
    assert_int_equal(c.state, INV_CRL_DONE);
}

/* Gives the certificates `serials` (SQL list) the key of `like`, as an insider or an old store
 * could have it: the inventory refuses such issuance today. */
static void share_key(struct fx *f, const char *like, const char *serials)
{
    sqlite3 *db = NULL;
    char sql[256];

    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    snprintf(sql, sizeof(sql),
             "UPDATE certs SET key_fp = (SELECT key_fp FROM certs WHERE serial = '%s') "
             "WHERE serial IN (%s)",
             like, serials);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void test_key_compromise_takes_the_key(void **state)
{
    struct fx *f = *state;
    struct lifecycle_change ch;
    struct inventory_cert c;
    struct inventory_asset a;

    asset_with_cert(f, "k1", "81");
    asset_with_cert(f, "k1", "82"); /* a renewal with the same key */
    asset_with_cert(f, "k2", "83"); /* another asset holding it */
    asset_with_cert(f, "k2", "84"); /* and its own, other key */
    share_key(f, "81", "'82', '83'");
    assert_int_equal(lifecycle_revoke(f->lc, "81", CA_REASON_HOLD, "test", &ch), MQPKI_OK);
    assert_int_equal(ch.key_mates, 0); /* a hold is not a compromise */
    assert_int_equal(lifecycle_revoke(f->lc, "81", CA_REASON_KEY_COMPROMISE, "test", &ch),
                     MQPKI_OK);
    assert_int_equal(ch.changed, 1);
    assert_int_equal(ch.key_mates, 2);
    assert_non_null(strstr(ch.mates, "82 (asset k1)"));
    assert_non_null(strstr(ch.mates, "83 (asset k2)"));
    for (int i = 0; i < 2; i++) {
        assert_int_equal(inventory_cert_get(f->inv, i ? "83" : "82", 0, &c), MQPKI_OK);
        assert_int_equal(c.state, INV_CERT_REVOKED);
        assert_int_equal(c.reason, CA_REASON_KEY_COMPROMISE);
    }
    assert_int_equal(inventory_cert_get(f->inv, "84", 0, &c), MQPKI_OK);
    assert_int_equal(c.state, INV_CERT_VALID);
    assert_int_equal(inventory_asset_get(f->inv, "k1", &a), MQPKI_OK);
    assert_int_equal(a.state, INV_STATE_REVOKED);
    inventory_asset_clear(&a);
    /* Again: nothing left to revoke. */
    assert_int_equal(lifecycle_revoke(f->lc, "81", CA_REASON_KEY_COMPROMISE, "test", &ch),
                     MQPKI_OK);
    assert_int_equal(ch.changed + ch.key_mates, 0);
    assert_int_equal(ch.crl_number, 0);
    /* A key compromise found after an ordinary revocation still takes the key's others. */
    asset_with_cert(f, "k3", "85");
    asset_with_cert(f, "k3", "86");
    share_key(f, "85", "'86'");
    assert_int_equal(lifecycle_revoke(f->lc, "85", CA_REASON_KEY_COMPROMISE, "test", &ch),
                     MQPKI_OK);
    assert_int_equal(ch.key_mates, 1);
    /* A final revocation for another reason learns of the compromise: the reason becomes
     * keyCompromise (same date, a new place in the sequence for the delta CRL), and the key
     * is refused from then on, on its own asset too. */
    asset_with_cert(f, "k4", "87");
    assert_int_equal(lifecycle_revoke(f->lc, "87", CA_REASON_SUPERSEDED, "test", &ch), MQPKI_OK);
    {
        struct inventory_cert before, again;
        int64_t seq = ch.rev_seq;

        assert_int_equal(inventory_cert_get(f->inv, "87", 0, &before), MQPKI_OK);
        assert_int_equal(lifecycle_revoke(f->lc, "87", CA_REASON_KEY_COMPROMISE, "test", &ch),
                         MQPKI_OK);
        assert_int_equal(ch.changed, 1);
        assert_true(ch.crl_number > 0);
        assert_true(ch.rev_seq > seq);
        assert_int_equal(inventory_cert_get(f->inv, "87", 0, &c), MQPKI_OK);
        assert_int_equal(c.reason, CA_REASON_KEY_COMPROMISE);
        assert_int_equal(c.revoked_at, before.revoked_at);
        again = before;
        snprintf(again.serial, sizeof(again.serial), "88");
        again.pem = "-";
        assert_int_equal(inventory_cert_add(f->inv, &again, 0, NULL, "test"), MQPKI_ERR_POLICY);
    }
}

/* A store from before the canonical rule: a certificate of an EC key with explicit parameters,
 * fingerprinted as encoded and revoked for key compromise. Once brought to the rule, the same
 * key sent the usual way (named curve) is refused for any asset. */
static void test_keys_canonical(void **state)
{
    struct fx *f = *state;
    unsigned char md[32], *der = NULL;
    char legacy[PROTO_FP_HEX_LEN + 1], canon[PROTO_FP_HEX_LEN + 1];
    struct inventory_cert c;
    struct lifecycle_change ch;
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"), *named;
    X509 *x = X509_new();
    BIO *b = BIO_new(BIO_s_mem());
    char *pem = NULL;
    long pem_len;
    int changed = -1, len;

    assert_non_null(key);
    assert_non_null(x);
    named = EVP_PKEY_dup(key);
    assert_int_equal(EVP_PKEY_set_utf8_string_param(key, OSSL_PKEY_PARAM_EC_ENCODING,
                                                    OSSL_PKEY_EC_ENCODING_EXPLICIT),
                     1);
    assert_true(X509_set_version(x, 2) == 1 && ASN1_INTEGER_set(X509_get_serialNumber(x), 0x91));
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    assert_int_equal(X509_set_pubkey(x, key), 1);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    assert_int_equal(PEM_write_bio_X509(b, x), 1);
    pem_len = BIO_get_mem_data(b, &pem);
    /* The legacy fingerprint: SHA-256 of the SubjectPublicKeyInfo as it is encoded. */
    assert_true((len = i2d_PUBKEY(X509_get0_pubkey(x), &der)) > 0);
    SHA256(der, (size_t)len, md);
    OPENSSL_free(der);
    mqpki_hex(md, sizeof(md), legacy);
    assert_int_equal(ca_pubkey_fingerprint(named, canon), MQPKI_OK);
    assert_string_not_equal(legacy, canon);

    asset_with_cert(f, "old", "90");
    memset(&c, 0, sizeof(c));
    snprintf(c.serial, sizeof(c.serial), "91");
    snprintf(c.asset_id, sizeof(c.asset_id), "old");
    snprintf(c.profile, sizeof(c.profile), "device");
    snprintf(c.key_fp, sizeof(c.key_fp), "%s", legacy);
    c.not_before = mqpki_now() - 60;
    c.not_after = mqpki_now() + 86400;
    c.pem = strndup(pem, (size_t)pem_len);
    assert_int_equal(inventory_cert_add(f->inv, &c, 0, NULL, "test"), MQPKI_OK);
    assert_int_equal(lifecycle_revoke(f->lc, "91", CA_REASON_KEY_COMPROMISE, "test", &ch),
                     MQPKI_OK);
    /* Before: the same key, named, passes for another asset. The check runs in a transaction
     * rolled back here, so nothing is recorded. */
    free(c.pem);
    c.pem = "-";
    snprintf(c.serial, sizeof(c.serial), "92");
    snprintf(c.asset_id, sizeof(c.asset_id), "new");
    snprintf(c.key_fp, sizeof(c.key_fp), "%s", canon);
    asset_with_cert(f, "new", "93");
    assert_int_equal(inventory_begin(f->inv), MQPKI_OK);
    assert_int_equal(inventory_cert_add(f->inv, &c, 0, NULL, "test"), MQPKI_OK);
    inventory_rollback(f->inv);

    assert_int_equal(lifecycle_keys_canonical(f->inv, &changed), MQPKI_OK);
    assert_int_equal(changed, 1);
    assert_int_equal(inventory_cert_add(f->inv, &c, 0, NULL, "test"), MQPKI_ERR_POLICY);
    /* Once only. */
    assert_int_equal(lifecycle_keys_canonical(f->inv, &changed), MQPKI_OK);
    assert_int_equal(changed, 0);
    assert_int_equal(inventory_cert_get(f->inv, "91", 0, &c), MQPKI_OK);
    assert_string_equal(c.key_fp, canon);
    BIO_free(b);
    X509_free(x);
    EVP_PKEY_free(key);
    EVP_PKEY_free(named);
}

static void test_decommission(void **state)
{
    struct fx *f = *state;
    struct lifecycle_change ch;
    struct inventory_token t;
    char tok[64];

    asset_with_cert(f, "d", "51");
    asset_with_cert(f, "d", "52");
    assert_int_equal(inventory_token_create(f->inv, "d", 3600, "test", tok), MQPKI_OK);
    assert_int_equal(lifecycle_decommission(f->lc, "d", "test", &ch), MQPKI_OK);
    assert_int_equal(ch.changed, 2);
    /* Its live token ended with it. */
    assert_int_equal(inventory_token_get(f->inv, 1, &t), MQPKI_OK);
    assert_string_equal(t.asset_id, "d");
    assert_int_equal(t.state, INV_TOKEN_REVOKED);
    assert_true(ch.crl_number > 0);
    assert_int_equal(ch.asset_state, INV_STATE_DECOMMISSIONED);
    /* Again: already there, nothing changes. */
    assert_int_equal(lifecycle_decommission(f->lc, "d", "test", &ch), MQPKI_OK);
    assert_int_equal(ch.asset_was, INV_STATE_DECOMMISSIONED);
    assert_int_equal(ch.changed, 0);
    assert_int_equal(ch.already, 2);
    assert_int_equal(ch.crl_number, 0);
    /* An asset without certificates has nothing to revoke. */
    {
        struct inventory_asset a;
        memset(&a, 0, sizeof(a));
        snprintf(a.id, sizeof(a.id), "e");
        a.kind = INV_KIND_DEVICE;
        assert_int_equal(inventory_asset_add(f->inv, &a, "test"), MQPKI_OK);
    }
    assert_int_equal(lifecycle_revoke_asset(f->lc, "e", 1, "test", &ch), MQPKI_ERR_STATE);
    assert_int_equal(lifecycle_revoke_asset(f->lc, "nosuch", 1, "test", &ch), MQPKI_ERR_NOT_FOUND);
}

/* One integer from the store, through a connection of its own. */
static int64_t raw_int(struct fx *f, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -1;

    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* Runs SQL on the store through a connection of its own (time travel for tests). */
static void raw_exec(struct fx *f, const char *sql)
{
    sqlite3 *db = NULL;

    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void add_asset(struct fx *f, const char *id, int kind)
{
    struct inventory_asset a;

    memset(&a, 0, sizeof(a));
    snprintf(a.id, sizeof(a.id), "%s", id);
    a.kind = kind;
    assert_int_equal(inventory_asset_add(f->inv, &a, "test"), MQPKI_OK);
}

/* A CSR (DER, heap) signed by key; *len its length. */
static unsigned char *csr_der(EVP_PKEY *key, size_t *len)
{
    X509_REQ *r = X509_REQ_new();
    unsigned char *der = NULL;
    int n;

    assert_non_null(r);
    assert_int_equal(X509_REQ_set_pubkey(r, key), 1);
    assert_int_equal(X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(r), "CN", MBSTRING_ASC,
                                                (const unsigned char *)"x", -1, -1, 0),
                     1);
    assert_true(X509_REQ_sign(r, key, EVP_sha256()) > 0);
    n = i2d_X509_REQ(r, &der);
    assert_true(n > 0);
    X509_REQ_free(r);
    *len = (size_t)n;
    return der;
}

/* lifecycle_issue_batched as EST calls it; the certificate's serial into serial (when not
 * NULL), the certificate freed. */
static int enroll_serial(struct fx *f, struct lifecycle_committer *cm, const char *asset,
                         const char *token, int profile, const unsigned char *csr, size_t len,
                         char serial[PROTO_SERIAL_HEX_MAX + 1])
{
    struct lifecycle_issue_req req;
    X509 *cert = NULL;
    int rc;

    memset(&req, 0, sizeof(req));
    req.asset_id = asset;
    req.token = token;
    req.profile = profile;
    req.csr = csr;
    req.csr_len = len;
    req.actor = "est:192.0.2.1";
    rc = lifecycle_issue_batched(f->ca, f->inv, cm, &req, &cert);
    assert_true(rc == MQPKI_OK ? cert != NULL : cert == NULL);
    if (serial != NULL)
        serial[0] = '\0';
    if (serial != NULL && cert != NULL)
        assert_int_equal(ca_cert_serial_hex(cert, serial), MQPKI_OK);
    X509_free(cert);
    return rc;
}

static int enroll(struct fx *f, struct lifecycle_committer *cm, const char *asset,
                  const char *token, int profile, const unsigned char *csr, size_t len)
{
    return enroll_serial(f, cm, asset, token, profile, csr, len, NULL);
}

/* lifecycle_issue (the CLI's way) gives a whole certificate, with its key object, also when
 * the batched issuance built it from the request's key as it came (EST only encodes it). */
static void test_issue_whole_certificate(void **state)
{
    struct fx *f = *state;
    struct lifecycle_issue_req req;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = NULL;
    unsigned char *csr;
    size_t len;

    csr = csr_der(key, &len);
    add_asset(f, "whole", INV_KIND_DEVICE);
    memset(&req, 0, sizeof(req));
    req.asset_id = "whole";
    req.profile = -1;
    req.csr = csr;
    req.csr_len = len;
    req.actor = "cli";
    assert_int_equal(lifecycle_issue(f->ca, f->inv, &req, &cert), MQPKI_OK);
    assert_non_null(cert);
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(cert), key), 1);
    assert_int_equal(X509_check_private_key(cert, key), 1);
    X509_free(cert);
    OPENSSL_free(csr);
    EVP_PKEY_free(key);
}

/* A re-enrollment certificate is ours by its serial and by the key it was issued for: one
 * forged under the same serial (a stolen issuing CA key) carries another key and is refused. */
static void test_auth_cert_key(void **state)
{
    struct fx *f = *state;
    struct lifecycle_issue_req req;
    EVP_PKEY *key = EVP_EC_gen("P-256"), *other = EVP_EC_gen("P-256");
    char serial[PROTO_SERIAL_HEX_MAX + 1], fp[PROTO_FP_HEX_LEN + 1];
    X509 *cert = NULL;
    unsigned char *csr;
    size_t len;

    csr = csr_der(key, &len);
    add_asset(f, "renewer", INV_KIND_DEVICE);
    memset(&req, 0, sizeof(req));
    req.asset_id = "renewer";
    req.profile = -1;
    req.csr = csr;
    req.csr_len = len;
    req.actor = "cli";
    assert_int_equal(lifecycle_issue(f->ca, f->inv, &req, &cert), MQPKI_OK);
    assert_int_equal(ca_cert_serial_hex(cert, serial), MQPKI_OK);
    assert_int_equal(ca_pubkey_fingerprint(key, fp), MQPKI_OK);
    assert_int_equal(lifecycle_check_auth_cert(f->inv, serial, "renewer", fp, 0), MQPKI_OK);
    assert_int_equal(lifecycle_check_auth_cert(f->inv, serial, "renewer", NULL, 0), MQPKI_OK);
    assert_int_equal(ca_pubkey_fingerprint(other, fp), MQPKI_OK);
    assert_int_equal(lifecycle_check_auth_cert(f->inv, serial, "renewer", fp, 0), MQPKI_ERR_AUTH);
    assert_non_null(strstr(mqpki_err_detail(MQPKI_ERR_AUTH), "another key"));
    X509_free(cert);
    OPENSSL_free(csr);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

/*
 * With a token, authentication comes before anything else: an unknown asset, a decommissioned
 * asset and a wrong token are the same refusal, counted and audited, whatever the profile or
 * the CSR; only an authenticated client learns that its profile or CSR is wrong.
 */
static void test_enroll_authenticates_first(void **state)
{
    struct fx *f = *state;
    static const unsigned char garbage[] = "not a CSR";
    struct lifecycle_committer *cm = NULL;
    struct lifecycle_change ch;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    char tok[64], gone_tok[64];
    unsigned char *csr;
    size_t len;

    csr = csr_der(key, &len);
    add_asset(f, "dev", INV_KIND_DEVICE);
    add_asset(f, "gone", INV_KIND_DEVICE);
    assert_int_equal(inventory_token_create(f->inv, "dev", 3600, "test", tok), MQPKI_OK);
    assert_int_equal(inventory_token_create(f->inv, "gone", 3600, "test", gone_tok), MQPKI_OK);
    assert_int_equal(lifecycle_decommission(f->lc, "gone", "test", &ch), MQPKI_OK);

    assert_int_equal(enroll(f, NULL, "ghost", "x", -1, garbage, sizeof(garbage)), MQPKI_ERR_AUTH);
    assert_int_equal(enroll(f, NULL, "gone", gone_tok, -1, csr, len), MQPKI_ERR_AUTH);
    assert_int_equal(enroll(f, NULL, "dev", "wrong", CA_PROFILE_BROKER, garbage, sizeof(garbage)),
                     MQPKI_ERR_AUTH);
    assert_int_equal(enroll(f, NULL, "dev", "wrong", -1, csr, len), MQPKI_ERR_AUTH);
    /* Each refusal audited, the unknown asset's too; the wrong tokens counted on dev's. */
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM audit WHERE action = 'enroll.refused' "
                                "AND actor = 'est:192.0.2.1'"),
                     4);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM audit WHERE action = 'enroll.refused' "
                                "AND subject = 'ghost'"),
                     1);
    assert_int_equal(raw_int(f, "SELECT failures FROM tokens WHERE asset_id = 'dev'"), 2);
    {
        char sql[256]; /* the tokens themselves are never in the audit log */
        snprintf(sql, sizeof(sql),
                 "SELECT COUNT(*) FROM audit WHERE instr(detail, '%s') > 0 "
                 "OR instr(detail, '%s') > 0",
                 tok, gone_tok);
        assert_int_equal(raw_int(f, sql), 0);
    }

    /* Authenticated: now the profile and the CSR are judged, and the token stays unspent. */
    assert_int_equal(enroll(f, NULL, "dev", tok, CA_PROFILE_BROKER, csr, len), MQPKI_ERR_POLICY);
    assert_int_equal(enroll(f, NULL, "dev", tok, -1, garbage, sizeof(garbage)), MQPKI_ERR_PARSE);
    assert_int_equal(inventory_token_check(f->inv, "dev", tok), MQPKI_OK);
    assert_int_equal(enroll(f, NULL, "dev", tok, -1, csr, len), MQPKI_OK);

    /* Through the group committer (mqpkid): the same refusal, audited the same way. */
    assert_int_equal(lifecycle_committer_start(f->path, &cm), MQPKI_OK);
    assert_int_equal(enroll(f, cm, "ghost", "x", -1, garbage, sizeof(garbage)), MQPKI_ERR_AUTH);
    assert_int_equal(enroll(f, cm, "dev", "wrong", -1, csr, len), MQPKI_ERR_AUTH);
    lifecycle_committer_stop(cm);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM audit WHERE action = 'enroll.refused'"), 6);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM audit WHERE action = 'cert.issue'"), 1);
    assert_int_equal(inventory_audit_verify(f->inv, NULL, NULL), MQPKI_OK);
    OPENSSL_free(csr);
    EVP_PKEY_free(key);
}

/*
 * A lost answer: the client sends the same token and CSR again (any encoding of the same DER)
 * within LIFECYCLE_RETRY_SECONDS and gets the certificate already issued, with nothing signed
 * or recorded; another CSR, a later retry or a certificate no longer valid is a refusal.
 */
static void test_enroll_retry_lost_answer(void **state)
{
    struct fx *f = *state;
    struct lifecycle_committer *cm = NULL;
    struct lifecycle_change ch;
    EVP_PKEY *key = EVP_EC_gen("P-256"), *other_key = EVP_EC_gen("P-256");
    char tok[64], tok2[64], tok3[64], s1[PROTO_SERIAL_HEX_MAX + 1], s2[PROTO_SERIAL_HEX_MAX + 1];
    char sql[256];
    unsigned char *csr, *other, b64[1024];
    size_t len, other_len;

    csr = csr_der(key, &len);
    other = csr_der(other_key, &other_len);
    assert_true(len < 700);
    EVP_EncodeBlock(b64, csr, (int)len);
    add_asset(f, "dev", INV_KIND_DEVICE);
    assert_int_equal(inventory_token_create(f->inv, "dev", 3600, "test", tok), MQPKI_OK);
    assert_int_equal(enroll_serial(f, NULL, "dev", tok, -1, csr, len, s1), MQPKI_OK);
    /* The consume recorded what the token enrolled, in the same transaction. */
    snprintf(sql, sizeof(sql),
             "SELECT COUNT(*) FROM tokens WHERE serial = '%s' AND length(csr_sha256) = 32 "
             "AND used_at IS NOT NULL",
             s1);
    assert_int_equal(raw_int(f, sql), 1);

    assert_int_equal(enroll_serial(f, NULL, "dev", tok, -1, csr, len, s2), MQPKI_OK);
    assert_string_equal(s2, s1);
    assert_int_equal(enroll_serial(f, NULL, "dev", tok, -1, b64, strlen((char *)b64), s2),
                     MQPKI_OK);
    assert_string_equal(s2, s1);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM certs WHERE asset_id = 'dev'"), 1);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM audit WHERE action = 'cert.issue'"), 1);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM audit WHERE action = 'enroll.refused'"), 0);

    /* Any other reuse: another CSR, a wrong asset, or the same CSR too late. */
    assert_int_equal(enroll(f, NULL, "dev", tok, -1, other, other_len), MQPKI_ERR_AUTH);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM audit WHERE action = 'enroll.refused'"), 1);
    raw_exec(f, "UPDATE tokens SET used_at = used_at - 601 WHERE asset_id = 'dev'");
    assert_int_equal(enroll(f, NULL, "dev", tok, -1, csr, len), MQPKI_ERR_AUTH);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM audit WHERE action = 'cert.issue'"), 1);

    /* A certificate revoked meanwhile is not handed out again. */
    add_asset(f, "dev2", INV_KIND_DEVICE);
    assert_int_equal(inventory_token_create(f->inv, "dev2", 3600, "test", tok2), MQPKI_OK);
    assert_int_equal(enroll_serial(f, NULL, "dev2", tok2, -1, other, other_len, s1), MQPKI_OK);
    assert_int_equal(lifecycle_revoke(f->lc, s1, 1, "test", &ch), MQPKI_OK);
    assert_int_equal(enroll(f, NULL, "dev2", tok2, -1, other, other_len), MQPKI_ERR_AUTH);

    /* Through the group committer (mqpkid) the same. */
    EVP_PKEY_free(key);
    OPENSSL_free(csr);
    key = EVP_EC_gen("P-256");
    csr = csr_der(key, &len);
    add_asset(f, "dev3", INV_KIND_DEVICE);
    assert_int_equal(inventory_token_create(f->inv, "dev3", 3600, "test", tok3), MQPKI_OK);
    assert_int_equal(lifecycle_committer_start(f->path, &cm), MQPKI_OK);
    assert_int_equal(enroll_serial(f, cm, "dev3", tok3, -1, csr, len, s1), MQPKI_OK);
    assert_int_equal(enroll_serial(f, cm, "dev3", tok3, -1, csr, len, s2), MQPKI_OK);
    assert_string_equal(s2, s1);
    lifecycle_committer_stop(cm);
    assert_int_equal(raw_int(f, "SELECT COUNT(*) FROM certs WHERE asset_id = 'dev3'"), 1);
    assert_int_equal(inventory_audit_verify(f->inv, NULL, NULL), MQPKI_OK);
    OPENSSL_free(csr);
    OPENSSL_free(other);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other_key);
}

static void test_full_due(void **state)
{
    struct fx *f = *state;
    struct lifecycle_change ch;
    struct lifecycle_publication pub;
    int64_t n, now = mqpki_now();
    int due = 0;

    assert_int_equal(lifecycle_crl_due(f->lc, now, &due), MQPKI_OK);
    assert_true(due); /* none yet */
    assert_int_equal(lifecycle_crl_request(f->lc, INV_CRL_FULL, "init", "test", &n), MQPKI_OK);
    publish_ok(f, &pub);
    assert_int_equal(lifecycle_crl_due(f->lc, now, &due), MQPKI_OK);
    assert_false(due);
    assert_int_equal(lifecycle_crl_due(f->lc, now + 3600, &due), MQPKI_OK);
    assert_true(due); /* crl_full_every */
    /* crl_full_after: a delta since the full CRL makes one due after that delay. */
    f->cfg.crl_full_after = 60;
    lifecycle_free(f->lc);
    assert_int_equal(lifecycle_new(f->inv, &f->cfg, &f->lc), MQPKI_OK);
    asset_with_cert(f, "a", "61");
    assert_int_equal(lifecycle_revoke(f->lc, "61", 1, "test", &ch), MQPKI_OK);
    publish_ok(f, &pub);
    assert_int_equal(lifecycle_crl_due(f->lc, now + 30, &due), MQPKI_OK);
    assert_false(due);
    assert_int_equal(lifecycle_crl_due(f->lc, now + 61, &due), MQPKI_OK);
    assert_true(due);
}

static void count_progress(size_t done, size_t n, void *ctx)
{
    size_t *calls = ctx;

    assert_true(done >= 1 && done <= n);
    (*calls)++;
}

/* A selector's revocation: 1,000 assets in one transaction and ONE CRL publication that lists
 * every serial; an asset outside the selection keeps its certificate. */
static void test_batch_one_publication(void **state)
{
    struct fx *f = *state;
    struct lifecycle_change ch;
    struct lifecycle_publication pub;
    static char ids[1000][16];
    const char *list[1000];
    char serial[32];
    size_t calls = 0;
    int64_t first;
    X509_CRL *crl;

    for (int i = 0; i < 1000; i++) {
        struct inventory_asset a;
        struct inventory_cert c;
        snprintf(ids[i], sizeof(ids[i]), "feeder-%04d", i);
        list[i] = ids[i];
        memset(&a, 0, sizeof(a));
        snprintf(a.id, sizeof(a.id), "%s", ids[i]);
        a.kind = INV_KIND_DEVICE;
        assert_int_equal(inventory_asset_add(f->inv, &a, "test"), MQPKI_OK);
        memset(&c, 0, sizeof(c));
        snprintf(c.serial, sizeof(c.serial), "5E1EC7%04X", i);
        snprintf(c.asset_id, sizeof(c.asset_id), "%s", ids[i]);
        snprintf(c.profile, sizeof(c.profile), "device");
        snprintf(c.key_fp, sizeof(c.key_fp), "%064x", i + 1);
        c.not_before = mqpki_now() - 60;
        c.not_after = mqpki_now() + 86400;
        c.pem = "-";
        assert_int_equal(inventory_cert_add(f->inv, &c, 0, NULL, "test"), MQPKI_OK);
    }
    asset_with_cert(f, "elsewhere", "0E15E001");
    assert_int_equal(lifecycle_crl_request(f->lc, INV_CRL_FULL, "operator", "test", &first),
                     MQPKI_OK);
    publish_ok(f, &pub);
    assert_int_equal(pub.full_number, first);

    assert_int_equal(lifecycle_revoke_assets(f->lc, list, 1000, CA_REASON_CESSATION, "test",
                                             count_progress, &calls, &ch),
                     MQPKI_OK);
    assert_int_equal(ch.changed, 1000);
    assert_int_equal(ch.assets, 1000);
    assert_int_equal(calls, 1000);
    assert_int_equal(ch.crl_number, first + 1);
    f->seen.n_signed = 0;
    publish_ok(f, &pub);
    assert_int_equal(pub.signed_count, 1);
    /* 1,000 entries are over this fixture's crl_delta_max: the one CRL is a full one. */
    assert_int_equal(pub.full_number, first + 1);
    crl = exported(f, INV_CRL_FULL);
    assert_int_equal(crl_int_ext(crl, NID_crl_number), first + 1);
    assert_int_equal(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)), 1000);
    for (int i = 0; i < 1000; i++) {
        snprintf(serial, sizeof(serial), "5E1EC7%04X", i);
        assert_int_equal(reason_of(crl, serial), CA_REASON_CESSATION);
    }
    assert_int_equal(reason_of(crl, "0E15E001"), -1);
    X509_CRL_free(crl);
    /* Again: nothing left to revoke, nothing reserved. */
    assert_int_equal(lifecycle_revoke_assets(f->lc, list, 1000, CA_REASON_CESSATION, "test",
                                             NULL, NULL, &ch),
                     MQPKI_OK);
    assert_int_equal(ch.changed, 0);
    assert_int_equal(ch.already, 1000);
    assert_int_equal(ch.crl_number, 0);
}

/* unhold --asset: every held certificate of the asset released, one CRL number. */
static void test_unhold_asset(void **state)
{
    struct fx *f = *state;
    struct lifecycle_change ch;
    struct inventory_cert c;

    asset_with_cert(f, "held", "0D0D0001");
    asset_with_cert(f, "held", "0D0D0002");
    assert_int_equal(lifecycle_revoke_asset(f->lc, "held", CA_REASON_HOLD, "test", &ch), MQPKI_OK);
    assert_int_equal(ch.changed, 2);
    assert_int_equal(lifecycle_unhold_asset(f->lc, "held", "test", &ch), MQPKI_OK);
    assert_int_equal(ch.changed, 2);
    assert_true(ch.crl_number > 0);
    assert_int_equal(inventory_cert_get(f->inv, "0D0D0002", 0, &c), MQPKI_OK);
    assert_int_equal(c.state, INV_CERT_VALID);
    inventory_cert_clear(&c);
    assert_int_equal(lifecycle_unhold_asset(f->lc, "held", "test", &ch), MQPKI_ERR_STATE);
    assert_int_equal(lifecycle_unhold_asset(f->lc, "nosuch", "test", &ch), MQPKI_ERR_NOT_FOUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_first_publication_is_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delta_after_full_and_again, setup, teardown),
        cmocka_unit_test_setup_teardown(test_burst_folds_into_one, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_delta_becomes_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_failure_resumes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signed_left_by_a_crash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_change_goes_first_as_delta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_compromise_takes_the_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keys_canonical, setup, teardown),
        cmocka_unit_test_setup_teardown(test_decommission, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_due, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_one_publication, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unhold_asset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_off_the_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enroll_authenticates_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_issue_whole_certificate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_cert_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enroll_retry_lost_answer, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
