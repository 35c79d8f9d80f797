/* Unit tests of the broker plugin's core: revoked-serial set, CRL checks, revset, ACL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <jansson.h>

#include "broker.h"
#include "proto.h"

struct test_ca {
    EVP_PKEY *key;
    X509 *cert;
};

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;

    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    assert_non_null(ext);
    assert_int_equal(X509_add_ext(cert, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

static void make_ca(struct test_ca *ca, const char *cn)
{
    X509_NAME *name;

    ca->key = EVP_EC_gen("P-256");
    assert_non_null(ca->key);
    ca->cert = X509_new();
    assert_non_null(ca->cert);
    X509_set_version(ca->cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(ca->cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(ca->cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(ca->cert), 86400);
    name = X509_get_subject_name(ca->cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(ca->cert, name);
    X509_set_pubkey(ca->cert, ca->key);
    add_ext(ca->cert, ca->cert, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(ca->cert, ca->cert, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_ext(ca->cert, ca->cert, NID_subject_key_identifier, "hash");
    assert_true(X509_sign(ca->cert, ca->key, EVP_sha256()) > 0);
}

static void free_ca(struct test_ca *ca)
{
    X509_free(ca->cert);
    EVP_PKEY_free(ca->key);
}

/* A serial of 16 bytes derived from a small number (mqpki's serials are 16 bytes). */
static ASN1_INTEGER *serial16(unsigned v)
{
    unsigned char b[16];
    BIGNUM *bn;
    ASN1_INTEGER *i;

    memset(b, 0x5a, sizeof(b));
    b[12] = (unsigned char)(v >> 24);
    b[13] = (unsigned char)(v >> 16);
    b[14] = (unsigned char)(v >> 8);
    b[15] = (unsigned char)v;
    bn = BN_bin2bn(b, sizeof(b), NULL);
    i = BN_to_ASN1_INTEGER(bn, NULL);
    BN_free(bn);
    return i;
}

/* A signed CRL as DER: number, base (-1: full), serials with reason (-1: none). */
static unsigned char *make_crl(struct test_ca *ca, long number, long base, const unsigned *serials,
                               const int *reasons, size_t n, size_t *len)
{
    X509_CRL *crl = X509_CRL_new();
    ASN1_TIME *t = ASN1_TIME_new();
    ASN1_INTEGER *num = ASN1_INTEGER_new();
    unsigned char *der = NULL;
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int l;

    X509_CRL_set_version(crl, 1);
    X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca->cert));
    X509_gmtime_adj(t, 0);
    X509_CRL_set1_lastUpdate(crl, t);
    X509_gmtime_adj(t, 86400);
    X509_CRL_set1_nextUpdate(crl, t);
    for (size_t i = 0; i < n; i++) {
        X509_REVOKED *r = X509_REVOKED_new();
        ASN1_INTEGER *s = serial16(serials[i]);
        X509_gmtime_adj(t, 0);
        X509_REVOKED_set_serialNumber(r, s);
        X509_REVOKED_set_revocationDate(r, t);
        if (reasons != NULL && reasons[i] >= 0) {
            ASN1_ENUMERATED *e = ASN1_ENUMERATED_new();
            ASN1_ENUMERATED_set(e, reasons[i]);
            X509_REVOKED_add1_ext_i2d(r, NID_crl_reason, e, 0, 0);
            ASN1_ENUMERATED_free(e);
        }
        X509_CRL_add0_revoked(crl, r);
        ASN1_INTEGER_free(s);
    }
    ASN1_INTEGER_set(num, number);
    X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0);
    if (base >= 0) {
        ASN1_INTEGER_set(num, base);
        X509_CRL_add1_ext_i2d(crl, NID_delta_crl, num, 1, 0);
    }
    X509V3_set_ctx(&ctx, ca->cert, NULL, NULL, crl, 0);
    ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_authority_key_identifier, "keyid:always");
    assert_non_null(ext);
    X509_CRL_add_ext(crl, ext, -1);
    X509_EXTENSION_free(ext);
    X509_CRL_sort(crl);
    assert_true(X509_CRL_sign(crl, ca->key, EVP_sha256()) > 0);
    l = i2d_X509_CRL(crl, &der);
    assert_true(l > 0);
    *len = (size_t)l;
    X509_EXTENSION_free(NULL);
    ASN1_INTEGER_free(num);
    ASN1_TIME_free(t);
    X509_CRL_free(crl);
    return der;
}

static STACK_OF(X509) * trust(struct test_ca *ca)
{
    STACK_OF(X509) *s = sk_X509_new_null();
    X509_up_ref(ca->cert);
    sk_X509_push(s, ca->cert);
    return s;
}

static void key_of(unsigned v, unsigned char key[PROTO_SERIAL_KEY_LEN])
{
    ASN1_INTEGER *s = serial16(v);
    proto_serial_key(s, key);
    ASN1_INTEGER_free(s);
}

/*
 * Checks and orders der against r as the plugin does (broker/plugin.c apply_crl: the DER walk,
 * no X509_CRL of the entries), applying it on acceptance. Returns the verdict or -1. OpenSSL's
 * full parse (proto_crl_parse, proto_crl_verify) must come to the same verdict.
 */
static int feed(struct revset **r, STACK_OF(X509) * cas, const unsigned char *der, size_t len,
                char *why)
{
    struct proto_crl_der d;
    struct proto_crl_info info, info2;
    struct revset *next = NULL;
    X509_CRL *crl = NULL;
    EVP_PKEY *key = NULL;
    char why2[256];
    int v = -1, v2 = -1;

    why[0] = '\0';
    if (proto_crl_parse(der, len, &crl, why2, sizeof(why2)) == 0 &&
        proto_crl_verify(crl, cas, &info2, why2, sizeof(why2)) == 0)
        v2 = proto_crl_order(&info2, revset_full_number(*r), revset_delta_number(*r), why2,
                             sizeof(why2));
    X509_CRL_free(crl);
    memset(&d, 0, sizeof(d));
    if (proto_crl_der_split(der, len, &d, why, 256) != 0 ||
        proto_crl_der_check(&d, cas, &key, &info, why, 256) != 0 ||
        proto_crl_der_verify_sig(&d, key, why, 256) != 0)
        goto out;
    v = proto_crl_order(&info, revset_full_number(*r), revset_delta_number(*r), why, 256);
    if (v == PROTO_CRL_ACCEPT) {
        assert_int_equal(revset_load_der(*r, &d, key, &info, &next, why, 256), 0);
        revset_free(*r);
        *r = next;
    }
out:
    proto_crl_der_clear(&d);
    assert_int_equal(v, v2);
    return v;
}

static void test_serialset_basic(void **state)
{
    struct serialset *s = serialset_new(0);
    unsigned char k[PROTO_SERIAL_KEY_LEN], zero[PROTO_SERIAL_KEY_LEN] = {0};

    assert_non_null(s);
    for (unsigned i = 1; i <= 1000; i++) {
        key_of(i, k);
        assert_int_equal(serialset_add(s, k), 0);
        assert_int_equal(serialset_add(s, k), 0);
    }
    assert_int_equal(serialset_count(s), 1000);
    for (unsigned i = 1; i <= 2000; i++) {
        key_of(i, k);
        assert_int_equal(serialset_has(s, k), i <= 1000);
    }
    /* Removal keeps every other key reachable (backward-shift deletion). */
    for (unsigned i = 1; i <= 1000; i += 2) {
        key_of(i, k);
        serialset_remove(s, k);
    }
    for (unsigned i = 1; i <= 1000; i++) {
        key_of(i, k);
        assert_int_equal(serialset_has(s, k), i % 2 == 0);
    }
    assert_int_equal(serialset_has(s, zero), 0);
    assert_int_equal(serialset_add(s, zero), 0);
    assert_int_equal(serialset_has(s, zero), 1);
    assert_int_equal(serialset_has(NULL, zero), 0);
    serialset_free(s);
    serialset_free(NULL);
}

static void test_serialset_million(void **state)
{
    struct serialset *s = serialset_new(0);
    unsigned char k[PROTO_SERIAL_KEY_LEN];

    assert_non_null(s);
    for (uint32_t i = 1; i <= 1000000; i++) {
        memset(k, 0x33, sizeof(k));
        memcpy(k, &i, sizeof(i));
        assert_int_equal(serialset_add(s, k), 0);
    }
    assert_int_equal(serialset_count(s), 1000000);
    /* Well under the 100 MB RSS target: 2^21 slots of 16 bytes. */
    assert_true(serialset_bytes(s) <= 40u * 1024 * 1024);
    for (uint32_t i = 1; i <= 1000000; i += 997) {
        memset(k, 0x33, sizeof(k));
        memcpy(k, &i, sizeof(i));
        assert_true(serialset_has(s, k));
        k[15] ^= 1;
        assert_false(serialset_has(s, k));
    }
    serialset_free(s);
}

static void test_serial_key(void **state)
{
    unsigned char a[PROTO_SERIAL_KEY_LEN], b[PROTO_SERIAL_KEY_LEN];
    ASN1_INTEGER *small = ASN1_INTEGER_new(), *big;
    BIGNUM *bn = BN_new();

    ASN1_INTEGER_set(small, 0x1234);
    proto_serial_key(small, a);
    assert_int_equal(a[0], 2);
    assert_int_equal(a[14], 0x12);
    assert_int_equal(a[15], 0x34);
    /* A 20-byte serial goes through the digest and differs from the short one. */
    BN_set_bit(bn, 159);
    big = BN_to_ASN1_INTEGER(bn, NULL);
    proto_serial_key(big, b);
    assert_memory_not_equal(a, b, PROTO_SERIAL_KEY_LEN);
    ASN1_INTEGER_free(small);
    ASN1_INTEGER_free(big);
    BN_free(bn);
}

static void test_crl_accept_and_refuse(void **state)
{
    struct test_ca ca, other;
    STACK_OF(X509) * cas;
    struct revset *r = revset_new_empty();
    unsigned s1[] = {1, 2, 3}, s2[] = {1, 2, 3, 4};
    unsigned char *der, *der2, *der_other, k[PROTO_SERIAL_KEY_LEN], iss[PROTO_ISSUER_LEN];
    size_t len, len2, len_other;
    char why[256];

    make_ca(&ca, "Test Issuing CA");
    make_ca(&other, "Test Issuing CA"); /* same name, other key: the forger's favourite */
    cas = trust(&ca);
    proto_name_digest(X509_get_subject_name(ca.cert), iss);

    der = make_crl(&ca, 5, -1, s1, NULL, 3, &len);
    assert_int_equal(feed(&r, cas, der, len, why), PROTO_CRL_ACCEPT);
    assert_int_equal(revset_full_number(r), 5);
    key_of(2, k);
    assert_true(revset_is_revoked(r, iss, k));
    key_of(4, k);
    assert_false(revset_is_revoked(r, iss, k));
    assert_int_equal(feed(&r, cas, der, len, why), PROTO_CRL_SAME);

    /* Another CA with the same name: signature refused. */
    der_other = make_crl(&other, 9, -1, s2, NULL, 4, &len_other);
    assert_int_equal(feed(&r, cas, der_other, len_other, why), -1);
    assert_non_null(strstr(why, "unknown CA"));

    /* Truncated, garbage, trailing bytes. */
    assert_int_equal(feed(&r, cas, der, len - 1, why), -1);
    assert_non_null(strstr(why, "truncated or garbage"));
    assert_int_equal(feed(&r, cas, (const unsigned char *)"garbage!", 8, why), -1);
    {
        unsigned char *longer = malloc(len + 1);
        memcpy(longer, der, len);
        longer[len] = 0;
        assert_int_equal(feed(&r, cas, longer, len + 1, why), -1);
        assert_non_null(strstr(why, "after the DER CRL"));
        free(longer);
    }
    /* A flipped byte in the signed part breaks the signature. */
    {
        unsigned char *bad = malloc(len);
        memcpy(bad, der, len);
        bad[len / 2] ^= 0x01;
        assert_int_equal(feed(&r, cas, bad, len, why), -1);
        free(bad);
    }

    /* Newer is taken; then the older one is a rollback. */
    der2 = make_crl(&ca, 7, -1, s2, NULL, 4, &len2);
    assert_int_equal(feed(&r, cas, der2, len2, why), PROTO_CRL_ACCEPT);
    key_of(4, k);
    assert_true(revset_is_revoked(r, iss, k));
    assert_int_equal(feed(&r, cas, der, len, why), PROTO_CRL_REFUSE);
    assert_string_equal(why, "CRL 5 refused: CRL number lower than held 7 (RFC 5280 5.2.3)");
    assert_int_equal(revset_full_number(r), 7);

    OPENSSL_free(der);
    OPENSSL_free(der2);
    OPENSSL_free(der_other);
    revset_free(r);
    sk_X509_pop_free(cas, X509_free);
    free_ca(&ca);
    free_ca(&other);
}

static void test_delta_merge(void **state)
{
    struct test_ca ca;
    STACK_OF(X509) * cas;
    struct revset *r = revset_new_empty();
    unsigned full_s[] = {1, 2}, delta_s[] = {3, 2}, delta2_s[] = {5};
    int delta_reasons[] = {1, 8 /* removeFromCRL */};
    unsigned char *full, *delta, *delta2, *full2, k[PROTO_SERIAL_KEY_LEN], iss[PROTO_ISSUER_LEN];
    size_t lf, ld, ld2, lf2;
    char why[256];

    make_ca(&ca, "Delta CA");
    cas = trust(&ca);
    proto_name_digest(X509_get_subject_name(ca.cert), iss);
    delta = make_crl(&ca, 11, 10, delta_s, delta_reasons, 2, &ld);
    /* No full CRL held: a delta has nothing to extend. */
    assert_int_equal(feed(&r, cas, delta, ld, why), PROTO_CRL_REFUSE);

    full = make_crl(&ca, 10, -1, full_s, NULL, 2, &lf);
    assert_int_equal(feed(&r, cas, full, lf, why), PROTO_CRL_ACCEPT);
    assert_int_equal(feed(&r, cas, delta, ld, why), PROTO_CRL_ACCEPT);
    assert_int_equal(revset_delta_number(r), 11);
    key_of(1, k);
    assert_true(revset_is_revoked(r, iss, k));
    key_of(3, k);
    assert_true(revset_is_revoked(r, iss, k));
    key_of(2, k); /* taken off by the delta (removeFromCRL) */
    assert_false(revset_is_revoked(r, iss, k));

    /* A delta based on a newer full CRL than held is refused; an older delta too. */
    delta2 = make_crl(&ca, 13, 12, delta2_s, NULL, 1, &ld2);
    assert_int_equal(feed(&r, cas, delta2, ld2, why), PROTO_CRL_REFUSE);
    assert_non_null(strstr(why, "newer than the held full CRL"));

    /* A new full CRL 12 keeps no delta numbered below it. */
    full2 = make_crl(&ca, 12, -1, full_s, NULL, 1, &lf2);
    assert_int_equal(feed(&r, cas, full2, lf2, why), PROTO_CRL_ACCEPT);
    assert_int_equal(revset_delta_number(r), -1);
    key_of(3, k);
    assert_false(revset_is_revoked(r, iss, k));
    assert_int_equal(feed(&r, cas, delta, ld, why), PROTO_CRL_REFUSE);
    assert_int_equal(feed(&r, cas, delta2, ld2, why), PROTO_CRL_ACCEPT);
    key_of(5, k);
    assert_true(revset_is_revoked(r, iss, k));
    /* A serial of another issuer is not judged by this CRL. */
    iss[0] ^= 1;
    assert_false(revset_is_revoked(r, iss, k));

    OPENSSL_free(full);
    OPENSSL_free(full2);
    OPENSSL_free(delta);
    OPENSSL_free(delta2);
    revset_free(r);
    sk_X509_pop_free(cas, X509_free);
    free_ca(&ca);
}

/* A verified part of a CRL, as the plugin builds it from the DER. */
static struct revpart *part_of(STACK_OF(X509) * cas, const unsigned char *der, size_t len)
{
    struct proto_crl_der d;
    struct proto_crl_info info;
    struct revpart *p = NULL;
    EVP_PKEY *key = NULL;
    char why[256];

    memset(&d, 0, sizeof(d));
    assert_int_equal(proto_crl_der_split(der, len, &d, why, sizeof(why)), 0);
    assert_int_equal(proto_crl_der_check(&d, cas, &key, &info, why, sizeof(why)), 0);
    assert_int_equal(proto_crl_der_verify_sig(&d, key, why, sizeof(why)), 0);
    assert_int_equal(revpart_from_der(&d, &info, &p, why, sizeof(why)), 0);
    proto_crl_der_clear(&d);
    return p;
}

/* A delta whose base is still loading counts at once for what it lists, over the held full and
 * delta CRLs, and takes nothing off until it is applied on its base. */
static void test_delta_ahead(void **state)
{
    struct test_ca ca;
    STACK_OF(X509) * cas;
    struct revset *r = revset_new_empty(), *next = NULL;
    unsigned full_s[] = {1, 2}, delta_s[] = {3}, full2_s[] = {1, 2, 3}, ahead_s[] = {5, 1};
    unsigned later_s[] = {6};
    unsigned char *later;
    size_t ll;
    int ahead_reasons[] = {1, 8 /* removeFromCRL */};
    unsigned char *full, *delta, *full2, *ahead, k[PROTO_SERIAL_KEY_LEN], iss[PROTO_ISSUER_LEN];
    size_t lf, ld, lf2, la;
    char why[256];

    (void)state;
    make_ca(&ca, "Ahead CA");
    cas = trust(&ca);
    proto_name_digest(X509_get_subject_name(ca.cert), iss);
    full = make_crl(&ca, 10, -1, full_s, NULL, 2, &lf);
    delta = make_crl(&ca, 12, 10, delta_s, NULL, 1, &ld); /* signed while 11 was prepared */
    full2 = make_crl(&ca, 11, -1, full2_s, NULL, 3, &lf2);
    ahead = make_crl(&ca, 13, 11, ahead_s, ahead_reasons, 2, &la);
    assert_int_equal(feed(&r, cas, full, lf, why), PROTO_CRL_ACCEPT);
    assert_int_equal(feed(&r, cas, delta, ld, why), PROTO_CRL_ACCEPT);

    /* Full CRL 11 loading; delta 13 on it arrives. */
    assert_int_equal(revset_with_ahead(r, part_of(cas, ahead, la), &next), 0);
    revset_free(r);
    r = next;
    key_of(5, k);
    assert_true(revset_is_revoked(r, iss, k)); /* listed ahead: revoked at once */
    key_of(3, k);
    assert_true(revset_is_revoked(r, iss, k)); /* the held delta still counts */
    key_of(1, k);
    assert_true(revset_is_revoked(r, iss, k)); /* its removal waits for its base */
    assert_int_equal(revset_full_number(r), 10);
    assert_int_equal(revset_delta_number(r), 12);
    /* A newer delta on a still newer base: both count until their bases are in force. */
    later = make_crl(&ca, 15, 14, later_s, NULL, 1, &ll);
    assert_int_equal(revset_with_ahead(r, part_of(cas, later, ll), &next), 0);
    revset_free(r);
    r = next;
    key_of(6, k);
    assert_true(revset_is_revoked(r, iss, k));
    key_of(5, k);
    assert_true(revset_is_revoked(r, iss, k));
    /* A third base still unfetched (a notice's URL down): nothing any of them listed is lost. */
    {
        unsigned third_s[] = {7};
        size_t lt;
        unsigned char *third = make_crl(&ca, 17, 16, third_s, NULL, 1, &lt);
        assert_int_equal(revset_with_ahead(r, part_of(cas, third, lt), &next), 0);
        revset_free(r);
        r = next;
        for (unsigned s = 5; s <= 7; s++) {
            key_of(s, k);
            assert_true(revset_is_revoked(r, iss, k));
        }
        OPENSSL_free(third);
    }

    /* Full CRL 11 in force (delta 12, based on 10, still extends it), then delta 13 whole;
     * delta 15 still waits for its base 14, and counts. */
    assert_int_equal(revset_with(r, part_of(cas, full2, lf2), &next), 0);
    revset_free(r);
    r = next;
    assert_int_equal(revset_delta_number(r), 12);
    key_of(6, k);
    assert_true(revset_is_revoked(r, iss, k));
    assert_int_equal(feed(&r, cas, ahead, la, why), PROTO_CRL_ACCEPT);
    key_of(5, k);
    assert_true(revset_is_revoked(r, iss, k));
    key_of(3, k);
    assert_true(revset_is_revoked(r, iss, k));
    key_of(1, k);
    assert_false(revset_is_revoked(r, iss, k));

    OPENSSL_free(full);
    OPENSSL_free(delta);
    OPENSSL_free(full2);
    OPENSSL_free(ahead);
    OPENSSL_free(later);
    revset_free(r);
    sk_X509_pop_free(cas, X509_free);
    free_ca(&ca);
}

/* Walks revoked-list contents rev (hand-built DER) into keys; the walker's verdict. */
static int walk(const unsigned char *rev, size_t len, size_t *count)
{
    struct proto_crl_der d;
    char why[256];

    memset(&d, 0, sizeof(d));
    d.revoked = rev;
    d.revoked_len = len;
    return proto_crl_der_entries(&d, NULL, NULL, count, why, sizeof(why));
}

/* The DER walker against hostile input: truncations everywhere, wrong tags, lengths past the
 * end or absurdly large, indefinite and non-minimal lengths, non-minimal serials, malformed
 * entry extensions. None may crash or read out of bounds (the sanitizer build checks), and
 * none may be taken. */
static void test_der_walker_hostile(void **state)
{
    /* Two good entries: serial 0x05 with a UTCTime; serial 0x0100 with reasonCode 8. */
    static const unsigned char good[] = {
        0x30, 0x12, 0x02, 0x01, 0x05, 0x17, 0x0d, '2',  '6',  '1',  '1',  '3',  '0',  '0',
        '0',  '0',  '0',  '0',  '0',  'Z',  0x30, 0x21, 0x02, 0x02, 0x01, 0x00, 0x17, 0x0d,
        '2',  '6',  '1',  '1',  '3',  '0',  '0',  '0',  '0',  '0',  '0',  '0',  'Z',  0x30,
        0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x1d, 0x15, 0x04, 0x03, 0x0a, 0x01, 0x08};
    unsigned char buf[sizeof(good)];
    size_t n = 0;
    struct test_ca ca;
    STACK_OF(X509) * cas;
    unsigned serials[] = {1, 2, 3};
    unsigned char *der;
    size_t len;
    struct proto_crl_der d;
    char why[256];

    (void)state;
    assert_int_equal(walk(good, sizeof(good), &n), 0);
    assert_int_equal(n, 2);
    /* Every truncation of the list is refused, except at an entry boundary. */
    for (size_t cut = 1; cut < sizeof(good); cut++)
        assert_int_equal(walk(good, cut, &n), cut == 20 ? 0 : -1);
    /* One byte changed anywhere in the headers: the walk refuses or reads a well-formed list;
     * bytes inside the times may change freely. */
    for (size_t i = 0; i < sizeof(good); i++) {
        for (unsigned v = 0; v < 256; v += 17) {
            memcpy(buf, good, sizeof(good));
            buf[i] = (unsigned char)v;
            (void)walk(buf, sizeof(good), &n);
        }
    }
    /* Wrong tags: the entry, its serial, its date. */
    memcpy(buf, good, sizeof(good));
    buf[0] = 0x31;
    assert_int_equal(walk(buf, sizeof(good), &n), -1);
    memcpy(buf, good, sizeof(good));
    buf[2] = 0x04;
    assert_int_equal(walk(buf, sizeof(good), &n), -1);
    memcpy(buf, good, sizeof(good));
    buf[5] = 0x04;
    assert_int_equal(walk(buf, sizeof(good), &n), -1);
    /* Lengths: past the end, huge (4 bytes), 5 length bytes, indefinite, non-minimal. */
    {
        static const unsigned char past[] = {0x30, 0x7f, 0x02, 0x01, 0x05};
        static const unsigned char huge[] = {0x30, 0x84, 0xff, 0xff, 0xff, 0xf0, 0x02, 0x01};
        static const unsigned char five[] = {0x30, 0x85, 0x00, 0x00, 0x00, 0x00, 0x10, 0x02};
        static const unsigned char indef[] = {0x30, 0x80, 0x02, 0x01, 0x05, 0x00, 0x00};
        static const unsigned char nonmin[] = {0x30, 0x81, 0x12, 0x02, 0x01, 0x05, 0x17,
                                               0x0d, '2',  '6',  '1',  '1',  '3',  '0',
                                               '0',  '0',  '0',  '0',  '0',  '0',  'Z'};
        static const unsigned char hightag[] = {0x3f, 0x01, 0x01, 0x00};
        assert_int_equal(walk(past, sizeof(past), &n), -1);
        assert_int_equal(walk(huge, sizeof(huge), &n), -1);
        assert_int_equal(walk(five, sizeof(five), &n), -1);
        assert_int_equal(walk(indef, sizeof(indef), &n), -1);
        assert_int_equal(walk(nonmin, sizeof(nonmin), &n), -1);
        assert_int_equal(walk(hightag, sizeof(hightag), &n), -1);
    }
    /* Serials: empty, non-minimal positive, non-minimal negative. */
    {
        unsigned char key[PROTO_SERIAL_KEY_LEN];
        static const unsigned char empty[] = {0x02, 0x00};
        static const unsigned char pad[] = {0x02, 0x02, 0x00, 0x05};
        static const unsigned char negpad[] = {0x02, 0x02, 0xff, 0x85};
        static const unsigned char trailing[] = {0x02, 0x01, 0x05, 0x00};
        assert_int_equal(proto_serial_key_der(empty, sizeof(empty), key), -1);
        assert_int_equal(proto_serial_key_der(pad, sizeof(pad), key), -1);
        assert_int_equal(proto_serial_key_der(negpad, sizeof(negpad), key), -1);
        assert_int_equal(proto_serial_key_der(trailing, sizeof(trailing), key), -1);
    }
    /* Entry extensions: reasonCode not an ENUMERATED, a bad critical flag, junk after. */
    memcpy(buf, good, sizeof(good));
    buf[sizeof(good) - 3] = 0x02; /* ENUMERATED -> INTEGER */
    assert_int_equal(walk(buf, sizeof(good), &n), -1);
    memcpy(buf, good, sizeof(good));
    buf[sizeof(good) - 5] = 0x05; /* OCTET STRING -> NULL */
    assert_int_equal(walk(buf, sizeof(good), &n), -1);

    /* Whole CRLs: truncated at every length, never accepted; a CRL whose TBS names another
     * signature algorithm than the outer one is refused. */
    make_ca(&ca, "Walker CA");
    cas = trust(&ca);
    der = make_crl(&ca, 3, -1, serials, NULL, 3, &len);
    for (size_t cut = 0; cut < len; cut++) {
        if (proto_crl_der_split(der, cut, &d, why, sizeof(why)) == 0) {
            EVP_PKEY *key = NULL;
            struct proto_crl_info info;
            assert_false(proto_crl_der_check(&d, cas, &key, &info, why, sizeof(why)) == 0 &&
                         proto_crl_der_verify_sig(&d, key, why, sizeof(why)) == 0);
            proto_crl_der_clear(&d);
        }
    }
    assert_int_equal(proto_crl_der_split(der, len, &d, why, sizeof(why)), 0);
    assert_non_null(d.revoked);
    assert_int_equal(proto_crl_der_entries(&d, NULL, NULL, &n, why, sizeof(why)), 0);
    assert_int_equal(n, 3);
    proto_crl_der_clear(&d);
    {
        /* The inner AlgorithmIdentifier is the second element of the TBS: OID last byte. */
        unsigned char *bad = malloc(len);
        const unsigned char *oid = NULL;
        static const unsigned char sha256_ecdsa[] = {0x2a, 0x86, 0x48, 0xce,
                                                     0x3d, 0x04, 0x03, 0x02};
        memcpy(bad, der, len);
        for (size_t i = 0; i + sizeof(sha256_ecdsa) <= len; i++)
            if (memcmp(bad + i, sha256_ecdsa, sizeof(sha256_ecdsa)) == 0) {
                oid = bad + i;
                break;
            }
        assert_non_null(oid);
        bad[(size_t)(oid - bad) + sizeof(sha256_ecdsa) - 1] = 0x03; /* ecdsa-with-SHA384 */
        assert_int_equal(proto_crl_der_split(bad, len, &d, why, sizeof(why)), -1);
        assert_non_null(strstr(why, "differs inside and outside"));
        free(bad);
    }
    OPENSSL_free(der);
    sk_X509_pop_free(cas, X509_free);
    free_ca(&ca);
}

/* The walker's serial keys are the keys a connect computes from the certificate's serial. */
static void test_serial_key_der(void **state)
{
    static const long values[] = {0, 1, 5, 127, 128, 255, 256, 0x7fffffff, -1, -128, -129};
    unsigned char a[PROTO_SERIAL_KEY_LEN], b[PROTO_SERIAL_KEY_LEN], *der = NULL;
    BIGNUM *bn = BN_new();

    (void)state;
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        ASN1_INTEGER *v = ASN1_INTEGER_new();
        int l;
        ASN1_INTEGER_set(v, values[i]);
        proto_serial_key(v, a);
        der = NULL;
        l = i2d_ASN1_INTEGER(v, &der);
        assert_true(l > 0);
        assert_int_equal(proto_serial_key_der(der, (size_t)l, b), 0);
        assert_memory_equal(a, b, sizeof(a));
        OPENSSL_free(der);
        ASN1_INTEGER_free(v);
    }
    /* 15, 16 (top bit set: a 0x00 pad), 17 and 20 bytes. */
    for (int bits = 119; bits <= 159; bits += 8) {
        ASN1_INTEGER *v;
        int l;
        BN_zero(bn);
        BN_set_bit(bn, bits);
        BN_set_bit(bn, 3);
        v = BN_to_ASN1_INTEGER(bn, NULL);
        proto_serial_key(v, a);
        der = NULL;
        l = i2d_ASN1_INTEGER(v, &der);
        assert_int_equal(proto_serial_key_der(der, (size_t)l, b), 0);
        assert_memory_equal(a, b, sizeof(a));
        OPENSSL_free(der);
        ASN1_INTEGER_free(v);
    }
    BN_free(bn);
}

/* The worker: a good CRL comes back as a part and is kept on disk; a forged one comes back
 * refused and is not kept. */
static void test_crlload(void **state)
{
    struct test_ca ca, other;
    STACK_OF(X509) * cas;
    struct crlload *l = NULL;
    struct revpart *part = NULL;
    struct proto_crl_info info;
    struct revset *r = revset_new_empty(), *next = NULL;
    unsigned serials[] = {1, 2, 3, 4};
    unsigned char *der, *forged, k[PROTO_SERIAL_KEY_LEN];
    size_t len, flen;
    char why[256], dir[] = "/tmp/mqpki-crlload.XXXXXX", path[512];
    int got = 0;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/full.der", dir);
    make_ca(&ca, "Loader CA");
    make_ca(&other, "Loader CA");
    cas = trust(&ca);
    der = make_crl(&ca, 8, -1, serials, NULL, 4, &len);
    forged = make_crl(&other, 9, -1, serials, NULL, 4, &flen);
    assert_int_equal(crlload_start(cas, &l), 0);
    assert_int_equal(crlload_pending(l), -1);
    assert_int_equal(crlload_submit(l, der, len, 8, path), 0);
    for (int i = 0; i < 500 && !(got = crlload_take(l, &part, &info, why, sizeof(why))); i++)
        usleep(10000);
    assert_true(got);
    assert_non_null(part);
    assert_int_equal(info.number, 8);
    assert_int_equal(revpart_number(part), 8);
    assert_int_equal(revset_with(r, part, &next), 0);
    key_of(3, k);
    assert_true(revset_is_revoked(next, info.issuer, k));
    assert_int_equal(access(path, F_OK), 0);
    unlink(path);

    assert_int_equal(crlload_submit(l, forged, flen, 9, path), 0);
    got = 0;
    for (int i = 0; i < 500 && !(got = crlload_take(l, &part, &info, why, sizeof(why))); i++)
        usleep(10000);
    assert_true(got);
    assert_null(part);
    assert_non_null(strstr(why, "unknown CA"));
    assert_int_not_equal(access(path, F_OK), 0);
    /* Tables of sets nobody holds any more are freed by the worker (or by crlload_stop). */
    revset_set_reaper(crlload_reap, l);
    revset_free(next);
    next = NULL;
    crlload_reap(NULL, l);
    revset_set_reaper(NULL, NULL);
    crlload_stop(l);
    crlload_stop(NULL);
    rmdir(dir);
    revset_free(next);
    revset_free(r);
    OPENSSL_free(der);
    OPENSSL_free(forged);
    sk_X509_pop_free(cas, X509_free);
    free_ca(&ca);
    free_ca(&other);
}

static void test_topic_covers(void **state)
{
    assert_true(acl_topic_covers("fleet/+/status", "fleet/dev1/status"));
    assert_false(acl_topic_covers("fleet/+/status", "fleet/dev1/status/x"));
    assert_true(acl_topic_covers("fleet/#", "fleet"));
    assert_true(acl_topic_covers("fleet/#", "fleet/a/b"));
    assert_true(acl_topic_covers("fleet/#", "fleet/+/b"));
    assert_false(acl_topic_covers("fleet/+", "fleet/#"));
    assert_false(acl_topic_covers("fleet/a", "fleet/+"));
    assert_false(acl_topic_covers("#", "$SYS/broker"));
    assert_true(acl_topic_covers("a/b", "a/b"));
    assert_false(acl_topic_covers("a/b", "a/bc"));
}

static void test_acl_rules(void **state)
{
    char path[] = "/tmp/test_broker_acl.XXXXXX", why[256];
    struct acl *a = NULL;
    FILE *f;
    int fd = mkstemp(path);

    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    fputs("# comment\n* mqpki/v1/crl/# read\ndev1 plant/%u/+ readwrite  # trailing\n"
          "* mqpki/v1/evil write\n",
          f);
    fclose(f);
    assert_int_equal(acl_load(path, &a, why, sizeof(why)), 0);

    /* The service identity: the control plane only. */
    assert_true(acl_allowed(a, "mqpkid", 1, ACL_WRITE, "mqpki/v1/crl/full"));
    assert_true(acl_allowed(a, "mqpkid", 1, ACL_SUBSCRIBE, "mqpki/v1/events/+"));
    assert_false(acl_allowed(a, "mqpkid", 1, ACL_WRITE, "fleet/dev1/x"));
    /* Devices: their own fleet subtree and command topic. */
    assert_true(acl_allowed(a, "dev1", 0, ACL_WRITE, "fleet/dev1/temp"));
    assert_true(acl_allowed(a, "dev1", 0, ACL_SUBSCRIBE, "fleet/dev1/#"));
    assert_false(acl_allowed(a, "dev1", 0, ACL_SUBSCRIBE, "fleet/#"));
    assert_false(acl_allowed(a, "dev1", 0, ACL_SUBSCRIBE, "fleet/+/temp"));
    assert_false(acl_allowed(a, "dev1", 0, ACL_WRITE, "fleet/dev10/temp"));
    assert_true(acl_allowed(a, "dev1", 0, ACL_SUBSCRIBE, "mqpki/v1/assets/dev1/cmd"));
    assert_false(acl_allowed(a, "dev1", 0, ACL_SUBSCRIBE, "mqpki/v1/assets/dev2/cmd"));
    /* Never a publish under mqpki/v1/, whatever the file grants. */
    assert_false(acl_allowed(a, "dev1", 0, ACL_WRITE, "mqpki/v1/crl/full"));
    assert_false(acl_allowed(a, "dev1", 0, ACL_WRITE, "mqpki/v1/evil"));
    /* The file's grants. */
    assert_true(acl_allowed(a, "dev2", 0, ACL_SUBSCRIBE, "mqpki/v1/crl/full"));
    assert_true(acl_allowed(a, "dev2", 0, ACL_SUBSCRIBE, "mqpki/v1/crl/#"));
    assert_false(acl_allowed(a, "dev2", 0, ACL_SUBSCRIBE, "mqpki/v1/#"));
    assert_true(acl_allowed(a, "dev1", 0, ACL_WRITE, "plant/dev1/x"));
    assert_false(acl_allowed(a, "dev2", 0, ACL_WRITE, "plant/dev2/x"));
    assert_true(acl_allowed(a, "dev2", 0, ACL_UNSUBSCRIBE, "anything"));
    acl_free(a);

    /* Malformed files are refused with the line number. */
    f = fopen(path, "w");
    fputs("dev1 a/b sometimes\n", f);
    fclose(f);
    assert_int_equal(acl_load(path, &a, why, sizeof(why)), -1);
    assert_non_null(strstr(why, ":1: access"));
    unlink(path);
    assert_int_equal(acl_load(NULL, &a, why, sizeof(why)), 0);
    assert_false(acl_allowed(a, "dev1", 0, ACL_WRITE, "other"));
    acl_free(a);
}

static void test_load_cas(void **state)
{
    char path[] = "/tmp/test_broker_ca.XXXXXX", why[256];
    struct test_ca root;
    STACK_OF(X509) *cas = NULL;
    FILE *f;
    int fd = mkstemp(path);

    make_ca(&root, "Root");
    f = fdopen(fd, "w");
    PEM_write_X509(f, root.cert);
    fclose(f);
    assert_int_equal(proto_crl_load_cas(path, &cas, why, sizeof(why)), 0);
    assert_int_equal(sk_X509_num(cas), 1);
    sk_X509_pop_free(cas, X509_free);
    f = fopen(path, "w");
    fputs("not a certificate\n", f);
    fclose(f);
    assert_int_equal(proto_crl_load_cas(path, &cas, why, sizeof(why)), -1);
    assert_null(cas);
    unlink(path);
    free_ca(&root);
}

/* A certificate for cn under issuer (a CA when ca), with SKI and AKI. */
static X509 *make_issued(struct test_ca *issuer, EVP_PKEY *key, const char *cn, int ca, long serial)
{
    X509 *x = X509_new();
    X509_NAME *name;

    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(issuer->cert));
    X509_set_pubkey(x, key);
    add_ext(x, issuer->cert, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    if (ca)
        add_ext(x, issuer->cert, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_ext(x, issuer->cert, NID_subject_key_identifier, "hash");
    add_ext(x, issuer->cert, NID_authority_key_identifier, "keyid:always");
    assert_true(X509_sign(x, issuer->key, EVP_sha256()) > 0);
    return x;
}

static char *pem_of(X509 *const *certs, int n, size_t *len)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data, *out;
    long l;

    for (int i = 0; i < n; i++)
        assert_int_equal(PEM_write_bio_X509(b, certs[i]), 1);
    l = BIO_get_mem_data(b, &data);
    out = malloc((size_t)l);
    memcpy(out, data, (size_t)l);
    *len = (size_t)l;
    BIO_free(b);
    return out;
}

/* The issuing CA list of the feed (a rollover): only what a root held certified is taken. */
static void test_issuers_list(void **state)
{
    struct test_ca root, other, gen1, gen2;
    STACK_OF(X509) *roots = sk_X509_new_null(), *cas = NULL;
    X509 *foreign, *bundle[4];
    char why[256], *pem;
    size_t len;

    (void)state;
    make_ca(&root, "Root");
    make_ca(&other, "Other root");
    gen1.key = EVP_EC_gen("P-256");
    gen2.key = EVP_EC_gen("P-256");
    gen1.cert = make_issued(&root, gen1.key, "Issuing", 1, 2);
    gen2.cert = make_issued(&root, gen2.key, "Issuing", 1, 3);
    foreign = make_issued(&other, gen2.key, "Issuing", 1, 4);
    assert_true(sk_X509_push(roots, root.cert));

    bundle[0] = gen2.cert;
    bundle[1] = foreign;
    bundle[2] = gen1.cert;
    bundle[3] = root.cert;
    pem = pem_of(bundle, 4, &len);
    assert_int_equal(proto_issuers_verify(pem, len, roots, &cas, why, sizeof(why)), 0);
    assert_int_equal(sk_X509_num(cas), 2); /* gen2, gen1; not the foreign one, not the root */
    assert_int_equal(X509_cmp(sk_X509_value(cas, 0), gen2.cert), 0);
    assert_int_equal(X509_cmp(sk_X509_value(cas, 1), gen1.cert), 0);
    sk_X509_pop_free(cas, X509_free);
    free(pem);

    /* Generation 1 retired: its certificates are no longer trusted. */
    pem = pem_of(bundle, 1, &len);
    assert_int_equal(proto_issuers_verify(pem, len, roots, &cas, why, sizeof(why)), 0);
    assert_int_equal(sk_X509_num(cas), 1);
    sk_X509_pop_free(cas, X509_free);
    free(pem);

    /* Nothing certified by a root held, garbage, too large: refused, nothing taken. */
    pem = pem_of(&foreign, 1, &len);
    assert_int_equal(proto_issuers_verify(pem, len, roots, &cas, why, sizeof(why)), -1);
    assert_null(cas);
    assert_non_null(strstr(why, "trusted root"));
    free(pem);
    assert_int_equal(proto_issuers_verify("junk", 4, roots, &cas, why, sizeof(why)), -1);
    assert_int_equal(
        proto_issuers_verify("x", PROTO_ISSUERS_MAX + 1, roots, &cas, why, sizeof(why)), -1);
    assert_null(cas);

    sk_X509_free(roots);
    X509_free(foreign);
    free_ca(&root);
    free_ca(&other);
    free_ca(&gen1);
    free_ca(&gen2);
}

/* The batches come from jansson's allocator, not cmocka's. */
#undef free

/* The event ring: bounded, drops counted and reported once, batches of at most max. */
static void test_event_ring(void **state)
{
    struct evring *r = evring_new(4);
    struct broker_event *e;
    char *text;
    json_t *v;

    (void)state;
    assert_non_null(r);
    for (int i = 0; i < 6; i++) {
        e = evring_push(r, "acl_denied");
        if (i < 4) {
            assert_non_null(e);
            BROKER_EVENT_SET(e->topic, "fleet/other/x");
            e->wildcard = i == 0;
        } else {
            assert_null(e);
        }
    }
    assert_int_equal(evring_count(r), 4);
    assert_int_equal(evring_dropped(r), 2);
    text = evring_take_batch(r, "b1", 3);
    assert_non_null(text);
    v = json_loads(text, 0, NULL);
    assert_non_null(v);
    assert_int_equal(json_integer_value(json_object_get(v, "dropped")), 2);
    assert_int_equal(json_array_size(json_object_get(v, "events")), 3);
    /* Batches are numbered from 1 under the ring's random boot id (16 hex digits). */
    assert_int_equal(json_integer_value(json_object_get(v, "seq")), 1);
    assert_int_equal(strlen(json_string_value(json_object_get(v, "boot"))), 16);
    assert_true(
        json_is_true(json_object_get(json_array_get(json_object_get(v, "events"), 0), "wildcard")));
    json_decref(v);
    free(text);
    text = evring_take_batch(r, "b1", 3);
    v = json_loads(text, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(v, "dropped")), 0);
    assert_int_equal(json_array_size(json_object_get(v, "events")), 1);
    assert_int_equal(json_integer_value(json_object_get(v, "seq")), 2);
    json_decref(v);
    free(text);
    assert_null(evring_take_batch(r, "b1", 3));
    /* A field longer than its room is cut, never overflowed. */
    e = evring_push(r, "connect");
    BROKER_EVENT_SET(e->client_id,
                     "ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
                     "ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc");
    assert_int_equal(strlen(e->client_id), sizeof(e->client_id) - 1);
    evring_free(r);
}

#define free test_free

/* The quarantine list is hostile input: shape, ids and size checked. */
static void test_quarantine_list(void **state)
{
    static const char good[] = "{\"assets\":[\"dev2\",\"dev1\"]}";
    static const char bad_id[] = "{\"assets\":[\"dev1\",\"../x\"]}";
    static const char empty[] = "{\"assets\":[]}";
    struct quarantine *q;
    char why[256];

    (void)state;
    q = quarantine_parse(good, strlen(good), why, sizeof(why));
    assert_non_null(q);
    assert_true(quarantine_has(q, "dev1"));
    assert_true(quarantine_has(q, "dev2"));
    assert_false(quarantine_has(q, "dev3"));
    assert_int_equal(quarantine_count(q), 2);
    quarantine_free(q);
    assert_null(quarantine_parse(bad_id, strlen(bad_id), why, sizeof(why)));
    assert_null(quarantine_parse("[1,2]", 5, why, sizeof(why)));
    assert_null(quarantine_parse("{", 1, why, sizeof(why)));
    q = quarantine_parse(empty, strlen(empty), why, sizeof(why));
    assert_non_null(q);
    assert_false(quarantine_has(q, "dev1"));
    quarantine_free(q);
    assert_false(quarantine_has(NULL, "dev1"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_serialset_basic), cmocka_unit_test(test_serialset_million),
        cmocka_unit_test(test_serial_key),      cmocka_unit_test(test_crl_accept_and_refuse),
        cmocka_unit_test(test_delta_merge),     cmocka_unit_test(test_delta_ahead),
        cmocka_unit_test(test_topic_covers),    cmocka_unit_test(test_acl_rules),
        cmocka_unit_test(test_load_cas),        cmocka_unit_test(test_der_walker_hostile),
        cmocka_unit_test(test_issuers_list),    cmocka_unit_test(test_serial_key_der),
        cmocka_unit_test(test_crlload),         cmocka_unit_test(test_event_ring),
        cmocka_unit_test(test_quarantine_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
